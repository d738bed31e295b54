//! Reads that scan: search in a stream, its section markers, the text streams of a prefix
//! interleaved, and the run record of a prefix.
//!
//! Each request scans at most [`SCAN_BUDGET`] bytes of rows and returns at most a page of
//! results, with the place to continue from (`next`), so no request reads a whole 100 MiB log
//! and no answer is unbounded.

use std::collections::VecDeque;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use logdog_proto::logpb::{LogEntry, StreamType};
use serde::{Deserialize, Serialize};

use super::api::{self, ApiError, ApiResult};
use super::server::AppState;
use super::{ansi, login};
use crate::reader::{self, Row, RowAssembler};
use crate::store::{Store, StoreError, StreamInfo, StreamKey};

/// Bytes of rows one search or section request reads, at most (one row more may be read).
pub(super) const SCAN_BUDGET: u64 = 32 << 20;
/// Default and largest number of matches of one search request.
const DEFAULT_MATCHES: usize = 100;
const MAX_MATCHES: usize = 1000;
/// Longest search text or pattern, in bytes.
const MAX_PATTERN: usize = 1024;
/// What a compiled pattern may take: regex's `size_limit` and its lazy DFA's cache.
const REGEX_SIZE_LIMIT: usize = 256 * 1024;
const REGEX_DFA_LIMIT: usize = 1 << 20;
/// Bytes of a matching line returned (a longer one is cut, at a character boundary).
const MATCH_TEXT: usize = 512;
/// Section markers of one request, at most.
const MAX_MARKERS: usize = 2000;
/// Rows of one interleaved page: default and largest.
const DEFAULT_MERGED_ROWS: usize = 500;
const MAX_MERGED_ROWS: usize = 5000;
/// Text streams merged in the interleaved view; more are left out (and counted).
const MAX_MERGED: usize = 64;
/// Byte budget of one read of entries of a stream while scanning.
const READ_BUDGET: usize = 256 * 1024;
/// Bytes of rows of one interleaved page, at most (one entry more may be read).
const MERGE_BUDGET: u64 = 8 << 20;
/// The run record stream's name, under the run's prefix.
const RUN_STREAM: &str = "logdog/run";
/// The tag marking the run record stream.
const RUN_TAG: (&str, &str) = ("logdog.kind", "run");

/// Reads the rows of a stream from row `from` on, a line at a time, until `visit` says stop
/// or [`SCAN_BUDGET`] bytes are read. Returns the first row not visited (`None`: the end of
/// what is stored was reached), with the bytes read and the time of the last row visited.
fn scan_rows(
    store: &Store,
    key: &StreamKey,
    info: &StreamInfo,
    from: u64,
    mut visit: impl FnMut(&Row) -> bool,
) -> Result<Scanned, StoreError> {
    let contiguous = info.state.contiguous;
    let mut asm = RowAssembler::new(reader::base_time_ms(&info.desc), from);
    let mut next_entry = reader::find_row(store, key, contiguous, from)?;
    let mut out = Vec::new();
    let mut done = Scanned::default();
    while next_entry < contiguous {
        let entries = store.entries(key, next_entry, usize::MAX, READ_BUDGET)?;
        let Some(last) = entries.last() else { break };
        next_entry = last.stream_index + 1;
        for e in &entries {
            for i in 0..reader::pieces(e) {
                asm.push_part(e, i..i + 1, &mut out);
                for row in out.drain(..) {
                    done.bytes += row.size;
                    done.last_ms = row.time_ms;
                    let stop = !visit(&row) || done.bytes >= SCAN_BUDGET;
                    if stop {
                        done.next = Some(row.n + 1);
                        return Ok(done);
                    }
                }
            }
        }
    }
    // The last line of a complete stream may have no end: it is all there is of it.
    if info.state.complete
        && let Some(row) = asm.finish()
    {
        done.bytes += row.size;
        done.last_ms = row.time_ms;
        visit(&row);
    }
    Ok(done)
}

/// How far a scan got.
#[derive(Debug, Default)]
struct Scanned {
    /// The first row not scanned, when the scan stopped before the end.
    next: Option<u64>,
    /// Bytes of rows read.
    bytes: u64,
    /// The time of the last row read (ms since the epoch; 0 when none).
    last_ms: i64,
}

/// A row's text without its escape sequences, as the page shows it.
fn plain_text(row: &Row) -> String {
    ansi::parse(&row.bytes)
        .into_iter()
        .map(|s| s.text)
        .collect()
}

/// The stream of a request and its state, or 404.
async fn stream_info(st: &AppState, key: &StreamKey) -> Result<StreamInfo, ApiError> {
    let (store, k) = (st.store.clone(), key.clone());
    reader::blocking(move || store.stream(&k))
        .await?
        .ok_or_else(|| ApiError::stream_not_found(key))
}

/// What `/api/search` looks for.
#[derive(Debug, Deserialize)]
pub(super) struct SearchQuery {
    /// The text, or the pattern with `regex`.
    q: Option<String>,
    /// Any value but `0`/`false`: `q` is a regular expression (Rust `regex` syntax).
    regex: Option<String>,
    /// Any value but `0`/`false`: match case (plain text and patterns ignore case otherwise).
    case: Option<String>,
    /// First row to search (a `next` of an earlier answer).
    from: Option<u64>,
    /// At most this many matches.
    max: Option<usize>,
}

fn flag(v: Option<&str>) -> bool {
    v.is_some_and(|v| v != "0" && v != "false")
}

/// Compiles a search: plain text is escaped; a pattern is compiled within
/// [`REGEX_SIZE_LIMIT`]. The message says what is wrong with a refused one.
fn compile(q: &str, is_regex: bool, case: bool) -> Result<regex::Regex, String> {
    if q.is_empty() {
        return Err("empty search".to_string());
    }
    if q.len() > MAX_PATTERN {
        return Err(format!(
            "search of {} bytes; at most {MAX_PATTERN}",
            q.len()
        ));
    }
    let pattern = if is_regex {
        q.to_string()
    } else {
        regex::escape(q)
    };
    regex::RegexBuilder::new(&pattern)
        .case_insensitive(!case)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_DFA_LIMIT)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(limit) => format!(
                "regex too big: it compiles to more than {limit} bytes; make it smaller \
                 (fewer repetitions or alternatives)"
            ),
            regex::Error::Syntax(s) => format!("invalid regex: {s}"),
            other => format!("invalid regex: {other}"),
        })
}

/// One matching line.
#[derive(Debug, Serialize)]
struct MatchJson {
    /// Row number, from 0.
    n: u64,
    /// Time (ms since the epoch).
    t: i64,
    /// The line's text (cut at [`MATCH_TEXT`] bytes).
    text: String,
    /// The first match in `text`, as UTF-16 offsets `[start, end)` (what JavaScript counts),
    /// when it lies within the text returned.
    #[serde(skip_serializing_if = "Option::is_none")]
    at: Option<[usize; 2]>,
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `GET /api/search/PATH?q=TEXT[&regex=1][&case=1][&from=N][&max=M]`: the lines of a text
/// (or datagram) stream that match, in order, searched on the server from row `from` (0).
///
/// Answers `{"matches": [{n, t, text, at}], "next": N|null, "capped": "matches"|"bytes"|null,
/// "scanned_bytes": B, "total": ROWS}`: at most `max` (100, at most 1000) matches and
/// [`SCAN_BUDGET`] bytes of rows per request; `next` is where to continue (`null`: the end
/// of what is stored was searched; a line still being written is searched once it has
/// ended). A pattern that does not compile, or compiles too big, is a 400 that says why.
pub(super) async fn search(
    State(st): State<AppState>,
    Path(path): Path<String>,
    Query(q): Query<SearchQuery>,
    headers: HeaderMap,
) -> ApiResult {
    let key = api::readable_key(&st, &headers, "/api/search", &path)?;
    let re = compile(
        q.q.as_deref().unwrap_or(""),
        flag(q.regex.as_deref()),
        flag(q.case.as_deref()),
    )
    .map_err(ApiError::bad_request)?;
    let max = q.max.unwrap_or(DEFAULT_MATCHES).clamp(1, MAX_MATCHES);
    let from = q.from.unwrap_or(0);
    let info = stream_info(&st, &key).await?;
    let (store, k) = (st.store.clone(), key.clone());
    let (matches, scanned, total) = reader::blocking(move || {
        let total = reader::total_rows(&store, &k, info.state.contiguous)?;
        let mut matches = Vec::new();
        let scanned = scan_rows(&store, &k, &info, from, |row| {
            let text = plain_text(row);
            if let Some(m) = re.find(&text) {
                let shown = cut(&text, MATCH_TEXT);
                let at = (m.end() <= shown.len()).then(|| {
                    let start = shown[..m.start()].encode_utf16().count();
                    [
                        start,
                        start + shown[m.start()..m.end()].encode_utf16().count(),
                    ]
                });
                matches.push(MatchJson {
                    n: row.n,
                    t: row.time_ms,
                    text: shown.to_string(),
                    at,
                });
            }
            matches.len() < max
        })?;
        Ok((matches, scanned, total))
    })
    .await?;
    let capped = match scanned.next {
        None => None,
        Some(_) if matches.len() >= max => Some("matches"),
        Some(_) => Some("bytes"),
    };
    Ok(Json(serde_json::json!({
        "matches": matches,
        "next": scanned.next,
        "capped": capped,
        "scanned_bytes": scanned.bytes,
        "total": total,
    }))
    .into_response())
}

/// A section marker of a CI system, found at the start of a line.
#[derive(Debug, Serialize, PartialEq, Eq)]
struct Marker {
    /// Row number.
    n: u64,
    /// The row's time (ms since the epoch).
    t: i64,
    /// `start` or `end`.
    kind: &'static str,
    /// `github` (`::group::NAME`, `::endgroup::`), `gitlab`
    /// (`section_start:TS:NAME[OPTIONS]`, `section_end:TS:NAME`) or `buildkite` (`--- `,
    /// `+++ `, `~~~ `: each starts a new section).
    style: &'static str,
    /// The section's name (a GitLab section's `[OPTIONS]` left out).
    name: String,
    /// The marker's own time (a GitLab marker's Unix time, in ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    ts: Option<i64>,
    /// Shown collapsed at first: GitHub groups, GitLab sections with `collapsed=true`,
    /// Buildkite `---` and `~~~` sections (`+++` ones are expanded).
    collapsed: bool,
}

/// Skips escape sequences (`ESC [ ... final`) at the start of a line: GitLab puts `ESC[0K`
/// before its markers.
fn skip_leading_csi(mut b: &[u8]) -> &[u8] {
    while let Some(rest) = b.strip_prefix(b"\x1b[") {
        match rest.iter().position(|c| (0x40..=0x7e).contains(c)) {
            Some(end) => b = &rest[end + 1..],
            None => return b,
        }
    }
    b
}

/// A name as shown: lossy UTF-8, without escape sequences and surrounding blanks.
fn marker_name(b: &[u8]) -> String {
    let text: String = ansi::parse(b).into_iter().map(|s| s.text).collect();
    cut(text.trim(), 256).to_string()
}

/// The section marker a line is, if any.
fn marker(row: &Row) -> Option<Marker> {
    let b = skip_leading_csi(&row.bytes);
    let make = |kind, style, name: String, ts, collapsed| Marker {
        n: row.n,
        t: row.time_ms,
        kind,
        style,
        name,
        ts,
        collapsed,
    };
    if let Some(rest) = b.strip_prefix(b"::group::") {
        return Some(make("start", "github", marker_name(rest), None, true));
    }
    if b.starts_with(b"::endgroup::") {
        return Some(make("end", "github", String::new(), None, false));
    }
    for (prefix, kind) in [(&b"section_start:"[..], "start"), (b"section_end:", "end")] {
        let Some(rest) = b.strip_prefix(prefix) else {
            continue;
        };
        // `TS:NAME[OPTIONS]`, then `\r` and the header text.
        let head = rest.split(|&c| c == b'\r').next().unwrap_or(rest);
        let mut parts = head.splitn(2, |&c| c == b':');
        let ts = std::str::from_utf8(parts.next()?)
            .ok()?
            .trim()
            .parse::<i64>()
            .ok()?;
        let name_opts = parts.next()?;
        let (name, opts) = match name_opts.iter().position(|&c| c == b'[') {
            Some(i) => (&name_opts[..i], &name_opts[i..]),
            None => (name_opts, &b""[..]),
        };
        let collapsed = opts.windows(14).any(|w| w == b"collapsed=true");
        return Some(make(
            kind,
            "gitlab",
            marker_name(name),
            Some(ts.saturating_mul(1000)),
            collapsed,
        ));
    }
    for (prefix, collapsed) in [(&b"--- "[..], true), (b"+++ ", false), (b"~~~ ", true)] {
        if let Some(rest) = b.strip_prefix(prefix) {
            return Some(make(
                "start",
                "buildkite",
                marker_name(rest),
                None,
                collapsed,
            ));
        }
    }
    None
}

/// Where `/api/sections` starts.
#[derive(Debug, Deserialize)]
pub(super) struct SectionsQuery {
    /// First row (a `next` of an earlier answer).
    from: Option<u64>,
}

/// `GET /api/sections/PATH[?from=N]`: the section markers of a text stream, from row `from`
/// (0) on: `{"markers": [{n, t, kind, style, name, ts, collapsed}], "next": N|null,
/// "last_t": MS, "total": ROWS}`. At most [`MAX_MARKERS`] markers and [`SCAN_BUDGET`] bytes of
/// rows per request; `next` is where to continue (`null`: the end of what is stored was
/// read); `last_t` is the time of the last row read. The page pairs markers into sections.
pub(super) async fn sections(
    State(st): State<AppState>,
    Path(path): Path<String>,
    Query(q): Query<SectionsQuery>,
    headers: HeaderMap,
) -> ApiResult {
    let key = api::readable_key(&st, &headers, "/api/sections", &path)?;
    let info = stream_info(&st, &key).await?;
    let from = q.from.unwrap_or(0);
    let (store, k) = (st.store.clone(), key.clone());
    let (markers, scanned, total) = reader::blocking(move || {
        let total = reader::total_rows(&store, &k, info.state.contiguous)?;
        let mut markers = Vec::new();
        let scanned = if reader::stream_type(&info.desc) == StreamType::Text {
            scan_rows(&store, &k, &info, from, |row| {
                if let Some(m) = marker(row) {
                    markers.push(m);
                }
                markers.len() < MAX_MARKERS
            })?
        } else {
            Scanned::default()
        };
        Ok((markers, scanned, total))
    })
    .await?;
    Ok(Json(serde_json::json!({
        "markers": markers,
        "next": scanned.next,
        "last_t": scanned.last_ms,
        "total": total,
    }))
    .into_response())
}

/// Where `/api/interleave` starts: after the rows of entries with a `prefix_index` below
/// `from`, and those below row `row` of the entry with `prefix_index` `from`.
#[derive(Debug, Deserialize)]
pub(super) struct InterleaveQuery {
    /// A `prefix_index` (`next.from` of an earlier answer).
    from: Option<u64>,
    /// A line of the stream of the entry `from` (`next.row` of an earlier answer).
    row: Option<u64>,
    /// At most this many rows.
    count: Option<usize>,
}

/// One text stream being merged.
struct Merging {
    key: StreamKey,
    info: StreamInfo,
    /// Its lines so far (a line may span entries).
    asm: RowAssembler,
    /// The next entry to read from the store.
    next_entry: u64,
    /// Entries read and not merged yet (at most [`READ_BUDGET`] of them, or one entry).
    buf: VecDeque<LogEntry>,
    /// Its entries are all read.
    drained: bool,
}

impl Merging {
    /// The next entry's `prefix_index`, reading more entries when needed; `None` at the end.
    fn front(&mut self, store: &Store) -> Result<Option<u64>, StoreError> {
        if self.buf.is_empty() && !self.drained {
            let contiguous = self.info.state.contiguous;
            if self.next_entry < contiguous {
                let entries = store.entries(&self.key, self.next_entry, usize::MAX, READ_BUDGET)?;
                if let Some(last) = entries.last() {
                    self.next_entry = last.stream_index + 1;
                }
                self.buf.extend(entries);
            }
            if self.buf.is_empty() {
                self.drained = true;
            }
        }
        Ok(self.buf.front().map(|e| e.prefix_index))
    }
}

/// A merged row: its stream (an index into `streams`), and the row as `/api/rows` has it.
#[derive(Debug, Serialize)]
struct MergedRow {
    st: usize,
    #[serde(flatten)]
    row: api::RowJson,
}

/// `GET /api/interleave/PROJECT/PREFIX[?from=PI&row=R&count=M]`: the lines of the text
/// streams of a prefix (not of prefixes under it; not the run record), merged in the order
/// the butler took them in (`prefix_index`): `{"streams": [NAME...], "rows": [{st, n, t, s,
/// ...}], "next": {"from": PI, "row": R}, "done": BOOL, "left_out": K}`. A line that is still
/// being written comes once it has ended. At most `count` rows (500, at most 5000) and
/// [`MERGE_BUDGET`] bytes of rows per request, from at most [`MAX_MERGED`] streams (the
/// others are counted in `left_out`); `next` is where to continue; `done`: every stream is
/// complete and was read to its end.
pub(super) async fn interleave(
    State(st): State<AppState>,
    Path(scope): Path<String>,
    Query(q): Query<InterleaveQuery>,
    headers: HeaderMap,
) -> ApiResult {
    let (project, prefix) = reader::parse_scope(&scope).map_err(ApiError::bad_request)?;
    if prefix.is_empty() {
        return Err(ApiError::bad_request(
            "the interleaved view needs PROJECT/PREFIX",
        ));
    }
    login::reader(
        &st,
        &headers,
        &project,
        &format!("viewer /api/interleave/{scope}"),
    )?;
    let count = q
        .count
        .unwrap_or(DEFAULT_MERGED_ROWS)
        .clamp(1, MAX_MERGED_ROWS);
    let (from, from_row) = (q.from.unwrap_or(0), q.row.unwrap_or(0));
    let store = st.store.clone();
    let page = reader::blocking(move || {
        let mut listed: Vec<(StreamKey, StreamInfo)> = store
            .list(&project, &prefix)?
            .into_iter()
            .filter(|(k, info)| {
                k.prefix == prefix
                    && reader::stream_type(&info.desc) == StreamType::Text
                    && info.desc.tags.get(RUN_TAG.0).map(String::as_str) != Some(RUN_TAG.1)
                    && k.name != RUN_STREAM
            })
            .collect();
        let left_out = listed.len().saturating_sub(MAX_MERGED);
        listed.truncate(MAX_MERGED);
        let names: Vec<String> = listed.iter().map(|(k, _)| k.name.clone()).collect();
        let mut streams = Vec::with_capacity(listed.len());
        for (key, info) in listed {
            let next_entry = reader::find_prefix_index(&store, &key, info.state.contiguous, from)?;
            let asm = RowAssembler::new(reader::base_time_ms(&info.desc), 0);
            streams.push(Merging {
                key,
                info,
                asm,
                next_entry,
                buf: VecDeque::new(),
                drained: false,
            });
        }
        let mut rows = Vec::new();
        let mut bytes = 0u64;
        let mut out = Vec::new();
        let mut next = (from, from_row);
        'merge: loop {
            // The stream whose next entry the butler took first.
            let mut best: Option<(usize, u64)> = None;
            for (i, s) in streams.iter_mut().enumerate() {
                if let Some(pi) = s.front(&store)?
                    && best.is_none_or(|(_, b)| pi < b)
                {
                    best = Some((i, pi));
                }
            }
            let Some((i, pi)) = best else { break };
            let s = &mut streams[i];
            let Some(e) = s.buf.pop_front() else { break };
            let kind = reader::stream_type(&s.info.desc);
            for piece in 0..reader::pieces(&e) {
                s.asm.push_part(&e, piece..piece + 1, &mut out);
                for row in out.drain(..) {
                    if pi < from || (pi == from && row.n < from_row) {
                        continue;
                    }
                    bytes += row.size;
                    next = (pi, row.n + 1);
                    rows.push(MergedRow {
                        st: i,
                        row: api::row_json(kind, &row),
                    });
                    if rows.len() >= count || bytes >= MERGE_BUDGET {
                        break 'merge;
                    }
                }
            }
            next = next.max((pi + 1, 0));
            // The unended last line of a complete stream is all there is of it.
            if s.buf.is_empty()
                && s.info.state.complete
                && s.front(&store)?.is_none()
                && let Some(row) = s.asm.finish()
            {
                rows.push(MergedRow {
                    st: i,
                    row: api::row_json(kind, &row),
                });
            }
        }
        let done = streams.iter().all(|s| s.drained && s.info.state.complete);
        Ok((names, rows, next, done, left_out))
    })
    .await?;
    let (names, rows, (pi, row), done, left_out) = page;
    Ok(Json(serde_json::json!({
        "streams": names,
        "rows": rows,
        "next": { "from": pi, "row": row },
        "done": done,
        "left_out": left_out,
    }))
    .into_response())
}

/// Longest run record line read; a longer one is left out.
const RUN_LINE: usize = 64 * 1024;

/// A run record line, as JSON; `None` if it is not a JSON object of that `event`.
fn run_line(row: &Row, event: &str) -> Option<serde_json::Value> {
    if (row.size as usize) > RUN_LINE || row.partial {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&row.bytes).ok()?;
    (v.get("event")?.as_str()? == event).then_some(v)
}

/// `GET /api/run/PROJECT/PREFIX`: the run record of a prefix (the stream `logdog/run`):
/// `{"run": null}` without one, else `{"run": {"start": {...}, "end": {...}|null, "state":
/// STATE}}`, the first and last lines as written (`start` or `end` `null` when that line is
/// missing or not JSON); `state` is the record stream's, as in `/api/stream`.
pub(super) async fn run(
    State(st): State<AppState>,
    Path(scope): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let (project, prefix) = reader::parse_scope(&scope).map_err(ApiError::bad_request)?;
    login::reader(&st, &headers, &project, &format!("viewer /api/run/{scope}"))?;
    let key = StreamKey {
        project,
        prefix,
        name: RUN_STREAM.to_string(),
    };
    let store = st.store.clone();
    let k = key.clone();
    let read = reader::blocking(move || {
        let Some(first) = reader::rows(&store, &k, reader::RowStart::From(0), 1)? else {
            return Ok(None);
        };
        let last = reader::rows(&store, &k, reader::RowStart::Last(1), 1)?;
        Ok(Some((first, last)))
    })
    .await?;
    let Some((first, last)) = read else {
        return Ok(Json(serde_json::json!({ "run": null })).into_response());
    };
    let start = first.rows.first().and_then(|r| run_line(r, "start"));
    let end = last
        .as_ref()
        .and_then(|p| p.rows.last())
        .and_then(|r| run_line(r, "end"));
    let state = api::stream_json(&key, &first.info).state;
    Ok(Json(serde_json::json!({
        "run": { "start": start, "end": end, "state": state },
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(text: &[u8]) -> Row {
        Row {
            n: 7,
            time_ms: 1000,
            bytes: text.to_vec(),
            size: text.len() as u64,
            partial: false,
        }
    }

    #[test]
    fn markers_of_the_three_ci_systems() {
        let m = marker(&row(b"::group::Build it")).unwrap();
        assert_eq!(
            (m.kind, m.style, m.name.as_str(), m.collapsed),
            ("start", "github", "Build it", true)
        );
        assert_eq!(marker(&row(b"::endgroup::")).unwrap().kind, "end");
        let m = marker(&row(
            b"\x1b[0Ksection_start:1700000000:compile[collapsed=true]\r\x1b[0KCompiling",
        ))
        .unwrap();
        assert_eq!(
            (m.kind, m.style, m.name.as_str(), m.ts, m.collapsed),
            ("start", "gitlab", "compile", Some(1_700_000_000_000), true)
        );
        let m = marker(&row(b"\x1b[0Ksection_end:1700000042:compile\r\x1b[0K")).unwrap();
        assert_eq!((m.kind, m.ts), ("end", Some(1_700_000_042_000)));
        let m = marker(&row(b"+++ :rspec: Tests")).unwrap();
        assert_eq!(
            (m.style, m.name.as_str(), m.collapsed),
            ("buildkite", ":rspec: Tests", false)
        );
        assert!(marker(&row(b"--- deps")).unwrap().collapsed);
        assert!(marker(&row(b"~~~ quiet")).unwrap().collapsed);
        assert!(marker(&row(b"---no space")).is_none());
        assert!(marker(&row(b"section_start:notanumber:x\r")).is_none());
        assert!(marker(&row(b"plain ::group:: in the middle")).is_none());
    }

    #[test]
    fn patterns_compile_within_limits_or_say_why() {
        assert!(compile("a.b", false, false).unwrap().is_match("xA.By"));
        assert!(!compile("a.b", false, false).unwrap().is_match("axb"));
        assert!(compile("a.b", true, false).unwrap().is_match("axb"));
        assert!(!compile("A", false, true).unwrap().is_match("a"));
        let e = compile("(", true, false).unwrap_err();
        assert!(e.starts_with("invalid regex:"), "{e}");
        let e = compile(r"\w{1000}{1000}", true, false).unwrap_err();
        assert!(e.starts_with("regex too big:"), "{e}");
        assert!(compile("", false, false).is_err());
        assert!(compile(&"a".repeat(MAX_PATTERN + 1), false, false).is_err());
    }

    #[test]
    fn cut_keeps_whole_characters() {
        assert_eq!(cut("héllo", 2), "h");
        assert_eq!(cut("héllo", 3), "hé");
        assert_eq!(cut("abc", 10), "abc");
    }
}
