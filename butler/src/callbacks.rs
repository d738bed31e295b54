//! Registration callbacks: code that watches streams' entries as they are cut.
//!
//! A [`RegistrationCallback`] is asked about every stream added after it was registered; it may
//! return an [`EntryCallback`] that then sees each of the stream's log entries in order, and
//! `None` exactly once when the stream has ended. With `wrap`, a text stream's callback sees
//! whole lines only (partial pieces are joined; a final unterminated line is delivered before
//! the end marker) and a datagram stream's callback sees whole datagrams only (fragments are
//! joined). Entries made by wrapping are numbered locally: `stream_index` counts delivered
//! entries and `sequence` counts delivered lines (text) or datagrams.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use logdog_proto::StreamType;
use logdog_proto::logpb::{self, log_entry::Content};

pub use logdog_bundler::shell::EntryCallback;

/// Asked about each new stream; returns a callback for its entries, or `None`.
pub type RegistrationCallback =
    Arc<dyn Fn(&logpb::LogStreamDescriptor) -> Option<EntryCallback> + Send + Sync>;

/// Wraps `cb` for a stream of type `kind` so that it sees whole lines or whole datagrams.
pub fn wrap(kind: StreamType, cb: EntryCallback) -> EntryCallback {
    match kind {
        StreamType::Text => {
            let mut w = Lines {
                cb,
                partial: BytesMut::new(),
                stream_index: 0,
                sequence: 0,
            };
            Box::new(move |e| w.on(e))
        }
        StreamType::Datagram => {
            let mut w = Datagrams {
                cb,
                partial: BytesMut::new(),
                next: 0,
            };
            Box::new(move |e| w.on(e))
        }
        StreamType::Binary => cb,
    }
}

struct Lines {
    cb: EntryCallback,
    /// The start of a line whose end has not arrived yet.
    partial: BytesMut,
    stream_index: u64,
    sequence: u64,
}

impl Lines {
    fn on(&mut self, e: Option<&logpb::LogEntry>) {
        let Some(e) = e else {
            if !self.partial.is_empty() {
                let line = logpb::text::Line {
                    value: std::mem::take(&mut self.partial).freeze(),
                    delimiter: String::new(),
                };
                self.deliver(vec![line], None);
            }
            (self.cb)(None);
            return;
        };
        let Some(Content::Text(text)) = &e.content else {
            return;
        };
        let mut lines = Vec::new();
        for line in &text.lines {
            if line.delimiter.is_empty() {
                self.partial.extend_from_slice(&line.value);
                continue;
            }
            let value = if self.partial.is_empty() {
                line.value.clone()
            } else {
                self.partial.extend_from_slice(&line.value);
                std::mem::take(&mut self.partial).freeze()
            };
            lines.push(logpb::text::Line {
                value,
                delimiter: line.delimiter.clone(),
            });
        }
        if !lines.is_empty() {
            self.deliver(lines, e.time_offset);
        }
    }

    fn deliver(
        &mut self,
        lines: Vec<logpb::text::Line>,
        time_offset: Option<prost_types::Duration>,
    ) {
        let n = lines.len() as u64;
        let entry = logpb::LogEntry {
            time_offset,
            prefix_index: 0,
            stream_index: self.stream_index,
            sequence: self.sequence,
            content: Some(Content::Text(logpb::Text { lines })),
        };
        (self.cb)(Some(&entry));
        self.stream_index += 1;
        self.sequence += n;
    }
}

struct Datagrams {
    cb: EntryCallback,
    /// Fragments of a datagram whose last fragment has not arrived yet.
    partial: BytesMut,
    next: u64,
}

impl Datagrams {
    fn on(&mut self, e: Option<&logpb::LogEntry>) {
        let Some(e) = e else {
            if !self.partial.is_empty() {
                tracing::warn!(
                    bytes = self.partial.len(),
                    "stream ended inside a fragmented datagram; the incomplete datagram is not delivered"
                );
            }
            (self.cb)(None);
            return;
        };
        let Some(Content::Datagram(d)) = &e.content else {
            return;
        };
        let data: Bytes = match &d.partial {
            None => d.data.clone(),
            Some(p) => {
                self.partial.extend_from_slice(&d.data);
                if !p.last {
                    return;
                }
                std::mem::take(&mut self.partial).freeze()
            }
        };
        let entry = logpb::LogEntry {
            time_offset: e.time_offset,
            prefix_index: 0,
            stream_index: self.next,
            sequence: self.next,
            content: Some(Content::Datagram(logpb::Datagram {
                data,
                partial: None,
            })),
        };
        (self.cb)(Some(&entry));
        self.next += 1;
    }
}
