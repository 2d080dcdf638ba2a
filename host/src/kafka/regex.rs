//! Topic regexes in librdkafka's own dialect.
//!
//! A pipeline's `input_regex` is compiled by librdkafka when the consumer
//! subscribes (`rd_regex_comp`: POSIX extended regular expressions through
//! libc's `regcomp` in the build kwasm links, a bundled engine elsewhere).
//! Validating it with another engine (Rust's `regex` crate, say) would accept
//! patterns librdkafka rejects or reads differently, and a pipeline that
//! validates would then subscribe to nothing on every host, forever. So the
//! pattern is compiled, and matched, by the very functions librdkafka's
//! subscription uses: what validates here is what subscribes.

use std::ffi::{CStr, CString, c_char, c_int, c_void};

// librdkafka's internal regex API (src/rdregex.h). The functions are
// global symbols of the librdkafka that rdkafka-sys links statically into
// this binary; they are what `rd_kafka_subscribe` calls for `^` topics.
unsafe extern "C" {
    fn rd_regex_comp(
        pattern: *const c_char,
        errstr: *mut c_char,
        errstr_size: usize,
    ) -> *mut c_void;
    fn rd_regex_exec(re: *mut c_void, s: *const c_char) -> c_int;
    fn rd_regex_destroy(re: *mut c_void);
}

/// A compiled topic regex. Matching is a search, as librdkafka's is: a
/// pattern is anchored only where it says `^` or `$`.
#[derive(Debug)]
pub struct KafkaRegex {
    pattern: String,
    compiled: std::ptr::NonNull<c_void>,
}

// SAFETY: the compiled program is immutable after `rd_regex_comp`; libc's
// `regexec` (and the bundled engine) keep match state on the caller's stack
// or behind the regex's own lock, so concurrent `rd_regex_exec` calls on
// one compiled pattern are safe, as librdkafka itself does from several
// threads.
unsafe impl Send for KafkaRegex {}
unsafe impl Sync for KafkaRegex {}

impl KafkaRegex {
    /// Compiles `pattern`, or says why librdkafka would not.
    pub fn new(pattern: &str) -> Result<KafkaRegex, String> {
        let c_pattern =
            CString::new(pattern).map_err(|_| "a regex cannot contain a NUL byte".to_owned())?;
        let mut errstr = [0 as c_char; 512];
        // SAFETY: `c_pattern` is NUL-terminated; `errstr` is writable for its
        // length, which is passed; librdkafka NUL-terminates what it writes.
        let compiled =
            unsafe { rd_regex_comp(c_pattern.as_ptr(), errstr.as_mut_ptr(), errstr.len()) };
        match std::ptr::NonNull::new(compiled) {
            Some(compiled) => Ok(KafkaRegex {
                pattern: pattern.to_owned(),
                compiled,
            }),
            None => {
                // SAFETY: zero-initialised, and librdkafka writes a
                // NUL-terminated message of at most `errstr.len()` bytes.
                let reason = unsafe { CStr::from_ptr(errstr.as_ptr()) };
                Err(format!("not a valid regex: {}", reason.to_string_lossy()))
            }
        }
    }

    /// Whether `topic` matches, as librdkafka would decide for a
    /// subscription. A name with a NUL byte is no topic and never matches.
    pub fn is_match(&self, topic: &str) -> bool {
        let Ok(c_topic) = CString::new(topic) else {
            return false;
        };
        // SAFETY: `compiled` came from `rd_regex_comp` and lives until drop;
        // `c_topic` is NUL-terminated.
        unsafe { rd_regex_exec(self.compiled.as_ptr(), c_topic.as_ptr()) != 0 }
    }

    /// The pattern as given.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }
}

impl Drop for KafkaRegex {
    fn drop(&mut self) {
        // SAFETY: compiled by `rd_regex_comp`, destroyed once.
        unsafe { rd_regex_destroy(self.compiled.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_patterns_are_refused_with_librdkafkas_reason() {
        for bad in ["((", "[a-", "a{2,1}"] {
            let err = KafkaRegex::new(bad).expect_err(bad);
            assert!(err.starts_with("not a valid regex"), "{bad}: {err}");
        }
        assert!(KafkaRegex::new("a\0b").is_err());
    }

    #[test]
    fn matching_is_a_search_anchored_only_where_the_pattern_says() {
        let re = KafkaRegex::new("^orders").expect("valid");
        assert!(re.is_match("orders"));
        assert!(re.is_match("orders-clean"), "no implicit `$`");
        assert!(!re.is_match("old-orders"));
        let full = KafkaRegex::new("^(orders-(eu|us)[0-9]+)$").expect("valid");
        assert!(full.is_match("orders-eu12"));
        assert!(!full.is_match("orders-eu12x"));
        assert!(!full.is_match("orders-asia1"));
        assert_eq!(full.as_str(), "^(orders-(eu|us)[0-9]+)$");
    }
}
