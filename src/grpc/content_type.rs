//! Requests that are not gRPC. tonic serves any request on its port as gRPC whatever its
//! method and `Content-Type`, and answers a refusal with HTTP 200; a plain HTTP/2 client would
//! read that as success. The gRPC protocol (PROTOCOL-HTTP2, "Requests") has every call a
//! POST, and asks for 415 Unsupported Media Type when the type does not begin with
//! `application/grpc`; another method gets 405 with `Allow: POST` (RFC 9110 15.5.6).
use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use tower::{Layer, Service};

#[derive(Clone, Copy, Default)]
pub struct GrpcOnlyLayer;

impl<S> Layer<S> for GrpcOnlyLayer {
    type Service = GrpcOnly<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcOnly { inner }
    }
}

#[derive(Clone)]
pub struct GrpcOnly<S> {
    inner: S,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for GrpcOnly<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let grpc =
            req.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let status = match (req.method() == Method::POST, grpc) {
            (true, true) => return Either::Left(self.inner.call(req)),
            (false, _) => StatusCode::METHOD_NOT_ALLOWED,
            (true, false) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        };
        let mut refused = Response::new(ResB::default());
        *refused.status_mut() = status;
        if status == StatusCode::METHOD_NOT_ALLOWED {
            refused.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
        }
        Either::Right(ready(Ok(refused)))
    }
}

#[cfg(test)]
mod tests {
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn only_grpc_posts_reach_the_service() {
        let svc = GrpcOnlyLayer.layer(tower::service_fn(|_: Request<()>| async {
            Ok::<_, std::convert::Infallible>(Response::new(String::from("served")))
        }));
        for (method, content_type, want) in [
            (Method::POST, Some("application/grpc"), StatusCode::OK),
            (Method::POST, Some("application/grpc+proto"), StatusCode::OK),
            (Method::POST, Some("application/json"), StatusCode::UNSUPPORTED_MEDIA_TYPE),
            (Method::POST, Some("text/plain"), StatusCode::UNSUPPORTED_MEDIA_TYPE),
            (Method::POST, None, StatusCode::UNSUPPORTED_MEDIA_TYPE),
            (Method::GET, Some("application/grpc"), StatusCode::METHOD_NOT_ALLOWED),
        ] {
            let mut req = Request::builder().method(method.clone());
            if let Some(ct) = content_type {
                req = req.header(header::CONTENT_TYPE, ct);
            }
            let res = svc.clone().oneshot(req.body(()).unwrap()).await.unwrap();
            assert_eq!(res.status(), want, "{method} {content_type:?}");
            if want == StatusCode::METHOD_NOT_ALLOWED {
                assert_eq!(res.headers()[header::ALLOW], "POST");
            }
        }
    }
}
