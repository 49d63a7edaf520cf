use std::pin::Pin;

use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use super::{AppState, actor_of, blocking, blocking_write, convert};
use crate::{
    domain::{Rationale, Slug, TemplateKind, Title, Ttl, uri::ResourceUri},
    error::Error,
    pb::{self, changes_server::Changes},
    workspace::{Holder, OpenRequest, StatusFilter, TestSummary},
};

const MAX_PAGE_SIZE: u32 = 200;
const DEFAULT_PAGE_SIZE: u32 = 50;
const MAX_UPDATES: usize = 500;
const MAX_TASK_ID_LEN: usize = 64;
const MAX_NOTE_CHARS: usize = 2048;

pub struct ChangesService {
    state: AppState,
}

impl ChangesService {
    pub fn new(state: AppState) -> Self {
        ChangesService { state }
    }
}

fn template(value: i32) -> Result<TemplateKind, Error> {
    match pb::Template::try_from(value) {
        Ok(pb::Template::Unspecified | pb::Template::Feature) => Ok(TemplateKind::Feature),
        Ok(pb::Template::Bugfix) => Ok(TemplateKind::Bugfix),
        Ok(pb::Template::Chore) => Ok(TemplateKind::Chore),
        Err(_) => Err(Error::invalid("template", format!("unknown template {value}"))),
    }
}

fn status_filter(value: i32) -> Result<StatusFilter, Error> {
    match pb::ChangeStatus::try_from(value) {
        Ok(pb::ChangeStatus::Unspecified | pb::ChangeStatus::Draft) => Ok(StatusFilter::Draft),
        Ok(pb::ChangeStatus::Archived) => Ok(StatusFilter::Archived),
        Ok(pb::ChangeStatus::All) => Ok(StatusFilter::All),
        Err(_) => Err(Error::invalid("status", format!("unknown status {value}"))),
    }
}

fn test_summary(t: Option<pb::TestSummary>) -> Result<Option<TestSummary>, Error> {
    let Some(t) = t else { return Ok(None) };
    let chars = t.note.chars().count();
    if chars > MAX_NOTE_CHARS {
        return Err(Error::TooLarge { field: "tests.note", size: chars, limit: MAX_NOTE_CHARS });
    }
    if t.note.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(Error::invalid("tests.note", "must not contain control characters"));
    }
    Ok(Some(TestSummary { passed: t.passed, failed: t.failed, skipped: t.skipped, note: t.note }))
}

type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Changes for ChangesService {
    async fn open_change(
        &self,
        req: Request<pb::OpenChangeRequest>,
    ) -> Result<Response<pb::OpenChangeResponse>, Status> {
        let (owner, principal) = actor_of(&req, &req.get_ref().owner)?;
        let r = req.into_inner();
        let open = OpenRequest {
            slug: Slug::parse(&r.slug)?,
            title: Title::parse(&r.title)?,
            rationale: Rationale::parse(&r.rationale)?,
            owner,
            principal,
            ttl: Ttl::parse(r.ttl_seconds)?,
            template: template(r.template)?,
        };
        let ws = self.state.workspace.clone();
        let opened = blocking_write(move |gone| ws.open_change(open, gone)).await?;
        let slug = opened.summary.slug.clone();
        // The resources of the files the change has (a folder made by hand may lack some).
        let has = |file: &str| opened.files.iter().any(|f| f.rsplit('/').next() == Some(file));
        let resource_uris = [("proposal.md", ResourceUri::proposal(&slug)), ("tasks.md", ResourceUri::tasks(&slug))]
            .into_iter()
            .filter_map(|(file, uri)| has(file).then_some(uri))
            .collect();
        Ok(Response::new(pb::OpenChangeResponse {
            change: Some(convert::summary(&opened.summary)),
            created: opened.created,
            lock: Some(convert::lock(&opened.lock)),
            takeover: opened.takeover.as_ref().map(|prev| pb::Takeover {
                previous_owner: prev.owner.clone(),
                expired_at: Some(convert::timestamp(prev.expires_at())),
            }),
            files: opened.files,
            resource_uris,
        }))
    }

    async fn list_changes(
        &self,
        req: Request<pb::ListChangesRequest>,
    ) -> Result<Response<pb::ListChangesResponse>, Status> {
        let r = req.into_inner();
        let size = match r.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n <= MAX_PAGE_SIZE => n,
            n => return Err(Error::invalid("page_size", format!("{n} is outside 1..=200")).into()),
        };
        let filter = status_filter(r.status)?;
        let ws = self.state.workspace.clone();
        let page = blocking(move || ws.list_changes(filter, size as usize, &r.page_token)).await?;
        Ok(Response::new(pb::ListChangesResponse {
            changes: page.items.iter().map(convert::summary).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
            total: page.total as u32,
        }))
    }

    async fn show_change(
        &self,
        req: Request<pb::ShowChangeRequest>,
    ) -> Result<Response<pb::ShowChangeResponse>, Status> {
        let slug = Slug::parse(&req.into_inner().slug)?;
        let ws = self.state.workspace.clone();
        // A cached change is answered on the async worker: no thread hop, no disk.
        let shown = match ws.cached_show(&slug) {
            Some(shown) => shown,
            None => blocking(move || ws.show_change_and_cache(&slug)).await?,
        };
        Ok(Response::new(pb::ShowChangeResponse {
            change: Some(convert::summary(&shown.summary)),
            proposal: shown.proposal.clone(),
            tasks: shown.tasks.iter().map(convert::task).collect(),
            deltas: shown
                .deltas
                .iter()
                .map(|d| pb::SpecDelta {
                    path: d.path.clone(),
                    content: d.content.clone(),
                    requirements: d
                        .requirements
                        .iter()
                        .map(|r| pb::RequirementChange {
                            operation: r.operation.clone(),
                            requirement: r.requirement.clone(),
                            scenarios: r.scenarios,
                        })
                        .collect(),
                })
                .collect(),
        }))
    }

    async fn validate_change(
        &self,
        req: Request<pb::ValidateChangeRequest>,
    ) -> Result<Response<pb::ValidateChangeResponse>, Status> {
        let slug = Slug::parse(&req.into_inner().slug)?;
        let ws = self.state.workspace.clone();
        let findings = blocking(move || ws.validate_change(&slug)).await?;
        Ok(Response::new(pb::ValidateChangeResponse {
            valid: crate::domain::validation::is_valid(&findings),
            findings: findings.iter().map(convert::finding).collect(),
        }))
    }

    async fn update_tasks(
        &self,
        req: Request<pb::UpdateTasksRequest>,
    ) -> Result<Response<pb::UpdateTasksResponse>, Status> {
        let (owner, principal) = actor_of(&req, &req.get_ref().owner)?;
        let r = req.into_inner();
        let slug = Slug::parse(&r.slug)?;
        if r.updates.is_empty() {
            return Err(Error::invalid("updates", "at least one update is required").into());
        }
        if r.updates.len() > MAX_UPDATES {
            return Err(Error::TooLarge { field: "updates", size: r.updates.len(), limit: MAX_UPDATES }.into());
        }
        if let Some(u) = r.updates.iter().find(|u| u.id.is_empty() || u.id.len() > MAX_TASK_ID_LEN) {
            return Err(Error::invalid(
                "updates.id",
                format!("task ids are 1 to {MAX_TASK_ID_LEN} bytes, got {}", u.id.len()),
            )
            .into());
        }
        let updates: Vec<(String, bool)> = r.updates.into_iter().map(|u| (u.id, u.done)).collect();
        let ws = self.state.workspace.clone();
        let (tasks, changed) = blocking_write(move |gone| {
            ws.update_tasks(&slug, Holder { owner: &owner, principal: &principal }, &updates, gone)
        })
        .await?;
        Ok(Response::new(pb::UpdateTasksResponse {
            progress: Some(convert::progress(&tasks)),
            tasks: tasks.iter().map(convert::task).collect(),
            changed,
        }))
    }

    async fn archive_change(
        &self,
        req: Request<pb::ArchiveChangeRequest>,
    ) -> Result<Response<pb::ArchiveChangeResponse>, Status> {
        let (owner, principal) = actor_of(&req, &req.get_ref().owner)?;
        let r = req.into_inner();
        let slug = Slug::parse(&r.slug)?;
        let tests = test_summary(r.tests)?;
        let ws = self.state.workspace.clone();
        let archived = blocking_write(move |gone| {
            ws.archive_change(&slug, Holder { owner: &owner, principal: &principal }, tests, &mut |_| {}, gone)
        })
        .await?;
        Ok(Response::new(convert::archived(&archived)))
    }

    type ArchiveChangeStreamStream = EventStream<pb::ArchiveChangeEvent>;

    async fn archive_change_stream(
        &self,
        req: Request<pb::ArchiveChangeRequest>,
    ) -> Result<Response<Self::ArchiveChangeStreamStream>, Status> {
        let (owner, principal) = actor_of(&req, &req.get_ref().owner)?;
        let r = req.into_inner();
        let slug = Slug::parse(&r.slug)?;
        let tests = test_summary(r.tests)?;
        let ws = self.state.workspace.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::task::spawn_blocking(move || {
            use pb::archive_change_event::Event;
            let progress_tx = tx.clone();
            let mut report = |step: crate::workspace::Step| {
                // A client that went away stops receiving progress; the archive
                // itself still completes, so the workspace is never left half-done.
                let _ = progress_tx.blocking_send(Ok(pb::ArchiveChangeEvent {
                    event: Some(Event::Progress(pb::Progress {
                        step: step.name.to_string(),
                        message: step.message,
                        current: step.current,
                        total: step.total,
                    })),
                }));
            };
            // The client is gone when the stream's receiver is.
            let gone = || tx.is_closed();
            let last = match ws.archive_change(
                &slug,
                Holder { owner: &owner, principal: &principal },
                tests,
                &mut report,
                &gone,
            ) {
                Ok(archived) => Ok(pb::ArchiveChangeEvent { event: Some(Event::Result(convert::archived(&archived))) }),
                Err(e) => Err(e.into_status()),
            };
            let _ = tx.blocking_send(last);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
