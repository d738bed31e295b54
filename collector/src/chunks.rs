//! Reads shared by followers (and raw downloads): a hundred readers of one busy stream cost about
//! one store read, and readers at the same place hold one copy of what they read.
//!
//! Followers read a stream in *chunks* of consecutive entries. A chunk starting at entry `s`
//! ends at the next multiple of [`ALIGN`] (or earlier: at the byte budget, or where the stored
//! entries end), so followers that start anywhere fall into the same chunk boundaries after
//! at most one chunk, and followers at the same place ask for the same chunk. The cache keeps
//! the most recent [`MAX_CHUNKS`] chunks; while one follower reads a chunk from the store, the
//! others asking for it wait for that read instead of repeating it. A follower holds a chunk
//! only while it sends it, and evicted chunks are dropped once their last holder is done, so
//! memory stays bounded however slow a follower is.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use logdog_proto::logpb::LogEntry;
use tokio::sync::OnceCell;

use crate::reader::{self, ReadError};
use crate::store::{Store, StreamKey};

/// Chunks end at multiples of this many entries.
pub const ALIGN: u64 = 64;
/// Chunks kept.
pub const MAX_CHUNKS: usize = 64;
/// Byte budget of one chunk (encoded entries; one larger entry still makes a chunk).
const CHUNK_BUDGET: usize = 256 * 1024;

/// Consecutive entries of a stream.
#[derive(Debug)]
pub struct Chunk {
    /// The entries, in index order (empty: nothing stored from there yet).
    pub entries: Vec<LogEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ChunkKey {
    stream: StreamKey,
    start: u64,
}

type Cell = Arc<OnceCell<Arc<Chunk>>>;

/// The cells by stream and first entry, and their insertion order (oldest first).
#[derive(Debug, Default)]
struct Cells {
    map: HashMap<ChunkKey, Cell>,
    order: VecDeque<ChunkKey>,
}

/// The shared chunk cache. Cheap to clone; clones share one cache.
#[derive(Debug, Clone, Default)]
pub struct ChunkCache {
    /// Locked only to find, insert or drop a cell, never across a read.
    inner: Arc<Mutex<Cells>>,
}

/// A follower reads once no bundle has been written for this long...
const QUIET_GAP: std::time::Duration = std::time::Duration::from_millis(20);
/// ...or once it has waited this long, whatever the writes.
const YIELD_AT_MOST: std::time::Duration = std::time::Duration::from_millis(500);

impl ChunkCache {
    /// A fresh cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The chunk of `stream` that starts at entry `start`: from the cache, from a read already
    /// under way, or read from `store` now.
    ///
    /// # Errors
    /// The store failed.
    pub async fn read(
        &self,
        store: &Store,
        stream: &StreamKey,
        start: u64,
    ) -> Result<Arc<Chunk>, ReadError> {
        // Writes first: a follower waits (a little) while bundles are being stored.
        store.quiet(QUIET_GAP, YIELD_AT_MOST).await;
        self.read_now(store, stream, start).await
    }

    /// Like [`ChunkCache::read`], without first waiting for writes to pause (for a download of
    /// what is already stored, which does not wait for writers either).
    ///
    /// # Errors
    /// The store failed.
    pub async fn read_now(
        &self,
        store: &Store,
        stream: &StreamKey,
        start: u64,
    ) -> Result<Arc<Chunk>, ReadError> {
        let key = ChunkKey {
            stream: stream.clone(),
            start,
        };
        let cell = {
            let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            let Cells { map, order } = &mut *guard;
            match map.get(&key) {
                Some(c) => c.clone(),
                None => {
                    let c = Cell::default();
                    map.insert(key.clone(), c.clone());
                    order.push_back(key.clone());
                    while order.len() > MAX_CHUNKS {
                        if let Some(old) = order.pop_front() {
                            map.remove(&old);
                        }
                    }
                    c
                }
            }
        };
        let chunk = cell
            .get_or_try_init(|| {
                let (store, stream) = (store.clone(), stream.clone());
                let end = (start / ALIGN + 1) * ALIGN;
                async move {
                    let entries = reader::blocking(move || {
                        store.entries(&stream, start, (end - start) as usize, CHUNK_BUDGET)
                    })
                    .await?;
                    Ok::<_, ReadError>(Arc::new(Chunk { entries }))
                }
            })
            .await?
            .clone();
        if chunk.entries.is_empty() {
            // Nothing there yet: the next follower asking must read again.
            let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            let Cells { map, order } = &mut *guard;
            if map.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                map.remove(&key);
                order.retain(|k| k != &key);
            }
        }
        Ok(chunk)
    }
}
