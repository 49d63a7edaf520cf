//! `scripts/stack-up` and `scripts/stack-down`, run for real (with their own `STACK_DIR` and
//! free ports, so a developer's running stack is not touched):
//!
//! - every process comes up listening on loopback only: Prometheus and Alertmanager answer
//!   `/-/ready`, the server `/health/ready`;
//! - stack-up runs in the mode PATH calls for (direct, unless `otelcol-contrib` is on PATH);
//! - Prometheus scrapes the server: `up{job="task-mcp"} == 1` (or, when a full `otelcol-contrib`
//!   is on PATH, the Collector's `up{job="otel-collector"} == 1` and the server's
//!   `process_uptime_seconds{job="task-mcp"}` through it);
//! - a second stack-up starts nothing new;
//! - after stack-down none of the recorded PIDs is left running.
//!
//! Needs the Debian packages `prometheus` and `prometheus-alertmanager` (scripts/install-test-tools
//! installs them; stack-up would too).
mod stack_support;

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    time::{Duration, Instant},
};

use serde_json::Value;
use stack_support::{Stack, gone, text};

/// A tiny blocking HTTP GET (HTTP/1.0, so the body ends with the connection): status and body.
fn get(url: &str) -> Option<(u16, String)> {
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let mut s = TcpStream::connect(host).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\nAccept: */*\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let status = resp.split_whitespace().nth(1)?.parse().ok()?;
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

fn assert_ready(what: &str, url: &str) {
    match get(url) {
        Some((200, _)) => {}
        other => panic!("{what} at {url}: {other:?}"),
    }
}

/// The value of a PromQL instant query's single sample, if there is one.
fn query(port: u16, promql: &str) -> Option<f64> {
    let encoded: String = promql
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let (_, body) = get(&format!("http://127.0.0.1:{port}/api/v1/query?query={encoded}"))?;
    let v: Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"].as_array()?.first()?["value"][1].as_str()?.parse().ok()
}

/// Listening TCP sockets of `pid` as (address hex, port): from /proc/PID/fd and /proc/net/tcp{,6}.
fn listening_sockets(pid: u32) -> Vec<(String, u16)> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|l| l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let mut found = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // local_address is cols[1] (ADDR:PORT in hex), st is cols[3] (0A = LISTEN), inode cols[9].
            if cols.len() > 9
                && cols[3] == "0A"
                && inodes.iter().any(|i| i == cols[9])
                && let Some((addr, port)) = cols[1].split_once(':')
            {
                found.push((addr.to_string(), u16::from_str_radix(port, 16).unwrap_or(0)));
            }
        }
    }
    found
}

/// 127.0.0.1 in /proc/net/tcp (little-endian hex) or as an IPv4-mapped/loopback IPv6 address.
fn is_loopback_hex(addr: &str) -> bool {
    matches!(addr, "0100007F" | "00000000000000000000000001000000" | "0000000000000000FFFF00000100007F")
}

/// Whether `otelcol-contrib` is on PATH, as `command -v` in stack-up finds it.
fn otelcol_on_path() -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| {
            std::fs::metadata(d.join("otelcol-contrib"))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

fn wait_until(what: &str, bound: Duration, stack: &Stack, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + bound;
    while !pred() {
        assert!(Instant::now() < deadline, "{what}: not within {bound:?}\n{}", stack.logs());
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn stack_up_starts_everything_on_loopback_and_stack_down_stops_exactly_that() {
    let stack = Stack::new("task-mcp-stack-", &[]);
    let up = stack.run("stack-up");
    assert!(up.status.success(), "stack-up failed\n{}\n{}", text(&up), stack.logs());
    let stdout = String::from_utf8_lossy(&up.stdout).to_string();
    // stack-up runs a Collector exactly when `otelcol-contrib` is on PATH (STACK_COLLECTOR is
    // not set here); no registry reachable on the test machines ships one, so there it is
    // direct mode. The run must be in the mode this PATH calls for, not merely in either.
    let collector = otelcol_on_path();
    let (want, other) =
        if collector { ("mode: collector", "mode: direct") } else { ("mode: direct", "mode: collector") };
    assert!(stdout.contains(want) && !stdout.contains(other), "expected {want:?} on this machine: {stdout}");
    assert!(stdout.contains(&format!("http://127.0.0.1:{}", stack.port("STACK_PROMETHEUS_PORT"))), "URLs: {stdout}");

    let pids = stack.pids();
    let mut expected: Vec<&str> = vec!["alertmanager", "task-mcp", "prometheus"];
    if collector {
        expected.push("otel-collector");
    }
    for name in &expected {
        assert!(pids.contains_key(*name), "no PID recorded for {name}: {pids:?}");
    }

    assert_ready("Prometheus", &format!("http://127.0.0.1:{}/-/ready", stack.port("STACK_PROMETHEUS_PORT")));
    assert_ready("Alertmanager", &format!("http://127.0.0.1:{}/-/ready", stack.port("STACK_ALERTMANAGER_PORT")));
    assert_ready("task-mcp", &format!("http://127.0.0.1:{}/health/ready", stack.port("STACK_HTTP_PORT")));

    for (name, pid) in &pids {
        let sockets = listening_sockets(*pid);
        assert!(!sockets.is_empty(), "{name} (PID {pid}) listens nowhere");
        for (addr, port) in sockets {
            assert!(is_loopback_hex(&addr), "{name} (PID {pid}) listens on {addr}:{port}, not loopback");
        }
    }

    let prometheus = stack.port("STACK_PROMETHEUS_PORT");
    if collector {
        wait_until("up{job=\"otel-collector\"} == 1", Duration::from_secs(60), &stack, || {
            query(prometheus, "up{job=\"otel-collector\"}") == Some(1.0)
        });
        wait_until(
            "process_uptime_seconds{job=\"task-mcp\"} through the Collector",
            Duration::from_secs(90),
            &stack,
            || query(prometheus, "process_uptime_seconds{job=\"task-mcp\"}").is_some(),
        );
    } else {
        wait_until("up{job=\"task-mcp\"} == 1", Duration::from_secs(60), &stack, || {
            query(prometheus, "up{job=\"task-mcp\"}") == Some(1.0)
        });
    }
    // The project's rules are loaded.
    let (_, rules) = get(&format!("http://127.0.0.1:{prometheus}/api/v1/rules")).expect("rules API");
    assert!(rules.contains("TaskMcpServiceDown"), "the project's rules are not loaded");

    // Idempotent: a second run starts nothing.
    let again = stack.run("stack-up");
    assert!(again.status.success(), "second stack-up\n{}", text(&again));
    assert_eq!(stack.pids(), pids, "a second stack-up must not start new processes");
    assert!(String::from_utf8_lossy(&again.stderr).contains("already running"), "{}", text(&again));

    let down = stack.run("stack-down");
    assert!(down.status.success(), "stack-down failed\n{}", text(&down));
    for (name, pid) in &pids {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !gone(*pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(gone(*pid), "{name} (PID {pid}) still runs after stack-down");
    }
    assert!(stack.pids().is_empty(), "PID files left: {:?}", stack.pids());
}

#[test]
fn stack_down_leaves_a_reused_pid_alone() {
    let stack = Stack::new("task-mcp-stack-", &[]);
    // A PID file naming a live process that stack-up did not start (this test process).
    let pids = stack.path("pids");
    std::fs::create_dir_all(&pids).unwrap();
    std::fs::write(pids.join("prometheus.pid"), std::process::id().to_string()).unwrap();
    std::fs::write(pids.join("prometheus.cmd"), "/usr/bin/prometheus\n--config.file=/nowhere\n").unwrap();
    let down = stack.run("stack-down");
    assert!(down.status.success(), "{}", text(&down));
    assert!(String::from_utf8_lossy(&down.stderr).contains("leaving it alone"), "{}", text(&down));
    // Still here to assert it, and the stale file is gone.
    assert!(!Path::new(&pids.join("prometheus.pid")).exists());
}
