//! Stream policies: what happens to a text stream's bytes between its reads and the bundler.
//!
//! A stream's [`Chain`] runs its stages in a fixed order: secret masking ([`mask`]), line
//! filters ([`filter`]), the rate limit ([`ratelimit`]) and the head+tail cap ([`headtail`]).
//! Each stage works on raw bytes and holds back what it cannot decide yet (the start of a
//! possible secret, a partial line); once the stream has ended, [`Chain::drain`] lets every
//! stage release what it holds, through the stages after it.
//!
//! Policies apply to text streams only: binary and datagram streams pass through untouched
//! (their bytes have no lines to filter, and a masked datagram would break its framing). When
//! no policy is configured no chain is built at all, and a stream's reads go to the bundler
//! as they did before.

pub mod filter;
pub mod headtail;
pub mod mask;
pub mod ratelimit;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use logdog_proto::StreamType;

pub use filter::{FilterRule, RuleKind};
pub use headtail::HeadTail;
pub use mask::{MaskError, MaskRegistry};
pub use ratelimit::RateLimit;

/// What the policies did to one stream, for the summary and --result-path.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PolicyCounts {
    /// Lines dropped by --include/--exclude, and their bytes.
    pub filtered_lines: u64,
    /// Bytes of the lines dropped by --include/--exclude.
    pub filtered_bytes: u64,
    /// Lines dropped by --rate-limit, and their bytes.
    pub rate_limited_lines: u64,
    /// Bytes of the lines dropped by --rate-limit.
    pub rate_limited_bytes: u64,
    /// Secret occurrences replaced with `***`.
    pub masked: u64,
    /// Lines and bytes left out of the middle by --max-stream-bytes.
    pub omitted_lines: u64,
    /// Bytes left out of the middle by --max-stream-bytes.
    pub omitted_bytes: u64,
}

impl PolicyCounts {
    /// Whether any policy changed the stream.
    pub fn is_empty(&self) -> bool {
        *self == PolicyCounts::default()
    }
}

/// One synchronous step between a stream's reads and the bundler. Works on raw bytes; stages that need
/// whole lines frame them themselves and hold partial lines back.
pub trait Stage: Send {
    /// Takes the next bytes; appends what passes, now, to `out`.
    fn push(&mut self, input: &[u8], now: std::time::Instant, out: &mut Vec<u8>);
    /// Called after the stream has ended, repeatedly, until it returns Ok(false): appends at most about
    /// `max` more held-back bytes to `out` (a tail held on disk comes out piece by piece).
    fn drain(
        &mut self,
        max: usize,
        now: std::time::Instant,
        out: &mut Vec<u8>,
    ) -> std::io::Result<bool>;
    /// Adds this stage's counts to `into`.
    fn counts(&self, into: &mut PolicyCounts);
}

/// The stages of one stream, run in order.
pub struct Chain {
    stages: Vec<Box<dyn Stage>>,
    /// Index of the stage whose output is echoed (the mask stage), plus one; 0: the input.
    echo_after: usize,
    /// What the last call released for the bundler.
    out: Vec<u8>,
    /// What the last call released for the echo (masked, not filtered).
    echo: Vec<u8>,
    scratch: [Vec<u8>; 2],
    /// Next stage to drain.
    draining: usize,
    /// Whether [`echo`](Self::echo) is filled.
    echo_wanted: bool,
    /// Buffers of chunks [`out_chunk`](Self::out_chunk) gave away, back for reuse.
    returned: Returned,
}

/// A chunk shorter than this is copied rather than given its own buffer.
const SMALL_CHUNK: usize = 4096;
/// Returned buffers a chain keeps (the rest are freed).
const SPARE_BUFFERS: usize = 4;

/// Buffers of a chain's chunks, returned by the chunks' last owners.
#[derive(Debug, Default, Clone)]
struct Returned(Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

impl Returned {
    fn take(&self) -> Option<Vec<u8>> {
        self.0.lock().ok()?.pop()
    }
}

/// The buffer of one chunk: back to its chain's [`Returned`] when the chunk is dropped.
struct Recycled {
    buf: Vec<u8>,
    back: Returned,
}

impl AsRef<[u8]> for Recycled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        if let Ok(mut spare) = self.back.0.lock()
            && spare.len() < SPARE_BUFFERS
        {
            spare.push(buf);
        }
    }
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain")
            .field("stages", &self.stages.len())
            .finish_non_exhaustive()
    }
}

impl Chain {
    /// A chain of `stages`, run in order; what the first `echo_after` stages let through is
    /// what the echo gets (1 with a mask stage first, 0 for the raw input).
    pub fn new(stages: Vec<Box<dyn Stage>>, echo_after: usize) -> Self {
        Self {
            echo_after: echo_after.min(stages.len()),
            stages,
            out: Vec::new(),
            echo: Vec::new(),
            scratch: [Vec::new(), Vec::new()],
            draining: 0,
            echo_wanted: true,
            returned: Returned::default(),
        }
    }

    /// Whether to fill [`echo`](Self::echo) (on by default); off saves a copy when nothing
    /// is echoed.
    pub fn set_echo(&mut self, wanted: bool) {
        self.echo_wanted = wanted;
    }

    /// Bytes for the bundler released by the last [`push`](Self::push) or
    /// [`drain`](Self::drain).
    pub fn out(&self) -> &[u8] {
        &self.out
    }

    /// The bytes [`out`](Self::out) returns, as a chunk for the bundler, without copying
    /// them when they fill most of their buffer: the buffer itself goes, and comes back to
    /// this chain for reuse once the bundler has let go of the chunk (a fresh allocation per
    /// chunk would have the allocator fault its pages in again each time, which costs more
    /// than a copy). A small chunk in a big buffer is copied instead, so that it never holds
    /// the big buffer's memory.
    pub fn out_chunk(&mut self) -> bytes::Bytes {
        let n = self.out.len();
        if n < SMALL_CHUNK || n < self.out.capacity() / 2 {
            return bytes::Bytes::copy_from_slice(&self.out);
        }
        let fresh = self
            .returned
            .take()
            .unwrap_or_else(|| Vec::with_capacity(n + n / 8));
        let full = std::mem::replace(&mut self.out, fresh);
        bytes::Bytes::from_owner(Recycled {
            buf: full,
            back: self.returned.clone(),
        })
    }

    /// Bytes for the echo released by the last call: the output of the mask stage.
    pub fn echo(&self) -> &[u8] {
        &self.echo
    }

    /// Runs `input` through every stage; the results are in [`out`](Self::out) and
    /// [`echo`](Self::echo).
    pub fn push(&mut self, input: &[u8], now: Instant) {
        self.out.clear();
        self.echo.clear();
        self.run_from(0, input, now);
    }

    fn run_from(&mut self, first: usize, input: &[u8], now: Instant) {
        if first == 0 && self.echo_after == 0 && self.echo_wanted {
            self.echo.extend_from_slice(input);
        }
        if first >= self.stages.len() {
            self.out.extend_from_slice(input);
            return;
        }
        let [mut cur, mut next] = std::mem::take(&mut self.scratch);
        cur.clear();
        self.stages[first].push(input, now, &mut cur);
        if first + 1 == self.echo_after && self.echo_wanted {
            self.echo.extend_from_slice(&cur);
        }
        for i in first + 1..self.stages.len() {
            next.clear();
            self.stages[i].push(&cur, now, &mut next);
            if i + 1 == self.echo_after && self.echo_wanted {
                self.echo.extend_from_slice(&next);
            }
            std::mem::swap(&mut cur, &mut next);
        }
        if self.out.is_empty() {
            // No copy: the buffers trade places.
            std::mem::swap(&mut self.out, &mut cur);
        } else {
            self.out.extend_from_slice(&cur);
        }
        self.scratch = [cur, next];
    }

    /// Once the stream has ended: releases up to about `max` bytes of what the stages hold,
    /// each stage's remainder going through the stages after it. Call until it returns
    /// `Ok(false)`; the results of each call are in [`out`](Self::out) and
    /// [`echo`](Self::echo).
    ///
    /// # Errors
    /// A stage could not read back what it held (a tail spooled on disk).
    pub fn drain(&mut self, max: usize, now: Instant) -> std::io::Result<bool> {
        self.out.clear();
        self.echo.clear();
        let mut held = Vec::new();
        while self.draining < self.stages.len() {
            let i = self.draining;
            held.clear();
            let more = self.stages[i].drain(max, now, &mut held)?;
            if i + 1 == self.echo_after && self.echo_wanted {
                self.echo.extend_from_slice(&held);
            }
            self.run_from(i + 1, &held, now);
            if !more {
                self.draining += 1;
            }
            if self.out.len() >= max || (more && !held.is_empty()) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Everything the stages did so far.
    pub fn counts(&self) -> PolicyCounts {
        let mut c = PolicyCounts::default();
        for s in &self.stages {
            s.counts(&mut c);
        }
        c
    }
}

/// The policies of a butler, applied to every text stream it captures.
#[derive(Debug, Clone, Default)]
pub struct PolicyConfig {
    /// `--include` and `--exclude` rules, in the order given.
    pub filters: Vec<FilterRule>,
    /// `--rate-limit`, per stream.
    pub rate_limit: Option<RateLimit>,
    /// Secrets to mask, shared by every stream (`::add-mask::` in one stream masks the
    /// secret in all of them from then on). `None`: no masking at all (not even
    /// `::add-mask::` lines are looked for).
    pub masks: Option<Arc<MaskRegistry>>,
    /// `--max-stream-bytes`: keep the head and the tail of a stream that grows past it.
    pub max_stream_bytes: Option<u64>,
    /// Where the head+tail cap keeps a stream's tail (in memory when `None`).
    pub spool_dir: Option<PathBuf>,
    /// Streams that are only masked: no filter, rate limit or head+tail cap applies to them
    /// (records the butler writes itself, which the user's policies must not cut).
    pub masked_only: std::collections::BTreeSet<String>,
}

impl PolicyConfig {
    /// Whether any policy is configured.
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
            && self.rate_limit.is_none()
            && self.masks.is_none()
            && self.max_stream_bytes.is_none()
    }

    /// The chain for a stream named `name` of type `kind`, or `None` when nothing applies
    /// (no policy, or a binary or datagram stream). A line longer than `max_line` bytes is
    /// not held back whole by the filters (see [`filter`]).
    ///
    /// # Errors
    /// The head+tail cap could not make its file under [`spool_dir`](Self::spool_dir).
    pub fn chain_for(
        &self,
        name: &str,
        kind: StreamType,
        max_line: usize,
    ) -> std::io::Result<Option<Chain>> {
        if self.is_empty() || kind != StreamType::Text {
            return Ok(None);
        }
        let mut stages: Vec<Box<dyn Stage>> = Vec::new();
        let mut echo_after = 0;
        if let Some(reg) = &self.masks {
            stages.push(Box::new(mask::Mask::new(reg.clone())));
            echo_after = 1;
        }
        if self.masked_only.contains(name) {
            return Ok((!stages.is_empty()).then(|| Chain::new(stages, echo_after)));
        }
        if let Some(f) = filter::Filter::for_stream(&self.filters, name, max_line) {
            stages.push(Box::new(f));
        }
        if let Some(r) = &self.rate_limit {
            stages.push(Box::new(ratelimit::Limiter::new(*r)));
        }
        if let Some(max) = self.max_stream_bytes {
            stages.push(Box::new(HeadTail::new(max, self.spool_dir.as_deref())?));
        }
        if stages.is_empty() {
            return Ok(None);
        }
        Ok(Some(Chain::new(stages, echo_after)))
    }
}

/// Splits `data` into lines, each with its `\n` when it has one (the last may lack it).
pub(crate) fn lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.split_inclusive(|&b| b == b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Holds everything back until drained, in pieces of `max`.
    struct Hold(Vec<u8>);
    impl Stage for Hold {
        fn push(&mut self, input: &[u8], _: Instant, _: &mut Vec<u8>) {
            self.0.extend_from_slice(input);
        }
        fn drain(&mut self, max: usize, _: Instant, out: &mut Vec<u8>) -> std::io::Result<bool> {
            let n = max.min(self.0.len());
            out.extend(self.0.drain(..n));
            Ok(!self.0.is_empty())
        }
        fn counts(&self, _: &mut PolicyCounts) {}
    }

    /// Upper-cases what passes.
    struct Upper;
    impl Stage for Upper {
        fn push(&mut self, input: &[u8], _: Instant, out: &mut Vec<u8>) {
            out.extend(input.iter().map(u8::to_ascii_uppercase));
        }
        fn drain(&mut self, _: usize, _: Instant, _: &mut Vec<u8>) -> std::io::Result<bool> {
            Ok(false)
        }
        fn counts(&self, into: &mut PolicyCounts) {
            into.masked += 1;
        }
    }

    /// Passes its input on as it is.
    struct Same;
    impl Stage for Same {
        fn push(&mut self, input: &[u8], _: Instant, out: &mut Vec<u8>) {
            out.extend_from_slice(input);
        }
        fn drain(&mut self, _: usize, _: Instant, _: &mut Vec<u8>) -> std::io::Result<bool> {
            Ok(false)
        }
        fn counts(&self, _: &mut PolicyCounts) {}
    }

    #[test]
    fn big_chunks_lend_their_buffer_and_get_it_back_small_ones_are_copied() {
        let now = Instant::now();
        let mut c = Chain::new(vec![Box::new(Same)], 0);
        let big = vec![7u8; 64 * 1024];
        c.push(&big, now);
        let first = c.out_chunk();
        assert_eq!(first.as_ref(), big.as_slice());
        let lent = first.as_ptr();
        assert!(c.returned.take().is_none(), "still held by the bundler");
        drop(first);
        let back = c.returned.take().expect("returned once dropped");
        assert_eq!(back.as_ptr(), lent);
        assert!(back.is_empty() && back.capacity() >= big.len());
        // At most SPARE_BUFFERS are kept.
        let chunks: Vec<_> = (0..SPARE_BUFFERS + 3)
            .map(|_| {
                c.push(&big, now);
                c.out_chunk()
            })
            .collect();
        drop(chunks);
        let kept = std::iter::from_fn(|| c.returned.take()).count();
        assert_eq!(kept, SPARE_BUFFERS);
        // A small chunk is a copy: the chain's buffer stays with it.
        c.push(b"small", now);
        let before = c.out().as_ptr();
        let small = c.out_chunk();
        assert_eq!(small.as_ref(), b"small");
        assert_ne!(small.as_ptr(), before);
    }

    #[test]
    fn draining_a_stage_pipes_its_output_through_the_later_stages() {
        let now = Instant::now();
        let mut c = Chain::new(vec![Box::new(Hold(Vec::new())), Box::new(Upper)], 1);
        c.push(b"abcdefg", now);
        assert!(c.out().is_empty() && c.echo().is_empty());
        let mut out = Vec::new();
        let mut echo = Vec::new();
        while c.drain(3, now).unwrap() {
            out.extend_from_slice(c.out());
            echo.extend_from_slice(c.echo());
        }
        out.extend_from_slice(c.out());
        echo.extend_from_slice(c.echo());
        assert_eq!(out, b"ABCDEFG");
        assert_eq!(echo, b"abcdefg");
        assert_eq!(c.counts().masked, 1);
    }

    #[test]
    fn only_text_streams_get_a_chain_and_only_with_a_policy() {
        assert!(
            PolicyConfig::default()
                .chain_for("s", StreamType::Text, 100)
                .unwrap()
                .is_none()
        );
        let cfg = PolicyConfig {
            masks: Some(Arc::new(MaskRegistry::default())),
            ..Default::default()
        };
        assert!(cfg.chain_for("s", StreamType::Text, 100).unwrap().is_some());
        assert!(
            cfg.chain_for("s", StreamType::Binary, 100)
                .unwrap()
                .is_none()
        );
        assert!(
            cfg.chain_for("s", StreamType::Datagram, 100)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_masked_only_stream_gets_the_mask_and_nothing_else() {
        let rule = FilterRule::parse(RuleKind::Include, "^KEEP").unwrap();
        let mut cfg = PolicyConfig {
            filters: vec![rule],
            ..Default::default()
        };
        cfg.masked_only.insert("rec".into());
        // Filtered when not masked-only; nothing at all to do for the masked-only one.
        assert!(cfg.chain_for("s", StreamType::Text, 100).unwrap().is_some());
        assert!(
            cfg.chain_for("rec", StreamType::Text, 100)
                .unwrap()
                .is_none()
        );
        let reg = Arc::new(MaskRegistry::default());
        reg.add(b"hunter22secret").unwrap();
        cfg.masks = Some(reg);
        let mut c = cfg
            .chain_for("rec", StreamType::Text, 100)
            .unwrap()
            .unwrap();
        c.push(b"drop me? no: hunter22secret\n", Instant::now());
        assert_eq!(c.out(), b"drop me? no: ***\n");
    }
}
