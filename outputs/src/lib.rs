//! Bundle outputs: where the butler's bundles go.
//!
//! The butler's bundler cuts [`Bundle`]s no larger than [`Output::max_bundle_size`] and hands
//! them to an [`Output`], up to [`Output::max_in_flight`] at once. Outputs make no ordering
//! promise to each other, but a butler with `max_in_flight() == 1` sends bundles in the order
//! they were cut.
//!
//! # Layout
//! - [`log`]: writes a human-readable account of every entry to stderr.
//! - [`memory`]: keeps every bundle and reassembles streams; for tests.
//! - [`directory`]: writes every stream's bytes under a directory.
//! - [`grpc`]: sends bundles to a collector, retrying until they are acknowledged.
//! - [`null`]: discards bundles, counting them.
//! - [`spool`]: the durable on-disk log of bundles not yet acknowledged by the collector.
//! - [`fanout`]: several outputs at once, each with its own delivery policy.
//! - [`gelf`]: sends every line to a GELF (Graylog) receiver over UDP, TCP or TLS.
//! - [`spec`]: parses `--output` values such as `directory:PATH`.
//! - [`security`]: TLS to the collector, the bearer token and the prefix secret.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use logdog_proto::Bundle;

pub mod directory;
pub mod fanout;
pub mod gelf;
pub mod grpc;
pub mod log;
pub mod memory;
pub mod null;
pub mod security;
pub mod spec;
pub mod spool;

pub use directory::DirectoryOutput;
pub use fanout::FanOut;
pub use gelf::GelfOutput;
pub use grpc::GrpcOutput;
pub use log::LogOutput;
pub use memory::MemoryOutput;
pub use null::NullOutput;
pub use spec::{OutputSpec, ParseOutputSpecError, build_output};

/// Default [`Output::max_bundle_size`] of the null, memory and directory outputs: 8 MiB.
pub const DEFAULT_MAX_BUNDLE_SIZE: usize = 8 * 1024 * 1024;

/// An error from an output.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The output was used after [`Output::close`].
    #[error("output is closed")]
    Closed,
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// Counters every output keeps.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct OutputStats {
    /// Bundles accepted by [`Output::send`].
    pub sent_bundles: u64,
    /// Log entries in those bundles.
    pub sent_entries: u64,
    /// Payload bytes in those bundles.
    pub sent_bytes: u64,
    /// Bundles that could not be (fully) delivered.
    pub failed_bundles: u64,
    /// Payload bytes that could not be delivered.
    pub failed_bytes: u64,
    /// The spool's counters, when the output has one.
    pub spool: Option<spool::SpoolStats>,
}

impl fmt::Display for OutputStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sent {} bundles, {} entries, {} bytes; failed {} bundles, {} bytes",
            self.sent_bundles,
            self.sent_entries,
            self.sent_bytes,
            self.failed_bundles,
            self.failed_bytes
        )?;
        if let Some(sp) = &self.spool {
            write!(
                f,
                "; spooled {} bundles, {} bytes still in the spool",
                sp.spooled_records, sp.pending_bytes
            )?;
        }
        Ok(())
    }
}

/// Thread-safe [`OutputStats`] counters, for outputs to embed.
#[derive(Debug, Default)]
pub struct StatsCounter {
    sent_bundles: AtomicU64,
    sent_entries: AtomicU64,
    sent_bytes: AtomicU64,
    failed_bundles: AtomicU64,
    failed_bytes: AtomicU64,
}

impl StatsCounter {
    /// Records a bundle that was delivered.
    pub fn sent(&self, bundle: &Bundle) {
        self.sent_counts(bundle.log_count() as u64, bundle.payload_bytes() as u64);
    }

    /// Records a delivered bundle of `entries` log entries holding `payload_bytes` bytes.
    pub fn sent_counts(&self, entries: u64, payload_bytes: u64) {
        self.sent_bundles.fetch_add(1, Ordering::Relaxed);
        self.sent_entries.fetch_add(entries, Ordering::Relaxed);
        self.sent_bytes.fetch_add(payload_bytes, Ordering::Relaxed);
    }

    /// Records a bundle that was only partly delivered: `entries` log entries holding
    /// `payload_bytes` bytes got through. Pair it with [`failed`](Self::failed) for the rest.
    pub fn sent_partial(&self, entries: u64, payload_bytes: u64) {
        self.sent_counts(entries, payload_bytes);
    }

    /// Records a bundle, or part of one, that could not be delivered.
    pub fn failed(&self, payload_bytes: u64) {
        self.failed_bundles.fetch_add(1, Ordering::Relaxed);
        self.failed_bytes
            .fetch_add(payload_bytes, Ordering::Relaxed);
    }

    /// A snapshot of the counters.
    pub fn snapshot(&self) -> OutputStats {
        OutputStats {
            sent_bundles: self.sent_bundles.load(Ordering::Relaxed),
            sent_entries: self.sent_entries.load(Ordering::Relaxed),
            sent_bytes: self.sent_bytes.load(Ordering::Relaxed),
            failed_bundles: self.failed_bundles.load(Ordering::Relaxed),
            failed_bytes: self.failed_bytes.load(Ordering::Relaxed),
            spool: None,
        }
    }
}

/// How an output treats bundles it cannot deliver in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// The output acknowledges what it took; a slow one holds the command back (collector, directory).
    #[default]
    Acknowledged,
    /// The output drops what it cannot send at once and counts it (GELF over UDP).
    BestEffort,
}

/// Where bundles go.
///
/// Contract:
/// - [`send`](Output::send) may be called concurrently, up to
///   [`max_in_flight`](Output::max_in_flight) calls at once. It returns once the output has
///   taken responsibility for the bundle (written it, acknowledged it). An output retries what
///   it can itself; an `Err` means the bundle (or part of it) is lost and has been counted in
///   [`stats`](Output::stats).
/// - Every bundle the butler sends encodes to at most
///   [`max_bundle_size`](Output::max_bundle_size) bytes.
/// - [`close`](Output::close) flushes everything sent so far; no `send` follows it.
#[async_trait]
pub trait Output: Send + Sync + fmt::Debug {
    /// Delivers one bundle.
    async fn send(&self, bundle: Bundle) -> Result<(), OutputError>;

    /// Largest encoded bundle this output accepts, in bytes.
    fn max_bundle_size(&self) -> usize;

    /// How many `send` calls may run at once.
    fn max_in_flight(&self) -> usize {
        1
    }

    /// Counters.
    fn stats(&self) -> OutputStats;

    /// How this output treats bundles it cannot deliver in time.
    fn delivery(&self) -> Delivery {
        Delivery::Acknowledged
    }

    /// Whether every `send` still running keeps its bundle safe by itself, however long it
    /// takes (a send waiting for room on a full spool disk), so that the butler waits for it
    /// past its flush timeout rather than give the bundle up. The default, `false`: a send
    /// waits on a remote end, and is abandoned (and counted) at the flush timeout.
    fn holds_sends(&self) -> bool {
        false
    }

    /// What children should see as `LOGDOG_COORDINATOR_HOST`, if anything.
    fn coordinator_host(&self) -> Option<String> {
        None
    }

    /// Flushes and releases everything. Called once, after the last `send`.
    async fn close(&self) -> Result<(), OutputError>;
}

/// Bundles for the unit tests of the outputs.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use bytes::Bytes;
    use logdog_proto::{Bundle, BundleEntry, Content, Descriptor, Entry, logpb};

    /// A bundle of project `p`, prefix `x`: one entry of text `data` of the stream `out`, at
    /// `index` (prefix index, stream index and sequence alike).
    pub(crate) fn text_bundle(data: &'static [u8], index: u64) -> Bundle {
        let desc = Arc::new(Descriptor::new(logpb::LogStreamDescriptor {
            name: "out".into(),
            ..Default::default()
        }));
        Bundle {
            timestamp: Default::default(),
            project: "p".into(),
            prefix: "x".into(),
            entries: vec![BundleEntry {
                desc,
                terminal_index: None,
                logs: vec![Entry {
                    time_offset: Default::default(),
                    prefix_index: index,
                    stream_index: index,
                    sequence: index,
                    content: Content::Text(Bytes::from_static(data)),
                }],
            }],
        }
    }
}
