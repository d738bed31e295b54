//! Property tests of the datagram framer in the bundler [`Core`]: hostile input.
//!
//! A datagram stream's bytes are frames of a uvarint length and that many bytes. Here the
//! bytes are arbitrary: well-formed frames, then maybe garbage, an overflowing or oversized
//! length header, or a stream that ends inside a header or a body; or just random bytes. They
//! are appended in arbitrary chunks, with bundles cut at arbitrary moments, and every result is
//! checked against a reference parser written here from the protocol's description:
//!
//! - nothing panics, and every bundle stays within the size limit;
//! - every well-formed datagram before the first bad frame is reassembled exactly, in order;
//! - a bad length header ends the stream by itself (without the writer closing it) with an
//!   error, and a stream that ends inside a frame ends with an error; a clean stream has none;
//! - every byte is accounted for: payload out + framing + dropped = bytes in;
//! - the stream's entries are numbered from 0 and end with exactly one terminal entry.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use logdog_bundler::core::{Config, Core, Finished, StreamId};
use logdog_proto::logpb::datagram::Partial;
use logdog_proto::{Content, Entry, MAX_DATAGRAM_SIZE, StreamType, logpb};
use proptest::prelude::*;
use prost::Message;

// ---------------------------------------------------------------------------------------------
// The reference.

/// How a byte string ends, as a sequence of frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// After a whole frame (or with no bytes at all).
    Clean,
    /// At a length header that overflows 64 bits or exceeds [`MAX_DATAGRAM_SIZE`]: the stream
    /// must end there by itself.
    BadHeader,
    /// Inside a length header or a datagram body: the stream can only end when it is closed.
    Torn,
}

/// Splits `input` into datagrams the way the protocol defines them.
fn reference(input: &[u8]) -> (Vec<&[u8]>, End) {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        if pos == input.len() {
            return (out, End::Clean);
        }
        // Unsigned LEB128, at most 10 bytes, the 10th at most 1.
        let mut size: u64 = 0;
        let mut n = 0;
        loop {
            let Some(&b) = input.get(pos + n) else {
                return (out, End::Torn);
            };
            if n == 9 && b > 1 {
                return (out, End::BadHeader);
            }
            size |= u64::from(b & 0x7F) << (7 * n);
            n += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        if size > MAX_DATAGRAM_SIZE as u64 {
            return (out, End::BadHeader);
        }
        let start = pos + n;
        let Some(end) = start
            .checked_add(size as usize)
            .filter(|&e| e <= input.len())
        else {
            return (out, End::Torn);
        };
        out.push(&input[start..end]);
        pos = end;
    }
}

fn uvarint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[test]
fn the_reference_parses_what_it_should() {
    let mut ok = Vec::new();
    for d in [&b""[..], b"a", &[7u8; 300]] {
        uvarint(d.len() as u64, &mut ok);
        ok.extend_from_slice(d);
    }
    let (got, end) = reference(&ok);
    assert_eq!(end, End::Clean);
    assert_eq!(got, [&b""[..], b"a", &[7u8; 300]]);
    assert_eq!(reference(&[0x80]), (vec![], End::Torn));
    assert_eq!(reference(&[5, 1, 2]), (vec![], End::Torn));
    assert_eq!(reference(&[0xFF; 10]), (vec![], End::BadHeader));
    let mut max = Vec::new();
    uvarint(u64::MAX, &mut max);
    assert_eq!(reference(&max), (vec![], End::BadHeader));
    let mut big = Vec::new();
    uvarint(MAX_DATAGRAM_SIZE as u64 + 1, &mut big);
    assert_eq!(reference(&big), (vec![], End::BadHeader));
}

// ---------------------------------------------------------------------------------------------
// Driving the core.

/// A fixed wall clock.
fn wall() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

/// One step of the writer.
#[derive(Debug, Clone)]
enum Op {
    /// Append up to this many more bytes.
    Append(usize),
    /// Cut a bundle (without flushing).
    Cut,
    /// Let this many milliseconds pass.
    Wait(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..700).prop_map(Op::Append),
        3 => Just(Op::Cut),
        1 => (1u64..3000).prop_map(Op::Wait),
    ]
}

/// The single stream under test and everything seen of it.
struct Run<'a> {
    core: Core,
    cfg: Config,
    id: StreamId,
    input: &'a [u8],
    now: Instant,
    /// Bytes appended.
    pos: usize,
    /// Bytes given back through `Cut::released`.
    released: usize,
    /// Bytes appended when the stream finished.
    pos_at_finish: Option<usize>,
    entries: Vec<Entry>,
    terminals: Vec<u64>,
    finished: Vec<Finished>,
}

impl<'a> Run<'a> {
    fn new(cfg: Config, input: &'a [u8]) -> Self {
        let mut core = Core::new(cfg);
        let cfg = core.config().clone();
        let now = Instant::now();
        let desc = logpb::LogStreamDescriptor {
            name: "dgram".into(),
            stream_type: StreamType::Datagram as i32,
            content_type: logdog_proto::default_content_type(StreamType::Datagram).into(),
            ..Default::default()
        };
        let id = core.register(desc, now, wall()).expect("register");
        Self {
            core,
            cfg,
            id,
            input,
            now,
            pos: 0,
            released: 0,
            pos_at_finish: None,
            entries: Vec::new(),
            terminals: Vec::new(),
            finished: Vec::new(),
        }
    }

    fn done(&self) -> bool {
        self.pos_at_finish.is_some()
    }

    /// Cuts one bundle and records it; whether there was one.
    fn cut(&mut self, flush: bool) -> bool {
        let Some(cut) = self.core.next_bundle(self.now, wall(), flush) else {
            if let Some(d) = self.core.next_deadline() {
                assert!(d > self.now, "nothing to cut, yet a deadline has passed");
            }
            return false;
        };
        for (id, n) in &cut.released {
            assert_eq!(*id, self.id);
            self.released += n;
            assert!(self.released <= self.pos, "released more than appended");
        }
        let encoded = cut.bundle.encode_to_vec();
        assert!(
            encoded.len() <= self.cfg.max_bundle_size,
            "bundle of {} bytes over the {}-byte limit",
            encoded.len(),
            self.cfg.max_bundle_size
        );
        assert_eq!(encoded, cut.bundle.to_logpb().encode_to_vec());
        for be in cut.bundle.entries {
            assert!(self.terminals.is_empty(), "entries after the terminal one");
            self.entries.extend(be.logs);
            self.terminals.extend(be.terminal_index);
        }
        if !cut.finished.is_empty() {
            assert!(!self.done(), "finished twice");
            self.pos_at_finish = Some(self.pos);
            self.finished.extend(cut.finished);
        }
        true
    }

    /// Appends up to `n` bytes, first waiting for budget as the shell's reader would.
    fn append(&mut self, n: usize) {
        let n = n.min(self.cfg.read_size).min(self.input.len() - self.pos);
        let mut guard = 0;
        while n > 0 && !self.done() && self.pos - self.released + n > self.cfg.max_buffered_bytes {
            guard += 1;
            assert!(guard < 100_000, "no progress");
            if !self.cut(false) {
                match self.core.next_deadline() {
                    Some(d) => self.now = d,
                    None => panic!(
                        "writer deadlock: {} bytes held, the core cuts nothing and sets no deadline",
                        self.pos - self.released
                    ),
                }
            }
        }
        // A finished stream is gone; its writer would see the connection closed.
        if n == 0 || self.done() {
            return;
        }
        let data = Bytes::copy_from_slice(&self.input[self.pos..self.pos + n]);
        self.pos += n;
        self.core.append(self.id, data, self.now);
    }

    fn flush(&mut self) {
        let mut rounds = 0;
        while self.cut(true) {
            rounds += 1;
            assert!(rounds < 100_000, "flush does not end");
        }
    }
}

/// Whole datagrams from entries, and whether a fragmented one was left unfinished.
fn reassemble(entries: &[Entry]) -> (Vec<Vec<u8>>, bool) {
    let mut out = Vec::new();
    let mut current: Option<(Vec<u8>, Partial)> = None;
    for e in entries {
        let Content::Datagram { data, partial } = &e.content else {
            panic!("a non-datagram entry in a datagram stream");
        };
        assert_eq!(
            e.sequence,
            out.len() as u64,
            "sequence is the datagram number"
        );
        match partial {
            None => {
                assert!(
                    current.is_none(),
                    "a whole datagram inside a fragmented one"
                );
                out.push(data.to_vec());
            }
            Some(p) => {
                let (mut buf, prev) = current.take().unwrap_or_default();
                if p.index == 0 {
                    assert!(buf.is_empty(), "fragment 0 twice");
                } else {
                    assert_eq!(p.index, prev.index + 1, "fragment order");
                    assert_eq!(p.size, prev.size, "fragment sizes disagree");
                }
                buf.extend_from_slice(data);
                assert!(
                    buf.len() as u64 <= p.size,
                    "fragments exceed the datagram size"
                );
                if p.last {
                    assert_eq!(buf.len() as u64, p.size, "last fragment short");
                    out.push(buf);
                } else {
                    current = Some((buf, *p));
                }
            }
        }
    }
    (out, current.is_some())
}

fn config() -> impl Strategy<Value = Config> {
    (1024usize..6000, 1usize..600, 0usize..4000, 50u64..2000).prop_map(
        |(bundle, read, buffered, age_ms)| Config {
            project: "p".into(),
            prefix: "x".into(),
            max_bundle_size: bundle,
            max_buffer_age: Duration::from_millis(age_ms),
            max_buffered_bytes: buffered,
            read_size: read,
            flush_timeout: Duration::from_secs(1),
        },
    )
}

/// Well-formed frames of 0..3000 bytes each.
fn frames() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        (0usize..3000, any::<u8>()).prop_map(|(n, seed)| {
            (0..n)
                .map(|i| seed.wrapping_add((i * 31 % 251) as u8))
                .collect::<Vec<u8>>()
        }),
        0..6,
    )
    .prop_map(|ds| {
        let mut out = Vec::new();
        for d in ds {
            uvarint(d.len() as u64, &mut out);
            out.extend_from_slice(&d);
        }
        out
    })
}

/// What follows the well-formed frames.
fn tail() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        prop::collection::vec(any::<u8>(), 1..64),
        // Overflowing headers: ten or more continuation bytes, or a 10th byte over 1.
        (10usize..14).prop_map(|n| vec![0xFF; n]),
        (2u8..=0x7F).prop_map(|last| [vec![0x80; 9], vec![last]].concat()),
        // Lengths over the limit, from just over to the largest uvarint.
        (MAX_DATAGRAM_SIZE as u64 + 1..=u64::MAX).prop_map(|n| {
            let mut v = Vec::new();
            uvarint(n, &mut v);
            v
        }),
        // Ends inside a header.
        (1usize..10).prop_map(|n| vec![0x80; n]),
        // Ends inside a body (possibly one larger than a bundle).
        (1u64..20_000, 0usize..50).prop_map(|(n, have)| {
            let mut v = Vec::new();
            uvarint(n, &mut v);
            v.extend(std::iter::repeat_n(0xAB, have.min(n as usize - 1)));
            v
        }),
    ]
}

fn input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => (frames(), tail()).prop_map(|(f, t)| [f, t].concat()),
        1 => prop::collection::vec(any::<u8>(), 0..2000),
        // Random bytes with small lengths in front, so that a few frames parse.
        1 => prop::collection::vec(prop_oneof![0u8..8, any::<u8>()], 0..200),
    ]
}

fn run_case(cfg: Config, input: &[u8], ops: &[Op]) {
    let (want, end) = reference(input);
    let mut run = Run::new(cfg, input);
    for op in ops {
        match op {
            Op::Append(n) => run.append(*n),
            Op::Cut => {
                run.cut(false);
            }
            Op::Wait(ms) => run.now += Duration::from_millis(*ms),
        }
    }
    while run.pos < input.len() && !run.done() {
        run.append(run.cfg.read_size);
    }
    // Everything is in, the writer still connected: a bad header has ended the stream by
    // now; anything else waits for the writer.
    run.flush();
    match end {
        End::BadHeader => assert!(run.done(), "a bad length header did not end the stream"),
        End::Clean | End::Torn => assert!(!run.done(), "the stream ended before its writer"),
    }
    run.core.close(run.id);
    run.flush();
    assert!(run.core.is_empty(), "the stream did not finish");
    assert!(!run.core.has_pending());

    // Indices and the terminal entry.
    for (k, e) in run.entries.iter().enumerate() {
        assert_eq!(e.stream_index, k as u64, "stream_index not contiguous");
    }
    let last = (run.entries.len() as u64)
        .checked_sub(1)
        .unwrap_or(u64::MAX);
    assert_eq!(run.terminals, [last], "terminal entries");

    // The datagrams.
    let (got, torn) = reassemble(&run.entries);
    let want: Vec<Vec<u8>> = want.into_iter().map(<[u8]>::to_vec).collect();
    assert!(
        got == want,
        "datagrams differ: got {} ({:?} bytes), want {} ({:?} bytes)",
        got.len(),
        got.iter().map(Vec::len).collect::<Vec<_>>(),
        want.len(),
        want.iter().map(Vec::len).collect::<Vec<_>>()
    );
    assert!(
        !torn || end != End::Clean,
        "an unfinished datagram in a clean stream"
    );

    // The report.
    let [f] = run.finished.as_slice() else {
        panic!("{} finished reports", run.finished.len());
    };
    let s = f.stats;
    let appended = run.pos_at_finish.unwrap_or(run.pos) as u64;
    assert_eq!(s.bytes_in, appended, "bytes_in");
    assert_eq!(s.entries, run.entries.len() as u64, "entries");
    let payload: u64 = run
        .entries
        .iter()
        .map(|e| e.content.data().len() as u64)
        .sum();
    assert_eq!(s.bytes_out, payload, "bytes_out");
    assert_eq!(
        s.bytes_out + s.framing_bytes + s.dropped_bytes,
        s.bytes_in,
        "bytes unaccounted for: {s:?}"
    );
    assert_eq!(run.released as u64, s.bytes_in, "budget not all given back");
    if end == End::Clean {
        assert_eq!(f.error, None);
        assert_eq!(s.dropped_bytes, 0);
    } else {
        assert!(f.error.is_some(), "{end:?} but no error");
    }
}

// 256 cases (proptest's default), or `PROPTEST_CASES` for a longer hunt.
proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn hostile_datagram_streams_are_framed_exactly_or_failed_cleanly(
        cfg in config(),
        input in input(),
        ops in prop::collection::vec(op(), 0..60),
    ) {
        run_case(cfg, &input, &ops);
    }
}

#[test]
fn a_stream_torn_after_fragments_went_out_counts_only_bytes_it_had() {
    // A datagram larger than a bundle goes out in fragments as it arrives; the stream then
    // ends 1000 bytes short of it.
    let mut input = Vec::new();
    uvarint(5000, &mut input);
    input.extend(vec![1u8; 4000]);
    let cfg = Config {
        max_bundle_size: 1024,
        read_size: 512,
        max_buffered_bytes: 2048,
        ..Config::default()
    };
    run_case(cfg, &input, &[]);
}

#[test]
fn each_kind_of_end_agrees_with_the_reference() {
    let mut oversized = vec![1, b'x'];
    uvarint(MAX_DATAGRAM_SIZE as u64 + 1, &mut oversized);
    oversized.extend_from_slice(b"never framed");
    for input in [
        vec![3, b'a', b'b', b'c', 0],
        vec![0xFF; 11],
        oversized,
        vec![1, b'x', 0x80, 0x80],
        vec![1, b'x', 9, 1, 2],
    ] {
        run_case(Config::default(), &input, &[Op::Append(1), Op::Cut]);
    }
}
