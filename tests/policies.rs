//! Stream policies end to end: secrets masked (from the environment, a file and
//! `::add-mask::` lines) in the output, the echo, the spool and a real collector; filters per stream;
//! the rate limit's marker; what they did in the summary and in --result-path.

mod common;

use common::{
    Collector, Input, butler, dir_output, free_port, logdog, read, run, stream_path, tempdir,
};

/// Runs `logdog_butler FLAGS run RUN_FLAGS -- sh -c SCRIPT` in `cwd` with `env` set.
fn run_script(
    cwd: &std::path::Path,
    flags: &[&str],
    run_flags: &[&str],
    env: &[(&str, &str)],
    script: &str,
) -> common::Finished {
    let mut args: Vec<&str> = flags.to_vec();
    args.push("run");
    args.extend_from_slice(run_flags);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    let mut cmd = butler(cwd, &args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(&mut cmd, Input::Null)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn result(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&read(path)).expect("the result file is JSON")
}

#[test]
fn secrets_are_masked_across_pauses_and_buffer_age_flushes_in_the_output_and_the_echo() {
    let tmp = tempdir();
    let d = tmp.path();
    let out = d.join("out");
    let secrets = d.join("secrets");
    std::fs::write(&secrets, "file-secret-42\r\n\nab\n").unwrap();
    // Each secret is written in two pieces with a pause between them, longer than the
    // buffer age: the first piece alone would be flushed as a partial line.
    let script = r#"
        printf 'env: secr'; sleep 0.3; printf 'etvalue1 done\n'
        printf 'file: file-sec'; sleep 0.3; printf 'ret-42\n'
        echo '::add-mask::dynamic-secret'
        printf 'dyn: dynamic-'; sleep 0.3; echo 'secret end'
        echo "err: $SEC" >&2
    "#;
    let r = run_script(
        d,
        &[
            "--output",
            &dir_output(&out),
            "--max-buffer-age",
            "50ms",
            "--mask-env",
            "SEC",
            "--mask-file",
            secrets.to_str().unwrap(),
        ],
        &["--result-path", d.join("r.json").to_str().unwrap()],
        &[("SEC", "secretvalue1")],
        script,
    );
    r.assert_code(0);
    let want = "env: *** done\nfile: ***\ndyn: *** end\n";
    assert_eq!(text(&read(&stream_path(&out, "stdout"))), want);
    assert_eq!(text(&read(&stream_path(&out, "stderr"))), "err: ***\n");
    // The echo gets the masked bytes too.
    assert_eq!(r.stdout_str(), want);
    let err = r.stderr_str();
    assert!(err.contains("err: ***\n"), "{err}");
    for s in ["secretvalue1", "file-secret-42", "dynamic-secret"] {
        assert!(
            !err.contains(s) && !r.stdout_str().contains(s),
            "{s} leaked: {err}"
        );
    }
    // The short secret in the file is refused, loudly.
    assert!(err.contains("line 3") && err.contains("too short"), "{err}");
    assert!(err.contains("1 secret(s) were refused"), "{err}");
    assert!(err.contains("stdout: 3 secrets masked"), "{err}");
    let res = result(&d.join("r.json"));
    assert_eq!(res["streams"]["stdout"]["policy"]["masked"], 3, "{res}");
    assert_eq!(res["streams"]["stderr"]["policy"]["masked"], 1, "{res}");
    assert_eq!(res["secrets_refused"], 1, "{res}");
}

#[test]
fn a_masked_secret_never_reaches_the_collector() {
    let tmp = tempdir();
    let d = tmp.path();
    let data = d.join("data");
    let collector = Collector::start(&data, "127.0.0.1:0");
    let script = r#"
        echo "token=$TOKEN_X"
        echo '::add-mask::added-later-1'
        printf 'added-'; sleep 0.2; echo 'later-1 and again'
    "#;
    let r = run_script(
        d,
        &[
            "--output",
            &collector.output(),
            "--prefix",
            "masked",
            "--mask-env",
            "TOKEN_X",
        ],
        // The script itself holds the secret added later, in clear: the run record's command
        // line would show it (only --mask-env and --mask-file secrets are known by then).
        &["--no-echo", "--no-run-record"],
        &[("TOKEN_X", "s3cr3t-t0k3n")],
        script,
    );
    r.assert_code(0);
    let got = logdog(&collector.addr, &["cat", "default/masked/+/stdout"]);
    got.assert_code(0);
    assert_eq!(got.stdout_str(), "token=***\n*** and again\n");
    collector.stop();
    // Nothing in the collector's files holds either secret.
    assert_no_file_holds(&data, &[b"s3cr3t-t0k3n", b"added-later-1"]);
}

/// Fails the test if any file under `dir` holds one of `secrets`.
#[track_caller]
fn assert_no_file_holds(dir: &std::path::Path, secrets: &[&[u8]]) -> usize {
    let mut files = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else {
            files += 1;
            let bytes = read(&p);
            for s in secrets {
                assert!(
                    !bytes.windows(s.len()).any(|w| w == *s),
                    "{} holds a secret",
                    p.display()
                );
            }
        }
    }
    files
}

#[test]
fn masked_secrets_are_masked_in_the_spool_too() {
    let tmp = tempdir();
    let d = tmp.path();
    let spool = d.join("spool");
    // Nothing listens there: every bundle stays in the spool.
    let r = run_script(
        d,
        &[
            "--output",
            &format!("grpc://127.0.0.1:{}", free_port()),
            "--spool",
            spool.to_str().unwrap(),
            "--flush-timeout",
            "1s",
            "--mask-env",
            "TOKEN_X",
        ],
        // The script holds a piece of the secret in clear, which the run record's command
        // line would show.
        &["--no-echo", "--no-run-record"],
        &[("TOKEN_X", "s3cr3t-t0k3n")],
        r#"echo "token=$TOKEN_X"; printf 's3cr3t'; sleep 0.2; echo '-t0k3n again'"#,
    );
    r.assert_code(0);
    assert!(r.stderr_str().contains("IN SPOOL"), "{}", r.stderr_str());
    let files = assert_no_file_holds(&spool, &[b"s3cr3t-t0k3n", b"s3cr3t"]);
    assert!(files > 0, "the spool holds the bundles");
    let all: Vec<u8> = std::fs::read_dir(&spool)
        .unwrap()
        .flat_map(|e| {
            let p = e.unwrap().path();
            if p.is_file() { read(&p) } else { Vec::new() }
        })
        .collect();
    assert!(
        all.windows(9).any(|w| w == b"token=***"),
        "the masked line is in the spool"
    );
}

#[test]
fn filters_apply_per_stream_and_their_drops_are_counted() {
    let tmp = tempdir();
    let d = tmp.path();
    let out = d.join("out");
    let script = r#"
        echo 'DEBUG one'; echo 'INFO two'; echo 'keep three'
        echo 'DEBUG four' >&2; echo 'INFO five' >&2; printf 'DEBUG partial' >&2
    "#;
    let r = run_script(
        d,
        &[
            "--output",
            &dir_output(&out),
            "--exclude",
            "stderr=^DEBUG",
            "--include",
            "stdout=(INFO|keep)",
            "--exclude",
            "=e=x",
        ],
        &[
            "--no-echo",
            "--result-path",
            d.join("r.json").to_str().unwrap(),
        ],
        &[],
        script,
    );
    r.assert_code(0);
    assert_eq!(
        text(&read(&stream_path(&out, "stdout"))),
        "INFO two\nkeep three\n"
    );
    assert_eq!(text(&read(&stream_path(&out, "stderr"))), "INFO five\n");
    let res = result(&d.join("r.json"));
    let p = &res["streams"]["stderr"]["policy"];
    assert_eq!(
        (p["filtered_lines"].as_u64(), p["filtered_bytes"].as_u64()),
        (Some(2), Some(24))
    );
    let p = &res["streams"]["stdout"]["policy"];
    assert_eq!(
        (p["filtered_lines"].as_u64(), p["filtered_bytes"].as_u64()),
        (Some(1), Some(10))
    );
    let err = r.stderr_str();
    assert!(err.contains("stderr: 2 lines (24 B) filtered"), "{err}");
    assert!(err.contains("stdout: 1 lines (10 B) filtered"), "{err}");
}

#[test]
fn bad_policy_flags_are_usage_errors_naming_the_flag() {
    let tmp = tempdir();
    let d = tmp.path();
    let cases: [(&[&str], &str); 4] = [
        (&["--include", "stdout=("], "--include"),
        (&["--rate-limit", "fast"], "--rate-limit"),
        (
            &["--mask-env", "SURELY_NOT_SET_ANYWHERE"],
            "SURELY_NOT_SET_ANYWHERE",
        ),
        (&["--max-stream-bytes", "lots"], "--max-stream-bytes"),
    ];
    for (flags, named) in cases {
        let mut args = vec!["--output", "null"];
        args.extend_from_slice(flags);
        let r = run_script(d, &args, &[], &[("EMPTY_ONE", "")], "true");
        r.assert_code(2);
        assert!(
            r.stderr_str().contains(named),
            "{flags:?}: {}",
            r.stderr_str()
        );
    }
    let r = run_script(
        d,
        &["--output", "null", "--mask-env", "EMPTY_ONE"],
        &[],
        &[("EMPTY_ONE", "")],
        "true",
    );
    r.assert_code(2);
    assert!(
        r.stderr_str().contains("EMPTY_ONE: the variable is empty"),
        "{}",
        r.stderr_str()
    );
}

#[test]
fn the_rate_limit_drops_whole_lines_and_says_how_many_when_lines_pass_again() {
    let tmp = tempdir();
    let d = tmp.path();
    let out = d.join("out");
    // 100 bytes per second, bursts of 100: five 20-byte lines pass at once, the rest of a
    // fast burst is dropped; after a pause, lines pass again (marker first); a last burst is
    // cut short by the end of the stream (marker last).
    // Each burst is one write (awk buffers its output), so the butler sees it all at once
    // however slowly the machine runs the script.
    let script = r#"
        awk 'BEGIN { for (i = 0; i < 50; i++) printf "burst one line %04d\n", i }'
        sleep 1.2
        echo 'after the pause'
        awk 'BEGIN { for (i = 0; i < 50; i++) printf "burst two line %04d\n", i }'
    "#;
    let r = run_script(
        d,
        &[
            "--output",
            &dir_output(&out),
            "--rate-limit",
            "100/s,burst=100",
        ],
        &[
            "--no-echo",
            "--result-path",
            d.join("r.json").to_str().unwrap(),
        ],
        &[],
        script,
    );
    r.assert_code(0);
    let got = text(&read(&stream_path(&out, "stdout")));
    let lines: Vec<&str> = got.lines().collect();
    let markers: Vec<(u64, u64)> = lines
        .iter()
        .filter_map(|l| {
            let rest = l
                .strip_prefix("[logdog: ")?
                .strip_suffix(" bytes) dropped by rate limit]")?;
            let (n, m) = rest.split_once(" lines (")?;
            Some((n.parse().ok()?, m.parse().ok()?))
        })
        .collect();
    assert_eq!(markers.len(), 2, "{got}");
    assert!(
        lines[..5].iter().all(|l| l.starts_with("burst one")),
        "{got}"
    );
    let pause = lines
        .iter()
        .position(|l| *l == "after the pause")
        .expect(&got);
    assert!(lines[pause - 1].starts_with("[logdog: "), "{got}");
    assert!(lines.last().unwrap().starts_with("[logdog: "), "{got}");
    let passed = lines.iter().filter(|l| l.starts_with("burst ")).count() as u64;
    let dropped: u64 = markers.iter().map(|m| m.0).sum();
    assert_eq!(passed + dropped, 100, "{got}");
    assert_eq!(markers.iter().map(|m| m.1).sum::<u64>(), dropped * 20);
    let res = result(&d.join("r.json"));
    let p = &res["streams"]["stdout"]["policy"];
    assert_eq!(p["rate_limited_lines"].as_u64(), Some(dropped), "{res}");
    assert_eq!(
        p["rate_limited_bytes"].as_u64(),
        Some(dropped * 20),
        "{res}"
    );
    assert!(
        r.stderr_str().contains("dropped by rate limit"),
        "{}",
        r.stderr_str()
    );
}

#[test]
fn policies_apply_to_the_stream_command_too() {
    let tmp = tempdir();
    let d = tmp.path();
    let out = d.join("out");
    let src = d.join("in.txt");
    std::fs::write(&src, "keep pw=hunter22\nDEBUG drop\nkeep 2\n").unwrap();
    let mut cmd = butler(
        d,
        &[
            "--output",
            &dir_output(&out),
            "--exclude",
            "^DEBUG",
            "--mask-env",
            "PW",
            "stream",
            "--source",
            src.to_str().unwrap(),
            "--stream",
            "name=f",
        ],
    );
    cmd.env("PW", "hunter22");
    let r = run(&mut cmd, Input::Null);
    r.assert_code(0);
    assert_eq!(
        text(&read(&stream_path(&out, "f"))),
        "keep pw=***\nkeep 2\n"
    );
}
