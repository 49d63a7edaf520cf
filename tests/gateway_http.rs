//! The gateway over real HTTP: the same answers as gRPC and grpcurl, the spec's
//! status codes for every bad request, streaming progress, sessions and health.
mod common;

use std::{process::Command, time::Duration};

use common::{
    Server,
    mcp::{ACCEPT_BOTH, Mcp, read_messages_until, sse_messages},
};
use futures_util::StreamExt;
use serde_json::{Value, json};

fn base(server: &Server) -> String {
    format!("http://{}", server.http_addr.expect("the listening line names http_addr"))
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(20)).build().expect("http client")
}

/// A session with the server's gateway in `version`.
async fn connect(server: &Server, version: &str) -> Mcp {
    Mcp::connect(client(), format!("{}/mcp", base(server)), None, version, "gateway-test").await
}

fn grpcurl(server: &Server, method: &str, data: &Value) -> Value {
    let out = Command::new("grpcurl")
        .args(["-plaintext", "-emit-defaults", "-d", &data.to_string(), &server.grpcurl_addr(), method])
        .output()
        .expect("grpcurl on PATH (run scripts/install-test-tools)");
    assert!(out.status.success(), "grpcurl {method}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("grpcurl prints JSON")
}

async fn rest(server: &Server, tool: &str, args: Value) -> (u16, Value) {
    let resp = client().post(format!("{}/v1/tools/{tool}", base(server))).json(&args).send().await.expect("REST call");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("REST answers JSON"))
}

#[tokio::test]
async fn the_same_call_returns_the_same_data_over_mcp_rest_and_grpcurl() {
    let server = Server::start();
    let mut mcp = connect(&server, "2025-11-25").await;
    let opened =
        mcp.call("change.open", json!({"title": "Same everywhere", "slug": "same-data", "owner": "alice"})).await;
    assert_eq!(opened["isError"], false, "{opened}");
    assert_eq!(opened["structuredContent"]["change"]["slug"], "same-data");
    mcp.call("task.update", json!({"slug": "same-data", "owner": "alice", "updates": [{"id": "1.1", "done": true}]}))
        .await;

    for (tool, rpc, args) in [
        ("change.show", "taskmcp.v1.Changes/ShowChange", json!({"slug": "same-data"})),
        ("change.list", "taskmcp.v1.Changes/ListChanges", json!({})),
        ("change.validate", "taskmcp.v1.Changes/ValidateChange", json!({"slug": "same-data"})),
    ] {
        let via_mcp = mcp.call(tool, args.clone()).await["structuredContent"].clone();
        let (status, via_rest) = rest(&server, tool, args.clone()).await;
        assert_eq!(status, 200, "{tool} over REST: {via_rest}");
        let via_grpc = grpcurl(&server, rpc, &args);
        assert_eq!(via_mcp, via_rest, "{tool}: MCP and REST differ");
        assert_eq!(via_rest, via_grpc, "{tool}: REST and grpcurl differ");
    }
    // The MCP text block carries the same JSON as structuredContent.
    let shown = mcp.call("change.show", json!({"slug": "same-data"})).await;
    let text: Value = serde_json::from_str(shown["content"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(text, shown["structuredContent"]);

    // The resource list too: REST as grpcurl prints it (proto3 JSON, 64-bit sizes as strings),
    // MCP with sizes as numbers, and no size where the service knows none.
    let via_grpc = grpcurl(&server, "taskmcp.v1.Resources/ListResources", &json!({}));
    let via_rest: Value =
        client().get(format!("{}/v1/resources", base(&server))).send().await.unwrap().json().await.unwrap();
    assert_eq!(via_rest, via_grpc, "resources: REST and grpcurl differ");
    let listed = mcp.request("resources/list", json!({})).await;
    let via_mcp = listed["result"]["resources"].as_array().expect("resources").clone();
    let from_grpc: Vec<Value> = via_grpc["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let mut r = r.clone();
            match r["size"].as_str().map(|s| s.parse::<u64>().unwrap()) {
                Some(size) if size > 0 => r["size"] = json!(size),
                _ => drop(r.as_object_mut().unwrap().remove("size")),
            }
            r
        })
        .collect();
    assert_eq!(via_mcp, from_grpc, "resources: MCP and grpcurl differ");
    assert!(via_mcp.iter().any(|r| r["uri"] == "changes://active" && r.get("size").is_none()), "{via_mcp:?}");
}

/// `change.open`'s `resourceUris` (marked `(taskmcp.v1.resource_link)` in the proto) come as
/// `resource_link` blocks after the text block from 2025-06-18 on, each one readable; 2025-03-26
/// has no such block and gets the text block alone.
#[tokio::test]
async fn a_tool_links_the_resources_it_names_where_the_version_has_resource_links() {
    let server = Server::start();
    let mut mcp = connect(&server, "2025-11-25").await;
    let opened = mcp.call("change.open", json!({"title": "Linked", "slug": "linked", "owner": "alice"})).await;
    assert_eq!(opened["isError"], false, "{opened}");
    let named: Vec<Value> = opened["structuredContent"]["resourceUris"].as_array().expect("resourceUris").clone();
    assert!(named.len() >= 2, "{opened}");
    let content = opened["content"].as_array().expect("content");
    assert_eq!(content[0]["type"], "text", "the text block first: {opened}");
    let links: Vec<&Value> = content[1..].iter().collect();
    assert_eq!(links.len(), named.len(), "one link per URI: {opened}");
    for (link, uri) in links.iter().zip(&named) {
        assert_eq!(link["type"], "resource_link");
        assert_eq!(&link["uri"], uri);
        let name = uri.as_str().and_then(|u| u.strip_prefix("change://")).expect("a change URI");
        assert_eq!(link["name"], name);
        let read = mcp.request("resources/read", json!({"uri": uri})).await;
        assert_eq!(read["result"]["contents"][0]["uri"], *uri, "the link reads: {read}");
    }
    let shown = mcp.call("change.show", json!({"slug": "linked"})).await;
    assert_eq!(shown["content"].as_array().map(Vec::len), Some(1), "change.show marks no field: {shown}");

    let mut old = connect(&server, "2025-03-26").await;
    let again = old.call("change.open", json!({"title": "Linked", "slug": "linked", "owner": "alice"})).await;
    assert_eq!(again["isError"], false, "{again}");
    assert_eq!(again["content"].as_array().map(Vec::len), Some(1), "no resource_link before 2025-06-18: {again}");
}

#[tokio::test]
async fn tool_failures_are_tool_errors_over_mcp_and_mapped_statuses_over_rest() {
    let server = Server::start();
    let mut mcp = connect(&server, "2025-11-25").await;
    let missing = mcp.call("change.show", json!({"slug": "no-such-change"})).await;
    assert_eq!(missing["isError"], true, "{missing}");
    assert!(missing["content"][0]["text"].as_str().unwrap().starts_with("CHANGE_NOT_FOUND"), "{missing}");

    let unknown = mcp.request("tools/call", json!({"name": "no.such.tool", "arguments": {}})).await;
    assert_eq!(unknown["error"]["code"], -32602, "unknown tool is a protocol error: {unknown}");

    let (status, body) = rest(&server, "change.show", json!({"slug": "no-such-change"})).await;
    assert_eq!(
        (status, body["code"].as_str(), body["reason"].as_str()),
        (404, Some("NOT_FOUND"), Some("CHANGE_NOT_FOUND"))
    );
    let (status, body) = rest(&server, "change.open", json!({"title": "x", "slug": "../etc"})).await;
    assert_eq!((status, body["reason"].as_str()), (400, Some("INVALID_SLUG")), "{body}");
    rest(&server, "change.open", json!({"title": "x", "slug": "held-one", "owner": "alice"})).await;
    let (status, body) = rest(&server, "change.open", json!({"title": "x", "slug": "held-one", "owner": "bob"})).await;
    assert_eq!((status, body["reason"].as_str()), (409, Some("LOCKED_BY_OTHER_OWNER")), "{body}");
    assert_eq!(body["details"]["errorInfo"]["metadata"]["holder"], "alice", "{body}");
    let (status, _) = rest(&server, "no.such.tool", json!({})).await;
    assert_eq!(status, 404);
    let (status, body) = rest(&server, "change.show", json!({"slug": "x", "bogus": 1})).await;
    assert_eq!(status, 400, "unknown fields are refused: {body}");
}

#[tokio::test]
async fn every_bad_request_the_spec_names_gets_its_status_and_leaks_no_session() {
    let server = Server::start();
    let http = client();
    let url = format!("{}/mcp", base(&server));
    let init = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}});
    let ping = json!({"jsonrpc":"2.0","id":2,"method":"ping"});
    let mut mcp = connect(&server, "2025-11-25").await;

    struct Case {
        name: &'static str,
        req: reqwest::RequestBuilder,
        status: u16,
        jsonrpc_code: Option<i64>,
    }
    let post = || http.post(&url).header("accept", ACCEPT_BOTH);
    let cases = vec![
        Case {
            name: "wrong Accept",
            req: http.post(&url).header("accept", "application/json").json(&init),
            status: 406,
            jsonrpc_code: Some(-32000),
        },
        Case {
            name: "bad Content-Type",
            req: post().header("content-type", "text/plain").body(init.to_string()),
            status: 415,
            jsonrpc_code: Some(-32000),
        },
        Case {
            name: "malformed JSON",
            req: post().header("content-type", "application/json").body("{\"jsonrpc\":"),
            status: 400,
            jsonrpc_code: Some(-32700),
        },
        Case {
            name: "not JSON-RPC",
            req: post().json(&json!({"hello": "world"})),
            status: 400,
            jsonrpc_code: Some(-32600),
        },
        Case {
            name: "batch where none is allowed",
            req: post().header("mcp-session-id", &mcp.session).json(&json!([ping, ping])),
            status: 400,
            jsonrpc_code: Some(-32600),
        },
        Case { name: "missing session", req: post().json(&ping), status: 400, jsonrpc_code: Some(-32000) },
        Case {
            name: "unknown session",
            req: post().header("mcp-session-id", "0123456789abcdef0123456789abcdef").json(&ping),
            status: 404,
            jsonrpc_code: Some(-32001),
        },
        Case {
            name: "bad protocol version",
            req: post().header("mcp-session-id", &mcp.session).header("mcp-protocol-version", "1999-01-01").json(&ping),
            status: 400,
            jsonrpc_code: Some(-32000),
        },
        Case {
            name: "bad Origin",
            req: post().header("origin", "http://evil.example").json(&init),
            status: 403,
            jsonrpc_code: None,
        },
        Case {
            name: "bad Host",
            req: post().header("host", "evil.example").json(&init),
            status: 403,
            jsonrpc_code: None,
        },
        Case {
            name: "GET without SSE in Accept",
            req: http.get(&url).header("accept", "application/json").header("mcp-session-id", &mcp.session),
            status: 406,
            jsonrpc_code: Some(-32000),
        },
        Case {
            name: "DELETE of an unknown session",
            req: http.delete(&url).header("mcp-session-id", "ffffffffffffffffffffffffffffffff"),
            status: 404,
            jsonrpc_code: Some(-32001),
        },
    ];
    let mut failures = Vec::new();
    for case in cases {
        let resp = case.req.send().await.expect(case.name);
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status != case.status {
            failures.push(format!("{}: status {status}, want {} ({body})", case.name, case.status));
            continue;
        }
        if let Some(code) = case.jsonrpc_code
            && body["error"]["code"] != code
        {
            failures.push(format!("{}: JSON-RPC code {}, want {code} ({body})", case.name, body["error"]["code"]));
        }
        if body.is_object()
            && body.get("jsonrpc").is_some()
            && body["error"]["message"].as_str().unwrap_or("").is_empty()
        {
            failures.push(format!("{}: error without a message ({body})", case.name));
        }
    }
    assert!(failures.is_empty(), "bad requests answered wrongly:\n{}", failures.join("\n"));

    // An oversize body is refused from its Content-Length, before the server reads it:
    // send only the headers and read the answer.
    let head = format!(
        "POST /mcp HTTP/1.1\r\nHost: {}\r\nAccept: {ACCEPT_BOTH}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        server.http_addr.unwrap(),
        2 * 1024 * 1024
    );
    let mut tcp = tokio::net::TcpStream::connect(server.http_addr.unwrap()).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut tcp, head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), tokio::io::AsyncReadExt::read(&mut tcp, &mut answer))
        .await
        .expect("an answer without sending the body")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "oversize body: {answer}");
    assert!(answer.contains("\"jsonrpc\":\"2.0\""), "a JSON-RPC error body on /mcp: {answer}");

    // The session still works, and nothing above created one.
    assert_eq!(mcp.request("ping", json!({})).await["result"], json!({}));
    let metrics: Value =
        http.get(format!("{}/health/metrics", base(&server))).send().await.unwrap().json().await.unwrap();
    assert_eq!(metrics["sessions"], 1, "only the real session exists: {metrics}");
    // DELETE ends it; afterwards the id is unknown.
    let deleted = http.delete(&url).header("mcp-session-id", &mcp.session).send().await.unwrap();
    assert!(deleted.status().is_success(), "DELETE: {}", deleted.status());
    let after = mcp.post(json!({"jsonrpc":"2.0","id":9,"method":"ping"})).await;
    assert_eq!(after.status(), 404);
}

#[tokio::test]
async fn progress_streams_over_mcp_sse_and_rest_ndjson() {
    let server = Server::start();
    let mut mcp = connect(&server, "2025-11-25").await;
    for slug in ["stream-mcp", "stream-rest"] {
        mcp.call("change.open", json!({"title": "Stream", "slug": slug, "owner": "alice"})).await;
    }
    let resp = mcp
        .post(json!({"jsonrpc":"2.0","id":50,"method":"tools/call","params":{
            "name":"change.archive","arguments":{"slug":"stream-mcp","owner":"alice"},"_meta":{"progressToken":"p-1"}}}))
        .await;
    assert_eq!(resp.headers().get("content-type").unwrap(), "text/event-stream");
    let text = resp.text().await.unwrap();
    assert!(text.starts_with("id: "), "a priming event with an id comes first: {text}");
    let messages = sse_messages(&text);
    let progress: Vec<&Value> = messages.iter().filter(|m| m["method"] == "notifications/progress").collect();
    assert_eq!(progress.len(), 4, "one progress notification per archive step: {messages:?}");
    assert!(progress.iter().all(|p| p["params"]["progressToken"] == "p-1"));
    let values: Vec<f64> = progress.iter().map(|p| p["params"]["progress"].as_f64().unwrap()).collect();
    assert!(values.windows(2).all(|w| w[0] < w[1]), "progress increases: {values:?}");
    let last = messages.last().unwrap();
    assert_eq!(last["id"], 50, "the response ends the stream: {last}");
    assert_eq!(last["result"]["structuredContent"]["receipt"]["slug"], "stream-mcp", "{last}");

    let resp = client()
        .post(format!("{}/v1/tools/change.archive", base(&server)))
        .header("accept", "application/x-ndjson")
        .json(&json!({"slug": "stream-rest", "owner": "alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = String::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        body.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    let lines: Vec<Value> = body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.iter().filter(|l| l.get("progress").is_some()).count(), 4, "{body}");
    assert_eq!(lines.last().unwrap()["result"]["receipt"]["slug"], "stream-rest", "{body}");
}

/// A workspace deleted (or its volume unmounted) under the running server: readiness names the
/// workspace, not the upstream, and an open is refused as WORKSPACE_UNUSABLE, not as an anonymous
/// internal error; the folders are not made again on whatever disk is underneath.
#[tokio::test]
async fn a_workspace_gone_under_the_server_is_named_by_readiness_and_by_open() {
    let server = Server::start();
    let http = client();
    std::fs::remove_dir_all(&server.workspace).expect("remove the workspace");

    let open = http
        .post(format!("{}/v1/tools/change.open", base(&server)))
        .json(&json!({"slug": "after-the-fall", "owner": "ops", "title": "After the fall"}))
        .send()
        .await
        .unwrap();
    let status = open.status();
    let body: Value = open.json().await.unwrap();
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["reason"], "WORKSPACE_UNUSABLE", "{body}");
    assert!(body["message"].as_str().is_some_and(|m| m.contains("the folder is gone")), "{body}");

    // The writable probe runs every 5 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let body = loop {
        let ready = http.get(format!("{}/health/ready", base(&server))).send().await.unwrap();
        if ready.status() == 503 {
            break ready.json::<Value>().await.unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "/health/ready still {} without a workspace", ready.status());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(body["failing"], json!(["workspace"]), "{body}");
    assert_eq!(body["checks"]["upstream"], "ok", "{body}");
    assert!(!server.workspace.exists(), "the workspace was made again");
}

#[tokio::test]
async fn health_routes_answer_without_credentials_and_the_rest_needs_them() {
    let server = Server::builder().auth_token("ops=s3cret-token").start();
    let http = client();
    let live = http.get(format!("{}/health/live", base(&server))).send().await.unwrap();
    assert_eq!(live.status(), 200);
    let ready = http.get(format!("{}/health/ready", base(&server))).send().await.unwrap();
    assert_eq!(ready.status(), 200, "{:?}", ready.text().await);
    let denied = http.get(format!("{}/v1/tools", base(&server))).send().await.unwrap();
    assert_eq!(denied.status(), 401);
    assert!(denied.headers().get("www-authenticate").is_some_and(|v| v.to_str().unwrap().starts_with("Bearer")));
    let tools: Value = http
        .get(format!("{}/v1/tools", base(&server)))
        .bearer_auth("s3cret-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = tools["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["change.archive", "change.list", "change.open", "change.show", "change.validate", "task.update"]
    );
    // Only live and ready are open; the metrics summary needs a token like everything else.
    let hidden = http.get(format!("{}/health/metrics", base(&server))).send().await.unwrap();
    assert_eq!(hidden.status(), 401);
    let metrics: Value = http
        .get(format!("{}/health/metrics", base(&server)))
        .bearer_auth("s3cret-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(metrics["uptime_seconds"].is_number(), "{metrics}");

    // Paths and methods nothing serves still answer with the REST error body.
    for (method, path, status, allow) in [
        (reqwest::Method::POST, "/health/live", 405, Some("GET, HEAD")),
        (reqwest::Method::DELETE, "/health/ready", 405, Some("GET, HEAD")),
        (reqwest::Method::GET, "/health/live/", 404, None),
        (reqwest::Method::GET, "/v1", 404, None),
        (reqwest::Method::GET, "/nowhere", 404, None),
    ] {
        let res = http.request(method.clone(), format!("{}{path}", base(&server))).send().await.unwrap();
        assert_eq!(res.status(), status, "{method} {path}");
        assert_eq!(res.headers().get("allow").map(|v| v.to_str().unwrap().to_string()).as_deref(), allow);
        let body: Value = res.json().await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert!(body["reason"].is_string(), "{method} {path}: {body}");
    }
}

#[tokio::test]
async fn the_rate_limit_answers_429_with_retry_after() {
    let server = Server::builder().rate_limit(1, 2).start();
    let http = client();
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..4 {
        let resp = http.get(format!("{}/v1/tools", base(&server))).send().await.unwrap();
        if resp.status() == 429 {
            retry_after = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
        }
        statuses.push(resp.status().as_u16());
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    let secs: u64 = retry_after.expect("Retry-After on 429").parse().expect("whole seconds");
    assert!(secs >= 1);
}

#[tokio::test]
async fn a_dropped_sse_answer_resumes_with_last_event_id_on_get() {
    let server = Server::start();
    let mut mcp = connect(&server, "2025-11-25").await;
    mcp.call("change.open", json!({"title": "Resume", "slug": "resume-me", "owner": "alice"})).await;
    let resp = mcp
        .post(json!({"jsonrpc":"2.0","id":77,"method":"tools/call","params":{
            "name":"change.archive","arguments":{"slug":"resume-me","owner":"alice"},"_meta":{"progressToken":"r"}}}))
        .await;
    // Read until the first message event and remember its id. The client then
    // loses the connection; the server cannot tell yet (a dead peer shows only
    // at the next write), which the test pins by keeping this end open.
    let mut stream = resp.bytes_stream();
    let mut seen = String::new();
    let first_id = loop {
        let chunk = stream.next().await.expect("the stream yields events").unwrap();
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
        if let Some(event) = seen.split("\n\n").find(|e| e.contains("data: {")) {
            break event.lines().find_map(|l| l.strip_prefix("id: ")).expect("message events carry ids").to_string();
        }
    };

    let resumed = client()
        .get(format!("{}/mcp", base(&server)))
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &mcp.session)
        .header("last-event-id", &first_id)
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status(), 200, "resuming takes the stream over from the lost connection");
    let text = resumed.text().await.unwrap();
    assert!(text.starts_with("retry: "), "the client is told when to retry: {text}");
    // The replay is every event after the one we saw, in order, with no gap and no repeat:
    // ids `<stream>-(seq+1)`, `<stream>-(seq+2)`, ... through to the response.
    let (stream_id, first_seq) = first_id.split_once('-').expect("ids are <stream>-<seq>");
    let first_seq: u64 = first_seq.parse().expect("a numeric sequence");
    let ids: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("id: ")).collect();
    let want: Vec<String> = (1..=ids.len() as u64).map(|n| format!("{stream_id}-{}", first_seq + n)).collect();
    assert!(!ids.is_empty(), "nothing replayed: {text}");
    assert_eq!(ids, want, "replayed ids resume right after {first_id}: {text}");
    let replayed = sse_messages(&text);
    assert_eq!(replayed.len(), ids.len(), "one message per replayed id: {text}");
    let last = replayed.last().expect("replayed events");
    assert_eq!(last["id"], 77, "the stream resumes through to the response: {text}");
    assert_eq!(last["result"]["structuredContent"]["receipt"]["slug"], "resume-me");
    // What the client saw (through the event it acknowledged) and the replay add up to every
    // progress notification, 1..=total, and the response, each exactly once.
    let acknowledged =
        seen.split_inclusive("\n\n").take_while(|e| !e.contains(&format!("id: {first_id}\n"))).count() + 1;
    let before: String = seen.split_inclusive("\n\n").take(acknowledged).collect();
    let all: Vec<Value> = sse_messages(&before).into_iter().chain(replayed).collect();
    let progress: Vec<&Value> = all.iter().filter(|m| m["method"] == "notifications/progress").collect();
    let responses = all.iter().filter(|m| m["id"] == 77).count();
    assert_eq!(progress.len() + responses, all.len(), "only progress and the response: {all:?}");
    assert_eq!(responses, 1, "the response exactly once: {all:?}");
    let total = progress.last().expect("progress notifications")["params"]["total"].as_f64().expect("a total");
    let steps: Vec<f64> = progress.iter().map(|m| m["params"]["progress"].as_f64().expect("progress")).collect();
    let every: Vec<f64> = (1..=total as u64).map(|n| n as f64).collect();
    assert_eq!(steps, every, "each progress step exactly once, in order: {all:?}");
    // The old response ends rather than holding a stream slot (a bound, not a speed check).
    let old_end = tokio::time::timeout(Duration::from_secs(10), async { while stream.next().await.is_some() {} }).await;
    assert!(old_end.is_ok(), "the superseded response ends");
}

#[tokio::test]
async fn sessions_are_bounded_and_expire_when_idle() {
    let server = Server::builder().args(["--max-sessions", "2", "--session-idle-seconds", "1"]).start();
    let first = connect(&server, "2025-11-25").await;
    let _second = connect(&server, "2025-06-18").await;
    let init = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}});
    let full =
        client().post(format!("{}/mcp", base(&server))).header("accept", ACCEPT_BOTH).json(&init).send().await.unwrap();
    assert_eq!(full.status(), 503, "a third session is refused while two live");
    assert!(full.headers().get("retry-after").is_some(), "503 says when to retry");

    // Wait out the idle timeout (a bound, not a speed check), then the old sessions are gone
    // and their slots are free again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let expired = first;
    let resp = expired.post(json!({"jsonrpc":"2.0","id":5,"method":"ping"})).await;
    assert_eq!(resp.status(), 404, "an idle session expires");
    let mut fresh = connect(&server, "2025-11-25").await;
    assert_eq!(fresh.request("ping", json!({})).await["result"], json!({}));
}

#[tokio::test]
async fn a_deleted_session_ends_its_stream_and_its_id_is_good_on_its_own_endpoint_only() {
    let server = Server::start();
    let mcp = connect(&server, "2025-11-25").await;
    // Another stream's events being gone is no reason to drop the session: 400, not 404.
    let gone = client()
        .get(format!("{}/mcp", base(&server)))
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &mcp.session)
        .header("last-event-id", "7-1")
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 400);
    // A Streamable HTTP session id means nothing to the legacy transport.
    let legacy = client()
        .post(format!("{}/messages?sessionId={}", base(&server), mcp.session))
        .json(&json!({"jsonrpc":"2.0","id":"x1","method":"ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(legacy.status(), 404);

    let mut stream = mcp.open_stream().await;
    let deleted =
        client().delete(format!("{}/mcp", base(&server))).header("mcp-session-id", &mcp.session).send().await.unwrap();
    assert_eq!(deleted.status(), 200);
    // The stream ends rather than idling on (a bound, not a speed check).
    let ended =
        tokio::time::timeout(Duration::from_secs(10), async { while let Ok(Some(_)) = stream.chunk().await {} }).await;
    assert!(ended.is_ok(), "the deleted session's stream ends");
    assert_eq!(mcp.post(json!({"jsonrpc":"2.0","id":9,"method":"ping"})).await.status(), 404);
}

#[tokio::test]
async fn malformed_params_are_protocol_errors_not_empty_answers() {
    let server = Server::start();
    let mut mcp = connect(&server, "2025-11-25").await;
    // Params that are not an object fail the message's envelope: 400, with the JSON-RPC error.
    let resp = mcp.post(json!({"jsonrpc":"2.0","id":3,"method":"tools/list","params":"abc"})).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"]["code"], -32602);
    let cases = [
        ("resources/templates/list", json!({"cursor": "garbage"})),
        ("prompts/list", json!({"cursor": "garbage"})),
        ("completion/complete", json!({})),
        (
            "completion/complete",
            json!({"ref": {"type": "ref/prompt", "name": "nope"}, "argument": {"name": "a", "value": ""}}),
        ),
    ];
    for (method, params) in cases {
        let answer = mcp.request(method, params.clone()).await;
        assert_eq!(answer["error"]["code"], -32602, "{method} {params}: {answer}");
    }

    let old = connect(&server, "2025-03-26").await;
    let init = json!({"jsonrpc":"2.0","id":5,"method":"initialize","params":{"protocolVersion":"2025-03-26","capabilities":{},"clientInfo":{"name":"t","version":"1"}}});
    let answers: Value = old.post(json!([init, {"jsonrpc":"2.0","id":6,"method":"ping"}])).await.json().await.unwrap();
    assert_eq!(answers[0]["error"]["code"], -32600, "initialize in a batch: {answers}");
    assert_eq!(answers[1]["result"], json!({}), "the rest of the batch runs: {answers}");
    assert_eq!(old.post(json!([])).await.status(), 400, "an empty batch");
}

#[tokio::test]
async fn slugs_complete_for_the_change_resource_templates() {
    let server = Server::start();
    let mut mcp = connect(&server, "2025-11-25").await;
    for slug in ["complete-alpha", "complete-beta", "other-change"] {
        mcp.call("change.open", json!({"title": "C", "slug": slug, "owner": "alice"})).await;
    }
    let answer = mcp
        .request(
            "completion/complete",
            json!({"ref": {"type": "ref/resource", "uri": "change://{slug}/proposal"}, "argument": {"name": "slug", "value": "complete-"}}),
        )
        .await;
    assert_eq!(answer["result"]["completion"]["values"], json!(["complete-alpha", "complete-beta"]), "{answer}");
    assert_eq!(
        (&answer["result"]["completion"]["total"], &answer["result"]["completion"]["hasMore"]),
        (&json!(2), &json!(false))
    );

    // Past the 100 a completion may carry, the count says how many matched in all.
    for n in 0..101 {
        mcp.call("change.open", json!({"title": "C", "slug": format!("bulk-{n:03}"), "owner": "alice"})).await;
    }
    let answer = mcp
        .request(
            "completion/complete",
            json!({"ref": {"type": "ref/resource", "uri": "change://{slug}/tasks"}, "argument": {"name": "slug", "value": "bulk-"}}),
        )
        .await;
    let completion = &answer["result"]["completion"];
    assert_eq!(completion["values"].as_array().map(Vec::len), Some(100), "{answer}");
    assert_eq!((&completion["total"], &completion["hasMore"]), (&json!(101), &json!(true)), "{answer}");

    // The delta template expands a nested path as RFC 6570 reserved expansion does.
    let templates = mcp.request("resources/templates/list", json!({})).await;
    let delta =
        templates["result"]["resourceTemplates"].as_array().unwrap().iter().find(|t| t["name"] == "delta").cloned();
    assert_eq!(delta.map(|t| t["uriTemplate"].clone()), Some(json!("change://{slug}/delta/{+path}")));

    // Its `path` completes from the change named in the arguments already resolved.
    let specs = server.workspace.join("changes/complete-alpha/specs");
    std::fs::create_dir_all(specs.join("auth")).unwrap();
    std::fs::write(specs.join("auth/spec.md"), "## ADDED Requirements\n").unwrap();
    std::fs::write(specs.join("audit.md"), "## ADDED Requirements\n").unwrap();
    let paths = |slug: Value, value: &str| {
        json!({"ref": {"type": "ref/resource", "uri": "change://{slug}/delta/{+path}"},
            "argument": {"name": "path", "value": value}, "context": {"arguments": {"slug": slug}}})
    };
    let answer = mcp.request("completion/complete", paths(json!("complete-alpha"), "au")).await;
    assert_eq!(answer["result"]["completion"]["values"], json!(["audit.md", "auth/spec.md"]), "{answer}");
    for (slug, why) in [(json!("no-such-change"), "an unknown change"), (json!("Not A Slug"), "no slug")] {
        let answer = mcp.request("completion/complete", paths(slug, "")).await;
        assert_eq!(answer["result"]["completion"]["values"], json!([]), "{why}: {answer}");
    }
}

#[tokio::test]
async fn a_subscription_to_the_active_list_hears_of_every_change_and_initialize_needs_a_version() {
    let server = Server::start();
    let mut mcp = connect(&server, "2025-11-25").await;
    mcp.call("change.open", json!({"title": "Watched", "slug": "watched-list", "owner": "alice"})).await;
    let subscribed = mcp.request("resources/subscribe", json!({"uri": "changes://active"})).await;
    assert!(subscribed.get("result").is_some(), "{subscribed}");
    let mut stream = mcp.open_stream().await;
    // A tick changes the entry's progress in `changes://active`: an update of that resource.
    mcp.call(
        "task.update",
        json!({"slug": "watched-list", "owner": "alice", "updates": [{"id": "1.1", "done": true}]}),
    )
    .await;
    let mut seen = String::new();
    let heard = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if sse_messages(&seen)
                .iter()
                .any(|m| m["method"] == "notifications/resources/updated" && m["params"]["uri"] == "changes://active")
            {
                return;
            }
            seen.push_str(std::str::from_utf8(&stream.chunk().await.unwrap().expect("more events")).unwrap());
        }
    })
    .await;
    assert!(heard.is_ok(), "no update of changes://active after a tick: {seen}");

    let bare = client()
        .post(format!("{}/mcp", base(&server)))
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"capabilities": {}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status(), 400);
    assert!(bare.headers().get("mcp-session-id").is_none(), "no session made on a guess");
    let body: Value = bare.json().await.unwrap();
    assert_eq!(body["error"]["code"], -32602, "{body}");
}

#[tokio::test]
async fn the_legacy_transport_answers_on_its_stream_even_a_malformed_request() {
    let server = Server::start();
    // No Accept header at all accepts anything (RFC 9110 12.5.1). (reqwest adds `*/*`.)
    let head = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = server.http_addr.expect("the listening line names http_addr");
        let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
        raw.write_all(format!("GET /sse HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).await.unwrap();
        let mut buf = vec![0; 512];
        let n = raw.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut stream = client().get(format!("{}/sse", base(&server))).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    let mut seen = String::new();
    let endpoint = loop {
        seen.push_str(std::str::from_utf8(&stream.chunk().await.unwrap().expect("the endpoint event")).unwrap());
        if let Some(line) = seen.lines().find_map(|l| l.strip_prefix("data: ")) {
            break line.to_string();
        }
    };
    let post = client()
        .post(format!("{}{endpoint}", base(&server)))
        .json(&json!({"jsonrpc":"2.0","id":"s","method":"tools/call","params":[]}))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 202, "the answer goes on the stream");
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(message) = sse_messages(&seen).into_iter().find(|m| m["id"] == "s") {
                return message;
            }
            seen.push_str(std::str::from_utf8(&stream.chunk().await.unwrap().expect("more events")).unwrap());
        }
    })
    .await
    .expect("the error arrives on the stream");
    assert_eq!(answer["error"]["code"], -32602, "{answer}");
}

/// Opens a change through `opener` and reads `stream` until it carries
/// `notifications/resources/list_changed`; whether it did within the bound. The GET stream's
/// feed opens a moment after its first byte and starts from that byte, so a change opened at
/// once is heard too (`operations` holds the feed's call back to prove it).
async fn hears_list_changed(stream: &mut reqwest::Response, opener: &mut Mcp, seen: &mut String) -> bool {
    static OPENED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let slug = format!("listed-{}", OPENED.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let opened = opener.call("change.open", json!({"title": "Listed", "slug": slug, "owner": "alice"})).await;
    assert_eq!(opened["isError"], false, "{opened}");
    common::mcp::hears_list_changed(stream, seen).await
}

#[tokio::test]
async fn a_client_that_subscribed_to_nothing_hears_list_changed_on_its_stream_in_either_transport() {
    let server = Server::start();
    let mut opener = connect(&server, "2025-11-25").await;

    let listener = connect(&server, "2025-11-25").await;
    let mut stream = listener.open_stream().await;
    let mut seen = String::new();
    assert!(hears_list_changed(&mut stream, &mut opener, &mut seen).await, "no list_changed on GET /mcp: {seen}");

    let mut legacy = client().get(format!("{}/sse", base(&server))).send().await.unwrap();
    assert_eq!(legacy.status(), 200);
    let mut seen = String::new();
    assert!(hears_list_changed(&mut legacy, &mut opener, &mut seen).await, "no list_changed on GET /sse: {seen}");
}

/// A 2026-07-28 (stateless) request to `/mcp`: version and capabilities in `_meta` and the
/// version header; the caller adds the `Mcp-*` headers under test.
fn stateless(server: &Server, method: &str, mut params: Value) -> reqwest::RequestBuilder {
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    });
    client()
        .post(format!("{}/mcp", base(server)))
        .header("accept", ACCEPT_BOTH)
        .header("mcp-protocol-version", "2026-07-28")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}))
}

async fn legacy_session(server: &Server) -> (reqwest::Response, String) {
    common::mcp::legacy_session(client().get(format!("{}/sse", base(server)))).await
}

/// The HTTP status and JSON body of a request.
async fn answer(req: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = req.send().await.expect("the request is answered");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("a body");
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")))
}

#[tokio::test]
async fn a_routing_header_sent_twice_or_a_base64_method_is_a_header_mismatch() {
    let server = Server::builder().arg("--conformance-fixtures").start();
    let call = || {
        stateless(&server, "tools/call", json!({"name": "test_custom_headers", "arguments": {"region": "us-west"}}))
            .header("mcp-method", "tools/call")
    };
    let (status, body) =
        answer(call().header("mcp-name", "test_custom_headers").header("mcp-param-region", "us-west")).await;
    assert_eq!((status, &body["result"]["content"][0]["text"]), (200, &json!("Region: us-west")), "the call: {body}");
    // The Base64 form is allowed for Mcp-Name and Mcp-Param-*.
    let encoded = call()
        .header("mcp-name", "=?base64?dGVzdF9jdXN0b21faGVhZGVycw==?=")
        .header("mcp-param-region", "=?base64?dXMtd2VzdA==?=");
    let (status, body) = answer(encoded).await;
    assert_eq!(status, 200, "Base64 Mcp-Name and Mcp-Param-Region: {body}");

    let well_formed = || call().header("mcp-name", "test_custom_headers").header("mcp-param-region", "us-west");
    let cases = [
        ("Mcp-Method twice", well_formed().header("mcp-method", "tools/list")),
        ("Mcp-Name twice", well_formed().header("mcp-name", "test_missing_capability")),
        ("Mcp-Param-Region twice", well_formed().header("mcp-param-region", "eu-central")),
        (
            "Mcp-Method in Base64",
            stateless(&server, "tools/list", json!({})).header("mcp-method", "=?base64?dG9vbHMvbGlzdA==?="),
        ),
    ];
    let mut failures = Vec::new();
    for (name, req) in cases {
        let (status, body) = answer(req).await;
        if status != 400 || body["error"]["code"] != -32020 {
            failures.push(format!("{name}: {status} {:.300}", body.to_string()));
        }
    }
    assert!(failures.is_empty(), "want 400 with HeaderMismatch (-32020):\n{}", failures.join("\n"));
}

#[tokio::test]
async fn a_chunked_body_over_the_cap_is_413_with_a_json_rpc_error_on_mcp_and_messages() {
    let server = Server::start();
    let (_sse, endpoint) = legacy_session(&server).await;
    // One byte over the default --max-body-bytes, sent without a Content-Length.
    let over_cap = || {
        let chunks = (0..16).map(|_| vec![b' '; 64 * 1024]).chain([vec![b' ']]);
        reqwest::Body::wrap_stream(futures_util::stream::iter(chunks.map(Ok::<_, std::io::Error>)))
    };
    for path in ["/mcp".to_string(), endpoint] {
        let req = client()
            .post(format!("{}{path}", base(&server)))
            .header("accept", ACCEPT_BOTH)
            .header("content-type", "application/json")
            .body(over_cap());
        let (status, body) = answer(req).await;
        assert_eq!(status, 413, "{path}: {body}");
        // The refusal an over-cap Content-Length gets.
        assert_eq!(body["jsonrpc"], "2.0", "{path}: {body}");
        assert_eq!(body["error"]["code"], -32000, "{path}: {body}");
        assert_eq!(body["error"]["data"]["reason"], "BODY_TOO_LARGE", "{path}: {body}");
        assert_eq!(body["error"]["message"], "request body exceeds 1048576 bytes", "{path}: {body}");
    }
}

#[tokio::test]
async fn server_discover_carries_the_cache_hints_of_the_other_cacheable_results() {
    let server = Server::start();
    let (status, discover) =
        answer(stateless(&server, "server/discover", json!({})).header("mcp-method", "server/discover")).await;
    assert_eq!(status, 200, "{discover}");
    let (_, tools) = answer(stateless(&server, "tools/list", json!({})).header("mcp-method", "tools/list")).await;
    for field in ["ttlMs", "cacheScope", "resultType"] {
        assert!(!discover["result"][field].is_null(), "server/discover lacks {field}: {discover}");
        assert_eq!(discover["result"][field], tools["result"][field], "{field} as tools/list has it");
    }
}

#[tokio::test]
async fn the_bearer_scheme_is_matched_whatever_its_case_over_http_and_grpc() {
    let server = Server::builder().auth_token("s3cret").start();
    for scheme in ["Bearer", "bearer", "BEARER", "BeArEr"] {
        let credential = format!("{scheme} s3cret");
        // REST goes through the gateway's check, then the service's with the forwarded header.
        let (status, body) = answer(
            client()
                .post(format!("{}/v1/tools/change.list", base(&server)))
                .header("authorization", &credential)
                .json(&json!({})),
        )
        .await;
        assert_eq!(status, 200, "REST with {credential:?}: {body}");
        let mcp = stateless(&server, "tools/call", json!({"name": "change.list", "arguments": {}}))
            .header("mcp-method", "tools/call")
            .header("mcp-name", "change.list")
            .header("authorization", &credential);
        let (status, body) = answer(mcp).await;
        assert_eq!((status, &body["result"]["isError"]), (200, &json!(false)), "MCP with {credential:?}: {body}");
        let mut req = tonic::Request::new(task_mcp::pb::ListChangesRequest::default());
        req.metadata_mut().insert("authorization", credential.parse().expect("ASCII metadata"));
        let mut grpc = server.changes_with(common::Auth::none()).await;
        let listed = common::bounded("ListChanges", grpc.list_changes(req)).await;
        assert!(listed.is_ok(), "gRPC with {credential:?}: {listed:?}");
    }
    let (status, _) = answer(
        client()
            .post(format!("{}/v1/tools/change.list", base(&server)))
            .header("authorization", "Basic s3cret")
            .json(&json!({})),
    )
    .await;
    assert_eq!(status, 401, "another scheme is refused");
}

#[tokio::test]
async fn grpc_timeout_bounds_an_mcp_call_and_a_malformed_one_is_refused() {
    let server = Server::start();
    let open = |slug: &str, timeout: &str| {
        stateless(&server, "tools/call", json!({"name": "change.open", "arguments": {"title": "T", "slug": slug}}))
            .header("mcp-method", "tools/call")
            .header("mcp-name", "change.open")
            .header("grpc-timeout", timeout)
    };
    let (status, body) = answer(open("within-time", "30S")).await;
    assert_eq!((status, &body["result"]["isError"]), (200, &json!(false)), "a generous deadline: {body}");
    let (status, body) = answer(open("past-deadline", "1n")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["isError"], true, "a deadline that passes is a tool error: {body}");
    let text = body["result"]["content"][0]["text"].as_str().unwrap_or_default();
    assert!(text.starts_with("DEADLINE_EXCEEDED"), "{body}");

    // The same in a session.
    let mcp = connect(&server, "2025-11-25").await;
    let req = mcp
        .http
        .post(&mcp.url)
        .header("accept", ACCEPT_BOTH)
        .header("mcp-session-id", &mcp.session)
        .header("grpc-timeout", "1n")
        .json(&json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "change.open", "arguments": {"title": "T", "slug": "past-deadline-too"}}}));
    let (status, body) = answer(req).await;
    assert_eq!((status, &body["result"]["isError"]), (200, &json!(true)), "in a session: {body}");

    // A value that is no deadline is refused, not ignored, on both MCP transports.
    let (status, body) = answer(open("malformed", "soon")).await;
    assert_eq!((status, &body["error"]["code"]), (400, &json!(-32600)), "{body}");
    let (_sse, endpoint) = legacy_session(&server).await;
    let req = client()
        .post(format!("{}{endpoint}", base(&server)))
        .header("grpc-timeout", "5X")
        .json(&json!({"jsonrpc": "2.0", "id": 8, "method": "tools/list"}));
    let (status, body) = answer(req).await;
    assert_eq!((status, &body["error"]["code"]), (400, &json!(-32600)), "/messages: {body}");
}

#[tokio::test]
async fn a_streamed_tool_call_that_succeeded_is_counted_a_success_whatever_the_entry() {
    let server = Server::start();
    let metrics = format!("http://{}/metrics", server.metrics_addr.expect("the listening line names metrics_addr"));
    for slug in ["streamed-rest", "streamed-mcp"] {
        let (status, body) = rest(&server, "change.open", json!({"title": "Streamed", "slug": slug})).await;
        assert_eq!(status, 200, "{body}");
    }
    let ndjson = client()
        .post(format!("{}/v1/tools/change.archive", base(&server)))
        .header("accept", "application/x-ndjson")
        .json(&json!({"slug": "streamed-rest"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ndjson.status(), 200);
    let text = ndjson.text().await.unwrap();
    assert!(text.lines().last().is_some_and(|l| l.starts_with("{\"result\":")), "{text}");
    let mut mcp = connect(&server, "2025-11-25").await;
    let answer = mcp
        .request(
            "tools/call",
            json!({"name": "change.archive", "arguments": {"slug": "streamed-mcp"}, "_meta": {"progressToken": 1}}),
        )
        .await;
    assert_eq!(answer["result"]["isError"], false, "{answer}");

    let scraped = client().get(&metrics).send().await.unwrap().text().await.unwrap();
    let archives: Vec<&str> = scraped
        .lines()
        .filter(|l| l.starts_with("tool_executions_total{") && l.contains("tool_name=\"change.archive\""))
        .collect();
    for transport in ["http", "mcp"] {
        let line = archives.iter().find(|l| l.contains(&format!("transport=\"{transport}\"")));
        let line = line.unwrap_or_else(|| panic!("no change.archive over {transport}: {archives:?}"));
        assert!(line.contains("outcome=\"success\"") && line.ends_with(" 1"), "{line}");
    }
    assert!(!scraped.contains("rpc_response_status_code=\"CANCELLED\""), "a call read to its end is no cancel");
}

/// A client that lost its GET stream's connection reconnects before the server has noticed (a
/// dead peer shows only at the next write). Eras before 2025-11-25 have no event id to resume
/// from, so the reconnecting GET is plain: it takes the stream over, where a 409 made the
/// TypeScript SDK give the stream up for good after two tries.
#[tokio::test]
async fn a_plain_get_takes_the_standalone_stream_over_from_a_lost_connection() {
    let server = Server::start();
    let mut opener = connect(&server, "2025-11-25").await;
    let listener = connect(&server, "2025-06-18").await;
    let get = || {
        client()
            .get(format!("{}/mcp", base(&server)))
            .header("accept", "text/event-stream")
            .header("mcp-session-id", &listener.session)
            .header("mcp-protocol-version", "2025-06-18")
            .send()
    };
    let first = get().await.expect("first GET");
    assert_eq!(first.status(), 200);
    let mut second = get().await.expect("second GET");
    assert_eq!(second.status(), 200, "the second GET takes the stream over");
    let mut old = first.bytes_stream();
    let ended = tokio::time::timeout(Duration::from_secs(10), async { while old.next().await.is_some() {} }).await;
    assert!(ended.is_ok(), "the superseded stream ends rather than hold a slot");
    let mut seen = String::new();
    assert!(hears_list_changed(&mut second, &mut opener, &mut seen).await, "the new stream carries events: {seen}");
}

/// The TypeScript SDK's SSE client reconnects a broken legacy stream and goes on without a new
/// `initialize`; the session it lands in must answer as the version it negotiated before (the
/// SDK refuses a tool result without `structuredContent` when the tool has an output schema).
#[tokio::test]
async fn a_legacy_session_used_without_initialize_answers_in_the_latest_version() {
    let server = Server::start();
    let (mut sse, endpoint) = legacy_session(&server).await;
    let post = |body: Value| client().post(format!("{}{endpoint}", base(&server))).json(&body).send();
    let open = json!({"jsonrpc":"2.0","id":5,"method":"tools/call","params":{
        "name":"change.open","arguments":{"title":"Reconnected","slug":"reconnected","owner":"alice"}}});
    assert_eq!(post(open).await.unwrap().status(), 202);
    assert_eq!(post(json!({"jsonrpc":"2.0","id":6,"method":"tools/list"})).await.unwrap().status(), 202);
    let mut seen = String::new();
    let answer = |id: i64| move |m: &Value| m["id"] == id;
    let opened = read_messages_until(&mut sse, &mut seen, answer(5)).await;
    assert_eq!(opened["result"]["structuredContent"]["change"]["slug"], "reconnected", "{opened}");
    let tools = read_messages_until(&mut sse, &mut seen, answer(6)).await;
    let open_tool = tools["result"]["tools"].as_array().unwrap().iter().find(|t| t["name"] == "change.open").unwrap();
    assert!(open_tool["outputSchema"].is_object(), "{open_tool}");
}

/// A request cancelled while its POST awaits a JSON answer gets no JSON-RPC response
/// (2025-11-25 cancellation: receivers SHOULD NOT send one; the SDKs report a response to an
/// unknown id): the POST is answered with an empty event stream, and nothing is written.
#[tokio::test]
async fn a_cancelled_call_awaiting_json_gets_no_response_and_writes_nothing() {
    let server = Server::start();
    let mut mcp = connect(&server, "2025-11-25").await;
    let opened = mcp.call("change.open", json!({"title": "Cancel", "slug": "cancel-me", "owner": "alice"})).await;
    assert_eq!(opened["isError"], false, "{opened}");
    let tasks = server.workspace.join("changes/cancel-me/tasks.md");
    let before = std::fs::read_to_string(&tasks).unwrap();
    // Holding the change folder's lock, as another server process would, keeps the tick waiting.
    let folder = std::fs::File::open(server.workspace.join("changes/cancel-me")).unwrap();
    folder.lock().unwrap();
    let tick = mcp.post(json!({"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"task.update",
        "arguments":{"slug":"cancel-me","owner":"alice","updates":[{"id":"1.1","done":true}]}}}));
    tokio::pin!(tick);
    let cancel = json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":9}});
    // The cancellation can overtake the call it names; it is sent until the call has ended.
    let mut answered = None;
    for _ in 0..100 {
        assert_eq!(mcp.post(cancel.clone()).await.status(), 202);
        if let Ok(resp) = tokio::time::timeout(Duration::from_millis(100), &mut tick).await {
            answered = Some(resp);
            break;
        }
    }
    let resp = answered.expect("the cancelled call's POST is answered");
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
    let body = resp.text().await.unwrap();
    assert!(content_type.starts_with("text/event-stream") && sse_messages(&body).is_empty(), "{content_type}: {body}");
    folder.unlock().unwrap();
    let (_, shown) = rest(&server, "change.show", json!({"slug": "cancel-me"})).await;
    assert_eq!(shown["tasks"][0]["done"], false, "{shown}");
    assert_eq!(std::fs::read_to_string(&tasks).unwrap(), before, "the cancelled tick wrote nothing");
}

/// `resources/list` pages through the service (its cursor is the service's page token), and
/// REST pages the same way with `pageSize`/`pageToken`: each walk adds up to the whole list.
#[tokio::test]
async fn resource_pages_over_mcp_and_rest_add_up_to_the_whole_list() {
    let server = Server::start();
    for i in 0..20 {
        let (status, body) = rest(&server, "change.open", json!({"slug": format!("page-{i:02}"), "title": "P"})).await;
        assert_eq!(status, 200, "{body}");
    }
    let rest_page = |query: String| {
        let url = format!("{}/v1/resources{query}", base(&server));
        async move {
            let resp = client().get(url).send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let uris = |v: &Value| v["resources"].as_array().unwrap().iter().map(|r| r["uri"].to_string()).collect::<Vec<_>>();
    let (status, everything) = rest_page(String::new()).await;
    assert_eq!(status, 200);
    assert_eq!(everything["nextPageToken"], "", "no pageSize: every resource at once");
    let all = uris(&everything);
    assert_eq!(all.len(), 20 * 3 + 1, "proposal, tasks and specs/README.md per change, and the active list");

    let mut mcp = connect(&server, "2025-11-25").await;
    let (mut walked, mut cursor, mut pages) = (Vec::new(), Value::Null, 0);
    loop {
        let page = mcp.request("resources/list", json!({"cursor": cursor})).await;
        walked.extend(uris(&page["result"]));
        pages += 1;
        match &page["result"]["nextCursor"] {
            Value::Null => break,
            next => cursor = next.clone(),
        }
    }
    assert_eq!((walked.clone(), pages), (all.clone(), 2), "MCP pages of 50");
    let bad = mcp.request("resources/list", json!({"cursor": "bm90IGEgdG9rZW4"})).await;
    assert_eq!(bad["error"]["code"], -32602, "{bad}");

    let (mut walked, mut token) = (Vec::new(), String::new());
    loop {
        let (status, page) = rest_page(format!("?pageSize=25&pageToken={token}")).await;
        assert_eq!(status, 200, "{page}");
        walked.extend(uris(&page));
        match page["nextPageToken"].as_str() {
            Some("") | None => break,
            Some(next) => token = next.to_string(),
        }
    }
    assert_eq!(walked, all, "REST pages of 25");
    let (status, body) = rest_page("?pageSize=25&pageToken=garbage".into()).await;
    assert_eq!((status, body["reason"].as_str()), (400, Some("INVALID_PAGE_TOKEN")), "{body}");
    let (status, body) = rest_page("?pageSize=5000".into()).await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn a_session_answers_only_the_principal_that_opened_it_on_either_transport() {
    let server = Server::builder().args(["--auth-token", "alice=a", "--auth-token", "bob=b"]).start();
    let url = format!("{}/mcp", base(&server));
    let mut alice = Mcp::connect(client(), url.clone(), Some("a"), "2025-11-25", "alice").await;
    let as_bob = |req: reqwest::RequestBuilder| {
        req.bearer_auth("b").header("mcp-session-id", &alice.session).header("mcp-protocol-version", "2025-11-25")
    };
    let ping = json!({"jsonrpc":"2.0","id":5,"method":"ping"});
    let cases = [
        ("POST ping", as_bob(client().post(&url).header("accept", ACCEPT_BOTH)).json(&ping)),
        ("GET stream", as_bob(client().get(&url).header("accept", "text/event-stream"))),
        ("DELETE", as_bob(client().delete(&url))),
    ];
    for (what, req) in cases {
        let (status, body) = answer(req).await;
        assert_eq!(status, 404, "bob's {what} with alice's session: {body}");
        assert_eq!(body["error"]["code"], -32001, "bob's {what}: {body}");
    }
    // Alice's session is untouched by bob's DELETE, and still answers her.
    assert_eq!(alice.request("ping", json!({})).await["result"], json!({}), "alice's session outlived bob's DELETE");

    // The legacy transport: alice's `/sse` session refuses bob's POST, and takes hers.
    let (mut sse, endpoint) =
        common::mcp::legacy_session(client().get(format!("{}/sse", base(&server))).bearer_auth("a")).await;
    let mut seen = String::new();
    let post = |token: &'static str| client().post(format!("{}{endpoint}", base(&server))).bearer_auth(token);
    let theirs = post("b").json(&ping).send().await.expect("bob's POST");
    let status = theirs.status();
    let body = theirs.text().await.expect("a body");
    assert_eq!(status, 404, "bob's POST to alice's legacy session: {body:?}");
    let body: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(body["error"]["code"], -32001, "{body}");
    let mine = post("a").json(&json!({"jsonrpc":"2.0","id":"alice","method":"ping"})).send().await.unwrap();
    assert_eq!(mine.status(), 202, "alice's own POST is taken");
    let answered = read_messages_until(&mut sse, &mut seen, |m| m["id"] == "alice").await;
    assert_eq!(answered["result"], json!({}), "{answered}");
}

#[tokio::test]
async fn configured_host_origin_and_body_cap_are_enforced_over_http() {
    let tools = |server: &Server| client().get(format!("{}/v1/tools", base(server)));

    let server = Server::builder().args(["--allowed-host", "mcp.example.com"]).start();
    for (host, want) in
        [("mcp.example.com", 200), ("localhost", 403), ("mcp.example.com.evil.net", 403), ("127.0.0.1", 403)]
    {
        let status = tools(&server).header("host", host).send().await.unwrap().status();
        assert_eq!(status, want, "Host {host} with --allowed-host mcp.example.com");
    }
    drop(server);

    let server = Server::builder().args(["--allowed-origin", "https://app.example.com"]).start();
    for (origin, want) in
        [("https://app.example.com", 200), ("https://app.example.com.evil.net", 403), ("http://localhost:6274", 403)]
    {
        let status = tools(&server).header("origin", origin).send().await.unwrap().status();
        assert_eq!(status, want, "Origin {origin} with --allowed-origin https://app.example.com");
    }
    drop(server);

    let server = Server::builder().args(["--max-body-bytes", "1000"]).start();
    // A ping padded to an exact size; without a session it is a 400, which shows it was read.
    let sized = |len: usize| {
        let bare = json!({"jsonrpc":"2.0","id":1,"method":"ping","params":{"pad":""}}).to_string();
        let body = json!({"jsonrpc":"2.0","id":1,"method":"ping","params":{"pad":"x".repeat(len - bare.len())}});
        let body = body.to_string();
        assert_eq!(body.len(), len);
        client()
            .post(format!("{}/mcp", base(&server)))
            .header("accept", ACCEPT_BOTH)
            .header("content-type", "application/json")
            .body(body)
    };
    let (status, body) = answer(sized(1000)).await;
    assert_eq!(status, 400, "a body of exactly --max-body-bytes is read (and refused for its missing session): {body}");
    let (status, body) = answer(sized(1001)).await;
    assert_eq!(status, 413, "a body one byte over --max-body-bytes 1000: {body}");
}

#[tokio::test]
async fn a_malformed_legacy_post_is_a_parse_error_and_an_unknown_method_is_method_not_found() {
    let server = Server::start();
    let (mut sse, endpoint) = legacy_session(&server).await;
    let post = || client().post(format!("{}{endpoint}", base(&server))).header("content-type", "application/json");
    // Unparseable JSON has no id to answer on the stream: the POST itself carries the error.
    let (status, body) = answer(post().body("{")).await;
    assert_eq!((status, &body["error"]["code"]), (400, &json!(-32700)), "malformed JSON on /messages: {body}");
    assert_eq!(body["id"], Value::Null, "{body}");
    // The session is unharmed: a well-formed request is still answered on its stream.
    let ok = post().body(json!({"jsonrpc":"2.0","id":"after","method":"no/such"}).to_string()).send().await.unwrap();
    assert_eq!(ok.status(), 202);
    let mut seen = String::new();
    let answered = read_messages_until(&mut sse, &mut seen, |m| m["id"] == "after").await;
    assert_eq!(answered["error"]["code"], -32601, "unknown method on the legacy stream: {answered}");

    let mut mcp = connect(&server, "2025-11-25").await;
    let unknown = mcp.request("no/such", json!({})).await;
    assert_eq!(unknown["error"]["code"], -32601, "unknown method in a session: {unknown}");
}

/// What Claude's apps and OpenAI's function calling accept as a tool name, `^[a-zA-Z0-9_-]{1,64}$`.
fn strict_clients_accept(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

async fn listed_names(mcp: &mut Mcp) -> Vec<String> {
    let listed = mcp.request("tools/list", json!({})).await;
    let tools = listed["result"]["tools"].as_array().unwrap_or_else(|| panic!("tools/list: {listed}"));
    tools.iter().map(|t| t["name"].as_str().expect("a tool has a name").to_string()).collect()
}

#[tokio::test]
async fn underscored_tool_names_are_listed_on_request_and_either_form_calls_the_same_tool() {
    // Default: the proto's names, the contract; an underscored name still calls its tool.
    let server = Server::start();
    let mut mcp = connect(&server, "2025-11-25").await;
    let dotted = listed_names(&mut mcp).await;
    assert!(dotted.iter().any(|n| n == "change.open"), "{dotted:?}");
    let opened = mcp.call("change_open", json!({"title": "By alias", "slug": "by-alias"})).await;
    assert_eq!(opened["isError"], false, "{opened}");
    assert_eq!(opened["structuredContent"]["change"]["slug"], "by-alias");

    // `--tool-names underscored`: every listed name passes the strict clients' check, and
    // they are the proto's names (as REST's tool list keeps them) with `.` written `_`.
    let server = Server::builder().args(["--tool-names", "underscored"]).start();
    let mut mcp = connect(&server, "2025-11-25").await;
    let listed = listed_names(&mut mcp).await;
    let refused: Vec<&String> = listed.iter().filter(|n| !strict_clients_accept(n)).collect();
    assert!(refused.is_empty(), "names a strict client refuses: {refused:?}");
    let rest_tools: Value =
        client().get(format!("{}/v1/tools", base(&server))).send().await.unwrap().json().await.unwrap();
    let mut expected: Vec<String> = rest_tools["tools"]
        .as_array()
        .expect("GET /v1/tools lists tools")
        .iter()
        .map(|t| t["name"].as_str().expect("name").replace('.', "_"))
        .collect();
    expected.sort();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(sorted, expected);
    assert_eq!(listed.len(), dotted.len());

    let opened = mcp.call("change_open", json!({"title": "Underscored", "slug": "underscored"})).await;
    assert_eq!(opened["isError"], false, "{opened}");
    let shown = mcp.call("change.show", json!({"slug": "underscored"})).await;
    assert_eq!(shown["structuredContent"]["change"]["title"], "Underscored", "{shown}");
    let unknown = mcp.request("tools/call", json!({"name": "change_opens", "arguments": {}})).await;
    assert_eq!(unknown["error"]["code"], -32602, "{unknown}");

    // What operators see keeps the proto's name: the metric's `tool_name` label.
    let metrics_addr = server.metrics_addr.expect("the listening line names metrics_addr");
    let text = bounded_metrics(&format!("http://{metrics_addr}/metrics")).await;
    assert!(text.contains("tool_name=\"change.open\""), "no change.open series:\n{text}");
    assert!(!text.contains("change_open"), "an underscored name reached the metrics:\n{text}");
}

/// The Prometheus text at `url`, once it counts a tool execution (the export is periodic).
async fn bounded_metrics(url: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let text = client().get(url).send().await.expect("GET /metrics").text().await.expect("metrics text");
        if text.contains("tool_name=") || std::time::Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The workflow's prompts name the tools as `tools/list` does, and their `slug` completes from
/// the workspace as a resource template's does.
#[tokio::test]
async fn workflow_prompts_name_the_tools_as_listed_and_complete_slugs() {
    let server = Server::builder().args(["--tool-names", "underscored"]).start();
    let mut mcp = connect(&server, "2025-11-25").await;
    let opened = mcp.call("change_open", json!({"title": "Prompted", "slug": "prompted-change"})).await;
    assert_eq!(opened["isError"], false, "{opened}");

    let listed = mcp.request("prompts/list", json!({})).await;
    let names: Vec<&str> =
        listed["result"]["prompts"].as_array().into_iter().flatten().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["propose", "apply", "archive"], "{listed}");
    for (prompt, argument, value) in [
        ("propose", "request", "Throttle logins"),
        ("apply", "slug", "prompted-change"),
        ("archive", "slug", "prompted-change"),
    ] {
        let got = mcp.request("prompts/get", json!({"name": prompt, "arguments": {argument: value}})).await;
        let text = got["result"]["messages"][0]["content"]["text"].as_str().unwrap_or_else(|| panic!("{got}"));
        assert!(text.contains(value), "{prompt}: {text}");
        assert!(!text.contains("`change.") && !text.contains("`task."), "{prompt} names a dotted tool: {text}");
        assert!(text.contains("`change_"), "{prompt} names no tool: {text}");
    }
    let missing = mcp.request("prompts/get", json!({"name": "apply", "arguments": {}})).await;
    assert_eq!(missing["error"]["code"], -32602, "{missing}");

    let completed = mcp
        .request(
            "completion/complete",
            json!({"ref": {"type": "ref/prompt", "name": "archive"}, "argument": {"name": "slug", "value": "promp"}}),
        )
        .await;
    assert_eq!(completed["result"]["completion"]["values"], json!(["prompted-change"]), "{completed}");
    let request = mcp
        .request(
            "completion/complete",
            json!({"ref": {"type": "ref/prompt", "name": "propose"}, "argument": {"name": "request", "value": "promp"}}),
        )
        .await;
    assert_eq!(request["result"]["completion"]["values"], json!([]), "free text completes to nothing: {request}");
}
