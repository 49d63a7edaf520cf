//! Settings from flags and environment. Every flag has a `TASK_MCP_*` variable;
//! the README's configuration table is this struct.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "task-mcp", version, about = "Spec-driven change management for AI agents, over gRPC and MCP")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(Settings),
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

    /// HTTP listen address of the MCP gateway (served from the gateway release on).
    #[arg(long, env = "TASK_MCP_HTTP_LISTEN", default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub http_listen: SocketAddr,

    /// Listen address of the Prometheus metrics endpoint (served from the telemetry release on).
    #[arg(long, env = "TASK_MCP_METRICS_LISTEN", default_value = "127.0.0.1:9464", value_name = "ADDR")]
    pub metrics_listen: SocketAddr,

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

    /// File with one `TOKEN` or `NAME=TOKEN` per line (`#` comments allowed).
    #[arg(long, env = "TASK_MCP_AUTH_TOKEN_FILE", value_name = "PATH")]
    pub auth_token_file: Option<PathBuf>,

    /// Allow binding a non-loopback address with no tokens configured.
    #[arg(long, env = "TASK_MCP_ALLOW_UNAUTHENTICATED_PUBLIC")]
    pub allow_unauthenticated_public: bool,

    /// Sustained calls per second per principal; 0 disables rate limiting.
    #[arg(long, env = "TASK_MCP_RATE_LIMIT_PER_SECOND", default_value_t = 50, value_name = "N")]
    pub rate_limit_per_second: u32,

    /// Calls a principal may make at once before the sustained rate applies.
    #[arg(long, env = "TASK_MCP_RATE_LIMIT_BURST", default_value_t = 100, value_name = "N")]
    pub rate_limit_burst: u32,

    /// On SIGTERM/SIGINT, how long in-flight calls may take to finish.
    #[arg(long, env = "TASK_MCP_SHUTDOWN_GRACE_SECONDS", default_value_t = 10, value_name = "SECONDS")]
    pub shutdown_grace_seconds: u64,

    /// Largest resource ReadResource serves, in bytes.
    #[arg(long, env = "TASK_MCP_MAX_RESOURCE_BYTES", default_value_t = 4 * 1024 * 1024, value_name = "BYTES")]
    pub max_resource_bytes: u64,

    /// Log format; the level comes from RUST_LOG (default `info`).
    #[arg(long, env = "TASK_MCP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
}

impl Settings {
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_seconds)
    }

    /// The listeners that would be reachable from other hosts.
    pub fn public_addrs(&self) -> Vec<SocketAddr> {
        [self.grpc_listen, self.http_listen, self.metrics_listen]
            .into_iter()
            .filter(|a| !a.ip().is_loopback())
            .collect()
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
        }
    }

    #[test]
    fn defaults_are_loopback() {
        let s = parse(&[]);
        assert!(s.public_addrs().is_empty());
        assert_eq!(s.grpc_listen.to_string(), "127.0.0.1:50051");
        assert!(!s.allow_unauthenticated_public);
    }

    #[test]
    fn repeated_tokens_and_public_addr() {
        let s = parse(&["--auth-token", "a=1", "--auth-token", "b=2", "--grpc-listen", "0.0.0.0:0"]);
        assert_eq!(s.auth_tokens.len(), 2);
        assert_eq!(s.public_addrs().len(), 1);
    }
}
