//! Hostile clients against a real [`StreamServer`] on a real Unix socket: connections that
//! never speak, and handshakes that declare large headers and hold them. Whatever they do, the
//! server's memory stays bounded and a real stream still opens at once.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use logdog_streamserver::{NewStream, ServerStats, StreamServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

mod common;

use common::{MAGIC, connect, raise_nofile_limit, uvarint, wait_closed};

/// Overall limit for one test: a hang fails instead of blocking the suite.
const LIMIT: Duration = Duration::from_secs(120);

/// How long a real stream may take to arrive while hostile clients hold the server: far below
/// the handshake timeout the silent clients are given, so only eviction can let it in.
const AT_ONCE: Duration = Duration::from_secs(30);

const ONE_MIB: u64 = 1 << 20;

fn stream_bytes(json: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend(uvarint(json.len() as u64));
    out.extend_from_slice(json.as_bytes());
    out.extend_from_slice(payload);
    out
}

async fn within<F: std::future::Future>(body: F) -> F::Output {
    tokio::time::timeout(LIMIT, body)
        .await
        .expect("test timed out")
}

/// Polls `cond` until it holds, failing after a generous deadline.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + AT_ONCE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited too long: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Opens a real stream and checks that its bytes arrive at once.
async fn real_stream_arrives(path: &Path, rx: &mut mpsc::Receiver<NewStream>, name: &str) {
    let mut c = connect(path).await;
    let json = format!(r#"{{"name":"{name}"}}"#);
    c.write_all(&stream_bytes(&json, b"real bytes\n"))
        .await
        .expect("writing the real stream");
    c.shutdown().await.expect("half-closing the real stream");
    let NewStream {
        desc, mut reader, ..
    } = tokio::time::timeout(AT_ONCE, rx.recv())
        .await
        .expect("the real stream did not arrive at once")
        .expect("the server stopped");
    assert_eq!(desc.name, name);
    let mut payload = Vec::new();
    reader.read_to_end(&mut payload).await.expect("payload");
    assert_eq!(payload, b"real bytes\n");
}

fn rejected(stats: &ServerStats, kind: &str) -> u64 {
    stats.rejected().get(kind).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_thousand_silent_connections_do_not_lock_out_a_real_stream() {
    const SILENT: usize = 6000;
    let max_pending = logdog_streamserver::DEFAULT_MAX_PENDING_HANDSHAKES;
    // Both ends of every connection live in this process.
    raise_nofile_limit(2 * SILENT as u64 + 512);
    within(async {
        // Silent clients never time out during the test: only eviction can make room.
        let server = StreamServer::bind_private()
            .unwrap()
            .with_handshake_timeout(Duration::from_secs(3600));
        let path = server.path().to_owned();
        let stats = server.stats();
        let (tx, mut rx) = mpsc::channel(8);
        let (stop, stopped) = oneshot::channel::<()>();
        let run = tokio::spawn(server.run(tx, async move {
            let _ = stopped.await;
        }));

        let mut silent = Vec::with_capacity(SILENT);
        for _ in 0..SILENT {
            silent.push(connect(&path).await);
        }
        until("every silent connection accepted", || {
            stats.accepted() == SILENT as u64
        })
        .await;
        // The table holds the newest; each connection beyond it evicted the oldest.
        let over = (SILENT - max_pending) as u64;
        assert_eq!(rejected(&stats, "evicted"), over);
        wait_closed(&mut silent[0]).await;
        wait_closed(&mut silent[over as usize - 1]).await;

        real_stream_arrives(&path, &mut rx, "real").await;
        assert_eq!(rejected(&stats, "evicted"), over + 1);
        wait_closed(&mut silent[over as usize]).await;

        drop(silent);
        stop.send(()).unwrap();
        run.await.unwrap();
        assert_eq!(stats.streams(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_over_the_byte_budget_are_refused_and_counted() {
    within(async {
        let server = StreamServer::bind_private()
            .unwrap()
            .with_handshake_timeout(Duration::from_secs(3600))
            .with_handshake_budget(2 * ONE_MIB);
        let path = server.path().to_owned();
        let stats = server.stats();
        let (tx, mut rx) = mpsc::channel(8);
        let (stop, stopped) = oneshot::channel::<()>();
        let run = tokio::spawn(server.run(tx, async move {
            let _ = stopped.await;
        }));

        // Two clients declare 1 MiB headers and send only their start: they hold the budget.
        let mut holders = Vec::new();
        for _ in 0..2 {
            let mut c = connect(&path).await;
            let mut bytes = MAGIC.to_vec();
            bytes.extend(uvarint(ONE_MIB));
            bytes.extend_from_slice(b"{\"name\":");
            c.write_all(&bytes).await.unwrap();
            holders.push(c);
        }
        until("both holders counted", || {
            stats.handshake_bytes() == 2 * ONE_MIB
        })
        .await;

        // A third that does not fit is closed at once and counted.
        let mut over = connect(&path).await;
        let mut bytes = MAGIC.to_vec();
        bytes.extend(uvarint(ONE_MIB));
        let _ = over.write_all(&bytes).await;
        wait_closed(&mut over).await;
        assert_eq!(rejected(&stats, "handshake_budget"), 1);
        assert_eq!(stats.handshake_bytes(), 2 * ONE_MIB);

        // A holder that goes away gives its bytes back; a real stream fits again.
        let mut gone = holders.remove(0);
        gone.shutdown().await.unwrap();
        wait_closed(&mut gone).await;
        until("the budget given back", || {
            stats.handshake_bytes() == ONE_MIB
        })
        .await;
        real_stream_arrives(&path, &mut rx, "real").await;
        assert_eq!(stats.handshake_bytes(), ONE_MIB);

        drop(holders);
        until("the last holder gone", || stats.handshake_bytes() == 0).await;
        stop.send(()).unwrap();
        run.await.unwrap();
        assert_eq!(
            stats.rejected(),
            BTreeMap::from([("handshake_budget", 1), ("truncated", 2)])
        );
    })
    .await;
}

#[test]
fn the_handshake_budget_has_a_sane_default() {
    assert_eq!(logdog_streamserver::DEFAULT_HANDSHAKE_BUDGET, 64 * ONE_MIB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_holding_every_connection_slot_do_not_lock_out_a_real_stream() {
    // A low open-file limit: the connection limit is reached long before the pending table.
    const SLOTS: usize = 8;
    within(async {
        let server = StreamServer::bind_private()
            .unwrap()
            .with_handshake_timeout(Duration::from_secs(3600))
            .with_max_connections(SLOTS);
        let path = server.path().to_owned();
        let stats = server.stats();
        let (tx, mut rx) = mpsc::channel(8);
        let (stop, stopped) = oneshot::channel::<()>();
        let run = tokio::spawn(server.run(tx, async move {
            let _ = stopped.await;
        }));

        let mut silent = Vec::new();
        for _ in 0..SLOTS {
            silent.push(connect(&path).await);
        }
        until("every silent connection accepted", || {
            stats.accepted() == SLOTS as u64
        })
        .await;
        // The real stream is accepted by evicting the oldest silent connection.
        real_stream_arrives(&path, &mut rx, "real").await;
        assert_eq!(rejected(&stats, "evicted"), 1);
        wait_closed(&mut silent[0]).await;
        // And again, while the first real stream's slot is free again.
        real_stream_arrives(&path, &mut rx, "again").await;

        drop(silent);
        stop.send(()).unwrap();
        run.await.unwrap();
        assert_eq!(stats.streams(), 2);
    })
    .await;
}
