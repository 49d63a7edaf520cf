//! The peer for the comparison: an MCP server on the official Rust SDK (rmcp)
//! with one trivial tool, `echo`, over Streamable HTTP at `/mcp`.
//!
//! Default: stateless JSON mode (no sessions, `application/json` answers).
//! `--stateful`: rmcp's session mode, for the SSE stream and memory scenarios.
use std::{net::SocketAddr, sync::Arc};

use clap::Parser;
use rmcp::{
    ServerHandler,
    handler::server::{router::tool::ToolRouter, wrapper::Parameters},
    tool, tool_handler, tool_router,
    transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
    },
};
use schemars::JsonSchema;
use serde::Deserialize;

#[derive(Debug, Parser)]
struct Args {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// Sessions (legacy_session_mode) instead of stateless JSON answers.
    #[arg(long)]
    stateful: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct EchoInput {
    /// Text to send back.
    message: String,
}

#[derive(Clone)]
struct EchoServer {
    tool_router: ToolRouter<EchoServer>,
}

#[tool_router]
impl EchoServer {
    fn new() -> Self {
        EchoServer { tool_router: Self::tool_router() }
    }

    #[tool(description = "Returns its `message` argument unchanged")]
    async fn echo(&self, Parameters(input): Parameters<EchoInput>) -> String {
        input.message
    }
}

#[tool_handler(router = self.tool_router, name = "rmcp-echo", version = "0.1.0")]
impl ServerHandler for EchoServer {}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(args.stateful)
        .with_json_response(!args.stateful);
    let service =
        StreamableHttpService::new(|| Ok(EchoServer::new()), Arc::new(LocalSessionManager::default()), config);
    let app = axum::Router::new().nest_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    eprintln!("rmcp-echo listening on {} ({})", args.listen, if args.stateful { "stateful" } else { "stateless JSON" });
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
