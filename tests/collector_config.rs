//! End-to-end tests of `logdog_collector --config FILE` and the `LOGDOG_COLLECTOR_*`
//! environment variables: a real collector started from a file uses its settings (the viewer
//! and the tail server start, the store is where the file says, requests need a token of the
//! auth file); the command line wins over the environment, which wins over the file; bad files
//! fail before anything starts, naming the key and the line.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};

use common::pki::{TestToken, write_auth_file};
use common::{Guarded, Input, TIMEOUT, drain, run, tempdir};
use nix::sys::signal::{Signal, kill};

/// `logdog_collector ARGS` in `cwd` with `env` as its only `LOGDOG_COLLECTOR_*` variables.
fn collector(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_logdog_collector"));
    cmd.current_dir(cwd).args(args).env_remove("RUST_LOG");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("LOGDOG_COLLECTOR") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    cmd
}

/// A collector that printed its addresses.
struct Running {
    guarded: Guarded,
    /// The `LOGDOG_*=ADDR` lines it printed, in order.
    lines: Vec<String>,
    log: std::path::PathBuf,
    rest: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl Running {
    /// Starts `cmd` (its log in `log`) and reads `want` lines from its stdout.
    fn start(mut cmd: Command, log: &Path, want: usize) -> Self {
        let log_file = std::fs::File::create(log).unwrap();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file);
        let mut guarded = Guarded::spawn(&mut cmd);
        let mut out = BufReader::new(guarded.child.stdout.take().unwrap());
        let mut lines = Vec::new();
        for _ in 0..want {
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            if line.is_empty() {
                let _ = guarded.wait();
                panic!(
                    "the collector did not start; printed {lines:?}; log:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            lines.push(line.trim_end().to_string());
        }
        Self {
            guarded,
            lines,
            log: log.to_path_buf(),
            rest: Some(drain(out)),
        }
    }

    /// The address printed as `NAME=ADDR`.
    fn addr(&self, name: &str) -> String {
        self.lines
            .iter()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} line in {:?}", self.lines))
            .to_string()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops it with SIGTERM; fails unless it exits 0.
    fn stop(mut self) {
        kill(self.guarded.pid(), Signal::SIGTERM).unwrap();
        let status = self.guarded.wait();
        assert!(
            status.success(),
            "collector: {status}; log:\n{}",
            self.log()
        );
        if let Some(r) = self.rest.take() {
            r.join().unwrap();
        }
    }
}

/// The status of `GET path` (HTTP/1.0) with an optional `Authorization` header.
fn get_status(addr: &str, path: &str, authorization: Option<&str>) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n");
    if let Some(a) = authorization {
        req.push_str(&format!("Authorization: {a}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let head = String::from_utf8_lossy(&resp);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("GET {path}: bad answer {head:?}"))
}

/// The first line of the tail server's answer to `lines`.
fn tail_answer(addr: &str, lines: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(lines.as_bytes()).unwrap();
    let mut first = String::new();
    BufReader::new(s).read_line(&mut first).unwrap();
    first
}

#[test]
fn a_config_file_starts_the_collector_it_describes() {
    let tmp = tempdir();
    let dir = tmp.path();
    let auth = dir.join("auth.toml");
    let admin = TestToken::new("admin", &["*"], &["*"]);
    let token = admin.token.clone();
    write_auth_file(&auth, &[admin]);
    let data = dir.join("store");
    let config = dir.join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "# The test's collector.\n\
             listen = \"127.0.0.1:0\"\n\
             http = \"127.0.0.1:0\"\n\
             tail = \"127.0.0.1:0\"\n\
             data = {:?}\n\
             auth = {:?}\n\
             max-connections = 16\n\
             max-inflight-bytes = 1048576\n\
             read-deadline = \"30s\"\n\
             tail-max-connections = 8\n\
             reader-nice = 10\n\
             abandon-after = \"1h\"\n\
             log-level = \"warn\"\n",
            data.display().to_string(),
            auth.display().to_string(),
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    // `LOGDOG_COLLECTOR` (without a suffix) is `logdog`'s collector address, not a flag.
    let cmd = collector(
        dir,
        &["--config", &config],
        &[("LOGDOG_COLLECTOR", "127.0.0.1:1")],
    );
    let c = Running::start(cmd, &dir.join("c.log"), 3);
    assert!(
        c.lines[0].starts_with("LOGDOG_COLLECTOR=127.0.0.1:"),
        "{:?}",
        c.lines
    );
    let http = c.addr("LOGDOG_HTTP");
    let tail = c.addr("LOGDOG_TAIL");
    // The store is where the file says, not in ./collector-data.
    assert!(data.is_dir());
    assert!(!dir.join("collector-data").exists());
    // The auth file is in force on the viewer and the tail server.
    assert_eq!(get_status(&http, "/api/projects", None), 401);
    assert_eq!(
        get_status(&http, "/api/projects", Some(&format!("Bearer {token}"))),
        200
    );
    assert!(
        tail_answer(&tail, "list\n").starts_with("error: this tail server needs a token"),
        "tail server without a token"
    );
    assert_eq!(tail_answer(&tail, &format!("auth {token}\nlist\n")), "");
    // log-level = "warn": the refusals are logged, not the start.
    let log = c.log();
    assert!(log.contains("unauthenticated request refused"), "{log}");
    assert!(!log.contains("INFO"), "{log}");
    c.stop();
}

#[test]
fn insecure_no_auth_from_the_file_allows_every_address_unless_the_environment_says_false() {
    let tmp = tempdir();
    let dir = tmp.path();
    let config = dir.join("collector.toml");
    std::fs::write(
        &config,
        "listen = \"0.0.0.0:0\"\ninsecure-no-auth = true\ndata = \"d\"\n",
    )
    .unwrap();
    let config = config.display().to_string();
    let c = Running::start(
        collector(dir, &["--config", &config], &[]),
        &dir.join("c.log"),
        1,
    );
    assert!(
        c.lines[0].starts_with("LOGDOG_COLLECTOR=0.0.0.0:"),
        "{:?}",
        c.lines
    );
    c.stop();

    let r = run(
        &mut collector(
            dir,
            &["--config", &config],
            &[("LOGDOG_COLLECTOR_INSECURE_NO_AUTH", "false")],
        ),
        Input::Null,
    );
    r.assert_code(1);
    assert!(r.stdout_str().is_empty(), "{}", r.stdout_str());
    assert!(
        r.stderr_str()
            .contains("refusing to listen on 0.0.0.0:0 without --auth"),
        "{}",
        r.stderr_str()
    );
}

/// Which of the data directories `file`, `env` and `cli` (in `dir`) a collector started with
/// `--config` and `args` and `env` stored into; checks `verify` finds the same one.
fn store_used(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Vec<&'static str> {
    let config = dir.join("collector.toml").display().to_string();
    let mut all = vec!["--config", &config];
    all.extend(args);
    let c = Running::start(collector(dir, &all, env), &dir.join("c.log"), 1);
    c.stop();
    let used: Vec<&str> = ["file", "env", "cli", "collector-data"]
        .into_iter()
        .filter(|d| dir.join(d).is_dir())
        .collect();
    // `verify` takes --data from the same places.
    let mut verify = vec!["--config", config.as_str()];
    verify.extend(args);
    verify.push("verify");
    let r = run(&mut collector(dir, &verify, env), Input::Null);
    r.assert_code(0);
    assert!(r.stdout_str().contains("no damage"), "{}", r.stdout_str());
    for d in &used {
        std::fs::remove_dir_all(dir.join(d)).unwrap();
    }
    used
}

#[test]
fn the_command_line_wins_over_the_environment_which_wins_over_the_file() {
    let tmp = tempdir();
    let dir = tmp.path();
    std::fs::write(
        dir.join("collector.toml"),
        "listen = \"127.0.0.1:0\"\ndata = \"file\"\n",
    )
    .unwrap();
    let env = [("LOGDOG_COLLECTOR_DATA", "env")];
    assert_eq!(store_used(dir, &[], &[]), ["file"]);
    assert_eq!(store_used(dir, &[], &env), ["env"]);
    assert_eq!(store_used(dir, &["--data", "cli"], &[]), ["cli"]);
    assert_eq!(store_used(dir, &["--data", "cli"], &env), ["cli"]);
    // The file itself may come from the environment.
    let config = dir.join("collector.toml").display().to_string();
    let c = Running::start(
        collector(dir, &[], &[("LOGDOG_COLLECTOR_CONFIG", &config)]),
        &dir.join("c.log"),
        1,
    );
    c.stop();
    assert!(dir.join("file").is_dir());
    // Without the file the environment alone works, too.
    let c = Running::start(
        collector(
            dir,
            &[],
            &[
                ("LOGDOG_COLLECTOR_LISTEN", "127.0.0.1:0"),
                ("LOGDOG_COLLECTOR_HTTP", "127.0.0.1:0"),
                ("LOGDOG_COLLECTOR_DATA", "env"),
            ],
        ),
        &dir.join("c.log"),
        2,
    );
    assert_eq!(
        get_status(&c.addr("LOGDOG_HTTP"), "/api/projects", None),
        200
    );
    c.stop();
    assert!(dir.join("env").is_dir());
}

#[test]
fn bad_files_fail_naming_the_key_and_the_line() {
    let tmp = tempdir();
    let dir = tmp.path();
    let cases: &[(&str, &[&str])] = &[
        (
            "listen = \"127.0.0.1:0\"\n\nmax-conections = 3\n",
            &["line 3", "max-conections: unknown key", "max-connections"],
        ),
        (
            "listen = \"127.0.0.1:0\"\nmax-connections = 0\n",
            &["line 2", "max-connections: invalid value '0'"],
        ),
        (
            "# a comment\nread-deadline = \"soon\"\n",
            &["line 2", "read-deadline: invalid value 'soon'"],
        ),
        (
            "insecure-no-auth = \"yes\"\n",
            &["line 1", "insecure-no-auth: expected true or false"],
        ),
        ("listen = \"127.0.0.1:0\"\nhttp = \n", &["line 2"]),
        (
            "[server]\nlisten = \"127.0.0.1:0\"\n",
            &["line 1", "server: unknown key"],
        ),
    ];
    let config = dir.join("collector.toml");
    for (text, wants) in cases {
        std::fs::write(&config, text).unwrap();
        let r = run(
            &mut collector(dir, &["--config", &config.display().to_string()], &[]),
            Input::Null,
        );
        let err = r.stderr_str();
        assert_eq!(r.code(), 2, "{text:?}: {err}");
        assert!(
            r.stdout_str().is_empty(),
            "{text:?} started: {}",
            r.stdout_str()
        );
        assert!(err.contains("collector.toml"), "{text:?}: {err}");
        for want in *wants {
            assert!(err.contains(want), "{text:?}: no {want:?} in {err}");
        }
    }
    assert!(!dir.join("collector-data").exists());
    // A bad value on the command line or in the environment is not blamed on the file.
    std::fs::write(&config, "max-connections = 4\n").unwrap();
    let r = run(
        &mut collector(
            dir,
            &["--config", &config.display().to_string()],
            &[("LOGDOG_COLLECTOR_MAX_CONNECTIONS", "0")],
        ),
        Input::Null,
    );
    r.assert_code(2);
    let err = r.stderr_str();
    assert!(
        err.contains("invalid value '0' for '--max-connections"),
        "{err}"
    );
    assert!(err.contains("LOGDOG_COLLECTOR_MAX_CONNECTIONS"), "{err}");
    let r = run(
        &mut collector(dir, &["--config", "missing.toml"], &[]),
        Input::Null,
    );
    r.assert_code(2);
    assert!(
        r.stderr_str()
            .contains("cannot read the config file missing.toml"),
        "{}",
        r.stderr_str()
    );
}
