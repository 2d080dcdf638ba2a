//go:build !wasip1

package kwasm

import (
	"fmt"
	"os"
)

// Off wasip1 (native unit tests) log lines go to stderr.
func emit(level Level, offset int64, message string) {
	names := [...]string{"TRACE", "DEBUG", "INFO", "WARN", "ERROR"}
	if offset == noOffset {
		fmt.Fprintf(os.Stderr, "[%s] %s\n", names[level%5], message)
	} else {
		fmt.Fprintf(os.Stderr, "[%s offset=%d] %s\n", names[level%5], offset, message)
	}
}
