//! MCP sessions: unguessable ids, bound to the principal that created them,
//! bounded in number, closed after an idle period. A session owns its streams'
//! event logs (for resumption), its in-flight requests (for cancellation), its
//! pending requests to the client, its resource subscriptions and its log level.
use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use rand::RngCore;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::{jsonrpc::RpcError, sse::EventLog};
use crate::GatewayConfig;

/// Event logs kept per session for resumption; older finished ones are dropped.
const LOGS_PER_SESSION: usize = 32;
/// RFC 5424 levels, lowest first.
const LEVELS: [&str; 8] = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"];

pub fn level_rank(level: &str) -> Option<u8> {
    LEVELS.iter().position(|l| *l == level).map(|p| p as u8)
}

/// The transport whose endpoint made a session: its id is good there only, so a legacy
/// `/messages` session cannot be driven through `/mcp` (or renegotiated), nor the reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Streamable,
    Legacy,
}

pub struct Session {
    pub id: String,
    pub principal: String,
    pub endpoint: Endpoint,
    version: Mutex<String>,
    last_seen: Mutex<Instant>,
    log_level: AtomicU8,
    subscriptions: Mutex<HashSet<String>>,
    in_flight: Mutex<HashMap<String, CancellationToken>>,
    client_requests: Mutex<HashMap<String, oneshot::Sender<Result<Value, RpcError>>>>,
    next_client_request: AtomicU64,
    logs: Mutex<VecDeque<Arc<EventLog>>>,
    next_stream: AtomicU64,
    /// The standalone (GET) stream: server notifications unrelated to a request.
    pub notifications: Arc<EventLog>,
    /// Cancelled when the session ends (DELETE, idle expiry, its legacy stream closed).
    pub closed: CancellationToken,
    event_capacity: usize,
    /// Whether the upstream change feed ([`super::dispatch::ensure_watch`]) is running.
    pub watching: std::sync::atomic::AtomicBool,
    /// Set by [`Session::drain`]; read and written under the `in_flight` lock.
    draining: std::sync::atomic::AtomicBool,
}

impl Session {
    fn new(id: String, principal: String, endpoint: Endpoint, version: String, event_capacity: usize) -> Self {
        Session {
            id,
            principal,
            endpoint,
            version: Mutex::new(version),
            last_seen: Mutex::new(Instant::now()),
            log_level: AtomicU8::new(1),
            subscriptions: Mutex::new(HashSet::new()),
            in_flight: Mutex::new(HashMap::new()),
            client_requests: Mutex::new(HashMap::new()),
            next_client_request: AtomicU64::new(1),
            logs: Mutex::new(VecDeque::new()),
            next_stream: AtomicU64::new(1),
            notifications: EventLog::new(0, event_capacity),
            closed: CancellationToken::new(),
            event_capacity,
            watching: std::sync::atomic::AtomicBool::new(false),
            draining: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The negotiated protocol version.
    pub fn version(&self) -> String {
        self.version.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The legacy transport creates the session before `initialize` negotiates.
    pub fn set_version(&self, version: &str) {
        *self.version.lock().unwrap_or_else(|p| p.into_inner()) = version.to_string();
    }

    fn touch(&self) {
        *self.last_seen.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    fn idle_for(&self) -> Duration {
        self.last_seen.lock().unwrap_or_else(|p| p.into_inner()).elapsed()
    }

    /// Ends the session: its requests are cancelled and its standalone stream ends, so a
    /// client still listening learns (on reconnecting, by a 404) that the session is gone
    /// rather than waiting on a stream nothing will ever reach.
    fn end(&self) {
        self.closed.cancel();
        self.notifications.finish();
    }

    /// The server drains: the standalone stream ends once no request of the session is in
    /// flight (a legacy session's answers travel on it), and the requests in flight are not
    /// cancelled: they have the grace period to finish and be answered.
    fn drain(&self) {
        let in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        self.draining.store(true, Ordering::Release);
        if in_flight.is_empty() {
            self.notifications.finish_for_drain();
        }
    }

    /// Idle: nothing heard within `timeout`, and no client reading the standalone stream (a
    /// client listening for notifications is using its session, though it sends nothing).
    fn is_idle(&self, timeout: Duration) -> bool {
        self.idle_for() >= timeout && !self.notifications.has_reader()
    }

    pub fn set_log_level(&self, level: &str) -> bool {
        match level_rank(level) {
            Some(rank) => {
                self.log_level.store(rank, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    pub fn logs_at(&self, level: &str) -> bool {
        level_rank(level).is_some_and(|r| r >= self.log_level.load(Ordering::Relaxed))
    }

    pub fn subscribe(&self, uri: &str) {
        self.subscriptions.lock().unwrap_or_else(|p| p.into_inner()).insert(uri.to_string());
    }

    pub fn unsubscribe(&self, uri: &str) {
        self.subscriptions.lock().unwrap_or_else(|p| p.into_inner()).remove(uri);
    }

    /// The URIs subscribed to, in no order.
    pub fn subscriptions(&self) -> Vec<String> {
        self.subscriptions.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }

    pub fn is_subscribed(&self, uri: &str) -> bool {
        self.subscriptions.lock().unwrap_or_else(|p| p.into_inner()).contains(uri)
    }

    /// A new event log for a request's SSE response (stream ids start at 1; 0 is the GET stream).
    pub fn new_log(&self) -> Arc<EventLog> {
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let log = EventLog::new(id, self.event_capacity);
        let mut logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        logs.push_back(log.clone());
        while logs.len() > LOGS_PER_SESSION {
            logs.pop_front();
        }
        log
    }

    pub fn find_log(&self, stream_id: u64) -> Option<Arc<EventLog>> {
        if stream_id == 0 {
            return Some(self.notifications.clone());
        }
        self.logs.lock().unwrap_or_else(|p| p.into_inner()).iter().find(|l| l.stream_id == stream_id).cloned()
    }

    /// Registers a request as in flight, so that `notifications/cancelled` can stop it, until
    /// the returned guard drops: however the request ends, its connection gone included.
    pub fn start_request(&self, id: &Value) -> InFlight<'_> {
        let key = id.to_string();
        let cancel = self.closed.child_token();
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner()).insert(key.clone(), cancel.clone());
        InFlight { session: self, key, cancel }
    }

    /// `notifications/cancelled`: unknown or finished ids are ignored, as the spec asks.
    pub fn cancel_request(&self, id: &Value) {
        if let Some(token) = self.in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(&id.to_string()) {
            token.cancel();
        }
    }

    pub fn register_client_request(&self, tx: oneshot::Sender<Result<Value, RpcError>>) -> Value {
        let n = self.next_client_request.fetch_add(1, Ordering::Relaxed);
        let id = Value::String(format!("srv-{n}"));
        self.client_requests.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_string(), tx);
        id
    }

    pub fn forget_client_request(&self, id: &Value) {
        self.client_requests.lock().unwrap_or_else(|p| p.into_inner()).remove(&id.to_string());
    }

    /// Delivers the client's answer to a server request; false if nobody waits for it.
    pub fn answer_client_request(&self, id: &Value, outcome: Result<Value, RpcError>) -> bool {
        match self.client_requests.lock().unwrap_or_else(|p| p.into_inner()).remove(&id.to_string()) {
            Some(tx) => tx.send(outcome).is_ok(),
            None => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Found,
    /// Unknown, expired, deleted, or created by another principal: all 404, so a
    /// stolen id reveals nothing.
    NotFound,
}

pub struct SessionStore {
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    max_sessions: usize,
    idle_timeout: Duration,
    event_capacity: usize,
    streams: AtomicUsize,
    max_streams: usize,
    /// Set by `drain`: no new stream opens afterwards.
    closing: std::sync::atomic::AtomicBool,
}

impl SessionStore {
    pub fn new(config: &GatewayConfig) -> Self {
        SessionStore {
            sessions: Mutex::new(HashMap::new()),
            max_sessions: config.max_sessions,
            idle_timeout: config.session_idle_timeout,
            event_capacity: config.event_store_capacity,
            streams: AtomicUsize::new(0),
            max_streams: config.max_streams,
            closing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Live sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Open SSE streams over all sessions.
    pub fn stream_count(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }

    /// Creates a session, or None when the store is full.
    pub fn create(&self, principal: &str, endpoint: Endpoint, version: &str) -> Option<Arc<Session>> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if sessions.len() >= self.max_sessions {
            return None;
        }
        let session =
            Arc::new(Session::new(new_id(), principal.to_string(), endpoint, version.to_string(), self.event_capacity));
        sessions.insert(session.id.clone(), session.clone());
        Some(session)
    }

    pub fn get(&self, id: &str, principal: &str, endpoint: Endpoint) -> Result<Arc<Session>, Lookup> {
        let session = self.sessions.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned();
        match session {
            Some(s) if s.principal == principal && s.endpoint == endpoint && !s.is_idle(self.idle_timeout) => {
                s.touch();
                Ok(s)
            }
            _ => Err(Lookup::NotFound),
        }
    }

    pub fn remove(&self, id: &str, principal: &str, endpoint: Endpoint) -> Lookup {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        match sessions.get(id) {
            Some(s) if s.principal == principal && s.endpoint == endpoint => {
                s.end();
                sessions.remove(id);
                Lookup::Found
            }
            _ => Lookup::NotFound,
        }
    }

    /// Closes sessions idle longer than the timeout. Run periodically.
    pub fn sweep(&self) -> usize {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let before = sessions.len();
        sessions.retain(|_, s| {
            let keep = !s.is_idle(self.idle_timeout);
            if !keep {
                s.end();
            }
            keep
        });
        before - sessions.len()
    }

    /// The server drains: no stream opens from now on, and every session's standalone
    /// stream ends once its requests in flight are answered ([`Session::drain`]).
    pub fn drain(&self) {
        self.closing.store(true, Ordering::Release);
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        for s in sessions.values() {
            s.drain();
        }
    }

    /// Whether `drain` ran.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// The configured cap on open streams (all transports share it).
    pub fn max_streams(&self) -> usize {
        self.max_streams
    }

    /// Reserves a stream slot; None when at capacity or draining. The gRPC
    /// service takes its server streams from the same slots, so the cap is
    /// process-wide.
    pub fn open_stream(self: &Arc<Self>) -> Option<StreamSlot> {
        if self.is_closing() {
            return None;
        }
        let mut current = self.streams.load(Ordering::Relaxed);
        loop {
            if current >= self.max_streams {
                return None;
            }
            match self.streams.compare_exchange_weak(current, current + 1, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Some(StreamSlot(self.clone())),
                Err(actual) => current = actual,
            }
        }
    }
}

/// One open SSE stream; the count drops with it.
pub struct StreamSlot(Arc<SessionStore>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

/// 128 random bits, hex: unguessable, visible ASCII as the spec requires.
fn new_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A request in flight in a session (see [`Session::start_request`]).
pub struct InFlight<'a> {
    session: &'a Session,
    key: String,
    /// Cancelled by `notifications/cancelled` or when the session closes.
    pub cancel: CancellationToken,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut in_flight = self.session.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        in_flight.remove(&self.key);
        // The answer was written before the guard dropped (see `Outbox::Log`), so a draining
        // legacy stream ends after it, not before.
        if in_flight.is_empty() && self.session.draining.load(Ordering::Acquire) {
            self.session.notifications.finish_for_drain();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(max_sessions: usize) -> Arc<SessionStore> {
        let config = GatewayConfig { max_sessions, max_streams: 2, ..GatewayConfig::default() };
        Arc::new(SessionStore::new(&config))
    }

    #[test]
    fn sessions_are_bound_to_their_principal_and_bounded() {
        let s = store(1);
        let a = s.create("alice", Endpoint::Streamable, "2025-11-25").unwrap();
        assert_eq!(a.id.len(), 32);
        assert!(s.get(&a.id, "alice", Endpoint::Streamable).is_ok());
        assert_eq!(s.get(&a.id, "mallory", Endpoint::Streamable).err(), Some(Lookup::NotFound));
        assert!(s.create("bob", Endpoint::Streamable, "2025-11-25").is_none(), "full");
        assert_eq!(s.remove(&a.id, "mallory", Endpoint::Streamable), Lookup::NotFound);
        assert_eq!(s.remove(&a.id, "alice", Endpoint::Streamable), Lookup::Found);
        assert!(a.closed.is_cancelled());
        assert!(a.notifications.is_finished(), "its standalone stream ends");
        assert_eq!(s.get(&a.id, "alice", Endpoint::Streamable).err(), Some(Lookup::NotFound));
    }

    #[test]
    fn a_session_id_is_good_only_on_the_endpoint_that_made_it() {
        let s = store(2);
        let legacy = s.create("alice", Endpoint::Legacy, "2024-11-05").unwrap();
        assert_eq!(s.get(&legacy.id, "alice", Endpoint::Streamable).err(), Some(Lookup::NotFound));
        assert_eq!(s.remove(&legacy.id, "alice", Endpoint::Streamable), Lookup::NotFound);
        assert!(!legacy.closed.is_cancelled());
        assert!(s.get(&legacy.id, "alice", Endpoint::Legacy).is_ok());
    }

    #[test]
    fn a_session_whose_stream_is_read_is_not_idle() {
        let config =
            GatewayConfig { max_sessions: 2, session_idle_timeout: Duration::ZERO, ..GatewayConfig::default() };
        let s = SessionStore::new(&config);
        let listening = s.create("alice", Endpoint::Streamable, "2025-11-25").unwrap();
        let quiet = s.create("alice", Endpoint::Streamable, "2025-11-25").unwrap();
        let reader = listening.notifications.claim();
        assert_eq!(s.sweep(), 1, "only the session nobody listens on expires");
        assert!(quiet.closed.is_cancelled());
        assert!(!listening.closed.is_cancelled());
        drop(reader);
        assert_eq!(s.sweep(), 1, "once its stream is gone, it is idle too");
    }

    #[test]
    fn stream_slots_are_bounded_and_released() {
        let s = store(10);
        let one = s.open_stream().unwrap();
        let _two = s.open_stream().unwrap();
        assert!(s.open_stream().is_none());
        drop(one);
        assert!(s.open_stream().is_some());
    }

    #[test]
    fn a_request_is_cancellable_while_in_flight_and_forgotten_however_it_ends() {
        let s = store(1);
        let a = s.create("a", Endpoint::Streamable, "v").unwrap();
        let id = serde_json::json!(7);
        let first = a.start_request(&id);
        a.cancel_request(&id);
        assert!(first.cancel.is_cancelled(), "notifications/cancelled reaches the request");
        drop(first);
        // A request whose future is dropped (its connection gone) leaves no entry behind.
        let second = a.start_request(&id);
        let token = second.cancel.clone();
        drop(second);
        assert!(a.in_flight.lock().unwrap().is_empty());
        a.cancel_request(&id);
        assert!(!token.is_cancelled(), "a finished request is not cancelled");
    }

    #[test]
    fn log_levels_filter() {
        let s = store(1);
        let a = s.create("a", Endpoint::Streamable, "v").unwrap();
        assert!(a.set_log_level("warning"));
        assert!(!a.logs_at("info"));
        assert!(a.logs_at("error"));
        assert!(!a.set_log_level("loud"));
    }

    #[test]
    fn a_drain_ends_the_standalone_stream_after_the_requests_in_flight_and_cancels_none() {
        let s = store(2);
        let busy = s.create("alice", Endpoint::Legacy, "2024-11-05").unwrap();
        let idle = s.create("alice", Endpoint::Streamable, "2025-11-25").unwrap();
        let call = busy.start_request(&serde_json::json!(7));
        s.drain();
        assert!(idle.notifications.is_finished(), "nothing in flight: its stream ends now");
        assert!(!busy.notifications.is_finished(), "its answer is still to come on this stream");
        assert!(!call.cancel.is_cancelled(), "the call has the grace period to finish");
        assert!(s.open_stream().is_none(), "no stream opens while draining");
        drop(call);
        assert!(busy.notifications.is_finished(), "answered: the stream ends");
    }
}
