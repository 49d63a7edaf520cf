//! Small filesystem primitives with the durability and atomicity the rest of the
//! workspace relies on.
use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read, Write},
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
    time::SystemTime,
};

/// Why a rename between the workspace's folders failed with `EXDEV`.
pub const CROSS_DEVICE: &str = ".staging, changes/ and changes/archive/ are not all on one mount: a change is built \
     in .staging and moved into changes/, then into changes/archive/, with a rename, which cannot cross mounts \
     (another file system, a bind mount); put them on one";

/// A unique sibling name for temporary files: dot-prefixed so listings skip it,
/// `.tmp`-suffixed so a sweep can recognise it.
pub fn temp_sibling(path: &Path) -> PathBuf {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    path.with_file_name(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()))
}

/// Whether `name` is one of ours: a `temp_sibling` (`.tmp`) or a lock set aside (`.stale`).
pub fn is_temp_name(name: &str) -> bool {
    let Some(stem) = name.strip_suffix(".tmp").or_else(|| name.strip_suffix(".stale")) else {
        return false;
    };
    let unique = stem.rsplit('.').next().unwrap_or_default();
    name.starts_with('.') && unique.len() == 32 && unique.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A file written aside under a `temp_sibling` name, removed when dropped unless it was
/// renamed into place: an error, a full disk or an early return leaves nothing behind.
pub struct TempFile {
    path: PathBuf,
    placed: bool,
}

impl TempFile {
    /// Writes `bytes` to a new temporary sibling of `target` and syncs it.
    pub fn beside(target: &Path, bytes: &[u8]) -> io::Result<Self> {
        let path = temp_sibling(target);
        let mut file = OpenOptions::new().write(true).create_new(true).open(&path)?;
        // Ours from here: a write that fails half-way (a full disk) removes it.
        let temp = TempFile { path, placed: false };
        file.write_all(bytes)?;
        file.sync_all()?;
        Ok(temp)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the file to `target`, replacing what is there.
    pub fn rename_to(mut self, target: &Path) -> io::Result<()> {
        fs::rename(&self.path, target)?;
        self.placed = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.placed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Writes `bytes` to a new file that must not exist yet, and syncs it.
pub fn write_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// A file replaced by rename: done and visible. `synced` is the fsync of its folder, which
/// makes the rename survive a crash of the machine; see `Workspace::settle_commit`.
#[must_use]
pub struct Replaced {
    pub synced: io::Result<()>,
}

/// Replaces `path` atomically: readers see the old or the new content, never a mix. The new
/// file keeps the old one's permissions: a `tasks.md` made private stays private.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> io::Result<Replaced> {
    replace(TempFile::beside(path, bytes)?, path, None).map(|replaced| replaced.unwrap_or(Replaced { synced: Ok(()) }))
}

/// `atomic_write` of `temp`, the new content already written aside (`TempFile::beside(path, ..)`:
/// what can fail for want of space has failed by then), done only if the file at `path` is
/// still `expected` right before the rename; `Ok(None)`: it was not, and nothing was written.
/// A write landing between that look and the rename is still lost: the window is two system
/// calls, not a read and a parse.
pub fn replace_if(temp: TempFile, path: &Path, expected: FileId) -> io::Result<Option<Replaced>> {
    replace(temp, path, Some(expected))
}

fn replace(temp: TempFile, path: &Path, expected: Option<FileId>) -> io::Result<Option<Replaced>> {
    if let Ok(old) = path.symlink_metadata()
        && old.is_file()
    {
        fs::set_permissions(temp.path(), old.permissions())?;
    }
    if let Some(expected) = expected
        && FileId::at(path)? != Some(expected)
    {
        return Ok(None);
    }
    temp.rename_to(path)?;
    Ok(Some(Replaced { synced: sync_parent(path) }))
}

/// Who a file is, as far as the file system can tell: the same inode with the same size,
/// modification and change times holds the same content (writing in place moves the times).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    changed: (i64, i64),
    pub modified: SystemTime,
}

impl FileId {
    pub fn of(meta: &fs::Metadata) -> Self {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
            changed: (meta.ctime(), meta.ctime_nsec()),
            modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        }
    }

    /// The file at `path` now, not following a symbolic link; `None` if there is none.
    pub fn at(path: &Path) -> io::Result<Option<Self>> {
        match path.symlink_metadata() {
            Ok(meta) => Ok(Some(FileId::of(&meta))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Holds an exclusive advisory lock (`flock`) on the folder `dir` until the returned file is
/// dropped: in tests, another process's turn at a change (the server waits for its own in
/// `Workspace::change_turn`, which gives up when its caller does).
#[cfg(test)]
pub fn lock_dir(dir: &Path) -> io::Result<File> {
    let file = File::open(dir)?;
    file.lock()?;
    Ok(file)
}

/// Makes what was created in the folder `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Makes a rename or create in `path`'s directory durable.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Renames `from` to `to`, failing with `AlreadyExists` if `to` exists (even as an
/// empty directory, which plain `rename` would silently replace).
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use std::{ffi::CString, os::unix::ffi::OsStrExt};
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other);
    let (from_c, to_c) = (c(from)?, c(to)?);
    // SAFETY: both pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::renameat2(libc::AT_FDCWD, from_c.as_ptr(), libc::AT_FDCWD, to_c.as_ptr(), libc::RENAME_NOREPLACE)
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        // Filesystems without RENAME_NOREPLACE: fall back to a checked rename. Plain
        // rename refuses a non-empty target, and every change folder is non-empty.
        Some(libc::EINVAL) | Some(libc::ENOSYS) => {
            if to.symlink_metadata().is_ok() {
                return Err(io::Error::from(io::ErrorKind::AlreadyExists));
            }
            fs::rename(from, to)
        }
        Some(libc::ENOTEMPTY) => Err(io::Error::from(io::ErrorKind::AlreadyExists)),
        _ => Err(err),
    }
}

/// Reads a regular file as UTF-8 text of at most `cap` bytes.
pub enum TextRead {
    Text(String),
    Missing,
    TooLarge(u64),
    NotText,
    NotRegular,
}

pub fn read_text_capped(path: &Path, cap: u64) -> io::Result<TextRead> {
    read_text_snapshot(path, cap).map(|snapshot| snapshot.read)
}

/// A file read as text, and who it was while it was read.
pub struct TextSnapshot {
    pub read: TextRead,
    /// `None` unless the file was regular text and did not change while it was read.
    pub id: Option<FileId>,
}

/// `read_text_capped`, telling whether the file changed while it was read. The file is
/// opened first and then looked at through its descriptor, so a file deleted, or replaced by
/// a folder, between a look and the read is read as what it is when opened.
pub fn read_text_snapshot(path: &Path, cap: u64) -> io::Result<TextSnapshot> {
    let unread = |read| Ok(TextSnapshot { read, id: None });
    let (file, before) = match open_regular(path)? {
        Opened::File(file, meta) => (file, meta),
        Opened::Missing => return unread(TextRead::Missing),
        Opened::NotRegular => return unread(TextRead::NotRegular),
    };
    if before.len() > cap {
        return unread(TextRead::TooLarge(before.len()));
    }
    let mut bytes = Vec::with_capacity(before.len() as usize);
    // `take` guards against a file that grows while it is read.
    (&file).take(cap + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return unread(TextRead::TooLarge(bytes.len() as u64));
    }
    let after = FileId::of(&file.metadata()?);
    let steady = FileId::of(&before) == after && bytes.len() as u64 == after.size;
    match String::from_utf8(bytes) {
        Ok(text) => Ok(TextSnapshot { read: TextRead::Text(text), id: steady.then_some(after) }),
        Err(_) => unread(TextRead::NotText),
    }
}

enum Opened {
    File(File, fs::Metadata),
    Missing,
    NotRegular,
}

/// Opens `path` for reading if it is a regular file, without following a symbolic link and
/// without blocking on a FIFO.
fn open_regular(path: &Path) -> io::Result<Opened> {
    let opened = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path);
    let file = match opened {
        Ok(file) => file,
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => {
            return Ok(Opened::Missing);
        }
        // A symbolic link (refused by O_NOFOLLOW) or a socket.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENXIO)) => return Ok(Opened::NotRegular),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(Opened::NotRegular);
    }
    Ok(Opened::File(file, meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temp_file_goes_unless_it_was_renamed_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("tasks.md");
        let dropped = TempFile::beside(&target, b"abandoned").unwrap();
        let name = dropped.path().file_name().unwrap().to_str().unwrap().to_string();
        assert!(is_temp_name(&name), "{name}");
        drop(dropped);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        TempFile::beside(&target, b"kept").unwrap().rename_to(&target).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"kept");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
