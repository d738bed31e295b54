//! `logdog_collector --config FILE`: the collector's flags from a TOML file and from
//! `LOGDOG_COLLECTOR_*` environment variables.
//!
//! Every long flag of the top-level command is a key of the file (`max-connections = 1024`,
//! `read-deadline = "60s"`, `insecure-no-auth = true`) and an environment variable
//! (`LOGDOG_COLLECTOR_MAX_CONNECTIONS`). A flag on the command line wins over the
//! environment, which wins over the file, which wins over the defaults.
//!
//! The file's settings for the flags given neither on the command line nor in the environment
//! become command-line flags inserted before the given ones, so that clap checks them like any
//! other (ranges, flags that need each other). Each value is first checked alone with its
//! flag's own parser, so that a bad one is reported with its key and the file's line.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, Command};
use toml::Spanned;

/// The flag naming the file; not itself a key of the file.
pub const CONFIG_FLAG: &str = "config";

/// The environment variable of the flag `long` under `prefix`: `LOGDOG_COLLECTOR_` and
/// `max-connections` give `LOGDOG_COLLECTOR_MAX_CONNECTIONS`.
pub fn env_name(prefix: &str, long: &str) -> String {
    format!("{prefix}{}", long.to_ascii_uppercase().replace('-', "_"))
}

/// The long name of `arg` if the file and the environment may set it: every flag with a long
/// name except help and version.
fn settable(arg: &Arg) -> Option<&str> {
    if arg.is_positional()
        || matches!(
            arg.get_action(),
            ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
        )
    {
        return None;
    }
    arg.get_long()
}

/// `cmd` with an environment variable ([`env_name`]) for each of its flags that has none.
pub fn with_env(cmd: Command, prefix: &str) -> Command {
    cmd.mut_args(|arg| {
        let name = match settable(&arg) {
            Some(long) if arg.get_env().is_none() => env_name(prefix, long),
            _ => return arg,
        };
        arg.env(name)
    })
}

/// One key of the file: its value and the line it is on.
#[derive(Debug)]
struct Setting {
    key: String,
    line: usize,
    value: toml::Value,
}

/// The top-level keys of a TOML document, with their lines, in the document's order.
fn settings(text: &str) -> Result<Vec<Setting>, toml::de::Error> {
    let table: BTreeMap<Spanned<String>, toml::Value> = toml::from_str(text)?;
    let mut out: Vec<Setting> = table
        .into_iter()
        .map(|(key, value)| {
            let start = key.span().start;
            let line = 1 + text.as_bytes()[..start.min(text.len())]
                .iter()
                .filter(|b| **b == b'\n')
                .count();
            Setting {
                key: key.into_inner(),
                line,
                value,
            }
        })
        .collect();
    out.sort_by_key(|s| s.line);
    Ok(out)
}

/// The command line `args` (the program's name first) with the settings of the file named by
/// `--config` (if any) inserted after the program's name, for the flags of `cmd` given
/// neither in `args` nor in the environment. `cmd` must have a `config` flag. Command lines
/// that clap refuses are returned as they are, for clap to report.
pub fn apply(cmd: &Command, args: Vec<OsString>) -> anyhow::Result<Vec<OsString>> {
    // A first look at the command line. A flag that needs another one given in the file must
    // not fail yet; any other error is clap's to report, on the command line as given.
    let matches = match cmd.clone().try_get_matches_from(&args) {
        Ok(m) => m,
        Err(e) if e.kind() == clap::error::ErrorKind::MissingRequiredArgument => {
            match cmd.clone().ignore_errors(true).try_get_matches_from(&args) {
                Ok(m) => m,
                Err(_) => return Ok(args),
            }
        }
        Err(_) => return Ok(args),
    };
    let path = match matches.try_get_one::<PathBuf>(CONFIG_FLAG) {
        Ok(Some(p)) => p.clone(),
        _ => return Ok(args),
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    let given = |id: &str| {
        matches!(
            matches.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    };
    let extra = file_args(cmd, &path, &text, given)?;
    let mut out = Vec::with_capacity(args.len() + extra.len());
    let mut args = args.into_iter();
    out.extend(args.next());
    out.extend(extra);
    out.extend(args);
    Ok(out)
}

/// The flags (`--key=value`) that the file `text` (read from `path`) sets, leaving out those
/// of the flags for which `given(id)` says they are set otherwise.
fn file_args(
    cmd: &Command,
    path: &Path,
    text: &str,
    given: impl Fn(&str) -> bool,
) -> anyhow::Result<Vec<OsString>> {
    let settings = settings(text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for s in settings {
        let at = |msg: String| anyhow!("{}, line {}: {}: {msg}", path.display(), s.line, s.key);
        let arg = cmd
            .get_arguments()
            .find(|a| settable(a) == Some(s.key.as_str()) && a.get_id() != CONFIG_FLAG);
        let Some(arg) = arg else {
            let keys: Vec<&str> = cmd
                .get_arguments()
                .filter(|a| a.get_id() != CONFIG_FLAG)
                .filter_map(settable)
                .collect();
            return Err(if s.key == CONFIG_FLAG {
                at("a config file cannot name another".to_string())
            } else {
                at(format!(
                    "unknown key (the keys are the long flags: {})",
                    keys.join(", ")
                ))
            });
        };
        if given(arg.get_id().as_str()) {
            continue;
        }
        out.extend(flag_args(cmd, arg, &s.key, &s.value).map_err(at)?);
    }
    Ok(out)
}

/// The command-line flags that set `arg` (long name `long`) to `value`, each value checked
/// with the flag's own parser.
fn flag_args(
    cmd: &Command,
    arg: &Arg,
    long: &str,
    value: &toml::Value,
) -> Result<Vec<OsString>, String> {
    let flag = format!("--{long}");
    match arg.get_action() {
        ArgAction::SetTrue | ArgAction::SetFalse => {
            let Some(on) = value.as_bool() else {
                return Err(format!("expected true or false, found {}", kind(value)));
            };
            let wanted = matches!(arg.get_action(), ArgAction::SetTrue);
            Ok(if on == wanted {
                vec![flag.into()]
            } else {
                Vec::new()
            })
        }
        ArgAction::Count => match value.as_integer().and_then(|n| usize::try_from(n).ok()) {
            Some(n) => Ok(vec![flag.into(); n]),
            None => Err(format!(
                "expected a count (0 or more), found {}",
                kind(value)
            )),
        },
        action => {
            let values = match value {
                toml::Value::Array(items) if matches!(action, ArgAction::Append) => {
                    items.iter().collect()
                }
                v => vec![v],
            };
            let mut out = Vec::new();
            for v in values {
                let text = scalar(v)?;
                check(cmd, arg, long, &text)?;
                out.push(format!("{flag}={text}").into());
            }
            Ok(out)
        }
    }
}

/// A string or a number as the command line would give it.
fn scalar(value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(n) => Ok(n.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        other => Err(format!(
            "expected a string or a number, found {}",
            kind(other)
        )),
    }
}

/// What sort of TOML value `value` is, for messages.
fn kind(value: &toml::Value) -> &'static str {
    match value {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date-time",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

/// Checks `value` with the value parser of `arg` alone (clap's message, without its
/// `error:` prefix and hints).
fn check(cmd: &Command, arg: &Arg, long: &str, value: &str) -> Result<(), String> {
    let mut alone = Arg::new("value")
        .long(long.to_string())
        .action(ArgAction::Set)
        .value_parser(arg.get_value_parser().clone());
    let names = arg.get_value_names().unwrap_or_default();
    if !names.is_empty() {
        alone = alone.value_names(names.to_vec());
    }
    let probe = Command::new(cmd.get_name().to_string())
        .no_binary_name(true)
        .disable_help_flag(true)
        .disable_version_flag(true)
        .color(clap::ColorChoice::Never)
        .arg(alone);
    match probe.try_get_matches_from([format!("--{long}={value}")]) {
        Ok(_) => Ok(()),
        Err(e) => {
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or_default();
            Err(first.strip_prefix("error: ").unwrap_or(first).to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches, Parser};

    #[derive(Debug, Parser)]
    #[command(name = "t", rename_all = "kebab-case")]
    struct T {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, default_value = "127.0.0.1:1")]
        listen: String,
        #[arg(long)]
        http: Option<String>,
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
        max_connections: u32,
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        read_deadline: std::time::Duration,
        #[arg(long)]
        insecure_no_auth: bool,
        #[arg(long, requires = "b")]
        a: Option<String>,
        #[arg(long, requires = "a")]
        b: Option<String>,
        #[arg(long)]
        tag: Vec<String>,
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
        f
    }

    /// Parses `args` after `t --config FILE` with `text` in FILE (no environment: the test
    /// command has no `env` attributes).
    fn parse(text: &str, args: &[&str]) -> anyhow::Result<T> {
        let f = file(text);
        let mut argv: Vec<OsString> = vec!["t".into(), "--config".into(), f.path().into()];
        argv.extend(args.iter().map(OsString::from));
        let cmd = T::command();
        let argv = apply(&cmd, argv)?;
        let m = cmd.try_get_matches_from(argv)?;
        Ok(T::from_arg_matches(&m)?)
    }

    #[test]
    fn env_names_are_upper_case_with_underscores() {
        assert_eq!(
            env_name("LOGDOG_COLLECTOR_", "max-inflight-bytes"),
            "LOGDOG_COLLECTOR_MAX_INFLIGHT_BYTES"
        );
        let cmd = with_env(T::command(), "X_");
        let env = |id: &str| {
            cmd.get_arguments()
                .find(|a| a.get_id() == id)
                .and_then(|a| a.get_env())
                .map(|e| e.to_string_lossy().into_owned())
        };
        assert_eq!(
            env("insecure_no_auth").as_deref(),
            Some("X_INSECURE_NO_AUTH")
        );
        assert_eq!(env("config").as_deref(), Some("X_CONFIG"));
    }

    #[test]
    fn the_file_sets_every_kind_of_flag() {
        let t = parse(
            "listen = \"0.0.0.0:9\"\nhttp = \"127.0.0.1:0\"\nmax-connections = 3\n\
             read-deadline = \"5s\"\ninsecure-no-auth = true\ntag = [\"x\", \"-y\"]\n",
            &[],
        )
        .unwrap();
        assert_eq!(t.listen, "0.0.0.0:9");
        assert_eq!(t.http.as_deref(), Some("127.0.0.1:0"));
        assert_eq!(t.max_connections, 3);
        assert_eq!(t.read_deadline, std::time::Duration::from_secs(5));
        assert!(t.insecure_no_auth);
        assert_eq!(t.tag, ["x", "-y"]);
    }

    #[test]
    fn defaults_stay_for_keys_the_file_leaves_out() {
        let t = parse("insecure-no-auth = false\n", &[]).unwrap();
        assert_eq!(t.listen, "127.0.0.1:1");
        assert_eq!(t.max_connections, 8);
        assert!(!t.insecure_no_auth);
    }

    #[test]
    fn the_command_line_wins_over_the_file() {
        let t = parse(
            "listen = \"0.0.0.0:9\"\nmax-connections = 3\n",
            &["--max-connections", "5"],
        )
        .unwrap();
        assert_eq!(t.max_connections, 5);
        assert_eq!(t.listen, "0.0.0.0:9");
    }

    #[test]
    fn a_value_source_other_than_the_file_wins() {
        // What `apply` does for flags given in the environment.
        let cmd = T::command();
        let args = file_args(
            &cmd,
            Path::new("c.toml"),
            "listen = \"0.0.0.0:9\"\nmax-connections = 3\n",
            |id| id == "max_connections",
        )
        .unwrap();
        assert_eq!(args, [OsString::from("--listen=0.0.0.0:9")]);
    }

    #[test]
    fn flags_that_need_each_other_may_come_from_both() {
        let t = parse("a = \"1\"\n", &["--b", "2"]).unwrap();
        assert_eq!((t.a.as_deref(), t.b.as_deref()), (Some("1"), Some("2")));
        let e = parse("a = \"1\"\n", &[]).unwrap_err().to_string();
        assert!(e.contains("--b"), "{e}");
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        let e = parse("listen = \"x:1\"\n\nmax-conections = 3\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3: max-conections: unknown key"), "{e}");
        assert!(e.contains("max-connections"), "{e}");
        let e = parse("[listen]\nx = 1\n", &[]).unwrap_err().to_string();
        assert!(e.contains("line 1: listen: expected a string"), "{e}");
        let e = parse("help = true\n", &[]).unwrap_err().to_string();
        assert!(e.contains("unknown key"), "{e}");
        let e = parse("config = \"x\"\n", &[]).unwrap_err().to_string();
        assert!(e.contains("line 1: config: a config file cannot"), "{e}");
    }

    #[test]
    fn bad_values_are_named_with_their_line() {
        for (text, want) in [
            (
                "max-connections = 0\n",
                "line 1: max-connections: invalid value '0'",
            ),
            (
                "\nread-deadline = \"soon\"\n",
                "line 2: read-deadline: invalid value 'soon'",
            ),
            (
                "max-connections = \"many\"\n",
                "max-connections: invalid value 'many'",
            ),
            (
                "insecure-no-auth = \"yes\"\n",
                "insecure-no-auth: expected true or false, found a string",
            ),
            (
                "http = true\n",
                "http: expected a string or a number, found a boolean",
            ),
            (
                "listen = [\"a:1\"]\n",
                "listen: expected a string or a number, found an array",
            ),
        ] {
            let e = parse(text, &[]).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let e = parse("listen = \"x:1\"\nhttp = \n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn the_collectors_own_flags_have_keys_and_variables() {
        let cmd = with_env(crate::Cli::command(), crate::ENV_PREFIX);
        cmd.clone().debug_assert();
        for arg in cmd.get_arguments() {
            if let Some(long) = settable(arg) {
                let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
                assert_eq!(env, Some(env_name("LOGDOG_COLLECTOR_", long)), "--{long}");
            }
        }
        let f = file(
            "listen = \"0.0.0.0:9\"\ndata = \"/d\"\nread-deadline = \"90s\"\n\
             connection-window = 2097152\ninsecure-no-auth = true\ntls-cert = \"c.pem\"\n",
        );
        let argv: Vec<OsString> = vec![
            "logdog_collector".into(),
            "--config".into(),
            f.path().into(),
            "--tls-key".into(),
            "k.pem".into(),
            "verify".into(),
        ];
        let argv = apply(&cmd, argv).unwrap();
        let m = cmd.clone().try_get_matches_from(argv).unwrap();
        let cli = crate::Cli::from_arg_matches(&m).unwrap();
        assert!(matches!(cli.command, Some(crate::Command::Verify)));
        assert_eq!(cli.listen, "0.0.0.0:9");
        assert_eq!(cli.data, PathBuf::from("/d"));
        assert_eq!(cli.read_deadline, std::time::Duration::from_secs(90));
        assert_eq!(cli.connection_window, 2097152);
        assert!(cli.insecure_no_auth);
        assert_eq!(cli.tls_cert, Some(PathBuf::from("c.pem")));
        assert_eq!(cli.tls_key, Some(PathBuf::from("k.pem")));
        let f = file("connection-window = 1\n");
        let argv: Vec<OsString> = vec!["c".into(), "--config".into(), f.path().into()];
        let e = apply(&cmd, argv).unwrap_err().to_string();
        assert!(
            e.contains("line 1: connection-window: invalid value '1'"),
            "{e}"
        );
    }

    #[test]
    fn other_command_line_errors_are_left_to_clap() {
        let f = file("listen = \"a:1\"\n");
        let argv: Vec<OsString> = vec![
            "t".into(),
            "--config".into(),
            f.path().into(),
            "--bogus".into(),
        ];
        assert_eq!(apply(&T::command(), argv.clone()).unwrap(), argv);
    }

    #[test]
    fn without_config_the_command_line_is_unchanged() {
        let cmd = T::command();
        let argv: Vec<OsString> = vec!["t".into(), "--listen".into(), "a:1".into()];
        assert_eq!(apply(&cmd, argv.clone()).unwrap(), argv);
        let bad: Vec<OsString> = vec!["t".into(), "--nope".into()];
        assert_eq!(apply(&cmd, bad.clone()).unwrap(), bad);
    }
}
