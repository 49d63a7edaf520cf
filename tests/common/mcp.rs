//! A minimal MCP client over Streamable HTTP, enough to drive the gateway from tests: one
//! session, requests answered as JSON or on an SSE stream, the session's GET stream.
use serde_json::{Value, json};

use super::{RPC_BOUND, bounded};

pub const ACCEPT_BOTH: &str = "application/json, text/event-stream";

pub struct Mcp {
    pub http: reqwest::Client,
    /// The `/mcp` endpoint.
    pub url: String,
    pub session: String,
    pub next_id: u64,
    token: Option<String>,
    version: String,
}

impl Mcp {
    /// `initialize` at `url` in `version` (checked in the answer), then `notifications/initialized`.
    pub async fn connect(http: reqwest::Client, url: String, token: Option<&str>, version: &str, name: &str) -> Mcp {
        let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
            "protocolVersion": version, "capabilities": {}, "clientInfo": {"name": name, "version":"1"}}});
        let mut req = http.post(&url).header("accept", ACCEPT_BOTH).json(&init);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.expect("initialize");
        assert_eq!(resp.status(), 200, "initialize status");
        let session = resp
            .headers()
            .get("mcp-session-id")
            .expect("Mcp-Session-Id header")
            .to_str()
            .expect("session id")
            .to_string();
        let body: Value = resp.json().await.expect("initialize body");
        assert_eq!(body["result"]["protocolVersion"], version, "{body}");
        let mcp =
            Mcp { http, url, session, next_id: 1, token: token.map(str::to_string), version: version.to_string() };
        let status = mcp.post(json!({"jsonrpc":"2.0","method":"notifications/initialized"})).await.status();
        assert_eq!(status, 202, "initialized notification is accepted with 202");
        mcp
    }

    /// Sends `token` from the next request on, as a client does once it got a fresh access token.
    pub fn set_token(&mut self, token: &str) {
        self.token = Some(token.to_string());
    }

    fn authorized(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let req = req.header("mcp-session-id", &self.session).header("mcp-protocol-version", &self.version);
        match &self.token {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }

    pub async fn post(&self, body: Value) -> reqwest::Response {
        self.authorized(self.http.post(&self.url).header("accept", ACCEPT_BOTH))
            .json(&body)
            .send()
            .await
            .expect("POST /mcp")
    }

    /// A request; the JSON-RPC response (from a JSON body or an SSE stream).
    pub async fn request(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let resp = self.post(json!({"jsonrpc":"2.0","id":id,"method":method,"params":params})).await;
        assert_eq!(resp.status(), 200, "{method}");
        let sse = resp.headers().get("content-type").is_some_and(|c| c.as_bytes().starts_with(b"text/event-stream"));
        let text = resp.text().await.expect("body");
        if sse {
            return sse_messages(&text)
                .into_iter()
                .find(|m| m["id"] == id)
                .unwrap_or_else(|| panic!("{method}: no response on the stream: {text}"));
        }
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method}: {e}: {text}"))
    }

    /// A `tools/call`; its result.
    pub async fn call(&mut self, tool: &str, args: Value) -> Value {
        self.request("tools/call", json!({"name": tool, "arguments": args})).await["result"].clone()
    }

    /// Opens the session's GET stream; the response, once its first (priming) chunk arrived.
    pub async fn open_stream(&self) -> reqwest::Response {
        let mut resp = self
            .authorized(self.http.get(&self.url).header("accept", "text/event-stream"))
            .send()
            .await
            .expect("GET /mcp");
        assert_eq!(resp.status(), 200, "GET /mcp");
        bounded("the SSE priming event", resp.chunk()).await.expect("SSE body").expect("a first chunk");
        resp
    }
}

/// The JSON messages in an SSE body (events without data, like priming events, are skipped).
pub fn sse_messages(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter_map(|event| {
            let data: Vec<&str> = event.lines().filter_map(|l| l.strip_prefix("data:")).map(str::trim).collect();
            let data = data.join("\n");
            if data.is_empty() { None } else { serde_json::from_str(&data).ok() }
        })
        .collect()
}

/// Reads `stream` into `seen` until it carries `notifications/resources/list_changed`; whether
/// it did within [`RPC_BOUND`].
pub async fn hears_list_changed(stream: &mut reqwest::Response, seen: &mut String) -> bool {
    tokio::time::timeout(RPC_BOUND, async {
        loop {
            if sse_messages(seen).iter().any(|m| m["method"] == "notifications/resources/list_changed") {
                return;
            }
            let chunk = stream.chunk().await.expect("the stream reads").expect("the stream goes on");
            seen.push_str(std::str::from_utf8(&chunk).expect("UTF-8 events"));
        }
    })
    .await
    .is_ok()
}

/// A legacy (2024-11-05) session opened by `get` (a `GET /sse`): its stream, which the session
/// lives as long as, and the POST path its `endpoint` event names.
pub async fn legacy_session(get: reqwest::RequestBuilder) -> (reqwest::Response, String) {
    let mut sse = get.send().await.expect("GET /sse");
    assert_eq!(sse.status(), 200, "GET /sse");
    let mut seen = String::new();
    let endpoint = bounded("the endpoint event", async {
        loop {
            seen.push_str(std::str::from_utf8(&sse.chunk().await.unwrap().expect("the endpoint event")).unwrap());
            if let Some(line) = seen.lines().find_map(|l| l.strip_prefix("data: ")) {
                return line.to_string();
            }
        }
    })
    .await;
    (sse, endpoint)
}

/// Reads `stream` into `seen` until it carries a message `found` accepts, within [`RPC_BOUND`].
pub async fn read_messages_until(
    stream: &mut reqwest::Response,
    seen: &mut String,
    found: impl Fn(&Value) -> bool,
) -> Value {
    let read = async {
        loop {
            if let Some(message) = sse_messages(seen).into_iter().find(&found) {
                return message;
            }
            let chunk = stream.chunk().await.expect("the stream reads").expect("the stream goes on");
            seen.push_str(std::str::from_utf8(&chunk).expect("UTF-8 SSE"));
        }
    };
    match tokio::time::timeout(RPC_BOUND, read).await {
        Ok(message) => message,
        Err(_) => panic!("no such message within {RPC_BOUND:?}: {seen}"),
    }
}
