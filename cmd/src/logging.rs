//! The binaries' own log lines: human-readable (the default) or one JSON object per line
//! (`--log-format json`: `timestamp` (RFC 3339), `level`, `message` and the event's fields),
//! on stderr, at `--log-level` unless `RUST_LOG` says otherwise.

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line of text per event.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The levels `--log-level` takes, alone or after `TARGET=` in a directive.
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Checks a `--log-level` value: a level (`warn`), or comma-separated directives of which each
/// is a level or `TARGET=LEVEL` (`info,logdog_collector::tailsrv=debug`).
///
/// # Errors
/// What is wrong, naming the known levels: a bare word that is not a level (`loud`) would
/// otherwise be taken as a target and silently log nothing new.
pub fn parse_level(s: &str) -> Result<String, String> {
    let known = || format!("expected a level ({}) or TARGET=LEVEL", LEVELS.join(", "));
    if s.trim().is_empty() {
        return Err(format!("empty log level; {}", known()));
    }
    for part in s.split(',') {
        let level = part.rsplit_once('=').map_or(part, |(_, l)| l).trim();
        if !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level)) {
            return Err(format!("unknown log level {level:?}; {}", known()));
        }
    }
    tracing_subscriber::EnvFilter::try_new(s).map_err(|e| format!("{e}; {}", known()))?;
    Ok(s.to_string())
}

/// Installs the global subscriber: `level` (or `fallback` if `level` is not a valid filter)
/// unless `RUST_LOG` is set, in `format`, to stderr.
pub fn init(level: &str, fallback: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(fallback));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_level;

    #[test]
    fn levels_and_directives_pass_unknown_words_do_not() {
        for ok in [
            "warn",
            "INFO",
            "off",
            "info,logdog_collector::tailsrv=debug",
            "h2=trace",
        ] {
            assert_eq!(parse_level(ok).as_deref(), Ok(ok), "{ok}");
        }
        for bad in ["loud", "", "info,verbose", "x=loud", "warn,"] {
            let e = parse_level(bad).unwrap_err();
            assert!(e.contains("expected a level"), "{bad}: {e}");
        }
    }
}
