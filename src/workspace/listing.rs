//! A folder's entries kept between calls and read again only when the folder changed: every
//! page of `change.list` and every look-up of an archived change needs the archive's names,
//! and reading and sorting 20,000 of them cost about 30 ms a call.
//!
//! "Changed" is the folder's mtime, which every entry added, removed or renamed moves. File
//! systems stamp it from a coarse clock (a few milliseconds; whole seconds on some), so a second
//! change within the tick of the first leaves it as it was. A listing read in that tick may miss
//! the second change, so it is trusted only once it was read [`SETTLE`] after the stamp; until
//! then every call reads the folder again, as git does with its racily clean index entries.
//! On NFS another host's change shows once the client's attribute cache lets the new mtime
//! through, as it does for the folder's own listing there.

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

/// How long after a folder's stamp a listing read then is trusted.
const SETTLE: Duration = Duration::from_secs(2);

pub struct Listing<T> {
    kept: Mutex<Option<Kept<T>>>,
}

struct Kept<T> {
    stamp: SystemTime,
    read_at: SystemTime,
    entries: Arc<[T]>,
}

impl<T> Default for Listing<T> {
    fn default() -> Self {
        Listing { kept: Mutex::new(None) }
    }
}

impl<T: Ord> Listing<T> {
    /// The entries of `dir` as `read` finds them, sorted; from memory while the folder's stamp
    /// is the one they were read under and they were read long enough after it.
    pub fn get<E>(&self, dir: &Path, read: impl FnOnce() -> Result<Vec<T>, E>) -> Result<Arc<[T]>, E> {
        // Without a stamp (a file system without mtimes, a folder gone) nothing is kept.
        let stamp = dir.metadata().and_then(|m| m.modified()).ok();
        if let Some(stamp) = stamp {
            let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(kept) = kept.as_ref().filter(|k| k.stamp == stamp && is_settled(stamp, k.read_at)) {
                return Ok(kept.entries.clone());
            }
        }
        // Taken before the folder is read: a change while it is read then counts as after it.
        let read_at = SystemTime::now();
        let mut entries = read()?;
        entries.sort_unstable();
        let entries: Arc<[T]> = entries.into();
        if let Some(stamp) = stamp {
            let fresh = Kept { stamp, read_at, entries: entries.clone() };
            *self.kept.lock().unwrap_or_else(|p| p.into_inner()) = Some(fresh);
        }
        Ok(entries)
    }
}

/// Whether a listing read at `read_at` is past the tick of the stamp. A clock set back makes
/// `read_at` earlier than the stamp: not settled, so the folder is read again.
fn is_settled(stamp: SystemTime, read_at: SystemTime) -> bool {
    read_at.duration_since(stamp).is_ok_and(|after| after >= SETTLE)
}

#[cfg(test)]
mod tests {
    use std::{cell::Cell, fs, fs::FileTimes};

    use super::*;

    fn names(dir: &Path) -> Result<Vec<String>, std::io::Error> {
        fs::read_dir(dir)?.map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned())).collect()
    }

    /// `dir` through `listing`, counting the times the folder itself is read.
    fn list(listing: &Listing<String>, dir: &Path, reads: &Cell<u32>) -> Result<Arc<[String]>, std::io::Error> {
        listing.get(dir, || {
            reads.set(reads.get() + 1);
            names(dir)
        })
    }

    /// Sets the folder's stamp `ago` in the past, as if its last change were that old.
    fn stamp_ago(dir: &Path, ago: Duration) {
        let then = SystemTime::now() - ago;
        fs::File::open(dir).unwrap().set_times(FileTimes::new().set_modified(then)).unwrap();
    }

    #[test]
    fn a_settled_folder_is_read_once_and_a_change_is_seen_at_once() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("b")).unwrap();
        stamp_ago(dir.path(), Duration::from_secs(60));
        let listing = Listing::default();
        let reads = Cell::new(0);
        let get = || list(&listing, dir.path(), &reads);
        assert_eq!(&*get().unwrap(), ["b"]);
        assert_eq!(&*get().unwrap(), ["b"]);
        assert_eq!(reads.get(), 1, "the second call is answered from memory");

        fs::create_dir(dir.path().join("a")).unwrap();
        assert_eq!(&*get().unwrap(), ["a", "b"], "sorted, and the new entry is there");
        assert_eq!(reads.get(), 2);
    }

    #[test]
    fn a_listing_read_in_the_tick_of_a_change_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("a")).unwrap();
        let listing = Listing::default();
        let reads = Cell::new(0);
        let get = || list(&listing, dir.path(), &reads);
        get().unwrap();
        // A second change in the same tick: the stamp stays where it was.
        let stamp = dir.path().metadata().unwrap().modified().unwrap();
        fs::create_dir(dir.path().join("b")).unwrap();
        fs::File::open(dir.path()).unwrap().set_times(FileTimes::new().set_modified(stamp)).unwrap();
        assert_eq!(&*get().unwrap(), ["a", "b"], "read again: the first listing was too close to its stamp");
        assert_eq!(reads.get(), 2);
    }

    #[test]
    fn a_failed_read_is_passed_on_and_nothing_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let listing: Listing<String> = Listing::default();
        let gone = dir.path().join("gone");
        assert!(listing.get(&gone, || names(&gone)).is_err());
        assert!(listing.kept.lock().unwrap().is_none());
    }
}
