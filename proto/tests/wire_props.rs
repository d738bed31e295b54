//! The allocation-free log entry walker against prost: whatever the walker accepts, prost
//! decodes to the same stream index and payload; and every entry prost encodes (one content,
//! as every LogDog encoder writes) is accepted.

use logdog_proto::logpb::{self, log_entry::Content};
use logdog_proto::wire::{self, ContentFacts};
use proptest::prelude::*;
use prost::Message;

/// Prost's view of the same facts.
fn prost_facts(content: &Option<Content>) -> Option<ContentFacts> {
    content.as_ref().map(|c| {
        let (field, parts, payload, span) = match c {
            Content::Text(t) => (
                10,
                t.lines.len() as u64,
                t.lines
                    .iter()
                    .map(|l| l.value.len() + l.delimiter.len())
                    .sum::<usize>(),
                t.lines.iter().filter(|l| !l.delimiter.is_empty()).count() as u64,
            ),
            Content::Binary(b) => (11, 0, b.data.len(), b.data.len() as u64),
            Content::Datagram(d) => (
                12,
                0,
                d.data.len(),
                u64::from(d.partial.as_ref().is_none_or(|p| p.last)),
            ),
        };
        ContentFacts {
            field,
            payload: payload as u64,
            parts,
            span,
        }
    })
}

fn line() -> impl Strategy<Value = logpb::text::Line> {
    (
        proptest::collection::vec(any::<u8>(), 0..40),
        prop_oneof![Just(""), Just("\n"), Just("\r\n"), Just("é")],
    )
        .prop_map(|(v, d)| logpb::text::Line {
            value: v.into(),
            delimiter: d.to_string(),
        })
}

fn content() -> impl Strategy<Value = Option<Content>> {
    prop_oneof![
        Just(None),
        proptest::collection::vec(line(), 0..6)
            .prop_map(|lines| Some(Content::Text(logpb::Text { lines }))),
        proptest::collection::vec(any::<u8>(), 0..60)
            .prop_map(|d| Some(Content::Binary(logpb::Binary { data: d.into() }))),
        (
            proptest::collection::vec(any::<u8>(), 0..60),
            proptest::option::of((any::<u32>(), any::<u64>(), any::<bool>()))
        )
            .prop_map(|(d, p)| Some(Content::Datagram(logpb::Datagram {
                data: d.into(),
                partial: p.map(|(index, size, last)| logpb::datagram::Partial {
                    index,
                    size,
                    last
                }),
            }))),
    ]
}

fn entry() -> impl Strategy<Value = logpb::LogEntry> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        proptest::option::of((any::<i64>(), any::<i32>())),
        content(),
    )
        .prop_map(|(p, s, q, t, content)| logpb::LogEntry {
            prefix_index: p,
            stream_index: s,
            sequence: q,
            time_offset: t.map(|(seconds, nanos)| prost_types::Duration { seconds, nanos }),
            content,
        })
}

/// The walker never accepts what prost refuses, and agrees with it on what both accept.
fn agree(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(facts) = wire::log_entry(bytes) {
        let decoded = logpb::LogEntry::decode(bytes);
        prop_assert!(
            decoded.is_ok(),
            "walker accepted what prost refuses: {decoded:?}"
        );
        let e = decoded.map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(facts.stream_index, e.stream_index);
        prop_assert_eq!(facts.sequence, e.sequence);
        prop_assert_eq!(facts.content, prost_facts(&e.content));
    }
    Ok(())
}

// 256 cases (proptest's default), or `PROPTEST_CASES` for a longer hunt.
proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_canonical_entry_is_accepted_with_the_same_facts(e in entry()) {
        let bytes = e.encode_to_vec();
        let facts = wire::log_entry(&bytes);
        prop_assert!(facts.is_ok(), "{facts:?}");
        let facts = facts.map_err(TestCaseError::fail)?;
        prop_assert_eq!(facts.stream_index, e.stream_index);
        prop_assert_eq!(facts.sequence, e.sequence);
        prop_assert_eq!(facts.content, prost_facts(&e.content));
    }

    #[test]
    fn arbitrary_bytes_are_accepted_only_if_prost_agrees(
        bytes in proptest::collection::vec(any::<u8>(), 0..200)
    ) {
        agree(&bytes)?;
    }

    #[test]
    fn mutated_entries_are_accepted_only_if_prost_agrees(
        e in entry(),
        at in any::<prop::sample::Index>(),
        flip in any::<u8>(),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
        extra in proptest::collection::vec(any::<u8>(), 0..12),
    ) {
        let mut bytes = e.encode_to_vec();
        if !bytes.is_empty() {
            let i = at.index(bytes.len());
            bytes[i] ^= flip;
            if truncate {
                bytes.truncate(cut.index(bytes.len()));
            }
        }
        bytes.extend(extra);
        agree(&bytes)?;
    }
}

#[test]
fn invalid_utf8_delimiters_wrong_wire_types_and_groups_are_refused() {
    // Text { Line { delimiter: 0xff } } in field 10.
    let line = [0x12, 0x01, 0xff];
    let text = [&[0x0a, line.len() as u8][..], &line].concat();
    let entry = [&[0x52, text.len() as u8][..], &text].concat();
    assert_eq!(
        wire::log_entry(&entry),
        Err("a line delimiter that is not UTF-8")
    );
    // stream_index (field 3) as a length-delimited field.
    assert_eq!(
        wire::log_entry(&[0x1a, 0x00]),
        Err("wrong wire type for a known field")
    );
    // A group (field 7, start group).
    assert_eq!(
        wire::log_entry(&[0x3b, 0x3c]),
        Err("groups are not accepted")
    );
    // Two contents.
    assert_eq!(
        wire::log_entry(&[0x5a, 0x00, 0x62, 0x00]),
        Err("an entry with two contents")
    );
}
