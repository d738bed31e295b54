//! The run record: a stream, `logdog/run`, of JSON lines saying what `run` ran and how it
//! ended.
//!
//! The first line is written when the command starts:
//! `{"event":"start","command":[...],"start":"RFC3339","host":"NAME","pid":1234}`; the last
//! once the command and its streams have ended, before the final flush:
//! `{"event":"end","end":"RFC3339","exit_code":0,"signal":null,"duration_secs":1.234,
//! "streams":3,"bytes_captured":1000,"lines_dropped":0}` (`exit_code` null and `signal` the
//! signal's name when the command was killed). Between them, every `run --heartbeat` (a
//! minute) while the command runs: `{"event":"alive","time":"RFC3339"}`. Readers must allow for a missing end line (the
//! run is still going, or the butler was killed) and for fields they do not know. Secrets
//! being masked are masked here too; no other policy applies to the stream.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::pin::Pin;
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Instant, SystemTime};

use logdog_butler::{LiveStats, StreamSource};
use logdog_proto::{StreamType, logpb};
use tokio::io::{AsyncRead, AsyncWriteExt, DuplexStream, ReadBuf};

/// The record's stream name.
pub const NAME: &str = "logdog/run";
/// Its content type.
pub const CONTENT_TYPE: &str = "application/x-ndjson";
/// The tag that marks it, as KEY, VALUE.
pub const TAG: (&str, &str) = ("logdog.kind", "run");

/// Room in the pipe between the record and its stream (a line is far smaller).
const BUFFER: usize = 64 * 1024;

/// The writing end of the record stream.
pub struct RunRecord {
    writer: Option<DuplexStream>,
    started: Instant,
    /// Bytes of the record the butler has read (counted among its captured bytes).
    read: Arc<AtomicU64>,
}

impl RunRecord {
    /// A record and the stream source to add to the butler for it.
    pub fn new() -> (Self, StreamSource) {
        let (writer, reader) = tokio::io::duplex(BUFFER);
        let desc = logpb::LogStreamDescriptor {
            name: NAME.into(),
            stream_type: StreamType::Text as i32,
            content_type: CONTENT_TYPE.into(),
            tags: [(TAG.0.to_string(), TAG.1.to_string())]
                .into_iter()
                .collect(),
            ..Default::default()
        };
        let read = Arc::new(AtomicU64::new(0));
        let record = Self {
            writer: Some(writer),
            started: Instant::now(),
            read: read.clone(),
        };
        let source = StreamSource {
            reader: Box::new(Counted {
                inner: reader,
                read,
            }),
            desc,
            tee: None,
        };
        (record, source)
    }

    /// A record that writes nothing (`--no-run-record`).
    pub fn disabled() -> Self {
        Self {
            writer: None,
            started: Instant::now(),
            read: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Whether it is written (its stream is one of the butler's).
    pub fn enabled(&self) -> bool {
        self.writer.is_some()
    }

    /// Writes the start line.
    pub async fn start(&mut self, command: &[OsString], pid: Option<u32>) {
        self.started = Instant::now();
        let line = serde_json::json!({
            "event": "start",
            "command": command.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>(),
            "start": rfc3339(SystemTime::now()),
            "host": logdog_outputs::gelf::local_host_name(),
            "pid": pid,
        });
        self.write(&line).await;
    }

    /// Writes an `alive` line: `{"event":"alive","time":"RFC3339"}`. Sent every
    /// `run --heartbeat` while the command runs, it keeps a quiet run's prefix from looking
    /// abandoned to the collector.
    pub async fn alive(&mut self) {
        let line = serde_json::json!({
            "event": "alive",
            "time": rfc3339(SystemTime::now()),
        });
        self.write(&line).await;
    }

    /// Writes the end line (`status` is `None` when the command's status is unknown) and
    /// ends the stream. `streams` counts every stream, the record included.
    pub async fn end(&mut self, status: Option<ExitStatus>, streams: usize, live: &LiveStats) {
        let (exit_code, signal) = match status {
            Some(s) => (s.code(), s.signal().map(signal_name)),
            None => (None, None),
        };
        let captured = live
            .bytes_captured
            .load(Ordering::Relaxed)
            .saturating_sub(self.read.load(Ordering::Relaxed));
        let line = serde_json::json!({
            "event": "end",
            "end": rfc3339(SystemTime::now()),
            "exit_code": exit_code,
            "signal": signal,
            "duration_secs": (self.started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
            "streams": streams,
            "bytes_captured": captured,
            "lines_dropped": live.lines_dropped.load(Ordering::Relaxed),
        });
        self.write(&line).await;
        if let Some(mut w) = self.writer.take() {
            let _ = w.shutdown().await;
        }
    }

    async fn write(&mut self, line: &serde_json::Value) {
        let Some(w) = self.writer.as_mut() else {
            return;
        };
        let mut text = line.to_string();
        text.push('\n');
        match w.write_all(text.as_bytes()).await {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot write the run record");
                self.writer = None;
            }
        }
    }
}

/// The record's reading end, counting what is read from it.
struct Counted {
    inner: DuplexStream,
    read: Arc<AtomicU64>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let n = buf.filled().len() - before;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }
}

/// `2026-11-26T23:51:37.123Z`.
fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// `SIGKILL` for 9; `SIG42` for a signal without a name.
fn signal_name(n: i32) -> String {
    nix::sys::signal::Signal::try_from(n)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("SIG{n}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_are_named() {
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(15), "SIGTERM");
        assert_eq!(signal_name(1000), "SIG1000");
    }
}
