//! The durable spool end to end: a butler SIGKILLed with its collector down loses nothing it
//! had spooled (`resume`, or the next `run` on the same spool, delivers it byte-identical and
//! exactly once), a damaged spool is reported and the rest delivered, and misuse of `--spool`
//! is refused clearly.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use logdog_outputs::spool::{Item, SpoolReader};
use logdog_proto::logdog::collector::BundleView;
use nix::sys::signal::{Signal, kill};
use prost::Message;
use serde_json::Value;

/// The spool's segment files, oldest first.
fn segment_files(spool: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(spool) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "spool"))
        .collect();
    v.sort();
    v
}

/// Every valid record's bundle in the spool.
fn spooled_bundles(spool: &Path) -> Vec<BundleView> {
    let mut out = Vec::new();
    for f in segment_files(spool) {
        let Ok(mut r) = SpoolReader::open(&f) else {
            continue;
        };
        while let Ok(Some(item)) = r.next_item() {
            if let Item::Record { payload, .. } = item {
                out.push(BundleView::decode(payload).expect("a spooled bundle"));
            }
        }
    }
    out
}

/// Names of the streams whose terminal entry is in the spool.
fn ended_in_spool(spool: &Path) -> BTreeSet<String> {
    spooled_bundles(spool)
        .iter()
        .flat_map(|b| b.entries.iter())
        .filter(|e| e.terminal)
        .filter_map(|e| e.desc.as_ref().map(|d| d.name.clone()))
        .collect()
}

/// What a killed butler left in a spool.
struct Leftover {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Runs a butler with `--spool spool` towards a collector that is down (`port`), lets its
/// child write `stdout` (8 MiB of text) and `stderr` (1 MiB of arbitrary bytes) and close
/// both, waits until both streams have ended in the spool, and SIGKILLs the butler.
fn leave_spool(d: &Path, spool: &Path, port: u16, prefix: &str, seed: u64) -> Leftover {
    let out_file = d.join(format!("{prefix}.out"));
    let err_file = d.join(format!("{prefix}.err"));
    let stop = d.join(format!("{prefix}.stop"));
    write_text_file(&out_file, 8 << 20, seed);
    let mut rng = Rng::new(seed + 1);
    std::fs::write(&err_file, rng.bytes(1 << 20)).expect("write stderr file");
    let mut cmd = butler(
        d,
        &[
            "--output",
            &format!("grpc://127.0.0.1:{port}"),
            "--spool",
            spool.to_str().expect("utf-8 path"),
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
            // The child pacing itself is not synchronisation: the test waits on the spool.
            r#"cat "$1"; cat "$2" >&2; exec >&- 2>&-; while [ ! -e "$3" ]; do sleep 0.05; done"#,
            "sh",
            out_file.to_str().expect("utf-8 path"),
            err_file.to_str().expect("utf-8 path"),
            stop.to_str().expect("utf-8 path"),
        ],
    );
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut g = Guarded::spawn(&mut cmd);
    let want: BTreeSet<String> = ["stdout", "stderr"].map(String::from).into();
    let deadline = Instant::now() + Duration::from_secs(90);
    while ended_in_spool(spool) != want {
        assert!(
            Instant::now() < deadline,
            "the streams never ended in the spool; found {:?}",
            ended_in_spool(spool)
        );
        assert!(!g.has_exited(), "the butler exited on its own");
        std::thread::sleep(Duration::from_millis(50));
    }
    kill(g.pid(), Signal::SIGKILL).expect("SIGKILL the butler");
    let status = g.wait();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    // Let the orphaned child go.
    std::fs::write(&stop, b"").expect("write stop file");
    Leftover {
        stdout: read(&out_file),
        stderr: read(&err_file),
    }
}

/// `--spool SPOOL --output grpc://COLLECTOR` followed by `rest`.
fn spooled(spool: &Path, collector: &Collector, rest: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--spool".to_string(),
        spool.to_str().expect("utf-8 path").to_string(),
        "--output".to_string(),
        collector.output(),
    ];
    args.extend(rest.iter().map(|a| a.to_string()));
    args
}

/// Runs `resume` on `spool` towards `collector`; returns how it ended and its result JSON.
fn resume(d: &Path, spool: &Path, collector: &Collector) -> (Finished, Value) {
    let result = d.join("resume.json");
    let r = run_butler(
        d,
        &spooled(
            spool,
            collector,
            &[
                "resume",
                "--result-path",
                result.to_str().expect("utf-8 path"),
            ],
        ),
    );
    let v = serde_json::from_slice(&read(&result)).expect("resume JSON");
    (r, v)
}

/// Checks that `prefix`'s two streams are complete and byte-identical at the collector.
fn assert_delivered(addr: &str, prefix: &str, want: &Leftover) {
    for (name, bytes) in [("stdout", &want.stdout), ("stderr", &want.stderr)] {
        let path = format!("default/{prefix}/+/{name}");
        let r = logdog(addr, &["cat", &path]);
        r.assert_code(0);
        assert!(
            r.stdout == *bytes,
            "{path}: {} bytes at the collector, {} written",
            r.stdout.len(),
            bytes.len()
        );
    }
    let r = logdog(addr, &["ls", &format!("default/{prefix}")]);
    r.assert_code(0);
    let listing = r.stdout_str();
    assert_eq!(listing.lines().count(), 2, "{listing}");
    for line in listing.lines() {
        assert!(line.contains("\tcomplete\t"), "{listing}");
    }
}

#[test]
fn a_killed_butler_loses_nothing_it_spooled_and_resume_delivers_it_once() {
    let tmp = tempdir();
    let d = tmp.path();
    let spool = d.join("spool");
    let port = free_port();
    let want = leave_spool(d, &spool, port, "killed", 0x5B00_0001);
    let bundles = spooled_bundles(&spool);
    let records = bundles.len();
    assert!(
        records > 1,
        "expected several spooled bundles, got {records}"
    );
    // Entries per stream in the spool: the collector must end up with exactly these.
    let mut spooled_entries = std::collections::BTreeMap::<String, usize>::new();
    for e in bundles.iter().flat_map(|b| b.entries.iter()) {
        let name = e.desc.as_ref().map(|d| d.name.clone()).unwrap_or_default();
        *spooled_entries.entry(name).or_default() += e.logs.len();
    }

    let collector = Collector::start(&d.join("data"), &format!("127.0.0.1:{port}"));
    let (r, v) = resume(d, &spool, &collector);
    r.assert_code(0);
    let err = r.stderr_str();
    assert!(err.contains("delivered"), "{err}");
    assert!(!err.contains("CORRUPT") && !err.contains("TORN"), "{err}");
    assert_eq!(v["drained"], true, "{v:#}");
    assert_eq!(v["output"]["sent_bundles"], records as u64, "{v:#}");
    assert!(segment_files(&spool).is_empty(), "the spool is emptied");
    assert_delivered(&collector.addr, "killed", &want);
    // The collector's index holds each spooled entry once.
    let r = logdog(&collector.addr, &["ls", "default/killed"]);
    for (name, n) in &spooled_entries {
        let line = r
            .stdout_str()
            .lines()
            .find(|l| l.starts_with(&format!("default/killed/+/{name}\t")))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("{name} not listed:\n{}", r.stdout_str()));
        assert!(line.contains(&format!("\t{n} entries\t")), "{name}: {line}");
    }

    // Resuming again finds nothing and changes nothing.
    let (r, v) = resume(d, &spool, &collector);
    r.assert_code(0);
    assert_eq!(v["output"]["sent_bundles"], 0, "{v:#}");
    assert!(
        r.stderr_str().contains("nothing to upload"),
        "{}",
        r.stderr_str()
    );
    assert_delivered(&collector.addr, "killed", &want);
    collector.stop();
}

#[test]
fn the_next_run_on_the_spool_uploads_what_the_killed_butler_left() {
    let tmp = tempdir();
    let d = tmp.path();
    let spool = d.join("spool");
    let port = free_port();
    let want = leave_spool(d, &spool, port, "first", 0x5B00_0002);

    let collector = Collector::start(&d.join("data"), &format!("127.0.0.1:{port}"));
    let r = run_butler(
        d,
        &spooled(
            &spool,
            &collector,
            &[
                "--prefix",
                "second",
                "run",
                "--",
                "sh",
                "-c",
                "echo second run; exit 4",
            ],
        ),
    );
    r.assert_code(4);
    let err = r.stderr_str();
    assert!(err.contains("left by an earlier butler"), "{err}");
    assert!(err.contains("nothing lost"), "{err}");
    assert!(segment_files(&spool).is_empty(), "the spool is emptied");
    assert_delivered(&collector.addr, "first", &want);
    let r = logdog(&collector.addr, &["cat", "default/second/+/stdout"]);
    assert_eq!(r.stdout_str(), "second run\n");
    collector.stop();
}

#[test]
fn a_torn_last_record_and_a_corrupt_middle_record_are_reported_and_the_rest_delivered() {
    let tmp = tempdir();
    let d = tmp.path();
    let spool = d.join("spool");
    let port = free_port();
    leave_spool(d, &spool, port, "damaged", 0x5B00_0003);

    // Damage the first segment: flip a byte inside a middle record's payload, and cut its last
    // record short.
    let seg = segment_files(&spool).remove(0);
    let mut data = std::fs::read(&seg).expect("read segment");
    let mut offsets = Vec::new();
    let mut r = SpoolReader::new(data.clone(), data.len() as u64);
    while let Some(item) = r.next_item().expect("read") {
        if let Item::Record { offset, .. } = item {
            offsets.push(offset as usize);
        }
    }
    assert!(
        offsets.len() >= 3,
        "need 3 records, found {}",
        offsets.len()
    );
    let total = spooled_bundles(&spool).len();
    let middle = offsets[offsets.len() / 2];
    data[middle + 20] ^= 0x5a;
    let last = *offsets.last().expect("a last record");
    data.truncate(last + (data.len() - last) / 2);
    std::fs::write(&seg, &data).expect("write damaged segment");

    let collector = Collector::start(&d.join("data"), &format!("127.0.0.1:{port}"));
    let (r, v) = resume(d, &spool, &collector);
    // Something was lost, and resume says so (exit 1), but it neither crashed nor stopped.
    r.assert_code(1);
    let err = r.stderr_str();
    assert!(err.contains("1 CORRUPT"), "{err}");
    assert!(err.contains("1 TORN"), "{err}");
    assert_eq!(v["drained"], true, "{v:#}");
    assert_eq!(v["output"]["spool"]["corrupt"], 1, "{v:#}");
    assert_eq!(v["output"]["spool"]["torn"], 1, "{v:#}");
    assert_eq!(
        v["output"]["sent_bundles"],
        (total - 2) as u64,
        "every undamaged record is delivered: {v:#}"
    );
    assert!(segment_files(&spool).is_empty(), "the spool is emptied");
    // The collector has the undamaged rest (the torn record may have held all of stderr).
    let r = logdog(&collector.addr, &["ls", "default/damaged"]);
    r.assert_code(0);
    let listing = r.stdout_str();
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("default/damaged/+/stdout\t") && !l.contains("\t0 bytes")),
        "{listing}"
    );
    collector.stop();
}

#[test]
fn misuse_of_the_spool_is_refused_clearly() {
    let tmp = tempdir();
    let d = tmp.path();
    let spool = d.join("spool");
    let spool_arg = spool.to_str().expect("utf-8 path");

    // Only the collector output has a spool.
    let r = run_butler(
        d,
        &[
            "--spool", spool_arg, "--output", "null", "run", "--", "true",
        ],
    );
    r.assert_code(2);
    assert!(
        r.stderr_str()
            .contains("--spool is for the collector output"),
        "{}",
        r.stderr_str()
    );

    // resume needs a spool and a collector.
    let r = run_butler(d, &["--output", "null", "resume"]);
    r.assert_code(2);
    assert!(
        r.stderr_str().contains("resume needs --spool"),
        "{}",
        r.stderr_str()
    );

    // One butler per spool: a second one is refused while the first holds it.
    let output = format!("grpc://127.0.0.1:{}", free_port());
    let mut first = butler(d, &["--spool", spool_arg, "--output", &output, "serve"]);
    first
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut g = Guarded::spawn(&mut first);
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(g.child.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("serve prints its address");
    assert!(line.starts_with("LOGDOG_STREAM_SERVER_PATH="), "{line}");
    let r = run_butler(
        d,
        &[
            "--spool", spool_arg, "--output", &output, "run", "--", "true",
        ],
    );
    r.assert_code(250);
    assert!(
        r.stderr_str().contains("in use by another butler"),
        "{}",
        r.stderr_str()
    );
    kill(g.pid(), Signal::SIGTERM).expect("SIGTERM serve");
    g.wait();
}

#[test]
fn a_full_spool_disk_holds_the_command_back_and_loses_nothing() {
    // The spool gets a 16 MiB file system of its own: a tmpfs mounted in a user and mount
    // namespace (no privileges needed where user namespaces are allowed).
    if !small_file_systems_can_be_made() {
        return;
    }
    let tmp = tempdir();
    let d = tmp.path();
    let spool = d.join("spool");
    std::fs::create_dir(&spool).expect("spool dir");
    let input = d.join("input.txt");
    write_text_file(&input, 48 << 20, 0x5B00_0004);
    let done = d.join("child-done");
    let port = free_port();
    let mut cmd = std::process::Command::new("unshare");
    cmd.current_dir(d)
        .args([
            "-rm",
            "sh",
            "-c",
            r#"mount -t tmpfs -o size=16m tmpfs "$0" && exec "$@""#,
        ])
        .arg(&spool)
        .arg(env!("CARGO_BIN_EXE_logdog_butler"))
        .args([
            "--output",
            &format!("grpc://127.0.0.1:{port}"),
            "--spool",
            spool.to_str().expect("utf-8 path"),
            "--prefix",
            "full",
            "run",
            "--no-echo",
            "--",
            "sh",
            "-c",
            r#"cat "$1"; touch "$2"; exit 3"#,
            "sh",
            input.to_str().expect("utf-8 path"),
            done.to_str().expect("utf-8 path"),
        ])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut g = Guarded::spawn(&mut cmd);
    let (rx, reader) = stderr_lines(&mut g);
    // The butler says loudly that the spool's disk is full...
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(90))
            .expect("the butler never said the spool's disk was full");
        if line.contains("SPOOL DISK FULL") {
            break;
        }
    }
    // ...and holds the command back instead of dropping anything.
    assert!(
        !done.exists(),
        "the command ran to its end past a full spool"
    );
    assert!(!g.has_exited(), "the butler gave up on a full spool");

    let collector = Collector::start(&d.join("data"), &format!("127.0.0.1:{port}"));
    let status = g.wait();
    let err = reader.join().expect("stderr reader");
    assert_eq!(status.code(), Some(3), "butler stderr:\n{err}");
    assert!(done.exists());
    assert!(err.contains("spool has room again"), "{err}");
    assert!(err.contains("time(s) for disk space"), "{err}");
    assert!(err.contains("nothing lost"), "{err}");
    let r = logdog(&collector.addr, &["cat", "default/full/+/stdout"]);
    r.assert_code(0);
    assert!(r.stdout == read(&input), "stdout differs at the collector");
    collector.stop();
}

#[test]
fn stream_with_a_spool_uploads_everything_before_it_exits() {
    let tmp = tempdir();
    let d = tmp.path();
    let spool = d.join("spool");
    let file = d.join("file.txt");
    write_text_file(&file, 4 << 20, 0x5B00_0005);
    let collector = Collector::start(&d.join("data"), "127.0.0.1:0");
    let r = run_butler(
        d,
        &spooled(
            &spool,
            &collector,
            &[
                "--prefix",
                "streamed",
                "stream",
                "--source",
                file.to_str().expect("utf-8 path"),
                "--stream",
                "name=file",
            ],
        ),
    );
    r.assert_code(0);
    assert!(segment_files(&spool).is_empty(), "the spool is emptied");
    let r = logdog(&collector.addr, &["cat", "default/streamed/+/file"]);
    r.assert_code(0);
    assert!(
        r.stdout == read(&file),
        "the stream differs at the collector"
    );
    collector.stop();
}

/// The report's scenario: the spool on a 32 MiB tmpfs, the collector down, four `pipe`
/// streams of 9 MiB each under one `run` (more than the spool's disk holds). The butler
/// holds on past its flush timeout instead of giving anything up; once the collector is up
/// it goes on, and `resume` (in the same mount namespace, so on the same tmpfs) delivers
/// the rest: every stream complete and byte-identical.
#[test]
fn a_spool_disk_too_small_for_the_run_gives_nothing_up_and_resume_completes_every_stream() {
    if !small_file_systems_can_be_made() {
        return;
    }
    let tmp = tempdir();
    let d = tmp.path();
    let spool = d.join("spool");
    std::fs::create_dir(&spool).expect("spool dir");
    let inputs: Vec<PathBuf> = (1..=4)
        .map(|i| {
            let p = d.join(format!("input{i}.txt"));
            write_text_file(&p, 9 << 20, 0x5B00_0010 + i);
            p
        })
        .collect();
    let done = d.join("child-done");
    let result = d.join("run.json");
    let resume_result = d.join("resume.json");
    let port = free_port();
    let output = format!("grpc://127.0.0.1:{port}");
    let bin = env!("CARGO_BIN_EXE_logdog_butler");
    // In the namespace: mount, `run`, then `resume` on the same tmpfs; each exit status is
    // printed on stderr for the test to read.
    let script = r#"
        spool=$1 bin=$2 output=$3 result=$4 resume_result=$5 done=$6; shift 6
        mount -t tmpfs -o size=32m tmpfs "$spool" || exit 99
        "$bin" --output "$output" --spool "$spool" --prefix four --flush-timeout 1s \
            run --no-run-record --no-echo --result-path "$result" -- sh -c '
                bin=$1 done=$2; shift 2
                i=0
                for f in "$@"; do i=$((i+1)); "$bin" pipe "s$i" < "$f" & done
                wait; touch "$done"; exit 3' sh "$bin" "$done" "$@"
        echo "TEST: run exited $?" >&2
        "$bin" --output "$output" --spool "$spool" --flush-timeout 120s \
            resume --result-path "$resume_result"
        echo "TEST: resume exited $?" >&2
    "#;
    let mut cmd = std::process::Command::new("unshare");
    cmd.current_dir(d)
        .args(["-rm", "sh", "-c", script, "sh"])
        .arg(&spool)
        .arg(bin)
        .arg(&output)
        .arg(&result)
        .arg(&resume_result)
        .arg(&done)
        .args(&inputs)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut g = Guarded::spawn(&mut cmd);
    let (rx, reader) = stderr_lines(&mut g);
    let mut seen = String::new();
    let mut wait_for = |needle: &str| loop {
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("never saw {needle:?}; stderr so far:\n{seen}"));
        seen.push_str(&line);
        seen.push('\n');
        assert!(
            !line.contains("giving up") && !line.starts_with("TEST: run exited"),
            "the butler gave up on a full spool:\n{seen}"
        );
        if line.contains(needle) {
            return;
        }
    };
    // The spool's disk fills; every writer finishes (its bytes are in the butler); the flush
    // timeout passes, and the butler holds on rather than give anything up.
    wait_for("SPOOL DISK FULL");
    wait_for("flush timeout passed");
    assert!(
        done.exists(),
        "the four pipes should have written everything"
    );
    assert!(!g.has_exited(), "the butler gave up on a full spool");

    let collector = Collector::start(&d.join("data"), &format!("127.0.0.1:{port}"));
    let status = g.wait();
    let err = reader.join().expect("stderr reader");
    assert_eq!(status.code(), Some(0), "stderr:\n{err}");
    assert!(err.contains("TEST: run exited 3"), "{err}");
    assert!(err.contains("TEST: resume exited 0"), "{err}");
    assert!(!err.contains("LOST"), "{err}");
    assert!(!err.contains("giving up"), "{err}");
    let v: Value = serde_json::from_slice(&read(&result)).expect("run JSON");
    assert_eq!(v["failed_bundles"], 0, "{v:#}");
    assert_eq!(v["totals"]["bytes_lost"], 0, "{v:#}");
    assert_eq!(v["totals"]["streams_with_losses"], 0, "{v:#}");
    assert!(
        v["output"]["spool"]["full_waits"].as_u64() > Some(0),
        "{v:#}"
    );
    let v: Value = serde_json::from_slice(&read(&resume_result)).expect("resume JSON");
    assert_eq!(v["drained"], true, "{v:#}");

    for (i, input) in inputs.iter().enumerate() {
        let path = format!("default/four/+/s{}", i + 1);
        let r = logdog(&collector.addr, &["cat", &path]);
        r.assert_code(0);
        let want = read(input);
        assert!(
            r.stdout == want,
            "{path}: {} bytes at the collector, {} written",
            r.stdout.len(),
            want.len()
        );
    }
    let r = logdog(&collector.addr, &["ls", "default/four"]);
    r.assert_code(0);
    let listing = r.stdout_str();
    assert_eq!(listing.lines().count(), 6, "{listing}");
    for line in listing.lines() {
        assert!(line.contains("\tcomplete\t"), "{listing}");
    }
    collector.stop();
}

/// A `logdog_collector` whose data directory is a tmpfs of `size` of its own (in a user and
/// mount namespace); returns it with the address it listens on.
fn collector_on_small_fs(d: &Path, size: &str) -> (Guarded, String) {
    let data = d.join("small-data");
    std::fs::create_dir(&data).expect("data dir");
    let mut cmd = std::process::Command::new("unshare");
    cmd.current_dir(d)
        .args([
            "-rm",
            "sh",
            "-c",
            r#"mount -t tmpfs -o "size=$1" tmpfs "$0" && shift && exec "$@""#,
        ])
        .arg(&data)
        .arg(size)
        .arg(env!("CARGO_BIN_EXE_logdog_collector"))
        .args(["--listen", "127.0.0.1:0", "--data"])
        .arg(data.join("store"))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut g = Guarded::spawn(&mut cmd);
    let mut out = std::io::BufReader::new(g.child.stdout.take().expect("stdout"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).expect("the collector's stdout");
    let addr = line
        .trim_end()
        .strip_prefix("LOGDOG_COLLECTOR=")
        .unwrap_or_else(|| panic!("the collector did not start: {line:?}"))
        .to_string();
    drain(out);
    (g, addr)
}

/// The collector's disk fills up under four 9 MiB `pipe` streams: whatever it could not store
/// is `LOST` in the butler's summary and result file, per stream, never `ok`; and what it did
/// store is the streams' bytes, unaltered.
#[test]
fn a_full_collector_disk_is_reported_per_stream_and_never_ok() {
    if !small_file_systems_can_be_made() {
        return;
    }
    let tmp = tempdir();
    let d = tmp.path();
    let (mut collector, addr) = collector_on_small_fs(d, "24m");
    let inputs: Vec<PathBuf> = (1..=4)
        .map(|i| {
            let p = d.join(format!("input{i}.txt"));
            write_text_file(&p, 9 << 20, 0x5B00_0020 + i);
            p
        })
        .collect();
    let result = d.join("run.json");
    let bin = env!("CARGO_BIN_EXE_logdog_butler");
    let mut args: Vec<String> = [
        "--output",
        &format!("grpc://{addr}"),
        "--prefix",
        "collfull",
        "--flush-timeout",
        "3s",
        "run",
        "--no-echo",
        "--result-path",
        result.to_str().expect("utf-8 path"),
        "--",
        "sh",
        "-c",
        r#"bin=$1; shift; i=0
           for f in "$@"; do i=$((i+1)); "$bin" pipe "s$i" < "$f" & done
           wait; exit 3"#,
        "sh",
        bin,
    ]
    .map(String::from)
    .to_vec();
    args.extend(inputs.iter().map(|p| p.display().to_string()));
    let r = run_butler(d, &args);
    r.assert_code(3);
    let err = r.stderr_str();
    let v: Value = serde_json::from_slice(&read(&result)).expect("run JSON");
    assert!(
        v["totals"]["bytes_lost"].as_u64() > Some(0),
        "36 MiB cannot fit on 24 MiB: {v:#}\n{err}"
    );
    let listing = logdog(&addr, &["ls", "default/collfull"]).stdout_str();
    for (i, input) in inputs.iter().enumerate() {
        let name = format!("s{}", i + 1);
        let cat = logdog(&addr, &["cat", &format!("default/collfull/+/{name}")]);
        let got = cat.stdout.clone();
        let want = read(input);
        assert!(
            want.starts_with(&got),
            "{name}: the collector holds bytes that were not written"
        );
        let complete = listing.lines().any(|l| {
            l.starts_with(&format!("default/collfull/+/{name}\t")) && l.contains("\tcomplete\t")
        });
        let row = err
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row for {name}:\n{err}"));
        if !complete || got.len() < want.len() {
            assert!(
                row.contains("LOST"),
                "{name} is incomplete (complete in the listing: {complete}; read back {} of {} \
                 bytes; logdog cat exited {}: {}) but:\n{err}\nlisting:\n{listing}",
                got.len(),
                want.len(),
                cat.code(),
                cat.stderr_str()
            );
            if got.len() < want.len() {
                assert!(
                    v["streams"][&name]["bytes_undelivered"].as_u64() > Some(0),
                    "{name}: {v:#}"
                );
            } else {
                // Every byte is stored, but the bundle with the stream's end was not: the
                // stream stays incomplete, which is a loss too.
                assert!(row.contains("its end not acknowledged"), "{name}: {err}");
                assert_eq!(v["acknowledged"][&name]["ended"], false, "{name}: {v:#}");
            }
        }
    }
    assert!(err.contains("LOST data"), "{err}");
    let _ = nix::sys::signal::kill(collector.pid(), Signal::SIGTERM);
    collector.wait();
}

/// The same with `--spool`: what the full collector could not store stays in the spool
/// (`IN SPOOL`, never `ok`), and `resume` keeps it there and exits 1 while the disk is full.
#[test]
fn with_a_spool_a_full_collector_disk_leaves_the_rest_in_the_spool() {
    if !small_file_systems_can_be_made() {
        return;
    }
    let tmp = tempdir();
    let d = tmp.path();
    let spool = d.join("spool");
    let (mut collector, addr) = collector_on_small_fs(d, "12m");
    let input = d.join("input.txt");
    write_text_file(&input, 24 << 20, 0x5B00_0030);
    let result = d.join("run.json");
    let output = format!("grpc://{addr}");
    let spool_arg = spool.to_str().expect("utf-8 path");
    let r = run_butler(
        d,
        &[
            "--output",
            &output,
            "--spool",
            spool_arg,
            "--prefix",
            "spoolfull",
            "--flush-timeout",
            "3s",
            "run",
            // The command's stream alone in the spool.
            "--no-run-record",
            "--no-echo",
            "--result-path",
            result.to_str().expect("utf-8 path"),
            "--",
            "cat",
            input.to_str().expect("utf-8 path"),
        ],
    );
    r.assert_code(0);
    let err = r.stderr_str();
    let row = err
        .lines()
        .find(|l| l.trim_start().starts_with("stdout "))
        .unwrap_or_else(|| panic!("no row for stdout:\n{err}"));
    assert!(row.contains("IN SPOOL"), "{err}");
    assert!(!row.contains("LOST"), "{err}");
    assert!(err.contains("still in the spool"), "{err}");
    let v: Value = serde_json::from_slice(&read(&result)).expect("run JSON");
    assert_eq!(v["totals"]["bytes_lost"], 0, "{v:#}");
    // stdout, and the end of the empty stderr (queued behind stdout's bytes).
    assert_eq!(v["totals"]["streams_in_spool"], 2, "{v:#}");
    assert_eq!(v["acknowledged"]["stderr"]["ended"], false, "{v:#}");
    assert!(
        !segment_files(&spool).is_empty(),
        "the spool keeps the rest"
    );

    let r = run_butler(
        d,
        &[
            "--output",
            &output,
            "--spool",
            spool_arg,
            "--flush-timeout",
            "3s",
            "resume",
        ],
    );
    r.assert_code(1);
    assert!(
        r.stderr_str().contains("still in the spool"),
        "{}",
        r.stderr_str()
    );
    assert!(
        !segment_files(&spool).is_empty(),
        "the spool keeps the rest"
    );
    // What the collector stored is the stream's bytes, unaltered.
    let got = logdog(&addr, &["cat", "default/spoolfull/+/stdout"]).stdout;
    assert!(
        read(&input).starts_with(&got),
        "the collector holds other bytes"
    );
    let _ = kill(collector.pid(), Signal::SIGTERM);
    collector.wait();
}

/// Reads the stderr of `g` line by line: each line as it comes on the channel, and all of it
/// from the thread once the pipe closes.
fn stderr_lines(
    g: &mut Guarded,
) -> (
    std::sync::mpsc::Receiver<String>,
    std::thread::JoinHandle<String>,
) {
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = g.child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
            let Ok(line) = line else { break };
            all.push_str(&line);
            all.push('\n');
            let _ = tx.send(line);
        }
        all
    });
    (rx, reader)
}
