//! The collector's gRPC API against a real `logdog_collector` process on loopback: bad
//! bundles get gRPC errors and bad streams are refused one by one, without harming other
//! streams; bundles may arrive out of order
//! and be retried without duplicating anything; completeness follows the terminal index.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use logdog_proto::logdog::collector::collector_client::CollectorClient;
use logdog_proto::logdog::collector::logs_client::LogsClient;
use logdog_proto::logdog::collector::stream_refusal::Reason;
use logdog_proto::logdog::collector::{GetRequest, QueryRequest, WriteBundleRequest};
use logdog_proto::logpb::{self, log_entry::Content};
use prost::Message;
use tonic::Code;
use tonic::transport::Channel;

/// A collector process, killed when dropped.
struct Collector {
    child: Child,
    addr: String,
    _data: tempfile::TempDir,
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_collector() -> Collector {
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_logdog_collector"))
        .args(["--listen", "127.0.0.1:0", "--data"])
        .arg(data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("LOGDOG_COLLECTOR=")
        .expect("address line")
        .to_string();
    Collector {
        child,
        addr,
        _data: data,
    }
}

async fn clients(addr: &str) -> (CollectorClient<Channel>, LogsClient<Channel>) {
    let ch = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (
        CollectorClient::new(ch.clone()).max_encoding_message_size(64 << 20),
        LogsClient::new(ch),
    )
}

fn text_entry(i: u64, line: &str) -> logpb::LogEntry {
    logpb::LogEntry {
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
    }
}

fn bundle(name: &str, logs: Vec<logpb::LogEntry>, terminal: Option<u64>) -> logpb::ButlerLogBundle {
    logpb::ButlerLogBundle {
        project: "proj".into(),
        prefix: "pfx".into(),
        timestamp: Some(prost_types::Timestamp::default()),
        entries: vec![logpb::butler_log_bundle::Entry {
            desc: Some(logpb::LogStreamDescriptor {
                name: name.into(),
                content_type: "text/plain".into(),
                timestamp: Some(prost_types::Timestamp::default()),
                tags: [("k".to_string(), "v".to_string())].into(),
                ..Default::default()
            }),
            terminal: terminal.is_some(),
            terminal_index: terminal.unwrap_or(0),
            logs,
            ..Default::default()
        }],
        ..Default::default()
    }
}

async fn write(
    c: &mut CollectorClient<Channel>,
    b: &logpb::ButlerLogBundle,
) -> Result<(u32, u32), tonic::Status> {
    let r = c
        .write_bundle(WriteBundleRequest {
            bundle: b.encode_to_vec().into(),
        })
        .await?
        .into_inner();
    assert!(r.refused.is_empty(), "refused: {r:?}");
    Ok((r.stored, r.duplicates))
}

/// Writes a bundle of one stream that must be refused (alone, with an OK status); returns
/// the reason and message.
async fn refused(c: &mut CollectorClient<Channel>, b: &logpb::ButlerLogBundle) -> (i32, String) {
    let r = c
        .write_bundle(WriteBundleRequest {
            bundle: b.encode_to_vec().into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.refused.len(), 1, "{r:?}");
    assert_eq!(r.stored, 0, "{r:?}");
    (r.refused[0].reason, r.refused[0].message.clone())
}

async fn read_all(logs: &mut LogsClient<Channel>, name: &str) -> (String, bool) {
    let r = logs
        .get(GetRequest {
            project: "proj".into(),
            path: format!("pfx/+/{name}"),
            state: true,
            index: 0,
            byte_count: 0,
            log_count: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut text = String::new();
    for e in r.logs {
        if let Some(Content::Text(t)) = e.content {
            for l in t.lines {
                text.push_str(&String::from_utf8_lossy(&l.value));
                text.push_str(&l.delimiter);
            }
        }
    }
    (text, r.state.unwrap().complete)
}

#[tokio::test]
async fn bad_requests_get_errors_and_harm_no_other_stream() {
    let col = start_collector();
    let (mut c, mut logs) = clients(&col.addr).await;
    write(&mut c, &bundle("good", vec![text_entry(0, "before")], None))
        .await
        .unwrap();

    // The bundle itself is bad: an error status.
    let mut b = bundle("x", vec![text_entry(0, "a")], None);
    b.project = "Bad Project".into();
    let err = write(&mut c, &b).await.expect_err("bad project");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    // One stream is bad: that stream is refused (INVALID), the call succeeds.
    let mut cases: Vec<(&str, logpb::ButlerLogBundle)> = Vec::new();
    cases.push((
        "bad name",
        bundle("_bad//name", vec![text_entry(0, "a")], None),
    ));
    let mut b = bundle("huge", vec![text_entry(0, "a")], None);
    let d = b.entries[0].desc.as_mut().unwrap();
    for i in 0..3000 {
        d.tags.insert(format!("key{i}"), "v".repeat(60));
    }
    cases.push(("huge descriptor", b));
    cases.push((
        "index out of range",
        bundle("far", vec![text_entry(1 << 60, "a")], None),
    ));
    cases.push((
        "duplicate indices",
        bundle("dup", vec![text_entry(0, "a"), text_entry(0, "b")], None),
    ));
    cases.push((
        "index past terminal",
        bundle("term", vec![text_entry(5, "a")], Some(2)),
    ));
    let mut b = bundle("wrongtype", vec![text_entry(0, "a")], None);
    b.entries[0].desc.as_mut().unwrap().stream_type = logpb::StreamType::Binary as i32;
    cases.push(("content of the wrong type", b));
    for (what, b) in cases {
        let (reason, message) = refused(&mut c, &b).await;
        assert_eq!(reason, Reason::Invalid as i32, "{what}: {message}");
        assert!(!message.is_empty(), "{what}: no message");
    }
    // Not a bundle at all.
    let err = c
        .write_bundle(WriteBundleRequest {
            bundle: vec![0xff; 64].into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // A bundle over the size limit.
    let big = "x".repeat(17 << 20);
    let err = write(&mut c, &bundle("big", vec![text_entry(0, &big)], None))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.code(),
            Code::InvalidArgument | Code::ResourceExhausted | Code::OutOfRange
        ),
        "{err:?}"
    );
    // A terminal index that contradicts the stored one.
    write(&mut c, &bundle("t", vec![text_entry(0, "a")], Some(0)))
        .await
        .unwrap();
    let (reason, message) = refused(&mut c, &bundle("t", vec![], Some(3))).await;
    assert_eq!(reason, Reason::Conflict as i32, "{message}");
    assert!(message.contains("terminal index 3 differs"), "{message}");

    // The good stream is untouched and still takes data; nothing of the refused ones exists.
    write(
        &mut c,
        &bundle("good", vec![text_entry(1, "after")], Some(1)),
    )
    .await
    .unwrap();
    assert_eq!(
        read_all(&mut logs, "good").await,
        ("before\nafter\n".to_string(), true)
    );
    let listed = logs
        .query(QueryRequest {
            project: "proj".into(),
            path: "pfx".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = listed.streams.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(names, ["pfx/+/good", "pfx/+/t"]);
}

#[tokio::test]
async fn out_of_order_and_retried_bundles_store_each_entry_once() {
    let col = start_collector();
    let (mut c, mut logs) = clients(&col.addr).await;
    let late = bundle(
        "s",
        vec![text_entry(2, "two"), text_entry(3, "three")],
        Some(3),
    );
    let early = bundle("s", vec![text_entry(0, "zero"), text_entry(1, "one")], None);
    assert_eq!(write(&mut c, &late).await.unwrap(), (2, 0));
    // Terminal known, entries 0 and 1 missing: not complete, and reads stop at the gap.
    assert_eq!(read_all(&mut logs, "s").await, (String::new(), false));
    assert_eq!(write(&mut c, &early).await.unwrap(), (2, 0));
    // Retries of both are no-ops.
    assert_eq!(write(&mut c, &late).await.unwrap(), (0, 2));
    assert_eq!(write(&mut c, &early).await.unwrap(), (0, 2));
    assert_eq!(
        read_all(&mut logs, "s").await,
        ("zero\none\ntwo\nthree\n".to_string(), true)
    );
    // A stream that ended without data is known and complete.
    write(&mut c, &bundle("empty", vec![], Some(u64::MAX)))
        .await
        .unwrap();
    assert_eq!(read_all(&mut logs, "empty").await, (String::new(), true));
}
