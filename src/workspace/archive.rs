//! `change.archive`: validate, write the receipt, move the folder under `changes/archive/`
//! with one rename, release the lock.

use super::*;

impl Workspace {
    /// `caller_gone` as for `update_tasks`.
    pub fn archive_change(
        &self,
        slug: &Slug,
        actor: Holder<'_>,
        tests: Option<TestSummary>,
        progress: &mut dyn FnMut(Step),
        caller_gone: &dyn Fn() -> bool,
    ) -> Result<Archived> {
        const STEPS: u32 = 4;
        let guard = self.slug_lock(slug);
        let _held = Self::slug_turn(&guard, caller_gone)?;
        let turn = self.draft_turn(slug, caller_gone)?;
        if caller_gone() {
            return Err(Error::CallerGone);
        }
        let Some((dir, _turn)) = turn else { return self.already_archived(slug) };
        refuse_unless_holder(&dir, slug, actor)?;
        let findings = self.validate_dir(&dir)?;
        if !validation::is_valid(&findings) {
            return Err(Error::ValidationFailed {
                slug: slug.to_string(),
                findings: findings
                    .iter()
                    .filter(|f| f.severity == Severity::Error)
                    .map(|f| FindingRef {
                        code: f.code.to_string(),
                        file: f.file.clone(),
                        line: f.line,
                        message: f.message.clone(),
                    })
                    .collect(),
            });
        }
        let warnings = findings.len();
        progress(Step {
            name: "validate",
            message: format!("valid ({warnings} warning(s))"),
            current: 1,
            total: STEPS,
        });

        let archived_at = now();
        self.archive_root()?;
        let meta = read_meta(&dir);
        let activity = git::activity_since(&self.root, meta.opened_at);
        let mut receipt = Receipt {
            slug: slug.to_string(),
            archived_at,
            actor: actor.owner.to_string(),
            opened_at: meta.opened_at,
            git: activity.repository,
            commits: activity.commits.into_iter().map(|(sha, subject)| CommitRef { sha, subject }).collect(),
            files_touched: activity.files_touched,
            tests,
            archive_path: String::new(),
            server_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        progress(Step {
            name: "receipt",
            message: format!("{} commit(s), {} file(s)", receipt.commits.len(), receipt.files_touched.len()),
            current: 2,
            total: STEPS,
        });

        let target = self.move_to_archive(&dir, slug, actor, &mut receipt)?;
        self.own_writes.note(&target);
        // The draft's folder is gone by our hand: an archive, not a removal.
        self.own_writes.note(&dir);
        let synced = self
            .fault("archive.after_move")
            .and_then(|()| fsutil::sync_parent(&target))
            .and_then(|()| fsutil::sync_parent(&dir));
        self.settle_commit("archive", &target, synced);
        progress(Step { name: "move", message: receipt.archive_path.clone(), current: 3, total: STEPS });

        if let Err(e) = self
            .fault("archive.before_release")
            .map_err(|e| Error::internal("release", e))
            .and_then(|()| lock::release(&target))
        {
            // The change is archived; the stray lock inside the archive is ignored
            // and removed by the next archive call for this slug.
            tracing::warn!(slug = %slug, error = %e, "archived but lock not released");
        }
        // The release changed the folder; noted as it is now, so the watcher does not report
        // this archive a second time as another process's.
        self.own_writes.note(&target);
        progress(Step { name: "release", message: "lock released".into(), current: 4, total: STEPS });
        self.emit(EventKind::Archived, slug.as_str(), vec![ResourceUri::receipt(slug.as_str())]);
        let findings = findings.into_iter().filter(|f| f.severity != Severity::Error).collect();
        Ok(Archived { receipt, already_archived: false, findings })
    }

    /// The answer to archiving a change that has no draft: its newest archive's receipt.
    fn already_archived(&self, slug: &Slug) -> Result<Archived> {
        let Some((name, archived)) = self.latest_archive(slug)? else {
            return Err(Error::ChangeNotFound { slug: slug.to_string() });
        };
        let receipt = read_receipt(&archived).ok_or_else(|| Error::ReceiptUnavailable {
            slug: slug.to_string(),
            archive_path: format!("changes/archive/{name}"),
        })?;
        // A crash between the move and the release leaves the lock inside.
        let _ = lock::release(&archived);
        Ok(Archived { receipt, already_archived: true, findings: vec![] })
    }

    /// Writes the receipt into the draft `dir` and renames the draft into the archive under
    /// the first free name: the commit point, one rename that moves the change, its receipt and
    /// its lock. A name taken between our look and our rename (by another archive: `bar`'s
    /// second of the day and `bar-2`'s first both want `<date>-bar-2`) is passed over for the
    /// next, the receipt rewritten to name the folder the change really goes to. On failure
    /// the draft is as it was, so a retry starts clean.
    fn move_to_archive(&self, dir: &Path, slug: &Slug, actor: Holder<'_>, receipt: &mut Receipt) -> Result<PathBuf> {
        let mut first = 1;
        let moved = loop {
            let (n, name) = match self.free_archive_name(slug, receipt.archived_at, first) {
                Ok(found) => found,
                Err(e) => break Err(e),
            };
            receipt.archive_path = format!("changes/archive/{name}");
            let target = self.archive.join(&name);
            match self.try_move_to_archive(dir, &target, slug, actor, receipt) {
                Ok(true) => break Ok(target),
                Ok(false) => first = n + 1,
                Err(e) => break Err(e),
            }
        };
        if moved.is_err() {
            let _ = fs::remove_file(dir.join(RECEIPT_FILE));
        }
        moved
    }

    /// One attempt of `move_to_archive`; `false`: `target` was taken.
    fn try_move_to_archive(
        &self,
        dir: &Path,
        target: &Path,
        slug: &Slug,
        actor: Holder<'_>,
        receipt: &Receipt,
    ) -> Result<bool> {
        let receipt_path = dir.join(RECEIPT_FILE);
        let bytes = serde_json::to_vec_pretty(receipt).map_err(|e| Error::internal("encode receipt", e))?;
        let replaced = fsutil::atomic_write(&receipt_path, &bytes)
            .map_err(|e| write_error("write receipt", dir, RECEIPT_FILE, e))?;
        self.settle_commit("write receipt", &receipt_path, replaced.synced);
        self.own_writes.note(&receipt_path);
        let move_err = |e| Error::io("move change to archive", dir, e);
        self.fault("archive.before_move").map_err(move_err)?;
        // Servers keep out while we hold the turn, but a writer that takes no turn (an older
        // server, a person) may have taken the lock since the first look.
        refuse_unless_holder(dir, slug, actor)?;
        match fsutil::rename_noreplace(dir, target) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(move_err(e)),
        }
    }

    /// The first free archive folder name of `slug` for the day of `at`, numbered `from` or
    /// higher, with its number. A slug reopened and archived again the same day gets a
    /// numbered folder; the receipt inside keeps the real slug.
    fn free_archive_name(&self, slug: &Slug, at: OffsetDateTime, from: u32) -> Result<(u32, String)> {
        let date = at.date();
        let base = format!("{:04}-{:02}-{:02}-{slug}", date.year(), u8::from(date.month()), date.day());
        for n in from.max(1)..1000 {
            let name = if n == 1 { base.clone() } else { format!("{base}-{n}") };
            if self.archive.join(&name).symlink_metadata().is_err() {
                return Ok((n, name));
            }
        }
        Err(Error::Internal(format!("no free archive name for {slug}")))
    }
}
