//! The open-file limit, shared by the `logdog_butler` and `logdog_collector` binaries.

/// Raises the soft open-file limit (`RLIMIT_NOFILE`) to the hard limit: every stream is a
/// connection (and, in the collector, every client and open segment a descriptor), so both
/// take as many as the system lets them. Failure is logged, never fatal.
pub fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "raised the open-file limit"),
            Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
        },
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open-file limit"),
    }
}
