//! The gRPC output against a collector that refuses one stream of a bundle
//! (`WriteBundleResponse.refused`) or reports its store damaged (`DATA_LOSS`): an in-test
//! `Collector` server on loopback, with and without a spool.
//!
//! A refused stream is lost alone, with the collector's reason, and the bundle counts as
//! acknowledged for every other stream. `DATA_LOSS` is never retried: without a spool the
//! bundle is lost at once with the collector's message; with one, the bundles stay in the
//! spool, uploading stops, and a later uploader delivers them once the store is repaired.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use logdog_outputs::spool::Spool;
use logdog_outputs::{GrpcOutput, Output};
use logdog_proto::logdog::collector::collector_server::{Collector, CollectorServer};
use logdog_proto::logdog::collector::stream_refusal::Reason;
use logdog_proto::logdog::collector::{StreamRefusal, WriteBundleRequest, WriteBundleResponse};
use logdog_proto::{Bundle, BundleEntry, Content, Descriptor, Entry, StreamType, logpb};
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

/// Overall limit: a hang fails the test instead of blocking the suite.
const LIMIT: Duration = Duration::from_secs(120);
/// Bundles sent in each test.
const BUNDLES: u64 = 6;
/// Entries per stream per bundle.
const PER_BUNDLE: u64 = 3;
/// The collector's message for a damaged store.
const DAMAGED: &str = "store damaged: segment 7 fails its checksum";

/// The test collector: stores every stream but `bad` (refused as a conflict), or answers
/// `DATA_LOSS` to everything while `damaged` is set.
#[derive(Debug, Clone, Default)]
struct Script {
    damaged: Arc<AtomicBool>,
    calls: Arc<AtomicU32>,
    /// Stored payload bytes per stream.
    stored: Arc<Mutex<BTreeMap<String, u64>>>,
    /// Entries stored, by stream and index: a bundle sent again stores nothing new, as with
    /// the real collector (delivery is at least once; the collector de-duplicates).
    seen: Arc<Mutex<std::collections::HashSet<(String, u64)>>>,
}

#[tonic::async_trait]
impl Collector for Script {
    async fn write_bundle(
        &self,
        req: Request<WriteBundleRequest>,
    ) -> Result<Response<WriteBundleResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.damaged.load(Ordering::SeqCst) {
            return Err(Status::data_loss(DAMAGED));
        }
        let b = logpb::ButlerLogBundle::decode(req.into_inner().bundle)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut resp = WriteBundleResponse::default();
        for e in &b.entries {
            let name = e.desc.as_ref().map(|d| d.name.clone()).unwrap_or_default();
            if name == "bad" {
                resp.refused.push(StreamRefusal {
                    name,
                    reason: Reason::Conflict as i32,
                    message: "different bytes at index 0".into(),
                    entries: e.logs.len() as u32,
                });
                continue;
            }
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            let bytes: u64 = e
                .logs
                .iter()
                .filter(|l| seen.insert((name.clone(), l.stream_index)))
                .map(|l| match &l.content {
                    Some(logpb::log_entry::Content::Text(t)) => t
                        .lines
                        .iter()
                        .map(|x| (x.value.len() + x.delimiter.len()) as u64)
                        .sum(),
                    _ => 0,
                })
                .sum();
            drop(seen);
            *self
                .stored
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(name)
                .or_default() += bytes;
            resp.stored += e.logs.len() as u32;
        }
        Ok(Response::new(resp))
    }
}

/// Serves `script` on a free loopback port until the returned sender is dropped or fired.
async fn serve(script: Script) -> (String, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(CollectorServer::new(script))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async move {
                    let _ = stopped.await;
                },
            )
            .await
            .expect("test collector");
    });
    (addr, stop, task)
}

fn entry(name: &str, first: u64) -> BundleEntry {
    let desc = Arc::new(Descriptor::new(logpb::LogStreamDescriptor {
        name: name.into(),
        stream_type: StreamType::Text as i32,
        content_type: "text/plain".into(),
        timestamp: Some(prost_types::Timestamp::default()),
        ..Default::default()
    }));
    let logs = (first..first + PER_BUNDLE)
        .map(|i| Entry {
            time_offset: prost_types::Duration::default(),
            prefix_index: i,
            stream_index: i,
            sequence: i,
            content: Content::Text(Bytes::from(format!("{name} line {i}\n"))),
        })
        .collect();
    BundleEntry {
        desc,
        terminal_index: None,
        logs,
    }
}

/// Bundle `k`: entries of `good` and `bad`.
fn bundle(k: u64) -> Bundle {
    Bundle {
        timestamp: prost_types::Timestamp::default(),
        project: "p".into(),
        prefix: "refusals".into(),
        entries: vec![entry("good", k * PER_BUNDLE), entry("bad", k * PER_BUNDLE)],
    }
}

/// Payload bytes of stream `name` over every bundle.
fn payload(name: &str) -> u64 {
    (0..BUNDLES * PER_BUNDLE)
        .map(|i| format!("{name} line {i}\n").len() as u64)
        .sum()
}

fn key(name: &str) -> (String, String) {
    ("refusals".to_string(), name.to_string())
}

/// Checks that `good` is acknowledged whole and `bad` lost whole, with the reason.
fn assert_only_bad_is_lost(output: &GrpcOutput, script: &Script) {
    let acked = output.acknowledged();
    let good = &acked[&key("good")];
    assert_eq!(
        (good.entries, good.bytes, good.lost_bytes),
        (BUNDLES * PER_BUNDLE, payload("good"), 0),
        "{acked:?}"
    );
    assert_eq!(good.lost, None);
    let bad = &acked[&key("bad")];
    assert_eq!(
        (bad.entries, bad.bytes, bad.lost_entries, bad.lost_bytes),
        (0, 0, BUNDLES * PER_BUNDLE, payload("bad")),
        "{acked:?}"
    );
    assert_eq!(
        bad.lost.as_deref(),
        Some("conflict: different bytes at index 0")
    );
    assert!(output.lost_anything());
    let stored = script.stored.lock().unwrap().clone();
    assert_eq!(stored.get("good"), Some(&payload("good")));
    assert_eq!(stored.get("bad"), None);
    let stats = output.stats();
    assert_eq!(stats.sent_bytes, payload("good"), "{stats}");
    assert_eq!(stats.failed_bytes, payload("bad"), "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_stream_is_lost_alone_with_the_reason_and_the_rest_acknowledged() {
    tokio::time::timeout(LIMIT, async {
        let script = Script::default();
        let (addr, stop, server) = serve(script.clone()).await;
        let output = GrpcOutput::new(&addr).unwrap();
        for k in 0..BUNDLES {
            // The bundle counts as delivered: its other stream is stored.
            output.send(bundle(k)).await.expect("send");
        }
        assert_only_bad_is_lost(&output, &script);
        output.close().await.unwrap();
        let _ = stop.send(());
        server.await.unwrap();
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spool_uploader_loses_only_the_refused_stream_and_empties_the_spool() {
    tokio::time::timeout(LIMIT, async {
        let dir = tempfile::tempdir().unwrap();
        let script = Script::default();
        let (addr, stop, server) = serve(script.clone()).await;
        let output = GrpcOutput::new(&addr)
            .unwrap()
            .with_spool(Spool::open(dir.path()).unwrap(), 2);
        for k in 0..BUNDLES {
            output.send(bundle(k)).await.expect("send");
        }
        assert!(output.drain(tokio::time::sleep(LIMIT)).await, "drained");
        assert_only_bad_is_lost(&output, &script);
        let sp = output.stats().spool.unwrap();
        assert_eq!((sp.acked_records, sp.pending_bytes), (BUNDLES, 0), "{sp:?}");
        output.close().await.unwrap();
        let _ = stop.send(());
        server.await.unwrap();
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_fails_a_bundle_at_once_with_the_collectors_message() {
    tokio::time::timeout(LIMIT, async {
        let script = Script::default();
        script.damaged.store(true, Ordering::SeqCst);
        let (addr, stop, server) = serve(script.clone()).await;
        let output = GrpcOutput::new(&addr).unwrap();
        let started = Instant::now();
        let err = output.send(bundle(0)).await.unwrap_err().to_string();
        // Not retried: one call, and no backoff.
        assert_eq!(script.calls.load(Ordering::SeqCst), 1);
        assert!(started.elapsed() < Duration::from_secs(20));
        assert!(err.contains(DAMAGED), "{err}");
        assert_eq!(output.failure().as_deref(), Some(DAMAGED));
        let acked = output.acknowledged();
        for name in ["good", "bad"] {
            let a = &acked[&key(name)];
            assert_eq!((a.bytes, a.lost_entries), (0, PER_BUNDLE), "{acked:?}");
            let why = a.lost.as_deref().unwrap_or_default();
            assert!(
                why.contains("collector store damaged") && why.contains(DAMAGED),
                "{why}"
            );
        }
        assert_eq!(output.stats().failed_bundles, 1);
        let _ = stop.send(());
        server.await.unwrap();
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_spool_a_damaged_store_leaves_the_bundles_in_it_for_later() {
    tokio::time::timeout(LIMIT, async {
        let dir = tempfile::tempdir().unwrap();
        let script = Script::default();
        script.damaged.store(true, Ordering::SeqCst);
        let (addr, stop, server) = serve(script.clone()).await;
        let output = GrpcOutput::new(&addr)
            .unwrap()
            .with_spool(Spool::open(dir.path()).unwrap(), 2);
        for k in 0..BUNDLES {
            output.send(bundle(k)).await.expect("a send is an append");
        }
        // The drain does not wait out its timeout on a collector that can never succeed.
        let started = Instant::now();
        assert!(!output.drain(tokio::time::sleep(LIMIT)).await);
        assert!(started.elapsed() < LIMIT / 2);
        assert_eq!(output.failure().as_deref(), Some(DAMAGED));
        // No retries: at most one call per upload slot.
        assert!(script.calls.load(Ordering::SeqCst) <= 2);
        let sp = output.stats().spool.unwrap();
        assert_eq!(sp.spooled_records, BUNDLES);
        assert_eq!((sp.acked_records, sp.refused_records), (0, 0), "{sp:?}");
        assert!(sp.pending_bytes > 0);
        assert!(
            !output.lost_anything(),
            "nothing is lost: it is in the spool"
        );
        output.close().await.unwrap();
        drop(output);

        // Repaired: the next uploader delivers everything the spool kept.
        script.damaged.store(false, Ordering::SeqCst);
        let output = GrpcOutput::new(&addr)
            .unwrap()
            .with_spool(Spool::open(dir.path()).unwrap(), 2);
        assert!(output.drain(tokio::time::sleep(LIMIT)).await, "drained");
        let stored = script.stored.lock().unwrap().clone();
        assert_eq!(stored.get("good"), Some(&payload("good")));
        let sp = output.stats().spool.unwrap();
        assert_eq!((sp.acked_records, sp.pending_bytes), (BUNDLES, 0), "{sp:?}");
        output.close().await.unwrap();
        let _ = stop.send(());
        server.await.unwrap();
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streams_end_is_acknowledged_apart_from_its_bytes() {
    tokio::time::timeout(LIMIT, async {
        let script = Script::default();
        let (addr, stop, server) = serve(script.clone()).await;
        let output = GrpcOutput::new(&addr).unwrap();
        // `good` ends in a bundle the collector stores.
        let mut b = bundle(0);
        b.entries[0].terminal_index = Some(PER_BUNDLE - 1);
        output.send(b).await.expect("send");
        // `other`: its bytes are stored, then its end alone goes in a bundle that is lost.
        let only = |e: BundleEntry| Bundle {
            entries: vec![e],
            ..bundle(0)
        };
        output.send(only(entry("other", 0))).await.expect("send");
        script.damaged.store(true, Ordering::SeqCst);
        let mut end = entry("other", 0);
        end.logs.clear();
        end.terminal_index = Some(PER_BUNDLE - 1);
        output.send(only(end)).await.unwrap_err();

        let acked = output.acknowledged();
        let good = &acked[&key("good")];
        assert!(good.end_sent && good.ended, "{acked:?}");
        let other = &acked[&key("other")];
        let bytes: u64 = (0..PER_BUNDLE)
            .map(|i| format!("other line {i}\n").len() as u64)
            .sum();
        assert_eq!((other.bytes, other.lost_bytes), (bytes, 0), "{acked:?}");
        assert!(other.end_sent && !other.ended, "{acked:?}");
        // A stream whose end was never sent is not said to miss it.
        let bad = &acked[&key("bad")];
        assert!(!bad.end_sent && !bad.ended, "{acked:?}");
        output.close().await.unwrap();
        let _ = stop.send(());
        server.await.unwrap();
    })
    .await
    .expect("test timed out");
}
