//! Gives the memory of readers that left back to the system.
//!
//! glibc keeps freed memory in its arenas for reuse, so hundreds of slow readers that come and
//! go leave the collector holding their peak for good. Each reader holds a [`Reader`]; when
//! one is dropped, a trim of the allocator is scheduled: after [`TRIM_DELAY`] (so that the
//! connection's buffers are freed too, and a crowd leaving costs one trim), at most one
//! at a time, on a blocking thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long after a reader leaves the trim runs; also the least time between two trims.
pub const TRIM_DELAY: Duration = Duration::from_secs(1);

/// Whether a trim is scheduled and not yet started.
static SCHEDULED: AtomicBool = AtomicBool::new(false);

/// Held by one live reader (event stream, raw download, tail or gRPC follower); dropping it
/// schedules a trim.
#[derive(Debug, Default)]
pub struct Reader(());

impl Reader {
    /// A reader that has just started.
    pub fn new() -> Self {
        Self(())
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        schedule();
    }
}

/// Schedules a trim unless one is already waiting; does nothing outside a Tokio runtime.
pub fn schedule() {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if SCHEDULED.swap(true, Ordering::AcqRel) {
        return;
    }
    rt.spawn(async {
        tokio::time::sleep(TRIM_DELAY).await;
        // Readers leaving from now on schedule the next trim.
        SCHEDULED.store(false, Ordering::Release);
        let _ = tokio::task::spawn_blocking(release).await;
    });
}

/// Returns free heap memory to the system.
#[allow(unsafe_code)]
fn release() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's arenas; it takes the
    // arenas' locks itself and may be called from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
