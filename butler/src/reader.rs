//! The per-stream reader task.

use bytes::BytesMut;
use logdog_bundler::shell::StreamSink;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{Source, Tee};

/// Reads `reader` to the end, echoing to `tee` and appending to `sink`, then ends the stream.
/// Returns the read error that ended the stream early, if any.
///
/// A failing tee (say, the butler's own stdout was closed) is logged once and dropped; the
/// capture goes on.
pub async fn pump(
    name: &str,
    mut reader: Source,
    mut tee: Option<Tee>,
    sink: StreamSink,
) -> Option<String> {
    let read_size = sink.read_size();
    let mut buf = BytesMut::new();
    loop {
        if buf.capacity() < read_size / 4 {
            buf = BytesMut::with_capacity(read_size);
        }
        match reader.read_buf(&mut buf).await {
            Ok(0) => break,
            Ok(_) => {
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
