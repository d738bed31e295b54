//! The viewer's server: routes, pages, static files and security headers.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use super::api;
use crate::chunks::ChunkCache;
use crate::store::Store;
use crate::watchers::Watchers;

/// Live followers (event streams) served at once; more get 503.
const MAX_FOLLOWERS: usize = 4096;

/// What every handler shares.
#[derive(Debug, Clone)]
pub(super) struct AppState {
    pub(super) store: Store,
    pub(super) watchers: Watchers,
    /// Turns true when the server stops; event streams end then, so that the graceful
    /// shutdown does not wait for followers of streams that never complete.
    pub(super) stop: watch::Receiver<bool>,
    /// Permits for live followers.
    pub(super) followers: Arc<Semaphore>,
    /// Reads shared by the live followers of a stream.
    pub(super) chunks: ChunkCache,
}

/// What a connection buffers for writing before it waits for the client: hyper's default is
/// about 400 KiB, which hundreds of slow readers would each hold.
const CONN_WRITE_BUFFER: usize = 64 * 1024;

/// Serves the web viewer on `listener` until `shutdown` resolves; then ends the live event
/// streams, lets the requests in progress finish and returns.
///
/// # Errors
/// The server failed.
pub async fn serve(
    listener: TcpListener,
    store: Store,
    watchers: Watchers,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let app = router(store, watchers, stop_rx);
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().max_buf_size(CONN_WRITE_BUFFER);
    builder.http2().max_send_buf_size(CONN_WRITE_BUFFER);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (socket, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: wait a little instead of spinning.
                    tracing::warn!(error = %e, "web viewer: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let conn = builder
            .serve_connection_with_upgrades(
                TokioIo::new(socket),
                TowerToHyperService::new(app.clone()),
            )
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "web viewer connection ended");
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    graceful.shutdown().await;
    Ok(())
}

/// The viewer's routes. `stop` turning true ends the live event streams.
fn router(store: Store, watchers: Watchers, stop: watch::Receiver<bool>) -> Router {
    let state = AppState {
        store,
        watchers,
        stop,
        followers: Arc::new(Semaphore::new(MAX_FOLLOWERS)),
        chunks: ChunkCache::new(),
    };
    Router::new()
        .route("/", get(|| async { page(INDEX_HTML) }))
        .route("/p/{*scope}", get(|| async { page(LIST_HTML) }))
        .route("/s/{*path}", get(|| async { page(STREAM_HTML) }))
        .route("/static/{file}", get(asset))
        .route("/api/projects", get(api::projects))
        .route("/api/streams/{*scope}", get(api::streams))
        .route("/api/stream/{*path}", get(api::stream))
        .route("/api/rows/{*path}", get(api::rows))
        .route("/api/events/{*path}", get(api::events))
        .route("/raw/{*path}", get(api::raw))
        .fallback(|| async { api::ApiError::not_found("no such page") })
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

const INDEX_HTML: &str = include_str!("assets/index.html");
const LIST_HTML: &str = include_str!("assets/list.html");
const STREAM_HTML: &str = include_str!("assets/stream.html");

/// The static files under `/static/`.
const ASSETS: [(&str, &str, &str); 4] = [
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("assets/style.css"),
    ),
    (
        "common.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/common.js"),
    ),
    (
        "list.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/list.js"),
    ),
    (
        "stream.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/stream.js"),
    ),
];

fn page(html: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        html,
    )
        .into_response()
}

async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    match ASSETS.iter().find(|(name, ..)| *name == file) {
        Some((_, ctype, body)) => (
            [
                (header::CONTENT_TYPE, *ctype),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *body,
        )
            .into_response(),
        None => api::ApiError::not_found("no such file").into_response(),
    }
}

/// Scripts and styles only from the viewer itself, no framing, no content sniffing.
async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(
            "default-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
             frame-ancestors 'none'",
        ));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    resp
}
