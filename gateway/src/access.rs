//! Who may call, and how often. The gateway asks; the embedding binary answers
//! with the same token set and buckets the gRPC service uses, so both faces
//! admit exactly the same callers.

/// The outcome of admitting one HTTP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead as this principal. `can_write: false`: an OAuth token without the write
    /// scopes, whose calls to tools that change the workspace get 403 `insufficient_scope`.
    Allowed { principal: String, can_write: bool },
    /// No or wrong bearer token: 401 with `WWW-Authenticate`.
    Unauthenticated,
    /// A genuine OAuth access token without a required scope: 403 `insufficient_scope`.
    InsufficientScope,
    /// Over the principal's rate: 429 with `Retry-After` (seconds, rounded up).
    RateLimited { retry_after: std::time::Duration },
}

pub trait Access: Send + Sync + 'static {
    /// Checks the `Authorization` header value and the principal's rate limit.
    fn admit(&self, authorization: Option<&str>) -> Admission;
    /// Whether tokens are configured (with none, every caller is `anonymous`).
    fn auth_enabled(&self) -> bool;

    /// `Some(wait)` while `client` may not try credentials: it failed too often lately.
    /// Asked before [`Access::admit`], so a throttled client's token is never looked at.
    fn auth_throttled(&self, _client: std::net::IpAddr) -> Option<std::time::Duration> {
        None
    }

    /// `client` presented credentials that were refused.
    fn auth_failed(&self, _client: std::net::IpAddr) {}
}

/// Admits everyone as `anonymous`, unlimited. For tests and fixtures.
pub struct OpenAccess;

impl Access for OpenAccess {
    fn admit(&self, _authorization: Option<&str>) -> Admission {
        Admission::Allowed { principal: "anonymous".into(), can_write: true }
    }

    fn auth_enabled(&self) -> bool {
        false
    }
}
