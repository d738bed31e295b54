//! The async shell around the bundler [`Core`].
//!
//! One task owns the core. Stream writers ([`StreamSink`]) send it chunks over a bounded
//! channel; each stream also has a byte budget (a semaphore of `max_buffered_bytes` permits)
//! that a writer must take before it sends, and that the shell gives back as the core cuts the
//! bytes into bundles. A full buffer therefore blocks the writer, and through it the reader and
//! the producing process: nothing is dropped.
//!
//! The shell cuts a bundle as soon as the output has room for one and the core has something
//! to emit, so bundles stay small (and latency low) while the output keeps up, and grow while it
//! is busy. It also wakes when buffered bytes reach the maximum buffer age, so that an
//! unfinished line waits no longer than that.
//!
//! Shutdown flows with the data: when every [`Handle`] and [`StreamSink`] is dropped, the
//! shell closes the streams still open, flushes everything, waits for the sends to finish and
//! returns its totals.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use logdog_outputs::Output;
use logdog_proto::logpb;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::core::{Config, Core, Finished, RegisterError, StreamId};

/// Capacity of the shell's input channel.
const INPUT_CAPACITY: usize = 256;
/// Past the flush timeout, how often the shell asks an output that holds its sends
/// ([`Output::holds_sends`]) whether it still does.
const HOLD_RECHECK: Duration = Duration::from_secs(1);

/// Sees every log entry of one stream, in order, before it is handed to the output; then
/// `None`, exactly once, when the stream has ended.
pub type EntryCallback = Box<dyn FnMut(Option<&logpb::LogEntry>) + Send>;

enum Input {
    Register {
        desc: logpb::LogStreamDescriptor,
        callback: Option<EntryCallback>,
        reply: oneshot::Sender<Result<StreamSink, RegisterError>>,
        done: oneshot::Sender<Finished>,
    },
    Append(StreamId, Bytes),
    Close(StreamId),
    Fail(StreamId, String),
}

/// Cloneable handle to a running shell.
#[derive(Debug, Clone)]
pub struct Handle {
    tx: mpsc::Sender<Input>,
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Input::Register { desc, .. } => write!(f, "Register({})", desc.name),
            Input::Append(id, b) => write!(f, "Append({id:?}, {} bytes)", b.len()),
            Input::Close(id) => write!(f, "Close({id:?})"),
            Input::Fail(id, r) => write!(f, "Fail({id:?}, {r})"),
        }
    }
}

/// Errors from the shell's handles.
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    /// The shell has stopped.
    #[error("bundler has stopped")]
    Stopped,
    /// The stream was ended by the bundler (for example after a datagram framing error).
    #[error("stream was closed by the bundler")]
    StreamClosed,
    /// Registration failed.
    #[error(transparent)]
    Register(#[from] RegisterError),
}

/// The writing end of one stream.
#[derive(Debug)]
pub struct StreamSink {
    id: StreamId,
    budget: Arc<Semaphore>,
    tx: mpsc::Sender<Input>,
    read_size: usize,
    ended: bool,
}

/// What the shell did, reported when it stops.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ShellTotals {
    /// Bundles handed to the output.
    pub bundles: u64,
    /// Bundles the output failed to deliver (including those still unacknowledged when the
    /// flush timeout ran out).
    pub failed_bundles: u64,
    /// Payload bytes of those bundles, per stream name.
    pub undelivered: BTreeMap<String, u64>,
}

impl Handle {
    /// Starts a shell on the current tokio runtime. Returns the handle and the task, which
    /// ends once every handle and sink is dropped and everything has been sent.
    pub fn spawn(
        cfg: Config,
        output: Arc<dyn Output>,
    ) -> (Handle, tokio::task::JoinHandle<ShellTotals>) {
        let (tx, rx) = mpsc::channel(INPUT_CAPACITY);
        // The core adjusts out-of-range settings; writers must use the values in force.
        let cfg_flush_timeout = cfg.flush_timeout;
        let core = Core::new(cfg);
        let shell = Shell {
            read_size: core.config().read_size,
            max_buffered: core.config().max_buffered_bytes,
            core,
            rx,
            tx: tx.downgrade(),
            in_flight: Arc::new(Semaphore::new(output.max_in_flight().max(1))),
            output,
            streams: HashMap::new(),
            callbacks: HashMap::new(),
            sends: JoinSet::new(),
            in_flight_sends: HashMap::new(),
            flush_timeout: cfg_flush_timeout,
            gave_up: false,
            totals: ShellTotals::default(),
        };
        (Handle { tx }, tokio::spawn(shell.run()))
    }

    /// Registers a stream. The returned receiver fires once the stream's last bundle has been
    /// handed to the output. `callback`, if any, sees the stream's entries as they are cut.
    ///
    /// # Errors
    /// The shell has stopped, or the core refused the stream.
    pub async fn register(
        &self,
        desc: logpb::LogStreamDescriptor,
        callback: Option<EntryCallback>,
    ) -> Result<(StreamSink, oneshot::Receiver<Finished>), ShellError> {
        let (reply, reply_rx) = oneshot::channel();
        let (done, done_rx) = oneshot::channel();
        self.tx
            .send(Input::Register {
                desc,
                callback,
                reply,
                done,
            })
            .await
            .map_err(|_| ShellError::Stopped)?;
        let sink = reply_rx.await.map_err(|_| ShellError::Stopped)??;
        Ok((sink, done_rx))
    }
}

impl StreamSink {
    /// Largest chunk [`write`](Self::write) takes at once.
    pub fn read_size(&self) -> usize {
        self.read_size
    }

    /// Appends bytes, waiting while the stream's buffer is full. Chunks larger than
    /// [`read_size`](Self::read_size) are split.
    ///
    /// # Errors
    /// The shell stopped, or ended this stream (the caller should stop reading).
    pub async fn write(&self, mut data: Bytes) -> Result<(), ShellError> {
        while !data.is_empty() {
            let chunk = data.split_to(data.len().min(self.read_size));
            let n = u32::try_from(chunk.len()).map_err(|_| ShellError::StreamClosed)?;
            self.budget
                .acquire_many(n)
                .await
                .map_err(|_| ShellError::StreamClosed)?
                .forget();
            self.tx
                .send(Input::Append(self.id, chunk))
                .await
                .map_err(|_| ShellError::Stopped)?;
        }
        Ok(())
    }

    /// Ends the stream normally.
    pub async fn close(mut self) {
        self.ended = true;
        let _ = self.tx.send(Input::Close(self.id)).await;
    }

    /// Ends the stream with an error; buffered data is dropped and counted.
    pub async fn fail(mut self, reason: String) {
        self.ended = true;
        let _ = self.tx.send(Input::Fail(self.id, reason)).await;
    }
}

impl Drop for StreamSink {
    /// A sink dropped without [`close`](StreamSink::close) (a reader that panicked or was
    /// cancelled) still ends its stream, so nothing waits for it forever.
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let (tx, id) = (self.tx.clone(), self.id);
        if tx.try_send(Input::Close(id)).is_err()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                let _ = tx.send(Input::Close(id)).await;
            });
        }
    }
}

struct StreamState {
    budget: Arc<Semaphore>,
    done: oneshot::Sender<Finished>,
    callback: Option<EntryCallback>,
}

struct Shell {
    core: Core,
    read_size: usize,
    max_buffered: usize,
    rx: mpsc::Receiver<Input>,
    /// Lets the shell hand out sinks without keeping itself alive.
    tx: mpsc::WeakSender<Input>,
    in_flight: Arc<Semaphore>,
    output: Arc<dyn Output>,
    streams: HashMap<StreamId, StreamState>,
    /// Streams with an entry callback, by name (bundle entries carry names, not ids).
    callbacks: HashMap<String, StreamId>,
    sends: JoinSet<bool>,
    /// What each send in flight carries: payload bytes per stream, and the streams whose last
    /// bundle it is.
    in_flight_sends: HashMap<tokio::task::Id, InFlight>,
    flush_timeout: Duration,
    /// Set when the flush timeout ran out: nothing more is sent.
    gave_up: bool,
    totals: ShellTotals,
}

struct InFlight {
    payload: Vec<(String, u64)>,
    done: Vec<(oneshot::Sender<Finished>, Finished)>,
}

impl Shell {
    async fn run(mut self) -> ShellTotals {
        let mut input_open = true;
        // Whether the core may have something new to cut.
        let mut dirty = false;
        // Once everything is cut, sends still unacknowledged get this long.
        let mut flush_deadline: Option<Instant> = None;
        // Whether the flush timeout passed while the output held its sends.
        let mut held = false;
        loop {
            if !input_open && self.core.is_empty() && self.sends.is_empty() {
                break;
            }
            if !input_open && flush_deadline.is_none() {
                flush_deadline = Some(Instant::now() + self.flush_timeout);
            }
            let deadline = self.core.next_deadline().map(Instant::from_std);
            let can_cut = dirty && self.core.has_pending();
            tokio::select! {
                biased;
                permit = self.in_flight.clone().acquire_owned(), if can_cut => {
                    let Ok(permit) = permit else { break };
                    let flush = !input_open;
                    match self.core.next_bundle(Instant::now().into_std(), SystemTime::now(), flush) {
                        None => dirty = false,
                        Some(cut) => self.dispatch(cut, permit),
                    }
                }
                Some(res) = self.sends.join_next_with_id(), if !self.sends.is_empty() => {
                    let (id, ok) = match res {
                        Ok((id, ok)) => (id, ok),
                        Err(e) => (e.id(), false),
                    };
                    self.sent(id, ok);
                }
                () = sleep_until_opt(flush_deadline), if !self.gave_up && flush_deadline.is_some() => {
                    if self.output.holds_sends() {
                        // Giving up would drop bundles the output is still keeping (waiting for
                        // room on a full spool disk): wait on, and say so once.
                        if !held {
                            tracing::warn!(
                                bundles = self.sends.len(),
                                timeout = ?self.flush_timeout,
                                "flush timeout passed, but the output keeps every bundle until \
                                 it has room for it (a full spool disk?): waiting on, nothing \
                                 is given up"
                            );
                            held = true;
                        }
                        flush_deadline = Some(Instant::now() + HOLD_RECHECK);
                        continue;
                    }
                    tracing::error!(
                        bundles = self.sends.len(),
                        timeout = ?self.flush_timeout,
                        "output did not acknowledge everything within the flush timeout; giving up"
                    );
                    // What is in flight is abandoned; what is still to be cut is cut and
                    // counted as undelivered without being sent.
                    self.gave_up = true;
                    self.sends.abort_all();
                    dirty = true;
                }
                msg = self.rx.recv(), if input_open => match msg {
                    Some(m) => {
                        self.handle(m);
                        dirty = true;
                    }
                    None => {
                        // Nobody can write any more: end what is still open and flush.
                        input_open = false;
                        self.core.close_all();
                        dirty = true;
                    }
                },
                () = sleep_until_opt(deadline), if !dirty && deadline.is_some() => dirty = true,
            }
        }
        self.totals
    }

    fn handle(&mut self, m: Input) {
        match m {
            Input::Register {
                desc,
                callback,
                reply,
                done,
            } => {
                // The registering handle is alive (it awaits the reply), so this upgrades.
                let Some(tx) = self.tx.upgrade() else { return };
                let now = Instant::now().into_std();
                let name = desc.name.clone();
                let sink = self.core.register(desc, now, SystemTime::now()).map(|id| {
                    let budget = Arc::new(Semaphore::new(self.max_buffered));
                    if callback.is_some() {
                        self.callbacks.insert(name, id);
                    }
                    let state = StreamState {
                        budget: budget.clone(),
                        done,
                        callback,
                    };
                    self.streams.insert(id, state);
                    StreamSink {
                        id,
                        budget,
                        tx,
                        read_size: self.read_size,
                        ended: false,
                    }
                });
                let _ = reply.send(sink);
            }
            Input::Append(id, data) => self.core.append(id, data, Instant::now().into_std()),
            Input::Close(id) => self.core.close(id),
            Input::Fail(id, reason) => self.core.fail(id, reason),
        }
    }

    fn dispatch(&mut self, cut: crate::core::Cut, permit: tokio::sync::OwnedSemaphorePermit) {
        for (id, n) in cut.released {
            if let Some(st) = self.streams.get(&id) {
                st.budget.add_permits(n);
            }
        }
        if !self.callbacks.is_empty() {
            self.run_callbacks(&cut.bundle);
        }
        let mut done = Vec::new();
        for f in cut.finished {
            if let Some(st) = self.streams.remove(&f.id) {
                // Wakes a writer still waiting for room in a stream the core has ended.
                st.budget.close();
                done.push((st.done, f));
            }
        }
        if cut.bundle.entries.is_empty() {
            for (tx, f) in done {
                let _ = tx.send(f);
            }
            return;
        }
        let output = self.output.clone();
        let bundle = cut.bundle;
        let payload: Vec<(String, u64)> = bundle
            .entries
            .iter()
            .map(|e| {
                let bytes = e.logs.iter().map(|l| l.content.data().len() as u64).sum();
                (e.desc.name().to_string(), bytes)
            })
            .collect();
        if self.gave_up {
            self.totals.bundles += 1;
            self.totals.failed_bundles += 1;
            for (name, bytes) in payload {
                *self.totals.undelivered.entry(name).or_default() += bytes;
            }
            for (tx, fin) in done {
                let _ = tx.send(fin);
            }
            return;
        }
        let task = self.sends.spawn(async move {
            let ok = match output.send(bundle).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(error = %e, "output failed to deliver a bundle");
                    false
                }
            };
            drop(permit);
            ok
        });
        self.in_flight_sends
            .insert(task.id(), InFlight { payload, done });
    }

    /// Settles a finished (or aborted) send: counts it, and tells the streams whose last
    /// bundle it was.
    fn sent(&mut self, id: tokio::task::Id, ok: bool) {
        self.totals.bundles += 1;
        let Some(f) = self.in_flight_sends.remove(&id) else {
            return;
        };
        if !ok {
            self.totals.failed_bundles += 1;
            for (name, bytes) in f.payload {
                *self.totals.undelivered.entry(name).or_default() += bytes;
            }
        }
        for (tx, mut fin) in f.done {
            fin.delivered = ok;
            let _ = tx.send(fin);
        }
    }
}

impl Shell {
    /// Shows each stream with a callback its new entries, then the end marker if it ended.
    fn run_callbacks(&mut self, bundle: &logdog_proto::Bundle) {
        for entry in &bundle.entries {
            let Some(id) = self.callbacks.get(entry.desc.name()).copied() else {
                continue;
            };
            let Some(cb) = self
                .streams
                .get_mut(&id)
                .and_then(|st| st.callback.as_mut())
            else {
                continue;
            };
            for log in &entry.logs {
                cb(Some(&log.to_logpb()));
            }
            if entry.terminal_index.is_some() {
                cb(None);
                self.callbacks.remove(entry.desc.name());
                if let Some(st) = self.streams.get_mut(&id) {
                    st.callback = None;
                }
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
