//! Resources: reading one by URI, and listing them by pages keyed on the URI.

use super::show::read_spec_files;
use super::*;

impl Workspace {
    pub fn read_resource(&self, uri: &ResourceUri, raw: &str) -> Result<Resource> {
        let not_found = || Error::ResourceNotFound { uri: raw.to_string() };
        let (path, mime) = match uri {
            ResourceUri::Active => {
                let page = self.list_changes(StatusFilter::Draft, 50, "")?;
                let bytes = serde_json::to_vec_pretty(&active_json(&page))
                    .map_err(|e| Error::internal("encode changes://active", e))?;
                return Ok(Resource { mime_type: "application/json", bytes });
            }
            ResourceUri::Proposal(slug) => (self.locate(slug)?.0.join("proposal.md"), "text/markdown"),
            ResourceUri::Tasks(slug) => (self.locate(slug)?.0.join("tasks.md"), "text/markdown"),
            ResourceUri::Delta(slug, rel) => {
                let specs = self.locate(slug)?.0.join("specs");
                (paths::resolve_inside(&specs, rel)?, delta_mime(rel))
            }
            ResourceUri::Receipt(slug) => {
                let (_, dir) = self.latest_archive(slug)?.ok_or_else(not_found)?;
                (dir.join(RECEIPT_FILE), "application/json")
            }
        };
        let meta = match path.symlink_metadata() {
            Ok(m) if m.is_file() => m,
            Ok(m) if m.file_type().is_symlink() => {
                // Only reachable for proposal/tasks: delta paths were resolved above.
                return Err(Error::InvalidPath { value: raw.to_string(), why: "is a symbolic link" });
            }
            _ => return Err(not_found()),
        };
        if meta.len() > self.max_resource_bytes {
            return Err(Error::ResourceTooLarge {
                uri: raw.to_string(),
                size: meta.len(),
                limit: self.max_resource_bytes,
            });
        }
        let bytes = fs::read(&path).map_err(|e| match e.kind() {
            // Gone, or made a folder, since the look above.
            io::ErrorKind::NotFound | io::ErrorKind::IsADirectory => not_found(),
            _ => Error::io("read resource", &path, e),
        })?;
        Ok(Resource { mime_type: mime, bytes })
    }

    /// The readable resources, in URI order: all of them (`page_size` 0), or a
    /// page of at most `page_size` after the one `page_token` names, with the
    /// token of the next page (empty on the last). Keyset paging on the URI,
    /// so a change opened or archived between pages neither repeats nor skips
    /// another's resources, and only the changes on the page are read.
    pub fn list_resources(
        &self,
        only: Option<&Slug>,
        page_size: usize,
        page_token: &str,
    ) -> Result<(Vec<ResourceEntry>, String)> {
        let filter = match only {
            Some(slug) => format!("resources:{slug}"),
            None => "resources".to_string(),
        };
        let after = if page_token.is_empty() { None } else { Some(page_token::decode(page_token, &filter)?) };
        let wanted = if page_size == 0 { usize::MAX } else { page_size + 1 };
        let mut slugs = match only {
            Some(s) => vec![s.clone()],
            None => self.draft_slugs()?.to_vec(),
        };
        // Every URI of a change starts with `change://<slug>/`, and no slug holds a `/`, so
        // sorting by that prefix puts whole changes in URI order.
        slugs.sort_by_cached_key(|slug| format!("{slug}/"));
        let mut out = Vec::new();
        for slug in slugs {
            if out.len() >= wanted {
                break;
            }
            let prefix = ResourceUri::change_prefix(slug.as_str());
            if let Some(a) = &after
                && prefix.as_str() < a.as_str()
                && !a.starts_with(&prefix)
            {
                continue; // served on an earlier page: every URI of it sorts before the anchor
            }
            let Some(dir) = self.existing_draft(&slug)? else {
                continue;
            };
            let mut entries = change_resources(&slug, &dir)?;
            entries.sort_by(|a, b| a.uri.cmp(&b.uri));
            out.extend(entries.into_iter().filter(|e| after.as_ref().is_none_or(|a| e.uri.as_str() > a.as_str())));
        }
        if only.is_none() && after.as_ref().is_none_or(|a| a.as_str() < crate::domain::uri::ACTIVE) {
            out.push(ResourceEntry {
                uri: crate::domain::uri::ACTIVE.into(),
                name: "Active changes".into(),
                mime_type: "application/json",
                size: 0,
            });
        }
        let mut next = String::new();
        if out.len() > page_size && page_size > 0 {
            out.truncate(page_size);
            if let Some(last) = out.last() {
                next = page_token::encode(&filter, &last.uri);
            }
        }
        Ok((out, next))
    }
}

/// The media type of a file under `specs/`, by its extension: deltas are Markdown, but the
/// folder may hold anything a human put there.
fn delta_mime(path: &str) -> &'static str {
    let extension = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match extension.as_deref() {
        Some("md" | "markdown") => "text/markdown",
        Some("txt") => "text/plain",
        Some("json") => "application/json",
        Some("yaml" | "yml") => "application/yaml",
        _ => "application/octet-stream",
    }
}

/// Every `*.md` under `specs/` (depth-limited, symlinks not followed), as
/// `(path relative to specs/, text)` sorted by path. Beyond `MAX_SPEC_FILES` (the first by
/// path), files are not read, and an error finding says so: what was not read was not
/// validated, so such a change is not archived.
/// One draft's resources: proposal, tasks and each readable spec delta.
fn change_resources(slug: &Slug, dir: &Path) -> Result<Vec<ResourceEntry>> {
    let size = |p: &Path| p.metadata().map(|m| m.len()).unwrap_or(0);
    let mut out = vec![
        ResourceEntry {
            uri: ResourceUri::proposal(slug.as_str()),
            name: format!("{slug} proposal"),
            mime_type: "text/markdown",
            size: size(&dir.join("proposal.md")),
        },
        ResourceEntry {
            uri: ResourceUri::tasks(slug.as_str()),
            name: format!("{slug} tasks"),
            mime_type: "text/markdown",
            size: size(&dir.join("tasks.md")),
        },
    ];
    // Only what `resources/read` serves: a delta whose path it refuses (a space, a
    // non-ASCII name) is still in `change.show`, but is not a resource.
    let readable = |(path, _): &(String, String)| relpath::check_relative(path).is_ok();
    for (path, content) in read_spec_files(&dir.join("specs"))?.files.into_iter().filter(readable) {
        out.push(ResourceEntry {
            uri: ResourceUri::delta(slug.as_str(), &path),
            name: format!("{slug} spec {path}"),
            mime_type: "text/markdown",
            size: content.len() as u64,
        });
    }
    Ok(out)
}

fn active_json(page: &Page) -> serde_json::Value {
    let items: Vec<_> = page
        .items
        .iter()
        .map(|s| {
            serde_json::json!({
                "slug": s.slug,
                "title": s.title,
                "status": "draft",
                "updatedAt": crate::error::fmt_time(s.updated_at),
                "lockHolder": s.lock.as_ref().map(|l| l.owner.clone()),
                "progress": {"done": s.progress.0, "total": s.progress.1},
                "uri": ResourceUri::proposal(&s.slug),
            })
        })
        .collect();
    serde_json::json!({"changes": items, "total": page.total, "nextPageToken": page.next_page_token})
}
