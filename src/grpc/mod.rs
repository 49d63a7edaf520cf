//! The tonic services. Handlers parse the request into domain types, run the
//! workspace operation on the blocking pool and convert the answer; everything
//! cross-cutting (auth, rate limits, request ids, logging) is a layer.
pub mod changes;
pub mod content_type;
pub mod convert;
pub mod deadline;
pub mod health;
pub mod in_process;
pub mod incoming;
pub mod layers;
pub mod metrics;
pub mod rejections;
pub mod resources;

use std::sync::Arc;

use tonic::{Request, Status};

use crate::{auth::Principal, domain::Owner, error::Error, workspace::Workspace};

/// State shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub workspace: Arc<Workspace>,
    /// Cancelled when the server starts draining: long streams end then.
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// Runs a blocking workspace call off the async workers.
async fn blocking<T, F>(f: F) -> Result<T, Status>
where
    F: FnOnce() -> Result<T, Error> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(Error::into_status),
        Err(join) => Err(Error::internal("workspace task", join).into_status()),
    }
}

/// `blocking` for a call that writes: `f` is told whether the caller is still waiting. The
/// blocking task runs on when the call is dropped (a client's cancel or deadline drops the
/// handler's future), so it asks before it writes, and a caller that is gone gets nothing
/// written on its behalf.
async fn blocking_write<T, F>(f: F) -> Result<T, Status>
where
    F: FnOnce(&dyn Fn() -> bool) -> Result<T, Error> + Send + 'static,
    T: Send + 'static,
{
    let gone = tokio_util::sync::CancellationToken::new();
    let waiting = gone.clone().drop_guard();
    let result = blocking(move || f(&|| gone.is_cancelled())).await;
    waiting.disarm();
    result
}

/// Who a request acts as: the owner it names (else its principal's name) and its principal.
fn actor_of<T>(req: &Request<T>, named: &str) -> Result<(Owner, Principal), Error> {
    let principal = req.extensions().get::<Principal>().cloned().unwrap_or_else(Principal::anonymous);
    let owner = if named.is_empty() { Owner::parse(principal.as_str())? } else { Owner::parse(named)? };
    Ok((owner, principal))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_write_whose_call_was_dropped_is_told_its_caller_is_gone() {
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let (report, seen) = tokio::sync::oneshot::channel();
        let call = blocking_write(move |gone| {
            let _ = wait.recv();
            let _ = report.send(gone());
            Ok(())
        });
        // The client's deadline passes while the write waits: tonic drops the handler's future.
        assert!(tokio::time::timeout(Duration::from_millis(50), call).await.is_err());
        release.send(()).unwrap();
        assert!(seen.await.unwrap(), "the write learns that nobody waits for it");

        let answered = blocking_write(|gone| Ok(gone())).await.unwrap();
        assert!(!answered, "a caller still waiting is not gone");
    }
}
