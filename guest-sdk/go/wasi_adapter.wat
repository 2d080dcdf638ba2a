;; The WASI preview1 functions a Go plugin's runtime imports, for
;; `wasm-tools component new --adapt wasi_snapshot_preview1=wasi_adapter.wat`.
;;
;; Why not wasmtime's wasi_snapshot_preview1.reactor.wasm: that adapter keeps
;; its state in pages it takes from the plugin's memory with memory.grow (or
;; through the module's cabi_realloc, which Go cannot serve before its runtime
;; is up). Go's runtime records the memory size once at start (osinit) and
;; assumes every later memory.grow extends its own heap, so its heap grew over
;; the adapter's state: records came back with garbage topics and the adapter
;; failed its own assertions (seen here with Go 1.26 and adapter 48.0.8).
;;
;; This adapter keeps no state in linear memory (only a few wasm globals), and
;; grants a Go plugin what kwasm grants every guest, no more: no arguments, no
;; environment, no preopened files; stdout and stderr are the host's WASI
;; streams (wasi:cli/stdout, stderr), so `fmt.Println` and a Go panic's
;; message reach the plugin's log exactly as a Python `print` or a Rust
;; `println!` do; the clocks are the host's wall clock and monotonic clock
;; (wasi:clocks; clock ids 2 and 3, CPU time, read the monotonic one;
;; inside the plugin's realloc, where the host may not be called, the last
;; reading, and writes there are dropped: see $in_realloc);
;; random_get is the host's wasi:random (crypto/rand and math/rand's seed
;; read it: a fixed sequence would hand every instance the same "random"
;; ids and keys); poll_oneoff sleeps on the host's monotonic clock (so
;; time.Sleep works, bounded by the host like every guest's waits: a sleep
;; past the batch deadline times the call out) and answers fd subscriptions
;; at once with EBADF (a plugin has no pollable files); proc_exit traps.
;;
;; Results of the WASI 0.2 calls come back through memory (a return pointer):
;; a datetime is 16 bytes, a write's result<_, stream-error> 12. Having no
;; memory of its own, the adapter borrows 16 bytes of the plugin's next to the
;; pointer the caller passed ($scratch), saves them in globals, makes the
;; call, reads the result and puts the 16 bytes back before anything else
;; runs (a component instance is single-threaded, and the host reads a
;; write's contents before it writes the result).
;;
;; The imports' WIT is wasi_adapter.wit; wasm-tools reads it from the
;; `component-type` custom section at the end.
(module
  (import "env" "memory" (memory 0))
  (import "wasi:clocks/wall-clock@0.2.0" "now" (func $wall_now (param i32)))
  (import "wasi:clocks/monotonic-clock@0.2.0" "now" (func $monotonic_now (result i64)))
  (import "wasi:cli/stdout@0.2.0" "get-stdout" (func $get_stdout (result i32)))
  (import "wasi:cli/stderr@0.2.0" "get-stderr" (func $get_stderr (result i32)))
  (import "wasi:io/streams@0.2.0" "[method]output-stream.blocking-write-and-flush"
    (func $blocking_write_and_flush (param i32 i32 i32 i32)))
  (import "wasi:io/error@0.2.0" "[resource-drop]error" (func $drop_error (param i32)))
  (import "wasi:random/random@0.2.0" "get-random-u64" (func $random_u64 (result i64)))
  (import "wasi:clocks/monotonic-clock@0.2.0" "subscribe-duration"
    (func $subscribe_duration (param i64) (result i32)))
  (import "wasi:io/poll@0.2.0" "[method]pollable.block" (func $pollable_block (param i32)))
  (import "wasi:io/poll@0.2.0" "[resource-drop]pollable" (func $drop_pollable (param i32)))
  (global $rand (mut i64) (i64.const 0x2545F4914F6CDD1D))
  ;; The output-stream handles, taken at the first write (-1: not yet).
  (global $stdout (mut i32) (i32.const -1))
  (global $stderr (mut i32) (i32.const -1))
  ;; Set while the host is inside the plugin's cabi_export_realloc (the Go
  ;; SDK calls kwasm_in_realloc around it), where the component model
  ;; forbids calling the host: clocks then answer their last reading and
  ;; writes are dropped. Go's allocator reads the clock as it allocates.
  (global $in_realloc (mut i32) (i32.const 0))
  (global $last_wall (mut i64) (i64.const 0))
  (global $last_monotonic (mut i64) (i64.const 0))
  ;; The 16 bytes of plugin memory borrowed by $scratch, while borrowed.
  (global $saved_low (mut i64) (i64.const 0))
  (global $saved_high (mut i64) (i64.const 0))

  ;; 16 bytes of plugin memory near $near, 8-aligned and within the memory;
  ;; their contents are saved until $give_back.
  (func $scratch (param $near i32) (result i32)
    (local $at i32)
    (local $last i32)
    (local.set $at (i32.and (local.get $near) (i32.const -8)))
    (local.set $last (i32.sub (i32.shl (memory.size) (i32.const 16)) (i32.const 16)))
    (if (i32.gt_u (local.get $at) (local.get $last))
      (then (local.set $at (local.get $last))))
    (global.set $saved_low (i64.load (local.get $at)))
    (global.set $saved_high (i64.load offset=8 (local.get $at)))
    (local.get $at))
  (func $give_back (param $at i32)
    (i64.store (local.get $at) (global.get $saved_low))
    (i64.store offset=8 (local.get $at) (global.get $saved_high)))

  ;; Writes $len bytes at $ptr (at most 4096, what blocking-write-and-flush
  ;; takes) to $stream; an errno.
  (func $write (param $stream i32) (param $ptr i32) (param $len i32) (param $near i32) (result i32)
    (local $at i32)
    (local $failed i32)
    (local $closed i32)
    (local $error i32)
    (local.set $at (call $scratch (local.get $near)))
    (call $blocking_write_and_flush (local.get $stream) (local.get $ptr) (local.get $len) (local.get $at))
    ;; result<_, stream-error>: tag @0; stream-error's tag @4, its error @8.
    (local.set $failed (i32.load8_u (local.get $at)))
    (local.set $closed (i32.load8_u offset=4 (local.get $at)))
    (local.set $error (i32.load offset=8 (local.get $at)))
    (call $give_back (local.get $at))
    (if (i32.eqz (local.get $failed)) (then (return (i32.const 0))))
    (if (local.get $closed) (then (return (i32.const 64)))) ;; EPIPE
    (call $drop_error (local.get $error))
    (i32.const 29)) ;; EIO
  (func (export "sched_yield") (result i32) (i32.const 0))
  (func (export "proc_exit") (param i32) (unreachable))
  (func (export "args_get") (param i32 i32) (result i32) (i32.const 0))
  (func (export "args_sizes_get") (param $argc i32) (param $size i32) (result i32)
    (i32.store (local.get $argc) (i32.const 0))
    (i32.store (local.get $size) (i32.const 0))
    (i32.const 0))
  (func (export "environ_get") (param i32 i32) (result i32) (i32.const 0))
  (func (export "environ_sizes_get") (param $n i32) (param $size i32) (result i32)
    (i32.store (local.get $n) (i32.const 0))
    (i32.store (local.get $size) (i32.const 0))
    (i32.const 0))
  (func (export "kwasm_in_realloc") (param $on i32)
    (global.set $in_realloc (local.get $on)))

  (func $clock_time_get (export "clock_time_get") (param $id i32) (param i64) (param $out i32) (result i32)
    (local $at i32)
    (local $seconds i64)
    (local $nanoseconds i64)
    ;; 0: realtime; 1: monotonic; 2, 3: process and thread CPU time.
    (if (i32.gt_u (local.get $id) (i32.const 3)) (then (return (i32.const 28)))) ;; EINVAL
    (if (local.get $id)
      (then
        (if (i32.eqz (global.get $in_realloc))
          (then (global.set $last_monotonic (call $monotonic_now))))
        (i64.store (local.get $out) (global.get $last_monotonic))
        (return (i32.const 0))))
    (if (i32.eqz (global.get $in_realloc))
      (then
        (local.set $at (call $scratch (local.get $out)))
        (call $wall_now (local.get $at))
        ;; datetime: seconds u64 @0, nanoseconds u32 @8.
        (local.set $seconds (i64.load (local.get $at)))
        (local.set $nanoseconds (i64.load32_u offset=8 (local.get $at)))
        (call $give_back (local.get $at))
        (global.set $last_wall
          (i64.add (i64.mul (local.get $seconds) (i64.const 1000000000)) (local.get $nanoseconds)))))
    (i64.store (local.get $out) (global.get $last_wall))
    (i32.const 0))
  (func (export "fd_write") (param $fd i32) (param $iovs i32) (param $n i32) (param $written i32) (result i32)
    (local $stream i32)
    (local $ptr i32)
    (local $len i32)
    (local $chunk i32)
    (local $total i32)
    (local $errno i32)
    (if (i32.gt_u (local.get $fd) (i32.const 2)) (then (return (i32.const 8)))) ;; EBADF
    (if (global.get $in_realloc)
      (then (return (call $dropped (local.get $iovs) (local.get $n) (local.get $written)))))
    (if (i32.eq (local.get $fd) (i32.const 1))
      (then
        (if (i32.eq (global.get $stdout) (i32.const -1))
          (then (global.set $stdout (call $get_stdout))))
        (local.set $stream (global.get $stdout)))
      (else
        (if (i32.ne (local.get $fd) (i32.const 2)) (then (return (i32.const 8)))) ;; EBADF
        (if (i32.eq (global.get $stderr) (i32.const -1))
          (then (global.set $stderr (call $get_stderr))))
        (local.set $stream (global.get $stderr))))
    (block $done
      (loop $next_iov
        (br_if $done (i32.eqz (local.get $n)))
        (local.set $ptr (i32.load (local.get $iovs)))
        (local.set $len (i32.load offset=4 (local.get $iovs)))
        (block $iov_done
          (loop $next_chunk
            (br_if $iov_done (i32.eqz (local.get $len)))
            (local.set $chunk
              (select (i32.const 4096) (local.get $len) (i32.gt_u (local.get $len) (i32.const 4096))))
            (local.set $errno
              (call $write (local.get $stream) (local.get $ptr) (local.get $chunk) (local.get $written)))
            (if (local.get $errno)
              (then
                (i32.store (local.get $written) (local.get $total))
                (return (local.get $errno))))
            (local.set $ptr (i32.add (local.get $ptr) (local.get $chunk)))
            (local.set $len (i32.sub (local.get $len) (local.get $chunk)))
            (local.set $total (i32.add (local.get $total) (local.get $chunk)))
            (br $next_chunk)))
        (local.set $iovs (i32.add (local.get $iovs) (i32.const 8)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $next_iov)))
    (i32.store (local.get $written) (local.get $total))
    (i32.const 0))
  ;; fd_write where the host cannot be called: every byte counted as
  ;; written, none kept.
  (func $dropped (param $iovs i32) (param $n i32) (param $written i32) (result i32)
    (local $total i32)
    (block $done
      (loop $next
        (br_if $done (i32.eqz (local.get $n)))
        (local.set $total (i32.add (local.get $total) (i32.load offset=4 (local.get $iovs))))
        (local.set $iovs (i32.add (local.get $iovs) (i32.const 8)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $next)))
    (i32.store (local.get $written) (local.get $total))
    (i32.const 0))

  (func (export "random_get") (param $buf i32) (param $len i32) (result i32)
    (local $x i64)
    (local $i i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
        (if (i32.eqz (i32.and (local.get $i) (i32.const 7)))
          (then (local.set $x (call $random_word))))
        (i32.store8 (i32.add (local.get $buf) (local.get $i)) (i32.wrap_i64 (local.get $x)))
        (local.set $x (i64.shr_u (local.get $x) (i64.const 8)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.const 0))
  ;; 8 random bytes from the host; inside the plugin's realloc, where the
  ;; host may not be called, an xorshift step over the last host word.
  (func $random_word (result i64)
    (local $x i64)
    (if (i32.eqz (global.get $in_realloc))
      (then
        (global.set $rand (call $random_u64))
        (return (global.get $rand))))
    (local.set $x (global.get $rand))
    (local.set $x (i64.xor (local.get $x) (i64.shr_u (local.get $x) (i64.const 12))))
    (local.set $x (i64.xor (local.get $x) (i64.shl (local.get $x) (i64.const 25))))
    (local.set $x (i64.xor (local.get $x) (i64.shr_u (local.get $x) (i64.const 27))))
    (global.set $rand (local.get $x))
    (i64.mul (local.get $x) (i64.const 0x2545F4914F6CDD1D)))

  ;; Subscriptions are 48 bytes: userdata u64 @0, tag u8 @8 (0 clock, 1
  ;; fd_read, 2 fd_write); a clock's id u32 @16, timeout u64 @24, flags u16
  ;; @40 (1: the timeout is an absolute time). Events are 32 bytes: userdata
  ;; @0, errno u16 @8, type u8 @10, nbytes u64 @16, flags u16 @24.
  (func (export "poll_oneoff") (param $in i32) (param $out i32) (param $n i32) (param $nevents i32) (result i32)
    (local $i i32)
    (local $sub i32)
    (local $event i32)
    (local $events i32)
    (local $best i32)
    (local $wait i64)
    (local $timeout i64)
    (local $now i64)
    (local $pollable i32)
    (if (i32.eqz (local.get $n)) (then (return (i32.const 28)))) ;; EINVAL
    (if (global.get $in_realloc) (then (return (i32.const 52)))) ;; ENOSYS: no host calls here
    (local.set $wait (i64.const -1))
    ;; With no fd subscription every one is a clock, so the first is a
    ;; valid answer even when all wait forever (a timeout of 2^64-1).
    (local.set $best (i32.const 0))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $sub (i32.add (local.get $in) (i32.mul (local.get $i) (i32.const 48))))
        (if (i32.eqz (i32.load8_u offset=8 (local.get $sub)))
          (then
            (local.set $timeout (i64.load offset=24 (local.get $sub)))
            (if (i32.and (i32.load16_u offset=40 (local.get $sub)) (i32.const 1))
              (then
                ;; Absolute: read that clock (into the first event's slot,
                ;; written properly below) and wait for the difference.
                (local.set $now (i64.const 0))
                (if (i32.eqz (call $clock_time_get (i32.load offset=16 (local.get $sub)) (i64.const 0) (local.get $out)))
                  (then (local.set $now (i64.load (local.get $out)))))
                (local.set $timeout
                  (select
                    (i64.sub (local.get $timeout) (local.get $now))
                    (i64.const 0)
                    (i64.gt_u (local.get $timeout) (local.get $now))))))
            (if (i64.lt_u (local.get $timeout) (local.get $wait))
              (then
                (local.set $wait (local.get $timeout))
                (local.set $best (local.get $i)))))
          (else
            (local.set $event (i32.add (local.get $out) (i32.mul (local.get $events) (i32.const 32))))
            (call $event (local.get $event) (local.get $sub) (i32.const 8)) ;; EBADF
            (local.set $events (i32.add (local.get $events) (i32.const 1)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    ;; Only clocks: sleep until the first one fires and report it.
    (if (i32.eqz (local.get $events))
      (then
        (local.set $pollable (call $subscribe_duration (local.get $wait)))
        (call $pollable_block (local.get $pollable))
        (call $drop_pollable (local.get $pollable))
        (call $event (local.get $out)
          (i32.add (local.get $in) (i32.mul (local.get $best) (i32.const 48)))
          (i32.const 0))
        (local.set $events (i32.const 1))))
    (i32.store (local.get $nevents) (local.get $events))
    (i32.const 0))
  ;; Writes the event for subscription $sub at $at, with errno $errno.
  (func $event (param $at i32) (param $sub i32) (param $errno i32)
    (i64.store (local.get $at) (i64.load (local.get $sub)))
    (i64.store offset=8 (local.get $at) (i64.const 0))
    (i64.store offset=16 (local.get $at) (i64.const 0))
    (i64.store offset=24 (local.get $at) (i64.const 0))
    (i32.store16 offset=8 (local.get $at) (local.get $errno))
    (i32.store8 offset=10 (local.get $at) (i32.load8_u offset=8 (local.get $sub))))
  (func (export "fd_close") (param i32) (result i32) (i32.const 8))
  ;; Stdin is empty (end of file); a plugin has no other file to read.
  (func (export "fd_read") (param $fd i32) (param i32 i32) (param $nread i32) (result i32)
    (if (local.get $fd) (then (return (i32.const 8)))) ;; EBADF
    (i32.store (local.get $nread) (i32.const 0))
    (i32.const 0))
  (func (export "fd_fdstat_get") (param $fd i32) (param $out i32) (result i32)
    (if (i32.gt_u (local.get $fd) (i32.const 2)) (then (return (i32.const 8))))
    (i64.store (local.get $out) (i64.const 2))
    (i64.store offset=8 (local.get $out) (i64.const -1))
    (i64.store offset=16 (local.get $out) (i64.const -1))
    (i32.const 0))
  (func (export "fd_fdstat_set_flags") (param i32 i32) (result i32) (i32.const 0))
  (func (export "fd_prestat_get") (param i32 i32) (result i32) (i32.const 8))
  (func (export "fd_prestat_dir_name") (param i32 i32 i32) (result i32) (i32.const 8))

  ;; Generated from wasi_adapter.wit: do not edit. Regenerate it (and
  ;; replace the line below with the output) with
  ;;   wasm-tools parse guest-sdk/go/wasi_adapter.wat | wasm-tools strip --all |
  ;;     wasm-tools component embed guest-sdk/go/wasi_adapter.wit --world adapter |
  ;;     wasm-tools print | grep @custom
  (@custom "component-type" (after code) "\00asm\0d\00\01\00\00\19\16wit-component-encoding\04\00\07\c8\06\01A\02\01A\13\01B\04\01r\02\07secondsw\0bnanosecondsy\04\00\08datetime\03\00\00\01@\00\00\01\04\00\03now\01\02\03\00\1cwasi:clocks/wall-clock@0.2.0\05\00\01B\04\04\00\08pollable\03\01\01h\00\01@\01\04self\01\01\00\04\00\16[method]pollable.block\01\02\03\00\12wasi:io/poll@0.2.0\05\01\02\03\00\01\08pollable\01B\0b\02\03\02\01\02\04\00\08pollable\03\00\00\01w\04\00\07instant\03\00\02\01w\04\00\08duration\03\00\04\01@\00\00\03\04\00\03now\01\06\01i\01\01@\01\04when\05\00\07\04\00\12subscribe-duration\01\08\03\00!wasi:clocks/monotonic-clock@0.2.0\05\03\01B\01\04\00\05error\03\01\03\00\13wasi:io/error@0.2.0\05\04\02\03\00\03\05error\01B\0b\02\03\02\01\05\04\00\05error\03\00\00\01i\01\01q\02\15last-operation-failed\01\02\00\06closed\00\00\04\00\0cstream-error\03\00\03\04\00\0doutput-stream\03\01\01h\05\01p}\01j\00\01\04\01@\02\04self\06\08contents\07\00\08\04\00.[method]output-stream.blocking-write-and-flush\01\09\03\00\15wasi:io/streams@0.2.0\05\06\02\03\00\04\0doutput-stream\01B\05\02\03\02\01\07\04\00\0doutput-stream\03\00\00\01i\01\01@\00\00\02\04\00\0aget-stdout\01\03\03\00\15wasi:cli/stdout@0.2.0\05\08\01B\05\02\03\02\01\07\04\00\0doutput-stream\03\00\00\01i\01\01@\00\00\02\04\00\0aget-stderr\01\03\03\00\15wasi:cli/stderr@0.2.0\05\09\01B\02\01@\00\00w\04\00\0eget-random-u64\01\00\03\00\18wasi:random/random@0.2.0\05\0a\04\00\1ekwasm:go-adapter/adapter@0.1.0\04\00\0b\0d\01\00\07adapter\03\00\00\00/\09producers\01\0cprocessed-by\01\0dwit-component\070.262.0")
)
