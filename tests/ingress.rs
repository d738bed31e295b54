//! The collector's gRPC ingress under hostile clients, against a real `logdog_collector` on
//! loopback: request bodies that stall hold no more memory than the in-flight budget allows,
//! are ended at the read deadline, and never keep an honest butler from writing.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Collector, tempdir};
use logdog_proto::logdog::collector::WriteBundleRequest;
use logdog_proto::logdog::collector::collector_client::CollectorClient;
use logdog_proto::logpb::{self, log_entry::Content};
use prost::Message;
use tonic::Code;
use tonic::transport::Channel;

const MIB: u64 = 1 << 20;
/// The budget the collector under test is given: exactly what two hostile calls reserve (the
/// collector counts in KiB; a call reserves its 5-byte gRPC header and announced length), so
/// that the stalled calls fill it and an honest call must wait or retry.
const BUDGET: u64 = 2 * (ANNOUNCED + 1024);
/// What each hostile call announces, and what it sends before it stalls.
const ANNOUNCED: u64 = 32 * MIB;
const SENT: u64 = 30 * MIB;
const STALLERS: usize = 60;
static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

/// The resident set of process `pid`, in bytes.
fn rss(pid: nix::unistd::Pid) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("a VmRSS line");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in kB");
    kib * 1024
}

fn bundle(name: &str, line_len: usize, lines: u64) -> logpb::ButlerLogBundle {
    let line = "x".repeat(line_len);
    let logs = (0..lines)
        .map(|i| logpb::LogEntry {
            stream_index: i,
            sequence: i,
            time_offset: Some(prost_types::Duration::default()),
            content: Some(Content::Text(logpb::Text {
                lines: vec![logpb::text::Line {
                    value: line.as_bytes().to_vec().into(),
                    delimiter: "\n".into(),
                }],
            })),
            ..Default::default()
        })
        .collect();
    logpb::ButlerLogBundle {
        project: "proj".into(),
        prefix: "pfx".into(),
        timestamp: Some(prost_types::Timestamp::default()),
        entries: vec![logpb::butler_log_bundle::Entry {
            desc: Some(logpb::LogStreamDescriptor {
                name: name.into(),
                content_type: "text/plain".into(),
                timestamp: Some(prost_types::Timestamp::default()),
                ..Default::default()
            }),
            logs,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Writes `b` as a butler does: retrying retriable statuses with a pause, until `limit`.
/// Returns how many attempts were refused with a retriable status first.
async fn write_retrying(addr: &str, b: &logpb::ButlerLogBundle, limit: Duration) -> u32 {
    let start = Instant::now();
    let mut refused = 0;
    loop {
        assert!(start.elapsed() < limit, "no write within {limit:?}");
        let ch = match Channel::from_shared(format!("http://{addr}"))
            .expect("a URI")
            .connect()
            .await
        {
            Ok(ch) => ch,
            Err(_) => {
                refused += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut c = CollectorClient::new(ch).max_encoding_message_size(64 << 20);
        let r = c
            .write_bundle(WriteBundleRequest {
                bundle: b.encode_to_vec().into(),
            })
            .await;
        match r {
            Ok(r) => {
                let r = r.into_inner();
                assert!(r.refused.is_empty(), "{r:?}");
                return refused;
            }
            Err(s)
                if matches!(
                    s.code(),
                    Code::ResourceExhausted | Code::Unavailable | Code::DeadlineExceeded
                ) =>
            {
                refused += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => panic!("write failed: {s:?}"),
        }
    }
}

/// One hostile call on its own connection: announces `announced` bytes, sends up to `SENT`
/// as fast as the collector's flow control lets it, then stalls. Returns once the collector
/// ends the call (or the connection).
async fn stall(addr: String, announced: u64, sent: Arc<AtomicU64>) {
    let tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let (h2, conn) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    tokio::spawn(conn);
    let mut h2 = h2.ready().await.expect("ready");
    let req = http::Request::post(format!(
        "http://{addr}/logdog.collector.Collector/WriteBundle"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .expect("a request");
    let (response, mut body) = h2.send_request(req, false).expect("send_request");
    let mut header = vec![0u8];
    header.extend_from_slice(&(announced as u32).to_be_bytes());
    let send = async move {
        let mut left = SENT as usize;
        let mut first = Some(Bytes::from(header));
        while left > 0 {
            body.reserve_capacity(ZEROS.len().min(left) + 5);
            let Some(Ok(cap)) = std::future::poll_fn(|cx| body.poll_capacity(cx)).await else {
                return body;
            };
            let chunk = match first.take() {
                Some(h) => h,
                None => {
                    let n = cap.min(left).min(ZEROS.len());
                    left -= n;
                    Bytes::from_static(&ZEROS[..n])
                }
            };
            let n = chunk.len() as u64;
            if body.send_data(chunk, false).is_err() {
                return body;
            }
            sent.fetch_add(n, Ordering::Relaxed);
        }
        body
    };
    tokio::pin!(response);
    tokio::select! {
        _ = &mut response => {}
        body = send => {
            // Stalled: the stream stays open, with its message unfinished.
            let _ = (&mut response).await;
            drop(body);
        }
    }
}

#[test]
fn stalled_uploads_stay_within_the_budget_and_honest_writes_go_through() {
    let dir = tempdir();
    let budget = BUDGET.to_string();
    let c = Collector::start_with(
        &dir.path().join("data"),
        "127.0.0.1:0",
        &["--max-inflight-bytes", &budget, "--read-deadline", "5s"],
    );
    let pid = c.guarded.pid();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        // The baseline: the collector warmed up by one honest write.
        write_retrying(&c.addr, &bundle("warmup", 100, 10), Duration::from_secs(60)).await;
        let base = rss(pid);
        // What the collector may hold: the budget, plus what HTTP/2 flow control lets each
        // stalled connection park unread (one connection window each, 1 MiB by default), plus
        // a generous margin.
        let window = u64::from(logdog_collector::ingress::DEFAULT_CONNECTION_WINDOW);
        let ceiling = base + BUDGET + STALLERS as u64 * window + 96 * MIB;

        let sent = Arc::new(AtomicU64::new(0));
        let ended = Arc::new(AtomicUsize::new(0));
        let mut stallers = Vec::new();
        for _ in 0..STALLERS {
            let (addr, sent, ended) = (c.addr.clone(), sent.clone(), ended.clone());
            stallers.push(tokio::spawn(async move {
                stall(addr, ANNOUNCED, sent).await;
                ended.fetch_add(1, Ordering::Relaxed);
            }));
        }
        let watch = {
            let ended = ended.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                let mut peak = 0;
                while ended.load(Ordering::Relaxed) < STALLERS {
                    let now = rss(pid);
                    peak = peak.max(now);
                    assert!(
                        now < ceiling,
                        "collector RSS {} MiB over the ceiling {} MiB (baseline {} MiB)",
                        now / MIB,
                        ceiling / MIB,
                        base / MIB
                    );
                    assert!(
                        start.elapsed() < Duration::from_secs(120),
                        "stalled calls were not ended: {} of {STALLERS} ended",
                        ended.load(Ordering::Relaxed)
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                peak
            })
        };
        // Once the stalled calls have filled the budget, an honest butler still writes.
        let start = Instant::now();
        while sent.load(Ordering::Relaxed) < BUDGET {
            assert!(
                start.elapsed() < Duration::from_secs(60) && !watch.is_finished(),
                "the stalled calls sent only {} bytes",
                sent.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let t = Instant::now();
        let refused =
            write_retrying(&c.addr, &bundle("honest", 1000, 100), Duration::from_secs(60)).await;
        eprintln!(
            "honest write: stored after {:?}, {refused} retriable refusals first",
            t.elapsed()
        );
        let peak = watch.await.expect("the RSS watch");
        for s in stallers {
            s.await.expect("a stalled call");
        }
        eprintln!(
            "baseline {} MiB, peak {} MiB, ceiling {} MiB",
            base / MIB,
            peak / MIB,
            ceiling / MIB
        );
        // Nothing is held once they are gone: two new calls of 31 MiB each, nearly the whole
        // budget, are both read in full (a single call left holding its 32 MiB would stop one).
        let sent = Arc::new(AtomicU64::new(0));
        let again: Vec<_> = (0..2)
            .map(|_| tokio::spawn(stall(c.addr.clone(), 31 * MIB, sent.clone())))
            .collect();
        let start = Instant::now();
        while sent.load(Ordering::Relaxed) < 2 * (SENT + 5) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the budget was still held after the stalled calls ended: the new calls sent only {} bytes",
                sent.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for s in again {
            s.await.expect("a stalled call");
        }
    });
    let log = c.stop_with_log();
    assert!(
        log.contains("read deadline") || log.contains("in-flight"),
        "refusals are logged:\n{log}"
    );
}

async fn channel(addr: &str) -> Result<CollectorClient<Channel>, tonic::transport::Error> {
    let ch = Channel::from_shared(format!("http://{addr}"))
        .expect("a URI")
        .connect()
        .await?;
    Ok(CollectorClient::new(ch))
}

async fn write_once(c: &mut CollectorClient<Channel>, name: &str) -> Result<(), tonic::Status> {
    c.write_bundle(WriteBundleRequest {
        bundle: bundle(name, 10, 1).encode_to_vec().into(),
    })
    .await
    .map(drop)
}

#[test]
fn connections_and_calls_per_connection_are_capped() {
    let dir = tempdir();
    let c = Collector::start_with(
        &dir.path().join("data"),
        "127.0.0.1:0",
        &["--max-connections", "4"],
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        // Calls per connection: the collector's HTTP/2 settings allow 32 streams at once.
        let tcp = tokio::net::TcpStream::connect(&c.addr)
            .await
            .expect("connect");
        let (h2, conn) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
        tokio::spawn(conn);
        let start = Instant::now();
        while h2.current_max_send_streams() != 32 {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "max concurrent streams: {}",
                h2.current_max_send_streams()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(h2);

        // Four connections, each proven accepted by a call.
        let start = Instant::now();
        let mut open = Vec::new();
        while open.len() < 4 {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "cannot open 4 connections"
            );
            // The probe connection above may still be closing.
            if let Ok(mut ch) = channel(&c.addr).await
                && write_once(&mut ch, &format!("s{}", open.len()))
                    .await
                    .is_ok()
            {
                open.push(ch);
            } else {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        // A fifth is closed on arrival: the client sees a retriable failure.
        let fifth = match channel(&c.addr).await {
            Err(_) => None,
            Ok(mut ch) => Some(write_once(&mut ch, "fifth").await),
        };
        if let Some(r) = fifth {
            let s = r.expect_err("a fifth connection must be refused");
            assert!(
                matches!(
                    s.code(),
                    Code::Unavailable | Code::Unknown | Code::Cancelled
                ),
                "{s:?}"
            );
        }
        // The ones open still work; once one closes, a new connection gets its slot.
        write_once(&mut open[0], "still")
            .await
            .expect("an open connection");
        open.pop();
        let start = Instant::now();
        loop {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the slot was not freed"
            );
            if let Ok(mut ch) = channel(&c.addr).await
                && write_once(&mut ch, "later").await.is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let log = c.stop_with_log();
    assert!(log.contains("maximum of connections"), "{log}");
}
