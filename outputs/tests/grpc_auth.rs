//! The gRPC output against a collector that checks tokens and prefix secrets: an in-test
//! `Collector` server on loopback that wants `authorization: Bearer good`.
//!
//! Every call carries the token; every bundle the same 36-byte secret. `UNAUTHENTICATED` and
//! `PERMISSION_DENIED` are never retried: without a spool the bundle is lost at once with the
//! collector's message; with one, the refused records leave the spool (no endless retries).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use logdog_outputs::security::{ClientSecurity, Collector as Target, Token};
use logdog_outputs::spool::Spool;
use logdog_outputs::{GrpcOutput, Output};
use logdog_proto::logdog::collector::collector_server::{Collector, CollectorServer};
use logdog_proto::logdog::collector::{WriteBundleRequest, WriteBundleResponse};
use logdog_proto::{Bundle, BundleEntry, Content, Descriptor, Entry, StreamType, logpb};
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

/// Overall limit: a hang fails the test instead of blocking the suite.
const LIMIT: Duration = Duration::from_secs(120);
/// Bundles sent in each test.
const BUNDLES: u64 = 4;

/// The test collector: refuses calls without `Bearer good`, and the project `secret` with
/// PERMISSION_DENIED; records the secrets it saw.
#[derive(Debug, Clone, Default)]
struct Checker {
    calls: Arc<AtomicU32>,
    stored: Arc<AtomicU32>,
    secrets: Arc<Mutex<BTreeSet<Vec<u8>>>>,
}

#[tonic::async_trait]
impl Collector for Checker {
    async fn write_bundle(
        &self,
        req: Request<WriteBundleRequest>,
    ) -> Result<Response<WriteBundleResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let auth = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if auth != Some("Bearer good") {
            return Err(Status::unauthenticated("a valid token is needed"));
        }
        let b = logpb::ButlerLogBundle::decode(req.into_inner().bundle)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if b.project == "secret" {
            return Err(Status::permission_denied(
                "token may not write project secret",
            ));
        }
        self.secrets.lock().unwrap().insert(b.secret.to_vec());
        self.stored.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(WriteBundleResponse::default()))
    }
}

async fn serve(c: Checker) -> (String, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(CollectorServer::new(c))
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

fn bundle(project: &str, k: u64) -> Bundle {
    let desc = Arc::new(Descriptor::new(logpb::LogStreamDescriptor {
        name: "out".into(),
        stream_type: StreamType::Text as i32,
        content_type: "text/plain".into(),
        timestamp: Some(prost_types::Timestamp::default()),
        ..Default::default()
    }));
    Bundle {
        timestamp: prost_types::Timestamp::default(),
        project: project.into(),
        prefix: "auth".into(),
        entries: vec![BundleEntry {
            desc,
            terminal_index: None,
            logs: vec![Entry {
                time_offset: prost_types::Duration::default(),
                prefix_index: k,
                stream_index: k,
                sequence: k,
                content: Content::Text(Bytes::from(format!("line {k}\n"))),
            }],
        }],
    }
}

fn output(addr: &str, token: Option<&str>) -> GrpcOutput {
    let target = Target {
        host_port: addr.to_string(),
        tls: false,
    };
    let security = ClientSecurity {
        ca: None,
        token: token.map(|t| Token::new(t, "test").unwrap()),
    };
    GrpcOutput::connect(&target, &security).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_carries_the_token_and_every_bundle_the_same_secret() {
    tokio::time::timeout(LIMIT, async {
        let checker = Checker::default();
        let (addr, stop, server) = serve(checker.clone()).await;
        let out = output(&addr, Some("good"));
        for k in 0..BUNDLES {
            out.send(bundle("p", k)).await.expect("send");
        }
        assert_eq!(checker.stored.load(Ordering::SeqCst), BUNDLES as u32);
        let secrets = checker.secrets.lock().unwrap().clone();
        assert_eq!(secrets.len(), 1, "one secret per output");
        let secret = secrets.into_iter().next().unwrap();
        assert_eq!(secret.len(), 36);
        assert_eq!(out.prefix_secret().map(|b| b.to_vec()), Some(secret));
        assert!(!out.lost_anything());
        out.close().await.unwrap();
        let _ = stop.send(());
        server.await.unwrap();
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_and_permission_denied_are_lost_at_once() {
    tokio::time::timeout(LIMIT, async {
        let checker = Checker::default();
        let (addr, stop, server) = serve(checker.clone()).await;
        let out = output(&addr, None);
        let err = out.send(bundle("p", 0)).await.unwrap_err().to_string();
        assert!(
            err.contains("UNAUTHENTICATED: a valid token is needed"),
            "{err}"
        );
        assert_eq!(checker.calls.load(Ordering::SeqCst), 1, "not retried");
        let acked = out.acknowledged();
        let a = &acked[&("auth".to_string(), "out".to_string())];
        assert_eq!(a.lost_entries, 1);
        assert!(
            a.lost.as_deref().unwrap().starts_with("UNAUTHENTICATED"),
            "{a:?}"
        );

        let out = output(&addr, Some("good"));
        let err = out.send(bundle("secret", 0)).await.unwrap_err().to_string();
        assert!(
            err.contains("PERMISSION_DENIED: token may not write"),
            "{err}"
        );
        assert_eq!(checker.calls.load(Ordering::SeqCst), 2, "not retried");
        assert!(out.lost_anything());
        let _ = stop.send(());
        server.await.unwrap();
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_spool_refused_bundles_leave_it_and_are_not_retried() {
    tokio::time::timeout(LIMIT, async {
        let dir = tempfile::tempdir().unwrap();
        let checker = Checker::default();
        let (addr, stop, server) = serve(checker.clone()).await;
        let out = output(&addr, None).with_spool(Spool::open(dir.path()).unwrap(), 2);
        for k in 0..BUNDLES {
            out.send(bundle("p", k)).await.expect("a send is an append");
        }
        assert!(out.drain(tokio::time::sleep(LIMIT)).await, "settled");
        let sp = out.stats().spool.unwrap();
        assert_eq!(
            (sp.refused_records, sp.pending_bytes),
            (BUNDLES, 0),
            "{sp:?}"
        );
        assert_eq!(checker.calls.load(Ordering::SeqCst), BUNDLES as u32);
        assert!(out.lost_anything());
        out.close().await.unwrap();
        let _ = stop.send(());
        server.await.unwrap();
    })
    .await
    .expect("test timed out");
}
