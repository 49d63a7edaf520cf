use std::pin::Pin;

use tokio_stream::{
    Stream, StreamExt, wrappers::BroadcastStream, wrappers::errors::BroadcastStreamRecvError,
};
use tonic::{Request, Response, Status};

use super::{AppState, blocking, convert};
use crate::{
    domain::{Slug, uri::ResourceUri},
    pb::{self, resources_server::Resources},
};

/// Chunk size of ReadResource: small enough to interleave with other streams on
/// one HTTP/2 connection, large enough that a typical proposal is one chunk.
pub const CHUNK_BYTES: usize = 64 * 1024;

pub struct ResourcesService {
    state: AppState,
}

impl ResourcesService {
    pub fn new(state: AppState) -> Self {
        ResourcesService { state }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Resources for ResourcesService {
    type ReadResourceStream = BoxStream<pb::ResourceChunk>;

    async fn read_resource(
        &self,
        req: Request<pb::ReadResourceRequest>,
    ) -> Result<Response<Self::ReadResourceStream>, Status> {
        let raw = req.into_inner().uri;
        let uri = ResourceUri::parse(&raw)?;
        let ws = self.state.workspace.clone();
        let raw_for_read = raw.clone();
        let resource = blocking(move || ws.read_resource(&uri, &raw_for_read)).await?;
        let total = resource.bytes.len() as u64;
        let mime = resource.mime_type;
        let mut chunks: Vec<pb::ResourceChunk> = resource
            .bytes
            .chunks(CHUNK_BYTES)
            .scan(0u64, |offset, chunk| {
                let at = *offset;
                *offset += chunk.len() as u64;
                Some(pb::ResourceChunk {
                    uri: raw.clone(),
                    mime_type: mime.to_string(),
                    data: chunk.to_vec(),
                    offset: at,
                    total_size: total,
                    last: false,
                })
            })
            .collect();
        if chunks.is_empty() {
            // An empty resource is still one (empty, last) chunk so clients see its type.
            chunks.push(pb::ResourceChunk {
                uri: raw,
                mime_type: mime.to_string(),
                data: vec![],
                offset: 0,
                total_size: 0,
                last: false,
            });
        }
        if let Some(last) = chunks.last_mut() {
            last.last = true;
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(
            chunks.into_iter().map(Ok),
        ))))
    }

    async fn list_resources(
        &self,
        req: Request<pb::ListResourcesRequest>,
    ) -> Result<Response<pb::ListResourcesResponse>, Status> {
        let slug = req.into_inner().slug;
        let only = if slug.is_empty() {
            None
        } else {
            Some(Slug::parse(&slug)?)
        };
        let ws = self.state.workspace.clone();
        let entries = blocking(move || ws.list_resources(only.as_ref())).await?;
        Ok(Response::new(pb::ListResourcesResponse {
            resources: entries
                .into_iter()
                .map(|e| pb::ResourceInfo {
                    uri: e.uri,
                    name: e.name,
                    mime_type: e.mime_type.to_string(),
                    size: e.size,
                })
                .collect(),
        }))
    }

    type WatchChangesStream = BoxStream<pb::ChangeEvent>;

    async fn watch_changes(
        &self,
        req: Request<pb::WatchChangesRequest>,
    ) -> Result<Response<Self::WatchChangesStream>, Status> {
        let slug = req.into_inner().slug;
        if !slug.is_empty() {
            Slug::parse(&slug)?;
        }
        let events = BroadcastStream::new(self.state.workspace.subscribe()).filter_map(
            move |item| match item {
                Ok(event) if slug.is_empty() || event.slug == slug => {
                    Some(Ok(convert::event(&event)))
                }
                Ok(_) => None,
                Err(BroadcastStreamRecvError::Lagged(n)) => {
                    // A slow consumer misses events rather than holding memory for it.
                    tracing::warn!(missed = n, "watch stream lagged; events dropped");
                    None
                }
            },
        );
        let shutdown = self.state.shutdown.clone();
        let until_drain = async_stream::stream! {
            tokio::pin!(events);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    next = events.next() => match next {
                        Some(item) => yield item,
                        None => break,
                    },
                }
            }
        };
        Ok(Response::new(Box::pin(until_drain)))
    }
}
