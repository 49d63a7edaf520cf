//! The server driven by the real `grpcurl` (installed by scripts/install-test-tools
//! into .tools/bin, which scripts/test puts first on PATH): reflection, a tool
//! call, health, and bearer auth, exactly as the README tells people to do it.
mod common;

use std::{
    path::Path,
    process::{Command, Output},
};

use common::{Server, grpcurl};

fn run(args: &[&str]) -> Output {
    let out = Command::new(grpcurl())
        .args(["-max-time", "10"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run grpcurl {args:?}: {e}"));
    eprintln!(
        "$ grpcurl {}\n[exit {:?}]\n{}{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout_ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "grpcurl {args:?} failed ({:?}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Descriptor sets for calls that must not depend on reflection (which the
/// server may guard with the token like any other service).
fn protosets(dir: &Path) -> (String, String) {
    let ours = dir.join("taskmcp.protoset");
    let health = dir.join("health.protoset");
    std::fs::write(&ours, task_mcp::pb::FILE_DESCRIPTOR_SET).unwrap();
    std::fs::write(&health, tonic_health::pb::FILE_DESCRIPTOR_SET).unwrap();
    (ours.display().to_string(), health.display().to_string())
}

#[test]
fn grpcurl_lists_and_describes_services_through_reflection() {
    let server = Server::start();
    let addr = server.grpcurl_addr();
    let services = stdout_ok(&["-plaintext", &addr, "list"]);
    for expected in ["taskmcp.v1.Changes", "taskmcp.v1.Resources", "grpc.health.v1.Health"] {
        assert!(services.lines().any(|l| l.trim() == expected), "{expected} not listed:\n{services}");
    }
    let methods = stdout_ok(&["-plaintext", &addr, "list", "taskmcp.v1.Changes"]);
    for m in [
        "OpenChange",
        "ListChanges",
        "ShowChange",
        "ValidateChange",
        "UpdateTasks",
        "ArchiveChange",
        "ArchiveChangeStream",
    ] {
        assert!(methods.contains(&format!("taskmcp.v1.Changes.{m}")), "{m} missing:\n{methods}");
    }
    let described = stdout_ok(&["-plaintext", &addr, "describe", "taskmcp.v1.Changes.OpenChange"]);
    assert!(described.contains("is a method"), "{described}");
    assert!(described.contains(".taskmcp.v1.OpenChangeRequest"), "{described}");
    assert!(described.contains(".taskmcp.v1.OpenChangeResponse"), "{described}");
    let message = stdout_ok(&["-plaintext", &addr, "describe", "taskmcp.v1.OpenChangeRequest"]);
    for field in ["title", "slug", "rationale", "owner", "ttl_seconds", "template"] {
        assert!(message.contains(field), "field {field} missing:\n{message}");
    }
}

#[test]
fn grpcurl_invokes_open_change_and_gets_json_back() {
    let server = Server::start();
    let addr = server.grpcurl_addr();
    let body = r#"{"title":"T","slug":"from-grpcurl","owner":"me"}"#;
    let out = stdout_ok(&["-plaintext", "-d", body, &addr, "taskmcp.v1.Changes/OpenChange"]);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"));
    assert_eq!(json["created"], true, "{json}");
    assert_eq!(json["change"]["slug"], "from-grpcurl", "{json}");
    assert_eq!(json["lock"]["owner"], "me", "{json}");
    assert!(server.workspace.join("changes/from-grpcurl/proposal.md").is_file());

    // And a server-streaming read of what it created.
    let read = stdout_ok(&[
        "-plaintext",
        "-d",
        r#"{"uri":"change://from-grpcurl/proposal"}"#,
        &addr,
        "taskmcp.v1.Resources/ReadResource",
    ]);
    let chunk: serde_json::Value = serde_json::from_str(&read).unwrap_or_else(|e| panic!("not JSON ({e}):\n{read}"));
    let text = chunk["text"].as_str().unwrap_or_else(|| panic!("a markdown chunk carries text: {chunk}"));
    let on_disk = std::fs::read_to_string(server.workspace.join("changes/from-grpcurl/proposal.md")).unwrap();
    assert_eq!(text, on_disk);
    assert_eq!(chunk["last"], true, "{chunk}");
}

#[test]
fn grpcurl_health_check_reports_serving() {
    let server = Server::start();
    let addr = server.grpcurl_addr();
    let out = stdout_ok(&["-plaintext", &addr, "grpc.health.v1.Health/Check"]);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"));
    assert_eq!(json["status"], "SERVING", "{json}");
    let out =
        stdout_ok(&["-plaintext", "-d", r#"{"service":"taskmcp.v1.Changes"}"#, &addr, "grpc.health.v1.Health/Check"]);
    assert!(out.contains("SERVING"), "per-service health: {out}");
}

#[test]
fn grpcurl_with_a_token_server_needs_the_bearer_header_except_for_health() {
    let server = Server::builder().auth_token("s3cret").start();
    let addr = server.grpcurl_addr();
    let dir = tempfile::tempdir().unwrap();
    let (ours, health) = protosets(dir.path());
    let body = r#"{"title":"T","slug":"from-grpcurl","owner":"me"}"#;

    // No token: refused as Unauthenticated, and nothing is created.
    let out = run(&["-plaintext", "-protoset", &ours, "-d", body, &addr, "taskmcp.v1.Changes/OpenChange"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "unauthenticated call succeeded");
    assert!(stderr.contains("Unauthenticated"), "expected Unauthenticated:\n{stderr}");
    assert!(!server.workspace.join("changes/from-grpcurl").exists());

    // A wrong token is refused the same way.
    let out = run(&[
        "-plaintext",
        "-protoset",
        &ours,
        "-H",
        "authorization: Bearer wrong",
        "-d",
        body,
        &addr,
        "taskmcp.v1.Changes/OpenChange",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Unauthenticated"));

    // Health needs no token.
    let out = stdout_ok(&["-plaintext", "-protoset", &health, &addr, "grpc.health.v1.Health/Check"]);
    assert!(out.contains("SERVING"), "{out}");

    // Reflection is guarded like any other service (as the README says) ...
    let out = run(&["-plaintext", &addr, "list"]);
    assert!(!out.status.success(), "reflection answered without a token");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Unauthenticated"),
        "expected Unauthenticated from reflection"
    );
    // ... and works with the header.
    let services = stdout_ok(&["-plaintext", "-H", "authorization: Bearer s3cret", &addr, "list"]);
    assert!(services.contains("taskmcp.v1.Changes"), "{services}");

    // With the header, through reflection as the README shows.
    let out = stdout_ok(&[
        "-plaintext",
        "-H",
        "authorization: Bearer s3cret",
        "-d",
        body,
        &addr,
        "taskmcp.v1.Changes/OpenChange",
    ]);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"));
    assert_eq!(json["created"], true, "{json}");
    assert_eq!(json["change"]["slug"], "from-grpcurl");
}

/// The health protocol's Watch of a service the server does not know is SERVICE_UNKNOWN with the
/// stream kept open (so a client learns when it appears), not an error ending the call; a
/// known service streams its status as before.
#[test]
fn grpcurl_watch_of_an_unknown_service_reports_service_unknown_and_stays_open() {
    let server = Server::start();
    let addr = server.grpcurl_addr();
    let watch = |service: &str| {
        let body = format!(r#"{{"service":"{service}"}}"#);
        // grpcurl's own deadline ends the watch: the stream does not end by itself.
        let out = run(&["-max-time", "2", "-plaintext", "-d", &body, &addr, "grpc.health.v1.Health/Watch"]);
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (stdout, stderr) = watch("no.such.Service");
    assert!(stdout.contains("SERVICE_UNKNOWN"), "no SERVICE_UNKNOWN:\n{stdout}{stderr}");
    assert!(stderr.contains("DeadlineExceeded") && !stderr.contains("NotFound"), "the watch ended early:\n{stderr}");
    let (stdout, stderr) = watch("taskmcp.v1.Workspace");
    assert!(stdout.contains("\"SERVING\""), "the workspace's status was not streamed:\n{stdout}{stderr}");
}
