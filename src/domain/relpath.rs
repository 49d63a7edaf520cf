//! Lexical checks of client-supplied relative paths (no filesystem access; the
//! workspace adds the symlink check on top).
use crate::error::{Error, Result};

pub const MAX_PATH_LEN: usize = 512;
const MAX_COMPONENT_LEN: usize = 128;
const MAX_DEPTH: usize = 8;

/// Checks a relative path from a client (e.g. `auth/spec.md` under a change's
/// `specs/`) lexically: components of `[A-Za-z0-9._-]`, not starting with a dot,
/// no empty components. That excludes `..`, absolute paths, backslashes, NUL,
/// percent-escapes and every unicode look-alike by construction.
pub fn check_relative(value: &str) -> Result<Vec<&str>> {
    let bad = |why| Err(Error::InvalidPath { value: value.to_string(), why });
    if value.is_empty() {
        return bad("must not be empty");
    }
    if value.len() > MAX_PATH_LEN {
        return bad("is too long");
    }
    if value.starts_with('/') {
        return bad("must be relative");
    }
    let parts: Vec<&str> = value.split('/').collect();
    if parts.len() > MAX_DEPTH {
        return bad("is nested too deeply");
    }
    for part in &parts {
        if part.is_empty() {
            return bad("has an empty component");
        }
        if *part == "." || *part == ".." {
            return bad("must not contain . or .. components");
        }
        if part.starts_with('.') {
            return bad("must not name hidden files");
        }
        if part.len() > MAX_COMPONENT_LEN {
            return bad("has a component that is too long");
        }
        if !part.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
            return bad("may only contain ASCII letters, digits, '.', '_' and '-'");
        }
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_relative_paths() {
        assert!(check_relative("auth/spec.md").is_ok());
        assert!(check_relative("a_b-c.d/x.md").is_ok());
    }

    #[test]
    fn rejects_hostile_paths() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a//b",
            "./a",
            ".hidden",
            "a\\b",
            "a\0b",
            "a%2f..",
            "ａ.md",
            "a/\u{202e}b",
            "x\u{200d}y",
            "a b",
        ] {
            assert!(check_relative(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(check_relative(&"a/".repeat(20)).is_err());
        assert!(check_relative(&"a".repeat(600)).is_err());
    }
}
