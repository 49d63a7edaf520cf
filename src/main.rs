use std::process::ExitCode;

use clap::Parser;
use task_mcp::{
    config::{Cli, Command},
    startup::{Application, GatewayApplication, StartupError, shutdown_signal},
    telemetry,
};

#[tokio::main]
async fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Serve(settings) => {
            telemetry::init_logging(settings.log_format);
            match Application::build(settings).await {
                Ok(app) => app.run_until_stopped(shutdown_signal()).await,
                Err(e) => Err(e),
            }
        }
        Command::Gateway(settings) => {
            telemetry::init_logging(settings.log_format);
            match GatewayApplication::build(settings).await {
                Ok(app) => app.run_until_stopped(shutdown_signal()).await,
                Err(e) => Err(e),
            }
        }
    };
    exit(result)
}

fn exit(result: Result<(), StartupError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            eprintln!("task-mcp: {e}");
            ExitCode::FAILURE
        }
    }
}
