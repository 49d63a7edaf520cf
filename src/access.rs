//! The gateway's admission policy, answered by the same tokens and token
//! buckets as the gRPC layers, so both faces admit exactly the same callers.
use std::sync::Arc;

use task_mcp_gateway::{Access, Admission};

use crate::{
    auth::{Denied, Need, Tokens},
    rate_limit::{AuthFailureThrottle, RateLimiter},
};

pub struct ServiceAccess {
    pub tokens: Arc<Tokens>,
    pub limiter: Arc<RateLimiter>,
    /// Shared with the gRPC face, so an address has one budget of failures, not one per port.
    pub throttle: Arc<AuthFailureThrottle>,
}

impl Access for ServiceAccess {
    fn admit(&self, authorization: Option<&str>) -> Admission {
        let principal = match self.tokens.check(authorization) {
            Ok(principal) => principal,
            Err(Denied::Invalid) => return Admission::Unauthenticated,
            Err(Denied::InsufficientScope) => return Admission::InsufficientScope,
        };
        // A second look only when some call needs more scopes than this one (a cached token:
        // a hash and a map lookup).
        let can_write = !self.tokens.oauth().is_some_and(crate::oauth::Verifier::has_write_scopes)
            || self.tokens.check_for(authorization, Need::Write).is_ok();
        match self.limiter.check(&principal) {
            Ok(()) => Admission::Allowed { principal: principal.as_str().to_string(), can_write },
            Err(retry_after) => Admission::RateLimited { retry_after },
        }
    }

    fn auth_enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    fn auth_throttled(&self, client: std::net::IpAddr) -> Option<std::time::Duration> {
        self.throttle.check(client).err()
    }

    fn auth_failed(&self, client: std::net::IpAddr) {
        self.throttle.failed(client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_by_token_then_rate() {
        let access = ServiceAccess {
            tokens: Arc::new(Tokens::from_config(&["ops=tok".into()], None).unwrap()),
            limiter: Arc::new(RateLimiter::new(1, 1)),
            throttle: Arc::new(AuthFailureThrottle::new(1)),
        };
        assert_eq!(access.admit(None), Admission::Unauthenticated);
        assert_eq!(access.admit(Some("Bearer tok")), Admission::Allowed { principal: "ops".into(), can_write: true });
        assert!(matches!(access.admit(Some("Bearer tok")), Admission::RateLimited { .. }));
        assert!(access.auth_enabled());
        let client = "192.0.2.1".parse().unwrap();
        assert_eq!(access.auth_throttled(client), None);
        access.auth_failed(client);
        assert!(access.auth_throttled(client).is_some(), "the one failure a minute is used");
    }
}
