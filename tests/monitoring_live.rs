//! Every PromQL expression of the monitoring stack, against live data: the real server (its
//! built-in Prometheus endpoint on a free `--metrics-listen` port) scraped every second by a real
//! Prometheus (the Debian package's server, on loopback, job `task-mcp` as METRICS.md requires,
//! rules evaluated every second) that loads every rule file of `monitoring/prometheus/rules`.
//!
//! The expressions are the ones `tests/monitoring_config.rs` checks statically, from the same
//! code (`tests/monitoring_support`): all recording rules, all alert rules and every query of the
//! six dashboards, with Grafana's variables set as Grafana sets them (`$instance` to the server's
//! instance, regex-escaped; `$route`, `$tool`, `$transport` to "All"; `$__rate_interval` 5m).
//! "Returns data" means: the instant query yields at least one sample that is not NaN, **and**
//! every vector selector in the expression matches at least one series (so `or vector(0)`
//! fallbacks cannot hide a misspelt series); the checker is shown to flag such mistakes.
//!
//! 1. Healthy run: two rounds of a workload that calls every tool over gRPC, HTTP/JSON and MCP
//!    and opens every kind of stream (gRPC server streams, SSE on `/mcp`, `/sse` and a streamed
//!    `tools/call`, NDJSON), a scrape apart so every counter increases. Every expression that
//!    does not depend on an event must return data; the event-only ones are those with a
//!    selector in [`EVENT_SELECTORS`] (each justified there) and every alert (none may fire in a
//!    healthy run, except those that depend on the machine's speed, [`MAY_FIRE_WHEN_HEALTHY`]).
//! 2. Induced faults (each series born first and a scrape taken, so `rate()` sees the flood):
//!    credential-less, malformed and wrong tokens; client errors (CHANGE_NOT_FOUND, INVALID_SLUG,
//!    TASK_NOT_FOUND, LOCKED_BY_OTHER_OWNER, VALIDATION_FAILED; 400, 403, 404, 405, 406, 413);
//!    server errors (the archive folder replaced by a file: WORKSPACE_UNUSABLE, INTERNAL over
//!    gRPC, 500 over HTTP, a JSON-RPC error over MCP); streams refused at `--max-streams 2` (503, UNAVAILABLE); rate-limit
//!    refusals; slow calls (a `.lock` that is a FIFO stalls the read for 2.5 s, like a hung
//!    disk); a failing readiness check (`.staging` replaced by a file: the workspace is not
//!    writable); streams held at the cap; a tool call held in flight; a Collector target that is
//!    down; both listeners held at their connection cap by idle connections, with more refused
//!    every round (last: nothing else may connect while it lasts). Floods are sized from the server's own counters so that the error-driven burn-rate
//!    and security alerts cross their thresholds. Then every expression must return data
//!    (selectors included), except the alerts of [`not_induced`], each checked by probes instead,
//!    and three checked later: `TaskMcpRateLimitingFrequent` (after a rate-limit flood of its
//!    own, which would otherwise dilute the auth-failure ratio), `TaskMcpServiceDown` and the
//!    telemetry-absent probe (after the server is stopped).
//!
//! Every wait polls the API within a failure bound; nothing asserts on timing. The report (counts
//! and how each event-only expression was checked) is printed to stderr.
mod common;
mod monitoring_support;

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::CString,
    net::SocketAddr,
    os::unix::{ffi::OsStrExt, fs::OpenOptionsExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    Auth, Server, bounded,
    mcp::{ACCEPT_BOTH, Mcp, sse_messages},
};
use futures_util::{StreamExt, stream};
use monitoring_support::{
    PromApi, Rule, Sample, all_rules, check_promql, contract, dashboard_queries, dashboards, files_with_ext, mon,
    recorded_series, substitute_grafana, tool, unix_now, vector_selectors,
};
use serde_json::{Value, json};
use task_mcp::pb::{
    ArchiveChangeRequest, ListChangesRequest, ListResourcesRequest, OpenChangeRequest, ReadResourceRequest,
    ShowChangeRequest, TaskUpdate, Template, UpdateTasksRequest, ValidateChangeRequest, WatchChangesRequest,
};
use tonic::Code;

// ---------------------------------------------------------------------------------------------
// Settings

/// The workload's principal, the one that exhausts its rate limit, and the flood principals
/// (each has its own bucket, so a flood is not refused by the limiter it does not test).
const TOKEN: &str = "tok";
const SLOW_TOKEN: &str = "slowtok";
const FLOOD_TOKENS: [&str; 6] = ["flood1tok", "flood2tok", "flood3tok", "flood4tok", "flood5tok", "flood6tok"];
/// The server's defaults: 50 calls/s per principal, bursts of 100.
const RATE: u32 = 50;
const BURST: usize = 100;
const MAX_STREAMS: usize = 2;
/// The connection cap of each listener: far above what the workload and its floods (32 requests
/// at a time) hold, so a healthy run neither nears it nor is refused; the fault phase fills it.
const MAX_CONNECTIONS: usize = 128;
/// How long an induced slow call waits on its stalled lock file: over every latency SLO
/// threshold (0.1 s, 0.2 s, 0.5 s, 2 s).
const STALL: Duration = Duration::from_millis(2500);

/// Failure bounds, never speed checks.
const START_BOUND: Duration = Duration::from_secs(30);
const SETTLE_BOUND: Duration = Duration::from_secs(60);
const SWEEP_BOUND: Duration = Duration::from_secs(60);
const STREAM_CLOSE_BOUND: Duration = Duration::from_secs(15);
const HELD_CALL_BOUND: Duration = Duration::from_secs(240);

/// Selectors that match a series only after an event the healthy run does not have (an error,
/// a refusal, a failed probe), or in a deployment it does not have. An expression with one of
/// them is event-only in the healthy sweep; in the fault sweep each must match.
const EVENT_SELECTORS: &[(&str, &str)] = &[
    (
        "http_response_status_code=~\"5..\"",
        "HTTP 5xx: streams refused at the cap (503) and a broken archive folder (500) in the fault phase",
    ),
    (
        "rpc_response_status_code=~\"UNKNOWN|INTERNAL|UNAVAILABLE|DATA_LOSS|DEADLINE_EXCEEDED\"",
        "gRPC server faults: ReadResource refused at the cap (UNAVAILABLE), ShowChange with a broken archive (INTERNAL)",
    ),
    ("outcome=\"server_error\"", "tool server errors: show with the archive folder a file (WORKSPACE_UNUSABLE)"),
    ("outcome!=\"success\"", "tool errors: CHANGE_NOT_FOUND, INVALID_SLUG, TASK_NOT_FOUND, LOCKED_BY_OTHER_OWNER, ..."),
    (
        "http_response_status_code!~\"2..\"",
        "failed health probes: /health/ready answers 503 while the workspace is not writable",
    ),
    ("http_response_status_code=~\"5..|4..\"", "unexpected HTTP errors: 400, 405, 406, 413, 500, 503"),
    ("http_response_status_code=~\"4..\"", "HTTP 4xx: wrong tokens, bad JSON, unknown paths, ..."),
    (
        "http_response_status_code=~\"401|403|404|405|413\"",
        "refused HTTP requests: wrong token 401, foreign Origin 403, unknown path 404, wrong method 405, oversized 413",
    ),
    ("outcome=\"failure\"", "authentication failures: missing, malformed and wrong tokens"),
    ("rate_limit_hits_total", "requests refused by the rate limiter: a principal over its burst"),
    ("streaming_rejections_total", "streams refused at the --max-streams cap"),
    (
        "up{job=\"otel-collector\"}",
        "the Collector's scrape health exists only with a Collector: a Collector target that is down",
    ),
];

/// Alerts whose healthy-run result depends on the machine (latency, CPU, memory), not on the
/// workload: they are reported, not asserted silent, in the healthy sweep.
const MAY_FIRE_WHEN_HEALTHY: &[&str] = &[
    "TaskMcpHttpLatencyP95",
    "TaskMcpHttpLatencyP99",
    "TaskMcpToolLatencyP95",
    "TaskMcpToolLatencyP99",
    "TaskMcpStreamFirstMessage",
    "TaskMcpCpuHigh",
    "TaskMcpMemoryHigh",
    "TaskMcpMemoryCritical",
];

/// Checked after the fault sweep, each by its own step (see the module comment).
const LATE: &[&str] = &["TaskMcpRateLimitingFrequent", "TaskMcpServiceDown", "TaskMcpTelemetryAbsent"];

const LATENCY_SLOS: &[&str] = &[
    "TaskMcpHttpLatencyP95",
    "TaskMcpHttpLatencyP99",
    "TaskMcpToolLatencyP95",
    "TaskMcpToolLatencyP99",
    "TaskMcpStreamFirstMessage",
];

/// Alerts a test run cannot make fire, why, and the probes (derived from the rule's own text)
/// that must return data in the fault sweep instead. Their thresholds are proven by the promtool
/// tests of `monitoring/prometheus/tests` (fire at the threshold, silent below it).
fn not_induced(rule: &Rule) -> Option<(&'static str, Vec<String>)> {
    let name = rule.name();
    let e = rule.expr.as_str();
    let first_line = |why| (why, vec![e.lines().next().expect("expr").to_string()]);
    if LATENCY_SLOS.iter().any(|p| name.starts_with(p)) {
        let operands = vector_selectors(e).expect("selectors");
        let sli = operands[0]
            .strip_prefix("sli:")
            .and_then(|s| s.split(':').next())
            .unwrap_or_else(|| panic!("{name}: operand {} is not an SLI recording", operands[0]));
        let mut probes = operands.clone();
        probes.push(format!("sli:{sli}:bad_rate5m > 0"));
        return Some((
            "firing needs 14.4x (1h page) down to 1x (3d ticket) the error budget in slow requests, from \
             72% down to 1% of all requests over the window, which a test cannot make slow without \
             being mostly slow itself; instead, calls made slow (a lock-file read stalled 2.5 s, over \
             HTTP/JSON and NDJSON) must be counted by the SLI (bad_rate5m > 0) and the alert's operands \
             must have data",
            probes,
        ));
    }
    match name {
        "TaskMcpMemoryHigh" | "TaskMcpMemoryCritical" => {
            let (ratio, threshold) = e.rsplit_once('\n').expect("ratio, then the threshold on its own line");
            assert!(threshold.starts_with("> "), "{name}: {e}");
            Some((
                "resident memory at 85% / 95% of the cgroup limit would endanger the runner; probe: the ratio",
                vec![ratio.to_string()],
            ))
        }
        "TaskMcpCpuHigh" => {
            let (avg, threshold) = e.rsplit_once(" > ").expect("an average over a threshold");
            assert!(threshold.parse::<f64>().is_ok(), "{name}: {e}");
            Some((
                "80% CPU averaged over 5 minutes, held 10 minutes; probe: the 5-minute average",
                vec![avg.to_string()],
            ))
        }
        "TaskMcpToolExecutionsStuck" => Some((
            "needs executions in flight and none finishing for 15 minutes; probe: the in-flight part, \
             with a tool call held on a stalled lock file",
            vec![e.split("\nunless\n").next().expect("in flight, unless finished").to_string()],
        )),
        "TaskMcpWorkspaceFull" => {
            let (gauge, threshold) = e.rsplit_once(" == ").expect("the space check compared with 0");
            assert_eq!(threshold, "0", "{name}: {e}");
            Some((
                "needs the workspace's file system full, and the workspace here is a folder on the \
                 runner's own disk, which the build, Prometheus and this test share: filling it \
                 would break them, not the server alone. A disk of its own takes a small tmpfs \
                 mounted in a private mount namespace, as root (tests/full_disk.rs does that, and \
                 sees this series go to 0 and back). Probe: the space check, 1 here, also while the \
                 workspace is unwritable (an unusable workspace is no full one: checked to stay silent)",
                vec![gauge.to_string()],
            ))
        }
        "TaskMcpTrafficDrop" => Some(first_line(
            "compares with the same hour a week ago (offset 1w), which a fresh Prometheus does not have; \
             probe: this week's rate (its selectors, without the offset, are checked too)",
        )),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Prometheus

/// A Prometheus on loopback with every rule file of the project, stopped when dropped.
struct Prometheus {
    child: Child,
    api: PromApi,
    target: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn config(target: SocketAddr, dead_collector: Option<u16>) -> String {
        let rules: Vec<String> = files_with_ext(&mon("prometheus/rules"), "yml")
            .iter()
            .map(|p| format!("  - '{}'\n", p.display()))
            .collect();
        let mut config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n{}\
             scrape_configs:\n  - job_name: task-mcp\n    static_configs:\n      - targets: ['{target}']\n",
            rules.concat()
        );
        if let Some(port) = dead_collector {
            config.push_str(&format!(
                "  - job_name: otel-collector\n    honor_labels: true\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
            ));
        }
        config
    }

    fn start(target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, Self::config(target, None)).expect("write config");
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--web.enable-lifecycle")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        Prometheus { child, api: PromApi::new(port), target, dir }
    }

    fn logs(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Adds a Collector scrape target on a port where nothing listens, and reloads.
    async fn add_dead_collector(&self) {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
        std::fs::write(self.dir.path().join("prometheus.yml"), Self::config(self.target, Some(port))).expect("config");
        let resp = self.api.http.post(format!("{}/-/reload", self.api.base)).send().await.expect("reload");
        assert_eq!(resp.status(), 200, "reload: {:?}", resp.text().await);
    }

    /// Waits until a scrape that started after `after` (Unix seconds) is stored and every rule
    /// group has been evaluated over it.
    async fn settle(&self, after: f64) {
        let deadline = Instant::now() + SETTLE_BOUND;
        let scraped = loop {
            let ts = self.api.query("timestamp(up{job=\"task-mcp\"})").await.unwrap_or_default();
            if let Some((_, t)) = ts.first()
                && *t > after
            {
                break *t;
            }
            assert!(Instant::now() < deadline, "no scrape after {after} within {SETTLE_BOUND:?}\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        loop {
            let rules = self.api.get("/api/v1/rules", &[]).await.expect("rules API");
            let groups = rules["data"]["groups"].as_array().cloned().unwrap_or_default();
            assert!(!groups.is_empty(), "no rule groups loaded\n{}", self.logs());
            let stale: Vec<String> = groups
                .iter()
                .filter(|g| {
                    let t = g["lastEvaluation"].as_str().and_then(|s| {
                        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
                    });
                    // One evaluation interval after the scrape, so the samples were stored.
                    t.is_none_or(|t| (t.unix_timestamp_nanos() as f64) / 1e9 < scraped + 1.0)
                })
                .map(|g| g["name"].as_str().unwrap_or_default().to_string())
                .collect();
            if stale.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "rule groups not evaluated after the scrape: {stale:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- prometheus log (last lines) ---\n{}", self.logs());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The checker

/// A sample that is not NaN: something a panel draws and an alert compares.
fn has_data(samples: &[Sample]) -> bool {
    samples.iter().any(|(_, v)| !v.is_nan())
}

fn event_selector(selector: &str) -> Option<&'static str> {
    EVENT_SELECTORS.iter().find(|(pattern, _)| selector.contains(pattern)).map(|(_, why)| *why)
}

struct Checker<'a> {
    api: &'a PromApi,
    selectors: BTreeMap<String, bool>,
}

impl Checker<'_> {
    fn forget(&mut self) {
        self.selectors.clear();
    }

    async fn selector_matches(&mut self, selector: &str) -> Result<bool, String> {
        if let Some(found) = self.selectors.get(selector) {
            return Ok(*found);
        }
        let found = !self.api.query(selector).await?.is_empty();
        self.selectors.insert(selector.to_string(), found);
        Ok(found)
    }

    /// Why `expr` shows no data, if it does not: the result has no non-NaN sample, or a
    /// selector (other than those `skip` excuses) matches no series.
    async fn problems(&mut self, expr: &str, skip: &dyn Fn(&str) -> bool) -> Vec<String> {
        let mut problems = Vec::new();
        match self.api.query(expr).await {
            Ok(samples) if has_data(&samples) => {}
            Ok(samples) if samples.is_empty() => problems.push("empty result".to_string()),
            Ok(samples) => problems.push(format!("only NaN ({} samples)", samples.len())),
            Err(e) => problems.push(format!("query error: {e}")),
        }
        match vector_selectors(expr) {
            Ok(selectors) => {
                for s in selectors.iter().collect::<BTreeSet<_>>() {
                    if skip(s) {
                        continue;
                    }
                    match self.selector_matches(s).await {
                        Ok(true) => {}
                        Ok(false) => problems.push(format!("selector {s} matches no series")),
                        Err(e) => problems.push(format!("selector {s}: {e}")),
                    }
                }
            }
            Err(e) => problems.push(format!("cannot read selectors: {e}")),
        }
        problems
    }
}

// ---------------------------------------------------------------------------------------------
// The expressions

#[derive(Debug, Clone)]
enum Kind {
    Record,
    Alert,
    Panel,
}

#[derive(Debug, Clone)]
struct Item {
    origin: String,
    kind: Kind,
    /// The alert's name, for alerts.
    alert: Option<String>,
    promql: String,
}

/// Every expression of the rule files and dashboards, with the dashboards' variables set.
fn items(vars: &BTreeMap<String, String>) -> Vec<Item> {
    let mut out: Vec<Item> = all_rules()
        .into_iter()
        .map(|r| Item {
            origin: format!("{} {}", r.file, r.name()),
            kind: if r.alert.is_some() { Kind::Alert } else { Kind::Record },
            alert: r.alert.clone(),
            promql: r.expr.clone(),
        })
        .collect();
    out.extend(dashboard_queries().into_iter().map(|q| Item {
        origin: q.origin,
        kind: Kind::Panel,
        alert: None,
        promql: substitute_grafana(&q.expr, vars),
    }));
    out
}

/// The dashboards' query variables, resolved as Grafana does (`label_values(selector, label)`
/// through the series API); every one must offer at least one value. The instance is set to the
/// server's (regex-escaped as Grafana's Prometheus data source escapes it); the others keep their
/// default, "All" (`.*`).
async fn dashboard_variables(api: &PromApi, instance: &str) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    let mut empty = Vec::new();
    for (path, d) in dashboards() {
        for v in d["templating"]["list"].as_array().expect("templating") {
            let Some(q) = v["query"].as_str().filter(|_| v["type"] == "query") else { continue };
            let inner = q.strip_prefix("label_values(").and_then(|s| s.strip_suffix(')')).expect("label_values");
            let (selector, label) = inner.rsplit_once(',').expect("selector, label");
            let series = api.get("/api/v1/series", &[("match[]", selector.trim())]).await.expect("series API");
            let values: BTreeSet<String> = series["data"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s[label.trim()].as_str().map(str::to_string))
                .collect();
            let name = v["name"].as_str().expect("name").to_string();
            if values.is_empty() {
                empty.push(format!("{} ${name}: {q}", path.display()));
            }
            let value = if name == "instance" {
                assert!(values.contains(instance), "$instance offers {values:?}, not {instance}");
                instance.replace('.', "\\\\.")
            } else {
                ".*".to_string()
            };
            vars.insert(name, value);
        }
    }
    assert!(empty.is_empty(), "dashboard variables without values:\n{}", empty.join("\n"));
    vars
}

// ---------------------------------------------------------------------------------------------
// HTTP and MCP clients

const MCP_VERSION: &str = "2025-11-25";

struct Ctx {
    server: Server,
    http: reqwest::Client,
    base: String,
}

impl Ctx {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn tool(&self, token: &str, name: &str, args: Value) -> (u16, String) {
        let resp = self
            .http
            .post(self.url(&format!("/v1/tools/{name}")))
            .bearer_auth(token)
            .json(&args)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST /v1/tools/{name}: {e}"));
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_default())
    }

    async fn get(&self, token: Option<&str>, path: &str) -> u16 {
        let mut req = self.http.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = resp.status().as_u16();
        let _ = resp.bytes().await;
        status
    }

    fn change_dir(&self, slug: &str) -> PathBuf {
        self.server.workspace.join("changes").join(slug)
    }

    /// The server notices closed streams when it next polls them; waits until it has.
    async fn wait_streams_closed(&self) {
        let deadline = Instant::now() + STREAM_CLOSE_BOUND;
        loop {
            let resp = self.http.get(self.url("/health/metrics")).bearer_auth(TOKEN).send().await.expect("metrics");
            let v: Value = resp.json().await.expect("metrics JSON");
            if v["streams"] == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "streams still open after {STREAM_CLOSE_BOUND:?}: {v}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server's own figures (its `/metrics`): the sum of `name` over the series `pred` takes.
    async fn figure(&self, name: &str, pred: impl Fn(&BTreeMap<String, String>) -> bool) -> f64 {
        let addr = self.server.metrics_addr.expect("metrics_addr");
        let text =
            self.http.get(format!("http://{addr}/metrics")).send().await.expect("/metrics").text().await.expect("text");
        exposition(&text).into_iter().filter(|(n, labels, _)| n == name && pred(labels)).map(|(_, _, v)| v).sum()
    }
}

/// The samples of a Prometheus text exposition: (name, labels, value).
fn exposition(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let (series, value) = line.rsplit_once(' ').expect("series value");
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}').unwrap_or(rest)),
            None => (series, ""),
        };
        let mut map = BTreeMap::new();
        // Label values here never contain `",` (bounded sets of plain values).
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            if let Some((k, v)) = pair.split_once("=\"") {
                map.insert(k.to_string(), v.trim_end_matches('"').to_string());
            }
        }
        out.push((name.to_string(), map, value.parse().unwrap_or(f64::NAN)));
    }
    out
}

/// A session with the server's gateway as `token`'s principal.
async fn connect(ctx: &Ctx, token: &str) -> Mcp {
    Mcp::connect(ctx.http.clone(), ctx.url("/mcp"), Some(token), MCP_VERSION, "monitoring-live").await
}

fn open_req(slug: &str) -> OpenChangeRequest {
    OpenChangeRequest {
        slug: slug.into(),
        title: format!("Monitoring {slug}"),
        rationale: "Exercise the monitoring stack.".into(),
        template: Template::Unspecified as i32,
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// The healthy workload

/// Every tool over gRPC, HTTP/JSON and MCP; every kind of stream. Asserts each answer.
async fn healthy_round(ctx: &Ctx, round: u32) {
    let s = |name: &str| format!("{name}-{round}");

    // gRPC: the six tools, a watched stream, a streamed archive, resources, health.
    let mut changes = ctx.server.changes().await;
    let mut resources = ctx.server.resources().await;
    let mut watch = bounded("WatchChanges", resources.watch_changes(WatchChangesRequest::default()))
        .await
        .expect("WatchChanges")
        .into_inner();
    for slug in [s("grpc-a"), s("grpc-b"), s("grpc-c")] {
        bounded("OpenChange", changes.open_change(open_req(&slug))).await.expect("OpenChange");
    }
    bounded("a change event", watch.message()).await.expect("watch").expect("an event");
    drop(watch);
    bounded("ListChanges", changes.list_changes(ListChangesRequest::default())).await.expect("ListChanges");
    let shown = bounded("ShowChange", changes.show_change(ShowChangeRequest { slug: s("grpc-a") }))
        .await
        .expect("ShowChange")
        .into_inner();
    let task = shown.tasks.first().expect("the scaffold has tasks").id.clone();
    bounded("ValidateChange", changes.validate_change(ValidateChangeRequest { slug: s("grpc-a") }))
        .await
        .expect("ValidateChange");
    let update = UpdateTasksRequest {
        slug: s("grpc-a"),
        updates: vec![TaskUpdate { id: task.clone(), done: true }],
        ..Default::default()
    };
    bounded("UpdateTasks", changes.update_tasks(update)).await.expect("UpdateTasks");
    let archive = |slug: String| ArchiveChangeRequest { slug, ..Default::default() };
    bounded("ArchiveChange", changes.archive_change(archive(s("grpc-a")))).await.expect("ArchiveChange");
    let mut events = bounded("ArchiveChangeStream", changes.archive_change_stream(archive(s("grpc-b"))))
        .await
        .expect("ArchiveChangeStream")
        .into_inner();
    while bounded("an archive event", events.message()).await.expect("archive stream").is_some() {}
    bounded("ListResources", resources.list_resources(ListResourcesRequest::default())).await.expect("ListResources");
    let uri = format!("change://{}/proposal", s("grpc-c"));
    let mut read =
        bounded("ReadResource", resources.read_resource(ReadResourceRequest { uri })).await.expect("read").into_inner();
    while bounded("a resource chunk", read.message()).await.expect("chunk").is_some() {}
    ctx.server.assert_serving().await;
    ctx.wait_streams_closed().await;

    // HTTP/JSON: the tool list, the six tools, a streamed (NDJSON) archive, resources, health.
    assert_eq!(ctx.get(Some(TOKEN), "/v1/tools").await, 200);
    for slug in [s("http-a"), s("http-b")] {
        let (status, body) = ctx.tool(TOKEN, "change.open", json!({"slug": slug, "title": "Over HTTP"})).await;
        assert_eq!(status, 200, "{body}");
    }
    for (tool, args) in [
        ("change.list", json!({})),
        ("change.show", json!({"slug": s("http-a")})),
        ("change.validate", json!({"slug": s("http-a")})),
        ("task.update", json!({"slug": s("http-a"), "updates": [{"id": task, "done": true}]})),
        ("change.archive", json!({"slug": s("http-a")})),
    ] {
        let (status, body) = ctx.tool(TOKEN, tool, args).await;
        assert_eq!(status, 200, "{tool}: {body}");
    }
    let resp = ctx
        .http
        .post(ctx.url("/v1/tools/change.archive"))
        .bearer_auth(TOKEN)
        .header("accept", "application/x-ndjson")
        .json(&json!({"slug": s("http-b")}))
        .send()
        .await
        .expect("NDJSON archive");
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.expect("NDJSON body");
    assert!(body.lines().count() > 1 && body.contains("\"result\""), "{body}");
    assert_eq!(ctx.get(Some(TOKEN), "/v1/resources").await, 200);
    assert_eq!(ctx.get(Some(TOKEN), &format!("/v1/resources/read?uri=change://{}/proposal", s("http-b"))).await, 200);
    for path in ["/health/live", "/health/ready"] {
        assert_eq!(ctx.get(None, path).await, 200, "{path}");
    }
    assert_eq!(ctx.get(Some(TOKEN), "/health/metrics").await, 200);

    // MCP (Streamable HTTP): the tool list, the six tools, a streamed tools/call, resources,
    // the session's GET stream, its end.
    let mut mcp = connect(ctx, TOKEN).await;
    assert!(mcp.request("tools/list", json!({})).await["result"]["tools"].is_array());
    for slug in [s("mcp-a"), s("mcp-b")] {
        let r = mcp.call("change.open", json!({"slug": slug, "title": "Over MCP"})).await;
        assert_eq!(r["isError"], false, "{r}");
    }
    for (tool, args) in [
        ("change.list", json!({})),
        ("change.show", json!({"slug": s("mcp-a")})),
        ("change.validate", json!({"slug": s("mcp-a")})),
        ("task.update", json!({"slug": s("mcp-a"), "updates": [{"id": task, "done": true}]})),
        ("change.archive", json!({"slug": s("mcp-a")})),
    ] {
        let r = mcp.call(tool, args).await;
        assert_eq!(r["isError"], false, "{tool}: {r}");
    }
    mcp.next_id += 1;
    let resp = mcp
        .post(json!({"jsonrpc":"2.0","id":mcp.next_id,"method":"tools/call","params":{
            "name":"change.archive","arguments":{"slug": s("mcp-b")},"_meta":{"progressToken":"p"}}}))
        .await;
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let messages = sse_messages(&resp.text().await.expect("SSE"));
    assert!(messages.iter().any(|m| m["method"] == "notifications/progress"), "{messages:?}");
    assert!(mcp.request("resources/list", json!({})).await["result"].is_object());
    let uri = format!("change://{}/proposal", s("mcp-b"));
    assert!(mcp.request("resources/read", json!({"uri": uri})).await["result"]["contents"].is_array());
    assert_eq!(mcp.request("ping", json!({})).await["result"], json!({}));
    drop(mcp.open_stream().await);
    let resp = ctx
        .http
        .delete(&mcp.url)
        .bearer_auth(TOKEN)
        .header("mcp-session-id", &mcp.session)
        .header("mcp-protocol-version", MCP_VERSION)
        .send()
        .await
        .expect("DELETE /mcp");
    assert!(resp.status().is_success(), "DELETE /mcp: {}", resp.status());

    // MCP over the legacy HTTP+SSE transport: GET /sse, POST /messages.
    let mut sse = ctx
        .http
        .get(ctx.url("/sse"))
        .bearer_auth(TOKEN)
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("GET /sse");
    assert_eq!(sse.status(), 200);
    let mut seen = String::new();
    let endpoint = loop {
        let chunk = bounded("the endpoint event", sse.chunk()).await.expect("SSE").expect("a chunk");
        seen.push_str(&String::from_utf8_lossy(&chunk));
        if let Some(line) = seen.lines().find_map(|l| l.strip_prefix("data: /messages")) {
            break format!("/messages{line}");
        }
    };
    let resp = ctx
        .http
        .post(ctx.url(&endpoint))
        .bearer_auth(TOKEN)
        .json(&json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
            "protocolVersion": "2024-11-05", "capabilities": {}, "clientInfo": {"name":"monitoring-live","version":"1"}}}))
        .send()
        .await
        .expect("POST /messages");
    assert_eq!(resp.status(), 202);
    while !seen.contains("event: message") {
        let chunk = bounded("the answer on /sse", sse.chunk()).await.expect("SSE").expect("a chunk");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(sse);
    ctx.wait_streams_closed().await;
}

// ---------------------------------------------------------------------------------------------
// Induced faults

/// A change's `.lock` replaced by a FIFO: reading it blocks until a writer comes and goes, as a
/// read from a hung disk does.
struct StalledLock {
    path: PathBuf,
}

impl StalledLock {
    fn new(change_dir: &Path) -> StalledLock {
        let path = change_dir.join(".lock");
        std::fs::remove_file(&path).expect("remove .lock");
        let c = CString::new(path.as_os_str().as_bytes()).expect("path");
        // SAFETY: mkfifo(3) with a valid NUL-terminated path.
        let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
        assert_eq!(rc, 0, "mkfifo {}: {}", path.display(), std::io::Error::last_os_error());
        StalledLock { path }
    }

    /// Waits until the server is blocked reading the lock; the open writer end, whose drop lets
    /// the read finish (empty: no lock).
    async fn wait_for_reader(&self) -> std::fs::File {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(&self.path) {
                Ok(writer) => return writer,
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {}
                Err(e) => panic!("open {} for writing: {e}", self.path.display()),
            }
            assert!(Instant::now() < deadline, "nobody reads {} within 20s", self.path.display());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for StalledLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `n` requests made by `make(i)`, 32 at a time; their statuses.
async fn flood<F, Fut>(n: usize, make: F) -> BTreeMap<u16, usize>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = u16>,
{
    let statuses: Vec<u16> = stream::iter(0..n).map(make).buffer_unordered(32).collect().await;
    let mut counts = BTreeMap::new();
    for s in statuses {
        *counts.entry(s).or_insert(0) += 1;
    }
    counts
}

/// One of each event the fault phase floods, so that every event series exists (and has been
/// scraped) before the floods raise it: `rate()` only sees increases after a series' first sample.
/// Returns the broken archive folder of the server errors, for the floods to use.
async fn prime_faults(ctx: &Ctx) -> BrokenArchive {
    let http = &ctx.http;
    // Authentication: missing, malformed and wrong credentials over HTTP, gRPC and MCP.
    assert_eq!(ctx.get(None, "/v1/tools").await, 401);
    assert_eq!(ctx.get(Some("wrong"), "/v1/tools").await, 401);
    let resp =
        http.get(ctx.url("/v1/tools")).header("authorization", "Basic Zm9vOmJhcg==").send().await.expect("basic");
    assert_eq!(resp.status(), 401);
    for auth in [Auth::none(), Auth::bearer("wrong")] {
        let mut anonymous = ctx.server.changes_with(auth).await;
        let status =
            bounded("ListChanges", anonymous.list_changes(ListChangesRequest::default())).await.expect_err("denied");
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    for token in [None, Some("wrong")] {
        let mut req = http
            .post(ctx.url("/mcp"))
            .header("accept", ACCEPT_BOTH)
            .json(&json!({"jsonrpc":"2.0","id":1,"method":"ping"}));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        assert_eq!(req.send().await.expect("POST /mcp").status(), 401);
    }

    // Tool client errors over the three transports.
    let mut changes = ctx.server.changes().await;
    bounded("OpenChange", changes.open_change(open_req("faulty"))).await.expect("OpenChange");
    let status = bounded("ShowChange", changes.show_change(ShowChangeRequest { slug: "no-such-change".into() }))
        .await
        .expect_err("not found");
    assert_eq!(status.code(), Code::NotFound);
    let status = bounded("OpenChange", changes.open_change(open_req("Not A Slug"))).await.expect_err("invalid slug");
    assert_eq!(status.code(), Code::InvalidArgument);
    let update = UpdateTasksRequest {
        slug: "faulty".into(),
        updates: vec![TaskUpdate { id: "99.99".into(), done: true }],
        ..Default::default()
    };
    bounded("UpdateTasks", changes.update_tasks(update)).await.expect_err("unknown task");
    let mut other = open_req("faulty");
    other.owner = "someone-else".into();
    bounded("OpenChange", changes.open_change(other)).await.expect_err("locked by ops");
    let (status, body) = ctx.tool(TOKEN, "change.show", json!({"slug": "no-such-change"})).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = ctx.tool(TOKEN, "change.open", json!({"slug": "Not A Slug", "title": "x"})).await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = ctx.tool(TOKEN, "change.open", json!({"slug": "invalid-change", "title": "Invalid"})).await;
    assert_eq!(status, 200);
    std::fs::write(ctx.change_dir("invalid-change").join("proposal.md"), "no sections at all\n")
        .expect("break proposal");
    let (status, body) = ctx.tool(TOKEN, "change.archive", json!({"slug": "invalid-change"})).await;
    assert!((400..500).contains(&status), "archive of an invalid change: {status} {body}");
    let mut mcp = connect(ctx, TOKEN).await;
    let r = mcp.call("change.show", json!({"slug": "no-such-change"})).await;
    assert_eq!(r["isError"], true, "{r}");

    // HTTP refusals: bad JSON, unknown path, wrong method, wrong Accept, oversized body, foreign Origin.
    let resp = http
        .post(ctx.url("/v1/tools/change.show"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("bad JSON");
    assert_eq!(resp.status(), 400);
    assert_eq!(ctx.get(Some(TOKEN), "/no/such/path").await, 404);
    let resp = http.put(ctx.url("/v1/tools")).bearer_auth(TOKEN).send().await.expect("PUT");
    assert_eq!(resp.status(), 405);
    let resp = http
        .post(ctx.url("/mcp"))
        .bearer_auth(TOKEN)
        .header("accept", "text/plain")
        .json(&json!({"jsonrpc":"2.0","id":1,"method":"ping"}))
        .send()
        .await
        .expect("wrong Accept");
    assert_eq!(resp.status(), 406);
    // On a connection of its own: the server answers 413 without reading the body, and closes.
    let big = vec![b'a'; 2 * 1024 * 1024];
    let once = reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("client");
    let resp = once
        .post(ctx.url("/v1/tools/change.show"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .expect("oversized");
    assert_eq!(resp.status(), 413);
    let resp = http
        .get(ctx.url("/v1/tools"))
        .header("origin", "http://evil.example")
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("origin");
    assert_eq!(resp.status(), 403);

    // Server errors: with the archive folder broken, a change that is no draft cannot be looked
    // up (from here on: "no-such-change" above is a NOT_FOUND only with a sound archive).
    let broken_archive = BrokenArchive::new(ctx);
    let status = bounded("ShowChange", changes.show_change(ShowChangeRequest { slug: "broken".into() }))
        .await
        .expect_err("broken");
    assert_eq!(status.code(), Code::Internal);
    let (status, body) = ctx.tool(TOKEN, "change.show", json!({"slug": "broken"})).await;
    assert_eq!(status, 500, "{body}");
    // A server fault is a JSON-RPC error (a client fault is a tool result with isError).
    let r = mcp.request("tools/call", json!({"name": "change.show", "arguments": {"slug": "broken"}})).await;
    assert!(r["error"].is_object(), "{r}");

    // Streams refused at the cap, over each transport.
    let held = hold_streams(ctx).await;
    let other = connect(ctx, TOKEN).await;
    let resp = http
        .get(&other.url)
        .bearer_auth(TOKEN)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &other.session)
        .header("mcp-protocol-version", MCP_VERSION)
        .send()
        .await
        .expect("GET /mcp");
    assert_eq!(resp.status(), 503, "a stream over the cap");
    assert_eq!(sse_over_cap(ctx, TOKEN).await, 503);
    let resp = http
        .post(ctx.url("/v1/tools/change.show"))
        .bearer_auth(TOKEN)
        .header("accept", "application/x-ndjson")
        .json(&json!({"slug": "faulty"}))
        .send()
        .await
        .expect("NDJSON over the cap");
    assert_eq!(resp.status(), 503);
    let mut resources = ctx.server.resources().await;
    let status = bounded(
        "ReadResource",
        resources.read_resource(ReadResourceRequest { uri: "change://faulty/proposal".into() }),
    )
    .await
    .expect_err("over the cap");
    assert_eq!(status.code(), Code::Unavailable);
    drop(held);
    ctx.wait_streams_closed().await;

    // Rate limiting: `slow` spends its burst over HTTP, then is refused over HTTP, gRPC and MCP.
    let refused = flood(BURST + 40, move |_| async move { ctx.get(Some(SLOW_TOKEN), "/v1/tools").await }).await;
    assert!(refused.get(&429).is_some_and(|n| *n > 0), "no 429 in {refused:?}");
    let mut slow = ctx.server.changes_with(Auth::bearer(SLOW_TOKEN)).await;
    let mut slow_mcp_refused = false;
    for _ in 0..40 {
        // The bucket refills at 50/s: spend it again until each transport is refused once.
        flood(60, move |_| async move { ctx.get(Some(SLOW_TOKEN), "/v1/tools").await }).await;
        let grpc = bounded("ListChanges", slow.list_changes(ListChangesRequest::default())).await;
        let resp = http
            .post(ctx.url("/mcp"))
            .bearer_auth(SLOW_TOKEN)
            .header("accept", ACCEPT_BOTH)
            .json(&json!({"jsonrpc":"2.0","id":1,"method":"ping"}))
            .send()
            .await
            .expect("POST /mcp");
        slow_mcp_refused |= resp.status() == 429;
        if grpc.as_ref().is_err_and(|s| s.code() == Code::ResourceExhausted) && slow_mcp_refused {
            return broken_archive;
        }
    }
    panic!("the rate limiter never refused `slow` over both gRPC and MCP");
}

/// Two streams held open (a gRPC watch and an MCP GET stream): the cap of 2 is full.
struct HeldStreams {
    _watch: tonic::Streaming<task_mcp::pb::ChangeEvent>,
    _sse: reqwest::Response,
}

async fn hold_streams(ctx: &Ctx) -> HeldStreams {
    let mut resources = ctx.server.resources().await;
    let watch = bounded("WatchChanges", resources.watch_changes(WatchChangesRequest::default()))
        .await
        .expect("WatchChanges")
        .into_inner();
    let mcp = connect(ctx, TOKEN).await;
    let sse = mcp.open_stream().await;
    HeldStreams { _watch: watch, _sse: sse }
}

/// `GET /sse` (a legacy stream), which the cap refuses with 503 before any session exists.
async fn sse_over_cap(ctx: &Ctx, token: &str) -> u16 {
    let resp = ctx
        .http
        .get(ctx.url("/sse"))
        .bearer_auth(token)
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("GET /sse");
    resp.status().as_u16()
}

/// Both listeners held at their cap by connections that never make a request, and more
/// refused every round, until stopped: what a flood of idle connections (or a client that leaks
/// them) does.
struct ConnectionFlood {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The HTTP/2 client preface and an empty SETTINGS frame: a gRPC connection the server keeps past
/// its 10 s preface timeout.
const H2_HELLO: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Whether the server has closed `stream` (what it sent before is read and dropped).
fn closed(stream: &tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match stream.try_read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

impl ConnectionFlood {
    fn start(ctx: &Ctx) -> ConnectionFlood {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let http = ctx.server.http_addr.expect("http_addr");
        let tasks = [(http, &b""[..]), (ctx.server.grpc_addr, H2_HELLO)]
            .into_iter()
            .map(|(addr, hello)| tokio::spawn(Self::keep_full(addr, hello, stopped.clone())))
            .collect();
        ConnectionFlood { stop, tasks }
    }

    /// Each round opens one connection more than the places left (the cap less those held),
    /// keeps the ones the server keeps and lets go of the ones it closed: at the cap, at least
    /// one refusal a round. Silent HTTP connections are closed after 30 s (head timeout); the
    /// next rounds take their places again.
    async fn keep_full(addr: SocketAddr, hello: &'static [u8], mut stopped: tokio::sync::watch::Receiver<bool>) {
        use tokio::io::AsyncWriteExt;
        let mut held: Vec<tokio::net::TcpStream> = Vec::new();
        while !*stopped.borrow() {
            held.retain(|s| !closed(s));
            let mut fresh = Vec::new();
            for _ in 0..(MAX_CONNECTIONS + 1).saturating_sub(held.len()).max(1) {
                if let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await
                    && stream.write_all(hello).await.is_ok()
                {
                    fresh.push(stream);
                }
            }
            // A refused connection is closed at once; this is ample for the server to get to it.
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(300)) => {}
                _ = stopped.changed() => {}
            }
            held.extend(fresh.into_iter().filter(|s| !closed(s)));
        }
    }

    /// Stops the flood, closes its connections and waits until the server has given their places
    /// back (the late checks connect again). The connections refused meanwhile.
    async fn stop(self, ctx: &Ctx) -> f64 {
        let _ = self.stop.send(true);
        for task in self.tasks {
            task.await.expect("flood task");
        }
        let deadline = Instant::now() + STREAM_CLOSE_BOUND;
        for listener in ["http", "grpc"] {
            let of_listener = |l: &BTreeMap<String, String>| l.get("listener").is_some_and(|v| v == listener);
            while ctx.figure("listener_active_connections", of_listener).await >= MAX_CONNECTIONS as f64 {
                assert!(
                    Instant::now() < deadline,
                    "{listener}: the flood's connections still held after {STREAM_CLOSE_BOUND:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        ctx.figure("listener_refused_connections_total", |_| true).await
    }
}

/// Slow calls: HTTP/JSON and NDJSON `change.show` whose lock read stalls for [`STALL`].
async fn slow_calls(ctx: &Ctx) {
    // stall-grpc: for the call held in flight later, while the workspace cannot be written.
    for slug in ["stall-http", "stall-ndjson", "stall-grpc"] {
        let (status, body) = ctx.tool(TOKEN, "change.open", json!({"slug": slug, "title": "Stalled"})).await;
        assert_eq!(status, 200, "{body}");
    }
    let json_lock = StalledLock::new(&ctx.change_dir("stall-http"));
    let ndjson_lock = StalledLock::new(&ctx.change_dir("stall-ndjson"));
    let json_call = ctx.tool(TOKEN, "change.show", json!({"slug": "stall-http"}));
    let ndjson_call = async {
        let resp = ctx
            .http
            .post(ctx.url("/v1/tools/change.show"))
            .bearer_auth(TOKEN)
            .header("accept", "application/x-ndjson")
            .json(&json!({"slug": "stall-ndjson"}))
            .send()
            .await
            .expect("NDJSON show");
        (resp.status().as_u16(), resp.text().await.unwrap_or_default())
    };
    let release = async {
        let writers = (json_lock.wait_for_reader().await, ndjson_lock.wait_for_reader().await);
        tokio::time::sleep(STALL).await;
        drop(writers);
    };
    let ((json_status, json_body), (nd_status, nd_body), ()) = tokio::join!(json_call, ndjson_call, release);
    assert_eq!(json_status, 200, "{json_body}");
    assert_eq!(nd_status, 200, "{nd_body}");
}

/// Floods sized from the server's own counters so that, in the fault sweep, the error-driven
/// alerts cross their thresholds with a margin: tool server errors over 5% of executions (the
/// 1h page is at 1.44%), unexpected HTTP errors over 8% (the 1d ticket is at 3%, and the 1d
/// recording averages in the quiet minutes before the flood), failed credentialed attempts over
/// 80% (the 1h page is at 72%), refused HTTP requests over 2/s for 10 minutes and a quarter of the
/// traffic (`TaskMcpSuspiciousRequests`). Streams must be held at the cap meanwhile.
async fn error_floods(ctx: &Ctx) -> BTreeMap<&'static str, usize> {
    let non_health = |l: &BTreeMap<String, String>| !l["http_route"].starts_with("/health/");
    let mut sizes = BTreeMap::new();

    // INTERNAL: gRPC show of a change looked up in the broken archive, by the flood principals.
    let tools = ctx.figure("tool_executions_total", |_| true).await;
    let server_errors = ctx.figure("tool_executions_total", |l| l["outcome"] == "server_error").await;
    let n = (((0.05 * tools - server_errors) / 0.95).ceil().max(0.0) as usize + 10).max(20);
    let mut clients = Vec::new();
    for t in FLOOD_TOKENS {
        clients.push(ctx.server.changes_with(Auth::bearer(t)).await);
    }
    for i in 0..n {
        let count = clients.len();
        let c = &mut clients[i % count];
        let status = bounded("ShowChange", c.show_change(ShowChangeRequest { slug: "broken".into() }))
            .await
            .expect_err("broken");
        assert_eq!(status.code(), Code::Internal, "{status:?}");
    }
    sizes.insert("INTERNAL (gRPC change.show with the archive folder a file)", n);

    // 503 and 401: X refused streams, then I wrong tokens, solving the two ratios below together.
    let cred = ctx.figure("auth_attempts_total", |l| l["reason"] != "missing").await;
    let failed = ctx.figure("auth_attempts_total", |l| l["reason"] != "missing" && l["outcome"] == "failure").await;
    let http_total = ctx.figure("http_server_requests_total", non_health).await;
    let http_bad = ctx
        .figure("http_server_requests_total", |l| {
            let code = l["http_response_status_code"].as_str();
            non_health(l)
                && (code.starts_with('5') || code.starts_with('4'))
                && !["401", "403", "404", "429"].contains(&code)
        })
        .await;
    // (bad + X) / (http + X + I) >= 0.08 with I = 4 (cred + X) - 5 failed.
    let x = ((0.08 * http_total + 0.32 * cred - 0.4 * failed - http_bad) / 0.6).ceil().max(0.0) as usize + 20;
    let per_principal = BURST - 10;
    assert!(x <= per_principal * FLOOD_TOKENS.len(), "a 503 flood of {x} needs more flood principals");
    let refused = flood(x, move |i| async move { sse_over_cap(ctx, FLOOD_TOKENS[i / per_principal]).await }).await;
    assert_eq!(refused.keys().collect::<Vec<_>>(), [&503], "{refused:?}");
    sizes.insert("503 (GET /sse over the stream cap)", x);
    let i = (4.0 * (cred + x as f64) - 5.0 * failed).ceil().max(1300.0) as usize + 100;
    let denied = flood(i, move |_| async move { ctx.get(Some("wrong"), "/v1/tools").await }).await;
    assert_eq!(denied.keys().collect::<Vec<_>>(), [&401], "{denied:?}");
    sizes.insert("401 (wrong bearer token)", i);
    sizes
}

/// The archive folder replaced by a file until dropped, as a botched checkout could leave it:
/// looking up a change that is no draft fails WORKSPACE_UNUSABLE, an INTERNAL status (the
/// operator fixes it, not the client). Drafts are served as before.
struct BrokenArchive {
    archive: PathBuf,
    aside: PathBuf,
}

impl BrokenArchive {
    fn new(ctx: &Ctx) -> BrokenArchive {
        let archive = ctx.server.workspace.join("changes/archive");
        let aside = ctx.server.workspace.join("archive.aside");
        std::fs::rename(&archive, &aside).expect("move the archive aside");
        std::fs::write(&archive, b"not a folder").expect("the archive folder as a file");
        BrokenArchive { archive, aside }
    }
}

impl Drop for BrokenArchive {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.archive);
        let _ = std::fs::rename(&self.aside, &self.archive);
    }
}

/// The workspace made unwritable (its `.staging` folder replaced by a file) until dropped.
struct Unwritable {
    staging: PathBuf,
}

impl Unwritable {
    async fn new(ctx: &Ctx, prom: &Prometheus) -> Unwritable {
        let staging = ctx.server.workspace.join(".staging");
        std::fs::remove_dir_all(&staging).expect("remove .staging");
        std::fs::write(&staging, b"not a folder").expect(".staging as a file");
        // The readiness probe runs every 5 s: wait for /health/ready to say so.
        let deadline = Instant::now() + Duration::from_secs(30);
        while ctx.get(None, "/health/ready").await != 503 {
            assert!(Instant::now() < deadline, "/health/ready still 200 with an unwritable workspace");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The 503 series is born with that first probe; after a scrape, `rate()` sees the rest.
        prom.settle(unix_now()).await;
        for _ in 0..20 {
            assert_eq!(ctx.get(None, "/health/ready").await, 503);
        }
        Unwritable { staging }
    }
}

impl Drop for Unwritable {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.staging);
        let _ = std::fs::create_dir(&self.staging);
    }
}

// ---------------------------------------------------------------------------------------------
// The test

#[derive(Default)]
struct Report {
    lines: Vec<String>,
}

impl Report {
    fn say(&mut self, line: String) {
        eprintln!("monitoring_live: {line}");
        self.lines.push(line);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rule_and_dashboard_expression_returns_data_from_the_live_server() {
    let mut report = Report::default();
    // Every expression is first a valid one against the contract (the static test's check).
    let contract = contract();
    let recorded = recorded_series();

    let mut builder = Server::builder()
        .auth_token(&format!("ops={TOKEN}"))
        .args(["--auth-token", &format!("slow={SLOW_TOKEN}")])
        .rate_limit(RATE, BURST as u32)
        .args(["--max-streams", &MAX_STREAMS.to_string()])
        // The floods below need every wrong token answered 401 and every stream over the
        // global cap refused 503, whoever asks: no throttle of failures, no per-principal share.
        .args(["--auth-failures-per-minute", "0", "--max-streams-per-principal", "0"])
        .args(["--max-connections", &MAX_CONNECTIONS.to_string()]);
    for (i, t) in FLOOD_TOKENS.iter().enumerate() {
        builder = builder.args(["--auth-token".to_string(), format!("flood{}={t}", i + 1)]);
    }
    let server = builder.start();
    let target = server.metrics_addr.expect("the listening line names metrics_addr");
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
    let ctx = Ctx { base: server.http_base(), server, http };
    let prom = Prometheus::start(target);
    prom.api.wait_ready(START_BOUND).await.unwrap_or_else(|e| panic!("{e}\n{}", prom.logs()));
    let rules = all_rules();
    let alerts: BTreeMap<String, Rule> = rules.iter().filter_map(|r| r.alert.clone().map(|a| (a, r.clone()))).collect();
    let instance = target.to_string();

    // ---- 1. Healthy run: two rounds, a scrape apart.
    let started = Instant::now();
    healthy_round(&ctx, 1).await;
    prom.settle(unix_now()).await;
    healthy_round(&ctx, 2).await;
    prom.settle(unix_now()).await;
    report.say(format!("healthy workload (2 rounds) done after {:?}", started.elapsed()));

    let vars = dashboard_variables(&prom.api, &instance).await;
    let all = items(&vars);
    for item in &all {
        let problems = check_promql(&item.promql, &contract, &recorded);
        assert!(problems.is_empty(), "{}: {problems:?}", item.origin);
    }
    let mut checker = Checker { api: &prom.api, selectors: BTreeMap::new() };

    // The checker can fail: a misspelt series, one hidden behind `or vector(0)`, a label value
    // the server never sends.
    for bad in [
        "sum(rate(http_server_request_total{job=\"task-mcp\"}[5m]))",
        "(sum(rate(tool_executions_totl{job=\"task-mcp\"}[5m])) or vector(0))",
        "sum(rate(tool_executions_total{job=\"task-mcp\", transport=\"websocket\"}[5m]))",
    ] {
        let problems = checker.problems(bad, &|_| false).await;
        assert!(!problems.is_empty(), "the checker accepted {bad}");
        report.say(format!("negative control flagged: {bad}: {problems:?}"));
    }

    let mut failures = Vec::new();
    let (mut data, mut event_only, mut event_only_with_data, mut silent, mut fired) = (0, 0, 0, 0, Vec::new());
    let mut event_reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for item in &all {
        let selectors = vector_selectors(&item.promql).expect("selectors");
        let events: Vec<&str> = selectors.iter().filter_map(|s| event_selector(s)).collect();
        let skip = |s: &str| event_selector(s).is_some();
        if let Some(alert) = &item.alert {
            // No alert fires in a healthy run (unless it depends on the machine's speed).
            let result = prom.api.query(&item.promql).await.unwrap_or_else(|e| panic!("{e}"));
            if !result.is_empty() {
                fired.push(alert.clone());
                if !MAY_FIRE_WHEN_HEALTHY.iter().any(|p| alert.starts_with(p)) {
                    failures.push(format!("{}: fires in a healthy run: {result:?}", item.origin));
                }
            } else {
                silent += 1;
            }
            for s in selectors.iter().filter(|s| !skip(s)) {
                if !checker.selector_matches(s).await.unwrap_or(false) {
                    failures.push(format!("{}: selector {s} matches no series", item.origin));
                }
            }
            event_only += 1;
        } else if !events.is_empty() {
            for why in &events {
                *event_reasons.entry(why).or_default() += 1;
            }
            event_only += 1;
            let problems = checker.problems(&item.promql, &skip).await;
            if problems.is_empty() {
                event_only_with_data += 1;
            }
            for p in problems.into_iter().filter(|p| p.starts_with("selector")) {
                failures.push(format!("{}: {p}", item.origin));
            }
        } else {
            let problems = checker.problems(&item.promql, &|_| false).await;
            if problems.is_empty() {
                data += 1;
            } else {
                failures.push(format!("{}: {}\n    {}", item.origin, problems.join("; "), item.promql));
            }
        }
    }
    assert!(failures.is_empty(), "healthy run, {} problem(s):\n{}", failures.len(), failures.join("\n"));
    let count = |k: fn(&Kind) -> bool| all.iter().filter(|i| k(&i.kind)).count();
    report.say(format!(
        "healthy sweep: {} expressions ({} recording rules, {} alerts, {} dashboard queries): {data} returned data; \
         {event_only} event-only ({} alerts, {} by event selectors, of which {event_only_with_data} show data anyway \
         through `or` fallbacks); {silent} alerts silent, machine-dependent alerts firing: {fired:?}",
        all.len(),
        count(|k| matches!(k, Kind::Record)),
        count(|k| matches!(k, Kind::Alert)),
        count(|k| matches!(k, Kind::Panel)),
        alerts.len(),
        event_only - alerts.len(),
    ));
    for (why, n) in &event_reasons {
        report.say(format!("  event-only by selector ({n} expressions): {why}"));
    }

    // ---- 2. Induced faults.
    let fault_start = Instant::now();
    let broken_archive = prime_faults(&ctx).await;
    prom.settle(unix_now()).await;
    slow_calls(&ctx).await;
    let held = hold_streams(&ctx).await;
    let sizes = error_floods(&ctx).await;
    drop(broken_archive);
    for (what, n) in &sizes {
        report.say(format!("flood: {n} x {what}"));
    }
    let unwritable = Unwritable::new(&ctx, &prom).await;
    // A tool call held in flight on a stalled lock (for the stuck-executions probe).
    let held_lock = StalledLock::new(&ctx.change_dir("stall-grpc"));
    let mut held_client = ctx.server.changes().await;
    let held_call = tokio::spawn(async move {
        tokio::time::timeout(HELD_CALL_BOUND, held_client.show_change(ShowChangeRequest { slug: "stall-grpc".into() }))
            .await
    });
    let held_writer = held_lock.wait_for_reader().await;
    prom.add_dead_collector().await;
    // Last, as nothing after it may open a connection until it stops: both listeners full.
    let connection_flood = ConnectionFlood::start(&ctx);
    report.say(format!("faults induced and held after {:?}", fault_start.elapsed()));

    // The fault sweep: every expression but the late and the not-inducible ones, selectors
    // included; retried (bounded) while the 1d averages and the reloaded target catch up.
    let late = |i: &Item| i.alert.as_deref().is_some_and(|a| LATE.contains(&a));
    let probed = |i: &Item| i.alert.as_ref().and_then(|a| not_induced(&alerts[a])).is_some();
    let mut pending: Vec<&Item> = all.iter().filter(|i| !late(i) && !probed(i)).collect();
    let checked_in_fault_sweep = pending.len();
    let deadline = Instant::now() + SWEEP_BOUND;
    let mut last = Vec::new();
    loop {
        prom.settle(unix_now()).await;
        checker.forget();
        let mut still = Vec::new();
        last.clear();
        for item in pending {
            let problems = checker.problems(&item.promql, &|_| false).await;
            if !problems.is_empty() {
                last.push(format!("{}: {}\n    {}", item.origin, problems.join("; "), item.promql));
                still.push(item);
            }
        }
        pending = still;
        if pending.is_empty() || Instant::now() > deadline {
            break;
        }
    }
    assert!(pending.is_empty(), "fault sweep, {} expression(s) without data:\n{}", last.len(), last.join("\n"));
    let inducible_alerts =
        all.iter().filter(|i| i.alert.is_some() && !late(i) && !probed(i)).map(|i| i.alert.clone().unwrap_or_default());
    report.say(format!(
        "fault sweep: {checked_in_fault_sweep} expressions returned data, every selector matching; \
         alerts among them made to fire by the faults: {:?}",
        inducible_alerts.collect::<Vec<_>>()
    ));

    // The alerts a test cannot make fire: their probes, while the faults are held.
    let mut probe_count = 0;
    let (mut latency_alerts, mut latency_why) = (Vec::new(), "");
    for (name, rule) in &alerts {
        let Some((why, probes)) = not_induced(rule) else { continue };
        for p in &probes {
            assert!(check_promql(p, &contract, &recorded).is_empty(), "{name}: probe {p}");
            let problems = checker.problems(p, &|_| false).await;
            assert!(problems.is_empty(), "{name}: probe {p}: {problems:?}");
        }
        probe_count += 1;
        if LATENCY_SLOS.iter().any(|p| name.starts_with(p)) {
            latency_alerts.push(name.as_str());
            latency_why = why;
        } else {
            report.say(format!("not induced: {name}: {why}; probes with data: {probes:?}"));
        }
    }
    report.say(format!(
        "not induced: {} latency burn-rate alerts {latency_alerts:?}: {latency_why}; probes with data: \
         each alert's two sli:<sli>:error_ratio_rate<window> operands and sli:<sli>:bad_rate5m > 0",
        latency_alerts.len()
    ));
    // The workspace is unwritable (`.staging` a file), not full: the space check stays 1.
    let full = &alerts["TaskMcpWorkspaceFull"];
    let result = prom.api.query(&full.expr).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(!has_data(&result), "TaskMcpWorkspaceFull: {} returned {result:?} for an unwritable workspace", full.expr);

    // Release what is held.
    let refused = connection_flood.stop(&ctx).await;
    report.say(format!("connection flood: {refused} connections refused over the two listeners"));
    drop(held_writer);
    let shown = held_call.await.expect("held call task").expect("the held call ended");
    shown.expect("the held show succeeds once its lock read ends");
    drop(held_lock);
    drop(unwritable);
    drop(held);
    ctx.wait_streams_closed().await;

    // ---- 3. Late checks.
    // Rate limiting: `slow` refused over 1/s for the 10-minute window.
    let rate_limited = &alerts["TaskMcpRateLimitingFrequent"];
    {
        let ctx = &ctx;
        while ctx.figure("rate_limit_hits_total", |_| true).await < 800.0 {
            flood(400, move |_| async move { ctx.get(Some(SLOW_TOKEN), "/v1/tools").await }).await;
        }
    }
    let deadline = Instant::now() + SWEEP_BOUND;
    loop {
        prom.settle(unix_now()).await;
        let problems = checker.problems(&rate_limited.expr, &|_| false).await;
        if problems.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "TaskMcpRateLimitingFrequent after the rate-limit flood: {problems:?}");
    }
    report.say(
        "late: TaskMcpRateLimitingFrequent returned data after a rate-limit flood (> 1 refusal/s over 10m)".into(),
    );

    // The server stops: service down, then telemetry absent (its window shortened from 5m to 10s).
    let service_down = &alerts["TaskMcpServiceDown"];
    let absent = &alerts["TaskMcpTelemetryAbsent"];
    let absent_probe = absent.expr.replace("[5m]", "[10s]");
    assert_ne!(absent_probe, absent.expr, "TaskMcpTelemetryAbsent no longer uses a [5m] window: update this test");
    let Ctx { mut server, .. } = ctx;
    server.sigterm();
    assert!(server.wait_exit(Duration::from_secs(30)).is_some(), "the server did not stop");
    let deadline = Instant::now() + SWEEP_BOUND;
    for (name, expr) in
        [("TaskMcpServiceDown", service_down.expr.clone()), ("TaskMcpTelemetryAbsent probe", absent_probe)]
    {
        loop {
            let result = prom.api.query(&expr).await.unwrap_or_default();
            if has_data(&result) {
                report.say(format!("late: {name} returned data after the server stopped: {expr}"));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: {expr} returned nothing after the server stopped\n{}",
                prom.logs()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    report.say(format!(
        "summary: {} expressions; healthy run: {data} with data + {event_only} event-only; fault run: {checked_in_fault_sweep} \
         with data; {probe_count} alerts checked by probes; {} late checks; total {:?}",
        all.len(),
        LATE.len(),
        started.elapsed()
    ));
}
