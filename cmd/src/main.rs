//! `logdog_butler`: runs a command (or reads a file) and ships what it logs as LogDog streams.
//!
//! Exit status: the child's for `run` (128+N when it was killed by signal N; 251 with
//! `--fail-on-loss` when it exited 0 but output was lost); 2 for bad flags or specs; 250 when
//! the butler itself fails (for example, a command that does not exist).

/// A notice to the user on stderr: `logdog_butler: MESSAGE`, or with `--log-format json` a
/// JSON line like the log lines (see [`notice`]).
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::notice(&format!($($arg)*))
    };
}

mod child;
mod cli;
mod fdlimit;
mod logging;
mod metrics;
mod pipe;
mod record;
mod resume;
mod run;
mod serve;
mod spec;
mod stream;
mod summary;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use logdog_butler::policy::MaskRegistry;
use logdog_butler::{Butler, ButlerConfig, PolicyConfig};
use logdog_outputs::security::{CaCert, ClientSecurity, TOKEN_ENV, Token};
use logdog_outputs::spool::{Spool, SpoolError};
use logdog_outputs::{FanOut, GrpcOutput, Output, OutputSpec};

use cli::{Command, Global};

/// Exit status for a butler failure (LogDog's value).
pub const EXIT_RUNTIME: u8 = 250;
/// Exit status for bad flags.
pub const EXIT_USAGE: u8 = 2;
/// Exit status of `run --fail-on-loss` when the command exited 0 but some of its output was
/// lost.
pub const EXIT_LOST: u8 = 251;

/// A failure, by the exit status it calls for.
#[derive(Debug)]
pub enum Failure {
    /// Bad flags or specs: exit 2.
    Usage(String),
    /// The butler failed: exit 250.
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Runtime(e)
    }
}

fn main() -> ExitCode {
    let cli = match cli::parse(std::env::args_os()) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            if !e.use_stderr() {
                return ExitCode::from(0);
            }
            // The message names flags; say which came from the environment.
            let set: Vec<String> = cli::env_names()
                .into_iter()
                .filter(|n| std::env::var_os(n).is_some())
                .map(|n| n.to_string_lossy().into_owned())
                .collect();
            if !set.is_empty() {
                eprintln!(
                    "note: flags were also set in the environment: {}",
                    set.join(", ")
                );
            }
            return ExitCode::from(EXIT_USAGE);
        }
    };
    logging::init(&cli.global.log_level, "warn", cli.global.log_format);
    JSON_NOTICES.store(
        cli.global.log_format == logging::LogFormat::Json,
        Ordering::Relaxed,
    );
    fdlimit::raise_open_file_limit();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            say!("cannot start the runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let res = rt.block_on(async move {
        match cli.command {
            Command::Run(args) => run::run(&cli.global, args).await,
            Command::Stream(args) => stream::stream(&cli.global, args).await,
            Command::Serve(args) => serve::serve(&cli.global, args).await,
            Command::Pipe(args) => pipe::pipe(&cli.global, args).await,
            Command::Resume(args) => resume::resume(&cli.global, args).await,
        }
    });
    match res {
        Ok(code) => ExitCode::from(code),
        Err(Failure::Usage(msg)) => {
            say!("{msg}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(Failure::Runtime(e)) => {
            say!("{e:#}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// A started butler and its output.
pub struct Started {
    /// The butler.
    pub butler: Butler,
    /// Its output.
    pub output: Arc<dyn Output>,
    /// Its settings.
    pub cfg: ButlerConfig,
    /// The collector output, when there is one (for the spool's recovery and counters).
    pub grpc: Option<Arc<GrpcOutput>>,
    /// The fan-out, with several outputs (for their reports).
    pub fanout: Option<Arc<FanOut>>,
}

/// The output the butler sends to, and typed handles on what it is made of.
pub struct Outputs {
    /// What the butler sends to: the one output, or a [`FanOut`] over several.
    pub output: Arc<dyn Output>,
    /// The collector output, when there is one (for the spool's recovery and counters).
    pub grpc: Option<Arc<GrpcOutput>>,
    /// The fan-out, with several outputs (for their reports).
    pub fanout: Option<Arc<FanOut>>,
}

/// How to reach the collector from the global flags: `--ca-cert` (only with `grpcs://`) and
/// the token of `--token-file`, else of `LOGDOG_TOKEN`. Prints a warning when the token would
/// go to another machine in the clear.
///
/// # Errors
/// A usage error: `--ca-cert` with no output over TLS, a CA or token file that cannot be
/// read or holds nothing usable.
pub fn client_security(g: &Global) -> Result<ClientSecurity, Failure> {
    let Some(collector) = g.collector() else {
        return Ok(ClientSecurity::default());
    };
    g.check_outputs().map_err(Failure::Usage)?;
    let ca = match &g.ca_cert {
        // The CA is for another output over TLS (`gelf+tls://`).
        Some(_) if !collector.tls => None,
        Some(path) => Some(CaCert::load(path).map_err(Failure::Usage)?),
        None => None,
    };
    let token = Token::from_file_or_env(g.token_file.as_deref(), std::env::var_os(TOKEN_ENV))
        .map_err(Failure::Usage)?;
    let security = ClientSecurity { ca, token };
    for c in g.collectors() {
        if let Some(w) = security.cleartext_warning(&c) {
            say!("warning: {w}");
        }
    }
    Ok(security)
}

/// Builds the output from the global flags: every `--output` (the collector's first, then the
/// others in the order given, behind a [`FanOut`] when there are several), and `--spool` for
/// the collector output (uploading `upload_in_flight` spooled bundles at a time).
pub fn build_output(g: &Global, upload_in_flight: usize) -> Result<Outputs, Failure> {
    g.check_outputs().map_err(Failure::Usage)?;
    if g.spool.is_some() && g.collector().is_none() {
        return Err(Failure::Usage(format!(
            "--spool is for the collector output (grpc://HOST:PORT), not {}",
            g.outputs_label()
        )));
    }
    let mut specs: Vec<&OutputSpec> = g.collector_output().into_iter().collect();
    specs.extend(g.outputs.iter().filter(|o| o.collector().is_none()));
    let mut built: Vec<(String, Arc<dyn Output>)> = Vec::new();
    let mut grpc = None;
    for spec in specs {
        let open_failed = |e: &dyn std::fmt::Display| {
            Failure::Runtime(anyhow::anyhow!("cannot open output {spec}: {e}"))
        };
        let collectors = spec.collectors();
        let out: Arc<dyn Output> = if collectors.is_empty() {
            logdog_outputs::build_output(&g.resolve_output(spec)).map_err(|e| open_failed(&e))?
        } else {
            let security = client_security(g)?;
            let mut out = GrpcOutput::connect_all(&collectors, &security, g.grpc_compression)
                .map_err(|e| open_failed(&e))?;
            if let Some(dir) = &g.spool {
                let spool = Spool::open(dir).map_err(|e| match e {
                    SpoolError::Locked(_) => Failure::Runtime(anyhow::anyhow!("{e}")),
                    other => Failure::Runtime(anyhow::anyhow!("cannot open the spool: {other}")),
                })?;
                out = out.with_spool(spool, upload_in_flight);
            }
            let out = Arc::new(out);
            grpc = Some(out.clone());
            out
        };
        built.push((spec.to_string(), out));
    }
    if built.len() == 1
        && let Some((_, output)) = built.pop()
    {
        return Ok(Outputs {
            output,
            grpc,
            fanout: None,
        });
    }
    let fanout = Arc::new(FanOut::new(built).map_err(|e| Failure::Usage(e.to_string()))?);
    Ok(Outputs {
        output: fanout.clone(),
        grpc,
        fanout: Some(fanout),
    })
}

impl Started {
    /// Names on stderr every stream whose entries the collector refused (with the reason)
    /// and a collector store reported damaged; returns whether the collector lost anything.
    pub fn report_collector_losses(&self) -> bool {
        let Some(grpc) = &self.grpc else {
            return false;
        };
        for ((prefix, name), a) in grpc.acknowledged() {
            if a.lost_bytes > 0 || a.lost_entries > 0 || a.lost.is_some() {
                say!(
                    "stream {prefix}/+/{name}: LOST: {} bytes refused by the collector ({})",
                    a.lost_bytes,
                    a.lost.as_deref().unwrap_or("no reason given")
                );
            }
        }
        if let Some(msg) = grpc.failure() {
            say!(
                "the collector's store is damaged and can store nothing until it \
                 is repaired (DATA_LOSS: {msg})"
            );
        }
        if let Some(msg) = grpc.tls_failure() {
            say!("{msg}");
        }
        grpc.lost_anything() || grpc.tls_failure().is_some()
    }

    /// Once the butler is done: with a spool, waits up to `--flush-timeout` for the collector
    /// to acknowledge what is spooled (sends return before that), then closes the output.
    pub async fn finish_output(&self, g: &Global) -> Result<(), logdog_outputs::OutputError> {
        if let Some(grpc) = &self.grpc {
            grpc.drain(tokio::time::sleep(g.flush_timeout)).await;
        }
        self.output.close().await
    }
}

/// Builds the output and starts a butler from the global flags, allowing `max_streams` open
/// streams.
pub fn start_butler(g: &Global, max_streams: usize) -> Result<Started, Failure> {
    start_butler_with(g, max_streams, &[])
}

/// Like [`start_butler`], with streams the policies only mask (the butler's own records).
pub fn start_butler_with(
    g: &Global,
    max_streams: usize,
    masked_only: &[&str],
) -> Result<Started, Failure> {
    let mut policy = policy_config(g)?;
    policy
        .masked_only
        .extend(masked_only.iter().map(ToString::to_string));
    let prefix = g
        .prefix
        .clone()
        .unwrap_or_else(|| format!("butler/{}", uuid::Uuid::new_v4()));
    let cfg = ButlerConfig {
        project: g.project.clone(),
        prefix,
        global_tags: g.tags.iter().cloned().collect(),
        max_buffer_age: g.max_buffer_age,
        flush_timeout: g.flush_timeout,
        max_streams,
        policy,
        ..Default::default()
    };
    cfg.validate().map_err(|e| Failure::Usage(e.to_string()))?;
    let Outputs {
        output,
        grpc,
        fanout,
    } = build_output(g, logdog_outputs::grpc::DEFAULT_UPLOAD_IN_FLIGHT)?;
    if g.prefix.is_none() {
        say!(
            "streaming to {}/{}/+/ via {}",
            cfg.project,
            cfg.prefix,
            g.outputs_label()
        );
    }
    let butler =
        Butler::spawn(cfg.clone(), output.clone()).map_err(|e| Failure::Usage(e.to_string()))?;
    check_collector(g);
    Ok(Started {
        butler,
        output,
        cfg,
        grpc,
        fanout,
    })
}

/// How long the check at start waits for the collector to accept a connection.
const REACH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// With a collector output: checks, beside the command (which does not wait for it), that
/// the collector accepts connections, and if it does not says so once, with what happens to
/// the logs. Says nothing when it does. With several collectors, each is checked: one that
/// cannot be reached is named, with the others taking its bundles.
fn check_collector(g: &Global) {
    let collectors = g.collectors();
    if collectors.is_empty() {
        return;
    }
    let one = if collectors.len() == 1 { "it" } else { "one" };
    let then = match &g.spool {
        Some(dir) => format!(
            "the logs are kept in the spool {} and sent once {one} can be reached (what is \
             left at the end stays there for `resume`)",
            dir.display()
        ),
        None => format!(
            "the logs are held in memory and sent again until {one} can be reached; at the \
             end the butler waits at most --flush-timeout ({}) and reports what was not \
             delivered as LOST",
            humantime::format_duration(g.flush_timeout)
        ),
    };
    let addrs: Vec<String> = collectors.into_iter().map(|c| c.host_port).collect();
    tokio::spawn(async move {
        // Every address at once.
        let checks: Vec<_> = addrs
            .iter()
            .cloned()
            .map(|addr| {
                tokio::spawn(async move {
                    match tokio::time::timeout(REACH_TIMEOUT, tokio::net::TcpStream::connect(&addr))
                        .await
                    {
                        Ok(Ok(_)) => None,
                        Ok(Err(e)) => Some(e.to_string()),
                        Err(_) => Some(format!("no answer within {}s", REACH_TIMEOUT.as_secs())),
                    }
                })
            })
            .collect();
        let mut down = Vec::new();
        for (addr, check) in addrs.iter().zip(checks) {
            if let Ok(Some(why)) = check.await {
                down.push(format!("{addr} ({why})"));
            }
        }
        if down.is_empty() {
            return;
        }
        if addrs.len() == 1 {
            say!("cannot reach the collector at {}; {then}", down.concat());
        } else if down.len() < addrs.len() {
            for d in &down {
                say!(
                    "cannot reach the collector at {d}; its bundles go to the other \
                     collectors, and it is tried again from time to time"
                );
            }
        } else {
            say!("cannot reach any collector: {}; {then}", down.join(", "));
        }
    });
}

/// The stream policies of the global flags: filters, rate limit, secrets to mask, head+tail
/// cap (its tail under `--spool DIR/tails` when there is a spool).
///
/// # Errors
/// A usage error: a `--mask-env` variable unset or empty, a `--mask-file` that cannot be
/// read; a runtime error if the tails directory cannot be made.
pub fn policy_config(g: &Global) -> Result<PolicyConfig, Failure> {
    use std::os::unix::ffi::OsStrExt;
    let mut filters = g.include.clone();
    filters.extend(g.exclude.iter().cloned());
    let masks = if g.mask_env.is_empty() && g.mask_file.is_empty() && !g.mask_commands {
        None
    } else {
        let reg = Arc::new(MaskRegistry::default());
        let add = |what: &str, secret: &[u8]| {
            if let Err(e) = reg.add(secret) {
                say!("warning: {what}: {e}; it is NOT masked");
            }
        };
        for name in &g.mask_env {
            match std::env::var_os(name) {
                None => {
                    return Err(Failure::Usage(format!(
                        "--mask-env {name}: the variable is not set"
                    )));
                }
                Some(v) if v.is_empty() => {
                    return Err(Failure::Usage(format!(
                        "--mask-env {name}: the variable is empty"
                    )));
                }
                Some(v) => add(&format!("--mask-env {name}"), v.as_bytes()),
            }
        }
        for path in &g.mask_file {
            let text = std::fs::read(path)
                .map_err(|e| Failure::Usage(format!("--mask-file {}: {e}", path.display())))?;
            for (i, line) in text.split(|&b| b == b'\n').enumerate() {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if !line.is_empty() {
                    add(
                        &format!("--mask-file {} line {}", path.display(), i + 1),
                        line,
                    );
                }
            }
        }
        Some(reg)
    };
    let spool_dir = match (&g.spool, g.max_stream_bytes) {
        (Some(dir), Some(_)) => {
            let tails = dir.join("tails");
            std::fs::create_dir_all(&tails).map_err(|e| {
                Failure::Runtime(anyhow::anyhow!("cannot make {}: {e}", tails.display()))
            })?;
            Some(tails)
        }
        _ => None,
    };
    Ok(PolicyConfig {
        filters,
        rate_limit: g.rate_limit,
        masks,
        max_stream_bytes: g.max_stream_bytes,
        spool_dir,
        ..Default::default()
    })
}

/// Whether notices are JSON lines (`--log-format json`).
static JSON_NOTICES: AtomicBool = AtomicBool::new(false);

/// Writes a notice for the user on stderr: `logdog_butler: MESSAGE`, or with
/// `--log-format json` one JSON object (`timestamp`, `level` "NOTICE", `message`), so that
/// stderr holds only JSON lines (but for the end-of-run summary table; see `--no-summary`).
pub(crate) fn notice(message: &str) {
    if JSON_NOTICES.load(Ordering::Relaxed) {
        let line = serde_json::json!({
            "timestamp": humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
            "level": "NOTICE",
            "message": message,
        });
        eprintln!("{line}");
    } else {
        eprintln!("logdog_butler: {message}");
    }
}
