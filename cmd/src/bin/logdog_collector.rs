//! `logdog_collector`: stores bundles from butlers and serves streams back.
//!
//! `logdog_collector --listen 127.0.0.1:7431 --data ./collector-data [--http 127.0.0.1:7432]
//! [--tail 127.0.0.1:7433] [--metrics 127.0.0.1:9431] [--tls-cert PEM --tls-key PEM]
//! [--auth FILE]`; `logdog_collector verify --data DIR` scans a store for damage. Every flag
//! may come from `--config FILE` (TOML) or a `LOGDOG_COLLECTOR_*` environment variable (see
//! `collector_config.rs`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use logdog_collector::{Store, TailServer, Watchers, web};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

#[path = "../collector_config.rs"]
mod config;
#[path = "../fdlimit.rs"]
mod fdlimit;
#[path = "../logging.rs"]
mod logging;

/// Stores bundles from butlers durably and serves streams back, finished or live.
#[derive(Debug, Parser)]
#[command(name = "logdog_collector", version, rename_all = "kebab-case")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Read flags from this TOML file: keys are the long flags (`max-connections = 1024`,
    /// `read-deadline = "60s"`, `insecure-no-auth = true`). Every flag may also be given as an
    /// environment variable (LOGDOG_COLLECTOR_MAX_CONNECTIONS); the command line wins over the
    /// environment, which wins over the file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on (port 0 picks a free port; the address is printed on stdout).
    #[arg(long, default_value = "127.0.0.1:7431")]
    listen: String,
    /// Serve the web viewer on this address (off unless given; port 0 picks a free port; the
    /// address is printed on stdout as LOGDOG_HTTP=ADDR).
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
    /// Serve only `GET /metrics` (Prometheus text format), `/healthz` and `/readyz` on this
    /// address (off unless given; port 0 picks a free port; the address is printed on stdout
    /// as LOGDOG_METRICS=ADDR). The viewer (--http) serves them too. Open to anyone who
    /// reaches it: figures only, no log content or names.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// Serve the tail server on this address (off unless given; port 0 picks a free port; the
    /// address is printed on stdout as LOGDOG_TAIL=ADDR).
    #[arg(long, value_name = "ADDR")]
    tail: Option<String>,
    /// Tail server connections open at once; when full, a new connection takes the slot of
    /// the oldest one that has not sent its request yet.
    #[arg(long, value_name = "N", default_value_t = logdog_collector::tailsrv::DEFAULT_MAX_CONNECTIONS as u32, value_parser = clap::value_parser!(u32).range(1..))]
    tail_max_connections: u32,
    /// Niceness (0-19) of the threads serving the web viewer and the tail server: storing
    /// bundles comes first, and readers are served with the CPU it leaves.
    #[arg(long, default_value_t = 19, value_parser = clap::value_parser!(i32).range(0..=19))]
    reader_nice: i32,
    /// Directory of the embedded store (created if missing). One collector per directory.
    #[arg(long, default_value = "./collector-data", global = true)]
    data: PathBuf,
    /// Keep the data in this PostgreSQL database instead of the embedded store in --data:
    /// postgres://USER[:PASSWORD]@HOST[:PORT]/DB. The database must exist; the schema is
    /// created or migrated at start. Any number of collectors may share one database, each
    /// serving every stream.
    #[arg(long, value_name = "URL", value_parser = parse_store_url)]
    store: Option<String>,
    /// Remove streams whose last write (an entry or its end) is older than this, with their
    /// entries and the space they took (checked every tenth of it, at most every minute).
    /// Streams being followed are kept. Off unless given.
    #[arg(long, value_name = "DURATION", value_parser = parse_retain)]
    retain: Option<std::time::Duration>,
    /// Bytes of gRPC request messages that calls in progress may hold at once; past it a call
    /// waits (unread) for room until its read deadline, then gets RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = logdog_collector::ingress::DEFAULT_MAX_INFLIGHT_BYTES, value_parser = clap::value_parser!(u64).range(1..))]
    max_inflight_bytes: u64,
    /// How long a gRPC call's request may take to arrive before the call is ended
    /// (DEADLINE_EXCEEDED).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    read_deadline: std::time::Duration,
    /// gRPC connections open at once; past it new connections are closed on arrival.
    #[arg(long, default_value_t = logdog_collector::ingress::DEFAULT_MAX_CONNECTIONS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_connections: usize,
    /// Serve TLS on the gRPC port, the viewer and the tail server with this certificate chain
    /// (PEM; needs --tls-key).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Tokens that may write and read (a TOML file of token hashes, see `token new`). Without
    /// it anyone who reaches the collector may write and read every project.
    #[arg(long, value_name = "FILE")]
    auth: Option<PathBuf>,
    /// Listen on non-loopback addresses without --auth (anyone who can reach them may write
    /// and read every project).
    #[arg(long)]
    insecure_no_auth: bool,
    /// HTTP/2 receive window of one gRPC connection, in bytes: how much a butler may send
    /// ahead unread, shared by its bundles in flight. Larger is faster; request bodies hold at
    /// most about --max-inflight-bytes + --max-connections × this.
    #[arg(long, value_name = "BYTES", default_value_t = logdog_collector::ingress::DEFAULT_CONNECTION_WINDOW, value_parser = clap::value_parser!(u32).range(i64::from(logdog_collector::ingress::MIN_CONNECTION_WINDOW)..=i64::from(logdog_collector::ingress::MAX_CONNECTION_WINDOW)))]
    connection_window: u32,
    /// Report a stream that has not ended as `abandoned` (in the viewer's API and `logdog ls`)
    /// once nothing of its whole prefix has arrived for this long: a butler that was killed
    /// never ends its streams.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
    abandon_after: std::time::Duration,
    /// Log level (off, error, warn, info, debug, trace, or directives such as
    /// `info,logdog_collector::tailsrv=debug`); RUST_LOG overrides it.
    #[arg(long, default_value = "info", value_parser = logging::parse_level)]
    log_level: String,
    /// How log lines are written on stderr: text, or json (one object per line).
    #[arg(long, value_enum, default_value_t = logging::LogFormat::Text)]
    log_format: logging::LogFormat,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Scans the store in --data for damage (checksums, the index, sequences, counters) and
    /// lists what is damaged; exits 1 if anything is. Safe beside a running collector.
    Verify,
    /// Manages tokens for --auth.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, clap::Subcommand)]
enum TokenCommand {
    /// Prints a new random token and the entry (with its hash) to add to the --auth file.
    /// The token itself is shown once and stored nowhere.
    New {
        /// The token's name, shown in log lines instead of the token.
        name: String,
        /// Projects it may write (comma-separated; `*`: all).
        #[arg(long, value_delimiter = ',', value_name = "P,...")]
        write: Vec<String>,
        /// Projects it may read (comma-separated; `*`: all).
        #[arg(long, value_delimiter = ',', value_name = "P,...")]
        read: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = match parse_cli() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match &cli.command {
        Some(Command::Verify) if cli.store.is_some() => {
            eprintln!(
                "logdog_collector: verify scans the embedded store (--data); on PostgreSQL use \
                 the database's own checks (amcheck)"
            );
            return ExitCode::from(2);
        }
        Some(Command::Verify) => return verify(&cli.data),
        Some(Command::Token(TokenCommand::New { name, write, read })) => {
            return token_new(name, write, read);
        }
        None => {}
    }
    logging::init(&cli.log_level, "info", cli.log_format);
    fdlimit::raise_open_file_limit();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("logdog_collector: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    // The web viewer and the tail server run on their own runtime, whose threads have a lower
    // priority, so that followers (a hundred of them reading as fast as they can) never take
    // CPU from storing bundles.
    let readers = if cli.http.is_some() || cli.tail.is_some() || cli.metrics.is_some() {
        let nice = cli.reader_nice;
        let built = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(16)
            .thread_name("logdog-readers")
            .on_thread_start(move || {
                // Linux: the niceness of this thread only.
                let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice);
            })
            .enable_all()
            .build();
        match built {
            Ok(rt) => Some(rt),
            Err(e) => {
                eprintln!("logdog_collector: cannot start the readers' runtime: {e}");
                return ExitCode::from(1);
            }
        }
    } else {
        None
    };
    let handle = readers.as_ref().map(|r| r.handle().clone());
    let result = rt.block_on(run(cli, handle));
    drop(readers);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("logdog_collector: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The prefix of the environment variables that give flags (LOGDOG_COLLECTOR_LISTEN).
/// `LOGDOG_COLLECTOR` alone is `logdog`'s collector address, not one of these.
const ENV_PREFIX: &str = "LOGDOG_COLLECTOR_";

/// The flags from the command line, the environment and the `--config` file, in that order of
/// precedence. Exits on `--help` and `--version`; a bad command line or file is reported on
/// stderr and gives the exit status (2).
fn parse_cli() -> Result<Cli, ExitCode> {
    use clap::{CommandFactory, FromArgMatches};
    let mut cmd = config::with_env(Cli::command(), ENV_PREFIX);
    // `token` does not use the store: a hidden copy of --data keeps the global one out of
    // its help.
    let data = cmd.get_arguments().find(|a| a.get_id() == "data").cloned();
    if let Some(data) = data {
        cmd = cmd.mut_subcommand("token", |t| t.arg(data.hide(true)));
    }
    let args = match config::apply(&cmd, std::env::args_os().collect()) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("logdog_collector: {e:#}");
            return Err(ExitCode::from(2));
        }
    };
    let from_file = args.len() > std::env::args_os().len();
    let parsed = cmd
        .try_get_matches_from(args)
        .and_then(|m| Cli::from_arg_matches(&m));
    match parsed {
        Ok(cli) => Ok(cli),
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let _ = e.print();
            // The message names flags; say where else they may have come from.
            let env: Vec<String> = std::env::vars_os()
                .filter_map(|(k, _)| k.into_string().ok())
                .filter(|k| k.starts_with(ENV_PREFIX))
                .collect();
            if !env.is_empty() {
                eprintln!(
                    "note: flags were also set in the environment: {}",
                    env.join(", ")
                );
            }
            if from_file {
                eprintln!("note: flags were also set in the --config file");
            }
            Err(ExitCode::from(2))
        }
    }
}

/// `logdog_collector verify`: the scan's findings on stdout, one line each, then a summary.
fn verify(dir: &std::path::Path) -> ExitCode {
    let report = match logdog_collector::verify::verify(dir) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("logdog_collector: cannot verify {}: {e}", dir.display());
            return ExitCode::from(2);
        }
    };
    for p in &report.problems {
        println!("DAMAGED {p}");
    }
    println!(
        "verified {} streams, {} entries, {} bytes: {}",
        report.streams,
        report.entries,
        report.bytes,
        if report.damaged == 0 {
            "no damage".to_string()
        } else {
            format!("{} damaged", report.damaged)
        }
    );
    if report.damaged == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `logdog_collector token new`: the token on stdout's first line, then its auth-file entry.
fn token_new(name: &str, write: &[String], read: &[String]) -> ExitCode {
    use logdog_collector::auth;
    if write.is_empty() && read.is_empty() {
        eprintln!("logdog_collector: a token needs --write or --read (projects, or *)");
        return ExitCode::from(2);
    }
    for p in write.iter().chain(read).filter(|p| *p != "*") {
        if let Err(e) = logdog_proto::types::validate_project(p) {
            eprintln!("logdog_collector: {e}");
            return ExitCode::from(2);
        }
    }
    let token = match auth::new_token() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("logdog_collector: no random source: {e}");
            return ExitCode::from(1);
        }
    };
    println!("{token}");
    eprintln!(
        "# The token is above; give it to the client (LOGDOG_TOKEN or --token-file). \
         Add this entry to the --auth file:"
    );
    print!(
        "{}",
        auth::toml_entry(name, &auth::token_hash(&token), write, read)
    );
    ExitCode::SUCCESS
}

/// The collector's access policy and TLS from the flags. Refuses to expose an open
/// collector beyond loopback unless told to.
fn security(cli: &Cli) -> anyhow::Result<logdog_collector::Security> {
    let auth = match &cli.auth {
        Some(path) => logdog_collector::Auth::load(path)?,
        None => logdog_collector::Auth::open(),
    };
    let tls = match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => Some(logdog_collector::TlsIdentity::load(cert, key)?),
        _ => None,
    };
    if auth.is_open() {
        let exposed: Vec<&str> = std::iter::once(cli.listen.as_str())
            .chain(cli.http.as_deref())
            .chain(cli.tail.as_deref())
            .filter(|a| !is_loopback(a))
            .collect();
        if !exposed.is_empty() && !cli.insecure_no_auth {
            anyhow::bail!(
                "refusing to listen on {} without --auth: anyone who reaches it could write and \
                 read every project (give --auth FILE, or --insecure-no-auth to accept that)",
                exposed.join(", ")
            );
        }
        if !exposed.is_empty() {
            tracing::warn!(addrs = %exposed.join(", "), "--insecure-no-auth: anyone who reaches these addresses may write and read every project");
        }
    } else {
        tracing::info!(
            tokens = auth.token_count(),
            "auth on: every request needs a token"
        );
    }
    Ok(logdog_collector::Security { auth, tls })
}

/// Whether `addr` (HOST:PORT) names only loopback. A host name other than `localhost` counts
/// as exposed: it may resolve to anything.
fn is_loopback(addr: &str) -> bool {
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return sa.ip().is_loopback();
    }
    addr.rsplit_once(':')
        .is_some_and(|(host, _)| host.eq_ignore_ascii_case("localhost"))
}

/// Binds `addr` for the server called `what`, ready to hand to any runtime.
fn bind(what: &str, addr: &str) -> anyhow::Result<(std::net::TcpListener, SocketAddr)> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot listen on {addr} ({what})"))?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

async fn run(cli: Cli, readers: Option<tokio::runtime::Handle>) -> anyhow::Result<()> {
    // Signals are caught before the address is printed: a supervisor that stops the collector
    // as soon as it is up gets a clean stop, not the default action's kill.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let security = security(&cli)?;
    let store = open_store(&cli).await?;
    store.set_abandon_after(cli.abandon_after);
    let listener = TcpListener::bind(&cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    let addr = listener.local_addr()?;
    let http = cli
        .http
        .as_deref()
        .map(|a| bind("web viewer", a))
        .transpose()?;
    let tail = cli
        .tail
        .as_deref()
        .map(|a| bind("tail server", a))
        .transpose()?;
    // Scripts and tests read these lines to find the servers.
    println!("LOGDOG_COLLECTOR={addr}");
    if let Some((_, a)) = &http {
        println!("LOGDOG_HTTP={a}");
    }
    if let Some((_, a)) = &tail {
        println!("LOGDOG_TAIL={a}");
    }
    let metrics = cli
        .metrics
        .as_deref()
        .map(|a| bind("metrics", a))
        .transpose()?;
    if let Some((_, a)) = &metrics {
        println!("LOGDOG_METRICS={a}");
    }
    match &cli.store {
        Some(url) => tracing::info!(%addr, store = %redact(url), "collector listening"),
        None => tracing::info!(%addr, data = %cli.data.display(), "collector listening"),
    }

    // One stop signal for every server: SIGTERM or SIGINT.
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("stopping: finishing the calls in progress");
        let _ = stop_tx.send(true);
    });
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    // The viewer's and the tail server's project lists start from what the store holds.
    let st = store.clone();
    let projects = tokio::task::spawn_blocking(move || st.projects())
        .await
        .map_err(anyhow::Error::from)
        .and_then(|r| r.map_err(anyhow::Error::from));
    let watchers = Watchers::knowing(projects.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot list the stored projects");
        Vec::new()
    }));
    // Writes through other collectors sharing the store wake this one's followers too.
    let w = watchers.clone();
    store.follow_changes(move |keys| w.notify_changed(&keys));
    if let Some(age) = cli.retain {
        tokio::spawn(retention(store.clone(), watchers.clone(), age, stopped()));
    }
    if cli.store.is_some() {
        // Collectors sharing the database may run retention: they must know, as soon as it
        // changes, which streams this one's followers are on.
        tokio::spawn(publish_followed(store.clone(), watchers.clone(), stopped()));
    }
    let readers = readers.unwrap_or_else(tokio::runtime::Handle::current);
    let web = http.map(|(listener, a)| {
        tracing::info!(addr = %a, tls = security.tls.is_some(), "web viewer listening");
        let (store, watchers, stop) = (store.clone(), watchers.clone(), stopped());
        let security = security.clone();
        readers.spawn(async move {
            let listener = TcpListener::from_std(listener)?;
            web::serve_secured(listener, store, watchers, &security, stop).await
        })
    });
    let tail = match tail {
        Some((listener, a)) => {
            tracing::info!(addr = %a, tls = security.tls.is_some(), "tail server listening");
            let mut server = TailServer::new(store.clone(), watchers.clone())
                .with_max_connections(cli.tail_max_connections as usize)
                .with_auth(security.auth.clone());
            if let Some(tls) = &security.tls {
                server = server.with_tls(tls.acceptor(&[]).context("TLS for the tail server")?);
            }
            Some((listener, server))
        }
        None => None,
    };
    let tail = tail.map(|(listener, server)| {
        let stop = stopped();
        readers.spawn(async move {
            let listener = TcpListener::from_std(listener)?;
            server.run(listener, stop).await
        })
    });
    let metrics = metrics.map(|m| serve_metrics(m, &store, &readers, stopped()));
    let grace = stopped();
    let limits = logdog_collector::Limits {
        max_inflight_bytes: cli.max_inflight_bytes,
        read_deadline: cli.read_deadline,
        max_connections: cli.max_connections,
        connection_window: cli.connection_window,
    };
    let servers = async move {
        let grpc = logdog_collector::serve_secured(
            listener,
            store,
            watchers,
            &limits,
            &security,
            stopped(),
        )
        .await;
        for (what, task) in [
            ("web viewer", web),
            ("tail server", tail),
            ("metrics server", metrics),
        ] {
            if let Some(task) = task {
                task.await
                    .with_context(|| format!("the {what} failed"))?
                    .with_context(|| format!("the {what} failed"))?;
            }
        }
        grpc?;
        anyhow::Ok(())
    };
    // A client that never lets go must not keep the collector from stopping. Whatever was
    // cut short was not acknowledged, so its butler sends it again.
    tokio::select! {
        r = servers => r,
        () = async { grace.await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "stopping: connections still open after the grace period; exiting anyway");
            Ok(())
        }
    }
}

/// Starts the `--metrics` server on `readers`.
fn serve_metrics(
    (listener, addr): (std::net::TcpListener, SocketAddr),
    store: &Store,
    readers: &tokio::runtime::Handle,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    tracing::info!(%addr, "metrics server listening");
    let store = store.clone();
    readers.spawn(async move {
        let listener = TcpListener::from_std(listener)?;
        web::serve_metrics(listener, store, stop).await
    })
}

/// Opens the store: PostgreSQL with --store, else the embedded store in --data.
async fn open_store(cli: &Cli) -> anyhow::Result<Store> {
    match &cli.store {
        Some(url) => {
            let u = url.clone();
            tokio::task::spawn_blocking(move || Store::open_postgres(&u))
                .await?
                .with_context(|| format!("cannot open the store at {}", redact(url)))
        }
        None => Store::open(&cli.data)
            .with_context(|| format!("cannot open the store in {}", cli.data.display())),
    }
}

/// A store URL as it may be shown: without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// `--store`: a PostgreSQL URL.
fn parse_store_url(s: &str) -> Result<String, String> {
    if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        Ok(s.to_string())
    } else {
        Err(
            "expected postgres://USER@HOST:PORT/DB (the embedded store is the default, in --data)"
                .to_string(),
        )
    }
}

/// `--retain`: a duration of at least a second.
fn parse_retain(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < std::time::Duration::from_secs(1) {
        return Err("at least 1s".to_string());
    }
    Ok(d)
}

/// Retention: every tenth of `age` (at least 1 s, at most 1 min), removes the streams last
/// written longer than `age` ago, except the followed ones, until `stop`.
async fn retention(
    store: Store,
    watchers: Watchers,
    age: std::time::Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    let every = (age / 10).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(60),
    );
    // Followed streams are published for other collectors for a few rounds.
    let lease = every * 3;
    tokio::pin!(stop);
    loop {
        let followed = watchers.followed();
        let st = store.clone();
        let done =
            tokio::task::spawn_blocking(move || st.remove_older(age, &followed, lease)).await;
        match done {
            Ok(Ok(removed)) if !removed.is_empty() => {
                tracing::info!(streams = removed.len(), older_than = ?age, "retention removed old streams");
                watchers.notify(&removed);
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "retention failed; trying again later"),
            Err(e) => tracing::warn!(error = %e, "retention failed; trying again later"),
        }
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// How long other collectors keep a stream this one reported followed.
const FOLLOW_LEASE: std::time::Duration = std::time::Duration::from_secs(30);

/// On a shared store: tells the other collectors which streams this one's
/// followers are on (they never remove those), when that changes and before the lease ends.
/// Writes nothing while nobody follows anything.
async fn publish_followed(
    store: Store,
    watchers: Watchers,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut last: Vec<logdog_collector::store::StreamKey> = Vec::new();
    let mut renewed = tokio::time::Instant::now();
    loop {
        let mut followed = watchers.followed();
        followed.sort();
        let due = !followed.is_empty() && renewed.elapsed() >= FOLLOW_LEASE / 3;
        if followed != last || due {
            let (st, f) = (store.clone(), followed.clone());
            match tokio::task::spawn_blocking(move || st.publish_followed(&f, FOLLOW_LEASE)).await {
                Ok(Ok(())) => {
                    last = followed;
                    renewed = tokio::time::Instant::now();
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot publish the followed streams"),
                Err(e) => tracing::warn!(error = %e, "cannot publish the followed streams"),
            }
        }
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
}

/// How long a stop waits for calls and connections in progress.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);
