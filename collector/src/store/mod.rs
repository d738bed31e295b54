//! The collector's store, behind one interface with two kinds of storage:
//! - [`embedded`] (the default, `--data DIR`): an index in SQLite and the entries in
//!   append-only segment files, for one collector per directory;
//! - [`postgres`] (`--store postgres://…`): everything in one PostgreSQL database, shared by
//!   any number of collectors.
//!
//! Both hold the same model, and the rules below hold in both; the write path that applies
//! them ([`write_tx`]) is shared, and each kind of storage provides its primitive steps
//! ([`WriteTx`]) and its reads ([`Backend`]).
//!
//! **Durability point.** [`Store::write`] returns once the bundle's new entries and the index
//! rows that point at them are committed durably. The collector acknowledges a bundle only
//! after that, so an acknowledged bundle survives a crash or a power cut; an unacknowledged
//! one may be absent (or present: the butler's retry is then a duplicate and is ignored).
//!
//! **De-duplication and conflicts.** `(stream, index)` is unique. An entry at an index that
//! is already stored is a *duplicate* (a retry, skipped) only when its bytes are the stored
//! bytes; different bytes, a different descriptor, another terminal index, an entry past the
//! terminal index or a `sequence` that does not follow from the stored neighbours are a
//! *conflict*: that stream's part of the bundle is refused whole, and the other streams of the
//! bundle are stored. With several collectors on one database, the writes of one prefix are
//! serialised by the database, so two collectors given the same bundle store it once.
//!
//! **Integrity.** Every stored entry carries the CRC-32 of its stored bytes, checked on every
//! read ([`Store::entries`], [`Store::last_entries`], and so every read path of the collector).
//! A mismatch, missing bytes or an entry that does not decode is [`StoreError::Damaged`],
//! naming the stream and index: nothing damaged is served as data.
//!
//! **Prefix owners.** A butler sends a random secret (`ButlerLogBundle.secret`) with every
//! bundle of a run. [`Store::write_claimed`] checks the bundle's [`Claim`] in the write's own
//! transaction, before anything of the bundle is stored: the first bundle with a secret for a
//! prefix that holds no streams registers the prefix with the secret's SHA-256; after that
//! only bundles with that secret are stored ([`NotOwner`] otherwise). A bundle without a
//! secret is stored for an unregistered prefix unless the claim requires one (auth is on); a
//! prefix that already holds streams written without a secret cannot be claimed later. Of two
//! first bundles with different secrets exactly one is stored, and a restarted collector still
//! knows every owner.
//!
//! **Health.** [`Store::check_writable`] tells whether the store takes writes now (each kind
//! of storage makes a small test write). Its answer is reused for [`WRITABLE_CHECK_TTL`], so
//! asking often costs nothing; a check that hangs counts as a failure after
//! [`WRITABLE_CHECK_STUCK`].
//!
//! **Retention.** [`Store::remove_older`] removes the streams whose last write is older than a
//! cut-off, with their entries and the space they took, except those a caller keeps (followed
//! streams); see `--retain`.

pub mod embedded;
pub mod postgres;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use logdog_proto::logdog::collector::LogStreamState;
use logdog_proto::logpb;
use prost::Message;

use crate::validate::{CheckedEntry, Refusal, RefusalKind, Sequence, next_sequence};

/// Identifies a stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey {
    /// Project.
    pub project: String,
    /// Prefix.
    pub prefix: String,
    /// Name.
    pub name: String,
}

/// What the store keeps per stream.
#[derive(Clone, PartialEq, Message)]
pub struct StreamRecord {
    /// Numeric id (the key of its entries).
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// The descriptor, as first received (prefix filled in).
    #[prost(message, optional, tag = "2")]
    pub desc: Option<logpb::LogStreamDescriptor>,
    /// When the collector first stored anything of the stream.
    #[prost(message, optional, tag = "3")]
    pub created: Option<prost_types::Timestamp>,
    /// Whether a terminal entry arrived.
    #[prost(bool, tag = "4")]
    pub terminated: bool,
    /// The terminal index (-1: ended without entries, or not terminated).
    #[prost(int64, tag = "5")]
    pub terminal_index: i64,
    /// Entries stored.
    #[prost(uint64, tag = "6")]
    pub entry_count: u64,
    /// Payload bytes stored.
    #[prost(uint64, tag = "7")]
    pub byte_count: u64,
    /// Every index below this is stored.
    #[prost(uint64, tag = "8")]
    pub contiguous: u64,
    /// When the collector last stored anything of the stream (an entry or its end); records
    /// written before this field existed have only `created`.
    #[prost(message, optional, tag = "9")]
    pub updated: Option<prost_types::Timestamp>,
}

impl StreamRecord {
    /// The state as the read API reports it.
    pub fn state(&self) -> LogStreamState {
        let complete = self.terminated
            && (self.terminal_index < 0 || self.contiguous > self.terminal_index as u64);
        LogStreamState {
            created: self.created,
            terminal_index: if self.terminated {
                self.terminal_index
            } else {
                -1
            },
            terminated: self.terminated,
            complete,
            entry_count: self.entry_count,
            byte_count: self.byte_count,
            contiguous: self.contiguous,
            abandoned: false,
        }
    }

    /// When the collector last stored anything of the stream, in milliseconds since the Unix
    /// epoch.
    pub(crate) fn last_write_ms(&self) -> i64 {
        self.updated
            .or(self.created)
            .map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
    }
}

/// How long a prefix may receive nothing before its streams that have not ended are reported
/// abandoned, by default (see [`Store::set_abandon_after`]).
pub const DEFAULT_ABANDON_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

/// A stream's descriptor and state.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamInfo {
    /// Descriptor.
    pub desc: logpb::LogStreamDescriptor,
    /// State.
    pub state: LogStreamState,
}

/// How long an answer of [`Store::check_writable`] is reused.
pub const WRITABLE_CHECK_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// A check of [`Store::check_writable`] still running after this long counts as a failure.
pub const WRITABLE_CHECK_STUCK: std::time::Duration = std::time::Duration::from_secs(5);

/// Why the store does not take writes now (see [`Store::check_writable`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unwritable(pub String);

/// The last answer of [`Store::check_writable`] and the check under way.
#[derive(Debug, Default)]
struct WritableCheck {
    last: Option<(std::time::Instant, Result<(), Unwritable>)>,
    running_since: Option<std::time::Instant>,
}

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Stored data or the index is damaged (a checksum mismatch, a missing or short segment,
    /// a malformed database). Permanent: retrying cannot help; `logdog_collector verify`
    /// lists the damage.
    #[error("damaged store: {0}")]
    Damaged(String),
    /// The store's disk is full. Transient: a retry succeeds once there is room.
    #[error("store disk full: {0}")]
    DiskFull(String),
    /// Another collector holds the data directory.
    #[error("{0}")]
    InUse(String),
    /// Any other database or file failure (transient as far as anyone can tell).
    #[error("database: {0}")]
    Db(String),
}

/// What a bundle says about the owner of its prefix (see the module docs, *Prefix owners*).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Claim<'a> {
    /// The bundle's prefix secret (`None`: it carries none).
    pub secret: Option<&'a [u8]>,
    /// Whether a bundle without a secret is refused for an unregistered prefix too (the
    /// collector checks tokens: every butler must prove that it owns its prefix).
    pub required: bool,
}

/// A bundle refused because its prefix belongs to another butler, or because it cannot claim
/// it; nothing of it was stored. The message names the prefix, never the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotOwner(pub String);

/// The SHA-256 kept for a prefix secret.
fn secret_hash(secret: &[u8]) -> [u8; 32] {
    crate::auth::sha256(secret)
}

/// Compares two hashes in time independent of where they differ.
fn same_hash(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks `claim` against the owner of `project/prefix` in the write transaction `tx`, and
/// registers the prefix when the claim is its first secret. `Ok(Err(_))`: refused.
fn check_owner<T: WriteTx + ?Sized>(
    tx: &mut T,
    project: &str,
    prefix: &str,
    claim: &Claim<'_>,
) -> Result<Result<bool, NotOwner>, StoreError> {
    let path = format!("{project}/{prefix}");
    match (tx.owner(project, prefix)?, claim.secret) {
        (Some(hash), Some(secret)) if same_hash(&hash, &secret_hash(secret)) => Ok(Ok(false)),
        (Some(_), _) => Ok(Err(NotOwner(format!(
            "prefix {path} is owned by another butler: wrong or missing prefix secret"
        )))),
        (None, None) if claim.required => Ok(Err(NotOwner(format!(
            "bundles must carry a prefix secret (prefix {path} has no owner yet)"
        )))),
        (None, None) => Ok(Ok(false)),
        (None, Some(secret)) => {
            if tx.prefix_written(project, prefix)? {
                return Ok(Err(NotOwner(format!(
                    "prefix {path} already holds streams written without a prefix secret: \
                     a prefix written without a secret cannot be claimed later"
                ))));
            }
            tx.register(project, prefix, &secret_hash(secret), now().seconds)?;
            Ok(Ok(true))
        }
    }
}

/// What a write did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Entries newly stored.
    pub stored: u32,
    /// Entries that were already there, byte for byte.
    pub duplicates: u32,
    /// Streams whose state changed.
    pub touched: Vec<StreamKey>,
    /// Streams refused because they contradict what is stored; nothing of them was stored.
    pub refused: Vec<Refusal>,
    /// Whether this write registered its prefix's owner (its first bundle with a secret).
    pub registered: bool,
    /// Payload bytes of the entries newly stored.
    pub bytes: u64,
}

/// The store. Cheap to clone; all clones share one storage.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Where the data is: the embedded store or PostgreSQL.
    backend: Box<dyn Backend>,
    /// Bundles being written now (see [`Store::writing`]).
    activity: tokio::sync::watch::Sender<usize>,
    /// When the last bundle write ended, in milliseconds since `epoch` plus one (0: never).
    last_write_ms: std::sync::atomic::AtomicU64,
    epoch: tokio::time::Instant,
    /// The collector's metrics (see [`Store::metrics`]).
    metrics: crate::metrics::Metrics,
    /// See [`Store::check_writable`].
    writable: Mutex<WritableCheck>,
    /// See [`Store::set_abandon_after`], in milliseconds.
    abandon_after_ms: std::sync::atomic::AtomicU64,
}

/// Marks a bundle write in progress, from its arrival to its answer; see [`Store::writing`].
#[derive(Debug)]
pub struct Writing {
    store: Store,
}

impl Drop for Writing {
    fn drop(&mut self) {
        let inner = &self.store.inner;
        inner.last_write_ms.store(
            inner.epoch.elapsed().as_millis() as u64 + 1,
            std::sync::atomic::Ordering::Relaxed,
        );
        inner.activity.send_modify(|n| *n = n.saturating_sub(1));
    }
}

pub(crate) fn now() -> prost_types::Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// Now, in milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    let t = now();
    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
}

pub(crate) fn decode_record(blob: &[u8]) -> Result<StreamRecord, StoreError> {
    StreamRecord::decode(blob).map_err(|e| StoreError::Db(format!("corrupt stream record: {e}")))
}

/// The CRC-32 stored with an entry.
pub fn checksum(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// Names a stream in messages.
pub(crate) fn path_of(key: &StreamKey) -> String {
    format!("{}/{}/+/{}", key.project, key.prefix, key.name)
}

/// Decodes a stored entry's bytes (already checked against their checksum).
pub(crate) fn decode_entry(
    key: &StreamKey,
    idx: u64,
    data: &[u8],
) -> Result<logpb::LogEntry, StoreError> {
    logpb::LogEntry::decode(data).map_err(|err| {
        StoreError::Damaged(format!(
            "{} entry {idx}: does not decode: {err}",
            path_of(key)
        ))
    })
}

/// What a kind of storage provides: one write transaction, and the reads. Every method
/// blocks; the store calls them off the async threads.
pub(crate) trait Backend: Send + Sync + std::fmt::Debug {
    /// Stores `streams` (at most [`PART_ENTRIES`] entries) in one transaction, applying the
    /// rules of [`write_tx`].
    fn write_part(
        &self,
        project: &str,
        prefix: &str,
        claim: &Claim<'_>,
        streams: &[CheckedEntry],
    ) -> Result<Result<WriteOutcome, NotOwner>, StoreError>;

    /// A stream's record.
    fn record(&self, key: &StreamKey) -> Result<Option<StreamRecord>, StoreError>;

    /// The records of every stream of `project` (with their keys), unsorted.
    fn records(&self, project: &str) -> Result<Vec<(StreamKey, StreamRecord)>, StoreError>;

    /// The records of the streams of one prefix.
    fn prefix_records(&self, project: &str, prefix: &str) -> Result<Vec<StreamRecord>, StoreError>;

    /// Contiguous entries from `from` (see [`Store::entries`]).
    fn entries(
        &self,
        key: &StreamKey,
        from: u64,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<logpb::LogEntry>, StoreError>;

    /// The last `n` stored entries, in index order.
    fn last_entries(&self, key: &StreamKey, n: usize) -> Result<Vec<logpb::LogEntry>, StoreError>;

    /// Whether `project/prefix` has an owner.
    fn prefix_registered(&self, project: &str, prefix: &str) -> Result<bool, StoreError>;

    /// Every project with at least one stream, sorted.
    fn projects(&self) -> Result<Vec<String>, StoreError>;

    /// A test write, uncached (see [`Store::check_writable`]).
    fn probe_writable(&self) -> Result<(), Unwritable>;

    /// Bytes the store takes on disk.
    fn disk_bytes(&self) -> u64;

    /// Raw bytes of blocks stored uncompressed that wait to be compressed.
    fn deferred_bytes(&self) -> u64 {
        0
    }

    /// Waits, at most `timeout`, until no block waits to be compressed; whether none does.
    fn settle(&self, _timeout: std::time::Duration) -> bool {
        true
    }

    /// Removes `streams` (records, entries and their space), each only if it still was last
    /// written at or before `cutoff_ms`; returns those removed.
    fn remove(&self, streams: &[StreamKey], cutoff_ms: i64) -> Result<Vec<StreamKey>, StoreError>;

    /// Streams written by other collectors sharing the storage, as they are written: calls
    /// `changed` with their keys until the store is dropped. Storage that no other collector
    /// writes to never calls it.
    fn follow_changes(&self, changed: Box<dyn Fn(Vec<StreamKey>) + Send + Sync>);

    /// Tells other collectors that share the storage which streams this one keeps (followed
    /// streams are never removed by retention, whichever collector runs it); returns the
    /// streams kept by any collector.
    fn keep(
        &self,
        mine: &[StreamKey],
        ttl: std::time::Duration,
    ) -> Result<Vec<StreamKey>, StoreError>;
}

impl Store {
    /// Opens (or creates) the embedded store in `dir` (see [`embedded`]).
    ///
    /// # Errors
    /// The directory or database cannot be opened.
    pub fn open(dir: &std::path::Path) -> Result<Self, StoreError> {
        Self::open_embedded(dir, embedded::EmbeddedOptions::default())
    }

    /// [`Store::open`] with `options`.
    ///
    /// # Errors
    /// The directory or database cannot be opened.
    pub fn open_embedded(
        dir: &std::path::Path,
        options: embedded::EmbeddedOptions,
    ) -> Result<Self, StoreError> {
        let backend = embedded::Embedded::open(dir, options)?;
        Ok(Self::with(Box::new(backend)))
    }

    /// [`Store::open`], starting a new segment file once the active one passes
    /// `segment_size` bytes.
    ///
    /// # Errors
    /// The directory or database cannot be opened.
    pub fn open_with_segment_size(
        dir: &std::path::Path,
        segment_size: u64,
    ) -> Result<Self, StoreError> {
        Self::open_embedded(
            dir,
            embedded::EmbeddedOptions {
                segment_size,
                ..Default::default()
            },
        )
    }

    /// Connects to the PostgreSQL database at `url` (`postgres://USER@HOST:PORT/DB`) and
    /// creates or migrates its schema (see [`postgres`]). Blocks: call it off the async
    /// threads.
    ///
    /// # Errors
    /// The database cannot be reached, or holds a schema of another version.
    pub fn open_postgres(url: &str) -> Result<Self, StoreError> {
        let backend = postgres::Postgres::open(url)?;
        Ok(Self::with(Box::new(backend)))
    }

    fn with(backend: Box<dyn Backend>) -> Self {
        Self {
            inner: Arc::new(Inner {
                backend,
                activity: tokio::sync::watch::channel(0).0,
                last_write_ms: 0.into(),
                epoch: tokio::time::Instant::now(),
                metrics: crate::metrics::Metrics::new(),
                writable: Mutex::new(WritableCheck::default()),
                abandon_after_ms: (DEFAULT_ABANDON_AFTER.as_millis() as u64).into(),
            }),
        }
    }

    /// Streams that have not ended are reported abandoned (`LogStreamState::abandoned`) once
    /// nothing of their whole prefix has arrived for longer than `after` (default
    /// [`DEFAULT_ABANDON_AFTER`]): a butler that was killed never ends its streams.
    pub fn set_abandon_after(&self, after: std::time::Duration) {
        let ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        self.inner
            .abandon_after_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether a stream in `state` whose prefix last received something at `last_ms` is
    /// abandoned now.
    fn abandoned(&self, state: &LogStreamState, last_ms: i64) -> bool {
        let after = self
            .inner
            .abandon_after_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        !state.terminated
            && now_ms().saturating_sub(last_ms) > i64::try_from(after).unwrap_or(i64::MAX)
    }

    /// The metrics of the collector serving this store: every server of the collector reports
    /// into them.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.inner.metrics
    }

    /// Bytes the store takes on disk (for PostgreSQL: the database's size). Blocks.
    pub fn disk_bytes(&self) -> u64 {
        self.inner.backend.disk_bytes()
    }

    /// Raw bytes of blocks written uncompressed that wait to be compressed (see
    /// [`embedded::EmbeddedOptions::max_deferred_bytes`]; always 0 on PostgreSQL).
    pub fn deferred_bytes(&self) -> u64 {
        self.inner.backend.deferred_bytes()
    }

    /// Waits, at most `timeout`, until every block written so far is compressed; whether it
    /// is. Blocks: call it off the async threads.
    pub fn settle(&self, timeout: std::time::Duration) -> bool {
        self.inner.backend.settle(timeout)
    }

    /// Whether the store takes writes now: a test write, made durable like a bundle's (for the
    /// embedded store also a small file in the data directory).
    ///
    /// The answer is reused for [`WRITABLE_CHECK_TTL`]: callers may ask as often as they like.
    /// While one caller runs the check (blocking for as long as a write takes), the others get
    /// the previous answer at once, or a failure once the check has run for
    /// [`WRITABLE_CHECK_STUCK`] (a write that hangs). Blocks: call it off the async threads.
    ///
    /// # Errors
    /// The store does not take writes; the message says what failed.
    pub fn check_writable(&self) -> Result<(), Unwritable> {
        let now = std::time::Instant::now();
        {
            let mut check = self
                .inner
                .writable
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some((at, answer)) = &check.last
                && now.saturating_duration_since(*at) < WRITABLE_CHECK_TTL
            {
                return answer.clone();
            }
            if let Some(since) = check.running_since {
                let running = now.saturating_duration_since(since);
                if running >= WRITABLE_CHECK_STUCK {
                    return Err(Unwritable(format!(
                        "a test write to the store has not finished for {}s",
                        running.as_secs()
                    )));
                }
                return check.last.as_ref().map_or(Ok(()), |(_, a)| a.clone());
            }
            check.running_since = Some(now);
        }
        let answer = self.inner.backend.probe_writable();
        let mut check = self
            .inner
            .writable
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        check.running_since = None;
        check.last = Some((std::time::Instant::now(), answer.clone()));
        answer
    }

    /// Marks a bundle write as in progress until the guard is dropped. Readers that can wait
    /// (followers) use [`Store::quiet`] to let writes go first.
    pub fn writing(&self) -> Writing {
        self.inner.activity.send_modify(|n| *n += 1);
        Writing {
            store: self.clone(),
        }
    }

    /// Waits until no bundle has been written for `gap` (none in progress, none ended within
    /// `gap`), or `at_most`: followers yield to writers, so that on a busy collector they lag
    /// behind rather than slow the writes down.
    pub async fn quiet(&self, gap: std::time::Duration, at_most: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + at_most;
        let mut rx = self.inner.activity.subscribe();
        loop {
            if tokio::time::timeout_at(deadline, rx.wait_for(|n| *n == 0))
                .await
                .is_err()
            {
                return;
            }
            let last = self
                .inner
                .last_write_ms
                .load(std::sync::atomic::Ordering::Relaxed);
            if last == 0 {
                return; // nothing was ever written
            }
            let now = self.inner.epoch.elapsed().as_millis() as u64 + 1;
            let since = std::time::Duration::from_millis(now.saturating_sub(last));
            if since >= gap {
                return;
            }
            let wake = (tokio::time::Instant::now() + (gap - since)).min(deadline);
            tokio::time::sleep_until(wake).await;
            if wake == deadline {
                return;
            }
        }
    }

    /// Stores a checked bundle durably (see the module docs); returns once it is durable.
    /// Streams that contradict what is stored are refused one by one (in
    /// [`WriteOutcome::refused`]) and the rest is stored.
    ///
    /// **Fairness.** A bundle of more than [`PART_ENTRIES`] entries is stored in parts of at
    /// most that many, each its own transaction, and the writer is handed to waiting writers
    /// between parts: one huge bundle of tiny entries delays other bundles by one part, not by
    /// the whole bundle. A conflict found in a later part refuses the rest of that stream; its
    /// earlier parts stay stored (they are byte-identical retries when the bundle comes again).
    ///
    /// The bundle carries no prefix secret (see [`Store::write_claimed`]): a prefix that a
    /// butler registered refuses it.
    ///
    /// # Errors
    /// A database or disk failure; nothing of the failing part (or of the parts after it) is
    /// stored then. The prefix is registered to a butler (nothing is stored then either).
    pub fn write(
        &self,
        project: &str,
        prefix: &str,
        streams: &[CheckedEntry],
    ) -> Result<WriteOutcome, StoreError> {
        match self.write_claimed(project, prefix, &Claim::default(), streams)? {
            Ok(out) => Ok(out),
            // A write without a secret to a prefix that a butler registered.
            Err(NotOwner(message)) => Err(StoreError::Db(format!("refused: {message}"))),
        }
    }

    /// [`Store::write`] for a bundle that makes `claim` about its prefix's owner (see the
    /// module docs, *Prefix owners*): the claim is checked, and the prefix registered on its
    /// first secret, in the transaction of the bundle's first part, before anything of it is
    /// stored. `Ok(Err(_))`: the bundle is refused whole and nothing of it is stored.
    ///
    /// # Errors
    /// A database or disk failure, as for [`Store::write`].
    pub fn write_claimed(
        &self,
        project: &str,
        prefix: &str,
        claim: &Claim<'_>,
        streams: &[CheckedEntry],
    ) -> Result<Result<WriteOutcome, NotOwner>, StoreError> {
        let backend = &self.inner.backend;
        let total: usize = streams.iter().map(|e| e.logs.len()).sum();
        if total <= PART_ENTRIES {
            return backend.write_part(project, prefix, claim, streams);
        }
        let mut out = WriteOutcome::default();
        for (n, part) in parts(streams, PART_ENTRIES).into_iter().enumerate() {
            // A stream refused in an earlier part takes nothing from the later ones.
            let (skipped, part): (Vec<_>, Vec<_>) = part
                .into_iter()
                .partition(|e| out.refused.iter().any(|r| r.name == e.desc.name));
            for e in skipped {
                if let Some(r) = out.refused.iter_mut().find(|r| r.name == e.desc.name) {
                    r.entries = r
                        .entries
                        .saturating_add(u32::try_from(e.logs.len()).unwrap_or(u32::MAX));
                }
            }
            // Every part checks the claim; the first registers the prefix, and a registration
            // is never undone, so the later parts pass.
            let done = match backend.write_part(project, prefix, claim, &part)? {
                Ok(done) => done,
                Err(refused) if n == 0 => return Ok(Err(refused)),
                // Not expected: the first part stored streams, so the prefix can no longer be
                // claimed by anyone else.
                Err(NotOwner(message)) => {
                    return Err(StoreError::Db(format!("refused after part {n}: {message}")));
                }
            };
            out.registered |= done.registered;
            out.stored += done.stored;
            out.bytes += done.bytes;
            out.duplicates += done.duplicates;
            for key in done.touched {
                if !out.touched.contains(&key) {
                    out.touched.push(key);
                }
            }
            out.refused.extend(done.refused);
        }
        Ok(Ok(out))
    }

    /// A stream's descriptor and state, if the store has heard of it.
    ///
    /// # Errors
    /// A database failure.
    pub fn stream(&self, key: &StreamKey) -> Result<Option<StreamInfo>, StoreError> {
        let Some(rec) = self.inner.backend.record(key)? else {
            return Ok(None);
        };
        let mut state = rec.state();
        // Only a stream quiet for that long itself needs its prefix's other streams read.
        if self.abandoned(&state, rec.last_write_ms()) {
            let last = self
                .inner
                .backend
                .prefix_records(&key.project, &key.prefix)?
                .iter()
                .map(StreamRecord::last_write_ms)
                .max()
                .unwrap_or(0);
            state.abandoned = self.abandoned(&state, last.max(rec.last_write_ms()));
        }
        Ok(Some(StreamInfo {
            state,
            desc: rec.desc.unwrap_or_default(),
        }))
    }

    /// Contiguous entries from `from`: stops at the first missing index, after `max_count`
    /// entries, or once `max_bytes` of encoded entries are collected (at least one entry is
    /// returned when one is there).
    ///
    /// # Errors
    /// A database failure.
    pub fn entries(
        &self,
        key: &StreamKey,
        from: u64,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<logpb::LogEntry>, StoreError> {
        self.inner.backend.entries(key, from, max_count, max_bytes)
    }

    /// The last `n` stored entries of a stream, in index order.
    ///
    /// # Errors
    /// A database failure.
    pub fn last_entries(
        &self,
        key: &StreamKey,
        n: usize,
    ) -> Result<Vec<logpb::LogEntry>, StoreError> {
        self.inner.backend.last_entries(key, n)
    }

    /// Whether a butler has registered `project/prefix` with its prefix secret.
    ///
    /// # Errors
    /// A database failure.
    pub fn prefix_registered(&self, project: &str, prefix: &str) -> Result<bool, StoreError> {
        self.inner.backend.prefix_registered(project, prefix)
    }

    /// Every project with at least one stream, sorted.
    ///
    /// # Errors
    /// A database failure.
    pub fn projects(&self) -> Result<Vec<String>, StoreError> {
        self.inner.backend.projects()
    }

    /// Every stream of `project` whose prefix is `prefix` or lies under it (`""`: all), sorted
    /// by path.
    ///
    /// # Errors
    /// A database failure.
    pub fn list(
        &self,
        project: &str,
        prefix: &str,
    ) -> Result<Vec<(StreamKey, StreamInfo)>, StoreError> {
        let mut last_write = std::collections::HashMap::<String, i64>::new();
        let mut out = Vec::new();
        for (key, rec) in self.inner.backend.records(project)? {
            let under = prefix.is_empty()
                || key.prefix == prefix
                || key
                    .prefix
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with('/'));
            if !under {
                continue;
            }
            let at = last_write.entry(key.prefix.clone()).or_insert(0);
            *at = (*at).max(rec.last_write_ms());
            out.push((
                key,
                StreamInfo {
                    state: rec.state(),
                    desc: rec.desc.unwrap_or_default(),
                },
            ));
        }
        // A prefix's streams all lie under `prefix` together, so each prefix's last write is
        // known here.
        for (key, info) in &mut out {
            let last = last_write.get(&key.prefix).copied().unwrap_or(0);
            info.state.abandoned = self.abandoned(&info.state, last);
        }
        out.sort_by_key(|(k, _)| format!("{}/+/{}", k.prefix, k.name));
        Ok(out)
    }

    /// Calls `changed` with the keys of streams that other collectors sharing this store
    /// write, as they write them, for as long as the store lives (never for the embedded
    /// store, which one collector owns).
    pub fn follow_changes(&self, changed: impl Fn(Vec<StreamKey>) + Send + Sync + 'static) {
        self.inner.backend.follow_changes(Box::new(changed));
    }

    /// Tells the other collectors sharing the store that this one's followers are on
    /// `followed`, for `lease` (their retention keeps those streams). Nothing to do for the
    /// embedded store. Blocks.
    ///
    /// # Errors
    /// A database failure.
    pub fn publish_followed(
        &self,
        followed: &[StreamKey],
        lease: std::time::Duration,
    ) -> Result<(), StoreError> {
        self.inner.backend.keep(followed, lease).map(drop)
    }

    /// Retention: removes every stream whose last write (an entry or its end) is older than
    /// `age`, with its entries and the space they took, except the streams in `followed` and
    /// those that other collectors sharing the store report as followed. A stream written
    /// meanwhile is kept. Returns the streams removed. Blocks.
    ///
    /// `followed` is published for the other collectors for `lease` (run this at least that
    /// often while followers stay).
    ///
    /// # Errors
    /// A database failure; streams removed before it stay removed.
    pub fn remove_older(
        &self,
        age: std::time::Duration,
        followed: &[StreamKey],
        lease: std::time::Duration,
    ) -> Result<Vec<StreamKey>, StoreError> {
        let backend = &self.inner.backend;
        let kept: std::collections::HashSet<StreamKey> =
            backend.keep(followed, lease)?.into_iter().collect();
        let cutoff = now_ms().saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX));
        let mut old = Vec::new();
        for project in backend.projects()? {
            for (key, rec) in backend.records(&project)? {
                if rec.last_write_ms() <= cutoff && !kept.contains(&key) && !followed.contains(&key)
                {
                    old.push(key);
                }
            }
        }
        if old.is_empty() {
            return Ok(old);
        }
        backend.remove(&old, cutoff)
    }
}

/// A stored entry as the write path compares it: its index and sequence; the rest says where
/// its bytes are, for [`WriteTx::stored_bytes`].
pub(crate) trait Stored {
    /// Its stream index.
    fn idx(&self) -> u64;
    /// Its sequence and span (`None` where an older layout stored none).
    fn seq(&self) -> Option<Sequence>;
}

/// Stored entries near a stream's part of a bundle.
#[derive(Debug)]
pub(crate) struct Nearby<S> {
    /// At the bundle's indices.
    pub at: Vec<S>,
    /// The nearest below the bundle's first index.
    pub before: Option<S>,
    /// The nearest above the bundle's last index.
    pub after: Option<S>,
}

impl<S> Default for Nearby<S> {
    fn default() -> Self {
        Self {
            at: Vec::new(),
            before: None,
            after: None,
        }
    }
}

/// An entry that a write stores: its index, its bytes as they arrived, its sequence.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NewEntry<'a> {
    pub idx: u64,
    pub raw: &'a Bytes,
    pub seq: Option<Sequence>,
}

/// The streams of a write, packed into blocks before the write takes its lock: compressing is
/// most of a write's work, and done here several writes compress at once. Each stream is
/// packed as if all of its entries were new (the usual case); one with some already stored is
/// packed again under the lock ([`Prepacked::take`]).
pub(crate) struct Prepacked<'a> {
    streams: Vec<(&'a CheckedEntry, Option<Vec<crate::blocks::Packed>>)>,
    /// Larger blocks are stored raw and compressed later (see [`crate::blocks::pack`]).
    defer: bool,
}

impl<'a> Prepacked<'a> {
    /// Packs every stream of a write; with `defer`, see [`crate::blocks::pack`].
    pub fn new(streams: &'a [CheckedEntry], defer: bool) -> Self {
        Self {
            streams: streams
                .iter()
                .map(|e| {
                    let packed = crate::blocks::pack(e.logs.iter().map(|l| l.1.as_ref()), defer);
                    (e, Some(packed))
                })
                .collect(),
            defer,
        }
    }

    /// The blocks of exactly the entries `new`: packed beforehand when they are all of a
    /// stream's entries (the very same bytes), else packed now.
    pub fn take(&mut self, new: &[NewEntry<'_>]) -> Vec<crate::blocks::Packed> {
        self.streams
            .iter_mut()
            .find(|(stream, _)| {
                stream.logs.len() == new.len()
                    && stream
                        .logs
                        .iter()
                        .zip(new)
                        .all(|(l, n)| std::ptr::eq(&l.1, n.raw))
            })
            .and_then(|(_, packed)| packed.take())
            .unwrap_or_else(|| crate::blocks::pack(new.iter().map(|e| e.raw.as_ref()), self.defer))
    }
}

/// The primitive steps of a write, inside one transaction of one kind of storage; the rules
/// are applied by [`write_tx`].
pub(crate) trait WriteTx {
    /// A stored entry, as this storage finds it.
    type Stored: Stored;

    /// The SHA-256 of the owner's secret of `project/prefix`, if it has an owner.
    fn owner(&mut self, project: &str, prefix: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Whether `project/prefix` holds streams.
    fn prefix_written(&mut self, project: &str, prefix: &str) -> Result<bool, StoreError>;
    /// Registers the owner of `project/prefix`.
    fn register(
        &mut self,
        project: &str,
        prefix: &str,
        hash: &[u8; 32],
        at_secs: i64,
    ) -> Result<(), StoreError>;
    /// A stream's record.
    fn find(&mut self, key: &StreamKey) -> Result<Option<StreamRecord>, StoreError>;
    /// Creates a stream's row; returns its id.
    fn create(&mut self, key: &StreamKey) -> Result<u64, StoreError>;
    /// The stored entries of stream `id` at indices `lo..=hi` and the nearest on either side.
    fn nearby(&mut self, id: u64, lo: u64, hi: u64) -> Result<Nearby<Self::Stored>, StoreError>;
    /// Whether stream `id` holds entries past index `t`.
    fn past(&mut self, id: u64, t: i64) -> Result<bool, StoreError>;
    /// A stored entry's bytes, checked against its checksum.
    fn stored_bytes(&mut self, key: &StreamKey, e: &Self::Stored) -> Result<Vec<u8>, StoreError>;
    /// Stores new entries of stream `id` (in index order).
    fn insert(&mut self, key: &StreamKey, id: u64, new: &[NewEntry<'_>]) -> Result<(), StoreError>;
    /// The first index at or after `from` that stream `id` does not hold.
    fn contiguous(&mut self, id: u64, from: u64) -> Result<u64, StoreError>;
    /// Rewrites a stream's record.
    fn update(&mut self, key: &StreamKey, rec: &StreamRecord) -> Result<(), StoreError>;
}

/// Applies one part of a bundle in the transaction `tx` (see the module docs): checks the
/// claim, then for each stream holds its entries against what is stored, refuses it on a
/// conflict or confined damage, and stores the new entries and the updated record.
pub(crate) fn write_tx<T: WriteTx>(
    tx: &mut T,
    project: &str,
    prefix: &str,
    claim: &Claim<'_>,
    streams: &[CheckedEntry],
) -> Result<Result<WriteOutcome, NotOwner>, StoreError> {
    let mut out = WriteOutcome::default();
    match check_owner(tx, project, prefix, claim)? {
        Ok(registered) => out.registered = registered,
        Err(refused) => return Ok(Err(refused)),
    }
    for e in streams {
        let key = StreamKey {
            project: project.to_string(),
            prefix: prefix.to_string(),
            name: e.desc.name.clone(),
        };
        let stored = tx.find(&key)?;
        let mut desc = e.desc.clone();
        desc.prefix = prefix.to_string();
        // What is stored at this bundle's indices, and the nearest entries on either side.
        let nearby = match (&stored, e.logs.first(), e.logs.last()) {
            (Some(rec), Some(first), Some(last)) => tx.nearby(rec.id, first.0, last.0)?,
            _ => Nearby::default(),
        };
        let beyond = match (&stored, e.terminal) {
            (Some(rec), Some(t)) => tx.past(rec.id, t)?.then_some(t),
            _ => None,
        };
        // Damage confined to this stream's stored entries refuses this stream alone; anything
        // else fails the write.
        let verdict = match plan(tx, &key, stored.as_ref(), &desc, e, &nearby, beyond) {
            Ok(Ok(plan)) => Ok(plan),
            Ok(Err(conflict)) => Err((RefusalKind::Conflict, conflict)),
            Err(StoreError::Damaged(what)) => Err((RefusalKind::Damaged, what)),
            Err(other) => return Err(other),
        };
        let plan = match verdict {
            Ok(plan) => plan,
            Err((kind, message)) => {
                tracing::warn!(stream = %path_of(&key), %message, kind = kind.as_str(), "refused a stream's part of a bundle");
                out.refused.push(Refusal {
                    name: key.name.clone(),
                    kind,
                    message,
                    entries: u32::try_from(e.logs.len()).unwrap_or(u32::MAX),
                });
                continue;
            }
        };
        let (mut dirty, mut rec) = match stored {
            Some(rec) => (false, rec),
            None => {
                let id = tx.create(&key)?;
                let rec = StreamRecord {
                    id,
                    desc: Some(desc),
                    created: Some(now()),
                    terminal_index: -1,
                    ..Default::default()
                };
                (true, rec)
            }
        };
        if let Some(t) = e.terminal
            && !rec.terminated
        {
            rec.terminated = true;
            rec.terminal_index = t;
            dirty = true;
        }
        out.duplicates += plan.duplicates;
        if !plan.new.is_empty() {
            let new: Vec<NewEntry<'_>> = plan
                .new
                .iter()
                .map(|&k| NewEntry {
                    idx: e.logs[k].0,
                    raw: &e.logs[k].1,
                    seq: e.sequences.get(k).copied(),
                })
                .collect();
            tx.insert(&key, rec.id, &new)?;
            for &k in &plan.new {
                let payload = e.logs[k].2;
                rec.entry_count += 1;
                rec.byte_count += payload;
                out.bytes += payload;
                out.stored += 1;
            }
            dirty = true;
        }
        if dirty {
            rec.updated = Some(now());
            rec.contiguous = tx.contiguous(rec.id, rec.contiguous)?;
            tx.update(&key, &rec)?;
            out.touched.push(key);
        }
    }
    Ok(Ok(out))
}

/// Most entries stored in one transaction: a larger bundle is stored in parts (see
/// [`Store::write`]). About 20 ms of work on a small machine.
pub const PART_ENTRIES: usize = 8192;

/// Cuts a bundle's streams into parts of at most `max` entries, keeping stream order and, within
/// a stream, index order; a stream's terminal index goes with its last part.
fn parts(streams: &[CheckedEntry], max: usize) -> Vec<Vec<CheckedEntry>> {
    let mut out = Vec::new();
    let mut part: Vec<CheckedEntry> = Vec::new();
    let mut room = max;
    for e in streams {
        let mut from = 0;
        loop {
            let take = (e.logs.len() - from).min(room);
            let to = from + take;
            let last = to == e.logs.len();
            part.push(CheckedEntry {
                desc: e.desc.clone(),
                terminal: if last { e.terminal } else { None },
                logs: e.logs[from..to].to_vec(),
                sequences: e.sequences.get(from..to).unwrap_or_default().to_vec(),
            });
            room -= take;
            from = to;
            if room == 0 {
                out.push(std::mem::take(&mut part));
                room = max;
            }
            if last {
                break;
            }
        }
    }
    if !part.is_empty() {
        out.push(part);
    }
    out
}

/// What of a stream's part of a bundle is new (indices into its logs) and how many entries are
/// byte-identical retries.
struct Plan {
    new: Vec<usize>,
    duplicates: u32,
}

/// Holds a stream's part of a bundle against what is stored: `Ok(Err(why))` is a conflict.
/// `beyond` is the bundle's terminal index when entries past it are stored.
///
/// # Errors
/// A stored entry that the comparison must read is damaged.
fn plan<T: WriteTx + ?Sized>(
    tx: &mut T,
    key: &StreamKey,
    stored: Option<&StreamRecord>,
    desc: &logpb::LogStreamDescriptor,
    e: &CheckedEntry,
    nearby: &Nearby<T::Stored>,
    beyond: Option<i64>,
) -> Result<Result<Plan, String>, StoreError> {
    let name = path_of(key);
    if let Some(rec) = stored {
        if let Some(old) = &rec.desc
            && old != desc
        {
            return Ok(Err(format!(
                "stream {name}: the descriptor differs from the stored one ({})",
                desc_difference(old, desc)
            )));
        }
        if let Some(t) = e.terminal
            && rec.terminated
            && rec.terminal_index != t
        {
            return Ok(Err(format!(
                "stream {name}: terminal index {t} differs from the stored {}",
                rec.terminal_index
            )));
        }
        if rec.terminated
            && let Some((i, _, _)) = e
                .logs
                .iter()
                .find(|(i, _, _)| rec.terminal_index < 0 || *i > rec.terminal_index as u64)
        {
            return Ok(Err(format!(
                "stream {name}: entry {i} is past the stored terminal index {}",
                rec.terminal_index
            )));
        }
    }
    if let Some(t) = beyond {
        return Ok(Err(format!(
            "stream {name}: terminal index {t}, but entries past it are stored"
        )));
    }
    let at: std::collections::HashMap<u64, &T::Stored> =
        nearby.at.iter().map(|s| (s.idx(), s)).collect();
    let mut plan = Plan {
        new: Vec::new(),
        duplicates: 0,
    };
    for (k, (i, raw, _)) in e.logs.iter().enumerate() {
        match at.get(i) {
            Some(old) => {
                if tx.stored_bytes(key, old)? != raw.as_ref() {
                    return Ok(Err(format!(
                        "stream {name}: entry {i} differs from the stored entry {i}"
                    )));
                }
                plan.duplicates += 1;
            }
            None => plan.new.push(k),
        }
    }
    // Sequences never go back: the bundle's first entry starts no earlier than the stored
    // entry before it ends, exactly there when it is the one right before; and likewise its
    // last entry against the stored entry after it.
    let first = e.logs.first().map(|l| l.0).zip(e.sequences.first());
    if let (Some((i, s)), Some(prev)) = (first, &nearby.before)
        && let Some(p) = prev.seq()
        && let Some(end) = next_sequence(p)
        && (s.sequence < end || (prev.idx() + 1 == i && s.sequence != end))
    {
        return Ok(Err(format!(
            "stream {name}: entry {i} has sequence {}, but the stored entry {} (sequence {}, \
             spanning {}) is followed by sequence {end}",
            s.sequence,
            prev.idx(),
            p.sequence,
            p.span
        )));
    }
    let last = e.logs.last().map(|l| l.0).zip(e.sequences.last());
    if let (Some((i, s)), Some(next)) = (last, &nearby.after)
        && let Some(n) = next.seq()
        && let Some(end) = next_sequence(*s)
        && (end > n.sequence || (i + 1 == next.idx() && end != n.sequence))
    {
        return Ok(Err(format!(
            "stream {name}: entry {i} (sequence {}, spanning {}) is followed by sequence {end}, \
             but the stored entry {} has sequence {}",
            s.sequence,
            s.span,
            next.idx(),
            n.sequence
        )));
    }
    Ok(Ok(plan))
}

/// Names the first field in which two descriptors differ.
fn desc_difference(old: &logpb::LogStreamDescriptor, new: &logpb::LogStreamDescriptor) -> String {
    if old.stream_type != new.stream_type {
        return format!(
            "type {} where {} is stored",
            new.stream_type, old.stream_type
        );
    }
    if old.content_type != new.content_type {
        return format!(
            "content type {:?} where {:?} is stored",
            new.content_type, old.content_type
        );
    }
    if old.timestamp != new.timestamp {
        return "another timestamp".to_string();
    }
    if old.tags != new.tags {
        return "other tags".to_string();
    }
    "another binary file extension".to_string()
}
