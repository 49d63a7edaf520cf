//! Throughput and latency at fixed concurrency, one scenario at a time.
use anyhow::{Context as _, bail};
use serde::Serialize;
use serde_json::{Value, json};

use crate::{
    deploy::{self, Deploy, DeployOptions},
    grpc,
    http::{self, Conn, RequestTemplate},
    load::{self, GrpcWorker, HttpWorker, LatencySummary, Window},
    proc,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Load {
    /// tools/call in a 2025-11-25 session (one session per connection), JSON answers.
    McpSession,
    /// tools/call in the stateless 2026-07-28 form.
    McpStateless,
    /// tools/call with a 2025-11-25 version header and no session (rmcp's stateless legacy mode).
    McpSessionless,
    /// `POST /v1/tools/change.show`.
    Rest,
    /// ShowChange over gRPC, one channel (HTTP/2 connection) per worker.
    GrpcChannels,
    /// ShowChange over gRPC, one channel shared by every worker (concurrent streams).
    GrpcOneChannel,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Scenario {
    pub id: &'static str,
    pub what: &'static str,
    pub deploy: Deploy,
    pub load: Load,
    pub tool: &'static str,
}

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        id: "a-mcp-inproc",
        what: "change.show, MCP tools/call (session), gateway -> in-process service (serve)",
        deploy: Deploy::Serve,
        load: Load::McpSession,
        tool: "change.show",
    },
    Scenario {
        id: "a2-mcp-stateless-inproc",
        what: "change.show, MCP tools/call (stateless 2026-07-28), serve",
        deploy: Deploy::Serve,
        load: Load::McpStateless,
        tool: "change.show",
    },
    Scenario {
        id: "a3-mcp-fixture-noupstream",
        what: "test_simple_text fixture, MCP tools/call (session), answered by the gateway alone (no gRPC)",
        deploy: Deploy::ServeFixtures,
        load: Load::McpSession,
        tool: "test_simple_text",
    },
    Scenario {
        id: "b-mcp-loopback",
        what: "change.show, MCP tools/call (session), gateway --upstream -> serve over loopback gRPC",
        deploy: Deploy::Split,
        load: Load::McpSession,
        tool: "change.show",
    },
    Scenario {
        id: "b2-mcp-stateless-loopback",
        what: "change.show, MCP tools/call (stateless 2026-07-28), gateway --upstream -> serve",
        deploy: Deploy::Split,
        load: Load::McpStateless,
        tool: "change.show",
    },
    Scenario {
        id: "c-grpc",
        what: "ShowChange straight over gRPC, 64 channels (64 HTTP/2 connections)",
        deploy: Deploy::Serve,
        load: Load::GrpcChannels,
        tool: "ShowChange",
    },
    Scenario {
        id: "c2-grpc-1ch",
        what: "ShowChange straight over gRPC, 1 channel with 64 concurrent streams",
        deploy: Deploy::Serve,
        load: Load::GrpcOneChannel,
        tool: "ShowChange",
    },
    Scenario {
        id: "c3-grpc-infolog",
        what: "ShowChange over gRPC, 64 channels, default log level (info: one line per call)",
        deploy: Deploy::ServeInfoLog,
        load: Load::GrpcChannels,
        tool: "ShowChange",
    },
    Scenario {
        id: "d-rest",
        what: "change.show, REST POST /v1/tools/change.show, serve",
        deploy: Deploy::Serve,
        load: Load::Rest,
        tool: "change.show",
    },
    Scenario {
        id: "e-rmcp-stateless",
        what: "peer: rmcp 3.11 echo tool, stateless JSON mode, tools/call in the 2026-07-28 form",
        deploy: Deploy::Rmcp,
        load: Load::McpStateless,
        tool: "echo",
    },
    Scenario {
        id: "e2-rmcp-sessionless",
        what: "peer: rmcp 3.11 echo tool, stateless JSON mode, tools/call with 2025-11-25 header, no session",
        deploy: Deploy::Rmcp,
        load: Load::McpSessionless,
        tool: "echo",
    },
    Scenario {
        id: "e3-rmcp-show",
        what: "peer: rmcp 3.11 `show` tool answering task-mcp's change.show answer (same JSON, fixed), as e2",
        deploy: Deploy::Rmcp,
        load: Load::McpSessionless,
        tool: "show",
    },
    Scenario {
        id: "f-floor-show",
        what: "floor: hyper HTTP/1.1 alone, parsing the request and writing change.show's answer prebuilt, as e2",
        deploy: Deploy::Floor,
        load: Load::McpSessionless,
        tool: "show",
    },
    Scenario {
        id: "f2-floor-echo",
        what: "floor: hyper HTTP/1.1 alone answering e2's echo, as e2",
        deploy: Deploy::Floor,
        load: Load::McpSessionless,
        tool: "echo",
    },
];

#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub scenario: &'static str,
    pub repeat: usize,
    pub connections: usize,
    pub calls: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub calls_per_sec: f64,
    pub latency: LatencySummary,
    /// CPU used by the server process(es) during the window, in cores (1.0 = one core busy).
    pub server_cores: f64,
    /// CPU used by the load generator during the window, in cores.
    pub client_cores: f64,
    pub server_cpu_us_per_call: f64,
    pub request_bytes: usize,
    pub response_bytes: usize,
    pub server_rss_kib: u64,
    pub server_threads: u64,
    /// Busy cores per core over the window (user + nice + system + irq + softirq, every process).
    pub core_busy: Vec<f64>,
    /// Busy cores neither the servers nor the load generator account for:
    /// other work on the machine (and kernel threads). Large means disturbed.
    pub foreign_cores: f64,
    pub softirq_cores: f64,
    pub steal_cores: f64,
    /// Set when foreign work exceeded the threshold; such runs are re-run.
    pub disturbed: bool,
}

/// Other work above this many cores during a window marks the run as disturbed.
pub const DISTURBED_CORES: f64 = 0.10;

fn arguments(tool: &str) -> Value {
    match tool {
        "echo" => json!({"message": "hello from the bench"}),
        "test_simple_text" => json!({}),
        // change.show, ShowChange, and rmcp-echo's `show`.
        _ => json!({"slug": deploy::SLUG}),
    }
}

/// Checks one answer is a success, not a fast failure that would flatter the figures.
fn validate(load: Load, body: &[u8]) -> anyhow::Result<()> {
    let v: Value = serde_json::from_slice(body)
        .with_context(|| format!("not JSON: {}", String::from_utf8_lossy(&body[..body.len().min(200)])))?;
    let ok = match load {
        Load::Rest => v.get("change").is_some(),
        _ => {
            v.get("result").is_some_and(|r| r.get("isError") != Some(&Value::Bool(true)) && r.get("content").is_some())
        }
    };
    if !ok {
        bail!("unexpected answer: {}", String::from_utf8_lossy(&body[..body.len().min(400)]));
    }
    Ok(())
}

pub async fn http_workers(
    scenario: &Scenario,
    addr: std::net::SocketAddr,
    connections: usize,
) -> anyhow::Result<(Vec<HttpWorker>, usize, usize)> {
    let args = arguments(scenario.tool);
    let mut workers = Vec::with_capacity(connections);
    let mut sizes = (0, 0);
    for _ in 0..connections {
        let mut conn = Conn::connect(addr).await?;
        let request = match scenario.load {
            Load::McpSession => {
                let session = http::open_session(&mut conn).await?;
                http::session_call(&session, scenario.tool, args.clone())
            }
            Load::McpStateless => http::stateless_call(scenario.tool, args.clone()),
            Load::McpSessionless => http::sessionless_call(scenario.tool, args.clone()),
            Load::Rest => {
                RequestTemplate::post_json(&format!("/v1/tools/{}", scenario.tool), "application/json", &args)
            }
            Load::GrpcChannels | Load::GrpcOneChannel => unreachable!("not HTTP"),
        };
        let (headers, body) = conn.call(&request).await?;
        let ct = headers.get(::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !ct.starts_with("application/json") {
            bail!("{}: answered {ct:?}, not JSON", scenario.id);
        }
        validate(scenario.load, &body)?;
        sizes = (request.body.len(), body.len());
        workers.push(HttpWorker { conn, request });
    }
    Ok((workers, sizes.0, sizes.1))
}

pub async fn grpc_workers(
    addr: std::net::SocketAddr,
    connections: usize,
    shared: bool,
) -> anyhow::Result<(Vec<GrpcWorker>, usize, usize)> {
    use prost::Message as _;
    let mut workers = Vec::with_capacity(connections);
    let one = if shared { Some(grpc::connect(addr).await?) } else { None };
    let mut response_bytes = 0;
    for _ in 0..connections {
        let mut client = match &one {
            Some(c) => c.clone(),
            None => grpc::connect(addr).await?,
        };
        let res = client.show_change(grpc::pb::ShowChangeRequest { slug: deploy::SLUG.into() }).await?;
        response_bytes = res.get_ref().encoded_len();
        workers.push(GrpcWorker { client, slug: deploy::SLUG.into() });
    }
    let request_bytes = grpc::pb::ShowChangeRequest { slug: deploy::SLUG.into() }.encoded_len();
    Ok((workers, request_bytes, response_bytes))
}

pub async fn run_one(
    scenario: &Scenario,
    repeat: usize,
    connections: usize,
    window: Window,
    o: &DeployOptions<'_>,
) -> anyhow::Result<RunResult> {
    run_one_with(scenario, repeat, connections, window, o, None).await
}

pub async fn run_one_with(
    scenario: &Scenario,
    repeat: usize,
    connections: usize,
    window: Window,
    o: &DeployOptions<'_>,
    telemetry: Option<&deploy::TelemetrySetup>,
) -> anyhow::Result<RunResult> {
    let running = deploy::start_with(scenario.deploy, o, telemetry).await?;
    let marks = std::cell::RefCell::new(Vec::<(f64, f64, proc::CpuSample)>::new());
    let mark = || marks.borrow_mut().push((running.cpu_seconds(), proc::self_cpu_seconds(), proc::cpu_sample()));
    let (outcome, request_bytes, response_bytes) = match scenario.load {
        Load::GrpcChannels | Load::GrpcOneChannel => {
            let addr = running.grpc.context("no gRPC address")?;
            let (workers, req, res) = grpc_workers(addr, connections, scenario.load == Load::GrpcOneChannel).await?;
            (load::run(workers, window, mark).await, req, res)
        }
        _ => {
            let (workers, req, res) = http_workers(scenario, running.http, connections).await?;
            (load::run(workers, window, mark).await, req, res)
        }
    };
    let marks = marks.into_inner();
    let secs = window.measure.as_secs_f64();
    let (server_cpu, client_cpu, core_busy, softirq, steal) = match marks.as_slice() {
        [a, b] => (b.0 - a.0, b.1 - a.1, a.2.cores_since(&b.2, secs), b.2.softirq - a.2.softirq, b.2.steal - a.2.steal),
        _ => (0.0, 0.0, Vec::new(), 0.0, 0.0),
    };
    let foreign_cores = core_busy.iter().sum::<f64>() - (server_cpu + client_cpu) / secs;
    let server_rss_kib = running.rss_kib();
    let server_threads = proc::threads(running.http_server().pid()).unwrap_or(0);
    running.stop();
    let calls_per_sec = outcome.calls as f64 / outcome.seconds;
    Ok(RunResult {
        scenario: scenario.id,
        repeat,
        connections,
        calls: outcome.calls,
        errors: outcome.errors,
        first_error: outcome.first_error,
        calls_per_sec,
        latency: load::summarize(&outcome.latency),
        server_cores: server_cpu / outcome.seconds,
        client_cores: client_cpu / outcome.seconds,
        server_cpu_us_per_call: if outcome.calls > 0 { server_cpu * 1e6 / outcome.calls as f64 } else { 0.0 },
        request_bytes,
        response_bytes,
        server_rss_kib,
        server_threads,
        core_busy,
        foreign_cores,
        softirq_cores: softirq / secs,
        steal_cores: steal / secs,
        disturbed: foreign_cores > DISTURBED_CORES,
    })
}
