//! Logging. Structured JSON on stdout by default; every line inside a call carries
//! that call's span (method, request id) and, when traces are exported, the
//! `trace_id` and `span_id` of the request it belongs to.
pub mod metrics;
pub mod traces;
pub mod warn;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::LogFormat;

/// Installs the subscriber (logs, and the span exporter when `OTEL_*` asks for
/// one). Call inside the Tokio runtime; keep the result and call
/// [`traces::Traces::shutdown`] at exit so the last spans are sent.
pub fn init_logging(format: LogFormat) -> traces::Traces {
    let traces = traces::Traces::init();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let registry = registry.with(traces.layer());
    // `try_init` so that tests which build the app twice in one process do not panic.
    let _ = match format {
        LogFormat::Json => registry
            .with(fmt::layer().fmt_fields(fmt::format::JsonFields::new()).event_format(traces::WithTraceIds(
                fmt::format().json().flatten_event(true).with_current_span(true).with_span_list(false),
            )))
            .try_init(),
        LogFormat::Text => registry.with(fmt::layer()).try_init(),
    };
    traces.log_status();
    traces
}
