//! Logging. Structured JSON on stdout by default; every line inside a call carries
//! that call's span (method, request id).
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::LogFormat;

pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    // `try_init` so that tests which build the app twice in one process do not panic.
    let _ = match format {
        LogFormat::Json => registry
            .with(fmt::layer().json().flatten_event(true).with_current_span(true).with_span_list(false))
            .try_init(),
        LogFormat::Text => registry.with(fmt::layer()).try_init(),
    };
}
