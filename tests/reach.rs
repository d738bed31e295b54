//! End-to-end tests of what the butler says when its collector cannot be reached: one line at
//! start (beside the command, which does not wait for it), a bounded number of retry warnings,
//! and nothing at all when the collector is there.

mod common;

use common::{Collector, free_port, run_butler, tempdir};

/// The early line's words.
const UNREACHABLE: &str = "cannot reach the collector at";

#[test]
fn an_unreachable_collector_is_said_once_at_start_and_warnings_are_bounded() {
    let tmp = tempdir();
    // Nobody listens on a free port: every connection is refused at once.
    let output = format!("grpc://127.0.0.1:{}", free_port());
    let r = run_butler(
        tmp.path(),
        &[
            "--output",
            &output,
            "--flush-timeout",
            "2s",
            "--max-buffer-age",
            "100ms",
            "run",
            "--",
            "sh",
            "-c",
            // Several bundles retry at once while the command still runs.
            "for i in 1 2 3 4 5 6 7 8; do echo line $i; echo err $i >&2; sleep 0.2; done",
        ],
    );
    let err = r.stderr_str();
    assert_eq!(err.matches(UNREACHABLE).count(), 1, "stderr:\n{err}");
    let line = err
        .lines()
        .find(|l| l.contains(UNREACHABLE))
        .unwrap_or_default();
    assert!(line.contains("held in memory"), "{line}");
    assert!(line.contains("--flush-timeout (2s)"), "{line}");
    let warnings = err
        .lines()
        .filter(|l| l.contains("collector unavailable"))
        .count();
    assert!(
        (1..=2).contains(&warnings),
        "{warnings} retry warnings:\n{err}"
    );
    assert!(
        err.contains("LOST"),
        "the summary says what was lost:\n{err}"
    );

    // With a spool, the line says where the logs wait.
    let spool = tmp.path().join("spool");
    let r = run_butler(
        tmp.path(),
        &[
            "--output",
            &output,
            "--spool",
            &spool.display().to_string(),
            "--flush-timeout",
            "1s",
            "run",
            "--",
            "echo",
            "hi",
        ],
    );
    let err = r.stderr_str();
    assert_eq!(err.matches(UNREACHABLE).count(), 1, "stderr:\n{err}");
    assert!(err.contains("kept in the spool"), "stderr:\n{err}");
}

#[test]
fn a_reachable_collector_is_not_mentioned() {
    let tmp = tempdir();
    let collector = Collector::start(&tmp.path().join("data"), "127.0.0.1:0");
    let r = run_butler(
        tmp.path(),
        &["--output", &collector.output(), "run", "--", "echo", "hi"],
    );
    r.assert_code(0);
    let err = r.stderr_str();
    assert!(!err.contains(UNREACHABLE), "stderr:\n{err}");
    assert!(!err.contains("collector unavailable"), "stderr:\n{err}");
    assert!(err.contains("nothing lost"), "stderr:\n{err}");
    collector.stop();
}
