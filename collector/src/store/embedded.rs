//! The embedded store: an index in SQLite (bundled, through `rusqlite`, WAL mode,
//! `synchronous=FULL`) and the entries themselves in append-only segment files
//! ([`crate::segments`]). `docs/store-choice.md` has the measurements behind the choice.
//!
//! Layout of the data directory:
//! - `collector.sqlite`, table `streams`: one row per stream (`project`, `prefix`, `name`,
//!   unique together) with its [`StreamRecord`]: the descriptor, the terminal index, counters
//!   and the contiguity mark.
//! - `collector.sqlite`, table `entries`: `(stream_id, idx)` → its block, its offset and
//!   length in the block's raw bytes, its CRC-32, its `sequence` and span.
//! - `collector.sqlite`, table `blocks`: where each block is (segment, offset, length), its
//!   codec, raw length and the CRC-32 of its stored bytes ([`crate::blocks`]).
//! - `segments/NNNNNNNN.seg`: the blocks, back to back. A block holds new entries of one
//!   stream from one write, each `logpb.LogEntry` exactly as it arrived, packed up to 1 MiB
//!   and compressed with zstd (or kept raw when that is no smaller). Larger blocks are
//!   written raw and compressed after the write is acknowledged (table `raw_blocks`, see
//!   [`compactor`]). Entries stored by layout 4 and older have no block: their row's `seg`,
//!   `off` and `len` are the entry itself.
//! - `collector.sqlite`, table `prefixes`: `(project, prefix)` → the SHA-256 of the prefix
//!   secret of the butler that owns it, and when it was registered.
//! - `collector.sqlite`, table `raw_blocks`: the blocks stored raw that wait to be compressed;
//!   table `released`: places in segments no row points at any more, until they are punched
//!   out (at the latest at the next start).
//! - `collector.sqlite`, table `heartbeat`: one row, rewritten by the writable check.
//!
//! Keeping the bytes out of SQLite writes each of them once: in SQLite they went to the WAL
//! and then a second time into the database at each checkpoint.
//!
//! **Durability point.** A write appends the blocks of the bundle's new entries to the active
//! segment and
//! `fdatasync`s it, then commits the index rows, which with WAL and `synchronous=FULL` means
//! the WAL has been fsynced; it returns only then.
//!
//! **Integrity.** Every block row carries the CRC-32 of the block's stored bytes, checked
//! before they are decompressed, and every entry row the CRC-32 of the entry's bytes, checked
//! after; on every read and by [`crate::verify`]. Readers keep the last blocks they
//! decompressed ([`BlockCache`], [`crate::blocks::CACHED_BLOCKS`] per store). At open, `PRAGMA quick_check` and the segments' lengths are
//! checked.
//!
//! **Prefix owners.** The registration is in the same transaction as the bundle's rows,
//! behind the one writer.
//!
//! **One collector per directory.** [`Embedded::open`] holds an exclusive lock on `DIR/lock`
//! for the store's life; a second collector on the same directory is refused at start.

mod compactor;

use std::path::Path;
use std::sync::{Arc, Mutex};

use logdog_proto::logpb;
use prost::Message;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use super::{
    Backend, Claim, NewEntry, NotOwner, Prepacked, StoreError, StreamKey, StreamRecord, Unwritable,
    WriteOutcome, WriteTx, checksum, decode_entry, decode_record, path_of, write_tx,
};
use crate::blocks::{self, BlockCache};
use crate::segments::{Appender, Location, Segments};
use crate::validate::{CheckedEntry, Sequence};
pub use compactor::{BLOCKS_PER_ROUND, MAX_DEFERRED_BYTES};
use compactor::{Compactor, Gate, RAW_BLOCKS_TABLE};

/// `PRAGMA user_version` of the current layout: entries in compressed blocks in segment files,
/// with a checksum, `sequence` and span per index row, the `prefixes` table of prefix owners
/// and the `raw_blocks` list of blocks waiting to be compressed. Older layouts are upgraded in
/// place, without rewriting any entry: layout 2 (no checksums), layout 3 (no `prefixes`),
/// layout 4 (entries stored raw, one per row) and layout 5 (no `raw_blocks`). The rows of
/// layout 2 are read without a checksum check, the prefixes of layouts 2 and 3 are
/// unregistered (they hold streams written without a secret, so they cannot be claimed), and
/// the rows of layouts 2 to 4 keep pointing at their raw bytes (no block).
const LAYOUT_VERSION: i64 = 6;

/// The blocks of entries (see [`crate::blocks`]): where each is in the segments, its codec,
/// raw length and the CRC-32 of its stored bytes. Ids are never reused (`AUTOINCREMENT`), so
/// a cached block is never mistaken for a newer one.
const BLOCKS_TABLE: &str = "CREATE TABLE IF NOT EXISTS blocks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id INTEGER NOT NULL,
    seg INTEGER NOT NULL,
    off INTEGER NOT NULL,
    len INTEGER NOT NULL,
    codec INTEGER NOT NULL,
    raw_len INTEGER NOT NULL,
    crc INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS blocks_stream ON blocks (stream_id)";

/// Ranges of segments that no row points at any more (a compressed block's raw bytes, a
/// removed stream's blocks), listed in the transaction that lets them go and taken off once
/// they are punched out: a crash in between leaves them to the next start, not on disk for
/// good.
const RELEASED_TABLE: &str = "CREATE TABLE IF NOT EXISTS released (
    id INTEGER PRIMARY KEY,
    seg INTEGER NOT NULL,
    off INTEGER NOT NULL,
    len INTEGER NOT NULL)";

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

const HEARTBEAT_TABLE: &str = "CREATE TABLE IF NOT EXISTS heartbeat (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    at INTEGER NOT NULL)";

/// The small file [`Store::check_writable`] writes and removes in the data directory.
const PROBE_FILE: &str = "writable-check";

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

/// How an embedded store is opened.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedOptions {
    /// A new segment file is started once the active one passes this many bytes.
    pub segment_size: u64,
    /// Raw bytes of blocks that may wait to be compressed after their write
    /// ([`MAX_DEFERRED_BYTES`]; 0: every write compresses its blocks itself).
    pub max_deferred_bytes: u64,
    /// Whether the compactor runs (`false` leaves raw blocks for a later start: for tests).
    pub compact: bool,
    /// Whether bytes given up (by the compactor, by retention) are punched out at once
    /// (`false` leaves them listed for the next start, as a crash just before would: for
    /// tests).
    pub punch: bool,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            segment_size: crate::segments::SEGMENT_SIZE,
            max_deferred_bytes: MAX_DEFERRED_BYTES,
            compact: true,
            punch: true,
        }
    }
}

/// The embedded store's storage (see the module docs).
#[derive(Debug)]
pub struct Embedded {
    /// Compresses the blocks writes stored raw; stopped first when the store is dropped.
    compactor: Compactor,
    /// Held for the store's life: one collector per directory.
    _lock: std::fs::File,
    path: std::path::PathBuf,
    /// The one writer (SQLite has one writer at a time anyway) and the active segment, taken
    /// in arrival order (see [`FairLock`]).
    writer: Arc<FairLock<Writer>>,
    /// Idle read connections; WAL lets readers run beside the writer.
    readers: Mutex<Vec<Connection>>,
    /// The entries' bytes.
    segments: Arc<Segments>,
    /// Gives back the places in segments that retention gives up (as the compactor does).
    space: Space,
    /// The last blocks read, decompressed.
    cache: BlockCache,
}

#[derive(Debug)]
struct Writer {
    conn: Connection,
    appender: Appender,
}

fn open_conn(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

fn location(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Location> {
    Ok(Location {
        segment: row.get(first)?,
        offset: row.get::<_, i64>(first + 1)? as u64,
        len: row.get::<_, i64>(first + 2)? as u64,
    })
}

/// Where a stored entry is and what it must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredEntry {
    /// Its stream index.
    pub idx: u64,
    /// Where its bytes are: in its block's raw bytes (offset and length; `segment` is the
    /// block's), or in the segment itself for an entry stored without a block.
    pub at: Location,
    /// CRC-32 of its bytes (`None` for entries stored by layout 2).
    pub crc: Option<u32>,
    /// Its sequence and span (`None` for entries stored by layout 2).
    pub seq: Option<Sequence>,
    /// Its block.
    pub block: Held,
}

/// What holds a stored entry's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// The segment, raw, at the entry's location (layouts 2 to 4).
    Segment,
    /// A block.
    Block(BlockRef),
    /// A block the index no longer has (damage).
    Lost(u64),
}

/// A block of entries in a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRef {
    /// Its id.
    pub id: u64,
    /// Where its stored bytes are.
    pub at: Location,
    /// [`blocks::CODEC_NONE`] or [`blocks::CODEC_ZSTD`].
    pub codec: i16,
    /// Length of its raw bytes.
    pub raw_len: usize,
    /// CRC-32 of its stored bytes.
    pub crc: u32,
}

/// The query of [`StoredEntry`] rows (`e` is `entries`, `b` its block); add the conditions.
pub(crate) const ENTRY_SELECT: &str = "SELECT e.idx, e.seg, e.off, e.len, e.crc, e.seq, e.span,
    e.block_id, b.seg, b.off, b.len, b.codec, b.raw_len, b.crc
    FROM entries e LEFT JOIN blocks b ON b.id = e.block_id";

pub(crate) fn stored_entry(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEntry> {
    let seq: Option<i64> = row.get(5)?;
    let span: Option<i64> = row.get(6)?;
    let block = match (row.get::<_, Option<i64>>(7)?, row.get::<_, Option<u32>>(8)?) {
        (None, _) => Held::Segment,
        (Some(id), None) => Held::Lost(id as u64),
        (Some(id), Some(_)) => Held::Block(BlockRef {
            id: id as u64,
            at: location(row, 8)?,
            codec: row.get(11)?,
            raw_len: row.get::<_, i64>(12)? as usize,
            crc: row.get::<_, i64>(13)? as u32,
        }),
    };
    Ok(StoredEntry {
        idx: row.get::<_, i64>(0)? as u64,
        at: location(row, 1)?,
        crc: row.get::<_, Option<i64>>(4)?.map(|c| c as u32),
        seq: seq.zip(span).map(|(s, n)| Sequence {
            sequence: s as u64,
            span: n as u64,
        }),
        block,
    })
}

/// The raw bytes of the block `b` that holds entry `idx` of `key`: from `cache`, or read,
/// checked against the block's checksum and decompressed (and then cached).
pub(crate) fn block_bytes(
    segments: &Segments,
    cache: &BlockCache,
    key: &StreamKey,
    idx: u64,
    b: &BlockRef,
) -> Result<Arc<Vec<u8>>, StoreError> {
    if let Some(raw) = cache.get(b.id) {
        return Ok(raw);
    }
    let damaged = |err: String| {
        StoreError::Damaged(format!(
            "{} entry {idx}: block {} ({} bytes at offset {} of segment {}): {err}",
            path_of(key),
            b.id,
            b.at.len,
            b.at.offset,
            b.at.segment
        ))
    };
    let data = segments.read(b.at).map_err(damaged)?;
    let raw = Arc::new(blocks::unpack(b.codec, data, b.crc, b.raw_len).map_err(damaged)?);
    cache.put(b.id, raw.clone());
    Ok(raw)
}

/// Reads a stored entry's bytes (through `cache` when it is in a block) and checks them
/// against their checksums.
pub(crate) fn read_checked(
    segments: &Segments,
    cache: &BlockCache,
    key: &StreamKey,
    e: &StoredEntry,
) -> Result<Vec<u8>, StoreError> {
    let b = match e.block {
        Held::Segment => return read_raw(segments, key, e),
        Held::Lost(id) => {
            return Err(StoreError::Damaged(format!(
                "{} entry {}: its block {id} is missing from the index",
                path_of(key),
                e.idx
            )));
        }
        Held::Block(b) => b,
    };
    let raw = block_bytes(segments, cache, key, e.idx, &b)?;
    let (off, len) = (e.at.offset as usize, e.at.len as usize);
    blocks::entry(&raw, off, len, e.crc.unwrap_or_default()).map_err(|err| {
        StoreError::Damaged(format!(
            "{} entry {}: {err} (in block {})",
            path_of(key),
            e.idx,
            b.id
        ))
    })
}

/// Reads an entry stored without a block and checks it against its checksum.
fn read_raw(segments: &Segments, key: &StreamKey, e: &StoredEntry) -> Result<Vec<u8>, StoreError> {
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
    cache: &BlockCache,
    key: &StreamKey,
    e: &StoredEntry,
) -> Result<logpb::LogEntry, StoreError> {
    decode_entry(key, e.idx, &read_checked(segments, cache, key, e)?)
}

impl Embedded {
    /// Opens (or creates) the store in `dir`, starting a new segment file once the active one
    /// passes `segment_size` bytes. After a crash, SQLite recovers to the last committed
    /// transaction.
    ///
    /// # Errors
    /// The directory or database cannot be opened, or is damaged.
    pub fn open(dir: &Path, options: EmbeddedOptions) -> Result<Self, StoreError> {
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
            version = upgrade(
                &conn,
                "ALTER TABLE entries ADD COLUMN crc INTEGER;
                 ALTER TABLE entries ADD COLUMN seq INTEGER;
                 ALTER TABLE entries ADD COLUMN span INTEGER",
                3,
            )?;
        }
        if has_tables && version == 3 {
            // Layout 3 had no prefix owners: its prefixes stay unregistered.
            version = upgrade(&conn, PREFIXES_TABLE, 4)?;
        }
        if has_tables && version == 4 {
            // Layout 4 stored entries raw, one per row: those rows keep no block.
            let has_blocks: bool = conn
                .prepare("SELECT 1 FROM pragma_table_info('entries') WHERE name = 'block_id'")?
                .exists([])?;
            let add = if has_blocks {
                ""
            } else {
                "ALTER TABLE entries ADD COLUMN block_id INTEGER;"
            };
            version = upgrade(&conn, &format!("{add}\n{BLOCKS_TABLE}"), 5)?;
        }
        if has_tables && version == 5 {
            // Layout 5 compressed every block as it was written: none waits.
            version = upgrade(&conn, &format!("{RAW_BLOCKS_TABLE};\n{RELEASED_TABLE}"), 6)?;
        }
        if has_tables && version != LAYOUT_VERSION {
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
                 block_id INTEGER,
                 PRIMARY KEY (stream_id, idx)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS append_end (
                 one INTEGER PRIMARY KEY CHECK (one = 1),
                 seg INTEGER NOT NULL,
                 end_off INTEGER NOT NULL);",
        )?;
        conn.execute_batch(PREFIXES_TABLE)?;
        conn.execute_batch(BLOCKS_TABLE)?;
        conn.execute_batch(RAW_BLOCKS_TABLE)?;
        conn.execute_batch(RELEASED_TABLE)?;
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
        let appender =
            Appender::open(&seg_dir, newest, options.segment_size).map_err(StoreError::Db)?;
        let short = short_segments(&conn, &seg_dir)?;
        if !short.is_empty() {
            return Err(damaged(short.join("; ")));
        }
        let segments = Arc::new(Segments::new(&seg_dir));
        if options.punch {
            punch_leftovers(&conn, &segments)?;
        }
        let writer = Arc::new(FairLock::new(Writer { conn, appender }));
        let space = Space {
            writer: writer.clone(),
            segments: segments.clone(),
            gate: Arc::new(Gate::default()),
            punch: options.punch,
        };
        let compactor = Compactor::start(&path, space.clone(), &options)?;
        Ok(Self {
            compactor,
            _lock: lock,
            path,
            writer,
            readers: Mutex::new(Vec::new()),
            segments,
            space,
            cache: BlockCache::default(),
        })
    }

    fn probe(&self) -> Result<(), Unwritable> {
        use std::io::Write;
        let db = &self.path;
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
        let writer = self.writer.lock();
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

    /// Runs `f` on an idle read connection (opening one if none is idle).
    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // Blocks looked up here are read before their old place can be punched out.
        let _pass = self.space.gate.enter();
        let idle = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match idle {
            Some(c) => c,
            None => open_conn(&self.path)?,
        };
        let out = f(&conn);
        let mut idle = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        // A burst of readers opens as many connections as run at once; only a few are kept
        // (each holds descriptors for the database, its WAL and its shared memory).
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
        out
    }

    /// Stores `streams` in one transaction, behind the one writer.
    fn write_locked(
        &self,
        project: &str,
        prefix: &str,
        claim: &Claim<'_>,
        streams: &[CheckedEntry],
    ) -> Result<Result<WriteOutcome, NotOwner>, StoreError> {
        // Compressing is most of a write's work: larger blocks are left to the compactor while
        // it is under its ceiling, and the rest is done here, before the writer is taken, so
        // that writes of several bundles compress at once. Each stream is packed as if all of
        // its entries were new (the usual case); a stream with some already stored is packed
        // again under the writer.
        let prepacked = Prepacked::new(streams, self.compactor.accepts());
        let mut writer = self.writer.lock();
        let Writer { conn, appender } = &mut *writer;
        appender.rotate_if_full().map_err(segment_error)?;
        let mut parts = Parts {
            appender,
            segments: &self.segments,
            cache: &self.cache,
            prepacked,
            listed: 0,
        };
        let res = Self::write_tx(conn, &mut parts, project, prefix, claim, streams);
        if matches!(res, Ok(Ok(_))) {
            self.compactor.listed(parts.listed);
        } else {
            parts.appender.abandon();
        }
        res
    }

    fn write_tx(
        conn: &mut Connection,
        parts: &mut Parts<'_>,
        project: &str,
        prefix: &str,
        claim: &Claim<'_>,
        streams: &[CheckedEntry],
    ) -> Result<Result<WriteOutcome, NotOwner>, StoreError> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = {
            let mut w = Tx {
                tx: &tx,
                parts: &mut *parts,
            };
            match write_tx(&mut w, project, prefix, claim, streams)? {
                Ok(out) => out,
                // Dropping `tx` rolls it back: nothing of the bundle is stored.
                Err(refused) => return Ok(Err(refused)),
            }
        };
        let appender = &mut *parts.appender;
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

/// What a write works with beside its transaction.
struct Parts<'a> {
    appender: &'a mut Appender,
    segments: &'a Segments,
    cache: &'a BlockCache,
    /// The blocks of each stream of the write, packed before the writer was taken.
    prepacked: Prepacked<'a>,
    /// Raw bytes of the blocks the write listed in `raw_blocks`.
    listed: u64,
}

/// One write transaction of the embedded store.
struct Tx<'a, 'b> {
    tx: &'a Transaction<'a>,
    parts: &'a mut Parts<'b>,
}

impl super::Stored for StoredEntry {
    fn idx(&self) -> u64 {
        self.idx
    }
    fn seq(&self) -> Option<Sequence> {
        self.seq
    }
}

impl WriteTx for Tx<'_, '_> {
    type Stored = StoredEntry;

    fn owner(&mut self, project: &str, prefix: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tx
            .prepare_cached(
                "SELECT secret_sha256 FROM prefixes WHERE project = ?1 AND prefix = ?2",
            )?
            .query_row(params![project, prefix], |r| r.get(0))
            .optional()?)
    }

    fn prefix_written(&mut self, project: &str, prefix: &str) -> Result<bool, StoreError> {
        Ok(self
            .tx
            .prepare_cached("SELECT 1 FROM streams WHERE project = ?1 AND prefix = ?2 LIMIT 1")?
            .exists(params![project, prefix])?)
    }

    fn register(
        &mut self,
        project: &str,
        prefix: &str,
        hash: &[u8; 32],
        at_secs: i64,
    ) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "INSERT INTO prefixes (project, prefix, secret_sha256, registered)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![project, prefix, hash.as_slice(), at_secs])?;
        Ok(())
    }

    fn find(&mut self, key: &StreamKey) -> Result<Option<StreamRecord>, StoreError> {
        record(self.tx, key)
    }

    fn create(&mut self, key: &StreamKey) -> Result<u64, StoreError> {
        self.tx
            .prepare_cached(
                "INSERT INTO streams (project, prefix, name, record) VALUES (?1, ?2, ?3, x'')",
            )?
            .execute(params![key.project, key.prefix, key.name])?;
        Ok(self.tx.last_insert_rowid() as u64)
    }

    fn nearby(
        &mut self,
        id: u64,
        lo: u64,
        hi: u64,
    ) -> Result<super::Nearby<StoredEntry>, StoreError> {
        let (id, lo, hi) = (id as i64, lo as i64, hi as i64);
        let at = self
            .tx
            .prepare_cached(&format!(
                "{ENTRY_SELECT} WHERE e.stream_id = ?1 AND e.idx BETWEEN ?2 AND ?3"
            ))?
            .query_map(params![id, lo, hi], stored_entry)?
            .collect::<Result<Vec<_>, _>>()?;
        let before = self
            .tx
            .prepare_cached(&format!(
                "{ENTRY_SELECT} WHERE e.stream_id = ?1 AND e.idx < ?2
                 ORDER BY e.idx DESC LIMIT 1"
            ))?
            .query_row(params![id, lo], stored_entry)
            .optional()?;
        let after = self
            .tx
            .prepare_cached(&format!(
                "{ENTRY_SELECT} WHERE e.stream_id = ?1 AND e.idx > ?2
                 ORDER BY e.idx LIMIT 1"
            ))?
            .query_row(params![id, hi], stored_entry)
            .optional()?;
        Ok(super::Nearby { at, before, after })
    }

    fn past(&mut self, id: u64, t: i64) -> Result<bool, StoreError> {
        Ok(self
            .tx
            .prepare_cached("SELECT 1 FROM entries WHERE stream_id = ?1 AND idx > ?2 LIMIT 1")?
            .exists(params![id as i64, t])?)
    }

    fn stored_bytes(&mut self, key: &StreamKey, e: &StoredEntry) -> Result<Vec<u8>, StoreError> {
        read_checked(self.parts.segments, self.parts.cache, key, e)
    }

    fn insert(
        &mut self,
        _key: &StreamKey,
        id: u64,
        new: &[NewEntry<'_>],
    ) -> Result<(), StoreError> {
        let packed = self.parts.prepacked.take(new);
        let mut add_block = self.tx.prepare_cached(
            "INSERT INTO blocks (stream_id, seg, off, len, codec, raw_len, crc)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        let mut insert = self.tx.prepare_cached(
            "INSERT INTO entries (stream_id, idx, seg, off, len, crc, seq, span, block_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        let appender = &mut *self.parts.appender;
        let mut rest = new;
        for block in packed {
            let (these, more) = rest.split_at(block.ranges.len().min(rest.len()));
            rest = more;
            let seg = appender.segment();
            add_block.execute(params![
                id as i64,
                seg,
                appender.next_offset() as i64,
                block.data.len() as i64,
                block.codec,
                block.raw_len as i64,
                i64::from(block.crc)
            ])?;
            let block_id = self.tx.last_insert_rowid();
            if block.deferred {
                self.tx
                    .prepare_cached("INSERT INTO raw_blocks (block_id) VALUES (?1)")?
                    .execute(params![block_id])?;
                self.parts.listed += block.raw_len as u64;
            }
            for (e, &(off, len)) in these.iter().zip(&block.ranges) {
                insert.execute(params![
                    id as i64,
                    e.idx as i64,
                    seg,
                    off as i64,
                    len as i64,
                    i64::from(checksum(e.raw)),
                    e.seq.map(|s| s.sequence as i64),
                    e.seq.map(|s| s.span as i64),
                    block_id
                ])?;
            }
            appender.push(bytes::Bytes::from(block.data));
        }
        Ok(())
    }

    fn contiguous(&mut self, id: u64, from: u64) -> Result<u64, StoreError> {
        let mut has = self
            .tx
            .prepare_cached("SELECT 1 FROM entries WHERE stream_id = ?1 AND idx = ?2")?;
        let mut at = from;
        while has.exists(params![id as i64, at as i64])? {
            at += 1;
        }
        Ok(at)
    }

    fn update(&mut self, _key: &StreamKey, rec: &StreamRecord) -> Result<(), StoreError> {
        self.tx
            .prepare_cached("UPDATE streams SET record = ?2 WHERE id = ?1")?
            .execute(params![rec.id as i64, rec.encode_to_vec()])?;
        Ok(())
    }
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

/// Lists `freed` in `released` (see [`RELEASED_TABLE`]) within `tx`; their ids.
fn list_released(tx: &Transaction<'_>, freed: &[Location]) -> Result<Vec<i64>, StoreError> {
    let mut add = tx.prepare_cached("INSERT INTO released (seg, off, len) VALUES (?1, ?2, ?3)")?;
    let mut ids = Vec::with_capacity(freed.len());
    for l in freed {
        add.execute(params![l.segment, l.offset as i64, l.len as i64])?;
        ids.push(tx.last_insert_rowid());
    }
    Ok(ids)
}

/// Gives back the places in segments that transactions give up: shared by retention and the
/// compactor.
#[derive(Debug, Clone)]
struct Space {
    writer: Arc<FairLock<Writer>>,
    segments: Arc<Segments>,
    /// Entered by reads, drained before bytes are punched out of segments.
    gate: Arc<Gate>,
    /// See [`EmbeddedOptions::punch`].
    punch: bool,
}

impl Space {
    /// Gives back `freed` and the `dead` segments, which a committed transaction gave up and
    /// listed in `released` as `listed`: once the reads that began before have ended (they
    /// may have looked up those places), punches them out, then takes them off the list.
    /// Without [`EmbeddedOptions::punch`] they stay listed.
    fn give_back(
        &self,
        freed: &[Location],
        dead: &[u32],
        listed: &[i64],
    ) -> Result<(), StoreError> {
        if !self.punch || (freed.is_empty() && dead.is_empty()) {
            return Ok(());
        }
        self.gate.drain();
        self.segments.release(freed, dead);
        let mut writer = self.writer.lock();
        let tx = writer
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut del = tx.prepare_cached("DELETE FROM released WHERE id = ?1")?;
        for id in listed {
            del.execute(params![id])?;
        }
        drop(del);
        tx.commit()?;
        Ok(())
    }
}

/// At open: punches out the ranges still listed in `released` (a crash came between their
/// transaction and their punching; punching twice is harmless) and empties the list.
fn punch_leftovers(conn: &Connection, segments: &Segments) -> Result<(), StoreError> {
    let left = conn
        .prepare("SELECT seg, off, len FROM released")?
        .query_map([], |r| location(r, 0))?
        .collect::<Result<Vec<_>, _>>()?;
    if left.is_empty() {
        return Ok(());
    }
    // Those of segments deleted since (a removal's dead segments) are gone already.
    let present: Vec<Location> = left
        .into_iter()
        .filter(|l| segments.exists(l.segment))
        .collect();
    tracing::info!(
        ranges = present.len(),
        "store: giving back the space a stop left behind"
    );
    segments.release(&present, &[]);
    conn.execute("DELETE FROM released", [])?;
    Ok(())
}

/// Runs `sql` and sets the layout version to `to`, in one transaction; returns `to`.
fn upgrade(conn: &Connection, sql: &str, to: i64) -> Result<i64, StoreError> {
    conn.execute_batch(&format!(
        "BEGIN;\n{sql};\nPRAGMA user_version = {to};\nCOMMIT;"
    ))?;
    Ok(to)
}

/// Segments shorter than the entries the index places in them, one message each.
fn short_segments(conn: &Connection, seg_dir: &Path) -> Result<Vec<String>, StoreError> {
    // Blocks, and the entries stored without one.
    let mut q = conn.prepare(
        "SELECT seg, MAX(e) FROM (
             SELECT seg, off + len AS e FROM blocks
             UNION ALL SELECT seg, off + len FROM entries WHERE block_id IS NULL)
         GROUP BY seg",
    )?;
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

fn record(conn: &Connection, key: &StreamKey) -> Result<Option<StreamRecord>, StoreError> {
    let blob: Option<Vec<u8>> = conn
        .prepare_cached(
            "SELECT record FROM streams WHERE project = ?1 AND prefix = ?2 AND name = ?3",
        )?
        .query_row(params![key.project, key.prefix, key.name], |r| r.get(0))
        .optional()?;
    blob.map(|b| decode_record(&b)).transpose()
}

/// Decodes the record in column `col` of a row.
fn record_at(row: &rusqlite::Row<'_>, col: usize) -> Result<StreamRecord, StoreError> {
    decode_record(
        row.get_ref(col)?
            .as_blob()
            .map_err(|e| StoreError::Db(e.to_string()))?,
    )
}

impl Backend for Embedded {
    fn write_part(
        &self,
        project: &str,
        prefix: &str,
        claim: &Claim<'_>,
        streams: &[CheckedEntry],
    ) -> Result<Result<WriteOutcome, NotOwner>, StoreError> {
        self.write_locked(project, prefix, claim, streams)
    }

    fn record(&self, key: &StreamKey) -> Result<Option<StreamRecord>, StoreError> {
        self.read(|c| record(c, key))
    }

    fn records(&self, project: &str) -> Result<Vec<(StreamKey, StreamRecord)>, StoreError> {
        self.read(|c| {
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
                out.push((key, record_at(row, 2)?));
            }
            Ok(out)
        })
    }

    fn prefix_records(&self, project: &str, prefix: &str) -> Result<Vec<StreamRecord>, StoreError> {
        self.read(|c| {
            let mut q =
                c.prepare_cached("SELECT record FROM streams WHERE project = ?1 AND prefix = ?2")?;
            let mut rows = q.query(params![project, prefix])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.push(record_at(row, 0)?);
            }
            Ok(out)
        })
    }

    fn entries(
        &self,
        key: &StreamKey,
        from: u64,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<logpb::LogEntry>, StoreError> {
        self.read(|c| {
            let Some(rec) = record(c, key)? else {
                return Ok(Vec::new());
            };
            let mut q = c.prepare_cached(&format!(
                "{ENTRY_SELECT} WHERE e.stream_id = ?1 AND e.idx >= ?2 ORDER BY e.idx"
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
                out.push(read_entry(&self.segments, &self.cache, key, &stored)?);
                expect += 1;
            }
            Ok(out)
        })
    }

    fn last_entries(&self, key: &StreamKey, n: usize) -> Result<Vec<logpb::LogEntry>, StoreError> {
        self.read(|c| {
            let Some(rec) = record(c, key)? else {
                return Ok(Vec::new());
            };
            let mut q = c.prepare_cached(&format!(
                "{ENTRY_SELECT} WHERE e.stream_id = ?1 ORDER BY e.idx DESC LIMIT ?2"
            ))?;
            let mut rows = q.query(params![rec.id as i64, n as i64])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                let stored = stored_entry(row)?;
                out.push(read_entry(&self.segments, &self.cache, key, &stored)?);
            }
            out.reverse();
            Ok(out)
        })
    }

    fn prefix_registered(&self, project: &str, prefix: &str) -> Result<bool, StoreError> {
        self.read(|c| {
            Ok(
                c.prepare_cached("SELECT 1 FROM prefixes WHERE project = ?1 AND prefix = ?2")?
                    .exists(params![project, prefix])?,
            )
        })
    }

    fn projects(&self) -> Result<Vec<String>, StoreError> {
        self.read(|c| {
            let mut q =
                c.prepare_cached("SELECT DISTINCT project FROM streams ORDER BY project")?;
            let rows = q.query_map([], |r| r.get::<_, String>(0))?;
            rows.collect::<Result<Vec<_>, _>>()
                .map_err(StoreError::from)
        })
    }

    fn probe_writable(&self) -> Result<(), Unwritable> {
        self.probe()
    }

    /// The database, its journal and the segments.
    fn disk_bytes(&self) -> u64 {
        fn files(dir: &Path) -> u64 {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return 0;
            };
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(std::fs::Metadata::is_file)
                .map(|m| {
                    use std::os::unix::fs::MetadataExt;
                    // Blocks allocated: space given back by retention no longer counts.
                    m.len().min(m.blocks() * 512)
                })
                .sum()
        }
        let Some(dir) = self.path.parent() else {
            return 0;
        };
        files(dir) + files(&dir.join("segments"))
    }

    fn deferred_bytes(&self) -> u64 {
        self.compactor.backlog()
    }

    fn settle(&self, timeout: std::time::Duration) -> bool {
        self.compactor.settle(timeout)
    }

    fn remove(&self, streams: &[StreamKey], cutoff_ms: i64) -> Result<Vec<StreamKey>, StoreError> {
        self.remove_streams(streams, cutoff_ms)
    }

    fn follow_changes(&self, _changed: Box<dyn Fn(Vec<StreamKey>) + Send + Sync>) {
        // One collector owns the directory: it sees its own writes.
    }

    fn keep(
        &self,
        _mine: &[StreamKey],
        _ttl: std::time::Duration,
    ) -> Result<Vec<StreamKey>, StoreError> {
        Ok(Vec::new())
    }
}

impl Embedded {
    /// Removes `streams` last written at or before `cutoff_ms` (rows in one transaction behind
    /// the writer), then gives their bytes' space back (see [`Segments::release`]).
    fn remove_streams(
        &self,
        streams: &[StreamKey],
        cutoff_ms: i64,
    ) -> Result<Vec<StreamKey>, StoreError> {
        let mut writer = self.writer.lock();
        let active = writer.appender.segment();
        let tx = writer
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut removed = Vec::new();
        let mut freed = Vec::new();
        let mut touched_segments = std::collections::BTreeSet::new();
        for key in streams {
            let Some(rec) = record(&tx, key)? else {
                continue;
            };
            // Written since it was picked: kept.
            if rec.last_write_ms() > cutoff_ms {
                continue;
            }
            let id = rec.id as i64;
            // Its blocks (each once), and its entries stored without a block.
            let mut q = tx.prepare_cached(
                "SELECT seg, off, len FROM blocks WHERE stream_id = ?1
                 UNION ALL
                 SELECT seg, off, len FROM entries WHERE stream_id = ?1 AND block_id IS NULL",
            )?;
            for loc in q.query_map(params![id], |r| location(r, 0))? {
                let loc = loc?;
                touched_segments.insert(loc.segment);
                freed.push(loc);
            }
            tx.prepare_cached("DELETE FROM entries WHERE stream_id = ?1")?
                .execute(params![id])?;
            tx.prepare_cached(
                "DELETE FROM raw_blocks WHERE block_id IN
                 (SELECT id FROM blocks WHERE stream_id = ?1)",
            )?
            .execute(params![id])?;
            tx.prepare_cached("DELETE FROM blocks WHERE stream_id = ?1")?
                .execute(params![id])?;
            tx.prepare_cached("DELETE FROM streams WHERE id = ?1")?
                .execute(params![id])?;
            // A prefix with no streams left loses its owner too.
            tx.prepare_cached(
                "DELETE FROM prefixes WHERE project = ?1 AND prefix = ?2
                 AND NOT EXISTS (SELECT 1 FROM streams WHERE project = ?1 AND prefix = ?2)",
            )?
            .execute(params![key.project, key.prefix])?;
            removed.push(key.clone());
        }
        // One scan of the index tells which segments still hold entries (a compressed block
        // may have moved to another segment than its entries' rows say).
        let used = tx
            .prepare_cached(
                "SELECT DISTINCT seg FROM blocks
                 UNION SELECT DISTINCT seg FROM entries WHERE block_id IS NULL",
            )?
            .query_map([], |r| r.get::<_, u32>(0))?
            .collect::<Result<std::collections::BTreeSet<u32>, _>>()?;
        let dead: Vec<u32> = touched_segments
            .into_iter()
            .filter(|seg| !used.contains(seg) && *seg != active)
            .collect();
        let listed = list_released(&tx, &freed)?;
        tx.commit()?;
        drop(writer);
        self.space.give_back(&freed, &dead, &listed)?;
        Ok(removed)
    }
}
