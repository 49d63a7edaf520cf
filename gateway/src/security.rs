//! Request admission and response hardening, one tower layer per concern.
//!
//! [`protect`] wraps the routes that need a principal (`/mcp`, `/sse`,
//! `/messages`, `/v1/...`). Request order, outermost first:
//!
//! 1. [`HostOriginCheck`]: `Host` and `Origin` against DNS rebinding → 403.
//! 2. [`AuthCheck`]: bearer token and rate limit through [`Access`] → 401 / 429;
//!    on success the request carries a [`Principal`] extension.
//! 3. [`BodyCapLayer`]: `Content-Length` over the cap → 413 up front; a body
//!    without a length is wrapped so that reading past the cap fails, and any
//!    413 coming back from a handler is given our error body. Every body must also
//!    arrive within [`BODY_READ_TIMEOUT`] of the first wait for it ([`PacedBody`]), so a
//!    client cannot hold a connection by trickling one (the request head has its own
//!    timeout in the server, see `task_mcp::startup`).
//! 4. `DefaultBodyLimit::disable()`: axum's own 2 MiB extractor cap would
//!    otherwise undercut (or double-box) ours.
//!
//! Host/Origin comes first so a rebinding page learns nothing, not even
//! whether its token would have worked; the body cap comes after auth so an
//! anonymous caller cannot make the gateway read anything.
//!
//! [`outer`] wraps every route, health included. Outermost first: the HTTP
//! metrics ([`crate::metrics::HttpMetricsLayer`]), request counting
//! ([`StatsLayer`]), `x-request-id` set/propagate, security headers, CORS.
//! Counting is outermost so it sees the final status of everything, CORS
//! preflights included; CORS comes late so its preflight answers still get
//! a request id and the security headers. Innermost, [`AuthThrottleLayer`]
//! refuses (429) a client address that failed authentication too often lately.
//!
//! [`AuthCheck`] also counts `auth.attempts` (when tokens are configured) and
//! `rate_limit.hits`, with the transport of the path (`mcp` or `http`). The
//! service's own auth layer skips calls the gateway forwards, so an admitted
//! MCP/HTTP request is one attempt, not two.
//!
//! Error bodies: on the MCP paths a JSON-RPC error with `id: null` and code
//! `-32000` for every transport-level refusal (as the TypeScript SDK does:
//! the refusal is not about any one JSON-RPC request, and clients key on the
//! HTTP status), with `data.reason` naming it; elsewhere the REST body
//! `{code, reason, message, details}`.
use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    extract::{DefaultBodyLimit, Request},
    response::Response,
};
use futures_util::future::{Either, Ready, ready};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use pin_project_lite::pin_project;
use serde_json::{Value, json};
use tower::{
    Layer, Service, ServiceBuilder,
    util::{MapRequestLayer, MapResponseLayer},
};
use tower_http::{
    cors::{AllowOrigin, CorsLayer},
    request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer},
};

use crate::{
    Access, Admission, AppState, BearerError, GatewayConfig, ProtectedResource, TrustedProxies, headers,
    health::{Rejection, StatsRef},
    metrics::{AuthResult, GatewayMetrics, Transport},
};

/// The caller admitted by [`AuthCheck`], for handlers (`Extension<Principal>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal(pub String);

/// Beside [`Principal`] when the caller's token reads and may not write: a call to a tool
/// that is not read-only is refused at the edge with the step-up challenge (MCP's scope
/// challenge), rather than failing inside the call. The service refuses it too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOnly;

/// MCP's scope challenge for a call to `tool` by a caller whose token may only read, when the
/// tool changes the workspace: 403 with `error="insufficient_scope"` and the scopes to ask for,
/// so the client can get a token that holds them and retry. `None`: the call may go ahead.
pub fn refuse_write(
    state: &AppState,
    read_only: Option<ReadOnly>,
    tool: &crate::upstream::ToolDef,
    principal: Option<&str>,
    mcp: bool,
) -> Option<Response> {
    if read_only.is_none() || tool.read_only {
        return None;
    }
    tracing::info!(principal, tool = tool.name, "refused: the access token may not write");
    Some(Refusal::InsufficientScope.response_for(mcp, state.config.oauth.as_ref()))
}

/// JSON-RPC error code for transport-level refusals (403, 401, 429, 413).
pub const TRANSPORT_ERROR: i64 = -32000;

/// The `realm` of our bearer challenges.
const CHALLENGE: &str = "Bearer realm=\"task-mcp\"";
const CHALLENGE_INVALID: &str = "Bearer realm=\"task-mcp\", error=\"invalid_token\"";

/// Layers for routes that need a principal.
pub fn protect(router: Router<Arc<AppState>>, state: &Arc<AppState>) -> Router<Arc<AppState>> {
    protect_with(router, &state.config, Arc::clone(&state.access), Arc::clone(state))
}

/// How long a request body may take to arrive, from the first time a handler waits for it.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// [`protect`] with its parts spelled out, so the layers can be tested without
/// an upstream.
pub fn protect_with<S, T>(router: Router<S>, config: &GatewayConfig, access: Arc<dyn Access>, stats: T) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    T: StatsRef,
{
    // One `Router::layer` call for the whole stack: axum boxes (and clones per
    // request) a route once per `layer` call.
    router.layer(
        ServiceBuilder::new()
            .layer(CheckLayer::new(HostOriginCheck::new(config), stats.clone()).behind(&config.trusted_proxies))
            .layer(
                CheckLayer::new(
                    AuthCheck { access, metrics: stats.metrics(), oauth: config.oauth.clone().map(Arc::new) },
                    stats.clone(),
                )
                .behind(&config.trusted_proxies),
            )
            .layer(BodyCapLayer { max: config.max_body_bytes, stats, proxies: config.trusted_proxies.clone() })
            .layer(DefaultBodyLimit::disable()),
    )
}

/// Layers for every route.
pub fn outer(router: Router<Arc<AppState>>, state: &Arc<AppState>) -> Router<Arc<AppState>> {
    outer_with(router, &state.config, Some(Arc::clone(&state.access)), Arc::clone(state))
}

/// [`outer`] with its parts spelled out (for tests); `access` throttles failed authentication.
pub fn outer_with<S, T>(
    router: Router<S>,
    config: &GatewayConfig,
    access: Option<Arc<dyn Access>>,
    stats: T,
) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    T: StatsRef,
{
    router.layer(
        ServiceBuilder::new()
            .layer(crate::metrics::HttpMetricsLayer::new(stats.metrics()))
            .layer(StatsLayer { stats: stats.clone() })
            .layer(SetRequestIdLayer::x_request_id(MakeCounterId))
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(MapResponseLayer::new(security_headers as fn(Response) -> Response))
            .option_layer(cors(&config.allowed_origins))
            .option_layer(access.map(|access| AuthThrottleLayer {
                access,
                proxies: config.trusted_proxies.clone(),
                stats: stats.clone(),
            }))
            .option_layer(config.name_client.then(|| {
                let proxies = config.trusted_proxies.clone();
                MapRequestLayer::new(move |req| crate::proxies::name_client(&proxies, req))
            })),
    )
}

// ---------------------------------------------------------------------------
// Refusals and their bodies

/// Why [`protect`] turned a request away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    HostNotAllowed,
    OriginNotAllowed,
    MissingToken,
    InvalidToken,
    /// A valid OAuth access token without a scope the server requires.
    InsufficientScope,
    RateLimited(Duration),
    /// The client address failed authentication too often lately ([`AuthThrottleLayer`]).
    AuthThrottled(Duration),
    BodyTooLarge(usize),
}

impl Refusal {
    pub fn kind(self) -> Rejection {
        match self {
            Refusal::HostNotAllowed | Refusal::OriginNotAllowed | Refusal::InsufficientScope => Rejection::Forbidden,
            Refusal::MissingToken | Refusal::InvalidToken => Rejection::Unauthenticated,
            Refusal::RateLimited(_) | Refusal::AuthThrottled(_) => Rejection::RateLimited,
            Refusal::BodyTooLarge(_) => Rejection::PayloadTooLarge,
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Refusal::HostNotAllowed | Refusal::OriginNotAllowed | Refusal::InsufficientScope => StatusCode::FORBIDDEN,
            Refusal::MissingToken | Refusal::InvalidToken => StatusCode::UNAUTHORIZED,
            Refusal::RateLimited(_) | Refusal::AuthThrottled(_) => StatusCode::TOO_MANY_REQUESTS,
            Refusal::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    /// gRPC code name for the REST body: what the gRPC face says in the same case.
    fn code(self) -> &'static str {
        match self {
            Refusal::HostNotAllowed | Refusal::OriginNotAllowed | Refusal::InsufficientScope => "PERMISSION_DENIED",
            Refusal::MissingToken | Refusal::InvalidToken => "UNAUTHENTICATED",
            Refusal::RateLimited(_) | Refusal::AuthThrottled(_) | Refusal::BodyTooLarge(_) => "RESOURCE_EXHAUSTED",
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Refusal::HostNotAllowed => "HOST_NOT_ALLOWED",
            Refusal::OriginNotAllowed => "ORIGIN_NOT_ALLOWED",
            Refusal::MissingToken => "MISSING_TOKEN",
            Refusal::InvalidToken => "INVALID_TOKEN",
            Refusal::InsufficientScope => "INSUFFICIENT_SCOPE",
            Refusal::RateLimited(_) => "RATE_LIMITED",
            Refusal::AuthThrottled(_) => "AUTH_THROTTLED",
            Refusal::BodyTooLarge(_) => "BODY_TOO_LARGE",
        }
    }

    fn message(self) -> String {
        match self {
            Refusal::HostNotAllowed => "Host header not allowed".into(),
            Refusal::OriginNotAllowed => "Origin not allowed".into(),
            Refusal::MissingToken => "a bearer token is required".into(),
            Refusal::InvalidToken => "the bearer token is not valid".into(),
            Refusal::InsufficientScope => "the access token lacks a scope this server requires".into(),
            Refusal::RateLimited(after) => {
                format!("rate limit exceeded; retry after {} s", retry_after_secs(after))
            }
            Refusal::AuthThrottled(after) => {
                format!("too many failed authentications from this address; retry after {} s", retry_after_secs(after))
            }
            Refusal::BodyTooLarge(max) => format!("request body exceeds {max} bytes"),
        }
    }

    /// The error response: JSON-RPC on the MCP paths, REST elsewhere, plus the
    /// headers the status calls for.
    pub fn response(self, mcp: bool) -> Response {
        self.response_for(mcp, None)
    }

    /// [`Refusal::response`]; with OAuth, the bearer challenges name the resource's metadata
    /// and the scopes to ask for (RFC 9728 §5.1, RFC 6750 §3).
    pub fn response_for(self, mcp: bool, oauth: Option<&ProtectedResource>) -> Response {
        let message = self.message();
        let body = if mcp {
            json!({
                "jsonrpc": "2.0",
                "id": null,
                "error": {"code": TRANSPORT_ERROR, "message": message, "data": {"reason": self.reason()}},
            })
        } else {
            let details = match self {
                // Same shape as the upstream's `RetryInfo` detail (error.rs).
                Refusal::RateLimited(after) | Refusal::AuthThrottled(after) => {
                    json!({"retryInfo": {"retryDelayMs": u64::try_from(after.as_millis()).unwrap_or(u64::MAX)}})
                }
                _ => json!({}),
            };
            crate::rest::error_body(self.code(), self.reason(), &message, details)
        };
        let mut res = json_response(self.status(), &body);
        let headers = res.headers_mut();
        if let Some(challenge) = self.challenge(oauth) {
            headers.insert(header::WWW_AUTHENTICATE, challenge);
        }
        if let Refusal::RateLimited(after) | Refusal::AuthThrottled(after) = self {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs(after)));
        }
        res
    }

    /// The bearer challenge (`WWW-Authenticate`) this refusal carries, if any; with OAuth it
    /// names the resource's metadata and the scopes to ask for.
    pub fn challenge(self, oauth: Option<&ProtectedResource>) -> Option<HeaderValue> {
        match (self, oauth) {
            (Refusal::MissingToken, Some(oauth)) => Some(oauth.challenge(None)),
            (Refusal::InvalidToken, Some(oauth)) => Some(oauth.challenge(Some(BearerError::InvalidToken))),
            (Refusal::InsufficientScope, Some(oauth)) => Some(oauth.challenge(Some(BearerError::InsufficientScope))),
            (Refusal::MissingToken, None) => Some(HeaderValue::from_static(CHALLENGE)),
            (Refusal::InvalidToken, None) => Some(HeaderValue::from_static(CHALLENGE_INVALID)),
            _ => None,
        }
    }
}

/// `Retry-After` in whole seconds, rounded up and at least 1: a client told
/// "0" would retry at once and be refused again.
pub fn retry_after_secs(after: Duration) -> u64 {
    let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
    secs.max(1)
}

// ---------------------------------------------------------------------------
// One log line per refusal, within a budget

/// Refusal lines written per second at most. One client sent 14,600 wrong tokens a second in
/// the abuse audit: a line for each would turn a flood of requests into a flood of log, so the
/// rest are counted, and the next line written says how many were not.
const REFUSAL_LINES_PER_SECOND: u32 = 10;

/// The budget of [`REFUSAL_LINES_PER_SECOND`], in windows of one second.
#[derive(Debug, Default)]
struct LineBudget {
    window: Option<std::time::Instant>,
    written: u32,
    skipped: u64,
}

impl LineBudget {
    /// `Some(lines skipped since the last one written)` when a line may be written at `now`.
    fn take(&mut self, now: std::time::Instant) -> Option<u64> {
        if self.window.is_none_or(|start| now.duration_since(start) >= Duration::from_secs(1)) {
            self.window = Some(now);
            self.written = 0;
        }
        if self.written >= REFUSAL_LINES_PER_SECOND {
            self.skipped += 1;
            return None;
        }
        self.written += 1;
        Some(std::mem::take(&mut self.skipped))
    }
}

static REFUSAL_LINES: std::sync::Mutex<LineBudget> =
    std::sync::Mutex::new(LineBudget { window: None, written: 0, skipped: 0 });

/// What a refusal's log line says about the request, taken when the request is refused (or,
/// for a body cut off while it streams in, when it arrives).
pub struct Refused {
    method: Method,
    uri: Uri,
    /// The client: the TCP peer, or the one a trusted proxy names.
    client: Option<std::net::IpAddr>,
    request_id: Option<HeaderValue>,
}

impl Refused {
    pub fn of(req: &Request, proxies: &TrustedProxies) -> Refused {
        Refused {
            method: req.method().clone(),
            uri: req.uri().clone(),
            client: peer_address(req).map(|peer| proxies.client(peer, req.headers())),
            request_id: req.headers().get(headers::X_REQUEST_ID).cloned(),
        }
    }

    /// Logs `refusal`: at `warn`, but a missing token at `info` (MCP clients ask without one
    /// first, to learn that a token is needed).
    pub fn log(&self, refusal: Refusal) {
        let budget =
            REFUSAL_LINES.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take(std::time::Instant::now());
        let Some(not_logged) = budget else { return };
        let client = self.client.map(tracing::field::display);
        let request_id = self.request_id.as_ref().and_then(|v| v.to_str().ok());
        let (reason, status, method, path) =
            (refusal.reason(), refusal.status().as_u16(), self.method.as_str(), self.uri.path());
        if refusal == Refusal::MissingToken {
            tracing::info!(reason, status, method, path, client, request_id, not_logged, "request refused");
        } else {
            tracing::warn!(reason, status, method, path, client, request_id, not_logged, "request refused");
        }
    }
}

/// Paths whose clients speak JSON-RPC and expect JSON-RPC error bodies.
pub fn is_mcp_path(path: &str) -> bool {
    ["/mcp", "/sse", "/messages"]
        .iter()
        .any(|p| path.strip_prefix(p).is_some_and(|rest| rest.is_empty() || rest.starts_with('/')))
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    // Serializing a `Value` cannot fail (its map keys are strings).
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut res = Response::new(Body::from(bytes));
    *res.status_mut() = status;
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

// ---------------------------------------------------------------------------
// A synchronous admission rule as a layer

/// One admission rule: inspects (and may annotate) the request, or refuses
/// it. Synchronous, so the layer needs no boxed future.
pub trait Check: Clone + Send + Sync + 'static {
    fn check(&self, req: &mut Request) -> Result<(), Refusal>;

    /// The answer to a refusal; `mcp`: the path speaks JSON-RPC.
    fn respond(&self, refusal: Refusal, mcp: bool) -> Response {
        refusal.response(mcp)
    }
}

/// Runs a [`Check`]; a refusal is counted and answered in the handler's place.
#[derive(Clone)]
pub struct CheckLayer<C, T> {
    check: C,
    stats: T,
    proxies: TrustedProxies,
}

impl<C, T> CheckLayer<C, T> {
    pub fn new(check: C, stats: T) -> Self {
        CheckLayer { check, stats, proxies: TrustedProxies::default() }
    }

    /// Behind `proxies`, a refusal's log line names the client they name.
    pub fn behind(mut self, proxies: &TrustedProxies) -> Self {
        self.proxies = proxies.clone();
        self
    }
}

impl<S, C: Clone, T: Clone> Layer<S> for CheckLayer<C, T> {
    type Service = CheckService<S, C, T>;

    fn layer(&self, inner: S) -> Self::Service {
        CheckService { inner, check: self.check.clone(), stats: self.stats.clone(), proxies: self.proxies.clone() }
    }
}

#[derive(Clone)]
pub struct CheckService<S, C, T> {
    inner: S,
    check: C,
    stats: T,
    proxies: TrustedProxies,
}

impl<S, C, T> Service<Request> for CheckService<S, C, T>
where
    S: Service<Request, Response = Response>,
    C: Check,
    T: StatsRef,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        match self.check.check(&mut req) {
            Ok(()) => Either::Right(self.inner.call(req)),
            Err(refusal) => {
                self.stats.stats().reject(refusal.kind());
                Refused::of(&req, &self.proxies).log(refusal);
                Either::Left(ready(Ok(self.check.respond(refusal, is_mcp_path(req.uri().path())))))
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Host and Origin (DNS rebinding)

/// The allowed `Host` and `Origin` values, parsed once.
#[derive(Debug, Clone, Default)]
pub struct HostPolicy {
    /// `(name, port)`; empty means loopback names on any port.
    hosts: Vec<(String, Option<String>)>,
    /// `*` in `allowed_hosts`: any host (behind a proxy that checks it).
    any_host: bool,
    /// Exact origins; empty means loopback origins only.
    origins: Vec<String>,
}

const LOOPBACK_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

impl HostPolicy {
    pub fn new(config: &GatewayConfig) -> Self {
        let mut policy = HostPolicy::default();
        for entry in &config.allowed_hosts {
            let entry = entry.trim();
            if entry == "*" {
                policy.any_host = true;
            } else if let Some((name, port)) = split_host_port(entry) {
                policy.hosts.push((name.to_ascii_lowercase(), port.map(str::to_owned)));
            } else {
                tracing::warn!(entry, "ignoring malformed allowed host");
            }
        }
        policy.origins = config
            .allowed_origins
            .iter()
            // Browsers never send a trailing slash; an operator may type one.
            .map(|o| o.trim().trim_end_matches('/').to_owned())
            .collect();
        policy
    }

    pub fn host_allowed(&self, host: &str) -> bool {
        if self.any_host {
            return true;
        }
        let Some((name, port)) = split_host_port(host) else { return false };
        if self.hosts.is_empty() {
            return LOOPBACK_NAMES.iter().any(|l| l.eq_ignore_ascii_case(name));
        }
        self.hosts.iter().any(|(allowed, allowed_port)| {
            allowed.eq_ignore_ascii_case(name) && allowed_port.as_deref().is_none_or(|p| Some(p) == port)
        })
    }

    pub fn origin_allowed(&self, origin: &str) -> bool {
        if !self.origins.is_empty() {
            return self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin));
        }
        is_loopback_origin(origin)
    }

    /// Both checks for one request. A second `Host` or `Origin` line is refused too: the check
    /// reads the first, and a proxy in front may act on the last.
    pub fn check(&self, uri: &Uri, headers: &HeaderMap) -> Result<(), Refusal> {
        let mut hosts = headers.get_all(header::HOST).iter();
        let host_header = hosts.next();
        // The authority the client asked for: `:authority` / absolute-form URI first
        // (RFC 9113 §8.3.1, RFC 9112 §3.2.2), else the `Host` header. A missing Host
        // (HTTP/1.0) is refused too: nothing proves the client meant this server.
        let host = match uri.authority() {
            Some(authority) => Some(authority.as_str()),
            None => host_header.and_then(|h| h.to_str().ok()),
        };
        if hosts.next().is_some() || !host.is_some_and(|h| self.host_allowed(h)) {
            return Err(Refusal::HostNotAllowed);
        }
        let mut origins = headers.get_all(header::ORIGIN).iter();
        match (origins.next(), origins.next()) {
            (None, _) => Ok(()),
            (Some(origin), None) if origin.to_str().is_ok_and(|o| self.origin_allowed(o)) => Ok(()),
            _ => Err(Refusal::OriginNotAllowed),
        }
    }
}

/// `http(s)://localhost|127.0.0.1|[::1][:port]`, nothing more (an origin
/// has no path; `null` and other schemes are refused).
fn is_loopback_origin(origin: &str) -> bool {
    let rest = match origin.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") => rest,
        _ => return false,
    };
    match split_host_port(rest) {
        Some((name, _)) => LOOPBACK_NAMES.iter().any(|l| l.eq_ignore_ascii_case(name)),
        None => false,
    }
}

/// Splits `host[:port]` / `[v6][:port]`. `None` for anything else (empty
/// name, non-numeric port, a path, userinfo, an unbracketed IPv6 address).
fn split_host_port(s: &str) -> Option<(&str, Option<&str>)> {
    let (name, port) = if s.starts_with('[') {
        let end = s.find(']')?;
        let (name, rest) = s.split_at(end + 1);
        match rest {
            "" => (name, None),
            _ => (name, Some(rest.strip_prefix(':')?)),
        }
    } else {
        match s.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (s, None),
        }
    };
    let name_ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b));
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    (name_ok && port_ok).then_some((name, port))
}

/// Layer 1 of [`protect`].
#[derive(Clone)]
pub struct HostOriginCheck {
    policy: Arc<HostPolicy>,
}

impl HostOriginCheck {
    pub fn new(config: &GatewayConfig) -> Self {
        HostOriginCheck { policy: Arc::new(HostPolicy::new(config)) }
    }
}

impl Check for HostOriginCheck {
    fn check(&self, req: &mut Request) -> Result<(), Refusal> {
        self.policy.check(req.uri(), req.headers())
    }
}

// ---------------------------------------------------------------------------
// Authentication and rate limit

/// Layer 2 of [`protect`].
#[derive(Clone)]
pub struct AuthCheck {
    pub access: Arc<dyn Access>,
    /// `auth.attempts` and `rate_limit.hits`, labelled with the path's transport.
    pub metrics: Arc<GatewayMetrics>,
    /// With OAuth, what the challenges name.
    pub oauth: Option<Arc<ProtectedResource>>,
}

/// Asks `access` about the request's `Authorization` header, and counts the
/// attempt (only when tokens are configured: without them no route is
/// authenticated, so there is nothing to attempt) and a rate-limit refusal.
fn admit(
    access: &dyn Access,
    metrics: &GatewayMetrics,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<(Principal, Option<ReadOnly>), Refusal> {
    let sent = headers.get(header::AUTHORIZATION);
    // A non-UTF-8 header cannot be a valid token; with auth disabled it does
    // not matter, with auth enabled `None` is refused like any bad token.
    let admission = access.admit(sent.and_then(|v| v.to_str().ok()));
    let transport = Transport::of_path(uri.path());
    if access.auth_enabled() {
        let result = match admission {
            Admission::Allowed { .. } | Admission::RateLimited { .. } => AuthResult::Valid,
            Admission::Unauthenticated => AuthResult::of_refused(sent),
            Admission::InsufficientScope => AuthResult::InsufficientScope,
        };
        metrics.auth(transport, result);
    }
    match admission {
        Admission::Allowed { principal, can_write } => Ok((Principal(principal), (!can_write).then_some(ReadOnly))),
        Admission::Unauthenticated => match BearerError::unauthenticated(sent) {
            None => Err(Refusal::MissingToken),
            Some(_) => Err(Refusal::InvalidToken),
        },
        Admission::InsufficientScope => Err(Refusal::InsufficientScope),
        Admission::RateLimited { retry_after } => {
            metrics.rate_limited(transport);
            Err(Refusal::RateLimited(retry_after))
        }
    }
}

impl Check for AuthCheck {
    fn check(&self, req: &mut Request) -> Result<(), Refusal> {
        let (principal, read_only) = admit(self.access.as_ref(), &self.metrics, req.uri(), req.headers())?;
        req.extensions_mut().insert(principal);
        if let Some(read_only) = read_only {
            req.extensions_mut().insert(read_only);
        }
        Ok(())
    }

    fn respond(&self, refusal: Refusal, mcp: bool) -> Response {
        refusal.response_for(mcp, self.oauth.as_deref())
    }
}

/// Host/Origin plus authentication for a handler outside [`protect`]
/// (`/health/metrics`): the same rules, counted the same way. The caller
/// answers `refusal.response(false)`.
pub fn authorize(state: &AppState, uri: &Uri, headers: &HeaderMap) -> Result<Principal, Refusal> {
    HostPolicy::new(&state.config)
        .check(uri, headers)
        .and_then(|()| admit(state.access.as_ref(), &state.metrics, uri, headers))
        .map(|(principal, _)| principal)
        .inspect_err(|refusal| state.stats.reject(refusal.kind()))
}

// ---------------------------------------------------------------------------
// Throttling of failed authentication, per client address

/// The innermost layer of [`outer`]: a client address that failed authentication too often
/// lately ([`Access::auth_throttled`]) gets 429 with `Retry-After` before its token is looked at,
/// on every route that takes one (`/health/metrics` included); a request that presented
/// credentials and was answered 401 is one failure ([`Access::auth_failed`]). Outside
/// [`protect`] so that `/health/metrics`, which authenticates in its handler, cannot serve as an
/// unthrottled oracle; `/health/live` and `/health/ready` pass untouched, so probes are never
/// throttled. The address is the TCP peer's (`ConnectInfo`), or behind a trusted proxy the
/// client that proxy names in `X-Forwarded-For` ([`TrustedProxies::client`]); never a header
/// an untrusted peer writes.
#[derive(Clone)]
pub struct AuthThrottleLayer<T> {
    pub access: Arc<dyn Access>,
    pub proxies: TrustedProxies,
    pub stats: T,
}

impl<S, T: Clone> Layer<S> for AuthThrottleLayer<T> {
    type Service = AuthThrottle<S, T>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthThrottle {
            inner,
            access: Arc::clone(&self.access),
            proxies: self.proxies.clone(),
            stats: self.stats.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthThrottle<S, T> {
    inner: S,
    access: Arc<dyn Access>,
    proxies: TrustedProxies,
    stats: T,
}

/// The TCP peer the server recorded.
fn peer_address(req: &Request) -> Option<std::net::IpAddr> {
    req.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|info| info.0.ip())
}

impl<S, T> Service<Request> for AuthThrottle<S, T>
where
    S: Service<Request, Response = Response>,
    T: StatsRef,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response, S::Error>>, AuthThrottleFuture<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let probe = matches!(req.uri().path(), "/health/live" | "/health/ready");
        let peer = peer_address(&req).filter(|_| !probe && self.access.auth_enabled());
        let Some(peer) = peer else {
            return Either::Right(AuthThrottleFuture { inner: self.inner.call(req), failed: None });
        };
        let client = self.proxies.client(peer, req.headers());
        if let Some(wait) = self.access.auth_throttled(client) {
            let refusal = Refusal::AuthThrottled(wait);
            let path = req.uri().path();
            self.stats.metrics().auth(Transport::of_path(path), AuthResult::Throttled);
            self.stats.stats().reject(refusal.kind());
            Refused::of(&req, &self.proxies).log(refusal);
            return Either::Left(ready(Ok(refusal.response(is_mcp_path(req.uri().path())))));
        }
        // Only a request that presented credentials can fail: one without is a client
        // discovering that a token is needed, not a guess.
        let presented = req.headers().contains_key(header::AUTHORIZATION);
        let failed = presented.then(|| (Arc::clone(&self.access), client));
        Either::Right(AuthThrottleFuture { inner: self.inner.call(req), failed })
    }
}

pin_project! {
    /// Records a failure when the answer is 401.
    pub struct AuthThrottleFuture<F> {
        #[pin]
        inner: F,
        failed: Option<(Arc<dyn Access>, std::net::IpAddr)>,
    }
}

impl<F, E> Future for AuthThrottleFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let Ok(res) = &result
            && res.status() == StatusCode::UNAUTHORIZED
            && let Some((access, client)) = this.failed.take()
        {
            access.auth_failed(client);
        }
        Poll::Ready(result)
    }
}

// ---------------------------------------------------------------------------
// Body cap

/// Layer 3 of [`protect`].
#[derive(Clone)]
pub struct BodyCapLayer<T> {
    pub max: usize,
    pub stats: T,
    /// For the refusal's log line (see [`CheckLayer::behind`]).
    pub proxies: TrustedProxies,
}

impl<S, T: Clone> Layer<S> for BodyCapLayer<T> {
    type Service = BodyCap<S, T>;

    fn layer(&self, inner: S) -> Self::Service {
        BodyCap { inner, max: self.max, stats: self.stats.clone(), proxies: self.proxies.clone() }
    }
}

#[derive(Clone)]
pub struct BodyCap<S, T> {
    inner: S,
    max: usize,
    stats: T,
    proxies: TrustedProxies,
}

impl<S, T> Service<Request> for BodyCap<S, T>
where
    S: Service<Request, Response = Response>,
    T: StatsRef,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response, S::Error>>, BodyCapFuture<S::Future, T>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let mcp = is_mcp_path(req.uri().path());
        // With Transfer-Encoding the length header is not what frames the body
        // (hyper drops it then; another server might not): do not trust it.
        let declared = if req.headers().contains_key(header::TRANSFER_ENCODING) {
            None
        } else {
            req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        };
        // Only a body without a declared length can overflow once admitted (below).
        let refused = declared.is_none().then(|| Refused::of(&req, &self.proxies));
        let req = match declared {
            Some(len) if len > self.max as u64 => {
                let refusal = Refusal::BodyTooLarge(self.max);
                self.stats.stats().reject(refusal.kind());
                Refused::of(&req, &self.proxies).log(refusal);
                return Either::Left(ready(Ok(refusal.response(mcp))));
            }
            // hyper (HTTP/1 and h2 alike) refuses a body longer than its
            // Content-Length, so a declared length within the cap needs no limit.
            Some(_) => req.map(|body| Body::new(PacedBody::new(body, BODY_READ_TIMEOUT))),
            // Chunked or unannounced: cut the body off at the cap while reading.
            None => {
                let max = self.max;
                req.map(|body| Body::new(PacedBody::new(http_body_util::Limited::new(body, max), BODY_READ_TIMEOUT)))
            }
        };
        Either::Right(BodyCapFuture {
            inner: self.inner.call(req),
            mcp,
            max: self.max,
            stats: Some(self.stats.clone()),
            refused,
        })
    }
}

pin_project! {
    /// Gives a handler's 413 (axum's extractors answer `text/plain` when the
    /// limited body overflows) our error body, and counts it.
    pub struct BodyCapFuture<F, T> {
        #[pin]
        inner: F,
        mcp: bool,
        max: usize,
        stats: Option<T>,
        refused: Option<Refused>,
    }
}

impl<F, E, T> Future for BodyCapFuture<F, T>
where
    F: Future<Output = Result<Response, E>>,
    T: StatsRef,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = match this.inner.poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(res)) => res,
        };
        if res.status() != StatusCode::PAYLOAD_TOO_LARGE {
            return Poll::Ready(Ok(res));
        }
        if let Some(stats) = this.stats.take() {
            stats.stats().reject(Rejection::PayloadTooLarge);
        }
        if let Some(refused) = this.refused.take() {
            refused.log(Refusal::BodyTooLarge(*this.max));
        }
        let ours =
            res.headers().get(header::CONTENT_TYPE).is_some_and(|ct| ct.as_bytes().starts_with(b"application/json"));
        if ours {
            return Poll::Ready(Ok(res));
        }
        Poll::Ready(Ok(Refusal::BodyTooLarge(*this.max).response(*this.mcp)))
    }
}

pin_project! {
    /// A request body that fails once it has kept a handler waiting for `timeout` in all.
    /// The timer is armed at the first wait only: a body hyper has already read, the usual
    /// case, costs no timer (a timer per request was 1% of a call's instructions).
    pub struct PacedBody<B> {
        #[pin]
        inner: B,
        timeout: Duration,
        #[pin]
        deadline: Option<tokio::time::Sleep>,
    }
}

impl<B> PacedBody<B> {
    pub fn new(inner: B, timeout: Duration) -> Self {
        PacedBody { inner, timeout, deadline: None }
    }
}

/// The error of a [`PacedBody`] that took too long.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimedOut(Duration);

/// Why a request body could not be read, found in the error's source chain: over the cap
/// (413), too slow (408, RFC 9110 15.5.9), or cut short or otherwise broken (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFault {
    TooLarge,
    TimedOut,
    Broken,
}

impl BodyFault {
    pub fn of(err: &(dyn std::error::Error + 'static)) -> Self {
        let mut cur = Some(err);
        while let Some(e) = cur {
            // axum's body extractors (`Bytes`, `String`, `Json`) keep the error boxed twice:
            // the `Box<LengthLimitError>` they downcast to is itself the error in the chain, and
            // a `Box`'s `source()` skips what it holds.
            if e.is::<http_body_util::LengthLimitError>() || e.is::<Box<http_body_util::LengthLimitError>>() {
                return BodyFault::TooLarge;
            }
            if e.is::<BodyTimedOut>() {
                return BodyFault::TimedOut;
            }
            cur = e.source();
        }
        BodyFault::Broken
    }
}

impl<B> http_body::Body for PacedBody<B>
where
    B: http_body::Body,
    B::Error: Into<axum::BoxError>,
{
    type Data = B::Data;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if this.deadline.is_none() {
            this.deadline.set(Some(tokio::time::sleep(*this.timeout)));
        }
        match this.deadline.as_pin_mut().map(|sleep| sleep.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Some(Err(Box::new(BodyTimedOut(*this.timeout))))),
            _ => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

// ---------------------------------------------------------------------------
// Request counting

/// Layer 1 of [`outer`]: counts each request on arrival and its response by
/// status class (5xx = errors).
#[derive(Clone)]
pub struct StatsLayer<T> {
    pub stats: T,
}

impl<S, T: Clone> Layer<S> for StatsLayer<T> {
    type Service = StatsService<S, T>;

    fn layer(&self, inner: S) -> Self::Service {
        StatsService { inner, stats: self.stats.clone() }
    }
}

#[derive(Clone)]
pub struct StatsService<S, T> {
    inner: S,
    stats: T,
}

impl<S, T, B, ResB> Service<http::Request<B>> for StatsService<S, T>
where
    S: Service<http::Request<B>, Response = http::Response<ResB>>,
    T: StatsRef,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = StatsFuture<S::Future, T>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        self.stats.stats().request();
        StatsFuture { inner: self.inner.call(req), stats: self.stats.clone() }
    }
}

pin_project! {
    pub struct StatsFuture<F, T> {
        #[pin]
        inner: F,
        stats: T,
    }
}

impl<F, T, ResB, E> Future for StatsFuture<F, T>
where
    F: Future<Output = Result<http::Response<ResB>, E>>,
    T: StatsRef,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        match &out {
            Ok(res) => this.stats.stats().response(res.status()),
            // axum routes are infallible; a failing service would become a
            // 500 at the server, so count it as one.
            Err(_) => this.stats.stats().response(StatusCode::INTERNAL_SERVER_ERROR),
        }
        Poll::Ready(out)
    }
}

// ---------------------------------------------------------------------------
// Request ids

/// `x-request-id` for requests that bring none: a per-process random prefix
/// and a counter, as 32 hex digits (the W3C trace-id shape). Unique without a
/// syscall or RNG call per request, unlike a v4 UUID; request ids need to be
/// unique, not secret.
#[derive(Clone, Copy, Default)]
pub struct MakeCounterId;

static REQUEST_COUNTER: AtomicU64 = AtomicU64::new(0);

fn process_prefix() -> u64 {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    *PREFIX.get_or_init(rand::random)
}

impl MakeRequestId for MakeCounterId {
    fn make_request_id<B>(&mut self, _request: &http::Request<B>) -> Option<RequestId> {
        let n = REQUEST_COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 32];
        hex_into(&mut buf[..16], process_prefix());
        hex_into(&mut buf[16..], n);
        HeaderValue::from_bytes(&buf).ok().map(RequestId::new)
    }
}

fn hex_into(out: &mut [u8], mut v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(v & 0xf) as usize];
        v >>= 4;
    }
}

// ---------------------------------------------------------------------------
// Security headers

const CSP: &str = "default-src 'none'; frame-ancestors 'none'";

/// Every response: no MIME sniffing, no framing, no referrer, a CSP that
/// forbids everything (the gateway serves no documents), and no caching of
/// anything but event streams (which set their own `no-cache`). Values a
/// handler set are kept. Static header values: nothing is allocated here
/// beyond the header map's own growth.
pub fn security_headers(mut res: Response) -> Response {
    let sse = res.headers().get(header::CONTENT_TYPE).is_some_and(|ct| ct.as_bytes().starts_with(b"text/event-stream"));
    let headers = res.headers_mut();
    // `from_static` is a const fn over a `&'static str`: no copy, no allocation.
    headers.entry(header::X_CONTENT_TYPE_OPTIONS).or_insert(HeaderValue::from_static("nosniff"));
    headers.entry(header::X_FRAME_OPTIONS).or_insert(HeaderValue::from_static("DENY"));
    headers.entry(header::REFERRER_POLICY).or_insert(HeaderValue::from_static("no-referrer"));
    headers.entry(header::CONTENT_SECURITY_POLICY).or_insert(HeaderValue::from_static(CSP));
    if !sse {
        headers.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    }
    res
}

// ---------------------------------------------------------------------------
// CORS

/// CORS for the configured origins only. No list, no CORS headers at all (a
/// browser page on another origin then cannot read any answer). Credentials
/// are allowed because the origins are an explicit list, never `*`.
pub fn cors(origins: &[String]) -> Option<CorsLayer> {
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| {
            let o = o.trim().trim_end_matches('/');
            let parsed = HeaderValue::from_str(o).ok();
            if parsed.is_none() {
                tracing::warn!(origin = o, "ignoring malformed allowed origin");
            }
            parsed
        })
        .collect();
    if origins.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_credentials(true)
            .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::ACCEPT,
                headers::MCP_SESSION_ID,
                headers::MCP_PROTOCOL_VERSION,
                headers::LAST_EVENT_ID,
                headers::MCP_METHOD,
                headers::MCP_NAME,
                headers::X_REQUEST_ID,
                headers::TRACEPARENT,
            ])
            .expose_headers([
                headers::MCP_SESSION_ID,
                header::RETRY_AFTER,
                header::WWW_AUTHENTICATE,
                headers::X_REQUEST_ID,
            ])
            // Browsers cap this (Chrome: 2 h); 10 min saves a preflight per call.
            .max_age(Duration::from_secs(600)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::{get, post};
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    /// Admits `Bearer good` as `alice`, `Bearer slow` is rate limited.
    struct FakeAccess;

    impl Access for FakeAccess {
        fn admit(&self, authorization: Option<&str>) -> Admission {
            match authorization {
                Some("Bearer good") => Admission::Allowed { principal: "alice".into(), can_write: true },
                Some("Bearer slow") => Admission::RateLimited { retry_after: Duration::from_millis(1500) },
                _ => Admission::Unauthenticated,
            }
        }

        fn auth_enabled(&self) -> bool {
            true
        }
    }

    fn tiny() -> Router {
        async fn whoami(principal: Option<axum::Extension<Principal>>) -> String {
            principal.map(|p| p.0.0).unwrap_or_default()
        }
        async fn echo(body: Bytes) -> Bytes {
            body
        }
        Router::new()
            .route("/mcp", post(echo).get(whoami))
            .route("/v1/x", post(echo).get(whoami))
            .route("/sse", get(|| async { ([(header::CONTENT_TYPE, "text/event-stream")], "") }))
    }

    fn stats() -> Arc<crate::health::Stats> {
        Arc::new(crate::health::Stats::default())
    }

    fn req(method: Method, uri: &str, headers: &[(&str, &str)], body: impl Into<Body>) -> Request {
        let mut builder = http::Request::builder().method(method).uri(uri);
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            builder = builder.header(header::HOST, "localhost:8080");
        }
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(body.into()).unwrap()
    }

    async fn json_of(res: Response) -> Value {
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    async fn text_of(res: Response) -> String {
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    // -- Host / Origin ------------------------------------------------------

    fn host_only(config: &GatewayConfig, stats: Arc<crate::health::Stats>) -> Router {
        tiny().layer(CheckLayer::new(HostOriginCheck::new(config), stats))
    }

    #[tokio::test]
    async fn loopback_hosts_pass_by_default() {
        for host in ["localhost", "localhost:8080", "127.0.0.1:1", "[::1]:3000", "LOCALHOST"] {
            let app = host_only(&GatewayConfig::default(), stats());
            let res = app.oneshot(req(Method::GET, "/v1/x", &[("host", host)], Body::empty())).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK, "{host}");
        }
    }

    #[tokio::test]
    async fn foreign_host_is_403_with_rest_or_jsonrpc_body() {
        let s = stats();
        let app = host_only(&GatewayConfig::default(), s.clone());
        let res = app
            .clone()
            .oneshot(req(Method::GET, "/v1/x", &[("host", "evil.example:8080")], Body::empty()))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        let v = json_of(res).await;
        assert_eq!(v["code"], "PERMISSION_DENIED");
        assert_eq!(v["reason"], "HOST_NOT_ALLOWED");

        let res = app.oneshot(req(Method::POST, "/mcp", &[("host", "evil.example")], Body::empty())).await.unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        let v = json_of(res).await;
        assert_eq!(v["jsonrpc"], "2.0");
        assert_eq!(v["id"], Value::Null);
        assert_eq!(v["error"]["code"], TRANSPORT_ERROR);
        assert_eq!(s.snapshot().rejections.forbidden, 2);
    }

    #[tokio::test]
    async fn origin_checked_when_present() {
        let cases = [
            ("http://localhost:6274", StatusCode::OK),
            ("https://127.0.0.1", StatusCode::OK),
            ("http://[::1]:9", StatusCode::OK),
            ("http://evil.example", StatusCode::FORBIDDEN),
            ("http://localhost.evil.example", StatusCode::FORBIDDEN),
            ("null", StatusCode::FORBIDDEN),
            ("file://localhost", StatusCode::FORBIDDEN),
            ("http://localhost:6274/path", StatusCode::FORBIDDEN),
        ];
        for (origin, want) in cases {
            let app = host_only(&GatewayConfig::default(), stats());
            let res = app.oneshot(req(Method::GET, "/mcp", &[("origin", origin)], Body::empty())).await.unwrap();
            assert_eq!(res.status(), want, "{origin}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_arriving_fails_after_the_timeout_and_one_that_came_costs_no_timer() {
        use http_body::Body as _;
        let stalled = http_body_util::StreamBody::new(futures_util::stream::pending::<
            Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible>,
        >());
        let mut body = std::pin::pin!(PacedBody::new(stalled, Duration::from_secs(30)));
        let waited = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await;
        let err = waited.expect("an end").expect_err("the body timed out");
        assert!(err.is::<BodyTimedOut>(), "{err}");

        let mut arrived = std::pin::pin!(PacedBody::new(
            http_body_util::Full::new(bytes::Bytes::from("{}")),
            Duration::from_secs(30)
        ));
        let frame = std::future::poll_fn(|cx| arrived.as_mut().poll_frame(cx)).await;
        assert!(frame.expect("a frame").is_ok());
        assert!(arrived.deadline.is_none(), "no timer for a body that was there");
    }

    #[tokio::test]
    async fn a_second_host_or_origin_line_is_refused() {
        let twice: [&[(&str, &str)]; 2] = [
            &[("host", "localhost"), ("host", "evil.example")],
            &[("origin", "http://localhost"), ("origin", "http://evil.example")],
        ];
        for headers in twice {
            let app = host_only(&GatewayConfig::default(), stats());
            let res = app.oneshot(req(Method::GET, "/mcp", headers, Body::empty())).await.unwrap();
            assert_eq!(res.status(), StatusCode::FORBIDDEN, "{headers:?}");
        }
    }

    #[tokio::test]
    async fn configured_lists_replace_loopback_defaults() {
        let config = GatewayConfig {
            allowed_hosts: vec!["mcp.example.com".into(), "api.example.com:8443".into()],
            allowed_origins: vec!["https://app.example.com/".into()],
            ..GatewayConfig::default()
        };
        let cases = [
            (&[("host", "mcp.example.com:1234")][..], StatusCode::OK),
            (&[("host", "api.example.com:8443")][..], StatusCode::OK),
            (&[("host", "api.example.com:8444")][..], StatusCode::FORBIDDEN),
            (&[("host", "localhost")][..], StatusCode::FORBIDDEN),
            (&[("host", "mcp.example.com"), ("origin", "https://app.example.com")][..], StatusCode::OK),
            (&[("host", "mcp.example.com"), ("origin", "http://localhost:6274")][..], StatusCode::FORBIDDEN),
            // A configured name is matched whole, never as a prefix (or suffix) of another.
            (&[("host", "mcp.example.com.evil.net")][..], StatusCode::FORBIDDEN),
            (&[("host", "mcp.example.com.evil.net:1234")][..], StatusCode::FORBIDDEN),
            (&[("host", "evilmcp.example.com")][..], StatusCode::FORBIDDEN),
            (&[("host", "mcp.example.co")][..], StatusCode::FORBIDDEN),
            (&[("host", "mcp.example.com"), ("origin", "https://app.example.com.evil.net")][..], StatusCode::FORBIDDEN),
            (&[("host", "mcp.example.com"), ("origin", "https://app.example.com:8443")][..], StatusCode::FORBIDDEN),
            (&[("host", "mcp.example.com"), ("origin", "https://app.example.co")][..], StatusCode::FORBIDDEN),
            (&[("host", "mcp.example.com"), ("origin", "http://app.example.com")][..], StatusCode::FORBIDDEN),
        ];
        for (headers, want) in cases {
            let app = host_only(&config, stats());
            let res = app.oneshot(req(Method::GET, "/v1/x", headers, Body::empty())).await.unwrap();
            assert_eq!(res.status(), want, "{headers:?}");
        }
    }

    #[tokio::test]
    async fn wildcard_host_and_missing_host() {
        let any = GatewayConfig { allowed_hosts: vec!["*".into()], ..GatewayConfig::default() };
        let res = host_only(&any, stats())
            .oneshot(req(Method::GET, "/v1/x", &[("host", "whatever.example")], Body::empty()))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);

        let no_host = http::Request::builder().uri("/v1/x").body(Body::empty()).unwrap();
        let res = host_only(&GatewayConfig::default(), stats()).oneshot(no_host).await.unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN);

        // h2-style absolute URI: the authority is what counts.
        let h2 = http::Request::builder().uri("http://evil.example/v1/x").body(Body::empty()).unwrap();
        let res = host_only(&GatewayConfig::default(), stats()).oneshot(h2).await.unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
    }

    #[test]
    fn refusal_lines_stay_within_their_budget_and_the_next_one_counts_the_rest() {
        let mut budget = LineBudget::default();
        let start = std::time::Instant::now();
        let written: Vec<Option<u64>> = (0..REFUSAL_LINES_PER_SECOND + 5).map(|_| budget.take(start)).collect();
        assert!(written[..REFUSAL_LINES_PER_SECOND as usize].iter().all(|w| *w == Some(0)), "{written:?}");
        assert!(written[REFUSAL_LINES_PER_SECOND as usize..].iter().all(Option::is_none), "{written:?}");
        // Still the same second: nothing more.
        assert_eq!(budget.take(start + Duration::from_millis(999)), None);
        // The next second's first line says six were not written.
        assert_eq!(budget.take(start + Duration::from_secs(1)), Some(6));
        assert_eq!(budget.take(start + Duration::from_secs(1)), Some(0));
    }

    #[test]
    fn host_port_splitting() {
        assert_eq!(split_host_port("a.b:80"), Some(("a.b", Some("80"))));
        assert_eq!(split_host_port("[::1]"), Some(("[::1]", None)));
        assert_eq!(split_host_port("[::1]:8"), Some(("[::1]", Some("8"))));
        assert_eq!(split_host_port("::1"), None);
        assert_eq!(split_host_port("a:"), None);
        assert_eq!(split_host_port("a:8x"), None);
        assert_eq!(split_host_port("user@a"), None);
        assert_eq!(split_host_port(""), None);
    }

    // -- Authentication / rate limit -----------------------------------------

    fn auth_only(stats: Arc<crate::health::Stats>) -> Router {
        tiny().layer(CheckLayer::new(
            AuthCheck { access: Arc::new(FakeAccess), metrics: GatewayMetrics::noop(), oauth: None },
            stats,
        ))
    }

    #[tokio::test]
    async fn missing_token_is_401_without_error_attribute() {
        let s = stats();
        let res = auth_only(s.clone()).oneshot(req(Method::GET, "/v1/x", &[], Body::empty())).await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(res.headers()[header::WWW_AUTHENTICATE], "Bearer realm=\"task-mcp\"");
        let v = json_of(res).await;
        assert_eq!(v["code"], "UNAUTHENTICATED");
        assert_eq!(v["reason"], "MISSING_TOKEN");
        assert_eq!(s.snapshot().rejections.unauthenticated, 1);

        // Another scheme is no bearer credential either: no `error` attribute.
        let basic = [("authorization", "Basic Zm9vOmJhcg==")];
        let res = auth_only(stats()).oneshot(req(Method::GET, "/v1/x", &basic, Body::empty())).await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(res.headers()[header::WWW_AUTHENTICATE], "Bearer realm=\"task-mcp\"");
    }

    #[tokio::test]
    async fn wrong_token_is_401_invalid_token() {
        let res = auth_only(stats())
            .oneshot(req(Method::POST, "/mcp", &[("authorization", "Bearer nope")], Body::empty()))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(res.headers()[header::WWW_AUTHENTICATE], "Bearer realm=\"task-mcp\", error=\"invalid_token\"");
        let v = json_of(res).await;
        assert_eq!(v["error"]["code"], TRANSPORT_ERROR);
        assert_eq!(v["error"]["data"]["reason"], "INVALID_TOKEN");
    }

    #[tokio::test]
    async fn rate_limited_is_429_with_rounded_up_retry_after() {
        let s = stats();
        let res = auth_only(s.clone())
            .oneshot(req(Method::GET, "/v1/x", &[("authorization", "Bearer slow")], Body::empty()))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers()[header::RETRY_AFTER], "2");
        let v = json_of(res).await;
        assert_eq!(v["code"], "RESOURCE_EXHAUSTED");
        assert_eq!(v["details"]["retryInfo"]["retryDelayMs"], 1500);
        assert_eq!(s.snapshot().rejections.rate_limited, 1);
    }

    #[tokio::test]
    async fn admitted_request_carries_the_principal() {
        let res = auth_only(stats())
            .oneshot(req(Method::GET, "/v1/x", &[("authorization", "Bearer good")], Body::empty()))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(text_of(res).await, "alice");
    }

    #[tokio::test]
    async fn auth_attempts_and_rate_limit_hits_are_counted_by_path_transport() {
        let t = crate::metrics::testing::TestMeter::new();
        let metrics = Arc::new(GatewayMetrics::new(&t.meter(), 1));
        let app = tiny().layer(CheckLayer::new(
            AuthCheck { access: Arc::new(FakeAccess), metrics: metrics.clone(), oauth: None },
            stats(),
        ));
        let cases: [(&str, &[(&str, &str)]); 5] = [
            ("/mcp", &[("authorization", "Bearer good")]),
            ("/mcp", &[]),
            ("/v1/x", &[("authorization", "Basic YTpi")]),
            ("/v1/x", &[("authorization", "Bearer nope")]),
            ("/v1/x", &[("authorization", "Bearer slow")]),
        ];
        for (path, headers) in cases {
            app.clone().oneshot(req(Method::GET, path, headers, Body::empty())).await.unwrap();
        }
        let count = |transport: &str, outcome: &str, reason: &str| {
            let labels = [format!("transport={transport}"), format!("outcome={outcome}"), format!("reason={reason}")];
            t.value("auth.attempts", &labels.iter().map(String::as_str).collect::<Vec<_>>())
        };
        assert_eq!(count("mcp", "success", "valid"), Some(1.0));
        assert_eq!(count("mcp", "failure", "missing"), Some(1.0));
        assert_eq!(count("http", "failure", "malformed"), Some(1.0));
        assert_eq!(count("http", "failure", "invalid"), Some(1.0));
        // Rate limited: the token was good.
        assert_eq!(count("http", "success", "valid"), Some(1.0));
        assert_eq!(t.value("rate_limit.hits", &["transport=http"]), Some(1.0));
    }

    #[test]
    fn retry_after_rounding() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(3)), 3);
        assert_eq!(retry_after_secs(Duration::from_millis(3001)), 4);
    }

    // -- Body cap -------------------------------------------------------------

    fn capped(max: usize, stats: Arc<crate::health::Stats>) -> Router {
        tiny().layer(
            ServiceBuilder::new()
                .layer(BodyCapLayer { max, stats, proxies: TrustedProxies::default() })
                .layer(DefaultBodyLimit::disable()),
        )
    }

    #[tokio::test]
    async fn declared_length_over_cap_is_413_up_front() {
        let s = stats();
        let res = capped(4, s.clone())
            .oneshot(req(Method::POST, "/v1/x", &[("content-length", "5")], "12345"))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let v = json_of(res).await;
        assert_eq!(v["reason"], "BODY_TOO_LARGE");
        assert_eq!(s.snapshot().rejections.payload_too_large, 1);
    }

    #[tokio::test]
    async fn chunked_body_over_cap_is_413_with_our_body() {
        let chunks =
            futures_util::stream::iter(["12", "34", "56"].map(|c| Ok::<_, std::convert::Infallible>(Bytes::from(c))));
        let s = stats();
        for (path, mcp) in [("/v1/x", false), ("/mcp", true)] {
            let body = Body::from_stream(chunks.clone());
            let res = capped(4, s.clone()).oneshot(req(Method::POST, path, &[], body)).await.unwrap();
            assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE, "{path}");
            assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
            let v = json_of(res).await;
            if mcp {
                assert_eq!(v["error"]["data"]["reason"], "BODY_TOO_LARGE");
            } else {
                assert_eq!(v["reason"], "BODY_TOO_LARGE");
            }
        }
        assert_eq!(s.snapshot().rejections.payload_too_large, 2);
    }

    #[tokio::test]
    async fn an_extractor_refusing_a_body_over_the_cap_is_a_body_too_large() {
        use axum::extract::FromRequest;
        let chunks =
            futures_util::stream::iter(["12", "34", "56"].map(|c| Ok::<_, std::convert::Infallible>(Bytes::from(c))));
        let capped = http_body_util::Limited::new(Body::from_stream(chunks), 4);
        let body = Body::new(PacedBody::new(capped, BODY_READ_TIMEOUT));
        let rejection = Bytes::from_request(Request::new(body), &()).await.expect_err("the body is over the cap");
        assert_eq!(BodyFault::of(&rejection), BodyFault::TooLarge, "{rejection}");
    }

    #[tokio::test]
    async fn length_beside_transfer_encoding_is_not_trusted() {
        let chunks =
            futures_util::stream::iter(["123", "456"].map(|c| Ok::<_, std::convert::Infallible>(Bytes::from(c))));
        let headers = [("content-length", "2"), ("transfer-encoding", "chunked")];
        let res =
            capped(4, stats()).oneshot(req(Method::POST, "/v1/x", &headers, Body::from_stream(chunks))).await.unwrap();
        assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn bodies_within_cap_pass() {
        let res =
            capped(4, stats()).oneshot(req(Method::POST, "/v1/x", &[("content-length", "4")], "1234")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(text_of(res).await, "1234");

        let chunks =
            futures_util::stream::iter(["12", "34"].map(|c| Ok::<_, std::convert::Infallible>(Bytes::from(c))));
        let res = capped(4, stats()).oneshot(req(Method::POST, "/v1/x", &[], Body::from_stream(chunks))).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(text_of(res).await, "1234");
    }

    #[tokio::test]
    async fn whole_protect_stack_orders_host_auth_body() {
        let s = stats();
        let config = GatewayConfig { max_body_bytes: 4, ..GatewayConfig::default() };
        let app = protect_with(tiny(), &config, Arc::new(FakeAccess), s.clone());
        // Bad host and no token: the host check answers.
        let res = app.clone().oneshot(req(Method::POST, "/mcp", &[("host", "evil.example")], "123456")).await.unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        // Good host, no token, oversize body: auth answers.
        let res = app.clone().oneshot(req(Method::POST, "/mcp", &[("content-length", "6")], "123456")).await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        // Token, oversize body: 413.
        let res = app
            .clone()
            .oneshot(req(Method::POST, "/mcp", &[("authorization", "Bearer good"), ("content-length", "6")], "123456"))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let snap = s.snapshot();
        assert_eq!(
            (snap.rejections.forbidden, snap.rejections.unauthenticated, snap.rejections.payload_too_large),
            (1, 1, 1)
        );
    }

    #[test]
    fn mcp_paths() {
        assert!(is_mcp_path("/mcp"));
        assert!(is_mcp_path("/mcp/"));
        assert!(is_mcp_path("/messages"));
        assert!(is_mcp_path("/sse"));
        assert!(!is_mcp_path("/mcpx"));
        assert!(!is_mcp_path("/v1/tools"));
    }

    // -- Outer layers --------------------------------------------------------

    #[tokio::test]
    async fn security_headers_on_every_response() {
        let app = tiny().layer(MapResponseLayer::new(security_headers as fn(Response) -> Response));
        let res = app.clone().oneshot(req(Method::GET, "/nowhere", &[], Body::empty())).await.unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        let h = res.headers();
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
        assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
        assert_eq!(h[header::CONTENT_SECURITY_POLICY], "default-src 'none'; frame-ancestors 'none'");
        assert_eq!(h[header::CACHE_CONTROL], "no-store");

        let res = app.oneshot(req(Method::GET, "/sse", &[], Body::empty())).await.unwrap();
        assert!(res.headers().get(header::CACHE_CONTROL).is_none());
        assert_eq!(res.headers()[header::X_FRAME_OPTIONS], "DENY");
    }

    #[tokio::test]
    async fn request_id_generated_or_propagated() {
        let app = tiny().layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeCounterId))
                .layer(PropagateRequestIdLayer::x_request_id()),
        );
        let res =
            app.clone().oneshot(req(Method::GET, "/v1/x", &[("x-request-id", "abc")], Body::empty())).await.unwrap();
        assert_eq!(res.headers()["x-request-id"], "abc");
        let a = app.clone().oneshot(req(Method::GET, "/v1/x", &[], Body::empty())).await.unwrap();
        let b = app.oneshot(req(Method::GET, "/v1/x", &[], Body::empty())).await.unwrap();
        let (a, b) = (&a.headers()["x-request-id"], &b.headers()["x-request-id"]);
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }

    #[tokio::test]
    async fn stats_count_requests_and_classes() {
        let s = stats();
        let app = tiny().layer(StatsLayer { stats: s.clone() });
        for path in ["/v1/x", "/v1/x", "/nowhere"] {
            app.clone().oneshot(req(Method::GET, path, &[], Body::empty())).await.unwrap();
        }
        let snap = s.snapshot();
        assert_eq!(snap.requests, 3);
        assert_eq!(snap.responses.success, 2);
        assert_eq!(snap.responses.client_error, 1);
        assert_eq!(snap.errors, 0);
    }

    #[tokio::test]
    async fn cors_absent_without_origins() {
        assert!(cors(&[]).is_none());
        let app = outer_with(tiny(), &GatewayConfig::default(), None, stats());
        let res = app
            .oneshot(req(Method::GET, "/v1/x", &[("origin", "http://localhost:6274")], Body::empty()))
            .await
            .unwrap();
        assert!(res.headers().get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
        assert!(res.headers().get("x-request-id").is_some());
        assert_eq!(res.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    }

    #[tokio::test]
    async fn cors_allow_list_never_wildcard() {
        let config =
            GatewayConfig { allowed_origins: vec!["http://localhost:6274".into()], ..GatewayConfig::default() };
        let s = stats();
        let app = outer_with(tiny(), &config, None, s.clone());
        let preflight = req(
            Method::OPTIONS,
            "/mcp",
            &[
                ("origin", "http://localhost:6274"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "authorization,mcp-session-id"),
            ],
            Body::empty(),
        );
        let res = app.clone().oneshot(preflight).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let h = res.headers();
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "http://localhost:6274");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        let allowed = h[header::ACCESS_CONTROL_ALLOW_HEADERS].to_str().unwrap();
        assert!(allowed.contains("mcp-session-id") && allowed.contains("authorization"));
        assert!(h.get("x-request-id").is_some());

        let res = app
            .clone()
            .oneshot(req(Method::GET, "/v1/x", &[("origin", "http://localhost:6274")], Body::empty()))
            .await
            .unwrap();
        let exposed = res.headers()[header::ACCESS_CONTROL_EXPOSE_HEADERS].to_str().unwrap();
        assert!(exposed.contains("mcp-session-id") && exposed.contains("www-authenticate"));

        let res =
            app.oneshot(req(Method::GET, "/v1/x", &[("origin", "http://evil.example")], Body::empty())).await.unwrap();
        assert!(res.headers().get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
        assert_eq!(s.snapshot().requests, 3);
    }

    // -- The app's wiring (app.rs) -------------------------------------------

    #[tokio::test]
    async fn tokens_everywhere_but_live_and_ready() {
        let fake = crate::rest::fake::fake(GatewayConfig::default(), Arc::new(FakeAccess));
        let app = crate::router(fake.state.clone());
        let cases = [
            ("/health/live", StatusCode::OK),
            ("/health/ready", StatusCode::OK),
            ("/health/metrics", StatusCode::UNAUTHORIZED),
            ("/v1/tools", StatusCode::UNAUTHORIZED),
            ("/nowhere", StatusCode::NOT_FOUND),
        ];
        for (path, want) in cases {
            let res = app.clone().oneshot(req(Method::GET, path, &[], Body::empty())).await.unwrap();
            assert_eq!(res.status(), want, "{path}");
            assert_eq!(res.headers()[header::X_FRAME_OPTIONS], "DENY", "{path}");
            assert!(res.headers().get("x-request-id").is_some(), "{path}");
        }
        for path in ["/health/metrics", "/v1/tools"] {
            let res = app
                .clone()
                .oneshot(req(Method::GET, path, &[("authorization", "Bearer good")], Body::empty()))
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::OK, "{path}");
        }
        let res = app
            .oneshot(req(
                Method::GET,
                "/health/metrics",
                &[("authorization", "Bearer good"), ("host", "evil.example")],
                Body::empty(),
            ))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        let snap = fake.state.stats.snapshot();
        assert_eq!((snap.rejections.unauthenticated, snap.rejections.forbidden), (2, 1));
        assert_eq!(snap.requests, 8);
    }
}
