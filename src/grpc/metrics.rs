//! The gRPC server's metrics, as one tower layer around the routes (over TCP,
//! and in-process for the gateway):
//!
//! * `rpc.server.call.duration` by method and final status code, when the
//!   call ends (server streams: when the stream ends);
//! * for RPCs that are tools (and their streaming forms), `tool.executions`,
//!   `tool.execution.duration` and `tool.active_executions` by tool name and
//!   transport, with the outcome and `error.type` read from the final status;
//! * for the service's server-streaming RPCs called by gRPC clients, the
//!   `streaming.*` instruments (stream type `grpc`) and the stream cap: a call
//!   over the process-wide cap on open streams is refused with UNAVAILABLE,
//!   and every stream is refused while draining.
//!
//! The transport comes from the `x-task-mcp-transport` metadata the gateway
//! sends (`mcp`, `http`); anything else is `grpc`. Streams the gateway opens
//! on the caller's behalf are not recorded here: the gateway records the
//! stream its client sees (SSE/NDJSON), so each client stream counts once.
//! The metadata only labels: any client can send it, so over TCP every server
//! stream takes a slot under the cap whatever it claims to be. (The in-process
//! gateway has no gate here; it took its slot when it admitted its client.)
//!
//! The layer sits outside authentication and rate limiting, so refused calls
//! count as tool executions with a `client_error` outcome, as the contract says.
//! Method and tool names come from the descriptor set at startup; the label
//! values are `&'static str` built once, so recording allocates nothing.
use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicI64, Ordering},
    },
    task::{Context, Poll},
    time::Instant,
};

use bytes::{Buf, Bytes};
use http::{HeaderMap, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use opentelemetry::{
    KeyValue,
    metrics::{BoundCounter, BoundHistogram},
};
use pin_project_lite::pin_project;
use task_mcp_gateway::{
    headers::GRPC_STATUS,
    mcp::session::{SessionStore, StreamSlot},
    metrics::{CloseReason, MessageType, StreamRecorder, StreamRejection, StreamType, TRANSPORT_HEADER, Transport},
};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tower::{Layer, Service};

use crate::{error::Error, telemetry::metrics::Metrics};

/// Methods outside the service's own descriptors that the server answers.
const EXTRA_METHODS: [&str; 4] = [
    "grpc.health.v1.Health/Check",
    "grpc.health.v1.Health/Watch",
    "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// The contract's `error.type` values that are service reasons.
const REASONS: [&str; 23] = [
    "INVALID_SLUG",
    "INVALID_ARGUMENT",
    "INVALID_PATH",
    "INVALID_URI",
    "INVALID_PAGE_TOKEN",
    "TOO_LARGE",
    "CHANGE_NOT_FOUND",
    "TASK_NOT_FOUND",
    "RESOURCE_NOT_FOUND",
    "LOCKED_BY_OTHER_OWNER",
    "CONCURRENT_EDIT",
    "VALIDATION_FAILED",
    "RECEIPT_UNAVAILABLE",
    "FILE_UNREADABLE",
    "RESOURCE_TOO_LARGE",
    "UNAUTHENTICATED",
    "INSUFFICIENT_SCOPE",
    "RATE_LIMITED",
    "SHUTTING_DOWN",
    "WORKSPACE_UNUSABLE",
    "WORKSPACE_FULL",
    "INTERNAL",
    "UNAVAILABLE",
];

/// What messages a server-streaming method sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamKind {
    /// A tool's streaming form: a oneof of progress and result; the first
    /// payload byte (the field's tag) tells which.
    ToolForm { result_tag: u8 },
    /// Every message is of one kind.
    Uniform(MessageType),
}

#[derive(Debug, Clone, Copy)]
struct MethodInfo {
    /// Its slot in tables kept per method (0: `_OTHER`).
    index: usize,
    /// `rpc.method`.
    label: &'static str,
    /// `tool.name` when the RPC is a tool or a tool's streaming form.
    tool: Option<&'static str>,
    /// For the service's own server-streaming RPCs.
    stream: Option<StreamKind>,
}

const OTHER: MethodInfo = MethodInfo { index: 0, label: "_OTHER", tool: None, stream: None };

/// `/package.Service/Method` → what to record for it. Built once.
#[derive(Debug, Clone)]
pub struct MethodTable {
    methods: HashMap<&'static str, MethodInfo>,
}

impl MethodTable {
    /// From the service's descriptors: every RPC, the tools of the registry
    /// the gateway also builds (so names agree), and the streaming kinds.
    pub fn from_descriptors() -> Result<Self, String> {
        let (pool, registry) =
            task_mcp_gateway::upstream::Registry::from_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)?;
        let full = |m: &prost_reflect::MethodDescriptor| format!("{}/{}", m.parent_service().full_name(), m.name());
        // Leaked once: a few dozen short strings for the process's lifetime,
        // so every label is a `&'static str`.
        let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
        let mut tools: HashMap<String, &'static str> = HashMap::new();
        for tool in registry.tools() {
            let name = leak(tool.name.clone());
            tools.insert(full(&tool.method), name);
            if let Some(stream) = &tool.stream_method {
                tools.insert(full(stream), name);
            }
        }
        let mut methods = HashMap::new();
        for service in pool.services().filter(|s| s.package_name() == "taskmcp.v1") {
            for method in service.methods() {
                let label = leak(full(&method));
                let stream = (method.is_server_streaming() && !method.is_client_streaming()).then(|| {
                    let output = method.output();
                    match (output.get_field_by_name("progress"), output.get_field_by_name("result")) {
                        (Some(_), Some(result)) => {
                            // Tag byte of a length-delimited field (wire type 2);
                            // field numbers below 16 fit one byte.
                            let tag = u8::try_from((result.number() << 3) | 2).unwrap_or(0);
                            StreamKind::ToolForm { result_tag: tag }
                        }
                        _ => match output.name() {
                            "ChangeEvent" => StreamKind::Uniform(MessageType::ChangeEvent),
                            "ResourceChunk" => StreamKind::Uniform(MessageType::ResourceChunk),
                            _ => StreamKind::Uniform(MessageType::Notification),
                        },
                    }
                });
                let index = methods.len() + 1;
                methods.insert(
                    leak(format!("/{label}")),
                    MethodInfo { index, label, tool: tools.get(label).copied(), stream },
                );
            }
        }
        for label in EXTRA_METHODS {
            let index = methods.len() + 1;
            methods.insert(leak(format!("/{label}")), MethodInfo { index, label, tool: None, stream: None });
        }
        Ok(MethodTable { methods })
    }

    fn get(&self, path: &str) -> MethodInfo {
        self.methods.get(path).copied().unwrap_or(OTHER)
    }

    /// Methods plus `_OTHER`: the length of a table indexed by `MethodInfo::index`.
    fn slots(&self) -> usize {
        self.methods.len() + 1
    }
}

/// The stream cap and the drain signal the layer refuses streams by.
#[derive(Clone)]
pub struct StreamGate {
    /// The gateway's session store holds the process-wide stream slots.
    pub sessions: Arc<SessionStore>,
    pub shutdown: CancellationToken,
    /// Whose share a stream takes: this layer runs before authentication (it must see every
    /// call's final status), so it reads the caller's principal from its token itself.
    pub tokens: Arc<crate::auth::Tokens>,
}

#[derive(Clone)]
pub struct GrpcMetricsLayer {
    shared: Arc<Shared>,
}

struct Shared {
    metrics: Arc<Metrics>,
    methods: MethodTable,
    gate: Option<StreamGate>,
    /// By `MethodInfo::index`.
    succeeded: Vec<SuccessInstruments>,
}

/// A method's instruments bound to the attributes of a success, made at its first success.
/// Most calls succeed; recording through a bound instrument skips the SDK's per-call lookup of
/// the attribute set, about half of what keeping metrics costs a call (BENCHMARKS.md).
#[derive(Default)]
struct SuccessInstruments {
    rpc_duration: OnceLock<BoundHistogram<f64>>,
    /// By transport: executions and duration.
    tool: [OnceLock<(BoundCounter<u64>, BoundHistogram<f64>)>; 3],
}

impl GrpcMetricsLayer {
    /// `gate`: where gRPC clients' streams take their slots (`None`: no cap).
    pub fn new(metrics: Arc<Metrics>, methods: MethodTable, gate: Option<StreamGate>) -> Self {
        let succeeded = (0..methods.slots()).map(|_| SuccessInstruments::default()).collect();
        GrpcMetricsLayer { shared: Arc::new(Shared { metrics, methods, gate, succeeded }) }
    }
}

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner, shared: Arc::clone(&self.shared) }
    }
}

#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for GrpcMetrics<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: HttpBody<Data = Bytes>,
{
    type Response = Response<MeteredBody<ResB>>;
    type Error = S::Error;
    type Future = GrpcMetricsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let info = self.shared.methods.get(req.uri().path());
        let transport = Transport::from_header(req.headers().get(TRANSPORT_HEADER));
        let mut call = CallRecord {
            shared: Arc::clone(&self.shared),
            info,
            transport,
            start: Instant::now(),
            slot: None,
            active: info.tool.map(|tool| self.shared.metrics.tool_active.cell((tool, transport))),
            done: false,
        };
        if let Some(active) = &call.active {
            active.fetch_add(1, Ordering::Relaxed);
        }
        // A server stream over TCP takes a slot, or is refused.
        if info.stream.is_some()
            && let Some(gate) = &self.shared.gate
        {
            match admit_stream(gate, req.headers()) {
                Ok(slot) => call.slot = Some(slot),
                Err(refusal) => {
                    self.shared.metrics.gateway.stream_rejected(Transport::Grpc, refusal);
                    let status = match refusal {
                        StreamRejection::ShuttingDown => Error::ShuttingDown.into_status(),
                        StreamRejection::Capacity => capacity_status(),
                    };
                    let response = status.into_http::<()>();
                    call.finish(
                        status_code(response.headers()).unwrap_or(Code::Unavailable as i32),
                        Some(response.headers()),
                    );
                    return GrpcMetricsFuture { state: FutureState::Refused { response: Some(response) } };
                }
            }
        }
        GrpcMetricsFuture { state: FutureState::Call { inner: self.inner.call(req), call: Some(call) } }
    }
}

fn admit_stream(gate: &StreamGate, headers: &HeaderMap) -> Result<StreamSlot, StreamRejection> {
    if gate.shutdown.is_cancelled() || gate.sessions.is_closing() {
        return Err(StreamRejection::ShuttingDown);
    }
    let sent = headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    // A caller the auth layer will refuse holds its slot only until that answer is sent.
    let principal = gate.tokens.authenticate(sent);
    gate.sessions.open_stream(principal.as_ref().map(|p| p.as_str())).ok_or(StreamRejection::Capacity)
}

/// UNAVAILABLE (retryable, with a hint) for a stream over the cap.
fn capacity_status() -> tonic::Status {
    use tonic_types::{ErrorDetails, StatusExt};
    let mut details = ErrorDetails::with_error_info(
        "UNAVAILABLE",
        crate::error::ERROR_DOMAIN,
        std::collections::HashMap::<String, String>::new(),
    );
    details.set_retry_info(Some(std::time::Duration::from_secs(5)));
    tonic::Status::with_error_details(Code::Unavailable, "too many open streams; retry later", details)
}

/// The `grpc-status` of a header map (trailers, or a trailers-only response).
fn status_code(headers: &HeaderMap) -> Option<i32> {
    let value = headers.get(GRPC_STATUS)?;
    Some(i32::from(Code::from_bytes(value.as_bytes())))
}

/// The contract's name of a gRPC status code.
fn code_name(code: i32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    usize::try_from(code).ok().and_then(|i| NAMES.get(i)).copied().unwrap_or("UNKNOWN")
}

/// Faults of ours (or of the call's circumstances) rather than of the request, by the code and
/// the call's `error.type`: a full workspace disk shares RESOURCE_EXHAUSTED with a client's rate
/// limit, but only an operator can free the space.
fn is_server_fault(code: i32, error_type: &str) -> bool {
    let by_code = matches!(
        Code::from(code),
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    );
    by_code || error_type == task_mcp_gateway::error::WORKSPACE_FULL
}

fn outcome(code: i32, error_type: &str) -> &'static str {
    if code == 0 {
        "success"
    } else if is_server_fault(code, error_type) {
        "server_error"
    } else {
        "client_error"
    }
}

/// `error.type`: `none` on success, the service's `ErrorInfo.reason` when it
/// is one of the contract's, else a value for the bare code.
fn error_type(code: i32, headers: Option<&HeaderMap>) -> &'static str {
    if code == 0 {
        return "none";
    }
    let reason = headers.and_then(tonic::Status::from_header_map).and_then(|status| {
        use tonic_types::StatusExt;
        status.get_details_error_info().map(|info| info.reason)
    });
    if let Some(known) = reason.and_then(|r| REASONS.iter().find(|k| **k == r)) {
        return known;
    }
    match Code::from(code) {
        Code::Cancelled => "CANCELLED",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::Unavailable => "UNAVAILABLE",
        Code::Unauthenticated => "UNAUTHENTICATED",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        // tonic's own refusal of an oversized message.
        Code::OutOfRange | Code::ResourceExhausted => "TOO_LARGE",
        _ => "INTERNAL",
    }
}

/// One call, from its request to its final status. Finished exactly once:
/// by the final status, or (dropped unfinished) as CANCELLED: the client
/// went away before the call ended.
struct CallRecord {
    shared: Arc<Shared>,
    info: MethodInfo,
    transport: Transport,
    start: Instant,
    /// The stream slot of a gRPC client's server stream, held until it ends.
    slot: Option<StreamSlot>,
    /// The in-flight count of the call's tool, if it is one.
    active: Option<Arc<AtomicI64>>,
    done: bool,
}

impl CallRecord {
    fn finish(&mut self, code: i32, headers: Option<&HeaderMap>) {
        if self.done {
            return;
        }
        self.done = true;
        self.slot = None;
        let m = &self.shared.metrics;
        let elapsed = self.start.elapsed().as_secs_f64();
        if let Some(active) = &self.active {
            active.fetch_sub(1, Ordering::Relaxed);
        }
        let transport = self.transport.as_str();
        let rpc_attributes = |code| {
            [
                KeyValue::new("rpc.system.name", "grpc"),
                KeyValue::new("rpc.method", self.info.label),
                KeyValue::new("rpc.response.status_code", code_name(code)),
            ]
        };
        let execution_attributes = |tool, code, error_type| {
            [
                KeyValue::new("tool.name", tool),
                KeyValue::new("transport", transport),
                KeyValue::new("outcome", outcome(code, error_type)),
                KeyValue::new("error.type", error_type),
            ]
        };
        let duration_attributes = |tool, code, error_type| {
            [
                KeyValue::new("tool.name", tool),
                KeyValue::new("transport", transport),
                KeyValue::new("outcome", outcome(code, error_type)),
            ]
        };
        let bound = self.shared.succeeded.get(self.info.index);
        if let (0, Some(bound)) = (code, bound) {
            bound.rpc_duration.get_or_init(|| m.rpc_duration.bind(&rpc_attributes(0))).record(elapsed);
            if let Some(tool) = self.info.tool
                && let Some(slot) = bound.tool.get(self.transport as usize)
            {
                let (executions, duration) = slot.get_or_init(|| {
                    (
                        m.tool_executions.bind(&execution_attributes(tool, 0, "none")),
                        m.tool_duration.bind(&duration_attributes(tool, 0, "none")),
                    )
                });
                executions.add(1);
                duration.record(elapsed);
            }
            return;
        }
        m.rpc_duration.record(elapsed, &rpc_attributes(code));
        if let Some(tool) = self.info.tool {
            let error_type = error_type(code, headers);
            m.tool_executions.add(1, &execution_attributes(tool, code, error_type));
            m.tool_duration.record(elapsed, &duration_attributes(tool, code, error_type));
        }
    }

    /// How a stream that ended with `code` (and `error_type`) closed.
    fn close_reason(&self, code: i32, error_type: &str) -> CloseReason {
        let draining = self.shared.gate.as_ref().is_some_and(|g| g.shutdown.is_cancelled());
        match Code::from(code) {
            Code::Ok if draining => CloseReason::Shutdown,
            Code::Cancelled => CloseReason::ClientClosed,
            _ if is_server_fault(code, error_type) => {
                if draining {
                    CloseReason::Shutdown
                } else {
                    CloseReason::ServerError
                }
            }
            // Finished, with its answer or with the request's own error.
            _ => CloseReason::Completed,
        }
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        self.finish(Code::Cancelled as i32, None);
    }
}

pin_project! {
    pub struct GrpcMetricsFuture<F> {
        #[pin]
        state: FutureState<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum FutureState<F> {
        Call { #[pin] inner: F, call: Option<CallRecord> },
        Refused { response: Option<Response<()>> },
    }
}

impl<F, ResB, E> std::future::Future for GrpcMetricsFuture<F>
where
    F: std::future::Future<Output = Result<Response<ResB>, E>>,
    ResB: HttpBody<Data = Bytes>,
{
    type Output = Result<Response<MeteredBody<ResB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Refused { response } => {
                let response = response.take().unwrap_or_default();
                Poll::Ready(Ok(response.map(|()| MeteredBody::empty())))
            }
            StateProj::Call { inner, call } => {
                let out = std::task::ready!(inner.poll(cx));
                let Some(mut call) = call.take() else {
                    return Poll::Ready(out.map(|res| res.map(MeteredBody::plain)));
                };
                Poll::Ready(match out {
                    Ok(res) => {
                        // Trailers-only: the call failed before any message.
                        if let Some(code) = status_code(res.headers()) {
                            call.finish(code, Some(res.headers()));
                            return Poll::Ready(Ok(res.map(MeteredBody::plain)));
                        }
                        let stream = match (call.info.stream, call.slot.is_some()) {
                            (Some(kind), true) if call.transport == Transport::Grpc => Some(StreamState {
                                recorder: call.shared.metrics.gateway.open_stream(
                                    Transport::Grpc,
                                    StreamType::Grpc,
                                    call.start,
                                ),
                                kind,
                                framing: Framing::default(),
                            }),
                            _ => None,
                        };
                        Ok(res.map(|inner| MeteredBody { inner: Some(inner), call: Some(call), stream }))
                    }
                    Err(e) => {
                        call.finish(Code::Unknown as i32, None);
                        Err(e)
                    }
                })
            }
        }
    }
}

/// Where the reader is in the gRPC length-prefixed framing
/// (1 byte compressed flag, 4 bytes big-endian length, the message).
#[derive(Debug, Default)]
struct Framing {
    header: [u8; 5],
    header_len: usize,
    /// Message bytes still to come; `Some` while inside a message.
    remaining: Option<u32>,
    /// The message just started and its first byte decides its kind.
    needs_tag: bool,
}

struct StreamState {
    recorder: StreamRecorder,
    kind: StreamKind,
    framing: Framing,
}

impl StreamState {
    /// Counts the messages that start in `data`, and its bytes.
    fn data(&mut self, data: &Bytes) {
        let mut buf: &[u8] = data.chunk();
        let f = &mut self.framing;
        while !buf.is_empty() {
            match f.remaining {
                None => {
                    let take = (5 - f.header_len).min(buf.len());
                    f.header[f.header_len..f.header_len + take].copy_from_slice(&buf[..take]);
                    f.header_len += take;
                    buf = &buf[take..];
                    if f.header_len == 5 {
                        f.header_len = 0;
                        let len = u32::from_be_bytes([f.header[1], f.header[2], f.header[3], f.header[4]]);
                        match self.kind {
                            StreamKind::Uniform(kind) => self.recorder.sent(kind, 1, 0),
                            // An empty message has no tag: it can only be the default (progress).
                            StreamKind::ToolForm { .. } if len == 0 => self.recorder.sent(MessageType::Progress, 1, 0),
                            StreamKind::ToolForm { .. } => f.needs_tag = true,
                        }
                        f.remaining = (len > 0).then_some(len);
                    }
                }
                Some(left) => {
                    if f.needs_tag {
                        f.needs_tag = false;
                        let kind = match self.kind {
                            StreamKind::ToolForm { result_tag } if buf[0] == result_tag => MessageType::Result,
                            _ => MessageType::Progress,
                        };
                        self.recorder.sent(kind, 1, 0);
                    }
                    let take = (left as usize).min(buf.len());
                    buf = &buf[take..];
                    let left = left - take as u32;
                    f.remaining = (left > 0).then_some(left);
                }
            }
        }
        self.recorder.add_bytes(data.len());
    }
}

pin_project! {
    /// The response body: finishes the call at its final status (trailers),
    /// and counts a stream's messages as they leave.
    pub struct MeteredBody<B> {
        // `None`: the empty body of a refusal answered here (trailers-only).
        #[pin]
        inner: Option<B>,
        call: Option<CallRecord>,
        stream: Option<StreamState>,
    }
}

impl<B> MeteredBody<B> {
    fn plain(inner: B) -> Self {
        MeteredBody { inner: Some(inner), call: None, stream: None }
    }

    fn empty() -> Self {
        MeteredBody { inner: None, call: None, stream: None }
    }
}

/// The empty body, for a request refused before this layer saw it.
impl<B> Default for MeteredBody<B> {
    fn default() -> Self {
        MeteredBody::empty()
    }
}

impl<B: HttpBody<Data = Bytes>> HttpBody for MeteredBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(None);
        };
        let frame = std::task::ready!(inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    if let Some(stream) = this.stream.as_mut() {
                        stream.data(data);
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    let code = status_code(trailers).unwrap_or(Code::Unknown as i32);
                    end(this.call, this.stream, code, Some(trailers));
                }
            }
            // Ended without trailers (not gRPC-conformant), or failed.
            None => end(this.call, this.stream, Code::Unknown as i32, None),
            Some(Err(_)) => end(this.call, this.stream, Code::Internal as i32, None),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

/// The call's final status is known: record it, and close the stream.
fn end(call: &mut Option<CallRecord>, stream: &mut Option<StreamState>, code: i32, headers: Option<&HeaderMap>) {
    if let Some(mut call) = call.take() {
        if let Some(mut stream) = stream.take() {
            stream.recorder.close(call.close_reason(code, error_type(code, headers)));
        }
        call.finish(code, headers);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::metrics::{HealthFlags, testing::TestMeter};
    use http_body_util::BodyExt;
    use std::convert::Infallible;
    use tower::ServiceExt;

    fn metrics(t: &TestMeter) -> Arc<Metrics> {
        Arc::new(Metrics::new(&t.meter(), 1, Some(Arc::new(HealthFlags::default())), &[]))
    }

    fn frame(payload: &[u8]) -> Bytes {
        let mut v = vec![0u8];
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        v.extend_from_slice(payload);
        Bytes::from(v)
    }

    fn trailers(code: Code) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("grpc-status", http::HeaderValue::from(code as i32));
        h
    }

    type Frames = futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>;
    type TestBody = http_body_util::StreamBody<Frames>;

    /// A fake route answering with these data frames and trailers.
    fn route(
        chunks: Vec<Bytes>,
        end: HeaderMap,
    ) -> impl Service<Request<()>, Response = Response<TestBody>, Error = Infallible, Future: Send> + Clone {
        tower::service_fn(move |_req: Request<()>| {
            let mut frames: Vec<Result<Frame<Bytes>, Infallible>> =
                chunks.iter().cloned().map(|c| Ok(Frame::data(c))).collect();
            frames.push(Ok(Frame::trailers(end.clone())));
            let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
            async move { Ok::<_, Infallible>(Response::new(body)) }
        })
    }

    fn request(path: &str, transport: Option<&'static str>) -> Request<()> {
        let mut b = Request::builder().uri(path);
        if let Some(t) = transport {
            b = b.header(TRANSPORT_HEADER, t);
        }
        b.body(()).unwrap()
    }

    fn layer(m: Arc<Metrics>, gate: Option<StreamGate>) -> GrpcMetricsLayer {
        GrpcMetricsLayer::new(m, MethodTable::from_descriptors().unwrap(), gate)
    }

    #[test]
    fn the_table_knows_tools_streams_and_nothing_else() {
        let t = MethodTable::from_descriptors().unwrap();
        let open = t.get("/taskmcp.v1.Changes/OpenChange");
        assert_eq!((open.label, open.tool, open.stream), ("taskmcp.v1.Changes/OpenChange", Some("change.open"), None));
        let stream = t.get("/taskmcp.v1.Changes/ArchiveChangeStream");
        assert_eq!(stream.tool, Some("change.archive"));
        assert_eq!(stream.stream, Some(StreamKind::ToolForm { result_tag: (2 << 3) | 2 }));
        let watch = t.get("/taskmcp.v1.Resources/WatchChanges");
        assert_eq!((watch.tool, watch.stream), (None, Some(StreamKind::Uniform(MessageType::ChangeEvent))));
        assert_eq!(t.get("/grpc.health.v1.Health/Check").label, "grpc.health.v1.Health/Check");
        assert_eq!(t.get("/evil/Scan").label, "_OTHER");
        let tools: std::collections::BTreeSet<_> = t.methods.values().filter_map(|m| m.tool).collect();
        assert_eq!(
            tools.into_iter().collect::<Vec<_>>(),
            ["change.archive", "change.list", "change.open", "change.show", "change.validate", "task.update"]
        );
    }

    #[tokio::test]
    async fn unary_tool_calls_count_once_by_transport_and_outcome() {
        let t = TestMeter::new();
        let svc = layer(metrics(&t), None).layer(route(vec![frame(b"\x0a\x01x")], trailers(Code::Ok)));
        for transport in [None, Some("mcp"), Some("mcp"), Some("bogus")] {
            let res = svc.clone().oneshot(request("/taskmcp.v1.Changes/OpenChange", transport)).await.unwrap();
            res.into_body().collect().await.unwrap();
        }
        let ok = ["tool.name=change.open", "transport=grpc", "outcome=success", "error.type=none"];
        assert_eq!(t.value("tool.executions", &ok), Some(2.0));
        let mcp = ["tool.name=change.open", "transport=mcp", "outcome=success", "error.type=none"];
        assert_eq!(t.value("tool.executions", &mcp), Some(2.0));
        assert_eq!(t.value("tool.active_executions", &["tool.name=change.open", "transport=mcp"]), Some(0.0));
        assert_eq!(
            t.value("tool.execution.duration", &["tool.name=change.open", "transport=grpc", "outcome=success"]),
            Some(2.0)
        );
        let rpc = ["rpc.system.name=grpc", "rpc.method=taskmcp.v1.Changes/OpenChange", "rpc.response.status_code=OK"];
        assert_eq!(t.value("rpc.server.call.duration", &rpc), Some(4.0));
    }

    #[tokio::test]
    async fn errors_carry_the_reason_and_non_tools_are_not_tools() {
        let t = TestMeter::new();
        let failing = tower::service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(
                Error::LockedByOtherOwner {
                    slug: "a".into(),
                    holder: "b".into(),
                    principal: None,
                    expires_at: time::OffsetDateTime::UNIX_EPOCH,
                }
                .into_status()
                .into_http::<http_body_util::Empty<Bytes>>(),
            )
        });
        let svc = layer(metrics(&t), None).layer(failing);
        svc.clone().oneshot(request("/taskmcp.v1.Changes/UpdateTasks", None)).await.unwrap();
        svc.clone().oneshot(request("/taskmcp.v1.Resources/ListResources", None)).await.unwrap();
        svc.oneshot(request("/no.Such/Thing", None)).await.unwrap();
        let locked =
            ["tool.name=task.update", "transport=grpc", "outcome=client_error", "error.type=LOCKED_BY_OTHER_OWNER"];
        assert_eq!(t.value("tool.executions", &locked), Some(1.0));
        let list = [
            "rpc.system.name=grpc",
            "rpc.method=taskmcp.v1.Resources/ListResources",
            "rpc.response.status_code=ABORTED",
        ];
        assert_eq!(t.value("rpc.server.call.duration", &list), Some(1.0));
        let other = ["rpc.system.name=grpc", "rpc.method=_OTHER", "rpc.response.status_code=ABORTED"];
        assert_eq!(t.value("rpc.server.call.duration", &other), Some(1.0));
        let tool_points = t.points().into_iter().filter(|(n, _, _)| n == "tool.executions").count();
        assert_eq!(tool_points, 1);
    }

    #[tokio::test]
    async fn a_dropped_call_is_cancelled() {
        let t = TestMeter::new();
        let svc = layer(metrics(&t), None).layer(route(vec![frame(b"x")], trailers(Code::Ok)));
        let res = svc.oneshot(request("/taskmcp.v1.Changes/ShowChange", Some("http"))).await.unwrap();
        drop(res);
        let cancelled = ["tool.name=change.show", "transport=http", "outcome=client_error", "error.type=CANCELLED"];
        assert_eq!(t.value("tool.executions", &cancelled), Some(1.0));
        assert_eq!(t.value("tool.active_executions", &["tool.name=change.show", "transport=http"]), Some(0.0));
    }

    fn gate(max: usize) -> StreamGate {
        let config = task_mcp_gateway::GatewayConfig { max_streams: max, ..Default::default() };
        StreamGate {
            sessions: Arc::new(SessionStore::new(&config)),
            shutdown: CancellationToken::new(),
            tokens: Arc::new(crate::auth::Tokens::default()),
        }
    }

    #[tokio::test]
    async fn grpc_client_streams_are_counted_by_message_kind() {
        let t = TestMeter::new();
        let g = gate(4);
        // progress (tag 0x0a), then result (tag 0x12) split across chunks.
        let progress = frame(b"\x0a\x00");
        let result = frame(b"\x12\x02ok");
        let (a, b) = result.split_at(3);
        let chunks = vec![progress.clone(), Bytes::copy_from_slice(a), Bytes::copy_from_slice(b)];
        let svc = layer(metrics(&t), Some(g.clone())).layer(route(chunks, trailers(Code::Ok)));
        let res = svc.clone().oneshot(request("/taskmcp.v1.Changes/ArchiveChangeStream", None)).await.unwrap();
        assert_eq!(g.sessions.stream_count(), 1);
        res.into_body().collect().await.unwrap();
        assert_eq!(g.sessions.stream_count(), 0);
        let base = ["transport=grpc", "stream.type=grpc"];
        let kind = |k: &str| ["transport=grpc".to_string(), "stream.type=grpc".into(), format!("message.type={k}")];
        let v = |k: &str| {
            let labels = kind(k);
            t.value("streaming.messages", &labels.iter().map(String::as_str).collect::<Vec<_>>())
        };
        assert_eq!((v("progress"), v("result")), (Some(1.0), Some(1.0)));
        assert_eq!(t.value("streaming.bytes_transferred", &base), Some((progress.len() + result.len()) as f64));
        assert_eq!(t.value("streaming.active_connections", &base), Some(0.0));
        assert_eq!(t.value("streaming.first_message.duration", &base), Some(1.0));
        let done = ["transport=grpc", "stream.type=grpc", "close.reason=completed"];
        assert_eq!(t.value("streaming.connection.duration", &done), Some(1.0));
        // The same stream on behalf of the gateway is the gateway's to record, but it holds a
        // slot all the same: the metadata is the caller's word, not a pass.
        let res = svc.oneshot(request("/taskmcp.v1.Changes/ArchiveChangeStream", Some("http"))).await.unwrap();
        assert_eq!(g.sessions.stream_count(), 1);
        res.into_body().collect().await.unwrap();
        assert_eq!(g.sessions.stream_count(), 0);
        assert_eq!(t.value("streaming.connection.duration", &done), Some(1.0));
        let tool = ["tool.name=change.archive", "transport=http", "outcome=success", "error.type=none"];
        assert_eq!(t.value("tool.executions", &tool), Some(1.0));
    }

    #[tokio::test]
    async fn streams_over_the_cap_or_while_draining_are_refused() {
        let t = TestMeter::new();
        let g = gate(1);
        let svc = layer(metrics(&t), Some(g.clone())).layer(route(vec![frame(b"x")], trailers(Code::Ok)));
        let held = svc.clone().oneshot(request("/taskmcp.v1.Resources/WatchChanges", None)).await.unwrap();
        let refused = svc.clone().oneshot(request("/taskmcp.v1.Resources/WatchChanges", None)).await.unwrap();
        assert_eq!(status_code(refused.headers()), Some(Code::Unavailable as i32));
        assert_eq!(t.value("streaming.rejections", &["transport=grpc", "reason=capacity"]), Some(1.0));
        // Claiming to be the gateway opens no way around the cap.
        let claimed = svc.clone().oneshot(request("/taskmcp.v1.Resources/WatchChanges", Some("mcp"))).await.unwrap();
        assert_eq!(status_code(claimed.headers()), Some(Code::Unavailable as i32));
        assert_eq!(t.value("streaming.rejections", &["transport=grpc", "reason=capacity"]), Some(2.0));
        drop(held);
        g.shutdown.cancel();
        let refused = svc.oneshot(request("/taskmcp.v1.Resources/ReadResource", None)).await.unwrap();
        assert_eq!(status_code(refused.headers()), Some(Code::Unavailable as i32));
        assert_eq!(t.value("streaming.rejections", &["transport=grpc", "reason=shutting_down"]), Some(1.0));
        let gone = ["transport=grpc", "stream.type=grpc", "close.reason=client_closed"];
        assert_eq!(t.value("streaming.connection.duration", &gone), Some(1.0));
        let rpc = [
            "rpc.system.name=grpc",
            "rpc.method=taskmcp.v1.Resources/WatchChanges",
            "rpc.response.status_code=UNAVAILABLE",
        ];
        assert_eq!(t.value("rpc.server.call.duration", &rpc), Some(2.0));
    }

    #[test]
    fn outcomes_and_error_types() {
        assert_eq!(outcome(0, "none"), "success");
        assert_eq!(outcome(Code::InvalidArgument as i32, "INVALID_SLUG"), "client_error");
        assert_eq!(outcome(Code::Unavailable as i32, "UNAVAILABLE"), "server_error");
        assert_eq!(outcome(Code::DeadlineExceeded as i32, "DEADLINE_EXCEEDED"), "server_error");
        // One code, two parties: the client's rate limit, the operator's full disk.
        assert_eq!(outcome(Code::ResourceExhausted as i32, "RATE_LIMITED"), "client_error");
        let mut full = HeaderMap::new();
        let why = "write tasks: no storage space".to_string();
        Error::WorkspaceFull { path: "x/tasks.md".into(), why }.into_status().add_header(&mut full).unwrap();
        let full_type = error_type(Code::ResourceExhausted as i32, Some(&full));
        assert_eq!(full_type, "WORKSPACE_FULL");
        assert_eq!(outcome(Code::ResourceExhausted as i32, full_type), "server_error");
        // A read-only OAuth token calling a tool that writes: the caller's to fix.
        let mut scope = HeaderMap::new();
        Error::InsufficientScope { required: "a b".into() }.into_status().add_header(&mut scope).unwrap();
        let scope_type = error_type(Code::PermissionDenied as i32, Some(&scope));
        assert_eq!(scope_type, "INSUFFICIENT_SCOPE");
        assert_eq!(outcome(Code::PermissionDenied as i32, scope_type), "client_error");
        assert_eq!(error_type(Code::DeadlineExceeded as i32, None), "DEADLINE_EXCEEDED");
        assert_eq!(error_type(Code::Internal as i32, None), "INTERNAL");
        let mut h = HeaderMap::new();
        Error::ShuttingDown.into_status().add_header(&mut h).unwrap();
        assert_eq!(error_type(Code::Unavailable as i32, Some(&h)), "SHUTTING_DOWN");
        assert_eq!(code_name(16), "UNAUTHENTICATED");
        assert_eq!(code_name(99), "UNKNOWN");
    }
}
