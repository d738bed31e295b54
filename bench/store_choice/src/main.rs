//! Store-choice benchmark for the LogDog collector.
//!
//! Runs every candidate embedded store on the same generated workload, each in
//! a child process of this binary (so peak RSS, VmHWM, is per candidate), and
//! prints a markdown table.  See docs/store-choice.md for the write-up.
//!
//!     cargo run --release --manifest-path bench/store_choice/Cargo.toml
//!
//! Environment knobs (all optional):
//!   STORE_BENCH_MIB=512            size of the big stream in MiB (throughput case)
//!   STORE_BENCH_CANDIDATES=a,b     subset of: redb, redb-quickrepair, fjall, fjall-kvsep,
//!                                  sqlite-full, sqlite-normal (default: all, in that order)
//!   STORE_BENCH_DIR=path           scratch dir, removed at the end
//!                                  (default: <this crate>/target/store-choice-tmp)
//!   STORE_BENCH_ENTRY_BYTES=65536  entry size in the throughput case (bundles stay 8 MiB)
//!   STORE_BENCH_REDB_CACHE_MIB=n   redb page cache size (redb's default is 1 GiB)
//!   STORE_BENCH_PAYLOAD=text       `text` (log-like, compressible) or `random` (incompressible)
//!
//! Data model shared by all candidates (what the collector would store):
//!   streams : key  = project \0 prefix \0 name
//!             value= stream_id u64 | terminal u64 (u64::MAX = unset) | distinct-index count u64
//!   entries : key  = (stream_id u64, stream_index u64), big-endian where the store compares
//!             bytes, so that key order == index order
//!             value= encoded LogEntry blob
//!   a batch = one store transaction with a durable commit; an (stream,index) already present is
//!   skipped (dedup) and does not bump the count; a batch that adds nothing does not commit at all.
//!   complete(stream) <=> terminal is set && count == terminal + 1.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
const BIG_BATCH: usize = 8 * MIB; // bundle size in the throughput case
const LAT_BATCHES: usize = 1000; // latency case: number of durable commits
const LAT_ENTRIES: usize = 3; // entries per latency batch (~100 B each)
const MIXED_STREAMS: usize = 100; // mixed/out-of-order/retry correctness workload
const HEADER: usize = 16; // payload header: index u64 | len u32 | tag u32

const ALL_CANDIDATES: &[&str] = &[
    "redb",
    "redb-quickrepair",
    "fjall",
    "fjall-kvsep",
    "sqlite-full",
    "sqlite-normal",
];

// ---------------------------------------------------------------------------------------------
// Workload model

#[derive(Clone, Debug)]
struct StreamPath {
    project: String,
    prefix: String,
    name: String,
}

impl StreamPath {
    fn new(project: &str, prefix: &str, name: &str) -> Self {
        StreamPath {
            project: project.into(),
            prefix: prefix.into(),
            name: name.into(),
        }
    }
    fn key(&self) -> Vec<u8> {
        let mut k =
            Vec::with_capacity(self.project.len() + self.prefix.len() + self.name.len() + 2);
        k.extend_from_slice(self.project.as_bytes());
        k.push(0);
        k.extend_from_slice(self.prefix.as_bytes());
        k.push(0);
        k.extend_from_slice(self.name.as_bytes());
        k
    }
    fn tag(&self) -> u64 {
        fnv(&self.key())
    }
}

/// Key range [lo, hi) of all streams in `project` under `prefix`.
fn prefix_bounds(project: &str, prefix: &str) -> (Vec<u8>, Vec<u8>) {
    let mut lo = Vec::new();
    lo.extend_from_slice(project.as_bytes());
    lo.push(0);
    lo.extend_from_slice(prefix.as_bytes());
    let mut hi = lo.clone();
    lo.push(0);
    hi.push(1);
    (lo, hi)
}

struct StreamWrite {
    path: StreamPath,
    terminal: Option<u64>,
    entries: Vec<(u64, Vec<u8>)>,
}

type Batch = Vec<StreamWrite>;

#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct StreamState {
    id: u64,
    terminal: Option<u64>,
    count: u64,
}

impl StreamState {
    fn complete(&self) -> bool {
        matches!(self.terminal, Some(t) if self.count == t + 1)
    }
    fn encode(&self) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[0..8].copy_from_slice(&self.id.to_le_bytes());
        b[8..16].copy_from_slice(&self.terminal.unwrap_or(u64::MAX).to_le_bytes());
        b[16..24].copy_from_slice(&self.count.to_le_bytes());
        b
    }
    fn decode(b: &[u8]) -> Self {
        let u = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        let t = u(8);
        StreamState {
            id: u(0),
            terminal: (t != u64::MAX).then_some(t),
            count: u(16),
        }
    }
}

#[derive(Default, Debug)]
struct WriteOutcome {
    new_entries: usize,
    dup_entries: usize,
    committed: bool,
}

fn entry_key(id: u64, idx: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&id.to_be_bytes());
    k[8..].copy_from_slice(&idx.to_be_bytes());
    k
}

// ---------------------------------------------------------------------------------------------
// Deterministic data generation

fn fnv(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &x in b {
        h ^= x as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

/// A pool of bytes that entry payloads are sliced from: log-like text (default, compresses
/// roughly like real log output) or random bytes.
struct Payloads {
    pool: Vec<u8>,
}

impl Payloads {
    fn new(random: bool) -> Self {
        let mut rng = Rng(42);
        let size = 4 * MIB;
        let mut pool = Vec::with_capacity(size + 256);
        if random {
            while pool.len() < size {
                pool.extend_from_slice(&rng.next().to_le_bytes());
            }
        } else {
            const LEVELS: &[&str] = &["INFO", "INFO", "INFO", "DEBUG", "WARNING", "ERROR"];
            const WORDS: &[&str] = &[
                "compile",
                "link",
                "test",
                "step",
                "fetch",
                "upload",
                "shard",
                "builder",
                "ninja",
                "swarming",
                "isolate",
                "cache",
                "hit",
                "miss",
                "retry",
                "timeout",
                "ok",
                "failed",
                "src/base/logging.cc",
                "out/Release/obj",
                "gs://bucket/path",
                "exit_code",
            ];
            while pool.len() < size {
                let line = format!(
                    "2026-05-{:02}T{:02}:{:02}:{:02}.{:06}Z {} [pid {} tid {}] {} {} {} id={:016x} took {}.{:03}s ({} bytes)\n",
                    1 + rng.below(28),
                    rng.below(24),
                    rng.below(60),
                    rng.below(60),
                    rng.below(1_000_000),
                    LEVELS[rng.below(LEVELS.len() as u64) as usize],
                    1000 + rng.below(60000),
                    rng.below(64),
                    WORDS[rng.below(WORDS.len() as u64) as usize],
                    WORDS[rng.below(WORDS.len() as u64) as usize],
                    WORDS[rng.below(WORDS.len() as u64) as usize],
                    rng.next(),
                    rng.below(100),
                    rng.below(1000),
                    rng.below(1 << 20),
                );
                pool.extend_from_slice(line.as_bytes());
            }
        }
        pool.truncate(size);
        Payloads { pool }
    }

    /// Deterministic payload for (stream, index) of `len` bytes with a verifiable header.
    fn entry(&self, stream_tag: u64, idx: u64, len: usize) -> Vec<u8> {
        let len = len.max(HEADER);
        let mut v = Vec::with_capacity(len);
        v.extend_from_slice(&idx.to_le_bytes());
        v.extend_from_slice(&(len as u32).to_le_bytes());
        v.extend_from_slice(&(stream_tag as u32).to_le_bytes());
        let body = len - HEADER;
        let h = stream_tag ^ idx.wrapping_mul(0x9E3779B97F4A7C15);
        let off = (h % (self.pool.len() - body) as u64) as usize;
        v.extend_from_slice(&self.pool[off..off + body]);
        v
    }
}

fn check_entry(stream_tag: u64, idx: u64, data: &[u8]) -> bool {
    data.len() >= HEADER
        && u64::from_le_bytes(data[0..8].try_into().unwrap()) == idx
        && u32::from_le_bytes(data[8..12].try_into().unwrap()) as usize == data.len()
        && u32::from_le_bytes(data[12..16].try_into().unwrap()) == stream_tag as u32
}

fn big_stream() -> StreamPath {
    StreamPath::new("bench", "build/123", "stdout")
}

fn big_batch(p: &Payloads, batch_no: usize, n_entries: u64) -> Batch {
    let s = big_stream();
    let per = (BIG_BATCH / big_entry()) as u64;
    let first = batch_no as u64 * per;
    let last = (first + per).min(n_entries);
    let entries = (first..last)
        .map(|i| (i, p.entry(s.tag(), i, big_entry())))
        .collect();
    let terminal = (last == n_entries).then_some(n_entries - 1);
    vec![StreamWrite {
        path: s,
        terminal,
        entries,
    }]
}

fn small_stream(i: usize) -> StreamPath {
    StreamPath::new(
        "bench",
        &format!("small/{}", i % 4),
        &format!("stream-{i:02}"),
    )
}

/// Latency case batch number `b`: 3 consecutive ~100 B entries of one of 20 small streams.
fn small_batch(p: &Payloads, b: usize) -> Batch {
    let s = small_stream(b % 20);
    let first = (b / 20 * LAT_ENTRIES) as u64;
    let entries = (0..LAT_ENTRIES as u64)
        .map(|k| {
            let i = first + k;
            (
                i,
                p.entry(s.tag(), i, 80 + (fnv(&i.to_le_bytes()) % 41) as usize),
            )
        })
        .collect();
    vec![StreamWrite {
        path: s,
        terminal: None,
        entries,
    }]
}

/// Mixed workload: 100 streams, 5..60 entries each, sizes log-uniform in 100 B..64 KiB,
/// delivered out of order in batches touching 1..20 streams, ~10% of batches retried later.
/// Returns (streams with entry count, batch plan: per batch [(stream no, [indices])]).
#[allow(clippy::type_complexity)]
fn mixed_plan() -> (Vec<(StreamPath, u64)>, Vec<Vec<(usize, Vec<u64>)>>) {
    let mut rng = Rng(7);
    let streams: Vec<(StreamPath, u64)> = (0..MIXED_STREAMS)
        .map(|j| {
            (
                StreamPath::new("mixed", &format!("job/{}", j % 7), &format!("s{j:03}")),
                5 + rng.below(56),
            )
        })
        .collect();
    let mut queues: Vec<Vec<u64>> = streams
        .iter()
        .map(|(_, n)| {
            let mut v: Vec<u64> = (0..*n).collect();
            rng.shuffle(&mut v);
            v
        })
        .collect();
    let mut plan: Vec<Vec<(usize, Vec<u64>)>> = Vec::new();
    loop {
        let mut live: Vec<usize> = (0..queues.len())
            .filter(|&j| !queues[j].is_empty())
            .collect();
        if live.is_empty() {
            break;
        }
        rng.shuffle(&mut live);
        let k = (1 + rng.below(20) as usize).min(live.len());
        let mut batch = Vec::new();
        for &j in &live[..k] {
            let m = (1 + rng.below(4) as usize).min(queues[j].len());
            let keep = queues[j].len() - m;
            let take: Vec<u64> = queues[j].split_off(keep);
            batch.push((j, take));
        }
        plan.push(batch);
        if rng.below(10) == 0 {
            let again = plan[rng.below(plan.len() as u64) as usize].clone();
            plan.push(again); // a retry of an earlier (already acknowledged) bundle
        }
    }
    (streams, plan)
}

fn mixed_entry_len(tag: u64, idx: u64) -> usize {
    let u = (fnv(&(tag ^ idx.rotate_left(17)).to_le_bytes()) >> 11) as f64 / (1u64 << 53) as f64;
    ((100f64.ln() + u * ((64.0 * 1024.0f64).ln() - 100f64.ln())).exp()) as usize
}

fn materialize_mixed(
    p: &Payloads,
    streams: &[(StreamPath, u64)],
    b: &[(usize, Vec<u64>)],
) -> Batch {
    b.iter()
        .map(|(j, idxs)| {
            let (s, n) = &streams[*j];
            let tag = s.tag();
            StreamWrite {
                path: s.clone(),
                // the terminal index travels with the bundle that carries the last entry,
                // which may well arrive before earlier entries (completeness then lags)
                terminal: idxs.contains(&(n - 1)).then_some(n - 1),
                entries: idxs
                    .iter()
                    .map(|&i| (i, p.entry(tag, i, mixed_entry_len(tag, i))))
                    .collect(),
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Store abstraction

trait Store {
    /// Apply the batch atomically and durably (returns only after the durable commit).
    fn write_batch(&mut self, batch: &Batch) -> Result<WriteOutcome>;
    fn stream_state(&self, path: &StreamPath) -> Result<Option<StreamState>>;
    /// Entries of one stream with index >= from, in index order.
    fn scan(&self, id: u64, from: u64, f: &mut dyn FnMut(u64, &[u8])) -> Result<()>;
    /// Last `k` entries of one stream, newest first.
    fn tail(&self, id: u64, k: usize, f: &mut dyn FnMut(u64, &[u8])) -> Result<()>;
    fn list_prefix(&self, project: &str, prefix: &str) -> Result<Vec<Vec<u8>>>;
}

fn open_store(kind: &str, dir: &Path) -> Result<Box<dyn Store>> {
    std::fs::create_dir_all(dir)?;
    Ok(match kind {
        "redb" => Box::new(redb_store::RedbStore::open(dir, false)?),
        "redb-quickrepair" => Box::new(redb_store::RedbStore::open(dir, true)?),
        "fjall" => Box::new(fjall_store::FjallStore::open(dir, false)?),
        "fjall-kvsep" => Box::new(fjall_store::FjallStore::open(dir, true)?),
        "sqlite-full" => Box::new(sqlite_store::SqliteStore::open(dir, "FULL")?),
        "sqlite-normal" => Box::new(sqlite_store::SqliteStore::open(dir, "NORMAL")?),
        _ => return Err(format!("unknown candidate {kind}").into()),
    })
}

mod redb_store {
    use super::*;
    use redb::{ReadableDatabase, ReadableTable, TableDefinition};

    const STREAMS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("streams");
    const ENTRIES: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("entries");
    const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

    pub struct RedbStore {
        db: redb::Database,
        quick_repair: bool,
    }

    impl RedbStore {
        pub fn open(dir: &Path, quick_repair: bool) -> Result<Self> {
            // Database::create opens an existing file (running the crash repair if needed).
            let mut b = redb::Database::builder();
            if let Some(mib) = std::env::var("STORE_BENCH_REDB_CACHE_MIB")
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
            {
                b.set_cache_size(mib * MIB); // default: 1 GiB
            }
            let db = b.create(dir.join("store.redb"))?;
            let mut txn = db.begin_write()?;
            txn.set_quick_repair(quick_repair);
            txn.open_table(STREAMS)?;
            txn.open_table(ENTRIES)?;
            txn.open_table(META)?;
            txn.commit()?;
            Ok(RedbStore { db, quick_repair })
        }
    }

    impl Store for RedbStore {
        fn write_batch(&mut self, batch: &Batch) -> Result<WriteOutcome> {
            let mut txn = self.db.begin_write()?; // default durability: Immediate
            txn.set_quick_repair(self.quick_repair);
            let mut out = WriteOutcome::default();
            let mut changed = false;
            {
                let mut streams = txn.open_table(STREAMS)?;
                let mut entries = txn.open_table(ENTRIES)?;
                let mut meta = txn.open_table(META)?;
                for sw in batch {
                    let key = sw.path.key();
                    let existing = streams
                        .get(key.as_slice())?
                        .map(|v| StreamState::decode(v.value()));
                    let (mut st, mut dirty) = match existing {
                        Some(st) => (st, false),
                        None => {
                            let id = meta.get("next_id")?.map(|v| v.value()).unwrap_or(0);
                            meta.insert("next_id", id + 1)?;
                            (
                                StreamState {
                                    id,
                                    terminal: None,
                                    count: 0,
                                },
                                true,
                            )
                        }
                    };
                    if sw.terminal.is_some() && st.terminal != sw.terminal {
                        st.terminal = sw.terminal;
                        dirty = true;
                    }
                    for (idx, data) in &sw.entries {
                        if entries.get((st.id, *idx))?.is_some() {
                            out.dup_entries += 1;
                            continue;
                        }
                        entries.insert((st.id, *idx), data.as_slice())?;
                        st.count += 1;
                        out.new_entries += 1;
                        dirty = true;
                    }
                    if dirty {
                        streams.insert(key.as_slice(), st.encode().as_slice())?;
                        changed = true;
                    }
                }
            }
            if changed {
                txn.commit()?;
                out.committed = true;
            } else {
                txn.abort()?;
            }
            Ok(out)
        }

        fn stream_state(&self, path: &StreamPath) -> Result<Option<StreamState>> {
            let r = self.db.begin_read()?;
            let t = r.open_table(STREAMS)?;
            Ok(t.get(path.key().as_slice())?
                .map(|v| StreamState::decode(v.value())))
        }

        fn scan(&self, id: u64, from: u64, f: &mut dyn FnMut(u64, &[u8])) -> Result<()> {
            let r = self.db.begin_read()?;
            let t = r.open_table(ENTRIES)?;
            for kv in t.range((id, from)..=(id, u64::MAX))? {
                let (k, v) = kv?;
                f(k.value().1, v.value());
            }
            Ok(())
        }

        fn tail(&self, id: u64, k: usize, f: &mut dyn FnMut(u64, &[u8])) -> Result<()> {
            let r = self.db.begin_read()?;
            let t = r.open_table(ENTRIES)?;
            for kv in t.range((id, 0)..=(id, u64::MAX))?.rev().take(k) {
                let (k, v) = kv?;
                f(k.value().1, v.value());
            }
            Ok(())
        }

        fn list_prefix(&self, project: &str, prefix: &str) -> Result<Vec<Vec<u8>>> {
            let (lo, hi) = prefix_bounds(project, prefix);
            let r = self.db.begin_read()?;
            let t = r.open_table(STREAMS)?;
            let mut out = Vec::new();
            for kv in t.range::<&[u8]>(lo.as_slice()..hi.as_slice())? {
                out.push(kv?.0.value().to_vec());
            }
            Ok(out)
        }
    }
}

mod fjall_store {
    use super::*;
    use fjall::{Database, Keyspace, KeyspaceCreateOptions, KvSeparationOptions, PersistMode};

    pub struct FjallStore {
        db: Database,
        streams: Keyspace,
        entries: Keyspace,
        meta: Keyspace,
    }

    impl FjallStore {
        pub fn open(dir: &Path, kv_separation: bool) -> Result<Self> {
            let db = Database::builder(dir.join("fjall")).open()?;
            let streams = db.keyspace("streams", KeyspaceCreateOptions::default)?;
            let meta = db.keyspace("meta", KeyspaceCreateOptions::default)?;
            let entries = db.keyspace("entries", || {
                let o = KeyspaceCreateOptions::default();
                if kv_separation {
                    o.with_kv_separation(Some(KvSeparationOptions::default()))
                } else {
                    o
                }
            })?;
            Ok(FjallStore {
                db,
                streams,
                entries,
                meta,
            })
        }
    }

    impl Store for FjallStore {
        fn write_batch(&mut self, batch: &Batch) -> Result<WriteOutcome> {
            // Single writer assumed (the collector funnels commits through one task), so
            // read-check-then-batch-write is race free without fjall's transactional layer.
            let mut wb = self.db.batch().durability(Some(PersistMode::SyncAll));
            let mut out = WriteOutcome::default();
            let mut next_id: Option<u64> = None;
            let mut seen: HashSet<[u8; 16]> = HashSet::new();
            for sw in batch {
                let key = sw.path.key();
                let (mut st, mut dirty) = match self.streams.get(&key)? {
                    Some(v) => (StreamState::decode(&v), false),
                    None => {
                        let id = match next_id {
                            Some(id) => id,
                            None => self
                                .meta
                                .get("next_id")?
                                .map(|v| u64::from_le_bytes((*v).try_into().unwrap()))
                                .unwrap_or(0),
                        };
                        next_id = Some(id + 1);
                        (
                            StreamState {
                                id,
                                terminal: None,
                                count: 0,
                            },
                            true,
                        )
                    }
                };
                if sw.terminal.is_some() && st.terminal != sw.terminal {
                    st.terminal = sw.terminal;
                    dirty = true;
                }
                for (idx, data) in &sw.entries {
                    let k = entry_key(st.id, *idx);
                    if seen.contains(&k) || self.entries.contains_key(k)? {
                        out.dup_entries += 1;
                        continue;
                    }
                    seen.insert(k);
                    wb.insert(&self.entries, k.to_vec(), data.as_slice());
                    st.count += 1;
                    out.new_entries += 1;
                    dirty = true;
                }
                if dirty {
                    wb.insert(&self.streams, key, st.encode().to_vec());
                }
            }
            if let Some(id) = next_id {
                wb.insert(&self.meta, "next_id", id.to_le_bytes().to_vec());
            }
            if !wb.is_empty() {
                wb.commit()?;
                out.committed = true;
            }
            Ok(out)
        }

        fn stream_state(&self, path: &StreamPath) -> Result<Option<StreamState>> {
            Ok(self
                .streams
                .get(path.key())?
                .map(|v| StreamState::decode(&v)))
        }

        fn scan(&self, id: u64, from: u64, f: &mut dyn FnMut(u64, &[u8])) -> Result<()> {
            for g in self
                .entries
                .range(entry_key(id, from)..=entry_key(id, u64::MAX))
            {
                let (k, v) = g.into_inner()?;
                f(u64::from_be_bytes(k[8..16].try_into().unwrap()), &v);
            }
            Ok(())
        }

        fn tail(&self, id: u64, k: usize, f: &mut dyn FnMut(u64, &[u8])) -> Result<()> {
            for g in self
                .entries
                .range(entry_key(id, 0)..=entry_key(id, u64::MAX))
                .rev()
                .take(k)
            {
                let (k, v) = g.into_inner()?;
                f(u64::from_be_bytes(k[8..16].try_into().unwrap()), &v);
            }
            Ok(())
        }

        fn list_prefix(&self, project: &str, prefix: &str) -> Result<Vec<Vec<u8>>> {
            let (lo, hi) = prefix_bounds(project, prefix);
            let mut out = Vec::new();
            for g in self.streams.range(lo..hi) {
                out.push(g.key()?.to_vec());
            }
            Ok(out)
        }
    }
}

mod sqlite_store {
    use super::*;
    use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

    pub struct SqliteStore {
        conn: Connection,
    }

    impl SqliteStore {
        pub fn open(dir: &Path, synchronous: &str) -> Result<Self> {
            let conn = Connection::open(dir.join("store.sqlite"))?;
            let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
            assert_eq!(mode.to_lowercase(), "wal");
            conn.execute_batch(&format!(
                "PRAGMA synchronous={synchronous};
                 CREATE TABLE IF NOT EXISTS streams(
                     id INTEGER PRIMARY KEY, path BLOB NOT NULL UNIQUE,
                     terminal INTEGER, count INTEGER NOT NULL);
                 CREATE TABLE IF NOT EXISTS entries(
                     stream_id INTEGER NOT NULL, idx INTEGER NOT NULL, data BLOB NOT NULL,
                     UNIQUE(stream_id, idx));"
            ))?;
            Ok(SqliteStore { conn })
        }
    }

    impl Store for SqliteStore {
        fn write_batch(&mut self, batch: &Batch) -> Result<WriteOutcome> {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut out = WriteOutcome::default();
            let mut changed = false;
            {
                let mut get_stream =
                    tx.prepare_cached("SELECT id, terminal, count FROM streams WHERE path = ?1")?;
                let mut new_stream = tx.prepare_cached(
                    "INSERT INTO streams(path, terminal, count) VALUES (?1, NULL, 0)",
                )?;
                let mut put = tx.prepare_cached(
                    "INSERT OR IGNORE INTO entries(stream_id, idx, data) VALUES (?1, ?2, ?3)",
                )?;
                let mut upd = tx
                    .prepare_cached("UPDATE streams SET terminal = ?2, count = ?3 WHERE id = ?1")?;
                for sw in batch {
                    let key = sw.path.key();
                    let existing = get_stream
                        .query_row(params![key], |r| {
                            Ok(StreamState {
                                id: r.get::<_, i64>(0)? as u64,
                                terminal: r.get::<_, Option<i64>>(1)?.map(|t| t as u64),
                                count: r.get::<_, i64>(2)? as u64,
                            })
                        })
                        .optional()?;
                    let (mut st, mut dirty) = match existing {
                        Some(st) => (st, false),
                        None => {
                            new_stream.execute(params![key])?;
                            changed = true;
                            (
                                StreamState {
                                    id: tx.last_insert_rowid() as u64,
                                    terminal: None,
                                    count: 0,
                                },
                                false,
                            )
                        }
                    };
                    if sw.terminal.is_some() && st.terminal != sw.terminal {
                        st.terminal = sw.terminal;
                        dirty = true;
                    }
                    for (idx, data) in &sw.entries {
                        if put.execute(params![st.id as i64, *idx as i64, data.as_slice()])? == 1 {
                            st.count += 1;
                            out.new_entries += 1;
                            dirty = true;
                        } else {
                            out.dup_entries += 1;
                        }
                    }
                    if dirty {
                        upd.execute(params![
                            st.id as i64,
                            st.terminal.map(|t| t as i64),
                            st.count as i64
                        ])?;
                        changed = true;
                    }
                }
            }
            if changed {
                tx.commit()?;
                out.committed = true;
            } else {
                tx.rollback()?;
            }
            Ok(out)
        }

        fn stream_state(&self, path: &StreamPath) -> Result<Option<StreamState>> {
            Ok(self
                .conn
                .query_row(
                    "SELECT id, terminal, count FROM streams WHERE path = ?1",
                    params![path.key()],
                    |r| {
                        Ok(StreamState {
                            id: r.get::<_, i64>(0)? as u64,
                            terminal: r.get::<_, Option<i64>>(1)?.map(|t| t as u64),
                            count: r.get::<_, i64>(2)? as u64,
                        })
                    },
                )
                .optional()?)
        }

        fn scan(&self, id: u64, from: u64, f: &mut dyn FnMut(u64, &[u8])) -> Result<()> {
            let mut st = self.conn.prepare_cached(
                "SELECT idx, data FROM entries WHERE stream_id = ?1 AND idx >= ?2 ORDER BY idx",
            )?;
            let mut rows = st.query(params![id as i64, from as i64])?;
            while let Some(r) = rows.next()? {
                f(r.get::<_, i64>(0)? as u64, r.get_ref(1)?.as_blob()?);
            }
            Ok(())
        }

        fn tail(&self, id: u64, k: usize, f: &mut dyn FnMut(u64, &[u8])) -> Result<()> {
            let mut st = self.conn.prepare_cached(
                "SELECT idx, data FROM entries WHERE stream_id = ?1 ORDER BY idx DESC LIMIT ?2",
            )?;
            let mut rows = st.query(params![id as i64, k as i64])?;
            while let Some(r) = rows.next()? {
                f(r.get::<_, i64>(0)? as u64, r.get_ref(1)?.as_blob()?);
            }
            Ok(())
        }

        fn list_prefix(&self, project: &str, prefix: &str) -> Result<Vec<Vec<u8>>> {
            let (lo, hi) = prefix_bounds(project, prefix);
            let mut st = self.conn.prepare_cached(
                "SELECT path FROM streams WHERE path >= ?1 AND path < ?2 ORDER BY path",
            )?;
            let rows = st.query_map(params![lo, hi], |r| r.get::<_, Vec<u8>>(0))?;
            Ok(rows.collect::<std::result::Result<_, _>>()?)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers: files, page cache, memory, stats

fn walk_files(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => walk_files(&p, out),
                Ok(t) if t.is_file() => out.push(p),
                _ => {}
            }
        }
    }
}

/// (allocated bytes, apparent bytes) of everything under `dir`.
fn disk_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut files = Vec::new();
    walk_files(dir, &mut files);
    files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .fold((0, 0), |(a, b), m| (a + m.blocks() * 512, b + m.len()))
}

/// Make the next open/read cold: write back and evict this store's files from the page cache
/// (per file, no root needed; unlike drop_caches it does not disturb other processes).
fn evict_from_page_cache(dir: &Path) {
    use std::os::fd::AsRawFd;
    let mut files = Vec::new();
    walk_files(dir, &mut files);
    for f in files {
        if let Ok(fh) = std::fs::File::open(&f) {
            let _ = fh.sync_all();
            unsafe {
                libc::posix_fadvise(fh.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
            }
        }
    }
}

/// Raw-file baseline measured in the same time window as the store (fsync latency on a
/// shared VM disk drifts over minutes): append + fdatasync, i.e. the floor any store pays
/// for a durable commit. Each store commit is followed by one probe commit of the same size.
struct Probe {
    f: std::fs::File,
    path: PathBuf,
    len: u64,
}

impl Probe {
    fn new(path: PathBuf) -> Result<Self> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)?;
        Ok(Probe { f, path, len: 0 })
    }
    fn append_sync(&mut self, data: &[u8]) -> Result<Duration> {
        use std::io::{Seek, SeekFrom};
        if self.len > 64 * MIB as u64 {
            self.f.set_len(0)?;
            self.f.seek(SeekFrom::Start(0))?;
            self.len = 0;
        }
        let t = Instant::now();
        self.f.write_all(data)?;
        self.f.sync_data()?;
        let e = t.elapsed();
        self.len += data.len() as u64;
        Ok(e)
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// CPU seconds (user + system) of the whole process (all threads) or of the calling thread.
fn cpu_secs(who: libc::c_int) -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn fs_type(dir: &Path) -> String {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(dir.as_os_str().as_bytes()).unwrap();
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut s) } != 0 {
        return "unknown".into();
    }
    match s.f_type as u64 {
        0xEF53 => "ext2/3/4".into(),
        0x58465342 => "xfs".into(),
        0x9123683E => "btrfs".into(),
        0x01021994 => "tmpfs (fsync is meaningless!)".into(),
        0x794c7630 => "overlayfs".into(),
        0x2fc12fc1 => "zfs".into(),
        t => format!("0x{t:x}"),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn report(key: &str, value: impl std::fmt::Display) {
    println!("RESULT {key} {value}");
    let _ = std::io::stdout().flush();
}

fn log(kind: &str, msg: impl std::fmt::Display) {
    eprintln!("  [{kind}] {msg}");
}

/// Entry size in the throughput case (64 KiB unless STORE_BENCH_ENTRY_BYTES is set).
fn big_entry() -> usize {
    std::env::var("STORE_BENCH_ENTRY_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64 * KIB)
        .max(HEADER)
}

fn big_mib() -> usize {
    std::env::var("STORE_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
}

fn payloads() -> Payloads {
    Payloads::new(
        std::env::var("STORE_BENCH_PAYLOAD")
            .map(|v| v == "random")
            .unwrap_or(false),
    )
}

fn ensure(cond: bool, what: impl std::fmt::Display) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(format!("CHECK FAILED: {what}").into())
    }
}

// ---------------------------------------------------------------------------------------------
// Child: the measured run of one candidate

fn child_run(kind: &str, dir: &Path) -> Result<()> {
    let p = payloads();
    let n_big = (big_mib() * MIB / big_entry()) as u64;
    let n_big_batches = (n_big as usize).div_ceil(BIG_BATCH / big_entry());
    let mut raw_bytes: u64 = 0;

    let mut s = open_store(kind, dir)?;
    let mut probe = Probe::new(dir.with_extension("probe"))?;
    let probe_big = vec![b'p'; BIG_BATCH];
    let probe_small = vec![b'p'; 300];

    // (a) throughput: one stream of big_mib MiB in 8 MiB bundles of 64 KiB entries,
    // one durable commit per bundle. Payload generation is outside the timed region.
    let mut commit_times = Vec::new();
    let mut raw_time = Duration::ZERO;
    let (cpu0, mut probe_cpu) = (cpu_secs(libc::RUSAGE_SELF), 0.0);
    for b in 0..n_big_batches {
        let batch = big_batch(&p, b, n_big);
        let t = Instant::now();
        let o = s.write_batch(&batch)?;
        commit_times.push(t.elapsed());
        ensure(
            o.committed && o.new_entries == batch[0].entries.len(),
            "big batch stored",
        )?;
        let c = cpu_secs(libc::RUSAGE_THREAD);
        raw_time += probe.append_sync(&probe_big[..batch[0].entries.len() * big_entry()])?;
        probe_cpu += cpu_secs(libc::RUSAGE_THREAD) - c;
    }
    // CPU of the store (all its threads) during the throughput case, probe excluded:
    // on a busy 2-core box this is steadier than wall time.
    report(
        "cpu_write_s",
        format!("{:.2}", cpu_secs(libc::RUSAGE_SELF) - cpu0 - probe_cpu),
    );
    report(
        "raw_write_mibps",
        format!(
            "{:.0}",
            (n_big as usize * big_entry()) as f64 / MIB as f64 / raw_time.as_secs_f64()
        ),
    );
    let total: Duration = commit_times.iter().sum();
    raw_bytes += n_big * big_entry() as u64;
    let big_state = s.stream_state(&big_stream())?.ok_or("big stream missing")?;
    ensure(
        big_state.count == n_big && big_state.complete(),
        "big stream complete",
    )?;
    commit_times.sort();
    let mibps = (n_big as usize * big_entry()) as f64 / MIB as f64 / total.as_secs_f64();
    report("write_mibps", format!("{mibps:.1}"));
    report("write_secs", format!("{:.2}", total.as_secs_f64()));
    report(
        "big_commit_p50_ms",
        format!("{:.1}", ms(percentile(&commit_times, 0.5))),
    );
    report(
        "big_commit_max_ms",
        format!("{:.1}", ms(*commit_times.last().unwrap())),
    );
    log(
        kind,
        format!(
            "(a) {} MiB in {:.2}s = {mibps:.1} MiB/s (raw append+fdatasync in the same window: {:.0} MiB/s)",
            big_mib(),
            total.as_secs_f64(),
            (n_big as usize * big_entry()) as f64 / MIB as f64 / raw_time.as_secs_f64()
        ),
    );

    // (b) latency: 1000 durable commits of 3 entries (~300 B) each, round-robin over 20 streams.
    let mut lat = Vec::with_capacity(LAT_BATCHES);
    let mut raw_lat = Vec::with_capacity(LAT_BATCHES);
    for b in 0..LAT_BATCHES {
        let batch = small_batch(&p, b);
        raw_bytes += batch[0]
            .entries
            .iter()
            .map(|e| e.1.len() as u64)
            .sum::<u64>();
        let t = Instant::now();
        let o = s.write_batch(&batch)?;
        lat.push(t.elapsed());
        ensure(
            o.committed && o.new_entries == LAT_ENTRIES,
            "small batch stored",
        )?;
        raw_lat.push(probe.append_sync(&probe_small)?);
    }
    drop(probe);
    raw_lat.sort();
    report(
        "raw_small_p50_ms",
        format!("{:.2}", ms(percentile(&raw_lat, 0.5))),
    );
    report(
        "raw_small_p99_ms",
        format!("{:.2}", ms(percentile(&raw_lat, 0.99))),
    );
    let lat_total: Duration = lat.iter().sum();
    lat.sort();
    report("small_p50_ms", format!("{:.2}", ms(percentile(&lat, 0.5))));
    report("small_p99_ms", format!("{:.2}", ms(percentile(&lat, 0.99))));
    report("small_max_ms", format!("{:.2}", ms(*lat.last().unwrap())));
    log(
        kind,
        format!(
            "(b) small commits p50 {:.2} ms p99 {:.2} ms ({:.0} commits/s); raw append+fdatasync p50 {:.2} ms",
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99)),
            LAT_BATCHES as f64 / lat_total.as_secs_f64(),
            ms(percentile(&raw_lat, 0.5))
        ),
    );

    // (c) dedup: re-send an already-stored 8 MiB bundle and an already-stored 3-entry bundle.
    let again = big_batch(&p, n_big_batches / 2, n_big);
    let t = Instant::now();
    let o = s.write_batch(&again)?;
    let dedup_big = t.elapsed();
    ensure(
        o.new_entries == 0 && o.dup_entries == again[0].entries.len() && !o.committed,
        "big dedup",
    )?;
    let again = small_batch(&p, 500);
    let t = Instant::now();
    let o = s.write_batch(&again)?;
    let dedup_small = t.elapsed();
    ensure(
        o.new_entries == 0 && o.dup_entries == LAT_ENTRIES && !o.committed,
        "small dedup",
    )?;
    ensure(
        s.stream_state(&big_stream())?.unwrap().count == n_big,
        "count unchanged by dedup",
    )?;
    report("dedup_big_ms", format!("{:.2}", ms(dedup_big)));
    report("dedup_small_ms", format!("{:.3}", ms(dedup_small)));
    log(
        kind,
        format!(
            "(c) dedup 8 MiB bundle {:.2} ms, 3-entry bundle {:.3} ms",
            ms(dedup_big),
            ms(dedup_small)
        ),
    );

    // Mixed: out-of-order entries, 1..20 streams per bundle, 100 B..64 KiB, ~10% retried bundles.
    let (mstreams, plan) = mixed_plan();
    let mut mixed_time = Duration::ZERO;
    let mut mixed_bytes = 0u64;
    let (mut dups, mut incomplete_seen) = (0usize, false);
    for (bn, b) in plan.iter().enumerate() {
        let batch = materialize_mixed(&p, &mstreams, b);
        let bytes: u64 = batch
            .iter()
            .flat_map(|w| w.entries.iter())
            .map(|e| e.1.len() as u64)
            .sum();
        let t = Instant::now();
        let o = s.write_batch(&batch)?;
        mixed_time += t.elapsed();
        mixed_bytes += bytes;
        dups += o.dup_entries;
        if bn == plan.len() / 2 {
            // half way through, some stream should know its terminal but not be complete yet
            for (sp, _) in &mstreams {
                if let Some(st) = s.stream_state(sp)? {
                    incomplete_seen |= st.terminal.is_some() && !st.complete();
                }
            }
        }
    }
    for (sp, n) in &mstreams {
        let st = s.stream_state(sp)?.ok_or("mixed stream missing")?;
        ensure(
            st.count == *n && st.complete(),
            format!("mixed stream {} complete", sp.name),
        )?;
        raw_bytes += (0..*n)
            .map(|i| mixed_entry_len(sp.tag(), i).max(HEADER) as u64)
            .sum::<u64>();
    }
    ensure(
        dups > 0 && incomplete_seen,
        "mixed workload exercised dedup and incompleteness",
    )?;
    report(
        "mixed_batches_per_s",
        format!("{:.0}", plan.len() as f64 / mixed_time.as_secs_f64()),
    );
    report(
        "mixed_mibps",
        format!(
            "{:.1}",
            mixed_bytes as f64 / MIB as f64 / mixed_time.as_secs_f64()
        ),
    );
    log(
        kind,
        format!(
            "mixed: {} bundles ({:.1} MiB, {dups} duplicate entries skipped) in {:.2}s, all {} streams complete",
            plan.len(),
            mixed_bytes as f64 / MIB as f64,
            mixed_time.as_secs_f64(),
            mstreams.len()
        ),
    );

    // Clean close, then cold reopen (store files evicted from the page cache).
    let t = Instant::now();
    drop(s);
    report("close_ms", format!("{:.1}", ms(t.elapsed())));
    evict_from_page_cache(dir);
    let t = Instant::now();
    let s = open_store(kind, dir)?;
    let reopen = t.elapsed();
    report("reopen_ms", format!("{:.1}", ms(reopen)));

    // (d) reads: tail (cold), full scan (cold), full scan (warm), tail (warm), list by prefix.
    let st = s
        .stream_state(&big_stream())?
        .ok_or("big stream missing after reopen")?;
    ensure(
        st.count == n_big && st.complete(),
        "big stream complete after reopen",
    )?;
    let tag = big_stream().tag();
    let tail = |s: &dyn Store| -> Result<Duration> {
        let mut got = Vec::new();
        let t = Instant::now();
        s.tail(st.id, 100, &mut |i, d| {
            assert!(check_entry(tag, i, d));
            got.push(i)
        })?;
        let e = t.elapsed();
        ensure(
            got == (n_big - 100..n_big).rev().collect::<Vec<_>>(),
            "tail returns last 100",
        )?;
        Ok(e)
    };
    // Each entry is copied out (as a server building a response would), so zero-copy stores
    // are not credited with never touching the bytes.
    let mut out_buf: Vec<u8> = Vec::with_capacity(big_entry());
    let mut scan = |s: &dyn Store| -> Result<Duration> {
        let (mut next, mut bytes, mut ok) = (0u64, 0usize, true);
        let t = Instant::now();
        s.scan(st.id, 0, &mut |i, d| {
            out_buf.clear();
            out_buf.extend_from_slice(d);
            ok &= i == next && check_entry(tag, i, &out_buf);
            next += 1;
            bytes += d.len();
        })?;
        let e = t.elapsed();
        ensure(
            ok && next == n_big && bytes == n_big as usize * big_entry(),
            "full scan intact",
        )?;
        Ok(e)
    };
    let tail_cold = tail(&*s)?;
    let scan_cold = scan(&*s)?;
    let scan_warm = scan(&*s)?;
    let tail_warm = tail(&*s)?;
    // cat/follow from index N: half the stream
    let mut n_from = 0u64;
    s.scan(st.id, n_big / 2, &mut |_, _| n_from += 1)?;
    ensure(n_from == n_big - n_big / 2, "scan from index N")?;
    let t = Instant::now();
    let listed = s.list_prefix("bench", "small/1")?;
    let list_t = t.elapsed();
    ensure(
        listed.len() == 5 && listed.iter().all(|k| k.starts_with(b"bench\0small/1\0")),
        "list by prefix",
    )?;
    let big_mb = (n_big as usize * big_entry()) as f64 / MIB as f64;
    report(
        "scan_cold_mibps",
        format!("{:.0}", big_mb / scan_cold.as_secs_f64()),
    );
    report(
        "scan_warm_mibps",
        format!("{:.0}", big_mb / scan_warm.as_secs_f64()),
    );
    report("tail_cold_ms", format!("{:.2}", ms(tail_cold)));
    report("tail_warm_ms", format!("{:.2}", ms(tail_warm)));
    report("list_ms", format!("{:.3}", ms(list_t)));
    log(
        kind,
        format!(
            "(d) scan cold {:.0} MiB/s warm {:.0} MiB/s; tail-100 cold {:.2} ms warm {:.2} ms; reopen {:.1} ms",
            big_mb / scan_cold.as_secs_f64(),
            big_mb / scan_warm.as_secs_f64(),
            ms(tail_cold),
            ms(tail_warm),
            ms(reopen)
        ),
    );
    drop(s);

    let (alloc, apparent) = disk_usage(dir);
    report("disk_mib", format!("{:.0}", alloc as f64 / MIB as f64));
    report(
        "disk_apparent_mib",
        format!("{:.0}", apparent as f64 / MIB as f64),
    );
    report("raw_mib", format!("{:.0}", raw_bytes as f64 / MIB as f64));
    report(
        "peak_rss_mib",
        format!("{:.0}", vm_hwm_kib() as f64 / 1024.0),
    );
    report("cpu_total_s", format!("{:.1}", cpu_secs(libc::RUSAGE_SELF)));
    Ok(())
}

// Child: keep writing (8 MiB bundles and 3-entry bundles) and print an ACK after each
// durable commit, until the parent kill -9s us.
fn child_crash_writer(kind: &str, dir: &Path) -> Result<()> {
    let p = payloads();
    let mut s = open_store(kind, dir)?;
    let big = StreamPath::new("crash", "c", "big");
    let small = StreamPath::new("crash", "c", "small");
    let mut nb = s.stream_state(&big)?.map(|x| x.count).unwrap_or(0);
    let mut ns = s.stream_state(&small)?.map(|x| x.count).unwrap_or(0);
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY")?;
    out.flush()?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        let per = (BIG_BATCH / big_entry()) as u64;
        let entries = (nb..nb + per)
            .map(|i| (i, p.entry(big.tag(), i, big_entry())))
            .collect();
        s.write_batch(&vec![StreamWrite {
            path: big.clone(),
            terminal: None,
            entries,
        }])?;
        nb += per;
        writeln!(out, "ACK big {nb}")?;
        out.flush()?;
        for _ in 0..10 {
            let entries = (ns..ns + 3)
                .map(|i| (i, p.entry(small.tag(), i, 100)))
                .collect();
            s.write_batch(&vec![StreamWrite {
                path: small.clone(),
                terminal: None,
                entries,
            }])?;
            ns += 3;
            writeln!(out, "ACK small {ns}")?;
            out.flush()?;
        }
    }
    Ok(())
}

// Child: reopen after kill -9 (timed) and check every acknowledged entry is there and the
// per-stream counts agree with the entries actually stored.
fn child_verify(kind: &str, dir: &Path, acked_big: u64, acked_small: u64) -> Result<()> {
    let n_big = (big_mib() * MIB / big_entry()) as u64;
    let t = Instant::now();
    let s = open_store(kind, dir)?;
    let reopen = t.elapsed();
    report("crash_reopen_ms", format!("{:.1}", ms(reopen)));
    report(
        "crash_disk_mib",
        format!("{:.0}", disk_usage(dir).0 as f64 / MIB as f64),
    );
    for (name, acked) in [("big", acked_big), ("small", acked_small)] {
        let sp = StreamPath::new("crash", "c", name);
        let st = s.stream_state(&sp)?.unwrap_or_default();
        ensure(
            st.count >= acked,
            format!("crash/{name}: count {} >= acked {acked}", st.count),
        )?;
        let (mut next, mut ok) = (0u64, true);
        s.scan(st.id, 0, &mut |i, d| {
            ok &= i == next && check_entry(sp.tag(), i, d);
            next += 1;
        })?;
        ensure(
            ok && next == st.count,
            format!(
                "crash/{name}: entries 0..{} intact, stored {next}",
                st.count
            ),
        )?;
    }
    let st = s
        .stream_state(&big_stream())?
        .ok_or("big stream missing after crash")?;
    ensure(st.count == n_big && st.complete(), "pre-crash data intact")?;
    let mut last = None;
    s.tail(st.id, 1, &mut |i, _| last = Some(i))?;
    ensure(last == Some(n_big - 1), "pre-crash tail")?;
    report("crash_ok", "ok");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Parent: orchestrate children, print the table

fn run_child(args: &[&str]) -> Result<(BTreeMap<String, String>, bool)> {
    let out = Command::new(std::env::current_exe()?)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()?;
    let mut m = BTreeMap::new();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(rest) = l.strip_prefix("RESULT ")
            && let Some((k, v)) = rest.split_once(' ')
        {
            m.insert(k.to_string(), v.to_string());
        }
    }
    Ok((m, out.status.success()))
}

/// One crash round: start the writer, let it run `delay`, SIGKILL it, return acked counts.
fn crash_round(kind: &str, dir: &Path, delay: Duration) -> Result<(u64, u64)> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["crash-writer", kind, dir.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut rd = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    rd.read_line(&mut line)?;
    if line.trim() != "READY" {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("crash writer did not start: {line:?}").into());
    }
    std::thread::sleep(delay);
    child.kill()?; // SIGKILL
    child.wait()?;
    let mut rest = String::new();
    rd.read_to_string(&mut rest)?;
    let (mut big, mut small) = (0, 0);
    for l in rest.lines() {
        let mut it = l.split_whitespace();
        match (
            it.next(),
            it.next(),
            it.next().and_then(|v| v.parse::<u64>().ok()),
        ) {
            (Some("ACK"), Some("big"), Some(n)) => big = n,
            (Some("ACK"), Some("small"), Some(n)) => small = n,
            _ => {}
        }
    }
    Ok((big, small))
}

fn parent() -> Result<()> {
    let root = std::env::var("STORE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/store-choice-tmp"));
    let cands: Vec<String> = std::env::var("STORE_BENCH_CANDIDATES")
        .map(|v| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_else(|_| ALL_CANDIDATES.iter().map(|s| s.to_string()).collect());
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let root = root.canonicalize()?;
    let fs = fs_type(&root);
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    eprintln!(
        "store-choice bench: scratch dir {} ({fs}), {cpus} CPUs",
        root.display()
    );
    eprintln!(
        "workload: {} MiB stream in 8 MiB bundles of {} B entries; {LAT_BATCHES} x {LAT_ENTRIES}-entry commits; payload {}",
        big_mib(),
        big_entry(),
        std::env::var("STORE_BENCH_PAYLOAD").unwrap_or_else(|_| "text".into())
    );
    if fs.starts_with("tmpfs") {
        eprintln!(
            "WARNING: scratch dir is on tmpfs, durability numbers are meaningless; set STORE_BENCH_DIR"
        );
    }

    let started = Instant::now();
    let mut results: Vec<(String, BTreeMap<String, String>)> = Vec::new();
    for kind in &cands {
        let dir = root.join(kind);
        let load_before = loadavg();
        eprintln!("== {kind}  (load average {load_before})");
        let t = Instant::now();
        let (mut m, ok) = run_child(&["run", kind, dir.to_str().unwrap()])?;
        if !ok {
            m.insert("error".into(), "run failed".into());
        }
        m.insert(
            "run_secs".into(),
            format!("{:.0}", t.elapsed().as_secs_f64()),
        );
        if ok {
            // Two kill -9 rounds at different points, each followed by a timed cold reopen + check.
            let mut worst_reopen: f64 = 0.0;
            let mut worst_size = String::new();
            let mut crash_ok = true;
            for delay in [Duration::from_millis(700), Duration::from_millis(1600)] {
                match crash_round(kind, &dir, delay) {
                    Ok((b, s)) => {
                        evict_from_page_cache(&dir);
                        let (v, vok) = run_child(&[
                            "verify",
                            kind,
                            dir.to_str().unwrap(),
                            &b.to_string(),
                            &s.to_string(),
                        ])?;
                        crash_ok &= vok && v.get("crash_ok").map(|x| x == "ok").unwrap_or(false);
                        if let Some(r) =
                            v.get("crash_reopen_ms").and_then(|x| x.parse::<f64>().ok())
                            && r >= worst_reopen
                        {
                            worst_reopen = r;
                            worst_size = v.get("crash_disk_mib").cloned().unwrap_or_default();
                        }
                        eprintln!(
                            "  [{kind}] kill -9 after {delay:?}: acked big..{b} small..{s}; reopen of {} MiB store {} ms; {}",
                            v.get("crash_disk_mib").map(String::as_str).unwrap_or("?"),
                            v.get("crash_reopen_ms").map(String::as_str).unwrap_or("?"),
                            if vok {
                                "all acked data present"
                            } else {
                                "VERIFY FAILED"
                            }
                        );
                    }
                    Err(e) => {
                        eprintln!("  [{kind}] crash round failed: {e}");
                        crash_ok = false;
                    }
                }
            }
            m.insert(
                "crash_reopen_ms".into(),
                format!("{worst_reopen:.0} ({worst_size} MiB)"),
            );
            m.insert(
                "crash_ok".into(),
                if crash_ok { "ok".into() } else { "FAIL".into() },
            );
        }
        m.insert("load".into(), format!("{load_before} → {}", loadavg()));
        let _ = std::fs::remove_dir_all(&dir);
        results.push((kind.clone(), m));
    }
    let _ = std::fs::remove_dir_all(&root);

    let g = |m: &BTreeMap<String, String>, k: &str| m.get(k).cloned().unwrap_or_else(|| "-".into());
    println!();
    println!(
        "Store choice: {} MiB stream, {} CPUs, scratch on {fs}, total {:.0}s",
        big_mib(),
        cpus,
        started.elapsed().as_secs_f64()
    );
    println!();
    println!("Writes (every bundle durably committed before it counts as done)");
    println!();
    println!(
        "| candidate | (a) {} MiB write MiB/s [raw file] | 8 MiB commit p50 / max ms | (b) 3-entry commit p50 / p99 ms [raw file] | (c) dedup re-send 8 MiB / 3-entry ms | mixed bundles/s (MiB/s) |",
        big_mib()
    );
    println!("|---|---|---|---|---|---|");
    for (k, m) in &results {
        println!(
            "| {k} | {} [{}] | {} / {} | {} / {} [{} / {}] | {} / {} | {} ({}) |",
            g(m, "write_mibps"),
            g(m, "raw_write_mibps"),
            g(m, "big_commit_p50_ms"),
            g(m, "big_commit_max_ms"),
            g(m, "small_p50_ms"),
            g(m, "small_p99_ms"),
            g(m, "raw_small_p50_ms"),
            g(m, "raw_small_p99_ms"),
            g(m, "dedup_big_ms"),
            g(m, "dedup_small_ms"),
            g(m, "mixed_batches_per_s"),
            g(m, "mixed_mibps"),
        );
    }
    println!();
    println!("Reads, footprint, recovery");
    println!();
    println!(
        "| candidate | (d) full scan MiB/s cold / warm | (d) tail-100 ms cold / warm | list prefix ms | (e) peak RSS MiB | (f) disk MiB (raw data MiB) | (g) reopen ms: clean / after kill -9 (store MiB) | kill -9 check |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (k, m) in &results {
        println!(
            "| {k} | {} / {} | {} / {} | {} | {} | {} ({}) | {} / {} | {} |",
            g(m, "scan_cold_mibps"),
            g(m, "scan_warm_mibps"),
            g(m, "tail_cold_ms"),
            g(m, "tail_warm_ms"),
            g(m, "list_ms"),
            g(m, "peak_rss_mib"),
            g(m, "disk_mib"),
            g(m, "raw_mib"),
            g(m, "reopen_ms"),
            g(m, "crash_reopen_ms"),
            m.get("error").cloned().unwrap_or_else(|| g(m, "crash_ok")),
        );
    }
    println!();
    println!(
        "Run conditions (other jobs share this machine: wall-clock figures move with the load)"
    );
    println!();
    println!(
        "| candidate | wall s (run child) | CPU s: throughput case / whole run child | 1-min load avg before → after |"
    );
    println!("|---|---|---|---|");
    for (k, m) in &results {
        println!(
            "| {k} | {} | {} / {} | {} |",
            g(m, "run_secs"),
            g(m, "cpu_write_s"),
            g(m, "cpu_total_s"),
            g(m, "load")
        );
    }
    if results.iter().any(|(_, m)| m.contains_key("error")) {
        return Err("at least one candidate failed".into());
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let r = match args.get(1).map(String::as_str) {
        Some("run") => child_run(&args[2], Path::new(&args[3])),
        Some("crash-writer") => child_crash_writer(&args[2], Path::new(&args[3])),
        Some("verify") => child_verify(
            &args[2],
            Path::new(&args[3]),
            args[4].parse().unwrap(),
            args[5].parse().unwrap(),
        ),
        _ => parent(),
    };
    if let Err(e) = r {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
