//! The collector's live readers hold a bounded amount of memory and give it back: a real
//! `logdog_collector --http --tail` serves one 32 MiB text stream to 600 slow readers (viewer
//! event streams and raw downloads that read a few KiB and stop, plus tail server followers);
//! while they are held its resident memory stays within 256 KiB a reader of the baseline, and
//! once they are gone it comes back to near the baseline.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Collector, Guarded, butler, tempdir, write_text_file};
use socket2::{Domain, Socket, Type};

/// Size of the stream.
const SIZE: u64 = 32 << 20;
/// Slow readers of each HTTP kind.
const EVENTS: usize = 300;
const RAWS: usize = 300;
/// Slow tail server followers.
const TAILS: usize = 8;
/// What each reader may hold, beyond what readers at the same place share.
const PER_READER: u64 = 256 << 10;
/// Slack for the allocator, thread stacks and the shared chunk cache.
const MARGIN: u64 = 96 << 20;
/// How long the collector may run before its watchdog kills it.
const COLLECTOR_LIMIT: Duration = Duration::from_secs(900);
/// How close to the baseline memory must come back once the readers are gone.
const BACK_MARGIN: u64 = 48 << 20;

/// The resident memory of process `pid`, in bytes.
fn rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"));
    kib << 10
}

/// A connection to `addr` with a small receive buffer, so a reader that stops reading stalls
/// the server quickly instead of having the kernel buffer megabytes for it.
fn small_connect(addr: &str) -> TcpStream {
    let sa: SocketAddrV4 = addr.parse().expect("an IPv4 address");
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("a socket");
    socket
        .set_recv_buffer_size(4096)
        .expect("setting SO_RCVBUF");
    socket
        .connect(&sa.into())
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    let s = TcpStream::from(socket);
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

/// Sends `request` and reads `n` bytes of the answer (less if it ends first), then stops
/// reading.
fn slow_reader(addr: &str, request: &str, n: usize) -> TcpStream {
    let mut s = small_connect(addr);
    s.write_all(request.as_bytes()).unwrap();
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match s.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) => panic!("{request:?}: reading: {e}"),
        }
    }
    assert!(got > 0, "{request:?}: no answer");
    s
}

/// Reads `n` bytes of `path` over HTTP/1.0 (a warm-up read).
fn read_some(http: &str, path: &str, n: usize) -> usize {
    let mut s = TcpStream::connect(http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {http}\r\n\r\n").unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0;
    while got < n {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) => panic!("warm-up read of {path}: {e}"),
        }
    }
    got
}

#[test]
fn slow_readers_hold_bounded_memory_and_give_it_back() {
    let tmp = tempdir();
    let d = tmp.path();
    // The readers' runtime at the usual priority: this test measures memory, and on a loaded
    // machine a viewer at nice 19 can take seconds per request, which would make 600 of them
    // outlast the collector's usual time limit (its watchdog kills it, resetting every
    // connection). The limit is raised too, for the same reason.
    let collector = Collector::start_full(
        &d.join("data"),
        "127.0.0.1:0",
        &[
            "--http",
            "127.0.0.1:0",
            "--tail",
            "127.0.0.1:0",
            "--reader-nice",
            "0",
        ],
        COLLECTOR_LIMIT,
    );
    let http = collector.http.clone().expect("the viewer's address");
    let tail = collector.tail.clone().expect("the tail server's address");
    let pid = collector.guarded.pid().as_raw();

    let input = d.join("input.txt");
    let size = write_text_file(&input, SIZE, 0x5EAD_E125);
    let mut cmd = butler(
        d,
        &[
            "--output",
            &collector.output(),
            "--prefix",
            "mem",
            "run",
            "--no-echo",
            "--",
            "cat",
        ],
    );
    cmd.arg(&input)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let status = Guarded::spawn(&mut cmd).wait();
    assert!(status.success(), "the butler failed: {status:?}");
    let name = "default/mem/+/stdout";

    // Warm up: a whole raw download (the stream is complete and stored) and some events.
    let n = read_some(&http, &format!("/raw/{name}"), usize::MAX);
    assert!(n as u64 > size, "the raw download is short: {n} of {size}");
    read_some(&http, &format!("/api/events/{name}"), 8 << 20);
    let baseline = rss(pid);
    eprintln!("baseline RSS {} MiB", baseline >> 20);

    let events = format!("GET /api/events/{name} HTTP/1.0\r\nHost: {http}\r\n\r\n");
    let raw = format!("GET /raw/{name} HTTP/1.0\r\nHost: {http}\r\n\r\n");
    let mut readers = Vec::new();
    for i in 0..EVENTS.max(RAWS) {
        if i < EVENTS {
            readers.push(slow_reader(&http, &events, 4096));
        }
        if i < RAWS {
            readers.push(slow_reader(&http, &raw, 4096));
        }
    }
    for _ in 0..TAILS {
        readers.push(slow_reader(&tail, &format!("stream {name}\n"), 4096));
    }

    // Held: wait until memory stops growing (the servers have filled what they hold), keeping
    // the highest figure.
    let n = readers.len() as u64;
    let bound = baseline + n * PER_READER + MARGIN;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut highest = rss(pid);
    let mut last = highest;
    let mut steady = 0;
    while steady < 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        let now = rss(pid);
        highest = highest.max(now);
        steady = if now <= last + (1 << 20) {
            steady + 1
        } else {
            0
        };
        last = now;
        assert!(
            highest <= bound,
            "{n} slow readers: RSS {} MiB, over the bound {} MiB (baseline {} MiB)",
            highest >> 20,
            bound >> 20,
            baseline >> 20
        );
    }
    eprintln!(
        "with {n} slow readers: RSS {} MiB (bound {} MiB)",
        highest >> 20,
        bound >> 20
    );

    drop(readers);
    let back = baseline + BACK_MARGIN;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut now = rss(pid);
    while now > back && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        now = rss(pid);
    }
    eprintln!("after the readers left: RSS {} MiB", now >> 20);
    assert!(
        now <= back,
        "RSS {} MiB 30 s after the readers left, over baseline {} MiB + {} MiB",
        now >> 20,
        baseline >> 20,
        BACK_MARGIN >> 20
    );
    collector.stop();
}
