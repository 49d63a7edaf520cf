//! The metrics contract through the built-in Prometheus endpoint: a real
//! Prometheus (the Debian package's server, installed by
//! scripts/install-test-tools) started by the test on loopback, scraping the
//! server's `/metrics` every second under the job name the contract names
//! (`task-mcp`). After the scripted workload every contract series must be
//! queryable through Prometheus' HTTP API with exactly its labels and allowed
//! values, and the workload's figures.
mod common;
mod metrics_support;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use metrics_support::Contract;
use serde_json::Value;

/// Failure bounds (never speed checks): Prometheus start-up, and the scrapes
/// that bring the workload's final figures.
const START_BOUND: Duration = Duration::from_secs(30);
const SETTLE_BOUND: Duration = Duration::from_secs(60);

fn prometheus_binary() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut dirs = vec![root.join(".tools/bin")];
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.into_iter().map(|d| d.join("prometheus")).find(|p| p.is_file()).unwrap_or_else(|| {
        panic!("`prometheus` was not found. Run scripts/install-test-tools (Debian package `prometheus`), then rerun.")
    })
}

/// A Prometheus on loopback, stopped (by its pid) when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl Prometheus {
    fn start(target: std::net::SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: task-mcp\n    scrape_interval: 1s\n    scrape_timeout: 1s\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("write config");
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
        let log = dir.path().join("prometheus.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(prometheus_binary())
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log"))
            .stderr(log_file)
            .spawn()
            .expect("spawn prometheus");
        Prometheus { child, port, _dir: dir, log }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_ready(&mut self, http: &reqwest::Client) {
        let deadline = Instant::now() + START_BOUND;
        loop {
            if let Ok(resp) = http.get(format!("http://127.0.0.1:{}/-/ready", self.port)).send().await
                && resp.status() == 200
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", self.logs());
            }
            assert!(Instant::now() < deadline, "prometheus not ready within {START_BOUND:?}:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An instant query; each result as (labels incl. `__name__`, value).
    async fn query(&self, http: &reqwest::Client, expr: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let url = format!("http://127.0.0.1:{}/api/v1/query", self.port);
        let resp = http.get(&url).query(&[("query", expr)]).send().await.expect("query");
        let body: Value = resp.json().await.expect("query JSON");
        assert_eq!(body["status"], "success", "{expr}: {body}");
        body["data"]["result"]
            .as_array()
            .expect("vector")
            .iter()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()
                    .expect("labels")
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect();
                let value = r["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
                (labels, value)
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn selector(name: &str, labels: &[(&str, &str)]) -> String {
    let inner: Vec<String> = std::iter::once(("job", "task-mcp"))
        .chain(labels.iter().copied())
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("{name}{{{}}}", inner.join(","))
}

/// Which figures Prometheus does not (yet) show.
async fn missing(prom: &Prometheus, http: &reqwest::Client, outcome: &metrics_support::Outcome) -> Vec<String> {
    let mut missing = Vec::new();
    for (name, labels, want) in metrics_support::expected(outcome) {
        let expr = selector(name, &labels);
        let got = prom.query(http, &expr).await;
        let values: Vec<f64> = got.iter().map(|(_, v)| *v).collect();
        if values != [want] {
            missing.push(format!("{expr} = {values:?}, want [{want}]"));
        }
    }
    for (name, labels) in metrics_support::positive() {
        let expr = selector(name, &labels);
        let got = prom.query(http, &expr).await;
        if !(got.len() == 1 && got[0].1 > 0.0) {
            missing.push(format!("{expr} = {got:?}, want one series > 0"));
        }
    }
    missing
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_contract_series_with_the_workloads_figures() {
    let server = metrics_support::start(|b| b);
    let target = server.metrics_addr.expect("the listening line names metrics_addr");
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    let mut prom = Prometheus::start(target);
    prom.wait_ready(&http).await;

    let outcome = metrics_support::run(&server).await;

    let deadline = Instant::now() + SETTLE_BOUND;
    loop {
        let missing = missing(&prom, &http, &outcome).await;
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after {SETTLE_BOUND:?} Prometheus still lacks:\n  {}\n--- prometheus log ---\n{}",
            missing.join("\n  "),
            prom.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The scrape itself is healthy.
    let up = prom.query(&http, "up{job=\"task-mcp\"}").await;
    assert_eq!(up.iter().map(|(_, v)| *v).collect::<Vec<_>>(), vec![1.0], "{up:?}");

    // Every series of the job: a contract series, exactly its labels, only
    // allowed values; and every contract series is there.
    let contract = Contract::load();
    let all = prom.query(&http, "{job=\"task-mcp\"}").await;
    let mut seen = BTreeSet::new();
    for (labels, _) in &all {
        let name = labels.get("__name__").cloned().unwrap_or_default();
        // Prometheus' own per-target series.
        if name.starts_with("scrape_") {
            continue;
        }
        let allowed = contract.series_labels(&name);
        let got: BTreeSet<&str> = labels.keys().map(String::as_str).filter(|k| *k != "__name__").collect();
        let want: BTreeSet<&str> = allowed.keys().map(String::as_str).collect();
        assert_eq!(got, want, "{name}: labels {labels:?}");
        for (label, value) in labels.iter().filter(|(k, _)| *k != "__name__") {
            if let Some(Some(values)) = allowed.get(label) {
                assert!(values.contains(value), "{name}: {label}={value} is not an allowed value ({values:?})");
            }
        }
        seen.insert(name);
    }
    for series in contract.series_names() {
        assert!(seen.contains(&series), "{series} is not queryable in Prometheus");
    }

    // target_info: one series with the resource, value 1.
    let info = prom.query(&http, "target_info{job=\"task-mcp\"}").await;
    assert_eq!(info.len(), 1, "{info:?}");
    let (labels, value) = &info[0];
    assert_eq!(*value, 1.0);
    assert_eq!(labels.get("service_version").map(String::as_str), Some(env!("CARGO_PKG_VERSION")));
    assert_eq!(labels.get("deployment_environment_name").map(String::as_str), Some("dev"));
    assert_eq!(labels.get("otel_scope_name"), None);

    // Every application series carries the meter's scope.
    let scoped = prom.query(&http, "tool_executions_total{job=\"task-mcp\"}").await;
    for (labels, _) in scoped {
        assert_eq!(labels.get("otel_scope_name").map(String::as_str), Some("task-mcp"));
        assert_eq!(labels.get("otel_scope_version").map(String::as_str), Some(env!("CARGO_PKG_VERSION")));
    }
}
