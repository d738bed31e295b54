//! The collector's embedded store: an index in SQLite (bundled, through `rusqlite`, WAL mode,
//! `synchronous=FULL`) and the entries themselves in append-only segment files
//! ([`crate::segments`]). `docs/store-choice.md` has the measurements behind the choice.
//!
//! Layout of the data directory:
//! - `collector.sqlite`, table `streams`: one row per stream (`project`, `prefix`, `name`,
//!   unique together) with its [`StreamRecord`]: the descriptor, the terminal index, counters
//!   and the contiguity mark.
//! - `collector.sqlite`, table `entries`: `(stream_id, idx)` → where the entry's bytes are.
//! - `segments/NNNNNNNN.seg`: each `logpb.LogEntry` exactly as it arrived, back to back.
//! - `collector.sqlite`, table `prefixes`: `(project, prefix)` → the SHA-256 of the prefix
//!   secret of the butler that owns it, and when it was registered (see *Prefix owners*).
//! - `collector.sqlite`, table `heartbeat`: one row, rewritten by [`Store::check_writable`].
//!
//! Keeping the bytes out of SQLite writes each of them once: in SQLite they went to the WAL
//! and then a second time into the database at each checkpoint.
//!
//! **Durability point.** [`Store::write`] appends the bundle's new entries to the active
//! segment and `fdatasync`s it, then commits the index rows, which with WAL and
//! `synchronous=FULL` means the WAL has been fsynced; it returns only then. The collector
//! acknowledges a bundle only after that, so an acknowledged bundle survives a crash or a
//! power cut; an unacknowledged one may be absent (or present: the butler's retry is then a
//! duplicate and is ignored).
//!
//! **De-duplication and conflicts.** `(stream_id, idx)` is unique. An entry at an index that
//! is already stored is a *duplicate* (a retry, skipped) only when its bytes are the stored
//! bytes; different bytes, a different descriptor, another terminal index, an entry past the
//! terminal index or a `sequence` that does not follow from the stored neighbours are a
//! *conflict*: that stream's part of the bundle is refused whole, and the other streams of the
//! bundle are stored.
//!
//! **Integrity.** Every index row carries the CRC-32 of its entry's bytes, checked on every
//! read ([`Store::entries`], [`Store::last_entries`], and so every read path of the collector)
//! and by [`crate::verify`]. A mismatch, a missing or short segment, or an entry that does not
//! decode is [`StoreError::Damaged`], naming the stream and index: nothing damaged is served
//! as data. At open, `PRAGMA quick_check` and the segments' lengths are checked.
//!
//! **Prefix owners.** A butler sends a random secret (`ButlerLogBundle.secret`) with every
//! bundle of a run. [`Store::write_claimed`] checks the bundle's [`Claim`] against the
//! `prefixes` table in the write's own transaction, before anything of the bundle is stored:
//! the first bundle with a secret for a prefix that holds no streams registers the prefix with
//! the secret's SHA-256; after that only bundles with that secret are stored ([`NotOwner`]
//! otherwise). A bundle without a secret is stored for an unregistered prefix unless the
//! claim requires one (auth is on); a prefix that already holds streams written without a
//! secret cannot be claimed later. The registration is in the same transaction as the
//! bundle's rows, behind the one writer, so of two first bundles with different secrets
//! exactly one is stored, and a restarted collector still knows every owner.
//!
//! **Health.** [`Store::check_writable`] tells whether the store takes writes now: the data
//! directory takes a small file and the index commits a one-row write transaction, as a
//! bundle's would. Its answer is reused for [`WRITABLE_CHECK_TTL`], so asking often costs
//! nothing; a check that hangs (a stalled disk, a database locked by another process) counts
//! as a failure after [`WRITABLE_CHECK_STUCK`].
//!
//! **One collector per directory.** [`Store::open`] holds an exclusive lock on `DIR/lock`
//! for the store's life; a second collector on the same directory is refused at start.

use std::path::Path;
use std::sync::{Arc, Mutex};

use logdog_proto::logdog::collector::LogStreamState;
use logdog_proto::logpb;
use prost::Message;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::segments::{Appender, Location, Segments};
use crate::validate::{CheckedEntry, Refusal, RefusalKind, Sequence, next_sequence};

/// `PRAGMA user_version` of the current layout: entries in segment files, with a checksum,
/// `sequence` and span per index row, and the `prefixes` table of prefix owners. Layout 2 (no
/// checksums) and layout 3 (no `prefixes`) are upgraded in place; the rows of layout 2 are
/// read without a checksum check, and the prefixes of older layouts are unregistered (they
/// hold streams written without a secret, so they cannot be claimed).
const LAYOUT_VERSION: i64 = 4;

/// The owners of prefixes: the SHA-256 of the secret of the butler that registered each, and
/// when (seconds since the Unix epoch).
const PREFIXES_TABLE: &str = "CREATE TABLE IF NOT EXISTS prefixes (
    project TEXT NOT NULL,
    prefix TEXT NOT NULL,
    secret_sha256 BLOB NOT NULL,
    registered INTEGER NOT NULL,
    PRIMARY KEY (project, prefix)) WITHOUT ROWID";

/// Read connections kept open between reads.
const MAX_IDLE_READERS: usize = 4;

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
    fn last_write_ms(&self) -> i64 {
        self.updated
            .or(self.created)
            .map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
    }
}

/// How long a prefix may receive nothing before its streams that have not ended are reported
/// abandoned, by default (see [`Store::set_abandon_after`]).
pub const DEFAULT_ABANDON_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

/// Now, in milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    let t = now();
    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
}

/// A stream's descriptor and state.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamInfo {
    /// Descriptor.
    pub desc: logpb::LogStreamDescriptor,
    /// State.
    pub state: LogStreamState,
}

/// The one-row table that [`Store::check_writable`] rewrites (seconds since the Unix epoch).
const HEARTBEAT_TABLE: &str = "CREATE TABLE IF NOT EXISTS heartbeat (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    at INTEGER NOT NULL)";

/// The small file [`Store::check_writable`] writes and removes in the data directory.
const PROBE_FILE: &str = "writable-check";

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

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode;
        match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
                StoreError::Damaged(format!("collector.sqlite: {e}"))
            }
            Some(ErrorCode::DiskFull) => StoreError::DiskFull(e.to_string()),
            _ => StoreError::Db(e.to_string()),
        }
    }
}

/// A failure writing a segment: a full disk is told apart.
fn segment_error(e: crate::segments::WriteError) -> StoreError {
    if e.disk_full {
        StoreError::DiskFull(e.message)
    } else {
        StoreError::Db(e.message)
    }
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
fn check_owner(
    tx: &Connection,
    project: &str,
    prefix: &str,
    claim: &Claim<'_>,
) -> Result<Result<bool, NotOwner>, StoreError> {
    let path = format!("{project}/{prefix}");
    let registered: Option<Vec<u8>> = tx
        .prepare_cached("SELECT secret_sha256 FROM prefixes WHERE project = ?1 AND prefix = ?2")?
        .query_row(params![project, prefix], |r| r.get(0))
        .optional()?;
    match (registered, claim.secret) {
        (Some(hash), Some(secret)) if same_hash(&hash, &secret_hash(secret)) => Ok(Ok(false)),
        (Some(_), _) => Ok(Err(NotOwner(format!(
            "prefix {path} is owned by another butler: wrong or missing prefix secret"
        )))),
        (None, None) if claim.required => Ok(Err(NotOwner(format!(
            "bundles must carry a prefix secret (prefix {path} has no owner yet)"
        )))),
        (None, None) => Ok(Ok(false)),
        (None, Some(secret)) => {
            let written = tx
                .prepare_cached("SELECT 1 FROM streams WHERE project = ?1 AND prefix = ?2 LIMIT 1")?
                .exists(params![project, prefix])?;
            if written {
                return Ok(Err(NotOwner(format!(
                    "prefix {path} already holds streams written without a prefix secret: \
                     a prefix written without a secret cannot be claimed later"
                ))));
            }
            tx.prepare_cached(
                "INSERT INTO prefixes (project, prefix, secret_sha256, registered)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                project,
                prefix,
                secret_hash(secret).as_slice(),
                now().seconds
            ])?;
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

/// The store. Cheap to clone; all clones share one database.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Held for the store's life: one collector per directory.
    _lock: std::fs::File,
    path: std::path::PathBuf,
    /// The one writer (SQLite has one writer at a time anyway) and the active segment, taken
    /// in arrival order (see [`FairLock`]).
    writer: FairLock<Writer>,
    /// Idle read connections; WAL lets readers run beside the writer.
    readers: Mutex<Vec<Connection>>,
    /// The entries' bytes.
    segments: Segments,
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

#[derive(Debug)]
struct Writer {
    conn: Connection,
    appender: Appender,
}

fn now() -> prost_types::Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn open_conn(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

pub(crate) fn decode_record(blob: &[u8]) -> Result<StreamRecord, StoreError> {
    StreamRecord::decode(blob).map_err(|e| StoreError::Db(format!("corrupt stream record: {e}")))
}

fn location(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Location> {
    Ok(Location {
        segment: row.get(first)?,
        offset: row.get::<_, i64>(first + 1)? as u64,
        len: row.get::<_, i64>(first + 2)? as u64,
    })
}

/// The CRC-32 stored with an entry.
pub fn checksum(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// Where a stored entry is and what it must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredEntry {
    /// Its stream index.
    pub idx: u64,
    /// Where its bytes are.
    pub at: Location,
    /// CRC-32 of its bytes (`None` for entries stored by layout 2).
    pub crc: Option<u32>,
    /// Its sequence and span (`None` for entries stored by layout 2).
    pub seq: Option<Sequence>,
}

/// Columns of `entries` that make a [`StoredEntry`], in order.
pub(crate) const ENTRY_COLUMNS: &str = "idx, seg, off, len, crc, seq, span";

pub(crate) fn stored_entry(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEntry> {
    let seq: Option<i64> = row.get(5)?;
    let span: Option<i64> = row.get(6)?;
    Ok(StoredEntry {
        idx: row.get::<_, i64>(0)? as u64,
        at: location(row, 1)?,
        crc: row.get::<_, Option<i64>>(4)?.map(|c| c as u32),
        seq: seq.zip(span).map(|(s, n)| Sequence {
            sequence: s as u64,
            span: n as u64,
        }),
    })
}

/// Names a stream in messages.
pub(crate) fn path_of(key: &StreamKey) -> String {
    format!("{}/{}/+/{}", key.project, key.prefix, key.name)
}

/// Reads a stored entry's bytes and checks them against its checksum.
pub(crate) fn read_checked(
    segments: &Segments,
    key: &StreamKey,
    e: &StoredEntry,
) -> Result<Vec<u8>, StoreError> {
    let data = segments
        .read(e.at)
        .map_err(|err| StoreError::Damaged(format!("{} entry {}: {err}", path_of(key), e.idx)))?;
    if let Some(want) = e.crc {
        let got = checksum(&data);
        if got != want {
            return Err(StoreError::Damaged(format!(
                "{} entry {}: checksum mismatch ({} bytes at offset {} of segment {}: \
                 crc32 {got:08x}, stored {want:08x})",
                path_of(key),
                e.idx,
                e.at.len,
                e.at.offset,
                e.at.segment
            )));
        }
    }
    Ok(data)
}

/// Reads, checks and decodes a stored entry.
fn read_entry(
    segments: &Segments,
    key: &StreamKey,
    e: &StoredEntry,
) -> Result<logpb::LogEntry, StoreError> {
    let data = read_checked(segments, key, e)?;
    logpb::LogEntry::decode(data.as_slice()).map_err(|err| {
        StoreError::Damaged(format!(
            "{} entry {}: does not decode: {err}",
            path_of(key),
            e.idx
        ))
    })
}

impl Store {
    /// Opens (or creates) the store in `dir`. After a crash, SQLite recovers to the last
    /// committed transaction.
    ///
    /// # Errors
    /// The directory or database cannot be opened.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_segment_size(dir, crate::segments::SEGMENT_SIZE)
    }

    /// [`Store::open`], starting a new segment file once the active one passes
    /// `segment_size` bytes.
    ///
    /// # Errors
    /// The directory or database cannot be opened.
    pub fn open_with_segment_size(dir: &Path, segment_size: u64) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Db(format!("{}: {e}", dir.display())))?;
        let lock = lock_dir(dir)?;
        let path = dir.join("collector.sqlite");
        let conn = open_conn(&path)?;
        let damaged = |what: String| {
            StoreError::Damaged(format!(
                "{what}; run `logdog_collector verify --data {}` for a full list",
                dir.display()
            ))
        };
        let check: String = conn
            .query_row("PRAGMA quick_check(1)", [], |r| r.get(0))
            .map_err(|e| damaged(format!("{}: {e}", path.display())))?;
        if check != "ok" {
            return Err(damaged(format!("{}: {check}", path.display())));
        }
        let mut version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let has_tables: bool = conn
            .prepare("SELECT 1 FROM sqlite_master WHERE name = 'entries'")?
            .exists([])?;
        if has_tables && version == 2 {
            // Layout 2 had no checksums or sequences: its rows keep NULLs there.
            conn.execute_batch(
                "BEGIN;
                 ALTER TABLE entries ADD COLUMN crc INTEGER;
                 ALTER TABLE entries ADD COLUMN seq INTEGER;
                 ALTER TABLE entries ADD COLUMN span INTEGER;
                 PRAGMA user_version = 3;
                 COMMIT;",
            )?;
            version = 3;
        }
        if has_tables && version == 3 {
            // Layout 3 had no prefix owners: its prefixes stay unregistered.
            conn.execute_batch(&format!(
                "BEGIN;
                 {PREFIXES_TABLE};
                 PRAGMA user_version = 4;
                 COMMIT;"
            ))?;
        } else if has_tables && version != LAYOUT_VERSION {
            return Err(StoreError::Db(format!(
                "{} was written by another collector version (layout {version}, this one \
                 reads {LAYOUT_VERSION}); read it with that version or start on a new data \
                 directory",
                path.display()
            )));
        }
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS streams (
                 id INTEGER PRIMARY KEY,
                 project TEXT NOT NULL,
                 prefix TEXT NOT NULL,
                 name TEXT NOT NULL,
                 record BLOB NOT NULL,
                 UNIQUE (project, prefix, name));
             CREATE TABLE IF NOT EXISTS entries (
                 stream_id INTEGER NOT NULL,
                 idx INTEGER NOT NULL,
                 seg INTEGER NOT NULL,
                 off INTEGER NOT NULL,
                 len INTEGER NOT NULL,
                 crc INTEGER,
                 seq INTEGER,
                 span INTEGER,
                 PRIMARY KEY (stream_id, idx)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS append_end (
                 one INTEGER PRIMARY KEY CHECK (one = 1),
                 seg INTEGER NOT NULL,
                 end_off INTEGER NOT NULL);",
        )?;
        conn.execute_batch(PREFIXES_TABLE)?;
        conn.execute_batch(HEARTBEAT_TABLE)?;
        conn.pragma_update(None, "user_version", LAYOUT_VERSION)?;
        // The end of the last committed entry: appends resume there.
        let newest: Option<(u32, u64)> = conn
            .query_row(
                "SELECT seg, end_off FROM append_end WHERE one = 1",
                [],
                |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)),
            )
            .optional()?;
        let seg_dir = dir.join("segments");
        let appender = Appender::open(&seg_dir, newest, segment_size).map_err(StoreError::Db)?;
        let short = short_segments(&conn, &seg_dir)?;
        if !short.is_empty() {
            return Err(damaged(short.join("; ")));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                _lock: lock,
                path,
                writer: FairLock::new(Writer { conn, appender }),
                readers: Mutex::new(Vec::new()),
                segments: Segments::new(&seg_dir),
                activity: tokio::sync::watch::channel(0).0,
                last_write_ms: 0.into(),
                epoch: tokio::time::Instant::now(),
                metrics: crate::metrics::Metrics::new(),
                writable: Mutex::new(WritableCheck::default()),
                abandon_after_ms: (DEFAULT_ABANDON_AFTER.as_millis() as u64).into(),
            }),
        })
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

    /// The metrics of the collector serving this store: one collector per store, so every
    /// server sharing the store reports into them.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.inner.metrics
    }

    /// Bytes of the store's files on disk: the database, its journal and the segments.
    pub fn disk_bytes(&self) -> u64 {
        fn files(dir: &Path) -> u64 {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return 0;
            };
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(std::fs::Metadata::is_file)
                .map(|m| m.len())
                .sum()
        }
        let Some(dir) = self.inner.path.parent() else {
            return 0;
        };
        files(dir) + files(&dir.join("segments"))
    }

    /// Whether the store takes writes now: the data directory takes a small file (written and
    /// removed) and the index commits a write transaction (the `heartbeat` row, behind the
    /// bundles waiting for the writer, made durable like theirs).
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
        let answer = self.probe_writable();
        let mut check = self
            .inner
            .writable
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        check.running_since = None;
        check.last = Some((std::time::Instant::now(), answer.clone()));
        answer
    }

    /// The test writes of [`Store::check_writable`], uncached.
    fn probe_writable(&self) -> Result<(), Unwritable> {
        use std::io::Write;
        let db = &self.inner.path;
        let dir = db.parent().unwrap_or(Path::new("."));
        let probe = dir.join(PROBE_FILE);
        std::fs::File::create(&probe)
            .and_then(|mut f| f.write_all(&[0; 512]))
            .and_then(|()| std::fs::remove_file(&probe))
            .map_err(|e| {
                Unwritable(format!(
                    "the data directory {} cannot take a file: {e}",
                    dir.display()
                ))
            })?;
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64;
        let writer = self.inner.writer.lock();
        writer
            .conn
            .prepare_cached(
                "INSERT INTO heartbeat (one, at) VALUES (1, ?1) \
                 ON CONFLICT (one) DO UPDATE SET at = excluded.at",
            )
            .and_then(|mut st| st.execute(params![secs]))
            .map_err(|e| Unwritable(format!("{} refuses a write: {e}", db.display())))?;
        Ok(())
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

    /// Runs `f` on an idle read connection (opening one if none is idle).
    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let idle = self
            .inner
            .readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop();
        let conn = match idle {
            Some(c) => c,
            None => open_conn(&self.inner.path)?,
        };
        let out = f(&conn);
        let mut idle = self.inner.readers.lock().unwrap_or_else(|e| e.into_inner());
        // A burst of readers opens as many connections as run at once; only a few are kept
        // (each holds descriptors for the database, its WAL and its shared memory).
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
        out
    }

    /// Stores a checked bundle durably (see the module docs); returns once it is on disk.
    /// Streams that contradict what is stored are refused one by one (in
    /// [`WriteOutcome::refused`]) and the rest is stored.
    ///
    /// **Fairness.** A bundle of more than [`PART_ENTRIES`] entries is stored in parts of at
    /// most that many, each its own transaction, and the writer is handed to waiting writers
    /// (in arrival order) between parts: one huge bundle of tiny entries delays other bundles
    /// by one part, not by the whole bundle. A conflict found in a later part refuses the rest
    /// of that stream; its earlier parts stay stored (they are byte-identical retries when
    /// the bundle comes again).
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
        let total: usize = streams.iter().map(|e| e.logs.len()).sum();
        if total <= PART_ENTRIES {
            return self.write_part(project, prefix, claim, streams);
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
            let done = match self.write_part(project, prefix, claim, &part)? {
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

    /// Stores `streams` in one transaction.
    fn write_part(
        &self,
        project: &str,
        prefix: &str,
        claim: &Claim<'_>,
        streams: &[CheckedEntry],
    ) -> Result<Result<WriteOutcome, NotOwner>, StoreError> {
        let mut writer = self.inner.writer.lock();
        let Writer { conn, appender } = &mut *writer;
        appender.rotate_if_full().map_err(segment_error)?;
        let res = Self::write_locked(
            conn,
            appender,
            &self.inner.segments,
            project,
            prefix,
            claim,
            streams,
        );
        if !matches!(res, Ok(Ok(_))) {
            appender.abandon();
        }
        res
    }

    fn write_locked(
        conn: &mut Connection,
        appender: &mut Appender,
        segments: &Segments,
        project: &str,
        prefix: &str,
        claim: &Claim<'_>,
        streams: &[CheckedEntry],
    ) -> Result<Result<WriteOutcome, NotOwner>, StoreError> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut out = WriteOutcome::default();
        match check_owner(&tx, project, prefix, claim)? {
            Ok(registered) => out.registered = registered,
            // Dropping `tx` rolls it back: nothing of the bundle is stored.
            Err(refused) => return Ok(Err(refused)),
        }
        {
            let mut find = tx.prepare_cached(
                "SELECT id, record FROM streams WHERE project = ?1 AND prefix = ?2 AND name = ?3",
            )?;
            let mut create = tx.prepare_cached(
                "INSERT INTO streams (project, prefix, name, record) VALUES (?1, ?2, ?3, x'')",
            )?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO entries (stream_id, idx, seg, off, len, crc, seq, span)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            let mut within = tx.prepare_cached(&format!(
                "SELECT {ENTRY_COLUMNS} FROM entries WHERE stream_id = ?1 AND idx BETWEEN ?2 AND ?3"
            ))?;
            let mut before = tx.prepare_cached(&format!(
                "SELECT {ENTRY_COLUMNS} FROM entries WHERE stream_id = ?1 AND idx < ?2
                 ORDER BY idx DESC LIMIT 1"
            ))?;
            let mut after = tx.prepare_cached(&format!(
                "SELECT {ENTRY_COLUMNS} FROM entries WHERE stream_id = ?1 AND idx > ?2
                 ORDER BY idx LIMIT 1"
            ))?;
            let mut has =
                tx.prepare_cached("SELECT 1 FROM entries WHERE stream_id = ?1 AND idx = ?2")?;
            let mut past = tx.prepare_cached(
                "SELECT 1 FROM entries WHERE stream_id = ?1 AND idx > ?2 LIMIT 1",
            )?;
            let mut update = tx.prepare_cached("UPDATE streams SET record = ?2 WHERE id = ?1")?;
            for e in streams {
                let key = StreamKey {
                    project: project.to_string(),
                    prefix: prefix.to_string(),
                    name: e.desc.name.clone(),
                };
                let found: Option<Vec<u8>> = find
                    .query_row(params![project, prefix, &key.name], |r| r.get(1))
                    .optional()?;
                let stored = found.map(|blob| decode_record(&blob)).transpose()?;
                let mut desc = e.desc.clone();
                desc.prefix = prefix.to_string();
                // What is stored at this bundle's indices, and the nearest entries on either
                // side of them.
                let nearby = match (&stored, e.logs.first(), e.logs.last()) {
                    (Some(rec), Some(first), Some(last)) => {
                        let (id, lo, hi) = (rec.id as i64, first.0 as i64, last.0 as i64);
                        Nearby {
                            at: within
                                .query_map(params![id, lo, hi], stored_entry)?
                                .collect::<Result<Vec<_>, _>>()?,
                            before: before.query_row(params![id, lo], stored_entry).optional()?,
                            after: after.query_row(params![id, hi], stored_entry).optional()?,
                        }
                    }
                    _ => Nearby::default(),
                };
                let beyond = match (&stored, e.terminal) {
                    (Some(rec), Some(t)) => past.exists(params![rec.id as i64, t])?.then_some(t),
                    _ => None,
                };
                // Damage confined to this stream's stored entries refuses this stream alone;
                // anything else fails the write.
                let verdict = match plan(segments, &key, stored.as_ref(), &desc, e, &nearby, beyond)
                {
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
                        create.execute(params![project, prefix, &key.name])?;
                        let rec = StreamRecord {
                            id: tx.last_insert_rowid() as u64,
                            desc: Some(desc),
                            created: Some(now()),
                            terminal_index: -1,
                            ..Default::default()
                        };
                        (true, rec)
                    }
                };
                let id = rec.id as i64;
                if let Some(t) = e.terminal
                    && !rec.terminated
                {
                    rec.terminated = true;
                    rec.terminal_index = t;
                    dirty = true;
                }
                out.duplicates += plan.duplicates;
                for k in plan.new {
                    let ((i, raw, payload), seq) = (&e.logs[k], e.sequences.get(k));
                    let at = Location {
                        segment: appender.segment(),
                        offset: appender.next_offset(),
                        len: raw.len() as u64,
                    };
                    insert.execute(params![
                        id,
                        *i as i64,
                        at.segment,
                        at.offset as i64,
                        at.len as i64,
                        i64::from(checksum(raw)),
                        seq.map(|s| s.sequence as i64),
                        seq.map(|s| s.span as i64)
                    ])?;
                    appender.push(raw.clone());
                    rec.entry_count += 1;
                    rec.byte_count += payload;
                    out.bytes += payload;
                    out.stored += 1;
                    dirty = true;
                }
                if dirty {
                    rec.updated = Some(now());
                    while has.exists(params![id, rec.contiguous as i64])? {
                        rec.contiguous += 1;
                    }
                    update.execute(params![id, rec.encode_to_vec()])?;
                    out.touched.push(key);
                }
            }
        }
        if appender.has_pending() {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO append_end (one, seg, end_off) VALUES (1, ?1, ?2)",
            )?
            .execute(params![appender.segment(), appender.next_offset() as i64])?;
        }
        // The bytes are durable before the rows that point at them commit.
        appender.flush().map_err(segment_error)?;
        tx.commit()?;
        Ok(Ok(out))
    }
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

/// A mutex handed out in arrival order: a writer that takes it again right after releasing it
/// queues behind those already waiting, so a long run of parts cannot starve other writers (a
/// plain mutex lets the releasing thread win again and again).
#[derive(Debug)]
struct FairLock<T> {
    state: Mutex<Tickets>,
    turn: std::sync::Condvar,
    value: Mutex<T>,
}

#[derive(Debug, Default)]
struct Tickets {
    next: u64,
    serving: u64,
}

/// Holds a [`FairLock`]; the next ticket is served when dropped.
struct FairGuard<'a, T> {
    lock: &'a FairLock<T>,
    value: std::sync::MutexGuard<'a, T>,
}

impl<T> FairLock<T> {
    fn new(value: T) -> Self {
        Self {
            state: Mutex::new(Tickets::default()),
            turn: std::sync::Condvar::new(),
            value: Mutex::new(value),
        }
    }

    fn lock(&self) -> FairGuard<'_, T> {
        let mut t = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mine = t.next;
        t.next += 1;
        while t.serving != mine {
            t = self.turn.wait(t).unwrap_or_else(|e| e.into_inner());
        }
        drop(t);
        FairGuard {
            lock: self,
            value: self.value.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }
}

impl<T> std::ops::Deref for FairGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> std::ops::DerefMut for FairGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.value
    }
}

impl<T> Drop for FairGuard<'_, T> {
    fn drop(&mut self) {
        let mut t = self.lock.state.lock().unwrap_or_else(|e| e.into_inner());
        t.serving += 1;
        drop(t);
        self.lock.turn.notify_all();
    }
}

/// Stored entries near a stream's part of a bundle.
#[derive(Debug, Default)]
struct Nearby {
    /// At the bundle's indices.
    at: Vec<StoredEntry>,
    /// The nearest below the bundle's first index.
    before: Option<StoredEntry>,
    /// The nearest above the bundle's last index.
    after: Option<StoredEntry>,
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
fn plan(
    segments: &Segments,
    key: &StreamKey,
    stored: Option<&StreamRecord>,
    desc: &logpb::LogStreamDescriptor,
    e: &CheckedEntry,
    nearby: &Nearby,
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
    let at: std::collections::HashMap<u64, &StoredEntry> =
        nearby.at.iter().map(|s| (s.idx, s)).collect();
    let mut plan = Plan {
        new: Vec::new(),
        duplicates: 0,
    };
    for (k, (i, raw, _)) in e.logs.iter().enumerate() {
        match at.get(i) {
            Some(old) => {
                if read_checked(segments, key, old)? != raw.as_ref() {
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
        && let Some(p) = prev.seq
        && let Some(end) = next_sequence(p)
        && (s.sequence < end || (prev.idx + 1 == i && s.sequence != end))
    {
        return Ok(Err(format!(
            "stream {name}: entry {i} has sequence {}, but the stored entry {} (sequence {}, \
             spanning {}) is followed by sequence {end}",
            s.sequence, prev.idx, p.sequence, p.span
        )));
    }
    let last = e.logs.last().map(|l| l.0).zip(e.sequences.last());
    if let (Some((i, s)), Some(next)) = (last, &nearby.after)
        && let Some(n) = next.seq
        && let Some(end) = next_sequence(*s)
        && (end > n.sequence || (i + 1 == next.idx && end != n.sequence))
    {
        return Ok(Err(format!(
            "stream {name}: entry {i} (sequence {}, spanning {}) is followed by sequence {end}, \
             but the stored entry {} has sequence {}",
            s.sequence, s.span, next.idx, n.sequence
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

/// Takes the data directory's lock, or names who holds it.
fn lock_dir(dir: &Path) -> Result<std::fs::File, StoreError> {
    use std::io::{Read, Seek, Write};
    let path = dir.join("lock");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::Db(format!("{}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => {
            // Who holds it, for the message another collector prints.
            let _ = file
                .set_len(0)
                .and_then(|()| file.seek(std::io::SeekFrom::Start(0)))
                .and_then(|_| writeln!(file, "{}", std::process::id()));
            Ok(file)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() {
                String::new()
            } else {
                format!(" (pid {holder})")
            };
            Err(StoreError::InUse(format!(
                "{} is in use by another collector{who}: two collectors on one data \
                 directory would corrupt it",
                dir.display()
            )))
        }
        Err(std::fs::TryLockError::Error(e)) => {
            Err(StoreError::Db(format!("{}: {e}", path.display())))
        }
    }
}

/// Segments shorter than the entries the index places in them, one message each.
fn short_segments(conn: &Connection, seg_dir: &Path) -> Result<Vec<String>, StoreError> {
    let mut q = conn.prepare("SELECT seg, MAX(off + len) FROM entries GROUP BY seg")?;
    let ends = q
        .query_map([], |r| {
            Ok((r.get::<_, u32>(0)?, r.get::<_, i64>(1)? as u64))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::new();
    for (seg, end) in ends {
        let path = crate::segments::segment_path(seg_dir, seg);
        match std::fs::metadata(&path) {
            Ok(m) if m.len() >= end => {}
            Ok(m) => out.push(format!(
                "{} holds {} bytes but the index has entries up to byte {end}",
                path.display(),
                m.len()
            )),
            Err(e) => out.push(format!("{}: {e}", path.display())),
        }
    }
    Ok(out)
}

impl Store {
    fn record(conn: &Connection, key: &StreamKey) -> Result<Option<StreamRecord>, StoreError> {
        let blob: Option<Vec<u8>> = conn
            .prepare_cached(
                "SELECT record FROM streams WHERE project = ?1 AND prefix = ?2 AND name = ?3",
            )?
            .query_row(params![key.project, key.prefix, key.name], |r| r.get(0))
            .optional()?;
        blob.map(|b| decode_record(&b)).transpose()
    }

    /// A stream's descriptor and state, if the store has heard of it.
    ///
    /// # Errors
    /// A database failure.
    pub fn stream(&self, key: &StreamKey) -> Result<Option<StreamInfo>, StoreError> {
        let Some(rec) = self.read(|c| Self::record(c, key))? else {
            return Ok(None);
        };
        let mut state = rec.state();
        // Only a stream quiet for that long itself needs its prefix's other streams read.
        if self.abandoned(&state, rec.last_write_ms()) {
            let last = self.read(|c| Self::prefix_last_write_ms(c, &key.project, &key.prefix))?;
            state.abandoned = self.abandoned(&state, last.max(rec.last_write_ms()));
        }
        Ok(Some(StreamInfo {
            state,
            desc: rec.desc.unwrap_or_default(),
        }))
    }

    /// When anything of `project/prefix` was last stored, in milliseconds since the Unix
    /// epoch (0: never).
    fn prefix_last_write_ms(
        conn: &Connection,
        project: &str,
        prefix: &str,
    ) -> Result<i64, StoreError> {
        let mut q =
            conn.prepare_cached("SELECT record FROM streams WHERE project = ?1 AND prefix = ?2")?;
        let mut rows = q.query(params![project, prefix])?;
        let mut last = 0;
        while let Some(row) = rows.next()? {
            let blob = row
                .get_ref(0)?
                .as_blob()
                .map_err(|e| StoreError::Db(e.to_string()))?;
            last = last.max(decode_record(blob)?.last_write_ms());
        }
        Ok(last)
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
        self.read(|c| {
            let Some(rec) = Self::record(c, key)? else {
                return Ok(Vec::new());
            };
            let mut q = c.prepare_cached(&format!(
                "SELECT {ENTRY_COLUMNS} FROM entries
                 WHERE stream_id = ?1 AND idx >= ?2 ORDER BY idx"
            ))?;
            let mut rows = q.query(params![rec.id as i64, from as i64])?;
            let mut out = Vec::new();
            let mut bytes = 0usize;
            let mut expect = from;
            while let Some(row) = rows.next()? {
                let stored = stored_entry(row)?;
                if stored.idx != expect
                    || out.len() >= max_count
                    || (bytes >= max_bytes && !out.is_empty())
                {
                    break;
                }
                bytes += stored.at.len as usize;
                out.push(read_entry(&self.inner.segments, key, &stored)?);
                expect += 1;
            }
            Ok(out)
        })
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
        self.read(|c| {
            let Some(rec) = Self::record(c, key)? else {
                return Ok(Vec::new());
            };
            let mut q = c.prepare_cached(&format!(
                "SELECT {ENTRY_COLUMNS} FROM entries WHERE stream_id = ?1 ORDER BY idx DESC LIMIT ?2"
            ))?;
            let mut rows = q.query(params![rec.id as i64, n as i64])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                let stored = stored_entry(row)?;
                out.push(read_entry(&self.inner.segments, key, &stored)?);
            }
            out.reverse();
            Ok(out)
        })
    }

    /// Whether a butler has registered `project/prefix` with its prefix secret.
    ///
    /// # Errors
    /// A database failure.
    pub fn prefix_registered(&self, project: &str, prefix: &str) -> Result<bool, StoreError> {
        self.read(|c| {
            Ok(
                c.prepare_cached("SELECT 1 FROM prefixes WHERE project = ?1 AND prefix = ?2")?
                    .exists(params![project, prefix])?,
            )
        })
    }

    /// Every project with at least one stream, sorted.
    ///
    /// # Errors
    /// A database failure.
    pub fn projects(&self) -> Result<Vec<String>, StoreError> {
        self.read(|c| {
            let mut q =
                c.prepare_cached("SELECT DISTINCT project FROM streams ORDER BY project")?;
            let rows = q.query_map([], |r| r.get::<_, String>(0))?;
            rows.collect::<Result<Vec<_>, _>>()
                .map_err(StoreError::from)
        })
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
        let mut out = self.read(|c| {
            let mut q =
                c.prepare_cached("SELECT prefix, name, record FROM streams WHERE project = ?1")?;
            let mut rows = q.query(params![project])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                let key = StreamKey {
                    project: project.to_string(),
                    prefix: row.get(0)?,
                    name: row.get(1)?,
                };
                let under = prefix.is_empty()
                    || key.prefix == prefix
                    || key
                        .prefix
                        .strip_prefix(prefix)
                        .is_some_and(|rest| rest.starts_with('/'));
                if !under {
                    continue;
                }
                let rec = decode_record(
                    row.get_ref(2)?
                        .as_blob()
                        .map_err(|e| StoreError::Db(e.to_string()))?,
                )?;
                let last = rec.last_write_ms();
                let at = last_write.entry(key.prefix.clone()).or_insert(0);
                *at = (*at).max(last);
                out.push((
                    key,
                    StreamInfo {
                        state: rec.state(),
                        desc: rec.desc.unwrap_or_default(),
                    },
                ));
            }
            Ok(out)
        })?;
        // A prefix's streams all lie under `prefix` together, so each prefix's last write is
        // known here.
        for (key, info) in &mut out {
            let last = last_write.get(&key.prefix).copied().unwrap_or(0);
            info.state.abandoned = self.abandoned(&info.state, last);
        }
        out.sort_by_key(|(k, _)| format!("{}/+/{}", k.prefix, k.name));
        Ok(out)
    }
}
