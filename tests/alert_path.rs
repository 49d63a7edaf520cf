//! The live alert path, end to end, on the local stack (`scripts/stack-up`, no Docker): the server,
//! a real Prometheus with the project's rule files, a real Alertmanager with the project's routes
//! and inhibitions. Every receiver of the stack's Alertmanager delivers to a webhook inside this
//! test (`STACK_ALERTMANAGER_WEBHOOK`; nothing leaves the machine). Once Prometheus sees the
//! server up, the test stops the server process alone (SIGTERM to the PID stack-up recorded) and
//! waits for Alertmanager to deliver the service-down alert, firing, with the severity and team
//! of its rule, through the severity receiver and the team receiver the routing tree names,
//! within the bound below. Then `scripts/stack-down`, and nothing of the stack may be left.
//!
//! The bound is derived, not guessed: the rule's `for:` (read from service-alerts.yml), the
//! Alertmanager `group_wait` of each route the alert takes (read from alertmanager.yml), three
//! scrape/evaluation intervals (the failed scrape, the evaluation that makes the alert pending and
//! the one that makes it fire; the stack runs with `STACK_SCRAPE_INTERVAL=1s` here, the product
//! default stays 15s), and a fixed slack for a loaded CI machine. With today's files:
//! 60s + 30s (the team route; the critical route waits 10s) + 3 x 1s + 20s = 113s.
mod monitoring_support;
mod stack_support;

use std::{
    collections::BTreeMap,
    net::TcpListener,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use monitoring_support::{PromApi, Rule, all_rules, mon, prom_duration, read};
use serde_json::Value;
use stack_support::{Stack, gone, text};

/// The alert the rule files raise when Prometheus cannot scrape the server.
const SERVICE_DOWN_EXPR: &str = "up{job=\"task-mcp\"} == 0";
/// Scrape and rule evaluation interval of the stack in this test.
const INTERVAL: Duration = Duration::from_secs(1);
/// What a loaded 2-core CI runner may add to the derived bound (process scheduling, HTTP).
const SLACK: Duration = Duration::from_secs(20);
/// Failure bounds of the set-up steps (never speed checks).
const UP_BOUND: Duration = Duration::from_secs(60);
const STOP_BOUND: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// The webhook receiver: records every payload Alertmanager POSTs.

#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<Value>>>);

impl Received {
    fn all(&self) -> Vec<Value> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Serves `POST /alertmanager` on 127.0.0.1 (a free port) on the test's runtime.
async fn start_webhook() -> (String, Received) {
    let received = Received::default();
    let store = received.clone();
    let app = axum::Router::new().route(
        "/alertmanager",
        axum::routing::post(move |body: axum::body::Bytes| {
            let store = store.clone();
            async move {
                let payload: Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
                    Value::String(format!("unparsable payload ({e}): {}", String::from_utf8_lossy(&body)))
                });
                store.0.lock().unwrap_or_else(|e| e.into_inner()).push(payload);
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind webhook");
    let url = format!("http://{}/alertmanager", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("webhook server");
    });
    (url, received)
}

/// Firing notifications of `alertname` delivered to `receiver`: (group labels, alert labels).
fn firing(received: &[Value], receiver: &str, alertname: &str) -> Vec<BTreeMap<String, String>> {
    received
        .iter()
        .filter(|p| p["receiver"] == receiver && p["status"] == "firing")
        .flat_map(|p| p["alerts"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["status"] == "firing" && a["labels"]["alertname"] == alertname)
        .map(|a| {
            a["labels"]
                .as_object()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
                .unwrap_or_default()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The stack

fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

// ---------------------------------------------------------------------------------------------
// The bound

/// `group_wait` of the route that sends to `receiver` (its own, else the root's).
fn group_wait_of(receiver: &str) -> Duration {
    let config = read(&mon("alertmanager/alertmanager.yml"));
    let route = config.split("\ninhibit_rules:").next().expect("route section");
    let root_wait = route
        .lines()
        .find_map(|l| l.strip_prefix("  group_wait:"))
        .map(prom_duration)
        .expect("the root route's group_wait");
    // Child routes: `    - matchers: ...` blocks with `      receiver:` and maybe `      group_wait:`.
    for block in route.split("\n    - ").skip(1) {
        let field = |name: &str| {
            block.lines().find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().trim_matches('\'').to_string()))
        };
        if field("receiver:").as_deref() == Some(receiver) {
            return field("group_wait:").map(|v| prom_duration(&v)).unwrap_or(root_wait);
        }
    }
    panic!("alertmanager.yml has no route to the receiver {receiver}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_server_fires_service_down_and_alertmanager_delivers_it_to_the_webhook() {
    // The service-down alert, as the rule file defines it.
    let rule: Rule = all_rules()
        .into_iter()
        .find(|r| r.alert.is_some() && r.expr == SERVICE_DOWN_EXPR)
        .unwrap_or_else(|| panic!("no alert rule with expr {SERVICE_DOWN_EXPR:?} in monitoring/prometheus/rules"));
    let alertname = rule.alert.clone().expect("alert");
    let severity = rule.labels.get("severity").cloned().expect("severity label");
    let team = rule.labels.get("team").cloned().expect("team label");
    let for_ = prom_duration(rule.for_.as_deref().expect("a for: duration"));
    // Alertmanager routes it to its severity receiver and to its team's (alertmanager.yml).
    let receivers = [severity.clone(), format!("team-{team}")];
    let slowest_route = receivers.iter().map(|r| group_wait_of(r)).max().expect("two receivers");
    let bound = for_ + slowest_route + INTERVAL * 3 + SLACK;
    eprintln!(
        "alert path: {alertname} (severity={severity}, team={team}, for {for_:?}); receivers {receivers:?}; \
         bound = for {for_:?} + group_wait {slowest_route:?} + 3 x {INTERVAL:?} + slack {SLACK:?} = {bound:?}"
    );

    let (webhook, received) = start_webhook().await;
    let scrape = format!("{}s", INTERVAL.as_secs());
    let stack = Stack::new(
        "task-mcp-alert-path-",
        &[
            ("STACK_SCRAPE_INTERVAL", &scrape),
            // up{job="task-mcp"} exists only when Prometheus scrapes the server directly.
            ("STACK_COLLECTOR", "off"),
            ("STACK_ALERTMANAGER_WEBHOOK", &webhook),
        ],
    );
    let up = stack.run_async("stack-up").await;
    assert!(up.status.success(), "stack-up failed\n{}\n{}", text(&up), stack.logs());
    assert!(String::from_utf8_lossy(&up.stdout).contains("mode: direct"), "{}", text(&up));

    // The stack's Alertmanager: the project's receivers, each with only the test's webhook.
    let am_config = read(&stack.path("alertmanager/alertmanager.yml"));
    let names: Vec<&str> = am_config.lines().filter_map(|l| l.strip_prefix("  - name: ")).collect();
    assert!(names.len() >= 8 && receivers.iter().all(|r| names.contains(&r.as_str())), "receivers: {names:?}");
    assert_eq!(am_config.matches(&format!("url: '{webhook}'")).count(), names.len(), "{am_config}");
    let other_integrations: Vec<&str> =
        am_config.lines().filter(|l| l.contains("_configs:") && l.trim() != "webhook_configs:").collect();
    assert!(other_integrations.is_empty(), "integrations left: {other_integrations:?}");

    // Prometheus scrapes the server, has the rules, and knows the Alertmanager.
    let prom = PromApi::new(stack.port("STACK_PROMETHEUS_PORT"));
    let deadline = Instant::now() + UP_BOUND;
    loop {
        let up = prom.query("up{job=\"task-mcp\"}").await.unwrap_or_default();
        let rules = prom.get("/api/v1/rules", &[("type", "alert")]).await.map(|v| v.to_string()).unwrap_or_default();
        let ams = prom.get("/api/v1/alertmanagers", &[]).await.unwrap_or_default();
        let am_known = ams["data"]["activeAlertmanagers"].as_array().is_some_and(|a| !a.is_empty());
        if up.iter().map(|(_, v)| *v).collect::<Vec<_>>() == [1.0] && rules.contains(&alertname) && am_known {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "within {UP_BOUND:?}: up {up:?}, rules loaded {}, alertmanager known {am_known}\n{}",
            rules.contains(&alertname),
            stack.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        receivers.iter().all(|r| firing(&received.all(), r, &alertname).is_empty()),
        "{alertname} was delivered while the server was up: {:?}",
        received.all()
    );

    // Stop the server alone: the PID stack-up recorded, still running the recorded command.
    let pids = stack.pids();
    let pid = pids["task-mcp"];
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline of the server");
    let recorded = read(&stack.path("pids/task-mcp.cmd"));
    assert_eq!(String::from_utf8_lossy(&cmdline).replace('\0', "\n"), recorded, "PID {pid} is not the stack's server");
    let signalled = Instant::now();
    // SAFETY: kill(2) on the PID of the stack's server, checked just above to run its command.
    let rc = unsafe { libc::kill(libc::pid_t::try_from(pid).expect("pid fits"), libc::SIGTERM) };
    assert_eq!(rc, 0, "kill {pid}: {}", std::io::Error::last_os_error());
    while !gone(pid) {
        assert!(signalled.elapsed() < STOP_BOUND, "the server (PID {pid}) still runs {STOP_BOUND:?} after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stopped = Instant::now();
    eprintln!("alert path: server (PID {pid}) exited {:?} after SIGTERM", stopped - signalled);
    for (name, other) in &pids {
        assert!(name == "task-mcp" || !gone(*other), "{name} (PID {other}) stopped with the server");
    }

    // Alertmanager delivers the firing alert through each receiver, within the bound. The bound
    // is kept on purpose: it is what the pipeline promises (the rule's `for:`, the routes'
    // `group_wait`, three evaluation intervals), not a speed check; only SLACK is for the
    // machine. An alert late by more than SLACK means a `for:` or `group_wait` longer than the
    // files say, or an inhibition or route holding it, which is what this test exists to see.
    let mut arrived: BTreeMap<String, Duration> = BTreeMap::new();
    loop {
        let all = received.all();
        for receiver in &receivers {
            if arrived.contains_key(receiver) {
                continue;
            }
            if let Some(labels) = firing(&all, receiver, &alertname).first() {
                assert_eq!(labels.get("severity"), Some(&severity), "{receiver}: {labels:?}");
                assert_eq!(labels.get("team"), Some(&team), "{receiver}: {labels:?}");
                assert_eq!(labels.get("job").map(String::as_str), Some("task-mcp"), "{receiver}: {labels:?}");
                assert_eq!(
                    labels.get("instance"),
                    Some(&format!("127.0.0.1:{}", stack.port("STACK_METRICS_PORT"))),
                    "{receiver}: {labels:?}"
                );
                arrived.insert(receiver.clone(), stopped.elapsed());
            }
        }
        if arrived.len() == receivers.len() {
            break;
        }
        if stopped.elapsed() > bound {
            let alerts = prom.query("ALERTS").await;
            panic!(
                "{alertname} not delivered to {:?} within {bound:?} of the server stopping (arrived: {arrived:?})\n\
                 Prometheus ALERTS: {alerts:?}\nwebhook payloads: {:#?}\n{}",
                receivers.iter().filter(|r| !arrived.contains_key(*r)).collect::<Vec<_>>(),
                all,
                stack.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("alert path: delivered after {arrived:?} (bound {bound:?})");
    // The payload is Alertmanager's webhook format.
    let payload = received.all().into_iter().find(|p| p["status"] == "firing").expect("a firing payload");
    assert_eq!(payload["version"], "4", "{payload}");
    assert!(payload["groupLabels"]["alertname"] == alertname.as_str(), "grouped by alertname: {payload}");

    // stack-down stops the rest; nothing of the stack is left running or listening.
    let down = stack.run_async("stack-down").await;
    assert!(down.status.success(), "stack-down failed\n{}", text(&down));
    for (name, pid) in &pids {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !gone(*pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(gone(*pid), "{name} (PID {pid}) still runs after stack-down");
    }
    assert!(stack.pids().is_empty(), "PID files left: {:?}", stack.pids());
    for key in
        ["STACK_HTTP_PORT", "STACK_GRPC_PORT", "STACK_METRICS_PORT", "STACK_PROMETHEUS_PORT", "STACK_ALERTMANAGER_PORT"]
    {
        assert!(port_free(stack.port(key)), "{key} {} is still in use after stack-down", stack.port(key));
    }
}
