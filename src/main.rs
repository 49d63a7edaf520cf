use std::process::ExitCode;

use clap::Parser;
use task_mcp::{
    config::{Cli, Command},
    startup::{Application, shutdown_signal},
    telemetry,
};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(settings) => {
            telemetry::init_logging(settings.log_format);
            let result = match Application::build(settings).await {
                Ok(app) => app.run_until_stopped(shutdown_signal()).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "server failed");
                    eprintln!("task-mcp: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
