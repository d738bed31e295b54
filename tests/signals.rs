//! End-to-end tests of `run` and signals: the command runs in its own process group, the
//! first SIGTERM reaches the whole group, the grace period bounds the run whatever the
//! grandchildren do, and a second signal leaves no grandchild behind.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{ChildStderr, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Guarded, butler, dir_output, drain, read, tempdir};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The butler's flush timeout in these tests (nothing to flush to but a directory).
const FLUSH: &str = "5s";

/// Slack on a loaded machine, on top of the grace period and the flush timeout.
const SLACK: Duration = Duration::from_secs(20);

/// A butler running `run --grace-period GRACE -- sh -c SCRIPT`, stopped at the script's
/// "ready" line (which it writes once it is set up).
struct Running {
    g: Guarded,
    out: PathBuf,
    stdout: std::thread::JoinHandle<Vec<u8>>,
    stderr_lines: mpsc::Receiver<String>,
    stderr_reader: std::thread::JoinHandle<()>,
}

/// Reads stderr line by line onto a channel (and keeps every line).
fn lines(err: ChildStderr) -> (mpsc::Receiver<String>, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let h = std::thread::spawn(move || {
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (rx, h)
}

impl Running {
    fn start(tmp: &Path, grace: &str, script: &str) -> Self {
        let out = tmp.join("out");
        let ready = tmp.join("ready");
        let args: Vec<String> = vec![
            "--output".into(),
            dir_output(&out),
            "--prefix".into(),
            "sig".into(),
            "--flush-timeout".into(),
            FLUSH.into(),
            "run".into(),
            "--no-echo".into(),
            "--result-path".into(),
            tmp.join("result.json").display().to_string(),
            "--grace-period".into(),
            grace.into(),
            "--".into(),
            "sh".into(),
            "-c".into(),
            script.into(),
        ];
        let mut cmd = butler(tmp, &args);
        cmd.env("READY", &ready)
            .env("PIDS", tmp.join("pids"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut g = Guarded::spawn(&mut cmd);
        let stdout = drain(g.child.stdout.take().expect("stdout"));
        let (stderr_lines, stderr_reader) = lines(g.child.stderr.take().expect("stderr"));
        // The script creates $READY once set up: poll for it, with a generous deadline.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready.exists() {
            assert!(
                !g.has_exited(),
                "the butler exited before the command was ready"
            );
            assert!(Instant::now() < deadline, "the command never got ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            g,
            out,
            stdout,
            stderr_lines,
            stderr_reader,
        }
    }

    /// Waits for a stderr line containing `what`; returns every line read so far.
    fn wait_for_stderr(&self, what: &str, seen: &mut Vec<String>) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(what);
                    seen.push(line);
                    if found {
                        return;
                    }
                }
                Err(_) => panic!("no {what:?} on stderr; got:\n{}", seen.join("\n")),
            }
        }
    }

    /// Waits for the butler; returns its exit code, its whole stderr and the time it took
    /// from `since`.
    fn finish(mut self, since: Instant, mut seen: Vec<String>) -> (i32, String, Duration) {
        let status = self.g.wait();
        let elapsed = since.elapsed();
        let _ = self.stdout.join();
        seen.extend(self.stderr_lines.iter());
        let _ = self.stderr_reader.join();
        let stderr = seen.join("\n");
        let code = status
            .code()
            .unwrap_or_else(|| panic!("butler killed: {status:?}; stderr:\n{stderr}"));
        (code, stderr, elapsed)
    }
}

/// The process ids the script wrote to $PIDS, one a line.
fn pids(tmp: &Path) -> Vec<Pid> {
    String::from_utf8_lossy(&read(&tmp.join("pids")))
        .split_whitespace()
        .map(|p| Pid::from_raw(p.parse().expect("a pid")))
        .collect()
}

/// Whether `pid` is gone (or a zombie waiting to be reaped by whoever adopted it).
fn gone(pid: Pid) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

/// Polls until every one of `pids` is gone, failing after a generous deadline.
#[track_caller]
fn assert_all_gone(pids: &[Pid]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pids.iter().all(|p| gone(*p)) {
        assert!(
            Instant::now() < deadline,
            "still running: {:?}",
            pids.iter().filter(|p| !gone(**p)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills what a test left running on purpose (a process outside the command's group).
struct KillOnDrop(Vec<Pid>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = kill(*p, Signal::SIGKILL);
        }
    }
}

#[test]
fn sigterm_reaches_the_grandchildren_that_hold_the_pipes() {
    let tmp = tempdir();
    // Before: SIGTERM reached `sh` only, and the butler waited for `sleep` to close the pipes.
    let run = Running::start(
        tmp.path(),
        "60s",
        r#"sleep 600 & echo $! > "$PIDS"; echo started; touch "$READY"; wait"#,
    );
    let grandchildren = pids(tmp.path());
    let _cleanup = KillOnDrop(grandchildren.clone());
    let sent = Instant::now();
    kill(run.g.pid(), Signal::SIGTERM).expect("SIGTERM");
    let out = run.out.clone();
    let (code, stderr, elapsed) = run.finish(sent, Vec::new());
    assert_eq!(code, 143, "stderr:\n{stderr}");
    assert!(
        elapsed < Duration::from_secs(30),
        "took {elapsed:?}: the 60s grace period should not have been needed; stderr:\n{stderr}"
    );
    assert!(stderr.contains("process group"), "{stderr}");
    assert_all_gone(&grandchildren);
    assert_eq!(read(&out.join("stdout")), b"started\n");
}

#[test]
fn a_grandchild_ignoring_sigterm_is_killed_when_the_grace_period_ends() {
    let tmp = tempdir();
    let grace = Duration::from_secs(2);
    // The ignored SIGTERM is inherited by `sleep`, which holds stdout and stderr.
    let run = Running::start(
        tmp.path(),
        "2s",
        r#"trap "" TERM; sleep 600 & echo $! > "$PIDS"; touch "$READY"; wait; wait"#,
    );
    let grandchildren = pids(tmp.path());
    let _cleanup = KillOnDrop(grandchildren.clone());
    let sent = Instant::now();
    kill(run.g.pid(), Signal::SIGTERM).expect("SIGTERM");
    let (code, stderr, elapsed) = run.finish(sent, Vec::new());
    assert_eq!(code, 137, "stderr:\n{stderr}");
    assert!(
        elapsed >= grace - Duration::from_millis(100),
        "finished after {elapsed:?}, before the grace period"
    );
    let bound = grace + Duration::from_secs(5) + SLACK;
    assert!(
        elapsed < bound,
        "took {elapsed:?} (bound {bound:?}); stderr:\n{stderr}"
    );
    assert!(stderr.contains("grace period over"), "{stderr}");
    assert_all_gone(&grandchildren);
}

#[test]
fn a_detached_grandchild_holding_the_pipes_does_not_hold_the_butler_past_the_grace_period() {
    let tmp = tempdir();
    let grace = Duration::from_secs(2);
    // `setsid` puts the grandchild in a session (and process group) of its own: no signal to
    // the command's group reaches it, and it keeps stdout and stderr open.
    let run = Running::start(
        tmp.path(),
        "2s",
        r#"setsid sh -c 'echo $$ > "$PIDS"; trap "" TERM; exec sleep 600' &
           while [ ! -s "$PIDS" ]; do sleep 0.01; done
           echo before; touch "$READY"; wait"#,
    );
    let detached = pids(tmp.path());
    let _cleanup = KillOnDrop(detached.clone());
    let sent = Instant::now();
    kill(run.g.pid(), Signal::SIGTERM).expect("SIGTERM");
    let out = run.out.clone();
    let (code, stderr, elapsed) = run.finish(sent, Vec::new());
    // `sh` itself died of the SIGTERM.
    assert_eq!(code, 143, "stderr:\n{stderr}");
    let bound = grace + Duration::from_secs(5) + SLACK;
    assert!(
        elapsed < bound,
        "took {elapsed:?} (bound {bound:?}); stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("no longer read"),
        "the early end is not reported: {stderr}"
    );
    // The summary calls both streams lost: they were not read to their end.
    assert!(stderr.contains("not read to its end"), "{stderr}");
    assert!(stderr.contains("LOST"), "{stderr}");
    assert_eq!(read(&out.join("stdout")), b"before\n");
    let v: serde_json::Value =
        serde_json::from_slice(&read(&tmp.path().join("result.json"))).expect("result JSON");
    for s in ["stdout", "stderr"] {
        let e = v["streams"][s]["error"].as_str().unwrap_or_default();
        assert!(e.contains("not read to its end"), "{s}: {v:#}");
    }
    assert!(
        !detached.iter().all(|p| gone(*p)),
        "the detached process was killed"
    );
}

#[test]
fn a_second_signal_kills_the_whole_group_and_exits_at_once() {
    let tmp = tempdir();
    let run = Running::start(
        tmp.path(),
        "600s",
        r#"trap "" TERM; sleep 600 & echo $! > "$PIDS"; touch "$READY"; wait; wait"#,
    );
    let grandchildren = pids(tmp.path());
    let _cleanup = KillOnDrop(grandchildren.clone());
    let sent = Instant::now();
    kill(run.g.pid(), Signal::SIGTERM).expect("SIGTERM");
    // The second signal once the first has been handled (the butler says so).
    let mut seen = Vec::new();
    run.wait_for_stderr("before SIGKILL", &mut seen);
    kill(run.g.pid(), Signal::SIGTERM).expect("second SIGTERM");
    let (code, stderr, elapsed) = run.finish(sent, seen);
    assert_eq!(code, 143, "stderr:\n{stderr}");
    assert!(
        elapsed < Duration::from_secs(60),
        "took {elapsed:?} with a 600s grace period: the second signal did not end it"
    );
    assert!(stderr.contains("second SIGTERM"), "{stderr}");
    // No orphan left behind.
    assert_all_gone(&grandchildren);
    let v: serde_json::Value =
        serde_json::from_slice(&read(&tmp.path().join("result.json"))).expect("result JSON");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains("second SIGTERM"),
        "{v:#}"
    );
}
