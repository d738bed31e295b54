//! End-to-end tests of `run --fail-on-loss`: a command that exited 0 makes `run` exit 251 when
//! some of its output was lost; policies the user asked for are not losses.

mod common;

use common::{dir_output, free_port, run_butler, tempdir};

/// `--output grpc://<nothing listening> --flush-timeout 1s run FLAGS -- sh -c SCRIPT`.
fn to_a_collector_that_is_down(flags: &[&str], script: &str) -> common::Finished {
    let tmp = tempdir();
    let down = format!("grpc://127.0.0.1:{}", free_port());
    let mut args: Vec<&str> = vec![
        "--output",
        &down,
        "--prefix",
        "down",
        "--flush-timeout",
        "1s",
        "run",
        "--no-echo",
    ];
    args.extend(flags);
    args.extend(["--", "sh", "-c", script]);
    run_butler(tmp.path(), &args)
}

#[test]
fn output_lost_to_a_collector_that_is_down_makes_a_successful_run_fail() {
    let r = to_a_collector_that_is_down(&["--fail-on-loss"], "echo hello");
    r.assert_code(251);
    let err = r.stderr_str();
    assert!(err.contains("LOST"), "{err}");
    assert!(err.contains("--fail-on-loss"), "{err}");
}

#[test]
fn without_the_flag_the_status_is_the_commands() {
    let r = to_a_collector_that_is_down(&[], "echo hello");
    r.assert_code(0);
    assert!(r.stderr_str().contains("LOST"), "{}", r.stderr_str());
}

#[test]
fn a_failing_command_keeps_its_own_status() {
    let r = to_a_collector_that_is_down(&["--fail-on-loss"], "echo hello; exit 3");
    r.assert_code(3);
}

#[test]
fn lines_left_out_by_filters_and_head_tail_are_not_losses() {
    let tmp = tempdir();
    let out = tmp.path().join("out");
    let r = run_butler(
        tmp.path(),
        &[
            "--output",
            &dir_output(&out),
            "--exclude",
            "^drop",
            "--max-stream-bytes",
            "64",
            "run",
            "--no-echo",
            "--fail-on-loss",
            "--",
            "sh",
            "-c",
            "echo drop me; echo keep me; i=0; while [ $i -lt 50 ]; do echo line $i; i=$((i+1)); done",
        ],
    );
    r.assert_code(0);
    assert!(
        r.stderr_str().contains("nothing lost"),
        "{}",
        r.stderr_str()
    );
}
