//! Build the application (bind, wire layers), then run it until a signal, then drain.
use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tonic::transport::{Server, server::TcpIncoming};
use tonic_health::{ServingStatus, server::HealthReporter};
use tower::ServiceBuilder;
use tower_http::{
    classify::GrpcFailureClass,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::TraceLayer,
};

use crate::{
    auth::{TokenConfigError, Tokens},
    config::Settings,
    error::Error,
    grpc::{AppState, changes::ChangesService, layers, resources::ResourcesService},
    pb::{changes_server::ChangesServer, resources_server::ResourcesServer},
    rate_limit::RateLimiter,
    workspace::{Workspace, watch::WatchGuard},
};

/// Largest request message accepted; the biggest legitimate one (500 task
/// updates, or an 8 KiB rationale) is far below it.
const MAX_REQUEST_BYTES: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(
        "refusing to listen on {addrs} without authentication: configure --auth-token/--auth-token-file, \
         or pass --allow-unauthenticated-public to accept the risk"
    )]
    PublicWithoutAuth { addrs: String },
    #[error(transparent)]
    Tokens(#[from] TokenConfigError),
    #[error("workspace: {0}")]
    Workspace(Error),
    #[error("binding {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

pub struct Application {
    settings: Settings,
    listener: TcpListener,
    grpc_addr: SocketAddr,
    state: AppState,
    tokens: Arc<Tokens>,
    limiter: Arc<RateLimiter>,
    _watch: WatchGuard,
}

impl Application {
    /// Validates the settings, opens the workspace and binds the listeners.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let tokens = Tokens::from_config(&settings.auth_tokens, settings.auth_token_file.as_deref())?;
        if tokens.is_empty() {
            let public = settings.public_addrs();
            if public.is_empty() {
                tracing::warn!("no auth tokens configured: every caller is `anonymous`; listening on loopback only");
            } else if settings.allow_unauthenticated_public {
                tracing::warn!(
                    ?public,
                    "no auth tokens configured and listening publicly (--allow-unauthenticated-public)"
                );
            } else {
                let addrs = public.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
                return Err(StartupError::PublicWithoutAuth { addrs });
            }
        }
        let workspace =
            Workspace::open(&settings.workspace, settings.max_resource_bytes).map_err(StartupError::Workspace)?;
        let workspace = Arc::new(workspace);
        let watch = workspace.watch().map_err(StartupError::Workspace)?;
        let listener = TcpListener::bind(settings.grpc_listen)
            .await
            .map_err(|source| StartupError::Bind { addr: settings.grpc_listen, source })?;
        let grpc_addr =
            listener.local_addr().map_err(|source| StartupError::Bind { addr: settings.grpc_listen, source })?;
        Ok(Application {
            limiter: Arc::new(RateLimiter::new(settings.rate_limit_per_second, settings.rate_limit_burst)),
            tokens: Arc::new(tokens),
            state: AppState { workspace, shutdown: tokio_util::sync::CancellationToken::new() },
            settings,
            listener,
            grpc_addr,
            _watch: watch,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Serves until `shutdown` resolves, then drains: health turns NOT_SERVING,
    /// streams end, new connections are refused, and in-flight calls get the
    /// grace period to finish.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> Result<(), StartupError> {
        let (health, health_service) = tonic_health::server::health_reporter();
        set_health(&health, ServingStatus::Serving).await;
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // So that grpcurl and other reflection clients can decode our error details.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;

        let layers = ServiceBuilder::new()
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            .layer(
                TraceLayer::new_for_grpc()
                    .make_span_with(|req: &http::Request<_>| {
                        let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
                        tracing::info_span!("grpc", method = %req.uri().path(), request_id = %id)
                    })
                    .on_response(|res: &http::Response<_>, latency: Duration, _: &tracing::Span| {
                        // Errors answered before any message carry their status in the headers.
                        let status = res.headers().get("grpc-status").and_then(|v| v.to_str().ok()).unwrap_or("0");
                        tracing::info!(grpc_status = status, latency_ms = latency.as_secs_f64() * 1e3, "call answered");
                    })
                    // Statuses are already in "call answered"; only server faults deserve a warning.
                    .on_failure(|class: GrpcFailureClass, _latency: Duration, _: &tracing::Span| match class {
                        GrpcFailureClass::Code(code)
                            if matches!(
                                tonic::Code::from(code.get()),
                                tonic::Code::Internal | tonic::Code::Unknown | tonic::Code::DataLoss
                            ) =>
                        {
                            tracing::warn!(grpc_status = code.get(), "call failed on the server side")
                        }
                        GrpcFailureClass::Code(_) => {}
                        GrpcFailureClass::Error(e) => tracing::warn!(error = %e, "call failed"),
                    }),
            )
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(layers::AuthLayer::new(self.tokens.clone()))
            .layer(layers::RateLimitLayer::new(self.limiter.clone()));

        let server = Server::builder()
            // Bounded per connection, and dead peers are noticed instead of held forever.
            .max_concurrent_streams(Some(1024))
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .tcp_keepalive(Some(Duration::from_secs(60)))
            .layer(layers)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                ChangesServer::new(ChangesService::new(self.state.clone()))
                    .max_decoding_message_size(MAX_REQUEST_BYTES),
            )
            .add_service(
                ResourcesServer::new(ResourcesService::new(self.state.clone()))
                    .max_decoding_message_size(MAX_REQUEST_BYTES),
            );

        tracing::info!(
            grpc_addr = %self.grpc_addr,
            workspace = %self.state.workspace.root().display(),
            auth = if self.tokens.is_empty() { "none" } else { "bearer" },
            version = env!("CARGO_PKG_VERSION"),
            "listening"
        );

        let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
        let incoming = TcpIncoming::from(self.listener).with_nodelay(Some(true));
        let serve = server.serve_with_incoming_shutdown(incoming, async move {
            let _ = drain_rx.await;
        });
        tokio::pin!(serve);
        tokio::select! {
            result = &mut serve => return result.map_err(Into::into),
            () = shutdown => {}
        }
        tracing::info!(grace_seconds = self.settings.shutdown_grace_seconds, "draining");
        set_health(&health, ServingStatus::NotServing).await;
        self.state.shutdown.cancel();
        let _ = drain_tx.send(());
        match tokio::time::timeout(self.settings.shutdown_grace(), serve).await {
            Ok(result) => result?,
            Err(_) => tracing::warn!("grace period over; dropping calls still in flight"),
        }
        tracing::info!("stopped");
        Ok(())
    }
}

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health.set_service_status("taskmcp.v1.Changes", status).await;
    health.set_service_status("taskmcp.v1.Resources", status).await;
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}
