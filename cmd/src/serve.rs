//! `logdog_butler serve`: a stream server with no command, until SIGINT or SIGTERM.

use std::path::Path;

use anyhow::{Context, anyhow};
use logdog_streamserver::StreamServer;

use crate::cli::{Global, ServeArgs};
use crate::run::{Signals, report_losses};
use crate::{Failure, start_butler};

/// Runs the `serve` subcommand. Exits 0 after a signal once everything is flushed.
pub async fn serve(g: &Global, args: ServeArgs) -> Result<u8, Failure> {
    let server = match &args.streamserver_uri {
        None => StreamServer::bind_private().context("cannot create the stream server socket"),
        Some(uri) => {
            let path = uri.strip_prefix("unix:").ok_or_else(|| {
                Failure::Usage(format!("--streamserver-uri {uri:?}: expected unix:PATH"))
            })?;
            if path.is_empty() {
                return Err(Failure::Usage(
                    "--streamserver-uri unix: needs a path".into(),
                ));
            }
            StreamServer::bind(Path::new(path)).with_context(|| format!("cannot listen on {path}"))
        }
    }
    .map_err(Failure::Runtime)?
    .with_handshake_timeout(args.handshake_timeout);
    let mut signals = Signals::new()?;
    let metrics = match &args.metrics {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (--metrics)"))
                .map_err(Failure::Runtime)?,
        ),
        None => None,
    };
    let started = start_butler(g, args.max_streams)?;
    let butler = &started.butler;
    let address = server.address();
    let server_stats = server.stats();
    butler
        .add_stream_server(server)
        .await
        .map_err(|e| Failure::Runtime(e.into()))?;
    // Scripts read this line to find the server.
    println!("{}={address}", logdog_bootstrap::STREAM_SERVER_PATH);
    if let Some(listener) = metrics {
        let addr = listener
            .local_addr()
            .map_err(|e| Failure::Runtime(e.into()))?;
        crate::metrics::spawn(
            listener,
            crate::metrics::Sources {
                live: butler.live().clone(),
                server: server_stats,
                output: started.output.clone(),
                grpc: started.grpc.clone(),
            },
        );
        println!("LOGDOG_METRICS={addr}");
    }

    let sig = signals.recv().await;
    eprintln!("logdog_butler: {sig}: no new streams; flushing");
    butler.shutdown().await;
    let report = tokio::select! {
        r = butler.wait() => r.map_err(|e| Failure::Runtime(e.into()))?,
        sig = signals.recv() => return Err(Failure::Runtime(anyhow!("second {sig}: exiting without flushing"))),
    };
    started
        .finish_output(g)
        .await
        .map_err(|e| Failure::Runtime(e.into()))?;
    report_losses(&report);
    started.report_collector_losses();
    Ok(0)
}
