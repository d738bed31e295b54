//! The notification hub: wakes everyone following a stream when a write changes it.
//!
//! The write path ([`crate::CollectorService`]) calls [`Watchers::notify`] once a bundle is
//! durable; readers (the gRPC `Follow`, the web viewer's live view, the tail server) call
//! [`Watchers::subscribe`] *before* their first read of a stream, so no write between the
//! read and the wait is missed. A notification carries no data: a woken reader reads the
//! store again from where it is, so a slow reader never holds anything for anyone else.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::store::StreamKey;

/// Wakes followers of a stream when it changes; also remembers which projects were written
/// to since the collector started. Cheap to clone; clones share one hub.
#[derive(Debug, Clone, Default)]
pub struct Watchers {
    inner: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    /// One change counter per followed stream. Entries whose receivers are all gone are
    /// dropped on the next notification. Locked only for map lookups, never across an await.
    streams: Mutex<HashMap<StreamKey, watch::Sender<u64>>>,
    /// Projects in the store when the hub was made, and those written to since.
    projects: Mutex<BTreeSet<String>>,
}

impl Watchers {
    /// A fresh hub.
    pub fn new() -> Self {
        Self::default()
    }

    /// A hub that already knows `projects` (those in the store at start).
    pub fn knowing(projects: impl IntoIterator<Item = String>) -> Self {
        let w = Self::default();
        w.inner
            .projects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(projects);
        w
    }

    /// A receiver that sees a change each time `key` is written to from now on.
    pub fn subscribe(&self, key: &StreamKey) -> watch::Receiver<u64> {
        let mut map = self.inner.streams.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(key.clone())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Tells the followers of `keys` that those streams changed.
    pub fn notify(&self, keys: &[StreamKey]) {
        {
            let mut projects = self
                .inner
                .projects
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for k in keys {
                if !projects.contains(&k.project) {
                    projects.insert(k.project.clone());
                }
            }
        }
        let mut map = self.inner.streams.lock().unwrap_or_else(|e| e.into_inner());
        for k in keys {
            if let Some(tx) = map.get(k) {
                if tx.receiver_count() == 0 {
                    map.remove(k);
                } else {
                    tx.send_modify(|v| *v += 1);
                }
            }
        }
    }

    /// Tells the followers of `keys` that those streams changed; an empty list: anything may
    /// have changed (every follower looks again). For changes made elsewhere (another
    /// collector sharing the store).
    pub fn notify_changed(&self, keys: &[StreamKey]) {
        if !keys.is_empty() {
            return self.notify(keys);
        }
        let all: Vec<StreamKey> = {
            let map = self.inner.streams.lock().unwrap_or_else(|e| e.into_inner());
            map.keys().cloned().collect()
        };
        self.notify(&all);
    }

    /// The streams that have followers now.
    pub fn followed(&self) -> Vec<StreamKey> {
        let map = self.inner.streams.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .filter(|(_, tx)| tx.receiver_count() > 0)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Projects known to this hub (see [`Watchers::knowing`]) or written to since, sorted.
    pub fn projects(&self) -> Vec<String> {
        self.inner
            .projects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}
