//! `/health/live`, `/health/ready`, `/health/metrics`, and the request counters
//! behind the last one.
//!
//! `live` and `ready` answer anyone (orchestrators probe them without tokens);
//! `metrics` reveals traffic figures, so it asks for the same Host/Origin checks
//! and bearer token as the API routes (the issue: tokens on every route but
//! `live` and `ready`).
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    extract::State,
    http::{HeaderMap, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Serialize;
use serde_json::json;

use crate::{AppState, upstream::CallError};

/// How long `/health/ready` waits for the upstream health check: a probe that
/// hangs is worse than one that says "unavailable".
pub const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// The `grpc.health.v1` service name under which the service reports whether its workspace can
/// be written (its overall status, service `""`, folds that in). Drains leave it alone, so it
/// names the workspace as the reason a service is not serving, and nothing else. A full disk is
/// the one fault the overall status does not fold in: NOT_SERVING here while the service is
/// SERVING means the workspace's file system is full, and the service stays ready (reads are
/// served; each write is refused with `WORKSPACE_FULL` and changes nothing).
pub const WORKSPACE_HEALTH: &str = "taskmcp.v1.Workspace";

/// The workspace check of a ready service whose workspace's file system is full.
const WORKSPACE_FULL: &str =
    "full: writes are refused (WORKSPACE_FULL) until space is freed on the workspace's file system; reads are served";

/// Why a request was turned away before (or instead of) reaching a handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Host or Origin not allowed (403).
    Forbidden,
    /// No or wrong bearer token (401).
    Unauthenticated,
    /// Over the principal's rate (429).
    RateLimited,
    /// Body over the cap (413).
    PayloadTooLarge,
    /// Sessions or streams full (503); counted by the MCP transport.
    Overloaded,
}

impl Rejection {
    const ALL: [Rejection; 5] = [
        Rejection::Forbidden,
        Rejection::Unauthenticated,
        Rejection::RateLimited,
        Rejection::PayloadTooLarge,
        Rejection::Overloaded,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// Process-wide request counters. Relaxed atomics: each counter is read on its
/// own, so no ordering between them is promised or needed, and an increment
/// costs one uncontended-ish `lock xadd` on the hot path.
#[derive(Default, Debug)]
pub struct Stats {
    requests: AtomicU64,
    /// Responses by status class: index 0 = 1xx … 4 = 5xx.
    by_class: [AtomicU64; 5],
    rejections: [AtomicU64; Rejection::ALL.len()],
}

/// A consistent-enough copy of [`Stats`] for `/health/metrics` and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    pub requests: u64,
    /// Responses with a 5xx status.
    pub errors: u64,
    pub responses: ByClass,
    pub rejections: Rejections,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ByClass {
    #[serde(rename = "1xx")]
    pub informational: u64,
    #[serde(rename = "2xx")]
    pub success: u64,
    #[serde(rename = "3xx")]
    pub redirection: u64,
    #[serde(rename = "4xx")]
    pub client_error: u64,
    #[serde(rename = "5xx")]
    pub server_error: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Rejections {
    pub forbidden: u64,
    pub unauthenticated: u64,
    pub rate_limited: u64,
    pub payload_too_large: u64,
    pub overloaded: u64,
}

impl Stats {
    /// One request arrived.
    pub fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// One response left with this status.
    pub fn response(&self, status: StatusCode) {
        // `StatusCode` guarantees 100..=999; statuses above 599 are counted as 5xx
        // (they are non-standard and a client treats them as failures).
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
    }

    /// One request turned away, by kind.
    pub fn reject(&self, kind: Rejection) {
        self.rejections[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let class = |i: usize| self.by_class[i].load(Ordering::Relaxed);
        let rejected = |k: Rejection| self.rejections[k.index()].load(Ordering::Relaxed);
        StatsSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            errors: class(4),
            responses: ByClass {
                informational: class(0),
                success: class(1),
                redirection: class(2),
                client_error: class(3),
                server_error: class(4),
            },
            rejections: Rejections {
                forbidden: rejected(Rejection::Forbidden),
                unauthenticated: rejected(Rejection::Unauthenticated),
                rate_limited: rejected(Rejection::RateLimited),
                payload_too_large: rejected(Rejection::PayloadTooLarge),
                overloaded: rejected(Rejection::Overloaded),
            },
        }
    }
}

/// Where the counters live: the app state in production, a bare `Arc<Stats>` in
/// the layer tests (which have no upstream to build an `AppState` with).
pub trait StatsRef: Clone + Send + Sync + 'static {
    fn stats(&self) -> &Stats;

    /// The metric instruments; no-op ones where there is no app state.
    fn metrics(&self) -> Arc<crate::metrics::GatewayMetrics> {
        crate::metrics::GatewayMetrics::noop()
    }
}

impl StatsRef for Arc<AppState> {
    fn stats(&self) -> &Stats {
        &self.stats
    }

    fn metrics(&self) -> Arc<crate::metrics::GatewayMetrics> {
        Arc::clone(&self.metrics)
    }
}

impl StatsRef for Arc<Stats> {
    fn stats(&self) -> &Stats {
        self
    }
}

pub fn routes() -> Router<Arc<AppState>> {
    let other_methods = || crate::rest::method_not_allowed("GET, HEAD");
    Router::new()
        .route("/health/live", get(live).fallback(other_methods))
        .route("/health/ready", get(ready).fallback(other_methods))
        .route("/health/metrics", get(metrics).fallback(other_methods))
}

const LIVE_BODY: &str = r#"{"status":"ok"}"#;

/// The process answers: nothing else is checked, so a stuck upstream never
/// gets a healthy gateway restarted.
async fn live() -> Response {
    json_bytes(StatusCode::OK, Body::from(LIVE_BODY))
}

/// The outcome of one readiness check, as shown in the body.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Check {
    Ok,
    NotServing,
    Failed(String),
    TimedOut,
    /// Not asked: the upstream check failed before it.
    Unknown,
}

impl Check {
    fn describe(&self) -> String {
        match self {
            Check::Ok => "ok".into(),
            Check::NotServing => "not serving".into(),
            Check::Failed(why) => format!("error: {why}"),
            Check::TimedOut => format!("no answer within {} ms", READY_TIMEOUT.as_millis()),
            Check::Unknown => "unknown: the upstream did not say".into(),
        }
    }
}

/// Readiness: the upstream's `grpc.health.v1` status is SERVING, which the service reports only
/// while its workspace can be written. When it is not, the workspace's own status
/// ([`WORKSPACE_HEALTH`]) tells which of the two is at fault, so the body names the failing
/// check: an operator of `serve` otherwise reads "upstream: not serving" about a read-only
/// mount. A serving upstream whose workspace is not is ready with its disk full, which the
/// body says (200, `degraded`).
async fn ready(State(state): State<Arc<AppState>>) -> Response {
    // A stopping server is not ready whatever its upstream says: in split mode the upstream
    // stays SERVING, and load balancers must see the 503 before the listener closes.
    if state.draining.is_cancelled() {
        return draining_response();
    }
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    let check = |service: &'static str| {
        let upstream = state.upstream.clone();
        async move {
            match tokio::time::timeout_at(deadline, upstream.serving_of(service)).await {
                Ok(Ok(true)) => Check::Ok,
                Ok(Ok(false)) => Check::NotServing,
                Ok(Err(CallError::Upstream(e))) => Check::Failed(e.message),
                Ok(Err(CallError::InvalidArguments(why))) => Check::Failed(why),
                Err(_elapsed) => Check::TimedOut,
            }
        }
    };
    let upstream = check("").await;
    let workspace = match upstream {
        Check::Ok => match check(WORKSPACE_HEALTH).await {
            Check::NotServing => Check::NotServing,
            // Writable, or an upstream that does not report its workspace: ready as it says.
            _ => Check::Ok,
        },
        Check::NotServing => match check(WORKSPACE_HEALTH).await {
            // Serving overall it is not, but not for its workspace: a drain, say.
            Check::Ok => Check::Ok,
            Check::NotServing => Check::NotServing,
            // An upstream that does not report the workspace (NOT_FOUND), or stopped answering.
            _ => Check::Unknown,
        },
        _ => Check::Unknown,
    };
    // A drain that began while the checks ran is what made the service stop serving: say so,
    // not "upstream" (a probe sent just before SIGTERM reached the process would otherwise).
    if state.draining.is_cancelled() {
        return draining_response();
    }
    readiness_response(&upstream, &workspace)
}

fn readiness_response(upstream: &Check, workspace: &Check) -> Response {
    if *upstream == Check::Ok {
        if *workspace == Check::NotServing {
            let checks = json!({ "upstream": "ok", "workspace": WORKSPACE_FULL });
            return json_value(StatusCode::OK, &json!({ "status": "degraded", "checks": checks }));
        }
        let checks = json!({ "upstream": "ok", "workspace": "ok" });
        return json_value(StatusCode::OK, &json!({ "status": "ok", "checks": checks }));
    }
    let body = if *workspace == Check::NotServing {
        // The upstream answers; what it cannot do is write its workspace (its log says why).
        let checks = json!({ "upstream": "ok", "workspace": "not writable: see the service's log" });
        json!({ "status": "unavailable", "failing": ["workspace"], "checks": checks })
    } else {
        let checks = json!({ "upstream": upstream.describe(), "workspace": workspace.describe() });
        json!({ "status": "unavailable", "failing": ["upstream"], "checks": checks })
    };
    let mut res = json_value(StatusCode::SERVICE_UNAVAILABLE, &body);
    // Probes and load balancers retry on their own schedule; this tells
    // anything else not to hammer a gateway whose upstream is down.
    res.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    res
}

fn draining_response() -> Response {
    let body = json!({ "status": "unavailable", "failing": ["draining"], "checks": { "draining": "shutting down" } });
    // No Retry-After: this process is going away; retrying it will not help.
    json_value(StatusCode::SERVICE_UNAVAILABLE, &body)
}

#[derive(Serialize)]
struct Metrics {
    uptime_seconds: u64,
    sessions: usize,
    streams: usize,
    #[serde(flatten)]
    stats: StatsSnapshot,
}

async fn metrics(State(state): State<Arc<AppState>>, uri: Uri, headers: HeaderMap) -> Response {
    if let Err(refusal) = crate::security::authorize(&state, &uri, &headers) {
        return refusal.response_for(false, state.config.oauth.as_ref());
    }
    let body = Metrics {
        uptime_seconds: state.started.elapsed().as_secs(),
        sessions: state.sessions.session_count(),
        streams: state.sessions.stream_count(),
        stats: state.stats.snapshot(),
    };
    json_value(StatusCode::OK, &body)
}

fn json_value<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(bytes) => json_bytes(status, Body::from(bytes)),
        // Only non-string map keys or a failing `Serialize` impl can fail here;
        // neither exists in these bodies, but a 500 beats a panic.
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

fn json_bytes(status: StatusCode, body: Body) -> Response {
    let mut res = Response::new(body);
    *res.status_mut() = status;
    res.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use serde_json::Value;

    async fn body_json(res: Response) -> Value {
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn counts_by_status_class_and_kind() {
        let stats = Stats::default();
        stats.request();
        stats.request();
        stats.response(StatusCode::OK);
        stats.response(StatusCode::NOT_FOUND);
        stats.response(StatusCode::BAD_GATEWAY);
        stats.response(StatusCode::from_u16(999).unwrap());
        stats.reject(Rejection::RateLimited);
        stats.reject(Rejection::RateLimited);
        stats.reject(Rejection::Forbidden);
        let snap = stats.snapshot();
        assert_eq!(snap.requests, 2);
        assert_eq!(snap.responses.success, 1);
        assert_eq!(snap.responses.client_error, 1);
        assert_eq!(snap.responses.server_error, 2);
        assert_eq!(snap.errors, 2);
        assert_eq!(snap.rejections.rate_limited, 2);
        assert_eq!(snap.rejections.forbidden, 1);
        assert_eq!(snap.rejections.overloaded, 0);
    }

    #[test]
    fn snapshot_serializes_with_class_names() {
        let stats = Stats::default();
        stats.response(StatusCode::CREATED);
        let v = serde_json::to_value(stats.snapshot()).unwrap();
        assert_eq!(v["responses"]["2xx"], 1);
        assert_eq!(v["rejections"]["payload_too_large"], 0);
        assert_eq!(v["errors"], 0);
    }

    #[tokio::test]
    async fn live_is_ok() {
        let res = live().await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(body_json(res).await, json!({"status": "ok"}));
    }

    #[tokio::test]
    async fn readiness_names_the_failing_check() {
        let ok = readiness_response(&Check::Ok, &Check::Ok);
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(body_json(ok).await["status"], "ok");

        let down = readiness_response(&Check::TimedOut, &Check::Unknown);
        assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(down.headers()[header::RETRY_AFTER], "1");
        let v = body_json(down).await;
        assert_eq!(v["status"], "unavailable");
        assert_eq!(v["failing"], json!(["upstream"]));
        assert_eq!(v["checks"]["upstream"], "no answer within 2000 ms");

        let v = body_json(readiness_response(&Check::NotServing, &Check::Ok)).await;
        assert_eq!(v["checks"]["upstream"], "not serving");
        assert_eq!(v["failing"], json!(["upstream"]));

        let unwritable = readiness_response(&Check::NotServing, &Check::NotServing);
        assert_eq!(unwritable.status(), StatusCode::SERVICE_UNAVAILABLE);
        let v = body_json(unwritable).await;
        assert_eq!(v["failing"], json!(["workspace"]));
        assert_eq!(v["checks"]["upstream"], "ok");

        // Serving, with its workspace's disk full: ready, and saying so.
        let full_disk = readiness_response(&Check::Ok, &Check::NotServing);
        assert_eq!(full_disk.status(), StatusCode::OK);
        let v = body_json(full_disk).await;
        assert_eq!(v["status"], "degraded");
        assert!(v["checks"]["workspace"].as_str().is_some_and(|w| w.starts_with("full")), "{v}");
    }

    mod through_the_router {
        use super::*;
        use crate::{GatewayConfig, access::OpenAccess, rest::fake::fake};
        use tower::ServiceExt;

        fn get(path: &str) -> http::Request<Body> {
            http::Request::builder().uri(path).header("host", "localhost").body(Body::empty()).unwrap()
        }

        #[tokio::test]
        async fn ready_follows_upstream_health() {
            let fake = fake(GatewayConfig::default(), Arc::new(OpenAccess));
            let app = crate::router(fake.state.clone());
            let res = app.clone().oneshot(get("/health/ready")).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            assert_eq!(body_json(res).await["checks"]["upstream"], "ok");

            fake.health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
            let res = app.clone().oneshot(get("/health/ready")).await.unwrap();
            assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
            let v = body_json(res).await;
            assert_eq!(v["failing"], json!(["upstream"]));
            assert_eq!(v["checks"]["upstream"], "not serving");

            // The workspace's own status names it as the reason.
            fake.health.set_service_status(WORKSPACE_HEALTH, tonic_health::ServingStatus::NotServing).await;
            let v = body_json(app.clone().oneshot(get("/health/ready")).await.unwrap()).await;
            assert_eq!(v["failing"], json!(["workspace"]), "{v}");

            // Serving again with the workspace still not: its disk is full, and it stays ready.
            fake.health.set_service_status("", tonic_health::ServingStatus::Serving).await;
            let res = app.oneshot(get("/health/ready")).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            assert_eq!(body_json(res).await["status"], "degraded");
        }

        #[tokio::test]
        async fn ready_fails_once_draining_even_with_a_serving_upstream() {
            let fake = fake(GatewayConfig::default(), Arc::new(OpenAccess));
            let app = crate::router(fake.state.clone());
            fake.state.draining.cancel();
            let res = app.oneshot(get("/health/ready")).await.unwrap();
            assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
            let v = body_json(res).await;
            assert_eq!(v["failing"], json!(["draining"]));
            assert_eq!(v["checks"]["draining"], "shutting down");
        }

        #[tokio::test]
        async fn metrics_summarise_traffic() {
            let fake = fake(GatewayConfig::default(), Arc::new(OpenAccess));
            let app = crate::router(fake.state.clone());
            app.clone().oneshot(get("/health/live")).await.unwrap();
            app.clone().oneshot(get("/nowhere")).await.unwrap();
            let res = app.oneshot(get("/health/metrics")).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            let v = body_json(res).await;
            assert_eq!(v["requests"], 3);
            assert_eq!(v["responses"]["2xx"], 1);
            assert_eq!(v["responses"]["4xx"], 1);
            assert_eq!(v["errors"], 0);
            assert_eq!(v["sessions"], 0);
            assert_eq!(v["streams"], 0);
            assert!(v["uptime_seconds"].is_u64());
            assert_eq!(v["rejections"]["forbidden"], 0);
        }
    }
}
