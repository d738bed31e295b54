//! Compression of the butler's bundles (`--grpc-compression`), end to end against a real
//! `logdog_collector`: zstd and gzip (from the flag and from LOGDOG_GRPC_COMPRESSION) store
//! every byte, and the collector takes them compressed (the butler logs a fallback to
//! uncompressed, which must not happen here); an unknown value is a usage error.
//!
//! What goes on the wire, `auto` and the fallback for a collector that refuses compressed
//! requests are tested against scripted collectors in `outputs/tests/grpc_several.rs`.

mod common;

use common::{Collector, Input, butler, logdog, run, run_butler, tempdir};

/// `line 000000\n` to `line {to-1}\n`, as `seq -f 'line %06g'` writes them.
fn lines(to: u64) -> Vec<u8> {
    (0..to)
        .flat_map(|i| format!("line {i:06}\n").into_bytes())
        .collect()
}

#[test]
fn compressed_bundles_are_stored_whole() {
    let tmp = tempdir();
    let d = tmp.path();
    let c = Collector::start(&d.join("data"), "127.0.0.1:0");
    for (how, args, env) in [
        ("zstd", vec!["--grpc-compression", "zstd"], None),
        ("gzip", vec!["--grpc-compression", "gzip"], None),
        ("env-gzip", vec![], Some("gzip")),
        ("off", vec!["--grpc-compression", "off"], None),
    ] {
        let prefix = format!("compression/{how}");
        let mut all: Vec<String> = vec![
            "--output".into(),
            c.output(),
            "--prefix".into(),
            prefix.clone(),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        all.extend(
            [
                "run",
                "--no-echo",
                "--",
                "sh",
                "-c",
                "seq -f 'line %06g' 0 99999",
            ]
            .map(String::from),
        );
        let mut cmd = butler(d, &all);
        if let Some(v) = env {
            cmd.env("LOGDOG_GRPC_COMPRESSION", v);
        }
        let r = run(&mut cmd, Input::Null);
        r.assert_code(0);
        assert!(
            !r.stderr_str().contains("LOST"),
            "{how}: {}",
            r.stderr_str()
        );
        let got = logdog(&c.addr, &["cat", &format!("default/{prefix}/+/stdout")]);
        got.assert_code(0);
        assert!(got.stdout == lines(100_000), "{how}: the stream differs");
    }
    c.stop();
}

#[test]
fn an_unknown_compression_is_a_usage_error() {
    let tmp = tempdir();
    let r = run_butler(
        tmp.path(),
        &[
            "--output",
            "grpc://127.0.0.1:1",
            "--grpc-compression",
            "lz4",
            "run",
            "--",
            "true",
        ],
    );
    r.assert_code(2);
    let err = r.stderr_str();
    assert!(
        err.contains("unknown compression \"lz4\": expected auto, off, gzip or zstd"),
        "{err}"
    );
}
