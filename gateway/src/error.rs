//! The one mapping of an upstream gRPC status onto HTTP statuses, REST error
//! bodies and MCP (tool error result or JSON-RPC error).
use std::{collections::BTreeMap, time::Duration};

use http::StatusCode;
use serde_json::{Value, json};
use tonic::Code;
use tonic_types::StatusExt;

/// An error from a call to the service, decoded from its rich status details.
#[derive(Debug, Clone)]
pub struct UpstreamError {
    pub code: Code,
    /// `ErrorInfo.reason` (e.g. `LOCKED_BY_OTHER_OWNER`), or the code's name when absent.
    pub reason: String,
    pub message: String,
    pub metadata: BTreeMap<String, String>,
    /// Every decoded detail as JSON (`errorInfo`, `badRequest`, `preconditionFailure`, `retryInfo`).
    pub details: Value,
    pub retry_after: Option<Duration>,
    /// The service's bearer challenge (`www-authenticate`) on an UNAUTHENTICATED or
    /// PERMISSION_DENIED answer: the HTTP answer repeats it, as RFC 6750 wants of a 401.
    pub challenge: Option<http::HeaderValue>,
}

impl From<tonic::Status> for UpstreamError {
    fn from(status: tonic::Status) -> Self {
        let rich = status.get_error_details();
        let mut details = serde_json::Map::new();
        let mut reason = code_name(status.code()).to_string();
        let mut metadata = BTreeMap::new();
        if let Some(info) = rich.error_info() {
            reason = info.reason.clone();
            metadata = info.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            details.insert(
                "errorInfo".into(),
                json!({"reason": info.reason, "domain": info.domain, "metadata": metadata}),
            );
        }
        if let Some(bad) = rich.bad_request() {
            let violations: Vec<Value> =
                bad.field_violations.iter().map(|v| json!({"field": v.field, "description": v.description})).collect();
            details.insert("badRequest".into(), json!({"fieldViolations": violations}));
        }
        if let Some(pre) = rich.precondition_failure() {
            let violations: Vec<Value> = pre
                .violations
                .iter()
                .map(|v| json!({"type": v.r#type, "subject": v.subject, "description": v.description}))
                .collect();
            details.insert("preconditionFailure".into(), json!({"violations": violations}));
        }
        let retry_after = rich.retry_info().and_then(|r| r.retry_delay);
        if let Some(delay) = retry_after {
            details.insert("retryInfo".into(), json!({"retryDelayMs": delay.as_millis() as u64}));
        }
        let challenge = matches!(status.code(), Code::Unauthenticated | Code::PermissionDenied)
            .then(|| status.metadata().get(http::header::WWW_AUTHENTICATE.as_str()))
            .flatten()
            .and_then(|value| http::HeaderValue::from_bytes(value.as_bytes()).ok());
        UpstreamError {
            code: status.code(),
            reason,
            message: status.message().to_string(),
            metadata,
            details: Value::Object(details),
            retry_after,
            challenge,
        }
    }
}

/// The standard gRPC → HTTP table (google/rpc/code.proto).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// How MCP reports an upstream failure of a tool call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum McpFailure {
    /// A result with `isError: true`: the model can read it and correct itself
    /// (bad input, conflicts, not found, validation failures: SEP-1303).
    ToolError,
    /// A JSON-RPC error with this code: the call itself could not be served.
    Protocol(i64),
}

/// The service's reason for a full workspace disk (RESOURCE_EXHAUSTED, like a rate limit).
pub const WORKSPACE_FULL: &str = "WORKSPACE_FULL";

impl UpstreamError {
    /// The standard table, but for a full workspace disk: 507 Insufficient Storage (RFC 4918),
    /// the status for "the server is unable to store what the request needs", where the table's
    /// 429 would tell the client it sent too much, and hide a fault of the server's among the
    /// 4xx that no server-error alert counts.
    pub fn http_status(&self) -> StatusCode {
        if self.code == Code::ResourceExhausted && self.reason == WORKSPACE_FULL {
            return StatusCode::INSUFFICIENT_STORAGE;
        }
        http_status(self.code)
    }

    /// The REST error body: `{code, reason, message, details}`.
    pub fn rest_body(&self) -> Value {
        json!({
            "code": code_name(self.code),
            "reason": self.reason,
            "message": self.message,
            "details": self.details,
        })
    }

    pub fn mcp_failure(&self) -> McpFailure {
        match self.code {
            Code::Internal | Code::Unknown | Code::DataLoss | Code::Unimplemented => McpFailure::Protocol(-32603),
            Code::Unavailable | Code::Unauthenticated | Code::ResourceExhausted | Code::Cancelled => {
                McpFailure::Protocol(-32000)
            }
            _ => McpFailure::ToolError,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_google_rpc_code_proto() {
        assert_eq!(http_status(Code::InvalidArgument), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(Code::FailedPrecondition), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(Code::Aborted), StatusCode::CONFLICT);
        assert_eq!(http_status(Code::Unauthenticated), StatusCode::UNAUTHORIZED);
        assert_eq!(http_status(Code::ResourceExhausted), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(http_status(Code::Cancelled).as_u16(), 499);
    }

    #[test]
    fn a_full_workspace_disk_is_507_where_a_rate_limit_is_429() {
        let exhausted = |reason: &str| {
            let details = tonic_types::ErrorDetails::with_error_info(
                reason,
                "task-mcp",
                std::collections::HashMap::<String, String>::new(),
            );
            UpstreamError::from(tonic::Status::with_error_details(Code::ResourceExhausted, "m", details))
        };
        let full = exhausted(WORKSPACE_FULL);
        assert_eq!(full.http_status(), StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(full.rest_body()["code"], "RESOURCE_EXHAUSTED");
        assert_eq!(full.mcp_failure(), McpFailure::Protocol(-32000));
        assert_eq!(exhausted("RATE_LIMITED").http_status(), StatusCode::TOO_MANY_REQUESTS);
    }

    #[test]
    fn decodes_reason_and_metadata() {
        let details = tonic_types::ErrorDetails::with_error_info(
            "LOCKED_BY_OTHER_OWNER",
            "task-mcp",
            [("holder".to_string(), "alice".to_string())].into_iter().collect::<std::collections::HashMap<_, _>>(),
        );
        let status = tonic::Status::with_error_details(Code::Aborted, "locked", details);
        let err = UpstreamError::from(status);
        assert_eq!(err.reason, "LOCKED_BY_OTHER_OWNER");
        assert_eq!(err.metadata.get("holder").map(String::as_str), Some("alice"));
        assert_eq!(err.rest_body()["code"], "ABORTED");
        assert_eq!(err.mcp_failure(), McpFailure::ToolError);
    }
}
