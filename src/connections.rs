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
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use pin_project_lite::pin_project;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::{OwnedSemaphorePermit, Semaphore},
};

use crate::telemetry::warn::WarnEvery;

/// Descriptors kept back from the listeners: the workspace's files, inotify, the metrics
/// listener, the log writer, the gateway's upstream channel.
const RESERVED_DESCRIPTORS: u64 = 256;

/// The open connections one listener may have.
#[derive(Clone)]
pub struct ConnectionLimit {
    permits: Arc<Semaphore>,
    max: usize,
    listener: &'static str,
    warned: Arc<WarnEvery>,
}

impl ConnectionLimit {
    pub fn new(listener: &'static str, max: usize) -> Self {
        ConnectionLimit { permits: Arc::new(Semaphore::new(max)), max, listener, warned: Arc::default() }
    }

    /// The permit an accepted connection holds while it is open; `None` when the listener is
    /// full (the caller closes the connection). A warning says so at most once a minute.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        let permit = Arc::clone(&self.permits).try_acquire_owned().ok();
        if permit.is_none() && self.warned.allow(Instant::now()) {
            tracing::warn!(
                listener = self.listener,
                max = self.max,
                "connection limit reached; closing new connections"
            );
        }
        permit
    }
}

/// `--max-connections` unset: what the process's open-file limit leaves for each of the two
/// listeners once [`RESERVED_DESCRIPTORS`] are kept back (at least 16).
pub fn default_max_connections() -> usize {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct it is given and reads nothing else.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 { limit.rlim_cur } else { 1024 };
    let per_listener = soft.saturating_sub(RESERVED_DESCRIPTORS) / 2;
    usize::try_from(per_listener).unwrap_or(usize::MAX).max(16)
}

pin_project! {
    /// A TCP connection that gives its place under the limit back when it closes.
    pub struct LimitedStream {
        #[pin]
        inner: TcpStream,
        _permit: OwnedSemaphorePermit,
    }
}

impl LimitedStream {
    pub fn new(inner: TcpStream, permit: OwnedSemaphorePermit) -> Self {
        LimitedStream { inner, _permit: permit }
    }

    pub fn get_ref(&self) -> &TcpStream {
        &self.inner
    }
}

impl AsyncRead for LimitedStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

/// tonic reads the peer's address (for `TcpConnectInfo`, which the auth throttle keys on).
impl tonic::transport::server::Connected for LimitedStream {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_listener_admits_again_once_a_connection_closes() {
        let limit = ConnectionLimit::new("test", 2);
        let first = limit.admit().unwrap();
        let _second = limit.admit().unwrap();
        assert!(limit.admit().is_none());
        drop(first);
        assert!(limit.admit().is_some());
    }

    #[test]
    fn the_default_leaves_descriptors_for_the_rest() {
        let max = default_max_connections() as u64;
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
        assert!(max >= 16);
        assert!(max * 2 + RESERVED_DESCRIPTORS <= limit.rlim_cur.max(16 * 2 + RESERVED_DESCRIPTORS));
    }
}
