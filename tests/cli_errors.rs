//! End-to-end tests of the butler's command line: exit statuses and messages for bad flags and
//! commands, global flags after the subcommand, and the `stream` subcommand.

mod common;

use common::{
    Input, Rng, assert_same_file, butler, descriptor, dir_output, read, run, run_butler,
    stream_path, tempdir,
};

#[test]
fn missing_command_exits_250_naming_it() {
    let tmp = tempdir();
    let out = tmp.path().join("out");
    let r = run_butler(
        tmp.path(),
        &[
            "--output",
            &dir_output(&out),
            "run",
            "--",
            "/no/such/cmd",
            "arg",
        ],
    );
    r.assert_code(250);
    assert!(
        r.stderr_str().contains("/no/such/cmd"),
        "stderr: {}",
        r.stderr_str()
    );
}

#[test]
fn bad_flags_exit_2_naming_the_bad_part() {
    let tmp = tempdir();
    let out = dir_output(&tmp.path().join("out"));
    let cases: &[(&[&str], &str)] = &[
        (
            &["--output", &out, "--tag", "=x", "run", "--", "true"],
            "=x",
        ),
        (
            &[
                "--output",
                &out,
                "run",
                "--stdout",
                "name=_bad",
                "--",
                "true",
            ],
            "_bad",
        ),
        (
            &[
                "--output",
                &out,
                "run",
                "--stdout",
                "name=a,type=blob",
                "--",
                "true",
            ],
            "blob",
        ),
        (
            &[
                "--output",
                &out,
                "run",
                "--stdout",
                "name=a,colour=red",
                "--",
                "true",
            ],
            "colour",
        ),
        (&["--output", "foo", "run", "--", "true"], "foo"),
        (
            &[
                "--output",
                &out,
                "--max-buffer-age",
                "xyz",
                "run",
                "--",
                "true",
            ],
            "xyz",
        ),
        (
            &["--output", &out, "--prefix", "_bad", "run", "--", "true"],
            "_bad",
        ),
        (
            &[
                "--output",
                &out,
                "run",
                "--stderr",
                "name=a/_b",
                "--",
                "true",
            ],
            "_b",
        ),
        (
            &[
                "--output",
                &out,
                "run",
                "--stdout",
                "name=same",
                "--stderr",
                "name=same",
                "--",
                "true",
            ],
            "same",
        ),
    ];
    for (args, needle) in cases {
        let r = run_butler(tmp.path(), args);
        assert_eq!(
            r.code(),
            2,
            "{args:?}: expected exit 2; stderr: {}",
            r.stderr_str()
        );
        assert!(
            r.stderr_str().contains(needle),
            "{args:?}: stderr does not mention {needle:?}: {}",
            r.stderr_str()
        );
    }
    // Nothing ran, so nothing was written: not even the default ./logdog-out.
    assert!(!tmp.path().join("out").join("stdout").exists());
    assert!(!tmp.path().join("logdog-out").exists());
}

#[test]
fn global_flags_are_accepted_after_the_subcommand() {
    let tmp = tempdir();
    let r = run_butler(
        tmp.path(),
        &["run", "--output", "null", "--project", "p", "--", "true"],
    );
    r.assert_code(0);
    assert!(!tmp.path().join("logdog-out").exists());

    let out = tmp.path().join("out");
    let r = run_butler(
        tmp.path(),
        &[
            "run",
            "--output",
            &dir_output(&out),
            "--tag",
            "k=v",
            "--",
            "sh",
            "-c",
            "echo hi",
        ],
    );
    r.assert_code(0);
    assert_eq!(read(&out.join("stdout")), b"hi\n");
    assert_eq!(descriptor(&out, "stdout")["tags"]["k"], "v");
}

/// LogDog's `MakeStreamName("file:", path)`: characters outside `[A-Za-z0-9:_.-]` become `_`,
/// and a segment not starting with a letter or digit gets the fill in front.
fn logdog_file_stream_name(path: &str) -> String {
    let cleaned: String = path
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        cleaned
    } else {
        format!("file:{cleaned}")
    }
}

#[test]
fn stream_uploads_a_file_under_its_logdog_name() {
    let tmp = tempdir();
    let out = tmp.path().join("out");
    let src = tmp.path().join("my log+file.txt");
    let mut data = b"first line\r\nsecond \xFF\xFE line\nno newline at the end".to_vec();
    data.extend(Rng::new(5).bytes(256 << 10));
    std::fs::write(&src, &data).unwrap();
    let src_str = src.to_str().unwrap();

    let r = run_butler(
        tmp.path(),
        &["--output", &dir_output(&out), "stream", "--source", src_str],
    );
    r.assert_code(0);
    let name = logdog_file_stream_name(src_str);
    assert!(name.starts_with("file:_"), "{name}");
    assert!(name.ends_with("_my_log_file.txt"), "{name}");
    let file = stream_path(&out, &name);
    assert!(file.exists(), "{} missing", file.display());
    assert_same_file(&src, &file);
    let d = descriptor(&out, &name);
    assert_eq!(d["name"], name.as_str(), "{d:#}");
    assert_eq!(d["stream_type"], "TEXT", "{d:#}");
}

#[test]
fn stream_uploads_stdin_under_the_given_name() {
    let tmp = tempdir();
    let out = tmp.path().join("out");
    let mut data = b"from stdin\n\xE2\x82 partial\r\n".to_vec();
    data.extend(Rng::new(11).bytes(1 << 20));
    let r = run(
        &mut butler(
            tmp.path(),
            &[
                "--output",
                &dir_output(&out),
                "--tag",
                "t=1",
                "stream",
                "--stream",
                "name=x,type=binary",
            ],
        ),
        Input::Bytes(data.clone()),
    );
    r.assert_code(0);
    let got = read(&out.join("x"));
    assert_eq!(got.len(), data.len());
    assert!(got == data, "stream x differs from what was sent on stdin");
    let d = descriptor(&out, "x");
    assert_eq!(d["name"], "x", "{d:#}");
    assert_eq!(d["stream_type"], "BINARY", "{d:#}");
    assert_eq!(d["tags"]["t"], "1", "{d:#}");
}

#[test]
fn stream_of_a_missing_file_exits_250_naming_it() {
    let tmp = tempdir();
    let out = tmp.path().join("out");
    let missing = tmp.path().join("no-such-file.txt");
    let r = run_butler(
        tmp.path(),
        &[
            "--output",
            &dir_output(&out),
            "stream",
            "--source",
            missing.to_str().unwrap(),
        ],
    );
    r.assert_code(250);
    assert!(
        r.stderr_str().contains("no-such-file.txt"),
        "stderr: {}",
        r.stderr_str()
    );
}

#[test]
fn stream_specs_over_the_descriptor_limits_exit_2_before_running_anything() {
    let tmp = tempdir();
    let out = dir_output(&tmp.path().join("out"));
    let marker = tmp.path().join("ran");
    let touch = format!("touch {}", marker.display());
    let big = "v".repeat(4000);
    let long_type = format!("name=a,content-type={}", "c".repeat(1025));
    let own_tags: Vec<String> = (0..4).map(|i| format!("tag=s{i}={big}")).collect();
    let own_tags = format!("name=a,{}", own_tags.join(","));
    let mut global: Vec<String> = Vec::new();
    for i in 0..5 {
        global.push("--tag".into());
        global.push(format!("g{i}={big}"));
    }
    // A spec over a limit alone, and one within them alone but over once the global tags
    // are merged.
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            [
                "--output", &out, "run", "--stdout", &long_type, "--", "sh", "-c", &touch,
            ]
            .map(String::from)
            .to_vec(),
            "invalid content type",
        ),
        (
            global
                .iter()
                .cloned()
                .chain(
                    [
                        "--output", &out, "run", "--stderr", &own_tags, "--", "sh", "-c", &touch,
                    ]
                    .map(String::from),
                )
                .collect(),
            "more than 32768 bytes",
        ),
    ];
    for (args, needle) in cases {
        let r = run_butler(tmp.path(), &args);
        r.assert_code(2);
        let err = r.stderr_str();
        assert!(err.contains(needle), "{err}");
        assert!(err.contains("stream \"a\""), "{err}");
        assert!(!marker.exists(), "the command ran");
    }
}
