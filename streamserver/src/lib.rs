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
//!   handshake at once. A connection accepted while that many are pending evicts the oldest
//!   of them (counted as [`EVICTED`]): a flood of idle connections costs a bounded amount of
//!   memory, never delays streams that are already open, and cannot lock new streams out.
//! - The headers of handshakes in progress may hold at most [`DEFAULT_HANDSHAKE_BUDGET`] bytes
//!   together (configurable): a handshake whose declared header length does not fit in what
//!   is left is closed at once, counted as [`HANDSHAKE_BUDGET`].
//! - On shutdown the server first accepts every connection already queued on the socket:
//!   a client whose `connect` succeeded is never dropped.
//! - Every rejection is logged with its reason and counted in [`ServerStats`]. The wire stays
//!   silent (LogDog clients never read), so the log and the counters are how a user finds out.
//!   A client that asks for a verdict gets one line back (see [`VerdictSender`]).
//! - At most [`default_max_connections`] connections are open at once: the process's
//!   open-file limit less [`FD_RESERVE`], so the output always has descriptors for its files.
//!   Clients beyond that wait in the socket's listen queue ([`LISTEN_BACKLOG`] long; a client
//!   whose `connect` finds it full waits in `connect`) until a stream ends: none is lost to
//!   `EMFILE`. Should handshakes idle for a while hold every slot, a waiting client takes the
//!   slot of the oldest (counted as [`EVICTED`]).

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
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Default time a client has to complete its handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Default number of connections that may be in their handshake at once. With the default
/// handshake timeout, that is enough for thousands of streams opened in a burst, while a
/// runaway process that connects without speaking holds at most this many sockets.
pub const DEFAULT_MAX_PENDING_HANDSHAKES: usize = 4096;

/// The rejection kind counted for a pending handshake closed to make room for a newer
/// connection when [`max_pending_handshakes`](StreamServer::with_max_pending_handshakes)
/// handshakes were already in progress.
pub const EVICTED: &str = "evicted";

/// Default total of declared header lengths that handshakes in progress may hold at once.
/// Real headers are a few hundred bytes (at most about 40 KiB under the descriptor limits), so
/// this admits well over a thousand of the largest at once while clients declaring 1 MiB
/// headers can hold at most 64 MiB.
pub const DEFAULT_HANDSHAKE_BUDGET: u64 = 64 << 20;

/// The rejection kind counted for a handshake whose declared header length did not fit in
/// what was left of the [handshake budget](StreamServer::with_handshake_budget).
pub const HANDSHAKE_BUDGET: &str = "handshake_budget";

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
    handshake_bytes: u64,
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

    /// Bytes of the handshake budget held right now: the declared header lengths of the
    /// handshakes being read.
    pub fn handshake_bytes(&self) -> u64 {
        self.lock().handshake_bytes
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
    handshake_budget: u64,
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

/// Maps a read error inside a handshake to the handshake error it means.
fn eof(e: std::io::Error) -> HandshakeError {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => HandshakeError::Truncated,
        _ => HandshakeError::Io(e.to_string()),
    }
}

/// Reads the magic and the length-prefixed header, returning the header's bytes unparsed.
async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, HandshakeError> {
    let len = read_header_length(r).await?;
    read_header_body(r, len).await
}

/// Reads the magic and the header's declared length, refusing a length over
/// [`MAX_HEADER_SIZE`].
async fn read_header_length<R: AsyncRead + Unpin>(r: &mut R) -> Result<u64, HandshakeError> {
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
    Ok(len)
}

/// Reads a header of `len` bytes (at most [`MAX_HEADER_SIZE`]).
async fn read_header_body<R: AsyncRead + Unpin>(
    r: &mut R,
    len: u64,
) -> Result<Vec<u8>, HandshakeError> {
    let len = usize::try_from(len.min(MAX_HEADER_SIZE)).unwrap_or(0);
    let mut header = vec![0u8; len];
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
            handshake_budget: DEFAULT_HANDSHAKE_BUDGET,
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
    /// connection accepted while that many are pending evicts the oldest of them, which is
    /// closed without a word and counted as [`EVICTED`].
    pub fn with_max_pending_handshakes(mut self, max: usize) -> Self {
        self.max_pending = max.max(1);
        self
    }

    /// Sets how many header bytes the handshakes in progress may hold together (by default
    /// [`DEFAULT_HANDSHAKE_BUDGET`]; at least [`MAX_HEADER_SIZE`], so any valid header can
    /// fit). A handshake whose declared length does not fit in what is left is closed at once
    /// and counted as [`HANDSHAKE_BUDGET`].
    pub fn with_handshake_budget(mut self, bytes: u64) -> Self {
        self.handshake_budget = bytes.max(MAX_HEADER_SIZE);
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
            handshake_budget,
            max_connections,
            stats,
        } = self;
        let max_connections = max_connections.unwrap_or_else(default_max_connections);
        let connections = Arc::new(Semaphore::new(max_connections));
        let budget = usize::try_from(handshake_budget)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        let handshakes = Handshakes {
            streams,
            timeout: handshake_timeout,
            table: Arc::new(Mutex::new(PendingTable::default())),
            max_pending,
            budget: Arc::new(Semaphore::new(budget)),
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
                let oldest = handshakes.oldest_started();
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    permit = connections.clone().acquire_owned() => slot = permit.ok(),
                    // Connections still in their handshake may hold every slot (a low
                    // open-file limit): a new client then takes the slot of the oldest, as it
                    // would take its place in a full pending table.
                    // Only a handshake idle for IDLE_HANDSHAKE gives way: a client whose
                    // handshake is already on its way keeps its slot, and the new one waits.
                    res = async {
                        if let Some(t) = oldest {
                            tokio::time::sleep_until(t + IDLE_HANDSHAKE).await;
                        }
                        listener.accept().await
                    }, if oldest.is_some() => match res {
                        Ok((conn, _)) => {
                            handshakes.evict_oldest_idle();
                            // The evicted task drops its connection, and so its slot, at once.
                            let permit = connections.clone().acquire_owned().await.ok();
                            handshakes.spawn(&mut pending, conn, permit);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "stream server: accept failed; will retry");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    },
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

/// How long a handshake must have been in progress before a new connection may take its
/// connection slot (see [`StreamServer::run`]). A client writes its handshake as soon as it
/// connects, so one still pending after this long is idle, not merely unread yet.
const IDLE_HANDSHAKE: Duration = Duration::from_secs(2);

/// The handshakes in progress, oldest first, each with the way to evict it.
#[derive(Default)]
struct PendingTable {
    next: u64,
    /// By arrival: when the connection was accepted, and the way to evict it.
    table: BTreeMap<u64, (Instant, oneshot::Sender<()>)>,
}

/// Why a handshake did not produce a stream.
enum Failed {
    /// The handshake itself was bad, or timed out.
    Handshake(HandshakeError),
    /// Evicted to make room for a newer connection (already counted by the accept loop).
    Evicted,
    /// The declared header length did not fit in what was left of the budget.
    OverBudget(u64),
}

/// Header bytes a handshake holds of the budget, given back (and uncounted) on drop.
struct BudgetHold {
    _permit: OwnedSemaphorePermit,
    bytes: u64,
    stats: ServerStats,
}

impl Drop for BudgetHold {
    fn drop(&mut self) {
        let mut s = self.stats.lock();
        s.handshake_bytes = s.handshake_bytes.saturating_sub(self.bytes);
    }
}

/// Counts a rejection of `kind` and returns how many there have been, for throttled logging.
fn count(stats: &ServerStats, kind: &'static str) -> u64 {
    let mut s = stats.lock();
    let n = s.rejected.entry(kind).or_default();
    *n += 1;
    *n
}

/// What every handshake task needs, shared by the accept loop.
struct Handshakes {
    streams: mpsc::Sender<NewStream>,
    timeout: Duration,
    table: Arc<Mutex<PendingTable>>,
    max_pending: usize,
    /// One permit per header byte being read.
    budget: Arc<Semaphore>,
    stats: ServerStats,
}

impl Handshakes {
    /// When the oldest handshake in progress started, if there is one.
    fn oldest_started(&self) -> Option<Instant> {
        let t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        t.table.first_key_value().map(|(_, (started, _))| *started)
    }

    /// Closes the oldest connection still in its handshake if it has been so for
    /// [`IDLE_HANDSHAKE`], to make room.
    fn evict_oldest_idle(&self) {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let idle = t
            .table
            .first_key_value()
            .is_some_and(|(_, (started, _))| started.elapsed() >= IDLE_HANDSHAKE);
        if idle {
            self.evict_oldest_of(&mut t);
        }
    }

    /// Closes the oldest connection still in its handshake, if any.
    fn evict_oldest_of(&self, t: &mut PendingTable) {
        let Some((_, (_, oldest))) = t.table.pop_first() else {
            return;
        };
        // Firing the sender wakes the task, which closes its connection and so frees its
        // connection slot.
        let _ = oldest.send(());
        let n = count(&self.stats, EVICTED);
        // One line for the first eviction, then one each time the count doubles: a flood of
        // connections must not also flood the log.
        if n.is_power_of_two() {
            tracing::warn!(
                reason = EVICTED,
                pending = t.table.len() + 1,
                evicted = n,
                "stream server: closed the oldest pending handshake to make room for a new connection"
            );
        }
    }

    /// Starts reading the handshake of a connection just accepted, evicting the oldest
    /// pending handshake first if the table is full.
    fn spawn(
        &self,
        pending: &mut JoinSet<()>,
        conn: UnixStream,
        connection_slot: Option<OwnedSemaphorePermit>,
    ) {
        // Reap finished tasks here too: while connections keep arriving, the accept branch
        // always wins the (biased) select and the join branch may not run.
        while pending.try_join_next().is_some() {}
        self.stats.lock().accepted += 1;
        let (evict, evicted) = oneshot::channel();
        let id = {
            let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
            if t.table.len() >= self.max_pending {
                self.evict_oldest_of(&mut t);
            }
            let id = t.next;
            t.next += 1;
            t.table.insert(id, (Instant::now(), evict));
            id
        };
        let streams = self.streams.clone();
        let timeout = self.timeout;
        let stats = self.stats.clone();
        let table = self.table.clone();
        let budget = self.budget.clone();
        pending.spawn(async move {
            let mut reader = BufReader::new(Connection {
                stream: conn,
                _slot: connection_slot,
            });
            let read = async {
                let len = read_header_length(&mut reader)
                    .await
                    .map_err(Failed::Handshake)?;
                // `len` is at most MAX_HEADER_SIZE (1 MiB), so it fits a u32.
                let permits = u32::try_from(len).map_err(|_| Failed::OverBudget(len))?;
                let permit = budget
                    .try_acquire_many_owned(permits)
                    .map_err(|_| Failed::OverBudget(len))?;
                stats.lock().handshake_bytes += len;
                let hold = BudgetHold {
                    _permit: permit,
                    bytes: len,
                    stats: stats.clone(),
                };
                let header = read_header_body(&mut reader, len)
                    .await
                    .map_err(Failed::Handshake)?;
                Ok((header, hold))
            };
            let header = tokio::select! {
                biased;
                _ = evicted => Err(Failed::Evicted),
                r = tokio::time::timeout(timeout, read) => match r {
                    Ok(r) => r,
                    Err(_) => Err(Failed::Handshake(HandshakeError::Timeout(timeout.as_millis() as u64))),
                },
            };
            // The handshake is over either way: leave the table before anything can block.
            table
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .table
                .remove(&id);
            let header = match header {
                Ok(h) => h,
                Err(Failed::Evicted) => return,
                Err(Failed::OverBudget(len)) => {
                    let n = count(&stats, HANDSHAKE_BUDGET);
                    if n.is_power_of_two() {
                        tracing::warn!(
                            reason = HANDSHAKE_BUDGET,
                            declared = len,
                            refused = n,
                            "stream server: refused a handshake: its {len}-byte header does not fit in the handshake budget"
                        );
                    }
                    return;
                }
                Err(Failed::Handshake(e)) => {
                    tracing::warn!(reason = e.kind(), error = %e, "stream server: rejected a connection");
                    count(&stats, e.kind());
                    return;
                }
            };
            // A client that asked for a verdict gets one, even for a header refused here.
            let mut verdict = None;
            let res = {
                let (h, _hold) = header;
                if asks_for_verdict(&h) {
                    match VerdictSender::new(reader.get_ref().get_ref()) {
                        Ok(v) => verdict = Some(v),
                        Err(e) => tracing::warn!(error = %e, "stream server: cannot keep a way back for a verdict"),
                    }
                }
                parse_header(&h)
            };
            match res {
                Ok(desc) => {
                    stats.lock().streams += 1;
                    let name = desc.name.clone();
                    let stream = NewStream { desc, reader, verdict };
                    if let Err(mpsc::error::SendError(stream)) = streams.send(stream).await {
                        tracing::error!(stream = %name, "stream server: butler gone; stream dropped");
                        count(&stats, "butler_gone");
                        if let Some(v) = stream.verdict {
                            v.send(&Verdict::Refused("the butler has stopped".into()));
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(reason = e.kind(), error = %e, "stream server: rejected a connection");
                    count(&stats, e.kind());
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
