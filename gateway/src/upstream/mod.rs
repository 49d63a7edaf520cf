//! The gRPC side of the gateway: the tool registry built from the descriptors,
//! and dynamic calls that transcode JSON to protobuf and back (proto3 JSON
//! mapping).
//!
//! Nothing here names a tool: every RPC carrying the `(taskmcp.v1.tool)` method
//! option becomes one, with its schemas and description taken from the
//! descriptors, and it is called through a codec for `DynamicMessage`. Only the
//! resource, completion and health calls, which the MCP side needs whatever the
//! tools are, use the generated typed clients.
//!
//! The registry is in `registry`, the codecs in `codec`; this file holds the calls.
use std::{
    collections::BTreeSet,
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures_util::Stream;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor, MethodDescriptor, ReflectMessage,
};
use serde_json::Value;
use tonic::Status;

mod codec;
mod registry;

use codec::{DynamicCodec, FeedCodec};
pub use registry::{Registry, ToolDef};

use crate::{
    error::UpstreamError,
    pb,
    wire_json::{self, JsonText},
};

/// Any gRPC transport: a `Channel` to a remote service, or the service's own
/// routes in-process. Boxed so the gateway code is the same for both.
pub type UpstreamService = tower::util::BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    tonic::codegen::StdError,
>;

/// What a completion offers: the first values (for slugs, the first [`SLUG_MAX`] by name), and
/// how many matched in all (`None` when a scan stopped at its page limit and the count is
/// unknown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matches {
    pub values: Vec<String>,
    pub total: Option<usize>,
}

/// Per-call facts forwarded as gRPC metadata.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    /// The caller's `Authorization` header, forwarded as is.
    pub authorization: Option<String>,
    pub request_id: Option<String>,
    /// W3C `traceparent`.
    pub traceparent: Option<String>,
    /// Becomes `grpc-timeout`.
    pub timeout: Option<Duration>,
    /// How the caller reached the gateway; sent as `x-task-mcp-transport` so
    /// the service labels its tool metrics with it and skips counting the
    /// authentication and streams the gateway has already counted.
    pub transport: Option<crate::metrics::Transport>,
    /// `x-forwarded-for`, sent on. In split mode it is the client as the gateway sees it
    /// ([`crate::proxies::name_client`]); in `serve`, whatever the client or its proxy sent,
    /// which the in-process service does not read (it has no throttle: the gateway admitted
    /// the caller).
    pub forwarded_for: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ToolEvent {
    Progress { step: String, message: String, current: u32, total: u32 },
    Result(Value),
}

#[derive(Debug, Clone)]
pub enum CallError {
    /// The JSON arguments do not fit the request message (unknown field, wrong type, ...).
    InvalidArguments(String),
    /// The service answered with an error status (or could not be reached).
    Upstream(UpstreamError),
}

impl From<Status> for CallError {
    fn from(status: Status) -> Self {
        CallError::Upstream(UpstreamError::from(status))
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::InvalidArguments(message) => write!(f, "invalid arguments: {message}"),
            CallError::Upstream(err) => {
                write!(f, "{} ({}): {}", crate::error::code_name(err.code), err.reason, err.message)
            }
        }
    }
}

impl std::error::Error for CallError {}

#[derive(Debug, Clone)]
pub struct ResourceContent {
    pub uri: String,
    pub mime_type: String,
    pub text: Option<String>,
    pub blob: Option<Vec<u8>>,
}

pub type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, CallError>> + Send>>;

/// Largest response message the dynamic calls accept (tonic's default is 4 MiB;
/// a `change.show` of a change with large spec deltas may exceed that).
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Largest resource `read_resource` assembles. The service caps resources
/// itself; this bounds the gateway's memory whatever the service does.
const MAX_RESOURCE_BYTES: usize = 16 * 1024 * 1024;
/// Slug completion: `ListChanges` pages of this size, at most this many pages,
/// at most this many slugs answered (MCP completion returns at most 100).
const SLUG_PAGE_SIZE: u32 = 200;
const SLUG_MAX_PAGES: usize = 5;
const SLUG_MAX: usize = 100;
/// A readiness probe must not hang on a stuck upstream.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// `grpc-timeout` holds at most 8 digits; tonic panics beyond ~11,000 years,
/// so absurd client deadlines are clamped to about three years.
const MAX_TIMEOUT: Duration = Duration::from_secs(99_999_999);

/// JSON in: the proto3 mapping (both lowerCamelCase and proto field names,
/// enums by name or number), unknown fields refused so a typo is reported
/// rather than silently ignored.
const INPUT_OPTIONS: DeserializeOptions = DeserializeOptions::new().deny_unknown_fields(true);

pub struct Upstream {
    service: Transport,
    /// Cloned per call: a call needs `&mut` for readiness, and a clone per
    /// call lets calls run concurrently.
    grpc: tonic::client::Grpc<Transport>,
    pool: DescriptorPool,
    registry: Arc<Registry>,
}

impl Upstream {
    /// `answer_within`: how long any call may wait for the service to start answering (its
    /// response head), `--upstream-timeout-seconds`.
    pub fn new(service: UpstreamService, answer_within: Duration) -> Result<Self, String> {
        let (pool, registry) = Registry::from_descriptor_set(pb::FILE_DESCRIPTOR_SET)?;
        let service = Transport { service, answer_within, waiting: None };
        let grpc = tonic::client::Grpc::new(service.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES);
        Ok(Upstream { service, grpc, pool, registry: Arc::new(registry) })
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The descriptors the tools were built from.
    pub fn pool(&self) -> &DescriptorPool {
        &self.pool
    }

    /// A unary tool call; the output as JSON text, written once from the response's bytes
    /// (callers embed it in their answers as it is).
    pub async fn call_tool(&self, tool: &ToolDef, args: &Value, ctx: CallContext) -> Result<JsonText, CallError> {
        let output = self.call_tool_bytes(tool, args, ctx).await?;
        tool.output.to_text(&output).map_err(output_error)
    }

    /// [`Upstream::call_tool`] for an MCP result: the output also escaped for the text block,
    /// written in the same pass.
    pub async fn call_tool_escaped(
        &self,
        tool: &ToolDef,
        args: &Value,
        ctx: CallContext,
    ) -> Result<JsonText, CallError> {
        let output = self.call_tool_bytes(tool, args, ctx).await?;
        tool.output.to_text_and_escaped(&output).map_err(output_error)
    }

    async fn call_tool_bytes(&self, tool: &ToolDef, args: &Value, ctx: CallContext) -> Result<Bytes, CallError> {
        let input = json_to_message(&tool.method.input(), args)?;
        Ok(unary_call(self.grpc.clone(), tool.path.clone(), input, &ctx).await?)
    }

    /// Progress events, then the result. Dropping the stream cancels the call.
    pub fn call_tool_streaming(&self, tool: &ToolDef, args: &Value, ctx: CallContext) -> EventStream<ToolEvent> {
        let input = match json_to_message(&tool.method.input(), args) {
            Ok(input) => input,
            Err(err) => return Box::pin(futures_util::stream::once(std::future::ready(Err(err)))),
        };
        let grpc = self.grpc.clone();
        let Some(stream_method) = tool.stream_method.clone() else {
            // No streaming form: the result alone is the whole stream.
            let path = tool.path.clone();
            let encoder = tool.output.clone();
            return Box::pin(async_stream::stream! {
                yield match unary_call(grpc, path, input, &ctx).await {
                    Ok(output) => encoder.to_value(&output).map(ToolEvent::Result).map_err(output_error),
                    Err(status) => Err(CallError::from(status)),
                };
            });
        };
        Box::pin(async_stream::stream! {
            let deadline = deadline(&ctx);
            let mut messages = match within(deadline, server_streaming_call(grpc, &stream_method, input, &ctx)).await {
                Ok(messages) => messages,
                Err(status) => {
                    yield Err(CallError::from(status));
                    return;
                }
            };
            loop {
                match within(deadline, messages.message()).await {
                    Ok(Some(message)) => match stream_event(&message) {
                        Some(Ok(ToolEvent::Result(result))) => {
                            // The call is read to its end (its trailers) before the result
                            // goes out: consumers stop at the result, and a call dropped
                            // before its trailers ends CANCELLED at the service, so a
                            // streamed tool that succeeded would be counted a client error.
                            // What follows a result is not part of the tool's answer.
                            while let Ok(Some(_)) = within(deadline, messages.message()).await {}
                            yield Ok(ToolEvent::Result(result));
                            return;
                        }
                        Some(event) => {
                            yield event;
                        }
                        // An event kind this gateway does not know: skipped,
                        // so a newer service does not break older gateways.
                        None => {}
                    },
                    Ok(None) => {
                        yield Err(CallError::from(Status::internal(format!(
                            "{} ended without a result",
                            stream_method.full_name()
                        ))));
                        return;
                    }
                    Err(status) => {
                        yield Err(CallError::from(status));
                        return;
                    }
                }
            }
        })
    }

    pub async fn read_resource(&self, uri: &str, ctx: CallContext) -> Result<ResourceContent, CallError> {
        let mut client = pb::resources_client::ResourcesClient::new(self.service.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let request = request(pb::ReadResourceRequest { uri: uri.to_string() }, &ctx);
        let read = async move {
            let mut chunks = client.read_resource(request).await?.into_inner();
            let mut assembly = Assembly::new(uri);
            while let Some(chunk) = chunks.message().await? {
                assembly.push(chunk)?;
            }
            Ok(assembly.finish())
        };
        Ok(within(deadline(&ctx), read).await?)
    }

    /// A page of the service's resources (`page_size` 0: all of them).
    pub async fn list_resources(
        &self,
        page_size: u32,
        page_token: String,
        ctx: CallContext,
    ) -> Result<pb::ListResourcesResponse, CallError> {
        let mut client = pb::resources_client::ResourcesClient::new(self.service.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let request = request(pb::ListResourcesRequest { slug: String::new(), page_size, page_token }, &ctx);
        let response = within(deadline(&ctx), async move { client.list_resources(request).await }).await?;
        Ok(response.into_inner())
    }

    /// Distinct slugs of drafts and archived changes starting with `prefix`,
    /// sorted, at most 100 (for completion: a bounded scan, not a full listing).
    pub async fn slugs_with_prefix(&self, prefix: &str, ctx: CallContext) -> Result<Matches, CallError> {
        let client = pb::changes_client::ChangesClient::new(self.service.clone());
        let deadline = deadline(&ctx);
        let scan = async move {
            let mut client = client;
            let mut slugs = BTreeSet::new();
            let mut page_token = String::new();
            let mut scanned_all = false;
            for _ in 0..SLUG_MAX_PAGES {
                let page = pb::ListChangesRequest {
                    page_size: SLUG_PAGE_SIZE,
                    page_token: std::mem::take(&mut page_token),
                    status: pb::ChangeStatus::All as i32,
                };
                let page = client.list_changes(request(page, &ctx)).await?.into_inner();
                slugs.extend(page.changes.into_iter().map(|c| c.slug).filter(|s| s.starts_with(prefix)));
                if page.next_page_token.is_empty() {
                    scanned_all = true;
                    break;
                }
                page_token = page.next_page_token;
            }
            let total = scanned_all.then_some(slugs.len());
            Ok::<_, Status>(Matches { values: slugs.into_iter().take(SLUG_MAX).collect(), total })
        };
        Ok(within(deadline, scan).await?)
    }

    /// The spec delta paths of draft `slug` starting with `prefix`, sorted, at
    /// most 100 (completion of the delta template's `path`).
    pub async fn delta_paths_with_prefix(
        &self,
        slug: &str,
        prefix: &str,
        ctx: CallContext,
    ) -> Result<Matches, CallError> {
        let mut client = pb::resources_client::ResourcesClient::new(self.service.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let request = request(pb::ListResourcesRequest { slug: slug.to_string(), ..Default::default() }, &ctx);
        let listed = within(deadline(&ctx), async move { client.list_resources(request).await }).await?;
        let deltas = format!("change://{slug}/delta/");
        let paths: BTreeSet<String> = listed
            .into_inner()
            .resources
            .into_iter()
            .filter_map(|r| r.uri.strip_prefix(&deltas).map(str::to_string))
            .filter(|path| path.starts_with(prefix))
            .collect();
        let total = Some(paths.len());
        Ok(Matches { values: paths.into_iter().take(SLUG_MAX).collect(), total })
    }

    /// Opens the service's live feed of change events; dropping the stream
    /// cancels it. Resolves once the service has accepted the call, so a caller
    /// that reopens a broken feed knows when it is following events again.
    /// `ctx.timeout` is ignored: a subscription lasts until it is dropped, not
    /// as long as the request that started it was willing to wait.
    ///
    /// `listening_since`: when the client was told it is listening, if it was before this
    /// call. The feed then starts with the events since (a little before, to cover the trip
    /// to a separate service), so none in between is lost.
    pub async fn watch(
        &self,
        ctx: CallContext,
        listening_since: Option<Instant>,
    ) -> Result<EventStream<pb::ChangeEvent>, CallError> {
        let ctx = CallContext { timeout: None, ..ctx };
        let mut grpc = tonic::client::Grpc::new(self.service.clone());
        let replay_ms = listening_since.map_or(0, |since| {
            let window = (since.elapsed() + REPLAY_MARGIN).min(MAX_REPLAY);
            u32::try_from(window.as_millis()).unwrap_or(u32::MAX)
        });
        let request = request(pb::WatchChangesRequest { replay_ms, ..Default::default() }, &ctx);
        grpc.ready().await.map_err(not_ready)?;
        let mut events = grpc
            .server_streaming(request, http::uri::PathAndQuery::from_static(WATCH_CHANGES), FeedCodec)
            .await?
            .into_inner();
        Ok(Box::pin(async_stream::stream! {
            loop {
                match events.message().await {
                    Ok(Some(event)) => yield Ok(event),
                    Ok(None) => return,
                    Err(status) => {
                        yield Err(CallError::from(status));
                        return;
                    }
                }
            }
        }))
    }

    /// `grpc.health.v1` Check of one service name (`""`: the whole server): true iff SERVING.
    pub async fn serving_of(&self, service: &str) -> Result<bool, CallError> {
        use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
        let mut client = HealthClient::new(self.service.clone());
        let mut request = tonic::Request::new(HealthCheckRequest { service: service.to_string() });
        request.set_timeout(HEALTH_TIMEOUT);
        let deadline = tokio::time::Instant::now().checked_add(HEALTH_TIMEOUT);
        let response = within(deadline, async move { client.check(request).await }).await?;
        Ok(response.into_inner().status == ServingStatus::Serving as i32)
    }
}

/// JSON arguments to the request message. `null` (no arguments) is the empty
/// message, as is `{}`. A refusal names the argument at fault (`ttlSeconds: invalid
/// value ...`): serde's own message names only the type it expected.
#[allow(
    clippy::result_large_err,
    reason = "`CallError` is the module's fixed error type; it is built once per failed call"
)]
pub(crate) fn json_to_message(desc: &MessageDescriptor, args: &Value) -> Result<DynamicMessage, CallError> {
    if args.is_null() {
        return Ok(DynamicMessage::new(desc.clone()));
    }
    // Tracking the path wraps every step of the walk; arguments are seldom wrong, so the walk
    // is made plainly first and again, tracked, only to name what it refused.
    if let Ok(message) = DynamicMessage::deserialize_with_options(desc.clone(), args, &INPUT_OPTIONS) {
        return Ok(message);
    }
    let mut track = serde_path_to_error::Track::new();
    let tracked = serde_path_to_error::Deserializer::new(args, &mut track);
    DynamicMessage::deserialize_with_options(desc.clone(), tracked, &INPUT_OPTIONS).map_err(|e| {
        let at = track.path();
        if at.iter().next().is_none() {
            return CallError::InvalidArguments(e.to_string());
        }
        CallError::InvalidArguments(match integer_range(desc, &at) {
            Some(range) => format!("{at}: {e} (expected {range})"),
            None => format!("{at}: {e}"),
        })
    })
}

/// The range of the integer field at `path`, for a refusal's message: serde's own ("out of
/// range integral type conversion attempted") says neither the type nor its bounds.
fn integer_range(desc: &MessageDescriptor, path: &serde_path_to_error::Path) -> Option<String> {
    use prost_reflect::Kind;
    use serde_path_to_error::Segment;
    let mut message = desc.clone();
    let mut field = None;
    for segment in path.iter() {
        match segment {
            Segment::Map { key } => {
                if let Some(f) = &field {
                    message = nested(f)?;
                }
                let f = message.get_field_by_json_name(key).or_else(|| message.get_field_by_name(key))?;
                field = Some(f);
            }
            // A list's item or a map's value has the field's own kind.
            Segment::Seq { .. } => {}
            Segment::Enum { .. } | Segment::Unknown => return None,
        }
    }
    let (kind, low, high) = match field?.kind() {
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => ("int32", i32::MIN.to_string(), i32::MAX.to_string()),
        Kind::Uint32 | Kind::Fixed32 => ("uint32", "0".to_string(), u32::MAX.to_string()),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => ("int64", i64::MIN.to_string(), i64::MAX.to_string()),
        Kind::Uint64 | Kind::Fixed64 => ("uint64", "0".to_string(), u64::MAX.to_string()),
        _ => return None,
    };
    let article = if kind.starts_with('u') { "a" } else { "an" };
    Some(format!("{article} {kind}, an integer from {low} to {high}"))
}

/// The message a field's JSON value is an object of: its own type, or a map's value type.
fn nested(field: &prost_reflect::FieldDescriptor) -> Option<MessageDescriptor> {
    match field.kind() {
        prost_reflect::Kind::Message(m) if field.is_map() => m.map_entry_value_field().kind().as_message().cloned(),
        prost_reflect::Kind::Message(m) => Some(m),
        _ => None,
    }
}

/// A response message to JSON (see [`wire_json::OUTPUT_OPTIONS`]).
#[allow(
    clippy::result_large_err,
    reason = "`CallError` is the module's fixed error type; it is built once per failed call"
)]
pub(crate) fn message_to_json(message: &DynamicMessage) -> Result<Value, CallError> {
    serde_json::to_value(wire_json::Reflected(message)).map_err(|e| output_error(wire_json::EncodeError::Encode(e)))
}

/// INTERNAL, as tonic's own prost codec says of a malformed message.
fn output_error(err: wire_json::EncodeError) -> CallError {
    CallError::from(Status::internal(err.to_string()))
}

/// One message of a streaming form: `progress` → a progress event, `result` →
/// the result; `None` when neither is set.
pub(crate) fn stream_event(message: &DynamicMessage) -> Option<Result<ToolEvent, CallError>> {
    let desc = message.descriptor();
    if let Some(field) = desc.get_field_by_name("result")
        && message.has_field(&field)
    {
        let value = message.get_field(&field);
        let result = value.as_message()?;
        return Some(message_to_json(result).map(ToolEvent::Result));
    }
    let field = desc.get_field_by_name("progress")?;
    if !message.has_field(&field) {
        return None;
    }
    let value = message.get_field(&field);
    let progress = value.as_message()?;
    let text =
        |name: &str| progress.get_field_by_name(name).and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    let count = |name: &str| progress.get_field_by_name(name).map(|v| to_u32(&v)).unwrap_or(0);
    Some(Ok(ToolEvent::Progress {
        step: text("step"),
        message: text("message"),
        current: count("current"),
        total: count("total"),
    }))
}

/// Any integer field as a `u32`, saturating (a progress counter declared with
/// another integer type still reads sensibly).
fn to_u32(value: &prost_reflect::Value) -> u32 {
    use prost_reflect::Value as V;
    match value {
        V::U32(n) => *n,
        V::I32(n) => u32::try_from(*n).unwrap_or(0),
        V::U64(n) => u32::try_from(*n).unwrap_or(u32::MAX),
        V::I64(n) => u32::try_from(*n).unwrap_or(if *n < 0 { 0 } else { u32::MAX }),
        _ => 0,
    }
}

/// A request carrying the caller's context as metadata. The map is built from header names
/// made once ([`crate::headers`]): keyed by `&str`, tonic checks and hashes each name again on
/// every call.
fn request<T>(message: T, ctx: &CallContext) -> tonic::Request<T> {
    let mut headers = http::HeaderMap::with_capacity(8);
    let forwarded = [
        (http::header::AUTHORIZATION, &ctx.authorization),
        (crate::headers::X_REQUEST_ID, &ctx.request_id),
        (crate::headers::TRACEPARENT, &ctx.traceparent),
        (crate::proxies::X_FORWARDED_FOR, &ctx.forwarded_for),
    ];
    for (key, value) in forwarded {
        let Some(value) = value else { continue };
        // What tonic's `MetadataValue::<Ascii>::try_from(&str)` accepts, and no more.
        match http::HeaderValue::from_str(value) {
            Ok(value) => {
                headers.insert(key, value);
            }
            // Only visible ASCII travels in gRPC metadata; a value that is
            // not is dropped rather than failing the call (for authorization
            // the service then answers UNAUTHENTICATED, as it should).
            Err(_) => tracing::debug!(key = key.as_str(), "dropping a header value not valid as gRPC metadata"),
        }
    }
    if let Some(transport) = ctx.transport {
        headers.insert(crate::metrics::TRANSPORT_HEADER, http::HeaderValue::from_static(transport.as_str()));
    }
    let mut request =
        tonic::Request::from_parts(tonic::metadata::MetadataMap::from_headers(headers), Default::default(), message);
    if let Some(timeout) = ctx.timeout {
        request.set_timeout(timeout.min(MAX_TIMEOUT));
    }
    request
}

/// The caller's deadline, also enforced here: `grpc-timeout` tells the service,
/// but only the client can promise the caller an answer in time whatever the
/// service (or the network to it) does.
fn deadline(ctx: &CallContext) -> Option<tokio::time::Instant> {
    ctx.timeout.and_then(|t| tokio::time::Instant::now().checked_add(t))
}

async fn within<T>(
    deadline: Option<tokio::time::Instant>,
    call: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    let result = match deadline {
        None => call.await,
        Some(at) => tokio::time::timeout_at(at, call).await.unwrap_or_else(|_| Err(deadline_passed())),
    };
    result.map_err(|status| as_the_caller_sees_it(status, deadline))
}

fn deadline_passed() -> Status {
    Status::deadline_exceeded("the deadline passed before the service answered")
}

/// Two failures the gRPC client reports in codes that mislead the gateway's callers (a split
/// deployment only: in `serve` the call never leaves the process):
/// - the client's own `grpc-timeout` timer is CANCELLED ("Timeout expired"), which is a 499
///   blaming the caller and a JSON-RPC error, when the caller's deadline passed: 504 and a tool
///   error, as `serve` answers. It fires in the same instant as ours and is polled first.
/// - a connection to the service that breaks during the answer (the service died or restarted)
///   is UNKNOWN, a 500 and an alert, when the service was unavailable: 503, as a call that could
///   not connect already is, and as gRPC's own clients report a lost connection. A status read
///   from the service's trailers has no source; one made from a local error has.
fn as_the_caller_sees_it(status: Status, deadline: Option<tokio::time::Instant>) -> Status {
    let passed = deadline.is_some_and(|at| tokio::time::Instant::now() >= at);
    match status.code() {
        tonic::Code::Cancelled if passed => deadline_passed(),
        tonic::Code::Unknown if std::error::Error::source(&status).is_some() => {
            Status::unavailable(format!("the connection to the service broke: {}", status.message()))
        }
        _ => status,
    }
}

fn method_path(method: &MethodDescriptor) -> Result<http::uri::PathAndQuery, Status> {
    let path = format!("/{}/{}", method.parent_service().full_name(), method.name());
    http::uri::PathAndQuery::try_from(path).map_err(|e| Status::internal(format!("bad method path: {e}")))
}

fn not_ready(err: TransportError) -> Status {
    err.0
}

/// The upstream service with a named error type. With the boxed service's
/// `Box<dyn Error>` error, rustc loses the trait object's lifetime when it
/// checks that a future holding a tonic call is `Send`, and then cannot prove
/// tonic's `Into<StdError>` bound ("implementation of `From` is not general
/// enough"), which breaks every `tokio::spawn` of a call. A plain struct has
/// no lifetime to lose.
///
/// Every call also gets `answer_within` to see the service's response head. A service that
/// accepts calls and never answers them (a hung handler, a stuck disk) still answers HTTP/2
/// pings, so nothing else ends such a call: not the keep-alive, and not a caller who sent no
/// deadline. The head is the one moment common to every call shape: a unary call's head comes
/// with its answer, a server stream's as soon as its handler returns the stream (tonic's server,
/// over TCP and in-process alike), so the bound never cuts a progress stream or a change feed
/// that has started, however long it then runs or idles.
///
/// The bound starts when the call first waits for the service to be ready (split mode: for a
/// place in the channel's queue, behind a busy or hung service), and that wait counts against
/// it: with a bound of its own per part, such a call could take twice the flag.
pub(crate) struct Transport {
    service: UpstreamService,
    answer_within: Duration,
    /// Since when this call has waited to be taken, and the bound's timer meanwhile. Each call
    /// has its own clone of the transport (`Upstream::grpc`), so this is one call's.
    waiting: Option<(tokio::time::Instant, Pin<Box<tokio::time::Sleep>>)>,
}

impl Clone for Transport {
    fn clone(&self) -> Self {
        Transport { service: self.service.clone(), answer_within: self.answer_within, waiting: None }
    }
}

/// A failure to hand a request to the service, as the status tonic reports:
/// tonic finds it in the source chain.
#[derive(Debug)]
pub(crate) struct TransportError(Status);

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.message())
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// A recognisable error keeps tonic's reading of it (a connect failure is
/// UNAVAILABLE, an h2 reset its own code); anything else from the transport
/// means the service could not be reached: UNAVAILABLE too, not UNKNOWN.
fn transport_error(err: tonic::codegen::StdError) -> TransportError {
    TransportError(Status::try_from_error(err).unwrap_or_else(|err| Status::unavailable(err.to_string())))
}

/// The service kept a call past `--upstream-timeout-seconds` without answering. DEADLINE_EXCEEDED
/// (504, a tool error over MCP) as when a caller's own deadline passes, and not UNAVAILABLE: the
/// service took the call and may yet carry it out, so it is not safe to retry blindly as a call
/// that never reached a service is. The reason tells it from the caller's deadline, and the
/// message names the knob.
fn not_answered(within: Duration) -> TransportError {
    let seconds = within.as_secs().to_string();
    let metadata: std::collections::HashMap<String, String> =
        [("flag".to_string(), UPSTREAM_TIMEOUT_FLAG.to_string()), ("timeoutSeconds".to_string(), seconds.clone())]
            .into_iter()
            .collect();
    let details = tonic_types::ErrorDetails::with_error_info(UPSTREAM_TIMED_OUT, "task-mcp", metadata);
    TransportError(<Status as tonic_types::StatusExt>::with_error_details(
        tonic::Code::DeadlineExceeded,
        format!("the service did not start answering within {seconds} s ({UPSTREAM_TIMEOUT_FLAG})"),
        details,
    ))
}

/// The reason of a call the service did not answer within `--upstream-timeout-seconds`.
const UPSTREAM_TIMED_OUT: &str = "UPSTREAM_TIMED_OUT";
const UPSTREAM_TIMEOUT_FLAG: &str = "--upstream-timeout-seconds";

pin_project_lite::pin_project! {
    /// A call to the service until its response head, or until `answer_within` passed first.
    /// Dropped then, the call is cancelled: over TCP its HTTP/2 stream is reset, in-process
    /// the handler's future is dropped, so the calls of a hung service do not pile up.
    pub(crate) struct TransportFuture {
        #[pin]
        call: <UpstreamService as tower::Service<http::Request<tonic::body::Body>>>::Future,
        // Armed by the first poll that finds no answer: a call answered at once (in-process,
        // from memory) costs no timer.
        #[pin]
        timer: Option<tokio::time::Sleep>,
        // What is left of the bound, and the bound itself (`--upstream-timeout-seconds`).
        within: Duration,
        bound: Duration,
    }
}

impl Future for TransportFuture {
    type Output = Result<http::Response<tonic::body::Body>, TransportError>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let this = self.project();
        // The answer first: one that is there when the timer fires is still taken.
        if let std::task::Poll::Ready(answer) = this.call.poll(cx) {
            return std::task::Poll::Ready(answer.map_err(transport_error));
        }
        let mut timer = this.timer;
        if timer.is_none() {
            timer.set(Some(tokio::time::sleep(*this.within)));
        }
        match timer.as_pin_mut().map(|timer| timer.poll(cx)) {
            Some(std::task::Poll::Ready(())) => std::task::Poll::Ready(Err(not_answered(*this.bound))),
            _ => std::task::Poll::Pending,
        }
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for Transport {
    type Response = http::Response<tonic::body::Body>;
    type Error = TransportError;
    type Future = TransportFuture;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        if let std::task::Poll::Ready(ready) = self.service.poll_ready(cx) {
            return std::task::Poll::Ready(ready.map_err(transport_error));
        }
        let bound = self.answer_within;
        let (_, timer) =
            self.waiting.get_or_insert_with(|| (tokio::time::Instant::now(), Box::pin(tokio::time::sleep(bound))));
        timer.as_mut().poll(cx).map(|()| Err(not_answered(bound)))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        // What the wait to be taken left of the bound.
        let within = match self.waiting.take() {
            Some((since, _)) => self.answer_within.saturating_sub(since.elapsed()),
            None => self.answer_within,
        };
        TransportFuture { call: self.service.call(request), timer: None, within, bound: self.answer_within }
    }
}

/// The unary call as a future owning everything it needs: a future borrowing
/// descriptors or context would be generic over their lifetimes, and rustc
/// cannot always prove the `Send` that spawning callers need of such futures.
/// The answer is the response's bytes, for the tool's [`OutputEncoder`].
fn unary_call(
    mut grpc: tonic::client::Grpc<Transport>,
    path: http::uri::PathAndQuery,
    input: DynamicMessage,
    ctx: &CallContext,
) -> impl Future<Output = Result<Bytes, Status>> + Send + use<> {
    let request = request(input, ctx);
    let codec = DynamicCodec::raw();
    let deadline = deadline(ctx);
    async move {
        let call = async move {
            grpc.ready().await.map_err(not_ready)?;
            grpc.unary(request, path, codec).await
        };
        Ok(within(deadline, call).await?.into_inner())
    }
}

/// Opens a server-streaming call (see [`unary_call`] for why it owns its state).
fn server_streaming_call(
    mut grpc: tonic::client::Grpc<Transport>,
    method: &MethodDescriptor,
    input: DynamicMessage,
    ctx: &CallContext,
) -> impl Future<Output = Result<tonic::Streaming<DynamicMessage>, Status>> + Send + use<> {
    let path = method_path(method);
    let request = request(input, ctx);
    let codec = DynamicCodec::new(method.output());
    async move {
        let path = path?;
        grpc.ready().await.map_err(not_ready)?;
        let response = grpc.server_streaming(request, path, codec).await?;
        Ok(response.into_inner())
    }
}

/// A resource being put together from its chunks.
struct Assembly<'a> {
    uri: &'a str,
    mime_type: String,
    body: Body,
    size: usize,
}

enum Body {
    Text(String),
    Blob(Vec<u8>),
}

impl<'a> Assembly<'a> {
    fn new(uri: &'a str) -> Self {
        Assembly { uri, mime_type: String::new(), body: Body::Text(String::new()), size: 0 }
    }

    fn push(&mut self, chunk: pb::ResourceChunk) -> Result<(), Status> {
        use pb::resource_chunk::Content;
        if self.mime_type.is_empty() {
            self.mime_type = chunk.mime_type;
        }
        let added = match &chunk.content {
            Some(Content::Text(text)) => text.len(),
            Some(Content::Blob(blob)) => blob.len(),
            None => 0,
        };
        // Refuse as early as the service announces the size, else as soon as
        // the chunks pass the cap.
        let announced = usize::try_from(chunk.total_size).unwrap_or(usize::MAX);
        let size = self.size.saturating_add(added).max(announced);
        if size > MAX_RESOURCE_BYTES {
            return Err(too_large(self.uri, size));
        }
        self.size += added;
        match (chunk.content, &mut self.body) {
            (None, _) => {}
            (Some(Content::Text(text)), Body::Text(body)) => body.push_str(&text),
            (Some(Content::Text(text)), Body::Blob(body)) => body.extend_from_slice(text.as_bytes()),
            (Some(Content::Blob(blob)), Body::Blob(body)) => body.extend_from_slice(&blob),
            (Some(Content::Blob(blob)), Body::Text(body)) => {
                // Bytes after text: the whole resource is binary.
                let mut bytes = std::mem::take(body).into_bytes();
                bytes.extend_from_slice(&blob);
                self.body = Body::Blob(bytes);
            }
        }
        Ok(())
    }

    fn finish(self) -> ResourceContent {
        let (text, blob, fallback_mime) = match self.body {
            Body::Text(text) => (Some(text), None, "text/plain"),
            Body::Blob(blob) => (None, Some(blob), "application/octet-stream"),
        };
        let mime_type = if self.mime_type.is_empty() { fallback_mime.to_string() } else { self.mime_type };
        ResourceContent { uri: self.uri.to_string(), mime_type, text, blob }
    }
}

/// The service's own refusal for oversized resources, so callers see one error
/// whichever side enforced the cap.
fn too_large(uri: &str, size: usize) -> Status {
    let metadata: std::collections::HashMap<String, String> = [
        ("uri".to_string(), uri.to_string()),
        ("size".to_string(), size.to_string()),
        ("limit".to_string(), MAX_RESOURCE_BYTES.to_string()),
    ]
    .into_iter()
    .collect();
    let details = tonic_types::ErrorDetails::with_error_info("RESOURCE_TOO_LARGE", "task-mcp", metadata);
    <Status as tonic_types::StatusExt>::with_error_details(
        tonic::Code::FailedPrecondition,
        format!("resource {uri} is larger than the gateway's limit of {MAX_RESOURCE_BYTES} bytes"),
        details,
    )
}

const WATCH_CHANGES: &str = "/taskmcp.v1.Resources/WatchChanges";
/// `WatchChangesRequest.replay_ms`'s maximum in the proto.
const MAX_REPLAY: Duration = Duration::from_secs(10);
/// Added to a feed's look back for the time the call takes to reach a separate service (whose
/// clock starts the look back on arrival). Too much only repeats a notification the client may
/// already have acted on; notifications say "re-read", so that costs a read.
const REPLAY_MARGIN: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use serde_json::json;
    use tokio_stream::StreamExt;
    use tonic::{Code, Request, Response};
    use tonic_prost::ProstCodec;

    use super::*;

    /// Longer than anything the fake takes (its ShowChange sleeps 30 s, for caller deadlines).
    const NO_HURRY: Duration = Duration::from_secs(60);

    fn pool() -> DescriptorPool {
        DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET).unwrap()
    }

    fn registry() -> Registry {
        Registry::from_pool(&pool()).unwrap()
    }

    #[test]
    fn registry_holds_exactly_the_annotated_rpcs_sorted() {
        let registry = registry();
        let names: Vec<&str> = registry.tools().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            ["change.archive", "change.list", "change.open", "change.show", "change.validate", "task.update"]
        );
        for tool in registry.tools() {
            assert!(!tool.description.is_empty(), "{} has no description", tool.name);
            assert!(tool.title.is_some(), "{} has no title", tool.name);
            assert_eq!(tool.input_schema["type"], "object");
            assert_eq!(tool.output_schema["type"], "object");
            assert_eq!(tool.input_schema["$schema"], crate::schema::DIALECT);
            assert_eq!(tool.output_schema["$schema"], crate::schema::DIALECT);
        }
    }

    #[test]
    fn annotations_and_descriptions_follow_the_proto() {
        let registry = registry();
        let flags = |name: &str| {
            let t = registry.get(name).unwrap();
            (t.read_only, t.destructive, t.idempotent)
        };
        assert_eq!(flags("change.open"), (false, false, true));
        assert_eq!(flags("change.list"), (true, false, true));
        assert_eq!(flags("change.show"), (true, false, true));
        assert_eq!(flags("change.validate"), (true, false, true));
        assert_eq!(flags("task.update"), (false, false, true));
        assert_eq!(flags("change.archive"), (false, true, true));

        let open = registry.get("change.open").unwrap();
        assert_eq!(open.title.as_deref(), Some("Open a change"));
        assert_eq!(open.method.full_name(), "taskmcp.v1.Changes.OpenChange");
        assert!(open.description.starts_with("Open a change: scaffold `proposal.md`"), "{}", open.description);
        // Hard-wrapped lines are joined.
        assert!(!open.description.contains('\n'), "{}", open.description);
        assert_eq!(open.input_schema["properties"]["template"]["type"], "string");
        assert_eq!(open.output_schema["properties"]["created"]["type"], "boolean");
        assert!(registry.get("nope").is_none());
    }

    #[test]
    fn archive_has_its_streaming_form_and_nothing_else_does() {
        let registry = registry();
        for tool in registry.tools() {
            let stream = tool.stream_method.as_ref().map(|m| m.full_name().to_string());
            if tool.name == "change.archive" {
                assert_eq!(stream.as_deref(), Some("taskmcp.v1.Changes.ArchiveChangeStream"));
            } else {
                assert_eq!(stream, None, "{}", tool.name);
            }
        }
    }

    fn input_of(tool: &str) -> MessageDescriptor {
        registry().get(tool).unwrap().method.input()
    }

    #[test]
    fn arguments_transcode_by_the_proto3_json_mapping() {
        let message = json_to_message(
            &input_of("change.open"),
            &json!({"title": "T", "slug": "add-x", "ttlSeconds": 120, "template": "TEMPLATE_BUGFIX"}),
        )
        .unwrap();
        let typed: pb::OpenChangeRequest = message.transcode_to().unwrap();
        assert_eq!(typed.slug, "add-x");
        assert_eq!(typed.ttl_seconds, 120);
        assert_eq!(typed.template, pb::Template::Bugfix as i32);

        // Proto field names are accepted too, as the mapping requires.
        let message = json_to_message(&input_of("change.open"), &json!({"ttl_seconds": 7})).unwrap();
        assert_eq!(message.transcode_to::<pb::OpenChangeRequest>().unwrap().ttl_seconds, 7);

        // No arguments at all is the empty request.
        for empty in [Value::Null, json!({})] {
            let message = json_to_message(&input_of("change.list"), &empty).unwrap();
            assert_eq!(message.transcode_to::<pb::ListChangesRequest>().unwrap(), pb::ListChangesRequest::default());
        }
    }

    #[test]
    fn bad_arguments_are_invalid_arguments_with_the_reason() {
        let cases = [
            (json!({"slug": "x", "bogus": 1}), "bogus"),
            (json!({"template": "TEMPLATE_NOPE"}), "TEMPLATE_NOPE"),
            (json!({"ttlSeconds": "many"}), "ttlSeconds: "),
            (json!({"ttlSeconds": -1}), "ttlSeconds: "),
            (json!({"ttl_seconds": 99_999_999_999_u64}), "ttl_seconds: "),
            (json!({"ttlSeconds": 4_294_967_296_u64}), "(expected a uint32, an integer from 0 to 4294967295)"),
            (json!({"ttlSeconds": -1}), "(expected a uint32, an integer from 0 to 4294967295)"),
            (json!({"slug": 5}), "slug: "),
            (json!(["not", "an", "object"]), ""),
            (json!("text"), ""),
        ];
        for (args, mention) in cases {
            match json_to_message(&input_of("change.open"), &args) {
                Err(CallError::InvalidArguments(message)) => {
                    assert!(message.contains(mention), "{args}: {message}");
                    assert!(!message.is_empty());
                }
                other => panic!("{args}: {other:?}"),
            }
        }
        // The range follows the path into lists and nested messages, and only integers get one.
        let refusal = |tool: &str, args: Value| match json_to_message(&input_of(tool), &args) {
            Err(CallError::InvalidArguments(message)) => message,
            other => panic!("{args}: {other:?}"),
        };
        let paged = refusal("change.list", json!({"pageSize": 1_u64 << 40}));
        assert!(
            paged.starts_with("pageSize: ") && paged.ends_with("(expected a uint32, an integer from 0 to 4294967295)")
        );
        let nested = refusal("task.update", json!({"slug": "x", "updates": [{"id": "1", "done": true}, {"id": 7}]}));
        assert!(nested.starts_with("updates[1].id: ") && !nested.contains("(expected"), "{nested}");
    }

    #[test]
    fn output_emits_defaults_enum_names_camel_case_and_64_bit_strings() {
        let registry = registry();
        let output = registry.get("change.list").unwrap().method.output();
        let typed = pb::ListChangesResponse {
            changes: vec![pb::ChangeSummary {
                slug: "add-x".into(),
                status: pb::ChangeStatus::Draft as i32,
                updated_at: Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 0 }),
                ..Default::default()
            }],
            next_page_token: String::new(),
            total: 0,
        };
        let mut message = DynamicMessage::new(output);
        message.transcode_from(&typed).unwrap();
        let value = message_to_json(&message).unwrap();
        assert_eq!(value["nextPageToken"], "");
        assert_eq!(value["total"], 0);
        let change = &value["changes"][0];
        assert_eq!(change["status"], "CHANGE_STATUS_DRAFT");
        assert_eq!(change["archiveName"], "");
        assert_eq!(change["updatedAt"], "2023-11-14T22:13:20Z");
        // Unset message fields (and `optional` ones) are left out, not null.
        assert!(change.get("lock").is_none());
        assert!(change.get("progress").is_none());

        let chunk_desc = pool().get_message_by_name("taskmcp.v1.ResourceChunk").unwrap();
        let mut chunk = DynamicMessage::new(chunk_desc);
        chunk.transcode_from(&pb::ResourceChunk { total_size: 5, ..Default::default() }).unwrap();
        let value = message_to_json(&chunk).unwrap();
        assert_eq!(value["totalSize"], "5");
        assert_eq!(value["offset"], "0");
    }

    #[test]
    fn stream_messages_become_events() {
        let desc = pool().get_message_by_name("taskmcp.v1.ArchiveChangeEvent").unwrap();
        let to_dynamic = |event: pb::ArchiveChangeEvent| {
            let mut message = DynamicMessage::new(desc.clone());
            message.transcode_from(&event).unwrap();
            message
        };
        let progress = to_dynamic(pb::ArchiveChangeEvent {
            event: Some(pb::archive_change_event::Event::Progress(pb::Progress {
                step: "move".into(),
                message: "Moving".into(),
                current: 3,
                total: 4,
            })),
        });
        assert_eq!(
            stream_event(&progress).unwrap().unwrap(),
            ToolEvent::Progress { step: "move".into(), message: "Moving".into(), current: 3, total: 4 }
        );
        let result = to_dynamic(pb::ArchiveChangeEvent {
            event: Some(pb::archive_change_event::Event::Result(pb::ArchiveChangeResponse {
                already_archived: true,
                ..Default::default()
            })),
        });
        match stream_event(&result).unwrap().unwrap() {
            ToolEvent::Result(value) => {
                assert_eq!(value["alreadyArchived"], true);
                assert_eq!(value["findings"], json!([]));
            }
            other => panic!("{other:?}"),
        }
        assert!(stream_event(&to_dynamic(pb::ArchiveChangeEvent { event: None })).is_none());
    }

    // ---- calls against a fake upstream -------------------------------------
    //
    // The real service lives in the root crate; here a small in-process gRPC
    // server built from tonic's server codec and typed prost messages answers
    // the dynamic calls, which also checks that `DynamicCodec` speaks the same
    // wire format as generated code.

    type Seen = Arc<Mutex<Vec<http::HeaderMap>>>;
    type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

    /// Flips when the server side of a streaming call is dropped (cancelled).
    struct DropFlag(Arc<tokio::sync::Notify>);
    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.notify_one();
        }
    }

    struct Fake {
        seen: Seen,
        cancelled: Arc<tokio::sync::Notify>,
        health: tonic_health::server::HealthReporter,
        upstream: Upstream,
    }

    fn fake() -> Fake {
        fake_answering_within(NO_HURRY)
    }

    /// The fake behind an `Upstream` that waits `within` for the head of an answer.
    fn fake_answering_within(within: Duration) -> Fake {
        let seen: Seen = Arc::default();
        let cancelled = Arc::new(tokio::sync::Notify::new());
        let (health, health_service) = tonic_health::server::health_reporter();
        let (seen2, cancelled2) = (seen.clone(), cancelled.clone());
        let service = tower::service_fn(move |req: http::Request<tonic::body::Body>| {
            seen2.lock().unwrap().push(req.headers().clone());
            let cancelled = cancelled2.clone();
            let mut health_service = health_service.clone();
            async move {
                let path = req.uri().path().to_string();
                let response = match path.as_str() {
                    "/taskmcp.v1.Changes/OpenChange" => {
                        let codec = ProstCodec::<pb::OpenChangeResponse, pb::OpenChangeRequest>::default();
                        tonic::server::Grpc::new(codec).unary(tower::service_fn(open_change), req).await
                    }
                    "/taskmcp.v1.Changes/ShowChange" => {
                        let codec = ProstCodec::<pb::ShowChangeResponse, pb::ShowChangeRequest>::default();
                        let slow = tower::service_fn(move |_: Request<pb::ShowChangeRequest>| {
                            let flag = DropFlag(cancelled.clone());
                            async move {
                                let _flag = flag;
                                tokio::time::sleep(Duration::from_secs(30)).await;
                                Ok::<_, Status>(Response::new(pb::ShowChangeResponse::default()))
                            }
                        });
                        tonic::server::Grpc::new(codec).unary(slow, req).await
                    }
                    "/taskmcp.v1.Changes/ArchiveChange" => {
                        let codec = ProstCodec::<pb::ArchiveChangeResponse, pb::ArchiveChangeRequest>::default();
                        let archive = tower::service_fn(|r: Request<pb::ArchiveChangeRequest>| async move {
                            Ok::<_, Status>(Response::new(archived(&r.into_inner().slug)))
                        });
                        tonic::server::Grpc::new(codec).unary(archive, req).await
                    }
                    "/taskmcp.v1.Changes/ArchiveChangeStream" => {
                        let codec = ProstCodec::<pb::ArchiveChangeEvent, pb::ArchiveChangeRequest>::default();
                        let stream = tower::service_fn(move |r: Request<pb::ArchiveChangeRequest>| {
                            let cancelled = cancelled.clone();
                            async move { Ok::<_, Status>(Response::new(archive_stream(r.into_inner(), cancelled))) }
                        });
                        tonic::server::Grpc::new(codec).server_streaming(stream, req).await
                    }
                    "/taskmcp.v1.Changes/ListChanges" => {
                        let codec = ProstCodec::<pb::ListChangesResponse, pb::ListChangesRequest>::default();
                        tonic::server::Grpc::new(codec).unary(tower::service_fn(list_changes), req).await
                    }
                    "/taskmcp.v1.Resources/ReadResource" => {
                        let codec = ProstCodec::<pb::ResourceChunk, pb::ReadResourceRequest>::default();
                        tonic::server::Grpc::new(codec).server_streaming(tower::service_fn(read_resource), req).await
                    }
                    "/taskmcp.v1.Resources/ListResources" => {
                        let codec = ProstCodec::<pb::ListResourcesResponse, pb::ListResourcesRequest>::default();
                        let list = tower::service_fn(|_: Request<pb::ListResourcesRequest>| async {
                            let info = pb::ResourceInfo { uri: "changes://active".into(), ..Default::default() };
                            Ok::<_, Status>(Response::new(pb::ListResourcesResponse {
                                resources: vec![info],
                                ..Default::default()
                            }))
                        });
                        tonic::server::Grpc::new(codec).unary(list, req).await
                    }
                    "/taskmcp.v1.Resources/WatchChanges" => {
                        let codec = ProstCodec::<pb::ChangeEvent, pb::WatchChangesRequest>::default();
                        let watch = tower::service_fn(|_: Request<pb::WatchChangesRequest>| async {
                            let events = ["add-a", "add-b"]
                                .map(|slug| Ok(pb::ChangeEvent { slug: slug.into(), kind: 1, ..Default::default() }));
                            let stream: BoxStream<pb::ChangeEvent> = Box::pin(tokio_stream::iter(events));
                            Ok::<_, Status>(Response::new(stream))
                        });
                        tonic::server::Grpc::new(codec).server_streaming(watch, req).await
                    }
                    _ if path.starts_with("/grpc.health.v1.Health/") => {
                        match tower::Service::call(&mut health_service, req).await {
                            Ok(response) => response,
                            Err(never) => match never {},
                        }
                    }
                    _ => Status::unimplemented(path).into_http(),
                };
                Ok::<_, tonic::codegen::StdError>(response)
            }
        });
        let upstream = Upstream::new(UpstreamService::new(service), within).unwrap();
        Fake { seen, cancelled, health, upstream }
    }

    async fn open_change(request: Request<pb::OpenChangeRequest>) -> Result<Response<pb::OpenChangeResponse>, Status> {
        let request = request.into_inner();
        if request.slug == "held" {
            let details = tonic_types::ErrorDetails::with_error_info(
                "LOCKED_BY_OTHER_OWNER",
                "task-mcp",
                std::collections::HashMap::from([("holder".to_string(), "alice".to_string())]),
            );
            return Err(<Status as tonic_types::StatusExt>::with_error_details(Code::Aborted, "locked", details));
        }
        Ok(Response::new(pb::OpenChangeResponse {
            change: Some(pb::ChangeSummary {
                slug: request.slug.clone(),
                title: request.title,
                status: pb::ChangeStatus::Draft as i32,
                ..Default::default()
            }),
            created: true,
            files: vec![format!("changes/{}/proposal.md", request.slug)],
            ..Default::default()
        }))
    }

    fn archived(slug: &str) -> pb::ArchiveChangeResponse {
        pb::ArchiveChangeResponse {
            receipt: Some(pb::Receipt { slug: slug.into(), ..Default::default() }),
            ..Default::default()
        }
    }

    fn archive_stream(
        request: pb::ArchiveChangeRequest,
        cancelled: Arc<tokio::sync::Notify>,
    ) -> BoxStream<pb::ArchiveChangeEvent> {
        use pb::archive_change_event::Event;
        let step = |n: u32| pb::ArchiveChangeEvent {
            event: Some(Event::Progress(pb::Progress {
                step: format!("step{n}"),
                message: format!("Step {n}"),
                current: n,
                total: 2,
            })),
        };
        Box::pin(async_stream::stream! {
            let _flag = DropFlag(cancelled);
            yield Ok(step(1));
            if request.slug == "hang" {
                std::future::pending::<()>().await;
            }
            if request.slug == "no-result" {
                return;
            }
            yield Ok(step(2));
            yield Ok(pb::ArchiveChangeEvent { event: Some(Event::Result(archived(&request.slug))) });
        })
    }

    async fn list_changes(
        request: Request<pb::ListChangesRequest>,
    ) -> Result<Response<pb::ListChangesResponse>, Status> {
        let request = request.into_inner();
        if request.status != pb::ChangeStatus::All as i32 || request.page_size != SLUG_PAGE_SIZE {
            return Err(Status::invalid_argument("expected status ALL and page size 200"));
        }
        let summary = |slug: &str| pb::ChangeSummary { slug: slug.into(), ..Default::default() };
        let (slugs, next): (&[&str], &str) = match request.page_token.as_str() {
            "" => (&["add-b", "fix-c", "add-a"], "p2"),
            "p2" => (&["add-a", "add-d"], ""),
            other => return Err(Status::invalid_argument(format!("bad token {other}"))),
        };
        Ok(Response::new(pb::ListChangesResponse {
            changes: slugs.iter().map(|s| summary(s)).collect(),
            next_page_token: next.into(),
            total: 5,
        }))
    }

    async fn read_resource(
        request: Request<pb::ReadResourceRequest>,
    ) -> Result<Response<BoxStream<pb::ResourceChunk>>, Status> {
        use pb::resource_chunk::Content;
        let uri = request.into_inner().uri;
        let chunk = |content: Content, total_size: u64| pb::ResourceChunk {
            uri: uri.clone(),
            mime_type: "text/markdown".into(),
            content: Some(content),
            total_size,
            ..Default::default()
        };
        let chunks = match uri.as_str() {
            "change://a/proposal" => {
                vec![chunk(Content::Text("# T".into()), 6), chunk(Content::Text("\nok".into()), 6)]
            }
            "change://a/blob" => vec![chunk(Content::Blob(vec![0, 1]), 3), chunk(Content::Blob(vec![2]), 3)],
            "change://a/huge" => vec![chunk(Content::Text("x".into()), 1 << 30)],
            _ => return Err(Status::not_found(uri)),
        };
        let stream: BoxStream<pb::ResourceChunk> = Box::pin(tokio_stream::iter(chunks.into_iter().map(Ok)));
        Ok(Response::new(stream))
    }

    fn tool<'a>(fake: &'a Fake, name: &str) -> &'a ToolDef {
        fake.upstream.registry().get(name).unwrap()
    }

    #[tokio::test]
    async fn unary_call_round_trips_and_forwards_metadata() {
        let fake = fake();
        let ctx = CallContext {
            authorization: Some("Bearer s3cret".into()),
            request_id: Some("req-1".into()),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            timeout: Some(Duration::from_secs(5)),
            transport: Some(crate::metrics::Transport::Mcp),
            forwarded_for: Some("203.0.113.7".into()),
        };
        let args = json!({"title": "Add X", "slug": "add-x"});
        let out = fake.upstream.call_tool(tool(&fake, "change.open"), &args, ctx).await.unwrap();
        let out = out.to_value();
        assert_eq!(out["created"], true);
        assert_eq!(out["change"]["slug"], "add-x");
        assert_eq!(out["change"]["status"], "CHANGE_STATUS_DRAFT");
        assert_eq!(out["files"], json!(["changes/add-x/proposal.md"]));
        assert_eq!(out["resourceUris"], json!([]));
        assert!(out.get("takeover").is_none());

        let seen = fake.seen.lock().unwrap();
        let headers = seen.last().unwrap();
        assert_eq!(headers["authorization"], "Bearer s3cret");
        assert_eq!(headers["x-request-id"], "req-1");
        assert!(headers["traceparent"].to_str().unwrap().starts_with("00-0af7"));
        assert!(headers.contains_key("grpc-timeout"));
        assert_eq!(headers[crate::metrics::TRANSPORT_HEADER], "mcp");
        assert_eq!(headers["x-forwarded-for"], "203.0.113.7");
    }

    #[tokio::test]
    async fn upstream_errors_keep_code_reason_and_metadata() {
        let fake = fake();
        let args = json!({"slug": "held"});
        let err = fake.upstream.call_tool(tool(&fake, "change.open"), &args, CallContext::default()).await.unwrap_err();
        let CallError::Upstream(err) = err else { panic!("{err:?}") };
        assert_eq!(err.code, Code::Aborted);
        assert_eq!(err.reason, "LOCKED_BY_OTHER_OWNER");
        assert_eq!(err.metadata["holder"], "alice");
    }

    #[tokio::test]
    async fn bad_arguments_never_reach_the_service() {
        let fake = fake();
        let args = json!({"slug": "x", "nope": true});
        let err = fake.upstream.call_tool(tool(&fake, "change.open"), &args, CallContext::default()).await.unwrap_err();
        assert!(matches!(err, CallError::InvalidArguments(_)), "{err:?}");
        assert!(fake.seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_deadline_is_enforced_by_the_gateway_too() {
        let fake = fake();
        let ctx = CallContext { timeout: Some(Duration::from_millis(50)), ..Default::default() };
        let err = fake.upstream.call_tool(tool(&fake, "change.show"), &json!({"slug": "s"}), ctx).await.unwrap_err();
        let CallError::Upstream(err) = err else { panic!("{err:?}") };
        assert_eq!(err.code, Code::DeadlineExceeded);
    }

    /// A service that takes a call and never answers it (its handler hangs; HTTP/2 pings, which
    /// the transport answers, would keep it so forever).
    #[tokio::test(start_paused = true)]
    async fn a_call_not_answered_within_the_bound_is_504_naming_the_flag_and_cancelled() {
        let fake = fake_answering_within(Duration::from_secs(2));
        let cancelled = fake.cancelled.notified();
        let args = json!({"slug": "s"});
        let show = fake.upstream.call_tool(tool(&fake, "change.show"), &args, CallContext::default());
        let err = tokio::time::timeout(Duration::from_secs(10), show).await.expect("the bound fired").unwrap_err();
        let CallError::Upstream(err) = err else { panic!("{err:?}") };
        assert_eq!((err.code, err.reason.as_str()), (Code::DeadlineExceeded, "UPSTREAM_TIMED_OUT"), "{err:?}");
        assert_eq!(err.http_status(), http::StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(err.mcp_failure(), crate::error::McpFailure::ToolError);
        assert!(err.message.contains("--upstream-timeout-seconds") && err.message.contains("2 s"), "{err:?}");
        assert_eq!(err.metadata["timeoutSeconds"], "2");
        tokio::time::timeout(Duration::from_secs(1), cancelled).await.expect("the handler was not dropped");
    }

    #[tokio::test(start_paused = true)]
    async fn a_callers_shorter_deadline_wins_over_the_bound() {
        let fake = fake_answering_within(Duration::from_secs(2));
        let ctx = CallContext { timeout: Some(Duration::from_millis(500)), ..Default::default() };
        let err = fake.upstream.call_tool(tool(&fake, "change.show"), &json!({"slug": "s"}), ctx).await.unwrap_err();
        let CallError::Upstream(err) = err else { panic!("{err:?}") };
        assert_eq!((err.code, err.reason.as_str()), (Code::DeadlineExceeded, "DEADLINE_EXCEEDED"), "{err:?}");
        assert!(!err.message.contains("--upstream-timeout-seconds"), "{err:?}");
    }

    /// A service that takes no call for `busy` (a split deployment's channel with its queue
    /// full behind a hung service), then answers each call after `slow`, with an error that
    /// says it answered.
    struct Busy {
        until: tokio::time::Instant,
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
        slow: Duration,
    }

    impl Clone for Busy {
        fn clone(&self) -> Self {
            Busy { until: self.until, timer: None, slow: self.slow }
        }
    }

    impl tower::Service<http::Request<tonic::body::Body>> for Busy {
        type Response = http::Response<tonic::body::Body>;
        type Error = tonic::codegen::StdError;
        type Future = futures_util::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
            let until = self.until;
            let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
            timer.as_mut().poll(cx).map(Ok)
        }

        fn call(&mut self, _: http::Request<tonic::body::Body>) -> Self::Future {
            let slow = self.slow;
            Box::pin(async move {
                tokio::time::sleep(slow).await;
                Ok(Status::unavailable("answered").into_http())
            })
        }
    }

    /// The wait for the service to take a call counts against the bound: each part shorter
    /// than the bound, together longer, is a call not answered in time.
    #[tokio::test(start_paused = true)]
    async fn the_wait_to_be_taken_counts_against_the_bound() {
        let bound = Duration::from_secs(2);
        let show = |busy: u64, slow: u64| async move {
            let until = tokio::time::Instant::now() + Duration::from_millis(busy);
            let service = Busy { until, timer: None, slow: Duration::from_millis(slow) };
            let upstream = Upstream::new(UpstreamService::new(service), bound).unwrap();
            let tool = upstream.registry().get("change.show").unwrap().clone();
            let started = tokio::time::Instant::now();
            let err = upstream.call_tool(&tool, &json!({"slug": "s"}), CallContext::default()).await.unwrap_err();
            let CallError::Upstream(err) = err else { panic!("{err:?}") };
            (err.reason, err.message, started.elapsed())
        };
        // Never taken: refused at the bound, naming the flag and the bound.
        let (reason, message, took) = show(3_600_000, 0).await;
        assert_eq!((reason.as_str(), took), ("UPSTREAM_TIMED_OUT", bound), "{message}");
        assert!(message.contains("within 2 s (--upstream-timeout-seconds)"), "{message}");
        // Taken after 1.5 s, answered 1 s later: 2.5 s in all.
        let (reason, message, took) = show(1_500, 1_000).await;
        assert_eq!((reason.as_str(), took), ("UPSTREAM_TIMED_OUT", bound), "{message}");
        assert!(message.contains("within 2 s"), "{message}");
        // Taken after 0.5 s, answered 1 s later: in time.
        let (reason, _, took) = show(500, 1_000).await;
        assert_eq!((reason.as_str(), took), ("UNAVAILABLE", Duration::from_millis(1_500)));
    }

    /// The bound is on the head of the answer: a stream that started answering may then be
    /// quiet for as long as it likes (a slow archive step, a change feed with nothing to say).
    #[tokio::test(start_paused = true)]
    async fn a_stream_that_started_is_not_cut_by_the_bound() {
        let fake = fake_answering_within(Duration::from_secs(2));
        let mut events = fake.upstream.call_tool_streaming(
            tool(&fake, "change.archive"),
            &json!({"slug": "hang"}),
            CallContext::default(),
        );
        assert!(matches!(events.next().await, Some(Ok(ToolEvent::Progress { .. }))));
        let quiet = tokio::time::timeout(Duration::from_secs(60), events.next()).await;
        assert!(quiet.is_err(), "the stream ended after its head had come: {quiet:?}");
    }

    #[tokio::test]
    async fn streaming_form_yields_progress_then_the_result() {
        let fake = fake();
        let events: Vec<_> = fake
            .upstream
            .call_tool_streaming(tool(&fake, "change.archive"), &json!({"slug": "add-x"}), CallContext::default())
            .collect()
            .await;
        let events: Vec<ToolEvent> = events.into_iter().map(Result::unwrap).collect();
        assert_eq!(events.len(), 3);
        assert_eq!(
            events[0],
            ToolEvent::Progress { step: "step1".into(), message: "Step 1".into(), current: 1, total: 2 }
        );
        assert!(matches!(&events[1], ToolEvent::Progress { current: 2, .. }));
        let ToolEvent::Result(result) = &events[2] else { panic!("{events:?}") };
        // The same JSON as the unary call.
        let unary = fake
            .upstream
            .call_tool(tool(&fake, "change.archive"), &json!({"slug": "add-x"}), CallContext::default())
            .await
            .unwrap();
        let unary = unary.to_value();
        assert_eq!(result, &unary);
        assert_eq!(result["receipt"]["slug"], "add-x");
    }

    #[tokio::test]
    async fn a_stream_without_a_result_is_an_error() {
        let fake = fake();
        let events: Vec<_> = fake
            .upstream
            .call_tool_streaming(tool(&fake, "change.archive"), &json!({"slug": "no-result"}), CallContext::default())
            .collect()
            .await;
        assert_eq!(events.len(), 2);
        assert!(events[0].is_ok());
        let Err(CallError::Upstream(err)) = &events[1] else { panic!("{events:?}") };
        assert_eq!(err.code, Code::Internal);
    }

    #[tokio::test]
    async fn dropping_the_stream_cancels_the_call() {
        let fake = fake();
        let cancelled = fake.cancelled.notified();
        let mut events = fake.upstream.call_tool_streaming(
            tool(&fake, "change.archive"),
            &json!({"slug": "hang"}),
            CallContext::default(),
        );
        assert!(matches!(events.next().await, Some(Ok(ToolEvent::Progress { .. }))));
        drop(events);
        tokio::time::timeout(Duration::from_secs(5), cancelled).await.expect("the server-side stream was not dropped");
    }

    #[tokio::test]
    async fn without_a_streaming_form_the_result_is_the_stream() {
        let fake = fake();
        let mut show = tool(&fake, "change.open").clone();
        show.stream_method = None;
        let events: Vec<_> =
            fake.upstream.call_tool_streaming(&show, &json!({"slug": "add-y"}), CallContext::default()).collect().await;
        assert_eq!(events.len(), 1);
        let Ok(ToolEvent::Result(value)) = &events[0] else { panic!("{events:?}") };
        assert_eq!(value["change"]["slug"], "add-y");

        let bad: Vec<_> =
            fake.upstream.call_tool_streaming(&show, &json!({"nope": 1}), CallContext::default()).collect().await;
        assert!(matches!(bad.as_slice(), [Err(CallError::InvalidArguments(_))]));
    }

    #[tokio::test]
    async fn resources_are_assembled_from_chunks() {
        let fake = fake();
        let text = fake.upstream.read_resource("change://a/proposal", CallContext::default()).await.unwrap();
        assert_eq!(text.uri, "change://a/proposal");
        assert_eq!(text.mime_type, "text/markdown");
        assert_eq!(text.text.as_deref(), Some("# T\nok"));
        assert!(text.blob.is_none());

        let blob = fake.upstream.read_resource("change://a/blob", CallContext::default()).await.unwrap();
        assert_eq!(blob.blob.as_deref(), Some(&[0u8, 1, 2][..]));
        assert!(blob.text.is_none());

        let Err(CallError::Upstream(err)) =
            fake.upstream.read_resource("change://a/huge", CallContext::default()).await
        else {
            panic!("an oversized resource was accepted")
        };
        assert_eq!(err.code, Code::FailedPrecondition);
        assert_eq!(err.reason, "RESOURCE_TOO_LARGE");

        let Err(CallError::Upstream(err)) = fake.upstream.read_resource("change://zz", CallContext::default()).await
        else {
            panic!("a missing resource was found")
        };
        assert_eq!(err.code, Code::NotFound);

        let listed = fake.upstream.list_resources(0, String::new(), CallContext::default()).await.unwrap();
        assert_eq!(listed.resources[0].uri, "changes://active");
    }

    #[tokio::test]
    async fn slug_completion_pages_dedups_filters_and_sorts() {
        let fake = fake();
        let slugs = fake.upstream.slugs_with_prefix("add-", CallContext::default()).await.unwrap();
        assert_eq!(slugs.values, ["add-a", "add-b", "add-d"]);
        assert_eq!(slugs.total, Some(3));
        let all = fake.upstream.slugs_with_prefix("", CallContext::default()).await.unwrap();
        assert_eq!(all.values, ["add-a", "add-b", "add-d", "fix-c"]);
    }

    #[tokio::test]
    async fn watch_maps_events() {
        let fake = fake();
        let events: Vec<_> = fake.upstream.watch(CallContext::default(), None).await.unwrap().collect().await;
        let slugs: Vec<String> = events.into_iter().map(|e| e.unwrap().slug).collect();
        assert_eq!(slugs, ["add-a", "add-b"]);
    }

    #[tokio::test]
    async fn serving_follows_grpc_health() {
        let fake = fake();
        assert!(fake.upstream.serving_of("").await.unwrap());
        fake.health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        assert!(!fake.upstream.serving_of("").await.unwrap());
    }

    #[tokio::test]
    async fn an_unreachable_service_is_unavailable() {
        let failing = tower::service_fn(|_: http::Request<tonic::body::Body>| async {
            Err::<http::Response<tonic::body::Body>, tonic::codegen::StdError>("connection refused".into())
        });
        let upstream = Upstream::new(UpstreamService::new(failing), NO_HURRY).unwrap();
        let tool = upstream.registry().get("change.list").unwrap().clone();
        let Err(CallError::Upstream(err)) = upstream.call_tool(&tool, &Value::Null, CallContext::default()).await
        else {
            panic!("a failing transport succeeded")
        };
        assert_eq!(err.code, Code::Unavailable, "{err:?}");
    }

    /// Every call future must be `Send` so that handlers can spawn it.
    #[test]
    fn call_futures_are_send() {
        fn assert_send<T: Send>(_: &T) {}
        let fake = fake();
        let tool = tool(&fake, "change.open").clone();
        let args = Value::Null;
        assert_send(&fake.upstream.call_tool(&tool, &args, CallContext::default()));
        assert_send(&fake.upstream.read_resource("x", CallContext::default()));
        assert_send(&fake.upstream.list_resources(0, String::new(), CallContext::default()));
        assert_send(&fake.upstream.slugs_with_prefix("x", CallContext::default()));
        assert_send(&fake.upstream.serving_of(""));
        fn assert_sync<T: Send + Sync>() {}
        assert_sync::<Upstream>();
    }

    /// The way the handlers use it: calls awaited inside spawned tasks that
    /// borrow from the task's own state (this failed to compile with
    /// "implementation of `Send` is not general enough" before `Transport`).
    #[tokio::test]
    async fn calls_can_be_spawned() {
        let fake = Arc::new(fake());
        let task = {
            let fake = fake.clone();
            tokio::spawn(async move {
                let tool = fake.upstream.registry().get("change.open").cloned();
                let args = json!({"slug": "add-z"});
                let ctx = CallContext::default();
                let tool = tool?;
                let value: Value = fake.upstream.call_tool(&tool, &args, ctx.clone()).await.ok()?.to_value();
                let mut events = fake.upstream.call_tool_streaming(&tool, &args, ctx.clone());
                while events.next().await.is_some() {}
                fake.upstream.read_resource("change://a/proposal", ctx.clone()).await.ok()?;
                fake.upstream.slugs_with_prefix("a", ctx.clone()).await.ok()?;
                fake.upstream.serving_of("").await.ok()?;
                Some(value)
            })
        };
        let value = task.await.unwrap().unwrap();
        assert_eq!(value["change"]["slug"], "add-z");
    }
}
