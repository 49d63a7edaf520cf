//! One span per gRPC call: entered while the call runs and on every poll of its answer's body,
//! so that each line a handler or a streaming body writes carries the call's fields (method,
//! request id, principal) and, when traces are exported, its OpenTelemetry server span. The
//! call's status is recorded on the span, and a server fault (INTERNAL, UNKNOWN, DATA_LOSS) or
//! a broken call is a warning; other statuses are in `CallLogLayer`'s "call answered" line.
//!
//! tower-http's `TraceLayer` did this before. It also read the clock three times per body frame
//! and looked the status header up by name twice, for callbacks that used neither: 2,900
//! instructions of a `change.show` call through the gateway (callgrind, BENCHMARKS.md).
use std::{
    fmt::Display,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use tower::{Layer, Service};
use tracing::Span;

use super::traces;

#[derive(Clone, Copy, Default)]
pub struct CallSpanLayer;

impl<S> Layer<S> for CallSpanLayer {
    type Service = CallSpan<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CallSpan { inner }
    }
}

#[derive(Clone)]
pub struct CallSpan<S> {
    inner: S,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for CallSpan<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Display,
{
    type Response = Response<SpanBody<ResB>>;
    type Error = S::Error;
    type Future = CallSpanFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let span = traces::grpc_server_span(&req);
        let inner = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        CallSpanFuture { inner, span: Some(span) }
    }
}

pin_project_lite::pin_project! {
    pub struct CallSpanFuture<F> {
        #[pin]
        inner: F,
        // Taken by the answer's body.
        span: Option<Span>,
    }
}

impl<F, B, E> Future for CallSpanFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Display,
{
    type Output = Result<Response<SpanBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _entered = this.span.as_ref().map(Span::enter);
            ready!(this.inner.poll(cx))
        };
        let span = this.span.take().unwrap_or_else(Span::none);
        match result {
            Ok(response) => {
                // A call that fails before its first message has its status in the headers
                // (trailers-only); the others end with it in the trailers.
                let code = traces::grpc_status(response.headers());
                if let Some(code) = code {
                    answered(&span, code);
                }
                Poll::Ready(Ok(response.map(|inner| SpanBody { inner, span, answered: code.is_some() })))
            }
            Err(err) => {
                span.in_scope(|| tracing::warn!(error = %err, "call failed"));
                Poll::Ready(Err(err))
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The answer's body, polled inside the call's span.
    pub struct SpanBody<B> {
        #[pin]
        inner: B,
        span: Span,
        answered: bool,
    }
}

impl<B> Body for SpanBody<B>
where
    B: Body,
    B::Error: Display,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let _entered = this.span.enter();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref()
                    && !*this.answered
                    && let Some(code) = traces::grpc_status(trailers)
                {
                    *this.answered = true;
                    answered(this.span, code);
                }
            }
            Some(Err(err)) => tracing::warn!(error = %err, "call failed"),
            None => {}
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

/// The call's status, on its span; a warning for the statuses that mean the server failed.
fn answered(span: &Span, code: i32) {
    traces::record_grpc_status(span, code);
    if matches!(tonic::Code::from(code), tonic::Code::Internal | tonic::Code::Unknown | tonic::Code::DataLoss) {
        span.in_scope(|| tracing::warn!(grpc_status = code, "call failed on the server side"));
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::VecDeque,
        convert::Infallible,
        sync::{Arc, Mutex},
    };

    use bytes::Bytes;
    use http::HeaderMap;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    /// An answer whose every poll writes a line, as a streaming handler's body does.
    struct Answer(VecDeque<Frame<Bytes>>);

    impl Body for Answer {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            tracing::info!("body polled");
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    fn status(code: &'static str) -> HeaderMap {
        HeaderMap::from_iter([(task_mcp_gateway::headers::GRPC_STATUS, http::HeaderValue::from_static(code))])
    }

    /// The log lines of one call answered with `response` (the status in the headers, if any)
    /// and `frames`, read to the end.
    async fn lines_of(headers: HeaderMap, frames: Vec<Frame<Bytes>>) -> String {
        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
        let _default = tracing::subscriber::set_default(subscriber);
        let mut answer = Some((headers, frames));
        let answer = move |_req: Request<()>| {
            let (headers, frames) = answer.take().unwrap_or_default();
            let mut response = Response::new(Answer(frames.into()));
            *response.headers_mut() = headers;
            async move { Ok::<_, Infallible>(response) }
        };
        let request = Request::builder().uri("/taskmcp.v1.Changes/ShowChange").body(()).unwrap();
        let response = CallSpanLayer.layer(tower::service_fn(answer)).oneshot(request).await.unwrap();
        response.into_body().collect().await.unwrap();
        String::from_utf8(lines.0.lock().unwrap().clone()).unwrap()
    }

    #[tokio::test]
    async fn the_body_is_polled_inside_the_call_span() {
        let lines =
            lines_of(HeaderMap::new(), vec![Frame::data(Bytes::from_static(b"m")), Frame::trailers(status("0"))]).await;
        let polled: Vec<_> = lines.lines().filter(|l| l.contains("body polled")).collect();
        assert_eq!(polled.len(), 3, "{lines}");
        assert!(polled.iter().all(|l| l.contains("method=/taskmcp.v1.Changes/ShowChange")), "{lines}");
        assert!(!lines.contains("WARN"), "{lines}");
    }

    #[tokio::test]
    async fn a_server_fault_in_the_trailers_or_the_headers_is_a_warning_once() {
        for (headers, trailers) in [(HeaderMap::new(), vec![Frame::trailers(status("13"))]), (status("2"), vec![])] {
            let lines = lines_of(headers, trailers).await;
            let warnings: Vec<_> = lines.lines().filter(|l| l.contains("WARN")).collect();
            assert_eq!(warnings.len(), 1, "{lines}");
            assert!(warnings[0].contains("call failed on the server side"), "{lines}");
            assert!(warnings[0].contains("method=/taskmcp.v1.Changes/ShowChange"), "{lines}");
        }
    }

    #[tokio::test]
    async fn a_status_the_caller_caused_is_no_warning() {
        for (headers, trailers) in [(HeaderMap::new(), vec![Frame::trailers(status("5"))]), (status("3"), vec![])] {
            let lines = lines_of(headers, trailers).await;
            assert!(!lines.contains("WARN"), "{lines}");
        }
    }
}
