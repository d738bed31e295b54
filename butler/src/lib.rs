//! The Butler: owns a prefix's log streams and ships them through the bundler to an output.
//!
//! Pipeline: stream sources (a child's pipes, stream-server connections) → one reader task per
//! stream → [`logdog_bundler::shell`] → [`logdog_outputs::Output`].
//!
//! The [`Butler`] is an actor: a private task that owns the stream registry, and a cloneable
//! handle whose async methods send it commands over a bounded channel. Its API follows LogDog's
//! butler: [`add_stream`](Butler::add_stream), [`streams`](Butler::streams),
//! [`activate`](Butler::activate) and [`wait`](Butler::wait).
//!
//! # Layout
//! - [`config`]: [`ButlerConfig`] and descriptor validation.
//! - [`reader`]: the per-stream reader task (reads, echoes, appends to the bundler).

pub mod config;
pub mod reader;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::SystemTime;

use logdog_bundler::shell::{Handle as BundlerHandle, ShellTotals};
use logdog_bundler::{Finished, StreamStats};
use logdog_outputs::{Output, OutputStats};
use logdog_proto::logpb;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};

pub use config::{ButlerConfig, ConfigError};

/// Anything a stream can be read from.
pub type Source = Box<dyn AsyncRead + Send + Unpin>;
/// Where a stream's bytes are echoed, if anywhere.
pub type Tee = Box<dyn AsyncWrite + Send + Unpin>;

/// Errors from the butler.
#[derive(Debug, thiserror::Error)]
pub enum ButlerError {
    /// The descriptor or the configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A stream with this name was registered before (names are never reused).
    #[error("duplicate stream name {0:?}: a stream with this name was already registered")]
    Duplicate(String),
    /// The bundler refused the stream.
    #[error("stream {name:?} refused: {reason}")]
    Refused {
        /// The stream.
        name: String,
        /// Why.
        reason: String,
    },
    /// The butler has finished and takes no more streams.
    #[error("butler has stopped")]
    Stopped,
}

/// A stream to add: where its bytes come from and what it is.
pub struct StreamSource {
    /// The bytes.
    pub reader: Source,
    /// The descriptor; `prefix` is ignored, an empty content type gets the type's default and
    /// a missing timestamp is set to the time the stream is added.
    pub desc: logpb::LogStreamDescriptor,
    /// Where to echo the bytes as they are read (the butler's own stdout, say).
    pub tee: Option<Tee>,
}

impl std::fmt::Debug for StreamSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSource")
            .field("desc", &self.desc)
            .finish_non_exhaustive()
    }
}

/// How one stream ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StreamReport {
    /// The stream's name.
    pub name: String,
    /// Bytes read from the source.
    pub bytes_read: u64,
    /// Payload bytes put into bundles.
    pub bytes_sent: u64,
    /// Log entries cut.
    pub entries: u64,
    /// Bytes lost to a stream error (a bad datagram header, a read error).
    pub bytes_dropped: u64,
    /// What went wrong, if anything.
    pub error: Option<String>,
}

impl StreamReport {
    fn new(f: Finished, read_error: Option<String>) -> Self {
        let StreamStats {
            bytes_in,
            bytes_out,
            entries,
            dropped_bytes,
            ..
        } = f.stats;
        Self {
            name: f.name,
            bytes_read: bytes_in,
            bytes_sent: bytes_out,
            entries,
            bytes_dropped: dropped_bytes,
            error: f.error.or(read_error),
        }
    }
}

/// What the butler did, returned by [`Butler::wait`].
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    /// Every stream, by name.
    pub streams: BTreeMap<String, StreamReport>,
    /// The output's counters at the end.
    pub output: OutputStats,
    /// Bundles cut.
    pub bundles: u64,
    /// Bundles the output failed to deliver.
    pub failed_bundles: u64,
}

enum Command {
    Add(StreamSource, oneshot::Sender<Result<(), ButlerError>>),
    Streams(oneshot::Sender<Vec<String>>),
    Activate,
    Wait(oneshot::Sender<Report>),
    Done(StreamReport),
}

/// Handle to a running butler. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Butler {
    tx: mpsc::Sender<Command>,
}

impl Butler {
    /// Validates the configuration and starts the butler and its bundler on the current
    /// tokio runtime.
    ///
    /// # Errors
    /// An invalid project, prefix or global tag.
    pub fn spawn(cfg: ButlerConfig, output: Arc<dyn Output>) -> Result<Butler, ButlerError> {
        cfg.validate()?;
        let bundler_cfg = cfg.bundler_config(output.max_bundle_size());
        let (bundler, shell) = BundlerHandle::spawn(bundler_cfg, output.clone());
        let (tx, rx) = mpsc::channel(64);
        let actor = Actor {
            rx,
            me: tx.downgrade(),
            cfg,
            output,
            bundler: Some(bundler),
            shell: Some(shell),
            names: BTreeSet::new(),
            running: 0,
            activated: false,
            waiters: Vec::new(),
            report: Report::default(),
            finished: None,
        };
        tokio::spawn(actor.run());
        Ok(Butler { tx })
    }

    /// Adds a stream. The butler reads it to the end (or until it fails) and then closes it.
    ///
    /// # Errors
    /// An invalid descriptor, a name used before, or a butler that has stopped.
    pub async fn add_stream(&self, src: StreamSource) -> Result<(), ButlerError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Add(src, tx))
            .await
            .map_err(|_| ButlerError::Stopped)?;
        rx.await.map_err(|_| ButlerError::Stopped)?
    }

    /// Names of every stream ever added, sorted.
    pub async fn streams(&self) -> Vec<String> {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Streams(tx)).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Lets the butler finish once no stream is running. Until then it keeps running however
    /// many streams end. Idempotent.
    pub async fn activate(&self) {
        let _ = self.tx.send(Command::Activate).await;
    }

    /// Waits until the butler is activated, every stream has ended, and everything has been
    /// handed to the output. The output itself is not closed: that is the caller's job.
    ///
    /// # Errors
    /// Only if the butler's task died.
    pub async fn wait(&self) -> Result<Report, ButlerError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Wait(tx))
            .await
            .map_err(|_| ButlerError::Stopped)?;
        rx.await.map_err(|_| ButlerError::Stopped)
    }
}

struct Actor {
    rx: mpsc::Receiver<Command>,
    /// For reader tasks to report back, without keeping the actor alive.
    me: mpsc::WeakSender<Command>,
    cfg: ButlerConfig,
    output: Arc<dyn Output>,
    bundler: Option<BundlerHandle>,
    shell: Option<tokio::task::JoinHandle<ShellTotals>>,
    /// Every name ever registered: LogDog never lets a name be reused.
    names: BTreeSet<String>,
    running: usize,
    activated: bool,
    waiters: Vec<oneshot::Sender<Report>>,
    report: Report,
    finished: Option<Report>,
}

impl Actor {
    async fn run(mut self) {
        while let Some(cmd) = self.rx.recv().await {
            match cmd {
                Command::Add(src, reply) => {
                    let res = self.add(src).await;
                    let _ = reply.send(res);
                }
                Command::Streams(reply) => {
                    let _ = reply.send(self.names.iter().cloned().collect());
                }
                Command::Activate => self.activated = true,
                Command::Wait(reply) => match &self.finished {
                    Some(r) => {
                        let _ = reply.send(r.clone());
                    }
                    None => self.waiters.push(reply),
                },
                Command::Done(r) => {
                    self.running -= 1;
                    self.report.streams.insert(r.name.clone(), r);
                }
            }
            if self.activated
                && self.running == 0
                && self.finished.is_none()
                && !self.waiters.is_empty()
            {
                self.finish().await;
            }
        }
    }

    /// Shuts the bundler down (it flushes), then answers every waiter.
    async fn finish(&mut self) {
        self.bundler = None;
        if let Some(shell) = self.shell.take() {
            match shell.await {
                Ok(t) => {
                    self.report.bundles = t.bundles;
                    self.report.failed_bundles = t.failed_bundles;
                }
                Err(e) => tracing::error!(error = %e, "bundler task failed"),
            }
        }
        self.report.output = self.output.stats();
        let report = self.report.clone();
        for w in self.waiters.drain(..) {
            let _ = w.send(report.clone());
        }
        self.finished = Some(report);
    }

    async fn add(&mut self, src: StreamSource) -> Result<(), ButlerError> {
        let Some(bundler) = self.bundler.as_ref() else {
            return Err(ButlerError::Stopped);
        };
        let desc = self.cfg.prepare_descriptor(src.desc, SystemTime::now())?;
        let name = desc.name.clone();
        if self.names.contains(&name) {
            tracing::warn!(stream = %name, "refused a stream: duplicate name");
            return Err(ButlerError::Duplicate(name));
        }
        let (sink, done) = bundler
            .register(desc)
            .await
            .map_err(|e| ButlerError::Refused {
                name: name.clone(),
                reason: e.to_string(),
            })?;
        self.names.insert(name.clone());
        self.running += 1;
        let me = self.me.clone();
        tokio::spawn(async move {
            let read_error = reader::pump(&name, src.reader, src.tee, sink).await;
            let report = match done.await {
                Ok(f) => StreamReport::new(f, read_error),
                Err(_) => StreamReport {
                    name,
                    bytes_read: 0,
                    bytes_sent: 0,
                    entries: 0,
                    bytes_dropped: 0,
                    error: Some("bundler stopped before the stream finished".into()),
                },
            };
            if let Some(me) = me.upgrade() {
                let _ = me.send(Command::Done(report)).await;
            }
        });
        Ok(())
    }
}
