//! `grpc.health.v1.Health` as tonic-health serves it, but with the protocol's answer to a Watch
//! of a service this server does not know. The protocol (grpc/grpc `doc/health-checking.md`)
//! says to send SERVICE_UNKNOWN and keep the stream open, so that a client watching a service
//! before it is registered learns of it; tonic-health ends the call NOT_FOUND instead, which a
//! client-side health checker takes for a broken server. Check is unchanged (NOT_FOUND is the
//! protocol's answer there).
use std::pin::Pin;

use futures_util::{Stream, StreamExt, stream};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status};
use tonic_health::{
    pb::{HealthCheckRequest, HealthCheckResponse, health_check_response::ServingStatus, health_server},
    server::{HealthReporter, HealthService},
};

pub struct Health {
    inner: HealthService,
    shutdown: CancellationToken,
}

impl Health {
    /// The statuses `reporter` sets; the streams of unknown services end with `shutdown`.
    pub fn server(reporter: HealthReporter, shutdown: CancellationToken) -> health_server::HealthServer<Health> {
        health_server::HealthServer::new(Health { inner: HealthService::from_health_reporter(reporter), shutdown })
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl health_server::Health for Health {
    async fn check(&self, request: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        health_server::Health::check(&self.inner, request).await
    }

    type WatchStream = WatchStream;

    async fn watch(&self, request: Request<HealthCheckRequest>) -> Result<Response<WatchStream>, Status> {
        match health_server::Health::watch(&self.inner, request).await {
            Ok(response) => Ok(response.map(|known| Box::pin(known) as WatchStream)),
            Err(status) if status.code() == Code::NotFound => {
                // Every service is registered before the server listens, so an unknown one stays
                // unknown: one message, then the stream stays open until the client leaves or
                // the server stops.
                let unknown = HealthCheckResponse { status: ServingStatus::ServiceUnknown as i32 };
                let stop = self.shutdown.clone().cancelled_owned();
                let open = stream::once(stop).filter_map(|()| std::future::ready(None));
                Ok(Response::new(Box::pin(stream::once(std::future::ready(Ok(unknown))).chain(open))))
            }
            Err(status) => Err(status),
        }
    }
}
