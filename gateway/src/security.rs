//! Authentication, rate limits, Origin/Host checks, CORS, security headers and
//! body limits as layers. (Being written.)
use std::sync::Arc;

use axum::Router;

use crate::AppState;

/// Layers for routes that need a principal.
pub fn protect(router: Router<Arc<AppState>>, _state: &Arc<AppState>) -> Router<Arc<AppState>> {
    router
}

/// Layers for every route.
pub fn outer(router: Router<Arc<AppState>>, _state: &Arc<AppState>) -> Router<Arc<AppState>> {
    router
}
