//! Append-only segment files that hold the payload of every stored log entry.
//!
//! Entries are written once, to the end of the active segment, and never rewritten; the
//! SQLite index records where each one lives (`segment`, `offset`, `length`). A segment is
//! closed for writing once it passes a size ([`SEGMENT_SIZE`] by default) and a new one is started.
//!
//! **Crash consistency.** The store appends a bundle's entries, `fdatasync`s the segment and
//! only then commits the index rows that point at them. After a crash, bytes past the last
//! committed row may be present (written but never indexed); nothing refers to them and the
//! next write simply overwrites them. An indexed range is therefore always on disk.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{IoSlice, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// By default a segment takes no more appends once it is this large.
pub const SEGMENT_SIZE: u64 = 1 << 30;

/// Where an entry's bytes live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Segment number.
    pub segment: u32,
    /// Byte offset in the segment.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// The file of segment `id` in `dir`.
pub fn segment_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{id:08}.seg"))
}

fn io(path: &Path, e: std::io::Error) -> String {
    format!("{}: {e}", path.display())
}

/// A failed segment write.
#[derive(Debug)]
pub struct WriteError {
    /// What failed, naming the file.
    pub message: String,
    /// Whether the disk was full (`ENOSPC`, or a quota), which a later retry may get past.
    pub disk_full: bool,
}

impl WriteError {
    fn new(path: &Path, e: std::io::Error) -> Self {
        let disk_full = matches!(
            e.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        );
        Self {
            message: io(path, e),
            disk_full,
        }
    }
}

/// The segment being appended to. Owned by the store's single writer.
#[derive(Debug)]
pub struct Appender {
    dir: PathBuf,
    id: u32,
    file: File,
    /// Size past which a new segment is started.
    segment_size: u64,
    /// Where the next append goes (bytes past it belong to no committed entry).
    end: u64,
    /// Where the appends of the write in progress go.
    next: u64,
    pending: Vec<bytes::Bytes>,
}

impl Appender {
    /// Opens the newest segment in `dir` (creating `dir` and a first segment if needed). The
    /// end is taken from `committed_end`, the end of the last indexed entry of that segment:
    /// anything after it is left over from a write that never committed.
    ///
    /// # Errors
    /// The directory or file cannot be opened.
    pub fn open(
        dir: &Path,
        newest_indexed: Option<(u32, u64)>,
        segment_size: u64,
    ) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let mut newest = 0u32;
        for ent in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
            let ent = ent.map_err(|e| io(dir, e))?;
            let name = ent.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else {
                continue;
            };
            if let Ok(id) = stem.parse::<u32>() {
                newest = newest.max(id);
            }
        }
        let (id, end) = match newest_indexed {
            Some((seg, end)) if seg >= newest => (seg, end),
            // A newer segment than any indexed entry: it was started, then nothing committed.
            _ if newest > 0 => (newest, 0),
            _ => (1, 0),
        };
        let path = segment_path(dir, id);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        sync_dir(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            id,
            file,
            segment_size,
            end,
            next: end,
            pending: Vec::new(),
        })
    }

    /// The active segment.
    pub fn segment(&self) -> u32 {
        self.id
    }

    /// Where the next pushed bytes will go.
    pub fn next_offset(&self) -> u64 {
        self.next
    }

    /// Whether anything was pushed since the last flush.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Reserves room for `data` at [`Appender::next_offset`] in the active segment. Nothing is written until
    /// [`Appender::flush`].
    pub fn push(&mut self, data: bytes::Bytes) {
        self.next += data.len() as u64;
        self.pending.push(data);
    }

    /// Starts a new segment if the active one is full. Call only between writes.
    ///
    /// # Errors
    /// The new segment cannot be created.
    pub fn rotate_if_full(&mut self) -> Result<(), WriteError> {
        if self.end < self.segment_size {
            return Ok(());
        }
        let id = self.id + 1;
        let path = segment_path(&self.dir, id);
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| WriteError::new(&path, e))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| WriteError::new(&self.dir, e))?;
        self.id = id;
        self.file = file;
        self.end = 0;
        self.next = 0;
        Ok(())
    }

    /// Writes what was pushed and makes it durable (`fdatasync`).
    ///
    /// # Errors
    /// The write or the sync failed; the reservations are forgotten and the next write
    /// starts again from the old end.
    pub fn flush(&mut self) -> Result<(), WriteError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let res = self.write_pending();
        self.pending.clear();
        match res {
            Ok(()) => {
                self.end = self.next;
                Ok(())
            }
            Err(e) => {
                self.next = self.end;
                Err(WriteError::new(&segment_path(&self.dir, self.id), e))
            }
        }
    }

    /// Forgets what was pushed (the write that reserved it was abandoned).
    pub fn abandon(&mut self) {
        self.pending.clear();
        self.next = self.end;
    }

    fn write_pending(&mut self) -> std::io::Result<()> {
        self.file.seek(SeekFrom::Start(self.end))?;
        // A few hundred slices per writev keeps the syscall count low for small entries.
        for group in self.pending.chunks(512) {
            let mut slices: Vec<IoSlice<'_>> = group.iter().map(|b| IoSlice::new(b)).collect();
            let mut rest = &mut slices[..];
            while !rest.is_empty() {
                let n = self.file.write_vectored(rest)?;
                if n == 0 {
                    return Err(std::io::ErrorKind::WriteZero.into());
                }
                IoSlice::advance_slices(&mut rest, n);
            }
        }
        self.file.sync_data()
    }
}

fn sync_dir(dir: &Path) -> Result<(), String> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, e))
}

/// Read access to the segments, shared by every reader.
#[derive(Debug)]
pub struct Segments {
    dir: PathBuf,
    open: Mutex<HashMap<u32, Arc<File>>>,
}

impl Segments {
    /// Readers of the segments in `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            open: Mutex::new(HashMap::new()),
        }
    }

    fn file(&self, id: u32) -> Result<Arc<File>, String> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = open.get(&id) {
            return Ok(f.clone());
        }
        let path = segment_path(&self.dir, id);
        let f = Arc::new(File::open(&path).map_err(|e| io(&path, e))?);
        open.insert(id, f.clone());
        Ok(f)
    }

    /// Reads the bytes at `loc`.
    ///
    /// # Errors
    /// The segment is missing or shorter than the index says.
    pub fn read(&self, loc: Location) -> Result<Vec<u8>, String> {
        let f = self.file(loc.segment)?;
        let len = usize::try_from(loc.len).map_err(|_| format!("entry of {} bytes", loc.len))?;
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, loc.offset).map_err(|e| {
            format!(
                "segment {}: {len} bytes at {}: {e}",
                segment_path(&self.dir, loc.segment).display(),
                loc.offset
            )
        })?;
        Ok(buf)
    }
}

impl Segments {
    /// Whether segment `id` is on disk.
    pub fn exists(&self, id: u32) -> bool {
        segment_path(&self.dir, id).exists()
    }

    /// Gives the space of removed entries back to the file system: a segment that holds no
    /// entry any more (`dead`, never the active one) is deleted; in the others the ranges in
    /// `freed` are punched out (`fallocate(PUNCH_HOLE)`: the file keeps its length and its
    /// offsets, so nothing else moves). Best effort: a file system without hole punching keeps
    /// the bytes, and the failure is logged.
    pub fn release(&self, freed: &[Location], dead: &[u32]) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        for id in dead {
            open.remove(id);
            let path = segment_path(&self.dir, *id);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(segment = %path.display(), error = %e, "cannot remove a segment");
            }
        }
        drop(open);
        for loc in freed.iter().filter(|l| !dead.contains(&l.segment)) {
            let path = segment_path(&self.dir, loc.segment);
            let punched = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| io(&path, e))
                .and_then(|f| punch_hole(&f, loc.offset, loc.len).map_err(|e| io(&path, e)));
            if let Err(e) = punched {
                tracing::warn!(error = %e, "cannot give removed entries' space back");
            }
        }
    }
}

/// Deallocates `len` bytes at `offset` of `file`, keeping its size.
fn punch_hole(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    use rustix::fs::{FallocateFlags, fallocate};
    fallocate(
        file,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        offset,
        len,
    )
    .map_err(std::io::Error::from)
}
