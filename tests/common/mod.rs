//! Helpers shared by the end-to-end tests: running the butler with a watchdog, generating test
//! files, comparing files and reading descriptors.

#![allow(dead_code)]

pub mod pg;
pub mod pki;

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::Pid;

/// How long any one process may run before it is killed and the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// Environment variables a butler exports; removed from the butler's own environment so the
/// tests do not depend on the environment they run in.
const LOGDOG_VARS: [&str; 5] = [
    "LOGDOG_STREAM_SERVER_PATH",
    "LOGDOG_STREAM_PROJECT",
    "LOGDOG_STREAM_PREFIX",
    "LOGDOG_COORDINATOR_HOST",
    "LOGDOG_NAMESPACE",
];

/// A `logdog_butler` command running in `cwd` (so the default `./logdog-out` output, if ever
/// used, lands in a temporary directory), with `args`.
pub fn butler<S: AsRef<std::ffi::OsStr>>(cwd: &Path, args: &[S]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_logdog_butler"));
    cmd.current_dir(cwd).args(args).env_remove("RUST_LOG");
    for v in LOGDOG_VARS {
        cmd.env_remove(v);
    }
    // Nor on the variables that give the butler its flags (LOGDOG_OUTPUT, LOGDOG_RUN_NO_ECHO...);
    // the tests' own (LOGDOG_TEST_*) pass.
    for (name, _) in std::env::vars_os() {
        let n = name.to_string_lossy();
        if n.starts_with("LOGDOG_") && !n.starts_with("LOGDOG_TEST_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// `directory:PATH` for `--output`.
pub fn dir_output(dir: &Path) -> String {
    format!("directory:{}", dir.display())
}

/// What a finished process left behind.
#[derive(Debug)]
pub struct Finished {
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it wrote to stdout.
    pub stdout: Vec<u8>,
    /// Everything it wrote to stderr.
    pub stderr: Vec<u8>,
}

impl Finished {
    /// The exit code; fails the test if the process was killed by a signal.
    pub fn code(&self) -> i32 {
        match self.status.code() {
            Some(c) => c,
            None => panic!(
                "killed by signal {:?}; stderr:\n{}",
                self.status.signal(),
                self.stderr_str()
            ),
        }
    }

    /// Stdout, lossily decoded.
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Stderr, lossily decoded.
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// Fails the test unless the exit code is `want`.
    #[track_caller]
    pub fn assert_code(&self, want: i32) {
        assert_eq!(
            self.code(),
            want,
            "unexpected exit status; stdout:\n{}\nstderr:\n{}",
            self.stdout_str(),
            self.stderr_str()
        );
    }
}

/// What the process gets on stdin.
#[derive(Debug)]
pub enum Input {
    /// `/dev/null`.
    Null,
    /// These bytes, then end of file.
    Bytes(Vec<u8>),
    /// A pipe that stays open (no data, no end of file) until the process has exited.
    HeldOpen,
}

/// A process running in its own process group under a watchdog: if it has not exited after
/// [`TIMEOUT`] (or the limit given to [`Guarded::spawn_within`]), the whole group is killed
/// with SIGKILL and [`Guarded::wait`] fails the test.
pub struct Guarded {
    /// The process; its pipes may be taken.
    pub child: Child,
    what: String,
    done: Arc<(Mutex<bool>, Condvar)>,
    timed_out: Arc<AtomicBool>,
    limit: Duration,
    watchdog: Option<JoinHandle<()>>,
}

impl Guarded {
    /// Spawns `cmd` (in a new process group) under a watchdog. Pipes are as set on `cmd`.
    pub fn spawn(cmd: &mut Command) -> Self {
        Self::spawn_within(cmd, TIMEOUT)
    }

    /// Like [`Guarded::spawn`], with a watchdog that fires after `limit` instead of
    /// [`TIMEOUT`] (for a process expected to finish well before that).
    pub fn spawn_within(cmd: &mut Command, limit: Duration) -> Self {
        let what = format!("{cmd:?}");
        cmd.process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {what}: {e}"));
        let pgid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits in i32"));
        let done = Arc::new((Mutex::new(false), Condvar::new()));
        let timed_out = Arc::new(AtomicBool::new(false));
        let watchdog = {
            let done = done.clone();
            let timed_out = timed_out.clone();
            let what = what.clone();
            std::thread::spawn(move || {
                let (lock, cv) = &*done;
                let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
                let (guard, res) = cv
                    .wait_timeout_while(guard, limit, |done| !*done)
                    .unwrap_or_else(|e| e.into_inner());
                if res.timed_out() && !*guard {
                    // The leader is not reaped before `done` is set (see `wait`), so the group
                    // id cannot have been reused.
                    timed_out.store(true, Ordering::SeqCst);
                    // Said at once: its connections reset, which the test may see first.
                    eprintln!("watchdog: {what} still ran after {limit:?}; killed");
                    let _ = killpg(pgid, Signal::SIGKILL);
                }
            })
        };
        Self {
            child,
            what,
            done,
            timed_out,
            limit,
            watchdog: Some(watchdog),
        }
    }

    /// The process id.
    pub fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits in i32"))
    }

    /// Waits for the process to exit; fails the test if the watchdog had to kill it.
    pub fn wait(&mut self) -> ExitStatus {
        let pid = self.pid();
        // Wait without reaping, so the watchdog never signals a recycled process group.
        loop {
            match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
                Ok(_) => break,
                Err(Errno::EINTR) => continue,
                Err(e) => panic!("waitid on {}: {e}", self.what),
            }
        }
        {
            let (lock, cv) = &*self.done;
            *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
            cv.notify_all();
        }
        if let Some(w) = self.watchdog.take() {
            w.join().expect("watchdog thread");
        }
        let status = self.child.wait().expect("reaping the child");
        assert!(
            !self.timed_out.load(Ordering::SeqCst),
            "{} did not finish within {:?} and was killed",
            self.what,
            self.limit
        );
        status
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(w) = self.watchdog.take() {
            // Never waited for (the test failed early): leave nothing running.
            {
                let (lock, cv) = &*self.done;
                *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
                cv.notify_all();
            }
            let _ = w.join();
            let _ = killpg(self.pid(), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// Reads `r` to the end on a thread.
pub fn drain(mut r: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        r.read_to_end(&mut buf).expect("reading a pipe");
        buf
    })
}

/// Feeds `data` to `w` on a thread, then closes it. A closed pipe is not an error.
pub fn feed(mut w: ChildStdin, data: Vec<u8>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        if let Err(e) = w.write_all(&data) {
            assert_eq!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe,
                "writing stdin: {e}"
            );
        }
    })
}

/// Runs `cmd` to completion under a watchdog, with `input` on stdin, capturing its stdout and
/// stderr.
pub fn run(cmd: &mut Command, input: Input) -> Finished {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    match input {
        Input::Null => cmd.stdin(Stdio::null()),
        Input::Bytes(_) | Input::HeldOpen => cmd.stdin(Stdio::piped()),
    };
    let mut g = Guarded::spawn(cmd);
    let out = drain(g.child.stdout.take().expect("stdout pipe"));
    let err = drain(g.child.stderr.take().expect("stderr pipe"));
    let stdin = g.child.stdin.take();
    let (feeder, held) = match input {
        Input::Null => (None, None),
        Input::Bytes(data) => (Some(feed(stdin.expect("stdin pipe"), data)), None),
        Input::HeldOpen => (None, stdin),
    };
    let status = g.wait();
    drop(held);
    if let Some(f) = feeder {
        f.join().expect("stdin feeder");
    }
    Finished {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// Runs `logdog_butler ARGS` in `cwd` with stdin from `/dev/null`.
pub fn run_butler<S: AsRef<std::ffi::OsStr>>(cwd: &Path, args: &[S]) -> Finished {
    run(&mut butler(cwd, args), Input::Null)
}

/// A small, fast, deterministic PRNG (xorshift64*).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (any value; 0 is remapped).
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(len);
        v
    }
}

/// Multi-byte characters sprinkled into generated text.
const WIDE: [&str; 8] = ["é", "ß", "€", "中", "文", "😀", "🦀", "\u{200B}"];

/// A random text line: 0..200 characters, mostly printable ASCII with some multi-byte UTF-8,
/// ending with `\n`.
pub fn random_line(rng: &mut Rng) -> String {
    let len = rng.below(200);
    let mut s = String::with_capacity(len as usize * 2 + 1);
    for _ in 0..len {
        let r = rng.next_u64();
        if r.is_multiple_of(16) {
            s.push_str(WIDE[((r >> 8) % WIDE.len() as u64) as usize]);
        } else {
            s.push(char::from(b' ' + ((r >> 8) % 95) as u8));
        }
    }
    s.push('\n');
    s
}

/// Writes a text file of at least `size` bytes (whole lines) at `path` and returns its length.
///
/// Lines are drawn at random from a pool of random lines, so that even an unoptimised build
/// writes hundreds of MiB in a few seconds.
pub fn write_text_file(path: &Path, size: u64, seed: u64) -> u64 {
    const POOL: usize = 1 << 14;
    let mut rng = Rng::new(seed);
    let pool: Vec<String> = (0..POOL).map(|_| random_line(&mut rng)).collect();
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path).expect("creating file"));
    let mut written = 0u64;
    while written < size {
        let line = &pool[rng.below(POOL as u64) as usize];
        w.write_all(line.as_bytes()).expect("writing file");
        written += line.len() as u64;
    }
    w.flush().expect("flushing file");
    written
}

/// Fills `buf` from `r` as far as possible; returns how much was read (less only at EOF).
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("reading: {e}"),
        }
    }
    n
}

/// Fails the test unless the two files have identical bytes. Streams both in chunks.
#[track_caller]
pub fn assert_same_file(want: &Path, got: &Path) {
    let want_len = std::fs::metadata(want)
        .unwrap_or_else(|e| panic!("{}: {e}", want.display()))
        .len();
    let got_len = std::fs::metadata(got)
        .unwrap_or_else(|e| panic!("{}: {e}", got.display()))
        .len();
    let mut a = File::open(want).expect("opening expected file");
    let mut b = File::open(got).expect("opening actual file");
    const CHUNK: usize = 1 << 20;
    let mut ba = vec![0u8; CHUNK];
    let mut bb = vec![0u8; CHUNK];
    let mut offset = 0u64;
    loop {
        let na = read_full(&mut a, &mut ba);
        let nb = read_full(&mut b, &mut bb);
        if ba[..na] != bb[..nb] {
            let common = na.min(nb);
            let at = (0..common).find(|&i| ba[i] != bb[i]).unwrap_or(common);
            let pos = offset + at as u64;
            let show = |buf: &[u8], n: usize| {
                let end = (at + 32).min(n);
                format!("{:?}", String::from_utf8_lossy(&buf[at.min(end)..end]))
            };
            panic!(
                "{} differs from {} at byte {pos} (lengths {got_len} vs {want_len}): got {} want {}",
                got.display(),
                want.display(),
                show(&bb, nb),
                show(&ba, na),
            );
        }
        if na == 0 {
            break;
        }
        offset += na as u64;
    }
    assert_eq!(got_len, want_len);
}

/// The contents of a file, failing the test with its path if it cannot be read.
#[track_caller]
pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Where the directory output `dir` puts the descriptor of stream `name`.
pub fn desc_path(dir: &Path, name: &str) -> PathBuf {
    let (d, base) = name.rsplit_once('/').unwrap_or(("", name));
    let mut p = dir.to_path_buf();
    if !d.is_empty() {
        p.extend(d.split('/'));
    }
    p.push(format!("_{base}.desc.json"));
    p
}

/// Where the directory output `dir` puts the bytes of stream `name`.
pub fn stream_path(dir: &Path, name: &str) -> PathBuf {
    let mut p = dir.to_path_buf();
    p.extend(name.split('/'));
    p
}

/// The descriptor JSON of stream `name` in the directory output `dir`.
#[track_caller]
pub fn descriptor(dir: &Path, name: &str) -> serde_json::Value {
    let p = desc_path(dir, name);
    serde_json::from_slice(&read(&p)).unwrap_or_else(|e| panic!("{} is not JSON: {e}", p.display()))
}

/// A fresh temporary directory.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("logdog-e2e-")
        .tempdir()
        .expect("creating a temporary directory")
}

impl Guarded {
    /// Whether the process has exited, without reaping it (so [`Guarded::wait`] still works).
    pub fn has_exited(&self) -> bool {
        loop {
            match waitid(
                Id::Pid(self.pid()),
                WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT | WaitPidFlag::WNOHANG,
            ) {
                Ok(nix::sys::wait::WaitStatus::StillAlive) => return false,
                Ok(_) => return true,
                Err(Errno::EINTR) => continue,
                Err(e) => panic!("waitid on {}: {e}", self.what),
            }
        }
    }
}

/// A port on 127.0.0.1 that nothing listens on: bound to a fresh listener, which is then
/// closed.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    l.local_addr().expect("the listener's address").port()
}

/// A `logdog_collector` running under a watchdog. Its log (stderr) is appended to
/// `<data>.log`, which survives restarts on the same data directory.
pub struct Collector {
    /// The process.
    pub guarded: Guarded,
    /// Where it listens, as `127.0.0.1:PORT`.
    pub addr: String,
    /// Where its web viewer listens, if started with `--http`.
    pub http: Option<String>,
    /// Where its tail server listens, if started with `--tail`.
    pub tail: Option<String>,
    /// Where its metrics server listens, if started with `--metrics`.
    pub metrics: Option<String>,
    log: PathBuf,
    rest: Option<JoinHandle<Vec<u8>>>,
}

impl Collector {
    /// Starts `logdog_collector --listen LISTEN --data DATA` and waits until it prints the
    /// address it listens on.
    pub fn start(data: &Path, listen: &str) -> Self {
        Self::start_full(data, listen, &[], TIMEOUT)
    }

    /// Like [`Collector::start`], with a watchdog that fires after `limit` instead of
    /// [`TIMEOUT`] (for a collector that must outlive a long test).
    pub fn start_within(data: &Path, listen: &str, limit: Duration) -> Self {
        Self::start_full(data, listen, &[], limit)
    }

    /// Like [`Collector::start`] with more flags (such as `--http 127.0.0.1:0` or `--tail
    /// 127.0.0.1:0`); waits for the addresses of the servers they start, too.
    pub fn start_with(data: &Path, listen: &str, extra: &[&str]) -> Self {
        Self::start_full(data, listen, extra, TIMEOUT)
    }

    /// Starts `logdog_collector --listen LISTEN --store STORE EXTRA...` (a collector on a
    /// PostgreSQL database: `STORE` is a `postgres://` URL such as [`pg::database`] returns),
    /// without `--data`; it runs in `dir` (created if missing) and its log is `<dir>.log`.
    pub fn start_on_store(dir: &Path, store: &str, listen: &str, extra: &[&str]) -> Self {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let mut args = vec!["--store", store];
        args.extend_from_slice(extra);
        Self::spawn(dir, Some(dir), listen, &args, TIMEOUT)
    }

    /// [`Collector::start_with`], killed (and the test failed) if it still runs after `limit`
    /// instead of [`TIMEOUT`]: for tests that keep it busy for long on a loaded machine.
    pub fn start_full(data: &Path, listen: &str, extra: &[&str], limit: Duration) -> Self {
        let mut args = vec!["--data".as_ref(), data.as_os_str()];
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        Self::spawn(data, None, listen, &args, limit)
    }

    /// Starts `logdog_collector --listen LISTEN ARGS...` (in `cwd` if given), its log in
    /// `<base>.log`.
    fn spawn<S: AsRef<std::ffi::OsStr>>(
        base: &Path,
        cwd: Option<&Path>,
        listen: &str,
        extra: &[S],
        limit: Duration,
    ) -> Self {
        let mut name = base
            .file_name()
            .expect("a data directory name")
            .to_os_string();
        name.push(".log");
        let log = base.with_file_name(name);
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap_or_else(|e| panic!("opening {}: {e}", log.display()));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_logdog_collector"));
        if let Some(cwd) = cwd {
            cmd.current_dir(cwd);
        }
        cmd.args(["--listen", listen])
            .args(extra)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file);
        let mut guarded = Guarded::spawn_within(&mut cmd, limit);
        let mut out = std::io::BufReader::new(guarded.child.stdout.take().expect("stdout pipe"));
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).expect("reading the collector's stdout");
        let Some(addr) = line.trim_end().strip_prefix("LOGDOG_COLLECTOR=") else {
            let _ = guarded.wait();
            panic!(
                "logdog_collector --listen {listen} did not start: stdout {line:?}; log:\n{}",
                String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default())
            );
        };
        let addr = addr.to_string();
        let (mut http, mut tail, mut metrics) = (None, None, None);
        let wanted = extra
            .iter()
            .filter(|a| {
                ["--http", "--tail", "--metrics"]
                    .map(std::ffi::OsStr::new)
                    .contains(&a.as_ref())
            })
            .count();
        for _ in 0..wanted {
            let mut line = String::new();
            std::io::BufRead::read_line(&mut out, &mut line)
                .expect("reading the collector's stdout");
            let line = line.trim_end();
            if let Some(a) = line.strip_prefix("LOGDOG_HTTP=") {
                http = Some(a.to_string());
            } else if let Some(a) = line.strip_prefix("LOGDOG_TAIL=") {
                tail = Some(a.to_string());
            } else if let Some(a) = line.strip_prefix("LOGDOG_METRICS=") {
                metrics = Some(a.to_string());
            } else {
                panic!("unexpected line from logdog_collector: {line:?}");
            }
        }
        Self {
            guarded,
            addr,
            http,
            tail,
            metrics,
            log,
            rest: Some(drain(out)),
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        let (_, port) = self.addr.rsplit_once(':').expect("HOST:PORT");
        port.parse().expect("a port number")
    }

    /// `grpc://ADDR`, for the butler's `--output`.
    pub fn output(&self) -> String {
        format!("grpc://{}", self.addr)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Kills it with SIGKILL (a crash) and reaps it.
    pub fn kill(mut self) {
        nix::sys::signal::kill(self.guarded.pid(), Signal::SIGKILL).expect("SIGKILL");
        let status = self.guarded.wait();
        assert_eq!(status.signal(), Some(Signal::SIGKILL as i32), "{status}");
        if let Some(r) = self.rest.take() {
            r.join().expect("stdout reader");
        }
    }

    /// Stops it with SIGTERM; fails the test unless it exits 0.
    pub fn stop(mut self) {
        nix::sys::signal::kill(self.guarded.pid(), Signal::SIGTERM).expect("SIGTERM");
        let status = self.guarded.wait();
        assert!(
            status.success(),
            "collector: {status}; log:\n{}",
            self.log()
        );
        if let Some(r) = self.rest.take() {
            r.join().expect("stdout reader");
        }
    }
}

impl Collector {
    /// Stops it like [`Collector::stop`] and returns its whole log.
    pub fn stop_with_log(self) -> String {
        let log = self.log.clone();
        self.stop();
        String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default()).into_owned()
    }
}

/// Runs `logdog --collector ADDR ARGS` to completion (stdin from `/dev/null`).
pub fn logdog<S: AsRef<std::ffi::OsStr>>(addr: &str, args: &[S]) -> Finished {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_logdog"));
    cmd.arg("--collector")
        .arg(addr)
        .args(args)
        .env_remove("LOGDOG_COLLECTOR")
        .env_remove("RUST_LOG");
    run(&mut cmd, Input::Null)
}

/// Whether a small tmpfs can be mounted in a user and mount namespace (`unshare -rm`). When
/// it cannot, says so loudly; under CI (the `CI` environment variable set) that fails the
/// test, elsewhere the caller skips it.
pub fn small_file_systems_can_be_made() -> bool {
    let tmp = tempdir();
    let probe = Command::new("unshare")
        .args(["-rm", "sh", "-c", r#"mount -t tmpfs -o size=1m tmpfs "$0""#])
        .arg(tmp.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    let why = match probe {
        Ok(o) if o.status.success() => return true,
        Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
        Err(e) => e.to_string(),
    };
    let msg = format!(
        "cannot mount a small tmpfs with `unshare -rm` here ({}), so a full disk cannot be \
         made",
        why.trim()
    );
    assert!(
        std::env::var_os("CI").is_none(),
        "{msg} (CI is set: failing)"
    );
    skipped(&msg);
    false
}

/// Says that a test (or part of one) did not run, with `why`, in a way that shows in the
/// default `cargo test` output: written to the process's stderr directly, as libtest captures
/// what `eprintln!` writes in a passing test.
pub fn skipped(why: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "\n*** SKIPPED: {why} ***\n");
}

/// The `logdog_butler` binary, for children that run `logdog_butler pipe`.
pub const BUTLER_VAR: &str = "LOGDOG_TEST_BUTLER";

/// `logdog_butler FLAGS run --no-echo [RUN_FLAGS] -- sh -c SCRIPT sh ARGS...` in `cwd`, with
/// stdout to `/dev/null` and stderr piped; the script finds the butler in
/// `$LOGDOG_TEST_BUTLER`.
pub fn butler_script(
    cwd: &Path,
    flags: &[&str],
    run_flags: &[&str],
    script: &str,
    script_args: &[&Path],
) -> Command {
    let mut args: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
    args.extend(["run".into(), "--no-echo".into()]);
    args.extend(run_flags.iter().map(|s| s.to_string()));
    args.extend([
        "--".into(),
        "sh".into(),
        "-c".into(),
        script.into(),
        "sh".into(),
    ]);
    args.extend(script_args.iter().map(|p| p.display().to_string()));
    let mut cmd = butler(cwd, &args);
    cmd.env(BUTLER_VAR, env!("CARGO_BIN_EXE_logdog_butler"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}
