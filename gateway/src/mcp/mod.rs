//! MCP over HTTP: Streamable HTTP (2025-03-26, 2025-06-18, 2025-11-25 and the
//! stateless 2026-07-28) on `/mcp`, and the legacy HTTP+SSE transport on `/sse`
//! + `/messages`.
pub mod session;

use std::sync::Arc;

use axum::Router;

use crate::AppState;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
}
