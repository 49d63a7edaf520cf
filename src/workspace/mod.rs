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
mod cache;
pub mod fsutil;
pub mod git;
pub mod lock;
pub mod paths;
pub mod watch;

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
    events: broadcast::Sender<Event>,
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
        let (events, _) = broadcast::channel(1024);
        let ws = Workspace {
            changes: root.join("changes"),
            archive: root.join("changes").join("archive"),
            staging: root.join(".staging"),
            root,
            slug_locks: Mutex::new(HashMap::new()),
            events,
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

    /// A probe file made in `.staging` (in its shared hold, so that a sweep leaves it alone)
    /// and renamed into `changes/`, as a new change is: this fails where the open would, on a
    /// folder that cannot be written (permissions, immutable, read-only, full) or on the two
    /// folders on different mounts (the rename cannot cross them).
    fn probe_commit(&self) -> Result<()> {
        let _probing = self.staging_share().map_err(|e| Error::io("hold the build-aside area", &self.staging, e))?;
        let probe = fsutil::TempFile::beside(&self.staging.join("ready"), b"ok")
            .map_err(|e| Error::io("write a probe file", &self.staging, e))?;
        let placed = self.changes.join(probe.path().file_name().unwrap_or_default());
        probe.rename_to(&placed).map_err(|e| Error::io("move a probe file from .staging", &self.changes, e))?;
        fs::remove_file(&placed).map_err(|e| Error::io("remove a probe file", &self.changes, e))
    }

    /// An archive moves a change from `changes/` into `changes/archive/` with a rename, which
    /// cannot cross file systems. (A probe rename into the archive would clear `change.show`'s
    /// cache at every probe, so the devices are compared instead; an archive folder that is a
    /// bind mount of the same file system is not seen here, and its archives fail naming it.)
    fn check_archive_file_system(&self) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let changes = self.changes.metadata().map_err(|e| Error::io("stat changes", &self.changes, e))?;
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
        // No subscribers is fine: events are a convenience, not a log.
        let _ = self.events.send(Event { kind, slug: slug.to_string(), at: now(), uris, external: false });
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

    // ----- change.open -----

    /// `caller_gone` as for `update_tasks`: an existing draft is reopened in its turn.
    pub fn open_change(&self, req: OpenRequest, caller_gone: &dyn Fn() -> bool) -> Result<Opened> {
        let guard = self.slug_lock(&req.slug);
        let _held = Self::slug_turn(&guard, caller_gone)?;
        // A pass reopens the draft in its turn or creates it; it finds neither only when
        // another process created the change between our look and our rename.
        for _ in 0..TURN_ATTEMPTS {
            if let Some((dir, _turn)) = self.draft_turn(&req.slug, caller_gone)? {
                if caller_gone() {
                    return Err(Error::CallerGone);
                }
                return self.reopen(&req, &dir);
            }
            if let Some(opened) = self.scaffold(&req)? {
                return Ok(opened);
            }
        }
        Err(Error::Internal(format!("change {} kept appearing and vanishing while opening it", req.slug)))
    }

    fn reopen(&self, req: &OpenRequest, dir: &Path) -> Result<Opened> {
        let acquired = lock::acquire(dir, req.slug.as_str(), req.holder(), req.ttl, now())?;
        let takeover = match &acquired {
            Acquired::TakenOver { lock, previous } => {
                tracing::warn!(
                    slug = %req.slug, from = %previous.owner, to = %lock.owner,
                    expired_at = %crate::error::fmt_time(previous.expires_at()),
                    "expired lock taken over"
                );
                self.record_takeover(dir, previous, lock)?;
                Some(previous.clone())
            }
            _ => None,
        };
        self.own_writes.note(&dir.join(lock::LOCK_FILE));
        let summary = self.summarize_draft(&req.slug, dir)?;
        self.emit(EventKind::Updated, req.slug.as_str(), vec![]);
        Ok(Opened {
            summary,
            created: false,
            lock: acquired.record().clone(),
            takeover,
            files: self.listed_files(&req.slug),
        })
    }

    fn record_takeover(&self, dir: &Path, previous: &LockRecord, lock: &LockRecord) -> Result<()> {
        let path = dir.join(META_FILE);
        let mut meta = read_meta(dir);
        meta.takeovers.push(TakeoverRecord {
            from: previous.owner.clone(),
            to: lock.owner.clone(),
            at: lock.acquired_at,
            expired_at: previous.expires_at(),
        });
        let bytes = serde_json::to_vec_pretty(&meta).map_err(|e| Error::internal("encode meta", e))?;
        let replaced = fsutil::atomic_write(&path, &bytes).map_err(|e| write_error("write meta", dir, META_FILE, e))?;
        self.settle_commit("write meta", &path, replaced.synced);
        self.own_writes.note(&path);
        Ok(())
    }

    /// Builds the change aside and renames it into place. `None`: the change
    /// appeared meanwhile (another process won the rename).
    fn scaffold(&self, req: &OpenRequest) -> Result<Option<Opened>> {
        let now = now();
        let scaffold = templates::render(&TemplateVars {
            kind: req.template,
            title: &req.title,
            slug: &req.slug,
            owner: &req.owner,
            rationale: &req.rationale,
            date: now.date(),
        });
        let lock = LockRecord::new(req.holder(), req.ttl, now);
        let meta = Meta {
            opened_at: Some(now),
            opened_by: req.owner.to_string(),
            template: req.template.as_str().to_string(),
            takeovers: vec![],
        };
        let held = self.new_stage(&req.slug).map_err(|e| Error::io("scaffold change", &self.staging, e))?;
        let stage = held.path.clone();
        let target = self.draft_dir(&req.slug);
        let build = || -> io::Result<()> {
            fs::create_dir(stage.join("specs"))?;
            fsutil::write_new(&stage.join("proposal.md"), scaffold.proposal.as_bytes())?;
            fsutil::write_new(&stage.join("tasks.md"), scaffold.tasks.as_bytes())?;
            fsutil::write_new(&stage.join("specs").join("README.md"), scaffold.specs_readme.as_bytes())?;
            fsutil::write_new(&stage.join(META_FILE), &serde_json::to_vec_pretty(&meta)?)?;
            lock::write_initial(&stage, &lock)?;
            // The names of the files, in specs/ and in the change's folder, durable before the
            // change can be seen: a crash must not leave a visible change without them.
            fsutil::sync_dir(&stage.join("specs"))?;
            fsutil::sync_dir(&stage)?;
            self.fault("open.before_rename")?;
            // The commit point: the change appears whole or not at all.
            fsutil::rename_noreplace(&stage, &target)
        };
        if let Err(e) = build() {
            let _ = fs::remove_dir_all(&stage);
            if e.kind() == io::ErrorKind::AlreadyExists {
                return Ok(None);
            }
            return Err(Error::io("scaffold change", &target, e));
        }
        self.own_writes.note(&target);
        let synced = self.fault("open.after_rename").and_then(|()| fsutil::sync_parent(&target));
        self.settle_commit("open", &target, synced);
        let summary = self.summarize_draft(&req.slug, &target)?;
        self.emit(
            EventKind::Opened,
            req.slug.as_str(),
            vec![ResourceUri::proposal(req.slug.as_str()), ResourceUri::tasks(req.slug.as_str())],
        );
        Ok(Some(Opened { summary, created: true, lock, takeover: None, files: self.listed_files(&req.slug) }))
    }

    /// The scaffold's files that the change has: a folder made by hand may lack them.
    fn listed_files(&self, slug: &Slug) -> Vec<String> {
        let dir = self.draft_dir(slug);
        ["proposal.md", "tasks.md", "specs/README.md"]
            .iter()
            .filter(|f| dir.join(f).symlink_metadata().is_ok_and(|m| m.is_file()))
            .map(|f| format!("changes/{slug}/{f}"))
            .collect()
    }

    /// A new build-aside folder for `slug`, held (see `Stage`).
    fn new_stage(&self, slug: &Slug) -> io::Result<Stage> {
        // Shared with other builds, exclusive with a sweep: between our `mkdir` and our `flock`
        // the folder is not held yet, and a sweep must not take it for a dead build's.
        let _naming = self.staging_share()?;
        let path = self.staging.join(format!("{slug}.{}", uuid::Uuid::new_v4().simple()));
        fs::create_dir(&path)?;
        let held = fs::File::open(&path).and_then(|folder| folder.lock().map(|()| folder));
        match held {
            Ok(folder) => Ok(Stage { path, _held: folder }),
            Err(e) => {
                let _ = fs::remove_dir(&path);
                Err(e)
            }
        }
    }

    /// `.staging` held shared (`flock`) until the returned file drops: writers in it take
    /// this, the sweep takes it exclusively.
    fn staging_share(&self) -> io::Result<fs::File> {
        let staging = fs::File::open(&self.staging)?;
        staging.lock_shared()?;
        Ok(staging)
    }

    /// Removes what failed or crashed builds left in `.staging`: every folder no live build
    /// holds, however young (a restart right after a crash finds them all), and stray files.
    fn sweep_staging(&self) {
        let Ok(staging) = fs::File::open(&self.staging) else { return };
        if staging.lock().is_err() {
            return;
        }
        let Ok(entries) = fs::read_dir(&self.staging) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                tracing::warn!(path = %path.display(), "removing a leftover file from the build-aside area");
                let _ = fs::remove_file(&path);
                continue;
            }
            // A folder a live build holds (this process's or another's) is left alone.
            let Ok(folder) = fs::File::open(&path) else { continue };
            if folder.try_lock().is_ok() {
                tracing::warn!(path = %path.display(), "removing a leftover build-aside folder");
                let _ = fs::remove_dir_all(&path);
            }
        }
    }

    // ----- change.list -----

    pub fn list_changes(&self, filter: StatusFilter, page_size: usize, page_token: &str) -> Result<Page> {
        let after = if page_token.is_empty() { None } else { Some(page_token::decode(page_token, filter.as_str())?) };
        let mut keys: Vec<(String, Entry)> = Vec::new();
        if filter != StatusFilter::Archived {
            for slug in self.draft_slugs()? {
                keys.push((format!("0:{slug}"), Entry::Draft(slug)));
            }
        }
        if filter != StatusFilter::Draft {
            for name in self.archive_names()? {
                keys.push((format!("1:{name}"), Entry::Archived(name)));
            }
        }
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        let total = keys.len();
        let start = match &after {
            Some(a) => keys.partition_point(|(k, _)| k <= a),
            None => 0,
        };
        let page: Vec<_> = keys.iter().skip(start).take(page_size).collect();
        let has_more = start + page.len() < total;
        let mut items = Vec::with_capacity(page.len());
        for (_, entry) in &page {
            // A change removed or broken mid-listing is skipped rather than failing the page.
            let summary = match entry {
                Entry::Draft(slug) => Ok(self.list_draft(slug, &self.draft_dir(slug))),
                Entry::Archived(name) => self.summarize_archived(name),
            };
            match summary {
                Ok(s) => items.push(s),
                Err(e) => tracing::warn!(error = %e, "skipping unreadable change in listing"),
            }
        }
        let next_page_token = match (has_more, page.last()) {
            (true, Some((key, _))) => Some(page_token::encode(filter.as_str(), key)),
            _ => None,
        };
        Ok(Page { items, next_page_token, total })
    }

    fn draft_slugs(&self) -> Result<Vec<Slug>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.changes).map_err(|e| Error::internal("list changes", e))?.flatten() {
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if let (true, Some(name)) = (is_dir, entry.file_name().to_str())
                && let Ok(slug) = Slug::parse(name)
            {
                out.push(slug);
            }
        }
        Ok(out)
    }

    /// The dated folders of the archive; none while the archive folder is missing.
    fn archive_names(&self) -> Result<Vec<String>> {
        if !self.archive_exists()? {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.archive).map_err(|e| Error::io("list archive", &self.archive, e))?.flatten() {
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if let (true, Some(name)) = (is_dir, entry.file_name().to_str())
                && archive_slug(name).is_some()
            {
                out.push(name.to_string());
            }
        }
        Ok(out)
    }

    /// Whether the archive folder is there. A symlink or a file in its place is refused:
    /// archiving through it would move changes out of the workspace.
    fn archive_exists(&self) -> Result<bool> {
        match self.archive.symlink_metadata() {
            Ok(m) if m.is_dir() => Ok(true),
            Ok(_) => Err(Error::WorkspaceUnusable {
                path: "changes/archive".into(),
                why: "is not a folder (a symlink or a file is in its place)".into(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io("stat archive", &self.archive, e)),
        }
    }

    /// The archive folder, made again if it is missing: git keeps no empty folder, so a
    /// checkout can drop it.
    fn archive_root(&self) -> Result<&Path> {
        if !self.archive_exists()? {
            match fs::create_dir(&self.archive) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io("create archive", &self.archive, e)),
            }
        }
        Ok(&self.archive)
    }

    fn summarize_draft(&self, slug: &Slug, dir: &Path) -> Result<Summary> {
        Ok(draft_summary(slug, dir, lock::read(dir)?))
    }

    /// `summarize_draft` for a listing: a change whose lock cannot be read is listed without
    /// one (every call on it says why) rather than left out as if it did not exist.
    fn list_draft(&self, slug: &Slug, dir: &Path) -> Summary {
        let lock = lock::read(dir).unwrap_or_else(|e| {
            tracing::warn!(slug = %slug, error = %e, "listing a change whose lock cannot be read");
            None
        });
        draft_summary(slug, dir, lock)
    }

    fn summarize_archived(&self, name: &str) -> Result<Summary> {
        let dir = self.archive.join(name);
        let slug = read_receipt(&dir).map(|r| r.slug).or_else(|| archive_slug(name).map(str::to_string));
        let slug = slug.ok_or_else(|| Error::Internal(format!("unrecognised archive folder {name}")))?;
        let proposal = read_doc(&dir, "proposal.md").ok().flatten();
        let tasks = read_doc(&dir, "tasks.md").ok().flatten();
        Ok(Summary {
            title: proposal.as_deref().and_then(proposal::title).unwrap_or_else(|| slug.clone()),
            slug,
            status: Status::Archived,
            updated_at: updated_at(&dir),
            lock: None,
            progress: tasks.as_deref().map(|t| checklist::parse(t).progress()).unwrap_or((0, 0)),
            archive_name: Some(name.to_string()),
        })
    }

    /// The newest archive folder of `slug`, if any. A folder's receipt names its slug: the
    /// name alone is ambiguous once a slug is archived twice in a day (`…-bar-2` is `bar`'s
    /// second archive, or the first of a change named `bar-2`), so it decides only where
    /// there is no receipt.
    fn latest_archive(&self, slug: &Slug) -> Result<Option<(String, PathBuf)>> {
        let mut found = Vec::new();
        for name in self.archive_names()? {
            let (date, rest) = name.split_at(10);
            let rest = &rest[1..];
            let n = if rest == slug.as_str() {
                1
            } else {
                let numbered = rest.strip_prefix(slug.as_str()).and_then(|t| t.strip_prefix('-'));
                match numbered.and_then(|d| d.parse::<u32>().ok()) {
                    Some(n) if n > 1 => n,
                    _ => continue,
                }
            };
            let dir = self.archive.join(&name);
            let mine = match read_receipt(&dir) {
                Some(receipt) => receipt.slug == slug.as_str(),
                None => n == 1,
            };
            if mine {
                found.push(((date.to_string(), n), name, dir));
            }
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(found.pop().map(|(_, name, dir)| (name, dir)))
    }

    /// A draft's folder, else its newest archive's.
    fn locate(&self, slug: &Slug) -> Result<(PathBuf, Summary)> {
        if let Some(dir) = self.existing_draft(slug)? {
            let summary = self.summarize_draft(slug, &dir)?;
            return Ok((dir, summary));
        }
        match self.latest_archive(slug)? {
            Some((name, dir)) => Ok((dir, self.summarize_archived(&name)?)),
            None => Err(Error::ChangeNotFound { slug: slug.to_string() }),
        }
    }

    // ----- change.show -----

    /// The change from the cache, if it is there and nothing under it changed since. Never
    /// blocks, so async callers may call it inline; on `None`, call `show_change_and_cache`.
    pub fn cached_show(&self, slug: &Slug) -> Option<Arc<Shown>> {
        self.watcher.get()?.cached_show(slug)
    }

    /// `show_change`, kept for `cached_show` when the watcher runs.
    pub fn show_change_and_cache(&self, slug: &Slug) -> Result<Arc<Shown>> {
        let Some(watcher) = self.watcher.get() else { return self.show_change(slug).map(Arc::new) };
        let ticket = watcher.show_ticket();
        let shown = Arc::new(self.show_change(slug)?);
        watcher.store_show(slug, ticket, shown.clone());
        Ok(shown)
    }

    pub fn show_change(&self, slug: &Slug) -> Result<Shown> {
        let (dir, summary) = self.locate(slug)?;
        let proposal = read_doc_strict(&dir, "proposal.md", slug)?.unwrap_or_default();
        let tasks = read_doc_strict(&dir, "tasks.md", slug)?.map(|t| checklist::parse(&t).items).unwrap_or_default();
        let spec_read = read_spec_files(&dir.join("specs"))?;
        if let Some(refusal) = spec_read.refusal(slug) {
            return Err(refusal);
        }
        let mut deltas = Vec::new();
        for (path, content) in spec_read.files {
            if is_readme(&path) {
                continue;
            }
            let (requirements, _) = specs::parse_delta(&content);
            deltas.push(Delta { path, content, requirements });
        }
        Ok(Shown { summary, proposal, tasks, deltas })
    }

    // ----- change.validate -----

    pub fn validate_change(&self, slug: &Slug) -> Result<Vec<Finding>> {
        let dir = self.existing_draft(slug)?.ok_or_else(|| Error::ChangeNotFound { slug: slug.to_string() })?;
        self.validate_dir(&dir)
    }

    fn validate_dir(&self, dir: &Path) -> Result<Vec<Finding>> {
        let mut unreadable = Vec::new();
        let mut doc = |name: &str| -> Result<Option<String>> {
            match fsutil::read_text_capped(&dir.join(name), MAX_DOC_BYTES)
                .map_err(|e| Error::internal("read change file", e))?
            {
                TextRead::Text(t) => Ok(Some(t)),
                TextRead::Missing => Ok(None),
                other => {
                    unreadable.push(unreadable_finding(name, &other));
                    Ok(None)
                }
            }
        };
        let proposal = doc("proposal.md")?;
        let tasks = doc("tasks.md")?;
        let specs_dir = dir.join("specs");
        let spec_read = read_spec_files(&specs_dir)?;
        let delta_unreadable = spec_read.unreadable_delta().is_some();
        let files = ChangeFiles {
            proposal,
            tasks,
            specs_dir: specs_dir.symlink_metadata().is_ok_and(|m| m.is_dir()),
            spec_files: spec_read.files,
        };
        let mut findings: Vec<Finding> = validation::validate(&files)
            .into_iter()
            // A file we could not read is reported once, as unreadable, not also as missing,
            // and an unreadable delta is not "no deltas".
            .filter(|f| !(f.code.ends_with("_MISSING") && unreadable.iter().any(|u| u.file == f.file)))
            .filter(|f| !(f.code == validation::SPECS_NO_DELTAS && delta_unreadable))
            .collect();
        findings.extend(unreadable);
        findings.extend(spec_read.problems);
        findings.sort_by(|a, b| (a.severity, &a.file, a.line).cmp(&(b.severity, &b.file, b.line)));
        Ok(findings)
    }

    // ----- task.update -----

    /// `caller_gone` is asked once the call has its turn at the change: a caller that stopped
    /// waiting (cancelled, timed out) gets nothing written on its behalf.
    pub fn update_tasks(
        &self,
        slug: &Slug,
        holder: Holder<'_>,
        updates: &[(String, bool)],
        caller_gone: &dyn Fn() -> bool,
    ) -> Result<(Vec<TaskItem>, Vec<String>)> {
        let guard = self.slug_lock(slug);
        let _held = Self::slug_turn(&guard, caller_gone)?;
        let turn = self.draft_turn(slug, caller_gone)?;
        if caller_gone() {
            return Err(Error::CallerGone);
        }
        let (dir, _turn) = turn.ok_or_else(|| Error::ChangeNotFound { slug: slug.to_string() })?;
        let held = refuse_unless_holder(&dir, slug, holder)?;
        let ttl = held.and_then(|l| Ttl::parse(l.ttl_seconds).ok()).unwrap_or(Ttl::DEFAULT);
        let mut lock_taken = false;
        // Servers take turns, people do not: a save that lands between our read and our rename
        // sends us back to read again.
        for _ in 0..EDIT_ATTEMPTS {
            let (text, read_as) = self.read_whole_tasks(&dir, slug, updates, caller_gone)?;
            // Everything that can refuse the call runs before anything is written.
            let (new_text, changed) = checklist::apply(&text, slug.as_str(), updates)?;
            if changed.is_empty() {
                return Ok((checklist::parse(&new_text).items, changed));
            }
            if !lock_taken {
                self.take_lock_to_tick(&dir, slug, holder, ttl)?;
                lock_taken = true;
            }
            if self.write_tasks_if(&dir, &new_text, read_as)? {
                self.emit(EventKind::TasksUpdated, slug.as_str(), vec![ResourceUri::tasks(slug.as_str())]);
                return Ok((checklist::parse(&new_text).items, changed));
            }
        }
        Err(Error::ConcurrentEdit { slug: slug.to_string(), file: "tasks.md".into() })
    }

    /// `tasks.md` of the draft in `dir` as a whole file, with who it was when read. Someone may
    /// be saving it in place (truncate, then write): a file that changes while it is read, or
    /// that ends mid-line and was written less than `SETTLE` ago, is read again, `EDIT_POLL`
    /// apart, for at most `EDIT_WAIT`; then the call is refused with `ConcurrentEdit`.
    fn read_whole_tasks(
        &self,
        dir: &Path,
        slug: &Slug,
        updates: &[(String, bool)],
        caller_gone: &dyn Fn() -> bool,
    ) -> Result<(String, fsutil::FileId)> {
        let path = dir.join("tasks.md");
        let read_err = |e| Error::io("read change file", &path, e);
        let since = std::time::Instant::now();
        loop {
            let snapshot = fsutil::read_text_snapshot(&path, MAX_DOC_BYTES).map_err(read_err)?;
            self.fault("tasks.after_read").map_err(read_err)?;
            let text = strict_text(snapshot.read, "tasks.md", slug)?.ok_or_else(|| Error::TaskNotFound {
                slug: slug.to_string(),
                id: updates.first().map(|u| u.0.clone()).unwrap_or_default(),
            })?;
            if let Some(id) = snapshot.id
                && looks_whole(&text, id)
            {
                return Ok((text, id));
            }
            if caller_gone() {
                return Err(Error::CallerGone);
            }
            if since.elapsed() >= EDIT_WAIT {
                return Err(Error::ConcurrentEdit { slug: slug.to_string(), file: "tasks.md".into() });
            }
            std::thread::sleep(EDIT_POLL);
        }
    }

    /// Holding the lock is required to tick; a free or expired lock is taken by the caller.
    fn take_lock_to_tick(&self, dir: &Path, slug: &Slug, holder: Holder<'_>, ttl: Ttl) -> Result<()> {
        match lock::acquire(dir, slug.as_str(), holder, ttl, now())? {
            Acquired::TakenOver { lock, previous } => self.record_takeover(dir, &previous, &lock)?,
            Acquired::New(_) | Acquired::Refreshed(_) => {}
        }
        self.own_writes.note(&dir.join(lock::LOCK_FILE));
        Ok(())
    }

    /// Replaces `tasks.md` with `text` if it is still the file read as `read_as`; `false`:
    /// it changed, nothing was written.
    fn write_tasks_if(&self, dir: &Path, text: &str, read_as: fsutil::FileId) -> Result<bool> {
        let path = dir.join("tasks.md");
        let written = fsutil::atomic_write_if(&path, text.as_bytes(), read_as)
            .map_err(|e| write_error("write tasks", dir, "tasks.md", e))?;
        let Some(replaced) = written else { return Ok(false) };
        self.own_writes.note(&path);
        self.settle_commit("write tasks", &path, self.fault("tasks.after_rename").and(replaced.synced));
        Ok(true)
    }

    // ----- change.archive -----

    /// `caller_gone` as for `update_tasks`.
    pub fn archive_change(
        &self,
        slug: &Slug,
        actor: Holder<'_>,
        tests: Option<TestSummary>,
        progress: &mut dyn FnMut(Step),
        caller_gone: &dyn Fn() -> bool,
    ) -> Result<Archived> {
        const STEPS: u32 = 4;
        let guard = self.slug_lock(slug);
        let _held = Self::slug_turn(&guard, caller_gone)?;
        let turn = self.draft_turn(slug, caller_gone)?;
        if caller_gone() {
            return Err(Error::CallerGone);
        }
        let Some((dir, _turn)) = turn else { return self.already_archived(slug) };
        refuse_unless_holder(&dir, slug, actor)?;
        let findings = self.validate_dir(&dir)?;
        if !validation::is_valid(&findings) {
            return Err(Error::ValidationFailed {
                slug: slug.to_string(),
                findings: findings
                    .iter()
                    .filter(|f| f.severity == Severity::Error)
                    .map(|f| FindingRef {
                        code: f.code.to_string(),
                        file: f.file.clone(),
                        line: f.line,
                        message: f.message.clone(),
                    })
                    .collect(),
            });
        }
        let warnings = findings.len();
        progress(Step {
            name: "validate",
            message: format!("valid ({warnings} warning(s))"),
            current: 1,
            total: STEPS,
        });

        let archived_at = now();
        self.archive_root()?;
        let meta = read_meta(&dir);
        let activity = git::activity_since(&self.root, meta.opened_at);
        let mut receipt = Receipt {
            slug: slug.to_string(),
            archived_at,
            actor: actor.owner.to_string(),
            opened_at: meta.opened_at,
            git: activity.repository,
            commits: activity.commits.into_iter().map(|(sha, subject)| CommitRef { sha, subject }).collect(),
            files_touched: activity.files_touched,
            tests,
            archive_path: String::new(),
            server_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        progress(Step {
            name: "receipt",
            message: format!("{} commit(s), {} file(s)", receipt.commits.len(), receipt.files_touched.len()),
            current: 2,
            total: STEPS,
        });

        let target = self.move_to_archive(&dir, slug, actor, &mut receipt)?;
        self.own_writes.note(&target);
        // The draft's folder is gone by our hand: an archive, not a removal.
        self.own_writes.note(&dir);
        let synced = self
            .fault("archive.after_move")
            .and_then(|()| fsutil::sync_parent(&target))
            .and_then(|()| fsutil::sync_parent(&dir));
        self.settle_commit("archive", &target, synced);
        progress(Step { name: "move", message: receipt.archive_path.clone(), current: 3, total: STEPS });

        if let Err(e) = self
            .fault("archive.before_release")
            .map_err(|e| Error::internal("release", e))
            .and_then(|()| lock::release(&target))
        {
            // The change is archived; the stray lock inside the archive is ignored
            // and removed by the next archive call for this slug.
            tracing::warn!(slug = %slug, error = %e, "archived but lock not released");
        }
        // The release changed the folder; noted as it is now, so the watcher does not report
        // this archive a second time as another process's.
        self.own_writes.note(&target);
        progress(Step { name: "release", message: "lock released".into(), current: 4, total: STEPS });
        self.emit(EventKind::Archived, slug.as_str(), vec![ResourceUri::receipt(slug.as_str())]);
        let findings = findings.into_iter().filter(|f| f.severity != Severity::Error).collect();
        Ok(Archived { receipt, already_archived: false, findings })
    }

    /// The answer to archiving a change that has no draft: its newest archive's receipt.
    fn already_archived(&self, slug: &Slug) -> Result<Archived> {
        let Some((name, archived)) = self.latest_archive(slug)? else {
            return Err(Error::ChangeNotFound { slug: slug.to_string() });
        };
        let receipt = read_receipt(&archived).ok_or_else(|| Error::ReceiptUnavailable {
            slug: slug.to_string(),
            archive_path: format!("changes/archive/{name}"),
        })?;
        // A crash between the move and the release leaves the lock inside.
        let _ = lock::release(&archived);
        Ok(Archived { receipt, already_archived: true, findings: vec![] })
    }

    /// Writes the receipt into the draft `dir` and renames the draft into the archive under
    /// the first free name: the commit point, one rename that moves the change, its receipt and
    /// its lock. A name taken between our look and our rename (by another archive: `bar`'s
    /// second of the day and `bar-2`'s first both want `<date>-bar-2`) is passed over for the
    /// next, the receipt rewritten to name the folder the change really goes to. On failure
    /// the draft is as it was, so a retry starts clean.
    fn move_to_archive(&self, dir: &Path, slug: &Slug, actor: Holder<'_>, receipt: &mut Receipt) -> Result<PathBuf> {
        let mut first = 1;
        let moved = loop {
            let (n, name) = match self.free_archive_name(slug, receipt.archived_at, first) {
                Ok(found) => found,
                Err(e) => break Err(e),
            };
            receipt.archive_path = format!("changes/archive/{name}");
            let target = self.archive.join(&name);
            match self.try_move_to_archive(dir, &target, slug, actor, receipt) {
                Ok(true) => break Ok(target),
                Ok(false) => first = n + 1,
                Err(e) => break Err(e),
            }
        };
        if moved.is_err() {
            let _ = fs::remove_file(dir.join(RECEIPT_FILE));
        }
        moved
    }

    /// One attempt of `move_to_archive`; `false`: `target` was taken.
    fn try_move_to_archive(
        &self,
        dir: &Path,
        target: &Path,
        slug: &Slug,
        actor: Holder<'_>,
        receipt: &Receipt,
    ) -> Result<bool> {
        let receipt_path = dir.join(RECEIPT_FILE);
        let bytes = serde_json::to_vec_pretty(receipt).map_err(|e| Error::internal("encode receipt", e))?;
        let replaced = fsutil::atomic_write(&receipt_path, &bytes)
            .map_err(|e| write_error("write receipt", dir, RECEIPT_FILE, e))?;
        self.settle_commit("write receipt", &receipt_path, replaced.synced);
        self.own_writes.note(&receipt_path);
        let move_err = |e| Error::io("move change to archive", dir, e);
        self.fault("archive.before_move").map_err(move_err)?;
        // Servers keep out while we hold the turn, but a writer that takes no turn (an older
        // server, a person) may have taken the lock since the first look.
        refuse_unless_holder(dir, slug, actor)?;
        match fsutil::rename_noreplace(dir, target) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(move_err(e)),
        }
    }

    /// The first free archive folder name of `slug` for the day of `at`, numbered `from` or
    /// higher, with its number. A slug reopened and archived again the same day gets a
    /// numbered folder; the receipt inside keeps the real slug.
    fn free_archive_name(&self, slug: &Slug, at: OffsetDateTime, from: u32) -> Result<(u32, String)> {
        let date = at.date();
        let base = format!("{:04}-{:02}-{:02}-{slug}", date.year(), u8::from(date.month()), date.day());
        for n in from.max(1)..1000 {
            let name = if n == 1 { base.clone() } else { format!("{base}-{n}") };
            if self.archive.join(&name).symlink_metadata().is_err() {
                return Ok((n, name));
            }
        }
        Err(Error::Internal(format!("no free archive name for {slug}")))
    }

    // ----- resources -----

    pub fn read_resource(&self, uri: &ResourceUri, raw: &str) -> Result<Resource> {
        let not_found = || Error::ResourceNotFound { uri: raw.to_string() };
        let (path, mime) = match uri {
            ResourceUri::Active => {
                let page = self.list_changes(StatusFilter::Draft, 50, "")?;
                let bytes = serde_json::to_vec_pretty(&active_json(&page))
                    .map_err(|e| Error::internal("encode changes://active", e))?;
                return Ok(Resource { mime_type: "application/json", bytes });
            }
            ResourceUri::Proposal(slug) => (self.locate(slug)?.0.join("proposal.md"), "text/markdown"),
            ResourceUri::Tasks(slug) => (self.locate(slug)?.0.join("tasks.md"), "text/markdown"),
            ResourceUri::Delta(slug, rel) => {
                let specs = self.locate(slug)?.0.join("specs");
                (paths::resolve_inside(&specs, rel)?, delta_mime(rel))
            }
            ResourceUri::Receipt(slug) => {
                let (_, dir) = self.latest_archive(slug)?.ok_or_else(not_found)?;
                (dir.join(RECEIPT_FILE), "application/json")
            }
        };
        let meta = match path.symlink_metadata() {
            Ok(m) if m.is_file() => m,
            Ok(m) if m.file_type().is_symlink() => {
                // Only reachable for proposal/tasks: delta paths were resolved above.
                return Err(Error::InvalidPath { value: raw.to_string(), why: "is a symbolic link" });
            }
            _ => return Err(not_found()),
        };
        if meta.len() > self.max_resource_bytes {
            return Err(Error::ResourceTooLarge {
                uri: raw.to_string(),
                size: meta.len(),
                limit: self.max_resource_bytes,
            });
        }
        let bytes = fs::read(&path).map_err(|e| match e.kind() {
            // Gone, or made a folder, since the look above.
            io::ErrorKind::NotFound | io::ErrorKind::IsADirectory => not_found(),
            _ => Error::io("read resource", &path, e),
        })?;
        Ok(Resource { mime_type: mime, bytes })
    }

    /// The readable resources, in URI order: all of them (`page_size` 0), or a
    /// page of at most `page_size` after the one `page_token` names, with the
    /// token of the next page (empty on the last). Keyset paging on the URI,
    /// so a change opened or archived between pages neither repeats nor skips
    /// another's resources, and only the changes on the page are read.
    pub fn list_resources(
        &self,
        only: Option<&Slug>,
        page_size: usize,
        page_token: &str,
    ) -> Result<(Vec<ResourceEntry>, String)> {
        let filter = match only {
            Some(slug) => format!("resources:{slug}"),
            None => "resources".to_string(),
        };
        let after = if page_token.is_empty() { None } else { Some(page_token::decode(page_token, &filter)?) };
        let wanted = if page_size == 0 { usize::MAX } else { page_size + 1 };
        let mut slugs = match only {
            Some(s) => vec![s.clone()],
            None => self.draft_slugs()?,
        };
        // Every URI of a change starts with `change://<slug>/`, and no slug holds a `/`, so
        // sorting by that prefix puts whole changes in URI order.
        slugs.sort_by_cached_key(|slug| format!("{slug}/"));
        let mut out = Vec::new();
        for slug in slugs {
            if out.len() >= wanted {
                break;
            }
            let prefix = ResourceUri::change_prefix(slug.as_str());
            if let Some(a) = &after
                && prefix.as_str() < a.as_str()
                && !a.starts_with(&prefix)
            {
                continue; // served on an earlier page: every URI of it sorts before the anchor
            }
            let Some(dir) = self.existing_draft(&slug)? else {
                continue;
            };
            let mut entries = change_resources(&slug, &dir)?;
            entries.sort_by(|a, b| a.uri.cmp(&b.uri));
            out.extend(entries.into_iter().filter(|e| after.as_ref().is_none_or(|a| e.uri.as_str() > a.as_str())));
        }
        if only.is_none() && after.as_ref().is_none_or(|a| a.as_str() < crate::domain::uri::ACTIVE) {
            out.push(ResourceEntry {
                uri: crate::domain::uri::ACTIVE.into(),
                name: "Active changes".into(),
                mime_type: "application/json",
                size: 0,
            });
        }
        let mut next = String::new();
        if out.len() > page_size && page_size > 0 {
            out.truncate(page_size);
            if let Some(last) = out.last() {
                next = page_token::encode(&filter, &last.uri);
            }
        }
        Ok((out, next))
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

    pub(crate) fn sender(&self) -> &broadcast::Sender<Event> {
        &self.events
    }
}

enum Entry {
    Draft(Slug),
    Archived(String),
}

fn draft_summary(slug: &Slug, dir: &Path, lock: Option<LockRecord>) -> Summary {
    let proposal = read_doc(dir, "proposal.md").ok().flatten();
    let tasks = read_doc(dir, "tasks.md").ok().flatten();
    Summary {
        slug: slug.to_string(),
        title: proposal.as_deref().and_then(proposal::title).unwrap_or_else(|| slug.to_string()),
        status: Status::Draft,
        updated_at: updated_at(dir),
        lock,
        progress: tasks.as_deref().map(|t| checklist::parse(t).progress()).unwrap_or((0, 0)),
        archive_name: None,
    }
}

/// A build-aside folder in `.staging`, held with an `flock` for as long as this value lives:
/// a sweep (by this process or another) removes exactly the folders nobody holds, so it never
/// takes a folder from a live build however long that takes, and never leaves one a dead
/// process left however young. The hold goes with the folder when it is renamed into place.
struct Stage {
    path: PathBuf,
    _held: fs::File,
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

/// Whether `text`, read from the file `id`, is a whole file rather than one half saved in
/// place: it ends a line, or nobody has written it for `SETTLE`. A save that stalls longer
/// than that mid-line, or stalls at the end of a line, cannot be told from a file written so.
fn looks_whole(text: &str, id: fsutil::FileId) -> bool {
    // A modification time in the future is a clock's fault, not a save under way.
    text.is_empty() || text.ends_with('\n') || id.modified.elapsed().map_or(true, |age| age >= SETTLE)
}

fn unreadable_finding(name: &str, read: &TextRead) -> Finding {
    let message = match read {
        TextRead::TooLarge(size) => format!("{size} bytes is over the {MAX_DOC_BYTES} byte limit"),
        TextRead::NotRegular => NOT_REGULAR.into(),
        _ => "is not UTF-8 text".into(),
    };
    Finding { code: "FILE_UNREADABLE", severity: Severity::Error, file: name.to_string(), line: 0, message }
}

/// The media type of a file under `specs/`, by its extension: deltas are Markdown, but the
/// folder may hold anything a human put there.
fn delta_mime(path: &str) -> &'static str {
    let extension = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match extension.as_deref() {
        Some("md" | "markdown") => "text/markdown",
        Some("txt") => "text/plain",
        Some("json") => "application/json",
        Some("yaml" | "yml") => "application/yaml",
        _ => "application/octet-stream",
    }
}

fn is_readme(path: &str) -> bool {
    path.rsplit('/').next().is_some_and(|f| f.eq_ignore_ascii_case("readme.md"))
}

struct SpecRead {
    files: Vec<(String, String)>,
    /// Files that could not be read as text, as `(path relative to specs/, why)`.
    unreadable: Vec<(String, TextRead)>,
    problems: Vec<Finding>,
}

impl SpecRead {
    fn unreadable_delta(&self) -> Option<&(String, TextRead)> {
        self.unreadable.iter().find(|(rel, _)| !is_readme(rel))
    }

    /// The first unreadable delta as the error `change.show` answers: a change shown without
    /// one of its deltas would pass for a change that has none.
    fn refusal(&self, slug: &Slug) -> Option<Error> {
        let (rel, read) = self.unreadable_delta()?;
        let file = format!("specs/{rel}");
        Some(match read {
            TextRead::TooLarge(size) => Error::ResourceTooLarge { uri: file, size: *size, limit: MAX_DOC_BYTES },
            TextRead::NotRegular => Error::FileUnreadable { slug: slug.to_string(), file, why: NOT_REGULAR },
            _ => Error::FileUnreadable { slug: slug.to_string(), file, why: "is not UTF-8 text" },
        })
    }
}

/// Every `*.md` under `specs/` (depth-limited, symlinks not followed), as
/// `(path relative to specs/, text)` sorted by path. Beyond `MAX_SPEC_FILES` (the first by
/// path), files are not read, and an error finding says so: what was not read was not
/// validated, so such a change is not archived.
/// One draft's resources: proposal, tasks and each readable spec delta.
fn change_resources(slug: &Slug, dir: &Path) -> Result<Vec<ResourceEntry>> {
    let size = |p: &Path| p.metadata().map(|m| m.len()).unwrap_or(0);
    let mut out = vec![
        ResourceEntry {
            uri: ResourceUri::proposal(slug.as_str()),
            name: format!("{slug} proposal"),
            mime_type: "text/markdown",
            size: size(&dir.join("proposal.md")),
        },
        ResourceEntry {
            uri: ResourceUri::tasks(slug.as_str()),
            name: format!("{slug} tasks"),
            mime_type: "text/markdown",
            size: size(&dir.join("tasks.md")),
        },
    ];
    // Only what `resources/read` serves: a delta whose path it refuses (a space, a
    // non-ASCII name) is still in `change.show`, but is not a resource.
    let readable = |(path, _): &(String, String)| relpath::check_relative(path).is_ok();
    for (path, content) in read_spec_files(&dir.join("specs"))?.files.into_iter().filter(readable) {
        out.push(ResourceEntry {
            uri: ResourceUri::delta(slug.as_str(), &path),
            name: format!("{slug} spec {path}"),
            mime_type: "text/markdown",
            size: content.len() as u64,
        });
    }
    Ok(out)
}

fn read_spec_files(specs: &Path) -> Result<SpecRead> {
    let mut out = SpecRead { files: Vec::new(), unreadable: Vec::new(), problems: Vec::new() };
    if !specs.symlink_metadata().is_ok_and(|m| m.is_dir()) {
        return Ok(out);
    }
    let mut found = Vec::new();
    let mut stack = vec![(specs.to_path_buf(), String::new(), 0usize)];
    while let Some((dir, prefix, depth)) = stack.pop() {
        let entries = fs::read_dir(&dir).map_err(|e| Error::internal("list specs", e))?;
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let rel = if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() && depth < 6 {
                stack.push((entry.path(), rel, depth + 1));
            } else if kind.is_file() && name.ends_with(".md") {
                found.push((rel, entry.path()));
            }
        }
    }
    found.sort();
    if found.len() > MAX_SPEC_FILES {
        out.problems.push(Finding {
            code: "TOO_MANY_SPEC_FILES",
            severity: Severity::Error,
            file: "specs".into(),
            line: 0,
            message: format!(
                "{} spec files; only the first {MAX_SPEC_FILES} by path were read and validated",
                found.len()
            ),
        });
        found.truncate(MAX_SPEC_FILES);
    }
    for (rel, path) in found {
        match fsutil::read_text_capped(&path, MAX_DOC_BYTES).map_err(|e| Error::internal("read spec", e))? {
            TextRead::Text(t) => out.files.push((rel, t)),
            other => {
                out.problems.push(unreadable_finding(&format!("specs/{rel}"), &other));
                out.unreadable.push((rel, other));
            }
        }
    }
    Ok(out)
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

fn active_json(page: &Page) -> serde_json::Value {
    let items: Vec<_> = page
        .items
        .iter()
        .map(|s| {
            serde_json::json!({
                "slug": s.slug,
                "title": s.title,
                "status": "draft",
                "updatedAt": crate::error::fmt_time(s.updated_at),
                "lockHolder": s.lock.as_ref().map(|l| l.owner.clone()),
                "progress": {"done": s.progress.0, "total": s.progress.1},
                "uri": ResourceUri::proposal(&s.slug),
            })
        })
        .collect();
    serde_json::json!({"changes": items, "total": page.total, "nextPageToken": page.next_page_token})
}

#[cfg(test)]
mod disk_tests;
#[cfg(test)]
mod tests;
