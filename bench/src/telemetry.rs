//! What metrics cost: the same load with metrics off, pulled by Prometheus,
//! pushed over OTLP to a live receiver, and pushed at a Collector that is
//! down (a closed port) or stalled (accepts TCP, never answers).
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
    metrics_service_server::{MetricsService, MetricsServiceServer},
};
use serde::Serialize;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

use crate::{
    deploy::{DeployOptions, TelemetrySetup},
    load::Window,
    proc::{free_port, loopback},
    throughput::{self, Load, RunResult, Scenario},
};

/// The push interval of every OTLP variant, ms.
pub const EXPORT_INTERVAL_MS: &str = "1000";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// `--metrics-listen off`, no OTLP endpoint: no metric kept at all.
    Off,
    /// `--metrics-listen ADDR`, scraped every second during the run.
    Prometheus,
    /// OTLP gRPC push every second to a receiver that accepts and drops.
    OtlpLive,
    /// OTLP pointed at a port nothing listens on.
    OtlpClosed,
    /// OTLP pointed at a listener that accepts connections and never answers.
    OtlpStalled,
}

pub struct TelemetryScenario {
    pub scenario: Scenario,
    pub variant: Variant,
}

const fn t(id: &'static str, what: &'static str, load: Load, variant: Variant) -> TelemetryScenario {
    let tool = if matches!(load, Load::GrpcChannels) { "ShowChange" } else { "change.show" };
    TelemetryScenario { scenario: Scenario { id, what, deploy: crate::deploy::Deploy::Serve, load, tool }, variant }
}

const GRPC: Load = Load::GrpcChannels;
const MCP: Load = Load::McpSession;

pub const SCENARIOS: &[TelemetryScenario] = &[
    t("t-grpc-off", "ShowChange over gRPC, 64 channels; metrics off", GRPC, Variant::Off),
    t("t-grpc-prom", "same; Prometheus endpoint, scraped every 1 s", GRPC, Variant::Prometheus),
    t("t-grpc-otlp-live", "same; OTLP push every 1 s to a live receiver", GRPC, Variant::OtlpLive),
    t("t-grpc-otlp-closed", "same; OTLP pointed at a closed port", GRPC, Variant::OtlpClosed),
    t("t-grpc-otlp-stalled", "same; OTLP pointed at a receiver that never answers", GRPC, Variant::OtlpStalled),
    t("t-mcp-off", "change.show, MCP tools/call (session), serve; metrics off", MCP, Variant::Off),
    t("t-mcp-prom", "same; Prometheus endpoint, scraped every 1 s", MCP, Variant::Prometheus),
    t("t-mcp-otlp-live", "same; OTLP push every 1 s to a live receiver", MCP, Variant::OtlpLive),
    t("t-mcp-otlp-closed", "same; OTLP pointed at a closed port", MCP, Variant::OtlpClosed),
    t("t-mcp-otlp-stalled", "same; OTLP pointed at a receiver that never answers", MCP, Variant::OtlpStalled),
];

/// What the telemetry side saw during one run: proof that metrics were really on.
#[derive(Debug, Clone, Serialize)]
pub struct TelemetryNote {
    pub scenario: &'static str,
    pub repeat: usize,
    pub variant: Variant,
    /// Successful `GET /metrics` scrapes, and the size of the last one.
    pub scrapes: u64,
    pub last_scrape_bytes: u64,
    /// Export requests the live receiver got.
    pub exports: u64,
    /// TCP connections the stalling receiver accepted (and held).
    pub stalled_connections: u64,
}

#[derive(Clone, Default)]
struct Sink {
    exports: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl MetricsService for Sink {
    async fn export(
        &self,
        _request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.exports.fetch_add(1, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

/// The helpers of one run (receiver, staller, scraper), stopped when dropped.
#[derive(Default)]
struct Helpers {
    tasks: Vec<JoinHandle<()>>,
    exports: Arc<AtomicU64>,
    scrapes: Arc<AtomicU64>,
    last_scrape_bytes: Arc<AtomicU64>,
    stalled: Arc<AtomicU64>,
}

impl Drop for Helpers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn scrape(addr: SocketAddr) -> anyhow::Result<u64> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut body = Vec::new();
    s.read_to_end(&mut body).await?;
    anyhow::ensure!(
        body.starts_with(b"HTTP/1.1 200"),
        "scrape answered {:?}",
        String::from_utf8_lossy(&body[..body.len().min(40)])
    );
    Ok(body.len() as u64)
}

fn otlp_env(endpoint: SocketAddr) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{endpoint}")),
        ("OTEL_METRIC_EXPORT_INTERVAL", EXPORT_INTERVAL_MS.into()),
        // Metrics only: the endpoint would turn trace export on too, which is not what is measured here.
        ("OTEL_TRACES_EXPORTER", "none".into()),
    ]
}

async fn set_up(variant: Variant, h: &mut Helpers) -> anyhow::Result<TelemetrySetup> {
    Ok(match variant {
        Variant::Off => TelemetrySetup { metrics_listen: None, env: Vec::new() },
        Variant::Prometheus => {
            let addr = loopback(free_port()?);
            let (scrapes, bytes) = (h.scrapes.clone(), h.last_scrape_bytes.clone());
            h.tasks.push(tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(1));
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    every.tick().await;
                    if let Ok(n) = scrape(addr).await {
                        scrapes.fetch_add(1, Ordering::Relaxed);
                        bytes.store(n, Ordering::Relaxed);
                    }
                }
            }));
            TelemetrySetup { metrics_listen: Some(addr), env: Vec::new() }
        }
        Variant::OtlpLive => {
            let listener = TcpListener::bind(loopback(0)).await?;
            let addr = listener.local_addr()?;
            let sink = Sink { exports: h.exports.clone() };
            h.tasks.push(tokio::spawn(async move {
                let _ = tonic::transport::Server::builder()
                    .add_service(MetricsServiceServer::new(sink))
                    .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                    .await;
            }));
            TelemetrySetup { metrics_listen: None, env: otlp_env(addr) }
        }
        Variant::OtlpClosed => TelemetrySetup { metrics_listen: None, env: otlp_env(loopback(free_port()?)) },
        Variant::OtlpStalled => {
            let listener = TcpListener::bind(loopback(0)).await?;
            let addr = listener.local_addr()?;
            let stalled = h.stalled.clone();
            h.tasks.push(tokio::spawn(async move {
                let mut held = Vec::new();
                while let Ok((socket, _)) = listener.accept().await {
                    stalled.fetch_add(1, Ordering::Relaxed);
                    held.push(socket);
                }
            }));
            TelemetrySetup { metrics_listen: None, env: otlp_env(addr) }
        }
    })
}

pub async fn run_one(
    t: &TelemetryScenario,
    repeat: usize,
    connections: usize,
    window: Window,
    o: &DeployOptions<'_>,
) -> anyhow::Result<(RunResult, TelemetryNote)> {
    let mut helpers = Helpers::default();
    let setup = set_up(t.variant, &mut helpers).await?;
    let r = throughput::run_one_with(&t.scenario, repeat, connections, window, o, Some(&setup)).await?;
    let note = TelemetryNote {
        scenario: t.scenario.id,
        repeat,
        variant: t.variant,
        scrapes: helpers.scrapes.load(Ordering::Relaxed),
        last_scrape_bytes: helpers.last_scrape_bytes.load(Ordering::Relaxed),
        exports: helpers.exports.load(Ordering::Relaxed),
        stalled_connections: helpers.stalled.load(Ordering::Relaxed),
    };
    match t.variant {
        Variant::Prometheus => anyhow::ensure!(note.scrapes > 0, "no scrape of /metrics succeeded"),
        Variant::OtlpLive => anyhow::ensure!(note.exports > 0, "the receiver got no export"),
        Variant::OtlpStalled => anyhow::ensure!(note.stalled_connections > 0, "the exporter never connected"),
        Variant::Off | Variant::OtlpClosed => {}
    }
    Ok((r, note))
}
