//! Validated newtypes for everything a client sends. Parsing is the only way to
//! build one, so code that holds a `Slug` knows it is safe to join to a path.
use std::fmt;

use super::checklist::{Fences, heading, lines};
use crate::error::{Error, Result};

/// A change identifier: 3 to 64 chars of `[a-z0-9-]`, starting and ending with a
/// letter or digit. Safe as a single path component by construction.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slug(String);

impl Slug {
    pub const MIN_LEN: usize = 3;
    pub const MAX_LEN: usize = 64;

    pub fn parse(value: &str) -> Result<Self> {
        let bad = |why| Err(Error::InvalidSlug { value: value.to_string(), why });
        if value.len() < Self::MIN_LEN {
            return bad("must be at least 3 characters");
        }
        if value.len() > Self::MAX_LEN {
            return bad("must be at most 64 characters");
        }
        if !value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return bad("only lowercase letters, digits and hyphens are allowed");
        }
        if value.starts_with('-') || value.ends_with('-') {
            return bad("must start and end with a letter or digit");
        }
        if value == "archive" {
            return bad("`archive` is reserved for the archive folder");
        }
        Ok(Slug(value.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Slug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A one-line human title, 1 to 200 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Title(String);

impl Title {
    pub const MAX_CHARS: usize = 200;

    pub fn parse(value: &str) -> Result<Self> {
        let trimmed = value.trim();
        if trimmed.is_empty() {
            return Err(Error::invalid("title", "must not be empty"));
        }
        let chars = trimmed.chars().count();
        if chars > Self::MAX_CHARS {
            return Err(Error::TooLarge { field: "title", size: chars, limit: Self::MAX_CHARS });
        }
        if trimmed.chars().any(char::is_control) {
            return Err(Error::invalid("title", "must be one line without control characters"));
        }
        Ok(Title(trimmed.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Free text for the proposal's `## Why`; multi-line, bounded, no NUL or other
/// control characters except tab and newlines.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rationale(String);

impl Rationale {
    pub const MAX_CHARS: usize = 8192;

    pub fn parse(value: &str) -> Result<Self> {
        let chars = value.chars().count();
        if chars > Self::MAX_CHARS {
            return Err(Error::TooLarge { field: "rationale", size: chars, limit: Self::MAX_CHARS });
        }
        if value.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) {
            return Err(Error::invalid("rationale", "must not contain control characters"));
        }
        check_fits_in_a_section(value)?;
        Ok(Rationale(value.trim().replace("\r\n", "\n")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Who holds a lock: 1 to 128 chars of ASCII letters, digits and `._@:/+-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner(String);

impl Owner {
    pub const MAX_LEN: usize = 128;

    pub fn parse(value: &str) -> Result<Self> {
        if value.is_empty() {
            return Err(Error::invalid("owner", "must not be empty"));
        }
        if value.len() > Self::MAX_LEN {
            return Err(Error::TooLarge { field: "owner", size: value.len(), limit: Self::MAX_LEN });
        }
        let allowed = |b: u8| b.is_ascii_alphanumeric() || b"._@:/+-".contains(&b);
        if !value.bytes().all(allowed) {
            return Err(Error::invalid("owner", "only ASCII letters, digits and ._@:/+- are allowed"));
        }
        Ok(Owner(value.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Lock time to live, 60 to 86400 seconds; 0 from the wire means the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttl(u32);

impl Ttl {
    pub const MIN: u32 = 60;
    pub const MAX: u32 = 86_400;
    pub const DEFAULT: Ttl = Ttl(3600);

    pub fn parse(seconds: u32) -> Result<Self> {
        match seconds {
            0 => Ok(Self::DEFAULT),
            s if (Self::MIN..=Self::MAX).contains(&s) => Ok(Ttl(s)),
            s => Err(Error::invalid("ttl_seconds", format!("{s} is outside 60..=86400"))),
        }
    }

    pub fn seconds(self) -> u32 {
        self.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TemplateKind {
    #[default]
    Feature,
    Bugfix,
    Chore,
}

impl TemplateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TemplateKind::Feature => "feature",
            TemplateKind::Bugfix => "bugfix",
            TemplateKind::Chore => "chore",
        }
    }
}

/// The rationale becomes the body of the proposal's `## Why`, read by the same outline rules
/// as validation: a heading of level 1 or 2 would end that section early, and an unclosed code
/// fence would hide every heading after it, so the change would fail validation from birth.
fn check_fits_in_a_section(value: &str) -> Result<()> {
    // Markdown ends a line at a lone CR too, which `lines` (and a reader of the file) would not
    // split on here: `text\r# Title` hides a heading from this check.
    if let Some(at) =
        value.bytes().enumerate().position(|(i, b)| b == b'\r' && value.as_bytes().get(i + 1) != Some(&b'\n'))
    {
        let line = value[..at].matches('\n').count() + 1;
        return Err(Error::invalid(
            "rationale",
            format!("line {line}: a carriage return without a line feed; end lines with \\n or \\r\\n"),
        ));
    }
    let split = |number: u32, level: u8| {
        Error::invalid(
            "rationale",
            format!(
                "line {number}: a level-{level} heading would split the proposal's `## Why` section; use `###` or deeper"
            ),
        )
    };
    let mut fences = Fences::default();
    let mut after_text = false;
    for line in lines(value) {
        if fences.is_code(line.text) {
            after_text = false;
            continue;
        }
        if let Some((level @ 1..=2, _)) = heading(line.text) {
            return Err(split(line.number, level));
        }
        // A setext heading: `===` or `---` right under a line of paragraph text.
        if after_text && let Some(level) = setext_underline(line.text) {
            return Err(split(line.number, level));
        }
        after_text = is_paragraph_text(line.text);
    }
    if fences.is_open() {
        return Err(Error::invalid("rationale", "opens a code fence (``` or ~~~) that it does not close"));
    }
    Ok(())
}

/// The level a setext underline gives the line above it: `=` 1, `-` 2 (up to three spaces
/// before, spaces after).
fn setext_underline(line: &str) -> Option<u8> {
    let indent = line.bytes().take_while(|&b| b == b' ').count();
    let marks = line[indent..].trim_end();
    if indent > 3 || marks.is_empty() {
        return None;
    }
    if marks.bytes().all(|b| b == b'=') {
        Some(1)
    } else if marks.bytes().all(|b| b == b'-') {
        Some(2)
    } else {
        None
    }
}

/// A line that can be a paragraph's (so a setext heading's) text: not blank, not a heading,
/// a list item or a quote, whose own `---` beneath is a rule or a list, not a heading.
fn is_paragraph_text(line: &str) -> bool {
    let text = line.trim_start();
    !text.is_empty()
        && heading(line).is_none()
        && !text.starts_with(['-', '*', '+', '>'])
        && !text.split_once(['.', ')']).is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_follow_the_rule() {
        for ok in ["abc", "add-login-throttle", "a-b", "0ab", &"a".repeat(64), "a--b"] {
            assert!(Slug::parse(ok).is_ok(), "{ok} should be valid");
        }
        for bad in [
            "",
            "ab",
            "-ab",
            "ab-",
            "Abc",
            "a_b",
            "a/b",
            "../x",
            "a b",
            "abc\0",
            &"a".repeat(65),
            "ａbc",
            "archive",
            "a.b",
        ] {
            assert!(Slug::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn ttl_bounds_and_default() {
        assert_eq!(Ttl::parse(0).unwrap(), Ttl::DEFAULT);
        assert!(Ttl::parse(59).is_err());
        assert!(Ttl::parse(60).is_ok());
        assert!(Ttl::parse(86_400).is_ok());
        assert!(Ttl::parse(86_401).is_err());
    }

    #[test]
    fn titles_are_one_line() {
        assert!(Title::parse("Add a thing").is_ok());
        assert!(Title::parse("  ").is_err());
        assert!(Title::parse("a\nb").is_err());
        assert!(Title::parse(&"x".repeat(201)).is_err());
    }

    #[test]
    fn owners_are_restricted() {
        assert!(Owner::parse("alice@example.com").is_ok());
        assert!(Owner::parse("agent:claude/1").is_ok());
        assert!(Owner::parse("").is_err());
        assert!(Owner::parse("a b").is_err());
        assert!(Owner::parse(&"a".repeat(129)).is_err());
    }
}
