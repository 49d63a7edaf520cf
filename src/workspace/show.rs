//! `change.show` and `change.validate`: a change read whole (proposal, checklist, spec deltas)
//! and checked.

use super::*;

impl Workspace {
    /// The change from the cache, if it is there and nothing under it changed since. Never
    /// blocks, so async callers may call it inline; on `None`, call `show_change_and_cache`.
    pub fn cached_show(&self, slug: &Slug) -> Option<Arc<Shown>> {
        self.watcher.get()?.cached_show(slug)
    }

    /// `show_change`, kept for `cached_show` when the watcher runs.
    pub fn show_change_and_cache(&self, slug: &Slug) -> Result<Arc<Shown>> {
        let Some(watcher) = self.watcher.get() else { return self.show_change(slug).map(Arc::new) };
        let ticket = watcher.show_ticket();
        let shown = Arc::new(self.show_change(slug)?);
        watcher.store_show(slug, ticket, shown.clone());
        Ok(shown)
    }

    pub fn show_change(&self, slug: &Slug) -> Result<Shown> {
        let (dir, summary) = self.locate(slug)?;
        let proposal = read_doc_strict(&dir, "proposal.md", slug)?.unwrap_or_default();
        let tasks = read_doc_strict(&dir, "tasks.md", slug)?.map(|t| checklist::parse(&t).items).unwrap_or_default();
        let spec_read = read_spec_files(&dir.join("specs"))?;
        if let Some(refusal) = spec_read.refusal(slug) {
            return Err(refusal);
        }
        let mut deltas = Vec::new();
        for (path, content) in spec_read.files {
            if is_readme(&path) {
                continue;
            }
            let (requirements, _) = specs::parse_delta(&content);
            deltas.push(Delta { path, content, requirements });
        }
        Ok(Shown { summary, proposal, tasks, deltas })
    }

    pub fn validate_change(&self, slug: &Slug) -> Result<Vec<Finding>> {
        let dir = self.existing_draft(slug)?.ok_or_else(|| Error::ChangeNotFound { slug: slug.to_string() })?;
        self.validate_dir(&dir)
    }

    pub(super) fn validate_dir(&self, dir: &Path) -> Result<Vec<Finding>> {
        let mut unreadable = Vec::new();
        let mut doc = |name: &str| -> Result<Option<String>> {
            match fsutil::read_text_capped(&dir.join(name), MAX_DOC_BYTES)
                .map_err(|e| Error::internal("read change file", e))?
            {
                TextRead::Text(t) => Ok(Some(t)),
                TextRead::Missing => Ok(None),
                other => {
                    unreadable.push(unreadable_finding(name, &other));
                    Ok(None)
                }
            }
        };
        let proposal = doc("proposal.md")?;
        let tasks = doc("tasks.md")?;
        let specs_dir = dir.join("specs");
        let spec_read = read_spec_files(&specs_dir)?;
        let delta_unreadable = spec_read.unreadable_delta().is_some();
        let files = ChangeFiles {
            proposal,
            tasks,
            specs_dir: specs_dir.symlink_metadata().is_ok_and(|m| m.is_dir()),
            spec_files: spec_read.files,
        };
        let mut findings: Vec<Finding> = validation::validate(&files)
            .into_iter()
            // A file we could not read is reported once, as unreadable, not also as missing,
            // and an unreadable delta is not "no deltas".
            .filter(|f| !(f.code.ends_with("_MISSING") && unreadable.iter().any(|u| u.file == f.file)))
            .filter(|f| !(f.code == validation::SPECS_NO_DELTAS && delta_unreadable))
            .collect();
        findings.extend(unreadable);
        findings.extend(spec_read.problems);
        findings.sort_by(|a, b| (a.severity, &a.file, a.line).cmp(&(b.severity, &b.file, b.line)));
        Ok(findings)
    }
}

fn unreadable_finding(name: &str, read: &TextRead) -> Finding {
    let message = match read {
        TextRead::TooLarge(size) => format!("{size} bytes is over the {MAX_DOC_BYTES} byte limit"),
        TextRead::NotRegular => NOT_REGULAR.into(),
        _ => "is not UTF-8 text".into(),
    };
    Finding { code: "FILE_UNREADABLE", severity: Severity::Error, file: name.to_string(), line: 0, message }
}

fn is_readme(path: &str) -> bool {
    path.rsplit('/').next().is_some_and(|f| f.eq_ignore_ascii_case("readme.md"))
}

pub(super) struct SpecRead {
    pub(super) files: Vec<(String, String)>,
    /// Files that could not be read as text, as `(path relative to specs/, why)`.
    unreadable: Vec<(String, TextRead)>,
    problems: Vec<Finding>,
}

impl SpecRead {
    fn unreadable_delta(&self) -> Option<&(String, TextRead)> {
        self.unreadable.iter().find(|(rel, _)| !is_readme(rel))
    }

    /// The first unreadable delta as the error `change.show` answers: a change shown without
    /// one of its deltas would pass for a change that has none.
    fn refusal(&self, slug: &Slug) -> Option<Error> {
        let (rel, read) = self.unreadable_delta()?;
        let file = format!("specs/{rel}");
        Some(match read {
            TextRead::TooLarge(size) => Error::ResourceTooLarge { uri: file, size: *size, limit: MAX_DOC_BYTES },
            TextRead::NotRegular => Error::FileUnreadable { slug: slug.to_string(), file, why: NOT_REGULAR },
            _ => Error::FileUnreadable { slug: slug.to_string(), file, why: "is not UTF-8 text" },
        })
    }
}

pub(super) fn read_spec_files(specs: &Path) -> Result<SpecRead> {
    let mut out = SpecRead { files: Vec::new(), unreadable: Vec::new(), problems: Vec::new() };
    if !specs.symlink_metadata().is_ok_and(|m| m.is_dir()) {
        return Ok(out);
    }
    let mut found = Vec::new();
    let mut stack = vec![(specs.to_path_buf(), String::new(), 0usize)];
    while let Some((dir, prefix, depth)) = stack.pop() {
        let entries = fs::read_dir(&dir).map_err(|e| Error::internal("list specs", e))?;
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let rel = if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() && depth < 6 {
                stack.push((entry.path(), rel, depth + 1));
            } else if kind.is_file() && name.ends_with(".md") {
                found.push((rel, entry.path()));
            }
        }
    }
    found.sort();
    if found.len() > MAX_SPEC_FILES {
        out.problems.push(Finding {
            code: "TOO_MANY_SPEC_FILES",
            severity: Severity::Error,
            file: "specs".into(),
            line: 0,
            message: format!(
                "{} spec files; only the first {MAX_SPEC_FILES} by path were read and validated",
                found.len()
            ),
        });
        found.truncate(MAX_SPEC_FILES);
    }
    for (rel, path) in found {
        match fsutil::read_text_capped(&path, MAX_DOC_BYTES).map_err(|e| Error::internal("read spec", e))? {
            TextRead::Text(t) => out.files.push((rel, t)),
            other => {
                out.problems.push(unreadable_finding(&format!("specs/{rel}"), &other));
                out.unreadable.push((rel, other));
            }
        }
    }
    Ok(out)
}
