//! A warning that repeats at most once a period: a Collector that is down fails
//! every export, and one line a minute says so without flooding the log.
use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

/// How often an export failure may be logged.
pub const WARN_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct WarnEvery {
    last: Mutex<Option<Instant>>,
}

impl WarnEvery {
    /// Whether a failure at `now` deserves a warning (and if so, remembers it).
    pub fn allow(&self, now: Instant) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|at| now.duration_since(at) < WARN_EVERY) {
            return false;
        }
        *last = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_are_rate_limited() {
        let w = WarnEvery::default();
        let t0 = Instant::now();
        assert!(w.allow(t0));
        assert!(!w.allow(t0 + Duration::from_secs(30)));
        assert!(w.allow(t0 + Duration::from_secs(61)));
    }
}
