//! Deadlines (`grpc-timeout`). tonic honours them only until the response headers are out,
//! and answers an expired one CANCELLED, so a server stream (WatchChanges, a long
//! ReadResource) would outlive its deadline and a slow unary call would look cancelled by
//! its client. This layer answers DEADLINE_EXCEEDED when the deadline passes before the
//! answer, and ends a response body at the deadline with `grpc-status: 4` trailers.
use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use http::{Request, Response};
use http_body::{Body, Frame};
use pin_project_lite::pin_project;
use task_mcp_gateway::headers::GRPC_TIMEOUT;
use tonic::body::Body as TonicBody;
use tower::{Layer, Service};

/// Parses `grpc-timeout`: at most 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// How much earlier than the caller's deadline this layer's timer is set. tonic arms its own
/// timer for the same deadline a little before this layer runs, and the runtime's timers tick
/// in milliseconds: when the two deadlines fell on either side of a tick, tonic's fired first
/// and the call was answered CANCELLED "Timeout expired" (1 in 7 calls with a deadline already
/// passed on arrival, `hostile_inputs`). A millisecond earlier, this layer's timer is never
/// the later one, and when both fire at one tick tonic polls the call (this layer) first.
const AHEAD_OF_TONIC: Duration = Duration::from_millis(1);

#[derive(Clone, Copy, Default)]
pub struct DeadlineLayer;

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Deadline { inner }
    }
}

#[derive(Clone)]
pub struct Deadline<S> {
    inner: S,
}

impl<S, ReqB> Service<Request<ReqB>> for Deadline<S>
where
    S: Service<Request<ReqB>, Response = Response<TonicBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqB: Send + 'static,
{
    type Response = Response<TonicBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let deadline =
            req.headers().get(GRPC_TIMEOUT).and_then(|v| v.to_str().ok()).and_then(parse_grpc_timeout).map(|d| {
                let at = tokio::time::Instant::now() + d;
                // In the past for a deadline shorter than the margin: it has passed.
                at.checked_sub(AHEAD_OF_TONIC).unwrap_or(at)
            });
        Box::pin(async move {
            let Some(deadline) = deadline else { return inner.call(req).await };
            // Before the answer, too: tonic's own timer would answer CANCELLED, which a client
            // (and the metrics) would read as its own doing. Work already on the blocking pool
            // runs on, except a write still waiting for its turn at a change, which gives up
            // (`Workspace::change_turn`).
            match tokio::time::timeout_at(deadline, inner.call(req)).await {
                Ok(response) => Ok(response?.map(|body| TonicBody::new(DeadlineBody::new(body, deadline)))),
                Err(_) => Ok(expired("the deadline passed before the service answered").into_http()),
            }
        })
    }
}

/// DEADLINE_EXCEEDED with `ErrorInfo` DEADLINE_EXCEEDED, as every failure carries a reason.
fn expired(message: &str) -> tonic::Status {
    use tonic_types::{ErrorDetails, StatusExt};
    let details = ErrorDetails::with_error_info(
        "DEADLINE_EXCEEDED",
        crate::error::ERROR_DOMAIN,
        std::collections::HashMap::<String, String>::new(),
    );
    tonic::Status::with_error_details(tonic::Code::DeadlineExceeded, message, details)
}

pin_project! {
    struct DeadlineBody {
        #[pin]
        inner: TonicBody,
        #[pin]
        sleep: tokio::time::Sleep,
        state: State,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Streaming,
    /// The inner body finished on its own (with its own trailers).
    Done,
    /// We sent DEADLINE_EXCEEDED trailers.
    Expired,
}

impl DeadlineBody {
    fn new(inner: TonicBody, deadline: tokio::time::Instant) -> Self {
        DeadlineBody { inner, sleep: tokio::time::sleep_until(deadline), state: State::Streaming }
    }
}

impl Body for DeadlineBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if *this.state != State::Streaming {
            return Poll::Ready(None);
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(None) => {
                *this.state = State::Done;
                return Poll::Ready(None);
            }
            Poll::Ready(Some(frame)) => return Poll::Ready(Some(frame)),
            Poll::Pending => {}
        }
        if this.sleep.poll(cx).is_ready() {
            *this.state = State::Expired;
            // tonic writes a status only as a trailers-only response: its headers are the
            // trailers here, less the content type.
            let mut trailers =
                expired("the deadline passed while the answer was being sent").into_http::<()>().into_parts().0.headers;
            trailers.remove(http::header::CONTENT_TYPE);
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        // An empty inner body (a trailers-only error) must stay visibly empty,
        // or hyper sends its headers without END_STREAM and strict clients
        // (grpc-go: grpcurl) report "closed the stream without sending trailers".
        self.state != State::Streaming || self.inner.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_rejects_garbage() {
        assert_eq!(parse_grpc_timeout("300m"), Some(Duration::from_millis(300)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5u"), Some(Duration::from_micros(5)));
        assert_eq!(parse_grpc_timeout("7n"), Some(Duration::from_nanos(7)));
        for bad in ["", "S", "10", "123456789S", "1x", "-1S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn an_endless_body_ends_with_deadline_exceeded_trailers() {
        use http_body_util::BodyExt;
        let endless = TonicBody::new(http_body_util::StreamBody::new(futures_util::stream::pending::<
            Result<Frame<bytes::Bytes>, tonic::Status>,
        >()));
        let body = DeadlineBody::new(endless, tokio::time::Instant::now() + Duration::from_millis(20));
        let collected = body.collect().await.expect("ends cleanly");
        let trailers = collected.trailers().expect("trailers");
        assert_eq!(trailers.get("grpc-status").unwrap(), "4");
        let status = tonic::Status::from_header_map(trailers).expect("a status");
        use tonic_types::StatusExt;
        assert_eq!(status.get_error_details().error_info().map(|i| i.reason.as_str()), Some("DEADLINE_EXCEEDED"));
    }

    #[tokio::test]
    async fn an_answer_later_than_the_deadline_is_deadline_exceeded() {
        use tower::ServiceExt;
        let slow = tower::service_fn(|_: Request<()>| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, std::convert::Infallible>(Response::new(TonicBody::empty()))
        });
        let req = Request::builder().header("grpc-timeout", "20m").body(()).unwrap();
        let response = DeadlineLayer.layer(slow).oneshot(req).await.unwrap();
        let status = tonic::Status::from_header_map(response.headers()).expect("a trailers-only status");
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        use tonic_types::StatusExt;
        assert_eq!(status.get_error_details().error_info().map(|i| i.reason.as_str()), Some("DEADLINE_EXCEEDED"));
    }

    #[tokio::test]
    async fn a_body_that_ends_in_time_is_untouched() {
        use http_body_util::BodyExt;
        let body = DeadlineBody::new(TonicBody::empty(), tokio::time::Instant::now() + Duration::from_secs(60));
        let collected = body.collect().await.expect("ends cleanly");
        assert!(collected.trailers().is_none());
    }
}
