//! Tower layers for the gRPC server: authentication, then rate limiting. Each
//! rejects with a gRPC status built from `Error`, so clients see the same typed
//! details as from a handler. Health checks pass through both: probes must work
//! without credentials and must never be throttled into a false "down". With OAuth,
//! authentication's refusals carry the HTTP face's bearer challenge as `www-authenticate`
//! metadata, so a gRPC client too learns where to get a token and which scopes to ask for.
use std::{
    collections::HashSet,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use tower::{Layer, Service};

use task_mcp_gateway::{
    BearerError, ProtectedResource, TrustedProxies,
    headers::GRPC_STATUS,
    metrics::{AuthResult, GatewayMetrics, TRANSPORT_HEADER, Transport},
};

use crate::{
    auth::{Denied, Need, Tokens},
    error::Error,
    rate_limit::{AuthFailureThrottle, RateLimiter},
};

const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

fn reject<B: Default>(err: Error) -> Response<B> {
    err.into_status().into_http()
}

#[derive(Clone)]
pub struct AuthLayer {
    tokens: Arc<Tokens>,
    metrics: Option<Arc<GatewayMetrics>>,
    writes: Writes,
    challenge: Option<Arc<ProtectedResource>>,
}

/// Which calls need `--oauth-write-scope`: the tools the proto does not mark `read_only`
/// (by their unary and streaming methods). Only worked out with write scopes configured.
#[derive(Clone)]
enum Writes {
    /// No call needs more than another.
    None,
    Methods(Arc<HashSet<String>>),
    /// The descriptors could not be read (they are compiled in, so never in practice): every
    /// call needs the write scopes rather than none.
    All,
}

impl Writes {
    fn of(tokens: &Tokens) -> Writes {
        if !tokens.oauth().is_some_and(crate::oauth::Verifier::has_write_scopes) {
            return Writes::None;
        }
        match write_methods() {
            Ok(methods) => Writes::Methods(Arc::new(methods)),
            Err(error) => {
                tracing::error!(%error, "cannot tell read from write calls: every call needs --oauth-write-scope");
                Writes::All
            }
        }
    }

    fn need(&self, path: &str) -> Need {
        match self {
            Writes::None => Need::Read,
            Writes::Methods(methods) if !methods.contains(path) => Need::Read,
            Writes::Methods(_) | Writes::All => Need::Write,
        }
    }
}

/// The gRPC paths (`/taskmcp.v1.Changes/OpenChange`) of the tools that change the workspace.
fn write_methods() -> Result<HashSet<String>, String> {
    let (_, registry) = task_mcp_gateway::upstream::Registry::from_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)?;
    let path = |m: &prost_reflect::MethodDescriptor| format!("/{}/{}", m.parent_service().full_name(), m.name());
    Ok(registry
        .tools()
        .iter()
        .filter(|tool| !tool.read_only)
        .flat_map(|tool| std::iter::once(path(&tool.method)).chain(tool.stream_method.as_ref().map(path)))
        .collect())
}

impl AuthLayer {
    pub fn new(tokens: Arc<Tokens>) -> Self {
        let writes = Writes::of(&tokens);
        AuthLayer { tokens, metrics: None, writes, challenge: None }
    }

    /// With OAuth (`Some`), a refusal carries the challenge the HTTP face sends for it, as
    /// `www-authenticate` metadata: the same `resource_metadata` and `scope` for every client.
    pub fn challenging(mut self, resource: Option<ProtectedResource>) -> Self {
        self.challenge = resource.map(Arc::new);
        self
    }

    /// Counts `auth.attempts` (transport `grpc`) when tokens are configured.
    /// An accepted call carrying the gateway's `x-task-mcp-transport` is not
    /// counted (the gateway counted that request's attempt when it admitted it),
    /// but a refused one is: any client can send the metadata, and it must not
    /// hide a token being guessed.
    pub fn counting(mut self, metrics: Arc<GatewayMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            tokens: self.tokens.clone(),
            metrics: self.metrics.clone(),
            writes: self.writes.clone(),
            challenge: self.challenge.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    tokens: Arc<Tokens>,
    metrics: Option<Arc<GatewayMetrics>>,
    writes: Writes,
    challenge: Option<Arc<ProtectedResource>>,
}

impl<S> Auth<S> {
    /// `err` as a gRPC answer, with the bearer challenge for `error` when OAuth is configured.
    fn refuse<B: Default>(&self, err: Error, error: Option<BearerError>) -> Response<B> {
        let mut response = reject(err);
        if let Some(resource) = &self.challenge {
            response.headers_mut().insert(http::header::WWW_AUTHENTICATE, resource.challenge(error));
        }
        response
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Auth<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqB: Send + 'static,
    ResB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        // The clone is the ready service's stand-in; the ready one serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if req.uri().path().starts_with(HEALTH_PREFIX) {
            return Box::pin(inner.call(req));
        }
        let sent = req.headers().get(http::header::AUTHORIZATION);
        let need = self.writes.need(req.uri().path());
        let principal = self.tokens.check_for(sent.and_then(|v| v.to_str().ok()), need);
        if let Some(metrics) = &self.metrics
            && !self.tokens.is_empty()
            && (principal.is_err() || Transport::from_header(req.headers().get(TRANSPORT_HEADER)) == Transport::Grpc)
        {
            let result = match principal {
                Ok(_) => AuthResult::Valid,
                Err(Denied::Invalid) => AuthResult::of_refused(sent),
                Err(Denied::InsufficientScope) => AuthResult::InsufficientScope,
            };
            metrics.auth(Transport::Grpc, result);
        }
        match principal {
            Ok(principal) => {
                req.extensions_mut().insert(principal);
                Box::pin(inner.call(req))
            }
            Err(Denied::Invalid) => {
                tracing::info!(path = req.uri().path(), "rejected: unauthenticated");
                let response = self.refuse(Error::Unauthenticated, BearerError::unauthenticated(sent));
                Box::pin(async { Ok(response) })
            }
            Err(Denied::InsufficientScope) => {
                let required = self.tokens.oauth().map(|o| o.required(need).join(" ")).unwrap_or_default();
                tracing::info!(path = req.uri().path(), required, "rejected: insufficient scope");
                let response = self.refuse(Error::InsufficientScope { required }, Some(BearerError::InsufficientScope));
                Box::pin(async { Ok(response) })
            }
        }
    }
}

/// Just outside [`AuthLayer`]: a client address that failed authentication too often lately
/// (the budget is shared with the HTTP face) is refused RESOURCE_EXHAUSTED with `RetryInfo`
/// before its token is looked at; a call that presented credentials and was refused
/// UNAUTHENTICATED is one failure. Health checks pass, as through the other layers. Only
/// with tokens configured (without them nothing can fail).
#[derive(Clone)]
pub struct AuthThrottleLayer {
    throttle: Option<Arc<AuthFailureThrottle>>,
    proxies: TrustedProxies,
    metrics: Option<Arc<GatewayMetrics>>,
}

impl AuthThrottleLayer {
    pub fn new(tokens: &Tokens, throttle: Arc<AuthFailureThrottle>) -> Self {
        AuthThrottleLayer {
            throttle: (!tokens.is_empty()).then_some(throttle),
            proxies: TrustedProxies::default(),
            metrics: None,
        }
    }

    /// Calls from these peers are keyed on the client their `x-forwarded-for` names (Envoy and
    /// ingress controllers add it to gRPC calls as to any HTTP request).
    pub fn trusting(mut self, proxies: TrustedProxies) -> Self {
        self.proxies = proxies;
        self
    }

    /// Counts a refusal as `auth.attempts` with reason `throttled` (transport `grpc`).
    pub fn counting(mut self, metrics: Arc<GatewayMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }
}

impl<S> Layer<S> for AuthThrottleLayer {
    type Service = AuthThrottle<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthThrottle {
            inner,
            throttle: self.throttle.clone(),
            proxies: self.proxies.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthThrottle<S> {
    inner: S,
    throttle: Option<Arc<AuthFailureThrottle>>,
    proxies: TrustedProxies,
    metrics: Option<Arc<GatewayMetrics>>,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for AuthThrottle<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqB: Send + 'static,
    ResB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        // The TCP peer, as tonic recorded it; the in-process gateway's calls have none (the
        // gateway throttled its client already).
        let client = req.extensions().get::<tonic::transport::server::TcpConnectInfo>().and_then(|c| c.remote_addr());
        let (Some(throttle), Some(client)) = (self.throttle.clone(), client) else {
            return Box::pin(inner.call(req));
        };
        if req.uri().path().starts_with(HEALTH_PREFIX) {
            return Box::pin(inner.call(req));
        }
        let client = self.proxies.client(client.ip(), req.headers());
        if let Err(retry_after) = throttle.check(client) {
            if let Some(metrics) = &self.metrics {
                metrics.auth(Transport::Grpc, AuthResult::Throttled);
            }
            tracing::info!(%client, path = req.uri().path(), "rejected: too many failed authentications");
            return Box::pin(async move { Ok(reject(Error::RateLimited { retry_after })) });
        }
        let presented = req.headers().contains_key(http::header::AUTHORIZATION);
        Box::pin(async move {
            let response = inner.call(req).await?;
            let unauthenticated = response.headers().get(GRPC_STATUS).is_some_and(|s| s.as_bytes() == b"16");
            if presented && unauthenticated {
                throttle.failed(client);
            }
            Ok(response)
        })
    }
}

#[derive(Clone)]
pub struct RateLimitLayer {
    limiter: Arc<RateLimiter>,
    metrics: Option<Arc<GatewayMetrics>>,
}

impl RateLimitLayer {
    pub fn new(limiter: Arc<RateLimiter>) -> Self {
        RateLimitLayer { limiter, metrics: None }
    }

    /// Counts `rate_limit.hits` with the caller's transport (a gateway that
    /// forwards over TCP is limited here too, and that refusal is this
    /// layer's own, so it is counted here, once).
    pub fn counting(mut self, metrics: Arc<GatewayMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimit { inner, limiter: self.limiter.clone(), metrics: self.metrics.clone() }
    }
}

#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    limiter: Arc<RateLimiter>,
    metrics: Option<Arc<GatewayMetrics>>,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for RateLimit<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqB: Send + 'static,
    ResB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if req.uri().path().starts_with(HEALTH_PREFIX) {
            return Box::pin(inner.call(req));
        }
        // Auth runs first and always inserts a principal; none means auth is off
        // for this path, and the anonymous bucket applies.
        let principal =
            req.extensions().get::<crate::auth::Principal>().cloned().unwrap_or_else(crate::auth::Principal::anonymous);
        match self.limiter.check(&principal) {
            Ok(()) => Box::pin(inner.call(req)),
            Err(retry_after) => {
                if let Some(metrics) = &self.metrics {
                    metrics.rate_limited(Transport::from_header(req.headers().get(TRANSPORT_HEADER)));
                }
                tracing::info!(%principal, path = req.uri().path(), ?retry_after, "rejected: rate limited");
                Box::pin(async move { Ok(reject(Error::RateLimited { retry_after })) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::{ServiceExt, service_fn};

    fn ok_service()
    -> impl Service<Request<()>, Response = Response<String>, Error = Infallible, Future: Send> + Clone + Send + 'static
    {
        service_fn(|req: Request<()>| async move {
            let who = req.extensions().get::<crate::auth::Principal>().map(|p| p.to_string()).unwrap_or_default();
            Ok::<_, Infallible>(Response::new(who))
        })
    }

    fn grpc_status<B>(resp: &Response<B>) -> Option<String> {
        resp.headers().get(GRPC_STATUS).and_then(|v| v.to_str().ok()).map(str::to_string)
    }

    fn request(path: &str, auth: Option<&str>) -> Request<()> {
        let mut b = Request::builder().uri(path);
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        b.body(()).unwrap()
    }

    #[tokio::test]
    async fn auth_rejects_missing_token_but_not_health() {
        let tokens = Arc::new(Tokens::from_config(&["ops=tok".into()], None).unwrap());
        let svc = AuthLayer::new(tokens).layer(ok_service());
        let denied = svc.clone().oneshot(request("/taskmcp.v1.Changes/OpenChange", None)).await.unwrap();
        assert_eq!(grpc_status(&denied).as_deref(), Some("16"));
        let health = svc.clone().oneshot(request("/grpc.health.v1.Health/Check", None)).await.unwrap();
        assert_eq!(grpc_status(&health), None);
        let ok = svc.oneshot(request("/taskmcp.v1.Changes/OpenChange", Some("Bearer tok"))).await.unwrap();
        assert_eq!(ok.body(), "ops");
    }

    #[tokio::test]
    async fn auth_attempts_are_counted_once_per_grpc_client_call() {
        let t = crate::telemetry::metrics::testing::TestMeter::new();
        let metrics = Arc::new(GatewayMetrics::new(&t.meter(), 1));
        let tokens = Arc::new(Tokens::from_config(&["ops=tok".into()], None).unwrap());
        let svc = AuthLayer::new(tokens).counting(metrics.clone()).layer(ok_service());
        let path = "/taskmcp.v1.Changes/OpenChange";
        svc.clone().oneshot(request(path, Some("Bearer tok"))).await.unwrap();
        svc.clone().oneshot(request(path, None)).await.unwrap();
        svc.clone().oneshot(request(path, Some("Basic b3Bz"))).await.unwrap();
        svc.clone().oneshot(request(path, Some("Bearer nope"))).await.unwrap();
        svc.clone().oneshot(request("/grpc.health.v1.Health/Check", None)).await.unwrap();
        // Forwarded by the gateway, which counted it already.
        let mut forwarded = request(path, Some("Bearer tok"));
        forwarded.headers_mut().insert(TRANSPORT_HEADER, http::HeaderValue::from_static("mcp"));
        svc.clone().oneshot(forwarded).await.unwrap();
        // A guess that claims to come from the gateway is counted all the same.
        let mut claimed = request(path, Some("Bearer guess"));
        claimed.headers_mut().insert(TRANSPORT_HEADER, http::HeaderValue::from_static("mcp"));
        svc.clone().oneshot(claimed).await.unwrap();
        let count = |outcome: &str, reason: &str| {
            let (o, r) = (format!("outcome={outcome}"), format!("reason={reason}"));
            t.value("auth.attempts", &["transport=grpc", &o, &r])
        };
        assert_eq!(count("success", "valid"), Some(1.0));
        assert_eq!(count("failure", "missing"), Some(1.0));
        assert_eq!(count("failure", "malformed"), Some(1.0));
        assert_eq!(count("failure", "invalid"), Some(2.0));
        assert_eq!(t.points().iter().filter(|(n, _, _)| n == "auth.attempts").count(), 4);

        // Without tokens nothing is authenticated, so nothing is attempted.
        let open = AuthLayer::new(Arc::new(Tokens::default())).counting(metrics).layer(ok_service());
        open.oneshot(request(path, None)).await.unwrap();
        assert_eq!(count("success", "valid"), Some(1.0));
    }

    #[tokio::test]
    async fn rate_limit_hits_are_counted_by_transport() {
        let t = crate::telemetry::metrics::testing::TestMeter::new();
        let metrics = Arc::new(GatewayMetrics::new(&t.meter(), 1));
        let svc = RateLimitLayer::new(Arc::new(RateLimiter::new(1, 1))).counting(metrics).layer(ok_service());
        let path = "/taskmcp.v1.Changes/ShowChange";
        svc.clone().oneshot(request(path, None)).await.unwrap();
        svc.clone().oneshot(request(path, None)).await.unwrap();
        let mut forwarded = request(path, None);
        forwarded.headers_mut().insert(TRANSPORT_HEADER, http::HeaderValue::from_static("http"));
        svc.oneshot(forwarded).await.unwrap();
        assert_eq!(t.value("rate_limit.hits", &["transport=grpc"]), Some(1.0));
        assert_eq!(t.value("rate_limit.hits", &["transport=http"]), Some(1.0));
    }

    #[tokio::test]
    async fn rate_limit_answers_resource_exhausted() {
        let svc = RateLimitLayer::new(Arc::new(RateLimiter::new(1, 1))).layer(ok_service());
        let first = svc.clone().oneshot(request("/taskmcp.v1.Changes/ShowChange", None)).await.unwrap();
        assert_eq!(grpc_status(&first), None);
        let second = svc.clone().oneshot(request("/taskmcp.v1.Changes/ShowChange", None)).await.unwrap();
        assert_eq!(grpc_status(&second).as_deref(), Some("8"));
        let health = svc.oneshot(request("/grpc.health.v1.Health/Check", None)).await.unwrap();
        assert_eq!(grpc_status(&health), None);
    }
}
