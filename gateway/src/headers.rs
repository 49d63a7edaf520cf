//! The non-standard header names the gateway reads and writes, each built once. A lookup by
//! `&str` parses and classifies the name again on every request (callgrind: about 1% of a
//! `change.show` call went to that).
use http::HeaderName;

/// MCP Streamable HTTP: the session a request belongs to.
pub const MCP_SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
/// MCP Streamable HTTP: the protocol version after initialization.
pub const MCP_PROTOCOL_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
/// MCP 2026-07-28: the JSON-RPC method and tool (or resource) name, mirrored from the body.
pub const MCP_METHOD: HeaderName = HeaderName::from_static("mcp-method");
pub const MCP_NAME: HeaderName = HeaderName::from_static("mcp-name");
/// SSE resumption (the event id the client saw last).
pub const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");
/// The request id, taken from the caller or made here, forwarded to the service.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// W3C trace context.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// gRPC's deadline, which MCP requests set as REST ones do.
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
/// gRPC's status code, in a trailers-only answer's headers or in the trailers.
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// W3C trace context: the vendors' part, dropped with a `traceparent` that is not used.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
