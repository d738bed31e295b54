//! The PostgreSQL store (`logdog_collector --store postgres://USER@HOST:PORT/DB`): everything
//! in one database, shared by any number of collectors.
//!
//! Tables (created, or migrated, at start; `logdog_schema` holds the version):
//! - `streams`: one row per stream (`project`, `prefix`, `name` unique together) with its
//!   [`StreamRecord`] and the time of its last write (for retention);
//! - `blocks`: the entries' bytes, in compressed blocks ([`crate::blocks`]), each with the
//!   CRC-32 of its stored bytes;
//! - `entries`: `(stream_id, idx)` → its block, offset and length in it, its own CRC-32, its
//!   sequence and span;
//! - `prefixes`: the owners of prefixes (SHA-256 of the secret);
//! - `heartbeat`: one row per collector, rewritten by the writable check;
//! - `follows`: the streams each collector's followers are on, with a lease (retention on any
//!   collector keeps them).
//!
//! **Several collectors.** Every write transaction first takes a transaction-scoped advisory
//! lock on its prefix (`pg_advisory_xact_lock`), so the writes of one prefix are serialised
//! across all collectors: de-duplication, conflicts, contiguity and the prefix's owner are
//! decided exactly as with one writer, while different prefixes are written in parallel.
//!
//! **Live follow across collectors.** A write's transaction sends a `NOTIFY` on the channel
//! [`CHANNEL`] per stream it changed (delivered at commit). Each collector `LISTEN`s on one
//! connection of its own and wakes its followers of those streams: nothing polls, and an idle
//! database costs nothing.
//!
//! **Durability point.** A write returns once its transaction committed (with PostgreSQL's
//! default `synchronous_commit = on`, once its WAL record is flushed).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use logdog_proto::logpb;
use postgres::error::SqlState;
use postgres::{Client, NoTls, Transaction};
use prost::Message;

use super::{
    Backend, Claim, Nearby, NewEntry, NotOwner, Prepacked, StoreError, StreamKey, StreamRecord,
    Unwritable, WriteOutcome, WriteTx, checksum, decode_entry, decode_record, now_ms, path_of,
    write_tx,
};
use crate::blocks::{self, BlockCache};
use crate::validate::{CheckedEntry, Sequence};

/// The schema version this collector writes. Older schemas are migrated at start; a newer
/// one is refused.
pub const SCHEMA_VERSION: i32 = 1;

/// The channel of change notifications.
pub const CHANNEL: &str = "logdog_streams";

/// Connections one collector opens to the database, at most (the change listener's not
/// counted). Callers beyond it wait for a free connection.
pub const MAX_CONNECTIONS: usize = 16;

/// How long a connection attempt may take, unless the URL says (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How many times a write is retried when the database aborts it (a serialisation failure
/// or a deadlock between collectors).
const WRITE_ATTEMPTS: u32 = 5;

/// Advisory lock key of schema creation and migration.
const SCHEMA_LOCK: i64 = 0x6c6f_6764_6f67; // "logdog"

/// The schema, version 1. Every statement is idempotent.
const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS streams (
    id BIGSERIAL PRIMARY KEY,
    project TEXT NOT NULL,
    prefix TEXT NOT NULL,
    name TEXT NOT NULL,
    record BYTEA NOT NULL,
    updated_ms BIGINT NOT NULL DEFAULT 0,
    UNIQUE (project, prefix, name));
CREATE INDEX IF NOT EXISTS streams_updated ON streams (updated_ms);
CREATE TABLE IF NOT EXISTS blocks (
    id BIGSERIAL PRIMARY KEY,
    stream_id BIGINT NOT NULL,
    codec SMALLINT NOT NULL,
    raw_len INTEGER NOT NULL,
    crc BIGINT NOT NULL,
    data BYTEA NOT NULL);
CREATE INDEX IF NOT EXISTS blocks_stream ON blocks (stream_id);
-- The blocks are compressed already: stored out of line as they are, not compressed again.
ALTER TABLE blocks ALTER COLUMN data SET STORAGE EXTERNAL;
CREATE TABLE IF NOT EXISTS entries (
    stream_id BIGINT NOT NULL,
    idx BIGINT NOT NULL,
    block_id BIGINT NOT NULL,
    off INTEGER NOT NULL,
    len INTEGER NOT NULL,
    crc BIGINT NOT NULL,
    seq BIGINT,
    span BIGINT,
    PRIMARY KEY (stream_id, idx));
CREATE TABLE IF NOT EXISTS prefixes (
    project TEXT NOT NULL,
    prefix TEXT NOT NULL,
    secret_sha256 BYTEA NOT NULL,
    registered BIGINT NOT NULL,
    PRIMARY KEY (project, prefix));
CREATE TABLE IF NOT EXISTS heartbeat (
    collector UUID PRIMARY KEY,
    at_ms BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS follows (
    collector UUID NOT NULL,
    stream_id BIGINT NOT NULL,
    until_ms BIGINT NOT NULL,
    PRIMARY KEY (collector, stream_id));
";

/// Columns of `entries` that make a [`StoredEntry`], in order.
const ENTRY_COLUMNS: &str = "idx, block_id, off, len, crc, seq, span";

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        StoreError::from(&e)
    }
}

impl From<&postgres::Error> for StoreError {
    fn from(e: &postgres::Error) -> Self {
        match e.code() {
            Some(c) if *c == SqlState::DISK_FULL => StoreError::DiskFull(e.to_string()),
            Some(c) if *c == SqlState::DATA_CORRUPTED || *c == SqlState::INDEX_CORRUPTED => {
                StoreError::Damaged(e.to_string())
            }
            _ => StoreError::Db(db_message(e)),
        }
    }
}

/// The server's message when there is one (postgres' `Display` says only "db error").
fn db_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("postgres: {}", db.message()),
        None => format!("postgres: {e}"),
    }
}

/// Whether the database aborted a transaction that a retry may get through.
fn retriable(e: &postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        *c == SqlState::T_R_SERIALIZATION_FAILURE
            || *c == SqlState::T_R_DEADLOCK_DETECTED
            || *c == SqlState::UNIQUE_VIOLATION
    })
}

/// A store in a PostgreSQL database (see the module docs).
#[derive(Debug)]
pub struct Postgres {
    pool: Arc<Pool>,
    /// This collector, in `heartbeat`, `follows` and its notifications.
    me: uuid::Uuid,
    cache: BlockCache,
    /// Tells the change listener to stop.
    stopped: Arc<AtomicBool>,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::Relaxed);
        // Closing a connection blocks on its own runtime, which must not happen on an async
        // thread (where the last handle of a store is often dropped): close them on a thread
        // of their own.
        let idle = std::mem::take(
            &mut self
                .pool
                .idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .idle,
        );
        if !idle.is_empty() {
            let _ = std::thread::Builder::new()
                .name("pg-close".into())
                .spawn(move || drop(idle));
        }
    }
}

/// Open connections, at most [`MAX_CONNECTIONS`].
#[derive(Debug)]
struct Pool {
    config: postgres::Config,
    idle: Mutex<PoolState>,
    freed: Condvar,
}

#[derive(Default)]
struct PoolState {
    idle: Vec<Client>,
    open: usize,
}

impl std::fmt::Debug for PoolState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolState")
            .field("idle", &self.idle.len())
            .field("open", &self.open)
            .finish()
    }
}

/// A connection taken from the pool; it goes back when dropped (unless it broke).
struct Conn<'a> {
    pool: &'a Pool,
    client: Option<Client>,
}

impl std::ops::Deref for Conn<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client
            .as_ref()
            .unwrap_or_else(|| unreachable!("taken only on drop"))
    }
}

impl std::ops::DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client
            .as_mut()
            .unwrap_or_else(|| unreachable!("taken only on drop"))
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        let mut state = self.pool.idle.lock().unwrap_or_else(|e| e.into_inner());
        match self.client.take() {
            Some(c) if !c.is_closed() => state.idle.push(c),
            _ => state.open = state.open.saturating_sub(1),
        }
        drop(state);
        self.pool.freed.notify_one();
    }
}

impl Pool {
    fn get(&self) -> Result<Conn<'_>, StoreError> {
        let mut state = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(client) = state.idle.pop() {
                return Ok(Conn {
                    pool: self,
                    client: Some(client),
                });
            }
            if state.open < MAX_CONNECTIONS {
                state.open += 1;
                drop(state);
                return match self.config.connect(NoTls) {
                    Ok(client) => Ok(Conn {
                        pool: self,
                        client: Some(client),
                    }),
                    Err(e) => {
                        let mut state = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                        state.open = state.open.saturating_sub(1);
                        Err(StoreError::Db(format!(
                            "cannot connect: {}",
                            db_message(&e)
                        )))
                    }
                };
            }
            state = self.freed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Postgres {
    /// Connects to `url` and creates or migrates the schema (under an advisory lock, so
    /// collectors starting together do it once).
    ///
    /// # Errors
    /// The URL is malformed, the database cannot be reached, or it holds a newer schema.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let mut config = postgres::Config::from_str(url)
            .map_err(|e| StoreError::Db(format!("not a PostgreSQL URL: {e}")))?;
        // A database host that drops packets must not hang a start or a read for minutes.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let pool = Arc::new(Pool {
            config,
            idle: Mutex::new(PoolState::default()),
            freed: Condvar::new(),
        });
        {
            let mut c = pool.get()?;
            migrate(&mut c)?;
        }
        Ok(Self {
            pool,
            me: uuid::Uuid::new_v4(),
            cache: BlockCache::default(),
            stopped: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Reads, checks and decodes the entries `rows` of `key`, in order. Blocks are fetched
    /// [`FETCH_BLOCKS`] at a time, so a read holds at most that many besides the cache.
    fn read_rows(
        &self,
        c: &mut Client,
        key: &StreamKey,
        rows: &[StoredEntry],
    ) -> Result<Vec<logpb::LogEntry>, StoreError> {
        let mut held: HashMap<u64, Arc<Vec<u8>>> = HashMap::new();
        let mut out = Vec::with_capacity(rows.len());
        for (i, r) in rows.iter().enumerate() {
            let raw = match held
                .get(&r.block)
                .cloned()
                .or_else(|| self.cache.get(r.block))
            {
                Some(raw) => raw,
                None => {
                    // The next blocks this read needs that are not at hand.
                    held.clear();
                    let mut wanted: Vec<i64> = Vec::new();
                    for next in &rows[i..] {
                        let id = next.block as i64;
                        if wanted.len() >= FETCH_BLOCKS {
                            break;
                        }
                        if !wanted.contains(&id) && self.cache.get(next.block).is_none() {
                            wanted.push(id);
                        }
                    }
                    for row in c.query(
                        "SELECT id, codec, raw_len, crc, data FROM blocks WHERE id = ANY($1)",
                        &[&wanted],
                    )? {
                        let id = row.get::<_, i64>(0) as u64;
                        let raw = Arc::new(unpack_row(key, id, &row, 1)?);
                        self.cache.put(id, raw.clone());
                        held.insert(id, raw);
                    }
                    held.get(&r.block)
                        .cloned()
                        .ok_or_else(|| missing_block(key, r))?
                }
            };
            let bytes = blocks::entry(&raw, r.off, r.len, r.crc).map_err(|e| {
                StoreError::Damaged(format!("{} entry {}: {e}", path_of(key), r.idx))
            })?;
            out.push(decode_entry(key, r.idx, &bytes)?);
        }
        Ok(out)
    }

    fn write_once(
        &self,
        c: &mut Client,
        prepacked: &mut Prepacked<'_>,
        project: &str,
        prefix: &str,
        claim: &Claim<'_>,
        streams: &[CheckedEntry],
    ) -> Result<Result<Result<WriteOutcome, NotOwner>, StoreError>, postgres::Error> {
        let mut tx = c.transaction()?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            &[&format!("{project}/{prefix}")],
        )?;
        let mut w = Tx {
            tx: &mut tx,
            store: self,
            prepacked,
            failed: None,
        };
        let res = write_tx(&mut w, project, prefix, claim, streams);
        if let Some(e) = w.failed.take() {
            return Err(e);
        }
        let out = match res {
            Ok(Ok(out)) => out,
            other => return Ok(other),
        };
        for key in &out.touched {
            tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &self.payload(key)])?;
        }
        tx.commit()?;
        Ok(Ok(Ok(out)))
    }

    /// The notification of a change to `key`: this collector's id and the stream's key, or
    /// its project and prefix alone where the key does not fit a notification (8000 bytes).
    fn payload(&self, key: &StreamKey) -> String {
        let full = serde_json::json!([self.me.to_string(), key.project, key.prefix, key.name]);
        let text = full.to_string();
        if text.len() < 7900 {
            return text;
        }
        serde_json::json!([self.me.to_string(), key.project]).to_string()
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut c = self.pool.get()?;
        f(&mut c)
    }
}

/// Creates the schema or migrates it to [`SCHEMA_VERSION`].
fn migrate(c: &mut Client) -> Result<(), StoreError> {
    let mut tx = c.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS logdog_schema (
             one INTEGER PRIMARY KEY CHECK (one = 1),
             version INTEGER NOT NULL)",
    )?;
    let version: Option<i32> = tx
        .query_opt("SELECT version FROM logdog_schema WHERE one = 1", &[])?
        .map(|r| r.get(0));
    match version {
        Some(v) if v > SCHEMA_VERSION => {
            return Err(StoreError::Db(format!(
                "the database holds schema version {v}, written by a newer collector (this one \
                 knows up to {SCHEMA_VERSION}): upgrade this collector"
            )));
        }
        Some(v) if v == SCHEMA_VERSION => {}
        // Version 1 is the first: nothing older to migrate from yet; later versions add their
        // steps here, each from the version before.
        _ => {
            tx.batch_execute(SCHEMA_V1)?;
            tx.execute(
                "INSERT INTO logdog_schema (one, version) VALUES (1, $1)
                 ON CONFLICT (one) DO UPDATE SET version = excluded.version",
                &[&SCHEMA_VERSION],
            )?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Where a stored entry is and what it must be.
#[derive(Debug, Clone, Copy)]
struct StoredEntry {
    idx: u64,
    block: u64,
    off: usize,
    len: usize,
    crc: u32,
    seq: Option<Sequence>,
}

impl super::Stored for StoredEntry {
    fn idx(&self) -> u64 {
        self.idx
    }
    fn seq(&self) -> Option<Sequence> {
        self.seq
    }
}

fn stored_entry(row: &postgres::Row) -> StoredEntry {
    let seq: Option<i64> = row.get(5);
    let span: Option<i64> = row.get(6);
    StoredEntry {
        idx: row.get::<_, i64>(0) as u64,
        block: row.get::<_, i64>(1) as u64,
        off: row.get::<_, i32>(2) as usize,
        len: row.get::<_, i32>(3) as usize,
        crc: row.get::<_, i64>(4) as u32,
        seq: seq.zip(span).map(|(s, n)| Sequence {
            sequence: s as u64,
            span: n as u64,
        }),
    }
}

fn record(
    c: &mut impl postgres::GenericClient,
    key: &StreamKey,
) -> Result<Option<StreamRecord>, StoreError> {
    let row = c.query_opt(
        "SELECT record FROM streams WHERE project = $1 AND prefix = $2 AND name = $3",
        &[&key.project, &key.prefix, &key.name],
    )?;
    row.map(|r| decode_record(r.get(0))).transpose()
}

/// One write transaction. A database error is kept in `failed` (and reported to the shared
/// write path as a plain failure), so that the caller can tell a retriable abort.
struct Tx<'a, 'b, 'p> {
    tx: &'a mut Transaction<'b>,
    store: &'a Postgres,
    /// The write's blocks, packed before the prefix's lock was taken.
    prepacked: &'a mut Prepacked<'p>,
    failed: Option<postgres::Error>,
}

impl WriteTx for Tx<'_, '_, '_> {
    type Stored = StoredEntry;

    fn owner(&mut self, project: &str, prefix: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let r = self.tx.query_opt(
            "SELECT secret_sha256 FROM prefixes WHERE project = $1 AND prefix = $2",
            &[&project, &prefix],
        );
        Ok(self.check(r)?.map(|r| r.get(0)))
    }

    fn prefix_written(&mut self, project: &str, prefix: &str) -> Result<bool, StoreError> {
        let r = self.tx.query_opt(
            "SELECT 1 FROM streams WHERE project = $1 AND prefix = $2 LIMIT 1",
            &[&project, &prefix],
        );
        Ok(self.check(r)?.is_some())
    }

    fn register(
        &mut self,
        project: &str,
        prefix: &str,
        hash: &[u8; 32],
        at_secs: i64,
    ) -> Result<(), StoreError> {
        let r = self.tx.execute(
            "INSERT INTO prefixes (project, prefix, secret_sha256, registered)
             VALUES ($1, $2, $3, $4)",
            &[&project, &prefix, &hash.as_slice(), &at_secs],
        );
        self.check(r).map(drop)
    }

    fn find(&mut self, key: &StreamKey) -> Result<Option<StreamRecord>, StoreError> {
        let r = self.tx.query_opt(
            "SELECT record FROM streams WHERE project = $1 AND prefix = $2 AND name = $3",
            &[&key.project, &key.prefix, &key.name],
        );
        self.check(r)?.map(|r| decode_record(r.get(0))).transpose()
    }

    fn create(&mut self, key: &StreamKey) -> Result<u64, StoreError> {
        let r = self.tx.query_one(
            "INSERT INTO streams (project, prefix, name, record) VALUES ($1, $2, $3, '')
             RETURNING id",
            &[&key.project, &key.prefix, &key.name],
        );
        Ok(self.check(r)?.get::<_, i64>(0) as u64)
    }

    fn nearby(&mut self, id: u64, lo: u64, hi: u64) -> Result<Nearby<StoredEntry>, StoreError> {
        let (id, lo, hi) = (id as i64, lo as i64, hi as i64);
        let at = self.tx.query(
            &format!(
                "SELECT {ENTRY_COLUMNS} FROM entries
                 WHERE stream_id = $1 AND idx BETWEEN $2 AND $3"
            ),
            &[&id, &lo, &hi],
        );
        let at = self.check(at)?.iter().map(stored_entry).collect();
        let before = self.tx.query_opt(
            &format!(
                "SELECT {ENTRY_COLUMNS} FROM entries WHERE stream_id = $1 AND idx < $2
                 ORDER BY idx DESC LIMIT 1"
            ),
            &[&id, &lo],
        );
        let before = self.check(before)?.as_ref().map(stored_entry);
        let after = self.tx.query_opt(
            &format!(
                "SELECT {ENTRY_COLUMNS} FROM entries WHERE stream_id = $1 AND idx > $2
                 ORDER BY idx LIMIT 1"
            ),
            &[&id, &hi],
        );
        let after = self.check(after)?.as_ref().map(stored_entry);
        Ok(Nearby { at, before, after })
    }

    fn past(&mut self, id: u64, t: i64) -> Result<bool, StoreError> {
        let r = self.tx.query_opt(
            "SELECT 1 FROM entries WHERE stream_id = $1 AND idx > $2 LIMIT 1",
            &[&(id as i64), &t],
        );
        Ok(self.check(r)?.is_some())
    }

    fn stored_bytes(&mut self, key: &StreamKey, e: &StoredEntry) -> Result<Vec<u8>, StoreError> {
        let raw = match self.store.cache.get(e.block) {
            Some(raw) => raw,
            None => {
                let r = self.tx.query_opt(
                    "SELECT codec, raw_len, crc, data FROM blocks WHERE id = $1",
                    &[&(e.block as i64)],
                );
                let row = self.check(r)?.ok_or_else(|| missing_block(key, e))?;
                let raw = Arc::new(unpack_row(key, e.block, &row, 0)?);
                self.store.cache.put(e.block, raw.clone());
                raw
            }
        };
        blocks::entry(&raw, e.off, e.len, e.crc)
            .map_err(|err| StoreError::Damaged(format!("{} entry {}: {err}", path_of(key), e.idx)))
    }

    fn insert(
        &mut self,
        _key: &StreamKey,
        id: u64,
        new: &[NewEntry<'_>],
    ) -> Result<(), StoreError> {
        let id = id as i64;
        let mut rest = new;
        for packed in self.prepacked.take(new) {
            let (these, more) = rest.split_at(packed.ranges.len());
            rest = more;
            let r = self.tx.query_one(
                "INSERT INTO blocks (stream_id, codec, raw_len, crc, data)
                 VALUES ($1, $2, $3, $4, $5) RETURNING id",
                &[
                    &id,
                    &packed.codec,
                    &(packed.raw_len as i32),
                    &i64::from(packed.crc),
                    &packed.data,
                ],
            );
            let block: i64 = self.check(r)?.get(0);
            let n = these.len();
            let (mut idx, mut off, mut len, mut crc, mut seq, mut span) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
            );
            for (e, &(o, l)) in these.iter().zip(&packed.ranges) {
                idx.push(e.idx as i64);
                off.push(o as i32);
                len.push(l as i32);
                crc.push(i64::from(checksum(e.raw)));
                seq.push(e.seq.map(|s| s.sequence as i64));
                span.push(e.seq.map(|s| s.span as i64));
            }
            let r = self.tx.execute(
                "INSERT INTO entries (stream_id, idx, block_id, off, len, crc, seq, span)
                 SELECT $1, * FROM UNNEST($2::BIGINT[], $3::BIGINT[], $4::INT[], $5::INT[],
                                          $6::BIGINT[], $7::BIGINT[], $8::BIGINT[])",
                &[&id, &idx, &vec![block; n], &off, &len, &crc, &seq, &span],
            );
            self.check(r)?;
        }
        Ok(())
    }

    fn contiguous(&mut self, id: u64, from: u64) -> Result<u64, StoreError> {
        // The first index at or after `from` whose successor is missing, in one query: the
        // stored indices from `from` on that are not followed by the next one.
        let r = self.tx.query_one(
            "SELECT CASE WHEN NOT EXISTS
                     (SELECT 1 FROM entries WHERE stream_id = $1 AND idx = $2) THEN $2
                 ELSE (SELECT MIN(e.idx) + 1 FROM entries e
                       WHERE e.stream_id = $1 AND e.idx >= $2 AND NOT EXISTS
                         (SELECT 1 FROM entries n
                          WHERE n.stream_id = $1 AND n.idx = e.idx + 1)) END",
            &[&(id as i64), &(from as i64)],
        );
        Ok(self.check(r)?.get::<_, i64>(0) as u64)
    }

    fn update(&mut self, _key: &StreamKey, rec: &StreamRecord) -> Result<(), StoreError> {
        let r = self.tx.execute(
            "UPDATE streams SET record = $2, updated_ms = $3 WHERE id = $1",
            &[&(rec.id as i64), &rec.encode_to_vec(), &rec.last_write_ms()],
        );
        self.check(r).map(drop)
    }
}

impl Tx<'_, '_, '_> {
    /// Turns a database error into a [`StoreError`], keeping a retriable one for the caller.
    fn check<T>(&mut self, r: Result<T, postgres::Error>) -> Result<T, StoreError> {
        r.map_err(|e| {
            let out = StoreError::from(&e);
            if retriable(&e) && self.failed.is_none() {
                self.failed = Some(e);
            }
            out
        })
    }
}

/// A block's raw bytes from a row of `codec, raw_len, crc, data` starting at column `first`,
/// checked.
fn unpack_row(
    key: &StreamKey,
    id: u64,
    row: &postgres::Row,
    first: usize,
) -> Result<Vec<u8>, StoreError> {
    blocks::unpack(
        row.get(first),
        row.get(first + 3),
        row.get::<_, i64>(first + 2) as u32,
        row.get::<_, i32>(first + 1) as usize,
    )
    .map_err(|e| StoreError::Damaged(format!("{} block {id}: {e}", path_of(key))))
}

fn missing_block(key: &StreamKey, e: &StoredEntry) -> StoreError {
    StoreError::Damaged(format!(
        "{} entry {}: its block {} is missing",
        path_of(key),
        e.idx,
        e.block
    ))
}

/// Blocks fetched by one query of a read.
const FETCH_BLOCKS: usize = 8;

/// Rows of entries read per query.
const READ_PAGE: i64 = 4096;

impl Backend for Postgres {
    fn write_part(
        &self,
        project: &str,
        prefix: &str,
        claim: &Claim<'_>,
        streams: &[CheckedEntry],
    ) -> Result<Result<WriteOutcome, NotOwner>, StoreError> {
        // Compressed before the prefix's lock is taken.
        // Compressed now: compressing later would rewrite each row (WAL, and a dead row).
        let mut prepacked = Prepacked::new(streams, false);
        let mut c = self.pool.get()?;
        let mut attempt = 1;
        loop {
            match self.write_once(&mut c, &mut prepacked, project, prefix, claim, streams) {
                Ok(done) => return done,
                Err(e) if retriable(&e) && attempt < WRITE_ATTEMPTS => {
                    tracing::debug!(error = %db_message(&e), attempt, "write aborted by the database; retrying");
                    attempt += 1;
                }
                Err(e) => return Err(StoreError::from(e)),
            }
        }
    }

    fn record(&self, key: &StreamKey) -> Result<Option<StreamRecord>, StoreError> {
        self.read(|c| record(c, key))
    }

    fn records(&self, project: &str) -> Result<Vec<(StreamKey, StreamRecord)>, StoreError> {
        self.read(|c| {
            c.query(
                "SELECT prefix, name, record FROM streams WHERE project = $1",
                &[&project],
            )?
            .iter()
            .map(|r| {
                let key = StreamKey {
                    project: project.to_string(),
                    prefix: r.get(0),
                    name: r.get(1),
                };
                Ok((key, decode_record(r.get(2))?))
            })
            .collect()
        })
    }

    fn prefix_records(&self, project: &str, prefix: &str) -> Result<Vec<StreamRecord>, StoreError> {
        self.read(|c| {
            c.query(
                "SELECT record FROM streams WHERE project = $1 AND prefix = $2",
                &[&project, &prefix],
            )?
            .iter()
            .map(|r| decode_record(r.get(0)))
            .collect()
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
            let mut out = Vec::new();
            let mut bytes = 0usize;
            let mut expect = from;
            loop {
                let want = i64::try_from(max_count - out.len())
                    .unwrap_or(i64::MAX)
                    .min(READ_PAGE);
                let rows = c.query(
                    &format!(
                        "SELECT {ENTRY_COLUMNS} FROM entries
                         WHERE stream_id = $1 AND idx >= $2 ORDER BY idx LIMIT $3"
                    ),
                    &[&(rec.id as i64), &(expect as i64), &want],
                )?;
                let page = rows.len();
                let mut take = Vec::new();
                for row in &rows {
                    let stored = stored_entry(row);
                    if stored.idx != expect
                        || out.len() + take.len() >= max_count
                        || (bytes >= max_bytes && !(out.is_empty() && take.is_empty()))
                    {
                        break;
                    }
                    bytes += stored.len;
                    take.push(stored);
                    expect += 1;
                }
                let full = take.len() == page;
                out.extend(self.read_rows(c, key, &take)?);
                if !full || page < want as usize || out.len() >= max_count || bytes >= max_bytes {
                    return Ok(out);
                }
            }
        })
    }

    fn last_entries(&self, key: &StreamKey, n: usize) -> Result<Vec<logpb::LogEntry>, StoreError> {
        self.read(|c| {
            let Some(rec) = record(c, key)? else {
                return Ok(Vec::new());
            };
            let mut rows: Vec<StoredEntry> = c
                .query(
                    &format!(
                        "SELECT {ENTRY_COLUMNS} FROM entries WHERE stream_id = $1
                         ORDER BY idx DESC LIMIT $2"
                    ),
                    &[&(rec.id as i64), &i64::try_from(n).unwrap_or(i64::MAX)],
                )?
                .iter()
                .map(stored_entry)
                .collect();
            rows.reverse();
            self.read_rows(c, key, &rows)
        })
    }

    fn prefix_registered(&self, project: &str, prefix: &str) -> Result<bool, StoreError> {
        self.read(|c| {
            Ok(c.query_opt(
                "SELECT 1 FROM prefixes WHERE project = $1 AND prefix = $2",
                &[&project, &prefix],
            )?
            .is_some())
        })
    }

    fn projects(&self) -> Result<Vec<String>, StoreError> {
        self.read(|c| {
            Ok(
                c.query("SELECT DISTINCT project FROM streams ORDER BY project", &[])?
                    .iter()
                    .map(|r| r.get(0))
                    .collect(),
            )
        })
    }

    fn probe_writable(&self) -> Result<(), Unwritable> {
        self.read(|c| {
            c.execute(
                "INSERT INTO heartbeat (collector, at_ms) VALUES ($1, $2)
                 ON CONFLICT (collector) DO UPDATE SET at_ms = excluded.at_ms",
                &[&self.me, &now_ms()],
            )?;
            Ok(())
        })
        .map_err(|e| Unwritable(format!("the database refuses a write: {e}")))
    }

    /// The database's size (`pg_database_size`); 0 when it cannot be asked.
    fn disk_bytes(&self) -> u64 {
        self.read(|c| {
            Ok(
                c.query_one("SELECT pg_database_size(current_database())", &[])?
                    .get::<_, i64>(0),
            )
        })
        .map_or(0, |n| u64::try_from(n).unwrap_or(0))
    }

    fn remove(&self, streams: &[StreamKey], cutoff_ms: i64) -> Result<Vec<StreamKey>, StoreError> {
        let mut c = self.pool.get()?;
        let mut removed = Vec::new();
        for key in streams {
            let mut tx = c.transaction()?;
            // Behind the prefix's writers: a write under way finishes first, and is seen.
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                &[&format!("{}/{}", key.project, key.prefix)],
            )?;
            let Some(row) = tx.query_opt(
                "SELECT id FROM streams WHERE project = $1 AND prefix = $2 AND name = $3
                 AND updated_ms <= $4
                 AND NOT EXISTS (SELECT 1 FROM follows f
                                 WHERE f.stream_id = streams.id AND f.until_ms > $5)",
                &[&key.project, &key.prefix, &key.name, &cutoff_ms, &now_ms()],
            )?
            else {
                continue;
            };
            let id: i64 = row.get(0);
            tx.execute("DELETE FROM entries WHERE stream_id = $1", &[&id])?;
            tx.execute("DELETE FROM blocks WHERE stream_id = $1", &[&id])?;
            tx.execute("DELETE FROM follows WHERE stream_id = $1", &[&id])?;
            tx.execute("DELETE FROM streams WHERE id = $1", &[&id])?;
            tx.execute(
                "DELETE FROM prefixes WHERE project = $1 AND prefix = $2
                 AND NOT EXISTS (SELECT 1 FROM streams WHERE project = $1 AND prefix = $2)",
                &[&key.project, &key.prefix],
            )?;
            tx.commit()?;
            removed.push(key.clone());
        }
        Ok(removed)
    }

    fn follow_changes(&self, changed: Box<dyn Fn(Vec<StreamKey>) + Send + Sync>) {
        let config = self.pool.config.clone();
        let (me, stopped) = (self.me.to_string(), self.stopped.clone());
        let spawned = std::thread::Builder::new()
            .name("pg-listen".into())
            .spawn(move || listen(&config, &me, &stopped, &*changed));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the listener of other collectors' writes");
        }
    }

    fn keep(&self, mine: &[StreamKey], ttl: Duration) -> Result<Vec<StreamKey>, StoreError> {
        let mut c = self.pool.get()?;
        let now = now_ms();
        let until = now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        let mut tx = c.transaction()?;
        tx.execute(
            "DELETE FROM follows WHERE collector = $1 OR until_ms <= $2",
            &[&self.me, &now],
        )?;
        for key in mine {
            tx.execute(
                "INSERT INTO follows (collector, stream_id, until_ms)
                 SELECT $1, id, $5 FROM streams WHERE project = $2 AND prefix = $3 AND name = $4
                 ON CONFLICT (collector, stream_id) DO UPDATE SET until_ms = excluded.until_ms",
                &[&self.me, &key.project, &key.prefix, &key.name, &until],
            )?;
        }
        let kept = tx
            .query(
                "SELECT DISTINCT s.project, s.prefix, s.name FROM follows f
                 JOIN streams s ON s.id = f.stream_id WHERE f.until_ms > $1",
                &[&now],
            )?
            .iter()
            .map(|r| StreamKey {
                project: r.get(0),
                prefix: r.get(1),
                name: r.get(2),
            })
            .collect();
        tx.commit()?;
        Ok(kept)
    }
}

/// The change listener: `LISTEN`s on [`CHANNEL`] and calls `changed` with the streams other
/// collectors wrote (an empty list: anything may have changed, after the connection was
/// lost). Reconnects with a backoff of up to 5 s until `stopped`.
fn listen(
    config: &postgres::Config,
    me: &str,
    stopped: &AtomicBool,
    changed: &(dyn Fn(Vec<StreamKey>) + Send + Sync),
) {
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    while !stopped.load(Ordering::Relaxed) {
        let mut client = match config.connect(NoTls) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %db_message(&e), "cannot listen for other collectors' writes; retrying");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")) {
            tracing::warn!(error = %db_message(&e), "LISTEN failed; retrying");
            std::thread::sleep(backoff);
            continue;
        }
        backoff = Duration::from_millis(100);
        if !first {
            // Notifications sent while the connection was down are lost: wake everyone.
            changed(Vec::new());
        }
        first = false;
        let mut notes = client.notifications();
        let mut iter = notes.timeout_iter(Duration::from_millis(500));
        loop {
            if stopped.load(Ordering::Relaxed) {
                return;
            }
            use postgres::fallible_iterator::FallibleIterator;
            match iter.next() {
                Ok(Some(n)) => {
                    if let Some(keys) = parse_payload(n.payload(), me) {
                        changed(keys);
                    }
                }
                // The timeout: look at `stopped` again.
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %db_message(&e), "lost the listener connection; reconnecting");
                    break;
                }
            }
        }
    }
}

/// The streams a notification names (an empty list: all of a project's followers should look
/// again); `None` for this collector's own writes, which it has already told its followers of.
fn parse_payload(payload: &str, me: &str) -> Option<Vec<StreamKey>> {
    let v: Vec<String> = serde_json::from_str(payload).ok()?;
    match v.as_slice() {
        [from, ..] if from == me => None,
        [_, project, prefix, name] => Some(vec![StreamKey {
            project: project.clone(),
            prefix: prefix.clone(),
            name: name.clone(),
        }]),
        _ => Some(Vec::new()),
    }
}
