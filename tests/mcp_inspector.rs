//! The MCP Inspector (npm `@modelcontextprotocol/inspector`, v2, pinned and
//! installed into .tools/inspector by scripts/install-test-tools) as a real
//! client of the server: its CLI mode (`mcp-inspector --cli URL --method …
//! --format json`), run under .tools/bin/node22, one process per call as a
//! person or a CI job runs it. Over Streamable HTTP (/mcp) in the 2025 era and
//! in the stateless 2026-07-28 era (`--protocol-era modern`), and over the
//! legacy HTTP+SSE transport (/sse): initialize, tools/list with the CLI's
//! `--strict` tool-schema portability check, change.open with `--tool-arg`
//! (an integer and an enum among them), change.show, change.list with
//! `--tool-args-json`, resources/list, resources/read of a proposal (checked
//! against the file on disk), resources/templates/list, and a tool error. With
//! `--auth-token`: `--header "Authorization: Bearer …"` with the right token
//! works (the principal owns the lock it takes) and a wrong or missing one is
//! refused, on every transport.
//!
//! Each call is bounded; a successful one must print nothing on stderr, so a
//! warning the Inspector prints about the server fails the test. A failure
//! shows the command, the CLI's exit status, stdout and stderr, and (from the
//! server harness) the server's logs.
mod common;

use std::{
    cell::Cell,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use common::{Server, ToolRun, run_bounded};
use serde_json::Value;

/// Failure bound for one CLI run (start, connect, one method, disconnect); it
/// takes under a second.
const RUN_BOUND: Duration = Duration::from_secs(60);
/// The CLI's own bound on connecting, in milliseconds (its default is 15000).
const CONNECT_TIMEOUT_MS: &str = "20000";

/// The CLI's documented exit codes (`EXIT_CODES` in its source).
const EXIT_AUTH_REQUIRED: i32 = 3;
const EXIT_TOOL_ERROR: i32 = 5;

const TOOLS: [&str; 6] =
    ["change.archive", "change.list", "change.open", "change.show", "change.validate", "task.update"];
const SLUG: &str = "add-login-throttle";
const TITLE: &str = "Add login throttle";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// .tools/bin/node22 and the Inspector's launcher (the package's `mcp-inspector`
/// bin); a missing one fails with the fix.
fn tools() -> (PathBuf, PathBuf) {
    let node = common::node22();
    let launcher =
        repo().join(".tools/inspector/node_modules/@modelcontextprotocol/inspector/clients/launcher/build/index.js");
    assert!(
        launcher.is_file(),
        "the MCP Inspector is missing ({} not found): run scripts/install-test-tools (scripts/test does it for \
         you); it installs the pinned npm `@modelcontextprotocol/inspector` into .tools/inspector",
        launcher.display()
    );
    (node, launcher)
}

/// How the Inspector reaches the server.
#[derive(Clone, Copy, Debug)]
enum Transport {
    /// `/mcp`, `initialize` and a session (the CLI's default era, "legacy").
    StreamableHttp,
    /// `/mcp`, pinned to the sessionless 2026-07-28 revision (`server/discover`).
    Stateless2026,
    /// `/sse` and `/messages` (2024-11-05 transport).
    LegacySse,
}

impl Transport {
    const ALL: [Transport; 3] = [Transport::StreamableHttp, Transport::Stateless2026, Transport::LegacySse];

    fn url(self, server: &Server) -> String {
        match self {
            Transport::StreamableHttp | Transport::Stateless2026 => server.mcp_url(),
            Transport::LegacySse => format!("{}/sse", server.http_base()),
        }
    }

    fn args(self) -> [&'static str; 4] {
        match self {
            Transport::StreamableHttp => ["--transport", "http", "--protocol-era", "legacy"],
            Transport::Stateless2026 => ["--transport", "http", "--protocol-era", "modern"],
            Transport::LegacySse => ["--transport", "sse", "--protocol-era", "legacy"],
        }
    }

    /// The protocol version `initialize` must report.
    fn protocol_version(self) -> &'static str {
        match self {
            Transport::StreamableHttp | Transport::LegacySse => "2025-11-25",
            Transport::Stateless2026 => "2026-07-28",
        }
    }
}

/// The Inspector CLI pointed at one server over one transport. Each call is a
/// fresh `node launcher --cli` process with HOME in a tempdir, so nothing is
/// read from or left in a developer's ~/.mcp-inspector.
struct Inspector {
    node: PathBuf,
    launcher: PathBuf,
    url: String,
    transport: Transport,
    header: Option<String>,
    home: tempfile::TempDir,
    runs: Cell<u32>,
}

impl Inspector {
    fn new(server: &Server, transport: Transport) -> Inspector {
        let (node, launcher) = tools();
        let home = tempfile::Builder::new().prefix("mcp-inspector-").tempdir().expect("create tempdir");
        Inspector { node, launcher, url: transport.url(server), transport, header: None, home, runs: Cell::new(0) }
    }

    /// Sends `Authorization: Bearer <token>` (the CLI's `--header`).
    fn bearer(mut self, token: &str) -> Inspector {
        self.header = Some(format!("Authorization: Bearer {token}"));
        self
    }

    /// Runs `--cli <url> <transport args> <args> --format json`, bounded.
    fn run(&self, args: &[&str]) -> ToolRun {
        let n = self.runs.get() + 1;
        self.runs.set(n);
        let out = self.home.path().join(format!("run-{n}"));
        std::fs::create_dir_all(&out).expect("create run dir");
        let mut cmd = Command::new(&self.node);
        cmd.arg(&self.launcher)
            .arg("--cli")
            .arg(&self.url)
            .args(self.transport.args())
            .args(["--connect-timeout", CONNECT_TIMEOUT_MS])
            // Never start an interactive OAuth login on a 401 (the CLI's flag
            // for CI; a no-op when the server needs no auth).
            .arg("--stored-auth-only")
            .args(["--format", "json"]);
        if let Some(header) = &self.header {
            cmd.args(["--header", header]);
        }
        cmd.args(args);
        // The Inspector's own settings, a proxy or a Node setup in the
        // developer's environment must not change what the test means.
        for (key, _) in std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v))) {
            let upper = key.to_ascii_uppercase();
            if upper.starts_with("MCP_")
                || upper.starts_with("INSPECTOR_")
                || upper.starts_with("NODE_")
                || upper.ends_with("_PROXY")
                || ["DEBUG", "USERPROFILE", "HOST", "CLIENT_PORT", "FORCE_COLOR"].contains(&upper.as_str())
            {
                cmd.env_remove(&key);
            }
        }
        cmd.env("HOME", self.home.path()).env("NO_COLOR", "1").current_dir(self.home.path());
        run_bounded(cmd, RUN_BOUND, &out)
    }

    /// Runs a call that must succeed: exit 0, nothing on stderr, and the
    /// `{"result": …}` envelope on stdout. Returns the whole envelope.
    fn ok(&self, args: &[&str]) -> Value {
        let run = self.run(args);
        let status = finished(&run);
        assert!(status.success(), "the Inspector CLI failed ({status})\n{}", report(&run));
        assert!(
            run.stderr.trim().is_empty(),
            "the Inspector CLI succeeded but printed on stderr (a warning about the server?)\n{}",
            report(&run)
        );
        let envelope: Value = serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("the Inspector CLI's stdout is not one JSON object ({e})\n{}", report(&run)));
        assert!(envelope["result"].is_object(), "no \"result\" object in the output\n{}", report(&run));
        eprintln!("$ {}\n[ok after {:?}]", run.command, run.elapsed);
        envelope
    }

    /// The `result` of a call that must succeed.
    fn result(&self, args: &[&str]) -> Value {
        let mut envelope = self.ok(args);
        envelope["result"].take()
    }

    /// Runs a call that must fail with exit `code`. Returns the run and the
    /// `{"error": {code, message}}` envelope the CLI prints on stderr.
    fn fails(&self, args: &[&str], code: i32) -> (ToolRun, Value) {
        let run = self.run(args);
        let status = finished(&run);
        assert_eq!(status.code(), Some(code), "expected the Inspector CLI to exit {code}\n{}", report(&run));
        let line = run.stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
        let error: Value = serde_json::from_str(line).unwrap_or_else(|e| {
            panic!("the last line on stderr is not the CLI's JSON error envelope ({e})\n{}", report(&run))
        });
        assert!(error["error"]["message"].is_string(), "no error message\n{}", report(&run));
        eprintln!("$ {}\n[exit {code} as expected] {line}", run.command);
        (run, error)
    }
}

/// The exit status of a run that finished; panics with the report on a hang.
fn finished(run: &ToolRun) -> std::process::ExitStatus {
    run.status.unwrap_or_else(|| {
        panic!(
            "the Inspector CLI did not finish within {RUN_BOUND:?} (failure bound, not a speed check); killed it\n{}",
            report(run)
        )
    })
}

/// Everything a run said, for a failure message.
fn report(run: &ToolRun) -> String {
    format!(
        "$ {}\n[{:?} after {:?}]\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- end of Inspector output ---",
        run.command, run.status, run.elapsed, run.stdout, run.stderr
    )
}

/// A JSON value for a failure message (short enough to read).
fn show(value: &Value) -> String {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    if text.chars().count() > 6000 { format!("{}…", text.chars().take(6000).collect::<String>()) } else { text }
}

/// The structured result of a successful tools/call, checked to be consistent:
/// not an error, and its text content is the same JSON as `structuredContent`.
fn structured(result: &Value, what: &str) -> Value {
    assert_eq!(result["isError"], false, "{what} returned an error:\n{}", show(result));
    let structured = result["structuredContent"].clone();
    assert!(structured.is_object(), "{what}: no structuredContent:\n{}", show(result));
    let text = result["content"][0]["text"].as_str().unwrap_or_else(|| panic!("{what}: no text content"));
    let from_text: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{what}: text is not JSON ({e})"));
    assert_eq!(from_text, structured, "{what}: the text content and structuredContent differ");
    structured
}

/// What an Inspector user does against a fresh server over `transport`.
fn walkthrough(transport: Transport) {
    let server = Server::start();
    let inspector = Inspector::new(&server, transport);

    // initialize: the era the transport stands for, and the server's identity.
    let init = inspector.result(&["--method", "initialize"]);
    assert_eq!(init["protocolVersion"], transport.protocol_version(), "{}", show(&init));
    assert_eq!(init["serverInfo"]["name"], "task-mcp", "{}", show(&init));
    for capability in ["tools", "resources"] {
        assert!(init["capabilities"][capability].is_object(), "no {capability} capability:\n{}", show(&init));
    }

    // tools/list with --strict: every tool with an object inputSchema, and no
    // schema the Inspector calls unportable (it would list them under
    // "schemaFindings", or exit 6 for an error).
    let listed = inspector.ok(&["--method", "tools/list", "--strict"]);
    assert!(
        listed.get("schemaFindings").is_none(),
        "schema portability findings:\n{}",
        show(&listed["schemaFindings"])
    );
    let tools = listed["result"]["tools"].as_array().expect("tools array");
    let mut names: Vec<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, TOOLS, "tools/list");
    for tool in tools {
        let schema = &tool["inputSchema"];
        assert_eq!(schema["type"], "object", "{}: inputSchema:\n{}", tool["name"], show(schema));
        assert!(
            schema["properties"].is_object(),
            "{}: inputSchema without properties:\n{}",
            tool["name"],
            show(schema)
        );
    }
    let open_schema = &tools.iter().find(|t| t["name"] == "change.open").expect("change.open")["inputSchema"];
    assert_eq!(open_schema["properties"]["ttlSeconds"]["type"], "integer", "{}", show(open_schema));

    // tools/call change.open: --tool-arg values are strings on the command
    // line; the CLI converts them by the inputSchema (ttlSeconds to a number).
    let opened = inspector.result(&[
        "--method",
        "tools/call",
        "--tool-name",
        "change.open",
        "--tool-arg",
        &format!("slug={SLUG}"),
        &format!("title={TITLE}"),
        "ttlSeconds=600",
        "template=TEMPLATE_BUGFIX",
    ]);
    let opened = structured(&opened, "change.open");
    assert_eq!(opened["created"], true, "{}", show(&opened));
    assert_eq!(opened["change"]["slug"], SLUG, "{}", show(&opened));
    assert_eq!(opened["lock"]["ttlSeconds"], 600, "ttlSeconds=600 did not arrive as 600:\n{}", show(&opened));
    let proposal_uri = format!("change://{SLUG}/proposal");
    assert!(
        opened["resourceUris"].as_array().is_some_and(|u| u.iter().any(|u| *u == *proposal_uri)),
        "{}",
        show(&opened)
    );
    let proposal_file = server.workspace.join("changes").join(SLUG).join("proposal.md");
    let on_disk = std::fs::read_to_string(&proposal_file)
        .unwrap_or_else(|e| panic!("{} after change.open: {e}", proposal_file.display()));

    // change.show: the change as opened, with the bugfix template's proposal.
    let shown = inspector.result(&[
        "--method",
        "tools/call",
        "--tool-name",
        "change.show",
        "--tool-arg",
        &format!("slug={SLUG}"),
    ]);
    let shown = structured(&shown, "change.show");
    assert_eq!(shown["change"]["slug"], SLUG, "{}", show(&shown));
    assert_eq!(shown["change"]["title"], TITLE, "{}", show(&shown));
    assert_eq!(shown["proposal"], on_disk.as_str(), "change.show's proposal is not proposal.md");
    assert!(on_disk.contains("**Type:** bugfix"), "template=TEMPLATE_BUGFIX did not arrive:\n{on_disk}");
    assert!(shown["tasks"].as_array().is_some_and(|t| !t.is_empty()), "{}", show(&shown));

    // change.list with --tool-args-json (values passed as JSON, verbatim).
    let list = inspector.result(&[
        "--method",
        "tools/call",
        "--tool-name",
        "change.list",
        "--tool-args-json",
        r#"{"pageSize": 10}"#,
    ]);
    let list = structured(&list, "change.list");
    assert_eq!(list["total"], 1, "{}", show(&list));
    assert_eq!(list["changes"][0]["slug"], SLUG, "{}", show(&list));

    // resources/list: the change's parts are listed.
    let resources = inspector.result(&["--method", "resources/list"]);
    let uris: Vec<&str> =
        resources["resources"].as_array().into_iter().flatten().filter_map(|r| r["uri"].as_str()).collect();
    for uri in [proposal_uri.as_str(), &format!("change://{SLUG}/tasks"), "changes://active"] {
        assert!(uris.contains(&uri), "resources/list has no {uri}:\n{}", show(&resources));
    }

    // resources/read: the proposal, as it is on disk.
    let read = inspector.result(&["--method", "resources/read", "--uri", &proposal_uri]);
    let contents = read["contents"].as_array().expect("contents array");
    assert_eq!(contents.len(), 1, "{}", show(&read));
    assert_eq!(contents[0]["uri"], proposal_uri.as_str(), "{}", show(&read));
    assert_eq!(contents[0]["mimeType"], "text/markdown", "{}", show(&read));
    assert_eq!(contents[0]["text"], on_disk.as_str(), "resources/read is not proposal.md");

    // resources/templates/list: the four templates.
    let templates = inspector.result(&["--method", "resources/templates/list"]);
    let uri_templates: Vec<&str> = templates["resourceTemplates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["uriTemplate"].as_str())
        .collect();
    assert_eq!(
        uri_templates,
        [
            "change://{slug}/proposal",
            "change://{slug}/tasks",
            "change://{slug}/delta/{+path}",
            "change://{slug}/receipt"
        ],
        "{}",
        show(&templates)
    );

    // The workflow's prompts: listed, and `apply` gets a message naming the change and the tools.
    let prompts = inspector.result(&["--method", "prompts/list"]);
    let prompt_names: Vec<&str> =
        prompts["prompts"].as_array().into_iter().flatten().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(prompt_names, ["propose", "apply", "archive"], "{}", show(&prompts));
    let apply = inspector.result(&[
        "--method",
        "prompts/get",
        "--prompt-name",
        "apply",
        "--prompt-args",
        &format!("slug={SLUG}"),
    ]);
    let text = apply["messages"][0]["content"]["text"].as_str().unwrap_or_default();
    assert!(
        text.contains(&format!("`{SLUG}`")) && text.contains("`change.show`") && text.contains("`task.update`"),
        "{}",
        show(&apply)
    );

    // A tool error reaches the user as isError with the reason (exit 5).
    let (run, error) = inspector.fails(
        &["--method", "tools/call", "--tool-name", "change.show", "--tool-arg", "slug=no-such-change"],
        EXIT_TOOL_ERROR,
    );
    assert_eq!(error["error"]["code"], "tool_is_error", "{}", report(&run));
    let result: Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("no JSON result on stdout for the tool error ({e})\n{}", report(&run)));
    assert_eq!(result["result"]["isError"], true, "{}", report(&run));
    let text = result["result"]["content"][0]["text"].as_str().unwrap_or_default();
    assert!(text.starts_with("CHANGE_NOT_FOUND"), "{}", report(&run));
}

#[test]
fn inspector_cli_over_streamable_http() {
    walkthrough(Transport::StreamableHttp);
}

#[test]
fn inspector_cli_over_stateless_2026_07_28() {
    walkthrough(Transport::Stateless2026);
}

#[test]
fn inspector_cli_over_legacy_sse() {
    walkthrough(Transport::LegacySse);
}

/// A server started with `--auth-token NAME=TOKEN`: the CLI's `--header
/// "Authorization: Bearer TOKEN"` is the way in, on every transport; a wrong
/// token or none is refused as auth_required (exit 3), with the server's
/// reason where the transport carries it.
#[test]
fn inspector_cli_with_bearer_token() {
    const TOKEN: &str = "inspector-test-token-5d1c2a9e";
    let server = Server::builder().auth_token(&format!("inspector={TOKEN}")).start();

    for transport in Transport::ALL {
        let right = Inspector::new(&server, transport).bearer(TOKEN);
        let tools = right.result(&["--method", "tools/list"]);
        assert_eq!(tools["tools"].as_array().map(Vec::len), Some(TOOLS.len()), "{transport:?}: {}", show(&tools));

        // Over HTTP the 401's JSON-RPC body carries the reason; the SSE
        // transport's GET reports only the status.
        let (missing, invalid) = match transport {
            Transport::StreamableHttp => ("MISSING_TOKEN", "INVALID_TOKEN"),
            Transport::Stateless2026 | Transport::LegacySse => ("401", "401"),
        };
        for (inspector, reason) in [
            (Inspector::new(&server, transport).bearer("not-the-token"), invalid),
            (Inspector::new(&server, transport), missing),
        ] {
            let (run, error) = inspector.fails(&["--method", "tools/list"], EXIT_AUTH_REQUIRED);
            assert_eq!(error["error"]["code"], "auth_required", "{transport:?}\n{}", report(&run));
            let message = error["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains(reason), "{transport:?}: the error does not name {reason}\n{}", report(&run));
        }
    }

    // The token's principal is who acts: change.open without an owner takes
    // the lock as "inspector".
    let inspector = Inspector::new(&server, Transport::StreamableHttp).bearer(TOKEN);
    let opened = inspector.result(&[
        "--method",
        "tools/call",
        "--tool-name",
        "change.open",
        "--tool-arg",
        &format!("slug={SLUG}"),
        &format!("title={TITLE}"),
    ]);
    let opened = structured(&opened, "change.open");
    assert_eq!(opened["lock"]["owner"], "inspector", "{}", show(&opened));
}
