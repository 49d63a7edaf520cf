//! MCP methods, the same for every transport and era. Transports build a
//! `RequestContext` and call `handle`; this module calls the service.
use std::{
    sync::{Arc, atomic::Ordering},
    time::Instant,
};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use futures_util::StreamExt;
use serde_json::{Value, json};

use super::{
    context::RequestContext,
    fixtures,
    jsonrpc::{self, RpcError},
    prompts, protocol,
    reply::{self, Reply},
    session::Session,
};
use crate::{
    AppState, ToolNames,
    error::{McpFailure, UpstreamError},
    upstream::{CallContext, CallError, Matches, Registry, ToolDef, ToolEvent},
    wire_json::JsonText,
};

/// Items per page of tools/list and resources/list.
const PAGE_SIZE: usize = 50;

/// Boxed with an explicit `Send` bound: transports spawn this future, and the
/// boxing pins down the lifetimes the compiler would otherwise fail to prove
/// `Send` for.
pub fn handle<'a>(
    ctx: &'a RequestContext,
    method: &'a str,
    params: &'a Value,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Reply, RpcError>> + Send + 'a>> {
    Box::pin(async move {
        match method {
            "tools/call" => tools_call(ctx, params).await,
            _ => handle_inner(ctx, method, params).await.map(Reply::Json),
        }
    })
}

async fn handle_inner(ctx: &RequestContext, method: &str, params: &Value) -> Result<Value, RpcError> {
    match method {
        "ping" => Ok(json!({})),
        "tools/list" => tools_list(ctx, params),
        "resources/list" => resources_list(ctx, params).await,
        "resources/templates/list" => {
            let (items, next) = page(&resource_templates(ctx), params)?;
            Ok(with_cursor(json!({"resourceTemplates": items}), next))
        }
        "resources/read" => resources_read(ctx, params).await,
        "resources/subscribe" => subscribe(ctx, params, true).await,
        "resources/unsubscribe" => subscribe(ctx, params, false).await,
        "prompts/list" => {
            let (items, next) = page(&prompt_list(ctx), params)?;
            Ok(with_cursor(json!({"prompts": items}), next))
        }
        "prompts/get" => prompts_get(ctx, params),
        "logging/setLevel" => set_level(ctx, params),
        "completion/complete" => complete(ctx, params).await,
        _ => Err(RpcError::method_not_found(method)),
    }
}

pub fn capabilities() -> Value {
    json!({
        "tools": {"listChanged": false},
        "resources": {"subscribe": true, "listChanged": true},
        "prompts": {"listChanged": false},
        "logging": {},
        "completions": {},
    })
}

pub fn server_info(state: &AppState) -> Value {
    json!({"name": state.config.server_name, "title": "Task MCP", "version": state.config.server_version})
}

/// What `initialize` and `server/discover` tell the model about the tools, naming them as
/// `tools/list` does.
pub fn instructions(registry: &Registry, names: ToolNames) -> String {
    const TEXT: &str = "Manage spec-driven changes in an OpenSpec workspace: change.open scaffolds a change \
and takes its lock, change.show and change.list read, task.update ticks checklist items, change.validate checks \
structure, change.archive validates and archives with a receipt. Read parts of a change as change://<slug>/proposal, \
/tasks, /delta/<path>, /receipt.";
    registry.name_tools(TEXT, names)
}

pub fn initialize_result(state: &AppState, version: &str) -> Value {
    json!({
        "protocolVersion": version,
        "capabilities": capabilities(),
        "serverInfo": server_info(state),
        "instructions": instructions(state.upstream.registry(), state.config.tool_names),
    })
}

fn page<T: Clone>(items: &[T], params: &Value) -> Result<(Vec<T>, Option<String>), RpcError> {
    let start = match params.get("cursor") {
        None | Some(Value::Null) => 0,
        Some(Value::String(c)) => STANDARD
            .decode(c)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.strip_prefix("o:").and_then(|n| n.parse::<usize>().ok()))
            .filter(|n| *n <= items.len())
            .ok_or_else(|| RpcError::invalid_params("invalid cursor"))?,
        Some(_) => return Err(RpcError::invalid_params("cursor must be a string")),
    };
    let end = (start + PAGE_SIZE).min(items.len());
    let next = (end < items.len()).then(|| STANDARD.encode(format!("o:{end}")));
    Ok((items[start..end].to_vec(), next))
}

fn with_cursor(mut result: Value, next: Option<String>) -> Value {
    if let Some(next) = next {
        result["nextCursor"] = json!(next);
    }
    result
}

pub fn tool_json(tool: &ToolDef, version: &str, names: ToolNames) -> Value {
    let mut t = json!({
        "name": tool.listed_name(names),
        "description": tool.description,
        "inputSchema": tool.input_schema,
        "annotations": {
            "readOnlyHint": tool.read_only,
            "destructiveHint": tool.destructive,
            "idempotentHint": tool.idempotent,
            "openWorldHint": false,
        },
    });
    if let Some(title) = &tool.title {
        t["title"] = json!(title);
        t["annotations"]["title"] = json!(title);
    }
    if protocol::has_structured_content(version) {
        t["outputSchema"] = tool.output_schema.clone();
    }
    t
}

fn tools_list(ctx: &RequestContext, params: &Value) -> Result<Value, RpcError> {
    let names = ctx.state.config.tool_names;
    let mut tools: Vec<Value> =
        ctx.state.upstream.registry().tools().iter().map(|t| tool_json(t, &ctx.protocol_version, names)).collect();
    if ctx.state.config.conformance_fixtures {
        tools.extend(fixtures::tools());
    }
    let (items, next) = page(&tools, params)?;
    Ok(with_cursor(json!({"tools": items}), next))
}

/// Whether answering a tools/call wants an SSE stream (notifications before the result).
pub fn call_wants_stream(state: &AppState, params: &Value) -> bool {
    let has_token = super::transport::progress_token(params).is_some();
    let name = params.get("name").and_then(Value::as_str).unwrap_or("");
    has_token || (state.config.conformance_fixtures && fixtures::wants_stream(name))
}

async fn tools_call(ctx: &RequestContext, params: &Value) -> Result<Reply, RpcError> {
    let name =
        params.get("name").and_then(Value::as_str).ok_or_else(|| RpcError::invalid_params("name is required"))?;
    let no_arguments = Value::Object(serde_json::Map::new());
    let args = params.get("arguments").unwrap_or(&no_arguments);
    if !args.is_object() {
        return Err(RpcError::invalid_params("arguments must be an object"));
    }
    if ctx.state.config.conformance_fixtures
        && let Some(result) = fixtures::call_tool_with_params(ctx, name, params).await
    {
        return result.map(Reply::Json);
    }
    let Some(tool) = ctx.state.upstream.registry().get(name) else {
        return Err(RpcError::invalid_params(format!("Unknown tool: {name}")));
    };
    let outcome = tokio::select! {
        outcome = run_tool(ctx, tool, args) => outcome,
        () = ctx.cancel.cancelled() => {
            // Dropping the call's future cancels the gRPC call. The service's writes are
            // atomic: the change is as before the call, or as after it when the call had
            // passed its commit point. No response goes out after a cancellation
            // (`transport::respond_on_stream`, `streamable::run`): this error only ends the call.
            return Err(RpcError::new(jsonrpc::SERVER_ERROR, "request cancelled"));
        }
    };
    match outcome {
        Ok(output) => {
            // `resource_link` blocks arrived with `structuredContent`, in 2025-06-18.
            let structured = protocol::has_structured_content(&ctx.protocol_version);
            let links = if structured { reply::links_in(&output, &tool.links) } else { Vec::new() };
            Ok(Reply::tool(output, structured, links))
        }
        Err(CallError::InvalidArguments(message)) => {
            Ok(Reply::Json(tool_error(format!("INVALID_ARGUMENTS: {message}"), None)))
        }
        Err(CallError::Upstream(err)) => upstream_to_tool_result(err).map(Reply::Json),
    }
}

/// The tool's output as JSON text.
async fn run_tool(ctx: &RequestContext, tool: &ToolDef, args: &Value) -> Result<JsonText, CallError> {
    let upstream = &ctx.state.upstream;
    if ctx.progress_token.is_none() || tool.stream_method.is_none() {
        return upstream.call_tool_escaped(tool, args, ctx.call.clone()).await;
    }
    let mut events = upstream.call_tool_streaming(tool, args, ctx.call.clone());
    while let Some(event) = events.next().await {
        match event? {
            ToolEvent::Progress { step, message, current, total } => {
                ctx.progress(f64::from(current), Some(f64::from(total)), Some(format!("{step}: {message}"))).await;
            }
            ToolEvent::Result(value) => {
                return JsonText::new(&value)
                    .map_err(|e| CallError::from(tonic::Status::internal(format!("encoding the result: {e}"))));
            }
        }
    }
    Err(CallError::Upstream(UpstreamError::from(tonic::Status::internal("stream ended without a result"))))
}

fn tool_error(text: String, details: Option<Value>) -> Value {
    let mut content = vec![json!({"type": "text", "text": text})];
    if let Some(details) = details {
        content.push(json!({"type": "text", "text": serde_json::to_string_pretty(&details).unwrap_or_default()}));
    }
    json!({"content": content, "isError": true})
}

fn upstream_to_tool_result(err: UpstreamError) -> Result<Value, RpcError> {
    match err.mcp_failure() {
        McpFailure::ToolError => Ok(tool_error(format!("{}: {}", err.reason, err.message), Some(err.rest_body()))),
        McpFailure::Protocol(code) => Err(upstream_rpc_error(code, err)),
    }
}

/// A protocol error carrying the service's reason, and its credential refusal when it is one.
fn upstream_rpc_error(code: i64, err: UpstreamError) -> RpcError {
    let mut rpc = RpcError::new(code, err.message.clone()).with_data(err.rest_body());
    if err.code == tonic::Code::Unauthenticated {
        rpc.credential_refused = Some(Box::new(jsonrpc::CredentialRefused { challenge: err.challenge }));
    }
    rpc
}

/// Pages through the service: the cursor is the service's page token, so a page
/// costs one page of work there, whatever the size of the workspace.
async fn resources_list(ctx: &RequestContext, params: &Value) -> Result<Value, RpcError> {
    let cursor = match params.get("cursor") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(c)) => c.clone(),
        Some(_) => return Err(RpcError::invalid_params("cursor must be a string")),
    };
    let listed = ctx.state.upstream.list_resources(PAGE_SIZE as u32, cursor, ctx.call.clone()).await.map_err(
        |err| match err {
            CallError::Upstream(u) if u.reason == "INVALID_PAGE_TOKEN" => RpcError::invalid_params("invalid cursor"),
            other => call_error(other),
        },
    )?;
    let mut resources: Vec<Value> = listed
        .resources
        .into_iter()
        .map(|r| {
            let mut resource = json!({"uri": r.uri, "name": r.name, "mimeType": r.mime_type});
            // 0 is "unknown" in the service's answer (`changes://active` is built on read);
            // sent as a size it would read as an empty resource.
            if r.size > 0 {
                resource["size"] = json!(r.size);
            }
            resource
        })
        .collect();
    let next = (!listed.next_page_token.is_empty()).then_some(listed.next_page_token);
    if next.is_none() && ctx.state.config.conformance_fixtures {
        resources.extend(fixtures::resources());
    }
    Ok(with_cursor(json!({"resources": resources}), next))
}

const DELTA_TEMPLATE: &str = "change://{slug}/delta/{+path}";

fn resource_templates(ctx: &RequestContext) -> Vec<Value> {
    let mut t = vec![
        json!({"uriTemplate": "change://{slug}/proposal", "name": "proposal", "title": "A change's proposal.md", "mimeType": "text/markdown"}),
        json!({"uriTemplate": "change://{slug}/tasks", "name": "tasks", "title": "A change's tasks.md", "mimeType": "text/markdown"}),
        json!({"uriTemplate": DELTA_TEMPLATE, "name": "delta", "title": "A spec delta under specs/", "mimeType": "text/markdown"}),
        json!({"uriTemplate": "change://{slug}/receipt", "name": "receipt", "title": "An archived change's receipt.json", "mimeType": "application/json"}),
    ];
    if ctx.state.config.conformance_fixtures {
        t.extend(fixtures::resource_templates());
    }
    t
}

async fn resources_read(ctx: &RequestContext, params: &Value) -> Result<Value, RpcError> {
    let uri = params.get("uri").and_then(Value::as_str).ok_or_else(|| RpcError::invalid_params("uri is required"))?;
    if ctx.state.config.conformance_fixtures
        && let Some(result) = fixtures::read_resource(ctx, uri).await
    {
        return result;
    }
    let content = ctx.state.upstream.read_resource(uri, ctx.call.clone()).await.map_err(|e| match e {
        CallError::Upstream(u) if u.code == tonic::Code::NotFound => {
            let code = if ctx.protocol_version == protocol::STATELESS_VERSION {
                jsonrpc::INVALID_PARAMS
            } else {
                jsonrpc::RESOURCE_NOT_FOUND
            };
            RpcError::new(code, format!("Resource not found: {uri}")).with_data(json!({"uri": uri}))
        }
        other => call_error(other),
    })?;
    let mut item = json!({"uri": content.uri, "mimeType": content.mime_type});
    match (content.text, content.blob) {
        (Some(text), _) => item["text"] = json!(text),
        (None, Some(blob)) => item["blob"] = json!(STANDARD.encode(blob)),
        (None, None) => item["text"] = json!(""),
    }
    Ok(json!({"contents": [item]}))
}

async fn subscribe(ctx: &RequestContext, params: &Value, on: bool) -> Result<Value, RpcError> {
    let uri = params.get("uri").and_then(Value::as_str).ok_or_else(|| RpcError::invalid_params("uri is required"))?;
    let Some(session) = &ctx.session else {
        return Err(RpcError::method_not_found("resources/subscribe (needs a session)"));
    };
    if on {
        session.subscribe(uri);
        // Waiting for the feed to open closes the gap a look back would cover.
        wait_until_open(ensure_watch(ctx.state.clone(), session.clone(), ctx.call.clone(), None)).await;
    } else {
        session.unsubscribe(uri);
    }
    Ok(json!({}))
}

/// Whether a change event (`ChangeEvent.kind`) adds or removes a resource: a change opened (1),
/// archived (4) or removed (5).
pub fn lists_changed(kind: i32) -> bool {
    matches!(kind, 1 | 4 | 5)
}

/// The resources a change event updates: its own URIs, and `changes://active`, whose every
/// entry shows its change's progress, lock and last update, so every event changes it.
/// Sessions and `subscriptions/listen` alike.
pub fn updated_uris(uris: &[String]) -> impl Iterator<Item = &str> {
    uris.iter().map(String::as_str).chain(std::iter::once("changes://active"))
}

/// Starts (once per session) the upstream change feed that turns workspace
/// events into `notifications/resources/updated` and `list_changed` on the
/// session's standalone stream: at the first subscription, or when that stream
/// is first opened, whichever comes first. It runs under the credential of the
/// request that started it (a session is bound to one principal) until the session ends.
///
/// Returns, when this call started the feed, a receiver that resolves once the
/// feed follows events (or gave up opening). A subscription waits on it (see
/// [`wait_until_open`]); a GET stream does not (see `streamable::get`): it passes
/// `listening_since`, the moment it answers, and the feed starts with the events since.
pub fn ensure_watch(
    state: Arc<AppState>,
    session: Arc<Session>,
    call: CallContext,
    listening_since: Option<Instant>,
) -> Option<tokio::sync::oneshot::Receiver<()>> {
    if session.watching.swap(true, Ordering::AcqRel) {
        return None;
    }
    let (opened, is_open) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        tokio::select! {
            () = session.closed.cancelled() => {}
            () = state.shutdown.cancelled() => {}
            () = follow_feed(&state, &session, call, opened, listening_since) => {}
        }
        session.watching.store(false, Ordering::Release);
    });
    Some(is_open)
}

/// Waits for a feed [`ensure_watch`] started to follow events, so that a client
/// that edits a change right after subscribing hears of the edit. An error means
/// the feed gave up or the session ended first; either way there is no more to
/// wait for. A service that does not answer costs the caller [`FEED_OPEN_BOUND`].
async fn wait_until_open(is_open: Option<tokio::sync::oneshot::Receiver<()>>) {
    if let Some(is_open) = is_open {
        let _ = tokio::time::timeout(FEED_OPEN_BOUND, is_open).await;
    }
}

/// How long a subscription waits for its change feed to open.
const FEED_OPEN_BOUND: std::time::Duration = std::time::Duration::from_secs(5);

/// The first wait before a dropped feed is reopened; it doubles per failed
/// attempt up to [`FEED_RETRY_MAX`].
const FEED_RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(250);
const FEED_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(10);

/// Follows the service's change feed for one session. A split deployment's
/// service restarts under a live gateway (each deploy of that tier), which
/// ends every feed: the feed is reopened with backoff for as long as the
/// session lives, and, since the events of the gap are lost, the session is
/// told to re-read (`list_changed`, and `updated` for every subscription).
/// Returns only when the service refuses the session's credential, which no
/// retry mends; a later subscription or GET starts the feed again.
async fn follow_feed(
    state: &AppState,
    session: &Session,
    call: CallContext,
    opened: tokio::sync::oneshot::Sender<()>,
    mut listening_since: Option<Instant>,
) {
    let mut opened = Some(opened);
    let mut delay = FEED_RETRY_FIRST;
    let mut gap = false;
    loop {
        // Boxed: the opening call is large, and held inline it would stay in every listening
        // session's task for as long as the feed runs (a stream's memory: 20.85 KiB, not 17).
        // Only the first attempt looks back: after a failed one the session is told to re-read.
        let why = match Box::pin(state.upstream.watch(call.clone(), listening_since.take())).await {
            Ok(mut events) => {
                if let Some(opened) = opened.take() {
                    let _ = opened.send(());
                }
                delay = FEED_RETRY_FIRST;
                if std::mem::take(&mut gap) {
                    tracing::info!(session = %session.id, "change feed reopened");
                    session
                        .notifications
                        .push(&jsonrpc::notification("notifications/resources/list_changed", json!({})));
                    for uri in session.subscriptions() {
                        notify_updated(session, &uri);
                    }
                }
                loop {
                    match events.next().await {
                        Some(Ok(event)) => deliver(session, &event),
                        Some(Err(err)) => break err.to_string(),
                        None => break "the service ended it".to_string(),
                    }
                }
            }
            Err(CallError::Upstream(err))
                if matches!(err.code, tonic::Code::Unauthenticated | tonic::Code::PermissionDenied) =>
            {
                tracing::warn!(session = %session.id, reason = %err.reason, "change feed refused; not retried");
                return;
            }
            Err(err) => err.to_string(),
        };
        // A first open that failed frees its waiter now; the feed goes on trying.
        drop(opened.take());
        if state.shutdown.is_cancelled() || session.closed.is_cancelled() {
            return;
        }
        // Once per outage, not once per attempt: a service that stays down
        // would otherwise log a line per session every few seconds.
        if !gap {
            tracing::warn!(session = %session.id, %why, "change feed lost; reopening");
        }
        gap = true;
        // Jitter spreads the sessions' reconnections after a restart.
        tokio::time::sleep(delay.mul_f64(0.5 + rand::random::<f64>() / 2.0)).await;
        delay = (delay * 2).min(FEED_RETRY_MAX);
    }
}

/// One change event as the session's notifications.
fn deliver(session: &Session, event: &crate::pb::ChangeEvent) {
    for uri in updated_uris(&event.uris) {
        if session.is_subscribed(uri) {
            notify_updated(session, uri);
        }
    }
    if lists_changed(event.kind) {
        session.notifications.push(&jsonrpc::notification("notifications/resources/list_changed", json!({})));
    }
}

fn notify_updated(session: &Session, uri: &str) {
    session.notifications.push(&jsonrpc::notification("notifications/resources/updated", json!({"uri": uri})));
}

fn prompts_get(ctx: &RequestContext, params: &Value) -> Result<Value, RpcError> {
    let name =
        params.get("name").and_then(Value::as_str).ok_or_else(|| RpcError::invalid_params("name is required"))?;
    if let Some(result) = prompts::get(name, params, ctx.state.upstream.registry(), ctx.state.config.tool_names) {
        return result;
    }
    if ctx.state.config.conformance_fixtures
        && let Some(result) = fixtures::get_prompt_with_params(name, params)
    {
        return result;
    }
    Err(RpcError::invalid_params(format!("Unknown prompt: {name}")))
}

fn set_level(ctx: &RequestContext, params: &Value) -> Result<Value, RpcError> {
    let level = params.get("level").and_then(Value::as_str).unwrap_or("");
    match &ctx.session {
        Some(session) if session.set_log_level(level) => Ok(json!({})),
        Some(_) => Err(RpcError::invalid_params(format!("invalid log level {level:?}"))),
        None => Err(RpcError::method_not_found("logging/setLevel")),
    }
}

/// The workflow's prompts, and the conformance fixtures' when they are served.
fn prompt_list(ctx: &RequestContext) -> Vec<Value> {
    let mut list = prompts::list();
    if ctx.state.config.conformance_fixtures {
        list.extend(fixtures::prompts());
    }
    list
}

async fn complete(ctx: &RequestContext, params: &Value) -> Result<Value, RpcError> {
    let reference = params.get("ref").cloned().unwrap_or_default();
    let argument = params.get("argument").cloned().unwrap_or_default();
    let Some(name) = argument.get("name").and_then(Value::as_str) else {
        return Err(RpcError::invalid_params("argument.name is required"));
    };
    let value = argument.get("value").and_then(Value::as_str).unwrap_or("");
    // What the completion spec asks: an unknown prompt, or a reference that names nothing,
    // is invalid params rather than an empty answer.
    match reference.get("type").and_then(Value::as_str) {
        Some("ref/resource") if reference.get("uri").is_some_and(Value::is_string) => {}
        Some("ref/prompt") => {
            let prompt = reference.get("name").and_then(Value::as_str).unwrap_or("");
            if !prompt_list(ctx).iter().any(|p| p["name"] == prompt) {
                return Err(RpcError::invalid_params(format!("Unknown prompt: {prompt}")));
            }
        }
        _ => return Err(RpcError::invalid_params("ref must be a ref/prompt with a name or a ref/resource with a uri")),
    }
    let template = match reference.get("type").and_then(Value::as_str) {
        Some("ref/resource") => reference.get("uri").and_then(Value::as_str).unwrap_or(""),
        _ => "",
    };
    let prompt = match reference.get("type").and_then(Value::as_str) {
        Some("ref/prompt") => reference.get("name").and_then(Value::as_str).unwrap_or(""),
        _ => "",
    };
    let slug = (template.starts_with("change://{slug}") && name == "slug") || prompts::completes_slug(prompt, name);
    let found = if slug {
        ctx.state.upstream.slugs_with_prefix(value, ctx.call.clone()).await.map_err(call_error)?
    } else if template == DELTA_TEMPLATE && name == "path" {
        // The slug comes from the arguments the client has already resolved (`context`).
        let slug = params.pointer("/context/arguments/slug").and_then(Value::as_str).unwrap_or("");
        match ctx.state.upstream.delta_paths_with_prefix(slug, value, ctx.call.clone()).await {
            Ok(found) => found,
            // No slug yet, or one that names no change: nothing to offer, not a fault.
            Err(CallError::Upstream(u)) if u.code == tonic::Code::InvalidArgument => {
                Matches { values: vec![], total: Some(0) }
            }
            Err(err) => return Err(call_error(err)),
        }
    } else {
        let values =
            if ctx.state.config.conformance_fixtures { fixtures::complete(&reference, name, value) } else { vec![] };
        Matches { total: Some(values.len()), values }
    };
    let mut completion = json!({"values": found.values});
    completion["hasMore"] = json!(found.total.is_none_or(|total| total > found.values.len()));
    if let Some(total) = found.total {
        completion["total"] = json!(total);
    }
    Ok(json!({"completion": completion}))
}

/// Errors of non-tool methods: protocol errors carrying the service's reason.
fn call_error(err: CallError) -> RpcError {
    match err {
        CallError::InvalidArguments(m) => RpcError::invalid_params(m),
        CallError::Upstream(u) => {
            let code = match u.code {
                tonic::Code::InvalidArgument | tonic::Code::NotFound | tonic::Code::FailedPrecondition => {
                    jsonrpc::INVALID_PARAMS
                }
                tonic::Code::Internal | tonic::Code::Unknown | tonic::Code::DataLoss => jsonrpc::INTERNAL_ERROR,
                _ => jsonrpc::SERVER_ERROR,
            };
            upstream_rpc_error(code, u)
        }
    }
}

#[cfg(test)]
mod tests {
    use prost_reflect::DescriptorPool;

    use super::*;

    #[test]
    fn the_instructions_name_every_tool_as_tools_list_does() {
        let pool = DescriptorPool::decode(crate::pb::FILE_DESCRIPTOR_SET).expect("embedded descriptors");
        let registry = Registry::from_pool(&pool).expect("registry");
        for names in [ToolNames::Dotted, ToolNames::Underscored] {
            let text = instructions(&registry, names);
            for tool in registry.tools() {
                let (listed, other) = match names {
                    ToolNames::Dotted => (&tool.name, &tool.underscored_name),
                    ToolNames::Underscored => (&tool.underscored_name, &tool.name),
                };
                assert!(text.contains(listed.as_str()), "{names:?}: {listed} is not named in {text:?}");
                assert!(!text.contains(other.as_str()), "{names:?}: {other} is named in {text:?}");
            }
        }
    }
}
