//! The synchronous, deterministic bundler core.
//!
//! It holds each stream's buffered chunks and cuts them into log entries and bundles. It never
//! reads a clock: every call that needs the time is given it, so tests drive it with invented
//! instants and get the same bundles every time.
//!
//! # Rules
//! - **Text**: a line ends at `\n` (`\r\n` when the byte before is `\r`; a lone `\r` is data).
//!   An entry carries whole lines. A line is split into partial pieces (empty delimiter) only
//!   when a split is needed: the stream is *urgent* (its oldest byte has waited the maximum
//!   buffer age, its buffer is full, it has ended, or the butler is flushing), or the line can
//!   never fit in one bundle. A piece never ends inside a UTF-8 character, nor between `\r` and
//!   a `\n` that may follow; invalid UTF-8 is carried as it is. A piece takes all of the line
//!   that is buffered, up to what a bundle can hold, and a piece that a fresh bundle would
//!   take larger waits for the next bundle: a line goes out in as few pieces as the bundle
//!   size (and the buffer, see [`Config::bundle_sized_buffer`]) allows.
//! - **Binary**: whatever is buffered is emitted; `sequence` is the byte offset.
//! - **Datagram**: frames are a uvarint length (at most [`MAX_DATAGRAM_SIZE`]) and that many
//!   bytes. A datagram that fits in a bundle is emitted whole once it is buffered; one that
//!   cannot fit, or that is still arriving when the stream is urgent, goes out in fragments
//!   with `Partial` set, as few as pieces of lines are (a fragment waits, unless the stream is
//!   urgent, until a bundle's worth or the rest of the datagram is buffered). A bad length
//!   header ends the stream with an error.
//! - Each stream's entries are numbered from 0 (`stream_index`), `prefix_index` is one counter
//!   across the core, `time_offset` never decreases, and every stream ends with a terminal
//!   entry, including streams that never produced data (terminal index `u64::MAX`).
//! - A bundle's whole encoded size never exceeds the configured maximum.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use logdog_proto::bundle::{len_delimited, text_line_field_len};
use logdog_proto::logpb::{self, datagram::Partial};
use logdog_proto::{
    Bundle, BundleEntry, Content, Descriptor, Entry, MAX_DATAGRAM_SIZE, StreamType,
};

/// Bundler settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Project stamped on every bundle.
    pub project: String,
    /// Prefix stamped on every bundle.
    pub prefix: String,
    /// Largest encoded bundle, in bytes.
    pub max_bundle_size: usize,
    /// Longest time a byte may wait before the stream is flushed with partial lines.
    pub max_buffer_age: Duration,
    /// Per-stream buffer; once it is (nearly) full the stream is flushed eagerly.
    pub max_buffered_bytes: usize,
    /// Largest chunk the caller appends at once; a stream whose buffer cannot take another
    /// chunk this size counts as full.
    pub read_size: usize,
    /// Used by the [shell](crate::shell): once every stream has ended and everything is cut,
    /// how long sends still unacknowledged by the output may take before they are given up
    /// (and counted as undelivered).
    pub flush_timeout: Duration,
}

impl Config {
    /// The smallest `max_buffered_bytes` with which a stream's buffer fills only once it holds
    /// more than a bundle can take: one bundle, one read and the bytes a stream may hold back.
    /// With at least this much, a long line or a large datagram goes out in pieces as large as
    /// a bundle allows; with less, the buffer fills first and the pieces are smaller.
    pub fn bundle_sized_buffer(&self) -> usize {
        self.max_bundle_size.max(MIN_BUNDLE_SIZE) + self.read_size.max(1) + HOLD_BACK
    }
}

/// Smallest bundle size the core accepts: room for a modest descriptor and some data.
pub const MIN_BUNDLE_SIZE: usize = 1024;

/// More than the most a stream ever holds back while it is urgent (up to 9 bytes of an
/// unfinished datagram length header, or an unfinished UTF-8 character and a `\r`). The buffer
/// keeps this much room beyond one read, so a writer waiting for room for a whole read is
/// never stuck behind bytes that wait for it.
const HOLD_BACK: usize = 16;

impl Default for Config {
    fn default() -> Self {
        Self {
            project: String::new(),
            prefix: String::new(),
            max_bundle_size: 8 * 1024 * 1024,
            max_buffer_age: Duration::from_secs(5),
            max_buffered_bytes: 5 * 1024 * 1024,
            read_size: 64 * 1024,
            flush_timeout: Duration::from_secs(60),
        }
    }
}

/// Identifies a stream registered with a [`Core`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(u64);

/// Why a stream could not be registered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegisterError {
    /// A live stream already has this name.
    #[error("stream {0:?} is already registered")]
    Duplicate(String),
    /// The descriptor leaves no room for data in a bundle.
    #[error(
        "descriptor of stream {name:?} encodes to {size} bytes, too large for bundles of at most {max} bytes"
    )]
    DescriptorTooLarge {
        /// The stream's name.
        name: String,
        /// Encoded descriptor size.
        size: usize,
        /// The bundle size limit.
        max: usize,
    },
}

/// Per-stream counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StreamStats {
    /// Bytes appended.
    pub bytes_in: u64,
    /// Payload bytes cut into entries (datagram headers excluded).
    pub bytes_out: u64,
    /// Datagram framing bytes consumed.
    pub framing_bytes: u64,
    /// Log entries cut.
    pub entries: u64,
    /// Bytes thrown away because of a stream error or a truncated final datagram.
    pub dropped_bytes: u64,
}

/// What a stream's end looked like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// The stream.
    pub id: StreamId,
    /// Its name.
    pub name: String,
    /// Its counters.
    pub stats: StreamStats,
    /// The error that ended it early, if any.
    pub error: Option<String>,
    /// Whether the bundle with the stream's terminal entry reached the output (set by the
    /// shell once the send is over).
    pub delivered: bool,
}

/// The result of [`Core::next_bundle`].
#[derive(Debug)]
pub struct Cut {
    /// The bundle.
    pub bundle: Bundle,
    /// Buffer space freed per stream by this cut (bytes consumed from the buffers).
    pub released: Vec<(StreamId, usize)>,
    /// Streams whose terminal entry is in this bundle; they are gone from the core.
    pub finished: Vec<Finished>,
}

#[derive(Debug)]
struct Chunk {
    data: Bytes,
    time: Instant,
    /// Whether `data` contains a `\n` (text streams only; kept valid for non-front chunks).
    has_nl: bool,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    /// Whole datagram size.
    size: usize,
    /// Payload bytes already emitted as fragments.
    sent: usize,
    /// Next fragment number.
    frag: u32,
}

#[derive(Debug)]
struct Stream {
    desc: Arc<Descriptor>,
    kind: StreamType,
    chunks: VecDeque<Chunk>,
    buffered: usize,
    closed: bool,
    /// Set when an urgent cut could emit nothing but held-back bytes (an incomplete UTF-8
    /// character or a trailing `\r`); cleared by new data. Keeps the deadline from firing
    /// again and again for bytes that must wait.
    stalled: bool,
    next_stream_index: u64,
    /// Number of buffered chunks with a `\n` (text), so looking for the end of an unfinished
    /// line costs nothing while there is none.
    nl_chunks: usize,
    /// Text: complete lines so far; binary: bytes so far; datagram: datagrams so far.
    next_sequence: u64,
    /// Nanoseconds from the descriptor timestamp to `registered_at`.
    base_offset: i128,
    registered_at: Instant,
    last_offset: i128,
    datagram: Option<Pending>,
    error: Option<String>,
    released: usize,
    stats: StreamStats,
}

/// The bundler core. See the [module docs](self) for the rules it follows.
#[derive(Debug)]
pub struct Core {
    cfg: Config,
    streams: HashMap<StreamId, Stream>,
    names: HashMap<String, StreamId>,
    next_id: u64,
    next_prefix_index: u64,
}

fn nanos_between(later: SystemTime, earlier: SystemTime) -> i128 {
    match later.duration_since(earlier) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

fn system_time_of(ts: &prost_types::Timestamp) -> SystemTime {
    let base = SystemTime::UNIX_EPOCH;
    let secs = Duration::from_secs(ts.seconds.unsigned_abs());
    let t = if ts.seconds >= 0 {
        base + secs
    } else {
        base - secs
    };
    if ts.nanos >= 0 {
        t + Duration::from_nanos(ts.nanos as u64)
    } else {
        t - Duration::from_nanos(ts.nanos.unsigned_abs() as u64)
    }
}

/// Converts a wall-clock time to a protobuf timestamp.
pub fn timestamp_of(t: SystemTime) -> prost_types::Timestamp {
    let n = nanos_between(t, SystemTime::UNIX_EPOCH);
    let (s, ns) = (n.div_euclid(1_000_000_000), n.rem_euclid(1_000_000_000));
    prost_types::Timestamp {
        seconds: s as i64,
        nanos: ns as i32,
    }
}

fn duration_of(nanos: i128) -> prost_types::Duration {
    // Protobuf durations carry seconds and nanos with the same sign.
    let seconds = (nanos / 1_000_000_000) as i64;
    let nanos = (nanos % 1_000_000_000) as i32;
    prost_types::Duration { seconds, nanos }
}

/// Length of an incomplete (but so far well-formed) UTF-8 sequence at the end of `s`.
fn incomplete_utf8_tail(s: &[u8]) -> usize {
    for k in 1..=3.min(s.len()) {
        let b = s[s.len() - k];
        if b & 0xC0 == 0x80 {
            continue; // continuation byte: keep looking for the lead byte
        }
        let need = match b {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => return 0,
        };
        return if need > k { k } else { 0 };
    }
    0
}

/// Number of `\n` bytes in `s` (a loop the compiler vectorises).
fn count_newlines(s: &[u8]) -> usize {
    // Eight bytes at a time: mark each byte equal to `\n` with its high bit (exactly, no
    // carries between bytes), then add the marks up with a multiply.
    const LOW7: u64 = 0x7F7F_7F7F_7F7F_7F7F;
    const ONES: u64 = 0x0101_0101_0101_0101;
    let mut n = 0usize;
    let mut words = s.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        let x = u64::from_le_bytes(b) ^ (u64::from(b'\n') * ONES);
        let zero_bytes = !(((x & LOW7) + LOW7) | x) & !LOW7;
        n += ((zero_bytes >> 7).wrapping_mul(ONES) >> 56) as usize;
    }
    n + words.remainder().iter().filter(|&&b| b == b'\n').count()
}

/// An upper bound on the encoded size of a `Text` message holding `bytes` bytes that form
/// `lines` whole lines. Each line costs its bytes plus at most 6 bytes of keys and one-byte
/// lengths (see [`text_line_field_len`]). Longer length varints cost extra bytes only on long
/// lines: at most 2 extra bytes on a line of 122+ bytes, 4 on one of 16 KiB+, 6 on one of
/// 2 MiB+, so `bytes / 32` covers them all.
fn text_body_upper_bound(bytes: usize, lines: usize) -> usize {
    bytes + 6 * lines + bytes / 32 + 8
}

/// Decodes a uvarint from the front of `bufs`. `Ok(None)` means more bytes are needed.
fn read_uvarint(chunks: &VecDeque<Chunk>) -> Result<Option<(u64, usize)>, String> {
    let mut value: u64 = 0;
    let mut n = 0usize;
    for b in chunks.iter().flat_map(|c| c.data.iter().copied()) {
        if n == 9 && b > 1 {
            return Err("datagram length header overflows a 64-bit integer".into());
        }
        value |= u64::from(b & 0x7F) << (7 * n);
        n += 1;
        if b & 0x80 == 0 {
            return Ok(Some((value, n)));
        }
        if n == 10 {
            return Err("datagram length header overflows a 64-bit integer".into());
        }
    }
    Ok(None)
}

/// One entry cut from a stream, with its encoded size (known while cutting, costly after).
struct Cut1 {
    entry: Entry,
    encoded_len_hint: usize,
}

/// Size bookkeeping for the bundle being built.
#[derive(Debug)]
struct Builder {
    max: usize,
    base: usize,
    /// Encoded size of the `entries` fields already finished.
    done: usize,
    entries: Vec<BundleEntry>,
}

impl Builder {
    /// Whether a stream entry of encoded length `entry_len` fits next to the finished ones.
    fn fits(&self, entry_len: usize) -> bool {
        self.base + self.done + Bundle::entry_field_len(entry_len) <= self.max
    }

    /// Whether a stream entry of encoded length `entry_len` would fit in an empty bundle.
    fn fits_alone(&self, entry_len: usize) -> bool {
        self.base + Bundle::entry_field_len(entry_len) <= self.max
    }
}

/// One stream's entry in the bundle being built.
struct Slot {
    logs: Vec<Entry>,
    /// Encoded length of the `ButlerLogBundle.Entry` so far (without terminal fields).
    len: usize,
}

impl Slot {
    fn with_log(&self, log_len: usize) -> usize {
        self.len + BundleEntry::log_field_len(log_len)
    }
}

/// Largest `p` in `1..=hi` with `ok(p)`, assuming `ok` is monotone; 0 if none.
fn largest_fitting(hi: usize, ok: impl Fn(usize) -> bool) -> usize {
    if hi == 0 || !ok(1) {
        return 0;
    }
    let (mut lo, mut hi) = (1, hi);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if ok(mid) { lo = mid } else { hi = mid - 1 }
    }
    lo
}

impl Core {
    /// Creates a core. `max_bundle_size` is raised to [`MIN_BUNDLE_SIZE`] if smaller,
    /// `read_size` to 1, and `max_buffered_bytes` to a little more than `read_size` (see
    /// [`config`](Self::config) for the values in force).
    pub fn new(mut cfg: Config) -> Self {
        cfg.max_bundle_size = cfg.max_bundle_size.max(MIN_BUNDLE_SIZE);
        cfg.read_size = cfg.read_size.max(1);
        cfg.max_buffered_bytes = cfg.max_buffered_bytes.max(cfg.read_size + HOLD_BACK);
        Self {
            cfg,
            streams: HashMap::new(),
            names: HashMap::new(),
            next_id: 0,
            next_prefix_index: 0,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Registers a stream. `now` and `wall` are the same moment on the monotonic and the wall
    /// clock; entry time offsets are measured from the descriptor's timestamp through them.
    ///
    /// # Errors
    /// A live stream with the same name, or a descriptor too large for any bundle.
    pub fn register(
        &mut self,
        desc: logpb::LogStreamDescriptor,
        now: Instant,
        wall: SystemTime,
    ) -> Result<StreamId, RegisterError> {
        if self.names.contains_key(&desc.name) {
            return Err(RegisterError::Duplicate(desc.name));
        }
        let desc = Descriptor::new(desc);
        // Room for the descriptor, a terminal index and a small entry.
        let need = Bundle::base_len(&timestamp_of(wall), &self.cfg.project, &self.cfg.prefix)
            + Bundle::entry_field_len(BundleEntry::base_len(desc.encoded_len(), Some(u64::MAX)))
            + 64;
        if need > self.cfg.max_bundle_size {
            return Err(RegisterError::DescriptorTooLarge {
                name: desc.name().to_string(),
                size: desc.encoded_len(),
                max: self.cfg.max_bundle_size,
            });
        }
        let base_offset = match desc.get().timestamp.as_ref() {
            Some(ts) => nanos_between(wall, system_time_of(ts)),
            None => 0,
        };
        let id = StreamId(self.next_id);
        self.next_id += 1;
        self.names.insert(desc.name().to_string(), id);
        let kind = desc.stream_type();
        self.streams.insert(
            id,
            Stream {
                desc: Arc::new(desc),
                kind,
                chunks: VecDeque::new(),
                buffered: 0,
                closed: false,
                stalled: false,
                nl_chunks: 0,
                next_stream_index: 0,
                next_sequence: 0,
                base_offset,
                registered_at: now,
                last_offset: i128::MIN,
                datagram: None,
                error: None,
                released: 0,
                stats: StreamStats::default(),
            },
        );
        Ok(id)
    }

    /// Appends bytes read from a stream at `now`. Empty chunks and chunks for unknown or
    /// failed streams are ignored (their bytes are released at the next cut).
    pub fn append(&mut self, id: StreamId, data: Bytes, now: Instant) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if data.is_empty() {
            return;
        }
        s.stats.bytes_in += data.len() as u64;
        if s.error.is_some() || s.closed {
            s.stats.dropped_bytes += data.len() as u64;
            s.released += data.len();
            return;
        }
        s.buffered += data.len();
        s.stalled = false;
        let has_nl = s.kind == StreamType::Text && memchr::memchr(b'\n', &data).is_some();
        s.nl_chunks += usize::from(has_nl);
        s.chunks.push_back(Chunk {
            data,
            time: now,
            has_nl,
        });
    }

    /// Marks a stream as ended: what is buffered is flushed, then a terminal entry follows.
    pub fn close(&mut self, id: StreamId) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.closed = true;
            s.stalled = false;
        }
    }

    /// Marks every stream as ended (the writers are gone).
    pub fn close_all(&mut self) {
        for s in self.streams.values_mut() {
            s.closed = true;
            s.stalled = false;
        }
    }

    /// Ends a stream with an error: its buffered data is dropped (and counted), and a
    /// terminal entry follows.
    pub fn fail(&mut self, id: StreamId, reason: String) {
        if let Some(s) = self.streams.get_mut(&id) {
            fail_stream(s, reason);
        }
    }

    /// Bytes buffered for a stream.
    pub fn buffered(&self, id: StreamId) -> usize {
        self.streams.get(&id).map_or(0, |s| s.buffered)
    }

    /// Number of streams not yet finished.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    /// Whether every stream has finished.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// Whether any stream has buffered data or a pending terminal entry.
    pub fn has_pending(&self) -> bool {
        self.streams
            .values()
            .any(|s| !s.chunks.is_empty() || s.closed || s.released > 0)
    }

    /// When the oldest waiting byte reaches the maximum buffer age, if any byte waits.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.streams
            .values()
            .filter(|s| !s.stalled)
            .filter_map(|s| s.chunks.front())
            .map(|c| c.time + self.cfg.max_buffer_age)
            .min()
    }

    fn is_full(&self, s: &Stream) -> bool {
        s.buffered + self.cfg.read_size > self.cfg.max_buffered_bytes
    }

    /// Cuts the next bundle at `now` (`wall` on the wall clock). With `flush`, every stream
    /// is treated as urgent. Returns `None` when nothing can be emitted yet.
    pub fn next_bundle(&mut self, now: Instant, wall: SystemTime, flush: bool) -> Option<Cut> {
        let timestamp = timestamp_of(wall);
        let mut b = Builder {
            max: self.cfg.max_bundle_size,
            base: Bundle::base_len(&timestamp, &self.cfg.project, &self.cfg.prefix),
            done: 0,
            entries: Vec::new(),
        };
        // Oldest data first; ended streams with nothing buffered first of all.
        let mut order: Vec<(Option<Instant>, StreamId)> = self
            .streams
            .iter()
            .filter(|(_, s)| !s.chunks.is_empty() || s.closed || s.released > 0)
            .map(|(id, s)| (s.chunks.front().map(|c| c.time), *id))
            .collect();
        order.sort();

        let mut released = Vec::new();
        let mut finished = Vec::new();
        for (_, id) in order {
            let Some(mut s) = self.streams.remove(&id) else {
                continue;
            };
            let urgent = flush
                || s.closed
                || self.is_full(&s)
                || s.chunks
                    .front()
                    .is_some_and(|c| c.time + self.cfg.max_buffer_age <= now);
            let bundle_was_empty = b.entries.is_empty();
            let mut slot = Slot {
                logs: Vec::new(),
                len: BundleEntry::base_len(s.desc.encoded_len(), None),
            };
            while let Some(log) = self.cut_one(&mut s, &b, &slot, urgent) {
                slot.len = slot.with_log(log.encoded_len_hint);
                slot.logs.push(log.entry);
            }
            // A stream that emitted nothing into a bundle that already held entries may only
            // be waiting for the next bundle (see `crowded` in the cutters), so it is not
            // stalled.
            if urgent
                && bundle_was_empty
                && slot.logs.is_empty()
                && !s.chunks.is_empty()
                && !s.closed
            {
                s.stalled = true;
            }
            let mut terminal = None;
            if s.closed && s.chunks.is_empty() && s.datagram.is_none() {
                let idx = s.next_stream_index.checked_sub(1).unwrap_or(u64::MAX);
                let d = s.desc.encoded_len();
                let len =
                    slot.len + BundleEntry::base_len(d, Some(idx)) - BundleEntry::base_len(d, None);
                if b.fits(len) {
                    terminal = Some(idx);
                    slot.len = len;
                }
            }
            if s.released > 0 {
                released.push((id, std::mem::take(&mut s.released)));
            }
            if !slot.logs.is_empty() || terminal.is_some() {
                b.done += Bundle::entry_field_len(slot.len);
                b.entries.push(BundleEntry {
                    desc: s.desc.clone(),
                    terminal_index: terminal,
                    logs: slot.logs,
                });
            }
            if terminal.is_some() {
                self.names.remove(s.desc.name());
                finished.push(Finished {
                    id,
                    name: s.desc.name().to_string(),
                    stats: s.stats,
                    error: s.error.take(),
                    delivered: false,
                });
            } else {
                self.streams.insert(id, s);
            }
        }
        if b.entries.is_empty() && released.is_empty() {
            return None;
        }
        b.entries.sort_by(|x, y| x.desc.name().cmp(y.desc.name()));
        Some(Cut {
            bundle: Bundle {
                timestamp,
                project: self.cfg.project.clone(),
                prefix: self.cfg.prefix.clone(),
                entries: b.entries,
            },
            released,
            finished,
        })
    }

    /// Cuts one log entry from the front of `s`, if one fits and may be emitted.
    fn cut_one(&mut self, s: &mut Stream, b: &Builder, slot: &Slot, urgent: bool) -> Option<Cut1> {
        match s.kind {
            StreamType::Text => self.cut_text(s, b, slot, urgent),
            StreamType::Binary => self.cut_binary(s, b, slot),
            StreamType::Datagram => self.cut_datagram(s, b, slot, urgent),
        }
    }

    /// Builds an entry header for `s` at the front chunk's time, and its encoded length.
    fn header(&self, s: &Stream, time: Instant) -> (Entry, usize) {
        let offset =
            s.base_offset + time.saturating_duration_since(s.registered_at).as_nanos() as i128;
        let offset = offset.max(s.last_offset);
        let e = Entry {
            time_offset: duration_of(offset),
            prefix_index: self.next_prefix_index,
            stream_index: s.next_stream_index,
            sequence: s.next_sequence,
            content: Content::Binary(Bytes::new()),
        };
        let len = e.header_len();
        (e, len)
    }

    /// Records that `e` (holding `consumed` buffered bytes) was cut from `s`.
    fn commit(
        &mut self,
        s: &mut Stream,
        mut e: Entry,
        content: Content,
        consumed: usize,
        len: usize,
    ) -> Cut1 {
        let offset =
            i128::from(e.time_offset.seconds) * 1_000_000_000 + i128::from(e.time_offset.nanos);
        s.last_offset = offset;
        self.next_prefix_index += 1;
        s.next_stream_index += 1;
        s.stats.entries += 1;
        s.stats.bytes_out += content.data().len() as u64;
        s.buffered -= consumed;
        s.released += consumed;
        e.content = content;
        Cut1 {
            entry: e,
            encoded_len_hint: len,
        }
    }

    /// Removes `n` bytes from the front of the buffer (all from the front chunk).
    fn advance(s: &mut Stream, n: usize) -> Bytes {
        let Some(front) = s.chunks.front_mut() else {
            return Bytes::new();
        };
        let taken = front.data.split_to(n);
        let had_nl = front.has_nl;
        if front.data.is_empty() {
            s.chunks.pop_front();
            s.nl_chunks -= usize::from(had_nl);
        } else if s.kind == StreamType::Text && had_nl {
            front.has_nl = memchr::memchr(b'\n', &front.data).is_some();
            s.nl_chunks -= usize::from(!front.has_nl);
        }
        taken
    }

    /// Joins the first `len` buffered bytes into one front chunk (copying them), keeping the
    /// front chunk's time.
    fn merge_front(s: &mut Stream, len: usize) {
        let Some(time) = s.chunks.front().map(|c| c.time) else {
            return;
        };
        let mut joined = BytesMut::with_capacity(len);
        while joined.len() < len {
            let Some(c) = s.chunks.front_mut() else { break };
            let take = (len - joined.len()).min(c.data.len());
            joined.extend_from_slice(&c.data.split_to(take));
            let had_nl = c.has_nl;
            if c.data.is_empty() {
                s.chunks.pop_front();
                s.nl_chunks -= usize::from(had_nl);
            } else if had_nl {
                c.has_nl = memchr::memchr(b'\n', &c.data).is_some();
                s.nl_chunks -= usize::from(!c.has_nl);
            }
        }
        let data = joined.freeze();
        let has_nl = s.kind == StreamType::Text && memchr::memchr(b'\n', &data).is_some();
        s.nl_chunks += usize::from(has_nl);
        s.chunks.push_front(Chunk { data, time, has_nl });
    }

    fn cut_text(&mut self, s: &mut Stream, b: &Builder, slot: &Slot, urgent: bool) -> Option<Cut1> {
        let front = s.chunks.front()?;
        if !front.has_nl && s.nl_chunks > 0 {
            // The front chunk is one unfinished line. Join it with the rest of the line when
            // a later chunk finishes it.
            let mut len = front.data.len();
            for c in s.chunks.iter().skip(1) {
                if c.has_nl {
                    let nl = memchr::memchr(b'\n', &c.data).unwrap_or(c.data.len() - 1);
                    Self::merge_front(s, len + nl + 1);
                    return self.cut_text(s, b, slot, urgent);
                }
                len += c.data.len();
            }
        }
        let front = s.chunks.front()?;
        let data = front.data.clone();
        let more_follows = s.chunks.len() > 1;
        let (e, header) = self.header(s, front.time);
        let entry_len = |body: usize| header + len_delimited(10, body);

        // Whole lines first. `fits` is monotone in the body size, so find the largest body
        // that fits once instead of asking for every line.
        let max_body = largest_fitting(data.len() * 5 + 16, |body| {
            b.fits(slot.with_log(entry_len(body)))
        });
        // Fast path: all the chunk's whole lines, sized by an upper bound that needs only the
        // line count (exact sizing costs a step per line, which dominates at high volume).
        if let Some(last_nl) = memchr::memrchr(b'\n', &data) {
            let end = last_nl + 1;
            let tail_alone = end < data.len();
            if !(urgent && tail_alone && !more_follows) {
                let lines = count_newlines(&data[..end]);
                let bound = text_body_upper_bound(end, lines);
                if bound <= max_body {
                    let taken = Self::advance(s, end);
                    let e = self.commit(s, e, Content::Text(taken), end, entry_len(bound));
                    s.next_sequence += lines as u64;
                    return Some(e);
                }
            }
        }
        let mut body = 0usize;
        let mut end = 0usize;
        let mut lines = 0u64;
        for nl in memchr::memchr_iter(b'\n', &data) {
            let start = end;
            let (vlen, dlen) = if nl > start && data[nl - 1] == b'\r' {
                (nl - start - 1, 2)
            } else {
                (nl - start, 1)
            };
            let nbody = body + text_line_field_len(vlen, dlen);
            if nbody > max_body {
                break;
            }
            body = nbody;
            end = nl + 1;
            lines += 1;
        }
        if end > 0 {
            // Lines that fit; the rest of the chunk (if any) waits for the next entry, where
            // it may be joined with a later chunk.
            let tail_alone = end < data.len() && memchr::memchr(b'\n', &data[end..]).is_none();
            if !(urgent && tail_alone && !more_follows) {
                let taken = Self::advance(s, end);
                let e = self.commit(s, e, Content::Text(taken), end, entry_len(body));
                s.next_sequence += lines;
                return Some(e);
            }
        }

        // A partial piece: the rest of an unfinished line, or a line too long for any bundle.
        let line_end = memchr::memchr(b'\n', &data[end..]).map_or(data.len(), |i| end + i + 1);
        let last_is_complete = data[line_end - 1] == b'\n';
        let fresh = BundleEntry::base_len(s.desc.encoded_len(), None);
        let fits_fresh = |p: usize| {
            b.fits_alone(fresh + BundleEntry::log_field_len(entry_len(text_line_field_len(p, 0))))
        };
        // An unfinished line is the front chunk's tail plus every later chunk: a later `\n`
        // would have been joined to the front chunk above, and whole lines before a tail that
        // has chunks after it were emitted above.
        let unfinished = s.buffered - end;
        if last_is_complete {
            // Only reached when the first line did not fit: split it only if it could not
            // fit in any bundle; otherwise it goes whole into the next one.
            let dlen = if line_end >= 2 && data[line_end - 2] == b'\r' {
                2
            } else {
                1
            };
            let line = text_line_field_len(line_end - dlen, dlen);
            if b.fits_alone(fresh + BundleEntry::log_field_len(entry_len(line))) {
                return None;
            }
        } else if !urgent && fits_fresh(unfinished) {
            // An unfinished line waits for its end, unless what is here already could not fit
            // in any bundle: then waiting gains nothing.
            return None;
        }
        let piece_limit = if last_is_complete {
            line_end - end - 1
        } else {
            unfinished
        };
        let fits = |p: usize| b.fits(slot.with_log(entry_len(body + text_line_field_len(p, 0))));
        let mut p = largest_fitting(piece_limit, fits);
        // As few pieces as possible: a piece that a fresh bundle would take larger waits for
        // the next bundle instead of filling the rest of this one.
        let crowded = b.done > 0 || !slot.logs.is_empty() || body > 0;
        if p == 0 || (crowded && p < largest_fitting(piece_limit, fits_fresh)) {
            return self.finish_text_entry(s, e, end, lines, entry_len(body));
        }
        if end + p > data.len() {
            // The piece spans several reads: join them (each byte is copied once, as it
            // leaves). The later reads' own times are kept for what stays behind.
            Self::merge_front(s, end + p);
        }
        let data = s.chunks.front()?.data.clone();
        let more_follows = s.chunks.len() > 1;
        let piece = &data[end..end + p];
        // Never end a piece between `\r` and a `\n` that follows or may follow.
        let at_stream_end = s.closed && !more_follows && end + p == data.len();
        if piece.last() == Some(&b'\r') && !at_stream_end {
            p -= 1;
        }
        // Never end a piece inside a UTF-8 character (unless nothing more will come).
        if !at_stream_end {
            p -= incomplete_utf8_tail(&data[end..end + p]);
        }
        if p == 0 {
            if end == 0 && more_follows && data.len() <= 4 {
                // An unfinished character (or `\r`) at a chunk boundary: join it with the
                // bytes that complete it and try again.
                Self::merge_front(s, data.len() + 4.min(s.buffered - data.len()));
                return self.cut_text(s, b, slot, urgent);
            }
            return self.finish_text_entry(s, e, end, lines, entry_len(body));
        }
        let total = end + p;
        let taken = Self::advance(s, total);
        let len = entry_len(body + text_line_field_len(p, 0));
        let e = self.commit(s, e, Content::Text(taken), total, len);
        s.next_sequence += lines;
        Some(e)
    }

    /// Emits the whole lines found so far (if any) without a partial piece.
    fn finish_text_entry(
        &mut self,
        s: &mut Stream,
        e: Entry,
        end: usize,
        lines: u64,
        len: usize,
    ) -> Option<Cut1> {
        if end == 0 {
            return None;
        }
        let taken = Self::advance(s, end);
        let e = self.commit(s, e, Content::Text(taken), end, len);
        s.next_sequence += lines;
        Some(e)
    }

    fn cut_binary(&mut self, s: &mut Stream, b: &Builder, slot: &Slot) -> Option<Cut1> {
        let front = s.chunks.front()?;
        let avail = front.data.len();
        let (e, header) = self.header(s, front.time);
        let p = largest_fitting(avail, |p| {
            b.fits(slot.with_log(header + len_delimited(11, len_delimited(2, p))))
        });
        if p == 0 {
            return None;
        }
        let taken = Self::advance(s, p);
        let len = header + len_delimited(11, len_delimited(2, p));
        let e = self.commit(s, e, Content::Binary(taken), p, len);
        s.next_sequence += p as u64;
        Some(e)
    }

    fn cut_datagram(
        &mut self,
        s: &mut Stream,
        b: &Builder,
        slot: &Slot,
        urgent: bool,
    ) -> Option<Cut1> {
        let pending = match s.datagram {
            Some(p) => p,
            None => {
                let (size, hdr) = match read_uvarint(&s.chunks) {
                    Ok(Some(v)) => v,
                    Ok(None) => {
                        if s.closed && !s.chunks.is_empty() {
                            let n = s.buffered;
                            fail_stream(
                                s,
                                format!(
                                    "stream ended inside a datagram length header ({n} bytes dropped)"
                                ),
                            );
                        }
                        return None;
                    }
                    Err(msg) => {
                        fail_stream(s, msg);
                        return None;
                    }
                };
                if size > MAX_DATAGRAM_SIZE as u64 {
                    fail_stream(
                        s,
                        format!(
                            "datagram of {size} bytes exceeds the {MAX_DATAGRAM_SIZE}-byte limit"
                        ),
                    );
                    return None;
                }
                // Consume the header.
                let mut left = hdr;
                while left > 0 {
                    let n = left.min(s.chunks.front().map_or(0, |c| c.data.len()));
                    Self::advance(s, n);
                    s.buffered -= n;
                    s.released += n;
                    left -= n;
                }
                s.stats.framing_bytes += hdr as u64;
                let p = Pending {
                    size: size as usize,
                    sent: 0,
                    frag: 0,
                };
                s.datagram = Some(p);
                p
            }
        };
        let time = s.chunks.front().map_or(s.registered_at, |c| c.time);
        let (e, header) = self.header(s, time);
        let whole_len =
            |n: usize| header + len_delimited(12, if n == 0 { 0 } else { len_delimited(1, n) });
        let remaining = pending.size - pending.sent;

        if pending.frag == 0 {
            let fresh = BundleEntry::base_len(s.desc.encoded_len(), None);
            let can_fit_alone =
                b.fits_alone(fresh + BundleEntry::log_field_len(whole_len(pending.size)));
            if can_fit_alone && s.buffered >= pending.size {
                if !b.fits(slot.with_log(whole_len(pending.size))) {
                    return None;
                }
                if s.chunks
                    .front()
                    .is_some_and(|c| c.data.len() < pending.size)
                {
                    Self::merge_front(s, pending.size);
                }
                let data = Self::advance(s, pending.size);
                s.datagram = None;
                let len = whole_len(pending.size);
                let e = self.commit(
                    s,
                    e,
                    Content::Datagram {
                        data,
                        partial: None,
                    },
                    pending.size,
                    len,
                );
                s.next_sequence += 1;
                return Some(e);
            }
            if can_fit_alone && !urgent {
                return None; // wait for the whole datagram
            }
        }
        if pending.frag == 0 && s.closed && s.buffered < pending.size {
            // The stream ended inside a datagram none of which has gone out: drop it whole
            // (counted) rather than leave a torn frame behind.
            let n = s.buffered;
            s.chunks.clear();
            s.nl_chunks = 0;
            s.buffered = 0;
            s.released += n;
            s.stats.dropped_bytes += n as u64;
            s.datagram = None;
            let msg = format!(
                "stream ended inside a datagram: {} of its {} bytes arrived; dropped",
                n, pending.size
            );
            tracing::warn!(stream = s.desc.name(), "{msg}");
            s.error.get_or_insert(msg);
            return None;
        }
        // Fragments.
        let avail = s.buffered.min(remaining);
        if avail == 0 {
            if s.closed {
                // The stream ended inside this datagram. Its fragments so far went out; the
                // rest never arrived, so nothing is dropped (bytes in = out + framing +
                // dropped).
                s.datagram = None;
                let msg = format!(
                    "stream ended inside a datagram: {} of {} bytes missing",
                    remaining, pending.size
                );
                tracing::warn!(stream = s.desc.name(), "{msg}");
                s.error.get_or_insert(msg);
            }
            return None;
        }
        let frag_len = |p: usize, last: bool| {
            let partial = Partial {
                index: pending.frag,
                size: pending.size as u64,
                last,
            };
            header
                + len_delimited(
                    12,
                    len_delimited(1, p) + prost::encoding::message::encoded_len(2, &partial),
                )
        };
        let fresh = BundleEntry::base_len(s.desc.encoded_len(), None);
        let fits_fresh = |p: usize| {
            b.fits_alone(fresh + BundleEntry::log_field_len(frag_len(p, p == remaining)))
        };
        if !urgent && avail < remaining && avail < largest_fitting(remaining, fits_fresh) {
            // Not urgent: wait until a whole fragment (as large as a bundle allows) or the
            // rest of the datagram is here, so a datagram goes out in as few fragments as
            // possible.
            return None;
        }
        let p = largest_fitting(avail, |p| {
            b.fits(slot.with_log(frag_len(p, p == remaining)))
        });
        let crowded = b.done > 0 || !slot.logs.is_empty();
        if p == 0 || (crowded && p < largest_fitting(avail, fits_fresh)) {
            // A fresh bundle takes a larger fragment: wait for it.
            return None;
        }
        if s.chunks.front().is_some_and(|c| c.data.len() < p) {
            Self::merge_front(s, p);
        }
        let last = p == remaining;
        let data = Self::advance(s, p);
        let partial = Partial {
            index: pending.frag,
            size: pending.size as u64,
            last,
        };
        s.datagram = if last {
            None
        } else {
            Some(Pending {
                size: pending.size,
                sent: pending.sent + p,
                frag: pending.frag + 1,
            })
        };
        let len = frag_len(p, last);
        let e = self.commit(
            s,
            e,
            Content::Datagram {
                data,
                partial: Some(partial),
            },
            p,
            len,
        );
        if last {
            s.next_sequence += 1;
        }
        Some(e)
    }
}

fn fail_stream(s: &mut Stream, reason: String) {
    if s.error.is_none() {
        tracing::error!(stream = s.desc.name(), error = %reason, "stream failed; its buffered data is dropped");
        s.error = Some(reason);
    }
    s.stats.dropped_bytes += s.buffered as u64;
    s.released += s.buffered;
    s.buffered = 0;
    s.chunks.clear();
    s.nl_chunks = 0;
    s.datagram = None;
    s.closed = true;
}
