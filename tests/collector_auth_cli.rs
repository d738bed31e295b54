//! The collector's auth on its command line: `token new` prints a token and an auth-file
//! entry that holds only its hash (and that the collector then accepts), and an open collector
//! refuses to listen beyond loopback unless `--insecure-no-auth` says so.

mod common;

use std::process::Command;

use common::*;
use sha2::{Digest, Sha256};

fn collector_cmd(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_logdog_collector"));
    cmd.args(args).env_remove("RUST_LOG");
    cmd
}

#[test]
fn token_new_prints_a_token_and_an_entry_with_only_its_hash() {
    let tmp = tempdir();
    let d = tmp.path();
    let r = run(
        &mut collector_cmd(&["token", "new", "ci", "--write", "proj", "--read", "*"]),
        Input::Null,
    );
    r.assert_code(0);
    let out = r.stdout_str();
    let (token, entry) = out.split_once('\n').expect("a token line");
    assert!(token.starts_with("ldt_") && token.len() > 40, "{out}");
    let hash: String = Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(entry.contains(&format!("sha256 = \"{hash}\"")), "{entry}");
    assert!(
        !entry.contains(token),
        "the entry holds the token itself:\n{entry}"
    );
    assert!(
        entry.contains("write = [\"proj\"]") && entry.contains("read = [\"*\"]"),
        "{entry}"
    );

    // Two tokens are never the same.
    let again = run(
        &mut collector_cmd(&["token", "new", "ci2", "--read", "proj"]),
        Input::Null,
    );
    again.assert_code(0);
    assert_ne!(again.stdout_str().lines().next(), Some(token));

    // Usage errors.
    for bad in [
        &["token", "new", "x"][..],
        &["token", "new", "x", "--write", "Not-A-Project"][..],
    ] {
        let r = run(&mut collector_cmd(bad), Input::Null);
        r.assert_code(2);
        assert!(!r.stderr_str().is_empty(), "{bad:?}: no message");
    }

    // The entry is an auth file the collector accepts, and the token works with it.
    let auth = d.join("auth.toml");
    std::fs::write(&auth, entry).expect("writing the auth file");
    let auth = auth.to_str().expect("utf-8 path");
    let collector = Collector::start_with(&d.join("data"), "127.0.0.1:0", &["--auth", auth]);
    let output = collector.output();
    for (tok, want_lost) in [(Some(token), false), (None, true)] {
        let mut cmd = butler(
            d,
            &[
                "--output",
                output.as_str(),
                "--project",
                "proj",
                "run",
                "--no-echo",
                "--",
                "echo",
                "hello",
            ],
        );
        cmd.env_remove("LOGDOG_TOKEN");
        if let Some(t) = tok {
            cmd.env("LOGDOG_TOKEN", t);
        }
        let r = run(&mut cmd, Input::Null);
        r.assert_code(0);
        let err = r.stderr_str();
        assert_eq!(
            err.contains("LOST"),
            want_lost,
            "token {}:\n{err}",
            tok.is_some()
        );
        assert_eq!(err.contains("nothing lost"), !want_lost, "{err}");
    }
    assert!(
        !collector.log().contains(token),
        "the token is in the collector's log"
    );
    collector.stop();
}

#[test]
fn an_open_collector_listens_beyond_loopback_only_when_told_it_is_insecure() {
    let tmp = tempdir();
    let d = tmp.path();
    let data = d.join("data");
    let data = data.to_str().expect("utf-8 path");
    for addrs in [
        &["--listen", "0.0.0.0:0"][..],
        &["--listen", "127.0.0.1:0", "--http", "0.0.0.0:0"][..],
        &["--listen", "127.0.0.1:0", "--tail", "[::]:0"][..],
    ] {
        let mut args = addrs.to_vec();
        args.extend(["--data", data]);
        let r = run(&mut collector_cmd(&args), Input::Null);
        assert_ne!(r.code(), 0, "{addrs:?} started without auth");
        let err = r.stderr_str();
        assert!(
            err.contains("without --auth") && err.contains("--insecure-no-auth"),
            "{addrs:?}: {err}"
        );
        assert!(!r.stdout_str().contains("LOGDOG_COLLECTOR="), "{addrs:?}");
    }
    // Told so, it starts, says so, and serves.
    let collector = Collector::start_with(&d.join("open"), "0.0.0.0:0", &["--insecure-no-auth"]);
    let port = collector
        .addr
        .rsplit_once(':')
        .expect("HOST:PORT")
        .1
        .to_string();
    assert!(
        collector.log().contains("--insecure-no-auth"),
        "{}",
        collector.log()
    );
    let output = format!("grpc://127.0.0.1:{port}");
    let r = run(
        &mut butler(
            d,
            &[
                "--output",
                output.as_str(),
                "run",
                "--no-echo",
                "--",
                "echo",
                "hi",
            ],
        ),
        Input::Null,
    );
    r.assert_code(0);
    assert!(
        r.stderr_str().contains("nothing lost"),
        "{}",
        r.stderr_str()
    );
    collector.stop();
}
