//! Property tests of the synchronous bundler [`Core`], plus deterministic scenarios.
//!
//! The core is driven with invented instants (`t0 + k ms`) and a fixed wall clock. A simulated
//! writer appends random chunks of each stream's input, respecting the stream's byte budget
//! (`max_buffered_bytes`, given back through `Cut::released`) the way the async shell does, and
//! cuts bundles at random moments. Every bundle is checked as it is cut; once all the input is
//! in, every stream is closed and the core is flushed until it has nothing left, and then each
//! stream is reassembled and compared with its input.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use logdog_bundler::core::{Config, Core, Cut, Finished, RegisterError, StreamId};
use logdog_proto::bundle::text_lines;
use logdog_proto::{Bundle, Content, Entry, MAX_DATAGRAM_SIZE, StreamType, logpb};
use proptest::prelude::*;
use prost::Message;

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

fn ms(k: u64) -> Duration {
    Duration::from_millis(k)
}

/// A fixed wall clock: 2023-11-14T22:13:20Z.
fn wall() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn uvarint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Frames datagrams as the datagram stream protocol does: uvarint length, then the bytes.
fn frame(datagrams: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for d in datagrams {
        uvarint(d.len() as u64, &mut out);
        out.extend_from_slice(d);
    }
    out
}

fn offset_nanos(d: &prost_types::Duration) -> i128 {
    i128::from(d.seconds) * 1_000_000_000 + i128::from(d.nanos)
}

fn descriptor(name: &str, kind: StreamType, ts: Option<SystemTime>) -> logpb::LogStreamDescriptor {
    logpb::LogStreamDescriptor {
        name: name.into(),
        stream_type: kind as i32,
        content_type: logdog_proto::default_content_type(kind).into(),
        timestamp: ts.map(logdog_bundler::core::timestamp_of),
        ..Default::default()
    }
}

/// What the simulated writer of one stream is doing.
#[derive(Debug)]
struct Sim {
    name: String,
    kind: StreamType,
    id: StreamId,
    /// The stream's bytes (datagrams framed).
    input: Vec<u8>,
    /// The datagrams, for datagram streams.
    datagrams: Vec<Vec<u8>>,
    /// Bytes appended so far.
    pos: usize,
    /// Bytes given back through `Cut::released`.
    released: usize,
    closed: bool,
}

/// One stream's view of everything cut.
#[derive(Debug, Default)]
struct Seen {
    entries: Vec<Entry>,
    /// Terminal indices seen (there must be exactly one).
    terminals: Vec<u64>,
    /// Whether a bundle entry for this stream came after its terminal one.
    after_terminal: bool,
    finished: Vec<Finished>,
}

struct Harness {
    core: Core,
    cfg: Config,
    now: Instant,
    sims: Vec<Sim>,
    by_id: HashMap<StreamId, usize>,
    seen: BTreeMap<String, Seen>,
    bundles: Vec<Bundle>,
    last_prefix_index: Option<u64>,
}

impl Harness {
    fn new(cfg: Config) -> Self {
        let core = Core::new(cfg);
        let cfg = core.config().clone();
        Self {
            core,
            cfg,
            now: Instant::now(),
            sims: Vec::new(),
            by_id: HashMap::new(),
            seen: BTreeMap::new(),
            bundles: Vec::new(),
            last_prefix_index: None,
        }
    }

    fn register(&mut self, name: &str, kind: StreamType, input: Vec<u8>, ts_skew_ms: i64) {
        let ts = if ts_skew_ms >= 0 {
            wall() + ms(ts_skew_ms as u64) + Duration::from_nanos(123)
        } else {
            wall() - ms(ts_skew_ms.unsigned_abs()) - Duration::from_nanos(456)
        };
        let id = self
            .core
            .register(descriptor(name, kind, Some(ts)), self.now, wall())
            .expect("register");
        self.by_id.insert(id, self.sims.len());
        self.seen.insert(name.to_string(), Seen::default());
        self.sims.push(Sim {
            name: name.to_string(),
            kind,
            id,
            input,
            datagrams: Vec::new(),
            pos: 0,
            released: 0,
            closed: false,
        });
    }

    /// Cuts one bundle and checks it on its own. Returns whether the core returned a cut.
    fn cut(&mut self, flush: bool) -> bool {
        let Some(cut) = self.core.next_bundle(self.now, wall(), flush) else {
            // A deadline that has passed while nothing can be cut would make the shell spin.
            if let Some(d) = self.core.next_deadline() {
                assert!(
                    d > self.now,
                    "next_bundle returned None but next_deadline {d:?} is not in the future"
                );
            }
            return false;
        };
        self.check_cut(cut);
        true
    }

    fn check_cut(&mut self, cut: Cut) {
        let Cut {
            bundle,
            released,
            finished,
        } = cut;
        // Releases.
        for (id, n) in &released {
            assert!(*n > 0, "a zero release");
            let i = self.by_id[id];
            self.sims[i].released += n;
            assert!(
                self.sims[i].released <= self.sims[i].pos,
                "{}: released more than appended",
                self.sims[i].name
            );
        }
        // A cut without entries only gives budget back.
        if bundle.entries.is_empty() {
            assert!(!released.is_empty(), "empty cut");
            assert!(
                finished.is_empty(),
                "finished streams without a terminal entry"
            );
            return;
        }
        // Size and encoding.
        let encoded = bundle.encode_to_vec();
        assert_eq!(bundle.encoded_len(), encoded.len(), "encoded_len is exact");
        assert!(
            encoded.len() <= self.cfg.max_bundle_size,
            "bundle of {} bytes exceeds the {}-byte limit",
            encoded.len(),
            self.cfg.max_bundle_size
        );
        assert_eq!(
            encoded,
            bundle.to_logpb().encode_to_vec(),
            "compact encoding equals prost's"
        );
        assert_eq!(bundle.project, self.cfg.project);
        assert_eq!(bundle.prefix, self.cfg.prefix);
        // Entries sorted by name, one per stream, none empty.
        for w in bundle.entries.windows(2) {
            assert!(
                w[0].desc.name() < w[1].desc.name(),
                "bundle entries not sorted by stream name: {:?} then {:?}",
                w[0].desc.name(),
                w[1].desc.name()
            );
        }
        let mut terminal_names = Vec::new();
        let mut min_prefix = u64::MAX;
        let mut max_prefix = 0;
        for be in &bundle.entries {
            assert!(
                !be.logs.is_empty() || be.terminal_index.is_some(),
                "empty bundle entry for {}",
                be.desc.name()
            );
            let seen = self
                .seen
                .get_mut(be.desc.name())
                .expect("entry for an unknown stream");
            if !seen.terminals.is_empty() {
                seen.after_terminal = true;
            }
            for e in &be.logs {
                min_prefix = min_prefix.min(e.prefix_index);
                max_prefix = max_prefix.max(e.prefix_index);
                seen.entries.push(e.clone());
            }
            if let Some(t) = be.terminal_index {
                seen.terminals.push(t);
                terminal_names.push(be.desc.name().to_string());
            }
        }
        // Prefix indices grow from bundle to bundle (they are assigned as entries are cut).
        if min_prefix != u64::MAX {
            if let Some(last) = self.last_prefix_index {
                assert!(min_prefix > last, "prefix_index went back across bundles");
            }
            self.last_prefix_index = Some(max_prefix);
        }
        // Finished streams are exactly the ones with a terminal entry here.
        let mut finished_names: Vec<String> = finished.iter().map(|f| f.name.clone()).collect();
        finished_names.sort();
        assert_eq!(finished_names, terminal_names);
        for f in finished {
            let i = self.by_id[&f.id];
            assert_eq!(f.name, self.sims[i].name);
            self.seen.get_mut(&f.name).unwrap().finished.push(f);
        }
        self.bundles.push(bundle);
    }

    fn outstanding(&self, i: usize) -> usize {
        self.sims[i].pos - self.sims[i].released
    }

    /// Appends up to `n` more bytes of stream `i`, first waiting (by cutting bundles and, when
    /// nothing can be cut, letting time pass to the next deadline) for budget, as a writer
    /// blocked in the shell would.
    fn append(&mut self, i: usize, n: usize) {
        let sim = &self.sims[i];
        let n = n.min(self.cfg.read_size).min(sim.input.len() - sim.pos);
        if n == 0 || sim.closed {
            return;
        }
        let mut guard = 0;
        while self.outstanding(i) + n > self.cfg.max_buffered_bytes {
            guard += 1;
            assert!(guard < 1_000_000, "no progress");
            if !self.cut(false) {
                match self.core.next_deadline() {
                    Some(d) if d > self.now => self.now = d,
                    _ => panic!(
                        "writer deadlock: stream {} needs {n} bytes of budget, {} of {} are \
                         held and the core can cut nothing",
                        self.sims[i].name,
                        self.outstanding(i),
                        self.cfg.max_buffered_bytes
                    ),
                }
            }
        }
        let sim = &mut self.sims[i];
        let data = Bytes::copy_from_slice(&sim.input[sim.pos..sim.pos + n]);
        sim.pos += n;
        let id = sim.id;
        self.core.append(id, data, self.now);
        assert!(self.core.buffered(id) <= self.cfg.max_buffered_bytes);
    }

    /// Appends the rest of stream `i` and closes it.
    fn finish_writer(&mut self, i: usize) {
        while self.sims[i].pos < self.sims[i].input.len() {
            self.append(i, self.cfg.read_size);
        }
        if !self.sims[i].closed {
            self.sims[i].closed = true;
            self.core.close(self.sims[i].id);
        }
    }

    /// Writes everything left, closes every stream and flushes the core dry.
    fn finish(&mut self) {
        for i in 0..self.sims.len() {
            while self.sims[i].pos < self.sims[i].input.len() {
                self.append(i, self.cfg.read_size);
            }
        }
        self.core.close_all();
        for s in &mut self.sims {
            s.closed = true;
        }
        let mut rounds = 0;
        while self.cut(true) {
            rounds += 1;
            assert!(rounds < 1_000_000, "flush does not end");
        }
        assert!(self.core.is_empty(), "streams left after the flush");
        assert!(!self.core.has_pending());
        assert_eq!(self.core.next_deadline(), None);
    }

    /// Checks every stream against its input.
    fn check_streams(&self) {
        let mut prefix_indices = Vec::new();
        for sim in &self.sims {
            let seen = &self.seen[&sim.name];
            let entries = &seen.entries;
            prefix_indices.extend(entries.iter().map(|e| e.prefix_index));
            let name = &sim.name;
            // Indices and times.
            for (k, e) in entries.iter().enumerate() {
                assert_eq!(
                    e.stream_index, k as u64,
                    "{name}: stream_index not contiguous"
                );
                let d = &e.time_offset;
                assert!(d.nanos.abs() < 1_000_000_000, "{name}: nanos out of range");
                assert!(
                    d.seconds == 0 || d.nanos == 0 || (d.seconds < 0) == (d.nanos < 0),
                    "{name}: time_offset signs disagree: {d:?}"
                );
            }
            for w in entries.windows(2) {
                assert!(
                    w[0].prefix_index < w[1].prefix_index,
                    "{name}: prefix_index order"
                );
                assert!(
                    offset_nanos(&w[0].time_offset) <= offset_nanos(&w[1].time_offset),
                    "{name}: time_offset went back"
                );
            }
            // Exactly one terminal entry, last.
            let want_terminal = (entries.len() as u64).checked_sub(1).unwrap_or(u64::MAX);
            assert_eq!(
                seen.terminals,
                vec![want_terminal],
                "{name}: terminal entries"
            );
            assert!(
                !seen.after_terminal,
                "{name}: entries after the terminal one"
            );
            assert_eq!(seen.finished.len(), 1, "{name}: finished reports");
            let f = &seen.finished[0];
            assert_eq!(f.error, None, "{name}: unexpected error");
            assert_eq!(f.stats.bytes_in, sim.input.len() as u64, "{name}: bytes_in");
            assert_eq!(f.stats.dropped_bytes, 0, "{name}: dropped bytes");
            assert_eq!(f.stats.entries, entries.len() as u64, "{name}: entry count");
            let payload: usize = entries.iter().map(|e| e.content.data().len()).sum();
            assert_eq!(f.stats.bytes_out, payload as u64, "{name}: bytes_out");
            // Budget comes back.
            assert_eq!(sim.released, sim.input.len(), "{name}: released total");
            match sim.kind {
                StreamType::Text => check_text(name, &sim.input, entries),
                StreamType::Binary => check_binary(name, &sim.input, entries),
                StreamType::Datagram => {
                    check_datagrams(name, &sim.datagrams, entries);
                    let framing =
                        sim.input.len() - sim.datagrams.iter().map(Vec::len).sum::<usize>();
                    assert_eq!(
                        f.stats.framing_bytes, framing as u64,
                        "{name}: framing bytes"
                    );
                }
            }
        }
        let n = prefix_indices.len();
        prefix_indices.sort_unstable();
        prefix_indices.dedup();
        assert_eq!(prefix_indices.len(), n, "prefix_index not unique");
    }
}

/// `inside[i]`: position `i` falls strictly inside a valid UTF-8 character of `input`.
fn inside_valid_char(input: &[u8]) -> Vec<bool> {
    let mut inside = vec![false; input.len() + 1];
    let mut base = 0;
    for chunk in input.utf8_chunks() {
        for (i, c) in chunk.valid().char_indices() {
            for k in 1..c.len_utf8() {
                inside[base + i + k] = true;
            }
        }
        base += chunk.valid().len() + chunk.invalid().len();
    }
    inside
}

fn check_text(name: &str, input: &[u8], entries: &[Entry]) {
    let inside = inside_valid_char(input);
    let mut pos = 0usize;
    for e in entries {
        let Content::Text(data) = &e.content else {
            panic!("{name}: non-text entry in a text stream");
        };
        assert!(!data.is_empty(), "{name}: empty text entry");
        let complete_lines = memchr::memchr_iter(b'\n', &input[..pos]).count() as u64;
        assert_eq!(
            e.sequence, complete_lines,
            "{name}: text sequence at byte {pos}"
        );
        assert_eq!(
            &input[pos..pos + data.len()],
            &data[..],
            "{name}: text bytes differ at {pos}"
        );
        pos += data.len();
        let partial = data.last() != Some(&b'\n');
        if partial && pos < input.len() {
            assert!(
                !inside[pos],
                "{name}: partial line split inside a UTF-8 character at {pos}"
            );
            assert!(
                !(input[pos - 1] == b'\r' && input[pos] == b'\n'),
                "{name}: partial line split between \\r and \\n at {pos}"
            );
        }
        // Only the last line of an entry may be partial.
        let lines: Vec<_> = text_lines(data).collect();
        for (_, d) in &lines[..lines.len() - 1] {
            assert!(!d.is_empty(), "{name}: partial line inside an entry");
        }
    }
    assert_eq!(pos, input.len(), "{name}: text reassembly length");
}

fn check_binary(name: &str, input: &[u8], entries: &[Entry]) {
    let mut pos = 0usize;
    for e in entries {
        let Content::Binary(data) = &e.content else {
            panic!("{name}: non-binary entry in a binary stream");
        };
        assert!(!data.is_empty(), "{name}: empty binary entry");
        assert_eq!(e.sequence, pos as u64, "{name}: binary sequence");
        assert_eq!(
            &input[pos..pos + data.len()],
            &data[..],
            "{name}: binary bytes"
        );
        pos += data.len();
    }
    assert_eq!(pos, input.len(), "{name}: binary reassembly length");
}

fn check_datagrams(name: &str, want: &[Vec<u8>], entries: &[Entry]) {
    let mut got: Vec<Vec<u8>> = Vec::new();
    // (bytes so far, declared size, next fragment index)
    let mut current: Option<(Vec<u8>, u64, u32)> = None;
    for e in entries {
        let Content::Datagram { data, partial } = &e.content else {
            panic!("{name}: non-datagram entry in a datagram stream");
        };
        assert_eq!(
            e.sequence,
            got.len() as u64,
            "{name}: datagram sequence is the datagram number"
        );
        match partial {
            None => {
                assert!(
                    current.is_none(),
                    "{name}: whole datagram inside a fragmented one"
                );
                got.push(data.to_vec());
            }
            Some(p) => {
                assert!(!data.is_empty(), "{name}: empty fragment");
                let (buf, size, next) = current.get_or_insert_with(|| (Vec::new(), p.size, 0));
                assert_eq!(p.index, *next, "{name}: fragment index");
                assert_eq!(p.size, *size, "{name}: fragment size field");
                buf.extend_from_slice(data);
                *next += 1;
                assert!(
                    buf.len() as u64 <= *size,
                    "{name}: fragments exceed the size"
                );
                if p.last {
                    assert_eq!(buf.len() as u64, *size, "{name}: last fragment too early");
                    got.push(std::mem::take(buf));
                    current = None;
                } else {
                    assert!((buf.len() as u64) < *size, "{name}: `last` missing");
                }
            }
        }
    }
    assert!(current.is_none(), "{name}: unfinished fragmented datagram");
    assert_eq!(got.len(), want.len(), "{name}: datagram count");
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g == w,
            "{name}: datagram {k} differs ({} vs {} bytes)",
            g.len(),
            w.len()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

fn text_piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => "[a-z ]{1,24}".prop_map(String::into_bytes),
        4 => Just(b"\n".to_vec()),
        2 => Just(b"\r\n".to_vec()),
        1 => Just(b"\r".to_vec()),
        1 => Just("é".as_bytes().to_vec()),
        1 => Just("😀".as_bytes().to_vec()),
        1 => Just("€".as_bytes().to_vec()),
        1 => Just(vec![0xFF]),
        1 => Just(vec![0xE2, 0x82]),       // a truncated €
        1 => Just(vec![0xF0, 0x9F, 0x98]), // a truncated 😀
        1 => Just(vec![0x80]),             // a stray continuation byte
        1 => (1usize..4000).prop_map(|n| vec![b'x'; n]),
        1 => (1usize..600).prop_map(|n| "é😀".repeat(n).into_bytes()),
    ]
}

fn text_input() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(text_piece(), 0..48).prop_map(|v| v.concat())
}

fn binary_input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => Just(Vec::new()),
        4 => prop::collection::vec(any::<u8>(), 1..6000),
    ]
}

fn datagram_input() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let size = prop_oneof![
        2 => Just(0usize),
        4 => 1usize..100,
        3 => 100usize..3000,
        2 => 3000usize..20_000,
        1 => 60_000usize..70_000,
    ];
    let datagram = (size, any::<u8>()).prop_map(|(n, seed)| {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect::<Vec<u8>>()
    });
    prop::collection::vec(datagram, 0..10)
}

#[derive(Debug, Clone)]
enum StreamInput {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Datagrams(Vec<Vec<u8>>),
}

fn stream_input() -> impl Strategy<Value = StreamInput> {
    prop_oneof![
        text_input().prop_map(StreamInput::Text),
        binary_input().prop_map(StreamInput::Binary),
        datagram_input().prop_map(StreamInput::Datagrams),
    ]
}

#[derive(Debug, Clone)]
enum Op {
    /// Append to stream `.0 % n` a chunk chosen by `.1`.
    Append(usize, u32),
    /// Advance time by `.1` ms and cut a bundle (`.0`: flush).
    Cut(bool, u64),
    /// Let stream `.0 % n`'s writer finish: append the rest, close.
    Close(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (any::<usize>(), any::<u32>()).prop_map(|(s, n)| Op::Append(s, n)),
        4 => (prop::bool::weighted(0.2), prop_oneof![Just(0u64), 0u64..3000])
            .prop_map(|(f, t)| Op::Cut(f, t)),
        1 => any::<usize>().prop_map(Op::Close),
    ]
}

fn config() -> impl Strategy<Value = Config> {
    (
        prop_oneof![
            3 => 1024usize..4096,
            2 => 4096usize..=65536,
            1 => Just(8usize << 20),
        ],
        prop_oneof![
            1 => 1usize..16,
            3 => 16usize..1024,
            2 => 1024usize..=65536,
        ],
        prop_oneof![Just(0usize), 0usize..64, 0usize..100_000],
        1u64..2000,
    )
        .prop_map(|(max_bundle_size, read_size, extra, age)| Config {
            project: "proj".into(),
            prefix: "some/prefix".into(),
            max_bundle_size,
            max_buffer_age: ms(age),
            max_buffered_bytes: read_size + extra,
            read_size,
            flush_timeout: std::time::Duration::from_secs(60),
        })
}

fn run_case(cfg: Config, inputs: Vec<(StreamInput, i64)>, ops: Vec<Op>) {
    let mut h = Harness::new(cfg);
    for (k, (input, skew)) in inputs.into_iter().enumerate() {
        // Names whose order differs from registration order.
        let name = format!("s{}/{}", (k * 7) % 5, k);
        match input {
            StreamInput::Text(b) => h.register(&name, StreamType::Text, b, skew),
            StreamInput::Binary(b) => h.register(&name, StreamType::Binary, b, skew),
            StreamInput::Datagrams(d) => {
                h.register(&name, StreamType::Datagram, frame(&d), skew);
                h.sims.last_mut().unwrap().datagrams = d;
            }
        }
    }
    let n = h.sims.len();
    for op in ops {
        match op {
            Op::Append(s, len) => {
                let rs = h.cfg.read_size;
                let len = if len.is_multiple_of(4) {
                    rs
                } else {
                    1 + len as usize % rs
                };
                h.append(s % n, len);
            }
            Op::Cut(flush, dt) => {
                h.now += ms(dt);
                h.cut(flush);
            }
            Op::Close(s) => h.finish_writer(s % n),
        }
    }
    h.finish();
    h.check_streams();
}

/// 64 cases, or `PROPTEST_CASES` for a longer hunt.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn core_reassembles_streams_and_keeps_its_rules(
        cfg in config(),
        inputs in prop::collection::vec((stream_input(), -5000i64..5000), 1..5),
        ops in prop::collection::vec(op(), 0..120),
    ) {
        run_case(cfg, inputs, ops);
    }

    /// Text only, small bundles: many partial lines and held-back bytes.
    #[test]
    fn core_text_with_small_bundles(
        input in text_input(),
        chunking in prop::collection::vec(1usize..300, 1..40),
        cuts in prop::collection::vec((prop::bool::weighted(0.3), 0u64..800), 1..40),
        max_bundle_size in 1024usize..2048,
    ) {
        let mut h = Harness::new(Config {
            project: String::new(),
            prefix: "p".into(),
            max_bundle_size,
            max_buffer_age: ms(500),
            max_buffered_bytes: 4096,
            read_size: 300,
            flush_timeout: std::time::Duration::from_secs(60),
        });
        h.register("text", StreamType::Text, input, 0);
        let mut k = 0;
        while h.sims[0].pos < h.sims[0].input.len() {
            h.append(0, chunking[k % chunking.len()]);
            let (flush, dt) = cuts[k % cuts.len()];
            h.now += ms(dt);
            h.cut(flush);
            k += 1;
        }
        h.finish();
        h.check_streams();
    }
}

// ---------------------------------------------------------------------------------------------
// Deterministic scenarios
// ---------------------------------------------------------------------------------------------

fn small_config(max_bundle_size: usize) -> Config {
    Config {
        project: "proj".into(),
        prefix: "pfx".into(),
        max_bundle_size,
        max_buffer_age: Duration::from_secs(5),
        max_buffered_bytes: 5 * 1024 * 1024,
        read_size: 64 * 1024,
        flush_timeout: std::time::Duration::from_secs(60),
    }
}

/// Every `(value, delimiter, entry sequence)` line of the cut entries of one stream.
fn lines_of(bundles: &[Bundle], name: &str) -> Vec<(String, &'static str, u64)> {
    let mut out = Vec::new();
    for b in bundles {
        for be in b.entries.iter().filter(|be| be.desc.name() == name) {
            for e in &be.logs {
                let Content::Text(data) = &e.content else {
                    panic!("not text")
                };
                for (v, d) in text_lines(data) {
                    out.push((String::from_utf8_lossy(v).into_owned(), d, e.sequence));
                }
            }
        }
    }
    out
}

/// LogDog's text example (reference §4.3), `foobar\rbaz\nq\nux` with a 3-byte limit, adapted:
/// the core's smallest bundle holds far more than 3 bytes, so the 3-byte pieces come from
/// 3-byte reads that reach the maximum buffer age instead. The rules shown are LogDog's:
/// partial pieces have an empty delimiter and keep the sequence of the line they belong to, a
/// `\r` at the end of what is buffered is held back in case `\n` follows, and an entry's
/// sequence is the number of complete lines before it.
#[test]
fn logdog_text_example_adapted() {
    let t0 = Instant::now();
    let mut h = Harness::new(Config {
        max_buffer_age: ms(100),
        ..small_config(1024)
    });
    h.now = t0;
    h.register("ex", StreamType::Text, b"foobar\rbaz\nq\nux".to_vec(), 0);
    h.append(0, 3); // "foo"
    assert!(!h.cut(false), "an unfinished line waits for the age");
    h.now = t0 + ms(100);
    assert!(h.cut(false), "at the age: `foo`");
    h.append(0, 4); // "bar\r"
    h.now = t0 + ms(200);
    assert!(h.cut(false), "at the age: `bar`, with `\\r` held back");
    h.append(0, 2); // "ba": the held-back `\r` is still past its age
    assert!(h.cut(false), "`\\rba`");
    h.append(0, 7); // "z\nq\nux"
    assert!(h.cut(false), "complete lines go at once: `z\\n`, `q\\n`");
    assert!(!h.cut(false), "`ux` waits for the age");
    h.finish();
    assert_eq!(
        lines_of(&h.bundles, "ex"),
        [
            ("foo".into(), "", 0),
            ("bar".into(), "", 0),
            ("\rba".into(), "", 0),
            ("z".into(), "\n", 0),
            ("q".into(), "\n", 0),
            ("ux".into(), "", 2),
        ]
    );
    h.check_streams();
}

/// A 5 MiB line without a newline and 4 KiB bundles: it goes out as partial lines, each
/// bundle within its limit, and reassembles exactly.
#[test]
fn five_mib_line_is_split_into_partials() {
    let mut input = Vec::with_capacity(5 << 20);
    for i in 0..(5 << 20) {
        input.push(b'a' + (i % 26) as u8);
    }
    let mut h = Harness::new(small_config(4096));
    h.register("long", StreamType::Text, input, 0);
    h.finish();
    let entries = &h.seen["long"].entries;
    assert!(entries.len() > 1000, "split into {} entries", entries.len());
    for e in entries {
        assert_eq!(e.sequence, 0);
        let Content::Text(data) = &e.content else {
            panic!("not text")
        };
        let lines: Vec<_> = text_lines(data).collect();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].1, "", "a partial line");
    }
    h.check_streams();
}

/// A long line ending with `\r\n`, longer than any bundle, is split but never between the `\r`
/// and the `\n`; the last piece carries the `\r\n` delimiter.
#[test]
fn long_crlf_line_keeps_its_delimiter() {
    let mut input = vec![b'y'; 10_000];
    input.extend_from_slice(b"\r\nnext\n");
    let mut h = Harness::new(small_config(1024));
    h.register("crlf", StreamType::Text, input, 0);
    // Not urgent, but the line can never fit in one bundle, so it is split.
    h.append(0, 1 << 20);
    while h.cut(false) {}
    let lines = lines_of(&h.bundles, "crlf");
    assert!(lines.len() > 5);
    assert_eq!(lines.last().unwrap().0, "next");
    assert_eq!(lines[lines.len() - 2].1, "\r\n");
    h.finish();
    h.check_streams();
}

fn datagram_stream(cfg: Config) -> (Core, StreamId, Instant) {
    let t0 = Instant::now();
    let mut core = Core::new(cfg);
    let id = core
        .register(descriptor("dg", StreamType::Datagram, None), t0, wall())
        .unwrap();
    (core, id, t0)
}

/// Cuts (flushing) until the core has nothing more; returns the cuts.
fn drain(core: &mut Core, now: Instant) -> Vec<Cut> {
    let mut cuts = Vec::new();
    while let Some(c) = core.next_bundle(now, wall(), true) {
        let enc = c.bundle.encode_to_vec();
        assert_eq!(enc.len(), c.bundle.encoded_len());
        assert!(enc.len() <= core.config().max_bundle_size);
        cuts.push(c);
        assert!(cuts.len() < 100_000);
    }
    assert!(core.is_empty(), "core still has streams");
    cuts
}

fn finished_of(cuts: &[Cut]) -> Vec<&Finished> {
    cuts.iter().flat_map(|c| &c.finished).collect()
}

fn terminal_of(cuts: &[Cut]) -> Vec<u64> {
    cuts.iter()
        .flat_map(|c| &c.bundle.entries)
        .filter_map(|e| e.terminal_index)
        .collect()
}

fn released_of(cuts: &[Cut]) -> usize {
    cuts.iter().flat_map(|c| &c.released).map(|(_, n)| n).sum()
}

#[test]
fn oversized_datagram_header_fails_the_stream() {
    let (mut core, id, t0) = datagram_stream(small_config(4096));
    let mut input = frame(&[b"ok".to_vec()]);
    uvarint(MAX_DATAGRAM_SIZE as u64 + 1, &mut input);
    input.extend_from_slice(&[7; 100]);
    core.append(id, Bytes::from(input.clone()), t0);
    // Not even a flush is needed: the bad header ends the stream.
    let cuts = drain_unflushed_then_flushed(&mut core, t0);
    let fin = finished_of(&cuts);
    assert_eq!(fin.len(), 1);
    let err = fin[0].error.as_deref().expect("an error");
    assert!(err.contains("exceeds"), "{err}");
    let header_len = uvarint_len(MAX_DATAGRAM_SIZE as u64 + 1);
    assert_eq!(fin[0].stats.dropped_bytes, (header_len + 100) as u64);
    assert_eq!(fin[0].stats.bytes_out, 2);
    assert_eq!(
        terminal_of(&cuts),
        [0],
        "terminal after the one good datagram"
    );
    assert_eq!(
        released_of(&cuts),
        input.len(),
        "every byte's budget comes back"
    );
    // Later appends are dropped (and released), not buffered.
    assert!(core.is_empty());
}

/// Cuts without flushing while that yields bundles, then flushes dry.
fn drain_unflushed_then_flushed(core: &mut Core, now: Instant) -> Vec<Cut> {
    let mut cuts = Vec::new();
    while let Some(c) = core.next_bundle(now, wall(), false) {
        cuts.push(c);
    }
    cuts.extend(drain(core, now));
    cuts
}

fn uvarint_len(v: u64) -> usize {
    let mut out = Vec::new();
    uvarint(v, &mut out);
    out.len()
}

#[test]
fn oversized_datagram_header_without_prior_data() {
    let (mut core, id, t0) = datagram_stream(small_config(4096));
    let mut input = Vec::new();
    uvarint(u64::MAX, &mut input); // 10 bytes, far above the limit
    core.append(id, Bytes::from(input.clone()), t0);
    let cuts = drain_unflushed_then_flushed(&mut core, t0);
    let fin = finished_of(&cuts);
    assert_eq!(fin.len(), 1);
    assert!(fin[0].error.is_some());
    assert_eq!(fin[0].stats.dropped_bytes, input.len() as u64);
    assert_eq!(terminal_of(&cuts), [u64::MAX]);
    assert_eq!(released_of(&cuts), input.len());
}

#[test]
fn overflowing_varint_header_fails_the_stream() {
    for header in [vec![0xFF; 10], vec![0xFF; 12], {
        let mut v = vec![0xFF; 9];
        v.push(0x02); // the tenth byte may only carry one bit
        v
    }] {
        let (mut core, id, t0) = datagram_stream(small_config(4096));
        let mut input = frame(&[vec![1, 2, 3]]);
        input.extend_from_slice(&header);
        input.extend_from_slice(b"payload");
        core.append(id, Bytes::from(input.clone()), t0);
        let cuts = drain_unflushed_then_flushed(&mut core, t0);
        let fin = finished_of(&cuts);
        assert_eq!(fin.len(), 1);
        let err = fin[0].error.as_deref().expect("an error");
        assert!(err.contains("overflow"), "{err}");
        assert_eq!(fin[0].stats.dropped_bytes, (header.len() + 7) as u64);
        assert_eq!(terminal_of(&cuts), [0]);
        assert_eq!(released_of(&cuts), input.len());
        // The stream is gone: appending to it does nothing.
        core.append(id, Bytes::from_static(b"late"), t0);
        assert!(core.next_bundle(t0, wall(), true).is_none());
    }
}

#[test]
fn stream_ending_inside_a_header_is_an_error() {
    let (mut core, id, t0) = datagram_stream(small_config(4096));
    let mut input = frame(&[b"abc".to_vec()]);
    input.push(0x80); // the first byte of a two-byte header
    core.append(id, Bytes::from(input.clone()), t0);
    // Before the close, the half header just waits (and does not make the shell spin).
    let c = core
        .next_bundle(t0, wall(), false)
        .expect("the first datagram");
    assert_eq!(c.bundle.log_count(), 1);
    assert!(core.next_bundle(t0, wall(), true).is_none());
    assert!(core.next_deadline().is_none_or(|d| d > t0));
    core.close(id);
    let cuts = drain(&mut core, t0);
    let fin = finished_of(&cuts);
    assert_eq!(fin.len(), 1);
    assert!(fin[0].error.as_deref().unwrap().contains("header"));
    assert_eq!(fin[0].stats.dropped_bytes, 1);
    assert_eq!(terminal_of(&cuts), [0]);
    assert_eq!(released_of(&cuts) + c.released[0].1, input.len());
}

#[test]
fn stream_ending_inside_a_datagram_is_an_error() {
    let (mut core, id, t0) = datagram_stream(small_config(4096));
    let mut input = Vec::new();
    uvarint(100, &mut input);
    input.extend_from_slice(&[9; 50]);
    core.append(id, Bytes::from(input.clone()), t0);
    core.close(id);
    let cuts = drain(&mut core, t0);
    let fin = finished_of(&cuts);
    assert_eq!(fin.len(), 1);
    assert!(fin[0].error.is_some());
    assert_eq!(
        fin[0].stats.dropped_bytes, 50,
        "the 50 bytes that arrived are dropped and counted"
    );
    assert_eq!(released_of(&cuts), input.len());
    // Nothing of the torn datagram goes out: no half frame for readers to trip on.
    let logs = cuts
        .iter()
        .flat_map(|c| &c.bundle.entries)
        .flat_map(|e| &e.logs)
        .count();
    assert_eq!(logs, 0);
    assert_eq!(terminal_of(&cuts), [u64::MAX]);
}

#[test]
fn zero_length_and_huge_datagrams() {
    let big = vec![5u8; 3 * 1024 * 1024];
    let datagrams = vec![Vec::new(), big, Vec::new(), b"x".to_vec()];
    let mut h = Harness::new(small_config(64 * 1024));
    h.register("dg", StreamType::Datagram, frame(&datagrams), 0);
    h.sims[0].datagrams = datagrams;
    h.finish();
    h.check_streams();
}

#[test]
fn empty_streams_get_terminal_entries() {
    let mut h = Harness::new(small_config(1024));
    h.register("a", StreamType::Text, Vec::new(), 0);
    h.register("b", StreamType::Binary, Vec::new(), 0);
    h.register("c", StreamType::Datagram, Vec::new(), 0);
    h.finish();
    for name in ["a", "b", "c"] {
        assert_eq!(h.seen[name].terminals, [u64::MAX]);
    }
    h.check_streams();
}

#[test]
fn partial_line_waits_for_the_buffer_age() {
    let t0 = Instant::now();
    let age = ms(2000);
    let mut core = Core::new(Config {
        max_buffer_age: age,
        ..small_config(4096)
    });
    let id = core
        .register(descriptor("t", StreamType::Text, None), t0, wall())
        .unwrap();
    core.append(id, Bytes::from_static(b"done\nunfinished"), t0);
    assert_eq!(core.next_deadline(), Some(t0 + age));
    let c = core
        .next_bundle(t0, wall(), false)
        .expect("the complete line");
    assert_eq!(c.bundle.entries[0].logs[0].content.data(), "done\n");
    assert!(core.next_bundle(t0 + age - ms(1), wall(), false).is_none());
    let c = core
        .next_bundle(t0 + age, wall(), false)
        .expect("the partial line at the age");
    let e = &c.bundle.entries[0].logs[0];
    let lines: Vec<_> = text_lines(e.content.data()).collect();
    assert_eq!(lines, [(&b"unfinished"[..], "")]);
    assert_eq!(e.sequence, 1);
    assert_eq!(c.released, [(id, 10)]);
    assert_eq!(core.buffered(id), 0);
    assert_eq!(core.next_deadline(), None);
}

#[test]
fn full_buffer_emits_partial_lines_at_once() {
    let t0 = Instant::now();
    let mut core = Core::new(Config {
        max_buffer_age: Duration::from_secs(3600),
        max_buffered_bytes: 1000,
        read_size: 100,
        flush_timeout: std::time::Duration::from_secs(60),
        ..small_config(4096)
    });
    let id = core
        .register(descriptor("t", StreamType::Text, None), t0, wall())
        .unwrap();
    core.append(id, Bytes::from(vec![b'z'; 800]), t0);
    assert!(
        core.next_bundle(t0, wall(), false).is_none(),
        "room for another read: waits"
    );
    core.append(id, Bytes::from(vec![b'z'; 150]), t0);
    let c = core
        .next_bundle(t0, wall(), false)
        .expect("a full buffer is flushed without waiting");
    assert_eq!(c.bundle.payload_bytes(), 950);
    assert_eq!(c.released, [(id, 950)]);
}

/// A held-back byte (here an unfinished UTF-8 character) must not leave a writer that needs
/// a whole `read_size` of budget blocked forever when `max_buffered_bytes == read_size`.
#[test]
fn held_back_bytes_do_not_deadlock_a_writer() {
    let mut input = vec![b'q'; 99];
    input.extend_from_slice("€".as_bytes()); // straddles the first 100-byte read
    input.extend_from_slice(&[b'r'; 300]);
    let mut h = Harness::new(Config {
        max_buffered_bytes: 100,
        read_size: 100,
        flush_timeout: std::time::Duration::from_secs(60),
        ..small_config(4096)
    });
    h.register("t", StreamType::Text, input, 0);
    h.finish();
    h.check_streams();
}

#[test]
fn duplicate_names_are_refused_until_finished() {
    let t0 = Instant::now();
    let mut core = Core::new(small_config(4096));
    let d = descriptor("same", StreamType::Text, None);
    let id = core.register(d.clone(), t0, wall()).unwrap();
    assert_eq!(
        core.register(d.clone(), t0, wall()),
        Err(RegisterError::Duplicate("same".into()))
    );
    core.close(id);
    let cuts = drain(&mut core, t0);
    assert_eq!(terminal_of(&cuts), [u64::MAX]);
    assert!(core.register(d, t0, wall()).is_ok());
}

#[test]
fn descriptor_too_large_is_refused() {
    let t0 = Instant::now();
    let mut core = Core::new(small_config(1024));
    let mut d = descriptor("big", StreamType::Text, None);
    d.tags.insert("k".into(), "v".repeat(2000));
    assert!(matches!(
        core.register(d, t0, wall()),
        Err(RegisterError::DescriptorTooLarge { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// As few pieces as possible
// ---------------------------------------------------------------------------------------------

/// How far below the bundle limit a bundle that a piece was cut short by may end: a piece
/// gives back up to 4 bytes so as not to end inside a character or after a `\r`, and length
/// varints make sizes move in steps of a few bytes.
const PIECE_SLACK: usize = 16;

/// Config with a buffer that holds a whole bundle, as the butler sets it up, and a buffer age
/// that never runs out (a piece cut at the age is as large as the bytes that have arrived).
fn whole_bundle_config(max_bundle_size: usize, read_size: usize) -> Config {
    let mut cfg = Config {
        project: "proj".into(),
        prefix: "pfx".into(),
        max_bundle_size,
        max_buffer_age: Duration::from_secs(24 * 3600),
        max_buffered_bytes: 0,
        read_size,
        flush_timeout: Duration::from_secs(60),
    };
    cfg.max_buffered_bytes = cfg.bundle_sized_buffer();
    cfg
}

/// Checks that every piece of a line but the last (an entry ending without `\n`) and every
/// datagram fragment but the last was cut short only because its bundle was full.
fn assert_pieces_fill_their_bundles(h: &Harness) {
    let max = h.cfg.max_bundle_size;
    for b in &h.bundles {
        let len = b.encoded_len();
        for be in &b.entries {
            for e in &be.logs {
                let short = match &e.content {
                    Content::Text(d) => d.last() != Some(&b'\n'),
                    Content::Datagram {
                        partial: Some(p), ..
                    } => !p.last,
                    _ => false,
                };
                assert!(
                    !short || len + PIECE_SLACK > max,
                    "{}: a piece of {} bytes went out in a bundle of {len} bytes (limit {max})",
                    be.desc.name(),
                    e.content.data().len()
                );
            }
        }
    }
}

/// Short complete lines, for streams that share bundles with a long one.
fn short_lines() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec("[a-z]{0,80}\n", 0..40).prop_map(|v| v.concat().into_bytes())
}

/// Lines of which some are longer than several bundles; UTF-8 characters and `\r\n` make the
/// pieces give back a few bytes. Every line is complete.
fn long_lines(max_bundle_size: usize) -> impl Strategy<Value = Vec<u8>> {
    let line = (
        0..max_bundle_size * 4,
        prop::sample::select(vec!["a", "é", "€", "😀", "\r"]),
        prop::bool::ANY,
    )
        .prop_map(|(n, ch, crlf)| {
            let mut v: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
            for k in (0..v.len()).step_by(97) {
                v.splice(k..k, ch.bytes());
            }
            v.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
            v
        });
    prop::collection::vec(line, 1..4).prop_map(|v| v.concat())
}

fn large_datagrams(max_bundle_size: usize) -> impl Strategy<Value = Vec<Vec<u8>>> {
    let d = (0..max_bundle_size * 3, any::<u8>())
        .prop_map(|(n, seed)| (0..n).map(|i| (i as u8).wrapping_add(seed)).collect());
    prop::collection::vec(d, 1..4)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// With a buffer that holds a bundle, a long line or datagram is cut short only by the
    /// bundle size, however the reads arrive, whenever bundles are cut, and whatever other
    /// streams share the bundles.
    #[test]
    fn long_lines_and_datagrams_go_out_in_as_few_pieces_as_possible(
        max_bundle_size in 1024usize..6000,
        read_size in 16usize..2048,
        text in long_lines(4096),
        datagrams in large_datagrams(4096),
        others in prop::collection::vec(short_lines(), 0..3),
        chunks in prop::collection::vec(1usize..4096, 1..30),
        cut_every in 1usize..5,
    ) {
        let mut h = Harness::new(whole_bundle_config(max_bundle_size, read_size));
        let t0 = h.now;
        h.register("long", StreamType::Text, text, 0);
        h.register("dg", StreamType::Datagram, frame(&datagrams), 0);
        h.sims[1].datagrams = datagrams;
        for (k, o) in others.into_iter().enumerate() {
            h.register(&format!("other{k}"), StreamType::Text, o, 0);
        }
        let n = h.sims.len();
        let mut k = 0;
        while h.sims.iter().any(|s| s.pos < s.input.len()) {
            h.append(k % n, chunks[k % chunks.len()]);
            if k % cut_every == 0 {
                h.cut(false);
            }
            k += 1;
        }
        h.finish();
        prop_assert_eq!(h.now, t0, "a writer waited for the buffer age");
        h.check_streams();
        assert_pieces_fill_their_bundles(&h);
    }
}

/// A 9 MiB line and a 9 MiB datagram with 8 MiB bundles, read 64 KiB at a time: two entries
/// each (LogDog's bundler also sends such a line as a bundle-sized piece and the rest).
#[test]
fn nine_mib_line_and_datagram_are_two_entries_each() {
    let mut line: Vec<u8> = (0..9 << 20).map(|i| b'a' + (i % 26) as u8).collect();
    line.push(b'\n');
    let datagram: Vec<u8> = (0..9 << 20).map(|i| (i % 251) as u8).collect();
    let mut h = Harness::new(whole_bundle_config(8 << 20, 64 * 1024));
    let t0 = h.now;
    h.register("line", StreamType::Text, line, 0);
    h.register(
        "dg",
        StreamType::Datagram,
        frame(std::slice::from_ref(&datagram)),
        0,
    );
    h.sims[1].datagrams = vec![datagram];
    while h.sims.iter().any(|s| s.pos < s.input.len()) {
        for i in 0..2 {
            h.append(i, 64 * 1024);
        }
    }
    h.finish();
    assert_eq!(h.now, t0, "a writer waited for the buffer age");
    h.check_streams();
    assert_eq!(h.seen["line"].entries.len(), 2, "entries of the 9 MiB line");
    assert_eq!(
        h.seen["dg"].entries.len(),
        2,
        "fragments of the 9 MiB datagram"
    );
    assert_pieces_fill_their_bundles(&h);
}

/// The same 9 MiB line with the old 5 MiB buffer: the buffer, not the bundle, bounds the
/// pieces, and it still takes only two.
#[test]
fn a_full_buffer_sends_all_it_holds_as_one_piece() {
    let mut line: Vec<u8> = (0..9 << 20).map(|i| b'a' + (i % 26) as u8).collect();
    line.push(b'\n');
    let mut h = Harness::new(Config {
        max_buffer_age: Duration::from_secs(24 * 3600),
        ..small_config(8 << 20)
    });
    h.register("line", StreamType::Text, line, 0);
    h.finish();
    h.check_streams();
    assert_eq!(h.seen["line"].entries.len(), 2, "entries of the 9 MiB line");
}
