//! `--log-format json` on the three binaries: every line they log on stderr is one JSON object
//! with `timestamp` (RFC 3339), `level`, `message` and the event's fields.

mod common;

use common::*;
use serde_json::Value;

/// Parses every non-empty line of `text` as a JSON log object; panics naming the line if one
/// is not.
fn json_lines(what: &str, text: &str) -> Vec<Value> {
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{what}: not a JSON line ({e}): {l:?}\n{text}"));
            for key in ["timestamp", "level", "message"] {
                assert!(v[key].is_string(), "{what}: no {key} in {l}");
            }
            let ts = v["timestamp"].as_str().unwrap_or_default();
            assert!(rfc3339_utc(ts), "{what}: timestamp {ts:?} is not RFC 3339");
            v
        })
        .collect();
    assert!(!lines.is_empty(), "{what}: logged nothing");
    lines
}

/// Whether `ts` looks like `YYYY-MM-DDTHH:MM:SS[.fraction]Z`.
fn rfc3339_utc(ts: &str) -> bool {
    let b = ts.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && ts.ends_with('Z')
}

#[test]
fn the_collector_logs_json_lines() {
    let tmp = tempdir();
    let d = tmp.path();
    let collector =
        Collector::start_with(&d.join("data"), "127.0.0.1:0", &["--log-format", "json"]);
    collector.stop();
    // The test helper writes the collector's stderr next to its data directory.
    let log = String::from_utf8(read(&d.join("data.log"))).expect("a UTF-8 log");
    let lines = json_lines("logdog_collector", &log);
    let listening = lines
        .iter()
        .find(|v| v["message"] == "collector listening")
        .expect("a 'collector listening' line");
    assert_eq!(listening["level"], "INFO");
    assert!(
        listening["addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:"))
    );
}

#[test]
fn the_butler_logs_json_lines() {
    let tmp = tempdir();
    let d = tmp.path();
    let out = dir_output(&d.join("out"));
    let r = run(
        &mut butler(
            d,
            &[
                "--log-format",
                "json",
                "--log-level",
                "info",
                "--output",
                out.as_str(),
                "run",
                "--no-summary",
                "--no-echo",
                "--",
                "echo",
                "hi",
            ],
        ),
        Input::Null,
    );
    r.assert_code(0);
    json_lines("logdog_butler", &r.stderr_str());
}

#[test]
fn logdog_logs_its_error_as_a_json_line() {
    let r = logdog("127.0.0.1:1", &["--log-format", "json", "ls", "default"]);
    assert_eq!(r.code(), 1, "{}", r.stderr_str());
    let lines = json_lines("logdog", &r.stderr_str());
    let last = lines.last().expect("a line");
    assert_eq!(last["level"], "ERROR");
    assert!(
        last["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot reach")),
        "{last}"
    );
}
