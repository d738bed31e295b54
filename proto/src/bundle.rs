//! The compact bundle model.
//!
//! The bundler cuts entries as zero-copy slices of the bytes it read, and outputs write those
//! slices straight out. Building the prost types instead would cost an allocation per text line
//! (each `Line` owns a `String` delimiter), which dominates at hundreds of MiB per second.
//!
//! A text entry is stored as the exact bytes of its lines, delimiters included: every `\n` ends
//! a line (`\r\n` when the byte before it is `\r`), and bytes after the last `\n` form a partial
//! line with an empty delimiter. [`Bundle::encode`] writes the same bytes prost would write for
//! [`Bundle::to_logpb`]; a property test pins that.

use std::sync::Arc;

use bytes::{BufMut, Bytes};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};

use crate::logpb;

/// A stream descriptor with its encoding cached: it is repeated in every bundle entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Descriptor {
    desc: logpb::LogStreamDescriptor,
    encoded: Bytes,
}

impl Descriptor {
    /// Wraps a descriptor, encoding it once.
    pub fn new(desc: logpb::LogStreamDescriptor) -> Self {
        let encoded = Bytes::from(desc.encode_to_vec());
        Self { desc, encoded }
    }

    /// The descriptor.
    pub fn get(&self) -> &logpb::LogStreamDescriptor {
        &self.desc
    }

    /// The stream's name.
    pub fn name(&self) -> &str {
        &self.desc.name
    }

    /// The stream's type (unknown values read as text).
    pub fn stream_type(&self) -> logpb::StreamType {
        logpb::StreamType::try_from(self.desc.stream_type).unwrap_or(logpb::StreamType::Text)
    }

    /// Encoded size of the descriptor message.
    pub fn encoded_len(&self) -> usize {
        self.encoded.len()
    }
}

/// A bundle: entries of many streams of one prefix.
#[derive(Debug, Clone, PartialEq)]
pub struct Bundle {
    /// When the bundle was started.
    pub timestamp: prost_types::Timestamp,
    /// The project.
    pub project: String,
    /// The prefix of every stream in the bundle.
    pub prefix: String,
    /// One entry per stream, sorted by stream name.
    pub entries: Vec<BundleEntry>,
}

/// One stream's part of a bundle.
#[derive(Debug, Clone, PartialEq)]
pub struct BundleEntry {
    /// The stream's descriptor.
    pub desc: Arc<Descriptor>,
    /// `Some(last stream_index)` once the stream has ended. A stream that ended without any
    /// entry has terminal index `u64::MAX` (−1 as a signed index: "no entries").
    pub terminal_index: Option<u64>,
    /// The stream's entries, with contiguous `stream_index` values.
    pub logs: Vec<Entry>,
}

/// One log entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Time relative to the descriptor's timestamp.
    pub time_offset: prost_types::Duration,
    /// Index among all entries of the prefix.
    pub prefix_index: u64,
    /// Index within the stream.
    pub stream_index: u64,
    /// Text: first line's number; binary: byte offset; datagram: datagram number.
    pub sequence: u64,
    /// The payload.
    pub content: Content,
}

/// The payload of an entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    /// The exact bytes of one or more lines (see the module docs for how lines are derived).
    Text(Bytes),
    /// Binary bytes.
    Binary(Bytes),
    /// A datagram, or one fragment of one.
    Datagram {
        /// The bytes.
        data: Bytes,
        /// Present when this is a fragment of a larger datagram.
        partial: Option<logpb::datagram::Partial>,
    },
}

impl Content {
    /// The payload bytes, as written by the stream (text delimiters included).
    pub fn data(&self) -> &Bytes {
        match self {
            Content::Text(b) | Content::Binary(b) => b,
            Content::Datagram { data, .. } => data,
        }
    }
}

/// Splits text entry bytes into `(value, delimiter)` lines.
pub fn text_lines(data: &[u8]) -> impl Iterator<Item = (&[u8], &'static str)> + '_ {
    let mut rest = data;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        match memchr::memchr(b'\n', rest) {
            Some(i) => {
                let (line, tail) = rest.split_at(i + 1);
                rest = tail;
                if i > 0 && line[i - 1] == b'\r' {
                    Some((&line[..i - 1], "\r\n"))
                } else {
                    Some((&line[..i], "\n"))
                }
            }
            None => Some((std::mem::take(&mut rest), "")),
        }
    })
}

/// Encoded size of one `Text.lines` field (key, length and `Line` message) for a line whose
/// value has `value_len` bytes and whose delimiter has `delim_len` bytes.
#[inline]
pub fn text_line_field_len(value_len: usize, delim_len: usize) -> usize {
    let mut l = 0;
    if value_len > 0 {
        l += 1 + encoded_len_varint(value_len as u64) + value_len;
    }
    if delim_len > 0 {
        l += 2 + delim_len;
    }
    1 + encoded_len_varint(l as u64) + l
}

/// Encoded size of a `Text` message holding `data`.
pub fn text_encoded_len(data: &[u8]) -> usize {
    text_lines(data)
        .map(|(v, d)| text_line_field_len(v.len(), d.len()))
        .sum()
}

/// Encoded size of a length-delimited field with a one-byte key (every field number used by
/// the bundle messages is below 16) and a body of `len` bytes.
#[inline]
pub fn len_delimited(tag: u32, len: usize) -> usize {
    debug_assert!(tag < 16);
    1 + encoded_len_varint(len as u64) + len
}

fn varint_field_len(v: u64) -> usize {
    if v == 0 { 0 } else { 1 + encoded_len_varint(v) }
}

fn put_len_delimited(tag: u32, len: usize, buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

fn put_varint_field(tag: u32, v: u64, buf: &mut impl BufMut) {
    if v != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(v, buf);
    }
}

impl Content {
    /// Encoded size of the content message (without its key and length).
    fn body_len(&self) -> usize {
        match self {
            Content::Text(data) => text_encoded_len(data),
            Content::Binary(data) => bytes_field_len(2, data.len()),
            Content::Datagram { data, partial } => {
                bytes_field_len(1, data.len())
                    + partial
                        .as_ref()
                        .map_or(0, |p| prost::encoding::message::encoded_len(2, p))
            }
        }
    }

    fn tag(&self) -> u32 {
        match self {
            Content::Text(_) => 10,
            Content::Binary(_) => 11,
            Content::Datagram { .. } => 12,
        }
    }

    fn encode_body(&self, buf: &mut impl BufMut) {
        match self {
            Content::Text(data) => {
                for (value, delim) in text_lines(data) {
                    let mut l = 0;
                    if !value.is_empty() {
                        l += 1 + encoded_len_varint(value.len() as u64) + value.len();
                    }
                    if !delim.is_empty() {
                        l += 2 + delim.len();
                    }
                    put_len_delimited(1, l, buf);
                    if !value.is_empty() {
                        put_len_delimited(1, value.len(), buf);
                        buf.put_slice(value);
                    }
                    if !delim.is_empty() {
                        put_len_delimited(2, delim.len(), buf);
                        buf.put_slice(delim.as_bytes());
                    }
                }
            }
            Content::Binary(data) => put_bytes_field(2, data, buf),
            Content::Datagram { data, partial } => {
                put_bytes_field(1, data, buf);
                if let Some(p) = partial {
                    prost::encoding::message::encode(2, p, buf);
                }
            }
        }
    }
}

fn bytes_field_len(tag: u32, len: usize) -> usize {
    if len == 0 { 0 } else { len_delimited(tag, len) }
}

fn put_bytes_field(tag: u32, data: &[u8], buf: &mut impl BufMut) {
    if !data.is_empty() {
        put_len_delimited(tag, data.len(), buf);
        buf.put_slice(data);
    }
}

impl Entry {
    /// Encoded size of everything in the `LogEntry` message except its content field.
    pub fn header_len(&self) -> usize {
        prost::encoding::message::encoded_len(1, &self.time_offset)
            + varint_field_len(self.prefix_index)
            + varint_field_len(self.stream_index)
            + varint_field_len(self.sequence)
    }

    /// Encoded size of the `LogEntry` message.
    pub fn encoded_len(&self) -> usize {
        self.header_len() + len_delimited(self.content.tag(), self.content.body_len())
    }

    fn encode_raw(&self, buf: &mut impl BufMut) {
        prost::encoding::message::encode(1, &self.time_offset, buf);
        put_varint_field(2, self.prefix_index, buf);
        put_varint_field(3, self.stream_index, buf);
        put_varint_field(4, self.sequence, buf);
        put_len_delimited(self.content.tag(), self.content.body_len(), buf);
        self.content.encode_body(buf);
    }

    /// Converts to the prost type.
    pub fn to_logpb(&self) -> logpb::LogEntry {
        use logpb::log_entry::Content as C;
        let content = match &self.content {
            Content::Text(data) => C::Text(logpb::Text {
                lines: text_lines(data)
                    .map(|(v, d)| logpb::text::Line {
                        value: data.slice_ref(v),
                        delimiter: d.to_string(),
                    })
                    .collect(),
            }),
            Content::Binary(data) => C::Binary(logpb::Binary { data: data.clone() }),
            Content::Datagram { data, partial } => C::Datagram(logpb::Datagram {
                data: data.clone(),
                partial: *partial,
            }),
        };
        logpb::LogEntry {
            time_offset: Some(self.time_offset),
            prefix_index: self.prefix_index,
            stream_index: self.stream_index,
            sequence: self.sequence,
            content: Some(content),
        }
    }
}

impl BundleEntry {
    /// Encoded size of the `ButlerLogBundle.Entry` message with no logs.
    pub fn base_len(desc_len: usize, terminal_index: Option<u64>) -> usize {
        len_delimited(1, desc_len) + terminal_index.map_or(0, |i| 2 + varint_field_len(i))
    }

    /// Encoded size of a `logs` field holding an entry of encoded size `entry_len`.
    pub fn log_field_len(entry_len: usize) -> usize {
        len_delimited(5, entry_len)
    }

    /// Encoded size of the `ButlerLogBundle.Entry` message.
    pub fn encoded_len(&self) -> usize {
        Self::base_len(self.desc.encoded_len(), self.terminal_index)
            + self
                .logs
                .iter()
                .map(|e| Self::log_field_len(e.encoded_len()))
                .sum::<usize>()
    }

    fn encode_raw(&self, buf: &mut impl BufMut) {
        put_len_delimited(1, self.desc.encoded.len(), buf);
        buf.put_slice(&self.desc.encoded);
        if let Some(i) = self.terminal_index {
            encode_key(3, WireType::Varint, buf);
            encode_varint(1, buf);
            put_varint_field(4, i, buf);
        }
        for e in &self.logs {
            put_len_delimited(5, e.encoded_len(), buf);
            e.encode_raw(buf);
        }
    }

    /// Converts to the prost type.
    pub fn to_logpb(&self) -> logpb::butler_log_bundle::Entry {
        logpb::butler_log_bundle::Entry {
            desc: Some(self.desc.desc.clone()),
            deprecated_entry_secret: Bytes::new(),
            terminal: self.terminal_index.is_some(),
            terminal_index: self.terminal_index.unwrap_or(0),
            logs: self.logs.iter().map(Entry::to_logpb).collect(),
        }
    }
}

impl Bundle {
    /// Encoded size of a bundle with this timestamp, project and prefix and no entries.
    pub fn base_len(timestamp: &prost_types::Timestamp, project: &str, prefix: &str) -> usize {
        prost::encoding::message::encoded_len(2, timestamp)
            + bytes_field_len(4, project.len())
            + bytes_field_len(5, prefix.len())
    }

    /// Encoded size of an `entries` field holding an entry of encoded size `entry_len`.
    pub fn entry_field_len(entry_len: usize) -> usize {
        len_delimited(3, entry_len)
    }

    /// Encoded size of the `ButlerLogBundle` message.
    pub fn encoded_len(&self) -> usize {
        Self::base_len(&self.timestamp, &self.project, &self.prefix)
            + self
                .entries
                .iter()
                .map(|e| Self::entry_field_len(e.encoded_len()))
                .sum::<usize>()
    }

    /// Writes the `ButlerLogBundle` encoding to `buf`.
    pub fn encode(&self, buf: &mut impl BufMut) {
        prost::encoding::message::encode(2, &self.timestamp, buf);
        for e in &self.entries {
            put_len_delimited(3, e.encoded_len(), buf);
            e.encode_raw(buf);
        }
        put_bytes_field(4, self.project.as_bytes(), buf);
        put_bytes_field(5, self.prefix.as_bytes(), buf);
    }

    /// The `ButlerLogBundle` encoding.
    pub fn encode_to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.encoded_len());
        self.encode(&mut v);
        v
    }

    /// Converts to the prost type.
    pub fn to_logpb(&self) -> logpb::ButlerLogBundle {
        logpb::ButlerLogBundle {
            deprecated_source: String::new(),
            timestamp: Some(self.timestamp),
            entries: self.entries.iter().map(BundleEntry::to_logpb).collect(),
            project: self.project.clone(),
            prefix: self.prefix.clone(),
            secret: Bytes::new(),
        }
    }

    /// Number of log entries in the bundle.
    pub fn log_count(&self) -> usize {
        self.entries.iter().map(|e| e.logs.len()).sum()
    }

    /// Payload bytes in the bundle.
    pub fn payload_bytes(&self) -> usize {
        self.entries
            .iter()
            .flat_map(|e| &e.logs)
            .map(|l| l.content.data().len())
            .sum()
    }
}
