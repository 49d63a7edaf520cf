use std::process::ExitCode;

use clap::Parser;
use task_mcp::{
    config::{Cli, Command},
    startup::{Application, GatewayApplication, StartupError, shutdown_signal},
    telemetry,
};

// jemalloc rather than glibc malloc: a gateway call makes ~180 small allocations, which cost
// 15% fewer instructions here, and an idle SSE stream holds less memory (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let raised = task_mcp::connections::raise_open_file_limit();
    let (result, logging) = match Cli::parse().command {
        Command::Serve(settings) => {
            let logging = telemetry::init_logging(settings.log_format);
            log_raised(raised);
            warn_unknown_variables();
            let result = match Application::build(settings).await {
                Ok(app) => app.run_until_stopped(shutdown_signal).await,
                Err(e) => Err(e),
            };
            (result, logging)
        }
        Command::Gateway(settings) => {
            let logging = telemetry::init_logging(settings.log_format);
            log_raised(raised);
            warn_unknown_variables();
            let result = match GatewayApplication::build(settings).await {
                Ok(app) => app.run_until_stopped(shutdown_signal).await,
                Err(e) => Err(e),
            };
            (result, logging)
        }
    };
    // The last spans (the drain's included) leave before the runtime goes.
    logging.traces.shutdown().await;
    // The log writer flushes when the rest of `logging` drops, after this last line.
    exit(result)
}

fn exit(result: Result<(), StartupError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(target: telemetry::LIFECYCLE, error = %e, "server failed");
            eprintln!("task-mcp: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Warns of every `TASK_MCP_*` variable no flag reads (a typo keeps the default silently).
fn warn_unknown_variables() {
    let names = std::env::vars_os().filter_map(|(name, _)| name.into_string().ok());
    for variable in task_mcp::config::unknown_variables(names) {
        tracing::warn!(target: telemetry::LIFECYCLE, %variable, "no flag reads this environment variable; ignored");
    }
}

fn log_raised(raised: Option<(u64, u64)>) {
    if let Some((from, to)) = raised {
        tracing::info!(target: telemetry::LIFECYCLE, from, to, "open-file limit raised to the hard limit");
    }
}
