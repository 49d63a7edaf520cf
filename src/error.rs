//! The one error type of the service. Every failure a client can see is a
//! variant here with a stable reason code; `into_status` is the only place that
//! decides gRPC codes, and the gateway maps those codes on to HTTP and JSON-RPC.
use std::time::Duration;

use time::OffsetDateTime;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `domain` of every `google.rpc.ErrorInfo` we send.
pub const ERROR_DOMAIN: &str = "task-mcp";

/// A validation finding carried by `ValidationFailed`; mirrors `pb::Finding`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FindingRef {
    pub code: String,
    pub file: String,
    pub line: u32,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid slug {:?}: {why}", truncate(value))]
    InvalidSlug { value: String, why: &'static str },
    #[error("invalid {field}: {why}")]
    InvalidArgument { field: &'static str, why: String },
    #[error("invalid path {:?}: {why}", truncate(value))]
    InvalidPath { value: String, why: &'static str },
    #[error("invalid resource URI {:?}: {why}", truncate(value))]
    InvalidUri { value: String, why: &'static str },
    #[error("invalid page token")]
    InvalidPageToken,
    #[error("{field} is too large: {size} > {limit}")]
    TooLarge { field: &'static str, size: usize, limit: usize },
    #[error("change {slug:?} not found")]
    ChangeNotFound { slug: String },
    #[error("task {:?} not found in change {slug:?}", truncate(id))]
    TaskNotFound { slug: String, id: String },
    #[error("resource {:?} not found", truncate(uri))]
    ResourceNotFound { uri: String },
    /// `principal`: the holder's, when it differs from the caller's (the lock is another
    /// credential's, whatever owner the caller named).
    #[error("change {slug:?} is locked by {holder:?}{} until {}", of_principal(principal.as_deref()), fmt_time(*expires_at))]
    LockedByOtherOwner { slug: String, holder: String, principal: Option<String>, expires_at: OffsetDateTime },
    #[error("change {slug:?} failed validation with {} error(s)", findings.len())]
    ValidationFailed { slug: String, findings: Vec<FindingRef> },
    /// A file of the change that the server cannot read as text (not UTF-8, not a regular
    /// file): the request is fine, the change on disk is not; `change.validate` reports the
    /// same as a `FILE_UNREADABLE` finding.
    #[error("{file} of change {slug:?} {why}")]
    FileUnreadable { slug: String, file: String, why: &'static str },
    /// A file of the change kept changing while the server was about to rewrite it: someone
    /// is saving it at the same time. The server's version was not written; retrying is safe.
    #[error(
        "{file} of change {slug:?} kept changing while the server was updating it (is it being saved?); it was not written, retry"
    )]
    ConcurrentEdit { slug: String, file: String },
    #[error("change {slug:?} is archived in {archive_path} but has no readable receipt")]
    ReceiptUnavailable { slug: String, archive_path: String },
    #[error("resource {:?} is {size} bytes, over the {limit} byte cap", truncate(uri))]
    ResourceTooLarge { uri: String, size: u64, limit: u64 },
    #[error("missing or invalid bearer token")]
    Unauthenticated,
    /// A genuine OAuth access token that lacks a scope every call needs.
    #[error("the access token lacks a required scope (required: {required})")]
    InsufficientScope { required: String },
    #[error("rate limit exceeded; retry in {retry_after:?}")]
    RateLimited { retry_after: Duration },
    #[error("server is shutting down")]
    ShuttingDown,
    /// The caller went away (cancelled, timed out, disconnected) before its request was read
    /// whole or while it waited for its turn at a change; nothing was written. Nobody reads
    /// the answer; the name is for logs and metrics.
    #[error("the caller went away before anything was written")]
    CallerGone,
    /// The workspace on disk is in a state the server cannot work with: a folder it may not
    /// write, a read-only disk, a symlink where the archive folder belongs. An operator fixes
    /// it, not the client, so the code is INTERNAL; but unlike `Internal` it is named, with the
    /// path inside the workspace (never the host's).
    #[error("workspace unusable at {path}: {why}")]
    WorkspaceUnusable { path: String, why: String },
    /// The workspace's file system is full, or its quota spent (ENOSPC, EDQUOT). Every write is
    /// built aside and committed by one rename, and what a failed one built is removed, so the
    /// call left the change as it was and succeeds once space is freed; reads go on working.
    /// The code is RESOURCE_EXHAUSTED, the one gRPC names for "the entire file system is out
    /// of space": not INTERNAL (nothing is broken, and the message is worth showing), nor
    /// FAILED_PRECONDITION (nothing about the request is wrong). A rate limit shares the code,
    /// so the reason tells them apart: the gateway answers this one with HTTP 507 Insufficient
    /// Storage rather than 429, and the metrics count it as the server's error, not the caller's.
    #[error(
        "workspace full at {path}: {why}; the call was not carried out: free space on the workspace's file system (or raise its quota), then retry"
    )]
    WorkspaceFull { path: String, why: String },
    /// Anything the client could not have caused. The message is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn invalid(field: &'static str, why: impl Into<String>) -> Self {
        Error::InvalidArgument { field, why: why.into() }
    }

    pub fn internal(context: &str, err: impl std::fmt::Display) -> Self {
        Error::Internal(format!("{context}: {err}"))
    }

    /// An I/O failure on `path`: a full disk or a spent quota as `WorkspaceFull`, the other
    /// faults an operator must fix (permissions, a read-only disk) as `WorkspaceUnusable`, each
    /// naming the path's last two parts; the rest as internal.
    pub fn io(context: &str, path: &std::path::Path, err: std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        let tail = || {
            let mut tail: Vec<_> = path.iter().rev().take(2).map(|p| p.to_string_lossy()).collect();
            tail.reverse();
            tail.join("/")
        };
        let why = match err.kind() {
            K::StorageFull | K::QuotaExceeded => {
                tracing::error!(context, path = %path.display(), error = %err, "workspace full");
                return Error::WorkspaceFull { path: tail(), why: format!("{context}: {}", err.kind()) };
            }
            K::PermissionDenied | K::ReadOnlyFilesystem => format!("{context}: {}", err.kind()),
            // The build-aside area, the drafts or the archive mounted apart (see `CROSS_DEVICE`).
            K::CrossesDevices => format!("{context}: {}", crate::workspace::fsutil::CROSS_DEVICE),
            _ => return Error::internal(context, err),
        };
        tracing::error!(context, path = %path.display(), error = %err, "workspace unusable");
        Error::WorkspaceUnusable { path: tail(), why }
    }

    /// The stable, machine-readable reason code (`ErrorInfo.reason`).
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidSlug { .. } => "INVALID_SLUG",
            Error::InvalidArgument { .. } => "INVALID_ARGUMENT",
            Error::InvalidPath { .. } => "INVALID_PATH",
            Error::InvalidUri { .. } => "INVALID_URI",
            Error::InvalidPageToken => "INVALID_PAGE_TOKEN",
            Error::TooLarge { .. } => "TOO_LARGE",
            Error::ChangeNotFound { .. } => "CHANGE_NOT_FOUND",
            Error::TaskNotFound { .. } => "TASK_NOT_FOUND",
            Error::ResourceNotFound { .. } => "RESOURCE_NOT_FOUND",
            Error::LockedByOtherOwner { .. } => "LOCKED_BY_OTHER_OWNER",
            Error::ValidationFailed { .. } => "VALIDATION_FAILED",
            Error::ReceiptUnavailable { .. } => "RECEIPT_UNAVAILABLE",
            Error::FileUnreadable { .. } => "FILE_UNREADABLE",
            Error::ConcurrentEdit { .. } => "CONCURRENT_EDIT",
            Error::ResourceTooLarge { .. } => "RESOURCE_TOO_LARGE",
            Error::Unauthenticated => "UNAUTHENTICATED",
            Error::InsufficientScope { .. } => "INSUFFICIENT_SCOPE",
            Error::RateLimited { .. } => "RATE_LIMITED",
            Error::ShuttingDown => "SHUTTING_DOWN",
            Error::CallerGone => "CANCELLED",
            Error::WorkspaceUnusable { .. } => "WORKSPACE_UNUSABLE",
            // The gateway tells it from a rate limit by this reason (HTTP 507, not 429).
            Error::WorkspaceFull { .. } => task_mcp_gateway::error::WORKSPACE_FULL,
            Error::Internal(_) => "INTERNAL",
        }
    }

    pub fn code(&self) -> Code {
        match self {
            Error::InvalidSlug { .. }
            | Error::InvalidArgument { .. }
            | Error::InvalidPath { .. }
            | Error::InvalidUri { .. }
            | Error::InvalidPageToken
            | Error::TooLarge { .. } => Code::InvalidArgument,
            Error::ChangeNotFound { .. } | Error::TaskNotFound { .. } | Error::ResourceNotFound { .. } => {
                Code::NotFound
            }
            // Concurrency conflicts the caller resolves by waiting and retrying, or by picking
            // another slug.
            Error::LockedByOtherOwner { .. } | Error::ConcurrentEdit { .. } => Code::Aborted,
            Error::ValidationFailed { .. }
            | Error::ReceiptUnavailable { .. }
            | Error::FileUnreadable { .. }
            | Error::ResourceTooLarge { .. } => Code::FailedPrecondition,
            Error::Unauthenticated => Code::Unauthenticated,
            Error::InsufficientScope { .. } => Code::PermissionDenied,
            Error::RateLimited { .. } | Error::WorkspaceFull { .. } => Code::ResourceExhausted,
            Error::ShuttingDown => Code::Unavailable,
            Error::CallerGone => Code::Cancelled,
            Error::WorkspaceUnusable { .. } | Error::Internal(_) => Code::Internal,
        }
    }

    /// `ErrorInfo.metadata`: the facts a client needs to act without parsing the message.
    fn metadata(&self) -> Vec<(String, String)> {
        let kv = |k: &str, v: String| (k.to_string(), v);
        match self {
            Error::InvalidSlug { value, .. } => {
                vec![kv("field", "slug".into()), kv("value", truncate(value))]
            }
            Error::InvalidArgument { field, .. } => vec![kv("field", field.to_string())],
            Error::InvalidPath { value, .. } => {
                vec![kv("field", "path".into()), kv("value", truncate(value))]
            }
            Error::InvalidUri { value, .. } => {
                vec![kv("field", "uri".into()), kv("value", truncate(value))]
            }
            Error::InvalidPageToken => vec![kv("field", "page_token".into())],
            Error::TooLarge { field, size, limit } => {
                vec![kv("field", field.to_string()), kv("size", size.to_string()), kv("limit", limit.to_string())]
            }
            Error::ChangeNotFound { slug } => vec![kv("slug", slug.clone())],
            Error::TaskNotFound { slug, id } => {
                vec![kv("slug", slug.clone()), kv("task_id", truncate(id))]
            }
            Error::ResourceNotFound { uri } => vec![kv("uri", truncate(uri))],
            Error::LockedByOtherOwner { slug, holder, principal, expires_at } => {
                let mut details = vec![
                    kv("slug", slug.clone()),
                    kv("holder", holder.clone()),
                    kv("expires_at", fmt_time(*expires_at)),
                ];
                details.extend(principal.clone().map(|p| kv("holder_principal", p)));
                details
            }
            Error::ValidationFailed { slug, findings } => {
                vec![kv("slug", slug.clone()), kv("errors", findings.len().to_string())]
            }
            Error::FileUnreadable { slug, file, .. } | Error::ConcurrentEdit { slug, file } => {
                vec![kv("slug", slug.clone()), kv("file", file.clone())]
            }
            Error::ReceiptUnavailable { slug, archive_path } => {
                vec![kv("slug", slug.clone()), kv("archive_path", archive_path.clone())]
            }
            Error::ResourceTooLarge { uri, size, limit } => {
                vec![kv("uri", truncate(uri)), kv("size", size.to_string()), kv("limit", limit.to_string())]
            }
            Error::RateLimited { retry_after } => {
                vec![kv("retry_after_ms", retry_after.as_millis().to_string())]
            }
            Error::WorkspaceUnusable { path, .. } | Error::WorkspaceFull { path, .. } => vec![kv("path", path.clone())],
            Error::InsufficientScope { required } => vec![kv("required_scopes", required.clone())],
            Error::Unauthenticated | Error::ShuttingDown | Error::CallerGone | Error::Internal(_) => vec![],
        }
    }

    /// The one mapping from our errors to a gRPC status with rich details
    /// (`ErrorInfo` always; `BadRequest`, `PreconditionFailure`, `RetryInfo` where they apply).
    pub fn into_status(self) -> Status {
        let code = self.code();
        let message = match &self {
            Error::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                "internal error; see server logs".to_string()
            }
            other => other.to_string(),
        };
        let mut details = ErrorDetails::with_error_info(
            self.reason(),
            ERROR_DOMAIN,
            self.metadata().into_iter().collect::<std::collections::HashMap<_, _>>(),
        );
        match &self {
            Error::InvalidSlug { why, .. } => {
                details.add_bad_request_violation("slug", *why);
            }
            Error::InvalidArgument { field, why } => {
                details.add_bad_request_violation(*field, why.clone());
            }
            Error::InvalidPath { why, .. } => {
                details.add_bad_request_violation("path", *why);
            }
            Error::InvalidUri { why, .. } => {
                details.add_bad_request_violation("uri", *why);
            }
            Error::TooLarge { field, limit, .. } => {
                details.add_bad_request_violation(*field, format!("at most {limit}"));
            }
            Error::ValidationFailed { findings, .. } => {
                for f in findings {
                    let subject = if f.line > 0 { format!("{}:{}", f.file, f.line) } else { f.file.clone() };
                    details.add_precondition_failure_violation(f.code.clone(), subject, f.message.clone());
                }
            }
            Error::RateLimited { retry_after } => {
                details.set_retry_info(Some(*retry_after));
            }
            _ => {}
        }
        Status::with_error_details(code, message, details)
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        err.into_status()
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub fn fmt_time(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| t.unix_timestamp().to_string())
}

fn of_principal(principal: Option<&str>) -> String {
    principal.map(|p| format!(" of principal {p:?}")).unwrap_or_default()
}

/// Metadata values echo client input; keep them short so an error stays small.
fn truncate(value: &str) -> String {
    const MAX: usize = 128;
    if value.len() <= MAX {
        return value.to_string();
    }
    let mut end = MAX;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &value[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_carries_error_info_with_its_reason() {
        let err = Error::LockedByOtherOwner {
            slug: "add-x".into(),
            holder: "alice".into(),
            principal: None,
            expires_at: OffsetDateTime::UNIX_EPOCH,
        };
        let status = err.into_status();
        assert_eq!(status.code(), Code::Aborted);
        let info = status.get_details_error_info().expect("error info");
        assert_eq!(info.reason, "LOCKED_BY_OTHER_OWNER");
        assert_eq!(info.metadata.get("holder").map(String::as_str), Some("alice"));
    }

    #[test]
    fn internal_errors_do_not_leak_their_detail() {
        let status = Error::Internal("open /secret/path: denied".into()).into_status();
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("/secret/path"));
    }

    #[test]
    fn rate_limit_carries_retry_info() {
        let status = Error::RateLimited { retry_after: Duration::from_millis(1500) }.into_status();
        assert_eq!(status.code(), Code::ResourceExhausted);
        let retry = status.get_details_retry_info().expect("retry info");
        assert_eq!(retry.retry_delay, Some(Duration::from_millis(1500)));
    }

    #[test]
    fn a_full_disk_or_spent_quota_is_named_resource_exhausted_not_internal() {
        for raw in [libc::ENOSPC, libc::EDQUOT] {
            let err = Error::io(
                "write tasks",
                std::path::Path::new("/srv/openspec/changes/x/tasks.md"),
                std::io::Error::from_raw_os_error(raw),
            );
            assert!(matches!(&err, Error::WorkspaceFull { path, .. } if path == "x/tasks.md"), "{err:?}");
            let status = err.into_status();
            assert_eq!(status.code(), Code::ResourceExhausted);
            assert_eq!(status.get_details_error_info().expect("error info").reason, "WORKSPACE_FULL");
            assert!(status.message().contains("free space on the workspace's file system"), "{}", status.message());
            assert!(!status.message().contains("/srv"), "the host's path leaked: {}", status.message());
        }
    }

    #[test]
    fn long_values_are_truncated_on_a_char_boundary() {
        let long = "é".repeat(200);
        let t = truncate(&long);
        assert!(t.len() <= 132);
    }
}
