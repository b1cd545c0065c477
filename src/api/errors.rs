//! API errors as Kubernetes `Status` objects, with the codes, reasons and messages
//! kube-apiserver uses (k8s.io/apimachinery/pkg/api/errors).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::registry::validation::Cause;
use crate::registry::Resource;
use crate::store::StoreError;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { code, reason, message: message.into(), details: None }
    }

    fn with_details(mut self, r: &Resource, name: &str) -> ApiError {
        let mut d = json!({"name": name, "kind": r.plural});
        if !r.group.is_empty() {
            d["group"] = json!(r.group);
        }
        self.details = Some(d);
        self
    }

    pub fn not_found(r: &Resource, name: &str) -> ApiError {
        ApiError::new(404, "NotFound", format!("{} {name:?} not found", r.qualified_plural())).with_details(r, name)
    }

    pub fn already_exists(r: &Resource, name: &str) -> ApiError {
        ApiError::new(409, "AlreadyExists", format!("{} {name:?} already exists", r.qualified_plural()))
            .with_details(r, name)
    }

    pub fn conflict(r: &Resource, name: &str, why: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {} {name:?}: {why}", r.qualified_plural()),
        )
        .with_details(r, name)
    }

    /// The optimistic-concurrency conflict every client knows.
    pub fn stale(r: &Resource, name: &str) -> ApiError {
        Self::conflict(
            r,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    pub fn invalid(r: &Resource, name: &str, causes: &[Cause]) -> ApiError {
        // Upstream names the kind with its group (`CronTab.stable.example.com "x" is invalid`).
        let kind = if r.group.is_empty() { r.kind.to_string() } else { format!("{}.{}", r.kind, r.group) };
        let msg = crate::registry::validation::invalid_message(&kind, name, causes);
        let mut d = json!({
            "name": name,
            "kind": r.kind,
            "causes": causes.iter().map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field})).collect::<Vec<_>>()
        });
        if !r.group.is_empty() {
            d["group"] = json!(r.group);
        }
        ApiError { code: 422, reason: "Invalid", message: msg, details: Some(d) }
    }

    pub fn bad_request(msg: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", msg)
    }

    pub fn forbidden(msg: impl Into<String>) -> ApiError {
        ApiError::new(403, "Forbidden", msg)
    }

    pub fn method_not_allowed(msg: impl Into<String>) -> ApiError {
        ApiError::new(405, "MethodNotAllowed", msg)
    }

    pub fn not_acceptable(msg: impl Into<String>) -> ApiError {
        ApiError::new(406, "NotAcceptable", msg)
    }

    pub fn too_large(limit: usize) -> ApiError {
        Self::too_large_msg(format!("limit is {limit}"))
    }

    /// A 413 (NewRequestEntityTooLargeError): `Request entity too large: <why>`.
    pub fn too_large_msg(why: impl std::fmt::Display) -> ApiError {
        ApiError::new(413, "RequestEntityTooLarge", format!("Request entity too large: {why}"))
    }

    pub fn gone(msg: impl Into<String>) -> ApiError {
        ApiError::new(410, "Expired", msg)
    }

    pub fn internal(msg: impl Into<String>) -> ApiError {
        ApiError::new(500, "InternalError", format!("Internal error occurred: {}", msg.into()))
    }

    pub fn unavailable(msg: impl Into<String>) -> ApiError {
        ApiError::new(503, "ServiceUnavailable", msg)
    }

    pub fn timeout(msg: impl Into<String>) -> ApiError {
        ApiError::new(504, "Timeout", msg)
    }

    /// The `Status` body.
    pub fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for ApiError {}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Compacted { .. } => ApiError::gone(format!("too old resource version: {e}")),
            StoreError::FutureRevision { .. } => ApiError::timeout(format!("Too large resource version: {e}")),
            StoreError::Unavailable(_) => ApiError::unavailable(e.to_string()),
            _ => ApiError::internal(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if self.code >= 500 {
            tracing::warn!(code = self.code, reason = self.reason, message = %self.message, "request failed");
        }
        (code, [("content-type", "application/json")], self.status().to_string()).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
