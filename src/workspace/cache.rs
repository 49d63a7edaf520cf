//! Parsed changes kept between `change.show` calls, so a read of an unchanged change costs
//! no disk access. The cache is only as good as its invalidation: the watcher (see `watch`)
//! drops a slug's entry for every filesystem event under that slug's folders, ours or another
//! process's, and reads the kernel's event queue before every lookup, so an answer never predates
//! a write that finished before the call began.
//!
//! Insertion races with invalidation: a reader may read the disk, then an edit lands and is
//! invalidated, then the reader stores what it read. Every invalidation bumps a generation, and
//! a reader may only store under the generation it saw before it read the disk.
use std::sync::Arc;

use task_mcp_gateway::FastMap;

use super::Shown;

/// Entries and bytes the cache may hold. A change larger than `MAX_ENTRY_BYTES` is not cached.
const MAX_BYTES: usize = 64 * 1024 * 1024;
const MAX_ENTRY_BYTES: usize = 4 * 1024 * 1024;
const MAX_ENTRIES: usize = 4096;

#[derive(Default)]
pub struct ShowCache {
    generation: u64,
    entries: FastMap<String, (Arc<Shown>, usize)>,
    bytes: usize,
}

impl ShowCache {
    pub fn get(&self, slug: &str) -> Option<Arc<Shown>> {
        self.entries.get(slug).map(|(shown, _)| shown.clone())
    }

    /// The generation to pass to `insert` for a read that starts now.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Stores `shown` unless something was invalidated since `generation` was taken.
    pub fn insert(&mut self, slug: &str, generation: u64, shown: Arc<Shown>) {
        if generation != self.generation {
            return;
        }
        let size = approximate_size(&shown);
        if size > MAX_ENTRY_BYTES {
            return;
        }
        if self.bytes + size > MAX_BYTES || self.entries.len() >= MAX_ENTRIES {
            // Rare (thousands of distinct changes read between edits): start over rather than
            // keep recency bookkeeping on every hit.
            self.entries.clear();
            self.bytes = 0;
        }
        if let Some((_, old)) = self.entries.insert(slug.to_string(), (shown, size)) {
            self.bytes -= old;
        }
        self.bytes += size;
    }

    pub fn invalidate(&mut self, slug: &str) {
        self.generation += 1;
        if let Some((_, size)) = self.entries.remove(slug) {
            self.bytes -= size;
        }
    }

    pub fn invalidate_all(&mut self) {
        self.generation += 1;
        self.entries.clear();
        self.bytes = 0;
    }
}

fn approximate_size(shown: &Shown) -> usize {
    let tasks: usize = shown.tasks.iter().map(|t| t.id.len() + t.text.len() + t.section.len() + 64).sum();
    let deltas: usize = shown
        .deltas
        .iter()
        .map(|d| {
            let reqs: usize = d.requirements.iter().map(|r| r.operation.len() + r.requirement.len() + 64).sum();
            d.path.len() + d.content.len() + reqs + 64
        })
        .sum();
    shown.proposal.len() + shown.summary.title.len() + tasks + deltas + 256
}

#[cfg(test)]
mod tests {
    use time::OffsetDateTime;

    use super::*;
    use crate::workspace::{Status, Summary};

    fn shown(proposal: &str) -> Arc<Shown> {
        Arc::new(Shown {
            summary: Summary {
                slug: "a".into(),
                title: "A".into(),
                status: Status::Draft,
                updated_at: OffsetDateTime::UNIX_EPOCH,
                lock: None,
                progress: (0, 0),
                archive_name: None,
            },
            proposal: proposal.into(),
            tasks: vec![],
            deltas: vec![],
        })
    }

    #[test]
    fn a_read_that_raced_an_invalidation_is_not_stored() {
        let mut cache = ShowCache::default();
        let before = cache.generation();
        cache.invalidate("a");
        cache.insert("a", before, shown("stale"));
        assert!(cache.get("a").is_none());
        let now = cache.generation();
        cache.insert("a", now, shown("fresh"));
        assert_eq!(cache.get("a").map(|s| s.proposal.clone()).as_deref(), Some("fresh"));
    }

    #[test]
    fn invalidation_drops_the_entry_and_its_bytes() {
        let mut cache = ShowCache::default();
        cache.insert("a", cache.generation(), shown("x"));
        cache.insert("b", cache.generation(), shown("y"));
        assert!(cache.bytes > 0);
        cache.invalidate("a");
        assert!(cache.get("a").is_none());
        assert!(cache.get("b").is_some());
        cache.invalidate_all();
        assert!(cache.get("b").is_none());
        assert_eq!(cache.bytes, 0);
    }

    #[test]
    fn an_oversized_change_is_not_cached() {
        let mut cache = ShowCache::default();
        cache.insert("a", cache.generation(), shown(&"x".repeat(MAX_ENTRY_BYTES + 1)));
        assert!(cache.get("a").is_none());
        assert_eq!(cache.bytes, 0);
    }
}
