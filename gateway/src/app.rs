//! Shared state and the router: MCP and REST routes behind the security layers,
//! health routes outside authentication.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::{Access, GatewayConfig, health, mcp, metrics::GatewayMetrics, rest, security, upstream::Upstream};

pub struct AppState {
    pub config: GatewayConfig,
    pub upstream: Arc<Upstream>,
    pub access: Arc<dyn Access>,
    pub sessions: Arc<mcp::session::SessionStore>,
    pub stats: health::Stats,
    pub started: Instant,
    /// Cancelled when the server drains: SSE streams end.
    pub shutdown: CancellationToken,
    /// Cancelled as soon as a stop is asked for, before `shutdown`: `/health/ready` answers 503
    /// from then on, while the listeners still accept (`--shutdown-delay-seconds`).
    pub draining: CancellationToken,
    /// The HTTP, streaming and security instruments (no-op unless the
    /// embedding binary passes real ones to [`AppState::with_metrics`]).
    pub metrics: Arc<GatewayMetrics>,
}

impl AppState {
    pub fn new(config: GatewayConfig, upstream: Arc<Upstream>, access: Arc<dyn Access>) -> Arc<Self> {
        Self::with_metrics(config, upstream, access, GatewayMetrics::noop())
    }

    pub fn with_metrics(
        config: GatewayConfig,
        upstream: Arc<Upstream>,
        access: Arc<dyn Access>,
        metrics: Arc<GatewayMetrics>,
    ) -> Arc<Self> {
        Arc::new(AppState {
            sessions: Arc::new(mcp::session::SessionStore::new(&config)),
            config,
            upstream,
            access,
            metrics,
            stats: health::Stats::default(),
            started: Instant::now(),
            shutdown: CancellationToken::new(),
            draining: CancellationToken::new(),
        })
    }
}

/// Builds the router and starts the session sweeper (so must run inside the runtime).
pub fn router(state: Arc<AppState>) -> Router {
    spawn_session_sweeper(&state);
    let protected = Router::new().merge(mcp::routes()).merge(rest::routes());
    let protected = security::protect(protected, &state);
    // Any other path gets a REST error body, not axum's empty 404.
    let all = Router::new()
        .merge(protected)
        .merge(health::routes())
        .merge(crate::protected_resource::routes(state.config.oauth.as_ref()))
        .fallback(rest::unknown_path);
    security::outer(all, &state).with_state(state)
}

/// Closes idle sessions periodically; lookups already refuse them, this frees
/// their memory and streams so a burst of abandoned sessions cannot pin the store
/// at its limit.
fn spawn_session_sweeper(state: &Arc<AppState>) {
    let period = (state.config.session_idle_timeout / 4).clamp(Duration::from_millis(250), Duration::from_secs(60));
    let state = Arc::downgrade(state);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(state) = state.upgrade() else { return };
            if state.shutdown.is_cancelled() {
                return;
            }
            let closed = state.sessions.sweep();
            if closed > 0 {
                tracing::info!(closed, "idle MCP sessions closed");
            }
        }
    });
}
