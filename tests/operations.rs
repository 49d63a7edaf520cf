//! The server as an operator runs it: stopped by an orchestrator (SIGTERM, a load balancer
//! probing readiness), split into tiers whose service dies or is slow, configured from the
//! environment, read through its JSON log lines.
mod common;

use std::{
    fs::File,
    time::{Duration, Instant},
};

use common::{Gateway, Server, bounded, mcp::Mcp};
use serde_json::{Value, json};
use task_mcp::pb::{ArchiveChangeRequest, OpenChangeRequest};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

/// Failure bound for a process to stop (not a speed check).
const EXIT_BOUND: Duration = Duration::from_secs(15);
/// Long enough never to end by itself within a test: only what the test does ends it.
const FOREVER: &str = "600";

fn client() -> reqwest::Client {
    // A fresh connection per request, as a load balancer's probe or a new client makes: a pooled
    // keep-alive connection would outlive the listener and prove nothing about it.
    reqwest::Client::builder().pool_max_idle_per_host(0).timeout(Duration::from_secs(30)).build().unwrap()
}

async fn ready_status(http: &reqwest::Client, base: &str) -> (u16, Value) {
    let res = bounded("GET /health/ready", http.get(format!("{base}/health/ready")).send()).await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// Polls `/health/ready` until it answers 503; its body.
async fn until_not_ready(http: &reqwest::Client, base: &str) -> Value {
    let deadline = Instant::now() + EXIT_BOUND;
    loop {
        let (status, body) = ready_status(http, base).await;
        if status == 503 {
            return body;
        }
        assert!(Instant::now() < deadline, "/health/ready still {status} {EXIT_BOUND:?} after SIGTERM: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn rest(http: &reqwest::Client, base: &str, tool: &str, args: Value, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut req = http.post(format!("{base}/v1/tools/{tool}")).json(&args);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = bounded(tool, req.send()).await.unwrap_or_else(|e| panic!("{tool}: {e}"));
    let status = res.status().as_u16();
    let text = res.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Holds the change folder's `flock`, as another server process taking its turn would: every
/// write to the change waits until the file is dropped.
fn hold_turn(server: &Server, slug: &str) -> File {
    let folder = File::open(server.workspace.join("changes").join(slug)).unwrap();
    folder.lock().unwrap();
    folder
}

async fn open_change(http: &reqwest::Client, base: &str, slug: &str) {
    let (status, body) =
        rest(http, base, "change.open", json!({"slug": slug, "title": "T", "owner": "alice"}), &[]).await;
    assert_eq!(status, 200, "{body}");
}

/// Opens `slug` on the service's gRPC face, past any gateway.
async fn open_over_grpc(server: &Server, slug: &str) {
    let mut changes = server.changes().await;
    let open = OpenChangeRequest { title: "T".into(), slug: slug.into(), owner: "alice".into(), ..Default::default() };
    common::ok("OpenChange", bounded("OpenChange", changes.open_change(open)).await);
}

/// Waits until the server's log has a line satisfying `found`; that line.
/// `change.archive` over HTTP/JSON with NDJSON progress, in a task: its status and whole body.
fn spawn_ndjson_archive(http: &reqwest::Client, base: &str, slug: &str) -> tokio::task::JoinHandle<(u16, String)> {
    let request = http
        .post(format!("{base}/v1/tools/change.archive"))
        .header("accept", "application/x-ndjson")
        .json(&json!({"slug": slug, "owner": "alice"}));
    tokio::spawn(async move {
        let res = request.send().await.unwrap();
        (res.status().as_u16(), res.text().await.unwrap_or_default())
    })
}

async fn log_line(logs: impl Fn() -> String, what: &str, found: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + EXIT_BOUND;
    loop {
        let text = logs();
        if let Some(line) = text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).find(&found) {
            return line;
        }
        assert!(Instant::now() < deadline, "no log line {what}:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the server's Prometheus endpoint shows a `tool` execution in flight: the call
/// has reached the handler (and waits there for its turn).
async fn until_executing(server: &Server, tool: &str) {
    until_in_flight(server, tool, |n| n >= 1.0, &format!("no {tool} in flight")).await;
}

/// Polls the server's Prometheus endpoint until the `tool` executions in flight (summed over
/// transports, once the series exists) satisfy `done`; `what` words the failure.
async fn until_in_flight(server: &Server, tool: &str, done: impl Fn(f64) -> bool, what: &str) {
    let url = format!("http://{}/metrics", server.metrics_addr.expect("a metrics listener"));
    let wanted = format!("tool_name=\"{tool}\"");
    let deadline = Instant::now() + EXIT_BOUND;
    loop {
        let text = bounded("GET /metrics", client().get(&url).send()).await.unwrap().text().await.unwrap();
        let series: Vec<f64> = text
            .lines()
            .filter(|l| l.starts_with("tool_active_executions{") && l.contains(&wanted))
            .map(|l| l.rsplit(' ').next().unwrap_or("0").parse::<f64>().unwrap_or(0.0))
            .collect();
        if !series.is_empty() && done(series.iter().sum()) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ------------------------------------------------------------------ stopping

/// Kubernetes sends SIGTERM while the pod is still in the Service's endpoints: new connections
/// keep coming until the failing readiness probe takes it out. Before, readiness never failed
/// where a probe could see it: health turned NOT_SERVING in the same instant the listeners
/// closed, so probes and clients alike got "connection refused" for the whole propagation delay.
#[tokio::test]
async fn with_a_shutdown_delay_readiness_fails_while_new_connections_are_still_served() {
    let mut server = Server::builder().args(["--shutdown-delay-seconds", FOREVER]).start();
    let (http, base) = (client(), server.http_base());
    assert_eq!(ready_status(&http, &base).await.0, 200);

    server.sigterm();
    let body = until_not_ready(&http, &base).await;
    assert_eq!(body["failing"], json!(["draining"]), "{body}");
    // Still accepting and serving on new connections: gRPC health says NOT_SERVING (a probe's
    // view), and a tool call arriving before the load balancer reacted is answered.
    let mut health = server.health().await;
    let check = bounded("Health/Check", health.check(HealthCheckRequest { service: String::new() })).await;
    assert_eq!(check.expect("health answers during the delay").into_inner().status, ServingStatus::NotServing as i32);
    open_change(&http, &base, "during-the-delay").await;
    assert!(server.workspace.join("changes/during-the-delay").is_dir());

    // A second signal ends the delay (and the drain) at once.
    server.signal(libc::SIGINT);
    let status = server.wait_exit(EXIT_BOUND).unwrap_or_else(|| panic!("still running after a second signal"));
    assert!(status.success(), "{status:?}\n{}", server.logs());
    assert!(server.logs().contains("second signal"), "{}", server.logs());
}

/// In a split deployment the gateway's readiness asked only the upstream, which stays SERVING
/// while the gateway stops: the gateway never reported itself not ready.
#[tokio::test]
async fn a_stopping_gateway_fails_readiness_though_its_upstream_serves() {
    let service = Server::start();
    let mut gateway = Gateway::start(&service.endpoint(), &["--shutdown-delay-seconds", FOREVER], &[]);
    let (http, base) = (client(), format!("http://{}", gateway.http_addr));
    assert_eq!(ready_status(&http, &base).await.0, 200);

    gateway.signal(libc::SIGTERM);
    let body = until_not_ready(&http, &base).await;
    assert_eq!(body["failing"], json!(["draining"]), "{body}");
    open_change(&http, &base, "gateway-delay").await;
    service.assert_serving().await;

    gateway.signal(libc::SIGTERM);
    let status = gateway.wait_exit(EXIT_BOUND).unwrap_or_else(|| panic!("the gateway outlived a second signal"));
    assert!(status.success(), "{status:?}\n{}", gateway.logs());
}

/// Ctrl-C twice, or an impatient supervisor: before, every signal after the first was ignored
/// and the process sat out the whole grace period.
#[tokio::test]
async fn a_second_signal_stops_at_once_instead_of_sitting_out_the_grace_period() {
    let mut server = Server::builder().args(["--shutdown-grace-seconds", FOREVER]).start();
    let (http, base) = (client(), server.http_base());
    open_change(&http, &base, "held").await;
    let turn = hold_turn(&server, "held");
    // A call that cannot finish while the turn is held keeps the drain waiting.
    let held = tokio::spawn({
        let (http, base) = (http.clone(), base.clone());
        async move {
            http.post(format!("{base}/v1/tools/task.update"))
                .json(&json!({"slug": "held", "owner": "alice", "updates": [{"id": "1.1", "done": true}]}))
                .send()
                .await
        }
    });
    until_executing(&server, "task.update").await;

    server.sigterm();
    log_line(|| server.logs(), "\"draining\"", |l| l["message"] == "draining").await;
    server.sigterm();
    let status = server.wait_exit(EXIT_BOUND);
    let status = status.unwrap_or_else(|| panic!("a second SIGTERM did not stop the drain\n{}", server.logs()));
    assert!(status.success(), "{status:?}\n{}", server.logs());
    drop(turn);
    // The held call was dropped, not answered: nothing was ticked on its behalf.
    assert!(held.await.unwrap().is_err(), "the held call was answered after a forced stop");
    let tasks = std::fs::read_to_string(server.workspace.join("changes/held/tasks.md")).unwrap();
    assert!(tasks.contains("- [ ] 1.1"), "{tasks}");
}

// ------------------------------------------------------------------ split deployment

/// A caller's deadline passing in a split deployment was CANCELLED ("Timeout expired"): a 499
/// that blames the caller over HTTP/JSON, a JSON-RPC error over MCP. `serve` answers 504
/// DEADLINE_EXCEEDED and an `isError` tool result for the same call; the gateway now agrees.
#[tokio::test]
async fn through_the_gateway_a_passed_deadline_is_504_not_499() {
    let service = Server::start();
    let gateway = Gateway::start(&service.endpoint(), &["--rate-limit-per-second", "0"], &[]);
    let (http, base) = (client(), format!("http://{}", gateway.http_addr));
    open_change(&http, &base, "slow-turn").await;
    let _turn = hold_turn(&service, "slow-turn");
    let archive = json!({"slug": "slow-turn", "owner": "alice"});
    // The gRPC client's own timer and the gateway's fire together and either may be seen first:
    // a few calls make the old answer all but certain to show.
    for attempt in 0..5 {
        let (status, body) = rest(&http, &base, "change.archive", archive.clone(), &[("grpc-timeout", "200m")]).await;
        assert_eq!((status, body["code"].as_str()), (504, Some("DEADLINE_EXCEEDED")), "attempt {attempt}: {body}");
    }
    let mut mcp = Mcp::connect(http.clone(), gateway.mcp_url(), None, "2025-11-25", "deadline").await;
    for attempt in 0..3 {
        mcp.next_id += 1;
        let call = json!({"jsonrpc": "2.0", "id": mcp.next_id, "method": "tools/call",
            "params": {"name": "change.archive", "arguments": archive}});
        let res = bounded("tools/call", async {
            http.post(&mcp.url)
                .header("accept", common::mcp::ACCEPT_BOTH)
                .header("mcp-session-id", &mcp.session)
                .header("mcp-protocol-version", "2025-11-25")
                .header("grpc-timeout", "200m")
                .json(&call)
                .send()
                .await
        })
        .await
        .unwrap();
        let answer: Value = res.json().await.unwrap();
        assert_eq!(answer["result"]["isError"], true, "attempt {attempt}: {answer}");
        let text = answer["result"]["content"][0]["text"].as_str().unwrap_or_default();
        assert!(text.starts_with("DEADLINE_EXCEEDED"), "attempt {attempt}: {answer}");
    }
}

/// The service dying while it answers (a crash, an OOM kill, a node lost) was UNKNOWN at the
/// gateway: a 500 over HTTP/JSON and JSON-RPC -32603 over MCP, paging as a server bug and not
/// retried, where a call that could not connect was already a 503 UNAVAILABLE.
#[tokio::test]
async fn through_the_gateway_a_service_dying_mid_call_is_503_unavailable() {
    let mut service = Server::start();
    let gateway = Gateway::start(&service.endpoint(), &["--rate-limit-per-second", "0"], &[]);
    let (http, base) = (client(), format!("http://{}", gateway.http_addr));
    for slug in ["dies-ndjson", "dies-mcp"] {
        open_change(&http, &base, slug).await;
    }
    let turns = [hold_turn(&service, "dies-ndjson"), hold_turn(&service, "dies-mcp")];
    let ndjson = spawn_ndjson_archive(&http, &base, "dies-ndjson");
    let mcp = Mcp::connect(http.clone(), gateway.mcp_url(), None, "2025-11-25", "dies").await;
    let streamed = tokio::spawn(async move {
        let res = mcp
            .post(json!({"jsonrpc": "2.0", "id": "dies", "method": "tools/call", "params": {"name": "change.archive",
                "arguments": {"slug": "dies-mcp", "owner": "alice"}, "_meta": {"progressToken": "p"}}}))
            .await;
        res.text().await.unwrap_or_default()
    });
    // Both calls are in the service's handlers, waiting for their turn, when it dies.
    until_in_flight(&service, "change.archive", |n| n >= 2.0, "the archives never reached the service").await;
    service.kill();
    drop(turns);

    let (status, body) = bounded("the NDJSON answer", ndjson).await.unwrap();
    let last: Value = body.lines().last().and_then(|l| serde_json::from_str(l).ok()).unwrap_or(Value::Null);
    assert_eq!((status, last["code"].as_str()), (503, Some("UNAVAILABLE")), "{body}");
    let text = bounded("the MCP answer", streamed).await.unwrap();
    let answer = common::mcp::sse_messages(&text).into_iter().find(|m| m["id"] == "dies").unwrap_or(Value::Null);
    assert_eq!(answer["error"]["code"], -32000, "{text}");
    assert_eq!(answer["error"]["data"]["code"], "UNAVAILABLE", "{text}");
}

/// A gRPC service that takes calls and never answers them: a hung process, or one stuck at its
/// disk. HTTP/2 itself is served (the connection's pings are answered, streams accepted), as the
/// runtime of a hung service still does, so no keep-alive ever ends such a call. Each call the
/// client resets is reported as its path and the reset's reason.
async fn a_service_that_never_answers() -> (String, tokio::sync::mpsc::UnboundedReceiver<(String, h2::Reason)>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (resets, reported) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let resets = resets.clone();
            tokio::spawn(async move {
                let Ok(mut connection) = h2::server::handshake(tcp).await else { return };
                while let Some(Ok((request, mut respond))) = connection.accept().await {
                    let resets = resets.clone();
                    tokio::spawn(async move {
                        let path = request.uri().path().to_string();
                        if let Ok(reason) = std::future::poll_fn(|cx| respond.poll_reset(cx)).await {
                            let _ = resets.send((path, reason));
                        }
                        drop(request);
                    });
                }
            });
        }
    });
    (url, reported)
}

/// Waits for the hung service to see a call to `method` reset by its client; the reason.
async fn reset_of(resets: &mut tokio::sync::mpsc::UnboundedReceiver<(String, h2::Reason)>, method: &str) -> h2::Reason {
    bounded(&format!("the reset of {method}"), async {
        loop {
            let (path, reason) = resets.recv().await.expect("the hung service runs");
            if path.ends_with(method) {
                return reason;
            }
        }
    })
    .await
}

/// An operator audit: a service that accepts connections but never answers held HTTP/JSON calls
/// until the connection's keep-alive ended (about 38 s) and MCP calls until their client gave up,
/// while `/health/ready` had long called the upstream unhealthy; the calls piled up at the service.
/// Now the gateway waits `--upstream-timeout-seconds` for an answer to start, answers 504
/// DEADLINE_EXCEEDED (an `isError` result over MCP) naming the flag, and resets the call.
#[tokio::test]
async fn through_the_gateway_a_service_that_never_answers_is_504_at_the_bound_and_the_call_is_reset() {
    let (upstream, mut resets) = a_service_that_never_answers().await;
    let gateway = Gateway::start(&upstream, &["--upstream-timeout-seconds", "1", "--rate-limit-per-second", "0"], &[]);
    let (http, base) = (client(), format!("http://{}", gateway.http_addr));

    let asked = Instant::now();
    let (status, body) = rest(&http, &base, "change.show", json!({"slug": "any"}), &[]).await;
    assert_eq!((status, body["code"].as_str()), (504, Some("DEADLINE_EXCEEDED")), "{body}");
    assert_eq!(body["reason"], "UPSTREAM_TIMED_OUT", "{body}");
    assert!(body["message"].as_str().unwrap_or_default().contains("--upstream-timeout-seconds"), "{body}");
    // Timers never fire early; how much later is the machine's business.
    assert!(asked.elapsed() >= Duration::from_secs(1), "answered before the bound: {:?}", asked.elapsed());
    assert_eq!(reset_of(&mut resets, "/ShowChange").await, h2::Reason::CANCEL);

    // A streamed call waits for its head the same way (the first event decides its status).
    let res = bounded(
        "an NDJSON change.archive",
        http.post(format!("{base}/v1/tools/change.archive"))
            .header("accept", "application/x-ndjson")
            .json(&json!({"slug": "any", "owner": "alice"}))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(res.status().as_u16(), 504);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["reason"], "UPSTREAM_TIMED_OUT", "{body}");
    assert_eq!(reset_of(&mut resets, "/ArchiveChangeStream").await, h2::Reason::CANCEL);

    let mut mcp = Mcp::connect(http.clone(), gateway.mcp_url(), None, "2025-11-25", "hung").await;
    let result = bounded("tools/call", mcp.call("change.show", json!({"slug": "any"}))).await;
    assert_eq!(result["isError"], true, "{result}");
    let text = result["content"][0]["text"].as_str().unwrap_or_default();
    assert!(text.starts_with("UPSTREAM_TIMED_OUT") && text.contains("--upstream-timeout-seconds"), "{result}");
    assert_eq!(reset_of(&mut resets, "/ShowChange").await, h2::Reason::CANCEL);
}

/// In `serve` the gateway calls the service in-process, and a stuck disk hangs a call there just
/// the same (here: a change whose turn another process holds). The same bound and answer apply,
/// and the call is dropped at the service rather than left waiting.
#[tokio::test]
async fn in_serve_a_call_stuck_at_the_service_is_504_at_the_bound_and_dropped() {
    let server = Server::builder().args(["--upstream-timeout-seconds", "1"]).start();
    let (http, base) = (client(), server.http_base());
    // Set up on the gRPC face, which the gateway's bound does not apply to: only the calls
    // under test depend on the bound, however slow a loaded machine is.
    open_over_grpc(&server, "stuck").await;
    let _turn = hold_turn(&server, "stuck");
    let archive = json!({"slug": "stuck", "owner": "alice"});

    let (status, body) = rest(&http, &base, "change.archive", archive.clone(), &[]).await;
    assert_eq!((status, body["code"].as_str()), (504, Some("DEADLINE_EXCEEDED")), "{body}");
    assert_eq!(body["reason"], "UPSTREAM_TIMED_OUT", "{body}");
    assert!(body["message"].as_str().unwrap_or_default().contains("--upstream-timeout-seconds"), "{body}");

    let mut mcp = Mcp::connect(http.clone(), server.mcp_url(), None, "2025-11-25", "stuck").await;
    let result = bounded("tools/call", mcp.call("change.archive", archive)).await;
    assert_eq!(result["isError"], true, "{result}");
    let text = result["content"][0]["text"].as_str().unwrap_or_default();
    assert!(text.starts_with("UPSTREAM_TIMED_OUT") && text.contains("--upstream-timeout-seconds"), "{result}");

    // Both calls have left the service: none is still in flight waiting for the turn.
    until_in_flight(&server, "change.archive", |n| n == 0.0, "the archives are still in flight at the service").await;
}

/// The bound is on the start of an answer only: a stream that has started (an archive's progress,
/// the change feed behind MCP notifications, which is quiet for as long as nothing changes) runs
/// and idles for as long as it needs, well past the bound.
#[tokio::test]
async fn through_the_gateway_a_stream_that_started_answering_outlives_the_bound() {
    let service = Server::start();
    // Not 1 s: the calls that open the streams must start answering within the bound, on a
    // loaded machine too. The streams are then held well past it.
    let gateway =
        Gateway::start(&service.endpoint(), &["--upstream-timeout-seconds", "2", "--rate-limit-per-second", "0"], &[]);
    let (http, base) = (client(), format!("http://{}", gateway.http_addr));

    // The change feed: subscribed, then quiet for two bounds. No event ever names the ghost:
    // only the re-read hint of a feed that was cut and reopened would.
    let mut mcp = Mcp::connect(http.clone(), gateway.mcp_url(), None, "2025-11-25", "quiet").await;
    let (ghost, later) = ("change://ghost/proposal", "change://after-quiet/proposal");
    for uri in [ghost, later] {
        mcp.request("resources/subscribe", json!({"uri": uri})).await;
    }
    let mut stream = mcp.open_stream().await;

    // A progress stream whose archive waits for its turn, also past the bound.
    open_over_grpc(&service, "slow-archive").await;
    let turn = hold_turn(&service, "slow-archive");
    let archive = spawn_ndjson_archive(&http, &base, "slow-archive");
    until_executing(&service, "change.archive").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    drop(turn);
    let (status, body) = bounded("the NDJSON answer", archive).await.unwrap();
    let last: Value = body.lines().last().and_then(|l| serde_json::from_str(l).ok()).unwrap_or(Value::Null);
    assert_eq!(status, 200, "{body}");
    assert_eq!(last["result"]["receipt"]["slug"], "slow-archive", "{body}");

    open_over_grpc(&service, "after-quiet").await;
    let mut seen = String::new();
    loop {
        let messages = common::mcp::sse_messages(&seen);
        assert!(!messages.iter().any(|m| m["params"]["uri"] == ghost), "the feed was cut and reopened: {seen}");
        if messages.iter().any(|m| m["method"] == "notifications/resources/updated" && m["params"]["uri"] == later) {
            break;
        }
        let chunk = bounded("an SSE chunk", stream.chunk()).await.expect("the stream reads");
        seen.push_str(std::str::from_utf8(&chunk.unwrap_or_else(|| panic!("the stream ended: {seen}"))).unwrap());
    }
    assert!(!gateway.logs().contains("change feed lost"), "{}", gateway.logs());
}

/// A TCP relay to `upstream` whose client-to-upstream direction can be held: what the client
/// sends meanwhile waits in the relay, as on a congested link. Dropping the sender ends nothing;
/// the relay runs for the test's life.
async fn holdable_relay(upstream: &str) -> (String, tokio::sync::watch::Sender<bool>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let target = upstream.trim_start_matches("http://").to_string();
    let (flowing, flow) = tokio::sync::watch::channel(true);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(service) = tokio::net::TcpStream::connect(&target).await else { continue };
            let ((mut from_client, mut to_client), (mut from_service, mut to_service)) =
                (client.into_split(), service.into_split());
            let mut flow = flow.clone();
            tokio::spawn(async move {
                let mut buf = vec![0; 64 * 1024];
                while let Ok(n @ 1..) = from_client.read(&mut buf).await {
                    let flows = flow.wait_for(|on| *on).await.is_ok();
                    if !flows || to_service.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from_service, &mut to_client).await;
            });
        }
    });
    (url, flowing)
}

/// A client is told it is listening (a GET stream's first byte, a stateless
/// `subscriptions/listen`'s acknowledgement) before the gateway's call for the change feed
/// reaches the service. A change made in between went unannounced: the feed began after it. The
/// feed now starts from the moment the client was told. Here the call is held on its way to a
/// separate service while the change is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_before_the_change_feed_reaches_the_service_is_still_announced() {
    let service = Server::start();
    let (relay, flowing) = holdable_relay(&service.endpoint()).await;
    let gateway = Gateway::start(&relay, &["--rate-limit-per-second", "0"], &[]);
    let http = client();
    let mut mcp = Mcp::connect(http.clone(), gateway.mcp_url(), None, "2025-11-25", "early").await;
    let listed = mcp.request("resources/list", json!({})).await;
    assert!(listed["result"]["resources"].is_array(), "the relay carries calls: {listed}");

    flowing.send_replace(false);
    let mut stream = mcp.open_stream().await;
    open_over_grpc(&service, "opened-after-get").await;
    flowing.send_replace(true);
    let mut seen = String::new();
    assert!(common::mcp::hears_list_changed(&mut stream, &mut seen).await, "GET /mcp: no list_changed: {seen}");

    flowing.send_replace(false);
    let listen = json!({"jsonrpc": "2.0", "id": 7, "method": "subscriptions/listen", "params": {
        "notifications": {"resourcesListChanged": true},
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                  "io.modelcontextprotocol/clientCapabilities": {}}}});
    let mut stream = http
        .post(gateway.mcp_url())
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "subscriptions/listen")
        .json(&listen)
        .send()
        .await
        .expect("subscriptions/listen");
    let mut seen = String::new();
    while !seen.contains("notifications/subscriptions/acknowledged") {
        let chunk = bounded("the acknowledgement", stream.chunk()).await.expect("reads").expect("an event");
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    open_over_grpc(&service, "opened-after-listen").await;
    flowing.send_replace(true);
    assert!(
        common::mcp::hears_list_changed(&mut stream, &mut seen).await,
        "subscriptions/listen: no list_changed: {seen}"
    );
    assert!(!gateway.logs().contains("change feed lost"), "the feed was not cut: {}", gateway.logs());
}

// ------------------------------------------------------------------ logs

/// A streamed call's line was written at its response head: `grpc_status` "0" and the time to
/// the head, whatever the call ended with, so a refused or failed `ArchiveChangeStream` looked
/// like a success in the log. Nor did any line say who made the call.
#[tokio::test]
async fn a_streamed_call_logs_its_final_status_and_principal() {
    let server = Server::builder().args(["--auth-token", "alice=token-a", "--auth-token", "bob=token-b"]).start();
    let mut alice = server.changes_with(common::Auth::bearer("token-a")).await;
    let open = OpenChangeRequest { title: "T".into(), slug: "alices".into(), ..Default::default() };
    common::ok("alice opens", bounded("OpenChange", alice.open_change(open)).await);
    let mut bob = server.changes_with(common::Auth::bearer("token-b")).await;
    let archive = ArchiveChangeRequest { slug: "alices".into(), owner: "alice".into(), tests: None };
    let mut events = bounded("ArchiveChangeStream", bob.archive_change_stream(archive))
        .await
        .expect("the stream opens")
        .into_inner();
    let refused = bounded("the stream's end", events.message()).await.expect_err("bob may not archive alice's change");
    assert_eq!(refused.code(), tonic::Code::Aborted);

    let line = log_line(
        || server.logs(),
        "answering bob's ArchiveChangeStream",
        |l| l["message"] == "call answered" && l["span"]["method"] == "/taskmcp.v1.Changes/ArchiveChangeStream",
    )
    .await;
    assert_eq!(line["grpc_status"], "10", "ABORTED: {line}");
    assert_eq!(line["span"]["principal"], "bob", "{line}");
    let opened = log_line(
        || server.logs(),
        "answering alice's OpenChange",
        |l| l["message"] == "call answered" && l["span"]["method"] == "/taskmcp.v1.Changes/OpenChange",
    )
    .await;
    assert_eq!((opened["grpc_status"].as_str(), opened["span"]["principal"].as_str()), (Some("0"), Some("alice")));
    assert!(!server.logs().contains("token-"), "a token reached the log:\n{}", server.logs());
}

/// `RUST_LOG=warn` (the README's advice for throughput) also hid the "listening" line, with the
/// addresses a deployment on port 0 waits for: the harness below could not start the server.
#[tokio::test]
async fn a_quieter_log_level_keeps_the_lifecycle_lines_and_a_bad_one_is_reported() {
    let mut quiet = Server::builder().env("RUST_LOG", "warn").start();
    let (http, base) = (client(), quiet.http_base());
    open_change(&http, &base, "quiet").await;
    quiet.sigterm();
    assert!(quiet.wait_exit(EXIT_BOUND).is_some_and(|s| s.success()), "{}", quiet.logs());
    let logs = quiet.logs();
    assert!(!logs.contains("call answered"), "RUST_LOG=warn still logs every call:\n{logs}");
    for message in ["\"draining\"", "\"stopped\""] {
        assert!(logs.contains(message), "no {message} line at RUST_LOG=warn:\n{logs}");
    }

    let typo = Server::builder().env("RUST_LOG", "bogus==").start();
    let line =
        log_line(|| typo.logs(), "about RUST_LOG", |l| l["message"].as_str().is_some_and(|m| m.contains("RUST_LOG")))
            .await;
    assert_eq!(line["level"], "WARN", "{line}");
}

// ------------------------------------------------------------------ configuration

/// A misspelt variable (`TASK_MCP_MAX_SESSION` for `TASK_MCP_MAX_SESSIONS`) left the default in
/// force without a word; the server now names it in a warning at start, and a real one it reads
/// is not named.
#[tokio::test]
async fn a_misspelt_variable_is_named_at_start() {
    let server = Server::builder().env("TASK_MCP_MAX_SESSION", "5").env("TASK_MCP_MAX_SESSIONS", "5").start();
    let line = log_line(
        || server.logs(),
        "naming the misspelt variable",
        |l| l["variable"].as_str() == Some("TASK_MCP_MAX_SESSION"),
    )
    .await;
    assert_eq!(line["level"], "WARN", "{line}");
    assert!(!server.logs().contains("\"variable\":\"TASK_MCP_MAX_SESSIONS\""), "{}", server.logs());
}

/// The README promises `1`/`yes`/`on` for boolean variables; clap took only `true`/`false`, so a
/// manifest with `TASK_MCP_ALLOW_UNAUTHENTICATED_PUBLIC: "1"` never started.
#[tokio::test]
async fn boolean_variables_take_the_spellings_the_readme_lists() {
    for value in ["1", "yes", "on", "true"] {
        let server = Server::builder()
            .grpc_listen("0.0.0.0:0")
            .env("TASK_MCP_ALLOW_UNAUTHENTICATED_PUBLIC", value)
            .try_start()
            .unwrap_or_else(|f| panic!("TASK_MCP_ALLOW_UNAUTHENTICATED_PUBLIC={value}: {}\n{}", f.why, f.logs));
        server.assert_serving().await;
    }
    for value in ["0", "no", "off", "false"] {
        let refused =
            Server::builder().grpc_listen("0.0.0.0:0").env("TASK_MCP_ALLOW_UNAUTHENTICATED_PUBLIC", value).try_start();
        let failure = refused.err().unwrap_or_else(|| panic!("={value} allowed a public bind without tokens"));
        assert!(failure.logs.contains("--allow-unauthenticated-public"), "{value}: {}", failure.logs);
    }
}

/// Start-up failures name what to fix: which listener's address is taken (three share
/// "Address already in use"), and which workspace path cannot be used (the path was missing,
/// and "internal error" sent the operator to the code instead of the disk).
#[test]
fn start_up_failures_name_the_flag_or_path_to_fix() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let failure = Server::builder().grpc_listen(&addr).try_start().err().expect("a taken port refused");
    assert!(!failure.status.expect("it exited").success());
    let stderr: Vec<&str> = failure.logs.lines().filter_map(|l| l.strip_prefix("[stderr] ")).collect();
    assert_eq!(stderr.len(), 1, "one line on stderr: {stderr:?}");
    assert!(stderr[0].contains("--grpc-listen") && stderr[0].contains(&addr), "{stderr:?}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-folder");
    std::fs::write(&file, "x").unwrap();
    let failure = Server::builder().workspace(&file).try_start().err().expect("a file as workspace refused");
    assert!(!failure.status.expect("it exited").success());
    let stderr: Vec<&str> = failure.logs.lines().filter_map(|l| l.strip_prefix("[stderr] ")).collect();
    assert_eq!(stderr.len(), 1, "one line on stderr: {stderr:?}");
    assert!(stderr[0].contains(&file.display().to_string()), "{stderr:?}");
    assert!(!stderr[0].contains("internal error"), "{stderr:?}");
}

/// Writes `content` to `path` as Kubernetes updates a mounted secret: whole, by a rename.
fn replace_file(path: &std::path::Path, content: &str) {
    let aside = path.with_extension("new");
    std::fs::write(&aside, content).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

/// The status of `GET /v1/tools` with `token`, and of a gRPC `ListChanges` with it.
async fn admitted(server: &Server, token: &str) -> (u16, bool) {
    let http = client()
        .get(format!("{}/v1/tools", server.http_base()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    let mut changes = server.changes_with(common::Auth::bearer(token)).await;
    let grpc = bounded("ListChanges", changes.list_changes(task_mcp::pb::ListChangesRequest::default())).await;
    (http, grpc.is_ok())
}

/// Polls until `token` is admitted on both faces (`true`) or refused on both (`false`).
async fn until_admitted(server: &Server, token: &str, admitted_now: bool) {
    let deadline = Instant::now() + EXIT_BOUND;
    let want = if admitted_now { (200, true) } else { (401, false) };
    loop {
        let seen = admitted(server, token).await;
        if seen == want {
            return;
        }
        assert!(Instant::now() < deadline, "{token}: {seen:?}, want {want:?}\n{}", server.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Rotating a token must not need a restart, which would end every MCP session: the token file
/// is reloaded on SIGHUP, and when it changes; a session goes on under the principal's new
/// token; a file that names no token is refused and the tokens in force stay.
#[tokio::test]
async fn tokens_rotate_without_a_restart_and_sessions_survive_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    replace_file(&file, "alice=old-token-aaaa\n");
    let file_arg = file.to_str().unwrap();

    // The test's refused calls must not get its address throttled.
    let flags = |reload: &'static str| {
        ["--auth-token-file", file_arg, "--auth-token-reload-seconds", reload, "--auth-failures-per-minute", "0"]
    };
    // SIGHUP only: a change alone is not loaded.
    let server = Server::builder().args(flags("0")).start();
    assert_eq!(admitted(&server, "old-token-aaaa").await, (200, true));
    let mut mcp = Mcp::connect(client(), server.mcp_url(), Some("old-token-aaaa"), "2025-11-25", "rotation-test").await;
    assert!(mcp.request("tools/list", json!({})).await["result"]["tools"].is_array());
    replace_file(&file, "alice=new-token-bbbb\n");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(admitted(&server, "old-token-aaaa").await, (200, true), "reloaded without a signal");
    server.signal(libc::SIGHUP);
    until_admitted(&server, "new-token-bbbb", true).await;
    until_admitted(&server, "old-token-aaaa", false).await;
    log_line(
        || server.logs(),
        "\"auth tokens reloaded\"",
        |l| l["message"] == "auth tokens reloaded" && l["trigger"] == "SIGHUP" && l["principals"] == 1,
    )
    .await;
    // The session is alice's, whichever of her tokens she shows.
    let listed = client()
        .post(server.mcp_url())
        .bearer_auth("new-token-bbbb")
        .header("mcp-session-id", &mcp.session)
        .header("mcp-protocol-version", "2025-11-25")
        .header("accept", common::mcp::ACCEPT_BOTH)
        .json(&json!({"jsonrpc": "2.0", "id": 9, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200, "the session survives the rotation");
    assert!(listed.json::<Value>().await.unwrap()["result"]["tools"].is_array());

    // Checked every second: a change is loaded with no signal; an empty file is not.
    let server = Server::builder().args(flags("1")).start();
    replace_file(&file, "alice=third-token-cccc\nbob=bob-token-dddd\n");
    until_admitted(&server, "third-token-cccc", true).await;
    until_admitted(&server, "bob-token-dddd", true).await;
    until_admitted(&server, "new-token-bbbb", false).await;
    replace_file(&file, "# emptied by mistake\n");
    log_line(
        || server.logs(),
        "\"auth token reload failed\"",
        |l| {
            l["message"].as_str().is_some_and(|m| m.starts_with("auth token reload failed"))
                && l["trigger"] == "changed"
        },
    )
    .await;
    assert_eq!(admitted(&server, "third-token-cccc").await, (200, true), "the tokens in force stay");
    assert_eq!(server.logs().matches("auth token reload failed").count(), 1, "a failure that repeats is logged once");
}
