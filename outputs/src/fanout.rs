//! Several outputs at once: every bundle goes to each of them.
//!
//! Each output keeps its own delivery policy ([`Output::delivery`]):
//! - [`Delivery::Acknowledged`] outputs (the collector, the directory) are sent every bundle
//!   and awaited, all at once; a slow one holds the butler back, and through it the command,
//!   as it would alone.
//! - [`Delivery::BestEffort`] outputs (GELF over UDP) get bundles through a queue of
//!   [`BEST_EFFORT_QUEUE`] bundles drained by a task of their own. When the queue is full the
//!   bundle is dropped for that output alone and counted in its `failed_*` counters; the
//!   others never wait for it.
//!
//! The first acknowledged output (or the first output, if none acknowledges) is the
//! *primary* one: [`Output::stats`] reports it, so a summary written for one output keeps its
//! meaning. [`FanOut::reports`] gives every output's own counters.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use logdog_proto::Bundle;
use tokio::sync::{Mutex, mpsc};
use tokio::task::{JoinHandle, JoinSet};

use crate::{Delivery, Output, OutputError, OutputStats, StatsCounter};

/// Bundles a best-effort output may have waiting before further ones are dropped for it.
pub const BEST_EFFORT_QUEUE: usize = 16;

/// One output of a [`FanOut`], with the name it is reported under.
#[derive(Debug)]
struct Member {
    name: String,
    output: Arc<dyn Output>,
    delivery: Delivery,
    queue: Option<Queue>,
}

/// The queue in front of a best-effort output.
#[derive(Debug)]
struct Queue {
    tx: std::sync::Mutex<Option<mpsc::Sender<Bundle>>>,
    task: Mutex<Option<JoinHandle<()>>>,
    dropped: StatsCounter,
    /// Drops so far, to log the first one and then every 1000th.
    drops: AtomicU64,
}

/// What one output of a [`FanOut`] did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OutputReport {
    /// The output, as given on the command line (e.g. `grpc://host:7431`).
    pub output: String,
    /// Its delivery policy.
    pub delivery: Delivery,
    /// Its counters; for a best-effort output, bundles dropped at its full queue are counted
    /// in `failed_bundles` and `failed_bytes`.
    #[serde(flatten)]
    pub stats: OutputStats,
}

/// Sends every bundle to several outputs. See the [module docs](self).
#[derive(Debug)]
pub struct FanOut {
    members: Vec<Member>,
    primary: usize,
}

impl FanOut {
    /// A fan-out over `outputs`, each named for reports. Starts the queue task of every
    /// best-effort output, so it must be called within a Tokio runtime.
    ///
    /// # Errors
    /// No outputs at all.
    pub fn new(outputs: Vec<(String, Arc<dyn Output>)>) -> Result<Self, OutputError> {
        if outputs.is_empty() {
            return Err(OutputError::Other("no outputs".into()));
        }
        let members: Vec<Member> = outputs
            .into_iter()
            .map(|(name, output)| {
                let delivery = output.delivery();
                let queue = (delivery == Delivery::BestEffort).then(|| {
                    let (tx, mut rx) = mpsc::channel::<Bundle>(BEST_EFFORT_QUEUE);
                    let out = output.clone();
                    // The output counts what it fails to send itself.
                    let task = tokio::spawn(async move {
                        while let Some(b) = rx.recv().await {
                            let _ = out.send(b).await;
                        }
                    });
                    Queue {
                        tx: std::sync::Mutex::new(Some(tx)),
                        task: Mutex::new(Some(task)),
                        dropped: StatsCounter::default(),
                        drops: AtomicU64::new(0),
                    }
                });
                Member {
                    name,
                    output,
                    delivery,
                    queue,
                }
            })
            .collect();
        let primary = members
            .iter()
            .position(|m| m.delivery == Delivery::Acknowledged)
            .unwrap_or(0);
        Ok(Self { members, primary })
    }

    /// Every output's name, policy and counters, in the order given.
    pub fn reports(&self) -> Vec<OutputReport> {
        self.members.iter().map(Self::report).collect()
    }

    /// What one output did; a best-effort output's queue drops count as its failures.
    fn report(m: &Member) -> OutputReport {
        let mut stats = m.output.stats();
        if let Some(q) = &m.queue {
            let d = q.dropped.snapshot();
            stats.failed_bundles += d.failed_bundles;
            stats.failed_bytes += d.failed_bytes;
        }
        OutputReport {
            output: m.name.clone(),
            delivery: m.delivery,
            stats,
        }
    }

    fn acknowledged(&self) -> impl Iterator<Item = &Member> {
        self.members
            .iter()
            .filter(|m| m.delivery == Delivery::Acknowledged)
    }

    /// Hands `bundle` to a best-effort output's queue, or drops and counts it.
    fn offer(m: &Member, q: &Queue, bundle: &Bundle) {
        let sent = match q.tx.lock() {
            Ok(tx) => tx.as_ref().map(|tx| tx.try_send(bundle.clone())),
            Err(_) => None,
        };
        if matches!(sent, Some(Ok(()))) {
            return;
        }
        q.dropped.failed(bundle.payload_bytes() as u64);
        let n = q.drops.fetch_add(1, Ordering::Relaxed);
        if n.is_multiple_of(1000) {
            tracing::warn!(
                output = %m.name,
                dropped_bundles = n + 1,
                "best-effort output is behind; dropping bundles for it (counted)"
            );
        }
    }
}

#[async_trait]
impl Output for FanOut {
    async fn send(&self, bundle: Bundle) -> Result<(), OutputError> {
        for m in &self.members {
            if let Some(q) = &m.queue {
                Self::offer(m, q, &bundle);
            }
        }
        let mut acked = self.acknowledged();
        let (Some(first), rest) = (acked.next(), acked.collect::<Vec<_>>()) else {
            return Ok(());
        };
        if rest.is_empty() {
            return first.output.send(bundle).await;
        }
        let mut sends = JoinSet::new();
        for m in std::iter::once(first).chain(rest) {
            let out = m.output.clone();
            let name = m.name.clone();
            let b = bundle.clone();
            sends.spawn(async move { out.send(b).await.map_err(|e| (name, e)) });
        }
        let mut failed = Vec::new();
        while let Some(r) = sends.join_next().await {
            match r {
                Ok(Ok(())) => {}
                Ok(Err((name, e))) => failed.push(format!("{name}: {e}")),
                Err(e) => failed.push(format!("a send task failed: {e}")),
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(OutputError::Other(failed.join("; ")))
        }
    }

    fn max_bundle_size(&self) -> usize {
        self.members
            .iter()
            .map(|m| m.output.max_bundle_size())
            .min()
            .unwrap_or(crate::DEFAULT_MAX_BUNDLE_SIZE)
    }

    fn max_in_flight(&self) -> usize {
        self.acknowledged()
            .map(|m| m.output.max_in_flight())
            .min()
            .unwrap_or(1)
            .max(1)
    }

    fn stats(&self) -> OutputStats {
        self.members
            .get(self.primary)
            .map(|m| Self::report(m).stats)
            .unwrap_or_default()
    }

    fn delivery(&self) -> Delivery {
        if self.acknowledged().next().is_some() {
            Delivery::Acknowledged
        } else {
            Delivery::BestEffort
        }
    }

    fn holds_sends(&self) -> bool {
        self.acknowledged().any(|m| m.output.holds_sends())
    }

    fn coordinator_host(&self) -> Option<String> {
        self.members
            .iter()
            .find_map(|m| m.output.coordinator_host())
    }

    async fn close(&self) -> Result<(), OutputError> {
        let mut failed = Vec::new();
        for m in &self.members {
            if let Some(q) = &m.queue {
                // Closing the queue lets its task send what is waiting, then end.
                if let Ok(mut tx) = q.tx.lock() {
                    tx.take();
                }
                if let Some(task) = q.task.lock().await.take()
                    && let Err(e) = task.await
                {
                    failed.push(format!("{}: {e}", m.name));
                }
            }
            if let Err(e) = m.output.close().await {
                failed.push(format!("{}: {e}", m.name));
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(OutputError::Other(failed.join("; ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use logdog_proto::Content;
    use tokio::sync::Semaphore;

    use super::*;
    use crate::{MemoryOutput, NullOutput};

    fn bundle(data: &'static [u8]) -> Bundle {
        crate::testing::text_bundle(data, 0)
    }

    /// A best-effort output whose sends wait for a permit, recording what it got.
    #[derive(Debug)]
    struct Gated {
        gate: Arc<Semaphore>,
        got: std::sync::Mutex<Vec<Bytes>>,
        stats: StatsCounter,
    }

    #[async_trait]
    impl Output for Gated {
        async fn send(&self, bundle: Bundle) -> Result<(), OutputError> {
            let permit = self.gate.acquire().await;
            permit.map_err(|_| OutputError::Closed)?.forget();
            if let Some(Content::Text(t)) = bundle.entries[0].logs.first().map(|e| &e.content) {
                self.got.lock().unwrap().push(t.clone());
            }
            self.stats.sent(&bundle);
            Ok(())
        }
        fn max_bundle_size(&self) -> usize {
            1024
        }
        fn stats(&self) -> OutputStats {
            self.stats.snapshot()
        }
        fn delivery(&self) -> Delivery {
            Delivery::BestEffort
        }
        async fn close(&self) -> Result<(), OutputError> {
            Ok(())
        }
    }

    /// An acknowledged output that always fails.
    #[derive(Debug, Default)]
    struct Broken {
        stats: StatsCounter,
    }

    #[async_trait]
    impl Output for Broken {
        async fn send(&self, bundle: Bundle) -> Result<(), OutputError> {
            self.stats.failed(bundle.payload_bytes() as u64);
            Err(OutputError::Other("refused".into()))
        }
        fn max_bundle_size(&self) -> usize {
            4096
        }
        fn stats(&self) -> OutputStats {
            self.stats.snapshot()
        }
        async fn close(&self) -> Result<(), OutputError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn every_acknowledged_output_gets_every_bundle_in_order() {
        let a = Arc::new(MemoryOutput::new(crate::DEFAULT_MAX_BUNDLE_SIZE));
        let b = Arc::new(NullOutput::new());
        let f = FanOut::new(vec![
            ("memory".into(), a.clone() as Arc<dyn Output>),
            ("null".into(), b.clone() as Arc<dyn Output>),
        ])
        .unwrap();
        assert_eq!(f.delivery(), Delivery::Acknowledged);
        for d in [&b"one\n"[..], b"two\n", b"three\n"] {
            let d: &'static [u8] = Box::leak(d.to_vec().into_boxed_slice());
            f.send(bundle(d)).await.unwrap();
        }
        f.close().await.unwrap();
        let r = f.reports();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].output, "memory");
        assert_eq!(r[1].stats.sent_bundles, 3);
        assert_eq!(r[1].stats.sent_bytes, 14);
        assert_eq!(f.stats(), a.stats(), "the primary output is the first");
        let text: Vec<u8> = a
            .bundles()
            .iter()
            .flat_map(|b| b.entries.iter().flat_map(|e| e.logs.iter()))
            .flat_map(|e| match &e.content {
                Content::Text(t) => t.to_vec(),
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(text, b"one\ntwo\nthree\n");
    }

    #[tokio::test]
    async fn a_stuck_best_effort_output_drops_and_counts_but_never_holds_the_others() {
        let gate = Arc::new(Semaphore::new(0));
        let slow = Arc::new(Gated {
            gate: gate.clone(),
            got: Default::default(),
            stats: StatsCounter::default(),
        });
        let fast = Arc::new(NullOutput::new());
        let f = FanOut::new(vec![
            ("gelf".into(), slow.clone() as Arc<dyn Output>),
            ("null".into(), fast.clone() as Arc<dyn Output>),
        ])
        .unwrap();
        assert_eq!(f.max_bundle_size(), 1024, "the smallest output's limit");
        // The stuck output takes one bundle into its send and queues BEST_EFFORT_QUEUE more;
        // every send still returns at once.
        let total = BEST_EFFORT_QUEUE + 1 + 10;
        for i in 0..total {
            if i == 1 {
                // Let the queue's task take the first bundle (this runtime has one thread).
                for _ in 0..10 {
                    tokio::task::yield_now().await;
                }
            }
            tokio::time::timeout(Duration::from_secs(30), f.send(bundle(b"line\n")))
                .await
                .expect("a best-effort output never holds a send")
                .unwrap();
        }
        assert_eq!(fast.stats().sent_bundles, total as u64);
        let before = f.reports();
        assert_eq!(before[1].stats.failed_bundles, 0);
        let dropped = before[0].stats.failed_bundles;
        assert_eq!(
            dropped, 10,
            "one in the send, a full queue, the rest dropped"
        );
        assert_eq!(before[0].stats.failed_bytes, dropped * 5);
        assert_eq!(f.stats().sent_bundles, total as u64, "primary: null");
        // Released, the queue drains in order at close.
        gate.add_permits(total);
        f.close().await.unwrap();
        let r = f.reports();
        assert_eq!(r[0].delivery, Delivery::BestEffort);
        assert_eq!(
            r[0].stats.sent_bundles + r[0].stats.failed_bundles,
            total as u64
        );
        assert_eq!(
            slow.got.lock().unwrap().len() as u64,
            total as u64 - dropped
        );
    }

    #[tokio::test]
    async fn a_failing_acknowledged_output_fails_the_send_and_is_named() {
        let good = Arc::new(NullOutput::new());
        let f = FanOut::new(vec![
            ("null".into(), good.clone() as Arc<dyn Output>),
            (
                "directory:/x".into(),
                Arc::new(Broken::default()) as Arc<dyn Output>,
            ),
        ])
        .unwrap();
        let err = f.send(bundle(b"x\n")).await.unwrap_err().to_string();
        assert!(err.contains("directory:/x: refused"), "{err}");
        assert_eq!(good.stats().sent_bundles, 1, "the other output got it");
        assert_eq!(f.reports()[1].stats.failed_bytes, 2);
        assert_eq!(f.max_bundle_size(), 4096);
    }

    #[tokio::test]
    async fn no_outputs_is_an_error() {
        assert!(FanOut::new(Vec::new()).is_err());
    }
}
