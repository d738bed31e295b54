//! How clients reach a collector securely: TLS (`grpcs://`), the bearer token and the
//! prefix secret.
//!
//! - [`Collector`]: a collector address with its scheme, `grpc://HOST:PORT` (plain HTTP/2) or
//!   `grpcs://HOST:PORT` (TLS: the system's roots, or a CA given with `--ca-cert`).
//! - [`Token`]: the bearer token, from `--token-file FILE` or `LOGDOG_TOKEN` (the file wins
//!   when both are given), sent as `authorization: Bearer TOKEN` on every call by
//!   [`BearerAuth`]. Its `Debug` form never shows it.
//! - [`new_prefix_secret`]: the random secret a butler sends in every bundle of its prefix.
//! - [`tls_failure`]: recognises a TLS handshake failure in a failed call, for a clear message.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use logdog_proto::types::PREFIX_SECRET_LEN;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};

/// The environment variable holding a bearer token.
pub const TOKEN_ENV: &str = "LOGDOG_TOKEN";

/// Longest token file read, in bytes (a token is a few dozen characters).
pub const MAX_TOKEN_FILE: u64 = 64 * 1024;

/// How long a TLS handshake with the collector may take.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A collector address: where it listens and whether it speaks TLS.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Collector {
    /// `HOST:PORT`.
    pub host_port: String,
    /// `grpcs://`: TLS.
    pub tls: bool,
}

impl Collector {
    /// Parses `grpc://HOST:PORT` or `grpcs://HOST:PORT` (a trailing `/` is ignored).
    /// `bare` also accepts `HOST:PORT` and `http://`/`https://` (for `logdog --collector`).
    ///
    /// # Errors
    /// Another scheme, or no `HOST:PORT` with a valid port.
    pub fn parse(s: &str, bare: bool) -> Result<Self, String> {
        let (rest, tls) = if let Some(r) = s.strip_prefix("grpcs://") {
            (r, true)
        } else if let Some(r) = s.strip_prefix("grpc://") {
            (r, false)
        } else if let (true, Some(r)) = (bare, s.strip_prefix("https://")) {
            (r, true)
        } else if let (true, Some(r)) = (bare, s.strip_prefix("http://")) {
            (r, false)
        } else if bare && !s.contains("://") {
            (s, false)
        } else {
            return Err(format!(
                "{s:?}: expected grpc://HOST:PORT or grpcs://HOST:PORT"
            ));
        };
        let addr = rest.trim_end_matches('/');
        match addr.rsplit_once(':') {
            Some((host, port))
                if !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok() =>
            {
                Ok(Self {
                    host_port: addr.to_string(),
                    tls,
                })
            }
            _ => Err(format!(
                "{s:?} needs an address: expected {}://HOST:PORT",
                if tls { "grpcs" } else { "grpc" }
            )),
        }
    }

    /// The host, without brackets around an IPv6 address.
    pub fn host(&self) -> &str {
        let host = self
            .host_port
            .rsplit_once(':')
            .map_or(self.host_port.as_str(), |(h, _)| h);
        host.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
    }

    /// Whether the host is this machine (`localhost` or a loopback address): a token sent
    /// there in the clear does not cross a network.
    pub fn is_loopback(&self) -> bool {
        let host = self.host();
        host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    /// The scheme, `grpc` or `grpcs`.
    pub fn scheme(&self) -> &'static str {
        if self.tls { "grpcs" } else { "grpc" }
    }

    /// An endpoint for it: `https://` with TLS (trusting `ca`, or the system's roots without
    /// it), `http://` otherwise. Connects lazily.
    ///
    /// # Errors
    /// A malformed address, or a TLS configuration tonic refuses.
    pub fn endpoint(&self, ca: Option<&CaCert>) -> Result<Endpoint, String> {
        let scheme = if self.tls { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", self.host_port))
            .map_err(|e| format!("bad collector address {:?}: {e}", self.host_port))?;
        if self.tls {
            let mut cfg = ClientTlsConfig::new()
                .domain_name(self.host())
                .timeout(TLS_HANDSHAKE_TIMEOUT);
            cfg = match ca {
                Some(ca) => cfg.ca_certificate(Certificate::from_pem(&ca.pem)),
                None => cfg.with_native_roots(),
            };
            endpoint = endpoint.tls_config(cfg).map_err(|e| {
                format!(
                    "cannot set up TLS for {}: {}",
                    self.host_port,
                    innermost(&e)
                )
            })?;
        }
        Ok(endpoint)
    }
}

impl fmt::Display for Collector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme(), self.host_port)
    }
}

/// A CA certificate (PEM) the collector's certificate must chain to (`--ca-cert`).
#[derive(Clone, PartialEq, Eq)]
pub struct CaCert {
    /// Where it was read from.
    pub path: PathBuf,
    /// The PEM text.
    pub pem: Vec<u8>,
}

impl fmt::Debug for CaCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaCert").field("path", &self.path).finish()
    }
}

impl CaCert {
    /// Reads a PEM file holding at least one certificate.
    ///
    /// # Errors
    /// It cannot be read, or holds no PEM certificate.
    pub fn load(path: &Path) -> Result<Self, String> {
        let pem = std::fs::read(path)
            .map_err(|e| format!("--ca-cert {}: cannot read it: {e}", path.display()))?;
        let text = String::from_utf8_lossy(&pem);
        if !text.contains("-----BEGIN CERTIFICATE-----") {
            return Err(format!(
                "--ca-cert {}: no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)",
                path.display()
            ));
        }
        Ok(Self {
            path: path.to_path_buf(),
            pem,
        })
    }
}

/// A bearer token. Never shown: its `Debug` form is `Token(…)`.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(…)")
    }
}

impl Token {
    /// Wraps a token given as text (whitespace around it is trimmed).
    ///
    /// # Errors
    /// Empty, or holding characters a header value cannot carry (`what` names the source).
    pub fn new(text: &str, what: &str) -> Result<Self, String> {
        let t = text.trim();
        if t.is_empty() {
            return Err(format!("{what} is empty: expected a token"));
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "{what}: the token holds spaces or characters other than printable ASCII"
            ));
        }
        Ok(Self(t.to_string()))
    }

    /// The token, for the `authorization` header.
    pub fn secret(&self) -> &str {
        &self.0
    }

    /// The token from `--token-file` (`file`), else from `LOGDOG_TOKEN` (`env`, as read from
    /// the environment), else none. The file wins when both are given.
    ///
    /// # Errors
    /// The file cannot be read, is too big, or holds no token; the variable is set but empty
    /// or malformed.
    pub fn from_file_or_env(
        file: Option<&Path>,
        env: Option<std::ffi::OsString>,
    ) -> Result<Option<Self>, String> {
        if let Some(path) = file {
            let what = format!("--token-file {}", path.display());
            let meta =
                std::fs::metadata(path).map_err(|e| format!("{what}: cannot read it: {e}"))?;
            if meta.len() > MAX_TOKEN_FILE {
                return Err(format!(
                    "{what}: {} bytes is too big for a token file (at most {MAX_TOKEN_FILE})",
                    meta.len()
                ));
            }
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("{what}: cannot read it: {e}"))?;
            return Self::new(&text, &what).map(Some);
        }
        match env {
            None => Ok(None),
            Some(v) => {
                let v = v
                    .into_string()
                    .map_err(|_| format!("{TOKEN_ENV} is not valid UTF-8"))?;
                Self::new(&v, TOKEN_ENV).map(Some)
            }
        }
    }

    fn header(&self) -> Result<MetadataValue<Ascii>, String> {
        format!("Bearer {}", self.0)
            .parse()
            .map_err(|_| "the token cannot be sent as a header".to_string())
    }
}

/// A tonic interceptor that adds `authorization: Bearer TOKEN` to every call (nothing without
/// a token).
#[derive(Clone, Default)]
pub struct BearerAuth {
    header: Option<MetadataValue<Ascii>>,
}

impl fmt::Debug for BearerAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerAuth")
            .field("token", &self.header.as_ref().map(|_| "…"))
            .finish()
    }
}

impl BearerAuth {
    /// Sends `token` with every call (none: calls go without).
    ///
    /// # Errors
    /// The token cannot be a header value (checked by [`Token::new`] already).
    pub fn new(token: Option<&Token>) -> Result<Self, String> {
        let header = match token {
            Some(t) => {
                let mut h = t.header()?;
                h.set_sensitive(true);
                Some(h)
            }
            None => None,
        };
        Ok(Self { header })
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(h) = &self.header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        Ok(req)
    }
}

/// How a client reaches the collector: TLS roots and the token.
#[derive(Debug, Clone, Default)]
pub struct ClientSecurity {
    /// `--ca-cert`: the CA to trust instead of the system's roots (TLS only).
    pub ca: Option<CaCert>,
    /// The bearer token.
    pub token: Option<Token>,
}

impl ClientSecurity {
    /// A warning to print when the token would cross a network in the clear (a token over
    /// plain `grpc://` to a host other than this machine), if so.
    pub fn cleartext_warning(&self, collector: &Collector) -> Option<String> {
        (self.token.is_some() && !collector.tls && !collector.is_loopback()).then(|| {
            format!(
                "sending the token in the clear to {collector}: use grpcs:// so that it cannot \
                 be read on the way"
            )
        })
    }
}

/// A fresh random prefix secret ([`PREFIX_SECRET_LEN`] bytes).
///
/// # Errors
/// The system's random source failed.
pub fn new_prefix_secret() -> Result<[u8; PREFIX_SECRET_LEN], String> {
    let mut buf = [0u8; PREFIX_SECRET_LEN];
    getrandom::fill(&mut buf).map_err(|e| format!("cannot make a prefix secret: {e}"))?;
    Ok(buf)
}

/// The innermost cause of an error.
pub fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// What a TLS failure looks like in the messages of rustls (the handshake's errors are
/// configuration problems that retrying does not fix).
const TLS_MARKERS: [&str; 8] = [
    "invalid peer certificate",
    "peer sent no certificates",
    "peer is incompatible",
    "peer misbehaved",
    "received corrupt message",
    "received fatal alert",
    "unexpected message",
    "H2 was not negotiated",
];

/// If `status` failed a call because the TLS handshake with `collector` failed for good (the
/// certificate is not trusted, the server does not speak TLS, …): a message saying so, with
/// a hint.
pub fn tls_failure(status: &Status, collector: &Collector) -> Option<String> {
    let mut texts = vec![status.message().to_string()];
    texts.extend(chain(std::error::Error::source(status)));
    tls_failure_in(&texts, collector)
}

/// The same for an error connecting (`Endpoint::connect`).
pub fn tls_connect_failure(
    e: &(dyn std::error::Error + 'static),
    collector: &Collector,
) -> Option<String> {
    tls_failure_in(&chain(Some(e)), collector)
}

/// The messages of an error and its sources.
fn chain(mut cur: Option<&(dyn std::error::Error + 'static)>) -> Vec<String> {
    let mut texts = Vec::new();
    while let Some(e) = cur {
        texts.push(e.to_string());
        cur = e.source();
    }
    texts
}

fn tls_failure_in(texts: &[String], collector: &Collector) -> Option<String> {
    if !collector.tls {
        return None;
    }
    let cause = texts
        .iter()
        .find(|t| TLS_MARKERS.iter().any(|m| t.contains(m)))?;
    let cause = cause
        .rsplit_once("error trying to connect: ")
        .map_or(cause.as_str(), |(_, c)| c);
    let hint = if cause.contains("UnknownIssuer") || cause.contains("BadSignature") {
        " — is --ca-cert the collector's CA?"
    } else if cause.contains("NotValidForName") {
        " — the certificate does not name this host; connect by a name it holds"
    } else if cause.contains("corrupt message") || cause.contains("InvalidContentType") {
        " — does the collector serve TLS (--tls-cert)? Use grpc:// for a plain one"
    } else if cause.contains("Expired") {
        " — the collector's certificate has expired"
    } else if cause.contains("CaUsedAsEndEntity") {
        " — the collector's certificate is a CA certificate; a self-signed one needs \
         basicConstraints CA:FALSE (openssl req -addext basicConstraints=critical,CA:FALSE)"
    } else {
        ""
    };
    Some(format!(
        "TLS handshake with {} failed: {cause}{hint}",
        collector.host_port
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_collectors() {
        let c = Collector::parse("grpcs://collector.example:443/", false).unwrap();
        assert_eq!(c.host_port, "collector.example:443");
        assert!(c.tls);
        assert_eq!(c.to_string(), "grpcs://collector.example:443");
        assert!(!c.is_loopback());
        let c = Collector::parse("grpc://127.0.0.1:7431", false).unwrap();
        assert!(!c.tls);
        assert!(c.is_loopback());
        let c = Collector::parse("grpcs://[::1]:7431", false).unwrap();
        assert_eq!(c.host(), "::1");
        assert!(c.is_loopback());
        assert!(
            Collector::parse("localhost:7431", true)
                .unwrap()
                .is_loopback()
        );
        assert!(Collector::parse("https://h:1", true).unwrap().tls);
        assert!(!Collector::parse("http://h:1", true).unwrap().tls);
        for bad in [
            "grpcs://",
            "grpcs://host",
            "grpcs://:1",
            "grpcs://h:99999",
            "h:1",
            "https://h:1",
        ] {
            assert!(Collector::parse(bad, false).is_err(), "{bad}");
        }
        assert!(Collector::parse("ftp://h:1", true).is_err());
    }

    #[test]
    fn reads_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tok");
        std::fs::write(&f, "  ldt_abc\n").unwrap();
        // The file wins over the environment; whitespace is trimmed.
        let t = Token::from_file_or_env(Some(&f), Some("other".into()))
            .unwrap()
            .unwrap();
        assert_eq!(t.secret(), "ldt_abc");
        assert_eq!(format!("{t:?}"), "Token(…)");
        let t = Token::from_file_or_env(None, Some(" env_tok ".into()))
            .unwrap()
            .unwrap();
        assert_eq!(t.secret(), "env_tok");
        assert_eq!(Token::from_file_or_env(None, None).unwrap(), None);
        std::fs::write(&f, " \n").unwrap();
        let e = Token::from_file_or_env(Some(&f), None).unwrap_err();
        assert!(e.contains("is empty"), "{e}");
        let e = Token::from_file_or_env(Some(&dir.path().join("none")), None).unwrap_err();
        assert!(e.contains("cannot read it"), "{e}");
        let e = Token::from_file_or_env(None, Some("".into())).unwrap_err();
        assert!(e.contains("LOGDOG_TOKEN is empty"), "{e}");
        std::fs::write(&f, "two words").unwrap();
        let e = Token::from_file_or_env(Some(&f), None).unwrap_err();
        assert!(!e.contains("two words"), "the token is not shown: {e}");
    }

    #[test]
    fn interceptor_adds_the_header() {
        let t = Token::new("tok", "test").unwrap();
        let mut auth = BearerAuth::new(Some(&t)).unwrap();
        assert!(!format!("{auth:?}").contains("tok\""));
        let req = auth.call(Request::new(())).unwrap();
        assert_eq!(req.metadata().get("authorization").unwrap(), "Bearer tok");
        let req = BearerAuth::default().call(Request::new(())).unwrap();
        assert!(req.metadata().get("authorization").is_none());
    }

    #[test]
    fn warns_of_cleartext_tokens() {
        let sec = ClientSecurity {
            ca: None,
            token: Some(Token::new("t", "test").unwrap()),
        };
        let far = Collector::parse("grpc://10.0.0.1:1", false).unwrap();
        assert!(sec.cleartext_warning(&far).is_some());
        let near = Collector::parse("grpc://localhost:1", false).unwrap();
        assert!(sec.cleartext_warning(&near).is_none());
        let tls = Collector::parse("grpcs://10.0.0.1:1", false).unwrap();
        assert!(sec.cleartext_warning(&tls).is_none());
    }

    #[test]
    fn secrets_are_fresh() {
        let a = new_prefix_secret().unwrap();
        let b = new_prefix_secret().unwrap();
        assert_eq!(a.len(), PREFIX_SECRET_LEN);
        assert_ne!(a, b);
    }

    #[test]
    fn recognises_tls_failures() {
        let c = Collector::parse("grpcs://127.0.0.1:9", false).unwrap();
        let s =
            Status::unavailable("error trying to connect: invalid peer certificate: UnknownIssuer");
        assert_eq!(
            tls_failure(&s, &c).unwrap(),
            "TLS handshake with 127.0.0.1:9 failed: invalid peer certificate: UnknownIssuer — \
             is --ca-cert the collector's CA?"
        );
        assert!(tls_failure(&Status::unavailable("connection refused"), &c).is_none());
        let s = Status::unavailable(
            "error trying to connect: invalid peer certificate: Other(OtherError(CaUsedAsEndEntity))",
        );
        assert!(
            tls_failure(&s, &c)
                .unwrap()
                .contains("basicConstraints CA:FALSE"),
            "{s:?}"
        );
    }
}
