//! The per-stream reader task.

use bytes::BytesMut;
use logdog_bundler::shell::StreamSink;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::{Source, Tee};

/// First read buffer of a stream.
const MIN_READ: usize = 4 * 1024;

/// Reads `reader` to the end, echoing to `tee` and appending to `sink`, then ends the stream.
/// Returns the read error that ended the stream early, if any. Stops early when `cancel`
/// turns true. Every byte read is added to `captured`.
///
/// A failing tee (say, the butler's own stdout was closed) is logged once and dropped; the
/// capture goes on. Stops early (as at end of file) when `cancel` turns true.
pub async fn pump(
    name: &str,
    mut reader: Source,
    mut tee: Option<Tee>,
    sink: StreamSink,
    mut cancel: watch::Receiver<bool>,
    captured: &std::sync::atomic::AtomicU64,
) -> Option<String> {
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
            () = stopped(&mut cancel) => {
                drain_ready(name, &mut reader, &sink, captured).await;
                break;
            }
            r = reader.read_buf(&mut buf) => r,
        };
        match read {
            Ok(0) => break,
            Ok(n) => {
                captured.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                if n >= size / 2 {
                    size = (size * 2).min(max);
                }
                let chunk = buf.split().freeze();
                if let Some(t) = tee.as_mut()
                    && let Err(e) = echo(t, &chunk).await
                {
                    tracing::warn!(stream = name, error = %e, "echo failed; capture continues");
                    tee = None;
                }
                if sink.write(chunk).await.is_err() {
                    // The bundler ended this stream (its error is in the stream's report).
                    return None;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(stream = name, error = %e, "read failed; ending the stream");
                sink.close().await;
                return Some(format!("read failed: {e}"));
            }
        }
    }
    sink.close().await;
    None
}

async fn echo(t: &mut Tee, data: &[u8]) -> std::io::Result<()> {
    t.write_all(data).await?;
    t.flush().await
}

/// Reads whatever the source has ready right now (without waiting) into the stream.
async fn drain_ready(
    name: &str,
    reader: &mut Source,
    sink: &StreamSink,
    captured: &std::sync::atomic::AtomicU64,
) {
    loop {
        let mut buf = BytesMut::with_capacity(sink.read_size());
        let ready = tokio::select! {
            biased;
            r = reader.read_buf(&mut buf) => r,
            () = std::future::ready(()) => return,
        };
        match ready {
            Ok(n) if n > 0 => {
                captured.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                if sink.write(buf.freeze()).await.is_err() {
                    return;
                }
            }
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(stream = name, error = %e, "read failed while stopping");
                return;
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

/// Read buffers for one stream, reused once every chunk cut from them has been dropped.
///
/// Chunks leave in the order they were read, so the oldest buffer is the first to come free.
/// Reusing it keeps the allocator from handing memory back to the system and faulting it in
/// again on every read, which at hundreds of MiB/s costs more than the reading itself.
#[derive(Default)]
struct Pool {
    spare: std::collections::VecDeque<BytesMut>,
}

/// Buffers a stream keeps around for reuse.
const POOL_SIZE: usize = 8;

impl Pool {
    /// Retires `used` (still referenced by chunks in flight) and returns a buffer with room
    /// for `size` bytes: the oldest retired one if it has come free, else a new one.
    fn next(&mut self, used: BytesMut, size: usize) -> BytesMut {
        if used.capacity() > 0 || !used.is_empty() {
            self.spare.push_back(used);
        }
        if let Some(mut oldest) = self.spare.pop_front() {
            oldest.clear();
            if oldest.try_reclaim(size) {
                return oldest;
            }
            if self.spare.len() + 1 < POOL_SIZE {
                self.spare.push_front(oldest);
            }
        }
        BytesMut::with_capacity(size)
    }
}
