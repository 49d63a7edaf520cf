//! The metrics contract over OTLP: a real OTLP receiver (the
//! `opentelemetry-proto` tonic `MetricsService`) inside the test, the real
//! binary exporting to it every 300 ms.
//!
//! After a scripted workload over gRPC, HTTP/JSON and MCP, the last export must
//! hold every application series of `monitoring/metrics.json` (read at test
//! time), each from the OpenTelemetry instrument, kind and unit the contract
//! names, with exactly the contract's labels and only their allowed values,
//! the histogram buckets of the contract, and the figures the workload implies
//! (three gRPC `change.open` calls are three successful executions); nothing
//! outside the table may be exported. The Collector's name translation
//! (METRICS.md) turns the OTLP metrics into the Prometheus series compared.
//!
//! Also: HTTP/protobuf export, a final export at shutdown, and a Collector
//! that is down costing one warning and no failed request.
mod common;
mod metrics_support;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use metrics_support::{Contract, prometheus_name};
use opentelemetry_proto::tonic::{
    collector::metrics::v1::{
        ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        metrics_service_server::{MetricsService, MetricsServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value::Value as Any},
    metrics::v1::{AggregationTemporality, Metric, metric::Data, number_data_point::Value as Number},
};
use prost::Message as _;

/// How long the figures may take to show up in an export (a failure bound).
const ARRIVAL_BOUND: Duration = Duration::from_secs(30);
const INTERVAL_MS: &str = "300";

// ------------------------------------------------------------------ receiver

#[derive(Clone, Default)]
struct Receiver {
    exports: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
}

impl Receiver {
    fn latest(&self) -> Option<ExportMetricsServiceRequest> {
        self.exports.lock().unwrap_or_else(|e| e.into_inner()).last().cloned()
    }

    fn count(&self) -> usize {
        self.exports.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.exports.lock().unwrap_or_else(|e| e.into_inner()).push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

/// A gRPC OTLP receiver on a free loopback port.
async fn grpc_receiver() -> (SocketAddr, Receiver) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind receiver");
    let addr = listener.local_addr().expect("receiver addr");
    let receiver = Receiver::default();
    let service = MetricsServiceServer::new(receiver.clone());
    tokio::spawn(async move {
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let _ = tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await;
    });
    (addr, receiver)
}

/// An HTTP/protobuf OTLP receiver (`POST /v1/metrics`) on a free loopback port.
async fn http_receiver() -> (SocketAddr, Receiver) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind receiver");
    let addr = listener.local_addr().expect("receiver addr");
    let receiver = Receiver::default();
    let store = receiver.clone();
    let app = axum::Router::new().route(
        "/v1/metrics",
        axum::routing::post(move |body: axum::body::Bytes| {
            let store = store.clone();
            async move {
                match ExportMetricsServiceRequest::decode(body) {
                    Ok(request) => {
                        store.exports.lock().unwrap_or_else(|e| e.into_inner()).push(request);
                        let ok = ExportMetricsServiceResponse { partial_success: None }.encode_to_vec();
                        (axum::http::StatusCode::OK, [("content-type", "application/x-protobuf")], ok)
                    }
                    Err(_) => (axum::http::StatusCode::BAD_REQUEST, [("content-type", "text/plain")], Vec::new()),
                }
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, receiver)
}

// ------------------------------------------------------------------ flattening

fn any(value: &Option<AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::IntValue(i)) => i.to_string(),
        Some(Any::BoolValue(b)) => b.to_string(),
        Some(Any::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

/// Attribute keys as Prometheus label names (rule 4 of the translation).
fn labels(attributes: &[KeyValue]) -> BTreeMap<String, String> {
    attributes
        .iter()
        .map(|kv| {
            let key: String =
                kv.key.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
            (key, any(&kv.value))
        })
        .collect()
}

fn attributes(attributes: &[KeyValue]) -> BTreeMap<String, String> {
    attributes.iter().map(|kv| (kv.key.clone(), any(&kv.value))).collect()
}

/// `le` as Prometheus prints it: `1`, `0.005`, `+Inf`.
fn le(bound: f64) -> String {
    if bound.fract() == 0.0 { format!("{}", bound as i64) } else { format!("{bound}") }
}

/// One Prometheus sample.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// What one export says, flattened.
struct Export {
    resource: BTreeMap<String, String>,
    scopes: Vec<(String, String)>,
    metrics: Vec<Metric>,
    samples: Vec<Sample>,
}

fn flatten(request: &ExportMetricsServiceRequest) -> Export {
    let mut export = Export { resource: BTreeMap::new(), scopes: Vec::new(), metrics: Vec::new(), samples: Vec::new() };
    for rm in &request.resource_metrics {
        if let Some(resource) = &rm.resource {
            export.resource.extend(attributes(&resource.attributes));
        }
        for sm in &rm.scope_metrics {
            let scope = sm.scope.as_ref().map(|s| (s.name.clone(), s.version.clone())).unwrap_or_default();
            export.scopes.push(scope);
            for metric in &sm.metrics {
                export.metrics.push(metric.clone());
                let sample =
                    |name: String, labels: BTreeMap<String, String>, value: f64| Sample { name, labels, value };
                match &metric.data {
                    Some(Data::Sum(sum)) => {
                        let name = prometheus_name(&metric.name, &metric.unit, sum.is_monotonic);
                        for p in &sum.data_points {
                            export.samples.push(sample(name.clone(), labels(&p.attributes), number(&p.value)));
                        }
                    }
                    Some(Data::Gauge(gauge)) => {
                        let name = prometheus_name(&metric.name, &metric.unit, false);
                        for p in &gauge.data_points {
                            export.samples.push(sample(name.clone(), labels(&p.attributes), number(&p.value)));
                        }
                    }
                    Some(Data::Histogram(h)) => {
                        let base = prometheus_name(&metric.name, &metric.unit, false);
                        for p in &h.data_points {
                            let l = labels(&p.attributes);
                            let mut cumulative = 0;
                            let bounds = p.explicit_bounds.iter().map(|b| le(*b)).chain(["+Inf".to_string()]);
                            for (bound, count) in bounds.zip(&p.bucket_counts) {
                                cumulative += count;
                                let mut with_le = l.clone();
                                with_le.insert("le".into(), bound);
                                export.samples.push(sample(format!("{base}_bucket"), with_le, cumulative as f64));
                            }
                            export.samples.push(sample(format!("{base}_sum"), l.clone(), p.sum.unwrap_or(0.0)));
                            export.samples.push(sample(format!("{base}_count"), l, p.count as f64));
                        }
                    }
                    other => panic!("{}: unexpected data {other:?}", metric.name),
                }
            }
        }
    }
    export
}

fn number(value: &Option<Number>) -> f64 {
    match value {
        Some(Number::AsInt(i)) => *i as f64,
        Some(Number::AsDouble(d)) => *d,
        None => f64::NAN,
    }
}

impl Export {
    fn value(&self, name: &str, want: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = want.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.samples.iter().find(|s| s.name == name && s.labels == want).map(|s| s.value)
    }

    /// Which of the workload's figures are not (yet) in this export.
    fn missing(&self, outcome: &metrics_support::Outcome) -> Vec<String> {
        let mut missing = Vec::new();
        for (name, labels, want) in metrics_support::expected(outcome) {
            let got = self.value(name, &labels);
            if got != Some(want) {
                missing.push(format!("{name}{labels:?} = {got:?}, want {want}"));
            }
        }
        for (name, labels) in metrics_support::positive() {
            let got = self.value(name, &labels);
            if !got.is_some_and(|v| v > 0.0) {
                missing.push(format!("{name}{labels:?} = {got:?}, want > 0"));
            }
        }
        missing
    }
}

/// Waits (bounded) for an export that shows the whole workload.
async fn settled(receiver: &Receiver, outcome: &metrics_support::Outcome) -> Export {
    let deadline = Instant::now() + ARRIVAL_BOUND;
    loop {
        if let Some(export) = receiver.latest().map(|r| flatten(&r)) {
            let missing = export.missing(outcome);
            if missing.is_empty() {
                return export;
            }
            assert!(
                Instant::now() < deadline,
                "after {ARRIVAL_BOUND:?} ({} exports) the last export still lacks:\n  {}",
                receiver.count(),
                missing.join("\n  ")
            );
        } else {
            assert!(Instant::now() < deadline, "no OTLP export within {ARRIVAL_BOUND:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ------------------------------------------------------------------ the contract

/// The kind an OTLP metric has, in the contract's words.
fn kind_of(metric: &Metric) -> &'static str {
    fn ints(points: &[opentelemetry_proto::tonic::metrics::v1::NumberDataPoint]) -> bool {
        points.iter().all(|p| matches!(p.value, Some(Number::AsInt(_))))
    }
    match &metric.data {
        Some(Data::Sum(s)) if s.is_monotonic && ints(&s.data_points) => "Counter<u64>",
        Some(Data::Sum(s)) if !s.is_monotonic && ints(&s.data_points) => "UpDownCounter<i64>",
        Some(Data::Gauge(g)) if ints(&g.data_points) => "ObservableGauge<i64>",
        Some(Data::Gauge(_)) => "ObservableGauge<f64>",
        Some(Data::Histogram(_)) => "Histogram",
        _ => "unexpected",
    }
}

fn assert_matches_contract(export: &Export) {
    let contract = Contract::load();
    let common_labels = ["job", "instance", "otel_scope_name", "otel_scope_version"];

    // Scope: the meter is `task-mcp` at the crate's version.
    assert_eq!(export.scopes, vec![("task-mcp".to_string(), env!("CARGO_PKG_VERSION").to_string())], "scopes");

    // Resource: job and instance, and exactly target_info's attributes.
    let r = &export.resource;
    assert_eq!(r.get("service.name").map(String::as_str), Some("task-mcp"), "{r:?}");
    assert!(r.get("service.instance.id").is_some_and(|id| !id.is_empty()), "{r:?}");
    let target_info = contract.series_labels("target_info");
    for (key, value) in r {
        if key == "service.name" || key == "service.instance.id" {
            continue;
        }
        let label = key.replace('.', "_");
        let allowed =
            target_info.get(&label).unwrap_or_else(|| panic!("resource attribute {key} is not in target_info"));
        if let Some(values) = allowed {
            assert!(values.contains(value), "{key}={value} not in {values:?}");
        }
    }
    for label in target_info.keys().filter(|l| !common_labels.contains(&l.as_str())) {
        assert!(r.keys().any(|k| k.replace('.', "_") == *label), "resource lacks {label}: {r:?}");
    }
    assert_eq!(r.get("service.version").map(String::as_str), Some(env!("CARGO_PKG_VERSION")));

    // Instruments: each OTLP metric is a contract row, with its name, kind,
    // unit, cumulative temporality and buckets; and every row is there.
    let mut seen = BTreeSet::new();
    for metric in &export.metrics {
        let row = contract
            .app_metrics()
            .into_iter()
            .find(|m| m["otel_instrument"] == metric.name)
            .unwrap_or_else(|| panic!("{} is exported but is not in the contract", metric.name));
        let name = row["name"].as_str().unwrap_or_default();
        assert!(seen.insert(metric.name.clone()), "{} exported twice", metric.name);
        assert_eq!(metric.unit, row["otel_unit"].as_str().unwrap_or_default(), "{name}: unit");
        let kind = row["otel_kind"].as_str().unwrap_or_default();
        let got = kind_of(metric);
        assert!(
            got == kind || (got == "Histogram" && kind.starts_with("Histogram<")),
            "{name}: kind {got}, want {kind}"
        );
        let cumulative = AggregationTemporality::Cumulative as i32;
        match &metric.data {
            Some(Data::Sum(s)) => assert_eq!(s.aggregation_temporality, cumulative, "{name}: temporality"),
            Some(Data::Histogram(h)) => {
                assert_eq!(h.aggregation_temporality, cumulative, "{name}: temporality");
                let want: Vec<f64> =
                    row["buckets"].as_array().expect("buckets").iter().filter_map(serde_json::Value::as_f64).collect();
                for p in &h.data_points {
                    assert_eq!(p.explicit_bounds, want, "{name}: bucket boundaries");
                }
            }
            _ => {}
        }
        let monotonic = matches!(&metric.data, Some(Data::Sum(s)) if s.is_monotonic);
        assert_eq!(prometheus_name(&metric.name, &metric.unit, monotonic), name, "{}: translated name", metric.name);
    }
    for row in contract.app_metrics() {
        let instrument = row["otel_instrument"].as_str().unwrap_or_default();
        assert!(seen.contains(instrument), "{} ({instrument}) was not exported", row["name"]);
    }

    // Series: every sample is a contract series with exactly its labels and
    // allowed values; every contract series has samples.
    let mut series_seen = BTreeSet::new();
    for sample in &export.samples {
        let allowed = contract.series_labels(&sample.name);
        let own: BTreeSet<&str> = allowed.keys().map(String::as_str).filter(|l| !common_labels.contains(l)).collect();
        let got: BTreeSet<&str> = sample.labels.keys().map(String::as_str).collect();
        assert_eq!(got, own, "{}: labels {:?}", sample.name, sample.labels);
        for (label, value) in &sample.labels {
            if let Some(Some(values)) = allowed.get(label) {
                assert!(
                    values.contains(value),
                    "{}: {label}={value} is not an allowed value ({values:?})",
                    sample.name
                );
            }
        }
        series_seen.insert(sample.name.clone());
    }
    for series in contract.series_names() {
        if series == "target_info" || series == "up" {
            continue;
        }
        assert!(series_seen.contains(&series), "no samples of {series}");
    }
}

// ------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_otlp_export_is_the_contract_with_the_workloads_figures() {
    let (addr, receiver) = grpc_receiver().await;
    let server = metrics_support::start(|b| {
        b.env("OTEL_EXPORTER_OTLP_ENDPOINT", &format!("http://{addr}")).env("OTEL_METRIC_EXPORT_INTERVAL", INTERVAL_MS)
    });
    let outcome = metrics_support::run(&server).await;
    let export = settled(&receiver, &outcome).await;
    assert_matches_contract(&export);
    // Cumulative: every later export carries the same figures or more.
    let first = receiver.count();
    let deadline = Instant::now() + ARRIVAL_BOUND;
    while receiver.count() < first + 2 {
        assert!(Instant::now() < deadline, "exports stopped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let later = flatten(&receiver.latest().expect("an export"));
    assert!(later.missing(&outcome).is_empty(), "{:?}", later.missing(&outcome));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_is_selected_by_the_standard_variable() {
    let (addr, receiver) = http_receiver().await;
    let server = metrics_support::start(|b| {
        b.env("OTEL_EXPORTER_OTLP_ENDPOINT", &format!("http://{addr}"))
            .env("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf")
            .env("OTEL_METRIC_EXPORT_INTERVAL", INTERVAL_MS)
    });
    let mut changes = server.changes().await;
    for slug in ["proto-a", "proto-b", "proto-c"] {
        let req = task_mcp::pb::OpenChangeRequest { slug: slug.into(), title: "T".into(), ..Default::default() };
        common::bounded("OpenChange", changes.open_change(req)).await.expect("OpenChange");
    }
    let ok = [("tool_name", "change.open"), ("transport", "grpc"), ("outcome", "success"), ("error_type", "none")];
    let deadline = Instant::now() + ARRIVAL_BOUND;
    loop {
        if let Some(export) = receiver.latest().map(|r| flatten(&r))
            && export.value("tool_executions_total", &ok) == Some(3.0)
        {
            assert_eq!(export.resource.get("service.name").map(String::as_str), Some("task-mcp"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no HTTP/protobuf export with the three calls ({} exports)",
            receiver.count()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_figures_are_flushed_at_shutdown() {
    let (addr, receiver) = grpc_receiver().await;
    // An interval no test waits for: only the flush at shutdown can deliver.
    let mut server = metrics_support::start(|b| {
        b.env("OTEL_EXPORTER_OTLP_ENDPOINT", &format!("http://{addr}")).env("OTEL_METRIC_EXPORT_INTERVAL", "600000")
    });
    let mut changes = server.changes().await;
    let req = task_mcp::pb::OpenChangeRequest { slug: "flushed".into(), title: "T".into(), ..Default::default() };
    common::bounded("OpenChange", changes.open_change(req)).await.expect("OpenChange");
    assert_eq!(receiver.count(), 0, "nothing is exported before the interval");
    server.sigterm();
    let status = server.wait_exit(Duration::from_secs(20)).expect("the server exits after SIGTERM");
    assert!(status.success(), "{status:?}\n{}", server.logs());
    let export = flatten(&receiver.latest().expect("an export at shutdown"));
    let ok = [("tool_name", "change.open"), ("transport", "grpc"), ("outcome", "success"), ("error_type", "none")];
    assert_eq!(export.value("tool_executions_total", &ok), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_one_warning_and_no_request() {
    // A "Collector" that takes each connection and closes it at once: every export fails, and
    // the connections it counts show the exporter went on trying.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed = listener.local_addr().expect("addr");
    let attempts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let attempts = attempts.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(conn);
            }
        });
    }
    let mut server = metrics_support::start(|b| {
        b.env("OTEL_EXPORTER_OTLP_ENDPOINT", &format!("http://{closed}"))
            .env("OTEL_METRIC_EXPORT_INTERVAL", "100")
            .env("OTEL_EXPORTER_OTLP_TIMEOUT", "500")
    });
    let mut changes = server.changes().await;
    for i in 0..20 {
        let req =
            task_mcp::pb::OpenChangeRequest { slug: format!("down-{i}"), title: "T".into(), ..Default::default() };
        common::bounded("OpenChange", changes.open_change(req)).await.expect("requests do not fail");
    }
    // Every export fails; after the first warning, the exporter tries again and again (each
    // attempt a new connection) and no further warning is logged.
    let warning = "metrics export over OTLP failed";
    let deadline = Instant::now() + ARRIVAL_BOUND;
    while !server.logs().contains(warning) {
        assert!(Instant::now() < deadline, "no export warning:\n{}", server.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let at_warning = attempts.load(std::sync::atomic::Ordering::SeqCst);
    let deadline = Instant::now() + ARRIVAL_BOUND;
    while attempts.load(std::sync::atomic::Ordering::SeqCst) < at_warning + 4 {
        assert!(
            Instant::now() < deadline,
            "the exporter stopped trying: {} connection(s), {at_warning} at the warning (a bound, not a speed check)\n{}",
            attempts.load(std::sync::atomic::Ordering::SeqCst),
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.logs().matches(warning).count(), 1, "{}", server.logs());
    server.sigterm();
    let status = server.wait_exit(Duration::from_secs(20)).expect("shutdown stays bounded");
    assert!(status.success(), "{status:?}");
}
