//! What a method handler gets: who is calling, how to reach the service, and the
//! stream (if any) on which it may send notifications and requests that belong
//! to this request (progress, log messages, sampling, elicitation).
use std::{sync::Arc, time::Duration};

use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{jsonrpc, jsonrpc::RpcError, session::Session, sse::EventLog};
use crate::{AppState, upstream::CallContext};

pub struct RequestContext {
    pub state: Arc<AppState>,
    /// None in the stateless era and for fixtures called without a session.
    pub session: Option<Arc<Session>>,
    pub principal: String,
    pub call: CallContext,
    pub protocol_version: String,
    pub request_id: Value,
    /// `params._meta.progressToken`, when the client asked for progress.
    pub progress_token: Option<Value>,
    /// Cancelled by `notifications/cancelled`, a closed stream (2026-07-28) or the session's end;
    /// not by a drain, which gives calls in flight the grace period to finish.
    pub cancel: CancellationToken,
    /// Messages on this request's own stream; None when answering with plain JSON.
    pub outbox: Option<Outbox>,
}

/// Where a request's stream messages go.
#[derive(Clone)]
pub enum Outbox {
    /// A stream of this request alone: its log is finished once every sender is gone
    /// ([`super::transport::pump_into`]).
    Channel(mpsc::Sender<Value>),
    /// A stream the request shares (the legacy transport's one stream), written at once, so
    /// that a message is on the stream before the request counts as done.
    Log(Arc<EventLog>),
}

impl Outbox {
    /// Queues `message`; an error when nobody will read it any more.
    pub async fn send(&self, message: Value) -> Result<(), ()> {
        match self {
            Outbox::Channel(tx) => tx.send(message).await.map_err(|_| ()),
            Outbox::Log(log) => {
                log.push(&message);
                Ok(())
            }
        }
    }
}

impl RequestContext {
    pub fn has_stream(&self) -> bool {
        self.outbox.is_some()
    }

    /// Sends a notification on this request's stream; dropped when there is none.
    pub async fn notify(&self, method: &str, params: Value) {
        if let Some(out) = &self.outbox {
            let _ = out.send(jsonrpc::notification(method, params)).await;
        }
    }

    /// `notifications/progress` for this request, if the client gave a token.
    pub async fn progress(&self, progress: f64, total: Option<f64>, message: Option<String>) {
        let Some(token) = &self.progress_token else { return };
        let mut params = json!({"progressToken": token, "progress": progress});
        if let Some(total) = total {
            params["total"] = json!(total);
        }
        if let Some(message) = message {
            params["message"] = json!(message);
        }
        self.notify("notifications/progress", params).await;
    }

    /// `notifications/message`, if the session's log level lets it through.
    pub async fn log(&self, level: &str, logger: Option<&str>, data: Value) {
        if let Some(session) = &self.session
            && !session.logs_at(level)
        {
            return;
        }
        let mut params = json!({"level": level, "data": data});
        if let Some(logger) = logger {
            params["logger"] = json!(logger);
        }
        self.notify("notifications/message", params).await;
    }

    /// Sends a request to the client on this request's stream and waits for the
    /// answer the client POSTs back (sampling, elicitation, roots).
    pub async fn request_client(&self, method: &str, params: Value, timeout: Duration) -> Result<Value, RpcError> {
        let (Some(session), Some(out)) = (&self.session, &self.outbox) else {
            return Err(RpcError::new(jsonrpc::SERVER_ERROR, format!("{method} needs a session and a stream")));
        };
        let (tx, rx) = oneshot::channel();
        let id = session.register_client_request(tx);
        if out.send(jsonrpc::request(&id, method, params)).await.is_err() {
            session.forget_client_request(&id);
            return Err(RpcError::new(jsonrpc::SERVER_ERROR, "the client stream closed"));
        }
        let outcome = tokio::select! {
            answer = rx => answer.unwrap_or_else(|_| Err(RpcError::new(jsonrpc::SERVER_ERROR, "session closed"))),
            () = tokio::time::sleep(timeout) => Err(RpcError::new(jsonrpc::SERVER_ERROR, format!("no answer to {method} within {timeout:?}"))),
            () = self.cancel.cancelled() => Err(RpcError::new(jsonrpc::SERVER_ERROR, "request cancelled")),
        };
        session.forget_client_request(&id);
        outcome
    }
}
