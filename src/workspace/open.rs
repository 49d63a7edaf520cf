//! `change.open`: a new change is built aside in `.staging` and committed with one rename;
//! an existing one is reopened (same owner) or its expired lock taken over.

use super::*;

impl Workspace {
    /// `caller_gone` as for `update_tasks`: an existing draft is reopened in its turn.
    pub fn open_change(&self, req: OpenRequest, caller_gone: &dyn Fn() -> bool) -> Result<Opened> {
        let guard = self.slug_lock(&req.slug);
        let _held = Self::slug_turn(&guard, caller_gone)?;
        // A pass reopens the draft in its turn or creates it; it finds neither only when
        // another process created the change between our look and our rename.
        for _ in 0..TURN_ATTEMPTS {
            if let Some((dir, _turn)) = self.draft_turn(&req.slug, caller_gone)? {
                if caller_gone() {
                    return Err(Error::CallerGone);
                }
                return self.reopen(&req, &dir);
            }
            if let Some(opened) = self.scaffold(&req)? {
                return Ok(opened);
            }
        }
        Err(Error::Internal(format!("change {} kept appearing and vanishing while opening it", req.slug)))
    }

    fn reopen(&self, req: &OpenRequest, dir: &Path) -> Result<Opened> {
        let acquired = self.take_lock(dir, &req.slug, req.holder(), req.ttl)?;
        let takeover = match &acquired {
            Acquired::TakenOver { previous, .. } => Some(previous.clone()),
            _ => None,
        };
        let summary = self.summarize_draft(&req.slug, dir)?;
        self.emit(EventKind::Updated, req.slug.as_str(), vec![]);
        Ok(Opened {
            summary,
            created: false,
            lock: acquired.record().clone(),
            takeover,
            files: self.listed_files(&req.slug),
        })
    }

    /// `lock::acquire`, with the takeover of an expired lock recorded in the change's metadata.
    /// A takeover that cannot be recorded (a full disk) is withdrawn: the call fails with the
    /// change free, as the expired lock left it, not held by a caller who was told it failed.
    pub(super) fn take_lock(&self, dir: &Path, slug: &Slug, holder: Holder<'_>, ttl: Ttl) -> Result<Acquired> {
        let acquired = lock::acquire(dir, slug.as_str(), holder, ttl, now())?;
        self.own_writes.note(&dir.join(lock::LOCK_FILE));
        if let Acquired::TakenOver { lock, previous } = &acquired {
            tracing::warn!(
                slug = %slug, from = %previous.owner, to = %lock.owner,
                expired_at = %crate::error::fmt_time(previous.expires_at()),
                "expired lock taken over"
            );
            let recorded = self
                .fault("takeover.before_record")
                .map_err(|e| Error::io("write meta", &dir.join(META_FILE), e))
                .and_then(|()| self.record_takeover(dir, previous, lock));
            if let Err(e) = recorded {
                self.withdraw_lock(dir, slug, lock);
                return Err(e);
            }
        }
        Ok(acquired)
    }

    /// Withdraws `lock`, placed by this call where there was none or an expired one, because the
    /// call failed after placing it (see `lock::withdraw`). One that cannot be withdrawn is
    /// logged, and lapses at the end of its TTL like the lock of a client that went away.
    pub(super) fn withdraw_lock(&self, dir: &Path, slug: &Slug, lock: &LockRecord) {
        match lock::withdraw(dir, lock) {
            Ok(_) => self.own_writes.note(&dir.join(lock::LOCK_FILE)),
            Err(e) => tracing::error!(slug = %slug, error = %e, "a failed call could not withdraw the lock it took"),
        }
    }

    pub(super) fn record_takeover(&self, dir: &Path, previous: &LockRecord, lock: &LockRecord) -> Result<()> {
        let path = dir.join(META_FILE);
        let mut meta = read_meta(dir);
        meta.takeovers.push(TakeoverRecord {
            from: previous.owner.clone(),
            to: lock.owner.clone(),
            at: lock.acquired_at,
            expired_at: previous.expires_at(),
        });
        let bytes = serde_json::to_vec_pretty(&meta).map_err(|e| Error::internal("encode meta", e))?;
        let replaced = fsutil::atomic_write(&path, &bytes).map_err(|e| write_error("write meta", dir, META_FILE, e))?;
        self.settle_commit("write meta", &path, replaced.synced);
        self.own_writes.note(&path);
        Ok(())
    }

    /// Builds the change aside and renames it into place. `None`: the change
    /// appeared meanwhile (another process won the rename).
    fn scaffold(&self, req: &OpenRequest) -> Result<Option<Opened>> {
        let now = now();
        let scaffold = templates::render(&TemplateVars {
            kind: req.template,
            title: &req.title,
            slug: &req.slug,
            owner: &req.owner,
            rationale: &req.rationale,
            date: now.date(),
        });
        let lock = LockRecord::new(req.holder(), req.ttl, now);
        let meta = Meta {
            opened_at: Some(now),
            opened_by: req.owner.to_string(),
            template: req.template.as_str().to_string(),
            takeovers: vec![],
        };
        let held = self.new_stage(&req.slug).map_err(|e| self.write_error("scaffold change", &self.staging, e))?;
        let stage = held.path.clone();
        let target = self.draft_dir(&req.slug);
        let build = || -> io::Result<()> {
            fs::create_dir(stage.join("specs"))?;
            fsutil::write_new(&stage.join("proposal.md"), scaffold.proposal.as_bytes())?;
            fsutil::write_new(&stage.join("tasks.md"), scaffold.tasks.as_bytes())?;
            fsutil::write_new(&stage.join("specs").join("README.md"), scaffold.specs_readme.as_bytes())?;
            fsutil::write_new(&stage.join(META_FILE), &serde_json::to_vec_pretty(&meta)?)?;
            lock::write_initial(&stage, &lock)?;
            // The names of the files, in specs/ and in the change's folder, durable before the
            // change can be seen: a crash must not leave a visible change without them.
            fsutil::sync_dir(&stage.join("specs"))?;
            fsutil::sync_dir(&stage)?;
            self.fault("open.before_rename")?;
            // The commit point: the change appears whole or not at all.
            fsutil::rename_noreplace(&stage, &target)
        };
        if let Err(e) = build() {
            let _ = fs::remove_dir_all(&stage);
            if e.kind() == io::ErrorKind::AlreadyExists {
                return Ok(None);
            }
            return Err(self.write_error("scaffold change", &target, e));
        }
        self.own_writes.note(&target);
        let synced = self.fault("open.after_rename").and_then(|()| fsutil::sync_parent(&target));
        self.settle_commit("open", &target, synced);
        let summary = self.summarize_draft(&req.slug, &target)?;
        self.emit(
            EventKind::Opened,
            req.slug.as_str(),
            vec![ResourceUri::proposal(req.slug.as_str()), ResourceUri::tasks(req.slug.as_str())],
        );
        Ok(Some(Opened { summary, created: true, lock, takeover: None, files: self.listed_files(&req.slug) }))
    }

    /// The scaffold's files that the change has: a folder made by hand may lack them.
    fn listed_files(&self, slug: &Slug) -> Vec<String> {
        let dir = self.draft_dir(slug);
        ["proposal.md", "tasks.md", "specs/README.md"]
            .iter()
            .filter(|f| dir.join(f).symlink_metadata().is_ok_and(|m| m.is_file()))
            .map(|f| format!("changes/{slug}/{f}"))
            .collect()
    }

    /// A new build-aside folder for `slug`, held (see `Stage`).
    fn new_stage(&self, slug: &Slug) -> io::Result<Stage> {
        // Shared with other builds, exclusive with a sweep: between our `mkdir` and our `flock`
        // the folder is not held yet, and a sweep must not take it for a dead build's.
        let _naming = self.staging_share()?;
        let path = self.staging.join(format!("{slug}.{}", uuid::Uuid::new_v4().simple()));
        fs::create_dir(&path)?;
        let held = fs::File::open(&path).and_then(|folder| folder.lock().map(|()| folder));
        match held {
            Ok(folder) => Ok(Stage { path, _held: folder }),
            Err(e) => {
                let _ = fs::remove_dir(&path);
                Err(e)
            }
        }
    }

    /// `.staging` held shared (`flock`) until the returned file drops: writers in it take
    /// this, the sweep takes it exclusively.
    pub(super) fn staging_share(&self) -> io::Result<fs::File> {
        let staging = fs::File::open(&self.staging)?;
        staging.lock_shared()?;
        Ok(staging)
    }

    /// Removes what failed or crashed builds left in `.staging`: every folder no live build
    /// holds, however young (a restart right after a crash finds them all), and stray files.
    pub(super) fn sweep_staging(&self) {
        let Ok(staging) = fs::File::open(&self.staging) else { return };
        if staging.lock().is_err() {
            return;
        }
        let Ok(entries) = fs::read_dir(&self.staging) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                tracing::warn!(path = %path.display(), "removing a leftover file from the build-aside area");
                let _ = fs::remove_file(&path);
                continue;
            }
            // A folder a live build holds (this process's or another's) is left alone.
            let Ok(folder) = fs::File::open(&path) else { continue };
            if folder.try_lock().is_ok() {
                tracing::warn!(path = %path.display(), "removing a leftover build-aside folder");
                let _ = fs::remove_dir_all(&path);
            }
        }
    }
}

/// A build-aside folder in `.staging`, held with an `flock` for as long as this value lives:
/// a sweep (by this process or another) removes exactly the folders nobody holds, so it never
/// takes a folder from a live build however long that takes, and never leaves one a dead
/// process left however young. The hold goes with the folder when it is renamed into place.
struct Stage {
    path: PathBuf,
    _held: fs::File,
}
