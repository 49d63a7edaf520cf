//! Sees edits made by other processes. Our own writes are noted with a
//! fingerprint (inode, size, mtime) so the watcher can tell them from a foreign
//! edit of the same file; events are coalesced over a short quiet period because
//! one editor save is several filesystem events.
use std::{
    collections::{BTreeMap, HashMap},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, Weak, mpsc},
    time::Duration,
};

use notify::{EventKind as FsKind, RecursiveMode, Watcher, event::AccessKind, event::ModifyKind};

use super::{Event, EventKind, Workspace};
use crate::error::{Error, Result};

const QUIET: Duration = Duration::from_millis(150);
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
pub struct OwnWrites(Mutex<HashMap<PathBuf, Option<Fingerprint>>>);

impl OwnWrites {
    pub fn note(&self, path: &Path) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_NOTED {
            map.clear();
        }
        map.insert(path.to_path_buf(), fingerprint(path));
    }

    /// True when the path is as we left it (or we wrote it and it has since moved away).
    fn is_own(&self, path: &Path) -> bool {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(path) {
            Some(noted) => {
                let current = fingerprint(path);
                current.is_none() || current == *noted
            }
            None => false,
        }
    }
}

/// Keeps the watcher alive; dropping it stops the watch thread.
pub struct WatchGuard {
    _watcher: notify::RecommendedWatcher,
}

pub fn start(ws: &Arc<Workspace>) -> Result<WatchGuard> {
    let (tx, rx) = mpsc::channel::<notify::Result<notify::Event>>();
    let mut watcher = notify::recommended_watcher(tx).map_err(|e| Error::internal("start watcher", e))?;
    watcher.watch(ws.changes_dir(), RecursiveMode::Recursive).map_err(|e| Error::internal("watch changes", e))?;
    let weak = Arc::downgrade(ws);
    std::thread::Builder::new()
        .name("workspace-watch".into())
        .spawn(move || run(weak, rx))
        .map_err(|e| Error::internal("spawn watcher", e))?;
    Ok(WatchGuard { _watcher: watcher })
}

fn relevant(kind: &FsKind) -> bool {
    match kind {
        FsKind::Access(AccessKind::Close(_)) => true,
        FsKind::Access(_) | FsKind::Modify(ModifyKind::Metadata(_)) | FsKind::Other => false,
        _ => true,
    }
}

fn run(ws: Weak<Workspace>, rx: mpsc::Receiver<notify::Result<notify::Event>>) {
    let mut pending: Vec<PathBuf> = Vec::new();
    loop {
        match rx.recv_timeout(QUIET) {
            Ok(Ok(event)) if relevant(&event.kind) => pending.extend(event.paths),
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if pending.is_empty() {
                    continue;
                }
                let Some(ws) = ws.upgrade() else { return };
                flush(&ws, std::mem::take(&mut pending));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn flush(ws: &Workspace, paths: Vec<PathBuf>) {
    // One event per (slug, kind), with the union of affected URIs.
    let mut merged: BTreeMap<(String, u8), (EventKind, Vec<String>)> = BTreeMap::new();
    for path in paths {
        if ws.own_writes().is_own(&path) {
            continue;
        }
        let Some((kind, slug, uris)) = ws.classify(&path) else {
            continue;
        };
        let exists = path.symlink_metadata().is_ok();
        // A vanished change folder was archived or deleted; the archive side reports the former.
        if matches!(kind, EventKind::Opened | EventKind::Archived) && !exists {
            continue;
        }
        let entry = merged.entry((slug, kind as u8)).or_insert((kind, Vec::new()));
        for uri in uris {
            if !entry.1.contains(&uri) {
                entry.1.push(uri);
            }
        }
    }
    for ((slug, _), (kind, uris)) in merged {
        let _ = ws.sender().send(Event { kind, slug, at: time::OffsetDateTime::now_utc(), uris, external: true });
    }
}
