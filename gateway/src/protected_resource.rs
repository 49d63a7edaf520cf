//! OAuth protected-resource metadata (RFC 9728), which MCP clients read to find the
//! authorization server to get a token from: served at `/.well-known/oauth-protected-resource`
//! (and at that path followed by the resource's own path, where the MCP spec has clients look
//! first), and named by `resource_metadata` in every bearer challenge. The challenges are built
//! here for both faces: the HTTP face's `WWW-Authenticate` header, and the `www-authenticate`
//! metadata of the gRPC service's UNAUTHENTICATED and PERMISSION_DENIED answers.
use std::sync::Arc;

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderValue, Uri, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;

use crate::AppState;

const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

/// The `error` of a bearer challenge (RFC 6750 §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BearerError {
    /// Bearer credentials were sent, and are not a token this server accepts.
    InvalidToken,
    /// A genuine token without a scope the call needs.
    InsufficientScope,
}

impl BearerError {
    /// The `error` of an unauthenticated refusal of a request whose `Authorization` was
    /// `authorization`: none when it carried no bearer credentials (none at all, or another
    /// scheme such as Basic), as RFC 6750 §3.1 asks.
    pub fn unauthenticated(authorization: Option<&HeaderValue>) -> Option<BearerError> {
        authorization.is_some_and(is_bearer).then_some(BearerError::InvalidToken)
    }

    fn as_str(self) -> &'static str {
        match self {
            BearerError::InvalidToken => "invalid_token",
            BearerError::InsufficientScope => "insufficient_scope",
        }
    }
}

/// Whether an `Authorization` value carries bearer credentials (the scheme is case-insensitive).
fn is_bearer(value: &HeaderValue) -> bool {
    value.as_bytes().get(..7).is_some_and(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
}

/// What the metadata says: checked by the embedding binary (absolute URLs) before it gets here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtectedResource {
    /// This server's resource identifier: the public URL of its MCP endpoint, which access
    /// tokens name as their audience.
    pub resource: String,
    /// The issuers whose tokens are accepted.
    pub authorization_servers: Vec<String>,
    /// The scopes every token must hold.
    pub scopes: Vec<String>,
}

impl ProtectedResource {
    /// The path part of the resource identifier, if it has one beyond `/`.
    fn resource_path(&self) -> Option<String> {
        let uri: Uri = self.resource.parse().ok()?;
        let path = uri.path().trim_end_matches('/');
        (!path.is_empty()).then(|| path.to_string())
    }

    /// Where the metadata is served on this server (RFC 9728 §3.1: the well-known prefix is
    /// inserted between the host and the resource's path).
    pub fn metadata_paths(&self) -> Vec<String> {
        let mut paths = vec![WELL_KNOWN.to_string()];
        if let Some(path) = self.resource_path() {
            paths.push(format!("{WELL_KNOWN}{path}"));
        }
        paths
    }

    /// The metadata's URL for `resource_metadata`: on the resource's own origin, at the path
    /// that names the resource.
    pub fn metadata_url(&self) -> String {
        let origin = self
            .resource
            .parse::<Uri>()
            .ok()
            .and_then(|uri| Some(format!("{}://{}", uri.scheme_str()?, uri.authority()?.as_str())));
        let path = self.metadata_paths().pop().unwrap_or_else(|| WELL_KNOWN.to_string());
        format!("{}{path}", origin.unwrap_or_default())
    }

    /// A `WWW-Authenticate` value for a refusal; `error` per RFC 6750 §3.1, absent when no
    /// bearer token was sent. `scope` tells the client what to ask for (the MCP spec's
    /// scope selection), also on a first challenge.
    pub fn challenge(&self, error: Option<BearerError>) -> HeaderValue {
        let mut value = String::from("Bearer realm=\"task-mcp\"");
        if let Some(error) = error {
            value.push_str(&format!(", error=\"{}\"", error.as_str()));
        }
        if !self.scopes.is_empty() {
            value.push_str(&format!(", scope=\"{}\"", self.scopes.join(" ")));
        }
        value.push_str(&format!(", resource_metadata=\"{}\"", self.metadata_url()));
        // Only header-safe characters: the binary refuses a URL or scope that is not.
        HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("Bearer realm=\"task-mcp\""))
    }

    fn document(&self) -> serde_json::Value {
        let mut doc = json!({
            "resource": self.resource,
            "authorization_servers": self.authorization_servers,
            "bearer_methods_supported": ["header"],
            "resource_name": "task-mcp",
        });
        if !self.scopes.is_empty() {
            doc["scopes_supported"] = json!(self.scopes);
        }
        doc
    }
}

/// The metadata routes; none without OAuth (a clean 404, as for any unknown path).
pub fn routes(config: Option<&ProtectedResource>) -> Router<Arc<AppState>> {
    let mut router = Router::new();
    for path in config.map(ProtectedResource::metadata_paths).unwrap_or_default() {
        router = router.route(&path, get(metadata));
    }
    router
}

async fn metadata(State(state): State<Arc<AppState>>) -> Response {
    let Some(resource) = &state.config.oauth else {
        return axum::http::StatusCode::NOT_FOUND.into_response();
    };
    let mut res = Json(resource.document()).into_response();
    // Public and the same for everyone; clients may cache it briefly.
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(url: &str, scopes: &[&str]) -> ProtectedResource {
        ProtectedResource {
            resource: url.into(),
            authorization_servers: vec!["https://auth.example.com".into()],
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn the_metadata_path_inserts_the_well_known_prefix_before_the_resource_path() {
        let r = resource("https://mcp.example.com/mcp", &[]);
        assert_eq!(
            r.metadata_paths(),
            ["/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/mcp"]
        );
        assert_eq!(r.metadata_url(), "https://mcp.example.com/.well-known/oauth-protected-resource/mcp");
        let root = resource("https://mcp.example.com:8443/", &[]);
        assert_eq!(root.metadata_paths(), ["/.well-known/oauth-protected-resource"]);
        assert_eq!(root.metadata_url(), "https://mcp.example.com:8443/.well-known/oauth-protected-resource");
    }

    #[test]
    fn only_bearer_credentials_make_an_invalid_token() {
        let header = |v: &'static str| HeaderValue::from_static(v);
        assert_eq!(BearerError::unauthenticated(None), None);
        assert_eq!(BearerError::unauthenticated(Some(&header("Basic b3BzOnB3"))), None);
        assert_eq!(BearerError::unauthenticated(Some(&header("Bearer x"))), Some(BearerError::InvalidToken));
        assert_eq!(BearerError::unauthenticated(Some(&header("bEaReR x"))), Some(BearerError::InvalidToken));
    }

    #[test]
    fn challenges_name_the_metadata_and_the_scopes() {
        let r = resource("https://mcp.example.com/mcp", &["changes:read", "changes:write"]);
        assert_eq!(
            r.challenge(None),
            "Bearer realm=\"task-mcp\", scope=\"changes:read changes:write\", \
             resource_metadata=\"https://mcp.example.com/.well-known/oauth-protected-resource/mcp\""
        );
        let bare = resource("https://mcp.example.com/mcp", &[]);
        assert_eq!(
            bare.challenge(Some(BearerError::InvalidToken)),
            "Bearer realm=\"task-mcp\", error=\"invalid_token\", \
             resource_metadata=\"https://mcp.example.com/.well-known/oauth-protected-resource/mcp\""
        );
        assert_eq!(
            r.challenge(Some(BearerError::InsufficientScope)),
            "Bearer realm=\"task-mcp\", error=\"insufficient_scope\", scope=\"changes:read changes:write\", \
             resource_metadata=\"https://mcp.example.com/.well-known/oauth-protected-resource/mcp\""
        );
        let doc = r.document();
        assert_eq!(doc["resource"], "https://mcp.example.com/mcp");
        assert_eq!(doc["scopes_supported"], json!(["changes:read", "changes:write"]));
        assert!(bare.document().get("scopes_supported").is_none());
    }
}
