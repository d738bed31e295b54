//! gRPC `Follow` readers hold a bounded amount of memory and give it back: a real
//! `logdog_collector` serves one 32 MiB text stream (stored by a real butler) to 300 slow
//! `Follow` readers over a dozen HTTP/2 connections, each of which reads one message and then
//! stops reading; while they are held the collector's resident memory stays within 256 KiB a
//! reader of the baseline, and once they are gone it comes back to near the baseline.
//!
//! The readers advertise a small HTTP/2 window (64 KiB a stream). That matters: the server
//! keeps encoding a stalled stream's messages for as long as the client's window has room, and
//! what the socket cannot take at once waits in the server's HTTP/2 send buffer, so a stalled
//! stream can park up to the window its client advertised in the collector. The collector
//! bounds what it holds beyond that (what is unsent of one encoded message: 32 KiB of entries,
//! or one larger entry); the window is the client's choice, and a client that advertises
//! megabytes and stops reading pays with its own connection's share of the collector's memory,
//! not with a bound this test could check.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Collector, Guarded, butler, tempdir, write_text_file};
use logdog_proto::logdog::collector::logs_client::LogsClient;
use logdog_proto::logdog::collector::{FollowRequest, FollowResponse};
use logdog_proto::logpb::log_entry::Content;
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};

/// Size of the stream.
const SIZE: u64 = 32 << 20;
/// Slow readers, and the HTTP/2 connections they share (the collector allows 32 calls a
/// connection).
const READERS: usize = 300;
const CONNECTIONS: usize = 12;
/// The readers' HTTP/2 receive window, per stream.
const STREAM_WINDOW: u32 = 64 << 10;
/// What each reader may hold.
const PER_READER: u64 = 256 << 10;
/// Slack for the allocator, thread stacks and the connections' buffers.
const MARGIN: u64 = 24 << 20;
/// How close to the baseline memory must come back once the readers are gone.
const BACK_MARGIN: u64 = 32 << 20;

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

/// A connection to the collector at `addr` with small HTTP/2 windows (enough for
/// `streams` stalled streams of [`STREAM_WINDOW`] each, and a little more).
async fn connect(addr: &str, streams: usize) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(STREAM_WINDOW * (streams as u32 + 2))
        .http2_adaptive_window(false)
        .connect_timeout(Duration::from_secs(30))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"))
}

/// A `Follow` of the test stream from its first entry.
async fn follow(channel: &Channel) -> Streaming<FollowResponse> {
    LogsClient::new(channel.clone())
        .max_decoding_message_size(64 << 20)
        .follow(FollowRequest {
            project: "default".into(),
            path: "mem/+/stdout".into(),
            index: 0,
        })
        .await
        .expect("Follow")
        .into_inner()
}

/// Bytes of text in `m`.
fn text_bytes(m: &FollowResponse) -> u64 {
    m.logs
        .iter()
        .filter_map(|e| match &e.content {
            Some(Content::Text(t)) => Some(t.lines.iter().map(|l| l.value.len() as u64 + 1)),
            _ => None,
        })
        .flatten()
        .sum()
}

#[test]
fn slow_followers_hold_bounded_memory_and_give_it_back() {
    let tmp = tempdir();
    let d = tmp.path();
    let collector = Collector::start(&d.join("data"), "127.0.0.1:0");
    let pid = collector.guarded.pid().as_raw();

    let input = d.join("input.txt");
    let size = write_text_file(&input, SIZE, 0xF011_0E25);
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

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        // Warm up: follow the whole stream (it is complete, so the follow ends).
        let warm = connect(&collector.addr, 1).await;
        let mut all = follow(&warm).await;
        let (mut got, mut largest, mut messages) = (0u64, 0usize, 0usize);
        while let Some(m) = tokio::time::timeout(Duration::from_secs(60), all.message())
            .await
            .expect("the warm-up follow stalled")
            .expect("the warm-up follow failed")
        {
            got += text_bytes(&m);
            largest = largest.max(prost::Message::encoded_len(&m));
            messages += 1;
        }
        eprintln!("warm-up: {messages} messages, the largest {largest} bytes");
        assert_eq!(got, size, "the warm-up follow read {got} of {size} bytes");
        assert!(
            largest <= 160 << 10,
            "a Follow message of {largest} bytes (at most max(32 KiB, one entry), and the \
             butler's entries are smaller than 128 KiB)"
        );
        drop((all, warm));
        let baseline = rss(pid);
        eprintln!("baseline RSS {} MiB", baseline >> 20);

        // The slow readers: each reads one message, then stops reading.
        let per = READERS.div_ceil(CONNECTIONS);
        let mut channels = Vec::new();
        for _ in 0..CONNECTIONS {
            channels.push(connect(&collector.addr, per).await);
        }
        let mut readers = Vec::new();
        for i in 0..READERS {
            let mut s = follow(&channels[i % CONNECTIONS]).await;
            let first = tokio::time::timeout(Duration::from_secs(60), s.message())
                .await
                .unwrap_or_else(|_| panic!("reader {i}: no first message within 60 s"))
                .unwrap_or_else(|e| panic!("reader {i}: {e}"))
                .unwrap_or_else(|| panic!("reader {i}: the follow ended at once"));
            assert!(
                text_bytes(&first) > 0,
                "reader {i}: no text in the first message"
            );
            readers.push(s);
        }

        // Held: wait until memory stops growing (the collector has filled what it holds for
        // them), keeping the highest figure.
        let n = readers.len() as u64;
        let bound = baseline + n * PER_READER + MARGIN;
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut highest = rss(pid);
        let mut last = highest;
        let mut steady = 0;
        while steady < 4 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
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
                "{n} slow followers: RSS {} MiB, over the bound {} MiB (baseline {} MiB)",
                highest >> 20,
                bound >> 20,
                baseline >> 20
            );
        }
        eprintln!(
            "with {n} slow followers: RSS {} MiB (bound {} MiB)",
            highest >> 20,
            bound >> 20
        );

        drop(readers);
        drop(channels);
        let back = baseline + BACK_MARGIN;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut now = rss(pid);
        while now > back && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            now = rss(pid);
        }
        eprintln!("after the followers left: RSS {} MiB", now >> 20);
        assert!(
            now <= back,
            "RSS {} MiB 30 s after the followers left, over baseline {} MiB + {} MiB",
            now >> 20,
            baseline >> 20,
            BACK_MARGIN >> 20
        );
    });
    collector.stop();
}
