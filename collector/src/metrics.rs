//! The collector's metrics, served as `GET /metrics` in the Prometheus text format.
//!
//! One [`Metrics`] per collector, held by its [`Store`](crate::Store) (one collector per store
//! directory), so that every server sharing the store (gRPC, the viewer, the tail server)
//! reports into it without more plumbing. Counters that already existed for log lines are not
//! counted twice: the scrape reads them where they live ([`AuthStats`], [`TailStats`], the
//! ingress budget's semaphore and refusals, the connection slots, the viewer's followers
//! semaphore). The page is written by [`logdog_proto::prom::TextWriter`] (hand-written: a few
//! families of atomics need no metrics framework).
//!
//! The page carries no log content, stream names or project names, only figures, so it is
//! served without a token even when `--auth` is on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use logdog_proto::prom::{Kind, TextWriter};
use tokio::sync::Semaphore;

use crate::auth::AuthStats;
use crate::ingress::{Budget, Slots};
use crate::tailsrv::TailStats;
use crate::validate::RefusalKind;

/// Upper bounds (seconds) of the bundle store latency histogram's buckets.
pub const STORE_SECONDS_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A histogram of durations with the fixed buckets [`STORE_SECONDS_BUCKETS`].
#[derive(Debug, Default)]
struct Histogram {
    /// Observations per bucket (not cumulative), the last for `+Inf`.
    counts: [AtomicU64; STORE_SECONDS_BUCKETS.len() + 1],
    /// Sum of the observations, in nanoseconds.
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = STORE_SECONDS_BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(STORE_SECONDS_BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// A gauge counted up while a guard ([`Gauge::enter`]) lives.
#[derive(Debug, Default)]
pub struct Gauge(Arc<AtomicU64>);

impl Gauge {
    /// One more until the guard is dropped.
    pub fn enter(&self) -> GaugeGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        GaugeGuard(self.0.clone())
    }

    /// Its value now.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Holds one unit of a [`Gauge`].
#[derive(Debug)]
pub struct GaugeGuard(Arc<AtomicU64>);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The counters that live elsewhere, read at each scrape. Weak references: metrics never keep
/// a stopped server's state alive.
#[derive(Debug, Default)]
struct Sources {
    auth: Option<Arc<AuthStats>>,
    budget: Option<Weak<Budget>>,
    slots: Option<Weak<Slots>>,
    tail: Option<(Weak<TailStats>, usize)>,
    viewer_followers: Option<(Weak<Semaphore>, usize)>,
}

#[derive(Debug, Default)]
struct Inner {
    bundles: AtomicU64,
    entries: AtomicU64,
    bytes: AtomicU64,
    duplicates: AtomicU64,
    refused_invalid: AtomicU64,
    refused_conflict: AtomicU64,
    refused_damaged: AtomicU64,
    store_seconds: Histogram,
    grpc_followers: Gauge,
    viewer_connections: Gauge,
    sources: Mutex<Sources>,
}

/// The collector's metrics. Cheap to clone; clones share the figures.
#[derive(Debug, Clone, Default)]
pub struct Metrics(Arc<Inner>);

impl Metrics {
    /// Zeroed metrics with no sources.
    pub fn new() -> Self {
        Self::default()
    }

    fn sources(&self) -> std::sync::MutexGuard<'_, Sources> {
        self.0.sources.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a bundle whose write finished in `took`: `entries` newly stored holding
    /// `bytes` of payload, `duplicates` already there.
    pub fn bundle_stored(&self, entries: u64, bytes: u64, duplicates: u64, took: Duration) {
        let m = &self.0;
        m.bundles.fetch_add(1, Ordering::Relaxed);
        m.entries.fetch_add(entries, Ordering::Relaxed);
        m.bytes.fetch_add(bytes, Ordering::Relaxed);
        m.duplicates.fetch_add(duplicates, Ordering::Relaxed);
        m.store_seconds.observe(took);
    }

    /// Counts a refusal (of a whole bundle, or of one stream's part of it) of `kind`.
    pub fn refused(&self, kind: RefusalKind) {
        let c = match kind {
            RefusalKind::Invalid => &self.0.refused_invalid,
            RefusalKind::Conflict => &self.0.refused_conflict,
            RefusalKind::Damaged => &self.0.refused_damaged,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The gauge of gRPC `Follow` calls in progress.
    pub fn grpc_followers(&self) -> &Gauge {
        &self.0.grpc_followers
    }

    /// The gauge of the viewer's open connections.
    pub fn viewer_connections(&self) -> &Gauge {
        &self.0.viewer_connections
    }

    /// Reads the auth refusal counters from `stats` (shared by every server's [`Auth`]
    /// clone).
    ///
    /// [`Auth`]: crate::Auth
    pub fn watch_auth(&self, stats: Arc<AuthStats>) {
        self.sources().auth = Some(stats);
    }

    pub(crate) fn watch_budget(&self, budget: &Arc<Budget>) {
        self.sources().budget = Some(Arc::downgrade(budget));
    }

    pub(crate) fn watch_slots(&self, slots: &Arc<Slots>) {
        self.sources().slots = Some(Arc::downgrade(slots));
    }

    /// Reads the tail server's counters from `stats`; `max` is its connection ceiling.
    pub fn watch_tail(&self, stats: &Arc<TailStats>, max: usize) {
        self.sources().tail = Some((Arc::downgrade(stats), max));
    }

    pub(crate) fn watch_viewer_followers(&self, sem: &Arc<Semaphore>, max: usize) {
        self.sources().viewer_followers = Some((Arc::downgrade(sem), max));
    }

    /// The page, with `store_bytes` as the store's size on disk.
    pub fn render(&self, store_bytes: u64, deferred_bytes: u64) -> String {
        let m = &self.0;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let src = self.sources();
        let auth = src.auth.clone().unwrap_or_default();
        let budget = src.budget.as_ref().and_then(Weak::upgrade);
        let slots = src.slots.as_ref().and_then(Weak::upgrade);
        let tail = src
            .tail
            .as_ref()
            .and_then(|(s, max)| s.upgrade().map(|s| (s, *max)));
        let followers = src
            .viewer_followers
            .as_ref()
            .and_then(|(s, max)| s.upgrade().map(|s| (s, *max)));
        drop(src);

        let mut w = TextWriter::new();
        let p = "logdog_collector_";
        w.counter(
            &format!("{p}bundles_stored_total"),
            "Bundles whose write finished (all of them stored, de-duplicated or refused by stream).",
            get(&m.bundles),
        );
        w.counter(
            &format!("{p}entries_stored_total"),
            "Log entries newly stored.",
            get(&m.entries),
        );
        w.counter(
            &format!("{p}bytes_stored_total"),
            "Payload bytes of the log entries newly stored.",
            get(&m.bytes),
        );
        w.counter(
            &format!("{p}duplicate_entries_total"),
            "Log entries received again, byte for byte the stored ones (not stored twice).",
            get(&m.duplicates),
        );
        w.counter(
            &format!("{p}conflicts_total"),
            "Streams of bundles refused because they contradict what is stored.",
            get(&m.refused_conflict),
        );
        let (budget_waits, slow_bodies) = budget.as_ref().map_or((0, 0), |b| b.refusals());
        let turned_away = slots.as_ref().map_or(0, |s| s.refused());
        let tail_refused = tail
            .as_ref()
            .map_or(0, |(t, _)| get(&t.refused) + get(&t.turned_away));
        let refusals = [
            ("invalid", get(&m.refused_invalid)),
            ("conflict", get(&m.refused_conflict)),
            ("damaged", get(&m.refused_damaged)),
            ("unauthenticated", get(&auth.unauthenticated)),
            ("permission_denied", get(&auth.denied)),
            ("inflight_budget", budget_waits),
            ("read_deadline", slow_bodies),
            ("max_connections", turned_away),
            ("tail_request", tail_refused),
        ];
        w.labelled(
            &format!("{p}refusals_total"),
            "Refused requests by reason: bundles and streams of bundles (invalid, conflict, \
             damaged), requests without a valid token or the right (any server), gRPC calls \
             ended by the in-flight budget or the read deadline, gRPC connections over \
             --max-connections, tail server requests answered with an error (token refusals \
             among them) or turned away.",
            Kind::Counter,
            "reason",
            &refusals.map(|(r, n)| (r, n as f64)),
        );
        let h = &m.store_seconds;
        let counts: Vec<u64> = h.counts.iter().map(get).collect();
        w.histogram(
            &format!("{p}bundle_store_seconds"),
            "Time to store a bundle durably, from the start of its write to its commit.",
            &STORE_SECONDS_BUCKETS,
            &counts,
            get(&h.sum_nanos) as f64 / 1e9,
        );
        let viewer_following = followers
            .as_ref()
            .map_or(0, |(s, max)| max.saturating_sub(s.available_permits()));
        let tail_following = tail.as_ref().map_or(0, |(t, _)| get(&t.following));
        w.labelled(
            &format!("{p}followers"),
            "Readers following a stream live, by kind (gRPC Follow, viewer event streams, tail \
             server connections).",
            Kind::Gauge,
            "kind",
            &[
                ("grpc", m.grpc_followers.get() as f64),
                ("viewer", viewer_following as f64),
                ("tail", tail_following as f64),
            ],
        );
        w.gauge(
            &format!("{p}store_size_bytes"),
            "Bytes of the store's files on disk (database, its journal, segments).",
            store_bytes as f64,
        );
        w.gauge(
            &format!("{p}store_deferred_bytes"),
            "Raw bytes of blocks stored uncompressed that wait to be compressed.",
            deferred_bytes as f64,
        );
        let grpc_open = slots.as_ref().map_or(0, |s| s.open());
        let tail_open = tail.as_ref().map_or(0, |(t, _)| get(&t.active));
        w.labelled(
            &format!("{p}open_connections"),
            "Connections open now, by server.",
            Kind::Gauge,
            "server",
            &[
                ("grpc", grpc_open as f64),
                ("viewer", m.viewer_connections.get() as f64),
                ("tail", tail_open as f64),
            ],
        );
        if let Some(slots) = &slots {
            w.gauge(
                &format!("{p}open_connections_limit"),
                "The gRPC server's ceiling on open connections (--max-connections).",
                slots.max() as f64,
            );
        }
        if let Some(b) = &budget {
            let (used, limit) = b.usage();
            w.gauge(
                &format!("{p}inflight_request_bytes"),
                "Bytes of gRPC request messages that calls in progress hold now.",
                used as f64,
            );
            w.gauge(
                &format!("{p}inflight_request_bytes_limit"),
                "The ceiling on them (--max-inflight-bytes).",
                limit as f64,
            );
        }
        if let Some((_, max)) = &tail {
            w.gauge(
                &format!("{p}tail_connections_limit"),
                "The tail server's ceiling on open connections (--tail-max-connections); its \
                 use is open_connections{server=\"tail\"}.",
                *max as f64,
            );
        }
        if let Some((_, max)) = &followers {
            w.gauge(
                &format!("{p}viewer_followers_limit"),
                "The viewer's ceiling on live followers; its use is followers{kind=\"viewer\"}.",
                *max as f64,
            );
        }
        w.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_puts_each_duration_in_its_bucket() {
        let m = Metrics::new();
        m.bundle_stored(3, 30, 1, Duration::from_micros(500));
        m.bundle_stored(2, 20, 0, Duration::from_millis(2));
        m.bundle_stored(1, 10, 0, Duration::from_secs(60));
        let page = m.render(7, 3);
        for line in [
            "logdog_collector_bundles_stored_total 3",
            "logdog_collector_entries_stored_total 6",
            "logdog_collector_bytes_stored_total 60",
            "logdog_collector_duplicate_entries_total 1",
            "logdog_collector_bundle_store_seconds_bucket{le=\"0.001\"} 1",
            "logdog_collector_bundle_store_seconds_bucket{le=\"0.0025\"} 2",
            "logdog_collector_bundle_store_seconds_bucket{le=\"30\"} 2",
            "logdog_collector_bundle_store_seconds_bucket{le=\"+Inf\"} 3",
            "logdog_collector_bundle_store_seconds_count 3",
            "logdog_collector_store_size_bytes 7",
            "logdog_collector_store_deferred_bytes 3",
        ] {
            assert!(page.lines().any(|l| l == line), "{line} not in\n{page}");
        }
    }
}
