//! Helpers shared by the stream server's integration tests: the wire by hand, connecting
//! under load, and the open-file limit.

#![allow(dead_code)]

use std::io::ErrorKind;
use std::path::Path;

use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;

/// ASCII `BTLR1` followed by the record separator 0x1E.
pub const MAGIC: [u8; 6] = [0x42, 0x54, 0x4C, 0x52, 0x31, 0x1E];

/// Unsigned LEB128, as Go's `binary.PutUvarint`: seven bits at a time, low bits first, the top
/// bit set on every byte but the last.
pub fn uvarint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let low = (v & 0x7F) as u8;
        v >>= 7;
        if v == 0 {
            out.push(low);
            return out;
        }
        out.push(low | 0x80);
    }
}

/// Raises this process's soft open-file limit to the hard one, failing the test if that is
/// still below `needed`.
pub fn raise_nofile_limit(needed: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
    }
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    assert!(
        soft >= needed,
        "RLIMIT_NOFILE is {soft} even after raising it to the hard limit; this test needs {needed}"
    );
}

/// Connects, waiting for room in the listen queue when it is full.
pub async fn connect(path: &Path) -> UnixStream {
    match UnixStream::connect(path).await {
        Ok(c) => c,
        // A non-blocking connect fails with EAGAIN when the backlog is full; a blocking one
        // waits for room.
        Err(e) if e.kind() == ErrorKind::WouldBlock => {
            let path = path.to_owned();
            let c =
                tokio::task::spawn_blocking(move || std::os::unix::net::UnixStream::connect(path))
                    .await
                    .expect("connect task")
                    .expect("blocking connect");
            c.set_nonblocking(true).expect("set_nonblocking");
            UnixStream::from_std(c).expect("from_std")
        }
        Err(e) => panic!("connect {}: {e}", path.display()),
    }
}

/// Waits for the server to close the connection, checking that it never writes back.
pub async fn wait_closed(conn: &mut UnixStream) {
    let mut buf = [0u8; 64];
    match conn.read(&mut buf).await {
        Ok(0) => {}
        Ok(n) => panic!("the server wrote {n} bytes back: {:?}", &buf[..n]),
        // Closing a Unix socket with unread data resets the peer.
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("reading from the server: {e}"),
    }
}
