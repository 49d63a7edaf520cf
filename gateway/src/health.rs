//! `/health/live`, `/health/ready`, `/health/metrics`. (Being written.)
use std::sync::Arc;

use axum::Router;

use crate::AppState;

#[derive(Default)]
pub struct Stats {}

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
}
