//! Failure injection: a fault at any step of open or archive leaves the
//! workspace consistent (old state or new state, nothing in between) and the
//! operation retryable.
use std::{
    collections::BTreeSet,
    io,
    path::Path,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use super::*;

fn fails_at(point: &'static str) -> (FaultHook, Arc<Mutex<bool>>) {
    let armed = Arc::new(Mutex::new(true));
    let flag = armed.clone();
    let hook: FaultHook = Arc::new(move |at| {
        let mut armed = flag.lock().unwrap();
        if at == point && *armed {
            *armed = false;
            return Err(io::Error::other(format!("injected fault at {at}")));
        }
        Ok(())
    });
    (hook, armed)
}

fn request(slug: &str) -> OpenRequest {
    OpenRequest {
        slug: Slug::parse(slug).unwrap(),
        title: Title::parse("Fault tolerant").unwrap(),
        rationale: Rationale::parse("because").unwrap(),
        owner: Owner::parse("alice").unwrap(),
        principal: Principal::anonymous(),
        ttl: Ttl::DEFAULT,
        template: TemplateKind::Feature,
    }
}

/// Every path under `root`, relative, for before/after comparisons.
fn tree(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            out.insert(path.strip_prefix(root).unwrap().display().to_string());
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            }
        }
    }
    out
}

fn no_temp_files(root: &Path) {
    for path in tree(root) {
        assert!(!path.ends_with(".tmp") && !path.ends_with(".stale"), "leftover temp file {path}");
    }
    assert_eq!(fs::read_dir(root.join(".staging")).unwrap().count(), 0, "staging must be empty");
}

#[test]
fn open_failing_before_the_rename_leaves_nothing_and_can_be_retried() {
    let dir = tempfile::tempdir().unwrap();
    let (hook, _) = fails_at("open.before_rename");
    let ws = Workspace::open(dir.path(), 1 << 20).unwrap().with_fault_hook(hook);
    let before = tree(dir.path());
    let err = ws.open_change(request("add-x"), &|| false).unwrap_err();
    assert!(matches!(err, Error::Internal(_)), "{err:?}");
    assert_eq!(tree(dir.path()), before, "workspace unchanged after the failed open");
    let opened = ws.open_change(request("add-x"), &|| false).unwrap();
    assert!(opened.created);
    assert!(dir.path().join("changes/add-x/proposal.md").is_file());
    no_temp_files(dir.path());
}

#[test]
fn open_failing_after_the_rename_still_yields_a_whole_change() {
    let dir = tempfile::tempdir().unwrap();
    let (hook, _) = fails_at("open.after_rename");
    let ws = Workspace::open(dir.path(), 1 << 20).unwrap().with_fault_hook(hook);
    let opened = ws.open_change(request("add-x"), &|| false).unwrap();
    assert!(opened.created);
    for f in ["proposal.md", "tasks.md", "specs/README.md", ".lock"] {
        assert!(dir.path().join("changes/add-x").join(f).is_file(), "{f} missing");
    }
    no_temp_files(dir.path());
}

#[test]
fn archive_failing_before_the_move_restores_the_change_and_can_be_retried() {
    let dir = tempfile::tempdir().unwrap();
    let (hook, _) = fails_at("archive.before_move");
    let ws = Workspace::open(dir.path(), 1 << 20).unwrap().with_fault_hook(hook);
    ws.open_change(request("add-x"), &|| false).unwrap();
    let before = tree(dir.path());
    let actor = Owner::parse("alice").unwrap();
    let slug = Slug::parse("add-x").unwrap();
    let err = ws.archive_change(&slug, Holder::anonymous(&actor), None, &mut |_| {}, &|| false).unwrap_err();
    assert!(matches!(err, Error::Internal(_)), "{err:?}");
    assert_eq!(tree(dir.path()), before, "no receipt, no archive folder, lock still in place");
    let archived = ws.archive_change(&slug, Holder::anonymous(&actor), None, &mut |_| {}, &|| false).unwrap();
    assert!(!archived.already_archived);
    assert!(!dir.path().join("changes/add-x").exists());
    no_temp_files(dir.path());
}

#[test]
fn archive_failing_before_the_lock_release_is_archived_and_tidied_on_retry() {
    let dir = tempfile::tempdir().unwrap();
    let (hook, _) = fails_at("archive.before_release");
    let ws = Workspace::open(dir.path(), 1 << 20).unwrap().with_fault_hook(hook);
    ws.open_change(request("add-x"), &|| false).unwrap();
    let actor = Owner::parse("alice").unwrap();
    let slug = Slug::parse("add-x").unwrap();
    let first = ws.archive_change(&slug, Holder::anonymous(&actor), None, &mut |_| {}, &|| false).unwrap();
    let archive_dir = dir.path().join(&first.receipt.archive_path);
    assert!(archive_dir.join("receipt.json").is_file());
    assert!(archive_dir.join(".lock").exists(), "the fault kept the lock");
    let again = ws.archive_change(&slug, Holder::anonymous(&actor), None, &mut |_| {}, &|| false).unwrap();
    assert!(again.already_archived);
    assert_eq!(again.receipt, first.receipt);
    assert!(!archive_dir.join(".lock").exists(), "retry releases the stray lock");
}

#[test]
fn leftovers_of_a_crashed_process_are_swept_at_start_however_young() {
    let dir = tempfile::tempdir().unwrap();
    drop(Workspace::open(dir.path(), 1 << 20).unwrap());
    // A build that died a moment ago, and a readiness probe's file.
    let crashed = dir.path().join(".staging/add-x.deadbeef");
    fs::create_dir_all(crashed.join("specs")).unwrap();
    fs::write(crashed.join("proposal.md"), "half").unwrap();
    let probe = dir.path().join(".staging/.ready.0123456789abcdef0123456789abcdef.tmp");
    fs::write(&probe, "").unwrap();
    // A build another live process has under way, however old.
    let live = dir.path().join(".staging/add-y.cafe");
    fs::create_dir_all(&live).unwrap();
    let old = SystemTime::now() - Duration::from_secs(3600);
    fs::File::open(&live).unwrap().set_modified(old).unwrap();
    let building = fsutil::lock_dir(&live).unwrap();

    let ws = Workspace::open(dir.path(), 1 << 20).unwrap();
    assert!(!crashed.exists(), "a folder no build holds is a dead build's");
    assert!(!probe.exists());
    assert!(live.exists(), "a folder a live build holds is kept");
    drop(building);
    assert!(ws.list_changes(StatusFilter::All, 50, "").unwrap().items.is_empty());
}

#[test]
fn temporary_files_left_in_a_change_are_swept_in_its_turn_and_never_archived() {
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace::open(dir.path(), 1 << 20).unwrap();
    ws.open_change(request("add-x"), &|| false).unwrap();
    let change = dir.path().join("changes/add-x");
    let hex = "0123456789abcdef0123456789abcdef";
    // What writers that crashed or ran out of disk left: a lock's temp and one set aside, a
    // task list's temp, a receipt's temp. And what people and editors keep there.
    let ours = [format!("..lock.{hex}.tmp"), format!("..lock.{hex}.stale"), format!(".tasks.md.{hex}.tmp")];
    let theirs = [".tasks.md.swp", "notes.tmp", ".draft.tmp"];
    for name in ours.iter().map(String::as_str).chain(theirs) {
        fs::write(change.join(name), "").unwrap();
    }
    let alice = Owner::parse("alice").unwrap();
    let slug = Slug::parse("add-x").unwrap();
    let id = checklist::parse(&fs::read_to_string(change.join("tasks.md")).unwrap()).items[0].id.clone();
    ws.update_tasks(&slug, Holder::anonymous(&alice), &[(id, true)], &|| false).unwrap();
    for name in &ours {
        assert!(!change.join(name).exists(), "{name} swept");
    }
    for name in theirs {
        assert!(change.join(name).exists(), "{name} is not ours and stays");
    }
    fs::write(change.join(format!(".receipt.json.{hex}.tmp")), "").unwrap();
    let archived = ws.archive_change(&slug, Holder::anonymous(&alice), None, &mut |_| {}, &|| false).unwrap();
    let archive_dir = dir.path().join(&archived.receipt.archive_path);
    assert!(tree(&archive_dir).iter().all(|p| !fsutil::is_temp_name(p)), "{:?}", tree(&archive_dir));
}

#[test]
fn progress_reports_every_step_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace::open(dir.path(), 1 << 20).unwrap();
    ws.open_change(request("add-x"), &|| false).unwrap();
    let mut steps = Vec::new();
    let slug = Slug::parse("add-x").unwrap();
    ws.archive_change(
        &slug,
        Holder::anonymous(&Owner::parse("alice").unwrap()),
        None,
        &mut |s| steps.push((s.name, s.current, s.total)),
        &|| false,
    )
    .unwrap();
    assert_eq!(steps, vec![("validate", 1, 4), ("receipt", 2, 4), ("move", 3, 4), ("release", 4, 4)]);
}

#[test]
fn commits_whose_folder_cannot_be_synced_are_answered_as_done_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let failing = ["open.after_rename", "tasks.after_rename", "archive.after_move"];
    let hook: FaultHook = Arc::new(move |at| match failing.contains(&at) {
        true => Err(io::Error::other(format!("injected fsync failure at {at}"))),
        false => Ok(()),
    });
    let ws = Workspace::open(dir.path(), 1 << 20).unwrap().with_fault_hook(hook);
    assert!(ws.open_change(request("add-x"), &|| false).unwrap().created);
    let change = dir.path().join("changes/add-x");
    let alice = Owner::parse("alice").unwrap();
    let slug = Slug::parse("add-x").unwrap();
    let id = checklist::parse(&fs::read_to_string(change.join("tasks.md")).unwrap()).items[0].id.clone();
    let (_, changed) = ws.update_tasks(&slug, Holder::anonymous(&alice), &[(id.clone(), true)], &|| false).unwrap();
    assert_eq!(changed, [id], "the tick is done, and said so");
    let archived = ws.archive_change(&slug, Holder::anonymous(&alice), None, &mut |_| {}, &|| false).unwrap();
    assert!(!archived.already_archived);
    assert!(dir.path().join(&archived.receipt.archive_path).join("tasks.md").is_file());
    assert_eq!(ws.unsynced_commits(), 3, "each is counted for the operator");
}
