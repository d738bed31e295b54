//! `logdog`: reads streams back from a collector.
//!
//! ```text
//! logdog --collector 127.0.0.1:7431 cat PROJECT/PREFIX/+/NAME
//! logdog --collector 127.0.0.1:7431 tail [-n 10] [-f] PROJECT/PREFIX/+/NAME
//! logdog --collector 127.0.0.1:7431 ls PROJECT/PREFIX[/+/GLOB]
//! logdog --collector 127.0.0.1:7431 query --tag k=v PROJECT[/PREFIX[/+/GLOB]]
//! logdog --collector grpcs://collector.example:7431 --ca-cert ca.pem cat PROJECT/PREFIX/+/NAME
//! ```
//!
//! The token (`--token-file FILE`, else `LOGDOG_TOKEN`) goes with every call as
//! `authorization: Bearer TOKEN`. Exit status: 0, 1 when something failed, 2 for bad flags
//! (an unreadable token or CA file too).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

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
    /// Shows the last lines of a text stream; with -f, follows it until it is complete.
    Tail {
        /// How many lines (or entries, for binary and datagram streams).
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: usize,
        /// Keep following new lines until the stream is complete (waits for a stream that does
        /// not exist yet).
        #[arg(short = 'f', long)]
        follow: bool,
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

fn status_error(path: &str, s: Status) -> anyhow::Error {
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
    let mut client = connect(&collector, &security).await?;
    match cli.command {
        Command::Cat { path } => cat(&mut client, &path).await,
        Command::Tail {
            lines,
            follow,
            path,
        } => tail(&mut client, &path, lines, follow).await,
        Command::Ls { pattern } => list(&mut client, &pattern, Vec::new()).await,
        Command::Query { tags, pattern } => {
            let tags = tags
                .iter()
                .map(|t| {
                    let (k, v) = t.split_once('=').unwrap_or((t.as_str(), ""));
                    (k.to_string(), v.to_string())
                })
                .collect();
            list(&mut client, &pattern, tags).await
        }
    }
}

/// Writes entries' payloads; keeps track of datagram fragments across calls.
#[derive(Default)]
struct Writer {
    out: Vec<u8>,
}

impl Writer {
    fn entry(&mut self, e: &logpb::LogEntry) {
        match &e.content {
            Some(Content::Text(t)) => {
                for l in &t.lines {
                    self.out.extend_from_slice(&l.value);
                    self.out.extend_from_slice(l.delimiter.as_bytes());
                }
            }
            Some(Content::Binary(b)) => self.out.extend_from_slice(&b.data),
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
    let mut w = Writer::default();
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
            .await
            .map_err(|s| status_error(path, s))?
            .into_inner();
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

async fn tail(client: &mut Client, path: &str, lines: usize, follow: bool) -> anyhow::Result<()> {
    let (project, rest) = split_project(path)?;
    let mut next = 0u64;
    let resp = client
        .tail(pb::TailRequest {
            project: project.clone(),
            path: rest.clone(),
            state: true,
            count: lines.max(1) as u32,
        })
        .await;
    match resp {
        Ok(resp) => {
            let resp = resp.into_inner();
            let mut w = Writer::default();
            for e in &resp.logs {
                w.entry(e);
            }
            // Keep only the last `lines` lines of what the entries hold.
            let text = std::mem::take(&mut w.out);
            w.out = last_lines(&text, lines).to_vec();
            w.flush()?;
            next = resp.logs.last().map_or(0, |e| e.stream_index + 1);
            if !follow || resp.state.is_some_and(|s| s.complete) {
                return Ok(());
            }
        }
        Err(s) if s.code() == Code::NotFound && follow => {} // follow a stream that does not exist yet
        Err(s) => return Err(status_error(path, s)),
    }
    let mut stream = client
        .follow(pb::FollowRequest {
            project,
            path: rest,
            index: next,
        })
        .await
        .map_err(|s| status_error(path, s))?
        .into_inner();
    let mut w = Writer::default();
    while let Some(msg) = stream.message().await.map_err(|s| status_error(path, s))? {
        for e in &msg.logs {
            w.entry(e);
        }
        w.flush()?;
    }
    Ok(())
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
    print!("{out}");
    Ok(())
}
