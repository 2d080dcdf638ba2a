//! Hostile plugins written as component WAT and compiled by the test (no
//! committed binaries). Each is a component of the kwasm world whose
//! `handle-batch` is a few lines of core wasm, so it can do what no SDK
//! plugin would: grow memories in two core modules, bomb a table, return
//! millions of null records without building them one by one.
//!
//! Layout of the main core module: memory page 0 holds the `init` answer
//! (zeros: `ok`) at address 0 and the `handle-batch` answer (a
//! `batch-result`, ten lists of (pointer, length)) at [`RESULT`]; a bump
//! allocator for the host's `realloc` calls starts at 1024.

// Only the `sandbox` binary uses these; `plugins` shares the harness.
#![allow(dead_code)]

/// Where `handle-batch` writes its `batch-result` (80 bytes).
const RESULT: u32 = 64;

/// Builds a kwasm plugin component: `second_module` is the body of a core
/// module instantiated first and imported by the main one as "second"
/// (it must export a function `grow: (i32) -> i32`); `handle_batch` is the
/// body of the main module's `handle-batch (param $batch i32) (result i32)`,
/// which must end with the address of the result, [`RESULT`]. `main_extra`
/// goes into the main module (tables, helper functions).
fn component(second_module: &str, main_extra: &str, handle_batch: &str) -> Vec<u8> {
    let text = format!(
        r#"
(component
  (core module $second {second_module})
  (core instance $second (instantiate $second))
  (core module $main
    (import "second" "grow" (func $grow_second (param i32) (result i32)))
    (memory (export "memory") 2)
    (global $heap (mut i32) (i32.const 1024))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
      (global.set $heap (i32.add (local.get $p) (local.get 3)))
      (local.get $p))
    (func (export "init") (param i32 i32) (result i32) (i32.const 0))
    {main_extra}
    (func (export "handle-batch") (param $batch i32) (result i32)
      {handle_batch}))
  (core instance $main (instantiate $main (with "second" (instance $second))))

  (type $error-kind' (enum "retryable" "permanent"))
  (export $error-kind "error-kind" (type $error-kind'))
  (type $message-error' (record (field "index" u32) (field "kind" $error-kind) (field "message" string)))
  (export $message-error "message-error" (type $message-error'))
  (type $batch' (record
    (field "topic" string) (field "partition" s32)
    (field "offsets" (list s64)) (field "timestamps" (list s64))
    (field "key-lengths" (list s32)) (field "value-lengths" (list s32))
    (field "header-counts" (list u32)) (field "header-lengths" (list s32))
    (field "data" (list u8))))
  (export $batch "batch" (type $batch'))
  (type $batch-result' (record
    (field "record-counts" (list u32)) (field "errors" (list $message-error))
    (field "record-topics" (list s32)) (field "timestamps" (list s64))
    (field "key-lengths" (list s32)) (field "value-lengths" (list s32))
    (field "header-counts" (list u32)) (field "header-lengths" (list s32))
    (field "topics" (list string)) (field "data" (list u8))))
  (export $batch-result "batch-result" (type $batch-result'))

  (func $init (param "config" (list (tuple string string))) (result (result (error string)))
    (canon lift (core func $main "init") (memory (core memory $main "memory")) (realloc (core func $main "realloc"))))
  (func $handle-batch (param "batch" $batch) (result $batch-result)
    (canon lift (core func $main "handle-batch") (memory (core memory $main "memory")) (realloc (core func $main "realloc"))))
  (instance $handler
    (export "batch" (type $batch))
    (export "batch-result" (type $batch-result))
    (export "init" (func $init))
    (export "handle-batch" (func $handle-batch)))
  (export "kwasm:plugin/handler@0.1.0" (instance $handler))
)
"#
    );
    wat::parse_str(&text).unwrap_or_else(|e| panic!("hostile fixture does not assemble: {e}"))
}

/// A second module that only owns a memory and can grow it.
const SECOND_WITH_MEMORY: &str = r#"
    (memory 1)
    (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))"#;

/// Writes list `field` (0-based, of the ten) of the result as (ptr, len).
fn set_list(field: u32, ptr: &str, len: &str) -> String {
    let at = RESULT + 8 * field;
    format!(
        "(i32.store (i32.const {at}) {ptr}) (i32.store (i32.const {}) {len})",
        at + 4
    )
}

/// Traps (`unreachable`) when `expr` is -1, wasm's "growth refused", as a
/// Rust guest aborts when an allocation fails.
fn or_trap(expr: &str) -> String {
    format!("(if (i32.eq {expr} (i32.const -1)) (then unreachable))")
}

/// Grows the main module's memory and the second module's memory by
/// `pages` each (on top of their initial 2 and 1 pages), trapping if either
/// is refused; otherwise answers with an empty (invalid) result.
pub fn two_memories(pages: u32) -> Vec<u8> {
    let body = format!(
        "{} {} (i32.const {RESULT})",
        or_trap(&format!("(memory.grow (i32.const {pages}))")),
        or_trap(&format!("(call $grow_second (i32.const {pages}))")),
    );
    component(SECOND_WITH_MEMORY, "", &body)
}

/// Grows a funcref table by `step` elements at a time until the host
/// refuses (then traps), giving up after `max_steps` with an empty result.
pub fn table_bomb(step: u32, max_steps: u32) -> Vec<u8> {
    let body = format!(
        "(local $i i32)
         (block $done
           (loop $more
             (br_if $done (i32.ge_u (local.get $i) (i32.const {max_steps})))
             {}
             (local.set $i (i32.add (local.get $i) (i32.const 1)))
             (br $more)))
         (i32.const {RESULT})",
        or_trap(&format!(
            "(table.grow $t (ref.null func) (i32.const {step}))"
        )),
    );
    component(SECOND_WITH_MEMORY, "(table $t 1 funcref)", &body)
}

/// Answers every batch of ONE message with `records` output records with a
/// null key, a null value, no headers and no timestamp, written as columns
/// (12 bytes of guest memory per record: one region of 0xff bytes serves as
/// topics, timestamps, key and value lengths, one of zeros as header counts).
pub fn null_records(records: u32) -> Vec<u8> {
    const PAGE: u32 = 64 << 10;
    let minus_ones = 2 * PAGE; // after the two initial pages
    let zeros = minus_ones + 8 * records;
    let end = zeros + 4 * records;
    let pages = end.div_ceil(PAGE) - 2;
    let n = format!("(i32.const {records})");
    let ffs = format!("(i32.const {minus_ones})");
    let body = [
        or_trap(&format!("(memory.grow (i32.const {pages}))")),
        format!(
            "(memory.fill {ffs} (i32.const 255) (i32.const {}))",
            8 * records
        ),
        // record-counts: one count, stored just before the result area.
        format!("(i32.store (i32.const 32) {n})"),
        set_list(0, "(i32.const 32)", "(i32.const 1)"),
        set_list(2, &ffs, &n),
        set_list(3, &ffs, &n),
        set_list(4, &ffs, &n),
        set_list(5, &ffs, &n),
        set_list(6, &format!("(i32.const {zeros})"), &n),
        format!("(i32.const {RESULT})"),
    ]
    .join("\n");
    component(SECOND_WITH_MEMORY, "", &body)
}

/// A second core module declaring `memories` memories (multi-memory):
/// with the main module's one, `memories + 1` in the instance.
pub fn many_memories(memories: usize) -> Vec<u8> {
    let declared: String = (0..memories).map(|_| "(memory 1) ").collect();
    let second = format!(
        "{declared}(func (export \"grow\") (param i32) (result i32) (memory.grow (local.get 0)))"
    );
    component(&second, "", &format!("(i32.const {RESULT})"))
}

/// A valid kwasm component that compiles in milliseconds, for tests that
/// store plugins without running them (its `handle-batch` answers an
/// empty, invalid result).
pub fn inert() -> Vec<u8> {
    component(SECOND_WITH_MEMORY, "", &format!("(i32.const {RESULT})"))
}
