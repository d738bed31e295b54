//! A GELF 1.1 receiver written from the specification, for tests: reassembles chunked
//! datagrams, decompresses packets, splits NUL-terminated streams and checks every message
//! against the specification's rules. Shared by the output's tests and the end-to-end tests.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Read;
use std::net::{TcpListener, UdpSocket};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{Map, Value};

/// A decoded message.
pub type Message = Map<String, Value>;

/// Chunk magic (spec: "Chunked GELF magic bytes 0x1e 0x0f").
pub const MAGIC: [u8; 2] = [0x1e, 0x0f];

/// The chunks of one message: their count and those in so far.
type Parts = (u8, Vec<Option<Vec<u8>>>);

/// Reassembles chunked datagrams.
#[derive(Debug, Default)]
pub struct Dechunker {
    pending: HashMap<[u8; 8], Parts>,
    /// Largest datagram seen.
    pub largest: usize,
}

impl Dechunker {
    /// Takes one datagram; returns a whole packet once all its chunks are in.
    pub fn push(&mut self, d: &[u8]) -> Result<Option<Vec<u8>>, String> {
        self.largest = self.largest.max(d.len());
        if d.len() < 2 || d[..2] != MAGIC {
            return Ok(Some(d.to_vec()));
        }
        if d.len() < 12 {
            return Err(format!(
                "chunk of {} bytes is shorter than its header",
                d.len()
            ));
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&d[2..10]);
        let (seq, count) = (d[10], d[11]);
        if count == 0 || count > 128 {
            return Err(format!("chunk count {count} is not in 1..=128"));
        }
        if seq >= count {
            return Err(format!(
                "sequence number {seq} is not below the count {count}"
            ));
        }
        let entry = self
            .pending
            .entry(id)
            .or_insert_with(|| (count, vec![None; count as usize]));
        if entry.0 != count {
            return Err(format!(
                "chunks of one message disagree on the count: {} and {count}",
                entry.0
            ));
        }
        if entry.1[seq as usize].is_some() {
            return Err(format!("chunk {seq} arrived twice"));
        }
        entry.1[seq as usize] = Some(d[12..].to_vec());
        if entry.1.iter().all(Option::is_some) {
            let (_, parts) = self.pending.remove(&id).unwrap_or_default();
            return Ok(Some(parts.into_iter().flatten().flatten().collect()));
        }
        Ok(None)
    }

    /// Messages still incomplete.
    pub fn incomplete(&self) -> usize {
        self.pending.len()
    }
}

/// Decompresses a packet: gzip (`1f 8b`), zlib (`78 ..`) or plain JSON (`{`).
pub fn decompress(p: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    match p {
        [0x1f, 0x8b, ..] => flate2::read::GzDecoder::new(p)
            .read_to_end(&mut out)
            .map_err(|e| format!("gzip: {e}"))?,
        [0x78, ..] => flate2::read::ZlibDecoder::new(p)
            .read_to_end(&mut out)
            .map_err(|e| format!("zlib: {e}"))?,
        [b'{', ..] => return Ok(p.to_vec()),
        _ => {
            return Err(format!(
                "unknown packet start {:02x?}",
                &p[..p.len().min(2)]
            ));
        }
    };
    Ok(out)
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// Parses one message and checks it against GELF 1.1.
pub fn parse(json: &[u8]) -> Result<Message, String> {
    let m: Message = serde_json::from_slice(json).map_err(|e| format!("not a JSON object: {e}"))?;
    if m.get("version").and_then(Value::as_str) != Some("1.1") {
        return Err(format!("version is not \"1.1\": {m:?}"));
    }
    match m.get("host").and_then(Value::as_str) {
        Some(h) if !h.is_empty() => {}
        _ => return Err(format!("host missing or empty: {m:?}")),
    }
    match m.get("short_message").and_then(Value::as_str) {
        Some(s) if !s.is_empty() => {}
        _ => return Err(format!("short_message missing or empty: {m:?}")),
    }
    if let Some(t) = m.get("timestamp")
        && !t.is_number()
    {
        return Err(format!("timestamp is not a number: {t}"));
    }
    if let Some(l) = m.get("level")
        && l.as_u64().is_none_or(|l| l > 7)
    {
        return Err(format!("level is not a syslog level: {l}"));
    }
    for (k, v) in &m {
        if matches!(
            k.as_str(),
            "version" | "host" | "short_message" | "full_message" | "timestamp" | "level"
        ) {
            continue;
        }
        if !k.starts_with('_') || !valid_name(k) {
            return Err(format!("field {k:?} is not a valid additional field name"));
        }
        if k == "_id" {
            return Err("field _id is forbidden".into());
        }
        if !(v.is_string() || v.is_number()) {
            return Err(format!("field {k:?} is neither a string nor a number: {v}"));
        }
    }
    Ok(m)
}

/// Splits a TCP stream into its NUL-terminated messages; the rest (no NUL yet) stays in
/// `buf`.
pub fn split_frames(buf: &mut Vec<u8>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(i) = buf.iter().position(|b| *b == 0) {
        out.push(buf[..i].to_vec());
        buf.drain(..=i);
    }
    out
}

/// A receiver running on its own thread; every message (or error) is sent to `rx`.
pub struct Receiver {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Decoded messages, or what was wrong.
    pub rx: mpsc::Receiver<Result<Message, String>>,
    _thread: JoinHandle<()>,
}

impl Receiver {
    /// Listens for UDP datagrams on a free port; `largest` gets the largest datagram size.
    pub fn udp() -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
        let addr = sock.local_addr().expect("addr").to_string();
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mut d = Dechunker::default();
            let mut buf = vec![0u8; 65_536];
            loop {
                let Ok(n) = sock.recv(&mut buf) else { return };
                let res = match d.push(&buf[..n]) {
                    Ok(None) => continue,
                    Ok(Some(p)) => decompress(&p).and_then(|j| parse(&j)).map(|mut m| {
                        m.insert("__datagram_max".into(), d.largest.into());
                        m
                    }),
                    Err(e) => Err(e),
                };
                if tx.send(res).is_err() {
                    return;
                }
            }
        });
        Self {
            addr,
            rx,
            _thread: thread,
        }
    }

    /// Accepts TCP connections on a free port, one after the other.
    pub fn tcp() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind TCP");
        let addr = l.local_addr().expect("addr").to_string();
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut buf = Vec::new();
                let mut chunk = vec![0u8; 65_536];
                loop {
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            buf.extend_from_slice(&chunk[..n]);
                            for f in split_frames(&mut buf) {
                                if tx.send(parse(&f)).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }
                if !buf.is_empty()
                    && tx
                        .send(Err(format!("{} bytes without a NUL at the end", buf.len())))
                        .is_err()
                {
                    return;
                }
            }
        });
        Self {
            addr,
            rx,
            _thread: thread,
        }
    }

    /// The next `n` messages, failing on any error or after `timeout` without one.
    pub fn take(&self, n: usize, timeout: Duration) -> Vec<Message> {
        (0..n)
            .map(|i| match self.rx.recv_timeout(timeout) {
                Ok(Ok(m)) => m,
                Ok(Err(e)) => panic!("message {i}: {e}"),
                Err(e) => panic!("message {i} of {n}: {e}"),
            })
            .collect()
    }

    /// Whether another message arrives within `wait`.
    pub fn more(&self, wait: Duration) -> Option<Result<Message, String>> {
        self.rx.recv_timeout(wait).ok()
    }
}
