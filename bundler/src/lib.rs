//! Packs stream data into LogDog bundles.
//!
//! Sits between the butler's stream readers and its output: readers append chunks, the
//! bundler cuts entries and bundles, and bundles go to an [`logdog_outputs::Output`].
//!
//! # Layout
//! - [`core`]: the synchronous, deterministic core (no tokio): buffering, line splitting,
//!   datagram framing, indices, size accounting.
//! - [`shell`]: the async task that owns a core, takes input over a bounded channel, wakes at
//!   buffer-age deadlines and sends bundles to the output as soon as it has room.

pub mod core;
pub mod shell;

pub use crate::core::{Config, Core, Cut, Finished, RegisterError, StreamId, StreamStats};
