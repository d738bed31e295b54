//! Fairness of the collector's store: acknowledgement latency of small bundles while one huge
//! bundle (1,000,000 tiny entries, about 13 MB) is being stored.
//!
//! A real gRPC server on loopback over a store in a temporary directory. One client sends the
//! huge bundle three times (new streams each time); another sends a small bundle (10 lines)
//! every 10 ms and times each acknowledgement. Prints p50, p99 and max of the small bundles'
//! latency with the huge writer running and, for comparison, alone; and how long each huge
//! bundle took. The store stores huge bundles in parts and hands the writer over between parts
//! in arrival order (`Store::write`), so a small bundle waits for one part, not the bundle.
//!
//! Run: `cargo bench -p logdog-collector --bench store_fairness`.

use std::time::{Duration, Instant};

use logdog_proto::logdog::collector::WriteBundleRequest;
use logdog_proto::logdog::collector::collector_client::CollectorClient;
use logdog_proto::logpb::{self, log_entry::Content};
use prost::Message;
use tonic::transport::Channel;

const HUGE_ENTRIES: u64 = 1_000_000;

fn entry(i: u64, sequence: u64, value: &str, delimiter: &str) -> logpb::LogEntry {
    logpb::LogEntry {
        stream_index: i,
        sequence,
        content: Some(Content::Text(logpb::Text {
            lines: vec![logpb::text::Line {
                value: value.as_bytes().to_vec().into(),
                delimiter: delimiter.into(),
            }],
        })),
        ..Default::default()
    }
}

fn bundle(name: &str, logs: Vec<logpb::LogEntry>) -> Vec<u8> {
    logpb::ButlerLogBundle {
        project: "bench".into(),
        prefix: "fair".into(),
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
    .encode_to_vec()
}

/// A bundle of `HUGE_ENTRIES` one-byte partial lines (the tiniest entries there are; partial
/// lines keep the sequence at 0).
fn huge(name: &str) -> Vec<u8> {
    bundle(
        name,
        (0..HUGE_ENTRIES).map(|i| entry(i, 0, "x", "")).collect(),
    )
}

async fn client(addr: std::net::SocketAddr) -> CollectorClient<Channel> {
    let ch = Channel::from_shared(format!("http://{addr}"))
        .expect("address")
        .connect()
        .await
        .expect("connect");
    CollectorClient::new(ch).max_encoding_message_size(64 << 20)
}

/// Sends a small bundle every 10 ms until `stop`, returning each acknowledgement's latency.
async fn small_writer(
    mut c: CollectorClient<Channel>,
    name: &str,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<Duration> {
    let mut out = Vec::new();
    let mut next = 0u64;
    while !*stop.borrow() {
        let logs = (next..next + 10)
            .map(|i| entry(i, i, "a small line of a normal build log", "\n"))
            .collect();
        next += 10;
        let t = Instant::now();
        c.write_bundle(WriteBundleRequest {
            bundle: bundle(name, logs).into(),
        })
        .await
        .expect("small bundle");
        out.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    out
}

fn report(what: &str, mut v: Vec<Duration>) {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    println!(
        "{what:<34} n={:<5} p50 {:>8.2} ms   p99 {:>8.2} ms   max {:>8.2} ms",
        v.len(),
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        v[v.len() - 1].as_secs_f64() * 1e3
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = logdog_collector::Store::open(dir.path()).expect("store");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(logdog_collector::serve(listener, store, async move {
        let _ = stop_rx.await;
    }));

    // Alone.
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let alone = tokio::spawn(small_writer(client(addr).await, "alone", done_rx));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = done_tx.send(true);
    report("small bundles, alone", alone.await.expect("alone"));

    // Beside the huge bundles.
    let bundles: Vec<Vec<u8>> = (0..3).map(|k| huge(&format!("huge{k}"))).collect();
    println!(
        "huge bundle: {} entries, {} bytes",
        HUGE_ENTRIES,
        bundles[0].len()
    );
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let beside = tokio::spawn(small_writer(client(addr).await, "beside", done_rx));
    let mut big = client(addr).await;
    for b in bundles {
        let t = Instant::now();
        let r = big
            .write_bundle(WriteBundleRequest { bundle: b.into() })
            .await
            .expect("huge bundle")
            .into_inner();
        assert_eq!(u64::from(r.stored), HUGE_ENTRIES, "{r:?}");
        println!("huge bundle stored in {:.2} s", t.elapsed().as_secs_f64());
    }
    let _ = done_tx.send(true);
    report(
        "small bundles, beside huge ones",
        beside.await.expect("beside"),
    );
    let _ = stop_tx.send(());
    let _ = server.await;
}
