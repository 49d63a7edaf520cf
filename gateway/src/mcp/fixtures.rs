//! The MCP conformance suite's fixture tools, resources and prompts
//! (`@modelcontextprotocol/conformance`), served only with
//! `--conformance-fixtures`. Names, payloads and behaviour follow the suite's
//! scenario descriptions (`src/scenarios/server/*.ts`) and its reference
//! server (`examples/servers/typescript/everything-server.ts`).
//!
//! Two groups:
//! - the session-era fixtures (2025-06-18 / 2025-11-25): content types,
//!   logging, progress, errors, sampling and elicitation sent to the client on
//!   the call's own SSE stream, a JSON Schema 2020-12 tool, resources and prompts;
//! - the stateless-era fixtures (2026-07-28): `test_missing_capability`,
//!   `test_logging_tool`, `test_streaming_elicitation`, `test_custom_headers`
//!   (a parameter annotated `x-mcp-header`, SEP-2243; the gateway checks the
//!   `Mcp-Param-*` header, see [`input_schema`]) and the MRTR
//!   (`InputRequiredResult`, SEP-2322) tools and prompt. These read
//!   `params.inputResponses`, `params.requestState` and `params._meta`, so they
//!   need the whole request `params`: dispatch must call
//!   [`call_tool_with_params`] and [`get_prompt_with_params`]; the older
//!   [`call_tool`] / [`get_prompt`] only see the arguments, and through them a
//!   stateless request looks as if it declared no client capability.
//!
//! `requestState` is opaque to the client and integrity-protected here: the
//! state is JSON, base64url-encoded, followed by a keyed hash (SipHash from
//! std's `RandomState`, keyed once per process from OS randomness). A state
//! that fails the check is a protocol error (-32602).
use std::{collections::hash_map::RandomState, hash::BuildHasher, sync::OnceLock, time::Duration};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Value, json};

use super::{
    context::RequestContext,
    jsonrpc::{self, RpcError},
    protocol,
    session::level_rank,
};

/// A 1x1 red PNG.
pub const TEST_IMAGE_BASE64: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";
/// A minimal WAV file (44-byte header, two bytes of samples).
pub const TEST_AUDIO_BASE64: &str = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA=";

/// How long a fixture waits for the client to answer sampling or elicitation.
const CLIENT_ANSWER_BOUND: Duration = Duration::from_secs(30);
/// The pause between notifications the scenarios ask for ("~50ms").
const STEP: Duration = Duration::from_millis(50);

const META_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
const META_LOG_LEVEL: &str = "io.modelcontextprotocol/logLevel";

// ------------------------------------------------------------------ tools

fn no_args() -> Value {
    json!({"type": "object", "properties": {}})
}

fn tool(name: &str, description: &str, input_schema: Value) -> Value {
    json!({"name": name, "description": description, "inputSchema": input_schema})
}

/// SEP-1613 / SEP-2106: a raw JSON Schema 2020-12 input schema whose keywords
/// (`$schema`, `$defs`, `$anchor`, composition, conditionals,
/// `additionalProperties`) must survive `tools/list` untouched.
fn json_schema_2020_12() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "$defs": {
            "address": {
                "$anchor": "addressDef",
                "type": "object",
                "properties": {"street": {"type": "string"}, "city": {"type": "string"}}
            }
        },
        "properties": {
            "name": {"type": "string"},
            "address": {"$ref": "#/$defs/address"},
            "contactMethod": {"type": "string", "enum": ["phone", "email"]},
            "phone": {"type": "string"},
            "email": {"type": "string"}
        },
        "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
        "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
        "then": {"required": ["phone"]},
        "else": {"required": ["email"]},
        "additionalProperties": false
    })
}

pub fn tools() -> Vec<Value> {
    vec![
        tool("test_simple_text", "Tests simple text content response", no_args()),
        tool("test_image_content", "Tests image content response", no_args()),
        tool("test_audio_content", "Tests audio content response", no_args()),
        tool("test_embedded_resource", "Tests embedded resource content response", no_args()),
        tool(
            "test_multiple_content_types",
            "Tests response with multiple content types (text, image, resource)",
            no_args(),
        ),
        tool("test_tool_with_logging", "Tests tool that emits log messages during execution", no_args()),
        tool("test_tool_with_progress", "Tests tool that reports progress notifications", no_args()),
        tool("test_error_handling", "Tests error response handling", no_args()),
        tool("test_reconnection", "Tests SSE stream disconnection and client reconnection (SEP-1699)", no_args()),
        tool(
            "test_sampling",
            "Tests server-initiated sampling (LLM completion request)",
            json!({
                "type": "object",
                "properties": {"prompt": {"type": "string", "description": "The prompt to send to the LLM"}},
                "required": ["prompt"]
            }),
        ),
        tool(
            "test_elicitation",
            "Tests server-initiated elicitation (user input request)",
            json!({
                "type": "object",
                "properties": {"message": {"type": "string", "description": "The message to show the user"}},
                "required": ["message"]
            }),
        ),
        tool("test_elicitation_sep1034_defaults", "Tests elicitation with default values per SEP-1034", no_args()),
        tool(
            "test_elicitation_sep1330_enums",
            "Tests elicitation with enum schema improvements per SEP-1330",
            no_args(),
        ),
        tool(
            "json_schema_2020_12_tool",
            "Tool with JSON Schema 2020-12 features for conformance testing (SEP-1613)",
            json_schema_2020_12(),
        ),
        // 2026-07-28 (stateless) fixtures.
        tool("test_missing_capability", "Test tool requiring the sampling client capability", no_args()),
        tool("test_logging_tool", "Logs only when the request sets a log level in _meta", no_args()),
        tool(
            "test_streaming_elicitation",
            "Answers on a response stream that carries only notifications and the result",
            no_args(),
        ),
        tool(
            CUSTOM_HEADERS,
            "SEP-2243: `region` travels in the Mcp-Param-Region header too, which must match the body",
            json!({
                "type": "object",
                "properties": {
                    "region": {"type": "string", "description": "Any region name", "x-mcp-header": "Region"}
                },
                "required": ["region"]
            }),
        ),
        tool(MRTR_ELICITATION, "MRTR: returns InputRequiredResult with an elicitation request", no_args()),
        tool(MRTR_SAMPLING, "MRTR: returns InputRequiredResult with a sampling request", no_args()),
        tool(MRTR_LIST_ROOTS, "MRTR: returns InputRequiredResult with a roots/list request", no_args()),
        tool(MRTR_REQUEST_STATE, "MRTR: returns InputRequiredResult with requestState", no_args()),
        tool(MRTR_MULTIPLE, "MRTR: returns InputRequiredResult with multiple input requests", no_args()),
        tool(MRTR_MULTI_ROUND, "MRTR: multi-round InputRequiredResult workflow", no_args()),
        tool(MRTR_TAMPERED, "MRTR: integrity-protected requestState", no_args()),
        tool(MRTR_CAPABILITIES, "MRTR: asks only for what the client's capabilities allow", no_args()),
    ]
}

/// A fixture tool's `inputSchema`, e.g. for the gateway to find the
/// parameters annotated with `x-mcp-header` (SEP-2243) before calling it.
pub fn input_schema(name: &str) -> Option<Value> {
    tools().into_iter().find(|t| t["name"] == name).map(|t| t["inputSchema"].clone())
}

/// Tools that send notifications or requests before their result, so the
/// answer must be an SSE stream.
pub fn wants_stream(name: &str) -> bool {
    matches!(
        name,
        "test_tool_with_logging"
            | "test_tool_with_progress"
            | "test_reconnection"
            | "test_sampling"
            | "test_elicitation"
            | "test_elicitation_sep1034_defaults"
            | "test_elicitation_sep1330_enums"
            | "test_logging_tool"
            | "test_streaming_elicitation"
    )
}

fn text(text: impl Into<String>) -> Value {
    json!({"type": "text", "text": text.into()})
}

fn text_result(message: impl Into<String>) -> Value {
    json!({"content": [text(message)]})
}

fn error_result(message: impl Into<String>) -> Value {
    json!({"content": [text(message)], "isError": true})
}

/// Calls a fixture tool with only its arguments (no MRTR input, no `_meta`).
pub async fn call_tool(ctx: &RequestContext, name: &str, args: &Value) -> Option<Result<Value, RpcError>> {
    call_tool_with_params(ctx, name, &json!({"name": name, "arguments": args})).await
}

/// Calls a fixture tool with the request's whole `params` (`arguments`,
/// `_meta`, and for MRTR `inputResponses` and `requestState`). `None` when
/// `name` is not a fixture.
pub async fn call_tool_with_params(
    ctx: &RequestContext,
    name: &str,
    params: &Value,
) -> Option<Result<Value, RpcError>> {
    let empty = json!({});
    let args = params.get("arguments").filter(|a| a.is_object()).unwrap_or(&empty);
    let result = match name {
        "test_simple_text" => Ok(text_result("This is a simple text response for testing.")),
        "test_image_content" => {
            Ok(json!({"content": [{"type": "image", "data": TEST_IMAGE_BASE64, "mimeType": "image/png"}]}))
        }
        "test_audio_content" => {
            Ok(json!({"content": [{"type": "audio", "data": TEST_AUDIO_BASE64, "mimeType": "audio/wav"}]}))
        }
        "test_embedded_resource" => Ok(json!({"content": [{
            "type": "resource",
            "resource": {
                "uri": "test://embedded-resource",
                "mimeType": "text/plain",
                "text": "This is an embedded resource content."
            }
        }]})),
        "test_multiple_content_types" => Ok(json!({"content": [
            text("Multiple content types test:"),
            {"type": "image", "data": TEST_IMAGE_BASE64, "mimeType": "image/png"},
            {
                "type": "resource",
                "resource": {
                    "uri": "test://mixed-content-resource",
                    "mimeType": "application/json",
                    "text": json!({"test": "data", "value": 123}).to_string()
                }
            }
        ]})),
        "test_tool_with_logging" => Ok(with_logging(ctx, params).await),
        "test_tool_with_progress" => Ok(with_progress(ctx).await),
        "test_error_handling" => Ok(error_result("This tool intentionally returns an error for testing")),
        "test_reconnection" => {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(text_result(
                "Reconnection test completed successfully. If you received this, the client properly \
                 reconnected after stream closure.",
            ))
        }
        "test_sampling" => Ok(sampling(ctx, args).await),
        "test_elicitation" => {
            let message = args.get("message").and_then(Value::as_str).unwrap_or("Please provide your information");
            Ok(elicit(ctx, "User response", elicitation_basic(message)).await)
        }
        "test_elicitation_sep1034_defaults" => Ok(elicit(ctx, "Elicitation completed", elicitation_defaults()).await),
        "test_elicitation_sep1330_enums" => Ok(elicit(ctx, "Elicitation completed", elicitation_enums()).await),
        "json_schema_2020_12_tool" => {
            Ok(text_result(format!("JSON Schema 2020-12 tool called with: {}", Value::Object(args_object(args)))))
        }
        CUSTOM_HEADERS => match args.get("region").and_then(Value::as_str) {
            Some(region) => Ok(text_result(format!("Region: {region}"))),
            None => Err(RpcError::invalid_params("region (a string) is required")),
        },
        "test_missing_capability" => missing_capability(params),
        "test_logging_tool" => Ok(logging_tool(ctx, params).await),
        "test_streaming_elicitation" => {
            ctx.progress(100.0, Some(100.0), Some("streamed".to_string())).await;
            Ok(text_result("Streaming complete"))
        }
        _ => return mrtr_tool(name, params),
    };
    Some(result)
}

fn args_object(args: &Value) -> serde_json::Map<String, Value> {
    args.as_object().cloned().unwrap_or_default()
}

/// The log level a request allows, if any: the session's (`logging/setLevel`)
/// in the session eras, `_meta["io.modelcontextprotocol/logLevel"]` in
/// 2026-07-28, where a request without it gets no log messages at all.
fn allows_log(ctx: &RequestContext, params: &Value, level: &str) -> bool {
    if ctx.session.is_some() {
        return true; // RequestContext::log applies the session's level.
    }
    let Some(min) = params.get("_meta").and_then(|m| m.get(META_LOG_LEVEL)).and_then(Value::as_str) else {
        return false;
    };
    matches!((level_rank(level), level_rank(min)), (Some(l), Some(m)) if l >= m)
}

async fn log(ctx: &RequestContext, params: &Value, level: &str, data: &str) {
    if allows_log(ctx, params, level) {
        ctx.log(level, Some("conformance-fixtures"), json!(data)).await;
    }
}

async fn with_logging(ctx: &RequestContext, params: &Value) -> Value {
    log(ctx, params, "info", "Tool execution started").await;
    tokio::time::sleep(STEP).await;
    log(ctx, params, "info", "Tool processing data").await;
    tokio::time::sleep(STEP).await;
    log(ctx, params, "info", "Tool execution completed").await;
    text_result("Tool with logging executed successfully")
}

async fn with_progress(ctx: &RequestContext) -> Value {
    for (i, step) in [0.0, 50.0, 100.0].into_iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(STEP).await;
        }
        ctx.progress(step, Some(100.0), Some(format!("Completed step {step} of 100"))).await;
    }
    let token = match &ctx.progress_token {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => "no progress token".to_string(),
    };
    text_result(token)
}

async fn logging_tool(ctx: &RequestContext, params: &Value) -> Value {
    log(ctx, params, "info", "Diagnostic trace logging activated").await;
    text_result("Logging evaluated")
}

async fn sampling(ctx: &RequestContext, args: &Value) -> Value {
    let prompt = args.get("prompt").and_then(Value::as_str).unwrap_or("Test prompt for sampling");
    let request = json!({
        "messages": [{"role": "user", "content": {"type": "text", "text": prompt}}],
        "maxTokens": 100
    });
    match ctx.request_client("sampling/createMessage", request, CLIENT_ANSWER_BOUND).await {
        Ok(answer) => {
            let reply = answer
                .get("content")
                .and_then(|c| c.get("text"))
                .and_then(Value::as_str)
                .unwrap_or("No response")
                .to_string();
            text_result(format!("LLM response: {reply}"))
        }
        Err(err) => error_result(format!("Sampling failed: {}", err.message)),
    }
}

async fn elicit(ctx: &RequestContext, label: &str, request: Value) -> Value {
    match ctx.request_client("elicitation/create", request, CLIENT_ANSWER_BOUND).await {
        Ok(answer) => {
            let action = answer.get("action").and_then(Value::as_str).unwrap_or("unknown");
            let content = answer.get("content").cloned().unwrap_or_else(|| json!({}));
            text_result(format!("{label}: action={action}, content={content}"))
        }
        Err(err) => error_result(format!("Elicitation failed: {}", err.message)),
    }
}

fn elicitation_basic(message: &str) -> Value {
    json!({
        "message": message,
        "requestedSchema": {
            "type": "object",
            "properties": {
                "username": {"type": "string", "description": "User's response"},
                "email": {"type": "string", "description": "User's email address"}
            },
            "required": ["username", "email"]
        }
    })
}

/// SEP-1034: a default for every primitive type.
fn elicitation_defaults() -> Value {
    json!({
        "message": "Please review and update the form fields with defaults",
        "requestedSchema": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "description": "User name", "default": "John Doe"},
                "age": {"type": "integer", "description": "User age", "default": 30},
                "score": {"type": "number", "description": "User score", "default": 95.5},
                "status": {
                    "type": "string",
                    "description": "User status",
                    "enum": ["active", "inactive", "pending"],
                    "default": "active"
                },
                "verified": {"type": "boolean", "description": "Verification status", "default": true}
            },
            "required": []
        }
    })
}

/// SEP-1330: the five enum shapes.
fn elicitation_enums() -> Value {
    json!({
        "message": "Please select options from the enum fields",
        "requestedSchema": {
            "type": "object",
            "properties": {
                "untitledSingle": {
                    "type": "string",
                    "description": "Select one option",
                    "enum": ["option1", "option2", "option3"]
                },
                "titledSingle": {
                    "type": "string",
                    "description": "Select one option with titles",
                    "oneOf": [
                        {"const": "value1", "title": "First Option"},
                        {"const": "value2", "title": "Second Option"},
                        {"const": "value3", "title": "Third Option"}
                    ]
                },
                "legacyEnum": {
                    "type": "string",
                    "description": "Select one option (legacy)",
                    "enum": ["opt1", "opt2", "opt3"],
                    "enumNames": ["Option One", "Option Two", "Option Three"]
                },
                "untitledMulti": {
                    "type": "array",
                    "description": "Select multiple options",
                    "minItems": 1,
                    "maxItems": 3,
                    "items": {"type": "string", "enum": ["option1", "option2", "option3"]}
                },
                "titledMulti": {
                    "type": "array",
                    "description": "Select multiple options with titles",
                    "minItems": 1,
                    "maxItems": 3,
                    "items": {
                        "anyOf": [
                            {"const": "value1", "title": "First Choice"},
                            {"const": "value2", "title": "Second Choice"},
                            {"const": "value3", "title": "Third Choice"}
                        ]
                    }
                }
            },
            "required": []
        }
    })
}

// ------------------------------------------------------------------ 2026-07-28: capabilities and MRTR

const CUSTOM_HEADERS: &str = "test_custom_headers";
const MRTR_ELICITATION: &str = "test_input_required_result_elicitation";
const MRTR_SAMPLING: &str = "test_input_required_result_sampling";
const MRTR_LIST_ROOTS: &str = "test_input_required_result_list_roots";
const MRTR_REQUEST_STATE: &str = "test_input_required_result_request_state";
const MRTR_MULTIPLE: &str = "test_input_required_result_multiple_inputs";
const MRTR_MULTI_ROUND: &str = "test_input_required_result_multi_round";
const MRTR_TAMPERED: &str = "test_input_required_result_tampered_state";
const MRTR_CAPABILITIES: &str = "test_input_required_result_capabilities";
const MRTR_PROMPT: &str = "test_input_required_result_prompt";

/// The capabilities the request declares in `_meta` (2026-07-28).
fn client_capabilities(params: &Value) -> Option<&serde_json::Map<String, Value>> {
    params.get("_meta")?.get(META_CAPABILITIES)?.as_object()
}

fn declares(params: &Value, capability: &str) -> bool {
    client_capabilities(params).is_some_and(|caps| caps.get(capability).is_some_and(Value::is_object))
}

/// -32021: the request needs a client capability it did not declare. `data`
/// names the missing ones as a `ClientCapabilities` object.
fn missing_capabilities(names: &[&str]) -> RpcError {
    let required: serde_json::Map<String, Value> = names.iter().map(|n| ((*n).to_string(), json!({}))).collect();
    RpcError::new(jsonrpc::MISSING_CAPABILITY, format!("Missing required client capability: {}", names.join(", ")))
        .with_data(json!({"requiredCapabilities": required}))
}

fn missing_capability(params: &Value) -> Result<Value, RpcError> {
    if declares(params, "sampling") { Ok(text_result("Success")) } else { Err(missing_capabilities(&["sampling"])) }
}

/// The client capability an input request's method needs.
fn capability_for(method: &str) -> &'static str {
    match method {
        "sampling/createMessage" => "sampling",
        "roots/list" => "roots",
        _ => "elicitation",
    }
}

/// Checks that the client declared what `requests` (an `inputRequests` map) needs.
fn require_capabilities_for(params: &Value, requests: &Value) -> Result<(), RpcError> {
    let mut missing: Vec<&str> = Vec::new();
    for request in requests.as_object().into_iter().flat_map(|m| m.values()) {
        let needed = capability_for(request.get("method").and_then(Value::as_str).unwrap_or(""));
        if !declares(params, needed) && !missing.contains(&needed) {
            missing.push(needed);
        }
    }
    if missing.is_empty() { Ok(()) } else { Err(missing_capabilities(&missing)) }
}

fn input_required(requests: Value, state: Option<Value>) -> Value {
    let mut result = json!({"resultType": "input_required", "inputRequests": requests});
    if let Some(state) = state {
        result["requestState"] = json!(seal_state(&state));
    }
    result
}

fn elicit_request(message: &str, field: &str, field_type: &str) -> Value {
    json!({
        "method": "elicitation/create",
        "params": {
            "message": message,
            "requestedSchema": {
                "type": "object",
                "properties": {field: {"type": field_type}},
                "required": [field]
            }
        }
    })
}

fn sampling_request(prompt: &str, max_tokens: u32) -> Value {
    json!({
        "method": "sampling/createMessage",
        "params": {
            "messages": [{"role": "user", "content": {"type": "text", "text": prompt}}],
            "maxTokens": max_tokens
        }
    })
}

fn roots_request() -> Value {
    json!({"method": "roots/list", "params": {}})
}

/// The client's answers. Absent is fine (first round); present but not an
/// object is a protocol error.
fn input_responses(params: &Value) -> Result<Option<&serde_json::Map<String, Value>>, RpcError> {
    match params.get("inputResponses") {
        None => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(_) => Err(RpcError::invalid_params("inputResponses must be an object of input responses")),
    }
}

/// The verified `requestState`, if the client echoed one. A state that fails
/// the integrity check is a protocol error.
fn request_state(params: &Value) -> Result<Option<Value>, RpcError> {
    match params.get("requestState") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(sealed)) => {
            open_state(sealed).map(Some).ok_or_else(|| RpcError::invalid_params("requestState integrity check failed"))
        }
        Some(_) => Err(RpcError::invalid_params("requestState must be a string")),
    }
}

/// An accepted elicitation answer's string field.
fn elicited<'a>(responses: Option<&'a serde_json::Map<String, Value>>, key: &str, field: &str) -> Option<&'a Value> {
    let answer = responses?.get(key)?;
    if answer.get("action").and_then(Value::as_str) != Some("accept") {
        return None;
    }
    answer.get("content")?.get(field)
}

fn sampled_text<'a>(responses: Option<&'a serde_json::Map<String, Value>>, key: &str) -> Option<&'a str> {
    responses?.get(key)?.get("content")?.get("text")?.as_str()
}

fn listed_roots(responses: Option<&serde_json::Map<String, Value>>, key: &str) -> Option<usize> {
    Some(responses?.get(key)?.get("roots")?.as_array()?.len())
}

/// The MRTR tools; `None` when `name` is not one of them.
fn mrtr_tool(name: &str, params: &Value) -> Option<Result<Value, RpcError>> {
    let run = match name {
        MRTR_ELICITATION => mrtr_elicitation,
        MRTR_SAMPLING => mrtr_sampling,
        MRTR_LIST_ROOTS => mrtr_list_roots,
        MRTR_REQUEST_STATE => mrtr_request_state,
        MRTR_MULTIPLE => mrtr_multiple,
        MRTR_MULTI_ROUND => mrtr_multi_round,
        MRTR_TAMPERED => mrtr_tampered,
        MRTR_CAPABILITIES => mrtr_capabilities,
        _ => return None,
    };
    Some(run(params))
}

/// Asks again for `requests` unless the client cannot answer them.
fn ask(params: &Value, requests: Value, state: Option<Value>) -> Result<Value, RpcError> {
    require_capabilities_for(params, &requests)?;
    Ok(input_required(requests, state))
}

fn mrtr_elicitation(params: &Value) -> Result<Value, RpcError> {
    let responses = input_responses(params)?;
    match elicited(responses, "user_name", "name").and_then(Value::as_str) {
        Some(name) => Ok(text_result(format!("Hello, {name}!"))),
        None => ask(params, json!({"user_name": elicit_request("What is your name?", "name", "string")}), None),
    }
}

fn mrtr_sampling(params: &Value) -> Result<Value, RpcError> {
    let responses = input_responses(params)?;
    match sampled_text(responses, "capital_question") {
        Some(answer) => Ok(text_result(format!("Sampling result: {answer}"))),
        None => ask(params, json!({"capital_question": sampling_request("What is the capital of France?", 100)}), None),
    }
}

fn mrtr_list_roots(params: &Value) -> Result<Value, RpcError> {
    let responses = input_responses(params)?;
    match listed_roots(responses, "client_roots") {
        Some(n) => Ok(text_result(format!("Found {n} root(s)"))),
        None => ask(params, json!({"client_roots": roots_request()}), None),
    }
}

fn confirm_request() -> Value {
    elicit_request("Please confirm", "ok", "boolean")
}

fn mrtr_request_state(params: &Value) -> Result<Value, RpcError> {
    let responses = input_responses(params)?;
    let state = request_state(params)?;
    let valid_state = state.as_ref().is_some_and(|s| s.get("kind").and_then(Value::as_str) == Some("request-state"));
    if valid_state && elicited(responses, "confirm", "ok") == Some(&json!(true)) {
        return Ok(text_result("state-ok: requestState validated"));
    }
    ask(params, json!({"confirm": confirm_request()}), Some(json!({"kind": "request-state"})))
}

fn mrtr_multiple(params: &Value) -> Result<Value, RpcError> {
    let responses = input_responses(params)?;
    let state = request_state(params)?;
    let valid_state = state.as_ref().is_some_and(|s| s.get("kind").and_then(Value::as_str) == Some("multiple-inputs"));
    let name = elicited(responses, "user_name", "name").and_then(Value::as_str);
    let greeting = sampled_text(responses, "greeting");
    let roots = listed_roots(responses, "client_roots");
    if let (true, Some(name), Some(greeting), Some(roots)) = (valid_state, name, greeting, roots) {
        return Ok(text_result(format!("Name: {name}; Greeting: {greeting}; Roots: {roots}")));
    }
    ask(
        params,
        json!({
            "user_name": elicit_request("What is your name?", "name", "string"),
            "greeting": sampling_request("Generate a greeting", 50),
            "client_roots": roots_request()
        }),
        Some(json!({"kind": "multiple-inputs"})),
    )
}

fn mrtr_multi_round(params: &Value) -> Result<Value, RpcError> {
    let responses = input_responses(params)?;
    let state = request_state(params)?;
    let round = state.as_ref().and_then(|s| s.get("round")).and_then(Value::as_u64);
    let step1 = || json!({"step1": elicit_request("Step 1: What is your name?", "name", "string")});
    match round {
        Some(1) => match elicited(responses, "step1", "name").and_then(Value::as_str) {
            Some(name) => ask(
                params,
                json!({"step2": elicit_request("Step 2: What is your favorite color?", "color", "string")}),
                Some(json!({"round": 2, "name": name})),
            ),
            None => ask(params, step1(), Some(json!({"round": 1}))),
        },
        Some(2) => {
            let name = state.as_ref().and_then(|s| s.get("name")).and_then(Value::as_str).unwrap_or("friend");
            match elicited(responses, "step2", "color").and_then(Value::as_str) {
                Some(color) => Ok(text_result(format!("Multi-round complete for {name} who likes {color}"))),
                None => ask(
                    params,
                    json!({"step2": elicit_request("Step 2: What is your favorite color?", "color", "string")}),
                    state.clone(),
                ),
            }
        }
        _ => ask(params, step1(), Some(json!({"round": 1}))),
    }
}

fn mrtr_tampered(params: &Value) -> Result<Value, RpcError> {
    let responses = input_responses(params)?;
    let state = request_state(params)?;
    let valid_state = state.as_ref().is_some_and(|s| s.get("kind").and_then(Value::as_str) == Some("tamper-test"));
    if valid_state && elicited(responses, "confirm", "ok").is_some() {
        return Ok(text_result("integrity-ok: state verified"));
    }
    ask(params, json!({"confirm": confirm_request()}), Some(json!({"kind": "tamper-test"})))
}

/// Asks only for what the declared capabilities allow.
fn mrtr_capabilities(params: &Value) -> Result<Value, RpcError> {
    let responses = input_responses(params)?;
    request_state(params)?;
    if let Some(responses) = responses.filter(|r| !r.is_empty()) {
        let keys: Vec<&str> = responses.keys().map(String::as_str).collect();
        return Ok(text_result(format!("capabilities-ok: received {}", keys.join(","))));
    }
    let mut requests = serde_json::Map::new();
    if declares(params, "elicitation") {
        requests.insert("elicit_input".to_string(), elicit_request("Elicitation input", "value", "string"));
    }
    if declares(params, "sampling") {
        requests.insert("sample_input".to_string(), sampling_request("Sample request", 50));
    }
    if requests.is_empty() {
        return Ok(text_result("No supported capabilities declared"));
    }
    Ok(input_required(Value::Object(requests), Some(json!({"kind": "capabilities-test"}))))
}

// ------------------------------------------------------------------ requestState sealing

fn state_key() -> &'static RandomState {
    static KEY: OnceLock<RandomState> = OnceLock::new();
    KEY.get_or_init(RandomState::new)
}

fn state_tag(payload: &str) -> String {
    format!("{:016x}", state_key().hash_one(payload))
}

/// `<base64url(json)>.<tag>`, with a fresh nonce so no two states are equal.
fn seal_state(state: &Value) -> String {
    let mut state = state.clone();
    state["nonce"] = json!(uuid::Uuid::new_v4().to_string());
    let payload = URL_SAFE_NO_PAD.encode(state.to_string());
    let tag = state_tag(&payload);
    format!("{payload}.{tag}")
}

fn open_state(sealed: &str) -> Option<Value> {
    let (payload, tag) = sealed.rsplit_once('.')?;
    if state_tag(payload) != tag {
        return None;
    }
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}

// ------------------------------------------------------------------ resources

const STATIC_TEXT: &str = "test://static-text";
const STATIC_BINARY: &str = "test://static-binary";
const WATCHED: &str = "test://watched-resource";
const TEMPLATE: &str = "test://template/{id}/data";

pub fn resources() -> Vec<Value> {
    vec![
        json!({
            "uri": STATIC_TEXT,
            "name": "static-text",
            "title": "Static Text Resource",
            "description": "A static text resource for testing",
            "mimeType": "text/plain"
        }),
        json!({
            "uri": STATIC_BINARY,
            "name": "static-binary",
            "title": "Static Binary Resource",
            "description": "A static binary resource (image) for testing",
            "mimeType": "image/png"
        }),
        json!({
            "uri": WATCHED,
            "name": "watched-resource",
            "title": "Watched Resource",
            "description": "A resource clients may subscribe to",
            "mimeType": "text/plain"
        }),
    ]
}

pub fn resource_templates() -> Vec<Value> {
    vec![json!({
        "uriTemplate": TEMPLATE,
        "name": "template",
        "title": "Resource Template",
        "description": "A resource template with parameter substitution",
        "mimeType": "application/json"
    })]
}

/// The `{id}` of `test://template/{id}/data`.
fn template_id(uri: &str) -> Option<&str> {
    let id = uri.strip_prefix("test://template/")?.strip_suffix("/data")?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

/// Reads a fixture resource. Every `test://` URI is answered here, the unknown
/// ones with the era's not-found error (-32002 with sessions, -32602 in
/// 2026-07-28), always naming the URI in `data`.
pub async fn read_resource(ctx: &RequestContext, uri: &str) -> Option<Result<Value, RpcError>> {
    if !uri.starts_with("test://") {
        return None;
    }
    let content = match uri {
        STATIC_TEXT => {
            json!({"uri": uri, "mimeType": "text/plain", "text": "This is the content of the static text resource."})
        }
        STATIC_BINARY => json!({"uri": uri, "mimeType": "image/png", "blob": TEST_IMAGE_BASE64}),
        WATCHED => json!({"uri": uri, "mimeType": "text/plain", "text": "Watched resource content"}),
        _ => match template_id(uri) {
            Some(id) => json!({
                "uri": uri,
                "mimeType": "application/json",
                "text": json!({"id": id, "templateTest": true, "data": format!("Data for ID: {id}")}).to_string()
            }),
            None => {
                let code = if ctx.protocol_version == protocol::STATELESS_VERSION {
                    jsonrpc::INVALID_PARAMS
                } else {
                    jsonrpc::RESOURCE_NOT_FOUND
                };
                return Some(Err(RpcError::new(code, "Resource not found").with_data(json!({"uri": uri}))));
            }
        },
    };
    Some(Ok(json!({"contents": [content]})))
}

// ------------------------------------------------------------------ prompts

pub fn prompts() -> Vec<Value> {
    vec![
        json!({"name": "test_simple_prompt", "title": "Simple Test Prompt", "description": "A simple prompt without arguments"}),
        json!({
            "name": "test_prompt_with_arguments",
            "title": "Prompt With Arguments",
            "description": "A prompt with required arguments",
            "arguments": [
                {"name": "arg1", "description": "First test argument", "required": true},
                {"name": "arg2", "description": "Second test argument", "required": true}
            ]
        }),
        json!({
            "name": "test_prompt_with_embedded_resource",
            "title": "Prompt With Embedded Resource",
            "description": "A prompt that includes an embedded resource",
            "arguments": [{"name": "resourceUri", "description": "URI of the resource to embed", "required": true}]
        }),
        json!({"name": "test_prompt_with_image", "title": "Prompt With Image", "description": "A prompt that includes image content"}),
        json!({"name": MRTR_PROMPT, "description": "MRTR: prompt that requires elicitation input"}),
    ]
}

fn user_message(content: Value) -> Value {
    json!({"role": "user", "content": content})
}

fn required_arg<'a>(args: &'a Value, name: &str) -> Result<&'a str, RpcError> {
    args.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| RpcError::invalid_params(format!("missing required argument {name:?}")))
}

/// Gets a fixture prompt with only its arguments (no MRTR input).
pub fn get_prompt(name: &str, args: &Value) -> Option<Result<Value, RpcError>> {
    get_prompt_with_params(name, &json!({"name": name, "arguments": args}))
}

/// Gets a fixture prompt with the request's whole `params`.
pub fn get_prompt_with_params(name: &str, params: &Value) -> Option<Result<Value, RpcError>> {
    let empty = json!({});
    let args = params.get("arguments").filter(|a| a.is_object()).unwrap_or(&empty);
    let result = match name {
        "test_simple_prompt" => Ok(json!({"messages": [user_message(text("This is a simple prompt for testing."))]})),
        "test_prompt_with_arguments" => prompt_with_arguments(args),
        "test_prompt_with_embedded_resource" => required_arg(args, "resourceUri").map(|uri| {
            json!({"messages": [
                user_message(json!({
                    "type": "resource",
                    "resource": {"uri": uri, "mimeType": "text/plain", "text": "Embedded resource content for testing."}
                })),
                user_message(text("Please process the embedded resource above."))
            ]})
        }),
        "test_prompt_with_image" => Ok(json!({"messages": [
            user_message(json!({"type": "image", "data": TEST_IMAGE_BASE64, "mimeType": "image/png"})),
            user_message(text("Please analyze the image above."))
        ]})),
        MRTR_PROMPT => mrtr_prompt(params),
        _ => return None,
    };
    Some(result)
}

fn prompt_with_arguments(args: &Value) -> Result<Value, RpcError> {
    let (arg1, arg2) = (required_arg(args, "arg1")?, required_arg(args, "arg2")?);
    Ok(json!({"messages": [user_message(text(format!("Prompt with arguments: arg1='{arg1}', arg2='{arg2}'")))]}))
}

fn mrtr_prompt(params: &Value) -> Result<Value, RpcError> {
    let responses = input_responses(params)?;
    match elicited(responses, "user_context", "context").and_then(Value::as_str) {
        Some(context) => Ok(json!({"messages": [user_message(text(format!("Prompt with context: {context}")))]})),
        None => ask(
            params,
            json!({"user_context": elicit_request("What context should the prompt use?", "context", "string")}),
            None,
        ),
    }
}

// ------------------------------------------------------------------ completion

/// Completion values for fixture prompt arguments and the template's `{id}`.
pub fn complete(reference: &Value, argument: &str, value: &str) -> Vec<String> {
    let kind = reference.get("type").and_then(Value::as_str);
    let candidates: Vec<String> = match (kind, argument) {
        (Some("ref/prompt"), "arg1" | "arg2")
            if reference.get("name").and_then(Value::as_str) == Some("test_prompt_with_arguments") =>
        {
            ["hello", "hi", "world"].iter().map(|s| (*s).to_string()).collect()
        }
        (Some("ref/prompt"), "resourceUri")
            if reference.get("name").and_then(Value::as_str) == Some("test_prompt_with_embedded_resource") =>
        {
            [STATIC_TEXT, STATIC_BINARY, WATCHED].iter().map(|s| (*s).to_string()).collect()
        }
        (Some("ref/resource"), "id") if reference.get("uri").and_then(Value::as_str) == Some(TEMPLATE) => {
            ["1", "2", "3", "123"].iter().map(|s| (*s).to_string()).collect()
        }
        _ => vec![],
    };
    candidates.into_iter().filter(|c| c.starts_with(value)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta_params(extra: Value) -> Value {
        let mut params = json!({
            "arguments": {},
            "_meta": {META_CAPABILITIES: {"sampling": {}, "elicitation": {}, "roots": {"listChanged": true}}}
        });
        for (k, v) in extra.as_object().unwrap() {
            params[k] = v.clone();
        }
        params
    }

    fn accept(content: Value) -> Value {
        json!({"action": "accept", "content": content})
    }

    #[test]
    fn tool_names_follow_the_suite_format() {
        let tools = tools();
        let mut names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
        for name in &names {
            assert!(
                name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || "_./-".contains(c)),
                "{name}"
            );
        }
        for t in &tools {
            assert!(t["description"].is_string() && t["inputSchema"]["type"] == "object", "{t}");
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), tools.len(), "duplicate tool names");
    }

    #[test]
    fn sealed_state_round_trips_and_rejects_tampering() {
        let sealed = seal_state(&json!({"kind": "tamper-test"}));
        assert_eq!(open_state(&sealed).unwrap()["kind"], "tamper-test");
        assert!(open_state(&format!("{sealed}-TAMPERED")).is_none());
        assert!(open_state("not-a-state").is_none());
        assert_ne!(seal_state(&json!({"round": 1})), seal_state(&json!({"round": 1})), "states carry a nonce");
    }

    #[test]
    fn elicitation_mrtr_rounds() {
        let r1 = mrtr_elicitation(&meta_params(json!({}))).unwrap();
        assert_eq!(r1["resultType"], "input_required");
        assert_eq!(r1["inputRequests"]["user_name"]["method"], "elicitation/create");
        let r2 =
            mrtr_elicitation(&meta_params(json!({"inputResponses": {"user_name": accept(json!({"name": "Alice"}))}})))
                .unwrap();
        assert_eq!(r2["content"][0]["text"], "Hello, Alice!");
        // Wrong key and invalid shapes: ask again; null: a protocol error.
        let wrong =
            mrtr_elicitation(&meta_params(json!({"inputResponses": {"wrong_key": accept(json!({}))}}))).unwrap();
        assert_eq!(wrong["resultType"], "input_required");
        let number = mrtr_elicitation(&meta_params(json!({"inputResponses": {"user_name": 12345}}))).unwrap();
        assert_eq!(number["resultType"], "input_required");
        assert!(mrtr_elicitation(&meta_params(json!({"inputResponses": null}))).is_err());
        // Extra keys are ignored.
        let extra = mrtr_elicitation(&meta_params(json!({"inputResponses": {
            "user_name": accept(json!({"name": "Alice"})), "unknown_extra_key": accept(json!({"foo": "bar"}))
        }})))
        .unwrap();
        assert!(extra.get("resultType").is_none());
    }

    #[test]
    fn multi_round_needs_the_echoed_state() {
        let r1 = mrtr_multi_round(&meta_params(json!({}))).unwrap();
        let s1 = r1["requestState"].clone();
        let r2 = mrtr_multi_round(&meta_params(
            json!({"requestState": s1, "inputResponses": {"step1": accept(json!({"name": "Alice"}))}}),
        ))
        .unwrap();
        assert_eq!(r2["resultType"], "input_required");
        assert!(r2["inputRequests"]["step2"].is_object());
        assert_ne!(r2["requestState"], r1["requestState"]);
        let r3 = mrtr_multi_round(&meta_params(
            json!({"requestState": r2["requestState"], "inputResponses": {"step2": accept(json!({"color": "blue"}))}}),
        ))
        .unwrap();
        assert_eq!(r3["content"][0]["text"], "Multi-round complete for Alice who likes blue");
    }

    #[test]
    fn tampered_state_is_a_protocol_error() {
        let r1 = mrtr_tampered(&meta_params(json!({}))).unwrap();
        let tampered = format!("{}-TAMPERED", r1["requestState"].as_str().unwrap());
        let err = mrtr_tampered(&meta_params(
            json!({"requestState": tampered, "inputResponses": {"confirm": accept(json!({"ok": true}))}}),
        ))
        .unwrap_err();
        assert_eq!(err.code, jsonrpc::INVALID_PARAMS);
        let ok = mrtr_tampered(&meta_params(
            json!({"requestState": r1["requestState"], "inputResponses": {"confirm": accept(json!({"ok": true}))}}),
        ))
        .unwrap();
        assert_eq!(ok["content"][0]["text"], "integrity-ok: state verified");
    }

    #[test]
    fn capabilities_decide_what_is_asked() {
        let only_sampling = json!({"arguments": {}, "_meta": {META_CAPABILITIES: {"sampling": {}}}});
        let r = mrtr_capabilities(&only_sampling).unwrap();
        let methods: Vec<&str> =
            r["inputRequests"].as_object().unwrap().values().map(|v| v["method"].as_str().unwrap()).collect();
        assert_eq!(methods, ["sampling/createMessage"]);
        let err = missing_capability(&json!({"_meta": {META_CAPABILITIES: {}}})).unwrap_err();
        assert_eq!(err.code, jsonrpc::MISSING_CAPABILITY);
        assert_eq!(err.data.unwrap()["requiredCapabilities"], json!({"sampling": {}}));
        assert!(missing_capability(&only_sampling).is_ok());
        // An elicitation-only tool refuses a client without elicitation.
        let err = mrtr_elicitation(&only_sampling).unwrap_err();
        assert_eq!(err.code, jsonrpc::MISSING_CAPABILITY);
    }

    #[test]
    fn multiple_inputs_ask_for_three_kinds() {
        let r1 = mrtr_multiple(&meta_params(json!({}))).unwrap();
        assert_eq!(r1["inputRequests"].as_object().unwrap().len(), 3);
        let r2 = mrtr_multiple(&meta_params(json!({
            "requestState": r1["requestState"],
            "inputResponses": {
                "user_name": accept(json!({"name": "Alice"})),
                "greeting": {"role": "assistant", "content": {"type": "text", "text": "Hello there!"}, "model": "m"},
                "client_roots": {"roots": [{"uri": "file:///test/root", "name": "Test Root"}]}
            }
        })))
        .unwrap();
        assert_eq!(r2["content"][0]["text"], "Name: Alice; Greeting: Hello there!; Roots: 1");
    }

    #[test]
    fn prompts_substitute_arguments() {
        let p = get_prompt("test_prompt_with_arguments", &json!({"arg1": "hello", "arg2": "world"})).unwrap().unwrap();
        assert_eq!(p["messages"][0]["content"]["text"], "Prompt with arguments: arg1='hello', arg2='world'");
        assert!(get_prompt("test_prompt_with_arguments", &json!({"arg1": "x"})).unwrap().is_err());
        assert!(get_prompt("nope", &json!({})).is_none());
        let r1 = get_prompt_with_params(MRTR_PROMPT, &meta_params(json!({}))).unwrap().unwrap();
        assert_eq!(r1["resultType"], "input_required");
        let r2 = get_prompt_with_params(
            MRTR_PROMPT,
            &meta_params(json!({"inputResponses": {"user_context": accept(json!({"context": "test context"}))}})),
        )
        .unwrap()
        .unwrap();
        assert_eq!(r2["messages"][0]["content"]["text"], "Prompt with context: test context");
    }

    #[test]
    fn template_and_completion() {
        assert_eq!(template_id("test://template/123/data"), Some("123"));
        assert_eq!(template_id("test://template//data"), None);
        assert_eq!(template_id("test://template/a/b/data"), None);
        let reference = json!({"type": "ref/prompt", "name": "test_prompt_with_arguments"});
        assert_eq!(complete(&reference, "arg1", "h"), ["hello", "hi"]);
        assert!(complete(&json!({"type": "ref/prompt", "name": "other"}), "arg1", "").is_empty());
    }
}
