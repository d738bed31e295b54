//! The viewer's server: routes, pages, static files and security headers.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use super::{api, login, scan};
use crate::Security;
use crate::auth::Auth;
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
    /// Who may read which projects.
    pub(super) auth: Auth,
    /// Served over TLS (the login cookie is `Secure`).
    pub(super) secure: bool,
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
    serve_secured(listener, store, watchers, &Security::default(), shutdown).await
}

/// Like [`serve`], with the access policy and TLS of `security`: over TLS the viewer offers
/// HTTP/2 and HTTP/1.1 (ALPN), and with an auth file every page and API route needs a token
/// that may read the project (see the `login` module).
///
/// # Errors
/// The TLS configuration was refused, or the server failed.
pub async fn serve_secured(
    listener: TcpListener,
    store: Store,
    watchers: Watchers,
    security: &Security,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let acceptor = security
        .tls
        .as_ref()
        .map(|t| t.acceptor(&[b"h2", b"http/1.1"]))
        .transpose()
        .map_err(io::Error::other)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let app_metrics = store.metrics().clone();
    let app = router(
        store,
        watchers,
        stop_rx.clone(),
        security.auth.clone(),
        acceptor.is_some(),
    );
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().max_buf_size(CONN_WRITE_BUFFER);
    builder.http2().max_send_buf_size(CONN_WRITE_BUFFER);
    let graceful = GracefulShutdown::new();
    let handshake_failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
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
        let Some(acceptor) = &acceptor else {
            let conn = builder
                .serve_connection_with_upgrades(
                    TokioIo::new(socket),
                    TowerToHyperService::new(app.clone()),
                )
                .into_owned();
            let conn = graceful.watch(conn);
            let open = app_metrics.viewer_connections().enter();
            tokio::spawn(async move {
                let _open = open;
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "web viewer connection ended");
                }
            });
            continue;
        };
        // The handshake runs in the connection's own task: a silent client holds up nobody.
        let (acceptor, builder, app) = (acceptor.clone(), builder.clone(), app.clone());
        let (watcher, failures, stop) = (
            graceful.watcher(),
            handshake_failures.clone(),
            stop_rx.clone(),
        );
        let open = app_metrics.viewer_connections().enter();
        tokio::spawn(async move {
            let _open = open;
            let Some(tls) = handshake(&acceptor, socket, stop, &failures).await else {
                return;
            };
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(tls), TowerToHyperService::new(app))
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(error = %e, "web viewer connection ended");
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    graceful.shutdown().await;
    Ok(())
}

/// A connection's TLS handshake, within [`HANDSHAKE_TIMEOUT`](crate::tls::HANDSHAKE_TIMEOUT);
/// `None` (logged and counted in `failures`) if it failed, or the server is stopping.
async fn handshake(
    acceptor: &tokio_rustls::TlsAcceptor,
    socket: TcpStream,
    mut stop: watch::Receiver<bool>,
    failures: &std::sync::atomic::AtomicU64,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    use crate::tls::HANDSHAKE_TIMEOUT;
    let peer = socket.peer_addr().ok();
    let why = tokio::select! {
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket)) => match r {
            Ok(Ok(tls)) => return Some(tls),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("not finished within {}s", HANDSHAKE_TIMEOUT.as_secs()),
        },
        _ = stop.wait_for(|s| *s) => return None,
    };
    let n = failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    tracing::info!(peer = ?peer, error = %why, failures = n, "web viewer: TLS handshake failed");
    None
}

/// The viewer's routes. `stop` turning true ends the live event streams.
fn router(
    store: Store,
    watchers: Watchers,
    stop: watch::Receiver<bool>,
    auth: Auth,
    secure: bool,
) -> Router {
    let followers = Arc::new(Semaphore::new(MAX_FOLLOWERS));
    store
        .metrics()
        .watch_viewer_followers(&followers, MAX_FOLLOWERS);
    let state = AppState {
        store,
        watchers,
        stop,
        followers,
        chunks: ChunkCache::new(),
        auth,
        secure,
    };
    Router::new()
        .route("/", get(index_page))
        .route("/p/{*scope}", get(list_page))
        .route("/s/{*path}", get(stream_page))
        .route("/c/{*scope}", get(combined_page))
        .route("/login", get(login::login_form).post(login::login))
        .route("/logout", post(login::logout))
        .route("/static/{file}", get(asset))
        .route("/api/projects", get(api::projects))
        .route("/api/streams/{*scope}", get(api::streams))
        .route("/api/stream/{*path}", get(api::stream))
        .route("/api/rows/{*path}", get(api::rows))
        .route("/api/events/{*path}", get(api::events))
        .route("/api/search/{*path}", get(scan::search))
        .route("/api/sections/{*path}", get(scan::sections))
        .route("/api/interleave/{*scope}", get(scan::interleave))
        .route("/api/run/{*scope}", get(scan::run))
        .route("/raw/{*path}", get(api::raw))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(|| async { api::ApiError::not_found("no such page") })
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// `/metrics`: the collector's metrics in the Prometheus text format. Open even with auth on:
/// the page holds figures only, no log content or names (see [`crate::metrics`]).
async fn metrics(State(st): State<AppState>) -> Response {
    metrics_page(&st.store).await
}

/// `/healthz`: 200 while the process serves. Open even with auth on, like `/readyz`.
async fn healthz() -> Response {
    health_answer(axum::http::StatusCode::OK, "ok\n".to_string())
}

/// `/readyz`: 200 while the store is writable, 503 with the reason otherwise (see
/// [`crate::health`]).
async fn readyz(State(st): State<AppState>) -> Response {
    readiness_page(&st.store).await
}

/// What `/readyz` answers for `store`.
pub(crate) async fn readiness_page(store: &Store) -> Response {
    match crate::health::readiness(store).await {
        Ok(()) => health_answer(axum::http::StatusCode::OK, "ok\n".to_string()),
        Err(e) => health_answer(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {e}\n"),
        ),
    }
}

/// A plain-text, uncached answer of `/healthz` or `/readyz`.
fn health_answer(status: axum::http::StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// The metrics page of the collector serving `store`.
pub(crate) async fn metrics_page(store: &Store) -> Response {
    // The store's size may take a database query: off the async threads.
    let st = store.clone();
    let (bytes, deferred) =
        tokio::task::spawn_blocking(move || (st.disk_bytes(), st.deferred_bytes()))
            .await
            .unwrap_or((0, 0));
    let page = store.metrics().render(bytes, deferred);
    (
        [
            (header::CONTENT_TYPE, logdog_proto::prom::CONTENT_TYPE),
            (header::CACHE_CONTROL, "no-store"),
        ],
        page,
    )
        .into_response()
}

/// Serves only `GET /metrics`, `/healthz` and `/readyz` on `listener` (for
/// `--metrics ADDR`), until `shutdown` resolves.
///
/// # Errors
/// The server failed.
pub async fn serve_metrics(
    listener: TcpListener,
    store: Store,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(store): State<Store>| async move { metrics_page(&store).await }),
        )
        .route("/healthz", get(healthz))
        .route(
            "/readyz",
            get(|State(store): State<Store>| async move { readiness_page(&store).await }),
        )
        .fallback(|| async { api::ApiError::not_found("no such page") })
        .with_state(store);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

const INDEX_HTML: &str = include_str!("assets/index.html");
const LIST_HTML: &str = include_str!("assets/list.html");
const STREAM_HTML: &str = include_str!("assets/stream.html");
const COMBINED_HTML: &str = include_str!("assets/combined.html");

/// The static files under `/static/`.
const ASSETS: [(&str, &str, &str); 5] = [
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
    (
        "combined.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/combined.js"),
    ),
];

/// The log-out button, in the header of every page when auth is on.
const LOGOUT_FORM: &str = "<form method=\"post\" action=\"/logout\" class=\"logout\">\
    <button type=\"submit\">Log out</button></form>\n</header>";

/// A page; `logout`: with the log-out button.
pub(super) fn page(html: &'static str, logout: bool) -> Response {
    let headers = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-cache"),
    ];
    if logout {
        (headers, html.replacen("</header>", LOGOUT_FORM, 1)).into_response()
    } else {
        (headers, html).into_response()
    }
}

/// `/`: any known token (the list shows only the projects it may read).
async fn index_page(State(st): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    login::guarded_page(&st, &headers, &uri, None, INDEX_HTML)
}

/// `/p/PROJECT[/PREFIX]`: a token that may read the project.
async fn list_page(
    State(st): State<AppState>,
    axum::extract::Path(scope): axum::extract::Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let project = crate::reader::parse_scope(&scope).ok().map(|(p, _)| p);
    login::guarded_page(&st, &headers, &uri, project.as_deref(), LIST_HTML)
}

/// `/s/PATH`: a token that may read the stream's project.
async fn stream_page(
    State(st): State<AppState>,
    axum::extract::Path(path): axum::extract::Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let project = crate::reader::parse_stream_path(&path)
        .ok()
        .map(|k| k.project);
    login::guarded_page(&st, &headers, &uri, project.as_deref(), STREAM_HTML)
}

/// `/c/PROJECT/PREFIX`: a token that may read the project.
async fn combined_page(
    State(st): State<AppState>,
    axum::extract::Path(scope): axum::extract::Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let project = crate::reader::parse_scope(&scope).ok().map(|(p, _)| p);
    login::guarded_page(&st, &headers, &uri, project.as_deref(), COMBINED_HTML)
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
