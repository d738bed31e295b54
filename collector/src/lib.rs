//! The collector: stores bundles from butlers and serves streams back.
//!
//! Butlers call `Collector.WriteBundle` (see `proto/proto/logdog/collector.proto`); the
//! collector validates the bundle, stores every entry it does not have yet, and answers only
//! once the store has made the write durable. Readers use the `Logs` service: `Get`, `Tail`,
//! `Query` and `Follow` (entries from an index, then new ones as they arrive, until the stream
//! is complete).
//!
//! # Layout
//! - [`path`]: stream paths and query patterns.
//! - [`validate`]: what a bundle must satisfy before anything of it is stored.
//! - [`wire`]: an allocation-free check of an encoded log entry.
//! - [`segments`]: append-only files holding the entries' bytes.
//! - [`store`]: the embedded, durable store (entries keyed by stream and index; de-duplication;
//!   terminal indices and completeness).
//! - [`service`]: the gRPC services.

pub mod path;
pub mod segments;
pub mod service;
pub mod store;
pub mod validate;
pub mod wire;

use std::future::Future;

pub use service::{CollectorService, LogsService, MAX_BUNDLE_SIZE, MAX_GET_BYTES};
pub use store::Store;
use tokio::net::TcpListener;

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
    let (collector, logs) = service::services(store);
    tonic::transport::Server::builder()
        .add_service(collector)
        .add_service(logs)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await
}
