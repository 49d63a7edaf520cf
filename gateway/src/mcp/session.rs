//! MCP sessions: unguessable ids, bound to the principal that created them,
//! bounded in number, closed after an idle period. A session owns its streams'
//! event logs (for resumption), its in-flight requests (for cancellation), its
//! pending requests to the client, its resource subscriptions and its log level.
use std::{
    collections::{HashSet, VecDeque},
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
use crate::{FastMap, GatewayConfig};

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
    in_flight: Mutex<FastMap<String, CancellationToken>>,
    client_requests: Mutex<FastMap<String, oneshot::Sender<Result<Value, RpcError>>>>,
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
            in_flight: Mutex::default(),
            client_requests: Mutex::default(),
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
    sessions: Mutex<Sessions>,
    max_sessions: usize,
    /// At most this many live sessions per principal (`usize::MAX`: no share).
    sessions_per_principal: usize,
    idle_timeout: Duration,
    event_capacity: usize,
    streams: AtomicUsize,
    max_streams: usize,
    /// At most this many open streams per principal (`usize::MAX`: no share).
    streams_per_principal: usize,
    /// Open streams by principal, kept only when there is a share to enforce.
    principal_streams: Mutex<FastMap<Arc<str>, usize>>,
    /// Set by `drain`: no new stream opens afterwards.
    closing: std::sync::atomic::AtomicBool,
}

/// The live sessions, and how many each principal holds (so that a share is checked without
/// walking them all); changed together, under one lock.
#[derive(Default)]
struct Sessions {
    by_id: FastMap<String, Arc<Session>>,
    per_principal: FastMap<String, usize>,
}

impl Sessions {
    fn insert(&mut self, session: Arc<Session>) {
        *self.per_principal.entry(session.principal.clone()).or_default() += 1;
        self.by_id.insert(session.id.clone(), session);
    }

    fn forget(&mut self, principal: &str) {
        if let Some(held) = self.per_principal.get_mut(principal) {
            *held -= 1;
            if *held == 0 {
                self.per_principal.remove(principal);
            }
        }
    }
}

/// 0 in the configuration means no share.
fn share(configured: usize) -> usize {
    if configured == 0 { usize::MAX } else { configured }
}

impl SessionStore {
    pub fn new(config: &GatewayConfig) -> Self {
        SessionStore {
            sessions: Mutex::new(Sessions::default()),
            max_sessions: config.max_sessions,
            sessions_per_principal: share(config.max_sessions_per_principal),
            idle_timeout: config.session_idle_timeout,
            event_capacity: config.event_store_capacity,
            streams: AtomicUsize::new(0),
            max_streams: config.max_streams,
            streams_per_principal: share(config.max_streams_per_principal),
            principal_streams: Mutex::default(),
            closing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Live sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).by_id.len()
    }

    /// Open SSE streams over all sessions.
    pub fn stream_count(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }

    /// Creates a session, or None when the store is full or the principal holds its share.
    pub fn create(&self, principal: &str, endpoint: Endpoint, version: &str) -> Option<Arc<Session>> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let held = sessions.per_principal.get(principal).copied().unwrap_or(0);
        if sessions.by_id.len() >= self.max_sessions || held >= self.sessions_per_principal {
            return None;
        }
        let session =
            Arc::new(Session::new(new_id(), principal.to_string(), endpoint, version.to_string(), self.event_capacity));
        sessions.insert(session.clone());
        Some(session)
    }

    pub fn get(&self, id: &str, principal: &str, endpoint: Endpoint) -> Result<Arc<Session>, Lookup> {
        let session = self.sessions.lock().unwrap_or_else(|p| p.into_inner()).by_id.get(id).cloned();
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
        match sessions.by_id.get(id) {
            Some(s) if s.principal == principal && s.endpoint == endpoint => {
                s.end();
                sessions.by_id.remove(id);
                sessions.forget(principal);
                Lookup::Found
            }
            _ => Lookup::NotFound,
        }
    }

    /// Closes sessions idle longer than the timeout. Run periodically.
    pub fn sweep(&self) -> usize {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let before = sessions.by_id.len();
        let mut ended = Vec::new();
        sessions.by_id.retain(|_, s| {
            let keep = !s.is_idle(self.idle_timeout);
            if !keep {
                s.end();
                ended.push(s.principal.clone());
            }
            keep
        });
        for principal in &ended {
            sessions.forget(principal);
        }
        before - sessions.by_id.len()
    }

    /// The server drains: no stream opens from now on, and every session's standalone
    /// stream ends once its requests in flight are answered ([`Session::drain`]).
    pub fn drain(&self) {
        self.closing.store(true, Ordering::Release);
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        for s in sessions.by_id.values() {
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

    /// Reserves a stream slot for `principal`; None when at capacity, when the principal holds
    /// its share, or while draining. The gRPC service takes its server streams from the same
    /// slots, so the cap is process-wide. `None` for the principal (a gRPC call not yet
    /// authenticated, refused right after) takes a slot of the cap only.
    pub fn open_stream(self: &Arc<Self>, principal: Option<&str>) -> Option<StreamSlot> {
        if self.is_closing() {
            return None;
        }
        let mut current = self.streams.load(Ordering::Relaxed);
        loop {
            if current >= self.max_streams {
                return None;
            }
            match self.streams.compare_exchange_weak(current, current + 1, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
        // Taken first so that a refusal below gives the slot back as the guard drops.
        let mut slot = StreamSlot { store: self.clone(), principal: None };
        if let Some(principal) = principal.filter(|_| self.streams_per_principal != usize::MAX) {
            let mut held = self.principal_streams.lock().unwrap_or_else(|p| p.into_inner());
            let key: Arc<str> = match held.get_key_value(principal) {
                Some((key, _)) => key.clone(),
                None => principal.into(),
            };
            let count = held.entry(key.clone()).or_default();
            if *count >= self.streams_per_principal {
                if *count == 0 {
                    held.remove(principal);
                }
                return None;
            }
            *count += 1;
            slot.principal = Some(key);
        }
        Some(slot)
    }

    /// Open streams `principal` holds (counted only when a share is enforced).
    pub fn principal_stream_count(&self, principal: &str) -> usize {
        self.principal_streams.lock().unwrap_or_else(|p| p.into_inner()).get(principal).copied().unwrap_or(0)
    }
}

/// One open stream; the counts drop with it.
pub struct StreamSlot {
    store: Arc<SessionStore>,
    principal: Option<Arc<str>>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Some(principal) = &self.principal {
            let mut held = self.store.principal_streams.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(count) = held.get_mut(principal) {
                *count -= 1;
                if *count == 0 {
                    held.remove(principal);
                }
            }
        }
        self.store.streams.fetch_sub(1, Ordering::AcqRel);
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
        let one = s.open_stream(Some("alice")).unwrap();
        let _two = s.open_stream(None).unwrap();
        assert!(s.open_stream(Some("alice")).is_none());
        drop(one);
        assert!(s.open_stream(Some("alice")).is_some());
    }

    #[test]
    fn a_principal_holds_at_most_its_share_and_others_still_get_theirs() {
        let config = GatewayConfig {
            max_sessions: 4,
            max_streams: 4,
            max_sessions_per_principal: 2,
            max_streams_per_principal: 2,
            ..GatewayConfig::default()
        };
        let s = Arc::new(SessionStore::new(&config));
        let first = s.create("alice", Endpoint::Streamable, "v").unwrap();
        let _second = s.create("alice", Endpoint::Legacy, "v").unwrap();
        assert!(s.create("alice", Endpoint::Streamable, "v").is_none(), "alice holds her share");
        assert!(s.create("bob", Endpoint::Streamable, "v").is_some(), "bob gets his");
        assert_eq!(s.remove(&first.id, "alice", Endpoint::Streamable), Lookup::Found);
        assert!(s.create("alice", Endpoint::Streamable, "v").is_some(), "a session closed is a share back");

        let one = s.open_stream(Some("alice")).unwrap();
        let _two = s.open_stream(Some("alice")).unwrap();
        assert!(s.open_stream(Some("alice")).is_none(), "alice holds her share of streams");
        assert_eq!(s.stream_count(), 2, "a refused share gives its slot of the cap back");
        let _bob = s.open_stream(Some("bob")).unwrap();
        drop(one);
        assert_eq!(s.principal_stream_count("alice"), 1);
        assert!(s.open_stream(Some("alice")).is_some());
    }

    #[test]
    fn expired_sessions_give_their_principal_its_share_back() {
        let config = GatewayConfig {
            max_sessions: 4,
            max_sessions_per_principal: 1,
            session_idle_timeout: Duration::ZERO,
            ..GatewayConfig::default()
        };
        let s = SessionStore::new(&config);
        s.create("alice", Endpoint::Streamable, "v").unwrap();
        assert_eq!(s.sweep(), 1);
        assert!(s.create("alice", Endpoint::Streamable, "v").is_some());
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
        assert!(s.open_stream(None).is_none(), "no stream opens while draining");
        drop(call);
        assert!(busy.notifications.is_finished(), "answered: the stream ends");
    }
}
