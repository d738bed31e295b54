//! Pins wire compatibility with LogDog's `logpb` messages.
//!
//! Every expected byte vector below is written out by hand from the field numbers in the
//! LogDog reference (§3.1 `log.proto`, §3.2 `butler.proto`); none of them is produced by an
//! encoder. A protobuf key byte is `(field_number << 3) | wire_type`, with wire type 0 for
//! varints and 2 for length-delimited fields (strings, bytes, messages, map entries).
//!
//! For each message the test decodes the bytes with prost and checks the field values,
//! re-encodes with prost and checks the bytes are identical, and (for `LogEntry` and
//! `ButlerLogBundle`) checks that the compact encoder in `logdog_proto::bundle` writes the
//! same bytes.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use logdog_proto::logpb;
use logdog_proto::{Bundle, BundleEntry, Content, Descriptor, Entry};
use prost::Message;

/// Concatenates byte pieces, so string payloads can be spelled as `b"..."` literals.
fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A hand-rolled base-128 varint (for the lengths in [`wrap_in_bundle`]; deliberately not
/// prost's).
fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

#[test]
fn hand_varint_matches_known_values() {
    assert_eq!(varint(0), [0x00]);
    assert_eq!(varint(127), [0x7f]);
    assert_eq!(varint(128), [0x80, 0x01]);
    assert_eq!(varint(300), [0xac, 0x02]);
    assert_eq!(varint(1_700_000_000), [0x80, 0xe2, 0xcf, 0xaa, 0x06]);
}

/// Wraps encoded `LogEntry` bytes into a minimal `ButlerLogBundle`:
/// `timestamp = {}`, one `Entry { desc = {}, logs = [entry] }`, no project/prefix.
fn wrap_in_bundle(log_entry: &[u8]) -> Vec<u8> {
    let mut entry = vec![
        0x0a, 0x00, // Entry.desc (field 1, LEN), empty LogStreamDescriptor
        0x2a, // Entry.logs (field 5, LEN)
    ];
    entry.extend(varint(log_entry.len() as u64));
    entry.extend_from_slice(log_entry);

    let mut out = vec![
        0x12, 0x00, // ButlerLogBundle.timestamp (field 2, LEN), zero Timestamp
        0x1a, // ButlerLogBundle.entries (field 3, LEN)
    ];
    out.extend(varint(entry.len() as u64));
    out.extend(entry);
    out
}

/// A minimal compact bundle holding just `log` (the counterpart of [`wrap_in_bundle`]).
fn compact_bundle_of(log: Entry) -> Bundle {
    Bundle {
        timestamp: prost_types::Timestamp::default(),
        project: String::new(),
        prefix: String::new(),
        entries: vec![BundleEntry {
            desc: Arc::new(Descriptor::new(logpb::LogStreamDescriptor::default())),
            terminal_index: None,
            logs: vec![log],
        }],
    }
}

/// Checks the compact `Entry` against the hand-written `LogEntry` bytes, both on its own
/// (`to_logpb`, `encoded_len`) and wrapped in a compact bundle (`encode_to_vec`).
fn assert_compact_entry_encodes_to(log: Entry, expected: &[u8]) {
    assert_eq!(log.encoded_len(), expected.len(), "Entry::encoded_len");
    assert_eq!(log.to_logpb().encode_to_vec(), expected, "Entry::to_logpb");
    let bundle = compact_bundle_of(log);
    let want = wrap_in_bundle(expected);
    assert_eq!(bundle.encoded_len(), want.len(), "Bundle::encoded_len");
    assert_eq!(bundle.encode_to_vec(), want, "Bundle::encode_to_vec");
    assert_eq!(bundle.to_logpb().encode_to_vec(), want, "Bundle::to_logpb");
}

// ---------------------------------------------------------------------------------------------
// LogEntry with text content
// ---------------------------------------------------------------------------------------------

fn text_log_entry_bytes() -> Vec<u8> {
    cat(&[
        // LogEntry.time_offset (field 1, LEN), Duration of 5 bytes
        &[0x0a, 0x05],
        &[0x08, 0x01],       // Duration.seconds (field 1, VARINT) = 1
        &[0x10, 0xf4, 0x03], // Duration.nanos (field 2, VARINT) = 500 (0x1f4)
        &[0x10, 0xac, 0x02], // LogEntry.prefix_index (field 2, VARINT) = 300 (0x12c)
        &[0x18, 0x07],       // LogEntry.stream_index (field 3, VARINT) = 7
        &[0x20, 0x2a],       // LogEntry.sequence (field 4, VARINT) = 42
        // LogEntry.text (field 10, LEN: 10<<3|2 = 0x52), Text of 29 bytes
        &[0x52, 0x1d],
        // Text.lines (field 1, LEN), Line of 10 bytes
        &[0x0a, 0x0a],
        &[0x0a, 0x05], // Line.value (field 1, LEN) = "hello"
        b"hello",
        &[0x12, 0x01], // Line.delimiter (field 2, LEN) = "\n"
        b"\n",
        // Text.lines (field 1, LEN), Line of 8 bytes
        &[0x0a, 0x08],
        &[0x0a, 0x02], // Line.value (field 1, LEN) = "hi"
        b"hi",
        &[0x12, 0x02], // Line.delimiter (field 2, LEN) = "\r\n"
        b"\r\n",
        // Text.lines (field 1, LEN), Line of 5 bytes: a partial line
        &[0x0a, 0x05],
        &[0x0a, 0x03], // Line.value (field 1, LEN) = "par"
        b"par",
        // Line.delimiter = "" is the proto3 default, so it is absent
    ])
}

#[test]
fn text_log_entry() {
    let bytes = text_log_entry_bytes();
    assert_eq!(bytes.len(), 2 + 5 + 3 + 2 + 2 + 2 + 29);

    let e = logpb::LogEntry::decode(bytes.as_slice()).unwrap();
    assert_eq!(
        e.time_offset,
        Some(prost_types::Duration {
            seconds: 1,
            nanos: 500
        })
    );
    assert_eq!(e.prefix_index, 300);
    assert_eq!(e.stream_index, 7);
    assert_eq!(e.sequence, 42);
    let Some(logpb::log_entry::Content::Text(text)) = &e.content else {
        panic!("not text: {:?}", e.content);
    };
    let lines: Vec<(&[u8], &str)> = text
        .lines
        .iter()
        .map(|l| (l.value.as_ref(), l.delimiter.as_str()))
        .collect();
    assert_eq!(
        lines,
        [
            (&b"hello"[..], "\n"),
            (&b"hi"[..], "\r\n"),
            (&b"par"[..], "")
        ]
    );

    assert_eq!(e.encode_to_vec(), bytes, "prost re-encoding");

    let compact = Entry {
        time_offset: prost_types::Duration {
            seconds: 1,
            nanos: 500,
        },
        prefix_index: 300,
        stream_index: 7,
        sequence: 42,
        content: Content::Text(Bytes::from_static(b"hello\nhi\r\npar")),
    };
    assert_eq!(compact.to_logpb(), e);
    assert_compact_entry_encodes_to(compact, &bytes);
}

// ---------------------------------------------------------------------------------------------
// LogEntry with binary content
// ---------------------------------------------------------------------------------------------

fn binary_log_entry_bytes() -> Vec<u8> {
    cat(&[
        // LogEntry.time_offset (field 1, LEN), zero Duration: present but empty
        &[0x0a, 0x00],
        // LogEntry.prefix_index = 0 is the proto3 default, so it is absent
        &[0x18, 0x01], // LogEntry.stream_index (field 3, VARINT) = 1
        &[0x20, 0x05], // LogEntry.sequence (field 4, VARINT) = 5
        // LogEntry.binary (field 11, LEN: 11<<3|2 = 0x5a), Binary of 5 bytes
        &[0x5a, 0x05],
        // Binary.data is field 2 (field 1 is reserved): key 2<<3|2 = 0x12, LEN 3
        &[0x12, 0x03],
        &[0x00, 0x01, 0xff],
    ])
}

#[test]
fn binary_log_entry() {
    let bytes = binary_log_entry_bytes();

    let e = logpb::LogEntry::decode(bytes.as_slice()).unwrap();
    assert_eq!(
        e.time_offset,
        Some(prost_types::Duration {
            seconds: 0,
            nanos: 0
        })
    );
    assert_eq!(e.prefix_index, 0);
    assert_eq!(e.stream_index, 1);
    assert_eq!(e.sequence, 5);
    let Some(logpb::log_entry::Content::Binary(bin)) = &e.content else {
        panic!("not binary: {:?}", e.content);
    };
    assert_eq!(bin.data.as_ref(), [0x00, 0x01, 0xff]);

    assert_eq!(e.encode_to_vec(), bytes, "prost re-encoding");

    let compact = Entry {
        time_offset: prost_types::Duration::default(),
        prefix_index: 0,
        stream_index: 1,
        sequence: 5,
        content: Content::Binary(Bytes::from_static(&[0x00, 0x01, 0xff])),
    };
    assert_eq!(compact.to_logpb(), e);
    assert_compact_entry_encodes_to(compact, &bytes);
}

#[test]
fn binary_data_in_reserved_field_1_is_not_data() {
    // A Binary whose bytes sit in field 1 (reserved) must not be read as `data`.
    let bytes = [
        0x5a, 0x05, // LogEntry.binary (field 11, LEN), 5 bytes
        0x0a, 0x03, 0x00, 0x01, 0xff, // field 1 (reserved), LEN 3: an unknown field
    ];
    let e = logpb::LogEntry::decode(&bytes[..]).unwrap();
    let Some(logpb::log_entry::Content::Binary(bin)) = e.content else {
        panic!("not binary");
    };
    assert!(bin.data.is_empty());
}

// ---------------------------------------------------------------------------------------------
// LogEntry with a datagram fragment
// ---------------------------------------------------------------------------------------------

fn datagram_log_entry_bytes() -> Vec<u8> {
    cat(&[
        &[0x0a, 0x02, 0x08, 0x03], // LogEntry.time_offset (1, LEN 2): Duration.seconds = 3
        &[0x10, 0x09],             // LogEntry.prefix_index (field 2, VARINT) = 9
        &[0x18, 0x02],             // LogEntry.stream_index (field 3, VARINT) = 2
        &[0x20, 0x02],             // LogEntry.sequence (field 4, VARINT) = 2
        // LogEntry.datagram (field 12, LEN: 12<<3|2 = 0x62), Datagram of 13 bytes
        &[0x62, 0x0d],
        &[0x0a, 0x02], // Datagram.data (field 1, LEN) = "dg"
        b"dg",
        // Datagram.partial (field 2, LEN), Partial of 7 bytes
        &[0x12, 0x07],
        &[0x08, 0x01],       // Partial.index (field 1, VARINT) = 1
        &[0x10, 0xe8, 0x07], // Partial.size (field 2, VARINT) = 1000 (0x3e8)
        &[0x18, 0x01],       // Partial.last (field 3, VARINT) = true
    ])
}

#[test]
fn datagram_log_entry() {
    let bytes = datagram_log_entry_bytes();

    let e = logpb::LogEntry::decode(bytes.as_slice()).unwrap();
    assert_eq!(
        e.time_offset,
        Some(prost_types::Duration {
            seconds: 3,
            nanos: 0
        })
    );
    assert_eq!((e.prefix_index, e.stream_index, e.sequence), (9, 2, 2));
    let Some(logpb::log_entry::Content::Datagram(dg)) = &e.content else {
        panic!("not a datagram: {:?}", e.content);
    };
    assert_eq!(dg.data.as_ref(), b"dg");
    let partial = logpb::datagram::Partial {
        index: 1,
        size: 1000,
        last: true,
    };
    assert_eq!(dg.partial, Some(partial));

    assert_eq!(e.encode_to_vec(), bytes, "prost re-encoding");

    let compact = Entry {
        time_offset: prost_types::Duration {
            seconds: 3,
            nanos: 0,
        },
        prefix_index: 9,
        stream_index: 2,
        sequence: 2,
        content: Content::Datagram {
            data: Bytes::from_static(b"dg"),
            partial: Some(partial),
        },
    };
    assert_eq!(compact.to_logpb(), e);
    assert_compact_entry_encodes_to(compact, &bytes);
}

#[test]
fn whole_datagram_has_no_partial_field() {
    let bytes = [
        0x0a, 0x00, // LogEntry.time_offset (field 1, LEN), zero Duration
        0x62, 0x04, // LogEntry.datagram (field 12, LEN), 4 bytes
        0x0a, 0x02, b'd', b'g', // Datagram.data (field 1, LEN) = "dg"; no partial (field 2)
    ];
    let e = logpb::LogEntry::decode(&bytes[..]).unwrap();
    let Some(logpb::log_entry::Content::Datagram(dg)) = &e.content else {
        panic!("not a datagram");
    };
    assert_eq!(dg.partial, None);
    assert_eq!(e.encode_to_vec(), bytes);

    let compact = Entry {
        time_offset: prost_types::Duration::default(),
        prefix_index: 0,
        stream_index: 0,
        sequence: 0,
        content: Content::Datagram {
            data: Bytes::from_static(b"dg"),
            partial: None,
        },
    };
    assert_compact_entry_encodes_to(compact, &bytes);
}

// ---------------------------------------------------------------------------------------------
// LogStreamDescriptor
// ---------------------------------------------------------------------------------------------

fn descriptor_bytes() -> Vec<u8> {
    cat(&[
        &[0x0a, 0x01], // LogStreamDescriptor.prefix (field 1, LEN) = "p"
        b"p",
        &[0x12, 0x03], // LogStreamDescriptor.name (field 2, LEN) = "out"
        b"out",
        &[0x18, 0x01], // LogStreamDescriptor.stream_type (field 3, VARINT) = BINARY (1)
        &[0x22, 0x18], // LogStreamDescriptor.content_type (field 4, LEN 24)
        b"application/octet-stream",
        // LogStreamDescriptor.timestamp (field 5, LEN), Timestamp of 8 bytes
        &[0x2a, 0x08],
        &[0x08, 0x80, 0xe2, 0xcf, 0xaa, 0x06], // Timestamp.seconds (1, VARINT) = 1_700_000_000
        &[0x10, 0x7b],                         // Timestamp.nanos (2, VARINT) = 123
        // LogStreamDescriptor.tags (field 6, LEN): one map entry of 6 bytes
        &[0x32, 0x06],
        &[0x0a, 0x01], // map entry key (field 1, LEN) = "k"
        b"k",
        &[0x12, 0x01], // map entry value (field 2, LEN) = "v"
        b"v",
        &[0x3a, 0x03], // LogStreamDescriptor.binary_file_ext (field 7, LEN) = "bin"
        b"bin",
    ])
}

fn expected_descriptor() -> logpb::LogStreamDescriptor {
    logpb::LogStreamDescriptor {
        prefix: "p".into(),
        name: "out".into(),
        stream_type: logpb::StreamType::Binary as i32,
        content_type: "application/octet-stream".into(),
        timestamp: Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 123,
        }),
        tags: BTreeMap::from([("k".to_string(), "v".to_string())]),
        binary_file_ext: "bin".into(),
    }
}

#[test]
fn log_stream_descriptor() {
    let bytes = descriptor_bytes();
    assert_eq!(bytes.len(), 59);

    let d = logpb::LogStreamDescriptor::decode(bytes.as_slice()).unwrap();
    assert_eq!(d.prefix, "p");
    assert_eq!(d.name, "out");
    assert_eq!(d.stream_type(), logpb::StreamType::Binary);
    assert_eq!(d.content_type, "application/octet-stream");
    assert_eq!(
        d.timestamp,
        Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 123
        })
    );
    assert_eq!(d.tags.len(), 1);
    assert_eq!(d.tags.get("k").map(String::as_str), Some("v"));
    assert_eq!(d.binary_file_ext, "bin");
    assert_eq!(d, expected_descriptor());

    assert_eq!(d.encode_to_vec(), bytes, "prost re-encoding");

    let compact = Descriptor::new(d);
    assert_eq!(compact.encoded_len(), bytes.len());
    assert_eq!(compact.name(), "out");
    assert_eq!(compact.stream_type(), logpb::StreamType::Binary);
}

#[test]
fn stream_type_values() {
    assert_eq!(logpb::StreamType::Text as i32, 0);
    assert_eq!(logpb::StreamType::Binary as i32, 1);
    assert_eq!(logpb::StreamType::Datagram as i32, 2);
    assert_eq!(logpb::StreamType::try_from(0), Ok(logpb::StreamType::Text));
    assert_eq!(
        logpb::StreamType::try_from(1),
        Ok(logpb::StreamType::Binary)
    );
    assert_eq!(
        logpb::StreamType::try_from(2),
        Ok(logpb::StreamType::Datagram)
    );
    assert!(logpb::StreamType::try_from(3).is_err());
    assert_eq!(logpb::StreamType::default(), logpb::StreamType::Text);
    // The crate re-exports the same enum.
    assert_eq!(logdog_proto::StreamType::Datagram as i32, 2);
}

// ---------------------------------------------------------------------------------------------
// ButlerLogBundle
// ---------------------------------------------------------------------------------------------

/// A binary payload long enough to push the bundle entry's length past one varint byte.
const BIG: [u8; 64] = [0x5a; 64];

fn bundle_bytes() -> Vec<u8> {
    let desc = descriptor_bytes(); // 59 bytes, hand-written above
    cat(&[
        // ButlerLogBundle.deprecated_source (field 1) is empty, so absent.
        // ButlerLogBundle.timestamp (field 2, LEN), Timestamp of 6 bytes
        &[0x12, 0x06],
        &[0x08, 0x80, 0xe2, 0xcf, 0xaa, 0x06], // Timestamp.seconds (1, VARINT) = 1_700_000_000
        // ButlerLogBundle.entries (field 3, LEN), Entry of 165 bytes (0xa5 → varint a5 01)
        &[0x1a, 0xa5, 0x01],
        // Entry.desc (field 1, LEN 59 = 0x3b)
        &[0x0a, 0x3b],
        &desc,
        // Entry.deprecated_entry_secret (field 2) is empty, so absent.
        &[0x18, 0x01], // Entry.terminal (field 3, VARINT) = true
        &[0x20, 0x03], // Entry.terminal_index (field 4, VARINT) = 3
        // Entry.logs (field 5, LEN), LogEntry of 78 bytes (0x4e)
        &[0x2a, 0x4e],
        &[0x0a, 0x02, 0x08, 0x01], // LogEntry.time_offset (1, LEN 2): seconds = 1
        &[0x10, 0x0a],             // LogEntry.prefix_index (2, VARINT) = 10
        &[0x18, 0x02],             // LogEntry.stream_index (3, VARINT) = 2
        &[0x20, 0x64],             // LogEntry.sequence (4, VARINT) = 100
        &[0x5a, 0x42],             // LogEntry.binary (11, LEN 66)
        &[0x12, 0x40],             // Binary.data (2, LEN 64)
        &BIG,
        // Entry.logs (field 5, LEN), LogEntry of 18 bytes (0x12)
        &[0x2a, 0x12],
        &[0x0a, 0x02, 0x08, 0x02], // LogEntry.time_offset (1, LEN 2): seconds = 2
        &[0x10, 0x0b],             // LogEntry.prefix_index (2, VARINT) = 11
        &[0x18, 0x03],             // LogEntry.stream_index (3, VARINT) = 3
        &[0x20, 0xa4, 0x01],       // LogEntry.sequence (4, VARINT) = 164 (0xa4 → a4 01)
        &[0x5a, 0x05],             // LogEntry.binary (11, LEN 5)
        &[0x12, 0x03, 0x00, 0x01, 0xff], // Binary.data (2, LEN 3)
        // ButlerLogBundle.project (field 4, LEN) = "proj"
        &[0x22, 0x04],
        b"proj",
        // ButlerLogBundle.prefix (field 5, LEN) = "pfx"
        &[0x2a, 0x03],
        b"pfx",
        // ButlerLogBundle.secret (field 6) is empty, so absent.
    ])
}

fn compact_bundle() -> Bundle {
    let binary = |secs, prefix_index, stream_index, sequence, data: &'static [u8]| Entry {
        time_offset: prost_types::Duration {
            seconds: secs,
            nanos: 0,
        },
        prefix_index,
        stream_index,
        sequence,
        content: Content::Binary(Bytes::from_static(data)),
    };
    Bundle {
        timestamp: prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        },
        project: "proj".into(),
        prefix: "pfx".into(),
        entries: vec![BundleEntry {
            desc: Arc::new(Descriptor::new(expected_descriptor())),
            terminal_index: Some(3),
            logs: vec![
                binary(1, 10, 2, 100, &BIG),
                binary(2, 11, 3, 164, &[0x00, 0x01, 0xff]),
            ],
        }],
    }
}

#[test]
fn butler_log_bundle() {
    let bytes = bundle_bytes();
    assert_eq!(bytes.len(), 2 + 6 + 3 + 165 + 2 + 4 + 2 + 3);

    let b = logpb::ButlerLogBundle::decode(bytes.as_slice()).unwrap();
    assert_eq!(b.deprecated_source, "");
    assert_eq!(
        b.timestamp,
        Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 0
        })
    );
    assert_eq!(b.project, "proj");
    assert_eq!(b.prefix, "pfx");
    assert!(b.secret.is_empty());
    assert_eq!(b.entries.len(), 1);
    let entry = &b.entries[0];
    assert_eq!(entry.desc.as_ref(), Some(&expected_descriptor()));
    assert!(entry.deprecated_entry_secret.is_empty());
    assert!(entry.terminal);
    assert_eq!(entry.terminal_index, 3);
    assert_eq!(entry.logs.len(), 2);
    let summary: Vec<_> = entry
        .logs
        .iter()
        .map(|l| {
            let Some(logpb::log_entry::Content::Binary(bin)) = &l.content else {
                panic!("not binary: {:?}", l.content);
            };
            (
                l.time_offset.unwrap().seconds,
                l.prefix_index,
                l.stream_index,
                l.sequence,
                bin.data.len(),
            )
        })
        .collect();
    assert_eq!(summary, [(1, 10, 2, 100, 64), (2, 11, 3, 164, 3)]);

    assert_eq!(b.encode_to_vec(), bytes, "prost re-encoding");

    let compact = compact_bundle();
    assert_eq!(compact.to_logpb(), b);
    assert_eq!(compact.encoded_len(), bytes.len(), "Bundle::encoded_len");
    assert_eq!(compact.encode_to_vec(), bytes, "Bundle::encode_to_vec");
    let mut buf = Vec::new();
    compact.encode(&mut buf);
    assert_eq!(buf, bytes, "Bundle::encode");
}

#[test]
fn terminal_entry_without_logs() {
    // A stream that ended with no entries: terminal, terminal_index = u64::MAX (-1 in Go).
    let bytes = cat(&[
        &[0x12, 0x00], // ButlerLogBundle.timestamp (field 2, LEN), zero Timestamp
        // ButlerLogBundle.entries (field 3, LEN), Entry of 15 bytes
        &[0x1a, 0x0f],
        &[0x0a, 0x00], // Entry.desc (field 1, LEN), empty descriptor
        &[0x18, 0x01], // Entry.terminal (field 3, VARINT) = true
        // Entry.terminal_index (field 4, VARINT) = u64::MAX: ten bytes
        &[
            0x20, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ],
    ]);
    let b = logpb::ButlerLogBundle::decode(bytes.as_slice()).unwrap();
    assert!(b.entries[0].terminal);
    assert_eq!(b.entries[0].terminal_index, u64::MAX);
    assert_eq!(b.encode_to_vec(), bytes);

    let compact = Bundle {
        timestamp: prost_types::Timestamp::default(),
        project: String::new(),
        prefix: String::new(),
        entries: vec![BundleEntry {
            desc: Arc::new(Descriptor::new(logpb::LogStreamDescriptor::default())),
            terminal_index: Some(u64::MAX),
            logs: vec![],
        }],
    };
    assert_eq!(compact.encoded_len(), bytes.len());
    assert_eq!(compact.encode_to_vec(), bytes);
}

// ---------------------------------------------------------------------------------------------
// ButlerMetadata
// ---------------------------------------------------------------------------------------------

#[test]
fn butler_metadata() {
    let bytes = [
        0x08, 0x01, // ButlerMetadata.type (field 1, VARINT) = ButlerLogBundle (1)
        0x10, 0x01, // ButlerMetadata.compression (field 2, VARINT) = ZLIB (1)
        0x1a, 0x01, b'1', // ButlerMetadata.proto_version (field 3, LEN) = "1"
    ];
    let m = logpb::ButlerMetadata::decode(&bytes[..]).unwrap();
    assert_eq!(
        m.r#type(),
        logpb::butler_metadata::ContentType::ButlerLogBundle
    );
    assert_eq!(m.compression(), logpb::butler_metadata::Compression::Zlib);
    assert_eq!(m.proto_version, "1");
    assert_eq!(m.proto_version, logdog_proto::PROTO_VERSION);
    assert_eq!(m.encode_to_vec(), bytes, "prost re-encoding");

    let built = logpb::ButlerMetadata {
        r#type: logpb::butler_metadata::ContentType::ButlerLogBundle as i32,
        compression: logpb::butler_metadata::Compression::Zlib as i32,
        proto_version: logdog_proto::PROTO_VERSION.to_string(),
    };
    assert_eq!(built, m);
    assert_eq!(built.encode_to_vec(), bytes);

    assert_eq!(logpb::butler_metadata::ContentType::Invalid as i32, 0);
    assert_eq!(logpb::butler_metadata::Compression::None as i32, 0);
}
