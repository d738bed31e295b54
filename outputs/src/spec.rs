//! Parsing `--output` values.
//!
//! Valid forms:
//! - `log`: [`LogOutput`] to stderr, 1 MiB bundles;
//! - `null`: [`NullOutput`];
//! - `directory:PATH`: [`DirectoryOutput`] writing under `PATH` (everything after the first
//!   `:`, which may itself contain `:`);
//! - `grpc://HOST:PORT`: [`GrpcOutput`] to a collector; `grpc://HOST:PORT,HOST:PORT,…` to
//!   several, bundles spread over them with failover (see [`crate::grpc`]);
//! - `grpcs://HOST:PORT[,HOST:PORT…]`: the same over TLS;
//! - `gelf+udp://HOST:PORT[?compress=gzip|zlib|none&chunk-size=N]`: [`GelfOutput`] over UDP
//!   (defaults: gzip, 1420-byte datagrams; N from 64 to 65507, the chunk header included);
//! - `gelf+tcp://HOST:PORT`, `gelf+tls://HOST:PORT`: the same over TCP, or TCP with TLS.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use crate::gelf::encoding::{Compression, DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
use crate::gelf::{GelfConfig, GelfTransport};
use crate::grpc::GrpcCompression;
use crate::security::{ClientSecurity, Collector};
use crate::{DirectoryOutput, GelfOutput, GrpcOutput, LogOutput, NullOutput, Output, OutputError};

/// The valid forms of an output spec, for messages.
pub const VALID_FORMS: &str = "log, null, directory:PATH, grpc://HOST:PORT, grpcs://HOST:PORT, \
     gelf+udp://HOST:PORT, gelf+tcp://HOST:PORT, gelf+tls://HOST:PORT";

/// A parsed `--output` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputSpec {
    /// `log`: a human-readable account of every bundle on stderr.
    Log,
    /// `null`: discard everything.
    Null,
    /// `directory:PATH`: write every stream under `PATH`.
    Directory(PathBuf),
    /// `grpc://HOST:PORT[,HOST:PORT…]`: send to a collector, or spread over several (at
    /// least one address, none twice).
    Grpc(Vec<String>),
    /// `grpcs://HOST:PORT[,HOST:PORT…]`: the same over TLS.
    Grpcs(Vec<String>),
    /// `gelf+udp://`, `gelf+tcp://` or `gelf+tls://HOST:PORT`: send every line to a GELF
    /// receiver. The `host` and `ca_cert` fields are not part of the text form; the command
    /// line fills them in (`--gelf-host`, `--ca-cert`).
    Gelf(GelfConfig),
}

impl OutputSpec {
    /// The first collector, for `grpc://` and `grpcs://` (see [`OutputSpec::collectors`]).
    pub fn collector(&self) -> Option<Collector> {
        self.collectors().into_iter().next()
    }

    /// Every collector of `grpc://` and `grpcs://`, in the order given; empty for the other
    /// outputs.
    pub fn collectors(&self) -> Vec<Collector> {
        let (addrs, tls) = match self {
            Self::Grpc(a) => (a, false),
            Self::Grpcs(a) => (a, true),
            _ => return Vec::new(),
        };
        addrs
            .iter()
            .map(|a| Collector {
                host_port: a.clone(),
                tls,
            })
            .collect()
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
    /// A malformed list of collectors, `grpc://A,B`: an empty element, mixed schemes, an
    /// address given twice.
    #[error("output {spec:?}: {reason}")]
    AddressList {
        /// The spec as given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A malformed `gelf+…://` output.
    #[error("output {spec:?}: {reason}")]
    Gelf {
        /// The spec as given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Parses `gelf+udp://HOST:PORT[?QUERY]`, `gelf+tcp://HOST:PORT` or `gelf+tls://HOST:PORT`.
fn parse_gelf(
    s: &str,
    transport: GelfTransport,
    rest: &str,
) -> Result<GelfConfig, ParseOutputSpecError> {
    let bad = |reason: String| ParseOutputSpecError::Gelf {
        spec: s.to_owned(),
        reason,
    };
    let (addr, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let addr = addr.strip_suffix('/').unwrap_or(addr);
    let collector = Collector::parse(&format!("grpc://{addr}"), false)
        .map_err(|_| bad(format!("expected {}://HOST:PORT", transport.scheme())))?;
    let mut cfg = GelfConfig::new(transport, &collector.host_port);
    let Some(query) = query else {
        return Ok(cfg);
    };
    if transport != GelfTransport::Udp {
        return Err(bad(format!(
            "{} takes no options (compress and chunk-size are for gelf+udp)",
            transport.scheme()
        )));
    }
    for pair in query.split('&') {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| bad(format!("option {pair:?} has no value: expected NAME=VALUE")))?;
        match k {
            "compress" => cfg.compression = v.parse().map_err(bad)?,
            "chunk-size" => {
                cfg.chunk_size = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(n))
                    .ok_or_else(|| {
                        bad(format!(
                            "chunk-size {v:?}: expected a number of bytes from {MIN_CHUNK_SIZE} \
                             to {MAX_CHUNK_SIZE} (the whole datagram, chunk header included)"
                        ))
                    })?;
            }
            _ => {
                return Err(bad(format!(
                    "unknown option {k:?}: expected compress=gzip|zlib|none or chunk-size=N"
                )));
            }
        }
    }
    Ok(cfg)
}

/// Parses `grpc://A,B,…` or `grpcs://A,B,…`: every element `HOST:PORT` (or with the same
/// scheme again), none empty, none twice.
fn parse_address_list(s: &str) -> Result<OutputSpec, ParseOutputSpecError> {
    let bad = |reason: String| ParseOutputSpecError::AddressList {
        spec: s.to_owned(),
        reason,
    };
    let (scheme, rest) = s.split_once("://").unwrap_or(("grpc", s));
    let tls = scheme == "grpcs";
    let mut addrs: Vec<String> = Vec::new();
    for (k, elem) in rest.split(',').enumerate() {
        let elem = elem.trim();
        if elem.is_empty() {
            return Err(bad(format!(
                "address {} of the list is empty (a stray comma?): expected \
                 {scheme}://HOST:PORT,HOST:PORT",
                k + 1
            )));
        }
        let bare = match elem.split_once("://") {
            Some((other, r)) if other == scheme => r,
            Some((other, _)) => {
                return Err(bad(format!(
                    "mixed schemes ({scheme}:// and {other}://): the collectors of one output \
                     all use the scheme given first; expected {scheme}://HOST:PORT,HOST:PORT"
                )));
            }
            None => elem,
        };
        let c = Collector::parse(&format!("{scheme}://{bare}"), false).map_err(|_| {
            bad(format!(
                "{elem:?} is not HOST:PORT (a host and a port number)"
            ))
        })?;
        if addrs.iter().any(|a| a.eq_ignore_ascii_case(&c.host_port)) {
            return Err(bad(format!("address {} is given twice", c.host_port)));
        }
        addrs.push(c.host_port);
    }
    Ok(if tls {
        OutputSpec::Grpcs(addrs)
    } else {
        OutputSpec::Grpc(addrs)
    })
}

impl FromStr for OutputSpec {
    type Err = ParseOutputSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "log" => Ok(Self::Log),
            "null" => Ok(Self::Null),
            "directory" => Err(ParseOutputSpecError::MissingPath(s.to_owned())),
            _ => {
                for t in [GelfTransport::Udp, GelfTransport::Tcp, GelfTransport::Tls] {
                    if let Some(rest) = s
                        .strip_prefix(t.scheme())
                        .and_then(|r| r.strip_prefix("://"))
                    {
                        return parse_gelf(s, t, rest).map(Self::Gelf);
                    }
                }
                if s.starts_with("grpc://") || s.starts_with("grpcs://") {
                    if s.contains(',') {
                        return parse_address_list(s);
                    }
                    return match Collector::parse(s, false) {
                        Ok(c) if c.tls => Ok(Self::Grpcs(vec![c.host_port])),
                        Ok(c) => Ok(Self::Grpc(vec![c.host_port])),
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
            Self::Grpc(a) => write!(f, "grpc://{}", a.join(",")),
            Self::Grpcs(a) => write!(f, "grpcs://{}", a.join(",")),
            Self::Gelf(c) => {
                write!(f, "{}://{}", c.transport.scheme(), c.address)?;
                let mut sep = '?';
                if c.compression != Compression::default() {
                    write!(f, "{sep}compress={}", c.compression)?;
                    sep = '&';
                }
                if c.chunk_size != DEFAULT_CHUNK_SIZE {
                    write!(f, "{sep}chunk-size={}", c.chunk_size)?;
                }
                Ok(())
            }
        }
    }
}

/// Builds the output a spec describes. Creates the directory for `directory:PATH`.
pub fn build_output(spec: &OutputSpec) -> Result<Arc<dyn Output>, OutputError> {
    Ok(match spec {
        OutputSpec::Log => Arc::new(LogOutput::default()),
        OutputSpec::Null => Arc::new(NullOutput::new()),
        OutputSpec::Directory(path) => Arc::new(DirectoryOutput::new(path)?),
        OutputSpec::Grpc(_) | OutputSpec::Grpcs(_) => Arc::new(GrpcOutput::connect_all(
            &spec.collectors(),
            &ClientSecurity::default(),
            GrpcCompression::default(),
        )?),
        OutputSpec::Gelf(c) => Arc::new(GelfOutput::new(c.clone())?),
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
            Ok(OutputSpec::Grpc(vec!["127.0.0.1:7431".into()]))
        );
        assert_eq!(
            "grpc://[::1]:7431/".parse(),
            Ok(OutputSpec::Grpc(vec!["[::1]:7431".into()]))
        );
        assert_eq!(
            "grpcs://collector.example:443".parse(),
            Ok(OutputSpec::Grpcs(vec!["collector.example:443".into()]))
        );
        assert_eq!(
            "grpcs://[::1]:7431/".parse(),
            Ok(OutputSpec::Grpcs(vec!["[::1]:7431".into()]))
        );
        assert_eq!(
            OutputSpec::Grpcs(vec!["h:1".into()])
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
    fn parses_address_lists() {
        let spec: OutputSpec = "grpc://a:1,127.0.0.1:2,[::1]:3".parse().unwrap();
        assert_eq!(
            spec,
            OutputSpec::Grpc(vec!["a:1".into(), "127.0.0.1:2".into(), "[::1]:3".into()])
        );
        assert_eq!(spec.to_string(), "grpc://a:1,127.0.0.1:2,[::1]:3");
        let hosts: Vec<String> = spec.collectors().iter().map(|c| c.to_string()).collect();
        assert_eq!(
            hosts,
            ["grpc://a:1", "grpc://127.0.0.1:2", "grpc://[::1]:3"]
        );
        assert_eq!(spec.collector().unwrap().host_port, "a:1");
        // The scheme may be repeated, and spaces around an address are ignored.
        assert_eq!(
            "grpcs://a:1, grpcs://b:2/".parse(),
            Ok(OutputSpec::Grpcs(vec!["a:1".into(), "b:2".into()]))
        );
        assert!(OutputSpec::Log.collectors().is_empty());
    }

    #[test]
    fn refuses_bad_address_lists() {
        for (s, says) in [
            ("grpc://a:1,", "address 2 of the list is empty"),
            ("grpc://,a:1", "address 1 of the list is empty"),
            ("grpc://a:1,,b:2", "address 2 of the list is empty"),
            (
                "grpc://a:1,grpcs://b:2",
                "mixed schemes (grpc:// and grpcs://)",
            ),
            (
                "grpcs://a:1,grpc://b:2",
                "mixed schemes (grpcs:// and grpc://)",
            ),
            ("grpc://a:1,gelf+udp://b:2", "mixed schemes"),
            ("grpc://a:1,a:1", "address a:1 is given twice"),
            ("grpc://A:1,grpc://a:1/", "address a:1 is given twice"),
            ("grpc://a:1,b", "\"b\" is not HOST:PORT"),
            ("grpc://a:1,b:99999", "\"b:99999\" is not HOST:PORT"),
        ] {
            let err = s.parse::<OutputSpec>().unwrap_err();
            assert!(
                matches!(err, ParseOutputSpecError::AddressList { .. }),
                "{s}: {err:?}"
            );
            assert!(err.to_string().contains(says), "{s}: {err}");
        }
    }

    #[test]
    fn refuses_others() {
        let err = "foo".parse::<OutputSpec>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown output \"foo\": expected log, null, directory:PATH, grpc://HOST:PORT, \
             grpcs://HOST:PORT, gelf+udp://HOST:PORT, gelf+tcp://HOST:PORT, gelf+tls://HOST:PORT"
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

    #[test]
    fn parses_gelf() {
        let udp = |s: &str| match s.parse::<OutputSpec>() {
            Ok(OutputSpec::Gelf(c)) => c,
            other => panic!("{s}: {other:?}"),
        };
        let c = udp("gelf+udp://graylog.example:12201");
        assert_eq!(
            c,
            GelfConfig::new(GelfTransport::Udp, "graylog.example:12201")
        );
        let c = udp("gelf+udp://127.0.0.1:12201?compress=zlib&chunk-size=8192");
        assert_eq!((c.compression, c.chunk_size), (Compression::Zlib, 8192));
        let c = udp("gelf+udp://[::1]:12201/?chunk-size=64&compress=none");
        assert_eq!(
            (c.address.as_str(), c.compression, c.chunk_size),
            ("[::1]:12201", Compression::None, 64)
        );
        assert_eq!(udp("gelf+tcp://h:1").transport, GelfTransport::Tcp);
        assert_eq!(udp("gelf+tls://h:1").transport, GelfTransport::Tls);
        for s in [
            "gelf+udp://h:12201",
            "gelf+udp://h:12201?compress=none",
            "gelf+udp://h:12201?chunk-size=9000",
            "gelf+udp://h:12201?compress=zlib&chunk-size=65507",
            "gelf+tcp://h:12201",
            "gelf+tls://[::1]:12201",
        ] {
            assert_eq!(s.parse::<OutputSpec>().unwrap().to_string(), s);
        }
        // The defaults written out parse to the same spec, shown without them.
        assert_eq!(
            "gelf+udp://h:1?compress=gzip&chunk-size=1420"
                .parse::<OutputSpec>()
                .unwrap()
                .to_string(),
            "gelf+udp://h:1"
        );
    }

    #[test]
    fn refuses_bad_gelf() {
        for (s, says) in [
            ("gelf+udp://", "expected gelf+udp://HOST:PORT"),
            ("gelf+udp://host", "expected gelf+udp://HOST:PORT"),
            ("gelf+tcp://h:99999", "expected gelf+tcp://HOST:PORT"),
            ("gelf+udp://h:1?compress=lz4", "unknown compression \"lz4\""),
            ("gelf+udp://h:1?chunk-size=63", "from 64 to 65507"),
            ("gelf+udp://h:1?chunk-size=65508", "from 64 to 65507"),
            ("gelf+udp://h:1?chunk-size=big", "chunk-size \"big\""),
            ("gelf+udp://h:1?chunk-size", "has no value"),
            ("gelf+udp://h:1?level=3", "unknown option \"level\""),
            ("gelf+tcp://h:1?compress=gzip", "gelf+tcp takes no options"),
            ("gelf+tls://h:1?chunk-size=100", "gelf+tls takes no options"),
        ] {
            let err = s.parse::<OutputSpec>().unwrap_err();
            assert!(
                matches!(err, ParseOutputSpecError::Gelf { .. }),
                "{s}: {err:?}"
            );
            assert!(err.to_string().contains(says), "{s}: {err}");
        }
        assert!(matches!(
            "gelf://h:1".parse::<OutputSpec>(),
            Err(ParseOutputSpecError::Unknown(_))
        ));
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
