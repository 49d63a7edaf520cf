//! The official MCP Python SDK (PyPI `mcp`, pinned and installed into
//! .tools/venv by scripts/install-test-tools) as a real client of the server,
//! over Streamable HTTP (/mcp) and over the legacy HTTP+SSE transport (/sse):
//! initialize, list tools, open a change, progress while archiving it, read
//! resources, and a resources/updated notification after a subscribed change's
//! proposal.md is edited on disk; and the same over the stateless 2026-07-28
//! era. The steps live in tests/python/client_check.py; each test starts the
//! server, runs the script and fails with its report.
mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use common::{Server, client_summary, run_bounded};

/// Failure bound for the whole script (both transports); it takes a few seconds.
const SCRIPT_BOUND: Duration = Duration::from_secs(240);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The venv's python, checked to import the SDK; a missing one fails with the fix.
fn venv_python() -> PathBuf {
    let python = repo().join(".tools/venv/bin/python");
    let has_sdk = python.is_file()
        && Command::new(&python)
            .args(["-c", "import mcp.client.session, mcp.client.sse, mcp.client.streamable_http"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    assert!(
        has_sdk,
        "{} with the MCP Python SDK is missing: run scripts/install-test-tools (scripts/test does it for you); \
         it installs the pinned PyPI `mcp` into .tools/venv",
        python.display()
    );
    python
}

/// Runs tests/python/client_check.py with `--transport <transport>` against a
/// fresh server and checks its JSON summary names `expected` transports, each
/// through its last step.
fn client_check(transport: &str, expected: &[&str]) {
    let python = venv_python();
    let script = repo().join("tests/python/client_check.py");
    let server = Server::start();
    let out = tempfile::Builder::new().prefix("mcp-python-").tempdir().expect("create tempdir");
    let mut cmd = Command::new(&python);
    cmd.arg(&script)
        .args(["--url", &server.http_base(), "--transport", transport])
        .arg("--workspace")
        .arg(&server.workspace)
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let run = run_bounded(cmd, SCRIPT_BOUND, out.path());
    let summary = client_summary("Python SDK client check", &run, SCRIPT_BOUND);
    let stdout = &run.stdout;
    let results = summary["results"].as_array().expect("results array");
    let transports: Vec<&str> = results.iter().filter_map(|r| r["transport"].as_str()).collect();
    assert_eq!(transports, expected, "{stdout}");
    for result in results {
        let steps: Vec<&str> =
            result["steps"].as_array().into_iter().flatten().filter_map(|s| s["step"].as_str()).collect();
        assert_eq!(
            steps.last().copied(),
            Some("notifications/resources/updated"),
            "{} did not reach the last step:\n{stdout}",
            result["transport"]
        );
    }
}

/// The session eras (initialize), as the issue asks: Streamable HTTP and legacy SSE.
#[test]
fn python_sdk_client_over_streamable_http_and_legacy_sse() {
    client_check("all", &["streamable-http", "sse"]);
}

/// The stateless era (2026-07-28) with the same SDK: server/discover, the same
/// calls, and subscriptions/listen (with resourceSubscriptions) instead of
/// resources/subscribe.
#[test]
fn python_sdk_client_over_stateless_2026_07_28() {
    client_check("streamable-http-2026", &["streamable-http-2026"]);
}
