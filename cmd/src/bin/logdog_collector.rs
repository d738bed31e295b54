//! `logdog_collector`: stores bundles from butlers and serves streams back.
//!
//! `logdog_collector --listen 127.0.0.1:7431 --data ./collector-data [--http 127.0.0.1:7432]
//! [--tail 127.0.0.1:7433]`

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use logdog_collector::{Store, TailServer, Watchers, web};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// Stores bundles from butlers durably and serves streams back, finished or live.
#[derive(Debug, Parser)]
#[command(name = "logdog_collector", version, about, rename_all = "kebab-case")]
struct Cli {
    /// Address to listen on (port 0 picks a free port; the address is printed on stdout).
    #[arg(long, default_value = "127.0.0.1:7431")]
    listen: String,
    /// Serve the web viewer on this address (off unless given; port 0 picks a free port; the
    /// address is printed on stdout as LOGDOG_HTTP=ADDR).
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
    /// Serve the tail server on this address (off unless given; port 0 picks a free port; the
    /// address is printed on stdout as LOGDOG_TAIL=ADDR).
    #[arg(long, value_name = "ADDR")]
    tail: Option<String>,
    /// Directory of the embedded store (created if missing).
    #[arg(long, default_value = "./collector-data")]
    data: PathBuf,
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    log_level: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cli.log_level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
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
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("logdog_collector: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Binds `addr` for the server called `what`.
async fn bind(what: &str, addr: &str) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({what})"))?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let store = Store::open(&cli.data)
        .with_context(|| format!("cannot open the store in {}", cli.data.display()))?;
    let (listener, addr) = bind("gRPC", &cli.listen).await?;
    let http = match &cli.http {
        Some(a) => Some(bind("web viewer", a).await?),
        None => None,
    };
    let tail = match &cli.tail {
        Some(a) => Some(bind("tail server", a).await?),
        None => None,
    };
    // Scripts and tests read these lines to find the servers.
    println!("LOGDOG_COLLECTOR={addr}");
    if let Some((_, a)) = &http {
        println!("LOGDOG_HTTP={a}");
    }
    if let Some((_, a)) = &tail {
        println!("LOGDOG_TAIL={a}");
    }
    tracing::info!(%addr, data = %cli.data.display(), "collector listening");

    // One stop signal for every server: SIGTERM or SIGINT.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
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

    let watchers = Watchers::new();
    let web = http.map(|(listener, a)| {
        tracing::info!(addr = %a, "web viewer listening");
        tokio::spawn(web::serve(
            listener,
            store.clone(),
            watchers.clone(),
            stopped(),
        ))
    });
    let tail = tail.map(|(listener, a)| {
        tracing::info!(addr = %a, "tail server listening");
        let server = TailServer::new(store.clone(), watchers.clone());
        tokio::spawn(server.run(listener, stopped()))
    });
    let grpc = logdog_collector::serve_with(listener, store, watchers, stopped()).await;
    for (what, task) in [("web viewer", web), ("tail server", tail)] {
        if let Some(task) = task {
            task.await
                .with_context(|| format!("the {what} failed"))?
                .with_context(|| format!("the {what} failed"))?;
        }
    }
    grpc?;
    Ok(())
}
