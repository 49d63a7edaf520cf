//! MCP over HTTP: Streamable HTTP (2025-03-26, 2025-06-18, 2025-11-25 with
//! sessions; 2026-07-28 stateless) on `/mcp`, and the legacy HTTP+SSE transport
//! (2024-11-05) on `/sse` + `/messages`. Methods are shared (`dispatch`); the
//! transports differ only in how messages travel.
pub mod context;
pub mod dispatch;
pub mod fixtures;
pub mod jsonrpc;
pub mod legacy;
pub mod prompts;
pub mod protocol;
pub mod reply;
pub mod session;
pub mod sse;
pub mod stateless;
pub mod streamable;
pub mod transport;

use std::sync::Arc;

use axum::{Router, routing::get};

use crate::AppState;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/mcp", get(streamable::get).post(streamable::post).delete(streamable::delete))
        .route("/sse", get(legacy::get))
        .route("/messages", axum::routing::post(legacy::post))
}
