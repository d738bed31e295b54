//! The log output: writes a human-readable account of every bundle to stderr.
//!
//! Each bundle is rendered in full and then written with a single `write_all`, so accounts of
//! different bundles never interleave. The format, one item per line:
//!
//! ```text
//! bundle project="proj" prefix="pre" streams=1 entries=2 bytes=10
//! stream proj/pre/+/out type=TEXT content_type="text/plain; charset=utf-8"
//!   entry stream_index=0 prefix_index=4 sequence=0 time_offset=0.250000000s
//!     line "hello" delimiter "\n"
//!     line "wor" delimiter ""
//!   entry stream_index=1 prefix_index=5 sequence=16 time_offset=1.000000000s
//!     binary 2 bytes
//!       00000000  00 ff
//!   terminal terminal_index=1
//! ```
//!
//! Text values are decoded as lossy UTF-8 and escaped with Rust's `{:?}`. Binary and datagram
//! payloads are hex-dumped, at most [`HEX_DUMP_LIMIT`] bytes, followed by `… N more bytes`. A
//! datagram fragment shows its `index`, `size` and `last` fields. A stream that ended without
//! entries shows `terminal (ended without entries)`.

use std::fmt::{self, Write as _};
use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use logdog_proto::{Bundle, BundleEntry, Content, Entry, StreamType, bundle::text_lines};

use crate::{Output, OutputError, OutputStats, StatsCounter};

/// Default [`Output::max_bundle_size`] of the log output: 1 MiB, as in LogDog.
pub const DEFAULT_LOG_BUNDLE_SIZE: usize = 1024 * 1024;

/// Most payload bytes hex-dumped per entry.
pub const HEX_DUMP_LIMIT: usize = 64;

enum Sink {
    Stderr,
    Writer(Mutex<Box<dyn Write + Send>>),
}

/// Writes a human-readable account of every bundle to stderr (or to an injected writer); see
/// the [module docs](self) for the format.
pub struct LogOutput {
    max_bundle_size: usize,
    sink: Sink,
    stats: StatsCounter,
    closed: AtomicBool,
}

impl fmt::Debug for LogOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogOutput")
            .field("max_bundle_size", &self.max_bundle_size)
            .field(
                "sink",
                &match self.sink {
                    Sink::Stderr => "stderr",
                    Sink::Writer(_) => "writer",
                },
            )
            .field("stats", &self.stats)
            .finish()
    }
}

impl Default for LogOutput {
    /// Writes to stderr, with bundles of up to [`DEFAULT_LOG_BUNDLE_SIZE`] bytes.
    fn default() -> Self {
        Self::new(DEFAULT_LOG_BUNDLE_SIZE)
    }
}

impl LogOutput {
    /// Writes to stderr, accepting bundles of up to `max_bundle_size` bytes.
    pub fn new(max_bundle_size: usize) -> Self {
        Self {
            max_bundle_size,
            sink: Sink::Stderr,
            stats: StatsCounter::default(),
            closed: false.into(),
        }
    }

    /// Writes to `writer` instead of stderr, accepting bundles of up to `max_bundle_size` bytes.
    pub fn with_writer(max_bundle_size: usize, writer: Box<dyn Write + Send>) -> Self {
        Self {
            max_bundle_size,
            sink: Sink::Writer(Mutex::new(writer)),
            stats: StatsCounter::default(),
            closed: false.into(),
        }
    }

    fn write(&self, text: &[u8]) -> std::io::Result<()> {
        match &self.sink {
            Sink::Stderr => {
                let mut w = std::io::stderr().lock();
                w.write_all(text)?;
                w.flush()
            }
            Sink::Writer(m) => {
                let mut w = m.lock().unwrap_or_else(|e| e.into_inner());
                w.write_all(text)?;
                w.flush()
            }
        }
    }
}

/// Renders `bundle` as described in the [module docs](self).
pub fn render_bundle(bundle: &Bundle, out: &mut String) -> fmt::Result {
    writeln!(
        out,
        "bundle project={:?} prefix={:?} streams={} entries={} bytes={}",
        bundle.project,
        bundle.prefix,
        bundle.entries.len(),
        bundle.log_count(),
        bundle.payload_bytes()
    )?;
    for be in &bundle.entries {
        render_stream(bundle, be, out)?;
    }
    Ok(())
}

fn render_stream(bundle: &Bundle, be: &BundleEntry, out: &mut String) -> fmt::Result {
    let desc = be.desc.get();
    // Butlers send the descriptor's prefix empty; the bundle carries it.
    let prefix = if bundle.prefix.is_empty() {
        &desc.prefix
    } else {
        &bundle.prefix
    };
    let ty = match be.desc.stream_type() {
        StreamType::Text => "TEXT",
        StreamType::Binary => "BINARY",
        StreamType::Datagram => "DATAGRAM",
    };
    writeln!(
        out,
        "stream {}/{}/+/{} type={ty} content_type={:?}",
        bundle.project, prefix, desc.name, desc.content_type
    )?;
    for e in &be.logs {
        render_entry(e, out)?;
    }
    match be.terminal_index {
        None => {}
        Some(u64::MAX) => writeln!(out, "  terminal (ended without entries)")?,
        Some(i) => writeln!(out, "  terminal terminal_index={i}")?,
    }
    Ok(())
}

fn render_entry(e: &Entry, out: &mut String) -> fmt::Result {
    writeln!(
        out,
        "  entry stream_index={} prefix_index={} sequence={} time_offset={}",
        e.stream_index,
        e.prefix_index,
        e.sequence,
        DisplayDuration(&e.time_offset)
    )?;
    match &e.content {
        Content::Text(data) => {
            for (value, delim) in text_lines(data) {
                writeln!(
                    out,
                    "    line {:?} delimiter {delim:?}",
                    String::from_utf8_lossy(value)
                )?;
            }
        }
        Content::Binary(data) => {
            writeln!(out, "    binary {} bytes", data.len())?;
            hex_dump(data, out)?;
        }
        Content::Datagram { data, partial } => {
            write!(out, "    datagram {} bytes", data.len())?;
            if let Some(p) = partial {
                write!(
                    out,
                    ", fragment index={} size={} last={}",
                    p.index, p.size, p.last
                )?;
            }
            out.push('\n');
            hex_dump(data, out)?;
        }
    }
    Ok(())
}

fn hex_dump(data: &[u8], out: &mut String) -> fmt::Result {
    let shown = &data[..data.len().min(HEX_DUMP_LIMIT)];
    for (i, chunk) in shown.chunks(16).enumerate() {
        write!(out, "      {:08x} ", i * 16)?;
        for b in chunk {
            write!(out, " {b:02x}")?;
        }
        out.push('\n');
    }
    if data.len() > shown.len() {
        writeln!(out, "      … {} more bytes", data.len() - shown.len())?;
    }
    Ok(())
}

/// Formats a protobuf duration as seconds with nine decimals, e.g. `-1.500000000s`.
struct DisplayDuration<'a>(&'a prost_types::Duration);

impl fmt::Display for DisplayDuration<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = i128::from(self.0.seconds) * 1_000_000_000 + i128::from(self.0.nanos);
        let sign = if total < 0 { "-" } else { "" };
        let abs = total.unsigned_abs();
        write!(
            f,
            "{sign}{}.{:09}s",
            abs / 1_000_000_000,
            abs % 1_000_000_000
        )
    }
}

#[async_trait]
impl Output for LogOutput {
    async fn send(&self, bundle: Bundle) -> Result<(), OutputError> {
        if self.closed.load(Ordering::Acquire) {
            self.stats.failed(bundle.payload_bytes() as u64);
            return Err(OutputError::Closed);
        }
        let mut text = String::new();
        if render_bundle(&bundle, &mut text).is_err() {
            self.stats.failed(bundle.payload_bytes() as u64);
            return Err(OutputError::Other("formatting a bundle failed".into()));
        }
        match self.write(text.as_bytes()) {
            Ok(()) => {
                self.stats.sent(&bundle);
                Ok(())
            }
            Err(source) => {
                self.stats.failed(bundle.payload_bytes() as u64);
                Err(OutputError::Io {
                    context: "writing bundle log".into(),
                    source,
                })
            }
        }
    }

    fn max_bundle_size(&self) -> usize {
        self.max_bundle_size
    }

    fn max_in_flight(&self) -> usize {
        1
    }

    fn stats(&self) -> OutputStats {
        self.stats.snapshot()
    }

    async fn close(&self) -> Result<(), OutputError> {
        self.closed.store(true, Ordering::Release);
        self.write(b"").map_err(|source| OutputError::Io {
            context: "flushing log".into(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use logdog_proto::{Descriptor, logpb};

    use super::*;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn desc(name: &str, t: StreamType) -> Arc<Descriptor> {
        Arc::new(Descriptor::new(logpb::LogStreamDescriptor {
            name: name.into(),
            stream_type: t as i32,
            content_type: logdog_proto::default_content_type(t).into(),
            ..Default::default()
        }))
    }

    fn entry(i: u64, content: Content) -> Entry {
        Entry {
            time_offset: prost_types::Duration {
                seconds: 1,
                nanos: 250_000_000,
            },
            prefix_index: 10 + i,
            stream_index: i,
            sequence: i * 100,
            content,
        }
    }

    #[tokio::test]
    async fn renders_every_kind_of_entry() {
        let buf = Shared::default();
        let out = LogOutput::with_writer(4096, Box::new(buf.clone()));
        assert_eq!(out.max_bundle_size(), 4096);
        let big: Vec<u8> = (0..100u8).collect();
        let bundle = Bundle {
            timestamp: Default::default(),
            project: "proj".into(),
            prefix: "pre".into(),
            entries: vec![
                BundleEntry {
                    desc: desc("bin", StreamType::Binary),
                    terminal_index: Some(0),
                    logs: vec![entry(0, Content::Binary(Bytes::from(big)))],
                },
                BundleEntry {
                    desc: desc("dg", StreamType::Datagram),
                    terminal_index: None,
                    logs: vec![
                        entry(
                            0,
                            Content::Datagram {
                                data: Bytes::from_static(b"\x01\x02"),
                                partial: None,
                            },
                        ),
                        entry(
                            1,
                            Content::Datagram {
                                data: Bytes::from_static(b"ab"),
                                partial: Some(logpb::datagram::Partial {
                                    index: 0,
                                    size: 4,
                                    last: false,
                                }),
                            },
                        ),
                    ],
                },
                BundleEntry {
                    desc: desc("empty", StreamType::Text),
                    terminal_index: Some(u64::MAX),
                    logs: vec![],
                },
                BundleEntry {
                    desc: desc("out", StreamType::Text),
                    terminal_index: None,
                    logs: vec![entry(
                        0,
                        Content::Text(Bytes::from_static(b"hi \"x\"\r\n\xffok\nrest")),
                    )],
                },
            ],
        };
        out.send(bundle).await.unwrap();
        out.close().await.unwrap();
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let expected = "\
bundle project=\"proj\" prefix=\"pre\" streams=4 entries=4 bytes=120
stream proj/pre/+/bin type=BINARY content_type=\"application/octet-stream\"
  entry stream_index=0 prefix_index=10 sequence=0 time_offset=1.250000000s
    binary 100 bytes
      00000000  00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f
      00000010  10 11 12 13 14 15 16 17 18 19 1a 1b 1c 1d 1e 1f
      00000020  20 21 22 23 24 25 26 27 28 29 2a 2b 2c 2d 2e 2f
      00000030  30 31 32 33 34 35 36 37 38 39 3a 3b 3c 3d 3e 3f
      … 36 more bytes
  terminal terminal_index=0
stream proj/pre/+/dg type=DATAGRAM content_type=\"application/x-logdog-datagram\"
  entry stream_index=0 prefix_index=10 sequence=0 time_offset=1.250000000s
    datagram 2 bytes
      00000000  01 02
  entry stream_index=1 prefix_index=11 sequence=100 time_offset=1.250000000s
    datagram 2 bytes, fragment index=0 size=4 last=false
      00000000  61 62
stream proj/pre/+/empty type=TEXT content_type=\"text/plain; charset=utf-8\"
  terminal (ended without entries)
stream proj/pre/+/out type=TEXT content_type=\"text/plain; charset=utf-8\"
  entry stream_index=0 prefix_index=10 sequence=0 time_offset=1.250000000s
    line \"hi \\\"x\\\"\" delimiter \"\\r\\n\"
    line \"\u{fffd}ok\" delimiter \"\\n\"
    line \"rest\" delimiter \"\"
";
        assert_eq!(text, expected);
        let s = out.stats();
        assert_eq!((s.sent_bundles, s.sent_entries, s.sent_bytes), (1, 4, 120));
    }

    #[test]
    fn durations() {
        let d =
            |seconds, nanos| DisplayDuration(&prost_types::Duration { seconds, nanos }).to_string();
        assert_eq!(d(0, 0), "0.000000000s");
        assert_eq!(d(-1, -500_000_000), "-1.500000000s");
        assert_eq!(d(3, 7), "3.000000007s");
    }

    #[test]
    fn defaults() {
        let out = LogOutput::default();
        assert_eq!(out.max_bundle_size(), 1024 * 1024);
        assert_eq!(out.max_in_flight(), 1);
        assert!(format!("{out:?}").contains("stderr"));
    }
}
