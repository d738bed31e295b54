//! Reading stored streams the way people read them: as bytes from an offset (the tail
//! server, the raw download) or as rows (a text stream's lines, a datagram stream's
//! datagrams) from a row number (the web viewer).
//!
//! Everything here is synchronous over [`Store`]'s public API and meant to run on a blocking
//! thread (see [`blocking`]). Row numbers come from the entries' `sequence` (a text entry's
//! first line number, a datagram entry's datagram number), so a row is found by binary search
//! over entry indices without reading the stream from its start. A text entry's bytes carry no
//! offset, so a byte offset in a text stream is found by reading forward (see [`seek`]).

use logdog_proto::logpb::{self, LogEntry, StreamType, log_entry::Content};

use crate::path::StreamPath;
use crate::store::{Store, StoreError, StreamInfo, StreamKey};

/// Read failures.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The blocking task running the read failed.
    #[error("read task failed: {0}")]
    Task(String),
}

/// Runs a store read on the blocking pool of the current runtime.
///
/// # Errors
/// The read failed, or its task panicked.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ReadError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ReadError::Task(e.to_string()))?
        .map_err(ReadError::Store)
}

/// Parses and validates `PROJECT/PREFIX/+/NAME`.
///
/// # Errors
/// A path without a project or `/+/`, or an invalid project, prefix or name.
pub fn parse_stream_path(path: &str) -> Result<StreamKey, String> {
    let (project, rest) = path
        .trim_start_matches('/')
        .split_once('/')
        .ok_or_else(|| format!("{path:?} is not PROJECT/PREFIX/+/NAME"))?;
    logdog_proto::types::validate_project(project).map_err(|e| e.to_string())?;
    let p = StreamPath::parse(rest)?;
    Ok(StreamKey {
        project: project.to_string(),
        prefix: p.prefix,
        name: p.name,
    })
}

/// Parses and validates `PROJECT[/PREFIX]` (a place to list streams).
///
/// # Errors
/// An invalid project or prefix.
pub fn parse_scope(scope: &str) -> Result<(String, String), String> {
    let scope = scope.trim_matches('/');
    let (project, prefix) = scope.split_once('/').unwrap_or((scope, ""));
    logdog_proto::types::validate_project(project).map_err(|e| e.to_string())?;
    if !prefix.is_empty() {
        logdog_proto::types::validate_prefix(prefix).map_err(|e| e.to_string())?;
    }
    Ok((project.to_string(), prefix.to_string()))
}

/// The stream type recorded in a descriptor (text when unknown).
pub fn stream_type(desc: &logpb::LogStreamDescriptor) -> StreamType {
    StreamType::try_from(desc.stream_type).unwrap_or(StreamType::Text)
}

/// Appends an entry's bytes as they were written: text lines with their delimiters, binary
/// data, datagrams framed as a uvarint length (on the first fragment) and the bytes.
pub fn entry_bytes(e: &LogEntry, out: &mut Vec<u8>) {
    match &e.content {
        Some(Content::Text(t)) => {
            for l in &t.lines {
                out.extend_from_slice(&l.value);
                out.extend_from_slice(l.delimiter.as_bytes());
            }
        }
        Some(Content::Binary(b)) => out.extend_from_slice(&b.data),
        Some(Content::Datagram(d)) => {
            match d.partial {
                None => logdog_proto::handshake::put_uvarint(out, d.data.len() as u64),
                Some(p) if p.index == 0 => logdog_proto::handshake::put_uvarint(out, p.size),
                Some(_) => {}
            }
            out.extend_from_slice(&d.data);
        }
        None => {}
    }
}

/// Bytes of binary data in one piece of an entry (see [`pieces`]).
const PIECE_BYTES: usize = 16 * 1024;

/// How many pieces a reader may copy an entry in, so that one entry of megabytes is never
/// copied whole: a text entry's lines, a binary entry's data [`PIECE_BYTES`] at a time, a
/// datagram whole; at least 1.
pub fn pieces(e: &LogEntry) -> usize {
    let n = match &e.content {
        Some(Content::Text(t)) => t.lines.len(),
        Some(Content::Binary(b)) => b.data.len().div_ceil(PIECE_BYTES),
        _ => 1,
    };
    n.max(1)
}

/// Appends the bytes of piece `i` of `e` (see [`pieces`]): pieces `0..pieces(e)` in turn
/// append what [`entry_bytes`] does.
pub fn piece_bytes(e: &LogEntry, i: usize, out: &mut Vec<u8>) {
    match &e.content {
        Some(Content::Text(t)) => {
            if let Some(l) = t.lines.get(i) {
                out.extend_from_slice(&l.value);
                out.extend_from_slice(l.delimiter.as_bytes());
            }
        }
        Some(Content::Binary(b)) => {
            let start = (i * PIECE_BYTES).min(b.data.len());
            let end = (start + PIECE_BYTES).min(b.data.len());
            out.extend_from_slice(&b.data[start..end]);
        }
        _ if i == 0 => entry_bytes(e, out),
        _ => {}
    }
}

/// How many bytes [`entry_bytes`] appends for `e`.
pub fn entry_len(e: &LogEntry) -> u64 {
    let uvarint_len = |mut n: u64| {
        let mut len = 1;
        while n >= 0x80 {
            n >>= 7;
            len += 1;
        }
        len
    };
    match &e.content {
        Some(Content::Text(t)) => t
            .lines
            .iter()
            .map(|l| (l.value.len() + l.delimiter.len()) as u64)
            .sum(),
        Some(Content::Binary(b)) => b.data.len() as u64,
        Some(Content::Datagram(d)) => {
            let header = match d.partial {
                None => uvarint_len(d.data.len() as u64),
                Some(p) if p.index == 0 => uvarint_len(p.size),
                Some(_) => 0,
            };
            header + d.data.len() as u64
        }
        None => 0,
    }
}

/// How many rows an entry touches: its lines (a partial piece counts), or one datagram.
fn rows_in(e: &LogEntry) -> u64 {
    match &e.content {
        Some(Content::Text(t)) => t.lines.len() as u64,
        Some(Content::Datagram(_)) => 1,
        _ => 0,
    }
}

/// The entry at `index`, if stored.
fn entry_at(store: &Store, key: &StreamKey, index: u64) -> Result<Option<LogEntry>, StoreError> {
    Ok(store.entries(key, index, 1, 1)?.into_iter().next())
}

/// The first entry below `end` (the contiguous count) for which `past(entry)` holds, by binary
/// search; `end` when there is none. `past` must be monotone over entry indices.
fn search(
    store: &Store,
    key: &StreamKey,
    end: u64,
    past: impl Fn(&LogEntry) -> bool,
) -> Result<u64, StoreError> {
    let (mut lo, mut hi) = (0u64, end);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match entry_at(store, key, mid)? {
            Some(e) if past(&e) => hi = mid,
            Some(_) => lo = mid + 1,
            // Below the contiguous count every entry is stored; be safe anyway.
            None => hi = mid,
        }
    }
    Ok(lo)
}

/// Where a byte reader starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteStart {
    /// At this offset from the start (past the end: once the stream gets there).
    From(u64),
    /// This many bytes before the end of what is stored now (all of it if it is shorter).
    Last(u64),
}

/// A byte reader's position: the next entry to read and how many of its (and the following
/// entries') bytes to skip first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ByteCursor {
    /// Next entry index.
    pub next: u64,
    /// Bytes to drop before the first byte to deliver.
    pub skip: u64,
}

impl ByteCursor {
    /// Appends piece `i` of `e` (see [`pieces`]; the entry at `self.next`, its pieces in
    /// order) to `out`, dropping the bytes still to skip; moves past the entry after its last
    /// piece. The pieces of an entry in turn do what [`ByteCursor::take`] does.
    pub fn take_piece(&mut self, e: &LogEntry, i: usize, out: &mut Vec<u8>) {
        let start = out.len();
        piece_bytes(e, i, out);
        if self.skip > 0 {
            let drop = (self.skip as usize).min(out.len() - start);
            out.drain(start..start + drop);
            self.skip -= drop as u64;
        }
        if i + 1 >= pieces(e) {
            self.next = e.stream_index + 1;
        }
    }

    /// Appends the bytes of `entries` (read from `self.next` on) to `out`, dropping the bytes
    /// still to skip, and moves past them.
    pub fn take(&mut self, entries: &[LogEntry], out: &mut Vec<u8>) {
        for e in entries {
            self.next = e.stream_index + 1;
            if self.skip > 0 {
                let len = entry_len(e);
                if self.skip >= len {
                    self.skip -= len;
                    continue;
                }
                let start = out.len();
                entry_bytes(e, out);
                out.drain(start..start + self.skip as usize);
                self.skip = 0;
            } else {
                entry_bytes(e, out);
            }
        }
    }
}

/// Largest amount of entries held at once while measuring entries.
const MEASURE_BUDGET: usize = 1 << 20;

/// The sizes (see [`entry_len`]) of entries `from..to`, read a budget at a time.
fn sizes(store: &Store, key: &StreamKey, from: u64, to: u64) -> Result<Vec<u64>, StoreError> {
    let mut out = Vec::with_capacity((to - from) as usize);
    let mut next = from;
    while next < to {
        let got = store.entries(key, next, (to - next) as usize, MEASURE_BUDGET)?;
        if got.is_empty() {
            break;
        }
        out.extend(got.iter().map(entry_len));
        next += got.len() as u64;
    }
    Ok(out)
}

/// Where to start reading `start` in a stream whose first `contiguous` entries are stored.
///
/// Binary streams are searched by byte offset (their `sequence`). A text or datagram entry
/// carries no byte offset, so [`ByteStart::From`] starts at entry 0 with the offset to skip,
/// and [`ByteStart::Last`] measures entries backwards from the end.
///
/// # Errors
/// A store failure.
pub fn seek(
    store: &Store,
    key: &StreamKey,
    kind: StreamType,
    contiguous: u64,
    start: ByteStart,
) -> Result<ByteCursor, StoreError> {
    match start {
        ByteStart::From(n) if kind == StreamType::Binary && contiguous > 0 => {
            let i = search(store, key, contiguous, |e| e.sequence > n)?;
            if i == 0 {
                return Ok(ByteCursor { next: 0, skip: n });
            }
            let e = entry_at(store, key, i - 1)?;
            let seq = e.map_or(0, |e| e.sequence);
            Ok(ByteCursor {
                next: i - 1,
                skip: n.saturating_sub(seq),
            })
        }
        ByteStart::From(n) => Ok(ByteCursor { next: 0, skip: n }),
        ByteStart::Last(n) => {
            let mut end = contiguous;
            let mut have = 0u64;
            let mut window = 16u64;
            while end > 0 {
                let from = end.saturating_sub(window);
                let lens = sizes(store, key, from, end)?;
                for (i, len) in lens.iter().enumerate().rev() {
                    have += len;
                    if have >= n {
                        return Ok(ByteCursor {
                            next: from + i as u64,
                            skip: have - n,
                        });
                    }
                }
                end = from;
                window = window.saturating_mul(4);
            }
            Ok(ByteCursor::default())
        }
    }
}

/// Where a byte reader starts to deliver row `n` (a text stream's line, a datagram stream's
/// datagram, from 0) of a stream whose first `contiguous` entries are stored: the entry
/// holding the row's first byte and the bytes of earlier rows in it to skip. `None` while the
/// row is not stored yet (not even in part).
///
/// # Errors
/// A store failure.
pub fn seek_row(
    store: &Store,
    key: &StreamKey,
    contiguous: u64,
    n: u64,
) -> Result<Option<ByteCursor>, StoreError> {
    if n >= total_rows(store, key, contiguous)? {
        return Ok(None);
    }
    let i = find_row(store, key, contiguous, n)?;
    let Some(e) = entry_at(store, key, i)? else {
        return Ok(None);
    };
    let skip = match &e.content {
        Some(Content::Text(t)) => {
            let before = n.saturating_sub(e.sequence) as usize;
            t.lines
                .iter()
                .take(before)
                .map(|l| (l.value.len() + l.delimiter.len()) as u64)
                .sum()
        }
        _ => 0,
    };
    Ok(Some(ByteCursor { next: i, skip }))
}

/// Where a byte reader starts to deliver what was written at or after `t_ms` (milliseconds
/// since the Unix epoch): the first row (binary streams: the first entry) whose first piece
/// was written then or later. Entry times are taken to be in order. `None` while nothing
/// that recent is stored.
///
/// # Errors
/// A store failure.
pub fn seek_time(
    store: &Store,
    key: &StreamKey,
    desc: &logpb::LogStreamDescriptor,
    contiguous: u64,
    t_ms: i64,
) -> Result<Option<ByteCursor>, StoreError> {
    let base = base_time_ms(desc);
    let i = search(store, key, contiguous, |e| entry_time_ms(base, e) >= t_ms)?;
    if i >= contiguous {
        return Ok(None);
    }
    let Some(e) = entry_at(store, key, i)? else {
        return Ok(None);
    };
    // The first row that starts in entry `i`: its first row may have begun earlier.
    let continued = match &e.content {
        Some(Content::Binary(_)) | None => return Ok(Some(ByteCursor { next: i, skip: 0 })),
        Some(Content::Datagram(d)) => d.partial.is_some_and(|p| p.index > 0),
        Some(Content::Text(_)) if i == 0 => false,
        Some(Content::Text(_)) => match entry_at(store, key, i - 1)?.and_then(|p| p.content) {
            Some(Content::Text(p)) => p.lines.last().is_some_and(|l| l.delimiter.is_empty()),
            _ => false,
        },
    };
    seek_row(store, key, contiguous, e.sequence + u64::from(continued))
}

/// Longest row kept for display; longer rows are cut (the raw bytes have them whole).
pub const MAX_ROW_BYTES: usize = 64 * 1024;

/// One row of a text stream (a line) or of a datagram stream (a datagram).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The row number (line or datagram number, from 0).
    pub n: u64,
    /// When its first piece was written, in milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// Its bytes (a line without its delimiter), at most [`MAX_ROW_BYTES`].
    pub bytes: Vec<u8>,
    /// Its full size in bytes.
    pub size: u64,
    /// Whether more of it may still come (a line without its end yet, an unfinished datagram).
    pub partial: bool,
}

impl Row {
    fn new(n: u64, time_ms: i64) -> Self {
        Self {
            n,
            time_ms,
            bytes: Vec::new(),
            size: 0,
            partial: true,
        }
    }

    fn push(&mut self, data: &[u8]) {
        self.size += data.len() as u64;
        let room = MAX_ROW_BYTES.saturating_sub(self.bytes.len());
        self.bytes.extend_from_slice(&data[..data.len().min(room)]);
    }
}

/// Milliseconds since the epoch of an entry: the stream's base time plus its offset.
fn entry_time_ms(base_ms: i64, e: &LogEntry) -> i64 {
    let off = e
        .time_offset
        .map_or(0, |d| d.seconds * 1000 + i64::from(d.nanos) / 1_000_000);
    base_ms.saturating_add(off)
}

/// The descriptor's base time in milliseconds since the epoch.
pub fn base_time_ms(desc: &logpb::LogStreamDescriptor) -> i64 {
    desc.timestamp
        .map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
}

/// Turns entries, in order, into rows; keeps an unfinished row between calls.
#[derive(Debug, Clone)]
pub struct RowAssembler {
    base_ms: i64,
    /// Rows below this are not returned.
    from: u64,
    pending: Option<Row>,
}

impl RowAssembler {
    /// An assembler for a stream with base time `base_ms` that returns rows from `from` on.
    pub fn new(base_ms: i64, from: u64) -> Self {
        Self {
            base_ms,
            from,
            pending: None,
        }
    }

    /// Adds an entry; finished rows go to `out`.
    pub fn push(&mut self, e: &LogEntry, out: &mut Vec<Row>) {
        self.push_part(e, 0..usize::MAX, out);
    }

    /// Adds the lines `lines` of a text entry (the whole of any other entry); finished rows go
    /// to `out`. Adding an entry's lines in consecutive ranges is adding the entry, a few rows
    /// at a time (see [`pieces`]).
    pub fn push_part(&mut self, e: &LogEntry, lines: std::ops::Range<usize>, out: &mut Vec<Row>) {
        let t = entry_time_ms(self.base_ms, e);
        match &e.content {
            // Other entries are one piece: added with the range starting at 0.
            _ if lines.start > 0 && !matches!(e.content, Some(Content::Text(_))) => {}
            Some(Content::Text(text)) => {
                let end = lines.end.min(text.lines.len());
                let start = lines.start.min(end);
                for (i, line) in text.lines[start..end].iter().enumerate() {
                    let i = start + i;
                    let n = e.sequence + i as u64;
                    let mut row = match self.pending.take() {
                        Some(p) if p.n == n => p,
                        Some(mut p) => {
                            // A piece that was never continued: it is all there is of it.
                            p.partial = false;
                            self.emit(p, out);
                            Row::new(n, t)
                        }
                        None => Row::new(n, t),
                    };
                    row.push(&line.value);
                    if line.delimiter.is_empty() {
                        self.pending = Some(row);
                    } else {
                        row.partial = false;
                        self.emit(row, out);
                    }
                }
            }
            Some(Content::Datagram(d)) => {
                let n = e.sequence;
                match d.partial {
                    None => {
                        let mut row = Row::new(n, t);
                        row.push(&d.data);
                        row.partial = false;
                        self.pending = None;
                        self.emit(row, out);
                    }
                    Some(p) => {
                        let mut row = match self.pending.take() {
                            Some(r) if r.n == n && p.index > 0 => r,
                            _ => Row::new(n, t),
                        };
                        row.push(&d.data);
                        if p.last {
                            row.partial = false;
                            self.emit(row, out);
                        } else {
                            self.pending = Some(row);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn emit(&self, row: Row, out: &mut Vec<Row>) {
        if row.n >= self.from {
            out.push(row);
        }
    }

    /// The unfinished row, if any (as far as it goes).
    pub fn pending(&self) -> Option<&Row> {
        self.pending.as_ref().filter(|r| r.n >= self.from)
    }

    /// Ends the stream: the unfinished row, if any, is all there is of it.
    pub fn finish(&mut self) -> Option<Row> {
        let mut row = self.pending.take().filter(|r| r.n >= self.from)?;
        row.partial = false;
        Some(row)
    }
}

/// A page of rows.
#[derive(Debug, Clone)]
pub struct RowPage {
    /// The stream's descriptor and state when the page was read.
    pub info: StreamInfo,
    /// The rows, in order (the last may be partial).
    pub rows: Vec<Row>,
    /// The first row not delivered whole: where the next page (or a follower) starts.
    pub next: u64,
    /// Rows stored so far (at least partly).
    pub total: u64,
}

/// How many rows the stored, contiguous part of a stream has (an unfinished last row counts).
///
/// # Errors
/// A store failure.
pub fn total_rows(store: &Store, key: &StreamKey, contiguous: u64) -> Result<u64, StoreError> {
    if contiguous == 0 {
        return Ok(0);
    }
    Ok(entry_at(store, key, contiguous - 1)?.map_or(0, |e| e.sequence + rows_in(&e)))
}

/// The first entry holding any part of row `n` (the contiguous count when it is not stored
/// yet).
///
/// # Errors
/// A store failure.
pub fn find_row(
    store: &Store,
    key: &StreamKey,
    contiguous: u64,
    n: u64,
) -> Result<u64, StoreError> {
    search(store, key, contiguous, |e| e.sequence + rows_in(e) > n)
}

/// Where a reader of entries with `prefix_index` from `pi` on starts in a stream: the first
/// entry holding any part of the row that the first such entry starts in (a line may begin
/// in an earlier entry), or the contiguous count when there is none.
///
/// # Errors
/// A store failure.
pub fn find_prefix_index(
    store: &Store,
    key: &StreamKey,
    contiguous: u64,
    pi: u64,
) -> Result<u64, StoreError> {
    let first = search(store, key, contiguous, |e| e.prefix_index >= pi)?;
    if first == 0 || first >= contiguous {
        return Ok(first);
    }
    match entry_at(store, key, first)? {
        Some(e) => find_row(store, key, contiguous, e.sequence),
        None => Ok(first),
    }
}

/// Byte budget of one read of entries while paging rows.
const PAGE_BUDGET: usize = 1 << 20;

/// Which rows a page holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowStart {
    /// From this row on.
    From(u64),
    /// The last this many rows.
    Last(u64),
}

/// Up to `max` rows of a stream from `start` (`None`: no such stream).
///
/// # Errors
/// A store failure.
pub fn rows(
    store: &Store,
    key: &StreamKey,
    start: RowStart,
    max: usize,
) -> Result<Option<RowPage>, StoreError> {
    let Some(info) = store.stream(key)? else {
        return Ok(None);
    };
    let contiguous = info.state.contiguous;
    let total = total_rows(store, key, contiguous)?;
    let from = match start {
        RowStart::From(n) => n,
        RowStart::Last(k) => total.saturating_sub(k),
    };
    let mut asm = RowAssembler::new(base_time_ms(&info.desc), from);
    let mut out = Vec::new();
    let mut next_entry = find_row(store, key, contiguous, from)?;
    while next_entry < contiguous && out.len() < max {
        let entries = store.entries(key, next_entry, usize::MAX, PAGE_BUDGET)?;
        let Some(last) = entries.last() else { break };
        next_entry = last.stream_index + 1;
        for e in &entries {
            asm.push(e, &mut out);
        }
    }
    let ended = info.state.complete && next_entry >= contiguous;
    let next = if out.len() >= max {
        out.truncate(max);
        out.last().map_or(from, |r| r.n + 1)
    } else if ended && let Some(row) = asm.finish() {
        let n = row.n;
        out.push(row);
        n + 1
    } else if let Some(p) = asm.pending() {
        let n = p.n;
        out.push(p.clone());
        n
    } else {
        out.last().map_or(from, |r| r.n + 1)
    };
    Ok(Some(RowPage {
        info,
        rows: out,
        next,
        total,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use logdog_proto::logpb::{Datagram, Text, datagram::Partial, text::Line};

    fn text(seq: u64, idx: u64, lines: &[(&str, &str)]) -> LogEntry {
        LogEntry {
            stream_index: idx,
            sequence: seq,
            content: Some(Content::Text(Text {
                lines: lines
                    .iter()
                    .map(|(v, d)| Line {
                        value: v.as_bytes().to_vec().into(),
                        delimiter: d.to_string(),
                    })
                    .collect(),
            })),
            ..Default::default()
        }
    }

    #[test]
    fn text_rows_join_partial_pieces() {
        let entries = [
            text(0, 0, &[("a", "\n"), ("b", "\r\n"), ("par", "")]),
            text(2, 1, &[("tial", "")]),
            text(2, 2, &[("-end", "\n"), ("d", "\n")]),
        ];
        let mut asm = RowAssembler::new(0, 1);
        let mut out = Vec::new();
        asm.push(&entries[0], &mut out);
        asm.push(&entries[1], &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].bytes, b"b");
        let p = asm.pending().unwrap();
        assert_eq!(
            (p.n, p.bytes.as_slice(), p.partial),
            (2, &b"partial"[..], true)
        );
        asm.push(&entries[2], &mut out);
        let got: Vec<(u64, &[u8], bool)> = out
            .iter()
            .map(|r| (r.n, r.bytes.as_slice(), r.partial))
            .collect();
        assert_eq!(
            got,
            [
                (1, &b"b"[..], false),
                (2, &b"partial-end"[..], false),
                (3, &b"d"[..], false)
            ]
        );
        assert!(asm.pending().is_none());
        let total: u64 = entries.iter().map(entry_len).sum();
        assert_eq!(total, "a\nb\r\npartial-end\nd\n".len() as u64);
    }

    /// Entries copied a piece at a time give the same bytes and rows as whole entries, for
    /// every starting skip.
    #[test]
    fn pieces_add_up_to_whole_entries() {
        let binary = LogEntry {
            stream_index: 2,
            content: Some(Content::Binary(logdog_proto::logpb::Binary {
                data: (0..40_000u32).map(|i| i as u8).collect::<Vec<u8>>().into(),
            })),
            ..Default::default()
        };
        let entries = [
            text(0, 0, &[("a", "\n"), ("bc", "\r\n"), ("par", "")]),
            text(2, 1, &[]),
            binary,
            text(2, 3, &[("tial", "\n"), ("d", "\n")]),
        ];
        assert_eq!(pieces(&entries[1]), 1);
        assert_eq!(pieces(&entries[2]), 3);
        let mut whole = Vec::new();
        for e in &entries {
            entry_bytes(e, &mut whole);
        }
        for skip in [0, 1, 4, 9, 20_000, 40_005, whole.len() as u64] {
            let mut by_piece = ByteCursor { next: 0, skip };
            let mut got = Vec::new();
            for e in &entries {
                for i in 0..pieces(e) {
                    by_piece.take_piece(e, i, &mut got);
                }
            }
            let mut at_once = ByteCursor { next: 0, skip };
            let mut want = Vec::new();
            at_once.take(&entries, &mut want);
            assert_eq!(got, want, "skip {skip}");
            assert_eq!(by_piece, at_once, "skip {skip}");
        }
        let texts = [&entries[0], &entries[1], &entries[3]];
        let (mut a, mut b) = (RowAssembler::new(0, 0), RowAssembler::new(0, 0));
        let (mut rows_a, mut rows_b) = (Vec::new(), Vec::new());
        for e in texts {
            a.push(e, &mut rows_a);
            for i in 0..pieces(e) {
                b.push_part(e, i..i + 1, &mut rows_b);
            }
        }
        let view = |rows: &[Row]| -> Vec<(u64, Vec<u8>, bool)> {
            rows.iter()
                .map(|r| (r.n, r.bytes.clone(), r.partial))
                .collect()
        };
        assert_eq!(view(&rows_a), view(&rows_b));
        assert_eq!(rows_b.len(), 4);
    }

    #[test]
    fn datagram_rows_and_framing() {
        let frag = |idx: u64, seq: u64, data: &str, p: Option<Partial>| LogEntry {
            stream_index: idx,
            sequence: seq,
            content: Some(Content::Datagram(Datagram {
                data: data.as_bytes().to_vec().into(),
                partial: p,
            })),
            ..Default::default()
        };
        let entries = [
            frag(0, 0, "one", None),
            frag(
                1,
                1,
                "tw",
                Some(Partial {
                    index: 0,
                    size: 3,
                    last: false,
                }),
            ),
            frag(
                2,
                1,
                "o",
                Some(Partial {
                    index: 1,
                    size: 3,
                    last: true,
                }),
            ),
        ];
        let mut asm = RowAssembler::new(0, 0);
        let mut out = Vec::new();
        for e in &entries {
            asm.push(e, &mut out);
        }
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].bytes, b"two");
        let mut bytes = Vec::new();
        for e in &entries {
            let before = bytes.len();
            entry_bytes(e, &mut bytes);
            assert_eq!(entry_len(e) as usize, bytes.len() - before);
        }
        assert_eq!(bytes, b"\x03one\x03two");
        assert_eq!(entries.iter().map(entry_len).sum::<u64>(), 8);
    }

    #[test]
    fn cursor_skips_across_entries() {
        let entries = [
            text(0, 0, &[("0123", "\n")]),
            text(1, 1, &[("56789", "\n")]),
        ];
        let mut c = ByteCursor { next: 0, skip: 7 };
        let mut out = Vec::new();
        c.take(&entries[..1], &mut out);
        assert_eq!((out.len(), c.skip, c.next), (0, 2, 1));
        c.take(&entries[1..], &mut out);
        assert_eq!(out, b"789\n");
        assert_eq!(c, ByteCursor { next: 2, skip: 0 });
    }
}
