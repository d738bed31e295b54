//! The gRPC output: bundles go to a `logdog_collector` (`--output grpc://HOST:PORT`).
//!
//! Each bundle is one `WriteBundle` call; the collector answers only once the bundle is
//! durably stored. Up to [`DEFAULT_MAX_IN_FLIGHT`] calls run at once over one HTTP/2
//! connection. While the collector is unreachable, restarting or overloaded, a call is retried
//! with exponential backoff and jitter, for as long as it takes: the bundle stays in memory
//! until it is acknowledged, and is sent again on the new connection. (The butler bounds the
//! wait at the end of a run; see its flush timeout.) A bundle the collector refuses as invalid
//! is not retried: it is counted as failed and logged.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use logdog_proto::Bundle;
use logdog_proto::logdog::collector::WriteBundleRequest;
use logdog_proto::logdog::collector::collector_client::CollectorClient;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::{Output, OutputError, OutputStats, StatsCounter};

/// Largest bundle sent to the collector (the collector takes up to 16 MiB).
pub const DEFAULT_MAX_BUNDLE_SIZE: usize = 8 * 1024 * 1024;
/// Bundles in flight at once.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4;
/// First retry delay.
const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// Longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Deadline of one attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends bundles to a collector.
#[derive(Debug)]
pub struct GrpcOutput {
    client: CollectorClient<Channel>,
    target: String,
    stats: StatsCounter,
}

impl GrpcOutput {
    /// An output for `http://HOST:PORT` (what `grpc://HOST:PORT` names). Connects lazily:
    /// a collector that is down at start is not an error.
    ///
    /// # Errors
    /// A malformed address.
    pub fn new(host_port: &str) -> Result<Self, OutputError> {
        let uri = format!("http://{host_port}");
        let endpoint = Endpoint::from_shared(uri)
            .map_err(|e| OutputError::Other(format!("bad collector address {host_port:?}: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_while_idle(true);
        let client = CollectorClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(16 * 1024 * 1024)
            .max_encoding_message_size(16 * 1024 * 1024);
        Ok(Self {
            client,
            target: host_port.to_string(),
            stats: StatsCounter::default(),
        })
    }
}

/// Whether a failed call may succeed if tried again.
fn retriable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Internal
            | Code::Unknown
            | Code::Cancelled
    )
}

/// Exponential backoff with full jitter: a random delay up to `initial * 2^attempt`, capped.
fn backoff(attempt: u32) -> Duration {
    let cap = BACKOFF_INITIAL
        .saturating_mul(1 << attempt.min(16))
        .min(BACKOFF_MAX);
    // Jitter from the clock's low bits: enough to keep a fleet of butlers from retrying in step.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let frac = f64::from(nanos % 1000) / 1000.0;
    cap.mul_f64(0.5 + frac / 2.0)
}

#[async_trait]
impl Output for GrpcOutput {
    async fn send(&self, bundle: Bundle) -> Result<(), OutputError> {
        let data = Bytes::from(bundle.encode_to_vec());
        // Keep only the encoding while waiting for the acknowledgement: the bundle's slices
        // pin the butler's read buffers, which would double the memory in flight.
        let (entries, payload) = (bundle.log_count() as u64, bundle.payload_bytes() as u64);
        drop(bundle);
        let mut attempt = 0u32;
        loop {
            let mut req = tonic::Request::new(WriteBundleRequest {
                bundle: data.clone(),
            });
            req.set_timeout(ATTEMPT_TIMEOUT);
            match self.client.clone().write_bundle(req).await {
                Ok(_) => {
                    if attempt > 0 {
                        tracing::info!(collector = %self.target, attempts = attempt + 1, "bundle delivered after retries");
                    }
                    self.stats.sent_counts(entries, payload);
                    return Ok(());
                }
                Err(status) if retriable(&status) => {
                    if attempt == 0 || attempt.is_power_of_two() {
                        tracing::warn!(
                            collector = %self.target,
                            attempt = attempt + 1,
                            error = %status.message(),
                            code = ?status.code(),
                            "collector unavailable; will retry"
                        );
                    }
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt = attempt.saturating_add(1);
                }
                Err(status) => {
                    tracing::error!(collector = %self.target, code = ?status.code(), error = %status.message(), "collector refused a bundle");
                    self.stats.failed(payload);
                    return Err(OutputError::Other(format!(
                        "collector refused a bundle: {}: {}",
                        status.code(),
                        status.message()
                    )));
                }
            }
        }
    }

    fn max_bundle_size(&self) -> usize {
        DEFAULT_MAX_BUNDLE_SIZE
    }

    fn max_in_flight(&self) -> usize {
        DEFAULT_MAX_IN_FLIGHT
    }

    fn stats(&self) -> OutputStats {
        self.stats.snapshot()
    }

    fn coordinator_host(&self) -> Option<String> {
        Some(format!("grpc://{}", self.target))
    }

    async fn close(&self) -> Result<(), OutputError> {
        Ok(())
    }
}
