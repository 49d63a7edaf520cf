//! Races through the real server: many clients opening or archiving the same
//! change at once. Each client uses its own HTTP/2 connection.
mod common;

use std::collections::BTreeMap;

use common::{Server, assert_error, bounded, describe, find_files, ok, snapshot};
use task_mcp::pb::{ArchiveChangeRequest, OpenChangeRequest};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_owners_opening_one_slug_at_once_yield_one_owner_and_49_typed_conflicts() {
    let server = Server::start();
    let mut clients = Vec::new();
    for _ in 0..50 {
        clients.push(server.changes().await);
    }
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(50));
    let mut tasks = Vec::new();
    for (i, mut client) in clients.into_iter().enumerate() {
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let owner = format!("owner-{i:02}");
            let req = OpenChangeRequest {
                title: "Contested".into(),
                slug: "one-slug".into(),
                owner: owner.clone(),
                ..Default::default()
            };
            barrier.wait().await;
            (owner, client.open_change(req).await)
        }));
    }
    let mut winners = Vec::new();
    let mut holders = BTreeMap::<String, usize>::new();
    for task in tasks {
        let (owner, result) = bounded("OpenChange", task).await.expect("task joined");
        match result {
            Ok(resp) => winners.push((owner, resp.into_inner())),
            Err(status) => {
                let info = assert_error(&status, Code::Aborted, "LOCKED_BY_OTHER_OWNER");
                let holder = info.metadata.get("holder").cloned().unwrap_or_default();
                assert!(info.metadata.contains_key("expires_at"), "{}", describe(&status));
                assert_ne!(holder, owner, "a conflict never names the caller");
                *holders.entry(holder).or_default() += 1;
            }
        }
    }
    assert_eq!(winners.len(), 1, "exactly one owner wins: {:?}", winners.iter().map(|w| &w.0).collect::<Vec<_>>());
    let (winner, resp) = &winners[0];
    assert!(resp.created, "the winner created the change");
    assert_eq!(resp.lock.as_ref().unwrap().owner, *winner);
    assert_eq!(holders.len(), 1, "every conflict names the same holder: {holders:?}");
    assert_eq!(holders.get(winner), Some(&49), "the 49 conflicts name the winner {winner}: {holders:?}");

    let dir = server.workspace.join("changes/one-slug");
    let lock: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join(".lock")).unwrap()).unwrap();
    assert_eq!(lock["owner"], winner.as_str(), "the lock on disk names the winner");
    let leftovers = find_files(&server.workspace, |n| n.ends_with(".tmp") || n.ends_with(".stale"));
    assert!(leftovers.is_empty(), "temp files left behind: {leftovers:?}");
    let staging = server.workspace.join(".staging");
    if staging.exists() {
        assert!(snapshot(&staging).is_empty(), ".staging not empty: {:?}", snapshot(&staging).keys());
    }
    server.assert_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_archives_of_one_change_yield_one_archive_and_one_receipt() {
    let server = Server::start();
    let mut first = server.changes().await;
    let req = OpenChangeRequest {
        title: "Race to archive".into(),
        slug: "race-archive".into(),
        owner: "alice".into(),
        ..Default::default()
    };
    ok("OpenChange", bounded("OpenChange", first.open_change(req)).await);

    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(server.changes().await);
    }
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(20));
    let mut tasks = Vec::new();
    for mut client in clients {
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let req = ArchiveChangeRequest { slug: "race-archive".into(), owner: "alice".into(), tests: None };
            barrier.wait().await;
            client.archive_change(req).await
        }));
    }
    let mut fresh = Vec::new();
    let mut repeats = Vec::new();
    for task in tasks {
        let result = bounded("ArchiveChange", task).await.expect("task joined");
        let resp = ok("concurrent ArchiveChange", result);
        if resp.already_archived { repeats.push(resp) } else { fresh.push(resp) }
    }
    assert_eq!(fresh.len(), 1, "exactly one call archives; {} claimed to", fresh.len());
    assert_eq!(repeats.len(), 19);
    let receipt = fresh[0].receipt.clone().expect("receipt");
    for r in &repeats {
        assert_eq!(r.receipt.as_ref(), Some(&receipt), "every caller sees the one saved receipt");
    }

    let archive = server.workspace.join("changes/archive");
    let folders: Vec<_> = std::fs::read_dir(&archive).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(folders.len(), 1, "one archive folder: {folders:?}");
    let receipts = find_files(&server.workspace, |n| n == "receipt.json");
    assert_eq!(receipts.len(), 1, "one receipt: {receipts:?}");
    assert!(!server.workspace.join("changes/race-archive").exists(), "the draft is gone");
    let folder = archive.join(&folders[0]);
    assert!(!folder.join(".lock").exists(), "no lock inside the archive folder");
    let locks = find_files(&folder, |n| n == ".lock" || n.ends_with(".lock"));
    assert!(locks.is_empty(), "lock files in the archive: {locks:?}");
    let leftovers = find_files(&server.workspace, |n| n.ends_with(".tmp") || n.ends_with(".stale"));
    assert!(leftovers.is_empty(), "temp files left behind: {leftovers:?}");
    let staging = server.workspace.join(".staging");
    if staging.exists() {
        assert!(snapshot(&staging).is_empty(), ".staging not empty: {:?}", snapshot(&staging).keys());
    }
    server.assert_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_opens_of_different_slugs_all_succeed() {
    let server = Server::start();
    let mut tasks = Vec::new();
    for i in 0..30 {
        let mut client = server.changes().await;
        tasks.push(tokio::spawn(async move {
            let req = OpenChangeRequest {
                title: format!("Change {i}"),
                slug: format!("parallel-{i:02}"),
                owner: "alice".into(),
                ..Default::default()
            };
            client.open_change(req).await
        }));
    }
    for task in tasks {
        let resp = ok("OpenChange", bounded("OpenChange", task).await.expect("joined"));
        assert!(resp.created);
    }
    let drafts: Vec<_> = std::fs::read_dir(server.workspace.join("changes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("parallel-"))
        .collect();
    assert_eq!(drafts.len(), 30);
}
