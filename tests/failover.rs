//! A butler sending to several collectors (`--output grpc://A,B`), end to end: two real
//! `logdog_collector` processes, each with its own data directory.
//!
//! - Bundles are spread over both while both are up.
//! - One is frozen (SIGSTOP) and then SIGKILLed in the middle of a run, with calls in flight
//!   to it: its bundles go to the other, and every line arrives. Each collector holds only what it received, so the check reads both and takes
//!   the union of their entries by (stream, index): every index from 0 to the terminal one
//!   once, equal where both hold it, all bytes in order; the butler reports nothing lost and
//!   exits 0.
//! - A collector of the list that is down from the start is named at start, and the others
//!   take its bundles (with and without `--spool`); with every collector down, what was not
//!   delivered is reported and `--fail-on-loss` fails the run.
//! - `grpcs://A,B` gives every collector the same `--ca-cert` and token.
//! - A malformed address list is a usage error (exit 2) that says what is wrong.
//!
//! The child synchronises with the test through marker files: it waits for the test's
//! marker before writing on, so the kill falls between two known parts of its output.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    Collector, Finished, Input, TIMEOUT, butler_script, free_port, logdog, read, run, run_butler,
    tempdir,
};
use logdog_proto::logdog::collector as pb;
use logdog_proto::logdog::collector::logs_client::LogsClient;
use logdog_proto::logpb;

/// The child's stream.
const STREAM: &str = "stdout";

/// What a collector holds of a stream: its entries' bytes by index, and the terminal index
/// if it knows it.
#[derive(Debug, Default)]
struct Held {
    entries: BTreeMap<u64, Vec<u8>>,
    terminal: Option<u64>,
}

/// The bytes of a text entry (every line with its delimiter).
fn entry_bytes(e: &logpb::LogEntry) -> Vec<u8> {
    match &e.content {
        Some(logpb::log_entry::Content::Text(t)) => t
            .lines
            .iter()
            .flat_map(|l| l.value.iter().copied().chain(l.delimiter.bytes()))
            .collect(),
        other => panic!("entry {}: not text: {other:?}", e.stream_index),
    }
}

/// Everything collector `addr` holds of `PREFIX/+/STREAM`, read entry by entry (its store
/// may have gaps where the other collector took the bundle).
async fn held(addr: &str, prefix: &str) -> Held {
    let mut client = LogsClient::connect(format!("http://{addr}"))
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    let path = format!("{prefix}/+/{STREAM}");
    let get = |index: u64, state: bool| pb::GetRequest {
        project: "default".into(),
        path: path.clone(),
        state,
        index,
        log_count: if state { -1 } else { 0 },
        ..Default::default()
    };
    let st = match client.get(get(0, true)).await {
        Ok(r) => r.into_inner().state.expect("a state"),
        Err(s) if s.code() == tonic::Code::NotFound => return Held::default(),
        Err(s) => panic!("Get {path} from {addr}: {s}"),
    };
    let mut out = Held {
        terminal: u64::try_from(st.terminal_index).ok(),
        ..Default::default()
    };
    // Read on, skipping the gaps, until all `entry_count` entries were seen.
    let mut i = 0;
    while (out.entries.len() as u64) < st.entry_count {
        assert!(
            i < 1_000_000,
            "{addr}: {st:?} but found only {:?}",
            out.entries.keys()
        );
        let r = client
            .get(get(i, false))
            .await
            .unwrap_or_else(|s| panic!("Get {path}@{i} from {addr}: {s}"))
            .into_inner();
        if r.logs.is_empty() {
            i += 1;
            continue;
        }
        for e in &r.logs {
            out.entries.insert(e.stream_index, entry_bytes(e));
            i = e.stream_index + 1;
        }
    }
    out
}

/// The union of what `addrs` hold of the stream: checks that entries held twice are equal
/// and that every index up to the terminal one is there; returns the stream's bytes and how
/// many entries each collector held.
fn union(addrs: &[&str], prefix: &str) -> (Vec<u8>, Vec<usize>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let helds: Vec<Held> = addrs.iter().map(|a| rt.block_on(held(a, prefix))).collect();
    let terminal = helds
        .iter()
        .filter_map(|h| h.terminal)
        .max()
        .expect("a collector knows the terminal index");
    let mut all: BTreeMap<u64, &Vec<u8>> = BTreeMap::new();
    for (k, h) in helds.iter().enumerate() {
        if let Some(t) = h.terminal {
            assert_eq!(t, terminal, "collector {k} has another terminal index");
        }
        for (i, bytes) in &h.entries {
            if let Some(prev) = all.insert(*i, bytes) {
                assert_eq!(prev, bytes, "entry {i} differs between the collectors");
            }
        }
    }
    let missing: Vec<u64> = (0..=terminal).filter(|i| !all.contains_key(i)).collect();
    assert!(
        missing.is_empty(),
        "entries missing in both stores: {missing:?}"
    );
    assert_eq!(
        all.keys().next_back(),
        Some(&terminal),
        "entries past the terminal index"
    );
    let bytes = all.values().flat_map(|b| b.iter().copied()).collect();
    (bytes, helds.iter().map(|h| h.entries.len()).collect())
}

/// `line 000000\n` to `line {to-1}\n`, as `seq -f 'line %06g'` writes them.
fn lines(to: u64) -> Vec<u8> {
    (0..to)
        .flat_map(|i| format!("line {i:06}\n").into_bytes())
        .collect()
}

/// Waits until `path` exists (the child made it), failing after [`TIMEOUT`].
fn wait_for(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < TIMEOUT,
            "{} did not appear within {TIMEOUT:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Fails the test unless the butler exited 0 and reported no loss.
fn assert_nothing_lost(r: &Finished) {
    let err = r.stderr_str();
    r.assert_code(0);
    for loss in [
        "LOST",
        "not acknowledged",
        "could not be delivered",
        "undelivered",
    ] {
        assert!(!err.contains(loss), "butler reports {loss:?}:\n{err}");
    }
}

/// The child of the spreading test: ten bursts of 100 lines, a little apart, so that the
/// butler cuts several bundles.
const BURSTS: &str = r#"
for k in 0 1 2 3 4 5 6 7 8 9; do
  seq -f 'line %06g' $((k * 100)) $((k * 100 + 99))
  sleep 0.1
done
"#;

#[test]
fn bundles_are_spread_over_every_collector_that_is_up() {
    let tmp = tempdir();
    let d = tmp.path();
    let a = Collector::start(&d.join("a"), "127.0.0.1:0");
    let b = Collector::start(&d.join("b"), "127.0.0.1:0");
    let output = format!("grpc://{},{}", a.addr, b.addr);
    let prefix = "spread/run";
    let mut cmd = butler_script(
        d,
        &[
            "--output",
            &output,
            "--prefix",
            prefix,
            "--max-buffer-age",
            "20ms",
        ],
        &[],
        BURSTS,
        &[],
    );
    let r = run(&mut cmd, Input::Null);
    assert_nothing_lost(&r);
    let (bytes, per_collector) = union(&[&a.addr, &b.addr], prefix);
    assert_eq!(bytes, lines(1000), "the stream, from both collectors");
    assert!(
        per_collector.iter().all(|n| *n > 0),
        "each collector received bundles: entries held {per_collector:?}"
    );
    a.stop();
    b.stop();
}

/// The child of the failover test (markers in `$1`): part 1 in five paced bursts, then
/// waits for `go`; part 2
/// in five paced bursts (several bundles), then waits for `killed`; then part 3 in ten paced
/// bursts (several bundles after the kill).
const SPANNING: &str = r#"
for k in 0 1 2 3 4; do
  seq -f 'line %06g' $((k * 200)) $((k * 200 + 199))
  sleep 0.1
done
touch "$1/first"
while [ ! -e "$1/go" ]; do sleep 0.01; done
for k in 0 1 2 3 4; do
  seq -f 'line %06g' $((1000 + k * 20)) $((1019 + k * 20))
  sleep 0.1
done
touch "$1/second"
while [ ! -e "$1/killed" ]; do sleep 0.01; done
for k in 0 1 2 3 4 5 6 7 8 9; do
  seq -f 'line %06g' $((1100 + k * 100)) $((1199 + k * 100))
  sleep 0.1
done
"#;

#[test]
fn a_collector_killed_during_the_run_loses_nothing() {
    let tmp = tempdir();
    let d = tmp.path();
    let a = Collector::start(&d.join("a"), "127.0.0.1:0");
    let b = Collector::start(&d.join("b"), "127.0.0.1:0");
    kill_one_of_two(d, a, b, None);
}

/// Two collectors on one PostgreSQL database: one is SIGKILLed mid-run, and the other serves
/// every byte exactly once.
#[test]
fn a_collector_killed_during_the_run_on_a_shared_database_loses_nothing() {
    let Some(url) = common::pg::database("failover") else {
        return;
    };
    let tmp = tempdir();
    let d = tmp.path();
    let flags = ["--store", url.as_str()];
    let a = Collector::start_with(&d.join("a"), "127.0.0.1:0", &flags);
    let b = Collector::start_with(&d.join("b"), "127.0.0.1:0", &flags);
    kill_one_of_two(d, a, b, Some(&url));
}

/// Runs a butler over `a` and `b`, freezes and kills `a` mid-run, and checks that every line
/// arrived once: in the union of both stores, or with `shared` (a database URL) through `b`
/// alone, each entry stored once in the database.
fn kill_one_of_two(d: &Path, a: Collector, b: Collector, shared: Option<&str>) {
    let markers = d.join("markers");
    std::fs::create_dir(&markers).unwrap();
    let (a_addr, b_addr) = (a.addr.clone(), b.addr.clone());
    let output = format!("grpc://{a_addr},{b_addr}");
    let prefix = "failover/run";
    let mut cmd = butler_script(
        d,
        &[
            "--output",
            &output,
            "--prefix",
            prefix,
            "--max-buffer-age",
            "20ms",
            "--log-level",
            "warn",
        ],
        &[],
        SPANNING,
        &[&markers],
    );
    let butler = std::thread::spawn(move || run(&mut cmd, Input::Null));

    wait_for(&markers.join("first"));
    // Part 1 was spread: the first collector holds some of it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let start = Instant::now();
    while rt.block_on(held(&a_addr, prefix)).entries.is_empty() {
        assert!(
            start.elapsed() < TIMEOUT,
            "the first collector got nothing of part 1"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Frozen, the first collector takes the calls of part 2's bundles sent to it in their
    // turn and answers none: they are in flight when it dies.
    nix::sys::signal::kill(a.guarded.pid(), nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
    std::fs::write(markers.join("go"), b"").unwrap();
    wait_for(&markers.join("second"));
    a.kill();
    std::fs::write(markers.join("killed"), b"").unwrap();

    let r = butler.join().expect("the butler's thread");
    eprintln!("butler's stderr:\n{}", r.stderr_str());
    assert_nothing_lost(&r);
    // A bundle sent to the killed collector in its turn went to the other; the warning
    // names the address.
    let err = r.stderr_str();
    assert!(
        err.lines().any(|l| l.contains("collector unavailable")
            && l.contains("bundles go to the other collectors")
            && l.contains(&format!("collector={a_addr}"))),
        "a warning names the killed collector:\n{err}"
    );

    if let Some(url) = shared {
        // One database: the survivor serves all of it, each entry stored once.
        let (bytes, _) = union(&[&b_addr], prefix);
        assert!(bytes == lines(2100), "every line once, in order, through b");
        let rows = common::pg::psql(
            url,
            "SELECT count(*), count(DISTINCT (stream_id, idx)) FROM entries",
        );
        let counts: Vec<&str> = rows.trim().split('|').collect();
        assert_eq!(counts[0], counts[1], "no index stored twice: {rows}");
        b.stop();
        return;
    }
    // Restarted on the same data directory, it serves what it stored before it died.
    let a = Collector::start(&d.join("a"), &a_addr);
    let (bytes, per_collector) = union(&[&a.addr, &b_addr], prefix);
    eprintln!("entries held by each collector: {per_collector:?}");
    assert_eq!(
        bytes.len(),
        lines(2100).len(),
        "all bytes (entries held: {per_collector:?})"
    );
    assert!(bytes == lines(2100), "every line once, in order");
    assert!(
        per_collector.iter().all(|n| *n > 0),
        "both collectors hold part of the stream: {per_collector:?}"
    );
    a.stop();
    b.stop();
}

#[test]
fn a_collector_down_from_the_start_is_named_and_the_others_take_its_bundles() {
    let tmp = tempdir();
    let d = tmp.path();
    let up = Collector::start(&d.join("up"), "127.0.0.1:0");
    // Nothing listens there.
    let down = format!("127.0.0.1:{}", free_port());
    for (k, spool) in [None, Some(d.join("spool"))].into_iter().enumerate() {
        let prefix = format!("half-down/{k}");
        let output = format!("grpc://{down},{}", up.addr);
        let mut flags = vec![
            "--output",
            &output,
            "--prefix",
            &prefix,
            "--max-buffer-age",
            "20ms",
        ];
        let spool_dir = spool.as_ref().map(|p| p.display().to_string());
        if let Some(s) = &spool_dir {
            flags.extend(["--spool", s]);
        }
        let mut cmd = butler_script(d, &flags, &["--fail-on-loss"], BURSTS, &[]);
        let r = run(&mut cmd, Input::Null);
        assert_nothing_lost(&r);
        let err = r.stderr_str();
        assert!(
            err.contains(&format!("cannot reach the collector at {down} ("))
                && err.contains("its bundles go to the other collectors"),
            "the unreachable collector is named at start:\n{err}"
        );
        let got = logdog(&up.addr, &["cat", &format!("default/{prefix}/+/stdout")]);
        got.assert_code(0);
        assert!(
            got.stdout == lines(1000),
            "spool {spool:?}: the stream differs"
        );
    }
    up.stop();
}

#[test]
fn with_every_collector_down_the_loss_is_reported() {
    let tmp = tempdir();
    let d = tmp.path();
    let result = d.join("result.json");
    let (a, b) = (free_port(), free_port());
    let output = format!("grpc://127.0.0.1:{a},127.0.0.1:{b}");
    let mut cmd = butler_script(
        d,
        &["--output", &output, "--flush-timeout", "2s"],
        &["--fail-on-loss", "--result-path", result.to_str().unwrap()],
        "echo to stdout",
        &[],
    );
    let r = run(&mut cmd, Input::Null);
    r.assert_code(251);
    let err = r.stderr_str();
    assert!(
        err.contains("cannot reach any collector: ")
            && err.contains(&format!("127.0.0.1:{a} ("))
            && err.contains(&format!("127.0.0.1:{b} (")),
        "both named at start:\n{err}"
    );
    assert!(
        err.contains("not acknowledged") || err.contains("undelivered"),
        "no message about undelivered bytes:\n{err}"
    );
    let v: serde_json::Value = serde_json::from_slice(&read(&result)).expect("result is JSON");
    let undelivered = v["streams"]["stdout"]["bytes_undelivered"]
        .as_u64()
        .unwrap_or(0);
    assert!(undelivered > 0, "stdout bytes_undelivered: {v:#}");
}

#[test]
fn over_tls_every_collector_gets_the_same_ca_and_token() {
    use common::pki::{Pki, TestToken, write_auth_file};
    let tmp = tempdir();
    let d = tmp.path();
    let pki = Pki::new(d, "both");
    let auth = d.join("auth.toml");
    let writer = TestToken::new("writer", &["*"], &["*"]);
    let token = writer.token.clone();
    write_auth_file(&auth, &[writer]);
    let mut flags = pki.flags();
    flags.extend(["--auth".to_string(), auth.display().to_string()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let a = Collector::start_with(&d.join("a"), "127.0.0.1:0", &flags);
    let b = Collector::start_with(&d.join("b"), "127.0.0.1:0", &flags);
    let output = format!("grpcs://{},{}", a.addr, b.addr);
    let ca = pki.ca.display().to_string();
    let mut cmd = butler_script(
        d,
        &[
            "--output",
            &output,
            "--ca-cert",
            &ca,
            "--prefix",
            "tls/spread",
            "--max-buffer-age",
            "20ms",
        ],
        &["--fail-on-loss"],
        BURSTS,
        &[],
    );
    cmd.env("LOGDOG_TOKEN", &token);
    let r = run(&mut cmd, Input::Null);
    assert_nothing_lost(&r);
    let err = r.stderr_str();
    assert!(err.contains("nothing lost"), "{err}");
    // Each collector took bundles (over TLS, with the token: it refuses anything else).
    for c in [&a, &b] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_logdog"));
        cmd.args([
            "--collector",
            &format!("grpcs://{}", c.addr),
            "--ca-cert",
            &ca,
        ])
        .args(["ls", "default/tls/spread"])
        .env_remove("LOGDOG_COLLECTOR")
        .env_remove("RUST_LOG")
        .env("LOGDOG_TOKEN", &token);
        let ls = run(&mut cmd, Input::Null);
        ls.assert_code(0);
        assert!(
            ls.stdout_str().contains("stdout"),
            "{}: {}",
            c.addr,
            ls.stdout_str()
        );
    }
    a.stop();
    b.stop();
}

#[test]
fn a_malformed_address_list_is_a_usage_error() {
    let tmp = tempdir();
    for (output, says) in [
        ("grpc://127.0.0.1:1,", "address 2 of the list is empty"),
        (
            "grpc://127.0.0.1:1,,127.0.0.1:2",
            "address 2 of the list is empty",
        ),
        (
            "grpc://127.0.0.1:1,grpcs://127.0.0.1:2",
            "mixed schemes (grpc:// and grpcs://)",
        ),
        (
            "grpc://127.0.0.1:1,127.0.0.1:1",
            "address 127.0.0.1:1 is given twice",
        ),
        ("grpc://127.0.0.1:1,nohost", "\"nohost\" is not HOST:PORT"),
    ] {
        let r = run_butler(tmp.path(), &["--output", output, "run", "--", "true"]);
        r.assert_code(2);
        let err = r.stderr_str();
        assert!(err.contains(says), "{output}: {err}");
        assert!(err.contains(output), "{output}: names the output: {err}");
    }
}
