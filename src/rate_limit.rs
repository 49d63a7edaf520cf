//! Per-principal token buckets (GCRA via governor). Shared by gRPC and HTTP.
use std::{num::NonZeroU32, time::Duration};

use governor::{DefaultKeyedRateLimiter, Quota, clock::Clock, clock::DefaultClock};

use crate::auth::Principal;

pub struct RateLimiter {
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    clock: DefaultClock,
}

impl RateLimiter {
    /// `per_second == 0` disables limiting.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(rate);
            governor::RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        RateLimiter { limiter, clock: DefaultClock::default() }
    }

    /// `Err(wait)` when the principal must wait before its next call.
    pub fn check(&self, principal: &Principal) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        // Keys are principals from the configured token set (or `anonymous`), so
        // the key space is bounded by configuration.
        limiter
            .check_key(&principal.as_str().to_string())
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_wait() {
        let rl = RateLimiter::new(1, 2);
        let p = Principal::anonymous();
        assert!(rl.check(&p).is_ok());
        assert!(rl.check(&p).is_ok());
        let wait = rl.check(&p).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
    }

    #[test]
    fn zero_disables() {
        let rl = RateLimiter::new(0, 0);
        for _ in 0..1000 {
            assert!(rl.check(&Principal::anonymous()).is_ok());
        }
    }
}
