//! Compressing, after they are acknowledged, the blocks that writes stored raw.
//!
//! Compressing is most of a write's CPU time (zstd runs at about 400 MB/s on log text), and a
//! butler waits for its acknowledgement. So a write stores its larger blocks raw (durably, as
//! any block; see [`crate::blocks::pack`]) and lists them in the `raw_blocks` table; one
//! thread then compresses them a few at a time ([`BLOCKS_PER_ROUND`]):
//! 1. it reads a listed block and checks it against its checksum, and has it compressed,
//!    outside any lock, by a second thread at the lowest CPU priority (nice 19: compressing
//!    takes only the time that writes and reads leave, and the thread that takes the writer's
//!    lock keeps the usual priority, so writers never wait for a thread that is not given the
//!    CPU);
//! 2. behind the writer, in one transaction, it appends the compressed block to the active
//!    segment (`fdatasync`ed before the commit, like any write), points the block's row at
//!    it, takes it off the list and lists the raw bytes' place in `released`;
//! 3. it waits for the reads that began before the commit (which may have looked up the old
//!    place; see [`Gate`]), punches the raw bytes out of their segment and takes them off
//!    `released` (a stop in between leaves them to the next start, which punches them out
//!    then). Retention gives its places back the same way (`Space::give_back`).
//!
//! A block is readable at every step: its row names either the raw or the compressed bytes,
//! both checked by their checksum. Blocks still listed when the collector stops are
//! compressed after the next start.
//!
//! **Ceiling.** At most [`MAX_DEFERRED_BYTES`] raw bytes wait at once: past that, writes
//! compress their blocks themselves, as they would with no compactor, so a collector that
//! takes more than it can compress slows its writers down instead of filling its disk.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior, params};

use super::{EmbeddedOptions, Space, Writer, list_released, location, open_conn, segment_error};
use crate::blocks::{self, CODEC_NONE, CODEC_ZSTD};
use crate::segments::Location;
use crate::store::StoreError;

/// Raw bytes of blocks that may wait for compression at once (see the module docs).
pub const MAX_DEFERRED_BYTES: u64 = 1 << 30;

/// Blocks compressed per transaction.
pub const BLOCKS_PER_ROUND: usize = 16;

/// How long the compactor waits before trying again after a failure, doubling after each
/// failure in a row up to [`RETRY_MAX`] (a full disk, say, fails every round until room is
/// made).
const RETRY_AFTER: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// The blocks stored raw that wait to be compressed.
pub(super) const RAW_BLOCKS_TABLE: &str = "CREATE TABLE IF NOT EXISTS raw_blocks (
    block_id INTEGER PRIMARY KEY)";

/// Reads hold a [`Pass`] while they look up blocks and read them; whoever punches bytes out
/// of a segment first waits ([`Gate::drain`]) for the reads that began before, so none is
/// left holding the old place of a block. A read never waits here: a lock that made new
/// reads queue behind a waiting punch would make every reader wait for a thread at the
/// lowest CPU priority.
#[derive(Debug, Default)]
pub(super) struct Gate {
    state: Mutex<GateState>,
    /// Signalled when the last read of an epoch ends.
    ended: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    /// The epoch new reads join.
    epoch: u64,
    /// Reads in progress, by the epoch they joined.
    reads: BTreeMap<u64, usize>,
}

/// A read in progress (see [`Gate`]).
#[derive(Debug)]
pub(super) struct Pass<'a> {
    gate: &'a Gate,
    epoch: u64,
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A read begins.
    pub(super) fn enter(&self) -> Pass<'_> {
        let mut st = self.lock();
        let epoch = st.epoch;
        *st.reads.entry(epoch).or_default() += 1;
        Pass { gate: self, epoch }
    }

    /// Waits until every read that began before this call has ended (reads that begin
    /// meanwhile are not waited for, and do not wait).
    pub(super) fn drain(&self) {
        let mut st = self.lock();
        let before = st.epoch;
        st.epoch += 1;
        while st.reads.range(..=before).next().is_some() {
            st = self.ended.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        let mut st = self.gate.lock();
        if let Some(n) = st.reads.get_mut(&self.epoch) {
            *n -= 1;
            if *n == 0 {
                st.reads.remove(&self.epoch);
                self.gate.ended.notify_all();
            }
        }
    }
}

/// What the store and the compactor's thread share.
#[derive(Debug)]
struct Shared {
    /// Raw bytes listed in `raw_blocks` (recounted after each round).
    backlog: AtomicU64,
    /// [`MAX_DEFERRED_BYTES`], or less in tests.
    max: u64,
    state: Mutex<State>,
    /// Wakes the thread.
    wake: Condvar,
    /// Wakes those waiting for the list to empty ([`Compactor::settle`]).
    idle: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// Blocks may have been listed since the thread last found the list empty.
    work: bool,
    /// The store is closing.
    stop: bool,
    /// The thread found the list empty and nothing was listed since.
    idle: bool,
}

/// The compactor of one embedded store: a thread, stopped and joined when this is dropped.
#[derive(Debug)]
pub(super) struct Compactor {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// A listed block after its compression: its id, and where it was with its compressed bytes
/// (`None` if it stays raw: it does not compress, or it is damaged or gone).
type Done = (i64, Option<(Location, Vec<u8>)>);

/// What the thread works with.
struct Work {
    shared: Arc<Shared>,
    squeezer: Option<Squeezer>,
    /// The store's writer and segments, and where the raw places go.
    space: Space,
    conn: Connection,
}

impl Compactor {
    /// Starts the compactor of the store at `db`, as `options` say (without
    /// [`EmbeddedOptions::compact`], no thread is started and the listed blocks stay raw until
    /// a later start: for tests).
    pub(super) fn start(
        db: &std::path::Path,
        space: Space,
        options: &EmbeddedOptions,
    ) -> Result<Self, StoreError> {
        let conn = open_conn(db)?;
        let backlog = listed_bytes(&conn)?;
        let shared = Arc::new(Shared {
            backlog: AtomicU64::new(backlog),
            max: options.max_deferred_bytes,
            state: Mutex::new(State {
                work: true,
                ..State::default()
            }),
            wake: Condvar::new(),
            idle: Condvar::new(),
        });
        let thread = if options.compact {
            let work = Work {
                shared: shared.clone(),
                squeezer: None,
                space,
                conn,
            };
            let spawned = std::thread::Builder::new()
                .name("store-compact".into())
                .spawn(move || work.run())
                .map_err(|e| StoreError::Db(format!("cannot start the compactor: {e}")))?;
            Some(spawned)
        } else {
            None
        };
        Ok(Self { shared, thread })
    }

    /// Whether a write may leave its blocks raw: the list is under its ceiling.
    pub(super) fn accepts(&self) -> bool {
        self.shared.backlog.load(Ordering::Relaxed) < self.shared.max
    }

    /// A write committed `bytes` of raw blocks to the list.
    pub(super) fn listed(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        self.shared.backlog.fetch_add(bytes, Ordering::Relaxed);
        let mut st = self.shared.lock();
        st.work = true;
        st.idle = false;
        self.shared.wake.notify_one();
    }

    /// Raw bytes waiting to be compressed.
    pub(super) fn backlog(&self) -> u64 {
        self.shared.backlog.load(Ordering::Relaxed)
    }

    /// Waits until every listed block is compressed, at most `timeout`; whether they are.
    pub(super) fn settle(&self, timeout: Duration) -> bool {
        if self.thread.is_none() {
            return self.backlog() == 0;
        }
        let st = self.shared.lock();
        let (st, _) = self
            .shared
            .idle
            .wait_timeout_while(st, timeout, |st| !st.idle && !st.stop)
            .unwrap_or_else(|e| e.into_inner());
        st.idle
    }
}

impl Drop for Compactor {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
        self.shared.idle.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Work {
    fn run(mut self) {
        self.squeezer = Squeezer::start();
        let mut failures = 0u32;
        loop {
            {
                let mut st = self.shared.lock();
                while !st.work && !st.stop {
                    st = self.shared.wake.wait(st).unwrap_or_else(|e| e.into_inner());
                }
                if st.stop {
                    return;
                }
                st.work = false;
            }
            loop {
                match self.round() {
                    Ok(0) => break,
                    Ok(_) => failures = 0,
                    Err(e) => {
                        failures += 1;
                        // The 1st, 2nd, 4th, 8th… failure in a row is logged.
                        if failures.is_power_of_two() {
                            tracing::warn!(error = %e, failures, "store: compressing blocks failed; they stay raw and readable, and it is tried again");
                        }
                        let wait = RETRY_AFTER
                            .saturating_mul(1 << (failures - 1).min(6))
                            .min(RETRY_MAX);
                        let st = self.shared.lock();
                        let (mut st, _) = self
                            .shared
                            .wake
                            .wait_timeout_while(st, wait, |st| !st.stop)
                            .unwrap_or_else(|e| e.into_inner());
                        st.work = true;
                        break;
                    }
                }
                if self.shared.lock().stop {
                    return;
                }
            }
            if let Ok(bytes) = listed_bytes(&self.conn) {
                self.shared.backlog.store(bytes, Ordering::Relaxed);
            }
            let mut st = self.shared.lock();
            if !st.work {
                st.idle = true;
                self.shared.idle.notify_all();
            }
        }
    }

    /// Compresses up to [`BLOCKS_PER_ROUND`] listed blocks; how many it took off the list.
    fn round(&mut self) -> Result<usize, StoreError> {
        let listed = self
            .conn
            .prepare_cached(
                "SELECT r.block_id, b.seg, b.off, b.len, b.crc, b.raw_len
                 FROM raw_blocks r LEFT JOIN blocks b ON b.id = r.block_id
                 ORDER BY r.block_id LIMIT ?1",
            )?
            .query_map(params![BLOCKS_PER_ROUND as i64], |r| {
                let id: i64 = r.get(0)?;
                let at = match r.get::<_, Option<u32>>(1)? {
                    Some(_) => Some((
                        location(r, 1)?,
                        r.get::<_, i64>(4)? as u32,
                        r.get::<_, i64>(5)? as usize,
                    )),
                    None => None,
                };
                Ok((id, at))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        if listed.is_empty() {
            return Ok(0);
        }
        // Outside any lock: read, check and compress.
        let compressed: Vec<Done> = listed
            .into_iter()
            .map(|(id, at)| {
                let Some((at, crc, raw_len)) = at else {
                    return (id, None);
                };
                let raw = self
                    .space
                    .segments
                    .read(at)
                    .and_then(|data| blocks::unpack(CODEC_NONE, data, crc, raw_len));
                match raw {
                    Ok(raw) => (id, self.compress(raw).map(|z| (at, z))),
                    Err(e) => {
                        // Left as it is: reads and `verify` report it.
                        tracing::warn!(block = id, error = %e, "store: a block to compress is damaged");
                        (id, None)
                    }
                }
            })
            .collect();
        let count = compressed.len();
        let (moved, listed) = self.commit(compressed)?;
        self.space.give_back(&moved, &[], &listed)?;
        Ok(count)
    }

    /// `raw` compressed (if that makes it smaller), by the squeezer if it runs.
    fn compress(&mut self, raw: Vec<u8>) -> Option<Vec<u8>> {
        match &self.squeezer {
            Some(sq) => match sq.compress(raw) {
                Ok(z) => z,
                Err(raw) => {
                    self.squeezer = None;
                    blocks::compress(&raw)
                }
            },
            None => blocks::compress(&raw),
        }
    }

    /// Behind the writer, in one transaction: appends the compressed blocks, points their rows
    /// at them, takes every block of the round off the list and lists the raw places given up
    /// in `released`; those places, and their ids there.
    fn commit(&self, compressed: Vec<Done>) -> Result<(Vec<Location>, Vec<i64>), StoreError> {
        let mut writer = self.space.writer.lock();
        let Writer { conn, appender } = &mut *writer;
        appender.rotate_if_full().map_err(segment_error)?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut moved = Vec::new();
        let mut listed = Vec::new();
        let res = (|| {
            for (id, packed) in compressed {
                if let Some((old, z)) = packed {
                    // Only if the block is still where it was read (not removed meanwhile).
                    let n = tx
                        .prepare_cached(
                            "UPDATE blocks SET seg = ?2, off = ?3, len = ?4, codec = ?5, crc = ?6
                             WHERE id = ?1 AND seg = ?7 AND off = ?8 AND codec = ?9",
                        )?
                        .execute(params![
                            id,
                            appender.segment(),
                            appender.next_offset() as i64,
                            z.len() as i64,
                            CODEC_ZSTD,
                            i64::from(crc32fast::hash(&z)),
                            old.segment,
                            old.offset as i64,
                            CODEC_NONE
                        ])?;
                    if n == 1 {
                        appender.push(bytes::Bytes::from(z));
                        moved.push(old);
                    }
                }
                tx.prepare_cached("DELETE FROM raw_blocks WHERE block_id = ?1")?
                    .execute(params![id])?;
            }
            listed = list_released(&tx, &moved)?;
            if appender.has_pending() {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO append_end (one, seg, end_off) VALUES (1, ?1, ?2)",
                )?
                .execute(params![appender.segment(), appender.next_offset() as i64])?;
            }
            // The compressed bytes are durable before the rows that point at them commit.
            appender.flush().map_err(segment_error)?;
            Ok::<_, StoreError>(())
        })();
        match res.and_then(|()| tx.commit().map_err(StoreError::from)) {
            Ok(()) => Ok((moved, listed)),
            Err(e) => {
                appender.abandon();
                Err(e)
            }
        }
    }
}

/// A thread at the lowest CPU priority that compresses blocks for the compactor, one at a
/// time; it ends when this is dropped.
struct Squeezer {
    jobs: std::sync::mpsc::SyncSender<Vec<u8>>,
    done: std::sync::mpsc::Receiver<Option<Vec<u8>>>,
}

impl Squeezer {
    /// Starts the thread (`None` if it cannot be: the compactor then compresses itself).
    fn start() -> Option<Self> {
        let (jobs, todo) = std::sync::mpsc::sync_channel::<Vec<u8>>(1);
        let (finished, done) = std::sync::mpsc::sync_channel(1);
        let started = std::thread::Builder::new()
            .name("store-zstd".into())
            .spawn(move || {
                lower_priority();
                for raw in todo {
                    if finished.send(blocks::compress(&raw)).is_err() {
                        return;
                    }
                }
            });
        match started {
            Ok(_) => Some(Self { jobs, done }),
            Err(e) => {
                tracing::warn!(error = %e, "store: cannot start the compression thread");
                None
            }
        }
    }

    /// `raw` compressed, if that makes it smaller; `raw` back if the thread has gone.
    fn compress(&self, raw: Vec<u8>) -> Result<Option<Vec<u8>>, Vec<u8>> {
        self.jobs.send(raw).map_err(|e| e.0)?;
        self.done.recv().map_err(|_| Vec::new())
    }
}

/// Raw bytes of the blocks listed in `raw_blocks`.
fn listed_bytes(conn: &Connection) -> Result<u64, StoreError> {
    let bytes: i64 = conn
        .prepare_cached(
            "SELECT COALESCE(SUM(b.raw_len), 0) FROM raw_blocks r JOIN blocks b ON b.id = r.block_id",
        )?
        .query_row([], |r| r.get(0))?;
    Ok(bytes.max(0) as u64)
}

/// Puts the calling thread at the lowest CPU priority (nice 19), so that compressing uses the
/// time that writes and reads leave. Best effort.
#[allow(unsafe_code)]
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on the calling thread, with no pointers.
    unsafe {
        let tid = libc::gettid();
        if libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19) != 0 {
            tracing::debug!("store: the compactor keeps its CPU priority");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Gate;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn a_drain_waits_for_the_reads_before_it_and_holds_up_no_read() {
        let gate = Gate::default();
        let early = gate.enter();
        std::thread::scope(|s| {
            let (done_tx, done) = mpsc::channel();
            let gate = &gate;
            s.spawn(move || {
                gate.drain();
                done_tx.send(()).expect("send");
            });
            // Once the drain has begun, a new read enters at once and is not waited for.
            while gate.lock().epoch == 0 {
                std::thread::yield_now();
            }
            let late = gate.enter();
            assert!(
                done.try_recv().is_err(),
                "the drain ended before the early read"
            );
            drop(early);
            done.recv_timeout(Duration::from_secs(60))
                .expect("the drain ends once the early read has");
            drop(late);
        });
        assert!(gate.lock().reads.is_empty());
    }
}
