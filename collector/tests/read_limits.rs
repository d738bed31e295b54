//! Size limits of the collector's APIs, against the services served in-process on loopback:
//! a `Get` asking for more than [`MAX_GET_BYTES`] gets at most that much (and pages on), and a
//! bundle over [`MAX_BUNDLE_SIZE`] is refused with `InvalidArgument` while the stream it names
//! stays readable.

use std::time::Duration;

use bytes::Bytes;
use logdog_collector::{MAX_BUNDLE_SIZE, MAX_GET_BYTES, Store};
use logdog_proto::logdog::collector::collector_client::CollectorClient;
use logdog_proto::logdog::collector::logs_client::LogsClient;
use logdog_proto::logdog::collector::{GetRequest, WriteBundleRequest};
use logdog_proto::logpb::{self, log_entry::Content};
use prost::Message;
use tokio::net::TcpListener;
use tonic::Code;

/// Overall limit: a hang fails the test.
const LIMIT: Duration = Duration::from_secs(120);
/// One entry's payload.
const ENTRY: usize = 1 << 20;
/// Entries stored: more than a capped `Get` returns.
const ENTRIES: u64 = 40;

fn bundle(first: u64, n: u64, terminal: Option<u64>) -> Vec<u8> {
    let logs = (first..first + n)
        .map(|i| logpb::LogEntry {
            stream_index: i,
            sequence: i * ENTRY as u64,
            time_offset: Some(prost_types::Duration::default()),
            content: Some(Content::Binary(logpb::Binary {
                data: Bytes::from(vec![i as u8; ENTRY]),
            })),
            ..Default::default()
        })
        .collect();
    logpb::ButlerLogBundle {
        project: "p".into(),
        prefix: "limits".into(),
        entries: vec![logpb::butler_log_bundle::Entry {
            desc: Some(logpb::LogStreamDescriptor {
                name: "big".into(),
                stream_type: logpb::StreamType::Binary as i32,
                content_type: "application/octet-stream".into(),
                timestamp: Some(prost_types::Timestamp::default()),
                ..Default::default()
            }),
            terminal: terminal.is_some(),
            terminal_index: terminal.unwrap_or(0),
            logs,
            ..Default::default()
        }],
        ..Default::default()
    }
    .encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_writes_are_bounded() {
    tokio::time::timeout(LIMIT, async {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(logdog_collector::serve(listener, store, async move {
            let _ = stopped.await;
        }));
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut writer = CollectorClient::new(channel.clone()).max_encoding_message_size(64 << 20);
        let mut reader = LogsClient::new(channel).max_decoding_message_size(64 << 20);

        // 40 MiB in 1 MiB entries, written in 8 MiB bundles.
        for first in (0..ENTRIES).step_by(8) {
            let last = (first + 8).min(ENTRIES);
            let terminal = (last == ENTRIES).then_some(ENTRIES - 1);
            let out = writer
                .write_bundle(WriteBundleRequest {
                    bundle: bundle(first, last - first, terminal).into(),
                })
                .await
                .unwrap()
                .into_inner();
            assert!(out.refused.is_empty(), "{out:?}");
        }

        // A bundle over the limit is refused, and harms nothing.
        let huge = bundle(100, (MAX_BUNDLE_SIZE / ENTRY + 1) as u64, None);
        assert!(huge.len() > MAX_BUNDLE_SIZE);
        let err = writer
            .write_bundle(WriteBundleRequest {
                bundle: huge.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");
        assert!(err.message().contains("exceeds"), "{err}");

        // Asking for everything at once gets at most the cap, then the rest from where it
        // stopped.
        let get = |index: u64| GetRequest {
            project: "p".into(),
            path: "limits/+/big".into(),
            state: true,
            index,
            byte_count: u32::MAX,
            log_count: 0,
        };
        let first = reader.get(get(0)).await.unwrap().into_inner();
        let got = first.logs.len() as u64;
        // "About" the budget: entries are added while it is not yet reached.
        let most = (MAX_GET_BYTES / ENTRY) as u64 + 1;
        assert!(
            got > 0 && got <= most && got < ENTRIES,
            "{got} entries for byte_count {}",
            u32::MAX
        );
        let state = first.state.unwrap();
        assert!(state.complete);
        assert_eq!(state.entry_count, ENTRIES);
        let rest = reader.get(get(got)).await.unwrap().into_inner();
        let indices: Vec<u64> = first
            .logs
            .iter()
            .chain(&rest.logs)
            .map(|e| e.stream_index)
            .collect();
        assert_eq!(indices, (0..ENTRIES).collect::<Vec<_>>());

        let _ = stop.send(());
        server.await.unwrap().unwrap();
    })
    .await
    .expect("test timed out");
}
