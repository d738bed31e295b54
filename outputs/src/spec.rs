//! Parsing `--output` values.
//!
//! Valid forms:
//! - `log`: [`LogOutput`] to stderr, 1 MiB bundles;
//! - `null`: [`NullOutput`];
//! - `directory:PATH`: [`DirectoryOutput`] writing under `PATH` (everything after the first
//!   `:`, which may itself contain `:`);
//! - `grpc://HOST:PORT`: [`GrpcOutput`] to a collector;
//! - `grpcs://HOST:PORT`: the same over TLS.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use crate::security::{ClientSecurity, Collector};
use crate::{DirectoryOutput, GrpcOutput, LogOutput, NullOutput, Output, OutputError};

/// The valid forms of an output spec, for messages.
pub const VALID_FORMS: &str = "log, null, directory:PATH, grpc://HOST:PORT, grpcs://HOST:PORT";

/// A parsed `--output` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputSpec {
    /// `log`: a human-readable account of every bundle on stderr.
    Log,
    /// `null`: discard everything.
    Null,
    /// `directory:PATH`: write every stream under `PATH`.
    Directory(PathBuf),
    /// `grpc://HOST:PORT`: send to a collector.
    Grpc(String),
    /// `grpcs://HOST:PORT`: send to a collector over TLS.
    Grpcs(String),
}

impl OutputSpec {
    /// The collector, for `grpc://` and `grpcs://`.
    pub fn collector(&self) -> Option<Collector> {
        match self {
            Self::Grpc(a) => Some(Collector {
                host_port: a.clone(),
                tls: false,
            }),
            Self::Grpcs(a) => Some(Collector {
                host_port: a.clone(),
                tls: true,
            }),
            _ => None,
        }
    }
}

/// Why an output spec was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseOutputSpecError {
    /// Not one of the valid forms.
    #[error("unknown output {0:?}: expected {VALID_FORMS}")]
    Unknown(String),
    /// `directory` without a path.
    #[error("output {0:?} needs a path: expected directory:PATH")]
    MissingPath(String),
    /// `grpc://` or `grpcs://` without `HOST:PORT`.
    #[error("output {0:?} needs an address: expected grpc://HOST:PORT or grpcs://HOST:PORT")]
    MissingAddress(String),
}

impl FromStr for OutputSpec {
    type Err = ParseOutputSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "log" => Ok(Self::Log),
            "null" => Ok(Self::Null),
            "directory" => Err(ParseOutputSpecError::MissingPath(s.to_owned())),
            _ => {
                if s.starts_with("grpc://") || s.starts_with("grpcs://") {
                    return match Collector::parse(s, false) {
                        Ok(c) if c.tls => Ok(Self::Grpcs(c.host_port)),
                        Ok(c) => Ok(Self::Grpc(c.host_port)),
                        Err(_) => Err(ParseOutputSpecError::MissingAddress(s.to_owned())),
                    };
                }
                match s.strip_prefix("directory:") {
                    Some("") => Err(ParseOutputSpecError::MissingPath(s.to_owned())),
                    Some(path) => Ok(Self::Directory(PathBuf::from(path))),
                    None => Err(ParseOutputSpecError::Unknown(s.to_owned())),
                }
            }
        }
    }
}

impl fmt::Display for OutputSpec {
    /// The spec in the form it is parsed from.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Log => f.write_str("log"),
            Self::Null => f.write_str("null"),
            Self::Directory(p) => write!(f, "directory:{}", p.display()),
            Self::Grpc(a) => write!(f, "grpc://{a}"),
            Self::Grpcs(a) => write!(f, "grpcs://{a}"),
        }
    }
}

/// Builds the output a spec describes. Creates the directory for `directory:PATH`.
pub fn build_output(spec: &OutputSpec) -> Result<Arc<dyn Output>, OutputError> {
    Ok(match spec {
        OutputSpec::Log => Arc::new(LogOutput::default()),
        OutputSpec::Null => Arc::new(NullOutput::new()),
        OutputSpec::Directory(path) => Arc::new(DirectoryOutput::new(path)?),
        OutputSpec::Grpc(_) | OutputSpec::Grpcs(_) => match spec.collector() {
            Some(c) => Arc::new(GrpcOutput::connect(&c, &ClientSecurity::default())?),
            None => return Err(OutputError::Other(format!("{spec} is not a collector"))),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_forms() {
        assert_eq!("log".parse(), Ok(OutputSpec::Log));
        assert_eq!("null".parse(), Ok(OutputSpec::Null));
        assert_eq!(
            "directory:/tmp/x".parse(),
            Ok(OutputSpec::Directory("/tmp/x".into()))
        );
        assert_eq!(
            "directory:a:b".parse(),
            Ok(OutputSpec::Directory("a:b".into()))
        );
        assert_eq!(
            "grpc://127.0.0.1:7431".parse(),
            Ok(OutputSpec::Grpc("127.0.0.1:7431".into()))
        );
        assert_eq!(
            "grpc://[::1]:7431/".parse(),
            Ok(OutputSpec::Grpc("[::1]:7431".into()))
        );
        assert_eq!(
            "grpcs://collector.example:443".parse(),
            Ok(OutputSpec::Grpcs("collector.example:443".into()))
        );
        assert_eq!(
            "grpcs://[::1]:7431/".parse(),
            Ok(OutputSpec::Grpcs("[::1]:7431".into()))
        );
        assert_eq!(
            OutputSpec::Grpcs("h:1".into())
                .collector()
                .map(|c| c.to_string()),
            Some("grpcs://h:1".into())
        );
        for s in [
            "log",
            "null",
            "directory:/tmp/x",
            "grpc://localhost:7431",
            "grpcs://localhost:7431",
        ] {
            assert_eq!(s.parse::<OutputSpec>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn refuses_others() {
        let err = "foo".parse::<OutputSpec>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown output \"foo\": expected log, null, directory:PATH, grpc://HOST:PORT, \
             grpcs://HOST:PORT"
        );
        for s in [
            "grpcs://",
            "grpcs://host",
            "grpcs://h:99999",
            "grpc://",
            "grpc://host",
            "grpc://:80",
            "grpc://h:port",
            "grpc://h:99999",
        ] {
            assert!(
                matches!(
                    s.parse::<OutputSpec>(),
                    Err(ParseOutputSpecError::MissingAddress(_))
                ),
                "{s}"
            );
        }
        for s in [
            "",
            "LOG",
            "log,bundle-size=5",
            "logdog",
            "directory=x",
            " null",
        ] {
            assert_eq!(
                s.parse::<OutputSpec>(),
                Err(ParseOutputSpecError::Unknown(s.into()))
            );
        }
        for s in ["directory", "directory:"] {
            let err = s.parse::<OutputSpec>().unwrap_err();
            assert_eq!(err, ParseOutputSpecError::MissingPath(s.into()));
            assert!(err.to_string().contains("directory:PATH"), "{err}");
        }
    }

    #[tokio::test]
    async fn builds_outputs() {
        let dir = tempfile::tempdir().unwrap();
        let log = build_output(&OutputSpec::Log).unwrap();
        assert_eq!(log.max_bundle_size(), 1024 * 1024);
        let null = build_output(&OutputSpec::Null).unwrap();
        assert_eq!(null.max_bundle_size(), 8 * 1024 * 1024);
        let path = dir.path().join("d");
        let d = build_output(&OutputSpec::Directory(path.clone())).unwrap();
        assert!(path.is_dir());
        assert!(d.coordinator_host().unwrap().starts_with("file:///"));
        d.close().await.unwrap();
        // A path under a regular file cannot be created.
        std::fs::write(dir.path().join("file"), b"").unwrap();
        assert!(build_output(&OutputSpec::Directory(dir.path().join("file/sub"))).is_err());
    }
}
