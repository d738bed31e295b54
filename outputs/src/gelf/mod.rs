//! The GELF output: every text line and every datagram becomes one GELF 1.1 message sent to
//! a Graylog-compatible receiver over UDP, TCP or TLS.
//!
//! Layers, each in its own module:
//! - [`message`]: the JSON object of one line or datagram;
//! - [`encoding`]: packets (compressed, chunked) for UDP, NUL-terminated frames for streams;
//! - [`session`]: a TCP or TLS connection kept up across failures;
//! - [`transport`]: the sockets.
//!
//! Over UDP the output is best effort ([`Delivery::BestEffort`]): a datagram the kernel does
//! not take within [`transport::UDP_SEND_WAIT`] is dropped, and the bytes of the lines so
//! lost are counted in [`OutputStats::failed_bytes`]. Over TCP and TLS a send returns once its
//! messages are written to the connection; what the session gives up is counted the same way
//! and the send fails.
//!
//! Lines cut across entries are joined before they are sent, datagram fragments likewise.
//! Empty lines are not sent (GELF requires a non-empty `short_message`); their numbers are
//! skipped. Binary streams are not sent. Both are counted ([`GelfStats`]) and logged.

pub mod encoding;
pub mod message;
pub mod session;
pub mod transport;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use logdog_proto::{Bundle, Content, bundle::text_lines};
use serde_json::{Map, Value};

use crate::{Delivery, Output, OutputError, OutputStats, StatsCounter};
use encoding::{Compression, DEFAULT_CHUNK_SIZE};
use message::StreamFields;
use session::{Backoff, Session};
use transport::{Sent, StreamConnector, UdpTransport};

/// The output's [`Output::max_bundle_size`]: 1 MiB.
pub const GELF_BUNDLE_SIZE: usize = 1024 * 1024;

/// Most bytes of one line (or datagram) held while its pieces arrive; a longer one is sent
/// in pieces of about this size, each a message with the line's number.
pub const MAX_HELD_BYTES: usize = 1024 * 1024;

/// Most bytes of frames written to a TCP or TLS connection in one batch.
pub const STREAM_BATCH_BYTES: usize = 64 * 1024;

/// How messages travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GelfTransport {
    /// UDP datagrams, compressed and chunked.
    Udp,
    /// A TCP connection, NUL-terminated messages.
    Tcp,
    /// The same over TLS.
    Tls,
}

impl GelfTransport {
    /// The scheme of the output spec: `gelf+udp`, `gelf+tcp` or `gelf+tls`.
    pub fn scheme(self) -> &'static str {
        match self {
            Self::Udp => "gelf+udp",
            Self::Tcp => "gelf+tcp",
            Self::Tls => "gelf+tls",
        }
    }
}

/// Everything a GELF output needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GelfConfig {
    /// UDP, TCP or TLS.
    pub transport: GelfTransport,
    /// The receiver, `HOST:PORT`.
    pub address: String,
    /// Packet compression (UDP only).
    pub compression: Compression,
    /// Largest datagram, chunk header included (UDP only).
    pub chunk_size: usize,
    /// The `host` field of every message; `None`: this machine's host name.
    pub host: Option<String>,
    /// With TLS: trust this CA certificate (PEM) instead of the system's roots.
    pub ca_cert: Option<PathBuf>,
}

impl GelfConfig {
    /// A configuration with the defaults: gzip, [`DEFAULT_CHUNK_SIZE`], this host's name.
    pub fn new(transport: GelfTransport, address: &str) -> Self {
        Self {
            transport,
            address: address.to_owned(),
            compression: Compression::default(),
            chunk_size: DEFAULT_CHUNK_SIZE,
            host: None,
            ca_cert: None,
        }
    }
}

/// This machine's host name, or `localhost` when it cannot be read.
pub fn local_host_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_owned())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// What the GELF output did besides sending bundles.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct GelfStats {
    /// Messages handed to the transport.
    pub messages_sent: u64,
    /// Messages dropped (UDP send buffer full, receiver unreachable, too large to encode).
    pub messages_dropped: u64,
    /// Messages shortened to fit in 128 chunks.
    pub messages_truncated: u64,
    /// Empty lines, not sent.
    pub empty_lines: u64,
    /// Bytes of binary streams, not sent.
    pub binary_bytes: u64,
}

#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    dropped: AtomicU64,
    truncated: AtomicU64,
    empty: AtomicU64,
    binary: AtomicU64,
    warned_drop: AtomicBool,
    warned_truncated: AtomicBool,
    warned_binary: AtomicBool,
}

/// Warns once per flag.
fn warn_once(flag: &AtomicBool, what: &str) {
    if !flag.swap(true, Ordering::Relaxed) {
        tracing::warn!("GELF output: {what} (counted; one warning only)");
    }
}

enum Link {
    Udp(UdpTransport),
    Stream(Box<Session>),
}

/// A line or datagram waiting for its end.
#[derive(Debug, Default)]
struct Pending {
    data: Vec<u8>,
    /// Payload bytes of the pieces held (delimiters included).
    bytes: u64,
    number: u64,
    timestamp: f64,
}

/// One message ready to encode, with what it stands for.
struct Outgoing {
    msg: Map<String, Value>,
    /// Payload bytes of the line or datagram (delimiter included).
    bytes: u64,
    /// Index of its entry in the bundle.
    entry: usize,
}

/// Sends every line to a GELF receiver; see the [module docs](self).
pub struct GelfOutput {
    config: GelfConfig,
    host: String,
    link: Link,
    pending: Mutex<HashMap<(String, String), Pending>>,
    id_seed: u64,
    next_id: AtomicU64,
    stats: StatsCounter,
    counters: Counters,
    closed: AtomicBool,
}

impl fmt::Debug for GelfOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GelfOutput")
            .field("config", &self.config)
            .field("host", &self.host)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl GelfOutput {
    /// An output as `config` describes. UDP resolves the address now; TCP and TLS connect
    /// at the first send.
    ///
    /// # Errors
    /// The address does not resolve (UDP), or the TLS set-up failed.
    pub fn new(config: GelfConfig) -> Result<Self, OutputError> {
        Self::with_backoff(config, Backoff::default())
    }

    /// [`new`](Self::new) with the given reconnect timing for TCP and TLS.
    ///
    /// # Errors
    /// As for [`new`](Self::new).
    pub fn with_backoff(config: GelfConfig, backoff: Backoff) -> Result<Self, OutputError> {
        let other = |e: transport::TransportError| {
            OutputError::Other(format!(
                "{}://{}: {e}",
                config.transport.scheme(),
                config.address
            ))
        };
        let link = match config.transport {
            GelfTransport::Udp => Link::Udp(UdpTransport::connect(&config.address).map_err(other)?),
            GelfTransport::Tcp => Link::Stream(Box::new(Session::new(
                StreamConnector::tcp(&config.address),
                backoff,
            ))),
            GelfTransport::Tls => Link::Stream(Box::new(Session::new(
                StreamConnector::tls(&config.address, config.ca_cert.as_deref()).map_err(other)?,
                backoff,
            ))),
        };
        let mut seed = [0u8; 8];
        // A weak seed only makes message ids of two butlers likelier to collide.
        let _ = getrandom::fill(&mut seed);
        Ok(Self {
            host: config.host.clone().unwrap_or_else(local_host_name),
            config,
            link,
            pending: Mutex::new(HashMap::new()),
            id_seed: u64::from_be_bytes(seed),
            next_id: AtomicU64::new(0),
            stats: StatsCounter::default(),
            counters: Counters::default(),
            closed: AtomicBool::new(false),
        })
    }

    /// The `host` field of the messages.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// What was sent, dropped, truncated or left out, in messages.
    pub fn gelf_stats(&self) -> GelfStats {
        let c = &self.counters;
        GelfStats {
            messages_sent: c.sent.load(Ordering::Relaxed),
            messages_dropped: c.dropped.load(Ordering::Relaxed),
            messages_truncated: c.truncated.load(Ordering::Relaxed),
            empty_lines: c.empty.load(Ordering::Relaxed),
            binary_bytes: c.binary.load(Ordering::Relaxed),
        }
    }

    fn message_id(&self) -> [u8; 8] {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        (self.id_seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)).to_be_bytes()
    }

    /// Turns a bundle into messages, joining pieces with what earlier bundles left pending.
    fn messages(&self, bundle: &Bundle) -> Vec<Outgoing> {
        let mut out = Vec::new();
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let mut entry_no = 0usize;
        for be in &bundle.entries {
            let desc = be.desc.get();
            let prefix = if bundle.prefix.is_empty() {
                &desc.prefix
            } else {
                &bundle.prefix
            };
            let tags: BTreeMap<String, String> = desc
                .tags
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let fields = StreamFields::new(&self.host, &bundle.project, prefix, &desc.name, tags);
            let key = (prefix.clone(), desc.name.clone());
            let base = desc.timestamp.unwrap_or_default();
            let mut emit = |data: &[u8], number: u64, ts: f64, bytes: u64, entry: usize| {
                if data.is_empty() {
                    self.counters.empty.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                out.push(Outgoing {
                    msg: message::build(&fields, data, number, ts),
                    bytes,
                    entry,
                });
            };
            for e in &be.logs {
                let ts = message::entry_timestamp(&base, &e.time_offset);
                match &e.content {
                    Content::Text(data) => {
                        for (i, (value, delim)) in text_lines(data).enumerate() {
                            let number = e.sequence + i as u64 + 1;
                            let held = if i == 0 { pending.remove(&key) } else { None };
                            let mut p = held.unwrap_or(Pending {
                                number,
                                timestamp: ts,
                                ..Pending::default()
                            });
                            p.data.extend_from_slice(value);
                            p.bytes += (value.len() + delim.len()) as u64;
                            if !delim.is_empty() {
                                emit(&p.data, p.number, p.timestamp, p.bytes, entry_no);
                            } else if p.data.len() >= MAX_HELD_BYTES {
                                // A line this long goes out in pieces, each its own message
                                // with the line's number.
                                emit(&p.data, p.number, p.timestamp, p.bytes, entry_no);
                                pending.insert(
                                    key.clone(),
                                    Pending {
                                        number: p.number,
                                        timestamp: ts,
                                        ..Pending::default()
                                    },
                                );
                            } else {
                                pending.insert(key.clone(), p);
                            }
                        }
                    }
                    Content::Datagram { data, partial } => {
                        let number = e.sequence + 1;
                        match partial {
                            None => emit(data, number, ts, data.len() as u64, entry_no),
                            Some(part) => {
                                let mut p = pending.remove(&key).unwrap_or(Pending {
                                    number,
                                    timestamp: ts,
                                    ..Pending::default()
                                });
                                p.data.extend_from_slice(data);
                                p.bytes += data.len() as u64;
                                if part.last || p.data.len() >= MAX_HELD_BYTES {
                                    emit(&p.data, p.number, p.timestamp, p.bytes, entry_no);
                                    if !part.last {
                                        pending.insert(
                                            key.clone(),
                                            Pending {
                                                number: p.number,
                                                timestamp: ts,
                                                ..Pending::default()
                                            },
                                        );
                                    }
                                } else {
                                    pending.insert(key.clone(), p);
                                }
                            }
                        }
                    }
                    Content::Binary(data) => {
                        self.counters
                            .binary
                            .fetch_add(data.len() as u64, Ordering::Relaxed);
                        warn_once(
                            &self.counters.warned_binary,
                            &format!("binary stream {:?} is not sent", desc.name),
                        );
                    }
                }
                entry_no += 1;
            }
            if be.terminal_index.is_some()
                && let Some(p) = pending.remove(&key)
            {
                // The stream ended inside a line (or a datagram): send what there is.
                emit(
                    &p.data,
                    p.number,
                    p.timestamp,
                    p.bytes,
                    entry_no.saturating_sub(1),
                );
            }
        }
        out
    }

    fn dropped(&self, n: u64, why: &str) {
        self.counters.dropped.fetch_add(n, Ordering::Relaxed);
        warn_once(&self.counters.warned_drop, why);
    }

    /// Sends `msgs` over UDP; returns which were lost.
    async fn send_udp(&self, udp: &UdpTransport, msgs: &[Outgoing]) -> Vec<bool> {
        let mut lost = vec![false; msgs.len()];
        for (i, o) in msgs.iter().enumerate() {
            let packet = match encoding::encode_packet(
                &o.msg,
                self.config.compression,
                self.config.chunk_size,
                self.message_id(),
            ) {
                Ok(p) => p,
                Err(e) => {
                    lost[i] = true;
                    self.dropped(1, &format!("a message was dropped: {e}"));
                    continue;
                }
            };
            if packet.truncated {
                self.counters.truncated.fetch_add(1, Ordering::Relaxed);
                warn_once(
                    &self.counters.warned_truncated,
                    "a message too large for 128 chunks was shortened (field _truncated)",
                );
            }
            for d in &packet.datagrams {
                if udp.send(d).await == Sent::Dropped {
                    // The rest of the message is of no use without this chunk.
                    lost[i] = true;
                    break;
                }
            }
            if lost[i] {
                self.dropped(
                    1,
                    "UDP datagrams were dropped (send buffer full or receiver refused)",
                );
            } else {
                self.counters.sent.fetch_add(1, Ordering::Relaxed);
            }
        }
        lost
    }

    /// Sends `msgs` over the session in batches; returns which were lost.
    async fn send_stream(
        &self,
        session: &Session,
        msgs: &[Outgoing],
    ) -> (Vec<bool>, Option<String>) {
        let mut lost = vec![false; msgs.len()];
        let mut error = None;
        let mut batch = Vec::with_capacity(STREAM_BATCH_BYTES);
        let mut start = 0;
        for i in 0..msgs.len() {
            encoding::encode_stream(&msgs[i].msg, &mut batch);
            let last = i + 1 == msgs.len();
            if batch.len() >= STREAM_BATCH_BYTES || last {
                let n = (i + 1 - start) as u64;
                match session.write(&batch).await {
                    Ok(()) => {
                        self.counters.sent.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(e) => {
                        lost[start..=i].iter_mut().for_each(|l| *l = true);
                        self.dropped(n, &format!("messages were dropped: {e}"));
                        error = Some(e.to_string());
                    }
                }
                batch.clear();
                start = i + 1;
            }
        }
        (lost, error)
    }
}

#[async_trait]
impl Output for GelfOutput {
    async fn send(&self, bundle: Bundle) -> Result<(), OutputError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(OutputError::Closed);
        }
        let msgs = self.messages(&bundle);
        let (lost, error) = match &self.link {
            Link::Udp(udp) => (self.send_udp(udp, &msgs).await, None),
            Link::Stream(s) => self.send_stream(s, &msgs).await,
        };
        let mut failed_bytes = 0u64;
        let mut failed_entries = std::collections::BTreeSet::new();
        for (o, l) in msgs.iter().zip(&lost) {
            if *l {
                failed_bytes += o.bytes;
                failed_entries.insert(o.entry);
            }
        }
        if failed_bytes == 0 && failed_entries.is_empty() {
            self.stats.sent(&bundle);
            return Ok(());
        }
        let entries = bundle.log_count() as u64;
        let payload = bundle.payload_bytes() as u64;
        self.stats.sent_partial(
            entries.saturating_sub(failed_entries.len() as u64),
            payload.saturating_sub(failed_bytes),
        );
        self.stats.failed(failed_bytes);
        match error {
            // Best effort: the drops are counted, the bundle is not failed.
            None => Ok(()),
            Some(e) => Err(OutputError::Other(e)),
        }
    }

    fn max_bundle_size(&self) -> usize {
        GELF_BUNDLE_SIZE
    }

    fn stats(&self) -> OutputStats {
        self.stats.snapshot()
    }

    fn delivery(&self) -> Delivery {
        match self.config.transport {
            GelfTransport::Udp => Delivery::BestEffort,
            GelfTransport::Tcp | GelfTransport::Tls => Delivery::Acknowledged,
        }
    }

    async fn close(&self) -> Result<(), OutputError> {
        if self.closed.swap(true, Ordering::Relaxed) {
            return Ok(());
        }
        if let Link::Stream(s) = &self.link {
            s.close().await;
        }
        let g = self.gelf_stats();
        if g.messages_dropped + g.messages_truncated + g.empty_lines + g.binary_bytes > 0 {
            tracing::warn!(
                sent = g.messages_sent,
                dropped = g.messages_dropped,
                truncated = g.messages_truncated,
                empty_lines = g.empty_lines,
                binary_bytes = g.binary_bytes,
                "GELF output: some lines were not sent as they were"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_name_and_schemes() {
        let h = local_host_name();
        assert!(!h.is_empty() && !h.contains('\n'), "{h:?}");
        assert_eq!(GelfTransport::Udp.scheme(), "gelf+udp");
        assert_eq!(GelfTransport::Tcp.scheme(), "gelf+tcp");
        assert_eq!(GelfTransport::Tls.scheme(), "gelf+tls");
    }

    #[tokio::test]
    async fn delivery_follows_the_transport_and_ids_differ() {
        let udp = GelfOutput::new(GelfConfig::new(GelfTransport::Udp, "127.0.0.1:9")).unwrap();
        assert_eq!(udp.delivery(), Delivery::BestEffort);
        assert_eq!(udp.host(), local_host_name());
        let ids: std::collections::HashSet<[u8; 8]> = (0..1000).map(|_| udp.message_id()).collect();
        assert_eq!(ids.len(), 1000);
        let mut cfg = GelfConfig::new(GelfTransport::Tcp, "127.0.0.1:9");
        cfg.host = Some("named".into());
        let tcp = GelfOutput::new(cfg).unwrap();
        assert_eq!(tcp.delivery(), Delivery::Acknowledged);
        assert_eq!(tcp.host(), "named");
        assert_eq!(tcp.max_bundle_size(), GELF_BUNDLE_SIZE);
        tcp.close().await.unwrap();
        assert!(matches!(
            tcp.send(Bundle {
                timestamp: Default::default(),
                project: "p".into(),
                prefix: "x".into(),
                entries: Vec::new(),
            })
            .await,
            Err(OutputError::Closed)
        ));
    }
}
