//! Confinement: turning client-supplied relative paths into paths that are
//! guaranteed to stay inside a base directory.
use std::path::{Path, PathBuf};

pub use crate::domain::relpath::check_relative;
use crate::error::{Error, Result};

/// Joins a checked relative path to `base` and proves, after resolving symlinks,
/// that an existing target is still inside `base`. A path that does not exist is
/// returned as joined (callers then report not-found).
pub fn resolve_inside(base: &Path, value: &str) -> Result<PathBuf> {
    let parts = check_relative(value)?;
    let mut joined = base.to_path_buf();
    joined.extend(parts);
    if joined.symlink_metadata().is_err() {
        return Ok(joined);
    }
    let escape = || Error::InvalidPath { value: value.to_string(), why: "resolves outside the change" };
    // `base` is proven a real folder: were it a symlink, its target would become the
    // boundary, and a `specs` linked to `/etc` would serve `/etc` (the earlier server's bug).
    if !base.symlink_metadata().is_ok_and(|m| m.is_dir()) {
        return Err(escape());
    }
    let real_base = base.canonicalize().map_err(|e| Error::internal("canonicalize base", e))?;
    match joined.canonicalize() {
        Ok(real) if real.starts_with(&real_base) => Ok(real),
        // A dangling or looping symlink, or one that points elsewhere.
        _ => Err(escape()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_out_of_the_base_are_rejected() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "x").unwrap();
        let base = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), base.path().join("link")).unwrap();
        std::fs::write(base.path().join("ok.md"), "y").unwrap();
        std::os::unix::fs::symlink(base.path().join("ok.md"), base.path().join("inner")).unwrap();
        assert!(matches!(resolve_inside(base.path(), "link"), Err(Error::InvalidPath { .. })));
        assert!(resolve_inside(base.path(), "inner").is_ok());
        assert!(resolve_inside(base.path(), "missing.md").is_ok());
    }

    #[test]
    fn a_base_that_is_a_symlink_is_not_the_boundary() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "x").unwrap();
        let change = tempfile::tempdir().unwrap();
        let specs = change.path().join("specs");
        std::os::unix::fs::symlink(outside.path(), &specs).unwrap();
        assert!(matches!(resolve_inside(&specs, "secret"), Err(Error::InvalidPath { .. })));
    }
}
