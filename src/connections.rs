//! A bound on the open connections of each listener. Nothing is authenticated before a request
//! arrives, so without it anyone could open connections until the process ran out of file
//! descriptors: 1,100 silent connections to the HTTP port of a server with the common soft
//! limit of 1,024 (systemd's default) stopped every listener from accepting (`EMFILE`), gRPC
//! and readiness probes included, and the workspace could open no file. With the bound, a full
//! listener closes each new connection at once, and the other listener and the disk keep the
//! descriptors they need.
use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::{OwnedSemaphorePermit, Semaphore},
};

use crate::telemetry::warn::WarnEvery;

/// Descriptors kept back from the listeners: the workspace's files, inotify, the metrics
/// listener, the log writer, the gateway's upstream channel.
const RESERVED_DESCRIPTORS: u64 = 256;

/// A listener with a connection cap: its `listener` label in the metrics, its name in the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Grpc,
    Http,
}

impl Listener {
    /// The `listener` attribute of the `listener.*` instruments (`monitoring/metrics.toml`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Listener::Grpc => "grpc",
            Listener::Http => "http",
        }
    }

    /// As the warnings and the other listener logs spell it.
    const fn log_name(self) -> &'static str {
        match self {
            Listener::Grpc => "gRPC",
            Listener::Http => "HTTP",
        }
    }
}

/// The open connections one listener may have.
#[derive(Clone)]
pub struct ConnectionLimit {
    permits: Arc<Semaphore>,
    max: usize,
    listener: Listener,
    /// Connections closed because the listener was full, since start. An atomic the metrics
    /// read at each collection: a flood at the cap pays one addition per connection, not an
    /// SDK attribute lookup.
    refused: Arc<AtomicU64>,
    warned: Arc<WarnEvery>,
}

impl ConnectionLimit {
    pub fn new(listener: Listener, max: usize) -> Self {
        ConnectionLimit {
            permits: Arc::new(Semaphore::new(max)),
            max,
            listener,
            refused: Arc::default(),
            warned: Arc::default(),
        }
    }

    /// The permit an accepted connection holds while it is open; `None` when the listener is
    /// full (the caller closes the connection). A warning says so at most once a minute.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        let permit = Arc::clone(&self.permits).try_acquire_owned().ok();
        if permit.is_none() {
            self.refused.fetch_add(1, Ordering::Relaxed);
            if self.warned.allow(Instant::now()) {
                tracing::warn!(
                    listener = self.listener.log_name(),
                    max = self.max,
                    "connection limit reached; closing new connections"
                );
            }
        }
        permit
    }

    pub fn listener(&self) -> Listener {
        self.listener
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections holding a place now. Read from the semaphore, which counts them anyway, so
    /// the gauge costs an accepted connection nothing.
    pub fn open(&self) -> usize {
        self.max.saturating_sub(self.permits.available_permits())
    }

    /// Connections refused since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// The default cap's ceiling per listener, whatever the open-file limit: 32,768 silent
/// connections hold about 75 MiB, idle keep-alive ones about 380 MiB (BENCHMARKS.md), well
/// above the 10,000 streams `--max-streams` allows by default.
const DEFAULT_CEILING: u64 = 32_768;

/// The most the soft open-file limit is raised to: Linux refuses more than `fs.nr_open`,
/// 1,048,576 by default, even under an unlimited hard limit.
const RAISE_CEILING: u64 = 1 << 20;

/// `--max-connections` unset: what the process's open-file limit leaves for each of the two
/// listeners once [`RESERVED_DESCRIPTORS`] are kept back (at least 16, at most
/// [`DEFAULT_CEILING`]).
pub fn default_max_connections() -> usize {
    let soft = open_file_limit().map_or(1024, |l| l.rlim_cur);
    let per_listener = (soft.saturating_sub(RESERVED_DESCRIPTORS) / 2).clamp(16, DEFAULT_CEILING);
    usize::try_from(per_listener).unwrap_or(16)
}

/// Warns when `--max-connections` on `listeners` listeners needs more descriptors than the
/// open-file limit holds (after [`raise_open_file_limit`]): the cap exists so that a flood of
/// connections cannot leave the process without a descriptor for its workspace, and a cap above
/// the limit brings that failure back. The default always fits.
pub fn warn_if_over_open_file_limit(listeners: u64, max_connections: usize) {
    let Some(limit) = open_file_limit() else { return };
    let needed = descriptors_needed(listeners, max_connections);
    if needed > limit.rlim_cur {
        tracing::warn!(
            max_connections,
            listeners,
            needed,
            open_file_limit = limit.rlim_cur,
            "--max-connections needs more open files than the process may have: a flood of connections can \
             leave it none for the workspace; lower the cap or raise the limit (LimitNOFILE=, ulimit -n)"
        );
    }
}

/// Descriptors `listeners` full listeners take, with [`RESERVED_DESCRIPTORS`] kept back.
fn descriptors_needed(listeners: u64, max_connections: usize) -> u64 {
    listeners.saturating_mul(u64::try_from(max_connections).unwrap_or(u64::MAX)).saturating_add(RESERVED_DESCRIPTORS)
}

/// Raises the soft open-file limit to the hard one, as servers do (Go's runtime does it for
/// every program): systemd and most shells start services at a soft 1,024 under a hard limit of
/// 524,288, and 1,024 descriptors is about 380 connections per listener once the rest is kept
/// back. Returns the limits before and after when it raised them.
pub fn raise_open_file_limit() -> Option<(u64, u64)> {
    let limit = open_file_limit()?;
    let target = limit.rlim_max.min(RAISE_CEILING);
    if limit.rlim_cur >= target {
        return None;
    }
    let raised = libc::rlimit { rlim_cur: target, rlim_max: limit.rlim_max };
    // SAFETY: setrlimit reads the struct it is given and nothing else.
    (unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0).then_some((limit.rlim_cur, target))
}

fn open_file_limit() -> Option<libc::rlimit> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct it is given and reads nothing else.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0).then_some(limit)
}

/// How long a closed connection keeps reading what its peer still sends (see [`LimitedStream`]).
pub const LINGER: Duration = Duration::from_secs(5);

/// An accepted TCP connection: it holds its place under the listener's limit until it is gone,
/// and it closes without losing the server's last answer.
///
/// A server that answers before reading the whole request (a 413 for a declared body over the
/// cap, a request cut off by a timeout) and then closes with the rest of the request unread
/// makes the kernel send a reset, not a FIN. The reset can overtake the answer: a client still
/// sending sees "connection reset" or "broken pipe", not the 413 (`tests/abuse.rs` met it about
/// once in twelve runs). As RFC 9112 §9.6 asks, a connection that the server closes first is
/// shut for writing (hyper does that) and then kept reading, what arrives thrown away, until
/// the peer closes too or [`LINGER`] has passed; it keeps its place under the limit meanwhile.
pub struct LimitedStream {
    /// `None` once dropped (handed to the lingering task).
    inner: Option<TcpStream>,
    permit: Option<OwnedSemaphorePermit>,
    /// The peer closed its side (a read found the end): nothing more will come, no lingering.
    peer_closed: bool,
}

impl LimitedStream {
    /// `permit`: the connection's place under its listener's limit (`None`: an unlimited listener).
    pub fn new(inner: TcpStream, permit: Option<OwnedSemaphorePermit>) -> Self {
        LimitedStream { inner: Some(inner), permit, peer_closed: false }
    }

    pub fn get_ref(&self) -> Option<&TcpStream> {
        self.inner.as_ref()
    }

    fn stream(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        self.inner.as_mut().map(Pin::new).ok_or_else(|| io::ErrorKind::NotConnected.into())
    }
}

impl Drop for LimitedStream {
    fn drop(&mut self) {
        if self.peer_closed {
            return;
        }
        let (Some(stream), Ok(runtime)) = (self.inner.take(), tokio::runtime::Handle::try_current()) else { return };
        let permit = self.permit.take();
        runtime.spawn(async move {
            linger(stream).await;
            drop(permit);
        });
    }
}

/// Shuts `stream` for writing and reads until the peer closes or [`LINGER`] has passed.
async fn linger(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = stream.shutdown().await;
    let mut scrap = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER, async { while let Ok(1..) = stream.read(&mut scrap).await {} }).await;
}

impl AsyncRead for LimitedStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = ready!(this.stream()?.poll_read(cx, buf));
        if read.is_ok() && buf.filled().len() == before && buf.remaining() > 0 {
            this.peer_closed = true;
        }
        Poll::Ready(read)
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().stream()?.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().stream()?.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(TcpStream::is_write_vectored)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().stream()?.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().stream()?.poll_shutdown(cx)
    }
}

/// tonic reads the peer's address (for `TcpConnectInfo`, which the auth throttle keys on).
impl tonic::transport::server::Connected for LimitedStream {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        match &self.inner {
            Some(stream) => stream.connect_info(),
            None => tonic::transport::server::TcpConnectInfo { local_addr: None, remote_addr: None },
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn a_connection_closed_with_the_request_unread_still_delivers_its_answer() {
        let (mut client, server) = pair().await;
        let limit = ConnectionLimit::new(Listener::Http, 1);
        let mut server = LimitedStream::new(server, limit.admit());
        server.write_all(b"413").await.unwrap();
        server.shutdown().await.unwrap();
        drop(server);
        // More than the socket buffers hold: the server's side is gone before it is all sent.
        client.write_all(&vec![b' '; 32 << 20]).await.expect("the body is taken, not reset");
        assert_eq!(limit.open(), 1, "a lingering connection keeps its place");
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.expect("the answer, then the end");
        assert_eq!(answer, b"413");
        drop(client);
        tokio::time::timeout(Duration::from_secs(2), async {
            while limit.open() > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the place is given back once the peer closes");
    }

    #[tokio::test]
    async fn a_connection_its_peer_closed_first_does_not_linger() {
        let (client, server) = pair().await;
        let limit = ConnectionLimit::new(Listener::Http, 1);
        let mut server = LimitedStream::new(server, limit.admit());
        drop(client);
        assert_eq!(server.read(&mut [0; 16]).await.unwrap(), 0);
        drop(server);
        assert_eq!(limit.open(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn lingering_ends_after_its_time_with_the_peer_still_open() {
        let (_client, server) = pair().await;
        let limit = ConnectionLimit::new(Listener::Http, 1);
        drop(LimitedStream::new(server, limit.admit()));
        tokio::time::sleep(LINGER - Duration::from_millis(10)).await;
        assert_eq!(limit.open(), 1);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(limit.open(), 0);
    }

    #[test]
    fn a_full_listener_admits_again_once_a_connection_closes() {
        let limit = ConnectionLimit::new(Listener::Http, 2);
        let first = limit.admit().unwrap();
        let _second = limit.admit().unwrap();
        assert_eq!((limit.open(), limit.refused()), (2, 0));
        assert!(limit.admit().is_none());
        assert_eq!((limit.open(), limit.refused()), (2, 1));
        drop(first);
        assert_eq!(limit.open(), 1);
        let _third = limit.admit().unwrap();
        assert_eq!((limit.open(), limit.refused()), (2, 1));
    }

    #[test]
    fn the_default_leaves_descriptors_for_the_rest() {
        let max = default_max_connections() as u64;
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
        assert!(max >= 16);
        assert!(max * 2 + RESERVED_DESCRIPTORS <= limit.rlim_cur.max(16 * 2 + RESERVED_DESCRIPTORS));
    }

    #[test]
    fn descriptors_needed_count_both_listeners_and_the_reserve() {
        assert_eq!(descriptors_needed(2, 16_384), 2 * 16_384 + RESERVED_DESCRIPTORS);
        assert_eq!(descriptors_needed(1, 100), 100 + RESERVED_DESCRIPTORS);
        assert_eq!(descriptors_needed(2, usize::MAX), u64::MAX);
        // The default fits the limit it was derived from.
        let soft = open_file_limit().map_or(1024, |l| l.rlim_cur);
        assert!(descriptors_needed(2, default_max_connections()) <= soft.max(2 * 16 + RESERVED_DESCRIPTORS));
    }
}
