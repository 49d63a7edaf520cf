//! A connection whose writes wait one turn of the scheduler: the answer is ready, but it leaves
//! after the other tasks that are ready now have run, so the answers of many connections leave
//! together rather than one between each two requests.
//!
//! Why: on loopback, and on the veth pair of a pod, a `write` delivers the bytes to the reader
//! in the writer's own system call, and wakes the reader if it sleeps. A client that waits on
//! its connections sleeps between answers that leave one at a time, so each answer pays for a
//! wake-up across cores: 15% of the server's CPU under the bench's load (`perf`:
//! `_raw_spin_unlock_irqrestore` under `sock_def_readable`). Sent together, the first answer
//! wakes the client and the rest find it awake. Measured in BENCHMARKS.md ("Session 16"):
//! `change.show` over MCP on one core went from 37,500–40,500 to 44,000–47,500 calls/s, and
//! through a separate gateway, whose calls reach the service over gRPC, by about a tenth.
//!
//! The turn: the task wakes itself and returns pending, which puts it at the back of its
//! worker's queue, behind the tasks that are ready now. (`yield_now` waits for the worker's next
//! look at the sockets as well; it measured no better.) On an idle server nothing is ahead of it. The price is the first event of a stream that opens while other work is
//! ready: it leaves with that work, tens of microseconds later (also in BENCHMARKS.md).
use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pin_project! {
    /// `inner`, whose writes each wait one turn first (see the module).
    pub struct DeferredWrites<T> {
        #[pin]
        inner: T,
        // The write being attempted has had its turn: a write refused for a full socket
        // buffer waits for the socket, not for another turn.
        waited: bool,
    }
}

impl<T> DeferredWrites<T> {
    pub fn new(inner: T) -> Self {
        DeferredWrites { inner, waited: false }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncWrite> DeferredWrites<T> {
    /// Pending once per write, with the task's wake-up arranged for after the ready tasks.
    fn poll_turn(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let waited = self.project().waited;
        if *waited {
            return Poll::Ready(());
        }
        // A task that wakes itself goes to the back of its worker's queue.
        cx.waker().wake_by_ref();
        *waited = true;
        Poll::Pending
    }

    fn wrote<R>(self: Pin<&mut Self>, result: Poll<R>) -> Poll<R> {
        if result.is_ready() {
            *self.project().waited = false;
        }
        result
    }
}

impl<T: AsyncRead> AsyncRead for DeferredWrites<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}

impl<T: AsyncWrite> AsyncWrite for DeferredWrites<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        ready!(self.as_mut().poll_turn(cx));
        let result = self.as_mut().project().inner.poll_write(cx, buf);
        self.wrote(result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.as_mut().poll_turn(cx));
        let result = self.as_mut().project().inner.poll_write_vectored(cx, bufs);
        self.wrote(result)
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

/// tonic reads the peer's address through the wrapper (the auth throttle keys on it).
impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for DeferredWrites<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// What ran in which order, as the tasks note it.
    type Log = Arc<Mutex<Vec<&'static str>>>;

    fn note(log: &Log, what: &'static str) {
        log.lock().unwrap().push(what);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn each_write_leaves_after_the_tasks_ready_beside_it() {
        let (mut client, server) = tokio::io::duplex(1024);
        let log = Log::default();
        // Spawned first, so it runs first: its writes are what must wait.
        let writer = tokio::spawn({
            let log = log.clone();
            async move {
                let mut server = DeferredWrites::new(server);
                server.write_all(b"first answer").await.unwrap();
                note(&log, "first written");
                let log_too = log.clone();
                let ready = tokio::spawn(async move { note(&log_too, "task ready at the second write ran") });
                server.write_all(b", second").await.unwrap();
                note(&log, "second written");
                ready.await.unwrap();
                server
            }
        });
        let other = tokio::spawn({
            let log = log.clone();
            async move { note(&log, "task ready at the first write ran") }
        });
        let server = writer.await.unwrap();
        other.await.unwrap();
        drop(server);
        let mut received = String::new();
        client.read_to_string(&mut received).await.unwrap();
        assert_eq!(received, "first answer, second");
        assert_eq!(
            *log.lock().unwrap(),
            [
                "task ready at the first write ran",
                "first written",
                "task ready at the second write ran",
                "second written"
            ]
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn vectored_writes_and_reads_pass_through() {
        let (client, server) = tokio::io::duplex(1024);
        let (mut client, mut server) = (DeferredWrites::new(client), DeferredWrites::new(server));
        let parts = [io::IoSlice::new(b"event: message\n"), io::IoSlice::new(b"data: {}\n\n")];
        let mut sent = 0;
        while sent < 25 {
            sent += server.write_vectored(&parts[if sent < 15 { 0 } else { 1 }..]).await.unwrap();
        }
        server.shutdown().await.unwrap();
        let mut received = Vec::new();
        client.read_to_end(&mut received).await.unwrap();
        assert_eq!(received, b"event: message\ndata: {}\n\n");
    }
}
