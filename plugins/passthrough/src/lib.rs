//! `passthrough`: forwards every message unchanged (key, value, headers,
//! timestamp) to the pipeline's output topic. The baseline for benchmarks.

use kwasm_guest::{Config, Error, Message, Output, handler};

/// Takes no configuration: a key set by mistake is an error, not ignored.
pub fn setup(config: &Config) -> Result<(), String> {
    config.deny_unknown(&[])
}

/// Forwards the message as it is.
#[handler(init = setup)]
pub fn handle(msg: &Message) -> Result<Output, Error> {
    Ok(Output::forward(msg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_key_value_headers_and_timestamp() {
        let msg = Message::builder()
            .key("k")
            .value("v")
            .header("h", "1")
            .timestamp_ms(42)
            .build();
        let out = handle(&msg).expect("passthrough never fails");
        assert_eq!(out.key(), Some(&b"k"[..]));
        assert_eq!(out.value(), Some(&b"v"[..]));
        assert_eq!(out.header("h"), Some(&b"1"[..]));
        assert_eq!(out.timestamp_ms(), Some(42));
        assert_eq!(out.topic(), None);
    }
}
