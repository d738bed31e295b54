//! End-to-end tests of how the binaries read their flags: mistyped flags are errors with a
//! hint, the command after `run` keeps its own flags, every butler flag may come from an
//! environment variable (which a butler under `run` does not inherit), and `--help` says what
//! each binary and subcommand is and takes.

mod common;

use std::process::Command;

use common::{Input, butler, descriptor, dir_output, read, run, run_butler, tempdir};

#[test]
fn a_mistyped_flag_is_an_error_with_a_hint_not_the_command() {
    let tmp = tempdir();
    let out = dir_output(&tmp.path().join("out"));
    let r = run_butler(
        tmp.path(),
        &["--output", &out, "run", "--stdot", "name=x", "--", "true"],
    );
    r.assert_code(2);
    let err = r.stderr_str();
    assert!(err.contains("'--stdot'"), "stderr: {err}");
    assert!(
        err.contains("similar argument exists: '--stdout'"),
        "stderr: {err}"
    );
    assert!(!err.contains("cannot run"), "stderr: {err}");

    let r = run_butler(tmp.path(), &["--ouptut", &out, "run", "--", "true"]);
    r.assert_code(2);
    assert!(r.stderr_str().contains("'--output'"), "{}", r.stderr_str());
    assert!(!tmp.path().join("out").exists(), "nothing ran");
}

#[test]
fn a_tag_without_a_value_and_an_unknown_log_level_are_errors() {
    let tmp = tempdir();
    let out = dir_output(&tmp.path().join("out"));
    let r = run_butler(
        tmp.path(),
        &["--output", &out, "--tag", "novalue", "run", "--", "true"],
    );
    r.assert_code(2);
    assert!(r.stderr_str().contains("novalue"), "{}", r.stderr_str());
    assert!(r.stderr_str().contains("KEY=VALUE"), "{}", r.stderr_str());

    let r = run_butler(
        tmp.path(),
        &["--output", &out, "--log-level", "loud", "run", "--", "true"],
    );
    r.assert_code(2);
    assert!(r.stderr_str().contains("\"loud\""), "{}", r.stderr_str());
    assert!(!tmp.path().join("out").exists(), "nothing ran");

    // An empty value is written KEY=; a level and directives are fine.
    let r = run_butler(
        tmp.path(),
        &[
            "--output",
            &out,
            "--tag",
            "empty=",
            "--log-level",
            "info,logdog_outputs=debug",
            "run",
            "--",
            "true",
        ],
    );
    r.assert_code(0);
    assert_eq!(
        descriptor(&tmp.path().join("out"), "stdout")["tags"]["empty"],
        ""
    );

    let r = run(
        Command::new(env!("CARGO_BIN_EXE_logdog_collector")).args(["--log-level", "loud"]),
        Input::Null,
    );
    r.assert_code(2);
    assert!(r.stderr_str().contains("\"loud\""), "{}", r.stderr_str());
}

#[test]
fn the_commands_own_flags_reach_it_with_or_without_the_separator() {
    let tmp = tempdir();
    let out = tmp.path().join("out");
    let r = run_butler(
        tmp.path(),
        &[
            "--output",
            &dir_output(&out),
            "run",
            "--",
            "echo",
            "--weird",
            "-x",
        ],
    );
    r.assert_code(0);
    assert_eq!(read(&out.join("stdout")), b"--weird -x\n");

    // Without `--`, the command starts at the first word that is not a butler flag.
    let out = tmp.path().join("out2");
    let r = run_butler(
        tmp.path(),
        &[
            "--output",
            &dir_output(&out),
            "run",
            "--no-echo",
            "echo",
            "--stdout",
            "--x",
        ],
    );
    r.assert_code(0);
    assert_eq!(read(&out.join("stdout")), b"--stdout --x\n");
    assert_eq!(r.stdout_str(), "", "--no-echo was the butler's");
}

#[test]
fn a_flag_set_only_in_its_variable_takes_effect_and_the_command_line_wins() {
    let tmp = tempdir();
    let from_env = tmp.path().join("from-env");
    let from_cli = tmp.path().join("from-cli");

    let mut cmd = butler(tmp.path(), &["run", "--", "echo", "hi"]);
    cmd.env("LOGDOG_OUTPUT", dir_output(&from_env))
        .env("LOGDOG_TAG", "a=1\nb=2")
        .env("LOGDOG_RUN_STDOUT", "name=renamed")
        .env("LOGDOG_RUN_NO_ECHO", "true");
    let r = run(&mut cmd, Input::Null);
    r.assert_code(0);
    assert_eq!(read(&from_env.join("renamed")), b"hi\n");
    let tags = &descriptor(&from_env, "renamed")["tags"];
    assert_eq!(
        (&tags["a"], &tags["b"]),
        (&"1".into(), &"2".into()),
        "{tags}"
    );
    assert_eq!(r.stdout_str(), "", "LOGDOG_RUN_NO_ECHO");
    assert!(!tmp.path().join("logdog-out").exists());

    let mut cmd = butler(
        tmp.path(),
        &[
            "--output",
            &dir_output(&from_cli),
            "run",
            "--stdout",
            "name=cli",
            "--",
            "echo",
            "hi",
        ],
    );
    cmd.env("LOGDOG_OUTPUT", dir_output(&tmp.path().join("unused")))
        .env("LOGDOG_RUN_STDOUT", "name=renamed");
    let r = run(&mut cmd, Input::Null);
    r.assert_code(0);
    assert_eq!(read(&from_cli.join("cli")), b"hi\n");
    assert!(!tmp.path().join("unused").exists());

    // A bad value from the environment is a usage error like one on the command line.
    let mut cmd = butler(tmp.path(), &["run", "--", "true"]);
    cmd.env("LOGDOG_OUTPUT", "nowhere");
    let r = run(&mut cmd, Input::Null);
    r.assert_code(2);
    assert!(r.stderr_str().contains("nowhere"), "{}", r.stderr_str());
    assert!(
        r.stderr_str()
            .contains("flags were also set in the environment: LOGDOG_OUTPUT"),
        "{}",
        r.stderr_str()
    );
}

#[test]
fn a_butler_under_run_does_not_read_its_parents_flag_variables() {
    let tmp = tempdir();
    let outer = tmp.path().join("outer");
    let inner = tmp.path().join("inner");
    let script = format!(
        "\"$BUTLER\" --output {} run -- echo inner; \
         echo \"output=${{LOGDOG_OUTPUT-unset}} prefix=${{LOGDOG_STREAM_PREFIX:+set}}\"",
        dir_output(&inner)
    );
    let mut cmd = butler(tmp.path(), &["run", "--", "sh", "-c", &script]);
    cmd.env("BUTLER", env!("CARGO_BIN_EXE_logdog_butler"))
        .env("LOGDOG_OUTPUT", dir_output(&outer))
        .env("LOGDOG_PREFIX", "outer/run")
        .env("LOGDOG_RUN_STDOUT", "name=outer_stdout");
    let r = run(&mut cmd, Input::Null);
    r.assert_code(0);
    // The inner butler: its own default stream names and a fresh prefix.
    assert_eq!(read(&inner.join("stdout")), b"inner\n");
    // The outer butler captured the inner one's echo and what the shell saw.
    assert_eq!(
        read(&outer.join("outer_stdout")),
        b"inner\noutput=unset prefix=set\n"
    );
    assert_eq!(descriptor(&outer, "outer_stdout")["name"], "outer_stdout");
}

/// The first line of `BINARY ARGS --help`.
fn about(bin: &str, args: &[&str]) -> String {
    let r = run(Command::new(bin).args(args).arg("--help"), Input::Null);
    r.assert_code(0);
    r.stdout_str()
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The long flags `logdog_butler ARGS --help` lists.
fn listed_flags(args: &[&str]) -> Vec<String> {
    let tmp = tempdir();
    let mut all = args.to_vec();
    all.push("--help");
    let r = run_butler(tmp.path(), &all);
    r.assert_code(0);
    r.stdout_str()
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("--"))
        .filter_map(|l| l.split([' ', ',']).next())
        .map(|f| format!("--{f}"))
        .collect()
}

#[test]
fn help_says_what_each_binary_is() {
    let butler_bin = env!("CARGO_BIN_EXE_logdog_butler");
    let collector = env!("CARGO_BIN_EXE_logdog_collector");
    let reader = env!("CARGO_BIN_EXE_logdog");
    for (bin, args, want) in [
        (
            butler_bin,
            &[][..],
            "Runs a command (or reads a file) and ships",
        ),
        (collector, &[][..], "Stores bundles from butlers"),
        (reader, &[][..], "Reads log streams back from a collector"),
        (butler_bin, &["run"][..], "Runs a command, capturing"),
        (butler_bin, &["pipe"][..], "Copies stdin into a new stream"),
        (
            butler_bin,
            &["resume"][..],
            "Uploads what an earlier butler left",
        ),
        (collector, &["verify"][..], "Scans the store"),
    ] {
        let line = about(bin, args);
        assert!(line.starts_with(want), "{bin} {args:?}: {line:?}");
        assert!(
            !line.contains("logdog_butler command"),
            "{bin} {args:?}: {line:?}"
        );
    }
}

#[test]
fn pipe_and_resume_list_and_take_only_the_flags_that_apply() {
    let pipe = listed_flags(&["pipe"]);
    let resume = listed_flags(&["resume"]);
    let run_flags = listed_flags(&["run"]);
    for f in [
        "--output",
        "--project",
        "--prefix",
        "--include",
        "--spool",
        "--mask-env",
        "--grpc-compression",
    ] {
        assert!(!pipe.contains(&f.to_string()), "pipe lists {f}: {pipe:?}");
        assert!(
            run_flags.contains(&f.to_string()),
            "run lacks {f}: {run_flags:?}"
        );
    }
    for f in ["--tag", "--type", "--log-level"] {
        assert!(pipe.contains(&f.to_string()), "pipe lacks {f}: {pipe:?}");
    }
    for f in [
        "--project",
        "--prefix",
        "--tag",
        "--include",
        "--max-stream-bytes",
        "--gelf-host",
    ] {
        assert!(
            !resume.contains(&f.to_string()),
            "resume lists {f}: {resume:?}"
        );
    }
    for f in [
        "--output",
        "--spool",
        "--flush-timeout",
        "--token-file",
        "--result-path",
        "--grpc-compression",
    ] {
        assert!(
            resume.contains(&f.to_string()),
            "resume lacks {f}: {resume:?}"
        );
    }

    // Given anyway, before or after the subcommand: an error naming it.
    let tmp = tempdir();
    for args in [
        &["pipe", "--include", "x", "name"][..],
        &["--include", "x", "pipe", "name"][..],
        &[
            "--spool",
            "s",
            "--output",
            "grpc://127.0.0.1:1",
            "resume",
            "--prefix",
            "p",
        ][..],
    ] {
        let r = run_butler(tmp.path(), args);
        r.assert_code(2);
        assert!(
            r.stderr_str().contains("does not apply to"),
            "{args:?}: {}",
            r.stderr_str()
        );
    }
}

#[test]
fn the_collectors_token_subcommand_does_not_list_the_store() {
    let collector = env!("CARGO_BIN_EXE_logdog_collector");
    let help = |args: &[&str]| {
        let r = run(
            Command::new(collector).args(args).arg("--help"),
            Input::Null,
        );
        r.assert_code(0);
        r.stdout_str()
    };
    assert!(help(&["verify"]).contains("--data"));
    for args in [&["token"][..], &["token", "new"][..]] {
        let h = help(args);
        assert!(!h.contains("--data"), "{args:?}:\n{h}");
    }
}

#[test]
fn help_shows_the_variable_of_every_flag() {
    let tmp = tempdir();
    let r = run_butler(tmp.path(), &["--help"]);
    r.assert_code(0);
    let help = r.stdout_str();
    for v in [
        "LOGDOG_OUTPUT",
        "LOGDOG_PROJECT",
        "LOGDOG_TAG",
        "LOGDOG_FLUSH_TIMEOUT",
    ] {
        assert!(
            help.contains(&format!("[env: {v}=")),
            "{v} missing:\n{help}"
        );
    }
    let r = run_butler(tmp.path(), &["run", "--help"]);
    r.assert_code(0);
    for v in ["LOGDOG_RUN_NO_ECHO", "LOGDOG_RUN_STDOUT", "LOGDOG_OUTPUT"] {
        assert!(
            r.stdout_str().contains(&format!("[env: {v}=")),
            "{v} missing"
        );
    }
    // Never the variables a butler exports to its command, nor LOGDOG_TOKEN's.
    for v in [
        "LOGDOG_STREAM_PREFIX=",
        "LOGDOG_STREAM_PROJECT=",
        "LOGDOG_COORDINATOR_HOST=",
        "LOGDOG_TOKEN=",
    ] {
        assert!(!help.contains(v), "{v} in help");
    }
}
