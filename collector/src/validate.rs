//! Validation of incoming bundles. Anything the collector stores has passed these checks.

use bytes::Bytes;
use logdog_proto::logdog::collector as pb;
use logdog_proto::logpb;
use logdog_proto::{StreamType, types};

/// Largest encoded descriptor accepted (the butler's field limits keep every descriptor it
/// sends below this; see `logdog_proto::types`).
pub const MAX_DESCRIPTOR_SIZE: usize = types::MAX_DESCRIPTOR_SIZE;
/// Largest stream index accepted (far beyond any real stream; keeps arithmetic safe).
pub const MAX_STREAM_INDEX: u64 = 1 << 48;

/// A bundle the collector refuses, with the reason (sent back as `InvalidArgument`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid(msg: impl Into<String>) -> Invalid {
    Invalid(msg.into())
}

/// One stream's part of a checked bundle.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CheckedEntry {
    /// The descriptor.
    pub desc: logpb::LogStreamDescriptor,
    /// `Some(index)` when this bundle ends the stream; `Some(-1)` when it ended without entries.
    pub terminal: Option<i64>,
    /// Each log entry: its stream index, its encoding as received, and its payload size.
    pub logs: Vec<(u64, Bytes, u64)>,
    /// For each entry of `logs`, its `sequence` and how far it moves the sequence on.
    pub sequences: Vec<Sequence>,
}

/// An entry's `sequence` and `span`: the next entry's sequence is `sequence + span` (LogDog's
/// rule: text counts complete lines, binary bytes, datagrams whole datagrams).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sequence {
    /// The entry's `sequence`.
    pub sequence: u64,
    /// How far it moves the sequence on.
    pub span: u64,
}

/// Why one stream of a bundle was refused (the rest of the bundle is stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// The stream's part of the bundle is malformed.
    Invalid,
    /// It contradicts what is stored.
    Conflict,
    /// Stored entries it must be compared with are damaged.
    Damaged,
}

/// One stream of a bundle that is not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Stream name.
    pub name: String,
    /// Why.
    pub kind: RefusalKind,
    /// What was wrong, naming the stream.
    pub message: String,
    /// Entries of the stream in the bundle that were not stored.
    pub entries: u32,
}

impl RefusalKind {
    /// Its name in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalKind::Invalid => "invalid",
            RefusalKind::Conflict => "conflict",
            RefusalKind::Damaged => "damaged",
        }
    }
}

impl Refusal {
    /// As sent back in `WriteBundleResponse.refused`.
    pub fn to_proto(&self) -> pb::StreamRefusal {
        let reason = match self.kind {
            RefusalKind::Invalid => pb::stream_refusal::Reason::Invalid,
            RefusalKind::Conflict => pb::stream_refusal::Reason::Conflict,
            RefusalKind::Damaged => pb::stream_refusal::Reason::Damaged,
        };
        pb::StreamRefusal {
            name: self.name.clone(),
            reason: reason as i32,
            message: self.message.clone(),
            entries: self.entries,
        }
    }
}

/// A bundle checked stream by stream: what may be stored, and what was refused.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Checked {
    /// Streams whose part of the bundle passed every check.
    pub streams: Vec<CheckedEntry>,
    /// Streams refused, with the reason.
    pub refused: Vec<Refusal>,
}

/// Checks a bundle as a whole, refusing any problem: [`streams`], where a refused stream
/// fails the whole bundle.
///
/// # Errors
/// The first problem found, naming the stream.
pub fn bundle(b: &pb::BundleView) -> Result<Vec<CheckedEntry>, Invalid> {
    let checked = streams(b)?;
    match checked.refused.into_iter().next() {
        Some(r) => Err(Invalid(r.message)),
        None => Ok(checked.streams),
    }
}

/// Checks a bundle: its project and prefix (a problem there refuses the whole bundle), then
/// each stream's part on its own: its descriptor, its indices (contiguous, unique, not past
/// the terminal index) and that each log's content matches the stream's type. A stream that
/// fails is refused alone; the others may still be stored. Each log entry is checked in full,
/// as strictly as the read path will decode it, but kept as the bytes that arrived.
///
/// # Errors
/// A problem with the bundle itself: its project or prefix, a stream entry without a
/// descriptor, or a stream that appears twice.
pub fn streams(b: &pb::BundleView) -> Result<Checked, Invalid> {
    types::validate_project(&b.project).map_err(|e| invalid(e.to_string()))?;
    types::validate_prefix(&b.prefix).map_err(|e| invalid(e.to_string()))?;
    let mut names = std::collections::BTreeSet::new();
    let mut out = Checked::default();
    for e in &b.entries {
        let desc = e
            .desc
            .as_ref()
            .ok_or_else(|| invalid("bundle entry without a descriptor"))?;
        let name = &desc.name;
        if !names.insert(name.as_str()) {
            return Err(invalid(format!(
                "stream {name:?} appears twice in one bundle"
            )));
        }
        match stream(e, desc, &b.prefix) {
            Ok(c) => out.streams.push(c),
            Err(Invalid(message)) => out.refused.push(Refusal {
                name: name.clone(),
                kind: RefusalKind::Invalid,
                message,
                entries: u32::try_from(e.logs.len()).unwrap_or(u32::MAX),
            }),
        }
    }
    Ok(out)
}

fn stream(
    e: &pb::BundleEntryView,
    desc: &logpb::LogStreamDescriptor,
    prefix: &str,
) -> Result<CheckedEntry, Invalid> {
    descriptor(desc, prefix)?;
    let kind = StreamType::try_from(desc.stream_type).unwrap_or_default();
    let (logs, sequences) = logs(&desc.name, e, kind)?;
    let index = if e.terminal_index == u64::MAX {
        -1
    } else {
        e.terminal_index as i64
    };
    Ok(CheckedEntry {
        desc: desc.clone(),
        terminal: e.terminal.then_some(index),
        logs,
        sequences,
    })
}

fn descriptor(d: &logpb::LogStreamDescriptor, prefix: &str) -> Result<(), Invalid> {
    types::validate_stream_name(&d.name).map_err(|e| invalid(e.to_string()))?;
    let name = &d.name;
    if !d.prefix.is_empty() && d.prefix != prefix {
        return Err(invalid(format!(
            "stream {name:?}: descriptor prefix {:?} differs from the bundle's {prefix:?}",
            d.prefix
        )));
    }
    StreamType::try_from(d.stream_type).map_err(|_| {
        invalid(format!(
            "stream {name:?}: unknown stream type {}",
            d.stream_type
        ))
    })?;
    if d.content_type.is_empty() {
        return Err(invalid(format!("stream {name:?}: empty content type")));
    }
    if d.timestamp.is_none() {
        return Err(invalid(format!("stream {name:?}: no timestamp")));
    }
    types::validate_descriptor_fields(
        &d.content_type,
        d.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    )
    .map_err(|e| invalid(format!("stream {name:?}: {e}")))?;
    let size = prost::Message::encoded_len(d);
    if size > MAX_DESCRIPTOR_SIZE {
        return Err(invalid(format!(
            "stream {name:?}: descriptor of {size} bytes exceeds the {MAX_DESCRIPTOR_SIZE}-byte limit"
        )));
    }
    Ok(())
}

type Logs = (Vec<(u64, Bytes, u64)>, Vec<Sequence>);

fn logs(name: &str, e: &pb::BundleEntryView, kind: StreamType) -> Result<Logs, Invalid> {
    // A terminal index of 2^64-1 (-1 signed) marks a stream that ended with no entries.
    let terminal = e
        .terminal
        .then_some(e.terminal_index)
        .filter(|&t| t != u64::MAX);
    if let Some(t) = terminal
        && t >= MAX_STREAM_INDEX
    {
        return Err(invalid(format!(
            "stream {name:?}: terminal index {t} out of range"
        )));
    }
    if e.terminal && e.terminal_index == u64::MAX && !e.logs.is_empty() {
        return Err(invalid(format!(
            "stream {name:?}: entries in a stream that ended empty"
        )));
    }
    let mut out = Vec::with_capacity(e.logs.len());
    let mut sequences = Vec::with_capacity(e.logs.len());
    let mut prev: Option<u64> = None;
    for raw in &e.logs {
        // Checked as strictly as the read path decodes it: an entry that does not decode (a
        // bad time offset, a delimiter that is not UTF-8, a field of the wrong wire type...)
        // would make every read of its stream fail, so it is never stored. The bytes stored
        // are still the ones that arrived.
        let log = logdog_proto::wire::log_entry(raw)
            .map_err(|err| invalid(format!("stream {name:?}: malformed log entry: {err}")))?;
        let i = log.stream_index;
        if i >= MAX_STREAM_INDEX {
            return Err(invalid(format!(
                "stream {name:?}: stream index {i} out of range"
            )));
        }
        if let Some(p) = prev
            && i != p + 1
        {
            return Err(invalid(format!(
                "stream {name:?}: stream indices must be unique and contiguous ({p} then {i})"
            )));
        }
        if let Some(t) = terminal
            && i > t
        {
            return Err(invalid(format!(
                "stream {name:?}: stream index {i} is past the terminal index {t}"
            )));
        }
        prev = Some(i);
        let Some(payload) = payload(kind, log.content) else {
            return Err(invalid(format!(
                "stream {name:?}: entry {i} has no content or content of the wrong type for a {} stream",
                kind.as_str_name()
            )));
        };
        let span = log.content.map_or(0, |c| c.span);
        if let Some(before) = sequences.last().copied()
            && next_sequence(before) != Some(log.sequence)
        {
            return Err(invalid(format!(
                "stream {name:?}: entry {i} has sequence {} where {} follows from entry {}",
                log.sequence,
                next_sequence(before).map_or("nothing".to_string(), |n| n.to_string()),
                i - 1
            )));
        }
        if i == 0 && log.sequence != 0 {
            return Err(invalid(format!(
                "stream {name:?}: entry 0 has sequence {}, not 0",
                log.sequence
            )));
        }
        out.push((i, raw.clone(), payload));
        sequences.push(Sequence {
            sequence: log.sequence,
            span,
        });
    }
    Ok((out, sequences))
}

/// The sequence of the entry after one with `s` (`None` past `u64::MAX`).
pub fn next_sequence(s: Sequence) -> Option<u64> {
    s.sequence.checked_add(s.span)
}

/// Payload bytes of an entry's content (text: every line's value and delimiter), if the
/// content suits a stream of type `kind`: text with at least one line, binary with at least
/// one byte, or a datagram (which may be empty).
fn payload(kind: StreamType, content: Option<logdog_proto::wire::ContentFacts>) -> Option<u64> {
    let c = content?;
    let suits = match (kind, c.field) {
        (StreamType::Text, 10) => c.parts > 0,
        (StreamType::Binary, 11) => c.payload > 0,
        (StreamType::Datagram, 12) => true,
        _ => false,
    };
    suits.then_some(c.payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use logdog_proto::logpb::log_entry::Content;
    use prost::Message;

    fn view(b: &logpb::ButlerLogBundle) -> pb::BundleView {
        pb::BundleView::decode(b.encode_to_vec().as_slice()).unwrap()
    }

    fn good() -> logpb::ButlerLogBundle {
        logpb::ButlerLogBundle {
            project: "p".into(),
            prefix: "x".into(),
            entries: vec![logpb::butler_log_bundle::Entry {
                desc: Some(logpb::LogStreamDescriptor {
                    name: "s".into(),
                    content_type: "text/plain".into(),
                    timestamp: Some(prost_types::Timestamp::default()),
                    ..Default::default()
                }),
                terminal: true,
                terminal_index: 1,
                logs: (0..2)
                    .map(|i| logpb::LogEntry {
                        stream_index: i,
                        sequence: i,
                        content: Some(Content::Text(logpb::Text {
                            lines: vec![logpb::text::Line {
                                value: "a".into(),
                                delimiter: "\n".into(),
                            }],
                        })),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn accepts_a_good_bundle_and_names_what_is_wrong() {
        bundle(&view(&good())).unwrap();
        type Mutate = Box<dyn Fn(&mut logpb::ButlerLogBundle)>;
        let cases: Vec<(&str, Mutate)> = vec![
            ("project", Box::new(|b| b.project = "Bad".into())),
            ("prefix", Box::new(|b| b.prefix = "_x".into())),
            (
                "stream name",
                Box::new(|b| b.entries[0].desc.as_mut().unwrap().name = "a//b".into()),
            ),
            (
                "bytes in all",
                Box::new(|b| {
                    let d = b.entries[0].desc.as_mut().unwrap();
                    for i in 0..20 {
                        d.tags.insert(format!("k{i}"), "v".repeat(4000));
                    }
                }),
            ),
            (
                "contiguous",
                Box::new(|b| b.entries[0].logs[1].stream_index = 0),
            ),
            (
                "contiguous",
                Box::new(|b| b.entries[0].logs[1].stream_index = 5),
            ),
            (
                "past the terminal",
                Box::new(|b| b.entries[0].terminal_index = 0),
            ),
            (
                "out of range",
                Box::new(|b| b.entries[0].logs[0].stream_index = u64::MAX - 1),
            ),
            (
                "wrong type",
                Box::new(|b| b.entries[0].desc.as_mut().unwrap().stream_type = 1),
            ),
            (
                "sequence 0 where 1 follows",
                Box::new(|b| b.entries[0].logs[1].sequence = 0),
            ),
            (
                "entry 0 has sequence 5",
                Box::new(|b| {
                    for l in &mut b.entries[0].logs {
                        l.sequence += 5;
                    }
                }),
            ),
            (
                "more than 64 tags",
                Box::new(|b| {
                    let d = b.entries[0].desc.as_mut().unwrap();
                    for i in 0..65 {
                        d.tags.insert(format!("k{i}"), String::new());
                    }
                }),
            ),
            (
                "content type",
                Box::new(|b| b.entries[0].desc.as_mut().unwrap().content_type = "x".repeat(1025)),
            ),
            (
                "twice",
                Box::new(|b| {
                    let e = b.entries[0].clone();
                    b.entries.push(e);
                }),
            ),
        ];
        for (needle, mutate) in cases {
            let mut b = good();
            mutate(&mut b);
            let err = bundle(&view(&b)).unwrap_err().0;
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }
}
