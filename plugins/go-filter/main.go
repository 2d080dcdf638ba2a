// go-filter: the `filter` plugin in Go. Drops (or keeps only) JSON messages
// whose field equals a configured value.
//
// Same config keys, README table and outputs as plugins/filter (Rust): field
// (dotted path), equals (strings without quotes, other values as JSON), mode
// (drop, the default, or keep). A value that is not JSON is dead-lettered; a
// missing field or a tombstone does not match.
package main

import (
	"fmt"

	kwasm "kwasm/guest"
)

type settings struct {
	field  kwasm.JSONPath
	equals string
	keep   bool
}

// setup validates the config once, so a typo fails the deploy, not every message.
func setup(c *kwasm.Config) (settings, error) {
	var s settings
	if err := c.DenyUnknown("field", "equals", "mode"); err != nil {
		return s, err
	}
	path, err := c.Require("field")
	if err != nil {
		return s, err
	}
	if s.field, err = kwasm.ParseJSONPath(path); err != nil {
		return s, fmt.Errorf("config key `field`: %w", err)
	}
	if s.equals, err = c.Require("equals"); err != nil {
		return s, err
	}
	switch mode := c.GetOr("mode", "drop"); mode {
	case "drop", "keep":
		s.keep = mode == "keep"
	default:
		return s, fmt.Errorf("config key `mode`: expected `drop` or `keep`, got %q", mode)
	}
	return s, nil
}

func handle(m *kwasm.Message, s settings) ([]*kwasm.Output, error) {
	matched := false
	if m.Value != nil {
		var doc any
		if err := m.JSON(&doc); err != nil {
			return nil, err
		}
		v, found := s.field.Get(doc)
		matched = found && kwasm.AsText(v) == s.equals
	}
	if matched != s.keep {
		return nil, nil
	}
	return kwasm.One(kwasm.Forward(m)), nil
}

func init() { kwasm.Handle(setup, handle) }

func main() {}
