//! Requests tonic cannot read. tonic answers a body that is not the method's protobuf, a call
//! with no message, and a message over the size cap itself, before any handler runs, with
//! INTERNAL or OUT_OF_RANGE and no details: clients would blame the server, and the
//! availability SLO would count the client's mistake. This layer gives those answers the
//! service's typed form: INVALID_ARGUMENT with `ErrorInfo` INVALID_ARGUMENT (field `request`),
//! and, as the gRPC status-code guide says for a message over the limit, RESOURCE_EXHAUSTED
//! with `ErrorInfo` TOO_LARGE. A request whose body broke off (the client closed its stream
//! or connection mid-message) tonic answers UNKNOWN: that is the caller leaving, CANCELLED
//! with `ErrorInfo` CANCELLED, not a fault of the server's to count against its error budget.
//! The service's own errors always carry details, so an answer without them is tonic's.
use http::{HeaderName, Response};
use task_mcp_gateway::headers::GRPC_STATUS;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tower::util::MapResponseLayer;

use crate::error::{ERROR_DOMAIN, Error};

const GRPC_STATUS_DETAILS: HeaderName = HeaderName::from_static("grpc-status-details-bin");

/// The layer: a plain function over each response, no future of its own.
pub type RejectionsLayer<B> = MapResponseLayer<fn(Response<B>) -> Response<B>>;

pub fn layer<B: Default>() -> RejectionsLayer<B> {
    MapResponseLayer::new(retype::<B> as fn(Response<B>) -> Response<B>)
}

/// The typed form of tonic's own refusal of a request; any other response as it is.
fn retype<B: Default>(response: Response<B>) -> Response<B> {
    // Only an answer without a message has its status in the headers; a success has none.
    let code = match response.headers().get(&GRPC_STATUS).map(|v| v.as_bytes()) {
        Some(b"13") => Code::Internal,
        Some(b"11") => Code::OutOfRange,
        Some(b"2") => Code::Unknown,
        _ => return response,
    };
    if response.headers().contains_key(&GRPC_STATUS_DETAILS) {
        return response;
    }
    let message = Status::from_header_map(response.headers()).map(|s| s.message().to_string()).unwrap_or_default();
    let typed = match code {
        Code::Internal => Error::invalid("request", message).into_status(),
        Code::Unknown => Error::CallerGone.into_status(),
        _ => {
            let details = ErrorDetails::with_error_info(
                "TOO_LARGE",
                ERROR_DOMAIN,
                [("field".to_string(), "request".to_string())].into_iter().collect::<std::collections::HashMap<_, _>>(),
            );
            Status::with_error_details(Code::ResourceExhausted, message, details)
        }
    };
    typed.into_http()
}

#[cfg(test)]
mod tests {
    use http::Request;
    use tower::{Layer, ServiceExt};

    use super::*;

    async fn through(status: Status) -> Status {
        let inner = tower::service_fn(move |_: Request<()>| {
            let status = status.clone();
            async move { Ok::<_, std::convert::Infallible>(status.into_http::<()>()) }
        });
        let response = layer().layer(inner).oneshot(Request::new(())).await.unwrap();
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

        let broken_off = through(Status::unknown("error reading a body from connection")).await;
        assert_eq!(broken_off.code(), Code::Cancelled);
        assert_eq!(broken_off.get_error_details().error_info().map(|i| i.reason.as_str()), Some("CANCELLED"));
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
