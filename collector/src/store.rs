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
//! **De-duplication.** `(stream_id, idx)` is unique and entries go in with `INSERT OR
//! IGNORE`, so a retried bundle never duplicates a line, whatever order bundles arrive in.

use std::path::Path;
use std::sync::{Arc, Mutex};

use logdog_proto::logdog::collector::LogStreamState;
use logdog_proto::logpb;
use prost::Message;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::segments::{Appender, Location, Segments};
use crate::validate::CheckedEntry;

/// `PRAGMA user_version` of the current layout (entries in segment files).
const LAYOUT_VERSION: i64 = 2;

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
        }
    }
}

/// A stream's descriptor and state.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamInfo {
    /// Descriptor.
    pub desc: logpb::LogStreamDescriptor,
    /// State.
    pub state: LogStreamState,
}

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The write contradicts what is stored (a different terminal index, an entry past it).
    #[error("{0}")]
    Conflict(String),
    /// The database failed.
    #[error("database: {0}")]
    Db(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Db(e.to_string())
    }
}

/// What a write did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Entries newly stored.
    pub stored: u32,
    /// Entries that were already there.
    pub duplicates: u32,
    /// Streams whose state changed.
    pub touched: Vec<StreamKey>,
}

/// The store. Cheap to clone; all clones share one database.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: std::path::PathBuf,
    /// The one writer (SQLite has one writer at a time anyway) and the active segment.
    writer: Mutex<Writer>,
    /// Idle read connections; WAL lets readers run beside the writer.
    readers: Mutex<Vec<Connection>>,
    /// The entries' bytes.
    segments: Segments,
    /// Bundles being written now (see [`Store::writing`]).
    activity: tokio::sync::watch::Sender<usize>,
    /// When the last bundle write ended, in milliseconds since `epoch` plus one (0: never).
    last_write_ms: std::sync::atomic::AtomicU64,
    epoch: tokio::time::Instant,
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

fn decode_record(blob: &[u8]) -> Result<StreamRecord, StoreError> {
    StreamRecord::decode(blob).map_err(|e| StoreError::Db(format!("corrupt stream record: {e}")))
}

fn decode_entry(blob: &[u8]) -> Result<logpb::LogEntry, StoreError> {
    logpb::LogEntry::decode(blob).map_err(|e| StoreError::Db(format!("corrupt entry: {e}")))
}

fn location(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Location> {
    Ok(Location {
        segment: row.get(first)?,
        offset: row.get::<_, i64>(first + 1)? as u64,
        len: row.get::<_, i64>(first + 2)? as u64,
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
        let path = dir.join("collector.sqlite");
        let conn = open_conn(&path)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let has_tables: bool = conn
            .prepare("SELECT 1 FROM sqlite_master WHERE name = 'entries'")?
            .exists([])?;
        if has_tables && version != LAYOUT_VERSION {
            return Err(StoreError::Db(format!(
                "{} was written by an older collector (layout {version}, this one reads \
                 {LAYOUT_VERSION}); read it with that version or start on a new data directory",
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
                 PRIMARY KEY (stream_id, idx)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS append_end (
                 one INTEGER PRIMARY KEY CHECK (one = 1),
                 seg INTEGER NOT NULL,
                 end_off INTEGER NOT NULL);",
        )?;
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
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                writer: Mutex::new(Writer { conn, appender }),
                readers: Mutex::new(Vec::new()),
                segments: Segments::new(&seg_dir),
                activity: tokio::sync::watch::channel(0).0,
                last_write_ms: 0.into(),
                epoch: tokio::time::Instant::now(),
            }),
        })
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
        self.inner
            .readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(conn);
        out
    }

    /// Stores a checked bundle durably (see the module docs); returns once it is on disk.
    ///
    /// # Errors
    /// A conflict with what is stored (nothing of the bundle is stored then), or a database
    /// failure.
    pub fn write(
        &self,
        project: &str,
        prefix: &str,
        streams: &[CheckedEntry],
    ) -> Result<WriteOutcome, StoreError> {
        let mut writer = self.inner.writer.lock().unwrap_or_else(|e| e.into_inner());
        let Writer { conn, appender } = &mut *writer;
        appender.rotate_if_full().map_err(StoreError::Db)?;
        let res = Self::write_locked(conn, appender, project, prefix, streams);
        if res.is_err() {
            appender.abandon();
        }
        res
    }

    fn write_locked(
        conn: &mut Connection,
        appender: &mut Appender,
        project: &str,
        prefix: &str,
        streams: &[CheckedEntry],
    ) -> Result<WriteOutcome, StoreError> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut out = WriteOutcome::default();
        {
            let mut find = tx.prepare_cached(
                "SELECT id, record FROM streams WHERE project = ?1 AND prefix = ?2 AND name = ?3",
            )?;
            let mut create = tx.prepare_cached(
                "INSERT INTO streams (project, prefix, name, record) VALUES (?1, ?2, ?3, x'')",
            )?;
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO entries (stream_id, idx, seg, off, len)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            let mut has =
                tx.prepare_cached("SELECT 1 FROM entries WHERE stream_id = ?1 AND idx = ?2")?;
            let mut update = tx.prepare_cached("UPDATE streams SET record = ?2 WHERE id = ?1")?;
            for e in streams {
                let name = e.desc.name.as_str();
                let found: Option<(i64, Vec<u8>)> = find
                    .query_row(params![project, prefix, name], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .optional()?;
                let (mut dirty, mut rec) = match found {
                    Some((_, blob)) => (false, decode_record(&blob)?),
                    None => {
                        create.execute(params![project, prefix, name])?;
                        let mut desc = e.desc.clone();
                        desc.prefix = prefix.to_string();
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
                if let Some(t) = e.terminal {
                    if rec.terminated && rec.terminal_index != t {
                        return Err(StoreError::Conflict(format!(
                            "stream {name}: terminal index {t} differs from the stored {}",
                            rec.terminal_index
                        )));
                    }
                    if !rec.terminated {
                        rec.terminated = true;
                        rec.terminal_index = t;
                        dirty = true;
                    }
                }
                for (i, raw, payload) in &e.logs {
                    let i = *i;
                    if rec.terminated && (rec.terminal_index < 0 || i > rec.terminal_index as u64) {
                        return Err(StoreError::Conflict(format!(
                            "stream {name}: entry {i} is past the terminal index {}",
                            rec.terminal_index
                        )));
                    }
                    let at = Location {
                        segment: appender.segment(),
                        offset: appender.next_offset(),
                        len: raw.len() as u64,
                    };
                    let row = params![id, i as i64, at.segment, at.offset as i64, at.len as i64];
                    if insert.execute(row)? == 0 {
                        out.duplicates += 1;
                        continue;
                    }
                    appender.push(raw.clone());
                    rec.entry_count += 1;
                    rec.byte_count += payload;
                    out.stored += 1;
                    dirty = true;
                }
                if dirty {
                    while has.exists(params![id, rec.contiguous as i64])? {
                        rec.contiguous += 1;
                    }
                    update.execute(params![id, rec.encode_to_vec()])?;
                    out.touched.push(StreamKey {
                        project: project.to_string(),
                        prefix: prefix.to_string(),
                        name: name.to_string(),
                    });
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
        appender.flush().map_err(StoreError::Db)?;
        tx.commit()?;
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

    /// A stream's descriptor and state, if the store has heard of it.
    ///
    /// # Errors
    /// A database failure.
    pub fn stream(&self, key: &StreamKey) -> Result<Option<StreamInfo>, StoreError> {
        let rec = self.read(|c| Self::record(c, key))?;
        Ok(rec.map(|r| StreamInfo {
            state: r.state(),
            desc: r.desc.unwrap_or_default(),
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
        self.read(|c| {
            let Some(rec) = Self::record(c, key)? else {
                return Ok(Vec::new());
            };
            let mut q = c.prepare_cached(
                "SELECT idx, seg, off, len FROM entries
                 WHERE stream_id = ?1 AND idx >= ?2 ORDER BY idx",
            )?;
            let mut rows = q.query(params![rec.id as i64, from as i64])?;
            let mut out = Vec::new();
            let mut bytes = 0usize;
            let mut expect = from;
            while let Some(row) = rows.next()? {
                let idx: i64 = row.get(0)?;
                if idx as u64 != expect
                    || out.len() >= max_count
                    || (bytes >= max_bytes && !out.is_empty())
                {
                    break;
                }
                let data = self
                    .inner
                    .segments
                    .read(location(row, 1)?)
                    .map_err(StoreError::Db)?;
                bytes += data.len();
                out.push(decode_entry(&data)?);
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
            let mut q = c.prepare_cached(
                "SELECT seg, off, len FROM entries WHERE stream_id = ?1 ORDER BY idx DESC LIMIT ?2",
            )?;
            let mut rows = q.query(params![rec.id as i64, n as i64])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                let data = self
                    .inner
                    .segments
                    .read(location(row, 0)?)
                    .map_err(StoreError::Db)?;
                out.push(decode_entry(&data)?);
            }
            out.reverse();
            Ok(out)
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
        out.sort_by_key(|(k, _)| format!("{}/+/{}", k.prefix, k.name));
        Ok(out)
    }
}
