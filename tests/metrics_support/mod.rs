//! Shared by the two metrics contract tests (OTLP and Prometheus): the
//! contract itself (`monitoring/metrics.json`, read at test time), the
//! Collector's name translation, the server both tests start, the scripted
//! workload, and the exact figures that workload implies.
#![allow(dead_code)]

use std::{collections::BTreeMap, time::Duration};

use serde_json::{Value, json};
use task_mcp::pb::{
    ListChangesRequest, OpenChangeRequest, ReadResourceRequest, ShowChangeRequest, Template, WatchChangesRequest,
};
use tonic::Code;

use crate::common::{Auth, Server, ServerBuilder, bounded};

/// The bearer token of the workload's principal (`ops`), and of the one
/// that exhausts its rate limit (`slow`).
pub const TOKEN: &str = "tok";
pub const SLOW_TOKEN: &str = "slowtok";
/// Rate limit: a burst the workload's principal never reaches, 1/s after.
pub const BURST: u32 = 100;
/// The stream cap: two streams open at once fill it.
pub const MAX_STREAMS: usize = 2;
/// The connection cap of each listener: well above what the workload opens at once, and filled
/// on purpose at its start (one connection refused on each listener).
pub const MAX_CONNECTIONS: usize = 16;

// ------------------------------------------------------------------ contract

/// `monitoring/metrics.json`.
pub struct Contract {
    pub json: Value,
}

impl Contract {
    pub fn load() -> Contract {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/monitoring/metrics.json");
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        Contract { json: serde_json::from_str(&text).expect("metrics.json is JSON") }
    }

    pub fn metrics(&self) -> &[Value] {
        self.json["metrics"].as_array().expect("metrics[]")
    }

    pub fn metric(&self, name: &str) -> &Value {
        self.metrics().iter().find(|m| m["name"] == name).unwrap_or_else(|| panic!("no metric {name} in the contract"))
    }

    /// Every series name (`_bucket`/`_sum`/`_count` for histograms).
    pub fn series_names(&self) -> Vec<String> {
        self.json["series"].as_object().expect("series{}").keys().cloned().collect()
    }

    /// The labels of one series with their allowed values (`None`: open set).
    pub fn series_labels(&self, series: &str) -> BTreeMap<String, Option<Vec<String>>> {
        let labels = self.json["series"][series].as_object().unwrap_or_else(|| panic!("no series {series}"));
        labels
            .iter()
            .map(|(k, v)| {
                let values =
                    v.as_array().map(|a| a.iter().map(|x| x.as_str().unwrap_or_default().to_string()).collect());
                (k.clone(), values)
            })
            .collect()
    }

    /// The metric a series belongs to.
    pub fn metric_of_series(&self, series: &str) -> Option<&Value> {
        self.metrics().iter().find(|m| {
            let name = m["name"].as_str().unwrap_or_default();
            series == name
                || (m["type"] == "histogram"
                    && ["_bucket", "_sum", "_count"].iter().any(|s| series == format!("{name}{s}")))
        })
    }

    /// Application metrics: the rows the server emits (not the pipeline's).
    pub fn app_metrics(&self) -> Vec<&Value> {
        self.metrics().iter().filter(|m| m["group"] != "Pipeline").collect()
    }
}

/// The Collector's `prometheus` exporter naming (METRICS.md, "Name translation").
pub fn prometheus_name(instrument: &str, unit: &str, monotonic_counter: bool) -> String {
    let mut tokens: Vec<String> = instrument
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == ':'))
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    let suffix = match unit {
        "s" => Some("seconds"),
        "By" => Some("bytes"),
        "%" => Some("percent"),
        "ms" => Some("milliseconds"),
        _ => None,
    };
    if let Some(suffix) = suffix
        && !tokens.iter().any(|t| t == suffix)
    {
        tokens.push(suffix.to_string());
    }
    if monotonic_counter {
        tokens.retain(|t| t != "total");
        tokens.push("total".into());
    }
    tokens.join("_")
}

// ------------------------------------------------------------------ server

/// The server both tests run: two principals, a rate limit the `slow` one
/// exhausts, a stream cap of two that `ops` alone fills (no per-principal share,
/// which would otherwise give each principal one), a connection cap the workload
/// fills once, and whatever `configure` adds.
pub fn start(configure: impl FnOnce(ServerBuilder) -> ServerBuilder) -> Server {
    let builder = Server::builder()
        .auth_token(&format!("ops={TOKEN}"))
        .args(["--auth-token", &format!("slow={SLOW_TOKEN}")])
        .rate_limit(1, BURST)
        .args(["--max-streams", &MAX_STREAMS.to_string()])
        .args(["--max-streams-per-principal", "0"])
        .args(["--max-connections", &MAX_CONNECTIONS.to_string()]);
    configure(builder).start()
}

// ------------------------------------------------------------------ workload

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(20)).build().expect("http client")
}

fn open_req(slug: &str) -> OpenChangeRequest {
    OpenChangeRequest {
        slug: slug.into(),
        title: format!("Metrics {slug}"),
        rationale: "Exercise the metrics.".into(),
        template: Template::Unspecified as i32,
        ..Default::default()
    }
}

const ACCEPT_BOTH: &str = "application/json, text/event-stream";
const MCP_VERSION: &str = "2025-11-25";

/// `initialize` + `notifications/initialized`; the session id.
async fn mcp_session(http: &reqwest::Client, url: &str) -> String {
    let resp = http
        .post(url)
        .bearer_auth(TOKEN)
        .header("accept", ACCEPT_BOTH)
        .json(&json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
            "protocolVersion": MCP_VERSION, "capabilities": {}, "clientInfo": {"name":"metrics-test","version":"1"}}}))
        .send()
        .await
        .expect("initialize");
    assert_eq!(resp.status(), 200, "initialize");
    let session = resp.headers()["mcp-session-id"].to_str().expect("session id").to_string();
    let resp = http
        .post(url)
        .bearer_auth(TOKEN)
        .header("accept", ACCEPT_BOTH)
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", MCP_VERSION)
        .json(&json!({"jsonrpc":"2.0","method":"notifications/initialized"}))
        .send()
        .await
        .expect("initialized");
    assert_eq!(resp.status(), 202, "initialized");
    session
}

/// `GET /mcp`: the session's standalone SSE stream.
async fn mcp_stream(http: &reqwest::Client, url: &str, session: &str) -> reqwest::Response {
    http.get(url)
        .bearer_auth(TOKEN)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", session)
        .header("mcp-protocol-version", MCP_VERSION)
        .send()
        .await
        .expect("GET /mcp")
}

/// Runs the scripted workload over gRPC, HTTP/JSON and MCP. What it implies
/// is [`expected`]; every step asserts its own answer so a failure is local.
pub async fn run(server: &Server) -> Outcome {
    // First, while no other connection is open: each listener filled to its cap, and one more.
    fill_and_overflow(server, "http", b"").await;
    fill_and_overflow(server, "grpc", H2_HELLO).await;

    let http = http();
    let base = server.http_base();
    let mcp_url = server.mcp_url();

    // gRPC: three change.open, one watched stream over the third, a miss, an
    // unauthenticated call, and a resource read (a gRPC server stream).
    let mut changes = server.changes().await;
    for slug in ["metrics-a", "metrics-b"] {
        bounded("OpenChange", changes.open_change(open_req(slug))).await.expect("OpenChange");
    }
    let mut resources = server.resources().await;
    let mut watch = bounded("WatchChanges", resources.watch_changes(WatchChangesRequest::default()))
        .await
        .expect("watch")
        .into_inner();
    bounded("OpenChange", changes.open_change(open_req("metrics-c"))).await.expect("OpenChange");
    let event = bounded("a change event", watch.message()).await.expect("watch stream").expect("an event");
    assert!(!event.slug.is_empty());

    // Stream cap: the watch holds one slot, an MCP stream the other; a
    // second MCP stream and a gRPC resource read are refused.
    let first_session = mcp_session(&http, &mcp_url).await;
    let mut held = mcp_stream(&http, &mcp_url, &first_session).await;
    assert_eq!(held.status(), 200, "the first SSE stream opens");
    let priming = bounded("SSE priming event", held.chunk()).await.expect("SSE body").expect("a first chunk");
    assert!(!priming.is_empty());
    let second_session = mcp_session(&http, &mcp_url).await;
    let refused = mcp_stream(&http, &mcp_url, &second_session).await;
    assert_eq!(refused.status(), 503, "a stream over the cap is refused");
    drop(refused);
    let status = bounded(
        "ReadResource over the cap",
        resources.read_resource(ReadResourceRequest { uri: "change://metrics-a/proposal".into() }),
    )
    .await
    .expect_err("over the cap");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // Both close from the client side.
    drop(watch);
    drop(held);
    wait_until_streams_close(server).await;

    let mut read = bounded(
        "ReadResource",
        resources.read_resource(ReadResourceRequest { uri: "change://metrics-a/proposal".into() }),
    )
    .await
    .expect("ReadResource")
    .into_inner();
    while bounded("a resource chunk", read.message()).await.expect("chunk").is_some() {}

    let missing = bounded("ShowChange", changes.show_change(ShowChangeRequest { slug: "no-such-change".into() }))
        .await
        .expect_err("no such change");
    assert_eq!(missing.code(), Code::NotFound);
    let mut anonymous = server.changes_with(Auth::none()).await;
    let denied =
        bounded("ListChanges", anonymous.list_changes(ListChangesRequest::default())).await.expect_err("no token");
    assert_eq!(denied.code(), Code::Unauthenticated);

    // HTTP/JSON: one change.open, the tool list, a streamed (NDJSON)
    // change.show, a typo, a missing and a wrong token, health.
    let resp = http
        .post(format!("{base}/v1/tools/change.open"))
        .bearer_auth(TOKEN)
        .json(&json!({"slug": "metrics-http", "title": "Metrics over HTTP"}))
        .send()
        .await
        .expect("POST /v1/tools/change.open");
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    let resp = http.get(format!("{base}/v1/tools")).bearer_auth(TOKEN).send().await.expect("GET /v1/tools");
    assert_eq!(resp.status(), 200);
    resp.bytes().await.expect("tool list");
    let resp = http
        .post(format!("{base}/v1/tools/change.show"))
        .bearer_auth(TOKEN)
        .header("accept", "application/x-ndjson")
        .json(&json!({"slug": "metrics-a"}))
        .send()
        .await
        .expect("NDJSON change.show");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let text = resp.text().await.expect("NDJSON body");
    assert!(text.starts_with("{\"result\":"), "{text}");
    let resp = http.get(format!("{base}/no/such/path")).bearer_auth(TOKEN).send().await.expect("GET typo");
    assert_eq!(resp.status(), 404);
    let resp = http.get(format!("{base}/v1/tools")).send().await.expect("no token");
    assert_eq!(resp.status(), 401);
    let resp = http.get(format!("{base}/v1/tools")).bearer_auth("wrong").send().await.expect("wrong token");
    assert_eq!(resp.status(), 401);
    let resp = http.get(format!("{base}/health/live")).send().await.expect("live");
    assert_eq!(resp.status(), 200);

    // MCP: one change.open through tools/call.
    let resp = http
        .post(&mcp_url)
        .bearer_auth(TOKEN)
        .header("accept", ACCEPT_BOTH)
        .header("mcp-session-id", &first_session)
        .header("mcp-protocol-version", MCP_VERSION)
        .json(&json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{
            "name": "change.open", "arguments": {"slug": "metrics-mcp", "title": "Metrics over MCP"}}}))
        .send()
        .await
        .expect("tools/call");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("JSON-RPC answer");
    assert_eq!(body["result"]["isError"], false, "{body}");

    // Rate limit: `slow` spends its burst over gRPC until one call is
    // refused (the bucket refills at 1/s, so how many pass depends on the
    // machine's speed, and is counted), then one HTTP call is refused.
    let mut slow = server.changes_with(Auth::bearer(SLOW_TOKEN)).await;
    let mut slow_admitted = 0;
    loop {
        match bounded("ListChanges", slow.list_changes(ListChangesRequest::default())).await {
            Ok(_) => slow_admitted += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                break;
            }
        }
        assert!(slow_admitted <= BURST + 60, "the rate limiter never refused");
    }
    loop {
        let resp = http.get(format!("{base}/v1/tools")).bearer_auth(SLOW_TOKEN).send().await.expect("slow HTTP");
        if resp.status() == 429 {
            break;
        }
        // Admitted because the bucket refilled between the gRPC refusal and
        // this call (1/s): harmless, the next try is refused.
        assert_eq!(resp.status(), 200);
    }
    Outcome { slow_admitted }
}

/// The HTTP/2 client preface and an empty SETTINGS frame: a gRPC connection the server keeps.
const H2_HELLO: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Opens [`MAX_CONNECTIONS`] connections to `listener`, each sending `hello`, and one more,
/// which the full listener closes at once (accepts are in order, so it is the last); then
/// closes them all and waits until the server has given their places back, so that no later
/// connection of the workload is refused. A silent HTTP connection is kept 30 s for its request
/// head, a gRPC one that said hello until it fails a keep-alive ping: both far longer than this
/// takes.
async fn fill_and_overflow(server: &Server, listener: &str, hello: &[u8]) {
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
    };
    let addr = match listener {
        "http" => server.http_addr.expect("the listening line names http_addr"),
        _ => server.grpc_addr,
    };
    wait_until_connections_close(server, listener).await;
    let mut held = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        let mut stream = bounded("connect", TcpStream::connect(addr)).await.expect("connect");
        stream.write_all(hello).await.expect("hello");
        held.push(stream);
    }
    let mut over = bounded("connect", TcpStream::connect(addr)).await.expect("connect over the cap");
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(20), over.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0) | Err(_))), "{listener}: a connection over the cap was not closed: {read:?}");
    drop(held);
    wait_until_connections_close(server, listener).await;
}

/// The server notices closed connections when it next reads them; wait (bounded) until the
/// built-in metrics endpoint (both tests' servers have one) shows none open on `listener`.
async fn wait_until_connections_close(server: &Server, listener: &str) {
    let url = format!("http://{}/metrics", server.metrics_addr.expect("the listening line names metrics_addr"));
    let prefix = format!("listener_active_connections{{listener=\"{listener}\"");
    let http = http();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let text = http.get(&url).send().await.expect("GET /metrics").text().await.expect("metrics text");
        let open = text.lines().find(|l| l.starts_with(&prefix)).and_then(|l| l.rsplit(' ').next());
        if open == Some("0") {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{listener}: connections still open after 15 s: {open:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the workload could not fix in advance.
pub struct Outcome {
    /// gRPC ListChanges calls of `slow` admitted before the refusal.
    pub slow_admitted: u32,
}

/// The server notices closed streams when it next polls them; wait (bounded)
/// until it has, so that the gauges read 0 and the slots are free.
async fn wait_until_streams_close(server: &Server) {
    let url = format!("{}/health/metrics", server.http_base());
    let http = http();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let resp = http.get(&url).bearer_auth(TOKEN).send().await.expect("GET /health/metrics");
        let v: Value = resp.json().await.expect("metrics JSON");
        if v["streams"] == 0 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "streams still open after 15 s: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ------------------------------------------------------------------ expectations

/// One series value the workload implies exactly:
/// (Prometheus series name, labels, value).
/// Labels of one series, as (name, value) pairs.
pub type Labels = Vec<(&'static str, &'static str)>;

pub fn expected(outcome: &Outcome) -> Vec<(&'static str, Labels, f64)> {
    let tool = |name, transport, outcome, error| {
        vec![("tool_name", name), ("transport", transport), ("outcome", outcome), ("error_type", error)]
    };
    let rpc =
        |method, code| vec![("rpc_system_name", "grpc"), ("rpc_method", method), ("rpc_response_status_code", code)];
    vec![
        // Three gRPC change.open calls are three successful executions.
        ("tool_executions_total", tool("change.open", "grpc", "success", "none"), 3.0),
        ("tool_executions_total", tool("change.open", "http", "success", "none"), 1.0),
        ("tool_executions_total", tool("change.open", "mcp", "success", "none"), 1.0),
        ("tool_executions_total", tool("change.show", "grpc", "client_error", "CHANGE_NOT_FOUND"), 1.0),
        ("tool_executions_total", tool("change.show", "http", "success", "none"), 1.0),
        ("tool_executions_total", tool("change.list", "grpc", "client_error", "UNAUTHENTICATED"), 1.0),
        ("tool_executions_total", tool("change.list", "grpc", "client_error", "RATE_LIMITED"), 1.0),
        ("tool_executions_total", tool("change.list", "grpc", "success", "none"), f64::from(outcome.slow_admitted)),
        (
            "tool_execution_duration_seconds_count",
            vec![("tool_name", "change.open"), ("transport", "grpc"), ("outcome", "success")],
            3.0,
        ),
        ("tool_active_executions", vec![("tool_name", "change.open"), ("transport", "grpc")], 0.0),
        // Calls from the gateway are gRPC calls too: 3 + 1 (HTTP) + 1 (MCP).
        ("rpc_server_call_duration_seconds_count", rpc("taskmcp.v1.Changes/OpenChange", "OK"), 5.0),
        ("rpc_server_call_duration_seconds_count", rpc("taskmcp.v1.Resources/ReadResource", "UNAVAILABLE"), 1.0),
        ("rpc_server_call_duration_seconds_count", rpc("taskmcp.v1.Resources/WatchChanges", "CANCELLED"), 1.0),
        ("auth_attempts_total", vec![("transport", "grpc"), ("outcome", "failure"), ("reason", "missing")], 1.0),
        ("auth_attempts_total", vec![("transport", "http"), ("outcome", "failure"), ("reason", "missing")], 1.0),
        ("auth_attempts_total", vec![("transport", "http"), ("outcome", "failure"), ("reason", "invalid")], 1.0),
        ("rate_limit_hits_total", vec![("transport", "grpc")], 1.0),
        ("rate_limit_hits_total", vec![("transport", "http")], 1.0),
        ("streaming_rejections_total", vec![("transport", "mcp"), ("reason", "capacity")], 1.0),
        ("streaming_rejections_total", vec![("transport", "grpc"), ("reason", "capacity")], 1.0),
        ("streaming_max_connections", vec![], MAX_STREAMS as f64),
        // One connection over the cap on each listener, at the start.
        ("listener_refused_connections_total", vec![("listener", "http")], 1.0),
        ("listener_refused_connections_total", vec![("listener", "grpc")], 1.0),
        ("listener_max_connections", vec![("listener", "http")], MAX_CONNECTIONS as f64),
        ("listener_max_connections", vec![("listener", "grpc")], MAX_CONNECTIONS as f64),
        ("streaming_active_connections", vec![("transport", "grpc"), ("stream_type", "grpc")], 0.0),
        ("streaming_active_connections", vec![("transport", "mcp"), ("stream_type", "sse")], 0.0),
        ("streaming_active_connections", vec![("transport", "http"), ("stream_type", "ndjson")], 0.0),
        (
            "streaming_messages_total",
            vec![("transport", "http"), ("stream_type", "ndjson"), ("message_type", "result")],
            1.0,
        ),
        (
            "streaming_connection_duration_seconds_count",
            vec![("transport", "grpc"), ("stream_type", "grpc"), ("close_reason", "completed")],
            1.0,
        ),
        (
            "streaming_connection_duration_seconds_count",
            vec![("transport", "grpc"), ("stream_type", "grpc"), ("close_reason", "client_closed")],
            1.0,
        ),
        (
            "streaming_connection_duration_seconds_count",
            vec![("transport", "mcp"), ("stream_type", "sse"), ("close_reason", "client_closed")],
            1.0,
        ),
        (
            "streaming_connection_duration_seconds_count",
            vec![("transport", "http"), ("stream_type", "ndjson"), ("close_reason", "completed")],
            1.0,
        ),
        (
            "http_server_requests_total",
            vec![
                ("http_request_method", "POST"),
                ("http_route", "/v1/tools/{name}"),
                ("http_response_status_code", "200"),
            ],
            2.0,
        ),
        (
            "http_server_requests_total",
            vec![("http_request_method", "GET"), ("http_route", "_unmatched"), ("http_response_status_code", "404")],
            1.0,
        ),
        (
            "http_server_requests_total",
            vec![("http_request_method", "GET"), ("http_route", "/v1/tools"), ("http_response_status_code", "401")],
            2.0,
        ),
        (
            "http_server_requests_total",
            vec![("http_request_method", "GET"), ("http_route", "/v1/tools"), ("http_response_status_code", "429")],
            1.0,
        ),
        (
            "http_server_requests_total",
            vec![("http_request_method", "GET"), ("http_route", "/mcp"), ("http_response_status_code", "503")],
            1.0,
        ),
        (
            "http_server_request_duration_seconds_count",
            vec![("http_request_method", "GET"), ("http_route", "/health/live"), ("http_response_status_code", "200")],
            1.0,
        ),
        ("http_server_active_requests", vec![("http_request_method", "POST"), ("http_route", "/mcp")], 0.0),
        ("health_check_status", vec![("check", "upstream")], 1.0),
        ("health_check_status", vec![("check", "workspace")], 1.0),
        ("health_check_status", vec![("check", "workspace_space")], 1.0),
    ]
}

/// Series that must exist with a positive value (counts the workload makes
/// but whose exact figure depends on timing or on the SDK).
pub fn positive() -> Vec<(&'static str, Labels)> {
    vec![
        (
            "streaming_messages_total",
            vec![("transport", "grpc"), ("stream_type", "grpc"), ("message_type", "change_event")],
        ),
        (
            "streaming_messages_total",
            vec![("transport", "grpc"), ("stream_type", "grpc"), ("message_type", "resource_chunk")],
        ),
        ("streaming_messages_total", vec![("transport", "mcp"), ("stream_type", "sse"), ("message_type", "priming")]),
        ("streaming_bytes_transferred_total", vec![("transport", "grpc"), ("stream_type", "grpc")]),
        ("streaming_bytes_transferred_total", vec![("transport", "mcp"), ("stream_type", "sse")]),
        ("streaming_first_message_duration_seconds_count", vec![("transport", "mcp"), ("stream_type", "sse")]),
        ("auth_attempts_total", vec![("transport", "mcp"), ("outcome", "success"), ("reason", "valid")]),
        ("auth_attempts_total", vec![("transport", "http"), ("outcome", "success"), ("reason", "valid")]),
        ("auth_attempts_total", vec![("transport", "grpc"), ("outcome", "success"), ("reason", "valid")]),
        ("http_server_response_body_size_bytes_count", vec![("http_request_method", "POST"), ("http_route", "/mcp")]),
        ("process_uptime_seconds", vec![]),
        ("process_memory_bytes", vec![("type", "rss")]),
        ("process_memory_bytes", vec![("type", "virtual")]),
        ("process_memory_limit_bytes", vec![]),
    ]
}
