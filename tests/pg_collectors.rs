//! Collectors sharing one PostgreSQL database, as real processes: a butler writes through one
//! and every other serves the streams (`logdog`, the viewer, the tail server), followers on
//! one collector see writes made through another as they happen, and `--retain` removes old
//! streams but never one followed through any collector.
//!
//! Needs `LOGDOG_TEST_POSTGRES` (see `tests/common/pg.rs`): without it every test prints
//! SKIPPED, and fails under `CI`.

mod common;
#[path = "common/web_data.rs"]
mod web_data;

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Collector, Guarded, TIMEOUT, drain, logdog, run_butler, tempdir};

/// Polls `cond` until it holds; fails the test after [`TIMEOUT`].
#[track_caller]
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < TIMEOUT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn numbered(from: u64, n: u64) -> String {
    (from..from + n)
        .map(|i| format!("{i:06} a line of the build's output\n"))
        .collect()
}

/// A collector on the shared database `url`, with more flags.
fn collector(dir: &std::path::Path, name: &str, url: &str, extra: &[&str]) -> Collector {
    let mut flags = vec!["--store", url];
    flags.extend_from_slice(extra);
    Collector::start_with(&dir.join(name), "127.0.0.1:0", &flags)
}

/// `logdog tail -f --wait PATH` on `addr`, its stdout collected.
fn follower(addr: &str, path: &str) -> (Guarded, std::thread::JoinHandle<Vec<u8>>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_logdog"));
    cmd.args(["--collector", addr, "tail", "-f", "--wait", "-n", "0", path])
        .env_remove("LOGDOG_COLLECTOR")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut g = Guarded::spawn(&mut cmd);
    let out = drain(g.child.stdout.take().expect("stdout"));
    (g, out)
}

#[test]
fn every_collector_on_one_database_serves_every_stream() {
    let Some(url) = common::pg::database("serve") else {
        return;
    };
    let tmp = tempdir();
    let d = tmp.path();
    let a = collector(d, "a", &url, &[]);
    let b = collector(
        d,
        "b",
        &url,
        &["--http", "127.0.0.1:0", "--tail", "127.0.0.1:0"],
    );
    let want = numbered(0, 20_000);
    std::fs::write(d.join("input"), &want).expect("input");
    let input = d.join("input");
    let out = run_butler(
        d,
        &[
            "--output",
            &a.output(),
            "--prefix",
            "shared",
            "run",
            "--no-echo",
            "--",
            "cat",
            input.to_str().expect("utf-8"),
        ],
    );
    out.assert_code(0);
    let path = "default/shared/+/stdout";
    // `logdog` through the other collector.
    let got = logdog(&b.addr, &["cat", path]);
    got.assert_code(0);
    assert!(got.stdout == want.as_bytes(), "cat through b differs");
    let ls = logdog(&b.addr, &["ls", "default/shared"]);
    assert!(
        ls.stdout_str()
            .contains("default/shared/+/stdout\tcomplete"),
        "{}",
        ls.stdout_str()
    );
    // The viewer of the other collector.
    let http = b.http.clone().expect("viewer");
    let (status, v) = web_data::get_json(&http, &format!("/api/rows/{path}?from=0&count=3"));
    assert_eq!(status, 200, "{v}");
    assert!(v.to_string().contains("000000 a line"), "{v}");
    // Its tail server.
    let tail = b.tail.clone().expect("tail server");
    let mut s = TcpStream::connect(&tail).expect("tail server");
    s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    s.write_all(format!("stream {path}\n").as_bytes())
        .expect("request");
    let mut got = Vec::new();
    s.read_to_end(&mut got).expect("read to the end");
    assert!(got == want.as_bytes(), "tail server through b differs");
    a.stop();
    b.stop();
}

/// The child: phase 1, then waits for the go-file, then phase 2.
const PHASES: &str = r#"cat "$1"; while [ ! -e "$2" ]; do sleep 0.05; done; cat "$3""#;

#[test]
fn followers_on_one_collector_see_writes_through_another_as_they_happen() {
    let Some(url) = common::pg::database("follow") else {
        return;
    };
    let tmp = tempdir();
    let d = tmp.path();
    let a = collector(d, "a", &url, &[]);
    let b = collector(d, "b", &url, &["--tail", "127.0.0.1:0"]);
    let (phase1, phase2) = (numbered(0, 300), numbered(300, 300));
    std::fs::write(d.join("p1"), &phase1).expect("p1");
    std::fs::write(d.join("p2"), &phase2).expect("p2");
    let go = d.join("go");
    let path = "default/live/+/stdout";
    let (mut f, f_out) = follower(&b.addr, path);
    let tail = b.tail.clone().expect("tail server");
    let mut cmd = common::butler_script(
        d,
        &["--output", &a.output(), "--prefix", "live"],
        &[],
        PHASES,
        &[&d.join("p1"), &go, &d.join("p2")],
    );
    let mut butler = Guarded::spawn(&mut cmd);
    // The tail server of b follows too; phase 1 arrives there while the child still waits.
    let s = (|| loop {
        let mut s = TcpStream::connect(&tail).expect("tail server");
        s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        let listed = {
            s.write_all(b"list default/live\n").expect("list");
            let mut text = String::new();
            let _ = s.read_to_string(&mut text);
            text.contains(path)
        };
        if listed {
            let mut s = TcpStream::connect(&tail).expect("tail server");
            s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
            s.write_all(format!("stream {path}\n").as_bytes())
                .expect("request");
            return s;
        }
        std::thread::sleep(Duration::from_millis(50));
    })();
    let mut reader = std::io::BufReader::new(s);
    let mut first = vec![0u8; phase1.len()];
    reader
        .read_exact(&mut first)
        .expect("phase 1 through b while the butler writes to a");
    assert!(first == phase1.as_bytes());
    assert!(!go.exists() && !butler.has_exited());
    std::fs::write(&go, b"").expect("go");
    assert!(butler.wait().success());
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).expect("phase 2");
    assert!(rest == phase2.as_bytes(), "phase 2 through b's tail server");
    assert!(f.wait().success(), "the follower ends with the stream");
    let followed = f_out.join().expect("follower output");
    assert!(
        followed == format!("{phase1}{phase2}").as_bytes(),
        "logdog tail -f through b: {} bytes",
        followed.len()
    );
    let _ = reader.fill_buf();
    a.stop();
    b.stop();
}

#[test]
fn retain_removes_old_streams_but_not_those_followed_through_any_collector() {
    let Some(url) = common::pg::database("retain") else {
        return;
    };
    let tmp = tempdir();
    let d = tmp.path();
    let a = collector(d, "a", &url, &["--retain", "3s"]);
    let b = collector(d, "b", &url, &[]);
    run_butler(
        d,
        &[
            "--output",
            &a.output(),
            "--prefix",
            "old",
            "run",
            "--",
            "echo",
            "old news",
        ],
    )
    .assert_code(0);
    // A follower on b of a stream that stays open: its butler waits for a go-file that never
    // comes, and is killed.
    let path = "default/kept/+/stdout";
    let (mut f, _f_out) = follower(&b.addr, path);
    let go = d.join("never");
    let mut cmd = common::butler_script(
        d,
        &["--output", &a.output(), "--prefix", "kept"],
        &["--heartbeat", "1h"],
        r#"echo still here; while [ ! -e "$1" ]; do sleep 0.05; done"#,
        &[&go],
    );
    let mut butler = Guarded::spawn(&mut cmd);
    wait_until("the kept stream to be stored", || {
        logdog(&a.addr, &["cat", path]).stdout == b"still here\n"
    });
    nix::sys::signal::kill(butler.pid(), nix::sys::signal::Signal::SIGKILL).expect("kill");
    let _ = butler.wait();
    // The old prefix goes; the stream followed through b stays, readable.
    wait_until("the old prefix to be removed", || {
        logdog(&a.addr, &["ls", "default/old"]).code() == 1
    });
    let ls = logdog(&b.addr, &["ls", "default/kept"]).stdout_str();
    assert!(ls.contains(path), "{ls}");
    wait_until("the kept prefix's other streams to be removed", || {
        !logdog(&b.addr, &["ls", "default/kept"])
            .stdout_str()
            .contains("stderr")
    });
    assert_eq!(logdog(&b.addr, &["cat", path]).stdout, b"still here\n");
    assert!(
        a.log().contains("retention removed old streams"),
        "{}",
        a.log()
    );
    drop(f.child.kill());
    let _ = f.wait();
    a.stop();
    b.stop();
}

#[test]
fn bad_store_urls_and_unreachable_databases_are_clear_errors() {
    let tmp = tempdir();
    let collector = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_logdog_collector"));
        cmd.args(["--listen", "127.0.0.1:0", "--data"])
            .arg(tmp.path().join("data"))
            .args(args)
            .env_remove("RUST_LOG");
        common::run(&mut cmd, common::Input::Null)
    };
    let out = collector(&["--store", "mysql://root@db/logs"]);
    out.assert_code(2);
    assert!(
        out.stderr_str().contains("expected postgres://"),
        "{}",
        out.stderr_str()
    );
    let out = collector(&["--store", "postgres://u:hunter2@127.0.0.1:1/logs"]);
    out.assert_code(1);
    let err = out.stderr_str();
    assert!(
        err.contains("cannot open the store at postgres://u:***@127.0.0.1:1/logs"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "the password is not shown: {err}");
    let out = collector(&["--store", "postgres://u@127.0.0.1:1/logs", "verify"]);
    out.assert_code(2);
    assert!(
        out.stderr_str().contains("verify scans the embedded store"),
        "{}",
        out.stderr_str()
    );
    let out = collector(&["--retain", "10ms"]);
    out.assert_code(2);
}
