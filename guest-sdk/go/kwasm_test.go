package kwasm

import (
	"errors"
	"reflect"
	"testing"
)

// batch lays rows out as the host does (columns + one data buffer).
func batch(rows []Message) *Columns {
	c := &Columns{Topic: "orders", Partition: 3}
	push := func(b []byte) int32 {
		if b == nil {
			return -1
		}
		c.Data = append(c.Data, b...)
		return int32(len(b))
	}
	for _, m := range rows {
		c.Offsets = append(c.Offsets, m.Offset)
		c.Timestamps = append(c.Timestamps, m.TimestampMs)
		c.HeaderCounts = append(c.HeaderCounts, uint32(len(m.Headers)))
		for _, h := range m.Headers {
			c.HeaderLengths = append(c.HeaderLengths, push([]byte(h.Name)), push(h.Value))
		}
		c.KeyLengths = append(c.KeyLengths, push(m.Key))
		c.ValueLengths = append(c.ValueLengths, push(m.Value))
	}
	return c
}

func TestDecodeGivesOneMessagePerRowWithNullsAndHeaders(t *testing.T) {
	msgs := DecodeBatch(batch([]Message{
		{Offset: 10, TimestampMs: 1700, Key: []byte("k1"), Value: []byte("v1"), Headers: []Header{{"a", []byte("1")}, {"b", nil}}},
		{Offset: 11, TimestampMs: -1},
	}))
	m := msgs[0]
	if m.Topic != "orders" || m.Partition != 3 || m.Offset != 10 || m.TimestampMs != 1700 || string(m.Key) != "k1" || string(m.Value) != "v1" {
		t.Fatalf("first message: %+v", m)
	}
	if len(m.Headers) != 2 || m.Headers[1].Value != nil || string(m.Headers[0].Value) != "1" {
		t.Fatalf("headers: %+v", m.Headers)
	}
	if v, ok := m.Header("b"); !ok || len(v) != 0 {
		t.Fatalf("null header reads as empty: %v %v", v, ok)
	}
	if n := msgs[1]; n.Key != nil || n.Value != nil || n.Headers != nil || n.TimestampMs != -1 {
		t.Fatalf("tombstone: %+v", n)
	}
}

func TestOutcomesEncodeCountsErrorsTopicsAndData(t *testing.T) {
	var msgs []Message
	for o := int64(0); o < 5; o++ {
		msgs = append(msgs, Message{Offset: o, TimestampMs: 5, Key: []byte("k"), Value: []byte("v"), Headers: []Header{{"h", []byte("1")}}})
	}
	r := RunBatch(msgs, func(m *Message) ([]*Output, error) {
		switch m.Offset {
		case 1:
			return nil, nil
		case 2:
			return nil, Retryable("busy")
		case 3:
			return nil, Permanent("bad %d", 3)
		case 4:
			return nil, errors.New("plain") // any other error: permanent
		}
		return []*Output{Forward(m), NewOutput().WithTopic("audit").WithKey([]byte("x"))}, nil
	})
	want := &Result{
		RecordCounts:  []uint32{2, 0, 0, 0, 0},
		Errors:        []MessageError{{2, true, "busy"}, {3, false, "bad 3"}, {4, false, "plain"}},
		RecordTopics:  []int32{-1, 0},
		Timestamps:    []int64{5, -1},
		KeyLengths:    []int32{1, 1},
		ValueLengths:  []int32{1, -1},
		HeaderCounts:  []uint32{1, 0},
		HeaderLengths: []int32{1, 1},
		Topics:        []string{"audit"},
		Data:          []byte("h1kvx"),
	}
	if !reflect.DeepEqual(r, want) {
		t.Fatalf("got %+v\nwant %+v", r, want)
	}
}

func TestConfigMessagesMatchTheRustSDK(t *testing.T) {
	c := NewConfig([2]string{"field", "a"}, [2]string{"mod", "x"})
	if _, err := c.Require("equals"); err == nil || err.Error() != "missing required config key `equals`" {
		t.Fatal(err)
	}
	if err := c.DenyUnknown("field", "equals", "mode"); err == nil || err.Error() != "unknown config key `mod` (known keys: field, equals, mode)" {
		t.Fatal(err)
	}
	if _, err := ParseJSONPath("a..b"); err == nil || err.Error() != "invalid JSON field path \"a..b\": use dotted names like `user.email`" {
		t.Fatal(err)
	}
}

func TestJSONPathAndAsText(t *testing.T) {
	var doc any
	m := Message{Value: []byte(`{"items":[{"qty":3}],"f":true}`)}
	if err := m.JSON(&doc); err != nil {
		t.Fatal(err)
	}
	p, _ := ParseJSONPath("items.0.qty")
	if v, ok := p.Get(doc); !ok || AsText(v) != "3" {
		t.Fatalf("%v %v", v, ok)
	}
	if _, ok := (JSONPath{"items", "1"}).Get(doc); ok {
		t.Fatal("out of range is missing")
	}
	if err := (&Message{Value: []byte("not json")}).JSON(&doc); err == nil {
		t.Fatal("not JSON must fail")
	} else if ke := (*Error)(nil); !errors.As(err, &ke) || ke.IsRetryable() {
		t.Fatalf("a permanent kwasm error: %v", err)
	}
}
