//! `change.list`: drafts and archived changes in a stable order, paged by opaque tokens, and
//! the lookups other calls share (where a slug lives now, its latest archive).

use super::*;

impl Workspace {
    pub fn list_changes(&self, filter: StatusFilter, page_size: usize, page_token: &str) -> Result<Page> {
        let after = if page_token.is_empty() { None } else { Some(page_token::decode(page_token, filter.as_str())?) };
        let drafts = if filter == StatusFilter::Archived { Arc::from([]) } else { self.draft_slugs()? };
        let archived = if filter == StatusFilter::Draft { Arc::from([]) } else { self.archive_names()? };
        // The order is by key: `0:<slug>` for the drafts, then `1:<folder>` for the archive,
        // and a page token holds the last key served.
        let key = |prefix: &str, name: &str| format!("{prefix}{name}");
        // Whether the key `prefix` + `name` was served: at or before the token's.
        let served = |prefix: &str, name: &str, after: &str| prefix.bytes().chain(name.bytes()).le(after.bytes());
        let (first_draft, first_archived) = match &after {
            Some(after) => (
                drafts.partition_point(|slug| served("0:", slug.as_str(), after)),
                archived.partition_point(|name| served("1:", name, after)),
            ),
            None => (0, 0),
        };
        let remaining = drafts.len() - first_draft + archived.len() - first_archived;
        let page: Vec<Entry> = drafts[first_draft..]
            .iter()
            .map(|slug| Entry::Draft(slug.clone()))
            .chain(archived[first_archived..].iter().map(|name| Entry::Archived(name.clone())))
            .take(page_size)
            .collect();
        let mut items = Vec::with_capacity(page.len());
        for entry in &page {
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
        let next_page_token = match page.last() {
            Some(last) if remaining > page.len() => {
                let last = match last {
                    Entry::Draft(slug) => key("0:", slug.as_str()),
                    Entry::Archived(name) => key("1:", name),
                };
                Some(page_token::encode(filter.as_str(), &last))
            }
            _ => None,
        };
        Ok(Page { items, next_page_token, total: drafts.len() + archived.len() })
    }

    /// The drafts' slugs, sorted.
    pub(super) fn draft_slugs(&self) -> Result<Arc<[Slug]>> {
        self.draft_listing.get(&self.changes, || {
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
        })
    }

    /// The dated folders of the archive, sorted; none while the archive folder is missing.
    fn archive_names(&self) -> Result<Arc<[String]>> {
        if !self.archive_exists()? {
            return Ok(Arc::from([]));
        }
        self.archive_listing.get(&self.archive, || {
            let mut out = Vec::new();
            let entries = fs::read_dir(&self.archive).map_err(|e| Error::io("list archive", &self.archive, e))?;
            for entry in entries.flatten() {
                let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
                if let (true, Some(name)) = (is_dir, entry.file_name().to_str())
                    && archive_slug(name).is_some()
                {
                    out.push(name.to_string());
                }
            }
            Ok(out)
        })
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
    pub(super) fn archive_root(&self) -> Result<&Path> {
        if !self.archive_exists()? {
            match fs::create_dir(&self.archive) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io("create archive", &self.archive, e)),
            }
        }
        Ok(&self.archive)
    }

    pub(super) fn summarize_draft(&self, slug: &Slug, dir: &Path) -> Result<Summary> {
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
    pub(super) fn latest_archive(&self, slug: &Slug) -> Result<Option<(String, PathBuf)>> {
        let mut found = Vec::new();
        for name in self.archive_names()?.iter() {
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
            let dir = self.archive.join(name);
            let mine = match read_receipt(&dir) {
                Some(receipt) => receipt.slug == slug.as_str(),
                None => n == 1,
            };
            if mine {
                found.push(((date.to_string(), n), name.clone(), dir));
            }
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(found.pop().map(|(_, name, dir)| (name, dir)))
    }

    /// A draft's folder, else its newest archive's.
    pub(super) fn locate(&self, slug: &Slug) -> Result<(PathBuf, Summary)> {
        if let Some(dir) = self.existing_draft(slug)? {
            let summary = self.summarize_draft(slug, &dir)?;
            return Ok((dir, summary));
        }
        match self.latest_archive(slug)? {
            Some((name, dir)) => Ok((dir, self.summarize_archived(&name)?)),
            None => Err(Error::ChangeNotFound { slug: slug.to_string() }),
        }
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
