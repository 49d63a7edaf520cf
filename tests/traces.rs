//! Traces, end to end: a real OTLP trace receiver (the `opentelemetry-proto`
//! tonic service) inside the test, the real binary exporting to it.
//!
//! - One MCP `tools/call` gives the gateway's HTTP span, the service's gRPC span
//!   and the tool span under one trace id, each the parent of the next; the
//!   client's `traceparent` is the HTTP span's parent, and the gRPC span's parent
//!   is the gateway's span, not the client's. A log line of the call carries the
//!   trace id.
//! - The same across processes: `task-mcp gateway` in front of `task-mcp serve`.
//! - OTLP/HTTP with protobuf bodies instead of gRPC when the protocol variable says so.
//! - `OTEL_TRACES_SAMPLER=always_off` exports nothing (logs still carry ids).
//! - Spans still queued at SIGTERM are flushed before the process exits.
//! - A receiver that is down or never answers does not fail or stall requests,
//!   and shutdown stays bounded.
mod common;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{Gateway, Server};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value as AnyValue,
    trace::v1::span::SpanKind,
};
use serde_json::{Value, json};

const ACCEPT_BOTH: &str = "application/json, text/event-stream";
/// How long to wait for spans to arrive (the batch delay is 100 ms in these tests).
const ARRIVAL_BOUND: Duration = Duration::from_secs(15);
const CLIENT_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CLIENT_SPAN: &str = "b7ad6b7169203331";

// ------------------------------------------------------------------ receiver

/// One received span, flattened.
#[derive(Debug, Clone)]
struct Got {
    service: String,
    instance: String,
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    parent: String,
    attributes: BTreeMap<String, String>,
}

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Got>>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn any_to_string(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn flatten(request: ExportTraceServiceRequest) -> Vec<Got> {
    let mut got = Vec::new();
    for rs in request.resource_spans {
        let resource: BTreeMap<String, String> = rs
            .resource
            .map(|r| r.attributes.iter().map(|kv| (kv.key.clone(), any_to_string(&kv.value))).collect())
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                got.push(Got {
                    service: resource.get("service.name").cloned().unwrap_or_default(),
                    instance: resource.get("service.instance.id").cloned().unwrap_or_default(),
                    name: s.name,
                    kind: s.kind,
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent: hex(&s.parent_span_id),
                    attributes: s.attributes.iter().map(|kv| (kv.key.clone(), any_to_string(&kv.value))).collect(),
                });
            }
        }
    }
    got
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.spans.lock().unwrap().extend(flatten(request.into_inner()));
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Receiver {
    /// Serves on a free loopback port until the test ends.
    async fn start() -> (Receiver, SocketAddr) {
        let receiver = Receiver::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(receiver.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        (receiver, addr)
    }

    /// The same receiver over OTLP/HTTP with protobuf bodies (`POST /v1/traces`).
    async fn start_http() -> (Receiver, SocketAddr) {
        use prost::Message as _;
        let receiver = Receiver::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans = receiver.spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let spans = spans.clone();
                async move {
                    assert_eq!(headers["content-type"], "application/x-protobuf");
                    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf body");
                    spans.lock().unwrap().extend(flatten(request));
                    let response = ExportTraceServiceResponse { partial_success: None };
                    ([("content-type", "application/x-protobuf")], response.encode_to_vec())
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (receiver, addr)
    }

    fn spans(&self) -> Vec<Got> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for the spans received so far.
    async fn wait_for(&self, what: &str, logs: impl Fn() -> String, pred: impl Fn(&[Got]) -> bool) -> Vec<Got> {
        let deadline = Instant::now() + ARRIVAL_BOUND;
        loop {
            let spans = self.spans();
            if pred(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not received within {ARRIVAL_BOUND:?}\nspans: {spans:#?}\n--- logs ---\n{}",
                logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn otlp_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.to_string()),
        // Short batch delay: spans arrive within a fraction of a second.
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "2000".to_string()),
    ]
}

fn start_server(env: &[(&str, String)]) -> Server {
    let mut builder = Server::builder();
    for (k, v) in env {
        builder = builder.env(k, v);
    }
    builder.start()
}

// ------------------------------------------------------------------ MCP client

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap()
}

/// initialize + notifications/initialized; returns the session id.
async fn mcp_session(http: &reqwest::Client, url: &str) -> String {
    let resp = http
        .post(url)
        .header("accept", ACCEPT_BOTH)
        .json(&json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name":"traces-test","version":"1"}}}))
        .send()
        .await
        .expect("initialize");
    assert_eq!(resp.status(), 200, "initialize");
    let session = resp.headers()["mcp-session-id"].to_str().unwrap().to_string();
    let status = http
        .post(url)
        .header("accept", ACCEPT_BOTH)
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-11-25")
        .json(&json!({"jsonrpc":"2.0","method":"notifications/initialized"}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 202);
    session
}

/// One `tools/call change.open` (optionally with a client `traceparent`); asserts success.
async fn open_change(http: &reqwest::Client, url: &str, session: &str, slug: &str, traceparent: Option<&str>) {
    call_open(http, url, session, slug, traceparent, false).await
}

/// With `progress`, the call carries a progress token: the gateway answers on an SSE stream and
/// runs the call on a task of its own, outside the request's span.
async fn call_open(
    http: &reqwest::Client,
    url: &str,
    session: &str,
    slug: &str,
    traceparent: Option<&str>,
    progress: bool,
) {
    let mut params = json!({"name": "change.open", "arguments": {"title": "Traced", "slug": slug, "owner": "alice"}});
    if progress {
        params["_meta"] = json!({"progressToken": "p-1"});
    }
    let mut req = http
        .post(url)
        .header("accept", ACCEPT_BOTH)
        .header("mcp-session-id", session)
        .header("mcp-protocol-version", "2025-11-25")
        .json(&json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params": params}));
    if let Some(tp) = traceparent {
        req = req.header("traceparent", tp);
    }
    let resp = req.send().await.expect("tools/call");
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let body: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        // An SSE answer: the data line of the response.
        Err(_) => text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
            .find(|m| m.get("id").is_some())
            .unwrap_or_else(|| panic!("no response in {text}")),
    };
    assert_eq!(body["result"]["isError"], false, "{body}");
}

// ------------------------------------------------------------------ assertions

/// The HTTP span of `tools/call` for `slug`'s trace: the gRPC OpenChange span,
/// the tool span, each the child of the one before, one trace id. Returns them.
fn chain(spans: &[Got], trace_id: &str) -> (Got, Got, Got) {
    let in_trace: Vec<&Got> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
    let one = |what: &str, pred: &dyn Fn(&Got) -> bool| -> Got {
        let found: Vec<&&Got> = in_trace.iter().filter(|s| pred(s)).collect();
        assert_eq!(found.len(), 1, "exactly one {what} in trace {trace_id}: {in_trace:#?}");
        (*found[0]).clone()
    };
    let http = one("HTTP server span", &|s| s.name == "POST /mcp" && s.kind == SpanKind::Server as i32);
    let grpc =
        one("gRPC server span", &|s| s.name == "taskmcp.v1.Changes/OpenChange" && s.kind == SpanKind::Server as i32);
    let tool = one("tool span", &|s| s.name == "execute_tool change.open" && s.kind == SpanKind::Internal as i32);
    assert_eq!(grpc.parent, http.span_id, "the gRPC span is the child of the gateway's HTTP span");
    assert_eq!(tool.parent, grpc.span_id, "the tool span is the child of the gRPC span");
    assert_eq!(http.attributes.get("http.route").map(String::as_str), Some("/mcp"), "{http:#?}");
    assert_eq!(http.attributes.get("http.request.method").map(String::as_str), Some("POST"));
    assert_eq!(http.attributes.get("http.response.status_code").map(String::as_str), Some("200"), "{http:#?}");
    assert_eq!(grpc.attributes.get("rpc.system").map(String::as_str), Some("grpc"), "{grpc:#?}");
    assert_eq!(grpc.attributes.get("rpc.method").map(String::as_str), Some("OpenChange"));
    assert_eq!(grpc.attributes.get("rpc.grpc.status_code").map(String::as_str), Some("0"), "{grpc:#?}");
    assert_eq!(tool.attributes.get("gen_ai.tool.name").map(String::as_str), Some("change.open"), "{tool:#?}");
    for s in [&http, &grpc, &tool] {
        assert_eq!(s.service, "task-mcp", "service.name of {s:#?}");
        assert!(!s.instance.is_empty(), "service.instance.id of {s:#?}");
    }
    (http, grpc, tool)
}

/// JSON log lines that carry `trace_id`.
fn lines_with_trace(logs: &str, trace_id: &str) -> Vec<Value> {
    logs.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim_start_matches(|c| c != '{')).ok())
        .filter(|v| v["trace_id"] == trace_id)
        .collect()
}

// ------------------------------------------------------------------ tests

#[tokio::test]
async fn a_trace_of_one_mcp_tools_call_shows_the_gateway_span_and_the_grpc_span_under_one_trace_id() {
    let (receiver, addr) = Receiver::start().await;
    let server = start_server(&otlp_env(&format!("http://{addr}")));
    let http = client();
    let url = server.mcp_url();
    let session = mcp_session(&http, &url).await;

    // With the client's traceparent: the HTTP span continues the client's trace.
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    open_change(&http, &url, &session, "traced-one", Some(&traceparent)).await;
    let spans = receiver
        .wait_for(
            "the three spans of the client's trace",
            || server.logs(),
            |s| s.iter().filter(|s| s.trace_id == CLIENT_TRACE).count() >= 3,
        )
        .await;
    let (http_span, grpc_span, _) = chain(&spans, CLIENT_TRACE);
    assert_eq!(http_span.parent, CLIENT_SPAN, "the HTTP span's parent is the client's span");
    assert_ne!(grpc_span.parent, CLIENT_SPAN, "the gateway sends its own span as parent, not the client's");

    // Without one: a new trace, rooted at the gateway's HTTP span.
    let before = receiver.spans().len();
    open_change(&http, &url, &session, "traced-two", None).await;
    let spans = receiver
        .wait_for(
            "the tool span of the second call",
            || server.logs(),
            |s| s[before.min(s.len())..].iter().any(|s| s.name == "execute_tool change.open"),
        )
        .await;
    let tool = spans[before..].iter().find(|s| s.name == "execute_tool change.open").unwrap().clone();
    let spans = receiver
        .wait_for(
            "the second trace's HTTP span",
            || server.logs(),
            |s| s.iter().any(|x| x.trace_id == tool.trace_id && x.name == "POST /mcp"),
        )
        .await;
    let (root, _, _) = chain(&spans, &tool.trace_id);
    assert_eq!(root.parent, "", "without a client traceparent the HTTP span is the root");

    // Answered on an SSE stream by a task the gateway spawns outside the request's span: the
    // links hold all the same (the forwarded traceparent names the gateway's span).
    let streamed_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    call_open(&http, &url, &session, "traced-three", Some(&format!("00-{streamed_trace}-00f067aa0ba902b7-01")), true)
        .await;
    let spans = receiver
        .wait_for(
            "the three spans of the streamed call",
            || server.logs(),
            |s| s.iter().filter(|s| s.trace_id == streamed_trace).count() >= 3,
        )
        .await;
    let (streamed_http, _, _) = chain(&spans, streamed_trace);
    assert_eq!(streamed_http.parent, "00f067aa0ba902b7");

    // The call's log lines carry its trace id (and the span they were written in).
    let logs = server.logs();
    let lines = lines_with_trace(&logs, CLIENT_TRACE);
    let answered = lines
        .iter()
        .find(|l| l["message"] == "call answered")
        .unwrap_or_else(|| panic!("no \"call answered\" line with trace_id {CLIENT_TRACE}\n{logs}"));
    assert_eq!(answered["span_id"], grpc_span.span_id, "{answered}");
    assert_eq!(answered["span"]["method"], "/taskmcp.v1.Changes/OpenChange", "{answered}");
    // Lines outside any request carry none.
    let listening = logs.lines().find(|l| l.contains("\"listening\"")).expect("listening line");
    assert!(!listening.contains("trace_id"), "{listening}");
}

/// Reads lines of a child's stdout until one has `"message":"listening"`; returns its `http_addr`.
#[tokio::test]
async fn trace_context_crosses_from_a_separate_gateway_process_to_the_service() {
    let (receiver, addr) = Receiver::start().await;
    let env = otlp_env(&format!("http://{addr}"));
    let service = start_server(&env);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let gateway = Gateway::start(&service.endpoint(), &[], &env);

    let http = client();
    let url = gateway.mcp_url();
    let session = mcp_session(&http, &url).await;
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    open_change(&http, &url, &session, "two-processes", Some(&traceparent)).await;
    let logs = || format!("--- service ---\n{}\n--- gateway ---\n{}", service.logs(), gateway.logs());
    let spans = receiver
        .wait_for("the three spans from two processes", logs, |s| {
            s.iter().filter(|s| s.trace_id == CLIENT_TRACE).count() >= 3
        })
        .await;
    let (http_span, grpc_span, tool_span) = chain(&spans, CLIENT_TRACE);
    assert_ne!(http_span.instance, grpc_span.instance, "two processes, two service.instance.id values");
    assert_eq!(grpc_span.instance, tool_span.instance);
}

#[tokio::test]
async fn http_protobuf_is_selectable_and_carries_the_same_trace() {
    let (receiver, addr) = Receiver::start_http().await;
    let mut env = otlp_env(&format!("http://{addr}"));
    env.push(("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf".to_string()));
    let server = start_server(&env);
    let http = client();
    let url = server.mcp_url();
    let session = mcp_session(&http, &url).await;
    open_change(&http, &url, &session, "over-http", Some(&format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))).await;
    let spans = receiver
        .wait_for(
            "the three spans over OTLP/HTTP",
            || server.logs(),
            |s| s.iter().filter(|s| s.trace_id == CLIENT_TRACE).count() >= 3,
        )
        .await;
    chain(&spans, CLIENT_TRACE);
}

#[tokio::test]
async fn the_sampler_from_the_environment_is_honoured() {
    // The same call under each sampler, with a batch delay far beyond the test: the spans leave
    // only in the flush at SIGTERM, and the server has exited when the receiver is read. The
    // always_on run is the control: it shows that this path delivers what was sampled, so the
    // always_off run receiving nothing means nothing was sampled, not that nothing arrived yet.
    for (sampler, sampled) in [("always_on", true), ("always_off", false)] {
        let (receiver, addr) = Receiver::start().await;
        let mut env = otlp_env(&format!("http://{addr}"));
        env.retain(|(k, _)| *k != "OTEL_BSP_SCHEDULE_DELAY");
        env.push(("OTEL_BSP_SCHEDULE_DELAY", "600000".to_string()));
        env.push(("OTEL_TRACES_SAMPLER", sampler.to_string()));
        let mut server = start_server(&env);
        let http = client();
        let url = server.mcp_url();
        let session = mcp_session(&http, &url).await;
        open_change(&http, &url, &session, &format!("sampled-{}", sampler.replace('_', "-")), None).await;
        server.sigterm();
        let (status, server) =
            tokio::task::spawn_blocking(move || (server.wait_exit(Duration::from_secs(20)), server)).await.unwrap();
        assert!(status.is_some_and(|s| s.success()), "{sampler}: exit {status:?}\n{}", server.logs());
        let spans = receiver.spans();
        if sampled {
            assert!(
                spans.iter().any(|s| s.name == "execute_tool change.open"),
                "{sampler}: the flush at exit delivered no execute_tool span: {spans:#?}\n{}",
                server.logs()
            );
        } else {
            assert!(spans.is_empty(), "{sampler} exported {spans:#?}");
        }
        // Not sampled is not untraced: the log line still names a trace.
        let logs = server.logs();
        assert!(
            logs.lines().any(|l| l.contains("\"call answered\"") && l.contains("\"trace_id\":\"")),
            "{sampler}: no trace_id on the call's log line\n{logs}"
        );
    }
}

#[tokio::test]
async fn spans_still_queued_at_sigterm_are_flushed_before_exit() {
    let (receiver, addr) = Receiver::start().await;
    let mut env = otlp_env(&format!("http://{addr}"));
    // A batch delay far beyond the test: only the shutdown flush can send them.
    env.retain(|(k, _)| *k != "OTEL_BSP_SCHEDULE_DELAY");
    env.push(("OTEL_BSP_SCHEDULE_DELAY", "600000".to_string()));
    let mut server = start_server(&env);
    let http = client();
    let url = server.mcp_url();
    let session = mcp_session(&http, &url).await;
    open_change(&http, &url, &session, "flushed", None).await;
    assert!(!receiver.spans().iter().any(|s| s.name.starts_with("execute_tool")), "exported before shutdown");
    server.sigterm();
    let status = tokio::task::spawn_blocking(move || {
        let status = server.wait_exit(Duration::from_secs(20));
        (status, server)
    })
    .await
    .unwrap();
    let (status, server) = status;
    assert!(status.is_some_and(|s| s.success()), "exit {status:?}\n{}", server.logs());
    let spans = receiver.spans();
    assert!(
        spans.iter().any(|s| s.name == "execute_tool change.open")
            && spans.iter().any(|s| s.name == "taskmcp.v1.Changes/OpenChange"),
        "spans after shutdown: {spans:#?}\n{}",
        server.logs()
    );
}

/// Accepts connections and never answers: an OTLP receiver that stalls.
fn stalled_receiver() -> (SocketAddr, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        let mut held = Vec::new();
        // Bounded: the test is over long before.
        listener.set_nonblocking(true).unwrap();
        let end = Instant::now() + Duration::from_secs(60);
        while Instant::now() < end {
            match listener.accept() {
                Ok((conn, _)) => held.push(conn),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    (addr, handle)
}

#[tokio::test]
async fn a_receiver_that_is_down_or_stalls_does_not_hold_up_requests_or_shutdown() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (stalled, _thread) = stalled_receiver();
    for endpoint in [closed, stalled] {
        let mut env = otlp_env(&format!("http://{endpoint}"));
        // An export waits up to 30 s on the stalled receiver: a request held up by
        // export, or a shutdown that waited for it, would take at least that long.
        env.retain(|(k, _)| *k != "OTEL_EXPORTER_OTLP_TIMEOUT");
        env.push(("OTEL_EXPORTER_OTLP_TIMEOUT", "30000".to_string()));
        let mut server = start_server(&env);
        let http = client();
        let url = server.mcp_url();
        let session = mcp_session(&http, &url).await;
        for i in 0..20 {
            // A failure bound, not a speed check: a call held up by an export would wait the
            // 30 s the export may block; a call that is not answers long before 15 s, whatever
            // the load on the machine (each call normally takes milliseconds).
            let slug = format!("down-{}-{i}", endpoint.port());
            let call = open_change(&http, &url, &session, &slug, None);
            if tokio::time::timeout(Duration::from_secs(15), call).await.is_err() {
                panic!("call {i} with {endpoint}: no answer within the 15 s bound (held up by the export?)");
            }
        }
        server.sigterm();
        // A failure bound, not a speed check: the flushes at shutdown are bounded (5 s each),
        // and waiting out the 30 s an export may block would overrun 25 s.
        let (status, server) =
            tokio::task::spawn_blocking(move || (server.wait_exit(Duration::from_secs(25)), server)).await.unwrap();
        assert!(
            status.is_some_and(|s| s.success()),
            "exit {status:?} (None: still running after the 25 s bound, waiting on the export?)\n{}",
            server.logs()
        );
    }
}
