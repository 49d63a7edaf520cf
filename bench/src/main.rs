//! task-mcp's benchmark harness. `scripts/bench` builds everything and runs
//! `task-mcp-bench run` pinned to the load-generator core; this process starts
//! each server set-up pinned to the server core, drives it, and reports.
mod deploy;
mod grpc;
mod http;
mod load;
mod proc;
mod profile;
mod report;
mod sse;
mod telemetry;
mod throughput;

use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};

use crate::{
    deploy::{Binaries, Deploy, DeployOptions},
    load::Window,
    throughput::SCENARIOS,
};

#[derive(Debug, Parser)]
#[command(about = "Benchmarks task-mcp's gateway, its gRPC service and the rmcp peer")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the scenarios and write the raw results as JSON.
    Run(Box<RunArgs>),
    /// List the scenarios.
    List,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The task-mcp release binary.
    #[arg(long, default_value = "target/release/task-mcp")]
    task_mcp: PathBuf,
    /// What was built (commit, work tree state), recorded with the results.
    #[arg(long, default_value = "")]
    label: String,
    /// The rmcp peer binary.
    #[arg(long, default_value = "bench/target/release/rmcp-echo")]
    rmcp_echo: PathBuf,
    /// The floor server (hyper alone, prebuilt answers).
    #[arg(long, default_value = "bench/target/release/http-floor")]
    http_floor: PathBuf,
    /// Where the raw results go (a JSON file); logs and profiles go beside it.
    #[arg(long)]
    out: PathBuf,
    /// Cores the servers run on (`taskset -c` list).
    #[arg(long, default_value = "0")]
    server_cpu: String,
    /// Connections (and calls in flight) of the throughput scenarios.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    #[arg(long, default_value_t = 3)]
    warmup_seconds: u64,
    #[arg(long, default_value_t = 10)]
    measure_seconds: u64,
    /// Runs of each throughput scenario (median and spread are reported).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Sessions and concurrent SSE streams of the memory scenario.
    #[arg(long, default_value_t = 10_000)]
    streams: usize,
    /// Streams being opened at once in the memory scenario.
    #[arg(long, default_value_t = 256)]
    opening: usize,
    /// How long the streams are held after they are all open.
    #[arg(long, default_value_t = 5)]
    hold_seconds: u64,
    /// Samples of each first-event latency scenario.
    #[arg(long, default_value_t = 2000)]
    samples: usize,
    /// Only these parts: scenario ids (see `list`), `throughput`, `telemetry`, `memory`, `first-event`, `profile`.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Runs of one scenario in a round when other work disturbed the previous ones.
    #[arg(long, default_value_t = 3)]
    attempts: usize,
    /// Before each run, wait at most this long for the machine to be quiet.
    #[arg(long, default_value_t = 120)]
    quiet_wait_seconds: u64,
    /// Skip perf profiling.
    #[arg(long)]
    no_profile: bool,
    /// Scenarios to profile.
    #[arg(long, value_delimiter = ',', default_value = "a-mcp-inproc,b-mcp-loopback,c-grpc,e-rmcp-stateless")]
    profile_scenarios: Vec<String>,
    /// Seconds of `perf stat` and of `perf record` per profiled scenario.
    #[arg(long, default_value_t = 5)]
    perf_seconds: u64,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // One thread: the load generator owns one core and no more.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match cli.command {
        Cmd::List => {
            for s in SCENARIOS.iter().chain(telemetry::SCENARIOS.iter().map(|t| &t.scenario)) {
                println!("{:<28} {}", s.id, s.what);
            }
            Ok(())
        }
        Cmd::Run(args) => rt.block_on(run(*args)),
    }
}

fn wanted(only: &[String], part: &str, id: &str) -> bool {
    only.is_empty() || only.iter().any(|o| o == part || o == id)
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let out_dir = args.out.parent().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    let stem = args.out.file_stem().and_then(|s| s.to_str()).unwrap_or("bench").to_string();
    let logs = out_dir.join(format!("{stem}-logs"));
    let work = std::env::temp_dir().join(format!("task-mcp-bench-{}", std::process::id()));
    std::fs::create_dir_all(&logs)?;
    std::fs::create_dir_all(&work)?;
    let bins = Binaries {
        task_mcp: args.task_mcp.clone(),
        rmcp_echo: args.rmcp_echo.clone(),
        http_floor: args.http_floor.clone(),
    };
    let window =
        Window { warmup: Duration::from_secs(args.warmup_seconds), measure: Duration::from_secs(args.measure_seconds) };
    let mut results = report::Results::new(&args_summary(&args), &args.label);

    // Throughput: every scenario once per round, rounds repeated, so a
    // disturbance from outside hits one run of several scenarios, not all runs of one.
    let chosen: Vec<_> = SCENARIOS.iter().filter(|s| wanted(&args.only, "throughput", s.id)).collect();
    for repeat in 1..=args.repeats {
        for scenario in &chosen {
            let tag = format!("{}-r{repeat}", scenario.id);
            let o = DeployOptions { bins: &bins, cpu: &args.server_cpu, work: &work, logs: &logs, tag: &tag };
            for attempt in 1..=args.attempts {
                let other =
                    crate::proc::wait_quiet(throughput::DISTURBED_CORES, Duration::from_secs(args.quiet_wait_seconds))
                        .await;
                eprint!("[{repeat}/{}] {:<28} ", args.repeats, scenario.id);
                match throughput::run_one(scenario, repeat, args.connections, window, &o).await {
                    Ok(r) => {
                        eprintln!(
                            "{:>9.0} calls/s  p50 {:>7.0} us  p99 {:>7.0} us  server {:.2}  client {:.2}  other {:.2} cores{}{}",
                            r.calls_per_sec,
                            r.latency.p50_us,
                            r.latency.p99_us,
                            r.server_cores,
                            r.client_cores,
                            r.foreign_cores,
                            if r.errors > 0 { format!("  ERRORS {}", r.errors) } else { String::new() },
                            if r.disturbed {
                                format!("  DISTURBED (machine busy {other:.2} cores before)")
                            } else {
                                String::new()
                            },
                        );
                        let again = r.disturbed && attempt < args.attempts;
                        results.throughput.push(r);
                        if !again {
                            break;
                        }
                    }
                    Err(e) => {
                        eprintln!("FAILED: {e:#}");
                        results.failures.push(format!("{}: {e:#}", scenario.id));
                        break;
                    }
                }
            }
        }
    }

    // Telemetry: metrics off, pulled, pushed, and pushed at a Collector that is down or stalled,
    // every variant once per round like the throughput scenarios.
    let chosen: Vec<_> =
        telemetry::SCENARIOS.iter().filter(|t| wanted(&args.only, "telemetry", t.scenario.id)).collect();
    for repeat in 1..=args.repeats {
        for t in &chosen {
            let tag = format!("{}-r{repeat}", t.scenario.id);
            let o = DeployOptions { bins: &bins, cpu: &args.server_cpu, work: &work, logs: &logs, tag: &tag };
            for attempt in 1..=args.attempts {
                let other =
                    crate::proc::wait_quiet(throughput::DISTURBED_CORES, Duration::from_secs(args.quiet_wait_seconds))
                        .await;
                eprint!("[{repeat}/{}] {:<28} ", args.repeats, t.scenario.id);
                match telemetry::run_one(t, repeat, args.connections, window, &o).await {
                    Ok((r, note)) => {
                        eprintln!(
                            "{:>9.0} calls/s  p50 {:>7.0} us  p99 {:>7.0} us  server {:.2}  other {:.2} cores  scrapes {} exports {} stalled conns {}{}{}",
                            r.calls_per_sec,
                            r.latency.p50_us,
                            r.latency.p99_us,
                            r.server_cores,
                            r.foreign_cores,
                            note.scrapes,
                            note.exports,
                            note.stalled_connections,
                            if r.errors > 0 { format!("  ERRORS {}", r.errors) } else { String::new() },
                            if r.disturbed {
                                format!("  DISTURBED (machine busy {other:.2} cores before)")
                            } else {
                                String::new()
                            },
                        );
                        let again = r.disturbed && attempt < args.attempts;
                        results.throughput.push(r);
                        results.telemetry.push(note);
                        if !again {
                            break;
                        }
                    }
                    Err(e) => {
                        eprintln!("FAILED: {e:#}");
                        results.failures.push(format!("{}: {e:#}", t.scenario.id));
                        break;
                    }
                }
            }
        }
    }

    if wanted(&args.only, "memory", "f-sse-memory") {
        for deploy in [Deploy::Serve, Deploy::RmcpStateful] {
            let tag = format!("f-memory-{deploy:?}").to_lowercase();
            let o = DeployOptions { bins: &bins, cpu: &args.server_cpu, work: &work, logs: &logs, tag: &tag };
            eprint!("[memory] {deploy:?}: {} sessions, then {} streams ... ", args.streams, args.streams);
            match sse::memory(deploy, args.streams, args.opening, Duration::from_secs(args.hold_seconds), &o).await {
                Ok(m) => {
                    eprintln!("{:.2} KiB/session, {:.2} KiB/stream", m.kib_per_idle_session, m.kib_per_stream);
                    results.memory.push(m);
                }
                Err(e) => {
                    eprintln!("FAILED: {e:#}");
                    results.failures.push(format!("memory {deploy:?}: {e:#}"));
                }
            }
        }
    }

    if wanted(&args.only, "memory", "f-sse-memory") {
        let o =
            DeployOptions { bins: &bins, cpu: &args.server_cpu, work: &work, logs: &logs, tag: "f-idle-connections" };
        eprint!("[memory] idle keep-alive connections: {} ... ", args.streams);
        match sse::idle_connections(Deploy::Serve, args.streams, args.opening, &o).await {
            Ok(c) => {
                eprintln!("{:.2} KiB/connection", c.kib_per_connection);
                results.idle_connections.push(c);
            }
            Err(e) => {
                eprintln!("FAILED: {e:#}");
                results.failures.push(format!("idle connections: {e:#}"));
            }
        }
    }

    if wanted(&args.only, "first-event", "g-first-event") {
        let o = DeployOptions { bins: &bins, cpu: &args.server_cpu, work: &work, logs: &logs, tag: "g-get" };
        let mut push = |r: anyhow::Result<sse::FirstEventResult>, name: &str| match r {
            Ok(r) => {
                eprintln!(
                    "[first event] {name}: p50 {:.0} us  p95 {:.0} us  p99 {:.0} us",
                    r.first_event.p50_us, r.first_event.p95_us, r.first_event.p99_us
                );
                results.first_event.push(r);
            }
            Err(e) => {
                eprintln!("[first event] {name} FAILED: {e:#}");
                results.failures.push(format!("first event {name}: {e:#}"));
            }
        };
        push(sse::first_event_get(Deploy::Serve, args.samples, &o).await, "GET /mcp");
        for concurrency in [1, args.connections] {
            let tag = format!("g-call-c{concurrency}");
            let o = DeployOptions { bins: &bins, cpu: &args.server_cpu, work: &work, logs: &logs, tag: &tag };
            let samples = args.samples.max(concurrency * 100);
            push(
                sse::first_event_call(Deploy::Serve, concurrency, samples, &o).await,
                &format!("streamed tools/call c={concurrency}"),
            );
        }
    }

    if !args.no_profile && wanted(&args.only, "profile", "profile") {
        if profile::perf_available() {
            for id in &args.profile_scenarios {
                let Some(scenario) = SCENARIOS.iter().find(|s| s.id == id) else {
                    results.failures.push(format!("profile: no scenario {id:?}"));
                    continue;
                };
                let tag = format!("profile-{id}");
                let o = DeployOptions { bins: &bins, cpu: &args.server_cpu, work: &work, logs: &logs, tag: &tag };
                eprint!("[profile] {id} ... ");
                match profile::profile(scenario, args.connections, args.perf_seconds, &o, &logs).await {
                    Ok(p) => {
                        eprintln!("done ({:.0} calls/s under perf)", p.calls_per_sec_under_perf);
                        results.profile.push(p);
                    }
                    Err(e) => {
                        eprintln!("FAILED: {e:#}");
                        results.failures.push(format!("profile {id}: {e:#}"));
                    }
                }
            }
        } else {
            eprintln!("[profile] perf is not usable here; skipped");
        }
    }

    let _ = std::fs::remove_dir_all(&work);
    results.finish();
    std::fs::write(&args.out, serde_json::to_string_pretty(&results)?)?;
    print!("{}", report::table(&results));
    println!("\nRaw results: {}", args.out.display());
    Ok(())
}

fn args_summary(a: &RunArgs) -> serde_json::Value {
    serde_json::json!({
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "server_cpu": a.server_cpu,
        "connections": a.connections,
        "warmup_seconds": a.warmup_seconds,
        "measure_seconds": a.measure_seconds,
        "repeats": a.repeats,
        "streams": a.streams,
        "opening": a.opening,
        "hold_seconds": a.hold_seconds,
        "samples": a.samples,
        "perf_seconds": a.perf_seconds,
    })
}
