//! `task.update`: ticks written only over the `tasks.md` they were computed from, so a person
//! saving the file in place is never overwritten by a stale copy.

use super::*;

impl Workspace {
    /// `caller_gone` is asked once the call has its turn at the change: a caller that stopped
    /// waiting (cancelled, timed out) gets nothing written on its behalf.
    pub fn update_tasks(
        &self,
        slug: &Slug,
        holder: Holder<'_>,
        updates: &[(String, bool)],
        caller_gone: &dyn Fn() -> bool,
    ) -> Result<(Vec<TaskItem>, Vec<String>)> {
        let guard = self.slug_lock(slug);
        let _held = Self::slug_turn(&guard, caller_gone)?;
        let turn = self.draft_turn(slug, caller_gone)?;
        if caller_gone() {
            return Err(Error::CallerGone);
        }
        let (dir, _turn) = turn.ok_or_else(|| Error::ChangeNotFound { slug: slug.to_string() })?;
        // A lock the tick places where there was none or an expired one is withdrawn if the
        // tick then fails: a failed call leaves no lock behind.
        let mut placed = None;
        let ticked = self.tick(&dir, slug, holder, updates, caller_gone, &mut placed);
        if ticked.is_err()
            && let Some(lock) = &placed
        {
            self.withdraw_lock(&dir, slug, lock);
        }
        ticked
    }

    /// The ticks of `update_tasks`, in the change's turn; `placed`: the lock it placed, if any.
    fn tick(
        &self,
        dir: &Path,
        slug: &Slug,
        holder: Holder<'_>,
        updates: &[(String, bool)],
        caller_gone: &dyn Fn() -> bool,
        placed: &mut Option<LockRecord>,
    ) -> Result<(Vec<TaskItem>, Vec<String>)> {
        let held = refuse_unless_holder(dir, slug, holder)?;
        let ttl = held.and_then(|l| Ttl::parse(l.ttl_seconds).ok()).unwrap_or(Ttl::DEFAULT);
        let path = dir.join("tasks.md");
        let mut lock_taken = false;
        // Servers take turns, people do not: a save that lands between our read and our rename
        // sends us back to read again.
        for _ in 0..EDIT_ATTEMPTS {
            let (text, read_as) = self.read_whole_tasks(dir, slug, updates, caller_gone)?;
            // Everything that can refuse the call runs before anything is written.
            let (new_text, changed) = checklist::apply(&text, slug.as_str(), updates)?;
            if changed.is_empty() {
                return Ok((checklist::parse(&new_text).items, changed));
            }
            // Written aside before the lock is touched: on a full disk the tick fails here, the
            // lock and the task list as they were.
            let aside = fsutil::TempFile::beside(&path, new_text.as_bytes())
                .map_err(|e| write_error("write tasks", dir, "tasks.md", e))?;
            // Holding the lock is required to tick; a free or expired lock is taken by the caller.
            if !lock_taken {
                match self.take_lock(dir, slug, holder, ttl)? {
                    Acquired::New(lock) | Acquired::TakenOver { lock, .. } => *placed = Some(lock),
                    Acquired::Refreshed(_) => {}
                }
                lock_taken = true;
            }
            if self.write_tasks_if(dir, aside, read_as)? {
                self.emit(EventKind::TasksUpdated, slug.as_str(), vec![ResourceUri::tasks(slug.as_str())]);
                return Ok((checklist::parse(&new_text).items, changed));
            }
        }
        Err(Error::ConcurrentEdit { slug: slug.to_string(), file: "tasks.md".into() })
    }

    /// `tasks.md` of the draft in `dir` as a whole file, with who it was when read. Someone may
    /// be saving it in place (truncate, then write): a file that changes while it is read, or
    /// that ends mid-line and was written less than `SETTLE` ago, is read again, `EDIT_POLL`
    /// apart, for at most `EDIT_WAIT`; then the call is refused with `ConcurrentEdit`.
    fn read_whole_tasks(
        &self,
        dir: &Path,
        slug: &Slug,
        updates: &[(String, bool)],
        caller_gone: &dyn Fn() -> bool,
    ) -> Result<(String, fsutil::FileId)> {
        let path = dir.join("tasks.md");
        let read_err = |e| Error::io("read change file", &path, e);
        let since = std::time::Instant::now();
        loop {
            let snapshot = fsutil::read_text_snapshot(&path, MAX_DOC_BYTES).map_err(read_err)?;
            self.fault("tasks.after_read").map_err(read_err)?;
            let text = strict_text(snapshot.read, "tasks.md", slug)?.ok_or_else(|| Error::TaskNotFound {
                slug: slug.to_string(),
                id: updates.first().map(|u| u.0.clone()).unwrap_or_default(),
            })?;
            if let Some(id) = snapshot.id
                && looks_whole(&text, id)
            {
                return Ok((text, id));
            }
            if caller_gone() {
                return Err(Error::CallerGone);
            }
            if since.elapsed() >= EDIT_WAIT {
                return Err(Error::ConcurrentEdit { slug: slug.to_string(), file: "tasks.md".into() });
            }
            std::thread::sleep(EDIT_POLL);
        }
    }

    /// Puts `aside`, the new `tasks.md` of the draft in `dir`, in place if the file is still the
    /// one read as `read_as`; `false`: it changed, nothing was written.
    fn write_tasks_if(&self, dir: &Path, aside: fsutil::TempFile, read_as: fsutil::FileId) -> Result<bool> {
        let path = dir.join("tasks.md");
        let written =
            fsutil::replace_if(aside, &path, read_as).map_err(|e| write_error("write tasks", dir, "tasks.md", e))?;
        let Some(replaced) = written else { return Ok(false) };
        self.own_writes.note(&path);
        self.settle_commit("write tasks", &path, self.fault("tasks.after_rename").and(replaced.synced));
        Ok(true)
    }
}

/// Whether `text`, read from the file `id`, is a whole file rather than one half saved in
/// place: it ends a line, or nobody has written it for `SETTLE`. A save that stalls longer
/// than that mid-line, or stalls at the end of a line, cannot be told from a file written so.
fn looks_whole(text: &str, id: fsutil::FileId) -> bool {
    // A modification time in the future is a clock's fault, not a save under way.
    text.is_empty() || text.ends_with('\n') || id.modified.elapsed().map_or(true, |age| age >= SETTLE)
}
