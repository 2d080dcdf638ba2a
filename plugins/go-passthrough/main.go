// go-passthrough: forwards every message unchanged (the Go twin of
// plugins/passthrough, for benchmarks: what the SDK and the runtime cost).
package main

import kwasm "kwasm/guest"

func init() {
	kwasm.HandleSimple(func(m *kwasm.Message) ([]*kwasm.Output, error) {
		return kwasm.One(kwasm.Forward(m)), nil
	})
}

func main() {}
