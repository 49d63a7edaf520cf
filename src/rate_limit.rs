//! Per-principal token buckets (GCRA via governor), and the per-address throttle of failed
//! authentications. Shared by gRPC and HTTP.
use std::{
    collections::HashMap,
    net::IpAddr,
    num::NonZeroU32,
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

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

/// Addresses tracked at most by [`AuthFailureThrottle`]: about 3 MiB. Beyond, addresses not
/// yet tracked are not throttled (open rather than shut: the cap keeps memory bounded against a
/// sender of many addresses, it must not lock out everyone).
const MAX_TRACKED_ADDRESSES: usize = 65_536;

/// How many failed authentications a client address may make: `per_minute` at once, then one
/// every `60 s / per_minute`. Only failures count: a valid token never uses up the budget, and
/// a caller that sends no credentials at all (how MCP clients discover that a token is needed)
/// is not guessing. Over the budget, every request from the address is refused before its token
/// is looked at, so guessing stops, not only its failures.
///
/// Addresses, not principals (a failure has none). An IPv6 client is its /64, the block one host
/// is usually given; an IPv4-mapped address is its IPv4 address. Behind a proxy every client
/// shares the proxy's address, and one client's failures would throttle all of them: the faces
/// pass the client the proxy names instead when it is trusted (`--trusted-proxy`,
/// `task_mcp_gateway::TrustedProxies`). Behind a proxy that names nobody, raise the budget or
/// set it to 0 (the proxy throttles instead).
pub struct AuthFailureThrottle {
    /// Between two failures; `None`: throttling is off.
    interval: Option<Duration>,
    /// How far ahead of now an address's next free failure may be before it is refused.
    tolerance: Duration,
    /// Per address, when its budget is whole again (GCRA's theoretical arrival time).
    tracked: Mutex<HashMap<IpAddr, Instant>>,
    /// `tracked.len()`, readable without the lock: while no address has failed (the normal
    /// state), a request pays one atomic load.
    count: AtomicUsize,
    /// When the table was last swept of addresses whose budget is whole again.
    swept: Mutex<Instant>,
}

impl AuthFailureThrottle {
    /// `per_minute == 0` disables throttling.
    pub fn new(per_minute: u32) -> Self {
        let interval = (per_minute > 0).then(|| Duration::from_secs(60) / per_minute);
        AuthFailureThrottle {
            interval,
            tolerance: interval.map_or(Duration::ZERO, |i| i * per_minute.saturating_sub(1)),
            tracked: Mutex::new(HashMap::new()),
            count: AtomicUsize::new(0),
            swept: Mutex::new(Instant::now()),
        }
    }

    /// `Err(wait)` while the address has used up its budget.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        if self.interval.is_none() || self.count.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let tracked = self.tracked.lock().unwrap_or_else(|p| p.into_inner());
        match tracked.get(&key(client)) {
            Some(&whole) if whole > now + self.tolerance => Err(whole - now - self.tolerance),
            _ => Ok(()),
        }
    }

    /// Records one failed authentication from the address.
    pub fn failed(&self, client: IpAddr) {
        let Some(interval) = self.interval else { return };
        let now = Instant::now();
        let mut tracked = self.tracked.lock().unwrap_or_else(|p| p.into_inner());
        if tracked.len() >= MAX_TRACKED_ADDRESSES {
            self.sweep(&mut tracked, now);
        }
        let key = key(client);
        if tracked.len() >= MAX_TRACKED_ADDRESSES && !tracked.contains_key(&key) {
            return;
        }
        let whole = tracked.entry(key).or_insert(now);
        *whole = (*whole).max(now) + interval;
        self.count.store(tracked.len(), Ordering::Relaxed);
    }

    /// Forgets addresses whose budget is whole again; at most once a second, so a table full
    /// of live entries is not walked on every failure.
    fn sweep(&self, tracked: &mut HashMap<IpAddr, Instant>, now: Instant) {
        let mut swept = self.swept.lock().unwrap_or_else(|p| p.into_inner());
        if now.duration_since(*swept) < Duration::from_secs(1) {
            return;
        }
        *swept = now;
        tracked.retain(|_, whole| *whole > now);
        self.count.store(tracked.len(), Ordering::Relaxed);
    }
}

/// The unit an address is throttled by (see [`AuthFailureThrottle`]).
fn key(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let segments = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(segments[0], segments[1], segments[2], segments[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_over_the_budget_throttle_the_address_only() {
        let throttle = AuthFailureThrottle::new(3);
        let one: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert!(throttle.check(one).is_ok());
            throttle.failed(one);
        }
        let wait = throttle.check(one).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(20), "{wait:?}");
        assert!(throttle.check(other).is_ok(), "another address is not affected");
    }

    #[test]
    fn an_ipv6_host_is_its_slash_64_and_a_mapped_ipv4_its_ipv4() {
        let throttle = AuthFailureThrottle::new(1);
        throttle.failed("2001:db8:1:2::1".parse().unwrap());
        assert!(throttle.check("2001:db8:1:2:ffff::9".parse().unwrap()).is_err(), "same /64");
        assert!(throttle.check("2001:db8:1:3::1".parse().unwrap()).is_ok(), "another /64");
        throttle.failed("::ffff:192.0.2.7".parse().unwrap());
        assert!(throttle.check("192.0.2.7".parse().unwrap()).is_err());
    }

    #[test]
    fn zero_disables_throttling() {
        let throttle = AuthFailureThrottle::new(0);
        let one: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..1000 {
            throttle.failed(one);
        }
        assert!(throttle.check(one).is_ok());
    }

    #[test]
    fn the_table_is_bounded_and_fails_open() {
        let throttle = AuthFailureThrottle::new(1);
        for i in 0..MAX_TRACKED_ADDRESSES as u32 {
            throttle.failed(IpAddr::V4(std::net::Ipv4Addr::from(i)));
        }
        let late = IpAddr::V4(std::net::Ipv4Addr::from(u32::MAX));
        throttle.failed(late);
        assert_eq!(throttle.tracked.lock().unwrap().len(), MAX_TRACKED_ADDRESSES);
        assert!(throttle.check(late).is_ok(), "not tracked, so not throttled");
    }

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
