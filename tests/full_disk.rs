//! The workspace on a file system that fills up, for real: the server runs on a 512 KiB tmpfs
//! mounted in a mount namespace of its own (`unshare --mount`, so the host's mounts are left
//! alone and the file system goes away with the process). The test reaches that file system
//! through `/proc/<pid>/root`, which shows the server's mounts, to fill it, free it and read
//! what is on it. Mounting needs root (CAP_SYS_ADMIN), as CI has; without it the tests fail
//! saying so, rather than pass having proved nothing.
//!
//! With the disk full every writing tool, over gRPC, HTTP and MCP, is refused with
//! RESOURCE_EXHAUSTED and the reason WORKSPACE_FULL (HTTP 507) in words an operator can act on,
//! and leaves the workspace byte for byte as it was; reads go on, and so does readiness, which
//! names the full disk; the scraped `health_check_status{check="workspace_space"}` (the series
//! `TaskMcpWorkspaceFull` pages on) is 0. With a few pages free, each write that fails part-way
//! leaves nothing behind either: no change half made, no build-aside folder, no lock, no
//! receipt. Once space is freed the same calls succeed, without a restart, and the space check
//! is back to 1.
mod common;

use std::{
    ffi::CString,
    fs::{self, OpenOptions},
    io::{ErrorKind, Write},
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use common::{
    Changes, Server, Tree, assert_error, assert_same_tree, bounded, describe, err, find_files, mcp::Mcp, ok, snapshot,
};
use serde_json::{Value, json};
use task_mcp::pb::{
    ArchiveChangeRequest, ChangeStatus, ListChangesRequest, ListResourcesRequest, OpenChangeRequest,
    ReadResourceRequest, ShowChangeRequest, ShowChangeResponse, TaskUpdate, UpdateTasksRequest, ValidateChangeRequest,
    archive_change_event::Event, resource_chunk::Content,
};
use tonic::{Code, Status};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

/// The server's file system: room for the workspace and a few changes.
const DISK_BYTES: u64 = 512 * 1024;
/// tmpfs hands out space by the page.
const PAGE: u64 = 4096;
/// How long the readiness probe (every 5 s) may take to see a change of the disk.
const PROBE_BOUND: Duration = Duration::from_secs(30);
/// The `grpc.health.v1` service of the workspace alone.
const WORKSPACE_HEALTH: &str = "taskmcp.v1.Workspace";

/// A server whose workspace is on a small tmpfs of its own.
struct SmallDisk {
    server: Server,
    /// The server's file system as this process sees it: `/proc/<pid>/root/<mount point>`.
    fs: PathBuf,
    mount_point: tempfile::TempDir,
}

impl SmallDisk {
    fn start() -> SmallDisk {
        let mount_point = tempfile::Builder::new().prefix("task-mcp-full-disk-").tempdir().expect("tempdir");
        let at = mount_point.path().to_str().expect("a UTF-8 temp path").to_string();
        // `sh -c SCRIPT sh MOUNT_POINT BINARY ARGS...`: mount, then become the server.
        let script =
            format!(r#"mount -t tmpfs -o size={DISK_BYTES},mode=0755 task-mcp-test "$1" || exit 97; shift; exec "$@""#);
        let started = Server::builder()
            .workspace(mount_point.path().join("openspec"))
            .wrapped_in(["unshare", "--mount", "--propagation", "private", "sh", "-c", &script, "sh", &at])
            .try_start();
        let server = started.unwrap_or_else(|failure| {
            // SAFETY: geteuid(2) has no preconditions and cannot fail.
            let uid = unsafe { libc::geteuid() };
            panic!(
                "this test runs the server on a tmpfs mounted in a mount namespace of its own (`unshare --mount`, \
                 `mount -t tmpfs`), which takes root or CAP_SYS_ADMIN, as CI has; it could not (running as uid {uid}): \
                 {}\nexit status: {:?}\n--- output ---\n{}",
                failure.why, failure.status, failure.logs
            )
        });
        let fs = Path::new(&format!("/proc/{}/root", server.pid())).join(at.trim_start_matches('/'));
        let disk = SmallDisk { server, fs, mount_point };
        // The workspace is on the small file system, not on the host's.
        let device = |p: &Path| fs::metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display())).dev();
        assert_ne!(device(&disk.fs), device(disk.mount_point.path()), "the server's workspace is not on its own mount");
        let (total, _) = statvfs(&disk.fs);
        assert_eq!(total, DISK_BYTES, "the server's file system is not the {DISK_BYTES}-byte tmpfs");
        disk
    }

    /// The workspace, as `change.open` and the rest write it.
    fn workspace(&self) -> PathBuf {
        self.fs.join("openspec")
    }

    fn change(&self, slug: &str) -> PathBuf {
        self.workspace().join("changes").join(slug)
    }

    fn free_pages(&self) -> u64 {
        statvfs(&self.fs).1 / PAGE
    }

    /// Fills the file system to its last page, beside the workspace, then frees `pages` pages.
    fn fill_leaving(&self, pages: u64) {
        let path = self.fs.join("filler");
        let mut filler = OpenOptions::new().create(true).append(true).open(&path).expect("open the filler");
        // The readiness probe may hold a page for an instant while we fill: fill again then.
        for _ in 0..5 {
            loop {
                match filler.write_all(&[0xA5; PAGE as usize]) {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::StorageFull => break,
                    Err(e) => panic!("filling {}: {e}", path.display()),
                }
            }
            if self.free_pages() == 0 {
                break;
            }
        }
        assert_eq!(self.free_pages(), 0, "the file system would not fill");
        let size = filler.metadata().expect("stat the filler").len();
        assert!(
            size >= pages * PAGE && size.is_multiple_of(PAGE),
            "a filler of {size} bytes cannot free {pages} page(s)"
        );
        filler.set_len(size - pages * PAGE).expect("free pages");
        assert_eq!(self.free_pages(), pages, "free pages after freeing {pages}");
    }

    /// Removes the filler: the disk has room again.
    fn free(&self) {
        fs::remove_file(self.fs.join("filler")).expect("remove the filler");
    }

    /// The workspace, every file with its bytes, but for the readiness probe's file (made in
    /// `.staging` and removed again every 5 s).
    fn tree(&self) -> Tree {
        let probe = |p: &Path| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(".ready."));
        snapshot(&self.workspace()).into_iter().filter(|(path, _)| !probe(path)).collect()
    }

    /// What a failed write must not leave: build-aside folders, temporary files, locks set aside.
    fn assert_no_leftovers(&self, context: &str) {
        let staging: Vec<_> = fs::read_dir(self.workspace().join(".staging"))
            .expect("read .staging")
            .map(|e| e.expect("entry").file_name())
            .filter(|n| !n.to_string_lossy().starts_with(".ready."))
            .collect();
        assert!(staging.is_empty(), "{context}: left in the build-aside area: {staging:?}");
        let temp = find_files(&self.workspace(), |n| n.ends_with(".tmp") || n.ends_with(".stale"));
        let temp: Vec<_> = temp.iter().filter(|p| !p.to_string_lossy().contains(".ready.")).collect();
        assert!(temp.is_empty(), "{context}: temporary files left: {temp:?}");
    }
}

/// (size, bytes available) of the file system at `path`.
fn statvfs(path: &Path) -> (u64, u64) {
    let c_path = CString::new(path.as_os_str().as_bytes()).expect("no NUL in the path");
    // SAFETY: an all-zero `statvfs` is a valid value of the plain C struct statvfs(3) fills.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a pointer to a `statvfs` that outlives the call.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    assert_eq!(rc, 0, "statvfs {}: {}", path.display(), std::io::Error::last_os_error());
    #[allow(clippy::useless_conversion, reason = "the field types differ between targets")]
    let (blocks, available, size) = (u64::from(stat.f_blocks), u64::from(stat.f_bavail), u64::from(stat.f_frsize));
    (blocks * size, available * size)
}

fn open_req(slug: &str, owner: &str) -> OpenChangeRequest {
    OpenChangeRequest {
        title: format!("Title of {slug}"),
        slug: slug.into(),
        rationale: format!("Because {slug} matters."),
        owner: owner.into(),
        ..Default::default()
    }
}

fn tick(slug: &str, owner: &str, id: &str) -> UpdateTasksRequest {
    UpdateTasksRequest {
        slug: slug.into(),
        owner: owner.into(),
        updates: vec![TaskUpdate { id: id.into(), done: true }],
    }
}

fn archive_req(slug: &str, owner: &str) -> ArchiveChangeRequest {
    ArchiveChangeRequest { slug: slug.into(), owner: owner.into(), tests: None }
}

async fn show(c: &mut Changes, slug: &str) -> ShowChangeResponse {
    ok("ShowChange", bounded("ShowChange", c.show_change(ShowChangeRequest { slug: slug.into() })).await)
}

fn done(shown: &ShowChangeResponse, id: &str) -> bool {
    shown.tasks.iter().find(|t| t.id == id).unwrap_or_else(|| panic!("no task {id}: {shown:?}")).done
}

/// The refusal of a write on a full disk: typed, and telling the operator what to do.
fn assert_full(what: &str, status: &Status) {
    let info = assert_error(status, Code::ResourceExhausted, "WORKSPACE_FULL");
    let message = status.message();
    assert!(message.contains("free space on the workspace's file system"), "{what}: {}", describe(status));
    assert!(info.metadata.get("path").is_some_and(|p| !p.is_empty()), "{what}: no path: {}", describe(status));
}

/// Polls the workspace's own gRPC health status until it is `wanted`.
async fn until_workspace_health(disk: &SmallDisk, wanted: ServingStatus) {
    let mut health = disk.server.health().await;
    let deadline = Instant::now() + PROBE_BOUND;
    loop {
        let asked = health.check(HealthCheckRequest { service: WORKSPACE_HEALTH.into() });
        let status = bounded("Health/Check", asked).await.map(|r| r.into_inner().status);
        if status.as_ref().is_ok_and(|s| *s == wanted as i32) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{WORKSPACE_HEALTH} still {status:?}, not {wanted:?}, after {PROBE_BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn overall_health(disk: &SmallDisk) -> i32 {
    let mut health = disk.server.health().await;
    let checked = bounded("Health/Check", health.check(HealthCheckRequest { service: String::new() })).await;
    checked.unwrap_or_else(|s| panic!("Health/Check: {}", describe(&s))).into_inner().status
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("HTTP client")
}

async fn get_json(http: &reqwest::Client, url: String) -> (u16, Value) {
    let res = bounded(&url, http.get(&url).send()).await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    (res.status().as_u16(), res.json().await.unwrap_or(Value::Null))
}

async fn rest(http: &reqwest::Client, disk: &SmallDisk, tool: &str, args: Value) -> (u16, Value) {
    let url = format!("{}/v1/tools/{tool}", disk.server.http_base());
    let res = bounded(tool, http.post(&url).json(&args).send()).await.unwrap_or_else(|e| panic!("{tool}: {e}"));
    (res.status().as_u16(), res.json().await.unwrap_or(Value::Null))
}

/// Archives over the streaming RPC: the progress steps seen, then the result or the error.
async fn archive_streamed(c: &mut Changes, slug: &str, owner: &str) -> (Vec<String>, Result<(), Status>) {
    let mut steps = Vec::new();
    let outcome = async {
        let mut stream = c.archive_change_stream(archive_req(slug, owner)).await?.into_inner();
        while let Some(event) = stream.message().await? {
            match event.event {
                Some(Event::Progress(p)) => steps.push(p.step),
                Some(Event::Result(_)) => return Ok(()),
                None => {}
            }
        }
        Err(Status::internal("the stream ended without a result or an error"))
    };
    let outcome = bounded("ArchiveChangeStream", outcome).await;
    (steps, outcome)
}

/// The workspace's tool executions the server counted with `labels` (Prometheus exposition).
async fn tool_executions(http: &reqwest::Client, disk: &SmallDisk, labels: &[&str]) -> f64 {
    let url = format!("http://{}/metrics", disk.server.metrics_addr.expect("a metrics listener"));
    let text = bounded("GET /metrics", http.get(&url).send()).await.expect("GET /metrics").text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("tool_executions_total{") && labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The server's `health_check_status{check="<check>"}` as Prometheus scrapes it (GET /metrics).
async fn health_check_status(http: &reqwest::Client, disk: &SmallDisk, check: &str) -> Option<f64> {
    let url = format!("http://{}/metrics", disk.server.metrics_addr.expect("a metrics listener"));
    let text = bounded("GET /metrics", http.get(&url).send()).await.expect("GET /metrics").text().await.unwrap();
    let label = format!("check=\"{check}\"");
    text.lines()
        .filter(|l| l.starts_with("health_check_status{") && l.contains(&label))
        .find_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
}

/// Scrapes until the workspace's space check reads `wanted` (the probe runs every 5 s): a
/// failure bound, not a timing check.
async fn until_space_check(http: &reqwest::Client, disk: &SmallDisk, wanted: f64) {
    let deadline = Instant::now() + PROBE_BOUND;
    loop {
        let seen = health_check_status(http, disk, "workspace_space").await;
        if seen == Some(wanted) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "health_check_status{{check=\"workspace_space\"}} scraped as {seen:?}, not {wanted}, after {PROBE_BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// With the disk full to the last page: every writing tool on every transport is refused as
/// WORKSPACE_FULL (gRPC RESOURCE_EXHAUSTED, HTTP 507, an MCP error carrying the reason), the
/// workspace stays byte for byte as it was, reads and listings answer as before, and the server
/// stays ready while its workspace's health and `/health/ready` name the full disk. Once the
/// filler is removed the same calls go through, on the same process.
#[tokio::test]
async fn a_full_disk_refuses_every_write_by_name_changes_nothing_and_serves_again_once_freed() {
    let disk = SmallDisk::start();
    let http = http();
    let mut c = disk.server.changes().await;
    let mut r = disk.server.resources().await;
    ok("OpenChange", bounded("OpenChange", c.open_change(open_req("kept", "alice"))).await);
    ok("OpenChange", bounded("OpenChange", c.open_change(open_req("to-archive", "alice"))).await);
    ok("UpdateTasks", bounded("UpdateTasks", c.update_tasks(tick("kept", "alice", "1.1"))).await);
    let tasks_before = fs::read(disk.change("kept").join("tasks.md")).expect("read tasks.md");

    disk.fill_leaving(0);
    let before = disk.tree();

    // gRPC: a new change, a reopen (which refreshes the lock), a tick, an archive in both forms.
    let opened = bounded("OpenChange", c.open_change(open_req("new-one", "alice"))).await;
    assert_full("open a new change", &err("OpenChange", opened));
    let reopened = bounded("OpenChange", c.open_change(open_req("kept", "alice"))).await;
    assert_full("reopen a change", &err("OpenChange", reopened));
    let ticked = bounded("UpdateTasks", c.update_tasks(tick("kept", "alice", "1.2"))).await;
    assert_full("tick a task", &err("UpdateTasks", ticked));
    let archived = bounded("ArchiveChange", c.archive_change(archive_req("to-archive", "alice"))).await;
    assert_full("archive", &err("ArchiveChange", archived));
    let (steps, streamed) = archive_streamed(&mut c, "to-archive", "alice").await;
    assert_full("archive (streamed)", &streamed.expect_err("archived on a full disk"));
    assert!(!steps.iter().any(|s| s == "move"), "the streamed archive reported a move: {steps:?}");
    assert_same_tree(&before, &disk.tree(), "writes refused over gRPC");

    // HTTP: 507 Insufficient Storage, not the 500 of a bug nor the 429 of a rate limit.
    for (tool, args) in [
        ("change.open", json!({"slug": "rest-one", "owner": "alice", "title": "Over HTTP"})),
        ("task.update", json!({"slug": "kept", "owner": "alice", "updates": [{"id": "1.2", "done": true}]})),
        ("change.archive", json!({"slug": "to-archive", "owner": "alice"})),
    ] {
        let (status, body) = rest(&http, &disk, tool, args).await;
        assert_eq!(status, 507, "{tool}: {body}");
        assert_eq!(body["code"], "RESOURCE_EXHAUSTED", "{tool}: {body}");
        assert_eq!(body["reason"], "WORKSPACE_FULL", "{tool}: {body}");
    }
    // MCP: a JSON-RPC error (the model cannot fix a disk) that carries the reason.
    let mut mcp = Mcp::connect(http.clone(), disk.server.mcp_url(), None, "2025-11-25", "full-disk").await;
    let args = json!({"slug": "mcp-one", "owner": "alice", "title": "Over MCP"});
    let answer = mcp.request("tools/call", json!({"name": "change.open", "arguments": args})).await;
    assert_eq!(answer["error"]["code"], -32000, "{answer}");
    assert_eq!(answer["error"]["data"]["reason"], "WORKSPACE_FULL", "{answer}");
    assert_same_tree(&before, &disk.tree(), "writes refused over HTTP and MCP");
    disk.assert_no_leftovers("on a full disk");

    // Reads answer as before.
    let drafts = ListChangesRequest { status: ChangeStatus::Unspecified as i32, ..Default::default() };
    let listed = ok("ListChanges", bounded("ListChanges", c.list_changes(drafts)).await);
    let slugs: Vec<&str> = listed.changes.iter().map(|s| s.slug.as_str()).collect();
    assert_eq!(slugs, ["kept", "to-archive"], "no change half made, none archived");
    let kept = show(&mut c, "kept").await;
    assert!(done(&kept, "1.1") && !done(&kept, "1.2"), "{:?}", kept.tasks);
    assert_eq!(kept.change.as_ref().and_then(|s| s.lock.as_ref()).map(|l| l.owner.as_str()), Some("alice"));
    let validated = c.validate_change(ValidateChangeRequest { slug: "to-archive".into() });
    ok("ValidateChange", bounded("ValidateChange", validated).await);
    let mut stream =
        ok("ReadResource", r.read_resource(ReadResourceRequest { uri: "change://kept/tasks".into() }).await);
    let mut bytes = Vec::new();
    while let Some(chunk) = bounded("ReadResource chunk", stream.message()).await.expect("a chunk") {
        match chunk.content {
            Some(Content::Text(text)) => bytes.extend(text.into_bytes()),
            Some(Content::Blob(blob)) => bytes.extend(blob),
            None => {}
        }
    }
    assert_eq!(bytes, tasks_before, "tasks.md as served");
    let resources = r.list_resources(ListResourcesRequest { slug: "kept".into(), ..Default::default() });
    assert!(!ok("ListResources", bounded("ListResources", resources).await).resources.is_empty());
    assert_eq!(fs::read(disk.change("kept").join("tasks.md")).unwrap(), tasks_before, "tasks.md byte for byte");

    // Ready, as reads are served; the workspace's own status and the readiness body name the disk.
    until_workspace_health(&disk, ServingStatus::NotServing).await;
    assert_eq!(overall_health(&disk).await, ServingStatus::Serving as i32, "a full disk took the service out");
    let (status, body) = get_json(&http, format!("{}/health/ready", disk.server.http_base())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "degraded", "{body}");
    assert!(body["checks"]["workspace"].as_str().is_some_and(|w| w.starts_with("full")), "{body}");
    // The metrics: the space check fails (TaskMcpWorkspaceFull pages on it); the readiness
    // check of the workspace passes, as readiness does.
    until_space_check(&http, &disk, 0.0).await;
    assert_eq!(health_check_status(&http, &disk, "workspace").await, Some(1.0), "a full disk failed readiness's check");
    // Counted as the server's errors (which alerts page on), not the caller's.
    let full = ["tool_name=\"change.open\"", "error_type=\"WORKSPACE_FULL\"", "outcome=\"server_error\""];
    assert!(tool_executions(&http, &disk, &full).await >= 3.0, "change.open refusals not counted as server errors");
    assert_same_tree(&before, &disk.tree(), "reads and probes on a full disk");

    // Space freed: the refused calls go through, on the same process.
    disk.free();
    ok("OpenChange", bounded("OpenChange", c.open_change(open_req("new-one", "alice"))).await);
    ok("UpdateTasks", bounded("UpdateTasks", c.update_tasks(tick("kept", "alice", "1.2"))).await);
    let archived =
        ok("ArchiveChange", bounded("ArchiveChange", c.archive_change(archive_req("to-archive", "alice"))).await);
    let receipt = archived.receipt.expect("a receipt");
    let on_disk: Value =
        serde_json::from_slice(&fs::read(disk.workspace().join(&receipt.archive_path).join("receipt.json")).unwrap())
            .expect("a whole receipt.json");
    assert_eq!(on_disk["slug"], "to-archive");
    let (status, body) =
        rest(&http, &disk, "change.open", json!({"slug": "rest-one", "owner": "alice", "title": "R"})).await;
    assert_eq!(status, 200, "{body}");
    let args = json!({"slug": "mcp-one", "owner": "alice", "title": "Over MCP"});
    let answer = mcp.request("tools/call", json!({"name": "change.open", "arguments": args})).await;
    assert!(answer["error"].is_null() && answer["result"]["isError"] != json!(true), "{answer}");
    assert!(done(&show(&mut c, "kept").await, "1.2"));
    disk.assert_no_leftovers("after space was freed");
    until_workspace_health(&disk, ServingStatus::Serving).await;
    let (status, body) = get_json(&http, format!("{}/health/ready", disk.server.http_base())).await;
    assert_eq!((status, &body["status"]), (200, &json!("ok")), "{body}");
    until_space_check(&http, &disk, 1.0).await;
}

/// Each write, tried with 0, 1, 2… pages free until it succeeds: every attempt that fails (on
/// its first file or part-way, wherever the space runs out) is WORKSPACE_FULL and leaves the
/// workspace byte for byte as it was, lock included; the one that succeeds does all of it.
/// The ticks are on changes nobody holds (no lock; an expired lock), where a tick takes the lock
/// before it writes `tasks.md`.
#[tokio::test]
async fn near_full_a_write_that_fails_part_way_leaves_nothing_behind() {
    let disk = SmallDisk::start();
    let mut c = disk.server.changes().await;
    for slug in ["unlocked", "expired", "to-archive"] {
        ok("OpenChange", bounded("OpenChange", c.open_change(open_req(slug, "alice"))).await);
    }
    // Nobody holds `unlocked` (its lock removed by hand); alice's lock of `expired` has lapsed.
    fs::remove_file(disk.change("unlocked").join(".lock")).expect("remove the lock");
    let two_hours_ago = time::OffsetDateTime::now_utc() - time::Duration::hours(2);
    let lapsed = json!({
        "owner": "alice",
        "acquired_at": two_hours_ago.format(&time::format_description::well_known::Rfc3339).unwrap(),
        "ttl_seconds": 60,
        "nonce": "0123456789abcdef0123456789abcdef",
    });
    fs::write(disk.change("expired").join(".lock"), serde_json::to_vec_pretty(&lapsed).unwrap()).unwrap();

    let writes = ["open a new change", "tick a change nobody holds", "tick a change whose lock lapsed", "archive"];
    for what in writes {
        let mut succeeded_at = None;
        for pages in 0..=12 {
            disk.fill_leaving(pages);
            let before = disk.tree();
            let outcome = match what {
                "open a new change" => bounded(what, c.open_change(open_req("squeezed", "bob"))).await.map(drop),
                "tick a change nobody holds" => {
                    bounded(what, c.update_tasks(tick("unlocked", "bob", "1.1"))).await.map(drop)
                }
                "tick a change whose lock lapsed" => {
                    bounded(what, c.update_tasks(tick("expired", "bob", "1.1"))).await.map(drop)
                }
                _ => bounded(what, c.archive_change(archive_req("to-archive", "alice"))).await.map(drop),
            };
            match outcome {
                Err(status) => {
                    assert_full(&format!("{what} with {pages} page(s) free"), &status);
                    assert_same_tree(&before, &disk.tree(), &format!("{what} refused with {pages} page(s) free"));
                    disk.assert_no_leftovers(&format!("{what} refused with {pages} page(s) free"));
                }
                Ok(()) => {
                    succeeded_at = Some(pages);
                    break;
                }
            }
        }
        let pages = succeeded_at.unwrap_or_else(|| panic!("{what}: still refused with 12 pages free"));
        assert!(pages > 0, "{what} went through on a full disk");
        eprintln!("{what}: refused with up to {} page(s) free, done with {pages}", pages - 1);
    }
    disk.free();

    // What went through did all of it.
    let squeezed = show(&mut c, "squeezed").await;
    assert_eq!(squeezed.change.as_ref().and_then(|s| s.lock.as_ref()).map(|l| l.owner.as_str()), Some("bob"));
    for file in ["proposal.md", "tasks.md", "specs/README.md", ".taskmcp.json", ".lock"] {
        assert!(disk.change("squeezed").join(file).is_file(), "the opened change lacks {file}");
    }
    for slug in ["unlocked", "expired"] {
        let ticked = show(&mut c, slug).await;
        assert!(done(&ticked, "1.1"), "{slug}: {:?}", ticked.tasks);
        assert_eq!(ticked.change.as_ref().and_then(|s| s.lock.as_ref()).map(|l| l.owner.as_str()), Some("bob"));
    }
    let meta = fs::read_to_string(disk.change("expired").join(".taskmcp.json")).unwrap();
    assert!(meta.contains("takeovers") && meta.contains("bob"), "the takeover is recorded: {meta}");
    assert!(!disk.change("to-archive").exists(), "the archived change is still a draft");
    let archived = fs::read_dir(disk.workspace().join("changes/archive")).unwrap().count();
    assert_eq!(archived, 1, "one archive folder");
    disk.assert_no_leftovers("after the squeeze");
}
