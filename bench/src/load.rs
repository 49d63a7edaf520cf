//! Closed-loop load at fixed concurrency: every worker owns one connection
//! (or one gRPC channel) and keeps exactly one call in flight on it. After a
//! warm-up, calls that start inside the measured window are timed into an
//! HDR histogram.
use std::{
    future::Future,
    time::{Duration, Instant},
};

use anyhow::bail;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::{
    grpc::pb,
    http::{Conn, RequestTemplate},
};

pub trait Worker: Send + 'static {
    fn call(&mut self) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// An HTTP/1.1 keep-alive connection sending the same request.
pub struct HttpWorker {
    pub conn: Conn,
    pub request: RequestTemplate,
}

impl Worker for HttpWorker {
    async fn call(&mut self) -> anyhow::Result<()> {
        self.conn.call(&self.request).await.map(|_| ())
    }
}

/// A gRPC client calling ShowChange.
pub struct GrpcWorker {
    pub client: pb::changes_client::ChangesClient<tonic::transport::Channel>,
    pub slug: String,
}

impl Worker for GrpcWorker {
    async fn call(&mut self) -> anyhow::Result<()> {
        let response = self.client.show_change(pb::ShowChangeRequest { slug: self.slug.clone() }).await?;
        if response.get_ref().change.is_none() {
            bail!("ShowChange answered without a change");
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub warmup: Duration,
    pub measure: Duration,
}

pub struct Outcome {
    pub calls: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub seconds: f64,
    /// Nanoseconds.
    pub latency: Histogram<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencySummary {
    pub samples: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p95_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 120_000_000_000, 3).expect("valid bounds")
}

pub fn summarize(h: &Histogram<u64>) -> LatencySummary {
    let us = |ns: u64| ns as f64 / 1e3;
    LatencySummary {
        samples: h.len(),
        mean_us: h.mean() / 1e3,
        p50_us: us(h.value_at_quantile(0.50)),
        p90_us: us(h.value_at_quantile(0.90)),
        p95_us: us(h.value_at_quantile(0.95)),
        p99_us: us(h.value_at_quantile(0.99)),
        p999_us: us(h.value_at_quantile(0.999)),
        max_us: us(h.max()),
    }
}

pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).clamp(1_000, 120_000_000_000);
    h.record(ns).expect("clamped into bounds");
}

/// Runs every worker until the window closes; `on_measure` fires when the
/// measured part starts (to sample CPU counters), and again when it ends.
pub async fn run<W: Worker>(workers: Vec<W>, window: Window, mut on_mark: impl FnMut()) -> Outcome {
    let began = Instant::now();
    let start = began + window.warmup;
    let end = start + window.measure;
    let mut tasks = Vec::with_capacity(workers.len());
    for mut worker in workers {
        tasks.push(tokio::spawn(async move {
            let mut h = histogram();
            let (mut calls, mut errors, mut first_error) = (0u64, 0u64, None::<String>);
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let result = worker.call().await;
                let t1 = Instant::now();
                let measured = t0 >= start;
                match result {
                    Ok(()) if measured => {
                        calls += 1;
                        record(&mut h, t1 - t0);
                    }
                    Ok(()) => {}
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                        // A broken connection fails at once: stop rather than spin.
                        if errors > 100 || !measured {
                            break;
                        }
                    }
                }
            }
            (h, calls, errors, first_error)
        }));
    }
    tokio::time::sleep_until(start.into()).await;
    on_mark();
    tokio::time::sleep_until(end.into()).await;
    on_mark();
    let mut latency = histogram();
    let (mut calls, mut errors, mut first_error) = (0, 0, None);
    for task in tasks {
        let (h, c, e, fe) = task.await.expect("worker panicked");
        latency.add(&h).expect("same bounds");
        calls += c;
        errors += e;
        if first_error.is_none() {
            first_error = fe;
        }
    }
    Outcome { calls, errors, first_error, seconds: window.measure.as_secs_f64(), latency }
}
