//! The collector's embedded store, on [redb](https://docs.rs/redb) (see `docs/store-choice.md`
//! for how it was chosen).
//!
//! Tables:
//! - `streams`: `project \0 prefix \0 name` → a [`StreamRecord`]: the descriptor, a numeric id,
//!   the terminal index, counters, and the contiguity mark.
//! - `entries`: `(stream id, stream_index)` → the encoded `logpb.LogEntry`.
//! - `meta`: the next stream id.
//!
//! **Durability point.** [`Store::write`] returns only after the redb transaction holding the
//! bundle's new entries has committed with `Durability::Immediate`, i.e. after the data and
//! the new root are fsynced. The collector acknowledges a bundle only then, so an acknowledged
//! bundle survives a crash or a power cut; an unacknowledged one may be partly or wholly
//! absent, and the butler sends it again.
//!
//! **De-duplication.** An entry whose `(stream, stream_index)` is already stored is skipped,
//! so a retried bundle never duplicates a line, whatever order bundles arrive in.

use std::path::Path;
use std::sync::Arc;

use logdog_proto::logdog::collector::LogStreamState;
use logdog_proto::logpb::{self, log_entry::Content};
use prost::Message;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

const STREAMS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("streams");
const ENTRIES: TableDefinition<'_, (u64, u64), &[u8]> = TableDefinition::new("entries");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

/// Page cache of the database. Reads stream from disk beyond this; it bounds the collector's
/// memory however much it stores.
const CACHE_SIZE: usize = 64 * 1024 * 1024;

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

impl StreamKey {
    fn encode(&self) -> Vec<u8> {
        [
            self.project.as_bytes(),
            self.prefix.as_bytes(),
            self.name.as_bytes(),
        ]
        .join(&0u8)
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let mut parts = b.split(|c| *c == 0);
        let mut next = || {
            parts
                .next()
                .and_then(|p| String::from_utf8(p.to_vec()).ok())
        };
        Some(Self {
            project: next()?,
            prefix: next()?,
            name: next()?,
        })
    }
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

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.to_string())
            }
        }
    )*};
}
db_err!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

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
    db: Arc<redb::Database>,
}

fn payload_len(e: &logpb::LogEntry) -> u64 {
    match &e.content {
        Some(Content::Text(t)) => t
            .lines
            .iter()
            .map(|l| (l.value.len() + l.delimiter.len()) as u64)
            .sum(),
        Some(Content::Binary(b)) => b.data.len() as u64,
        Some(Content::Datagram(d)) => d.data.len() as u64,
        None => 0,
    }
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

impl Store {
    /// Opens (or creates) the store in `dir`. After a crash, redb recovers to the last
    /// committed transaction.
    ///
    /// # Errors
    /// The directory or database cannot be opened.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Db(format!("{}: {e}", dir.display())))?;
        let mut builder = redb::Database::builder();
        builder.set_cache_size(CACHE_SIZE);
        let db = builder.create(dir.join("collector.redb"))?;
        let txn = db.begin_write()?;
        txn.open_table(STREAMS)?;
        txn.open_table(ENTRIES)?;
        txn.open_table(META)?;
        txn.commit()?;
        Ok(Self { db: Arc::new(db) })
    }

    /// Stores a validated bundle durably (see the module docs); returns once it is on disk.
    ///
    /// # Errors
    /// A conflict with what is stored (nothing of the bundle is stored then), or a database
    /// failure.
    pub fn write(&self, bundle: &logpb::ButlerLogBundle) -> Result<WriteOutcome, StoreError> {
        let txn = self.db.begin_write()?;
        let mut out = WriteOutcome::default();
        {
            let mut streams = txn.open_table(STREAMS)?;
            let mut entries = txn.open_table(ENTRIES)?;
            let mut meta = txn.open_table(META)?;
            for e in &bundle.entries {
                let Some(desc) = &e.desc else { continue };
                let key = StreamKey {
                    project: bundle.project.clone(),
                    prefix: bundle.prefix.clone(),
                    name: desc.name.clone(),
                };
                let kbytes = key.encode();
                let existing = streams
                    .get(kbytes.as_slice())?
                    .map(|v| StreamRecord::decode(v.value()))
                    .transpose()
                    .map_err(|e| StoreError::Db(format!("corrupt stream record: {e}")))?;
                let mut dirty = existing.is_none();
                let mut rec = match existing {
                    Some(r) => r,
                    None => {
                        let id = meta.get("next_id")?.map_or(0, |v| v.value());
                        meta.insert("next_id", id + 1)?;
                        let mut desc = desc.clone();
                        desc.prefix = bundle.prefix.clone();
                        StreamRecord {
                            id,
                            desc: Some(desc),
                            created: Some(now()),
                            terminal_index: -1,
                            ..Default::default()
                        }
                    }
                };
                if e.terminal {
                    let t = if e.terminal_index == u64::MAX {
                        -1
                    } else {
                        e.terminal_index as i64
                    };
                    if rec.terminated && rec.terminal_index != t {
                        return Err(StoreError::Conflict(format!(
                            "stream {}: terminal index {t} differs from the stored {}",
                            key.name, rec.terminal_index
                        )));
                    }
                    if !rec.terminated {
                        rec.terminated = true;
                        rec.terminal_index = t;
                        dirty = true;
                    }
                }
                for log in &e.logs {
                    let i = log.stream_index;
                    if rec.terminated && (rec.terminal_index < 0 || i > rec.terminal_index as u64) {
                        return Err(StoreError::Conflict(format!(
                            "stream {}: entry {i} is past the terminal index {}",
                            key.name, rec.terminal_index
                        )));
                    }
                    if entries.get((rec.id, i))?.is_some() {
                        out.duplicates += 1;
                        continue;
                    }
                    entries.insert((rec.id, i), log.encode_to_vec().as_slice())?;
                    rec.entry_count += 1;
                    rec.byte_count += payload_len(log);
                    out.stored += 1;
                    dirty = true;
                }
                if dirty {
                    while entries.get((rec.id, rec.contiguous))?.is_some() {
                        rec.contiguous += 1;
                    }
                    streams.insert(kbytes.as_slice(), rec.encode_to_vec().as_slice())?;
                    out.touched.push(key);
                }
            }
        }
        txn.commit()?;
        Ok(out)
    }

    fn record(&self, key: &StreamKey) -> Result<Option<StreamRecord>, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(STREAMS)?;
        let v = t.get(key.encode().as_slice())?;
        v.map(|v| StreamRecord::decode(v.value()))
            .transpose()
            .map_err(|e| StoreError::Db(format!("corrupt stream record: {e}")))
    }

    /// A stream's descriptor and state, if the store has heard of it.
    ///
    /// # Errors
    /// A database failure.
    pub fn stream(&self, key: &StreamKey) -> Result<Option<StreamInfo>, StoreError> {
        Ok(self.record(key)?.map(|r| StreamInfo {
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
        let Some(rec) = self.record(key)? else {
            return Ok(Vec::new());
        };
        let r = self.db.begin_read()?;
        let t = r.open_table(ENTRIES)?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for (expect, kv) in (from..).zip(t.range((rec.id, from)..=(rec.id, u64::MAX))?) {
            let (k, v) = kv?;
            if k.value().1 != expect
                || out.len() >= max_count
                || (bytes >= max_bytes && !out.is_empty())
            {
                break;
            }
            bytes += v.value().len();
            out.push(
                logpb::LogEntry::decode(v.value())
                    .map_err(|e| StoreError::Db(format!("corrupt entry: {e}")))?,
            );
        }
        Ok(out)
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
        let Some(rec) = self.record(key)? else {
            return Ok(Vec::new());
        };
        let r = self.db.begin_read()?;
        let t = r.open_table(ENTRIES)?;
        let mut out = Vec::new();
        for kv in t.range((rec.id, 0)..=(rec.id, u64::MAX))?.rev().take(n) {
            let (_, v) = kv?;
            out.push(
                logpb::LogEntry::decode(v.value())
                    .map_err(|e| StoreError::Db(format!("corrupt entry: {e}")))?,
            );
        }
        out.reverse();
        Ok(out)
    }

    /// Every stream of `project` whose prefix is `prefix` or lies under it (`""`: all), sorted.
    ///
    /// # Errors
    /// A database failure.
    pub fn list(
        &self,
        project: &str,
        prefix: &str,
    ) -> Result<Vec<(StreamKey, StreamInfo)>, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(STREAMS)?;
        let mut lo = project.as_bytes().to_vec();
        lo.push(0);
        let mut hi = lo.clone();
        *hi.last_mut().unwrap_or(&mut 0) = 1;
        let mut out = Vec::new();
        for kv in t.range::<&[u8]>(lo.as_slice()..hi.as_slice())? {
            let (k, v) = kv?;
            let Some(key) = StreamKey::decode(k.value()) else {
                continue;
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
            let rec = StreamRecord::decode(v.value())
                .map_err(|e| StoreError::Db(format!("corrupt stream record: {e}")))?;
            out.push((
                key,
                StreamInfo {
                    state: rec.state(),
                    desc: rec.desc.unwrap_or_default(),
                },
            ));
        }
        Ok(out)
    }
}
