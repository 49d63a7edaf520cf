//! The gateway's side of the metrics contract (`monitoring/METRICS.md`): the
//! HTTP server middleware, SSE/NDJSON stream accounting, and the
//! authentication and rate-limit counters that the gRPC service shares.
//!
//! The gateway only creates instruments from a [`Meter`] it is given; the
//! embedding binary owns the SDK, the readers and the exporters. A gateway
//! built without one (tests, fixtures) records into a no-op meter.
//!
//! Instruments whose series both faces feed (`auth.attempts`,
//! `rate_limit.hits`, `streaming.*`) are created once, here, and the service
//! records into the same handles, so each series has exactly one instrument.
//!
//! Every attribute value is one of the contract's bounded values and a
//! `&'static str` (or an integer): building an attribute list allocates
//! nothing, and the SDK finds the data point with a hash lookup.
use std::{
    hash::Hash,
    pin::Pin,
    sync::{
        Arc, OnceLock, RwLock,
        atomic::{AtomicI64, Ordering},
    },
    task::{Context, Poll},
    time::Instant,
};

use axum::extract::MatchedPath;
use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use opentelemetry::{
    KeyValue,
    metrics::{
        AsyncInstrument, Counter, Histogram, Meter, MeterProvider as _, ObservableGauge, ObservableUpDownCounter,
        UpDownCounter,
    },
};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

/// The gRPC metadata (HTTP header) with which the gateway tells the service
/// how its caller came in: `mcp` or `http`. Anything else, or nothing, is `grpc`.
pub const TRANSPORT_HEADER: http::HeaderName = http::HeaderName::from_static("x-task-mcp-transport");

/// Seconds. A boundary on every SLO threshold (0.1, 0.2, 0.5, 2).
pub const LATENCY_BUCKETS: [f64; 14] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0, 10.0, 30.0];
/// Seconds: stream lifetimes, one second to one day.
pub const LIFETIME_BUCKETS: [f64; 10] = [1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0, 86400.0];
/// Bytes: response bodies.
pub const BODY_SIZE_BUCKETS: [f64; 9] =
    [128.0, 512.0, 2048.0, 8192.0, 32768.0, 131072.0, 524288.0, 2097152.0, 8388608.0];

// ---------------------------------------------------------------------------
// Bounded label values

/// How a client reached the server (`transport` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Grpc,
    Http,
    Mcp,
}

impl Transport {
    pub const fn as_str(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::Http => "http",
            Transport::Mcp => "mcp",
        }
    }

    /// Reads [`TRANSPORT_HEADER`]; anything but `mcp`/`http` is a gRPC client.
    pub fn from_header(value: Option<&http::HeaderValue>) -> Transport {
        match value.map(http::HeaderValue::as_bytes) {
            Some(b"mcp") => Transport::Mcp,
            Some(b"http") => Transport::Http,
            _ => Transport::Grpc,
        }
    }

    /// The transport of a gateway path: MCP paths are `mcp`, the rest `http`.
    pub fn of_path(path: &str) -> Transport {
        if crate::security::is_mcp_path(path) { Transport::Mcp } else { Transport::Http }
    }
}

/// Encoding of a stream (`stream.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamType {
    Sse,
    Ndjson,
    Grpc,
}

impl StreamType {
    pub const fn as_str(self) -> &'static str {
        match self {
            StreamType::Sse => "sse",
            StreamType::Ndjson => "ndjson",
            StreamType::Grpc => "grpc",
        }
    }
}

/// What a stream message carries (`message.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Priming,
    Progress,
    Result,
    Notification,
    ChangeEvent,
    ResourceChunk,
    Ping,
    Error,
}

impl MessageType {
    pub const fn as_str(self) -> &'static str {
        match self {
            MessageType::Priming => "priming",
            MessageType::Progress => "progress",
            MessageType::Result => "result",
            MessageType::Notification => "notification",
            MessageType::ChangeEvent => "change_event",
            MessageType::ResourceChunk => "resource_chunk",
            MessageType::Ping => "ping",
            MessageType::Error => "error",
        }
    }

    /// The kind of one outgoing JSON-RPC message.
    pub fn of_jsonrpc(message: &serde_json::Value) -> MessageType {
        match message.get("method").and_then(serde_json::Value::as_str) {
            Some("notifications/progress") => MessageType::Progress,
            Some("ping") => MessageType::Ping,
            // Other notifications, and requests to the client (sampling,
            // elicitation, roots): the server telling the client something.
            Some(_) => MessageType::Notification,
            None if message.get("error").is_some() => MessageType::Error,
            None => MessageType::Result,
        }
    }
}

/// Why a stream ended (`close.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    Completed,
    ClientClosed,
    IdleTimeout,
    ServerError,
    Shutdown,
}

impl CloseReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            CloseReason::Completed => "completed",
            CloseReason::ClientClosed => "client_closed",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::ServerError => "server_error",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// Why a stream was refused (`reason` of `streaming.rejections`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamRejection {
    Capacity,
    ShuttingDown,
}

impl StreamRejection {
    pub const fn as_str(self) -> &'static str {
        match self {
            StreamRejection::Capacity => "capacity",
            StreamRejection::ShuttingDown => "shutting_down",
        }
    }
}

/// The result of one authentication attempt (`outcome` and `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthResult {
    /// A configured token.
    Valid,
    /// No credentials: the challenge round-trip of a client discovering auth.
    Missing,
    /// Credentials that are not a Bearer token.
    Malformed,
    /// A Bearer token nobody configured.
    Invalid,
    /// Not looked at: the client address failed too often lately.
    Throttled,
    /// A valid OAuth access token without a scope the server requires.
    InsufficientScope,
}

impl AuthResult {
    /// Classifies a refused `Authorization` header value (`None`: absent).
    /// A value that is not visible ASCII cannot be a Bearer token either.
    pub fn of_refused(header: Option<&http::HeaderValue>) -> AuthResult {
        match header {
            None => AuthResult::Missing,
            Some(value) => {
                let bytes = value.as_bytes();
                let bearer = bytes.len() > 7 && bytes[..7].eq_ignore_ascii_case(b"bearer ");
                if bearer && value.to_str().is_ok() { AuthResult::Invalid } else { AuthResult::Malformed }
            }
        }
    }

    const fn labels(self) -> (&'static str, &'static str) {
        match self {
            AuthResult::Valid => ("success", "valid"),
            AuthResult::Missing => ("failure", "missing"),
            AuthResult::Malformed => ("failure", "malformed"),
            AuthResult::Invalid => ("failure", "invalid"),
            AuthResult::Throttled => ("failure", "throttled"),
            AuthResult::InsufficientScope => ("failure", "insufficient_scope"),
        }
    }
}

// ---------------------------------------------------------------------------
// Instruments

/// Counts of things in flight by a bounded key, read when metrics are collected (an observable
/// up-down counter). Recording a start and an end through the SDK costs two attribute lookups
/// per call, more than the rest of a call's metrics; two atomic additions cost next to nothing.
/// A series appears with its key's first use, as with an up-down counter.
pub struct LiveCounts<K> {
    cells: RwLock<crate::FastMap<K, Arc<AtomicI64>>>,
}

impl<K> Default for LiveCounts<K> {
    fn default() -> Self {
        LiveCounts { cells: RwLock::default() }
    }
}

impl<K: Copy + Eq + Hash> LiveCounts<K> {
    /// The count of `key`; callers add 1 when a thing starts and subtract 1 when it ends.
    pub fn cell(&self, key: K) -> Arc<AtomicI64> {
        let read = self.cells.read().unwrap_or_else(|p| p.into_inner());
        if let Some(cell) = read.get(&key) {
            return cell.clone();
        }
        drop(read);
        let mut write = self.cells.write().unwrap_or_else(|p| p.into_inner());
        write.entry(key).or_default().clone()
    }

    /// Reports every count with the attributes of its key.
    pub fn observe<const N: usize>(
        &self,
        observer: &dyn AsyncInstrument<i64>,
        attributes: impl Fn(K) -> [KeyValue; N],
    ) {
        let cells = self.cells.read().unwrap_or_else(|p| p.into_inner());
        for (key, cell) in cells.iter() {
            observer.observe(cell.load(Ordering::Relaxed), &attributes(*key));
        }
    }
}

/// The instruments of the HTTP, streaming and security rows of the contract.
pub struct GatewayMetrics {
    http_requests: Counter<u64>,
    http_duration: Histogram<f64>,
    /// By method and route.
    http_active: Arc<LiveCounts<(&'static str, &'static str)>>,
    _http_active: ObservableUpDownCounter<i64>,
    http_body_size: Histogram<u64>,
    stream_active: UpDownCounter<i64>,
    stream_messages: Counter<u64>,
    stream_bytes: Counter<u64>,
    stream_first_message: Histogram<f64>,
    stream_duration: Histogram<f64>,
    stream_rejections: Counter<u64>,
    auth_attempts: Counter<u64>,
    rate_limit_hits: Counter<u64>,
    /// Kept so the callback lives as long as the instruments.
    _max_streams: ObservableGauge<i64>,
}

impl std::fmt::Debug for GatewayMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GatewayMetrics")
    }
}

impl GatewayMetrics {
    /// Creates the instruments. `max_streams` is the configured process-wide
    /// cap on open streams, reported as `streaming.max_connections`.
    pub fn new(meter: &Meter, max_streams: usize) -> Self {
        let max = i64::try_from(max_streams).unwrap_or(i64::MAX);
        let http_active: Arc<LiveCounts<(&'static str, &'static str)>> = Arc::default();
        let http_active_cells = http_active.clone();
        GatewayMetrics {
            http_requests: meter
                .u64_counter("http.server.requests")
                .with_unit("{request}")
                .with_description("HTTP requests answered, by route template, method and status code.")
                .build(),
            http_duration: meter
                .f64_histogram("http.server.request.duration")
                .with_unit("s")
                .with_description("Time from request received to response head sent.")
                .with_boundaries(LATENCY_BUCKETS.to_vec())
                .build(),
            _http_active: meter
                .i64_observable_up_down_counter("http.server.active_requests")
                .with_unit("{request}")
                .with_description("HTTP requests in flight.")
                .with_callback(move |o| {
                    http_active_cells.observe(o, |(method, route)| {
                        [KeyValue::new("http.request.method", method), KeyValue::new("http.route", route)]
                    })
                })
                .build(),
            http_active,
            http_body_size: meter
                .u64_histogram("http.server.response.body.size")
                .with_unit("By")
                .with_description("Size of response bodies.")
                .with_boundaries(BODY_SIZE_BUCKETS.to_vec())
                .build(),
            stream_active: meter
                .i64_up_down_counter("streaming.active_connections")
                .with_unit("{connection}")
                .with_description("Open streams.")
                .build(),
            stream_messages: meter
                .u64_counter("streaming.messages")
                .with_unit("{message}")
                .with_description("Stream messages sent, by transport, stream type and message type.")
                .build(),
            stream_bytes: meter
                .u64_counter("streaming.bytes_transferred")
                .with_unit("{byte}")
                .with_description("Stream bytes sent.")
                .build(),
            stream_first_message: meter
                .f64_histogram("streaming.first_message.duration")
                .with_unit("s")
                .with_description("Time to first stream message.")
                .with_boundaries(LATENCY_BUCKETS.to_vec())
                .build(),
            stream_duration: meter
                .f64_histogram("streaming.connection.duration")
                .with_unit("s")
                .with_description("Stream lifetime, by why it closed.")
                .with_boundaries(LIFETIME_BUCKETS.to_vec())
                .build(),
            stream_rejections: meter
                .u64_counter("streaming.rejections")
                .with_unit("{connection}")
                .with_description("Streams refused because the server was at capacity or shutting down.")
                .build(),
            auth_attempts: meter
                .u64_counter("auth.attempts")
                .with_unit("{attempt}")
                .with_description("Authentication attempts by transport, outcome and reason.")
                .build(),
            rate_limit_hits: meter
                .u64_counter("rate_limit.hits")
                .with_unit("{request}")
                .with_description("Requests refused by the per-principal rate limiter.")
                .build(),
            _max_streams: meter
                .i64_observable_gauge("streaming.max_connections")
                .with_unit("{connection}")
                .with_description("Configured limit on open streams, for saturation.")
                .with_callback(move |observer| observer.observe(max, &[]))
                .build(),
        }
    }

    /// Instruments that record nothing (no SDK behind them).
    pub fn noop() -> Arc<Self> {
        static NOOP: OnceLock<Arc<GatewayMetrics>> = OnceLock::new();
        NOOP.get_or_init(|| {
            let meter = opentelemetry::metrics::noop::NoopMeterProvider::new().meter("task-mcp");
            Arc::new(GatewayMetrics::new(&meter, 0))
        })
        .clone()
    }

    /// One authentication attempt on a route that needs a principal.
    pub fn auth(&self, transport: Transport, result: AuthResult) {
        let (outcome, reason) = result.labels();
        self.auth_attempts.add(
            1,
            &[
                KeyValue::new("transport", transport.as_str()),
                KeyValue::new("outcome", outcome),
                KeyValue::new("reason", reason),
            ],
        );
    }

    /// One request refused by the rate limiter.
    pub fn rate_limited(&self, transport: Transport) {
        self.rate_limit_hits.add(1, &[KeyValue::new("transport", transport.as_str())]);
    }

    /// One stream refused.
    pub fn stream_rejected(&self, transport: Transport, reason: StreamRejection) {
        self.stream_rejections
            .add(1, &[KeyValue::new("transport", transport.as_str()), KeyValue::new("reason", reason.as_str())]);
    }

    /// Counts a stream as open until the returned recorder is dropped.
    /// `requested` is when the request that opened it arrived (the start of
    /// the time to first message).
    pub fn open_stream(
        self: &Arc<Self>,
        transport: Transport,
        stream_type: StreamType,
        requested: Instant,
    ) -> StreamRecorder {
        self.stream_active.add(1, &stream_attrs(transport, stream_type));
        StreamRecorder {
            metrics: Arc::clone(self),
            transport,
            stream_type,
            requested,
            first_sent: false,
            close: CloseReason::ClientClosed,
        }
    }
}

fn stream_attrs(transport: Transport, stream_type: StreamType) -> [KeyValue; 2] {
    [KeyValue::new("transport", transport.as_str()), KeyValue::new("stream.type", stream_type.as_str())]
}

/// One open stream. Dropping it closes the stream in the metrics exactly
/// once, with the reason set by [`StreamRecorder::close`] or, when none was
/// set, `client_closed` (the body was dropped before it ended).
pub struct StreamRecorder {
    metrics: Arc<GatewayMetrics>,
    transport: Transport,
    stream_type: StreamType,
    requested: Instant,
    first_sent: bool,
    close: CloseReason,
}

impl std::fmt::Debug for StreamRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamRecorder")
            .field("transport", &self.transport)
            .field("stream_type", &self.stream_type)
            .finish()
    }
}

impl StreamRecorder {
    /// `count` messages of one kind written in a write of `bytes` bytes.
    pub fn sent(&mut self, kind: MessageType, count: u64, bytes: usize) {
        let m = &self.metrics;
        let (transport, stream_type) = (self.transport.as_str(), self.stream_type.as_str());
        if count > 0 {
            m.stream_messages.add(
                count,
                &[
                    KeyValue::new("transport", transport),
                    KeyValue::new("stream.type", stream_type),
                    KeyValue::new("message.type", kind.as_str()),
                ],
            );
            if !self.first_sent {
                self.first_sent = true;
                m.stream_first_message.record(
                    self.requested.elapsed().as_secs_f64(),
                    &[KeyValue::new("transport", transport), KeyValue::new("stream.type", stream_type)],
                );
            }
        }
        self.add_bytes(bytes);
    }

    /// Bytes written without a message boundary of their own.
    pub fn add_bytes(&self, bytes: usize) {
        if bytes > 0 {
            self.metrics.stream_bytes.add(bytes as u64, &stream_attrs(self.transport, self.stream_type));
        }
    }

    /// How the stream is ending; the last call before the drop wins.
    pub fn close(&mut self, reason: CloseReason) {
        self.close = reason;
    }
}

impl Drop for StreamRecorder {
    fn drop(&mut self) {
        let m = &self.metrics;
        m.stream_active.add(-1, &stream_attrs(self.transport, self.stream_type));
        m.stream_duration.record(
            self.requested.elapsed().as_secs_f64(),
            &[
                KeyValue::new("transport", self.transport.as_str()),
                KeyValue::new("stream.type", self.stream_type.as_str()),
                KeyValue::new("close.reason", self.close.as_str()),
            ],
        );
    }
}

// ---------------------------------------------------------------------------
// HTTP server middleware

/// `http.request.method`: the methods the gateway serves, anything else `_OTHER`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::HEAD => "HEAD",
        _ => "_OTHER",
    }
}

/// `http.route`: the matched route template. `/v1/resources/read?uri=…` is
/// the contract's `/v1/resources/{uri}` (the resource named by a URI); the
/// `/v1/{*rest}` catch-all and the router's fallback are `_unmatched`.
pub fn route_label(matched: Option<&str>) -> &'static str {
    match matched {
        Some("/mcp") => "/mcp",
        Some("/sse") => "/sse",
        Some("/messages") => "/messages",
        Some("/v1/tools") => "/v1/tools",
        Some("/v1/tools/{name}") => "/v1/tools/{name}",
        Some("/v1/resources") => "/v1/resources",
        Some("/v1/resources/read" | "/v1/resources/{uri}") => "/v1/resources/{uri}",
        Some("/health/live") => "/health/live",
        Some("/health/ready") => "/health/ready",
        Some("/health/metrics") => "/health/metrics",
        _ => "_unmatched",
    }
}

/// The status codes the gateway can send (the contract's list).
const STATUS_CODES: [u16; 20] =
    [200, 202, 204, 400, 401, 403, 404, 405, 406, 409, 412, 413, 415, 422, 429, 499, 500, 502, 503, 504];

/// `http.response.status_code`: the code itself when it is in the contract's
/// list; a code outside it (which would be a new code path: the list is what
/// the gateway can produce) is folded into its class's generic code, so the
/// label set stays bounded.
pub fn status_label(status: u16) -> i64 {
    if STATUS_CODES.contains(&status) {
        return i64::from(status);
    }
    match status {
        200..=299 => 200,
        400..=499 => 400,
        _ => 500,
    }
}

/// The HTTP middleware: `http.server.requests`, `.request.duration`,
/// `.active_requests` and `.response.body.size`. Applied with
/// `Router::layer`, so it runs after routing and sees the [`MatchedPath`].
#[derive(Clone)]
pub struct HttpMetricsLayer {
    metrics: Arc<GatewayMetrics>,
}

impl HttpMetricsLayer {
    pub fn new(metrics: Arc<GatewayMetrics>) -> Self {
        HttpMetricsLayer { metrics }
    }
}

impl<S> Layer<S> for HttpMetricsLayer {
    type Service = HttpMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpMetrics { inner, metrics: Arc::clone(&self.metrics) }
    }
}

#[derive(Clone)]
pub struct HttpMetrics<S> {
    inner: S,
    metrics: Arc<GatewayMetrics>,
}

impl<S, B, ResB> Service<Request<B>> for HttpMetrics<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    ResB: HttpBody<Data = Bytes>,
{
    type Response = Response<MeteredBody<ResB>>;
    type Error = S::Error;
    type Future = HttpMetricsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let method = method_label(req.method());
        let route = route_label(req.extensions().get::<MatchedPath>().map(MatchedPath::as_str));
        let active = self.metrics.http_active.cell((method, route));
        active.fetch_add(1, Ordering::Relaxed);
        let in_flight =
            InFlight { metrics: Arc::clone(&self.metrics), method, route, active, start: Instant::now(), done: false };
        HttpMetricsFuture { inner: self.inner.call(req), in_flight: Some(in_flight) }
    }
}

/// A request whose response head has not been sent yet. Dropped unfinished,
/// the client went away first: counted as 499.
struct InFlight {
    metrics: Arc<GatewayMetrics>,
    method: &'static str,
    route: &'static str,
    active: Arc<AtomicI64>,
    start: Instant,
    done: bool,
}

impl InFlight {
    fn finish(&mut self, status: u16) {
        self.done = true;
        let m = &self.metrics;
        self.active.fetch_sub(1, Ordering::Relaxed);
        let attrs = [
            KeyValue::new("http.request.method", self.method),
            KeyValue::new("http.route", self.route),
            KeyValue::new("http.response.status_code", status_label(status)),
        ];
        m.http_requests.add(1, &attrs);
        m.http_duration.record(self.start.elapsed().as_secs_f64(), &attrs);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.done {
            self.finish(499);
        }
    }
}

pin_project! {
    pub struct HttpMetricsFuture<F> {
        #[pin]
        inner: F,
        in_flight: Option<InFlight>,
    }
}

impl<F, ResB, E> std::future::Future for HttpMetricsFuture<F>
where
    F: std::future::Future<Output = Result<Response<ResB>, E>>,
    ResB: HttpBody<Data = Bytes>,
{
    type Output = Result<Response<MeteredBody<ResB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        let Some(mut in_flight) = this.in_flight.take() else {
            // Polled after completion: a contract violation by the caller;
            // pass the output on without counting it twice.
            return Poll::Ready(out.map(|res| res.map(MeteredBody::unmetered)));
        };
        Poll::Ready(match out {
            Ok(res) => {
                in_flight.finish(res.status().as_u16());
                let record = BodyRecord {
                    metrics: Arc::clone(&in_flight.metrics),
                    method: in_flight.method,
                    route: in_flight.route,
                };
                Ok(res.map(|body| MeteredBody { inner: body, bytes: 0, record: Some(record) }))
            }
            Err(e) => {
                // axum routes are infallible; a failing service becomes a 500 at the server.
                in_flight.finish(500);
                Err(e)
            }
        })
    }
}

struct BodyRecord {
    metrics: Arc<GatewayMetrics>,
    method: &'static str,
    route: &'static str,
}

impl BodyRecord {
    fn record(self, bytes: u64) {
        self.metrics.http_body_size.record(
            bytes,
            &[KeyValue::new("http.request.method", self.method), KeyValue::new("http.route", self.route)],
        );
    }
}

pin_project! {
    /// A response body that records its size when it ends (a stream: when
    /// the stream ends, however it ends).
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        bytes: u64,
        record: Option<BodyRecord>,
    }

    impl<B> PinnedDrop for MeteredBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(record) = this.record.take() {
                record.record(*this.bytes);
            }
        }
    }
}

impl<B> MeteredBody<B> {
    fn unmetered(inner: B) -> Self {
        MeteredBody { inner, bytes: 0, record: None }
    }
}

impl<B: HttpBody<Data = Bytes>> HttpBody for MeteredBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    *this.bytes += data.len() as u64;
                }
            }
            // The end, or a failure that ends it: the size is known now.
            None | Some(Err(_)) => {
                if let Some(record) = this.record.take() {
                    record.record(*this.bytes);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Reads instruments back without any exporter. Shared with the service's
/// tests through the `test-util` feature.
#[cfg(any(test, feature = "test-util"))]
pub mod testing {
    use std::sync::Arc;

    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry::{KeyValue, metrics::Meter};
    use opentelemetry_sdk::metrics::{
        ManualReader, SdkMeterProvider,
        data::{AggregatedMetrics, MetricData, ResourceMetrics},
        reader::MetricReader,
    };

    /// An SDK meter whose data tests read back through a manual reader.
    pub struct TestMeter {
        pub provider: SdkMeterProvider,
        reader: Arc<ManualReader>,
    }

    #[derive(Clone, Debug)]
    struct SharedReader(Arc<ManualReader>);

    impl MetricReader for SharedReader {
        fn register_pipeline(&self, pipeline: std::sync::Weak<opentelemetry_sdk::metrics::Pipeline>) {
            self.0.register_pipeline(pipeline)
        }
        fn collect(&self, rm: &mut ResourceMetrics) -> opentelemetry_sdk::error::OTelSdkResult {
            self.0.collect(rm)
        }
        fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
            self.0.force_flush()
        }
        fn shutdown_with_timeout(&self, t: std::time::Duration) -> opentelemetry_sdk::error::OTelSdkResult {
            self.0.shutdown_with_timeout(t)
        }
        fn temporality(
            &self,
            kind: opentelemetry_sdk::metrics::InstrumentKind,
        ) -> opentelemetry_sdk::metrics::Temporality {
            self.0.temporality(kind)
        }
    }

    impl Default for TestMeter {
        fn default() -> Self {
            Self::new()
        }
    }

    impl TestMeter {
        pub fn new() -> Self {
            let reader = Arc::new(ManualReader::builder().build());
            let provider = SdkMeterProvider::builder().with_reader(SharedReader(reader.clone())).build();
            TestMeter { provider, reader }
        }

        pub fn meter(&self) -> Meter {
            self.provider.meter("test")
        }

        /// Every data point now, as `(name, sorted "k=v" labels, value)`;
        /// histograms give their count.
        pub fn points(&self) -> Vec<(String, Vec<String>, f64)> {
            let mut rm = ResourceMetrics::default();
            self.reader.collect(&mut rm).expect("collect");
            let mut out = Vec::new();
            for scope in rm.scope_metrics() {
                for metric in scope.metrics() {
                    let name = metric.name().to_string();
                    let mut push = |attrs: Vec<String>, v: f64| {
                        let mut attrs = attrs;
                        attrs.sort();
                        out.push((name.clone(), attrs, v));
                    };
                    fn labels<'a>(it: impl Iterator<Item = &'a KeyValue>) -> Vec<String> {
                        it.map(|kv| format!("{}={}", kv.key, kv.value)).collect()
                    }
                    match metric.data() {
                        AggregatedMetrics::U64(MetricData::Sum(s)) => {
                            s.data_points().for_each(|p| push(labels(p.attributes()), p.value() as f64))
                        }
                        AggregatedMetrics::I64(MetricData::Sum(s)) => {
                            s.data_points().for_each(|p| push(labels(p.attributes()), p.value() as f64))
                        }
                        AggregatedMetrics::I64(MetricData::Gauge(g)) => {
                            g.data_points().for_each(|p| push(labels(p.attributes()), p.value() as f64))
                        }
                        AggregatedMetrics::F64(MetricData::Gauge(g)) => {
                            g.data_points().for_each(|p| push(labels(p.attributes()), p.value()))
                        }
                        AggregatedMetrics::F64(MetricData::Histogram(h)) => {
                            h.data_points().for_each(|p| push(labels(p.attributes()), p.count() as f64))
                        }
                        AggregatedMetrics::U64(MetricData::Histogram(h)) => {
                            h.data_points().for_each(|p| push(labels(p.attributes()), p.count() as f64))
                        }
                        _ => {}
                    }
                }
            }
            out.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
            out
        }

        /// The value of the one point of `name` with exactly `labels`.
        pub fn value(&self, name: &str, labels: &[&str]) -> Option<f64> {
            let mut want: Vec<String> = labels.iter().map(|s| s.to_string()).collect();
            want.sort();
            self.points().into_iter().find(|(n, l, _)| n == name && *l == want).map(|(_, _, v)| v)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::testing::TestMeter;
    use super::*;
    use axum::{Router, body::Body, routing::get};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    #[test]
    fn labels_are_bounded() {
        assert_eq!(route_label(Some("/v1/resources/read")), "/v1/resources/{uri}");
        assert_eq!(route_label(Some("/v1/{*rest}")), "_unmatched");
        assert_eq!(route_label(None), "_unmatched");
        assert_eq!(status_label(418), 400);
        assert_eq!(status_label(501), 500);
        assert_eq!(status_label(499), 499);
        assert_eq!(method_label(&Method::PATCH), "_OTHER");
        let v = |s: &'static str| Some(http::HeaderValue::from_static(s));
        assert_eq!(Transport::from_header(v("mcp").as_ref()), Transport::Mcp);
        assert_eq!(Transport::from_header(v("http").as_ref()), Transport::Http);
        assert_eq!(Transport::from_header(v("MCP").as_ref()), Transport::Grpc);
        assert_eq!(Transport::from_header(None), Transport::Grpc);
        assert_eq!(AuthResult::of_refused(None), AuthResult::Missing);
        assert_eq!(AuthResult::of_refused(v("Basic abc").as_ref()), AuthResult::Malformed);
        assert_eq!(AuthResult::of_refused(v("Bearer ").as_ref()), AuthResult::Malformed);
        assert_eq!(AuthResult::of_refused(v("bearer xyz").as_ref()), AuthResult::Invalid);
    }

    #[test]
    fn jsonrpc_message_kinds() {
        use serde_json::json;
        let kind = |v| MessageType::of_jsonrpc(&v);
        assert_eq!(kind(json!({"jsonrpc":"2.0","method":"notifications/progress","params":{}})), MessageType::Progress);
        assert_eq!(kind(json!({"jsonrpc":"2.0","method":"notifications/message"})), MessageType::Notification);
        assert_eq!(kind(json!({"jsonrpc":"2.0","id":"s","method":"ping"})), MessageType::Ping);
        assert_eq!(kind(json!({"jsonrpc":"2.0","id":1,"result":{}})), MessageType::Result);
        assert_eq!(kind(json!({"jsonrpc":"2.0","id":1,"error":{"code":1}})), MessageType::Error);
    }

    fn app(metrics: Arc<GatewayMetrics>) -> Router {
        Router::new()
            .route("/v1/tools/{name}", get(|| async { "hello" }))
            .route("/health/live", get(|| async { "" }))
            .layer(HttpMetricsLayer::new(metrics))
    }

    fn get_req(path: &str) -> Request<Body> {
        Request::builder().uri(path).body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn http_layer_counts_by_template_method_and_status() {
        let t = TestMeter::new();
        let metrics = Arc::new(GatewayMetrics::new(&t.meter(), 7));
        let app = app(metrics);
        for path in ["/v1/tools/a", "/v1/tools/b", "/nowhere/123"] {
            let res = app.clone().oneshot(get_req(path)).await.unwrap();
            res.into_body().collect().await.unwrap();
        }
        let post = Request::builder().method("PATCH").uri("/health/live").body(Body::empty()).unwrap();
        app.clone().oneshot(post).await.unwrap();
        let tools = ["http.request.method=GET", "http.route=/v1/tools/{name}", "http.response.status_code=200"];
        assert_eq!(t.value("http.server.requests", &tools), Some(2.0));
        assert_eq!(t.value("http.server.request.duration", &tools), Some(2.0));
        let unmatched = ["http.request.method=GET", "http.route=_unmatched", "http.response.status_code=404"];
        assert_eq!(t.value("http.server.requests", &unmatched), Some(1.0));
        let other = ["http.request.method=_OTHER", "http.route=/health/live", "http.response.status_code=405"];
        assert_eq!(t.value("http.server.requests", &other), Some(1.0));
        assert_eq!(
            t.value("http.server.active_requests", &["http.request.method=GET", "http.route=/v1/tools/{name}"]),
            Some(0.0)
        );
        assert_eq!(
            t.value("http.server.response.body.size", &["http.request.method=GET", "http.route=/v1/tools/{name}"]),
            Some(2.0)
        );
        assert_eq!(t.value("streaming.max_connections", &[]), Some(7.0));
        // Nothing but the contract's attribute keys.
        for (name, labels, _) in t.points() {
            assert!(!labels.iter().any(|l| l.contains("/v1/tools/a")), "{name} {labels:?}");
        }
    }

    #[tokio::test]
    async fn a_request_in_flight_is_active_and_dropped_before_its_head_is_499_and_no_longer_active() {
        let t = TestMeter::new();
        let metrics = Arc::new(GatewayMetrics::new(&t.meter(), 1));
        let app = Router::new()
            .route("/mcp", get(std::future::pending::<&'static str>))
            .layer(HttpMetricsLayer::new(metrics));
        let mut fut = Box::pin(app.oneshot(get_req("/mcp")));
        // Poll until the request is in flight, then drop it.
        let timed_out = tokio::time::timeout(std::time::Duration::from_millis(20), &mut fut).await;
        assert!(timed_out.is_err());
        let active = ["http.request.method=GET", "http.route=/mcp"];
        assert_eq!(t.value("http.server.active_requests", &active), Some(1.0), "counted while in flight");
        drop(fut);
        let dropped = ["http.request.method=GET", "http.route=/mcp", "http.response.status_code=499"];
        assert_eq!(t.value("http.server.requests", &dropped), Some(1.0));
        assert_eq!(t.value("http.server.active_requests", &["http.request.method=GET", "http.route=/mcp"]), Some(0.0));
    }

    #[test]
    fn streams_record_once_with_their_close_reason() {
        let t = TestMeter::new();
        let metrics = Arc::new(GatewayMetrics::new(&t.meter(), 1));
        let mut rec = metrics.open_stream(Transport::Mcp, StreamType::Sse, Instant::now());
        assert_eq!(t.value("streaming.active_connections", &["transport=mcp", "stream.type=sse"]), Some(1.0));
        rec.sent(MessageType::Priming, 1, 10);
        rec.sent(MessageType::Result, 2, 30);
        rec.add_bytes(5);
        rec.close(CloseReason::Completed);
        drop(rec);
        let base = ["transport=mcp", "stream.type=sse"];
        assert_eq!(t.value("streaming.active_connections", &base), Some(0.0));
        assert_eq!(t.value("streaming.bytes_transferred", &base), Some(45.0));
        assert_eq!(t.value("streaming.first_message.duration", &base), Some(1.0));
        let msgs = ["transport=mcp", "stream.type=sse", "message.type=result"];
        assert_eq!(t.value("streaming.messages", &msgs), Some(2.0));
        let closed = ["transport=mcp", "stream.type=sse", "close.reason=completed"];
        assert_eq!(t.value("streaming.connection.duration", &closed), Some(1.0));

        let rec = metrics.open_stream(Transport::Http, StreamType::Ndjson, Instant::now());
        drop(rec);
        let gone = ["transport=http", "stream.type=ndjson", "close.reason=client_closed"];
        assert_eq!(t.value("streaming.connection.duration", &gone), Some(1.0));
        // A stream that sent nothing has no time to first message.
        assert_eq!(t.value("streaming.first_message.duration", &["transport=http", "stream.type=ndjson"]), None);
    }

    #[test]
    fn security_counters() {
        let t = TestMeter::new();
        let metrics = GatewayMetrics::new(&t.meter(), 1);
        metrics.auth(Transport::Http, AuthResult::Valid);
        metrics.auth(Transport::Mcp, AuthResult::Missing);
        metrics.rate_limited(Transport::Mcp);
        metrics.stream_rejected(Transport::Mcp, StreamRejection::Capacity);
        assert_eq!(t.value("auth.attempts", &["transport=http", "outcome=success", "reason=valid"]), Some(1.0));
        assert_eq!(t.value("auth.attempts", &["transport=mcp", "outcome=failure", "reason=missing"]), Some(1.0));
        assert_eq!(t.value("rate_limit.hits", &["transport=mcp"]), Some(1.0));
        assert_eq!(t.value("streaming.rejections", &["transport=mcp", "reason=capacity"]), Some(1.0));
    }
}
