//! The durable spool: every bundle for the collector is appended to an on-disk log before it
//! is sent, and discarded only once the collector has acknowledged it.
//!
//! # Layout
//! A spool directory holds a `lock` file (one butler at a time) and segment files
//! `NNNNNNNN.spool`, each a sequence of records:
//!
//! ```text
//! magic "LDS1" | length: u32 LE | crc32(length bytes ++ payload): u32 LE | payload
//! ```
//!
//! The payload is one encoded `logpb.ButlerLogBundle`. A segment takes appends until it passes
//! [`SEGMENT_SIZE`]; it is deleted once it is sealed and every record in it has been
//! settled (acknowledged, refused for good, or skipped as damaged).
//!
//! The uploader ([`crate::grpc::GrpcOutput`]) reads records back in order with
//! [`Spool::next_record`], one at a time, so memory stays bounded whatever the spool's size;
//! while the collector is away the spool grows on disk and the command is not held back.
//! Segments found when a spool is opened are *leftovers* of an earlier butler and are uploaded
//! first, the same way.
//!
//! # What survives what (the fsync policy)
//! - Every record is written (`write(2)`) before the butler counts its bundle as sent, so a
//!   crash of the butler itself (SIGKILL, OOM kill, panic) loses nothing that was spooled:
//!   the kernel has it.
//! - Once a record has waited [`SYNC_INTERVAL`] without being acknowledged, its segment is
//!   `fdatasync`ed (checked every interval). A power cut or kernel crash can therefore lose
//!   the records of about the last two intervals that were not yet acknowledged, plus what
//!   the butler had read but not yet bundled (at most the max buffer age). Records the
//!   collector acknowledges quickly are never forced to disk: they are deleted first, which
//!   keeps the spool cheap when all is well.
//! - A torn record (power cut mid-write) or a corrupt one is skipped and counted by the
//!   reader, which resynchronises on the next valid record; it never stops the recovery.
//!
//! # A full disk
//! When a record cannot be written because the disk is full, the spool says so loudly and
//! the caller waits and tries again: backpressure reaches the command through its pipes,
//! and nothing is dropped.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// A segment takes no more records once it is this large.
pub const SEGMENT_SIZE: u64 = 64 * 1024 * 1024;
/// Largest record payload the reader accepts (bundles are at most 16 MiB).
pub const MAX_RECORD: u32 = 32 * 1024 * 1024;
/// How often segments holding unacknowledged records are forced to disk.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// Start of every record.
pub const MAGIC: [u8; 4] = *b"LDS1";
/// Bytes before a record's payload.
pub const HEADER_LEN: usize = 12;

/// Counters of a spool.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SpoolStats {
    /// Segments an earlier butler left, found at open.
    pub leftover_segments: u64,
    /// Their bytes.
    pub leftover_bytes: u64,
    /// Records appended by this butler.
    pub spooled_records: u64,
    /// Bytes appended (headers included).
    pub spooled_bytes: u64,
    /// Records read back for upload (this butler's and leftovers).
    pub read_records: u64,
    /// Records acknowledged by the collector and discarded.
    pub acked_records: u64,
    /// Records the collector refused for good (or that were not bundles), discarded.
    pub refused_records: u64,
    /// Damaged stretches skipped in the middle of a segment.
    pub corrupt: u64,
    /// Their bytes.
    pub corrupt_bytes: u64,
    /// Segments that ended in a record cut short.
    pub torn: u64,
    /// Their bytes.
    pub torn_bytes: u64,
    /// Bytes still in the spool, not yet settled.
    pub pending_bytes: u64,
    /// Times an append waited for disk space.
    pub full_waits: u64,
    /// Appends that failed for another reason (those bundles were sent unspooled).
    pub write_errors: u64,
    /// `fdatasync` calls made.
    pub syncs: u64,
}

impl SpoolStats {
    /// Whether something was lost in the spool (damaged or refused records).
    pub fn lost_anything(&self) -> bool {
        self.refused_records > 0 || self.corrupt > 0 || self.torn > 0
    }
}

/// A record read back for upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Segment.
    pub segment: u32,
    /// Offset in the segment.
    pub offset: u64,
    /// The payload (an encoded bundle).
    pub payload: Bytes,
}

impl Record {
    /// Bytes the record takes in the spool.
    pub fn spooled_len(&self) -> u64 {
        (HEADER_LEN + self.payload.len()) as u64
    }
}

#[derive(Debug)]
struct Segment {
    /// Bytes of whole records written.
    len: u64,
    /// No more appends go here.
    sealed: bool,
    /// Where the uploader reads next.
    read_to: u64,
    /// Records read and not settled yet.
    inflight: u32,
    /// Bytes settled.
    settled: u64,
    /// Written to since the last fdatasync.
    dirty: bool,
    /// Left by an earlier butler.
    leftover: bool,
    /// A handle for syncing (and reading back).
    file: Option<std::sync::Arc<File>>,
}

#[derive(Debug)]
struct State {
    /// The segment taking appends, if any.
    active: Option<u32>,
    segments: BTreeMap<u32, Segment>,
    next_id: u32,
    /// When each record of this butler not yet settled was appended, by (segment, offset).
    appended_at: BTreeMap<(u32, u64), Instant>,
    stats: SpoolStats,
}

/// An open spool directory (see the module docs).
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    state: Mutex<State>,
    /// Woken on every append and every settled record.
    changed: tokio::sync::Notify,
    _lock: File,
}

fn segment_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{id:08}.spool"))
}

fn segment_id(path: &Path) -> Option<u32> {
    path.file_name()?
        .to_str()?
        .strip_suffix(".spool")?
        .parse()
        .ok()
}

/// Errors opening or writing a spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Another butler holds the spool.
    #[error("spool {0} is in use by another butler")]
    Locked(PathBuf),
    /// The disk is full (the caller should wait and retry).
    #[error("spool {dir}: disk full: {source}")]
    Full {
        /// The spool directory.
        dir: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Any other I/O failure.
    #[error("spool {context}: {source}")]
    Io {
        /// What failed.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn io_err(context: impl std::fmt::Display, source: std::io::Error) -> SpoolError {
    SpoolError::Io {
        context: context.to_string(),
        source,
    }
}

/// The checksum of a record: over its length field and its payload.
pub fn record_crc(len: u32, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// The header of a record holding `payload`.
pub fn record_header(payload: &[u8]) -> [u8; HEADER_LEN] {
    let len = payload.len() as u32;
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&MAGIC);
    h[4..8].copy_from_slice(&len.to_le_bytes());
    h[8..].copy_from_slice(&record_crc(len, payload).to_le_bytes());
    h
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir.display(), e))
}

fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    ) || e.raw_os_error() == Some(libc::EFBIG)
}

impl Spool {
    /// Opens (or creates) the spool in `dir` and locks it. Segments already there are
    /// leftovers of an earlier butler; they come first out of [`Spool::next_record`].
    ///
    /// # Errors
    /// The directory cannot be created or read, or another butler holds it.
    pub fn open(dir: &Path) -> Result<Self, SpoolError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir.display(), e))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_err(lock_path.display(), e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(SpoolError::Locked(dir.to_path_buf()));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(lock_path.display(), e)),
        }
        let mut segments = BTreeMap::new();
        let mut stats = SpoolStats::default();
        for ent in std::fs::read_dir(dir).map_err(|e| io_err(dir.display(), e))? {
            let ent = ent.map_err(|e| io_err(dir.display(), e))?;
            let Some(id) = segment_id(&ent.path()) else {
                continue;
            };
            let len = ent.metadata().map_err(|e| io_err(dir.display(), e))?.len();
            stats.leftover_segments += 1;
            stats.leftover_bytes += len;
            stats.pending_bytes += len;
            segments.insert(
                id,
                Segment {
                    len,
                    sealed: true,
                    read_to: 0,
                    inflight: 0,
                    settled: 0,
                    dirty: false,
                    leftover: true,
                    file: None,
                },
            );
        }
        let next_id = segments
            .keys()
            .next_back()
            .map_or(1, |id: &u32| id.saturating_add(1));
        Ok(Self {
            dir: dir.to_path_buf(),
            state: Mutex::new(State {
                active: None,
                segments,
                next_id,
                appended_at: BTreeMap::new(),
                stats,
            }),
            changed: tokio::sync::Notify::new(),
            _lock: lock,
        })
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until something is appended or settled (register interest before checking).
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Appends one record (blocking I/O: call it off the async threads) and returns where it
    /// went: the `(segment, offset)` that [`Spool::next_record`] will report for it.
    /// `appended` is called with the same before any reader can see the record. On failure
    /// nothing of the record stays in the spool.
    ///
    /// # Errors
    /// [`SpoolError::Full`] when the disk is full; [`SpoolError::Io`] otherwise.
    pub fn append(
        &self,
        payload: &[u8],
        appended: impl FnOnce(u32, u64),
    ) -> Result<(u32, u64), SpoolError> {
        let mut guard = self.lock();
        let st = &mut *guard;
        if let Some(id) = st.active
            && st.segments.get(&id).is_some_and(|s| s.len >= SEGMENT_SIZE)
        {
            self.seal(st);
        }
        let id = match st.active {
            Some(id) => id,
            None => {
                let id = st.next_id;
                let path = segment_path(&self.dir, id);
                let file = OpenOptions::new()
                    .create_new(true)
                    .read(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| self.classify(path.display(), e))?;
                sync_dir(&self.dir)?;
                st.next_id = id.saturating_add(1);
                st.segments.insert(
                    id,
                    Segment {
                        len: 0,
                        sealed: false,
                        read_to: 0,
                        inflight: 0,
                        settled: 0,
                        dirty: false,
                        leftover: false,
                        file: Some(std::sync::Arc::new(file)),
                    },
                );
                st.active = Some(id);
                id
            }
        };
        let Some(seg) = st.segments.get_mut(&id) else {
            return Err(io_err(
                self.dir.display(),
                std::io::ErrorKind::NotFound.into(),
            ));
        };
        let Some(file) = seg.file.clone() else {
            return Err(io_err(
                self.dir.display(),
                std::io::ErrorKind::NotFound.into(),
            ));
        };
        let header = record_header(payload);
        let res = (&*file)
            .write_all(&header)
            .and_then(|()| (&*file).write_all(payload));
        if let Err(e) = res {
            // Leave no partial record behind.
            let _ = file.set_len(seg.len);
            let err = self.classify(segment_path(&self.dir, id).display(), e);
            if matches!(err, SpoolError::Full { .. }) {
                // Seal the segment so that it is deleted once uploaded, freeing its space;
                // the next attempt starts a new one.
                self.seal(st);
            }
            return Err(err);
        }
        let offset = seg.len;
        let bytes = (HEADER_LEN + payload.len()) as u64;
        seg.len += bytes;
        seg.dirty = true;
        st.appended_at.insert((id, offset), Instant::now());
        st.stats.spooled_records += 1;
        st.stats.spooled_bytes += bytes;
        st.stats.pending_bytes += bytes;
        appended(id, offset);
        drop(guard);
        self.changed.notify_waiters();
        Ok((id, offset))
    }

    fn classify(&self, what: impl std::fmt::Display, e: std::io::Error) -> SpoolError {
        if is_disk_full(&e) {
            SpoolError::Full {
                dir: self.dir.clone(),
                source: e,
            }
        } else {
            io_err(what, e)
        }
    }

    /// Seals the active segment (it stays until everything in it is settled).
    fn seal(&self, st: &mut State) {
        if let Some(id) = st.active.take() {
            if let Some(seg) = st.segments.get_mut(&id) {
                seg.sealed = true;
            }
            self.delete_if_done(st, id);
        }
    }

    /// Deletes segment `id` if it is sealed, read to its end and fully settled.
    fn delete_if_done(&self, st: &mut State, id: u32) {
        let done = st
            .segments
            .get(&id)
            .is_some_and(|s| s.sealed && s.read_to >= s.len && s.inflight == 0);
        if !done {
            return;
        }
        if let Some(seg) = st.segments.remove(&id) {
            st.stats.pending_bytes = st.stats.pending_bytes.saturating_sub(seg.len - seg.settled);
        }
        let path = segment_path(&self.dir, id);
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot delete a settled spool segment");
        }
    }

    /// The next record to upload, in spool order (blocking I/O). Damaged stretches on the way
    /// are skipped, counted and logged. `None` when everything written so far has been read.
    ///
    /// # Errors
    /// A segment cannot be opened or read (it is left in place and skipped).
    pub fn next_record(&self) -> Result<Option<Record>, SpoolError> {
        loop {
            let (id, from, len, file) = {
                let mut st = self.lock();
                let Some((&id, seg)) = st.segments.iter_mut().find(|(_, s)| s.read_to < s.len)
                else {
                    return Ok(None);
                };
                let file = match &seg.file {
                    Some(f) => f.clone(),
                    None => {
                        let path = segment_path(&self.dir, id);
                        let f = std::sync::Arc::new(
                            File::open(&path).map_err(|e| io_err(path.display(), e))?,
                        );
                        seg.file = Some(f.clone());
                        f
                    }
                };
                (id, seg.read_to, seg.len, file)
            };
            let mut reader = SpoolReader::new(&*file, len);
            reader.pos = from;
            let item = reader.next_item().map_err(|e| {
                // Unreadable: give up on the rest of this segment (counted as corrupt), but
                // keep its file for a later look.
                let mut guard = self.lock();
                let st = &mut *guard;
                if let Some(seg) = st.segments.get_mut(&id) {
                    let rest = seg.len - seg.read_to;
                    st.stats.corrupt += 1;
                    st.stats.corrupt_bytes += rest;
                    st.stats.pending_bytes = st.stats.pending_bytes.saturating_sub(rest);
                    seg.read_to = seg.len;
                    seg.settled += rest;
                }
                io_err(segment_path(&self.dir, id).display(), e)
            })?;
            let mut st = self.lock();
            let st = &mut *st;
            let Some(seg) = st.segments.get_mut(&id) else {
                continue;
            };
            seg.read_to = reader.pos;
            match item {
                Some(Item::Record { offset, payload }) => {
                    seg.inflight += 1;
                    st.stats.read_records += 1;
                    return Ok(Some(Record {
                        segment: id,
                        offset,
                        payload,
                    }));
                }
                Some(Item::Corrupt { offset, len }) => {
                    tracing::error!(segment = %segment_path(&self.dir, id).display(), offset, len, "corrupt spool record skipped");
                    seg.settled += len;
                    st.stats.corrupt += 1;
                    st.stats.corrupt_bytes += len;
                    st.stats.pending_bytes = st.stats.pending_bytes.saturating_sub(len);
                }
                Some(Item::Torn { offset, len }) => {
                    tracing::warn!(segment = %segment_path(&self.dir, id).display(), offset, len, "torn spool record at the end of a segment skipped");
                    seg.settled += len;
                    st.stats.torn += 1;
                    st.stats.torn_bytes += len;
                    st.stats.pending_bytes = st.stats.pending_bytes.saturating_sub(len);
                }
                None => {}
            }
            self.delete_if_done(st, id);
        }
    }

    /// Settles a record returned by [`Spool::next_record`]: acknowledged by the collector
    /// (`acked`), or refused for good. Either way it is discarded.
    pub fn settle(&self, segment: u32, offset: u64, spooled_len: u64, acked: bool) {
        let mut guard = self.lock();
        let st = &mut *guard;
        st.appended_at.remove(&(segment, offset));
        if acked {
            st.stats.acked_records += 1;
        } else {
            st.stats.refused_records += 1;
        }
        if let Some(seg) = st.segments.get_mut(&segment) {
            seg.inflight = seg.inflight.saturating_sub(1);
            seg.settled += spooled_len;
            st.stats.pending_bytes = st.stats.pending_bytes.saturating_sub(spooled_len);
        }
        self.delete_if_done(st, segment);
        drop(guard);
        self.changed.notify_waiters();
    }

    /// Whether everything written so far has been settled.
    pub fn is_drained(&self) -> bool {
        self.lock()
            .segments
            .values()
            .all(|s| s.read_to >= s.len && s.inflight == 0)
    }

    /// Bytes this butler appended that are not settled yet, and whether leftovers of an
    /// earlier butler remain.
    pub fn backlog(&self) -> (u64, bool) {
        let st = self.lock();
        let mut own = 0;
        let mut leftovers = false;
        for s in st.segments.values() {
            if s.leftover {
                leftovers = true;
            } else {
                own += s.len - s.settled;
            }
        }
        (own, leftovers)
    }

    /// Wakes whoever waits on [`Spool::changed`].
    pub fn wake(&self) {
        self.changed.notify_waiters();
    }

    /// Forces to disk every segment holding a record that has waited [`SYNC_INTERVAL`]
    /// without an acknowledgement. Called every interval.
    ///
    /// # Errors
    /// A sync failed.
    pub fn sync_due(&self) -> Result<(), SpoolError> {
        let due: Vec<(u32, std::sync::Arc<File>)> = {
            let mut guard = self.lock();
            let st = &mut *guard;
            let Some(cutoff) = Instant::now().checked_sub(SYNC_INTERVAL) else {
                return Ok(());
            };
            let mut due = Vec::new();
            for (&id, seg) in st.segments.iter_mut() {
                if !seg.dirty {
                    continue;
                }
                let old = st
                    .appended_at
                    .range((id, 0)..=(id, u64::MAX))
                    .any(|(_, t)| *t <= cutoff);
                if old && let Some(f) = &seg.file {
                    seg.dirty = false;
                    due.push((id, f.clone()));
                }
            }
            st.stats.syncs += due.len() as u64;
            due
        };
        // Outside the lock: appends go on while the disk catches up.
        for (id, f) in due {
            f.sync_data()
                .map_err(|e| self.classify(segment_path(&self.dir, id).display(), e))?;
        }
        Ok(())
    }

    /// No more appends: seals the active segment, so that it is deleted once settled.
    pub fn seal_active(&self) {
        let mut st = self.lock();
        self.seal(&mut st);
    }

    /// Closes the spool: seals the active segment and forces to disk whatever is still
    /// unsettled, for a later butler to upload.
    ///
    /// # Errors
    /// A sync failed.
    pub fn close(&self) -> Result<(), SpoolError> {
        let files: Vec<(u32, std::sync::Arc<File>)> = {
            let mut guard = self.lock();
            let st = &mut *guard;
            self.seal(st);
            st.segments
                .iter_mut()
                .filter(|(_, s)| s.dirty)
                .filter_map(|(&id, s)| {
                    s.dirty = false;
                    s.file.clone().map(|f| (id, f))
                })
                .collect()
        };
        for (id, f) in files {
            f.sync_data()
                .map_err(|e| self.classify(segment_path(&self.dir, id).display(), e))?;
        }
        Ok(())
    }

    /// Counts an append that waited for disk space.
    pub fn count_full_wait(&self) {
        self.lock().stats.full_waits += 1;
    }

    /// Counts an append that failed for another reason.
    pub fn count_write_error(&self) {
        self.lock().stats.write_errors += 1;
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> SpoolStats {
        self.lock().stats
    }
}

/// What a [`SpoolReader`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A valid record's payload, and where it started.
    Record {
        /// Offset of the record in the segment.
        offset: u64,
        /// The payload.
        payload: Bytes,
    },
    /// Bytes that are not a valid record, followed by a valid one: corruption.
    Corrupt {
        /// Where the bad bytes start.
        offset: u64,
        /// How many were skipped.
        len: u64,
    },
    /// Bytes at the end that are not a whole valid record: a write cut short.
    Torn {
        /// Where they start.
        offset: u64,
        /// How many.
        len: u64,
    },
}

/// Reads a spool segment record by record, with bounded memory: one record, plus a small
/// scan buffer when it has to resynchronise after damage.
#[derive(Debug)]
pub struct SpoolReader<F> {
    file: F,
    len: u64,
    pos: u64,
}

/// A source of bytes at offsets: a file, or a buffer in tests.
pub trait ReadAt {
    /// Reads exactly `buf.len()` bytes at `offset`.
    ///
    /// # Errors
    /// Past the end or an I/O failure.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
}

impl ReadAt for &File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        FileExt::read_exact_at(*self, buf, offset)
    }
}

impl ReadAt for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| std::io::ErrorKind::UnexpectedEof)?;
        let end = start
            .checked_add(buf.len())
            .filter(|&e| e <= self.len())
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(&self[start..end]);
        Ok(())
    }
}

impl ReadAt for Vec<u8> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.as_slice().read_exact_at(buf, offset)
    }
}

/// What a search for the next record found.
enum Resync {
    /// A valid record starts here.
    Valid(u64),
    /// No valid record, but one starts here that runs past the end.
    Torn(u64),
    /// Neither.
    Nothing,
}

/// Why a record at some offset is not valid.
enum Bad {
    /// It runs past the end of the data.
    Short,
    /// Its magic, length or checksum is wrong.
    Invalid,
}

impl SpoolReader<File> {
    /// Opens a segment file.
    ///
    /// # Errors
    /// It cannot be opened.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(Self::new(file, len))
    }
}

impl<F: ReadAt> SpoolReader<F> {
    /// A reader over `len` bytes of `file`.
    pub fn new(file: F, len: u64) -> Self {
        Self { file, len, pos: 0 }
    }

    /// The record at `at`, if valid.
    fn record_at(&self, at: u64) -> std::io::Result<Result<Bytes, Bad>> {
        if self.len - at < HEADER_LEN as u64 {
            return Ok(Err(Bad::Short));
        }
        let mut h = [0u8; HEADER_LEN];
        self.file.read_exact_at(&mut h, at)?;
        if h[..4] != MAGIC {
            return Ok(Err(Bad::Invalid));
        }
        let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        let crc = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
        if len > MAX_RECORD {
            return Ok(Err(Bad::Invalid));
        }
        if self.len - at - (HEADER_LEN as u64) < u64::from(len) {
            return Ok(Err(Bad::Short));
        }
        let mut payload = vec![0u8; len as usize];
        self.file
            .read_exact_at(&mut payload, at + HEADER_LEN as u64)?;
        if record_crc(len, &payload) != crc {
            return Ok(Err(Bad::Invalid));
        }
        Ok(Ok(Bytes::from(payload)))
    }

    /// The next offset at or after `from` where a valid record starts; failing that, the
    /// first offset where a record starts that runs past the end (a torn last record).
    fn resync(&self, from: u64) -> std::io::Result<Resync> {
        const CHUNK: usize = 64 * 1024;
        let mut buf = vec![0u8; CHUNK + MAGIC.len() - 1];
        let mut at = from;
        let mut torn = None;
        while at < self.len {
            let n = (self.len - at).min(buf.len() as u64) as usize;
            self.file.read_exact_at(&mut buf[..n], at)?;
            let mut i = 0;
            while let Some(p) = memchr::memmem::find(&buf[i..n], &MAGIC) {
                let cand = at + (i + p) as u64;
                match self.record_at(cand)? {
                    Ok(_) => return Ok(Resync::Valid(cand)),
                    Err(Bad::Short) => {
                        torn.get_or_insert(cand);
                    }
                    Err(Bad::Invalid) => {}
                }
                i += p + 1;
            }
            if n < buf.len() {
                break;
            }
            at += CHUNK as u64;
        }
        Ok(torn.map_or(Resync::Nothing, Resync::Torn))
    }

    /// The next item, or `None` at the end.
    ///
    /// # Errors
    /// An I/O failure reading the file.
    pub fn next_item(&mut self) -> std::io::Result<Option<Item>> {
        if self.pos >= self.len {
            return Ok(None);
        }
        let at = self.pos;
        let bad = match self.record_at(at)? {
            Ok(payload) => {
                self.pos = at + (HEADER_LEN + payload.len()) as u64;
                return Ok(Some(Item::Record {
                    offset: at,
                    payload,
                }));
            }
            Err(bad) => bad,
        };
        match self.resync(at + 1)? {
            // The record found is read again by the next call.
            Resync::Valid(next) | Resync::Torn(next) => {
                self.pos = next;
                Ok(Some(Item::Corrupt {
                    offset: at,
                    len: next - at,
                }))
            }
            Resync::Nothing => {
                self.pos = self.len;
                let len = self.len - at;
                Ok(Some(match bad {
                    Bad::Short => Item::Torn { offset: at, len },
                    Bad::Invalid => Item::Corrupt { offset: at, len },
                }))
            }
        }
    }
}
