//! The gRPC output with several collectors and with compression, against in-test `Collector`
//! servers on loopback.
//!
//! - Compression: the encoding asked for is the one on the wire (`grpc-encoding`), `auto`
//!   sends uncompressed to loopback, and a collector that does not accept compressed requests
//!   (a server built without `accept_compressed`, as older collectors are) gets every bundle
//!   uncompressed after its first refusal: nothing is lost.
//! - Several collectors: bundles go to every one that is up; one that answers `UNAVAILABLE`
//!   or is gone, or whose store is damaged (`DATA_LOSS`), is left out and its bundles go to
//!   the others, with and without a spool; nothing is lost.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use logdog_outputs::grpc::GrpcCompression;
use logdog_outputs::security::{ClientSecurity, Collector as Address};
use logdog_outputs::spool::Spool;
use logdog_outputs::{GrpcOutput, Output};
use logdog_proto::logdog::collector::collector_server::{Collector, CollectorServer};
use logdog_proto::logdog::collector::{WriteBundleRequest, WriteBundleResponse};
use logdog_proto::{Bundle, BundleEntry, Content, Descriptor, Entry, StreamType, logpb};
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

/// Overall limit: a hang fails the test instead of blocking the suite.
const LIMIT: Duration = Duration::from_secs(120);
/// Bundles sent in each test.
const BUNDLES: u64 = 8;

/// A test collector: stores every entry once by index, records the encoding of each call,
/// and answers `UNAVAILABLE` while `unavailable` is set or `DATA_LOSS` while `damaged` is;
/// while `hang` is set, a call never gets an answer (`arrived` is notified of it).
#[derive(Debug, Clone, Default)]
struct Script {
    hang: Arc<AtomicBool>,
    arrived: Arc<tokio::sync::Notify>,
    unavailable: Arc<AtomicBool>,
    damaged: Arc<AtomicBool>,
    calls: Arc<AtomicU32>,
    /// The `grpc-encoding` of every call that reached the service.
    encodings: Arc<Mutex<Vec<Option<String>>>>,
    /// Entries stored, by index.
    seen: Arc<Mutex<HashSet<u64>>>,
}

impl Script {
    fn stored(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn encodings(&self) -> Vec<Option<String>> {
        self.encodings.lock().unwrap().clone()
    }
}

#[tonic::async_trait]
impl Collector for Script {
    async fn write_bundle(
        &self,
        req: Request<WriteBundleRequest>,
    ) -> Result<Response<WriteBundleResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let enc = req
            .metadata()
            .get("grpc-encoding")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        self.encodings.lock().unwrap().push(enc);
        if self.hang.load(Ordering::SeqCst) {
            self.arrived.notify_one();
            std::future::pending::<()>().await;
        }
        if self.unavailable.load(Ordering::SeqCst) {
            return Err(Status::unavailable("restarting"));
        }
        if self.damaged.load(Ordering::SeqCst) {
            return Err(Status::data_loss("store damaged"));
        }
        let b = logpb::ButlerLogBundle::decode(req.into_inner().bundle)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut seen = self.seen.lock().unwrap();
        for e in &b.entries {
            for l in &e.logs {
                seen.insert(l.stream_index);
            }
        }
        Ok(Response::new(WriteBundleResponse::default()))
    }
}

/// A running test collector.
struct Server {
    addr: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Serves `script` on a free loopback port; `compressed`: accepting gzip and zstd.
    async fn start(script: Script, compressed: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (stop, stopped) = oneshot::channel::<()>();
        let mut svc = CollectorServer::new(script);
        if compressed {
            svc = svc
                .accept_compressed(CompressionEncoding::Zstd)
                .accept_compressed(CompressionEncoding::Gzip);
        }
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async move {
                        let _ = stopped.await;
                    },
                )
                .await
                .expect("test collector");
        });
        Self {
            addr,
            stop: Some(stop),
            task,
        }
    }

    /// Stops it; its port refuses connections from then on.
    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = self.task.await;
    }
}

/// A TCP proxy to `upstream` whose connections can all be cut at once (as when the machine
/// of a collector dies mid-call): returns its address and the cutter.
async fn proxy(upstream: String) -> (String, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (cut, on_cut) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        let accept = async {
            loop {
                let (mut down, _) = listener.accept().await.unwrap();
                let upstream = upstream.clone();
                conns.spawn(async move {
                    let mut up = tokio::net::TcpStream::connect(upstream).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                });
            }
        };
        tokio::select! {
            () = accept => {}
            _ = on_cut => {}
        }
        // Every connection is dropped with its task; the listener with this one.
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    });
    (addr, cut)
}

fn address(addr: &str) -> Address {
    Address {
        host_port: addr.to_string(),
        tls: false,
    }
}

/// Bundle `k`: entry `k` of stream `s`, 4 KiB of compressible text.
fn bundle(k: u64) -> Bundle {
    let desc = Arc::new(Descriptor::new(logpb::LogStreamDescriptor {
        name: "s".into(),
        stream_type: StreamType::Text as i32,
        content_type: "text/plain".into(),
        timestamp: Some(prost_types::Timestamp::default()),
        ..Default::default()
    }));
    let text = format!("bundle {k} says the same thing again\n").repeat(100);
    Bundle {
        timestamp: prost_types::Timestamp::default(),
        project: "p".into(),
        prefix: "several".into(),
        entries: vec![BundleEntry {
            desc,
            terminal_index: None,
            logs: vec![Entry {
                time_offset: prost_types::Duration::default(),
                prefix_index: k,
                stream_index: k,
                sequence: k,
                content: Content::Text(Bytes::from(text)),
            }],
        }],
    }
}

/// Sends every bundle, one at a time, and checks each was acknowledged, none lost.
async fn send_all(out: &GrpcOutput) {
    for k in 0..BUNDLES {
        out.send(bundle(k)).await.unwrap();
    }
    let acked = out.acknowledged();
    let s = &acked[&("several".to_string(), "s".to_string())];
    assert_eq!((s.entries, s.lost_entries), (BUNDLES, 0), "{acked:?}");
    assert!(!out.lost_anything());
}

#[tokio::test]
async fn requests_carry_the_encoding_asked_for() {
    tokio::time::timeout(LIMIT, async {
        for (compression, want) in [
            (GrpcCompression::Zstd, Some("zstd")),
            (GrpcCompression::Gzip, Some("gzip")),
            (GrpcCompression::Off, None),
            // Loopback: not worth compressing.
            (GrpcCompression::Auto, None),
        ] {
            let script = Script::default();
            let server = Server::start(script.clone(), true).await;
            let out = GrpcOutput::connect_all(
                &[address(&server.addr)],
                &ClientSecurity::default(),
                compression,
            )
            .unwrap();
            send_all(&out).await;
            assert_eq!(script.stored(), BUNDLES as usize);
            let encs = script.encodings();
            assert!(
                encs.iter().all(|e| e.as_deref() == want),
                "{compression}: {encs:?}"
            );
            server.stop().await;
        }
    })
    .await
    .expect("within the limit");
}

#[tokio::test]
async fn a_collector_refusing_compression_gets_uncompressed_bundles_and_loses_nothing() {
    tokio::time::timeout(LIMIT, async {
        for compression in [GrpcCompression::Zstd, GrpcCompression::Gzip] {
            let script = Script::default();
            // Built without accept_compressed: tonic refuses a compressed request
            // (UNIMPLEMENTED) before it reaches the service.
            let server = Server::start(script.clone(), false).await;
            let out = GrpcOutput::connect_all(
                &[address(&server.addr)],
                &ClientSecurity::default(),
                compression,
            )
            .unwrap();
            send_all(&out).await;
            assert_eq!(script.stored(), BUNDLES as usize, "{compression}");
            // Only uncompressed calls reached it: one per bundle, the refused one resent.
            let encs = script.encodings();
            assert_eq!(encs, vec![None; BUNDLES as usize], "{compression}");
            server.stop().await;
        }
    })
    .await
    .expect("within the limit");
}

#[tokio::test]
async fn bundles_are_spread_and_fail_over() {
    tokio::time::timeout(LIMIT, async {
        let (sa, sb) = (Script::default(), Script::default());
        let a = Server::start(sa.clone(), true).await;
        let b = Server::start(sb.clone(), true).await;
        let out = GrpcOutput::connect_all(
            &[address(&a.addr), address(&b.addr)],
            &ClientSecurity::default(),
            GrpcCompression::Off,
        )
        .unwrap();
        send_all(&out).await;
        assert!(
            sa.stored() > 0 && sb.stored() > 0,
            "spread: {} and {}",
            sa.stored(),
            sb.stored()
        );
        assert_eq!(sa.stored() + sb.stored(), BUNDLES as usize);
        assert_eq!(
            out.coordinator_host().as_deref(),
            Some(format!("grpc://{},{}", a.addr, b.addr).as_str())
        );

        // A answers UNAVAILABLE: everything goes to B.
        sa.unavailable.store(true, Ordering::SeqCst);
        let before = sb.stored();
        let out = GrpcOutput::connect_all(
            &[address(&a.addr), address(&b.addr)],
            &ClientSecurity::default(),
            GrpcCompression::Off,
        )
        .unwrap();
        sb.seen.lock().unwrap().clear();
        send_all(&out).await;
        assert_eq!(sb.stored(), BUNDLES as usize, "B has everything ({before})");
        // A was tried once, then left out while down.
        assert!(sa.calls.load(Ordering::SeqCst) as u64 <= BUNDLES / 2 + 1);

        // A's store is damaged: it is given up, B takes everything, and the output does not
        // report a failure while B can store.
        sa.unavailable.store(false, Ordering::SeqCst);
        sa.damaged.store(true, Ordering::SeqCst);
        sb.seen.lock().unwrap().clear();
        let out = GrpcOutput::connect_all(
            &[address(&a.addr), address(&b.addr)],
            &ClientSecurity::default(),
            GrpcCompression::Off,
        )
        .unwrap();
        send_all(&out).await;
        assert_eq!(sb.stored(), BUNDLES as usize);
        assert_eq!(out.failure(), None);

        // A is gone altogether (connection refused): the same.
        let a_addr = a.addr.clone();
        a.stop().await;
        sb.seen.lock().unwrap().clear();
        let out = GrpcOutput::connect_all(
            &[address(&a_addr), address(&b.addr)],
            &ClientSecurity::default(),
            GrpcCompression::Off,
        )
        .unwrap();
        send_all(&out).await;
        assert_eq!(sb.stored(), BUNDLES as usize);
        b.stop().await;
    })
    .await
    .expect("within the limit");
}

#[tokio::test]
async fn a_call_cut_off_mid_flight_goes_to_the_other_collector() {
    tokio::time::timeout(LIMIT, async {
        let (sa, sb) = (Script::default(), Script::default());
        sa.hang.store(true, Ordering::SeqCst);
        let a = Server::start(sa.clone(), true).await;
        let b = Server::start(sb.clone(), true).await;
        let (via, cut) = proxy(a.addr.clone()).await;
        let out = Arc::new(
            GrpcOutput::connect_all(
                &[address(&via), address(&b.addr)],
                &ClientSecurity::default(),
                GrpcCompression::Off,
            )
            .unwrap(),
        );
        // The first bundle goes to the first collector, which takes the call and never
        // answers; then its connection is cut.
        let arrived = sa.arrived.notified();
        let sending = tokio::spawn({
            let out = out.clone();
            async move { out.send(bundle(0)).await }
        });
        arrived.await;
        assert_eq!(sb.stored(), 0);
        cut.send(()).unwrap();
        sending.await.unwrap().unwrap();
        assert_eq!(sb.stored(), 1, "the bundle went to the other collector");
        let acked = out.acknowledged();
        let s = &acked[&("several".to_string(), "s".to_string())];
        assert_eq!((s.entries, s.lost_entries), (1, 0), "{acked:?}");
        a.stop().await;
        b.stop().await;
    })
    .await
    .expect("within the limit");
}

#[tokio::test]
async fn the_spool_uploader_fails_over_too() {
    tokio::time::timeout(LIMIT, async {
        let dir = tempfile::tempdir().unwrap();
        let (sa, sb) = (Script::default(), Script::default());
        sa.unavailable.store(true, Ordering::SeqCst);
        let a = Server::start(sa.clone(), true).await;
        let b = Server::start(sb.clone(), true).await;
        let out = GrpcOutput::connect_all(
            &[address(&a.addr), address(&b.addr)],
            &ClientSecurity::default(),
            GrpcCompression::Zstd,
        )
        .unwrap()
        .with_spool(Spool::open(dir.path()).unwrap(), 4);
        for k in 0..BUNDLES {
            out.send(bundle(k)).await.unwrap();
        }
        assert!(
            out.drain(tokio::time::sleep(LIMIT)).await,
            "the spool drains"
        );
        assert_eq!(sb.stored(), BUNDLES as usize);
        let acked = out.acknowledged();
        let s = &acked[&("several".to_string(), "s".to_string())];
        assert_eq!((s.entries, s.lost_entries), (BUNDLES, 0), "{acked:?}");
        out.close().await.unwrap();
        // Every call that reached B was compressed.
        assert!(sb.encodings().iter().all(|e| e.as_deref() == Some("zstd")));
        a.stop().await;
        b.stop().await;
    })
    .await
    .expect("within the limit");
}
