//! Wire formats of the log pipeline.
//!
//! This crate is the leaf of the workspace: everything else depends on it.
//!
//! # Layout
//! - [`logpb`]: LogDog's `logpb` protobuf messages, generated with prost. Package, field names,
//!   types and numbers match LogDog, so encoded bytes interoperate with LogDog tools.
//! - [`bundle`]: the compact bundle model the bundler produces and outputs consume. It holds
//!   payload bytes as zero-copy [`bytes::Bytes`] slices and encodes straight to
//!   `logpb.ButlerLogBundle` bytes, or converts to the prost types.
//! - [`handshake`]: the stream-server handshake (magic, length, JSON flags).
//! - [`logdog::collector`]: the collector's gRPC services.
//! - [`prom`]: the Prometheus text format of the collector's and the butler's metrics.
//! - [`types`]: validation of stream names, tags and project names (LogDog's rules).

pub mod bundle;
pub mod handshake;
pub mod prom;
pub mod types;
pub mod wire;

/// LogDog's `logpb` messages.
#[allow(missing_docs, clippy::all, rust_2018_idioms)]
pub mod logpb {
    include!(concat!(env!("OUT_DIR"), "/logpb.rs"));
}

/// The collector's gRPC services (`logdog.collector`): writing bundles and reading streams.
#[allow(missing_docs, clippy::all, rust_2018_idioms)]
pub mod logdog {
    /// Package `logdog.collector`.
    pub mod collector {
        include!(concat!(env!("OUT_DIR"), "/logdog.collector.rs"));
    }
}

pub use bundle::{Bundle, BundleEntry, Content, Descriptor, Entry};
pub use logpb::StreamType;

/// The `proto_version` LogDog uses for bundles.
pub const PROTO_VERSION: &str = "1";

/// Largest datagram a stream may carry (10 MiB), as in LogDog.
pub const MAX_DATAGRAM_SIZE: usize = 10 * 1024 * 1024;

/// Default content type for a stream type, as LogDog assigns it.
pub fn default_content_type(t: StreamType) -> &'static str {
    match t {
        StreamType::Text => "text/plain; charset=utf-8",
        StreamType::Binary => "application/octet-stream",
        StreamType::Datagram => "application/x-logdog-datagram",
    }
}
