//! Child-side client: open LogDog streams on the enclosing butler's stream server.
//!
//! A process started by `logdog_butler run` finds the butler's stream server in the environment
//! variable `LOGDOG_STREAM_SERVER_PATH` (e.g. `unix:/tmp/ld123456`). Every log stream is one
//! connection to that server: the client sends a handshake (magic bytes, a varint length and a
//! JSON header naming the stream) and then the stream's payload until it closes the connection.
//! This crate is the Rust counterpart of LogDog's Go `streamclient` and `butlerlib/bootstrap`.
//!
//! It is plain synchronous `std` I/O, so any program can use it without an async runtime.
//!
//! # Example
//!
//! ```no_run
//! use std::io::Write;
//! use logdog_client::{Client, StreamOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Reads LOGDOG_STREAM_SERVER_PATH and LOGDOG_NAMESPACE.
//! let client = Client::from_env()?;
//!
//! // A text stream.
//! let mut log = client.open_text("steps/compile", &StreamOptions::new().tag("step", "compile"))?;
//! writeln!(log, "compiling…")?;
//! log.close()?;
//!
//! // A datagram stream: each datagram is delivered as one unit.
//! let mut dg = client.open_datagram("metrics", &StreamOptions::new())?;
//! dg.write_datagram(b"\x08\x01")?;
//! dg.close()?;
//!
//! // Hand a stream to a child process as its stdout.
//! let out = client.open_text("tool/stdout", &StreamOptions::new())?;
//! let status = std::process::Command::new("make").stdout(out.into_stdio()).status()?;
//! # let _ = status;
//! # Ok(())
//! # }
//! ```
//!
//! # Errors are (mostly) silent
//!
//! The stream server **never answers**: there is no back-channel in the protocol. This client
//! checks everything it can before connecting (the stream name, tags, timestamp, the server
//! address) and reports those problems as [`ClientError`]s. But if the butler rejects a stream
//! after the handshake — for example because the name is already taken, or its namespace has
//! been drained — the connection is simply closed. That shows up here only as a later write
//! failing (typically `EPIPE`, i.e. [`std::io::ErrorKind::BrokenPipe`], or `ECONNRESET`), or not
//! at all if everything written still fit in the socket buffer. The butler logs and counts every
//! rejection, so look there when a stream goes missing.
//!
//! A client that must know can ask for a verdict (an extension of ours, ignored by LogDog's
//! servers): open the stream with [`StreamOptions::verdict`] and end it with
//! [`Stream::finish`], which returns [`Verdict::Accepted`], [`Verdict::Refused`] with the
//! reason, or `None` from a server that does not give verdicts. `logdog_butler pipe` does this.
//!
//! # Addresses
//!
//! * `unix:<path>` — a Unix-domain stream socket. The path must exist and be a socket when the
//!   [`Client`] is created.
//! * `null` — every stream discards what is written to it (LogDog's null protocol). Useful when
//!   a program should run the same way with or without a butler.
//!
//! Anything else is refused with "no protocol registered for [...]".

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{SystemTime, UNIX_EPOCH};

use logdog_proto::handshake::{MAX_VERDICT_LINE, encode_handshake_with, put_uvarint};
use logdog_proto::logpb::LogStreamDescriptor;
use logdog_proto::types::{self, InvalidName};
use logdog_proto::{MAX_DATAGRAM_SIZE, StreamType, default_content_type};

pub use logdog_bootstrap::Environment;
use logdog_bootstrap::{NAMESPACE, STREAM_SERVER_PATH};
pub use logdog_proto::handshake::Verdict;

/// Why a [`Client`] could not be created or a stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `LOGDOG_STREAM_SERVER_PATH` is not set: the process was not started by a butler.
    #[error("not bootstrapped: {STREAM_SERVER_PATH} is not set")]
    NotBootstrapped,
    /// The address names a protocol this client does not know.
    #[error("no protocol registered for [{0}]")]
    NoProtocol(String),
    /// The address has a known protocol but an unusable value (e.g. `unix:` with no path).
    #[error("invalid stream server address {address:?}: {reason}")]
    BadAddress {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The socket path of a `unix:` address cannot be examined (typically it does not exist).
    #[error("stream server socket {}: {source}", path.display())]
    SocketUnavailable {
        /// The socket path.
        path: PathBuf,
        /// The error from examining it.
        source: io::Error,
    },
    /// The path of a `unix:` address exists but is not a socket.
    #[error("stream server path {} is not a Unix socket", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A bootstrap environment variable holds an invalid value.
    #[error("invalid {var}: {source}")]
    InvalidEnvironment {
        /// The variable.
        var: &'static str,
        /// What is wrong with its value.
        source: InvalidName,
    },
    /// The stream's name, tags or timestamp break LogDog's rules. Nothing was sent.
    #[error("attempting to connect stream {name:?}: invalid stream descriptor: {source}")]
    InvalidDescriptor {
        /// The full stream name (namespace included).
        name: String,
        /// The rule that was broken.
        source: InvalidName,
    },
    /// Connecting to the stream server or writing the handshake failed.
    #[error("attempting to connect stream {name:?}: {source}")]
    Connect {
        /// The full stream name (namespace included).
        name: String,
        /// The I/O error.
        source: io::Error,
    },
}

impl From<ClientError> for io::Error {
    /// Converts to an [`io::Error`] (keeping the kind of an underlying I/O error), for programs
    /// that propagate `io::Result`.
    fn from(e: ClientError) -> io::Error {
        let kind = match &e {
            ClientError::NotBootstrapped => io::ErrorKind::NotFound,
            ClientError::SocketUnavailable { source, .. } | ClientError::Connect { source, .. } => {
                source.kind()
            }
            ClientError::NoProtocol(_)
            | ClientError::BadAddress { .. }
            | ClientError::NotASocket { .. }
            | ClientError::InvalidEnvironment { .. }
            | ClientError::InvalidDescriptor { .. } => io::ErrorKind::InvalidInput,
        };
        io::Error::new(kind, e)
    }
}

/// Result type of this crate.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Where streams go.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Protocol {
    /// A Unix-domain stream socket.
    Unix(PathBuf),
    /// Discard everything.
    Null,
}

/// A connection factory for one butler's stream server.
///
/// Cheap to clone; it holds no connection itself — every `open_*` call makes a new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    address: String,
    protocol: Protocol,
    namespace: String,
    project: Option<String>,
    prefix: Option<String>,
    coordinator_host: Option<String>,
}

impl Client {
    /// Creates a client from this process's environment (`LOGDOG_STREAM_SERVER_PATH`,
    /// `LOGDOG_NAMESPACE`, and the project, prefix and coordinator host), as LogDog's
    /// `bootstrap.Get` does.
    ///
    /// # Errors
    /// [`ClientError::NotBootstrapped`] when `LOGDOG_STREAM_SERVER_PATH` is unset; otherwise
    /// as [`Client::from_lookup`].
    pub fn from_env() -> Result<Client> {
        Self::from_environment(&Environment::from_env())
    }

    /// Like [`Client::from_env`], but reads variables through `get` (for tests, or to read a
    /// saved environment).
    ///
    /// ```
    /// # use logdog_client::Client;
    /// let vars = [("LOGDOG_STREAM_SERVER_PATH", "null"), ("LOGDOG_NAMESPACE", "ns")];
    /// let client = Client::from_lookup(|k| {
    ///     vars.iter().find(|(name, _)| *name == k).map(|(_, v)| v.to_string())
    /// })
    /// .unwrap();
    /// assert_eq!(client.namespace(), "ns");
    /// ```
    ///
    /// # Errors
    /// [`ClientError::NotBootstrapped`] when the server path is unset (an empty value counts as
    /// set, and is then refused as an address); [`ClientError::InvalidEnvironment`] when a
    /// non-empty project, prefix or namespace is invalid; and whatever [`Client::new`] refuses.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Client> {
        Self::from_environment(&Environment::from_lookup(get))
    }

    /// Creates a client from already-read bootstrap values.
    ///
    /// # Errors
    /// As [`Client::from_lookup`].
    pub fn from_environment(env: &Environment) -> Result<Client> {
        let address = env
            .stream_server_path
            .as_deref()
            .ok_or(ClientError::NotBootstrapped)?;
        let non_empty = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
        let project = non_empty(&env.project);
        let prefix = non_empty(&env.prefix);
        let namespace = non_empty(&env.namespace);
        let invalid = |var| move |source| ClientError::InvalidEnvironment { var, source };
        if let Some(p) = &project {
            types::validate_project(p).map_err(invalid(logdog_bootstrap::STREAM_PROJECT))?;
        }
        if let Some(p) = &prefix {
            types::validate_prefix(p).map_err(invalid(logdog_bootstrap::STREAM_PREFIX))?;
        }
        if let Some(ns) = &namespace {
            // Namespaces are joined with `concat`, which strips surrounding slashes, so "ns/" is
            // as good as "ns".
            let trimmed = ns.trim_matches('/');
            if !trimmed.is_empty() {
                types::validate_stream_name(trimmed).map_err(invalid(NAMESPACE))?;
            }
        }
        let mut client = Client::new(address, namespace.as_deref())?;
        client.project = project;
        client.prefix = prefix;
        client.coordinator_host = non_empty(&env.coordinator_host);
        Ok(client)
    }

    /// Creates a client for a stream server address (`unix:<path>` or `null`). Every stream name
    /// is put under `namespace` (see [`concat()`]).
    ///
    /// ```
    /// # use logdog_client::Client;
    /// let client = Client::new("null", Some("ns")).unwrap();
    /// assert!(Client::new("tcp:localhost:1234", None).is_err());
    /// ```
    ///
    /// # Errors
    /// [`ClientError::NoProtocol`] for an unknown protocol; for `unix:`, an empty path, a path
    /// that cannot be examined ([`ClientError::SocketUnavailable`]) or is not a socket
    /// ([`ClientError::NotASocket`]).
    pub fn new(address: &str, namespace: Option<&str>) -> Result<Client> {
        let (proto, value) = address.split_once(':').unwrap_or((address, ""));
        let protocol = match proto {
            "unix" => {
                if value.is_empty() {
                    return Err(ClientError::BadAddress {
                        address: address.to_string(),
                        reason: "empty socket path",
                    });
                }
                let path = PathBuf::from(value);
                let meta =
                    std::fs::metadata(&path).map_err(|source| ClientError::SocketUnavailable {
                        path: path.clone(),
                        source,
                    })?;
                if !meta.file_type().is_socket() {
                    return Err(ClientError::NotASocket { path });
                }
                Protocol::Unix(path)
            }
            "null" => Protocol::Null,
            other => return Err(ClientError::NoProtocol(other.to_string())),
        };
        Ok(Client {
            address: address.to_string(),
            protocol,
            namespace: namespace.unwrap_or_default().to_string(),
            project: None,
            prefix: None,
            coordinator_host: None,
        })
    }

    /// The stream server address this client was created with.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The namespace put in front of every stream name (empty for none).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The butler's project (`LOGDOG_STREAM_PROJECT`), if the client was made from the
    /// environment and it was set.
    pub fn project(&self) -> Option<&str> {
        self.project.as_deref()
    }

    /// The butler's prefix (`LOGDOG_STREAM_PREFIX`), if the client was made from the environment
    /// and it was set.
    pub fn prefix(&self) -> Option<&str> {
        self.prefix.as_deref()
    }

    /// Where the logs end up (`LOGDOG_COORDINATOR_HOST`), if the client was made from the
    /// environment and it was set.
    pub fn coordinator_host(&self) -> Option<&str> {
        self.coordinator_host.as_deref()
    }

    /// The full name a stream called `name` gets: [`concat()`] of the namespace and `name`.
    pub fn full_name(&self, name: &str) -> String {
        concat(&[&self.namespace, name])
    }

    /// Opens a text stream. Write UTF-8 lines to it; the butler splits them.
    ///
    /// # Errors
    /// [`ClientError::InvalidDescriptor`] (nothing sent) or [`ClientError::Connect`].
    pub fn open_text(&self, name: &str, opts: &StreamOptions) -> Result<Stream> {
        let (name, conn) = self.connect(name, StreamType::Text, opts)?;
        Ok(Stream { name, conn })
    }

    /// Opens a binary stream: raw bytes until the stream is closed.
    ///
    /// # Errors
    /// [`ClientError::InvalidDescriptor`] (nothing sent) or [`ClientError::Connect`].
    pub fn open_binary(&self, name: &str, opts: &StreamOptions) -> Result<Stream> {
        let (name, conn) = self.connect(name, StreamType::Binary, opts)?;
        Ok(Stream { name, conn })
    }

    /// Opens a datagram stream: a sequence of separately delivered messages.
    ///
    /// # Errors
    /// [`ClientError::InvalidDescriptor`] (nothing sent) or [`ClientError::Connect`].
    pub fn open_datagram(&self, name: &str, opts: &StreamOptions) -> Result<DatagramStream> {
        let (name, conn) = self.connect(name, StreamType::Datagram, opts)?;
        Ok(DatagramStream { name, conn })
    }

    /// Validates the descriptor, connects, and writes the handshake.
    fn connect(
        &self,
        name: &str,
        kind: StreamType,
        opts: &StreamOptions,
    ) -> Result<(String, Conn)> {
        let full = self.full_name(name);
        let desc = match opts.descriptor(&full, kind) {
            Ok(desc) => desc,
            Err(source) => return Err(ClientError::InvalidDescriptor { name: full, source }),
        };
        let conn = match &self.protocol {
            Protocol::Null => Conn::Null,
            Protocol::Unix(path) => {
                let dial = || -> io::Result<UnixStream> {
                    let mut sock = UnixStream::connect(path)?;
                    sock.write_all(&encode_handshake_with(&desc, opts.verdict))?;
                    Ok(sock)
                };
                match dial() {
                    Ok(sock) => Conn::Unix(sock),
                    Err(source) => return Err(ClientError::Connect { name: full, source }),
                }
            }
        };
        Ok((full, conn))
    }
}

/// Joins stream-name parts LogDog-style (`types.Concat`): strips leading and trailing `/` from
/// each part, skips parts that are then empty, and joins the rest with `/`.
///
/// ```
/// assert_eq!(logdog_client::concat(&["ns/", "a"]), "ns/a");
/// assert_eq!(logdog_client::concat(&["ns", "/a/"]), "ns/a");
/// assert_eq!(logdog_client::concat(&["", "a"]), "a");
/// ```
pub fn concat(parts: &[&str]) -> String {
    parts
        .iter()
        .map(|p| p.trim_matches('/'))
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("/")
}

/// Options for a new stream.
///
/// ```
/// # use logdog_client::StreamOptions;
/// let opts = StreamOptions::new()
///     .content_type("text/x-log")
///     .tag("step", "compile")
///     .timestamp(std::time::SystemTime::now());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamOptions {
    content_type: Option<String>,
    tags: BTreeMap<String, String>,
    timestamp: Option<SystemTime>,
    verdict: bool,
}

/// Earliest and latest timestamps (seconds since the Unix epoch) that RFC 3339 and protobuf
/// `Timestamp` can carry: 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z.
const MIN_TIMESTAMP_SECS: i64 = -62_135_596_800;
const MAX_TIMESTAMP_SECS: i64 = 253_402_300_799;

impl StreamOptions {
    /// Default options: content type by stream type, no tags, timestamp "now" at open.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the content type. Empty means the default for the stream type
    /// (`text/plain; charset=utf-8`, `application/octet-stream` or
    /// `application/x-logdog-datagram`).
    pub fn content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }

    /// Adds (or replaces) one tag. Tags are validated when the stream is opened: the key must be
    /// a valid stream name of at most 64 bytes, the value at most 4096 bytes.
    pub fn tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.tags.insert(key.into(), value.into());
        self
    }

    /// Replaces the whole tag map (like LogDog's `WithTagMap`).
    pub fn tags<K, V>(mut self, tags: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        self.tags = tags
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        self
    }

    /// Sets the stream's timestamp (its creation time). Without it, the time the stream is
    /// opened is used, as LogDog's Go client does.
    pub fn timestamp(mut self, timestamp: SystemTime) -> Self {
        self.timestamp = Some(timestamp);
        self
    }

    /// Asks the butler to say whether it takes the stream (an extension of ours; see
    /// [`logdog_proto::handshake::VERDICT_FLAG`]). Read the answer with
    /// [`Stream::finish`] or [`DatagramStream::finish`]. LogDog's servers ignore the request.
    pub fn verdict(mut self) -> Self {
        self.verdict = true;
        self
    }

    /// Builds and validates the descriptor for a stream with this full name.
    fn descriptor(&self, name: &str, kind: StreamType) -> Result<LogStreamDescriptor, InvalidName> {
        types::validate_stream_name(name)?;
        for (k, v) in &self.tags {
            types::validate_tag(k, v)?;
        }
        let timestamp = to_timestamp(self.timestamp.unwrap_or_else(SystemTime::now))?;
        let content_type = match self.content_type.as_deref() {
            Some(ct) if !ct.is_empty() => ct.to_string(),
            _ => default_content_type(kind).to_string(),
        };
        // The butler and the collector refuse a descriptor over these limits.
        types::validate_descriptor_fields(
            &content_type,
            self.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )?;
        Ok(LogStreamDescriptor {
            name: name.to_string(),
            stream_type: kind as i32,
            content_type,
            timestamp: Some(timestamp),
            tags: self.tags.clone(),
            ..Default::default()
        })
    }
}

/// Converts to a protobuf timestamp, refusing times RFC 3339 cannot express.
fn to_timestamp(t: SystemTime) -> Result<prost_types::Timestamp, InvalidName> {
    let (seconds, nanos) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (i64::try_from(d.as_secs()).ok(), d.subsec_nanos() as i32),
        Err(e) => {
            let d = e.duration();
            let secs = i64::try_from(d.as_secs()).ok().map(|s| -s);
            match d.subsec_nanos() {
                0 => (secs, 0),
                n => (
                    secs.and_then(|s| s.checked_sub(1)),
                    1_000_000_000 - n as i32,
                ),
            }
        }
    };
    match seconds {
        Some(seconds) if (MIN_TIMESTAMP_SECS..=MAX_TIMESTAMP_SECS).contains(&seconds) => {
            Ok(prost_types::Timestamp { seconds, nanos })
        }
        _ => Err(InvalidName {
            what: "timestamp",
            value: format!("{t:?}"),
            reason: "outside the range 0001-01-01 to 9999-12-31".to_string(),
        }),
    }
}

/// The connection behind a stream.
#[derive(Debug)]
enum Conn {
    Unix(UnixStream),
    Null,
    /// Already closed or handed over.
    Gone,
}

impl Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.write(buf),
            Conn::Null => Ok(buf.len()),
            Conn::Gone => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "stream is closed",
            )),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Conn::Unix(s) => s.write_all(buf),
            Conn::Null => Ok(()),
            Conn::Gone => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "stream is closed",
            )),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Unix(s) => s.flush(),
            Conn::Null | Conn::Gone => Ok(()),
        }
    }

    /// Ends the stream and reads the butler's verdict (see [`StreamOptions::verdict`]).
    fn finish(&mut self) -> io::Result<Option<Verdict>> {
        use std::io::Read;
        let Conn::Unix(s) = std::mem::replace(self, Conn::Gone) else {
            return Ok(None);
        };
        // An error here means the butler has gone already (it may have refused the stream,
        // and its verdict waits to be read); the connection ends when dropped regardless.
        let _ = s.shutdown(Shutdown::Write);
        // The butler writes its verdict as soon as it has decided, then nothing more; the
        // connection ends once it has read the stream to its end. A server that does not
        // know verdicts just ends it.
        let mut line = Vec::new();
        let mut buf = [0u8; 512];
        let mut s = &s;
        while !line.contains(&b'\n') && line.len() < MAX_VERDICT_LINE {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => line.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // A reset after the butler closed a refused stream ends the reply too.
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
                Err(e) => return Err(e),
            }
        }
        if line.is_empty() {
            return Ok(None);
        }
        match Verdict::parse(line.split(|&b| b == b'\n').next().unwrap_or_default()) {
            Some(v) => Ok(Some(v)),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the butler answered {:?}, not a verdict",
                    String::from_utf8_lossy(&line)
                ),
            )),
        }
    }

    /// Shuts down the write half, so the butler sees end of stream; the socket itself is closed
    /// when dropped.
    fn close(&mut self) -> io::Result<()> {
        match std::mem::replace(self, Conn::Gone) {
            Conn::Unix(s) => match s.shutdown(Shutdown::Write) {
                // The butler may already have closed its end (e.g. it rejected the stream).
                Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
                r => r,
            },
            Conn::Null | Conn::Gone => Ok(()),
        }
    }
}

/// An open text or binary stream. Write to it with [`std::io::Write`]; close it with
/// [`Stream::close`] (or drop it) to end the stream.
///
/// Writes go straight to the socket (no buffering here); wrap the stream in a
/// [`std::io::BufWriter`] for many small writes. A write that fails with `BrokenPipe` usually
/// means the butler rejected the stream (see the [crate docs](crate)).
#[derive(Debug)]
pub struct Stream {
    name: String,
    conn: Conn,
}

impl Stream {
    /// The stream's full name (namespace included).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Ends the stream: shuts down the write half of the connection, so the butler sees end of
    /// file and finalises the stream.
    ///
    /// # Errors
    /// The error from `shutdown(2)`.
    pub fn close(mut self) -> io::Result<()> {
        self.conn.close()
    }

    /// Ends the stream like [`close`](Self::close), then, for a stream opened with
    /// [`StreamOptions::verdict`], waits for the butler's [`Verdict`]. `None` means the butler
    /// said nothing (it does not know verdicts, or none was asked for) and closed the
    /// connection once it had read the stream. Also the way to learn why writes failed: a
    /// refused stream's writes fail (`BrokenPipe`), and its verdict says why.
    ///
    /// # Errors
    /// The error from reading the answer, or an answer that is not a verdict.
    pub fn finish(mut self) -> io::Result<Option<Verdict>> {
        self.conn.finish()
    }

    /// Hands the connection to a child process, e.g. as its stdout or stderr (LogDog's
    /// `ForProcess`). The handshake has already been written, so the child just writes payload.
    ///
    /// The stream ends when every copy of the descriptor is closed: the child's, and the one
    /// held by the [`std::process::Command`] — so drop the `Command` once the child has been
    /// spawned. For the `null` address this is [`Stdio::null`].
    ///
    /// ```no_run
    /// # let client = logdog_client::Client::from_env()?;
    /// let out = client.open_text("tool/stdout", &logdog_client::StreamOptions::new())?;
    /// let status = std::process::Command::new("sh")
    ///     .args(["-c", "echo hello"])
    ///     .stdout(out.into_stdio())
    ///     .status()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn into_stdio(mut self) -> Stdio {
        match std::mem::replace(&mut self.conn, Conn::Gone) {
            Conn::Unix(s) => Stdio::from(OwnedFd::from(s)),
            Conn::Null | Conn::Gone => Stdio::null(),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.conn.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.conn.write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.conn.flush()
    }
}

impl Drop for Stream {
    /// Closes the stream (errors are ignored; use [`Stream::close`] to see them).
    fn drop(&mut self) {
        let _ = self.conn.close();
    }
}

/// An open datagram stream. Each [`DatagramStream::write_datagram`] call is delivered as one
/// datagram; close it with [`DatagramStream::close`] (or drop it) to end the stream.
#[derive(Debug)]
pub struct DatagramStream {
    name: String,
    conn: Conn,
}

impl DatagramStream {
    /// The stream's full name (namespace included).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends one datagram: its length as an unsigned LEB128 varint, then its bytes, in a single
    /// write. An empty datagram is allowed.
    ///
    /// # Errors
    /// [`io::ErrorKind::InvalidInput`] for a datagram over [`MAX_DATAGRAM_SIZE`] (10 MiB;
    /// nothing is sent, the stream stays usable); otherwise the write error.
    pub fn write_datagram(&mut self, datagram: &[u8]) -> io::Result<()> {
        if datagram.len() > MAX_DATAGRAM_SIZE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "datagram of {} bytes exceeds the {MAX_DATAGRAM_SIZE}-byte limit",
                    datagram.len()
                ),
            ));
        }
        let mut frame = Vec::with_capacity(datagram.len() + 4);
        put_uvarint(&mut frame, datagram.len() as u64);
        frame.extend_from_slice(datagram);
        self.conn.write_all(&frame)
    }

    /// Ends the stream: shuts down the write half of the connection.
    ///
    /// # Errors
    /// The error from `shutdown(2)`.
    pub fn close(mut self) -> io::Result<()> {
        self.conn.close()
    }

    /// Ends the stream and waits for the butler's verdict, as [`Stream::finish`] does.
    ///
    /// # Errors
    /// As for [`Stream::finish`].
    pub fn finish(mut self) -> io::Result<Option<Verdict>> {
        self.conn.finish()
    }
}

impl Drop for DatagramStream {
    /// Closes the stream (errors are ignored; use [`DatagramStream::close`] to see them).
    fn drop(&mut self) {
        let _ = self.conn.close();
    }
}
