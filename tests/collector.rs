//! End-to-end tests of the collector path: `logdog_butler run --output grpc://…` shipping to a
//! real `logdog_collector`, read back with the `logdog` CLI; the collector crashing and coming
//! back, being down at start, and never coming back.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    Collector, Finished, Guarded, Rng, butler, butler_script, drain, free_port, logdog,
    random_line, read, tempdir,
};
use serde_json::Value;

/// Runs `logdog cat PATH`; fails the test unless it succeeds quietly, and returns the bytes.
#[track_caller]
fn cat(addr: &str, path: &str) -> Vec<u8> {
    let r = logdog(addr, &["cat", path]);
    r.assert_code(0);
    assert_eq!(r.stderr_str(), "", "logdog cat {path}: unexpected stderr");
    r.stdout
}

/// Fails the test unless `got` is `want`, naming the first difference (not the whole data).
#[track_caller]
fn assert_same_bytes(what: &str, want: &[u8], got: &[u8]) {
    if want == got {
        return;
    }
    let at = want.iter().zip(got).take_while(|(a, b)| a == b).count();
    let show = |b: &[u8]| {
        format!(
            "{:?}",
            String::from_utf8_lossy(&b[at.min(b.len())..(at + 48).min(b.len())])
        )
    };
    panic!(
        "{what}: differs at byte {at} (got {} bytes, want {}): got {} want {}",
        got.len(),
        want.len(),
        show(got),
        show(want)
    );
}

/// One line of `logdog ls`.
#[derive(Debug)]
struct Listed {
    path: String,
    state: String,
    kind: String,
    bytes: u64,
    entries: u64,
    tags: Vec<String>,
}

fn parse_listing(out: &str) -> Vec<Listed> {
    out.lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(
                f.len(),
                6,
                "ls line {l:?} does not have 6 tab-separated fields"
            );
            let number = |s: &str, unit: &str| -> u64 {
                s.strip_suffix(unit)
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("ls line {l:?}: {s:?} is not N{unit}"))
            };
            Listed {
                path: f[0].to_string(),
                state: f[1].to_string(),
                kind: f[2].to_string(),
                bytes: number(f[3], " bytes"),
                entries: number(f[4], " entries"),
                tags: f[5]
                    .split(',')
                    .filter(|t| !t.is_empty())
                    .map(str::to_string)
                    .collect(),
            }
        })
        .collect()
}

/// `logdog ARGS` (ls or query); fails the test unless it succeeds, and parses the listing.
#[track_caller]
fn listing(addr: &str, args: &[&str]) -> Vec<Listed> {
    let r = logdog(addr, args);
    r.assert_code(0);
    parse_listing(&r.stdout_str())
}

fn put_uvarint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Waits for the butler; returns what it left behind.
fn finish(mut g: Guarded, stderr: std::thread::JoinHandle<Vec<u8>>) -> Finished {
    let status = g.wait();
    Finished {
        status,
        stdout: Vec::new(),
        stderr: stderr.join().expect("stderr reader"),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Every kind of stream arrives byte-identical, listed and queryable.
// ---------------------------------------------------------------------------------------------

/// Text that a careless text path would mangle, plus bulk.
fn awkward_text(rng: &mut Rng) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(b"windows line\r\nanother\r\n\r\n");
    v.extend_from_slice(b"progress 10%\r20%\r100%\n");
    v.extend_from_slice(b"invalid utf-8: \xFF\xFE and truncated \xE2\x82\n");
    v.extend_from_slice(b"\n\n\x00nul in text\n");
    for _ in 0..5000 {
        v.extend_from_slice(random_line(rng).as_bytes());
    }
    v.extend_from_slice(b"no newline at the end");
    v
}

#[test]
fn every_kind_of_stream_arrives_identical_listed_and_queryable() {
    let tmp = tempdir();
    let d = tmp.path();
    let collector = Collector::start(&d.join("data"), "127.0.0.1:0");
    let mut rng = Rng::new(0xC011_EC70);

    let out: Vec<u8> = (0..3000)
        .flat_map(|_| random_line(&mut rng).into_bytes())
        .collect();
    let err = b"to stderr\r\nand more\n".repeat(100);
    let text = awkward_text(&mut rng);
    let mut blob = rng.bytes(3 << 20);
    blob.extend_from_slice(b"\x00\x00\n\r\n\r\r\x00\n\n\x0D\x0A\x00");
    blob.extend(rng.bytes(12345));
    blob.push(b'\r');
    // Datagrams, one per line: random bytes without `\n` (with `\0` and `\r`), an empty one,
    // and one larger than a bundle (so it travels in parts).
    let mut datagrams: Vec<Vec<u8>> = (0..1000)
        .map(|i| {
            let n = rng.below(300) as usize;
            let mut g: Vec<u8> = rng
                .bytes(n)
                .into_iter()
                .map(|b| if b == b'\n' { b'\r' } else { b })
                .collect();
            if i % 7 == 0 {
                g.push(0);
            }
            g
        })
        .collect();
    datagrams.insert(10, Vec::new());
    datagrams.push((0..5 << 20).map(|i| b'a' + (i % 26) as u8).collect());
    datagrams.push(b"last".to_vec());
    let dgram_input: Vec<u8> = datagrams
        .iter()
        .flat_map(|g| g.iter().copied().chain([b'\n']))
        .collect();
    let mut dgram_framed = Vec::new();
    for g in &datagrams {
        put_uvarint(&mut dgram_framed, g.len() as u64);
        dgram_framed.extend_from_slice(g);
    }
    for (name, data) in [
        ("out.txt", &out),
        ("err.txt", &err),
        ("text.txt", &text),
        ("blob.bin", &blob),
        ("dgram.in", &dgram_input),
    ] {
        std::fs::write(d.join(name), data).unwrap();
    }

    let script = r#"
        B="$LOGDOG_TEST_BUTLER"
        cat "$1/out.txt"
        cat "$1/err.txt" >&2
        "$B" pipe piped/text < "$1/text.txt" || exit 90
        "$B" pipe --type binary piped/blob < "$1/blob.bin" || exit 91
        "$B" --tag kind=dgram pipe --type datagram piped/dgram < "$1/dgram.in" || exit 92
        exit 6
    "#;
    let mut cmd = butler_script(
        d,
        &[
            "--output",
            &collector.output(),
            "--prefix",
            "kinds/run1",
            "--tag",
            "suite=e2e",
        ],
        &[],
        script,
        &[d],
    );
    let mut g = Guarded::spawn(&mut cmd);
    let stderr = drain(g.child.stderr.take().unwrap());
    let r = finish(g, stderr);
    r.assert_code(6);
    // Nothing on stderr but the end-of-run summary, which says nothing was lost.
    let summary = r.stderr_str();
    assert!(
        summary.contains("6 stream(s) to default/kinds/run1/+/"),
        "butler stderr:\n{summary}"
    );
    assert!(
        summary.contains("nothing lost"),
        "butler stderr:\n{summary}"
    );
    for bad in ["LOST", "WARN", "ERROR"] {
        assert!(!summary.contains(bad), "butler stderr:\n{summary}");
    }

    let addr = collector.addr.clone();
    let expected: [(&str, &[u8], &str, u64); 5] = [
        ("stdout", &out, "TEXT", out.len() as u64),
        ("stderr", &err, "TEXT", err.len() as u64),
        ("piped/text", &text, "TEXT", text.len() as u64),
        ("piped/blob", &blob, "BINARY", blob.len() as u64),
        (
            "piped/dgram",
            &dgram_framed,
            "DATAGRAM",
            dgram_input.len() as u64 - datagrams.len() as u64,
        ),
    ];
    for (name, want, _, _) in &expected {
        let path = format!("default/kinds/run1/+/{name}");
        assert_same_bytes(&path, want, &cat(&addr, &path));
    }

    let listed = listing(&addr, &["ls", "default/kinds/run1"]);
    // The five and the run record.
    assert_eq!(listed.len(), expected.len() + 1, "{listed:#?}");
    for (name, _, kind, bytes) in &expected {
        let path = format!("default/kinds/run1/+/{name}");
        let l = listed
            .iter()
            .find(|l| l.path == path)
            .unwrap_or_else(|| panic!("{path} not listed: {listed:#?}"));
        assert_eq!(l.state, "complete", "{l:?}");
        assert_eq!(l.kind, *kind, "{l:?}");
        assert_eq!(l.bytes, *bytes, "{l:?}");
        assert!(l.entries > 0, "{l:?}");
        assert!(
            l.tags.iter().any(|t| t == "suite=e2e"),
            "global tag missing: {l:?}"
        );
    }

    let mut found: Vec<String> = listing(&addr, &["query", "--tag", "suite=e2e", "default"])
        .into_iter()
        .map(|l| l.path)
        .collect();
    found.sort();
    let mut want: Vec<String> = expected
        .iter()
        .map(|(n, ..)| format!("default/kinds/run1/+/{n}"))
        .chain(["default/kinds/run1/+/logdog/run".to_string()])
        .collect();
    want.sort();
    assert_eq!(found, want, "query --tag suite=e2e");
    let found: Vec<String> = listing(&addr, &["query", "--tag", "kind=dgram", "default/kinds"])
        .into_iter()
        .map(|l| l.path)
        .collect();
    assert_eq!(
        found,
        ["default/kinds/run1/+/piped/dgram"],
        "query --tag kind=dgram"
    );
    let none = logdog(&addr, &["query", "--tag", "suite=other", "default"]);
    none.assert_code(1);
    assert!(
        none.stderr_str().contains("no streams match"),
        "{}",
        none.stderr_str()
    );
    assert_eq!(none.stdout_str(), "");
    collector.stop();
}

// ---------------------------------------------------------------------------------------------
// 2. `tail -f` shows lines live and ends with the stream.
// ---------------------------------------------------------------------------------------------

/// Reads one line from `r`; fails the test at end of file.
#[track_caller]
/// `logdog tail -f --wait PATH` against the collector at `addr`, stdout piped.
fn tail_follow(addr: &str, path: &str, stderr: Stdio) -> Guarded {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_logdog"));
    cmd.args(["--collector", addr, "tail", "-f", "--wait", path])
        .env_remove("LOGDOG_COLLECTOR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    Guarded::spawn(&mut cmd)
}

fn next_line(r: &mut impl BufRead, what: &str) -> String {
    let mut line = String::new();
    let n = r.read_line(&mut line).expect("reading a line");
    assert!(n > 0, "{what}: end of output while waiting for a line");
    line
}

#[test]
fn tail_follow_shows_lines_live_and_exits_when_the_stream_completes() {
    let tmp = tempdir();
    let d = tmp.path();
    let collector = Collector::start(&d.join("data"), "127.0.0.1:0");
    let go = d.join("go");

    // Follow a stream that does not exist yet.
    let mut tail = tail_follow(&collector.addr, "default/live/+/stdout", Stdio::piped());
    let tail_err = drain(tail.child.stderr.take().unwrap());
    let mut tail_out = BufReader::new(tail.child.stdout.take().unwrap());

    // The child writes line 1, then waits for the go-file before line 2.
    let script = r#"
        echo "line 1: before the go-file"
        while [ ! -e "$1" ]; do sleep 0.02; done
        echo "line 2: after the go-file"
    "#;
    let mut cmd = butler_script(
        d,
        &["--output", &collector.output(), "--prefix", "live"],
        &[],
        script,
        &[&go],
    );
    let mut b = Guarded::spawn(&mut cmd);
    let b_err = drain(b.child.stderr.take().unwrap());

    let started = Instant::now();
    let l1 = next_line(&mut tail_out, "logdog tail -f");
    assert_eq!(l1, "line 1: before the go-file\n");
    assert!(
        !b.has_exited(),
        "the butler exited before tail -f showed line 1"
    );
    assert!(!tail.has_exited(), "tail -f exited after line 1");
    let latency = started.elapsed();
    std::fs::write(&go, b"").unwrap();
    let l2 = next_line(&mut tail_out, "logdog tail -f");
    assert_eq!(l2, "line 2: after the go-file\n");

    let mut rest = String::new();
    std::io::Read::read_to_string(&mut tail_out, &mut rest).unwrap();
    let tail_status = tail.wait();
    let tail_err = String::from_utf8_lossy(&tail_err.join().unwrap()).into_owned();
    assert!(
        tail_status.success(),
        "tail -f: {tail_status}; stderr:\n{tail_err}"
    );
    assert_eq!(rest, "", "tail -f printed more than the two lines");
    assert_eq!(tail_err, "", "tail -f stderr");
    let r = finish(b, b_err);
    r.assert_code(0);
    eprintln!("tail -f showed line 1 {latency:?} after the butler started");
    collector.stop();
}

// ---------------------------------------------------------------------------------------------
// 3 and 4. The collector crashes mid-run / is down at start: nothing is lost or duplicated.
// ---------------------------------------------------------------------------------------------

/// A child in two phases, separated by the go-file `$2`: numbered lines on stdout (with a
/// short pause every 250 lines), every 100th line noted on stderr, and a binary stream fed
/// `$1/blob1` before and `$1/blob2` after the go-file. Touches `$1/child-done` and exits 5.
/// Phase 1 writes lines `0..$3`, phase 2 `$3..$4`.
const TWO_PHASE: &str = r#"
    B="$LOGDOG_TEST_BUTLER"
    wait_go() { while [ ! -e "$2" ]; do sleep 0.02; done; }
    emit() {
        i=$1
        while [ "$i" -lt "$2" ]; do
            echo "line $i: the quick brown fox jumps over the lazy dog"
            if [ $((i % 100)) -eq 0 ]; then echo "stderr at line $i" >&2; fi
            i=$((i + 1))
            if [ $((i % 250)) -eq 0 ]; then sleep 0.05; fi
        done
    }
    { cat "$1/blob1"; wait_go "$@"; cat "$1/blob2"; } | "$B" pipe --type binary blob &
    emit 0 "$3"
    wait_go "$@"
    emit "$3" "$4"
    wait $! || exit 90
    : > "$1/child-done"
    exit 5
"#;

/// What [`TWO_PHASE`] writes.
struct TwoPhase {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    blob: Vec<u8>,
    lines: usize,
}

/// Prepares the blobs of [`TWO_PHASE`] in `dir` and returns what it will write.
fn two_phase(dir: &Path, lines: usize, seed: u64) -> TwoPhase {
    let mut rng = Rng::new(seed);
    let blob1 = rng.bytes(1 << 20);
    let blob2 = rng.bytes((1 << 20) + 4321);
    std::fs::write(dir.join("blob1"), &blob1).unwrap();
    std::fs::write(dir.join("blob2"), &blob2).unwrap();
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    for i in 0..lines {
        stdout.extend_from_slice(
            format!("line {i}: the quick brown fox jumps over the lazy dog\n").as_bytes(),
        );
        if i % 100 == 0 {
            stderr.extend_from_slice(format!("stderr at line {i}\n").as_bytes());
        }
    }
    TwoPhase {
        stdout,
        stderr,
        blob: [blob1, blob2].concat(),
        lines,
    }
}

/// Starts the butler running [`TWO_PHASE`] against `output`, under `prefix`.
fn start_two_phase(
    dir: &Path,
    output: &str,
    prefix: &str,
    go: &Path,
    split: usize,
    lines: usize,
) -> (Guarded, std::thread::JoinHandle<Vec<u8>>) {
    let result = dir.join("result.json");
    let (split, lines) = (split.to_string(), lines.to_string());
    let mut cmd = butler_script(
        dir,
        &[
            "--output",
            output,
            "--prefix",
            prefix,
            "--max-buffer-age",
            "100ms",
            "--flush-timeout",
            "60s",
        ],
        &["--result-path", result.to_str().unwrap()],
        TWO_PHASE,
        &[dir, go, Path::new(&split), Path::new(&lines)],
    );
    let mut g = Guarded::spawn(&mut cmd);
    let err = drain(g.child.stderr.take().unwrap());
    (g, err)
}

/// Checks that everything [`TWO_PHASE`] wrote is stored exactly once and complete.
fn check_two_phase(dir: &Path, addr: &str, prefix: &str, want: &TwoPhase, r: &Finished) {
    r.assert_code(5);
    assert!(dir.join("child-done").exists(), "the child did not finish");
    let err = r.stderr_str();
    assert!(
        !err.contains("not acknowledged") && !err.contains("could not be delivered"),
        "butler reports losses:\n{err}"
    );
    let v: Value = serde_json::from_slice(&read(&dir.join("result.json"))).expect("result is JSON");
    assert_eq!(v["exit_code"], 5, "{v:#}");
    assert_eq!(v["failed_bundles"], 0, "{v:#}");
    for s in ["stdout", "stderr", "blob"] {
        assert_eq!(v["streams"][s]["bytes_undelivered"], 0, "{s}: {v:#}");
    }

    let stdout = cat(addr, &format!("default/{prefix}/+/stdout"));
    // A resent bundle stored twice would show as repeated lines.
    let got_lines = stdout.iter().filter(|&&b| b == b'\n').count();
    assert_eq!(got_lines, want.lines, "line count of stdout");
    assert_same_bytes("stdout", &want.stdout, &stdout);
    assert_same_bytes(
        "stderr",
        &want.stderr,
        &cat(addr, &format!("default/{prefix}/+/stderr")),
    );
    assert_same_bytes(
        "blob",
        &want.blob,
        &cat(addr, &format!("default/{prefix}/+/blob")),
    );

    let listed = listing(addr, &["ls", &format!("default/{prefix}")]);
    // The three and the run record.
    assert_eq!(listed.len(), 4, "{listed:#?}");
    for (name, bytes) in [
        ("stdout", want.stdout.len()),
        ("stderr", want.stderr.len()),
        ("blob", want.blob.len()),
    ] {
        let path = format!("default/{prefix}/+/{name}");
        let l = listed
            .iter()
            .find(|l| l.path == path)
            .unwrap_or_else(|| panic!("{path} not listed: {listed:#?}"));
        assert_eq!(l.state, "complete", "{l:?}");
        // Byte counts add up only if no entry was stored twice.
        assert_eq!(l.bytes, bytes as u64, "{l:?}");
    }
}

#[test]
fn collector_killed_and_restarted_on_the_same_port_loses_and_duplicates_nothing() {
    const OUTAGE: Duration = Duration::from_secs(30);
    const SPLIT: usize = 10_000;
    const LINES: usize = 20_000;
    let tmp = tempdir();
    let d = tmp.path();
    let data = d.join("data");
    let go = d.join("go");
    let want = two_phase(d, LINES, 0x0DD_BA11);
    let first = Collector::start(&data, "127.0.0.1:0");
    let port = first.port();

    // Watch what the first collector stores, to kill it once part of the run is durable.
    let mut tail = tail_follow(&first.addr, "default/restart/+/stdout", Stdio::null());
    let mut tail_out = BufReader::new(tail.child.stdout.take().unwrap());

    let (butler_proc, butler_err) =
        start_two_phase(d, &first.output(), "restart", &go, SPLIT, LINES);
    let started = Instant::now();
    loop {
        let line = next_line(&mut tail_out, "logdog tail -f on the first collector");
        if line.starts_with("line 3000:") {
            break;
        }
    }
    assert!(!d.join("child-done").exists());
    let killed_at = Instant::now();
    first.kill();
    std::fs::write(&go, b"").unwrap();
    // Its collector is gone; what it does about that is not the point here.
    drop(tail_out);
    drop(tail);

    // The delay is the scenario: the collector stays down for OUTAGE.
    std::thread::sleep(OUTAGE.saturating_sub(killed_at.elapsed()));
    assert!(
        d.join("child-done").exists(),
        "the child was still blocked after {OUTAGE:?} without a collector"
    );
    assert!(
        !butler_proc.has_exited(),
        "the butler exited while the collector was down"
    );
    let second = Collector::start(&data, &format!("127.0.0.1:{port}"));
    assert_eq!(second.port(), port);
    let restarted_at = Instant::now();

    let r = finish(butler_proc, butler_err);
    eprintln!(
        "killed {:?} after start; butler done {:?} after the restart",
        killed_at - started,
        restarted_at.elapsed()
    );
    check_two_phase(d, &second.addr, "restart", &want, &r);
    second.stop();
}

#[test]
fn collector_down_at_start_gets_everything_once_it_is_up() {
    const SPLIT: usize = 4_000;
    const LINES: usize = 8_000;
    let tmp = tempdir();
    let d = tmp.path();
    let go = d.join("go");
    let want = two_phase(d, LINES, 0x00D0_0D1E);
    let port = free_port();
    let output = format!("grpc://127.0.0.1:{port}");
    let (butler_proc, butler_err) = start_two_phase(d, &output, "late", &go, SPLIT, LINES);

    // The delay is the scenario: nothing listens for a few seconds.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !butler_proc.has_exited(),
        "the butler exited without a collector"
    );
    let collector = Collector::start(&d.join("data"), &format!("127.0.0.1:{port}"));
    std::fs::write(&go, b"").unwrap();
    let up = Instant::now();
    let r = finish(butler_proc, butler_err);
    eprintln!("butler done {:?} after the collector came up", up.elapsed());
    check_two_phase(d, &collector.addr, "late", &want, &r);
    collector.stop();
}

// ---------------------------------------------------------------------------------------------
// 5. The collector never comes back.
// ---------------------------------------------------------------------------------------------

#[test]
fn collector_never_up_reports_undelivered_bytes_and_keeps_the_exit_status() {
    let tmp = tempdir();
    let d = tmp.path();
    let result = d.join("result.json");
    let port = free_port();
    let output = format!("grpc://127.0.0.1:{port}");
    let mut cmd = butler_script(
        d,
        &["--output", &output, "--flush-timeout", "2s"],
        &["--result-path", result.to_str().unwrap()],
        "echo to stdout; echo to stderr >&2; exit 3",
        &[],
    );
    let started = Instant::now();
    // With a 2s flush timeout the butler has no reason to take anywhere near this long.
    let mut g = Guarded::spawn_within(&mut cmd, Duration::from_secs(30));
    let err = drain(g.child.stderr.take().unwrap());
    let r = finish(g, err);
    let took = started.elapsed();
    r.assert_code(3);
    let err = r.stderr_str();
    assert!(
        err.contains("not acknowledged") || err.contains("undelivered"),
        "no message about undelivered bytes:\n{err}"
    );
    let v: Value = serde_json::from_slice(&read(&result)).expect("result is JSON");
    assert_eq!(v["exit_code"], 3, "{v:#}");
    let undelivered = v["streams"]["stdout"]["bytes_undelivered"]
        .as_u64()
        .unwrap_or(0);
    assert!(undelivered > 0, "stdout bytes_undelivered: {v:#}");
    assert!(
        v["failed_bundles"].as_u64().unwrap_or(0) > 0,
        "failed_bundles: {v:#}"
    );
    eprintln!("butler gave up after {took:?}");
}

// ---------------------------------------------------------------------------------------------
// 6. Readable errors.
// ---------------------------------------------------------------------------------------------

#[test]
fn unknown_streams_and_unreachable_collectors_are_errors() {
    let tmp = tempdir();
    let collector = Collector::start(&tmp.path().join("data"), "127.0.0.1:0");
    let r = logdog(&collector.addr, &["cat", "default/nothing/+/here"]);
    r.assert_code(1);
    assert!(r.stderr_str().contains("not found"), "{}", r.stderr_str());
    assert_eq!(r.stdout_str(), "");
    collector.stop();

    let closed = format!("127.0.0.1:{}", free_port());
    let r = logdog(&closed, &["ls", "default"]);
    r.assert_code(1);
    assert!(
        r.stderr_str().contains("cannot reach"),
        "{}",
        r.stderr_str()
    );
    assert_eq!(r.stdout_str(), "");
}

#[test]
fn sigterm_stops_the_collector_even_while_a_follower_waits_on_an_open_stream() {
    let tmp = tempdir();
    let d = tmp.path();
    let collector = Collector::start(&d.join("data"), "127.0.0.1:0");
    let stop = d.join("stop");
    // An open stream: its writer wrote one line and waits.
    let mut cmd = butler(
        d,
        &[
            "--output",
            &collector.output(),
            "--prefix",
            "open",
            "--max-buffer-age",
            "50ms",
            "run",
            "--no-echo",
            "--",
            "sh",
            "-c",
            // Also ends once the test's directory is gone (a failed test leaves no loop).
            r#"echo first; while [ ! -e "$1" ] && [ -d "${1%/*}" ]; do sleep 0.05; done"#,
            "sh",
            stop.to_str().unwrap(),
        ],
    );
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut writer = Guarded::spawn(&mut cmd);

    // A follower that has seen the line and waits for more, holding a call open.
    let mut tail = tail_follow(&collector.addr, "default/open/+/stdout", Stdio::null());
    let mut out = BufReader::new(tail.child.stdout.take().unwrap());
    assert_eq!(next_line(&mut out, "logdog tail -f"), "first\n");

    let asked = Instant::now();
    collector.stop(); // asserts a clean exit
    let took = asked.elapsed();
    assert!(
        took < Duration::from_secs(60),
        "the collector took {took:?} to stop"
    );
    // The follower is told: it keeps trying to reconnect (see tests/reader_cli.rs), and is
    // stopped here.
    let _ = nix::sys::signal::kill(tail.pid(), nix::sys::signal::Signal::SIGKILL);
    tail.wait();

    std::fs::write(&stop, b"").unwrap();
    let _ = nix::sys::signal::kill(writer.pid(), nix::sys::signal::Signal::SIGKILL);
    writer.wait();
}
