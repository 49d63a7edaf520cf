//! Settings from flags and environment. Every flag has a `TASK_MCP_*` variable;
//! the README's configuration table is these structs (a test checks they agree).
use std::{collections::BTreeSet, net::SocketAddr, path::PathBuf, time::Duration};

// Boolean variables take what operators write in env files and manifests (`1`, `yes`, `on`),
// not only clap's default `true`/`false`.
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum, builder::BoolishValueParser};

#[derive(Debug, Parser)]
#[command(name = "task-mcp", version, about = "Spec-driven change management for AI agents, over gRPC and MCP")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (gRPC) and the MCP/HTTP gateway in one process.
    Serve(Settings),
    /// Run the MCP/HTTP gateway alone, in front of a service at --upstream.
    Gateway(GatewaySettings),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (for log pipelines).
    Json,
    /// Human-readable lines.
    Text,
}

#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// The OpenSpec directory (changes live in <DIR>/changes). Created on first use.
    #[arg(long, env = "TASK_MCP_WORKSPACE", default_value = "./openspec", value_name = "DIR")]
    pub workspace: PathBuf,

    /// gRPC listen address; port 0 picks a free port.
    #[arg(long, env = "TASK_MCP_GRPC_LISTEN", default_value = "127.0.0.1:50051", value_name = "ADDR")]
    pub grpc_listen: SocketAddr,

    /// HTTP listen address of the MCP/HTTP gateway; port 0 picks a free port.
    #[arg(long, env = "TASK_MCP_HTTP_LISTEN", default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub http_listen: SocketAddr,

    /// Listen address of the Prometheus metrics endpoint (`GET /metrics`); `off` disables it;
    /// port 0 picks a free port.
    #[arg(long, env = "TASK_MCP_METRICS_LISTEN", default_value = "127.0.0.1:9464", value_name = "ADDR|off")]
    pub metrics_listen: MetricsListen,

    #[command(flatten)]
    pub access: AccessSettings,

    /// On SIGTERM/SIGINT, how long in-flight calls may take to finish.
    #[arg(long, env = "TASK_MCP_SHUTDOWN_GRACE_SECONDS", default_value_t = 10, value_name = "SECONDS")]
    pub shutdown_grace_seconds: u64,

    /// Largest resource ReadResource serves, in bytes.
    #[arg(long, env = "TASK_MCP_MAX_RESOURCE_BYTES", default_value_t = 4 * 1024 * 1024, value_name = "BYTES")]
    pub max_resource_bytes: u64,

    #[command(flatten)]
    pub gateway: GatewayFlags,

    /// Log format; the level comes from RUST_LOG (default `info`).
    #[arg(long, env = "TASK_MCP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,

    /// On SIGTERM/SIGINT, how long to keep serving with readiness failing (503, NOT_SERVING)
    /// before the listeners close, so that load balancers stop sending new connections first.
    #[arg(long, env = "TASK_MCP_SHUTDOWN_DELAY_SECONDS", default_value_t = 0, value_name = "SECONDS")]
    pub shutdown_delay_seconds: u64,
}

/// Who may call and how often: the same on the gRPC and the HTTP face.
#[derive(Debug, Clone, Args)]
pub struct AccessSettings {
    /// Accepted bearer token, `TOKEN` or `NAME=TOKEN` (NAME becomes the principal).
    /// Repeat the flag, or give a comma-separated list in the variable.
    #[arg(
        long = "auth-token",
        env = "TASK_MCP_AUTH_TOKENS",
        value_delimiter = ',',
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub auth_tokens: Vec<String>,

    /// File with one `TOKEN` or `NAME=TOKEN` per line (`#` comments allowed). Reloaded on
    /// SIGHUP, and when the periodic check of --auth-token-reload-seconds finds it changed, so
    /// tokens rotate without a restart.
    #[arg(long, env = "TASK_MCP_AUTH_TOKEN_FILE", value_name = "PATH")]
    pub auth_token_file: Option<PathBuf>,

    /// How often the token file is checked for a change, which is then loaded; 0: only on
    /// SIGHUP.
    #[arg(long, env = "TASK_MCP_AUTH_TOKEN_RELOAD_SECONDS", default_value_t = 10, value_name = "SECONDS")]
    pub auth_token_reload_seconds: u64,

    /// Allow binding a non-loopback address with no tokens configured.
    #[arg(long, env = "TASK_MCP_ALLOW_UNAUTHENTICATED_PUBLIC", value_parser = BoolishValueParser::new())]
    pub allow_unauthenticated_public: bool,

    /// OAuth 2.1 authorization server whose access tokens (JWTs) are accepted besides the
    /// configured tokens, e.g. `https://auth.example.com/realms/dev`. Its keys are found by
    /// RFC 8414 or OpenID Connect discovery at start. Needs --oauth-resource.
    #[arg(long, env = "TASK_MCP_OAUTH_ISSUER", value_name = "URL", requires = "oauth_resource")]
    pub oauth_issuer: Option<String>,

    /// This server's resource identifier: the public URL of its MCP endpoint, e.g.
    /// `https://mcp.example.com/mcp`. Tokens must name it in `aud`; clients find the issuer in
    /// its RFC 9728 metadata, `/.well-known/oauth-protected-resource`.
    #[arg(long, env = "TASK_MCP_OAUTH_RESOURCE", value_name = "URL", requires = "oauth_issuer")]
    pub oauth_resource: Option<String>,

    /// A scope every access token must hold (403 `insufficient_scope` otherwise); repeatable.
    #[arg(
        long = "oauth-scope",
        env = "TASK_MCP_OAUTH_SCOPES",
        value_delimiter = ',',
        value_name = "SCOPE",
        requires = "oauth_issuer"
    )]
    pub oauth_scopes: Vec<String>,

    /// A scope calls that change the workspace (open, tick, archive) need besides the
    /// --oauth-scope ones (repeatable). Without any, every call needs the same scopes.
    #[arg(
        long = "oauth-write-scope",
        env = "TASK_MCP_OAUTH_WRITE_SCOPES",
        value_delimiter = ',',
        value_name = "SCOPE",
        requires = "oauth_issuer"
    )]
    pub oauth_write_scopes: Vec<String>,

    /// The issuer's JWK set, when its metadata does not name one (skips discovery).
    #[arg(long, env = "TASK_MCP_OAUTH_JWKS_URI", value_name = "URL", requires = "oauth_issuer")]
    pub oauth_jwks_uri: Option<String>,

    /// How long the start waits for an issuer that does not answer yet (refused, timed out,
    /// 5xx), retrying with backoff; 0: give up at once. A wrong issuer stops the start at once.
    #[arg(long, env = "TASK_MCP_OAUTH_WAIT_SECONDS", default_value_t = 30, value_name = "SECONDS")]
    pub oauth_wait_seconds: u64,

    /// How often the issuer's keys are fetched again (a token naming an unknown key also
    /// triggers a fetch, at most every 10 s).
    #[arg(long, env = "TASK_MCP_OAUTH_KEYS_REFRESH_SECONDS", default_value_t = 300, value_name = "SECONDS",
          value_parser = clap::builder::RangedU64ValueParser::<u64>::new().range(10..))]
    pub oauth_keys_refresh_seconds: u64,

    /// Clock skew allowed on an access token's `exp` and `nbf`, in seconds (0 to 300).
    // Every second of leeway is a second an expired token is still honoured: hosts kept by NTP
    // are well within 300 s, and a larger skew is a clock to fix, not a setting to widen.
    #[arg(long, env = "TASK_MCP_OAUTH_LEEWAY_SECONDS", default_value_t = 30, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(0..=300))]
    pub oauth_leeway_seconds: u64,

    /// Sustained calls per second per principal; 0 disables rate limiting.
    #[arg(long, env = "TASK_MCP_RATE_LIMIT_PER_SECOND", default_value_t = 50, value_name = "N")]
    pub rate_limit_per_second: u32,

    /// Calls a principal may make at once before the sustained rate applies.
    #[arg(long, env = "TASK_MCP_RATE_LIMIT_BURST", default_value_t = 100, value_name = "N")]
    pub rate_limit_burst: u32,

    /// Failed authentications a client address may make per minute (both ports together);
    /// beyond, its requests are refused (429 / RESOURCE_EXHAUSTED) until the budget refills.
    /// 0 disables.
    #[arg(long, env = "TASK_MCP_AUTH_FAILURES_PER_MINUTE", default_value_t = 30, value_name = "N")]
    pub auth_failures_per_minute: u32,

    /// Reverse proxy whose `X-Forwarded-For` names the client (a CIDR range or an address);
    /// repeatable. A request from one is keyed on the rightmost address in the header that is
    /// not itself a trusted proxy, for the failed-authentication budget. Trust only proxies
    /// that append to or overwrite the header. Without any, the TCP peer is the client.
    #[arg(long = "trusted-proxy", env = "TASK_MCP_TRUSTED_PROXIES", value_delimiter = ',', value_name = "CIDR")]
    pub trusted_proxies: Vec<task_mcp_gateway::TrustedRange>,
}

impl AccessSettings {
    /// The RFC 9728 metadata the gateway serves, when `--oauth-issuer` is set.
    pub fn protected_resource(&self) -> Option<task_mcp_gateway::ProtectedResource> {
        Some(task_mcp_gateway::ProtectedResource {
            resource: self.oauth_resource.clone()?,
            authorization_servers: vec![self.oauth_issuer.clone()?],
            // What a client asks for up front: enough for every call.
            scopes: self.oauth_scopes.iter().chain(&self.oauth_write_scopes).cloned().collect(),
        })
    }

    /// The OAuth resource-server settings, when `--oauth-issuer` is set.
    pub fn oauth(&self) -> Option<crate::oauth::OAuthConfig> {
        Some(crate::oauth::OAuthConfig {
            issuer: self.oauth_issuer.clone()?,
            resource: self.oauth_resource.clone()?,
            scopes: self.oauth_scopes.clone(),
            write_scopes: self.oauth_write_scopes.clone(),
            jwks_uri: self.oauth_jwks_uri.clone(),
            refresh: Duration::from_secs(self.oauth_keys_refresh_seconds),
            wait: Duration::from_secs(self.oauth_wait_seconds),
            leeway: Duration::from_secs(self.oauth_leeway_seconds),
        })
    }

    pub fn trusted_proxies(&self) -> task_mcp_gateway::TrustedProxies {
        task_mcp_gateway::TrustedProxies::new(self.trusted_proxies.iter().copied())
    }
}

/// The gateway's limits and policies.
#[derive(Debug, Clone, Args)]
pub struct GatewayFlags {
    /// Browser origin allowed to call (exact, e.g. `http://localhost:6274`); repeatable.
    /// Without any, only loopback origins pass the DNS-rebinding check and no CORS is sent.
    #[arg(long = "allowed-origin", env = "TASK_MCP_ALLOWED_ORIGINS", value_delimiter = ',', value_name = "ORIGIN")]
    pub allowed_origins: Vec<String>,

    /// Host header value allowed (e.g. `mcp.example.com`); repeatable. Without any, loopback names only.
    #[arg(long = "allowed-host", env = "TASK_MCP_ALLOWED_HOSTS", value_delimiter = ',', value_name = "HOST")]
    pub allowed_hosts: Vec<String>,

    /// Largest HTTP request body in bytes (413 beyond).
    #[arg(long, env = "TASK_MCP_MAX_BODY_BYTES", default_value_t = 1024 * 1024, value_name = "BYTES", value_parser = at_least_one())]
    pub max_body_bytes: usize,

    /// Live MCP sessions at most (503 with Retry-After beyond).
    #[arg(long, env = "TASK_MCP_MAX_SESSIONS", default_value_t = 10_000, value_name = "N", value_parser = at_least_one())]
    pub max_sessions: usize,

    /// An MCP session unused this long is closed (404 afterwards).
    #[arg(long, env = "TASK_MCP_SESSION_IDLE_SECONDS", default_value_t = 1800, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub session_idle_seconds: u64,

    /// Open streams at most, all transports together (SSE, NDJSON, gRPC server streams);
    /// beyond, 503 with Retry-After or UNAVAILABLE.
    #[arg(long, env = "TASK_MCP_MAX_STREAMS", default_value_t = 10_000, value_name = "N", value_parser = at_least_one())]
    pub max_streams: usize,

    /// Events kept per SSE stream for Last-Event-ID resumption.
    #[arg(long, env = "TASK_MCP_EVENT_STORE_CAPACITY", default_value_t = 256, value_name = "N")]
    pub event_store_capacity: usize,

    /// Serve the MCP conformance suite's fixture tools, resources and prompts (testing only).
    #[arg(long, env = "TASK_MCP_CONFORMANCE_FIXTURES", value_parser = BoolishValueParser::new())]
    pub conformance_fixtures: bool,

    /// Live MCP sessions one principal may hold (503 with Retry-After beyond); 0: no share.
    /// Default: --max-sessions divided by the number of principals the tokens name, so that no
    /// tenant can take another's sessions (with one principal, or none, no share).
    #[arg(long, env = "TASK_MCP_MAX_SESSIONS_PER_PRINCIPAL", value_name = "N")]
    pub max_sessions_per_principal: Option<usize>,

    /// Open streams one principal may hold, all transports together; 0: no share.
    /// Default: --max-streams divided by the number of principals the tokens name.
    #[arg(long, env = "TASK_MCP_MAX_STREAMS_PER_PRINCIPAL", value_name = "N")]
    pub max_streams_per_principal: Option<usize>,

    /// Open connections each listener (HTTP, gRPC) may have; a connection beyond is closed at
    /// once. Default: half of what the open-file limit leaves once 256 descriptors are kept back,
    /// at most 32,768 (the soft open-file limit is first raised to the hard one).
    #[arg(long, env = "TASK_MCP_MAX_CONNECTIONS", value_name = "N", value_parser = at_least_one())]
    pub max_connections: Option<usize>,

    /// How long the gateway waits for the service to start answering a call (504
    /// DEADLINE_EXCEEDED, reason UPSTREAM_TIMED_OUT, beyond); the call is then cancelled at the
    /// service. A unary call must be answered within it; a stream must have started (progress
    /// and change feeds then run as long as they need). A caller's shorter deadline wins.
    #[arg(long, env = "TASK_MCP_UPSTREAM_TIMEOUT_SECONDS", default_value_t = 30, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub upstream_timeout_seconds: u64,

    /// The tool names MCP `tools/list` shows. `dotted`: the names the proto declares
    /// (`change.open`). `underscored`: `change_open`, for Claude's apps (claude.ai, Claude
    /// Desktop) and OpenAI's function calling, which accept only `^[a-zA-Z0-9_-]{1,64}$` and
    /// refuse a server's whole tool set over one dotted name. Calls accept either form.
    #[arg(long, env = "TASK_MCP_TOOL_NAMES", value_enum, default_value_t = ToolNamesFlag::Dotted, value_name = "STYLE")]
    pub tool_names: ToolNamesFlag,
}

/// `--tool-names`, mapped onto the gateway's [`task_mcp_gateway::ToolNames`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ToolNamesFlag {
    Dotted,
    Underscored,
}

/// Whether `name` is one of the variables Kubernetes gives every pod for a Service named
/// `task-mcp` (`TASK_MCP_SERVICE_HOST`, `TASK_MCP_PORT_8080_TCP`, ...): the pod did not misspell
/// them, and no flag's variable has those shapes.
fn is_service_link(name: &str) -> bool {
    name == "TASK_MCP_PORT" || name.starts_with("TASK_MCP_PORT_") || name.starts_with("TASK_MCP_SERVICE_")
}

/// The `TASK_MCP_*` variables among `names` that no flag reads. A misspelt one
/// (`TASK_MCP_MAX_SESSION`) would otherwise leave the default in force without a word.
pub fn unknown_variables(names: impl IntoIterator<Item = String>) -> Vec<String> {
    fn known(cmd: &clap::Command, into: &mut BTreeSet<String>) {
        into.extend(cmd.get_arguments().filter_map(|a| a.get_env()).map(|e| e.to_string_lossy().into_owned()));
        for sub in cmd.get_subcommands() {
            known(sub, into);
        }
    }
    let mut read = BTreeSet::new();
    known(&Cli::command(), &mut read);
    let mut unknown: Vec<String> =
        names.into_iter().filter(|n| n.starts_with("TASK_MCP_") && !read.contains(n) && !is_service_link(n)).collect();
    unknown.sort();
    unknown
}

/// A limit that 0 would turn into a server that passes readiness and serves nothing (every
/// POST 413, every session 503 or 404, every stream 503): refused at start instead.
fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
}

#[derive(Debug, Clone, Args)]
pub struct GatewaySettings {
    /// The gRPC service to front, e.g. `http://10.0.0.5:50051` (plaintext HTTP/2: TLS to the service is
    /// not built in)
    #[arg(long, env = "TASK_MCP_UPSTREAM", value_name = "URL")]
    pub upstream: UpstreamUrl,

    /// HTTP listen address; port 0 picks a free port.
    #[arg(long, env = "TASK_MCP_HTTP_LISTEN", default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub http_listen: SocketAddr,

    #[command(flatten)]
    pub access: AccessSettings,

    #[command(flatten)]
    pub gateway: GatewayFlags,

    /// On SIGTERM/SIGINT, how long in-flight calls may take to finish.
    #[arg(long, env = "TASK_MCP_SHUTDOWN_GRACE_SECONDS", default_value_t = 10, value_name = "SECONDS")]
    pub shutdown_grace_seconds: u64,

    /// Log format; the level comes from RUST_LOG (default `info`).
    #[arg(long, env = "TASK_MCP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,

    /// On SIGTERM/SIGINT, how long to keep serving with readiness failing (503, NOT_SERVING)
    /// before the listeners close, so that load balancers stop sending new connections first.
    #[arg(long, env = "TASK_MCP_SHUTDOWN_DELAY_SECONDS", default_value_t = 0, value_name = "SECONDS")]
    pub shutdown_delay_seconds: u64,
}

impl Settings {
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_seconds)
    }

    /// The listeners that would be reachable from other hosts.
    pub fn public_addrs(&self) -> Vec<SocketAddr> {
        [Some(self.grpc_listen), Some(self.http_listen), self.metrics_listen.0]
            .into_iter()
            .flatten()
            .filter(|a| !a.ip().is_loopback())
            .collect()
    }
}

/// `--upstream`: `http://host[:port]` and nothing else. The gRPC client would
/// accept more and get it wrong: it speaks plaintext to an `https://` URL
/// (this build has no TLS), drops a path, and reads `host:port` without a
/// scheme as a URL that never connects. Refused at start-up instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl(pub String);

impl std::str::FromStr for UpstreamUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let uri: http::Uri = s.parse().map_err(|e| format!("not a URL ({e}); expected e.g. http://10.0.0.5:50051"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err("TLS to the service is not built into task-mcp: use http:// on a private network, or \
                            a TLS sidecar or service mesh between the tiers"
                    .into());
            }
            _ => return Err("expected an http:// URL, e.g. http://10.0.0.5:50051".into()),
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err("the URL names no host".into());
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err("gRPC calls go to /<service>/<method>: give the URL without a path or query".into());
        }
        Ok(UpstreamUrl(s.to_string()))
    }
}

impl std::fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `--metrics-listen`: an address, or `off` for no Prometheus endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsListen(pub Option<SocketAddr>);

impl std::str::FromStr for MetricsListen {
    type Err = std::net::AddrParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().eq_ignore_ascii_case("off") {
            return Ok(MetricsListen(None));
        }
        s.trim().parse().map(|addr| MetricsListen(Some(addr)))
    }
}

impl std::fmt::Display for MetricsListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("off"),
        }
    }
}

impl GatewayFlags {
    /// `principals`: how many principals the tokens name (0 with no tokens), which an unset
    /// per-principal share is divided by.
    pub fn to_config(&self, principals: usize) -> task_mcp_gateway::GatewayConfig {
        let share = |configured: Option<usize>, max: usize| match configured {
            Some(n) => n,
            None if principals > 1 => (max / principals).max(1),
            None => 0,
        };
        task_mcp_gateway::GatewayConfig {
            allowed_origins: self.allowed_origins.clone(),
            allowed_hosts: self.allowed_hosts.clone(),
            max_body_bytes: self.max_body_bytes,
            max_sessions: self.max_sessions,
            session_idle_timeout: Duration::from_secs(self.session_idle_seconds),
            max_streams: self.max_streams,
            event_store_capacity: self.event_store_capacity,
            conformance_fixtures: self.conformance_fixtures,
            max_sessions_per_principal: share(self.max_sessions_per_principal, self.max_sessions),
            max_streams_per_principal: share(self.max_streams_per_principal, self.max_streams),
            upstream_timeout: Duration::from_secs(self.upstream_timeout_seconds),
            tool_names: match self.tool_names {
                ToolNamesFlag::Dotted => task_mcp_gateway::ToolNames::Dotted,
                ToolNamesFlag::Underscored => task_mcp_gateway::ToolNames::Underscored,
            },
            ..task_mcp_gateway::GatewayConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Settings {
        let mut all = vec!["task-mcp", "serve"];
        all.extend_from_slice(args);
        match Cli::try_parse_from(all).unwrap().command {
            Command::Serve(s) => s,
            Command::Gateway(_) => unreachable!(),
        }
    }

    #[test]
    fn defaults_are_loopback() {
        let s = parse(&[]);
        assert!(s.public_addrs().is_empty());
        assert_eq!(s.grpc_listen.to_string(), "127.0.0.1:50051");
        assert!(!s.access.allow_unauthenticated_public);
        assert!(!s.gateway.conformance_fixtures);
    }

    #[test]
    fn repeated_tokens_and_public_addr() {
        let s = parse(&["--auth-token", "a=1", "--auth-token", "b=2", "--grpc-listen", "0.0.0.0:0"]);
        assert_eq!(s.access.auth_tokens.len(), 2);
        assert_eq!(s.public_addrs().len(), 1);
    }

    #[test]
    fn metrics_listener_can_be_turned_off() {
        assert_eq!(parse(&[]).metrics_listen.0.map(|a| a.to_string()).as_deref(), Some("127.0.0.1:9464"));
        assert_eq!(parse(&["--metrics-listen", "off"]).metrics_listen, MetricsListen(None));
        let public = parse(&["--metrics-listen", "0.0.0.0:9464"]);
        assert_eq!(public.public_addrs().len(), 1);
        assert!(Cli::try_parse_from(["task-mcp", "serve", "--metrics-listen", "nowhere"]).is_err());
    }

    #[test]
    fn a_misspelt_variable_is_named_and_the_real_ones_are_not() {
        let names =
            ["TASK_MCP_MAX_SESSION", "TASK_MCP_MAX_SESSIONS", "TASK_MCP_UPSTREAM", "PATH", "TASK_MCP_LOGFORMAT"];
        let unknown = unknown_variables(names.map(String::from));
        assert_eq!(unknown, ["TASK_MCP_LOGFORMAT", "TASK_MCP_MAX_SESSION"]);
    }

    #[test]
    fn the_variables_kubernetes_gives_a_pod_for_the_service_are_not_misspellings() {
        let injected = [
            "TASK_MCP_SERVICE_HOST",
            "TASK_MCP_SERVICE_PORT",
            "TASK_MCP_SERVICE_PORT_HTTP",
            "TASK_MCP_PORT",
            "TASK_MCP_PORT_8080_TCP",
            "TASK_MCP_PORT_8080_TCP_PROTO",
            "TASK_MCP_PORT_8080_TCP_PORT",
            "TASK_MCP_PORT_8080_TCP_ADDR",
        ];
        assert!(unknown_variables(injected.map(String::from)).is_empty());
        // Every flag's variable is out of that shape, so none can hide a misspelling of one.
        let mut read = Vec::new();
        for cmd in Cli::command().get_subcommands() {
            read.extend(cmd.get_arguments().filter_map(|a| a.get_env()).map(|e| e.to_string_lossy().into_owned()));
        }
        assert!(!read.is_empty());
        assert!(read.iter().all(|n| !is_service_link(n)), "{read:?}");
    }

    #[test]
    fn a_limit_of_zero_is_refused_at_start() {
        for flag in [
            "--max-body-bytes",
            "--max-sessions",
            "--session-idle-seconds",
            "--max-streams",
            "--max-connections",
            "--upstream-timeout-seconds",
        ] {
            let err = Cli::try_parse_from(["task-mcp", "serve", flag, "0"]).expect_err(flag);
            assert!(err.to_string().contains(flag), "{flag}: {err}");
            assert!(Cli::try_parse_from(["task-mcp", "serve", flag, "1"]).is_ok(), "{flag} 1");
        }
    }

    #[test]
    fn an_unset_share_is_an_equal_split_among_principals() {
        let config = parse(&["--max-sessions", "10", "--max-streams", "7"]).gateway.to_config(2);
        assert_eq!((config.max_sessions_per_principal, config.max_streams_per_principal), (5, 3));
        let alone = parse(&[]).gateway.to_config(1);
        assert_eq!((alone.max_sessions_per_principal, alone.max_streams_per_principal), (0, 0));
        let anonymous = parse(&[]).gateway.to_config(0);
        assert_eq!(anonymous.max_sessions_per_principal, 0, "no tokens: as before, no share");
        let set =
            parse(&["--max-sessions-per-principal", "9", "--max-streams-per-principal", "0"]).gateway.to_config(3);
        assert_eq!((set.max_sessions_per_principal, set.max_streams_per_principal), (9, 0));
    }

    #[test]
    fn trusted_proxies_repeat_and_a_bad_one_is_refused_naming_the_flag() {
        let s = parse(&["--trusted-proxy", "10.0.0.0/8", "--trusted-proxy", "192.0.2.7"]);
        let shown: Vec<String> = s.access.trusted_proxies.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["10.0.0.0/8", "192.0.2.7/32"]);
        assert!(parse(&[]).access.trusted_proxies().is_empty());
        for bad in ["10.0.0.0/40", "proxy.internal"] {
            let err = Cli::try_parse_from(["task-mcp", "serve", "--trusted-proxy", bad]).expect_err(bad);
            assert!(err.to_string().contains("--trusted-proxy"), "{bad}: {err}");
        }
        let gateway = ["task-mcp", "gateway", "--upstream", "http://127.0.0.1:1", "--trusted-proxy", "fd00::/8"];
        assert!(Cli::try_parse_from(gateway).is_ok(), "the gateway subcommand takes it too");
    }

    #[test]
    fn the_oauth_leeway_defaults_to_30_s_and_a_bad_one_is_refused_naming_the_flag() {
        assert_eq!(parse(&[]).access.oauth_leeway_seconds, 30);
        assert_eq!(parse(&["--oauth-leeway-seconds", "0"]).access.oauth_leeway_seconds, 0);
        assert_eq!(parse(&["--oauth-leeway-seconds", "300"]).access.oauth_leeway_seconds, 300);
        for bad in ["301", "-1", "1m", ""] {
            let flag = format!("--oauth-leeway-seconds={bad}");
            let err = Cli::try_parse_from(["task-mcp", "serve", &flag]).expect_err(bad);
            assert!(err.to_string().contains("--oauth-leeway-seconds"), "{bad}: {err}");
        }
        let gateway = ["task-mcp", "gateway", "--upstream", "http://127.0.0.1:1", "--oauth-leeway-seconds", "0"];
        let Command::Gateway(g) = Cli::try_parse_from(gateway).expect("the gateway takes it too").command else {
            unreachable!()
        };
        assert_eq!(g.access.oauth_leeway_seconds, 0);
        let s = parse(&[
            "--oauth-issuer",
            "https://auth.example.com",
            "--oauth-resource",
            "https://mcp.example.com/mcp",
            "--oauth-leeway-seconds",
            "7",
        ]);
        assert_eq!(s.access.oauth().map(|o| o.leeway), Some(Duration::from_secs(7)));
    }

    #[test]
    fn gateway_needs_an_upstream() {
        assert!(Cli::try_parse_from(["task-mcp", "gateway"]).is_err());
        let cli = Cli::try_parse_from(["task-mcp", "gateway", "--upstream", "http://127.0.0.1:50051"]).unwrap();
        assert!(matches!(cli.command, Command::Gateway(g) if g.upstream.0.ends_with(":50051")));
    }

    #[test]
    fn an_upstream_the_client_would_get_wrong_is_refused_at_start() {
        for ok in ["http://10.0.0.5:50051", "http://task-mcp/", "http://[::1]:50051"] {
            assert_eq!(ok.parse::<UpstreamUrl>().map(|u| u.0), Ok(ok.to_string()), "{ok}");
        }
        let refused = |url: &str| url.parse::<UpstreamUrl>().expect_err(url);
        assert!(refused("https://10.0.0.5:50051").contains("TLS"));
        assert!(refused("10.0.0.5:50051").contains("http://"));
        assert!(refused("unix:///run/task-mcp.sock").contains("http://"));
        assert!(refused("http://10.0.0.5:50051/prefix").contains("path"));
        assert!(refused("http://10.0.0.5:50051/?a=b").contains("path or query"));
        assert!(refused("not a url").contains("not a URL"));
        let err = Cli::try_parse_from(["task-mcp", "gateway", "--upstream", "https://h:1"]).unwrap_err();
        assert!(err.to_string().contains("--upstream"), "{err}");
    }
}
