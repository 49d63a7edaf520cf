//! OAuth 2.1 resource server, as the MCP authorization spec (2025-06-18 on) asks of an HTTP
//! server: access tokens are JWTs (RFC 9068) that one authorization server signed for this
//! server. A token is accepted when its signature verifies against a key the issuer publishes,
//! its `iss` is the issuer, its `aud` names `--oauth-resource` (RFC 8707: a token minted for
//! another server is refused, never passed through), it has not expired, and it holds every
//! `--oauth-scope`. Its `sub` becomes the principal. A call that changes the workspace (a tool
//! the proto does not mark `read_only`) needs every `--oauth-write-scope` as well, so an agent
//! can be given a token that reads and cannot write.
//!
//! The keys are fetched at start (a wrong issuer or an unreachable one stops the start, where
//! the operator sees it), then again every `--oauth-keys-refresh-seconds` and soon after a
//! token names a key this server has not seen, which is how an issuer's key rotation reaches
//! it. A failed refresh keeps the keys in force.
use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    jwk::{AlgorithmParameters, EllipticCurve, KeyAlgorithm, PublicKeyUse},
};
use reqwest::Url;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::auth::Principal;

/// How long a fetch of the issuer's metadata or keys may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest metadata or key document read (real ones are a few KiB).
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// Unknown key ids trigger a fetch at most this often, so tokens naming made-up keys cannot
/// turn this server into a load on the authorization server.
const MIN_REFETCH: Duration = Duration::from_secs(10);
/// Verified tokens remembered, so that a client's next call costs a hash, not a signature check.
const MAX_CACHED: usize = 10_000;

/// What `--oauth-*` configures.
#[derive(Debug, Clone)]
pub struct OAuthConfig {
    pub issuer: String,
    pub resource: String,
    pub scopes: Vec<String>,
    pub write_scopes: Vec<String>,
    pub jwks_uri: Option<String>,
    pub refresh: Duration,
    /// How long the start waits for an issuer that does not answer (connection refused,
    /// timeout, 5xx) before giving up.
    pub wait: Duration,
    /// Clock skew tolerated on `exp` and `nbf` (`--oauth-leeway-seconds`).
    pub leeway: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("{flag} {value}: {reason}")]
    Config { flag: &'static str, value: String, reason: String },
    #[error("discovering the authorization server {issuer}: {reason}")]
    Discovery { issuer: String, reason: String, transient: bool },
    #[error("fetching the signing keys at {url}: {reason}")]
    Keys { url: String, reason: String, transient: bool },
}

impl OAuthError {
    /// The issuer did not answer (refused, timed out, 5xx, 429): it may be starting too. Any
    /// other failure is a configuration to fix, and waiting would not help.
    fn is_transient(&self) -> bool {
        matches!(self, OAuthError::Discovery { transient: true, .. } | OAuthError::Keys { transient: true, .. })
    }
}

/// A failed GET: what went wrong, and whether trying again later may help.
struct FetchError {
    text: String,
    transient: bool,
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl FetchError {
    fn permanent(text: String) -> Self {
        FetchError { text, transient: false }
    }
}

/// What a call does with the workspace, which decides the scopes it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Read,
    Write,
}

/// Why a token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// Not a token this server accepts (signature, issuer, audience, expiry, unknown key).
    Invalid,
    /// A genuine token without every required scope: 403 `insufficient_scope`, not 401.
    InsufficientScope,
}

/// Checks access tokens against the issuer's keys.
pub struct Verifier {
    issuer: String,
    resource: String,
    scopes: Vec<String>,
    write_scopes: Vec<String>,
    /// Seconds of clock skew tolerated on `exp` and `nbf`.
    leeway: u64,
    keys: RwLock<KeySet>,
    /// What checking recent tokens found; emptied whenever the keys change, so a key the
    /// issuer withdraws stops being honoured with the next refresh.
    cache: Mutex<Cache>,
    /// Signalled when a token names a key id the key set lacks.
    unknown_key: Notify,
}

#[derive(Default)]
struct Cache {
    /// SHA-256 of a token → what checking it found.
    entries: HashMap<[u8; 32], Accepted>,
    /// Bumped with each change of keys: a check that began under older keys is not
    /// remembered (it may have passed on a key withdrawn meanwhile).
    generation: u64,
}

#[derive(Clone)]
struct Accepted {
    principal: Principal,
    expires: u64,
    /// Holds every `--oauth-scope`.
    reads: bool,
    /// ... and every `--oauth-write-scope`.
    writes: bool,
}

#[derive(Default)]
struct KeySet {
    keys: Vec<Key>,
    /// The document they came from, to tell a changed set from a re-fetched one.
    source: Vec<u8>,
}

struct Key {
    id: Option<String>,
    decoding: DecodingKey,
    algorithms: Vec<Algorithm>,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    scope: Option<String>,
    /// Some issuers (Okta, Entra ID) name the scopes `scp`, as a string or a list.
    #[serde(default)]
    scp: Option<ScopeClaim>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ScopeClaim {
    Text(String),
    List(Vec<String>),
}

impl Claims {
    fn scopes(&self) -> HashSet<&str> {
        let mut all: HashSet<&str> = self.scope.iter().flat_map(|s| s.split_ascii_whitespace()).collect();
        match &self.scp {
            Some(ScopeClaim::Text(text)) => all.extend(text.split_ascii_whitespace()),
            Some(ScopeClaim::List(list)) => all.extend(list.iter().map(String::as_str)),
            None => {}
        }
        all
    }
}

impl Verifier {
    /// A token's principal for a call that needs `need`, or why it is refused.
    pub fn verify(&self, token: &str, need: Need) -> Result<Principal, Denied> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = unix_now();
        let (hit, generation) = {
            let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            (cache.entries.get(&digest).cloned(), cache.generation)
        };
        let accepted = match hit {
            Some(hit) if hit.expires > now => hit,
            _ => {
                let accepted = self.check(token, now)?;
                self.remember(digest, accepted.clone(), now, generation);
                accepted
            }
        };
        let allowed = match need {
            Need::Read => accepted.reads,
            Need::Write => accepted.writes,
        };
        if allowed { Ok(accepted.principal) } else { Err(Denied::InsufficientScope) }
    }

    fn check(&self, token: &str, now: u64) -> Result<Accepted, Denied> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Denied::Invalid)?;
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        let key = match &header.kid {
            Some(kid) => keys.keys.iter().find(|k| k.id.as_deref() == Some(kid.as_str())),
            // Without a key id, only an issuer that publishes a single key is unambiguous.
            None if keys.keys.len() == 1 => keys.keys.first(),
            None => None,
        };
        let Some(key) = key else {
            tracing::debug!(kid = ?header.kid, "access token refused: no published key of that id");
            if header.kid.is_some() {
                self.unknown_key.notify_one();
            }
            return Err(Denied::Invalid);
        };
        // The algorithm is the key's, never the token's choice: a token cannot ask for `none`,
        // or for HMAC with the public key as the secret.
        if !key.algorithms.contains(&header.alg) {
            tracing::debug!(kid = ?header.kid, alg = ?header.alg, "access token refused: not its key's algorithm");
            return Err(Denied::Invalid);
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.resource]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = self.leeway;
        // RFC 7519 refuses a token "on or after" `exp`; jsonwebtoken alone still accepts it during
        // the second equal to `exp` + leeway. Asking for one second of remaining life closes that.
        validation.reject_tokens_expiring_in_less_than = 1;
        validation.validate_nbf = true;
        let claims = match jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation) {
            Ok(data) => data.claims,
            Err(error) => {
                tracing::debug!(%error, kid = ?header.kid, "access token refused");
                return Err(Denied::Invalid);
            }
        };
        let held = claims.scopes();
        let reads = self.scopes.iter().all(|s| held.contains(s.as_str()));
        let writes = reads && self.write_scopes.iter().all(|s| held.contains(s.as_str()));
        // Remembered until `exp` at most; past it, a new check applies the leeway.
        let expires = claims.exp.min(now + 3600);
        Ok(Accepted { principal: Principal::from_subject(&claims.sub), expires, reads, writes })
    }

    fn remember(&self, digest: [u8; 32], accepted: Accepted, now: u64, generation: u64) {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.generation != generation {
            return;
        }
        if cache.entries.len() >= MAX_CACHED {
            cache.entries.retain(|_, a| a.expires > now);
            if cache.entries.len() >= MAX_CACHED {
                cache.entries.clear();
            }
        }
        cache.entries.insert(digest, accepted);
    }

    /// Serves `keys` from the next token on; `false` when they are the ones in force.
    fn replace_keys(&self, keys: KeySet) -> bool {
        let mut current = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        if current.source == keys.source {
            return false;
        }
        *current = keys;
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.entries.clear();
        cache.generation += 1;
        true
    }

    fn key_count(&self) -> usize {
        self.keys.read().unwrap_or_else(PoisonError::into_inner).keys.len()
    }

    /// The scopes a call that needs `need` requires.
    pub fn required(&self, need: Need) -> Vec<String> {
        match need {
            Need::Read => self.scopes.clone(),
            Need::Write => self.scopes.iter().chain(&self.write_scopes).cloned().collect(),
        }
    }

    /// Whether some call needs more scopes than another.
    pub fn has_write_scopes(&self) -> bool {
        !self.write_scopes.is_empty()
    }
}

/// Fetches the issuer's keys: at start ([`start`]) and then on each trigger ([`KeyRefresher::run`]).
pub struct KeyRefresher {
    verifier: Arc<Verifier>,
    client: reqwest::Client,
    jwks_uri: Url,
    every: Duration,
}

/// Checks the configuration, discovers the issuer's key set and fetches it. An error here is
/// the operator's to fix before the server can take a token.
pub async fn start(config: &OAuthConfig) -> Result<(Arc<Verifier>, KeyRefresher), OAuthError> {
    let issuer = parse_url("--oauth-issuer", &config.issuer)?;
    parse_url("--oauth-resource", &config.resource)?;
    // Both travel in `WWW-Authenticate` quoted strings: RFC 6749 §3.3 scope characters only.
    for (flag, value) in [("--oauth-resource", &config.resource)]
        .into_iter()
        .chain(config.scopes.iter().map(|s| ("--oauth-scope", s)))
        .chain(config.write_scopes.iter().map(|s| ("--oauth-write-scope", s)))
    {
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\') {
            return Err(OAuthError::Config {
                flag,
                value: value.clone(),
                reason: "must be printable ASCII without quotes, backslashes or spaces".into(),
            });
        }
    }
    let explicit = config.jwks_uri.as_deref().map(|u| parse_url("--oauth-jwks-uri", u)).transpose()?;
    let client = reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        // Plain HTTP is allowed only for a loopback issuer (a local test server); otherwise no
        // redirect may downgrade a fetch to it.
        .https_only(issuer.scheme() == "https")
        .user_agent(concat!("task-mcp/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| OAuthError::Discovery {
            issuer: config.issuer.clone(),
            reason: e.to_string(),
            transient: false,
        })?;
    // An issuer that does not answer yet (it may be starting beside this server) is waited for,
    // with backoff, up to `config.wait`; a wrong one stops the start at once.
    let deadline = tokio::time::Instant::now() + config.wait;
    let mut delay = Duration::from_millis(500);
    let (jwks_uri, keys) = loop {
        let attempt = async {
            let jwks_uri = match &explicit {
                Some(uri) => uri.clone(),
                None => discover(&client, &config.issuer, &issuer).await?,
            };
            let keys = fetch_keys(&client, &jwks_uri).await?;
            Ok::<_, OAuthError>((jwks_uri, keys))
        };
        match attempt.await {
            Ok(found) => break found,
            Err(error) if error.is_transient() && tokio::time::Instant::now() + delay < deadline => {
                tracing::warn!(%error, retry_in = ?delay, "oauth: the authorization server does not answer yet; waiting for it");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(error) => return Err(error),
        }
    };
    let verifier = Arc::new(Verifier {
        issuer: config.issuer.clone(),
        resource: config.resource.clone(),
        scopes: config.scopes.clone(),
        write_scopes: config.write_scopes.clone(),
        leeway: config.leeway.as_secs(),
        keys: RwLock::new(KeySet::default()),
        cache: Mutex::new(Cache::default()),
        unknown_key: Notify::new(),
    });
    verifier.replace_keys(keys);
    tracing::info!(issuer = %config.issuer, jwks_uri = %jwks_uri, keys = verifier.key_count(), "oauth: signing keys loaded");
    let every = config.refresh.max(MIN_REFETCH);
    Ok((verifier.clone(), KeyRefresher { verifier, client, jwks_uri, every }))
}

impl KeyRefresher {
    /// Fetches the keys every `every`, and after a token named an unknown key (at most once
    /// per [`MIN_REFETCH`]), until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let url = self.jwks_uri.to_string();
        let mut last_failure: Option<String> = None;
        loop {
            let trigger = tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(self.every) => "periodic",
                () = self.verifier.unknown_key.notified() => "unknown key id",
            };
            match fetch_keys(&self.client, &self.jwks_uri).await {
                Ok(keys) => {
                    last_failure = None;
                    if self.verifier.replace_keys(keys) {
                        tracing::info!(
                            jwks_uri = url,
                            trigger,
                            keys = self.verifier.key_count(),
                            "oauth: signing keys changed"
                        );
                    }
                }
                Err(error) => {
                    let error = error.to_string();
                    if last_failure.as_ref() != Some(&error) {
                        tracing::warn!(jwks_uri = url, trigger, %error, "oauth: key refresh failed; the keys in force stay");
                    }
                    last_failure = Some(error);
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(MIN_REFETCH) => {}
            }
        }
    }
}

/// An absolute `https` URL, or `http` to a loopback host.
fn parse_url(flag: &'static str, value: &str) -> Result<Url, OAuthError> {
    let bad = |reason: &str| OAuthError::Config { flag, value: value.to_string(), reason: reason.to_string() };
    let url = Url::parse(value).map_err(|e| bad(&format!("not a URL: {e}")))?;
    if url.fragment().is_some() || url.query().is_some() {
        return Err(bad("must not have a query or fragment"));
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err(bad("must be https (plain http only to a loopback host, for testing)")),
        _ => Err(bad("must be an https URL")),
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => name == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// The `jwks_uri` of the issuer's metadata: RFC 8414 (`/.well-known/oauth-authorization-server`
/// inserted before the issuer's path), then OpenID Connect discovery (appended to it), the order
/// the MCP spec gives clients. The document must name the same issuer (RFC 8414 §3.3).
async fn discover(client: &reqwest::Client, issuer_text: &str, issuer: &Url) -> Result<Url, OAuthError> {
    let path = issuer.path().trim_end_matches('/');
    let mut oauth = issuer.clone();
    oauth.set_path(&format!("/.well-known/oauth-authorization-server{path}"));
    let mut oidc = issuer.clone();
    oidc.set_path(&format!("{path}/.well-known/openid-configuration"));
    let mut tried = Vec::new();
    let mut transient = false;
    for url in [oauth, oidc] {
        match fetch_json::<Metadata>(client, &url).await {
            Ok(metadata) => {
                if metadata.issuer != issuer_text {
                    return Err(OAuthError::Discovery {
                        issuer: issuer_text.to_string(),
                        reason: format!("{url} names the issuer {:?}; it must be the same string", metadata.issuer),
                        transient: false,
                    });
                }
                let Some(jwks_uri) = metadata.jwks_uri else {
                    return Err(OAuthError::Discovery {
                        issuer: issuer_text.to_string(),
                        reason: format!("{url} has no jwks_uri; give --oauth-jwks-uri"),
                        transient: false,
                    });
                };
                return parse_url("jwks_uri", &jwks_uri).map_err(|e| OAuthError::Discovery {
                    issuer: issuer_text.to_string(),
                    reason: e.to_string(),
                    transient: false,
                });
            }
            Err(error) => {
                transient |= error.transient;
                tried.push(format!("{url}: {error}"));
            }
        }
    }
    Err(OAuthError::Discovery { issuer: issuer_text.to_string(), reason: tried.join("; "), transient })
}

#[derive(Deserialize)]
struct RawKeySet {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct Metadata {
    issuer: String,
    #[serde(default)]
    jwks_uri: Option<String>,
}

async fn fetch_keys(client: &reqwest::Client, url: &Url) -> Result<KeySet, OAuthError> {
    let keys_err = |e: FetchError| OAuthError::Keys { url: url.to_string(), reason: e.text, transient: e.transient };
    let bytes = fetch(client, url).await.map_err(keys_err)?;
    let keys = parse_keys(&bytes).map_err(|e| keys_err(FetchError::permanent(e)))?;
    Ok(KeySet { keys, source: bytes })
}

/// The keys of a JWK set this server can verify with.
fn parse_keys(bytes: &[u8]) -> Result<Vec<Key>, String> {
    let set: RawKeySet = serde_json::from_slice(bytes).map_err(|e| format!("not a JWK set: {e}"))?;
    // Key by key: a key of a type this build does not know (a new algorithm the issuer
    // publishes beside its current ones) is skipped, not a reason to refuse the whole set.
    let keys: Vec<Key> = set
        .keys
        .into_iter()
        .filter_map(|raw| serde_json::from_value::<jsonwebtoken::jwk::Jwk>(raw).ok())
        .filter_map(|jwk| key(&jwk))
        .collect();
    if keys.is_empty() {
        return Err("no signing key this server can use (RSA, EC P-256/P-384 or Ed25519)".into());
    }
    Ok(keys)
}

/// A published key this server can verify with, and the algorithms it may sign with.
/// Encryption keys and symmetric keys are skipped: a public document cannot hold a secret.
fn key(jwk: &jsonwebtoken::jwk::Jwk) -> Option<Key> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))) {
        return None;
    }
    let family: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => &[
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => &[Algorithm::EdDSA],
        _ => return None,
    };
    // A key that names its algorithm signs with that one only (RFC 7517 §4.4); some issuers
    // (Entra ID) name none, and then the key's family decides.
    let algorithms = match jwk.common.key_algorithm.and_then(algorithm_of) {
        Some(alg) if family.contains(&alg) => vec![alg],
        Some(_) => return None,
        None if jwk.common.key_algorithm.is_some() => return None,
        None => family.to_vec(),
    };
    let decoding = DecodingKey::from_jwk(jwk).ok()?;
    Some(Key { id: jwk.common.key_id.clone(), decoding, algorithms })
}

fn algorithm_of(alg: KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

async fn fetch_json<T: serde::de::DeserializeOwned>(client: &reqwest::Client, url: &Url) -> Result<T, FetchError> {
    let bytes = fetch(client, url).await?;
    serde_json::from_slice(&bytes).map_err(|e| FetchError::permanent(format!("not the expected JSON: {e}")))
}

/// GET `url`: a 200 with a body of at most [`MAX_DOCUMENT_BYTES`].
async fn fetch(client: &reqwest::Client, url: &Url) -> Result<Vec<u8>, FetchError> {
    // Not answering, or answering "later", may pass; a refusal of the request itself will not.
    let unanswered = |e: reqwest::Error| FetchError { text: error_chain(&e), transient: !e.is_builder() };
    let mut response =
        client.get(url.clone()).header(http::header::ACCEPT, "application/json").send().await.map_err(unanswered)?;
    let status = response.status();
    if !status.is_success() {
        let transient = status.is_server_error()
            || status == reqwest::StatusCode::TOO_MANY_REQUESTS
            || status == reqwest::StatusCode::REQUEST_TIMEOUT;
        return Err(FetchError { text: format!("HTTP {status}"), transient });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(unanswered)? {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(FetchError::permanent(format!("larger than {MAX_DOCUMENT_BYTES} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// reqwest's errors say "error sending request"; the cause (refused, TLS, DNS) is in the chain.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwk(json: serde_json::Value) -> jsonwebtoken::jwk::Jwk {
        serde_json::from_value(json).unwrap()
    }

    const EC_X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
    const EC_Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";

    /// A verifier for `RESOURCE` from `ISSUER` that trusts one fresh P-256 key, and that key.
    struct Signer {
        verifier: Verifier,
        key: jsonwebtoken::EncodingKey,
        public: Vec<u8>,
    }

    /// The leeway of [`signer`]'s verifier (the flag's default).
    const LEEWAY_SECONDS: u64 = 30;

    const ISSUER: &str = "https://auth.example.com";
    const RESOURCE: &str = "https://mcp.example.com/mcp";

    fn signer(scopes: &[&str], write_scopes: &[&str]) -> Signer {
        use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        let public = pair.public_key().as_ref().to_vec();
        let b64 = |b: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, b);
        let jwk = serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig",
            "x": b64(&public[1..33]), "y": b64(&public[33..65]),
        }]});
        let bytes = jwk.to_string().into_bytes();
        let verifier = Verifier {
            issuer: ISSUER.into(),
            resource: RESOURCE.into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            write_scopes: write_scopes.iter().map(|s| s.to_string()).collect(),
            leeway: LEEWAY_SECONDS,
            keys: RwLock::new(KeySet { keys: parse_keys(&bytes).unwrap(), source: bytes }),
            cache: Mutex::new(Cache::default()),
            unknown_key: Notify::new(),
        };
        Signer { verifier, key: jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref()), public }
    }

    impl Signer {
        fn sign(&self, claims: serde_json::Value) -> String {
            let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
            header.kid = Some("k1".into());
            jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
        }
    }

    fn claims(extra: serde_json::Value) -> serde_json::Value {
        let mut c = serde_json::json!({"iss": ISSUER, "aud": RESOURCE, "sub": "agent", "exp": unix_now() + 300,
                                       "scope": "changes:read changes:write"});
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    }

    #[test]
    fn a_token_for_this_resource_from_the_issuer_names_its_subject() {
        let s = signer(&["changes:read"], &[]);
        let token = s.sign(claims(serde_json::json!({})));
        assert_eq!(s.verifier.verify(&token, Need::Read), Ok(Principal::named("agent")));
        // `aud` may be a list that names this resource among others.
        let listed = s.sign(claims(serde_json::json!({"aud": ["https://other.example.com", RESOURCE]})));
        assert_eq!(s.verifier.verify(&listed, Need::Write), Ok(Principal::named("agent")));
    }

    #[test]
    fn expired_early_misaddressed_and_anonymous_tokens_are_refused() {
        let s = signer(&[], &[]);
        let now = unix_now();
        for (what, extra) in [
            ("expired beyond the leeway", serde_json::json!({"exp": now - LEEWAY_SECONDS - 60})),
            ("not yet valid", serde_json::json!({"nbf": now + LEEWAY_SECONDS + 60})),
            ("for another resource", serde_json::json!({"aud": "https://other.example.com/mcp"})),
            ("from another issuer", serde_json::json!({"iss": "https://evil.example.com"})),
            ("without a subject", serde_json::json!({"sub": null})),
            ("without an expiry", serde_json::json!({"exp": null})),
            ("without an audience", serde_json::json!({"aud": null})),
        ] {
            assert_eq!(s.verifier.verify(&s.sign(claims(extra)), Need::Read), Err(Denied::Invalid), "{what}");
        }
        // Within the leeway an expired token still passes (clock skew between hosts).
        let skewed = s.sign(claims(serde_json::json!({"exp": now - 5})));
        assert!(s.verifier.verify(&skewed, Need::Read).is_ok());
    }

    #[test]
    fn the_leeway_is_the_configured_one() {
        let mut s = signer(&[], &[]);
        s.verifier.leeway = 0;
        let now = unix_now();
        let expired = s.sign(claims(serde_json::json!({"exp": now - 5})));
        assert_eq!(s.verifier.verify(&expired, Need::Read), Err(Denied::Invalid), "no skew allowed");
        // RFC 7519 4.1.4: not accepted on or after `exp`, so not in the second equal to it.
        let expiring = s.sign(claims(serde_json::json!({"exp": now})));
        assert_eq!(s.verifier.verify(&expiring, Need::Read), Err(Denied::Invalid), "refused at exp itself");
        let alive = s.sign(claims(serde_json::json!({"exp": now + 60})));
        assert!(s.verifier.verify(&alive, Need::Read).is_ok(), "a minute left");
        let early = s.sign(claims(serde_json::json!({"nbf": now + 5})));
        assert_eq!(s.verifier.verify(&early, Need::Read), Err(Denied::Invalid), "no skew allowed");
        s.verifier.leeway = 120;
        let skewed = s.sign(claims(serde_json::json!({"exp": now - 90, "nbf": now + 90})));
        assert!(s.verifier.verify(&skewed, Need::Read).is_ok(), "90 s either way, within 120");
    }

    #[test]
    fn a_token_cannot_pick_its_algorithm() {
        let s = signer(&[], &[]);
        let b64 = |b: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, b);
        let payload = b64(claims(serde_json::json!({})).to_string().as_bytes());
        // `alg: none`, unsigned.
        let none = format!("{}.{payload}.", b64(br#"{"alg":"none","kid":"k1"}"#));
        assert_eq!(s.verifier.verify(&none, Need::Read), Err(Denied::Invalid));
        // HS256 with the published public key as the HMAC secret (the classic confusion).
        let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        let forged = jsonwebtoken::encode(
            &header,
            &claims(serde_json::json!({})),
            &jsonwebtoken::EncodingKey::from_secret(&s.public),
        )
        .unwrap();
        assert_eq!(s.verifier.verify(&forged, Need::Read), Err(Denied::Invalid));
        // A signature that does not verify.
        let mut tampered = s.sign(claims(serde_json::json!({})));
        tampered.replace_range(tampered.len() - 4.., "AAAA");
        assert_eq!(s.verifier.verify(&tampered, Need::Read), Err(Denied::Invalid));
    }

    #[test]
    fn scopes_decide_between_reading_and_writing() {
        let s = signer(&["changes:read"], &["changes:write"]);
        let reader = s.sign(claims(serde_json::json!({"scope": "changes:read"})));
        assert!(s.verifier.verify(&reader, Need::Read).is_ok());
        assert_eq!(s.verifier.verify(&reader, Need::Write), Err(Denied::InsufficientScope));
        let nothing = s.sign(claims(serde_json::json!({"scope": null})));
        assert_eq!(s.verifier.verify(&nothing, Need::Read), Err(Denied::InsufficientScope));
        let okta = s.sign(claims(serde_json::json!({"scope": null, "scp": ["changes:read", "changes:write"]})));
        assert!(s.verifier.verify(&okta, Need::Write).is_ok());
        assert_eq!(s.verifier.required(Need::Write), ["changes:read", "changes:write"]);
    }

    #[test]
    fn a_withdrawn_key_stops_a_cached_token_and_an_unknown_one_asks_for_a_fetch() {
        use futures_util::FutureExt;
        let s = signer(&[], &[]);
        let token = s.sign(claims(serde_json::json!({})));
        assert!(s.verifier.verify(&token, Need::Read).is_ok());
        assert!(s.verifier.verify(&token, Need::Read).is_ok(), "served from the cache");
        // The issuer rotates k1 out: the cached acceptance goes with it.
        let other = signer(&[], &[]);
        let keys = other.verifier.keys.read().unwrap().source.clone();
        let mut rotated = parse_keys(&keys).unwrap();
        rotated[0].id = Some("k2".into());
        assert!(s.verifier.replace_keys(KeySet { keys: rotated, source: b"k2".to_vec() }));
        assert_eq!(s.verifier.verify(&token, Need::Read), Err(Denied::Invalid));
        assert!(s.verifier.unknown_key.notified().now_or_never().is_some(), "k1 is unknown now: fetch again");
        assert!(!s.verifier.replace_keys(KeySet { keys: Vec::new(), source: b"k2".to_vec() }), "same document");
    }

    #[test]
    fn a_check_that_began_under_withdrawn_keys_is_not_remembered() {
        let s = signer(&[], &[]);
        let token = s.sign(claims(serde_json::json!({})));
        let began = s.verifier.cache.lock().unwrap().generation;
        let accepted = s.verifier.check(&token, unix_now()).expect("valid under the keys of its start");
        // The keys change while the check runs: its result must not outlive them in the cache.
        let keys = parse_keys(&s.verifier.keys.read().unwrap().source).unwrap();
        assert!(s.verifier.replace_keys(KeySet { keys, source: b"rotated".to_vec() }));
        s.verifier.remember([7; 32], accepted.clone(), unix_now(), began);
        assert!(s.verifier.cache.lock().unwrap().entries.is_empty());
        let now_generation = s.verifier.cache.lock().unwrap().generation;
        s.verifier.remember([7; 32], accepted, unix_now(), now_generation);
        assert_eq!(s.verifier.cache.lock().unwrap().entries.len(), 1);
    }

    #[test]
    fn a_key_signs_with_its_own_algorithm_only() {
        let named = key(&jwk(
            serde_json::json!({"kty": "EC", "crv": "P-256", "x": EC_X, "y": EC_Y, "alg": "ES256", "kid": "a"}),
        ));
        assert_eq!(named.map(|k| k.algorithms), Some(vec![Algorithm::ES256]));
        let mismatched =
            key(&jwk(serde_json::json!({"kty": "EC", "crv": "P-256", "x": EC_X, "y": EC_Y, "alg": "RS256"})));
        assert!(mismatched.is_none(), "an EC key cannot verify RS256");
        let encryption =
            key(&jwk(serde_json::json!({"kty": "EC", "crv": "P-256", "x": EC_X, "y": EC_Y, "use": "enc"})));
        assert!(encryption.is_none());
        let secret = key(&jwk(serde_json::json!({"kty": "oct", "k": "c2VjcmV0"})));
        assert!(secret.is_none(), "a symmetric key in a public set is never trusted");
    }

    #[test]
    fn a_key_of_an_unknown_type_is_skipped_not_fatal() {
        let set = serde_json::json!({"keys": [
            {"kty": "AKP", "alg": "ML-DSA-44", "kid": "pq", "pub": "AAAA"},
            {"kty": "EC", "crv": "secp256k1", "kid": "k1", "x": EC_X, "y": EC_Y},
            {"kty": "EC", "crv": "P-256", "kid": "good", "x": EC_X, "y": EC_Y, "alg": "ES256"},
        ]});
        let keys = parse_keys(set.to_string().as_bytes()).unwrap();
        assert_eq!(keys.iter().map(|k| k.id.as_deref()).collect::<Vec<_>>(), [Some("good")]);
        let none = serde_json::json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]});
        assert!(parse_keys(none.to_string().as_bytes()).err().is_some_and(|e| e.contains("no signing key")));
        assert!(parse_keys(b"[]").err().is_some_and(|e| e.contains("not a JWK set")));
    }

    #[test]
    fn urls_must_be_https_unless_loopback() {
        assert!(parse_url("--oauth-issuer", "https://auth.example.com").is_ok());
        assert!(parse_url("--oauth-issuer", "http://127.0.0.1:9000").is_ok());
        assert!(parse_url("--oauth-issuer", "http://localhost:9000/realm").is_ok());
        let err = parse_url("--oauth-issuer", "http://auth.example.com").unwrap_err().to_string();
        assert!(err.contains("--oauth-issuer") && err.contains("https"), "{err}");
        assert!(parse_url("--oauth-resource", "mcp.example.com/mcp").is_err());
        assert!(parse_url("--oauth-resource", "https://mcp.example.com/mcp#x").is_err());
    }

    #[test]
    fn scopes_are_read_from_scope_and_scp() {
        let c: Claims = serde_json::from_value(serde_json::json!({"sub": "s", "exp": 1, "scope": "a b"})).unwrap();
        assert_eq!(c.scopes(), HashSet::from(["a", "b"]));
        let c: Claims = serde_json::from_value(serde_json::json!({"sub": "s", "exp": 1, "scp": ["a", "c"]})).unwrap();
        assert_eq!(c.scopes(), HashSet::from(["a", "c"]));
        let c: Claims = serde_json::from_value(serde_json::json!({"sub": "s", "exp": 1, "scp": "d"})).unwrap();
        assert_eq!(c.scopes(), HashSet::from(["d"]));
    }
}
