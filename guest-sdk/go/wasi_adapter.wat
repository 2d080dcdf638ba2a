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
;; This adapter keeps no state in linear memory and imports nothing from the
;; host, so a Go plugin gets no capability at all, which is what kwasm grants:
;; no arguments, no environment, no preopened files; stdout and stderr are
;; discarded (use kwasm.Log); the clocks advance 1 us per reading from the
;; Unix epoch; random_get is a fixed-seed xorshift (Go's map seeds need
;; bytes, not secrets); sleeping (poll_oneoff) is ENOSYS; proc_exit traps.
(module
  (import "env" "memory" (memory 0))
  (global $rand (mut i64) (i64.const 0x2545F4914F6CDD1D))
  (global $clock (mut i64) (i64.const 1))
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
  (func (export "clock_time_get") (param i32 i64) (param $out i32) (result i32)
    (global.set $clock (i64.add (global.get $clock) (i64.const 1000)))
    (i64.store (local.get $out) (global.get $clock))
    (i32.const 0))
  (func (export "fd_write") (param $fd i32) (param $iovs i32) (param $n i32) (param $written i32) (result i32)
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
    (block $done
      (loop $next
        (br_if $done (i32.eqz (local.get $len)))
        (local.set $x (global.get $rand))
        (local.set $x (i64.xor (local.get $x) (i64.shr_u (local.get $x) (i64.const 12))))
        (local.set $x (i64.xor (local.get $x) (i64.shl (local.get $x) (i64.const 25))))
        (local.set $x (i64.xor (local.get $x) (i64.shr_u (local.get $x) (i64.const 27))))
        (global.set $rand (local.get $x))
        (i32.store8 (local.get $buf) (i32.wrap_i64 (i64.shr_u (i64.mul (local.get $x) (i64.const 0x2545F4914F6CDD1D)) (i64.const 56))))
        (local.set $buf (i32.add (local.get $buf) (i32.const 1)))
        (local.set $len (i32.sub (local.get $len) (i32.const 1)))
        (br $next)))
    (i32.const 0))
  (func (export "poll_oneoff") (param i32 i32 i32 i32) (result i32) (i32.const 52))
  (func (export "fd_close") (param i32) (result i32) (i32.const 8))
  (func (export "fd_fdstat_get") (param $fd i32) (param $out i32) (result i32)
    (if (i32.gt_u (local.get $fd) (i32.const 2)) (then (return (i32.const 8))))
    (i64.store (local.get $out) (i64.const 2))
    (i64.store offset=8 (local.get $out) (i64.const -1))
    (i64.store offset=16 (local.get $out) (i64.const -1))
    (i32.const 0))
  (func (export "fd_fdstat_set_flags") (param i32 i32) (result i32) (i32.const 0))
  (func (export "fd_prestat_get") (param i32 i32) (result i32) (i32.const 8))
  (func (export "fd_prestat_dir_name") (param i32 i32 i32) (result i32) (i32.const 8))
)
