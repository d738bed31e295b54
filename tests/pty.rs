//! End-to-end tests of `run --pty`: the command runs on a pseudo-terminal, and what it writes
//! there (colours, `\r` progress) is captured as one text stream.

mod common;

use common::{Input, butler, descriptor, dir_output, read, run, run_butler, tempdir};

/// `--output directory:OUT run --no-echo --pty FLAGS -- sh -c SCRIPT`; returns the butler's
/// result and OUT.
fn on_pty(
    tmp: &std::path::Path,
    flags: &[&str],
    script: &str,
    input: Option<&[u8]>,
) -> (common::Finished, std::path::PathBuf) {
    let out = tmp.join("out");
    let mut args: Vec<String> = vec![
        "--output".into(),
        dir_output(&out),
        "run".into(),
        "--no-echo".into(),
        "--pty".into(),
    ];
    args.extend(flags.iter().map(|s| s.to_string()));
    args.extend(["--".into(), "sh".into(), "-c".into(), script.into()]);
    let r = match input {
        None => run_butler(tmp, &args),
        Some(data) => run(&mut butler(tmp, &args), Input::Bytes(data.to_vec())),
    };
    (r, out)
}

#[test]
fn the_command_sees_a_terminal_and_its_colours_and_progress_are_kept() {
    let tmp = tempdir();
    let script = r#"
        test -t 1 && echo stdout-is-a-tty
        test -t 2 && echo stderr-is-a-tty >&2
        test -t 0 || echo stdin-is-not
        stty size < /dev/tty
        printf '\033[31mred\033[0m\n'
        printf '10%%\r50%%\r100%%\n'
        exit 3"#;
    let (r, out) = on_pty(tmp.path(), &["--pty-size", "123x45"], script, None);
    r.assert_code(3);
    assert!(r.stdout.is_empty(), "--no-echo: {}", r.stdout_str());
    // One stream, in the order written; newlines are not turned into \r\n.
    assert_eq!(
        String::from_utf8_lossy(&read(&out.join("stdout"))),
        "stdout-is-a-tty\nstderr-is-a-tty\nstdin-is-not\n45 123\n\x1b[31mred\x1b[0m\n\
         10%\r50%\r100%\n"
    );
    assert!(
        !out.join("stderr").exists(),
        "with --pty there is no stderr stream"
    );
    assert_eq!(descriptor(&out, "stdout")["stream_type"], "TEXT");
}

#[test]
fn without_a_terminal_of_its_own_the_butler_gives_200x50() {
    let tmp = tempdir();
    // The test runs the butler on pipes: no terminal size to copy.
    let (r, out) = on_pty(tmp.path(), &[], "stty size < /dev/tty", None);
    r.assert_code(0);
    assert_eq!(read(&out.join("stdout")), b"50 200\n");
}

#[test]
fn stdin_is_forwarded_to_the_terminal_and_ends_with_end_of_file() {
    let tmp = tempdir();
    // `cat` ends only when it reads end of file: the butler's stdin has ended, so the butler
    // sends the terminal's end-of-file character.
    let script = r#"test -t 0 && echo stdin-is-a-tty; read a; echo "got:$a"; cat; echo done"#;
    let (r, out) = on_pty(
        tmp.path(),
        &["--forward-stdin"],
        script,
        Some(b"hello\nworld\nno newline"),
    );
    r.assert_code(0);
    let text = String::from_utf8_lossy(&read(&out.join("stdout"))).into_owned();
    assert!(text.contains("stdin-is-a-tty\n"), "{text:?}");
    assert!(text.contains("got:hello\n"), "{text:?}");
    // The terminal echoes the input; `cat` writes it back.
    assert!(text.matches("world").count() >= 2, "{text:?}");
    assert!(text.matches("no newline").count() >= 2, "{text:?}");
    assert!(text.ends_with("done\n"), "{text:?}");
}

#[test]
fn a_bad_pty_size_is_a_usage_error() {
    let tmp = tempdir();
    let r = run_butler(
        tmp.path(),
        &["run", "--pty", "--pty-size", "80", "--", "true"],
    );
    r.assert_code(2);
    assert!(r.stderr_str().contains("COLSxROWS"), "{}", r.stderr_str());
    // --pty-size means nothing without --pty.
    let r = run_butler(tmp.path(), &["run", "--pty-size", "80x24", "--", "true"]);
    r.assert_code(2);
}
