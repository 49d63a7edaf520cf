//! Where the time goes: `perf stat` (software counters) and `perf record`
//! (cpu-clock samples with DWARF call graphs) on a server under the same load.
use std::{path::Path, process::Stdio, time::Duration};

use anyhow::Context as _;
use serde::Serialize;

use crate::{
    deploy::{self, DeployOptions},
    load::{self, Window},
    throughput::{self, Load, Scenario},
};

#[derive(Debug, Clone, Serialize)]
pub struct ProfileResult {
    pub scenario: &'static str,
    /// The processes profiled: the server, or in the split set-up the service and the gateway.
    pub processes: Vec<String>,
    pub calls_per_sec_under_perf: f64,
    pub perf_stat: String,
    pub context_switches_per_call: Option<f64>,
    /// `perf report --no-children --sort symbol`: self time, the top lines.
    pub top_self: Vec<String>,
    /// `perf report --children --sort symbol`: inclusive time, the top lines.
    pub top_inclusive: Vec<String>,
    /// `perf report --sort dso`: time per binary (ours, libc, kernel).
    pub by_dso: Vec<String>,
    /// `perf report --sort pid,comm`: time per process and thread name.
    pub by_thread: Vec<String>,
    pub files: Vec<String>,
}

pub fn perf_available() -> bool {
    std::process::Command::new("perf")
        .args(["stat", "-e", "task-clock", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

async fn sh(program: &str, args: &[String]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("run {program}"))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok(text)
}

/// The report's rows, whitespace squeezed and perf's empty trailing columns dropped.
fn table_lines(report: &str, n: usize) -> Vec<String> {
    report
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty() && l.contains('%'))
        .take(n)
        .map(|l| {
            let mut words: Vec<&str> = l.split_whitespace().collect();
            while words.last() == Some(&"-") {
                words.pop();
            }
            words.join(" ")
        })
        .collect()
}

fn context_switches(stat: &str) -> Option<f64> {
    stat.lines()
        .find(|l| l.contains("context-switches") || l.contains("cs "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.replace(',', "").parse().ok())
}

/// Profiles every server process of `scenario` (both in the split set-up).
pub async fn profile(
    scenario: &Scenario,
    connections: usize,
    seconds: u64,
    o: &DeployOptions<'_>,
    out: &Path,
) -> anyhow::Result<ProfileResult> {
    let running = deploy::start(scenario.deploy, o).await?;
    let pids: Vec<String> = running.servers.iter().map(|s| s.pid().to_string()).collect();
    let processes: Vec<String> = running.servers.iter().map(|s| format!("{} (pid {})", s.name, s.pid())).collect();
    let pid = pids.join(",");
    let secs = seconds.to_string();
    let window = Window { warmup: Duration::from_secs(2), measure: Duration::from_secs(2 * seconds + 3) };
    let data = out.join(format!("{}.perf.data", o.tag));
    let perf = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let stat = sh(
            "perf",
            &[
                "stat".into(),
                "-e".into(),
                "task-clock,context-switches,cpu-migrations,page-faults".into(),
                "-p".into(),
                pid.clone(),
                "--".into(),
                "sleep".into(),
                secs.clone(),
            ],
        )
        .await?;
        let record = sh(
            "perf",
            &[
                "record".into(),
                "-F".into(),
                "999".into(),
                "--call-graph".into(),
                "dwarf,16384".into(),
                "-p".into(),
                pid.clone(),
                "-o".into(),
                data.display().to_string(),
                "--".into(),
                "sleep".into(),
                secs.clone(),
            ],
        )
        .await?;
        anyhow::Ok((stat, record))
    };
    let (outcome, perf) = match scenario.load {
        Load::GrpcChannels | Load::GrpcOneChannel => {
            let addr = running.grpc.context("no gRPC address")?;
            let (workers, _, _) =
                throughput::grpc_workers(addr, connections, scenario.load == Load::GrpcOneChannel).await?;
            tokio::join!(load::run(workers, window, || {}), perf)
        }
        _ => {
            let (workers, _, _) = throughput::http_workers(scenario, running.http, connections).await?;
            tokio::join!(load::run(workers, window, || {}), perf)
        }
    };
    running.stop();
    let (stat, _record) = perf?;
    let calls_per_sec = outcome.calls as f64 / outcome.seconds;
    let input = data.display().to_string();
    let report = |extra: &[&str]| {
        let mut args: Vec<String> =
            vec!["report".into(), "-i".into(), input.clone(), "--stdio".into(), "--percent-limit".into(), "0.7".into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let self_report = sh("perf", &report(&["--no-children", "--sort", "symbol", "-g", "none"])).await?;
    let children = sh("perf", &report(&["--children", "--sort", "symbol", "-g", "none"])).await?;
    let dso = sh("perf", &report(&["--no-children", "--sort", "dso", "-g", "none"])).await?;
    let threads = sh("perf", &report(&["--no-children", "--sort", "pid,comm", "-g", "none"])).await?;
    let callers =
        sh("perf", &report(&["--no-children", "--sort", "symbol", "-g", "caller,0.5,callee,function,percent"])).await?;
    let mut files = Vec::new();
    for (name, text) in [
        ("stat", &stat),
        ("self", &self_report),
        ("children", &children),
        ("dso", &dso),
        ("threads", &threads),
        ("callgraph", &callers),
    ] {
        let path = out.join(format!("{}-{name}.txt", o.tag));
        std::fs::write(&path, text)?;
        files.push(path.display().to_string());
    }
    let cs = context_switches(&stat);
    Ok(ProfileResult {
        scenario: scenario.id,
        processes,
        calls_per_sec_under_perf: calls_per_sec,
        perf_stat: stat,
        context_switches_per_call: cs.map(|cs| cs / (calls_per_sec * seconds as f64)),
        top_self: table_lines(&self_report, 40),
        top_inclusive: table_lines(&children, 60),
        by_dso: table_lines(&dso, 12),
        by_thread: table_lines(&threads, 12),
        files,
    })
}
