//! Tests of the async bundler shell ([`Handle`]) against in-memory outputs.
//!
//! Tests that depend on time run on a paused tokio clock: sleeping advances it only once every
//! task is idle, so the shell's buffer-age wake-ups happen at exact, repeatable moments and no
//! test sleeps to synchronise.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use logdog_bundler::shell::{EntryCallback, Handle, ShellError};
use logdog_bundler::{Config, Finished};
use logdog_outputs::{MemoryOutput, Output, OutputError, OutputStats};
use logdog_proto::bundle::text_lines;
use logdog_proto::{Bundle, StreamType, logpb};
use tokio::sync::Semaphore;

fn descriptor(name: &str, kind: StreamType) -> logpb::LogStreamDescriptor {
    logpb::LogStreamDescriptor {
        name: name.into(),
        stream_type: kind as i32,
        content_type: logdog_proto::default_content_type(kind).into(),
        ..Default::default()
    }
}

fn config(max_bundle_size: usize) -> Config {
    Config {
        project: "proj".into(),
        prefix: "pfx".into(),
        max_bundle_size,
        max_buffer_age: Duration::from_secs(2),
        max_buffered_bytes: 64 * 1024,
        read_size: 4096,
        flush_timeout: std::time::Duration::from_secs(60),
    }
}

fn frame(datagrams: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for d in datagrams {
        prost::encoding::encode_varint(d.len() as u64, &mut out);
        out.extend_from_slice(d);
    }
    out
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(17).wrapping_add(seed))
        .collect()
}

fn check_bundles(out: &MemoryOutput, max: usize) {
    for b in out.bundles() {
        assert!(!b.entries.is_empty(), "an empty bundle was sent");
        assert!(b.encoded_len() <= max, "bundle over the limit");
    }
}

#[tokio::test]
async fn streams_reassemble_after_shutdown() {
    let out = MemoryOutput::new(4096);
    let (handle, task) = Handle::spawn(config(4096), Arc::new(out.clone()));

    let text: Vec<u8> = (0..2000)
        .flat_map(|i| format!("line {i}: {}\r\n", "é".repeat(i % 40)).into_bytes())
        .chain(b"no newline at the end".iter().copied())
        .collect();
    let binary = pattern(200_000, 3);
    let datagrams = vec![
        Vec::new(),
        pattern(10, 1),
        pattern(10_000, 2),
        pattern(3000, 4),
        Vec::new(),
    ];

    // The text stream's callback records what it sees: entries, then `None` once.
    let seen = Arc::new(std::sync::Mutex::new((Vec::<u64>::new(), 0usize)));
    let callback: EntryCallback = Box::new({
        let seen = seen.clone();
        move |e: Option<&logpb::LogEntry>| {
            let mut s = seen.lock().unwrap();
            assert_eq!(s.1, 0, "callback called after the end marker");
            match e {
                Some(e) => s.0.push(e.stream_index),
                None => s.1 += 1,
            }
        }
    });
    let (t_sink, t_done) = handle
        .register(descriptor("a/text", StreamType::Text), Some(callback))
        .await
        .unwrap();
    let (b_sink, b_done) = handle
        .register(descriptor("b/binary", StreamType::Binary), None)
        .await
        .unwrap();
    let (d_sink, d_done) = handle
        .register(descriptor("c/datagram", StreamType::Datagram), None)
        .await
        .unwrap();
    let (e_sink, e_done) = handle
        .register(descriptor("d/empty", StreamType::Text), None)
        .await
        .unwrap();
    assert!(matches!(
        handle
            .register(descriptor("a/text", StreamType::Text), None)
            .await,
        Err(ShellError::Register(_))
    ));

    let writers = [
        tokio::spawn({
            let data = Bytes::from(text.clone());
            async move {
                // Odd-sized writes, so chunks end anywhere (inside characters, inside `\r\n`).
                let mut data = data;
                while !data.is_empty() {
                    let n = data.len().min(777);
                    t_sink.write(data.split_to(n)).await.unwrap();
                }
                t_sink.close().await;
            }
        }),
        tokio::spawn({
            let data = Bytes::from(binary.clone());
            async move {
                b_sink.write(data).await.unwrap();
                b_sink.close().await;
            }
        }),
        tokio::spawn({
            let data = Bytes::from(frame(&datagrams));
            async move {
                d_sink.write(data).await.unwrap();
                // Dropping a sink also ends its stream.
                drop(d_sink);
            }
        }),
        tokio::spawn(async move { e_sink.close().await }),
    ];
    for w in writers {
        w.await.unwrap();
    }
    drop(handle);
    let totals = task.await.unwrap();

    assert_eq!(totals.bundles, out.bundles().len() as u64);
    assert_eq!(totals.failed_bundles, 0);
    check_bundles(&out, 4096);
    assert_eq!(out.stream_bytes("a/text").unwrap(), text);
    assert_eq!(out.stream_bytes("b/binary").unwrap(), binary);
    assert_eq!(out.datagrams("c/datagram").unwrap(), datagrams);
    assert_eq!(out.stream_bytes("d/empty").unwrap(), b"");
    {
        let s = seen.lock().unwrap();
        let want: Vec<u64> = (0..out.entries("a/text").len() as u64).collect();
        assert_eq!(s.0, want, "the callback sees every entry in order");
        assert_eq!(s.1, 1, "and the end once");
    }
    for (name, done) in [
        ("a/text", t_done),
        ("b/binary", b_done),
        ("c/datagram", d_done),
        ("d/empty", e_done),
    ] {
        let f: Finished = done.await.expect("finished report");
        assert_eq!(f.name, name);
        assert_eq!(f.error, None);
        let entries = out.entries(name);
        assert_eq!(f.stats.entries, entries.len() as u64);
        let want = (entries.len() as u64).checked_sub(1).unwrap_or(u64::MAX);
        assert_eq!(out.terminal_index(name), Some(want), "{name}");
    }
}

#[tokio::test(start_paused = true)]
async fn partial_line_goes_out_at_the_buffer_age() {
    let age = Duration::from_secs(2);
    let out = MemoryOutput::new(64 * 1024);
    let (handle, task) = Handle::spawn(
        Config {
            max_buffer_age: age,
            ..config(64 * 1024)
        },
        Arc::new(out.clone()),
    );
    let (sink, done) = handle
        .register(descriptor("t", StreamType::Text), None)
        .await
        .unwrap();
    sink.write(Bytes::from_static(b"complete\npartial"))
        .await
        .unwrap();

    tokio::time::sleep(age - Duration::from_millis(10)).await;
    assert_eq!(
        out.stream_bytes("t").as_deref(),
        Some(&b"complete\n"[..]),
        "the complete line goes at once, the partial one waits"
    );

    tokio::time::sleep(Duration::from_millis(11)).await;
    assert_eq!(
        out.stream_bytes("t").as_deref(),
        Some(&b"complete\npartial"[..]),
        "the partial line goes at the age, without a flush"
    );
    let last = out.entries("t").pop().unwrap();
    let lines: Vec<_> = text_lines(last.content.data()).collect();
    assert_eq!(lines, [(&b"partial"[..], "")]);
    assert_eq!(out.terminal_index("t"), None, "the stream is still open");

    // More of the same line goes out at its own age.
    sink.write(Bytes::from_static(b" and the rest\n"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(
        out.stream_bytes("t").as_deref(),
        Some(&b"complete\npartial and the rest\n"[..])
    );

    sink.close().await;
    drop(handle);
    task.await.unwrap();
    assert_eq!(done.await.unwrap().error, None);
    assert_eq!(out.terminal_index("t"), Some(2));
}

/// An output whose sends wait until the test opens a gate.
#[derive(Debug)]
struct GatedOutput {
    inner: MemoryOutput,
    gate: Arc<Semaphore>,
    entered: AtomicUsize,
    /// What [`Output::holds_sends`] answers.
    holds: bool,
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

// Written out by hand (this is what `#[async_trait]` generates), to keep the dependencies as
// they are.
impl Output for GatedOutput {
    fn send<'life0, 'async_trait>(
        &'life0 self,
        bundle: Bundle,
    ) -> BoxFuture<'async_trait, Result<(), OutputError>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            self.entered.fetch_add(1, Ordering::SeqCst);
            self.gate
                .acquire()
                .await
                .map_err(|_| OutputError::Closed)?
                .forget();
            self.inner.send(bundle).await
        })
    }

    fn max_bundle_size(&self) -> usize {
        self.inner.max_bundle_size()
    }

    fn holds_sends(&self) -> bool {
        self.holds
    }

    fn stats(&self) -> OutputStats {
        self.inner.stats()
    }

    fn close<'life0, 'async_trait>(&'life0 self) -> BoxFuture<'async_trait, Result<(), OutputError>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move { self.inner.close().await })
    }
}

#[tokio::test(start_paused = true)]
async fn blocked_output_blocks_writers_without_loss() {
    let inner = MemoryOutput::new(64 * 1024);
    let output = Arc::new(GatedOutput {
        inner: inner.clone(),
        gate: Arc::new(Semaphore::new(0)),
        entered: AtomicUsize::new(0),
        holds: false,
    });
    let cfg = Config {
        max_buffered_bytes: 1024,
        read_size: 256,
        flush_timeout: std::time::Duration::from_secs(60),
        ..config(64 * 1024)
    };
    let (handle, task) = Handle::spawn(cfg, output.clone());
    let (sink, done) = handle
        .register(descriptor("bin", StreamType::Binary), None)
        .await
        .unwrap();
    let data = pattern(64 * 1024, 9);
    let writer = tokio::spawn({
        let data = Bytes::from(data.clone());
        async move {
            sink.write(data).await.unwrap();
            sink.close().await;
        }
    });

    // Far longer than the buffer age: nothing moves while the output is stuck.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(!writer.is_finished(), "the writer must wait for room");
    assert_eq!(
        output.entered.load(Ordering::SeqCst),
        1,
        "one send at a time"
    );
    assert!(inner.bundles().is_empty());

    output.gate.add_permits(1_000_000);
    tokio::time::timeout(Duration::from_secs(60), writer)
        .await
        .expect("the writer finishes once the output moves")
        .unwrap();
    drop(handle);
    let totals = task.await.unwrap();
    assert_eq!(totals.failed_bundles, 0);
    assert_eq!(inner.stream_bytes("bin").unwrap(), data, "nothing dropped");
    let f = done.await.unwrap();
    assert_eq!(f.stats.dropped_bytes, 0);
    assert!(
        inner.bundles().len() > 1,
        "the writer had to wait: bytes came in several bundles"
    );
}

#[tokio::test(start_paused = true)]
async fn bad_datagram_header_ends_the_stream() {
    let out = MemoryOutput::new(64 * 1024);
    let (handle, task) = Handle::spawn(config(64 * 1024), Arc::new(out.clone()));
    let (sink, done) = handle
        .register(descriptor("dg", StreamType::Datagram), None)
        .await
        .unwrap();
    let mut data = frame(&[b"fine".to_vec()]);
    data.extend_from_slice(&[0xFF; 10]); // overflows a 64-bit varint
    sink.write(Bytes::from(data)).await.unwrap();
    let f = done.await.expect("the stream ends by itself");
    assert!(f.error.is_some());
    assert_eq!(f.stats.dropped_bytes, 10);
    assert_eq!(out.datagrams("dg").unwrap(), [b"fine".to_vec()]);
    assert_eq!(out.terminal_index("dg"), Some(0));
    // A writer that goes on is told to stop.
    let more = Bytes::from(vec![0u8; 1 << 20]);
    assert!(matches!(
        sink.write(more).await,
        Err(ShellError::StreamClosed)
    ));
    drop(sink);
    drop(handle);
    task.await.unwrap();
}

/// Out-of-range settings (a zero read size, a buffer smaller than one read) must neither spin
/// nor block a writer forever.
#[tokio::test(start_paused = true)]
async fn odd_settings_do_not_hang() {
    for (read_size, max_buffered_bytes) in [(0, 0), (4096, 100), (100, 100)] {
        let out = MemoryOutput::new(4096);
        let (handle, task) = Handle::spawn(
            Config {
                read_size,
                max_buffered_bytes,
                ..config(4096)
            },
            Arc::new(out.clone()),
        );
        let (sink, _done) = handle
            .register(descriptor("t", StreamType::Text), None)
            .await
            .unwrap();
        // 100-byte reads end inside `é`, which the core holds back.
        let data: Vec<u8> = b"x"
            .iter()
            .chain("é".repeat(5000).as_bytes())
            .copied()
            .collect();
        let run = async {
            sink.write(Bytes::from(data.clone())).await.unwrap();
            sink.close().await;
            drop(handle);
            task.await.unwrap()
        };
        tokio::time::timeout(Duration::from_secs(600), run)
            .await
            .unwrap_or_else(|_| {
                panic!("hung with read_size {read_size}, max {max_buffered_bytes}")
            });
        assert_eq!(out.stream_bytes("t").unwrap(), data);
        check_bundles(&out, 4096);
    }
}

#[tokio::test(start_paused = true)]
async fn unacknowledged_sends_are_given_up_after_the_flush_timeout() {
    let inner = MemoryOutput::new(64 * 1024);
    // A gate that never opens: an output that never acknowledges (a collector that is down).
    let output = Arc::new(GatedOutput {
        inner: inner.clone(),
        gate: Arc::new(Semaphore::new(0)),
        entered: AtomicUsize::new(0),
        holds: false,
    });
    let cfg = Config {
        flush_timeout: Duration::from_secs(10),
        ..config(64 * 1024)
    };
    let (handle, task) = Handle::spawn(cfg, output.clone());
    let (sink, done) = handle
        .register(descriptor("t", StreamType::Text), None)
        .await
        .unwrap();
    sink.write(Bytes::from_static(b"one\ntwo\n")).await.unwrap();
    sink.close().await;
    drop(handle);
    let started = tokio::time::Instant::now();
    let totals = task.await.unwrap();
    // The shell waited the flush timeout (paused time jumps there), then gave up.
    assert!(started.elapsed() >= Duration::from_secs(10));
    assert!(totals.failed_bundles >= 1, "{totals:?}");
    assert_eq!(totals.undelivered.get("t"), Some(&8));
    let fin: Finished = done.await.unwrap();
    assert!(!fin.delivered);
    assert!(inner.bundles().is_empty());
}

#[tokio::test(start_paused = true)]
async fn sends_an_output_holds_are_not_given_up_at_the_flush_timeout() {
    let inner = MemoryOutput::new(64 * 1024);
    // An output that keeps its bundles while it waits (a spool waiting for disk space).
    let gate = Arc::new(Semaphore::new(0));
    let output = Arc::new(GatedOutput {
        inner: inner.clone(),
        gate: gate.clone(),
        entered: AtomicUsize::new(0),
        holds: true,
    });
    let cfg = Config {
        flush_timeout: Duration::from_secs(10),
        ..config(64 * 1024)
    };
    let (handle, task) = Handle::spawn(cfg, output.clone());
    let (sink, done) = handle
        .register(descriptor("t", StreamType::Text), None)
        .await
        .unwrap();
    sink.write(Bytes::from_static(b"one\ntwo\n")).await.unwrap();
    sink.close().await;
    drop(handle);
    // Well past the flush timeout (paused time jumps there), room is made.
    tokio::time::sleep(Duration::from_secs(100)).await;
    assert!(
        !task.is_finished(),
        "the shell gave up a bundle the output held"
    );
    gate.add_permits(1000);
    let totals = task.await.unwrap();
    assert_eq!(totals.failed_bundles, 0, "{totals:?}");
    assert!(totals.undelivered.is_empty(), "{totals:?}");
    let fin: Finished = done.await.unwrap();
    assert!(fin.delivered);
    let got: Vec<u8> = inner
        .bundles()
        .iter()
        .flat_map(|b| b.entries.iter())
        .flat_map(|e| e.logs.iter())
        .flat_map(|l| l.content.data().to_vec())
        .collect();
    assert_eq!(got, b"one\ntwo\n");
}
