//! The tonic services. Handlers parse the request into domain types, run the
//! workspace operation on the blocking pool and convert the answer; everything
//! cross-cutting (auth, rate limits, request ids, logging) is a layer.
pub mod changes;
pub mod convert;
pub mod deadline;
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

/// The owner a request acts for: the one it names, else the caller's principal.
fn owner_of<T>(req: &Request<T>, named: &str) -> Result<Owner, Error> {
    if !named.is_empty() {
        return Owner::parse(named);
    }
    let principal = req.extensions().get::<Principal>().cloned().unwrap_or_else(Principal::anonymous);
    Owner::parse(principal.as_str())
}
