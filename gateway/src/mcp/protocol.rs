//! Protocol versions and what each era changes.

/// Versions served with sessions (`initialize`), newest first.
pub const SESSION_VERSIONS: [&str; 4] = ["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];
/// The stateless era: no sessions, every request self-describing.
pub const STATELESS_VERSION: &str = "2026-07-28";
pub const LATEST_SESSION_VERSION: &str = SESSION_VERSIONS[0];
/// `_meta` key carrying the protocol version in the stateless era.
pub const META_VERSION_KEY: &str = "io.modelcontextprotocol/protocolVersion";

pub fn is_supported(version: &str) -> bool {
    version == STATELESS_VERSION || SESSION_VERSIONS.contains(&version)
}

/// The version answered to `initialize`: the client's if we speak it, else our latest.
pub fn negotiate(requested: &str) -> &'static str {
    SESSION_VERSIONS.iter().find(|v| **v == requested).copied().unwrap_or(LATEST_SESSION_VERSION)
}

pub fn all_versions() -> Vec<&'static str> {
    let mut v = vec![STATELESS_VERSION];
    v.extend(SESSION_VERSIONS);
    v
}

/// Batches were allowed only in 2025-03-26.
pub fn allows_batch(version: &str) -> bool {
    version == "2025-03-26"
}

/// SSE priming events and `retry:` arrived with 2025-11-25 (SEP-1699).
pub fn primes_sse(version: &str) -> bool {
    version >= "2025-11-25"
}

/// `structuredContent` and `outputSchema` arrived with 2025-06-18.
pub fn has_structured_content(version: &str) -> bool {
    version >= "2025-06-18"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_echoes_known_versions_and_falls_back_to_latest() {
        assert_eq!(negotiate("2025-06-18"), "2025-06-18");
        assert_eq!(negotiate("2024-11-05"), "2024-11-05");
        assert_eq!(negotiate("1999-01-01"), LATEST_SESSION_VERSION);
        assert!(is_supported("2026-07-28"));
        assert!(!is_supported("2026-01-01"));
        assert!(primes_sse("2026-07-28") && !primes_sse("2025-06-18"));
    }
}
