//! Property tests of [`read_handshake`], fed from byte slices in a current-thread runtime.
//!
//! - Arbitrary bytes, bytes behind a valid magic, and near-JSON headers never make it panic,
//!   and every refusal has one of the documented kinds.
//! - Random valid handshakes, built by hand from the reference (§1.2, §2) with random names,
//!   tags, types, timestamps, key case, key order, escapes and whitespace, decode to the right
//!   descriptor and leave the payload after the frame unread.
//! - Names from a wider alphabet are accepted exactly when the reference's rules say so.
//! - A connection that delivers its bytes in arbitrary pieces (with reads that are not ready
//!   in between) reads exactly as one that delivers them at once, for valid handshakes and
//!   garbage alike.
//! - What the crate's own encoder writes (as LogDog's Go client does) reads back as the same
//!   descriptor.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use logdog_proto::handshake::encode_handshake;
use logdog_proto::logpb::LogStreamDescriptor;
use logdog_streamserver::read_handshake;
use proptest::prelude::*;
use tokio::io::{AsyncRead, ReadBuf};

/// ASCII `BTLR1` followed by the record separator 0x1E.
const MAGIC: [u8; 6] = [0x42, 0x54, 0x4C, 0x52, 0x31, 0x1E];
const ONE_MIB: u64 = 1_048_576;

/// Kinds a refusal may have when reading from memory (no I/O errors, no timeout).
const KINDS: [&str; 5] = [
    "truncated",
    "bad_magic",
    "header_too_large",
    "bad_header",
    "invalid_name_or_tag",
];

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
}

fn block_on<F: Future>(f: F) -> F::Output {
    RUNTIME.with(|rt| rt.block_on(f))
}

/// Runs `read_handshake` over `input`; returns the result and the bytes it left unread.
fn read(input: &[u8]) -> (Result<LogStreamDescriptor, &'static str>, &[u8]) {
    let mut rest = input;
    let res = block_on(read_handshake(&mut rest));
    (res.map_err(|e| e.kind()), rest)
}

fn uvarint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let low = (v & 0x7F) as u8;
        v >>= 7;
        if v == 0 {
            out.push(low);
            return out;
        }
        out.push(low | 0x80);
    }
}

fn frame(header: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend(uvarint(header.len() as u64));
    out.extend_from_slice(header);
    out
}

/// A JSON string literal. `escape_all` writes every character as `\uXXXX` (surrogate pairs
/// above the BMP); otherwise only what JSON requires is escaped.
fn json_string(s: &str, escape_all: bool) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            _ if escape_all => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    write!(out, "\\u{u:04X}").unwrap();
                }
            }
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => write!(out, "\\u{:04x}", c as u32).unwrap(),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Tiny deterministic generator for shuffles and whitespace choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn whitespace(&mut self) -> &'static str {
        ["", "", "", " ", "\t", "\n", "\r\n", "  "][self.below(8)]
    }
}

/// Proleptic Gregorian date of a day count from 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// An RFC 3339 timestamp for `utc_seconds` + `nanos`, written in the zone `offset_minutes`
/// with `digits` fractional digits (the fraction must fit in them).
fn rfc3339(utc_seconds: i64, nanos: u32, digits: u32, offset_minutes: i64, z: bool) -> String {
    let local = utc_seconds + offset_minutes * 60;
    let (year, month, day) = civil_from_days(local.div_euclid(86_400));
    let secs = local.rem_euclid(86_400);
    let mut s = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    if digits > 0 {
        let frac = nanos / 10u32.pow(9 - digits);
        write!(s, ".{frac:0width$}", width = digits as usize).unwrap();
    }
    if offset_minutes == 0 && z {
        s.push('Z');
    } else {
        let sign = if offset_minutes < 0 { '-' } else { '+' };
        let m = offset_minutes.abs();
        write!(s, "{sign}{:02}:{:02}", m / 60, m % 60).unwrap();
    }
    s
}

#[test]
fn hand_written_dates_are_right() {
    assert_eq!(civil_from_days(0), (1970, 1, 1));
    assert_eq!(
        rfc3339(1_714_979_289, 0, 0, 0, true),
        "2024-05-06T07:08:09Z"
    );
    assert_eq!(
        rfc3339(1_640_993_400, 120_000_000, 3, 60, false),
        "2022-01-01T00:30:00.120+01:00"
    );
    assert_eq!(
        rfc3339(-62_135_596_800, 0, 0, 0, true),
        "0001-01-01T00:00:00Z"
    );
    assert_eq!(
        rfc3339(253_402_300_799, 999_999_999, 9, -90, false),
        "9999-12-31T22:29:59.999999999-01:30"
    );
}

/// The reference's StreamName rule (§2.1), written independently of the crate.
fn valid_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name.split('/').all(|seg| {
            let mut chars = seg.chars();
            chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
                && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-' | '.'))
        })
}

fn segment() -> impl Strategy<Value = String> {
    "[A-Za-z0-9][A-Za-z0-9:_.-]{0,8}"
}

/// A valid stream name: 1 to 4 segments.
fn name() -> impl Strategy<Value = String> {
    prop::collection::vec(segment(), 1..5).prop_map(|segs| segs.join("/"))
}

/// A valid tag key: a stream name of at most 64 bytes.
fn tag_key() -> impl Strategy<Value = String> {
    prop::collection::vec(segment(), 1..4).prop_map(|segs| segs.join("/"))
}

fn any_string(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..max).prop_map(String::from_iter)
}

/// A timestamp: UTC seconds (years 1 to 9999, away from Go's zero time), nanoseconds, how
/// many fractional digits to write, a zone offset in minutes, and `Z` or `+00:00` for UTC.
fn timestamp() -> impl Strategy<Value = (i64, u32, u32, i64, bool)> {
    (
        -62_135_596_800i64 + 2 * 86_400..253_402_300_799 - 2 * 86_400,
        0u32..1_000_000_000,
        0u32..=9,
        prop_oneof![Just(0i64), -14 * 60i64..=14 * 60],
        any::<bool>(),
    )
}

#[derive(Debug, Clone)]
struct Spec {
    name: String,
    kind: Option<&'static str>,
    content_type: Option<String>,
    timestamp: Option<(i64, u32, u32, i64, bool)>,
    tags: Option<BTreeMap<String, String>>,
    unknown: Vec<(&'static str, &'static str)>,
    key_case: Vec<bool>,
    escape_all: bool,
    seed: u64,
    payload: Vec<u8>,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        name(),
        prop::option::of(prop_oneof![Just("text"), Just("binary"), Just("datagram")]),
        prop::option::of(any_string(24)),
        prop::option::of(timestamp()),
        prop::option::of(prop::collection::btree_map(tag_key(), any_string(16), 0..4)),
        prop::sample::subsequence(
            vec![
                ("ioKeepAlive", "true"),
                ("tee", "\"stdout\""),
                ("timeout", "\"10s\""),
                ("binaryFileExtension", "\"txt\""),
                ("future", "{\"a\":[1,2.5,null,{\"b\":false}]}"),
            ],
            0..=5,
        ),
        prop::collection::vec(any::<bool>(), 24),
        any::<bool>(),
        any::<u64>(),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(
            |(
                name,
                kind,
                content_type,
                timestamp,
                tags,
                unknown,
                key_case,
                escape_all,
                seed,
                payload,
            )| Spec {
                name,
                kind,
                content_type,
                timestamp,
                tags,
                unknown,
                key_case,
                escape_all,
                seed,
                payload,
            },
        )
}

impl Spec {
    /// The key in a random case.
    fn key(&self, key: &str) -> String {
        let cased: String = key
            .chars()
            .zip(self.key_case.iter().cycle())
            .map(|(c, &up)| {
                if up {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect();
        json_string(&cased, false)
    }

    fn header(&self) -> String {
        let esc = |s: &str| json_string(s, self.escape_all);
        let mut fields = vec![(self.key("name"), esc(&self.name))];
        if let Some(kind) = self.kind {
            fields.push((self.key("type"), esc(kind)));
        }
        if let Some(ct) = &self.content_type {
            fields.push((self.key("contentType"), esc(ct)));
        }
        if let Some((secs, nanos, digits, offset, z)) = self.timestamp {
            fields.push((
                self.key("timestamp"),
                esc(&rfc3339(secs, nanos, digits, offset, z)),
            ));
        }
        if let Some(tags) = &self.tags {
            let body: Vec<String> = tags
                .iter()
                .map(|(k, v)| format!("{}:{}", esc(k), esc(v)))
                .collect();
            fields.push((self.key("tags"), format!("{{{}}}", body.join(","))));
        }
        for (k, v) in &self.unknown {
            fields.push((json_string(k, false), v.to_string()));
        }

        let mut rng = Rng(self.seed | 1);
        for i in (1..fields.len()).rev() {
            fields.swap(i, rng.below(i + 1));
        }
        let mut json = String::new();
        json.push_str(rng.whitespace());
        json.push('{');
        for (i, (k, v)) in fields.iter().enumerate() {
            if i > 0 {
                json.push(',');
            }
            for part in [
                rng.whitespace(),
                k,
                rng.whitespace(),
                ":",
                rng.whitespace(),
                v,
            ] {
                json.push_str(part);
            }
            json.push_str(rng.whitespace());
        }
        json.push('}');
        json.push_str(rng.whitespace());
        json
    }

    fn expected(&self) -> LogStreamDescriptor {
        let (stream_type, default_ct) = match self.kind {
            None | Some("text") => (0, "text/plain; charset=utf-8"),
            Some("binary") => (1, "application/octet-stream"),
            Some(_) => (2, "application/x-logdog-datagram"),
        };
        LogStreamDescriptor {
            prefix: String::new(),
            name: self.name.clone(),
            stream_type,
            content_type: match &self.content_type {
                Some(ct) if !ct.is_empty() => ct.clone(),
                _ => default_ct.to_string(),
            },
            timestamp: self.timestamp.map(|(seconds, nanos, digits, _, _)| {
                let unit = 10u32.pow(9 - digits);
                prost_types::Timestamp {
                    seconds,
                    nanos: (nanos / unit * unit) as i32,
                }
            }),
            tags: self.tags.clone().unwrap_or_default(),
            ..Default::default()
        }
    }
}

/// A connection that hands out its bytes in the given piece sizes (cycled), and is not ready
/// every other time it is polled, the way a socket fed by a slow client behaves.
struct Trickle<'a> {
    data: &'a [u8],
    sizes: &'a [usize],
    reads: usize,
    ready: bool,
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.ready {
            self.ready = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.ready = false;
        let size = self.sizes[self.reads % self.sizes.len()];
        self.reads += 1;
        let n = size.min(self.data.len()).min(buf.remaining());
        let (now, rest) = self.data.split_at(n);
        buf.put_slice(now);
        self.data = rest;
        Poll::Ready(Ok(()))
    }
}

/// Like [`read`], through a [`Trickle`] of `sizes`.
fn read_trickled<'a>(
    input: &'a [u8],
    sizes: &'a [usize],
) -> (Result<LogStreamDescriptor, &'static str>, &'a [u8]) {
    let mut conn = Trickle {
        data: input,
        sizes,
        reads: 0,
        ready: false,
    };
    let res = block_on(read_handshake(&mut conn));
    (res.map_err(|e| e.kind()), conn.data)
}

/// Piece sizes for [`Trickle`]: mostly tiny, sometimes large.
fn pieces() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(prop_oneof![4 => 1usize..4, 1 => 1usize..200], 1..16)
}

/// A descriptor as a butler would hand to the encoder: valid name and tags, any content type
/// (empty means the type's default), a timestamp in years 1 to 9999 or none.
fn descriptor() -> impl Strategy<Value = LogStreamDescriptor> {
    (
        name(),
        0i32..3,
        any_string(24),
        prop::option::of((-62_135_596_800i64 + 1..253_402_300_799, 0i32..1_000_000_000)),
        prop::collection::btree_map(tag_key(), any_string(16), 0..4),
    )
        .prop_map(|(name, stream_type, content_type, ts, tags)| {
            let content_type = if content_type.is_empty() {
                [
                    "text/plain; charset=utf-8",
                    "application/octet-stream",
                    "application/x-logdog-datagram",
                ][stream_type as usize]
                    .to_string()
            } else {
                content_type
            };
            LogStreamDescriptor {
                name,
                stream_type,
                content_type,
                timestamp: ts.map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
                tags,
                ..Default::default()
            }
        })
}

/// Headers that are JSON or nearly so: random keys (known ones in several cases, and others),
/// values of every JSON type, strings that look like names, types or timestamps, missing
/// commas, trailing commas. About half start with a plausible name, so many are accepted.
fn near_json() -> impl Strategy<Value = String> {
    const VALUE: &str = concat!(
        r#"("[a-zA-Z0-9/_:. +-]{0,12}"|"(text|binary|datagram|TEXT)"|-?[0-9]{1,3}|null|true"#,
        r#"|\{\}|\{"[a-z_ ]{0,4}":"[a-z]{0,3}"\}|\[\]"#,
        r#"|"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,10})?(Z|[+-][0-9]{2}:[0-9]{2})?")"#,
    );
    const KEY: &str = r#""(name|NAME|type|Type|contentType|CONTENTTYPE|timestamp|tags|x)""#;
    let field = format!("[ ]?{KEY}[ ]?:[ ]?{VALUE}[ ]?");
    let anything = format!(r#"[ ]?\{{({field},?){{0,6}}\}}[ ]?"#);
    let named = format!(
        r#"[ ]?\{{[ ]?"[Nn]ame"[ ]?:[ ]?"[a-zA-Z0-9][a-zA-Z0-9/_:.-]{{0,10}}"(,{field}){{0,4}}\}}[ ]?"#
    );
    prop_oneof![
        proptest::string::string_regex(&anything).expect("regex"),
        proptest::string::string_regex(&named).expect("regex"),
    ]
}

// 256 cases (proptest's default), or `PROPTEST_CASES` for a longer hunt.
proptest! {
    // Integration tests have no lib.rs next to them, so failures cannot be persisted there;
    // proptest prints the minimal failing input instead.
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_never_panic(input in prop::collection::vec(any::<u8>(), 0..1024)) {
        let (res, _) = read(&input);
        if let Err(kind) = res {
            prop_assert!(KINDS.contains(&kind), "unexpected kind {kind}");
        }
        if input.len() < 6 {
            prop_assert_eq!(res, Err("truncated"));
        } else if input[..6] != MAGIC {
            prop_assert_eq!(res, Err("bad_magic"));
        }
    }

    #[test]
    fn bytes_after_the_magic_never_panic(rest in prop::collection::vec(any::<u8>(), 0..1024)) {
        let input = [&MAGIC[..], &rest].concat();
        let (res, _) = read(&input);
        if let Err(kind) = res {
            prop_assert!(KINDS.contains(&kind), "unexpected kind {kind}");
        }
    }

    #[test]
    fn arbitrary_frames_never_panic(
        body in prop::collection::vec(any::<u8>(), 0..512),
        shortfall in 0usize..4,
        extra in 0u64..4,
    ) {
        // Declare the body's length, plus `extra` bytes that never come, and supply all but
        // `shortfall` bytes of it.
        let mut input = MAGIC.to_vec();
        input.extend(uvarint(body.len() as u64 + extra));
        input.extend_from_slice(&body[..body.len().saturating_sub(shortfall)]);
        let (res, _) = read(&input);
        if extra > 0 || (shortfall > 0 && !body.is_empty()) {
            prop_assert_eq!(res, Err("truncated"));
        } else if let Err(kind) = res {
            prop_assert!(KINDS.contains(&kind), "unexpected kind {kind}");
        }
    }

    #[test]
    fn near_json_headers_never_panic(
        json in near_json(),
        payload in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        let mut input = frame(json.as_bytes());
        input.extend_from_slice(&payload);
        let (res, rest) = read(&input);
        match res {
            Ok(desc) => {
                prop_assert!(valid_name(&desc.name, 4096), "accepted name {:?}", desc.name);
                prop_assert_eq!(rest, &payload[..]);
            }
            Err(kind) => prop_assert!(KINDS.contains(&kind), "unexpected kind {kind}"),
        }
    }

    #[test]
    fn oversized_declared_lengths_are_refused_from_the_length_alone(len in ONE_MIB + 1..=u64::MAX) {
        // No header bytes at all follow: the refusal cannot depend on them.
        let mut input = MAGIC.to_vec();
        input.extend(uvarint(len));
        let (res, rest) = read(&input);
        prop_assert_eq!(res, Err("header_too_large"));
        prop_assert!(rest.is_empty());
    }

    #[test]
    fn valid_handshakes_round_trip(spec in spec()) {
        let json = spec.header();
        let mut input = frame(json.as_bytes());
        input.extend_from_slice(&spec.payload);
        let (res, rest) = read(&input);
        prop_assert_eq!(res, Ok(spec.expected()), "header {}", json);
        // The handshake never consumes payload bytes.
        prop_assert_eq!(rest, &spec.payload[..]);
    }

    #[test]
    fn names_are_accepted_exactly_when_the_rules_allow(
        chars in prop::collection::vec(
            prop::sample::select(vec!['a', 'Z', '0', '9', ':', '_', '-', '.', '/', '+', '^', ' ', '\u{e9}', '\u{212a}']),
            0..12,
        ),
        escape_all in any::<bool>(),
    ) {
        let name = String::from_iter(chars);
        let json = format!("{{\"name\":{}}}", json_string(&name, escape_all));
        let (res, _) = read(&frame(json.as_bytes()));
        if valid_name(&name, 4096) {
            prop_assert_eq!(res.map(|d| d.name), Ok(name));
        } else {
            prop_assert_eq!(res, Err("invalid_name_or_tag"), "name {:?}", name);
        }
    }

    #[test]
    fn tag_keys_are_accepted_exactly_when_the_rules_allow(
        key in "[a_/.:+ -]{0,3}[a-zA-Z0-9/_]{0,70}",
        value in any_string(8),
    ) {
        let json = format!(
            "{{\"name\":\"n\",\"tags\":{{{}:{}}}}}",
            json_string(&key, false),
            json_string(&value, false)
        );
        let (res, _) = read(&frame(json.as_bytes()));
        if valid_name(&key, 64) {
            prop_assert_eq!(res.map(|d| d.tags), Ok(BTreeMap::from([(key, value)])));
        } else {
            prop_assert_eq!(res, Err("invalid_name_or_tag"), "key {:?}", key);
        }
    }

    #[test]
    fn valid_handshakes_read_the_same_in_any_pieces(spec in spec(), sizes in pieces()) {
        let mut input = frame(spec.header().as_bytes());
        input.extend_from_slice(&spec.payload);
        let (res, rest) = read_trickled(&input, &sizes);
        prop_assert_eq!(res, Ok(spec.expected()));
        prop_assert_eq!(rest, &spec.payload[..]);
    }

    #[test]
    fn garbage_reads_the_same_in_any_pieces(
        rest in prop::collection::vec(any::<u8>(), 0..512),
        behind_magic in any::<bool>(),
        sizes in pieces(),
    ) {
        let input = if behind_magic { [&MAGIC[..], &rest].concat() } else { rest };
        let (whole, whole_rest) = read(&input);
        let (trickled, trickled_rest) = read_trickled(&input, &sizes);
        prop_assert_eq!(trickled, whole);
        prop_assert_eq!(trickled_rest, whole_rest);
    }

    #[test]
    fn the_encoder_round_trips(desc in descriptor(), payload in prop::collection::vec(any::<u8>(), 0..32)) {
        let mut input = encode_handshake(&desc);
        input.extend_from_slice(&payload);
        let (res, rest) = read(&input);
        prop_assert_eq!(res, Ok(desc));
        prop_assert_eq!(rest, &payload[..]);
    }
}
