//! Secret masking: every occurrence of a secret is replaced with `***` before it leaves the
//! process (bundles, the echo, the spool).
//!
//! Secrets come from the command line (`--mask-env`, `--mask-file`) and from
//! `::add-mask::VALUE` lines in any captured text stream. Such a line is removed from its
//! stream (and from the echo), and its value is masked in every stream from then on: the
//! secrets live in one [`MaskRegistry`] shared by every stream's [`Mask`] stage, which
//! rebuilds its matcher when the registry's generation changes.
//!
//! A stream is scanned as one continuous text, whatever its read chunks: the stage holds back
//! only the shortest tail that could still be the start of a secret (or of an
//! `::add-mask::` line), and releases it once decided, or when the stream ends. Where secrets
//! overlap, the leftmost occurrence wins, and the longest secret starting there.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use aho_corasick::{AhoCorasick, Input, MatchKind};

use super::{PolicyCounts, Stage};

/// Shortest secret accepted: shorter ones would mask common text.
pub const MIN_SECRET_LEN: usize = 4;
/// Longest secret accepted (it bounds what a stream holds back).
pub const MAX_SECRET_LEN: usize = 4096;
/// Most secrets a registry holds.
pub const MAX_SECRETS: usize = 10_000;
/// Patterns per matcher. A matcher of a few dozen patterns searches with SIMD (Teddy) at
/// gigabytes per second; one of a hundred falls back to an automaton that steps through every
/// byte, four times slower than a few small matchers in turn.
const GROUP: usize = 64;
/// Bytes of text the sieve looks at in each sample (see [`Sieve`]).
const GRAM: usize = 4; // the window is read as a u32
/// The sieve's table has `1 << SIEVE_BITS` bits: 32 KiB, which stays in the L1 cache.
const SIEVE_BITS: u32 = 18;
const SIEVE_WORDS: usize = 1 << (SIEVE_BITS - 6);
/// Smallest step between samples for which the sieve beats searching every byte: it needs
/// the shortest pattern to be at least `GRAM + MIN_STEP - 1` bytes long.
const MIN_STEP: usize = 4;
/// The command that adds a secret, at the start of a line.
pub const ADD_MASK: &[u8] = b"::add-mask::";
/// What a secret is replaced with.
pub const REPLACEMENT: &[u8] = b"***";

/// A secret that was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MaskError {
    /// Shorter than [`MIN_SECRET_LEN`].
    #[error("a secret of {0} byte(s) is too short to mask (at least {MIN_SECRET_LEN} bytes)")]
    TooShort(usize),
    /// Longer than [`MAX_SECRET_LEN`].
    #[error("a secret of {0} bytes is too long to mask (at most {MAX_SECRET_LEN} bytes)")]
    TooLong(usize),
    /// [`MAX_SECRETS`] secrets are registered already.
    #[error("too many secrets (at most {MAX_SECRETS})")]
    TooMany,
}

/// The secrets of a butler, shared by every stream. Its `Debug` form shows how many there
/// are, never what they are.
#[derive(Default)]
pub struct MaskRegistry {
    secrets: RwLock<Vec<Vec<u8>>>,
    generation: AtomicU64,
    refused: AtomicU64,
}

impl std::fmt::Debug for MaskRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MaskRegistry")
            .field("secrets", &self.len())
            .field("refused", &self.refused())
            .finish()
    }
}

impl MaskRegistry {
    /// Adds a secret; returns whether it was new. Every stream masks it from its next read.
    ///
    /// # Errors
    /// The secret is too short or too long, or the registry is full; it is counted in
    /// [`refused`](Self::refused).
    pub fn add(&self, secret: &[u8]) -> Result<bool, MaskError> {
        let err = if secret.len() < MIN_SECRET_LEN {
            Some(MaskError::TooShort(secret.len()))
        } else if secret.len() > MAX_SECRET_LEN {
            Some(MaskError::TooLong(secret.len()))
        } else {
            None
        };
        if let Some(e) = err {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        let mut s = self.secrets.write().unwrap_or_else(|p| p.into_inner());
        if s.iter().any(|x| x == secret) {
            return Ok(false);
        }
        if s.len() >= MAX_SECRETS {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(MaskError::TooMany);
        }
        s.push(secret.to_vec());
        self.generation.fetch_add(1, Ordering::Release);
        Ok(true)
    }

    /// Secrets refused so far (too short, too long, too many).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Secrets registered.
    pub fn len(&self) -> usize {
        self.secrets.read().map_or(0, |s| s.len())
    }

    /// Whether no secret is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn snapshot(&self) -> (u64, Vec<Vec<u8>>) {
        let s = self.secrets.read().unwrap_or_else(|p| p.into_inner());
        (self.generation(), s.clone())
    }
}

/// A match: where, and which pattern.
#[derive(Debug, Clone, Copy)]
struct Found {
    start: usize,
    end: usize,
    pattern: usize,
}

/// A matcher's next match in the data being searched.
#[derive(Debug, Clone, Copy)]
enum Slot {
    /// Not searched yet.
    Unknown,
    /// None from where it was searched on.
    Done,
    /// This one.
    At(Found),
}

/// Finds patterns by looking at the text in samples.
///
/// Every pattern is at least `shortest` bytes long, so each occurrence covers every
/// position from its start to `step = shortest - GRAM + 1` bytes later with a whole
/// `GRAM`-byte window of the pattern. Sampling the text every `step` bytes thus hits each
/// occurrence at least once, at one of its first `step` offsets. A bit table of the hashes of
/// every pattern's windows at those offsets rules out almost every sample at the cost of one
/// lookup; for the few left (about one in a thousand with a hundred secrets, plus the real
/// occurrences) the window itself says which patterns, at which offsets, could contain it,
/// and those are compared in place. With 100 secrets this is several times faster than
/// running the matchers over every byte.
struct Sieve {
    step: usize,
    bits: Box<[u64; SIEVE_WORDS]>,
    /// Each pattern window in the table, with the patterns and offsets where it occurs.
    windows: std::collections::HashMap<u32, Vec<(usize, usize)>>,
    /// The patterns, in the matchers' order (pattern 0 is [`ADD_MASK`]).
    patterns: Vec<Vec<u8>>,
}

impl Sieve {
    /// A sieve for `patterns`, or `None` when they are too short for it to pay, or when
    /// there is only the one (`::add-mask::`), which a single matcher finds faster.
    fn new(patterns: &[Vec<u8>], min_step: usize) -> Option<Self> {
        if patterns.len() < 2 {
            return None;
        }
        let shortest = patterns.iter().map(Vec::len).min()?;
        let step = (shortest + 1).checked_sub(GRAM)?;
        if step < min_step.max(1) {
            return None;
        }
        let mut bits: Box<[u64; SIEVE_WORDS]> = Box::new([0; SIEVE_WORDS]);
        let mut windows: std::collections::HashMap<u32, Vec<(usize, usize)>> =
            std::collections::HashMap::new();
        for (i, p) in patterns.iter().enumerate() {
            for off in 0..step {
                let mut w = [0u8; GRAM];
                w.copy_from_slice(&p[off..off + GRAM]);
                let w = u32::from_le_bytes(w);
                let h = Self::hash(w);
                bits[h / 64] |= 1 << (h % 64);
                windows.entry(w).or_default().push((i, off));
            }
        }
        Some(Self {
            step,
            bits,
            windows,
            patterns: patterns.to_vec(),
        })
    }

    /// Whether the table holds `window`'s hash (always, for a window of a pattern at one of
    /// its first `step` offsets).
    fn has(&self, window: u32) -> bool {
        let h = Self::hash(window);
        self.bits[h / 64] & (1 << (h % 64)) != 0
    }

    fn hash(window: u32) -> usize {
        (window.wrapping_mul(0x9E37_79B1) >> (32 - SIEVE_BITS)) as usize
    }

    /// The leftmost occurrence starting at or after `at` (the longest of those starting
    /// there).
    fn find(&self, data: &[u8], at: usize) -> Option<Found> {
        let last = data.len().checked_sub(GRAM)?;
        let mut p = at;
        while p <= last {
            // `p + 3 <= last + 3 < data.len()`: the compiler drops the bounds checks.
            let w = u32::from_le_bytes([data[p], data[p + 1], data[p + 2], data[p + 3]]);
            if self.has(w)
                && let Some(m) = self.occurrence_at(data, p, w, at)
            {
                return Some(m);
            }
            p += self.step;
        }
        None
    }

    /// The leftmost (then longest) occurrence starting at or after `at` that contains the
    /// sample at `p`, whose window is `w`. Every occurrence starting in the `step` bytes up
    /// to `p` contains it; one starting before those contains an earlier sample, one after
    /// them a later one.
    fn occurrence_at(&self, data: &[u8], p: usize, w: u32, at: usize) -> Option<Found> {
        let mut best: Option<Found> = None;
        for &(pattern, off) in self.windows.get(&w)? {
            let Some(start) = p.checked_sub(off).filter(|&s| s >= at) else {
                continue;
            };
            let pat = &self.patterns[pattern];
            let end = start + pat.len();
            if data.get(start..end) != Some(pat.as_slice()) {
                continue;
            }
            let better = match best {
                None => true,
                Some(b) => start < b.start || (start == b.start && end > b.end),
            };
            if better {
                best = Some(Found {
                    start,
                    end,
                    pattern,
                });
            }
        }
        best
    }
}

/// The masking stage of one stream.
pub struct Mask {
    reg: Arc<MaskRegistry>,
    /// Generation the matcher was built for.
    generation: Option<u64>,
    /// The longest pattern (pattern 0 is [`ADD_MASK`]; the others are the secrets).
    longest: usize,
    /// The patterns, sorted (to find the ones a tail could grow into).
    sorted: Vec<Vec<u8>>,
    /// Matchers of at most `group` patterns each, with the index of their first pattern.
    groups: Vec<(AhoCorasick, usize)>,
    group: usize,
    /// Finds the patterns instead of the matchers when every pattern is long enough (the
    /// matchers are then not built).
    sieve: Option<Sieve>,
    /// Smallest sampling step worth a sieve (tests lower it to exercise the sieve).
    sieve_min_step: usize,
    /// The undecided tail of the stream.
    held: Vec<u8>,
    buf: Vec<u8>,
    /// Whether the byte before `held` (or before the next input) ends a line.
    line_start: bool,
    /// Inside an overlong `::add-mask::` line, dropped up to its end.
    discarding: bool,
    masked: u64,
}

impl Mask {
    /// A stage masking the secrets of `reg`.
    pub fn new(reg: Arc<MaskRegistry>) -> Self {
        Self::with_options(reg, GROUP, MIN_STEP)
    }

    fn with_options(reg: Arc<MaskRegistry>, group: usize, sieve_min_step: usize) -> Self {
        let mut m = Self {
            reg,
            generation: None,
            longest: 0,
            sorted: Vec::new(),
            groups: Vec::new(),
            group: group.max(1),
            sieve: None,
            sieve_min_step,
            held: Vec::new(),
            buf: Vec::new(),
            line_start: true,
            discarding: false,
            masked: 0,
        };
        m.refresh();
        m
    }

    /// Rebuilds the matcher if the registry changed.
    fn refresh(&mut self) {
        if self.generation == Some(self.reg.generation()) {
            return;
        }
        let (generation, secrets) = self.reg.snapshot();
        let mut patterns = Vec::with_capacity(secrets.len() + 1);
        patterns.push(ADD_MASK.to_vec());
        patterns.extend(secrets);
        let sieve = Sieve::new(&patterns, self.sieve_min_step);
        let mut groups = Vec::new();
        // With a sieve the matchers are not needed.
        let grouped = if sieve.is_some() {
            &[][..]
        } else {
            &patterns[..]
        };
        for (i, g) in grouped.chunks(self.group).enumerate() {
            match AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(g)
            {
                Ok(ac) => groups.push((ac, i * self.group)),
                Err(e) => {
                    // Keeps the previous matchers; the registry's bounds make this unexpected.
                    tracing::error!(error = %e, "cannot build the secret matcher");
                    return;
                }
            }
        }
        self.longest = patterns.iter().map(Vec::len).max().unwrap_or(0);
        self.sieve = sieve;
        self.sorted = patterns;
        self.sorted.sort_unstable();
        self.sorted.dedup();
        self.groups = groups;
        self.generation = Some(generation);
    }

    /// The leftmost match in `data` starting at or after `at` (the longest of those starting
    /// there), through the sieve when there is one.
    fn find(&self, data: &[u8], at: usize, cache: &mut Vec<Slot>) -> Option<Found> {
        match &self.sieve {
            Some(sieve) => sieve.find(data, at),
            None => self.next_match(data, at, cache),
        }
    }

    /// The leftmost match in `data` starting at or after `at` (the longest of those starting
    /// there), as (start, end, pattern). `cache` holds each matcher's next match, which stays
    /// valid while it starts at or after `at`.
    fn next_match(&self, data: &[u8], at: usize, cache: &mut Vec<Slot>) -> Option<Found> {
        cache.resize(self.groups.len(), Slot::Unknown);
        let mut best: Option<Found> = None;
        for (slot, (ac, first)) in cache.iter_mut().zip(&self.groups) {
            let m = match *slot {
                Slot::Done => continue,
                Slot::At(m) if m.start >= at => m,
                _ => match ac.find(Input::new(data).span(at..data.len())) {
                    None => {
                        *slot = Slot::Done;
                        continue;
                    }
                    Some(m) => {
                        let f = Found {
                            start: m.start(),
                            end: m.end(),
                            pattern: first + m.pattern().as_usize(),
                        };
                        *slot = Slot::At(f);
                        f
                    }
                },
            };
            best = match best {
                Some(b) if b.start < m.start || (b.start == m.start && b.end >= m.end) => Some(b),
                _ => Some(m),
            };
        }
        best
    }

    /// The first position at or after `from` where the rest of `data` is a proper prefix of
    /// a pattern (could grow into a match), or `data.len()`.
    fn hold_point(&self, data: &[u8], from: usize) -> usize {
        let start = data
            .len()
            .saturating_sub(self.longest.saturating_sub(1))
            .max(from);
        (start..data.len())
            .find(|&p| {
                // In sorted order, the patterns starting with `rest` follow it: `rest` itself
                // (if it is a pattern), then the longer ones.
                let rest = &data[p..];
                // Every pattern's first window is in the sieve's table: one lookup rules
                // out most positions before the search among the patterns.
                if let (Some(sieve), Some(w)) = (&self.sieve, rest.first_chunk::<GRAM>())
                    && !sieve.has(u32::from_le_bytes(*w))
                {
                    return false;
                }
                let i = self.sorted.partition_point(|pat| pat.as_slice() < rest);
                self.sorted[i..]
                    .iter()
                    .take(2)
                    .any(|pat| pat.len() > rest.len() && pat.starts_with(rest))
            })
            .unwrap_or(data.len())
    }

    /// Handles one `::add-mask::` line's value.
    fn command(&mut self, value: &[u8]) {
        let value = value.strip_suffix(b"\r").unwrap_or(value).trim_ascii();
        match self.reg.add(value) {
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "::add-mask:: refused; that value is NOT masked"),
        }
        self.refresh();
    }

    /// Masks `data` (held tail first), appends what is decided to `out` and keeps the rest in
    /// `held`. With `fin`, the stream has ended: everything is decided.
    fn process(&mut self, data: &[u8], fin: bool, out: &mut Vec<u8>) {
        self.held.clear();
        let mut pos = 0;
        let mut at = 0;
        let mut hold = if fin {
            data.len()
        } else {
            self.hold_point(data, 0)
        };
        let mut cache = Vec::new();
        while let Some(m) = self.find(data, at, &mut cache) {
            if m.pattern == 0 {
                let at_line_start = if m.start == 0 {
                    self.line_start
                } else {
                    data[m.start - 1] == b'\n'
                };
                if !at_line_start {
                    at = m.start + 1;
                    continue;
                }
                let end = memchr::memchr(b'\n', &data[m.end..]).map(|i| m.end + i);
                let (value_end, next) = match end {
                    Some(e) => (e, e + 1),
                    None if fin => (data.len(), data.len()),
                    None if data.len() - m.start > MAX_SECRET_LEN + ADD_MASK.len() + 2 => {
                        tracing::warn!(
                            "an ::add-mask:: line longer than {} bytes was dropped; its \
                             value is NOT masked",
                            MAX_SECRET_LEN
                        );
                        out.extend_from_slice(&data[pos..m.start]);
                        self.reg.refused.fetch_add(1, Ordering::Relaxed);
                        self.discarding = true;
                        self.line_start = true;
                        return;
                    }
                    None => {
                        out.extend_from_slice(&data[pos..m.start]);
                        self.held.extend_from_slice(&data[m.start..]);
                        self.line_start = true;
                        return;
                    }
                };
                out.extend_from_slice(&data[pos..m.start]);
                self.command(&data[m.end..value_end]);
                // The matchers may have changed.
                cache.clear();
                pos = next;
                at = next;
                if !fin {
                    hold = self.hold_point(data, pos);
                }
                continue;
            }
            if m.start >= hold {
                break;
            }
            out.extend_from_slice(&data[pos..m.start]);
            out.extend_from_slice(REPLACEMENT);
            self.masked += 1;
            pos = m.end;
            at = pos;
        }
        let cut = pos.max(hold);
        out.extend_from_slice(&data[pos..cut]);
        self.held.extend_from_slice(&data[cut..]);
        if cut > 0 {
            self.line_start = data[cut - 1] == b'\n';
        }
    }

    /// Processes the held tail followed by `input`, copied together.
    fn with_held(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        buf.extend_from_slice(&self.held);
        buf.extend_from_slice(input);
        self.process(&buf, false, out);
        self.buf = buf;
    }

    /// Processes `input` after whatever is held.
    fn push_rest(&mut self, input: &[u8], out: &mut Vec<u8>) {
        if self.held.is_empty() {
            self.process(input, false, out);
        } else {
            self.with_held(input, out);
        }
    }

    /// Drops `input` up to the end of an overlong command line; returns the rest.
    fn skip_discarded<'a>(&mut self, input: &'a [u8]) -> &'a [u8] {
        if !self.discarding {
            return input;
        }
        match memchr::memchr(b'\n', input) {
            Some(i) => {
                self.discarding = false;
                self.line_start = true;
                &input[i + 1..]
            }
            None => &[],
        }
    }
}

impl Stage for Mask {
    fn push(&mut self, input: &[u8], _now: Instant, out: &mut Vec<u8>) {
        self.refresh();
        let input = self.skip_discarded(input);
        if input.is_empty() {
            return;
        }
        if self.held.is_empty() {
            self.process(input, false, out);
            return;
        }
        // The held tail and the start of `input` are searched together. Only a short
        // junction is copied: once everything up to the end of the held bytes is decided,
        // what the junction left undecided is the start of the rest of `input`, which is
        // searched where it lies.
        let k = 2 * self.longest + 64;
        if input.len() <= k {
            self.with_held(input, out);
            return;
        }
        let held = self.held.len();
        self.with_held(&input[..k], out);
        if self.discarding {
            let rest = self.skip_discarded(&input[k..]);
            if !rest.is_empty() {
                self.push_rest(rest, out);
            }
            return;
        }
        let cut = k + held - self.held.len();
        if cut >= held {
            self.process(&input[cut - held..], false, out);
        } else {
            // An `::add-mask::` line began in the held bytes: the slow way.
            self.with_held(&input[k..], out);
        }
    }

    fn drain(&mut self, _max: usize, _now: Instant, out: &mut Vec<u8>) -> std::io::Result<bool> {
        self.refresh();
        if !self.held.is_empty() {
            let held = std::mem::take(&mut self.held);
            self.process(&held, true, out);
            self.held.clear();
        }
        Ok(false)
    }

    fn counts(&self, into: &mut PolicyCounts) {
        into.masked += self.masked;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn registry(secrets: &[&str]) -> Arc<MaskRegistry> {
        let r = Arc::new(MaskRegistry::default());
        for s in secrets {
            r.add(s.as_bytes()).unwrap();
        }
        r
    }

    /// Runs `chunks` through one stage (and, with `reg2`, a second stream's stage sharing
    /// the registry); returns the output and the count.
    fn run(reg: &Arc<MaskRegistry>, chunks: &[&[u8]]) -> (Vec<u8>, u64) {
        run_grouped(reg, chunks, GROUP)
    }

    /// Like [`run`], with matchers of `group` patterns (to try several matchers with few
    /// secrets) and no sieve.
    fn run_grouped(reg: &Arc<MaskRegistry>, chunks: &[&[u8]], group: usize) -> (Vec<u8>, u64) {
        run_with(reg, chunks, group, usize::MAX)
    }

    /// Like [`run`], with a sieve whatever the secrets' lengths (down to a step of 1).
    fn run_sieved(reg: &Arc<MaskRegistry>, chunks: &[&[u8]]) -> (Vec<u8>, u64) {
        run_with(reg, chunks, 2, 1)
    }

    fn run_with(
        reg: &Arc<MaskRegistry>,
        chunks: &[&[u8]],
        group: usize,
        min_step: usize,
    ) -> (Vec<u8>, u64) {
        let now = Instant::now();
        let mut m = Mask::with_options(reg.clone(), group, min_step);
        let mut out = Vec::new();
        for c in chunks {
            m.push(c, now, &mut out);
        }
        while m.drain(1024, now, &mut out).unwrap() {}
        let mut c = PolicyCounts::default();
        m.counts(&mut c);
        (out, c.masked)
    }

    #[test]
    fn secrets_are_masked_whole_and_in_pieces() {
        let reg = registry(&["hunter2!", "s3cr3t"]);
        let (out, n) = run(&reg, &[b"pw=hunter2! and s3cr3t\n"]);
        assert_eq!(out, b"pw=*** and ***\n");
        assert_eq!(n, 2);
        let (out, _) = run(&reg, &[b"pw=hun", b"ter", b"2! x"]);
        assert_eq!(out, b"pw=*** x");
    }

    #[test]
    fn only_a_possible_secret_prefix_is_held_back() {
        let reg = registry(&["secret"]);
        let now = Instant::now();
        let mut m = Mask::new(reg);
        let mut out = Vec::new();
        m.push(b"line one\nsome sec", now, &mut out);
        assert_eq!(out, b"line one\nsome ");
        out.clear();
        m.push(b"ond", now, &mut out);
        assert_eq!(out, b"second");
        out.clear();
        m.push(b"x se", now, &mut out);
        assert_eq!(out, b"x ");
        out.clear();
        m.drain(100, now, &mut out).unwrap();
        assert_eq!(out, b"se");
    }

    #[test]
    fn a_longer_secret_sharing_a_prefix_is_masked_whole() {
        let reg = registry(&["abcd", "abcdefgh"]);
        assert_eq!(run(&reg, &[b"1 abcd", b"efgh 2"]).0, b"1 *** 2");
        assert_eq!(run(&reg, &[b"1 abcd", b"efg"]).0, b"1 ***efg");
        assert_eq!(run(&reg, &[b"1 abcd"]).0, b"1 ***");
    }

    #[test]
    fn add_mask_lines_are_removed_and_mask_every_stream_from_then_on() {
        let reg = Arc::new(MaskRegistry::default());
        let now = Instant::now();
        let mut a = Mask::new(reg.clone());
        let mut b = Mask::new(reg.clone());
        let mut out = Vec::new();
        a.push(b"before topsecret\n::add-mask::tops", now, &mut out);
        assert_eq!(out, b"before topsecret\n");
        out.clear();
        a.push(b"ecret\r\nafter topsecret\n", now, &mut out);
        assert_eq!(out, b"after ***\n");
        out.clear();
        b.push(b"b: topsecret\n", now, &mut out);
        assert_eq!(out, b"b: ***\n");
        out.clear();
        // Not at the start of a line: plain text.
        a.push(b"x ::add-mask::nope\n", now, &mut out);
        assert_eq!(out, b"x ::add-mask::nope\n");
        out.clear();
        // Short values are refused and counted.
        a.push(b"::add-mask::ab\nab\n", now, &mut out);
        assert_eq!(out, b"ab\n");
        assert_eq!(reg.refused(), 1);
        // A command ending the stream without a newline still counts.
        out.clear();
        a.push(b"::add-mask::lastone", now, &mut out);
        a.drain(100, now, &mut out).unwrap();
        assert_eq!(out, b"");
        assert_eq!(reg.len(), 2);
    }

    #[test]
    fn overlong_commands_are_dropped_not_logged() {
        let reg = Arc::new(MaskRegistry::default());
        let long = vec![b'x'; MAX_SECRET_LEN + 100];
        let (out, _) = run(&reg, &[b"::add-mask::", &long, &long, b"\nnext\n"]);
        assert_eq!(out, b"next\n");
        assert_eq!(reg.refused(), 1);
        // Found too long in the junction after a held tail, with the line's end further on
        // in the same chunk.
        let reg = Arc::new(MaskRegistry::default());
        let first = [b"::add-mask::".as_slice(), &long[..MAX_SECRET_LEN]].concat();
        let second = [&long[..300], b"\nnext\n".as_slice(), &long[..200]].concat();
        let (out, _) = run(&reg, &[&first, &second, b"\n"]);
        assert_eq!(out, [b"next\n".as_slice(), &long[..200], b"\n"].concat());
        assert_eq!(reg.refused(), 1);
    }

    #[test]
    fn a_command_right_after_a_secret_is_not_at_a_line_start() {
        let reg = registry(&["abcd"]);
        let (out, _) = run(&reg, &[b"x\nabcd::add-", b"mask::efgh\nefgh\n"]);
        assert_eq!(out, b"x\n***::add-mask::efgh\nefgh\n");
        assert!(!format!("{reg:?}").contains("abcd"));
    }

    #[test]
    fn registry_refuses_short_and_long_secrets() {
        let reg = MaskRegistry::default();
        assert_eq!(reg.add(b"abc"), Err(MaskError::TooShort(3)));
        assert!(reg.add(&vec![b'a'; MAX_SECRET_LEN + 1]).is_err());
        assert_eq!(reg.add(b"abcd"), Ok(true));
        assert_eq!(reg.add(b"abcd"), Ok(false));
        assert_eq!(reg.refused(), 2);
    }

    /// Replaces every secret in `text`, leftmost first, longest first: a plain reference.
    fn reference(secrets: &[String], text: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < text.len() {
            let best = secrets
                .iter()
                .filter(|s| text[i..].starts_with(s.as_bytes()))
                .map(String::len)
                .max();
            match best {
                Some(n) => {
                    out.extend_from_slice(REPLACEMENT);
                    i += n;
                }
                None => {
                    out.push(text[i]);
                    i += 1;
                }
            }
        }
        out
    }

    fn text_with_secrets() -> impl Strategy<Value = (Vec<String>, Vec<u8>)> {
        text_with("[a-d]{4,8}")
    }

    /// Secrets from `pattern`, and a text of them and other short pieces.
    fn text_with(pattern: &'static str) -> impl Strategy<Value = (Vec<String>, Vec<u8>)> {
        let secrets = prop::collection::vec(pattern, 1..4);
        secrets.prop_flat_map(|secrets| {
            let pieces = prop::collection::vec(
                prop_oneof![
                    (0..secrets.len()).prop_map({
                        let s = secrets.clone();
                        move |i| s[i].clone().into_bytes()
                    }),
                    "[a-e \n]{0,6}".prop_map(String::into_bytes),
                ],
                0..12,
            );
            (Just(secrets), pieces.prop_map(|p| p.concat()))
        })
    }

    /// Lines, some of them `::add-mask::` commands for secrets used in later lines.
    fn lines_with_commands() -> impl Strategy<Value = Vec<u8>> {
        let line = prop_oneof![
            "[a-d]{4,6}".prop_map(|s| format!("::add-mask::{s}\n")),
            "[a-d :]{0,10}\n?".prop_map(|s| s),
            Just("::add-".to_string()),
        ];
        prop::collection::vec(line, 0..10).prop_map(|l| l.concat().into_bytes())
    }

    /// The commands of `text` applied line by line, for the reference.
    fn reference_with_commands(text: &[u8]) -> Vec<u8> {
        let mut secrets: Vec<String> = Vec::new();
        let mut out = Vec::new();
        for line in text.split_inclusive(|&b| b == b'\n') {
            if let Some(v) = line.strip_prefix(ADD_MASK) {
                let v = String::from_utf8_lossy(v).trim().to_string();
                if v.len() >= MIN_SECRET_LEN && !secrets.contains(&v) {
                    secrets.push(v);
                }
                continue;
            }
            out.extend(reference(&secrets, line));
        }
        out
    }

    proptest! {
        #[test]
        fn add_mask_commands_work_at_every_split(text in lines_with_commands()) {
            let whole = reference_with_commands(&text);
            for cut in 0..=text.len() {
                let (a, b) = text.split_at(cut);
                let reg = Arc::new(MaskRegistry::default());
                prop_assert_eq!(&run(&reg, &[a, b]).0, &whole, "cut at {}", cut);
                let reg = Arc::new(MaskRegistry::default());
                prop_assert_eq!(&run_grouped(&reg, &[a, b], 1).0, &whole, "cut at {}", cut);
                let reg = Arc::new(MaskRegistry::default());
                prop_assert_eq!(&run_sieved(&reg, &[a, b]).0, &whole, "cut at {}", cut);
            }
        }

        /// Chunks longer than the junction searched after a held tail (twice the longest
        /// secret and 64 bytes), so the rest of a chunk is searched where it lies.
        #[test]
        fn long_chunks_after_a_held_tail_give_the_same_output(
            (secrets, text) in text_with("[a-d]{4,11}"),
            commands in lines_with_commands(),
            times in 4usize..12,
        ) {
            let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
            let mut text = [text.as_slice(), b"\n"].concat().repeat(times);
            text.extend_from_slice(&commands);
            text.extend_from_slice(&text.clone());
            let whole = {
                let reg = registry(&refs);
                run_grouped(&reg, &[&text], 1).0
            };
            for cut in (0..text.len()).step_by(5) {
                let (a, b) = text.split_at(cut);
                let reg = registry(&refs);
                prop_assert_eq!(&run(&reg, &[a, b]).0, &whole, "cut at {}", cut);
                let reg = registry(&refs);
                prop_assert_eq!(&run_sieved(&reg, &[a, b]).0, &whole, "cut at {}", cut);
            }
        }

        /// Secrets long enough for the sieve to sample the text (every 4 to 8 bytes).
        #[test]
        fn the_sieve_finds_what_a_search_of_every_byte_finds(
            (secrets, text) in text_with("[a-d]{7,11}"),
            extra in "[a-e \n]{0,40}",
        ) {
            let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
            let reg = registry(&refs);
            let text = [text, extra.into_bytes()].concat();
            let whole = reference(&secrets, &text);
            prop_assert!(Mask::new(reg.clone()).sieve.is_some());
            prop_assert_eq!(&run(&reg, &[&text]).0, &whole);
            for cut in 0..=text.len() {
                let (a, b) = text.split_at(cut);
                prop_assert_eq!(&run(&reg, &[a, b]).0, &whole, "cut at {}", cut);
            }
        }

        #[test]
        fn every_split_gives_the_same_output_and_no_secret_survives(
            (secrets, text) in text_with_secrets()
        ) {
            let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
            let reg = registry(&refs);
            let whole = reference(&secrets, &text);
            prop_assert_eq!(&run(&reg, &[&text]).0, &whole);
            for s in &secrets {
                prop_assert!(
                    !whole.windows(s.len()).any(|w| w == s.as_bytes()),
                    "secret {:?} survives in {:?}", s, String::from_utf8_lossy(&whole)
                );
            }
            for cut in 0..=text.len() {
                let (a, b) = text.split_at(cut);
                prop_assert_eq!(&run(&reg, &[a, b]).0, &whole);
                prop_assert_eq!(&run_grouped(&reg, &[a, b], 1).0, &whole);
                prop_assert_eq!(&run_grouped(&reg, &[a, b], 2).0, &whole);
                prop_assert_eq!(&run_sieved(&reg, &[a, b]).0, &whole);
            }
            for (c1, c2) in [(1, 2), (2, 5), (3, 3)] {
                if c2 <= text.len() && c1 <= c2 {
                    let (a, rest) = text.split_at(c1);
                    let (b, c) = rest.split_at(c2 - c1);
                    prop_assert_eq!(&run(&reg, &[a, b, c]).0, &whole);
                }
            }
        }

        #[test]
        fn random_chunkings_keep_the_text_around_secrets(
            (secrets, text) in text_with_secrets(),
            sizes in prop::collection::vec(1usize..7, 1..40),
        ) {
            let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
            let reg = registry(&refs);
            let whole = reference(&secrets, &text);
            let mut chunks = Vec::new();
            let mut rest: &[u8] = &text;
            let mut i = 0;
            while !rest.is_empty() {
                let n = sizes[i % sizes.len()].min(rest.len());
                let (a, b) = rest.split_at(n);
                chunks.push(a);
                rest = b;
                i += 1;
            }
            prop_assert_eq!(&run(&reg, &chunks).0, &whole);
            let mut expect_plain: Vec<u8> = whole.clone();
            expect_plain.retain(|&b| b != b'*');
            // Non-secret bytes keep their order: the output without masks is a subsequence
            // of the input.
            let mut it = text.iter();
            for b in &expect_plain {
                prop_assert!(it.any(|x| x == b));
            }
        }
    }
}
