//! Traces: one span per HTTP request (gateway), per gRPC call (service) and per
//! tool execution, exported over OTLP when an endpoint is configured.
//!
//! Configuration is the standard `OTEL_*` environment, nothing of our own:
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` turns
//! export on; `OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL` picks `grpc` (default) or
//! `http/protobuf`; `OTEL_TRACES_SAMPLER`/`OTEL_TRACES_SAMPLER_ARG`, `OTEL_BSP_*`
//! and `OTEL_EXPORTER_OTLP[_TRACES]_TIMEOUT`/`_HEADERS` are read by the SDK;
//! `OTEL_TRACES_EXPORTER=none` or `OTEL_SDK_DISABLED=true` turn it off.
//!
//! The shape of a trace of one MCP `tools/call`:
//!
//! ```text
//! POST /mcp                          gateway, kind server  (child of the client's traceparent, if any)
//! └─ taskmcp.v1.Changes/OpenChange   service, kind server  (parent from the `traceparent` metadata)
//!    └─ execute_tool change.open     service, kind internal
//! ```
//!
//! W3C trace context crosses from the gateway to the service as `traceparent`
//! metadata, whether the service is in-process or remote: the gateway's HTTP span
//! replaces the request's `traceparent` header with its own context (so whatever
//! the gateway forwards names the gateway's span, even from tasks it spawns), and
//! the upstream transport injects the *current* span's context on every call.
//!
//! Export never touches the request path: finished spans go into the SDK's
//! bounded queue (`try_send`; dropped when full) and a dedicated thread exports
//! them in batches. A Collector that is down or slow costs failed exports on that
//! thread and a warning at most once a minute; the provider is flushed, with a
//! bound, on shutdown.
//!
//! With export off, nothing here costs a request more than a flag check: the HTTP
//! span and propagation layers are not installed, the tool-span layer passes
//! calls straight through, and the gRPC span is the plain log span it always was.
use std::{
    borrow::Cow,
    collections::HashMap,
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context as TaskContext, Poll},
    time::{Duration, Instant},
};

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use http_body::{Body, Frame};
use opentelemetry::{
    Context, KeyValue,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _},
};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    propagation::TraceContextPropagator,
    trace::{BatchSpanProcessor, SdkTracer, SdkTracerProvider, SpanData, SpanExporter},
};
use pin_project_lite::pin_project;
use task_mcp_gateway::headers::{GRPC_STATUS, TRACEPARENT, TRACESTATE, X_REQUEST_ID};
use tower::{Layer, Service};
use tracing::{Subscriber, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::{
    Layer as _,
    filter::{FilterFn, Filtered},
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    registry::LookupSpan,
};

/// The instrumentation scope of every span.
const SCOPE: &str = "task-mcp";
/// How long shutdown waits for the last batch; a Collector that is down must not
/// hold the exit for the SDK's default 30 s.
const SHUTDOWN_BOUND: Duration = Duration::from_secs(5);

/// Set once, when export is on. Read on every request by the layers' fast path.
static ENABLED: AtomicBool = AtomicBool::new(false);
/// The tracer for spans made directly with OpenTelemetry (the tool span).
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Whether spans are exported (and so whether the span layers are installed).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

// ---------------------------------------------------------------------------
// Configuration

/// The OTLP transport for spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        })
    }
}

/// What the environment asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportConfig {
    pub protocol: Protocol,
    /// The endpoint variable's value, for the start-up log line (the exporter
    /// reads the variables itself, with the spec's path rules for HTTP).
    pub endpoint: String,
    /// Things worth a warning once logging is up (an unsupported protocol).
    pub notes: Vec<String>,
}

impl ExportConfig {
    pub fn from_env() -> Option<ExportConfig> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// `None` when traces are not to be exported. `get` reads one variable.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Option<ExportConfig> {
        let value = |key: &str| get(key).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        if value("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return None;
        }
        let mut notes = Vec::new();
        match value("OTEL_TRACES_EXPORTER").map(|v| v.to_ascii_lowercase()).as_deref() {
            None | Some("otlp") => {}
            Some("none") => return None,
            Some(other) => notes.push(format!("OTEL_TRACES_EXPORTER={other} is not supported; using otlp")),
        }
        let endpoint = value("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| value("OTEL_EXPORTER_OTLP_ENDPOINT"))?;
        let protocol = match value("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| value("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .map(|v| v.to_ascii_lowercase())
            .as_deref()
        {
            None | Some("grpc") => Protocol::Grpc,
            Some("http/protobuf") => Protocol::HttpProtobuf,
            Some(other) => {
                notes.push(format!("OTLP protocol {other:?} is not supported for traces; using grpc"));
                Protocol::Grpc
            }
        };
        Some(ExportConfig { protocol, endpoint, notes })
    }
}

// ---------------------------------------------------------------------------
// Set-up and shutdown

/// The tracer provider, when export is on. Keep it for the life of the process
/// and call [`Traces::shutdown`] at exit so the last spans are sent.
pub struct Traces {
    provider: Option<SdkTracerProvider>,
    /// Start-up lines to log once the subscriber exists: (is a warning, text).
    status: Vec<(bool, String)>,
}

/// The `tracing` layer that turns spans into OpenTelemetry spans, limited to this
/// project's spans (so `RUST_LOG=debug` does not export every h2 frame) and to
/// warnings and errors as span events (so the per-call log line is not copied
/// into every span).
pub type OtelLayer<S> =
    Filtered<tracing_opentelemetry::OpenTelemetryLayer<S, SdkTracer>, FilterFn<fn(&tracing::Metadata<'_>) -> bool>, S>;

fn exported(meta: &tracing::Metadata<'_>) -> bool {
    if meta.is_span() { meta.target().starts_with("task_mcp") } else { *meta.level() <= tracing::Level::WARN }
}

impl Traces {
    /// Builds the exporter and provider from the environment. Must run inside the
    /// Tokio runtime (the gRPC exporter's channel lives on it). Never fails: a
    /// bad configuration means no traces and a warning, not a server that will
    /// not start.
    pub fn init() -> Traces {
        let Some(config) = ExportConfig::from_env() else {
            return Traces { provider: None, status: Vec::new() };
        };
        let mut status: Vec<(bool, String)> = config.notes.iter().map(|n| (true, n.clone())).collect();
        let exporter = match config.protocol {
            Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder().with_tonic().build(),
            Protocol::HttpProtobuf => {
                use opentelemetry_otlp::WithExportConfig as _;
                opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .build()
            }
        };
        let exporter = match exporter {
            Ok(exporter) => exporter,
            Err(e) => {
                status.push((true, format!("traces are off: cannot build the OTLP exporter: {e}")));
                return Traces { provider: None, status };
            }
        };
        // The processor reads OTEL_BSP_* (queue 2048, batch 512, delay 5 s by
        // default); its queue is the bound that keeps a dead Collector off the
        // request path.
        let processor = BatchSpanProcessor::builder(WarnOnFailure::new(exporter)).build();
        // The builder's default sampler reads OTEL_TRACES_SAMPLER(_ARG)
        // (parentbased_always_on when unset).
        let provider = SdkTracerProvider::builder()
            .with_resource(super::metrics::resource())
            .with_span_processor(processor)
            .build();
        let _ = TRACER.set(provider.tracer(SCOPE));
        let _ = TOOLS.set(tool_names());
        ENABLED.store(true, Ordering::Relaxed);
        status.push((false, format!("exporting traces over OTLP ({}) to {}", config.protocol, config.endpoint)));
        Traces { provider: Some(provider), status }
    }

    /// The layer to add to the subscriber (`None` when export is off).
    pub fn layer<S>(&self) -> Option<OtelLayer<S>>
    where
        S: Subscriber + for<'span> LookupSpan<'span>,
    {
        let tracer = self.provider.as_ref()?.tracer(SCOPE);
        let filter: FilterFn<fn(&tracing::Metadata<'_>) -> bool> = FilterFn::new(exported);
        Some(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                // Source locations and thread names are noise at this granularity,
                // and idle/busy timings cost two clock reads per poll.
                .with_location(false)
                .with_threads(false)
                .with_tracked_inactivity(false)
                .with_filter(filter),
        )
    }

    /// Logs what was configured; call once the subscriber is installed.
    pub fn log_status(&self) {
        for (warning, line) in &self.status {
            if *warning {
                tracing::warn!(target: "task_mcp::telemetry", "{line}");
            } else {
                tracing::info!(target: "task_mcp::telemetry", "{line}");
            }
        }
    }

    /// Flushes and stops the exporter, waiting at most a few seconds.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else { return };
        ENABLED.store(false, Ordering::Relaxed);
        // `shutdown` blocks until the last export returns; the gRPC exporter
        // needs the runtime meanwhile, so block a pool thread, not a worker.
        let result = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_BOUND)).await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "flushing traces at shutdown failed"),
            Err(e) => tracing::warn!(error = %e, "flushing traces at shutdown panicked"),
        }
    }
}

/// One id per process, shared by every signal: the `service.instance.id` named in
/// `OTEL_RESOURCE_ATTRIBUTES` (a pod name is a good value), else a UUIDv4 made at
/// start. Without a unique id, replicas would overwrite each other's series.
pub fn service_instance_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        instance_id_from(&std::env::var("OTEL_RESOURCE_ATTRIBUTES").unwrap_or_default())
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
    })
}

/// `service.instance.id=<value>` out of a `key=value,key=value` list.
fn instance_id_from(attributes: &str) -> Option<String> {
    attributes
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| k.trim() == "service.instance.id")
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// The exporter, with a warning (at most once a minute) when exports fail: the
/// SDK's own diagnostics are compiled out, and silence would hide a dead Collector.
#[derive(Debug)]
struct WarnOnFailure<E> {
    inner: E,
    warn: super::warn::WarnEvery,
}

impl<E> WarnOnFailure<E> {
    fn new(inner: E) -> Self {
        WarnOnFailure { inner, warn: super::warn::WarnEvery::default() }
    }
}

impl<E: SpanExporter> SpanExporter for WarnOnFailure<E> {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        let spans = batch.len();
        let export = self.inner.export(batch);
        async move {
            let result = export.await;
            if let Err(e) = &result
                && self.warn.allow(Instant::now())
            {
                tracing::warn!(
                    target: "task_mcp::telemetry",
                    error = %e,
                    spans,
                    "exporting traces failed (spans are dropped; next warning in a minute at the earliest)"
                );
            }
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

// ---------------------------------------------------------------------------
// Logs: trace_id and span_id on lines inside a traced request

/// Wraps the JSON event format: a line written while a span with a valid trace
/// context is entered gets `"trace_id"` and `"span_id"` (lowercase hex, as in
/// `traceparent`) as top-level fields. Other lines are written untouched.
pub struct WithTraceIds<F>(pub F);

/// The current OpenTelemetry span's ids. The OpenTelemetry layer makes a span's
/// context current while the span is entered.
fn current_ids() -> Option<(String, String)> {
    Context::map_current(|cx| {
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid().then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
    })
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let Some((trace_id, span_id)) = current_ids() else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        writer.write_str(&with_ids(&line, &trace_id, &span_id))
    }
}

/// Adds the ids to one JSON object line; anything else is returned unchanged.
fn with_ids<'a>(line: &'a str, trace_id: &str, span_id: &str) -> Cow<'a, str> {
    let body = line.trim_end();
    let Some(head) = body.strip_suffix('}') else { return Cow::Borrowed(line) };
    let separator = if head.trim_end().ends_with('{') { "" } else { "," };
    Cow::Owned(format!("{head}{separator}\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"}}\n"))
}

// ---------------------------------------------------------------------------
// W3C trace context in headers and metadata

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(key), HeaderValue::try_from(value)) {
            self.0.insert(name, value);
        }
    }
}

/// The remote parent named by `traceparent`/`tracestate`, if any. A value not
/// of the W3C shape (the SDK's parser accepts short ids such as `00-abc-def-01`)
/// is ignored: the request starts a trace of its own.
pub fn extract(headers: &HeaderMap) -> Option<Context> {
    let value = headers.get(TRACEPARENT)?.to_str().ok()?;
    if !well_formed_traceparent(value) {
        return None;
    }
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    cx.span().span_context().is_valid().then_some(cx)
}

/// `version-traceid-spanid-flags` with 2, 32, 16 and 2 lowercase hex digits.
fn well_formed_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.trim().split('-').collect();
    let hex =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    parts.len() >= 4 && hex(parts[0], 2) && hex(parts[1], 32) && hex(parts[2], 16) && hex(parts[3], 2)
}

/// Writes `cx` as `traceparent` (and `tracestate`) into `headers`, replacing
/// what was there. Does nothing for a context without a valid span.
pub fn inject(cx: &Context, headers: &mut HeaderMap) {
    if !cx.span().span_context().is_valid() {
        return;
    }
    headers.remove(TRACESTATE);
    TraceContextPropagator::new().inject_context(cx, &mut HeaderInjector(headers));
}

// ---------------------------------------------------------------------------
// gRPC server spans

/// The span of one gRPC call (the service's log span: every line of the call
/// carries its method and request id). With export on it is also the call's
/// OpenTelemetry server span, child of the `traceparent` the call carries.
pub fn grpc_server_span<B>(req: &Request<B>) -> tracing::Span {
    let path = req.uri().path();
    let id = req.headers().get(X_REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
    // `principal` is recorded once authentication has run (`calls::PrincipalLayer`).
    let span = tracing::info_span!(
        "grpc",
        method = %path,
        request_id = %id,
        principal = Empty,
        otel.name = Empty,
        otel.kind = Empty
    );
    if !enabled() || span.is_disabled() {
        return span;
    }
    let rpc = path.trim_start_matches('/');
    let (service, method) = rpc.split_once('/').unwrap_or((rpc, ""));
    span.record("otel.name", rpc);
    span.record("otel.kind", "server");
    if let Some(parent) = extract(req.headers()) {
        // Only fails when the span was already started, which it cannot be yet.
        let _ = span.set_parent(parent);
    }
    span.set_attribute("rpc.system", "grpc");
    span.set_attribute("rpc.service", service.to_string());
    span.set_attribute("rpc.method", method.to_string());
    span
}

/// Records the call's final status on its span: `rpc.grpc.status_code`, and an
/// error status for the codes the semantic conventions count as server faults.
pub fn record_grpc_status(span: &tracing::Span, code: i32) {
    if !enabled() {
        return;
    }
    span.set_attribute("rpc.grpc.status_code", i64::from(code));
    if is_server_fault(code) {
        span.set_status(Status::error(tonic::Code::from(code).description()));
    }
}

/// UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS.
fn is_server_fault(code: i32) -> bool {
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

/// The status a response head or trailer block carries, if any.
pub fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers.get(GRPC_STATUS).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

// ---------------------------------------------------------------------------
// Tool spans

/// `/package.Service/Method` -> tool name, for every RPC that is a tool (and the
/// streaming form of each), read from the same descriptors the gateway uses.
static TOOLS: OnceLock<HashMap<String, String>> = OnceLock::new();

fn tool_names() -> HashMap<String, String> {
    let Ok(pool) = prost_reflect::DescriptorPool::decode(crate::pb::FILE_DESCRIPTOR_SET) else {
        return HashMap::new();
    };
    let Ok(registry) = task_mcp_gateway::upstream::Registry::from_pool(&pool) else {
        return HashMap::new();
    };
    let path = |m: &prost_reflect::MethodDescriptor| format!("/{}/{}", m.parent_service().full_name(), m.name());
    let mut tools = HashMap::new();
    for tool in registry.tools() {
        tools.insert(path(&tool.method), tool.name.clone());
        if let Some(stream) = &tool.stream_method {
            tools.insert(path(stream), tool.name.clone());
        }
    }
    tools
}

/// Around the service's routes, inside the gRPC span: for an RPC that is a tool,
/// an `execute_tool <name>` span (kind internal, child of the gRPC span) that
/// lasts until the response body ends, so a streaming form is covered whole.
/// It is an OpenTelemetry span only: log lines keep the gRPC span's fields.
#[derive(Clone, Copy, Default)]
pub struct ToolSpanLayer;

impl<S> Layer<S> for ToolSpanLayer {
    type Service = ToolSpan<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ToolSpan { inner }
    }
}

#[derive(Clone)]
pub struct ToolSpan<S> {
    inner: S,
}

type SdkSpan = opentelemetry_sdk::trace::Span;

fn start_tool_span(path: &str) -> Option<SdkSpan> {
    if !enabled() {
        return None;
    }
    let name = TOOLS.get()?.get(path)?;
    let tracer = TRACER.get()?;
    // The gRPC span is current here (the trace layer enters it around `call`).
    let parent = tracing::Span::current().context();
    let span = tracer
        .span_builder(format!("execute_tool {name}"))
        .with_kind(SpanKind::Internal)
        .with_attributes([
            KeyValue::new("gen_ai.operation.name", "execute_tool"),
            KeyValue::new("gen_ai.tool.name", name.clone()),
            KeyValue::new("rpc.method", path.trim_start_matches('/').to_string()),
        ])
        .start_with_context(tracer, &parent);
    Some(span)
}

impl<S, ReqB> Service<Request<ReqB>> for ToolSpan<S>
where
    S: Service<Request<ReqB>, Response = Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqB: Send + 'static,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let span = start_tool_span(req.uri().path());
        let future = self.inner.call(req);
        let Some(mut span) = span else { return Box::pin(future) };
        Box::pin(async move {
            let response = match future.await {
                Ok(response) => response,
                Err(e) => {
                    span.set_status(Status::error("the call failed before a response"));
                    return Err(e);
                }
            };
            // An error answered before any message is a trailers-only response.
            if let Some(code) = grpc_status(response.headers()) {
                finish_tool_span(&mut span, code);
                return Ok(response);
            }
            Ok(response.map(|body| tonic::body::Body::new(ToolBody { inner: body, span: Some(span) })))
        })
    }
}

fn finish_tool_span(span: &mut SdkSpan, code: i32) {
    span.set_attribute(KeyValue::new("rpc.grpc.status_code", i64::from(code)));
    if code != 0 {
        // The tool failed, whoever's fault: for a tool span that is an error.
        span.set_status(Status::error(tonic::Code::from(code).description()));
    }
    span.end();
}

pin_project! {
    /// The response body of a tool call; ends the tool span at the trailers (or
    /// when dropped: a client that went away ends it too).
    struct ToolBody<B> {
        #[pin]
        inner: B,
        span: Option<SdkSpan>,
    }
}

impl<B: Body> Body for ToolBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(trailers) = f.trailers_ref()
                    && let Some(mut span) = this.span.take()
                {
                    finish_tool_span(&mut span, grpc_status(trailers).unwrap_or(0));
                }
            }
            Some(Err(_)) => {
                if let Some(mut span) = this.span.take() {
                    span.set_status(Status::error("the response stream failed"));
                    span.end();
                }
            }
            None => {
                if let Some(mut span) = this.span.take() {
                    span.end();
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

// ---------------------------------------------------------------------------
// HTTP server spans (gateway)

/// For the gateway's router (`Router::layer`, so the matched route is known):
/// one server span per request, named `METHOD /route`, child of the client's
/// `traceparent` if it sent one. The request's `traceparent` header is replaced
/// by this span's context before the gateway sees it, so the metadata the
/// gateway forwards to the service names this span even from tasks that run
/// outside it. Install only when [`enabled`].
#[derive(Clone, Copy, Default)]
pub struct HttpSpanLayer;

impl<S> Layer<S> for HttpSpanLayer {
    type Service = HttpSpan<S>;
    fn layer(&self, inner: S) -> Self::Service {
        HttpSpan { inner }
    }
}

#[derive(Clone)]
pub struct HttpSpan<S> {
    inner: S,
}

/// Span fields only: no log line is written per request.
fn http_server_span<B>(req: &Request<B>) -> tracing::Span {
    let route = req.extensions().get::<axum::extract::MatchedPath>().map_or("_unmatched", |p| p.as_str());
    let method = req.method().as_str();
    let span = tracing::info_span!(
        "http",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        http.request.method = method,
        http.route = route,
        url.path = req.uri().path(),
        http.response.status_code = Empty,
        otel.status_code = Empty,
    );
    if let Some(parent) = extract(req.headers()) {
        let _ = span.set_parent(parent);
    }
    span
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for HttpSpan<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqB: Send + 'static,
    ResB: Send + 'static,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let span = http_server_span(&req);
        inject(&span.context(), req.headers_mut());
        let future = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        let instrumented = tracing::Instrument::instrument(future, span.clone());
        Box::pin(async move {
            let result = instrumented.await;
            if let Ok(response) = &result {
                let status = response.status();
                span.record("http.response.status_code", status.as_u16());
                if status.is_server_error() {
                    span.record("otel.status_code", "ERROR");
                }
            }
            result
        })
    }
}

// ---------------------------------------------------------------------------
// Upstream calls (gateway -> service)

/// Around the gateway's upstream transport (in-process routes or a channel):
/// writes the current span's context as `traceparent` metadata on every call.
/// Outside any span (a task the gateway spawned) the forwarded header stays, and
/// [`HttpSpanLayer`] has already made it name the request's span.
#[derive(Clone, Copy, Default)]
pub struct PropagateLayer;

impl<S> Layer<S> for PropagateLayer {
    type Service = Propagate<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Propagate { inner }
    }
}

#[derive(Clone)]
pub struct Propagate<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for Propagate<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if enabled() {
            inject(&Context::current(), req.headers_mut());
        }
        self.inner.call(req)
    }
}

/// Shared so both startup paths build the same stack.
pub fn propagate_layer() -> Option<PropagateLayer> {
    enabled().then_some(PropagateLayer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Option<ExportConfig> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        ExportConfig::from_lookup(|k| vars.get(k).cloned())
    }

    #[test]
    fn export_needs_an_endpoint_and_can_be_turned_off() {
        assert_eq!(config(&[]), None);
        assert_eq!(config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "  ")]), None);
        let on = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")]).unwrap();
        assert_eq!(on.protocol, Protocol::Grpc);
        assert_eq!(on.endpoint, "http://127.0.0.1:4317");
        let traces_only = config(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/v1/traces")]).unwrap();
        assert_eq!(traces_only.endpoint, "http://c:4318/v1/traces");
        assert_eq!(config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), ("OTEL_TRACES_EXPORTER", "none")]), None);
        assert_eq!(config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), ("OTEL_SDK_DISABLED", "TRUE")]), None);
    }

    #[test]
    fn protocol_from_the_signal_variable_first() {
        let http = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
        ])
        .unwrap();
        assert_eq!(http.protocol, Protocol::HttpProtobuf);
        let json = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")])
            .unwrap();
        assert_eq!(json.protocol, Protocol::Grpc);
        assert_eq!(json.notes.len(), 1, "{:?}", json.notes);
    }

    #[test]
    fn ids_are_added_to_json_lines_only() {
        let line = "{\"level\":\"INFO\",\"message\":\"x\"}\n";
        assert_eq!(
            with_ids(line, "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"),
            "{\"level\":\"INFO\",\"message\":\"x\",\"trace_id\":\"0af7651916cd43dd8448eb211c80319c\",\"span_id\":\"b7ad6b7169203331\"}\n"
        );
        assert_eq!(with_ids("{}\n", "t", "s"), "{\"trace_id\":\"t\",\"span_id\":\"s\"}\n");
        assert_eq!(with_ids("not json\n", "t", "s"), "not json\n");
    }

    #[test]
    fn traceparent_round_trips_through_headers() {
        let mut headers = HeaderMap::new();
        headers
            .insert("traceparent", HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
        let cx = extract(&headers).expect("a valid parent");
        assert_eq!(cx.span().span_context().trace_id().to_string(), "0af7651916cd43dd8448eb211c80319c");
        let mut out = HeaderMap::new();
        inject(&cx, &mut out);
        assert_eq!(out["traceparent"], "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
        let mut bad = HeaderMap::new();
        bad.insert("traceparent", HeaderValue::from_static("00-abc-def-01"));
        assert!(extract(&bad).is_none());
        assert!(extract(&HeaderMap::new()).is_none());
    }

    #[test]
    fn an_instance_id_named_in_the_resource_attributes_wins() {
        assert_eq!(
            instance_id_from("deployment.environment.name=prod, service.instance.id=pod-7").as_deref(),
            Some("pod-7")
        );
        assert_eq!(instance_id_from("service.instance.id="), None);
        assert_eq!(instance_id_from(""), None);
        // The process's id: the one OTEL_RESOURCE_ATTRIBUTES names, else a fresh UUID.
        let id = service_instance_id();
        match instance_id_from(&std::env::var("OTEL_RESOURCE_ATTRIBUTES").unwrap_or_default()) {
            Some(named) => assert_eq!(id, named),
            None => assert!(uuid::Uuid::parse_str(id).is_ok(), "service.instance.id {id:?} is not a UUID"),
        }
    }

    #[test]
    fn every_tool_rpc_has_a_name() {
        let tools = tool_names();
        assert_eq!(tools.get("/taskmcp.v1.Changes/OpenChange").map(String::as_str), Some("change.open"));
        assert_eq!(tools.get("/taskmcp.v1.Changes/ArchiveChangeStream").map(String::as_str), Some("change.archive"));
        assert!(!tools.contains_key("/grpc.health.v1.Health/Check"));
    }
}
