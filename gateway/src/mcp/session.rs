//! MCP sessions: bounded, expiring, bound to the principal that created them.
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::GatewayConfig;

pub struct SessionStore {
    sessions: AtomicUsize,
    streams: AtomicUsize,
}

impl SessionStore {
    pub fn new(_config: &GatewayConfig) -> Self {
        SessionStore { sessions: AtomicUsize::new(0), streams: AtomicUsize::new(0) }
    }

    /// Live sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.load(Ordering::Relaxed)
    }

    /// Open SSE streams over all sessions.
    pub fn stream_count(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }
}
