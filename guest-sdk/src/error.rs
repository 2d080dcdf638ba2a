use std::fmt;

/// Why a message could not be handled. The kind tells the host what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A transient failure (a dependency was busy, say): the host retries the
    /// message with backoff and dead-letters it once the retry policy is spent.
    Retryable(String),
    /// The message can never be handled (it does not parse, say): the host
    /// sends it to the dead-letter topic at once and moves on.
    Permanent(String),
}

impl Error {
    /// A transient failure; the host will retry the message.
    pub fn retryable(message: impl Into<String>) -> Self {
        Error::Retryable(message.into())
    }

    /// A failure retrying cannot fix; the host dead-letters the message.
    pub fn permanent(message: impl Into<String>) -> Self {
        Error::Permanent(message.into())
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        match self {
            Error::Retryable(m) | Error::Permanent(m) => m,
        }
    }

    /// Whether the host will retry the message.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Retryable(_))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Retryable(m) => write!(f, "retryable: {m}"),
            Error::Permanent(m) => write!(f, "permanent: {m}"),
        }
    }
}

impl std::error::Error for Error {}

/// A value that is not JSON (or not the expected shape) cannot become JSON by
/// retrying, so it is permanent.
impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::permanent(format!("invalid JSON: {e}"))
    }
}

impl From<std::str::Utf8Error> for Error {
    fn from(e: std::str::Utf8Error) -> Self {
        Error::permanent(format!("invalid UTF-8: {e}"))
    }
}
