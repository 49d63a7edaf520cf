//! The gRPC listener's connections. tonic's own `TcpIncoming` hands every accepted socket to
//! HTTP/2, which waits for the client's preface without a limit, and retries a failed
//! `accept` at once: sockets that never speak would be held until the descriptors run out,
//! and then the accept loop would spin. Here a connection must send the HTTP/2 preface
//! within [`PREFACE_TIMEOUT`] (nothing is authenticated before it), the listener holds at most
//! its [`ConnectionLimit`] of connections (a connection over it is closed at once), and a
//! failed `accept` is waited out. Each connection's writes wait one turn of the scheduler
//! ([`DeferredWrites`]), as the HTTP listener's do.
use std::{io, time::Duration};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_stream::{Stream, wrappers::ReceiverStream};

use crate::{
    connections::{ConnectionLimit, LimitedStream},
    deferred_writes::DeferredWrites,
};

/// How long a new connection has to send the 24 bytes of the HTTP/2 preface.
pub const PREFACE_TIMEOUT: Duration = Duration::from_secs(10);
const PREFACE_LEN: usize = 24;

/// The connections of `listener` that sent their preface in time, with `TCP_NODELAY` set, each
/// holding its place under `limit` until it closes. Accepting stops when the server drops the
/// stream.
pub fn connections(
    listener: TcpListener,
    timeout: Duration,
    limit: ConnectionLimit,
) -> impl Stream<Item = io::Result<DeferredWrites<LimitedStream>>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(err) => {
                        crate::startup::accept_failed("gRPC", &err).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            // Counted from the accept: a connection waiting for its preface holds a descriptor too.
            let Some(permit) = limit.admit() else {
                drop(stream);
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                if tokio::time::timeout(timeout, preface_arrives(&stream)).await == Ok(true) {
                    let _ = stream.set_nodelay(true);
                    let _ = tx.send(Ok(DeferredWrites::new(LimitedStream::new(stream, Some(permit))))).await;
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Whether the first 24 bytes arrive (they are only peeked at; HTTP/2 reads them itself).
async fn preface_arrives(stream: &TcpStream) -> bool {
    let mut buf = [0u8; PREFACE_LEN];
    loop {
        match stream.peek(&mut buf).await {
            Ok(n) if n >= PREFACE_LEN => return true,
            Ok(0) | Err(_) => return false,
            // Part of it: `peek` would answer again at once, so give the rest time to come.
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio_stream::StreamExt;

    use super::*;
    use crate::connections::Listener;

    #[tokio::test]
    async fn a_connection_is_served_once_its_preface_arrives_and_dropped_if_it_never_does() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming =
            std::pin::pin!(connections(listener, Duration::from_millis(300), ConnectionLimit::new(Listener::Grpc, 8)));

        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut half = TcpStream::connect(addr).await.unwrap();
        half.write_all(&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..10]).await.unwrap();
        let mut speaking = TcpStream::connect(addr).await.unwrap();
        speaking.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();

        let served = incoming.next().await.unwrap().unwrap();
        assert_eq!(served.get_ref().get_ref().expect("open").peer_addr().unwrap(), speaking.local_addr().unwrap());
        // The other two are closed by the server once their time is up.
        for stream in [&mut silent, &mut half] {
            let mut byte = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_secs(10), tokio::io::AsyncReadExt::read(stream, &mut byte));
            assert_eq!(read.await.expect("closed, not held").unwrap_or(0), 0);
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(200), incoming.next()).await.is_err(),
            "nothing else was served"
        );
    }
}
