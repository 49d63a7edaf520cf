//! Metrics: the instruments of `monitoring/METRICS.md`, and their two ways out.
//!
//! * **OTLP push** (to a Collector). On when `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`
//!   or `OTEL_EXPORTER_OTLP_ENDPOINT` is set, unless `OTEL_METRICS_EXPORTER=none`
//!   or `OTEL_SDK_DISABLED=true`. gRPC by default; `http/protobuf` when
//!   `OTEL_EXPORTER_OTLP_METRICS_PROTOCOL` (or `OTEL_EXPORTER_OTLP_PROTOCOL`)
//!   says so. Endpoint, headers, timeout and compression are the exporter's
//!   standard `OTEL_EXPORTER_OTLP[_METRICS]_*` variables. Every
//!   `OTEL_METRIC_EXPORT_INTERVAL` milliseconds (default 15 000), cumulative.
//!   The export runs on the SDK's `PeriodicReader` thread, never on a request;
//!   a failing export logs a warning at most once a minute.
//! * **Prometheus pull** on `--metrics-listen` (`GET /metrics`), through the
//!   official OpenTelemetry Prometheus exporter: the same series names.
//!
//! The resource is `service.name` (`OTEL_SERVICE_NAME`, default `task-mcp`),
//! the process's `service.instance.id` (shared with the traces),
//! `service.version` and `deployment.environment.name` (from
//! `OTEL_RESOURCE_ATTRIBUTES`, default `dev`), plus the SDK's `telemetry.sdk.*`.
//!
//! Nothing here touches the global meter provider: [`MetricsExport`] owns its
//! `SdkMeterProvider`, and [`Metrics`] is built from a `Meter` passed in, so
//! tests (several servers in one process) never share instruments.
use std::{
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use opentelemetry::{
    InstrumentationScope, KeyValue,
    metrics::{
        Counter, Histogram, Meter, MeterProvider as _, ObservableCounter, ObservableGauge, ObservableUpDownCounter,
    },
};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    metrics::{PeriodicReader, SdkMeterProvider, Temporality, data::ResourceMetrics, exporter::PushMetricExporter},
};
use task_mcp_gateway::metrics::{GatewayMetrics, LATENCY_BUCKETS, LiveCounts, Transport};

use crate::connections::ConnectionLimit;

/// `service.name` unless `OTEL_SERVICE_NAME` says otherwise; also the meter
/// (instrumentation scope) name, which the contract's `otel_scope_name` is.
pub const SERVICE_NAME: &str = "task-mcp";
/// Export interval when `OTEL_METRIC_EXPORT_INTERVAL` is not set.
pub const DEFAULT_EXPORT_INTERVAL: Duration = Duration::from_secs(15);
/// How long the final export at shutdown may take.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// Configuration

/// OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

/// Whether and how to push metrics over OTLP, from the `OTEL_*` environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    pub protocol: Protocol,
    /// The endpoint variable's value (the exporter reads it again itself).
    pub endpoint: String,
    pub interval: Duration,
    /// Settings that were ignored, for the startup log.
    pub notes: Vec<String>,
}

impl OtlpConfig {
    pub fn from_env() -> Option<OtlpConfig> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// `None` when OTLP metrics are off. `get` reads one variable.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Option<OtlpConfig> {
        let value = |key: &str| get(key).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        if value("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return None;
        }
        let mut notes = Vec::new();
        if let Some(exporters) = value("OTEL_METRICS_EXPORTER") {
            let list: Vec<String> = exporters.split(',').map(|e| e.trim().to_ascii_lowercase()).collect();
            if list.iter().any(|e| e == "none") || !list.iter().any(|e| e == "otlp") {
                return None;
            }
        }
        let endpoint = value("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT").or_else(|| value("OTEL_EXPORTER_OTLP_ENDPOINT"))?;
        let protocol = match value("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL")
            .or_else(|| value("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .map(|p| p.to_ascii_lowercase())
            .as_deref()
        {
            None | Some("grpc") => Protocol::Grpc,
            Some("http/protobuf") => Protocol::HttpProtobuf,
            Some(other) => {
                notes.push(format!("OTLP protocol {other:?} is not supported; using grpc"));
                Protocol::Grpc
            }
        };
        let interval = match value("OTEL_METRIC_EXPORT_INTERVAL") {
            None => DEFAULT_EXPORT_INTERVAL,
            Some(ms) => match ms.parse::<u64>() {
                Ok(ms) if ms > 0 => Duration::from_millis(ms),
                _ => {
                    notes.push(format!(
                        "OTEL_METRIC_EXPORT_INTERVAL={ms:?} is not a positive number of ms; using 15000"
                    ));
                    DEFAULT_EXPORT_INTERVAL
                }
            },
        };
        Some(OtlpConfig { protocol, endpoint, interval, notes })
    }
}

/// The resource every metric carries (the traces use the same rules and the
/// same `service.instance.id`).
pub fn resource() -> Resource {
    // The builder reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; the
    // defaults below apply only where those are silent.
    let from_env = std::env::var("OTEL_RESOURCE_ATTRIBUTES").unwrap_or_default();
    let mut builder = Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").map(|v| v.trim().is_empty()).unwrap_or(true)
        && !from_env.contains("service.name=")
    {
        builder = builder.with_service_name(SERVICE_NAME);
    }
    builder = builder.with_attributes([
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("service.instance.id", super::traces::service_instance_id().to_string()),
    ]);
    // The contract's values are dev, staging and prod; `dev` unless told.
    if !from_env.contains("deployment.environment.name=") {
        builder = builder.with_attribute(KeyValue::new("deployment.environment.name", "dev"));
    }
    builder.build()
}

// ---------------------------------------------------------------------------
// Export

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("OTLP metrics exporter: {0}")]
    Otlp(String),
    #[error("Prometheus exporter: {0}")]
    Prometheus(String),
}

/// The meter provider and its readers: the OTLP `PeriodicReader` (when
/// configured) and the Prometheus registry (when the pull endpoint is on).
pub struct MetricsExport {
    provider: SdkMeterProvider,
    registry: Option<prometheus::Registry>,
    otlp: Option<OtlpConfig>,
}

impl MetricsExport {
    /// Builds the pipeline. Must run inside the Tokio runtime: the gRPC
    /// exporter's channel is created here (it connects lazily).
    pub fn start(otlp: Option<OtlpConfig>, prometheus: bool) -> Result<Self, MetricsError> {
        let mut builder = SdkMeterProvider::builder().with_resource(resource());
        if let Some(config) = &otlp {
            use opentelemetry_otlp::MetricExporter;
            // The endpoint, headers, timeout and compression come from the
            // exporter's own reading of OTEL_EXPORTER_OTLP[_METRICS]_*.
            let exporter = match config.protocol {
                Protocol::Grpc => {
                    MetricExporter::builder().with_tonic().with_temporality(Temporality::Cumulative).build()
                }
                Protocol::HttpProtobuf => {
                    MetricExporter::builder().with_http().with_temporality(Temporality::Cumulative).build()
                }
            }
            .map_err(|e| MetricsError::Otlp(e.to_string()))?;
            let reader = PeriodicReader::builder(WarnOnFailure::new(exporter)).with_interval(config.interval).build();
            builder = builder.with_reader(reader);
        }
        let registry = if prometheus {
            let registry = prometheus::Registry::new();
            let exporter = opentelemetry_prometheus::exporter()
                .with_registry(registry.clone())
                .build()
                .map_err(|e| MetricsError::Prometheus(e.to_string()))?;
            builder = builder.with_reader(exporter);
            Some(registry)
        } else {
            None
        };
        Ok(MetricsExport { provider: builder.build(), registry, otlp })
    }

    /// The meter every instrument is created from: scope `task-mcp` with the
    /// crate version (the contract's `otel_scope_name`/`otel_scope_version`).
    pub fn meter(&self) -> Meter {
        meter(&self.provider)
    }

    pub fn registry(&self) -> Option<&prometheus::Registry> {
        self.registry.as_ref()
    }

    pub fn otlp(&self) -> Option<&OtlpConfig> {
        self.otlp.as_ref()
    }

    /// Logs what is exported where.
    pub fn log_status(&self) {
        match &self.otlp {
            Some(config) => {
                for note in &config.notes {
                    tracing::warn!(note, "OTLP metrics configuration");
                }
                tracing::info!(
                    endpoint = %config.endpoint,
                    protocol = ?config.protocol,
                    interval_ms = config.interval.as_millis() as u64,
                    "exporting metrics over OTLP"
                );
            }
            None => tracing::debug!("OTLP metrics export off (no OTEL_EXPORTER_OTLP_[METRICS_]ENDPOINT)"),
        }
    }

    /// Flushes (a last OTLP export) and stops the readers. The SDK blocks
    /// while it exports, so this runs on the blocking pool, bounded.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let flush = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_FLUSH));
        match tokio::time::timeout(SHUTDOWN_FLUSH + Duration::from_secs(1), flush).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "flushing metrics at shutdown failed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "flushing metrics at shutdown panicked"),
            Err(_) => tracing::warn!("flushing metrics at shutdown took too long; giving up"),
        }
    }
}

/// The one meter: scope `task-mcp`, version = the crate's.
pub fn meter(provider: &SdkMeterProvider) -> Meter {
    provider
        .meter_with_scope(InstrumentationScope::builder(SERVICE_NAME).with_version(env!("CARGO_PKG_VERSION")).build())
}

/// The OTLP exporter, with a warning when exports fail, at most once a minute
/// (the SDK's own diagnostics are compiled out, and silence would hide a dead
/// Collector), and a note when they work again.
#[derive(Debug)]
pub struct WarnOnFailure<E> {
    inner: E,
    warn: super::warn::WarnEvery,
    failing: AtomicBool,
}

impl<E> WarnOnFailure<E> {
    pub fn new(inner: E) -> Self {
        WarnOnFailure { inner, warn: super::warn::WarnEvery::default(), failing: AtomicBool::new(false) }
    }

    fn observe(&self, result: &OTelSdkResult) {
        match result {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("metrics export over OTLP works again");
                }
            }
            Err(e) => {
                self.failing.store(true, Ordering::Relaxed);
                if self.warn.allow(Instant::now()) {
                    tracing::warn!(
                        error = %e,
                        "metrics export over OTLP failed; retrying every interval (this warning repeats at most once a minute)"
                    );
                }
            }
        }
    }
}

impl<E: PushMetricExporter> PushMetricExporter for WarnOnFailure<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = self.inner.export(metrics).await;
        self.observe(&result);
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

// ---------------------------------------------------------------------------
// Prometheus pull endpoint

/// `GET /metrics`: the registry in the text format. `target_info` loses
/// `service_name` and `service_instance_id`: through the Collector those two
/// become `job` and `instance` and are not on `target_info`, and scraped
/// directly Prometheus sets `job`/`instance` from the scrape target, so the
/// series are the same either way.
pub fn prometheus_router(registry: prometheus::Registry) -> axum::Router {
    use axum::{http::header, response::IntoResponse, routing::get};
    axum::Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move {
                match encode(&registry) {
                    Ok(text) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response(),
                    Err(e) => {
                        tracing::warn!(error = %e, "encoding metrics failed");
                        (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "encoding metrics failed").into_response()
                    }
                }
            }
        }),
    )
}

/// The registry's families in the Prometheus text format, `target_info` trimmed.
pub fn encode(registry: &prometheus::Registry) -> Result<String, prometheus::Error> {
    use prometheus::Encoder as _;
    let mut families = registry.gather();
    for family in families.iter_mut().filter(|f| f.name() == "target_info") {
        for metric in family.mut_metric().iter_mut() {
            let labels: Vec<_> = metric
                .take_label()
                .into_iter()
                .filter(|l| l.name() != "service_name" && l.name() != "service_instance_id")
                .collect();
            metric.set_label(labels);
        }
    }
    let mut out = Vec::new();
    prometheus::TextEncoder::new().encode(&families, &mut out)?;
    String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
}

// ---------------------------------------------------------------------------
// Instruments

/// Readiness as the observable gauges see it (1 pass, 0 fail), set by the
/// writable probe and the health reporter's transitions.
#[derive(Debug)]
pub struct HealthFlags {
    upstream: AtomicBool,
    workspace: AtomicBool,
    workspace_space: AtomicBool,
}

impl Default for HealthFlags {
    fn default() -> Self {
        HealthFlags {
            upstream: AtomicBool::new(true),
            workspace: AtomicBool::new(true),
            workspace_space: AtomicBool::new(true),
        }
    }
}

impl HealthFlags {
    /// `grpc.health.v1` overall status is SERVING.
    pub fn set_upstream(&self, serving: bool) {
        self.upstream.store(serving, Ordering::Relaxed);
    }

    /// The workspace check of readiness passes: the workspace can be written, or its disk is
    /// full, which keeps the service ready (see `startup::spawn_writable_probe`).
    pub fn set_workspace(&self, writable: bool) {
        self.workspace.store(writable, Ordering::Relaxed);
    }

    /// The workspace's file system has room: false only while the probe's write fails for
    /// lack of space (ENOSPC, EDQUOT: what makes writes answer `WORKSPACE_FULL`). Readiness
    /// passes either way; `TaskMcpWorkspaceFull` alerts on it.
    pub fn set_workspace_space(&self, has_room: bool) {
        self.workspace_space.store(has_room, Ordering::Relaxed);
    }
}

/// Every instrument of the contract. The HTTP, streaming and security ones
/// live in [`GatewayMetrics`] (the gateway crate records them; the service
/// shares the handles); the gRPC, tool, process and health ones are here.
pub struct Metrics {
    pub gateway: Arc<GatewayMetrics>,
    pub rpc_duration: Histogram<f64>,
    pub tool_executions: Counter<u64>,
    pub tool_duration: Histogram<f64>,
    /// Tool executions in flight by tool and transport.
    pub tool_active: Arc<LiveCounts<(&'static str, Transport)>>,
    /// Observable instruments: kept so their callbacks live as long as this.
    _observed: Vec<ObservableGauge<i64>>,
    _tool_active: ObservableUpDownCounter<i64>,
    _observed_f64: Vec<ObservableGauge<f64>>,
    _connections: ConnectionInstruments,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Creates every instrument from `meter`. `max_streams` is the configured
    /// cap on open streams; `health` the readiness flags to observe (`None`:
    /// no readiness checks here, as in `task-mcp gateway`); `listeners` the
    /// connection caps of the listeners this process serves.
    pub fn new(
        meter: &Meter,
        max_streams: usize,
        health: Option<Arc<HealthFlags>>,
        listeners: &[ConnectionLimit],
    ) -> Metrics {
        let gateway = Arc::new(GatewayMetrics::new(meter, max_streams));
        let process = Arc::new(ProcessStats::new());
        let (cpu, mem, limit, uptime) = (process.clone(), process.clone(), process.clone(), process);
        let mut observed = vec![
            meter
                .i64_observable_gauge("process.memory")
                .with_unit("By")
                .with_description("Memory of the process.")
                .with_callback(move |o| {
                    if let Some((rss, virt)) = mem.memory() {
                        o.observe(rss, &[KeyValue::new("type", "rss")]);
                        o.observe(virt, &[KeyValue::new("type", "virtual")]);
                    }
                })
                .build(),
            meter
                .i64_observable_gauge("process.memory.limit")
                .with_unit("By")
                .with_description("Memory the process may use, for the memory saturation alerts.")
                .with_callback(move |o| {
                    if let Some(bytes) = limit.memory_limit() {
                        o.observe(bytes, &[]);
                    }
                })
                .build(),
        ];
        if let Some(health) = health {
            observed.push(
                meter
                    .i64_observable_gauge("health.check.status")
                    .with_unit("{status}")
                    .with_description(
                        "Result of each readiness check and of the workspace's space check (1 pass, 0 fail).",
                    )
                    .with_callback(move |o| {
                        let flag = |b: &AtomicBool| i64::from(b.load(Ordering::Relaxed));
                        o.observe(flag(&health.upstream), &[KeyValue::new("check", "upstream")]);
                        o.observe(flag(&health.workspace), &[KeyValue::new("check", "workspace")]);
                        o.observe(flag(&health.workspace_space), &[KeyValue::new("check", "workspace_space")]);
                    })
                    .build(),
            );
        }
        let tool_active: Arc<LiveCounts<(&'static str, Transport)>> = Arc::default();
        let active = tool_active.clone();
        let observed_f64 = vec![
            meter
                .f64_observable_gauge("process.cpu.usage")
                .with_unit("%")
                .with_description("CPU use of the process as a percentage of the CPU available to it.")
                .with_callback(move |o| {
                    if let Some(percent) = cpu.cpu_percent() {
                        o.observe(percent, &[]);
                    }
                })
                .build(),
            meter
                .f64_observable_gauge("process.uptime")
                .with_unit("s")
                .with_description("Seconds since the process started.")
                .with_callback(move |o| o.observe(uptime.uptime(), &[]))
                .build(),
        ];
        Metrics {
            gateway,
            rpc_duration: meter
                .f64_histogram("rpc.server.call.duration")
                .with_unit("s")
                .with_description("gRPC calls served and their duration, by method and status code.")
                .with_boundaries(LATENCY_BUCKETS.to_vec())
                .build(),
            tool_executions: meter
                .u64_counter("tool.executions")
                .with_unit("{execution}")
                .with_description("Tool executions by tool, transport, outcome and error reason.")
                .build(),
            tool_duration: meter
                .f64_histogram("tool.execution.duration")
                .with_unit("s")
                .with_description("Tool execution time.")
                .with_boundaries(LATENCY_BUCKETS.to_vec())
                .build(),
            _tool_active: meter
                .i64_observable_up_down_counter("tool.active_executions")
                .with_unit("{execution}")
                .with_description("Tool executions in flight.")
                .with_callback(move |o| {
                    active.observe(o, |(tool, transport)| {
                        [KeyValue::new("tool.name", tool), KeyValue::new("transport", transport.as_str())]
                    })
                })
                .build(),
            tool_active,
            _observed: observed,
            _observed_f64: observed_f64,
            _connections: ConnectionInstruments::new(meter, listeners),
        }
    }
}

/// `listener.*`: the open connections, the cap and the refusals of each listener, read from
/// the limits themselves at each collection, so that accepting or refusing a connection records
/// nothing through the SDK. Each series exists from the start (the refusals at 0), so a rate
/// sees the first refusal too.
struct ConnectionInstruments {
    _open: ObservableUpDownCounter<i64>,
    _max: ObservableGauge<i64>,
    _refused: ObservableCounter<u64>,
}

impl ConnectionInstruments {
    fn new(meter: &Meter, listeners: &[ConnectionLimit]) -> Self {
        let attributes = |limit: &ConnectionLimit| [KeyValue::new("listener", limit.listener().as_str())];
        let (open, max, refused) = (listeners.to_vec(), listeners.to_vec(), listeners.to_vec());
        ConnectionInstruments {
            _open: meter
                .i64_observable_up_down_counter("listener.active_connections")
                .with_unit("{connection}")
                .with_description("Open connections of each listener.")
                .with_callback(move |o| {
                    for limit in &open {
                        o.observe(i64::try_from(limit.open()).unwrap_or(i64::MAX), &attributes(limit));
                    }
                })
                .build(),
            _max: meter
                .i64_observable_gauge("listener.max_connections")
                .with_unit("{connection}")
                .with_description("Configured limit on the open connections of each listener, for saturation.")
                .with_callback(move |o| {
                    for limit in &max {
                        o.observe(i64::try_from(limit.max()).unwrap_or(i64::MAX), &attributes(limit));
                    }
                })
                .build(),
            _refused: meter
                .u64_observable_counter("listener.refused_connections")
                .with_unit("{connection}")
                .with_description("Connections closed at once because their listener was full.")
                .with_callback(move |o| {
                    for limit in &refused {
                        o.observe(limit.refused(), &attributes(limit));
                    }
                })
                .build(),
        }
    }
}

// ---------------------------------------------------------------------------
// Process statistics from /proc (Linux); elsewhere the gauges stay silent
// except uptime.

/// When the process started, as near as this code can tell (the first call).
pub fn process_started() -> Instant {
    static STARTED: OnceLock<Instant> = OnceLock::new();
    *STARTED.get_or_init(Instant::now)
}

struct ProcessStats {
    /// CPU seconds and wall time at the previous observation.
    last_cpu: Mutex<Option<(f64, Instant)>>,
    clock_ticks: f64,
    page_size: i64,
    cpus: f64,
}

impl ProcessStats {
    // `c_long` is `i64` here but `i32` on 32-bit targets: the conversions are not useless there.
    #[allow(clippy::useless_conversion)]
    fn new() -> Self {
        // SAFETY: sysconf only reads system configuration values.
        let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
        let stats = ProcessStats {
            last_cpu: Mutex::new(None),
            clock_ticks: if ticks > 0 { ticks as f64 } else { 100.0 },
            page_size: if page > 0 { i64::from(page) } else { 4096 },
            // Honours the affinity mask and cgroup CPU quotas.
            cpus: std::thread::available_parallelism().map(|n| n.get() as f64).unwrap_or(1.0),
        };
        process_started();
        // The first observation then measures from now, not from boot.
        let baseline = stats.cpu_seconds().map(|s| (s, Instant::now()));
        *stats.last_cpu.lock().unwrap_or_else(|p| p.into_inner()) = baseline;
        stats
    }

    /// utime + stime of this process, in seconds.
    fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        parse_cpu_ticks(&stat).map(|ticks| ticks as f64 / self.clock_ticks)
    }

    /// CPU used since the previous observation over (elapsed x CPUs), in %.
    fn cpu_percent(&self) -> Option<f64> {
        let now = Instant::now();
        let cpu = self.cpu_seconds()?;
        let mut last = self.last_cpu.lock().unwrap_or_else(|p| p.into_inner());
        let previous = last.replace((cpu, now));
        let (prev_cpu, prev_at) = previous?;
        let wall = now.duration_since(prev_at).as_secs_f64();
        if wall <= 0.0 {
            return None;
        }
        Some(((cpu - prev_cpu).max(0.0) / (wall * self.cpus) * 100.0).clamp(0.0, 100.0))
    }

    /// (resident, virtual) bytes from /proc/self/statm.
    fn memory(&self) -> Option<(i64, i64)> {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let (size, resident) = parse_statm(&statm)?;
        Some((resident.saturating_mul(self.page_size), size.saturating_mul(self.page_size)))
    }

    #[allow(clippy::useless_conversion)] // as in `new`
    fn memory_limit(&self) -> Option<i64> {
        cgroup_memory_limit().or_else(|| {
            // SAFETY: sysconf only reads system configuration values.
            let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
            (pages > 0).then(|| i64::from(pages).saturating_mul(self.page_size))
        })
    }

    fn uptime(&self) -> f64 {
        process_started().elapsed().as_secs_f64()
    }
}

/// utime + stime (fields 14 and 15) in clock ticks. The command name (field 2)
/// may contain spaces and parentheses, so fields are counted after its last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // `rest` starts at field 3 (state): utime is the 12th field from there.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// (size, resident) in pages.
fn parse_statm(statm: &str) -> Option<(i64, i64)> {
    let mut fields = statm.split_whitespace();
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

/// The tightest cgroup memory limit on the process's cgroup path (v2:
/// `memory.max` from the leaf up; v1: `memory.limit_in_bytes`). `None` when
/// no limit is set.
fn cgroup_memory_limit() -> Option<i64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mut best: Option<i64> = None;
    let mut consider = |value: Option<i64>| {
        if let Some(v) = value {
            best = Some(best.map_or(v, |b| b.min(v)));
        }
    };
    if let Some(path) = cgroups.lines().find_map(|l| l.strip_prefix("0::")) {
        let mut dir = std::path::PathBuf::from("/sys/fs/cgroup");
        dir.push(path.trim_start_matches('/'));
        loop {
            consider(read_limit(&dir.join("memory.max")));
            if dir == std::path::Path::new("/sys/fs/cgroup") || !dir.pop() {
                break;
            }
        }
    }
    consider(read_limit(std::path::Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes")));
    best
}

fn read_limit(path: &std::path::Path) -> Option<i64> {
    parse_limit(&std::fs::read_to_string(path).ok()?)
}

/// `max` (v2) or a huge number (v1's "unlimited") is no limit.
fn parse_limit(text: &str) -> Option<i64> {
    let value: i64 = text.trim().parse().ok()?;
    (value > 0 && value < (1 << 60)).then_some(value)
}

// ---------------------------------------------------------------------------
// Test support: read instruments back without any exporter.

/// Reads instruments back without any exporter (shared with the gateway's tests).
#[cfg(test)]
pub(crate) use task_mcp_gateway::metrics::testing;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connections::Listener;
    use std::collections::HashMap;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn otlp_is_on_only_with_an_endpoint() {
        assert_eq!(OtlpConfig::from_lookup(lookup(&[])), None);
        let c = OtlpConfig::from_lookup(lookup(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")])).unwrap();
        assert_eq!((c.protocol, c.interval), (Protocol::Grpc, DEFAULT_EXPORT_INTERVAL));
        let c = OtlpConfig::from_lookup(lookup(&[
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://c:4318/v1/metrics"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
        ]))
        .unwrap();
        assert_eq!((c.protocol, c.interval), (Protocol::HttpProtobuf, Duration::from_millis(500)));
        for off in [("OTEL_METRICS_EXPORTER", "none"), ("OTEL_SDK_DISABLED", "true")] {
            assert_eq!(OtlpConfig::from_lookup(lookup(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"), off])), None);
        }
        let c = OtlpConfig::from_lookup(lookup(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "soon"),
        ]))
        .unwrap();
        assert_eq!(c.protocol, Protocol::Grpc);
        assert_eq!(c.notes.len(), 2);
    }

    #[test]
    fn proc_parsing() {
        let stat = "1234 (task mcp (x)) S 1 2 3 4 5 6 7 8 9 10 150 50 0 0 20 0 8 0 100 200 300";
        assert_eq!(parse_cpu_ticks(stat), Some(200));
        assert_eq!(parse_statm("2048 512 100 1 0 300 0\n"), Some((2048, 512)));
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("536870912\n"), Some(536870912));
        assert_eq!(parse_limit("9223372036854771712"), None);
    }

    #[test]
    fn process_and_health_gauges_report_on_collection() {
        let t = testing::TestMeter::new();
        let health = Arc::new(HealthFlags::default());
        let limit = ConnectionLimit::new(Listener::Grpc, 3);
        let _m = Metrics::new(&t.meter(), 42, Some(health.clone()), std::slice::from_ref(&limit));
        let mut held: Vec<_> = (0..3).filter_map(|_| limit.admit()).collect();
        assert!(held.len() == 3 && limit.admit().is_none());
        held.truncate(1);
        assert_eq!(t.value("health.check.status", &["check=workspace_space"]), Some(1.0));
        health.set_workspace(false);
        assert_eq!(t.value("health.check.status", &["check=workspace"]), Some(0.0));
        assert_eq!(t.value("health.check.status", &["check=upstream"]), Some(1.0));
        assert_eq!(t.value("health.check.status", &["check=workspace_space"]), Some(1.0));
        // A full disk: readiness passes, the space check fails; each flag is its own.
        health.set_workspace(true);
        health.set_workspace_space(false);
        assert_eq!(t.value("health.check.status", &["check=workspace_space"]), Some(0.0));
        assert_eq!(t.value("health.check.status", &["check=workspace"]), Some(1.0));
        assert_eq!(t.value("health.check.status", &["check=upstream"]), Some(1.0));
        health.set_workspace_space(true);
        assert_eq!(t.value("health.check.status", &["check=workspace_space"]), Some(1.0));
        assert_eq!(t.value("streaming.max_connections", &[]), Some(42.0));
        // Three admitted, one refused, two closed again.
        assert_eq!(t.value("listener.active_connections", &["listener=grpc"]), Some(1.0));
        assert_eq!(t.value("listener.max_connections", &["listener=grpc"]), Some(3.0));
        assert_eq!(t.value("listener.refused_connections", &["listener=grpc"]), Some(1.0));
        assert!(t.value("process.uptime", &[]).is_some());
        if cfg!(target_os = "linux") {
            assert!(t.value("process.memory", &["type=rss"]).unwrap() > 0.0);
            assert!(t.value("process.memory", &["type=virtual"]).unwrap() > 0.0);
            assert!(t.value("process.memory.limit", &[]).unwrap() > 0.0);
            let cpu = t.value("process.cpu.usage", &[]).unwrap();
            assert!((0.0..=100.0).contains(&cpu), "{cpu}");
        }
    }

    #[test]
    fn prometheus_names_match_the_contract_and_target_info_is_trimmed() {
        let export = MetricsExport::start(None, true).unwrap();
        let limits = [ConnectionLimit::new(Listener::Grpc, 4), ConnectionLimit::new(Listener::Http, 4)];
        let metrics = Metrics::new(&export.meter(), 10, Some(Arc::new(HealthFlags::default())), &limits);
        metrics.tool_executions.add(1, &[KeyValue::new("tool.name", "change.open")]);
        metrics.gateway.auth(task_mcp_gateway::metrics::Transport::Http, task_mcp_gateway::metrics::AuthResult::Valid);
        let text = encode(export.registry().unwrap()).unwrap();
        for name in [
            "tool_executions_total{",
            "auth_attempts_total{",
            "process_cpu_usage_percent{",
            "process_memory_bytes{",
            "process_memory_limit_bytes{",
            "process_uptime_seconds{",
            "health_check_status{",
            "streaming_max_connections{",
            "listener_active_connections{",
            "listener_max_connections{",
            "listener_refused_connections_total{",
            "target_info{",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
        let target = text.lines().find(|l| l.starts_with("target_info{")).unwrap();
        assert!(!target.contains("service_name") && !target.contains("service_instance_id"), "{target}");
        assert!(target.contains("deployment_environment_name=\"dev\""), "{target}");
        assert!(text.contains("otel_scope_name=\"task-mcp\""));
    }
}
