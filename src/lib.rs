//! task-mcp: spec-driven changes in an OpenSpec workspace, served over gRPC.
pub mod domain;
pub mod error;

/// Generated from `proto/taskmcp/v1`.
#[allow(clippy::large_enum_variant)]
pub mod pb {
    tonic::include_proto!("taskmcp.v1");
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("taskmcp_descriptor");
}
pub mod access;
pub mod auth;
pub mod config;
pub mod connections;
pub mod deferred_writes;
pub mod grpc;
pub mod oauth;
pub mod rate_limit;
pub mod startup;
pub mod telemetry;
pub mod workspace;
