//! `--max-stream-bytes`: the head and the tail of a text stream that grows too large.
//!
//! A stream of at most `max_stream_bytes` bytes passes unchanged. A longer one keeps:
//!
//! - **the head**: the stream's first bytes, up to the last newline at or before
//!   `max_stream_bytes / 2` bytes. They pass through as they are read; only a partial line at
//!   the end of what was read is held back until its newline arrives (or the head is full), so
//!   the head never ends inside a line. When the first `max_stream_bytes / 2` bytes hold no
//!   newline at all, the head is exactly those bytes, cut inside that one line.
//! - **the tail**: the last `max_stream_bytes - head` bytes at most (so at least half of
//!   `max_stream_bytes`), starting at the first line that starts inside them; the partial line
//!   before it is left out. When those bytes hold no line start at all (the end of one line
//!   longer than the tail), the tail is all of them, starting inside that line.
//!
//! Between them one marker line, released when the stream ends:
//! `[logdog: N lines (M bytes) left out by --max-stream-bytes]`, preceded by a newline when
//! the head ended inside a line (so the marker is a line of its own). `N` counts every line
//! with at least one byte left out; `M` is exact: bytes in = head + tail + `M`.
//!
//! Until the stream ends the tail is held in a ring of `max_stream_bytes - head + 1` bytes
//! (the extra byte tells whether the tail's window starts at a line start). The ring is in
//! memory, grown only as bytes arrive, or, with a spool directory, in a file of that fixed size
//! under it, written and read in place with positional I/O, so that only small buffers are in
//! memory. The file is made when the head is full (a stream that never gets that far holds no
//! file), has a unique name and is removed once the tail has been drained, or when the stage
//! is dropped. Should the file not be
//! made or written (a full disk), the ring moves to memory and the butler logs a warning; bytes
//! that could not be read back from the file then are counted as left out, never emitted.
//!
//! When the stream has ended, [`Stage::drain`] releases the held bytes piece by piece, at most
//! about `max` bytes per call, so a tail on disk never sits in memory whole.
//!
//! The cap is per stream and counts the bytes that reach this stage (after masking, filters and
//! the rate limit). `max_stream_bytes` must be at least [`MIN_MAX_STREAM_BYTES`].

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::{PolicyCounts, Stage};

/// The smallest `max_stream_bytes` [`HeadTail::new`] takes: 2 KiB, so that the head and the
/// tail can each hold a few lines next to the marker.
pub const MIN_MAX_STREAM_BYTES: u64 = 2048;

/// How much of the ring is read at once when looking for the tail's first line (file mode).
const SCAN_CHUNK: usize = 64 << 10;

/// Keeps the first half and the last half of a text stream that grows past `max_stream_bytes`, with one marker
/// line in the gap. The tail is held in a ring of max_stream_bytes/2 bytes: in memory, or in a file under
/// `spool_dir` (removed when dropped) when one is given.
///
/// The ring is `max_stream_bytes - head + 1` bytes, so at least half of `max_stream_bytes`: a
/// head that ends early, at a newline, leaves its room to the tail. See the
/// [module documentation](self) for the exact rules.
#[derive(Debug)]
pub struct HeadTail {
    max: u64,
    /// `max / 2`: the most the head may hold.
    head_budget: u64,
    /// Bytes released as the head.
    head_out: u64,
    /// A partial line held back at the end of the head (no newline in it).
    pending: Vec<u8>,
    /// Whether the head ended inside a line.
    head_cut: bool,
    /// Where the ring's file goes, if anywhere.
    spool_dir: Option<PathBuf>,
    /// The ring, once the head is full.
    ring: Option<Ring>,
    /// What is left to release, once the stream has ended.
    plan: Option<Plan>,
    omitted_lines: u64,
    omitted_bytes: u64,
}

impl HeadTail {
    /// A cap of `max_stream_bytes`, holding the tail under `spool_dir` when given.
    ///
    /// # Errors
    /// `InvalidInput` when `max_stream_bytes` is below [`MIN_MAX_STREAM_BYTES`]; `NotFound` or
    /// `InvalidInput` when `spool_dir` is not a directory. (The tail's file is made later, when
    /// the head is full; see the [module documentation](self).)
    pub fn new(max_stream_bytes: u64, spool_dir: Option<&Path>) -> io::Result<HeadTail> {
        if max_stream_bytes < MIN_MAX_STREAM_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "--max-stream-bytes must be at least {MIN_MAX_STREAM_BYTES} bytes (2 KiB), \
                     not {max_stream_bytes}"
                ),
            ));
        }
        if let Some(dir) = spool_dir {
            let meta = std::fs::metadata(dir).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("the stream tail directory {}: {e}", dir.display()),
                )
            })?;
            if !meta.is_dir() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} is not a directory", dir.display()),
                ));
            }
        }
        Ok(HeadTail {
            max: max_stream_bytes,
            head_budget: max_stream_bytes / 2,
            head_out: 0,
            pending: Vec::new(),
            head_cut: false,
            spool_dir: spool_dir.map(Path::to_path_buf),
            ring: None,
            plan: None,
            omitted_lines: 0,
            omitted_bytes: 0,
        })
    }

    /// The path of the ring's file, while there is one.
    #[cfg(test)]
    fn spool_file(&self) -> Option<&Path> {
        match &self.ring.as_ref()?.store {
            Store::File(f) => Some(&f.path),
            Store::Mem(_) => None,
        }
    }

    /// Head phase: passes what fits in the head; returns what did not.
    fn push_head<'a>(&mut self, mut data: &'a [u8], out: &mut Vec<u8>) -> &'a [u8] {
        let used = self.head_out + self.pending.len() as u64;
        let room = usize::try_from(self.head_budget - used).unwrap_or(usize::MAX);
        let take = room.min(data.len());
        let chunk = &data[..take];
        if let Some(p) = chunk.iter().rposition(|&b| b == b'\n') {
            out.extend_from_slice(&self.pending);
            out.extend_from_slice(&chunk[..=p]);
            self.head_out += (self.pending.len() + p + 1) as u64;
            self.pending.clear();
            self.pending.extend_from_slice(&chunk[p + 1..]);
        } else {
            self.pending.extend_from_slice(chunk);
        }
        data = &data[take..];
        if data.is_empty() {
            return data;
        }
        // The head is full and there is more: the rest goes to the ring.
        if self.head_out == 0 {
            // No newline in the whole head: cut the one line.
            out.extend_from_slice(&self.pending);
            self.head_out = self.pending.len() as u64;
            self.pending = Vec::new();
            self.head_cut = true;
        }
        let window = self.max - self.head_out;
        let mut ring = Ring::new(window, self.spool_dir.as_deref());
        let held = std::mem::take(&mut self.pending);
        ring.push(&held);
        self.ring = Some(ring);
        data
    }

    /// Works out what to release once the stream has ended.
    fn make_plan(&mut self) -> io::Result<Plan> {
        let Some(ring) = self.ring.as_mut() else {
            return Ok(Plan {
                front: std::mem::take(&mut self.pending),
                front_pos: 0,
                marker: false,
                next: 0,
                end: 0,
            });
        };
        let lo = ring.lo();
        let written = ring.written;
        if ring.valid_from == 0 && written < ring.slots {
            // All of it fits in the window: nothing left out.
            return Ok(Plan {
                front: Vec::new(),
                front_pos: 0,
                marker: false,
                next: 0,
                end: written,
            });
        }
        // Something was overwritten: find the first line start in the window, counting the
        // newlines from `lo` on.
        let mut first_nl: Option<u64> = None;
        let mut first_byte = 0u8;
        let mut stored_newlines = 0u64;
        let mut buf = Vec::with_capacity(SCAN_CHUNK);
        let mut at = lo;
        while at < written {
            let n = (written - at).min(SCAN_CHUNK as u64);
            buf.clear();
            ring.read(at, n, &mut buf)?;
            if at == lo {
                first_byte = buf.first().copied().unwrap_or(0);
            }
            for (i, &b) in buf.iter().enumerate() {
                if b == b'\n' {
                    let pos = at + i as u64;
                    if first_nl.is_none() && pos + 1 < written {
                        first_nl = Some(pos);
                    }
                    stored_newlines += 1;
                }
            }
            at += n;
        }
        let (tail_start, newlines_before_tail, cut_before_tail) = match first_nl {
            Some(p) => (p + 1, 1, false),
            None => (lo + 1, u64::from(first_byte == b'\n'), first_byte != b'\n'),
        };
        let tail_start = tail_start.min(written);
        let tail_newlines = stored_newlines - newlines_before_tail;
        self.omitted_bytes = tail_start;
        self.omitted_lines = ring.newlines - tail_newlines + u64::from(cut_before_tail);
        let mut front = Vec::new();
        if self.head_cut {
            front.push(b'\n');
        }
        front.extend_from_slice(
            format!(
                "[logdog: {} lines ({} bytes) left out by --max-stream-bytes]\n",
                self.omitted_lines, self.omitted_bytes
            )
            .as_bytes(),
        );
        Ok(Plan {
            front,
            front_pos: 0,
            marker: true,
            next: tail_start,
            end: written,
        })
    }
}

/// What is left to release once the stream has ended: `front` (the held partial line, or the
/// marker), then the ring's bytes `next..end`.
#[derive(Debug)]
struct Plan {
    front: Vec<u8>,
    front_pos: usize,
    /// `front` is the marker, released whole.
    marker: bool,
    next: u64,
    end: u64,
}

impl Stage for HeadTail {
    fn push(&mut self, input: &[u8], _now: Instant, out: &mut Vec<u8>) {
        let rest = if self.ring.is_none() {
            self.push_head(input, out)
        } else {
            input
        };
        if let Some(ring) = self.ring.as_mut() {
            ring.push(rest);
        }
    }

    fn drain(&mut self, max: usize, _now: Instant, out: &mut Vec<u8>) -> io::Result<bool> {
        if self.plan.is_none() {
            let plan = self.make_plan()?;
            self.plan = Some(plan);
        }
        let Some(plan) = self.plan.as_mut() else {
            return Ok(false);
        };
        let mut budget = max.max(1);
        if plan.front_pos < plan.front.len() {
            let rest = &plan.front[plan.front_pos..];
            let n = if plan.marker {
                rest.len()
            } else {
                rest.len().min(budget)
            };
            out.extend_from_slice(&rest[..n]);
            plan.front_pos += n;
            budget = budget.saturating_sub(n);
            if plan.front_pos == plan.front.len() {
                plan.front = Vec::new();
                plan.front_pos = 0;
            }
        }
        if budget > 0
            && plan.next < plan.end
            && let Some(ring) = self.ring.as_mut()
        {
            let n = (plan.end - plan.next).min(budget as u64);
            ring.read(plan.next, n, out)?;
            plan.next += n;
        }
        let more = plan.front_pos < plan.front.len() || plan.next < plan.end;
        if !more {
            // Nothing more to read: the file goes now rather than at drop.
            self.ring = None;
        }
        Ok(more)
    }

    fn counts(&self, into: &mut PolicyCounts) {
        let (lines, bytes) = match (&self.plan, &self.ring) {
            (Some(_), _) => (self.omitted_lines, self.omitted_bytes),
            // Before the stream has ended: at least the overwritten bytes.
            (None, Some(ring)) => (
                0,
                ring.written
                    .saturating_add(1)
                    .saturating_sub(ring.slots)
                    .max(ring.valid_from),
            ),
            (None, None) => (0, 0),
        };
        into.omitted_lines += lines;
        into.omitted_bytes += bytes;
    }
}

/// The bytes after the head, of which the last `slots` are kept. Byte `k` of what was pushed
/// (counting from 0) lives at `k % slots` while it is kept.
#[derive(Debug)]
struct Ring {
    /// The tail's window plus one byte.
    slots: u64,
    store: Store,
    /// Bytes pushed.
    written: u64,
    /// Newlines among them.
    newlines: u64,
    /// The first byte still kept, should the file have failed (`0` otherwise).
    valid_from: u64,
}

#[derive(Debug)]
enum Store {
    Mem(Vec<u8>),
    File(SpoolFile),
}

impl Ring {
    /// A ring for a tail of `window` bytes, in a file under `dir` when given (in memory if that
    /// file cannot be made).
    fn new(window: u64, dir: Option<&Path>) -> Ring {
        let slots = window.saturating_add(1);
        let store = match dir.map(SpoolFile::create) {
            Some(Ok(f)) => Store::File(f),
            Some(Err(e)) => {
                tracing::warn!(
                    error = %e,
                    "--max-stream-bytes: cannot make a file for a stream's tail; holding it in \
                     memory instead"
                );
                Store::Mem(Vec::new())
            }
            None => Store::Mem(Vec::new()),
        };
        Ring {
            slots,
            store,
            written: 0,
            newlines: 0,
            valid_from: 0,
        }
    }

    /// The first byte still held.
    fn lo(&self) -> u64 {
        self.written.saturating_sub(self.slots).max(self.valid_from)
    }

    fn push(&mut self, mut data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.newlines += data.iter().filter(|&&b| b == b'\n').count() as u64;
        let slots = usize::try_from(self.slots).unwrap_or(usize::MAX);
        if data.len() > slots {
            // Only the last `slots` bytes can be kept.
            let skip = data.len() - slots;
            self.written += skip as u64;
            data = &data[skip..];
        }
        while !data.is_empty() {
            let pos = self.written % self.slots;
            let seg = (self.slots - pos).min(data.len() as u64) as usize;
            if let Err(e) = self.write_at(pos, &data[..seg]) {
                self.move_to_memory(&e);
                continue;
            }
            self.written += seg as u64;
            data = &data[seg..];
        }
    }

    fn write_at(&mut self, pos: u64, seg: &[u8]) -> io::Result<()> {
        match &mut self.store {
            Store::Mem(v) => {
                let pos = pos as usize;
                let end = pos + seg.len();
                if end > v.len() {
                    if end > v.capacity() {
                        // Grow as bytes arrive, never past the ring's size.
                        let slots = usize::try_from(self.slots).unwrap_or(usize::MAX);
                        let cap = end.max(v.capacity().saturating_mul(2)).min(slots);
                        v.reserve_exact(cap.max(end) - v.len());
                    }
                    v.resize(end, 0);
                }
                v[pos..end].copy_from_slice(seg);
                Ok(())
            }
            Store::File(f) => f.file.write_all_at(seg, pos),
        }
    }

    /// Moves the ring from its file to memory after `err`; what cannot be read back is
    /// counted as left out.
    fn move_to_memory(&mut self, err: &io::Error) {
        let lo = self.lo();
        let held = self.written - lo;
        let mut v = Vec::new();
        let mut ok = true;
        if held == 0 {
            ok = false;
        } else if let Store::File(f) = &self.store {
            let len = self.written.min(self.slots) as usize;
            v.resize(len, 0);
            if let Err(e) = f.file.read_exact_at(&mut v, 0) {
                tracing::warn!(error = %e, "--max-stream-bytes: cannot read a stream's tail back");
                ok = false;
            }
        }
        tracing::warn!(
            error = %err,
            "--max-stream-bytes: cannot write a stream's tail to its file; holding it in memory \
             instead"
        );
        if ok {
            self.store = Store::Mem(v);
        } else {
            // Start afresh at the current position: the bytes held so far are left out.
            self.valid_from = self.written;
            let pos = (self.written % self.slots) as usize;
            self.store = Store::Mem(vec![0; pos]);
        }
    }

    /// Appends the `n` bytes from `at` (which must be held) to `out`.
    fn read(&self, at: u64, n: u64, out: &mut Vec<u8>) -> io::Result<()> {
        let (mut at, mut n) = (at, n);
        while n > 0 {
            let pos = at % self.slots;
            let seg = (self.slots - pos).min(n);
            match &self.store {
                Store::Mem(v) => {
                    let (p, s) = (pos as usize, seg as usize);
                    let piece = v.get(p..p + s).ok_or_else(|| {
                        io::Error::other(
                            "--max-stream-bytes: the tail's ring is shorter than expected",
                        )
                    })?;
                    out.extend_from_slice(piece);
                }
                Store::File(f) => {
                    let old = out.len();
                    out.resize(old + seg as usize, 0);
                    if let Err(e) = f.file.read_exact_at(&mut out[old..], pos) {
                        out.truncate(old);
                        return Err(io::Error::new(
                            e.kind(),
                            format!(
                                "reading the stream's tail back from {}: {e}",
                                f.path.display()
                            ),
                        ));
                    }
                }
            }
            at += seg;
            n -= seg;
        }
        Ok(())
    }
}

/// A file with a unique name, removed when dropped.
#[derive(Debug)]
struct SpoolFile {
    file: File,
    path: PathBuf,
}

impl SpoolFile {
    fn create(dir: &Path) -> io::Result<SpoolFile> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let pid = std::process::id();
        loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!("tail-{pid}-{n}.ring"));
            match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(file) => return Ok(SpoolFile { file, path }),
                // Left by an earlier process with the same id: try the next name.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("creating {}: {e}", path.display()),
                    ));
                }
            }
        }
    }
}

impl Drop for SpoolFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove a stream's tail file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A fresh directory under the system's temporary directory, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static N: AtomicU64 = AtomicU64::new(0);
            let p = std::env::temp_dir().join(format!(
                "logdog-headtail-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }

        fn entries(&self) -> Vec<PathBuf> {
            std::fs::read_dir(&self.0)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect()
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// What a run produced.
    #[derive(Debug, PartialEq, Eq)]
    struct Run {
        out: Vec<u8>,
        counts: PolicyCounts,
        /// The largest output of one `drain` call.
        largest_drain: usize,
    }

    /// Feeds `input` in pieces of the sizes in `chunks` (cycled), then drains with `drain_max`.
    fn run(input: &[u8], chunks: &[usize], max: u64, dir: Option<&Path>, drain_max: usize) -> Run {
        let now = Instant::now();
        let mut h = HeadTail::new(max, dir).unwrap();
        let mut out = Vec::new();
        let mut rest = input;
        let mut i = 0;
        while !rest.is_empty() {
            let n = chunks[i % chunks.len()].clamp(1, rest.len());
            i += 1;
            h.push(&rest[..n], now, &mut out);
            rest = &rest[n..];
        }
        let mut largest_drain = 0;
        loop {
            let mut piece = Vec::new();
            let more = h.drain(drain_max, now, &mut piece).unwrap();
            largest_drain = largest_drain.max(piece.len());
            out.extend_from_slice(&piece);
            if !more {
                break;
            }
        }
        assert!(!h.drain(drain_max, now, &mut out).unwrap(), "drained twice");
        let mut counts = PolicyCounts::default();
        h.counts(&mut counts);
        Run {
            out,
            counts,
            largest_drain,
        }
    }

    /// The expected result, decomposed: (head, marker, tail, omitted lines, omitted bytes).
    fn model(input: &[u8], max: u64) -> (Vec<u8>, Vec<u8>, Vec<u8>, u64, u64) {
        let max = max as usize;
        if input.len() <= max {
            return (input.to_vec(), Vec::new(), Vec::new(), 0, 0);
        }
        let h = max / 2;
        let (head_len, cut) = match input[..h].iter().rposition(|&b| b == b'\n') {
            Some(p) => (p + 1, false),
            None => (h, true),
        };
        let window = max - head_len;
        let lo = input.len() - window;
        let tail_start = (lo..input.len())
            .find(|&i| input[i - 1] == b'\n')
            .unwrap_or(lo);
        let omitted = &input[head_len..tail_start];
        let lines = omitted.iter().filter(|&&b| b == b'\n').count() as u64
            + u64::from(omitted.last() != Some(&b'\n'));
        let mut marker = Vec::new();
        if cut {
            marker.push(b'\n');
        }
        marker.extend_from_slice(
            format!(
                "[logdog: {lines} lines ({} bytes) left out by --max-stream-bytes]\n",
                omitted.len()
            )
            .as_bytes(),
        );
        (
            input[..head_len].to_vec(),
            marker,
            input[tail_start..].to_vec(),
            lines,
            omitted.len() as u64,
        )
    }

    /// Checks one run against the model and the properties the cap promises.
    fn check(input: &[u8], max: u64, r: &Run, drain_max: usize) {
        let (head, marker, tail, lines, bytes) = model(input, max);
        assert!(
            input.starts_with(&head),
            "the head is a prefix of the input"
        );
        assert!(input.ends_with(&tail), "the tail is a suffix of the input");
        assert_eq!(
            head.len() as u64 + tail.len() as u64 + bytes,
            input.len() as u64,
            "bytes in = bytes out + bytes left out"
        );
        let mut want = head.clone();
        want.extend_from_slice(&marker);
        want.extend_from_slice(&tail);
        assert_eq!(
            String::from_utf8_lossy(&r.out),
            String::from_utf8_lossy(&want)
        );
        assert_eq!(r.counts.omitted_lines, lines);
        assert_eq!(r.counts.omitted_bytes, bytes);
        if input.len() as u64 <= max {
            assert_eq!(
                r.out, input,
                "nothing is left out of a stream within the cap"
            );
            assert_eq!(r.counts, PolicyCounts::default());
        } else {
            assert!(head.len() as u64 <= max / 2);
            assert!((head.len() + tail.len()) as u64 <= max);
            assert!(bytes > 0 && lines > 0);
        }
        assert!(
            r.largest_drain <= drain_max.max(1).max(marker.len()),
            "one drain call released {} bytes (max {drain_max})",
            r.largest_drain
        );
    }

    fn lines_strategy() -> impl Strategy<Value = Vec<u8>> {
        // Mostly short lines, some long ones, maybe no final newline.
        let line = prop_oneof![
            8 => proptest::collection::vec(b'a'..=b'e', 0..80),
            1 => proptest::collection::vec(b'a'..=b'e', 0..6000),
        ];
        (proptest::collection::vec(line, 0..200), any::<bool>()).prop_map(|(lines, end)| {
            let mut v = Vec::new();
            for l in &lines {
                v.extend_from_slice(l);
                v.push(b'\n');
            }
            if !end && !v.is_empty() {
                v.pop();
            }
            v
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn head_marker_tail_are_exact_in_memory_and_on_disk(
            input in lines_strategy(),
            chunks in proptest::collection::vec(1usize..5000, 1..8),
            max in 2048u64..9000,
            drain_max in 0usize..5000,
        ) {
            let mem = run(&input, &chunks, max, None, drain_max);
            check(&input, max, &mem, drain_max);
            let dir = TempDir::new();
            let file = run(&input, &chunks, max, Some(&dir.0), drain_max);
            prop_assert_eq!(&mem.out, &file.out, "memory and file give the same output");
            prop_assert_eq!(mem.counts, file.counts);
            prop_assert!(dir.entries().is_empty(), "the tail's file is removed");
        }

        #[test]
        fn streams_within_the_cap_pass_unchanged(
            input in proptest::collection::vec(any::<u8>(), 0..4096),
            chunks in proptest::collection::vec(1usize..600, 1..5),
        ) {
            let max = (input.len() as u64).max(MIN_MAX_STREAM_BYTES);
            let r = run(&input, &chunks, max, None, 100);
            prop_assert_eq!(&r.out, &input);
            prop_assert_eq!(r.counts, PolicyCounts::default());
        }
    }

    #[test]
    fn a_cap_below_the_minimum_is_refused() {
        let e = HeadTail::new(MIN_MAX_STREAM_BYTES - 1, None).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("--max-stream-bytes"), "{e}");
        let dir = TempDir::new();
        let not_dir = dir.0.join("f");
        std::fs::write(&not_dir, b"x").unwrap();
        assert!(HeadTail::new(4096, Some(&not_dir)).is_err());
        assert!(HeadTail::new(4096, Some(&dir.0.join("missing"))).is_err());
    }

    #[test]
    fn empty_input_and_no_newline_and_one_giant_line_do_not_panic() {
        for input in [
            Vec::new(),
            b"no newline at all".to_vec(),
            vec![b'x'; 100_000],
            {
                let mut v = vec![b'y'; 100_000];
                v.push(b'\n');
                v
            },
            vec![b'\n'; 10_000],
        ] {
            for chunk in [1, 7, 4096, 1 << 20] {
                let r = run(&input, &[chunk], 2048, None, 512);
                check(&input, 2048, &r, 512);
                let dir = TempDir::new();
                let f = run(&input, &[chunk], 2048, Some(&dir.0), 512);
                assert_eq!(r, f);
            }
        }
    }

    #[test]
    fn a_giant_line_keeps_its_start_and_its_end() {
        let input = vec![b'z'; 10_000];
        let r = run(&input, &[999], 4096, None, 1 << 20);
        let want = format!(
            "{}\n[logdog: 1 lines (5904 bytes) left out by --max-stream-bytes]\n{}",
            "z".repeat(2048),
            "z".repeat(2048)
        );
        assert_eq!(String::from_utf8(r.out).unwrap(), want);
    }

    #[test]
    fn the_marker_counts_lines_and_bytes() {
        let input: Vec<u8> = (1..=1000)
            .flat_map(|i| format!("{i}\n").into_bytes())
            .collect();
        let r = run(&input, &[100], 2048, None, 4096);
        let text = String::from_utf8(r.out).unwrap();
        assert!(text.starts_with("1\n2\n3\n"), "{text}");
        assert!(text.ends_with("999\n1000\n"), "{text}");
        let marker = format!(
            "[logdog: {} lines ({} bytes) left out by --max-stream-bytes]\n",
            r.counts.omitted_lines, r.counts.omitted_bytes
        );
        assert!(text.contains(&marker), "{text}");
        let kept = text.lines().filter(|l| !l.starts_with('[')).count() as u64;
        assert_eq!(kept + r.counts.omitted_lines, 1000);
    }

    #[test]
    fn the_tail_file_exists_while_held_and_goes_when_drained_or_dropped() {
        let dir = TempDir::new();
        let now = Instant::now();
        let mut out = Vec::new();
        let mut h = HeadTail::new(4096, Some(&dir.0)).unwrap();
        h.push(&[b'a'; 1000], now, &mut out);
        assert!(dir.entries().is_empty(), "no file before the head is full");
        h.push(&vec![b'b'; 100_000], now, &mut out);
        let path = h.spool_file().unwrap().to_path_buf();
        assert_eq!(dir.entries(), vec![path.clone()]);
        assert!(
            std::fs::metadata(&path).unwrap().len() <= 4097,
            "the file never grows past the ring"
        );
        drop(h);
        assert!(!path.exists(), "removed on drop");

        let mut h = HeadTail::new(4096, Some(&dir.0)).unwrap();
        h.push(&vec![b'c'; 100_000], now, &mut out);
        let path = h.spool_file().unwrap().to_path_buf();
        while h.drain(100, now, &mut out).unwrap() {
            assert!(path.exists());
        }
        assert!(!path.exists(), "removed once drained");
        assert!(dir.entries().is_empty());
    }

    #[test]
    fn memory_is_bounded_by_the_ring() {
        let now = Instant::now();
        let mut h = HeadTail::new(8192, None).unwrap();
        let mut out = Vec::new();
        for i in 0..10_000 {
            out.clear();
            h.push(
                format!("line {i} {}\n", "x".repeat(i % 300)).as_bytes(),
                now,
                &mut out,
            );
        }
        let Some(Ring {
            store: Store::Mem(v),
            slots,
            ..
        }) = &h.ring
        else {
            panic!("the ring is in memory");
        };
        assert!(
            v.capacity() as u64 <= *slots && *slots <= 8193,
            "{}",
            v.capacity()
        );
        assert!(h.pending.capacity() <= 4096);
    }

    #[test]
    fn counts_before_the_end_are_a_lower_bound() {
        let now = Instant::now();
        let mut h = HeadTail::new(4096, None).unwrap();
        let mut out = Vec::new();
        h.push(&vec![b'q'; 10_000], now, &mut out);
        let mut c = PolicyCounts::default();
        h.counts(&mut c);
        assert_eq!(c.omitted_bytes, 10_000 - 4096);
        while h.drain(1000, now, &mut out).unwrap() {}
        let mut c = PolicyCounts::default();
        h.counts(&mut c);
        assert_eq!(c.omitted_bytes, 10_000 - 4096);
    }

    /// Feeds `input` in 1000-byte pieces, calling `meddle` once the ring exists; drains.
    fn run_meddled(input: &[u8], dir: &Path, meddle: impl FnOnce(&mut SpoolFile)) -> Run {
        let now = Instant::now();
        let mut h = HeadTail::new(4096, Some(dir)).unwrap();
        let mut out = Vec::new();
        let mut meddle = Some(meddle);
        for chunk in input.chunks(1000) {
            h.push(chunk, now, &mut out);
            if let Some(Ring {
                store: Store::File(f),
                ..
            }) = &mut h.ring
                && let Some(m) = meddle.take()
            {
                m(f);
            }
        }
        while h.drain(1 << 20, now, &mut out).unwrap() {}
        let mut counts = PolicyCounts::default();
        h.counts(&mut counts);
        Run {
            out,
            counts,
            largest_drain: 0,
        }
    }

    /// Checks the promises that hold whatever happened to the file: a prefix, one marker, a
    /// suffix, and exact counts.
    fn check_shape(input: &[u8], r: &Run) {
        let marker = format!(
            "[logdog: {} lines ({} bytes) left out by --max-stream-bytes]\n",
            r.counts.omitted_lines, r.counts.omitted_bytes
        );
        let text = String::from_utf8_lossy(&r.out).into_owned();
        let at = text.find(&marker).expect("the marker");
        let (mut head, tail) = (&r.out[..at], &r.out[at + marker.len()..]);
        if !input.starts_with(head) {
            head = head.strip_suffix(b"\n").unwrap();
        }
        assert!(input.starts_with(head));
        assert!(input.ends_with(tail));
        assert_eq!(
            (head.len() + tail.len()) as u64 + r.counts.omitted_bytes,
            input.len() as u64
        );
    }

    fn numbered(n: usize) -> Vec<u8> {
        (0..n)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect()
    }

    #[test]
    fn a_file_that_cannot_be_written_moves_the_tail_to_memory_unchanged() {
        let input = numbered(5000);
        let dir = TempDir::new();
        let want = run(&input, &[1000], 4096, None, 1 << 20);
        let got = run_meddled(&input, &dir.0, |f| {
            // Read-only from now on: writes fail, what was written reads back.
            f.file = File::open(&f.path).unwrap();
        });
        assert_eq!(got.out, want.out);
        assert_eq!(got.counts, want.counts);
        assert!(dir.entries().is_empty());
    }

    #[test]
    fn a_file_that_cannot_be_written_or_read_loses_only_counted_bytes() {
        let input = numbered(5000);
        let dir = TempDir::new();
        let got = run_meddled(&input, &dir.0, |f| {
            // A directory: neither written nor read.
            f.file = File::open(f.path.parent().unwrap()).unwrap();
        });
        check_shape(&input, &got);
        assert!(
            got.out.ends_with(b"line 4999\n"),
            "the tail after the failure is kept"
        );
        assert!(dir.entries().is_empty());
    }

    #[test]
    fn streams_around_the_cap_are_cut_from_one_byte_over() {
        for max in [2048u64, 2049, 4096] {
            for len in max as usize - 2..=max as usize + 2 {
                let lines: Vec<u8> = (0..len)
                    .map(|i| if i % 10 == 9 { b'\n' } else { b'a' })
                    .collect();
                for input in [lines, vec![b'g'; len]] {
                    for chunks in [&[1usize][..], &[len], &[max as usize / 2, 1]] {
                        let r = run(&input, chunks, max, None, 100);
                        check(&input, max, &r, 100);
                        assert_eq!(r.out == input, len as u64 <= max, "len {len}, max {max}");
                        let dir = TempDir::new();
                        assert_eq!(run(&input, chunks, max, Some(&dir.0), 100), r);
                    }
                }
            }
        }
    }
}
