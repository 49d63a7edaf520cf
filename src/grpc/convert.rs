//! Workspace types to protobuf messages. Kept apart from the handlers so each
//! handler reads as "parse, call the workspace, convert".
use time::OffsetDateTime;

use crate::{
    domain::{
        checklist::TaskItem,
        uri::ResourceUri,
        validation::{Finding, Severity},
    },
    pb,
    workspace::{self, lock::LockRecord},
};

pub fn timestamp(t: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.unix_timestamp(), nanos: t.nanosecond() as i32 }
}

pub fn lock(record: &LockRecord) -> pb::Lock {
    pb::Lock {
        owner: record.owner.clone(),
        acquired_at: Some(timestamp(record.acquired_at)),
        expires_at: Some(timestamp(record.expires_at())),
        ttl_seconds: record.ttl_seconds,
        live: record.is_live(OffsetDateTime::now_utc()),
    }
}

pub fn summary(s: &workspace::Summary) -> pb::ChangeSummary {
    pb::ChangeSummary {
        slug: s.slug.clone(),
        title: s.title.clone(),
        status: match s.status {
            workspace::Status::Draft => pb::ChangeStatus::Draft,
            workspace::Status::Archived => pb::ChangeStatus::Archived,
        } as i32,
        updated_at: Some(timestamp(s.updated_at)),
        lock: s.lock.as_ref().map(lock),
        progress: Some(pb::TaskProgress { done: s.progress.0, total: s.progress.1 }),
        uri: ResourceUri::proposal(&s.slug),
        archive_name: s.archive_name.clone().unwrap_or_default(),
    }
}

pub fn task(t: &TaskItem) -> pb::Task {
    pb::Task { id: t.id.clone(), text: t.text.clone(), done: t.done, line: t.line, section: t.section.clone() }
}

pub fn progress(tasks: &[TaskItem]) -> pb::TaskProgress {
    let done = tasks.iter().filter(|t| t.done).count() as u32;
    pb::TaskProgress { done, total: tasks.len() as u32 }
}

pub fn finding(f: &Finding) -> pb::Finding {
    pb::Finding {
        code: f.code.to_string(),
        severity: match f.severity {
            Severity::Error => pb::Severity::Error,
            Severity::Warning => pb::Severity::Warning,
            Severity::Info => pb::Severity::Info,
        } as i32,
        file: f.file.clone(),
        line: f.line,
        message: f.message.clone(),
    }
}

pub fn receipt(r: &workspace::Receipt) -> pb::Receipt {
    pb::Receipt {
        slug: r.slug.clone(),
        archived_at: Some(timestamp(r.archived_at)),
        actor: r.actor.clone(),
        opened_at: r.opened_at.map(timestamp),
        commits: r.commits.iter().map(|c| pb::Commit { sha: c.sha.clone(), subject: c.subject.clone() }).collect(),
        files_touched: r.files_touched.clone(),
        tests: r.tests.as_ref().map(|t| pb::TestSummary {
            passed: t.passed,
            failed: t.failed,
            skipped: t.skipped,
            note: t.note.clone(),
        }),
        archive_path: r.archive_path.clone(),
        server_version: r.server_version.clone(),
        git: r.git,
    }
}

pub fn archived(a: &workspace::Archived) -> pb::ArchiveChangeResponse {
    pb::ArchiveChangeResponse {
        receipt: Some(receipt(&a.receipt)),
        already_archived: a.already_archived,
        findings: a.findings.iter().map(finding).collect(),
    }
}

pub fn event(e: &workspace::Event) -> pb::ChangeEvent {
    use workspace::EventKind as K;
    pb::ChangeEvent {
        kind: match e.kind {
            K::Opened => pb::ChangeEventKind::Opened,
            K::Updated => pb::ChangeEventKind::Updated,
            K::TasksUpdated => pb::ChangeEventKind::TasksUpdated,
            K::Archived => pb::ChangeEventKind::Archived,
            K::Removed => pb::ChangeEventKind::Removed,
        } as i32,
        slug: e.slug.clone(),
        at: Some(timestamp(e.at)),
        uris: e.uris.clone(),
        external: e.external,
    }
}
