//! The per-stream reader task.

use bytes::{Bytes, BytesMut};
use logdog_bundler::shell::StreamSink;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::policy::{Chain, PolicyCounts};
use crate::pool::Pool;
use crate::{Source, Tee};

/// First read buffer of a stream.
const MIN_READ: usize = 4 * 1024;

/// What [`pump`] reports about a stream.
#[derive(Debug, Default)]
pub struct Pumped {
    /// The read error that ended the stream early, if any.
    pub error: Option<String>,
    /// What the policies did.
    pub policy: PolicyCounts,
    /// With policies: the bytes read from the source (the bundler only sees what they let
    /// through).
    pub bytes_read: Option<u64>,
}

/// Reads `reader` to the end, through the policies of `chain` if any, echoing to `tee` and
/// appending to `sink`, then ends the stream. Returns the read error that ended the stream
/// early, if any, and what the policies did. Stops early when `cancel` turns true. Every byte
/// read is added to `captured`.
///
/// The echo gets what the mask stage lets through (secrets masked, nothing filtered). Without
/// a chain, chunks go to the echo and the bundler as they were read.
///
/// A failing tee (say, the butler's own stdout was closed) is logged once and dropped; the
/// capture goes on. Stops early (as at end of file) when `cancel` turns true.
pub async fn pump(
    name: &str,
    mut reader: Source,
    mut tee: Option<Tee>,
    sink: StreamSink,
    mut chain: Option<Chain>,
    mut cancel: watch::Receiver<bool>,
    captured: &std::sync::atomic::AtomicU64,
) -> Pumped {
    let counter = std::sync::atomic::AtomicU64::new(0);
    let counted = Counted {
        total: captured,
        mine: &counter,
    };
    let error = pump_inner(
        name,
        &mut reader,
        &mut tee,
        &sink,
        &mut chain,
        &mut cancel,
        &counted,
    )
    .await;
    let error = match error {
        Ended::SinkGone => None,
        Ended::Ended(e) => {
            let e = match drain_chain(name, &mut chain, &mut tee, &sink).await {
                Ok(()) => e,
                Err(de) => e.or(de),
            };
            sink.close().await;
            e
        }
    };
    Pumped {
        error,
        policy: chain.as_ref().map(Chain::counts).unwrap_or_default(),
        bytes_read: chain
            .is_some()
            .then(|| counter.load(std::sync::atomic::Ordering::Relaxed)),
    }
}

/// Adds bytes read to the butler's total and the stream's own.
struct Counted<'a> {
    total: &'a std::sync::atomic::AtomicU64,
    mine: &'a std::sync::atomic::AtomicU64,
}

impl Counted<'_> {
    fn add(&self, n: usize) {
        self.total
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        self.mine
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

/// How the reading ended.
enum Ended {
    /// The bundler ended the stream.
    SinkGone,
    /// End of file, a shutdown, or a read error.
    Ended(Option<String>),
}

/// Lets the chain release what it holds, once the stream has ended.
async fn drain_chain(
    name: &str,
    chain: &mut Option<Chain>,
    tee: &mut Option<Tee>,
    sink: &StreamSink,
) -> Result<(), Option<String>> {
    let Some(c) = chain.as_mut() else {
        return Ok(());
    };
    c.set_echo(tee.is_some());
    loop {
        let more = match c.drain(sink.read_size(), std::time::Instant::now()) {
            Ok(more) => more,
            Err(e) => {
                tracing::warn!(stream = name, error = %e, "a policy failed at the end of the stream");
                return Err(Some(format!("policy failed at the end of the stream: {e}")));
            }
        };
        echo_or_drop(name, tee, c.echo()).await;
        if !c.out().is_empty() && sink.write(c.out_chunk()).await.is_err() {
            return Err(None);
        }
        if !more {
            return Ok(());
        }
    }
}

/// Echoes `data` to `tee`, dropping the tee if that fails.
async fn echo_or_drop(name: &str, tee: &mut Option<Tee>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    if let Some(t) = tee.as_mut()
        && let Err(e) = echo(t, data).await
    {
        tracing::warn!(stream = name, error = %e, "echo failed; capture continues");
        *tee = None;
    }
}

/// Sends one chunk read: through the chain if there is one, to the echo and the bundler.
/// Fails when the bundler ended the stream.
async fn forward(
    name: &str,
    chunk: Bytes,
    chain: &mut Option<Chain>,
    tee: &mut Option<Tee>,
    sink: &StreamSink,
) -> Result<(), ()> {
    match chain.as_mut() {
        None => {
            echo_or_drop(name, tee, &chunk).await;
            sink.write(chunk).await.map_err(|_| ())
        }
        Some(c) => {
            c.set_echo(tee.is_some());
            c.push(&chunk, std::time::Instant::now());
            drop(chunk);
            echo_or_drop(name, tee, c.echo()).await;
            if c.out().is_empty() {
                return Ok(());
            }
            sink.write(c.out_chunk()).await.map_err(|_| ())
        }
    }
}

async fn pump_inner(
    name: &str,
    reader: &mut Source,
    tee: &mut Option<Tee>,
    sink: &StreamSink,
    chain: &mut Option<Chain>,
    cancel: &mut watch::Receiver<bool>,
    captured: &Counted<'_>,
) -> Ended {
    // Buffers start small and double while reads fill them, up to the sink's read size: a
    // quiet stream (one of thousands) holds little memory, a busy one reads in big chunks.
    let max = sink.read_size();
    let mut size = MIN_READ.min(max);
    let mut buf = BytesMut::new();
    let mut pool = Pool::default();
    loop {
        if buf.capacity() < size / 4 {
            buf = pool.next(std::mem::take(&mut buf), size);
        }
        let read = tokio::select! {
            biased;
            // A shutdown stops reading once what is already there has been taken.
            () = stopped(cancel) => {
                if !drain_ready(name, reader, sink, chain, captured).await {
                    return Ended::SinkGone;
                }
                break;
            }
            r = reader.read_buf(&mut buf) => r,
        };
        match read {
            Ok(0) => break,
            Ok(n) => {
                captured.add(n);
                if n >= size / 2 {
                    size = (size * 2).min(max);
                }
                let chunk = buf.split().freeze();
                if forward(name, chunk, chain, tee, sink).await.is_err() {
                    // The bundler ended this stream (its error is in the stream's report).
                    return Ended::SinkGone;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(stream = name, error = %e, "read failed; ending the stream");
                return Ended::Ended(Some(format!("read failed: {e}")));
            }
        }
    }
    Ended::Ended(None)
}

async fn echo(t: &mut Tee, data: &[u8]) -> std::io::Result<()> {
    t.write_all(data).await?;
    t.flush().await
}

/// Reads whatever the source has ready right now (without waiting) into the stream (not
/// echoed). Returns false when the bundler ended the stream.
async fn drain_ready(
    name: &str,
    reader: &mut Source,
    sink: &StreamSink,
    chain: &mut Option<Chain>,
    captured: &Counted<'_>,
) -> bool {
    loop {
        let mut buf = BytesMut::with_capacity(sink.read_size());
        let ready = tokio::select! {
            biased;
            r = reader.read_buf(&mut buf) => r,
            () = std::future::ready(()) => return true,
        };
        match ready {
            Ok(n) if n > 0 => {
                captured.add(n);
                if forward(name, buf.freeze(), chain, &mut None, sink)
                    .await
                    .is_err()
                {
                    return false;
                }
            }
            Ok(_) => return true,
            Err(e) => {
                tracing::warn!(stream = name, error = %e, "read failed while stopping");
                return true;
            }
        }
    }
}

/// Resolves once `cancel` turns true (never, if its sender is gone).
async fn stopped(cancel: &mut watch::Receiver<bool>) {
    let told = cancel.wait_for(|c| *c).await.is_ok();
    if !told {
        std::future::pending::<()>().await;
    }
}
