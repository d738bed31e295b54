//! Property tests of the collector's bundle validation ([`validate::bundle`]): hostile input.
//!
//! - Arbitrary bytes, and valid bundles with bytes flipped, inserted, deleted, repeated or cut
//!   off, never make decoding or validation panic.
//! - Whatever validation accepts satisfies the invariants the store and the readers rely on
//!   (checked here independently of the crate): valid project, prefix, names, tags and
//!   descriptors; contiguous, in-range indices no later than the terminal index; and log
//!   entries that decode as `logpb.LogEntry` (the read path decodes every stored entry, so one
//!   that does not would make its whole stream unreadable) with content of the stream's type
//!   and the payload size recorded for them.
//! - Valid bundles are accepted, each log entry kept as the exact bytes it arrived as.

use bytes::Bytes;
use logdog_collector::validate::{self, CheckedEntry, MAX_DESCRIPTOR_SIZE, MAX_STREAM_INDEX};
use logdog_proto::logdog::collector as pb;
use logdog_proto::logpb::{self, log_entry::Content};
use logdog_proto::{StreamType, types};
use proptest::prelude::*;
use prost::Message;

// ---------------------------------------------------------------------------------------------
// The invariants.

/// Payload of a decoded entry if its content suits a stream of type `kind`.
fn payload_of(kind: StreamType, e: &logpb::LogEntry) -> Option<u64> {
    match (kind, &e.content) {
        (StreamType::Text, Some(Content::Text(t))) if !t.lines.is_empty() => Some(
            t.lines
                .iter()
                .map(|l| (l.value.len() + l.delimiter.len()) as u64)
                .sum(),
        ),
        (StreamType::Binary, Some(Content::Binary(b))) if !b.data.is_empty() => {
            Some(b.data.len() as u64)
        }
        (StreamType::Datagram, Some(Content::Datagram(d))) => Some(d.data.len() as u64),
        _ => None,
    }
}

/// Fails the test unless `checked`, accepted from `view`, satisfies every invariant.
fn check_accepted(view: &pb::BundleView, checked: &[CheckedEntry]) {
    types::validate_project(&view.project).expect("accepted an invalid project");
    types::validate_prefix(&view.prefix).expect("accepted an invalid prefix");
    assert_eq!(checked.len(), view.entries.len(), "an entry went missing");
    let mut names = std::collections::BTreeSet::new();
    for (c, v) in checked.iter().zip(&view.entries) {
        let d = &c.desc;
        assert_eq!(Some(d), v.desc.as_ref(), "descriptor changed");
        assert!(names.insert(d.name.clone()), "{:?} twice", d.name);
        types::validate_stream_name(&d.name).expect("accepted an invalid name");
        assert!(
            d.encoded_len() <= MAX_DESCRIPTOR_SIZE,
            "descriptor too large"
        );
        assert!(
            d.prefix.is_empty() || d.prefix == view.prefix,
            "prefix mismatch"
        );
        let kind = StreamType::try_from(d.stream_type).expect("accepted an unknown type");
        assert!(!d.content_type.is_empty(), "accepted an empty content type");
        assert!(d.timestamp.is_some(), "accepted no timestamp");
        for (k, val) in &d.tags {
            types::validate_tag(k, val).expect("accepted an invalid tag");
        }
        // Terminal index.
        match c.terminal {
            None => assert!(!v.terminal, "terminal flag lost"),
            Some(-1) => {
                assert!(v.terminal && v.terminal_index == u64::MAX);
                assert!(c.logs.is_empty(), "entries in a stream that ended empty");
            }
            Some(t) => {
                assert!(v.terminal);
                assert!(
                    t >= 0 && (t as u64) < MAX_STREAM_INDEX,
                    "terminal index {t}"
                );
                assert_eq!(t as u64, v.terminal_index);
            }
        }
        // Entries.
        assert_eq!(c.logs.len(), v.logs.len(), "a log entry went missing");
        for (k, ((index, raw, payload), arrived)) in c.logs.iter().zip(&v.logs).enumerate() {
            assert_eq!(raw, arrived, "a log entry's bytes changed");
            let e = logpb::LogEntry::decode(raw.clone())
                .unwrap_or_else(|err| panic!("accepted an entry that does not decode: {err}"));
            assert_eq!(e.stream_index, *index);
            assert!(*index < MAX_STREAM_INDEX);
            if k > 0 {
                assert_eq!(*index, c.logs[k - 1].0 + 1, "indices not contiguous");
            }
            if let Some(t) = c.terminal {
                assert!(
                    t >= 0 && *index <= t as u64,
                    "index {index} past terminal {t}"
                );
            }
            assert_eq!(
                payload_of(kind, &e),
                Some(*payload),
                "content or payload size wrong for a {kind:?} stream: {e:?}"
            );
        }
    }
}

/// Decodes and validates `bytes`; checks the invariants of whatever is accepted. Returns
/// whether it was accepted.
fn validate_bytes(bytes: &[u8]) -> bool {
    let Ok(view) = pb::BundleView::decode(Bytes::copy_from_slice(bytes)) else {
        return false;
    };
    match validate::bundle(&view) {
        Ok(checked) => {
            check_accepted(&view, &checked);
            true
        }
        Err(e) => {
            assert!(!e.0.is_empty(), "a refusal without a reason");
            false
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Valid bundles.

fn name() -> impl Strategy<Value = String> {
    prop::collection::vec("[a-zA-Z0-9][a-zA-Z0-9:_.-]{0,6}", 1..4).prop_map(|s| s.join("/"))
}

fn content(kind: StreamType) -> BoxedStrategy<Content> {
    match kind {
        StreamType::Text => prop::collection::vec(
            (
                prop::collection::vec(any::<u8>(), 0..20),
                prop::sample::select(vec!["", "\n", "\r\n"]),
            ),
            1..4,
        )
        .prop_map(|lines| {
            Content::Text(logpb::Text {
                lines: lines
                    .into_iter()
                    .map(|(v, d)| logpb::text::Line {
                        value: v.into(),
                        delimiter: d.into(),
                    })
                    .collect(),
            })
        })
        .boxed(),
        StreamType::Binary => prop::collection::vec(any::<u8>(), 1..40)
            .prop_map(|d| Content::Binary(logpb::Binary { data: d.into() }))
            .boxed(),
        StreamType::Datagram => (prop::collection::vec(any::<u8>(), 0..40), any::<bool>())
            .prop_map(|(d, partial)| {
                Content::Datagram(logpb::Datagram {
                    data: d.into(),
                    partial: partial.then_some(logpb::datagram::Partial {
                        index: 1,
                        size: 100,
                        last: false,
                    }),
                })
            })
            .boxed(),
    }
}

/// How far an entry moves the sequence on.
fn span(c: &Option<Content>) -> u64 {
    match c {
        Some(Content::Text(t)) => t.lines.iter().filter(|l| !l.delimiter.is_empty()).count() as u64,
        Some(Content::Binary(b)) => b.data.len() as u64,
        Some(Content::Datagram(d)) => u64::from(d.partial.as_ref().is_none_or(|p| p.last)),
        None => 0,
    }
}

fn stream_entry(name: String) -> impl Strategy<Value = logpb::butler_log_bundle::Entry> {
    let kind = prop::sample::select(vec![
        StreamType::Text,
        StreamType::Binary,
        StreamType::Datagram,
    ]);
    (kind, 0u64..1000, any::<bool>(), 0usize..4).prop_flat_map(move |(kind, start, terminal, n)| {
        let name = name.clone();
        (
            prop::collection::vec(content(kind), n),
            prop::collection::btree_map("[a-z]{1,5}", "[ -~]{0,8}", 0..3),
            (0i64..2_000_000_000, 0i32..1_000_000_000),
        )
            .prop_map(move |(contents, tags, (seconds, nanos))| {
                let count = contents.len() as u64;
                // LogDog's sequence rule: entry 0 starts at 0, and each entry moves it on by
                // its complete lines, bytes or whole datagrams.
                let mut sequence = start * 7;
                let logs = contents
                    .into_iter()
                    .enumerate()
                    .map(|(k, c)| {
                        let e = logpb::LogEntry {
                            time_offset: Some(prost_types::Duration {
                                seconds: k as i64,
                                nanos: 5,
                            }),
                            prefix_index: start * 3 + k as u64,
                            stream_index: start + k as u64,
                            sequence,
                            content: Some(c),
                        };
                        sequence += span(&e.content);
                        e
                    })
                    .collect();
                logpb::butler_log_bundle::Entry {
                    desc: Some(logpb::LogStreamDescriptor {
                        name: name.clone(),
                        stream_type: kind as i32,
                        content_type: logdog_proto::default_content_type(kind).into(),
                        timestamp: Some(prost_types::Timestamp { seconds, nanos }),
                        tags,
                        ..Default::default()
                    }),
                    terminal,
                    terminal_index: match (terminal, count) {
                        (false, _) => 0,
                        (true, 0) if start == 0 => u64::MAX,
                        (true, _) => start + count.max(1) - 1,
                    },
                    logs,
                    ..Default::default()
                }
            })
    })
}

fn valid_bundle() -> impl Strategy<Value = logpb::ButlerLogBundle> {
    (
        "[a-z][a-z0-9_-]{0,6}",
        name(),
        prop::collection::btree_set(name(), 1..4),
    )
        .prop_flat_map(|(project, prefix, names)| {
            let entries: Vec<_> = names.into_iter().map(stream_entry).collect();
            (Just(project), Just(prefix), entries)
        })
        .prop_map(|(project, prefix, entries)| logpb::ButlerLogBundle {
            timestamp: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            project,
            prefix,
            entries,
            ..Default::default()
        })
}

// ---------------------------------------------------------------------------------------------
// Mutations.

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, bit: u8 },
    Set { at: usize, byte: u8 },
    Insert { at: usize, bytes: Vec<u8> },
    Delete { at: usize, len: usize },
    Repeat { at: usize, len: usize },
    Truncate { at: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = any::<usize>();
    prop_oneof![
        4 => (at, 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        3 => (at, prop_oneof![Just(0u8), Just(0x80), Just(0xFF), any::<u8>()])
            .prop_map(|(at, byte)| Mutation::Set { at, byte }),
        2 => (at, prop::collection::vec(any::<u8>(), 1..6))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        2 => (at, 1usize..8).prop_map(|(at, len)| Mutation::Delete { at, len }),
        1 => (at, 1usize..16).prop_map(|(at, len)| Mutation::Repeat { at, len }),
        1 => at.prop_map(|at| Mutation::Truncate { at }),
    ]
}

fn apply(buf: &mut Vec<u8>, m: &Mutation) {
    if buf.is_empty() {
        return;
    }
    let pos = |at: usize| at % buf.len();
    match m {
        Mutation::Flip { at, bit } => {
            let i = pos(*at);
            buf[i] ^= 1 << bit;
        }
        Mutation::Set { at, byte } => {
            let i = pos(*at);
            buf[i] = *byte;
        }
        Mutation::Insert { at, bytes } => {
            let i = pos(*at);
            buf.splice(i..i, bytes.iter().copied());
        }
        Mutation::Delete { at, len } => {
            let i = pos(*at);
            let end = (i + len).min(buf.len());
            buf.drain(i..end);
        }
        Mutation::Repeat { at, len } => {
            let i = pos(*at);
            let end = (i + len).min(buf.len());
            let copy = buf[i..end].to_vec();
            buf.splice(end..end, copy);
        }
        Mutation::Truncate { at } => {
            let i = pos(*at);
            buf.truncate(i);
        }
    }
}

/// Mutates the encoding of one log entry of `b` in place, keeping the bundle's framing
/// intact, so that the damage reaches validation of the entry's inside.
fn mutate_one_log(b: &logpb::ButlerLogBundle, which: usize, ms: &[Mutation]) -> Option<Vec<u8>> {
    let mut view = pb::BundleView::decode(b.encode_to_vec().as_slice()).ok()?;
    let total: usize = view.entries.iter().map(|e| e.logs.len()).sum();
    if total == 0 {
        return None;
    }
    let mut k = which % total;
    for e in &mut view.entries {
        if k < e.logs.len() {
            let mut raw = e.logs[k].to_vec();
            for m in ms {
                apply(&mut raw, m);
            }
            e.logs[k] = raw.into();
            return Some(view.encode_to_vec());
        }
        k -= e.logs.len();
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Properties.

// 256 cases (proptest's default), or `PROPTEST_CASES` for a longer hunt.
proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        validate_bytes(&bytes);
    }

    #[test]
    fn valid_bundles_are_accepted_as_they_are(b in valid_bundle()) {
        let bytes = b.encode_to_vec();
        let view = pb::BundleView::decode(bytes.as_slice()).expect("a view of a valid bundle");
        let checked = validate::bundle(&view)
            .unwrap_or_else(|e| panic!("refused a valid bundle: {e}\n{b:#?}"));
        check_accepted(&view, &checked);
        for (c, e) in checked.iter().zip(&b.entries) {
            let want: Vec<Vec<u8>> = e.logs.iter().map(Message::encode_to_vec).collect();
            let got: Vec<Vec<u8>> = c.logs.iter().map(|(_, raw, _)| raw.to_vec()).collect();
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn a_bad_stream_is_refused_alone(
        b in valid_bundle(),
        which in any::<usize>(),
        how in 0u8..3,
    ) {
        let mut b = b;
        let k = which % b.entries.len();
        let d = b.entries[k].desc.as_mut().expect("descriptor");
        match how {
            0 => d.content_type = "c".repeat(types::MAX_CONTENT_TYPE_LEN + 1),
            1 => d.name = format!("_{}", d.name),
            _ => {
                for i in 0..=types::MAX_TAGS {
                    d.tags.insert(format!("t{i}"), String::new());
                }
            }
        }
        let view = pb::BundleView::decode(b.encode_to_vec().as_slice()).expect("a view");
        let checked = validate::streams(&view).expect("the bundle itself is fine");
        prop_assert_eq!(checked.refused.len(), 1);
        prop_assert_eq!(&checked.refused[0].name, &b.entries[k].desc.as_ref().expect("d").name);
        prop_assert_eq!(checked.refused[0].kind, validate::RefusalKind::Invalid);
        let kept: Vec<&str> = checked.streams.iter().map(|c| c.desc.name.as_str()).collect();
        let want: Vec<&str> = b
            .entries
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != k)
            .map(|(_, e)| e.desc.as_ref().expect("d").name.as_str())
            .collect();
        prop_assert_eq!(kept, want);
    }

    /// The butler's handshake and the collector refuse exactly the same descriptors, even with
    /// the longest name and prefix there may be: a stream the butler takes is never refused
    /// by the collector for its descriptor.
    #[test]
    fn the_butler_and_the_collector_agree_on_descriptors(
        content_type in 1usize..1100,
        tags in prop::collection::btree_map("[a-z][a-z0-9]{0,7}", 0usize..4200, 0..70),
    ) {
        let content_type = "c".repeat(content_type);
        let tags: std::collections::BTreeMap<String, String> =
            tags.into_iter().map(|(k, n)| (k, "v".repeat(n))).collect();
        let name = format!("{}/{}", "n".repeat(2047), "m".repeat(2048));
        let header = serde_json::json!({
            "name": name,
            "type": "text",
            "contentType": content_type,
            "tags": tags,
        });
        let butler = logdog_proto::handshake::parse_header(header.to_string().as_bytes());
        let desc = logpb::LogStreamDescriptor {
            name,
            content_type,
            timestamp: Some(prost_types::Timestamp::default()),
            tags: tags.into_iter().collect(),
            ..Default::default()
        };
        let b = logpb::ButlerLogBundle {
            project: "p".into(),
            prefix: "x".repeat(types::MAX_STREAM_NAME_LEN),
            entries: vec![logpb::butler_log_bundle::Entry { desc: Some(desc), ..Default::default() }],
            ..Default::default()
        };
        let view = pb::BundleView::decode(b.encode_to_vec().as_slice()).expect("a view");
        let collector = validate::streams(&view).expect("the bundle itself is fine");
        prop_assert_eq!(
            butler.is_ok(),
            collector.refused.is_empty(),
            "butler: {:?}; collector: {:?}",
            butler.err(),
            collector.refused
        );
    }

    #[test]
    fn mutated_bundles_never_panic_and_what_passes_is_sound(
        b in valid_bundle(),
        ms in prop::collection::vec(mutation(), 1..5),
    ) {
        let mut bytes = b.encode_to_vec();
        for m in &ms {
            apply(&mut bytes, m);
        }
        validate_bytes(&bytes);
    }

    #[test]
    fn mutated_log_entries_never_panic_and_what_passes_is_sound(
        b in valid_bundle(),
        which in any::<usize>(),
        ms in prop::collection::vec(mutation(), 1..4),
    ) {
        if let Some(bytes) = mutate_one_log(&b, which, &ms) {
            validate_bytes(&bytes);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Entries the read path could not decode.

/// A one-stream text bundle whose only log entry is `raw`.
fn bundle_with_raw_log(raw: Vec<u8>) -> Vec<u8> {
    let view = pb::BundleView {
        timestamp: None,
        secret: Default::default(),
        project: "p".into(),
        prefix: "x".into(),
        entries: vec![pb::BundleEntryView {
            desc: Some(logpb::LogStreamDescriptor {
                name: "s".into(),
                content_type: "text/plain".into(),
                timestamp: Some(prost_types::Timestamp::default()),
                ..Default::default()
            }),
            terminal: false,
            terminal_index: 0,
            logs: vec![raw.into()],
        }],
    };
    view.encode_to_vec()
}

#[test]
fn entries_that_would_not_decode_on_the_way_out_are_refused() {
    let line = |value: &[u8], delimiter: &[u8]| {
        // Line { value = 1: bytes, delimiter = 2: string }, written by hand.
        let mut l = vec![0x0A, value.len() as u8];
        l.extend_from_slice(value);
        l.extend([0x12, delimiter.len() as u8]);
        l.extend_from_slice(delimiter);
        l
    };
    let entry = |prefix: &[u8], text: &[u8]| {
        // LogEntry { ..., stream_index = 3: 0, text = 10: Text { lines = 1 } }.
        let mut e = prefix.to_vec();
        e.extend([
            0x18,
            0x00,
            0x52,
            text.len() as u8 + 2,
            0x0A,
            text.len() as u8,
        ]);
        e.extend_from_slice(text);
        e
    };
    let good = entry(&[], &line(b"ok", b"\n"));
    assert!(validate_bytes(&bundle_with_raw_log(good)));
    for (what, raw) in [
        // A delimiter that is not UTF-8 (the field is a string).
        ("delimiter", entry(&[], &line(b"ok", b"\xFF"))),
        // A time offset that is not a Duration.
        (
            "time_offset",
            entry(&[0x0A, 0x02, 0xFF, 0xFF], &line(b"ok", b"\n")),
        ),
        // A line value sent as a varint instead of bytes.
        ("wire type", entry(&[], &[0x08, 0x01])),
    ] {
        let bytes = bundle_with_raw_log(raw);
        // The view the collector decodes first is fine with all of these...
        let view = pb::BundleView::decode(bytes.as_slice()).expect("a view");
        // ...but the entry itself cannot be read back, so it must not be stored.
        assert!(
            validate::bundle(&view).is_err(),
            "{what}: an entry that does not decode was accepted"
        );
    }
}
