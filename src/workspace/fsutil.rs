//! Small filesystem primitives with the durability and atomicity the rest of the
//! workspace relies on.
use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read, Write},
    path::Path,
};

/// A unique sibling name for temporary files: dot-prefixed so listings skip it,
/// `.tmp`-suffixed so a sweep can recognise it.
pub fn temp_sibling(path: &Path) -> std::path::PathBuf {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    path.with_file_name(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()))
}

/// Writes `bytes` to a new file that must not exist yet, and syncs it.
pub fn write_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Replaces `path` atomically: readers see the old or the new content, never a mix. The new
/// file keeps the old one's permissions: a `tasks.md` made private stays private.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let temp = temp_sibling(path);
    let keep_mode = |()| match path.symlink_metadata() {
        Ok(old) if old.is_file() => fs::set_permissions(&temp, old.permissions()),
        _ => Ok(()),
    };
    let result = write_new(&temp, bytes).and_then(keep_mode).and_then(|()| fs::rename(&temp, path));
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result?;
    sync_parent(path)
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
    let meta = match path.symlink_metadata() {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(TextRead::Missing),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_file() {
        return Ok(TextRead::NotRegular);
    }
    if meta.len() > cap {
        return Ok(TextRead::TooLarge(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // `take` guards against a file that grows between the stat and the read.
    File::open(path)?.take(cap + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Ok(TextRead::TooLarge(bytes.len() as u64));
    }
    match String::from_utf8(bytes) {
        Ok(s) => Ok(TextRead::Text(s)),
        Err(_) => Ok(TextRead::NotText),
    }
}
