//! The raw results file and the printed tables (Markdown, for BENCHMARKS.md).
use std::{collections::BTreeMap, fmt::Write as _, time::SystemTime};

use serde::Serialize;
use serde_json::Value;

use crate::{
    profile::ProfileResult,
    sse::{FirstEventResult, IdleConnectionResult, MemoryResult},
    telemetry::TelemetryNote,
    throughput::{RunResult, SCENARIOS},
};

#[derive(Debug, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub mem_total: String,
    pub rustc: String,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub scenario: &'static str,
    pub what: &'static str,
    pub runs: usize,
    pub calls_per_sec_median: f64,
    pub calls_per_sec_min: f64,
    pub calls_per_sec_max: f64,
    /// (max - min) / median, percent.
    pub spread_pct: f64,
    pub p50_us_median: f64,
    pub p99_us_median: f64,
    pub p999_us_median: f64,
    pub server_cores_median: f64,
    pub client_cores_median: f64,
    pub server_cpu_us_per_call_median: f64,
    pub response_bytes: usize,
    pub errors: u64,
    pub foreign_cores_max: f64,
    /// Runs left out of the summary because other work disturbed them.
    pub disturbed_runs: usize,
}

#[derive(Debug, Serialize)]
pub struct Ratio {
    pub name: String,
    pub numerator: &'static str,
    pub denominator: &'static str,
    /// Median over rounds of (numerator calls/s / denominator calls/s) within the same round.
    pub median: f64,
    pub per_round: Vec<f64>,
}

#[derive(Debug, Serialize)]
pub struct Target {
    pub target: String,
    pub measured: String,
    pub met: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct Results {
    pub finished_unix: u64,
    pub config: Value,
    pub machine: Machine,
    pub git: String,
    pub throughput: Vec<RunResult>,
    pub summary: Vec<Summary>,
    pub ratios: Vec<Ratio>,
    pub memory: Vec<MemoryResult>,
    pub idle_connections: Vec<IdleConnectionResult>,
    pub first_event: Vec<FirstEventResult>,
    pub profile: Vec<ProfileResult>,
    /// What the scraper and the OTLP receivers saw in each telemetry run.
    pub telemetry: Vec<TelemetryNote>,
    pub targets: Vec<Target>,
    pub failures: Vec<String>,
}

fn command(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    Machine {
        nproc: cpuinfo.lines().filter(|l| l.starts_with("processor")).count(),
        cpu_model: cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            .unwrap_or_default(),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string(),
        mem_total: meminfo.lines().next().unwrap_or_default().to_string(),
        rustc: command("rustc", &["--version"]),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

impl Results {
    pub fn new(config: &Value, label: &str) -> Results {
        let git = if label.is_empty() { command("git", &["rev-parse", "--short=12", "HEAD"]) } else { label.into() };
        Results {
            finished_unix: 0,
            config: config.clone(),
            machine: machine(),
            git,
            throughput: Vec::new(),
            summary: Vec::new(),
            ratios: Vec::new(),
            memory: Vec::new(),
            idle_connections: Vec::new(),
            first_event: Vec::new(),
            profile: Vec::new(),
            telemetry: Vec::new(),
            targets: Vec::new(),
            failures: Vec::new(),
        }
    }

    /// The runs of a scenario that counts: the undisturbed ones, or all if none is.
    fn runs(&self, id: &str) -> Vec<&RunResult> {
        let all: Vec<&RunResult> = self.throughput.iter().filter(|r| r.scenario == id).collect();
        let clean: Vec<&RunResult> = all.iter().copied().filter(|r| !r.disturbed).collect();
        if clean.is_empty() { all } else { clean }
    }

    fn summary_of(&self, id: &str) -> Option<&Summary> {
        self.summary.iter().find(|s| s.scenario == id)
    }

    pub fn finish(&mut self) {
        self.finished_unix = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        for s in SCENARIOS.iter().chain(crate::telemetry::SCENARIOS.iter().map(|t| &t.scenario)) {
            let runs = self.runs(s.id);
            if runs.is_empty() {
                continue;
            }
            let cps: Vec<f64> = runs.iter().map(|r| r.calls_per_sec).collect();
            let med = median(cps.clone());
            let (min, max) = cps.iter().fold((f64::MAX, 0f64), |(a, b), &x| (a.min(x), b.max(x)));
            let m = |f: fn(&RunResult) -> f64| median(runs.iter().map(|r| f(r)).collect());
            self.summary.push(Summary {
                scenario: s.id,
                what: s.what,
                runs: runs.len(),
                calls_per_sec_median: med,
                calls_per_sec_min: min,
                calls_per_sec_max: max,
                spread_pct: if med > 0.0 { (max - min) / med * 100.0 } else { 0.0 },
                p50_us_median: m(|r| r.latency.p50_us),
                p99_us_median: m(|r| r.latency.p99_us),
                p999_us_median: m(|r| r.latency.p999_us),
                server_cores_median: m(|r| r.server_cores),
                client_cores_median: m(|r| r.client_cores),
                server_cpu_us_per_call_median: m(|r| r.server_cpu_us_per_call),
                response_bytes: runs[0].response_bytes,
                errors: runs.iter().map(|r| r.errors).sum(),
                foreign_cores_max: runs.iter().map(|r| r.foreign_cores).fold(0.0, f64::max),
                disturbed_runs: self.throughput.iter().filter(|r| r.scenario == s.id && r.disturbed).count(),
            });
        }
        for (name, a, b) in [
            (
                "gateway MCP (in-process) / rmcp peer, both stateless 2026-07-28",
                "a2-mcp-stateless-inproc",
                "e-rmcp-stateless",
            ),
            ("gateway MCP session (in-process) / rmcp peer stateless", "a-mcp-inproc", "e-rmcp-stateless"),
            (
                "gateway MCP session, no upstream (fixture) / rmcp peer stateless",
                "a3-mcp-fixture-noupstream",
                "e-rmcp-stateless",
            ),
            (
                "gateway MCP session (in-process) / rmcp peer sessionless 2025-11-25",
                "a-mcp-inproc",
                "e2-rmcp-sessionless",
            ),
            (
                "gateway MCP session (in-process) / rmcp peer answering the same change.show JSON",
                "a-mcp-inproc",
                "e3-rmcp-show",
            ),
            ("gateway MCP session (in-process) / floor: hyper alone, same answer", "a-mcp-inproc", "f-floor-show"),
            ("rmcp peer, our change.show answer / floor, same answer", "e3-rmcp-show", "f-floor-show"),
            ("rmcp peer echo / floor echo", "e2-rmcp-sessionless", "f2-floor-echo"),
            ("in-process / loopback gRPC (gateway MCP session)", "a-mcp-inproc", "b-mcp-loopback"),
            (
                "in-process / loopback gRPC (gateway MCP stateless)",
                "a2-mcp-stateless-inproc",
                "b2-mcp-stateless-loopback",
            ),
            ("gateway MCP (in-process) / straight gRPC", "a-mcp-inproc", "c-grpc"),
            ("REST / MCP session (both in-process)", "d-rest", "a-mcp-inproc"),
            ("gRPC with info logging / gRPC with warn", "c3-grpc-infolog", "c-grpc"),
            ("gRPC: Prometheus (scraped) / metrics off", "t-grpc-prom", "t-grpc-off"),
            ("gRPC: OTLP live / metrics off", "t-grpc-otlp-live", "t-grpc-off"),
            ("gRPC: OTLP closed port / OTLP live", "t-grpc-otlp-closed", "t-grpc-otlp-live"),
            ("gRPC: OTLP stalled / OTLP live", "t-grpc-otlp-stalled", "t-grpc-otlp-live"),
            ("MCP: Prometheus (scraped) / metrics off", "t-mcp-prom", "t-mcp-off"),
            ("MCP: OTLP live / metrics off", "t-mcp-otlp-live", "t-mcp-off"),
            ("MCP: OTLP closed port / OTLP live", "t-mcp-otlp-closed", "t-mcp-otlp-live"),
            ("MCP: OTLP stalled / OTLP live", "t-mcp-otlp-stalled", "t-mcp-otlp-live"),
        ] {
            let mut by_round: BTreeMap<usize, (Option<f64>, Option<f64>)> = BTreeMap::new();
            // The last run of each scenario in a round is the one that counts (earlier ones were disturbed).
            for r in &self.throughput {
                if r.scenario == a {
                    by_round.entry(r.repeat).or_default().0 = Some(r.calls_per_sec);
                } else if r.scenario == b {
                    by_round.entry(r.repeat).or_default().1 = Some(r.calls_per_sec);
                }
            }
            let per_round: Vec<f64> = by_round
                .values()
                .filter_map(|(x, y)| match (x, y) {
                    (Some(x), Some(y)) if *y > 0.0 => Some(x / y),
                    _ => None,
                })
                .collect();
            if !per_round.is_empty() {
                self.ratios.push(Ratio {
                    name: name.into(),
                    numerator: a,
                    denominator: b,
                    median: median(per_round.clone()),
                    per_round,
                });
            }
        }
        self.targets = self.targets();
    }

    fn targets(&self) -> Vec<Target> {
        let mut t = Vec::new();
        for (id, label) in [("a-mcp-inproc", "in-process"), ("b-mcp-loopback", "loopback gRPC")] {
            if let Some(s) = self.summary_of(id) {
                t.push(Target {
                    target: format!("change.show via gateway ({label}) >= 50,000 calls/s"),
                    measured: format!(
                        "{:.0} calls/s ({:.1}% of target)",
                        s.calls_per_sec_median,
                        s.calls_per_sec_median / 500.0
                    ),
                    met: Some(s.calls_per_sec_median >= 50_000.0),
                });
                t.push(Target {
                    target: format!("change.show via gateway ({label}) p99 < 2 ms"),
                    measured: format!("p99 {:.2} ms", s.p99_us_median / 1e3),
                    met: Some(s.p99_us_median < 2_000.0),
                });
            }
        }
        for m in self.memory.iter().filter(|m| m.server == crate::deploy::Deploy::Serve) {
            t.push(Target {
                target: "10,000 concurrent SSE streams held".into(),
                measured: format!(
                    "{} held (server reports {})",
                    m.streams_open,
                    m.server_reported_streams.map_or("?".into(), |n| n.to_string())
                ),
                met: Some(m.streams_open >= 10_000),
            });
            t.push(Target {
                target: "< 20 KiB of memory per SSE stream".into(),
                measured: format!("{:.2} KiB per stream", m.kib_per_stream),
                met: Some(m.kib_per_stream < 20.0),
            });
        }
        for f in &self.first_event {
            t.push(Target {
                target: format!("first SSE event p95 < 10 ms ({}, c={})", short(f.what), f.concurrency),
                measured: format!("p95 {:.3} ms", f.first_event.p95_us / 1e3),
                met: Some(f.first_event.p95_us < 10_000.0),
            });
        }
        t
    }
}

fn short(what: &str) -> &str {
    what.split(':').next().unwrap_or(what)
}

pub fn table(r: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nMachine: {} x {}, kernel {}, {}",
        r.machine.nproc, r.machine.cpu_model, r.machine.kernel, r.machine.rustc
    );
    let _ = writeln!(s, "task-mcp built from: {}\n", r.git);
    let _ = writeln!(
        s,
        "| scenario | calls/s (median) | spread (min–max) | p50 µs | p99 µs | p99.9 µs | server cores | client cores | server CPU µs/call | response B | other cores (max) | notes |"
    );
    let _ = writeln!(s, "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for x in &r.summary {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.0}–{:.0} (±{:.1}%) | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.1} | {} | {:.2} | {}{} |",
            x.scenario,
            x.calls_per_sec_median,
            x.calls_per_sec_min,
            x.calls_per_sec_max,
            x.spread_pct / 2.0,
            x.p50_us_median,
            x.p99_us_median,
            x.p999_us_median,
            x.server_cores_median,
            x.client_cores_median,
            x.server_cpu_us_per_call_median,
            x.response_bytes,
            x.foreign_cores_max,
            if x.errors > 0 { format!("{} errors; ", x.errors) } else { String::new() },
            if x.disturbed_runs > 0 { format!("{} disturbed run(s) re-run", x.disturbed_runs) } else { String::new() },
        );
    }
    if !r.ratios.is_empty() {
        let _ = writeln!(s, "\n| ratio (same round) | median | per round |\n|---|---:|---|");
        for x in &r.ratios {
            let rounds: Vec<String> = x.per_round.iter().map(|v| format!("{v:.3}")).collect();
            let _ = writeln!(s, "| {} | {:.3} | {} |", x.name, x.median, rounds.join(", "));
        }
    }
    if !r.memory.is_empty() {
        let _ = writeln!(
            s,
            "\n| memory | sessions | streams held | RSS base MiB | +sessions MiB | +streams MiB | KiB/idle session | KiB/stream | first event p50/p95 ms while opening |\n|---|---:|---:|---:|---:|---:|---:|---:|---|"
        );
        for m in &r.memory {
            let _ = writeln!(
                s,
                "| {:?} | {} | {} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} / {:.2} |",
                m.server,
                m.sessions,
                m.streams_open,
                m.rss_baseline_kib as f64 / 1024.0,
                (m.rss_sessions_kib as f64 - m.rss_baseline_kib as f64) / 1024.0,
                (m.rss_streams_kib as f64 - m.rss_sessions_kib as f64) / 1024.0,
                m.kib_per_idle_session,
                m.kib_per_stream,
                m.first_event_during_open.p50_us / 1e3,
                m.first_event_during_open.p95_us / 1e3,
            );
        }
    }
    for c in &r.idle_connections {
        let _ = writeln!(
            s,
            "\nIdle keep-alive HTTP connections ({:?}): {} held, {:.2} KiB each (RSS {:.1} -> {:.1} MiB)",
            c.server,
            c.connections,
            c.kib_per_connection,
            c.rss_before_kib as f64 / 1024.0,
            c.rss_after_kib as f64 / 1024.0
        );
    }
    if !r.first_event.is_empty() {
        let _ = writeln!(
            s,
            "\n| first SSE event | concurrency | samples | p50 ms | p95 ms | p99 ms | max ms | result p50/p95 ms |\n|---|---:|---:|---:|---:|---:|---:|---|"
        );
        for f in &r.first_event {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {} |",
                short(f.what),
                f.concurrency,
                f.samples,
                f.first_event.p50_us / 1e3,
                f.first_event.p95_us / 1e3,
                f.first_event.p99_us / 1e3,
                f.first_event.max_us / 1e3,
                f.complete.as_ref().map_or("-".into(), |c| format!("{:.3} / {:.3}", c.p50_us / 1e3, c.p95_us / 1e3)),
            );
        }
    }
    if !r.targets.is_empty() {
        let _ = writeln!(s, "\n| target | measured | met |\n|---|---|---|");
        for t in &r.targets {
            let met = match t.met {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "?",
            };
            let _ = writeln!(s, "| {} | {} | {met} |", t.target, t.measured);
        }
    }
    for p in &r.profile {
        let _ = writeln!(
            s,
            "\nProfile {} ({}; {:.0} calls/s under perf; context switches/call {}):",
            p.scenario,
            p.processes.join(" + "),
            p.calls_per_sec_under_perf,
            p.context_switches_per_call.map_or("?".into(), |c| format!("{c:.2}"))
        );
        for l in p.top_self.iter().take(15) {
            let _ = writeln!(s, "    {l}");
        }
    }
    if !r.failures.is_empty() {
        let _ = writeln!(s, "\nFailures:");
        for f in &r.failures {
            let _ = writeln!(s, "- {f}");
        }
    }
    s
}
