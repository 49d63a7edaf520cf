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
    fs::File,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::Server;

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
    let (stdout_path, stderr_path) = (out.path().join("stdout.json"), out.path().join("stderr.txt"));
    let mut cmd = Command::new(&python);
    cmd.arg(&script)
        .args(["--url", &server.http_base(), "--transport", transport])
        .arg("--workspace")
        .arg(&server.workspace)
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(File::create(&stdout_path).expect("create stdout file"))
        .stderr(File::create(&stderr_path).expect("create stderr file"));
    let command = format!("{cmd:?}");
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {command}: {e}"));
    let status = loop {
        match child.try_wait().expect("wait for the Python client") {
            Some(status) => break Some(status),
            None if started.elapsed() > SCRIPT_BOUND => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    eprintln!("$ {command}\n[{status:?} after {:?}]", started.elapsed());
    let Some(status) = status else {
        panic!(
            "the Python client did not finish within {SCRIPT_BOUND:?} (failure bound, not a speed check); killed it\
             \n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
        );
    };
    assert!(
        status.success(),
        "the Python SDK client check failed ({status})\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    );

    // Exit 0 must come with a summary that says every step passed.
    let summary: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("the script exited 0 but its summary is not JSON ({e}):\n{stdout}\n{stderr}"));
    assert_eq!(summary["ok"], true, "{stdout}");
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
    eprintln!("{stdout}");
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
