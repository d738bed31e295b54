//! The local stream server: child processes open named log streams over a Unix socket.
//!
//! Sits in front of the butler: each accepted connection that completes LogDog's handshake
//! (see [`logdog_proto::handshake`]) becomes a [`NewStream`] handed to the butler over a channel;
//! the connection's remaining bytes are the stream's payload.
//!
//! Differences from LogDog, on purpose:
//! - [`StreamServer::bind_private`] puts the socket in a fresh directory of mode 0700, so other
//!   local users cannot open streams, and removes it when the server stops.
//! - A client that does not finish its handshake within a timeout is dropped, so it can never
//!   hold up shutdown.
//! - At most [`DEFAULT_MAX_PENDING_HANDSHAKES`] connections (configurable) may be in their
//!   handshake at once; a connection beyond that is closed at once and counted as
//!   `too_many_handshakes`, so a flood of idle connections costs a bounded amount of memory
//!   and never delays streams that are already open.
//! - On shutdown the server first accepts every connection already queued on the socket:
//!   a client whose `connect` succeeded is never dropped.
//! - Every rejection is logged with its reason and counted in [`ServerStats`]. The wire stays
//!   silent (LogDog clients never read), so the log and the counters are how a user finds out.
//!   A client that asks for a verdict gets one line back (see [`VerdictSender`]).
//! - At most [`default_max_connections`] connections are open at once: the process's
//!   open-file limit less [`FD_RESERVE`], so the output always has descriptors for its files.
//!   Clients beyond that wait in the socket's listen queue ([`LISTEN_BACKLOG`] long; a client
//!   whose `connect` finds it full waits in `connect`) until a stream ends: none is lost to
//!   `EMFILE`.

use std::collections::BTreeMap;
use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use logdog_proto::handshake::{
    HandshakeError, MAGIC, MAX_HEADER_SIZE, Verdict, asks_for_verdict, parse_header,
};
use logdog_proto::logpb::LogStreamDescriptor;
use tokio::io::{AsyncRead, AsyncReadExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

/// Default time a client has to complete its handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Default number of connections that may be in their handshake at once. With the default
/// handshake timeout, that is enough for thousands of streams opened in a burst, while a
/// runaway process that connects without speaking holds at most this many sockets.
pub const DEFAULT_MAX_PENDING_HANDSHAKES: usize = 4096;

/// The rejection kind counted for a connection refused because
/// [`max_pending_handshakes`](StreamServer::with_max_pending_handshakes) handshakes were
/// already in progress.
pub const TOO_MANY_HANDSHAKES: &str = "too_many_handshakes";

/// File descriptors the stream server leaves to the rest of the process (the output's files,
/// the child's pipes, the runtime) when it sizes its connection limit.
pub const FD_RESERVE: u64 = 256;

/// Connections the server allows at once whatever the open-file limit.
pub const MIN_CONNECTIONS: usize = 16;

/// Length asked for the socket's listen queue, where connections wait to be accepted (the
/// kernel caps it at `net.core.somaxconn`).
pub const LISTEN_BACKLOG: i32 = 4096;

/// The default limit on open connections: the soft open-file limit (`RLIMIT_NOFILE`) less
/// [`FD_RESERVE`], and at least [`MIN_CONNECTIONS`]. Read when the server starts running, so
/// a limit raised before then counts.
pub fn default_max_connections() -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    match soft {
        Some(n) => usize::try_from(n.saturating_sub(FD_RESERVE))
            .unwrap_or(usize::MAX)
            .clamp(MIN_CONNECTIONS, Semaphore::MAX_PERMITS),
        None => Semaphore::MAX_PERMITS,
    }
}

/// A client's connection; it counts against the server's connection limit until dropped.
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    _slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Connection {
    /// The socket.
    pub fn get_ref(&self) -> &UnixStream {
        &self.stream
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

/// A stream opened by a client: its descriptor and the rest of the connection.
#[derive(Debug)]
pub struct NewStream {
    /// The descriptor from the handshake (prefix empty, timestamp `None` if the client sent
    /// none).
    pub desc: LogStreamDescriptor,
    /// The payload: everything after the handshake, until the client closes.
    pub reader: BufReader<Connection>,
    /// Set when the client asked for a verdict (see [`logdog_proto::handshake::VERDICT_FLAG`]):
    /// whoever decides about the stream sends it. Dropping it unsent sends nothing.
    pub verdict: Option<VerdictSender>,
}

/// The way back to a client that asked for a [`Verdict`]: a second handle on its connection,
/// used once.
#[derive(Debug)]
pub struct VerdictSender {
    conn: std::os::unix::net::UnixStream,
}

impl VerdictSender {
    fn new(conn: &UnixStream) -> std::io::Result<Self> {
        use std::os::fd::AsFd;
        let fd = conn.as_fd().try_clone_to_owned()?;
        Ok(Self {
            conn: std::os::unix::net::UnixStream::from(fd),
        })
    }

    /// Writes the verdict line. The socket is non-blocking and nothing else is ever written
    /// to it, so the short line goes into its empty send buffer at once; a client that has
    /// already gone (or a full buffer, which cannot happen) only costs a debug line. Never
    /// blocks.
    pub fn send(self, verdict: &Verdict) {
        use std::io::Write;
        if let Err(e) = (&self.conn).write_all(&verdict.line()) {
            tracing::debug!(error = %e, "stream server: cannot send a verdict");
        }
    }
}

/// Counters of a stream server, shared with whoever holds a clone.
#[derive(Debug, Clone, Default)]
pub struct ServerStats {
    inner: Arc<Mutex<StatsInner>>,
}

#[derive(Debug, Default)]
struct StatsInner {
    accepted: u64,
    streams: u64,
    rejected: BTreeMap<&'static str, u64>,
}

impl ServerStats {
    /// Connections accepted.
    pub fn accepted(&self) -> u64 {
        self.lock().accepted
    }

    /// Connections that completed the handshake and were handed on.
    pub fn streams(&self) -> u64 {
        self.lock().streams
    }

    /// Rejected connections, by kind of rejection.
    pub fn rejected(&self) -> BTreeMap<&'static str, u64> {
        self.lock().rejected.clone()
    }

    /// Total rejected connections.
    pub fn rejected_total(&self) -> u64 {
        self.lock().rejected.values().sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StatsInner> {
        // A panic while holding this lock cannot leave the counters inconsistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A bound stream server, ready to [`run`](StreamServer::run).
#[derive(Debug)]
pub struct StreamServer {
    listener: UnixListener,
    path: PathBuf,
    /// The private directory holding the socket, removed on drop.
    dir: Option<tempfile::TempDir>,
    handshake_timeout: Duration,
    max_pending: usize,
    /// `None`: [`default_max_connections`] when the server starts running.
    max_connections: Option<usize>,
    stats: ServerStats,
}

/// Reads a handshake from the front of a connection.
///
/// # Errors
/// A malformed or oversized handshake, or a connection that ends inside it.
pub async fn read_handshake<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<LogStreamDescriptor, HandshakeError> {
    parse_header(&read_header(r).await?)
}

/// Reads the magic and the length-prefixed header, returning the header's bytes unparsed.
async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, HandshakeError> {
    let eof = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => HandshakeError::Truncated,
        _ => HandshakeError::Io(e.to_string()),
    };
    let mut magic = [0u8; 6];
    r.read_exact(&mut magic).await.map_err(eof)?;
    if &magic != MAGIC {
        return Err(HandshakeError::BadMagic(magic.to_vec()));
    }
    let mut len: u64 = 0;
    for i in 0..10 {
        let b = r.read_u8().await.map_err(eof)?;
        if i == 9 && b > 1 {
            return Err(HandshakeError::LengthOverflow);
        }
        len |= u64::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            break;
        }
        if i == 9 {
            return Err(HandshakeError::LengthOverflow);
        }
    }
    if len > MAX_HEADER_SIZE {
        return Err(HandshakeError::HeaderTooLarge(len));
    }
    let mut header = vec![0u8; len as usize];
    r.read_exact(&mut header).await.map_err(eof)?;
    Ok(header)
}

impl StreamServer {
    /// Binds a server on a socket in a fresh private directory (mode 0700) under the system's
    /// temporary directory.
    ///
    /// # Errors
    /// The directory or socket cannot be created.
    pub fn bind_private() -> std::io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("logdog-").tempdir()?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
        let path = dir.path().join("sock");
        let listener = UnixListener::bind(&path)?;
        rustix::net::listen(&listener, LISTEN_BACKLOG)?;
        Ok(Self::new(listener, path, Some(dir)))
    }

    /// Binds a server at `path`. A stale socket left there by a dead server is replaced;
    /// anything else at the path (a file, a live server) is an error, never deleted.
    ///
    /// # Errors
    /// The path is taken, or the socket cannot be bound.
    pub fn bind(path: &Path) -> std::io::Result<Self> {
        let path = std::path::absolute(path)?;
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            let live = std::os::unix::net::UnixStream::connect(&path).is_ok();
            if !meta.file_type().is_socket() || live {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!("{} exists and is not a stale socket", path.display()),
                ));
            }
            std::fs::remove_file(&path)?;
        }
        let listener = UnixListener::bind(&path)?;
        // Listening again only lengthens the queue the bind set up.
        rustix::net::listen(&listener, LISTEN_BACKLOG)?;
        Ok(Self::new(listener, path, None))
    }

    fn new(listener: UnixListener, path: PathBuf, dir: Option<tempfile::TempDir>) -> Self {
        Self {
            listener,
            path,
            dir,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_pending: DEFAULT_MAX_PENDING_HANDSHAKES,
            max_connections: None,
            stats: ServerStats::default(),
        }
    }

    /// Sets how many connections may be open at once (at least 1; by default
    /// [`default_max_connections`]). Further clients wait in the listen queue.
    pub fn with_max_connections(mut self, max: usize) -> Self {
        self.max_connections = Some(max.clamp(1, Semaphore::MAX_PERMITS));
        self
    }

    /// Sets how long a client has to complete its handshake.
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Sets how many connections may be in their handshake at once (at least 1). A
    /// connection accepted while that many are pending is closed without a word and counted
    /// as [`TOO_MANY_HANDSHAKES`].
    pub fn with_max_pending_handshakes(mut self, max: usize) -> Self {
        self.max_pending = max.max(1);
        self
    }

    /// The address clients use: `unix:<path>`.
    pub fn address(&self) -> String {
        format!("unix:{}", self.path.display())
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The server's counters (live: clone before [`run`](Self::run)).
    pub fn stats(&self) -> ServerStats {
        self.stats.clone()
    }

    /// Accepts connections and hands each completed handshake to `streams` until `shutdown`
    /// resolves. Then it accepts what is already queued, stops listening, removes the socket,
    /// and returns once every pending handshake has completed or timed out.
    pub async fn run(self, streams: mpsc::Sender<NewStream>, shutdown: impl Future<Output = ()>) {
        let StreamServer {
            listener,
            path,
            dir,
            handshake_timeout,
            max_pending,
            max_connections,
            stats,
        } = self;
        let max_connections = max_connections.unwrap_or_else(default_max_connections);
        let connections = Arc::new(Semaphore::new(max_connections));
        let slots = Arc::new(Semaphore::new(max_pending));
        let handshakes = Handshakes {
            streams,
            timeout: handshake_timeout,
            slots,
            max_pending,
            stats: stats.clone(),
        };
        let mut pending = JoinSet::new();
        // A connection is accepted only with a slot in hand, so the limit is never passed;
        // while none is free, clients wait in the listen queue.
        let mut slot = None;
        let mut said_full = false;
        tokio::pin!(shutdown);
        loop {
            if slot.is_none() {
                if connections.available_permits() == 0 && !said_full {
                    said_full = true;
                    tracing::info!(
                        limit = max_connections,
                        "stream server: connection limit reached; new clients wait to be accepted"
                    );
                }
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    permit = connections.clone().acquire_owned() => slot = permit.ok(),
                    Some(_) = pending.join_next(), if !pending.is_empty() => {}
                }
                continue;
            }
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                res = listener.accept() => match res {
                    Ok((conn, _)) => handshakes.spawn(&mut pending, conn, slot.take()),
                    Err(e) => {
                        // Out of file descriptors (the limit counts only connections): the
                        // client waits in the queue; back off instead of spinning.
                        tracing::warn!(error = %e, "stream server: accept failed; will retry");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = pending.join_next(), if !pending.is_empty() => {}
            }
        }
        // Connections already queued on the socket belong to clients that were told their
        // connect succeeded: take them all before closing. Ask the kernel directly, with
        // non-blocking accepts until it says the queue is empty: the reactor's cached readiness
        // may not have seen connections queued since the last accept (or any at all, if
        // shutdown fired before the first poll), so one poll of `accept()` can miss them.
        match listener.into_std() {
            Ok(listener) => loop {
                // Wait for a slot as the accept loop does (streams end, slots come back).
                let permit = match slot.take() {
                    Some(p) => Some(p),
                    None => connections.clone().acquire_owned().await.ok(),
                };
                match listener.accept() {
                    Ok((conn, _)) => {
                        match conn
                            .set_nonblocking(true)
                            .and_then(|()| UnixStream::from_std(conn))
                        {
                            Ok(conn) => handshakes.spawn(&mut pending, conn, permit),
                            Err(e) => {
                                tracing::error!(error = %e, "stream server: cannot register a queued connection")
                            }
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        tracing::error!(error = %e, "stream server: accept failed during shutdown");
                        break;
                    }
                }
            },
            Err(e) => {
                tracing::error!(error = %e, "stream server: cannot drain the socket at shutdown")
            }
        }
        if dir.is_none() {
            let _ = std::fs::remove_file(&path);
        }
        drop(dir);
        while pending.join_next().await.is_some() {}
        tracing::debug!(
            accepted = stats.accepted(),
            streams = stats.streams(),
            rejected = stats.rejected_total(),
            "stream server stopped"
        );
    }
}

/// What every handshake task needs, shared by the accept loop.
struct Handshakes {
    streams: mpsc::Sender<NewStream>,
    timeout: Duration,
    /// One permit per handshake in progress.
    slots: Arc<Semaphore>,
    max_pending: usize,
    stats: ServerStats,
}

impl Handshakes {
    /// Starts reading the handshake of a connection just accepted, or refuses the connection
    /// if too many handshakes are in progress.
    fn spawn(
        &self,
        pending: &mut JoinSet<()>,
        conn: UnixStream,
        connection_slot: Option<tokio::sync::OwnedSemaphorePermit>,
    ) {
        // Reap finished tasks here too: while connections keep arriving, the accept branch
        // always wins the (biased) select and the join branch may not run.
        while pending.try_join_next().is_some() {}
        self.stats.lock().accepted += 1;
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            let refused = {
                let mut s = self.stats.lock();
                let n = s.rejected.entry(TOO_MANY_HANDSHAKES).or_default();
                *n += 1;
                *n
            };
            // One line for the first refusal, then one each time the count doubles: a flood
            // of connections must not also flood the log.
            if refused.is_power_of_two() {
                tracing::warn!(
                    reason = TOO_MANY_HANDSHAKES,
                    limit = self.max_pending,
                    refused,
                    "stream server: refused a connection: {} handshakes already pending",
                    self.max_pending
                );
            }
            drop(conn);
            return;
        };
        let streams = self.streams.clone();
        let timeout = self.timeout;
        let stats = self.stats.clone();
        pending.spawn(async move {
            let mut reader = BufReader::new(Connection {
                stream: conn,
                _slot: connection_slot,
            });
            let header = match tokio::time::timeout(timeout, read_header(&mut reader)).await {
                Ok(r) => r,
                Err(_) => Err(HandshakeError::Timeout(timeout.as_millis() as u64)),
            };
            // The handshake is over either way: free its slot before anything can block.
            drop(slot);
            // A client that asked for a verdict gets one, even for a header refused here.
            let mut verdict = None;
            let res = header.and_then(|h| {
                if asks_for_verdict(&h) {
                    match VerdictSender::new(reader.get_ref().get_ref()) {
                        Ok(v) => verdict = Some(v),
                        Err(e) => tracing::warn!(error = %e, "stream server: cannot keep a way back for a verdict"),
                    }
                }
                parse_header(&h)
            });
            match res {
                Ok(desc) => {
                    stats.lock().streams += 1;
                    let name = desc.name.clone();
                    let stream = NewStream { desc, reader, verdict };
                    if let Err(mpsc::error::SendError(stream)) = streams.send(stream).await {
                        tracing::error!(stream = %name, "stream server: butler gone; stream dropped");
                        *stats.lock().rejected.entry("butler_gone").or_default() += 1;
                        if let Some(v) = stream.verdict {
                            v.send(&Verdict::Refused("the butler has stopped".into()));
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(reason = e.kind(), error = %e, "stream server: rejected a connection");
                    *stats.lock().rejected.entry(e.kind()).or_default() += 1;
                    if let Some(v) = verdict {
                        v.send(&Verdict::Refused(e.to_string()));
                    }
                }
            }
        });
    }
}

/// Records a rejection decided after the handshake (a duplicate name, a closed namespace).
pub fn count_rejection(stats: &ServerStats, kind: &'static str) {
    *stats.lock().rejected.entry(kind).or_default() += 1;
}
