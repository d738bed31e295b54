//! The gRPC output against a collector that misbehaves: an in-test `Collector` server on
//! loopback that fails calls with every retriable status code, answers slowly, stores a
//! bundle and then loses the answer, refuses some bundles outright, and restarts on the same
//! port halfway through.
//!
//! Every bundle must end up acknowledged exactly once (the output stops resending after the
//! first OK) and stored exactly once (the server de-duplicates by stream and index, as the real
//! collector does); bundles refused with a non-retriable code must be tried once, reported as
//! an error and counted as failed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use logdog_outputs::{GrpcOutput, Output, OutputStats};
use logdog_proto::logdog::collector::collector_server::{Collector, CollectorServer};
use logdog_proto::logdog::collector::{WriteBundleRequest, WriteBundleResponse};
use logdog_proto::{Bundle, BundleEntry, Content, Descriptor, Entry, StreamType, logpb};
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};
use tonic::{Code, Request, Response, Status};

/// Overall limit: a hang fails the test instead of blocking the suite.
const LIMIT: Duration = Duration::from_secs(120);

/// Codes the output must retry, in the order the server hands them out.
const RETRIABLE: [Code; 7] = [
    Code::Unavailable,
    Code::Internal,
    Code::ResourceExhausted,
    Code::Aborted,
    Code::Unknown,
    Code::DeadlineExceeded,
    Code::Cancelled,
];

/// Codes that mean "this bundle will never be accepted": the output must not retry them.
const FATAL: [Code; 6] = [
    Code::InvalidArgument,
    Code::FailedPrecondition,
    Code::PermissionDenied,
    Code::Unauthenticated,
    Code::NotFound,
    Code::Unimplemented,
];

/// Normal bundles sent.
const BUNDLES: u64 = 48;
/// Acknowledged bundles after which the server is restarted.
const RESTART_AFTER: u64 = 16;
/// Entries per bundle.
const PER_BUNDLE: u64 = 3;

/// What the server has seen, shared across restarts.
#[derive(Debug, Default)]
struct Seen {
    /// Calls per bundle (by the bundle's key).
    calls: BTreeMap<String, u32>,
    /// OK answers per bundle.
    acks: BTreeMap<String, u32>,
    /// Error codes answered.
    codes: BTreeMap<String, u32>,
    /// Stored entries, by stream and index.
    stored: BTreeMap<(String, u64), Vec<u8>>,
    /// Entries received again after they were stored.
    duplicates: u64,
}

/// The test collector: scripted answers, and what it has seen.
#[derive(Debug, Clone, Default)]
struct Script {
    seen: Arc<Mutex<Seen>>,
}

impl Script {
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The bundle's key: its (only) stream and first index, e.g. `s2@12`.
fn key_of(
    b: &logpb::ButlerLogBundle,
) -> Result<(String, u64, &logpb::butler_log_bundle::Entry), Status> {
    let e = b
        .entries
        .first()
        .ok_or_else(|| Status::invalid_argument("empty bundle"))?;
    let name = e.desc.as_ref().map(|d| d.name.clone()).unwrap_or_default();
    let first = e.logs.first().map_or(0, |l| l.stream_index);
    Ok((name, first, e))
}

#[tonic::async_trait]
impl Collector for Script {
    async fn write_bundle(
        &self,
        req: Request<WriteBundleRequest>,
    ) -> Result<Response<WriteBundleResponse>, Status> {
        let b = logpb::ButlerLogBundle::decode(req.into_inner().bundle)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (name, first, entry) = key_of(&b)?;
        let key = format!("{name}@{first}");
        let attempt = {
            let mut seen = self.seen();
            let n = seen.calls.entry(key.clone()).or_default();
            *n += 1;
            *n - 1
        };
        // Refused outright: `poison/<i>` gets FATAL[i].
        if let Some(i) = name.strip_prefix("poison/") {
            let code = FATAL[i.parse::<usize>().unwrap_or(0) % FATAL.len()];
            *self.seen().codes.entry(format!("{code:?}")).or_default() += 1;
            return Err(Status::new(code, "refused by the test collector"));
        }
        let k = first / PER_BUNDLE;
        // Slow: every third bundle takes a while on every attempt.
        if k.is_multiple_of(3) {
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        // The first `k % 4` attempts fail, each with the next retriable code.
        let fail_first = (k % 4) as u32;
        // Every fifth bundle that fails is stored before the error: the answer was lost.
        let store_anyway = k.is_multiple_of(5);
        if attempt < fail_first && !store_anyway {
            let code = RETRIABLE[(k as usize + attempt as usize) % RETRIABLE.len()];
            *self.seen().codes.entry(format!("{code:?}")).or_default() += 1;
            return Err(Status::new(code, "try again"));
        }
        let (mut stored, mut duplicates) = (0u32, 0u32);
        {
            let mut seen = self.seen();
            for log in &entry.logs {
                let data = log.encode_to_vec();
                match seen.stored.entry((name.clone(), log.stream_index)) {
                    std::collections::btree_map::Entry::Occupied(o) => {
                        assert_eq!(o.get(), &data, "the same index with other content");
                        duplicates += 1;
                    }
                    std::collections::btree_map::Entry::Vacant(v) => {
                        v.insert(data);
                        stored += 1;
                    }
                }
            }
            seen.duplicates += u64::from(duplicates);
        }
        if attempt < fail_first {
            let code = RETRIABLE[(k as usize + attempt as usize) % RETRIABLE.len()];
            *self.seen().codes.entry(format!("{code:?}")).or_default() += 1;
            return Err(Status::new(code, "stored, but the answer is lost"));
        }
        *self.seen().acks.entry(key).or_default() += 1;
        Ok(Response::new(WriteBundleResponse {
            stored,
            duplicates,
            ..Default::default()
        }))
    }
}

/// Serves `script` on `listener` until `stop` fires.
fn serve(
    script: Script,
    listener: TcpListener,
    stop: oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(CollectorServer::new(script))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async move {
                    let _ = stop.await;
                },
            )
            .await
            .expect("test collector");
    })
}

/// A one-stream bundle: `PER_BUNDLE` text entries of stream `name` from `first`.
fn bundle(name: &str, first: u64) -> Bundle {
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
    Bundle {
        timestamp: prost_types::Timestamp::default(),
        project: "p".into(),
        prefix: "faults".into(),
        entries: vec![BundleEntry {
            desc,
            terminal_index: None,
            logs,
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bundle_is_delivered_once_through_errors_delays_and_a_restart() {
    tokio::time::timeout(LIMIT, async {
        let script = Script::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel();
        let mut server = (stop, serve(script.clone(), listener, stopped));
        let mut restarted = false;
        let output = Arc::new(GrpcOutput::new(&addr.to_string()).unwrap());

        // Normal bundles over four streams, and one poison bundle per fatal code, sent with
        // the output's own concurrency.
        let mut bundles: Vec<Bundle> = (0..BUNDLES)
            .map(|k| bundle(&format!("s{}", k % 4), k * PER_BUNDLE))
            .collect();
        for (i, k) in (0..FATAL.len()).zip([5, 20, 30, 35, 40, 47]) {
            bundles.insert(k, bundle(&format!("poison/{i}"), 0));
        }
        let slots = Arc::new(Semaphore::new(output.max_in_flight()));
        let mut sends = tokio::task::JoinSet::new();
        for b in bundles {
            let permit = slots.clone().acquire_owned().await.unwrap();
            let sender = output.clone();
            let name = b.entries[0].desc.name().to_string();
            sends.spawn(async move {
                let res = sender.send(b).await;
                drop(permit);
                (name, res)
            });
            // Restart the collector once enough bundles are acknowledged: a graceful stop
            // (calls in progress finish), nothing listening for a moment, then a new server
            // on the same port with the same store.
            if !restarted && script.seen().acks.len() as u64 >= RESTART_AFTER {
                restarted = true;
                let (stop, first) = server;
                let _ = stop.send(());
                first.await.unwrap();
                let listener = TcpListener::bind(addr).await.unwrap();
                let (stop, stopped) = oneshot::channel();
                server = (stop, serve(script.clone(), listener, stopped));
            }
        }
        assert!(
            restarted,
            "fewer than {RESTART_AFTER} bundles acknowledged before the last send started"
        );
        finish(script, output, sends, server).await;
    })
    .await
    .expect("test timed out");
}

async fn finish(
    script: Script,
    output: Arc<GrpcOutput>,
    mut sends: tokio::task::JoinSet<(String, Result<(), logdog_outputs::OutputError>)>,
    (stop, server): (oneshot::Sender<()>, tokio::task::JoinHandle<()>),
) {
    let mut refused = BTreeSet::new();
    while let Some(res) = sends.join_next().await {
        let (name, res) = res.expect("send task");
        match (name.strip_prefix("poison/"), res) {
            (None, Ok(())) => {}
            (None, Err(e)) => panic!("{name}: a retriable failure was given up: {e}"),
            (Some(i), Err(e)) => {
                let msg = e.to_string();
                assert!(msg.contains("refused"), "{name}: {msg}");
                refused.insert(i.parse::<usize>().unwrap());
            }
            (Some(_), Ok(())) => panic!("{name}: a refused bundle counted as delivered"),
        }
    }
    assert_eq!(refused, (0..FATAL.len()).collect(), "refused bundles");
    let _ = stop.send(());
    server.await.unwrap();

    let seen = script.seen();
    // Every normal bundle acknowledged exactly once, every poison one tried exactly once.
    for k in 0..BUNDLES {
        let key = format!("s{}@{}", k % 4, k * PER_BUNDLE);
        assert_eq!(seen.acks.get(&key), Some(&1), "{key}: acknowledgements");
        // One per scripted failure, then the one that succeeds; more only if the restart
        // cut a call short.
        let calls = seen.calls.get(&key).copied().unwrap_or(0);
        assert!(calls > (k % 4) as u32, "{key}: {calls} calls");
    }
    for i in 0..FATAL.len() {
        assert_eq!(seen.calls.get(&format!("poison/{i}@0")), Some(&1));
    }
    // Every code was used, and every entry stored exactly once.
    for code in RETRIABLE.iter().chain(&FATAL) {
        assert!(
            seen.codes.contains_key(&format!("{code:?}")),
            "{code:?} never answered: {:?}",
            seen.codes
        );
    }
    assert_eq!(seen.stored.len() as u64, BUNDLES * PER_BUNDLE);
    for k in 0..BUNDLES {
        for i in k * PER_BUNDLE..(k + 1) * PER_BUNDLE {
            assert!(seen.stored.contains_key(&(format!("s{}", k % 4), i)));
        }
    }
    // Each call that got as far as storing, after the first, brought its entries again:
    // every later attempt of a bundle whose answers were lost, and nothing else.
    let mut resent = 0u64;
    for k in 0..BUNDLES {
        let calls = u64::from(seen.calls[&format!("s{}@{}", k % 4, k * PER_BUNDLE)]);
        let storing = if k.is_multiple_of(5) {
            calls
        } else {
            calls - k % 4
        };
        resent += storing - 1;
    }
    assert!(
        resent
            >= (0..BUNDLES)
                .filter(|k| k.is_multiple_of(5))
                .map(|k| k % 4)
                .sum::<u64>()
    );
    assert_eq!(seen.duplicates, resent * PER_BUNDLE);

    let payload = |n: &str, i: u64| format!("{n} line {i}\n").len() as u64;
    let sent_bytes: u64 = (0..BUNDLES)
        .flat_map(|k| (k * PER_BUNDLE..(k + 1) * PER_BUNDLE).map(move |i| (k, i)))
        .map(|(k, i)| payload(&format!("s{}", k % 4), i))
        .sum();
    let failed_bytes: u64 = (0..FATAL.len())
        .map(|i| {
            (0..PER_BUNDLE)
                .map(|j| payload(&format!("poison/{i}"), j))
                .sum::<u64>()
        })
        .sum();
    assert_eq!(
        output.stats(),
        OutputStats {
            sent_bundles: BUNDLES,
            sent_entries: BUNDLES * PER_BUNDLE,
            sent_bytes,
            failed_bundles: FATAL.len() as u64,
            failed_bytes,
            spool: None,
        }
    );
}
