//! The official MCP TypeScript SDK (npm `@modelcontextprotocol/sdk`, the client
//! Claude Desktop, Cursor and the MCP Inspector build on; pinned and installed
//! into .tools/ts-sdk by scripts/install-test-tools, run under .tools/bin/node22)
//! as a real client of the server, over Streamable HTTP (/mcp) and over the
//! legacy HTTP+SSE transport (/sse): tools/list with the SDK's output-schema
//! validation of every result after it, the change tools end to end, progress
//! while archiving (ten archives in a row over legacy SSE, none losing
//! progress), resources, a resources/updated notification after an edit on
//! disk, a cancelled call that leaves nothing written and no stray response,
//! and, over legacy SSE, a tool call after the SDK reconnects a severed stream.
//! The steps live in tests/typescript/client_check.mjs; each test starts the
//! server, runs the script and fails with its report.
mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use common::{Server, client_summary, run_bounded};

/// Failure bound for one transport's script run; it takes a few seconds.
const SCRIPT_BOUND: Duration = Duration::from_secs(180);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// .tools/bin/node22 and the SDK in .tools/ts-sdk; a missing one fails with the fix.
fn tools() -> (PathBuf, PathBuf) {
    let node = common::node22();
    let sdk = repo().join(".tools/ts-sdk");
    let package = sdk.join("node_modules/@modelcontextprotocol/sdk/package.json");
    assert!(
        package.is_file(),
        "the MCP TypeScript SDK is missing ({} not found): run scripts/install-test-tools (scripts/test does it \
         for you); it installs the pinned npm `@modelcontextprotocol/sdk` into .tools/ts-sdk",
        package.display()
    );
    (node, sdk)
}

/// Runs tests/typescript/client_check.mjs with `--transport <transport>`
/// against a fresh server and checks that its JSON summary reports that
/// transport through exactly `steps`.
fn client_check(transport: &str, steps: &[&str]) {
    let (node, sdk) = tools();
    let script = repo().join("tests/typescript/client_check.mjs");
    let server = Server::start();
    let out = tempfile::Builder::new().prefix("mcp-typescript-").tempdir().expect("create tempdir");
    let mut cmd = Command::new(&node);
    cmd.arg(&script)
        .args(["--url", &server.http_base(), "--transport", transport])
        .arg("--workspace")
        .arg(&server.workspace)
        .arg("--sdk")
        .arg(&sdk)
        // The SDK's own lookups must not pick up a developer's Node setup.
        .env_remove("NODE_OPTIONS")
        .env_remove("NODE_PATH");
    let run = run_bounded(cmd, SCRIPT_BOUND, out.path());
    let summary = client_summary("TypeScript SDK client check", &run, SCRIPT_BOUND);
    let stdout = &run.stdout;
    let results = summary["results"].as_array().expect("results array");
    let transports: Vec<&str> = results.iter().filter_map(|r| r["transport"].as_str()).collect();
    assert_eq!(transports, [transport], "{stdout}");
    let done: Vec<&str> =
        results[0]["steps"].as_array().into_iter().flatten().filter_map(|s| s["step"].as_str()).collect();
    assert_eq!(done, steps, "{transport} did not pass through every step:\n{stdout}");
}

/// The steps of both transports, in order.
const STEPS: &[&str] = &[
    "connect",
    "tools/list",
    "change.open",
    "change.show",
    "task.update",
    "change.validate",
    "resources/read proposal",
    "change.archive",
    "resources/read receipt",
    "resources/subscribe",
    "notifications/resources/updated",
    "cancel",
];

#[test]
fn typescript_sdk_client_over_streamable_http() {
    client_check("streamable-http", STEPS);
}

/// Legacy HTTP+SSE: the same, with ten archives in a row (none may lose
/// progress) and, last, a call after the SDK reconnects a severed stream.
#[test]
fn typescript_sdk_client_over_legacy_sse() {
    let steps: Vec<&str> = STEPS.iter().copied().chain(["reconnect"]).collect();
    client_check("sse", &steps);
}
