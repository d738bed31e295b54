//! The command `run` starts: in a process group of its own, its output on pipes or on a
//! pseudo-terminal.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use anyhow::Context as _;
use nix::pty::Winsize;
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::process::{Child, Command};

/// Capacity asked for the command's stdout and stderr pipes.
const PIPE_SIZE: i32 = 1024 * 1024;

/// The terminal size of `--pty` when neither `--pty-size` nor the butler's own terminal gives
/// one.
pub const DEFAULT_PTY_SIZE: (u16, u16) = (200, 50);

/// How the command is started.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    /// Passes the butler's stdin to the command.
    pub forward_stdin: bool,
    /// Runs it on a pseudo-terminal of this size (columns, rows).
    pub pty: Option<(u16, u16)>,
}

/// Which of the command's outputs a [`Captured`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// Its stdout (with `--pty`: the terminal, stdout and stderr together).
    Stdout,
    /// Its stderr.
    Stderr,
}

/// One output of the command, to be read as a stream.
pub struct Captured {
    /// Which output it is.
    pub which: Which,
    /// Its bytes.
    pub reader: logdog_butler::Source,
    /// Set once the reader has reached its end.
    pub ended: Arc<AtomicBool>,
    /// A second descriptor of it, to count what was left unread when reading stopped early.
    pub peek: Option<OwnedFd>,
}

/// A started command.
pub struct Spawned {
    /// The process.
    pub child: Child,
    /// Its process group (the group leader is the command itself).
    pub pgid: Option<Pid>,
    /// Its outputs.
    pub outputs: Vec<Captured>,
}

/// Starts `cmd` in a process group of its own (with `--pty`, a session of its own on the
/// terminal), its stdin and outputs set as `setup` says.
///
/// # Errors
/// The pseudo-terminal or a pipe cannot be made, or the command cannot be started.
pub fn spawn(mut cmd: Command, setup: Setup) -> anyhow::Result<Spawned> {
    match setup.pty {
        Some(size) => spawn_on_pty(cmd, setup.forward_stdin, size),
        None => {
            cmd.process_group(0);
            let mut stdin_feed = None;
            if !setup.forward_stdin {
                cmd.stdin(Stdio::null());
            } else if std::io::stdin().is_terminal_like() {
                // A process group that is not the terminal's foreground group is stopped when
                // it reads the terminal: the butler reads it and feeds a pipe instead.
                let (r, w) = std::io::pipe().context("cannot make a pipe for stdin")?;
                cmd.stdin(Stdio::from(r));
                stdin_feed = Some(File::from(OwnedFd::from(w)));
            } else {
                cmd.stdin(Stdio::inherit());
            }
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            let mut child = cmd.spawn()?;
            // The pipe's read end must be closed here, or the command never sees end of file.
            drop(cmd);
            if let Some(w) = stdin_feed {
                forward_stdin(w, None);
            }
            let mut outputs = Vec::new();
            if let Some(p) = child.stdout.take() {
                outputs.push(captured(Which::Stdout, p));
            }
            if let Some(p) = child.stderr.take() {
                outputs.push(captured(Which::Stderr, p));
            }
            Ok(Spawned {
                pgid: pid_of(&child),
                child,
                outputs,
            })
        }
    }
}

/// Whether a descriptor is a terminal.
trait TerminalLike {
    fn is_terminal_like(&self) -> bool;
}

impl<T: AsFd> TerminalLike for T {
    fn is_terminal_like(&self) -> bool {
        rustix::termios::isatty(self.as_fd())
    }
}

fn pid_of(child: &Child) -> Option<Pid> {
    child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .map(Pid::from_raw)
}

/// A pipe of the command as a stream source (a bigger pipe means fewer wake-ups when the
/// command writes fast; Linux only, best effort).
fn captured<P: AsyncRead + AsFd + Send + Unpin + 'static>(which: Which, pipe: P) -> Captured {
    let _ = nix::fcntl::fcntl(pipe.as_fd(), nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
    let peek = pipe.as_fd().try_clone_to_owned().ok();
    let ended = Arc::new(AtomicBool::new(false));
    Captured {
        which,
        reader: Box::new(Watched {
            inner: pipe,
            ended: ended.clone(),
        }),
        ended,
        peek,
    }
}

/// The size of the butler's own terminal (stdout's, stderr's or stdin's), if it has one.
pub fn own_terminal_size() -> Option<(u16, u16)> {
    let fds = [
        std::io::stdout().as_fd().try_clone_to_owned().ok(),
        std::io::stderr().as_fd().try_clone_to_owned().ok(),
        std::io::stdin().as_fd().try_clone_to_owned().ok(),
    ];
    fds.iter()
        .flatten()
        .filter_map(|fd| rustix::termios::tcgetwinsize(fd).ok())
        .find(|w| w.ws_col > 0 && w.ws_row > 0)
        .map(|w| (w.ws_col, w.ws_row))
}

fn spawn_on_pty(
    mut cmd: Command,
    forward: bool,
    (cols, rows): (u16, u16),
) -> anyhow::Result<Spawned> {
    let size = Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None).context("cannot open a pseudo-terminal")?;
    // Newlines stay newlines (a terminal would write \r\n): the stream reads like the pipe's.
    let mut tio =
        nix::sys::termios::tcgetattr(&pty.slave).context("cannot read the terminal's settings")?;
    tio.output_flags
        .remove(nix::sys::termios::OutputFlags::ONLCR);
    nix::sys::termios::tcsetattr(&pty.slave, nix::sys::termios::SetArg::TCSANOW, &tio)
        .context("cannot set the terminal's settings")?;
    let dup = |fd: &OwnedFd| {
        fd.try_clone()
            .context("cannot duplicate the pseudo-terminal")
    };
    cmd.stdout(Stdio::from(dup(&pty.slave)?))
        .stderr(Stdio::from(dup(&pty.slave)?));
    if forward {
        cmd.stdin(Stdio::from(dup(&pty.slave)?));
    } else {
        cmd.stdin(Stdio::null());
    }
    drop(pty.slave);
    set_controlling_terminal(&mut cmd);
    let child = cmd.spawn()?;
    // Every copy of the terminal's slave side in the butler must be closed: the master reads
    // end of file (EIO) once the command's processes have closed theirs.
    drop(cmd);
    let master = pty.master;
    let peek = master.try_clone().ok();
    if forward {
        let w = master
            .try_clone()
            .context("cannot duplicate the pseudo-terminal")?;
        forward_stdin(File::from(w), Some(VEOF));
    }
    let fl = nix::fcntl::fcntl(&master, nix::fcntl::FcntlArg::F_GETFL)
        .context("cannot read the pseudo-terminal's flags")?;
    let fl = nix::fcntl::OFlag::from_bits_truncate(fl) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&master, nix::fcntl::FcntlArg::F_SETFL(fl))
        .context("cannot make the pseudo-terminal non-blocking")?;
    let ended = Arc::new(AtomicBool::new(false));
    let reader = PtyReader::new(File::from(master)).context("cannot watch the pseudo-terminal")?;
    Ok(Spawned {
        pgid: pid_of(&child),
        child,
        outputs: vec![Captured {
            which: Which::Stdout,
            reader: Box::new(Watched {
                inner: reader,
                ended: ended.clone(),
            }),
            ended,
            peek,
        }],
    })
}

/// The terminal's end-of-file character (Ctrl-D), written when the butler's stdin ends.
const VEOF: u8 = 0x04;

/// Makes the command the leader of a new session whose controlling terminal is its stdout
/// (the pseudo-terminal): job control and `/dev/tty` work, and its process group is its own.
#[allow(unsafe_code)]
fn set_controlling_terminal(cmd: &mut Command) {
    // SAFETY: the closure runs in the child between fork and exec; it only makes two system
    // calls (setsid, ioctl), which are async-signal-safe, and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::setsid()?;
            rustix::process::ioctl_tiocsctty(std::io::stdout())?;
            Ok(())
        });
    }
}

/// Copies the butler's stdin to `w` on a thread of its own (a read of stdin cannot be
/// cancelled; the thread ends with the process). At end of input, writes `eof` (the
/// terminal's end-of-file character) if given, else closes `w`.
fn forward_stdin(mut w: File, eof: Option<u8>) {
    let spawned = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; 64 * 1024];
            let mut last = b'\n';
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                if write_all(&mut w, &buf[..n]).is_err() {
                    return;
                }
                last = buf[n - 1];
            }
            if let Some(eof) = eof {
                // Mid-line, the first end-of-file character only ends the line.
                let eofs: &[u8] = if last == b'\n' { &[eof] } else { &[eof, eof] };
                let _ = write_all(&mut w, eofs);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start forwarding stdin");
    }
}

/// Writes all of `data` to `w`, which may be non-blocking (the pseudo-terminal's master).
fn write_all(w: &mut File, mut data: &[u8]) -> std::io::Result<()> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    while !data.is_empty() {
        match w.write(data) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let mut fds = [PollFd::new(w.as_fd(), PollFlags::POLLOUT)];
                let _ = poll(&mut fds, PollTimeout::from(1000u16));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The master side of a pseudo-terminal, read without blocking. Linux reports EIO once the
/// slave side is closed by every process: that is its end of file.
struct PtyReader {
    fd: AsyncFd<File>,
}

impl PtyReader {
    /// Watches `master` (non-blocking) for reads.
    #[allow(unsafe_code)]
    fn new(master: File) -> std::io::Result<Self> {
        // SAFETY: the File owns its descriptor, which therefore stays open and the same for
        // as long as the AsyncFd (which owns the File) lives.
        let fd = unsafe {
            AsyncFd::register_with_interest(master, tokio::io::Interest::READABLE)
                .map_err(std::io::Error::from)?
        };
        Ok(Self { fd })
    }
}

impl AsyncRead for PtyReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|f| f.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => {}
            }
        }
    }
}

/// A reader that records when it has reached its end.
struct Watched<R> {
    inner: R,
    ended: Arc<AtomicBool>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Watched<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let room = buf.remaining() > 0;
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        if room && buf.filled().len() == before {
            self.ended.store(true, Ordering::SeqCst);
        }
        Poll::Ready(Ok(()))
    }
}

/// Bytes waiting unread in `fd` (a pipe or a terminal), if that can be told.
pub fn unread_bytes(fd: &OwnedFd) -> Option<u64> {
    rustix::io::ioctl_fionread(fd).ok()
}
