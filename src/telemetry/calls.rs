//! The one "call answered" line per gRPC call, written when the call's status is known.
//!
//! A call's status is in the response head only when it failed before any message
//! (trailers-only); otherwise it is in the trailers, after the last message. A line written
//! at the head said `grpc_status: "0"` and gave the time to the head for every streamed
//! call, including an `ArchiveChangeStream` that ended ABORTED or DEADLINE_EXCEEDED, so
//! the log hid exactly the calls an on-call engineer looks for. The line is written at
//! the trailers instead, with the whole call's latency; a call whose body is dropped before
//! its trailers (client gone, server stopped) is logged as CANCELLED, as the metrics count it.
//!
//! The layer sits inside the call's span, so the line carries its method, request id,
//! principal and trace ids like every other line of the call.
use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tower::{Layer, Service};

use super::traces::grpc_status;

/// gRPC CANCELLED: what a call dropped before its status amounts to.
const CANCELLED: i32 = 1;

#[derive(Clone, Copy, Default)]
pub struct CallLogLayer;

impl<S> Layer<S> for CallLogLayer {
    type Service = CallLog<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CallLog { inner }
    }
}

#[derive(Clone)]
pub struct CallLog<S> {
    inner: S,
}

impl<S, ReqB> Service<Request<ReqB>> for CallLog<S>
where
    S: Service<Request<ReqB>, Response = Response<tonic::body::Body>>,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = CallLogFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        // With `info` off (`RUST_LOG=warn`, the README's advice for throughput) the line would be
        // dropped: skip the clock, the span and the wrapped body altogether.
        let pending = tracing::enabled!(tracing::Level::INFO)
            .then(|| Pending { start: Instant::now(), span: tracing::Span::current() });
        CallLogFuture { inner: self.inner.call(req), pending }
    }
}

/// A call whose line is still to be written.
struct Pending {
    start: Instant,
    span: tracing::Span,
}

impl Pending {
    fn answered(self, code: i32) {
        log(&self.span, code, self.start.elapsed(), None);
    }

    fn dropped(self) {
        log(&self.span, CANCELLED, self.start.elapsed(), Some("ended before its status was sent"));
    }
}

fn log(span: &tracing::Span, code: i32, latency: Duration, note: Option<&'static str>) {
    span.in_scope(|| {
        let latency_ms = latency.as_secs_f64() * 1e3;
        match note {
            None => tracing::info!(grpc_status = %code, latency_ms, "call answered"),
            Some(note) => tracing::info!(grpc_status = %code, latency_ms, note, "call answered"),
        }
    });
}

pin_project_lite::pin_project! {
    pub struct CallLogFuture<F> {
        #[pin]
        inner: F,
        pending: Option<Pending>,
    }

    impl<F> PinnedDrop for CallLogFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped before the response head: the caller left, or its deadline passed
            // in a layer outside this one.
            if let Some(pending) = this.project().pending.take() {
                pending.dropped();
            }
        }
    }
}

impl<F, E> Future for CallLogFuture<F>
where
    F: Future<Output = Result<Response<tonic::body::Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = match std::task::ready!(this.inner.poll(cx)) {
            Ok(res) => res,
            Err(e) => {
                // A transport-level failure: the trace layer warns about it; no status to log.
                this.pending.take();
                return Poll::Ready(Err(e));
            }
        };
        let Some(pending) = this.pending.take() else { return Poll::Ready(Ok(res)) };
        // Trailers-only: the head carries the status and the call is over.
        if let Some(code) = grpc_status(res.headers()) {
            pending.answered(code);
            return Poll::Ready(Ok(res));
        }
        Poll::Ready(Ok(res.map(|inner| tonic::body::Body::new(LoggedBody { inner, pending: Some(pending) }))))
    }
}

pin_project_lite::pin_project! {
    struct LoggedBody<B> {
        #[pin]
        inner: B,
        pending: Option<Pending>,
    }

    impl<B> PinnedDrop for LoggedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(pending) = this.project().pending.take() {
                pending.dropped();
            }
        }
    }
}

impl<B> HttpBody for LoggedBody<B>
where
    B: HttpBody<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    finish(this.pending, trailers);
                }
            }
            // The body failed: the status never left, as with a dropped body.
            Some(Err(_)) => {
                if let Some(pending) = this.pending.take() {
                    pending.dropped();
                }
            }
            None => finish(this.pending, &HeaderMap::new()),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Writes the line from the trailers; a body that ends without any gRPC status is UNKNOWN,
/// as a client reads it.
fn finish(pending: &mut Option<Pending>, trailers: &HeaderMap) {
    if let Some(pending) = pending.take() {
        pending.answered(grpc_status(trailers).unwrap_or(tonic::Code::Unknown as i32));
    }
}

/// Puts the authenticated principal on the call's span, so the "call answered" line (and every
/// other line of the call) says who made it. Goes right after authentication, which inserts
/// the principal; a refused call has none and its line names none.
#[derive(Clone, Copy, Default)]
pub struct PrincipalLayer;

impl<S> Layer<S> for PrincipalLayer {
    type Service = RecordPrincipal<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RecordPrincipal { inner }
    }
}

#[derive(Clone)]
pub struct RecordPrincipal<S> {
    inner: S,
}

impl<S, ReqB> Service<Request<ReqB>> for RecordPrincipal<S>
where
    S: Service<Request<ReqB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        if let Some(principal) = req.extensions().get::<crate::auth::Principal>() {
            // The call's span is the current one: the trace layer enters it around the layers below.
            tracing::Span::current().record("principal", tracing::field::display(principal));
        }
        self.inner.call(req)
    }
}
