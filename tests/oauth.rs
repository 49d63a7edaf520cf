//! task-mcp as an OAuth 2.1 resource server (`--oauth-issuer`), against a real authorization
//! server: npm `oidc-provider` (panva's certified OpenID Provider, pinned in .tools/oidc by
//! scripts/install-test-tools), run by tests/oauth/authorization_server.mjs on loopback. It
//! issues client_credentials access tokens as ES256-signed JWTs for the resources it is given.
//!
//! What holds: its tokens open both faces (HTTP and gRPC) as their `sub`; a token for another
//! resource, from another issuer, tampered with, or short of a required scope is refused (401,
//! or 403 `insufficient_scope`; UNAUTHENTICATED or PERMISSION_DENIED); a token past its `exp`
//! (no leeway) is refused on every face while its MCP session goes on under a fresh token of the
//! same `sub`; the RFC 9728 metadata and challenges lead the official Python and TypeScript
//! SDKs from a bare 401 to a working session; a key the issuer rotates in is fetched when a token
//! first names it; a misconfigured issuer stops the start with the reason; a separate gateway
//! and its service both check the token.
mod common;

use std::{
    net::TcpListener,
    path::Path,
    process::Command,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::Engine;
use common::{Auth, Server, StartFailure, assert_error, client_summary, oauth::AuthServer, run_bounded};
use serde_json::{Value, json};
use task_mcp::pb::ListChangesRequest;
use tonic::Code;

const SCOPES: &str = "changes:read changes:write";
/// The default client of authorization_server.mjs, which may ask for every scope.
const CLIENT: (&str, &str) = ("task-mcp-test", "test-secret");
/// A client allowed `changes:read` only.
const READER: (&str, &str) = ("reader", "reader-secret");

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A port free a moment ago: the resource identifier names the server's port, which must be
/// known before it starts. A start that loses the port to another process is retried.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind a free port").port()
}

struct Setup {
    auth: AuthServer,
    server: Server,
    resource: String,
}

/// The scope flags of [`setup`]: both scopes for every call.
const BOTH_SCOPES: [&str; 4] = ["--oauth-scope", "changes:read", "--oauth-scope", "changes:write"];

/// An authorization server issuing tokens for this server's resource and for `other`, and
/// task-mcp trusting it and requiring both scopes for every call; `extra` goes to task-mcp.
fn setup(as_args: &[&str], extra: &[&str]) -> Setup {
    setup_scoped(as_args, &BOTH_SCOPES, extra)
}

/// [`setup`] with task-mcp's scope flags given.
fn setup_scoped(as_args: &[&str], scope_flags: &[&str], extra: &[&str]) -> Setup {
    setup_with_env(as_args, scope_flags, extra, &[])
}

/// [`setup_scoped`] with variables set for task-mcp (`RUST_LOG`).
fn setup_with_env(as_args: &[&str], scope_flags: &[&str], extra: &[&str], env: &[(&str, &str)]) -> Setup {
    for attempt in 1..=3 {
        let port = free_port();
        let resource = format!("http://127.0.0.1:{port}/mcp");
        let mut args = vec!["--resource", &resource, "--resource", "http://127.0.0.1:1/other", "--scopes", SCOPES];
        args.extend(["--client", "task-mcp-test:test-secret", "--client", "reader:reader-secret:changes:read"]);
        args.extend(as_args);
        let auth = AuthServer::start(&args);
        let mut builder = Server::builder();
        for (key, value) in env {
            builder = builder.env(key, value);
        }
        let started = builder
            .http_listen(&format!("127.0.0.1:{port}"))
            .args(["--oauth-issuer", &auth.issuer, "--oauth-resource", &resource])
            .args(scope_flags.iter().copied())
            .args(extra.iter().copied())
            .try_start();
        match started {
            Ok(server) => return Setup { auth, server, resource },
            Err(StartFailure { logs, .. }) if logs.contains("Address already in use") && attempt < 3 => continue,
            Err(failure) => panic!(
                "task-mcp did not start with OAuth: {}\n--- server logs ---\n{}\n--- AS stderr ---\n{}",
                failure.why,
                failure.logs,
                auth.stderr_text()
            ),
        }
    }
    unreachable!("the loop returns or panics")
}

async fn post(url: &str, token: Option<&str>, body: Value) -> reqwest::Response {
    let mut req = reqwest::Client::new().post(url).json(&body);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req.send().await.expect("POST")
}

fn challenge(res: &reqwest::Response) -> String {
    res.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
}

fn jwt_part(token: &str, index: usize) -> Value {
    let part = token.split('.').nth(index).expect("a JWT has three parts");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON")
}

#[tokio::test]
async fn tokens_from_the_issuer_open_both_faces_and_every_other_token_is_refused() {
    let Setup { auth, server, resource } = setup(&[], &["--auth-token", "ops=static-token"]);
    let base = server.http_base();
    let open_url = format!("{base}/v1/tools/change.open");

    // No token: the challenge leads to the metadata, which leads to the issuer.
    let bare = post(&open_url, None, json!({"slug": "bare", "title": "t"})).await;
    assert_eq!(bare.status(), 401);
    let metadata_url = format!("{base}/.well-known/oauth-protected-resource/mcp");
    assert_eq!(
        challenge(&bare),
        format!("Bearer realm=\"task-mcp\", scope=\"{SCOPES}\", resource_metadata=\"{metadata_url}\"")
    );
    for url in [metadata_url.clone(), format!("{base}/.well-known/oauth-protected-resource")] {
        let doc: Value = reqwest::get(&url).await.expect("GET metadata").json().await.expect("metadata JSON");
        assert_eq!(doc["resource"], resource.as_str(), "{url}: {doc}");
        assert_eq!(doc["authorization_servers"], json!([auth.issuer]), "{url}: {doc}");
        assert_eq!(doc["scopes_supported"], json!(["changes:read", "changes:write"]), "{url}: {doc}");
        assert_eq!(doc["bearer_methods_supported"], json!(["header"]), "{url}: {doc}");
    }

    // The issuer's token for this resource: HTTP and gRPC, as the client it was issued to.
    let token = auth.token(CLIENT, &resource, SCOPES).await;
    assert_eq!(jwt_part(&token, 1)["aud"], resource.as_str());
    let opened =
        post(&open_url, Some(&token), json!({"slug": "by-oauth", "title": "Opened with an access token"})).await;
    assert_eq!(opened.status(), 200, "{}", opened.text().await.unwrap_or_default());
    let mut grpc = server.changes_with(Auth::bearer(&token)).await;
    let listed = grpc
        .list_changes(ListChangesRequest { page_size: 10, ..Default::default() })
        .await
        .expect("ListChanges with the access token")
        .into_inner();
    assert!(listed.changes.iter().any(|c| c.slug == "by-oauth"), "{listed:?}");
    let logs = server.logs();
    assert!(
        logs.lines().any(|l| l.contains("call answered") && l.contains("\"principal\":\"task-mcp-test\"")),
        "no call answered as the token's sub:\n{logs}"
    );
    // The configured tokens keep working beside the issuer's.
    let ops =
        post(&open_url, Some("static-token"), json!({"slug": "by-ops", "title": "Opened with a static token"})).await;
    assert_eq!(ops.status(), 200, "{}", ops.text().await.unwrap_or_default());

    // Refused with 401 `invalid_token`: a token for another resource (RFC 8707: never
    // accepted, never passed through), one tampered with, one from another issuer.
    let other_resource = auth.token(CLIENT, "http://127.0.0.1:1/other", SCOPES).await;
    let mut tampered = token.clone();
    let last = tampered.pop().expect("non-empty");
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let stranger = AuthServer::start(&["--resource", &resource, "--scopes", SCOPES]);
    let foreign = stranger.token(CLIENT, &resource, SCOPES).await;
    for (what, bad) in [("another resource", &other_resource), ("tampered", &tampered), ("another issuer", &foreign)] {
        let res = post(&open_url, Some(bad), json!({"slug": "refused", "title": "t"})).await;
        assert_eq!(res.status(), 401, "{what}");
        assert!(challenge(&res).contains("error=\"invalid_token\""), "{what}: {}", challenge(&res));
        assert!(challenge(&res).contains(&format!("resource_metadata=\"{metadata_url}\"")), "{what}");
        let body: Value = res.json().await.expect("JSON error");
        assert_eq!(body["reason"], "INVALID_TOKEN", "{what}: {body}");
        let mut client = server.changes_with(Auth::bearer(bad)).await;
        let status = client.list_changes(ListChangesRequest::default()).await.expect_err(what);
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
    }

    // A genuine token short of a scope: 403 `insufficient_scope` naming what to ask for.
    let reader = auth.token(READER, &resource, "changes:read").await;
    let res = post(&open_url, Some(&reader), json!({"slug": "refused", "title": "t"})).await;
    assert_eq!(res.status(), 403);
    assert_eq!(
        challenge(&res),
        format!(
            "Bearer realm=\"task-mcp\", error=\"insufficient_scope\", scope=\"{SCOPES}\", \
             resource_metadata=\"{metadata_url}\""
        )
    );
    let body: Value = res.json().await.expect("JSON error");
    assert_eq!((&body["code"], &body["reason"]), (&json!("PERMISSION_DENIED"), &json!("INSUFFICIENT_SCOPE")), "{body}");
    let mut client = server.changes_with(Auth::bearer(&reader)).await;
    let status = client.list_changes(ListChangesRequest::default()).await.expect_err("reader over gRPC");
    let info = assert_error(&status, Code::PermissionDenied, "INSUFFICIENT_SCOPE");
    assert_eq!(info.metadata.get("required_scopes").map(String::as_str), Some(SCOPES));
    let on_disk = std::fs::read_dir(server.workspace.join("changes")).expect("changes dir");
    let slugs: Vec<String> = on_disk.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
    assert!(!slugs.iter().any(|s| s == "refused" || s == "bare"), "a refused call wrote: {slugs:?}");

    // The refusals are counted by reason, as operators' dashboards read them.
    let metrics_addr = server.metrics_addr.expect("metrics listener");
    let exposition =
        reqwest::get(format!("http://{metrics_addr}/metrics")).await.expect("scrape").text().await.expect("text");
    for reason in ["insufficient_scope", "invalid"] {
        assert!(
            exposition
                .lines()
                .any(|l| l.starts_with("auth_attempts_total{") && l.contains(&format!("reason=\"{reason}\""))),
            "no auth_attempts_total with reason {reason}:\n{exposition}"
        );
    }
}

/// With `--oauth-write-scope`, a token holding only the read scope reads on every face and is
/// refused every call that would change the workspace, before the change is touched.
#[tokio::test]
async fn a_token_without_the_write_scope_reads_and_cannot_write() {
    let Setup { auth, server, resource } =
        setup_scoped(&[], &["--oauth-scope", "changes:read", "--oauth-write-scope", "changes:write"], &[]);
    let base = server.http_base();
    let writer = auth.token(CLIENT, &resource, SCOPES).await;
    let opened =
        post(&format!("{base}/v1/tools/change.open"), Some(&writer), json!({"slug": "written", "title": "t"})).await;
    assert_eq!(opened.status(), 200, "{}", opened.text().await.unwrap_or_default());

    let reader = auth.token(READER, &resource, "changes:read").await;
    // Reads pass: REST, gRPC, MCP.
    let listed = post(&format!("{base}/v1/tools/change.list"), Some(&reader), json!({})).await;
    assert_eq!(listed.status(), 200, "{}", listed.text().await.unwrap_or_default());
    let mut grpc = server.changes_with(Auth::bearer(&reader)).await;
    grpc.list_changes(ListChangesRequest::default()).await.expect("ListChanges with the read scope");
    let mut mcp =
        common::mcp::Mcp::connect(reqwest::Client::new(), server.mcp_url(), Some(&reader), "2025-11-25", "reader")
            .await;
    let shown = mcp.call("change.show", json!({"slug": "written"})).await;
    assert_ne!(shown["isError"], true, "{shown}");

    // Writes are refused, typed, on each face; nothing reaches the workspace. Over HTTP the
    // refusal is MCP's scope challenge, naming the scopes to ask for (step-up).
    let step_up = format!(
        "Bearer realm=\"task-mcp\", error=\"insufficient_scope\", scope=\"{SCOPES}\", \
         resource_metadata=\"{base}/.well-known/oauth-protected-resource/mcp\""
    );
    let res =
        post(&format!("{base}/v1/tools/change.open"), Some(&reader), json!({"slug": "read-only", "title": "t"})).await;
    assert_eq!(res.status(), 403);
    assert_eq!(challenge(&res), step_up);
    let body: Value = res.json().await.expect("JSON error");
    assert_eq!((&body["code"], &body["reason"]), (&json!("PERMISSION_DENIED"), &json!("INSUFFICIENT_SCOPE")), "{body}");
    let status = grpc
        .open_change(task_mcp::pb::OpenChangeRequest {
            slug: "read-only".into(),
            title: "t".into(),
            ..Default::default()
        })
        .await
        .expect_err("OpenChange with the read scope");
    let info = assert_error(&status, Code::PermissionDenied, "INSUFFICIENT_SCOPE");
    assert_eq!(info.metadata.get("required_scopes").map(String::as_str), Some(SCOPES));
    let grpc_challenge = status.metadata().get("www-authenticate").and_then(|v| v.to_str().ok());
    assert_eq!(grpc_challenge, Some(step_up.as_str()), "the gRPC refusal carries the same step-up challenge");
    let archive = mcp
        .post(json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                     "params": {"name": "change.archive", "arguments": {"slug": "written"}}}))
        .await;
    assert_eq!(archive.status(), 403);
    assert_eq!(challenge(&archive), step_up);
    let archive: Value = archive.json().await.expect("JSON-RPC error");
    assert_eq!(archive["error"]["data"]["reason"], "INSUFFICIENT_SCOPE", "{archive}");
    // The session goes on: a read after the refusal is answered.
    let shown = mcp.call("change.show", json!({"slug": "written"})).await;
    assert_ne!(shown["isError"], true, "{shown}");
    // The legacy transport (2024-11-05) predates MCP authorization, so no client of it could act
    // on a step-up challenge: its POST is taken, and the service's refusal reaches the model as
    // the call's failure, named, on the session's stream.
    let (mut sse, endpoint) =
        common::mcp::legacy_session(reqwest::Client::new().get(format!("{base}/sse")).bearer_auth(&reader)).await;
    let call = json!({"jsonrpc": "2.0", "id": "legacy", "method": "tools/call",
                      "params": {"name": "change.open", "arguments": {"slug": "read-only", "title": "t"}}});
    let taken = reqwest::Client::new().post(format!("{base}{endpoint}")).bearer_auth(&reader).json(&call).send().await;
    assert_eq!(taken.expect("POST /messages").status(), 202);
    let answer = common::mcp::read_messages_until(&mut sse, &mut String::new(), |m| m["id"] == "legacy").await;
    assert_eq!(answer["result"]["isError"], true, "{answer}");
    let text = answer["result"]["content"][0]["text"].as_str().unwrap_or_default();
    assert!(text.starts_with("INSUFFICIENT_SCOPE: "), "{answer}");
    assert!(!server.workspace.join("changes/read-only").exists());
    assert!(
        server.workspace.join("changes/written/proposal.md").is_file(),
        "the archive was refused, yet the change moved"
    );

    // The metadata asks for both scopes up front.
    let doc: Value = reqwest::get(format!("{base}/.well-known/oauth-protected-resource/mcp"))
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    assert_eq!(doc["scopes_supported"], json!(["changes:read", "changes:write"]));
}

/// The instant a token whose claim is `exp` stops being good: a server allowing no leeway
/// accepts it while its clock, in whole seconds, is at most `exp`.
fn end_of_life(exp: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(exp + 1)
}

/// Runs `call` with a fresh token of `client` and returns the token and what `call` gave, once
/// a run ended before that token's `exp`: what it saw then is what a valid token gets, however
/// slow the machine. A run that ended later is not judged; the next takes a fresh token.
async fn while_valid<T>(
    auth: &AuthServer,
    client: (&str, &str),
    resource: &str,
    scope: &str,
    mut call: impl AsyncFnMut(&str) -> T,
) -> (String, T) {
    for _ in 0..5 {
        let token = auth.token(client, resource, scope).await;
        let exp = jwt_part(&token, 1)["exp"].as_u64().expect("exp claim");
        let seen = call(&token).await;
        if SystemTime::now() < UNIX_EPOCH + Duration::from_secs(exp) {
            return (token, seen);
        }
    }
    panic!("five tokens of {} in a row expired before the calls made with them were answered", client.0)
}

/// A third client of the authorization server, with every scope.
const OTHER: (&str, &str) = ("other", "other-secret");

/// With `--oauth-leeway-seconds 0` a token is good until its `exp` and no longer: past it, the
/// token that opened both faces is refused on each (its cached acceptance ends too), and the
/// debug log says why. An MCP session it opened goes on under a fresh token of the same
/// client, since a session belongs to the token's `sub`, not to the token; another client's
/// token does not get in.
#[tokio::test]
async fn an_expired_token_is_refused_on_every_face_and_its_session_goes_on_with_a_fresh_one() {
    let Setup { auth, server, resource } = setup_with_env(
        &["--ttl-seconds", "3", "--client", &format!("{}:{}", OTHER.0, OTHER.1)],
        &BOTH_SCOPES,
        &["--oauth-leeway-seconds", "0"],
        &[("RUST_LOG", "info,task_mcp::oauth=debug")],
    );
    let list_url = format!("{}/v1/tools/change.list", server.http_base());
    let list_call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                           "params": {"name": "change.list", "arguments": {}}});

    // Before `exp`, the token opens REST, gRPC and an MCP session.
    let (token, (rest, grpc_listed, mut grpc, mut mcp)) =
        while_valid(&auth, CLIENT, &resource, SCOPES, async |token: &str| {
            let mcp = common::mcp::Mcp::connect(
                reqwest::Client::new(),
                server.mcp_url(),
                Some(token),
                "2025-11-25",
                "short-lived",
            )
            .await;
            let rest = post(&list_url, Some(token), json!({})).await.status();
            let mut grpc = server.changes_with(Auth::bearer(token)).await;
            let listed = grpc.list_changes(ListChangesRequest::default()).await.map(|_| ());
            (rest, listed, grpc, mcp)
        })
        .await;
    let claims = jwt_part(&token, 1);
    let exp = claims["exp"].as_u64().expect("exp claim");
    assert_eq!(exp - claims["iat"].as_u64().expect("iat claim"), 3, "the AS's --ttl-seconds 3: {claims}");
    assert_eq!(rest, 200, "REST before exp");
    grpc_listed.expect("gRPC before exp");

    // Past `exp` by the token's own claim (both processes read this host's clock).
    while let Ok(left) = end_of_life(exp).duration_since(SystemTime::now()) {
        tokio::time::sleep(left).await;
    }
    let res = post(&list_url, Some(&token), json!({})).await;
    assert_eq!(res.status(), 401, "REST past exp");
    assert!(challenge(&res).contains("error=\"invalid_token\""), "REST: {}", challenge(&res));
    let body: Value = res.json().await.expect("JSON error");
    assert_eq!(body["reason"], "INVALID_TOKEN", "{body}");
    let status = grpc.list_changes(ListChangesRequest::default()).await.expect_err("gRPC past exp");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let grpc_challenge = status.metadata().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(grpc_challenge.contains("error=\"invalid_token\""), "gRPC: {status:?}");
    let res = mcp.post(list_call.clone()).await;
    assert_eq!(res.status(), 401, "MCP past exp");
    assert!(challenge(&res).contains("error=\"invalid_token\""), "MCP: {}", challenge(&res));
    let logs = server.logs();
    assert!(
        logs.lines().any(|l| l.contains("access token refused") && l.contains("ExpiredSignature")),
        "no debug line says the token expired:\n{logs}"
    );

    // Another client's token, good for every call, cannot take the session over ...
    let session = mcp.session.clone();
    let (_, intruder) = while_valid(&auth, OTHER, &resource, SCOPES, async |other: &str| {
        let res = reqwest::Client::new()
            .post(server.mcp_url())
            .bearer_auth(other)
            .header("accept", common::mcp::ACCEPT_BOTH)
            .header("mcp-session-id", &session)
            .header("mcp-protocol-version", "2025-11-25")
            .json(&list_call)
            .send()
            .await
            .expect("POST /mcp");
        res.status()
    })
    .await;
    assert_eq!(intruder, 404, "another sub's token on the session");
    // ... and a fresh token of the same client carries it on.
    let (_, res) = while_valid(&auth, CLIENT, &resource, SCOPES, async |fresh: &str| {
        mcp.set_token(fresh);
        mcp.post(list_call.clone()).await
    })
    .await;
    assert_eq!(res.status(), 200, "the session under a fresh token");
    let text = res.text().await.expect("body");
    let answer = common::mcp::sse_messages(&text)
        .into_iter()
        .next()
        .or_else(|| serde_json::from_str(&text).ok())
        .unwrap_or_else(|| panic!("no JSON-RPC answer: {text}"));
    assert_eq!(answer["id"], 2, "{answer}");
    assert_ne!(answer["result"]["isError"], true, "{answer}");
    assert_eq!(mcp.session, session);
}

#[test]
fn the_python_sdk_goes_from_a_bare_401_to_a_session_with_the_issuers_token() {
    let python = repo().join(".tools/venv/bin/python");
    assert!(python.is_file(), "{} is missing: run scripts/install-test-tools", python.display());
    let setup = setup(&[], &[]);
    let mut cmd = Command::new(&python);
    cmd.arg(repo().join("tests/python/oauth_client.py"))
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    sdk_discovers_and_calls("Python SDK OAuth client", cmd, &setup, "oauth-opened");
}

#[test]
fn the_typescript_sdk_goes_from_a_bare_401_to_a_session_with_the_issuers_token() {
    let sdk = repo().join(".tools/ts-sdk");
    assert!(sdk.join("node_modules/@modelcontextprotocol/sdk").is_dir(), "run scripts/install-test-tools");
    let setup = setup(&[], &[]);
    let mut cmd = Command::new(common::node22());
    // This SDK asks for the scopes it is configured with, not those of the challenge (see the script).
    cmd.arg(repo().join("tests/typescript/oauth_client.mjs"))
        .args(["--scope", SCOPES, "--sdk"])
        .arg(&sdk)
        .env_remove("NODE_OPTIONS");
    sdk_discovers_and_calls("TypeScript SDK OAuth client", cmd, &setup, "oauth-opened-ts");
}

/// Runs an SDK's OAuth client script (tests/python/oauth_client.py, tests/typescript/
/// oauth_client.mjs) with nothing but the MCP URL, its credentials and the issuer, and checks
/// the discovery it made, in order: refused, our metadata, the issuer's, a token, admitted; then
/// that the session opened the change `slug` with the scopes the challenge named.
fn sdk_discovers_and_calls(what: &str, mut cmd: Command, setup: &Setup, slug: &str) {
    let Setup { auth, server, .. } = setup;
    cmd.args(["--url", &server.mcp_url(), "--issuer", &auth.issuer]).args([
        "--client-id",
        CLIENT.0,
        "--client-secret",
        CLIENT.1,
        "--slug",
        slug,
    ]);
    let out = tempfile::Builder::new().prefix("oauth-sdk-").tempdir().expect("tempdir");
    let bound = Duration::from_secs(120);
    let run = run_bounded(cmd, bound, out.path());
    let report = client_summary(what, &run, bound);
    let seen: Vec<(String, String, u64)> = report["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .map(|r| {
            (
                r["method"].as_str().unwrap_or_default().to_string(),
                r["url"].as_str().unwrap_or_default().to_string(),
                r["status"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    let base = server.http_base();
    let want = [
        ("POST".to_string(), server.mcp_url(), 401),
        ("GET".to_string(), format!("{base}/.well-known/oauth-protected-resource/mcp"), 200),
        ("GET".to_string(), format!("{}/.well-known/oauth-authorization-server", auth.issuer), 200),
        ("POST".to_string(), auth.token_endpoint.clone(), 200),
        ("POST".to_string(), server.mcp_url(), 200),
    ];
    assert!(seen.starts_with(&want), "{what}: the requests were:\n{seen:#?}\nexpected to begin with:\n{want:#?}");
    assert!(report["tools"].as_array().is_some_and(|t| t.iter().any(|n| n == "change.open")), "{report}");
    assert_eq!(report["open"]["isError"], false, "{report}");
    assert_eq!(report["scope"], SCOPES, "{what} asked for the scopes the challenge named: {report}");
    assert!(server.workspace.join(format!("changes/{slug}/proposal.md")).is_file(), "{slug} is not on disk");
}

#[tokio::test]
async fn a_key_the_issuer_rotates_in_is_fetched_when_a_token_first_names_it() {
    let keys = tempfile::Builder::new().prefix("oauth-keys-").tempdir().expect("tempdir");
    let keys_file = keys.path().join("keys.json").display().to_string();
    let Setup { auth, server, resource } = setup(&["--keys-file", &keys_file], &[]);
    let url = format!("{}/v1/tools/change.list", server.http_base());
    let before = auth.token(CLIENT, &resource, SCOPES).await;
    assert_eq!(post(&url, Some(&before), json!({})).await.status(), 200);

    // The issuer restarts on the same port with a new signing key in front of the old one.
    let port = auth.port().to_string();
    drop(auth);
    let rotated = AuthServer::start(&[
        "--port",
        &port,
        "--keys-file",
        &keys_file,
        "--rotate",
        "--resource",
        &resource,
        "--scopes",
        SCOPES,
    ]);
    let after = rotated.token(CLIENT, &resource, SCOPES).await;
    let (old_kid, new_kid) = (jwt_part(&before, 0)["kid"].clone(), jwt_part(&after, 0)["kid"].clone());
    assert_ne!(old_kid, new_kid, "the rotation did not change the signing key");

    // The first call names a key the server has not seen: refused, and the keys are fetched.
    // A later one passes. Polled once a second, well inside the failed-authentication budget.
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let status = post(&url, Some(&after), json!({})).await.status().as_u16();
        statuses.push(status);
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(statuses.last(), Some(&200), "the rotated key was never accepted: {statuses:?}\n{}", server.logs());
    assert!(
        server.logs().lines().any(|l| l.contains("oauth: signing keys changed") && l.contains("unknown key id")),
        "no log line for the key change:\n{}",
        server.logs()
    );
    // The old key is still published, so tokens it signed stay good until they expire.
    assert_eq!(post(&url, Some(&before), json!({})).await.status(), 200);
    let _ = rotated.stderr_text();
}

/// `grpcurl -v` calling ListChanges with `authorization` (an `Authorization` value); everything
/// it printed, and the `www-authenticate` values among the metadata the server answered with.
fn grpcurl_list(server: &Server, protoset: &Path, authorization: Option<&str>) -> (String, Vec<String>) {
    let mut cmd = Command::new(common::grpcurl());
    cmd.args(["-max-time", "10", "-v", "-plaintext", "-protoset"]).arg(protoset);
    if let Some(authorization) = authorization {
        cmd.args(["-H", &format!("authorization: {authorization}")]);
    }
    let out =
        cmd.args(["-d", "{}", &server.grpcurl_addr(), "taskmcp.v1.Changes/ListChanges"]).output().expect("run grpcurl");
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // What grpcurl sent is printed first ("Request metadata to send:"); the answer after.
    let answered = printed.split_once("Response headers received:").map_or("", |(_, answer)| answer);
    let challenges =
        answered.lines().filter_map(|l| l.strip_prefix("www-authenticate: ")).map(str::to_string).collect();
    (printed, challenges)
}

/// With OAuth, the gRPC service's refusals carry the challenge the HTTP face sends for the same
/// credentials, as `www-authenticate` metadata, value for value: no bearer token (no `error`),
/// a token refused (`invalid_token`), a genuine token short of a scope (`insufficient_scope`,
/// PERMISSION_DENIED). Read with the real grpcurl, as a gRPC client sees it.
#[tokio::test]
async fn grpc_refusals_carry_the_bearer_challenge_the_http_face_sends() {
    let Setup { auth, server, resource } = setup(&[], &[]);
    let url = format!("{}/v1/tools/change.list", server.http_base());
    let dir = tempfile::Builder::new().prefix("oauth-grpcurl-").tempdir().expect("tempdir");
    let protoset = dir.path().join("taskmcp.protoset");
    std::fs::write(&protoset, task_mcp::pb::FILE_DESCRIPTOR_SET).expect("write the protoset");
    let token = auth.token(CLIENT, &resource, SCOPES).await;
    let mut tampered = token.clone();
    let last = tampered.pop().expect("non-empty");
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let reader = auth.token(READER, &resource, "changes:read").await;

    let cases = [
        ("no credentials", None, 401, "Unauthenticated", None),
        ("Basic credentials", Some("Basic dGFzazpwdw==".to_string()), 401, "Unauthenticated", None),
        ("a tampered token", Some(format!("Bearer {tampered}")), 401, "Unauthenticated", Some("invalid_token")),
        (
            "a token short of a scope",
            Some(format!("Bearer {reader}")),
            403,
            "PermissionDenied",
            Some("insufficient_scope"),
        ),
    ];
    for (what, authorization, http_status, grpc_code, error) in cases {
        let mut req = reqwest::Client::new().post(&url).json(&json!({}));
        if let Some(authorization) = &authorization {
            req = req.header("authorization", authorization);
        }
        let res = req.send().await.expect("POST");
        assert_eq!(res.status(), http_status, "{what} over HTTP");
        let http = challenge(&res);
        match error {
            Some(error) => assert!(http.contains(&format!("error=\"{error}\"")), "{what}: {http}"),
            None => assert!(!http.contains("error="), "{what}: {http}"),
        }
        let (printed, grpc) = grpcurl_list(&server, &protoset, authorization.as_deref());
        assert!(printed.contains(&format!("Code: {grpc_code}")), "{what}: grpcurl printed:\n{printed}");
        assert_eq!(grpc, [http], "{what}: the gRPC challenge is not the HTTP one; grpcurl printed:\n{printed}");
    }
    // An accepted call carries none.
    let (printed, grpc) = grpcurl_list(&server, &protoset, Some(&format!("Bearer {token}")));
    assert!(printed.contains("Response trailers received:") && !printed.contains("ERROR:"), "{printed}");
    assert!(grpc.is_empty(), "{printed}");
}

/// Without OAuth the gRPC refusal is as it was: UNAUTHENTICATED with no challenge metadata.
#[test]
fn without_oauth_a_grpc_refusal_carries_no_challenge() {
    let server = Server::builder().auth_token("s3cret").start();
    let dir = tempfile::Builder::new().prefix("oauth-grpcurl-").tempdir().expect("tempdir");
    let protoset = dir.path().join("taskmcp.protoset");
    std::fs::write(&protoset, task_mcp::pb::FILE_DESCRIPTOR_SET).expect("write the protoset");
    for authorization in [None, Some("Bearer wrong")] {
        let (printed, challenges) = grpcurl_list(&server, &protoset, authorization);
        assert!(printed.contains("Code: Unauthenticated"), "{authorization:?}: {printed}");
        assert!(challenges.is_empty(), "without OAuth, {authorization:?} was challenged {challenges:?}:\n{printed}");
    }
}

#[test]
fn a_misconfigured_issuer_stops_the_start_with_the_reason() {
    let auth = AuthServer::start(&["--resource", "http://127.0.0.1:1/mcp"]);
    let localhost_alias = auth.issuer.replace("127.0.0.1", "localhost");
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "--oauth-issuer",
                "http://127.0.0.1:1",
                "--oauth-resource",
                "http://127.0.0.1:1/mcp",
                "--oauth-wait-seconds",
                "0",
            ],
            "discovering the authorization server http://127.0.0.1:1",
        ),
        (
            &["--oauth-issuer", "http://auth.example.com", "--oauth-resource", "http://127.0.0.1:1/mcp"],
            "--oauth-issuer http://auth.example.com: must be https",
        ),
        // The issuer's metadata names `http://127.0.0.1:PORT`, not the alias configured.
        (
            &["--oauth-issuer", &localhost_alias, "--oauth-resource", "http://127.0.0.1:1/mcp"],
            "it must be the same string",
        ),
        (&["--oauth-issuer", &auth.issuer], "--oauth-resource"),
    ];
    for (args, expected) in cases {
        let failure = match Server::builder().args(args.iter().copied()).try_start() {
            Ok(_) => panic!("started with {args:?}"),
            Err(failure) => failure,
        };
        assert!(failure.status.is_some_and(|s| !s.success()), "{args:?}: {failure:?}");
        assert!(failure.logs.contains(expected), "{args:?}: the error does not say {expected:?}:\n{}", failure.logs);
    }
}

/// `task-mcp gateway` in front of a separate service: both take the same `--oauth-*` flags, the
/// gateway admits the caller and the service checks the forwarded token again, as its own.
#[tokio::test]
async fn a_separate_gateway_and_its_service_both_accept_the_issuers_tokens() {
    // Nothing here follows the metadata, so the resource need not be the gateway's real URL.
    let resource = "http://127.0.0.1:1/mcp";
    let auth = AuthServer::start(&[
        "--resource",
        resource,
        "--scopes",
        SCOPES,
        "--client",
        "task-mcp-test:test-secret",
        "--client",
        "reader:reader-secret:changes:read",
    ]);
    let oauth_flags = [
        "--oauth-issuer",
        &auth.issuer,
        "--oauth-resource",
        resource,
        "--oauth-scope",
        "changes:read",
        "--oauth-scope",
        "changes:write",
    ];
    let service = Server::builder().args(oauth_flags).start();
    let gateway = common::Gateway::start(&service.endpoint(), &oauth_flags, &[]);
    let url = format!("http://{}/v1/tools/change.open", gateway.http_addr);

    let token = auth.token(CLIENT, resource, SCOPES).await;
    let res = post(&url, Some(&token), json!({"slug": "split-oauth", "title": "Through the gateway"})).await;
    assert_eq!(res.status(), 200, "{}\n--- gateway ---\n{}", res.text().await.unwrap_or_default(), gateway.logs());
    assert!(
        service.logs().lines().any(|l| l.contains("OpenChange") && l.contains("\"principal\":\"task-mcp-test\"")),
        "the service did not run the call as the token's sub:\n{}",
        service.logs()
    );
    assert!(service.workspace.join("changes/split-oauth/proposal.md").is_file());

    let reader = auth.token(READER, resource, "changes:read").await;
    let res = post(&url, Some(&reader), json!({"slug": "split-refused", "title": "t"})).await;
    assert_eq!(res.status(), 403);
    assert!(challenge(&res).contains("error=\"insufficient_scope\""), "{}", challenge(&res));
    let res = post(&url, None, json!({"slug": "split-refused", "title": "t"})).await;
    assert_eq!(res.status(), 401);
    assert!(
        challenge(&res).contains("resource_metadata=\"http://127.0.0.1:1/.well-known/oauth-protected-resource/mcp\"")
    );
    assert!(!service.workspace.join("changes/split-refused").exists());

    // A token the gateway accepts and its service does not (tiers configured apart, or a token
    // that expired between the two checks): the service's refusal reaches the client as a 401
    // with the service's challenge, as RFC 6750 wants of every 401, not a bare one.
    let mut lenient_flags = oauth_flags.to_vec();
    lenient_flags.extend(["--auth-token", "stranger=known-to-the-gateway-only"]);
    let lenient = common::Gateway::start(&service.endpoint(), &lenient_flags, &[]);
    let url = format!("http://{}/v1/tools/change.open", lenient.http_addr);
    let res = post(&url, Some("known-to-the-gateway-only"), json!({"slug": "split-refused", "title": "t"})).await;
    assert_eq!(res.status(), 401, "the service refuses what only the gateway knows");
    let passed_on = challenge(&res);
    assert!(passed_on.contains("error=\"invalid_token\""), "{passed_on}");
    assert!(passed_on.contains("resource_metadata=\"http://127.0.0.1:1/.well-known/oauth-protected-resource/mcp\""));
    assert!(!service.workspace.join("changes/split-refused").exists());

    // Over MCP too: the spec wants a 401 for an invalid or expired token, and an MCP client
    // refreshes its token on that status, where a JSON-RPC error under a 200 only fails the
    // call. The gateway answers `initialize` itself, so the session opens; the tool call is
    // the first request the service sees.
    let mcp_url = format!("http://{}/mcp", lenient.http_addr);
    let stranger = |version: &str| {
        let (url, version) = (mcp_url.clone(), version.to_string());
        async move {
            common::mcp::Mcp::connect(reqwest::Client::new(), url, Some("known-to-the-gateway-only"), &version, "x")
                .await
        }
    };
    let mcp = stranger("2025-11-25").await;
    let open = json!({"name": "change.open", "arguments": {"slug": "split-refused", "title": "t"}});
    let res = mcp.post(json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": open})).await;
    let (status, passed_on) = (res.status(), challenge(&res));
    let body: Value = res.json().await.expect("a JSON-RPC body");
    assert_eq!(status, 401, "a session's call the service refused: {body}");
    assert!(passed_on.contains("error=\"invalid_token\""), "{passed_on}");
    assert!(passed_on.contains("resource_metadata=\"http://127.0.0.1:1/.well-known/oauth-protected-resource/mcp\""));
    assert_eq!((&body["id"], &body["error"]["data"]["code"]), (&json!(7), &json!("UNAUTHENTICATED")), "{body}");

    // A batch (2025-03-26) travels under one token: a refusal of it for one request is the
    // batch's 401.
    let old = stranger("2025-03-26").await;
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "ping"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": open},
    ]);
    let res = old.post(batch).await;
    let (status, passed_on) = (res.status(), challenge(&res));
    let body: Value = res.json().await.expect("a JSON-RPC batch");
    assert_eq!(status, 401, "a batch with a call the service refused: {body}");
    assert!(passed_on.contains("error=\"invalid_token\""), "{passed_on}");
    assert_eq!(body[1]["error"]["data"]["code"], "UNAUTHENTICATED", "{body}");

    // The stateless 2026-07-28 form, the same.
    let stateless = json!({"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": {
        "name": "change.open", "arguments": {"slug": "split-refused", "title": "t"},
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}},
    }});
    let res = reqwest::Client::new()
        .post(&mcp_url)
        .header("accept", common::mcp::ACCEPT_BOTH)
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "change.open")
        .bearer_auth("known-to-the-gateway-only")
        .json(&stateless)
        .send()
        .await
        .expect("POST /mcp");
    let (status, passed_on) = (res.status(), challenge(&res));
    let body: Value = res.json().await.expect("a JSON-RPC body");
    assert_eq!(status, 401, "a stateless call the service refused: {body}");
    assert!(passed_on.contains("error=\"invalid_token\""), "{passed_on}");
    assert_eq!(body["id"], 8, "{body}");
    assert!(!service.workspace.join("changes/split-refused").exists());

    // A call the service refuses for another reason is still a tool's failure under a 200:
    // the model reads it and corrects itself.
    let mut mcp = common::mcp::Mcp::connect(reqwest::Client::new(), mcp_url, Some(&token), "2025-11-25", "full").await;
    let answer =
        mcp.request("tools/call", json!({"name": "change.show", "arguments": {"slug": "no-such-change"}})).await;
    assert_eq!(answer["result"]["isError"], true, "{answer}");
}

/// An issuer that is not up yet (started beside the server, as in a pod or a compose file) is
/// waited for within `--oauth-wait-seconds`, rather than stopping the start.
#[tokio::test]
async fn the_start_waits_for_an_issuer_that_is_not_up_yet() {
    let port = free_port();
    let issuer = format!("http://127.0.0.1:{port}");
    let resource = "http://127.0.0.1:1/mcp";
    let starting = {
        let issuer = issuer.clone();
        std::thread::spawn(move || {
            Server::builder()
                .args(["--oauth-issuer", &issuer, "--oauth-resource", resource, "--oauth-wait-seconds", "60"])
                .try_start()
        })
    };
    // The server is waiting by the time the issuer comes up.
    std::thread::sleep(Duration::from_secs(2));
    let port = port.to_string();
    let auth = AuthServer::start(&["--port", &port, "--resource", resource, "--scopes", SCOPES]);
    assert_eq!(auth.issuer, issuer);
    let server = match starting.join().expect("the start thread") {
        Ok(server) => server,
        Err(failure) => panic!("task-mcp gave up on the issuer: {}\n{}", failure.why, failure.logs),
    };
    let logs = server.logs();
    assert!(
        logs.contains("oauth: the authorization server does not answer yet; waiting for it"),
        "the wait left no line:\n{logs}"
    );
    let token = auth.token(CLIENT, resource, SCOPES).await;
    let res = post(&format!("{}/v1/tools/change.list", server.http_base()), Some(&token), json!({})).await;
    assert_eq!(res.status(), 200);
}
