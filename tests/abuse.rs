//! Abuse of a server deployed with bearer tokens: what an unauthenticated client, and one
//! tenant misbehaving with its own token, can do to the server and to other tenants. Each test
//! runs the real binary and attacks it over real sockets.
mod common;

use std::time::Duration;

use common::{Auth, Server, bounded};
use task_mcp::pb::ListChangesRequest;
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
use tonic_types::StatusExt;

const TOKEN_A: &str = "tok-aaaaaaaaaaaaaaaa";
const TOKEN_B: &str = "tok-bbbbbbbbbbbbbbbb";

/// A server with two tenants, `a` and `b`, and the given extra flags.
fn two_tenants(args: &[&str]) -> Server {
    Server::builder()
        .args(["--auth-token", &format!("a={TOKEN_A}"), "--auth-token", &format!("b={TOKEN_B}")])
        .args(args.iter().copied())
        .start()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(20)).build().expect("http client")
}

async fn get_tools(server: &Server, authorization: Option<&str>) -> reqwest::Response {
    let mut request = http().get(format!("{}/v1/tools", server.http_base()));
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    request.send().await.expect("GET /v1/tools")
}

async fn list_with(server: &Server, auth: Auth) -> Result<(), tonic::Status> {
    let mut changes = server.changes_with(auth).await;
    bounded("ListChanges", changes.list_changes(ListChangesRequest::default())).await.map(|_| ())
}

async fn metric(server: &Server, series: &str) -> f64 {
    let addr = server.metrics_addr.expect("the listening line names metrics_addr");
    let text = http().get(format!("http://{addr}/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines().filter(|l| l.starts_with(series)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

/// Without a throttle one client could try wrong tokens as fast as the server answers (14,600
/// a second over HTTP and 3,400 over gRPC from one Python client, measured): with the default
/// budget, both faces start refusing the address after a few dozen failures, and the budget is
/// one for both ports.
#[tokio::test]
async fn guessing_tokens_is_throttled_by_default_on_both_faces() {
    let server = two_tenants(&[]);
    let mut refused = None;
    for attempt in 0..500 {
        let response = get_tools(&server, Some("Bearer wrong-guess")).await;
        match response.status().as_u16() {
            401 => continue,
            429 => {
                refused = Some((attempt, response));
                break;
            }
            other => panic!("a wrong token got {other}"),
        }
    }
    let (attempt, response) = refused.expect("500 wrong tokens in a row and never throttled");
    assert!(attempt >= 30, "the default budget allows 30 failures a minute, throttled after {attempt}");
    let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["reason"], "AUTH_THROTTLED", "{body}");

    // The gRPC face shares the budget: the address is refused there as well, at the latest
    // once that face's own failures have used what refilled meanwhile.
    let mut grpc_refused = false;
    for _ in 0..500 {
        match list_with(&server, Auth::bearer("wrong-guess")).await {
            Err(status) if status.code() == Code::Unauthenticated => continue,
            Err(status) if status.code() == Code::ResourceExhausted => {
                assert!(status.get_error_details().retry_info().is_some(), "RetryInfo: {status:?}");
                grpc_refused = true;
                break;
            }
            other => panic!("a wrong token over gRPC: {other:?}"),
        }
    }
    assert!(grpc_refused, "500 wrong tokens over gRPC and never throttled");
}

/// Once throttled, an address is refused whatever it sends (else guessing would go on, its
/// successes still answered), but probes still pass and requests that send no credentials at
/// all (how an MCP client learns that it needs a token) never use up the budget.
#[tokio::test]
async fn a_throttled_address_is_refused_even_with_a_valid_token_but_probes_pass() {
    let server = two_tenants(&["--auth-failures-per-minute", "1"]);
    for _ in 0..5 {
        assert_eq!(get_tools(&server, None).await.status(), 401, "no credentials: a challenge, not a failure");
    }
    assert_eq!(get_tools(&server, Some(&format!("Bearer {TOKEN_A}"))).await.status(), 200);
    assert_eq!(get_tools(&server, Some("Bearer wrong-guess")).await.status(), 401, "the one failure allowed");

    assert_eq!(get_tools(&server, Some(&format!("Bearer {TOKEN_A}"))).await.status(), 429);
    let status = list_with(&server, Auth::bearer(TOKEN_B)).await.expect_err("refused over gRPC too");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    let live = http().get(format!("{}/health/live", server.http_base())).send().await.unwrap();
    assert_eq!(live.status(), 200, "liveness is never throttled");
    let mut health = server.health().await;
    let check = bounded("Health/Check", health.check(HealthCheckRequest { service: String::new() })).await;
    assert_eq!(check.expect("health answers").into_inner().status, ServingStatus::Serving as i32);

    let throttled = metric(&server, "auth_attempts_total{outcome=\"failure\",reason=\"throttled\"").await;
    assert_eq!(throttled, 2.0, "each refusal is counted as a throttled attempt");
}

async fn initialize(server: &Server, token: &str) -> u16 {
    let body = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "abuse", "version": "1"}}});
    let response = http()
        .post(server.mcp_url())
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .json(&body)
        .send()
        .await
        .expect("initialize");
    response.status().as_u16()
}

/// A stateless `subscriptions/listen`: a stream that stays open until the client closes it.
async fn listen(server: &Server, token: &str) -> reqwest::Response {
    let body = serde_json::json!({"jsonrpc": "2.0", "id": 7, "method": "subscriptions/listen", "params": {
        "notifications": {"resourcesListChanged": true},
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                  "io.modelcontextprotocol/clientCapabilities": {}}}});
    http()
        .post(server.mcp_url())
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "subscriptions/listen")
        .json(&body)
        .send()
        .await
        .expect("subscriptions/listen")
}

/// The session and stream caps were global: tenant `a`, with its own valid token and within its
/// rate limit, could take every session and every stream slot, and tenant `b` then got 503 for
/// a session and UNAVAILABLE for a gRPC watch (measured with --max-sessions 20 --max-streams 20;
/// at the defaults, 10,000 of each, `a` needs about 200 s at its rate limit). By default each
/// principal now holds at most an equal share.
#[tokio::test]
async fn one_tenant_cannot_take_every_session_and_stream_from_another() {
    let server = two_tenants(&["--max-sessions", "4", "--max-streams", "4"]);
    let mut sessions = 0;
    for _ in 0..8 {
        match initialize(&server, TOKEN_A).await {
            200 => sessions += 1,
            503 => break,
            other => panic!("initialize answered {other}"),
        }
    }
    assert!(sessions >= 1, "a got no session at all");
    assert_eq!(initialize(&server, TOKEN_B).await, 200, "a took every session (it holds {sessions})");

    let mut held = Vec::new();
    for _ in 0..8 {
        let response = listen(&server, TOKEN_A).await;
        match response.status().as_u16() {
            200 => held.push(response),
            503 => break,
            other => panic!("subscriptions/listen answered {other}"),
        }
    }
    assert!(!held.is_empty(), "a got no stream at all");
    let theirs = listen(&server, TOKEN_B).await;
    assert_eq!(theirs.status(), 200, "a took every stream (it holds {})", held.len());
    drop(theirs);

    let mut resources = server.resources_with(Auth::bearer(TOKEN_B)).await;
    let watch = bounded("WatchChanges", resources.watch_changes(task_mcp::pb::WatchChangesRequest::default())).await;
    assert!(watch.is_ok(), "b's gRPC watch refused while a holds {} streams: {:?}", held.len(), watch.err());
}

/// The stream half of the share on its own (above, a session cap reached first would hide it):
/// `a` takes streams until refused, and `b` still gets one. The same flood with the share turned
/// off (`--max-streams-per-principal 0`) leaves `b` refused: the check bites.
#[tokio::test]
async fn one_tenant_cannot_take_every_stream_from_another() {
    async fn b_after_a_floods(server: &Server) -> (usize, u16) {
        let mut held = Vec::new();
        for _ in 0..8 {
            let response = listen(server, TOKEN_A).await;
            match response.status().as_u16() {
                200 => held.push(response),
                503 => break,
                other => panic!("subscriptions/listen answered {other}"),
            }
        }
        (held.len(), listen(server, TOKEN_B).await.status().as_u16())
    }
    let shared = two_tenants(&["--max-streams", "4"]);
    let (held, b) = b_after_a_floods(&shared).await;
    assert_eq!((held, b), (2, 200), "a held {held} of 4 streams; b was answered {b}");
    let unshared = two_tenants(&["--max-streams", "4", "--max-streams-per-principal", "0"]);
    let (held, b) = b_after_a_floods(&unshared).await;
    assert_eq!((held, b), (4, 503), "without a share a takes every stream and b is refused");
}

/// Connections were not bounded: with the common soft open-file limit of 1,024, 1,100 silent
/// TCP connections to the HTTP port (no request, nothing to authenticate; the 30 s head timeout
/// closes them, and the client opens them again) left the process no descriptor: neither port
/// accepted, readiness failed and the workspace could open no file. Each listener now holds at
/// most its share of the limit, so the other port and the disk keep working.
#[tokio::test]
async fn silent_connections_cannot_use_up_the_file_descriptors() {
    let server = Server::builder().auth_token(&format!("a={TOKEN_A}")).nofile(512).start();
    let http_addr = server.http_addr.expect("the listening line names http_addr");
    let mut silent = Vec::new();
    for _ in 0..700 {
        let connect = tokio::net::TcpStream::connect(http_addr);
        if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_secs(2), connect).await {
            silent.push(stream);
        }
    }
    assert!(silent.len() >= 500, "the attack itself failed: only {} connections", silent.len());

    let mut changes = server.changes().await;
    let request = task_mcp::pb::OpenChangeRequest {
        title: "Still writable".into(),
        slug: "still-writable".into(),
        owner: "a".into(),
        ..Default::default()
    };
    let opened = bounded("OpenChange", changes.open_change(request)).await;
    assert!(opened.is_ok(), "a change could not be opened under the flood: {:?}", opened.err());
    server.assert_serving().await;

    drop(silent);
    // Once the attacker leaves, the HTTP port serves again (the closes reach the server
    // asynchronously, hence the bounded retries).
    let mut answered = None;
    for _ in 0..50 {
        match http().get(format!("{}/v1/tools", server.http_base())).bearer_auth(TOKEN_A).send().await {
            Ok(response) => {
                answered = Some(response.status().as_u16());
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(answered, Some(200));
}

/// systemd and most shells start a service at a soft open-file limit of 1,024 under a much
/// higher hard one; the connection caps follow the soft limit, so a server left there would
/// close connections past about 380 per listener. It raises the soft limit to the hard one.
#[tokio::test]
async fn the_soft_open_file_limit_is_raised_to_the_hard_one() {
    let server = Server::builder().nofile_limits(512, 4096).start();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.pid())).expect("read /proc/PID/limits");
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("a Max open files line");
    let figures: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(figures, ["4096", "4096"], "{line}");
    server.assert_serving().await;
}

/// A connection the server closed at once, as a full listener does: end of stream or a reset
/// within the bound. An admitted connection would stay open (HTTP waits 30 s for a request
/// head) or be answered (gRPC: the server's HTTP/2 SETTINGS).
async fn closed_by_server(stream: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    matches!(tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
}

/// `series{listener="<listener>"}` on the metrics endpoint, polled (bounded) until it reads
/// `want`: the listeners accept and notice closes asynchronously. The last reading.
async fn listener_metric_reaches(server: &Server, series: &str, listener: &str, want: f64) -> f64 {
    let selector = format!("{series}{{listener=\"{listener}\"");
    let mut got = f64::NAN;
    for _ in 0..100 {
        got = metric(server, &selector).await;
        if got == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    got
}

/// Saturation and refusals of the connection caps were invisible: the only trace was a
/// warning once a minute. Each listener now reports its open connections, its cap and the
/// connections it refused; filling one listener shows on it and not on the other.
#[tokio::test]
async fn open_and_refused_connections_are_counted_per_listener() {
    use tokio::{io::AsyncWriteExt, net::TcpStream};
    const CAP: usize = 4;
    // The HTTP/2 client preface and an empty SETTINGS frame: a gRPC connection that the server
    // hands to HTTP/2 and keeps (it answers with its own SETTINGS).
    const H2_HELLO: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    let server =
        Server::builder().auth_token(&format!("a={TOKEN_A}")).args(["--max-connections", &CAP.to_string()]).start();
    let http_addr = server.http_addr.expect("the listening line names http_addr");

    for (listener, addr) in [("http", http_addr), ("grpc", server.grpc_addr)] {
        let cap = listener_metric_reaches(&server, "listener_max_connections", listener, CAP as f64).await;
        assert_eq!(cap, CAP as f64, "{listener}: the cap");
        assert_eq!(listener_metric_reaches(&server, "listener_active_connections", listener, 0.0).await, 0.0);
        assert_eq!(listener_metric_reaches(&server, "listener_refused_connections_total", listener, 0.0).await, 0.0);

        let mut held = Vec::new();
        for _ in 0..CAP {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            if listener == "grpc" {
                stream.write_all(H2_HELLO).await.expect("HTTP/2 preface");
            }
            held.push(stream);
        }
        let open = listener_metric_reaches(&server, "listener_active_connections", listener, CAP as f64).await;
        assert_eq!(open, CAP as f64, "{listener}: open connections with {CAP} held");

        let mut over = TcpStream::connect(addr).await.expect("connect");
        assert!(closed_by_server(&mut over).await, "{listener}: a connection over the cap was not closed");
        let refused = listener_metric_reaches(&server, "listener_refused_connections_total", listener, 1.0).await;
        assert_eq!(refused, 1.0, "{listener}: refused connections");
        let open = metric(&server, &format!("listener_active_connections{{listener=\"{listener}\"")).await;
        assert_eq!(open, CAP as f64, "{listener}: the refused connection took no place");

        drop(held);
        drop(over);
        let open = listener_metric_reaches(&server, "listener_active_connections", listener, 0.0).await;
        assert_eq!(open, 0.0, "{listener}: open connections once all are closed");
    }
    // Each flood showed on its own listener only.
    for listener in ["http", "grpc"] {
        let refused = metric(&server, &format!("listener_refused_connections_total{{listener=\"{listener}\"")).await;
        assert_eq!(refused, 1.0, "{listener}");
    }
}

/// Two clients behind one reverse proxy. The test's connections come from loopback, which plays
/// the proxy; each request names its client in `X-Forwarded-For` as the proxy would.
const CLIENT_A: &str = "203.0.113.7";
const CLIENT_B: &str = "198.51.100.9";

async fn get_tools_via_proxy(server: &Server, forwarded_for: &str, token: &str) -> u16 {
    let request = http()
        .get(format!("{}/v1/tools", server.http_base()))
        .header("x-forwarded-for", forwarded_for)
        .bearer_auth(token)
        .send();
    request.await.expect("GET /v1/tools").status().as_u16()
}

/// ListChanges with a token and `x-forwarded-for` metadata, the gRPC face behind a proxy.
async fn list_via_proxy(server: &Server, forwarded_for: &str, token: &str) -> Result<(), tonic::Status> {
    let mut changes = task_mcp::pb::changes_client::ChangesClient::new(server.channel().await);
    let mut request = tonic::Request::new(ListChangesRequest::default());
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ASCII"));
    request.metadata_mut().insert("x-forwarded-for", forwarded_for.parse().expect("ASCII"));
    bounded("ListChanges", changes.list_changes(request)).await.map(|_| ())
}

/// Client A, with a stale token after a rotation, tries until it is refused (429).
async fn stale_client_until_throttled(server: &Server) {
    for _ in 0..20 {
        match get_tools_via_proxy(server, CLIENT_A, "stale-token").await {
            401 => continue,
            429 => return,
            other => panic!("a stale token got {other}"),
        }
    }
    panic!("20 stale tokens from one client and never throttled");
}

/// The throttle keyed on the TCP peer: behind a reverse proxy (the README's deployment, TLS at
/// the proxy) one client with a stale token locked out every client within a minute. With the
/// proxy trusted, only that client is refused, and prepending another client's address does
/// not pass its failures on. Without `--trusted-proxy` the same sequence refuses B too (the
/// check bites, and the header is ignored by default).
#[tokio::test]
async fn behind_a_trusted_proxy_one_clients_failures_throttle_only_that_client() {
    let behind = two_tenants(&["--auth-failures-per-minute", "3", "--trusted-proxy", "127.0.0.1/32"]);
    stale_client_until_throttled(&behind).await;
    assert_eq!(get_tools_via_proxy(&behind, CLIENT_B, TOKEN_B).await, 200, "B is refused for A's failures");
    assert_eq!(get_tools_via_proxy(&behind, CLIENT_A, TOKEN_A).await, 429, "A, throttled, with a valid token");
    // A writes B's address first; the proxy appends A's. Still A: refused, and its guesses are
    // not counted against B.
    let spoofed = format!("{CLIENT_B}, {CLIENT_A}");
    assert_eq!(get_tools_via_proxy(&behind, &spoofed, TOKEN_A).await, 429, "A passed as B by prepending it");
    for _ in 0..5 {
        assert_eq!(get_tools_via_proxy(&behind, &spoofed, "stale-token").await, 429);
    }
    assert_eq!(get_tools_via_proxy(&behind, CLIENT_B, TOKEN_B).await, 200, "A's spoofed guesses were B's");
    let throttled = metric(&behind, "auth_attempts_total{outcome=\"failure\",reason=\"throttled\"").await;
    assert!(throttled >= 7.0, "A's refusals are counted as throttled attempts: {throttled}");

    let untrusted = two_tenants(&["--auth-failures-per-minute", "3"]);
    stale_client_until_throttled(&untrusted).await;
    assert_eq!(get_tools_via_proxy(&untrusted, CLIENT_B, TOKEN_B).await, 429, "without --trusted-proxy all share");
}

/// The same over gRPC, whose proxies (Envoy, ingress-nginx) send `x-forwarded-for` too, and the
/// budget is one per client across both ports.
#[tokio::test]
async fn behind_a_trusted_proxy_grpc_failures_throttle_only_that_client() {
    async fn a_guesses_then_b_calls(server: &Server) -> Result<(), tonic::Status> {
        let mut throttled = false;
        for _ in 0..20 {
            match list_via_proxy(server, CLIENT_A, "stale-token").await {
                Err(status) if status.code() == Code::Unauthenticated => continue,
                Err(status) if status.code() == Code::ResourceExhausted => {
                    throttled = true;
                    break;
                }
                other => panic!("a stale token over gRPC: {other:?}"),
            }
        }
        assert!(throttled, "20 stale tokens over gRPC and never throttled");
        list_via_proxy(server, CLIENT_B, TOKEN_B).await
    }
    let behind = two_tenants(&["--auth-failures-per-minute", "3", "--trusted-proxy", "127.0.0.1"]);
    let b = a_guesses_then_b_calls(&behind).await;
    assert!(b.is_ok(), "B refused over gRPC for A's failures: {:?}", b.err());
    let a = list_via_proxy(&behind, &format!("{CLIENT_B},{CLIENT_A}"), TOKEN_A).await.expect_err("A is throttled");
    assert_eq!(a.code(), Code::ResourceExhausted, "A passed as B by prepending it: {a:?}");
    assert_eq!(get_tools_via_proxy(&behind, CLIENT_A, TOKEN_A).await, 429, "one budget per client for both ports");
    assert_eq!(get_tools_via_proxy(&behind, CLIENT_B, TOKEN_B).await, 200);

    let untrusted = two_tenants(&["--auth-failures-per-minute", "3"]);
    let b = a_guesses_then_b_calls(&untrusted).await.expect_err("without --trusted-proxy all share");
    assert_eq!(b.code(), Code::ResourceExhausted, "{b:?}");
}

/// `task-mcp gateway` in front of a service is a proxy too: it names the client it serves in
/// `x-forwarded-for`, so a service that trusts it throttles only the client whose token it
/// refuses. Here the gateway knows a token its service does not (token files rotated apart); the
/// gateway's own throttle is off, so only the service's bites. Keyed on the gateway's address,
/// A's refusals locked B out as well.
#[tokio::test]
async fn behind_a_separate_gateway_the_service_throttles_only_the_client_it_refuses() {
    let service = two_tenants(&["--auth-failures-per-minute", "3", "--trusted-proxy", "127.0.0.1"]);
    let (a, b) = (format!("a={TOKEN_A}"), format!("b={TOKEN_B}"));
    let gateway = common::Gateway::start(
        &service.endpoint(),
        &[
            "--auth-token",
            &a,
            "--auth-token",
            &b,
            "--auth-token",
            "rotated=known-to-the-gateway-only",
            "--auth-failures-per-minute",
            "0",
            "--trusted-proxy",
            "127.0.0.1",
        ],
        &[],
    );
    let list = |client: &'static str, token: &'static str| {
        let url = format!("http://{}/v1/tools/change.list", gateway.http_addr);
        async move {
            let request =
                http().post(url).header("x-forwarded-for", client).bearer_auth(token).json(&serde_json::json!({}));
            request.send().await.expect("POST change.list").status().as_u16()
        }
    };
    let mut throttled = false;
    for _ in 0..20 {
        match list(CLIENT_A, "known-to-the-gateway-only").await {
            401 => continue,
            429 => {
                throttled = true;
                break;
            }
            other => panic!("the service's refusal of a token only the gateway knows: {other}"),
        }
    }
    assert!(throttled, "the service never throttled A\n--- service ---\n{}", service.logs());
    assert_eq!(list(CLIENT_A, TOKEN_A).await, 429, "A, throttled by the service, with a valid token");
    assert_eq!(
        list(CLIENT_B, TOKEN_B).await,
        200,
        "B is refused for A's failures: the service keyed them on the gateway\n--- service ---\n{}",
        service.logs()
    );

    // A gateway that does not trust its peer names the peer, whatever the client wrote: a new
    // made-up address per guess buys no fresh budget at the service.
    let strict = common::Gateway::start(
        &service.endpoint(),
        &["--auth-token", "rotated=known-to-the-gateway-only", "--auth-failures-per-minute", "0"],
        &[],
    );
    let url = format!("http://{}/v1/tools/change.list", strict.http_addr);
    for guess in 0..20 {
        let request = http()
            .post(&url)
            .header("x-forwarded-for", format!("192.0.2.{guess}"))
            .bearer_auth("known-to-the-gateway-only")
            .json(&serde_json::json!({}));
        match request.send().await.expect("POST change.list").status().as_u16() {
            401 => continue,
            429 => return,
            other => panic!("a token only the gateway knows: {other}"),
        }
    }
    panic!("20 guesses, each under a made-up address, and the service never throttled their sender");
}

/// The log lines of requests the HTTP face refused, once the one of the request `last_id` is
/// among them (the server's output reaches the test through a pipe, after the answers).
async fn refusal_lines(server: &Server, last_id: &str) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let lines: Vec<serde_json::Value> = server
            .logs()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|l| l["message"] == "request refused")
            .collect();
        if lines.iter().any(|l| l["request_id"] == last_id) || std::time::Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An operator asking "why is this client refused?" finds one line per refusal naming the
/// reason, the client and the request id; a flood of bad requests does not flood the log.
#[tokio::test]
async fn each_refusal_is_logged_with_its_reason_and_client_within_a_budget() {
    let server = two_tenants(&["--auth-failures-per-minute", "0"]);
    let base = server.http_base();
    let expect = [
        (get_tools(&server, None).await, "MISSING_TOKEN", 401, "INFO"),
        (get_tools(&server, Some("Bearer stale")).await, "INVALID_TOKEN", 401, "WARN"),
        (
            http().get(format!("{base}/v1/tools")).header("origin", "http://evil.example").send().await.unwrap(),
            "ORIGIN_NOT_ALLOWED",
            403,
            "WARN",
        ),
        (
            http()
                .post(format!("{base}/v1/tools/change.show"))
                .bearer_auth(TOKEN_A)
                .body(vec![b' '; 2 * 1024 * 1024])
                .send()
                .await
                .unwrap(),
            "BODY_TOO_LARGE",
            413,
            "WARN",
        ),
    ];
    let last_id = expect[expect.len() - 1].0.headers()["x-request-id"].to_str().unwrap();
    let lines = refusal_lines(&server, last_id).await;
    assert_eq!(lines.len(), expect.len(), "{lines:#?}");
    for ((response, reason, status, level), line) in expect.iter().zip(&lines) {
        assert_eq!(response.status().as_u16(), *status, "{reason}");
        let request_id = response.headers()["x-request-id"].to_str().unwrap();
        assert_eq!(line["reason"], *reason, "{line}");
        assert_eq!(line["status"], *status, "{line}");
        assert_eq!(line["level"], *level, "{line}");
        assert_eq!(line["client"], "127.0.0.1", "{line}");
        assert_eq!(line["request_id"], request_id, "{line}");
        assert_eq!(line["not_logged"], 0, "{line}");
    }

    // A flood: at most ten lines a second, and the next line written counts the rest.
    let started = std::time::Instant::now();
    for _ in 0..300 {
        assert_eq!(get_tools(&server, Some("Bearer stale")).await.status(), 401);
    }
    let seconds = started.elapsed().as_secs() + 1;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let last = get_tools(&server, Some("Bearer stale")).await;
    // Lines come in order; the last is the one after the pause.
    let last_id = last.headers()["x-request-id"].to_str().unwrap();
    let mut lines = refusal_lines(&server, last_id).await.split_off(expect.len());
    let after_pause = lines.pop().expect("the line after the pause");
    let flood = lines.len();
    assert!(flood as u64 <= 10 * seconds, "{flood} lines for 300 refusals in about {seconds} s");
    // Every refusal is either a line or counted by a later one.
    let counted: u64 = lines.iter().chain([&after_pause]).map(|l| l["not_logged"].as_u64().unwrap_or(0)).sum();
    assert_eq!(flood as u64 + counted, 300, "{flood} lines, {counted} counted as not logged");
    // Which line carries a count depends on where the seconds fell (on a loaded machine the
    // flood's last second may hold ten refusals or fewer, all logged); that some line does is not.
    assert!(counted > 0, "no line counted a refusal it did not log: {after_pause}");
}

/// A cap set above what the open-file limit allows brings back the failure the cap prevents
/// (a flood leaves no descriptor for the workspace): the server says so at start. The default,
/// derived from the limit, fits it.
#[tokio::test]
async fn a_connection_cap_above_the_open_file_limit_is_named_at_start() {
    let warned = |server: &Server| server.logs().contains("--max-connections needs more open files");
    let fitting = Server::builder().nofile(512).start();
    fitting.assert_serving().await;
    assert!(!warned(&fitting), "the default cap was warned about:\n{}", fitting.logs());

    let over = Server::builder().nofile(512).args(["--max-connections", "1000"]).start();
    over.assert_serving().await;
    let line = over
        .logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["message"].as_str().is_some_and(|m| m.starts_with("--max-connections needs more open files")))
        .unwrap_or_else(|| panic!("no warning for a cap of 1000 under 512 open files:\n{}", over.logs()));
    assert_eq!(line["level"], "WARN", "{line}");
    assert_eq!(line["needed"], 2 * 1000 + 256, "{line}");
    assert_eq!(line["open_file_limit"], 512, "{line}");
}
