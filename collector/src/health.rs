//! Health: whether the collector can take bundles now.
//!
//! - gRPC: the standard `grpc.health.v1.Health` service (`tonic-health`) on the collector's
//!   gRPC port, for the whole server (`""`) and for `logdog.collector.Collector` and
//!   `logdog.collector.Logs`: `SERVING` while the store is writable, `NOT_SERVING` while it
//!   fails and once the server is stopping. A background task refreshes the status every
//!   [`CHECK_INTERVAL`]. No token is needed, even with auth on.
//! - HTTP (the viewer, and the `--metrics` server): `GET /healthz` answers 200 while the
//!   process serves; `GET /readyz` 200 while the store is writable, 503 with the reason
//!   otherwise.
//!
//! "Writable" is [`Store::check_writable`]: a small file in the data directory and a write
//! transaction on the index, its answer reused for a second.

use std::time::Duration;

use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;

use logdog_proto::logdog::collector::collector_server::SERVICE_NAME as COLLECTOR;
use logdog_proto::logdog::collector::logs_server::SERVICE_NAME as LOGS;

use crate::store::{Store, Unwritable, WRITABLE_CHECK_STUCK};

/// How often the gRPC health status is refreshed.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// The services whose status the health service reports: the whole server (`""`) and the
/// collector's two services.
pub const SERVICES: [&str; 3] = ["", COLLECTOR, LOGS];

/// [`Store::check_writable`] off the async threads, failing if it takes longer than
/// [`WRITABLE_CHECK_STUCK`].
///
/// # Errors
/// The store is not writable; the message says why.
pub async fn readiness(store: &Store) -> Result<(), Unwritable> {
    let st = store.clone();
    let check = tokio::task::spawn_blocking(move || st.check_writable());
    match tokio::time::timeout(WRITABLE_CHECK_STUCK, check).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => Err(Unwritable(format!("the store check failed: {e}"))),
        Err(_) => Err(Unwritable(format!(
            "a test write to the store has not finished within {}s",
            WRITABLE_CHECK_STUCK.as_secs()
        ))),
    }
}

/// The health service of a gRPC server on `store`, and what keeps its status current.
pub(crate) async fn start(store: Store) -> (HealthServer<impl Health>, Reporter) {
    let (reporter, server) = tonic_health::server::health_reporter();
    // The first status is known before the server takes calls.
    let first = readiness(&store).await;
    let serving = first.is_ok();
    log_change(&first, None);
    set_all(&reporter, serving).await;
    let task = tokio::spawn(refresh(store, reporter.clone(), serving));
    (server, Reporter { reporter, task })
}

/// Keeps the status of the health service current until aborted.
async fn refresh(store: Store, reporter: HealthReporter, mut serving: bool) {
    loop {
        tokio::time::sleep(CHECK_INTERVAL).await;
        let answer = readiness(&store).await;
        if answer.is_ok() != serving {
            log_change(&answer, Some(serving));
            serving = answer.is_ok();
            set_all(&reporter, serving).await;
        }
    }
}

/// Logs a change of readiness (`was`: the previous one, if any).
fn log_change(answer: &Result<(), Unwritable>, was: Option<bool>) {
    match (answer, was) {
        (Err(e), _) => {
            tracing::warn!(reason = %e, "store not writable: health NOT_SERVING, /readyz 503");
        }
        (Ok(()), Some(false)) => tracing::info!("store writable again: health SERVING"),
        (Ok(()), _) => {}
    }
}

async fn set_all(reporter: &HealthReporter, serving: bool) {
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    for name in SERVICES {
        reporter.set_service_status(name, status).await;
    }
}

/// Keeps the health status current; stops doing so when dropped.
#[derive(Debug)]
pub(crate) struct Reporter {
    reporter: HealthReporter,
    task: tokio::task::JoinHandle<()>,
}

impl Reporter {
    /// The server is stopping: every service is `NOT_SERVING` from now on, so that balancers
    /// send new calls elsewhere while the calls in progress finish.
    pub(crate) async fn stopping(&self) {
        self.task.abort();
        set_all(&self.reporter, false).await;
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.task.abort();
    }
}
