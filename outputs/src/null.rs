//! The null output: discards every bundle, counting it.

use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use logdog_proto::Bundle;

use crate::{DEFAULT_MAX_BUNDLE_SIZE, Output, OutputError, OutputStats, StatsCounter};

/// Discards bundles. [`stats`](Output::stats) counts them as sent.
///
/// Accepts bundles of up to [`DEFAULT_MAX_BUNDLE_SIZE`] bytes, one at a time.
#[derive(Debug, Default)]
pub struct NullOutput {
    stats: StatsCounter,
    closed: AtomicBool,
}

impl NullOutput {
    /// A new null output.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Output for NullOutput {
    async fn send(&self, bundle: Bundle) -> Result<(), OutputError> {
        if self.closed.load(Ordering::Acquire) {
            self.stats.failed(bundle.payload_bytes() as u64);
            return Err(OutputError::Closed);
        }
        self.stats.sent(&bundle);
        Ok(())
    }

    fn max_bundle_size(&self) -> usize {
        DEFAULT_MAX_BUNDLE_SIZE
    }

    fn max_in_flight(&self) -> usize {
        1
    }

    fn stats(&self) -> OutputStats {
        self.stats.snapshot()
    }

    async fn close(&self) -> Result<(), OutputError> {
        self.closed.store(true, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(data: &'static [u8]) -> Bundle {
        crate::testing::text_bundle(data, 0)
    }

    #[tokio::test]
    async fn counts_and_discards() {
        let out = NullOutput::new();
        assert_eq!(out.max_bundle_size(), 8 * 1024 * 1024);
        assert_eq!(out.max_in_flight(), 1);
        assert_eq!(out.coordinator_host(), None);
        out.send(bundle(b"hello\n")).await.unwrap();
        out.send(bundle(b"ab")).await.unwrap();
        let s = out.stats();
        assert_eq!(s.sent_bundles, 2);
        assert_eq!(s.sent_entries, 2);
        assert_eq!(s.sent_bytes, 8);
        assert_eq!(s.failed_bundles, 0);
        out.close().await.unwrap();
        assert!(matches!(
            out.send(bundle(b"x")).await,
            Err(OutputError::Closed)
        ));
        assert_eq!(out.stats().failed_bytes, 1);
        // A second close is harmless.
        out.close().await.unwrap();
    }
}
