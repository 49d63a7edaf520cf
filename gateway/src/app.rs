//! Shared state and the router: MCP and REST routes behind the security layers,
//! health routes outside authentication.
use std::{sync::Arc, time::Instant};

use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::{Access, GatewayConfig, health, mcp, rest, security, upstream::Upstream};

pub struct AppState {
    pub config: GatewayConfig,
    pub upstream: Arc<Upstream>,
    pub access: Arc<dyn Access>,
    pub sessions: Arc<mcp::session::SessionStore>,
    pub stats: health::Stats,
    pub started: Instant,
    /// Cancelled when the server drains: SSE streams end.
    pub shutdown: CancellationToken,
}

impl AppState {
    pub fn new(config: GatewayConfig, upstream: Arc<Upstream>, access: Arc<dyn Access>) -> Arc<Self> {
        Arc::new(AppState {
            sessions: Arc::new(mcp::session::SessionStore::new(&config)),
            config,
            upstream,
            access,
            stats: health::Stats::default(),
            started: Instant::now(),
            shutdown: CancellationToken::new(),
        })
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    let protected = Router::new().merge(mcp::routes()).merge(rest::routes());
    let protected = security::protect(protected, &state);
    security::outer(Router::new().merge(protected).merge(health::routes()), &state).with_state(state)
}
