//! The gateway: MCP clients (Streamable HTTP of every era, legacy HTTP+SSE) and
//! plain HTTP/JSON clients in front of the gRPC service. It never touches the
//! workspace; it learns the tools from the protobuf descriptors and transcodes
//! JSON to protobuf and back, so an RPC added to the service needs no edit here.
pub mod accept;
pub mod access;
pub mod app;
pub mod config;
pub mod error;
pub mod headers;
pub mod health;
pub mod mcp;
pub mod metrics;
pub mod protected_resource;
pub mod proxies;
pub mod rest;
pub mod schema;
pub mod security;
pub mod upstream;
pub mod wire_json;

pub use access::{Access, Admission};
pub use app::{AppState, router};
pub use config::{GatewayConfig, ToolNames};
pub use protected_resource::{BearerError, ProtectedResource};
pub use proxies::{TrustedProxies, TrustedRange};

/// The map for the request path's lookups: std's `HashMap` with foldhash, the hasher hashbrown
/// defaults to, seeded per map. std's SipHash cost about 100 instructions a lookup, several a
/// call (callgrind, `change.show`). The keys are server-made or bounded per session.
pub type FastMap<K, V> = foldhash::HashMap<K, V>;

/// Generated from `../proto` (clients only).
#[allow(clippy::large_enum_variant)]
pub mod pb {
    tonic::include_proto!("taskmcp.v1");
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("taskmcp_descriptor");
}
