//! Ceilings on the gRPC ingress, so that hostile or broken clients cannot grow the
//! collector's memory without bound or keep honest butlers out.
//!
//! - Connections: at most [`Limits::max_connections`] at once; past it a new connection is
//!   accepted and closed at once (clients see `UNAVAILABLE` and retry).
//! - Calls: at most [`MAX_CALLS_PER_CONNECTION`] concurrent HTTP/2 streams per connection.
//! - Request bodies: every gRPC message reserves its announced length (the 5-byte gRPC frame
//!   header) from one budget of [`Limits::max_inflight_bytes`] before any of its bytes are
//!   handed to the decoder, and keeps it until its call has been answered. A call that cannot
//!   reserve waits without reading, so HTTP/2 flow control stops its sender after at most one
//!   connection window ([`Limits::connection_window`]) of unread bytes.
//! - Read deadline: a call whose request body has not fully arrived within
//!   [`Limits::read_deadline`] is ended: `DEADLINE_EXCEEDED` if it was sending too slowly,
//!   `RESOURCE_EXHAUSTED` if it was still waiting for the budget. Both are retriable.
//!
//! So request bodies hold at most about `max_inflight_bytes + max_connections ×
//! connection_window` bytes, whatever clients announce and however they stall (with the
//! defaults, 256 MiB + 256 × 1 MiB). The window trades that worst case for throughput over
//! long round trips (see [`DEFAULT_CONNECTION_WINDOW`]).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore, TryAcquireError, mpsc};
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Default [`Limits::max_inflight_bytes`]: 256 MiB.
pub const DEFAULT_MAX_INFLIGHT_BYTES: u64 = 256 << 20;
/// Default [`Limits::read_deadline`].
pub const DEFAULT_READ_DEADLINE: Duration = Duration::from_secs(60);
/// Default [`Limits::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Concurrent calls (HTTP/2 streams) a connection may have open.
pub const MAX_CALLS_PER_CONNECTION: u32 = 32;
/// HTTP/2 receive window of one call: bytes its sender may have in flight unread (never more
/// than the connection's window, [`Limits::connection_window`]).
pub const STREAM_WINDOW: u32 = 1 << 20;
/// Default [`Limits::connection_window`]: 1 MiB, hyper's own default. On loopback, larger
/// windows (8 and 16 MiB, with 1 to 16 MiB stream windows) measured no faster with
/// `bench/collector.py`; a larger window pays off where the round trip is long (a connection
/// moves at most one window per round trip: 1 MiB over 50 ms is 20 MiB/s).
pub const DEFAULT_CONNECTION_WINDOW: u32 = 1 << 20;
/// Largest HTTP/2 frame the collector accepts (HTTP/2's default is 16 KiB). Larger frames cost
/// the collector about 15% less CPU per byte of bundles; they do not change what a connection
/// may park, which its window bounds.
pub const MAX_FRAME_SIZE: u32 = 256 << 10;
/// Smallest [`Limits::connection_window`] (HTTP/2's initial window).
pub const MIN_CONNECTION_WINDOW: u32 = 65_535;
/// Largest [`Limits::connection_window`] (HTTP/2's largest window).
pub const MAX_CONNECTION_WINDOW: u32 = (1 << 31) - 1;
/// The budget is counted in units of this many bytes (semaphore permits are `u32`).
const UNIT: u64 = 1024;

/// The ingress's ceilings (see the [module](self) documentation).
#[derive(Clone, Debug)]
pub struct Limits {
    /// Bytes of request messages that calls in progress may hold at once.
    pub max_inflight_bytes: u64,
    /// How long a call's request body may take to arrive.
    pub read_deadline: Duration,
    /// Connections open at once.
    pub max_connections: usize,
    /// HTTP/2 receive window of one connection, shared by its calls: the unread request bytes
    /// one connection may park in memory (clamped to [`MIN_CONNECTION_WINDOW`]..=
    /// [`MAX_CONNECTION_WINDOW`]).
    pub connection_window: u32,
}

impl Limits {
    /// The connection window to advertise: [`Limits::connection_window`], clamped.
    pub fn connection_window(&self) -> u32 {
        self.connection_window
            .clamp(MIN_CONNECTION_WINDOW, MAX_CONNECTION_WINDOW)
    }

    /// The stream window to advertise: [`STREAM_WINDOW`], at most the connection window.
    pub fn stream_window(&self) -> u32 {
        STREAM_WINDOW.min(self.connection_window())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_inflight_bytes: DEFAULT_MAX_INFLIGHT_BYTES,
            read_deadline: DEFAULT_READ_DEADLINE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            connection_window: DEFAULT_CONNECTION_WINDOW,
        }
    }
}

/// Refusals so far, for the log lines that report them.
#[derive(Debug, Default)]
struct Counters {
    budget_waits: AtomicU64,
    slow_bodies: AtomicU64,
}

/// The request-body budget shared by every call.
#[derive(Debug)]
pub(crate) struct Budget {
    sem: Arc<Semaphore>,
    units: u32,
    /// Messages longer than this are refused by the decoder before it reads them, so they
    /// reserve nothing.
    largest: u64,
    read_deadline: Duration,
    counters: Counters,
}

impl Budget {
    /// A budget for `limits`, for services that refuse messages over `largest` bytes.
    pub(crate) fn new(limits: &Limits, largest: u64) -> Arc<Self> {
        let units = (limits.max_inflight_bytes / UNIT).clamp(1, u64::from(u32::MAX >> 3));
        let units = u32::try_from(units).unwrap_or(u32::MAX >> 3);
        Arc::new(Self {
            sem: Arc::new(Semaphore::new(units as usize)),
            units,
            largest,
            read_deadline: limits.read_deadline,
            counters: Counters::default(),
        })
    }

    /// Calls ended so far: (waiting for the budget until the read deadline, request not
    /// arrived within the read deadline).
    pub(crate) fn refusals(&self) -> (u64, u64) {
        (
            self.counters.budget_waits.load(Ordering::Relaxed),
            self.counters.slow_bodies.load(Ordering::Relaxed),
        )
    }

    /// Bytes reserved now, and the budget (both in whole units of 1 KiB).
    pub(crate) fn usage(&self) -> (u64, u64) {
        let free = self.sem.available_permits() as u64;
        let units = u64::from(self.units);
        (units.saturating_sub(free) * UNIT, units * UNIT)
    }
}

/// A service whose calls' request bodies draw on a [`Budget`] and obey its read deadline.
#[derive(Clone, Debug)]
pub(crate) struct Budgeted<S> {
    inner: S,
    budget: Arc<Budget>,
}

impl<S> Budgeted<S> {
    pub(crate) fn new(inner: S, budget: Arc<Budget>) -> Self {
        Self { inner, budget }
    }
}

impl<S: NamedService> NamedService for Budgeted<S> {
    const NAME: &'static str = S::NAME;
}

type Held = Arc<Mutex<Vec<OwnedSemaphorePermit>>>;

impl<S> Service<http::Request<Body>> for Budgeted<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        // The reservations live until both the body and the call are done: the decoded
        // message stays in memory while the call is handled.
        let held: Held = Arc::default();
        let (parts, body) = req.into_parts();
        let body = BudgetBody {
            inner: body,
            budget: self.budget.clone(),
            held: held.clone(),
            held_units: 0,
            header: [0; 5],
            have: 0,
            remaining: 0,
            waiting: None,
            deadline: Box::pin(tokio::time::sleep(self.budget.read_deadline)),
            method: parts.uri.path().to_string(),
            done: false,
        };
        let call = self
            .inner
            .call(http::Request::from_parts(parts, Body::new(body)));
        Box::pin(async move {
            let response = call.await;
            drop(held);
            response
        })
    }
}

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// A request body that reserves each message's announced length before passing its bytes on.
struct BudgetBody {
    inner: Body,
    budget: Arc<Budget>,
    held: Held,
    held_units: u32,
    /// The gRPC frame header being read (compression flag, then the length, big-endian).
    header: [u8; 5],
    have: usize,
    /// Bytes of the current message not yet seen.
    remaining: u64,
    /// A chunk held back until its reservation is granted.
    waiting: Option<(Bytes, Acquire)>,
    deadline: Pin<Box<tokio::time::Sleep>>,
    method: String,
    done: bool,
}

impl BudgetBody {
    /// Walks `data` through the gRPC framing; returns the units to reserve for the messages
    /// whose headers it completes.
    fn scan(&mut self, data: &[u8]) -> u32 {
        let mut need = 0u64;
        let mut rest = data;
        while !rest.is_empty() {
            if self.remaining > 0 {
                let n = rest
                    .len()
                    .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                rest = &rest[n..];
                self.remaining -= n as u64;
                continue;
            }
            let n = rest.len().min(5 - self.have);
            self.header[self.have..self.have + n].copy_from_slice(&rest[..n]);
            self.have += n;
            rest = &rest[n..];
            if self.have == 5 {
                self.have = 0;
                let len = u64::from(u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]));
                self.remaining = len;
                if len <= self.budget.largest {
                    need += len + 5;
                }
            }
        }
        // A message larger than the whole budget takes all of it rather than waiting forever.
        let units = need.div_ceil(UNIT);
        let room = u64::from(self.budget.units - self.held_units);
        u32::try_from(units.min(room)).unwrap_or(0)
    }

    fn hold(&mut self, permit: OwnedSemaphorePermit) {
        self.held_units += u32::try_from(permit.num_permits()).unwrap_or(0);
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(permit);
    }

    fn fail(&mut self, status: Status) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.done = true;
        self.waiting = None;
        Poll::Ready(Some(Err(status)))
    }
}

impl http_body::Body for BudgetBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if let Some((_, acquire)) = &mut this.waiting {
            return match acquire.as_mut().poll(cx) {
                Poll::Ready(Ok(permit)) => {
                    this.hold(permit);
                    match this.waiting.take() {
                        Some((data, _)) => Poll::Ready(Some(Ok(Frame::data(data)))),
                        None => Poll::Pending,
                    }
                }
                Poll::Ready(Err(_)) => this.fail(Status::unavailable("the collector is stopping")),
                Poll::Pending if this.deadline.as_mut().poll(cx).is_ready() => {
                    let n = this
                        .budget
                        .counters
                        .budget_waits
                        .fetch_add(1, Ordering::Relaxed)
                        + 1;
                    tracing::warn!(method = %this.method, refused = n, "ended a call that waited for the in-flight request budget until its read deadline");
                    this.fail(Status::resource_exhausted(
                        "the collector's in-flight request budget is full; retry later",
                    ))
                }
                Poll::Pending => Poll::Pending,
            };
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            let n = this
                .budget
                .counters
                .slow_bodies
                .fetch_add(1, Ordering::Relaxed)
                + 1;
            tracing::warn!(method = %this.method, refused = n, deadline = ?this.budget.read_deadline, "ended a call whose request did not arrive within the read deadline");
            return this.fail(Status::deadline_exceeded(format!(
                "the request did not arrive within the collector's read deadline of {:?}",
                this.budget.read_deadline
            )));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let data = match frame.into_data() {
                    Ok(data) => data,
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                };
                let units = this.scan(&data);
                if units == 0 {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                match this.budget.sem.clone().try_acquire_many_owned(units) {
                    Ok(permit) => {
                        this.hold(permit);
                        Poll::Ready(Some(Ok(Frame::data(data))))
                    }
                    Err(TryAcquireError::NoPermits) => {
                        // Wait without reading further: flow control holds the sender back.
                        let acquire = this.budget.sem.clone().acquire_many_owned(units);
                        this.waiting = Some((data, Box::pin(acquire)));
                        Pin::new(this).poll_frame(cx)
                    }
                    Err(TryAcquireError::Closed) => {
                        this.fail(Status::unavailable("the collector is stopping"))
                    }
                }
            }
            Poll::Ready(Some(Err(e))) => this.fail(e),
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || (self.waiting.is_none() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        match &self.waiting {
            Some(_) => SizeHint::default(),
            None => self.inner.size_hint(),
        }
    }
}

/// A connection holding one of the connection slots until it closes.
#[derive(Debug)]
pub(crate) struct Capped {
    io: TcpStream,
    _slot: OwnedSemaphorePermit,
    /// Read-ahead for TLS connections (`None` for plain ones): rustls reads the socket 4 KiB
    /// at a time, so without it a bundle costs four system calls per 16 KiB record.
    ahead: Option<ReadAhead>,
}

/// Bytes read from the socket but not yet handed on.
struct ReadAhead {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl std::fmt::Debug for ReadAhead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadAhead")
            .field("buffered", &(self.end - self.start))
            .finish()
    }
}

/// Size of a TLS connection's read-ahead buffer.
pub const READ_AHEAD: usize = 64 * 1024;

impl Connected for Capped {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.io.connect_info()
    }
}

impl AsyncRead for Capped {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let Some(ahead) = &mut this.ahead else {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        };
        if ahead.start == ahead.end {
            // A read at least as large as the buffer gains nothing from it.
            if buf.remaining() >= ahead.buf.len() {
                return Pin::new(&mut this.io).poll_read(cx, buf);
            }
            let mut fill = ReadBuf::new(&mut ahead.buf);
            std::task::ready!(Pin::new(&mut this.io).poll_read(cx, &mut fill))?;
            ahead.start = 0;
            ahead.end = fill.filled().len();
        }
        let n = buf.remaining().min(ahead.end - ahead.start);
        buf.put_slice(&ahead.buf[ahead.start..ahead.start + n]);
        ahead.start += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Capped {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The connection slots of the gRPC server: its ceiling, and the connections refused.
#[derive(Debug)]
pub(crate) struct Slots {
    sem: Arc<Semaphore>,
    max: usize,
    refused: AtomicU64,
}

impl Slots {
    /// Connections open now.
    pub(crate) fn open(&self) -> usize {
        self.max.saturating_sub(self.sem.available_permits())
    }

    /// The ceiling.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Connections closed on arrival so far.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// The connections accepted on `listener`, at most `max` open at once: past it a connection
/// is closed as soon as it is accepted (counted and logged). Accepting stops when the stream
/// is dropped. `metrics` reads the slots.
pub(crate) fn incoming(
    listener: TcpListener,
    max: usize,
    read_ahead: bool,
    metrics: &crate::metrics::Metrics,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<Capped>> {
    let (tx, rx) = mpsc::channel(1);
    let max = max.clamp(1, Semaphore::MAX_PERMITS);
    let slots = Arc::new(Slots {
        sem: Arc::new(Semaphore::new(max)),
        max,
        refused: AtomicU64::new(0),
    });
    metrics.watch_slots(&slots);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = tx.closed() => return,
                a = listener.accept() => a,
            };
            match accepted {
                Ok((io, peer)) => match slots.sem.clone().try_acquire_owned() {
                    Ok(slot) => {
                        let _ = io.set_nodelay(true);
                        let ahead = read_ahead.then(|| ReadAhead {
                            buf: vec![0; READ_AHEAD].into_boxed_slice(),
                            start: 0,
                            end: 0,
                        });
                        let capped = Capped {
                            io,
                            _slot: slot,
                            ahead,
                        };
                        if tx.send(Ok(capped)).await.is_err() {
                            return;
                        }
                    }
                    Err(_) => {
                        let refused = slots.refused.fetch_add(1, Ordering::Relaxed) + 1;
                        tracing::warn!(%peer, max, refused, "closed a connection: the collector has its maximum of connections open");
                    }
                },
                Err(e) => {
                    // Out of file descriptors, typically: pause rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(max_inflight_bytes: u64, largest: u64) -> BudgetBody {
        let limits = Limits {
            max_inflight_bytes,
            ..Limits::default()
        };
        BudgetBody {
            inner: Body::empty(),
            budget: Budget::new(&limits, largest),
            held: Arc::default(),
            held_units: 0,
            header: [0; 5],
            have: 0,
            remaining: 0,
            waiting: None,
            deadline: Box::pin(tokio::time::sleep(limits.read_deadline)),
            method: "/test".into(),
            done: false,
        }
    }

    fn header(len: u32) -> Vec<u8> {
        let mut h = vec![0];
        h.extend_from_slice(&len.to_be_bytes());
        h
    }

    #[tokio::test]
    async fn each_message_reserves_its_announced_length_once_its_header_is_complete() {
        let mut b = body(1 << 30, 1 << 25);
        let h = header(10 * 1024);
        // The header split across chunks: nothing until it is whole.
        assert_eq!(b.scan(&h[..2]), 0);
        assert_eq!(b.scan(&h[2..]), 11); // 10 KiB + 5 bytes, rounded up to KiB
        // The body itself reserves nothing more.
        assert_eq!(b.scan(&[0; 10 * 1024]), 0);
        // Two messages in one chunk.
        let mut two = header(1);
        two.push(0);
        two.extend(header(2048));
        assert_eq!(b.scan(&two), 3);
    }

    #[tokio::test]
    async fn oversized_messages_reserve_nothing_and_no_call_reserves_more_than_the_budget() {
        // Longer than the decoder accepts: it refuses the message unread.
        let mut b = body(1 << 30, 1 << 20);
        assert_eq!(b.scan(&header((1 << 20) + 1)), 0);
        // Longer than the whole budget: all of it, rather than waiting forever.
        let mut b = body(64 * 1024, 1 << 25);
        assert_eq!(b.scan(&header(1 << 24)), 64);
    }
}
