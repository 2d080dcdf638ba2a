//! The runtime's in-memory compiled plugins follow what is held: the
//! pipeline manager used to keep every compiled plugin it ever loaded
//! (issue 10 item 3), so a host that saw 50 versions deployed held 50
//! compiled components for good.

use std::sync::Arc;

use kwasm_host::runtime::{Runtime, RuntimeConfig};
use kwasm_tests::plugin_path;

#[test]
fn compiled_plugins_are_shared_while_held_and_freed_with_their_last_holder() {
    let runtime = Runtime::new(RuntimeConfig::default()).expect("runtime");
    let bytes = std::fs::read(plugin_path("passthrough")).expect("passthrough.wasm");
    let first = runtime.load("passthrough", &bytes).expect("load");
    let second = runtime.load("passthrough", &bytes).expect("load again");
    assert!(
        Arc::ptr_eq(&first, &second),
        "a second load shares the compiled code"
    );
    assert_eq!(runtime.plugins_in_memory(), 1);
    let other_name = runtime
        .load("renamed", &bytes)
        .expect("load under another name");
    assert_eq!(other_name.name(), "renamed");
    assert_eq!(runtime.plugins_in_memory(), 2);
    drop((first, other_name));
    assert_eq!(runtime.plugins_in_memory(), 1, "still held once");
    drop(second);
    assert_eq!(runtime.plugins_in_memory(), 0, "nobody holds it: freed");
    let again = runtime
        .load("passthrough", &bytes)
        .expect("load after free");
    assert_eq!(
        (again.name(), runtime.plugins_in_memory()),
        ("passthrough", 1)
    );
}
