//! End-to-end tests that nothing is lost without the user being told: long lines and large
//! datagrams arrive in as few pieces as a bundle allows, a refused stream is reported (and
//! fails `pipe`), `--result-path` is written on every way out, and more concurrent streams
//! than the open-file limit allows all arrive intact.
//!
//! Child programs written in Rust are this test binary itself, run again: the ignored test
//! [`child_main`] does nothing unless `LOGDOG_TEST_CHILD` names a scenario, which it then plays.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;

use common::{Guarded, Input, Rng, butler, dir_output, drain, read, run, stream_path, tempdir};
use logdog_client::{Client, StreamOptions};
use nix::sys::signal::{Signal, kill};
use serde_json::Value;

/// Names the scenario a re-executed test binary plays (see [`child_main`]).
const CHILD_VAR: &str = "LOGDOG_TEST_CHILD";

/// The command line that runs this test binary as a child playing `scenario` (through `env`,
/// so it can follow `--` on the butler's command line).
fn child_command(scenario: &str) -> Vec<String> {
    let exe = std::env::current_exe().expect("the test binary's path");
    vec![
        "env".into(),
        format!("{CHILD_VAR}={scenario}"),
        exe.display().to_string(),
        "--ignored".into(),
        "--exact".into(),
        "child_main".into(),
        "--nocapture".into(),
        "--test-threads".into(),
        "1".into(),
    ]
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
        "over_the_fd_limit" => child_over_the_fd_limit(),
        "over_the_fd_limit_part" => child_over_the_fd_limit_part(),
        other => panic!("unknown child scenario {other:?}"),
    }
}

/// The result file written by `--result-path`.
#[track_caller]
fn result_json(path: &Path) -> Value {
    serde_json::from_slice(&read(path)).expect("the result file is JSON")
}

// ---------------------------------------------------------------------------------------------
// Long lines and large datagrams.

/// A 9 MiB line on stdout and a 9 MiB datagram (sent by `pipe --type datagram`, which uses the
/// client crate) each go out as at most two entries with the directory output's 8 MiB bundles,
/// and arrive byte for byte.
#[test]
fn a_nine_mib_line_and_datagram_are_at_most_two_entries_each() {
    let tmp = tempdir();
    let out = tmp.path().join("out");
    let result = tmp.path().join("result.json");
    let line_file = tmp.path().join("line.txt");
    let mut rng = Rng::new(0x9_0000);
    let mut line: Vec<u8> = rng
        .bytes(9 << 20)
        .into_iter()
        .map(|b| b' ' + b % 95)
        .collect();
    line.push(b'\n');
    std::fs::write(&line_file, &line).unwrap();
    let script = r#"cat "$1" && "$2" pipe --type datagram big/datagram < "$1""#;
    let r = run(
        &mut butler(
            tmp.path(),
            &[
                "--output",
                &dir_output(&out),
                "run",
                "--no-echo",
                "--result-path",
                result.to_str().unwrap(),
                "--",
                "sh",
                "-c",
                script,
                "sh",
                line_file.to_str().unwrap(),
                env!("CARGO_BIN_EXE_logdog_butler"),
            ],
        ),
        Input::Null,
    );
    r.assert_code(0);
    assert_eq!(read(&stream_path(&out, "stdout")), line, "stdout differs");
    let mut framed = Vec::new();
    logdog_proto::handshake::put_uvarint(&mut framed, (line.len() - 1) as u64);
    framed.extend_from_slice(&line[..line.len() - 1]);
    assert!(
        read(&stream_path(&out, "big/datagram")) == framed,
        "the datagram differs"
    );
    let v = result_json(&result);
    let entries = |name: &str| v["streams"][name]["entries"].as_u64().unwrap_or(u64::MAX);
    assert!(
        entries("stdout") <= 2,
        "the line took {} entries",
        entries("stdout")
    );
    assert!(
        entries("big/datagram") <= 2,
        "the datagram took {} entries",
        entries("big/datagram")
    );
    assert_eq!(v["totals"]["streams_with_losses"], 0, "{v:#}");
}

// ---------------------------------------------------------------------------------------------
// Refused streams.

/// A second `pipe` with a name already taken is refused: it exits 1 with the butler's reason,
/// the summary has a REFUSED row and does not say "nothing lost", and the result file lists the
/// refusal.
#[test]
fn pipe_with_a_name_already_taken_is_refused_and_says_so() {
    let tmp = tempdir();
    let out = tmp.path().join("out");
    let result = tmp.path().join("result.json");
    let script = r#"printf 'first\n' | "$1" pipe tool/out || exit 10
printf 'second\n' | "$1" pipe tool/out"#;
    let r = run(
        &mut butler(
            tmp.path(),
            &[
                "--output",
                &dir_output(&out),
                "run",
                "--result-path",
                result.to_str().unwrap(),
                "--",
                "sh",
                "-c",
                script,
                "sh",
                env!("CARGO_BIN_EXE_logdog_butler"),
            ],
        ),
        Input::Null,
    );
    // `run` exits with the child's status: the second `pipe`'s.
    r.assert_code(1);
    let err = r.stderr_str();
    assert!(
        err.contains("the butler refused stream \"tool/out\": duplicate stream name"),
        "stderr:\n{err}"
    );
    let row = err
        .lines()
        .find(|l| l.trim_start().starts_with("tool/out") && l.contains("REFUSED"))
        .unwrap_or_else(|| panic!("no REFUSED row in the summary:\n{err}"));
    assert!(row.contains("duplicate stream name"), "{row}");
    let total = err
        .lines()
        .find(|l| l.trim_start().starts_with("total"))
        .unwrap_or_else(|| panic!("no totals row:\n{err}"));
    assert!(!total.contains("nothing lost"), "{total}");
    assert!(total.contains("1 stream(s) REFUSED"), "{total}");
    assert_eq!(read(&stream_path(&out, "tool/out")), b"first\n");

    let v = result_json(&result);
    assert_eq!(v["exit_code"], 1, "{v:#}");
    assert_eq!(v["refused_connections"]["duplicate_name"], 1, "{v:#}");
    assert_eq!(v["refused_streams"][0]["name"], "tool/out", "{v:#}");
    assert_eq!(v["refused_streams"][0]["kind"], "duplicate_name", "{v:#}");
    assert_eq!(v["totals"]["streams_refused"], 1, "{v:#}");
}

/// A refused `pipe` with more to send than the socket holds: its writes fail once the butler
/// has closed the connection, and it still reports the butler's reason.
#[test]
fn a_refused_pipe_whose_writes_fail_still_gives_the_reason() {
    let tmp = tempdir();
    let script = r#"printf 'first\n' | "$1" pipe taken || exit 10
head -c 8388608 /dev/zero | "$1" pipe taken"#;
    let r = run(
        &mut butler(
            tmp.path(),
            &[
                "--output",
                "null",
                "run",
                "--no-summary",
                "--",
                "sh",
                "-c",
                script,
                "sh",
                env!("CARGO_BIN_EXE_logdog_butler"),
            ],
        ),
        Input::Null,
    );
    r.assert_code(1);
    let err = r.stderr_str();
    assert!(
        err.contains("the butler refused stream \"taken\": duplicate stream name"),
        "stderr:\n{err}"
    );
    // --no-summary still names the refused stream.
    assert!(err.contains("stream \"taken\" REFUSED"), "stderr:\n{err}");
}

/// `pipe` still exits 0 when its stream is taken.
#[test]
fn pipe_whose_stream_is_accepted_exits_0() {
    let tmp = tempdir();
    let out = tmp.path().join("out");
    let r = run(
        &mut butler(
            tmp.path(),
            &[
                "--output",
                &dir_output(&out),
                "run",
                "--no-echo",
                "--",
                "sh",
                "-c",
                r#"printf 'hello\nworld' | "$1" pipe a/b"#,
                "sh",
                env!("CARGO_BIN_EXE_logdog_butler"),
            ],
        ),
        Input::Null,
    );
    r.assert_code(0);
    assert_eq!(read(&stream_path(&out, "a/b")), b"hello\nworld");
    assert!(
        r.stderr_str().contains("nothing lost"),
        "{}",
        r.stderr_str()
    );
}

/// A server that gives no verdicts (LogDog's, or an older butler) reads the stream and closes:
/// `pipe` takes the end of file without a verdict as success.
#[test]
fn pipe_to_a_server_without_verdicts_exits_0() {
    use std::os::unix::net::UnixListener;
    let tmp = tempdir();
    let sock = tmp.path().join("old.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut all = Vec::new();
        std::io::Read::read_to_end(&mut conn, &mut all).unwrap();
        all
    });
    let mut cmd = butler(tmp.path(), &["pipe", "old/server"]);
    cmd.env(
        "LOGDOG_STREAM_SERVER_PATH",
        format!("unix:{}", sock.display()),
    );
    let r = run(&mut cmd, Input::Bytes(b"to an old server\n".to_vec()));
    r.assert_code(0);
    assert!(r.stderr.is_empty(), "stderr:\n{}", r.stderr_str());
    let got = server.join().unwrap();
    assert!(got.ends_with(b"to an old server\n"), "{got:?}");
}

// ---------------------------------------------------------------------------------------------
// The result file on every way out.

/// A command that does not exist: exit 250, and the result file says so.
#[test]
fn result_file_is_written_when_the_command_is_missing() {
    let tmp = tempdir();
    let result = tmp.path().join("result.json");
    let r = run(
        &mut butler(
            tmp.path(),
            &[
                "--output",
                "null",
                "--prefix",
                "p",
                "run",
                "--result-path",
                result.to_str().unwrap(),
                "--",
                "/nonexistent/command",
            ],
        ),
        Input::Null,
    );
    r.assert_code(250);
    let v = result_json(&result);
    assert_eq!(v["exit_code"], 250, "{v:#}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains("/nonexistent/command"),
        "{v:#}"
    );
    assert_eq!(v["command"][0], "/nonexistent/command", "{v:#}");
    assert_eq!(v["prefix"], "p", "{v:#}");
    assert!(v["refused_connections"].is_object(), "{v:#}");
}

/// A result path that cannot be written is a usage error, found before the command runs.
#[test]
fn unwritable_result_path_fails_before_the_command_starts() {
    let tmp = tempdir();
    let marker = tmp.path().join("ran");
    let result = tmp.path().join("no/such/dir/result.json");
    let r = run(
        &mut butler(
            tmp.path(),
            &[
                "--output",
                "null",
                "run",
                "--result-path",
                result.to_str().unwrap(),
                "--",
                "touch",
                marker.to_str().unwrap(),
            ],
        ),
        Input::Null,
    );
    r.assert_code(2);
    assert!(
        r.stderr_str().contains("--result-path"),
        "{}",
        r.stderr_str()
    );
    assert!(!marker.exists(), "the command ran");
}

/// A second SIGTERM makes the butler exit at once (143), and the result file is written.
#[test]
fn result_file_is_written_after_a_second_signal() {
    let tmp = tempdir();
    let result = tmp.path().join("result.json");
    let mut cmd = butler(
        tmp.path(),
        &[
            "--output",
            "null",
            "run",
            "--result-path",
            result.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "trap '' TERM; echo ready; while :; do sleep 1; done",
        ],
    );
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut g = Guarded::spawn(&mut cmd);
    let mut stdout = BufReader::new(g.child.stdout.take().unwrap());
    let mut stderr = BufReader::new(g.child.stderr.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    kill(g.pid(), Signal::SIGTERM).unwrap();
    // The second signal only once the first has been handled (signals may coalesce).
    let mut err = String::new();
    loop {
        line.clear();
        let n = stderr.read_line(&mut line).unwrap();
        assert!(
            n > 0,
            "stderr ended before the first signal was handled:\n{err}"
        );
        err.push_str(&line);
        if line.contains("passed to the command") {
            break;
        }
    }
    kill(g.pid(), Signal::SIGTERM).unwrap();
    let rest = drain(stderr);
    let status = g.wait();
    let err = err + &String::from_utf8_lossy(&rest.join().unwrap());
    assert_eq!(status.code(), Some(143), "stderr:\n{err}");
    let v = result_json(&result);
    assert_eq!(v["exit_code"], 143, "{v:#}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains("second SIGTERM"),
        "{v:#}"
    );
}

// ---------------------------------------------------------------------------------------------
// More concurrent streams than open files.

/// Streams the child of [`streams_beyond_the_open_file_limit_all_arrive`] opens at once.
const OVER: usize = 1100;
/// The open-file limit (soft and hard) the butler and its child run under.
const FD_LIMIT: u64 = 1024;

fn over_name(i: usize) -> String {
    format!("over/s{i:04}")
}

/// A distinct payload of 1–5 KiB for stream `i`.
fn over_payload(i: usize) -> Vec<u8> {
    let mut rng = Rng::new(0x0FD + i as u64);
    let len = 1024 + rng.below(4096) as usize;
    let mut v = format!("stream {i}\n").into_bytes();
    v.extend(rng.bytes(len));
    v
}

/// Processes that share the OVER streams, so that each stays under the open-file limit.
const PARTS: usize = 2;
/// What a part prints once all its streams are open.
const ALL_OPEN: &str = "<all streams open>\n";
/// Tells a part which share of the streams is its own.
const PART_VAR: &str = "LOGDOG_TEST_PART";

/// Starts PARTS processes that open their share of the OVER streams and write the first half
/// of each; once every part has said so (all OVER streams are open at once), tells them to
/// write the second halves and close.
fn child_over_the_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit};
    let limits = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert_eq!(limits, (FD_LIMIT, FD_LIMIT), "the child's RLIMIT_NOFILE");
    let mut parts: Vec<_> = (0..PARTS)
        .map(|k| {
            let args = child_command("over_the_fd_limit_part");
            std::process::Command::new(&args[0])
                .args(&args[1..])
                .env(PART_VAR, k.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("starting a part")
        })
        .collect();
    for p in &mut parts {
        let mut out = BufReader::new(p.stdout.take().unwrap());
        let mut line = String::new();
        // libtest may have printed the test's name on the same line.
        while !line.ends_with(ALL_OPEN) {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "a part ended early");
        }
    }
    for p in &mut parts {
        p.stdin.take().unwrap().write_all(b"go\n").unwrap();
    }
    for mut p in parts {
        assert!(p.wait().unwrap().success(), "a part failed");
    }
    std::io::stdout().flush().unwrap();
    std::process::exit(0);
}

/// One part: opens its streams, writes half of each, says [`ALL_OPEN`], waits for "go" on stdin,
/// then writes the rest and closes them.
fn child_over_the_fd_limit_part() {
    let k: usize = std::env::var(PART_VAR).unwrap().parse().unwrap();
    let client = Client::from_env().expect("the child runs under a butler");
    let mine: Vec<usize> = (0..OVER).filter(|i| i % PARTS == k).collect();
    let mut streams: Vec<_> = mine
        .iter()
        .map(|&i| {
            let mut s = client
                .open_binary(&over_name(i), &StreamOptions::new())
                .unwrap_or_else(|e| panic!("opening stream {i}: {e}"));
            let p = over_payload(i);
            s.write_all(&p[..p.len() / 2])
                .unwrap_or_else(|e| panic!("writing stream {i}: {e}"));
            (i, s)
        })
        .collect();
    let mut stdout = std::io::stdout();
    stdout.write_all(ALL_OPEN.as_bytes()).unwrap();
    stdout.flush().unwrap();
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).unwrap();
    assert_eq!(go, "go\n");
    for (i, s) in &mut streams {
        let p = over_payload(*i);
        s.write_all(&p[p.len() / 2..])
            .unwrap_or_else(|e| panic!("writing stream {i}: {e}"));
    }
    for (i, s) in streams {
        s.close()
            .unwrap_or_else(|e| panic!("closing stream {i}: {e}"));
    }
    std::process::exit(0);
}

/// Under `ulimit -n 1024` (soft and hard, so the butler cannot raise it), children hold 1,100
/// streams open at once: every one arrives byte for byte and nothing is reported lost.
#[test]
fn streams_beyond_the_open_file_limit_all_arrive() {
    let tmp = tempdir();
    let out = tmp.path().join("out");
    let result = tmp.path().join("result.json");
    let mut args: Vec<String> = vec![
        "-c".into(),
        format!("ulimit -n {FD_LIMIT} && exec \"$0\" \"$@\""),
        env!("CARGO_BIN_EXE_logdog_butler").into(),
        "--output".into(),
        dir_output(&out),
        "run".into(),
        "--no-echo".into(),
        "--result-path".into(),
        result.display().to_string(),
        "--".into(),
    ];
    args.extend(child_command("over_the_fd_limit"));
    let mut cmd = std::process::Command::new("sh");
    cmd.current_dir(tmp.path())
        .args(&args)
        .env_remove("RUST_LOG");
    for v in ["LOGDOG_STREAM_SERVER_PATH", "LOGDOG_NAMESPACE"] {
        cmd.env_remove(v);
    }
    let r = run(&mut cmd, Input::Null);
    r.assert_code(0);
    for i in 0..OVER {
        let got = read(&stream_path(&out, &over_name(i)));
        assert!(
            got == over_payload(i),
            "stream {i} differs ({} bytes)",
            got.len()
        );
    }
    let files = std::fs::read_dir(out.join("over")).unwrap().count();
    assert_eq!(files, 2 * OVER, "a stream file and a descriptor per stream");
    let err = r.stderr_str();
    for bad in [
        "LOST",
        "REFUSED",
        "dropped",
        "refused",
        "ERROR",
        "Too many open files",
    ] {
        assert!(!err.contains(bad), "{bad:?} on stderr:\n{err}");
    }
    let v = result_json(&result);
    // Theirs, stdout, stderr and the run record.
    assert_eq!(v["totals"]["streams"], OVER as u64 + 3, "{v:#}");
    assert_eq!(v["totals"]["streams_with_losses"], 0, "{v:#}");
    assert_eq!(v["refused_connections"], serde_json::json!({}), "{v:#}");
    assert_eq!(v["output"]["failed_bundles"], 0, "{v:#}");
}
