//! [`AdminError`]: every failure of the API, as one JSON shape.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An API failure; its status and code follow from the variant.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The request is malformed or the input invalid (400).
    #[error("{0}")]
    Invalid(String),
    /// A `/v1` call without the right bearer token (401).
    #[error("this call needs `Authorization: Bearer <token>` with the host's admin token")]
    Unauthorized,
    /// Unknown plugin, version, pipeline or path (404).
    #[error("{0}")]
    NotFound(String),
    /// A known path with a method it does not serve (405).
    #[error("this endpoint does not take that method; see /v1/openapi.json")]
    MethodNotAllowed,
    /// The change conflicts with the current state (409).
    #[error("{0}")]
    Conflict(String),
    /// The body is larger than allowed (413).
    #[error("{0}")]
    TooLarge(String),
    /// A dependency (Kafka, the registry) is not available (503).
    #[error("{0}")]
    Unavailable(String),
}

impl AdminError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            AdminError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
            AdminError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            AdminError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            AdminError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            AdminError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            AdminError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            AdminError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::warn!(error = %self, "admin call failed");
        }
        let body = serde_json::json!({"error": {"code": code, "message": self.to_string()}});
        (status, Json(body)).into_response()
    }
}

impl From<crate::registry::RegistryError> for AdminError {
    fn from(e: crate::registry::RegistryError) -> Self {
        AdminError::Unavailable(e.to_string())
    }
}
