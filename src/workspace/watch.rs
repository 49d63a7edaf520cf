//! Sees edits on disk, ours and other processes', through inotify on every folder under
//! `changes/`. Two users:
//!
//! - subscribers (`WatchChanges`, resource subscriptions) get an event per foreign edit. Our
//!   own writes are noted with a fingerprint (inode, size, mtime) so they can be told from a
//!   foreign edit of the same file; events are coalesced over a short quiet period because one
//!   editor save is several filesystem events.
//! - the parsed-change cache (`cache`) drops a slug on any event under it. Before every lookup
//!   the caller takes in the kernel's queue (its size asked with `FIONREAD`, read when not
//!   empty), and the kernel queues an event before the write that caused it returns, so a
//!   cached answer never misses a write that finished before the lookup.
//!
//! The watch mask leaves out opens, reads and closes without writing: the server reads these
//! files on every uncached call and must not wake itself up doing so.
use std::{
    collections::{BTreeSet, HashMap},
    io,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, MutexGuard, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use indexmap::{IndexMap, IndexSet};
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};

use super::{Event, EventKind, Shown, Workspace, cache::ShowCache};
use crate::{
    domain::{Slug, uri::ResourceUri},
    error::{Error, Result},
};

const QUIET: Duration = Duration::from_millis(150);
/// A file written without pause (a log, an autosaving editor) never lets the quiet period
/// pass; events wait at most this long, so it cannot hold back every other change's.
const MAX_DELAY: Duration = Duration::from_secs(1);
/// How long a path we wrote and that has since gone still counts as ours: our own write
/// moved away (an archive), not someone deleting it later.
pub(super) const MOVED_AWAY_WINDOW: Duration = Duration::from_secs(2);
const MAX_NOTED: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

fn fingerprint(path: &Path) -> Option<Fingerprint> {
    let m = path.symlink_metadata().ok()?;
    Some(Fingerprint {
        ino: m.ino(),
        len: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    })
}

#[derive(Default)]
pub struct OwnWrites(Mutex<HashMap<PathBuf, (Option<Fingerprint>, Instant)>>);

impl OwnWrites {
    /// Notes `path` as we left it, and its folder too: our write changed the folder's mtime,
    /// and an event on the folder itself must not then pass for another process's.
    pub fn note(&self, path: &Path) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_NOTED {
            map.clear();
        }
        let now = Instant::now();
        map.insert(path.to_path_buf(), (fingerprint(path), now));
        if let Some(parent) = path.parent() {
            map.insert(parent.to_path_buf(), (fingerprint(parent), now));
        }
    }

    /// True when the path is as we left it, or we wrote it and it moved away just now.
    fn is_own(&self, path: &Path) -> bool {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(path) {
            Some((noted, at)) => {
                let current = fingerprint(path);
                current == *noted || (current.is_none() && at.elapsed() < MOVED_AWAY_WINDOW)
            }
            None => false,
        }
    }
}

/// Distinct paths waiting for the quiet period; more are dropped (the events they would
/// have caused are merged per slug anyway).
const MAX_PENDING: usize = 4096;

fn mask() -> WatchMask {
    WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MODIFY
        | WatchMask::ATTRIB
        | WatchMask::CLOSE_WRITE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::MOVE_SELF
        | WatchMask::DELETE_SELF
        | WatchMask::DONT_FOLLOW
        | WatchMask::ONLYDIR
}

/// The inotify instance, what it watches, and what its events feed.
pub struct Watcher {
    changes: PathBuf,
    state: Mutex<State>,
    stopped: AtomicBool,
}

struct State {
    inotify: Inotify,
    dirs: HashMap<WatchDescriptor, PathBuf>,
    buffer: Vec<u8>,
    /// In the order the edits came, each path once.
    pending: IndexSet<PathBuf>,
    /// When the oldest and the newest pending event came.
    first_event: Option<Instant>,
    last_event: Option<Instant>,
    cache: ShowCache,
    /// Some folder is not watched: the cache cannot be trusted.
    blind: bool,
    /// The `changes/` folder was moved or deleted from under its watch: nothing under the
    /// path is watched until a folder is there again and watched afresh.
    root_lost: bool,
}

/// Keeps the watcher alive; dropping it stops the watch thread and turns the cache off.
pub struct WatchGuard {
    watcher: Arc<Watcher>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.watcher.stopped.store(true, Ordering::Release);
    }
}

pub fn start(ws: &Arc<Workspace>) -> Result<WatchGuard> {
    let inotify = Inotify::init().map_err(|e| Error::internal("start watcher", e))?;
    let watcher = Arc::new(Watcher {
        changes: ws.changes_dir().to_path_buf(),
        state: Mutex::new(State {
            inotify,
            dirs: HashMap::new(),
            buffer: vec![0; 64 * 1024],
            pending: IndexSet::new(),
            first_event: None,
            last_event: None,
            cache: ShowCache::default(),
            blind: false,
            root_lost: false,
        }),
        stopped: AtomicBool::new(false),
    });
    watcher.lock().watch_tree(ws.changes_dir()).map_err(|e| Error::internal("watch changes", e))?;
    let weak = Arc::downgrade(ws);
    let thread_watcher = watcher.clone();
    std::thread::Builder::new()
        .name("workspace-watch".into())
        .spawn(move || run(weak, thread_watcher))
        .map_err(|e| Error::internal("spawn watcher", e))?;
    ws.set_watcher(watcher.clone());
    Ok(WatchGuard { watcher })
}

impl Watcher {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached change, after taking in every event queued so far. `None` when not cached
    /// or when the watcher has stopped (then nothing would invalidate an entry).
    pub fn cached_show(&self, slug: &Slug) -> Option<Arc<Shown>> {
        if self.stopped.load(Ordering::Acquire) {
            return None;
        }
        let mut state = self.lock();
        state.drain(&self.changes);
        if state.blind || state.root_lost {
            return None;
        }
        state.cache.get(slug.as_str())
    }

    /// Ticket for a read of the disk that starts now; see `store_show`.
    pub fn show_ticket(&self) -> u64 {
        let mut state = self.lock();
        state.drain(&self.changes);
        state.cache.generation()
    }

    /// Keeps what a read begun at `ticket` found, unless something under the workspace changed since.
    pub fn store_show(&self, slug: &Slug, ticket: u64, shown: Arc<Shown>) {
        if self.stopped.load(Ordering::Acquire) {
            return;
        }
        let mut state = self.lock();
        state.drain(&self.changes);
        if !state.blind && !state.root_lost {
            state.cache.insert(slug.as_str(), ticket, shown);
        }
    }
}

impl State {
    /// Adds a watch on `dir` and every real folder below it; symlinks are not followed.
    fn watch_tree(&mut self, dir: &Path) -> io::Result<()> {
        let wd = self.inotify.watches().add(dir, mask())?;
        self.dirs.insert(wd, dir.to_path_buf());
        let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                self.watch_new(&entry.path());
            }
        }
        Ok(())
    }

    /// `watch_tree` for a folder that appeared; one that is gone again needs no watch.
    fn watch_new(&mut self, dir: &Path) {
        match self.watch_tree(dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => self.lose_sight(dir, &e),
            _ => {}
        }
    }

    /// A folder could not be watched (usually `fs.inotify.max_user_watches`): edits in it would
    /// go unseen, so the cache is turned off for good; subscribers still get what is watched.
    fn lose_sight(&mut self, dir: &Path, error: &io::Error) {
        if self.blind {
            return;
        }
        self.blind = true;
        self.cache.invalidate_all();
        tracing::warn!(
            folder = %dir.display(),
            error = %error,
            "cannot watch a workspace folder (raise fs.inotify.max_user_watches?); change.show reads the disk on every call from now on"
        );
    }

    /// Drops the watches on `dir` and every folder below it.
    fn unwatch(&mut self, dir: &Path) {
        let gone: Vec<WatchDescriptor> =
            self.dirs.iter().filter(|(_, path)| path.starts_with(dir)).map(|(wd, _)| wd.clone()).collect();
        for wd in gone {
            self.dirs.remove(&wd);
            let _ = self.inotify.watches().remove(wd);
        }
    }

    /// `changes/` itself was moved away or deleted (a folder swapped in by hand, a restore):
    /// the watches follow the old folders, so they are all dropped, the cache with them, until
    /// `find_root` watches whatever is at the path again.
    fn lose_root(&mut self, changes: &Path) {
        tracing::warn!(folder = %changes.display(), "the changes folder was moved or deleted; watching it afresh");
        for wd in std::mem::take(&mut self.dirs).into_keys() {
            let _ = self.inotify.watches().remove(wd);
        }
        self.cache.invalidate_all();
        self.root_lost = true;
        self.find_root(changes);
    }

    /// Watches `changes/` again if a folder is there; events from before are gone, so a
    /// change already inside is picked up by the cache missing it, not by a subscriber event.
    fn find_root(&mut self, changes: &Path) {
        if !changes.is_dir() {
            return;
        }
        match self.watch_tree(changes) {
            Ok(()) => {
                self.root_lost = false;
                self.cache.invalidate_all();
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                self.root_lost = false;
                self.lose_sight(changes, &e);
            }
        }
    }

    /// Reads every queued event without blocking; adds watches for new folders, invalidates
    /// the cache and queues paths for subscribers.
    fn drain(&mut self, changes: &Path) {
        if self.root_lost {
            self.find_root(changes);
        }
        loop {
            if self.queued_bytes() == Some(0) {
                return;
            }
            let mut buffer = std::mem::take(&mut self.buffer);
            let events: Vec<(WatchDescriptor, EventMask, Option<PathBuf>)> = match self.inotify.read_events(&mut buffer)
            {
                Ok(events) => {
                    events.map(|e| (e.wd.clone(), e.mask, e.name.map(|n| PathBuf::from(n.to_os_string())))).collect()
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Vec::new(),
                Err(e) => {
                    tracing::warn!(error = %e, "reading filesystem events failed; cache cleared");
                    self.cache.invalidate_all();
                    Vec::new()
                }
            };
            self.buffer = buffer;
            if events.is_empty() {
                return;
            }
            for (wd, mask, name) in events {
                self.take(changes, wd, mask, name);
            }
        }
    }

    /// The size of the kernel's event queue (`FIONREAD`), counted under the lock that queues
    /// events, so as exact as a read. It is the check every cached `change.show` makes, and it
    /// costs less than the `read` that finds nothing: 180 ns against 260 here, as the `read`
    /// also joins and leaves the queue's wait list.
    fn queued_bytes(&self) -> Option<usize> {
        let mut bytes: libc::c_int = 0;
        // SAFETY: FIONREAD on an inotify descriptor that `self` keeps open writes one int.
        let done = unsafe { libc::ioctl(self.inotify.as_raw_fd(), libc::FIONREAD, &mut bytes) };
        (done == 0).then_some(bytes as usize)
    }

    fn take(&mut self, changes: &Path, wd: WatchDescriptor, mask: EventMask, name: Option<PathBuf>) {
        if mask.contains(EventMask::Q_OVERFLOW) {
            // Events were lost: anything may have changed, and new folders may lack a watch.
            tracing::warn!("filesystem event queue overflowed; rewatching the workspace");
            self.watch_new(changes);
            self.cache.invalidate_all();
            return;
        }
        if mask.contains(EventMask::IGNORED) {
            self.dirs.remove(&wd);
            return;
        }
        let Some(dir) = self.dirs.get(&wd) else { return };
        let path = match name {
            Some(name) => dir.join(name),
            None => dir.clone(),
        };
        if path == changes && mask.intersects(EventMask::MOVE_SELF | EventMask::DELETE_SELF) {
            self.lose_root(changes);
            return;
        }
        if mask.contains(EventMask::ISDIR) && mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) {
            // Watch before invalidating: a file written into the new folder before its watch
            // existed is covered by the invalidation below, one written after by the watch.
            self.watch_new(&path);
        }
        match cache_key(changes, &path) {
            Some(slug) => self.cache.invalidate(&slug),
            None => self.cache.invalidate_all(),
        }
        if mask.contains(EventMask::MOVE_SELF) && path != changes && !path.exists() {
            // A folder moved out of the workspace by hand: what is written in it from now on
            // is nothing of ours to report (a move within `changes/` re-points the watch first).
            self.unwatch(&path);
        }
        if !mask.contains(EventMask::ATTRIB) && self.pending.len() < MAX_PENDING {
            self.pending.insert(path);
            let now = Instant::now();
            self.first_event.get_or_insert(now);
            self.last_event = Some(now);
        }
    }
}

/// The slug whose cached answer an event at `path` may change: a draft's folder. `None` for
/// anything else: the `changes/` folder itself, and the archive, whose folder names do not
/// say whose they are (`…-bar-2` may be `bar`'s second archive); archiving is rare.
fn cache_key(changes: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(changes).ok()?;
    let mut parts = rel.components().filter_map(|c| c.as_os_str().to_str());
    match parts.next()? {
        "archive" => None,
        first => Some(first.to_string()),
    }
}

fn run(ws: Weak<Workspace>, watcher: Arc<Watcher>) {
    let fd = watcher.lock().inotify.as_raw_fd();
    while !watcher.stopped.load(Ordering::Acquire) {
        let mut poll = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd; the descriptor stays open as long as `watcher` lives.
        // The timeout bounds how late a stop or a quiet period is noticed.
        unsafe { libc::poll(&mut poll, 1, QUIET.as_millis() as libc::c_int) };
        let due = {
            let mut state = watcher.lock();
            state.drain(&watcher.changes);
            let quiet = state.last_event.is_some_and(|at| at.elapsed() >= QUIET);
            let overdue = state.first_event.is_some_and(|at| at.elapsed() >= MAX_DELAY);
            if quiet || overdue {
                state.first_event = None;
                state.last_event = None;
                std::mem::take(&mut state.pending)
            } else {
                IndexSet::new()
            }
        };
        if due.is_empty() {
            continue;
        }
        let Some(ws) = ws.upgrade() else { return };
        flush(&ws, due);
    }
}

fn flush(ws: &Workspace, paths: IndexSet<PathBuf>) {
    // One event per (slug, kind), with the union of affected URIs, in the order of each one's
    // first edit.
    let mut merged: IndexMap<(String, u8), (EventKind, Vec<String>)> = IndexMap::new();
    for path in paths {
        if ws.own_writes().is_own(&path) {
            continue;
        }
        let Some((kind, slug, uris)) = ws.classify(&path) else {
            continue;
        };
        let exists = path.symlink_metadata().is_ok();
        let (kind, uris) = match kind {
            // A change folder that vanished was deleted or moved away by hand, or archived by
            // another process (then the archive side reports it, below).
            EventKind::Opened if !exists => {
                (EventKind::Removed, vec![ResourceUri::proposal(&slug), ResourceUri::tasks(&slug)])
            }
            EventKind::Archived if !exists => continue,
            // A file that is no resource and is gone again: an editor's or a tool's temporary.
            EventKind::Updated if uris.is_empty() && !exists => continue,
            _ => (kind, uris),
        };
        let entry = merged.entry((slug, kind as u8)).or_insert((kind, Vec::new()));
        for uri in uris {
            if !entry.1.contains(&uri) {
                entry.1.push(uri);
            }
        }
    }
    // An archive by another process is reported as such, not also as a removal; a removal is
    // reported alone, not with the deletions of each file that went with the folder.
    let with = |wanted: EventKind| -> BTreeSet<String> {
        merged.iter().filter(|(_, (kind, _))| *kind == wanted).map(|((slug, _), _)| slug.clone()).collect()
    };
    let (archived, removed) = (with(EventKind::Archived), with(EventKind::Removed));
    merged.retain(|(slug, _), (kind, _)| match kind {
        EventKind::Removed => !archived.contains(slug),
        _ => !removed.contains(slug) || archived.contains(slug),
    });
    for ((slug, _), (kind, uris)) in merged {
        ws.publish(Event { kind, slug, at: time::OffsetDateTime::now_utc(), uris, external: true });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_serves_repeated_reads_and_turns_off_when_a_folder_cannot_be_watched() {
        let dir = tempfile::tempdir().unwrap();
        let ws = Arc::new(Workspace::open(dir.path(), 1 << 20).unwrap());
        let guard = ws.watch().unwrap();
        std::fs::create_dir_all(ws.changes_dir().join("seen")).unwrap();
        std::fs::write(ws.changes_dir().join("seen/proposal.md"), "# Seen\n").unwrap();
        let slug = Slug::parse("seen").unwrap();

        let first = ws.show_change_and_cache(&slug).unwrap();
        let cached = ws.cached_show(&slug).expect("cached after a read");
        assert!(Arc::ptr_eq(&first, &cached), "the same parsed change, not a re-read");

        guard.watcher.lock().lose_sight(Path::new("/unwatchable"), &io::Error::other("watch limit"));
        assert!(ws.cached_show(&slug).is_none(), "dropped when a folder goes unwatched");
        ws.show_change_and_cache(&slug).unwrap();
        assert!(ws.cached_show(&slug).is_none(), "and nothing is cached from then on");
    }

    #[test]
    fn a_changes_folder_swapped_by_hand_is_watched_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let ws = Arc::new(Workspace::open(dir.path(), 1 << 20).unwrap());
        let _guard = ws.watch().unwrap();
        let changes = ws.changes_dir().to_path_buf();
        std::fs::create_dir_all(changes.join("seen")).unwrap();
        std::fs::write(changes.join("seen/proposal.md"), "# Old\n").unwrap();
        let slug = Slug::parse("seen").unwrap();
        assert_eq!(ws.show_change_and_cache(&slug).unwrap().summary.title, "Old");
        assert!(ws.cached_show(&slug).is_some());

        // A replacement built beside it, then swapped in: the old folder keeps the watches.
        let new = dir.path().join("changes.new");
        std::fs::create_dir_all(new.join("seen")).unwrap();
        std::fs::create_dir_all(new.join("archive")).unwrap();
        std::fs::write(new.join("seen/proposal.md"), "# New\n").unwrap();
        std::fs::rename(&changes, dir.path().join("changes.old")).unwrap();
        std::fs::rename(&new, &changes).unwrap();
        let title = |shown: Option<Arc<Shown>>| shown.map(|s| s.summary.title.clone());
        assert_ne!(title(ws.cached_show(&slug)).as_deref(), Some("Old"), "the old folder's answer is gone");
        assert_eq!(ws.show_change_and_cache(&slug).unwrap().summary.title, "New");

        std::fs::write(changes.join("seen/proposal.md"), "# Newer\n").unwrap();
        assert_ne!(title(ws.cached_show(&slug)).as_deref(), Some("New"), "edits in the new folder are seen");
        assert_eq!(ws.show_change_and_cache(&slug).unwrap().summary.title, "Newer");
    }
}
