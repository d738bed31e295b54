//! The web viewer: people read logs in a browser, while the build runs.
//!
//! Pages are static HTML, CSS and plain JavaScript compiled into the binary (no build step);
//! they read the JSON API below and render with DOM text nodes only, so nothing a stream's
//! writer chose (names, tags, log text) is ever parsed as HTML.
//!
//! | route | what |
//! |---|---|
//! | `/` | projects |
//! | `/p/PROJECT[/PREFIX]` | the streams of a project under a prefix: state, size, tags, start |
//! | `/s/PROJECT/PREFIX/+/NAME` | one stream: lines with numbers, times and ANSI colours, live |
//! | `/raw/PROJECT/PREFIX/+/NAME` | the stream's bytes as written (`?download=1`: as a file) |
//! | `/api/projects` | JSON: projects |
//! | `/api/streams/PROJECT[/PREFIX]` | JSON: streams |
//! | `/api/stream/PATH` | JSON: one stream's descriptor and state |
//! | `/api/rows/PATH?from=N&count=M` or `?last=M` | JSON: a page of rows |
//! | `/api/events/PATH?from=N` | server-sent events: rows from `N` as they arrive |
//! | `/api/search/PATH?q=TEXT[&regex=1]` | JSON: matching lines, a bounded page at a time |
//! | `/api/sections/PATH` | JSON: the CI section markers of a text stream, a bounded page at a time |
//! | `/c/PROJECT/PREFIX` | the text streams of a prefix interleaved, each line marked with its stream |
//! | `/api/interleave/PROJECT/PREFIX` | JSON: a page of the prefix's lines in `prefix_index` order |
//! | `/api/run/PROJECT/PREFIX` | JSON: the run record (`logdog/run`): command, exit status, times |
//! | `/metrics` | the collector's metrics, Prometheus text format (no token needed) |
//! | `/healthz`, `/readyz` | alive; ready (the store is writable: 200, or 503 and why); no token |
//! | `/login`, `/logout` | the login form (auth on): keeps the token in a cookie |
//!
//! A *row* is a text stream's line or a datagram stream's datagram. Pages hold a bounded
//! window of rows and fetch more as the reader scrolls, so a 100 MiB log is never rendered
//! (or sent) at once. The live view is a server-sent event stream whose event ids are row
//! numbers: after a reconnect the browser sends `Last-Event-ID` and the stream resumes there.
//!
//! With an auth file every page, API route, raw download and event stream needs a token that
//! may read the stream's project (`authorization: Bearer TOKEN`, or the login cookie), and
//! project lists show only readable projects: a browser without a token is sent to `/login`
//! (303), an API request gets 401 and a token without the right 403, as `{"error": ...}`.
//! Over TLS ([`serve_secured`]) the viewer speaks HTTP/2 and HTTP/1.1.
//!
//! # Layout
//! - [`ansi`]: ANSI escape sequences to styled spans.
//! - `server`: [`serve`], the routes, the pages and static files, the security headers.
//! - `api`: the JSON, event-stream and raw handlers.
//! - `scan`: reads that scan: search, section markers, the interleaved view, the run record.
//! - `login`: tokens from headers and the cookie, the login form, page access.
//! - `assets/`: the pages, their script and style sheet.

pub mod ansi;
mod api;
mod login;
mod scan;
mod server;

pub use login::COOKIE;
pub use server::{serve, serve_metrics, serve_secured};
