//! `--output` given more than once: every bundle goes to each output, and the summary and
//! `--result-path` report each of them.

mod common;

use common::*;
use serde_json::Value;

/// A child writing 300 KiB of text on stdout and some lines on stderr.
fn child_script(input: &std::path::Path) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        r#"cat "$1"; i=0; while [ $i -lt 200 ]; do echo "err $i" >&2; i=$((i+1)); done"#.into(),
        "sh".into(),
        input.display().to_string(),
    ]
}

fn stderr_expected() -> Vec<u8> {
    (0..200)
        .map(|i| format!("err {i}\n"))
        .collect::<String>()
        .into_bytes()
}

#[test]
fn a_collector_and_a_directory_both_get_every_byte_and_are_reported_each() {
    let tmp = tempdir();
    let collector = Collector::start(&tmp.path().join("data"), "127.0.0.1:0");
    let out = tmp.path().join("out");
    let input = tmp.path().join("in.txt");
    write_text_file(&input, 300 << 10, 0x5e7e);
    let result = tmp.path().join("result.json");
    let grpc = format!("grpc://{}", collector.addr);
    let mut args: Vec<String> = vec![
        "--prefix".into(),
        "several/1".into(),
        // The collector is reported first whatever the order given.
        "--output".into(),
        dir_output(&out),
        "--output".into(),
        grpc.clone(),
        "run".into(),
        // Byte counts of the command's streams alone.
        "--no-run-record".into(),
        "--no-echo".into(),
        "--result-path".into(),
        result.display().to_string(),
        "--".into(),
    ];
    args.extend(child_script(&input));
    let r = run(&mut butler(tmp.path(), &args), Input::Null);
    r.assert_code(0);
    let err = r.stderr_str();

    // Every byte, in both places.
    for (name, want) in [("stdout", read(&input)), ("stderr", stderr_expected())] {
        assert_eq!(read(&stream_path(&out, name)), want, "directory: {name}");
        let got = logdog(
            &collector.addr,
            &["cat", &format!("default/several/1/+/{name}")],
        );
        got.assert_code(0);
        assert_eq!(got.stdout, want, "collector: {name}");
    }

    // The summary: the destination names both, and one row per output.
    assert!(
        err.contains(&format!("via {} and {grpc}", dir_output(&out))),
        "{err}"
    );
    assert!(err.contains("nothing lost"), "{err}");
    let rows: Vec<&str> = err
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("output "))
        .collect();
    assert_eq!(rows.len(), 3, "a header and two outputs: {err}");
    assert!(
        rows[1].contains(&grpc) && rows[1].contains("acknowledged"),
        "{err}"
    );
    assert!(
        rows[1].ends_with(" ok") && rows[2].ends_with(" ok"),
        "{err}"
    );
    assert!(rows[2].contains(&dir_output(&out)), "{err}");

    // The result file: `outputs` holds both, `output` the collector's counters.
    let doc: Value = serde_json::from_slice(&read(&result)).unwrap();
    let outputs = doc["outputs"].as_array().expect("an outputs array");
    assert_eq!(outputs.len(), 2, "{doc}");
    assert_eq!(outputs[0]["output"], grpc.as_str());
    assert_eq!(outputs[1]["output"], dir_output(&out).as_str());
    let payload = (read(&input).len() + stderr_expected().len()) as u64;
    for o in outputs {
        assert_eq!(o["delivery"], "acknowledged", "{o}");
        assert_eq!(o["sent_bytes"].as_u64(), Some(payload), "{o}");
        assert_eq!(o["failed_bundles"].as_u64(), Some(0), "{o}");
    }
    assert_eq!(doc["output"]["sent_bytes"].as_u64(), Some(payload));
}

#[test]
fn a_single_output_is_reported_as_before() {
    let tmp = tempdir();
    let out = tmp.path().join("out");
    let result = tmp.path().join("result.json");
    let r = run(
        &mut butler(
            tmp.path(),
            &[
                "--output",
                &dir_output(&out),
                "run",
                "--no-run-record",
                "--result-path",
                result.to_str().unwrap(),
                "--",
                "echo",
                "hi",
            ],
        ),
        Input::Null,
    );
    r.assert_code(0);
    assert!(!r.stderr_str().contains("delivery"), "{}", r.stderr_str());
    let doc: Value = serde_json::from_slice(&read(&result)).unwrap();
    assert!(doc.get("outputs").is_none(), "{doc}");
    assert_eq!(doc["output"]["sent_bytes"].as_u64(), Some(3));
}

#[test]
fn outputs_that_cannot_go_together_are_usage_errors() {
    let tmp = tempdir();
    let d = dir_output(&tmp.path().join("out"));
    let spool = tmp.path().join("spool");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--output", &d, "--output", &d, "run", "--", "true"],
            "is given twice",
        ),
        (
            vec![
                "--output",
                "grpc://127.0.0.1:1",
                "--output",
                "grpc://127.0.0.1:2",
                "run",
                "--",
                "true",
            ],
            "one collector output at a time",
        ),
        (
            vec![
                "--spool",
                spool.to_str().unwrap(),
                "--output",
                &d,
                "--output",
                "null",
                "run",
                "--",
                "true",
            ],
            "--spool is for the collector output",
        ),
        (
            vec![
                "--spool",
                spool.to_str().unwrap(),
                "--output",
                "grpc://127.0.0.1:1",
                "--output",
                &d,
                "resume",
            ],
            "expected one --output grpc://",
        ),
    ];
    for (args, want) in cases {
        let r = run(&mut butler(tmp.path(), &args), Input::Null);
        r.assert_code(2);
        assert!(
            r.stderr_str().contains(want),
            "{args:?}: {}",
            r.stderr_str()
        );
    }
}

#[test]
fn a_best_effort_output_that_cannot_deliver_never_holds_the_command_and_its_drops_are_reported() {
    let tmp = tempdir();
    let collector = Collector::start(&tmp.path().join("data"), "127.0.0.1:0");
    let input = tmp.path().join("in.txt");
    write_text_file(&input, 200 << 10, 0xbe57);
    let result = tmp.path().join("result.json");
    let grpc = format!("grpc://{}", collector.addr);
    // Nothing listens there: every datagram after the first is refused by the kernel.
    let gelf = format!("gelf+udp://127.0.0.1:{}", free_udp_port());
    let mut args: Vec<String> = vec![
        "--prefix".into(),
        "several/2".into(),
        "--output".into(),
        gelf.clone(),
        "--output".into(),
        grpc.clone(),
        "run".into(),
        // Byte counts of the command's streams alone.
        "--no-run-record".into(),
        "--no-echo".into(),
        "--result-path".into(),
        result.display().to_string(),
        "--".into(),
    ];
    args.extend(child_script(&input));
    let r = run(&mut butler(tmp.path(), &args), Input::Null);
    r.assert_code(0);
    let err = r.stderr_str();
    for (name, want) in [("stdout", read(&input)), ("stderr", stderr_expected())] {
        let got = logdog(
            &collector.addr,
            &["cat", &format!("default/several/2/+/{name}")],
        );
        got.assert_code(0);
        assert_eq!(got.stdout, want, "collector: {name}");
    }
    assert!(
        err.contains("nothing lost"),
        "the collector has everything: {err}"
    );
    let row = err
        .lines()
        .find(|l| l.trim_start().starts_with(&gelf))
        .unwrap_or_else(|| panic!("a row for {gelf}: {err}"));
    assert!(row.contains("best effort"), "{err}");

    let doc: Value = serde_json::from_slice(&read(&result)).unwrap();
    let outputs = doc["outputs"].as_array().expect("an outputs array");
    assert_eq!(outputs[0]["output"], grpc.as_str(), "the collector first");
    let g = &outputs[1];
    assert_eq!(g["output"], gelf.as_str());
    assert_eq!(g["delivery"], "best_effort");
    // Whatever could not be sent is counted, and the row says so.
    let failed = g["failed_bytes"].as_u64().unwrap();
    if failed > 0 {
        assert!(row.contains("DROPPED"), "{row}");
    }
    assert_eq!(outputs[0]["failed_bytes"].as_u64(), Some(0));
}

/// A UDP port nothing listens on (bound, then released).
fn free_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().port()
}
