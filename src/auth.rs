//! Bearer tokens and the principals they name. Shared by the gRPC layer and the HTTP
//! gateway: both ask `Tokens::check` and act on the answer. A token is one configured here
//! (`--auth-token`, `--auth-token-file`) or, with `--oauth-issuer`, an access token that
//! authorization server issued for this server ([`crate::oauth`]).
use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::Duration,
};

use tokio_util::sync::CancellationToken;

use sha2::{Digest, Sha256};

use crate::oauth::Verifier;
pub use crate::oauth::{Denied, Need};
use subtle::ConstantTimeEq;

/// Who is calling. With no tokens configured every caller is `anonymous`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal(String);

impl Principal {
    pub fn anonymous() -> Self {
        Principal("anonymous".into())
    }

    /// The principal an OAuth access token's `sub` names.
    pub fn from_subject(subject: &str) -> Self {
        Principal(subject.into())
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
///
/// The `--auth-token-file` part can be reloaded ([`Tokens::reload`]), so tokens rotate without
/// a restart, which would end every MCP session. Whether authentication is on is decided at
/// start and no reload changes it.
#[derive(Default)]
pub struct Tokens {
    enabled: bool,
    entries: RwLock<Vec<Entry>>,
    /// `--auth-token` values: kept to be merged with every reload of the file.
    specs: Vec<String>,
    file: Option<PathBuf>,
    /// The file's content as last loaded, so that a periodic check reloads only on a change.
    loaded: Mutex<Option<Vec<u8>>>,
    /// Access tokens of an authorization server, besides the configured ones.
    oauth: Option<Arc<Verifier>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenConfigError {
    #[error("reading token file {path}: {source}")]
    File { path: String, source: std::io::Error },
    #[error("empty token in {origin}")]
    Empty { origin: String },
    /// Taken for a mistake (a file caught half-written, a secret not mounted): a reload never
    /// takes every token of the file away.
    #[error("{path} names no token; the tokens in force stay")]
    WouldDisable { path: String },
    #[error("authentication was off at start: restart with tokens to turn it on")]
    WasOff,
}

/// What a reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reloaded {
    pub tokens: usize,
    pub principals: usize,
}

impl Tokens {
    /// `specs` are `TOKEN` or `NAME=TOKEN`; a file holds one spec per line, `#` comments allowed.
    pub fn from_config(specs: &[String], file: Option<&Path>) -> Result<Self, TokenConfigError> {
        let text = file.map(read_file).transpose()?;
        let entries = parse(specs, file.zip(text.as_deref()))?;
        Ok(Tokens {
            enabled: !entries.is_empty(),
            entries: RwLock::new(entries),
            specs: specs.to_vec(),
            file: file.map(Path::to_path_buf),
            loaded: Mutex::new(text),
            oauth: None,
        })
    }

    /// Accepts the access tokens `verifier` accepts too; authentication is then on even with
    /// no configured token.
    pub fn with_oauth(mut self, verifier: Arc<Verifier>) -> Self {
        self.enabled = true;
        self.oauth = Some(verifier);
        self
    }

    /// The OAuth verifier, when `--oauth-issuer` is set.
    pub fn oauth(&self) -> Option<&Verifier> {
        self.oauth.as_deref()
    }

    /// The file `reload` reads, if any.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Reads `--auth-token-file` again and, when it parses and names a token, serves its
    /// tokens (with the `--auth-token` ones) from the next request on. On any error the
    /// tokens in force stay. `None`: `only_if_changed` and the file is as last loaded, or there
    /// is no file.
    pub fn reload(&self, only_if_changed: bool) -> Result<Option<Reloaded>, TokenConfigError> {
        let Some(path) = &self.file else { return Ok(None) };
        let text = read_file(path)?;
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        if only_if_changed && loaded.as_deref() == Some(text.as_slice()) {
            return Ok(None);
        }
        if !self.enabled {
            return Err(TokenConfigError::WasOff);
        }
        let entries = parse(&self.specs, Some((path.as_path(), text.as_slice())))?;
        if entries.len() == self.specs.len() {
            return Err(TokenConfigError::WouldDisable { path: path.display().to_string() });
        }
        let reloaded = Reloaded { tokens: entries.len(), principals: principal_count(&entries) };
        *self.entries.write().unwrap_or_else(PoisonError::into_inner) = entries;
        *loaded = Some(text);
        Ok(Some(reloaded))
    }

    /// Whether no token is configured (every caller is `anonymous`); fixed at start.
    pub fn is_empty(&self) -> bool {
        !self.enabled
    }

    /// How many principals the tokens name (several tokens may name one).
    pub fn principal_count(&self) -> usize {
        principal_count(&self.entries.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Checks an `Authorization` header value. `None` means not admitted.
    pub fn authenticate(&self, header: Option<&str>) -> Option<Principal> {
        self.check(header).ok()
    }

    /// Checks an `Authorization` header value for a call that only reads: the caller's
    /// principal, or why not.
    pub fn check(&self, header: Option<&str>) -> Result<Principal, Denied> {
        self.check_for(header, Need::Read)
    }

    /// [`Tokens::check`] for a call that needs `need`. A configured token may do everything.
    pub fn check_for(&self, header: Option<&str>, need: Need) -> Result<Principal, Denied> {
        if !self.enabled {
            return Ok(Principal::anonymous());
        }
        // RFC 9110 §11.1: the scheme name is case-insensitive (`BEARER`, `bearer`, `Bearer`).
        let (scheme, token) = header.and_then(|h| h.split_once(' ')).ok_or(Denied::Invalid)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(Denied::Invalid);
        }
        let token = token.trim();
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Compare against every entry without an early exit, so timing does not
        // reveal which (or whether an earlier) entry matched.
        let mut found = None;
        for entry in self.entries.read().unwrap_or_else(PoisonError::into_inner).iter() {
            if bool::from(entry.digest.ct_eq(&digest)) {
                found = Some(entry.principal.clone());
            }
        }
        match (found, &self.oauth) {
            (Some(principal), _) => Ok(principal),
            (None, Some(oauth)) => oauth.verify(token, need),
            (None, None) => Err(Denied::Invalid),
        }
    }
}

/// Reloads a token file on SIGHUP and, every `every` (not at all for zero), when its content
/// changed. Made when the server is built, so that SIGHUP reloads from then on instead of
/// stopping a server that is still starting; [`TokenReloader::run`] then serves the triggers.
pub struct TokenReloader {
    tokens: Arc<Tokens>,
    every: Duration,
    hangup: Option<tokio::signal::unix::Signal>,
}

impl TokenReloader {
    /// `None` without a token file: nothing to reload, and SIGHUP keeps its default action.
    pub fn listen(tokens: Arc<Tokens>, every: Duration) -> Option<TokenReloader> {
        tokens.file()?;
        let hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(signal) => Some(signal),
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGHUP; the token file is reloaded only when it changes");
                None
            }
        };
        Some(TokenReloader { tokens, every, hangup })
    }

    /// Reloads on each trigger until `stop`. Each outcome is logged; a failure that repeats,
    /// once.
    pub async fn run(self, stop: CancellationToken) {
        reload_on_change(self.tokens, self.every, self.hangup, stop).await;
    }
}

async fn reload_on_change(
    tokens: Arc<Tokens>,
    every: Duration,
    mut hangup: Option<tokio::signal::unix::Signal>,
    stop: CancellationToken,
) {
    let Some(path) = tokens.file().map(|p| p.display().to_string()) else { return };
    let mut tick = (!every.is_zero()).then(|| {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick
    });
    let mut last_failure: Option<String> = None;
    loop {
        let trigger = tokio::select! {
            () = stop.cancelled() => return,
            Some(()) = async { hangup.as_mut()?.recv().await } => "SIGHUP",
            Some(_) = async { Some(tick.as_mut()?.tick().await) } => "changed",
            else => return,
        };
        match tokens.reload(trigger == "changed") {
            Ok(None) => {}
            Ok(Some(Reloaded { tokens, principals })) => {
                last_failure = None;
                tracing::info!(path, trigger, tokens, principals, "auth tokens reloaded");
            }
            Err(error) => {
                let error = error.to_string();
                if trigger == "SIGHUP" || last_failure.as_ref() != Some(&error) {
                    tracing::error!(path, trigger, %error, "auth token reload failed; the tokens in force stay");
                }
                last_failure = Some(error);
            }
        }
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, TokenConfigError> {
    std::fs::read(path).map_err(|source| TokenConfigError::File { path: path.display().to_string(), source })
}

/// The entries of `specs` and of a file's `(path, content)`.
fn parse(specs: &[String], file: Option<(&Path, &[u8])>) -> Result<Vec<Entry>, TokenConfigError> {
    let mut entries = Vec::new();
    for spec in specs {
        entries.push(entry(spec, "--auth-token")?);
    }
    if let Some((path, bytes)) = file {
        let text = std::str::from_utf8(bytes).map_err(|e| TokenConfigError::File {
            path: path.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            entries.push(entry(line, &path.display().to_string())?);
        }
    }
    Ok(entries)
}

fn entry(spec: &str, origin: &str) -> Result<Entry, TokenConfigError> {
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
    Ok(Entry { digest, principal: Principal(name) })
}

fn principal_count(entries: &[Entry]) -> usize {
    entries.iter().map(|e| &e.principal).collect::<std::collections::HashSet<_>>().len()
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

    #[test]
    fn the_file_reloads_merged_with_the_flags_and_a_bad_file_keeps_the_tokens_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let who = |t: &Tokens, token: &str| t.authenticate(Some(&format!("Bearer {token}"))).map(|p| p.0);
        std::fs::write(&path, "alice=old\n").unwrap();
        let t = Tokens::from_config(&["ops=flag-token".into()], Some(&path)).unwrap();
        assert_eq!(t.reload(true).unwrap(), None, "unchanged: nothing to do");

        std::fs::write(&path, "alice=new\nbob=b0b\n").unwrap();
        assert_eq!(t.reload(true).unwrap(), Some(Reloaded { tokens: 3, principals: 3 }));
        assert_eq!(who(&t, "old"), None, "the rotated token is refused");
        assert_eq!(who(&t, "new").as_deref(), Some("alice"));
        assert_eq!(who(&t, "flag-token").as_deref(), Some("ops"), "the flags' tokens stay");
        assert_eq!(t.principal_count(), 3);
        assert_eq!(t.reload(true).unwrap(), None);
        assert!(t.reload(false).unwrap().is_some(), "SIGHUP reloads even an unchanged file");

        let cases: [(&[u8], &str); 3] =
            [(b"# nothing\n", "no token"), (b"carol=\n", "an empty token"), (b"alice=\xff\n", "not UTF-8")];
        for (content, what) in cases {
            std::fs::write(&path, content).unwrap();
            assert!(t.reload(true).is_err(), "{what} must be refused");
            assert_eq!(who(&t, "new").as_deref(), Some("alice"), "{what}: the tokens in force stay");
        }
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(t.reload(false), Err(TokenConfigError::File { .. })));
        assert_eq!(who(&t, "b0b").as_deref(), Some("bob"));
    }

    #[test]
    fn a_reload_never_turns_authentication_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "# none yet\n").unwrap();
        let t = Tokens::from_config(&[], Some(&path)).unwrap();
        assert!(t.is_empty());
        std::fs::write(&path, "alice=a\n").unwrap();
        assert!(matches!(t.reload(true), Err(TokenConfigError::WasOff)));
        assert_eq!(t.authenticate(None), Some(Principal::anonymous()));
    }

    #[test]
    fn without_a_file_there_is_nothing_to_reload() {
        let t = Tokens::from_config(&["a=1".into()], None).unwrap();
        assert_eq!(t.reload(false).unwrap(), None);
    }
}
