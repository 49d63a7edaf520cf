//! The workspace's live feed of change events, with the last few seconds of it kept so that a
//! listener can start a moment in the past.
//!
//! Why the past: a client is told it is listening (an MCP GET stream's first byte, a
//! `subscriptions/listen` acknowledgement) before the gateway's call to `WatchChanges` reaches
//! the service. An event in between would otherwise reach no one. The gateway asks for the
//! events since it told the client, and [`Feed::subscribe_since`] hands them over together with
//! a receiver that starts exactly after them: nothing is missed and nothing comes twice.

use std::{
    collections::VecDeque,
    sync::Mutex,
    time::{Duration, Instant},
};

use tokio::sync::broadcast;

use super::Event;

/// The longest look back a listener may ask for.
pub const MAX_REPLAY: Duration = Duration::from_secs(10);
/// Events kept for looking back, however recent: a burst (an archive of many changes by hand)
/// replays its last ones only, and `list_changed` tells the client to re-read anyway.
const MAX_KEPT: usize = 256;
/// Pending events per live receiver before a slow one starts missing them.
const CAPACITY: usize = 1024;

pub struct Feed {
    live: broadcast::Sender<Event>,
    /// Held while an event is both kept and sent, so that a new listener's look back and its
    /// receiver meet without a gap or an overlap.
    recent: Mutex<VecDeque<(Instant, Event)>>,
}

impl Default for Feed {
    fn default() -> Self {
        Feed { live: broadcast::channel(CAPACITY).0, recent: Mutex::new(VecDeque::new()) }
    }
}

impl Feed {
    pub fn publish(&self, event: Event) {
        let now = Instant::now();
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        while recent.front().is_some_and(|(at, _)| now.duration_since(*at) > MAX_REPLAY) || recent.len() >= MAX_KEPT {
            recent.pop_front();
        }
        recent.push_back((now, event.clone()));
        // No receiver is fine: events are a convenience, not a log.
        let _ = self.live.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.live.subscribe()
    }

    /// The events published within `window` before now (at most [`MAX_REPLAY`]), oldest first,
    /// and a receiver of every later one.
    pub fn subscribe_since(&self, window: Duration) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let receiver = self.live.subscribe();
        let now = Instant::now();
        let window = window.min(MAX_REPLAY);
        let past = recent.iter().filter(|(at, _)| now.duration_since(*at) <= window).map(|(_, e)| e.clone()).collect();
        (past, receiver)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace::EventKind;

    fn event(slug: &str) -> Event {
        Event {
            kind: EventKind::Updated,
            slug: slug.into(),
            at: time::OffsetDateTime::now_utc(),
            uris: vec![],
            external: false,
        }
    }

    fn slugs(events: &[Event]) -> Vec<&str> {
        events.iter().map(|e| e.slug.as_str()).collect()
    }

    #[test]
    fn a_look_back_gets_the_recent_events_and_the_receiver_only_later_ones() {
        let feed = Feed::default();
        feed.publish(event("before-a"));
        feed.publish(event("before-b"));
        let (past, mut live) = feed.subscribe_since(Duration::from_secs(5));
        feed.publish(event("after"));
        assert_eq!(slugs(&past), ["before-a", "before-b"]);
        assert_eq!(live.try_recv().map(|e| e.slug).ok().as_deref(), Some("after"));
        assert!(live.try_recv().is_err(), "nothing more, in particular no replayed event twice");
    }

    #[test]
    fn no_window_no_past_and_old_events_fall_out_of_the_window() {
        let feed = Feed::default();
        feed.publish(event("old"));
        std::thread::sleep(Duration::from_millis(500));
        feed.publish(event("new"));
        assert!(feed.subscribe_since(Duration::ZERO).0.is_empty());
        assert_eq!(slugs(&feed.subscribe_since(Duration::from_millis(250)).0), ["new"]);
    }

    #[test]
    fn only_the_last_events_of_a_burst_are_kept() {
        let feed = Feed::default();
        for i in 0..MAX_KEPT + 10 {
            feed.publish(event(&format!("c-{i}")));
        }
        let (past, _) = feed.subscribe_since(MAX_REPLAY);
        assert_eq!(past.len(), MAX_KEPT);
        assert_eq!(past[0].slug, "c-10");
    }
}
