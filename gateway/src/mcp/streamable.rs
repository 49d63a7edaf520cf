//! Streamable HTTP with sessions (2025-03-26, 2025-06-18, 2025-11-25) on `/mcp`.
//! Requests carrying the 2026-07-28 version go to `stateless`.
use std::{sync::Arc, time::Instant};

use axum::{
    Extension,
    body::Bytes,
    extract::{State, rejection::BytesRejection},
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use serde_json::Value;

use super::{
    context::Outbox,
    dispatch,
    jsonrpc::{self, CredentialRefused, Incoming, RpcError},
    protocol,
    session::{Endpoint, Session},
    sse::{self, SseOptions},
    stateless,
    transport::{self, ContextParts, header_str, rpc_error, transport_error},
};
use crate::{
    AppState, headers,
    security::{Principal, ReadOnly},
};

const BOTH: [&str; 2] = ["application/json", "text/event-stream"];

pub async fn post(
    State(state): State<Arc<AppState>>,
    principal: Option<Extension<Principal>>,
    read_only: Option<Extension<ReadOnly>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return transport::unreadable_body(&rejection),
    };
    let principal = transport::principal_name(principal.as_ref().map(|p| &p.0));
    if !transport::accepts_all(&headers, BOTH) {
        return transport_error(
            StatusCode::NOT_ACCEPTABLE,
            "Not Acceptable: Accept must list application/json and text/event-stream",
        );
    }
    if !transport::is_json_content(&headers) {
        return transport_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "Unsupported Media Type: use application/json");
    }
    if let Err(err) = transport::grpc_timeout(&headers) {
        return rpc_error(StatusCode::BAD_REQUEST, None, err);
    }
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                None,
                RpcError::new(jsonrpc::PARSE_ERROR, format!("Parse error: {e}")),
            );
        }
    };
    if let Some(refused) = write_refusal(&state, read_only.map(|r| r.0), &principal, &value) {
        return refused;
    }
    let header_version = header_str(&headers, headers::MCP_PROTOCOL_VERSION);
    if stateless::is_stateless(&value, header_version) {
        return stateless::post(state, principal, headers, value).await;
    }
    if let Value::Array(batch) = value {
        return post_batch(state, principal, headers, batch).await;
    }
    let message = match Incoming::parse(value) {
        Ok(m) => m,
        Err((id, err)) => return rpc_error(StatusCode::BAD_REQUEST, id.as_ref(), err),
    };
    if let Incoming::Request { id, method, params } = &message
        && method == "initialize"
    {
        return initialize(&state, &principal, id, params);
    }
    let session = match session_for(&state, &headers, &principal) {
        Ok(s) => s,
        Err(response) => return *response,
    };
    handle_message(state, session, principal, headers, message).await
}

/// MCP's scope challenge ([`crate::security::refuse_write`]) for a `tools/call`, alone or in a
/// batch, that a caller whose token may only read may not make.
fn write_refusal(state: &AppState, read_only: Option<ReadOnly>, principal: &str, value: &Value) -> Option<Response> {
    read_only?;
    let messages = match value {
        Value::Array(batch) => batch.as_slice(),
        single => std::slice::from_ref(single),
    };
    let registry = state.upstream.registry();
    messages
        .iter()
        .filter(|m| m.get("method").and_then(Value::as_str) == Some("tools/call"))
        .filter_map(|m| registry.get(m.get("params")?.get("name")?.as_str()?))
        .find_map(|tool| crate::security::refuse_write(state, read_only, tool, Some(principal), true))
}

fn initialize(state: &Arc<AppState>, principal: &str, id: &Value, params: &Value) -> Response {
    // Required by every revision's schema: without it there is nothing to negotiate, and a
    // session made on a guess is not what the client asked for.
    let Some(requested) = params.get("protocolVersion").and_then(Value::as_str) else {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            Some(id),
            RpcError::invalid_params("initialize needs params.protocolVersion, a string"),
        );
    };
    let version = protocol::negotiate(requested);
    let Some(session) = state.sessions.create(principal, Endpoint::Streamable, version) else {
        return transport::too_many_sessions(state);
    };
    tracing::info!(session = %session.id, version, principal, "session created");
    let mut response = transport::json_response(&jsonrpc::result(id, dispatch::initialize_result(state, version)));
    if let Ok(v) = HeaderValue::from_str(&session.id) {
        response.headers_mut().insert(headers::MCP_SESSION_ID, v);
    }
    response
}

/// The session named by `Mcp-Session-Id`, with the protocol version header checked.
fn session_for(state: &Arc<AppState>, headers: &HeaderMap, principal: &str) -> Result<Arc<Session>, Box<Response>> {
    let Some(id) = header_str(headers, headers::MCP_SESSION_ID) else {
        return Err(Box::new(transport_error(
            StatusCode::BAD_REQUEST,
            "Bad Request: Mcp-Session-Id header is required",
        )));
    };
    let session = state
        .sessions
        .get(id, principal, Endpoint::Streamable)
        .map_err(|_| Box::new(rpc_error(StatusCode::NOT_FOUND, None, RpcError::new(-32001, "Session not found"))))?;
    check_session_version(headers)?;
    Ok(session)
}

/// A session request's `MCP-Protocol-Version`, when present, must name a session-era version.
fn check_session_version(headers: &HeaderMap) -> Result<(), Box<Response>> {
    match header_str(headers, headers::MCP_PROTOCOL_VERSION) {
        Some(version) if !protocol::SESSION_VERSIONS.contains(&version) => Err(Box::new(transport_error(
            StatusCode::BAD_REQUEST,
            &format!(
                "Bad Request: unsupported protocol version {version:?} (supported versions: {})",
                protocol::SESSION_VERSIONS.join(", ")
            ),
        ))),
        _ => Ok(()),
    }
}

async fn handle_message(
    state: Arc<AppState>,
    session: Arc<Session>,
    principal: String,
    headers: HeaderMap,
    message: Incoming,
) -> Response {
    match message {
        Incoming::Notification { method, params } => {
            on_notification(&session, &method, &params);
            StatusCode::ACCEPTED.into_response()
        }
        Incoming::Response { id, outcome } => {
            session.answer_client_request(&id, outcome);
            StatusCode::ACCEPTED.into_response()
        }
        Incoming::Request { id, method, params } => {
            if method == "tools/call" && dispatch::call_wants_stream(&state, &params) {
                return answer_with_stream(state, session, principal, headers, id, method, params);
            }
            match run(&state, &session, principal, &headers, &id, &method, &params).await {
                Some(Answer { text, refused: Some(refused) }) => transport::credential_refused(&state, &refused, text),
                Some(Answer { text, refused: None }) => transport::json_text_response(text),
                None => transport::empty_event_stream(),
            }
        }
    }
}

pub fn on_notification(session: &Session, method: &str, params: &Value) {
    if method == "notifications/cancelled"
        && let Some(id) = params.get("requestId")
    {
        session.cancel_request(id);
    }
    // notifications/initialized, roots/list_changed and the like need no action.
}

/// One request's JSON-RPC response, as JSON text.
struct Answer {
    text: Vec<u8>,
    /// Set when the response is an error for a credential the service refused.
    refused: Option<Box<CredentialRefused>>,
}

/// Runs one request to its JSON-RPC response; `None` when the client
/// cancelled it, which leaves no response due.
async fn run(
    state: &Arc<AppState>,
    session: &Arc<Session>,
    principal: String,
    headers: &HeaderMap,
    id: &Value,
    method: &str,
    params: &Value,
) -> Option<Answer> {
    let in_flight = session.start_request(id);
    let ctx = transport::context(ContextParts {
        state,
        session: Some(session.clone()),
        principal,
        headers,
        version: session.version(),
        id: id.clone(),
        params,
        cancel: in_flight.cancel.clone(),
        outbox: None,
    });
    let outcome = dispatch::handle(&ctx, method, params).await;
    drop(in_flight);
    if ctx.cancel.is_cancelled() {
        return None;
    }
    Some(match outcome {
        Ok(result) => Answer { text: jsonrpc::result_text(id, &result), refused: None },
        Err(err) => Answer { text: jsonrpc::error_text(Some(id), &err), refused: err.credential_refused },
    })
}

/// Answers on an SSE stream: notifications for this request, then its response.
/// The handler runs on its own task, so a dropped connection loses nothing:
/// the client resumes with `Last-Event-ID`.
fn answer_with_stream(
    state: Arc<AppState>,
    session: Arc<Session>,
    principal: String,
    headers: HeaderMap,
    id: Value,
    method: String,
    params: Value,
) -> Response {
    let Some(slot) = state.sessions.open_stream(Some(&principal)) else {
        return transport::too_many_streams(&state);
    };
    let log = session.new_log();
    let reader = log.claim();
    // When the task is done its sender drops, the pump ends and finishes the log.
    let outbox = transport::pump_into(log.clone());
    tokio::spawn(answer_in_session(state.clone(), session.clone(), principal, headers, outbox, id, method, params));
    let options = SseOptions {
        prime: protocol::primes_sse(&session.version()),
        preamble: None,
        retry: state.config.sse_retry,
        keepalive: state.config.sse_keepalive,
        response_apart: false,
    };
    transport::sse_response(&state, slot, reader, 0, options, Some(&session.id), None)
}

/// Runs one session request whose messages go to `outbox`, registered as in
/// flight for its duration so `notifications/cancelled` can stop it.
#[allow(clippy::too_many_arguments)]
pub(super) async fn answer_in_session(
    state: Arc<AppState>,
    session: Arc<Session>,
    principal: String,
    headers: HeaderMap,
    outbox: Outbox,
    id: Value,
    method: String,
    params: Value,
) {
    let in_flight = session.start_request(&id);
    let ctx = transport::context(ContextParts {
        state: &state,
        session: Some(session.clone()),
        principal,
        headers: &headers,
        version: session.version(),
        id: id.clone(),
        params: &params,
        cancel: in_flight.cancel.clone(),
        outbox: Some(outbox),
    });
    transport::respond_on_stream(&ctx, &method, &params, |r| r).await;
    drop(in_flight);
}

async fn post_batch(state: Arc<AppState>, principal: String, headers: HeaderMap, batch: Vec<Value>) -> Response {
    let session = match session_for(&state, &headers, &principal) {
        Ok(s) => s,
        Err(response) => return *response,
    };
    if !protocol::allows_batch(&session.version()) {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            None,
            RpcError::new(jsonrpc::INVALID_REQUEST, "JSON-RPC batches are not supported in this protocol version"),
        );
    }
    if batch.is_empty() {
        return rpc_error(StatusCode::BAD_REQUEST, None, RpcError::new(jsonrpc::INVALID_REQUEST, "an empty batch"));
    }
    let (mut responses, mut requests, mut refused) = (Vec::new(), 0, None);
    for value in batch {
        match Incoming::parse(value) {
            Ok(Incoming::Request { id, method, .. }) if method == "initialize" => {
                let err = RpcError::new(jsonrpc::INVALID_REQUEST, "initialize must not be part of a batch");
                responses.push(jsonrpc::error_text(Some(&id), &err));
            }
            Ok(Incoming::Request { id, method, params }) => {
                requests += 1;
                if let Some(answer) = run(&state, &session, principal.clone(), &headers, &id, &method, &params).await {
                    responses.push(answer.text);
                    refused = refused.or(answer.refused);
                }
            }
            Ok(Incoming::Notification { method, params }) => on_notification(&session, &method, &params),
            Ok(Incoming::Response { id, outcome }) => {
                session.answer_client_request(&id, outcome);
            }
            Err((id, err)) => responses.push(jsonrpc::error_text(id.as_ref(), &err)),
        }
    }
    if responses.is_empty() {
        return if requests == 0 { StatusCode::ACCEPTED.into_response() } else { transport::empty_event_stream() };
    }
    let mut body = vec![b'['];
    body.extend(responses.join(&b","[..]));
    body.push(b']');
    // One token carried the whole batch: a credential the service refused for one request
    // it would refuse for all, and the client must hear it as a 401.
    match refused {
        Some(refused) => transport::credential_refused(&state, &refused, body),
        None => transport::json_text_response(body),
    }
}

/// GET: the session's standalone stream, or a resumed stream with `Last-Event-ID`.
pub async fn get(
    State(state): State<Arc<AppState>>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
) -> Response {
    let principal = transport::principal_name(principal.as_ref().map(|p| &p.0));
    if header_str(&headers, headers::MCP_PROTOCOL_VERSION) == Some(protocol::STATELESS_VERSION) {
        return stateless_method_not_allowed();
    }
    if !transport::accepts_all(&headers, ["text/event-stream"]) {
        return transport_error(StatusCode::NOT_ACCEPTABLE, "Not Acceptable: Accept must list text/event-stream");
    }
    let session = match session_for(&state, &headers, &principal) {
        Ok(s) => s,
        Err(response) => return *response,
    };
    // A GET takes the stream over from the connection the client lost, with or
    // without `Last-Event-ID`: a connection the client dropped is noticed only
    // at the next write, and answering 409 until then made SDK clients give up
    // the stream for good (eras before 2025-11-25 have no event id to resume
    // from). The session is bound to its principal, so only its owner can.
    let (log, cursor) = match header_str(&headers, headers::LAST_EVENT_ID) {
        Some(last) => {
            let Some((stream, seq)) = sse::parse_event_id(last) else {
                return transport_error(StatusCode::BAD_REQUEST, "Bad Request: malformed Last-Event-ID");
            };
            // 400, not 404: a 404 tells the client its session is gone (it must initialize
            // again), when only this stream's events are no longer kept.
            let Some(log) = session.find_log(stream) else {
                return transport_error(StatusCode::BAD_REQUEST, "Bad Request: the stream to resume is gone");
            };
            (log, seq)
        }
        None => (session.notifications.clone(), session.notifications.start_cursor()),
    };
    let Some(slot) = state.sessions.open_stream(Some(&session.principal)) else {
        return transport::too_many_streams(&state);
    };
    let reader = log.claim();
    let options = SseOptions {
        prime: protocol::primes_sse(&session.version()),
        preamble: None,
        retry: state.config.sse_retry,
        keepalive: state.config.sse_keepalive,
        response_apart: false,
    };
    // The standalone stream is where `list_changed` reaches a client that subscribed to nothing.
    // Not awaited, unlike a subscription: 10,000 streams opening at once, each holding its
    // handler until the feed is open, left 20.1 KiB per stream in RSS instead of 16.2 (the
    // 20 KiB target). The feed looks back to this moment instead, so that a change made
    // between the first byte and the feed's opening is announced too.
    dispatch::ensure_watch(state.clone(), session.clone(), transport::call_context(&headers), Some(Instant::now()));
    transport::sse_response(&state, slot, reader, cursor, options, Some(&session.id), None)
}

/// GET and DELETE have no meaning in the stateless era: 405, with the `Allow` RFC 9110 requires.
fn stateless_method_not_allowed() -> Response {
    let mut response = transport_error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed in 2026-07-28: use POST");
    response.headers_mut().insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
    response
}

pub async fn delete(
    State(state): State<Arc<AppState>>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
) -> Response {
    let principal = transport::principal_name(principal.as_ref().map(|p| &p.0));
    if header_str(&headers, headers::MCP_PROTOCOL_VERSION) == Some(protocol::STATELESS_VERSION) {
        return stateless_method_not_allowed();
    }
    let Some(id) = header_str(&headers, headers::MCP_SESSION_ID) else {
        return transport_error(StatusCode::BAD_REQUEST, "Bad Request: Mcp-Session-Id header is required");
    };
    if let Err(response) = check_session_version(&headers) {
        return *response;
    }
    match state.sessions.remove(id, &principal, Endpoint::Streamable) {
        super::session::Lookup::Found => {
            tracing::info!(session = id, "session deleted");
            StatusCode::OK.into_response()
        }
        super::session::Lookup::NotFound => {
            rpc_error(StatusCode::NOT_FOUND, None, RpcError::new(-32001, "Session not found"))
        }
    }
}
