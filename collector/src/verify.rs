//! A full scan of a store for damage: `logdog_collector verify --data DIR`.
//!
//! Checks the SQLite index (`PRAGMA integrity_check`), every stream record, and every entry:
//! its bytes against the checksum stored with it, that it decodes as the stream's type, that
//! its `sequence` follows from the entry before it, and that the stream's counters match what
//! is stored. It reads without taking the directory's lock, so it can run beside a live
//! collector (it sees the committed state; entries written meanwhile may or may not be in it).

use std::path::Path;

use rusqlite::{Connection, OpenFlags, params};

use crate::segments::Segments;
use crate::store::embedded::{ENTRY_COLUMNS, read_checked, stored_entry};
use crate::store::{StoreError, StreamKey, decode_record, path_of};
use crate::validate::next_sequence;

/// Damage listed per stream; the rest of that stream's is only counted.
pub const SHOWN_PER_STREAM: usize = 20;

/// What a scan found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Streams scanned.
    pub streams: u64,
    /// Entries scanned.
    pub entries: u64,
    /// Bytes of entries read.
    pub bytes: u64,
    /// Problems found, one line each (those past [`SHOWN_PER_STREAM`] in one stream are only
    /// counted in `damaged`).
    pub problems: Vec<String>,
    /// Problems found in all.
    pub damaged: u64,
}

impl Report {
    fn damage(&mut self, shown: &mut usize, what: String) {
        self.damaged += 1;
        *shown += 1;
        if *shown <= SHOWN_PER_STREAM {
            self.problems.push(what);
        } else if *shown == SHOWN_PER_STREAM + 1 {
            self.problems
                .push("… (more damage in this stream is counted, not listed)".to_string());
        }
    }
}

/// Scans the store in `dir`.
///
/// # Errors
/// There is no store in `dir`, or it cannot be opened at all.
pub fn verify(dir: &Path) -> Result<Report, StoreError> {
    let path = dir.join("collector.sqlite");
    if !path.is_file() {
        return Err(StoreError::Db(format!(
            "{}: no collector store here",
            path.display()
        )));
    }
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    let mut report = Report::default();
    let mut shown = 0usize;
    match integrity(&conn) {
        Ok(problems) => {
            for p in problems {
                report.damage(&mut shown, format!("index {}: {p}", path.display()));
            }
        }
        Err(e) => report.damage(&mut shown, format!("index {}: {e}", path.display())),
    }
    let segments = Segments::new(&dir.join("segments"));
    if let Err(e) = streams(&conn, &segments, &mut report) {
        report.damaged += 1;
        report
            .problems
            .push(format!("index {}: scan stopped: {e}", path.display()));
    }
    Ok(report)
}

fn integrity(conn: &Connection) -> Result<Vec<String>, StoreError> {
    let mut q = conn.prepare("PRAGMA integrity_check(100)")?;
    let rows = q
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows.into_iter().filter(|r| r != "ok").collect())
}

fn streams(conn: &Connection, segments: &Segments, report: &mut Report) -> Result<(), StoreError> {
    let mut q =
        conn.prepare("SELECT id, project, prefix, name, record FROM streams ORDER BY id")?;
    let mut rows = q.query([])?;
    let mut entries = conn.prepare(&format!(
        "SELECT {ENTRY_COLUMNS} FROM entries WHERE stream_id = ?1 ORDER BY idx"
    ))?;
    while let Some(row) = rows.next()? {
        let id: i64 = row.get(0)?;
        let key = StreamKey {
            project: row.get(1)?,
            prefix: row.get(2)?,
            name: row.get(3)?,
        };
        let name = path_of(&key);
        report.streams += 1;
        let mut shown = 0usize;
        let rec = match decode_record(row.get_ref(4)?.as_blob().unwrap_or_default()) {
            Ok(r) => Some(r),
            Err(e) => {
                report.damage(&mut shown, format!("{name}: stream record: {e}"));
                None
            }
        };
        let (mut count, mut prev) = (0u64, None);
        let mut stored = entries.query(params![id])?;
        while let Some(row) = stored.next()? {
            let e = stored_entry(row)?;
            count += 1;
            report.entries += 1;
            report.bytes += e.at.len;
            match read_checked(segments, &key, &e) {
                Ok(data) => {
                    if let Err(err) = logdog_proto::wire::log_entry(&data) {
                        report.damage(
                            &mut shown,
                            format!("{name} entry {}: does not decode: {err}", e.idx),
                        );
                    }
                }
                Err(StoreError::Damaged(what)) => report.damage(&mut shown, what),
                Err(err) => report.damage(&mut shown, format!("{name} entry {}: {err}", e.idx)),
            }
            if let (Some((pi, Some(ps))), Some(s)) = (prev, e.seq)
                && pi + 1 == e.idx
                && next_sequence(ps) != Some(s.sequence)
            {
                report.damage(
                    &mut shown,
                    format!(
                        "{name} entry {}: sequence {} does not follow from entry {pi}",
                        e.idx, s.sequence
                    ),
                );
            }
            prev = Some((e.idx, e.seq));
        }
        if let Some(rec) = rec
            && rec.entry_count != count
        {
            report.damage(
                &mut shown,
                format!(
                    "{name}: the record counts {} entries, the index holds {count}",
                    rec.entry_count
                ),
            );
        }
    }
    Ok(())
}
