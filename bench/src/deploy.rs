//! The server set-ups under test, each started fresh and pinned to the server core.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Serialize;

use crate::{
    grpc,
    proc::{Scratch, Server, free_port, loopback, wait_listening},
};

pub const SLUG: &str = "bench-change";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Deploy {
    /// `task-mcp serve`: gRPC service and gateway in one process, the gateway calling in-process.
    Serve,
    /// `serve` with the conformance fixtures (tools answered by the gateway alone).
    ServeFixtures,
    /// `serve` with the default log level (`info`: one line per gRPC call).
    ServeInfoLog,
    /// `task-mcp gateway --upstream` in front of a separate `serve`, over loopback gRPC.
    Split,
    /// The rmcp peer, stateless JSON mode.
    Rmcp,
    /// The rmcp peer in session mode.
    RmcpStateful,
    /// `http-floor`: hyper's HTTP/1.1 answering a prebuilt answer (the floor under any server).
    Floor,
}

/// How a `serve` reports metrics (the telemetry scenarios); without it, the
/// Prometheus endpoint is on at a free port, as in every other scenario.
pub struct TelemetrySetup {
    /// `--metrics-listen`: an address, or `None` for `off`.
    pub metrics_listen: Option<SocketAddr>,
    /// Extra environment (`OTEL_*`).
    pub env: Vec<(&'static str, String)>,
}

pub struct Binaries {
    pub task_mcp: PathBuf,
    pub rmcp_echo: PathBuf,
    pub http_floor: PathBuf,
}

pub struct Running {
    pub servers: Vec<Server>,
    /// Where HTTP clients go (gateway or peer).
    pub http: SocketAddr,
    /// The gRPC service, for task-mcp deployments.
    pub grpc: Option<SocketAddr>,
    _scratch: Option<Scratch>,
}

impl Running {
    pub fn cpu_seconds(&self) -> f64 {
        self.servers.iter().map(|s| s.cpu_seconds().unwrap_or(0.0)).sum()
    }

    pub fn rss_kib(&self) -> u64 {
        self.servers.iter().map(|s| s.rss_kib().unwrap_or(0)).sum()
    }

    /// The process that serves HTTP (the gateway in the split set-up).
    pub fn http_server(&self) -> &Server {
        self.servers.last().expect("at least one server")
    }

    pub fn stop(self) {
        for s in self.servers.into_iter().rev() {
            s.stop();
        }
    }
}

pub struct DeployOptions<'a> {
    pub bins: &'a Binaries,
    pub cpu: &'a str,
    pub work: &'a Path,
    pub logs: &'a Path,
    pub tag: &'a str,
}

fn s(v: impl ToString) -> String {
    v.to_string()
}

fn serve_args(workspace: &Path, grpc: u16, http: u16, metrics: Option<String>) -> anyhow::Result<Vec<String>> {
    let metrics = match metrics {
        Some(m) => m,
        None => loopback(free_port()?).to_string(),
    };
    Ok(vec![
        s("serve"),
        s("--workspace"),
        workspace.display().to_string(),
        s("--grpc-listen"),
        loopback(grpc).to_string(),
        s("--http-listen"),
        loopback(http).to_string(),
        s("--metrics-listen"),
        metrics,
        s("--rate-limit-per-second"),
        s(0),
        s("--max-sessions"),
        s(30_000),
        s("--max-streams"),
        s(30_000),
        // The default follows the open-file limit; the memory runs hold 10,000 connections and more.
        s("--max-connections"),
        s(30_000),
    ])
}

pub async fn start(deploy: Deploy, o: &DeployOptions<'_>) -> anyhow::Result<Running> {
    start_with(deploy, o, None).await
}

pub async fn start_with(
    deploy: Deploy,
    o: &DeployOptions<'_>,
    telemetry: Option<&TelemetrySetup>,
) -> anyhow::Result<Running> {
    let log = |name: &str| o.logs.join(format!("{}-{name}.log", o.tag));
    let quiet = [("RUST_LOG", "warn")];
    match deploy {
        Deploy::Serve | Deploy::ServeFixtures | Deploy::ServeInfoLog | Deploy::Split => {
            let scratch = Scratch::new(o.work, o.tag)?;
            let workspace = scratch.0.join("openspec");
            let (grpc_port, http_port) = (free_port()?, free_port()?);
            let metrics = telemetry.map(|t| t.metrics_listen.map_or_else(|| s("off"), |a| a.to_string()));
            let mut args = serve_args(&workspace, grpc_port, http_port, metrics)?;
            if deploy == Deploy::ServeFixtures {
                args.push(s("--conformance-fixtures"));
            }
            let mut env: Vec<(&str, &str)> =
                if deploy == Deploy::ServeInfoLog { vec![("RUST_LOG", "info")] } else { quiet.to_vec() };
            if let Some(t) = telemetry {
                env.extend(t.env.iter().map(|(k, v)| (*k, v.as_str())));
            }
            let mut serve = Server::spawn("serve", o.cpu, &o.bins.task_mcp, &args, &env, &log("serve"))?;
            wait_listening(&mut serve, loopback(grpc_port)).await?;
            wait_listening(&mut serve, loopback(http_port)).await?;
            grpc::open_bench_change(loopback(grpc_port), SLUG).await?;
            let mut servers = vec![serve];
            let mut http = loopback(http_port);
            if deploy == Deploy::Split {
                let gw_port = free_port()?;
                let args = vec![
                    s("gateway"),
                    s("--upstream"),
                    format!("http://{}", loopback(grpc_port)),
                    s("--http-listen"),
                    loopback(gw_port).to_string(),
                    s("--rate-limit-per-second"),
                    s(0),
                    s("--max-sessions"),
                    s(30_000),
                    s("--max-streams"),
                    s(30_000),
                    s("--max-connections"),
                    s(30_000),
                ];
                let mut gw = Server::spawn("gateway", o.cpu, &o.bins.task_mcp, &args, &quiet, &log("gateway"))?;
                wait_listening(&mut gw, loopback(gw_port)).await?;
                servers.push(gw);
                http = loopback(gw_port);
            }
            Ok(Running { servers, http, grpc: Some(loopback(grpc_port)), _scratch: Some(scratch) })
        }
        Deploy::Rmcp | Deploy::RmcpStateful => {
            let port = free_port()?;
            let mut args = vec![s("--listen"), loopback(port).to_string()];
            if deploy == Deploy::RmcpStateful {
                args.push(s("--stateful"));
            }
            let mut peer = Server::spawn("rmcp-echo", o.cpu, &o.bins.rmcp_echo, &args, &quiet, &log("rmcp"))?;
            wait_listening(&mut peer, loopback(port)).await?;
            Ok(Running { servers: vec![peer], http: loopback(port), grpc: None, _scratch: None })
        }
        Deploy::Floor => {
            let port = free_port()?;
            let args = vec![s("--listen"), loopback(port).to_string()];
            let mut floor = Server::spawn("http-floor", o.cpu, &o.bins.http_floor, &args, &quiet, &log("floor"))?;
            wait_listening(&mut floor, loopback(port)).await?;
            Ok(Running { servers: vec![floor], http: loopback(port), grpc: None, _scratch: None })
        }
    }
}
