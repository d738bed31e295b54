//! Compressed blocks of entries, as both stores keep them.
//!
//! The new entries of one stream in one write are packed back to back into blocks of at most
//! [`BLOCK_RAW_BYTES`], and each block is compressed with zstd (kept raw when that does not
//! make it smaller). An entry is found by its block and its offset and length in the block's
//! raw bytes, so any index can be read without reading the entries before it. The block's
//! CRC-32 covers its *stored* bytes, checked before they are decompressed; each entry keeps
//! the CRC-32 of its own bytes too, checked after.
//!
//! Readers keep the last blocks they decompressed ([`BlockCache`]): reading a stream in order
//! decompresses each block once.
//!
//! **Compressed now or later.** A write may store its larger blocks raw and leave them to be
//! compressed after it is acknowledged ([`Packed::deferred`]; the embedded store does this,
//! see `store::compactor`), so that compressing is off the write's path.
//!
//! **Benchmark switch.** `LOGDOG_COLLECTOR_STORE_CODEC=none` in the collector's environment
//! (read once) stores every new block raw, to measure what compression costs
//! (`bench/collector.py`). Both kinds of block are always read.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// A block's stored bytes are its raw bytes.
pub const CODEC_NONE: i16 = 0;
/// A block's stored bytes are one zstd frame of its raw bytes.
pub const CODEC_ZSTD: i16 = 1;

/// Most raw bytes packed into one block (a single larger entry gets a block of its own).
pub const BLOCK_RAW_BYTES: usize = 1 << 20;

/// The zstd level: the fastest of the standard levels, which already gives most of the gain
/// on log text.
const ZSTD_LEVEL: i32 = 1;

/// Blocks kept decompressed per store, at most.
pub const CACHED_BLOCKS: usize = 16;

/// One packed block.
#[derive(Debug, Clone)]
pub struct Packed {
    /// [`CODEC_NONE`] or [`CODEC_ZSTD`].
    pub codec: i16,
    /// The stored bytes.
    pub data: Vec<u8>,
    /// CRC-32 of `data`.
    pub crc: u32,
    /// Length of the raw bytes.
    pub raw_len: usize,
    /// Where each entry is in the raw bytes: offset and length, in the order given.
    pub ranges: Vec<(usize, usize)>,
    /// Stored raw for now, to be compressed later ([`compress`]).
    pub deferred: bool,
}

/// Blocks smaller than this are always compressed at once: compressing them costs little,
/// and later it would cost a rewrite that gives back less than a file-system block.
pub const DEFER_MIN_BYTES: usize = 64 << 10;

/// Packs `entries` (in order) into blocks of at most [`BLOCK_RAW_BYTES`] raw bytes each (a
/// block holds as many of the entries as it has `ranges`). With `defer`, blocks of at least
/// [`DEFER_MIN_BYTES`] are kept raw and marked [`Packed::deferred`] (unless compression is
/// switched off altogether).
pub fn pack<'a>(entries: impl IntoIterator<Item = &'a [u8]>, defer: bool) -> Vec<Packed> {
    let mut out = Vec::new();
    let mut raw: Vec<u8> = Vec::new();
    let mut ranges = Vec::new();
    for e in entries {
        if !raw.is_empty() && raw.len() + e.len() > BLOCK_RAW_BYTES {
            out.push(seal(
                std::mem::take(&mut raw),
                std::mem::take(&mut ranges),
                defer,
            ));
        }
        ranges.push((raw.len(), e.len()));
        raw.extend_from_slice(e);
    }
    if !ranges.is_empty() {
        out.push(seal(raw, ranges, defer));
    }
    out
}

/// Whether new blocks are compressed: not when the benchmark switch
/// `LOGDOG_COLLECTOR_STORE_CODEC=none` is set (see the module docs).
fn compressing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("LOGDOG_COLLECTOR_STORE_CODEC").is_none_or(|v| v != "none"))
}

fn seal(raw: Vec<u8>, ranges: Vec<(usize, usize)>, defer: bool) -> Packed {
    let raw_len = raw.len();
    if defer && compressing() && raw_len >= DEFER_MIN_BYTES {
        return Packed {
            codec: CODEC_NONE,
            crc: crc32fast::hash(&raw),
            data: raw,
            raw_len,
            ranges,
            deferred: true,
        };
    }
    let (codec, data) = match compress(&raw) {
        Some(z) => (CODEC_ZSTD, z),
        None => (CODEC_NONE, raw),
    };
    Packed {
        codec,
        crc: crc32fast::hash(&data),
        data,
        raw_len,
        ranges,
        deferred: false,
    }
}

/// `raw` compressed, if that makes it smaller (and compression is not switched off).
pub fn compress(raw: &[u8]) -> Option<Vec<u8>> {
    if !compressing() {
        return None;
    }
    zstd::bulk::compress(raw, ZSTD_LEVEL)
        .ok()
        .filter(|z| z.len() < raw.len())
}

/// Checks a block's stored bytes against `crc` and returns its raw bytes.
///
/// # Errors
/// The checksum does not match, the codec is unknown, or the bytes do not decompress to
/// `raw_len` bytes; the message says which.
pub fn unpack(codec: i16, data: Vec<u8>, crc: u32, raw_len: usize) -> Result<Vec<u8>, String> {
    let got = crc32fast::hash(&data);
    if got != crc {
        return Err(format!(
            "block checksum mismatch ({} stored bytes: crc32 {got:08x}, stored {crc:08x})",
            data.len()
        ));
    }
    let raw = match codec {
        CODEC_NONE => data,
        CODEC_ZSTD => zstd::bulk::decompress(&data, raw_len)
            .map_err(|e| format!("block does not decompress: {e}"))?,
        other => return Err(format!("block of unknown codec {other}")),
    };
    if raw.len() != raw_len {
        return Err(format!(
            "block holds {} bytes, {raw_len} expected",
            raw.len()
        ));
    }
    Ok(raw)
}

/// Blocks' raw bytes by id, oldest first.
type Cached = VecDeque<(u64, Arc<Vec<u8>>)>;

/// The last blocks decompressed, by id (block ids are never reused, so an entry is always
/// current). Cheap to clone; clones share the cache.
#[derive(Debug, Clone, Default)]
pub struct BlockCache {
    blocks: Arc<Mutex<Cached>>,
}

impl BlockCache {
    /// A block's raw bytes, if cached.
    pub fn get(&self, id: u64) -> Option<Arc<Vec<u8>>> {
        let blocks = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        blocks
            .iter()
            .find(|(b, _)| *b == id)
            .map(|(_, r)| r.clone())
    }

    /// Keeps a block's raw bytes, dropping the oldest past [`CACHED_BLOCKS`].
    pub fn put(&self, id: u64, raw: Arc<Vec<u8>>) {
        let mut blocks = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        if blocks.iter().any(|(b, _)| *b == id) {
            return;
        }
        if blocks.len() >= CACHED_BLOCKS {
            blocks.pop_front();
        }
        blocks.push_back((id, raw));
    }
}

/// Slices entry bytes out of a block's raw bytes and checks them against their CRC-32.
///
/// # Errors
/// The range lies outside the block, or the checksum does not match.
pub fn entry(raw: &[u8], off: usize, len: usize, crc: u32) -> Result<Vec<u8>, String> {
    let bytes = off
        .checked_add(len)
        .and_then(|end| raw.get(off..end))
        .ok_or_else(|| {
            format!(
                "entry at {off}+{len} lies outside its block of {} bytes",
                raw.len()
            )
        })?;
    let got = crc32fast::hash(bytes);
    if got != crc {
        return Err(format!(
            "checksum mismatch ({len} bytes: crc32 {got:08x}, stored {crc:08x})"
        ));
    }
    Ok(bytes.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_and_unpacks_every_entry() {
        let entries: Vec<Vec<u8>> = (0..5000)
            .map(|i| format!("line {i} of some log text\n").into_bytes())
            .collect();
        let blocks = pack(entries.iter().map(Vec::as_slice), false);
        let mut i = 0;
        for b in &blocks {
            assert_eq!(b.codec, CODEC_ZSTD);
            assert!(b.data.len() < b.raw_len / 3, "log text compresses");
            let raw = unpack(b.codec, b.data.clone(), b.crc, b.raw_len).expect("unpacks");
            for &(off, len) in &b.ranges {
                let want = &entries[i];
                assert_eq!(entry(&raw, off, len, crc32fast::hash(want)).unwrap(), *want);
                i += 1;
            }
        }
        assert_eq!(i, entries.len());
    }

    #[test]
    fn large_writes_are_cut_into_blocks_and_random_bytes_stay_raw() {
        let big = vec![7u8; BLOCK_RAW_BYTES - 10];
        let blocks = pack([big.as_slice(), b"0123456789abcdef".as_slice()], false);
        assert_eq!(blocks.len(), 2);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        let blocks = pack([noise.as_slice()], false);
        assert_eq!(blocks[0].codec, CODEC_NONE);
    }

    #[test]
    fn deferred_blocks_are_raw_unless_small_and_compress_later() {
        let line = b"compiling crate warning: src/main.rs:12:5 ok\n".as_slice();
        let big: Vec<&[u8]> =
            std::iter::repeat_n(line, (DEFER_MIN_BYTES / line.len()) + 1).collect();
        let b = pack(big.iter().copied(), true).remove(0);
        assert!(b.deferred);
        assert_eq!((b.codec, b.data.len()), (CODEC_NONE, b.raw_len));
        assert_eq!(
            unpack(b.codec, b.data.clone(), b.crc, b.raw_len).unwrap(),
            b.data
        );
        let z = compress(&b.data).expect("log text compresses");
        assert!(z.len() < b.raw_len / 3);
        assert_eq!(zstd::bulk::decompress(&z, b.raw_len).unwrap(), b.data);
        // A small block is compressed at once, deferring or not.
        let small = pack([line; 8], true).remove(0);
        assert!(!small.deferred);
        assert_eq!(small.codec, CODEC_ZSTD);
    }

    #[test]
    fn damage_to_stored_bytes_is_found_before_decompressing() {
        let mut b = pack([b"hello hello hello hello hello hello".as_slice()], false).remove(0);
        b.data[0] ^= 1;
        let err = unpack(b.codec, b.data, b.crc, b.raw_len).unwrap_err();
        assert!(err.contains("checksum mismatch"), "{err}");
        assert!(entry(b"abc", 2, 5, 0).unwrap_err().contains("outside"));
    }
}
