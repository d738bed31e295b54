//! Command-line arguments.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::ArgAction;
use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{Arg, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use logdog_butler::policy::{FilterRule, RateLimit, RuleKind};
use logdog_outputs::OutputSpec;
use logdog_proto::StreamType;

use crate::spec::{StreamSpec, parse_tag};

/// Runs a command (or reads a file) and ships everything it logs as LogDog streams.
///
/// Every flag may also come from an environment variable, shown in `--help`: LOGDOG_ and the
/// flag's name for the flags before the subcommand (LOGDOG_OUTPUT, LOGDOG_MAX_BUFFER_AGE),
/// LOGDOG_, the subcommand and the flag's name for a subcommand's own (LOGDOG_RUN_NO_ECHO).
/// The command line wins. A variable of a repeatable flag holds one value per line. `run`
/// removes these variables from the environment of its command, so that a butler started
/// under it reads only its own command line.
#[derive(Debug, Parser)]
#[command(name = "logdog_butler", version, rename_all = "kebab-case")]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags accepted before or after the subcommand.
#[derive(Debug, Args)]
pub struct Global {
    /// Project of the streams.
    #[arg(long, global = true, default_value = "default")]
    pub project: String,
    /// Prefix of the streams [default: butler/<fresh UUID>, printed at start].
    #[arg(long, global = true)]
    pub prefix: Option<String>,
    /// Where bundles go: `log` (stderr), `null`, `directory:PATH`, `grpc://HOST:PORT` (a
    /// collector), `grpcs://HOST:PORT` (a collector over TLS), or a GELF receiver (Graylog):
    /// `gelf+udp://HOST:PORT[?compress=gzip|zlib|none&chunk-size=N]`, `gelf+tcp://HOST:PORT`
    /// or `gelf+tls://HOST:PORT`. Several collectors: `grpc://HOST:PORT,HOST:PORT` (bundles
    /// are spread over them; one that fails is left out for a while and its bundles go to
    /// the others). Repeat the flag to send every bundle to several outputs (at most one
    /// collector output).
    #[arg(
        long = "output",
        value_name = "OUTPUT",
        global = true,
        default_value = "directory:./logdog-out",
        value_delimiter = '\n'
    )]
    pub outputs: Vec<OutputSpec>,
    /// A tag added to every stream, as KEY=VALUE (repeatable; a stream's own tags win).
    #[arg(long = "tag", global = true, value_name = "KEY=VALUE", value_parser = parse_tag, value_delimiter = '\n')]
    pub tags: Vec<(String, String)>,
    /// Longest time a byte waits in a buffer before it is sent, e.g. 5s or 200ms.
    #[arg(long, global = true, default_value = "5s", value_parser = humantime::parse_duration)]
    pub max_buffer_age: Duration,
    /// Once every stream has ended, how long to wait for the output to acknowledge what is
    /// still in flight (a collector that is down); the rest is reported as undelivered.
    #[arg(long, global = true, default_value = "60s", value_parser = humantime::parse_duration)]
    pub flush_timeout: Duration,
    /// With the collector output: append every bundle to this on-disk spool before sending
    /// it, and discard it only once acknowledged (survives a crash of the butler; see
    /// `resume`). Bundles an earlier butler left there are uploaded too.
    #[arg(long, global = true, value_name = "DIR")]
    pub spool: Option<PathBuf>,
    /// With `grpcs://` or `gelf+tls://`: trust this CA certificate (PEM) for the receiver
    /// (every collector of a list) instead of the system's roots.
    #[arg(long, global = true, value_name = "PEM")]
    pub ca_cert: Option<PathBuf>,
    /// With a collector: compress the bundles sent to it with zstd or gzip, or not at all
    /// (off). `auto` is zstd to a collector on another machine and off to one on this machine
    /// (localhost, 127.0.0.0/8, ::1). A collector that does not accept compressed bundles is
    /// sent them uncompressed.
    #[arg(
        long,
        global = true,
        value_name = "auto|off|gzip|zstd",
        default_value = "auto"
    )]
    pub grpc_compression: logdog_outputs::grpc::GrpcCompression,
    /// With a GELF output: the `host` field of every message [default: this machine's host
    /// name].
    #[arg(long, global = true, value_name = "NAME")]
    pub gelf_host: Option<String>,
    /// With a collector: send the token in this file (whitespace around it is trimmed) with
    /// every call. Wins over the LOGDOG_TOKEN environment variable, which is used otherwise.
    /// The command `run` starts never sees LOGDOG_TOKEN.
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The butler's own log level (off, error, warn, info, debug, trace, or directives such as
    /// `info,logdog_outputs=debug`); RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "warn", value_parser = crate::logging::parse_level)]
    pub log_level: String,
    /// How the butler writes its own log lines on stderr: text, or json (one object per
    /// line). The end-of-run summary stays a table (`--no-summary`; `--result-path` for JSON).
    #[arg(long, global = true, value_enum, default_value_t = crate::logging::LogFormat::Text)]
    pub log_format: crate::logging::LogFormat,
    /// Keeps only the lines of text streams that match REGEX (repeatable: a line matching any
    /// is kept). `NAME=REGEX` applies to the stream NAME only when NAME is a valid stream
    /// name; a leading `=` (`=a=b`) makes the rest a regex for every stream.
    #[arg(long = "include", global = true, value_name = "[NAME=]REGEX", value_parser = parse_include, value_delimiter = '\n')]
    pub include: Vec<FilterRule>,
    /// Drops the lines of text streams that match REGEX (repeatable), in the same form as
    /// --include; e.g. `--exclude 'stderr=^DEBUG'`.
    #[arg(long = "exclude", global = true, value_name = "[NAME=]REGEX", value_parser = parse_exclude, value_delimiter = '\n')]
    pub exclude: Vec<FilterRule>,
    /// Limits every text stream to RATE bytes per second (e.g. 64KiB, 1MiB/s), with bursts of
    /// SIZE (default: one second's worth). Lines over the limit are dropped and counted; a
    /// marker line says how many when lines pass again.
    #[arg(long, global = true, value_name = "RATE[,burst=SIZE]", value_parser = parse_rate_limit)]
    pub rate_limit: Option<RateLimit>,
    /// Masks the value of this environment variable (repeatable) with `***` in every text
    /// stream. The variable must be set and not empty.
    #[arg(
        long = "mask-env",
        global = true,
        value_name = "NAME",
        value_delimiter = '\n'
    )]
    pub mask_env: Vec<String>,
    /// Masks every line of this file (one secret per line; repeatable) with `***`.
    #[arg(
        long = "mask-file",
        global = true,
        value_name = "FILE",
        value_delimiter = '\n'
    )]
    pub mask_file: Vec<PathBuf>,
    /// Honours `::add-mask::VALUE` lines in text streams even without --mask-env or
    /// --mask-file (always honoured with them). Such lines are never logged.
    #[arg(long, global = true)]
    pub mask_commands: bool,
    /// Keeps the first and the last SIZE/2 bytes of a text stream that grows past SIZE
    /// (e.g. 100MiB), with a marker line in the gap.
    #[arg(long, global = true, value_name = "SIZE", value_parser = parse_size)]
    pub max_stream_bytes: Option<u64>,
}

/// The flags before the subcommand that `pipe` uses: the others are not in its help, and
/// given on its command line they are an error.
const PIPE_FLAGS: &[&str] = &["tags", "log_level", "log_format"];

/// The flags before the subcommand that `resume` uses (see [`PIPE_FLAGS`]).
const RESUME_FLAGS: &[&str] = &[
    "outputs",
    "spool",
    "flush_timeout",
    "ca_cert",
    "grpc_compression",
    "token_file",
    "log_level",
    "log_format",
];

/// Whether the global flag `id` applies to the subcommand `sub`.
fn applies(sub: &str, id: &str) -> bool {
    match sub {
        "pipe" => PIPE_FLAGS.contains(&id),
        "resume" => RESUME_FLAGS.contains(&id),
        _ => true,
    }
}

/// `arg` with the environment variable `PREFIX` + its long name (`LOGDOG_` and `max-buffer-age`
/// give `LOGDOG_MAX_BUFFER_AGE`), unless it is positional, help or version.
fn with_env(arg: Arg, prefix: &str) -> Arg {
    if arg.is_positional()
        || arg.get_env().is_some()
        || matches!(
            arg.get_action(),
            ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
        )
    {
        return arg;
    }
    let Some(long) = arg.get_long() else {
        return arg;
    };
    let name = format!("{prefix}{}", long.to_ascii_uppercase().replace('-', "_"));
    arg.env(name)
}

/// The butler's command line: [`Cli`] with an environment variable for every flag, and each
/// subcommand's help listing only the global flags that apply to it.
pub fn command() -> clap::Command {
    let mut cmd = Cli::command().mut_args(|a| with_env(a, "LOGDOG_"));
    let globals: Vec<Arg> = cmd
        .get_arguments()
        .filter(|a| a.is_global_set())
        .cloned()
        .collect();
    let subs: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    for sub in subs {
        let prefix = format!("LOGDOG_{}_", sub.to_ascii_uppercase());
        // A global flag that does not apply is given a hidden copy in the subcommand, which
        // keeps clap from listing the global one there.
        let hidden: Vec<Arg> = globals
            .iter()
            .filter(|a| !applies(&sub, a.get_id().as_str()))
            .map(|a| a.clone().hide(true))
            .collect();
        cmd = cmd.mut_subcommand(&sub, |s| s.mut_args(|a| with_env(a, &prefix)).args(hidden));
    }
    cmd
}

/// The environment variables that give the butler's flags (see [`command`]).
pub fn env_names() -> Vec<std::ffi::OsString> {
    fn collect(cmd: &clap::Command, out: &mut Vec<std::ffi::OsString>) {
        for a in cmd.get_arguments() {
            if let Some(name) = a.get_env()
                && !out.iter().any(|n| n == name)
            {
                out.push(name.to_owned());
            }
        }
        for s in cmd.get_subcommands() {
            collect(s, out);
        }
    }
    let mut out = Vec::new();
    collect(&command(), &mut out);
    out
}

/// Parses `args` (the program's name first), flags from the environment included. A global
/// flag given on the command line to a subcommand it does not apply to is an error.
///
/// # Errors
/// clap's error (help and version too), to print.
pub fn parse<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let mut cmd = command();
    let matches = cmd.try_get_matches_from_mut(args)?;
    let cli = Cli::from_arg_matches(&matches)?;
    if let Some((name, sub)) = matches.subcommand() {
        let given: Vec<String> = cmd
            .get_arguments()
            .filter(|a| a.is_global_set() && !applies(name, a.get_id().as_str()))
            .filter(|a| sub.value_source(a.get_id().as_str()) == Some(ValueSource::CommandLine))
            .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
            .collect();
        if !given.is_empty() {
            let msg = format!("{} does not apply to `{name}`", given.join(", "));
            return Err(match cmd.find_subcommand_mut(name) {
                Some(sub_cmd) => sub_cmd.error(ErrorKind::ArgumentConflict, msg),
                None => cmd.error(ErrorKind::ArgumentConflict, msg),
            });
        }
    }
    Ok(cli)
}

fn parse_include(s: &str) -> Result<FilterRule, String> {
    FilterRule::parse(RuleKind::Include, s).map_err(|e| e.to_string())
}

fn parse_exclude(s: &str) -> Result<FilterRule, String> {
    FilterRule::parse(RuleKind::Exclude, s).map_err(|e| e.to_string())
}

fn parse_rate_limit(s: &str) -> Result<RateLimit, String> {
    RateLimit::parse(s).map_err(|e| e.to_string())
}

fn parse_size(s: &str) -> Result<u64, String> {
    match logdog_butler::policy::ratelimit::parse_size(s) {
        Ok(0) => Err("must be at least 1 byte".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

impl Global {
    /// `spec` with what other flags say about it filled in: for a GELF output, the host name
    /// (`--gelf-host`, else this machine's) and the CA certificate (`--ca-cert`).
    pub fn resolve_output(&self, spec: &OutputSpec) -> OutputSpec {
        match spec {
            OutputSpec::Gelf(c) => {
                let mut c = c.clone();
                c.host = Some(
                    self.gelf_host
                        .clone()
                        .unwrap_or_else(logdog_outputs::gelf::local_host_name),
                );
                c.ca_cert.clone_from(&self.ca_cert);
                OutputSpec::Gelf(c)
            }
            other => other.clone(),
        }
    }
}

impl Global {
    /// The collector output (`grpc://` or `grpcs://`), if one was given.
    pub fn collector_output(&self) -> Option<&OutputSpec> {
        self.outputs.iter().find(|o| o.collector().is_some())
    }

    /// The collector to send to (the first of a list), if any.
    pub fn collector(&self) -> Option<logdog_outputs::security::Collector> {
        self.collector_output().and_then(OutputSpec::collector)
    }

    /// Every collector to send to (`grpc://A,B`), in the order given.
    pub fn collectors(&self) -> Vec<logdog_outputs::security::Collector> {
        self.collector_output()
            .map(OutputSpec::collectors)
            .unwrap_or_default()
    }

    /// The outputs as given, for messages: `grpc://h:7431 and directory:out`.
    pub fn outputs_label(&self) -> String {
        let names: Vec<String> = self.outputs.iter().map(ToString::to_string).collect();
        match names.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
            _ => names.concat(),
        }
    }

    /// Checks the outputs together: none given twice, at most one collector.
    ///
    /// # Errors
    /// What is wrong, for a usage error.
    pub fn check_outputs(&self) -> Result<(), String> {
        for (i, o) in self.outputs.iter().enumerate() {
            if self.outputs[..i].contains(o) {
                return Err(format!("--output {o} is given twice"));
            }
        }
        let collectors: Vec<String> = self
            .outputs
            .iter()
            .filter(|o| o.collector().is_some())
            .map(ToString::to_string)
            .collect();
        if collectors.len() > 1 {
            return Err(format!(
                "one collector output at a time, not {}",
                collectors.join(" and ")
            ));
        }
        if self.ca_cert.is_some() && !self.has_tls_output() {
            return Err(format!(
                "--ca-cert is for an output over TLS (grpcs://HOST:PORT or gelf+tls://HOST:PORT), \
                 not {}",
                self.outputs_label()
            ));
        }
        Ok(())
    }

    /// Whether an output goes over TLS (and so takes `--ca-cert`).
    pub fn has_tls_output(&self) -> bool {
        self.outputs.iter().any(|o| match o {
            OutputSpec::Grpcs(_) => true,
            OutputSpec::Gelf(c) => c.transport == logdog_outputs::gelf::GelfTransport::Tls,
            _ => false,
        })
    }
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs a command, capturing its stdout and stderr as streams.
    Run(RunArgs),
    /// Uploads one file, or stdin, as a single stream.
    Stream(StreamArgs),
    /// Runs a stream server with no command, until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Copies stdin into a new stream of the enclosing butler (for shell scripts run by
    /// `run`). Global `--tag`s become the stream's tags.
    Pipe(PipeArgs),
    /// Uploads what an earlier butler left in a spool (`--spool DIR --output grpc://…`),
    /// waiting at most --flush-timeout. Exits 0 when everything was delivered, 1 when
    /// something was damaged, refused or is still in the spool.
    Resume(ResumeArgs),
}

/// `resume` arguments (the spool and the collector are the global `--spool` and `--output`).
#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// Writes the recovery report as JSON to this file.
    #[arg(long)]
    pub result_path: Option<PathBuf>,
}

/// `pipe` arguments.
#[derive(Debug, Args)]
pub struct PipeArgs {
    /// Stream type: text, binary, or datagram (one datagram per input line).
    #[arg(long = "type", default_value = "text", value_parser = parse_stream_type)]
    pub stream_type: StreamType,
    /// Content type [default: by type].
    #[arg(long)]
    pub content_type: Option<String>,
    /// Stream name (LOGDOG_NAMESPACE, if set, is put in front).
    pub name: String,
}

/// A `--max-streams` value: a whole number, at least 1.
fn parse_max_streams(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{s:?} is not a number of streams (1 or more)")),
    }
}

/// A heartbeat period: at least 100 ms.
fn parse_heartbeat(v: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(v).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(100) {
        return Err(format!("{v} is too short (at least 100ms)"));
    }
    Ok(d)
}

/// A `--pty-size` value: `COLSxROWS`, each from 1 to 65535.
fn parse_pty_size(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("{s:?} is not a terminal size (COLSxROWS, e.g. 200x50)");
    let (cols, rows) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    match (cols.parse::<u16>(), rows.parse::<u16>()) {
        (Ok(c), Ok(r)) if c > 0 && r > 0 => Ok((c, r)),
        _ => Err(bad()),
    }
}

fn parse_stream_type(s: &str) -> Result<StreamType, String> {
    match s {
        "text" => Ok(StreamType::Text),
        "binary" => Ok(StreamType::Binary),
        "datagram" => Ok(StreamType::Datagram),
        _ => Err(format!(
            "unknown type {s:?} (expected text, binary or datagram)"
        )),
    }
}

/// `serve` arguments.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where to listen, as unix:PATH [default: a socket in a fresh private directory].
    #[arg(long, value_name = "unix:PATH")]
    pub streamserver_uri: Option<String>,
    /// Time a client has to complete its handshake.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,
    /// Most streams open at once; a stream opened beyond it is refused (with the reason, for
    /// a client that asks) and listed at the end.
    #[arg(long, default_value_t = logdog_butler::DEFAULT_MAX_STREAMS, value_parser = parse_max_streams)]
    pub max_streams: usize,
    /// Serve `GET /metrics` (Prometheus text format) on this address (port 0 picks a free
    /// port; the address is printed on stdout as LOGDOG_METRICS=ADDR). Figures only, no log
    /// content: open to anyone who reaches it.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
}

/// `run` arguments.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The stdout stream: name=N[,type=text|binary|datagram][,content-type=CT][,tag=k=v...]
    #[arg(long, value_name = "SPEC", default_value = "name=stdout")]
    pub stdout: StreamSpec,
    /// The stderr stream, in the same form as --stdout.
    #[arg(long, value_name = "SPEC", default_value = "name=stderr")]
    pub stderr: StreamSpec,
    /// Working directory of the command.
    #[arg(long)]
    pub chdir: Option<PathBuf>,
    /// Writes a JSON summary (command, exit status, per-stream byte counts) to this file.
    #[arg(long)]
    pub result_path: Option<PathBuf>,
    /// Passes the butler's stdin to the command (otherwise it reads /dev/null).
    #[arg(long)]
    pub forward_stdin: bool,
    /// Does not echo the command's stdout and stderr to the butler's own.
    #[arg(long)]
    pub no_echo: bool,
    /// Does not print the per-stream summary at the end (losses are still reported).
    #[arg(long)]
    pub no_summary: bool,
    /// The command runs in its own process group. The first SIGINT/SIGTERM goes to the whole
    /// group; after this long, the group gets SIGKILL and streams still held open by other
    /// processes stop being read (what could not be read is reported lost). A second signal
    /// kills the group and exits at once.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub grace_period: Duration,
    /// Runs the command on a pseudo-terminal: it sees a terminal (colours, progress bars) and
    /// its stdout and stderr become one text stream, the --stdout one. Its stdin is the
    /// terminal too with --forward-stdin, else /dev/null.
    #[arg(long)]
    pub pty: bool,
    /// With --pty: the terminal's size [default: the butler's own terminal's, else 200x50].
    #[arg(long, value_name = "COLSxROWS", value_parser = parse_pty_size, requires = "pty")]
    pub pty_size: Option<(u16, u16)>,
    /// Does not write the run record, the `logdog/run` stream saying what was run and how
    /// it ended.
    #[arg(long)]
    pub no_run_record: bool,
    /// How often the run record says the run is still going (an `alive` line), so that a
    /// command that prints nothing for a long time is not taken for one whose butler died
    /// (the collector's --abandon-after).
    #[arg(long, value_name = "DURATION", default_value = "1m", value_parser = parse_heartbeat)]
    pub heartbeat: Duration,
    /// Exits 251 instead of 0 when the command succeeded but some of its output was lost
    /// (dropped, undelivered, refused, or not read before the grace period ended). Lines left
    /// out on purpose by --include/--exclude, --rate-limit or --max-stream-bytes do not count.
    #[arg(long)]
    pub fail_on_loss: bool,
    /// Most streams open at once; a stream opened beyond it is refused (with the reason, for
    /// a client that asks) and listed at the end.
    #[arg(long, default_value_t = logdog_butler::DEFAULT_MAX_STREAMS, value_parser = parse_max_streams)]
    pub max_streams: usize,
    /// The command and its arguments, after `--` (or from the first word that is not one of
    /// the butler's flags: what follows is the command's, `--flags` included).
    #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// `stream` arguments.
#[derive(Debug, Args)]
pub struct StreamArgs {
    /// File to upload, or `-` for stdin.
    #[arg(long, default_value = "-")]
    pub source: String,
    /// The stream [default: name=stdin for stdin, name=file:<path> for a file].
    #[arg(long, value_name = "SPEC")]
    pub stream: Option<StreamSpec>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_flag_variable_is_one_a_butler_exports_or_another_binary_reads() {
        let taken = [
            logdog_bootstrap::STREAM_SERVER_PATH,
            logdog_bootstrap::STREAM_PROJECT,
            logdog_bootstrap::STREAM_PREFIX,
            logdog_bootstrap::COORDINATOR_HOST,
            logdog_bootstrap::NAMESPACE,
            logdog_outputs::security::TOKEN_ENV,
            "LOGDOG_COLLECTOR",
        ];
        let names = env_names();
        assert!(names.len() > 30, "{names:?}");
        for n in &names {
            let n = n.to_string_lossy();
            assert!(!taken.contains(&n.as_ref()), "{n}");
            // The collector's flags are LOGDOG_COLLECTOR_*.
            assert!(!n.starts_with("LOGDOG_COLLECTOR_"), "{n}");
        }
    }

    #[test]
    fn ca_cert_needs_an_output_over_tls_and_any_one_will_do() {
        let check = |args: &[&str]| {
            let mut argv = vec!["logdog_butler"];
            argv.extend_from_slice(args);
            argv.extend(["run", "--", "true"]);
            parse(argv)
                .map_err(|e| e.to_string())?
                .global
                .check_outputs()
        };
        let ca = ["--ca-cert", "ca.pem"];
        for ok in [
            vec!["--output", "grpcs://h:1"],
            vec!["--output", "gelf+tls://h:1"],
            vec!["--output", "grpc://h:1", "--output", "gelf+tls://h:1"],
        ] {
            let args = [ok.as_slice(), &ca].concat();
            assert_eq!(check(&args), Ok(()), "{args:?}");
        }
        for bad in [
            vec!["--output", "grpc://h:1"],
            vec!["--output", "gelf+udp://h:1"],
            vec!["--output", "gelf+tcp://h:1", "--output", "null"],
        ] {
            let args = [bad.as_slice(), &ca].concat();
            let e = check(&args).unwrap_err();
            assert!(
                e.contains("--ca-cert is for an output over TLS"),
                "{args:?}: {e}"
            );
        }
    }

    #[test]
    fn repeatable_flags_take_one_value_per_line_from_their_variable() {
        let cli = parse(["logdog_butler", "--tag", "a=1\nb=2", "pipe", "x"]).unwrap();
        assert_eq!(
            cli.global.tags,
            vec![("a".into(), "1".into()), ("b".into(), "2".into())]
        );
    }

    #[test]
    fn a_flag_that_does_not_apply_is_refused_after_the_subcommand_too() {
        let e = parse(["logdog_butler", "resume", "--include", "x"]).unwrap_err();
        assert!(
            e.to_string()
                .contains("--include does not apply to `resume`"),
            "{e}"
        );
        assert!(parse(["logdog_butler", "resume", "--spool", "d"]).is_ok());
    }
    #[test]
    fn pty_sizes_are_cols_by_rows() {
        assert_eq!(parse_pty_size("200x50"), Ok((200, 50)));
        assert_eq!(parse_pty_size("80X24"), Ok((80, 24)));
        for bad in [
            "", "80", "0x24", "80x0", "80x", "x24", "80x24x1", "70000x24", "-1x24",
        ] {
            assert!(parse_pty_size(bad).is_err(), "{bad:?}");
        }
    }
}
