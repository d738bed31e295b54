//! `logdog_butler stream`: uploads one file or stdin as a single stream.

use logdog_butler::{Source, StreamSource};
use logdog_proto::types::make_stream_name;

use crate::cli::{Global, StreamArgs};
use crate::spec::StreamSpec;
use crate::{Failure, start_butler};

/// Runs the `stream` subcommand.
pub async fn stream(g: &Global, args: StreamArgs) -> Result<u8, Failure> {
    let spec = match args.stream {
        Some(s) => s,
        None => {
            let name = if args.source == "-" {
                "stdin".to_string()
            } else {
                make_stream_name("file:", &[&args.source])
            };
            format!("name={name}")
                .parse::<StreamSpec>()
                .map_err(Failure::Usage)?
        }
    };
    let global: std::collections::BTreeMap<String, String> = g.tags.iter().cloned().collect();
    spec.check_limits(&global).map_err(Failure::Usage)?;
    let reader: Source = if args.source == "-" {
        Box::new(tokio::io::stdin())
    } else {
        let f = tokio::fs::File::open(&args.source)
            .await
            .map_err(|e| Failure::Runtime(anyhow::anyhow!("cannot open {}: {e}", args.source)))?;
        Box::new(f)
    };
    let started = start_butler(g, logdog_butler::DEFAULT_MAX_STREAMS)?;
    let butler = &started.butler;
    butler
        .add_stream(StreamSource {
            reader,
            desc: spec.descriptor(),
            tee: None,
        })
        .await
        .map_err(|e| Failure::Usage(e.to_string()))?;
    butler.activate().await;
    let report = butler
        .wait()
        .await
        .map_err(|e| Failure::Runtime(e.into()))?;
    started
        .finish_output(g)
        .await
        .map_err(|e| Failure::Runtime(e.into()))?;
    if started.report_collector_losses() {
        return Err(Failure::Runtime(anyhow::anyhow!(
            "the collector refused some of the stream (see above)"
        )));
    }
    if report.failed_bundles > 0 {
        return Err(Failure::Runtime(anyhow::anyhow!(
            "{} bundles could not be delivered",
            report.failed_bundles
        )));
    }
    Ok(0)
}
