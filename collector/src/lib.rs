//! The collector: stores bundles from butlers and serves streams back.
//!
//! Butlers call `Collector.WriteBundle` (see `proto/proto/logdog/collector.proto`); the
//! collector validates the bundle, stores every entry it does not have yet, and answers only
//! once the store has made the write durable. Readers use the `Logs` service: `Get`, `Tail`,
//! `Query` and `Follow` (entries from an index, then new ones as they arrive, until the stream
//! is complete). People read streams in a browser through the [`web`] viewer, live while
//! they are written, and anyone can follow a stream with netcat through the [`tailsrv`] tail
//! server. Every reader that follows a stream is woken by the one [`Watchers`] hub that the
//! write path notifies.
//!
//! # Layout
//! - [`auth`]: tokens and who may write and read which projects.
//! - [`tls`]: the certificate and key shared by the servers.
//! - [`path`]: stream paths and query patterns.
//! - [`validate`]: what a bundle must satisfy before anything of it is stored.
//! - [`segments`]: append-only files holding the entries' bytes.
//! - [`store`]: the embedded, durable store (entries keyed by stream and index; de-duplication;
//!   terminal indices and completeness).
//! - [`watchers`]: the hub that wakes followers when a stream changes.
//! - [`service`]: the gRPC services.
//! - [`health`]: the gRPC health service and what `/healthz` and `/readyz` answer.
//! - [`metrics`]: counters and gauges for `GET /metrics` (Prometheus text format).
//! - [`ingress`]: ceilings on connections, calls, request-body memory and read time.
//! - [`chunks`]: store reads shared by the followers of a stream.
//! - [`reader`]: reading streams as bytes from an offset or as rows (lines, datagrams).
//! - [`web`]: the web viewer (pages, JSON API, live event streams, raw bytes).
//! - [`tailsrv`]: the tail server (a stream's bytes over plain TCP, then new ones).
//! - [`verify`]: a full scan of a store for damage (`logdog_collector verify`).

pub mod auth;
pub mod blocks;
pub mod chunks;
pub mod health;
pub mod ingress;
pub mod metrics;
pub mod path;
pub mod reader;
pub mod segments;
pub mod service;
pub mod store;
pub mod tailsrv;
pub mod tls;
pub mod trim;
pub mod validate;
pub mod verify;
pub mod watchers;
pub mod web;

use std::future::Future;

pub use auth::Auth;
pub use ingress::Limits;
pub use metrics::Metrics;
pub use service::{CollectorService, LogsService, MAX_BUNDLE_SIZE, MAX_GET_BYTES};
pub use store::Store;
pub use tailsrv::TailServer;
pub use tls::TlsIdentity;
use tokio::net::TcpListener;
pub use watchers::Watchers;

/// Serves both services on `listener` until `shutdown` resolves, then finishes the calls in
/// progress (a bundle being stored is stored and acknowledged) and returns.
///
/// # Errors
/// The server failed.
pub async fn serve(
    listener: TcpListener,
    store: Store,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    serve_with(listener, store, Watchers::new(), shutdown).await
}

/// Like [`serve`], notifying `watchers` of every write, so that readers sharing the hub (the
/// [`web`] viewer, the [`tailsrv`] tail server) follow streams live.
///
/// # Errors
/// The server failed.
pub async fn serve_with(
    listener: TcpListener,
    store: Store,
    watchers: Watchers,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    serve_limited(listener, store, watchers, &Limits::default(), shutdown).await
}

/// Who may use a server and how it is reached: the access policy and, optionally, TLS.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// Who may write and read which projects (open by default).
    pub auth: Auth,
    /// The certificate and key to serve TLS with (plain TCP when `None`).
    pub tls: Option<TlsIdentity>,
}

/// Like [`serve_with`], with the ingress ceilings `limits` (see [`ingress`]).
///
/// # Errors
/// The server failed.
pub async fn serve_limited(
    listener: TcpListener,
    store: Store,
    watchers: Watchers,
    limits: &Limits,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    serve_secured(
        listener,
        store,
        watchers,
        limits,
        &Security::default(),
        shutdown,
    )
    .await
}

/// Like [`serve_limited`], with the access policy and TLS of `security`. The standard
/// `grpc.health.v1.Health` service is served beside the collector's (see [`health`]).
///
/// # Errors
/// The server failed, or the TLS configuration was refused.
pub async fn serve_secured(
    listener: TcpListener,
    store: Store,
    watchers: Watchers,
    limits: &Limits,
    security: &Security,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let metrics = store.metrics().clone();
    // Health needs no token: it says nothing about what is stored.
    let (health, reporter) = health::start(store.clone()).await;
    let (collector, logs) = service::services_secured(store, watchers, security.auth.clone());
    // The write path decodes messages of up to twice `MAX_BUNDLE_SIZE` (see `services_with`).
    let budget = ingress::Budget::new(limits, 2 * MAX_BUNDLE_SIZE as u64);
    metrics.watch_budget(&budget);
    metrics.watch_auth(security.auth.stats().clone());
    let shutdown = async move {
        shutdown.await;
        reporter.stopping().await;
    };
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &security.tls {
        builder = builder.tls_config(tls.tonic())?;
    }
    builder
        // Fixed windows bound what a call that is not being read can park in memory (see
        // `ingress`).
        .initial_stream_window_size(limits.stream_window())
        .initial_connection_window_size(limits.connection_window())
        .http2_adaptive_window(Some(false))
        // Larger frames than HTTP/2's 16 KiB: fewer per megabyte to parse and hand over.
        .max_frame_size(ingress::MAX_FRAME_SIZE)
        .max_concurrent_streams(ingress::MAX_CALLS_PER_CONNECTION)
        // Dead peers give their connection slot back.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .add_service(ingress::Budgeted::new(collector, budget.clone()))
        .add_service(ingress::Budgeted::new(logs, budget.clone()))
        .add_service(ingress::Budgeted::new(health, budget))
        .serve_with_incoming_shutdown(
            ingress::incoming(
                listener,
                limits.max_connections,
                security.tls.is_some(),
                &metrics,
            ),
            shutdown,
        )
        .await
}
