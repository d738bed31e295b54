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
//! - [`reader`]: the per-stream reader task (reads, applies the policies, echoes, appends to
//!   the bundler).
//! - [`policy`]: masking, filters, rate limit and head+tail cap of text streams.

pub mod callbacks;
pub mod config;
pub mod policy;
mod pool;
pub mod reader;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::SystemTime;

use logdog_bundler::shell::{Handle as BundlerHandle, ShellTotals};
use logdog_bundler::{Finished, StreamStats};
use logdog_outputs::{Output, OutputStats};
use logdog_proto::handshake::Verdict;
use logdog_proto::logpb;
use logdog_streamserver::{NewStream, ServerStats, StreamServer, count_rejection};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, watch};

pub use callbacks::{EntryCallback, RegistrationCallback};
pub use config::{ButlerConfig, ConfigError, DEFAULT_MAX_STREAMS};
pub use policy::{PolicyConfig, PolicyCounts};

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
    /// The stream's name lies in a namespace that was drained.
    #[error("stream {name:?} refused: namespace {namespace:?} is closed")]
    NamespaceClosed {
        /// The stream.
        name: String,
        /// The closed namespace.
        namespace: String,
    },
    /// The butler has finished and takes no more streams.
    #[error("butler has stopped")]
    Stopped,
    /// [`ButlerConfig::max_streams`] streams were already open.
    #[error("stream {name:?} refused: {limit} streams already open (the butler's --max-streams)")]
    TooManyStreams {
        /// The stream.
        name: String,
        /// The limit.
        limit: usize,
    },
}

impl ButlerError {
    /// A short, stable name for counting rejections by kind.
    pub fn kind(&self) -> &'static str {
        match self {
            ButlerError::Config(_) => "invalid_descriptor",
            ButlerError::Duplicate(_) => "duplicate_name",
            ButlerError::Refused { .. } => "refused",
            ButlerError::NamespaceClosed { .. } => "namespace_closed",
            ButlerError::Stopped => "butler_stopped",
            ButlerError::TooManyStreams { .. } => "too_many_streams",
        }
    }
}

/// Turns a namespace into its canonical form: `""` (everything) or a name ending in `/`.
pub fn as_namespace(ns: &str) -> String {
    let ns = ns.trim_start_matches('/');
    if ns.is_empty() || ns.ends_with('/') {
        ns.to_string()
    } else {
        format!("{ns}/")
    }
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
    /// Bytes read from the source (before the policies, if any).
    pub bytes_read: u64,
    /// Payload bytes put into bundles.
    pub bytes_sent: u64,
    /// Log entries cut.
    pub entries: u64,
    /// Bytes lost to a stream error (a bad datagram header, a read error).
    pub bytes_dropped: u64,
    /// Payload bytes the output did not acknowledge (failed, or still in flight when the
    /// flush timeout ran out).
    pub bytes_undelivered: u64,
    /// What went wrong, if anything.
    pub error: Option<String>,
    /// What the policies (masking, filters, rate limit, head+tail) did to the stream.
    pub policy: PolicyCounts,
}

impl StreamReport {
    fn new(f: Finished, read_error: Option<String>, policy: PolicyCounts) -> Self {
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
            bytes_undelivered: 0,
            error: f.error.or(read_error),
            policy,
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
    /// Streams refused after a stream server accepted them, by kind.
    pub rejected: BTreeMap<String, u64>,
    /// Every connection the stream servers refused, at the handshake or after it, by kind
    /// (`bad_magic`, `handshake_timeout`, `duplicate`...).
    pub refused_connections: BTreeMap<String, u64>,
    /// Every stream refused after its handshake, in the order refused: its bytes were never
    /// read.
    pub refused_streams: Vec<RefusedStream>,
}

/// A stream refused after its handshake (a duplicate name, a closed namespace...).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RefusedStream {
    /// The name the client asked for.
    pub name: String,
    /// The kind of refusal, as counted in [`Report::refused_connections`].
    pub kind: String,
    /// Why, in words.
    pub reason: String,
}

enum Command {
    Add(StreamSource, oneshot::Sender<Result<(), ButlerError>>),
    FromServer(NewStream, ServerStats),
    AddServer(StreamServer, oneshot::Sender<Result<(), ButlerError>>),
    ServerDone,
    Streams(oneshot::Sender<Vec<String>>),
    Activate,
    Shutdown,
    Wait(oneshot::Sender<Report>),
    /// A stream's source has been read to its end.
    ReadDone,
    Drain(String, oneshot::Sender<()>),
    Callback(RegistrationCallback, bool),
    OpenIn(String, oneshot::Sender<Vec<String>>),
}

/// Counts a stream in [`LiveStats::streams_open`] while it is read.
struct OpenStream(Arc<LiveStats>);

impl OpenStream {
    fn enter(live: &Arc<LiveStats>) -> Self {
        live.streams_open
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(live.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0
            .streams_open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Handle to a running butler. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Butler {
    tx: mpsc::Sender<Command>,
    live: Arc<LiveStats>,
}

/// Figures of a running butler, updated as it goes (for its metrics).
#[derive(Debug, Default)]
pub struct LiveStats {
    /// Streams being read now.
    pub streams_open: std::sync::atomic::AtomicU64,
    /// Bytes read from every stream's source so far.
    pub bytes_captured: std::sync::atomic::AtomicU64,
    /// Lines the policies left out (filters, rate limit, head+tail), added as each stream
    /// ends.
    pub lines_dropped: std::sync::atomic::AtomicU64,
    /// Woken (every waiter) each time a stream has been read to its end.
    pub stream_ended: tokio::sync::Notify,
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
        let live = Arc::new(LiveStats::default());
        let actor = Actor {
            live: live.clone(),
            rx,
            me: tx.downgrade(),
            cfg,
            output,
            bundler: Some(bundler),
            shell: Some(shell),
            names: BTreeSet::new(),
            open: BTreeSet::new(),
            closed_namespaces: BTreeSet::new(),
            drains: Vec::new(),
            servers: Vec::new(),
            live_servers: 0,
            server_stats: Vec::new(),
            servers_closing: false,
            cancel: watch::channel(false).0,
            callbacks: Vec::new(),
            readers: tokio::task::JoinSet::new(),
            undelivered: None,
            running: 0,
            activated: false,
            waiters: Vec::new(),
            report: Report::default(),
            finished: None,
        };
        tokio::spawn(actor.run());
        Ok(Butler { tx, live })
    }

    /// Its live figures.
    pub fn live(&self) -> &Arc<LiveStats> {
        &self.live
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

    /// Adds a stream server: every stream its clients open is added to the butler. Any number
    /// of servers may be added, before or while the butler runs. Once the butler is activated
    /// and no stream is running, the servers stop accepting (taking every connection already
    /// queued first), and [`wait`](Self::wait) returns only after the streams they handed over
    /// have ended too.
    ///
    /// # Errors
    /// The butler has stopped.
    pub async fn add_stream_server(&self, server: StreamServer) -> Result<(), ButlerError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::AddServer(server, tx))
            .await
            .map_err(|_| ButlerError::Stopped)?;
        rx.await.map_err(|_| ButlerError::Stopped)?
    }

    /// Registers a callback asked about every stream added from now on (streams already
    /// added are not affected). The first callback to return an entry callback for a stream
    /// wins. With `wrap`, text callbacks see whole lines and datagram callbacks whole
    /// datagrams (see [`callbacks`]).
    pub async fn add_registration_callback(&self, cb: RegistrationCallback, wrap: bool) {
        let _ = self.tx.send(Command::Callback(cb, wrap)).await;
    }

    /// Stops the butler early: stream servers stop accepting, every stream stops reading (what
    /// was read is still flushed), and the butler is activated.
    pub async fn shutdown(&self) {
        let _ = self.tx.send(Command::Shutdown).await;
    }

    /// Closes a namespace (`""` is everything; otherwise a name, with or without a trailing
    /// `/`) and waits until every stream in it has ended and been handed to the output. From
    /// then on, streams in the namespace are refused. If `cancel` resolves first, returns the
    /// sorted names of the streams still open in it.
    pub async fn drain_namespace(
        &self,
        namespace: &str,
        cancel: impl std::future::Future<Output = ()>,
    ) -> Result<(), Vec<String>> {
        let ns = as_namespace(namespace);
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Drain(ns.clone(), tx)).await.is_err() {
            return Ok(());
        }
        tokio::select! {
            _ = rx => Ok(()),
            () = cancel => {
                let (tx, rx) = oneshot::channel();
                if self.tx.send(Command::OpenIn(ns, tx)).await.is_err() {
                    return Ok(());
                }
                match rx.await {
                    Ok(open) if !open.is_empty() => Err(open),
                    _ => Ok(()),
                }
            }
        }
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
    /// Streams open and bytes read, shared with every [`Butler`] handle.
    live: Arc<LiveStats>,
    /// For reader tasks to report back, without keeping the actor alive.
    me: mpsc::WeakSender<Command>,
    cfg: ButlerConfig,
    output: Arc<dyn Output>,
    bundler: Option<BundlerHandle>,
    shell: Option<tokio::task::JoinHandle<ShellTotals>>,
    /// Every name ever registered: LogDog never lets a name be reused.
    names: BTreeSet<String>,
    /// Streams still running.
    open: BTreeSet<String>,
    /// Namespaces closed by a drain; streams in them are refused.
    closed_namespaces: BTreeSet<String>,
    /// Drains waiting for their namespace to empty.
    drains: Vec<(String, oneshot::Sender<()>)>,
    /// Stop signals of the stream servers still accepting.
    servers: Vec<oneshot::Sender<()>>,
    /// Stream servers whose streams may still arrive.
    live_servers: usize,
    /// Counters of every stream server added.
    server_stats: Vec<ServerStats>,
    servers_closing: bool,
    /// Tells every reader to stop (shutdown).
    cancel: watch::Sender<bool>,
    /// Registration callbacks, in the order they were added, with their wrap flags.
    callbacks: Vec<(RegistrationCallback, bool)>,
    /// Reader tasks; each ends with its stream's report.
    readers: tokio::task::JoinSet<StreamReport>,
    /// Undelivered payload per stream, from the bundler once it is done.
    undelivered: Option<BTreeMap<String, u64>>,
    running: usize,
    activated: bool,
    waiters: Vec<oneshot::Sender<Report>>,
    report: Report,
    finished: Option<Report>,
}

impl Actor {
    async fn run(mut self) {
        loop {
            let cmd = tokio::select! {
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => cmd,
                    None => break,
                },
                Some(done) = self.readers.join_next(), if !self.readers.is_empty() => {
                    if let Ok(r) = done {
                        self.stream_done(r);
                    }
                    self.check_drains();
                    continue;
                }
            };
            match cmd {
                Command::Add(src, reply) => {
                    let res = self.add(src).await;
                    let _ = reply.send(res);
                }
                Command::FromServer(ns, stats) => {
                    // Streams that have ended no longer count against the limit.
                    while let Some(done) = self.readers.try_join_next() {
                        if let Ok(r) = done {
                            self.stream_done(r);
                        }
                    }
                    self.check_drains();
                    let name = ns.desc.name.clone();
                    let src = StreamSource {
                        reader: Box::new(ns.reader),
                        desc: ns.desc,
                        tee: None,
                    };
                    let res = if self.open.len() >= self.cfg.max_streams {
                        Err(ButlerError::TooManyStreams {
                            name: name.clone(),
                            limit: self.cfg.max_streams,
                        })
                    } else {
                        self.add(src).await
                    };
                    if let Err(e) = &res {
                        tracing::warn!(error = %e, "stream server: refused a stream");
                        count_rejection(&stats, e.kind());
                        *self
                            .report
                            .rejected
                            .entry(e.kind().to_string())
                            .or_default() += 1;
                        self.report.refused_streams.push(RefusedStream {
                            name,
                            kind: e.kind().to_string(),
                            reason: e.to_string(),
                        });
                    }
                    if let Some(v) = ns.verdict {
                        v.send(&match res {
                            Ok(()) => Verdict::Accepted,
                            Err(e) => Verdict::Refused(e.to_string()),
                        });
                    }
                }
                Command::AddServer(server, reply) => {
                    let res = self.add_server(server);
                    let _ = reply.send(res);
                }
                Command::ServerDone => self.live_servers -= 1,
                Command::Streams(reply) => {
                    let _ = reply.send(self.names.iter().cloned().collect());
                }
                Command::Activate => self.activated = true,
                Command::Shutdown => {
                    self.activated = true;
                    self.close_servers();
                    // send_replace: the flag must stick even while no reader is subscribed.
                    self.cancel.send_replace(true);
                }
                Command::Wait(reply) => match &self.finished {
                    Some(r) => {
                        let _ = reply.send(r.clone());
                    }
                    None => self.waiters.push(reply),
                },
                Command::ReadDone => self.running -= 1,
                Command::Callback(cb, wrap) => self.callbacks.push((cb, wrap)),
                Command::Drain(ns, reply) => {
                    self.closed_namespaces.insert(ns.clone());
                    self.drains.push((ns, reply));
                }
                Command::OpenIn(ns, reply) => {
                    let _ = reply.send(
                        self.open
                            .iter()
                            .filter(|n| n.starts_with(&ns))
                            .cloned()
                            .collect(),
                    );
                }
            }
            self.check_drains();
            if self.activated && self.running == 0 && self.finished.is_none() {
                if self.live_servers > 0 {
                    self.close_servers();
                } else if !self.waiters.is_empty() {
                    self.finish().await;
                }
            }
        }
    }

    /// Records a stream whose last bundle has been settled by the output.
    fn stream_done(&mut self, r: StreamReport) {
        self.open.remove(&r.name);
        self.report.streams.insert(r.name.clone(), r);
    }

    fn check_drains(&mut self) {
        let open = &self.open;
        self.drains
            .retain_mut(|(ns, _)| open.iter().any(|n| n.starts_with(ns.as_str())));
        // `retain_mut` dropped the finished drains' senders, which wakes their waiters.
    }

    fn close_servers(&mut self) {
        self.servers_closing = true;
        for stop in self.servers.drain(..) {
            let _ = stop.send(());
        }
    }

    fn add_server(&mut self, server: StreamServer) -> Result<(), ButlerError> {
        if self.finished.is_some() {
            return Err(ButlerError::Stopped);
        }
        let Some(me) = self.me.upgrade() else {
            return Err(ButlerError::Stopped);
        };
        let (tx, mut rx) = mpsc::channel(64);
        let (stop, stopped) = oneshot::channel::<()>();
        let stats = server.stats();
        self.server_stats.push(stats.clone());
        tracing::info!(address = %server.address(), "stream server started");
        tokio::spawn(server.run(tx, async move {
            let _ = stopped.await;
        }));
        // Hands the server's streams to the actor, then reports that no more will come.
        tokio::spawn(async move {
            while let Some(ns) = rx.recv().await {
                if me
                    .send(Command::FromServer(ns, stats.clone()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let _ = me.send(Command::ServerDone).await;
        });
        self.live_servers += 1;
        if self.servers_closing {
            let _ = stop.send(());
        } else {
            self.servers.push(stop);
        }
        Ok(())
    }

    /// Shuts the bundler down (it flushes), then answers every waiter.
    async fn finish(&mut self) {
        self.bundler = None;
        if let Some(shell) = self.shell.take() {
            match shell.await {
                Ok(t) => {
                    self.report.bundles = t.bundles;
                    self.report.failed_bundles = t.failed_bundles;
                    self.undelivered = Some(t.undelivered);
                }
                Err(e) => tracing::error!(error = %e, "bundler task failed"),
            }
        }
        // Every stream's report is settled now that the bundler is done.
        while let Some(done) = self.readers.join_next().await {
            if let Ok(r) = done {
                self.stream_done(r);
            }
        }
        if let Some(totals) = &self.undelivered {
            for (name, bytes) in totals {
                if let Some(s) = self.report.streams.get_mut(name) {
                    s.bytes_undelivered += bytes;
                }
            }
        }
        self.report.output = self.output.stats();
        let mut refused = BTreeMap::new();
        for stats in &self.server_stats {
            for (kind, n) in stats.rejected() {
                *refused.entry(kind.to_string()).or_default() += n;
            }
        }
        self.report.refused_connections = refused;
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
            return Err(ButlerError::Duplicate(name));
        }
        if let Some(ns) = self
            .closed_namespaces
            .iter()
            .find(|ns| name.starts_with(ns.as_str()))
        {
            return Err(ButlerError::NamespaceClosed {
                namespace: ns.clone(),
                name,
            });
        }
        // Callbacks run only once the stream is known to be accepted (LogDog asked them
        // first, and a refused duplicate could replace the live stream's callback).
        let kind = logdog_proto::StreamType::try_from(desc.stream_type).unwrap_or_default();
        let callback = self.callbacks.iter().find_map(|(cb, wrap)| {
            cb(&desc).map(|c| if *wrap { callbacks::wrap(kind, c) } else { c })
        });
        let chain = self
            .cfg
            .policy
            .chain_for(&name, kind, self.output.max_bundle_size())
            .map_err(|e| ButlerError::Refused {
                name: name.clone(),
                reason: format!("cannot set up its policies: {e}"),
            })?;
        let (sink, done) =
            bundler
                .register(desc, callback)
                .await
                .map_err(|e| ButlerError::Refused {
                    name: name.clone(),
                    reason: e.to_string(),
                })?;
        self.names.insert(name.clone());
        self.open.insert(name.clone());
        self.running += 1;
        let me = self.me.clone();
        let cancel = self.cancel.subscribe();
        let live = self.live.clone();
        let open = OpenStream::enter(&live);
        self.readers.spawn(async move {
            let pumped = reader::pump(
                &name,
                src.reader,
                src.tee,
                sink,
                chain,
                cancel,
                &live.bytes_captured,
            )
            .await;
            let p = &pumped.policy;
            live.lines_dropped.fetch_add(
                p.filtered_lines + p.rate_limited_lines + p.omitted_lines,
                std::sync::atomic::Ordering::Relaxed,
            );
            drop(open);
            live.stream_ended.notify_waiters();
            // Read to the end: the stream no longer keeps the butler running. Its report
            // comes once the output has settled its last bundle (or the flush timeout ran
            // out), which may be after the bundler has been told to finish.
            if let Some(me) = me.upgrade() {
                let _ = me.send(Command::ReadDone).await;
            }
            match done.await {
                Ok(f) => {
                    let mut r = StreamReport::new(f, pumped.error, pumped.policy);
                    if let Some(n) = pumped.bytes_read {
                        r.bytes_read = n;
                    }
                    r
                }
                Err(_) => StreamReport {
                    name,
                    bytes_read: 0,
                    bytes_sent: 0,
                    entries: 0,
                    bytes_dropped: 0,
                    bytes_undelivered: 0,
                    error: Some("bundler stopped before the stream finished".into()),
                    policy: pumped.policy,
                },
            }
        });
        Ok(())
    }
}
