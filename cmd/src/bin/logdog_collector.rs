//! `logdog_collector`: stores bundles from butlers and serves streams back.
//!
//! `logdog_collector --listen 127.0.0.1:7431 --data ./collector-data`

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use logdog_collector::Store;
use tokio::signal::unix::{SignalKind, signal};

/// Stores bundles from butlers durably and serves streams back, finished or live.
#[derive(Debug, Parser)]
#[command(name = "logdog_collector", version, about, rename_all = "kebab-case")]
struct Cli {
    /// Address to listen on (port 0 picks a free port; the address is printed on stdout).
    #[arg(long, default_value = "127.0.0.1:7431")]
    listen: String,
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

async fn run(cli: Cli) -> anyhow::Result<()> {
    let store = Store::open(&cli.data)
        .with_context(|| format!("cannot open the store in {}", cli.data.display()))?;
    let listener = tokio::net::TcpListener::bind(&cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    let addr = listener.local_addr()?;
    // Scripts and tests read this line to find the collector.
    println!("LOGDOG_COLLECTOR={addr}");
    tracing::info!(%addr, data = %cli.data.display(), "collector listening");
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("stopping: finishing the calls in progress");
    };
    logdog_collector::serve(listener, store, shutdown).await?;
    Ok(())
}
