//! The directory output: writes every stream's bytes under a directory.
//!
//! # Layout
//!
//! Given `directory:PATH`, the stream named `NAME` (its `/`-separated segments become
//! directories) is written as two files:
//!
//! ```text
//! PATH/
//!   stdout                      stream "stdout": its bytes, exactly as written
//!   _stdout.desc.json           stream "stdout": its descriptor
//!   steps/
//!     compile/
//!       log                     stream "steps/compile/log"
//!       _log.desc.json          stream "steps/compile/log": its descriptor
//! ```
//!
//! Stream-name segments always begin with a letter or digit, so a `_` file never collides with a
//! stream.
//!
//! **Stream file** (`PATH/NAME`):
//! - *text* and *binary* streams: the bytes exactly as the program wrote them. Nothing is added
//!   or translated: `\n`, `\r\n` and lone `\r` are kept as they were, a final line without a
//!   newline stays without one, and invalid UTF-8 is kept byte for byte.
//! - *datagram* streams: each datagram as an unsigned LEB128 varint length followed by the
//!   datagram's bytes. This is the framing clients use to send datagrams to the butler, so an
//!   empty datagram is the single byte `0x00`. Datagrams the butler split into fragments are
//!   written whole.
//!
//! **Descriptor file** (`PATH/DIR/_BASE.desc.json`, where `DIR/BASE` is the stream name), pretty
//! JSON:
//!
//! ```json
//! {
//!   "binary_file_ext": "",
//!   "content_type": "text/plain; charset=utf-8",
//!   "name": "steps/compile/log",
//!   "prefix": "",
//!   "stream_type": "TEXT",
//!   "tags": { "key": "value" },
//!   "timestamp": "2024-05-01T12:00:00.123456789Z"
//! }
//! ```
//!
//! `stream_type` is `"TEXT"`, `"BINARY"` or `"DATAGRAM"`; `timestamp` is RFC 3339 in UTC with
//! nine fractional digits (`null` if the descriptor has none).
//!
//! # Behaviour
//! - A stream's files are created (truncating any old ones) when its first bundle arrives and
//!   grow as bundles arrive. Its stream file is flushed and closed when the stream ends; every
//!   other file is flushed by [`close`](Output::close). Only then is the directory complete.
//! - Entries are written in `stream_index` order even if bundles arrive out of order.
//! - At most [`MAX_OPEN_FILES`] stream files are open at once (see
//!   [`with_max_open_files`](DirectoryOutput::with_max_open_files)): with more streams, the
//!   least recently written one is flushed and closed, and reopened (appending) when its next
//!   bundle arrives. Thousands of concurrent streams thus need a bounded number of file
//!   descriptors, whatever the process's open-file limit.
//! - If a stream's files cannot be created — for example a stream `foo` and a stream `foo/bar`
//!   both exist, so `PATH/foo` would have to be a file and a directory — the error is logged, that
//!   stream's data is counted as failed in [`stats`](Output::stats) and `send` returns an error,
//!   but other streams are written as usual. On a case-insensitive file system, names that
//!   differ only in case share a file.
//! - [`coordinator_host`](Output::coordinator_host) is `file://` followed by the absolute path.

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use logdog_proto::{Bundle, BundleEntry, Content, Descriptor, Entry, StreamType, logpb};
use serde_json::json;

use crate::{DEFAULT_MAX_BUNDLE_SIZE, Output, OutputError, OutputStats, StatsCounter};

/// Default bound on the stream files open at once; see the [module docs](self).
pub const MAX_OPEN_FILES: usize = 128;

/// Buffer size of each stream file's writer. Small entries are gathered here; entries this
/// size or larger (bulk output arrives in 64 KiB reads) go straight to the file, uncopied.
const WRITE_BUFFER: usize = 32 * 1024;

/// Writes every stream under a directory; see the [module docs](self) for the layout.
pub struct DirectoryOutput {
    root: PathBuf,
    state: Mutex<State>,
    stats: StatsCounter,
}

#[derive(Default)]
struct State {
    /// Streams not yet complete (their files open or closed for now).
    streams: HashMap<String, StreamState>,
    /// Streams whose file is open, by the time they were last written: the first is the
    /// least recently used, closed first when room is needed.
    open_files: BTreeMap<u64, String>,
    /// Advances at every write; orders `open_files`.
    clock: u64,
    /// Most files open at once.
    max_open: usize,
    /// Streams whose files were completed and closed.
    finished: std::collections::HashSet<String>,
    /// Streams that could not be written, with the reason.
    failed: HashMap<String, String>,
    closed: bool,
}

struct StreamState {
    path: PathBuf,
    /// The open file, or `None` while it is closed to make room for other streams.
    file: Option<BufWriter<File>>,
    /// Its key in [`State::open_files`] while open.
    last_used: u64,
    next_stream_index: u64,
    /// Entries that arrived ahead of `next_stream_index`.
    pending: BTreeMap<u64, Entry>,
    terminal_index: Option<u64>,
    /// Bytes still expected of a fragmented datagram whose first fragment was written.
    datagram_remaining: Option<u64>,
}

impl fmt::Debug for DirectoryOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirectoryOutput")
            .field("root", &self.root)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn io_err(context: impl fmt::Display, path: &Path) -> impl FnOnce(std::io::Error) -> OutputError {
    let context = format!("{context} {}", path.display());
    move |source| OutputError::Io { context, source }
}

impl DirectoryOutput {
    /// Writes under `path`, creating it (and its parents) if needed.
    pub fn new(path: impl AsRef<Path>) -> Result<Self, OutputError> {
        let path = path.as_ref();
        fs::create_dir_all(path).map_err(io_err("creating output directory", path))?;
        let root = fs::canonicalize(path)
            .or_else(|_| std::path::absolute(path))
            .map_err(io_err("resolving output directory", path))?;
        Ok(Self {
            root,
            state: Mutex::new(State {
                max_open: MAX_OPEN_FILES,
                ..State::default()
            }),
            stats: StatsCounter::default(),
        })
    }

    /// Keeps at most `max` stream files open at once (at least 1; [`MAX_OPEN_FILES`] by
    /// default).
    pub fn with_max_open_files(self, max: usize) -> Self {
        self.lock().max_open = max.max(1);
        self
    }

    /// The absolute path of the output directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Where the bytes of stream `name` are written: `PATH/NAME`.
    pub fn stream_file(&self, name: &str) -> PathBuf {
        let mut p = self.root.clone();
        p.extend(name.split('/'));
        p
    }

    /// Where the descriptor of stream `name` is written: `PATH/DIR/_BASE.desc.json`.
    pub fn descriptor_file(&self, name: &str) -> PathBuf {
        let (dir, base) = name.rsplit_once('/').unwrap_or(("", name));
        let mut p = self.root.clone();
        if !dir.is_empty() {
            p.extend(dir.split('/'));
        }
        p.push(format!("_{base}.desc.json"));
        p
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates the stream's files and writes its descriptor.
    fn open(&self, desc: &Descriptor) -> Result<StreamState, OutputError> {
        let name = desc.name();
        logdog_proto::types::validate_stream_name(name)
            .map_err(|e| OutputError::Other(format!("cannot write stream: {e}")))?;
        let path = self.stream_file(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_err("creating directory", parent))?;
        }
        let file = File::create(&path).map_err(io_err("creating stream file", &path))?;
        let desc_path = self.descriptor_file(name);
        let mut text = serde_json::to_string_pretty(&descriptor_json(desc.get()))
            .map_err(|e| OutputError::Other(format!("encoding descriptor of {name:?}: {e}")))?;
        text.push('\n');
        fs::write(&desc_path, text).map_err(io_err("writing descriptor", &desc_path))?;
        Ok(StreamState {
            path,
            file: Some(BufWriter::with_capacity(WRITE_BUFFER, file)),
            last_used: 0,
            next_stream_index: 0,
            pending: BTreeMap::new(),
            terminal_index: None,
            datagram_remaining: None,
        })
    }

    /// Writes one stream's part of a bundle.
    fn write_stream(&self, state: &mut State, be: BundleEntry) -> Result<(), OutputError> {
        let name = be.desc.name();
        if let Some(reason) = state.failed.get(name) {
            return Err(OutputError::Other(format!(
                "stream {name:?} is not written: {reason}"
            )));
        }
        if state.finished.contains(name) {
            if be.logs.is_empty() {
                return Ok(());
            }
            tracing::warn!(
                stream = name,
                "dropping entries that arrived after the stream ended"
            );
            return Err(OutputError::Other(format!(
                "stream {name:?} has already ended"
            )));
        }
        let is_open = state.streams.get(name).map(|st| st.file.is_some());
        if is_open != Some(true) {
            // A file is about to be opened (created, or reopened to append): make room.
            self.make_room(state);
        }
        let opened = match state.streams.entry(name.to_owned()) {
            MapEntry::Occupied(o) => {
                let st = o.into_mut();
                match st.file {
                    Some(_) => Ok(st),
                    None => match OpenOptions::new().append(true).open(&st.path) {
                        Ok(f) => {
                            st.file = Some(BufWriter::with_capacity(WRITE_BUFFER, f));
                            Ok(st)
                        }
                        Err(source) => Err(OutputError::Io {
                            context: format!("reopening {}", st.path.display()),
                            source,
                        }),
                    },
                }
            }
            MapEntry::Vacant(v) => self.open(&be.desc).map(|st| v.insert(st)),
        };
        let st = match opened {
            Ok(st) => st,
            Err(e) => {
                tracing::error!(stream = name, error = %e, "cannot write stream");
                if let Some(st) = state.streams.remove(name) {
                    // Entries held for a gap are lost with the stream.
                    self.stats.failed(
                        st.pending
                            .values()
                            .map(|e| e.content.data().len() as u64)
                            .sum(),
                    );
                }
                state.failed.insert(name.to_owned(), e.to_string());
                return Err(e);
            }
        };
        state.clock += 1;
        if st.last_used != 0 {
            state.open_files.remove(&st.last_used);
        }
        st.last_used = state.clock;
        state.open_files.insert(state.clock, name.to_owned());
        if st.terminal_index.is_none() {
            st.terminal_index = be.terminal_index;
        }
        let mut result = Ok(());
        for e in be.logs {
            if let Err(source) = st.push(e) {
                result = Err(OutputError::Io {
                    context: format!("writing {}", st.path.display()),
                    source,
                });
                break;
            }
        }
        if result.is_ok() && st.is_complete() {
            if !st.pending.is_empty() {
                tracing::warn!(
                    stream = name,
                    entries = st.pending.len(),
                    "dropping entries beyond the stream's terminal index"
                );
            }
            result = st.flush().map_err(|source| OutputError::Io {
                context: format!("flushing {}", st.path.display()),
                source,
            });
            if result.is_ok() {
                state.open_files.remove(&st.last_used);
                state.streams.remove(name);
                state.finished.insert(name.to_owned());
            }
        }
        if let Err(e) = &result {
            tracing::error!(stream = name, error = %e, "cannot write stream");
            if let Some(st) = state.streams.remove(name) {
                state.open_files.remove(&st.last_used);
            }
            state.failed.insert(name.to_owned(), e.to_string());
        }
        result
    }

    /// Closes the least recently written files until one more may be opened. A file whose
    /// buffered bytes cannot be written fails its stream (counted, as for any write error).
    fn make_room(&self, state: &mut State) {
        while state.open_files.len() >= state.max_open {
            let Some((_, name)) = state.open_files.pop_first() else {
                return;
            };
            let Some(st) = state.streams.get_mut(&name) else {
                continue;
            };
            st.last_used = 0;
            let Some(mut file) = st.file.take() else {
                continue;
            };
            let pending = file.buffer().len() as u64;
            if let Err(source) = file.flush() {
                let e = OutputError::Io {
                    context: format!("flushing {}", st.path.display()),
                    source,
                };
                tracing::error!(stream = name, error = %e, "cannot write stream");
                // Lost with the stream: its buffered bytes and any entries held for a gap.
                let held: u64 = st
                    .pending
                    .values()
                    .map(|e| e.content.data().len() as u64)
                    .sum();
                self.stats.failed(pending + held);
                state.streams.remove(&name);
                state.failed.insert(name, e.to_string());
            }
        }
    }
}

impl StreamState {
    /// Writes `e` if it is next, and any pending entries that follow it; holds it otherwise.
    fn push(&mut self, e: Entry) -> std::io::Result<()> {
        if e.stream_index < self.next_stream_index {
            tracing::warn!(
                path = %self.path.display(),
                stream_index = e.stream_index,
                "dropping duplicate entry"
            );
            return Ok(());
        }
        if e.stream_index > self.next_stream_index {
            self.pending.insert(e.stream_index, e);
            return Ok(());
        }
        self.write_entry(&e.content)?;
        self.next_stream_index += 1;
        while let Some(next) = self.pending.remove(&self.next_stream_index) {
            self.write_entry(&next.content)?;
            self.next_stream_index += 1;
        }
        Ok(())
    }

    /// Flushes the file, if it is open.
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.as_mut().map_or(Ok(()), |f| f.flush())
    }

    /// The open file (the caller opens it before writing entries).
    fn out(&mut self) -> std::io::Result<&mut BufWriter<File>> {
        self.file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("stream file is not open"))
    }

    fn write_entry(&mut self, content: &Content) -> std::io::Result<()> {
        match content {
            Content::Text(data) | Content::Binary(data) => self.out()?.write_all(data),
            Content::Datagram {
                data,
                partial: None,
            } => {
                if self.datagram_remaining.take().is_some() {
                    self.warn_unfinished();
                }
                write_varint(self.out()?, data.len() as u64)?;
                self.out()?.write_all(data)
            }
            Content::Datagram {
                data,
                partial: Some(p),
            } => {
                if p.index == 0 {
                    if self.datagram_remaining.is_some() {
                        self.warn_unfinished();
                    }
                    write_varint(self.out()?, p.size)?;
                    self.datagram_remaining = Some(p.size);
                } else if self.datagram_remaining.is_none() {
                    tracing::warn!(
                        path = %self.path.display(),
                        index = p.index,
                        "datagram fragment without a first fragment; framing is broken"
                    );
                }
                self.out()?.write_all(data)?;
                let remaining = self.datagram_remaining.unwrap_or(0);
                let remaining = remaining.checked_sub(data.len() as u64);
                if p.last {
                    if remaining != Some(0) {
                        tracing::warn!(
                            path = %self.path.display(),
                            size = p.size,
                            "datagram fragments do not add up to its size; framing is broken"
                        );
                    }
                    self.datagram_remaining = None;
                } else {
                    self.datagram_remaining = Some(remaining.unwrap_or(0));
                }
                Ok(())
            }
        }
    }

    fn warn_unfinished(&self) {
        tracing::warn!(
            path = %self.path.display(),
            "a fragmented datagram ended without its last fragment; framing is broken"
        );
    }

    /// Whether every entry up to the terminal index has been written.
    fn is_complete(&self) -> bool {
        match self.terminal_index {
            None => false,
            Some(u64::MAX) => true,
            Some(t) => self.next_stream_index > t,
        }
    }
}

/// Writes `v` as an unsigned LEB128 varint.
fn write_varint(w: &mut impl Write, v: u64) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(10);
    logdog_proto::handshake::put_uvarint(&mut buf, v);
    w.write_all(&buf)
}

/// The JSON form of a descriptor written to `_BASE.desc.json` (see the [module docs](self)).
pub fn descriptor_json(desc: &logpb::LogStreamDescriptor) -> serde_json::Value {
    let stream_type = match StreamType::try_from(desc.stream_type) {
        Ok(StreamType::Binary) => "BINARY",
        Ok(StreamType::Datagram) => "DATAGRAM",
        Ok(StreamType::Text) | Err(_) => "TEXT",
    };
    let tags: BTreeMap<&str, &str> = desc
        .tags
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    json!({
        "prefix": desc.prefix,
        "name": desc.name,
        "stream_type": stream_type,
        "content_type": desc.content_type,
        "timestamp": desc.timestamp.as_ref().map(logdog_proto::handshake::format_timestamp),
        "tags": tags,
        "binary_file_ext": desc.binary_file_ext,
    })
}

#[async_trait]
impl Output for DirectoryOutput {
    async fn send(&self, bundle: Bundle) -> Result<(), OutputError> {
        let mut state = self.lock();
        if state.closed {
            self.stats.failed(bundle.payload_bytes() as u64);
            return Err(OutputError::Closed);
        }
        let (mut ok_streams, mut ok_entries, mut ok_bytes, mut failed_bytes) = (0, 0, 0, 0);
        let mut first_err = None;
        for be in bundle.entries {
            let entries = be.logs.len() as u64;
            let bytes: u64 = be.logs.iter().map(|e| e.content.data().len() as u64).sum();
            match self.write_stream(&mut state, be) {
                Ok(()) => {
                    ok_streams += 1;
                    ok_entries += entries;
                    ok_bytes += bytes;
                }
                Err(e) => {
                    failed_bytes += bytes;
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            None => {
                self.stats.sent_partial(ok_entries, ok_bytes);
                Ok(())
            }
            Some(e) => {
                if ok_streams > 0 {
                    self.stats.sent_partial(ok_entries, ok_bytes);
                }
                self.stats.failed(failed_bytes);
                Err(e)
            }
        }
    }

    fn max_bundle_size(&self) -> usize {
        DEFAULT_MAX_BUNDLE_SIZE
    }

    fn max_in_flight(&self) -> usize {
        1
    }

    fn stats(&self) -> OutputStats {
        self.stats.snapshot()
    }

    fn coordinator_host(&self) -> Option<String> {
        Some(format!("file://{}", self.root.display()))
    }

    async fn close(&self) -> Result<(), OutputError> {
        let mut state = self.lock();
        if state.closed {
            return Ok(());
        }
        state.closed = true;
        state.open_files.clear();
        let mut first_err = None;
        for (name, mut st) in state.streams.drain() {
            if !st.pending.is_empty() {
                tracing::warn!(
                    stream = name,
                    entries = st.pending.len(),
                    "stream has entries after a gap that never filled; they are not written"
                );
                let lost = st
                    .pending
                    .values()
                    .map(|e| e.content.data().len() as u64)
                    .sum();
                self.stats.failed(lost);
            }
            let lost = st.file.as_ref().map_or(0, |f| f.buffer().len() as u64);
            if let Err(source) = st.flush() {
                tracing::error!(stream = name, error = %source, "cannot flush stream file");
                self.stats.failed(lost);
                first_err.get_or_insert(OutputError::Io {
                    context: format!("flushing {}", st.path.display()),
                    source,
                });
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;

    fn desc(name: &str, t: StreamType) -> Arc<Descriptor> {
        Arc::new(Descriptor::new(logpb::LogStreamDescriptor {
            name: name.into(),
            stream_type: t as i32,
            content_type: logdog_proto::default_content_type(t).into(),
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

    fn text(i: u64, data: &'static [u8]) -> Entry {
        entry(i, Content::Text(Bytes::from_static(data)))
    }

    fn dg(i: u64, data: &'static [u8], partial: Option<(u32, u64, bool)>) -> Entry {
        entry(
            i,
            Content::Datagram {
                data: Bytes::from_static(data),
                partial: partial.map(|(index, size, last)| logpb::datagram::Partial {
                    index,
                    size,
                    last,
                }),
            },
        )
    }

    fn be(d: &Arc<Descriptor>, terminal_index: Option<u64>, logs: Vec<Entry>) -> BundleEntry {
        BundleEntry {
            desc: d.clone(),
            terminal_index,
            logs,
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

    fn read(out: &DirectoryOutput, name: &str) -> Vec<u8> {
        fs::read(out.stream_file(name)).unwrap()
    }

    #[tokio::test]
    async fn text_round_trips_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let out = DirectoryOutput::new(dir.path().join("new/out")).unwrap();
        let d = desc("steps/a/stdout", StreamType::Text);
        out.send(bundle(vec![be(
            &d,
            None,
            vec![
                text(0, b"crlf\r\nlone\rcr\n"),
                text(1, b"bad \xff\xfe utf8\n"),
                text(2, b"part"),
            ],
        )]))
        .await
        .unwrap();
        out.send(bundle(vec![be(&d, Some(3), vec![text(3, b"ial\r")])]))
            .await
            .unwrap();
        assert_eq!(
            read(&out, "steps/a/stdout"),
            b"crlf\r\nlone\rcr\nbad \xff\xfe utf8\npartial\r"
        );
        out.close().await.unwrap();
        let s = out.stats();
        assert_eq!(
            (
                s.sent_bundles,
                s.sent_entries,
                s.sent_bytes,
                s.failed_bundles
            ),
            (2, 4, 34, 0)
        );
        assert!(out.path().is_absolute());
        assert_eq!(
            out.coordinator_host(),
            Some(format!("file://{}", out.path().display()))
        );
        assert!(out.path().join("steps/a/_stdout.desc.json").is_file());
    }

    #[tokio::test]
    async fn binary_and_empty_streams() {
        let dir = tempfile::tempdir().unwrap();
        let out = DirectoryOutput::new(dir.path()).unwrap();
        let b = desc("bin", StreamType::Binary);
        let e = desc("empty", StreamType::Text);
        let all: Vec<u8> = (0..=255u8).collect();
        out.send(bundle(vec![
            be(
                &b,
                Some(1),
                vec![
                    entry(0, Content::Binary(Bytes::from(all.clone()))),
                    entry(1, Content::Binary(Bytes::from_static(b"\0\r\n"))),
                ],
            ),
            be(&e, Some(u64::MAX), vec![]),
        ]))
        .await
        .unwrap();
        // Both streams ended, so their files are complete before close.
        let mut want = all;
        want.extend_from_slice(b"\0\r\n");
        assert_eq!(read(&out, "bin"), want);
        assert_eq!(read(&out, "empty"), b"");
        assert!(dir.path().join("_empty.desc.json").is_file());
        // A repeated terminal marker is harmless.
        out.send(bundle(vec![be(&e, Some(u64::MAX), vec![])]))
            .await
            .unwrap();
        out.close().await.unwrap();
        out.close().await.unwrap();
        assert!(matches!(
            out.send(bundle(vec![])).await,
            Err(OutputError::Closed)
        ));
    }

    #[tokio::test]
    async fn datagrams_are_framed() {
        let dir = tempfile::tempdir().unwrap();
        let out = DirectoryOutput::new(dir.path()).unwrap();
        let d = desc("dg", StreamType::Datagram);
        let big: Vec<u8> = vec![7; 200];
        out.send(bundle(vec![be(
            &d,
            None,
            vec![
                dg(0, b"abc", None),
                dg(1, b"", None),
                dg(2, b"frag", Some((0, 10, false))),
            ],
        )]))
        .await
        .unwrap();
        out.send(bundle(vec![be(
            &d,
            Some(5),
            vec![
                dg(3, b"ment", Some((1, 10, false))),
                dg(4, b"ed", Some((2, 10, true))),
                entry(
                    5,
                    Content::Datagram {
                        data: Bytes::from(big.clone()),
                        partial: None,
                    },
                ),
            ],
        )]))
        .await
        .unwrap();
        let mut want = b"\x03abc\x00\x0afragmented".to_vec();
        want.extend_from_slice(&[0xc8, 0x01]); // 200 as a varint
        want.extend_from_slice(&big);
        assert_eq!(read(&out, "dg"), want);
        out.close().await.unwrap();
    }

    #[tokio::test]
    async fn descriptor_json_file() {
        let dir = tempfile::tempdir().unwrap();
        let out = DirectoryOutput::new(dir.path()).unwrap();
        let d = Arc::new(Descriptor::new(logpb::LogStreamDescriptor {
            prefix: "".into(),
            name: "a/b.bin".into(),
            stream_type: StreamType::Binary as i32,
            content_type: "application/x-thing".into(),
            timestamp: Some(prost_types::Timestamp {
                seconds: 1_714_564_800,
                nanos: 123_456_789,
            }),
            tags: [
                ("k".to_string(), "v".to_string()),
                ("a".to_string(), "".to_string()),
            ]
            .into_iter()
            .collect(),
            binary_file_ext: "bin".into(),
        }));
        out.send(bundle(vec![be(&d, None, vec![])])).await.unwrap();
        let path = dir.path().join("a/_b.bin.desc.json");
        assert_eq!(path, out.descriptor_file("a/b.bin"));
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("\n  \"name\": \"a/b.bin\""), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v,
            json!({
                "prefix": "",
                "name": "a/b.bin",
                "stream_type": "BINARY",
                "content_type": "application/x-thing",
                "timestamp": "2024-05-01T12:00:00.123456789Z",
                "tags": {"a": "", "k": "v"},
                "binary_file_ext": "bin",
            })
        );
        let plain = descriptor_json(&logpb::LogStreamDescriptor {
            name: "x".into(),
            stream_type: StreamType::Datagram as i32,
            ..Default::default()
        });
        assert_eq!(plain["stream_type"], "DATAGRAM");
        assert_eq!(plain["timestamp"], serde_json::Value::Null);
        assert_eq!(plain["tags"], json!({}));
    }

    #[tokio::test]
    async fn collision_fails_only_that_stream() {
        let dir = tempfile::tempdir().unwrap();
        let out = DirectoryOutput::new(dir.path()).unwrap();
        let deep = desc("foo/bar", StreamType::Text);
        let shallow = desc("foo", StreamType::Text);
        let other = desc("other", StreamType::Text);
        out.send(bundle(vec![be(&deep, None, vec![text(0, b"deep\n")])]))
            .await
            .unwrap();
        let err = out
            .send(bundle(vec![
                be(&shallow, None, vec![text(0, b"lost\n")]),
                be(&other, None, vec![text(0, b"fine\n")]),
            ]))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("foo"), "{err}");
        // Later bundles of the failed stream fail too, without disturbing the others.
        assert!(
            out.send(bundle(vec![
                be(&deep, Some(1), vec![text(1, b"more\n")]),
                be(&shallow, Some(1), vec![text(1, b"x")]),
            ]))
            .await
            .is_err()
        );
        out.send(bundle(vec![be(&other, Some(1), vec![text(1, b"too\n")])]))
            .await
            .unwrap();
        out.close().await.unwrap();
        assert_eq!(read(&out, "foo/bar"), b"deep\nmore\n");
        assert_eq!(read(&out, "other"), b"fine\ntoo\n");
        assert!(dir.path().join("foo").is_dir());
        assert!(!dir.path().join("_foo.desc.json").exists());
        let s = out.stats();
        assert_eq!(s.failed_bundles, 2);
        assert_eq!(s.failed_bytes, 6);
        assert_eq!(s.sent_bytes, 5 + 5 + 5 + 4);
    }

    #[tokio::test]
    async fn invalid_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let out = DirectoryOutput::new(dir.path().join("sub")).unwrap();
        for name in ["../escape", "/abs", "a//b", "_x", ""] {
            let d = desc(name, StreamType::Text);
            let err = out
                .send(bundle(vec![be(&d, None, vec![text(0, b"x")])]))
                .await;
            assert!(err.is_err(), "{name:?}");
        }
        assert!(!dir.path().join("escape").exists());
        assert_eq!(out.stats().failed_bytes, 5);
    }

    #[tokio::test]
    async fn many_streams_share_a_bounded_number_of_open_files() {
        let dir = tempfile::tempdir().unwrap();
        let out = DirectoryOutput::new(dir.path())
            .unwrap()
            .with_max_open_files(3);
        let descs: Vec<_> = (0..10)
            .map(|i| desc(&format!("s/{i}"), StreamType::Text))
            .collect();
        let mut want = vec![Vec::new(); descs.len()];
        // Round after round, every stream gets an entry (the last round ends them all), so
        // each file is closed and reopened many times.
        for round in 0..6u64 {
            for (i, d) in descs.iter().enumerate() {
                let line = format!("stream {i} round {round}\n").into_bytes();
                want[i].extend_from_slice(&line);
                let terminal = (round == 5).then_some(round);
                let e = entry(round, Content::Text(Bytes::from(line)));
                out.send(bundle(vec![be(d, terminal, vec![e])]))
                    .await
                    .unwrap();
                assert!(out.lock().open_files.len() <= 3, "too many files open");
            }
        }
        assert!(
            out.lock().open_files.is_empty(),
            "finished streams keep files open"
        );
        out.close().await.unwrap();
        for (i, w) in want.iter().enumerate() {
            assert_eq!(&read(&out, &format!("s/{i}")), w, "stream {i}");
        }
        assert_eq!(out.stats().failed_bytes, 0);
    }

    #[tokio::test]
    async fn out_of_order_bundles_are_written_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let out = DirectoryOutput::new(dir.path()).unwrap();
        let d = desc("s", StreamType::Text);
        let t = desc("t", StreamType::Text);
        out.send(bundle(vec![be(
            &d,
            Some(4),
            vec![text(3, b"3"), text(4, b"4")],
        )]))
        .await
        .unwrap();
        out.send(bundle(vec![be(&d, None, vec![text(1, b"1")])]))
            .await
            .unwrap();
        assert_eq!(read(&out, "s"), b"");
        out.send(bundle(vec![be(&d, None, vec![text(0, b"0")])]))
            .await
            .unwrap();
        // Buffered output: nothing is guaranteed on disk until the stream completes.
        out.send(bundle(vec![be(&d, None, vec![text(2, b"2")])]))
            .await
            .unwrap();
        assert_eq!(read(&out, "s"), b"01234");
        // Duplicates and entries after the end are dropped, never written twice.
        let err = out
            .send(bundle(vec![be(&d, None, vec![text(2, b"2")])]))
            .await;
        assert!(err.is_err());
        // A gap that never fills: entries after it are counted as failed at close.
        out.send(bundle(vec![be(
            &t,
            None,
            vec![text(0, b"a"), text(2, b"cc")],
        )]))
        .await
        .unwrap();
        out.close().await.unwrap();
        assert_eq!(read(&out, "t"), b"a");
        assert_eq!(out.stats().failed_bytes, 1 + 2);
    }
}
