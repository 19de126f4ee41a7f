//! API errors: JSON with a stable code, a message, and the field at fault where there is one.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable, machine-readable: clients match on it.
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }
    pub fn field(mut self, f: impl Into<String>) -> Self {
        self.field = Some(f.into());
        self
    }
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", message).field(field)
    }
    pub fn missing(field: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "MISSING_FIELD",
            format!("missing required field {field}"),
        )
        .field(field)
    }
    pub fn not_found(what: &str, uuid: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "RESOURCE_NOT_FOUND",
            format!("no {what} with uuid {uuid}"),
        )
        .field("uuid")
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "INVALID_SESSION", message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", message)
    }
    /// The resource is used by another and cannot be deleted or detached yet.
    pub fn in_use(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "RESOURCE_IN_USE", message)
    }
    /// The resource is not in a state that allows the call.
    pub fn wrong_state(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "INVALID_STATE", message)
    }
    /// Nothing has room for what was asked.
    pub fn no_capacity(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "NO_CAPACITY", message)
    }
    /// `{code, message, field?}`, as the API and job records show it.
    pub fn to_json(&self) -> serde_json::Value {
        let mut err = serde_json::json!({ "code": self.code, "message": self.message });
        if let Some(f) = &self.field {
            err["field"] = serde_json::Value::String(f.clone());
        }
        err
    }
}

impl From<rusqlite::Error> for ApiError {
    fn from(e: rusqlite::Error) -> Self {
        ApiError::internal(format!("database error: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let err = self.to_json();
        (self.status, Json(serde_json::json!({ "error": err }))).into_response()
    }
}
