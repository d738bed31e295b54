//! End-to-end tests of the butler's stream server: real child processes open streams over the
//! Unix socket (with the Rust client, with `logdog_butler pipe`, and with raw handshakes), and
//! the directory output must hold exactly what they wrote.
//!
//! Child programs written in Rust are this test binary itself, run again: the ignored test
//! [`child_main`] does nothing unless `LOGDOG_TEST_CHILD` names a scenario, which it then plays.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use common::{
    Finished, Guarded, Input, Rng, butler, descriptor, dir_output, drain, read, run, stream_path,
    tempdir,
};
use logdog_client::{Client, StreamOptions};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::signal::{Signal, kill};
use serde_json::{Value, json};

/// Names the scenario a re-executed test binary plays (see [`child_main`]).
const CHILD_VAR: &str = "LOGDOG_TEST_CHILD";
/// The `logdog_butler` binary, for children that run `logdog_butler pipe`.
const BUTLER_VAR: &str = "LOGDOG_TEST_BUTLER";

/// The handshake magic of a stream-server connection.
const MAGIC: &[u8; 6] = b"BTLR1\x1E";

/// How many streams [`thousand_streams_opened_at_once_all_arrive`] opens.
const MANY: usize = 1000;

// ---------------------------------------------------------------------------------------------
// Child processes.
// ---------------------------------------------------------------------------------------------

/// The command line that runs this test binary as a child: only [`child_main`], which plays
/// the scenario the caller puts in [`CHILD_VAR`].
fn child_args() -> Vec<String> {
    let exe = std::env::current_exe().expect("the test binary's path");
    vec![
        exe.display().to_string(),
        "--ignored".into(),
        "--exact".into(),
        "child_main".into(),
        "--nocapture".into(),
        "--test-threads".into(),
        "1".into(),
    ]
}

/// `logdog_butler GLOBAL_FLAGS run -- <this binary playing SCENARIO>`, in `cwd`.
fn butler_running_child(cwd: &Path, global_flags: &[&str], scenario: &str) -> Command {
    let mut args: Vec<String> = global_flags.iter().map(|s| s.to_string()).collect();
    args.extend(["run".into(), "--".into()]);
    args.extend(child_args());
    let mut cmd = butler(cwd, &args);
    cmd.env(CHILD_VAR, scenario)
        .env(BUTLER_VAR, env!("CARGO_BIN_EXE_logdog_butler"));
    cmd
}

/// Entry point of the child processes: plays the scenario named by `LOGDOG_TEST_CHILD`, and
/// does nothing when it is unset (so running ignored tests by hand is harmless).
#[test]
#[ignore = "entry point of child processes started by the other tests"]
fn child_main() {
    let Ok(scenario) = std::env::var(CHILD_VAR) else {
        return;
    };
    match scenario.as_str() {
        "all_kinds" => child_all_kinds(),
        "many" => child_many(),
        "late_parent" => child_late_parent(),
        "late_grandchild" => child_late_grandchild(),
        other => panic!("unknown child scenario {other:?}"),
    }
}

/// Flushes stdout and stderr and exits at once, so libtest prints nothing more (its summary
/// would otherwise land in the captured stdout, or in a pipe nobody reads any more).
fn exit_now(code: i32) -> ! {
    std::io::stdout().flush().expect("flushing stdout");
    std::io::stderr().flush().expect("flushing stderr");
    std::process::exit(code)
}

fn client() -> Client {
    Client::from_env().expect("the child runs under a butler")
}

/// Runs `logdog_butler ARGS` with `input` on stdin; panics with its stderr unless it succeeds.
fn run_pipe(args: &[&str], input: &[u8]) {
    let exe = std::env::var(BUTLER_VAR).expect("LOGDOG_TEST_BUTLER is set");
    let mut p = Command::new(exe)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting logdog_butler pipe");
    let mut stdin = p.stdin.take().unwrap();
    let err = drain(p.stderr.take().unwrap());
    stdin.write_all(input).expect("feeding logdog_butler pipe");
    drop(stdin);
    let status = p.wait().expect("waiting for logdog_butler pipe");
    let err = err.join().unwrap();
    assert!(
        status.success() && err.is_empty(),
        "logdog_butler {args:?}: {status}; stderr:\n{}",
        String::from_utf8_lossy(&err)
    );
}

// --- Scenario "all_kinds": one stream of every kind, plus stdout and stderr. ---

fn text_payload() -> Vec<u8> {
    let mut v = Vec::new();
    for i in 0..2000 {
        v.extend_from_slice(format!("text line {i}: é € 😀\n").as_bytes());
    }
    v.extend_from_slice(b"windows\r\nlone cr\rinvalid \xFF\xFE utf-8\n\n");
    v.extend_from_slice(b"no newline at the end");
    v
}

fn binary_payload() -> Vec<u8> {
    let mut rng = Rng::new(0xB17E5);
    let mut v = b"\x89PNG\r\n\x1A\n".to_vec();
    v.extend(rng.bytes(300 << 10));
    v.extend_from_slice(b"\x00\x00\r\n\n\r\x00");
    v.extend(rng.bytes(12345));
    v
}

fn datagrams() -> Vec<Vec<u8>> {
    let mut rng = Rng::new(0xDA7A);
    vec![
        b"first".to_vec(),
        Vec::new(),
        rng.bytes(100 << 10),
        b"\n".to_vec(),
        rng.bytes(127),
        rng.bytes(128),
        Vec::new(),
        b"last".to_vec(),
    ]
}

fn piped_payload() -> Vec<u8> {
    let mut v = Vec::new();
    for i in 0..500 {
        v.extend_from_slice(format!("piped line {i}\n").as_bytes());
    }
    v.extend(
        Rng::new(0x919E)
            .bytes(70 << 10)
            .iter()
            .map(|b| b'a' + b % 26),
    );
    v.extend_from_slice(b"\nend of pipe\n");
    v
}

fn stdout_payload() -> Vec<u8> {
    b"to stdout: one\nto stdout: two \xE2\x82\xAC\n".to_vec()
}

fn stderr_payload() -> Vec<u8> {
    b"to stderr: one\nto stderr: two\r\n".to_vec()
}

fn child_all_kinds() {
    let client = client();
    let mut text = client
        .open_text("app/text", &StreamOptions::new().tag("a", "b"))
        .expect("opening app/text");
    let mut image = client
        .open_binary("app/image", &StreamOptions::new().content_type("image/png"))
        .expect("opening app/image");
    let mut dg = client
        .open_datagram("app/datagrams", &StreamOptions::new().tag("g", "stream"))
        .expect("opening app/datagrams");

    // Interleave the streams' writes with each other and with stdout and stderr.
    let text_data = text_payload();
    let bin_data = binary_payload();
    let (t1, t2) = text_data.split_at(text_data.len() / 3);
    let (b1, b2) = bin_data.split_at(bin_data.len() / 2);
    let grams = datagrams();
    let (g1, g2) = grams.split_at(3);
    text.write_all(t1).unwrap();
    image.write_all(b1).unwrap();
    for g in g1 {
        dg.write_datagram(g).unwrap();
    }
    std::io::stdout().write_all(&stdout_payload()).unwrap();
    std::io::stdout().flush().unwrap();
    run_pipe(
        &["--tag", "p=q", "pipe", "--type", "text", "piped"],
        &piped_payload(),
    );
    std::io::stderr().write_all(&stderr_payload()).unwrap();
    for g in g2 {
        dg.write_datagram(g).unwrap();
    }
    image.write_all(b2).unwrap();
    text.write_all(t2).unwrap();
    text.close().unwrap();
    image.close().unwrap();
    dg.close().unwrap();
    exit_now(0);
}

// --- Scenario "many": MANY streams open at the same time. ---

fn many_name(i: usize) -> String {
    format!("many/s{i:04}")
}

/// A distinct payload of 2–6 KiB for stream `i`.
fn many_payload(i: usize) -> Vec<u8> {
    let mut rng = Rng::new(0x3A27 + i as u64);
    let len = 2048 + rng.below(4096) as usize;
    let mut v = format!("stream {i}\n").into_bytes();
    v.extend(rng.bytes(len));
    v
}

fn child_many() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let want = MANY as u64 + 256;
    if soft < want {
        assert!(hard >= want, "RLIMIT_NOFILE hard limit {hard} < {want}");
        setrlimit(Resource::RLIMIT_NOFILE, want, hard).expect("raising RLIMIT_NOFILE");
    }
    let client = client();
    // Every connection first...
    let mut streams: Vec<_> = (0..MANY)
        .map(|i| {
            client
                .open_binary(&many_name(i), &StreamOptions::new())
                .unwrap_or_else(|e| panic!("opening stream {i}: {e}"))
        })
        .collect();
    // ...then every payload, then every close.
    for (i, s) in streams.iter_mut().enumerate() {
        s.write_all(&many_payload(i))
            .unwrap_or_else(|e| panic!("writing stream {i}: {e}"));
    }
    for (i, s) in streams.into_iter().enumerate() {
        s.close()
            .unwrap_or_else(|e| panic!("closing stream {i}: {e}"));
    }
    exit_now(0);
}

// --- Scenarios "late_parent" / "late_grandchild": streams outliving the direct child. ---

/// What the grandchild prints once its stream is open.
const GRANDCHILD_READY: &str = "<grandchild ready>\n";

/// The direct child: starts the grandchild, waits until it has opened its stream, and exits 3
/// without waiting for it.
#[allow(clippy::zombie_processes)] // Leaving the grandchild behind is the point.
fn child_late_parent() {
    let mut args = child_args();
    let exe = args.remove(0);
    let mut gc = Command::new(exe)
        .args(args)
        .env(CHILD_VAR, "late_grandchild")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting the grandchild");
    let mut from_gc = BufReader::new(gc.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        let n = from_gc.read_line(&mut line).unwrap();
        assert!(n > 0, "the grandchild ended before it was ready");
        // libtest may have started the line with "test child_main ... ".
        if line.ends_with(GRANDCHILD_READY) {
            break;
        }
    }
    // The grandchild's stdin is a pipe only this process writes to: exiting closes it, which
    // tells the grandchild that its parent is gone.
    println!("direct child exits");
    exit_now(3);
}

/// The grandchild: its stdout and stderr are not the butler's, so only its socket stream keeps
/// the butler waiting once the direct child has exited.
fn child_late_grandchild() {
    let late = client()
        .open_text("late", &StreamOptions::new())
        .expect("opening late");
    print!("{GRANDCHILD_READY}");
    std::io::stdout().flush().unwrap();
    // Wait for the direct child to exit.
    let mut rest = Vec::new();
    std::io::stdin().read_to_end(&mut rest).unwrap();
    // Only now is anything written to the stream, by a process started after the direct child
    // exited.
    let status = Command::new("sh")
        .args(["-c", "echo late line"])
        .stdout(late.into_stdio())
        .stderr(Stdio::null())
        .status()
        .expect("running sh");
    exit_now(if status.success() { 0 } else { 1 });
}

// ---------------------------------------------------------------------------------------------
// Helpers of the parent tests.
// ---------------------------------------------------------------------------------------------

/// Appends `n` as an unsigned LEB128 varint.
fn put_uvarint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7F) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Splits a datagram stream file into its datagrams (uvarint length, then the bytes).
#[track_caller]
fn parse_datagrams(mut data: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let mut len = 0u64;
        let mut shift = 0;
        loop {
            let (&b, rest) = data.split_first().expect("truncated varint");
            data = rest;
            len |= u64::from(b & 0x7F) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
            assert!(shift < 64, "varint too long");
        }
        let len = usize::try_from(len).unwrap();
        assert!(
            len <= data.len(),
            "datagram {} of {len} bytes, only {} left",
            out.len(),
            data.len()
        );
        let (d, rest) = data.split_at(len);
        out.push(d.to_vec());
        data = rest;
    }
    out
}

/// Fails the test unless stream `name` in `dir` holds exactly `want`.
#[track_caller]
fn assert_stream(dir: &Path, name: &str, want: &[u8]) {
    let got = read(&stream_path(dir, name));
    if got != want {
        let at = got
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        let show = |b: &[u8]| {
            format!(
                "{:?}",
                String::from_utf8_lossy(&b[at..(at + 40).min(b.len())])
            )
        };
        panic!(
            "stream {name}: {} bytes, want {}; first difference at byte {at}: got {} want {}",
            got.len(),
            want.len(),
            show(&got),
            show(want)
        );
    }
}

/// The tags of a descriptor.
fn tags(d: &Value) -> &Value {
    &d["tags"]
}

/// The handshake for `header`: magic, uvarint length, JSON.
fn handshake(header: &Value) -> Vec<u8> {
    let json = serde_json::to_vec(header).unwrap();
    let mut hs = MAGIC.to_vec();
    put_uvarint(&mut hs, json.len() as u64);
    hs.extend(json);
    hs
}

/// Connects to a stream server socket and sends the handshake for `header` followed by
/// `data`, in one write: the butler cannot refuse the stream (and close the connection)
/// before `data` is sent.
fn open_raw(socket: &Path, header: &Value, data: &[u8]) -> UnixStream {
    let mut s = UnixStream::connect(socket)
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", socket.display()));
    let mut msg = handshake(header);
    msg.extend_from_slice(data);
    s.write_all(&msg).expect("writing the handshake");
    s
}

/// Reads `s` (a copy of it) on a thread until the butler closes its end, then sends `id` on
/// `tx`. The butler never writes to a stream connection.
fn on_close<T: Send + 'static>(s: &UnixStream, id: T, tx: &mpsc::Sender<T>) -> JoinHandle<()> {
    let mut s = s.try_clone().expect("cloning a socket");
    let tx = tx.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => panic!("the butler wrote {n} bytes to a stream connection"),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // ECONNRESET: the butler closed the connection with our data unread.
                Err(_) => break,
            }
        }
        let _ = tx.send(id);
    })
}

/// How long after SIGTERM a `serve` may still be running before the test closes the streams
/// it left open (and fails): a butler waiting for a client to close a stream would otherwise
/// only be stopped by the watchdog.
const STUCK_AFTER: Duration = Duration::from_secs(20);

/// A `logdog_butler serve` running under the watchdog.
struct Serve {
    guarded: Guarded,
    /// The socket, from the `LOGDOG_STREAM_SERVER_PATH=unix:...` line it printed.
    socket: PathBuf,
    stdout: BufReader<std::process::ChildStdout>,
    stderr: JoinHandle<Vec<u8>>,
}

impl Serve {
    /// Starts `logdog_butler ARGS` (a `serve` command line) and reads the address it prints.
    fn start(cwd: &Path, args: &[&str]) -> Self {
        let mut cmd = butler(cwd, args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut guarded = Guarded::spawn(&mut cmd);
        let stderr = drain(guarded.child.stderr.take().unwrap());
        let mut stdout = BufReader::new(guarded.child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).expect("reading serve's stdout");
        let Some(path) = line
            .strip_suffix('\n')
            .and_then(|l| l.strip_prefix("LOGDOG_STREAM_SERVER_PATH=unix:"))
        else {
            drop(stdout);
            let status = guarded.wait();
            panic!(
                "serve printed {line:?}, not the address; {status}; stderr:\n{}",
                String::from_utf8_lossy(&stderr.join().unwrap())
            );
        };
        Self {
            guarded,
            socket: PathBuf::from(path),
            stdout,
            stderr,
        }
    }

    /// Sends SIGTERM.
    fn signal(&self) {
        kill(self.guarded.pid(), Signal::SIGTERM).expect("sending SIGTERM");
    }

    /// Sends SIGTERM and waits for the butler to exit; `still_open` are streams the test keeps
    /// open meanwhile. Fails the test if the butler was still running [`STUCK_AFTER`] after
    /// the signal (those streams are then shut down so that it can finish).
    fn terminate(self, still_open: &[&UnixStream]) -> Finished {
        self.signal();
        self.wait(still_open)
    }

    /// Waits for the butler to exit, after a signal; see [`Serve::terminate`].
    fn wait(mut self, still_open: &[&UnixStream]) -> Finished {
        let (exited, exited_rx) = mpsc::channel::<()>();
        let open: Vec<UnixStream> = still_open.iter().map(|s| s.try_clone().unwrap()).collect();
        let unsticker = std::thread::spawn(move || {
            if exited_rx.recv_timeout(STUCK_AFTER).is_ok() {
                return false;
            }
            for s in open {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
            true
        });
        let mut rest = Vec::new();
        self.stdout.read_to_end(&mut rest).unwrap();
        let status = self.guarded.wait();
        let _ = exited.send(());
        let stuck = unsticker.join().unwrap();
        let r = Finished {
            status,
            stdout: rest,
            stderr: self.stderr.join().unwrap(),
        };
        assert!(
            !stuck,
            "serve was still running {STUCK_AFTER:?} after SIGTERM, waiting for streams the \
             client kept open; it exited ({}) only once the test closed them. stderr:\n{}",
            r.status,
            r.stderr_str()
        );
        r
    }
}

// ---------------------------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------------------------

#[test]
fn every_stream_kind_arrives_byte_for_byte_with_its_descriptor() {
    let tmp = tempdir();
    let out = tmp.path().join("out");
    let r = run(
        &mut butler_running_child(
            tmp.path(),
            &["--output", &dir_output(&out), "--tag", "g=1"],
            "all_kinds",
        ),
        Input::Null,
    );
    r.assert_code(0);

    assert_stream(&out, "app/text", &text_payload());
    assert_stream(&out, "app/image", &binary_payload());
    assert_stream(&out, "piped", &piped_payload());
    let got = parse_datagrams(&read(&stream_path(&out, "app/datagrams")));
    let want = datagrams();
    assert_eq!(got.len(), want.len(), "number of datagrams");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            g == w,
            "datagram {i}: {} bytes, want {} (or different bytes)",
            g.len(),
            w.len()
        );
    }
    // The child's stderr is all ours; its stdout starts with libtest's banner.
    assert_stream(&out, "stderr", &stderr_payload());
    let stdout = read(&stream_path(&out, "stdout"));
    assert!(
        stdout.ends_with(&stdout_payload()),
        "stdout: {:?}",
        String::from_utf8_lossy(&stdout)
    );
    assert_eq!(
        stdout, r.stdout,
        "stdout stream differs from what was echoed"
    );

    let cases = [
        (
            "app/text",
            "TEXT",
            "text/plain; charset=utf-8",
            json!({"a": "b", "g": "1"}),
        ),
        ("app/image", "BINARY", "image/png", json!({"g": "1"})),
        (
            "app/datagrams",
            "DATAGRAM",
            "application/x-logdog-datagram",
            json!({"g": "stream"}),
        ),
        (
            "piped",
            "TEXT",
            "text/plain; charset=utf-8",
            json!({"p": "q", "g": "1"}),
        ),
        (
            "stdout",
            "TEXT",
            "text/plain; charset=utf-8",
            json!({"g": "1"}),
        ),
        (
            "stderr",
            "TEXT",
            "text/plain; charset=utf-8",
            json!({"g": "1"}),
        ),
    ];
    for (name, kind, ct, want_tags) in cases {
        let d = descriptor(&out, name);
        assert_eq!(d["name"], name, "{d:#}");
        assert_eq!(d["stream_type"], kind, "{name}: {d:#}");
        assert_eq!(d["content_type"], ct, "{name}: {d:#}");
        assert_eq!(tags(&d), &want_tags, "{name}: {d:#}");
    }
    // Nothing else was written.
    let mut names: Vec<String> = std::fs::read_dir(out.join("app"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "_datagrams.desc.json",
            "_image.desc.json",
            "_text.desc.json",
            "datagrams",
            "image",
            "text"
        ]
    );
}

#[test]
fn thousand_streams_opened_at_once_all_arrive() {
    let tmp = tempdir();
    let out = tmp.path().join("out");
    let r = run(
        &mut butler_running_child(tmp.path(), &["--output", &dir_output(&out)], "many"),
        Input::Null,
    );
    r.assert_code(0);
    for i in 0..MANY {
        assert_stream(&out, &many_name(i), &many_payload(i));
    }
    let d = descriptor(&out, &many_name(MANY - 1));
    assert_eq!(d["stream_type"], "BINARY", "{d:#}");
    let files = std::fs::read_dir(out.join("many")).unwrap().count();
    assert_eq!(files, 2 * MANY, "a stream file and a descriptor per stream");
    let err = r.stderr_str();
    assert!(
        !err.contains("dropped") && !err.contains("refused") && !err.contains("WARN"),
        "stderr:\n{err}"
    );
}

/// The direct child exits 3 while a grandchild (whose stdout and stderr are not the butler's)
/// holds a stream open; the grandchild writes to it only after the direct child has exited.
#[test]
fn butler_waits_for_a_grandchild_that_keeps_a_stream_open() {
    let tmp = tempdir();
    let out = tmp.path().join("out");
    let r = run(
        &mut butler_running_child(tmp.path(), &["--output", &dir_output(&out)], "late_parent"),
        Input::Null,
    );
    r.assert_code(3);
    assert_eq!(read(&stream_path(&out, "late")), b"late line\n");
    let stdout = String::from_utf8_lossy(&read(&stream_path(&out, "stdout"))).into_owned();
    assert!(stdout.ends_with("direct child exits\n"), "{stdout:?}");
}

#[test]
fn socket_directory_is_private_and_removed_after_exit() {
    let tmp = tempdir();
    let out = tmp.path().join("out");
    let r = run(
        &mut butler(
            tmp.path(),
            &[
                "--output",
                &dir_output(&out),
                "run",
                "--",
                "sh",
                "-c",
                r#"echo "$LOGDOG_STREAM_SERVER_PATH"
                   p=${LOGDOG_STREAM_SERVER_PATH#unix:}
                   d=$(dirname "$p")
                   echo "$d"
                   stat -c %a "$d"
                   if test -S "$p"; then echo socket; else echo not-a-socket; fi"#,
            ],
        ),
        Input::Null,
    );
    r.assert_code(0);
    let text = String::from_utf8(read(&stream_path(&out, "stdout"))).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[0].starts_with("unix:/"), "{text}");
    let dir = Path::new(lines[1]);
    assert_eq!(lines[2], "700", "mode of {}", dir.display());
    assert_eq!(lines[3], "socket", "{text}");
    assert!(
        !dir.exists(),
        "{} still exists after the butler exited",
        dir.display()
    );
}

#[test]
fn serve_flushes_every_stream_on_sigterm() {
    let tmp = tempdir();
    let out = tmp.path().join("out");
    let s = Serve::start(tmp.path(), &["--output", &dir_output(&out), "serve"]);
    let meta = std::fs::metadata(&s.socket).unwrap();
    assert!(meta.file_type().is_socket(), "{}", s.socket.display());
    let dir_mode = std::fs::metadata(s.socket.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700, "{}", s.socket.display());
    let socket_dir = s.socket.parent().unwrap().to_path_buf();

    // A text stream, closed before the signal.
    let text: Vec<u8> = (0..3000)
        .flat_map(|i| format!("served line {i}\n").into_bytes())
        .collect();
    let c = open_raw(&s.socket, &json!({"name": "x", "type": "text"}), &text);
    c.shutdown(std::net::Shutdown::Write).unwrap();

    // A binary stream larger than the socket buffers, closed before the signal.
    let bin = Rng::new(0x5E7E).bytes((2 << 20) + 3);
    let b = open_raw(
        &s.socket,
        &json!({"name": "dir/bin", "type": "binary", "tags": {"k": "v"}}),
        &bin,
    );
    b.shutdown(std::net::Shutdown::Write).unwrap();

    // Datagrams, framed by hand.
    let grams = [b"one".to_vec(), Vec::new(), Rng::new(3).bytes(70_000)];
    let mut framed = Vec::new();
    for g in &grams {
        put_uvarint(&mut framed, g.len() as u64);
        framed.extend_from_slice(g);
    }
    let d = open_raw(
        &s.socket,
        &json!({"name": "dg", "type": "datagram"}),
        &framed,
    );
    d.shutdown(std::net::Shutdown::Write).unwrap();

    // Still open when the signal arrives, with data written (in two writes).
    let open_data: Vec<u8> = (0..200)
        .flat_map(|i| format!("written before SIGTERM {i}\n").into_bytes())
        .collect();
    let (o1, o2) = open_data.split_at(1000);
    let mut o = open_raw(
        &s.socket,
        &json!({"name": "still/open", "type": "text"}),
        o1,
    );
    o.write_all(o2).unwrap();

    let r = s.terminate(&[&o]);
    r.assert_code(0);
    drop((c, b, d, o));
    assert!(
        r.stderr_str().contains("SIGTERM"),
        "stderr:\n{}",
        r.stderr_str()
    );
    assert_stream(&out, "x", &text);
    assert_stream(&out, "dir/bin", &bin);
    assert_eq!(parse_datagrams(&read(&stream_path(&out, "dg"))), grams);
    assert_stream(&out, "still/open", &open_data);
    assert_eq!(descriptor(&out, "x")["stream_type"], "TEXT");
    let db = descriptor(&out, "dir/bin");
    assert_eq!(db["stream_type"], "BINARY", "{db:#}");
    assert_eq!(db["tags"], json!({"k": "v"}), "{db:#}");
    assert_eq!(descriptor(&out, "dg")["stream_type"], "DATAGRAM");
    assert!(!socket_dir.exists(), "{} left behind", socket_dir.display());
}

/// Blocks until `file` in `dir` is deleted, as seen by `inotify` (set up beforehand). Fails
/// the test if that takes longer than [`STUCK_AFTER`].
fn wait_for_deletion(inotify: Inotify, file: &str) {
    let (tx, rx) = mpsc::channel();
    let file = std::ffi::OsString::from(file);
    // Detached: it stays blocked if the file is never deleted and the test fails.
    std::thread::spawn(move || {
        loop {
            let events = inotify.read_events().expect("reading inotify events");
            if events.iter().any(|e| e.name.as_ref() == Some(&file)) {
                let _ = tx.send(());
                return;
            }
        }
    });
    rx.recv_timeout(STUCK_AFTER)
        .expect("the socket was not removed after SIGTERM");
}

/// A connection made before SIGTERM whose handshake completes only once the server has
/// stopped listening: the stream is still taken (the client's connect succeeded), what it had
/// sent is kept, and the butler exits without waiting for the client to close it.
#[test]
fn serve_stops_a_stream_whose_handshake_completes_after_sigterm() {
    let tmp = tempdir();
    let out = tmp.path().join("out");
    let sock = tmp.path().join("s.sock");
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC).expect("inotify_init");
    inotify
        .add_watch(tmp.path(), AddWatchFlags::IN_DELETE)
        .expect("watching the temporary directory");
    let s = Serve::start(
        tmp.path(),
        &[
            "--output",
            &dir_output(&out),
            "serve",
            "--streamserver-uri",
            &format!("unix:{}", sock.display()),
        ],
    );
    let mut late = UnixStream::connect(&s.socket).unwrap();
    s.signal();
    // The server removes its socket once the shutdown has begun and it has taken every queued
    // connection (this one included).
    wait_for_deletion(inotify, "s.sock");
    let mut msg = handshake(&json!({"name": "late", "type": "text"}));
    msg.extend_from_slice(b"sent after SIGTERM\n");
    late.write_all(&msg).unwrap();
    let r = s.wait(&[&late]);
    r.assert_code(0);
    assert_stream(&out, "late", b"sent after SIGTERM\n");
}

#[test]
fn serve_listens_at_the_given_uri() {
    let tmp = tempdir();
    let out = tmp.path().join("out");
    let sock = tmp.path().join("s.sock");
    let uri = format!("unix:{}", sock.display());
    let s = Serve::start(
        tmp.path(),
        &[
            "--output",
            &dir_output(&out),
            "serve",
            "--streamserver-uri",
            &uri,
        ],
    );
    assert_eq!(s.socket, sock);
    assert!(std::fs::metadata(&sock).unwrap().file_type().is_socket());
    let c = open_raw(
        &sock,
        &json!({"name": "via-uri", "type": "text"}),
        b"hello through s.sock\n",
    );
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let r = s.terminate(&[]);
    r.assert_code(0);
    assert_stream(&out, "via-uri", b"hello through s.sock\n");
    assert!(!sock.exists(), "{} left behind", sock.display());
}

#[test]
fn serve_refuses_duplicates_and_garbage_and_says_so() {
    let tmp = tempdir();
    let out = tmp.path().join("out");
    let s = Serve::start(
        tmp.path(),
        &[
            "--output",
            &dir_output(&out),
            "--log-level",
            "info",
            "serve",
        ],
    );
    let (tx, rx) = mpsc::channel();
    let header = json!({"name": "dup", "type": "text"});

    let a_data = b"stream a, before the duplicate\n".to_vec();
    let b_data = b"stream b, before the duplicate\n".to_vec();
    let a = open_raw(&s.socket, &header, &a_data);
    let b = open_raw(&s.socket, &header, &b_data);
    let mut garbage = UnixStream::connect(&s.socket).unwrap();
    garbage.write_all(b"NOT A HANDSHAKE\n").unwrap();
    let watchers = [
        on_close(&a, "a", &tx),
        on_close(&b, "b", &tx),
        on_close(&garbage, "garbage", &tx),
    ];

    // The butler closes the two refused connections; the stream it kept stays open.
    let refused: BTreeSet<&str> = [rx.recv().unwrap(), rx.recv().unwrap()].into();
    assert!(refused.contains("garbage"), "closed: {refused:?}");
    // Connections are handled concurrently, so which of the two is registered first (and kept)
    // is up to the butler; `a` almost always, as it connected first. The other one is refused
    // as a duplicate while the kept one is open, and must not disturb it.
    let (mut kept, kept_name, mut kept_data) = if refused.contains("b") {
        (a, "a", a_data)
    } else {
        assert!(refused.contains("a"), "closed: {refused:?}");
        (b, "b", b_data)
    };
    let more = b"kept stream, after the duplicate was refused\n";
    kept.write_all(more).unwrap();
    kept_data.extend_from_slice(more);
    kept.shutdown(std::net::Shutdown::Write).unwrap();
    // The butler closes its end once it has read the whole stream.
    assert_eq!(rx.recv().unwrap(), kept_name);
    for w in watchers {
        w.join().unwrap();
    }

    let r = s.terminate(&[]);
    r.assert_code(0);
    assert_stream(&out, "dup", &kept_data);
    let err = r.stderr_str();
    assert!(err.contains("duplicate"), "stderr:\n{err}");
    assert!(err.contains("\"dup\""), "stderr:\n{err}");
    assert!(err.contains("bad_magic"), "stderr:\n{err}");
    // The end-of-run account names every refusal, at the handshake or after it.
    assert!(
        err.contains("connection(s) to the stream server refused: bad_magic"),
        "stderr:\n{err}"
    );
    assert!(
        err.contains("connection(s) to the stream server refused: duplicate"),
        "stderr:\n{err}"
    );
    let mut files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["_dup.desc.json", "dup"]);
}

#[test]
fn descriptors_over_the_collectors_limits_are_refused_at_the_handshake_with_the_reason() {
    let tmp = tempdir();
    let out = tmp.path().join("out");
    // Five global tags of 4,000 bytes: within every limit alone.
    let big = "v".repeat(4000);
    let mut args: Vec<String> = ["--output", &dir_output(&out)].map(String::from).to_vec();
    for i in 0..5 {
        args.push("--tag".into());
        args.push(format!("g{i}={big}"));
    }
    args.push("serve".into());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let s = Serve::start(tmp.path(), &argv);
    let (tx, rx) = mpsc::channel();
    let tags = |n: usize| -> serde_json::Map<String, Value> {
        (0..n).map(|i| (format!("k{i}"), json!(big))).collect()
    };
    // The report's descriptor: 20 tags of 4,000 bytes, each within limits.
    let twenty = open_raw(
        &s.socket,
        &json!({"name": "twenty", "tags": tags(20)}),
        b"never stored\n",
    );
    // Four tags: within the total alone, over it once the global tags are merged.
    let merged = open_raw(
        &s.socket,
        &json!({"name": "merged", "tags": tags(4)}),
        b"never stored\n",
    );
    let long_type = open_raw(
        &s.socket,
        &json!({"name": "long-type", "contentType": "c".repeat(1025)}),
        b"never stored\n",
    );
    let fine_data = b"a stream within the limits\n".to_vec();
    let fine = open_raw(&s.socket, &json!({"name": "fine"}), &fine_data);
    fine.shutdown(std::net::Shutdown::Write).unwrap();
    let watchers = [
        on_close(&twenty, "twenty", &tx),
        on_close(&merged, "merged", &tx),
        on_close(&long_type, "long-type", &tx),
        on_close(&fine, "fine", &tx),
    ];
    let closed: BTreeSet<&str> = (0..4).map(|_| rx.recv().unwrap()).collect();
    assert_eq!(closed.len(), 4, "{closed:?}");
    for w in watchers {
        w.join().unwrap();
    }
    let r = s.terminate(&[]);
    r.assert_code(0);
    assert_stream(&out, "fine", &fine_data);
    let err = r.stderr_str();
    // Each refusal is logged with its reason, and counted in the end-of-run account.
    assert!(
        err.contains("more than 32768 bytes in all"),
        "stderr:\n{err}"
    );
    assert!(err.contains("invalid content type"), "stderr:\n{err}");
    assert!(
        err.contains("connection(s) to the stream server refused: invalid_name_or_tag"),
        "stderr:\n{err}"
    );
    assert!(
        err.contains("1 connection(s) to the stream server refused: invalid_descriptor"),
        "stderr:\n{err}"
    );
    let mut files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["_fine.desc.json", "fine"]);
}
