//! Requests tonic cannot read. tonic answers a body that is not the method's protobuf, a call
//! with no message, and a message over the size cap itself, before any handler runs, with
//! INTERNAL or OUT_OF_RANGE and no details: clients would blame the server, and the
//! availability SLO would count the client's mistake. This layer gives those answers the
//! service's typed form: INVALID_ARGUMENT with `ErrorInfo` INVALID_ARGUMENT (field `request`),
//! and, as the gRPC status-code guide says for a message over the limit, RESOURCE_EXHAUSTED
//! with `ErrorInfo` TOO_LARGE. The service's own errors always carry details, so an answer
//! without them is tonic's.
use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::{Request, Response};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tower::{Layer, Service};

use crate::error::{ERROR_DOMAIN, Error};

#[derive(Clone, Copy, Default)]
pub struct RejectionsLayer;

impl<S> Layer<S> for RejectionsLayer {
    type Service = Rejections<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Rejections { inner }
    }
}

#[derive(Clone)]
pub struct Rejections<S> {
    inner: S,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Rejections<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Future: Send + 'static,
    ResB: Default,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let future = self.inner.call(req);
        Box::pin(async move { future.await.map(retype) })
    }
}

/// The typed form of tonic's own refusal of a request; any other response as it is.
fn retype<B: Default>(response: Response<B>) -> Response<B> {
    if response.headers().contains_key("grpc-status-details-bin") {
        return response;
    }
    let Some(status) = Status::from_header_map(response.headers()) else { return response };
    let typed = match status.code() {
        Code::Internal => Error::invalid("request", status.message()).into_status(),
        Code::OutOfRange => {
            let details = ErrorDetails::with_error_info(
                "TOO_LARGE",
                ERROR_DOMAIN,
                [("field".to_string(), "request".to_string())].into_iter().collect::<std::collections::HashMap<_, _>>(),
            );
            Status::with_error_details(Code::ResourceExhausted, status.message(), details)
        }
        _ => return response,
    };
    typed.into_http()
}

#[cfg(test)]
mod tests {
    use tower::ServiceExt;

    use super::*;

    async fn through(status: Status) -> Status {
        let inner = tower::service_fn(move |_: Request<()>| {
            let status = status.clone();
            async move { Ok::<_, std::convert::Infallible>(status.into_http::<()>()) }
        });
        let response = RejectionsLayer.layer(inner).oneshot(Request::new(())).await.unwrap();
        Status::from_header_map(response.headers()).expect("a status in the headers")
    }

    #[tokio::test]
    async fn tonic_refusals_become_the_services_typed_errors() {
        let undecodable = through(Status::internal("failed to decode Protobuf message: invalid wire type")).await;
        assert_eq!(undecodable.code(), Code::InvalidArgument);
        assert_eq!(undecodable.get_error_details().error_info().map(|i| i.reason.as_str()), Some("INVALID_ARGUMENT"));
        assert!(undecodable.message().contains("invalid wire type"), "{}", undecodable.message());

        let oversize = through(Status::out_of_range("decoded message length too large")).await;
        assert_eq!(oversize.code(), Code::ResourceExhausted);
        assert_eq!(oversize.get_error_details().error_info().map(|i| i.reason.as_str()), Some("TOO_LARGE"));
    }

    #[tokio::test]
    async fn the_services_own_errors_pass_unchanged() {
        let ours = through(Error::Internal("disk on fire".into()).into_status()).await;
        assert_eq!(ours.code(), Code::Internal);
        assert_eq!(ours.get_error_details().error_info().map(|i| i.reason.as_str()), Some("INTERNAL"));
        let not_found = through(Status::not_found("no such thing")).await;
        assert_eq!(not_found.code(), Code::NotFound);
    }
}
