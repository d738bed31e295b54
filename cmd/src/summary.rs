//! The one-screen account printed at the end of `run`: per stream and in total, what was
//! captured, sent and acknowledged, and anything lost.

use std::fmt::Write as _;

use logdog_butler::{Report, StreamReport};
use std::collections::BTreeMap;

use logdog_outputs::OutputStats;
use logdog_outputs::grpc::StreamAck;
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

/// What the output acknowledged of each stream, by name, when it reports it (the collector
/// output does); otherwise what it accepted is taken as acknowledged.
pub type AckedByName = BTreeMap<String, StreamAck>;

/// Payload bytes of `s` the output acknowledged.
fn acked_bytes(s: &StreamReport, acked: Option<&AckedByName>) -> u64 {
    match acked {
        Some(m) => m.get(&s.name).map_or(0, |a| a.bytes),
        None => s.bytes_sent.saturating_sub(s.bytes_undelivered),
    }
}

/// Payload bytes of `s` the output reports lost for good (refused by the collector), and why.
fn refused(s: &StreamReport, acked: Option<&AckedByName>) -> (u64, Option<String>) {
    match acked.and_then(|m| m.get(&s.name)) {
        Some(a) => (a.lost_bytes, a.lost.clone()),
        None => (0, None),
    }
}

/// Payload bytes of `s` that will never reach the output's destination: refused by it, or
/// never taken by it (with a spool: never spooled).
fn lost_bytes(s: &StreamReport, spooled: bool, acked: Option<&AckedByName>) -> u64 {
    let (refused, _) = refused(s, acked);
    let unacked = s.bytes_sent.saturating_sub(acked_bytes(s, acked));
    if spooled {
        refused + s.bytes_undelivered
    } else {
        unacked.max(s.bytes_undelivered).max(refused)
    }
}

/// What became of a stream's bytes beyond the happy path.
struct Fate {
    /// What was lost, and why.
    lost: Option<String>,
    /// Why the output refused some of it (e.g. `conflict: …`), shown first.
    reason: Option<String>,
    /// Bytes not yet acknowledged but kept in the spool (not lost: `resume` sends them).
    pending: u64,
    /// The stream's end is in the spool, not yet acknowledged.
    end_pending: bool,
}

/// See [`StreamAck::end_unacknowledged`].
fn end_unacknowledged(s: &StreamReport, acked: Option<&AckedByName>) -> bool {
    acked
        .and_then(|m| m.get(&s.name))
        .is_some_and(StreamAck::end_unacknowledged)
}

impl Fate {
    fn of(s: &StreamReport, spooled: bool, acked: Option<&AckedByName>) -> Self {
        let mut parts = Vec::new();
        if s.bytes_dropped > 0 {
            parts.push(format!("{} dropped", human(s.bytes_dropped)));
        }
        let unacked = s.bytes_sent.saturating_sub(acked_bytes(s, acked));
        let (refused, reason) = refused(s, acked);
        if refused > 0 || reason.is_some() {
            parts.push(format!("{} refused", human(refused)));
        }
        let pending = if spooled {
            // With a spool, what the output took is on disk until acknowledged; what it never
            // took (given up at the end) is lost.
            if s.bytes_undelivered > 0 {
                parts.push(format!("{} never spooled", human(s.bytes_undelivered)));
            }
            unacked
                .saturating_sub(refused)
                .saturating_sub(s.bytes_undelivered)
        } else {
            let missing = unacked.max(s.bytes_undelivered).saturating_sub(refused);
            if missing > 0 {
                parts.push(format!("{} not acknowledged", human(missing)));
            }
            0
        };
        let end_missing = end_unacknowledged(s, acked);
        if end_missing && !spooled {
            parts.push("its end not acknowledged (the stream stays incomplete)".to_string());
        }
        if let Some(e) = &s.error {
            parts.push(e.clone());
        }
        Self {
            lost: (!parts.is_empty()).then(|| parts.join("; ")),
            reason,
            pending,
            end_pending: end_missing && spooled,
        }
    }

    fn ok(&self) -> bool {
        self.lost.is_none() && !self.in_spool()
    }

    /// Whether some of the stream waits in the spool.
    fn in_spool(&self) -> bool {
        self.pending > 0 || self.end_pending
    }

    fn status(&self) -> String {
        let lost = || match &self.reason {
            Some(r) => "LOST (".to_string() + r + ")",
            None => "LOST".to_string(),
        };
        let spool = match (self.pending, self.end_pending) {
            (0, false) => None,
            (0, true) => Some("its end".to_string()),
            (p, _) => Some(human(p)),
        };
        match (&self.lost, spool) {
            (None, None) => "ok".to_string(),
            (None, Some(p)) => format!("IN SPOOL: {p} not yet acknowledged"),
            (Some(l), None) => format!("{}: {l}", lost()),
            (Some(l), Some(p)) => format!("{}: {l}; IN SPOOL: {p}", lost()),
        }
    }
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
    /// Payload bytes not acknowledged (lost or still in the spool).
    pub bytes_undelivered: u64,
    /// Payload bytes lost for good: refused by the output, or never taken by it.
    pub bytes_lost: u64,
    /// Streams that lost anything.
    pub streams_with_losses: u64,
    /// Streams with bytes still in the spool, not yet acknowledged.
    pub streams_in_spool: u64,
    /// Streams refused after their handshake (nothing of them was kept).
    pub streams_refused: u64,
}

/// Sums the streams of `report`.
pub fn totals(report: &Report, spooled: bool, acked: Option<&AckedByName>) -> Totals {
    let mut t = Totals::default();
    for s in report.streams.values() {
        let a = acked_bytes(s, acked);
        t.streams += 1;
        t.bytes_read += s.bytes_read;
        t.entries += s.entries;
        t.bytes_sent += s.bytes_sent;
        t.bytes_acknowledged += a;
        t.bytes_dropped += s.bytes_dropped;
        t.bytes_undelivered += s.bytes_sent.saturating_sub(a).max(s.bytes_undelivered);
        t.bytes_lost += lost_bytes(s, spooled, acked);
        let fate = Fate::of(s, spooled, acked);
        if fate.lost.is_some() {
            t.streams_with_losses += 1;
        }
        if fate.in_spool() {
            t.streams_in_spool += 1;
        }
    }
    t.streams_refused = report.refused_streams.len() as u64;
    t
}

/// The summary as text (several lines, no trailing newline).
pub fn render(
    report: &Report,
    output: &OutputStats,
    destination: &str,
    acked: Option<&AckedByName>,
) -> String {
    let spooled = output.spool.is_some();
    let t = totals(report, spooled, acked);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "logdog_butler: {} stream(s) to {destination}",
        t.streams
    );
    let _ = writeln!(
        out,
        "  {:<28} {:>10} {:>9} {:>10} {:>10}  status",
        "stream",
        "captured",
        "entries",
        if spooled { "spooled" } else { "sent" },
        "acked"
    );
    // Refused streams first: nothing of them was kept.
    let refused = &report.refused_streams;
    for r in refused.iter().take(MAX_ROWS) {
        let _ = writeln!(
            out,
            "  {:<28} {:>10} {:>9} {:>10} {:>10}  REFUSED: {}",
            short_name(&r.name),
            "-",
            "-",
            "-",
            "-",
            r.reason
        );
    }
    if refused.len() > MAX_ROWS {
        let _ = writeln!(
            out,
            "  … and {} more REFUSED stream(s) (see --result-path)",
            refused.len() - MAX_ROWS
        );
    }
    // Streams that lost something first, then the rest by name.
    let mut rows: Vec<&StreamReport> = report.streams.values().collect();
    rows.sort_by_key(|s| (Fate::of(s, spooled, acked).ok(), s.name.clone()));
    let shown = if rows.len() > MAX_ROWS {
        MAX_ROWS - 1
    } else {
        rows.len()
    };
    for s in &rows[..shown] {
        let status = Fate::of(s, spooled, acked).status();
        let name = short_name(&s.name);
        let _ = writeln!(
            out,
            "  {name:<28} {:>10} {:>9} {:>10} {:>10}  {status}",
            human(s.bytes_read),
            s.entries,
            human(s.bytes_sent),
            human(acked_bytes(s, acked)),
        );
    }
    if rows.len() > shown {
        let rest = &rows[shown..];
        let lost = rest
            .iter()
            .filter(|s| !Fate::of(s, spooled, acked).ok())
            .count();
        let _ = writeln!(
            out,
            "  … and {} more stream(s), {}",
            rest.len(),
            if lost == 0 {
                "all ok".to_string()
            } else {
                format!("{lost} not ok (see --result-path)")
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
        totals_status(&t)
    );
    if let Some(sp) = &output.spool {
        let _ = write!(out, "\n{}", spool_line(sp));
    }
    policy_notes(report, &mut out);
    out
}

/// One line per stream the policies changed (`stderr: 12 lines (1.2 KiB) filtered, 3
/// secrets masked`), at most [`MAX_ROWS`] of them.
fn policy_notes(report: &Report, out: &mut String) {
    let changed: Vec<&StreamReport> = report
        .streams
        .values()
        .filter(|s| !s.policy.is_empty())
        .collect();
    for s in changed.iter().take(MAX_ROWS) {
        let p = &s.policy;
        let mut parts = Vec::new();
        let lines = |n: u64, b: u64, what: &str| format!("{n} lines ({}) {what}", human(b));
        if p.filtered_lines > 0 {
            parts.push(lines(p.filtered_lines, p.filtered_bytes, "filtered"));
        }
        if p.rate_limited_lines > 0 {
            parts.push(lines(
                p.rate_limited_lines,
                p.rate_limited_bytes,
                "dropped by rate limit",
            ));
        }
        if p.omitted_lines > 0 || p.omitted_bytes > 0 {
            parts.push(lines(p.omitted_lines, p.omitted_bytes, "left out"));
        }
        if p.masked > 0 {
            parts.push(format!("{} secrets masked", p.masked));
        }
        let _ = write!(out, "\n  {}: {}", s.name, parts.join(", "));
    }
    if changed.len() > MAX_ROWS {
        let _ = write!(
            out,
            "\n  … and {} more stream(s) changed by policies (see --result-path)",
            changed.len() - MAX_ROWS
        );
    }
}

/// The status column of the totals row.
fn totals_status(t: &Totals) -> String {
    let mut status = match (t.streams_with_losses, t.streams_in_spool) {
        (0, 0) => "nothing lost".to_string(),
        (0, n) => format!("nothing lost; {n} stream(s) IN SPOOL, not yet acknowledged"),
        (l, 0) => format!("{l} stream(s) LOST data"),
        (l, n) => format!("{l} stream(s) LOST data; {n} IN SPOOL"),
    };
    if t.streams_refused > 0 {
        // A refused stream's bytes were never taken: "nothing lost" would not be true.
        let refused = format!("{} stream(s) REFUSED", t.streams_refused);
        status = match status.strip_prefix("nothing lost") {
            Some(rest) => format!("{refused}{rest}"),
            None => format!("{status}; {refused}"),
        };
    }
    status
}

/// A stream name cut to the 28 columns of the name column (keeping its end).
fn short_name(name: &str) -> String {
    fit(name, 28)
}

/// `name` cut to `width` columns, keeping its end (the part that tells names apart).
fn fit(name: &str, width: usize) -> String {
    if name.chars().count() <= width {
        return name.to_string();
    }
    let tail: Vec<char> = name.chars().rev().take(width - 1).collect();
    format!("…{}", tail.into_iter().rev().collect::<String>())
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

/// One row per output when there are several: what each was sent, and what it failed to
/// deliver (an acknowledged output) or dropped (a best-effort one).
pub fn outputs_table(reports: &[logdog_outputs::fanout::OutputReport]) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "  {:<36} {:<12} {:>9} {:>10} {:>10}  status",
        "output", "delivery", "bundles", "entries", "sent"
    );
    for r in reports {
        let s = &r.stats;
        let (delivery, failed) = match r.delivery {
            logdog_outputs::Delivery::Acknowledged => ("acknowledged", "FAILED"),
            logdog_outputs::Delivery::BestEffort => ("best effort", "DROPPED"),
        };
        let status = if s.failed_bundles == 0 {
            "ok".to_string()
        } else {
            format!(
                "{failed} {} bundle(s), {}",
                s.failed_bundles,
                human(s.failed_bytes)
            )
        };
        let name = fit(&r.output, 36);
        let _ = write!(
            out,
            "\n  {name:<36} {delivery:<12} {:>9} {:>10} {:>10}  {status}",
            s.sent_bundles,
            s.sent_entries,
            human(s.sent_bytes),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(name: &str, read: u64, undelivered: u64, dropped: u64) -> StreamReport {
        StreamReport {
            name: name.into(),
            bytes_read: read,
            bytes_sent: read - dropped,
            entries: 3,
            bytes_dropped: dropped,
            bytes_undelivered: undelivered,
            error: (dropped > 0).then(|| "bad datagram header".to_string()),
            policy: Default::default(),
        }
    }

    #[test]
    fn what_the_policies_did_is_noted_per_stream() {
        let mut s = stream("stderr", 4096, 0, 0);
        s.policy.filtered_lines = 12;
        s.policy.filtered_bytes = 1229;
        s.policy.masked = 3;
        let text = render(
            &report(vec![s, stream("stdout", 10, 0, 0)]),
            &OutputStats::default(),
            "x",
            None,
        );
        assert!(
            text.ends_with("\n  stderr: 12 lines (1.2 KiB) filtered, 3 secrets masked"),
            "{text}"
        );
        assert!(!text.contains("stdout:"), "{text}");
    }

    fn report(streams: Vec<StreamReport>) -> Report {
        Report {
            streams: streams.into_iter().map(|s| (s.name.clone(), s)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn every_stream_says_whether_it_lost_anything() {
        let r = report(vec![
            stream("fine", 2048, 0, 0),
            stream("late", 100, 40, 0),
            stream("torn", 10, 0, 4),
        ]);
        let text = render(&r, &OutputStats::default(), "p/x/+/ via null", None);
        let line = |name: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(name))
                .unwrap_or_else(|| panic!("no row for {name}:\n{text}"))
                .to_string()
        };
        assert!(line("fine").ends_with("ok"), "{text}");
        assert!(line("fine").contains("2.0 KiB"), "{text}");
        assert!(
            line("late").contains("LOST: 40 B not acknowledged"),
            "{text}"
        );
        assert!(
            line("torn").contains("LOST: 4 B dropped; bad datagram header"),
            "{text}"
        );
        assert!(line("total").ends_with("2 stream(s) LOST data"), "{text}");
        // Streams that lost something are listed first.
        let first = text.lines().nth(2).unwrap_or_default();
        assert!(first.trim_start().starts_with("late"), "{text}");
    }

    #[test]
    fn bytes_waiting_in_the_spool_are_not_called_lost() {
        let r = report(vec![stream("out", 100, 0, 0)]);
        let out = OutputStats {
            spool: Some(SpoolStats {
                spooled_records: 2,
                pending_bytes: 130,
                ..Default::default()
            }),
            ..Default::default()
        };
        let acked: AckedByName = [(
            "out".to_string(),
            StreamAck {
                entries: 1,
                bytes: 60,
                ..Default::default()
            },
        )]
        .into();
        let text = render(&r, &out, "p/x/+/ via grpc://c:1", Some(&acked));
        assert!(
            text.contains("IN SPOOL: 40 B not yet acknowledged"),
            "{text}"
        );
        assert!(
            text.contains("nothing lost; 1 stream(s) IN SPOOL"),
            "{text}"
        );
        assert!(
            text.contains("spool: 2 bundle(s) spooled, 0 acknowledged, 130 B still in the spool"),
            "{text}"
        );
        let t = totals(&r, true, Some(&acked));
        assert_eq!(
            (
                t.bytes_acknowledged,
                t.streams_with_losses,
                t.streams_in_spool
            ),
            (60, 0, 1)
        );
    }

    /// The row of stream `name` in `text`.
    fn row(text: &str, name: &str) -> String {
        text.lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{text}"))
            .to_string()
    }

    /// The summary of `r` sent to a collector without a spool, which acknowledged `acked`.
    fn render_grpc(r: &Report, acked: &AckedByName) -> String {
        render(
            r,
            &OutputStats::default(),
            "p/x/+/ via grpc://c:1",
            Some(acked),
        )
    }

    fn ack(bytes: u64, lost_bytes: u64, lost: Option<&str>) -> StreamAck {
        StreamAck {
            entries: 1,
            bytes,
            lost_entries: u64::from(lost_bytes > 0),
            lost_bytes,
            lost: lost.map(String::from),
            ..Default::default()
        }
    }

    #[test]
    fn an_end_never_acknowledged_is_lost_or_in_spool_even_with_every_byte_acknowledged() {
        let r = report(vec![stream("cut", 100, 0, 0), stream("fine", 100, 0, 0)]);
        let ended = |ended| StreamAck {
            end_sent: true,
            ended,
            ..ack(100, 0, None)
        };
        let acked: AckedByName = [
            ("cut".to_string(), ended(false)),
            ("fine".to_string(), ended(true)),
        ]
        .into();
        let text = render_grpc(&r, &acked);
        assert!(
            row(&text, "cut").contains("LOST: its end not acknowledged"),
            "{text}"
        );
        assert!(row(&text, "fine").ends_with("ok"), "{text}");
        assert!(
            row(&text, "total").ends_with("1 stream(s) LOST data"),
            "{text}"
        );
        let t = totals(&r, false, Some(&acked));
        assert_eq!((t.bytes_lost, t.streams_with_losses), (0, 1));
        // With a spool the end waits there.
        let out = OutputStats {
            spool: Some(SpoolStats::default()),
            ..Default::default()
        };
        let text = render(&r, &out, "p/x/+/ via grpc://c:1", Some(&acked));
        assert!(
            row(&text, "cut").ends_with("IN SPOOL: its end not yet acknowledged"),
            "{text}"
        );
        assert!(
            row(&text, "total")
                .ends_with("nothing lost; 1 stream(s) IN SPOOL, not yet acknowledged"),
            "{text}"
        );
    }

    #[test]
    fn bytes_given_up_before_they_reached_the_spool_are_lost_not_in_spool() {
        // The flush timeout gave up 30 bytes that never reached the spool; 50 are in it.
        let r = report(vec![stream("out", 100, 30, 0), stream("err", 10, 0, 0)]);
        let out = OutputStats {
            spool: Some(SpoolStats {
                pending_bytes: 62,
                ..Default::default()
            }),
            ..Default::default()
        };
        let acked: AckedByName = [
            ("out".to_string(), ack(20, 0, None)),
            ("err".to_string(), ack(10, 0, None)),
        ]
        .into();
        let text = render(&r, &out, "p/x/+/ via grpc://c:1", Some(&acked));
        assert!(
            row(&text, "out").contains("LOST: 30 B never spooled; IN SPOOL: 50 B"),
            "{text}"
        );
        assert!(row(&text, "err").ends_with("ok"), "{text}");
        assert!(!text.contains("nothing lost"), "{text}");
        assert!(
            row(&text, "total").ends_with("1 stream(s) LOST data; 1 IN SPOOL"),
            "{text}"
        );
        let t = totals(&r, true, Some(&acked));
        assert_eq!((t.bytes_lost, t.streams_with_losses), (30, 1));
    }

    #[test]
    fn a_stream_the_collector_refused_is_lost_with_the_reason_and_only_that_stream() {
        let r = report(vec![
            stream("conflicted", 100, 0, 0),
            stream("fine", 100, 0, 0),
        ]);
        let acked: AckedByName = [
            (
                "conflicted".to_string(),
                ack(60, 40, Some("conflict: different bytes at index 3")),
            ),
            ("fine".to_string(), ack(100, 0, None)),
        ]
        .into();
        for spool in [None, Some(SpoolStats::default())] {
            let spooled = spool.is_some();
            let out = OutputStats {
                spool,
                ..Default::default()
            };
            let text = render(&r, &out, "p/x/+/ via grpc://c:1", Some(&acked));
            assert!(
                row(&text, "conflicted")
                    .contains("LOST (conflict: different bytes at index 3): 40 B refused"),
                "{text}"
            );
            assert!(!row(&text, "conflicted").contains("IN SPOOL"), "{text}");
            assert!(row(&text, "fine").ends_with("ok"), "{text}");
            assert!(
                row(&text, "total").ends_with("1 stream(s) LOST data"),
                "{text}"
            );
            let t = totals(&r, spooled, Some(&acked));
            assert_eq!((t.bytes_lost, t.streams_with_losses), (40, 1), "{text}");
        }
    }

    #[test]
    fn a_damaged_collector_store_is_named_without_a_spool_and_in_spool_with_one() {
        // Without a spool: the bundle was refused for good (DATA_LOSS) and the butler's
        // bundler counted it undelivered too; it is lost once, with the collector's message.
        let r = report(vec![stream("out", 100, 100, 0)]);
        let acked: AckedByName = [(
            "out".to_string(),
            ack(
                0,
                100,
                Some("collector store damaged (DataLoss): segment 3 checksum mismatch"),
            ),
        )]
        .into();
        let text = render_grpc(&r, &acked);
        assert!(
            row(&text, "out").contains(
                "LOST (collector store damaged (DataLoss): segment 3 checksum mismatch): 100 B refused"
            ),
            "{text}"
        );
        assert!(!row(&text, "out").contains("not acknowledged"), "{text}");
        // With a spool the bundles simply stay there.
        let r = report(vec![stream("out", 100, 0, 0)]);
        let out = OutputStats {
            spool: Some(SpoolStats {
                pending_bytes: 112,
                ..Default::default()
            }),
            ..Default::default()
        };
        let acked: AckedByName = [("out".to_string(), ack(0, 0, None))].into();
        let text = render(&r, &out, "p/x/+/ via grpc://c:1", Some(&acked));
        assert!(
            row(&text, "out").ends_with("IN SPOOL: 100 B not yet acknowledged"),
            "{text}"
        );
    }

    #[test]
    fn refused_streams_get_a_row_and_spoil_the_totals() {
        let mut r = report(vec![stream("fine", 10, 0, 0)]);
        r.refused_streams.push(logdog_butler::RefusedStream {
            name: "tool/out".into(),
            kind: "duplicate_name".into(),
            reason: "duplicate stream name \"tool/out\"".into(),
        });
        let text = render(&r, &OutputStats::default(), "p/x/+/ via null", None);
        let row = text
            .lines()
            .find(|l| l.trim_start().starts_with("tool/out"))
            .unwrap_or_else(|| panic!("no row for the refused stream:\n{text}"));
        assert!(
            row.ends_with("REFUSED: duplicate stream name \"tool/out\""),
            "{text}"
        );
        assert!(!text.contains("nothing lost"), "{text}");
        assert!(text.contains("1 stream(s) REFUSED"), "{text}");
        assert_eq!(totals(&r, false, None).streams_refused, 1);
    }

    #[test]
    fn a_thousand_streams_still_fit_on_one_screen() {
        let r = report(
            (0..1000)
                .map(|i| stream(&format!("s{i:04}"), 10, 0, 0))
                .collect(),
        );
        let text = render(&r, &OutputStats::default(), "p/x/+/ via null", None);
        assert!(text.lines().count() <= MAX_ROWS + 4, "{text}");
        assert!(text.contains("… and 981 more stream(s), all ok"), "{text}");
    }

    #[test]
    fn several_outputs_get_a_row_each_saying_what_they_dropped() {
        use logdog_outputs::Delivery;
        use logdog_outputs::fanout::OutputReport;
        let row = |output: &str, delivery, failed_bundles, failed_bytes| OutputReport {
            output: output.into(),
            delivery,
            stats: OutputStats {
                sent_bundles: 3,
                sent_entries: 30,
                sent_bytes: 3000,
                failed_bundles,
                failed_bytes,
                spool: None,
            },
        };
        let text = outputs_table(&[
            row("grpc://127.0.0.1:7431", Delivery::Acknowledged, 0, 0),
            row("gelf+udp://127.0.0.1:12201", Delivery::BestEffort, 2, 2048),
            row("directory:out", Delivery::Acknowledged, 1, 10),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[1].contains("grpc://127.0.0.1:7431") && lines[1].ends_with(" ok"));
        assert!(lines[2].contains("best effort"), "{text}");
        assert!(lines[2].ends_with("DROPPED 2 bundle(s), 2.0 KiB"), "{text}");
        assert!(lines[3].ends_with("FAILED 1 bundle(s), 10 B"), "{text}");
    }
}
