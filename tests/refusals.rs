//! What the real collector refuses is never `ok` in the butler's summary: a second butler
//! writing under a prefix that another butler owns (registered with that butler's prefix
//! secret) has every stream refused, and shows each as `LOST (…another butler…)` in its summary
//! and result file, with and without a spool, while the owner's streams stay as they were.
//! (Per-stream refusals inside one owner's bundles, such as conflicts, are covered against the
//! real collector by `tests/store_integrity.rs` and in the gRPC output by
//! `outputs/tests/grpc_refusals.rs`.)

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

/// `run`s `script` with stdout as stream `shared` and stderr as `own`, under prefix `same`;
/// returns how it ended and its result JSON.
fn run_shared(d: &Path, collector: &Collector, extra: &[&str], tag: &str) -> (Finished, Value) {
    let result = d.join(format!("{tag}.json"));
    let output = collector.output();
    let own = format!("name=own-{tag}");
    let mut args = vec!["--output", output.as_str(), "--prefix", "same"];
    args.extend(extra);
    let script = format!("echo {tag} writes this line; echo {tag} on its own stream >&2; exit 5");
    args.extend([
        "run",
        "--no-echo",
        "--stdout",
        "name=shared",
        "--stderr",
        own.as_str(),
        "--result-path",
        result.to_str().expect("utf-8 path"),
        "--",
        "sh",
        "-c",
        script.as_str(),
    ]);
    let r = run_butler(d, &args);
    let v = serde_json::from_slice(&read(&result)).expect("result JSON");
    (r, v)
}

/// The summary row of `name`.
fn row(err: &str, name: &str) -> String {
    err.lines()
        .find(|l| l.trim_start().starts_with(name))
        .unwrap_or_else(|| panic!("no row for {name}:\n{err}"))
        .to_string()
}

#[test]
fn a_butler_on_a_prefix_another_butler_owns_loses_its_streams_with_the_reason() {
    let tmp = tempdir();
    let d = tmp.path();
    let collector = Collector::start(&d.join("data"), "127.0.0.1:0");
    let (r, v) = run_shared(d, &collector, &[], "first");
    r.assert_code(5);
    assert!(
        r.stderr_str().contains("nothing lost"),
        "{}",
        r.stderr_str()
    );
    assert_eq!(v["totals"]["bytes_lost"], 0, "{v:#}");

    let spool = d.join("spool");
    let spool_flags = ["--spool", spool.to_str().expect("utf-8 path")];
    for (tag, extra) in [("second", &[][..]), ("third", &spool_flags[..])] {
        let (r, v) = run_shared(d, &collector, extra, tag);
        // The command's exit status is its own, whatever the collector did.
        r.assert_code(5);
        let err = r.stderr_str();
        for name in ["shared".to_string(), format!("own-{tag}")] {
            let row = row(&err, &name);
            assert!(row.contains("LOST ("), "{tag} {name}:\n{err}");
            assert!(row.contains("another butler"), "{tag} {name}:\n{err}");
            assert!(!row.contains("IN SPOOL"), "{tag} {name}:\n{err}");
            let lost = &v["acknowledged"][&name];
            assert!(
                lost["lost"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("another butler"),
                "{tag}: {v:#}"
            );
            assert!(lost["lost_bytes"].as_u64() > Some(0), "{tag}: {v:#}");
        }
        // Both, and the butler's run record (the prefix is another butler's).
        assert!(err.contains("3 stream(s) LOST data"), "{tag}:\n{err}");
        assert_eq!(v["totals"]["streams_with_losses"], 3, "{tag}: {v:#}");
        // Nothing of the refused bundles is stored.
        let c = logdog(
            &collector.addr,
            &["cat", &format!("default/same/+/own-{tag}")],
        );
        assert_ne!(c.code(), 0, "{tag}: {}", c.stdout_str());
    }
    // `stream` fails naming the refused stream, instead of exiting 0.
    let file = d.join("other.txt");
    std::fs::write(&file, b"other bytes\n").expect("write file");
    let r = run_butler(
        d,
        &[
            "--output",
            &collector.output(),
            "--prefix",
            "same",
            "stream",
            "--source",
            file.to_str().expect("utf-8 path"),
            "--stream",
            "name=shared",
        ],
    );
    r.assert_code(250);
    let err = r.stderr_str();
    assert!(err.contains("same/+/shared: LOST"), "{err}");
    assert!(err.contains("another butler"), "{err}");
    // The stored streams are the first butler's, unaltered.
    for (name, text) in [
        ("shared", "first writes this line\n"),
        ("own-first", "first on its own stream\n"),
    ] {
        let c = logdog(&collector.addr, &["cat", &format!("default/same/+/{name}")]);
        c.assert_code(0);
        assert_eq!(c.stdout_str(), text);
    }
    collector.stop();
}
