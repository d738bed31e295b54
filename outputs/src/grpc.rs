//! The gRPC output: bundles go to a `logdog_collector` (`--output grpc://HOST:PORT`).
//!
//! Each bundle is one `WriteBundle` call; the collector answers only once the bundle is
//! durably stored. Up to [`DEFAULT_MAX_IN_FLIGHT`] calls run at once over one HTTP/2
//! connection. While the collector is unreachable, restarting or overloaded, a call is retried
//! with exponential backoff and jitter, for as long as it takes: the bundle stays in memory
//! until it is acknowledged, and is sent again on the new connection. (The butler bounds the
//! wait at the end of a run; see its flush timeout.) A bundle the collector refuses as invalid
//! is not retried: it is counted as failed and logged, and its bytes are counted as lost per
//! stream, with the collector's message. A collector that reports its store damaged
//! (`DATA_LOSS`) can store nothing until repaired: bundles are not retried either (with a
//! spool they stay in the spool, and uploading stops).
//!
//! A collector that stores a bundle but refuses some of its streams (listed in
//! `WriteBundleResponse.refused`, e.g. a conflict with what it stored before) acknowledges the
//! bundle for every other stream; the refused streams' entries are counted as lost, per
//! stream, with the reason ([`GrpcOutput::acknowledged`]).
//!
//! With a [`Spool`] ([`GrpcOutput::with_spool`]), each bundle is appended to the spool before
//! it is sent and discarded once acknowledged, so a bundle survives the butler's own crash;
//! the uploader it starts sends what an earlier butler left in the spool first.
//!
//! # Several collectors
//! With several addresses (`--output grpc://A:7431,B:7431`, [`GrpcOutput::connect_all`]),
//! bundles are spread over the collectors that are up, in turn. A send that fails with a
//! retriable error (unavailable, connection refused or reset, deadline) is sent again at once
//! to another collector, and the one that failed is marked down for a while (a backoff per
//! address, from [`ADDRESS_DOWN_INITIAL`] doubling up to [`ADDRESS_DOWN_MAX`]) before it is
//! given bundles again. While every collector is down, a bundle waits and retries as with one
//! address. A collector whose store is damaged, or whose TLS handshake fails for good, gets
//! nothing more; only once every collector is in that state does sending stop. A bundle may
//! reach two collectors (the first stored it but did not answer): collectors keep one entry
//! per stream index, so that is harmless. One address behaves as it always did.
//!
//! # Compression
//! [`GrpcCompression`] (`--grpc-compression`): requests are compressed with zstd or gzip, or
//! not at all; `auto` compresses with zstd to a collector on another machine and not to one
//! on this machine (loopback). A collector that does not accept the encoding (it answers
//! `UNIMPLEMENTED`) is sent uncompressed bundles from then on: the refusal is logged once and
//! the bundle sent again at once.
//!
//! # Security
//! [`GrpcOutput::connect`] reaches a `grpcs://` collector over TLS, sends the bearer token (if
//! any) with every call, and makes a fresh random prefix secret that goes into every bundle
//! (`ButlerLogBundle.secret`, field 6; see [`encode_bundle`]). Spooled bundles carry it too,
//! so that whoever uploads them later (`resume`, the next butler on the spool) proves the
//! prefix with its own secret. A collector that refuses the caller (`UNAUTHENTICATED`,
//! `PERMISSION_DENIED`) is not asked again for that bundle: its streams' entries are lost,
//! with the collector's message. A TLS handshake that fails for good (an untrusted
//! certificate, a server without TLS) is not retried either: without a spool the bundle is
//! lost with the reason; with one it stays in the spool and uploading stops, as for a
//! damaged store.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use logdog_proto::Bundle;
use logdog_proto::logdog::collector::collector_client::CollectorClient;
use logdog_proto::logdog::collector::stream_refusal::Reason;
use logdog_proto::logdog::collector::{StreamRefusal, WriteBundleRequest, WriteBundleResponse};
use logdog_proto::types::PREFIX_SECRET_LEN;
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint};
use tokio::task::JoinSet;
use tonic::codec::CompressionEncoding;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::security::{BearerAuth, ClientSecurity, Collector, tls_failure};
use crate::spool::{SYNC_INTERVAL, Spool, SpoolError};
use crate::{Output, OutputError, OutputStats, StatsCounter};

/// Largest bundle sent to the collector (the collector takes up to 16 MiB).
pub const DEFAULT_MAX_BUNDLE_SIZE: usize = 8 * 1024 * 1024;
/// Encoded size of the prefix secret field (key, length, bytes).
pub const SECRET_FIELD_LEN: usize = 2 + PREFIX_SECRET_LEN;
/// Bundles in flight at once.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 8;
/// First retry delay.
const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// Longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Deadline of one attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
/// Spooled bundles uploaded at once (each is held in memory while in flight).
pub const DEFAULT_UPLOAD_IN_FLIGHT: usize = 4;
/// While the collector keeps up, `send` waits until no more than this many spooled bytes of
/// this butler are unacknowledged: bundles then grow while the uploader is busy, as without a
/// spool. While the collector fails (or leftovers are being uploaded), the spool absorbs
/// everything.
const HEALTHY_BACKLOG: u64 = (DEFAULT_UPLOAD_IN_FLIGHT * DEFAULT_MAX_BUNDLE_SIZE) as u64;
/// How often an append waiting for disk space tries again.
const FULL_RETRY: Duration = Duration::from_secs(1);
/// "Collector unavailable" warnings: the first, then at most one per this period (with the
/// number left out) and address, whatever the number of bundles retrying.
pub const UNAVAILABLE_WARN_EVERY: Duration = Duration::from_secs(30);
/// With several collectors: how long one that failed is first left out (then twice as long
/// after each failure in a row, with jitter).
pub const ADDRESS_DOWN_INITIAL: Duration = Duration::from_millis(500);
/// With several collectors: the longest time one that keeps failing is left out before a
/// bundle tries it again.
pub const ADDRESS_DOWN_MAX: Duration = Duration::from_secs(30);

/// How requests to the collector are compressed (`--grpc-compression`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GrpcCompression {
    /// zstd to a collector on another machine, none to one on this machine (`localhost`,
    /// 127.0.0.0/8, `::1`).
    #[default]
    Auto,
    /// None.
    Off,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

impl GrpcCompression {
    /// The encoding of requests to `collector`, `None` for none.
    pub fn for_collector(self, collector: &Collector) -> Option<CompressionEncoding> {
        match self {
            Self::Auto if collector.is_loopback() => None,
            Self::Auto | Self::Zstd => Some(CompressionEncoding::Zstd),
            Self::Off => None,
            Self::Gzip => Some(CompressionEncoding::Gzip),
        }
    }
}

impl std::str::FromStr for GrpcCompression {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "off" => Ok(Self::Off),
            "gzip" => Ok(Self::Gzip),
            "zstd" => Ok(Self::Zstd),
            _ => Err(format!(
                "unknown compression {s:?}: expected auto, off, gzip or zstd"
            )),
        }
    }
}

impl std::fmt::Display for GrpcCompression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Off => "off",
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
        })
    }
}

/// Rate limit of a repeated warning: the first is logged, then at most one per period, which
/// says how many were left out since the last one logged.
#[derive(Debug)]
struct WarnLimit {
    every: Duration,
    last: Option<tokio::time::Instant>,
    suppressed: u64,
}

impl WarnLimit {
    fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// At `now`: `Some(left out since the last one)` if the warning is to be logged, `None` if
    /// it is left out (and counted).
    fn check(&mut self, now: tokio::time::Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// Sends bundles to a collector.
#[derive(Debug)]
pub struct GrpcOutput {
    shared: Arc<Shared>,
    /// The spool's uploader and syncer; stopped when the output is closed or dropped.
    tasks: Vec<tokio::task::AbortHandle>,
}

/// A client of one collector.
type Client = CollectorClient<InterceptedService<Channel, BearerAuth>>;

/// One collector address and what is known of it.
#[derive(Debug)]
struct Target {
    client: Client,
    /// The collector, with its scheme.
    collector: Collector,
    /// The encoding asked for (`--grpc-compression`).
    wanted: Option<CompressionEncoding>,
    /// The encoding of requests: `wanted`, until the collector refuses it.
    encoding: std::sync::Mutex<Option<CompressionEncoding>>,
    /// Set once a TLS handshake with the collector failed for good: the message.
    tls_failed: std::sync::Mutex<Option<String>>,
    /// Set once the collector reported its store damaged (`DATA_LOSS`): its message.
    broken: std::sync::Mutex<Option<String>>,
    /// Failures in a row, and until when it is left out.
    down: std::sync::Mutex<Down>,
    /// Rate limit of its "collector unavailable" warnings, shared by every bundle in flight.
    unavailable_warnings: std::sync::Mutex<WarnLimit>,
}

/// Failures in a row of one collector, and until when it is left out.
#[derive(Debug, Default)]
struct Down {
    fails: u32,
    until: Option<tokio::time::Instant>,
}

/// The collector a bundle goes to next.
enum Pick {
    /// One that is up (the next in turn).
    Up(usize),
    /// Every usable one is down: the one back soonest.
    Down(usize),
    /// None can be used any more.
    Unusable,
}

impl Target {
    fn new(
        collector: &Collector,
        security: &ClientSecurity,
        compression: GrpcCompression,
    ) -> Result<Self, OutputError> {
        let endpoint = collector
            .endpoint(security.ca.as_ref())
            .map_err(OutputError::Other)?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_while_idle(true);
        let auth = BearerAuth::new(security.token.as_ref()).map_err(OutputError::Other)?;
        let client = CollectorClient::with_interceptor(endpoint.connect_lazy(), auth)
            .max_decoding_message_size(16 * 1024 * 1024)
            .max_encoding_message_size(16 * 1024 * 1024);
        let wanted = compression.for_collector(collector);
        Ok(Self {
            client,
            collector: collector.clone(),
            wanted,
            encoding: std::sync::Mutex::new(wanted),
            tls_failed: Default::default(),
            broken: Default::default(),
            down: Default::default(),
            unavailable_warnings: std::sync::Mutex::new(WarnLimit::new(UNAVAILABLE_WARN_EVERY)),
        })
    }

    /// The same collector and connection, with nothing known of it yet.
    fn fresh(&self) -> Self {
        Self {
            client: self.client.clone(),
            collector: self.collector.clone(),
            wanted: self.wanted,
            encoding: std::sync::Mutex::new(self.wanted),
            tls_failed: Default::default(),
            broken: Default::default(),
            down: Default::default(),
            unavailable_warnings: std::sync::Mutex::new(WarnLimit::new(UNAVAILABLE_WARN_EVERY)),
        }
    }

    fn encoding(&self) -> Option<CompressionEncoding> {
        *self.encoding.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The collector refused requests compressed with `enc`: sends them uncompressed from
    /// now on (said once).
    fn refuse_encoding(&self, enc: CompressionEncoding, status: &Status) {
        let mut e = self.encoding.lock().unwrap_or_else(|e| e.into_inner());
        if *e == Some(enc) {
            *e = None;
            tracing::warn!(
                collector = %self.collector,
                encoding = %enc,
                error = %status.message(),
                "the collector does not accept compressed bundles (an older collector?); \
                 sending to it uncompressed"
            );
        }
    }

    fn tls_failure(&self) -> Option<String> {
        self.tls_failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn failure(&self) -> Option<String> {
        self.broken
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether it may still be sent bundles (no damaged store, no TLS failure).
    fn usable(&self) -> bool {
        self.failure().is_none() && self.tls_failure().is_none()
    }

    /// Until when it is left out, if it is.
    fn down_until(&self, now: tokio::time::Instant) -> Option<tokio::time::Instant> {
        let d = self.down.lock().unwrap_or_else(|e| e.into_inner());
        d.until.filter(|u| *u > now)
    }

    /// A call failed: leaves it out for a while, longer after each failure in a row (calls
    /// that fail while it is already left out do not lengthen it).
    fn mark_down(&self, now: tokio::time::Instant) {
        let mut d = self.down.lock().unwrap_or_else(|e| e.into_inner());
        if d.until.is_some_and(|u| u > now) {
            return;
        }
        let wait = jittered(
            ADDRESS_DOWN_INITIAL
                .saturating_mul(1 << d.fails.min(16))
                .min(ADDRESS_DOWN_MAX),
        );
        d.fails = d.fails.saturating_add(1);
        d.until = Some(now + wait);
    }

    /// A call succeeded: it is up.
    fn mark_up(&self) {
        let mut d = self.down.lock().unwrap_or_else(|e| e.into_inner());
        if d.fails > 0 {
            tracing::info!(collector = %self.collector, failures = d.fails, "collector reachable again");
        }
        *d = Down::default();
    }
}

/// What the output and its background tasks share.
#[derive(Debug)]
struct Shared {
    /// The collectors, in the order given.
    targets: Vec<Target>,
    /// The turn of the next bundle, for spreading bundles over the collectors.
    next: std::sync::atomic::AtomicUsize,
    /// This butler's prefix secret, sent in every bundle.
    secret: Option<Bytes>,
    stats: StatsCounter,
    spool: Option<Arc<Spool>>,
    /// The last call to the collector succeeded (or none was made yet).
    healthy: std::sync::atomic::AtomicBool,
    /// What the collector acknowledged, per stream.
    acked: std::sync::Mutex<Acked>,
    /// What each record this butler spooled carries, by (segment, offset): counted when the
    /// record is acknowledged, without decoding it again.
    tallies: std::sync::Mutex<std::collections::HashMap<(u32, u64), Tally>>,
}

/// Entries and payload bytes acknowledged, by (prefix, stream name).
pub type Acked = std::collections::BTreeMap<(String, String), StreamAck>;

/// What the collector acknowledged of one stream, and what of it can never be delivered.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StreamAck {
    /// Log entries.
    pub entries: u64,
    /// Payload bytes.
    pub bytes: u64,
    /// Log entries lost: refused by the collector for this stream, or in a bundle it refused
    /// for good.
    pub lost_entries: u64,
    /// Their payload bytes.
    pub lost_bytes: u64,
    /// Why they were lost (the first reason), e.g. `conflict: …`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost: Option<String>,
    /// The stream's end (its terminal index) was given to the output.
    pub end_sent: bool,
    /// The collector acknowledged the stream's end: it can know the stream is complete.
    pub ended: bool,
}

impl StreamAck {
    /// Whether the stream's end was given to the output but never acknowledged, while
    /// nothing of the stream was refused (a refusal is told with its own reason): the
    /// collector may hold every byte, yet cannot know the stream is complete.
    pub fn end_unacknowledged(&self) -> bool {
        self.end_sent && !self.ended && self.lost.is_none() && self.lost_entries == 0
    }
}

/// Per-stream (entries, payload bytes) of a bundle, for the acknowledgement counters.
#[derive(Debug, Default, Clone)]
struct Tally {
    prefix: String,
    streams: Vec<(String, StreamAck)>,
}

impl Tally {
    fn of(bundle: &Bundle) -> Self {
        Self {
            prefix: bundle.prefix.clone(),
            streams: bundle
                .entries
                .iter()
                .map(|e| {
                    let ack = StreamAck {
                        entries: e.logs.len() as u64,
                        bytes: e.logs.iter().map(|l| l.content.data().len() as u64).sum(),
                        end_sent: e.terminal_index.is_some(),
                        ..Default::default()
                    };
                    (e.desc.name().to_string(), ack)
                })
                .collect(),
        }
    }

    /// The same for an encoded bundle read back from the spool.
    fn of_encoded(data: &Bytes) -> Self {
        let Ok(b) = logdog_proto::logdog::collector::BundleView::decode(data.clone()) else {
            return Self::default();
        };
        Self {
            prefix: b.prefix,
            streams: b
                .entries
                .iter()
                .map(|e| {
                    let bytes = e
                        .logs
                        .iter()
                        .filter_map(|l| logdog_proto::wire::log_entry(l).ok())
                        .filter_map(|f| f.content.map(|c| c.payload))
                        .sum();
                    let ack = StreamAck {
                        entries: e.logs.len() as u64,
                        bytes,
                        end_sent: e.terminal,
                        ..Default::default()
                    };
                    (
                        e.desc.as_ref().map(|d| d.name.clone()).unwrap_or_default(),
                        ack,
                    )
                })
                .collect(),
        }
    }

    fn totals(&self) -> (u64, u64) {
        self.streams
            .iter()
            .fold((0, 0), |(e, b), (_, a)| (e + a.entries, b + a.bytes))
    }
}

impl Drop for GrpcOutput {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl GrpcOutput {
    /// An output for `grpc://HOST:PORT` (plain, without a token). Connects lazily: a
    /// collector that is down at start is not an error.
    ///
    /// # Errors
    /// A malformed address.
    pub fn new(host_port: &str) -> Result<Self, OutputError> {
        let collector = Collector {
            host_port: host_port.to_string(),
            tls: false,
        };
        Self::connect(&collector, &ClientSecurity::default())
    }

    /// An output for `collector` (`grpc://` or `grpcs://`), sending `security`'s token with
    /// every call, with a fresh prefix secret. Connects lazily: a collector that is down at
    /// start is not an error.
    ///
    /// # Errors
    /// A malformed address, a TLS configuration that cannot be used, no random source.
    pub fn connect(collector: &Collector, security: &ClientSecurity) -> Result<Self, OutputError> {
        Self::connect_all(
            std::slice::from_ref(collector),
            security,
            GrpcCompression::default(),
        )
    }

    /// An output spreading bundles over `collectors` (all `grpc://` or all `grpcs://`, see
    /// the [module](self) on failover), sending `security`'s token with every call to each,
    /// compressing requests as `compression` says, with one fresh prefix secret for all.
    /// Connects lazily.
    ///
    /// # Errors
    /// No collector, a malformed address, a TLS configuration that cannot be used, no random
    /// source.
    pub fn connect_all(
        collectors: &[Collector],
        security: &ClientSecurity,
        compression: GrpcCompression,
    ) -> Result<Self, OutputError> {
        if collectors.is_empty() {
            return Err(OutputError::Other("no collector address".into()));
        }
        let targets = collectors
            .iter()
            .map(|c| Target::new(c, security, compression))
            .collect::<Result<Vec<_>, _>>()?;
        let secret = crate::security::new_prefix_secret().map_err(OutputError::Other)?;
        Ok(Self {
            shared: Arc::new(Shared {
                targets,
                next: Default::default(),
                secret: Some(Bytes::copy_from_slice(&secret)),
                stats: StatsCounter::default(),
                spool: None,
                healthy: true.into(),
                acked: Default::default(),
                tallies: Default::default(),
            }),
            tasks: Vec::new(),
        })
    }

    /// This butler's prefix secret (sent in every bundle).
    pub fn prefix_secret(&self) -> Option<&Bytes> {
        self.shared.secret.as_ref()
    }

    /// Spools every bundle in `spool` (see [`crate::spool`]): [`Output::send`] returns once
    /// the bundle is appended, and an uploader sends the spool's records in order,
    /// `upload_in_flight` at a time, starting with what an earlier butler left there. Must be
    /// called inside a Tokio runtime.
    pub fn with_spool(self, spool: Spool, upload_in_flight: usize) -> Self {
        let spool = Arc::new(spool);
        let shared = Arc::new(Shared {
            targets: self.shared.targets.iter().map(Target::fresh).collect(),
            next: Default::default(),
            secret: self.shared.secret.clone(),
            stats: StatsCounter::default(),
            spool: Some(spool.clone()),
            healthy: true.into(),
            acked: Default::default(),
            tallies: Default::default(),
        });
        let weak = Arc::downgrade(&spool);
        let syncer = tokio::spawn(async move {
            let mut tick = tokio::time::interval(SYNC_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(spool) = weak.upgrade() else { return };
                match tokio::task::spawn_blocking(move || spool.sync_due()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "cannot force the spool to disk"),
                    Err(_) => return,
                }
            }
        });
        let uploader = tokio::spawn(upload(
            Arc::downgrade(&shared),
            spool,
            upload_in_flight.max(1),
        ));
        Self {
            shared,
            tasks: vec![syncer.abort_handle(), uploader.abort_handle()],
        }
    }

    /// What the collector acknowledged so far, per stream.
    pub fn acknowledged(&self) -> Acked {
        self.shared
            .acked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The spool, if any.
    pub fn spool(&self) -> Option<&Arc<Spool>> {
        self.shared.spool.as_ref()
    }

    /// The collector's message if it reported its store damaged (`DATA_LOSS`): it can store
    /// nothing until repaired, so nothing more is sent (spooled bundles stay in the spool).
    /// With several collectors, only once none can be sent to any more (each one's message,
    /// after its address).
    pub fn failure(&self) -> Option<String> {
        self.shared.failure()
    }

    /// The reason if a TLS handshake with the collector failed for good (an untrusted
    /// certificate, a server without TLS): nothing more is sent (spooled bundles stay in the
    /// spool). With several collectors, only once none can be sent to any more.
    pub fn tls_failure(&self) -> Option<String> {
        self.shared.tls_failure()
    }

    /// Whether any stream lost anything at the collector (see [`StreamAck::lost_bytes`]).
    pub fn lost_anything(&self) -> bool {
        self.acknowledged()
            .values()
            .any(|a| a.lost_entries > 0 || a.lost_bytes > 0 || a.lost.is_some())
    }

    /// No more bundles: waits until everything in the spool has been acknowledged (or
    /// settled otherwise), or until `stop` resolves. Returns whether the spool is empty.
    /// Without a spool, returns `true` at once (sends wait for acknowledgements themselves).
    pub async fn drain(&self, stop: impl Future<Output = ()>) -> bool {
        let Some(spool) = &self.shared.spool else {
            return true;
        };
        spool.seal_active();
        tokio::pin!(stop);
        loop {
            let changed = spool.changed();
            if spool.is_drained() {
                return true;
            }
            if self.shared.unusable() {
                // The collector can store nothing (or cannot be reached safely): what is left
                // stays in the spool.
                return false;
            }
            tokio::select! {
                () = changed => {}
                () = &mut stop => return spool.is_drained(),
            }
        }
    }
}

impl Shared {
    /// Notes the streams whose end a bundle given to the output carries (so that an end never
    /// acknowledged is told, even when every byte was).
    fn ends_sent(&self, tally: &Tally) {
        let mut acked = self.acked.lock().unwrap_or_else(|e| e.into_inner());
        for (name, _) in tally.streams.iter().filter(|(_, a)| a.end_sent) {
            acked
                .entry((tally.prefix.clone(), name.clone()))
                .or_default()
                .end_sent = true;
        }
    }

    /// Counts a delivered bundle: acknowledged for every stream but those the collector
    /// `refused`, whose entries are lost (with the reason).
    fn acknowledged(&self, tally: &Tally, refused: &[StreamRefusal], from: &Collector) {
        if refused.is_empty() {
            let (entries, bytes) = tally.totals();
            self.stats.sent_counts(entries, bytes);
        }
        let (mut sent_e, mut sent_b, mut lost_b) = (0, 0, 0);
        let mut acked = self.acked.lock().unwrap_or_else(|e| e.into_inner());
        for (name, a) in &tally.streams {
            let s = acked
                .entry((tally.prefix.clone(), name.clone()))
                .or_default();
            match refused.iter().find(|r| r.name == *name) {
                None => {
                    s.entries += a.entries;
                    s.bytes += a.bytes;
                    s.ended |= a.end_sent;
                    sent_e += a.entries;
                    sent_b += a.bytes;
                }
                Some(r) => {
                    let why = refusal_reason(r);
                    tracing::error!(
                        collector = %from,
                        stream = %name,
                        entries = a.entries,
                        bytes = a.bytes,
                        reason = %why,
                        "collector refused a stream; its entries in this bundle are LOST"
                    );
                    add_loss(s, a.entries, a.bytes, why);
                    lost_b += a.bytes;
                }
            }
        }
        // A refusal naming a stream this bundle did not carry still counts its entries.
        for r in refused {
            if !tally.streams.iter().any(|(n, _)| *n == r.name) {
                let s = acked
                    .entry((tally.prefix.clone(), r.name.clone()))
                    .or_default();
                add_loss(s, u64::from(r.entries), 0, refusal_reason(r));
            }
        }
        drop(acked);
        if !refused.is_empty() {
            self.stats.sent_partial(sent_e, sent_b);
            self.stats.failed(lost_b);
        }
    }

    /// Counts a bundle refused for good: every stream's entries in it are lost, for `reason`.
    fn lost(&self, tally: &Tally, reason: &str) {
        let (_, bytes) = tally.totals();
        self.stats.failed(bytes);
        let mut acked = self.acked.lock().unwrap_or_else(|e| e.into_inner());
        for (name, a) in &tally.streams {
            let s = acked
                .entry((tally.prefix.clone(), name.clone()))
                .or_default();
            add_loss(s, a.entries, a.bytes, reason.to_string());
        }
    }

    /// Whether no collector can be sent to any more (damaged stores, TLS failures).
    fn unusable(&self) -> bool {
        !self.targets.iter().any(Target::usable)
    }

    /// Once no collector can be sent to any more: what `what` says of each (after its
    /// address when there are several), if it says anything of one.
    fn when_unusable(&self, what: impl Fn(&Target) -> Option<String>) -> Option<String> {
        if !self.unusable() {
            return None;
        }
        if let [t] = &self.targets[..] {
            return what(t);
        }
        let msgs: Vec<String> = self
            .targets
            .iter()
            .filter_map(|t| what(t).map(|m| format!("{}: {m}", t.collector)))
            .collect();
        (!msgs.is_empty()).then(|| msgs.join("; "))
    }

    fn failure(&self) -> Option<String> {
        self.when_unusable(Target::failure)
    }

    fn tls_failure(&self) -> Option<String> {
        self.when_unusable(Target::tls_failure)
    }

    /// What to answer once no collector can be sent to: `DATA_LOSS` if a store is damaged,
    /// else `UNAVAILABLE` with the TLS failure.
    fn unusable_status(&self) -> Status {
        match (self.failure(), self.tls_failure()) {
            (Some(m), _) => Status::data_loss(m),
            (None, Some(m)) => Status::unavailable(m),
            (None, None) => Status::unavailable("no collector can be reached"),
        }
    }

    /// What to say when one collector is given up: with several, that the others go on.
    fn stops(&self) -> &'static str {
        if self.targets.len() > 1 && !self.unusable() {
            "sending to it stops; the other collectors go on"
        } else {
            "sending stops"
        }
    }

    /// Remembers that the TLS handshake with `t` failed for good (the first message is
    /// kept, and logged once).
    fn set_tls_failed(&self, t: &Target, message: &str) {
        let mut f = t.tls_failed.lock().unwrap_or_else(|e| e.into_inner());
        let first = f.is_none();
        if first {
            *f = Some(message.to_string());
        }
        drop(f);
        if first {
            tracing::error!(
                collector = %t.collector,
                error = %message,
                "cannot reach the collector securely; {}",
                self.stops()
            );
        }
        if let Some(spool) = &self.spool {
            spool.wake();
        }
    }

    /// Remembers that the store of `t` is damaged (the first message is kept).
    fn set_broken(&self, t: &Target, status: &Status) {
        let mut b = t.broken.lock().unwrap_or_else(|e| e.into_inner());
        let first = b.is_none();
        if first {
            *b = Some(status.message().to_string());
        }
        drop(b);
        if first {
            tracing::error!(
                collector = %t.collector,
                error = %status.message(),
                "the collector's store is damaged (DATA_LOSS): it can store nothing until \
                 repaired; {}",
                self.stops()
            );
        }
        if let Some(spool) = &self.spool {
            spool.wake();
        }
    }

    /// The collector the next try goes to: the next in turn that is up, else the one back
    /// soonest.
    fn pick(&self, now: tokio::time::Instant) -> Pick {
        let n = self.targets.len();
        let start = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % n;
        let mut soonest: Option<(tokio::time::Instant, usize)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            let t = &self.targets[i];
            if !t.usable() {
                continue;
            }
            match t.down_until(now) {
                None => return Pick::Up(i),
                Some(u) => {
                    if soonest.is_none_or(|(s, _)| u < s) {
                        soonest = Some((u, i));
                    }
                }
            }
        }
        soonest.map_or(Pick::Unusable, |(_, i)| Pick::Down(i))
    }

    /// Whether some usable collector is up.
    fn any_up(&self, now: tokio::time::Instant) -> bool {
        self.targets
            .iter()
            .any(|t| t.usable() && t.down_until(now).is_none())
    }

    fn set_healthy(&self, ok: bool) {
        let was = self.healthy.swap(ok, std::sync::atomic::Ordering::Relaxed);
        if was != ok
            && let Some(spool) = &self.spool
        {
            // Sends held back while the collector kept up must now go on.
            spool.wake();
        }
    }

    /// Holds a send back while this butler's unacknowledged spooled bytes exceed
    /// [`HEALTHY_BACKLOG`] and the collector is keeping up (see there).
    async fn pace(&self, spool: &Spool) {
        loop {
            let changed = spool.changed();
            let (own, leftovers) = spool.backlog();
            if own <= HEALTHY_BACKLOG
                || leftovers
                || !self.healthy.load(std::sync::atomic::Ordering::Relaxed)
            {
                return;
            }
            changed.await;
        }
    }

    /// Appends `data` to the spool and returns where it went. Waits while the disk is full
    /// (backpressure); after any other failure returns `None`: the caller sends the bundle
    /// unspooled.
    async fn spool_append(
        self: &Arc<Self>,
        spool: &Arc<Spool>,
        data: &Bytes,
        tally: Tally,
    ) -> Option<(u32, u64)> {
        let mut waiting = false;
        loop {
            let (sp, d, me, t) = (spool.clone(), data.clone(), self.clone(), tally.clone());
            let res = tokio::task::spawn_blocking(move || {
                sp.append(&d, |seg, off| {
                    me.tallies
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert((seg, off), t);
                })
            })
            .await
            .unwrap_or_else(|e| {
                Err(SpoolError::Io {
                    context: "append task".into(),
                    source: std::io::Error::other(e.to_string()),
                })
            });
            match res {
                Ok(at) => {
                    if waiting {
                        tracing::warn!(spool = %spool.dir().display(), "spool has room again; going on");
                    }
                    return Some(at);
                }
                Err(e @ SpoolError::Full { .. }) => {
                    if !waiting {
                        tracing::error!(
                            error = %e,
                            "SPOOL DISK FULL: holding the command's output until there is room \
                             (free space in the spool's file system)"
                        );
                        waiting = true;
                    }
                    spool.count_full_wait();
                    tokio::time::sleep(FULL_RETRY).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot spool a bundle; sending it unspooled");
                    spool.count_write_error();
                    return None;
                }
            }
        }
    }

    /// Sends encoded bundle `data` until a collector acknowledges it (retrying for as long
    /// as it takes, on the other collectors first), or refuses it for good. Returns the
    /// answer and which collector gave it.
    async fn deliver(&self, data: &Bytes) -> Result<(WriteBundleResponse, usize), Status> {
        // Waits while every collector was down.
        let mut attempt = 0u32;
        // Failed tries, and whether one failed since the last wait.
        let mut failures = 0u32;
        let mut failed_since_wait = false;
        loop {
            let i = match self.pick(tokio::time::Instant::now()) {
                Pick::Up(i) => i,
                Pick::Down(i) if !failed_since_wait => i,
                Pick::Down(_) => {
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt = attempt.saturating_add(1);
                    failed_since_wait = false;
                    continue;
                }
                Pick::Unusable => return Err(self.unusable_status()),
            };
            let t = &self.targets[i];
            let mut client = t.client.clone();
            let encoding = t.encoding();
            if let Some(enc) = encoding {
                client = client.send_compressed(enc);
            }
            let mut req = tonic::Request::new(WriteBundleRequest {
                bundle: data.clone(),
            });
            req.set_timeout(ATTEMPT_TIMEOUT);
            match client.write_bundle(req).await {
                Ok(resp) => {
                    t.mark_up();
                    self.set_healthy(true);
                    if failures > 0 {
                        tracing::info!(collector = %t.collector, attempts = failures + 1, "bundle delivered after retries");
                    }
                    return Ok((resp.into_inner(), i));
                }
                // An older collector that does not take compressed requests: sent again at
                // once, uncompressed.
                Err(status) if status.code() == Code::Unimplemented && encoding.is_some() => {
                    if let Some(enc) = encoding {
                        t.refuse_encoding(enc, &status);
                    }
                }
                Err(status) if retriable(&status) => {
                    failures = failures.saturating_add(1);
                    failed_since_wait = true;
                    if let Some(msg) = tls_failure(&status, &t.collector) {
                        self.set_tls_failed(t, &msg);
                        continue;
                    }
                    let now = tokio::time::Instant::now();
                    t.mark_down(now);
                    let others = self.any_up(now);
                    if !others {
                        self.set_healthy(false);
                    }
                    let log = t
                        .unavailable_warnings
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .check(now);
                    if let Some(suppressed) = log {
                        if self.targets.len() == 1 {
                            tracing::warn!(
                                collector = %t.collector.host_port,
                                attempt = failures,
                                error = %status.message(),
                                code = ?status.code(),
                                suppressed,
                                "collector unavailable; will retry (this warning: at most once per {}s)",
                                UNAVAILABLE_WARN_EVERY.as_secs()
                            );
                        } else {
                            tracing::warn!(
                                collector = %t.collector.host_port,
                                attempt = failures,
                                error = %status.message(),
                                code = ?status.code(),
                                suppressed,
                                "collector unavailable; {} (this warning: at most once per {}s per collector)",
                                if others {
                                    "bundles go to the other collectors and it is tried again later"
                                } else {
                                    "no collector is up; will retry"
                                },
                                UNAVAILABLE_WARN_EVERY.as_secs()
                            );
                        }
                    }
                }
                Err(status) if status.code() == Code::DataLoss => {
                    failed_since_wait = true;
                    self.set_broken(t, &status);
                    if !self.any_up(tokio::time::Instant::now()) {
                        self.set_healthy(false);
                    }
                }
                Err(status) => {
                    tracing::error!(collector = %t.collector.host_port, code = ?status.code(), error = %status_reason(&status), "collector refused a bundle; its entries are LOST");
                    return Err(status);
                }
            }
        }
    }
}

/// A finished upload: the record's segment, offset and spooled length, what it carried, and
/// the collector's answer.
type Upload = (
    u32,
    u64,
    u64,
    Tally,
    Result<(WriteBundleResponse, usize), Status>,
);

/// Uploads the spool's records in order, `in_flight` at a time, settling each once the
/// collector has acknowledged (or refused) it. Runs until the output is dropped or closed.
async fn upload(out: std::sync::Weak<Shared>, spool: Arc<Spool>, in_flight: usize) {
    let mut sends: JoinSet<Upload> = JoinSet::new();
    loop {
        let Some(up) = out.upgrade() else { return };
        let changed = spool.changed();
        // Fill the window.
        // A collector whose store is damaged can store nothing: the rest stays in the spool.
        let mut idle = up.unusable();
        while !idle && sends.len() < in_flight {
            let sp = spool.clone();
            let next = tokio::task::spawn_blocking(move || sp.next_record()).await;
            match next {
                Ok(Ok(Some(rec))) => {
                    let up2 = up.clone();
                    sends.spawn(async move {
                        let len = rec.spooled_len();
                        let res = up2.deliver(&rec.payload).await;
                        let known = up2
                            .tallies
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&(rec.segment, rec.offset));
                        // Leftovers of an earlier butler are counted from their encoding.
                        let tally = known.unwrap_or_else(|| Tally::of_encoded(&rec.payload));
                        (rec.segment, rec.offset, len, tally, res)
                    });
                }
                Ok(Ok(None)) => {
                    idle = true;
                    break;
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "cannot read the spool; skipping the segment");
                }
                Err(_) => return,
            }
        }
        drop(up);
        tokio::select! {
            Some(done) = sends.join_next(), if !sends.is_empty() => {
                let Some(up) = out.upgrade() else { return };
                match done {
                    Ok((seg, off, len, tally, Ok((resp, from)))) => {
                        up.acknowledged(&tally, &resp.refused, &up.targets[from].collector);
                        spool.settle(seg, off, len, true);
                    }
                    // Left in the spool, unsettled, for a later `resume` once it is repaired.
                    Ok((_, _, _, _, Err(status))) if status.code() == Code::DataLoss => {}
                    // Cannot reach the collector safely: left in the spool too.
                    Ok((_, _, _, _, Err(status))) if status.code() == Code::Unavailable => {}
                    Ok((seg, off, len, tally, Err(status))) => {
                        up.lost(&tally, &status_reason(&status));
                        spool.settle(seg, off, len, false);
                    }
                    Err(e) => tracing::error!(error = %e, "an upload task failed"),
                }
            }
            () = changed, if idle || sends.is_empty() => {}
        }
    }
}

/// The `ButlerLogBundle` encoding of `bundle`, with `secret` as its `secret` field (6), if any.
pub fn encode_bundle(bundle: &Bundle, secret: Option<&[u8]>) -> Bytes {
    let extra = secret.map_or(0, |s| {
        1 + prost::encoding::encoded_len_varint(s.len() as u64) + s.len()
    });
    let mut v = Vec::with_capacity(bundle.encoded_len() + extra);
    bundle.encode(&mut v);
    if let Some(s) = secret.filter(|s| !s.is_empty()) {
        encode_key(6, WireType::LengthDelimited, &mut v);
        encode_varint(s.len() as u64, &mut v);
        v.extend_from_slice(s);
    }
    Bytes::from(v)
}

/// Records lost entries on a stream, keeping the first reason.
fn add_loss(s: &mut StreamAck, entries: u64, bytes: u64, reason: String) {
    s.lost_entries += entries;
    s.lost_bytes += bytes;
    s.lost.get_or_insert(reason);
}

/// Why the collector refused a stream, for people: `conflict: …`, `invalid: …`.
fn refusal_reason(r: &StreamRefusal) -> String {
    let kind = match Reason::try_from(r.reason) {
        Ok(Reason::Conflict) => "conflict",
        Ok(Reason::Invalid) => "invalid",
        Ok(Reason::Damaged) => "damaged at the collector",
        _ => "refused",
    };
    format!("{kind}: {}", r.message)
}

/// Why the collector refused a whole bundle, for people.
fn status_reason(status: &Status) -> String {
    let kind = match status.code() {
        Code::DataLoss => "collector store damaged",
        Code::InvalidArgument | Code::OutOfRange => "invalid bundle",
        Code::Unauthenticated => {
            return format!(
                "UNAUTHENTICATED: {} (give the butler a token with LOGDOG_TOKEN or --token-file)",
                status.message()
            );
        }
        Code::PermissionDenied => return format!("PERMISSION_DENIED: {}", status.message()),
        // A TLS failure (see `deliver`): the message says it all.
        Code::Unavailable => return status.message().to_string(),
        _ => "refused",
    };
    format!("{kind} ({:?}): {}", status.code(), status.message())
}

/// Whether a failed call may succeed if tried again.
fn retriable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Internal
            | Code::Unknown
            | Code::Cancelled
    )
}

/// Exponential backoff with jitter: a random delay from half of `initial * 2^attempt` to
/// all of it, capped.
fn backoff(attempt: u32) -> Duration {
    jittered(
        BACKOFF_INITIAL
            .saturating_mul(1 << attempt.min(16))
            .min(BACKOFF_MAX),
    )
}

/// A random delay from half of `cap` to all of it.
fn jittered(cap: Duration) -> Duration {
    // Jitter from the clock's low bits: enough to keep a fleet of butlers from retrying in step.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let frac = f64::from(nanos % 1000) / 1000.0;
    cap.mul_f64(0.5 + frac / 2.0)
}

#[async_trait]
impl Output for GrpcOutput {
    async fn send(&self, bundle: Bundle) -> Result<(), OutputError> {
        let sh = &self.shared;
        let data = encode_bundle(&bundle, sh.secret.as_deref());
        // Keep only the encoding while waiting for the acknowledgement: the bundle's slices
        // pin the butler's read buffers, which would double the memory in flight.
        let tally = Tally::of(&bundle);
        let payload = bundle.payload_bytes() as u64;
        drop(bundle);
        sh.ends_sent(&tally);
        if let Some(spool) = &sh.spool
            && sh.spool_append(spool, &data, tally.clone()).await.is_some()
        {
            // The uploader takes it from here.
            sh.pace(spool).await;
            return Ok(());
        }
        match sh.deliver(&data).await {
            Ok((resp, from)) => {
                // Refused streams are counted as lost; the bundle is acknowledged for the rest.
                sh.acknowledged(&tally, &resp.refused, &sh.targets[from].collector);
                Ok(())
            }
            Err(status) => {
                sh.lost(&tally, &status_reason(&status));
                let what = if status.code() == Code::Unavailable {
                    "could not send"
                } else {
                    "collector refused"
                };
                Err(OutputError::Other(format!(
                    "{what} a bundle of {payload} bytes: {}",
                    status_reason(&status)
                )))
            }
        }
    }

    fn max_bundle_size(&self) -> usize {
        // Room for the prefix secret, added when the bundle is encoded.
        DEFAULT_MAX_BUNDLE_SIZE - SECRET_FIELD_LEN
    }

    fn max_in_flight(&self) -> usize {
        // With a spool a send is an append (then a wait while the uploader is behind): one at
        // a time lets bundles grow while it waits, as in-flight calls do without a spool.
        if self.shared.spool.is_some() {
            1
        } else {
            DEFAULT_MAX_IN_FLIGHT
        }
    }

    fn stats(&self) -> OutputStats {
        let mut s = self.shared.stats.snapshot();
        s.spool = self.shared.spool.as_ref().map(|sp| sp.stats());
        s
    }

    fn coordinator_host(&self) -> Option<String> {
        // The output as given: `grpc://A` or `grpc://A,B`.
        let targets = &self.shared.targets;
        let first = targets.first()?;
        let addrs: Vec<&str> = targets
            .iter()
            .map(|t| t.collector.host_port.as_str())
            .collect();
        Some(format!(
            "{}://{}",
            first.collector.scheme(),
            addrs.join(",")
        ))
    }

    fn holds_sends(&self) -> bool {
        // A send is an append that waits for room on the spool's disk: it keeps its bundle
        // for as long as that takes. After an append failed otherwise, bundles go unspooled
        // and the flush timeout applies to them.
        self.shared
            .spool
            .as_ref()
            .is_some_and(|sp| sp.stats().write_errors == 0)
    }

    async fn close(&self) -> Result<(), OutputError> {
        for t in &self.tasks {
            t.abort();
        }
        let Some(spool) = self.shared.spool.clone() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || spool.close())
            .await
            .map_err(|e| OutputError::Other(e.to_string()))?
            .map_err(|e| OutputError::Other(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use logdog_proto::logpb;
    use prost::Message;

    use super::*;
    use crate::spool::SpoolReader;

    fn bundle(data: &'static [u8], index: u64) -> Bundle {
        crate::testing::text_bundle(data, index)
    }

    #[test]
    fn repeated_warnings_are_logged_once_per_period_with_the_count_left_out() {
        let mut limit = WarnLimit::new(Duration::from_secs(30));
        let t0 = tokio::time::Instant::now();
        assert_eq!(limit.check(t0), Some(0), "the first is logged");
        for i in 1..=17 {
            assert_eq!(limit.check(t0 + Duration::from_secs(i)), None);
        }
        assert_eq!(limit.check(t0 + Duration::from_secs(30)), Some(17));
        assert_eq!(limit.check(t0 + Duration::from_secs(31)), None);
        assert_eq!(limit.check(t0 + Duration::from_secs(90)), Some(1));
    }

    #[test]
    fn auto_compresses_with_zstd_off_loopback_only() {
        let at = |host_port: &str| Collector {
            host_port: host_port.into(),
            tls: false,
        };
        for near in [
            "localhost:1",
            "LOCALHOST:1",
            "127.0.0.1:1",
            "127.9.8.7:1",
            "[::1]:1",
        ] {
            assert_eq!(
                GrpcCompression::Auto.for_collector(&at(near)),
                None,
                "{near}"
            );
            assert_eq!(
                GrpcCompression::Gzip.for_collector(&at(near)),
                Some(CompressionEncoding::Gzip),
                "{near}: asked for"
            );
        }
        for far in [
            "10.0.0.1:1",
            "collector.example:443",
            "[2001:db8::1]:1",
            "128.0.0.1:1",
        ] {
            assert_eq!(
                GrpcCompression::Auto.for_collector(&at(far)),
                Some(CompressionEncoding::Zstd),
                "{far}"
            );
            assert_eq!(GrpcCompression::Off.for_collector(&at(far)), None, "{far}");
        }
        for s in ["auto", "off", "gzip", "zstd"] {
            assert_eq!(s.parse::<GrpcCompression>().unwrap().to_string(), s);
        }
        let err = "lz4".parse::<GrpcCompression>().unwrap_err();
        assert_eq!(
            err,
            "unknown compression \"lz4\": expected auto, off, gzip or zstd"
        );
    }

    #[tokio::test]
    async fn a_failing_collector_is_left_out_for_a_while_then_tried_again() {
        let t = Target::new(
            &Collector {
                host_port: "127.0.0.1:1".into(),
                tls: false,
            },
            &ClientSecurity::default(),
            GrpcCompression::Off,
        )
        .unwrap();
        let t0 = tokio::time::Instant::now();
        assert_eq!(t.down_until(t0), None);
        t.mark_down(t0);
        let until = t.down_until(t0).expect("down");
        assert!(until - t0 >= ADDRESS_DOWN_INITIAL / 2 && until - t0 <= ADDRESS_DOWN_INITIAL);
        // Failures while it is left out do not lengthen the period.
        t.mark_down(t0 + Duration::from_millis(1));
        assert_eq!(t.down_until(t0), Some(until));
        // Back after it; a failure then doubles the period, up to the cap.
        assert_eq!(t.down_until(until), None);
        let mut now = until;
        let mut period = Duration::ZERO;
        for _ in 0..20 {
            t.mark_down(now);
            let u = t.down_until(now).expect("down");
            period = u - now;
            assert!(period <= ADDRESS_DOWN_MAX, "{period:?}");
            now = u;
        }
        assert!(period >= ADDRESS_DOWN_MAX / 2, "at the cap: {period:?}");
        t.mark_up();
        assert_eq!(t.down_until(now), None);
    }

    #[test]
    fn encodes_the_secret_as_field_6() {
        let b = bundle(b"hello\n", 0);
        let secret = [7u8; PREFIX_SECRET_LEN];
        let data = encode_bundle(&b, Some(&secret));
        let decoded = logpb::ButlerLogBundle::decode(data.clone()).unwrap();
        assert_eq!(&decoded.secret[..], &secret[..]);
        assert_eq!(decoded.prefix, "x");
        assert_eq!(data.len(), b.encoded_len() + SECRET_FIELD_LEN);
        // The collector's view of a bundle skips the field.
        let view = logdog_proto::logdog::collector::BundleView::decode(data).unwrap();
        assert_eq!(view.entries.len(), 1);
        // Without a secret, the encoding is the bundle's own.
        assert_eq!(&encode_bundle(&b, None)[..], &b.encode_to_vec()[..]);
    }

    /// Every bundle of one output carries the same fresh 36-byte secret, spooled ones too.
    #[tokio::test]
    async fn spooled_bundles_carry_the_run_secret() {
        let dir = tempfile::tempdir().unwrap();
        // Nothing listens there: the bundles stay in the spool.
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let out = GrpcOutput::new(&addr)
            .unwrap()
            .with_spool(Spool::open(dir.path()).unwrap(), 1);
        let secret = out.prefix_secret().unwrap().clone();
        assert_eq!(secret.len(), PREFIX_SECRET_LEN);
        let other = GrpcOutput::new(&addr).unwrap();
        assert_ne!(
            other.prefix_secret(),
            Some(&secret),
            "a fresh secret per output"
        );
        out.send(bundle(b"one\n", 0)).await.unwrap();
        out.send(bundle(b"two\n", 1)).await.unwrap();
        out.close().await.unwrap();
        drop(out);
        let mut secrets = Vec::new();
        for e in std::fs::read_dir(dir.path()).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_none_or(|x| x != "spool") {
                continue;
            }
            let mut r = SpoolReader::open(&path).unwrap();
            while let Some(item) = r.next_item().unwrap() {
                if let crate::spool::Item::Record { payload, .. } = item {
                    secrets.push(logpb::ButlerLogBundle::decode(payload).unwrap().secret);
                }
            }
        }
        assert_eq!(secrets.len(), 2);
        assert!(secrets.iter().all(|s| *s == secret), "{secrets:?}");
    }

    #[test]
    fn auth_refusals_are_permanent_and_clear() {
        for code in [Code::Unauthenticated, Code::PermissionDenied] {
            let s = Status::new(code, "no");
            assert!(!retriable(&s));
        }
        let r = status_reason(&Status::unauthenticated("a token is needed"));
        assert!(r.starts_with("UNAUTHENTICATED: a token is needed"), "{r}");
        let r = status_reason(&Status::permission_denied("may not write p"));
        assert_eq!(r, "PERMISSION_DENIED: may not write p");
    }
}
