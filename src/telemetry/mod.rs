//! Logging. Structured JSON on stdout by default; every line inside a call carries
//! that call's span (method, request id) and, when traces are exported, the
//! `trace_id` and `span_id` of the request it belongs to.
//!
//! Lines are written to stdout by a thread of their own: a `write` per line on the
//! request path cost the default (`info`) configuration a third of its gRPC
//! throughput (BENCHMARKS.md, `c3`). Should stdout block (a stuck pipe), lines beyond
//! the writer's queue are dropped rather than stalling requests.
pub mod calls;
pub mod metrics;
pub mod traces;
pub mod warn;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::LogFormat;

/// What `init_logging` set up; dropping it flushes the log lines still queued.
pub struct Logging {
    pub traces: traces::Traces,
    _writer: tracing_appender::non_blocking::WorkerGuard,
}

/// Installs the subscriber (logs, and the span exporter when `OTEL_*` asks for
/// one). Call inside the Tokio runtime; keep the result, call
/// [`traces::Traces::shutdown`] at exit so the last spans are sent, and drop it
/// last so the last lines are written.
pub fn init_logging(format: LogFormat) -> Logging {
    let traces = traces::Traces::init();
    let (stdout, writer) = tracing_appender::non_blocking(std::io::stdout());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let registry = registry.with(traces.layer());
    // `try_init` so that tests which build the app twice in one process do not panic.
    let _ = match format {
        LogFormat::Json => registry
            .with(fmt::layer().with_writer(stdout).fmt_fields(fmt::format::JsonFields::new()).event_format(
                traces::WithTraceIds(
                    fmt::format().json().flatten_event(true).with_current_span(true).with_span_list(false),
                ),
            ))
            .try_init(),
        LogFormat::Text => registry.with(fmt::layer().with_writer(stdout)).try_init(),
    };
    traces.log_status();
    Logging { traces, _writer: writer }
}
