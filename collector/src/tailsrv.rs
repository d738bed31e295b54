//! The tail server: any stream followed with nothing but netcat, in the spirit of tailsrv.
//!
//! A client connects over TCP (or TLS, see [`TailServer::with_tls`]) and sends one request
//! line (at most [`MAX_REQUEST_LINE`] bytes, ending in `\n`; a `\r` before it is ignored):
//!
//! - `stream PROJECT/PREFIX/+/NAME` — the stream's bytes from the start, then new bytes as
//!   they arrive; the server closes the connection once the stream is complete and every
//!   byte has been sent. Bytes are as `logdog cat` writes them (datagrams framed as a uvarint
//!   length and the bytes).
//! - `stream PATH from byte N` — the same from byte offset `N` (past the end: nothing until
//!   the stream gets there).
//! - `stream PATH from byte -N` — the last `N` bytes stored when the request arrives, then
//!   new bytes as above.
//! - `stream PATH from line N` — from line `N` of a text stream (datagram `N` of a datagram
//!   stream), counted from 0, found by binary search over the entries' first line numbers;
//!   `from line -N`: the last `N` lines stored when the request arrives. A line not stored
//!   yet is waited for. Binary streams have no lines.
//! - `stream PATH from time RFC3339` — from the first line (datagram, binary entry) written at
//!   or after that time (UTC), found by binary search over the entries' times; waited for
//!   when nothing that recent is stored.
//! - `list [PROJECT[/PREFIX]]` — stream paths, one per line (without an argument: the
//!   `default` project and every project written to since the collector started).
//!
//! When the collector has an auth file ([`TailServer::with_auth`]), the first line must be
//! `auth TOKEN`, then the request line; `stream` needs the right to read the stream's project
//! and `list` shows only readable projects. (An `auth` line is accepted, and ignored, by an
//! open server too.)
//!
//! A bad request, a missing or refused token, an unknown stream or a store failure gets one
//! line, `error: MESSAGE`, and the connection is closed. Each connection is its own task with
//! its own position in the stream; it holds one chunk of entries at a time (shared with the
//! other connections at the same place, see [`crate::chunks`]) and no lock while it writes to
//! its socket, so a slow reader only ever slows itself.
//!
//! Hostile clients are bounded: a follower waiting for new bytes also watches its client's
//! side of the connection, and end of input or an error there ends the connection at once
//! (so a client that closes its sending side is served what is stored and then let go). At
//! most [`DEFAULT_MAX_CONNECTIONS`] connections (or [`TailServer::with_max_connections`])
//! are open at once; when the table is full, a new connection takes the slot of the oldest
//! one that has not sent its request yet, and is turned away with an `error:` line only if
//! every slot is serving a request (over TLS it is closed without a line). A TLS client has
//! [`HANDSHAKE_TIMEOUT`] to finish its handshake, in the connection's own task, so a silent
//! client never holds up the others.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use crate::auth::{Auth, Caller, Denied, Right};
use crate::chunks::ChunkCache;
use crate::reader::{self, ByteCursor, ByteStart, ReadError, RowStart};
use crate::store::{Store, StoreError, StreamInfo, StreamKey};
use crate::tls::HANDSHAKE_TIMEOUT;
use crate::watchers::Watchers;
use logdog_proto::logpb::StreamType;

/// Longest request line accepted, without its `\n`.
pub const MAX_REQUEST_LINE: usize = 4096;
/// How long a client has to send its request line (and its `auth` line before it).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections open at once by default (see [`TailServer::with_max_connections`]).
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// A follower writes once it has copied this many bytes of the (shared) chunk it reads, so a
/// slow client holds about this much beyond the chunk (see [`crate::chunks`]).
/// How long a refused connection is read (and what it sent dropped) before it is closed.
const LINGER: Duration = Duration::from_millis(500);
/// At most this much of a refused connection's input is read before it is closed.
const LINGER_BYTES: u64 = 64 * 1024;
const WRITE_BUDGET: usize = 64 * 1024;
/// A follower re-reads the store this often even without a wake-up.
const SAFETY_NET: Duration = Duration::from_secs(5);

/// Counters of a tail server, for logs and tests.
#[derive(Debug, Default)]
pub struct TailStats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections open now.
    pub active: AtomicU64,
    /// Requests answered with an error line (bad request, missing or refused token, unknown
    /// stream).
    pub refused: AtomicU64,
    /// Failures: store reads, I/O errors other than a client going away, accept errors, TLS
    /// handshakes that failed or timed out.
    pub errors: AtomicU64,
    /// Stream bytes sent.
    pub bytes_sent: AtomicU64,
    /// Connections without a request yet, closed to make room for a newer one.
    pub evicted: AtomicU64,
    /// Connections closed at once because every slot was serving a request.
    pub turned_away: AtomicU64,
    /// Followers whose client went away (end of input or an error) while they waited.
    pub gone: AtomicU64,
    /// Connections following a stream now.
    pub following: AtomicU64,
}

/// Counts a connection in [`TailStats::following`] while it lives.
struct Following<'a>(&'a TailStats);

impl<'a> Following<'a> {
    fn enter(stats: &'a TailStats) -> Self {
        stats.following.fetch_add(1, Ordering::Relaxed);
        Self(stats)
    }
}

impl Drop for Following<'_> {
    fn drop(&mut self) {
        self.0.following.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The tail server. Cheap to clone.
#[derive(Clone)]
pub struct TailServer {
    store: Store,
    watchers: Watchers,
    /// Reads shared by the connections following the same stream.
    chunks: ChunkCache,
    stats: Arc<TailStats>,
    max_connections: usize,
    /// Who may read which projects.
    auth: Auth,
    /// TLS for every connection (plain TCP when `None`).
    tls: Option<TlsAcceptor>,
}

impl std::fmt::Debug for TailServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TailServer")
            .field("max_connections", &self.max_connections)
            .field("auth", &self.auth)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// A connection that has not sent its request yet: its slot, and how to tell it to go.
#[derive(Debug)]
struct Pending {
    permit: OwnedSemaphorePermit,
    evict: oneshot::Sender<()>,
}

/// Connections waiting for their request line, oldest (lowest id) first.
type PendingTable = Arc<Mutex<BTreeMap<u64, Pending>>>;

/// A connection's place in the [`PendingTable`] until it has read its request; leaving it
/// early (an error, a timeout) gives its slot back.
struct Admission {
    id: u64,
    table: PendingTable,
    evicted: oneshot::Receiver<()>,
}

impl Admission {
    /// Takes the slot out of the table for the rest of the connection; `None` if the
    /// connection was evicted meanwhile.
    fn admit(&self) -> Option<OwnedSemaphorePermit> {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table.remove(&self.id).map(|p| p.permit)
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table.remove(&self.id);
    }
}

/// A parsed request line.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Request {
    /// `list [PROJECT[/PREFIX]]`.
    List(Option<(String, String)>),
    /// `stream PATH [from byte [-]N | from line [-]N | from time RFC3339]`.
    Stream(StreamKey, Start),
}

/// Where a `stream` request starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// `from byte [-]N` (and no `from`: byte 0).
    Byte(ByteStart),
    /// `from line [-]N`.
    Line(RowStart),
    /// `from time RFC3339`, in milliseconds since the Unix epoch.
    Time(i64),
}

/// A start resolved against the stream once: the line of `from line -N` is fixed when the
/// request arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Byte(ByteStart),
    /// This row (line or datagram) number.
    Row(u64),
    /// The first row written at or after this time (milliseconds since the Unix epoch).
    Time(i64),
    /// Lines of a binary stream: refused.
    NoLines,
}

/// The byte position of `target` in the stream (`None`: not stored yet).
fn resolve(
    store: &Store,
    key: &StreamKey,
    info: &StreamInfo,
    target: Target,
) -> Result<Option<ByteCursor>, StoreError> {
    let contiguous = info.state.contiguous;
    match target {
        Target::Byte(b) => {
            reader::seek(store, key, reader::stream_type(&info.desc), contiguous, b).map(Some)
        }
        Target::Row(n) => reader::seek_row(store, key, contiguous, n),
        Target::Time(ms) => reader::seek_time(store, key, &info.desc, contiguous, ms),
        Target::NoLines => Ok(None),
    }
}

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    /// The request was refused; the message goes to the client.
    #[error("{0}")]
    Refused(String),
    /// The store failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The server is stopping.
    #[error("the server is stopping")]
    Stopping,
    /// The connection sent no request and its slot was needed.
    #[error("dropped: no request line yet and the server needs the slot")]
    Evicted,
}

impl TailServer {
    /// A tail server over `store`, woken by `watchers` (the hub the write service notifies).
    pub fn new(store: Store, watchers: Watchers) -> Self {
        Self {
            store,
            watchers,
            chunks: ChunkCache::new(),
            stats: Arc::default(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            auth: Auth::open(),
            tls: None,
        }
    }

    /// Checks every request against `auth`: unless it is open, a connection's first line must
    /// be `auth TOKEN`, reading a stream needs the right to read its project, and `list` shows
    /// only readable projects.
    #[must_use]
    pub fn with_auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    /// Serves every connection over TLS with `acceptor` (see
    /// [`TlsIdentity::acceptor`](crate::tls::TlsIdentity::acceptor)).
    #[must_use]
    pub fn with_tls(mut self, acceptor: TlsAcceptor) -> Self {
        self.tls = Some(acceptor);
        self
    }

    /// Caps the connections open at once at `n` (at least 1).
    #[must_use]
    pub fn with_max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// Closes the oldest connection that has not sent its request yet and returns its slot;
    /// `why` is for the log.
    fn evict_oldest(&self, table: &PendingTable, why: &str) -> Option<OwnedSemaphorePermit> {
        let (_, pending) = table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_first()?;
        // The connection may be ending anyway; its slot is free either way.
        let _ = pending.evict.send(());
        let n = self.stats.evicted.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(
            evicted = n,
            max = self.max_connections,
            why,
            "tail connection dropped: no request line yet"
        );
        Some(pending.permit)
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<TailStats> {
        self.stats.clone()
    }

    /// Serves connections from `listener` until `shutdown` resolves; then stops accepting,
    /// closes every connection and returns once their tasks have ended.
    ///
    /// # Errors
    /// None so far: accept failures are logged, counted and retried.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> io::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        self.store
            .metrics()
            .watch_tail(&self.stats, self.max_connections);
        let limit = Arc::new(Semaphore::new(self.max_connections));
        let table = PendingTable::default();
        let mut next_id = 0u64;
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            while tasks.try_join_next().is_some() {}
            let accepted = tokio::select! {
                r = listener.accept() => r,
                () = &mut shutdown => break,
            };
            let (socket, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    let n = self.stats.errors.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::warn!(error = %e, errors = n, "tail server: accept failed");
                    // Out of file descriptors, most likely: close a connection that has not
                    // asked for anything, and give connections time to close.
                    drop(self.evict_oldest(&table, "accept failed"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            self.stats.connections.fetch_add(1, Ordering::Relaxed);
            // A free slot, or the slot of the oldest connection still without a request.
            let permit = match limit.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => self.evict_oldest(&table, "the connection table is full"),
            };
            let Some(permit) = permit else {
                let n = self.stats.turned_away.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(peer = %peer, turned_away = n, max = self.max_connections,
                    "tail connection turned away: every slot is serving a request");
                if self.tls.is_some() {
                    // A plain line would mean nothing to a TLS client: just close.
                    continue;
                }
                // Best effort, never waiting: the socket's send buffer is empty. What the
                // client sent already is read first, so that closing does not reset the
                // connection and lose the line.
                let mut sink = [0u8; 1024];
                for _ in 0..64 {
                    if !matches!(socket.try_read(&mut sink), Ok(n) if n > 0) {
                        break;
                    }
                }
                let line = format!(
                    "error: too many connections (at most {})\n",
                    self.max_connections
                );
                let _ = socket.try_write(line.as_bytes());
                continue;
            };
            let (evict, evicted) = oneshot::channel();
            let id = next_id;
            next_id += 1;
            table
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, Pending { permit, evict });
            let admission = Admission {
                id,
                table: table.clone(),
                evicted,
            };
            let server = self.clone();
            let stop = stop_rx.clone();
            tasks.spawn(
                async move {
                    server.stats.active.fetch_add(1, Ordering::Relaxed);
                    server.connection(socket, stop, admission).await;
                    server.stats.active.fetch_sub(1, Ordering::Relaxed);
                }
                .instrument(tracing::info_span!("tail", peer = %peer)),
            );
        }
        drop(listener);
        let _ = stop_tx.send(true);
        while tasks.join_next().await.is_some() {}
        tracing::info!(
            connections = self.stats.connections.load(Ordering::Relaxed),
            refused = self.stats.refused.load(Ordering::Relaxed),
            errors = self.stats.errors.load(Ordering::Relaxed),
            evicted = self.stats.evicted.load(Ordering::Relaxed),
            turned_away = self.stats.turned_away.load(Ordering::Relaxed),
            gone = self.stats.gone.load(Ordering::Relaxed),
            "tail server stopped"
        );
        Ok(())
    }

    /// Serves one connection to its end (after its TLS handshake, if the server has TLS),
    /// logging and counting what went wrong.
    async fn connection(
        &self,
        socket: TcpStream,
        mut stop: watch::Receiver<bool>,
        mut admission: Admission,
    ) {
        let _ = socket.set_nodelay(true);
        let Some(acceptor) = &self.tls else {
            self.session(socket, stop, admission).await;
            return;
        };
        let failed = |why: String| {
            let n = self.stats.errors.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::info!(error = %why, errors = n, "tail server: TLS handshake failed");
        };
        let tls = tokio::select! {
            r = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket)) => match r {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return failed(e.to_string()),
                Err(_) => return failed(format!(
                    "not finished within {}s", HANDSHAKE_TIMEOUT.as_secs()
                )),
            },
            _ = &mut admission.evicted => {
                tracing::debug!("tail connection evicted during its TLS handshake");
                return;
            }
            () = stopped(&mut stop) => return,
        };
        self.session(tls, stop, admission).await;
    }

    /// Serves the requests of one connection (plain or TLS).
    async fn session<S: AsyncRead + AsyncWrite + Send + Unpin>(
        &self,
        stream: S,
        mut stop: watch::Receiver<bool>,
        mut admission: Admission,
    ) {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let result = async {
            let mut lines = LineReader::default();
            let read = async {
                let mut line = lines.read_line(&mut rd).await?;
                let mut token = None;
                if let Some(t) = auth_line(&line) {
                    token = Some(t.to_string());
                    line = lines.read_line(&mut rd).await?;
                }
                Ok::<_, ConnError>((token, line))
            };
            let (token, line) = tokio::select! {
                r = tokio::time::timeout(REQUEST_TIMEOUT, read) => match r {
                    Ok(read) => read?,
                    Err(_) => return Err(ConnError::Refused(format!(
                        "no request line within {}s", REQUEST_TIMEOUT.as_secs()
                    ))),
                },
                _ = &mut admission.evicted => return Err(ConnError::Evicted),
                () = stopped(&mut stop) => return Err(ConnError::Stopping),
            };
            // Held until the connection ends: this slot can no longer be taken.
            let Some(_slot) = admission.admit() else {
                return Err(ConnError::Evicted);
            };
            let caller = self.caller(token.as_deref())?;
            match parse_request(&line).map_err(ConnError::Refused)? {
                Request::List(under) => self.list(&caller, under, &mut wr).await,
                Request::Stream(key, start) => {
                    self.permit(
                        &caller,
                        &key.project,
                        &format!("tail stream {}/{}/+/{}", key.project, key.prefix, key.name),
                    )?;
                    let _following = Following::enter(&self.stats);
                    self.follow(key, start, &mut rd, &mut wr, &mut stop).await
                }
            }
        }
        .await;
        let refused = matches!(
            result,
            Err(ConnError::Evicted | ConnError::Refused(_) | ConnError::Read(_))
        );
        match result {
            Ok(()) | Err(ConnError::Stopping) => {}
            Err(e @ ConnError::Evicted) => {
                // Counted and logged where it was evicted.
                let _ = wr.write_all(format!("error: {e}\n").as_bytes()).await;
            }
            Err(ConnError::Refused(msg)) => {
                let n = self.stats.refused.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::info!(reason = %msg, refused = n, "tail request refused");
                let _ = wr.write_all(format!("error: {msg}\n").as_bytes()).await;
            }
            Err(ConnError::Io(e)) if gone(&e) => {
                tracing::debug!(error = %e, "tail client went away");
            }
            Err(e) => {
                let n = self.stats.errors.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(error = %e, errors = n, "tail connection failed");
                if matches!(e, ConnError::Read(_)) {
                    let _ = wr.write_all(format!("error: {e}\n").as_bytes()).await;
                }
            }
        }
        let _ = wr.shutdown().await;
        if refused {
            // Closing with the client's bytes unread would send a reset, which can reach the
            // client before the `error:` line and lose it (a gRPC client sends its whole
            // preface at once): read and drop what it sent, for a moment, first.
            let mut sink = tokio::io::sink();
            let mut rest = (&mut rd).take(LINGER_BYTES);
            let _ = tokio::time::timeout(LINGER, tokio::io::copy(&mut rest, &mut sink)).await;
        }
    }

    /// Who sent `token` (the `auth` line's, if any); a refusal is counted and logged by the
    /// auth policy, without the token.
    fn caller(&self, token: Option<&str>) -> Result<Caller, ConnError> {
        let refuse = |d: Denied| ConnError::Refused(self.auth.refuse(d, "tail").to_string());
        match token {
            None if !self.auth.is_open() => Err(refuse(Denied::Unauthenticated(
                "this tail server needs a token: send `auth TOKEN` as the first line, then the \
                 request"
                    .to_string(),
            ))),
            Some("") => Err(refuse(Denied::Unauthenticated(
                "bad auth line: expected `auth TOKEN`".to_string(),
            ))),
            _ => self.auth.caller(token).map_err(refuse),
        }
    }

    /// Whether `caller` may read `project`; a refusal is counted and logged.
    fn permit(&self, caller: &Caller, project: &str, what: &str) -> Result<(), ConnError> {
        caller
            .may(Right::Read, project)
            .map_err(|d| ConnError::Refused(self.auth.refuse(d, what).to_string()))
    }

    /// Answers `list`.
    async fn list(
        &self,
        caller: &Caller,
        under: Option<(String, String)>,
        wr: &mut (impl AsyncWrite + Unpin),
    ) -> Result<(), ConnError> {
        let scopes = match under {
            Some((project, prefix)) => {
                self.permit(caller, &project, &format!("tail list {project}"))?;
                vec![(project, prefix)]
            }
            None => {
                let mut projects = self.watchers.projects();
                if !projects.iter().any(|p| p == "default") {
                    projects.insert(0, "default".to_string());
                }
                // Only what the caller may read.
                projects
                    .into_iter()
                    .filter(|p| caller.allows(Right::Read, p))
                    .map(|p| (p, String::new()))
                    .collect()
            }
        };
        for (project, prefix) in scopes {
            let store = self.store.clone();
            let listed = reader::blocking(move || store.list(&project, &prefix)).await?;
            let mut out = String::new();
            for (k, _) in listed {
                out.push_str(&format!("{}/{}/+/{}\n", k.project, k.prefix, k.name));
            }
            wr.write_all(out.as_bytes()).await?;
        }
        Ok(())
    }

    /// Answers `stream`: bytes from `start` (once the stream has reached it), then new bytes,
    /// until the stream is complete.
    async fn follow(
        &self,
        key: StreamKey,
        start: Start,
        rd: &mut (impl AsyncRead + Unpin),
        wr: &mut (impl AsyncWrite + Unpin),
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), ConnError> {
        // Subscribe before the first read, so no write between them is missed.
        let mut changes = self.watchers.subscribe(&key);
        let (store, k) = (self.store.clone(), key.clone());
        let first = reader::blocking(move || {
            let Some(info) = store.stream(&k)? else {
                return Ok(None);
            };
            let kind = reader::stream_type(&info.desc);
            let contiguous = info.state.contiguous;
            let target = match start {
                Start::Byte(b) => Target::Byte(b),
                Start::Line(_) if kind == StreamType::Binary => Target::NoLines,
                Start::Line(RowStart::From(n)) => Target::Row(n),
                // The last lines when the request arrives: a fixed line number from then on.
                Start::Line(RowStart::Last(n)) => {
                    Target::Row(reader::total_rows(&store, &k, contiguous)?.saturating_sub(n))
                }
                Start::Time(ms) => Target::Time(ms),
            };
            let cursor = resolve(&store, &k, &info, target)?;
            Ok(Some((target, cursor)))
        })
        .await?;
        let Some((target, mut found)) = first else {
            return Err(ConnError::Refused(format!(
                "stream {}/{}/+/{} not found",
                key.project, key.prefix, key.name
            )));
        };
        if target == Target::NoLines {
            return Err(ConnError::Refused(format!(
                "stream {}/{}/+/{} is binary and has no lines; use `from byte N` or `from time \
                 RFC3339`",
                key.project, key.prefix, key.name
            )));
        }
        // A line or time the stream has not reached yet: wait for it.
        let mut cursor = loop {
            if let Some(c) = found {
                break c;
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return Ok(()) },
                () = stopped(stop) => return Err(ConnError::Stopping),
                () = tokio::time::sleep(SAFETY_NET) => {}
                () = client_gone(rd) => {
                    self.stats.gone.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
            }
            changes.mark_unchanged();
            let (store, k) = (self.store.clone(), key.clone());
            let again = reader::blocking(move || match store.stream(&k)? {
                Some(info) => Ok((info.state.complete, resolve(&store, &k, &info, target)?)),
                None => Ok((false, None)),
            })
            .await?;
            match again {
                (_, Some(c)) => found = Some(c),
                // Complete without reaching it: nothing to send.
                (true, None) => return Ok(()),
                (false, None) => {}
            }
        };
        tracing::debug!(stream = %key.name, ?target, next = cursor.next, skip = cursor.skip, "following");
        let _reader = crate::trim::Reader::new();
        let mut buf = Vec::new();
        loop {
            changes.mark_unchanged();
            let chunk = self.chunks.read(&self.store, &key, cursor.next).await?;
            if !chunk.entries.is_empty() {
                // The chunk is shared with the other followers at this place; its bytes are
                // copied and written a piece of about WRITE_BUDGET at a time.
                let (mut at, mut piece) = (0, 0);
                while let Some(e) = chunk.entries.get(at) {
                    cursor.take_piece(e, piece, &mut buf);
                    piece += 1;
                    if piece == reader::pieces(e) {
                        (at, piece) = (at + 1, 0);
                    }
                    let last = at == chunk.entries.len();
                    if buf.is_empty() || (buf.len() < WRITE_BUDGET && !last) {
                        continue;
                    }
                    tokio::select! {
                        r = wr.write_all(&buf) => r?,
                        () = stopped(stop) => return Err(ConnError::Stopping),
                    }
                    self.stats
                        .bytes_sent
                        .fetch_add(buf.len() as u64, Ordering::Relaxed);
                    buf.clear();
                    if buf.capacity() > 4 * WRITE_BUDGET {
                        buf = Vec::new(); // after one huge entry, do not keep its buffer
                    }
                }
                continue;
            }
            drop(chunk);
            // Caught up: done if the stream is complete and everything was sent.
            let (store, k) = (self.store.clone(), key.clone());
            if let Some(info) = reader::blocking(move || store.stream(&k)).await? {
                let t = info.state.terminal_index;
                if info.state.complete && (t < 0 || cursor.next > t as u64) {
                    return Ok(());
                }
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return Ok(()) },
                () = stopped(stop) => return Err(ConnError::Stopping),
                () = tokio::time::sleep(SAFETY_NET) => {}
                // Nothing to write, so only a read can tell that the client has gone.
                () = client_gone(rd) => {
                    let n = self.stats.gone.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::debug!(stream = %key.name, gone = n, "tail follower's client went away");
                    return Ok(());
                }
            }
        }
    }
}

/// Resolves once the server is stopping.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Resolves at end of input or an error on the client's side of the connection; bytes the
/// client sends after its request are read and ignored.
async fn client_gone(rd: &mut (impl AsyncRead + Unpin)) {
    let mut sink = [0u8; 512];
    while let Ok(n) = rd.read(&mut sink).await {
        if n == 0 {
            return;
        }
    }
}

/// Whether an I/O error just means the client went away.
fn gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof
    )
}

/// Reads a connection's lines, keeping what came after a line for the next one.
#[derive(Debug, Default)]
struct LineReader {
    buf: Vec<u8>,
    /// End of input was reached.
    eof: bool,
}

impl LineReader {
    /// Reads a line (without `\n`, and a `\r` before it); at end of input, what came so far
    /// is the line.
    async fn read_line(&mut self, rd: &mut (impl AsyncRead + Unpin)) -> Result<String, ConnError> {
        let mut chunk = [0u8; 512];
        let mut line = loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=i).collect();
                line.pop();
                break line;
            }
            if self.eof || self.buf.len() > MAX_REQUEST_LINE {
                break std::mem::take(&mut self.buf);
            }
            let n = rd.read(&mut chunk).await?;
            if n == 0 {
                self.eof = true;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        if line.len() > MAX_REQUEST_LINE {
            return Err(ConnError::Refused(format!(
                "request line longer than {MAX_REQUEST_LINE} bytes"
            )));
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        String::from_utf8(line).map_err(|_| ConnError::Refused("request line is not UTF-8".into()))
    }
}

/// The token of an `auth TOKEN` line.
fn auth_line(line: &str) -> Option<&str> {
    let mut words = line.split_ascii_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some("auth"), Some(token), None) => Some(token),
        (Some("auth"), ..) => Some(""),
        _ => None,
    }
}

const USAGE: &str = "expected `stream PROJECT/PREFIX/+/NAME [from byte [-]N | from line [-]N | from time RFC3339]` or `list [PROJECT[/PREFIX]]`";

/// Parses a request line.
fn parse_request(line: &str) -> Result<Request, String> {
    let words: Vec<&str> = line.split_ascii_whitespace().collect();
    match words.as_slice() {
        ["list"] => Ok(Request::List(None)),
        ["list", scope] => Ok(Request::List(Some(reader::parse_scope(scope)?))),
        ["stream", path, rest @ ..] => {
            let key = reader::parse_stream_path(path)?;
            let start = match rest {
                [] => Start::Byte(ByteStart::From(0)),
                ["from", "byte", n] => Start::Byte(parse_offset(n)?),
                ["from", "line", n] => Start::Line(parse_line(n)?),
                ["from", "time", t] => Start::Time(parse_time(t)?),
                ["from", what, ..] if !["byte", "line", "time"].contains(what) => {
                    return Err(format!(
                        "`from {what}`: expected `from byte`, `from line` or `from time`"
                    ));
                }
                ["from", what] => return Err(format!("`from {what}` needs a value; {USAGE}")),
                _ => return Err(USAGE.to_string()),
            };
            Ok(Request::Stream(key, start))
        }
        [] => Err(format!("empty request; {USAGE}")),
        _ => Err(USAGE.to_string()),
    }
}

/// Parses `N` or `-N`.
fn parse_offset(s: &str) -> Result<ByteStart, String> {
    let bad = || format!("{s:?} is not a byte offset (N or -N)");
    match s.strip_prefix('-') {
        Some(n) => n.parse().map(ByteStart::Last).map_err(|_| bad()),
        None => s.parse().map(ByteStart::From).map_err(|_| bad()),
    }
}

/// Parses a line number `N` or `-N` (the last N lines).
fn parse_line(s: &str) -> Result<RowStart, String> {
    let bad = || {
        format!("{s:?} is not a line number (N from the first line, 0, or -N for the last N lines)")
    };
    match s.strip_prefix('-') {
        Some(n) => n.parse().map(RowStart::Last).map_err(|_| bad()),
        None => s.parse().map(RowStart::From).map_err(|_| bad()),
    }
}

/// Parses an RFC 3339 time in UTC (`2026-11-27T01:02:03Z`, fractions of a second allowed)
/// into milliseconds since the Unix epoch.
fn parse_time(s: &str) -> Result<i64, String> {
    let t = humantime::parse_rfc3339(s).map_err(|e| {
        format!("{s:?} is not an RFC 3339 time in UTC such as 2026-11-27T01:02:03Z ({e})")
    })?;
    let d = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("{s:?} is before 1970"))?;
    i64::try_from(d.as_millis()).map_err(|_| format!("{s:?} is too far in the future"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(project: &str, prefix: &str, name: &str) -> StreamKey {
        StreamKey {
            project: project.into(),
            prefix: prefix.into(),
            name: name.into(),
        }
    }

    #[test]
    fn requests() {
        // Projects are lowercase.
        assert!(parse_request("stream P/X/+/stdout from byte 1000").is_err());
        assert_eq!(
            parse_request("stream p/x/y/+/std/out from byte 1000"),
            Ok(Request::Stream(
                key("p", "x/y", "std/out"),
                Start::Byte(ByteStart::From(1000))
            ))
        );
        assert_eq!(
            parse_request("  stream  p/x/+/a   from byte -200 "),
            Ok(Request::Stream(
                key("p", "x", "a"),
                Start::Byte(ByteStart::Last(200))
            ))
        );
        assert_eq!(
            parse_request("stream p/x/+/a"),
            Ok(Request::Stream(
                key("p", "x", "a"),
                Start::Byte(ByteStart::From(0))
            ))
        );
        assert_eq!(
            parse_request("stream p/x/+/a from line 7"),
            Ok(Request::Stream(
                key("p", "x", "a"),
                Start::Line(RowStart::From(7))
            ))
        );
        assert_eq!(
            parse_request("stream p/x/+/a from line -3"),
            Ok(Request::Stream(
                key("p", "x", "a"),
                Start::Line(RowStart::Last(3))
            ))
        );
        assert_eq!(
            parse_request("stream p/x/+/a from time 1970-01-01T00:00:01.5Z"),
            Ok(Request::Stream(key("p", "x", "a"), Start::Time(1500)))
        );
        assert_eq!(parse_request("list"), Ok(Request::List(None)));
        assert_eq!(
            parse_request("list p/a/b"),
            Ok(Request::List(Some(("p".into(), "a/b".into()))))
        );
        for bad in [
            "",
            "get p/x/+/a",
            "stream",
            "stream p/x/a",
            "stream p/x/+/a from 10",
            "stream p/x/+/a from byte ten",
            "stream p/x/+/a from byte --1",
            "stream p/x/+/a from byte 1 extra",
            "stream p/x/+/a from line",
            "stream p/x/+/a from line ten",
            "stream p/x/+/a from line 1.5",
            "stream p/x/+/a from time yesterday",
            "stream p/x/+/a from time 2026-11-27",
            "stream p/x/+/a from page 3",
            "stream p/x/+/_a",
            "list a b",
            "list Bad",
        ] {
            assert!(parse_request(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
