//! `--rate-limit RATE[,burst=SIZE]`: a token bucket in bytes per second, per stream.
//!
//! Whether a line passes is decided when it starts: it passes if the bucket holds any token,
//! and its bytes are then taken from the bucket as they come (a long line may run the bucket
//! into debt, at most one burst deep, which later lines pay back by waiting). Lines that
//! start on an empty bucket are dropped whole and counted. When lines pass again, the marker
//! line `[logdog: N lines (M bytes) dropped by rate limit]` comes first; at the end of the
//! stream too, if lines were still being dropped. Nothing is held back.

use std::time::Instant;

use super::{PolicyCounts, Stage};

/// A rate limit: `bytes_per_sec`, with bursts of up to `burst` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained rate, bytes per second (at least 1).
    pub bytes_per_sec: u64,
    /// Largest burst, bytes (at least 1).
    pub burst: u64,
}

/// A `--rate-limit` or size that could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// Not a size like `64KiB`.
    #[error("{0:?} is not a size (like 512, 64KiB, 1MiB, 2MB)")]
    Size(String),
    /// An option other than `burst=SIZE`.
    #[error("unknown option {0:?} (expected burst=SIZE)")]
    Option(String),
    /// A zero rate or burst.
    #[error("the rate and the burst must be at least 1 byte")]
    Zero,
}

/// Parses a size: a whole or decimal number, then an optional unit: `B`, `K`/`KiB`,
/// `M`/`MiB`, `G`/`GiB` (powers of 1024) or `KB`, `MB`, `GB` (powers of 1000).
///
/// # Errors
/// Anything else.
pub fn parse_size(s: &str) -> Result<u64, ParseError> {
    let bad = || ParseError::Size(s.to_string());
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim() {
        "" | "B" | "b" => 1,
        "K" | "k" | "KiB" | "kiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(bad()),
    };
    if num.is_empty() {
        return Err(bad());
    }
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mult).ok_or_else(bad);
    }
    let f: f64 = num.parse().map_err(|_| bad())?;
    let v = f * mult as f64;
    if !v.is_finite() || v >= u64::MAX as f64 {
        return Err(bad());
    }
    Ok(v as u64)
}

impl RateLimit {
    /// Parses `RATE[/s][,burst=SIZE]` (RATE and SIZE as [`parse_size`]); the burst defaults
    /// to one second's worth.
    ///
    /// # Errors
    /// A bad size or option, or zero.
    pub fn parse(s: &str) -> Result<RateLimit, ParseError> {
        let mut parts = s.split(',');
        let rate = parts.next().unwrap_or_default().trim();
        let rate = rate.strip_suffix("/s").unwrap_or(rate);
        let bytes_per_sec = parse_size(rate)?;
        let mut burst = bytes_per_sec;
        for opt in parts {
            match opt.trim().split_once('=') {
                Some(("burst", v)) => burst = parse_size(v)?,
                _ => return Err(ParseError::Option(opt.to_string())),
            }
        }
        if bytes_per_sec == 0 || burst == 0 {
            return Err(ParseError::Zero);
        }
        Ok(RateLimit {
            bytes_per_sec,
            burst,
        })
    }
}

/// The marker line written when lines pass again after some were dropped.
pub fn marker(lines: u64, bytes: u64) -> String {
    format!("[logdog: {lines} lines ({bytes} bytes) dropped by rate limit]\n")
}

/// The rate-limit stage of one stream.
#[derive(Debug)]
pub struct Limiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
    /// Inside a line: whether it passes. `None`: at the start of a line.
    passing: Option<bool>,
    /// Dropped since the last marker.
    pending_lines: u64,
    pending_bytes: u64,
    lines: u64,
    bytes: u64,
}

impl Limiter {
    /// A full bucket for `limit`.
    pub fn new(limit: RateLimit) -> Self {
        Self {
            rate: limit.bytes_per_sec as f64,
            burst: limit.burst as f64,
            tokens: limit.burst as f64,
            last: None,
            passing: None,
            pending_lines: 0,
            pending_bytes: 0,
            lines: 0,
            bytes: 0,
        }
    }

    fn refill(&mut self, now: Instant) {
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        }
        if self.last.is_none_or(|l| now > l) {
            self.last = Some(now);
        }
    }

    fn flush_marker(&mut self, out: &mut Vec<u8>) {
        if self.pending_lines > 0 {
            out.extend_from_slice(marker(self.pending_lines, self.pending_bytes).as_bytes());
            self.pending_lines = 0;
            self.pending_bytes = 0;
        }
    }
}

impl Stage for Limiter {
    fn push(&mut self, input: &[u8], now: Instant, out: &mut Vec<u8>) {
        for line in super::lines(input) {
            let passing = match self.passing {
                Some(p) => p,
                None => {
                    self.refill(now);
                    let p = self.tokens > 0.0;
                    if p {
                        self.flush_marker(out);
                    } else {
                        self.pending_lines += 1;
                        self.lines += 1;
                    }
                    p
                }
            };
            let n = line.len() as u64;
            if passing {
                out.extend_from_slice(line);
                self.tokens = (self.tokens - n as f64).max(-self.burst);
            } else {
                self.pending_bytes += n;
                self.bytes += n;
            }
            self.passing = if line.ends_with(b"\n") {
                None
            } else {
                Some(passing)
            };
        }
    }

    fn drain(&mut self, _max: usize, _now: Instant, out: &mut Vec<u8>) -> std::io::Result<bool> {
        if self.pending_lines > 0 {
            // The stream may end inside a passing line: the marker gets a line of its own.
            if self.passing == Some(true) {
                out.push(b'\n');
            }
            self.flush_marker(out);
        }
        Ok(false)
    }

    fn counts(&self, into: &mut PolicyCounts) {
        into.rate_limited_lines += self.lines;
        into.rate_limited_bytes += self.bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn sizes_and_limits_parse() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("1.5K"), Ok(1536));
        assert_eq!(parse_size("2MB"), Ok(2_000_000));
        assert!(parse_size("").is_err() && parse_size("KiB").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
        let r = RateLimit::parse("64KiB/s").unwrap();
        assert_eq!((r.bytes_per_sec, r.burst), (65536, 65536));
        let r = RateLimit::parse("1MiB,burst=4MiB").unwrap();
        assert_eq!((r.bytes_per_sec, r.burst), (1 << 20, 4 << 20));
        assert!(RateLimit::parse("1MiB,bust=4").is_err());
        assert_eq!(RateLimit::parse("0"), Err(ParseError::Zero));
    }

    #[test]
    fn over_the_limit_lines_are_dropped_and_a_marker_comes_when_they_pass_again() {
        let t0 = Instant::now();
        let mut l = Limiter::new(RateLimit {
            bytes_per_sec: 10,
            burst: 10,
        });
        let mut out = Vec::new();
        // 10 tokens: "aaaa\n" and "bbbb\n" pass, "cccc\n" starts on an empty bucket.
        l.push(b"aaaa\nbbbb\ncccc\ndd", t0, &mut out);
        assert_eq!(out, b"aaaa\nbbbb\n");
        // The rest of a dropped line is dropped with it.
        l.push(b"d\n", t0 + Duration::from_secs(5), &mut out);
        assert_eq!(out, b"aaaa\nbbbb\n");
        out.clear();
        l.push(b"eeee\n", t0 + Duration::from_secs(5), &mut out);
        let mut want = marker(2, 9).into_bytes();
        want.extend_from_slice(b"eeee\n");
        assert_eq!(out, want);
        out.clear();
        // A long line runs the bucket into debt (one burst deep at most).
        l.push(
            b"0123456789012345678901234567890\nx\n",
            t0 + Duration::from_secs(5),
            &mut out,
        );
        assert_eq!(out, b"0123456789012345678901234567890\n");
        out.clear();
        // 1 s refills 10: back to 0, still nothing.
        l.push(b"y\n", t0 + Duration::from_secs(6), &mut out);
        assert!(out.is_empty());
        l.push(b"z\n", t0 + Duration::from_millis(6100), &mut out);
        let mut want = marker(2, 4).into_bytes();
        want.extend_from_slice(b"z\n");
        assert_eq!(out, want);
        out.clear();
        l.push(b"w\n", t0 + Duration::from_millis(6100), &mut out);
        l.push(b"v", t0 + Duration::from_millis(6100), &mut out);
        assert!(out.is_empty());
        l.drain(100, t0 + Duration::from_secs(7), &mut out).unwrap();
        assert_eq!(out, marker(2, 3).into_bytes());
        let mut c = PolicyCounts::default();
        l.counts(&mut c);
        assert_eq!((c.rate_limited_lines, c.rate_limited_bytes), (6, 16));
    }
}
