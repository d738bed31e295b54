//! The viewer's JSON API, its live event streams and the raw bytes.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use logdog_proto::logpb::StreamType;
use serde::ser::SerializeSeq;
use serde::{Deserialize, Serialize, Serializer};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::server::AppState;
use super::{ansi, login};
use crate::auth::{Denied, Right};
use crate::reader::{self, ReadError, Row, RowAssembler, RowStart};
use crate::store::{StreamInfo, StreamKey};

/// Default and largest page of rows.
const DEFAULT_ROWS: usize = 500;
const MAX_ROWS: usize = 5000;
/// Most streams listed at once.
const MAX_LISTED: usize = 10_000;
/// Byte budget of one read of a raw download: a slow downloader holds about this much (one
/// piece queued, one being written).
const READ_BUDGET: usize = 64 * 1024;
/// A `rows` event is sent once its JSON reaches this size (one row may make it larger), so a
/// slow follower holds a few events of this size, however big the chunk it reads.
const EVENT_BUDGET: usize = 64 * 1024;
/// Bytes of a binary datagram shown (as hex).
const HEX_PREVIEW: usize = 256;
/// A follower re-reads the store this often even without a wake-up.
const SAFETY_NET: Duration = Duration::from_secs(5);
/// An idle event stream gets a comment this often, so that proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(Debug, Serialize)]
struct ErrorJson {
    error: String,
}

/// A failed request: a status and a message, sent as `{"error": MESSAGE}`.
#[derive(Debug)]
pub(super) struct ApiError {
    status: StatusCode,
    msg: String,
}

impl ApiError {
    fn new(status: StatusCode, msg: impl Into<String>) -> Self {
        Self {
            status,
            msg: msg.into(),
        }
    }

    /// A 404.
    pub(super) fn not_found(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, msg)
    }

    /// A 400.
    pub(super) fn bad_request(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, msg)
    }

    /// A 404 naming the stream.
    pub(super) fn stream_not_found(key: &StreamKey) -> Self {
        Self::not_found(format!(
            "stream {}/{}/+/{} not found",
            key.project, key.prefix, key.name
        ))
    }
}

impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> Self {
        tracing::warn!(error = %e, "web viewer: store read failed");
        // Damage is permanent: a reload will not help, unlike a busy store.
        let status = match &e {
            ReadError::Store(crate::store::StoreError::Damaged(_)) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        Self::new(status, format!("store failure: {e}"))
    }
}

impl From<Denied> for ApiError {
    fn from(d: Denied) -> Self {
        match d {
            Denied::Unauthenticated(m) => Self::new(StatusCode::UNAUTHORIZED, m),
            Denied::PermissionDenied(m) => Self::new(StatusCode::FORBIDDEN, m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let unauthorized = self.status == StatusCode::UNAUTHORIZED;
        let mut resp = (self.status, Json(ErrorJson { error: self.msg })).into_response();
        if unauthorized {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// What a handler answers.
pub(super) type ApiResult = Result<Response, ApiError>;

fn key_of(path: &str) -> Result<StreamKey, ApiError> {
    reader::parse_stream_path(path).map_err(ApiError::bad_request)
}

/// The stream of `path`, once the request's token may read its project; `route` names the
/// request in the log line of a refusal.
pub(super) fn readable_key(
    st: &AppState,
    headers: &HeaderMap,
    route: &str,
    path: &str,
) -> Result<StreamKey, ApiError> {
    let key = key_of(path)?;
    login::reader(st, headers, &key.project, &format!("viewer {route}/{path}"))?;
    Ok(key)
}

/// A stream as the pages show it.
#[derive(Debug, Serialize)]
pub(super) struct StreamJson {
    project: String,
    prefix: String,
    name: String,
    /// `PROJECT/PREFIX/+/NAME`.
    path: String,
    /// `text`, `binary` or `datagram`.
    kind: &'static str,
    content_type: String,
    tags: BTreeMap<String, String>,
    /// `open` (still being written), `complete`, `incomplete` (ended with entries missing), or
    /// `abandoned` (not ended, and its prefix has received nothing for longer than the
    /// collector's --abandon-after).
    pub(super) state: &'static str,
    complete: bool,
    bytes: u64,
    entries: u64,
    /// When the collector first stored anything of it (ms since the epoch).
    created_ms: i64,
    /// The stream's own start time (ms since the epoch).
    started_ms: i64,
}

fn kind_name(t: StreamType) -> &'static str {
    match t {
        StreamType::Text => "text",
        StreamType::Binary => "binary",
        StreamType::Datagram => "datagram",
    }
}

/// The stream `key` as the pages show it.
pub(super) fn stream_json(key: &StreamKey, info: &StreamInfo) -> StreamJson {
    let s = &info.state;
    let state = if s.complete {
        "complete"
    } else if s.terminated {
        "incomplete"
    } else if s.abandoned {
        "abandoned"
    } else {
        "open"
    };
    StreamJson {
        project: key.project.clone(),
        prefix: key.prefix.clone(),
        name: key.name.clone(),
        path: format!("{}/{}/+/{}", key.project, key.prefix, key.name),
        kind: kind_name(reader::stream_type(&info.desc)),
        content_type: info.desc.content_type.clone(),
        tags: info.desc.tags.clone().into_iter().collect(),
        state,
        complete: s.complete,
        bytes: s.byte_count,
        entries: s.entry_count,
        created_ms: s
            .created
            .map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000),
        started_ms: reader::base_time_ms(&info.desc),
    }
}

/// One styled piece of a row: `[text, classes]` or `[text, classes, fg, bg]` (CSS colours,
/// empty for none).
#[derive(Debug)]
struct Seg(ansi::Span);

impl Serialize for Seg {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (fg, bg) = self.0.style.rgb();
        let colored = fg.is_some() || bg.is_some();
        let mut seq = s.serialize_seq(Some(if colored { 4 } else { 2 }))?;
        seq.serialize_element(&self.0.text)?;
        seq.serialize_element(&self.0.style.classes())?;
        if colored {
            seq.serialize_element(fg.as_deref().unwrap_or(""))?;
            seq.serialize_element(bg.as_deref().unwrap_or(""))?;
        }
        seq.end()
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A row as the stream page shows it.
#[derive(Debug, Serialize)]
pub(super) struct RowJson {
    /// Row number, from 0.
    n: u64,
    /// Time (ms since the epoch).
    t: i64,
    /// Styled pieces.
    s: Vec<Seg>,
    /// Size in bytes.
    size: u64,
    /// More of it may still come.
    #[serde(skip_serializing_if = "is_false")]
    p: bool,
    /// Shown cut short.
    #[serde(skip_serializing_if = "is_false")]
    cut: bool,
    /// A binary datagram, shown as hex.
    #[serde(skip_serializing_if = "is_false")]
    hex: bool,
}

pub(super) fn row_json(kind: StreamType, row: &Row) -> RowJson {
    let mut cut = row.size > row.bytes.len() as u64;
    let mut hex = false;
    let spans = if kind == StreamType::Datagram && std::str::from_utf8(&row.bytes).is_err() {
        hex = true;
        let shown = &row.bytes[..row.bytes.len().min(HEX_PREVIEW)];
        cut |= shown.len() < row.bytes.len();
        let text: Vec<String> = shown.iter().map(|b| format!("{b:02x}")).collect();
        vec![ansi::Span {
            text: text.join(" "),
            style: ansi::Style::default(),
        }]
    } else {
        ansi::parse(&row.bytes)
    };
    RowJson {
        n: row.n,
        t: row.time_ms,
        s: spans.into_iter().map(Seg).collect(),
        size: row.size,
        p: row.partial,
        cut,
        hex,
    }
}

/// `GET /api/projects`.
/// Only the projects the token may read.
pub(super) async fn projects(State(st): State<AppState>, headers: HeaderMap) -> ApiResult {
    let caller = login::caller(&st, &headers, "viewer /api/projects")?;
    let mut projects = st.watchers.projects();
    if !projects.iter().any(|p| p == "default") {
        projects.insert(0, "default".to_string());
    }
    projects.retain(|p| caller.allows(Right::Read, p));
    Ok(Json(serde_json::json!({ "projects": projects })).into_response())
}

/// `GET /api/streams/PROJECT[/PREFIX]`.
pub(super) async fn streams(
    State(st): State<AppState>,
    Path(scope): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let (project, prefix) = reader::parse_scope(&scope).map_err(ApiError::bad_request)?;
    login::reader(
        &st,
        &headers,
        &project,
        &format!("viewer /api/streams/{scope}"),
    )?;
    let (store, p, x) = (st.store.clone(), project.clone(), prefix.clone());
    let listed = reader::blocking(move || store.list(&p, &x)).await?;
    let truncated = listed.len() > MAX_LISTED;
    let streams: Vec<StreamJson> = listed
        .iter()
        .take(MAX_LISTED)
        .map(|(k, info)| stream_json(k, info))
        .collect();
    Ok(Json(serde_json::json!({
        "project": project,
        "prefix": prefix,
        "streams": streams,
        "truncated": truncated,
    }))
    .into_response())
}

/// `GET /api/stream/PATH`: descriptor, state and the number of rows.
pub(super) async fn stream(
    State(st): State<AppState>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let key = readable_key(&st, &headers, "/api/stream", &path)?;
    let (store, k) = (st.store.clone(), key.clone());
    let read = reader::blocking(move || {
        let Some(info) = store.stream(&k)? else {
            return Ok(None);
        };
        let rows = reader::total_rows(&store, &k, info.state.contiguous)?;
        Ok(Some((info, rows)))
    })
    .await?;
    let (info, rows) = read.ok_or_else(|| ApiError::stream_not_found(&key))?;
    Ok(Json(serde_json::json!({
        "stream": stream_json(&key, &info),
        "rows": rows,
    }))
    .into_response())
}

/// Which rows `/api/rows` returns.
#[derive(Debug, Deserialize)]
pub(super) struct RowsQuery {
    /// First row.
    from: Option<u64>,
    /// The last this many rows (instead of `from`).
    last: Option<u64>,
    /// At most this many rows.
    count: Option<usize>,
}

/// `GET /api/rows/PATH?from=N&count=M` or `?last=M`.
pub(super) async fn rows(
    State(st): State<AppState>,
    Path(path): Path<String>,
    Query(q): Query<RowsQuery>,
    headers: HeaderMap,
) -> ApiResult {
    let key = readable_key(&st, &headers, "/api/rows", &path)?;
    let count = q.count.unwrap_or(DEFAULT_ROWS).clamp(1, MAX_ROWS);
    let start = match (q.last, q.from) {
        (Some(last), _) => RowStart::Last(last.min(MAX_ROWS as u64)),
        (None, from) => RowStart::From(from.unwrap_or(0)),
    };
    let (store, k) = (st.store.clone(), key.clone());
    let page = reader::blocking(move || reader::rows(&store, &k, start, count))
        .await?
        .ok_or_else(|| ApiError::stream_not_found(&key))?;
    let kind = reader::stream_type(&page.info.desc);
    let rows: Vec<RowJson> = page.rows.iter().map(|r| row_json(kind, r)).collect();
    Ok(Json(serde_json::json!({
        "stream": stream_json(&key, &page.info),
        "rows": rows,
        "next": page.next,
        "total": page.total,
    }))
    .into_response())
}

/// Where `/api/events` starts.
#[derive(Debug, Deserialize)]
pub(super) struct EventsQuery {
    /// First row (a `Last-Event-ID` header wins).
    from: Option<u64>,
}

/// `GET /api/events/PATH?from=N`: server-sent events.
///
/// - `rows`: `{"rows": [...], "next": N}`, with id `N`, the first row not delivered whole (a
///   row still being written is sent as far as it goes, flagged `p`, and again once it grows);
/// - `state`: the stream (as in `/api/stream`) whenever its state changes;
/// - `end`: the stream is complete and every row has been sent; the event stream ends.
pub(super) async fn events(
    State(st): State<AppState>,
    Path(path): Path<String>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> ApiResult {
    let key = readable_key(&st, &headers, "/api/events", &path)?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let from = resume.or(q.from).unwrap_or(0);
    let Ok(permit) = st.followers.clone().try_acquire_owned() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many live followers",
        ));
    };
    // Subscribe before the first read, so no write between them is missed.
    let changes = st.watchers.subscribe(&key);
    let (store, k) = (st.store.clone(), key.clone());
    let start = reader::blocking(move || {
        let Some(info) = store.stream(&k)? else {
            return Ok(None);
        };
        // Binary streams have no rows: only their state is followed, from their end.
        let entry = if reader::stream_type(&info.desc) == StreamType::Binary {
            info.state.contiguous
        } else {
            reader::find_row(&store, &k, info.state.contiguous, from)?
        };
        Ok(Some((info, entry)))
    })
    .await?;
    let (info, entry) = start.ok_or_else(|| ApiError::stream_not_found(&key))?;
    // One event queued (and one with hyper): a slow browser holds little.
    let (tx, rx) = mpsc::channel(1);
    let follower = Follower {
        st,
        key,
        kind: reader::stream_type(&info.desc),
        asm: RowAssembler::new(reader::base_time_ms(&info.desc), from),
        next_entry: entry,
        next_row: from,
        changes,
        tx,
        _permit: permit,
        _reader: crate::trim::Reader::new(),
    };
    tokio::spawn(follower.run());
    let mut resp = Body::from_stream(ReceiverStream::new(rx)).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(resp)
}

/// The data of a `rows` event, `{"rows": [...], "next": N}`, built row by row.
#[derive(Debug, Default)]
struct RowsBatch {
    /// `[` and the rows so far, separated by commas.
    json: String,
}

impl RowsBatch {
    fn push(&mut self, kind: StreamType, row: &Row) {
        // Plain data: serialising it cannot fail.
        if let Ok(r) = serde_json::to_string(&row_json(kind, row)) {
            self.json.push(if self.json.is_empty() { '[' } else { ',' });
            self.json.push_str(&r);
        }
    }

    fn is_empty(&self) -> bool {
        self.json.is_empty()
    }

    fn len(&self) -> usize {
        self.json.len()
    }

    /// The event, with `next` as its id; the batch is empty again.
    fn take(&mut self, next: u64) -> Bytes {
        let mut rows = std::mem::take(&mut self.json);
        if rows.is_empty() {
            rows.push('[');
        }
        sse_event(
            "rows",
            Some(next),
            &format!("{{\"rows\":{rows}],\"next\":{next}}}"),
        )
    }
}

/// A server-sent event, `data` being one line (compact JSON has no line breaks), in a buffer of
/// exactly its size: a slow browser holds a few of these.
fn sse_event(kind: &str, id: Option<u64>, data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + kind.len() + 64);
    out.push_str("event: ");
    out.push_str(kind);
    out.push('\n');
    if let Some(id) = id {
        out.push_str(&format!("id: {id}\n"));
    }
    out.push_str("data: ");
    out.push_str(data);
    out.push_str("\n\n");
    Bytes::from(out)
}

/// Feeds one event stream.
struct Follower {
    st: AppState,
    key: StreamKey,
    kind: StreamType,
    asm: RowAssembler,
    next_entry: u64,
    next_row: u64,
    changes: tokio::sync::watch::Receiver<u64>,
    tx: mpsc::Sender<Result<Bytes, Infallible>>,
    _permit: OwnedSemaphorePermit,
    _reader: crate::trim::Reader,
}

impl Follower {
    async fn run(mut self) {
        let mut stop = self.st.stop.clone();
        let first = Bytes::from_static(b": follow\nretry: 2000\n\n");
        if self.tx.send(Ok(first)).await.is_err() {
            return;
        }
        let mut idle_since = tokio::time::Instant::now();
        let mut last_state: Option<&'static str> = None;
        loop {
            self.changes.mark_unchanged();
            let chunk = match self
                .st
                .chunks
                .read(&self.st.store, &self.key, self.next_entry)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, stream = %self.key.name, "web follower: store read failed");
                    return; // the browser reconnects and resumes
                }
            };
            if !chunk.entries.is_empty() {
                // The chunk is shared with the other followers at this place; the rows are
                // rendered and sent an event at a time, so only one event is built at once.
                let mut rows = Vec::new();
                let mut batch = RowsBatch::default();
                for e in &chunk.entries {
                    // A line at a time: one entry may hold megabytes of lines.
                    for i in 0..reader::pieces(e) {
                        self.asm.push_part(e, i..i + 1, &mut rows);
                        for row in rows.drain(..) {
                            self.next_row = row.n + 1;
                            batch.push(self.kind, &row);
                            if batch.len() >= EVENT_BUDGET
                                && !self.send(batch.take(self.next_row), &mut stop).await
                            {
                                return;
                            }
                        }
                    }
                    self.next_entry = e.stream_index + 1;
                }
                drop(chunk);
                if let Some(p) = self.asm.pending() {
                    self.next_row = p.n;
                    batch.push(self.kind, p);
                }
                if !batch.is_empty() && !self.send(batch.take(self.next_row), &mut stop).await {
                    return;
                }
                continue;
            }
            drop(chunk);
            // Caught up: report the state when it changes; end once the stream is complete.
            let (store, k) = (self.st.store.clone(), self.key.clone());
            let info = match reader::blocking(move || store.stream(&k)).await {
                Ok(Some(info)) => info,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, stream = %self.key.name, "web follower: store read failed");
                    return;
                }
            };
            let s = stream_json(&self.key, &info);
            if last_state != Some(s.state) {
                last_state = Some(s.state);
                let data = serde_json::to_string(&s).unwrap_or_default();
                if !self.send(sse_event("state", None, &data), &mut stop).await {
                    return;
                }
            }
            let t = info.state.terminal_index;
            if info.state.complete && (t < 0 || self.next_entry > t as u64) {
                if let Some(row) = self.asm.finish() {
                    // The stream ended in the middle of a line: that piece is the whole line.
                    self.next_row = row.n + 1;
                    if !self.send(self.rows_event(&[row]), &mut stop).await {
                        return;
                    }
                }
                let _ = self.send(sse_event("end", None, "{}"), &mut stop).await;
                return;
            }
            tokio::select! {
                changed = self.changes.changed() => if changed.is_err() { return },
                () = self.tx.closed() => return,
                _ = stop.wait_for(|s| *s) => return,
                () = tokio::time::sleep(SAFETY_NET) => {
                    if idle_since.elapsed() < KEEP_ALIVE {
                        continue;
                    }
                }
            }
            if idle_since.elapsed() >= KEEP_ALIVE
                && !self.send(Bytes::from_static(b":\n\n"), &mut stop).await
            {
                return;
            }
            idle_since = tokio::time::Instant::now();
        }
    }

    /// A `rows` event: the rows, and the row to resume from as its id.
    fn rows_event(&self, rows: &[Row]) -> Bytes {
        let mut batch = RowsBatch::default();
        for r in rows {
            batch.push(self.kind, r);
        }
        batch.take(self.next_row)
    }

    /// Sends an event; false once the browser is gone or the server is stopping.
    async fn send(&self, event: Bytes, stop: &mut tokio::sync::watch::Receiver<bool>) -> bool {
        tokio::select! {
            r = self.tx.send(Ok(event)) => r.is_ok(),
            _ = stop.wait_for(|s| *s) => false,
        }
    }
}

/// `/raw` options.
#[derive(Debug, Deserialize)]
pub(super) struct RawQuery {
    /// Any value: serve as a file to save.
    download: Option<String>,
}

/// `GET /raw/PATH`: the bytes stored so far, exactly as written (datagrams framed as a
/// uvarint length and the bytes). Text is served as `text/plain` whatever content type the
/// writer declared, so a stream can never become a page of this site; binary and datagram
/// streams are downloads.
pub(super) async fn raw(
    State(st): State<AppState>,
    Path(path): Path<String>,
    Query(q): Query<RawQuery>,
    headers: HeaderMap,
) -> ApiResult {
    let key = readable_key(&st, &headers, "/raw", &path)?;
    let (store, k) = (st.store.clone(), key.clone());
    let info = reader::blocking(move || store.stream(&k))
        .await?
        .ok_or_else(|| ApiError::stream_not_found(&key))?;
    let kind = reader::stream_type(&info.desc);
    let end = info.state.contiguous;
    // One piece queued (and one with hyper): a slow downloader holds little.
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let store = st.store.clone();
    let k = key.clone();
    let chunks = st.chunks.clone();
    tokio::spawn(async move {
        let _reader = crate::trim::Reader::new();
        let mut next = 0u64;
        let mut buf = Vec::new();
        while next < end {
            // Through the shared chunks: downloaders at the same place hold one copy.
            let chunk = match chunks.read_now(&store, &k, next).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "web viewer: raw read failed");
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    return;
                }
            };
            if chunk.entries.is_empty() {
                break;
            }
            for e in chunk.entries.iter().take_while(|e| e.stream_index < end) {
                for i in 0..reader::pieces(e) {
                    reader::piece_bytes(e, i, &mut buf);
                    if buf.len() >= READ_BUDGET {
                        // Queued pieces keep their buffer's spare room unless it is given back.
                        buf.shrink_to_fit();
                        let piece = Bytes::from(std::mem::take(&mut buf));
                        if tx.send(Ok(piece)).await.is_err() {
                            return;
                        }
                    }
                }
                next = e.stream_index + 1;
            }
            if next < chunk.entries[0].stream_index + chunk.entries.len() as u64 {
                break; // at `end`
            }
        }
        if !buf.is_empty() {
            let _ = tx.send(Ok(Bytes::from(buf))).await;
        }
    });
    let mut resp = Body::from_stream(ReceiverStream::new(rx)).into_response();
    let h = resp.headers_mut();
    let ctype = if kind == StreamType::Text {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    };
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    // A document that could still be opened on its own runs in a sandbox.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'"),
    );
    if kind != StreamType::Text || q.download.is_some() {
        // Names are [A-Za-z0-9:_.-] segments, safe inside quotes.
        let base = key.name.rsplit('/').next().unwrap_or("stream");
        if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{base}\"")) {
            h.insert(header::CONTENT_DISPOSITION, v);
        }
    }
    Ok(resp)
}
