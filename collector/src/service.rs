//! The gRPC services: `Collector` (writes) and `Logs` (reads).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use logdog_proto::logdog::collector as pb;
use logdog_proto::logdog::collector::collector_server::{Collector, CollectorServer};
use logdog_proto::logdog::collector::logs_server::{Logs, LogsServer};
use prost::Message;
use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

use crate::auth::{self, Auth, Denied, Right};
use crate::path::{Pattern, StreamPath};
use crate::store::{Claim, NotOwner, Store, StoreError, StreamKey};
use crate::validate::{self, RefusalKind};
use crate::watchers::Watchers;
use logdog_proto::types::PREFIX_SECRET_LEN;

/// Largest bundle accepted, encoded.
pub const MAX_BUNDLE_SIZE: usize = 16 * 1024 * 1024;
/// Default and largest page of a `Query`.
const MAX_QUERY_RESULTS: usize = 500;
/// Default byte budget of a `Get` or of one `Follow` message.
const DEFAULT_GET_BYTES: usize = 4 * 1024 * 1024;
/// Byte budget of the entries of one `Follow` message: small, since a stalled follower holds
/// up to one encoded message. An entry larger than this is still sent whole, alone (entries
/// are never split; one is at most [`MAX_BUNDLE_SIZE`]), so a message holds at most
/// max(`FOLLOW_BYTES`, one entry).
pub const FOLLOW_BYTES: usize = 32 * 1024;
/// Largest byte budget a `Get` may ask for: a larger `byte_count` is lowered to this, so one
/// request cannot make the collector read a whole huge stream into memory (and its answer
/// always fits the 64 MiB response limit). Readers page with `index`.
pub const MAX_GET_BYTES: usize = 32 * 1024 * 1024;

/// The write service.
#[derive(Debug, Clone)]
pub struct CollectorService {
    store: Store,
    watchers: Watchers,
    auth: Auth,
}

/// The read service.
#[derive(Debug, Clone)]
pub struct LogsService {
    store: Store,
    watchers: Watchers,
    auth: Auth,
}

/// Both services over one store, ready to add to a tonic server.
pub fn services(store: Store) -> (CollectorServer<CollectorService>, LogsServer<LogsService>) {
    services_with(store, Watchers::new())
}

/// Both services over one store, notifying `watchers` of every write (share the hub with the
/// web viewer and the tail server so that their followers are woken too).
pub fn services_with(
    store: Store,
    watchers: Watchers,
) -> (CollectorServer<CollectorService>, LogsServer<LogsService>) {
    services_secured(store, watchers, Auth::open())
}

/// Like [`services_with`], letting only the callers that `auth` allows write and read.
pub fn services_secured(
    store: Store,
    watchers: Watchers,
    auth: Auth,
) -> (CollectorServer<CollectorService>, LogsServer<LogsService>) {
    let collector = CollectorServer::new(CollectorService {
        store: store.clone(),
        watchers: watchers.clone(),
        auth: auth.clone(),
    })
    .max_decoding_message_size(MAX_BUNDLE_SIZE * 2)
    // Butlers may compress their bundles (`--grpc-compression`); answers are compressed
    // only for a client that asks for it.
    .accept_compressed(CompressionEncoding::Zstd)
    .accept_compressed(CompressionEncoding::Gzip)
    .send_compressed(CompressionEncoding::Zstd)
    .send_compressed(CompressionEncoding::Gzip);
    let logs = LogsServer::new(LogsService {
        store,
        watchers,
        auth,
    })
    .max_encoding_message_size(64 * 1024 * 1024)
    .accept_compressed(CompressionEncoding::Zstd)
    .accept_compressed(CompressionEncoding::Gzip)
    .send_compressed(CompressionEncoding::Zstd)
    .send_compressed(CompressionEncoding::Gzip);
    (collector, logs)
}

/// The status of a store failure: damage is permanent (`DATA_LOSS`, so that a butler stops
/// retrying at once), anything else transient (`UNAVAILABLE`, retried with backoff).
pub(crate) fn store_error(e: StoreError) -> Status {
    tracing::error!(error = %e, "store failure");
    match e {
        StoreError::Damaged(_) => Status::data_loss(e.to_string()),
        other => Status::unavailable(format!("store failure: {other}")),
    }
}

/// The bearer token of a request's `authorization` metadata, if any.
fn token<T>(req: &Request<T>) -> Option<String> {
    let value = req.metadata().get("authorization")?.to_str().ok()?;
    let mut headers = tonic::codegen::http::HeaderMap::new();
    headers.insert(
        tonic::codegen::http::header::AUTHORIZATION,
        value.parse().ok()?,
    );
    auth::bearer(&headers).map(str::to_string)
}

/// At most the first `max` characters of `s`, for log lines about refused requests (a refused
/// project name may be huge).
fn clip(s: &str, max: usize) -> &str {
    s.char_indices().nth(max).map_or(s, |(i, _)| &s[..i])
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("store task failed: {e}")))?
        .map_err(store_error)
}

#[tonic::async_trait]
impl Collector for CollectorService {
    async fn write_bundle(
        &self,
        req: Request<pb::WriteBundleRequest>,
    ) -> Result<Response<pb::WriteBundleResponse>, Status> {
        let _writing = self.store.writing();
        let metrics = self.store.metrics().clone();
        let token = token(&req);
        let data = req.into_inner().bundle;
        if data.len() > MAX_BUNDLE_SIZE {
            metrics.refused(RefusalKind::Invalid);
            return Err(Status::invalid_argument(format!(
                "bundle of {} bytes exceeds the {MAX_BUNDLE_SIZE}-byte limit",
                data.len()
            )));
        }
        // A view that leaves each log entry encoded: entries are stored as they arrived.
        let bundle = pb::BundleView::decode(data).map_err(|e| {
            metrics.refused(RefusalKind::Invalid);
            Status::invalid_argument(format!("not a ButlerLogBundle: {e}"))
        })?;
        let bad = |e: String| {
            metrics.refused(RefusalKind::Invalid);
            tracing::warn!(project = %clip(&bundle.project, 64), prefix = %clip(&bundle.prefix, 64), error = %clip(&e, 512), "refused a bundle");
            Status::invalid_argument(e)
        };
        logdog_proto::types::validate_project(&bundle.project).map_err(|e| bad(e.to_string()))?;
        logdog_proto::types::validate_prefix(&bundle.prefix).map_err(|e| bad(e.to_string()))?;
        let what = format!(
            "WriteBundle {}/{}",
            bundle.project,
            clip(&bundle.prefix, 64)
        );
        let caller = self
            .auth
            .check(token.as_deref(), Right::Write, &bundle.project, &what)?;
        let secret = match bundle.secret.len() {
            0 => None,
            PREFIX_SECRET_LEN => Some(bundle.secret.clone()),
            n => {
                return Err(bad(format!(
                    "a prefix secret is {PREFIX_SECRET_LEN} bytes, not {n}"
                )));
            }
        };
        let checked = validate::streams(&bundle).map_err(|e| bad(e.0))?;
        for r in &checked.refused {
            tracing::warn!(project = %bundle.project, prefix = %bundle.prefix, stream = %r.name, error = %r.message, "refused a stream's part of a bundle");
        }
        let store = self.store.clone();
        let (project, prefix) = (bundle.project.clone(), bundle.prefix.clone());
        let streams = checked.streams;
        let required = !self.auth.is_open();
        let started = std::time::Instant::now();
        let outcome = blocking(move || {
            let claim = Claim {
                secret: secret.as_deref(),
                required,
            };
            store.write_claimed(&project, &prefix, &claim, &streams)
        })
        .await?;
        let outcome = match outcome {
            Ok(o) => o,
            Err(NotOwner(message)) => {
                let denied = Denied::PermissionDenied(message);
                return Err(self
                    .auth
                    .refuse(denied, &format!("{what} by {}", caller.name()))
                    .into());
            }
        };
        metrics.bundle_stored(
            u64::from(outcome.stored),
            outcome.bytes,
            u64::from(outcome.duplicates),
            started.elapsed(),
        );
        for r in checked.refused.iter().chain(&outcome.refused) {
            metrics.refused(r.kind);
        }
        if outcome.registered {
            tracing::info!(project = %bundle.project, prefix = %bundle.prefix, by = caller.name(), "prefix registered to the butler of its first bundle with a secret");
        }
        self.watchers.notify(&outcome.touched);
        let refused = checked
            .refused
            .iter()
            .chain(&outcome.refused)
            .map(validate::Refusal::to_proto)
            .collect();
        Ok(Response::new(pb::WriteBundleResponse {
            stored: outcome.stored,
            duplicates: outcome.duplicates,
            refused,
        }))
    }
}

/// Parses a request's project and path.
fn key_of(project: &str, path: &str) -> Result<StreamKey, Status> {
    logdog_proto::types::validate_project(project)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let p = StreamPath::parse(path).map_err(Status::invalid_argument)?;
    Ok(StreamKey {
        project: project.to_string(),
        prefix: p.prefix,
        name: p.name,
    })
}

fn not_found(key: &StreamKey) -> Status {
    Status::not_found(format!(
        "stream {}/{}/+/{} not found",
        key.project, key.prefix, key.name
    ))
}

/// Answers a `Get` or `Tail`: the stream's logs (read by `logs`, only if the stream exists),
/// with its state and descriptor when asked for.
async fn stream_response(
    key: StreamKey,
    with_state: bool,
    logs: impl FnOnce(&Store) -> Result<Vec<logdog_proto::logpb::LogEntry>, StoreError> + Send + 'static,
    store: Store,
) -> Result<Response<pb::GetResponse>, Status> {
    let k = key.clone();
    let (info, logs) = blocking(move || {
        let info = store.stream(&k)?;
        let logs = if info.is_some() {
            logs(&store)?
        } else {
            Vec::new()
        };
        Ok((info, logs))
    })
    .await?;
    let info = info.ok_or_else(|| not_found(&key))?;
    Ok(Response::new(pb::GetResponse {
        project: key.project,
        state: with_state.then_some(info.state),
        desc: with_state.then_some(info.desc),
        logs,
    }))
}

impl LogsService {
    /// Refuses (counted and logged) a caller that may not read `project`.
    fn may_read(&self, token: Option<&str>, project: &str, what: &str) -> Result<(), Status> {
        self.auth
            .check(token, Right::Read, project, &format!("{what} {project}"))
            .map(|_| ())
            .map_err(Status::from)
    }
}

type FollowStream = Pin<Box<dyn Stream<Item = Result<pb::FollowResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Logs for LogsService {
    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let token = token(&req);
        let r = req.into_inner();
        let key = key_of(&r.project, &r.path)?;
        self.may_read(token.as_deref(), &key.project, "Get")?;
        let store = self.store.clone();
        let k = key.clone();
        let max_bytes = match r.byte_count as usize {
            0 => DEFAULT_GET_BYTES,
            n => n.min(MAX_GET_BYTES),
        };
        let max_count = match r.log_count {
            n if n < 0 => 0,
            0 => usize::MAX,
            n => n as usize,
        };
        let index = r.index;
        stream_response(
            key,
            r.state,
            move |store| {
                if max_count == 0 {
                    Ok(Vec::new())
                } else {
                    store.entries(&k, index, max_count, max_bytes)
                }
            },
            store,
        )
        .await
    }

    async fn tail(
        &self,
        req: Request<pb::TailRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let token = token(&req);
        let r = req.into_inner();
        let key = key_of(&r.project, &r.path)?;
        self.may_read(token.as_deref(), &key.project, "Tail")?;
        let store = self.store.clone();
        let k = key.clone();
        let count = r.count.max(1) as usize;
        stream_response(
            key,
            r.state,
            move |store| store.last_entries(&k, count),
            store,
        )
        .await
    }

    async fn query(
        &self,
        req: Request<pb::QueryRequest>,
    ) -> Result<Response<pb::QueryResponse>, Status> {
        let token = token(&req);
        let r = req.into_inner();
        logdog_proto::types::validate_project(&r.project)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // A query lists the streams of one project: the caller must be able to read it.
        self.may_read(token.as_deref(), &r.project, "Query")?;
        let pattern = Pattern::parse(&r.path).map_err(Status::invalid_argument)?;
        let max = match r.max_results as usize {
            0 => MAX_QUERY_RESULTS,
            n => n.min(MAX_QUERY_RESULTS),
        };
        let store = self.store.clone();
        let project = r.project.clone();
        let prefix = pattern.prefix.clone();
        let all = blocking(move || store.list(&project, &prefix)).await?;
        let mut streams = Vec::new();
        let mut next = String::new();
        for (key, info) in all {
            let path = format!("{}/+/{}", key.prefix, key.name);
            if !r.next.is_empty() && path.as_str() <= r.next.as_str() {
                continue;
            }
            if !pattern.matches_name(&key.name) {
                continue;
            }
            if !r.tags.iter().all(|(k, v)| {
                info.desc
                    .tags
                    .get(k)
                    .is_some_and(|have| v.is_empty() || have == v)
            }) {
                continue;
            }
            if streams.len() == max {
                next = streams
                    .last()
                    .map(|s: &pb::query_response::Stream| s.path.clone())
                    .unwrap_or_default();
                break;
            }
            streams.push(pb::query_response::Stream {
                path,
                state: Some(info.state),
                desc: Some(info.desc),
            });
        }
        Ok(Response::new(pb::QueryResponse { streams, next }))
    }

    type FollowStream = FollowStream;

    async fn follow(
        &self,
        req: Request<pb::FollowRequest>,
    ) -> Result<Response<FollowStream>, Status> {
        let token = token(&req);
        let r = req.into_inner();
        let key = key_of(&r.project, &r.path)?;
        self.may_read(token.as_deref(), &key.project, "Follow")?;
        // Subscribe before the first read, so no write between them is missed.
        let changes = self.watchers.subscribe(&key);
        let follower = Follower {
            store: self.store.clone(),
            key,
            next: r.index,
            changes,
            sent_desc: false,
            last_state: None,
            idle: false,
            done: false,
            _reader: crate::trim::Reader::new(),
            _following: self.store.metrics().grpc_followers().enter(),
        };
        Ok(Response::new(Box::pin(Messages {
            follower: Some(follower),
            pending: None,
        })))
    }
}

/// One follower: what is stored from `next` on, then each change, until the stream is
/// complete and everything has been sent, or the follower goes away.
///
/// Messages are read from the store only when the transport asks for the next one, that is
/// once HTTP/2 flow control has room for it: a follower that stops reading holds no decoded
/// message, only what the transport has not yet sent of the last encoded one (at most one
/// message, [`FOLLOW_BYTES`] of entries or a single larger entry).
#[derive(Debug)]
struct Follower {
    store: Store,
    key: StreamKey,
    next: u64,
    changes: watch::Receiver<u64>,
    sent_desc: bool,
    last_state: Option<pb::LogStreamState>,
    /// Everything stored has been sent: wait for a change before reading again.
    idle: bool,
    /// The follow is over (the stream is complete and sent, or a read failed).
    done: bool,
    _reader: crate::trim::Reader,
    /// Counts this follower in the metrics while it lives.
    _following: crate::metrics::GaugeGuard,
}

type Item = Result<pb::FollowResponse, Status>;

impl Follower {
    /// The next message, or `None` once the follow is over.
    async fn next_message(&mut self) -> Option<Item> {
        loop {
            if self.done {
                return None;
            }
            if self.idle {
                tokio::select! {
                    changed = self.changes.changed() => if changed.is_err() { return None },
                    // A safety net: re-read now and then even without a wake-up.
                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
                self.idle = false;
            }
            self.changes.mark_unchanged();
            let (s, k, next) = (self.store.clone(), self.key.clone(), self.next);
            let read = blocking(move || {
                let info = s.stream(&k)?;
                let logs = match &info {
                    Some(_) => s.entries(&k, next, usize::MAX, FOLLOW_BYTES)?,
                    None => Vec::new(),
                };
                Ok((info, logs))
            })
            .await;
            let (info, logs) = match read {
                Ok(v) => v,
                Err(status) => {
                    self.done = true;
                    return Some(Err(status));
                }
            };
            let Some(info) = info else {
                self.idle = true;
                continue;
            };
            let more = !logs.is_empty();
            if let Some(last) = logs.last() {
                self.next = last.stream_index + 1;
            }
            // Nothing more stored: next time, wait for a change first (or end, if complete).
            let t = info.state.terminal_index;
            let complete = info.state.complete && (t < 0 || self.next > t as u64);
            self.idle = !more;
            self.done = !more && complete;
            let changed = self.last_state.as_ref() != Some(&info.state);
            if more || changed || !self.sent_desc {
                let msg = pb::FollowResponse {
                    desc: (!self.sent_desc).then(|| info.desc.clone()),
                    state: Some(info.state),
                    logs,
                };
                self.sent_desc = true;
                self.last_state = Some(info.state);
                return Some(Ok(msg));
            }
        }
    }
}

type Next = Pin<Box<dyn Future<Output = (Follower, Option<Item>)> + Send>>;

/// The messages of a [`Follower`], read one at a time as they are asked for.
struct Messages {
    /// The follower, while no read is under way (`None` once the follow is over).
    follower: Option<Follower>,
    /// The read under way.
    pending: Option<Next>,
}

impl Stream for Messages {
    type Item = Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        let this = &mut *self;
        if this.pending.is_none() {
            let Some(mut f) = this.follower.take() else {
                return Poll::Ready(None);
            };
            this.pending = Some(Box::pin(async move {
                let item = f.next_message().await;
                (f, item)
            }));
        }
        let Some(pending) = this.pending.as_mut() else {
            return Poll::Ready(None);
        };
        let (f, item) = std::task::ready!(pending.as_mut().poll(cx));
        this.pending = None;
        if item.is_some() {
            this.follower = Some(f);
        }
        Poll::Ready(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_comes_from_the_authorization_metadata() {
        let with = |v: &str| {
            let mut r = Request::new(());
            r.metadata_mut().insert("authorization", v.parse().unwrap());
            token(&r)
        };
        assert_eq!(token(&Request::new(())), None);
        assert_eq!(with("Bearer ldt_abc").as_deref(), Some("ldt_abc"));
        assert_eq!(with("bearer  ldt_abc ").as_deref(), Some("ldt_abc"));
        assert_eq!(with("Basic ldt_abc"), None);
        assert_eq!(with("Bearer "), None);
    }

    #[test]
    fn clip_keeps_log_lines_short_on_character_boundaries() {
        assert_eq!(clip("short", 64), "short");
        assert_eq!(clip(&"p".repeat(100_000), 64).len(), 64);
        assert_eq!(clip("ééé", 2), "éé");
    }

    /// A damaged index is permanent (`DATA_LOSS`, not retried); a full disk or a busy store is
    /// transient (`UNAVAILABLE`).
    #[test]
    fn store_failures_map_to_permanent_or_transient_statuses() {
        let sqlite = |code| {
            StoreError::from(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(code),
                Some("boom".into()),
            ))
        };
        let corrupt = sqlite(rusqlite::ffi::SQLITE_CORRUPT);
        assert!(matches!(corrupt, StoreError::Damaged(_)), "{corrupt:?}");
        assert_eq!(store_error(corrupt).code(), tonic::Code::DataLoss);
        let notadb = sqlite(rusqlite::ffi::SQLITE_NOTADB);
        assert_eq!(store_error(notadb).code(), tonic::Code::DataLoss);
        let full = sqlite(rusqlite::ffi::SQLITE_FULL);
        assert!(matches!(full, StoreError::DiskFull(_)), "{full:?}");
        let status = store_error(full);
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("disk full"), "{status:?}");
        assert_eq!(
            store_error(sqlite(rusqlite::ffi::SQLITE_BUSY)).code(),
            tonic::Code::Unavailable
        );
    }
}
