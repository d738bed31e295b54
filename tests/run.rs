//! End-to-end tests of `logdog_butler run`: real child processes, real files, the directory
//! output.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use common::{
    Guarded, Input, Rng, assert_same_file, butler, descriptor, dir_output, drain, read, run,
    run_butler, stream_path, tempdir, write_text_file,
};
use nix::sys::signal::{Signal, kill};
use serde_json::{Value, json};

/// `--output directory:D run --no-echo -- cat F` with extra `run` flags; returns D.
fn cat_through_butler(tmp: &Path, file: &Path, run_flags: &[&str]) -> std::path::PathBuf {
    let out = tmp.join("out");
    let mut args: Vec<String> = vec![
        "--output".into(),
        dir_output(&out),
        "run".into(),
        "--no-echo".into(),
    ];
    args.extend(run_flags.iter().map(|s| s.to_string()));
    args.extend(["--".into(), "cat".into(), file.display().to_string()]);
    let r = run_butler(tmp, &args);
    r.assert_code(0);
    assert!(
        r.stdout.is_empty(),
        "--no-echo, yet stdout: {}",
        r.stdout_str()
    );
    out
}

#[test]
fn large_text_file_is_copied_exactly() {
    let tmp = tempdir();
    let src = tmp.path().join("big.txt");
    let size = write_text_file(&src, 512 << 20, 0x5EED_0001);
    assert!(size >= 512 << 20);
    let out = cat_through_butler(tmp.path(), &src, &[]);
    assert_same_file(&src, &out.join("stdout"));
    assert_eq!(std::fs::metadata(out.join("stderr")).unwrap().len(), 0);
    let d = descriptor(&out, "stdout");
    assert_eq!(d["stream_type"], "TEXT");
    assert_eq!(d["name"], "stdout");
    std::fs::remove_file(&src).unwrap();
    std::fs::remove_file(out.join("stdout")).unwrap();
}

#[test]
fn binary_file_is_copied_exactly() {
    let tmp = tempdir();
    let src = tmp.path().join("blob.bin");
    let mut rng = Rng::new(0xB1A27);
    let mut data = rng.bytes(3 << 20);
    // Make sure the bytes a text path would mangle are there, in runs and alone.
    data.extend_from_slice(b"\x00\x00\n\r\n\r\r\x00\n\n\x0D\x0A\x00");
    data.extend(rng.bytes((1 << 20) + 12345));
    data.extend_from_slice(b"\r");
    std::fs::write(&src, &data).unwrap();

    let out = cat_through_butler(tmp.path(), &src, &["--stdout", "name=stdout,type=binary"]);
    assert_same_file(&src, &out.join("stdout"));
    let d = descriptor(&out, "stdout");
    assert_eq!(d["stream_type"], "BINARY", "{d:#}");
    assert_eq!(d["content_type"], "application/octet-stream", "{d:#}");
    // stderr keeps its default type.
    assert_eq!(descriptor(&out, "stderr")["stream_type"], "TEXT");
}

#[test]
fn awkward_text_is_kept_byte_for_byte() {
    let tmp = tempdir();
    let src = tmp.path().join("awkward.txt");
    let mut data = Vec::new();
    data.extend_from_slice(b"windows line\r\nanother\r\n\r\n");
    data.extend_from_slice(b"progress 10%\r20%\r30%\r100%\n");
    data.extend_from_slice(b"lone cr at end of line\r");
    data.extend_from_slice(b"invalid utf-8: \xFF\xFE and truncated \xE2\x82\n");
    data.extend_from_slice(b"\xE2\x82\r\n\xF0\x9F\x98\n"); // truncated sequences before CRLF / LF
    data.extend_from_slice("valid: é € 😀\n".as_bytes());
    data.extend_from_slice(b"\n\n\x00nul in text\n");
    // A 5 MiB line with no newline at the end of the file.
    let mut rng = Rng::new(42);
    data.extend((0..5 << 20).map(|_| b'a' + (rng.below(26) as u8)));
    std::fs::write(&src, &data).unwrap();

    let out = cat_through_butler(tmp.path(), &src, &[]);
    assert_same_file(&src, &out.join("stdout"));
}

#[test]
fn both_streams_and_exit_status_with_echo() {
    let tmp = tempdir();
    let out = tmp.path().join("out");
    let r = run_butler(
        tmp.path(),
        &[
            "--output",
            &dir_output(&out),
            "run",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 7",
        ],
    );
    r.assert_code(7);
    assert_eq!(read(&out.join("stdout")), b"out\n");
    assert_eq!(read(&out.join("stderr")), b"err\n");
    assert!(
        r.stdout_str().contains("out\n"),
        "echoed stdout: {:?}",
        r.stdout_str()
    );
    assert!(
        r.stderr_str().contains("err\n"),
        "echoed stderr: {:?}",
        r.stderr_str()
    );
    assert!(!r.stdout_str().contains("err"), "stderr echoed to stdout");
}

#[test]
fn no_echo_keeps_the_butlers_own_streams_quiet() {
    let tmp = tempdir();
    let out = tmp.path().join("out");
    let r = run_butler(
        tmp.path(),
        &[
            "--output",
            &dir_output(&out),
            "--prefix",
            "quiet",
            "run",
            "--no-echo",
            "--",
            "sh",
            "-c",
            "echo out; echo the-err >&2; exit 3",
        ],
    );
    r.assert_code(3);
    assert_eq!(r.stdout_str(), "");
    assert!(!r.stderr_str().contains("the-err"), "{}", r.stderr_str());
    assert_eq!(read(&out.join("stdout")), b"out\n");
    assert_eq!(read(&out.join("stderr")), b"the-err\n");
}

#[test]
fn child_killed_by_sigkill_gives_137() {
    let tmp = tempdir();
    let out = tmp.path().join("out");
    let r = run_butler(
        tmp.path(),
        &[
            "--output",
            &dir_output(&out),
            "run",
            "--",
            "sh",
            "-c",
            "echo before; kill -9 $$",
        ],
    );
    r.assert_code(137);
    assert_eq!(read(&out.join("stdout")), b"before\n");
}

#[test]
fn silent_child_leaves_empty_streams_with_descriptors() {
    let tmp = tempdir();
    let out = tmp.path().join("out");
    let r = run_butler(
        tmp.path(),
        &["--output", &dir_output(&out), "run", "--", "true"],
    );
    r.assert_code(0);
    for name in ["stdout", "stderr"] {
        assert_eq!(read(&out.join(name)), b"", "{name}");
        let d = descriptor(&out, name);
        assert_eq!(d["name"], name);
        assert_eq!(d["stream_type"], "TEXT");
        assert_eq!(d["content_type"], "text/plain; charset=utf-8");
    }
}

#[test]
fn result_path_summarises_the_run() {
    let tmp = tempdir();
    let out = tmp.path().join("out");
    let src = tmp.path().join("in.txt");
    let size = write_text_file(&src, 3 << 20, 7);
    let result = tmp.path().join("result.json");
    let r = run_butler(
        tmp.path(),
        &[
            "--output",
            &dir_output(&out),
            "--project",
            "proj",
            "--prefix",
            "pre/fix",
            "run",
            "--no-echo",
            "--result-path",
            result.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "cat \"$1\"; printf abc >&2; exit 4",
            "sh",
            src.to_str().unwrap(),
        ],
    );
    r.assert_code(4);
    let v: Value = serde_json::from_slice(&read(&result)).expect("result is JSON");
    assert_eq!(
        v["command"],
        json!([
            "sh",
            "-c",
            "cat \"$1\"; printf abc >&2; exit 4",
            "sh",
            src.to_str().unwrap()
        ]),
        "{v:#}"
    );
    assert_eq!(v["exit_code"], 4, "{v:#}");
    assert_eq!(v["project"], "proj", "{v:#}");
    assert_eq!(v["prefix"], "pre/fix", "{v:#}");
    assert_eq!(v["streams"]["stdout"]["bytes_read"], size, "{v:#}");
    assert_eq!(
        v["streams"]["stdout"]["bytes_read"],
        std::fs::metadata(out.join("stdout")).unwrap().len(),
        "{v:#}"
    );
    assert_eq!(v["streams"]["stdout"]["bytes_dropped"], 0, "{v:#}");
    assert_eq!(v["streams"]["stderr"]["bytes_read"], 3, "{v:#}");
    assert_eq!(v["failed_bundles"], 0, "{v:#}");
    assert_same_file(&src, &out.join("stdout"));
}

#[test]
fn tags_names_and_content_types_reach_the_descriptors() {
    let tmp = tempdir();
    let out = tmp.path().join("out");
    let r = run_butler(
        tmp.path(),
        &[
            "--output",
            &dir_output(&out),
            "--tag",
            "a=b",
            "--tag",
            "flag=",
            "run",
            "--stdout",
            "name=out,tag=a=mine,tag=x=y,content-type=text/x-custom",
            "--stderr",
            "name=steps/compile/errors,type=binary",
            "--",
            "sh",
            "-c",
            "echo o; echo e >&2",
        ],
    );
    r.assert_code(0);
    assert_eq!(read(&stream_path(&out, "out")), b"o\n");
    assert_eq!(read(&stream_path(&out, "steps/compile/errors")), b"e\n");

    let d = descriptor(&out, "out");
    assert_eq!(d["name"], "out", "{d:#}");
    assert_eq!(d["content_type"], "text/x-custom", "{d:#}");
    assert_eq!(d["stream_type"], "TEXT", "{d:#}");
    assert_eq!(
        d["tags"],
        json!({"a": "mine", "x": "y", "flag": ""}),
        "{d:#}"
    );

    let d = descriptor(&out, "steps/compile/errors");
    assert_eq!(d["name"], "steps/compile/errors", "{d:#}");
    assert_eq!(d["stream_type"], "BINARY", "{d:#}");
    assert_eq!(d["content_type"], "application/octet-stream", "{d:#}");
    assert_eq!(d["tags"], json!({"a": "b", "flag": ""}), "{d:#}");

    // Nothing under the default names.
    assert!(!out.join("stdout").exists());
    assert!(!out.join("stderr").exists());
}

#[test]
fn chdir_runs_the_command_there() {
    let tmp = tempdir();
    let out = tmp.path().join("out");
    let work = tmp.path().join("work dir");
    std::fs::create_dir(&work).unwrap();
    let r = run_butler(
        tmp.path(),
        &[
            "--output",
            &dir_output(&out),
            "run",
            "--chdir",
            work.to_str().unwrap(),
            "--",
            "pwd",
        ],
    );
    r.assert_code(0);
    let want = format!("{}\n", std::fs::canonicalize(&work).unwrap().display());
    assert_eq!(String::from_utf8_lossy(&read(&out.join("stdout"))), want);
}

#[test]
fn forward_stdin_passes_stdin_through() {
    let tmp = tempdir();
    let out = tmp.path().join("out");
    let mut rng = Rng::new(99);
    let mut input = b"line one\nline two\r\n\xFF\xFE\n".to_vec();
    input.extend(rng.bytes(1 << 20));
    let r = run(
        &mut butler(
            tmp.path(),
            &[
                "--output",
                &dir_output(&out),
                "run",
                "--no-echo",
                "--forward-stdin",
                "--stdout",
                "name=stdout,type=binary",
                "--",
                "cat",
            ],
        ),
        Input::Bytes(input.clone()),
    );
    r.assert_code(0);
    let got = read(&out.join("stdout"));
    assert_eq!(got.len(), input.len());
    assert!(got == input, "stdin was not passed through byte for byte");
}

#[test]
fn without_forward_stdin_the_child_reads_eof() {
    let tmp = tempdir();
    let out = tmp.path().join("out");
    // The butler's stdin stays open (and empty) until the butler exits: a child reading it
    // would never finish.
    let r = run(
        &mut butler(
            tmp.path(),
            &[
                "--output",
                &dir_output(&out),
                "run",
                "--",
                "sh",
                "-c",
                "cat; echo eof",
            ],
        ),
        Input::HeldOpen,
    );
    r.assert_code(0);
    assert_eq!(read(&out.join("stdout")), b"eof\n");
}

#[test]
fn child_sees_the_bootstrap_environment() {
    let tmp = tempdir();
    let out = tmp.path().join("out");
    let r = run_butler(
        tmp.path(),
        &[
            "--output",
            &dir_output(&out),
            "--project",
            "my-proj",
            "--prefix",
            "some/prefix",
            "run",
            "--no-echo",
            "--",
            "sh",
            "-c",
            "env",
        ],
    );
    r.assert_code(0);
    let text = String::from_utf8(read(&out.join("stdout"))).unwrap();
    let vars: std::collections::BTreeMap<&str, &str> =
        text.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(
        vars.get("LOGDOG_STREAM_PROJECT"),
        Some(&"my-proj"),
        "{text}"
    );
    assert_eq!(
        vars.get("LOGDOG_STREAM_PREFIX"),
        Some(&"some/prefix"),
        "{text}"
    );
    let abs = std::fs::canonicalize(&out).unwrap();
    let host = format!("file://{}", abs.display());
    assert_eq!(
        vars.get("LOGDOG_COORDINATOR_HOST").copied(),
        Some(host.as_str()),
        "{text}"
    );
}

#[test]
fn child_sees_the_default_prefix_printed_at_start() {
    let tmp = tempdir();
    let out = tmp.path().join("out");
    let r = run_butler(
        tmp.path(),
        &[
            "--output",
            &dir_output(&out),
            "run",
            "--no-echo",
            "--",
            "sh",
            "-c",
            "echo \"$LOGDOG_STREAM_PROJECT/$LOGDOG_STREAM_PREFIX\"",
        ],
    );
    r.assert_code(0);
    let seen = String::from_utf8(read(&out.join("stdout"))).unwrap();
    let seen = seen.trim_end();
    assert!(seen.starts_with("default/butler/"), "{seen}");
    assert!(
        r.stderr_str().contains(&format!("{seen}/+/")),
        "prefix {seen} not announced: {}",
        r.stderr_str()
    );
}

/// Starts `run -- sh -c SCRIPT` (the script prints "ready" once its trap is set), waits until
/// the butler echoes "ready", sends SIGTERM to the butler, and returns the butler's exit code,
/// the rest of its stdout, its stderr, the output directory and the time from SIGTERM to exit.
fn terminate_after_ready(
    tmp: &Path,
    run_flags: &[&str],
    script: &str,
) -> (i32, String, String, std::path::PathBuf, std::time::Duration) {
    let out = tmp.join("out");
    let mut args = vec![
        "--output".to_string(),
        dir_output(&out),
        "--prefix".into(),
        "term".into(),
        "run".into(),
    ];
    args.extend(run_flags.iter().map(|s| s.to_string()));
    args.extend(["--".into(), "sh".into(), "-c".into(), script.into()]);
    let mut cmd = butler(tmp, &args);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut g = Guarded::spawn(&mut cmd);
    let err = drain(g.child.stderr.take().unwrap());
    let mut stdout = BufReader::new(g.child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        let n = stdout
            .read_line(&mut line)
            .expect("reading the butler's stdout");
        assert!(n > 0, "the butler's stdout ended before \"ready\"");
        if line == "ready\n" {
            break;
        }
    }
    let sent = Instant::now();
    kill(g.pid(), Signal::SIGTERM).expect("sending SIGTERM");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let status = g.wait();
    let elapsed = sent.elapsed();
    let stderr = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
    let code = status
        .code()
        .unwrap_or_else(|| panic!("butler killed by a signal: {status:?}; stderr:\n{stderr}"));
    (code, rest, stderr, out, elapsed)
}

#[test]
fn first_sigterm_is_forwarded_to_the_child() {
    let tmp = tempdir();
    let (code, rest, stderr, out, _) = terminate_after_ready(
        tmp.path(),
        &[],
        r#"trap "echo got-term; exit 5" TERM; echo ready; while :; do sleep 0.1; done"#,
    );
    assert_eq!(code, 5, "stderr:\n{stderr}");
    assert!(rest.contains("got-term"), "echoed after SIGTERM: {rest:?}");
    let text = String::from_utf8_lossy(&read(&out.join("stdout"))).into_owned();
    assert_eq!(text, "ready\ngot-term\n");
}

#[test]
fn child_ignoring_sigterm_is_killed_after_the_grace_period() {
    let tmp = tempdir();
    let (code, _, stderr, out, elapsed) = terminate_after_ready(
        tmp.path(),
        &["--grace-period", "1s"],
        r#"trap "" TERM; echo ready; while :; do sleep 0.1; done"#,
    );
    assert_eq!(code, 137, "stderr:\n{stderr}");
    assert!(
        elapsed >= std::time::Duration::from_millis(900),
        "killed after {elapsed:?}, before the 1s grace period"
    );
    assert_eq!(read(&out.join("stdout")), b"ready\n");
}

/// Appends `n` as an unsigned LEB128 varint.
fn put_uvarint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7F) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

#[test]
fn datagram_stream_keeps_the_framing() {
    let tmp = tempdir();
    let src = tmp.path().join("datagrams.bin");
    let mut rng = Rng::new(0xD47A);
    let mut data = Vec::new();
    // Empty datagrams, one- and two-byte varints, and one large enough to be fragmented.
    for size in [0, 1, 127, 128, 300, (3 << 20) + 7, 0, 65536] {
        put_uvarint(&mut data, size as u64);
        data.extend(rng.bytes(size));
    }
    std::fs::write(&src, &data).unwrap();
    let out = cat_through_butler(tmp.path(), &src, &["--stdout", "name=d,type=datagram"]);
    assert_same_file(&src, &out.join("d"));
    let d = descriptor(&out, "d");
    assert_eq!(d["stream_type"], "DATAGRAM", "{d:#}");
}
