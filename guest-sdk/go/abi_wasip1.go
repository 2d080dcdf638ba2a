//go:build wasip1

// The canonical ABI of kwasm:plugin@0.1.0 by hand: the WIT is small, and
// wit-bindgen-go is not reachable through every module proxy. Layouts (all
// lists and strings are a 4-byte pointer and a 4-byte length):
//   - batch (68 bytes): topic @0, partition @8, offsets @12, timestamps @20,
//     key-lengths @28, value-lengths @36, header-counts @44,
//     header-lengths @52, data @60. handle-batch has 17 flat parameters, more
//     than 16, so the host writes the record into memory it allocated with
//     our realloc and passes its address.
//   - batch-result (80 bytes, returned by address): record-counts @0,
//     errors @8, record-topics @16, timestamps @24, key-lengths @32,
//     value-lengths @40, header-counts @48, header-lengths @56, topics @64,
//     data @72; a message-error is 16 bytes (index @0, kind u8 @4, message @8).
//   - init's result<_, string> (12 bytes, by address): tag u8 @0, error @4.
//
// Why `cabi_export_realloc`, not `cabi_realloc`: wit-component hands a
// module's `cabi_realloc` to WASI adapters too, and an adapter may call it
// during `_initialize`, before the Go runtime exists (a
// `runtime.badsystemstack` trap); `cabi_export_realloc` serves the host's
// lifts only. The adapter a Go plugin is built with (wasi_adapter.wat) keeps
// no state in memory at all: see there why wasmtime's does not work with Go.

package kwasm

import "unsafe"

// keep holds every buffer the host reads or wrote during the current call
// (Go's collector does not see pointers held by the host); the post-return
// functions drop them. Go's heap does not move, so addresses stay valid.
var keep []any

// inRealloc tells kwasm's WASI adapter (wasi_adapter.wat) that the host is
// inside a realloc call: the component model forbids calling the host then
// ("cannot leave component instance"), and Go's allocator reads the clock
// (nanotime) as it allocates, so the adapter answers from its last reading
// meanwhile.
//
//go:wasmimport wasi_snapshot_preview1 kwasm_in_realloc
func inRealloc(on uint32)

//go:wasmexport cabi_export_realloc
func cabiExportRealloc(old unsafe.Pointer, oldSize, align, newSize uint32) unsafe.Pointer {
	inRealloc(1)
	defer inRealloc(0)
	buf := make([]uint64, (newSize+7)/8+1) // 8-aligned, never empty
	keep = append(keep, buf)
	p := unsafe.Pointer(&buf[0])
	if old != nil && oldSize > 0 {
		copy(unsafe.Slice((*byte)(p), oldSize), unsafe.Slice((*byte)(old), oldSize))
	}
	return p
}

func u32(p unsafe.Pointer, off uintptr) uint32 { return *(*uint32)(unsafe.Add(p, off)) }

func list[T any](p unsafe.Pointer, off uintptr) []T {
	n := u32(p, off+4)
	if n == 0 {
		return nil
	}
	return unsafe.Slice((*T)(unsafe.Pointer(uintptr(u32(p, off)))), n)
}

func str(p unsafe.Pointer, off uintptr) string {
	n := u32(p, off+4)
	if n == 0 {
		return ""
	}
	return unsafe.String((*byte)(unsafe.Pointer(uintptr(u32(p, off)))), n)
}

func put(p unsafe.Pointer, off uintptr, v uint32) { *(*uint32)(unsafe.Add(p, off)) = v }

// putList writes a list's address and length, keeping its backing array.
func putList[T any](p unsafe.Pointer, off uintptr, s []T) {
	if len(s) == 0 {
		put(p, off, 8) // any address aligned for every element type will do
		put(p, off+4, 0)
		return
	}
	keep = append(keep, s)
	put(p, off, uint32(uintptr(unsafe.Pointer(&s[0]))))
	put(p, off+4, uint32(len(s)))
}

func putStr(p unsafe.Pointer, off uintptr, s string) {
	putList(p, off, []byte(s))
}

func area(size uintptr) unsafe.Pointer {
	buf := make([]uint64, (size+7)/8)
	keep = append(keep, buf)
	return unsafe.Pointer(&buf[0])
}

//go:wasmexport kwasm:plugin/handler@0.1.0#init
func exportInit(pairs unsafe.Pointer, n uint32) unsafe.Pointer {
	c := &Config{entries: map[string]string{}}
	for i := uintptr(0); i < uintptr(n); i++ {
		t := unsafe.Add(pairs, i*16)
		c.entries[str(t, 0)] = str(t, 8)
	}
	ret := area(12)
	var err error
	if registered == nil {
		err = Permanent("kwasm: the plugin registered no handler (call kwasm.Handle from an init function)")
	} else {
		err = registered.init(c)
	}
	if err != nil {
		*(*uint8)(ret) = 1
		putStr(ret, 4, err.Error())
		return ret
	}
	registered.ready = true
	return ret
}

//go:wasmexport cabi_post_kwasm:plugin/handler@0.1.0#init
func postInit(unsafe.Pointer) { keep = nil }

//go:wasmexport kwasm:plugin/handler@0.1.0#handle-batch
func exportHandleBatch(b unsafe.Pointer) unsafe.Pointer {
	if registered == nil || !registered.ready {
		// The host always calls init first; trapping is the only honest answer.
		panic("kwasm: handle-batch called before a successful init")
	}
	cols := Columns{
		Topic:         str(b, 0),
		Partition:     int32(u32(b, 8)),
		Offsets:       list[int64](b, 12),
		Timestamps:    list[int64](b, 20),
		KeyLengths:    list[int32](b, 28),
		ValueLengths:  list[int32](b, 36),
		HeaderCounts:  list[uint32](b, 44),
		HeaderLengths: list[int32](b, 52),
		Data:          list[byte](b, 60),
	}
	r := RunBatch(DecodeBatch(&cols), registered.handle)
	ret := area(80)
	putList(ret, 0, r.RecordCounts)
	if len(r.Errors) > 0 {
		errs := make([]uint32, 4*len(r.Errors))
		for i, e := range r.Errors {
			errs[4*i] = e.Index
			if !e.Retryable {
				errs[4*i+1] = 1 // error-kind: retryable = 0, permanent = 1
			}
			msg := []byte(e.Message)
			keep = append(keep, msg)
			if len(msg) > 0 {
				errs[4*i+2] = uint32(uintptr(unsafe.Pointer(&msg[0])))
			}
			errs[4*i+3] = uint32(len(msg))
		}
		putList(ret, 8, errs)
		put(ret, 12, uint32(len(r.Errors)))
	} else {
		putList[uint32](ret, 8, nil)
	}
	putList(ret, 16, r.RecordTopics)
	putList(ret, 24, r.Timestamps)
	putList(ret, 32, r.KeyLengths)
	putList(ret, 40, r.ValueLengths)
	putList(ret, 48, r.HeaderCounts)
	putList(ret, 56, r.HeaderLengths)
	topics := make([]uint32, 2*len(r.Topics))
	for i, t := range r.Topics {
		s := []byte(t)
		keep = append(keep, s)
		topics[2*i] = uint32(uintptr(unsafe.Pointer(&s[0])))
		topics[2*i+1] = uint32(len(s))
	}
	putList(ret, 64, topics)
	put(ret, 68, uint32(len(r.Topics)))
	putList(ret, 72, r.Data)
	return ret
}

//go:wasmexport cabi_post_kwasm:plugin/handler@0.1.0#handle-batch
func postHandleBatch(unsafe.Pointer) { keep = nil }

//go:wasmimport kwasm:plugin/log@0.1.0 log
func witLog(level uint32, isSome uint32, offset int64, msg unsafe.Pointer, msgLen uint32)

func emit(level Level, offset int64, message string) {
	some := uint32(1)
	if offset == noOffset {
		some, offset = 0, 0
	}
	witLog(uint32(level), some, offset, unsafe.Pointer(unsafe.StringData(message)), uint32(len(message)))
}
