//! The one-screen account printed at the end of `run`: per stream and in total, what was
//! captured, sent and acknowledged, and anything lost.

use std::fmt::Write as _;

use logdog_butler::{Report, StreamReport};
use logdog_outputs::OutputStats;
use logdog_outputs::spool::SpoolStats;

/// Streams listed one per row; beyond this, streams without losses are summed up.
const MAX_ROWS: usize = 20;

/// Bytes in a short human form: `512 B`, `1.5 KiB`, `12.0 MiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Bytes a stream lost, and why, or `None` when it lost nothing.
fn losses(s: &StreamReport, spooled: bool) -> Option<String> {
    let mut parts = Vec::new();
    if s.bytes_dropped > 0 {
        parts.push(format!("{} dropped", human(s.bytes_dropped)));
    }
    if s.bytes_undelivered > 0 {
        parts.push(format!(
            "{} not acknowledged{}",
            human(s.bytes_undelivered),
            if spooled { " (kept in the spool)" } else { "" }
        ));
    }
    if let Some(e) = &s.error {
        parts.push(e.clone());
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// Totals over every stream.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    /// Streams.
    pub streams: u64,
    /// Bytes captured.
    pub bytes_read: u64,
    /// Log entries cut.
    pub entries: u64,
    /// Payload bytes put into bundles.
    pub bytes_sent: u64,
    /// Payload bytes acknowledged by the output.
    pub bytes_acknowledged: u64,
    /// Bytes dropped (stream errors, torn datagrams).
    pub bytes_dropped: u64,
    /// Payload bytes not acknowledged.
    pub bytes_undelivered: u64,
    /// Streams that lost anything.
    pub streams_with_losses: u64,
}

/// Sums the streams of `report`.
pub fn totals(report: &Report) -> Totals {
    let mut t = Totals::default();
    for s in report.streams.values() {
        t.streams += 1;
        t.bytes_read += s.bytes_read;
        t.entries += s.entries;
        t.bytes_sent += s.bytes_sent;
        t.bytes_acknowledged += s.bytes_sent.saturating_sub(s.bytes_undelivered);
        t.bytes_dropped += s.bytes_dropped;
        t.bytes_undelivered += s.bytes_undelivered;
        if losses(s, false).is_some() {
            t.streams_with_losses += 1;
        }
    }
    t
}

/// The summary as text (several lines, no trailing newline).
pub fn render(report: &Report, output: &OutputStats, destination: &str) -> String {
    let spooled = output.spool.is_some();
    let t = totals(report);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "logdog_butler: {} stream(s) to {destination}",
        t.streams
    );
    let _ = writeln!(
        out,
        "  {:<28} {:>10} {:>9} {:>10} {:>10}  status",
        "stream", "captured", "entries", "sent", "acked"
    );
    // Streams that lost something first, then the rest by name.
    let mut rows: Vec<&StreamReport> = report.streams.values().collect();
    rows.sort_by_key(|s| (losses(s, spooled).is_none(), s.name.clone()));
    let shown = if rows.len() > MAX_ROWS {
        MAX_ROWS - 1
    } else {
        rows.len()
    };
    for s in &rows[..shown] {
        let status = losses(s, spooled).map_or_else(|| "ok".to_string(), |l| format!("LOST: {l}"));
        let mut name = s.name.clone();
        if name.chars().count() > 28 {
            name = format!(
                "…{}",
                name.chars()
                    .rev()
                    .take(27)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<String>()
            );
        }
        let _ = writeln!(
            out,
            "  {name:<28} {:>10} {:>9} {:>10} {:>10}  {status}",
            human(s.bytes_read),
            s.entries,
            human(s.bytes_sent),
            human(s.bytes_sent.saturating_sub(s.bytes_undelivered)),
        );
    }
    if rows.len() > shown {
        let rest = &rows[shown..];
        let lost = rest.iter().filter(|s| losses(s, spooled).is_some()).count();
        let _ = writeln!(
            out,
            "  … and {} more stream(s), {}",
            rest.len(),
            if lost == 0 {
                "all ok".to_string()
            } else {
                format!("{lost} with losses (see --result-path)")
            }
        );
    }
    let _ = write!(
        out,
        "  {:<28} {:>10} {:>9} {:>10} {:>10}  {}",
        "total",
        human(t.bytes_read),
        t.entries,
        human(t.bytes_sent),
        human(t.bytes_acknowledged),
        if t.streams_with_losses == 0 {
            "nothing lost".to_string()
        } else {
            format!("{} stream(s) LOST data", t.streams_with_losses)
        }
    );
    if let Some(sp) = &output.spool {
        let _ = write!(out, "\n{}", spool_line(sp));
    }
    out
}

/// One line about the spool: what went through it and what is left.
pub fn spool_line(sp: &SpoolStats) -> String {
    let mut out = format!(
        "  spool: {} bundle(s) spooled, {} acknowledged, {} still in the spool",
        sp.spooled_records,
        sp.acked_records,
        human(sp.pending_bytes)
    );
    if sp.leftover_segments > 0 {
        let _ = write!(
            out,
            "; {} segment(s) ({}) left by an earlier butler",
            sp.leftover_segments,
            human(sp.leftover_bytes)
        );
    }
    if sp.refused_records > 0 {
        let _ = write!(
            out,
            "; {} bundle(s) REFUSED by the collector",
            sp.refused_records
        );
    }
    if sp.corrupt > 0 {
        let _ = write!(
            out,
            "; {} CORRUPT stretch(es) ({}) skipped",
            sp.corrupt,
            human(sp.corrupt_bytes)
        );
    }
    if sp.torn > 0 {
        let _ = write!(
            out,
            "; {} TORN record(s) ({}) skipped",
            sp.torn,
            human(sp.torn_bytes)
        );
    }
    if sp.full_waits > 0 {
        let _ = write!(out, "; waited {} time(s) for disk space", sp.full_waits);
    }
    if sp.write_errors > 0 {
        let _ = write!(
            out,
            "; {} bundle(s) sent unspooled after a write error",
            sp.write_errors
        );
    }
    out
}
