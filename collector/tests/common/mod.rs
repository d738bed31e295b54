//! Builders and checks shared by the store tests: text streams as the validator passes them
//! to the store, and what a stream reads back.

#![allow(dead_code)]

use std::path::Path;

use bytes::Bytes;
use logdog_collector::Store;
use logdog_collector::store::StreamKey;
use logdog_collector::validate::{CheckedEntry, Sequence};
use logdog_proto::logpb;
use prost::Message;

/// The descriptor of text stream `name`.
pub fn desc(name: &str) -> logpb::LogStreamDescriptor {
    logpb::LogStreamDescriptor {
        name: name.to_string(),
        stream_type: logpb::StreamType::Text as i32,
        content_type: "text/plain".to_string(),
        ..Default::default()
    }
}

/// A text entry of one line, `line`, at index (and sequence) `idx`.
pub fn entry(idx: u64, line: &str) -> (u64, Bytes, u64) {
    let e = logpb::LogEntry {
        stream_index: idx,
        sequence: idx,
        content: Some(logpb::log_entry::Content::Text(logpb::Text {
            lines: vec![logpb::text::Line {
                value: line.as_bytes().to_vec().into(),
                delimiter: "\n".to_string(),
            }],
        })),
        ..Default::default()
    };
    (idx, Bytes::from(e.encode_to_vec()), line.len() as u64 + 1)
}

/// Text stream `name` with one entry per line of `lines` from index `from`, and its terminal
/// index if it ends.
pub fn checked<S: AsRef<str>>(
    name: &str,
    from: u64,
    lines: &[S],
    terminal: Option<i64>,
) -> CheckedEntry {
    CheckedEntry {
        desc: desc(name),
        terminal,
        logs: lines
            .iter()
            .enumerate()
            .map(|(i, l)| entry(from + i as u64, l.as_ref()))
            .collect(),
        sequences: (0..lines.len() as u64)
            .map(|i| Sequence {
                sequence: from + i,
                span: 1,
            })
            .collect(),
    }
}

/// Stream `name` of `proj/prefix`.
pub fn key_in(prefix: &str, name: &str) -> StreamKey {
    StreamKey {
        project: "proj".to_string(),
        prefix: prefix.to_string(),
        name: name.to_string(),
    }
}

/// Stream `name` of `proj/pre`.
pub fn key(name: &str) -> StreamKey {
    key_in("pre", name)
}

/// The lines stored for `key`, checking that they are its entries from 0 on.
pub fn lines_of(store: &Store, key: &StreamKey) -> Vec<String> {
    store
        .entries(key, 0, usize::MAX, usize::MAX)
        .expect("read")
        .iter()
        .enumerate()
        .map(|(i, e)| {
            assert_eq!(e.stream_index, i as u64, "{key:?}");
            match &e.content {
                Some(logpb::log_entry::Content::Text(t)) => {
                    String::from_utf8_lossy(&t.lines[0].value).into_owned()
                }
                other => panic!("unexpected content {other:?}"),
            }
        })
        .collect()
}

/// Bytes allocated to the segment files of the store in `dir` (punched holes do not count).
pub fn segment_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir.join("segments"))
        .expect("segments dir")
        .map(|e| {
            let m = e.expect("entry").metadata().expect("metadata");
            m.len().min(m.blocks() * 512)
        })
        .sum()
}

/// Ranges of segments the store in `dir` gave up but has not punched out yet (its
/// `released` list).
pub fn released(dir: &Path) -> u64 {
    let conn = rusqlite::Connection::open_with_flags(
        dir.join("collector.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("index");
    conn.query_row("SELECT COUNT(*) FROM released", [], |r| r.get::<_, i64>(0))
        .expect("released") as u64
}
