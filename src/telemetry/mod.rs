//! Logging. Structured JSON on stdout by default; every line inside a call carries
//! that call's span (method, request id) and, when traces are exported, the
//! `trace_id` and `span_id` of the request it belongs to.
//!
//! Lines are written to stdout by a thread of their own: a `write` per line on the
//! request path cost the default (`info`) configuration a third of its gRPC
//! throughput (BENCHMARKS.md, `c3`). Should stdout block (a stuck pipe), lines beyond
//! the writer's queue are dropped rather than stalling requests.
pub mod call_span;
pub mod calls;
pub mod metrics;
pub mod traces;
pub mod warn;

use tracing_subscriber::{EnvFilter, filter::LevelFilter, fmt, prelude::*};

use crate::config::LogFormat;

/// Target of the lines about the process as a whole: listening (with the bound addresses,
/// which deployments using port 0 wait for), signals, draining, stopped. They stay at `info`
/// whatever `RUST_LOG` says, unless it names this target or turns everything `off`:
/// `RUST_LOG=warn`, which the README recommends for throughput, used to hide "listening".
pub const LIFECYCLE: &str = "task_mcp::lifecycle";

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
    let spec = std::env::var("RUST_LOG").ok();
    let (filter, refused) = log_filter(spec.as_deref());
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
    if let (Some(spec), Some(error)) = (spec, refused) {
        tracing::warn!(target: LIFECYCLE, rust_log = %spec, %error, "RUST_LOG is not a valid filter; logging at info");
    }
    traces.log_status();
    Logging { traces, _writer: writer }
}

/// The filter `RUST_LOG` asks for (`info` when unset or empty), with the lifecycle lines
/// kept; and why `RUST_LOG` was refused, if it was, so the fallback is not silent.
fn log_filter(spec: Option<&str>) -> (EnvFilter, Option<String>) {
    let (filter, refused) = match spec.map(str::trim).filter(|s| !s.is_empty()) {
        None => (EnvFilter::new("info"), None),
        Some(spec) => match EnvFilter::try_new(spec) {
            Ok(filter) => (filter, None),
            Err(e) => (EnvFilter::new("info"), Some(e.to_string())),
        },
    };
    let names_lifecycle = spec.is_some_and(|s| s.contains(LIFECYCLE));
    if names_lifecycle || filter.max_level_hint() == Some(LevelFilter::OFF) {
        return (filter, refused);
    }
    match format!("{LIFECYCLE}=info").parse() {
        Ok(directive) => (filter.add_directive(directive), refused),
        Err(_) => (filter, refused),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_lines_survive_a_quieter_level_but_not_off_or_a_named_target() {
        let (warn, refused) = log_filter(Some("warn"));
        assert!(refused.is_none());
        assert!(warn.to_string().contains("task_mcp::lifecycle=info"), "{warn}");
        let (off, _) = log_filter(Some("off"));
        assert!(!off.to_string().contains("lifecycle"), "{off}");
        let (named, _) = log_filter(Some("warn,task_mcp::lifecycle=error"));
        assert!(!named.to_string().contains("lifecycle=info"), "{named}");
    }

    #[test]
    fn an_invalid_rust_log_is_reported_not_silently_replaced() {
        let (filter, refused) = log_filter(Some("bogus=="));
        assert!(refused.is_some(), "{filter}");
        assert!(filter.to_string().contains("info"), "{filter}");
        assert!(log_filter(None).1.is_none());
        assert!(log_filter(Some("  ")).1.is_none());
    }
}
