//! A bare HTTP/1.1 keep-alive client on hyper: one TCP connection per
//! `Conn`, one request in flight on it, nothing pooled behind our back.
use std::{net::SocketAddr, time::Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, client::conn::http1::SendRequest};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;

pub const ACCEPT_BOTH: &str = "application/json, text/event-stream";
pub const SESSION_VERSION: &str = "2025-11-25";
pub const STATELESS_VERSION: &str = "2026-07-28";
pub const META_VERSION_KEY: &str = "io.modelcontextprotocol/protocolVersion";

pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    authority: HeaderValue,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Conn> {
        let tcp = TcpStream::connect(addr).await.with_context(|| format!("connect {addr}"))?;
        tcp.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { sender, authority: HeaderValue::from_str(&addr.to_string())? })
    }

    /// Sends a request and returns the response with its body unread.
    pub async fn send(&mut self, template: &RequestTemplate) -> anyhow::Result<Response<Incoming>> {
        let mut req = Request::builder().method(template.method.clone()).uri(template.path.as_str());
        if let Some(h) = req.headers_mut() {
            h.clone_from(&template.headers);
            h.insert(header::HOST, self.authority.clone());
        }
        let req = req.body(Full::new(template.body.clone()))?;
        self.sender.ready().await?;
        Ok(self.sender.send_request(req).await?)
    }

    /// One request, body read to the end; fails on any status but 200/202.
    pub async fn call(&mut self, template: &RequestTemplate) -> anyhow::Result<(HeaderMap, Bytes)> {
        let res = self.send(template).await?;
        let status = res.status();
        let (parts, body) = res.into_parts();
        let body = body.collect().await?.to_bytes();
        if status != StatusCode::OK && status != StatusCode::ACCEPTED {
            bail!("HTTP {status}: {}", String::from_utf8_lossy(&body[..body.len().min(300)]));
        }
        Ok((parts.headers, body))
    }
}

/// A request sent many times: built once, its body shared.
#[derive(Clone)]
pub struct RequestTemplate {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl RequestTemplate {
    pub fn post_json(path: &str, accept: &str, body: &Value) -> RequestTemplate {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(header::ACCEPT, HeaderValue::from_str(accept).expect("ascii"));
        RequestTemplate { method: Method::POST, path: path.into(), headers, body: Bytes::from(body.to_string()) }
    }

    pub fn get(path: &str, accept: &str) -> RequestTemplate {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_str(accept).expect("ascii"));
        RequestTemplate { method: Method::GET, path: path.into(), headers, body: Bytes::new() }
    }

    pub fn with_header(mut self, name: &'static str, value: &str) -> RequestTemplate {
        self.headers.insert(HeaderName::from_static(name), HeaderValue::from_str(value).expect("ascii"));
        self
    }
}

pub fn rpc(method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
}

/// `initialize` then `notifications/initialized`; returns the session id.
pub async fn open_session(conn: &mut Conn) -> anyhow::Result<String> {
    let init = rpc(
        "initialize",
        json!({
            "protocolVersion": SESSION_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "task-mcp-bench", "version": "0.1.0"},
        }),
    );
    let res = conn.send(&RequestTemplate::post_json("/mcp", ACCEPT_BOTH, &init)).await?;
    let status = res.status();
    let session = res
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .with_context(|| format!("initialize answered {status} without Mcp-Session-Id"))?;
    res.into_body().collect().await?;
    let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let t = RequestTemplate::post_json("/mcp", ACCEPT_BOTH, &note)
        .with_header("mcp-session-id", &session)
        .with_header("mcp-protocol-version", SESSION_VERSION);
    conn.call(&t).await?;
    Ok(session)
}

/// tools/call in the session era, answered as JSON (no progress token).
pub fn session_call(session: &str, tool: &str, arguments: Value) -> RequestTemplate {
    let body = rpc("tools/call", json!({"name": tool, "arguments": arguments}));
    RequestTemplate::post_json("/mcp", ACCEPT_BOTH, &body)
        .with_header("mcp-session-id", session)
        .with_header("mcp-protocol-version", SESSION_VERSION)
}

/// tools/call with a progress token: the server answers on an SSE stream.
pub fn session_call_streamed(session: &str, tool: &str, arguments: Value) -> RequestTemplate {
    let body = rpc("tools/call", json!({"name": tool, "arguments": arguments, "_meta": {"progressToken": "bench"}}));
    RequestTemplate::post_json("/mcp", ACCEPT_BOTH, &body)
        .with_header("mcp-session-id", session)
        .with_header("mcp-protocol-version", SESSION_VERSION)
}

/// tools/call in the stateless 2026-07-28 form: version in a header and in `_meta`.
pub fn stateless_call(tool: &str, arguments: Value) -> RequestTemplate {
    let body = rpc(
        "tools/call",
        json!({"name": tool, "arguments": arguments, "_meta": {
            META_VERSION_KEY: STATELESS_VERSION,
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": {"name": "task-mcp-bench", "version": "0.1.0"},
        }}),
    );
    RequestTemplate::post_json("/mcp", ACCEPT_BOTH, &body)
        .with_header("mcp-protocol-version", STATELESS_VERSION)
        .with_header("mcp-method", "tools/call")
        .with_header("mcp-name", tool)
}

/// tools/call with a pre-2026 version header and no session (rmcp's stateless legacy mode).
pub fn sessionless_call(tool: &str, arguments: Value) -> RequestTemplate {
    let body = rpc("tools/call", json!({"name": tool, "arguments": arguments}));
    RequestTemplate::post_json("/mcp", ACCEPT_BOTH, &body).with_header("mcp-protocol-version", SESSION_VERSION)
}

/// The standalone GET stream of a session.
pub fn standalone_stream(session: &str) -> RequestTemplate {
    RequestTemplate::get("/mcp", "text/event-stream")
        .with_header("mcp-session-id", session)
        .with_header("mcp-protocol-version", SESSION_VERSION)
}

/// Reads body frames until one carries data; returns when it arrived.
pub async fn first_data(body: &mut Incoming) -> anyhow::Result<(Instant, Bytes)> {
    loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data()
                    && !data.is_empty()
                {
                    return Ok((Instant::now(), data));
                }
            }
            Some(Err(e)) => return Err(e.into()),
            None => bail!("stream ended before any event"),
        }
    }
}
