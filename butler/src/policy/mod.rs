//! Stream policies: what happens to a text stream's bytes between its reads and the bundler.

pub mod headtail;

/// What the policies did to one stream, for the summary and --result-path.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PolicyCounts {
    /// Lines dropped by --include/--exclude, and their bytes.
    pub filtered_lines: u64,
    /// Bytes of the lines dropped by --include/--exclude.
    pub filtered_bytes: u64,
    /// Lines dropped by --rate-limit, and their bytes.
    pub rate_limited_lines: u64,
    /// Bytes of the lines dropped by --rate-limit.
    pub rate_limited_bytes: u64,
    /// Secret occurrences replaced with `***`.
    pub masked: u64,
    /// Lines and bytes left out of the middle by --max-stream-bytes.
    pub omitted_lines: u64,
    /// Bytes left out of the middle by --max-stream-bytes.
    pub omitted_bytes: u64,
}

/// One synchronous step between a stream's reads and the bundler. Works on raw bytes; stages that need
/// whole lines frame them themselves and hold partial lines back.
pub trait Stage: Send {
    /// Takes the next bytes; appends what passes, now, to `out`.
    fn push(&mut self, input: &[u8], now: std::time::Instant, out: &mut Vec<u8>);
    /// Called after the stream has ended, repeatedly, until it returns Ok(false): appends at most about
    /// `max` more held-back bytes to `out` (a tail held on disk comes out piece by piece).
    fn drain(
        &mut self,
        max: usize,
        now: std::time::Instant,
        out: &mut Vec<u8>,
    ) -> std::io::Result<bool>;
    /// Adds this stage's counts to `into`.
    fn counts(&self, into: &mut PolicyCounts);
}
