//! Bearer tokens and the principals they name. Shared by the gRPC layer and, later,
//! the HTTP gateway: both ask `Tokens::authenticate` and act on the answer.
use std::{fmt, path::Path};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Who is calling. With no tokens configured every caller is `anonymous`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal(String);

impl Principal {
    pub fn anonymous() -> Self {
        Principal("anonymous".into())
    }

    #[cfg(test)]
    pub fn named(name: &str) -> Self {
        Principal(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

struct Entry {
    digest: [u8; 32],
    principal: Principal,
}

/// The configured tokens, kept only as SHA-256 digests so that comparing equal
/// length digests in constant time reveals nothing about any token's length or prefix.
#[derive(Default)]
pub struct Tokens(Vec<Entry>);

#[derive(Debug, thiserror::Error)]
pub enum TokenConfigError {
    #[error("reading token file {path}: {source}")]
    File { path: String, source: std::io::Error },
    #[error("empty token in {origin}")]
    Empty { origin: String },
}

impl Tokens {
    /// `specs` are `TOKEN` or `NAME=TOKEN`; a file holds one spec per line, `#` comments allowed.
    pub fn from_config(specs: &[String], file: Option<&Path>) -> Result<Self, TokenConfigError> {
        let mut tokens = Tokens::default();
        for spec in specs {
            tokens.add(spec, "--auth-token")?;
        }
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|source| TokenConfigError::File { path: path.display().to_string(), source })?;
            for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
                tokens.add(line, &path.display().to_string())?;
            }
        }
        Ok(tokens)
    }

    fn add(&mut self, spec: &str, origin: &str) -> Result<(), TokenConfigError> {
        let spec = spec.trim();
        let (name, token) = match spec.split_once('=') {
            Some((name, token)) if !name.is_empty() => (Some(name.to_string()), token),
            _ => (None, spec),
        };
        if token.is_empty() {
            return Err(TokenConfigError::Empty { origin: origin.to_string() });
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Unnamed tokens get a name derived from the digest, never from the token itself.
        let name = name.unwrap_or_else(|| format!("token-{}", hex8(&digest)));
        self.0.push(Entry { digest, principal: Principal(name) });
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many principals the tokens name (several tokens may name one).
    pub fn principal_count(&self) -> usize {
        self.0.iter().map(|e| &e.principal).collect::<std::collections::HashSet<_>>().len()
    }

    /// Checks an `Authorization` header value. `None` means unauthenticated.
    pub fn authenticate(&self, header: Option<&str>) -> Option<Principal> {
        if self.0.is_empty() {
            return Some(Principal::anonymous());
        }
        // RFC 9110 §11.1: the scheme name is case-insensitive (`BEARER`, `bearer`, `Bearer`).
        let (scheme, token) = header?.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let token = token.trim();
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Compare against every entry without an early exit, so timing does not
        // reveal which (or whether an earlier) entry matched.
        let mut found = None;
        for entry in &self.0 {
            if bool::from(entry.digest.ct_eq(&digest)) {
                found = Some(entry.principal.clone());
            }
        }
        found
    }
}

fn hex8(digest: &[u8; 32]) -> String {
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_and_unnamed_tokens() {
        let t = Tokens::from_config(&["alice=s3cret-alice".into(), "plain-token".into()], None).unwrap();
        assert_eq!(t.authenticate(Some("Bearer s3cret-alice")).unwrap().as_str(), "alice");
        let p = t.authenticate(Some("Bearer plain-token")).unwrap();
        assert!(p.as_str().starts_with("token-") && !p.as_str().contains("plain"));
        assert!(t.authenticate(Some("Bearer nope")).is_none());
        assert!(t.authenticate(Some("s3cret-alice")).is_none(), "scheme is required");
        assert!(t.authenticate(Some("Basic s3cret-alice")).is_none(), "another scheme is no bearer token");
        assert!(t.authenticate(Some("Bearers3cret-alice")).is_none());
        assert!(t.authenticate(None).is_none());
        assert_eq!(t.principal_count(), 2);
        let shared = Tokens::from_config(&["a=1".into(), "a=2".into(), "b=3".into()], None).unwrap();
        assert_eq!(shared.principal_count(), 2, "two tokens of one principal are one principal");
    }

    #[test]
    fn the_scheme_name_is_case_insensitive() {
        let t = Tokens::from_config(&["alice=s3cret-alice".into()], None).unwrap();
        for header in ["Bearer s3cret-alice", "bearer s3cret-alice", "BEARER s3cret-alice", "BeArEr s3cret-alice"] {
            assert_eq!(t.authenticate(Some(header)).map(|p| p.0), Some("alice".to_string()), "{header}");
        }
    }

    #[test]
    fn no_tokens_means_anonymous() {
        assert_eq!(Tokens::default().authenticate(None), Some(Principal::anonymous()));
    }

    #[test]
    fn token_file_with_comments() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "# ops\nbob=abc123\n\n").unwrap();
        let t = Tokens::from_config(&[], Some(&path)).unwrap();
        assert_eq!(t.authenticate(Some("Bearer abc123")).unwrap().as_str(), "bob");
        assert!(Tokens::from_config(&["name=".into()], None).is_err());
    }
}
