//! Server-Sent Events with resumption. Every stream is an `EventLog`: its
//! producer (a request handler, or the session's notification feed) appends
//! messages; an HTTP response reads them from a cursor. A dropped connection
//! therefore loses nothing: `GET` with `Last-Event-ID` replays what followed,
//! from a bounded log, and then continues live.
//!
//! One reader at a time: a resumption (`Last-Event-ID`) takes the log over
//! from whichever response still holds it, because the client that resumes
//! has lost that connection even when the server has not noticed yet (a
//! dead TCP peer shows only at the next write).
use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::body::Body;
use bytes::Bytes;
use tokio::sync::Notify;

use crate::metrics::{CloseReason, MessageType, StreamRecorder};

pub struct EventLog {
    pub stream_id: u64,
    capacity: usize,
    inner: Mutex<LogInner>,
    changed: Notify,
    finished: AtomicBool,
    /// Finished because the server drains, not because its producer was done.
    drained: AtomicBool,
    /// The claim of the HTTP response reading this log now; 0 when none.
    reader: AtomicU64,
    next_reader: AtomicU64,
    /// The last sequence number any reader sent: where a new reader without
    /// `Last-Event-ID` starts, so it neither repeats nor misses events.
    delivered: AtomicU64,
}

struct LogInner {
    next_seq: u64,
    /// Sequence number, the message's JSON, and its kind (for the metrics).
    events: VecDeque<(u64, Arc<str>, MessageType)>,
}

impl EventLog {
    pub fn new(stream_id: u64, capacity: usize) -> Arc<Self> {
        Arc::new(EventLog {
            stream_id,
            capacity: capacity.max(1),
            inner: Mutex::new(LogInner { next_seq: 1, events: VecDeque::new() }),
            changed: Notify::new(),
            finished: AtomicBool::new(false),
            drained: AtomicBool::new(false),
            reader: AtomicU64::new(0),
            next_reader: AtomicU64::new(1),
            delivered: AtomicU64::new(0),
        })
    }

    /// Appends one JSON-RPC message; the oldest is forgotten beyond capacity.
    pub fn push(&self, message: &serde_json::Value) {
        let text: Arc<str> = Arc::from(message.to_string());
        let kind = MessageType::of_jsonrpc(message);
        {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let seq = inner.next_seq;
            inner.next_seq += 1;
            inner.events.push_back((seq, text, kind));
            while inner.events.len() > self.capacity {
                inner.events.pop_front();
            }
        }
        self.changed.notify_waiters();
    }

    /// No more events will come; readers end after draining.
    pub fn finish(&self) {
        self.finished.store(true, Ordering::Release);
        self.changed.notify_waiters();
    }

    /// Finishes a log that would otherwise go on (a session's standalone stream, a
    /// subscription) because the server drains; its readers close as `shutdown`.
    pub fn finish_for_drain(&self) {
        self.drained.store(true, Ordering::Release);
        self.finish();
    }

    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    /// Whether a client is reading the log now.
    pub fn has_reader(&self) -> bool {
        self.reader.load(Ordering::Acquire) != 0
    }

    /// Claims the log for a reader if none holds it (tests probe with it
    /// whether a reader let go; every stream of the server takes over).
    #[cfg(test)]
    pub fn claim_if_free(self: &Arc<Self>) -> Option<Reader> {
        let id = self.next_reader.fetch_add(1, Ordering::Relaxed);
        self.reader.compare_exchange(0, id, Ordering::AcqRel, Ordering::Acquire).ok()?;
        Some(Reader { log: self.clone(), id })
    }

    /// Claims the log for a reader, ending the one that holds it, if any.
    pub fn claim(self: &Arc<Self>) -> Reader {
        let id = self.next_reader.fetch_add(1, Ordering::Relaxed);
        if self.reader.swap(id, Ordering::AcqRel) != 0 {
            // Wake the superseded reader so that it sees it lost the log.
            self.changed.notify_waiters();
        }
        Reader { log: self.clone(), id }
    }

    pub fn event_id(&self, seq: u64) -> String {
        format!("{}-{}", self.stream_id, seq)
    }

    /// Events after `cursor` (a sequence number).
    fn after(&self, cursor: u64) -> Vec<(u64, Arc<str>, MessageType)> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.events.iter().filter(|(seq, _, _)| *seq > cursor).cloned().collect()
    }

    /// The sequence number a fresh reader starts after.
    pub fn start_cursor(&self) -> u64 {
        self.delivered.load(Ordering::Acquire)
    }
}

/// Parses `Last-Event-ID` (`<stream>-<seq>`).
pub fn parse_event_id(value: &str) -> Option<(u64, u64)> {
    let (stream, seq) = value.split_once('-')?;
    Some((stream.parse().ok()?, seq.parse().ok()?))
}

pub struct SseOptions {
    /// Send a priming event (an id with empty data) and `retry:` first (2025-11-25).
    pub prime: bool,
    /// Raw SSE text sent before anything else (the legacy transport's `endpoint` event).
    pub preamble: Option<String>,
    pub retry: Duration,
    pub keepalive: Duration,
    /// Send a response in a write of its own, at least [`RESPONSE_APART`]
    /// after the last progress notification (the legacy stream). The
    /// TypeScript SDK's SSE client handles a response at once but a
    /// notification a microtask later, so a response read in the same chunk
    /// as its progress drops that progress and reports it as for an unknown
    /// token (typescript-sdk#2580), which some clients treat as fatal.
    pub response_apart: bool,
}

/// How long after a frame with progress a response may follow: long enough
/// for a client to read the progress as a chunk of its own.
const RESPONSE_APART: Duration = Duration::from_millis(10);

fn is_response(kind: MessageType) -> bool {
    matches!(kind, MessageType::Result | MessageType::Error)
}

/// The right to read an `EventLog`, released on drop unless a newer reader
/// has taken the log over in the meantime.
pub struct Reader {
    log: Arc<EventLog>,
    id: u64,
}

impl Reader {
    fn is_current(&self) -> bool {
        self.log.reader.load(Ordering::Acquire) == self.id
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let _ = self.log.reader.compare_exchange(self.id, 0, Ordering::AcqRel, Ordering::Relaxed);
    }
}

/// Releases the stream slot and the log's reader claim when the response ends,
/// however it ends (client gone, finished, superseded, shutdown).
pub struct Attachment {
    reader: Reader,
    on_drop: Option<Box<dyn FnOnce() + Send>>,
}

impl Attachment {
    pub fn new(reader: Reader, on_drop: Box<dyn FnOnce() + Send>) -> Self {
        Attachment { reader, on_drop: Some(on_drop) }
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if let Some(f) = self.on_drop.take() {
            f();
        }
    }
}

/// The response body reading `log` after `cursor`. Each event leaves in one
/// write: several small writes per event invite Nagle delays on the client side.
///
/// `recorder` counts what is written (the legacy `endpoint` event and the
/// priming event as `priming`, keep-alives as `ping`, log events by kind) and
/// why the stream ended: `completed` when the log is finished, `shutdown` when
/// it was finished for the drain, `client_closed` when the body is dropped first
/// or the client resumed the stream on another connection.
///
/// A stream ends only when its log does, drain or not: a request's stream then
/// carries the answer of a call that finishes within the grace period.
pub fn body(attachment: Attachment, cursor: u64, options: SseOptions, recorder: StreamRecorder) -> Body {
    let stream = async_stream::stream! {
        let attachment = attachment;
        let mut recorder = recorder;
        let log = attachment.reader.log.clone();
        let mut cursor = cursor;
        let mut progress_sent: Option<std::time::Instant> = None;
        if let Some(preamble) = options.preamble {
            recorder.sent(MessageType::Priming, 1, preamble.len());
            yield Ok::<Bytes, std::convert::Infallible>(Bytes::from(preamble));
        }
        if options.prime {
            // Event ids are unique within a session, so only a stream read from its start
            // primes with an id (`<stream>-0`, which no event has). Read from a later cursor,
            // the client already holds the id it would carry, and gets the `retry:` alone.
            let retry = options.retry.as_millis();
            let prime = if cursor == 0 {
                format!("id: {}\nretry: {retry}\ndata: \n\n", log.event_id(0))
            } else {
                format!("retry: {retry}\n\n")
            };
            recorder.sent(MessageType::Priming, 1, prime.len());
            yield Ok(Bytes::from(prime));
        }
        loop {
            // Register interest before reading so a push between the read and
            // the wait is not missed.
            let changed = log.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if !attachment.reader.is_current() {
                recorder.close(CloseReason::ClientClosed);
                break;
            }
            let batch = log.after(cursor);
            if batch.is_empty() {
                if log.is_finished() {
                    let drained = log.drained.load(Ordering::Acquire);
                    recorder.close(if drained { CloseReason::Shutdown } else { CloseReason::Completed });
                    break;
                }
                tokio::select! {
                    () = &mut changed => continue,
                    () = tokio::time::sleep(options.keepalive) => {
                        const KEEPALIVE: &[u8] = b": keepalive\n\n";
                        recorder.sent(MessageType::Ping, 1, KEEPALIVE.len());
                        yield Ok(Bytes::from_static(KEEPALIVE));
                        continue;
                    }
                }
            }
            if options.response_apart
                && let Some(at) = progress_sent
                && batch.first().is_some_and(|(_, _, kind)| is_response(*kind))
            {
                tokio::time::sleep(RESPONSE_APART.saturating_sub(at.elapsed())).await;
            }
            let mut frame = String::new();
            let mut progress = false;
            // Progress sent in an earlier frame holds a response back too, with other
            // messages queued between them (the change feed's `list_changed` after an
            // archive): the response then starts the next frame, which waits above.
            let held = options.response_apart && progress_sent.is_some_and(|at| at.elapsed() < RESPONSE_APART);
            for (seq, data, kind) in batch {
                if options.response_apart && (progress || held) && is_response(kind) {
                    break;
                }
                progress |= matches!(kind, MessageType::Progress);
                recorder.sent(kind, 1, 0);
                cursor = seq;
                frame.push_str("id: ");
                frame.push_str(&log.event_id(seq));
                frame.push_str("\nevent: message\ndata: ");
                frame.push_str(&data);
                frame.push_str("\n\n");
            }
            log.delivered.fetch_max(cursor, Ordering::AcqRel);
            recorder.add_bytes(frame.len());
            yield Ok(Bytes::from(frame));
            if progress {
                progress_sent = Some(std::time::Instant::now());
            }
        }
        drop(attachment);
    };
    Body::from_stream(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use serde_json::json;

    #[test]
    fn event_ids_round_trip() {
        let log = EventLog::new(7, 4);
        assert_eq!(parse_event_id(&log.event_id(12)), Some((7, 12)));
        assert_eq!(parse_event_id("garbage"), None);
    }

    #[test]
    fn the_log_is_bounded() {
        let log = EventLog::new(1, 2);
        for i in 0..5 {
            log.push(&json!({"n": i}));
        }
        let kept: Vec<u64> = log.after(0).into_iter().map(|(s, _, _)| s).collect();
        assert_eq!(kept, vec![4, 5]);
    }

    #[tokio::test]
    async fn a_reader_gets_the_events_after_its_cursor_then_ends() {
        let log = EventLog::new(3, 16);
        log.push(&json!({"a": 1}));
        log.push(&json!({"b": 2}));
        log.finish();
        let reader = log.claim_if_free().expect("nobody reads a new log");
        let text = read_to_end(reader, 1, quiet_options()).await;
        assert_eq!(text, "id: 3-2\nevent: message\ndata: {\"b\":2}\n\n");
        assert!(log.claim_if_free().is_some(), "the reader released the log when it ended");
    }

    fn quiet_options() -> SseOptions {
        SseOptions {
            prime: false,
            preamble: None,
            retry: Duration::from_secs(1),
            keepalive: Duration::from_secs(60),
            response_apart: false,
        }
    }

    /// Everything the stream body writes for `reader` from `cursor`, counted nowhere.
    async fn read_to_end(reader: Reader, cursor: u64, options: SseOptions) -> String {
        use crate::metrics::{GatewayMetrics, StreamType, Transport};
        let recorder = GatewayMetrics::noop().open_stream(Transport::Mcp, StreamType::Sse, std::time::Instant::now());
        let body = super::body(Attachment::new(reader, Box::new(|| {})), cursor, options, recorder);
        String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_resumed_reader_takes_the_log_over_and_the_old_one_ends() {
        use crate::metrics::{GatewayMetrics, StreamType, Transport, testing::TestMeter};
        let t = TestMeter::new();
        let metrics = Arc::new(GatewayMetrics::new(&t.meter(), 4));
        let log = EventLog::new(5, 16);
        let first = log.claim_if_free().expect("nobody reads a new log");
        assert!(log.claim_if_free().is_none(), "a second plain reader is refused while one reads");
        let recorder = metrics.open_stream(Transport::Mcp, StreamType::Sse, std::time::Instant::now());
        let mut old = super::body(Attachment::new(first, Box::new(|| {})), 0, quiet_options(), recorder);
        log.push(&json!({"n": 1}));
        let frame = old.frame().await.expect("the first event").unwrap().into_data().unwrap();
        assert!(std::str::from_utf8(&frame).unwrap().starts_with("id: 5-1\n"));

        // The client lost that connection (the server has not noticed) and resumes after 5-1.
        let resumed = log.claim();
        log.push(&json!({"n": 2}));
        assert!(old.frame().await.is_none(), "the superseded reader ends without sending on");
        let closed = ["transport=mcp", "stream.type=sse", "close.reason=client_closed"];
        assert_eq!(t.value("streaming.connection.duration", &closed), Some(1.0));
        assert!(log.claim_if_free().is_none(), "the old reader ending leaves the new claim in place");

        log.finish();
        let recorder = metrics.open_stream(Transport::Mcp, StreamType::Sse, std::time::Instant::now());
        let new = super::body(Attachment::new(resumed, Box::new(|| {})), 1, quiet_options(), recorder);
        let text = String::from_utf8(new.collect().await.unwrap().to_bytes().to_vec()).unwrap();
        assert_eq!(text, "id: 5-2\nevent: message\ndata: {\"n\":2}\n\n");
        assert!(log.claim_if_free().is_some(), "the log is free once its reader ended");
    }

    /// The legacy stream writes a response apart from the progress before it; other
    /// streams write what is queued in one frame.
    #[tokio::test]
    async fn a_response_held_apart_leaves_in_a_frame_of_its_own() {
        use crate::metrics::{GatewayMetrics, StreamType, Transport};
        let frames = |apart: bool| async move {
            let log = EventLog::new(2, 16);
            log.push(&json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": 1}}));
            log.push(&json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": 2}}));
            log.push(&json!({"jsonrpc": "2.0", "id": 1, "result": {}}));
            log.finish();
            let recorder =
                GatewayMetrics::noop().open_stream(Transport::Mcp, StreamType::Sse, std::time::Instant::now());
            let options = SseOptions { response_apart: apart, ..quiet_options() };
            let mut body = super::body(Attachment::new(log.claim(), Box::new(|| {})), 0, options, recorder);
            let mut frames = Vec::new();
            while let Some(frame) = body.frame().await {
                let data = frame.unwrap().into_data().unwrap();
                frames.push(sse_count(std::str::from_utf8(&data).unwrap()));
            }
            frames
        };
        assert_eq!(frames(true).await, [(2, 0), (0, 1)], "progress, then the response alone");
        assert_eq!(frames(false).await, [(2, 1)]);
    }

    /// A notification queued between the progress and the response (an archive's
    /// `list_changed`) does not carry the response out with it: it still leaves in a
    /// frame of its own, `RESPONSE_APART` after the progress.
    #[tokio::test]
    async fn a_notification_between_progress_and_response_does_not_take_it_along() {
        use crate::metrics::{GatewayMetrics, StreamType, Transport};
        let log = EventLog::new(2, 16);
        let recorder = GatewayMetrics::noop().open_stream(Transport::Mcp, StreamType::Sse, std::time::Instant::now());
        let options = SseOptions { response_apart: true, ..quiet_options() };
        let mut body = super::body(Attachment::new(log.claim(), Box::new(|| {})), 0, options, recorder);
        let mut next = async || {
            let data = body.frame().await.expect("a frame").unwrap().into_data().unwrap();
            std::str::from_utf8(&data).unwrap().to_string()
        };
        log.push(&json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": 1}}));
        assert_eq!(sse_count(&next().await), (1, 0));
        let progress_at = std::time::Instant::now();
        log.push(&json!({"jsonrpc": "2.0", "method": "notifications/resources/list_changed"}));
        log.push(&json!({"jsonrpc": "2.0", "id": 1, "result": {}}));
        log.finish();
        let between = next().await;
        assert!(between.contains("list_changed") && sse_count(&between) == (0, 0), "{between}");
        assert_eq!(sse_count(&next().await), (0, 1), "the response alone");
        assert!(progress_at.elapsed() >= RESPONSE_APART, "the response waited for its turn");
    }

    /// (progress notifications, responses) in one SSE frame.
    fn sse_count(frame: &str) -> (usize, usize) {
        (frame.matches("notifications/progress").count(), frame.matches("\"result\"").count())
    }

    #[tokio::test]
    async fn priming_never_repeats_an_event_id() {
        let log = EventLog::new(4, 16);
        log.push(&json!({"a": 1}));
        log.push(&json!({"b": 2}));
        log.finish();
        let read_from = |cursor| read_to_end(log.claim(), cursor, SseOptions { prime: true, ..quiet_options() });
        let fresh = read_from(0).await;
        assert!(fresh.starts_with("id: 4-0\nretry: 1000\ndata: \n\n"), "{fresh}");
        let resumed = read_from(1).await;
        assert_eq!(resumed, "retry: 1000\n\nid: 4-2\nevent: message\ndata: {\"b\":2}\n\n");
    }

    #[tokio::test]
    async fn the_stream_counts_what_it_writes_and_why_it_ended() {
        use crate::metrics::{GatewayMetrics, StreamType, Transport, testing::TestMeter};
        let t = TestMeter::new();
        let metrics = Arc::new(GatewayMetrics::new(&t.meter(), 4));
        let log = EventLog::new(1, 16);
        log.push(&json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {}}));
        log.push(&json!({"jsonrpc": "2.0", "id": 1, "result": {}}));
        log.finish();
        let opts = SseOptions { prime: true, ..quiet_options() };
        let recorder = metrics.open_stream(Transport::Mcp, StreamType::Sse, std::time::Instant::now());
        let body = super::body(Attachment::new(log.claim(), Box::new(|| {})), 0, opts, recorder);
        let bytes = body.collect().await.unwrap().to_bytes();
        let kind = |k: &str| {
            let labels = ["transport=mcp".to_string(), "stream.type=sse".into(), format!("message.type={k}")];
            t.value("streaming.messages", &labels.iter().map(String::as_str).collect::<Vec<_>>())
        };
        assert_eq!((kind("priming"), kind("progress"), kind("result")), (Some(1.0), Some(1.0), Some(1.0)));
        let base = ["transport=mcp", "stream.type=sse"];
        assert_eq!(t.value("streaming.bytes_transferred", &base), Some(bytes.len() as f64));
        assert_eq!(t.value("streaming.active_connections", &base), Some(0.0));
        let done = ["transport=mcp", "stream.type=sse", "close.reason=completed"];
        assert_eq!(t.value("streaming.connection.duration", &done), Some(1.0));
    }

    #[tokio::test]
    async fn a_log_finished_for_the_drain_closes_its_stream_as_shutdown() {
        use crate::metrics::{GatewayMetrics, StreamType, Transport, testing::TestMeter};
        let t = TestMeter::new();
        let metrics = Arc::new(GatewayMetrics::new(&t.meter(), 4));
        let log = EventLog::new(0, 16);
        log.push(&json!({"jsonrpc": "2.0", "method": "notifications/resources/list_changed"}));
        log.finish_for_drain();
        let recorder = metrics.open_stream(Transport::Mcp, StreamType::Sse, std::time::Instant::now());
        let body = super::body(Attachment::new(log.claim(), Box::new(|| {})), 0, quiet_options(), recorder);
        let text = String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap();
        assert!(text.contains("list_changed"), "what was queued is sent first: {text}");
        let drained = ["transport=mcp", "stream.type=sse", "close.reason=shutdown"];
        assert_eq!(t.value("streaming.connection.duration", &drained), Some(1.0));
    }
}
