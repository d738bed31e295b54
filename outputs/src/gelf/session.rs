//! The session layer: one TCP (or TLS) connection kept up across failures.
//!
//! [`Session::write`] writes one batch of NUL-terminated messages, connecting first when
//! needed. When the connection fails it reconnects with exponential backoff (from
//! [`Backoff::initial`], doubling up to [`Backoff::max`]) and writes the whole batch again on
//! the new connection (a receiver may see a batch's first messages twice; it never sees a
//! message cut in two). A batch not written within [`Backoff::give_up_after`] is given up:
//! the session is then *down*, and until the next reconnect attempt is due every batch is
//! refused at once, so that a receiver that is gone does not hold the command back. The
//! caller counts what was refused. The only buffer is the batch in hand, whose size the
//! caller bounds.

use std::io;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::transport::{Conn, StreamConnector};

/// How long a write of one batch may take on an open connection.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Reconnect timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First wait after a failure.
    pub initial: Duration,
    /// Longest wait.
    pub max: Duration,
    /// How long one batch is retried before it is given up.
    pub give_up_after: Duration,
}

impl Default for Backoff {
    /// 100 ms, doubling to 5 s; a batch is given up after 30 s.
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
            give_up_after: Duration::from_secs(30),
        }
    }
}

/// Why a batch was not written.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The receiver could not be reached or written to in time.
    #[error("GELF receiver {host_port} unreachable: {source}")]
    Unreachable {
        /// The receiver.
        host_port: String,
        /// The last error.
        #[source]
        source: io::Error,
    },
}

struct State {
    conn: Option<Conn>,
    delay: Duration,
    next_attempt: Instant,
    down: bool,
    last_error: Option<io::Error>,
}

/// A connection to a GELF receiver, re-established as needed.
pub struct Session {
    connector: StreamConnector,
    backoff: Backoff,
    state: Mutex<State>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("connector", &self.connector)
            .field("backoff", &self.backoff)
            .finish()
    }
}

impl Session {
    /// A session that connects lazily, at the first write.
    pub fn new(connector: StreamConnector, backoff: Backoff) -> Self {
        Self {
            connector,
            backoff,
            state: Mutex::new(State {
                conn: None,
                delay: backoff.initial,
                next_attempt: Instant::now(),
                down: false,
                last_error: None,
            }),
        }
    }

    fn unreachable(&self, st: &mut State) -> SessionError {
        SessionError::Unreachable {
            host_port: self.connector.host_port().to_owned(),
            source: st
                .last_error
                .take()
                .unwrap_or_else(|| io::Error::other("not connected")),
        }
    }

    /// Writes `batch` (whole messages), reconnecting as described in the [module
    /// docs](self).
    ///
    /// # Errors
    /// The batch was given up, or refused because the session is down; nothing of it
    /// is known to have arrived.
    pub async fn write(&self, batch: &[u8]) -> Result<(), SessionError> {
        let mut st = self.state.lock().await;
        let deadline = Instant::now() + self.backoff.give_up_after;
        loop {
            if st.conn.is_none() {
                let now = Instant::now();
                if st.down && now < st.next_attempt {
                    return Err(self.unreachable(&mut st));
                }
                if now < st.next_attempt {
                    if st.next_attempt > deadline {
                        return Err(self.go_down(&mut st));
                    }
                    tokio::time::sleep_until(st.next_attempt).await;
                }
                match self.connector.connect().await {
                    Ok(c) => {
                        if st.down {
                            tracing::warn!(
                                receiver = self.connector.host_port(),
                                "GELF receiver reachable again"
                            );
                        }
                        st.conn = Some(c);
                        st.down = false;
                        st.delay = self.backoff.initial;
                    }
                    Err(e) => {
                        self.failed(&mut st, e);
                        if st.down {
                            return Err(self.unreachable(&mut st));
                        }
                        continue;
                    }
                }
            }
            let Some(conn) = st.conn.as_mut() else {
                continue;
            };
            let res = tokio::time::timeout(WRITE_TIMEOUT, async {
                conn.write_all(batch).await?;
                conn.flush().await
            })
            .await
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out")));
            match res {
                Ok(()) => return Ok(()),
                Err(e) => {
                    st.conn = None;
                    self.failed(&mut st, e);
                    if Instant::now() >= deadline {
                        return Err(self.go_down(&mut st));
                    }
                }
            }
        }
    }

    fn failed(&self, st: &mut State, e: io::Error) {
        tracing::debug!(receiver = self.connector.host_port(), error = %e, "GELF connection failed");
        st.last_error = Some(e);
        st.next_attempt = Instant::now() + st.delay;
        st.delay = (st.delay * 2).min(self.backoff.max);
    }

    fn go_down(&self, st: &mut State) -> SessionError {
        if !st.down {
            st.down = true;
            tracing::warn!(
                receiver = self.connector.host_port(),
                error = st.last_error.as_ref().map(|e| e.to_string()),
                "GELF receiver unreachable; messages are dropped (and counted) until it is back"
            );
        }
        self.unreachable(st)
    }

    /// Closes the connection, if one is open.
    pub async fn close(&self) {
        let mut st = self.state.lock().await;
        if let Some(mut c) = st.conn.take() {
            let _ = c.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    fn quick() -> Backoff {
        Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(40),
            give_up_after: Duration::from_millis(300),
        }
    }

    #[tokio::test]
    async fn reconnects_after_the_receiver_closes() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s = Session::new(
            StreamConnector::tcp(&l.local_addr().unwrap().to_string()),
            quick(),
        );
        s.write(b"a\0").await.unwrap();
        let (mut c1, _) = l.accept().await.unwrap();
        let mut buf = [0; 2];
        c1.read_exact(&mut buf).await.unwrap();
        drop(c1);
        // The first writes after the close may still succeed locally; keep writing until one
        // arrives on a new connection.
        let accept = tokio::spawn(async move {
            let (mut c2, _) = l.accept().await.unwrap();
            let mut buf = [0; 2];
            c2.read_exact(&mut buf).await.unwrap();
            buf
        });
        for _ in 0..200 {
            s.write(b"b\0").await.unwrap();
            if accept.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(&accept.await.unwrap(), b"b\0");
        s.close().await;
    }

    #[tokio::test]
    async fn gives_up_and_refuses_until_due() {
        // A port nobody listens on.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let s = Session::new(StreamConnector::tcp(&addr), quick());
        let t = Instant::now();
        assert!(s.write(b"a\0").await.is_err());
        assert!(t.elapsed() >= Duration::from_millis(150));
        // Down: refused at once.
        let t = Instant::now();
        assert!(s.write(b"a\0").await.is_err());
        assert!(t.elapsed() < Duration::from_millis(100));
    }
}
