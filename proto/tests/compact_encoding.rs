//! Property tests: the compact bundle encoder writes exactly the bytes prost writes for the
//! equivalent `logpb` messages, its size arithmetic is exact, and text entries round-trip
//! through the `Text.Line` split.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use logdog_proto::bundle::{text_encoded_len, text_line_field_len, text_lines};
use logdog_proto::logpb;
use logdog_proto::{Bundle, BundleEntry, Content, Descriptor, Entry};
use proptest::prelude::*;
use prost::Message;

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

/// Short strings, empty included, with some non-ASCII.
fn any_string() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[a-z0-9_:./-]{1,12}", "\\PC{0,8}",]
}

/// Indices: 0, small, large, and the extremes.
fn any_index() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        0..300u64,
        any::<u64>(),
        Just(u64::MAX),
        Just(1u64 << 63)
    ]
}

/// Non-negative timestamps (seconds may be 0), nanos in range.
fn any_timestamp() -> impl Strategy<Value = prost_types::Timestamp> {
    (
        prop_oneof![Just(0i64), 0..1_000i64, 0..=i64::MAX],
        prop_oneof![Just(0i32), 0..1_000_000_000i32],
    )
        .prop_map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos })
}

/// Durations with in-range nanos whose sign agrees with seconds (either may be 0; nanos may
/// be negative when seconds <= 0).
fn any_time_offset() -> impl Strategy<Value = prost_types::Duration> {
    prop_oneof![
        Just(0i64),
        -5..5i64,
        any::<i64>(),
        Just(i64::MIN),
        Just(i64::MAX)
    ]
    .prop_flat_map(|seconds| {
        let nanos = match seconds {
            s if s > 0 => (0..1_000_000_000i32).boxed(),
            s if s < 0 => (-999_999_999..=0i32).boxed(),
            _ => (-999_999_999..1_000_000_000i32).boxed(),
        };
        (Just(seconds), prop_oneof![Just(0i32), nanos])
    })
    .prop_map(|(seconds, nanos)| prost_types::Duration { seconds, nanos })
}

fn any_stream_type() -> impl Strategy<Value = i32> {
    prop_oneof![
        Just(logpb::StreamType::Text as i32),
        Just(logpb::StreamType::Binary as i32),
        Just(logpb::StreamType::Datagram as i32),
    ]
}

fn any_descriptor() -> impl Strategy<Value = logpb::LogStreamDescriptor> {
    (
        any_string(),
        any_string(),
        any_stream_type(),
        any_string(),
        proptest::option::weighted(0.9, any_timestamp()),
        proptest::collection::btree_map(any_string(), any_string(), 0..4),
        any_string(),
    )
        .prop_map(
            |(prefix, name, stream_type, content_type, timestamp, tags, binary_file_ext)| {
                logpb::LogStreamDescriptor {
                    prefix,
                    name,
                    stream_type,
                    content_type,
                    timestamp,
                    tags: tags.into_iter().collect::<BTreeMap<_, _>>(),
                    binary_file_ext,
                }
            },
        )
}

/// Bytes from an alphabet dominated by delimiters and the pieces of UTF-8 / invalid UTF-8.
fn text_bytes(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<u8>> {
    let alphabet = prop_oneof![
        4 => Just(b'\n'),
        4 => Just(b'\r'),
        4 => Just(b'a'),
        2 => Just(0xC3u8),
        2 => Just(0xA9u8),
        2 => Just(0xFFu8),
        1 => any::<u8>(),
    ];
    proptest::collection::vec(alphabet, len)
}

fn any_partial() -> impl Strategy<Value = Option<logpb::datagram::Partial>> {
    proptest::option::of(
        (any::<u32>(), any_index(), any::<bool>())
            .prop_map(|(index, size, last)| logpb::datagram::Partial { index, size, last }),
    )
}

fn any_content() -> impl Strategy<Value = Content> {
    prop_oneof![
        text_bytes(1..48).prop_map(|b| Content::Text(Bytes::from(b))),
        proptest::collection::vec(any::<u8>(), 0..48).prop_map(|b| Content::Binary(Bytes::from(b))),
        (proptest::collection::vec(any::<u8>(), 0..48), any_partial()).prop_map(|(d, partial)| {
            Content::Datagram {
                data: Bytes::from(d),
                partial,
            }
        }),
    ]
}

fn any_entry() -> impl Strategy<Value = Entry> {
    (
        any_time_offset(),
        any_index(),
        any_index(),
        any_index(),
        any_content(),
    )
        .prop_map(
            |(time_offset, prefix_index, stream_index, sequence, content)| Entry {
                time_offset,
                prefix_index,
                stream_index,
                sequence,
                content,
            },
        )
}

fn any_terminal_index() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![
        Just(None),
        Just(Some(0)),
        any::<u64>().prop_map(Some),
        Just(Some(u64::MAX)),
    ]
}

fn any_bundle_entry() -> impl Strategy<Value = BundleEntry> {
    (
        any_descriptor(),
        any_terminal_index(),
        proptest::collection::vec(any_entry(), 0..6),
    )
        .prop_map(|(desc, terminal_index, logs)| BundleEntry {
            desc: Arc::new(Descriptor::new(desc)),
            terminal_index,
            logs,
        })
}

fn any_bundle() -> impl Strategy<Value = Bundle> {
    (
        any_timestamp(),
        any_string(),
        any_string(),
        proptest::collection::vec(any_bundle_entry(), 0..4),
    )
        .prop_map(|(timestamp, project, prefix, entries)| Bundle {
            timestamp,
            project,
            prefix,
            entries,
        })
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

/// The text of every text entry, in bundle order.
fn texts(bundle: &Bundle) -> Vec<Bytes> {
    bundle
        .entries
        .iter()
        .flat_map(|e| &e.logs)
        .filter_map(|l| match &l.content {
            Content::Text(b) => Some(b.clone()),
            _ => None,
        })
        .collect()
}

proptest! {
    #[test]
    fn compact_encoding_matches_prost(bundle in any_bundle()) {
        let compact = bundle.encode_to_vec();
        let pb = bundle.to_logpb();
        prop_assert_eq!(&compact, &pb.encode_to_vec());
        prop_assert_eq!(bundle.encoded_len(), compact.len());
        prop_assert_eq!(pb.encoded_len(), compact.len());

        // `encode` into a buffer that already holds bytes appends exactly the encoding.
        let mut buf = vec![0xEE; 3];
        bundle.encode(&mut buf);
        prop_assert_eq!(&buf[..3], &[0xEE; 3]);
        prop_assert_eq!(&buf[3..], &compact[..]);

        // Per-part size arithmetic agrees with prost.
        for (e, pe) in bundle.entries.iter().zip(&pb.entries) {
            prop_assert_eq!(e.encoded_len(), pe.encoded_len());
            prop_assert_eq!(e.desc.encoded_len(), e.desc.get().encoded_len());
            for (l, pl) in e.logs.iter().zip(&pe.logs) {
                prop_assert_eq!(l.encoded_len(), pl.encoded_len());
            }
        }

        // Decoding gives back the prost form (map equality ignores tag order).
        let decoded = logpb::ButlerLogBundle::decode(compact.as_slice()).unwrap();
        prop_assert_eq!(&decoded, &pb);

        // Every text entry's lines, value + delimiter, concatenate to the original bytes.
        let originals = texts(&bundle);
        let rebuilt: Vec<Vec<u8>> = decoded
            .entries
            .iter()
            .flat_map(|e| &e.logs)
            .filter_map(|l| match &l.content {
                Some(logpb::log_entry::Content::Text(t)) => Some(
                    t.lines
                        .iter()
                        .flat_map(|line| {
                            line.value.iter().chain(line.delimiter.as_bytes()).copied()
                        })
                        .collect(),
                ),
                _ => None,
            })
            .collect();
        prop_assert_eq!(rebuilt.len(), originals.len());
        for (r, o) in rebuilt.iter().zip(&originals) {
            prop_assert_eq!(&r[..], &o[..]);
        }
    }

    #[test]
    fn text_lines_round_trip(data in text_bytes(0..64)) {
        let lines: Vec<_> = text_lines(&data).collect();
        let joined: Vec<u8> =
            lines.iter().flat_map(|(v, d)| v.iter().chain(d.as_bytes()).copied()).collect();
        prop_assert_eq!(&joined, &data);
        for (i, (v, d)) in lines.iter().enumerate() {
            prop_assert!(!v.contains(&b'\n'));
            prop_assert!(matches!(*d, "\n" | "\r\n" | ""));
            // Only the last line may be partial, and a partial line is never empty.
            if d.is_empty() {
                prop_assert_eq!(i, lines.len() - 1);
                prop_assert!(!v.is_empty());
            }
            // "\n" is never chosen when "\r\n" applies.
            if *d == "\n" {
                prop_assert!(v.last() != Some(&b'\r'));
            }
        }

        let text = logpb::Text {
            lines: lines
                .iter()
                .map(|(v, d)| logpb::text::Line {
                    value: Bytes::copy_from_slice(v),
                    delimiter: d.to_string(),
                })
                .collect(),
        };
        prop_assert_eq!(text_encoded_len(&data), text.encoded_len());
        for ((v, d), line) in lines.iter().zip(&text.lines) {
            prop_assert_eq!(
                text_line_field_len(v.len(), d.len()),
                prost::encoding::message::encoded_len(1, line)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// text_lines edge cases
// ---------------------------------------------------------------------------------------------

fn lines_of(data: &[u8]) -> Vec<(&[u8], &'static str)> {
    text_lines(data).collect()
}

#[test]
fn text_lines_mixed_delimiters() {
    assert_eq!(
        lines_of(b"a\r\nb\rc\n\nd"),
        [
            (&b"a"[..], "\r\n"),
            (&b"b\rc"[..], "\n"),
            (&b""[..], "\n"),
            (&b"d"[..], "")
        ]
    );
}

#[test]
fn text_lines_lone_cr_at_end_is_partial() {
    assert_eq!(lines_of(b"\r"), [(&b"\r"[..], "")]);
    assert_eq!(lines_of(b"x\r"), [(&b"x\r"[..], "")]);
    assert_eq!(lines_of(b"x\n\r"), [(&b"x"[..], "\n"), (&b"\r"[..], "")]);
}

#[test]
fn text_lines_single_newline() {
    assert_eq!(lines_of(b"\n"), [(&b""[..], "\n")]);
    assert_eq!(lines_of(b"\r\n"), [(&b""[..], "\r\n")]);
    assert_eq!(lines_of(b"\n\n"), [(&b""[..], "\n"), (&b""[..], "\n")]);
    assert_eq!(lines_of(b"\r\r\n"), [(&b"\r"[..], "\r\n")]);
}

#[test]
fn text_lines_empty_input_has_no_lines() {
    assert!(lines_of(b"").is_empty());
    assert_eq!(text_encoded_len(b""), 0);
}

#[test]
fn text_lines_values_keep_invalid_utf8() {
    assert_eq!(
        lines_of(&[0xC3, 0xA9, b'\n', 0xFF, b'\r', b'\n', 0xC3]),
        [
            (&[0xC3, 0xA9][..], "\n"),
            (&[0xFF][..], "\r\n"),
            (&[0xC3][..], "")
        ]
    );
}

/// A concrete text bundle whose decoded lines are checked by value, not just round-tripped.
#[test]
fn text_entry_decodes_to_expected_lines() {
    let bundle = Bundle {
        timestamp: prost_types::Timestamp::default(),
        project: String::new(),
        prefix: String::new(),
        entries: vec![BundleEntry {
            desc: Arc::new(Descriptor::new(logpb::LogStreamDescriptor {
                name: "stdout".into(),
                tags: BTreeMap::from([("a".to_string(), "1".to_string())])
                    .into_iter()
                    .collect(),
                ..Default::default()
            })),
            terminal_index: None,
            logs: vec![Entry {
                time_offset: prost_types::Duration {
                    seconds: -1,
                    nanos: -5,
                },
                prefix_index: 0,
                stream_index: 0,
                sequence: 0,
                content: Content::Text(Bytes::from_static(b"a\r\nb\rc\n\nd")),
            }],
        }],
    };
    let bytes = bundle.encode_to_vec();
    assert_eq!(bytes, bundle.to_logpb().encode_to_vec());
    let decoded = logpb::ButlerLogBundle::decode(bytes.as_slice()).unwrap();
    let log = &decoded.entries[0].logs[0];
    assert_eq!(
        log.time_offset,
        Some(prost_types::Duration {
            seconds: -1,
            nanos: -5
        })
    );
    let Some(logpb::log_entry::Content::Text(t)) = &log.content else {
        panic!("not text");
    };
    let got: Vec<(&[u8], &str)> = t
        .lines
        .iter()
        .map(|l| (l.value.as_ref(), l.delimiter.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (&b"a"[..], "\r\n"),
            (&b"b\rc"[..], "\n"),
            (&b""[..], "\n"),
            (&b"d"[..], "")
        ]
    );
}
