//! End-to-end tests of the run record (`logdog/run`): two JSON lines saying what `run` ran
//! and how it ended, read back from a real collector with `logdog`.

mod common;

use common::{Collector, butler, descriptor, dir_output, logdog, read, run, run_butler, tempdir};
use serde_json::Value;

/// The run record's lines, read back with `logdog cat`.
fn record_lines(addr: &str, prefix: &str) -> Vec<Value> {
    let r = logdog(addr, &["cat", &format!("default/{prefix}/+/logdog/run")]);
    r.assert_code(0);
    r.stdout_str()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

#[test]
fn start_and_end_lines_reach_the_collector_with_secrets_masked() {
    let tmp = tempdir();
    let col = Collector::start(&tmp.path().join("data"), "127.0.0.1:0");
    let secret = "s3cr3t-t0ken-value";
    let mut cmd = butler(
        tmp.path(),
        &[
            "--output",
            &col.output(),
            "--prefix",
            "rec",
            "--mask-env",
            "RUN_SECRET",
            // The user's filters do not cut the record.
            "--include",
            "^keep",
            "run",
            "--no-echo",
            "--",
            "sh",
            "-c",
            "echo keep this; echo drop that >&2",
            secret,
        ],
    );
    cmd.env("RUN_SECRET", secret);
    let r = run(&mut cmd, common::Input::Null);
    r.assert_code(0);
    let lines = record_lines(&col.addr, "rec");
    assert_eq!(lines.len(), 2, "{lines:#?}");
    let (start, end) = (&lines[0], &lines[1]);
    assert_eq!(start["event"], "start", "{start}");
    assert_eq!(
        start["command"],
        serde_json::json!(["sh", "-c", "echo keep this; echo drop that >&2", "***"]),
        "{start}"
    );
    assert!(start["pid"].as_u64().is_some_and(|p| p > 0), "{start}");
    assert!(
        start["host"].as_str().is_some_and(|h| !h.is_empty()),
        "{start}"
    );
    let t = start["start"].as_str().unwrap_or_default();
    assert!(t.ends_with('Z') && t.contains('T'), "{start}");
    assert_eq!(end["event"], "end", "{end}");
    assert_eq!(end["exit_code"], 0, "{end}");
    assert_eq!(end["signal"], Value::Null, "{end}");
    assert!(
        end["duration_secs"].as_f64().is_some_and(|d| d >= 0.0),
        "{end}"
    );
    assert!(end["end"].as_str().is_some_and(|e| e >= t), "{end}");
    // stdout, stderr and the record.
    assert_eq!(end["streams"], 3, "{end}");
    assert_eq!(
        end["bytes_captured"],
        ("keep this\n".len() + "drop that\n".len()) as u64,
        "{end}"
    );
    assert_eq!(end["lines_dropped"], 1, "{end}");
    let raw = logdog(&col.addr, &["cat", "default/rec/+/logdog/run"]).stdout_str();
    assert!(!raw.contains(secret), "{raw}");
    // Found by its tag.
    let q = logdog(
        &col.addr,
        &["query", "--tag", "logdog.kind=run", "default/rec"],
    );
    q.assert_code(0);
    assert!(q.stdout_str().contains("logdog/run"), "{}", q.stdout_str());
    col.stop();
}

#[test]
fn a_command_killed_by_a_signal_has_no_exit_code_and_the_signal_name() {
    let tmp = tempdir();
    let col = Collector::start(&tmp.path().join("data"), "127.0.0.1:0");
    let r = run_butler(
        tmp.path(),
        &[
            "--output",
            &col.output(),
            "--prefix",
            "killed",
            "run",
            "--",
            "sh",
            "-c",
            "kill -KILL $$",
        ],
    );
    r.assert_code(137);
    let lines = record_lines(&col.addr, "killed");
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert_eq!(lines[1]["event"], "end");
    assert_eq!(lines[1]["exit_code"], Value::Null, "{}", lines[1]);
    assert_eq!(lines[1]["signal"], "SIGKILL", "{}", lines[1]);
    col.stop();
}

#[test]
fn the_record_is_an_ndjson_stream_tagged_as_the_run() {
    let tmp = tempdir();
    let out = tmp.path().join("out");
    let r = run_butler(
        tmp.path(),
        &["--output", &dir_output(&out), "run", "--", "true"],
    );
    r.assert_code(0);
    let d = descriptor(&out, "logdog/run");
    assert_eq!(d["content_type"], "application/x-ndjson", "{d:#}");
    assert_eq!(d["stream_type"], "TEXT", "{d:#}");
    assert_eq!(d["tags"]["logdog.kind"], "run", "{d:#}");
    let text = String::from_utf8_lossy(&read(&out.join("logdog").join("run"))).into_owned();
    assert_eq!(text.lines().count(), 2, "{text}");
    // The name is taken.
    let r = run_butler(
        tmp.path(),
        &[
            "--output",
            &dir_output(&out),
            "run",
            "--stdout",
            "name=logdog/run",
            "--",
            "true",
        ],
    );
    r.assert_code(2);
}
