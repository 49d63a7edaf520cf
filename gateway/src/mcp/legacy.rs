//! The HTTP+SSE transport of 2024-11-05: `GET /sse` opens the session's one
//! stream and names the POST endpoint in an `endpoint` event; every answer
//! travels on that stream as a `message` event. No peer SDK still offers it;
//! older clients still need it.
use std::{collections::HashMap, sync::Arc, time::Instant};

use axum::{
    Extension,
    body::Bytes,
    extract::{Query, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use serde_json::Value;

use super::{
    context::Outbox,
    dispatch,
    jsonrpc::{self, Incoming, RpcError},
    protocol,
    session::{Endpoint, Session},
    sse::SseOptions,
    streamable::{answer_in_session, on_notification},
    transport::{self, rpc_error, transport_error},
};
use crate::{AppState, security::Principal};

pub const LEGACY_VERSION: &str = "2024-11-05";

pub async fn get(
    State(state): State<Arc<AppState>>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
) -> Response {
    let principal = transport::principal_name(principal.as_ref().map(|p| &p.0));
    // No `Accept` accepts anything (RFC 9110 12.5.1); 2024-11-05 did not require the header.
    if headers.contains_key(http::header::ACCEPT) && !transport::accepts_all(&headers, ["text/event-stream"]) {
        return transport_error(StatusCode::NOT_ACCEPTABLE, "Not Acceptable: Accept must list text/event-stream");
    }
    let Some(slot) = state.sessions.open_stream(Some(&principal)) else {
        return transport::too_many_streams(&state);
    };
    // Until `initialize` says otherwise, the latest version: an SDK client whose stream
    // broke reconnects here and goes on without initializing again, expecting what it
    // negotiated before (the TypeScript SDK then refuses tool results without
    // `structuredContent`). A client of 2024-11-05 initializes and gets its version.
    let Some(session) = state.sessions.create(&principal, Endpoint::Legacy, protocol::LATEST_SESSION_VERSION) else {
        return transport::too_many_sessions(&state);
    };
    let reader = session.notifications.claim();
    // Its one stream is where `list_changed` reaches a client that subscribed to nothing.
    // Not awaited, as on the Streamable HTTP GET (see there).
    dispatch::ensure_watch(state.clone(), session.clone(), transport::call_context(&headers), Some(Instant::now()));
    tracing::info!(session = %session.id, "legacy SSE session opened");
    let options = SseOptions {
        prime: false,
        // `retry:` tells EventSource clients when to reconnect (3 s by default in the
        // TypeScript SDK's), as the Streamable HTTP streams do.
        preamble: Some(format!(
            "retry: {}\nevent: endpoint\ndata: /messages?sessionId={}\n\n",
            state.config.sse_retry.as_millis(),
            session.id
        )),
        retry: state.config.sse_retry,
        keepalive: state.config.sse_keepalive,
        response_apart: true,
    };
    // The session lives as long as its stream.
    let (store, id, who) = (state.clone(), session.id.clone(), principal.clone());
    let on_close: Box<dyn FnOnce() + Send> = Box::new(move || {
        store.sessions.remove(&id, &who, Endpoint::Legacy);
    });
    transport::sse_response(&state, slot, reader, 0, options, None, Some(on_close))
}

pub async fn post(
    State(state): State<Arc<AppState>>,
    principal: Option<Extension<Principal>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return transport::unreadable_body(&rejection),
    };
    let principal = transport::principal_name(principal.as_ref().map(|p| &p.0));
    let Some(id) = query.get("sessionId") else {
        return transport_error(StatusCode::BAD_REQUEST, "Bad Request: sessionId query parameter is required");
    };
    let Ok(session) = state.sessions.get(id, &principal, Endpoint::Legacy) else {
        return rpc_error(StatusCode::NOT_FOUND, None, RpcError::new(-32001, "Session not found"));
    };
    if !transport::is_json_content(&headers) {
        return transport_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "Unsupported Media Type: use application/json");
    }
    // Answered here, not on the stream: the fault is in this POST, and no request runs.
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
    match Incoming::parse(value) {
        // A request with an id is answered where all answers go in this transport: the stream.
        Err((Some(id), err)) => {
            session.notifications.push(&jsonrpc::error(Some(&id), &err));
            StatusCode::ACCEPTED.into_response()
        }
        Err((None, err)) => rpc_error(StatusCode::BAD_REQUEST, None, err),
        Ok(Incoming::Notification { method, params }) => {
            on_notification(&session, &method, &params);
            StatusCode::ACCEPTED.into_response()
        }
        Ok(Incoming::Response { id, outcome }) => {
            session.answer_client_request(&id, outcome);
            StatusCode::ACCEPTED.into_response()
        }
        Ok(Incoming::Request { id, method, params }) => {
            tokio::spawn(answer(state, session, principal, headers, id, method, params));
            StatusCode::ACCEPTED.into_response()
        }
    }
}

async fn answer(
    state: Arc<AppState>,
    session: Arc<Session>,
    principal: String,
    headers: HeaderMap,
    id: Value,
    method: String,
    params: Value,
) {
    let log = session.notifications.clone();
    if method == "initialize" {
        let requested = params.get("protocolVersion").and_then(Value::as_str).unwrap_or(LEGACY_VERSION);
        let version = protocol::negotiate(requested);
        session.set_version(version);
        log.push(&jsonrpc::result(&id, dispatch::initialize_result(&state, version)));
        return;
    }
    answer_in_session(state, session, principal, headers, Outbox::Log(log), id, method, params).await;
}
