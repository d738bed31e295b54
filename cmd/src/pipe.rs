//! `logdog_butler pipe NAME`: copies stdin into a new stream of the enclosing butler.
//!
//! The stream asks the butler for a verdict (see [`logdog_proto::handshake::VERDICT_FLAG`]):
//! once stdin is copied, `pipe` waits for it, and a refused stream (a name already taken, a
//! closed namespace…) is an error, exit 1, with the butler's reason. A butler that does not
//! give verdicts closes the connection without one once it has read the stream: `pipe` then
//! exits 0, as it would have before verdicts existed.

use std::io::{BufRead, Read, Write};

use anyhow::{Context, anyhow};
use logdog_client::{Client, StreamOptions, Verdict};
use logdog_proto::StreamType;

use crate::Failure;
use crate::cli::{Global, PipeArgs};

/// Exit status of `pipe` when the butler refused the stream.
pub const EXIT_REFUSED: u8 = 1;

/// Runs the `pipe` subcommand (the copy itself runs on a blocking thread).
pub async fn pipe(g: &Global, args: PipeArgs) -> Result<u8, Failure> {
    let tags = g.tags.clone();
    let name = args.name.clone();
    let verdict = tokio::task::spawn_blocking(move || copy(args, tags))
        .await
        .map_err(|e| Failure::Runtime(anyhow!("pipe task failed: {e}")))?
        .map_err(Failure::Runtime)?;
    match verdict {
        Some(Verdict::Refused(reason)) => {
            say!("the butler refused stream {name:?}: {reason}");
            Ok(EXIT_REFUSED)
        }
        Some(Verdict::Accepted) | None => Ok(0),
    }
}

/// What happened to the copy: done (with the butler's verdict), or a write failed (the
/// verdict, asked for then, says whether the butler refused the stream).
enum Copied {
    Done,
    WriteFailed(std::io::Error),
}

fn copy(args: PipeArgs, tags: Vec<(String, String)>) -> anyhow::Result<Option<Verdict>> {
    let client = Client::from_env().context("pipe runs under `logdog_butler run` or `serve`")?;
    let mut opts = StreamOptions::new().tags(tags).verdict();
    if let Some(ct) = args.content_type {
        opts = opts.content_type(ct);
    }
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let (copied, verdict, name) = match args.stream_type {
        StreamType::Text | StreamType::Binary => {
            let mut stream = if args.stream_type == StreamType::Text {
                client.open_text(&args.name, &opts)?
            } else {
                client.open_binary(&args.name, &opts)?
            };
            let name = stream.name().to_string();
            let copied = copy_bytes(&mut input, &mut stream)?;
            (copied, stream.finish(), name)
        }
        StreamType::Datagram => {
            let mut stream = client.open_datagram(&args.name, &opts)?;
            let name = stream.name().to_string();
            let copied = copy_datagrams(&mut input, &mut stream)?;
            (copied, stream.finish(), name)
        }
    };
    match (copied, verdict) {
        // A refusal explains a failed write; it is reported by the caller.
        (_, Ok(Some(Verdict::Refused(reason)))) => Ok(Some(Verdict::Refused(reason))),
        (Copied::WriteFailed(e), _) => Err(e).with_context(|| format!("writing stream {name:?}")),
        (Copied::Done, v) => v.with_context(|| format!("ending stream {name:?}")),
    }
}

/// Copies stdin into a text or binary stream.
fn copy_bytes(input: &mut impl Read, stream: &mut impl Write) -> anyhow::Result<Copied> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok(Copied::Done),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("reading stdin"),
        };
        if let Err(e) = stream.write_all(&buf[..n]) {
            return Ok(Copied::WriteFailed(e));
        }
    }
}

/// Copies stdin into a datagram stream, one datagram per input line (without its newline).
fn copy_datagrams(
    input: &mut impl BufRead,
    stream: &mut logdog_client::DatagramStream,
) -> anyhow::Result<Copied> {
    let mut line = Vec::new();
    loop {
        line.clear();
        if input
            .read_until(b'\n', &mut line)
            .context("reading stdin")?
            == 0
        {
            return Ok(Copied::Done);
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        if let Err(e) = stream.write_datagram(&line) {
            if e.kind() == std::io::ErrorKind::InvalidInput {
                // Too large: nothing was sent and the stream is still fine, but the line is
                // not delivered, so this is an error.
                return Err(e).context("writing a datagram");
            }
            return Ok(Copied::WriteFailed(e));
        }
    }
}
