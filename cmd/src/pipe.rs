//! `logdog_butler pipe NAME`: copies stdin into a new stream of the enclosing butler.

use std::io::{BufRead, Read, Write};

use anyhow::{Context, anyhow};
use logdog_client::{Client, StreamOptions};
use logdog_proto::StreamType;

use crate::Failure;
use crate::cli::{Global, PipeArgs};

/// Runs the `pipe` subcommand (the copy itself runs on a blocking thread).
pub async fn pipe(g: &Global, args: PipeArgs) -> Result<u8, Failure> {
    let tags = g.tags.clone();
    tokio::task::spawn_blocking(move || copy(args, tags))
        .await
        .map_err(|e| Failure::Runtime(anyhow!("pipe task failed: {e}")))?
        .map_err(Failure::Runtime)?;
    Ok(0)
}

fn copy(args: PipeArgs, tags: Vec<(String, String)>) -> anyhow::Result<()> {
    let client = Client::from_env().context("pipe runs under `logdog_butler run` or `serve`")?;
    let mut opts = StreamOptions::new().tags(tags);
    if let Some(ct) = args.content_type {
        opts = opts.content_type(ct);
    }
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    match args.stream_type {
        StreamType::Text | StreamType::Binary => {
            let mut stream = if args.stream_type == StreamType::Text {
                client.open_text(&args.name, &opts)?
            } else {
                client.open_binary(&args.name, &opts)?
            };
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match input.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e).context("reading stdin"),
                };
                stream
                    .write_all(&buf[..n])
                    .with_context(|| format!("writing stream {:?}", stream.name()))?;
            }
            stream.close().context("closing the stream")?;
        }
        StreamType::Datagram => {
            // One datagram per input line (without its newline).
            let mut stream = client.open_datagram(&args.name, &opts)?;
            let mut line = Vec::new();
            loop {
                line.clear();
                if input
                    .read_until(b'\n', &mut line)
                    .context("reading stdin")?
                    == 0
                {
                    break;
                }
                if line.last() == Some(&b'\n') {
                    line.pop();
                }
                stream.write_datagram(&line).context("writing a datagram")?;
            }
            stream.close().context("closing the stream")?;
        }
    }
    Ok(())
}
