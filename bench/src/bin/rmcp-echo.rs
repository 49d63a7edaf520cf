//! The peer for the comparison: an MCP server on the official Rust SDK (rmcp)
//! over Streamable HTTP at `/mcp`, with a trivial tool, `echo`, and `show`, which answers
//! what task-mcp's `change.show` answers for the bench's change (the same JSON, in
//! `structuredContent` and as a text block), so the two can be compared at one answer size.
//!
//! Default: stateless JSON mode (no sessions, `application/json` answers).
//! `--stateful`: rmcp's session mode, for the SSE stream and memory scenarios.
use std::{net::SocketAddr, sync::Arc};

use clap::Parser;
use rmcp::{
    ServerHandler,
    handler::server::{
        router::tool::ToolRouter,
        wrapper::{Json, Parameters},
    },
    tool, tool_handler, tool_router,
    transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
    },
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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

#[derive(Debug, Deserialize, JsonSchema)]
struct ShowInput {
    /// The change to show (any: the answer is fixed).
    #[allow(dead_code)]
    slug: String,
}

/// task-mcp's `change.show` answer, typed as an rmcp server would type it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct ShowAnswer {
    change: Change,
    proposal: String,
    tasks: Vec<Task>,
    /// Empty for the bench's change (task-mcp's deltas are objects).
    deltas: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct Change {
    slug: String,
    title: String,
    status: String,
    updated_at: String,
    lock: Lock,
    progress: Progress,
    uri: String,
    archive_name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct Lock {
    owner: String,
    acquired_at: String,
    expires_at: String,
    ttl_seconds: u32,
    live: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
struct Progress {
    done: u32,
    total: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
struct Task {
    id: String,
    text: String,
    done: bool,
    line: u32,
    section: String,
}

#[derive(Clone)]
struct EchoServer {
    tool_router: ToolRouter<EchoServer>,
    show: Arc<ShowAnswer>,
}

#[tool_router]
impl EchoServer {
    fn new(tool_router: ToolRouter<EchoServer>, show: Arc<ShowAnswer>) -> Self {
        EchoServer { tool_router, show }
    }

    #[tool(description = "Returns its `message` argument unchanged")]
    async fn echo(&self, Parameters(input): Parameters<EchoInput>) -> String {
        input.message
    }

    #[tool(description = "Answers task-mcp's change.show answer for the bench's change")]
    async fn show(&self, Parameters(_input): Parameters<ShowInput>) -> Json<ShowAnswer> {
        // Cloned per call, as a server builds its answer per call.
        Json(ShowAnswer::clone(&self.show))
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
    let show: Arc<ShowAnswer> = Arc::new(serde_json::from_str(include_str!("../../fixtures/change-show.json"))?);
    // Stateless mode makes a server per request. The router (with its tools' JSON schemas) is
    // built once and cloned into each, the cheapest way rmcp allows, not rebuilt per call.
    let tool_router = EchoServer::tool_router();
    let service = StreamableHttpService::new(
        move || Ok(EchoServer::new(tool_router.clone(), show.clone())),
        Arc::new(LocalSessionManager::default()),
        config,
    );
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
