//! The change lock: `changes/<slug>/.lock`, a small JSON record.
//!
//! A lock is only ever created by hard-linking a fully written temp file into
//! place, which fails if a lock exists: exclusive-create with no window in which a
//! reader could see a half-written lock. Taking over an expired lock renames the
//! stale file away first and checks it was the one we judged stale, so two
//! processes reclaiming at once cannot both win; an unparsable lock is removed the same
//! way, so a lock another process placed meanwhile is never removed in its stead. Callers
//! also hold the change's turn (see `Workspace::draft_turn`), so these races only matter
//! with writers that take no turn: older servers, tools, people.
use std::{fs, io, io::Read, os::unix::fs::OpenOptionsExt, path::Path};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::fsutil::{TempFile, sync_parent, temp_sibling, write_new};
use crate::{
    auth::Principal,
    domain::{Owner, Ttl},
    error::{Error, Result},
};

pub const LOCK_FILE: &str = ".lock";
/// More than any lock record takes: a bigger file is no lock of ours, and is not read whole.
const LOCK_CAP: u64 = 64 * 1024;

/// Who takes or holds a lock: the owner a request names and the principal whose credential
/// made the request. Owners are whatever clients send, so with tokens configured the principal
/// is what keeps one client from acting under another's lock by naming its owner.
#[derive(Debug, Clone, Copy)]
pub struct Holder<'a> {
    pub owner: &'a Owner,
    pub principal: &'a Principal,
}

#[cfg(test)]
impl<'a> Holder<'a> {
    /// `owner` named by a caller without a credential, as every caller is when no tokens are set.
    pub fn anonymous(owner: &'a Owner) -> Self {
        static ANONYMOUS: std::sync::LazyLock<Principal> = std::sync::LazyLock::new(Principal::anonymous);
        Holder { owner, principal: &ANONYMOUS }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    pub owner: String,
    /// The principal that took the lock. Absent from locks written before it was recorded:
    /// whoever names their owner holds those.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub acquired_at: OffsetDateTime,
    pub ttl_seconds: u32,
    /// Distinguishes two records of the same owner, so a takeover can tell whether
    /// the file it moved away is the one it judged stale.
    pub nonce: String,
}

impl LockRecord {
    pub fn new(holder: Holder<'_>, ttl: Ttl, now: OffsetDateTime) -> Self {
        LockRecord {
            owner: holder.owner.as_str().to_string(),
            principal: Some(holder.principal.as_str().to_string()),
            acquired_at: now,
            ttl_seconds: ttl.seconds(),
            nonce: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    pub fn expires_at(&self) -> OffsetDateTime {
        self.acquired_at + time::Duration::seconds(i64::from(self.ttl_seconds))
    }

    pub fn is_live(&self, now: OffsetDateTime) -> bool {
        now < self.expires_at()
    }

    /// Whether `holder` is the one holding this lock: the same owner, taken by the same principal.
    pub fn is_held_by(&self, holder: Holder<'_>) -> bool {
        self.owner == holder.owner.as_str() && self.principal.as_deref().is_none_or(|p| p == holder.principal.as_str())
    }

    /// The refusal of `holder`, who does not hold this live lock. It names the principal
    /// when that is where the two differ, or the message would read "locked by you".
    pub fn refuse(&self, slug: &str, holder: Holder<'_>) -> Error {
        Error::LockedByOtherOwner {
            slug: slug.to_string(),
            holder: self.owner.clone(),
            principal: self.principal.clone().filter(|p| p != holder.principal.as_str()),
            expires_at: self.expires_at(),
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        // A struct of strings and numbers always serializes.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// There was no lock.
    New(LockRecord),
    /// The caller already held it; `acquired_at` moved to now.
    Refreshed(LockRecord),
    /// Another owner's lock had expired and was taken over.
    TakenOver { lock: LockRecord, previous: LockRecord },
}

impl Acquired {
    pub fn record(&self) -> &LockRecord {
        match self {
            Acquired::New(r) | Acquired::Refreshed(r) => r,
            Acquired::TakenOver { lock, .. } => lock,
        }
    }
}

/// Reads the lock in `dir`. A record that does not parse counts as no lock: it
/// cannot name a holder, and keeping it would wedge the change forever.
pub fn read(dir: &Path) -> Result<Option<LockRecord>> {
    match read_bytes(&dir.join(LOCK_FILE)) {
        Ok(bytes) => Ok(parse(&bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(read_error(dir, e)),
    }
}

/// The lock file's bytes, not following a symbolic link.
fn read_bytes(path: &Path) -> io::Result<Vec<u8>> {
    let file = fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path)?;
    let mut bytes = Vec::new();
    file.take(LOCK_CAP).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// A `.lock` that is a folder, a socket or a symbolic link cannot say who holds the change,
/// and removing it is not ours to do (a person put it there): the change's fault, named, and
/// the call refused. Anything else is an I/O failure.
fn read_error(dir: &Path, e: io::Error) -> Error {
    let path = dir.join(LOCK_FILE);
    let not_a_file =
        e.kind() == io::ErrorKind::IsADirectory || matches!(e.raw_os_error(), Some(libc::ENXIO | libc::ELOOP));
    if !not_a_file {
        return Error::io("read lock", &path, e);
    }
    let slug = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Error::FileUnreadable {
        slug,
        file: LOCK_FILE.into(),
        why: "is not a regular file (a folder, a socket or a symbolic link); remove it to free the change",
    }
}

/// Writes the lock of a change being built aside (nobody else can see the folder yet).
pub fn write_initial(dir: &Path, record: &LockRecord) -> io::Result<()> {
    write_new(&dir.join(LOCK_FILE), &record.to_bytes())
}

pub fn acquire(dir: &Path, slug: &str, holder: Holder<'_>, ttl: Ttl, now: OffsetDateTime) -> Result<Acquired> {
    let lock_path = dir.join(LOCK_FILE);
    let io_err = |e: io::Error| Error::io("acquire lock", &lock_path, e);
    // Each turn either succeeds, fails with a conflict, or observed another
    // process change the lock under it; a few turns settle any real race.
    for _ in 0..5 {
        let record = LockRecord::new(holder, ttl, now);
        // Linked into place or renamed there by `try_place`; its own name goes when it drops.
        let temp = TempFile::beside(&lock_path, &record.to_bytes()).map_err(io_err)?;
        match try_place(&lock_path, temp.path(), slug, holder, &record, now) {
            Ok(Some(acquired)) => {
                sync_parent(&lock_path).map_err(io_err)?;
                return Ok(acquired);
            }
            Ok(None) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Error::Internal(format!("lock of {slug} kept changing while acquiring it")))
}

/// One attempt; `Ok(None)` means "the lock changed under us, try again".
fn try_place(
    lock_path: &Path,
    temp: &Path,
    slug: &str,
    holder: Holder<'_>,
    record: &LockRecord,
    now: OffsetDateTime,
) -> Result<Option<Acquired>> {
    let io_err = |e: io::Error| Error::io("acquire lock", lock_path, e);
    match fs::hard_link(temp, lock_path) {
        Ok(()) => return Ok(Some(Acquired::New(record.clone()))),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(e)),
    }
    let bytes = match read_bytes(lock_path) {
        Ok(bytes) => bytes,
        // Released between our link and our read: link again.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_error(lock_path.parent().unwrap_or(lock_path), e)),
    };
    let Some(existing) = parse(&bytes) else {
        // Unparsable: it names no holder. Move it away, but only if it is still the record we
        // judged: another process may have replaced it with a good lock since our read.
        set_aside_if(lock_path, |moved| moved == bytes.as_slice())?;
        return Ok(None);
    };
    if existing.is_held_by(holder) {
        fs::rename(temp, lock_path).map_err(io_err)?;
        return Ok(Some(Acquired::Refreshed(record.clone())));
    }
    if existing.is_live(now) {
        return Err(existing.refuse(slug, holder));
    }
    // Expired: take it over, making sure we move away exactly the stale record.
    if !set_aside_if(lock_path, |moved| parse(moved).is_some_and(|m| m.nonce == existing.nonce))? {
        return Ok(None);
    }
    match fs::hard_link(temp, lock_path) {
        Ok(()) => Ok(Some(Acquired::TakenOver { lock: record.clone(), previous: existing })),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(None),
        Err(e) => Err(io_err(e)),
    }
}

fn parse(bytes: &[u8]) -> Option<LockRecord> {
    serde_json::from_slice(bytes).ok()
}

/// Moves the lock at `lock_path` away for good if its content is still what `judged` accepts;
/// anything else found there (a lock another process placed since we looked) is put back,
/// exclusively (if that fails a third party holds the lock now). `false`: nothing was removed,
/// the caller looks again.
fn set_aside_if(lock_path: &Path, judged: impl Fn(&[u8]) -> bool) -> Result<bool> {
    let aside = temp_sibling(lock_path).with_extension("stale");
    match fs::rename(lock_path, &aside) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io("acquire lock", lock_path, e)),
    }
    let ours = read_bytes(&aside).is_ok_and(|moved| judged(&moved));
    if !ours {
        let _ = fs::hard_link(&aside, lock_path);
    }
    let _ = fs::remove_file(&aside);
    Ok(ours)
}

/// Removes `record`, which this call placed in `dir`, if it is still the lock there: a call that
/// took a lock and then failed (a full disk) leaves the change as free as it found it. A lock
/// another process placed since stays. Needs no space: a rename and an unlink. `false`: the
/// lock was no longer ours, nothing was removed.
pub fn withdraw(dir: &Path, record: &LockRecord) -> Result<bool> {
    set_aside_if(&dir.join(LOCK_FILE), |moved| parse(moved).is_some_and(|m| m.nonce == record.nonce))
}

/// Removes the lock file if present.
pub fn release(dir: &Path) -> Result<()> {
    match fs::remove_file(dir.join(LOCK_FILE)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("release lock", &dir.join(LOCK_FILE), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(s: &str) -> Owner {
        Owner::parse(s).unwrap()
    }

    #[test]
    fn new_then_refresh_then_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc();
        let ttl = Ttl::DEFAULT;
        assert!(matches!(
            acquire(dir.path(), "s", Holder::anonymous(&owner("a")), ttl, now).unwrap(),
            Acquired::New(_)
        ));
        let later = now + time::Duration::seconds(10);
        let refreshed = acquire(dir.path(), "s", Holder::anonymous(&owner("a")), ttl, later).unwrap();
        assert!(matches!(refreshed, Acquired::Refreshed(ref r) if r.acquired_at == later));
        let err = acquire(dir.path(), "s", Holder::anonymous(&owner("b")), ttl, later).unwrap_err();
        assert!(matches!(err, Error::LockedByOtherOwner { holder, .. } if holder == "a"));
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from(LOCK_FILE)], "no temp files left");
    }

    #[test]
    fn expired_lock_is_taken_over_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let then = OffsetDateTime::now_utc() - time::Duration::hours(3);
        acquire(dir.path(), "s", Holder::anonymous(&owner("a")), Ttl::parse(60).unwrap(), then).unwrap();
        let now = OffsetDateTime::now_utc();
        match acquire(dir.path(), "s", Holder::anonymous(&owner("b")), Ttl::DEFAULT, now).unwrap() {
            Acquired::TakenOver { lock, previous } => {
                assert_eq!(lock.owner, "b");
                assert_eq!(previous.owner, "a");
            }
            other => panic!("expected takeover, got {other:?}"),
        }
        assert_eq!(read(dir.path()).unwrap().unwrap().owner, "b");
    }

    #[test]
    fn garbage_lock_counts_as_free() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(LOCK_FILE), b"{not json").unwrap();
        let got =
            acquire(dir.path(), "s", Holder::anonymous(&owner("a")), Ttl::DEFAULT, OffsetDateTime::now_utc()).unwrap();
        assert!(matches!(got, Acquired::New(_)));
    }

    #[test]
    fn a_lock_is_set_aside_only_while_it_is_the_one_judged() {
        let dir = tempfile::tempdir().unwrap();
        let lock_path = dir.path().join(LOCK_FILE);
        // Judged unparsable, but another process has put its good lock there since.
        let theirs = LockRecord::new(Holder::anonymous(&owner("b")), Ttl::DEFAULT, OffsetDateTime::now_utc());
        fs::write(&lock_path, theirs.to_bytes()).unwrap();
        assert!(!set_aside_if(&lock_path, |moved| moved == b"{not json").unwrap());
        assert_eq!(read(dir.path()).unwrap(), Some(theirs), "their lock is back in place");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from(LOCK_FILE)], "nothing set aside is left");

        fs::write(&lock_path, b"{not json").unwrap();
        assert!(set_aside_if(&lock_path, |moved| moved == b"{not json").unwrap());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "the judged record is gone");
        assert!(!set_aside_if(&lock_path, |_| true).unwrap(), "nothing to set aside");
    }

    #[test]
    fn a_lock_is_withdrawn_only_while_it_is_the_one_placed() {
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc();
        let placed = acquire(dir.path(), "s", Holder::anonymous(&owner("a")), Ttl::DEFAULT, now).unwrap();
        // Replaced since (taken again by its owner): not ours to remove.
        let again = acquire(dir.path(), "s", Holder::anonymous(&owner("a")), Ttl::DEFAULT, now).unwrap();
        assert!(!withdraw(dir.path(), placed.record()).unwrap());
        assert_eq!(read(dir.path()).unwrap().as_ref(), Some(again.record()), "the newer lock stays");
        assert!(withdraw(dir.path(), again.record()).unwrap());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "the change is free, nothing set aside is left");
        assert!(!withdraw(dir.path(), again.record()).unwrap(), "nothing to withdraw");
    }

    #[test]
    fn another_principal_naming_the_same_owner_does_not_hold_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc();
        let (agent, alice, bob) = (owner("agent"), Principal::named("alice"), Principal::named("bob"));
        acquire(dir.path(), "s", Holder { owner: &agent, principal: &alice }, Ttl::DEFAULT, now).unwrap();
        let err = acquire(dir.path(), "s", Holder { owner: &agent, principal: &bob }, Ttl::DEFAULT, now).unwrap_err();
        assert!(
            matches!(&err, Error::LockedByOtherOwner { holder, principal: Some(p), .. } if holder == "agent" && p == "alice"),
            "{err:?}"
        );
        assert!(err.to_string().contains("locked by \"agent\" of principal \"alice\""), "{err}");
        let again = acquire(dir.path(), "s", Holder { owner: &agent, principal: &alice }, Ttl::DEFAULT, now).unwrap();
        assert!(matches!(again, Acquired::Refreshed(_)));
    }

    #[test]
    fn a_lock_that_names_no_principal_is_held_by_whoever_names_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc();
        let written_before = format!(
            r#"{{"owner":"agent","acquired_at":"{}","ttl_seconds":3600,"nonce":"n"}}"#,
            crate::error::fmt_time(now)
        );
        fs::write(dir.path().join(LOCK_FILE), written_before).unwrap();
        let (agent, bob) = (owner("agent"), Principal::named("bob"));
        let got = acquire(dir.path(), "s", Holder { owner: &agent, principal: &bob }, Ttl::DEFAULT, now).unwrap();
        assert!(matches!(got, Acquired::Refreshed(ref r) if r.principal.as_deref() == Some("bob")), "{got:?}");
    }
}
