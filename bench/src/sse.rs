//! SSE: many concurrent standalone streams (memory per idle session and per
//! stream, from the server's VmRSS), and the latency of the first event.
use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::{
    deploy::{self, Deploy, DeployOptions},
    http::{self, Conn},
    load::{self, LatencySummary},
};

#[derive(Debug, Clone, Serialize)]
pub struct MemoryResult {
    pub server: Deploy,
    pub sessions: usize,
    pub streams_open: usize,
    /// Streams the server itself reports open (`/health/metrics`), when it can say.
    pub server_reported_streams: Option<u64>,
    pub rss_baseline_kib: u64,
    pub rss_sessions_kib: u64,
    pub rss_streams_kib: u64,
    pub rss_after_hold_kib: u64,
    pub kib_per_idle_session: f64,
    pub kib_per_stream: f64,
    pub seconds_to_create_sessions: f64,
    pub seconds_to_open_streams: f64,
    pub hold_seconds: f64,
    /// GET sent → first event, while every stream was being opened (`opening` in flight at once).
    pub first_event_during_open: LatencySummary,
    pub opening_concurrency: usize,
}

/// Sessions over `conns` keep-alive connections, `n` in all.
async fn create_sessions(addr: SocketAddr, n: usize, conns: usize) -> anyhow::Result<Vec<String>> {
    let mut tasks = Vec::new();
    for i in 0..conns {
        let share = n / conns + usize::from(i < n % conns);
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(addr).await?;
            let mut ids = Vec::with_capacity(share);
            for _ in 0..share {
                ids.push(http::open_session(&mut conn).await?);
            }
            anyhow::Ok(ids)
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}

/// A held stream: the connection's task and the unread rest of the body.
struct Held {
    _conn: Conn,
    _body: Incoming,
}

async fn open_stream(addr: SocketAddr, session: &str) -> anyhow::Result<(Held, Duration)> {
    let mut conn = Conn::connect(addr).await?;
    let request = http::standalone_stream(session);
    let t0 = Instant::now();
    let res = conn.send(&request).await?;
    if res.status() != ::http::StatusCode::OK {
        let status = res.status();
        let body = res.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        bail!("GET /mcp answered {status}: {}", String::from_utf8_lossy(&body));
    }
    let mut body = res.into_body();
    let (at, _) = http::first_data(&mut body).await?;
    Ok((Held { _conn: conn, _body: body }, at - t0))
}

async fn reported_streams(addr: SocketAddr) -> Option<u64> {
    let mut conn = Conn::connect(addr).await.ok()?;
    let (_, body) = conn.call(&http::RequestTemplate::get("/health/metrics", "application/json")).await.ok()?;
    let v: Value = serde_json::from_slice(&body).ok()?;
    v.get("streams").and_then(Value::as_u64)
}

async fn settle() {
    tokio::time::sleep(Duration::from_secs(2)).await;
}

pub async fn memory(
    deploy: Deploy,
    n: usize,
    opening: usize,
    hold: Duration,
    o: &DeployOptions<'_>,
) -> anyhow::Result<MemoryResult> {
    let running = deploy::start(deploy, o).await?;
    let addr = running.http;
    let server = running.http_server();
    // Warm the allocator and the runtime with a few sessions, calls and streams first.
    let warm = create_sessions(addr, 64, 8).await?;
    for s in warm.iter().take(16) {
        drop(open_stream(addr, s).await?);
    }
    settle().await;
    let rss_baseline_kib = server.rss_kib()?;

    let t = Instant::now();
    let sessions = create_sessions(addr, n, 64).await?;
    let seconds_to_create_sessions = t.elapsed().as_secs_f64();
    settle().await;
    let rss_sessions_kib = server.rss_kib()?;

    let t = Instant::now();
    let gate = Arc::new(Semaphore::new(opening));
    let mut tasks = Vec::with_capacity(n);
    for s in sessions {
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            open_stream(addr, &s).await
        }));
    }
    let mut held = Vec::with_capacity(n);
    let mut first = load::histogram();
    for task in tasks {
        let (h, d) = task.await?.context("opening a stream")?;
        load::record(&mut first, d);
        held.push(h);
    }
    let seconds_to_open_streams = t.elapsed().as_secs_f64();
    settle().await;
    let rss_streams_kib = server.rss_kib()?;
    let server_reported_streams = reported_streams(addr).await;
    let t = Instant::now();
    tokio::time::sleep(hold).await;
    let rss_after_hold_kib = server.rss_kib()?;
    let hold_seconds = t.elapsed().as_secs_f64();
    let streams_open = held.len();
    drop(held);
    running.stop();
    Ok(MemoryResult {
        server: deploy,
        sessions: n,
        streams_open,
        server_reported_streams,
        rss_baseline_kib,
        rss_sessions_kib,
        rss_streams_kib,
        rss_after_hold_kib,
        kib_per_idle_session: (rss_sessions_kib as f64 - rss_baseline_kib as f64) / n as f64,
        kib_per_stream: (rss_streams_kib as f64 - rss_sessions_kib as f64) / streams_open as f64,
        seconds_to_create_sessions,
        seconds_to_open_streams,
        hold_seconds,
        first_event_during_open: load::summarize(&first),
        opening_concurrency: opening,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct FirstEventResult {
    pub server: Deploy,
    pub what: &'static str,
    pub concurrency: usize,
    pub samples: u64,
    /// Request sent → first SSE event (the priming event where the server sends one).
    pub first_event: LatencySummary,
    /// Request sent → the stream's last byte (tools/call: the result event), where the stream ends.
    pub complete: Option<LatencySummary>,
}

/// GET /mcp on a fresh connection per sample (connect not timed), one at a time.
pub async fn first_event_get(
    deploy: Deploy,
    samples: usize,
    o: &DeployOptions<'_>,
) -> anyhow::Result<FirstEventResult> {
    let running = deploy::start(deploy, o).await?;
    let addr = running.http;
    let sessions = create_sessions(addr, samples, 8).await?;
    let mut h = load::histogram();
    // Warm-up: a few streams not counted.
    for s in sessions.iter().take(20) {
        drop(open_stream(addr, s).await?);
    }
    for s in &sessions {
        let (held, d) = open_stream(addr, s).await?;
        load::record(&mut h, d);
        drop(held);
    }
    running.stop();
    Ok(FirstEventResult {
        server: deploy,
        what: "GET /mcp standalone stream: request sent -> first event (priming `id:`), new connection each",
        concurrency: 1,
        samples: h.len(),
        first_event: load::summarize(&h),
        complete: None,
    })
}

/// tools/call change.show with a progress token (answered on SSE), `concurrency`
/// keep-alive connections with a session each, closed loop, `samples` calls at least.
pub async fn first_event_call(
    deploy: Deploy,
    concurrency: usize,
    samples: usize,
    o: &DeployOptions<'_>,
) -> anyhow::Result<FirstEventResult> {
    let running = deploy::start(deploy, o).await?;
    let addr = running.http;
    let per_worker = samples.div_ceil(concurrency);
    let warmup = 50usize;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(addr).await?;
            let session = http::open_session(&mut conn).await?;
            let request = http::session_call_streamed(&session, "change.show", json!({"slug": deploy::SLUG}));
            let (mut first, mut full) = (load::histogram(), load::histogram());
            for i in 0..warmup + per_worker {
                let t0 = Instant::now();
                let res = conn.send(&request).await?;
                let ct = res.headers().get(::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
                if res.status() != ::http::StatusCode::OK || !ct.starts_with("text/event-stream") {
                    bail!("tools/call with progressToken answered {} {ct:?}", res.status());
                }
                let mut body = res.into_body();
                let (at, _) = http::first_data(&mut body).await?;
                let mut text = Vec::new();
                while let Some(frame) = body.frame().await {
                    if let Ok(data) = frame?.into_data() {
                        text.extend_from_slice(&data);
                    }
                }
                let t1 = Instant::now();
                if i == 0 && !String::from_utf8_lossy(&text).contains("\"isError\":false") {
                    bail!("streamed call did not succeed: {}", String::from_utf8_lossy(&text));
                }
                if i >= warmup {
                    load::record(&mut first, at - t0);
                    load::record(&mut full, t1 - t0);
                }
            }
            anyhow::Ok((first, full))
        }));
    }
    let (mut first, mut full) = (load::histogram(), load::histogram());
    for t in tasks {
        let (a, b) = t.await??;
        first.add(&a)?;
        full.add(&b)?;
    }
    running.stop();
    Ok(FirstEventResult {
        server: deploy,
        what: "tools/call change.show with progressToken (SSE answer): request sent -> first event / -> result",
        concurrency,
        samples: full.len(),
        first_event: load::summarize(&first),
        complete: Some(load::summarize(&full)),
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct IdleConnectionResult {
    pub server: Deploy,
    pub connections: usize,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    /// What an idle HTTP/1.1 keep-alive connection costs (one `GET /health/live` done on it):
    /// the part of a stream's memory that is the connection rather than the stream.
    pub kib_per_connection: f64,
}

/// `n` keep-alive connections, each after one small request, held idle.
pub async fn idle_connections(
    deploy: Deploy,
    n: usize,
    opening: usize,
    o: &DeployOptions<'_>,
) -> anyhow::Result<IdleConnectionResult> {
    let running = deploy::start(deploy, o).await?;
    let addr = running.http;
    let live = http::RequestTemplate::get("/health/live", "application/json");
    for _ in 0..64 {
        Conn::connect(addr).await?.call(&live).await?;
    }
    settle().await;
    let rss_before_kib = running.http_server().rss_kib()?;
    let gate = Arc::new(Semaphore::new(opening));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let (gate, live) = (gate.clone(), live.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let mut conn = Conn::connect(addr).await?;
            conn.call(&live).await?;
            anyhow::Ok(conn)
        }));
    }
    let mut held = Vec::with_capacity(n);
    for t in tasks {
        held.push(t.await??);
    }
    settle().await;
    let rss_after_kib = running.http_server().rss_kib()?;
    drop(held);
    running.stop();
    Ok(IdleConnectionResult {
        server: deploy,
        connections: n,
        rss_before_kib,
        rss_after_kib,
        kib_per_connection: (rss_after_kib as f64 - rss_before_kib as f64) / n as f64,
    })
}
