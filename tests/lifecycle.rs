//! The server as a process: graceful shutdown, refusing an unsafe public bind,
//! bearer-token auth and the per-principal rate limit.
mod common;

use std::time::Duration;

use common::{
    Auth, Gateway, Server, assert_error, assert_same_tree, bounded, describe, err,
    mcp::{ACCEPT_BOTH, Mcp, sse_messages},
    ok, snapshot,
};
use serde_json::{Value, json};
use task_mcp::pb::{
    ArchiveChangeRequest, ListChangesRequest, OpenChangeRequest, TaskUpdate, UpdateTasksRequest, WatchChangesRequest,
};
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
use tonic_types::StatusExt;

/// Failure bound for a graceful shutdown (not a speed check).
const SHUTDOWN_BOUND: Duration = Duration::from_secs(15);

#[tokio::test]
async fn sigterm_with_an_open_watch_stream_drains_and_exits_zero() {
    let mut server = Server::start();
    let mut r = server.resources().await;
    let mut health = server.health().await;
    let mut watch = bounded("WatchChanges", r.watch_changes(WatchChangesRequest::default()))
        .await
        .unwrap_or_else(|s| panic!("WatchChanges: {}", describe(&s)))
        .into_inner();
    server.assert_serving().await;

    server.sigterm();

    // The stream must end (cleanly or with a status) rather than hold the server open.
    let ended = tokio::time::timeout(SHUTDOWN_BOUND, async {
        loop {
            match watch.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return "ended".to_string(),
                Err(status) => return format!("failed: {}", describe(&status)),
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the watch stream stayed open {SHUTDOWN_BOUND:?} after SIGTERM");

    // Health on the existing connection turns NOT_SERVING, or the connection closes.
    let drained = tokio::time::timeout(SHUTDOWN_BOUND, async {
        loop {
            match health.check(HealthCheckRequest { service: String::new() }).await {
                Ok(resp) if resp.get_ref().status == ServingStatus::Serving as i32 => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(resp) => return format!("status {:?}", resp.get_ref().status),
                Err(status) => return format!("closed: {}", describe(&status)),
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "health still SERVING {SHUTDOWN_BOUND:?} after SIGTERM");

    drop(watch);
    drop(health);
    drop(r);
    let status = server.wait_exit(SHUTDOWN_BOUND);
    let status = status.unwrap_or_else(|| panic!("still running {SHUTDOWN_BOUND:?} after SIGTERM"));
    assert!(status.success(), "graceful shutdown must exit 0, got {status:?}\n{}", server.logs());
}

/// Reads `stream` (SSE) into `seen` until one of its messages satisfies `found`.
async fn read_until(stream: &mut reqwest::Response, seen: &mut String, found: impl Fn(&Value) -> bool) -> Value {
    loop {
        if let Some(message) = sse_messages(seen).into_iter().find(&found) {
            return message;
        }
        let chunk = bounded("an SSE chunk", stream.chunk()).await.expect("the stream reads");
        let chunk = chunk.unwrap_or_else(|| panic!("the stream ended first: {seen}"));
        seen.push_str(std::str::from_utf8(&chunk).expect("UTF-8 SSE"));
    }
}

#[tokio::test]
async fn sigterm_answers_the_mcp_calls_in_flight_and_ends_subscriptions_with_their_result() {
    let mut server = Server::start();
    let mut grpc = server.changes().await;
    let open =
        OpenChangeRequest { title: "T".into(), slug: "draining".into(), owner: "alice".into(), ..Default::default() };
    ok("open", bounded("OpenChange", grpc.open_change(open)).await);
    // Holding the change folder's lock (as another server process would) keeps every tick
    // below waiting for its turn until the drain has begun.
    let folder = std::fs::File::open(server.workspace.join("changes/draining")).unwrap();
    folder.lock().unwrap();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let (base, url) = (server.http_base(), server.mcp_url());
    let tick = |token: Option<&str>| {
        let mut params = json!({"name": "task.update",
            "arguments": {"slug": "draining", "owner": "alice", "updates": [{"id": "1.1", "done": true}]}});
        if let Some(token) = token {
            params["_meta"] = json!({"progressToken": token});
        }
        params
    };

    // 2025-11-25 in a session: one call answered on an SSE stream, one as plain JSON.
    let mcp = Mcp::connect(http.clone(), url.clone(), None, "2025-11-25", "drain-test").await;
    let mut streamed =
        mcp.post(json!({"jsonrpc": "2.0", "id": "sse", "method": "tools/call", "params": tick(Some("p"))})).await;
    assert_eq!(streamed.headers()["content-type"], "text/event-stream");
    let plain = tokio::spawn({
        let mcp = Mcp::connect(http.clone(), url.clone(), None, "2025-11-25", "drain-test").await;
        async move { mcp.post(json!({"jsonrpc": "2.0", "id": "json", "method": "tools/call", "params": tick(None)})).await }
    });
    // 2024-11-05: the answer travels on the session's one stream.
    let mut legacy = http.get(format!("{base}/sse")).send().await.unwrap();
    let mut legacy_seen = String::new();
    let endpoint = loop {
        if let Some(line) = legacy_seen.lines().find_map(|l| l.strip_prefix("data: ")) {
            break line.to_string();
        }
        let chunk = bounded("the endpoint event", legacy.chunk()).await.unwrap().expect("the endpoint event");
        legacy_seen.push_str(std::str::from_utf8(&chunk).unwrap());
    };
    let posted = http
        .post(format!("{base}{endpoint}"))
        .json(&json!({"jsonrpc": "2.0", "id": "legacy", "method": "tools/call", "params": tick(None)}))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 202);
    // 2026-07-28: a subscription, which the drain ends with its result.
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}});
    let mut listen = http
        .post(&url)
        .header("accept", ACCEPT_BOTH)
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "subscriptions/listen")
        .json(&json!({"jsonrpc": "2.0", "id": "listen", "method": "subscriptions/listen",
            "params": {"_meta": meta, "notifications": {"resourcesListChanged": true}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(listen.status(), 200);
    let mut listen_seen = String::new();
    read_until(&mut listen, &mut listen_seen, |m| m["method"] == "notifications/subscriptions/acknowledged").await;

    server.sigterm();
    let ended = read_until(&mut listen, &mut listen_seen, |m| m["id"] == "listen").await;
    assert_eq!(ended["result"]["_meta"]["io.modelcontextprotocol/subscriptionId"], "listen", "{ended}");
    // The drain has begun (it ended the subscription); now the ticks may have their turn.
    folder.unlock().unwrap();

    let mut seen = String::new();
    let answer = read_until(&mut streamed, &mut seen, |m| m["id"] == "sse").await;
    assert_eq!(answer["result"]["isError"], false, "{answer}");
    let plain = bounded("the JSON answer", plain).await.unwrap();
    assert_eq!(plain.status(), 200);
    let answer: Value = plain.json().await.unwrap();
    assert_eq!(answer["result"]["isError"], false, "{answer}");
    let answer = read_until(&mut legacy, &mut legacy_seen, |m| m["id"] == "legacy").await;
    assert_eq!(answer["result"]["isError"], false, "{answer}");
    assert!(bounded("the legacy stream's end", legacy.chunk()).await.unwrap().is_none(), "it ends once answered");

    drop((streamed, legacy, listen, mcp));
    let status = server.wait_exit(SHUTDOWN_BOUND).unwrap_or_else(|| panic!("still running after SIGTERM"));
    assert!(status.success(), "graceful shutdown must exit 0, got {status:?}\n{}", server.logs());
}

#[test]
fn a_public_bind_without_tokens_is_refused_naming_the_override_flag() {
    let failure = match Server::builder().grpc_listen("0.0.0.0:0").try_start() {
        Ok(mut server) => {
            server.kill();
            panic!("the server bound 0.0.0.0 with no tokens and no override\n{}", server.logs());
        }
        Err(failure) => failure,
    };
    let status = failure.status.expect("the process exited by itself");
    assert!(!status.success(), "refusal must exit non-zero: {status:?}");
    assert!(
        failure.logs.contains("--allow-unauthenticated-public"),
        "the message should name the override flag:\n{}",
        failure.logs
    );
}

#[tokio::test]
async fn a_public_bind_starts_with_the_override_flag_or_a_token() {
    let server = Server::builder().grpc_listen("0.0.0.0:0").arg("--allow-unauthenticated-public").start();
    assert!(server.grpc_addr.ip().is_unspecified(), "bound {}", server.grpc_addr);
    server.assert_serving().await;
    drop(server);

    let server = Server::builder().grpc_listen("0.0.0.0:0").auth_token("s3cret").start();
    server.assert_serving().await;
    let mut c = server.changes().await;
    ok("ListChanges", bounded("ListChanges", c.list_changes(ListChangesRequest::default())).await);
}

#[tokio::test]
async fn bearer_tokens_guard_every_rpc_but_health() {
    let server = Server::builder().auth_token("s3cret").start();
    for (what, auth) in
        [("no token", Auth::none()), ("wrong token", Auth::bearer("s3cret-not")), ("prefix", Auth::bearer("s3cre"))]
    {
        let mut c = server.changes_with(auth.clone()).await;
        let status = err(what, bounded(what, c.list_changes(ListChangesRequest::default())).await);
        assert_error(&status, Code::Unauthenticated, "UNAUTHENTICATED");
        let mut r = server.resources_with(auth).await;
        let status = match bounded(what, r.watch_changes(WatchChangesRequest::default())).await {
            Err(status) => status,
            Ok(resp) => bounded(what, resp.into_inner().message()).await.expect_err("watch must be refused"),
        };
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {}", describe(&status));
    }
    // A token sent in another scheme is not a bearer token.
    let mut c = server.changes_with(Auth::none()).await;
    let mut req = tonic::Request::new(ListChangesRequest::default());
    req.metadata_mut().insert("authorization", "Basic czNjcmV0".parse().unwrap());
    let status = err("basic auth", bounded("basic", c.list_changes(req)).await);
    assert_eq!(status.code(), Code::Unauthenticated);

    server.assert_serving().await;
    let mut c = server.changes().await;
    let resp = ok(
        "authorized OpenChange",
        bounded(
            "OpenChange",
            c.open_change(OpenChangeRequest { title: "T".into(), slug: "authed".into(), ..Default::default() }),
        )
        .await,
    );
    assert!(resp.created);
    let mut c = server.changes_with(Auth::none()).await;
    let req = common::with_bearer(ListChangesRequest::default(), "s3cret");
    let listed = ok("with_bearer", bounded("ListChanges", c.list_changes(req)).await);
    assert_eq!(listed.changes.len(), 1);
}

#[tokio::test]
async fn named_tokens_make_the_principal_the_default_owner() {
    let server = Server::builder().args(["--auth-token", "alice=token-a", "--auth-token", "bob=token-b"]).start();
    let mut alice = server.changes_with(Auth::bearer("token-a")).await;
    let mut bob = server.changes_with(Auth::bearer("token-b")).await;
    let req = OpenChangeRequest { title: "T".into(), slug: "principal".into(), ..Default::default() };
    let resp = ok("alice opens", bounded("OpenChange", alice.open_change(req.clone())).await);
    assert_eq!(resp.lock.unwrap().owner, "alice", "owner defaults to the principal");
    let status = err("bob opens", bounded("OpenChange", bob.open_change(req)).await);
    let info = assert_error(&status, Code::Aborted, "LOCKED_BY_OTHER_OWNER");
    assert_eq!(info.metadata.get("holder").map(String::as_str), Some("alice"));
}

#[tokio::test]
async fn naming_another_principals_owner_does_not_take_its_lock() {
    let server = Server::builder().args(["--auth-token", "alice=token-a", "--auth-token", "bob=token-b"]).start();
    let mut alice = server.changes_with(Auth::bearer("token-a")).await;
    let mut bob = server.changes_with(Auth::bearer("token-b")).await;
    let open =
        OpenChangeRequest { title: "T".into(), slug: "shared".into(), owner: "agent".into(), ..Default::default() };
    ok("alice opens as agent", bounded("OpenChange", alice.open_change(open.clone())).await);
    let tick = UpdateTasksRequest {
        slug: "shared".into(),
        owner: "agent".into(),
        updates: vec![TaskUpdate { id: "1.1".into(), done: true }],
    };
    let archive = ArchiveChangeRequest { slug: "shared".into(), owner: "agent".into(), tests: None };
    let before = snapshot(&server.workspace);

    let refusals = [
        ("open", bounded("OpenChange", bob.open_change(open.clone())).await.map(|_| ())),
        ("tick", bounded("UpdateTasks", bob.update_tasks(tick.clone())).await.map(|_| ())),
        ("archive", bounded("ArchiveChange", bob.archive_change(archive)).await.map(|_| ())),
    ];
    for (what, result) in refusals {
        let status = result.expect_err(&format!("bob's {what} as agent went through under alice's lock"));
        let info = assert_error(&status, Code::Aborted, "LOCKED_BY_OTHER_OWNER");
        assert_eq!(info.metadata.get("holder").map(String::as_str), Some("agent"), "{what}: {info:?}");
        assert_eq!(info.metadata.get("holder_principal").map(String::as_str), Some("alice"), "{what}: {info:?}");
        assert!(status.message().contains("of principal \"alice\""), "{what}: {}", status.message());
    }
    assert_same_tree(&before, &snapshot(&server.workspace), "bob's refused calls");
    ok("alice ticks as agent", bounded("UpdateTasks", alice.update_tasks(tick)).await);
}

#[tokio::test]
async fn the_rate_limit_answers_resource_exhausted_with_retry_info() {
    let server = Server::builder().rate_limit(1, 2).start();
    let mut c = server.changes().await;
    // The burst of two passes; calls right after it are limited. The loop only
    // allows for a slow machine refilling a token between calls.
    for i in 0..2 {
        ok(
            &format!("call {i} within the burst"),
            bounded("ListChanges", c.list_changes(ListChangesRequest::default())).await,
        );
    }
    let mut limited = None;
    for _ in 0..20 {
        match bounded("ListChanges", c.list_changes(ListChangesRequest::default())).await {
            Ok(_) => continue,
            Err(status) => {
                limited = Some(status);
                break;
            }
        }
    }
    let status = limited.expect("no call was rate limited after the burst of 2 at 1/s");
    assert_error(&status, Code::ResourceExhausted, "RATE_LIMITED");
    let retry = status.get_details_retry_info().unwrap_or_else(|| panic!("no RetryInfo: {}", describe(&status)));
    let delay = retry.retry_delay.expect("retry_delay set");
    assert!(delay > Duration::ZERO && delay <= Duration::from_secs(2), "retry delay {delay:?} for 1 token/s");
    // Health is not rate limited.
    server.assert_serving().await;
    server.assert_serving().await;
    server.assert_serving().await;
}

#[tokio::test]
async fn each_principal_has_its_own_rate_limit_bucket() {
    let server = Server::builder()
        .rate_limit(1, 2)
        .args(["--auth-token", "alice=token-a", "--auth-token", "bob=token-b"])
        .start();
    let mut alice = server.changes_with(Auth::bearer("token-a")).await;
    let mut bob = server.changes_with(Auth::bearer("token-b")).await;
    // Alice spends her burst of two; the loop only allows for a slow machine refilling a
    // token between calls.
    let mut refused = None;
    for _ in 0..20 {
        if let Err(status) = bounded("alice's ListChanges", alice.list_changes(ListChangesRequest::default())).await {
            refused = Some(status);
            break;
        }
    }
    let status = refused.expect("alice was never rate limited after her burst of 2 at 1/s");
    assert_error(&status, Code::ResourceExhausted, "RATE_LIMITED");
    // Bob's bucket is his own and full: both calls of his burst pass right after alice's
    // refusal (a shared bucket would need two seconds of refill for that).
    for i in 0..2 {
        ok(
            &format!("bob's call {i}, right after alice was refused"),
            bounded("bob's ListChanges", bob.list_changes(ListChangesRequest::default())).await,
        );
    }
}

/// The client sends `grpc-timeout` and enforces nothing itself (tonic's
/// `set_timeout` only sets the header), so a stream that would otherwise run
/// forever ending with DEADLINE_EXCEEDED proves the server honours deadlines.
#[tokio::test]
async fn the_server_ends_a_call_at_the_client_deadline() {
    let server = Server::start();
    let mut resources = server.resources().await;
    let mut request = tonic::Request::new(task_mcp::pb::WatchChangesRequest::default());
    request.set_timeout(std::time::Duration::from_millis(300));
    let mut stream =
        common::ok("WatchChanges", common::bounded("WatchChanges", resources.watch_changes(request)).await);
    let ended = common::bounded("the stream to end", stream.message()).await;
    let status = ended.expect_err("a watch stream has no natural end; only the deadline ends it");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    server.assert_serving().await;
}

/// A split deployment's service restarts under a live gateway (a deploy of that tier). The
/// session's change feed comes back by itself: the gateway tells the session to re-read what the
/// gap may have hidden (`updated` for each subscription), and changes made after the restart are
/// notified again. Before, the feed died with the first service and the session heard nothing more.
#[tokio::test]
async fn a_gateway_session_keeps_its_change_feed_across_a_service_restart() {
    let dir = tempfile::tempdir().unwrap();
    let workspace = dir.path().join("openspec");
    let mut service = Server::builder().workspace(&workspace).start();
    let grpc_listen = service.grpc_addr.to_string();
    let gateway = Gateway::start(&service.endpoint(), &["--rate-limit-per-second", "0"], &[]);
    let http = reqwest::Client::new();
    let mut mcp = Mcp::connect(http, gateway.mcp_url(), None, "2025-11-25", "restart").await;
    // No event ever names this URI: only the gateway's re-read hint after the gap can.
    let ghost = "change://ghost/proposal";
    mcp.request("resources/subscribe", json!({"uri": ghost})).await;
    let mut stream = mcp.open_stream().await;
    let mut seen = String::new();
    let open = |slug: &str| json!({"slug": slug, "title": "T", "owner": "alice"});
    assert_eq!(mcp.call("change.open", open("before-restart")).await["isError"], false);
    notified(&mut stream, &mut seen, "list_changed for the first change", None).await;

    service.sigterm();
    let status = service.wait_exit(SHUTDOWN_BOUND).unwrap_or_else(|| panic!("the service outlived SIGTERM"));
    assert!(status.success(), "{status:?}\n{}", service.logs());
    let _service = Server::builder().workspace(&workspace).grpc_listen(&grpc_listen).start();

    seen.clear();
    notified(&mut stream, &mut seen, "the re-read hint after the gap", Some(ghost)).await;
    let after = "change://after-restart/proposal";
    mcp.request("resources/subscribe", json!({"uri": after})).await;
    assert_eq!(mcp.call("change.open", open("after-restart")).await["isError"], false);
    notified(&mut stream, &mut seen, "an update of a change opened after the restart", Some(after)).await;
    assert!(gateway.logs().contains("change feed reopened"), "{}", gateway.logs());
}

/// Reads the session stream until `notifications/resources/updated` for `uri` (or, without one,
/// `notifications/resources/list_changed`) arrives. The bound turns a hang into a failure (the
/// stream's keep-alive comments would keep the read going); the gateway reopens a lost feed
/// within a few seconds of the service coming back.
async fn notified(stream: &mut reqwest::Response, seen: &mut String, what: &str, uri: Option<&str>) -> Value {
    let method = if uri.is_some() { "notifications/resources/updated" } else { "notifications/resources/list_changed" };
    let found = |m: &Value| m["method"] == method && uri.is_none_or(|u| m["params"]["uri"] == u);
    match tokio::time::timeout(Duration::from_secs(30), read_until(stream, seen, found)).await {
        Ok(message) => message,
        Err(_) => panic!("no {what} within 30 s: {seen}"),
    }
}
