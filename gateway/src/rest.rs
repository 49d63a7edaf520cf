//! Plain HTTP/JSON in the style of grpc-gateway:
//!
//! - `GET /v1/tools`: the tool registry (`{"tools": [...]}`, MCP field names);
//! - `POST /v1/tools/{name}`: JSON arguments in, the result JSON out. With
//!   `Accept: application/x-ndjson` the progress events and the result come as
//!   NDJSON lines (`{"progress":…}`, then `{"result":…}` or `{"error":…}`),
//!   with `Accept: text/event-stream` as SSE events (`progress`, `result`,
//!   `error`; `data` holds the inner object);
//! - `GET /v1/resources`, `GET /v1/resources/read?uri=…`.
//!
//! Errors are `{code, reason, message, details}` with the gRPC → HTTP status
//! table of `error.rs`. `Authorization`, `x-request-id`, `traceparent` and a
//! deadline (`grpc-timeout`, or `x-request-timeout-ms`) travel to the gRPC call.
use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{
        Path, Query, State,
        rejection::{PathRejection, QueryRejection},
    },
    response::{IntoResponse, Response},
    routing::{any, get, post},
};
use base64::Engine as _;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{
    AppState,
    metrics::{CloseReason, MessageType, StreamRejection, StreamType, Transport},
    security::BodyFault,
    upstream::{CallContext, CallError, EventStream, ResourceContent, ToolDef, ToolEvent},
};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/tools", get(list_tools).fallback(|| method_not_allowed("GET, HEAD")))
        .route("/v1/tools/{name}", post(call_tool).fallback(|| method_not_allowed("POST")))
        .route("/v1/resources", get(list_resources).fallback(|| method_not_allowed("GET, HEAD")))
        .route("/v1/resources/read", get(read_resource).fallback(|| method_not_allowed("GET, HEAD")))
        // Unknown `/v1` paths get a REST error body rather than an empty 404.
        .route("/v1/{*rest}", any(unknown_path))
}

// ---------------------------------------------------------------------------
// Errors

/// The REST error body, shared with the security layers.
pub fn error_body(code: &str, reason: &str, message: &str, details: Value) -> Value {
    json!({ "code": code, "reason": reason, "message": message, "details": details })
}

/// A REST error response.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: Value,
    pub retry_after: Option<Duration>,
    /// `WWW-Authenticate`, passed on from the service.
    pub challenge: Option<HeaderValue>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, reason: &str, message: impl AsRef<str>) -> Self {
        let body = error_body(code, reason, message.as_ref(), json!({}));
        ApiError { status, body, retry_after: None, challenge: None }
    }

    fn invalid(reason: &str, message: impl AsRef<str>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", reason, message)
    }

    /// The upstream stream ended without a result: the service broke its
    /// contract, which the gRPC table calls INTERNAL.
    fn missing_result() -> Self {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "MISSING_RESULT",
            "the service ended the call without a result",
        )
    }
}

impl From<CallError> for ApiError {
    fn from(err: CallError) -> Self {
        match err {
            CallError::InvalidArguments(why) => ApiError::invalid("INVALID_ARGUMENTS", why),
            CallError::Upstream(e) => ApiError {
                status: e.http_status(),
                body: e.rest_body(),
                retry_after: e.retry_after,
                challenge: e.challenge,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = json_response(self.status, &self.body);
        // A 503 says when to come back even when the service could not (it was not reached).
        let retry_after =
            self.retry_after.or((self.status == StatusCode::SERVICE_UNAVAILABLE).then_some(Duration::from_secs(1)));
        if let Some(after) = retry_after {
            let secs = crate::security::retry_after_secs(after);
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(challenge) = self.challenge {
            res.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
        }
        res
    }
}

fn json_response<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response {
    let mut buf = Vec::with_capacity(256);
    write_json(&mut buf, value);
    json_body_response(status, buf)
}

/// `body`, JSON text already, as the response.
fn json_body_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut res = Response::new(Body::from(body));
    *res.status_mut() = status;
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

/// Appends `value` as compact JSON. Serializing our bodies cannot fail (string
/// keys, plain data); should it ever, `null` keeps the output well-formed.
fn write_json<T: Serialize + ?Sized>(buf: &mut Vec<u8>, value: &T) {
    let start = buf.len();
    if serde_json::to_writer(&mut *buf, value).is_err() {
        buf.truncate(start);
        buf.extend_from_slice(b"null");
    }
}

// ---------------------------------------------------------------------------
// Negotiation and request headers

/// How a tool result goes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    Json,
    Ndjson,
    Sse,
}

impl Wire {
    /// In server preference order: a client that accepts several equally gets
    /// plain JSON (one answer, no framing).
    const ALL: [(Wire, &'static str); 3] =
        [(Wire::Json, "application/json"), (Wire::Ndjson, "application/x-ndjson"), (Wire::Sse, "text/event-stream")];
}

/// Picks the answer format from `Accept` (RFC 9110 §12.5.1): per format, the
/// most specific matching range gives its quality; the highest quality wins,
/// ties go to the server's preference. No header, or an empty one, means
/// JSON; `None` when nothing we produce is acceptable (406).
pub fn negotiate(accept: Option<&str>) -> Option<Wire> {
    let accept = match accept.map(str::trim) {
        None | Some("") => return Some(Wire::Json),
        Some(a) => a,
    };
    let mut best: Option<(Wire, u16)> = None;
    for (wire, media) in Wire::ALL {
        if let Some(q) = crate::accept::quality(accept.split(','), media)
            && q > 0
            && best.is_none_or(|(_, bq)| q > bq)
        {
            best = Some((wire, q));
        }
    }
    best.map(|(wire, _)| wire)
}

/// gRPC's `grpc-timeout`: 1 to 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (&unit, digits) = value.as_bytes().split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // ≤ 8 ASCII digits: valid UTF-8 and fits a u64.
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The call's deadline: `grpc-timeout` (as grpc-gateway reads it) and/or
/// `x-request-timeout-ms`; with both, the shorter. A malformed value is a 400
/// rather than silently no deadline.
pub fn request_timeout(headers: &HeaderMap) -> Result<Option<Duration>, ApiError> {
    let grpc = match headers.get("grpc-timeout") {
        None => None,
        Some(v) => Some(v.to_str().ok().and_then(parse_grpc_timeout).ok_or_else(|| {
            ApiError::invalid("INVALID_TIMEOUT", "grpc-timeout must be 1-8 digits and a unit (H M S m u n)")
        })?),
    };
    let millis = match headers.get("x-request-timeout-ms") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .map(Duration::from_millis)
                .ok_or_else(|| ApiError::invalid("INVALID_TIMEOUT", "x-request-timeout-ms must be a whole number"))?,
        ),
    };
    Ok(match (grpc, millis) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}

/// The per-call facts forwarded to the service as gRPC metadata.
pub fn call_context(headers: &HeaderMap) -> Result<CallContext, ApiError> {
    // Only visible-ASCII values can become gRPC ASCII metadata; others are dropped.
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    Ok(CallContext {
        authorization: text(header::AUTHORIZATION),
        request_id: text(crate::headers::X_REQUEST_ID),
        traceparent: text(crate::headers::TRACEPARENT),
        timeout: request_timeout(headers)?,
        transport: Some(crate::metrics::Transport::Http),
        forwarded_for: text(crate::proxies::X_FORWARDED_FOR),
    })
}

fn is_json_media_type(content_type: &str) -> bool {
    let media = content_type.split(';').next().unwrap_or_default().trim();
    let Some((ty, sub)) = media.split_once('/') else { return false };
    ty.eq_ignore_ascii_case("application")
        && (sub.eq_ignore_ascii_case("json") || sub.len() > 5 && sub[sub.len() - 5..].eq_ignore_ascii_case("+json"))
}

/// The tool arguments from the body: empty means `{}` (no Content-Type
/// needed then); anything else must be `application/json` holding an object.
pub fn parse_args(content_type: Option<&HeaderValue>, body: &[u8]) -> Result<Value, ApiError> {
    let json_type = content_type.map(|ct| ct.to_str().is_ok_and(is_json_media_type));
    let empty = body.iter().all(u8::is_ascii_whitespace);
    match json_type {
        Some(false) => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "INVALID_ARGUMENT",
                "UNSUPPORTED_MEDIA_TYPE",
                "Content-Type must be application/json",
            ));
        }
        None if !empty => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "INVALID_ARGUMENT",
                "UNSUPPORTED_MEDIA_TYPE",
                "a request body needs Content-Type: application/json",
            ));
        }
        _ => {}
    }
    if empty {
        return Ok(Value::Object(serde_json::Map::new()));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(args @ Value::Object(_)) => Ok(args),
        Ok(_) => Err(ApiError::invalid("INVALID_ARGUMENTS", "the tool arguments must be a JSON object")),
        Err(e) => Err(ApiError::invalid("MALFORMED_JSON", format!("malformed JSON: {e}"))),
    }
}

/// Reads the body. The security layer caps it (413 with our body); the
/// limit here is a second line for routers built without that layer.
async fn read_body(body: Body, max: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, max).await.map_err(|err| match BodyFault::of(&err) {
        BodyFault::TooLarge => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RESOURCE_EXHAUSTED",
            "BODY_TOO_LARGE",
            format!("request body exceeds {max} bytes"),
        ),
        BodyFault::TimedOut => {
            ApiError::new(StatusCode::REQUEST_TIMEOUT, "DEADLINE_EXCEEDED", "BODY_TIMED_OUT", err.to_string())
        }
        BodyFault::Broken => ApiError::invalid("BODY_READ_FAILED", format!("could not read the request body: {err}")),
    })
}

// ---------------------------------------------------------------------------
// Tools

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolJson<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<&'a str>,
    description: &'a str,
    input_schema: &'a Value,
    output_schema: &'a Value,
    annotations: Annotations,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Annotations {
    read_only_hint: bool,
    destructive_hint: bool,
    idempotent_hint: bool,
}

impl<'a> From<&'a ToolDef> for ToolJson<'a> {
    fn from(t: &'a ToolDef) -> Self {
        ToolJson {
            name: &t.name,
            title: t.title.as_deref(),
            description: &t.description,
            input_schema: &t.input_schema,
            output_schema: &t.output_schema,
            annotations: Annotations {
                read_only_hint: t.read_only,
                destructive_hint: t.destructive,
                idempotent_hint: t.idempotent,
            },
        }
    }
}

#[derive(Serialize)]
struct ToolList<'a> {
    tools: Vec<ToolJson<'a>>,
}

async fn list_tools(State(state): State<Arc<AppState>>) -> Response {
    let tools = state.upstream.registry().tools().iter().map(ToolJson::from).collect();
    json_response(StatusCode::OK, &ToolList { tools })
}

async fn call_tool(
    State(state): State<Arc<AppState>>,
    principal: Option<axum::Extension<crate::security::Principal>>,
    read_only: Option<axum::Extension<crate::security::ReadOnly>>,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let principal = principal.map(|p| p.0.0);
    let read_only = read_only.map(|r| r.0);
    match call_tool_inner(&state, principal.as_deref(), read_only, name, &headers, body).await {
        Ok(res) => res,
        Err(e) => e.into_response(),
    }
}

async fn call_tool_inner(
    state: &Arc<AppState>,
    principal: Option<&str>,
    read_only: Option<crate::security::ReadOnly>,
    name: Result<Path<String>, PathRejection>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Path(name) = name.map_err(|e| ApiError::invalid("INVALID_PATH", e.body_text()))?;
    // Cheap refusals first, before the body is read.
    let tool = state.upstream.registry().get(&name).ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "UNKNOWN_TOOL", format!("no tool named {name:?}"))
    })?;
    if let Some(refused) = crate::security::refuse_write(state, read_only, tool, principal, false) {
        return Ok(refused);
    }
    let accept = headers.get(header::ACCEPT).map(|v| v.to_str().unwrap_or_default());
    let wire = negotiate(accept).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "INVALID_ARGUMENT",
            "NOT_ACCEPTABLE",
            "Accept must allow application/json, application/x-ndjson or text/event-stream",
        )
    })?;
    let content_type = headers.get(header::CONTENT_TYPE);
    if content_type.is_some() {
        // Refuse a wrong type before reading (the body check repeats it).
        parse_args(content_type, b"")?;
    }
    let ctx = call_context(headers)?;
    let body = read_body(body, state.config.max_body_bytes).await?;
    let args = parse_args(content_type, &body)?;
    match wire {
        Wire::Json => {
            let result = state.upstream.call_tool(tool, &args, ctx).await?;
            Ok(json_body_response(StatusCode::OK, result.into_bytes()))
        }
        Wire::Ndjson | Wire::Sse => stream_reply(state, principal, tool, args, ctx, wire).await,
    }
}

/// Streams progress and the result. The first event is awaited before the
/// headers go out, so a call that fails at once gets its proper HTTP status;
/// later failures become an `error` event (the status is sent by then).
async fn stream_reply(
    state: &Arc<AppState>,
    principal: Option<&str>,
    tool: &ToolDef,
    args: Value,
    ctx: CallContext,
    wire: Wire,
) -> Result<Response, ApiError> {
    let requested = std::time::Instant::now();
    // A streamed answer takes one of the process-wide stream slots, like an
    // MCP SSE stream: refused (503) at capacity or while draining.
    let Some(slot) = state.sessions.open_stream(principal) else {
        return Err(stream_refused(state));
    };
    // A tool without a streaming form yields its result alone (`upstream`).
    let mut events: EventStream<ToolEvent> = state.upstream.call_tool_streaming(tool, &args, ctx);
    let first = match events.next().await {
        Some(Ok(event)) => event,
        Some(Err(e)) => return Err(e.into()),
        None => return Err(ApiError::missing_result()),
    };
    // The stream exists once its head can go out (a call that fails at once
    // is an error response, not a stream).
    let stream_type = if wire == Wire::Sse { StreamType::Sse } else { StreamType::Ndjson };
    let mut recorder = state.metrics.open_stream(Transport::Http, stream_type, requested);
    let frames = async_stream::stream! {
        let _slot = slot;
        let mut pending = Some(first);
        loop {
            let event = match pending.take() {
                Some(event) => event,
                None => match events.next().await {
                    Some(Ok(event)) => event,
                    Some(Err(e)) => {
                        let err = ApiError::from(e);
                        let frame = encode_error(wire, &err.body);
                        recorder.sent(MessageType::Error, 1, frame.len());
                        recorder.close(if err.status.is_server_error() {
                            CloseReason::ServerError
                        } else {
                            CloseReason::Completed
                        });
                        yield Ok::<Bytes, Infallible>(frame);
                        break;
                    }
                    None => {
                        let frame = encode_error(wire, &ApiError::missing_result().body);
                        recorder.sent(MessageType::Error, 1, frame.len());
                        recorder.close(CloseReason::ServerError);
                        yield Ok(frame);
                        break;
                    }
                },
            };
            let done = matches!(event, ToolEvent::Result(_));
            let frame = encode_event(wire, &event);
            let kind = if done { MessageType::Result } else { MessageType::Progress };
            recorder.sent(kind, 1, frame.len());
            if done {
                recorder.close(CloseReason::Completed);
            }
            yield Ok(frame);
            if done {
                // Dropping `events` ends the gRPC call.
                break;
            }
        }
    };
    let mut res = Response::new(Body::from_stream(frames));
    let headers = res.headers_mut();
    let content_type = match wire {
        Wire::Sse => "text/event-stream",
        _ => "application/x-ndjson",
    };
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx and friends would otherwise hold events back until a buffer fills.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(res)
}

/// 503 for a streamed answer that gets no stream slot, counted like the MCP
/// transports' refusals.
fn stream_refused(state: &AppState) -> ApiError {
    state.stats.reject(crate::health::Rejection::Overloaded);
    let (reason, why, message) = if state.shutdown.is_cancelled() || state.sessions.is_closing() {
        (StreamRejection::ShuttingDown, "SHUTTING_DOWN", "the server is shutting down; retry elsewhere")
    } else {
        (StreamRejection::Capacity, "TOO_MANY_STREAMS", "too many open streams; retry later")
    };
    state.metrics.stream_rejected(Transport::Http, reason);
    ApiError {
        retry_after: Some(Duration::from_secs(5)),
        ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", why, message)
    }
}

#[derive(Serialize)]
struct ProgressJson<'a> {
    step: &'a str,
    message: &'a str,
    current: u32,
    total: u32,
}

/// One event as one `Bytes`: it leaves in one write (one chunk), so a peer
/// with Nagle on never waits for the second half of an event.
pub fn encode_event(wire: Wire, event: &ToolEvent) -> Bytes {
    let mut buf = Vec::with_capacity(128);
    match event {
        ToolEvent::Progress { step, message, current, total } => {
            let progress = ProgressJson { step, message, current: *current, total: *total };
            frame(&mut buf, wire, "progress", &progress);
        }
        ToolEvent::Result(value) => frame(&mut buf, wire, "result", value),
    }
    Bytes::from(buf)
}

pub fn encode_error(wire: Wire, body: &Value) -> Bytes {
    let mut buf = Vec::with_capacity(128);
    frame(&mut buf, wire, "error", body);
    Bytes::from(buf)
}

/// NDJSON: `{"<kind>":<json>}\n`. SSE: `event: <kind>\ndata: <json>\n\n`
/// (compact JSON has no raw newline, so one `data:` line suffices).
fn frame<T: Serialize + ?Sized>(buf: &mut Vec<u8>, wire: Wire, kind: &str, value: &T) {
    match wire {
        Wire::Sse => {
            buf.extend_from_slice(b"event: ");
            buf.extend_from_slice(kind.as_bytes());
            buf.extend_from_slice(b"\ndata: ");
            write_json(buf, value);
            buf.extend_from_slice(b"\n\n");
        }
        Wire::Ndjson | Wire::Json => {
            buf.extend_from_slice(b"{\"");
            buf.extend_from_slice(kind.as_bytes());
            buf.extend_from_slice(b"\":");
            write_json(buf, value);
            buf.extend_from_slice(b"}\n");
        }
    }
}

// ---------------------------------------------------------------------------
// Resources

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResourceJson<'a> {
    uri: &'a str,
    name: &'a str,
    mime_type: &'a str,
    /// A decimal string, as the proto3 JSON mapping writes a 64-bit integer, and `"0"` when
    /// unknown: defaults are written, as in every tool answer (and grpcurl `-emit-defaults`).
    #[serde(serialize_with = "as_decimal_string")]
    size: u64,
}

fn as_decimal_string<S: serde::Serializer>(n: &u64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(n)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResourceList<'a> {
    resources: Vec<ResourceJson<'a>>,
    // Empty on the last page, and written all the same, as every default field over REST.
    next_page_token: &'a str,
}

/// `GET /v1/resources?pageSize=&pageToken=` (query names as grpc-gateway maps the request's
/// fields); without `pageSize`, every resource.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListParams {
    #[serde(default)]
    page_size: u32,
    #[serde(default)]
    page_token: String,
}

async fn list_resources(
    State(state): State<Arc<AppState>>,
    params: Result<Query<ListParams>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let listed = async {
        let Query(params) = params.map_err(|e| ApiError::invalid("INVALID_QUERY", e.body_text()))?;
        let ctx = call_context(&headers)?;
        Ok::<_, ApiError>(state.upstream.list_resources(params.page_size, params.page_token, ctx).await?)
    };
    match listed.await {
        Ok(list) => {
            let resources = list
                .resources
                .iter()
                .map(|r| ResourceJson { uri: &r.uri, name: &r.name, mime_type: &r.mime_type, size: r.size })
                .collect();
            json_response(StatusCode::OK, &ResourceList { resources, next_page_token: &list.next_page_token })
        }
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
struct ReadParams {
    uri: Option<String>,
}

async fn read_resource(
    State(state): State<Arc<AppState>>,
    params: Result<Query<ReadParams>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let read = async {
        let Query(params) = params.map_err(|e| ApiError::invalid("INVALID_QUERY", e.body_text()))?;
        let uri = params
            .uri
            .filter(|u| !u.is_empty())
            .ok_or_else(|| ApiError::invalid("MISSING_URI", "the uri query parameter is required"))?;
        let ctx = call_context(&headers)?;
        Ok::<_, ApiError>(state.upstream.read_resource(&uri, ctx).await?)
    };
    match read.await {
        Ok(content) => json_response(StatusCode::OK, &resource_json(&content)),
        Err(e) => e.into_response(),
    }
}

/// `{"uri","mimeType","text"}`, or `blob` (base64) for binary content.
fn resource_json(content: &ResourceContent) -> Value {
    let mut out = json!({ "uri": content.uri, "mimeType": content.mime_type });
    match (&content.text, &content.blob) {
        (_, Some(blob)) if content.text.is_none() => {
            out["blob"] = Value::String(base64::engine::general_purpose::STANDARD.encode(blob));
        }
        (text, _) => out["text"] = Value::String(text.clone().unwrap_or_default()),
    }
    out
}

pub(crate) async fn unknown_path() -> Response {
    ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "UNKNOWN_PATH", "no such endpoint").into_response()
}

/// A method a route does not take: 405 with `Allow` and the REST error body, where axum's
/// own answer has no body.
pub(crate) async fn method_not_allowed(allow: &'static str) -> Response {
    let message = format!("this endpoint takes {allow}");
    let mut res =
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "UNIMPLEMENTED", "METHOD_NOT_ALLOWED", &message).into_response();
    res.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    res
}

/// A fake gRPC service behind a real [`crate::upstream::Upstream`], for the
/// handler tests here and in `health.rs`.
#[cfg(test)]
pub(crate) mod fake {
    use std::{
        pin::Pin,
        sync::{Arc, Mutex},
    };

    use futures_util::Stream;
    use tonic::{Request, Response, Status};
    use tonic_prost::ProstCodec;

    use crate::{
        Access, AppState, GatewayConfig, pb,
        upstream::{Upstream, UpstreamService},
    };

    type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

    pub struct Fake {
        pub state: Arc<AppState>,
        /// Request headers (gRPC metadata) of every upstream call.
        pub seen: Arc<Mutex<Vec<http::HeaderMap>>>,
        pub health: tonic_health::server::HealthReporter,
    }

    /// `ShowChange` answers (slug `missing`: NOT_FOUND); `ArchiveChangeStream`
    /// streams two steps and a result (slug `held`: ABORTED at once, `boom`:
    /// INTERNAL after one step); `ListResources` lists one; the health service
    /// is tonic's.
    pub fn fake(config: GatewayConfig, access: Arc<dyn Access>) -> Fake {
        let seen: Arc<Mutex<Vec<http::HeaderMap>>> = Arc::default();
        let (health, health_service) = tonic_health::server::health_reporter();
        let seen2 = seen.clone();
        let service = tower::service_fn(move |req: http::Request<tonic::body::Body>| {
            seen2.lock().unwrap().push(req.headers().clone());
            let mut health_service = health_service.clone();
            async move {
                let path = req.uri().path().to_string();
                let response = match path.as_str() {
                    "/taskmcp.v1.Changes/ShowChange" => {
                        let codec = ProstCodec::<pb::ShowChangeResponse, pb::ShowChangeRequest>::default();
                        let show = tower::service_fn(|r: Request<pb::ShowChangeRequest>| async move {
                            let slug = r.into_inner().slug;
                            if slug == "missing" {
                                return Err(Status::not_found("no change `missing`"));
                            }
                            let change = pb::ChangeSummary { slug, ..Default::default() };
                            Ok(Response::new(pb::ShowChangeResponse { change: Some(change), ..Default::default() }))
                        });
                        tonic::server::Grpc::new(codec).unary(show, req).await
                    }
                    "/taskmcp.v1.Changes/ArchiveChangeStream" => {
                        let codec = ProstCodec::<pb::ArchiveChangeEvent, pb::ArchiveChangeRequest>::default();
                        let stream = tower::service_fn(|r: Request<pb::ArchiveChangeRequest>| async move {
                            archive_stream(r.into_inner()).map(Response::new)
                        });
                        tonic::server::Grpc::new(codec).server_streaming(stream, req).await
                    }
                    "/taskmcp.v1.Resources/ListResources" => {
                        let codec = ProstCodec::<pb::ListResourcesResponse, pb::ListResourcesRequest>::default();
                        let list = tower::service_fn(|_: Request<pb::ListResourcesRequest>| async {
                            let info = pb::ResourceInfo {
                                uri: "changes://active".into(),
                                name: "active changes".into(),
                                mime_type: "application/json".into(),
                                size: 0,
                            };
                            Ok::<_, Status>(Response::new(pb::ListResourcesResponse {
                                resources: vec![info],
                                ..Default::default()
                            }))
                        });
                        tonic::server::Grpc::new(codec).unary(list, req).await
                    }
                    _ if path.starts_with("/grpc.health.v1.Health/") => {
                        match tower::Service::call(&mut health_service, req).await {
                            Ok(response) => response,
                            Err(never) => match never {},
                        }
                    }
                    _ => Status::unimplemented(path).into_http(),
                };
                Ok::<_, tonic::codegen::StdError>(response)
            }
        });
        let upstream = Arc::new(
            Upstream::new(UpstreamService::new(service), crate::GatewayConfig::default().upstream_timeout).unwrap(),
        );
        Fake { state: AppState::new(config, upstream, access), seen, health }
    }

    fn archive_stream(request: pb::ArchiveChangeRequest) -> Result<BoxStream<pb::ArchiveChangeEvent>, Status> {
        use pb::archive_change_event::Event;
        if request.slug == "held" {
            return Err(Status::aborted("held by alice"));
        }
        let step = |n: u32| pb::ArchiveChangeEvent {
            event: Some(Event::Progress(pb::Progress {
                step: format!("step{n}"),
                message: format!("Step {n}"),
                current: n,
                total: 2,
            })),
        };
        Ok(Box::pin(async_stream::stream! {
            yield Ok(step(1));
            if request.slug == "boom" {
                yield Err(Status::internal("disk on fire"));
                return;
            }
            yield Ok(step(2));
            let receipt = pb::Receipt { slug: request.slug.clone(), ..Default::default() };
            let result = pb::ArchiveChangeResponse { receipt: Some(receipt), ..Default::default() };
            yield Ok(pb::ArchiveChangeEvent { event: Some(Event::Result(result)) });
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::UpstreamError;
    use http_body_util::BodyExt;
    use tonic_types::StatusExt;

    #[test]
    fn a_503_says_when_to_retry_even_when_the_service_was_not_reached() {
        let unreachable = ApiError::from(CallError::from(tonic::Status::unavailable("tcp connect error")));
        let res = unreachable.into_response();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers().get(header::RETRY_AFTER).map(|v| v.to_str().unwrap()), Some("1"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_too_slow_is_408_and_one_too_large_413() {
        let stalled = http_body_util::StreamBody::new(futures_util::stream::pending::<
            Result<http_body::Frame<bytes::Bytes>, std::io::Error>,
        >());
        let paced = crate::security::PacedBody::new(stalled, Duration::from_secs(30));
        let err = read_body(Body::new(paced), 1024).await.expect_err("timed out");
        assert_eq!((err.status, &err.body["reason"]), (StatusCode::REQUEST_TIMEOUT, &json!("BODY_TIMED_OUT")));
        let err = read_body(Body::from(vec![b'x'; 2048]), 1024).await.expect_err("too large");
        assert_eq!((err.status, &err.body["reason"]), (StatusCode::PAYLOAD_TOO_LARGE, &json!("BODY_TOO_LARGE")));
    }

    #[test]
    fn accept_negotiation() {
        let cases: &[(Option<&str>, Option<Wire>)] = &[
            (None, Some(Wire::Json)),
            (Some(""), Some(Wire::Json)),
            (Some("*/*"), Some(Wire::Json)),
            (Some("application/json"), Some(Wire::Json)),
            (Some("application/x-ndjson"), Some(Wire::Ndjson)),
            (Some("text/event-stream"), Some(Wire::Sse)),
            (Some("Text/Event-Stream; charset=utf-8"), Some(Wire::Sse)),
            (Some("application/json, text/event-stream"), Some(Wire::Json)),
            (Some("application/json;q=0.5, text/event-stream"), Some(Wire::Sse)),
            (Some("application/x-ndjson, */*;q=0.1"), Some(Wire::Ndjson)),
            (Some("text/*"), Some(Wire::Sse)),
            (Some("application/*;q=0.9, application/json;q=0"), Some(Wire::Ndjson)),
            (Some("text/html"), None),
            (Some("application/json;q=0"), None),
        ];
        for (accept, want) in cases {
            assert_eq!(negotiate(*accept), *want, "{accept:?}");
        }
    }

    #[test]
    fn grpc_timeout_parsing() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("500m"), Some(Duration::from_millis(500)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "S", "5", "5s", "123456789S", "-1S", "1.5S", "5é"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }

    #[test]
    fn timeout_headers_combine_and_reject_garbage() {
        let mut h = HeaderMap::new();
        assert_eq!(request_timeout(&h).unwrap(), None);
        h.insert("x-request-timeout-ms", HeaderValue::from_static("1500"));
        assert_eq!(request_timeout(&h).unwrap(), Some(Duration::from_millis(1500)));
        h.insert("grpc-timeout", HeaderValue::from_static("1S"));
        assert_eq!(request_timeout(&h).unwrap(), Some(Duration::from_secs(1)));
        h.insert("grpc-timeout", HeaderValue::from_static("soon"));
        let err = request_timeout(&h).unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert_eq!(err.body["reason"], "INVALID_TIMEOUT");
        h.remove("grpc-timeout");
        h.insert("x-request-timeout-ms", HeaderValue::from_static("-5"));
        assert!(request_timeout(&h).is_err());
    }

    #[test]
    fn call_context_forwards_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        h.insert("x-request-id", HeaderValue::from_static("rid"));
        h.insert("traceparent", HeaderValue::from_static("00-abc-def-01"));
        h.insert("grpc-timeout", HeaderValue::from_static("250m"));
        let ctx = call_context(&h).unwrap();
        assert_eq!(ctx.authorization.as_deref(), Some("Bearer t"));
        assert_eq!(ctx.request_id.as_deref(), Some("rid"));
        assert_eq!(ctx.traceparent.as_deref(), Some("00-abc-def-01"));
        assert_eq!(ctx.timeout, Some(Duration::from_millis(250)));
    }

    #[test]
    fn argument_parsing() {
        let json = HeaderValue::from_static("application/json; charset=utf-8");
        let plus = HeaderValue::from_static("application/merge-patch+json");
        let text = HeaderValue::from_static("text/plain");
        assert_eq!(parse_args(None, b"").unwrap(), json!({}));
        assert_eq!(parse_args(Some(&json), b"  ").unwrap(), json!({}));
        assert_eq!(parse_args(Some(&json), br#"{"slug":"x"}"#).unwrap(), json!({"slug": "x"}));
        assert_eq!(parse_args(Some(&plus), b"{}").unwrap(), json!({}));

        let e = parse_args(Some(&text), b"{}").unwrap_err();
        assert_eq!(e.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let e = parse_args(None, b"{}").unwrap_err();
        assert_eq!(e.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let e = parse_args(Some(&json), b"{nope").unwrap_err();
        assert_eq!(
            (e.status, &e.body["code"], &e.body["reason"]),
            (StatusCode::BAD_REQUEST, &json!("INVALID_ARGUMENT"), &json!("MALFORMED_JSON"))
        );
        let e = parse_args(Some(&json), b"[1]").unwrap_err();
        assert_eq!(e.body["reason"], "INVALID_ARGUMENTS");
    }

    #[test]
    fn error_shapes() {
        let e = ApiError::from(CallError::InvalidArguments("slug: required".into()));
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            e.body,
            json!({"code": "INVALID_ARGUMENT", "reason": "INVALID_ARGUMENTS", "message": "slug: required", "details": {}})
        );

        let details = tonic_types::ErrorDetails::with_retry_info(Some(Duration::from_millis(2500)));
        let status = tonic::Status::with_error_details(tonic::Code::Unavailable, "busy", details);
        let e = ApiError::from(CallError::Upstream(UpstreamError::from(status)));
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.body["code"], "UNAVAILABLE");
        let res = e.into_response();
        assert_eq!(res.headers()[header::RETRY_AFTER], "3");
        assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
    }

    #[test]
    fn event_framing() {
        let progress = ToolEvent::Progress { step: "move".into(), message: "a\nb".into(), current: 1, total: 3 };
        let result = ToolEvent::Result(json!({"ok": true}));
        assert_eq!(
            encode_event(Wire::Ndjson, &progress),
            Bytes::from_static(b"{\"progress\":{\"step\":\"move\",\"message\":\"a\\nb\",\"current\":1,\"total\":3}}\n")
        );
        assert_eq!(encode_event(Wire::Ndjson, &result), Bytes::from_static(b"{\"result\":{\"ok\":true}}\n"));
        assert_eq!(encode_event(Wire::Sse, &result), Bytes::from_static(b"event: result\ndata: {\"ok\":true}\n\n"));
        let sse = encode_event(Wire::Sse, &progress);
        assert!(sse.starts_with(b"event: progress\ndata: {\"step\""));
        assert_eq!(sse.iter().filter(|&&b| b == b'\n').count(), 3, "one data line");
        let err = ApiError::missing_result().body;
        assert!(encode_error(Wire::Ndjson, &err).starts_with(b"{\"error\":{\"code\":\"INTERNAL\""));
        assert!(encode_error(Wire::Sse, &err).starts_with(b"event: error\ndata: {"));
    }

    #[test]
    fn resource_bodies() {
        let text = ResourceContent {
            uri: "u".into(),
            mime_type: "text/markdown".into(),
            text: Some("# hi".into()),
            blob: None,
        };
        assert_eq!(resource_json(&text), json!({"uri": "u", "mimeType": "text/markdown", "text": "# hi"}));
        let blob =
            ResourceContent { uri: "u".into(), mime_type: "image/png".into(), text: None, blob: Some(vec![0, 1, 2]) };
        assert_eq!(resource_json(&blob), json!({"uri": "u", "mimeType": "image/png", "blob": "AAEC"}));
    }

    #[tokio::test]
    async fn oversize_body_is_413() {
        let body = Body::from_stream(futures_util::stream::iter(
            ["1234", "5678"].map(|c| Ok::<_, Infallible>(Bytes::from(c))),
        ));
        let err = read_body(body, 6).await.unwrap_err();
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
        // Also through a body already capped by the security layer.
        let inner = Body::from_stream(futures_util::stream::iter(
            ["1234", "5678"].map(|c| Ok::<_, Infallible>(Bytes::from(c))),
        ));
        let capped = Body::new(http_body_util::Limited::new(inner, 6));
        let err = read_body(capped, 100).await.unwrap_err();
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
        let ok = read_body(Body::from("12"), 6).await.unwrap();
        assert_eq!(ok, Bytes::from_static(b"12"));
    }

    #[tokio::test]
    async fn unknown_path_has_rest_body() {
        let res = unknown_path().await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["reason"], "UNKNOWN_PATH");
    }

    // -- Handlers, through the whole router, against a fake service ----------

    mod handlers {
        use super::*;
        use crate::{access::OpenAccess, config::GatewayConfig};
        use tower::ServiceExt;

        fn app() -> (Router, super::super::fake::Fake) {
            let fake = super::super::fake::fake(GatewayConfig::default(), Arc::new(OpenAccess));
            (crate::router(fake.state.clone()), fake)
        }

        #[tokio::test]
        async fn a_method_a_route_does_not_take_has_allow_and_a_rest_body() {
            let (app, _fake) = app();
            let req = http::Request::builder()
                .method("GET")
                .uri("/v1/tools/change.show")
                .header("host", "localhost")
                .body(Body::empty())
                .unwrap();
            let res = app.oneshot(req).await.unwrap();
            assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
            assert_eq!(res.headers()[header::ALLOW], "POST");
            let bytes = res.into_body().collect().await.unwrap().to_bytes();
            let v: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!((v["code"].as_str(), v["reason"].as_str()), (Some("UNIMPLEMENTED"), Some("METHOD_NOT_ALLOWED")));
        }

        fn post(path: &str, headers: &[(&str, &str)], body: &'static str) -> http::Request<Body> {
            let mut b = http::Request::builder().method("POST").uri(path).header("host", "localhost");
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            b.body(Body::from(body)).unwrap()
        }

        fn get(path: &str) -> http::Request<Body> {
            http::Request::builder().uri(path).header("host", "localhost").body(Body::empty()).unwrap()
        }

        async fn json_of(res: Response) -> Value {
            let bytes = res.into_body().collect().await.unwrap().to_bytes();
            serde_json::from_slice(&bytes).unwrap()
        }

        const JSON: (&str, &str) = ("content-type", "application/json");

        #[tokio::test]
        async fn lists_tools_with_annotations() {
            let (app, _) = app();
            let res = app.oneshot(get("/v1/tools")).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            let v = json_of(res).await;
            let tools = v["tools"].as_array().unwrap();
            let show = tools.iter().find(|t| t["name"] == "change.show").unwrap();
            assert_eq!(show["annotations"]["readOnlyHint"], true);
            assert_eq!(show["annotations"]["destructiveHint"], false);
            assert!(show["inputSchema"].is_object() && show["outputSchema"].is_object());
            assert!(show["description"].is_string());
        }

        #[tokio::test]
        async fn calls_a_tool_and_forwards_metadata() {
            let (app, fake) = app();
            let headers = [
                JSON,
                ("authorization", "Bearer t0k"),
                ("x-request-id", "rid-1"),
                ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
                ("grpc-timeout", "5S"),
            ];
            let res = app.oneshot(post("/v1/tools/change.show", &headers, r#"{"slug":"add-x"}"#)).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            assert_eq!(res.headers()["x-request-id"], "rid-1");
            assert_eq!(json_of(res).await["change"]["slug"], "add-x");
            let seen = fake.seen.lock().unwrap();
            let md = seen.last().unwrap();
            assert_eq!(md["authorization"], "Bearer t0k");
            assert_eq!(md["x-request-id"], "rid-1");
            assert!(md.get("traceparent").is_some());
            assert!(md.get("grpc-timeout").is_some());
        }

        /// Path, headers, body, expected status, expected reason.
        type Case = (&'static str, &'static [(&'static str, &'static str)], &'static str, StatusCode, &'static str);

        #[tokio::test]
        async fn refusals_before_the_call() {
            let cases: &[Case] = &[
                ("/v1/tools/nope", &[JSON], "{}", StatusCode::NOT_FOUND, "UNKNOWN_TOOL"),
                (
                    "/v1/tools/change.show",
                    &[("content-type", "text/plain")],
                    "{}",
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UNSUPPORTED_MEDIA_TYPE",
                ),
                ("/v1/tools/change.show", &[JSON], "{nope", StatusCode::BAD_REQUEST, "MALFORMED_JSON"),
                ("/v1/tools/change.show", &[JSON], r#"{"bogus":1}"#, StatusCode::BAD_REQUEST, "INVALID_ARGUMENTS"),
                (
                    "/v1/tools/change.show",
                    &[JSON, ("accept", "text/html")],
                    "{}",
                    StatusCode::NOT_ACCEPTABLE,
                    "NOT_ACCEPTABLE",
                ),
                (
                    "/v1/tools/change.show",
                    &[JSON, ("grpc-timeout", "later")],
                    "{}",
                    StatusCode::BAD_REQUEST,
                    "INVALID_TIMEOUT",
                ),
                ("/v1/tools/change.show", &[JSON], r#"{"slug":"missing"}"#, StatusCode::NOT_FOUND, "NOT_FOUND"),
                ("/v1/nothing/here", &[], "", StatusCode::NOT_FOUND, "UNKNOWN_PATH"),
            ];
            for (path, headers, body, status, reason) in cases {
                let (app, _) = app();
                let res = app.oneshot(post(path, headers, body)).await.unwrap();
                assert_eq!(res.status(), *status, "{path} {body}");
                assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
                let v = json_of(res).await;
                assert_eq!(v["reason"], *reason, "{v}");
                assert!(v["code"].is_string() && v["message"].is_string() && v.get("details").is_some());
            }
        }

        #[tokio::test]
        async fn streams_ndjson() {
            let (app, _) = app();
            let headers = [JSON, ("accept", "application/x-ndjson")];
            let res = app.oneshot(post("/v1/tools/change.archive", &headers, r#"{"slug":"add-x"}"#)).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            assert_eq!(res.headers()[header::CONTENT_TYPE], "application/x-ndjson");
            let bytes = res.into_body().collect().await.unwrap().to_bytes();
            let lines: Vec<Value> = bytes
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| serde_json::from_slice(l).unwrap())
                .collect();
            assert_eq!(lines.len(), 3);
            assert_eq!(lines[0]["progress"], json!({"step": "step1", "message": "Step 1", "current": 1, "total": 2}));
            assert_eq!(lines[1]["progress"]["current"], 2);
            assert_eq!(lines[2]["result"]["receipt"]["slug"], "add-x");
        }

        #[tokio::test]
        async fn streams_sse_one_frame_per_event() {
            let (app, _) = app();
            let headers = [JSON, ("accept", "text/event-stream")];
            let res = app.oneshot(post("/v1/tools/change.archive", &headers, r#"{"slug":"add-x"}"#)).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            assert_eq!(res.headers()[header::CONTENT_TYPE], "text/event-stream");
            assert_eq!(res.headers()[header::CACHE_CONTROL], "no-cache");
            assert_eq!(res.headers()["x-accel-buffering"], "no");
            let mut body = res.into_body();
            let mut frames = Vec::new();
            while let Some(frame) = body.frame().await {
                frames.push(frame.unwrap().into_data().unwrap());
            }
            assert_eq!(frames.len(), 3);
            for f in &frames {
                assert!(f.starts_with(b"event: ") && f.ends_with(b"\n\n"), "{f:?}");
            }
            assert!(frames[2].starts_with(b"event: result\ndata: {"));
        }

        #[tokio::test]
        async fn stream_errors_before_and_after_the_first_event() {
            let (app, _) = app();
            let headers = [JSON, ("accept", "application/x-ndjson")];
            let res =
                app.clone().oneshot(post("/v1/tools/change.archive", &headers, r#"{"slug":"held"}"#)).await.unwrap();
            assert_eq!(res.status(), StatusCode::CONFLICT);
            assert_eq!(json_of(res).await["code"], "ABORTED");

            let res = app.oneshot(post("/v1/tools/change.archive", &headers, r#"{"slug":"boom"}"#)).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            let bytes = res.into_body().collect().await.unwrap().to_bytes();
            let lines: Vec<Value> = bytes
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| serde_json::from_slice(l).unwrap())
                .collect();
            assert_eq!(lines.len(), 2);
            assert!(lines[0].get("progress").is_some());
            assert_eq!(lines[1]["error"]["code"], "INTERNAL");
        }

        #[tokio::test]
        async fn lists_resources_and_requires_a_uri_to_read() {
            let (app, _) = app();
            let res = app.clone().oneshot(get("/v1/resources")).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            assert_eq!(
                json_of(res).await,
                json!({"resources": [{"uri": "changes://active", "name": "active changes", "mimeType": "application/json", "size": "0"}], "nextPageToken": ""})
            );
            let res = app.oneshot(get("/v1/resources/read")).await.unwrap();
            assert_eq!(res.status(), StatusCode::BAD_REQUEST);
            assert_eq!(json_of(res).await["reason"], "MISSING_URI");
        }
    }
}
