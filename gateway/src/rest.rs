//! Plain HTTP/JSON in the style of grpc-gateway. (Being written.)
use std::sync::Arc;

use axum::Router;

use crate::AppState;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
}
