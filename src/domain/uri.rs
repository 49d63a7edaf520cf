//! Resource URIs: `changes://active` and `change://<slug>/<part>`.
use super::Slug;
use super::relpath::check_relative;
use crate::error::{Error, Result};

pub const ACTIVE: &str = "changes://active";
const MAX_URI_LEN: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceUri {
    /// The first page of drafts, as JSON.
    Active,
    Proposal(Slug),
    Tasks(Slug),
    /// A file under the change's `specs/`, by checked relative path.
    Delta(Slug, String),
    Receipt(Slug),
}

impl ResourceUri {
    pub fn parse(uri: &str) -> Result<Self> {
        let bad = |why| Err(Error::InvalidUri { value: uri.to_string(), why });
        if uri.len() > MAX_URI_LEN {
            return bad("is too long");
        }
        if uri == ACTIVE {
            return Ok(ResourceUri::Active);
        }
        let Some(rest) = uri.strip_prefix("change://") else {
            return bad("must be changes://active or start with change://");
        };
        let (slug, part) = rest.split_once('/').unwrap_or((rest, ""));
        let slug = Slug::parse(slug)?;
        match part.split_once('/') {
            None if part == "proposal" => Ok(ResourceUri::Proposal(slug)),
            None if part == "tasks" => Ok(ResourceUri::Tasks(slug)),
            None if part == "receipt" => Ok(ResourceUri::Receipt(slug)),
            Some(("delta", path)) => {
                check_relative(path)?;
                Ok(ResourceUri::Delta(slug, path.to_string()))
            }
            _ => bad("expected change://<slug>/proposal, /tasks, /receipt or /delta/<path>"),
        }
    }

    /// What every URI of the change starts with.
    pub fn change_prefix(slug: &str) -> String {
        format!("change://{slug}/")
    }

    pub fn proposal(slug: &str) -> String {
        format!("change://{slug}/proposal")
    }

    pub fn tasks(slug: &str) -> String {
        format!("change://{slug}/tasks")
    }

    pub fn delta(slug: &str, path: &str) -> String {
        format!("change://{slug}/delta/{path}")
    }

    pub fn receipt(slug: &str) -> String {
        format!("change://{slug}/receipt")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!(ResourceUri::parse("changes://active").unwrap(), ResourceUri::Active);
        let s = || Slug::parse("add-x").unwrap();
        assert_eq!(ResourceUri::parse("change://add-x/proposal").unwrap(), ResourceUri::Proposal(s()));
        assert_eq!(ResourceUri::parse("change://add-x/tasks").unwrap(), ResourceUri::Tasks(s()));
        assert_eq!(ResourceUri::parse("change://add-x/receipt").unwrap(), ResourceUri::Receipt(s()));
        assert_eq!(
            ResourceUri::parse("change://add-x/delta/auth/spec.md").unwrap(),
            ResourceUri::Delta(s(), "auth/spec.md".into())
        );
    }

    #[test]
    fn rejects_hostile_uris() {
        for bad in [
            "file:///etc/passwd",
            "change://../proposal",
            "change://add-x/delta/../../proposal.md",
            "change://add-x/delta//etc/passwd",
            "change://add-x/delta/x%00y",
            "change://add-x/delta/",
            "change://add-x/other",
            "change://add-x",
            "change://ADD/proposal",
        ] {
            assert!(ResourceUri::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
