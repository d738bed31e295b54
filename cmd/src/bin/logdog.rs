//! `logdog`: reads streams back from a collector.
//!
//! ```text
//! logdog --collector 127.0.0.1:7431 cat PROJECT/PREFIX/+/NAME
//! logdog --collector 127.0.0.1:7431 tail [-n 10] [-f [--wait]] [--raw] PROJECT/PREFIX/+/NAME
//! logdog --collector 127.0.0.1:7431 ls PROJECT/PREFIX[/+/GLOB]
//! logdog --collector 127.0.0.1:7431 query --tag k=v PROJECT[/PREFIX[/+/GLOB]]
//! logdog --collector grpcs://collector.example:7431 --ca-cert ca.pem cat PROJECT/PREFIX/+/NAME
//! ```
//!
//! The token (`--token-file FILE`, else `LOGDOG_TOKEN`) goes with every call as
//! `authorization: Bearer TOKEN`. Exit status: 0, 1 when something failed (an unknown stream,
//! nothing matching `ls` or `query`, a server that is not a collector), 2 for bad flags (an
//! unreadable token or CA file too). `tail -f` reconnects when the connection to the collector
//! is lost (a restart) and resumes at the next entry.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::{Parser, Subcommand};
use logdog_outputs::security::{
    BearerAuth, CaCert, ClientSecurity, Collector, TOKEN_ENV, Token, tls_connect_failure,
};
use logdog_proto::logdog::collector as pb;
use logdog_proto::logdog::collector::logs_client::LogsClient;
use logdog_proto::logpb::{self, log_entry::Content};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

#[path = "../logging.rs"]
mod logging;

/// The collector's address, for messages.
static COLLECTOR: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// How long `tail -f` keeps trying to reconnect after losing the collector.
const RECONNECT_FOR: Duration = Duration::from_secs(120);

/// The longest pause between two reconnection attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);

/// The client, with the token interceptor.
type Client = LogsClient<InterceptedService<Channel, BearerAuth>>;

/// Reads log streams back from a collector: whole, the last lines, or live.
#[derive(Debug, Parser)]
#[command(name = "logdog", version, rename_all = "kebab-case")]
struct Cli {
    /// The collector, as HOST:PORT (also grpc://HOST:PORT or http://HOST:PORT), or
    /// grpcs://HOST:PORT over TLS.
    #[arg(long, env = "LOGDOG_COLLECTOR", default_value = "127.0.0.1:7431")]
    collector: String,
    /// With grpcs://: trust this CA certificate (PEM) instead of the system's roots.
    #[arg(long, value_name = "PEM")]
    ca_cert: Option<PathBuf>,
    /// Send the token in this file with every call (wins over LOGDOG_TOKEN).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Log level of its own diagnostics (error, warn, info, debug, trace); RUST_LOG overrides
    /// it.
    #[arg(long, default_value = "warn", value_parser = logging::parse_level)]
    log_level: String,
    /// How diagnostics and the final error are written on stderr: text, or json (one object
    /// per line). Stream contents on stdout are never changed.
    #[arg(long, value_enum, default_value_t = logging::LogFormat::Text)]
    log_format: logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Writes a stream's bytes exactly as they were written (datagrams framed as uvarint
    /// length + bytes).
    Cat {
        /// PROJECT/PREFIX/+/NAME
        path: String,
    },
    /// Shows the last lines of a text stream (datagrams: one per line); with -f, follows it
    /// until it is complete, reconnecting if the collector restarts.
    Tail {
        /// How many lines (datagrams of a datagram stream, entries of a binary stream).
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: usize,
        /// Keep following new lines until the stream is complete.
        #[arg(short = 'f', long)]
        follow: bool,
        /// With -f: wait for a stream that does not exist yet (without it, a missing stream is
        /// an error).
        #[arg(long, requires = "follow")]
        wait: bool,
        /// Datagrams as stored, each framed as its length (unsigned LEB128 varint) and its
        /// bytes, as `cat` and the tail server write them, instead of one per line.
        #[arg(long)]
        raw: bool,
        /// PROJECT/PREFIX/+/NAME
        path: String,
    },
    /// Lists streams under a prefix (or matching PROJECT/PREFIX/+/GLOB) with state, size, tags.
    Ls {
        /// PROJECT/PREFIX or PROJECT/PREFIX/+/GLOB (`*` one segment, `**` any).
        pattern: String,
    },
    /// Lists streams that carry the given tags.
    Query {
        /// KEY=VALUE (repeatable; KEY= matches any value).
        #[arg(long = "tag", value_name = "KEY=VALUE")]
        tags: Vec<String>,
        /// PROJECT, PROJECT/PREFIX or PROJECT/PREFIX/+/GLOB.
        pattern: String,
    },
}

/// Prints the error that ends the program: `logdog: MESSAGE`, or a JSON log line.
fn fail(format: logging::LogFormat, message: &str) {
    match format {
        logging::LogFormat::Text => eprintln!("logdog: {message}"),
        logging::LogFormat::Json => tracing::error!(error = message, "logdog failed"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(&cli.log_level, "warn", cli.log_format);
    let format = cli.log_format;
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            fail(format, &format!("cannot start the runtime: {e}"));
            return ExitCode::from(1);
        }
    };
    let (collector, security) = match settings(&cli) {
        Ok(s) => s,
        Err(e) => {
            fail(format, &e.to_string());
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli, collector, security)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            fail(format, &format!("{e:#}"));
            ExitCode::from(1)
        }
    }
}

/// Splits `PROJECT/REST` into the project and the rest.
fn split_project(path: &str) -> anyhow::Result<(String, String)> {
    let (project, rest) = path
        .trim_start_matches('/')
        .split_once('/')
        .ok_or_else(|| anyhow!("{path:?}: expected PROJECT/PREFIX/+/NAME"))?;
    Ok((project.to_string(), rest.to_string()))
}

/// The collector and how to reach it, from the flags: errors are bad flags (exit 2).
fn settings(cli: &Cli) -> Result<(Collector, ClientSecurity), String> {
    let collector =
        Collector::parse(&cli.collector, true).map_err(|e| format!("--collector {e}"))?;
    let ca = match &cli.ca_cert {
        Some(_) if !collector.tls => {
            return Err(format!(
                "--ca-cert is for a collector over TLS (grpcs://HOST:PORT), not {collector}"
            ));
        }
        Some(p) => Some(CaCert::load(p)?),
        None => None,
    };
    let token = Token::from_file_or_env(cli.token_file.as_deref(), std::env::var_os(TOKEN_ENV))?;
    let security = ClientSecurity { ca, token };
    if let Some(w) = security.cleartext_warning(&collector) {
        eprintln!("logdog: warning: {w}");
    }
    Ok((collector, security))
}

async fn connect(collector: &Collector, security: &ClientSecurity) -> anyhow::Result<Client> {
    let endpoint = collector
        .endpoint(security.ca.as_ref())
        .map_err(|e| anyhow!("{e}"))?
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint.connect().await.map_err(|e| {
        if let Some(msg) = tls_connect_failure(&e, collector) {
            return anyhow!("{msg}");
        }
        anyhow!(
            "cannot reach the collector at {}: {}",
            collector.host_port,
            source_message(&e)
        )
    })?;
    let auth = BearerAuth::new(security.token.as_ref()).map_err(|e| anyhow!("{e}"))?;
    Ok(LogsClient::with_interceptor(channel, auth).max_decoding_message_size(64 * 1024 * 1024))
}

/// The innermost cause of a transport error: "connection refused" rather than
/// "transport error".
fn source_message(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Every message in the chain of `e`, joined.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e;
    while let Some(next) = cur.source() {
        out.push_str(": ");
        out.push_str(&next.to_string());
        cur = next;
    }
    out
}

/// Whether `s` says that the server did not answer in gRPC at all: an HTTP server (such as
/// the web viewer), or something that is not HTTP/2.
fn not_grpc(s: &Status) -> bool {
    // The status's own message may only say "transport error"; the cause is further in.
    let mut m = s.message().to_string();
    if let Some(src) = std::error::Error::source(s) {
        m.push_str(": ");
        m.push_str(&error_chain(src));
    }
    s.code() == Code::Unimplemented
        || [
            "invalid compression flag",
            "HTTP status",
            "content-type",
            "protocol error",
            "frame with invalid size",
            "invalid HTTP",
        ]
        .iter()
        .any(|w| m.contains(w))
}

fn status_error(path: &str, s: Status) -> anyhow::Error {
    if not_grpc(&s) {
        let m = s.message();
        let what = match m.find("with status: ") {
            Some(i) => format!(
                "it answered HTTP {}, not gRPC",
                &m[i + "with status: ".len()..]
            ),
            None => "it does not speak gRPC".to_string(),
        };
        return anyhow!(
            "the server at {} does not answer like a logdog collector ({what}): is it the web \
             viewer's or the tail server's port? Give --collector the address the collector \
             prints as LOGDOG_COLLECTOR=",
            COLLECTOR.get().map_or("--collector", String::as_str),
        );
    }
    match s.code() {
        Code::NotFound => anyhow!("stream {path} not found"),
        Code::InvalidArgument => anyhow!("{}", s.message()),
        Code::Unavailable => anyhow!("collector unavailable: {}", s.message()),
        Code::Unauthenticated => anyhow!(
            "UNAUTHENTICATED: {} (give a token with LOGDOG_TOKEN or --token-file)",
            s.message()
        ),
        Code::PermissionDenied => anyhow!("PERMISSION_DENIED: {}", s.message()),
        _ => anyhow!("{}: {}", s.code(), s.message()),
    }
}

async fn run(cli: Cli, collector: Collector, security: ClientSecurity) -> anyhow::Result<()> {
    let _ = COLLECTOR.set(collector.host_port.clone());
    let client = connect(&collector, &security).await?;
    let mut session = Session {
        client,
        collector,
        security,
    };
    let client = &mut session.client;
    match cli.command {
        Command::Cat { path } => cat(client, &path).await,
        Command::Tail {
            lines,
            follow,
            wait,
            raw,
            path,
        } => {
            let opts = TailOptions {
                lines,
                follow,
                wait,
                raw,
            };
            tail(&mut session, &path, opts).await
        }
        Command::Ls { pattern } => list(client, &pattern, Vec::new()).await,
        Command::Query { tags, pattern } => {
            let tags = tags
                .iter()
                .map(|t| {
                    let (k, v) = t.split_once('=').unwrap_or((t.as_str(), ""));
                    (k.to_string(), v.to_string())
                })
                .collect();
            list(client, &pattern, tags).await
        }
    }
}

/// A client and how to make it again (`tail -f` reconnects).
struct Session {
    client: Client,
    collector: Collector,
    security: ClientSecurity,
}

/// What `tail` was asked for.
#[derive(Debug, Clone, Copy)]
struct TailOptions {
    lines: usize,
    follow: bool,
    wait: bool,
    raw: bool,
}

/// Writes entries' payloads; keeps track of datagram fragments across calls.
#[derive(Default)]
struct Writer {
    out: Vec<u8>,
    /// Datagrams one per line (`false`: framed as a uvarint length and the bytes).
    lines: bool,
    /// A datagram's first fragment was written and its last one not yet.
    in_datagram: bool,
}

impl Writer {
    /// A writer of datagrams one per line (`raw`: framed as stored).
    fn new(raw: bool) -> Self {
        Self {
            lines: !raw,
            ..Self::default()
        }
    }

    fn entry(&mut self, e: &logpb::LogEntry) {
        match &e.content {
            Some(Content::Text(t)) => {
                for l in &t.lines {
                    self.out.extend_from_slice(&l.value);
                    self.out.extend_from_slice(l.delimiter.as_bytes());
                }
            }
            Some(Content::Binary(b)) => self.out.extend_from_slice(&b.data),
            Some(Content::Datagram(d)) if self.lines => match d.partial {
                None => {
                    self.out.extend_from_slice(&d.data);
                    self.out.push(b'\n');
                }
                // The rest of a datagram whose start was not read (`tail -n` starts at an
                // entry): left out.
                Some(p) if p.index > 0 && !self.in_datagram => {}
                Some(p) => {
                    self.out.extend_from_slice(&d.data);
                    self.in_datagram = !p.last;
                    if p.last {
                        self.out.push(b'\n');
                    }
                }
            },
            Some(Content::Datagram(d)) => {
                match d.partial {
                    None => {
                        logdog_proto::handshake::put_uvarint(&mut self.out, d.data.len() as u64)
                    }
                    Some(p) if p.index == 0 => {
                        logdog_proto::handshake::put_uvarint(&mut self.out, p.size)
                    }
                    Some(_) => {}
                }
                self.out.extend_from_slice(&d.data);
            }
            None => {}
        }
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        let mut stdout = std::io::stdout().lock();
        match stdout.write_all(&self.out).and_then(|()| stdout.flush()) {
            // A closed pipe (`logdog cat ... | head`) is not an error.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
            other => other.context("writing stdout")?,
        }
        self.out.clear();
        Ok(())
    }
}

async fn cat(client: &mut Client, path: &str) -> anyhow::Result<()> {
    let (project, rest) = split_project(path)?;
    let mut index = 0u64;
    let mut w = Writer::new(true);
    loop {
        let resp = client
            .get(pb::GetRequest {
                project: project.clone(),
                path: rest.clone(),
                state: true,
                index,
                byte_count: 0,
                log_count: 0,
            })
            .await;
        let resp = match resp {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == Code::NotFound => return Err(not_found(client, path).await),
            Err(s) => return Err(status_error(path, s)),
        };
        for e in &resp.logs {
            w.entry(e);
        }
        w.flush()?;
        match resp.logs.last() {
            Some(last) => index = last.stream_index + 1,
            None => {
                let state = resp.state.unwrap_or_default();
                if !state.complete {
                    let what = if state.terminated {
                        "incomplete (entries are missing)"
                    } else {
                        "still open"
                    };
                    eprintln!("logdog: {path}: stream is {what}; showed entries 0..{index}");
                }
                return Ok(());
            }
        }
    }
}

async fn tail(session: &mut Session, path: &str, opts: TailOptions) -> anyhow::Result<()> {
    let (project, rest) = split_project(path)?;
    let mut next = 0u64;
    let resp = session
        .client
        .tail(pb::TailRequest {
            project: project.clone(),
            path: rest.clone(),
            state: true,
            count: opts.lines.max(1) as u32,
        })
        .await;
    let mut w = Writer::new(opts.raw);
    match resp {
        Ok(resp) => {
            let resp = resp.into_inner();
            for e in &resp.logs {
                w.entry(e);
            }
            // Keep only the last `lines` lines of what the entries hold.
            let text = std::mem::take(&mut w.out);
            w.out = last_lines(&text, opts.lines).to_vec();
            w.flush()?;
            next = resp.logs.last().map_or(0, |e| e.stream_index + 1);
            if !opts.follow || resp.state.is_some_and(|s| s.complete) {
                return Ok(());
            }
        }
        // Follow a stream that does not exist yet.
        Err(s) if s.code() == Code::NotFound && opts.wait => {}
        Err(s) if s.code() == Code::NotFound => {
            return Err(not_found(&mut session.client, path).await);
        }
        Err(s) => return Err(status_error(path, s)),
    }
    follow(session, path, (project, rest), next, &mut w).await
}

/// Follows a stream from entry `next` until it is complete. A lost connection (the collector
/// restarting) is said once on stderr and retried with backoff for up to [`RECONNECT_FOR`];
/// the follow resumes at the entry after the last one written, so nothing is written twice
/// or skipped.
async fn follow(
    session: &mut Session,
    path: &str,
    (project, rest): (String, String),
    mut next: u64,
    w: &mut Writer,
) -> anyhow::Result<()> {
    let mut lost: Option<Instant> = None;
    let mut delay = Duration::from_millis(100);
    loop {
        let result: Result<(), Status> = async {
            let mut stream = session
                .client
                .follow(pb::FollowRequest {
                    project: project.clone(),
                    path: rest.clone(),
                    index: next,
                })
                .await?
                .into_inner();
            while let Some(msg) = stream.message().await? {
                // Connected again: a later loss is told again.
                lost = None;
                delay = Duration::from_millis(100);
                for e in &msg.logs {
                    w.entry(e);
                    next = e.stream_index + 1;
                }
                w.flush().map_err(|e| Status::aborted(format!("{e:#}")))?;
            }
            Ok(())
        }
        .await;
        let why = match result {
            // The collector ends a follow once the stream is complete, or when it stops.
            Ok(()) => match complete(&mut session.client, &project, &rest).await {
                Ok(true) => return Ok(()),
                Ok(false) => "the collector ended the follow".to_string(),
                Err(s) => s.message().to_string(),
            },
            Err(s) if s.code() == Code::Aborted => bail!("{}", s.message()),
            Err(s) if retryable(&s) => s.message().to_string(),
            Err(s) => return Err(status_error(path, s)),
        };
        let since = *lost.get_or_insert_with(|| {
            eprintln!(
                "logdog: lost the connection to the collector at {} ({why}); reconnecting",
                session.collector.host_port
            );
            Instant::now()
        });
        if since.elapsed() > RECONNECT_FOR {
            bail!(
                "could not reconnect to the collector at {} for {}s: {why}",
                session.collector.host_port,
                RECONNECT_FOR.as_secs()
            );
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_RECONNECT_DELAY);
        // A new channel: the old one may be stuck on the dead connection.
        if let Ok(c) = connect(&session.collector, &session.security).await {
            session.client = c;
        }
    }
}

/// Whether a follow that failed with `s` may succeed when tried again: the connection was
/// lost, not the request refused.
fn retryable(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Internal
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
    )
}

/// Whether the stream is complete.
async fn complete(client: &mut Client, project: &str, rest: &str) -> Result<bool, Status> {
    let resp = client
        .get(pb::GetRequest {
            project: project.to_string(),
            path: rest.to_string(),
            state: true,
            index: 0,
            byte_count: 0,
            log_count: -1,
        })
        .await?
        .into_inner();
    Ok(resp.state.is_some_and(|s| s.complete))
}

/// Says that stream `path` does not exist: with the closest names under its prefix, and a
/// hint when the path seems to lack its project.
async fn not_found(client: &mut Client, path: &str) -> anyhow::Error {
    let mut msg = format!("stream {path} not found");
    let Ok((project, rest)) = split_project(path) else {
        return anyhow!(msg);
    };
    let (prefix, name) = rest.split_once("/+/").unwrap_or((rest.as_str(), ""));
    let names = stream_names(client, &project, prefix).await;
    let mut close: Vec<(usize, &String)> = names.iter().map(|n| (distance(name, n), n)).collect();
    close.sort();
    if !close.is_empty() {
        let shown: Vec<String> = close
            .iter()
            .take(3)
            .map(|(_, n)| format!("{project}/{prefix}/+/{n}"))
            .collect();
        msg.push_str(&format!(
            "; the closest names under {project}/{prefix}: {}",
            shown.join(", ")
        ));
        return anyhow!(msg);
    }
    // Nothing under the prefix: was the project left out?
    let default = format!("default/{}", path.trim_start_matches('/'));
    if project != "default" && stream_exists(client, &default).await {
        msg.push_str(&format!(
            "; paths start with the project: did you mean {default}?"
        ));
    } else if stream_names(client, &project, "").await.is_empty() {
        msg.push_str(&format!(
            "; project {project:?} has no streams (paths are PROJECT/PREFIX/+/NAME, such as \
             default/{})",
            path.trim_start_matches('/')
        ));
    } else {
        msg.push_str(&format!("; {project}/{prefix} has no streams"));
    }
    anyhow!(msg)
}

/// The names of the streams directly under `project/prefix` (all of the project's for an
/// empty prefix; at most a page); empty when they cannot be listed.
async fn stream_names(client: &mut Client, project: &str, prefix: &str) -> Vec<String> {
    let resp = client
        .query(pb::QueryRequest {
            project: project.to_string(),
            path: prefix.to_string(),
            tags: Default::default(),
            max_results: 0,
            next: String::new(),
        })
        .await;
    let Ok(resp) = resp else {
        return Vec::new();
    };
    resp.into_inner()
        .streams
        .into_iter()
        .filter_map(|s| {
            let (p, n) = s.path.split_once("/+/")?;
            (prefix.is_empty() || p == prefix).then(|| n.to_string())
        })
        .collect()
}

/// Whether `PROJECT/PREFIX/+/NAME` exists.
async fn stream_exists(client: &mut Client, path: &str) -> bool {
    let Ok((project, rest)) = split_project(path) else {
        return false;
    };
    complete(client, &project, &rest).await.is_ok()
}

/// The edit distance between `a` and `b` (characters inserted, removed or changed).
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The tail of `text` holding its last `n` lines.
fn last_lines(text: &[u8], n: usize) -> &[u8] {
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return &text[i + 1..];
            }
        }
    }
    text
}

async fn list(
    client: &mut Client,
    pattern: &str,
    tags: Vec<(String, String)>,
) -> anyhow::Result<()> {
    let (project, rest) = match pattern.split_once('/') {
        Some((p, r)) => (p.to_string(), r.to_string()),
        None => (pattern.to_string(), String::new()),
    };
    if project.is_empty() {
        bail!("{pattern:?}: expected PROJECT[/PREFIX[/+/GLOB]]");
    }
    let mut next = String::new();
    let mut out = String::new();
    loop {
        let resp = client
            .query(pb::QueryRequest {
                project: project.clone(),
                path: rest.clone(),
                tags: tags.iter().cloned().collect(),
                max_results: 0,
                next: next.clone(),
            })
            .await
            .map_err(|s| status_error(pattern, s))?
            .into_inner();
        for s in &resp.streams {
            let state = s.state.unwrap_or_default();
            let desc = s.desc.clone().unwrap_or_default();
            let status = if state.complete {
                "complete"
            } else if state.terminated {
                "incomplete"
            } else if state.abandoned {
                "abandoned"
            } else {
                "open"
            };
            let kind =
                logpb::StreamType::try_from(desc.stream_type).map_or("?", |t| t.as_str_name());
            let tags: Vec<String> = desc.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push_str(&format!(
                "{project}/{}\t{status}\t{kind}\t{} bytes\t{} entries\t{}\n",
                s.path,
                state.byte_count,
                state.entry_count,
                tags.join(",")
            ));
        }
        if resp.next.is_empty() {
            break;
        }
        next = resp.next;
    }
    if out.is_empty() {
        let with = if tags.is_empty() {
            String::new()
        } else {
            let tags: Vec<String> = tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!(" with tags {}", tags.join(","))
        };
        bail!("no streams match {pattern}{with}");
    }
    print!("{out}");
    Ok(())
}
