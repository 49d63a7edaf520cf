//! The official Rust MCP SDK (`rmcp`, its Streamable HTTP client on reqwest) as a real client of
//! the server, next to the Python and TypeScript SDKs (tests/mcp_python.rs, mcp_typescript.rs).
//! rmcp is the SDK whose server the benches measure as the peer, and the one client of the three
//! that speaks 2026-07-28 through `server/discover` and `subscriptions/listen` natively, so each era
//! gets a test: initialize (2025-11-25) with `resources/subscribe`, and discover (2026-07-28) with a
//! listen stream and a bearer token. Each walks what an agent does: list the tools, open a change,
//! show it, read its proposal, complete its slug, hear that an edit on disk changed the proposal,
//! and archive it with progress.
mod common;

use std::{path::Path, sync::Arc, time::Duration};

use common::Server;
use rmcp::{
    ClientHandler, ClientLifecycleMode, ClientServiceExt, RoleClient,
    model::{
        CallToolRequestParams, CallToolResult, ClientRequest, ProgressNotificationParam, ProtocolVersion,
        ReadResourceRequestParams, Request, ResourceContents, ResourceUpdatedNotificationParam, ServerNotification,
        SubscribeRequestParams, SubscriptionFilterBuilder,
    },
    service::{NotificationContext, PeerRequestOptions, RunningService},
    transport::{StreamableHttpClientTransport, streamable_http_client::StreamableHttpClientTransportConfig},
};
use serde_json::{Value, json};
use tokio::sync::Mutex;

/// Failure bound for anything the server should answer or announce at once.
const BOUND: Duration = Duration::from_secs(15);

/// What the server sent outside of responses, as the SDK handed it over.
#[derive(Clone, Default)]
struct Heard {
    progress: Arc<Mutex<Vec<ProgressNotificationParam>>>,
    updated: Arc<Mutex<Vec<String>>>,
}

impl ClientHandler for Heard {
    async fn on_progress(&self, params: ProgressNotificationParam, _: NotificationContext<RoleClient>) {
        self.progress.lock().await.push(params);
    }

    async fn on_resource_updated(&self, params: ResourceUpdatedNotificationParam, _: NotificationContext<RoleClient>) {
        self.updated.lock().await.push(params.uri);
    }
}

type Client = RunningService<RoleClient, Heard>;

async fn connect(url: String, token: Option<&str>, lifecycle: ClientLifecycleMode) -> Client {
    let mut config = StreamableHttpClientTransportConfig::with_uri(url);
    if let Some(token) = token {
        config = config.auth_header(token);
    }
    let transport = StreamableHttpClientTransport::from_config(config);
    match tokio::time::timeout(BOUND, Heard::default().serve_with_lifecycle(transport, lifecycle)).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => panic!("the rmcp client did not connect: {e:?}"),
        Err(_) => panic!("the rmcp client did not connect within {BOUND:?}"),
    }
}

fn arguments(value: Value) -> serde_json::Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("tool arguments must be an object, not {other}"),
    }
}

async fn call(client: &Client, tool: &str, args: Value) -> CallToolResult {
    let params = CallToolRequestParams::new(tool.to_string()).with_arguments(arguments(args));
    match tokio::time::timeout(BOUND, client.call_tool(params)).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => panic!("{tool}: {e:?}"),
        Err(_) => panic!("{tool}: no answer within {BOUND:?}"),
    }
}

/// The text of a result's first block, which for a failed tool is its error.
fn first_text(result: &CallToolResult) -> String {
    let block = result.content.first().unwrap_or_else(|| panic!("a result without content: {result:?}"));
    block.as_text().map(|t| t.text.clone()).unwrap_or_else(|| panic!("a first block that is not text: {block:?}"))
}

/// The steps both eras share; returns the proposal's URI for the subscription step.
async fn walk_to_the_proposal(client: &Client, slug: &str, era: &str) -> String {
    let info = client.peer_info().unwrap_or_else(|| panic!("{era}: no server info after connecting"));
    assert_eq!(info.protocol_version.as_str(), era, "the negotiated protocol version");
    assert_eq!(info.server_info.as_ref().map(|s| s.name.as_str()), Some("task-mcp"));

    let tools = client.list_all_tools().await.expect("tools/list");
    let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["change.archive", "change.list", "change.open", "change.show", "change.validate", "task.update"],
        "the tool list (the conformance fixtures are opt-in and must not be in it)"
    );
    for tool in &tools {
        assert!(tool.output_schema.is_some(), "{} has no outputSchema", tool.name);
    }

    let opened = call(client, "change.open", json!({"slug": slug, "owner": "rmcp", "title": "Read by rmcp"})).await;
    assert_eq!(opened.is_error, Some(false), "change.open failed: {}", first_text(&opened));
    let change = &opened.structured_content.as_ref().expect("change.open without structuredContent")["change"];
    assert_eq!(change["slug"], slug, "change.open answered another change: {change}");

    let shown = call(client, "change.show", json!({"slug": slug})).await;
    assert_eq!(shown.is_error, Some(false), "change.show failed: {}", first_text(&shown));
    let structured = shown.structured_content.clone().expect("change.show without structuredContent");
    assert_eq!(structured["change"]["slug"], slug);
    // Clients without output schemas read the text block: it must be the same JSON.
    let text: Value = serde_json::from_str(&first_text(&shown)).expect("change.show's text block is JSON");
    assert_eq!(text, structured, "the text block differs from structuredContent");

    let missing = call(client, "change.show", json!({"slug": "no-such-change"})).await;
    assert_eq!(missing.is_error, Some(true), "a missing change is a tool error: {missing:?}");
    assert!(first_text(&missing).starts_with("CHANGE_NOT_FOUND"), "{}", first_text(&missing));

    let proposal = format!("change://{slug}/proposal");
    let resources = client.list_all_resources().await.expect("resources/list");
    assert!(
        resources.iter().any(|r| r.uri == proposal),
        "resources/list lacks {proposal}: {:?}",
        resources.iter().map(|r| &r.uri).collect::<Vec<_>>()
    );
    let templates = client.list_all_resource_templates().await.expect("resources/templates/list");
    assert!(templates.iter().any(|t| t.uri_template == "change://{slug}/proposal"), "{templates:?}");

    let read = client.read_resource(ReadResourceRequestParams::new(proposal.clone())).await.expect("resources/read");
    let [ResourceContents::TextResourceContents { text, .. }] = read.contents.as_slice() else {
        panic!("the proposal is not one text content: {:?}", read.contents)
    };
    assert!(text.contains("Read by rmcp"), "the proposal does not carry the title:\n{text}");

    let completed = client
        .complete_resource_simple("change://{slug}/proposal", "slug", &slug[..6])
        .await
        .expect("completion/complete");
    assert!(completed.iter().any(|s| s == slug), "completing {:?} gave {completed:?}", &slug[..6]);
    proposal
}

/// Appends a line to the change's proposal.md, as an editor would.
fn edit_proposal(workspace: &Path, slug: &str) {
    let path = workspace.join("changes").join(slug).join("proposal.md");
    let mut text = std::fs::read_to_string(&path).expect("read proposal.md");
    text.push_str("\nEdited on disk by the rmcp test.\n");
    std::fs::write(&path, text).expect("write proposal.md");
}

/// Archives with a progress token (rmcp's cancellable request attaches one) and checks the
/// receipt and the progress heard for that token.
async fn archive_with_progress(client: &Client, heard: &Heard, slug: &str) {
    let params =
        CallToolRequestParams::new("change.archive").with_arguments(arguments(json!({"slug": slug, "owner": "rmcp"})));
    let request = ClientRequest::CallToolRequest(Request::new(params));
    let handle =
        client.send_cancellable_request(request, PeerRequestOptions::no_options()).await.expect("send archive");
    let token = handle.progress_token.clone();
    let response = tokio::time::timeout(BOUND, handle.await_response())
        .await
        .unwrap_or_else(|_| panic!("change.archive: no answer within {BOUND:?}"))
        .expect("change.archive");
    let rmcp::model::ServerResult::CallToolResult(result) = response else {
        panic!("change.archive answered something else: {response:?}")
    };
    assert_eq!(result.is_error, Some(false), "change.archive failed: {}", first_text(&result));
    let receipt = result.structured_content.expect("change.archive without structuredContent");
    assert_eq!(receipt["alreadyArchived"], false, "{receipt}");

    // Progress travels ahead of the response, but rmcp hands each notification to the handler
    // in a task of its own, so they reach it in any order and a moment late: the steps are
    // compared as a set (the order on the wire is checked by tests/python/client_check.py).
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let mut steps: Vec<f64> =
            heard.progress.lock().await.iter().filter(|p| p.progress_token == token).map(|p| p.progress).collect();
        if steps.len() >= 4 {
            steps.sort_by(f64::total_cmp);
            assert_eq!(steps, [1.0, 2.0, 3.0, 4.0], "the archive's four steps, once each");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "archive progress for {token:?}: heard only {steps:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_sdk_works_the_2025_11_25_era_through_initialize() {
    let server = Server::start();
    let slug = "rmcp-initialize";
    let client = connect(server.mcp_url(), None, ClientLifecycleMode::Initialize).await;
    let proposal = walk_to_the_proposal(&client, slug, "2025-11-25").await;

    #[allow(deprecated, reason = "resources/subscribe is this era's way; rmcp marks it legacy-only")]
    client.subscribe(SubscribeRequestParams::new(proposal.clone())).await.expect("resources/subscribe");
    edit_proposal(&server.workspace, slug);
    let heard = client.service().clone();
    let deadline = tokio::time::Instant::now() + BOUND;
    while !heard.updated.lock().await.contains(&proposal) {
        assert!(tokio::time::Instant::now() < deadline, "no resources/updated for {proposal} within {BOUND:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    archive_with_progress(&client, &heard, slug).await;
    client.cancel().await.expect("close the session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_sdk_works_the_2026_07_28_era_through_discover_with_a_token() {
    let token = "rmcp-test-token";
    let server = Server::builder().auth_token(token).start();
    let slug = "rmcp-discover";

    let discover = || ClientLifecycleMode::Discover { preferred_versions: vec![ProtocolVersion::V_2026_07_28] };
    let refused = tokio::time::timeout(
        BOUND,
        Heard::default().serve_with_lifecycle(
            StreamableHttpClientTransport::from_config(
                StreamableHttpClientTransportConfig::with_uri(server.mcp_url()).auth_header("wrong-token"),
            ),
            discover(),
        ),
    )
    .await
    .expect("a refused client is told at once");
    let Err(refusal) = refused else { panic!("a wrong token connected") };
    assert!(refusal.to_string().contains("401") || refusal.is_authorization_required(), "{refusal:?}");

    let client = connect(server.mcp_url(), Some(token), discover()).await;
    let proposal = walk_to_the_proposal(&client, slug, "2026-07-28").await;

    let filter = SubscriptionFilterBuilder::default().resource_subscriptions([proposal.clone()]).build();
    let mut subscription =
        tokio::time::timeout(BOUND, client.listen(filter)).await.expect("listen acknowledged in time").expect("listen");
    edit_proposal(&server.workspace, slug);
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let next = tokio::time::timeout_at(deadline, subscription.next())
            .await
            .unwrap_or_else(|_| panic!("no resources/updated for {proposal} within {BOUND:?}"))
            .expect("the listen stream failed");
        match next {
            Some(ServerNotification::ResourceUpdatedNotification(n)) if n.params.uri == proposal => break,
            Some(_) => continue,
            None => panic!("the listen stream ended before resources/updated for {proposal}"),
        }
    }

    let heard = client.service().clone();
    archive_with_progress(&client, &heard, slug).await;
    subscription.cancel().await.expect("end the subscription");
    client.cancel().await.expect("close the client");
}
