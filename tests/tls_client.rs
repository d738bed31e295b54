//! The butler and `logdog` against a collector over TLS and with tokens: `grpcs://` with
//! `--ca-cert` delivers byte-identical streams, a wrong CA is refused with a clear message, the
//! token never reaches the command or a log line, the prefix secret is the same in every
//! spooled bundle of a run (so that `resume` and the next `run` on the spool finish the upload),
//! and a collector with `--auth` stores what a butler with a valid token sends and refuses the
//! rest for good.
//!
//! The tests named `with_collector_auth_*` need the collector to enforce tokens, which is not
//! part of this branch's collector.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::pki::{Pki, TestToken, write_auth_file};
use common::*;
use logdog_outputs::spool::{Item, SpoolReader};
use logdog_proto::logpb;
use nix::sys::signal::{Signal, kill};
use prost::Message;

/// The token variable.
const TOKEN_ENV: &str = "LOGDOG_TOKEN";

/// A collector serving TLS with `pki` (and `extra` flags) on a fresh port of 127.0.0.1.
fn tls_collector(data: &Path, pki: &Pki, extra: &[&str]) -> Collector {
    tls_collector_at(data, pki, "127.0.0.1:0", extra)
}

fn tls_collector_at(data: &Path, pki: &Pki, listen: &str, extra: &[&str]) -> Collector {
    let mut flags: Vec<String> = pki.flags();
    flags.extend(extra.iter().map(|s| s.to_string()));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Collector::start_with(data, listen, &flags)
}

/// `grpcs://ADDR`.
fn grpcs(c: &Collector) -> String {
    format!("grpcs://{}", c.addr)
}

/// A butler command with `token` (or none) in its environment.
fn butler_with_token<S: AsRef<std::ffi::OsStr>>(
    cwd: &Path,
    token: Option<&str>,
    args: &[S],
) -> Command {
    let mut cmd = butler(cwd, args);
    cmd.env_remove(TOKEN_ENV);
    if let Some(t) = token {
        cmd.env(TOKEN_ENV, t);
    }
    cmd
}

/// Runs `logdog --collector grpcs://ADDR --ca-cert CA ARGS`, with `token` (or none).
fn logdog_tls<S: AsRef<std::ffi::OsStr>>(
    c: &Collector,
    ca: &Path,
    token: Option<&str>,
    args: &[S],
) -> Finished {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_logdog"));
    cmd.arg("--collector")
        .arg(grpcs(c))
        .arg("--ca-cert")
        .arg(ca)
        .args(args)
        .env_remove("LOGDOG_COLLECTOR")
        .env_remove("RUST_LOG")
        .env_remove(TOKEN_ENV);
    if let Some(t) = token {
        cmd.env(TOKEN_ENV, t);
    }
    run(&mut cmd, Input::Null)
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

#[test]
fn a_butler_over_tls_delivers_byte_identical_streams_and_keeps_its_token_to_itself() {
    let tmp = tempdir();
    let d = tmp.path();
    let pki = Pki::new(d, "main");
    let collector = tls_collector(&d.join("data"), &pki, &[]);
    let file = d.join("out.txt");
    write_text_file(&file, 2 << 20, 0x7150_0001);
    let token = "ldt_test_do_not_show_me_0123456789";
    let r = run(
        &mut butler_with_token(
            d,
            Some(token),
            &[
                "--output",
                &grpcs(&collector),
                "--ca-cert",
                path_str(&pki.ca),
                "--prefix",
                "tls",
                "run",
                "--no-echo",
                "--",
                "sh",
                "-c",
                r#"cat "$1"; env >&2"#,
                "sh",
                path_str(&file),
            ],
        ),
        Input::Null,
    );
    r.assert_code(0);
    let err = r.stderr_str();
    assert!(err.contains("nothing lost"), "{err}");
    assert!(err.contains(&format!("via {}", grpcs(&collector))), "{err}");
    assert!(!err.contains(token), "the token is never shown:\n{err}");

    let got = logdog_tls(&collector, &pki.ca, None, &["cat", "default/tls/+/stdout"]);
    got.assert_code(0);
    assert!(
        got.stdout == read(&file),
        "{} bytes read back, {} written",
        got.stdout.len(),
        read(&file).len()
    );
    // The command's environment: no token, and the collector with its scheme.
    let env = logdog_tls(&collector, &pki.ca, None, &["cat", "default/tls/+/stderr"]);
    env.assert_code(0);
    let env = env.stdout_str();
    assert!(env.contains("LOGDOG_STREAM_PREFIX=tls"), "{env}");
    assert!(!env.contains(TOKEN_ENV), "{env}");
    assert!(!env.contains(token), "{env}");
    assert!(
        env.contains(&format!("LOGDOG_COORDINATOR_HOST={}", grpcs(&collector))),
        "{env}"
    );

    // Not even the most verbose log shows the token (from a file this time).
    let token_file = d.join("token");
    std::fs::write(&token_file, format!("  {token}\n")).expect("write the token file");
    let r = run(
        &mut butler_with_token(
            d,
            None,
            &[
                "--output",
                &grpcs(&collector),
                "--ca-cert",
                path_str(&pki.ca),
                "--token-file",
                path_str(&token_file),
                "--prefix",
                "verbose",
                "--log-level",
                "trace",
                "run",
                "--",
                "sh",
                "-c",
                "echo hello; env | grep -c LOGDOG_TOKEN || true",
            ],
        ),
        Input::Null,
    );
    r.assert_code(0);
    assert!(
        r.stdout_str().starts_with("hello\n0\n"),
        "{}",
        r.stdout_str()
    );
    let err = r.stderr_str();
    assert!(err.contains("nothing lost"), "{err}");
    assert!(!err.contains(token), "the token is never shown:\n{err}");
    collector.stop();
}

#[test]
fn a_wrong_ca_is_refused_clearly_and_spooled_bundles_wait_for_the_right_one() {
    let tmp = tempdir();
    let d = tmp.path();
    let pki = Pki::new(d, "right");
    let wrong = Pki::new(d, "wrong");
    let collector = tls_collector(&d.join("data"), &pki, &[]);
    let want_msg = format!(
        "TLS handshake with {} failed: invalid peer certificate: UnknownIssuer — is --ca-cert \
         the collector's CA?",
        collector.addr
    );

    // run: the streams are LOST with the reason; the exit status stays the command's.
    let r = run_butler(
        d,
        &[
            "--output",
            &grpcs(&collector),
            "--ca-cert",
            path_str(&wrong.ca),
            "--prefix",
            "wrong",
            "run",
            "--",
            "sh",
            "-c",
            "echo lost",
        ],
    );
    r.assert_code(0);
    let err = r.stderr_str();
    assert!(err.contains(&want_msg), "{err}");
    assert!(err.contains("LOST"), "{err}");
    assert!(!err.contains("nothing lost"), "{err}");

    // stream: the upload failed, so the butler fails.
    let input = d.join("input.txt");
    std::fs::write(&input, "some text\n").expect("write input");
    let r = run_butler(
        d,
        &[
            "--output",
            &grpcs(&collector),
            "--ca-cert",
            path_str(&wrong.ca),
            "--prefix",
            "wrong2",
            "stream",
            "--source",
            path_str(&input),
        ],
    );
    assert_ne!(r.code(), 0, "{}", r.stderr_str());
    assert!(r.stderr_str().contains(&want_msg), "{}", r.stderr_str());

    // logdog: a clear message, exit 1.
    let r = logdog_tls(&collector, &wrong.ca, None, &["ls", "default"]);
    r.assert_code(1);
    assert!(r.stderr_str().contains(&want_msg), "{}", r.stderr_str());

    // With a spool the bundles stay there, and resume with the right CA delivers them.
    let spool = d.join("spool");
    let r = run_butler(
        d,
        &[
            "--output",
            &grpcs(&collector),
            "--ca-cert",
            path_str(&wrong.ca),
            "--spool",
            path_str(&spool),
            "--prefix",
            "kept",
            "run",
            "--",
            "sh",
            "-c",
            "echo kept for later",
        ],
    );
    r.assert_code(0);
    let err = r.stderr_str();
    assert!(err.contains(&want_msg), "{err}");
    assert!(err.contains("IN SPOOL"), "{err}");
    assert!(err.contains("resume --spool"), "{err}");
    let r = run_butler(
        d,
        &[
            "--output",
            &grpcs(&collector),
            "--ca-cert",
            path_str(&wrong.ca),
            "--spool",
            path_str(&spool),
            "--flush-timeout",
            "30s",
            "resume",
        ],
    );
    r.assert_code(1);
    assert!(r.stderr_str().contains(&want_msg), "{}", r.stderr_str());
    let r = run_butler(
        d,
        &[
            "--output",
            &grpcs(&collector),
            "--ca-cert",
            path_str(&pki.ca),
            "--spool",
            path_str(&spool),
            "resume",
        ],
    );
    r.assert_code(0);
    let got = logdog_tls(&collector, &pki.ca, None, &["cat", "default/kept/+/stdout"]);
    got.assert_code(0);
    assert_eq!(got.stdout_str(), "kept for later\n");

    // A plain client to the TLS collector, and a TLS client to a plain one, fail too.
    let plain = Collector::start(&d.join("plain"), "127.0.0.1:0");
    let r = run_butler(
        d,
        &[
            "--output",
            &format!("grpcs://{}", plain.addr),
            "--ca-cert",
            path_str(&pki.ca),
            "--prefix",
            "noplain",
            "run",
            "--",
            "true",
        ],
    );
    r.assert_code(0);
    let err = r.stderr_str();
    assert!(
        err.contains(&format!("TLS handshake with {} failed", plain.addr)),
        "{err}"
    );
    assert!(err.contains("does the collector serve TLS"), "{err}");
    plain.stop();
    collector.stop();
}

#[test]
fn bad_token_and_ca_flags_are_usage_errors() {
    let tmp = tempdir();
    let d = tmp.path();
    let pki = Pki::new(d, "flags");
    let empty = d.join("empty");
    std::fs::write(&empty, " \n").expect("write");
    let missing = d.join("missing");
    let not_pem = d.join("not.pem");
    std::fs::write(&not_pem, "hello").expect("write");
    let out = "grpcs://127.0.0.1:1";
    let cases: Vec<(Vec<&str>, Option<&str>, &str)> = vec![
        (
            vec!["--token-file", path_str(&empty)],
            None,
            "is empty: expected a token",
        ),
        (
            vec!["--token-file", path_str(&missing)],
            None,
            "cannot read it",
        ),
        (vec![], Some(""), "LOGDOG_TOKEN is empty"),
        (vec!["--ca-cert", path_str(&missing)], None, "--ca-cert"),
        (
            vec!["--ca-cert", path_str(&not_pem)],
            None,
            "no PEM certificate",
        ),
    ];
    for (flags, token, want) in &cases {
        let mut args = vec!["--output", out];
        args.extend(flags.iter().copied());
        args.extend(["run", "--", "true"]);
        let r = run(&mut butler_with_token(d, *token, &args), Input::Null);
        r.assert_code(2);
        assert!(
            r.stderr_str().contains(want),
            "{args:?}: {}",
            r.stderr_str()
        );

        let mut cmd = Command::new(env!("CARGO_BIN_EXE_logdog"));
        cmd.args(["--collector", out])
            .args(flags)
            .args(["ls", "default"])
            .env_remove(TOKEN_ENV);
        if let Some(t) = token {
            cmd.env(TOKEN_ENV, t);
        }
        let r = run(&mut cmd, Input::Null);
        r.assert_code(2);
        assert!(
            r.stderr_str().contains(want),
            "logdog {flags:?}: {}",
            r.stderr_str()
        );
    }
    // --ca-cert is for grpcs:// only.
    let r = run_butler(
        d,
        &[
            "--output",
            "grpc://127.0.0.1:1",
            "--ca-cert",
            path_str(&pki.ca),
            "run",
            "--",
            "true",
        ],
    );
    r.assert_code(2);
    assert!(r.stderr_str().contains("grpcs://"), "{}", r.stderr_str());

    // A token in the clear to another machine: a warning (192.0.2.0/24 is reserved for
    // documentation; nothing answers there).
    let r = run(
        &mut butler_with_token(
            d,
            Some("tok"),
            &[
                "--output",
                "grpc://192.0.2.1:9",
                "--flush-timeout",
                "1s",
                "--prefix",
                "warn",
                "run",
                "--",
                "true",
            ],
        ),
        Input::Null,
    );
    r.assert_code(0);
    let err = r.stderr_str();
    assert!(
        err.contains("warning: sending the token in the clear"),
        "{err}"
    );
}

/// Every valid record's bundle in the spool, as logpb.
fn spooled_bundles(spool: &Path) -> Vec<logpb::ButlerLogBundle> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(spool)
        .map(|rd| {
            rd.map(|e| e.expect("dir entry").path())
                .filter(|p| p.extension().is_some_and(|x| x == "spool"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let Ok(mut r) = SpoolReader::open(&f) else {
            continue;
        };
        while let Ok(Some(item)) = r.next_item() {
            if let Item::Record { payload, .. } = item {
                out.push(logpb::ButlerLogBundle::decode(payload).expect("a spooled bundle"));
            }
        }
    }
    out
}

/// Names of `prefix`'s streams whose terminal entry is in the spool.
fn ended_in_spool(spool: &Path, prefix: &str) -> BTreeSet<String> {
    spooled_bundles(spool)
        .iter()
        .filter(|b| b.prefix == prefix)
        .flat_map(|b| b.entries.iter())
        .filter(|e| e.terminal)
        .filter_map(|e| e.desc.as_ref().map(|d| d.name.clone()))
        .collect()
}

/// Runs a butler with `--spool` towards a TLS collector that is down (`port`), lets its child
/// write `stdout` (2 MiB of text) and close it, waits until its streams have ended in the
/// spool, and SIGKILLs the butler. Returns what the child wrote.
fn leave_spool(d: &Path, spool: &Path, port: u16, ca: &Path, prefix: &str, seed: u64) -> Vec<u8> {
    let out_file = d.join(format!("{prefix}.out"));
    let stop = d.join(format!("{prefix}.stop"));
    write_text_file(&out_file, 2 << 20, seed);
    let mut cmd = butler_with_token(
        d,
        Some("ldt_test_writer_0123456789abcdef"),
        &[
            "--output",
            &format!("grpcs://127.0.0.1:{port}"),
            "--ca-cert",
            path_str(ca),
            "--spool",
            path_str(spool),
            "--prefix",
            prefix,
            "--max-buffer-age",
            "100ms",
            "run",
            // The two streams alone: a killed butler leaves its run record open.
            "--no-run-record",
            "--no-echo",
            "--",
            "sh",
            "-c",
            r#"cat "$1"; exec >&- 2>&-; while [ ! -e "$2" ]; do sleep 0.05; done"#,
            "sh",
            path_str(&out_file),
            path_str(&stop),
        ],
    );
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut g = Guarded::spawn(&mut cmd);
    let want: BTreeSet<String> = ["stdout", "stderr"].map(String::from).into();
    let deadline = Instant::now() + Duration::from_secs(90);
    while ended_in_spool(spool, prefix) != want {
        assert!(
            Instant::now() < deadline,
            "the streams never ended in the spool"
        );
        assert!(!g.has_exited(), "the butler exited on its own");
        std::thread::sleep(Duration::from_millis(50));
    }
    kill(g.pid(), Signal::SIGKILL).expect("SIGKILL the butler");
    let _ = g.wait();
    std::fs::write(&stop, b"").expect("write the stop file");
    read(&out_file)
}

/// The secrets of the spooled bundles, by prefix; checks each is 36 bytes.
fn secrets_by_prefix(spool: &Path) -> BTreeMap<String, BTreeSet<Vec<u8>>> {
    let mut m = BTreeMap::<String, BTreeSet<Vec<u8>>>::new();
    for b in spooled_bundles(spool) {
        assert_eq!(b.secret.len(), 36, "a spooled bundle of {}", b.prefix);
        m.entry(b.prefix.clone())
            .or_default()
            .insert(b.secret.to_vec());
    }
    m
}

fn assert_complete(c: &Collector, ca: &Path, token: Option<&str>, prefix: &str, stdout: &[u8]) {
    let r = logdog_tls(
        c,
        ca,
        token,
        &["cat", &format!("default/{prefix}/+/stdout")],
    );
    r.assert_code(0);
    assert!(
        r.stdout == stdout,
        "{prefix}: {} bytes read back, {} written",
        r.stdout.len(),
        stdout.len()
    );
    let r = logdog_tls(c, ca, token, &["ls", &format!("default/{prefix}")]);
    r.assert_code(0);
    let listing = r.stdout_str();
    assert_eq!(listing.lines().count(), 2, "{listing}");
    assert!(
        listing.lines().all(|l| l.contains("\tcomplete\t")),
        "{listing}"
    );
}

/// A SIGKILLed butler's spool is uploaded by `resume` over TLS, with its own secret; a second
/// killed butler's leftovers go up with the next `run` (another prefix, another secret).
/// The collector checks tokens when it can (`--auth`): the uploads carry a valid one.
#[test]
fn killed_butlers_spools_finish_over_tls_with_their_own_secrets() {
    let tmp = tempdir();
    let d = tmp.path();
    let pki = Pki::new(d, "spool");
    let auth = d.join("auth.toml");
    let writer = TestToken::new("writer", &["*"], &["*"]);
    let token = writer.token.clone();
    write_auth_file(&auth, &[writer]);
    let spool = d.join("spool");
    let port = free_port();

    let first = leave_spool(d, &spool, port, &pki.ca, "killed", 0x7150_0002);
    let secrets = secrets_by_prefix(&spool);
    assert_eq!(secrets.len(), 1, "{secrets:?}");
    assert_eq!(
        secrets["killed"].len(),
        1,
        "one secret in every bundle of a run"
    );

    let collector = tls_collector_at(
        &d.join("data"),
        &pki,
        &format!("127.0.0.1:{port}"),
        &["--auth", path_str(&auth)],
    );
    let r = run(
        &mut butler_with_token(
            d,
            Some(&token),
            &[
                "--output",
                &grpcs(&collector),
                "--ca-cert",
                path_str(&pki.ca),
                "--spool",
                path_str(&spool),
                "resume",
            ],
        ),
        Input::Null,
    );
    r.assert_code(0);
    assert_complete(&collector, &pki.ca, Some(&token), "killed", &first);
    collector.stop();

    // A second butler dies with the collector down; the next run (another prefix) uploads
    // its leftovers with their own secret, and its own streams with a new one.
    let second = leave_spool(d, &spool, port, &pki.ca, "killed2", 0x7150_0003);
    let secrets = secrets_by_prefix(&spool);
    assert_eq!(secrets["killed2"].len(), 1, "{secrets:?}");
    let collector = tls_collector_at(
        &d.join("data"),
        &pki,
        &format!("127.0.0.1:{port}"),
        &["--auth", path_str(&auth)],
    );
    let r = run(
        &mut butler_with_token(
            d,
            Some(&token),
            &[
                "--output",
                &grpcs(&collector),
                "--ca-cert",
                path_str(&pki.ca),
                "--spool",
                path_str(&spool),
                "--prefix",
                "third",
                "run",
                "--",
                "sh",
                "-c",
                "echo third run",
            ],
        ),
        Input::Null,
    );
    r.assert_code(0);
    let err = r.stderr_str();
    assert!(err.contains("nothing lost"), "{err}");
    assert!(secrets_by_prefix(&spool).is_empty(), "the spool is emptied");
    assert_complete(&collector, &pki.ca, Some(&token), "killed2", &second);
    let r = logdog_tls(
        &collector,
        &pki.ca,
        Some(&token),
        &["cat", "default/third/+/stdout"],
    );
    r.assert_code(0);
    assert_eq!(r.stdout_str(), "third run\n");
    collector.stop();
}

/// Needs the collector to check tokens (`--auth`): a butler with a valid token stores, one
/// without has its streams LOST as UNAUTHENTICATED, not retried (with a spool too: the
/// refused bundles leave the spool), and `logdog` without a token is refused.
#[test]
fn with_collector_auth_a_token_stores_and_none_is_lost_as_unauthenticated() {
    let tmp = tempdir();
    let d = tmp.path();
    let pki = Pki::new(d, "auth");
    let auth = d.join("auth.toml");
    let writer = TestToken::new("writer", &["*"], &["*"]);
    let token = writer.token.clone();
    write_auth_file(&auth, &[writer]);
    let collector = tls_collector(&d.join("data"), &pki, &["--auth", path_str(&auth)]);
    let base = |prefix: &'static str| {
        vec![
            "--output".to_string(),
            grpcs(&collector),
            "--ca-cert".to_string(),
            path_str(&pki.ca).to_string(),
            "--prefix".to_string(),
            prefix.to_string(),
        ]
    };

    let mut args = base("with");
    args.extend(["run", "--", "sh", "-c", "echo stored"].map(String::from));
    let r = run(&mut butler_with_token(d, Some(&token), &args), Input::Null);
    r.assert_code(0);
    assert!(
        r.stderr_str().contains("nothing lost"),
        "{}",
        r.stderr_str()
    );
    let got = logdog_tls(
        &collector,
        &pki.ca,
        Some(&token),
        &["cat", "default/with/+/stdout"],
    );
    got.assert_code(0);
    assert_eq!(got.stdout_str(), "stored\n");

    let mut args = base("without");
    args.extend(["run", "--", "sh", "-c", "echo refused"].map(String::from));
    let r = run(&mut butler_with_token(d, None, &args), Input::Null);
    r.assert_code(0);
    let err = r.stderr_str();
    assert!(err.contains("LOST (UNAUTHENTICATED"), "{err}");
    assert!(!err.contains("will retry"), "not retried:\n{err}");

    // With a spool: refused for good, so the bundles leave the spool (no endless retries).
    let spool = d.join("spool");
    let mut args = base("spooled");
    args.extend(["--spool".to_string(), path_str(&spool).to_string()]);
    args.extend(["run", "--", "sh", "-c", "echo refused too"].map(String::from));
    let r = run(&mut butler_with_token(d, None, &args), Input::Null);
    r.assert_code(0);
    let err = r.stderr_str();
    assert!(err.contains("LOST (UNAUTHENTICATED"), "{err}");
    assert!(!err.contains("IN SPOOL"), "{err}");
    assert!(spooled_bundles(&spool).is_empty(), "nothing left to retry");

    // A token file works the same as the variable.
    let token_file = d.join("token");
    std::fs::write(&token_file, format!("{token}\n")).expect("write");
    let mut args = base("file");
    args.extend([
        "--token-file".to_string(),
        path_str(&token_file).to_string(),
    ]);
    args.extend(["run", "--", "sh", "-c", "echo from a file"].map(String::from));
    let r = run(&mut butler_with_token(d, None, &args), Input::Null);
    r.assert_code(0);
    assert!(
        r.stderr_str().contains("nothing lost"),
        "{}",
        r.stderr_str()
    );

    let r = logdog_tls(&collector, &pki.ca, None, &["cat", "default/with/+/stdout"]);
    r.assert_code(1);
    assert!(
        r.stderr_str().contains("UNAUTHENTICATED"),
        "{}",
        r.stderr_str()
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_logdog"));
    cmd.arg("--collector")
        .arg(grpcs(&collector))
        .arg("--ca-cert")
        .arg(&pki.ca)
        .arg("--token-file")
        .arg(&token_file)
        .args(["cat", "default/file/+/stdout"])
        .env_remove(TOKEN_ENV);
    let r = run(&mut cmd, Input::Null);
    r.assert_code(0);
    assert_eq!(r.stdout_str(), "from a file\n");
    collector.stop();
}
