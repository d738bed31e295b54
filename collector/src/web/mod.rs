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
//!
//! A *row* is a text stream's line or a datagram stream's datagram. Pages hold a bounded
//! window of rows and fetch more as the reader scrolls, so a 100 MiB log is never rendered
//! (or sent) at once. The live view is a server-sent event stream whose event ids are row
//! numbers: after a reconnect the browser sends `Last-Event-ID` and the stream resumes there.
//!
//! # Layout
//! - [`ansi`]: ANSI escape sequences to styled spans.
//! - `server`: [`serve`], the routes, the pages and static files, the security headers.
//! - `api`: the JSON, event-stream and raw handlers.
//! - `assets/`: the pages, their script and style sheet.

pub mod ansi;
mod api;
mod server;

pub use server::serve;
