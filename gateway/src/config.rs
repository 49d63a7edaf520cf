//! Gateway settings. The binary maps its flags onto this struct; defaults here
//! are the documented defaults.
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// `serverInfo.name` / `server/discover` identity.
    pub server_name: String,
    pub server_version: String,
    /// Origins allowed by the DNS-rebinding check and CORS (exact match, e.g.
    /// `http://localhost:6274`). Requests without `Origin` are allowed.
    pub allowed_origins: Vec<String>,
    /// Host header values allowed (host or host:port). Empty means: loopback names only
    /// (`localhost`, `127.0.0.1`, `[::1]`) on any port.
    pub allowed_hosts: Vec<String>,
    /// Largest request body, in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Live MCP sessions at most (503 + Retry-After beyond).
    pub max_sessions: usize,
    /// A session unused this long is closed (404 afterwards).
    pub session_idle_timeout: Duration,
    /// Open SSE streams at most, over all sessions (503 + Retry-After beyond).
    pub max_streams: usize,
    /// Events kept per stream for `Last-Event-ID` resumption.
    pub event_store_capacity: usize,
    /// Interval of `:` keep-alive comments on idle SSE streams.
    pub sse_keepalive: Duration,
    /// The `retry:` hint sent to SSE clients, in milliseconds.
    pub sse_retry: Duration,
    /// Serve the MCP conformance suite's fixture tools, resources and prompts.
    pub conformance_fixtures: bool,
    /// Live sessions one principal may hold; 0: no share (only `max_sessions` bounds it).
    pub max_sessions_per_principal: usize,
    /// Open streams one principal may hold; 0: no share (only `max_streams` bounds it).
    pub max_streams_per_principal: usize,
    /// How long a call may wait for the service to start answering (its response head);
    /// a caller's shorter deadline wins.
    pub upstream_timeout: Duration,
    /// Peers whose `X-Forwarded-For` names the client, for what keys on the client address.
    pub trusted_proxies: crate::TrustedProxies,
    /// The service is another process (`task-mcp gateway`): each call names the client in
    /// `x-forwarded-for` ([`crate::proxies::name_client`]). In `serve` the in-process service
    /// keys nothing on the client, so nothing is written.
    pub name_client: bool,
    /// How `tools/list` names the tools to MCP clients (calls accept both forms).
    pub tool_names: ToolNames,
    /// OAuth: the metadata to serve and to name in challenges (RFC 9728); `None` without.
    pub oauth: Option<crate::ProtectedResource>,
}

/// The names `tools/list` gives MCP clients. A call may use either form whatever this says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ToolNames {
    /// The names the proto declares (`change.open`): the contract scripts and dashboards use,
    /// and valid MCP (the 2025-11-25 spec allows `.` in a tool name).
    #[default]
    Dotted,
    /// Every `.` and `/` as `_` (`change_open`). Claude's apps and OpenAI's function calling
    /// accept only `^[a-zA-Z0-9_-]{1,64}$`, and Claude withholds a server's whole tool set
    /// over a single name that does not match.
    Underscored,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            server_name: "task-mcp".into(),
            server_version: env!("CARGO_PKG_VERSION").into(),
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            max_body_bytes: 1024 * 1024,
            max_sessions: 10_000,
            session_idle_timeout: Duration::from_secs(30 * 60),
            max_streams: 10_000,
            event_store_capacity: 256,
            sse_keepalive: Duration::from_secs(15),
            sse_retry: Duration::from_millis(1000),
            conformance_fixtures: false,
            max_sessions_per_principal: 0,
            max_streams_per_principal: 0,
            upstream_timeout: Duration::from_secs(30),
            trusted_proxies: crate::TrustedProxies::default(),
            name_client: false,
            tool_names: ToolNames::default(),
            oauth: None,
        }
    }
}
