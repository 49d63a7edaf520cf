use std::{pin::Pin, time::Duration};

use tokio_stream::{Stream, StreamExt, wrappers::BroadcastStream, wrappers::errors::BroadcastStreamRecvError};
use tonic::{Request, Response, Status};

use super::{AppState, blocking, convert};
use crate::{
    domain::{Slug, uri::ResourceUri},
    error::Error,
    pb::{self, resources_server::Resources},
    workspace::{Event, MAX_REPLAY},
};

/// Chunk size of ReadResource: small enough to interleave with other streams on
/// one HTTP/2 connection, large enough that a typical proposal is one chunk.
pub const CHUNK_BYTES: usize = 64 * 1024;

/// The largest `ListResources` page.
const MAX_RESOURCE_PAGE: u32 = 1000;

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
        // An empty resource is still one (empty, last) chunk so clients see its type.
        let chunks = chunk(&raw, resource.mime_type, resource.bytes);
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks.into_iter().map(Ok)))))
    }

    async fn list_resources(
        &self,
        req: Request<pb::ListResourcesRequest>,
    ) -> Result<Response<pb::ListResourcesResponse>, Status> {
        let req = req.into_inner();
        let only = if req.slug.is_empty() { None } else { Some(Slug::parse(&req.slug)?) };
        if req.page_size > MAX_RESOURCE_PAGE {
            let why = format!("{} is outside 0..={MAX_RESOURCE_PAGE}", req.page_size);
            return Err(Error::invalid("page_size", why).into());
        }
        let ws = self.state.workspace.clone();
        let (entries, next_page_token) =
            blocking(move || ws.list_resources(only.as_ref(), req.page_size as usize, &req.page_token)).await?;
        Ok(Response::new(pb::ListResourcesResponse {
            next_page_token,
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
        let pb::WatchChangesRequest { slug, replay_ms } = req.into_inner();
        if !slug.is_empty() {
            Slug::parse(&slug)?;
        }
        let replay = Duration::from_millis(replay_ms.into());
        if replay > MAX_REPLAY {
            return Err(Error::invalid("replay_ms", format!("{replay_ms} is over {}", MAX_REPLAY.as_millis())).into());
        }
        let wanted = move |event: &Event| slug.is_empty() || event.slug == slug;
        let (past, live) = self.state.workspace.subscribe_since(replay);
        let past: Vec<_> = past.iter().filter(|e| wanted(e)).map(|e| Ok(convert::event(e))).collect();
        let live = BroadcastStream::new(live).filter_map(move |item| match item {
            Ok(event) if wanted(&event) => Some(Ok(convert::event(&event))),
            Ok(_) => None,
            Err(BroadcastStreamRecvError::Lagged(n)) => {
                // A slow consumer misses events rather than holding memory for it.
                tracing::warn!(missed = n, "watch stream lagged; events dropped");
                None
            }
        });
        let events = tokio_stream::iter(past).chain(live);
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

/// Splits a resource into chunks of at most `CHUNK_BYTES`; UTF-8 text is split
/// on character boundaries so that every chunk is valid text on its own.
fn chunk(uri: &str, mime: &str, bytes: Vec<u8>) -> Vec<pb::ResourceChunk> {
    use pb::resource_chunk::Content;
    let total = bytes.len() as u64;
    let make = |offset: usize, content: Content| pb::ResourceChunk {
        uri: uri.to_string(),
        mime_type: mime.to_string(),
        content: Some(content),
        offset: offset as u64,
        total_size: total,
        last: false,
    };
    let mut chunks = Vec::new();
    match String::from_utf8(bytes) {
        Ok(text) => {
            let mut start = 0;
            loop {
                let mut end = (start + CHUNK_BYTES).min(text.len());
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                chunks.push(make(start, Content::Text(text[start..end].to_string())));
                start = end;
                if start >= text.len() {
                    break;
                }
            }
        }
        Err(not_text) => {
            let bytes = not_text.into_bytes();
            for (i, piece) in bytes.chunks(CHUNK_BYTES).enumerate() {
                chunks.push(make(i * CHUNK_BYTES, Content::Blob(piece.to_vec())));
            }
        }
    }
    if let Some(last) = chunks.last_mut() {
        last.last = true;
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::resource_chunk::Content;

    #[test]
    fn text_is_split_on_char_boundaries_and_reassembles() {
        // Two bytes a char and an odd offset: chunk ends never align with char ends.
        let text = format!("x{}", "é".repeat(CHUNK_BYTES));
        let chunks = chunk("u", "text/markdown", text.clone().into_bytes());
        assert!(chunks.len() >= 2);
        let mut joined = String::new();
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!(c.offset as usize, joined.len());
            assert_eq!(c.last, i == chunks.len() - 1);
            match &c.content {
                Some(Content::Text(t)) => joined.push_str(t),
                other => panic!("expected text, got {other:?}"),
            }
        }
        assert_eq!(joined, text);
    }

    #[test]
    fn empty_and_binary_resources() {
        let empty = chunk("u", "text/markdown", Vec::new());
        assert_eq!(empty.len(), 1);
        assert!(empty[0].last);
        let binary = chunk("u", "application/octet-stream", vec![0xff; 10]);
        assert!(matches!(binary[0].content, Some(Content::Blob(ref b)) if b.len() == 10));
    }
}
