//! Pieces every HTTP transport shares: reading the request, building the
//! handler context, and the error responses the spec names.
use std::sync::Arc;

use axum::{
    body::Body,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    context::{Outbox, RequestContext},
    jsonrpc::{self, CredentialRefused, RpcError},
    session::{Session, StreamSlot},
    sse::{self, Attachment, EventLog, Reader, SseOptions},
};
use crate::{
    AppState, headers,
    metrics::{StreamRejection, StreamType, Transport},
    security::Principal,
    upstream::CallContext,
};

/// A JSON-RPC error as an HTTP response with the given status.
pub fn rpc_error(status: StatusCode, id: Option<&Value>, err: RpcError) -> Response {
    let mut response = (status, axum::Json(jsonrpc::error(id, &err))).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    response
}

pub fn transport_error(status: StatusCode, message: &str) -> Response {
    rpc_error(status, None, RpcError::new(jsonrpc::SERVER_ERROR, message))
}

/// A request body that could not be read, answered with a JSON-RPC error like every other
/// refusal on the MCP endpoints (axum's own answer is plain text, and 400 for a timeout).
pub fn unreadable_body(rejection: &axum::extract::rejection::BytesRejection) -> Response {
    use crate::security::BodyFault;
    match BodyFault::of(rejection) {
        // Bare: the body cap layer, which knows the cap, gives it the refusal an over-cap
        // Content-Length gets, so both ways of sending too much are answered alike.
        BodyFault::TooLarge => StatusCode::PAYLOAD_TOO_LARGE.into_response(),
        BodyFault::TimedOut => {
            transport_error(StatusCode::REQUEST_TIMEOUT, &format!("Request Timeout: {}", rejection.body_text()))
        }
        BodyFault::Broken => rpc_error(
            StatusCode::BAD_REQUEST,
            None,
            RpcError::new(jsonrpc::PARSE_ERROR, format!("Parse error: {}", rejection.body_text())),
        ),
    }
}

pub fn json_response(body: &Value) -> Response {
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// The answer to a request whose only response is an error for a credential the service
/// refused: a 401 with a bearer challenge (the service's, else the one the gateway gives an
/// invalid token of its own), so the client refreshes its token as it would for the gateway's 401.
pub fn credential_refused(state: &AppState, refused: &CredentialRefused, body: Vec<u8>) -> Response {
    let challenge = refused
        .challenge
        .clone()
        .or_else(|| crate::security::Refusal::InvalidToken.challenge(state.config.oauth.as_ref()));
    let mut response = (StatusCode::UNAUTHORIZED, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(challenge) = challenge {
        headers.insert(header::WWW_AUTHENTICATE, challenge);
    }
    response
}

/// A 200 with a body that is JSON text already.
pub fn json_text_response(body: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(body));
    // Room for what the layers add on the way out (security headers, `mcp-session-id`,
    // `x-request-id`, `content-length`): a map left to grow rehashed at the seventh.
    let headers = response.headers_mut();
    headers.reserve(RESPONSE_HEADERS);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Headers a JSON answer carries when it leaves.
const RESPONSE_HEADERS: usize = 12;

/// A 200 event stream with no event: the answer to a POST whose requests were
/// all cancelled. A request needs a JSON or SSE reply, and the cancellation
/// spec asks that no JSON-RPC response follow (the SDKs report one as a
/// response to an unknown id).
pub fn empty_event_stream() -> Response {
    let mut response = Response::new(Body::empty());
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, no-transform"));
    response
}

pub fn header_str(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `Accept` finds every one of `wanted` acceptable (see [`crate::accept`]).
pub fn accepts_all<const N: usize>(headers: &HeaderMap, wanted: [&str; N]) -> bool {
    crate::accept::accepts_all(crate::accept::ranges(headers), wanted)
}

pub fn is_json_content(headers: &HeaderMap) -> bool {
    header_str(headers, header::CONTENT_TYPE)
        .map(|v| v.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/json"))
        .unwrap_or(false)
}

pub fn principal_name(principal: Option<&Principal>) -> String {
    principal.map(|p| p.0.clone()).unwrap_or_else(|| "anonymous".to_string())
}

/// The facts forwarded to the service with every call.
pub fn call_context(headers: &HeaderMap) -> CallContext {
    CallContext {
        authorization: header_str(headers, header::AUTHORIZATION).map(str::to_string),
        request_id: header_str(headers, headers::X_REQUEST_ID).map(str::to_string),
        traceparent: header_str(headers, headers::TRACEPARENT).map(str::to_string),
        // A malformed value does not get this far on a request: the POST handlers refuse it
        // first (`grpc_timeout`). The change feed takes no deadline at all (`Upstream::watch`).
        timeout: grpc_timeout(headers).ok().flatten(),
        transport: Some(crate::metrics::Transport::Mcp),
        forwarded_for: header_str(headers, crate::proxies::X_FORWARDED_FOR).map(str::to_string),
    }
}

/// The deadline `grpc-timeout` sets for the request's gRPC calls, read as REST reads it.
/// A malformed value is refused rather than ignored, so that a caller who asked for a deadline
/// never runs without one. It is -32600 (Invalid Request), as for the other faults of the
/// request rather than of its method (a batch where none is allowed): -32602 would send the
/// client looking in `params`, which are fine.
pub fn grpc_timeout(headers: &HeaderMap) -> Result<Option<std::time::Duration>, RpcError> {
    let Some(value) = headers.get(headers::GRPC_TIMEOUT) else { return Ok(None) };
    match value.to_str().ok().and_then(crate::rest::parse_grpc_timeout) {
        Some(timeout) => Ok(Some(timeout)),
        None => Err(RpcError::new(
            jsonrpc::INVALID_REQUEST,
            "Invalid Request: grpc-timeout must be 1-8 digits and a unit (H M S m u n)",
        )),
    }
}

/// `params._meta.progressToken` when it is what the schema allows, a string or an integer;
/// a token of another type asks for nothing (it could not be echoed faithfully).
pub fn progress_token(params: &Value) -> Option<&Value> {
    params.get("_meta").and_then(|m| m.get("progressToken")).filter(|t| t.is_string() || t.is_i64() || t.is_u64())
}

pub struct ContextParts<'a> {
    pub state: &'a Arc<AppState>,
    pub session: Option<Arc<Session>>,
    pub principal: String,
    pub headers: &'a HeaderMap,
    pub version: String,
    pub id: Value,
    pub params: &'a Value,
    pub cancel: CancellationToken,
    pub outbox: Option<Outbox>,
}

pub fn context(parts: ContextParts<'_>) -> RequestContext {
    RequestContext {
        state: parts.state.clone(),
        session: parts.session,
        principal: parts.principal,
        call: call_context(parts.headers),
        protocol_version: parts.version,
        request_id: parts.id,
        progress_token: progress_token(parts.params).cloned(),
        cancel: parts.cancel,
        outbox: parts.outbox,
    }
}

/// Runs a request whose answer travels on its stream (`ctx.outbox`): the
/// handler's notifications go out as they happen, then the response, which
/// `finish` may decorate. A cancelled request gets no response, as the spec asks.
pub async fn respond_on_stream(
    ctx: &RequestContext,
    method: &str,
    params: &Value,
    finish: impl FnOnce(Value) -> Value,
) {
    let outcome = super::dispatch::handle(ctx, method, params).await;
    if ctx.cancel.is_cancelled() {
        return;
    }
    let message = match outcome {
        Ok(result) => jsonrpc::result(&ctx.request_id, finish(result.into_value())),
        Err(err) => jsonrpc::error(Some(&ctx.request_id), &err),
    };
    if let Some(out) = &ctx.outbox {
        let _ = out.send(message).await;
    }
}

/// Copies a handler's stream messages into an event log; when every sender is
/// gone (the handler is done) the log is finished, so readers end after draining.
pub fn pump_into(log: Arc<EventLog>) -> Outbox {
    let (tx, mut rx) = mpsc::channel::<Value>(64);
    tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            log.push(&message);
        }
        log.finish();
    });
    Outbox::Channel(tx)
}

/// An SSE response that reads the log `reader` holds, after `cursor`.
pub fn sse_response(
    state: &Arc<AppState>,
    slot: StreamSlot,
    reader: Reader,
    cursor: u64,
    options: SseOptions,
    session_id: Option<&str>,
    on_close: Option<Box<dyn FnOnce() + Send>>,
) -> Response {
    let attachment = Attachment::new(
        reader,
        Box::new(move || {
            drop(slot);
            if let Some(f) = on_close {
                f();
            }
        }),
    );
    // Every SSE response of the MCP transports is an `mcp` stream; the
    // request arrived moments ago (handlers answer SSE without awaiting).
    let recorder = state.metrics.open_stream(Transport::Mcp, StreamType::Sse, std::time::Instant::now());
    let body = sse::body(attachment, cursor, options, recorder);
    let mut response = Response::new(Body::new(body));
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, no-transform"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Some(id) = session_id.and_then(|id| HeaderValue::from_str(id).ok()) {
        h.insert(headers::MCP_SESSION_ID, id);
    }
    response
}

/// The answer when `SessionStore::open_stream` finds no slot: the store is
/// full, or closed because the server is draining.
pub fn too_many_streams(state: &AppState) -> Response {
    state.stats.reject(crate::health::Rejection::Overloaded);
    if state.shutdown.is_cancelled() || state.sessions.is_closing() {
        state.metrics.stream_rejected(Transport::Mcp, StreamRejection::ShuttingDown);
        return transport_error(StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down; retry elsewhere");
    }
    state.metrics.stream_rejected(Transport::Mcp, StreamRejection::Capacity);
    transport_error(StatusCode::SERVICE_UNAVAILABLE, "too many open streams; retry later")
}

pub fn too_many_sessions(state: &AppState) -> Response {
    state.stats.reject(crate::health::Rejection::Overloaded);
    transport_error(StatusCode::SERVICE_UNAVAILABLE, "session limit reached; retry later")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The refusal an MCP handler gives a request whose body is `body`.
    async fn refusal_of(body: axum::body::Body) -> (StatusCode, Value) {
        use axum::extract::FromRequest;
        let request = http::Request::new(body);
        let rejection = axum::body::Bytes::from_request(request, &()).await.expect_err("the body fails");
        let response = unreadable_body(&rejection);
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
        (status, serde_json::from_slice(&bytes).expect("a JSON-RPC body"))
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_too_slow_is_408_and_one_cut_short_is_400_both_in_json_rpc() {
        let stalled = http_body_util::StreamBody::new(futures_util::stream::pending::<
            Result<http_body::Frame<bytes::Bytes>, std::io::Error>,
        >());
        let paced = crate::security::PacedBody::new(stalled, std::time::Duration::from_secs(30));
        let (status, body) = refusal_of(axum::body::Body::new(paced)).await;
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
        assert!(body["error"]["message"].as_str().unwrap().contains("did not arrive within 30s"), "{body}");

        let cut = futures_util::stream::iter([
            Ok(http_body::Frame::data(bytes::Bytes::from_static(b"{\"jsonrpc\""))),
            Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
        ]);
        let (status, body) = refusal_of(axum::body::Body::new(http_body_util::StreamBody::new(cut))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["code"], jsonrpc::PARSE_ERROR, "{body}");
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn progress_tokens_are_strings_or_integers() {
        for token in [json!("p-1"), json!(7), json!(u64::MAX)] {
            let params = json!({"_meta": {"progressToken": token}});
            assert_eq!(progress_token(&params), Some(&token));
        }
        for token in [json!(null), json!({"a": 1}), json!(1.5), json!(true)] {
            assert_eq!(progress_token(&json!({"_meta": {"progressToken": token}})), None, "{token}");
        }
    }

    #[test]
    fn accept_negotiation() {
        let both = headers(&[("accept", "application/json, text/event-stream")]);
        assert!(accepts_all(&both, ["application/json", "text/event-stream"]));
        let json_only = headers(&[("accept", "application/json")]);
        assert!(!accepts_all(&json_only, ["application/json", "text/event-stream"]));
        let wildcard = headers(&[("accept", "*/*")]);
        assert!(accepts_all(&wildcard, ["text/event-stream"]));
        let split = headers(&[("accept", "application/json;q=0.9"), ("accept", "text/*")]);
        assert!(accepts_all(&split, ["application/json", "text/event-stream"]));
        let cased = headers(&[("accept", "Application/JSON, TEXT/Event-Stream")]);
        assert!(accepts_all(&cased, ["application/json", "text/event-stream"]));
        let other_wildcard = headers(&[("accept", "application/json, image/*")]);
        assert!(!accepts_all(&other_wildcard, ["application/json", "text/event-stream"]));
        let refused = headers(&[("accept", "application/json;q=0, */*")]);
        assert!(!accepts_all(&refused, ["application/json", "text/event-stream"]));
    }

    #[test]
    fn content_type_check() {
        assert!(is_json_content(&headers(&[("content-type", "application/json; charset=utf-8")])));
        assert!(!is_json_content(&headers(&[("content-type", "text/plain")])));
        assert!(!is_json_content(&HeaderMap::new()));
    }
}
