//! The collector's embedded store: SQLite (bundled, through `rusqlite`) in WAL mode with
//! `synchronous=FULL`. `docs/store-choice.md` has the measurements behind the choice.
//!
//! Tables:
//! - `streams`: one row per stream (`project`, `prefix`, `name`, unique together) with its
//!   [`StreamRecord`]: the descriptor, the terminal index, counters and the contiguity mark.
//! - `entries`: `(stream_id, idx)` → the `logpb.LogEntry` exactly as it arrived.
//!
//! **Durability point.** [`Store::write`] returns only after the transaction holding the
//! bundle's new entries has committed, which with WAL and `synchronous=FULL` means the WAL
//! has been fsynced. The collector acknowledges a bundle only then, so an acknowledged bundle
//! survives a crash or a power cut; an unacknowledged one may be absent, and the butler sends
//! it again.
//!
//! **De-duplication.** `(stream_id, idx)` is unique and entries go in with `INSERT OR
//! IGNORE`, so a retried bundle never duplicates a line, whatever order bundles arrive in.

use std::path::Path;
use std::sync::{Arc, Mutex};

use logdog_proto::logdog::collector::LogStreamState;
use logdog_proto::logpb;
use prost::Message;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::validate::CheckedEntry;

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
    /// The one connection that writes (SQLite has one writer at a time anyway).
    writer: Mutex<Connection>,
    /// Idle read connections; WAL lets readers run beside the writer.
    readers: Mutex<Vec<Connection>>,
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

impl Store {
    /// Opens (or creates) the store in `dir`. After a crash, SQLite recovers to the last
    /// committed transaction.
    ///
    /// # Errors
    /// The directory or database cannot be opened.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Db(format!("{}: {e}", dir.display())))?;
        let path = dir.join("collector.sqlite");
        // Large pages keep 64 KiB entries in few overflow pages (only takes effect when the
        // database is created).
        let fresh = !path.exists();
        if fresh {
            let c = Connection::open(&path)?;
            c.pragma_update(None, "page_size", 65536)?;
            c.execute_batch("VACUUM")?;
        }
        let writer = open_conn(&path)?;
        writer.execute_batch(
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
                 data BLOB NOT NULL,
                 UNIQUE (stream_id, idx));",
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                writer: Mutex::new(writer),
                readers: Mutex::new(Vec::new()),
            }),
        })
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
        let mut conn = self.inner.writer.lock().unwrap_or_else(|e| e.into_inner());
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
                "INSERT OR IGNORE INTO entries (stream_id, idx, data) VALUES (?1, ?2, ?3)",
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
                    if insert.execute(params![id, i as i64, raw.as_ref()])? == 0 {
                        out.duplicates += 1;
                        continue;
                    }
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
                "SELECT idx, data FROM entries WHERE stream_id = ?1 AND idx >= ?2 ORDER BY idx",
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
                let data = row
                    .get_ref(1)?
                    .as_blob()
                    .map_err(|e| StoreError::Db(e.to_string()))?;
                bytes += data.len();
                out.push(decode_entry(data)?);
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
                "SELECT data FROM entries WHERE stream_id = ?1 ORDER BY idx DESC LIMIT ?2",
            )?;
            let mut rows = q.query(params![rec.id as i64, n as i64])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                let data = row
                    .get_ref(0)?
                    .as_blob()
                    .map_err(|e| StoreError::Db(e.to_string()))?;
                out.push(decode_entry(data)?);
            }
            out.reverse();
            Ok(out)
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
