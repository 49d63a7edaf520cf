//! Build the application (bind, wire layers), then run it until a signal, then drain.
//!
//! `serve` runs the gRPC service and the gateway in one process; the gateway
//! reaches the service in-process through the same routes (no socket, no
//! HTTP/2 framing), behind the same authentication layer. `gateway` runs the
//! gateway alone against a remote service.
use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tonic::{service::Routes, transport::Server};
use tonic_health::{ServingStatus, server::HealthReporter};
use tower::{ServiceBuilder, util::BoxCloneSyncService};

use crate::grpc::rejections;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

use crate::{
    access::ServiceAccess,
    auth::{TokenConfigError, TokenReloader, Tokens},
    config::{AccessSettings, GatewaySettings, Settings},
    connections::{ConnectionLimit, LimitedStream, Listener},
    deferred_writes::DeferredWrites,
    error::Error,
    grpc::{
        AppState,
        changes::ChangesService,
        in_process::InProcessRoutes,
        layers,
        metrics::{GrpcMetricsLayer, StreamGate},
        resources::ResourcesService,
    },
    oauth::KeyRefresher,
    pb::{changes_server::ChangesServer, resources_server::ResourcesServer},
    rate_limit::{AuthFailureThrottle, RateLimiter},
    telemetry::{
        LIFECYCLE,
        call_span::CallSpanLayer,
        calls::{CallLogLayer, PrincipalLayer},
        metrics::{HealthFlags, Metrics, MetricsExport, OtlpConfig},
        traces,
    },
    workspace::{Workspace, watch::WatchGuard},
};
use task_mcp_gateway::upstream::{Upstream, UpstreamService};

/// Largest request message accepted; the biggest legitimate one (500 task
/// updates, or an 8 KiB rationale) is far below it. Raised to the HTTP body cap when
/// that is larger, so an HTTP request within its cap never meets a second, smaller one.
const MAX_REQUEST_BYTES: usize = 256 * 1024;
/// How long an HTTP connection may take to send a request head (see `serve_http`).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How often readiness re-checks that the workspace can be written.
const WRITABLE_PROBE: Duration = Duration::from_secs(5);
/// How long `gateway` waits for a TCP connection to its upstream.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The health service name that reports workspace writability (the gateway's readiness asks it).
pub use task_mcp_gateway::health::WORKSPACE_HEALTH;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(
        "refusing to listen on {addrs} without authentication: configure --auth-token/--auth-token-file, \
         or pass --allow-unauthenticated-public to accept the risk"
    )]
    PublicWithoutAuth { addrs: String },
    #[error(transparent)]
    Tokens(#[from] TokenConfigError),
    #[error(transparent)]
    OAuth(#[from] crate::oauth::OAuthError),
    #[error("workspace {path}: {reason}")]
    Workspace { path: String, reason: String },
    #[error("{flag} {addr}: cannot listen: {source}")]
    Bind { flag: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("gateway: {0}")]
    Gateway(String),
    #[error("upstream {url}: {reason}")]
    Upstream { url: String, reason: String },
    #[error("metrics: {0}")]
    Metrics(String),
}

/// The credentials a caller may present, and what keeps them current.
struct Credentials {
    tokens: Arc<Tokens>,
    token_reloader: Option<TokenReloader>,
    key_refresher: Option<KeyRefresher>,
}

impl Credentials {
    /// Starts the reloads; they end with `stop`.
    fn spawn_refreshers(&mut self, stop: &tokio_util::sync::CancellationToken) {
        if let Some(reloader) = self.token_reloader.take() {
            tokio::spawn(reloader.run(stop.clone()));
        }
        if let Some(refresher) = self.key_refresher.take() {
            tokio::spawn(refresher.run(stop.clone()));
        }
    }
}

/// Loads the tokens and the OAuth issuer's keys, and refuses a public bind without either
/// unless overridden.
async fn load_credentials(access: &AccessSettings, public: &[SocketAddr]) -> Result<Credentials, StartupError> {
    let mut tokens = Tokens::from_config(&access.auth_tokens, access.auth_token_file.as_deref())?;
    let mut key_refresher = None;
    if let Some(config) = access.oauth() {
        let (verifier, refresher) = crate::oauth::start(&config).await?;
        tokens = tokens.with_oauth(verifier);
        key_refresher = Some(refresher);
    }
    let tokens = Arc::new(tokens);
    let token_reloader = TokenReloader::listen(tokens.clone(), Duration::from_secs(access.auth_token_reload_seconds));
    if tokens.is_empty() {
        if public.is_empty() {
            tracing::warn!("no auth tokens configured: every caller is `anonymous`; listening on loopback only");
        } else if access.allow_unauthenticated_public {
            tracing::warn!(
                ?public,
                "no auth tokens configured and listening publicly (--allow-unauthenticated-public)"
            );
        } else {
            let addrs = public.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
            return Err(StartupError::PublicWithoutAuth { addrs });
        }
    }
    Ok(Credentials { tokens, token_reloader, key_refresher })
}

/// How callers authenticate, for the "listening" line.
fn auth_mode(tokens: &Tokens) -> &'static str {
    match (tokens.is_empty(), tokens.oauth().is_some()) {
        (true, _) => "none",
        (false, true) => "bearer+oauth",
        (false, false) => "bearer",
    }
}

/// Binds `addr`; a failure names the flag that set it (three listeners may share a message
/// such as "Address already in use").
async fn bind(flag: &'static str, addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartupError> {
    let listener = TcpListener::bind(addr).await.map_err(|source| StartupError::Bind { flag, addr, source })?;
    let local = listener.local_addr().map_err(|source| StartupError::Bind { flag, addr, source })?;
    Ok((listener, local))
}

pub struct Application {
    settings: Settings,
    grpc_listener: TcpListener,
    grpc_addr: SocketAddr,
    http_listener: TcpListener,
    http_addr: SocketAddr,
    /// The Prometheus endpoint (`--metrics-listen`), unless `off`.
    metrics_listener: Option<(TcpListener, SocketAddr)>,
    /// The meter provider, its readers and exporters; flushed at the end.
    export: MetricsExport,
    metrics: Arc<Metrics>,
    /// The connection caps of the gRPC and HTTP listeners, which the metrics observe.
    grpc_limit: ConnectionLimit,
    http_limit: ConnectionLimit,
    health_flags: Arc<HealthFlags>,
    state: AppState,
    tokens: Arc<Tokens>,
    credentials: Credentials,
    limiter: Arc<RateLimiter>,
    throttle: Arc<AuthFailureThrottle>,
    _watch: WatchGuard,
}

impl Application {
    /// Validates the settings, opens the workspace and binds the listeners.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let credentials = load_credentials(&settings.access, &settings.public_addrs()).await?;
        let tokens = credentials.tokens.clone();
        // The operator's spelling of the path: the workspace may be set in a variable
        // they no longer have in front of them.
        let workspace_err = |source: Error| {
            // At start-up nothing is "internal": it is the operator's disk or path to fix.
            let reason = match source {
                Error::Internal(why) => why,
                other => other.to_string(),
            };
            StartupError::Workspace { path: settings.workspace.display().to_string(), reason }
        };
        let workspace = Workspace::open(&settings.workspace, settings.max_resource_bytes).map_err(workspace_err)?;
        let workspace = Arc::new(workspace);
        let watch = workspace.watch().map_err(workspace_err)?;
        let (grpc_listener, grpc_addr) = bind("--grpc-listen", settings.grpc_listen).await?;
        let (http_listener, http_addr) = bind("--http-listen", settings.http_listen).await?;
        let metrics_listener = match settings.metrics_listen.0 {
            Some(addr) => Some(bind("--metrics-listen", addr).await?),
            None => None,
        };
        let export = MetricsExport::start(OtlpConfig::from_env(), metrics_listener.is_some())
            .map_err(|e| StartupError::Metrics(e.to_string()))?;
        export.log_status();
        let health_flags = Arc::new(HealthFlags::default());
        let max_connections =
            settings.gateway.max_connections.unwrap_or_else(crate::connections::default_max_connections);
        crate::connections::warn_if_over_open_file_limit(2, max_connections);
        let grpc_limit = ConnectionLimit::new(Listener::Grpc, max_connections);
        let http_limit = ConnectionLimit::new(Listener::Http, max_connections);
        let metrics = Arc::new(Metrics::new(
            &export.meter(),
            settings.gateway.max_streams,
            Some(health_flags.clone()),
            &[grpc_limit.clone(), http_limit.clone()],
        ));
        Ok(Application {
            metrics_listener,
            export,
            metrics,
            grpc_limit,
            http_limit,
            health_flags,
            limiter: Arc::new(RateLimiter::new(
                settings.access.rate_limit_per_second,
                settings.access.rate_limit_burst,
            )),
            throttle: Arc::new(AuthFailureThrottle::new(settings.access.auth_failures_per_minute)),
            tokens,
            credentials,
            state: AppState { workspace, shutdown: tokio_util::sync::CancellationToken::new() },
            settings,
            grpc_listener,
            grpc_addr,
            http_listener,
            http_addr,
            _watch: watch,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The Prometheus endpoint's address, unless it is off.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().map(|(_, addr)| *addr)
    }

    /// Serves until `signal()` resolves, then stops: health turns NOT_SERVING (and
    /// `/health/ready` 503) while the listeners still accept for `--shutdown-delay-seconds`;
    /// then streams end, new connections are refused, and in-flight calls get the grace
    /// period to finish. A second `signal()` stops at once.
    pub async fn run_until_stopped<F: Future<Output = ()>>(
        mut self,
        signal: impl Fn() -> F,
    ) -> Result<(), StartupError> {
        let max_request = MAX_REQUEST_BYTES.max(self.settings.gateway.max_body_bytes);
        let (health, routes, in_process_routes) = service_routes(&self.state, max_request).await?;
        let probe = spawn_writable_probe(self.state.workspace.clone(), health.clone(), self.health_flags.clone());
        self.credentials.spawn_refreshers(&self.state.shutdown);
        let methods = crate::grpc::metrics::MethodTable::from_descriptors().map_err(StartupError::Metrics)?;
        // One authentication layer for the in-process calls and the gRPC port: they refuse alike,
        // with OAuth's challenge, and the write methods are worked out once.
        let auth = layers::AuthLayer::new(self.tokens.clone()).challenging(self.settings.access.protected_resource());

        // The gateway calls the same routes in-process. It has already admitted
        // the caller (token and rate limit), so only authentication runs again,
        // to give handlers their principal. The call gets the same span and
        // "call answered" line as over TCP, with the trace context crossing
        // in the same `traceparent` metadata.
        let in_process: UpstreamService = BoxCloneSyncService::new(
            ServiceBuilder::new()
                .map_err(|never: std::convert::Infallible| -> tonic::codegen::StdError { match never {} })
                .option_layer(traces::propagate_layer())
                .map_response(|res: http::Response<_>| res.map(tonic::body::Body::new))
                .layer(GrpcMetricsLayer::new(self.metrics.clone(), methods.clone(), None))
                .layer(CallSpanLayer)
                .layer(CallLogLayer)
                .layer(crate::grpc::deadline::DeadlineLayer)
                .layer(auth.clone())
                .layer(PrincipalLayer)
                .layer(traces::ToolSpanLayer)
                .layer(rejections::layer())
                .service(in_process_routes),
        );
        let principals = self.tokens.principal_count();
        let access = Arc::new(ServiceAccess {
            tokens: self.tokens.clone(),
            limiter: self.limiter.clone(),
            throttle: self.throttle.clone(),
        });
        let gateway = gateway_state(
            in_process,
            access,
            task_mcp_gateway::GatewayConfig {
                trusted_proxies: self.settings.access.trusted_proxies(),
                oauth: self.settings.access.protected_resource(),
                ..self.settings.gateway.to_config(principals)
            },
            self.metrics.gateway.clone(),
        )?;
        let router = http_router(gateway.clone());

        // Metrics outermost: they see every call's final status, deadline and
        // refusals included. gRPC clients' server streams share the gateway's
        // stream slots (one process-wide cap).
        let gate = StreamGate {
            sessions: gateway.sessions.clone(),
            shutdown: self.state.shutdown.clone(),
            tokens: self.tokens.clone(),
        };
        let grpc_layers = ServiceBuilder::new()
            // Not gRPC at all: 415 before anything counts it as a call.
            .layer(crate::grpc::content_type::GrpcOnlyLayer)
            .layer(GrpcMetricsLayer::new(self.metrics.clone(), methods, Some(gate)))
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            .layer(CallSpanLayer)
            .layer(CallLogLayer)
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(crate::grpc::deadline::DeadlineLayer)
            .layer(
                layers::AuthThrottleLayer::new(&self.tokens, self.throttle.clone())
                    .trusting(self.settings.access.trusted_proxies())
                    .counting(self.metrics.gateway.clone()),
            )
            .layer(auth.counting(self.metrics.gateway.clone()))
            .layer(PrincipalLayer)
            .layer(layers::RateLimitLayer::new(self.limiter.clone()).counting(self.metrics.gateway.clone()))
            .layer(traces::ToolSpanLayer)
            .layer(rejections::layer());
        let grpc_server = Server::builder()
            // Bounded per connection, and dead peers are noticed instead of held forever.
            .max_concurrent_streams(Some(1024))
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .tcp_keepalive(Some(Duration::from_secs(60)))
            .layer(grpc_layers)
            .add_routes(routes.clone());

        let metrics_addr = self.metrics_addr();
        tracing::info!(
            target: LIFECYCLE,
            grpc_addr = %self.grpc_addr,
            http_addr = %self.http_addr,
            metrics_addr = %metrics_addr.map_or_else(|| "off".to_string(), |a| a.to_string()),
            workspace = %self.state.workspace.root().display(),
            auth = auth_mode(&self.tokens),
            version = env!("CARGO_PKG_VERSION"),
            "listening"
        );

        let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
        let grpc_drain = wait_for(drain_rx.clone());
        let http_drain = wait_for(drain_rx.clone());
        let incoming = crate::grpc::incoming::connections(
            self.grpc_listener,
            crate::grpc::incoming::PREFACE_TIMEOUT,
            self.grpc_limit,
        );
        let grpc = grpc_server.serve_with_incoming_shutdown(incoming, grpc_drain);
        let http = serve_http(self.http_listener, router, http_drain, Some(self.http_limit));
        // The Prometheus endpoint stays up while draining (a scrape during the
        // drain still answers) and stops with the other listeners.
        let scrape_parts = self.metrics_listener.zip(self.export.registry().cloned());
        let scrape = async move {
            match scrape_parts {
                Some(((listener, _), registry)) => {
                    let router = crate::telemetry::metrics::prometheus_router(registry);
                    serve_http(listener, router, wait_for(drain_rx), None).await
                }
                None => Ok(()),
            }
        };
        let all =
            async { tokio::try_join!(async { grpc.await.map_err(StartupError::from) }, http, scrape).map(|_| ()) };
        tokio::pin!(all);
        let early = tokio::select! {
            result = &mut all => Some(result),
            () = signal() => None,
        };
        if let Some(result) = early {
            self.export.shutdown().await;
            return result;
        }
        let stop = Stop {
            delay: Duration::from_secs(self.settings.shutdown_delay_seconds),
            grace: self.settings.shutdown_grace(),
        };
        stop.log_start();
        // Not ready from now on, on every probe: `/health/ready` first, so that it names the
        // drain rather than the service it is about to see NOT_SERVING, then gRPC health.
        gateway.draining.cancel();
        probe.abort();
        self.health_flags.set_upstream(false);
        set_health(&health, ServingStatus::NotServing).await;
        let close = || {
            // The gateway first: cancelling the service ends its change feeds, and a gateway
            // stream that saw its feed end before the gateway knew of the drain answered an
            // error ("the change feed ended") instead of ending with its result (lifecycle test,
            // clean-clone CI on two cores).
            gateway.shutdown.cancel();
            self.state.shutdown.cancel();
            gateway.sessions.drain();
            let _ = drain_tx.send(true);
        };
        let result = stop.run(all, signal(), close).await;
        // The last export carries the drain's own figures.
        self.export.shutdown().await;
        tracing::info!(target: LIFECYCLE, "stopped");
        result
    }
}

/// Health, reflection and the two services as one set of routes, served over
/// TCP and called in-process by the gateway.
async fn service_routes(
    state: &AppState,
    max_request: usize,
) -> Result<(HealthReporter, Routes, InProcessRoutes), StartupError> {
    let (health, _) = tonic_health::server::health_reporter();
    let health_service = crate::grpc::health::Health::server(health.clone(), state.shutdown.clone());
    set_health(&health, ServingStatus::Serving).await;
    health.set_service_status(WORKSPACE_HEALTH, ServingStatus::Serving).await;
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
    let changes = ChangesServer::new(ChangesService::new(state.clone())).max_decoding_message_size(max_request);
    let resources = ResourcesServer::new(ResourcesService::new(state.clone())).max_decoding_message_size(max_request);
    let mut builder = Routes::builder();
    builder
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(changes.clone())
        .add_service(resources.clone());
    let routes = builder.routes();
    Ok((health, routes.clone(), InProcessRoutes::new(changes, resources, routes)))
}

/// The gateway's router, with a server span per request when traces are exported.
fn http_router(state: Arc<task_mcp_gateway::AppState>) -> axum::Router {
    let router = task_mcp_gateway::router(state);
    if traces::enabled() { router.layer(traces::HttpSpanLayer) } else { router }
}

fn gateway_state(
    upstream: UpstreamService,
    access: Arc<dyn task_mcp_gateway::Access>,
    config: task_mcp_gateway::GatewayConfig,
    metrics: Arc<task_mcp_gateway::metrics::GatewayMetrics>,
) -> Result<Arc<task_mcp_gateway::AppState>, StartupError> {
    let upstream = Upstream::new(upstream, config.upstream_timeout).map_err(StartupError::Gateway)?;
    Ok(task_mcp_gateway::AppState::with_metrics(config, Arc::new(upstream), access, metrics))
}

async fn wait_for(mut drain: tokio::sync::watch::Receiver<bool>) {
    let _ = drain.wait_for(|d| *d).await;
}

/// `limit`: the connections the listener may have open (`None`: the loopback metrics endpoint).
async fn serve_http(
    listener: TcpListener,
    router: axum::Router,
    drain: impl Future<Output = ()> + Send + 'static,
    limit: Option<ConnectionLimit>,
) -> Result<(), StartupError> {
    use hyper_util::{rt::TokioIo, server::graceful::GracefulShutdown, service::TowerToHyperService};
    // HTTP/1.1 only, without the HTTP/2 sniffing of a dual-protocol server: that
    // reads the first 24 bytes on their own, and hyper then grows its 8 KiB read
    // buffer to 16 KiB for the rest of the request, on every connection (measured
    // in BENCHMARKS.md, "Memory per stream"). MCP clients speak HTTP/1.1; TLS and
    // HTTP/2 belong to the proxy in front.
    let mut http = hyper::server::conn::http1::Builder::new();
    // A client that opens a connection and sends no complete request head in time is
    // dropped: before the head arrives nothing is authenticated, so without this anyone
    // could hold connections open forever (slowloris). Idle keep-alive connections end too.
    http.keep_alive(true).timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = GracefulShutdown::new();
    let mut drain = std::pin::pin!(drain);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    accept_failed("HTTP", &err).await;
                    continue;
                }
            },
            () = &mut drain => break,
        };
        // Over the limit the connection is closed at once, before hyper sees it.
        let permit = match &limit {
            Some(limit) => match limit.admit() {
                Some(permit) => Some(permit),
                None => continue,
            },
            None => None,
        };
        // Each SSE event and each JSON answer leaves in one write; with Nagle on, a
        // small trailing write would wait for the previous one's ACK.
        let _ = tcp.set_nodelay(true);
        // A clone of the Router shares its route table (an `Arc`). The peer's address goes with
        // each request, as axum's `ConnectInfo`: failed authentication is throttled by it.
        let service = TowerToHyperService::new(tower::ServiceExt::map_request(
            router.clone(),
            move |mut req: http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                req
            },
        ));
        // Each answer waits for the tasks ready beside it, so that answers leave together; a
        // connection the server closes first lingers, so that its last answer arrives.
        let io = TokioIo::new(DeferredWrites::new(LimitedStream::new(tcp, permit)));
        let connection = graceful.watch(http.serve_connection(io, service));
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// A failed `accept`: a connection that died in the backlog is nobody's
/// business; running out of descriptors or memory is, and is waited out
/// rather than spun on.
pub(crate) async fn accept_failed(listener: &str, err: &std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(err.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
        return;
    }
    tracing::error!(listener, error = %err, "accepting a connection failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Readiness: the overall health (service "") follows workspace writability, so the gateway's
/// `/health/ready` and gRPC probes both see a workspace that cannot be written (permissions, a
/// read-only mount, a folder gone), and a rollout onto a broken mount never takes traffic.
///
/// A full disk (or spent quota) is the exception: only the workspace's own status turns
/// NOT_SERVING, and the service stays ready. Reads are served, and each write is refused with
/// `WORKSPACE_FULL` and changes nothing; no other instance would do better (they share the
/// workspace, or serve another); failing readiness would have load balancers turn a disk that
/// refuses writes into a service that refuses everything. Nor could readiness follow it
/// faithfully: a probe file of two bytes fits where a change does not.
///
/// What a full disk does fail is `health_check_status{check="workspace_space"}` (0 while the
/// probe's write fails for lack of space, 1 otherwise, an unusable workspace included), which
/// `TaskMcpWorkspaceFull` pages on; `check="workspace"` stays readiness's.
fn spawn_writable_probe(
    workspace: Arc<Workspace>,
    health: HealthReporter,
    flags: Arc<HealthFlags>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = None;
        loop {
            let ws = workspace.clone();
            let writable = tokio::task::spawn_blocking(move || ws.check_writable()).await;
            // Full: the probe's write failed for lack of space (ENOSPC, EDQUOT), as every
            // write answers WORKSPACE_FULL meanwhile.
            let full = matches!(writable, Ok(Err(Error::WorkspaceFull { .. })));
            // The service's status and the workspace's.
            let (service, workspace_status) = match writable {
                Ok(Ok(())) => (ServingStatus::Serving, ServingStatus::Serving),
                Ok(Err(e @ Error::WorkspaceFull { .. })) => {
                    tracing::error!(
                        error = %e,
                        "the workspace's file system is full: writes are refused until space is freed; \
                         reads are served, and the service stays ready"
                    );
                    (ServingStatus::Serving, ServingStatus::NotServing)
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "workspace is not writable; reporting NOT_SERVING");
                    (ServingStatus::NotServing, ServingStatus::NotServing)
                }
                Err(_) => (ServingStatus::NotServing, ServingStatus::NotServing),
            };
            // The metrics' view: both checks are readiness's, which a full disk passes; the
            // space check is the one a full disk fails (and only a full disk).
            flags.set_workspace(service == ServingStatus::Serving);
            flags.set_upstream(service == ServingStatus::Serving);
            flags.set_workspace_space(!full);
            if last != Some((service, workspace_status)) {
                health.set_service_status("", service).await;
                health.set_service_status(WORKSPACE_HEALTH, workspace_status).await;
                last = Some((service, workspace_status));
            }
            tokio::time::sleep(WRITABLE_PROBE).await;
        }
    })
}

/// The services' status; the workspace's is the writable probe's alone, so that a drain is never
/// reported as a workspace that cannot be written.
async fn set_health(health: &HealthReporter, status: ServingStatus) {
    for service in ["", "taskmcp.v1.Changes", "taskmcp.v1.Resources"] {
        health.set_service_status(service, status).await;
    }
}

/// `task-mcp gateway`: the gateway alone, in front of a remote service.
pub struct GatewayApplication {
    settings: GatewaySettings,
    listener: TcpListener,
    http_addr: SocketAddr,
    state: Arc<task_mcp_gateway::AppState>,
    /// OTLP only (this subcommand has no metrics listener): the HTTP,
    /// streaming, security and process series and its listener's connection
    /// series; the service counts the rest.
    export: MetricsExport,
    _metrics: Arc<Metrics>,
    /// The HTTP listener's connection cap, which the metrics observe.
    limit: ConnectionLimit,
    credentials: Credentials,
}

impl GatewayApplication {
    pub async fn build(settings: GatewaySettings) -> Result<Self, StartupError> {
        let public: Vec<SocketAddr> = [settings.http_listen].into_iter().filter(|a| !a.ip().is_loopback()).collect();
        let credentials = load_credentials(&settings.access, &public).await?;
        let tokens = credentials.tokens.clone();
        let limiter =
            Arc::new(RateLimiter::new(settings.access.rate_limit_per_second, settings.access.rate_limit_burst));
        let upstream_err = |reason: String| StartupError::Upstream { url: settings.upstream.0.clone(), reason };
        let channel = tonic::transport::Endpoint::from_shared(settings.upstream.0.clone())
            .map_err(|e| upstream_err(e.to_string()))?
            .tcp_nodelay(true)
            // A service host that vanishes without a reset (power loss, a
            // partition) would otherwise hold calls until their deadline and
            // change feeds forever: connects give up, and idle connections are
            // pinged, so both fail over to a reconnect.
            .connect_timeout(UPSTREAM_CONNECT_TIMEOUT)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .tcp_keepalive(Some(Duration::from_secs(60)))
            .connect_lazy();
        let service: UpstreamService = BoxCloneSyncService::new(
            ServiceBuilder::new()
                .map_err(tonic::codegen::StdError::from)
                .option_layer(traces::propagate_layer())
                .service(channel),
        );
        let throttle = Arc::new(AuthFailureThrottle::new(settings.access.auth_failures_per_minute));
        let principals = tokens.principal_count();
        let access = Arc::new(ServiceAccess { tokens, limiter, throttle });
        let export =
            MetricsExport::start(OtlpConfig::from_env(), false).map_err(|e| StartupError::Metrics(e.to_string()))?;
        export.log_status();
        let max_connections =
            settings.gateway.max_connections.unwrap_or_else(crate::connections::default_max_connections);
        crate::connections::warn_if_over_open_file_limit(1, max_connections);
        let limit = ConnectionLimit::new(Listener::Http, max_connections);
        let metrics =
            Arc::new(Metrics::new(&export.meter(), settings.gateway.max_streams, None, std::slice::from_ref(&limit)));
        let config = task_mcp_gateway::GatewayConfig {
            trusted_proxies: settings.access.trusted_proxies(),
            oauth: settings.access.protected_resource(),
            name_client: true,
            ..settings.gateway.to_config(principals)
        };
        let state = gateway_state(service, access, config, metrics.gateway.clone())?;
        let (listener, http_addr) = bind("--http-listen", settings.http_listen).await?;
        Ok(GatewayApplication { settings, listener, http_addr, state, export, _metrics: metrics, limit, credentials })
    }

    /// As [`Application::run_until_stopped`]: readiness fails first (`/health/ready` 503,
    /// whatever the upstream says), then the listener closes and calls get the grace period.
    pub async fn run_until_stopped<F: Future<Output = ()>>(
        mut self,
        signal: impl Fn() -> F,
    ) -> Result<(), StartupError> {
        tracing::info!(target: LIFECYCLE, http_addr = %self.http_addr, upstream = %self.settings.upstream, "listening");
        self.credentials.spawn_refreshers(&self.state.shutdown);
        let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
        let http = serve_http(self.listener, http_router(self.state.clone()), wait_for(drain_rx), Some(self.limit));
        tokio::pin!(http);
        let early = tokio::select! {
            result = &mut http => Some(result),
            () = signal() => None,
        };
        if let Some(result) = early {
            self.export.shutdown().await;
            return result;
        }
        let stop = Stop {
            delay: Duration::from_secs(self.settings.shutdown_delay_seconds),
            grace: Duration::from_secs(self.settings.shutdown_grace_seconds),
        };
        stop.log_start();
        self.state.draining.cancel();
        let close = || {
            self.state.shutdown.cancel();
            self.state.sessions.drain();
            let _ = drain_tx.send(true);
        };
        let result = stop.run(http, signal(), close).await;
        self.export.shutdown().await;
        tracing::info!(target: LIFECYCLE, "stopped");
        result
    }
}

/// How a server stops once asked to: readiness has already turned; the listeners stay open
/// for `delay` (load balancers notice the failing probe and stop sending new connections),
/// then close, and calls in flight get `grace`. A second signal ends either wait at once.
struct Stop {
    delay: Duration,
    grace: Duration,
}

impl Stop {
    fn log_start(&self) {
        tracing::info!(
            target: LIFECYCLE,
            delay_seconds = self.delay.as_secs(),
            grace_seconds = self.grace.as_secs(),
            "draining"
        );
    }

    /// `served` is every listener's serving future (it ends once they have closed and their
    /// connections are done); `close` closes the listeners and ends the streams.
    async fn run(
        &self,
        served: impl Future<Output = Result<(), StartupError>>,
        second: impl Future<Output = ()>,
        close: impl FnOnce(),
    ) -> Result<(), StartupError> {
        tokio::pin!(served, second);
        if !self.delay.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(self.delay) => {}
                // A listener failed while still accepting: that is the result.
                result = &mut served => return result,
                () = &mut second => {
                    tracing::warn!(target: LIFECYCLE, "second signal: stopping now, before the listeners closed");
                    return Ok(());
                }
            }
        }
        close();
        tokio::select! {
            finished = tokio::time::timeout(self.grace, &mut served) => finished.unwrap_or_else(|_| {
                tracing::warn!(target: LIFECYCLE, "grace period over; dropping calls still in flight");
                Ok(())
            }),
            () = &mut second => {
                tracing::warn!(target: LIFECYCLE, "second signal: stopping now; dropping calls still in flight");
                Ok(())
            }
        }
    }
}

/// Resolves on SIGTERM or SIGINT received after the call.
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
        () = ctrl_c => tracing::info!(target: LIFECYCLE, "SIGINT received"),
        () = term => tracing::info!(target: LIFECYCLE, "SIGTERM received"),
    }
}
