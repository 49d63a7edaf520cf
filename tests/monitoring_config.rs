//! The monitoring stack under `monitoring/`, checked with the real tools.
//!
//! - `python3 monitoring/generate.py --check`: the generated rules, tests, dashboards, METRICS.md
//!   and SLOS.md agree with `metrics.toml` and `slos.toml`.
//! - `promtool check rules` and `promtool test rules`; every alert has a case that fires it at its
//!   threshold, one that keeps it silent just below, and one with no traffic; a mutated copy of the
//!   rules fails those tests (so they can fail).
//! - Burn-rate thresholds and windows follow the SRE Workbook for every SLO of the issue.
//! - Every PromQL expression of the rules and dashboards uses only the series, labels and label
//!   values of the metrics contract (`monitoring/metrics.json`) or recording rules; dashboard
//!   queries parse (`promtool check rules` on a scratch file).
//! - Every alert has severity, slo, team, service labels and summary, description, runbook_url
//!   (an anchor that exists in RUNBOOKS.md) and dashboard_url (a dashboard uid that exists).
//! - `amtool check-config`; `amtool config routes test` for every case of the routes table and for
//!   every alert of the rule files; `amtool template render` of every template for a firing and a
//!   resolved fixture; the inhibitions applied by a real Alertmanager.
//! - Dashboard lint; Terraform parsed by a real HCL2 parser (hcl-rs), formatting and structure
//!   checked by rules (terraform itself is not available here).
//!
//! promtool and amtool come from the Debian packages `prometheus` and `prometheus-alertmanager`;
//! `scripts/install-test-tools` installs them. A missing tool fails the test, it never skips.

mod monitoring_support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use monitoring_support::{
    Rule, alertmanager_binary, all_rules, assert_ok, check_promql, contract, dashboard_queries, dashboards,
    files_with_ext, grafana_to_promql, indent_of, mon, parse_rules, read, recorded_series, root, run, text, tool,
    yaml_scalar,
};
use serde_json::Value;

#[derive(Debug)]
struct AlertCase {
    file: String,
    group: String,
    alertname: String,
    firing: bool,
}

struct TestFile {
    rule_files: Vec<String>,
    cases: Vec<AlertCase>,
    groups: Vec<String>,
}

fn parse_test_file(path: &Path) -> TestFile {
    let text = read(path);
    let file = path.file_name().unwrap().to_string_lossy().to_string();
    let mut tf = TestFile { rule_files: Vec::new(), cases: Vec::new(), groups: Vec::new() };
    let mut section = "";
    let mut group = String::new();
    let mut pending: Option<String> = None;
    for line in text.lines() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if indent_of(line) == 0 {
            section = if line.starts_with("rule_files:") {
                "rule_files"
            } else if line.starts_with("tests:") {
                "tests"
            } else {
                ""
            };
            continue;
        }
        let t = line.trim_start();
        if section == "rule_files" {
            if let Some(f) = t.strip_prefix("- ") {
                tf.rule_files.push(yaml_scalar(f));
            }
        } else if section == "tests" {
            if indent_of(line) == 2 && t.starts_with("- ") {
                group = t.strip_prefix("- name:").map(yaml_scalar).unwrap_or_default();
                tf.groups.push(group.clone());
            } else if let Some(a) = t.strip_prefix("alertname:") {
                pending = Some(yaml_scalar(a));
            } else if let Some(v) = t.strip_prefix("exp_alerts:") {
                let alertname = pending.take().unwrap_or_else(|| panic!("{file}: exp_alerts without alertname"));
                tf.cases.push(AlertCase {
                    file: file.clone(),
                    group: group.clone(),
                    alertname,
                    firing: v.trim() != "[]",
                });
            }
        }
    }
    tf
}

fn all_test_files() -> Vec<(PathBuf, TestFile)> {
    files_with_ext(&mon("prometheus/tests"), "yml")
        .into_iter()
        .map(|p| {
            let tf = parse_test_file(&p);
            (p, tf)
        })
        .collect()
}

/// `id = "..."` values of the `[[slo]]` and `[[capacity]]` tables of slos.toml.
fn slo_ids() -> (BTreeSet<String>, BTreeSet<String>) {
    let mut slos = BTreeSet::new();
    let mut capacity = BTreeSet::new();
    let mut table = String::new();
    for line in read(&mon("slos.toml")).lines() {
        let t = line.trim();
        if t.starts_with("[[") {
            table = t.to_string();
        } else if let Some(v) = t.strip_prefix("id = ") {
            let id = yaml_scalar(v);
            match table.as_str() {
                "[[slo]]" => slos.insert(id),
                "[[capacity]]" => capacity.insert(id),
                _ => panic!("id outside [[slo]]/[[capacity]]: {line}"),
            };
        }
    }
    (slos, capacity)
}

/// GitHub-style anchors of the headings of a Markdown file.
fn markdown_anchors(md: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut in_code = false;
    for line in md.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        }
        if in_code || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#').trim();
        let slug: String = title
            .to_lowercase()
            .chars()
            .filter_map(|c| {
                if c.is_alphanumeric() || c == '-' || c == '_' {
                    Some(c)
                } else if c == ' ' {
                    Some('-')
                } else {
                    None
                }
            })
            .collect();
        out.insert(slug);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Generator, promtool

#[test]
fn generated_files_match_their_sources() {
    let out = Command::new("python3")
        .args(["monitoring/generate.py", "--check"])
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 (3.11 or later, standard library only, is needed): {e}"));
    assert_ok(
        "`python3 monitoring/generate.py --check` (run `python3 monitoring/generate.py` and commit the result)",
        &out,
    );
}

#[test]
fn rule_files_pass_promtool_check() {
    let promtool = tool("promtool");
    for file in files_with_ext(&mon("prometheus/rules"), "yml") {
        let out = run(Command::new(&promtool).arg("check").arg("rules").arg(&file));
        assert_ok(&format!("promtool check rules {}", file.display()), &out);
        assert!(String::from_utf8_lossy(&out.stdout).contains("SUCCESS"), "{}", text(&out));
    }
}

#[test]
fn promtool_rule_tests_pass() {
    let promtool = tool("promtool");
    for file in files_with_ext(&mon("prometheus/tests"), "yml") {
        let out = run(Command::new(&promtool).arg("test").arg("rules").arg(&file));
        assert_ok(&format!("promtool test rules {}", file.display()), &out);
    }
}

#[test]
fn every_alert_fires_at_its_threshold_and_stays_silent_below_it_and_when_idle() {
    let rules = all_rules();
    let alerts: BTreeSet<String> = rules.iter().filter_map(|r| r.alert.clone()).collect();
    assert!(alerts.len() >= 50, "expected the full alert set, found {}", alerts.len());
    let tests = all_test_files();
    let mut covered_rule_files = BTreeSet::new();
    let mut fire: BTreeMap<&str, Vec<&AlertCase>> = BTreeMap::new();
    let mut below: BTreeMap<&str, Vec<&AlertCase>> = BTreeMap::new();
    let mut idle: BTreeMap<&str, Vec<&AlertCase>> = BTreeMap::new();
    for (path, tf) in &tests {
        assert!(!tf.rule_files.is_empty(), "{}: no rule_files", path.display());
        for rf in &tf.rule_files {
            let resolved = path.parent().unwrap().join(rf);
            assert!(resolved.is_file(), "{}: rule file {rf} does not exist", path.display());
            covered_rule_files.insert(resolved.file_name().unwrap().to_string_lossy().to_string());
        }
        for g in &tf.groups {
            assert!(
                ["fire", "below", "idle", "windows"].iter().any(|case| g.starts_with(case)),
                "{}: test group {g:?} must be named fire..., below..., idle... or windows...",
                path.display()
            );
        }
        for c in &tf.cases {
            assert!(alerts.contains(&c.alertname), "{}: test of unknown alert {}", c.file, c.alertname);
            let kind = c.group.split(':').next().unwrap_or("").split_whitespace().next().unwrap_or("");
            match (kind, c.firing) {
                ("fire", true) => fire.entry(&c.alertname).or_default().push(c),
                ("below", false) => below.entry(&c.alertname).or_default().push(c),
                ("idle", false) => idle.entry(&c.alertname).or_default().push(c),
                ("idle", true) => panic!("{}: {} is expected to fire in idle group {:?}", c.file, c.alertname, c.group),
                _ => {}
            }
        }
    }
    for rf in files_with_ext(&mon("prometheus/rules"), "yml") {
        let name = rf.file_name().unwrap().to_string_lossy().to_string();
        assert!(covered_rule_files.contains(&name), "no promtool test file loads {name}");
    }
    let mut missing = Vec::new();
    for a in &alerts {
        for (what, map) in [
            ("a firing case at its threshold", &fire),
            ("a silent case just below it", &below),
            ("a silent case with no traffic", &idle),
        ] {
            if !map.contains_key(a.as_str()) {
                missing.push(format!("{a}: no {what}"));
            }
        }
    }
    assert!(missing.is_empty(), "alerts without tests:\n{}", missing.join("\n"));
}

#[test]
fn mutated_rules_fail_the_promtool_tests() {
    // The tests must be able to fail: a threshold or a `for` changed in a copy of the rules
    // makes `promtool test rules` fail, and so does a window's recording rule reading another
    // range (every 30m rule reading [5m]: constant fixture traffic alone cannot tell them apart).
    let promtool = tool("promtool");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("rules")).unwrap();
    std::fs::create_dir_all(dir.path().join("tests")).unwrap();
    // (rules, tests, from, to, how many occurrences to replace)
    let mutations: [(&str, &str, &str, &str, usize); 3] = [
        (
            "slo-alerts.yml",
            "slo-alerts.test.yml",
            "sli:api_availability:error_ratio_rate1h > 0.0144",
            "sli:api_availability:error_ratio_rate1h > 0.0160",
            1,
        ),
        ("slo-alerts.yml", "slo-alerts.test.yml", "[30m]", "[5m]", usize::MAX),
        ("service-alerts.yml", "service-alerts.test.yml", "> 0.85\n", "> 0.87\n", 1),
    ];
    for (rules, tests, from, to, count) in mutations {
        let original = read(&mon(&format!("prometheus/rules/{rules}")));
        assert!(original.contains(from), "{rules} no longer contains {from:?}; update this test");
        std::fs::write(dir.path().join("rules").join(rules), original.replacen(from, to, count)).unwrap();
        std::fs::copy(mon(&format!("prometheus/tests/{tests}")), dir.path().join("tests").join(tests)).unwrap();
        let out = run(Command::new(&promtool).arg("test").arg("rules").arg(dir.path().join("tests").join(tests)));
        assert!(!out.status.success(), "promtool test rules passed on mutated {rules} ({from:?} -> {to:?})");
        assert!(text(&out).contains("FAILED"), "{}", text(&out));
    }
}

// ---------------------------------------------------------------------------------------------
// Burn-rate policy

#[test]
fn burn_rate_alerts_follow_the_sre_workbook() {
    // (alert prefix, sli, objective, pages) from the issue; thresholds = factor x (1 - objective).
    let slos: [(&str, &str, f64, bool); 10] = [
        ("TaskMcpApiAvailability", "api_availability", 0.999, true),
        ("TaskMcpHealthAvailability", "health_availability", 0.9995, true),
        ("TaskMcpHttpLatencyP95", "http_latency_p95", 0.95, true),
        ("TaskMcpHttpLatencyP99", "http_latency_p99", 0.99, true),
        ("TaskMcpToolLatencyP95", "tool_latency_p95", 0.95, true),
        ("TaskMcpToolLatencyP99", "tool_latency_p99", 0.99, true),
        ("TaskMcpStreamFirstMessage", "stream_first_message", 0.95, true),
        ("TaskMcpToolErrors", "tool_errors", 0.999, true),
        ("TaskMcpHttpErrors", "http_errors", 0.99, false),
        ("TaskMcpAuthFailures", "auth_failures", 0.95, true),
    ];
    // (name, long, short, factor, for, severity)
    let windows: [(&str, &str, &str, f64, &str, &str); 4] = [
        ("1h", "1h", "5m", 14.4, "2m", "critical"),
        ("6h", "6h", "30m", 6.0, "15m", "critical"),
        ("1d", "1d", "2h", 3.0, "1h", "warning"),
        ("3d", "3d", "6h", 1.0, "3h", "warning"),
    ];
    let rules = parse_rules(&mon("prometheus/rules/slo-alerts.yml"));
    let by_name: HashMap<&str, &Rule> = rules.iter().map(|r| (r.name(), r)).collect();
    let mut expected_alerts = BTreeSet::new();
    for (prefix, sli, objective, pages) in slos {
        for (name, long, short, factor, for_, severity) in windows {
            let alert = format!("{prefix}BurnRate{name}");
            if severity == "critical" && !pages {
                assert!(!by_name.contains_key(alert.as_str()), "{alert} must not exist (tickets only)");
                continue;
            }
            expected_alerts.insert(alert.clone());
            let r = by_name.get(alert.as_str()).unwrap_or_else(|| panic!("missing alert {alert}"));
            let want = factor * (1.0 - objective);
            let parts: Vec<&str> = r.expr.split('\n').collect();
            assert_eq!(parts.len(), 3, "{alert}: expr {:?}", r.expr);
            assert_eq!(parts[1], "and", "{alert}: both windows must be required");
            for (part, window) in [(parts[0], long), (parts[2], short)] {
                let (lhs, thr) = part.split_once(" > ").unwrap_or_else(|| panic!("{alert}: {part}"));
                assert_eq!(lhs, format!("sli:{sli}:error_ratio_rate{window}"), "{alert}");
                let thr: f64 = thr.parse().unwrap();
                assert!(
                    (thr - want).abs() < 1e-12,
                    "{alert}: threshold {thr}, want {want} ({factor}x of {})",
                    1.0 - objective
                );
                assert!(by_name.contains_key(lhs), "{alert}: recording rule {lhs} missing");
            }
            assert_eq!(r.for_.as_deref(), Some(for_), "{alert}: for");
            assert_eq!(r.labels.get("severity").map(String::as_str), Some(severity), "{alert}: severity");
            assert_eq!(r.labels.get("long_window").map(String::as_str), Some(long));
            assert_eq!(r.labels.get("short_window").map(String::as_str), Some(short));
        }
        // Compliance and budget panels read the 1d, 7d and 30d windows.
        for w in ["5m", "30m", "1h", "2h", "6h", "1d", "3d", "7d", "30d"] {
            for kind in ["requests_rate", "bad_rate", "error_ratio_rate"] {
                let rec = format!("sli:{sli}:{kind}{w}");
                assert!(by_name.contains_key(rec.as_str()), "missing recording rule {rec}");
            }
        }
    }
    let actual: BTreeSet<String> = rules.iter().filter_map(|r| r.alert.clone()).collect();
    assert_eq!(actual, expected_alerts, "slo-alerts.yml holds exactly the burn-rate alerts");
}

// ---------------------------------------------------------------------------------------------
// Alert labels and annotations

#[test]
fn every_alert_has_labels_annotations_and_links_that_resolve() {
    let (slos, capacity) = slo_ids();
    let anchors = markdown_anchors(&read(&mon("RUNBOOKS.md")));
    for required in [
        "service-downtime",
        "high-error-rate",
        "performance-degradation",
        "memory-issues",
        "cpu-issues",
        "streaming-issues",
        "security-incidents",
        "slo-violations",
        "escalation",
    ] {
        assert!(anchors.contains(required), "RUNBOOKS.md lacks the section #{required}");
    }
    let uids: BTreeSet<String> =
        dashboards().iter().map(|(_, d)| d["uid"].as_str().unwrap_or_default().to_string()).collect();
    let docs: HashMap<&str, String> = ["README.md", "RUNBOOKS.md"].into_iter().map(|d| (d, read(&mon(d)))).collect();
    let mut errors = Vec::new();
    for r in all_rules().iter().filter(|r| r.alert.is_some()) {
        let name = r.name();
        let label = |k: &str| r.labels.get(k).map(String::as_str).unwrap_or("");
        if !["critical", "warning", "info"].contains(&label("severity")) {
            errors.push(format!("{name}: severity {:?}", label("severity")));
        }
        if !["sre", "infrastructure", "security", "business"].contains(&label("team")) {
            errors.push(format!("{name}: team {:?}", label("team")));
        }
        let slo = label("slo");
        if slo != "none" && !slos.contains(slo) && !capacity.contains(slo) {
            errors.push(format!("{name}: slo {slo:?} is neither an SLO, a capacity target nor \"none\""));
        }
        if label("service") != "task-mcp" {
            errors.push(format!("{name}: service label"));
        }
        for a in ["summary", "description", "runbook_url", "dashboard_url"] {
            if r.annotations.get(a).is_none_or(|v| v.trim().is_empty()) {
                errors.push(format!("{name}: annotation {a} missing"));
            }
        }
        let runbook = r.annotations.get("runbook_url").cloned().unwrap_or_default();
        match runbook.split_once("RUNBOOKS.md#") {
            Some((_, anchor)) if anchors.contains(anchor) => {}
            _ => errors.push(format!("{name}: runbook_url {runbook:?} is not an existing RUNBOOKS.md anchor")),
        }
        // The catalogue (README) and the runbooks name every alert (burn-rate alerts by SLO prefix).
        let family = name.split("BurnRate").next().unwrap_or(name);
        for doc in ["README.md", "RUNBOOKS.md"] {
            if !docs[doc].contains(family) {
                errors.push(format!("{name}: not mentioned in {doc}"));
            }
        }
        let dash = r.annotations.get("dashboard_url").cloned().unwrap_or_default();
        let uid = dash.split("/d/").nth(1).and_then(|s| s.split('/').next()).unwrap_or("");
        if !uids.contains(uid) {
            errors.push(format!("{name}: dashboard_url {dash:?} names no dashboard uid"));
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[test]
fn every_promql_expression_uses_only_contract_series_and_labels() {
    let contract = contract();
    let recorded = recorded_series();
    let mut problems = Vec::new();
    let mut checked = 0;
    for r in all_rules() {
        for p in check_promql(&r.expr, &contract, &recorded) {
            problems.push(format!("{} {}: {p}", r.file, r.name()));
        }
        checked += 1;
    }
    for q in dashboard_queries() {
        for p in check_promql(&grafana_to_promql(&q.expr), &contract, &recorded) {
            problems.push(format!("{}: {p}", q.origin));
        }
        checked += 1;
    }
    // Template variable queries: label_values(selector, label).
    for (path, d) in dashboards() {
        for v in d["templating"]["list"].as_array().unwrap() {
            let Some(q) = v["query"].as_str().filter(|_| v["type"] == "query") else { continue };
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|s| s.strip_suffix(')'))
                .unwrap_or_else(|| panic!("{}: variable query {q}", path.display()));
            let (selector, label) = inner.rsplit_once(',').expect("label_values(selector, label)");
            for p in check_promql(selector, &contract, &recorded) {
                problems.push(format!("{} variable {}: {p}", path.display(), v["name"]));
            }
            let metric = selector.split('{').next().unwrap().trim();
            if !contract.get(metric).is_some_and(|l| l.contains_key(label.trim())) {
                problems.push(format!(
                    "{} variable {}: {metric} has no label {}",
                    path.display(),
                    v["name"],
                    label.trim()
                ));
            }
            checked += 1;
        }
    }
    assert!(checked > 400, "too few expressions checked: {checked}");
    assert!(problems.is_empty(), "{} problem(s):\n{}", problems.len(), problems.join("\n"));
}

#[test]
fn the_promql_checker_rejects_what_the_old_stack_got_wrong() {
    // The checker itself must be able to fail: the original's queries are refused.
    let contract = contract();
    let recorded = recorded_series();
    for bad in [
        r#"sum(rate(http_server_requests_total{status=~"5.."}[5m]))"#,
        r#"histogram_quantile(0.95, sum(rate(http_server_request_duration_bucket[5m])) by (le))"#,
        r#"process_memory_bytes{type="heap_used"}"#,
        r#"sum(rate(tool_errors_total[5m]))"#,
        r#"sum by (route) (rate(http_server_requests_total[5m]))"#,
        r#"sum(rate(tool_executions_total{tool_name="change.delete"}[5m]))"#,
        r#"{__name__="up"}"#,
        r#"humanizePercentage(up)"#,
    ] {
        assert!(!check_promql(bad, &contract, &recorded).is_empty(), "accepted: {bad}");
    }
    assert!(check_promql(r#"sum by (http_route) (rate(http_server_requests_total{job="task-mcp", http_response_status_code=~"5.."}[5m]))"#, &contract, &recorded).is_empty());
}

#[test]
fn dashboard_queries_parse_as_promql() {
    let promtool = tool("promtool");
    let dir = tempfile::tempdir().unwrap();
    let mut yaml = String::from("groups:\n  - name: dashboard-queries\n    rules:\n");
    let queries = dashboard_queries();
    for (n, q) in queries.iter().enumerate() {
        yaml.push_str(&format!(
            "      - record: dashboard:query{n}\n        expr: {}\n",
            serde_json::to_string(&grafana_to_promql(&q.expr)).unwrap()
        ));
    }
    let file = dir.path().join("dashboards.yml");
    std::fs::write(&file, yaml).unwrap();
    let out = run(Command::new(&promtool).arg("check").arg("rules").arg(&file));
    assert_ok("promtool check rules on every dashboard query", &out);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{} rules found", queries.len())), "{}", text(&out));
}

#[test]
fn metric_names_are_what_the_collector_makes_of_their_instruments() {
    // Our own copy of the prometheus exporter's naming rules (otlptranslator with suffixes).
    fn translate(name: &str, unit: &str, kind: &str) -> String {
        let mut tokens: Vec<String> = name
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == ':'))
            .filter(|t| !t.is_empty())
            .map(String::from)
            .collect();
        let main = if unit.is_empty() || unit.contains('{') {
            String::new()
        } else {
            match unit {
                "s" => "seconds",
                "ms" => "milliseconds",
                "By" => "bytes",
                "%" => "percent",
                "1" => "",
                other => other,
            }
            .to_string()
        };
        if !main.is_empty() && !tokens.contains(&main) {
            tokens.push(main);
        }
        let base = kind.split('<').next().unwrap();
        if base == "Counter" || base == "ObservableCounter" {
            tokens.retain(|t| t != "total");
            tokens.push("total".into());
        }
        if unit == "1" && (base == "Gauge" || base == "ObservableGauge") {
            tokens.retain(|t| t != "ratio");
            tokens.push("ratio".into());
        }
        tokens.join("_")
    }
    let v: Value = serde_json::from_str(&read(&mon("metrics.json"))).unwrap();
    let series = v["series"].as_object().unwrap();
    let mut names = BTreeSet::new();
    for m in v["metrics"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap();
        names.insert(name.to_string());
        let kind = m["otel_kind"].as_str().unwrap();
        if kind.starts_with("Resource") || kind.starts_with("Scrape") {
            continue;
        }
        let got = translate(m["otel_instrument"].as_str().unwrap(), m["otel_unit"].as_str().unwrap(), kind);
        assert_eq!(got, name, "instrument {} [{}] {kind}", m["otel_instrument"], m["otel_unit"]);
        if m["type"] == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                assert!(series.contains_key(&format!("{name}{suffix}")), "{name}{suffix} missing");
            }
            if name.ends_with("_seconds") && !name.contains("connection") {
                let buckets: Vec<f64> = m["buckets"].as_array().unwrap().iter().map(|b| b.as_f64().unwrap()).collect();
                for t in [0.1, 0.2, 0.5, 2.0] {
                    assert!(buckets.contains(&t), "{name} lacks the SLO boundary {t}");
                }
            }
        }
    }
    for required in [
        "http_server_requests_total",
        "http_server_request_duration_seconds",
        "http_server_active_requests",
        "tool_executions_total",
        "tool_execution_duration_seconds",
        "tool_active_executions",
        "streaming_active_connections",
        "streaming_messages_total",
        "streaming_bytes_transferred_total",
        "process_cpu_usage_percent",
        "process_memory_bytes",
        "process_uptime_seconds",
        "health_check_status",
        "auth_attempts_total",
        "rate_limit_hits_total",
        "rpc_server_call_duration_seconds",
        "streaming_first_message_duration_seconds",
        "streaming_rejections_total",
        "streaming_max_connections",
        "listener_active_connections",
        "listener_max_connections",
        "listener_refused_connections_total",
        "process_memory_limit_bytes",
        "target_info",
    ] {
        assert!(names.contains(required), "METRICS.md lacks {required}");
    }
    let md = read(&mon("METRICS.md"));
    for n in &names {
        assert!(md.contains(&format!("`{n}`")), "METRICS.md does not list {n}");
    }
    // The connection series name the two capped listeners, and only those.
    for series in ["listener_active_connections", "listener_max_connections", "listener_refused_connections_total"] {
        assert_eq!(v["series"][series]["listener"], serde_json::json!(["grpc", "http"]), "{series}: listener values");
    }
    // Bounded labels: the tool names of the registry, the transports.
    let tools = &v["series"]["tool_executions_total"]["tool_name"];
    for t in ["change.open", "change.list", "change.show", "change.validate", "task.update", "change.archive"] {
        assert!(tools.as_array().unwrap().iter().any(|x| x == t), "tool_name lacks {t}");
    }
    let proto = read(&root().join("proto/taskmcp/v1/changes.proto"));
    for t in tools.as_array().unwrap().iter().map(|x| x.as_str().unwrap()).filter(|t| *t != "_OTHER") {
        assert!(proto.contains(&format!("name: \"{t}\"")), "tool {t} is not in the proto registry");
    }
}

// ---------------------------------------------------------------------------------------------
// Alertmanager

fn am_config() -> PathBuf {
    mon("alertmanager/alertmanager.yml")
}

#[test]
fn alertmanager_config_passes_amtool_check_config() {
    let out = run(Command::new(tool("amtool")).arg("check-config").arg(am_config()));
    assert_ok("amtool check-config", &out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("SUCCESS") && stdout.contains("6 inhibit rules"), "{}", text(&out));
    let config = read(&am_config());
    for forbidden in
        ["api_url:", "routing_key:", "service_key:", "auth_password:", "slack_api_url:", "smtp_auth_password:"]
    {
        assert!(
            !config.contains(forbidden),
            "inline secret field {forbidden} in alertmanager.yml; use the *_file form"
        );
    }
    for required in ["slack_api_url_file:", "routing_key_file:", "smtp_auth_password_file:"] {
        assert!(config.contains(required), "alertmanager.yml lacks {required}");
    }
}

fn routes_test(labels: &[String], expect: &str) -> Output {
    let mut cmd = Command::new(tool("amtool"));
    cmd.args(["config", "routes", "test"])
        .arg(format!("--config.file={}", am_config().display()))
        .arg(format!("--verify.receivers={expect}"))
        .args(labels);
    run(&mut cmd)
}

#[test]
fn routes_table_resolves_to_the_expected_receivers() {
    let table = read(&mon("alertmanager/tests/routes.txt"));
    let mut cases = 0;
    for line in table.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (labels, expect) = line.split_once("=>").unwrap_or_else(|| panic!("bad line {line}"));
        let labels: Vec<String> = labels.split_whitespace().map(String::from).collect();
        let out = routes_test(&labels, expect.trim());
        assert_ok(&format!("routes test {labels:?} => {}", expect.trim()), &out);
        cases += 1;
    }
    assert!(cases >= 12, "routes table too small");
    // The verification can fail: a wrong expectation is refused.
    let out = routes_test(&["severity=critical".into(), "team=sre".into()], "warning");
    assert!(!out.status.success(), "amtool accepted a wrong receiver list: {}", text(&out));
}

#[test]
fn every_alert_reaches_its_severity_receiver_and_its_team() {
    let mut seen = BTreeSet::new();
    for r in all_rules().into_iter().filter(|r| r.alert.is_some()) {
        let sev = r.labels["severity"].clone();
        let team = r.labels["team"].clone();
        if !seen.insert((sev.clone(), team.clone(), r.labels["slo"].clone())) {
            continue;
        }
        let mut labels = vec![format!("alertname={}", r.name())];
        labels.extend(r.labels.iter().map(|(k, v)| format!("{k}={v}")));
        let expect = format!("{sev},team-{team}");
        let out = routes_test(&labels, &expect);
        assert_ok(&format!("{} routes to {expect}", r.name()), &out);
    }
    assert!(seen.len() >= 8, "too few label combinations: {seen:?}");
}

fn template_names() -> Vec<String> {
    let mut names = Vec::new();
    for f in files_with_ext(&mon("alertmanager/templates"), "tmpl") {
        let t = read(&f);
        for part in t.split("{{ define \"").skip(1) {
            names.push(part.split('"').next().unwrap().to_string());
        }
    }
    names
}

/// Renders a template with a fixture; templates named `*.alert*` take one alert and are rendered
/// for each alert of the fixture.
fn render(name: &str, fixture: &str) -> Output {
    let call = format!("{{{{ template \"{name}\" . }}}}");
    let text = if name.contains(".alert") { format!("{{{{ range .Alerts }}}}{call}{{{{ end }}}}") } else { call };
    let mut cmd = Command::new(tool("amtool"));
    cmd.args(["template", "render"])
        .arg(format!("--template.glob={}/*.tmpl", mon("alertmanager/templates").display()))
        .arg(format!("--template.data={}", mon(&format!("alertmanager/tests/{fixture}.json")).display()))
        .arg(format!("--template.text={text}"));
    run(&mut cmd)
}

#[test]
fn every_template_renders_for_a_firing_and_a_resolved_notification() {
    let names = template_names();
    let config = read(&am_config());
    for used in config.split("template \"").skip(1).map(|s| s.split('"').next().unwrap()) {
        assert!(names.iter().any(|n| n == used), "alertmanager.yml uses undefined template {used}");
    }
    for name in &names {
        for fixture in ["firing", "resolved"] {
            let out = render(name, fixture);
            assert_ok(&format!("amtool template render {name} with {fixture}.json"), &out);
            let body = String::from_utf8_lossy(&out.stdout).to_string();
            assert!(!body.trim().is_empty(), "{name} rendered nothing for {fixture}");
            assert!(!body.contains("<no value>"), "{name} printed <no value> for {fixture}:\n{body}");
        }
    }
    let out = |name: &str, fixture: &str| String::from_utf8_lossy(&render(name, fixture).stdout).to_string();
    assert!(out("slack.title", "firing").starts_with("[FIRING:1] CRITICAL TaskMcpApiAvailabilityBurnRate1h"));
    assert!(out("slack.title", "resolved").starts_with("[RESOLVED] WARNING TaskMcpMemoryHigh"));
    assert_eq!(out("slack.color", "firing").trim(), "danger");
    assert_eq!(out("slack.color", "resolved").trim(), "good");
    let text = out("slack.text", "firing");
    assert!(
        text.contains("RUNBOOKS.md#high-error-rate") && text.contains("Firing since") && text.contains("Resolved at"),
        "{text}"
    );
    assert!(!out("slack.text", "resolved").contains("Firing since"), "a resolved alert is shown as firing");
    assert!(out("email.subject", "resolved").starts_with("[RESOLVED]"));
    assert!(
        out("email.html", "firing").contains("<a href=\"https://grafana.example.com/d/task-mcp-api/task-mcp-api\">")
    );
}

/// A running Alertmanager, stopped (by its pid) when dropped.
struct Alertmanager {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to alertmanager");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // HTTP/1.0: the answer has no chunked encoding and ends with the connection.
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// The project's configuration with the same routes and inhibitions, but receivers without
/// integrations: the test must never send anything off this machine.
fn offline_alertmanager_config(dir: &Path) -> PathBuf {
    let config = read(&am_config());
    let (head, receivers) = config.split_once("\nreceivers:\n").expect("a receivers: section");
    let names: Vec<&str> = receivers.lines().filter_map(|l| l.strip_prefix("  - name: ")).collect();
    assert!(names.len() >= 8, "receivers: {names:?}");
    let mut out = head.replace("templates:\n  - 'templates/*.tmpl'\n", "");
    out.push_str("\nreceivers:\n");
    for n in names {
        out.push_str(&format!("  - name: {n}\n"));
    }
    assert!(!out.contains("_configs:"), "integrations left in the offline config");
    let path = dir.join("alertmanager.yml");
    std::fs::write(&path, out).unwrap();
    path
}

fn start_alertmanager() -> Alertmanager {
    let bin = alertmanager_binary();
    let dir = tempfile::tempdir().unwrap();
    let config = offline_alertmanager_config(dir.path());
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.path={}", dir.path().display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start alertmanager");
    let am = Alertmanager { child, port, _dir: dir };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() && http(port, "GET", "/-/ready", "").0 == 200 {
            return am;
        }
        assert!(Instant::now() < deadline, "alertmanager did not become ready on port {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn inhibitions_silence_what_they_should_in_a_running_alertmanager() {
    let rules: HashMap<String, Rule> =
        all_rules().into_iter().filter_map(|r| r.alert.clone().map(|a| (a, r))).collect();
    // (alert, extra labels, expected suppressed)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, bool);
    let cases: Vec<Case> = vec![
        ("TaskMcpApiAvailabilityBurnRate1h", vec![], false),
        ("TaskMcpApiAvailabilityBurnRate1d", vec![], true),
        ("TaskMcpApiAvailabilityBurnRate3d", vec![], true),
        ("TaskMcpHttpLatencyP95BurnRate1d", vec![], false),
        ("TaskMcpAuthFailureRatioHigh", vec![("job", "task-mcp")], false),
        ("TaskMcpMemoryCritical", vec![("job", "task-mcp"), ("instance", "a")], false),
        ("TaskMcpMemoryHigh", vec![("job", "task-mcp"), ("instance", "a")], true),
        ("TaskMcpMemoryHigh", vec![("job", "task-mcp"), ("instance", "b")], false),
        ("TaskMcpCpuHigh", vec![("job", "task-mcp"), ("instance", "a")], false),
        ("OtelCollectorDown", vec![("job", "otel-collector"), ("instance", "c:8889")], false),
        ("TaskMcpTelemetryAbsent", vec![("job", "task-mcp")], true),
        ("TaskMcpServiceDown", vec![("job", "task-mcp"), ("instance", "d")], false),
        ("TaskMcpNotReady", vec![("job", "task-mcp"), ("instance", "d"), ("check", "workspace")], true),
        // Another replica's readiness is its own: one instance down does not silence it.
        ("TaskMcpNotReady", vec![("job", "task-mcp"), ("instance", "e"), ("check", "workspace")], false),
        // Refusals on a listener silence "near the cap" on that listener only.
        ("TaskMcpConnectionsRefused", vec![("job", "task-mcp"), ("instance", "f"), ("listener", "http")], false),
        ("TaskMcpConnectionCapacityHigh", vec![("job", "task-mcp"), ("instance", "f"), ("listener", "http")], true),
        ("TaskMcpConnectionCapacityHigh", vec![("job", "task-mcp"), ("instance", "f"), ("listener", "grpc")], false),
        // A full disk silences nothing (not even a warning of the same instance) and nothing
        // silences it, a service down elsewhere included.
        ("TaskMcpWorkspaceFull", vec![("job", "task-mcp"), ("instance", "g"), ("check", "workspace_space")], false),
        ("TaskMcpNotReady", vec![("job", "task-mcp"), ("instance", "g"), ("check", "upstream")], false),
        ("TaskMcpWorkspaceFull", vec![("job", "task-mcp"), ("instance", "d"), ("check", "workspace_space")], false),
    ];
    let mut alerts = Vec::new();
    for (name, extra, _) in &cases {
        let r = rules.get(*name).unwrap_or_else(|| panic!("no alert {name}"));
        let mut labels: BTreeMap<String, String> = r.labels.clone();
        labels.insert("alertname".into(), (*name).into());
        for (k, v) in extra {
            labels.insert((*k).into(), (*v).into());
        }
        alerts.push(serde_json::json!({ "labels": labels, "annotations": r.annotations }));
    }
    let am = start_alertmanager();
    let (status, body) = http(am.port, "POST", "/api/v2/alerts", &Value::Array(alerts).to_string());
    assert_eq!(status, 200, "POST /api/v2/alerts: {body}");
    let key = |labels: &Value| {
        let label = |name: &str| labels[name].as_str().unwrap_or("").to_string();
        format!("{} {} {}", label("alertname"), label("instance"), label("listener"))
    };
    let want: BTreeMap<String, bool> = cases
        .iter()
        .map(|(n, extra, s)| {
            let label = |name: &str| extra.iter().find(|(k, _)| *k == name).map_or("", |(_, v)| v);
            (format!("{n} {} {}", label("instance"), label("listener")), *s)
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, body) = http(am.port, "GET", "/api/v2/alerts", "");
        let got: BTreeMap<String, bool> = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|a| (key(&a["labels"]), a["status"]["state"] == "suppressed"))
            .collect();
        if got == want {
            break;
        }
        assert!(Instant::now() < deadline, "inhibition states differ\nwant {want:#?}\ngot  {got:#?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

// ---------------------------------------------------------------------------------------------
// Dashboards

#[test]
fn dashboards_pass_the_structural_lint() {
    let expected = ["overview", "api", "tools", "streaming", "infrastructure", "security"];
    let all = dashboards();
    assert_eq!(all.len(), expected.len(), "dashboards: {:?}", all.iter().map(|(p, _)| p).collect::<Vec<_>>());
    let builtins = ["__rate_interval", "__interval", "__range", "__interval_ms", "__range_s"];
    let mut errors = Vec::new();
    for (path, d) in &all {
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        let mut err = |m: String| errors.push(format!("{stem}: {m}"));
        assert!(expected.contains(&stem.as_str()), "unexpected dashboard {stem}");
        if d["uid"] != format!("task-mcp-{stem}") {
            err(format!("uid {} (want task-mcp-{stem})", d["uid"]));
        }
        if d["title"].as_str().is_none_or(str::is_empty) {
            err("no title".into());
        }
        if d["schemaVersion"].as_u64().is_none_or(|v| v < 36) {
            err(format!("schemaVersion {}", d["schemaVersion"]));
        }
        if !d["id"].is_null() {
            err("id must be null for provisioning".into());
        }
        if ["1s", "5s", "10s"].contains(&d["refresh"].as_str().unwrap_or("")) {
            err(format!("refresh {} is too aggressive", d["refresh"]));
        }
        if d.to_string().contains("${DS_") {
            err("${DS_*} placeholder cannot be resolved by provisioning".into());
        }
        let vars = d["templating"]["list"].as_array().cloned().unwrap_or_default();
        let ds = vars.iter().find(|v| v["name"] == "datasource");
        if !ds.is_some_and(|v| v["type"] == "datasource" && v["query"] == "prometheus") {
            err("no datasource template variable of type prometheus".into());
        }
        let declared: BTreeSet<String> = vars.iter().map(|v| v["name"].as_str().unwrap().to_string()).collect();
        let mut used: BTreeSet<String> = BTreeSet::new();
        let refs = |s: &str, used: &mut BTreeSet<String>| -> Vec<String> {
            let mut unknown = Vec::new();
            let mut rest = s;
            while let Some(pos) = rest.find('$') {
                rest = &rest[pos + 1..];
                let name: String = rest
                    .trim_start_matches('{')
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if builtins.contains(&name.as_str()) {
                    continue;
                }
                if declared.contains(&name) {
                    used.insert(name);
                } else {
                    unknown.push(name);
                }
            }
            unknown
        };
        for v in &vars {
            if v["type"] == "query" && v["datasource"]["uid"] != "${datasource}" {
                err(format!("variable {} does not use the datasource variable", v["name"]));
            }
            for u in refs(v["query"].as_str().unwrap_or(""), &mut BTreeSet::new()) {
                err(format!("variable {} refers to unknown ${u}", v["name"]));
            }
        }
        let mut ids = BTreeSet::new();
        let mut rects: Vec<(i64, i64, i64, i64, String)> = Vec::new();
        for p in d["panels"].as_array().unwrap() {
            let title = p["title"].as_str().unwrap_or("").to_string();
            match p["id"].as_u64() {
                Some(id) if ids.insert(id) => {}
                _ => err(format!("panel {title:?}: id missing or duplicate")),
            }
            if p["type"].as_str().is_none_or(str::is_empty) || title.is_empty() {
                err(format!("panel {title:?}: type and title required"));
            }
            let g = &p["gridPos"];
            let (Some(h), Some(w), Some(x), Some(y)) =
                (g["h"].as_i64(), g["w"].as_i64(), g["x"].as_i64(), g["y"].as_i64())
            else {
                err(format!("panel {title:?}: gridPos h/w/x/y required"));
                continue;
            };
            if h <= 0 || w <= 0 || x < 0 || y < 0 || x + w > 24 {
                err(format!("panel {title:?}: gridPos outside the 24-column grid"));
            }
            for (rx, ry, rw, rh, other) in &rects {
                if x < rx + rw && *rx < x + w && y < ry + rh && *ry < y + h {
                    err(format!("panel {title:?} overlaps {other:?}"));
                }
            }
            rects.push((x, y, w, h, title.clone()));
            if p["type"] == "row" {
                continue;
            }
            if p["datasource"]["uid"] != "${datasource}" {
                err(format!("panel {title:?}: datasource is not ${{datasource}}"));
            }
            let targets = p["targets"].as_array().cloned().unwrap_or_default();
            if targets.is_empty() {
                err(format!("panel {title:?}: no targets"));
            }
            let mut refids = BTreeSet::new();
            for t in targets {
                if !t["refId"].as_str().is_some_and(|r| refids.insert(r.to_string())) {
                    err(format!("panel {title:?}: refId missing or duplicate"));
                }
                if t["datasource"]["uid"] != "${datasource}" {
                    err(format!("panel {title:?}: target datasource is not ${{datasource}}"));
                }
                let expr = t["expr"].as_str().unwrap_or("");
                if expr.trim().is_empty() {
                    err(format!("panel {title:?}: empty expr"));
                }
                for u in refs(expr, &mut used) {
                    err(format!("panel {title:?}: unknown variable ${u}"));
                }
            }
        }
        for v in declared.iter().filter(|v| *v != "datasource") {
            if !used.contains(v) {
                err(format!("variable ${v} is declared but no panel query uses it"));
            }
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Terraform (no terraform binary here: formatting and structure are checked by hand-written rules)

/// Blank out string contents and comments so brackets and `=` can be counted.
fn hcl_code(line: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut in_str = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if in_str {
            match c {
                '\\' => {
                    chars.next();
                    out.push_str("  ");
                }
                '"' => {
                    in_str = false;
                    out.push('"');
                }
                _ => out.push(' '),
            }
        } else {
            match c {
                '#' => break,
                '/' if chars.peek() == Some(&'/') => break,
                '"' => {
                    in_str = true;
                    out.push('"');
                }
                _ => out.push(c),
            }
        }
    }
    if in_str { Err("unterminated string".into()) } else { Ok(out) }
}

/// What `terraform fmt` would change, as far as these rules know: hclwrite's indentation (one
/// level per line that opens brackets), `=` aligned over runs of single-line attributes, no tabs,
/// no trailing spaces, no double blank lines, one final newline, balanced brackets.
fn hcl_format_problems(path: &Path) -> Vec<String> {
    let src = read(path);
    let name = path.file_name().unwrap().to_string_lossy().to_string();
    let mut errs = Vec::new();
    if !src.ends_with('\n') || src.ends_with("\n\n") {
        errs.push(format!("{name}: must end with exactly one newline"));
    }
    if src.contains('\t') {
        errs.push(format!("{name}: tab characters"));
    }
    if src.contains("\n\n\n") {
        errs.push(format!("{name}: double blank line"));
    }
    let mut stack: Vec<usize> = Vec::new();
    let mut run: Vec<(usize, usize, usize)> = Vec::new(); // (line, key length, column of '=')
    let flush = |run: &mut Vec<(usize, usize, usize)>, errs: &mut Vec<String>| {
        if let Some(want) = run.iter().map(|(_, k, _)| k + 1).max() {
            for (n, _, col) in run.iter() {
                if *col != want {
                    errs.push(format!("{name}:{n}: '=' at column {col}, terraform fmt puts it at {want}"));
                }
            }
        }
        run.clear();
    };
    let consume = |stack: &mut Vec<usize>, mut k: usize| -> bool {
        while k > 0 {
            let Some(top) = stack.last_mut() else { return false };
            let take = k.min(*top);
            *top -= take;
            k -= take;
            if *top == 0 {
                stack.pop();
            }
        }
        true
    };
    for (idx, raw) in src.lines().enumerate() {
        let n = idx + 1;
        if raw.trim_end() != raw {
            errs.push(format!("{name}:{n}: trailing whitespace"));
        }
        let code = match hcl_code(raw) {
            Ok(c) => c,
            Err(e) => {
                errs.push(format!("{name}:{n}: {e}"));
                continue;
            }
        };
        let trimmed = code.trim();
        let indent = indent_of(raw);
        if raw.trim().is_empty() {
            flush(&mut run, &mut errs);
            continue;
        }
        let lead = trimmed.chars().take_while(|c| "}])".contains(*c)).count();
        if !consume(&mut stack, lead) {
            errs.push(format!("{name}:{n}: unbalanced closing bracket"));
        }
        if indent != 2 * stack.len() {
            errs.push(format!("{name}:{n}: indented {indent}, terraform fmt indents {}", 2 * stack.len()));
        }
        if trimmed.is_empty() {
            // a comment line
            flush(&mut run, &mut errs);
            continue;
        }
        let opens = code.chars().filter(|c| "{[(".contains(*c)).count();
        let closes = code.chars().filter(|c| "}])".contains(*c)).count() - lead;
        // An attribute: key (identifier, quoted or parenthesised) then '=' that is not '==' or '=>'.
        let key_len = {
            let t = code.trim_start();
            let end = if let Some(rest) = t.strip_prefix('"') {
                rest.find('"').map(|e| e + 2)
            } else if t.starts_with('(') {
                t.find(')').map(|e| e + 1)
            } else {
                Some(t.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-')).unwrap_or(t.len()))
            };
            end.filter(|&e| e > 0).and_then(|e| {
                let after = &t[e..];
                let spaces = after.len() - after.trim_start().len();
                let rest = after.trim_start();
                (rest.starts_with('=') && !rest.starts_with("==") && !rest.starts_with("=>")).then_some((e, e + spaces))
            })
        };
        match key_len {
            Some((k, col)) if opens == closes + lead => run.push((n, k, col)),
            Some((k, col)) => {
                flush(&mut run, &mut errs);
                if col != k + 1 {
                    errs.push(format!("{name}:{n}: an attribute with a multi-line value takes one space before '='"));
                }
            }
            None => flush(&mut run, &mut errs),
        }
        let net = opens as isize - closes as isize;
        if net > 0 {
            stack.push(net as usize);
        } else if net < 0 && !consume(&mut stack, (-net) as usize) {
            errs.push(format!("{name}:{n}: unbalanced closing bracket"));
        }
    }
    flush(&mut run, &mut errs);
    if !stack.is_empty() {
        errs.push(format!("{name}: unclosed brackets at end of file"));
    }
    errs
}

#[test]
fn terraform_is_formatted_and_declares_the_stack() {
    let dir = mon("terraform");
    let mut errors = Vec::new();
    for f in ["main.tf", "variables.tf", "outputs.tf", "terraform.tfvars.example"] {
        assert!(dir.join(f).is_file(), "terraform/{f} missing");
        errors.extend(hcl_format_problems(&dir.join(f)));
    }
    let main = read(&dir.join("main.tf"));
    let variables = read(&dir.join("variables.tf"));
    let outputs = read(&dir.join("outputs.tf"));
    let tfvars = read(&dir.join("terraform.tfvars.example"));
    for needle in [
        "resource \"kubernetes_namespace\" \"monitoring\"",
        "resource \"helm_release\" \"kube_prometheus_stack\"",
        "chart      = \"kube-prometheus-stack\"",
        "resource \"helm_release\" \"otel_collector\"",
        "chart      = \"opentelemetry-collector\"",
        "additionalPrometheusRulesMap",
        "resource \"kubernetes_config_map\" \"dashboards\"",
        "grafana_dashboard = \"1\"",
        "resource \"kubernetes_secret\" \"alertmanager\"",
        "templateFiles",
        "honorLabels = true",
        "retention ",
    ] {
        if !main.contains(needle) {
            errors.push(format!("main.tf lacks {needle:?}"));
        }
    }
    for needle in [
        "default     = \"30d\"",
        "default     = \"50Gi\"",
        "cpu    = \"2\"\n    memory = \"4Gi\"",
        "cpu    = \"1\"\n    memory = \"2Gi\"",
        "cpu    = \"500m\"\n    memory = \"1Gi\"",
    ] {
        if !variables.contains(needle) {
            errors.push(format!("variables.tf lacks {needle:?}"));
        }
    }
    // Variables: every use declared, every declaration used, every one without default in the example.
    let declared: BTreeSet<String> = variables
        .lines()
        .filter_map(|l| l.strip_prefix("variable \"").and_then(|r| r.split('"').next()).map(String::from))
        .collect();
    let all_tf = format!("{main}\n{outputs}");
    let used: BTreeSet<String> = all_tf
        .split("var.")
        .skip(1)
        .map(|s| s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect())
        .collect();
    for u in used.difference(&declared) {
        errors.push(format!("var.{u} is used but not declared"));
    }
    for d in declared.difference(&used) {
        errors.push(format!("variable {d} is declared but never used"));
    }
    for block in variables.split("variable \"").skip(1) {
        let name = block.split('"').next().unwrap();
        let body = block.split("\n}\n").next().unwrap();
        if !body.contains("\n  default ") && !tfvars.contains(&format!("\n{name} ")) {
            errors.push(format!("required variable {name} missing from terraform.tfvars.example"));
        }
        if !body.contains("description = ") {
            errors.push(format!("variable {name} has no description"));
        }
    }
    for name in tfvars.lines().filter(|l| !l.starts_with([' ', '#', '}'])).filter_map(|l| l.split_whitespace().next()) {
        if !declared.contains(name) {
            errors.push(format!("terraform.tfvars.example sets undeclared variable {name}"));
        }
    }
    for output in [
        "namespace",
        "otlp_grpc_endpoint",
        "prometheus_url",
        "alertmanager_url",
        "grafana_url",
        "prometheus_rules",
        "dashboard_config_maps",
    ] {
        if !outputs.contains(&format!("output \"{output}\" {{")) {
            errors.push(format!("outputs.tf lacks output {output}"));
        }
    }
    // Resources referenced from outputs exist; files read from monitoring/ exist.
    for reference in
        ["kubernetes_namespace.monitoring", "helm_release.otel_collector", "kubernetes_config_map.dashboards"]
    {
        if outputs.contains(reference)
            && !main.contains(&format!(
                "resource \"{}\" \"{}\"",
                reference.split('.').next().unwrap(),
                reference.split('.').nth(1).unwrap()
            ))
        {
            errors.push(format!("outputs.tf refers to missing {reference}"));
        }
    }
    for rel in main.split("${local.monitoring_dir}/").skip(1).map(|s| s.split('"').next().unwrap()) {
        let path = rel.split("${").next().unwrap().trim_end_matches('/');
        if !path.starts_with("..") && !mon(path).exists() {
            errors.push(format!("main.tf reads monitoring/{path}, which does not exist"));
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[test]
fn the_terraform_format_check_can_fail() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.tf");
    std::fs::write(&bad, "resource \"x\" \"y\" {\n  name = \"a\"\n  namespace = \"b\"\n   labels = {}\n}\n").unwrap();
    let problems = hcl_format_problems(&bad);
    assert!(problems.iter().any(|p| p.contains("'='")), "{problems:?}");
    assert!(problems.iter().any(|p| p.contains("indented 3")), "{problems:?}");
}

/// Every Terraform file parses as HCL2 with a real parser, and a broken copy does not.
#[test]
fn terraform_parses_as_hcl() {
    let dir = mon("terraform");
    for f in ["main.tf", "variables.tf", "outputs.tf", "terraform.tfvars.example"] {
        let text = read(&dir.join(f));
        let body = hcl::parse(&text).unwrap_or_else(|e| panic!("terraform/{f} does not parse as HCL: {e}"));
        assert!(body.iter().count() > 0, "terraform/{f} is empty");
    }
    let broken = read(&dir.join("main.tf")).replacen('}', "", 1);
    assert!(hcl::parse(&broken).is_err(), "a main.tf with an unbalanced brace must not parse");
}
