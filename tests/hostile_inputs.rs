//! Hostile slugs, owners, URIs and paths through every RPC that takes one: each
//! is refused with a typed InvalidArgument (never Internal, never a panic), the
//! server keeps answering, and the workspace is byte-for-byte unchanged.
mod common;

use common::{Server, assert_same_tree, bounded, describe, ok, snapshot};
use task_mcp::pb::{
    ArchiveChangeRequest, ListChangesRequest, ListResourcesRequest, OpenChangeRequest, ReadResourceRequest,
    ShowChangeRequest, TaskUpdate, UpdateTasksRequest, ValidateChangeRequest, WatchChangesRequest,
    resource_chunk::Content,
};
use tonic::{Code, Status};
use tonic_types::StatusExt;

const REASONS: &[&str] =
    &["INVALID_SLUG", "INVALID_ARGUMENT", "INVALID_PATH", "INVALID_PAGE_TOKEN", "INVALID_URI", "TOO_LARGE"];

/// The victim change every hostile request aims at.
const VICTIM: &str = "victim";

fn hostile_slugs() -> Vec<(String, &'static str)> {
    let mut v: Vec<(String, &'static str)> = vec![
        ("../x".into(), "traversal"),
        ("../../etc".into(), "deep traversal"),
        ("..".into(), "dot-dot"),
        ("..%2fetc".into(), "encoded traversal"),
        ("%2e%2e".into(), "encoded dots"),
        ("/etc/passwd".into(), "absolute"),
        ("a\0b-c".into(), "NUL"),
        ("victim\0".into(), "trailing NUL on a real slug"),
        ("a\\b-c".into(), "backslash"),
        ("..\\..\\x".into(), "backslash traversal"),
        ("ｖｉｃｔｉｍ".into(), "fullwidth letters"),
        ("vic\u{202e}tim".into(), "RTL override"),
        ("vi\u{0441}tim".into(), "Cyrillic es homoglyph"),
        ("\u{0430}bc".into(), "Cyrillic a homoglyph"),
        ("vic\u{200d}tim".into(), "zero-width joiner"),
        ("vic\u{200b}tim".into(), "zero-width space"),
        ("victim/".into(), "trailing slash"),
        ("victim/../victim".into(), "slash traversal"),
        ("VICTIM".into(), "uppercase"),
        (" victim".into(), "leading space"),
        ("vic tim".into(), "inner space"),
        ("vic\ntim".into(), "newline"),
        ("archive".into(), "reserved name"),
        (".staging".into(), "hidden staging dir"),
        (".lock".into(), "lock file name"),
        ("-victim".into(), "leading hyphen"),
        ("a".repeat(65), "65 chars"),
        ("a".repeat(10 * 1024), "10 KB"),
        ("é".repeat(5 * 1024), "10 KB multibyte"),
    ];
    v.push(("~/x-y".into(), "tilde"));
    v
}

fn hostile_owners() -> Vec<(String, &'static str)> {
    // Owners are names, never paths: `.` and `/` are allowed characters (so
    // `../x` is a valid owner), but nothing outside `[A-Za-z0-9._@:/+-]` is.
    vec![
        ("a\0b".into(), "NUL"),
        ("a b".into(), "space"),
        ("~alice".into(), "tilde"),
        ("a\\b".into(), "backslash"),
        ("ａlice".into(), "fullwidth"),
        ("\u{0430}lice".into(), "Cyrillic homoglyph"),
        ("ali\u{200d}ce".into(), "zero-width joiner"),
        ("ali\u{202e}ce".into(), "RTL override"),
        ("alice\nbob".into(), "newline"),
        ("a".repeat(129), "129 chars"),
        ("a".repeat(10 * 1024), "10 KB"),
    ]
}

fn hostile_uris(victim: &str) -> Vec<(String, &'static str)> {
    let mut v: Vec<(String, &'static str)> = vec![
        (format!("change://{victim}/delta/../../proposal.md"), "delta traversal"),
        (format!("change://{victim}/delta/../proposal.md"), "delta parent"),
        (format!("change://{victim}/delta//etc/passwd"), "delta absolute"),
        (format!("change://{victim}/delta/x%00y"), "encoded NUL"),
        (format!("change://{victim}/delta/x\0y"), "NUL"),
        (format!("change://{victim}/delta/..%2f..%2fproposal.md"), "encoded traversal"),
        (format!("change://{victim}/delta/%2e%2e/proposal.md"), "encoded dots"),
        (format!("change://{victim}/delta/a\\..\\..\\b"), "backslashes"),
        (format!("change://{victim}/delta/./README.md"), "dot component"),
        (format!("change://{victim}/delta/.hidden"), "hidden file"),
        (format!("change://{victim}/delta/ｓpec.md"), "fullwidth path"),
        (format!("change://{victim}/delta/spec\u{202e}dm.md"), "RTL override path"),
        (format!("change://{victim}/delta/"), "empty delta path"),
        (format!("change://{victim}/delta/{}", "a/".repeat(40)), "deep path"),
        (format!("change://{victim}/delta/{}", "a".repeat(10 * 1024)), "10 KB path"),
        (format!("change://{victim}/../../etc/passwd"), "traversal after slug"),
        (format!("change://{victim}/.lock"), "lock file"),
        (format!("change://{victim}/proposal/../tasks"), "part traversal"),
        (format!("change://{victim}"), "no part"),
        ("change://../proposal".into(), "traversal slug"),
        ("change://%2e%2e/proposal".into(), "encoded traversal slug"),
        ("change:///etc/passwd".into(), "empty slug absolute"),
        ("change://ＶＩＣＴＩＭ/proposal".into(), "fullwidth slug"),
        ("change://vi\u{0441}tim/proposal".into(), "homoglyph slug"),
        ("file:///etc/passwd".into(), "file scheme"),
        ("/etc/passwd".into(), "bare path"),
        ("changes://active/../x".into(), "active traversal"),
        ("changes://archive".into(), "unknown list"),
        (String::new(), "empty"),
        (format!("change://{}/proposal", "a".repeat(10 * 1024)), "10 KB slug"),
    ];
    for (slug, what) in hostile_slugs() {
        if !slug.contains('/') {
            v.push((format!("change://{slug}/proposal"), what));
        }
    }
    v
}

/// Collects every refusal that was not a typed InvalidArgument, so one run
/// reports all of them instead of stopping at the first.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn push(&mut self, failure: String) {
        eprintln!("FAILED CASE: {failure}");
        self.0.push(failure);
    }

    fn assert_none(&self, context: &str) {
        assert!(
            self.0.is_empty(),
            "{context}: {} hostile input(s) not refused as typed InvalidArgument:\n  {}",
            self.0.len(),
            self.0.join("\n  ")
        );
    }
}

/// Checks a refusal: InvalidArgument with an ErrorInfo whose reason is a known code.
fn assert_invalid(f: &mut Failures, what: &str, status: &Status) {
    let reason = status.get_details_error_info().map(|i| i.reason);
    let fine = status.code() == Code::InvalidArgument && reason.as_deref().is_some_and(|r| REASONS.contains(&r));
    if !fine {
        let hint = match status.code() {
            Code::Internal => " (internal error)",
            Code::Unknown => " (unknown error: a panic?)",
            _ => "",
        };
        let what: String = what.chars().take(120).collect();
        f.push(format!("{what}{hint}: {}", short(status)));
    }
}

/// `describe`, cut to a readable length (hostile inputs are echoed in messages).
fn short(status: &Status) -> String {
    describe(status).chars().take(300).collect()
}

/// Expects a unary result to be a typed InvalidArgument.
fn expect_invalid<T: std::fmt::Debug>(f: &mut Failures, what: &str, result: Result<tonic::Response<T>, Status>) {
    match result {
        Ok(resp) => {
            let answer: String = format!("{:?}", resp.into_inner()).chars().take(300).collect();
            f.push(format!("{what}: accepted: {answer}"));
        }
        Err(status) => assert_invalid(f, what, &status),
    }
}

/// Expects a server stream to fail with a typed InvalidArgument, at the call or
/// as its first item.
async fn expect_invalid_stream<T: std::fmt::Debug>(
    f: &mut Failures,
    what: &str,
    result: Result<tonic::Response<tonic::Streaming<T>>, Status>,
) {
    let mut stream = match result {
        Err(status) => return assert_invalid(f, what, &status),
        Ok(resp) => resp.into_inner(),
    };
    match bounded(what, stream.message()).await {
        Err(status) => assert_invalid(f, what, &status),
        Ok(item) => {
            let item: String = format!("{item:?}").chars().take(300).collect();
            f.push(format!("{what}: stream accepted, first item {item}"));
        }
    }
}

/// A server with a victim change whose specs/ holds symlinks out of the workspace.
async fn server_with_victim() -> (Server, tempfile::TempDir) {
    let server = Server::start();
    let mut c = server.changes().await;
    let req =
        OpenChangeRequest { title: "Victim".into(), slug: VICTIM.into(), owner: "alice".into(), ..Default::default() };
    ok("OpenChange", bounded("OpenChange", c.open_change(req)).await);
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.md"), "TOP SECRET outside the workspace\n").unwrap();
    let specs = server.workspace.join("changes").join(VICTIM).join("specs");
    std::os::unix::fs::symlink(outside.path().join("secret.md"), specs.join("escape.md")).unwrap();
    std::os::unix::fs::symlink(outside.path(), specs.join("escape-dir")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", specs.join("passwd.md")).unwrap();
    (server, outside)
}

#[tokio::test]
async fn hostile_slugs_are_refused_by_every_rpc_and_leave_the_workspace_unchanged() {
    let mut f = Failures::default();
    let (server, _outside) = server_with_victim().await;
    let mut c = server.changes().await;
    let mut r = server.resources().await;
    let before = snapshot(&server.workspace);

    for (slug, what) in hostile_slugs() {
        let open =
            OpenChangeRequest { title: "T".into(), slug: slug.clone(), owner: "alice".into(), ..Default::default() };
        expect_invalid(&mut f, &format!("OpenChange slug {what}"), bounded(what, c.open_change(open)).await);
        expect_invalid(
            &mut f,
            &format!("ShowChange slug {what}"),
            bounded(what, c.show_change(ShowChangeRequest { slug: slug.clone() })).await,
        );
        expect_invalid(
            &mut f,
            &format!("ValidateChange slug {what}"),
            bounded(what, c.validate_change(ValidateChangeRequest { slug: slug.clone() })).await,
        );
        let update = UpdateTasksRequest {
            slug: slug.clone(),
            owner: "alice".into(),
            updates: vec![TaskUpdate { id: "1.1".into(), done: true }],
        };
        expect_invalid(&mut f, &format!("UpdateTasks slug {what}"), bounded(what, c.update_tasks(update)).await);
        let archive = ArchiveChangeRequest { slug: slug.clone(), owner: "alice".into(), tests: None };
        expect_invalid(
            &mut f,
            &format!("ArchiveChange slug {what}"),
            bounded(what, c.archive_change(archive.clone())).await,
        );
        expect_invalid_stream(
            &mut f,
            &format!("ArchiveChangeStream slug {what}"),
            bounded(what, c.archive_change_stream(archive)).await,
        )
        .await;
        expect_invalid(
            &mut f,
            &format!("ListResources slug {what}"),
            bounded(what, r.list_resources(ListResourcesRequest { slug: slug.clone(), ..Default::default() })).await,
        );
        expect_invalid_stream(
            &mut f,
            &format!("WatchChanges slug {what}"),
            bounded(what, r.watch_changes(WatchChangesRequest { slug: slug.clone(), ..Default::default() })).await,
        )
        .await;
    }

    f.assert_none("hostile_slugs_are_refused_by_every_rpc_and_leave_the_workspace_unchanged");
    assert_same_tree(&before, &snapshot(&server.workspace), "after hostile slugs");
    server.assert_serving().await;
}

#[tokio::test]
async fn hostile_owners_are_refused_and_leave_the_workspace_unchanged() {
    let mut f = Failures::default();
    let (server, _outside) = server_with_victim().await;
    let mut c = server.changes().await;
    let before = snapshot(&server.workspace);
    for (owner, what) in hostile_owners() {
        let open = OpenChangeRequest {
            title: "T".into(),
            slug: "fresh-one".into(),
            owner: owner.clone(),
            ..Default::default()
        };
        expect_invalid(&mut f, &format!("OpenChange owner {what}"), bounded(what, c.open_change(open)).await);
        let open =
            OpenChangeRequest { title: "T".into(), slug: VICTIM.into(), owner: owner.clone(), ..Default::default() };
        expect_invalid(&mut f, &format!("OpenChange victim owner {what}"), bounded(what, c.open_change(open)).await);
        let update = UpdateTasksRequest {
            slug: VICTIM.into(),
            owner: owner.clone(),
            updates: vec![TaskUpdate { id: "1.1".into(), done: true }],
        };
        expect_invalid(&mut f, &format!("UpdateTasks owner {what}"), bounded(what, c.update_tasks(update)).await);
        let archive = ArchiveChangeRequest { slug: VICTIM.into(), owner: owner.clone(), tests: None };
        expect_invalid(
            &mut f,
            &format!("ArchiveChange owner {what}"),
            bounded(what, c.archive_change(archive.clone())).await,
        );
        expect_invalid_stream(
            &mut f,
            &format!("ArchiveChangeStream owner {what}"),
            bounded(what, c.archive_change_stream(archive)).await,
        )
        .await;
    }
    f.assert_none("hostile_owners_are_refused_and_leave_the_workspace_unchanged");
    assert_same_tree(&before, &snapshot(&server.workspace), "after hostile owners");
    server.assert_serving().await;
}

#[tokio::test]
async fn hostile_resource_uris_are_refused_and_leave_the_workspace_unchanged() {
    let mut f = Failures::default();
    let (server, _outside) = server_with_victim().await;
    let mut r = server.resources().await;
    let before = snapshot(&server.workspace);
    for (uri, what) in hostile_uris(VICTIM) {
        expect_invalid_stream(
            &mut f,
            &format!("ReadResource {what} ({:?})", uri.chars().take(80).collect::<String>()),
            bounded(what, r.read_resource(ReadResourceRequest { uri: uri.clone() })).await,
        )
        .await;
    }
    f.assert_none("hostile_resource_uris_are_refused_and_leave_the_workspace_unchanged");
    assert_same_tree(&before, &snapshot(&server.workspace), "after hostile URIs");
    server.assert_serving().await;
}

#[tokio::test]
async fn symlinks_in_specs_pointing_outside_the_workspace_are_invalid_paths_and_never_read() {
    let mut f = Failures::default();
    let (server, _outside) = server_with_victim().await;
    let mut c = server.changes().await;
    let mut r = server.resources().await;
    let before = snapshot(&server.workspace);

    for link in ["escape.md", "escape-dir/secret.md", "passwd.md"] {
        let uri = format!("change://{VICTIM}/delta/{link}");
        let what = format!("ReadResource {uri}");
        let result = bounded(&what, r.read_resource(ReadResourceRequest { uri: uri.clone() })).await;
        let status = match result {
            Err(status) => status,
            Ok(resp) => match bounded(&what, resp.into_inner().message()).await {
                Err(status) => status,
                Ok(item) => panic!("{what}: the symlink was followed: {item:?}"),
            },
        };
        assert_invalid(&mut f, &what, &status);
        let reason = status.get_details_error_info().map(|i| i.reason);
        if reason.as_deref() != Some("INVALID_PATH") {
            f.push(format!("{what}: expected INVALID_PATH: {}", short(&status)));
        }
    }

    // Show and validate must not leak the targets either; they may report the
    // links as findings or skip them, but never read through them.
    match bounded("ShowChange", c.show_change(ShowChangeRequest { slug: VICTIM.into() })).await {
        Ok(resp) => {
            let shown = resp.into_inner();
            for delta in &shown.deltas {
                assert!(
                    !delta.content.contains("TOP SECRET") && !delta.content.contains("root:"),
                    "ShowChange read through a symlink: {delta:?}"
                );
            }
        }
        Err(status) => assert_invalid(&mut f, "ShowChange with escaping symlinks", &status),
    }
    match bounded("ValidateChange", c.validate_change(ValidateChangeRequest { slug: VICTIM.into() })).await {
        Ok(resp) => {
            for f in resp.into_inner().findings {
                assert!(!f.message.contains("TOP SECRET") && !f.message.contains("root:"), "{f:?}");
            }
        }
        Err(status) => assert_invalid(&mut f, "ValidateChange with escaping symlinks", &status),
    }
    let listed = ok(
        "ListResources",
        bounded("ListResources", r.list_resources(ListResourcesRequest { slug: VICTIM.into(), ..Default::default() }))
            .await,
    );
    // The listing still names the change's own files, and every listed resource either reads
    // to its end without a leak or is refused as an invalid path: no read is skipped unchecked.
    let proposal = format!("change://{VICTIM}/proposal");
    assert!(listed.resources.iter().any(|i| i.uri == proposal), "{proposal} not listed: {:?}", listed.resources);
    let mut read_through = Vec::new();
    for info in &listed.resources {
        let what = format!("ReadResource {} (listed)", info.uri);
        let mut stream = match bounded(&what, r.read_resource(ReadResourceRequest { uri: info.uri.clone() })).await {
            Ok(resp) => resp.into_inner(),
            Err(status) => {
                assert_invalid(&mut f, &what, &status);
                continue;
            }
        };
        loop {
            match bounded(&what, stream.message()).await {
                Ok(Some(chunk)) => {
                    let text = match &chunk.content {
                        Some(Content::Text(t)) => t.clone(),
                        Some(Content::Blob(b)) => String::from_utf8_lossy(b).into_owned(),
                        None => String::new(),
                    };
                    assert!(!text.contains("TOP SECRET") && !text.contains("root:x:0"), "{} leaked: {text}", info.uri);
                }
                Ok(None) => {
                    read_through.push(info.uri.clone());
                    break;
                }
                Err(status) => {
                    assert_invalid(&mut f, &what, &status);
                    break;
                }
            }
        }
    }
    assert!(read_through.contains(&proposal), "the proposal was not read to its end: read {read_through:?}");
    f.assert_none("symlinks_in_specs_pointing_outside_the_workspace_are_invalid_paths_and_never_read");
    assert_same_tree(&before, &snapshot(&server.workspace), "after symlink probes");
    server.assert_serving().await;
}

#[tokio::test]
async fn oversized_fields_are_refused_with_invalid_argument() {
    let mut f = Failures::default();
    let (server, _outside) = server_with_victim().await;
    let mut c = server.changes().await;
    let before = snapshot(&server.workspace);

    let base =
        OpenChangeRequest { title: "T".into(), slug: "big-input".into(), owner: "alice".into(), ..Default::default() };
    let long_title = OpenChangeRequest { title: "t".repeat(201), ..base.clone() };
    expect_invalid(&mut f, "title of 201 chars", bounded("OpenChange", c.open_change(long_title)).await);
    let long_rationale = OpenChangeRequest { rationale: "r".repeat(9000), ..base.clone() };
    expect_invalid(&mut f, "rationale of 9000 chars", bounded("OpenChange", c.open_change(long_rationale)).await);
    let nul_rationale = OpenChangeRequest { rationale: "a\0b".into(), ..base.clone() };
    expect_invalid(&mut f, "rationale with NUL", bounded("OpenChange", c.open_change(nul_rationale)).await);
    let huge_title = OpenChangeRequest { title: "t".repeat(100 * 1024), ..base.clone() };
    expect_invalid(&mut f, "title of 100 KiB", bounded("OpenChange", c.open_change(huge_title)).await);
    // Past the server's request size cap tonic refuses the message itself; the answer is
    // still typed: RESOURCE_EXHAUSTED (the gRPC guide's code for it) with reason TOO_LARGE.
    let giant = OpenChangeRequest { rationale: "r".repeat(2 << 20), ..base };
    let status = bounded("OpenChange 2 MiB", c.open_change(giant)).await.expect_err("2 MiB request accepted");
    assert_eq!(status.code(), Code::ResourceExhausted, "2 MiB request: {}", describe(&status));
    assert_eq!(status.get_error_details().error_info().map(|i| i.reason.as_str()), Some("TOO_LARGE"));

    let updates = (0..600).map(|_| TaskUpdate { id: "1.1".into(), done: true }).collect();
    let req = UpdateTasksRequest { slug: VICTIM.into(), owner: "alice".into(), updates };
    expect_invalid(&mut f, "600 task updates", bounded("UpdateTasks", c.update_tasks(req)).await);

    let req = UpdateTasksRequest {
        slug: VICTIM.into(),
        owner: "alice".into(),
        updates: vec![TaskUpdate { id: "1".repeat(10 * 1024), done: true }],
    };
    match bounded("UpdateTasks long id", c.update_tasks(req)).await {
        Ok(resp) => panic!("a 10 KB task id was accepted: {:?}", resp.into_inner()),
        Err(status) => {
            // An id that long is either refused as too large or simply not found.
            assert!(
                matches!(status.code(), Code::InvalidArgument | Code::NotFound),
                "10 KB task id: {}",
                describe(&status)
            );
        }
    }

    let note = ArchiveChangeRequest {
        slug: VICTIM.into(),
        owner: "alice".into(),
        tests: Some(task_mcp::pb::TestSummary { passed: 1, failed: 0, skipped: 0, note: "n".repeat(3000) }),
    };
    expect_invalid(&mut f, "test note of 3000 chars", bounded("ArchiveChange", c.archive_change(note)).await);

    let list = ListChangesRequest { page_size: 1, page_token: "x".repeat(100 * 1024), status: 0 };
    expect_invalid(&mut f, "100 KB page token", bounded("ListChanges", c.list_changes(list)).await);

    f.assert_none("oversized_fields_are_refused_with_invalid_argument");
    assert_same_tree(&before, &snapshot(&server.workspace), "after oversized inputs");
    server.assert_serving().await;
}

/// Request bytes as they are, for what no generated client would send.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        *self
    }
    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

async fn raw_call(server: &Server, method: &'static str, request: tonic::Request<Vec<u8>>) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    grpc.ready().await.expect("channel ready");
    let path = http::uri::PathAndQuery::from_static(method);
    grpc.unary(request, path, RawCodec).await.map(tonic::Response::into_inner)
}

#[tokio::test]
async fn bytes_that_are_not_the_request_message_are_invalid_argument_not_internal() {
    let server = Server::start();
    // A string field (slug) holding bytes that are not UTF-8; a length past the end; nothing.
    for (what, bytes) in [
        ("invalid UTF-8", vec![0x0a, 0x05, 0xff, 0xfe, b'a', b'b', b'c']),
        ("a length past the end", vec![0x0a, 0x50, b'x']),
        ("a number where the slug's string belongs", vec![0x08, 0x01]),
    ] {
        let status =
            raw_call(&server, "/taskmcp.v1.Changes/ShowChange", tonic::Request::new(bytes)).await.expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {}", describe(&status));
        let reason = status.get_error_details().error_info().map(|i| i.reason.clone());
        assert_eq!(reason.as_deref(), Some("INVALID_ARGUMENT"), "{what}");
    }
    server.assert_serving().await;
}

#[tokio::test]
async fn a_deadline_that_passes_before_the_answer_is_deadline_exceeded() {
    let server = Server::start();
    let open = prost::Message::encode_to_vec(&OpenChangeRequest {
        title: "Late".into(),
        slug: "late".into(),
        owner: "alice".into(),
        ..Default::default()
    });
    // Sent over bare HTTP/2: a tonic client would enforce the deadline itself, and the test
    // would see the client's answer, not the server's. 1 ns: over when it arrives.
    let tcp = tokio::net::TcpStream::connect(server.grpcurl_addr()).await.expect("connect");
    let (mut h2, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    tokio::spawn(connection);
    let request = http::Request::post(format!("http://{}/taskmcp.v1.Changes/OpenChange", server.grpcurl_addr()))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "1n")
        .body(())
        .expect("request");
    let (response, mut body) = h2.send_request(request, false).expect("send");
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(open.len() as u32).to_be_bytes());
    frame.extend_from_slice(&open);
    body.send_data(frame.into(), true).expect("send the message");
    let response = bounded("the answer", response).await.expect("an answer");
    let status = Status::from_header_map(response.headers()).expect("a trailers-only status");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{}", describe(&status));
}
