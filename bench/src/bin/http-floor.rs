//! The floor under every MCP server on this machine: hyper's HTTP/1.1 and nothing else. It
//! parses each request's JSON (as any server must, for the id), and answers a `tools/call` of
//! `show` with task-mcp's `change.show` answer for the bench's change, prebuilt (no tool, no
//! gRPC, no transcoding), or of `echo` with its message. What it reaches on one core bounds
//! what any server can reach for the same answer under the same load.
use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

#[derive(Debug, Parser)]
struct Args {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:8091")]
    listen: SocketAddr,
}

/// `result` of task-mcp's `change.show` answer: the text block and `structuredContent`.
fn show_result() -> anyhow::Result<Vec<u8>> {
    let answer: Value = serde_json::from_str(include_str!("../../fixtures/change-show.json"))?;
    let text = serde_json::to_string(&answer)?;
    Ok(serde_json::to_vec(&json!({
        "content": [{"type": "text", "text": text}],
        "structuredContent": answer,
        "isError": false,
    }))?)
}

fn answer(body: &[u8], show: &[u8]) -> Vec<u8> {
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}"#.to_vec();
    };
    let id = serde_json::to_vec(&request["id"]).unwrap_or_else(|_| b"null".to_vec());
    let params = &request["params"];
    let result = match params["name"].as_str() {
        Some("show") => show.to_vec(),
        _ => {
            let message = params["arguments"]["message"].as_str().unwrap_or_default();
            serde_json::to_vec(&json!({"content": [{"type": "text", "text": message}]})).unwrap_or_default()
        }
    };
    let mut out = Vec::with_capacity(result.len() + id.len() + 40);
    out.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
    out.extend_from_slice(&id);
    out.extend_from_slice(br#","result":"#);
    out.extend_from_slice(&result);
    out.push(b'}');
    out
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let show: Arc<[u8]> = show_result()?.into();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    eprintln!("http-floor listening on {}", args.listen);
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let show = show.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let show = show.clone();
                async move {
                    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    let res = Response::builder()
                        .header(hyper::header::CONTENT_TYPE, "application/json")
                        .body(Full::new(Bytes::from(answer(&body, &show))))
                        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
                    Ok::<_, Infallible>(res)
                }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
        });
    }
}
