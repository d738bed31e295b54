//! `--max-stream-bytes` end to end: a command writing far more than the cap keeps its first and
//! its last lines with one marker line in between that counts exactly what was left out, in
//! the directory output and, with `--spool`, through a collector (the tail then waits in a
//! file under the spool directory, removed at the end).

mod common;

use std::path::Path;

use common::{Collector, dir_output, logdog, read, run_butler, stream_path, tempdir};
use serde_json::Value;

/// Lines the command writes: `seq 1 LAST`.
const LAST: u64 = 100_000;
/// The cap, as given on the command line and in bytes.
const CAP: &str = "64KiB";
const CAP_BYTES: u64 = 64 << 10;

/// The bytes of `seq 1 LAST`.
fn seq_bytes() -> Vec<u8> {
    (1..=LAST)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect()
}

/// Checks a captured `seq 1 LAST` under the cap: whole lines `1..=a`, the marker, whole lines
/// `b..=LAST`, and a marker that counts exactly lines `a+1..b` and their bytes. Returns the
/// counts the marker gives.
fn check_head_marker_tail(got: &[u8]) -> (u64, u64) {
    let text = std::str::from_utf8(got).expect("UTF-8 output");
    let all = seq_bytes();
    assert!(got.len() < all.len(), "something is left out");
    let lines: Vec<&str> = text.lines().collect();
    let markers: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("[logdog: "))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(markers.len(), 1, "one marker line: {markers:?}");
    let m = markers[0];
    let marker = lines[m];
    let nums = |ls: &[&str]| -> Vec<u64> {
        ls.iter()
            .map(|l| l.parse().unwrap_or_else(|_| panic!("not a number: {l:?}")))
            .collect()
    };
    let head = nums(&lines[..m]);
    let tail = nums(&lines[m + 1..]);
    assert_eq!(
        head,
        (1..=head.len() as u64).collect::<Vec<_>>(),
        "the head is 1.."
    );
    let first_tail = LAST + 1 - tail.len() as u64;
    assert_eq!(
        tail,
        (first_tail..=LAST).collect::<Vec<_>>(),
        "the tail ends at {LAST}"
    );
    assert!(!head.is_empty() && !tail.is_empty());

    let rest = marker
        .strip_prefix("[logdog: ")
        .and_then(|r| r.strip_suffix(" bytes) left out by --max-stream-bytes]"))
        .unwrap_or_else(|| panic!("marker {marker:?}"));
    let (n, m_bytes) = rest.split_once(" lines (").expect("N lines (M");
    let n: u64 = n.parse().expect("a line count");
    let m_bytes: u64 = m_bytes.parse().expect("a byte count");
    let left_out = first_tail - 1 - head.len() as u64;
    let left_out_bytes: u64 = (head.len() as u64 + 1..first_tail)
        .map(|i| i.to_string().len() as u64 + 1)
        .sum();
    assert_eq!(n, left_out, "{marker}");
    assert_eq!(m_bytes, left_out_bytes, "{marker}");
    assert_eq!(
        got.len() as u64 - (marker.len() as u64 + 1) + m_bytes,
        all.len() as u64,
        "bytes in = bytes out + bytes left out"
    );
    assert!(
        got.len() as u64 - (marker.len() as u64 + 1) <= CAP_BYTES,
        "head and tail fit in the cap"
    );
    (n, m_bytes)
}

/// Checks `--result-path` and the summary against the marker's counts.
fn check_reports(result: &Path, stderr: &str, (lines, bytes): (u64, u64)) {
    let v: Value = serde_json::from_slice(&read(result)).expect("result JSON");
    let p = &v["streams"]["stdout"]["policy"];
    assert_eq!(p["omitted_lines"], lines, "{v:#}");
    assert_eq!(p["omitted_bytes"], bytes, "{v:#}");
    assert_eq!(
        v["streams"]["stderr"]["policy"]["omitted_lines"], 0,
        "{v:#}"
    );
    assert!(
        stderr.contains(&format!("stdout: {lines} lines (")) && stderr.contains("left out"),
        "the summary reports what was left out:\n{stderr}"
    );
}

#[test]
fn a_long_stream_keeps_its_head_and_its_tail_with_a_marker() {
    let tmp = tempdir();
    let out = tmp.path().join("out");
    let result = tmp.path().join("result.json");
    let r = run_butler(
        tmp.path(),
        &[
            "--output",
            &dir_output(&out),
            "run",
            "--no-echo",
            "--max-stream-bytes",
            CAP,
            "--result-path",
            result.to_str().expect("UTF-8 path"),
            "--",
            "sh",
            "-c",
            "seq 1 100000",
        ],
    );
    r.assert_code(0);
    let counts = check_head_marker_tail(&read(&stream_path(&out, "stdout")));
    check_reports(&result, &r.stderr_str(), counts);
}

#[test]
fn a_stream_within_the_cap_is_untouched() {
    let tmp = tempdir();
    let out = tmp.path().join("out");
    let r = run_butler(
        tmp.path(),
        &[
            "--output",
            &dir_output(&out),
            "run",
            "--no-echo",
            "--max-stream-bytes",
            CAP,
            "--",
            "sh",
            "-c",
            "seq 1 10000",
        ],
    );
    r.assert_code(0);
    let want: Vec<u8> = (1..=10_000)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect();
    assert!(want.len() as u64 <= CAP_BYTES);
    assert_eq!(read(&stream_path(&out, "stdout")), want);
    assert!(!r.stderr_str().contains("left out"), "{}", r.stderr_str());
}

#[test]
fn with_a_spool_the_tail_waits_in_a_file_that_is_removed_at_the_end() {
    let tmp = tempdir();
    let spool = tmp.path().join("spool");
    let seen = tmp.path().join("seen");
    let result = tmp.path().join("result.json");
    let collector = Collector::start(&tmp.path().join("data"), "127.0.0.1:0");
    // Once `seq` has written everything, all but the last pipe-full has been read and will
    // reach the cap, which then starts the tail's file: the shell waits for it to appear (the
    // stream is still open meanwhile) and lists it.
    let r = run_butler(
        tmp.path(),
        &[
            "--spool",
            spool.to_str().expect("UTF-8 path"),
            "--output",
            &collector.output(),
            "--prefix",
            "capped",
            "run",
            "--no-echo",
            "--max-stream-bytes",
            CAP,
            "--result-path",
            result.to_str().expect("UTF-8 path"),
            "--",
            "sh",
            "-c",
            r#"seq 1 100000
               i=0; f=
               while [ -z "$f" ] && [ $i -lt 1200 ]; do
                   f=$(find "$0" -name '*.ring'); [ -n "$f" ] || sleep 0.1; i=$((i+1))
               done
               printf '%s' "$f" > "$1""#,
            spool.to_str().expect("UTF-8 path"),
            seen.to_str().expect("UTF-8 path"),
        ],
    );
    r.assert_code(0);
    let listed = String::from_utf8(read(&seen)).expect("UTF-8 listing");
    assert_eq!(
        listed.lines().count(),
        1,
        "one tail file while the stream was open: {listed:?}"
    );
    let file = Path::new(listed.trim_end());
    assert!(file.starts_with(&spool), "{listed}");
    assert!(!file.exists(), "the tail's file is removed at the end");

    let c = logdog(&collector.addr, &["cat", "default/capped/+/stdout"]);
    c.assert_code(0);
    let counts = check_head_marker_tail(&c.stdout);
    check_reports(&result, &r.stderr_str(), counts);
    collector.stop();
}
