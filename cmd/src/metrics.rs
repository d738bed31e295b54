//! `logdog_butler serve --metrics ADDR`: the butler's figures as `GET /metrics`, in the
//! Prometheus text format (written by [`logdog_proto::prom`]). Every figure already exists
//! where the butler keeps it; the page reads them at each scrape.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::http::header;
use logdog_butler::LiveStats;
use logdog_outputs::Output;
use logdog_outputs::grpc::GrpcOutput;
use logdog_proto::prom::{Kind, TextWriter};
use logdog_streamserver::ServerStats;

/// Where the figures live.
#[derive(Clone)]
pub struct Sources {
    /// Streams open and bytes read.
    pub live: Arc<LiveStats>,
    /// The stream server's counters (handshake refusals, and streams refused after it).
    pub server: ServerStats,
    /// The output.
    pub output: Arc<dyn Output>,
    /// The same output when it is the gRPC one (acknowledgements, the spool).
    pub grpc: Option<Arc<GrpcOutput>>,
}

impl Sources {
    /// The page.
    pub fn render(&self) -> String {
        let mut w = TextWriter::new();
        w.gauge(
            "logdog_butler_streams_open",
            "Streams being read now.",
            self.live.streams_open.load(Ordering::Relaxed) as f64,
        );
        w.counter(
            "logdog_butler_bytes_captured_total",
            "Bytes read from the streams' sources.",
            self.live.bytes_captured.load(Ordering::Relaxed),
        );
        let stats = self.output.stats();
        let (acked, refused_streams) = match &self.grpc {
            Some(g) => {
                let acked = g.acknowledged();
                (
                    acked.values().map(|a| a.bytes).sum(),
                    acked
                        .values()
                        .filter(|a| a.lost.is_some() || a.lost_entries > 0)
                        .count() as u64,
                )
            }
            // Other outputs confirm a bundle once written.
            None => (stats.sent_bytes.saturating_sub(stats.failed_bytes), 0),
        };
        w.counter(
            "logdog_butler_bytes_acknowledged_total",
            "Payload bytes the output confirmed: acknowledged by the collector (gRPC), or \
             written (other outputs).",
            acked,
        );
        w.gauge(
            "logdog_butler_spool_backlog_bytes",
            "Bytes in the spool not yet acknowledged by the collector (0 without --spool).",
            stats.spool.map_or(0, |s| s.pending_bytes) as f64,
        );
        let mut refusals: Vec<(&str, f64)> = self
            .server
            .rejected()
            .into_iter()
            .map(|(k, n)| (k, n as f64))
            .collect();
        refusals.push(("collector", refused_streams as f64));
        w.labelled(
            "logdog_butler_refusals_total",
            "Refusals by reason: stream server connections refused at the handshake or after \
             it (bad_magic, handshake_timeout, duplicate...), and streams the collector refused \
             entries of (collector).",
            Kind::Counter,
            "reason",
            &refusals,
        );
        w.finish()
    }
}

/// Serves `GET /metrics` from `sources` on `listener` until the process ends.
pub fn spawn(listener: tokio::net::TcpListener, sources: Sources) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let page = sources.render();
            async move {
                (
                    [(header::CONTENT_TYPE, logdog_proto::prom::CONTENT_TYPE)],
                    page,
                )
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "metrics server failed");
        }
    });
}
