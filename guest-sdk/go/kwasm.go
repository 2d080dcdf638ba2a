// Package kwasm writes kwasm plugins in Go: Kafka message handlers that run as
// WebAssembly components inside the kwasm host.
//
// A plugin is one plain function, called once per message, in order per
// partition. Register it from an init function of package main; the columnar
// batch of the WIT contract (guest-sdk/wit/0.1.0) never reaches your code,
// exactly as with the Rust SDK (kwasm_guest):
//
//	func setup(c *kwasm.Config) (string, error) {
//		if err := c.DenyUnknown("suffix"); err != nil {
//			return "", err
//		}
//		return c.GetOr("suffix", "!"), nil
//	}
//
//	func handle(m *kwasm.Message, suffix string) ([]*kwasm.Output, error) {
//		text, err := m.ValueString()
//		if err != nil {
//			return nil, err
//		}
//		return kwasm.One(kwasm.Forward(m).WithValue(strings.ToUpper(text) + suffix)), nil
//	}
//
//	func init() { kwasm.Handle(setup, handle) }
//	func main() {}
//
// A handler returns the message's output records (none drops it). An error
// made by Retryable is retried by the host with backoff; any other error
// (Permanent, or a plain error) dead-letters the message. A panic is a bug:
// the batch traps, as a Rust panic does, and the host's trap policy applies.
// The setup function runs once per instance with the pipeline's config; an
// error rejects the config with its text.
//
// Globals are a cache, not state: the host may drop an instance between any
// two batches and build a new one (calling setup again).
//
// Build with the standard toolchain (GOOS=wasip1 GOARCH=wasm go build
// -buildmode=c-shared), then wasm-tools component embed/new with kwasm's WASI
// adapter (wasi_adapter.wat); `kwasm new --lang go` prints the commands.
// Through it, what a plugin prints to stdout or stderr (fmt.Println, a
// panic's message) reaches the plugin's log as other guests' output does,
// and time.Now reads the host's clocks. Off wasip1 the export glue is
// compiled out, so `go test` runs handlers natively.
package kwasm

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"unicode/utf8"
)

// Error is a failure the host acts on: retried (Retryable) or dead-lettered.
type Error struct {
	Message   string
	retryable bool
}

func (e *Error) Error() string { return e.Message }

// IsRetryable tells whether the host will retry the message.
func (e *Error) IsRetryable() bool { return e.retryable }

// Retryable is a transient failure: the host retries the message with backoff
// and dead-letters it once the pipeline's retry policy is spent.
func Retryable(format string, args ...any) error {
	return &Error{Message: fmt.Sprintf(format, args...), retryable: true}
}

// Permanent is a failure retrying cannot fix: the host dead-letters the
// message at once.
func Permanent(format string, args ...any) error {
	return &Error{Message: fmt.Sprintf(format, args...)}
}

// Header is one Kafka record header; a nil Value is a null value.
type Header struct {
	Name  string
	Value []byte
}

// Message is one input message. Key and Value are nil for a null key and a
// tombstone. Its slices alias the batch: copy what you keep past the call.
type Message struct {
	Topic     string
	Partition int32
	Offset    int64
	// TimestampMs is -1 when the broker gave none.
	TimestampMs int64
	Key         []byte
	Value       []byte
	Headers     []Header
}

// ValueString is the value as text (a null value reads as ""); a permanent
// error when it is not UTF-8.
func (m *Message) ValueString() (string, error) {
	if !utf8.Valid(m.Value) {
		return "", Permanent("invalid UTF-8 in the value")
	}
	return string(m.Value), nil
}

// JSON parses the value as JSON into v; a permanent error when it does not
// parse (retrying cannot make it parse).
func (m *Message) JSON(v any) error {
	if m.Value == nil {
		return Permanent("expected a JSON value, got a null value")
	}
	if err := json.Unmarshal(m.Value, v); err != nil {
		return Permanent("invalid JSON: %v", err)
	}
	return nil
}

// Header is the value of the first header called name (a null value reads as
// empty) and whether there is one.
func (m *Message) Header(name string) ([]byte, bool) {
	for _, h := range m.Headers {
		if h.Name == name {
			if h.Value == nil {
				return []byte{}, true
			}
			return h.Value, true
		}
	}
	return nil, false
}

// Output is one output record. Topic "" is the pipeline's output topic;
// TimestampMs -1 lets the producer stamp it.
type Output struct {
	Topic       string
	Key         []byte
	Value       []byte
	Headers     []Header
	TimestampMs int64
}

// NewOutput is an empty record (null key and value, no headers).
func NewOutput() *Output { return &Output{TimestampMs: -1} }

// Forward is the input message as it is (key, value, headers, timestamp), for
// the pipeline's output topic.
func Forward(m *Message) *Output {
	return &Output{Key: m.Key, Value: m.Value, Headers: append([]Header(nil), m.Headers...), TimestampMs: m.TimestampMs}
}

// One is a handler's answer of exactly one record.
func One(o *Output) []*Output { return []*Output{o} }

// WithTopic sends the record to topic (one the pipeline declares).
func (o *Output) WithTopic(topic string) *Output { o.Topic = topic; return o }

// WithKey sets the key (nil: a null key).
func (o *Output) WithKey(key []byte) *Output { o.Key = key; return o }

// WithValue sets the value as text.
func (o *Output) WithValue(value string) *Output { o.Value = []byte(value); return o }

// WithValueBytes sets the value (nil: a tombstone).
func (o *Output) WithValueBytes(value []byte) *Output { o.Value = value; return o }

// WithHeader replaces every header called name with one name: value.
func (o *Output) WithHeader(name, value string) *Output {
	return o.WithoutHeader(name).AddHeader(name, value)
}

// AddHeader appends a header, keeping others of the same name.
func (o *Output) AddHeader(name, value string) *Output {
	o.Headers = append(o.Headers, Header{Name: name, Value: []byte(value)})
	return o
}

// WithoutHeader removes every header called name.
func (o *Output) WithoutHeader(name string) *Output {
	kept := o.Headers[:0:0]
	for _, h := range o.Headers {
		if h.Name != name {
			kept = append(kept, h)
		}
	}
	o.Headers = kept
	return o
}

// Config is the plugin's configuration: string keys and values set on the
// pipeline. Same methods and messages as the Rust SDK's Config.
type Config struct{ entries map[string]string }

// NewConfig builds a Config from key/value pairs (for tests).
func NewConfig(pairs ...[2]string) *Config {
	c := &Config{entries: map[string]string{}}
	for _, p := range pairs {
		c.entries[p[0]] = p[1]
	}
	return c
}

// Get is the value of key and whether it is set.
func (c *Config) Get(key string) (string, bool) { v, ok := c.entries[key]; return v, ok }

// GetOr is the value of key, else def.
func (c *Config) GetOr(key, def string) string {
	if v, ok := c.entries[key]; ok {
		return v
	}
	return def
}

// Require is the value of key, or an error naming the missing key.
func (c *Config) Require(key string) (string, error) {
	if v, ok := c.entries[key]; ok {
		return v, nil
	}
	return "", fmt.Errorf("missing required config key `%s`", key)
}

// DenyUnknown rejects keys outside known: a typo in a pipeline's plugin
// config should fail the deploy, not be silently ignored.
func (c *Config) DenyUnknown(known ...string) error {
	keys := make([]string, 0, len(c.entries))
	for k := range c.entries {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		found := false
		for _, kn := range known {
			found = found || kn == k
		}
		if !found {
			return fmt.Errorf("unknown config key `%s` (known keys: %s)", k, strings.Join(known, ", "))
		}
	}
	return nil
}

// JSONPath is a dotted path into a JSON document (`user.email`,
// `items.0.sku`): the form operators write in pipeline configs.
type JSONPath []string

// ParseJSONPath parses `a.b.c`; an empty path or segment is an error naming it.
func ParseJSONPath(path string) (JSONPath, error) {
	segs := strings.Split(path, ".")
	for _, s := range segs {
		if s == "" {
			q, _ := json.Marshal(path)
			return nil, fmt.Errorf("invalid JSON field path %s: use dotted names like `user.email`", q)
		}
	}
	return segs, nil
}

// Get is the value at the path in a document decoded by encoding/json into
// `any`, and whether it is present.
func (p JSONPath) Get(doc any) (any, bool) {
	node := doc
	for _, seg := range p {
		switch n := node.(type) {
		case map[string]any:
			v, ok := n[seg]
			if !ok {
				return nil, false
			}
			node = v
		case []any:
			i, ok := index(seg)
			if !ok || i >= len(n) {
				return nil, false
			}
			node = n[i]
		default:
			return nil, false
		}
	}
	return node, true
}

func index(seg string) (int, bool) {
	n := 0
	for _, r := range seg {
		if r < '0' || r > '9' || n > 1<<30 {
			return 0, false
		}
		n = n*10 + int(r-'0')
	}
	return n, true
}

// AsText renders a JSON value for comparison with configured strings:
// strings without quotes, everything else as compact JSON.
func AsText(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	b, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	return string(b)
}

// --- the handler and the batch boundary -------------------------------------

type plugin struct {
	init   func(*Config) error
	handle func(*Message) ([]*Output, error)
	ready  bool
}

var registered *plugin

// Handle registers the plugin: setup runs once per instance with the config,
// handle once per message with setup's result. Call it from an init function.
func Handle[S any](setup func(*Config) (S, error), handle func(*Message, S) ([]*Output, error)) {
	var settings S
	registered = &plugin{
		init: func(c *Config) error {
			s, err := setup(c)
			settings = s
			return err
		},
		handle: func(m *Message) ([]*Output, error) { return handle(m, settings) },
	}
}

// HandleSimple registers a plugin with no setup (any config is accepted, as
// in the Rust SDK without `init`).
func HandleSimple(handle func(*Message) ([]*Output, error)) {
	registered = &plugin{init: func(*Config) error { return nil }, handle: handle}
}

// Columns is a WIT batch (or batch-result) by column; the ABI glue fills it.
type Columns struct {
	Topic         string
	Partition     int32
	Offsets       []int64
	Timestamps    []int64
	KeyLengths    []int32
	ValueLengths  []int32
	HeaderCounts  []uint32
	HeaderLengths []int32
	Data          []byte
}

// MessageError is one failed message of a batch result.
type MessageError struct {
	Index     uint32
	Retryable bool
	Message   string
}

// Result is a WIT batch-result by column.
type Result struct {
	RecordCounts  []uint32
	Errors        []MessageError
	RecordTopics  []int32
	Timestamps    []int64
	KeyLengths    []int32
	ValueLengths  []int32
	HeaderCounts  []uint32
	HeaderLengths []int32
	Topics        []string
	Data          []byte
}

// DecodeBatch splits a batch into messages that alias its data.
func DecodeBatch(b *Columns) []Message {
	msgs := make([]Message, len(b.Offsets))
	pos, h := 0, 0
	take := func(n int32) []byte {
		if n < 0 {
			return nil
		}
		s := b.Data[pos : pos+int(n) : pos+int(n)]
		pos += int(n)
		return s
	}
	for i := range msgs {
		m := &msgs[i]
		m.Topic, m.Partition, m.Offset, m.TimestampMs = b.Topic, b.Partition, b.Offsets[i], b.Timestamps[i]
		if m.TimestampMs < 0 {
			m.TimestampMs = -1
		}
		if n := b.HeaderCounts[i]; n > 0 {
			m.Headers = make([]Header, n)
			for j := range m.Headers {
				m.Headers[j].Name = string(take(b.HeaderLengths[h]))
				m.Headers[j].Value = take(b.HeaderLengths[h+1])
				h += 2
			}
		}
		m.Key = take(b.KeyLengths[i])
		m.Value = take(b.ValueLengths[i])
	}
	return msgs
}

// RunBatch calls handle on each message in order and encodes the outcomes.
func RunBatch(msgs []Message, handle func(*Message) ([]*Output, error)) *Result {
	r := &Result{RecordCounts: make([]uint32, 0, len(msgs))}
	push := func(b []byte) int32 {
		if b == nil {
			return -1
		}
		r.Data = append(r.Data, b...)
		return int32(len(b))
	}
	for i := range msgs {
		currentOffset = msgs[i].Offset
		outs, err := handle(&msgs[i])
		if err != nil {
			var ke *Error
			retryable := errors.As(err, &ke) && ke.retryable
			r.RecordCounts = append(r.RecordCounts, 0)
			r.Errors = append(r.Errors, MessageError{Index: uint32(i), Retryable: retryable, Message: err.Error()})
			continue
		}
		for _, o := range outs {
			r.HeaderCounts = append(r.HeaderCounts, uint32(len(o.Headers)))
			for _, hd := range o.Headers {
				r.HeaderLengths = append(r.HeaderLengths, push([]byte(hd.Name)), push(hd.Value))
			}
			r.KeyLengths = append(r.KeyLengths, push(o.Key))
			r.ValueLengths = append(r.ValueLengths, push(o.Value))
			r.Timestamps = append(r.Timestamps, o.TimestampMs)
			r.RecordTopics = append(r.RecordTopics, r.topicIndex(o.Topic))
		}
		r.RecordCounts = append(r.RecordCounts, uint32(len(outs)))
	}
	currentOffset = noOffset
	return r
}

func (r *Result) topicIndex(topic string) int32 {
	if topic == "" {
		return -1
	}
	for i, t := range r.Topics {
		if t == topic {
			return int32(i)
		}
	}
	r.Topics = append(r.Topics, topic)
	return int32(len(r.Topics) - 1)
}

// --- logging ----------------------------------------------------------------

const noOffset = -1 << 63

var currentOffset int64 = noOffset

// Level of a log line, as the WIT's log.level enum.
type Level uint32

// Log levels.
const (
	LevelTrace Level = iota
	LevelDebug
	LevelInfo
	LevelWarn
	LevelError
)

// Log emits a line through the host's logger, which adds plugin, topic and
// partition; the SDK adds the offset of the message being handled.
func Log(level Level, format string, args ...any) {
	emit(level, currentOffset, fmt.Sprintf(format, args...))
}

// Info logs at info level.
func Info(format string, args ...any) { Log(LevelInfo, format, args...) }

// Warn logs at warn level.
func Warn(format string, args ...any) { Log(LevelWarn, format, args...) }

// Debug logs at debug level.
func Debug(format string, args ...any) { Log(LevelDebug, format, args...) }
