//! Every RPC of `taskmcp.v1.Changes` and `taskmcp.v1.Resources`, success and
//! failure paths, against the real binary on a tempdir workspace.
mod common;

use std::{collections::BTreeSet, fs, path::PathBuf};

use common::{
    Changes, Resources, Server, assert_error, assert_same_tree, bounded, err, find_files, ok, snapshot, utc_today,
};
use task_mcp::pb::{
    self, ArchiveChangeRequest, ChangeEvent, ChangeEventKind, ChangeStatus, ListChangesRequest, ListResourcesRequest,
    OpenChangeRequest, OpenChangeResponse, ReadResourceRequest, Severity, ShowChangeRequest, ShowChangeResponse,
    TaskUpdate, Template, TestSummary, UpdateTasksRequest, ValidateChangeRequest, WatchChangesRequest,
    archive_change_event::Event, resource_chunk::Content,
};
use tonic::{Code, Status, Streaming};
use tonic_types::StatusExt;

// ------------------------------------------------------------------ helpers

fn open_req(slug: &str, owner: &str) -> OpenChangeRequest {
    OpenChangeRequest {
        title: format!("Title of {slug}"),
        slug: slug.to_string(),
        rationale: format!("Because {slug} matters."),
        owner: owner.to_string(),
        ttl_seconds: 0,
        template: Template::Unspecified as i32,
    }
}

async fn open(client: &mut Changes, slug: &str, owner: &str) -> OpenChangeResponse {
    ok("OpenChange", bounded("OpenChange", client.open_change(open_req(slug, owner))).await)
}

async fn show(client: &mut Changes, slug: &str) -> ShowChangeResponse {
    ok("ShowChange", bounded("ShowChange", client.show_change(ShowChangeRequest { slug: slug.into() })).await)
}

async fn list(client: &mut Changes, page_size: u32, token: &str, status: ChangeStatus) -> pb::ListChangesResponse {
    let req = ListChangesRequest { page_size, page_token: token.into(), status: status as i32 };
    ok("ListChanges", bounded("ListChanges", client.list_changes(req)).await)
}

fn tick(slug: &str, owner: &str, id: &str, done: bool) -> UpdateTasksRequest {
    UpdateTasksRequest { slug: slug.into(), owner: owner.into(), updates: vec![TaskUpdate { id: id.into(), done }] }
}

fn archive_req(slug: &str, owner: &str) -> ArchiveChangeRequest {
    ArchiveChangeRequest { slug: slug.into(), owner: owner.into(), tests: None }
}

fn change_dir(server: &Server, slug: &str) -> PathBuf {
    server.workspace.join("changes").join(slug)
}

/// The archive folder names under `changes/archive/`.
fn archive_folders(server: &Server) -> Vec<String> {
    let dir = server.workspace.join("changes").join("archive");
    let Ok(entries) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

/// The archive folder name the server should have used: `<UTC date>-<slug>`,
/// allowing the date to have rolled over during the test.
fn expected_archive_names(before: &str, slug: &str) -> BTreeSet<String> {
    [format!("{before}-{slug}"), format!("{}-{slug}", utc_today())].into_iter().collect()
}

fn ts(t: &Option<prost_types::Timestamp>) -> (i64, i32) {
    let t = t.as_ref().expect("timestamp present");
    (t.seconds, t.nanos)
}

/// Reads a resource to the end. Errors may come at the call or in the stream.
async fn read_resource(client: &mut Resources, uri: &str) -> Result<(Vec<u8>, Vec<pb::ResourceChunk>), Status> {
    let mut stream =
        bounded("ReadResource", client.read_resource(ReadResourceRequest { uri: uri.into() })).await?.into_inner();
    let mut chunks = Vec::new();
    while let Some(chunk) = bounded("ReadResource chunk", stream.message()).await? {
        chunks.push(chunk);
    }
    let bytes = chunks.iter().flat_map(|c| chunk_bytes(c).to_vec()).collect();
    Ok((bytes, chunks))
}

/// The bytes of one chunk, whether it came as text or as a blob.
fn chunk_bytes(chunk: &pb::ResourceChunk) -> &[u8] {
    match &chunk.content {
        Some(Content::Text(text)) => text.as_bytes(),
        Some(Content::Blob(bytes)) => bytes,
        None => &[],
    }
}

/// Waits for the first event matching `pred`, skipping others; fails after the bound.
async fn next_event(
    stream: &mut Streaming<ChangeEvent>,
    what: &str,
    pred: impl Fn(&ChangeEvent) -> bool,
) -> ChangeEvent {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(common::RPC_BOUND, async {
        loop {
            match stream.message().await {
                Ok(Some(event)) if pred(&event) => return Ok(event),
                Ok(Some(event)) => seen.push(event),
                Ok(None) => return Err("the stream ended".to_string()),
                Err(status) => {
                    return Err(format!("the stream failed: {}", common::describe(&status)));
                }
            }
        }
    })
    .await;
    match found {
        Ok(Ok(event)) => event,
        Ok(Err(why)) => panic!("waiting for {what}: {why}; other events seen: {seen:?}"),
        Err(_) => panic!("no {what} within {:?} (failure bound); other events seen: {seen:?}", common::RPC_BOUND),
    }
}

// ------------------------------------------------------------------ OpenChange

#[tokio::test]
async fn open_change_scaffolds_proposal_tasks_and_specs_and_takes_the_lock() {
    let server = Server::start();
    let mut c = server.changes().await;
    let resp = open(&mut c, "add-login", "alice").await;

    assert!(resp.created, "first open must create: {resp:?}");
    let dir = change_dir(&server, "add-login");
    for file in ["proposal.md", "tasks.md", "specs/README.md", ".lock"] {
        assert!(dir.join(file).is_file(), "{} missing after open", dir.join(file).display());
    }
    let files: BTreeSet<&str> = resp.files.iter().map(String::as_str).collect();
    for expected in ["changes/add-login/proposal.md", "changes/add-login/tasks.md", "changes/add-login/specs/README.md"]
    {
        assert!(files.contains(expected), "response files {files:?} lack {expected}");
    }
    let proposal = fs::read_to_string(dir.join("proposal.md")).unwrap();
    assert!(proposal.contains("Title of add-login"), "proposal lacks the title:\n{proposal}");
    assert!(proposal.contains("Because add-login matters."), "proposal lacks the rationale:\n{proposal}");

    let lock = resp.lock.expect("lock in response");
    assert_eq!(lock.owner, "alice");
    assert!(lock.live);
    assert_eq!(lock.ttl_seconds, 3600, "ttl 0 means the default 3600");
    let (acquired, expires) = (ts(&lock.acquired_at), ts(&lock.expires_at));
    assert_eq!(expires.0 - acquired.0, 3600, "expires_at = acquired_at + ttl");
    assert!(resp.takeover.is_none());

    let change = resp.change.expect("change summary");
    assert_eq!(change.slug, "add-login");
    assert_eq!(change.title, "Title of add-login");
    assert_eq!(change.status, ChangeStatus::Draft as i32);
    assert_eq!(change.uri, "change://add-login/proposal");
    assert!(resp.resource_uris.contains(&"change://add-login/proposal".to_string()), "{:?}", resp.resource_uris);
    assert!(resp.resource_uris.contains(&"change://add-login/tasks".to_string()), "{:?}", resp.resource_uris);
    assert!(
        find_files(&server.workspace, |n| n.ends_with(".tmp")).is_empty(),
        "temp files left behind: {:?}",
        find_files(&server.workspace, |n| n.ends_with(".tmp"))
    );
}

#[tokio::test]
async fn open_change_honours_ttl_and_every_template() {
    let server = Server::start();
    let mut c = server.changes().await;
    let mut proposals = BTreeSet::new();
    for (slug, template) in
        [("t-feature", Template::Feature), ("t-bugfix", Template::Bugfix), ("t-chore", Template::Chore)]
    {
        let mut req = open_req(slug, "alice");
        req.template = template as i32;
        req.ttl_seconds = 120;
        let resp = ok("OpenChange", bounded("OpenChange", c.open_change(req)).await);
        assert!(resp.created);
        let lock = resp.lock.expect("lock");
        assert_eq!(lock.ttl_seconds, 120);
        assert_eq!(ts(&lock.expires_at).0 - ts(&lock.acquired_at).0, 120);
        let text = fs::read_to_string(change_dir(&server, slug).join("proposal.md")).unwrap();
        proposals.insert(text.replace(slug, "SLUG"));
    }
    assert_eq!(proposals.len(), 3, "the three templates should scaffold different proposals");
}

#[tokio::test]
async fn open_change_by_the_same_owner_returns_the_existing_change_and_refreshes_the_lock() {
    let server = Server::start();
    let mut c = server.changes().await;
    let first = open(&mut c, "same-owner", "alice").await;
    let proposal_path = change_dir(&server, "same-owner").join("proposal.md");
    fs::write(&proposal_path, "# Title of same-owner\n\n## Why\nEdited by hand.\n\n## What Changes\n- x\n").unwrap();
    let edited = fs::read(&proposal_path).unwrap();

    let mut again_req = open_req("same-owner", "alice");
    again_req.title = "A different title".into();
    let again = ok("OpenChange", bounded("OpenChange", c.open_change(again_req)).await);

    assert!(!again.created, "second open by the same owner must not create: {again:?}");
    let (l1, l2) = (first.lock.unwrap(), again.lock.unwrap());
    assert_eq!(l2.owner, "alice");
    assert!(ts(&l2.expires_at) >= ts(&l1.expires_at), "refreshed lock must not expire earlier: {l1:?} then {l2:?}");
    assert!(ts(&l2.acquired_at) >= ts(&l1.acquired_at));
    assert_eq!(fs::read(&proposal_path).unwrap(), edited, "re-opening must not overwrite the existing proposal");
}

#[tokio::test]
async fn open_change_held_by_another_owner_is_aborted_naming_holder_and_expiry() {
    let server = Server::start();
    let mut c = server.changes().await;
    let first = open(&mut c, "contested", "alice").await;
    let before = snapshot(&server.workspace);

    let status = err("OpenChange by bob", bounded("OpenChange", c.open_change(open_req("contested", "bob"))).await);
    let info = assert_error(&status, Code::Aborted, "LOCKED_BY_OTHER_OWNER");
    assert_eq!(info.metadata.get("holder").map(String::as_str), Some("alice"), "{info:?}");
    let expires = info.metadata.get("expires_at").expect("expires_at in metadata");
    let parsed = time::OffsetDateTime::parse(expires, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("expires_at {expires:?} is not RFC 3339: {e}"));
    assert_eq!(parsed.unix_timestamp(), ts(&first.lock.unwrap().expires_at).0, "expiry names alice's lock");
    assert_same_tree(&before, &snapshot(&server.workspace), "a refused open");
}

#[tokio::test]
async fn open_change_takes_over_an_expired_lock_and_reports_it() {
    let server = Server::start();
    let mut c = server.changes().await;
    open(&mut c, "stale-lock", "alice").await;
    // Age alice's lock on disk: taken three hours ago with a one-minute ttl.
    let lock_path = change_dir(&server, "stale-lock").join(".lock");
    let acquired = time::OffsetDateTime::now_utc() - time::Duration::hours(3);
    let record = serde_json::json!({
        "owner": "alice",
        "acquired_at": acquired.format(&time::format_description::well_known::Rfc3339).unwrap(),
        "ttl_seconds": 60,
        "nonce": "0123456789abcdef",
    });
    fs::write(&lock_path, serde_json::to_vec_pretty(&record).unwrap()).unwrap();

    let resp = open(&mut c, "stale-lock", "bob").await;
    assert!(!resp.created);
    assert_eq!(resp.lock.as_ref().unwrap().owner, "bob");
    let takeover = resp.takeover.expect("takeover reported");
    assert_eq!(takeover.previous_owner, "alice");
    assert_eq!(ts(&takeover.expired_at).0, (acquired + time::Duration::seconds(60)).unix_timestamp());
    let shown = show(&mut c, "stale-lock").await;
    assert_eq!(shown.change.unwrap().lock.unwrap().owner, "bob");
}

/// Ages the change's lock on disk: taken `ago` by `owner` with a `ttl_seconds` lock.
fn age_lock(server: &Server, slug: &str, owner: &str, ago: time::Duration, ttl_seconds: u32) {
    let acquired = time::OffsetDateTime::now_utc() - ago;
    let record = serde_json::json!({
        "owner": owner,
        "acquired_at": acquired.format(&time::format_description::well_known::Rfc3339).unwrap(),
        "ttl_seconds": ttl_seconds,
        "nonce": "0123456789abcdef",
    });
    fs::write(change_dir(server, slug).join(".lock"), serde_json::to_vec_pretty(&record).unwrap()).unwrap();
}

/// A lock lasts its own TTL, not longer: two minutes after a one-minute lock was taken, a tick
/// and an archive by another owner take it over (recorded), while a live lock still refuses.
#[tokio::test]
async fn a_lock_past_its_ttl_is_taken_over_by_a_tick_and_by_an_archive() {
    let server = Server::start();
    let mut c = server.changes().await;
    open(&mut c, "short-lock", "alice").await;
    age_lock(&server, "short-lock", "alice", time::Duration::seconds(120), 60);
    ok("UpdateTasks", bounded("UpdateTasks", c.update_tasks(tick("short-lock", "bob", "1.1", true))).await);
    assert_eq!(show(&mut c, "short-lock").await.change.unwrap().lock.unwrap().owner, "bob");
    let meta = fs::read_to_string(change_dir(&server, "short-lock").join(".taskmcp.json")).unwrap();
    assert!(meta.contains("alice"), "the takeover from alice is recorded: {meta}");
    let refused =
        err("UpdateTasks", bounded("UpdateTasks", c.update_tasks(tick("short-lock", "alice", "1.2", true))).await);
    assert_error(&refused, Code::Aborted, "LOCKED_BY_OTHER_OWNER");

    age_lock(&server, "short-lock", "bob", time::Duration::seconds(120), 60);
    let archived =
        ok("ArchiveChange", bounded("ArchiveChange", c.archive_change(archive_req("short-lock", "alice"))).await);
    assert_eq!(archived.receipt.unwrap().actor, "alice");
}

#[tokio::test]
async fn open_change_defaults_the_owner_to_the_anonymous_principal() {
    let server = Server::start();
    let mut c = server.changes().await;
    let resp = open(&mut c, "no-owner", "").await;
    assert_eq!(resp.lock.unwrap().owner, "anonymous");
}

#[tokio::test]
async fn open_change_rejects_invalid_slug_title_owner_and_ttl_and_creates_nothing() {
    let server = Server::start();
    let mut c = server.changes().await;
    let before = snapshot(&server.workspace);
    let cases: Vec<(&str, OpenChangeRequest, &str)> = vec![
        ("uppercase slug", OpenChangeRequest { slug: "Bad-Slug".into(), ..open_req("x", "alice") }, "INVALID_SLUG"),
        ("short slug", OpenChangeRequest { slug: "ab".into(), ..open_req("x", "alice") }, "INVALID_SLUG"),
        ("underscore slug", OpenChangeRequest { slug: "a_b_c".into(), ..open_req("x", "alice") }, "INVALID_SLUG"),
        ("reserved slug", OpenChangeRequest { slug: "archive".into(), ..open_req("x", "alice") }, "INVALID_SLUG"),
        ("empty slug", OpenChangeRequest { slug: String::new(), ..open_req("x", "alice") }, "INVALID_SLUG"),
        ("empty title", OpenChangeRequest { title: "  ".into(), ..open_req("ok-slug", "alice") }, "INVALID_ARGUMENT"),
        (
            "two-line title",
            OpenChangeRequest { title: "a\nb".into(), ..open_req("ok-slug", "alice") },
            "INVALID_ARGUMENT",
        ),
        ("long title", OpenChangeRequest { title: "x".repeat(201), ..open_req("ok-slug", "alice") }, "TOO_LARGE"),
        ("ttl too short", OpenChangeRequest { ttl_seconds: 59, ..open_req("ok-slug", "alice") }, "INVALID_ARGUMENT"),
        ("ttl too long", OpenChangeRequest { ttl_seconds: 86_401, ..open_req("ok-slug", "alice") }, "INVALID_ARGUMENT"),
        (
            "owner with space",
            OpenChangeRequest { owner: "a b".into(), ..open_req("ok-slug", "alice") },
            "INVALID_ARGUMENT",
        ),
    ];
    for (what, req, reason) in cases {
        let status = err(what, bounded(what, c.open_change(req)).await);
        let info = assert_error(&status, Code::InvalidArgument, reason);
        assert!(!info.metadata.is_empty(), "{what}: ErrorInfo metadata should name the field: {info:?}");
    }
    // The title limit is 200 characters, not bytes: 200 multi-byte characters pass.
    let mut req = open_req("wide-title", "alice");
    req.title = "é".repeat(200);
    assert!(ok("200-char title", bounded("OpenChange", c.open_change(req)).await).created);
    let mut after = snapshot(&server.workspace);
    after.retain(|p, _| !p.starts_with("changes/wide-title"));
    assert_same_tree(&before, &after, "rejected opens");
}

// ------------------------------------------------------------------ ListChanges

#[tokio::test]
async fn list_changes_pages_by_two_through_five_changes_in_slug_order_without_gaps_or_repeats() {
    let server = Server::start();
    let mut c = server.changes().await;
    let slugs = ["delta-d", "alpha-a", "echo-e", "charlie-c", "bravo-b"];
    for slug in slugs {
        open(&mut c, slug, "alice").await;
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = list(&mut c, 2, &token, ChangeStatus::Unspecified).await;
        pages += 1;
        assert!(page.changes.len() <= 2, "page {pages} has {} items", page.changes.len());
        assert_eq!(page.total, 5, "total counts every match, on every page");
        seen.extend(page.changes.iter().map(|s| s.slug.clone()));
        if page.next_page_token.is_empty() {
            break;
        }
        assert!(pages < 10, "paging does not end: {seen:?}");
        token = page.next_page_token;
    }
    let mut expected: Vec<String> = slugs.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(seen, expected, "pages concatenate to every change once, in slug order");
    assert_eq!(pages, 3);
}

#[tokio::test]
async fn list_changes_page_size_zero_means_fifty_and_over_200_is_invalid() {
    let server = Server::start();
    let mut c = server.changes().await;
    for i in 0..3 {
        open(&mut c, &format!("item-{i}"), "alice").await;
    }
    let page = list(&mut c, 0, "", ChangeStatus::Unspecified).await;
    assert_eq!(page.changes.len(), 3);
    assert!(page.next_page_token.is_empty(), "everything fits the default page");

    let page = list(&mut c, 200, "", ChangeStatus::Unspecified).await;
    assert_eq!(page.changes.len(), 3);

    let req = ListChangesRequest { page_size: 201, page_token: String::new(), status: 0 };
    let status = err("page_size 201", bounded("ListChanges", c.list_changes(req)).await);
    assert_eq!(status.code(), Code::InvalidArgument, "{}", common::describe(&status));
    assert!(status.get_details_error_info().is_some(), "{}", common::describe(&status));
}

#[tokio::test]
async fn list_changes_rejects_garbage_and_foreign_page_tokens() {
    let server = Server::start();
    let mut c = server.changes().await;
    for slug in ["aaa", "bbb", "ccc"] {
        open(&mut c, slug, "alice").await;
    }
    for garbage in ["not a token!", "AAAA", "eyJ2IjoxfQ", &"A".repeat(5000)] {
        let req = ListChangesRequest { page_size: 1, page_token: garbage.into(), status: 0 };
        let status = err("garbage token", bounded("ListChanges", c.list_changes(req)).await);
        assert_error(&status, Code::InvalidArgument, "INVALID_PAGE_TOKEN");
    }
    // A token made for the draft listing does not continue the "all" listing.
    let first = list(&mut c, 1, "", ChangeStatus::Draft).await;
    assert!(!first.next_page_token.is_empty());
    let req = ListChangesRequest { page_size: 1, page_token: first.next_page_token, status: ChangeStatus::All as i32 };
    let status = err("foreign token", bounded("ListChanges", c.list_changes(req)).await);
    assert_error(&status, Code::InvalidArgument, "INVALID_PAGE_TOKEN");
}

#[tokio::test]
async fn list_changes_filters_by_status_and_reports_progress() {
    let server = Server::start();
    let mut c = server.changes().await;
    open(&mut c, "kept-open", "alice").await;
    open(&mut c, "to-archive", "alice").await;
    let total_tasks = show(&mut c, "kept-open").await.tasks.len() as u32;
    assert!(total_tasks >= 2, "templates should have at least two tasks");
    ok("UpdateTasks", bounded("UpdateTasks", c.update_tasks(tick("kept-open", "alice", "1.1", true))).await);
    let day = utc_today();
    ok("ArchiveChange", bounded("ArchiveChange", c.archive_change(archive_req("to-archive", "alice"))).await);

    let drafts = list(&mut c, 0, "", ChangeStatus::Unspecified).await;
    assert_eq!(drafts.changes.iter().map(|s| s.slug.as_str()).collect::<Vec<_>>(), ["kept-open"]);
    let draft = &drafts.changes[0];
    assert_eq!(draft.status, ChangeStatus::Draft as i32);
    let progress = draft.progress.as_ref().expect("progress");
    assert_eq!((progress.done, progress.total), (1, total_tasks));
    assert_eq!(draft.lock.as_ref().expect("draft has a lock").owner, "alice");
    assert!(draft.updated_at.is_some());
    assert_eq!(list(&mut c, 0, "", ChangeStatus::Draft).await.changes, drafts.changes);

    let archived = list(&mut c, 0, "", ChangeStatus::Archived).await;
    assert_eq!(archived.changes.len(), 1, "{archived:?}");
    let a = &archived.changes[0];
    assert_eq!(a.slug, "to-archive");
    assert_eq!(a.status, ChangeStatus::Archived as i32);
    assert!(a.lock.is_none(), "archived changes have no lock");
    assert!(expected_archive_names(&day, "to-archive").contains(&a.archive_name), "archive_name {:?}", a.archive_name);

    let all = list(&mut c, 0, "", ChangeStatus::All).await;
    assert_eq!(
        all.changes.iter().map(|s| s.slug.as_str()).collect::<Vec<_>>(),
        ["kept-open", "to-archive"],
        "drafts first, then archived"
    );
    assert_eq!(all.total, 2);
}

// ------------------------------------------------------------------ ShowChange

#[tokio::test]
async fn show_change_returns_proposal_tasks_deltas_and_lock() {
    let server = Server::start();
    let mut c = server.changes().await;
    open(&mut c, "show-me", "alice").await;
    let dir = change_dir(&server, "show-me");
    fs::create_dir_all(dir.join("specs/auth")).unwrap();
    fs::write(
        dir.join("specs/auth/spec.md"),
        "# Auth\n\n## ADDED Requirements\n\n### Requirement: Throttle logins\nThe system SHALL throttle.\n\n\
         #### Scenario: Too many attempts\n- **WHEN** five attempts fail\n- **THEN** the sixth is refused\n",
    )
    .unwrap();

    let shown = show(&mut c, "show-me").await;
    assert_eq!(shown.proposal, fs::read_to_string(dir.join("proposal.md")).unwrap());
    let summary = shown.change.expect("summary");
    assert_eq!(summary.slug, "show-me");
    assert_eq!(summary.title, "Title of show-me");
    assert_eq!(summary.status, ChangeStatus::Draft as i32);
    assert_eq!(summary.lock.expect("lock").owner, "alice");

    assert!(!shown.tasks.is_empty(), "template tasks parsed");
    assert_eq!(shown.tasks[0].id, "1.1", "{:?}", shown.tasks);
    assert!(shown.tasks.iter().any(|t| t.id == "1.2"), "{:?}", shown.tasks);
    let tasks_text = fs::read_to_string(dir.join("tasks.md")).unwrap();
    for task in &shown.tasks {
        assert!(!task.done, "fresh tasks are open: {task:?}");
        let line = tasks_text.lines().nth(task.line as usize - 1).expect("task line exists");
        assert!(line.contains(&task.text), "line {} {line:?} should hold {:?}", task.line, task.text);
    }
    let progress = summary.progress.expect("progress");
    assert_eq!((progress.done, progress.total), (0, shown.tasks.len() as u32));

    assert_eq!(shown.deltas.len(), 1, "README excluded, one delta: {:?}", shown.deltas);
    let delta = &shown.deltas[0];
    assert_eq!(delta.path, "auth/spec.md");
    assert_eq!(delta.requirements.len(), 1, "{delta:?}");
    assert_eq!(delta.requirements[0].operation, "ADDED");
    assert_eq!(delta.requirements[0].requirement, "Throttle logins");
    assert_eq!(delta.requirements[0].scenarios, 1);
}

/// `change.show` keeps parsed changes between calls; every edit made on disk by another process
/// must show in the very next call, with no wait: rewrites, new spec folders written right after
/// they are made, deletions, a rename away and a change folder replaced under the same slug.
#[tokio::test]
async fn show_change_sees_every_edit_on_disk_at_once() {
    let server = Server::start();
    let mut c = server.changes().await;
    open(&mut c, "cached", "alice").await;
    let dir = change_dir(&server, "cached");
    for round in 0..40 {
        let proposal = format!("# Round {round}\n\nText of round {round}.\n");
        fs::write(dir.join("proposal.md"), &proposal).unwrap();
        let cap = dir.join(format!("specs/cap-{round}"));
        fs::create_dir_all(&cap).unwrap();
        fs::write(cap.join("spec.md"), format!("## ADDED Requirements\n\n### Requirement: R{round}\nSHALL.\n"))
            .unwrap();
        let shown = show(&mut c, "cached").await;
        assert_eq!(shown.proposal, proposal, "round {round}: the proposal just written");
        assert_eq!(shown.change.as_ref().map(|s| s.title.as_str()), Some(format!("Round {round}").as_str()));
        let paths: BTreeSet<String> = shown.deltas.iter().map(|d| d.path.clone()).collect();
        assert!(paths.contains(&format!("cap-{round}/spec.md")), "round {round}: new folder's spec in {paths:?}");
        assert_eq!(paths.len(), round + 1, "round {round}: {paths:?}");
        // The same answer again, now from the cache.
        assert_eq!(show(&mut c, "cached").await, shown, "round {round}: a repeated read");
    }
    fs::remove_dir_all(dir.join("specs/cap-0")).unwrap();
    assert!(!show(&mut c, "cached").await.deltas.iter().any(|d| d.path.starts_with("cap-0/")), "deleted folder");
    fs::write(dir.join("tasks.md"), "## 1. Only\n\n- [x] 1.1 Done already\n").unwrap();
    let tasks = show(&mut c, "cached").await.tasks;
    assert_eq!((tasks.len(), tasks[0].done), (1, true), "{tasks:?}");

    // The folder moved away: not found at once; a new folder under the slug: its content.
    let aside = server.workspace.join("aside");
    fs::rename(&dir, &aside).unwrap();
    let status =
        err("ShowChange", bounded("ShowChange", c.show_change(ShowChangeRequest { slug: "cached".into() })).await);
    assert_error(&status, Code::NotFound, "CHANGE_NOT_FOUND");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("proposal.md"), "# Replaced\n").unwrap();
    let shown = show(&mut c, "cached").await;
    assert_eq!(shown.proposal, "# Replaced\n");
    assert!(shown.deltas.is_empty() && shown.tasks.is_empty(), "{shown:?}");
}

#[tokio::test]
async fn show_change_of_an_unknown_slug_is_not_found() {
    let server = Server::start();
    let mut c = server.changes().await;
    let status = err(
        "ShowChange",
        bounded("ShowChange", c.show_change(ShowChangeRequest { slug: "nope-not-here".into() })).await,
    );
    let info = assert_error(&status, Code::NotFound, "CHANGE_NOT_FOUND");
    assert_eq!(info.metadata.get("slug").map(String::as_str), Some("nope-not-here"));
}

#[tokio::test]
async fn show_change_finds_an_archived_change_by_its_slug() {
    let server = Server::start();
    let mut c = server.changes().await;
    open(&mut c, "old-one", "alice").await;
    let proposal = fs::read_to_string(change_dir(&server, "old-one").join("proposal.md")).unwrap();
    ok("ArchiveChange", bounded("ArchiveChange", c.archive_change(archive_req("old-one", "alice"))).await);
    let shown = show(&mut c, "old-one").await;
    assert_eq!(shown.change.as_ref().unwrap().status, ChangeStatus::Archived as i32);
    assert_eq!(shown.proposal, proposal);
}

// ------------------------------------------------------------------ ValidateChange

#[tokio::test]
async fn validate_change_finds_a_fresh_change_of_every_template_valid() {
    let server = Server::start();
    let mut c = server.changes().await;
    for (slug, template) in
        [("v-feature", Template::Feature), ("v-bugfix", Template::Bugfix), ("v-chore", Template::Chore)]
    {
        let mut req = open_req(slug, "alice");
        req.template = template as i32;
        ok("OpenChange", bounded("OpenChange", c.open_change(req)).await);
        let resp = ok(
            "ValidateChange",
            bounded("ValidateChange", c.validate_change(ValidateChangeRequest { slug: slug.into() })).await,
        );
        assert!(resp.valid, "{slug}: fresh scaffold should be valid: {:?}", resp.findings);
        assert!(resp.findings.iter().all(|f| f.severity != Severity::Error as i32), "{:?}", resp.findings);
    }
}

#[tokio::test]
async fn validate_change_reports_broken_files_with_code_severity_file_and_line() {
    let server = Server::start();
    let mut c = server.changes().await;
    open(&mut c, "break-me", "alice").await;
    let dir = change_dir(&server, "break-me");
    fs::write(dir.join("tasks.md"), "# Tasks\n\n## 1. Work\n- [ ] 1.1 Fine item\n- [?] 1.2 Broken checkbox\n").unwrap();
    fs::write(dir.join("proposal.md"), "# Title of break-me\n\nNo sections at all.\n").unwrap();
    let before = snapshot(&server.workspace);

    let resp = ok(
        "ValidateChange",
        bounded("ValidateChange", c.validate_change(ValidateChangeRequest { slug: "break-me".into() })).await,
    );
    assert!(!resp.valid, "{:?}", resp.findings);
    let tasks_finding = resp
        .findings
        .iter()
        .find(|f| f.file == "tasks.md" && f.line == 5)
        .unwrap_or_else(|| panic!("no finding for tasks.md line 5: {:?}", resp.findings));
    assert_eq!(tasks_finding.severity, Severity::Error as i32, "{tasks_finding:?}");
    assert!(!tasks_finding.code.is_empty() && !tasks_finding.message.is_empty(), "{tasks_finding:?}");
    assert!(
        resp.findings.iter().any(|f| f.file == "proposal.md" && f.severity == Severity::Error as i32),
        "a proposal without sections is an error: {:?}",
        resp.findings
    );
    for f in &resp.findings {
        assert!(f.code.chars().all(|ch| ch.is_ascii_uppercase() || ch == '_'), "stable code: {f:?}");
    }
    // Errors come first.
    let first_non_error = resp.findings.iter().position(|f| f.severity != Severity::Error as i32);
    if let Some(i) = first_non_error {
        assert!(resp.findings[i..].iter().all(|f| f.severity != Severity::Error as i32), "{:?}", resp.findings);
    }
    assert_same_tree(&before, &snapshot(&server.workspace), "validate is read-only");
}

#[tokio::test]
async fn validate_change_of_an_unknown_slug_is_not_found() {
    let server = Server::start();
    let mut c = server.changes().await;
    let status = err(
        "ValidateChange",
        bounded("ValidateChange", c.validate_change(ValidateChangeRequest { slug: "missing-one".into() })).await,
    );
    assert_error(&status, Code::NotFound, "CHANGE_NOT_FOUND");
}

// ------------------------------------------------------------------ UpdateTasks

#[tokio::test]
async fn update_tasks_ticks_and_unticks_by_id_touching_only_the_checkbox() {
    let server = Server::start();
    let mut c = server.changes().await;
    open(&mut c, "tick-me", "alice").await;
    let tasks_path = change_dir(&server, "tick-me").join("tasks.md");
    let original = fs::read_to_string(&tasks_path).unwrap();
    assert!(original.contains("- [ ] 1.1"), "template task 1.1 is `- [ ] 1.1 ...`:\n{original}");

    let resp = ok("tick 1.1", bounded("UpdateTasks", c.update_tasks(tick("tick-me", "alice", "1.1", true))).await);
    assert_eq!(resp.changed, ["1.1"]);
    assert_eq!(resp.progress.as_ref().unwrap().done, 1);
    assert!(resp.tasks.iter().find(|t| t.id == "1.1").expect("1.1 listed").done);
    let ticked = fs::read_to_string(&tasks_path).unwrap();
    assert!(ticked.contains("- [x] 1.1"), "tasks.md after tick:\n{ticked}");
    assert_eq!(ticked, original.replacen("- [ ] 1.1", "- [x] 1.1", 1), "only the checkbox changes");

    let again =
        ok("tick 1.1 again", bounded("UpdateTasks", c.update_tasks(tick("tick-me", "alice", "1.1", true))).await);
    assert!(again.changed.is_empty(), "ticking a ticked task changes nothing: {:?}", again.changed);

    let list = list(&mut c, 0, "", ChangeStatus::Unspecified).await;
    assert_eq!(list.changes[0].progress.as_ref().unwrap().done, 1);

    let resp = ok("untick 1.1", bounded("UpdateTasks", c.update_tasks(tick("tick-me", "alice", "1.1", false))).await);
    assert_eq!(resp.changed, ["1.1"]);
    assert_eq!(resp.progress.unwrap().done, 0);
    assert_eq!(fs::read_to_string(&tasks_path).unwrap(), original, "untick restores the file byte for byte");
}

#[tokio::test]
async fn update_tasks_with_an_unknown_id_fails_whole_and_writes_nothing() {
    let server = Server::start();
    let mut c = server.changes().await;
    open(&mut c, "unknown-id", "alice").await;
    let before = snapshot(&server.workspace);
    let req = UpdateTasksRequest {
        slug: "unknown-id".into(),
        owner: "alice".into(),
        updates: vec![TaskUpdate { id: "1.1".into(), done: true }, TaskUpdate { id: "9.9".into(), done: true }],
    };
    let status = err("UpdateTasks", bounded("UpdateTasks", c.update_tasks(req)).await);
    let info = assert_error(&status, Code::NotFound, "TASK_NOT_FOUND");
    assert_eq!(info.metadata.get("task_id").map(String::as_str), Some("9.9"), "{info:?}");
    // The checklist and every other file of the change are untouched (the lock
    // is checked on its own in the next test).
    let without_lock = |mut tree: common::Tree| {
        tree.retain(|p, _| !p.ends_with(".lock"));
        tree
    };
    assert_same_tree(&without_lock(before), &without_lock(snapshot(&server.workspace)), "a failed task update");
}

#[tokio::test]
async fn update_tasks_that_fails_leaves_the_lock_file_as_it_was() {
    // "Unknown ids fail the whole call; nothing is written": that includes the lock.
    let server = Server::start();
    let mut c = server.changes().await;
    open(&mut c, "keep-lock", "alice").await;
    let lock_path = change_dir(&server, "keep-lock").join(".lock");
    let before = fs::read(&lock_path).unwrap();
    let status =
        err("UpdateTasks", bounded("UpdateTasks", c.update_tasks(tick("keep-lock", "alice", "9.9", true))).await);
    assert_error(&status, Code::NotFound, "TASK_NOT_FOUND");
    assert_eq!(
        String::from_utf8_lossy(&fs::read(&lock_path).unwrap()),
        String::from_utf8_lossy(&before),
        "a failed update must not rewrite (refresh) the lock"
    );
}

#[tokio::test]
async fn update_tasks_by_another_owner_while_the_lock_is_live_is_aborted() {
    let server = Server::start();
    let mut c = server.changes().await;
    open(&mut c, "not-yours", "alice").await;
    let before = snapshot(&server.workspace);
    let status =
        err("UpdateTasks", bounded("UpdateTasks", c.update_tasks(tick("not-yours", "bob", "1.1", true))).await);
    let info = assert_error(&status, Code::Aborted, "LOCKED_BY_OTHER_OWNER");
    assert_eq!(info.metadata.get("holder").map(String::as_str), Some("alice"));
    assert_same_tree(&before, &snapshot(&server.workspace), "a refused task update");
}

#[tokio::test]
async fn update_tasks_rejects_unknown_changes_and_empty_updates() {
    let server = Server::start();
    let mut c = server.changes().await;
    let status =
        err("UpdateTasks", bounded("UpdateTasks", c.update_tasks(tick("ghost-change", "alice", "1.1", true))).await);
    assert_error(&status, Code::NotFound, "CHANGE_NOT_FOUND");

    open(&mut c, "empty-update", "alice").await;
    let req = UpdateTasksRequest { slug: "empty-update".into(), owner: "alice".into(), updates: vec![] };
    let status = err("empty updates", bounded("UpdateTasks", c.update_tasks(req)).await);
    assert_eq!(status.code(), Code::InvalidArgument, "{}", common::describe(&status));
}

// ------------------------------------------------------------------ ArchiveChange

#[tokio::test]
async fn archive_change_moves_the_change_writes_a_receipt_and_is_idempotent() {
    let server = Server::start();
    let mut c = server.changes().await;
    open(&mut c, "ship-it", "alice").await;
    let proposal = fs::read(change_dir(&server, "ship-it").join("proposal.md")).unwrap();
    let day = utc_today();
    let mut req = archive_req("ship-it", "alice");
    req.tests = Some(TestSummary { passed: 7, failed: 0, skipped: 1, note: "cargo nextest run".into() });
    let first = ok("ArchiveChange", bounded("ArchiveChange", c.archive_change(req.clone())).await);

    assert!(!first.already_archived);
    let receipt = first.receipt.clone().expect("receipt");
    assert_eq!(receipt.slug, "ship-it");
    assert_eq!(receipt.actor, "alice");
    assert!(receipt.archived_at.is_some());
    assert_eq!(receipt.tests.as_ref().map(|t| (t.passed, t.failed, t.skipped)), Some((7, 0, 1)));
    let folders = archive_folders(&server);
    assert_eq!(folders.len(), 1, "{folders:?}");
    assert!(expected_archive_names(&day, "ship-it").contains(&folders[0]), "folder {:?}", folders[0]);
    assert_eq!(receipt.archive_path, format!("changes/archive/{}", folders[0]));

    let archived = server.workspace.join("changes/archive").join(&folders[0]);
    assert!(!change_dir(&server, "ship-it").exists(), "the draft folder is gone");
    assert_eq!(fs::read(archived.join("proposal.md")).unwrap(), proposal, "files moved as they were");
    assert!(!archived.join(".lock").exists(), "the lock is released");
    let on_disk: serde_json::Value =
        serde_json::from_slice(&fs::read(archived.join("receipt.json")).unwrap()).expect("receipt.json is JSON");
    assert_eq!(on_disk["slug"], "ship-it", "{on_disk}");
    assert_eq!(on_disk["actor"], "alice", "{on_disk}");

    let before = snapshot(&server.workspace);
    let second = ok("ArchiveChange again", bounded("ArchiveChange", c.archive_change(req)).await);
    assert!(second.already_archived);
    assert_eq!(second.receipt, first.receipt, "the saved receipt comes back unchanged");
    assert_same_tree(&before, &snapshot(&server.workspace), "a second archive");
}

#[tokio::test]
async fn archive_change_of_an_invalid_change_fails_with_findings_and_moves_nothing() {
    let server = Server::start();
    let mut c = server.changes().await;
    open(&mut c, "not-ready", "alice").await;
    fs::write(change_dir(&server, "not-ready").join("proposal.md"), "no heading, no sections\n").unwrap();
    let before = snapshot(&server.workspace);

    let status =
        err("ArchiveChange", bounded("ArchiveChange", c.archive_change(archive_req("not-ready", "alice"))).await);
    assert_error(&status, Code::FailedPrecondition, "VALIDATION_FAILED");
    let failure = status
        .get_details_precondition_failure()
        .unwrap_or_else(|| panic!("no PreconditionFailure detail: {}", common::describe(&status)));
    assert!(!failure.violations.is_empty());
    assert!(failure.violations.iter().any(|v| v.subject.starts_with("proposal.md")), "{failure:?}");

    let mut after = snapshot(&server.workspace);
    // An empty build-aside directory may appear; nothing else may change.
    after.retain(|p, e| !(p.as_os_str() == ".staging" && *e == common::Entry::Dir));
    let mut before = before;
    before.retain(|p, e| !(p.as_os_str() == ".staging" && *e == common::Entry::Dir));
    assert_same_tree(&before, &after, "a refused archive");
    assert!(archive_folders(&server).is_empty());
}

/// The archive gate reads `tasks.md` as validation does: a malformed checklist item refuses
/// the archive and names the file.
#[tokio::test]
async fn archive_change_refuses_a_malformed_checklist_and_moves_nothing() {
    let server = Server::start();
    let mut c = server.changes().await;
    open(&mut c, "bad-tasks", "alice").await;
    let tasks = change_dir(&server, "bad-tasks").join("tasks.md");
    let text = fs::read_to_string(&tasks).unwrap();
    fs::write(&tasks, format!("{text}- [?] neither done nor open\n")).unwrap();
    let validated = ok(
        "ValidateChange",
        bounded("ValidateChange", c.validate_change(ValidateChangeRequest { slug: "bad-tasks".into() })).await,
    );
    assert!(!validated.valid, "validation sees the item: {validated:?}");
    let status =
        err("ArchiveChange", bounded("ArchiveChange", c.archive_change(archive_req("bad-tasks", "alice"))).await);
    assert_error(&status, Code::FailedPrecondition, "VALIDATION_FAILED");
    let failure = status.get_details_precondition_failure().expect("PreconditionFailure detail");
    assert!(failure.violations.iter().any(|v| v.subject.starts_with("tasks.md")), "{failure:?}");
    assert!(archive_folders(&server).is_empty());
    assert!(tasks.exists(), "the draft stays");
}

#[tokio::test]
async fn archive_change_under_another_owners_live_lock_is_aborted() {
    let server = Server::start();
    let mut c = server.changes().await;
    open(&mut c, "alices", "alice").await;
    let before = snapshot(&server.workspace);
    let status = err("ArchiveChange", bounded("ArchiveChange", c.archive_change(archive_req("alices", "bob"))).await);
    let info = assert_error(&status, Code::Aborted, "LOCKED_BY_OTHER_OWNER");
    assert_eq!(info.metadata.get("holder").map(String::as_str), Some("alice"));
    assert_same_tree(&before, &snapshot(&server.workspace), "a refused archive");

    let status =
        err("ArchiveChange", bounded("ArchiveChange", c.archive_change(archive_req("never-was", "bob"))).await);
    assert_error(&status, Code::NotFound, "CHANGE_NOT_FOUND");
}

#[tokio::test]
async fn archive_change_stream_reports_progress_then_the_result() {
    let server = Server::start();
    let mut c = server.changes().await;
    open(&mut c, "streamed", "alice").await;
    let mut stream = bounded("ArchiveChangeStream", c.archive_change_stream(archive_req("streamed", "alice")))
        .await
        .unwrap_or_else(|s| panic!("ArchiveChangeStream: {}", common::describe(&s)))
        .into_inner();
    let mut events = Vec::new();
    while let Some(event) = bounded("archive event", stream.message()).await.expect("stream ok") {
        events.push(event.event.expect("event set"));
    }
    let (last, progress) = events.split_last().expect("at least one event");
    let Event::Result(result) = last else { panic!("the last event must be the result: {events:?}") };
    assert!(!result.already_archived);
    assert_eq!(result.receipt.as_ref().unwrap().slug, "streamed");
    assert!(!progress.is_empty(), "progress events come before the result: {events:?}");
    let mut previous = 0;
    let mut steps = Vec::new();
    for event in progress {
        let Event::Progress(p) = event else { panic!("only one result, at the end: {events:?}") };
        assert!(p.current > previous && p.current <= p.total, "progress counts up: {events:?}");
        previous = p.current;
        steps.push(p.step.clone());
    }
    assert!(steps.iter().any(|s| s == "validate") && steps.iter().any(|s| s == "move"), "steps {steps:?}");
    assert_eq!(archive_folders(&server).len(), 1);
}

#[tokio::test]
async fn archive_change_stream_of_an_invalid_change_ends_in_validation_failed() {
    let server = Server::start();
    let mut c = server.changes().await;
    open(&mut c, "bad-stream", "alice").await;
    fs::write(change_dir(&server, "bad-stream").join("proposal.md"), "nothing here\n").unwrap();
    let outcome = async {
        let mut stream = c.archive_change_stream(archive_req("bad-stream", "alice")).await?.into_inner();
        while let Some(event) = stream.message().await? {
            if let Some(Event::Result(r)) = event.event {
                return Ok(r);
            }
        }
        Err(Status::internal("stream ended without result or error"))
    };
    let status = bounded("ArchiveChangeStream", outcome).await.expect_err("must fail");
    assert_error(&status, Code::FailedPrecondition, "VALIDATION_FAILED");
    assert!(archive_folders(&server).is_empty());
    assert!(change_dir(&server, "bad-stream").join("proposal.md").exists());
}

// ------------------------------------------------------------------ Resources

#[tokio::test]
async fn read_resource_streams_proposal_and_tasks_byte_for_byte() {
    let server = Server::start();
    let mut c = server.changes().await;
    let mut r = server.resources().await;
    open(&mut c, "read-me", "alice").await;
    let dir = change_dir(&server, "read-me");
    for (uri, file) in [("change://read-me/proposal", "proposal.md"), ("change://read-me/tasks", "tasks.md")] {
        let (bytes, chunks) =
            read_resource(&mut r, uri).await.unwrap_or_else(|s| panic!("{uri}: {}", common::describe(&s)));
        assert_eq!(bytes, fs::read(dir.join(file)).unwrap(), "{uri} == {file}");
        assert!(chunks.iter().all(|ch| ch.uri == uri && ch.mime_type == "text/markdown"), "{chunks:?}");
        assert!(chunks.last().unwrap().last, "the final chunk is marked last");
        assert_eq!(chunks.last().unwrap().total_size, bytes.len() as u64);
    }
}

#[tokio::test]
async fn read_resource_splits_a_large_file_into_ordered_chunks_of_at_most_64_kib() {
    let server = Server::start();
    let mut c = server.changes().await;
    let mut r = server.resources().await;
    open(&mut c, "big-one", "alice").await;
    let mut text = String::from("# Title of big-one\n\n## Why\n");
    let mut i = 0;
    while text.len() < 200 * 1024 {
        text.push_str(&format!("Line {i}: the quick brown fox jumps over the lazy dog.\n"));
        i += 1;
    }
    fs::write(change_dir(&server, "big-one").join("proposal.md"), &text).unwrap();
    let (bytes, chunks) = read_resource(&mut r, "change://big-one/proposal").await.expect("read");
    assert_eq!(bytes, text.as_bytes());
    assert!(chunks.len() >= 4, "200 KiB needs at least four 64 KiB chunks, got {}", chunks.len());
    let mut offset = 0u64;
    for (i, chunk) in chunks.iter().enumerate() {
        let data = chunk_bytes(chunk);
        assert!(matches!(chunk.content, Some(Content::Text(_))), "markdown arrives as text");
        assert!(data.len() <= 64 * 1024, "chunk {i} is {} bytes", data.len());
        assert_eq!(chunk.offset, offset, "chunk {i} offset");
        assert_eq!(chunk.total_size, text.len() as u64);
        assert_eq!(chunk.last, i == chunks.len() - 1, "only the final chunk is last");
        offset += data.len() as u64;
    }
}

#[tokio::test]
async fn read_resource_serves_active_list_delta_and_receipt() {
    let server = Server::start();
    let mut c = server.changes().await;
    let mut r = server.resources().await;
    open(&mut c, "res-a", "alice").await;
    open(&mut c, "res-b", "alice").await;
    let delta = "## ADDED Requirements\n\n### Requirement: R\nText.\n\n#### Scenario: S\n- **WHEN** x\n- **THEN** y\n";
    fs::create_dir_all(change_dir(&server, "res-a").join("specs/cap")).unwrap();
    fs::write(change_dir(&server, "res-a").join("specs/cap/spec.md"), delta).unwrap();

    let (bytes, chunks) = read_resource(&mut r, "changes://active").await.expect("changes://active");
    assert_eq!(chunks[0].mime_type, "application/json");
    let json: serde_json::Value = serde_json::from_slice(&bytes).expect("changes://active is JSON");
    let text = json.to_string();
    assert!(text.contains("res-a") && text.contains("res-b"), "{text}");

    let (bytes, _) = read_resource(&mut r, "change://res-a/delta/cap/spec.md").await.expect("delta");
    assert_eq!(bytes, delta.as_bytes());

    let status = read_resource(&mut r, "change://res-a/receipt").await.expect_err("no receipt for a draft");
    assert_eq!(status.code(), Code::NotFound, "{}", common::describe(&status));

    ok("ArchiveChange", bounded("ArchiveChange", c.archive_change(archive_req("res-b", "alice"))).await);
    let folder = archive_folders(&server).pop().expect("archived");
    let (bytes, chunks) = read_resource(&mut r, "change://res-b/receipt").await.expect("receipt");
    assert_eq!(chunks[0].mime_type, "application/json");
    assert_eq!(bytes, fs::read(server.workspace.join("changes/archive").join(folder).join("receipt.json")).unwrap());
    let receipt: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(receipt["slug"], "res-b");
}

#[tokio::test]
async fn read_resource_of_unknown_things_is_not_found() {
    let server = Server::start();
    let mut c = server.changes().await;
    let mut r = server.resources().await;
    open(&mut c, "exists-here", "alice").await;
    for uri in
        ["change://no-such-change/proposal", "change://no-such-change/tasks", "change://exists-here/delta/nope.md"]
    {
        let status = read_resource(&mut r, uri).await.expect_err(uri);
        assert_eq!(status.code(), Code::NotFound, "{uri}: {}", common::describe(&status));
        let reason = status.get_details_error_info().map(|i| i.reason).unwrap_or_default();
        assert!(reason == "CHANGE_NOT_FOUND" || reason == "RESOURCE_NOT_FOUND", "{uri}: {}", common::describe(&status));
    }
}

#[tokio::test]
async fn list_resources_names_every_readable_resource() {
    let server = Server::start();
    let mut c = server.changes().await;
    let mut r = server.resources().await;
    open(&mut c, "list-a", "alice").await;
    open(&mut c, "list-b", "alice").await;
    let all = ok("ListResources", bounded("ListResources", r.list_resources(ListResourcesRequest::default())).await);
    let uris: BTreeSet<String> = all.resources.iter().map(|i| i.uri.clone()).collect();
    for expected in
        ["changes://active", "change://list-a/proposal", "change://list-a/tasks", "change://list-b/proposal"]
    {
        assert!(uris.contains(expected), "{expected} missing from {uris:?}");
    }
    let proposal = all.resources.iter().find(|i| i.uri == "change://list-a/proposal").unwrap();
    assert_eq!(proposal.mime_type, "text/markdown");
    let size = fs::metadata(change_dir(&server, "list-a").join("proposal.md")).unwrap().len();
    assert!(size > 0, "the proposal on disk is not empty");
    assert_eq!(proposal.size, size, "the listed size is the file's");

    let only_a = ok(
        "ListResources slug",
        bounded(
            "ListResources",
            r.list_resources(ListResourcesRequest { slug: "list-a".into(), ..Default::default() }),
        )
        .await,
    );
    assert!(!only_a.resources.is_empty());
    assert!(
        only_a.resources.iter().all(|i| !i.uri.contains("list-b")),
        "the slug filter keeps list-b out: {:?}",
        only_a.resources
    );
}

// ------------------------------------------------------------------ WatchChanges

#[tokio::test]
async fn watch_changes_sees_open_tick_external_edit_and_archive() {
    let server = Server::start();
    let mut c = server.changes().await;
    let mut r = server.resources().await;
    let mut stream = bounded("WatchChanges", r.watch_changes(WatchChangesRequest::default()))
        .await
        .unwrap_or_else(|s| panic!("WatchChanges: {}", common::describe(&s)))
        .into_inner();

    open(&mut c, "watched", "alice").await;
    let opened =
        next_event(&mut stream, "OPENED", |e| e.kind == ChangeEventKind::Opened as i32 && e.slug == "watched").await;
    assert!(opened.at.is_some());

    ok("UpdateTasks", bounded("UpdateTasks", c.update_tasks(tick("watched", "alice", "1.1", true))).await);
    let ticked = next_event(&mut stream, "TASKS_UPDATED", |e| {
        e.kind == ChangeEventKind::TasksUpdated as i32 && e.slug == "watched" && !e.external
    })
    .await;
    assert!(ticked.uris.contains(&"change://watched/tasks".to_string()), "{ticked:?}");

    // Another process edits the proposal on disk.
    let proposal = change_dir(&server, "watched").join("proposal.md");
    let mut text = fs::read_to_string(&proposal).unwrap();
    text.push_str("\nEdited outside the server.\n");
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg("printf '%s' \"$TEXT\" > \"$FILE\"")
        .env("TEXT", &text)
        .env("FILE", &proposal)
        .status()
        .expect("run sh");
    assert!(status.success());
    let external = next_event(&mut stream, "external UPDATED", |e| {
        e.kind == ChangeEventKind::Updated as i32 && e.slug == "watched" && e.external
    })
    .await;
    assert!(external.uris.contains(&"change://watched/proposal".to_string()), "{external:?}");

    ok("ArchiveChange", bounded("ArchiveChange", c.archive_change(archive_req("watched", "alice"))).await);
    next_event(&mut stream, "ARCHIVED", |e| e.kind == ChangeEventKind::Archived as i32 && e.slug == "watched").await;
}

/// `replay_ms` starts the feed in the past: the events of that window first, oldest first,
/// then the live ones, none twice; without it only live ones. Over the cap it is refused.
#[tokio::test]
async fn watch_changes_replays_the_recent_past_when_asked_and_only_then() {
    let server = Server::start();
    let mut c = server.changes().await;
    let mut r = server.resources().await;
    open(&mut c, "earlier-a", "alice").await;
    open(&mut c, "earlier-b", "alice").await;

    let watch = |replay_ms: u32| WatchChangesRequest { replay_ms, ..Default::default() };
    let mut replayed = bounded("WatchChanges", r.watch_changes(watch(10_000))).await.expect("watch").into_inner();
    let mut live_only = bounded("WatchChanges", r.watch_changes(watch(0))).await.expect("watch").into_inner();
    open(&mut c, "later", "alice").await;

    let mut slugs = Vec::new();
    while slugs.last().map(String::as_str) != Some("later") {
        slugs.push(next_event(&mut replayed, "an event", |e| e.kind == ChangeEventKind::Opened as i32).await.slug);
    }
    assert_eq!(slugs, ["earlier-a", "earlier-b", "later"], "the window's events, then the live one, once each");
    let first = next_event(&mut live_only, "an event", |_| true).await;
    assert_eq!(first.slug, "later", "no replay without replay_ms: {first:?}");

    let status = bounded("WatchChanges", r.watch_changes(watch(10_001))).await.expect_err("over the cap");
    common::assert_error(&status, tonic::Code::InvalidArgument, "INVALID_ARGUMENT");
    assert!(status.message().contains("replay_ms"), "{}", status.message());
}

#[tokio::test]
async fn watch_changes_with_a_slug_only_reports_that_change() {
    let server = Server::start();
    let mut c = server.changes().await;
    let mut r = server.resources().await;
    let mut stream =
        bounded("WatchChanges", r.watch_changes(WatchChangesRequest { slug: "wanted".into(), ..Default::default() }))
            .await
            .expect("watch")
            .into_inner();
    open(&mut c, "unwanted", "alice").await;
    open(&mut c, "wanted", "alice").await;
    let first = next_event(&mut stream, "any event", |_| true).await;
    assert_eq!(first.slug, "wanted", "events of other changes are filtered out: {first:?}");
}
