//! The transport layer: a UDP socket, or a TCP connection with or without TLS.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// How long a datagram may wait for room in the socket's send buffer before it is dropped.
pub const UDP_SEND_WAIT: Duration = Duration::from_millis(50);

/// How long a TCP connection (and its TLS handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a transport could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The address did not resolve.
    #[error("cannot resolve {host_port}: {reason}")]
    Resolve {
        /// The address.
        host_port: String,
        /// Why.
        reason: String,
    },
    /// A socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The TLS set-up failed.
    #[error("TLS: {0}")]
    Tls(String),
}

fn resolve(host_port: &str) -> Result<SocketAddr, TransportError> {
    let err = |reason: String| TransportError::Resolve {
        host_port: host_port.to_owned(),
        reason,
    };
    host_port
        .to_socket_addrs()
        .map_err(|e| err(e.to_string()))?
        .next()
        .ok_or_else(|| err("no address".to_owned()))
}

/// A connected, non-blocking UDP socket.
#[derive(Debug)]
pub struct UdpTransport {
    sock: UdpSocket,
}

/// What became of one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Handed to the kernel.
    Yes,
    /// Dropped: the send buffer stayed full, or the socket reported an error (such as a
    /// refused port).
    Dropped,
}

impl UdpTransport {
    /// A socket connected to `host_port` (resolved now).
    ///
    /// # Errors
    /// The address does not resolve, or the socket cannot be made.
    pub fn connect(host_port: &str) -> Result<Self, TransportError> {
        let addr = resolve(host_port)?;
        let io = |context: &str| {
            let context = format!("{context} {addr}");
            move |source| TransportError::Io { context, source }
        };
        let local: SocketAddr = if addr.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            ([0u16; 8], 0).into()
        };
        let sock = UdpSocket::bind(local).map_err(io("cannot open a UDP socket for"))?;
        sock.connect(addr)
            .map_err(io("cannot connect a UDP socket to"))?;
        sock.set_nonblocking(true)
            .map_err(io("cannot make the UDP socket non-blocking for"))?;
        Ok(Self { sock })
    }

    /// Sends one datagram, waiting at most [`UDP_SEND_WAIT`] for room.
    pub async fn send(&self, datagram: &[u8]) -> Sent {
        let deadline = tokio::time::Instant::now() + UDP_SEND_WAIT;
        loop {
            match self.sock.send(datagram) {
                Ok(_) => return Sent::Yes,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if tokio::time::Instant::now() >= deadline {
                        return Sent::Dropped;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Sent::Dropped,
            }
        }
    }
}

/// A byte stream to the receiver.
pub type Conn = Box<dyn AsyncWrite + Send + Unpin>;

/// Opens TCP connections, with TLS or without, to one receiver.
#[derive(Clone)]
pub struct StreamConnector {
    host_port: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl std::fmt::Debug for StreamConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamConnector")
            .field("host_port", &self.host_port)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// The host part of `HOST:PORT` (brackets of an IPv6 literal removed).
fn host_of(host_port: &str) -> &str {
    let host = host_port.rsplit_once(':').map_or(host_port, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

impl StreamConnector {
    /// Connects to `host_port` without TLS.
    pub fn tcp(host_port: &str) -> Self {
        Self {
            host_port: host_port.to_owned(),
            tls: None,
        }
    }

    /// Connects to `host_port` with TLS, trusting the CA certificates in the PEM file `ca`,
    /// or the system's roots without it.
    ///
    /// # Errors
    /// The CA file cannot be read or holds no certificate, the system has no roots, or the
    /// host is not a valid server name.
    pub fn tls(host_port: &str, ca: Option<&Path>) -> Result<Self, TransportError> {
        let mut roots = rustls::RootCertStore::empty();
        match ca {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| TransportError::Tls(format!("{}: {e}", path.display())))?;
                for cert in certs {
                    let cert =
                        cert.map_err(|e| TransportError::Tls(format!("{}: {e}", path.display())))?;
                    roots
                        .add(cert)
                        .map_err(|e| TransportError::Tls(format!("{}: {e}", path.display())))?;
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(native.certs);
            }
        }
        if roots.is_empty() {
            return Err(TransportError::Tls(match ca {
                Some(p) => format!("{}: no certificate in it", p.display()),
                None => "the system has no trusted root certificates".to_owned(),
            }));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TransportError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from(host_of(host_port).to_owned())
            .map_err(|e| TransportError::Tls(format!("{host_port}: {e}")))?;
        Ok(Self {
            host_port: host_port.to_owned(),
            tls: Some((TlsConnector::from(Arc::new(config)), name)),
        })
    }

    /// The address connected to.
    pub fn host_port(&self) -> &str {
        &self.host_port
    }

    /// Opens one connection, within [`CONNECT_TIMEOUT`].
    ///
    /// # Errors
    /// The connection or the TLS handshake failed or timed out.
    pub async fn connect(&self) -> io::Result<Conn> {
        let fut = async {
            let tcp = TcpStream::connect(&self.host_port).await?;
            tcp.set_nodelay(true)?;
            Ok::<Conn, io::Error>(match &self.tls {
                None => Box::new(tcp),
                Some((connector, name)) => Box::new(connector.connect(name.clone(), tcp).await?),
            })
        };
        tokio::time::timeout(CONNECT_TIMEOUT, fut)
            .await
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn hosts() {
        assert_eq!(host_of("graylog.example:12201"), "graylog.example");
        assert_eq!(host_of("[::1]:12201"), "::1");
    }

    #[tokio::test]
    async fn udp_sends_and_counts_refusals() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let t = UdpTransport::connect(&rx.local_addr().unwrap().to_string()).unwrap();
        assert_eq!(t.send(b"hi").await, Sent::Yes);
        let mut buf = [0; 16];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hi");
        assert!(UdpTransport::connect("no-such-host.invalid:1").is_err());
    }

    #[tokio::test]
    async fn tcp_connects() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = StreamConnector::tcp(&l.local_addr().unwrap().to_string());
        let mut conn = c.connect().await.unwrap();
        conn.write_all(b"x\0").await.unwrap();
        conn.flush().await.unwrap();
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = [0; 2];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"x\0");
    }

    #[test]
    fn tls_needs_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ca.pem");
        std::fs::write(&p, "nothing").unwrap();
        assert!(StreamConnector::tls("h:1", Some(&p)).is_err());
        assert!(StreamConnector::tls("h:1", Some(&dir.path().join("none"))).is_err());
    }
}
