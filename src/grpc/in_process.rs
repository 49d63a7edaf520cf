//! The routes the gateway calls in-process. tonic's `Routes` is an axum router: each call pays
//! for a route look-up, its matched-path and URL-parameter extensions, and its answer's body is
//! boxed twice more on the way out (axum's body, then tonic's). The gateway's tool and resource
//! calls go to the two services it was built from, so those go straight to their server by the
//! path's first segment; anything else (health) takes `Routes`.
use std::{
    convert::Infallible,
    task::{Context, Poll},
};

use futures_util::future::{BoxFuture, Either};
use tonic::{server::NamedService, service::Routes};
use tower::Service;

use super::{changes::ChangesService, resources::ResourcesService};
use crate::pb::{changes_server::ChangesServer, resources_server::ResourcesServer};

type Request = http::Request<tonic::body::Body>;
type Response = http::Response<tonic::body::Body>;

#[derive(Clone)]
pub struct InProcessRoutes {
    changes: ChangesServer<ChangesService>,
    resources: ResourcesServer<ResourcesService>,
    routes: Routes,
}

impl InProcessRoutes {
    /// `routes` holds `changes` and `resources` too, served the same way over TCP.
    pub fn new(
        changes: ChangesServer<ChangesService>,
        resources: ResourcesServer<ResourcesService>,
        routes: Routes,
    ) -> Self {
        InProcessRoutes { changes, resources, routes }
    }
}

/// The service named by `path` (`/taskmcp.v1.Changes/ShowChange`: `taskmcp.v1.Changes`).
fn service_of(path: &str) -> Option<&str> {
    path.strip_prefix('/')?.split_once('/').map(|(service, _)| service)
}

impl Service<Request> for InProcessRoutes {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<BoxFuture<'static, Result<Response, Infallible>>, <Routes as Service<Request>>::Future>;

    /// Always ready, as each of the three is: generated servers and axum's router take any call.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        match service_of(req.uri().path()) {
            Some(<ChangesServer<ChangesService> as NamedService>::NAME) => Either::Left(self.changes.call(req)),
            Some(<ResourcesServer<ResourcesService> as NamedService>::NAME) => Either::Left(self.resources.call(req)),
            _ => Either::Right(self.routes.call(req)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_is_routed_by_its_service_name() {
        assert_eq!(service_of("/taskmcp.v1.Changes/ShowChange"), Some("taskmcp.v1.Changes"));
        assert_eq!(service_of("/grpc.health.v1.Health/Check"), Some("grpc.health.v1.Health"));
        assert_eq!(service_of("/taskmcp.v1.Changes"), None);
        assert_eq!(service_of("taskmcp.v1.Changes/ShowChange"), None);
        assert_eq!(<ChangesServer<ChangesService> as NamedService>::NAME, "taskmcp.v1.Changes");
    }
}
