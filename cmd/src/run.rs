//! `logdog_butler run`: runs a command with its stdout and stderr captured as streams.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, anyhow};
use logdog_bootstrap::Environment;
use logdog_butler::{Report, StreamSource, Tee};
use logdog_outputs::fanout::OutputReport;
use logdog_streamserver::StreamServer;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::Child;
use tokio::signal::unix::{Signal as SignalStream, SignalKind, signal};

use crate::cli::{Global, RunArgs};
use crate::{Failure, start_butler_with};

/// SIGINT and SIGTERM, as one source of signals.
pub struct Signals {
    int: SignalStream,
    term: SignalStream,
}

impl Signals {
    /// Installs the handlers.
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt()).context("installing a SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("installing a SIGTERM handler")?,
        })
    }

    /// Waits for the next signal.
    pub async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.int.recv() => Signal::SIGINT,
            _ = self.term.recv() => Signal::SIGTERM,
        }
    }
}

/// Runs the `run` subcommand; returns the child's exit status.
///
/// `--result-path` is checked before anything starts (an unwritable path is a usage error)
/// and written on every way out, failures included.
pub async fn run(g: &Global, args: RunArgs) -> Result<u8, Failure> {
    let result = match &args.result_path {
        Some(path) => Some(ResultFile::create(path, &args.command)?),
        None => None,
    };
    let res = run_command(g, &args, result.as_ref()).await;
    if let (Some(r), Err(e)) = (&result, &res) {
        let (code, msg) = match e {
            Failure::Usage(m) => (crate::EXIT_USAGE, m.clone()),
            Failure::Runtime(e) => (crate::EXIT_RUNTIME, format!("{e:#}")),
        };
        r.write_unless_written(code, None, Some(&msg));
    }
    res
}

/// The `--result-path` file: created (so found writable) before the command starts, then
/// written once, on whatever path `run` ends.
pub struct ResultFile {
    path: std::path::PathBuf,
    /// What is known so far; every write starts from it.
    doc: std::sync::Mutex<serde_json::Map<String, serde_json::Value>>,
    written: std::sync::atomic::AtomicBool,
}

impl ResultFile {
    /// Creates (or empties) the file, so that a path that cannot be written is found now.
    ///
    /// # Errors
    /// A usage error naming the path.
    pub fn create(path: &std::path::Path, command: &[std::ffi::OsString]) -> Result<Self, Failure> {
        std::fs::File::create(path)
            .map_err(|e| Failure::Usage(format!("--result-path {}: {e}", path.display())))?;
        let mut doc = serde_json::Map::new();
        doc.insert(
            "command".into(),
            command.iter().map(|a| a.to_string_lossy()).collect(),
        );
        for key in ["exit_code", "signal", "error", "project", "prefix"] {
            doc.insert(key.into(), serde_json::Value::Null);
        }
        doc.insert("streams".into(), serde_json::json!({}));
        doc.insert("bundles".into(), 0.into());
        doc.insert("failed_bundles".into(), 0.into());
        doc.insert("refused_connections".into(), serde_json::json!({}));
        doc.insert("refused_streams".into(), serde_json::json!([]));
        Ok(Self {
            path: path.to_path_buf(),
            doc: std::sync::Mutex::new(doc),
            written: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Records fields known so far.
    fn set(&self, fields: serde_json::Value) {
        let mut doc = self.doc.lock().unwrap_or_else(|e| e.into_inner());
        if let serde_json::Value::Object(m) = fields {
            doc.extend(m);
        }
    }

    /// Writes the file with the exit status, the signal that killed the command (if any) and
    /// what went wrong (if anything), unless it has been written already.
    fn write_unless_written(&self, exit_code: u8, signal: Option<i32>, error: Option<&str>) {
        if self.written.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        self.set(serde_json::json!({
            "exit_code": exit_code,
            "signal": signal,
            "error": error,
            "peak_rss_kib": peak_rss_kib(),
        }));
        let doc = self.doc.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let written = serde_json::to_vec_pretty(&doc)
            .map_err(std::io::Error::other)
            .and_then(|text| std::fs::write(&self.path, text));
        if let Err(e) = written {
            say!("cannot write {}: {e}", self.path.display());
        }
    }
}

/// The fields of the result file that come from the butler's report.
fn report_fields(
    report: &Report,
    out_stats: &logdog_outputs::OutputStats,
    acked: Option<&crate::summary::AckedByName>,
    outputs: Option<&[OutputReport]>,
) -> serde_json::Value {
    let mut doc = serde_json::json!({
        "streams": report.streams,
        "bundles": report.bundles,
        "failed_bundles": report.failed_bundles,
        "totals": crate::summary::totals(report, out_stats.spool.is_some(), acked),
        "acknowledged": acked,
        "refused_connections": report.refused_connections,
        "refused_streams": report.refused_streams,
        "output": out_stats,
    });
    if let Some(outputs) = outputs {
        doc["outputs"] = serde_json::json!(outputs);
    }
    doc
}

async fn run_command(
    g: &Global,
    args: &RunArgs,
    result: Option<&ResultFile>,
) -> Result<u8, Failure> {
    for spec in [&args.stdout, &args.stderr] {
        if spec.name == crate::record::NAME {
            return Err(Failure::Usage(format!(
                "the stream name {:?} is taken by the run record",
                spec.name
            )));
        }
    }
    if args.stdout.name == args.stderr.name {
        return Err(Failure::Usage(format!(
            "--stdout and --stderr both name the stream {:?}",
            args.stdout.name
        )));
    }
    // A stream over the collector's descriptor limits (global tags merged) would be refused
    // at capture, leaving the command's output uncaptured: refuse the run instead.
    let global: std::collections::BTreeMap<String, String> = g.tags.iter().cloned().collect();
    for spec in [&args.stdout, &args.stderr] {
        spec.check_limits(&global).map_err(Failure::Usage)?;
    }
    let mut signals = Signals::new()?;
    let started = start_butler_with(
        g,
        args.max_streams
            .saturating_add(usize::from(!args.no_run_record)),
        &[crate::record::NAME],
    )?;
    let crate::Started {
        butler,
        output,
        cfg,
        grpc,
        fanout,
    } = &started;
    if let Some(r) = result {
        r.set(serde_json::json!({ "project": cfg.project, "prefix": cfg.prefix }));
    }
    // Children open their own streams here; the socket lives in a private directory.
    let server = StreamServer::bind_private()
        .context("cannot create the stream server socket")
        .map_err(Failure::Runtime)?;
    let env = Environment {
        stream_server_path: Some(server.address()),
        project: Some(cfg.project.clone()),
        prefix: Some(cfg.prefix.clone()),
        coordinator_host: output.coordinator_host(),
        ..Default::default()
    };
    butler
        .add_stream_server(server)
        .await
        .map_err(|e| Failure::Runtime(e.into()))?;

    let program = args.command[0].to_string_lossy().into_owned();
    let mut cmd = tokio::process::Command::new(&args.command[0]);
    // The collector's token is the butler's: the command does not get it. Nor does it get the
    // variables that gave the butler its flags: a butler under this one reads only its own.
    for name in crate::cli::env_names() {
        cmd.env_remove(name);
    }
    cmd.args(&args.command[1..])
        .env_remove(logdog_outputs::security::TOKEN_ENV)
        .envs(env.to_vars());
    let setup = crate::child::Setup {
        forward_stdin: args.forward_stdin,
        pty: args.pty.then(|| {
            args.pty_size
                .or_else(crate::child::own_terminal_size)
                .unwrap_or(crate::child::DEFAULT_PTY_SIZE)
        }),
    };
    let spawned = match &args.chdir {
        Some(d) if !d.is_dir() => Err(anyhow!("--chdir {}: not a directory", d.display())),
        Some(d) => {
            cmd.current_dir(d);
            crate::child::spawn(cmd, setup)
                .with_context(|| format!("cannot run {program:?} in {}", d.display()))
        }
        None => crate::child::spawn(cmd, setup).with_context(|| format!("cannot run {program:?}")),
    };
    let spawned = match spawned {
        Ok(c) => c,
        Err(e) => {
            butler.activate().await;
            let report = butler.wait().await;
            let _ = output.close().await;
            if let (Some(r), Ok(report)) = (result, &report) {
                r.set(report_fields(
                    report,
                    &output.stats(),
                    None,
                    fanout.as_ref().map(|f| f.reports()).as_deref(),
                ));
            }
            return Err(Failure::Runtime(e));
        }
    };
    let crate::child::Spawned {
        mut child,
        pgid,
        outputs,
    } = spawned;
    let mut record = if args.no_run_record {
        crate::record::RunRecord::disabled()
    } else {
        let (record, source) = crate::record::RunRecord::new();
        match butler.add_stream(source).await {
            Ok(()) => record,
            Err(e) => {
                tracing::error!(stream = crate::record::NAME, error = %e, "cannot write the run record");
                crate::record::RunRecord::disabled()
            }
        }
    };
    record.start(&args.command, child.id()).await;

    let echo = !args.no_echo;
    let mut watched = Vec::new();
    for out in outputs {
        let (spec, tee) = match out.which {
            crate::child::Which::Stdout => (
                &args.stdout,
                echo.then(|| Box::new(tokio::io::stdout()) as Tee),
            ),
            crate::child::Which::Stderr => (
                &args.stderr,
                echo.then(|| Box::new(tokio::io::stderr()) as Tee),
            ),
        };
        if let Err(e) = butler
            .add_stream(StreamSource {
                reader: out.reader,
                desc: spec.descriptor(),
                tee,
            })
            .await
        {
            // Cannot happen with validated specs; the child still runs to completion.
            tracing::error!(stream = %spec.name, error = %e, "cannot capture stream");
        }
        watched.push((spec.name.clone(), out.ended, out.peek));
    }

    let mut group = Group {
        pgid,
        grace: args.grace_period,
        deadline: None,
    };
    let (status, mut report, cut) = supervise(
        &mut child,
        &mut group,
        butler,
        &mut signals,
        &mut record,
        args.heartbeat,
        result,
    )
    .await?;
    if cut {
        count_unread(&mut report, &watched);
    }
    drop(watched);
    if let Err(e) = started.finish_output(g).await {
        tracing::error!(error = %e, "closing the output failed");
    }
    let code = exit_code(status);
    // After close: the spool's counters are final.
    let out_stats = output.stats();
    let reports = fanout.as_ref().map(|f| f.reports());
    let acked: Option<crate::summary::AckedByName> = grpc.as_ref().map(|o| {
        o.acknowledged()
            .into_iter()
            .filter(|((prefix, _), _)| *prefix == cfg.prefix)
            .map(|((_, name), a)| (name, a))
            .collect()
    });
    if args.no_summary {
        report_losses(&report);
        // What the collector refused, per stream (the summary shows it in its rows).
        for (name, a) in acked.iter().flatten() {
            if a.lost_bytes > 0 || a.lost.is_some() {
                say!(
                    "stream {name:?}: LOST: {} bytes refused by the collector ({})",
                    a.lost_bytes,
                    a.lost.as_deref().unwrap_or("no reason given")
                );
            }
            if a.end_unacknowledged() && out_stats.spool.is_none() {
                say!(
                    "stream {name:?}: LOST: its end was not acknowledged by the collector (the \
                     stream stays incomplete there)"
                );
            }
        }
    } else {
        let dest = format!(
            "{}/{}/+/ via {}",
            cfg.project,
            cfg.prefix,
            g.outputs_label()
        );
        eprintln!(
            "{}",
            crate::summary::render(&report, &out_stats, &dest, acked.as_ref())
        );
        if let Some(reports) = &reports {
            eprintln!("{}", crate::summary::outputs_table(reports));
        }
        report_refusals(&report);
    }
    if let Some(reg) = &cfg.policy.masks
        && reg.refused() > 0
    {
        say!(
            "warning: {} secret(s) were refused (shorter than {} bytes, too long, or too \
             many) and are NOT masked",
            reg.refused(),
            logdog_butler::policy::mask::MIN_SECRET_LEN
        );
    }
    if let Some(msg) = grpc.as_ref().and_then(|o| o.failure()) {
        say!(
            "the collector's store is damaged and can store nothing until it is \
             repaired (DATA_LOSS: {msg})"
        );
    }
    if let Some(msg) = grpc.as_ref().and_then(|o| o.tls_failure()) {
        say!("{msg}");
    }
    if let (Some(sp), Some(dir)) = (&out_stats.spool, &g.spool)
        && sp.pending_bytes > 0
    {
        say!(
            "{} are still in the spool, not yet acknowledged; upload them with: \
             logdog_butler resume --spool {} --output {}",
            crate::summary::human(sp.pending_bytes),
            dir.display(),
            g.collector_output()
                .map(ToString::to_string)
                .unwrap_or_default()
        );
    }
    let code = if args.fail_on_loss
        && code == 0
        && lost_anything(&report, &out_stats, acked.as_ref(), reports.as_deref())
    {
        say!(
            "the command succeeded but some of its output was lost (--fail-on-loss): exit {}",
            crate::EXIT_LOST
        );
        crate::EXIT_LOST
    } else {
        code
    };
    if let Some(r) = result {
        r.set(report_fields(
            &report,
            &out_stats,
            acked.as_ref(),
            reports.as_deref(),
        ));
        if let Some(reg) = &cfg.policy.masks {
            r.set(serde_json::json!({ "secrets_refused": reg.refused() }));
        }
        r.write_unless_written(code, status.signal(), None);
    }
    Ok(code)
}

/// The command's process group and the grace period it gets after a signal.
struct Group {
    pgid: Option<Pid>,
    grace: Duration,
    /// When the grace period ends, once a signal has come.
    deadline: Option<tokio::time::Instant>,
}

impl Group {
    /// Sends `sig` to the whole group (a group already gone is not an error).
    fn signal(&self, sig: Signal) {
        if let Some(pgid) = self.pgid {
            let _ = killpg(pgid, sig);
        }
    }
}

/// Waits for the command, then for its streams (and the record's end line), then for the
/// butler's report. Returns the command's status, the report, and whether reading was cut
/// short when the grace period ended. While the command runs, the record gets an `alive`
/// line every `heartbeat`.
///
/// The first SIGINT/SIGTERM goes to the command's whole process group and starts the grace
/// period; when it ends the group gets SIGKILL and the butler stops reading every stream
/// (processes that left the group may still hold them open). A second signal kills the group
/// and exits at once.
async fn supervise(
    child: &mut Child,
    group: &mut Group,
    butler: &logdog_butler::Butler,
    signals: &mut Signals,
    record: &mut crate::record::RunRecord,
    heartbeat: Duration,
    result: Option<&ResultFile>,
) -> Result<(ExitStatus, Report, bool), Failure> {
    let mut alive = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut status: Option<ExitStatus> = None;
    let mut ended_written = false;
    let mut cut = false;
    // The record's own stream stays open until its end line.
    let own = usize::from(record.enabled()) as u64;
    loop {
        let deadline = group.deadline;
        let grace_over = async move {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let live = butler.live();
        tokio::select! {
            s = child.wait(), if status.is_none() => {
                status = Some(child_status(s)?);
                butler.activate().await;
            }
            _ = alive.tick(), if status.is_none() && record.enabled() => {
                record.alive().await;
            }
            () = others_ended(live, own), if status.is_some() && !ended_written => {
                let streams = butler.streams().await.len();
                record.end(status, streams, live).await;
                ended_written = true;
            }
            r = butler.wait(), if ended_written => {
                let report = r.map_err(|e| Failure::Runtime(e.into()))?;
                let status = status.ok_or_else(|| anyhow!("the command's status is unknown"))?;
                return Ok((status, report, cut));
            }
            sig = signals.recv() => {
                if group.deadline.is_some() || cut {
                    second_signal(sig, group, status, result);
                }
                let what = if status.is_none() { "the command" } else { "the command's processes" };
                say!(
                    "{sig}: passed to {what} (its process group); they get {} before SIGKILL",
                    humantime::format_duration(group.grace)
                );
                group.signal(sig);
                group.deadline = Some(tokio::time::Instant::now() + group.grace);
            }
            () = grace_over => {
                group.deadline = None;
                group.signal(Signal::SIGKILL);
                if status.is_none() {
                    say!("grace period over: the command's process group was killed");
                    status = Some(child_status(child.wait().await)?);
                    butler.activate().await;
                }
                // The killed processes' pipes close as they die: a moment for that, so that
                // only streams held by processes outside the group are cut.
                let _ = tokio::time::timeout(KILL_SETTLE, others_ended(live, own)).await;
                if live.streams_open.load(std::sync::atomic::Ordering::SeqCst) > own {
                    say!(
                        "grace period over: streams still held open (by processes that left \
                         the command's process group) are no longer read"
                    );
                }
                if !ended_written {
                    let streams = butler.streams().await.len();
                    record.end(status, streams, live).await;
                    ended_written = true;
                }
                butler.shutdown().await;
                cut = true;
            }
        }
    }
}

/// After SIGKILL at the end of the grace period, how long the killed processes get to let go
/// of the streams before the butler stops reading them.
const KILL_SETTLE: Duration = Duration::from_millis(500);

/// Resolves once at most `own` streams are still being read (the run record's, if any).
async fn others_ended(live: &logdog_butler::LiveStats, own: u64) {
    loop {
        let notified = live.stream_ended.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if live.streams_open.load(std::sync::atomic::Ordering::SeqCst) <= own {
            return;
        }
        notified.await;
    }
}

/// A second SIGINT/SIGTERM: kills the command's process group and exits at once, without
/// waiting for the streams (the result file says so).
fn second_signal(
    sig: Signal,
    group: &Group,
    status: Option<ExitStatus>,
    result: Option<&ResultFile>,
) -> ! {
    say!("second {sig}: killing the command's process group and exiting now");
    group.signal(Signal::SIGKILL);
    let code = status.map_or(128 + sig as i32, |s| i32::from(exit_code(s)));
    if let Some(r) = result {
        let msg = format!(
            "second {sig}: the command's process group was killed and the butler exited \
             without waiting for its streams"
        );
        let signal = status.and_then(|s| s.signal());
        r.write_unless_written(code as u8, signal, Some(&msg));
    }
    std::process::exit(code);
}

/// Counts, as dropped, what was left unread in the command's pipes (or terminal) whose
/// reading was stopped before their end.
fn count_unread(
    report: &mut Report,
    watched: &[(String, Arc<AtomicBool>, Option<std::os::fd::OwnedFd>)],
) {
    for (name, ended, peek) in watched {
        if ended.load(std::sync::atomic::Ordering::SeqCst) {
            continue;
        }
        let Some(s) = report.streams.get_mut(name) else {
            continue;
        };
        let unread = peek.as_ref().and_then(crate::child::unread_bytes);
        s.bytes_dropped += unread.unwrap_or(0);
        let what = match unread {
            Some(n) => format!("{n} bytes left unread"),
            None => "an unknown number of bytes left unread".to_string(),
        };
        let msg = format!(
            "not read to its end: still held open by another process when the grace period \
             ended ({what}; anything written later is not counted)"
        );
        s.error = Some(match s.error.take() {
            Some(e) => format!("{e}; {msg}"),
            None => msg,
        });
    }
}

/// Whether anything the summary calls lost was lost: bytes dropped, undelivered, refused
/// by the collector or never spooled, streams refused, bundles another output failed. Lines
/// the user's policies left out on purpose do not count.
fn lost_anything(
    report: &Report,
    out_stats: &logdog_outputs::OutputStats,
    acked: Option<&crate::summary::AckedByName>,
    outputs: Option<&[OutputReport]>,
) -> bool {
    let t = crate::summary::totals(report, out_stats.spool.is_some(), acked);
    t.streams_with_losses > 0
        || t.streams_refused > 0
        || t.bytes_lost > 0
        || report.failed_bundles > 0
        || outputs
            .into_iter()
            .flatten()
            .any(|o| o.stats.failed_bundles > 0)
}

fn child_status(status: std::io::Result<ExitStatus>) -> Result<ExitStatus, Failure> {
    status.map_err(|e| Failure::Runtime(anyhow!("waiting for the command: {e}")))
}

/// The exit status `run` reports: the child's code, or 128+N for a child killed by signal N.
fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(c), _) => (c & 0xFF) as u8,
        (None, Some(sig)) => (128 + sig).min(255) as u8,
        (None, None) => crate::EXIT_RUNTIME,
    }
}

/// Names the connections the stream server refused (each was also logged when it happened).
fn report_refusals(report: &Report) {
    for (kind, n) in &report.refused_connections {
        say!("{n} connection(s) to the stream server refused: {kind}");
    }
}

/// Tells the user about anything that did not make it (never silently).
pub fn report_losses(report: &Report) {
    for s in report.streams.values() {
        if s.bytes_undelivered > 0 {
            say!(
                "stream {:?}: {} bytes were not acknowledged by the output",
                s.name,
                s.bytes_undelivered
            );
        }
        if s.bytes_dropped > 0 || s.error.is_some() {
            say!(
                "stream {:?}: {} bytes dropped{}",
                s.name,
                s.bytes_dropped,
                s.error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            );
        }
    }
    for r in &report.refused_streams {
        say!("stream {:?} REFUSED: {}", r.name, r.reason);
    }
    report_refusals(report);
    if report.failed_bundles > 0 {
        say!(
            "{} bundles ({} bytes) could not be delivered",
            report.failed_bundles,
            report.output.failed_bytes
        );
    }
}

/// The butler's own peak resident set size, from `/proc/self/status` (Linux only).
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
