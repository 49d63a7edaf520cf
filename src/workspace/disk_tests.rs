//! What people and other tools do to a workspace on disk: symlinks where folders belong, a
//! missing archive folder, a slug archived twice in a day, an archive made without a receipt,
//! a second server process on the same workspace. Each must end in the right answer or a
//! clear error, never in a read or a move outside the workspace, nor a lost write.
use std::{
    os::unix::fs::PermissionsExt,
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime},
};

use super::*;

fn open(root: &Path, slug: &str) -> (Slug, Owner) {
    let ws = Workspace::open(root, 1 << 20).unwrap();
    let slug = Slug::parse(slug).unwrap();
    let owner = Owner::parse("alice").unwrap();
    ws.open_change(
        OpenRequest {
            slug: slug.clone(),
            title: Title::parse("On disk").unwrap(),
            rationale: Rationale::parse("because").unwrap(),
            owner: owner.clone(),
            principal: Principal::anonymous(),
            ttl: Ttl::DEFAULT,
            template: TemplateKind::Feature,
        },
        &|| false,
    )
    .unwrap();
    (slug, owner)
}

/// A workspace on `root` with its watcher running, and a subscription to its events.
fn watched(root: &Path) -> (Arc<Workspace>, watch::WatchGuard, broadcast::Receiver<Event>) {
    let ws = Arc::new(Workspace::open(root, 1 << 20).unwrap());
    let guard = ws.watch().unwrap();
    let events = ws.subscribe();
    (ws, guard, events)
}

fn archive(ws: &Workspace, slug: &Slug, owner: &Owner) -> Result<Archived> {
    ws.archive_change(slug, Holder::anonymous(owner), None, &mut |_| {}, &|| false)
}

#[test]
fn a_specs_folder_linked_outside_serves_nothing_from_there() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("secret.md"), "not yours").unwrap();
    let (slug, _) = open(dir.path(), "sym");
    let ws = Workspace::open(dir.path(), 1 << 20).unwrap();
    let specs = dir.path().join("changes/sym/specs");
    fs::remove_dir_all(&specs).unwrap();
    std::os::unix::fs::symlink(outside.path(), &specs).unwrap();
    let raw = "change://sym/delta/secret.md";
    let read = ws.read_resource(&ResourceUri::parse(raw).unwrap(), raw);
    assert!(matches!(read, Err(Error::InvalidPath { .. })), "{:?}", read.map(|r| r.bytes));
    assert!(ws.show_change(&slug).unwrap().deltas.is_empty());
}

#[test]
fn an_archive_folder_linked_outside_is_refused_and_the_change_stays() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let (slug, owner) = open(dir.path(), "arch-out");
    let archive_dir = dir.path().join("changes/archive");
    fs::remove_dir(&archive_dir).unwrap();
    std::os::unix::fs::symlink(outside.path(), &archive_dir).unwrap();
    let ws = Workspace::open(dir.path(), 1 << 20).unwrap();
    let err = archive(&ws, &slug, &owner).unwrap_err();
    assert!(matches!(&err, Error::WorkspaceUnusable { path, .. } if path == "changes/archive"), "{err:?}");
    assert_eq!(err.code(), tonic::Code::Internal);
    assert!(dir.path().join("changes/arch-out/proposal.md").is_file(), "the change is still a draft");
    assert!(!dir.path().join("changes/arch-out/receipt.json").exists(), "no receipt left behind");
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0, "nothing moved outside");
}

#[test]
fn a_missing_archive_folder_lists_as_empty_and_is_made_again_by_archive() {
    let dir = tempfile::tempdir().unwrap();
    let (slug, owner) = open(dir.path(), "no-archive");
    let ws = Workspace::open(dir.path(), 1 << 20).unwrap();
    fs::remove_dir(dir.path().join("changes/archive")).unwrap();
    let page = ws.list_changes(StatusFilter::All, 50, "").unwrap();
    assert_eq!(page.items.len(), 1);
    let archived = archive(&ws, &slug, &owner).unwrap();
    assert!(dir.path().join(&archived.receipt.archive_path).join("receipt.json").is_file());
}

/// `change.list` pages run through the drafts, then the archive, each in name order, and see
/// what another process (another `Workspace`) adds between pages, though the folders' listings
/// are kept between calls: the folders are stamped a minute old first, so the first page's
/// listings are trusted and only the changes' new stamps can tell they are out of date.
#[test]
fn list_pages_cross_from_drafts_to_archive_and_see_what_another_process_adds_between_pages() {
    let dir = tempfile::tempdir().unwrap();
    for slug in ["dd-d", "aa-a", "cc-c", "bb-b"] {
        open(dir.path(), slug);
    }
    let ws = Workspace::open(dir.path(), 1 << 20).unwrap();
    let owner = Owner::parse("alice").unwrap();
    for slug in ["cc-c", "aa-a"] {
        archive(&ws, &Slug::parse(slug).unwrap(), &owner).unwrap();
    }
    let a_minute_ago = fs::FileTimes::new().set_modified(SystemTime::now() - Duration::from_secs(60));
    for folder in ["changes", "changes/archive"] {
        fs::File::open(dir.path().join(folder)).unwrap().set_times(a_minute_ago).unwrap();
    }

    let other = Workspace::open(dir.path(), 1 << 20).unwrap();
    let (mut walked, mut totals, mut token) = (Vec::new(), Vec::new(), String::new());
    loop {
        let page = ws.list_changes(StatusFilter::All, 1, &token).unwrap();
        walked.extend(page.items.iter().map(|s| s.slug.clone()));
        totals.push(page.total);
        match walked.len() {
            1 => drop(open(dir.path(), "ca-c")),
            4 => {
                open(dir.path(), "zz-z");
                archive(&other, &Slug::parse("zz-z").unwrap(), &owner).unwrap();
            }
            _ => {}
        }
        match page.next_page_token {
            Some(next) => token = next,
            None => break,
        }
        assert!(walked.len() < 10, "the walk does not end: {walked:?}");
    }
    assert_eq!(walked, ["bb-b", "ca-c", "dd-d", "aa-a", "cc-c", "zz-z"]);
    assert_eq!(totals, [4, 5, 5, 5, 6, 6]);
}

#[test]
fn a_slug_archived_twice_in_a_day_resolves_to_its_newest_archive_only() {
    let dir = tempfile::tempdir().unwrap();
    let (slug, owner) = open(dir.path(), "bar");
    let ws = Workspace::open(dir.path(), 1 << 20).unwrap();
    let first = archive(&ws, &slug, &owner).unwrap();
    open(dir.path(), "bar");
    let second = archive(&ws, &slug, &owner).unwrap();
    assert!(second.receipt.archive_path.ends_with("-bar-2"), "{}", second.receipt.archive_path);
    assert_ne!(first.receipt.archive_path, second.receipt.archive_path);

    let shown = ws.show_change(&slug).unwrap();
    assert_eq!(shown.summary.archive_name.as_deref(), second.receipt.archive_path.strip_prefix("changes/archive/"));
    let again = archive(&ws, &slug, &owner).unwrap();
    assert!(again.already_archived);
    assert_eq!(again.receipt, second.receipt);
    let raw = "change://bar/receipt";
    let receipt = ws.read_resource(&ResourceUri::parse(raw).unwrap(), raw).unwrap();
    assert_eq!(serde_json::from_slice::<Receipt>(&receipt.bytes).unwrap(), second.receipt);

    // `bar-2` was never opened: its name's look-alike folder is `bar`'s.
    let other = Slug::parse("bar-2").unwrap();
    assert!(matches!(ws.show_change(&other), Err(Error::ChangeNotFound { .. })));
    assert!(matches!(archive(&ws, &other, &owner), Err(Error::ChangeNotFound { .. })));
}

#[test]
fn an_archive_made_without_a_receipt_is_a_typed_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace::open(dir.path(), 1 << 20).unwrap();
    // What the OpenSpec CLI leaves: an archived change with no receipt of ours.
    let cli = dir.path().join("changes/archive/2026-01-01-cli-one");
    fs::create_dir_all(cli.join("specs")).unwrap();
    fs::write(cli.join("proposal.md"), "# CLI archived\n\n## Why\nx\n").unwrap();
    let slug = Slug::parse("cli-one").unwrap();
    let err = archive(&ws, &slug, &Owner::parse("alice").unwrap()).unwrap_err();
    assert!(matches!(err, Error::ReceiptUnavailable { .. }), "{err:?}");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert_eq!(ws.show_change(&slug).unwrap().summary.status, Status::Archived);
}

#[test]
fn two_processes_ticking_one_change_lose_no_tick() {
    let dir = tempfile::tempdir().unwrap();
    let (slug, owner) = open(dir.path(), "ticks");
    let ids: Vec<String> = (1..=40).map(|n| format!("1.{n}")).collect();
    let tasks: String = ids.iter().map(|id| format!("- [ ] {id} Task {id}\n")).collect();
    fs::write(dir.path().join("changes/ticks/tasks.md"), format!("# Tasks\n\n## 1. Work\n{tasks}")).unwrap();
    // Two handles on one root stand for two processes: neither sees the other's mutexes, only
    // the folder's `flock`.
    let handles = [
        Arc::new(Workspace::open(dir.path(), 1 << 20).unwrap()),
        Arc::new(Workspace::open(dir.path(), 1 << 20).unwrap()),
    ];
    let threads: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let (ws, slug, owner, id) = (handles[i % 2].clone(), slug.clone(), owner.clone(), id.clone());
            std::thread::spawn(move || {
                ws.update_tasks(&slug, Holder::anonymous(&owner), &[(id, true)], &|| false).map(|_| ())
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap().unwrap();
    }
    let text = fs::read_to_string(dir.path().join("changes/ticks/tasks.md")).unwrap();
    assert_eq!(text.matches("- [x]").count(), ids.len(), "{text}");
}

#[test]
fn ticking_keeps_the_permissions_of_tasks_md() {
    let dir = tempfile::tempdir().unwrap();
    let (slug, owner) = open(dir.path(), "private");
    let ws = Workspace::open(dir.path(), 1 << 20).unwrap();
    let path = dir.path().join("changes/private/tasks.md");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    let id = checklist::parse(&fs::read_to_string(&path).unwrap()).items[0].id.clone();
    ws.update_tasks(&slug, Holder::anonymous(&owner), &[(id, true)], &|| false).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
}

#[test]
fn spec_files_beyond_the_cap_fail_validation_rather_than_go_unread() {
    let dir = tempfile::tempdir().unwrap();
    let (slug, owner) = open(dir.path(), "many");
    let ws = Workspace::open(dir.path(), 1 << 20).unwrap();
    for n in 0..=MAX_SPEC_FILES {
        let cap = dir.path().join(format!("changes/many/specs/c{n:03}"));
        fs::create_dir_all(&cap).unwrap();
        fs::write(cap.join("spec.md"), "## ADDED Requirements\n### Requirement: R\nThe thing SHALL work.\n").unwrap();
    }
    let findings = ws.validate_change(&slug).unwrap();
    assert!(findings.iter().any(|f| f.code == "TOO_MANY_SPEC_FILES" && f.severity == Severity::Error), "{findings:?}");
    assert!(matches!(archive(&ws, &slug, &owner), Err(Error::ValidationFailed { .. })));
}

#[test]
fn an_archive_is_reported_once_as_this_process_made_it() {
    let dir = tempfile::tempdir().unwrap();
    let (slug, owner) = open(dir.path(), "watched");
    let (ws, _guard, mut events) = watched(dir.path());
    archive(&ws, &slug, &owner).unwrap();
    // Past the watcher's quiet period, so anything it would report has been reported.
    std::thread::sleep(std::time::Duration::from_millis(800));
    let mut archived = Vec::new();
    while let Ok(event) = events.try_recv() {
        assert_ne!(event.kind, EventKind::Removed, "an archive is not a removal: {event:?}");
        if event.kind == EventKind::Archived {
            archived.push(event.external);
        }
    }
    assert_eq!(archived, vec![false], "one ARCHIVED event, from this process");
}

/// The events of `slug` that arrive within `window`, as `(kind, external)`.
fn events_of(events: &mut broadcast::Receiver<Event>, slug: &str, window: Duration) -> Vec<(EventKind, bool)> {
    std::thread::sleep(window);
    let mut out = Vec::new();
    while let Ok(event) = events.try_recv() {
        if event.slug == slug {
            out.push((event.kind, event.external));
        }
    }
    out
}

/// Well past the watcher's quiet period (150 ms), so what it would report has been reported.
const SETTLE: Duration = Duration::from_millis(800);

#[test]
fn a_file_written_without_pause_does_not_hold_back_other_changes_events() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path(), "busy");
    open(dir.path(), "calm");
    let (_ws, _guard, mut events) = watched(dir.path());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let log = dir.path().join("changes/busy/build.log");
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // Bounded, so a failing run ends; far longer than the watcher may hold events.
            for _ in 0..400 {
                if stop.load(std::sync::atomic::Ordering::Acquire) {
                    return true;
                }
                fs::write(&log, b"line\n").unwrap();
                std::thread::sleep(Duration::from_millis(25));
            }
            false
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let tasks = dir.path().join("changes/calm/tasks.md");
    fs::write(&tasks, fs::read_to_string(&tasks).unwrap() + "\n").unwrap();
    let seen = loop {
        match events.blocking_recv() {
            Ok(event) if event.slug == "calm" => break event.kind,
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    };
    stop.store(true, std::sync::atomic::Ordering::Release);
    assert_eq!(seen, EventKind::TasksUpdated);
    assert!(writer.join().unwrap(), "the edit was reported while the other file was still being written");
}

#[test]
fn a_change_deleted_or_moved_out_by_hand_is_removed_and_then_silent() {
    let dir = tempfile::tempdir().unwrap();
    let (deleted, _) = open(dir.path(), "deleted");
    let (moved, _) = open(dir.path(), "moved-out");
    let (_ws, _guard, mut events) = watched(dir.path());

    fs::remove_dir_all(dir.path().join("changes").join(deleted.as_str())).unwrap();
    assert_eq!(events_of(&mut events, "deleted", SETTLE), [(EventKind::Removed, true)]);

    let outside = dir.path().join("elsewhere");
    fs::rename(dir.path().join("changes").join(moved.as_str()), &outside).unwrap();
    assert_eq!(events_of(&mut events, "moved-out", SETTLE), [(EventKind::Removed, true)]);
    fs::write(outside.join("tasks.md"), "- [x] 1.1 Edited where the server no longer looks\n").unwrap();
    assert_eq!(events_of(&mut events, "moved-out", SETTLE), [], "edits outside the workspace are not reported");
}

#[test]
fn a_tick_right_after_open_is_ours_and_a_later_deletion_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let (ws, _guard, mut events) = watched(dir.path());
    let (slug, owner) = open(dir.path(), "quick");
    let tasks = dir.path().join("changes/quick/tasks.md");
    let id = checklist::parse(&fs::read_to_string(&tasks).unwrap()).items[0].id.clone();
    ws.update_tasks(&slug, Holder::anonymous(&owner), &[(id, true)], &|| false).unwrap();
    let seen = events_of(&mut events, "quick", SETTLE);
    assert!(!seen.iter().any(|(_, external)| *external), "nothing here was another process's: {seen:?}");

    // Long after our write, the file going away is someone else's doing.
    std::thread::sleep(watch::MOVED_AWAY_WINDOW + Duration::from_millis(100));
    fs::remove_file(&tasks).unwrap();
    assert_eq!(events_of(&mut events, "quick", SETTLE), [(EventKind::TasksUpdated, true)]);
}

#[test]
fn a_change_file_that_is_not_text_is_the_changes_fault_not_the_requests() {
    let dir = tempfile::tempdir().unwrap();
    let (slug, owner) = open(dir.path(), "bad-utf");
    let ws = Workspace::open(dir.path(), 1 << 20).unwrap();
    fs::write(dir.path().join("changes/bad-utf/tasks.md"), b"- [ ] 1.1 \xff\xfe bad\n").unwrap();
    for err in [
        ws.show_change(&slug).err(),
        ws.update_tasks(&slug, Holder::anonymous(&owner), &[("1.1".into(), true)], &|| false).err(),
    ] {
        let err = err.expect("refused");
        assert!(matches!(&err, Error::FileUnreadable { file, .. } if file == "tasks.md"), "{err:?}");
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    }
    let findings = ws.validate_change(&slug).unwrap();
    assert!(findings.iter().any(|f| f.code == "FILE_UNREADABLE" && f.file == "tasks.md"), "{findings:?}");
}

#[test]
fn files_under_specs_are_served_with_the_type_their_extension_names() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path(), "typed");
    let ws = Workspace::open(dir.path(), 1 << 20).unwrap();
    let specs = dir.path().join("changes/typed/specs");
    fs::write(specs.join("notes.txt"), "plain").unwrap();
    fs::write(specs.join("data.bin"), [0u8, 1, 2]).unwrap();
    for (file, want) in
        [("README.md", "text/markdown"), ("notes.txt", "text/plain"), ("data.bin", "application/octet-stream")]
    {
        let raw = format!("change://typed/delta/{file}");
        let read = ws.read_resource(&ResourceUri::parse(&raw).unwrap(), &raw).map(|r| r.mime_type);
        assert_eq!(read.ok(), Some(want), "{file}");
    }
}

#[test]
fn a_spec_file_whose_name_reading_refuses_is_listed_as_no_resource() {
    let dir = tempfile::tempdir().unwrap();
    let (slug, _) = open(dir.path(), "named");
    let (ws, _guard, mut events) = watched(dir.path());
    let specs = dir.path().join("changes/named/specs");
    for name in ["my spec.md", "ünïcode.md", "plain.md"] {
        fs::write(specs.join(name), "## ADDED Requirements\n").unwrap();
    }
    let listed: Vec<String> = ws.list_resources(Some(&slug), 0, "").unwrap().0.into_iter().map(|r| r.uri).collect();
    let deltas: Vec<&String> = listed.iter().filter(|u| u.contains("/delta/")).collect();
    assert_eq!(deltas, ["change://named/delta/README.md", "change://named/delta/plain.md"]);
    for uri in &listed {
        assert!(ws.read_resource(&ResourceUri::parse(uri).unwrap(), uri).is_ok(), "listed but unreadable: {uri}");
    }
    std::thread::sleep(SETTLE);
    let mut uris = Vec::new();
    while let Ok(event) = events.try_recv() {
        uris.extend(event.uris);
    }
    assert!(uris.iter().any(|u| u.ends_with("/delta/plain.md")), "{uris:?}");
    assert!(uris.iter().all(|u| !u.contains(' ') && u.is_ascii()), "an event names no unreadable resource: {uris:?}");
}

/// Pages of `list_resources` add up to the whole list, in URI order, with no resource twice,
/// even when changes are opened between pages; a token is good for its own filter only.
#[test]
fn resource_pages_add_up_to_the_whole_list_and_survive_changes_opened_between_them() {
    let dir = tempfile::tempdir().unwrap();
    // `aaa-b` sorts before `aaa` in URI order (`-` before `/`), which the page walk must respect.
    for slug in ["bbb", "aaa", "aaa-b", "ccc"] {
        open(dir.path(), slug);
    }
    fs::write(dir.path().join("changes/aaa/specs/auth.md"), "## ADDED Requirements\n").unwrap();
    let ws = Workspace::open(dir.path(), 1 << 20).unwrap();
    let uris = |page: Vec<ResourceEntry>| page.into_iter().map(|r| r.uri).collect::<Vec<_>>();
    let (all, token) = ws.list_resources(None, 0, "").unwrap();
    assert!(token.is_empty(), "one answer holds every resource");
    let all = uris(all);
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted, "URI order");
    assert_eq!(all.len(), 4 * 3 + 2, "three per change, one more delta, and the active list");

    let (mut walked, mut token, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let (page, next) = ws.list_resources(None, 3, &token).unwrap();
        assert!(page.len() <= 3);
        walked.extend(uris(page));
        pages += 1;
        if pages == 2 {
            // Opened between pages, before the anchor: not served now, nothing repeated.
            open(dir.path(), "aa-early");
        }
        if next.is_empty() {
            break;
        }
        token = next;
    }
    assert_eq!(walked, all, "the pages add up to the list as it was");
    assert_eq!(pages, 5, "14 resources in pages of 3");

    let aaa = Slug::parse("aaa").unwrap();
    let (one, filtered_token) = ws.list_resources(Some(&aaa), 1, "").unwrap();
    assert_eq!(uris(one), ["change://aaa/delta/README.md"]);
    assert!(matches!(ws.list_resources(None, 1, &filtered_token), Err(Error::InvalidPageToken)));
    assert!(matches!(ws.list_resources(None, 1, "garbage"), Err(Error::InvalidPageToken)));
}

#[test]
fn opening_a_folder_made_by_hand_lists_only_the_files_it_has() {
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace::open(dir.path(), 1 << 20).unwrap();
    fs::create_dir_all(dir.path().join("changes/by-hand")).unwrap();
    fs::write(dir.path().join("changes/by-hand/proposal.md"), "# By hand\n").unwrap();
    let opened = ws
        .open_change(
            OpenRequest {
                slug: Slug::parse("by-hand").unwrap(),
                title: Title::parse("By hand").unwrap(),
                rationale: Rationale::parse("because").unwrap(),
                owner: Owner::parse("alice").unwrap(),
                principal: Principal::anonymous(),
                ttl: Ttl::DEFAULT,
                template: TemplateKind::Feature,
            },
            &|| false,
        )
        .unwrap();
    assert!(!opened.created);
    assert_eq!(opened.files, vec!["changes/by-hand/proposal.md".to_string()]);
}

#[test]
fn a_delta_that_cannot_be_read_is_named_not_passed_over() {
    let dir = tempfile::tempdir().unwrap();
    let (slug, _) = open(dir.path(), "big-delta");
    let ws = Workspace::open(dir.path(), 1 << 20).unwrap();
    let specs = dir.path().join("changes/big-delta/specs");
    let _ = fs::remove_dir_all(&specs);
    fs::create_dir_all(specs.join("big")).unwrap();
    fs::write(specs.join("big/spec.md"), vec![b'a'; MAX_DOC_BYTES as usize + 1]).unwrap();
    let err = ws.show_change(&slug).expect_err("a change shown without its delta would look delta-less");
    assert!(matches!(&err, Error::ResourceTooLarge { uri, .. } if uri == "specs/big/spec.md"), "{err:?}");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    let findings = ws.validate_change(&slug).unwrap();
    assert!(findings.iter().any(|f| f.code == "FILE_UNREADABLE" && f.file == "specs/big/spec.md"), "{findings:?}");
    assert!(!findings.iter().any(|f| f.code == validation::SPECS_NO_DELTAS), "{findings:?}");

    fs::write(specs.join("big/spec.md"), b"## ADDED Requirements\n\xff\n").unwrap();
    let err = ws.show_change(&slug).expect_err("not text");
    assert!(matches!(&err, Error::FileUnreadable { file, .. } if file == "specs/big/spec.md"), "{err:?}");
}

#[test]
fn an_editor_saving_through_a_temporary_file_is_one_tasks_event() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path(), "edited");
    let (_ws, _guard, mut events) = watched(dir.path());
    let tasks = dir.path().join("changes/edited/tasks.md");
    let temp = dir.path().join("changes/edited/tasks.md.tmp");
    fs::write(&temp, fs::read_to_string(&tasks).unwrap().replacen("- [ ]", "- [x]", 1)).unwrap();
    fs::rename(&temp, &tasks).unwrap();
    assert_eq!(events_of(&mut events, "edited", SETTLE), [(EventKind::TasksUpdated, true)]);
}

#[test]
fn a_caller_that_stopped_waiting_for_its_turn_gets_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let (slug, owner) = open(dir.path(), "waited");
    let ws = Arc::new(Workspace::open(dir.path(), 1 << 20).unwrap());
    let change = dir.path().join("changes/waited");
    let before = (fs::read(change.join("tasks.md")).unwrap(), fs::read(change.join(lock::LOCK_FILE)).unwrap());
    let id = checklist::parse(&String::from_utf8_lossy(&before.0)).items[0].id.clone();
    // Another process has its turn at the change; our caller gives up while waiting.
    let other = fsutil::lock_dir(&change).unwrap();
    let gone = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tick = {
        let (ws, slug, owner, gone) = (ws.clone(), slug.clone(), owner.clone(), gone.clone());
        std::thread::spawn(move || {
            ws.update_tasks(&slug, Holder::anonymous(&owner), &[(id, true)], &|| {
                gone.load(std::sync::atomic::Ordering::Acquire)
            })
        })
    };
    let archive = {
        let (ws, slug, owner, gone) = (ws.clone(), slug.clone(), owner.clone(), gone.clone());
        std::thread::spawn(move || {
            ws.archive_change(&slug, Holder::anonymous(&owner), None, &mut |_| {}, &|| {
                gone.load(std::sync::atomic::Ordering::Acquire)
            })
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    gone.store(true, std::sync::atomic::Ordering::Release);
    // They leave the queue while the other process still has its turn: a thread per caller
    // that gave up must not stay blocked behind it.
    assert!(matches!(tick.join().unwrap(), Err(Error::CallerGone)));
    assert!(matches!(archive.join().unwrap(), Err(Error::CallerGone)));
    drop(other);
    let after = (fs::read(change.join("tasks.md")).unwrap(), fs::read(change.join(lock::LOCK_FILE)).unwrap());
    assert_eq!(before, after, "neither the tick nor the lock refresh was written");
    assert!(ws.latest_archive(&slug).unwrap().is_none(), "not archived");
}

#[test]
fn edits_on_disk_are_reported_in_the_order_they_happened() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path(), "alpha");
    open(dir.path(), "beta");
    let (_ws, _guard, mut events) = watched(dir.path());
    let append = |file: &str| {
        let path = dir.path().join("changes").join(file);
        fs::write(&path, fs::read_to_string(&path).unwrap() + "\n").unwrap();
    };
    // Within one quiet period, so one batch: its order is the edits' order, not the slugs'.
    append("beta/tasks.md");
    append("alpha/tasks.md");
    append("alpha/proposal.md");
    std::thread::sleep(SETTLE);
    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        seen.push((event.slug, event.kind));
    }
    assert_eq!(
        seen,
        [
            ("beta".to_string(), EventKind::TasksUpdated),
            ("alpha".to_string(), EventKind::TasksUpdated),
            ("alpha".to_string(), EventKind::Updated)
        ]
    );
}

/// Rewrites the lock of `slug` as `owner`'s, taken three hours ago for a minute: expired.
fn expire_lock(root: &Path, slug: &str, owner: &Owner) {
    let then = OffsetDateTime::now_utc() - time::Duration::hours(3);
    let record = LockRecord::new(Holder::anonymous(owner), Ttl::parse(60).unwrap(), then);
    fs::write(root.join("changes").join(slug).join(lock::LOCK_FILE), serde_json::to_vec(&record).unwrap()).unwrap();
}

fn open_request(slug: &str, owner: &str) -> OpenRequest {
    OpenRequest {
        slug: Slug::parse(slug).unwrap(),
        title: Title::parse("On disk").unwrap(),
        rationale: Rationale::parse("because").unwrap(),
        owner: Owner::parse(owner).unwrap(),
        principal: Principal::anonymous(),
        ttl: Ttl::DEFAULT,
        template: TemplateKind::Feature,
    }
}

/// Starts `owner`'s open of `slug` on `ws` in a thread and returns once that open waits for
/// its turn at the change, or has finished: then the interleaving under test is settled.
fn open_until_it_waits(ws: &Arc<Workspace>, slug: &str, owner: &str) -> std::thread::JoinHandle<Result<Opened>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (ws, req) = (ws.clone(), open_request(slug, owner));
    let thread = std::thread::spawn(move || {
        let waiting = tx.clone();
        // Asked while it waits for its turn; the caller never goes away.
        let opened = ws.open_change(req, &move || {
            let _ = waiting.send("waiting");
            false
        });
        let _ = tx.send("done");
        opened
    });
    // Bounded only so that a hang fails the test instead of stalling it.
    rx.recv_timeout(Duration::from_secs(10)).expect("the open neither waited nor finished");
    thread
}

type PendingOpen = Arc<std::sync::Mutex<Option<std::thread::JoinHandle<Result<Opened>>>>>;

#[test]
fn an_open_by_another_process_waits_for_an_archive_under_way_and_then_opens_anew() {
    let dir = tempfile::tempdir().unwrap();
    let (slug, alice) = open(dir.path(), "race");
    expire_lock(dir.path(), "race", &alice);
    // Bob opens on the other server while alice's archive is about to move the change.
    let other = Arc::new(Workspace::open(dir.path(), 1 << 20).unwrap());
    let bob: PendingOpen = Default::default();
    let hook: FaultHook = {
        let (other, bob) = (other.clone(), bob.clone());
        Arc::new(move |point| {
            if point == "archive.before_move" {
                *bob.lock().unwrap() = Some(open_until_it_waits(&other, "race", "bob"));
            }
            Ok(())
        })
    };
    let ws = Workspace::open(dir.path(), 1 << 20).unwrap().with_fault_hook(hook);
    let archived = archive(&ws, &slug, &alice).unwrap();
    let bob = bob.lock().unwrap().take().expect("the hook ran").join().unwrap().unwrap();

    assert!(!archived.already_archived);
    assert!(
        bob.created && bob.takeover.is_none(),
        "bob was told he took over a change that went to the archive: {bob:?}"
    );
    assert_eq!(lock::read(&dir.path().join("changes/race")).unwrap().map(|l| l.owner).as_deref(), Some("bob"));
    let archive_dir = dir.path().join(&archived.receipt.archive_path);
    let archived_files: Vec<_> = fs::read_dir(&archive_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(
        archived_files.iter().all(|f| !f.to_string_lossy().ends_with(".tmp") && f != lock::LOCK_FILE),
        "{archived_files:?}"
    );
    assert!(read_meta(&archive_dir).takeovers.is_empty(), "no takeover happened in the archived change");
}

#[test]
fn an_archive_reads_the_lock_again_right_before_the_move() {
    let dir = tempfile::tempdir().unwrap();
    let (slug, alice) = open(dir.path(), "retaken");
    expire_lock(dir.path(), "retaken", &alice);
    let change = dir.path().join("changes/retaken");
    // A writer that takes no turn (an older server, a person) gives the lock to bob meanwhile.
    let hook: FaultHook = {
        let change = change.clone();
        Arc::new(move |point| {
            if point == "archive.before_move" {
                let bob = LockRecord::new(Holder::anonymous(&Owner::parse("bob").unwrap()), Ttl::DEFAULT, now());
                fs::write(change.join(lock::LOCK_FILE), serde_json::to_vec(&bob).unwrap())?;
            }
            Ok(())
        })
    };
    let ws = Workspace::open(dir.path(), 1 << 20).unwrap().with_fault_hook(hook);
    let err = archive(&ws, &slug, &alice).unwrap_err();
    assert!(matches!(&err, Error::LockedByOtherOwner { holder, .. } if holder == "bob"), "{err:?}");
    assert!(change.join("tasks.md").is_file(), "still a draft");
    assert!(!change.join(RECEIPT_FILE).exists(), "no receipt left in the draft");
    assert!(ws.latest_archive(&slug).unwrap().is_none(), "not archived");
}

#[test]
fn an_archive_whose_folder_name_is_taken_at_the_last_moment_goes_to_the_next_name() {
    let dir = tempfile::tempdir().unwrap();
    let (slug, owner) = open(dir.path(), "coll");
    let change = dir.path().join("changes/coll");
    // Another archive (`coll-2`'s first or `coll`'s second of the day elsewhere) takes the name
    // this one picked, after it picked it.
    let squatted = Arc::new(std::sync::Mutex::new(None::<PathBuf>));
    let hook: FaultHook = {
        let (change, root, squatted) = (change.clone(), dir.path().to_path_buf(), squatted.clone());
        Arc::new(move |point| {
            let mut squatted = squatted.lock().unwrap();
            if point == "archive.before_move" && squatted.is_none() {
                let picked: Receipt = serde_json::from_slice(&fs::read(change.join(RECEIPT_FILE))?)?;
                let folder = root.join(&picked.archive_path);
                fs::create_dir_all(folder.join("specs"))?;
                *squatted = Some(folder);
            }
            Ok(())
        })
    };
    let ws = Workspace::open(dir.path(), 1 << 20).unwrap().with_fault_hook(hook);
    let archived = archive(&ws, &slug, &owner).unwrap();

    let squatted = squatted.lock().unwrap().clone().expect("the hook ran");
    let went_to = dir.path().join(&archived.receipt.archive_path);
    assert_ne!(went_to, squatted);
    assert!(archived.receipt.archive_path.ends_with("-coll-2"), "{}", archived.receipt.archive_path);
    let saved: Receipt = serde_json::from_slice(&fs::read(went_to.join(RECEIPT_FILE)).unwrap()).unwrap();
    assert_eq!(saved, archived.receipt, "the receipt names the folder the change went to");
    assert_eq!(fs::read_dir(&squatted).unwrap().count(), 1, "the other archive's folder is untouched");
    assert!(!change.exists());
}

/// A whole task list of eight items.
fn eight_tasks() -> String {
    let items: String = (1..=8).map(|n| format!("- [ ] 1.{n} Task number {n} of the list\n")).collect();
    format!("# Tasks\n\n## 1. Work\n{items}")
}

/// A person saving a file in place (truncate, then write) who has written the first `cut`
/// bytes; `finish` writes the rest into the same file.
struct InPlaceSave {
    file: fs::File,
    rest: Vec<u8>,
}

impl InPlaceSave {
    fn start(path: &Path, text: &str, cut: usize) -> Self {
        use std::io::Write;
        let mut file = fs::OpenOptions::new().write(true).truncate(true).open(path).unwrap();
        file.write_all(&text.as_bytes()[..cut]).unwrap();
        InPlaceSave { file, rest: text.as_bytes()[cut..].to_vec() }
    }

    fn finish(&mut self) -> io::Result<()> {
        use std::io::Write;
        self.file.write_all(&std::mem::take(&mut self.rest))
    }
}

/// A workspace whose hook finishes `save` right after the `finish_at`th read of `tasks.md`.
fn finishing_save_at_read(root: &Path, save: InPlaceSave, finish_at: usize) -> Workspace {
    let save = std::sync::Mutex::new((0, save));
    let hook: FaultHook = Arc::new(move |point| {
        let mut state = save.lock().unwrap();
        if point == "tasks.after_read" {
            state.0 += 1;
            if state.0 == finish_at {
                state.1.finish()?;
            }
        }
        Ok(())
    });
    Workspace::open(root, 1 << 20).unwrap().with_fault_hook(hook)
}

#[test]
fn a_save_in_place_landing_between_a_ticks_read_and_its_write_is_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let (slug, owner) = open(dir.path(), "saved");
    let tasks = dir.path().join("changes/saved/tasks.md");
    let whole = eight_tasks();
    // The save has written whole lines so far: nothing in what the tick reads says it is partial.
    let cut = whole.find("- [ ] 1.5").unwrap();
    let ws = finishing_save_at_read(dir.path(), InPlaceSave::start(&tasks, &whole, cut), 1);
    ws.update_tasks(&slug, Holder::anonymous(&owner), &[("1.1".into(), true)], &|| false).unwrap();
    assert_eq!(fs::read_to_string(&tasks).unwrap(), whole.replacen("- [ ] 1.1", "- [x] 1.1", 1));
}

#[test]
fn a_tick_waits_for_a_task_list_that_ends_mid_line_while_it_is_being_saved() {
    let dir = tempfile::tempdir().unwrap();
    let (slug, owner) = open(dir.path(), "half");
    let tasks = dir.path().join("changes/half/tasks.md");
    let whole = eight_tasks();
    // The save stalls mid-line over more than one of the tick's reads (and its write, were it
    // to write).
    let cut = whole.find("number 5").unwrap();
    let ws = finishing_save_at_read(dir.path(), InPlaceSave::start(&tasks, &whole, cut), 3);
    ws.update_tasks(&slug, Holder::anonymous(&owner), &[("1.1".into(), true)], &|| false).unwrap();
    assert_eq!(fs::read_to_string(&tasks).unwrap(), whole.replacen("- [ ] 1.1", "- [x] 1.1", 1));
}

#[test]
fn a_task_list_saved_again_at_every_read_is_a_concurrent_edit_and_left_as_saved() {
    let dir = tempfile::tempdir().unwrap();
    let (slug, owner) = open(dir.path(), "busy-list");
    let tasks = dir.path().join("changes/busy-list/tasks.md");
    let saves = std::sync::Mutex::new(0usize);
    let hook: FaultHook = {
        let tasks = tasks.clone();
        Arc::new(move |point| {
            if point == "tasks.after_read" {
                let mut saves = saves.lock().unwrap();
                *saves += 1;
                fs::write(&tasks, format!("{}{}", eight_tasks(), "\n".repeat(*saves)))?;
            }
            Ok(())
        })
    };
    let ws = Workspace::open(dir.path(), 1 << 20).unwrap().with_fault_hook(hook);
    let err = ws.update_tasks(&slug, Holder::anonymous(&owner), &[("1.1".into(), true)], &|| false).unwrap_err();
    assert!(matches!(&err, Error::ConcurrentEdit { file, .. } if file == "tasks.md"), "{err:?}");
    assert_eq!(err.code(), tonic::Code::Aborted);
    let left = fs::read_to_string(&tasks).unwrap();
    assert!(left.starts_with(&eight_tasks()) && !left.contains("[x]"), "the last save stands: {left}");
}

#[test]
fn a_task_list_without_a_final_newline_written_long_ago_is_ticked_and_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let (slug, owner) = open(dir.path(), "no-newline");
    let tasks = dir.path().join("changes/no-newline/tasks.md");
    let text = eight_tasks().trim_end().to_string();
    fs::write(&tasks, &text).unwrap();
    let long_ago = SystemTime::now() - Duration::from_secs(3600);
    fs::File::options().write(true).open(&tasks).unwrap().set_modified(long_ago).unwrap();
    let ws = Workspace::open(dir.path(), 1 << 20).unwrap();
    ws.update_tasks(&slug, Holder::anonymous(&owner), &[("1.8".into(), true)], &|| false).unwrap();
    assert_eq!(fs::read_to_string(&tasks).unwrap(), text.replacen("- [ ] 1.8", "- [x] 1.8", 1));
    let findings = ws.validate_change(&slug).unwrap();
    assert!(findings.iter().any(|f| f.code == validation::TASKS_NO_FINAL_NEWLINE && f.line == 11), "{findings:?}");
}

/// `dir` made unwritable until dropped: read-only permissions, or, for a user whom permissions
/// do not stop (root), the immutable attribute (`chattr +i`, what the audit found unnoticed).
struct Unwritable {
    dir: PathBuf,
    immutable: bool,
}

impl Unwritable {
    fn new(dir: &Path) -> Self {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o555)).unwrap();
        let probe = dir.join("probe");
        let immutable = fs::write(&probe, b"").is_ok();
        if immutable {
            fs::remove_file(&probe).unwrap();
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
            let status = std::process::Command::new("chattr").arg("+i").arg(dir).status().expect("run chattr");
            assert!(status.success(), "chattr +i {}: the file system must support it", dir.display());
        }
        Unwritable { dir: dir.to_path_buf(), immutable }
    }
}

impl Drop for Unwritable {
    fn drop(&mut self) {
        if self.immutable {
            let _ = std::process::Command::new("chattr").arg("-i").arg(&self.dir).status();
        } else {
            let _ = fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o755));
        }
    }
}

#[test]
fn readiness_fails_while_changes_cannot_be_written_though_staging_can() {
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace::open(dir.path(), 1 << 20).unwrap();
    ws.check_writable().unwrap();
    let frozen = Unwritable::new(&dir.path().join("changes"));
    let err = ws.check_writable().expect_err("ready while no change can be opened");
    assert!(matches!(&err, Error::WorkspaceUnusable { path, .. } if path.ends_with("changes")), "{err:?}");
    drop(frozen);
    ws.check_writable().unwrap();
    assert_eq!(fs::read_dir(dir.path().join("changes")).unwrap().count(), 1, "no probe file left: only archive/");
}

#[test]
fn a_workspace_removed_under_the_server_is_named_and_not_made_again() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("openspec");
    let ws = Workspace::open(&root, 1 << 20).unwrap();
    // Deleted, or its volume unmounted, while the server runs.
    fs::remove_dir_all(&root).unwrap();

    let err = ws.open_change(open_request("gone", "alice"), &|| false).unwrap_err();
    assert!(matches!(&err, Error::WorkspaceUnusable { why, .. } if why.contains("the folder is gone")), "{err:?}");
    let err = ws.check_writable().expect_err("ready with no workspace");
    assert!(matches!(&err, Error::WorkspaceUnusable { .. }), "{err:?}");
    assert!(!root.exists(), "the workspace was made again");
}

#[test]
fn a_staging_area_on_another_file_system_is_named_by_open_and_by_readiness() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir_in("/dev/shm").expect("/dev/shm");
    let device = |p: &Path| fs::metadata(p).unwrap().dev();
    assert_ne!(device(dir.path()), device(elsewhere.path()), "the test needs /dev/shm on another file system");
    // An operator put the build-aside area elsewhere.
    fs::create_dir_all(dir.path().join("changes/archive")).unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), dir.path().join(".staging")).unwrap();
    let ws = Workspace::open(dir.path(), 1 << 20).unwrap();

    let err = ws.open_change(open_request("cross", "alice"), &|| false).unwrap_err();
    assert!(matches!(&err, Error::WorkspaceUnusable { why, .. } if why.contains("one mount")), "{err:?}");
    assert!(!dir.path().join("changes/cross").exists());
    assert_eq!(fs::read_dir(elsewhere.path()).unwrap().count(), 0, "nothing left in the staging area");
    let err = ws.check_writable().expect_err("ready while every open fails");
    assert!(matches!(&err, Error::WorkspaceUnusable { why, .. } if why.contains("one mount")), "{err:?}");
    assert_eq!(fs::read_dir(elsewhere.path()).unwrap().count(), 0, "no probe file left");
}

#[test]
fn a_lock_that_is_a_folder_is_named_by_every_call_and_the_change_stays_listed() {
    let dir = tempfile::tempdir().unwrap();
    let (slug, alice) = open(dir.path(), "dir-lock");
    let lock_path = dir.path().join("changes/dir-lock").join(lock::LOCK_FILE);
    fs::remove_file(&lock_path).unwrap();
    fs::create_dir(&lock_path).unwrap();
    let ws = Workspace::open(dir.path(), 1 << 20).unwrap();
    let calls = [
        ("show", ws.show_change(&slug).err()),
        ("open", ws.open_change(open_request("dir-lock", "bob"), &|| false).err()),
        ("update", ws.update_tasks(&slug, Holder::anonymous(&alice), &[("1.1".into(), true)], &|| false).err()),
        ("archive", archive(&ws, &slug, &alice).err()),
    ];
    for (call, err) in calls {
        let err = err.unwrap_or_else(|| panic!("{call} went ahead without knowing who holds the change"));
        assert!(matches!(&err, Error::FileUnreadable { file, .. } if file == ".lock"), "{call}: {err:?}");
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{call}");
    }
    let listed = ws.list_changes(StatusFilter::Draft, 50, "").unwrap();
    assert_eq!(listed.items.iter().map(|s| s.slug.as_str()).collect::<Vec<_>>(), ["dir-lock"]);
    assert!(lock_path.is_dir(), "a person's folder is not removed");
}

#[test]
fn a_task_list_made_a_folder_after_a_ticks_read_is_named_not_an_internal_error() {
    let dir = tempfile::tempdir().unwrap();
    let (slug, owner) = open(dir.path(), "made-dir");
    let tasks = dir.path().join("changes/made-dir/tasks.md");
    let hook: FaultHook = {
        let tasks = tasks.clone();
        Arc::new(move |point| {
            if point == "tasks.after_read" && tasks.is_file() {
                fs::remove_file(&tasks)?;
                fs::create_dir(&tasks)?;
                fs::write(tasks.join("inside"), "a person's file")?;
            }
            Ok(())
        })
    };
    let ws = Workspace::open(dir.path(), 1 << 20).unwrap().with_fault_hook(hook);
    let id = checklist::parse(&eight_tasks()).items[0].id.clone();
    let err = ws.update_tasks(&slug, Holder::anonymous(&owner), &[(id, true)], &|| false).unwrap_err();
    assert!(matches!(&err, Error::FileUnreadable { file, .. } if file == "tasks.md"), "{err:?}");
    assert!(tasks.join("inside").is_file());
}

#[test]
fn a_task_list_deleted_and_written_again_meanwhile_never_fails_a_read_as_internal() {
    let dir = tempfile::tempdir().unwrap();
    let (slug, _) = open(dir.path(), "flicker");
    let tasks = dir.path().join("changes/flicker/tasks.md");
    // ASCII: a read that meets the file half written still reads text.
    let text = eight_tasks();
    let ws = Workspace::open(dir.path(), 1 << 20).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Someone deleting the file and writing it again, as fast as they can.
    let flicker = {
        let (stop, tasks) = (stop.clone(), tasks.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = fs::remove_file(&tasks);
                let _ = fs::write(&tasks, &text);
            }
        })
    };
    // Enough reads for many of them to meet a deletion at any point of the read.
    let failures: Vec<Error> = (0..5000).filter_map(|_| ws.show_change(&slug).err()).collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flicker.join().unwrap();
    assert!(failures.is_empty(), "{} reads failed, e.g. {:?}", failures.len(), failures.first());
}

#[test]
fn a_takeover_that_cannot_be_recorded_leaves_the_change_free_not_held_by_the_failed_caller() {
    let dir = tempfile::tempdir().unwrap();
    let (slug, alice) = open(dir.path(), "lapsed");
    let change = dir.path().join("changes/lapsed");
    let tasks = fs::read(change.join("tasks.md")).unwrap();
    let meta = fs::read(change.join(META_FILE)).unwrap();
    // The disk fills between placing the lock and recording the takeover in the metadata.
    let hook: FaultHook = Arc::new(|point| match point {
        "takeover.before_record" => Err(io::Error::from(io::ErrorKind::StorageFull)),
        _ => Ok(()),
    });
    let ws = Workspace::open(dir.path(), 1 << 20).unwrap().with_fault_hook(hook);
    let bob = Owner::parse("bob").unwrap();
    let reopen = || ws.open_change(open_request("lapsed", "bob"), &|| false).err();
    let tick = || ws.update_tasks(&slug, Holder::anonymous(&bob), &[("1.1".into(), true)], &|| false).err();
    for (call, attempt) in [("reopen", &reopen as &dyn Fn() -> Option<Error>), ("tick", &tick)] {
        expire_lock(dir.path(), "lapsed", &alice);
        let err = attempt().unwrap_or_else(|| panic!("{call} went ahead"));
        assert!(matches!(&err, Error::WorkspaceFull { .. }), "{call}: {err:?}");
        assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{call}");
        assert_eq!(lock::read(&change).unwrap(), None, "{call}: the failed caller holds the change");
        assert_eq!(fs::read(change.join("tasks.md")).unwrap(), tasks, "{call}");
        assert_eq!(fs::read(change.join(META_FILE)).unwrap(), meta, "{call}: a takeover recorded");
        let names: Vec<_> = fs::read_dir(&change).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(!names.iter().any(|n| fsutil::is_temp_name(&n.to_string_lossy())), "{call}: {names:?}");
    }
}
