//! The only code that touches the disk. A `Workspace` is an OpenSpec directory:
//!
//! ```text
//! <root>/changes/<slug>/{proposal.md,tasks.md,specs/,.lock,.taskmcp.json}   drafts
//! <root>/changes/archive/<YYYY-MM-DD>-<slug>/{...,receipt.json}             archived
//! <root>/.staging/                                                          build-aside area
//! ```
//!
//! Every mutation of a slug runs under that slug's mutex (one writer per change
//! in this process) and commits with a single rename, so a crash leaves either
//! the old state or the new one. Methods block; async callers use `spawn_blocking`.
//!
//! One file per call: `open`, `list`, `show` (and validate), `tasks`, `archive`,
//! `resources`. This file holds the types, the turns (per-slug mutex, then the
//! cross-process `.lock`) and the readers they share; `lock`, `fsutil` and `watch`
//! the lock file, crash-safe file writes and the watcher with its parsed-change cache.
mod archive;
mod cache;
mod events;
pub mod fsutil;
pub mod git;
mod list;
mod listing;
pub mod lock;
mod open;
pub mod paths;
mod resources;
mod show;
mod tasks;
pub mod watch;

pub use events::MAX_REPLAY;

use std::{
    collections::HashMap,
    fs, io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, OnceLock, TryLockError},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::broadcast;

use crate::{
    auth::Principal,
    domain::{
        Owner, Rationale, Slug, TemplateKind, Title, Ttl,
        checklist::{self, TaskItem},
        page_token, proposal, relpath,
        specs::{self, RequirementOp},
        templates::{self, TemplateVars},
        uri::ResourceUri,
        validation::{self, ChangeFiles, Finding, Severity},
    },
    error::{Error, FindingRef, Result},
};
use fsutil::TextRead;
pub use lock::Holder;
use lock::{Acquired, LockRecord};

/// Largest proposal, task list or spec file the server parses.
pub const MAX_DOC_BYTES: u64 = 1024 * 1024;
/// Spec files read per change; more are not read, and a finding says so.
const MAX_SPEC_FILES: usize = 200;
const META_FILE: &str = ".taskmcp.json";
const RECEIPT_FILE: &str = "receipt.json";
/// How often a call waiting for its turn at a change looks again (and asks whether its caller
/// still waits).
const TURN_POLL: Duration = Duration::from_millis(10);
/// How many times a call looks for a change's folder again after it moved under it (archived,
/// or archived and opened again, by another process while this one waited for its turn).
const TURN_ATTEMPTS: usize = 5;
/// A `tasks.md` that ends mid-line and was written less than this long ago may be half saved
/// by someone writing it in place; a tick waits until it is older or whole.
const SETTLE: Duration = Duration::from_secs(2);
/// How often a tick waiting for `tasks.md` to be whole reads it again.
const EDIT_POLL: Duration = Duration::from_millis(50);
/// The longest a tick waits for `tasks.md` to be whole (more than `SETTLE`).
const EDIT_WAIT: Duration = Duration::from_secs(3);
/// How many times a tick reads `tasks.md` again after it changed between the read and the
/// write, before it gives up with `ConcurrentEdit`.
const EDIT_ATTEMPTS: usize = 5;

/// Called at named points of multi-step operations; an error returned here is
/// treated like an I/O failure at that point. Tests use it to prove that a
/// failure anywhere leaves the workspace consistent and the operation retryable.
pub type FaultHook = Arc<dyn Fn(&'static str) -> io::Result<()> + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Draft,
    Archived,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    Draft,
    Archived,
    All,
}

impl StatusFilter {
    fn as_str(self) -> &'static str {
        match self {
            StatusFilter::Draft => "draft",
            StatusFilter::Archived => "archived",
            StatusFilter::All => "all",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Summary {
    pub slug: String,
    pub title: String,
    pub status: Status,
    pub updated_at: OffsetDateTime,
    pub lock: Option<LockRecord>,
    /// (done, total)
    pub progress: (u32, u32),
    pub archive_name: Option<String>,
}

pub struct OpenRequest {
    pub slug: Slug,
    pub title: Title,
    pub rationale: Rationale,
    pub owner: Owner,
    /// Whose credential the request carries; the lock is theirs too (see [`Holder`]).
    pub principal: Principal,
    pub ttl: Ttl,
    pub template: TemplateKind,
}

impl OpenRequest {
    fn holder(&self) -> Holder<'_> {
        Holder { owner: &self.owner, principal: &self.principal }
    }
}

#[derive(Debug, Clone)]
pub struct Opened {
    pub summary: Summary,
    pub created: bool,
    pub lock: LockRecord,
    pub takeover: Option<LockRecord>,
    pub files: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Page {
    pub items: Vec<Summary>,
    pub next_page_token: Option<String>,
    pub total: usize,
}

#[derive(Debug, Clone)]
pub struct Delta {
    pub path: String,
    pub content: String,
    pub requirements: Vec<RequirementOp>,
}

#[derive(Debug, Clone)]
pub struct Shown {
    pub summary: Summary,
    pub proposal: String,
    pub tasks: Vec<TaskItem>,
    pub deltas: Vec<Delta>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestSummary {
    pub passed: u32,
    pub failed: u32,
    pub skipped: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRef {
    pub sha: String,
    pub subject: String,
}

/// `receipt.json`, written inside the archive folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Receipt {
    pub slug: String,
    #[serde(with = "time::serde::rfc3339")]
    pub archived_at: OffsetDateTime,
    pub actor: String,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub opened_at: Option<OffsetDateTime>,
    pub git: bool,
    pub commits: Vec<CommitRef>,
    pub files_touched: Vec<String>,
    #[serde(default)]
    pub tests: Option<TestSummary>,
    pub archive_path: String,
    pub server_version: String,
}

#[derive(Debug, Clone)]
pub struct Archived {
    pub receipt: Receipt,
    pub already_archived: bool,
    pub findings: Vec<Finding>,
}

/// One step of an archive, reported as it completes.
#[derive(Debug, Clone)]
pub struct Step {
    pub name: &'static str,
    pub message: String,
    pub current: u32,
    pub total: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Opened,
    Updated,
    TasksUpdated,
    Archived,
    /// The change's folder went away other than by archiving (deleted or moved by hand).
    Removed,
}

#[derive(Debug, Clone)]
pub struct Event {
    pub kind: EventKind,
    pub slug: String,
    pub at: OffsetDateTime,
    pub uris: Vec<String>,
    pub external: bool,
}

pub struct Resource {
    pub mime_type: &'static str,
    pub bytes: Vec<u8>,
}

pub struct ResourceEntry {
    pub uri: String,
    pub name: String,
    pub mime_type: &'static str,
    pub size: u64,
}

/// Bookkeeping of metadata kept beside a draft.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    #[serde(default, with = "time::serde::rfc3339::option")]
    opened_at: Option<OffsetDateTime>,
    #[serde(default)]
    opened_by: String,
    #[serde(default)]
    template: String,
    #[serde(default)]
    takeovers: Vec<TakeoverRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TakeoverRecord {
    from: String,
    to: String,
    #[serde(with = "time::serde::rfc3339")]
    at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    expired_at: OffsetDateTime,
}

pub struct Workspace {
    root: PathBuf,
    changes: PathBuf,
    archive: PathBuf,
    staging: PathBuf,
    slug_locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    events: events::Feed,
    /// The drafts' and the archive's folder names, kept while the folders do not change.
    draft_listing: listing::Listing<Slug>,
    archive_listing: listing::Listing<String>,
    own_writes: watch::OwnWrites,
    /// Set once `watch` has started; it also keeps the parsed-change cache.
    watcher: OnceLock<Arc<watch::Watcher>>,
    fault_hook: Option<FaultHook>,
    max_resource_bytes: u64,
    unsynced_commits: std::sync::atomic::AtomicU64,
}

impl Workspace {
    /// Opens (creating if needed) the workspace at `root` and sweeps leftovers of
    /// crashed processes from the build-aside area.
    pub fn open(root: &Path, max_resource_bytes: u64) -> Result<Self> {
        let io_err = |e: io::Error| Error::internal("create workspace", e);
        fs::create_dir_all(root.join("changes").join("archive")).map_err(io_err)?;
        fs::create_dir_all(root.join(".staging")).map_err(io_err)?;
        let root = root.canonicalize().map_err(io_err)?;
        let ws = Workspace {
            changes: root.join("changes"),
            archive: root.join("changes").join("archive"),
            staging: root.join(".staging"),
            root,
            slug_locks: Mutex::new(HashMap::new()),
            events: events::Feed::default(),
            draft_listing: Default::default(),
            archive_listing: Default::default(),
            own_writes: watch::OwnWrites::default(),
            watcher: OnceLock::new(),
            fault_hook: None,
            max_resource_bytes,
            unsynced_commits: Default::default(),
        };
        ws.sweep_staging();
        Ok(ws)
    }

    pub fn with_fault_hook(mut self, hook: FaultHook) -> Self {
        self.fault_hook = Some(hook);
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// The events of the last `window` (at most [`MAX_REPLAY`]) and a receiver of every
    /// later one, without a gap or an overlap between them.
    pub fn subscribe_since(&self, window: std::time::Duration) -> (Vec<Event>, broadcast::Receiver<Event>) {
        self.events.subscribe_since(window)
    }

    /// Starts watching the disk for edits by other processes; events flow to
    /// `subscribe` with `external` set. Dropping the guard stops the watcher.
    pub fn watch(self: &Arc<Self>) -> Result<watch::WatchGuard> {
        watch::start(self)
    }

    /// Readiness: what opening a change takes works on a probe file (made in `.staging`,
    /// renamed into `changes/`), and the archive is on the same file system as `changes/`.
    pub fn check_writable(&self) -> Result<()> {
        self.probe_commit()?;
        self.check_archive_file_system()
    }

    /// An I/O failure while writing the workspace's own folders, as [`Error::io`] words it,
    /// except that a "not found" while `changes/` or `.staging` is gone is the workspace's fault:
    /// moved, deleted or its volume unmounted under the running server. That is named
    /// (`WORKSPACE_UNUSABLE`, and readiness fails on it) rather than an anonymous internal error.
    /// The folders are not made again: on an unmounted volume that would write the changes onto
    /// the disk underneath, where they would vanish when the volume came back.
    fn write_error(&self, context: &str, path: &Path, err: io::Error) -> Error {
        if err.kind() == io::ErrorKind::NotFound {
            for (name, folder) in [("changes", &self.changes), (".staging", &self.staging)] {
                if !folder.is_dir() {
                    tracing::error!(context, folder = %folder.display(), "a workspace folder is gone");
                    return Error::WorkspaceUnusable {
                        path: name.into(),
                        why: format!("{context}: the folder is gone (moved, deleted or unmounted?); restore it"),
                    };
                }
            }
        }
        Error::io(context, path, err)
    }

    /// A probe file made in `.staging` (in its shared hold, so that a sweep leaves it alone)
    /// and renamed into `changes/`, as a new change is: this fails where the open would, on a
    /// folder that cannot be written (permissions, immutable, read-only, full) or on the two
    /// folders on different mounts (the rename cannot cross them).
    fn probe_commit(&self) -> Result<()> {
        let _probing =
            self.staging_share().map_err(|e| self.write_error("hold the build-aside area", &self.staging, e))?;
        let probe = fsutil::TempFile::beside(&self.staging.join("ready"), b"ok")
            .map_err(|e| self.write_error("write a probe file", &self.staging, e))?;
        let placed = self.changes.join(probe.path().file_name().unwrap_or_default());
        probe.rename_to(&placed).map_err(|e| self.write_error("move a probe file from .staging", &self.changes, e))?;
        fs::remove_file(&placed).map_err(|e| Error::io("remove a probe file", &self.changes, e))
    }

    /// An archive moves a change from `changes/` into `changes/archive/` with a rename, which
    /// cannot cross file systems. (A probe rename into the archive would clear `change.show`'s
    /// cache at every probe, so the devices are compared instead; an archive folder that is a
    /// bind mount of the same file system is not seen here, and its archives fail naming it.)
    fn check_archive_file_system(&self) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let changes = self.changes.metadata().map_err(|e| self.write_error("stat changes", &self.changes, e))?;
        match self.archive.metadata() {
            Ok(archive) if archive.dev() != changes.dev() => {
                Err(Error::WorkspaceUnusable { path: "changes/archive".into(), why: fsutil::CROSS_DEVICE.into() })
            }
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io("stat archive", &self.archive, e)),
            _ => Ok(()),
        }
    }

    /// After a commit by rename whose folder could not be synced (`synced`): the operation is
    /// done and visible, and only whether it survives a crash of the machine is unknown. The
    /// call still answers success: an error would have the caller retry what is done (an
    /// archive answers "already archived", a tick finds its task ticked, an open reopens),
    /// and nothing a caller can do makes the rename durable. An operator can (a failing disk),
    /// so it is logged at error level with the count of such commits since start.
    fn settle_commit(&self, what: &'static str, path: &Path, synced: io::Result<()>) {
        if let Err(e) = synced {
            let count = self.unsynced_commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            tracing::error!(
                what, path = %path.display(), error = %e, unsynced_commits = count,
                "committed, but its folder could not be synced: whether it survives a crash is unknown"
            );
        }
    }

    /// Commits since start whose folder could not be synced (see `settle_commit`).
    pub fn unsynced_commits(&self) -> u64 {
        self.unsynced_commits.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn fault(&self, point: &'static str) -> io::Result<()> {
        match &self.fault_hook {
            Some(hook) => hook(point),
            None => Ok(()),
        }
    }

    /// The draft of `slug` with this call's turn at it among the processes serving the
    /// workspace (`flock` on its folder, held until the returned file is dropped; the mutex of
    /// `slug_lock` orders this process's own threads), or `None` if there is no draft. Every
    /// write to a draft (open, tick, archive) happens in its turn: without it, two servers
    /// ticking at once each rewrite `tasks.md` from what they read and one tick is lost, and
    /// an open on one server takes over a lock that an archive on the other moves away.
    /// The folder is looked up again once the turn is ours: the process we waited for may
    /// have archived it (the `flock` goes with the folder) or archived and reopened it.
    fn draft_turn(&self, slug: &Slug, caller_gone: &dyn Fn() -> bool) -> Result<Option<(PathBuf, fs::File)>> {
        for _ in 0..TURN_ATTEMPTS {
            let Some(dir) = self.existing_draft(slug)? else { return Ok(None) };
            let folder = match fs::File::open(&dir) {
                Ok(folder) => folder,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("lock change folder", &dir, e)),
            };
            Self::change_turn(&folder, &dir, caller_gone)?;
            if self.is_draft_folder(slug, &folder)? {
                sweep_temp_files(&dir);
                return Ok(Some((dir, folder)));
            }
        }
        Err(Error::Internal(format!("change {slug} kept moving while this call waited for its turn")))
    }

    /// Waits for the `flock` on the change folder `folder`. A caller that gives up while it
    /// waits leaves the queue: a change held for long (by a stuck process) would otherwise pile
    /// blocked threads up until the pool is spent.
    fn change_turn(folder: &fs::File, dir: &Path, caller_gone: &dyn Fn() -> bool) -> Result<()> {
        loop {
            match folder.try_lock() {
                Ok(()) => return Ok(()),
                Err(fs::TryLockError::WouldBlock) if caller_gone() => return Err(Error::CallerGone),
                Err(fs::TryLockError::WouldBlock) => std::thread::sleep(TURN_POLL),
                Err(fs::TryLockError::Error(e)) => return Err(Error::io("lock change folder", dir, e)),
            }
        }
    }

    /// Whether `folder` is the draft folder of `slug` now (the same inode).
    fn is_draft_folder(&self, slug: &Slug, folder: &fs::File) -> Result<bool> {
        use std::os::unix::fs::MetadataExt;
        let Some(dir) = self.existing_draft(slug)? else { return Ok(false) };
        let same = |a: &fs::Metadata, b: &fs::Metadata| a.dev() == b.dev() && a.ino() == b.ino();
        Ok(matches!((folder.metadata(), dir.symlink_metadata()), (Ok(held), Ok(now)) if same(&held, &now)))
    }

    /// This call's turn at `slug` among this process's calls, left like `change_turn`'s.
    fn slug_turn<'a>(lock: &'a Mutex<()>, caller_gone: &dyn Fn() -> bool) -> Result<MutexGuard<'a, ()>> {
        loop {
            match lock.try_lock() {
                Ok(held) => return Ok(held),
                Err(TryLockError::Poisoned(p)) => return Ok(p.into_inner()),
                Err(TryLockError::WouldBlock) if caller_gone() => return Err(Error::CallerGone),
                Err(TryLockError::WouldBlock) => std::thread::sleep(TURN_POLL),
            }
        }
    }

    fn slug_lock(&self, slug: &Slug) -> Arc<Mutex<()>> {
        let mut map = self.slug_locks.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(slug.as_str().to_string()).or_default().clone()
    }

    fn emit(&self, kind: EventKind, slug: &str, uris: Vec<String>) {
        self.events.publish(Event { kind, slug: slug.to_string(), at: now(), uris, external: false });
    }

    fn draft_dir(&self, slug: &Slug) -> PathBuf {
        self.changes.join(slug.as_str())
    }

    /// The draft folder if it exists. A symlink or a file in its place is refused:
    /// following it could lead outside the workspace.
    fn existing_draft(&self, slug: &Slug) -> Result<Option<PathBuf>> {
        let dir = self.draft_dir(slug);
        match dir.symlink_metadata() {
            Ok(m) if m.file_type().is_dir() => Ok(Some(dir)),
            Ok(_) => Err(Error::InvalidPath { value: slug.to_string(), why: "change folder is not a directory" }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::internal("stat change", e)),
        }
    }

    /// Classifies a path seen by the watcher, relative to `changes/`.
    pub(crate) fn classify(&self, path: &Path) -> Option<(EventKind, String, Vec<String>)> {
        let rel = path.strip_prefix(&self.changes).ok()?;
        let mut parts = rel.components().filter_map(|c| c.as_os_str().to_str());
        let first = parts.next()?;
        if first == "archive" {
            let name = parts.next()?;
            if parts.next().is_some() {
                // Inside an archived change: its lock released, a file touched. The archive
                // itself was reported when its folder appeared.
                return None;
            }
            // The receipt names the slug; the folder name only without one (see `latest_archive`).
            let slug = read_receipt(&self.archive.join(name))
                .map(|r| r.slug)
                .or_else(|| archive_slug(name).map(str::to_string))?;
            return Some((EventKind::Archived, slug.clone(), vec![ResourceUri::receipt(&slug)]));
        }
        let slug = Slug::parse(first).ok()?;
        let rest: Vec<&str> = parts.collect();
        if rest.iter().any(|p| p.starts_with('.')) {
            return None; // our bookkeeping and temp files
        }
        Some(match rest.as_slice() {
            [] => (EventKind::Opened, slug.to_string(), vec![ResourceUri::proposal(slug.as_str())]),
            ["tasks.md"] => (EventKind::TasksUpdated, slug.to_string(), vec![ResourceUri::tasks(slug.as_str())]),
            ["proposal.md"] => (EventKind::Updated, slug.to_string(), vec![ResourceUri::proposal(slug.as_str())]),
            // A folder under `specs/` is no resource; the files in it are reported themselves.
            ["specs", tail @ ..] if !tail.is_empty() && !path.is_dir() => {
                let rel = tail.join("/");
                let uris = match relpath::check_relative(&rel) {
                    Ok(_) => vec![ResourceUri::delta(slug.as_str(), &rel)],
                    Err(_) => vec![], // no resource to update (see `list_resources`)
                };
                (EventKind::Updated, slug.to_string(), uris)
            }
            _ => (EventKind::Updated, slug.to_string(), vec![]),
        })
    }

    pub(crate) fn changes_dir(&self) -> &Path {
        &self.changes
    }

    pub(crate) fn set_watcher(&self, watcher: Arc<watch::Watcher>) {
        // A second watcher (tests may start one per handle) leaves the first one in charge of the cache.
        let _ = self.watcher.set(watcher);
    }

    pub(crate) fn own_writes(&self) -> &watch::OwnWrites {
        &self.own_writes
    }

    pub(crate) fn publish(&self, event: Event) {
        self.events.publish(event);
    }
}

/// Removes what writers that died left in the change folder `dir`: our temporary files and
/// locks set aside (`fsutil::is_temp_name`). Called in the change's turn, when no writer that
/// takes turns is at work there.
fn sweep_temp_files(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let ours = entry.file_name().to_str().is_some_and(fsutil::is_temp_name);
        if ours && entry.file_type().is_ok_and(|t| t.is_file()) {
            tracing::warn!(path = %entry.path().display(), "removing a leftover temporary file");
            let _ = fs::remove_file(entry.path());
        }
    }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// The slug of an archive folder `YYYY-MM-DD-<slug>` (ignoring a `-N` suffix is
/// not attempted: the receipt is authoritative when present).
fn archive_slug(name: &str) -> Option<&str> {
    let b = name.as_bytes();
    let dated = b.len() > 11
        && b[..10].iter().enumerate().all(|(i, c)| if i == 4 || i == 7 { *c == b'-' } else { c.is_ascii_digit() })
        && b[10] == b'-';
    if !dated {
        return None;
    }
    let slug = &name[11..];
    Slug::parse(slug).ok().map(|_| slug)
}

/// The lock of the draft in `dir`, unless it is a live lock `holder` does not hold: then the
/// refusal.
fn refuse_unless_holder(dir: &Path, slug: &Slug, holder: Holder<'_>) -> Result<Option<LockRecord>> {
    let held = lock::read(dir)?;
    match &held {
        Some(lock) if lock.is_live(now()) && !lock.is_held_by(holder) => Err(lock.refuse(slug.as_str(), holder)),
        _ => Ok(held),
    }
}

fn read_receipt(dir: &Path) -> Option<Receipt> {
    let bytes = fs::read(dir.join(RECEIPT_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn read_meta(dir: &Path) -> Meta {
    fs::read(dir.join(META_FILE)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

fn read_doc(dir: &Path, name: &str) -> io::Result<Option<String>> {
    match fsutil::read_text_capped(&dir.join(name), MAX_DOC_BYTES)? {
        TextRead::Text(t) => Ok(Some(t)),
        _ => Ok(None),
    }
}

/// Like `read_doc`, but an oversized or non-text file is an error the client sees.
/// A file of the change `slug` as text; a file that cannot be read as such refuses the call
/// with FAILED_PRECONDITION (the change on disk is at fault, not the request).
fn read_doc_strict(dir: &Path, name: &str, slug: &Slug) -> Result<Option<String>> {
    let path = dir.join(name);
    let read = fsutil::read_text_capped(&path, MAX_DOC_BYTES).map_err(|e| Error::io("read change file", &path, e))?;
    strict_text(read, name, slug)
}

/// A failure to replace the file `name` of the change in `dir`: a folder in its place (made
/// after our look) is the change's fault, named like a read names it; the rest as `Error::io`.
fn write_error(context: &str, dir: &Path, name: &str, e: io::Error) -> Error {
    if e.kind() != io::ErrorKind::IsADirectory {
        return Error::io(context, &dir.join(name), e);
    }
    let slug = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Error::FileUnreadable { slug, file: name.to_string(), why: NOT_REGULAR }
}

/// Why a file that is no regular file is not read.
const NOT_REGULAR: &str = "is not a regular file (symbolic links and folders are not followed)";

/// What `read_doc_strict` answers for the file `name` read as `read`.
fn strict_text(read: TextRead, name: &str, slug: &Slug) -> Result<Option<String>> {
    let unreadable = |why| Error::FileUnreadable { slug: slug.to_string(), file: name.to_string(), why };
    match read {
        TextRead::Text(t) => Ok(Some(t)),
        TextRead::Missing => Ok(None),
        TextRead::TooLarge(size) => Err(Error::ResourceTooLarge { uri: name.to_string(), size, limit: MAX_DOC_BYTES }),
        TextRead::NotText => Err(unreadable("is not UTF-8 text")),
        TextRead::NotRegular => Err(unreadable(NOT_REGULAR)),
    }
}

/// The last modification of the change: its folder, proposal, tasks and anything under
/// `specs/` (an edit to `specs/auth/spec.md` touches neither `specs/` nor the folder).
fn updated_at(dir: &Path) -> OffsetDateTime {
    let modified = |p: &Path| p.symlink_metadata().and_then(|m| m.modified()).ok();
    ["", "proposal.md", "tasks.md"]
        .iter()
        .filter_map(|f| modified(&dir.join(f)))
        .chain(newest_under(&dir.join("specs"), 0))
        .max()
        .map(OffsetDateTime::from)
        .unwrap_or_else(now)
}

/// The newest modification time of `dir` and what is under it (as deep as specs are read;
/// symlinks not followed).
fn newest_under(dir: &Path, depth: usize) -> Option<std::time::SystemTime> {
    let meta = dir.symlink_metadata().ok()?;
    let mut newest = meta.modified().ok();
    if meta.is_dir() && depth <= 6 {
        for entry in fs::read_dir(dir).ok()?.flatten() {
            let child = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                newest_under(&entry.path(), depth + 1)
            } else {
                entry.metadata().and_then(|m| m.modified()).ok()
            };
            newest = newest.max(child);
        }
    }
    newest
}

#[cfg(test)]
mod disk_tests;
#[cfg(test)]
mod tests;
