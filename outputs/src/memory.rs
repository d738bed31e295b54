//! The memory output: keeps every bundle and reassembles streams from them. For tests.
//!
//! Streams are keyed by their name. Accessors sort entries by `stream_index`, so they give the
//! right answer even when bundles were sent out of order.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use logdog_proto::{Bundle, Content, Entry, logpb};

use crate::{DEFAULT_MAX_BUNDLE_SIZE, Output, OutputError, OutputStats, StatsCounter};

#[derive(Debug)]
struct Inner {
    max_bundle_size: usize,
    bundles: Mutex<Vec<Bundle>>,
    stats: StatsCounter,
    closed: AtomicBool,
}

/// Keeps every bundle in memory. Cloning gives another handle to the same store, so a test can
/// hand one clone to the butler and inspect the other.
#[derive(Debug, Clone)]
pub struct MemoryOutput {
    inner: Arc<Inner>,
}

impl Default for MemoryOutput {
    /// Accepts bundles of up to [`DEFAULT_MAX_BUNDLE_SIZE`] bytes.
    fn default() -> Self {
        Self::new(DEFAULT_MAX_BUNDLE_SIZE)
    }
}

impl MemoryOutput {
    /// A new, empty store accepting bundles of up to `max_bundle_size` bytes.
    pub fn new(max_bundle_size: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                max_bundle_size,
                bundles: Mutex::new(Vec::new()),
                stats: StatsCounter::default(),
                closed: AtomicBool::new(false),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Bundle>> {
        self.inner.bundles.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every bundle received so far, in the order received.
    pub fn bundles(&self) -> Vec<Bundle> {
        self.lock().clone()
    }

    /// Whether [`close`](Output::close) has been called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// The names of every stream seen, sorted.
    pub fn stream_names(&self) -> Vec<String> {
        let bundles = self.lock();
        let names: BTreeSet<&str> = bundles
            .iter()
            .flat_map(|b| &b.entries)
            .map(|e| e.desc.name())
            .collect();
        names.into_iter().map(str::to_owned).collect()
    }

    /// Every entry of stream `name` in `bundles`, sorted by `stream_index`, or `None` if the
    /// stream never appeared.
    fn stream_entries(bundles: &[Bundle], name: &str) -> Option<Vec<Entry>> {
        let mut seen = false;
        let mut entries = Vec::new();
        for be in bundles
            .iter()
            .flat_map(|b| &b.entries)
            .filter(|e| e.desc.name() == name)
        {
            seen = true;
            entries.extend(be.logs.iter().cloned());
        }
        entries.sort_by_key(|e| e.stream_index);
        seen.then_some(entries)
    }

    /// Every entry of stream `name`, sorted by `stream_index`; empty for an unknown stream.
    pub fn entries(&self, name: &str) -> Vec<Entry> {
        Self::stream_entries(&self.lock(), name).unwrap_or_default()
    }

    /// The stream's bytes as written: the content data of its entries concatenated in
    /// `stream_index` order (text data includes its delimiters). `None` for an unknown stream.
    pub fn stream_bytes(&self, name: &str) -> Option<Vec<u8>> {
        let entries = Self::stream_entries(&self.lock(), name)?;
        let mut out = Vec::with_capacity(entries.iter().map(|e| e.content.data().len()).sum());
        for e in &entries {
            out.extend_from_slice(e.content.data());
        }
        Some(out)
    }

    /// The stream's datagrams, reassembled in `stream_index` order. `None` for an unknown stream.
    ///
    /// A datagram entry without `partial` is one datagram. Fragments (`partial` set) are
    /// concatenated up to and including the one marked `last`. A fragment with index 0, or a
    /// whole datagram, arriving while a fragmented datagram is unfinished ends it as it stands;
    /// so does the end of the stream. Entries that are not datagrams are ignored.
    pub fn datagrams(&self, name: &str) -> Option<Vec<Vec<u8>>> {
        let entries = Self::stream_entries(&self.lock(), name)?;
        let mut items = Vec::new();
        let mut current: Option<Vec<u8>> = None;
        for e in &entries {
            let Content::Datagram { data, partial } = &e.content else {
                continue;
            };
            match partial {
                None => {
                    items.extend(current.take());
                    items.push(data.to_vec());
                }
                Some(p) => {
                    if p.index == 0 {
                        items.extend(current.take());
                    }
                    current.get_or_insert_with(Vec::new).extend_from_slice(data);
                    if p.last {
                        items.extend(current.take());
                    }
                }
            }
        }
        items.extend(current);
        Some(items)
    }

    /// The stream's descriptor, as last received. `None` for an unknown stream.
    pub fn descriptor(&self, name: &str) -> Option<logpb::LogStreamDescriptor> {
        let bundles = self.lock();
        bundles
            .iter()
            .rev()
            .flat_map(|b| b.entries.iter().rev())
            .find(|e| e.desc.name() == name)
            .map(|e| e.desc.get().clone())
    }

    /// The stream's terminal index, once a bundle entry has marked it ended (`u64::MAX` for a
    /// stream that ended without entries).
    pub fn terminal_index(&self, name: &str) -> Option<u64> {
        let bundles = self.lock();
        bundles
            .iter()
            .flat_map(|b| &b.entries)
            .filter(|e| e.desc.name() == name)
            .find_map(|e| e.terminal_index)
    }
}

#[async_trait]
impl Output for MemoryOutput {
    async fn send(&self, bundle: Bundle) -> Result<(), OutputError> {
        if self.is_closed() {
            self.inner.stats.failed(bundle.payload_bytes() as u64);
            return Err(OutputError::Closed);
        }
        self.inner.stats.sent(&bundle);
        self.lock().push(bundle);
        Ok(())
    }

    fn max_bundle_size(&self) -> usize {
        self.inner.max_bundle_size
    }

    fn max_in_flight(&self) -> usize {
        1
    }

    fn stats(&self) -> OutputStats {
        self.inner.stats.snapshot()
    }

    fn coordinator_host(&self) -> Option<String> {
        None
    }

    async fn close(&self) -> Result<(), OutputError> {
        self.inner.closed.store(true, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use logdog_proto::{BundleEntry, Descriptor, StreamType};

    use super::*;

    fn desc(name: &str, t: StreamType) -> Arc<Descriptor> {
        Arc::new(Descriptor::new(logpb::LogStreamDescriptor {
            name: name.into(),
            stream_type: t as i32,
            ..Default::default()
        }))
    }

    fn entry(i: u64, content: Content) -> Entry {
        Entry {
            time_offset: Default::default(),
            prefix_index: i,
            stream_index: i,
            sequence: i,
            content,
        }
    }

    fn bundle(entries: Vec<BundleEntry>) -> Bundle {
        Bundle {
            timestamp: Default::default(),
            project: "p".into(),
            prefix: "x".into(),
            entries,
        }
    }

    fn dg(data: &'static [u8], partial: Option<(u32, u64, bool)>) -> Content {
        Content::Datagram {
            data: Bytes::from_static(data),
            partial: partial.map(|(index, size, last)| logpb::datagram::Partial {
                index,
                size,
                last,
            }),
        }
    }

    #[tokio::test]
    async fn reassembles_out_of_order_text() {
        let out = MemoryOutput::default();
        assert_eq!(out.max_bundle_size(), 8 * 1024 * 1024);
        let handle = out.clone();
        let d = desc("a/out", StreamType::Text);
        out.send(bundle(vec![BundleEntry {
            desc: d.clone(),
            terminal_index: Some(1),
            logs: vec![entry(1, Content::Text(Bytes::from_static(b"two\r\n")))],
        }]))
        .await
        .unwrap();
        out.send(bundle(vec![BundleEntry {
            desc: d.clone(),
            terminal_index: None,
            logs: vec![entry(0, Content::Text(Bytes::from_static(b"one\n")))],
        }]))
        .await
        .unwrap();
        out.close().await.unwrap();
        assert!(handle.is_closed());
        assert_eq!(handle.stream_names(), vec!["a/out".to_string()]);
        assert_eq!(handle.stream_bytes("a/out").unwrap(), b"one\ntwo\r\n");
        assert_eq!(
            handle
                .entries("a/out")
                .iter()
                .map(|e| e.stream_index)
                .collect::<Vec<_>>(),
            [0, 1]
        );
        assert_eq!(handle.terminal_index("a/out"), Some(1));
        assert_eq!(handle.descriptor("a/out").unwrap().name, "a/out");
        assert_eq!(handle.stream_bytes("nope"), None);
        assert_eq!(handle.datagrams("nope"), None);
        assert_eq!(handle.descriptor("nope"), None);
        assert_eq!(handle.terminal_index("nope"), None);
        assert_eq!(handle.bundles().len(), 2);
        assert_eq!(handle.stats().sent_bundles, 2);
        assert_eq!(handle.coordinator_host(), None);
        assert!(matches!(
            out.send(bundle(vec![])).await,
            Err(OutputError::Closed)
        ));
    }

    #[tokio::test]
    async fn reassembles_datagrams() {
        let out = MemoryOutput::new(1000);
        assert_eq!(out.max_bundle_size(), 1000);
        let d = desc("dg", StreamType::Datagram);
        out.send(bundle(vec![BundleEntry {
            desc: d,
            terminal_index: Some(6),
            logs: vec![
                entry(0, dg(b"whole", None)),
                entry(1, dg(b"", None)),
                entry(2, dg(b"fr", Some((0, 6, false)))),
                entry(3, dg(b"ag", Some((1, 6, false)))),
                entry(4, dg(b"ed", Some((2, 6, true)))),
                // `last` ends the item: this one must not be appended to "fragged".
                entry(5, dg(b"next", None)),
                entry(6, dg(b"unfinished", Some((0, 20, false)))),
            ],
        }]))
        .await
        .unwrap();
        let got = out.datagrams("dg").unwrap();
        let want: Vec<Vec<u8>> = vec![
            b"whole".to_vec(),
            vec![],
            b"fraged".to_vec(),
            b"next".to_vec(),
            b"unfinished".to_vec(),
        ];
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn empty_stream_is_known() {
        let out = MemoryOutput::default();
        out.send(bundle(vec![BundleEntry {
            desc: desc("e", StreamType::Binary),
            terminal_index: Some(u64::MAX),
            logs: vec![],
        }]))
        .await
        .unwrap();
        assert_eq!(out.stream_bytes("e"), Some(vec![]));
        assert_eq!(out.terminal_index("e"), Some(u64::MAX));
        assert!(out.entries("e").is_empty());
    }
}
