//! The gateway's admission policy, answered by the same tokens and token
//! buckets as the gRPC layers, so both faces admit exactly the same callers.
use std::sync::Arc;

use task_mcp_gateway::{Access, Admission};

use crate::{auth::Tokens, rate_limit::RateLimiter};

pub struct ServiceAccess {
    pub tokens: Arc<Tokens>,
    pub limiter: Arc<RateLimiter>,
}

impl Access for ServiceAccess {
    fn admit(&self, authorization: Option<&str>) -> Admission {
        let Some(principal) = self.tokens.authenticate(authorization) else {
            return Admission::Unauthenticated;
        };
        match self.limiter.check(&principal) {
            Ok(()) => Admission::Allowed { principal: principal.as_str().to_string() },
            Err(retry_after) => Admission::RateLimited { retry_after },
        }
    }

    fn auth_enabled(&self) -> bool {
        !self.tokens.is_empty()
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
        };
        assert_eq!(access.admit(None), Admission::Unauthenticated);
        assert_eq!(access.admit(Some("Bearer tok")), Admission::Allowed { principal: "ops".into() });
        assert!(matches!(access.admit(Some("Bearer tok")), Admission::RateLimited { .. }));
        assert!(access.auth_enabled());
    }
}
