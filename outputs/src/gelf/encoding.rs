//! The encoding layer: turns a message into what goes on the wire.
//!
//! - Packets (UDP): the JSON text, compressed with gzip or zlib or not at all, then, when it
//!   is longer than the chunk size, cut into chunks. A chunk is the 12-byte header (magic
//!   `0x1e 0x0f`, the 8-byte message id, the sequence number from 0, the chunk count) and a
//!   piece of the packet; the chunk size counts the whole datagram, header included. A
//!   message never has more than [`MAX_CHUNKS`] chunks: one that would is shortened to fit
//!   (see [`encode_packet`]).
//! - Streams (TCP, TLS): the JSON text followed by a NUL byte, never compressed.

use std::fmt;
use std::io::Write;
use std::str::FromStr;

use flate2::Compression as Level;
use flate2::write::{GzEncoder, ZlibEncoder};
use serde_json::{Map, Value};

use super::message::{TRUNCATED_FIELD, is_own_field};

/// The two magic bytes that open a chunk.
pub const CHUNK_MAGIC: [u8; 2] = [0x1e, 0x0f];

/// Bytes of a chunk's header: magic, message id, sequence number, count.
pub const CHUNK_HEADER_LEN: usize = 12;

/// Most chunks one message may have (GELF 1.1).
pub const MAX_CHUNKS: usize = 128;

/// Default chunk size: the whole datagram, header included; common receivers read at most
/// 1420 bytes per datagram.
pub const DEFAULT_CHUNK_SIZE: usize = 1420;

/// Smallest chunk size accepted.
pub const MIN_CHUNK_SIZE: usize = 64;

/// Largest chunk size accepted: the largest UDP payload over IPv4.
pub const MAX_CHUNK_SIZE: usize = 65_507;

/// How packets are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// gzip (RFC 1952); the default.
    #[default]
    Gzip,
    /// zlib (RFC 1950).
    Zlib,
    /// None: the JSON text as is.
    None,
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Gzip => "gzip",
            Self::Zlib => "zlib",
            Self::None => "none",
        })
    }
}

impl FromStr for Compression {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "gzip" => Ok(Self::Gzip),
            "zlib" => Ok(Self::Zlib),
            "none" => Ok(Self::None),
            _ => Err(format!(
                "unknown compression {s:?}: expected gzip, zlib or none"
            )),
        }
    }
}

/// Compresses `data` as `c` says.
pub fn compress(data: &[u8], c: Compression) -> Vec<u8> {
    // Writing to a Vec cannot fail; an error here would be a bug in the encoder.
    fn finish<W: Write>(
        mut w: W,
        data: &[u8],
        done: impl FnOnce(W) -> std::io::Result<Vec<u8>>,
    ) -> Vec<u8> {
        w.write_all(data).and_then(|()| done(w)).unwrap_or_default()
    }
    match c {
        Compression::None => data.to_vec(),
        Compression::Gzip => finish(
            GzEncoder::new(Vec::with_capacity(data.len() / 2 + 32), Level::fast()),
            data,
            |w| w.finish(),
        ),
        Compression::Zlib => finish(
            ZlibEncoder::new(Vec::with_capacity(data.len() / 2 + 32), Level::fast()),
            data,
            |w| w.finish(),
        ),
    }
}

/// Cuts `packet` into datagrams of at most `chunk_size` bytes: the packet itself when it
/// fits, else chunks with message id `id`. `None` when it would take more than
/// [`MAX_CHUNKS`] chunks.
pub fn chunk(packet: &[u8], chunk_size: usize, id: [u8; 8]) -> Option<Vec<Vec<u8>>> {
    if packet.len() <= chunk_size {
        return Some(vec![packet.to_vec()]);
    }
    let body = chunk_size.saturating_sub(CHUNK_HEADER_LEN).max(1);
    let count = packet.len().div_ceil(body);
    if count > MAX_CHUNKS {
        return None;
    }
    Some(
        packet
            .chunks(body)
            .enumerate()
            .map(|(i, piece)| {
                let mut d = Vec::with_capacity(CHUNK_HEADER_LEN + piece.len());
                d.extend_from_slice(&CHUNK_MAGIC);
                d.extend_from_slice(&id);
                // Both fit in a byte: count <= MAX_CHUNKS = 128.
                d.push(i as u8);
                d.push(count as u8);
                d.extend_from_slice(piece);
                d
            })
            .collect(),
    )
}

/// A message encoded for UDP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// The datagrams to send, in order.
    pub datagrams: Vec<Vec<u8>>,
    /// Whether the message had to be shortened to fit in [`MAX_CHUNKS`] chunks.
    pub truncated: bool,
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// Even shortened to nothing, the message needs more than [`MAX_CHUNKS`] chunks.
    #[error(
        "the message does not fit in {MAX_CHUNKS} chunks of {chunk_size} bytes even when shortened"
    )]
    TooLarge {
        /// The chunk size in force.
        chunk_size: usize,
    },
}

fn packet_of(msg: &Map<String, Value>, c: Compression) -> Vec<u8> {
    // A map of strings and numbers always serialises.
    let json = serde_json::to_vec(msg).unwrap_or_default();
    compress(&json, c)
}

/// Encodes `msg` for UDP with message id `id`. A message that would need more than
/// [`MAX_CHUNKS`] chunks is shortened: its `short_message` is cut (on a character boundary)
/// to the longest prefix that fits, and it gains [`TRUNCATED_FIELD`], the original length
/// in bytes; if even an empty `short_message` is too long, the fields taken from a JSON line
/// are left out too.
pub fn encode_packet(
    msg: &Map<String, Value>,
    c: Compression,
    chunk_size: usize,
    id: [u8; 8],
) -> Result<Packet, EncodeError> {
    if let Some(datagrams) = chunk(&packet_of(msg, c), chunk_size, id) {
        return Ok(Packet {
            datagrams,
            truncated: false,
        });
    }
    let short = msg
        .get("short_message")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let mut m = msg.clone();
    m.insert(TRUNCATED_FIELD.into(), short.len().into());
    let with_prefix = |m: &mut Map<String, Value>, n: usize| {
        m.insert("short_message".into(), short[..n].into());
        chunk(&packet_of(m, c), chunk_size, id)
    };
    if with_prefix(&mut m, 0).is_none() {
        m.retain(|k, _| is_own_field(k));
        if with_prefix(&mut m, 0).is_none() {
            return Err(EncodeError::TooLarge { chunk_size });
        }
    }
    // Binary search for the longest prefix that fits, on character boundaries.
    let cuts: Vec<usize> = short
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(short.len()))
        .collect();
    let (mut lo, mut hi) = (0usize, cuts.len());
    let mut best = None;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match with_prefix(&mut m, cuts[mid]) {
            Some(d) => {
                best = Some(d);
                lo = mid + 1;
            }
            None => hi = mid,
        }
    }
    match best {
        Some(datagrams) => Ok(Packet {
            datagrams,
            truncated: true,
        }),
        None => Err(EncodeError::TooLarge { chunk_size }),
    }
}

/// Encodes `msg` for a TCP or TLS stream: its JSON text and a NUL byte.
pub fn encode_stream(msg: &Map<String, Value>, out: &mut Vec<u8>) {
    // A map of strings and numbers always serialises; JSON escapes any NUL in it.
    if serde_json::to_writer(&mut *out, msg).is_ok() {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn inflate(p: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match p[0] {
            0x1f => flate2::read::GzDecoder::new(p).read_to_end(&mut out),
            0x78 => flate2::read::ZlibDecoder::new(p).read_to_end(&mut out),
            _ => return p.to_vec(),
        }
        .unwrap();
        out
    }

    fn join(p: &Packet) -> Vec<u8> {
        if p.datagrams.len() == 1 && p.datagrams[0][..2] != CHUNK_MAGIC {
            return p.datagrams[0].clone();
        }
        p.datagrams.iter().flat_map(|d| d[12..].to_vec()).collect()
    }

    fn msg(short: &str) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("version".into(), "1.1".into());
        m.insert("short_message".into(), short.into());
        m.insert("_user".into(), "u".repeat(300).into());
        m
    }

    #[test]
    fn compressions() {
        let data = b"{\"a\":1}".repeat(50);
        for c in [Compression::Gzip, Compression::Zlib, Compression::None] {
            assert_eq!(inflate(&compress(&data, c)), data, "{c}");
            assert_eq!(c.to_string().parse::<Compression>(), Ok(c));
        }
        assert_eq!(compress(b"x", Compression::Gzip)[..2], [0x1f, 0x8b]);
        assert_eq!(compress(b"x", Compression::Zlib)[0], 0x78);
        assert!("lz4".parse::<Compression>().is_err());
    }

    #[test]
    fn chunks() {
        let id = *b"ABCDEFGH";
        assert_eq!(chunk(b"small", 100, id), Some(vec![b"small".to_vec()]));
        let data: Vec<u8> = (0..=255).collect();
        let cs = chunk(&data, 100, id).unwrap();
        assert_eq!(cs.len(), 3);
        assert!(cs.iter().all(|c| c.len() <= 100));
        for (i, c) in cs.iter().enumerate() {
            assert_eq!(c[..2], CHUNK_MAGIC);
            assert_eq!(c[2..10], id);
            assert_eq!((c[10], c[11]), (i as u8, 3));
        }
        let back: Vec<u8> = cs.iter().flat_map(|c| c[12..].to_vec()).collect();
        assert_eq!(back, data);
        // Exactly 128 chunks fit; 129 do not.
        assert_eq!(chunk(&vec![0; 128 * 88], 100, id).unwrap().len(), 128);
        assert_eq!(chunk(&vec![0; 128 * 88 + 1], 100, id), None);
    }

    #[test]
    fn truncates_what_does_not_fit() {
        // Incompressible text, far more than 128 chunks of 64 bytes.
        let mut x = 12345u64;
        let long: String = (0..40_000)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                char::from(b'a' + ((x >> 33) % 26) as u8)
            })
            .collect();
        let long = format!("é{long}");
        for c in [Compression::Gzip, Compression::None] {
            let p = encode_packet(&msg(&long), c, 64, [1; 8]).unwrap();
            assert!(p.truncated);
            assert!(p.datagrams.len() <= MAX_CHUNKS);
            assert!(p.datagrams.len() >= MAX_CHUNKS - 2, "{}", p.datagrams.len());
            let back: Map<String, Value> = serde_json::from_slice(&inflate(&join(&p))).unwrap();
            assert_eq!(back[TRUNCATED_FIELD], long.len());
            let short = back["short_message"].as_str().unwrap();
            assert!(long.starts_with(short) && short.len() < long.len());
        }
        let p = encode_packet(&msg("short"), Compression::Gzip, 1420, [1; 8]).unwrap();
        assert!(!p.truncated);
        assert_eq!(p.datagrams.len(), 1);
    }

    #[test]
    fn drops_json_fields_before_giving_up() {
        let mut m = msg("hi");
        m.insert("_big".into(), "y".repeat(20_000).into());
        let p = encode_packet(&m, Compression::None, 64, [1; 8]).unwrap();
        let back: Map<String, Value> = serde_json::from_slice(&join(&p)).unwrap();
        assert!(p.truncated && !back.contains_key("_big") && back["short_message"] == "hi");
        m.insert("host".into(), "z".repeat(20_000).into());
        assert_eq!(
            encode_packet(&m, Compression::None, 64, [1; 8]),
            Err(EncodeError::TooLarge { chunk_size: 64 })
        );
    }

    #[test]
    fn stream_frames() {
        let mut out = Vec::new();
        encode_stream(&msg("a\0b"), &mut out);
        assert_eq!(out.last(), Some(&0));
        assert_eq!(out.iter().filter(|b| **b == 0).count(), 1);
        let back: Map<String, Value> = serde_json::from_slice(&out[..out.len() - 1]).unwrap();
        assert_eq!(back["short_message"], "a\0b");
    }
}
