//! The stateless era (2026-07-28): POST only, no sessions, every request names
//! its version in `_meta` and its method (and tool or resource) in headers.
use std::{sync::Arc, time::Instant};

use axum::{
    http::{HeaderMap, HeaderName, StatusCode},
    response::{IntoResponse, Response},
};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{
    dispatch,
    jsonrpc::{self, Incoming, RpcError},
    protocol::{self, META_VERSION_KEY, STATELESS_VERSION},
    sse::{EventLog, SseOptions},
    transport::{self, ContextParts, header_str, rpc_error},
};
use crate::{AppState, headers, upstream::CallError};

const META_CAPABILITIES_KEY: &str = "io.modelcontextprotocol/clientCapabilities";
const SUBSCRIPTION_ID_KEY: &str = "io.modelcontextprotocol/subscriptionId";

/// Milliseconds a client may cache list and read results.
const CACHE_TTL_MS: u64 = 0;

fn meta_version(value: &Value) -> Option<&str> {
    value.get("params")?.get("_meta")?.get(META_VERSION_KEY)?.as_str()
}

pub fn is_stateless(value: &Value, header_version: Option<&str>) -> bool {
    header_version == Some(STATELESS_VERSION) || meta_version(value).is_some()
}

/// Header values may be `=?base64?<b64>?=` for non-ASCII content.
fn decode_header(value: &str) -> Option<String> {
    match value.strip_prefix("=?base64?").and_then(|v| v.strip_suffix("?=")) {
        Some(b64) => STANDARD.decode(b64).ok().and_then(|b| String::from_utf8(b).ok()),
        None => Some(value.to_string()),
    }
}

/// A routing header (`Mcp-Method`, `Mcp-Name`, `Mcp-Param-*`) sent more than once: the checks
/// here read the first line, a load balancer in front may route on another, so the body
/// could not be shown to match what was routed on (as `security` refuses a second `Host`).
fn repeated_routing_header(headers: &HeaderMap) -> Option<&HeaderName> {
    headers.keys().find(|name| {
        let routing =
            **name == headers::MCP_METHOD || **name == headers::MCP_NAME || name.as_str().starts_with("mcp-param-");
        routing && headers.get_all(*name).iter().nth(1).is_some()
    })
}

fn mismatch(id: Option<&Value>, message: String) -> Response {
    rpc_error(StatusCode::BAD_REQUEST, id, RpcError::new(jsonrpc::HEADER_MISMATCH, message))
}

pub async fn post(state: Arc<AppState>, principal: String, headers: HeaderMap, value: Value) -> Response {
    let body_version = meta_version(&value).map(str::to_string);
    let message = match Incoming::parse(value) {
        Ok(m) => m,
        Err((id, err)) => return rpc_error(StatusCode::BAD_REQUEST, id.as_ref(), err),
    };
    let (id, method, params) = match message {
        Incoming::Notification { .. } => return StatusCode::ACCEPTED.into_response(),
        Incoming::Response { id, .. } => {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                Some(&id),
                RpcError::new(jsonrpc::INVALID_REQUEST, "clients do not send responses in 2026-07-28"),
            );
        }
        Incoming::Request { id, method, params } => (id, method, params),
    };
    let header_version = header_str(&headers, headers::MCP_PROTOCOL_VERSION);
    // SEP-2575: a request whose _meta lacks protocolVersion or clientCapabilities
    // is malformed: -32602 with HTTP 400, before any header comparison.
    let meta = params.get("_meta");
    let has_caps = meta.and_then(|m| m.get(META_CAPABILITIES_KEY)).is_some_and(Value::is_object);
    if body_version.is_none() || !has_caps {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            Some(&id),
            RpcError::invalid_params(format!(
                "_meta must carry {META_VERSION_KEY} and {META_CAPABILITIES_KEY} (an object) in {STATELESS_VERSION}"
            )),
        );
    }
    let version = body_version.as_deref().unwrap_or("");
    if header_version != Some(version) {
        return mismatch(
            Some(&id),
            format!(
                "MCP-Protocol-Version header {header_version:?} must equal _meta {META_VERSION_KEY} {body_version:?}"
            ),
        );
    }
    // Only the stateless era is served without a session: an earlier version's rules (its
    // error codes, its result fields) need the session that `initialize` makes.
    if version != STATELESS_VERSION {
        let supported = protocol::all_versions();
        let why = if protocol::is_supported(version) {
            format!("Protocol version {version:?} needs a session: send initialize first")
        } else {
            format!("Unsupported protocol version {version:?}")
        };
        return rpc_error(
            StatusCode::BAD_REQUEST,
            Some(&id),
            RpcError::new(jsonrpc::UNSUPPORTED_VERSION, why)
                .with_data(json!({"supported": supported, "requested": version})),
        );
    }
    if let Some(name) = repeated_routing_header(&headers) {
        return mismatch(Some(&id), format!("{name} header must appear once"));
    }
    // Not decoded: the spec allows the Base64 form only for Mcp-Name and Mcp-Param-*, and a
    // load balancer routing on Mcp-Method reads it as sent.
    match header_str(&headers, headers::MCP_METHOD) {
        Some(m) if m == method => {}
        other => return mismatch(Some(&id), format!("Mcp-Method header {other:?} must equal the method {method:?}")),
    }
    let named = match method.as_str() {
        "tools/call" | "prompts/get" => params.get("name").and_then(Value::as_str),
        "resources/read" => params.get("uri").and_then(Value::as_str),
        _ => None,
    };
    if let Some(named) = named {
        match header_str(&headers, headers::MCP_NAME).and_then(decode_header) {
            Some(h) if h == named => {}
            other => return mismatch(Some(&id), format!("Mcp-Name header {other:?} must equal {named:?}")),
        }
    }
    if method == "tools/call"
        && let Err(message) = check_param_headers(&state, &headers, &params)
    {
        return mismatch(Some(&id), message);
    }
    match method.as_str() {
        "server/discover" => transport::json_response(&jsonrpc::result(&id, decorate(&method, discover(&state)))),
        "subscriptions/listen" => listen(state, &principal, headers, id, params),
        "initialize" | "ping" | "logging/setLevel" | "resources/subscribe" | "resources/unsubscribe" => rpc_error(
            StatusCode::NOT_FOUND,
            Some(&id),
            RpcError::method_not_found(&format!("{method} (not part of {STATELESS_VERSION})")),
        ),
        "tools/call" if dispatch::call_wants_stream(&state, &params) => {
            stream(state, principal, headers, id, method, params)
        }
        _ => {
            let ctx = transport::context(ContextParts {
                state: &state,
                session: None,
                principal,
                headers: &headers,
                version: STATELESS_VERSION.to_string(),
                id: id.clone(),
                params: &params,
                cancel: CancellationToken::new(),
                outbox: None,
            });
            match dispatch::handle(&ctx, &method, &params).await {
                Ok(result) => {
                    transport::json_text_response(jsonrpc::result_text(&id, &result.decorate(|r| decorate(&method, r))))
                }
                Err(err) if err.code == jsonrpc::METHOD_NOT_FOUND => rpc_error(StatusCode::NOT_FOUND, Some(&id), err),
                Err(err) if err.code == jsonrpc::MISSING_CAPABILITY => {
                    rpc_error(StatusCode::BAD_REQUEST, Some(&id), err)
                }
                Err(err) => match &err.credential_refused {
                    Some(refused) => {
                        transport::credential_refused(&state, refused, jsonrpc::error_text(Some(&id), &err))
                    }
                    None => transport::json_response(&jsonrpc::error(Some(&id), &err)),
                },
            }
        }
    }
}

/// Modern results say they are complete; the results the spec names cacheable (lists, reads
/// and discovery) carry cache hints.
fn decorate(method: &str, mut result: Value) -> Value {
    if result.get("resultType").is_none() {
        result["resultType"] = json!("complete");
    }
    if method.ends_with("/list") || method == "resources/read" || method == "server/discover" {
        result["ttlMs"] = json!(CACHE_TTL_MS);
        result["cacheScope"] = json!("private");
    }
    result
}

fn discover(state: &AppState) -> Value {
    json!({
        "supportedVersions": protocol::all_versions(),
        "capabilities": dispatch::capabilities(),
        "serverInfo": dispatch::server_info(state),
        "instructions": dispatch::instructions(state.upstream.registry(), state.config.tool_names),
        "_meta": {"io.modelcontextprotocol/serverInfo": dispatch::server_info(state)},
    })
}

/// An SSE answer whose closing by the client cancels the request (ST-07).
fn stream(
    state: Arc<AppState>,
    principal: String,
    headers: HeaderMap,
    id: Value,
    method: String,
    params: Value,
) -> Response {
    let Some(slot) = state.sessions.open_stream(Some(&principal)) else {
        return transport::too_many_streams(&state);
    };
    let log = EventLog::new(1, state.config.event_store_capacity);
    let reader = log.claim();
    let outbox = transport::pump_into(log.clone());
    // Cancelled when the client closes the stream; a drain lets the call finish.
    let cancel = CancellationToken::new();
    let task_cancel = cancel.clone();
    let task_state = state.clone();
    tokio::spawn(async move {
        let ctx = transport::context(ContextParts {
            state: &task_state,
            session: None,
            principal,
            headers: &headers,
            version: STATELESS_VERSION.to_string(),
            id: id.clone(),
            params: &params,
            cancel: task_cancel.clone(),
            outbox: Some(outbox.clone()),
        });
        transport::respond_on_stream(&ctx, &method, &params, |r| decorate(&method, r)).await;
    });
    let options = SseOptions {
        prime: false,
        preamble: None,
        retry: state.config.sse_retry,
        keepalive: state.config.sse_keepalive,
        response_apart: false,
    };
    let on_close: Box<dyn FnOnce() + Send> = Box::new(move || cancel.cancel());
    transport::sse_response(&state, slot, reader, 0, options, None, Some(on_close))
}

/// `subscriptions/listen`: one SSE stream of the notifications the client opted
/// in to (`params.notifications`), until the client closes it. The first frame
/// acknowledges the subscription with the filter honoured; every frame carries
/// `_meta["io.modelcontextprotocol/subscriptionId"]` = the listen request's id.
fn listen(state: Arc<AppState>, principal: &str, headers: HeaderMap, id: Value, params: Value) -> Response {
    let Some(slot) = state.sessions.open_stream(Some(principal)) else {
        return transport::too_many_streams(&state);
    };
    let filter = params.get("notifications").cloned().unwrap_or_else(|| json!({}));
    let wanted: Vec<String> = filter
        .get("resourceSubscriptions")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default();
    let list_changed = filter.get("resourcesListChanged").and_then(Value::as_bool) == Some(true);
    // Only what this server can deliver: no tool or prompt list changes happen.
    let mut honoured = serde_json::Map::new();
    if list_changed {
        honoured.insert("resourcesListChanged".into(), json!(true));
    }
    if !wanted.is_empty() {
        honoured.insert("resourceSubscriptions".into(), json!(wanted));
    }
    let tag = json!({SUBSCRIPTION_ID_KEY: id});
    let log = EventLog::new(1, state.config.event_store_capacity);
    let reader = log.claim();
    log.push(&jsonrpc::notification(
        "notifications/subscriptions/acknowledged",
        json!({"_meta": tag, "notifications": honoured}),
    ));
    let cancel = state.shutdown.child_token();
    let (task_state, task_log, task_cancel) = (state.clone(), log.clone(), cancel.clone());
    let call = transport::call_context(&headers);
    // The acknowledgement above may reach the client before the feed opens: the feed starts
    // from this moment, so that a change in between is announced too.
    let acknowledged = Instant::now();
    tokio::spawn(async move {
        let feed = async {
            let mut events = task_state.upstream.watch(call, Some(acknowledged)).await?;
            while let Some(event) = events.next().await {
                let event = event?;
                for uri in dispatch::updated_uris(&event.uris) {
                    if wanted.iter().any(|w| w == uri) {
                        task_log.push(&jsonrpc::notification(
                            "notifications/resources/updated",
                            json!({"uri": uri, "_meta": tag}),
                        ));
                    }
                }
                if list_changed && dispatch::lists_changed(event.kind) {
                    task_log
                        .push(&jsonrpc::notification("notifications/resources/list_changed", json!({"_meta": tag})));
                }
            }
            Ok::<(), CallError>(())
        };
        let ended = tokio::select! {
            () = task_cancel.cancelled() => None,
            outcome = feed => Some(outcome),
        };
        // The subscription's result ends it gracefully: the client closed it, or the server
        // drains (the service's feed ends then too) and the client should listen elsewhere.
        // A feed that failed while both go on is an error.
        let draining = task_state.shutdown.is_cancelled();
        if draining || task_cancel.is_cancelled() {
            task_log.push(&jsonrpc::result(&id, json!({"_meta": tag})));
        } else {
            let message = match ended {
                Some(Err(err)) => format!("the change feed failed: {err}"),
                _ => "the change feed ended".to_string(),
            };
            task_log.push(&jsonrpc::error(Some(&id), &RpcError::new(jsonrpc::INTERNAL_ERROR, message)));
        }
        if draining { task_log.finish_for_drain() } else { task_log.finish() }
    });
    let options = SseOptions {
        prime: false,
        preamble: None,
        retry: state.config.sse_retry,
        keepalive: state.config.sse_keepalive,
        response_apart: false,
    };
    let on_close: Box<dyn FnOnce() + Send> = Box::new(move || cancel.cancel());
    transport::sse_response(&state, slot, reader, 0, options, None, Some(on_close))
}

/// SEP-2243: a tools/call argument whose schema property has `x-mcp-header: H`
/// must also travel as `Mcp-Param-H` (plain, or `=?base64?…?=` with strict
/// Base64) with the same value; a missing, undecodable or different header is a
/// HeaderMismatch.
fn check_param_headers(state: &AppState, headers: &HeaderMap, params: &Value) -> Result<(), String> {
    let name = params.get("name").and_then(Value::as_str).unwrap_or("");
    let schema = match state.upstream.registry().get(name) {
        Some(tool) => tool.input_schema.clone(),
        None if state.config.conformance_fixtures => match super::fixtures::input_schema(name) {
            Some(schema) => schema,
            None => return Ok(()),
        },
        None => return Ok(()),
    };
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else { return Ok(()) };
    let args = params.get("arguments");
    for (param, def) in properties {
        let Some(suffix) = def.get("x-mcp-header").and_then(Value::as_str) else { continue };
        let Some(value) = args.and_then(|a| a.get(param)).filter(|v| !v.is_null()) else { continue };
        let expected = match value {
            Value::String(s) => s.clone(),
            Value::Number(_) | Value::Bool(_) => value.to_string(),
            _ => continue,
        };
        let header = format!("mcp-param-{}", suffix.to_ascii_lowercase());
        let Some(raw) = header_str(headers, &header) else {
            return Err(format!("Mcp-Param-{suffix} header is required when arguments.{param} is present"));
        };
        let got = decode_header(raw).ok_or_else(|| format!("Mcp-Param-{suffix} is not valid =?base64?…?= encoding"))?;
        if got != expected {
            return Err(format!("Mcp-Param-{suffix} header {got:?} must equal arguments.{param} {expected:?}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_the_era() {
        let modern =
            json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{META_VERSION_KEY: "2026-07-28"}}});
        assert!(is_stateless(&modern, None));
        let legacy = json!({"jsonrpc":"2.0","id":1,"method":"tools/list"});
        assert!(!is_stateless(&legacy, Some("2025-11-25")));
        assert!(is_stateless(&legacy, Some("2026-07-28")));
    }

    #[test]
    fn decodes_base64_header_values() {
        assert_eq!(decode_header("=?base64?dG9vbHMvY2FsbA==?=").as_deref(), Some("tools/call"));
        assert_eq!(decode_header("plain").as_deref(), Some("plain"));
    }
}
