//! Streams the real collector refuses one by one (`WriteBundleResponse.refused`): a second
//! butler writing other bytes under a stream name already stored is a conflict. The butler
//! shows that stream, and only that one, as `LOST (conflict: …)` in its summary and result
//! file, with and without a spool; never `ok`.

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
fn a_stream_the_collector_refuses_as_a_conflict_is_lost_alone_with_the_reason() {
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
        let shared = row(&err, "shared");
        assert!(shared.contains("LOST (conflict: "), "{tag}:\n{err}");
        assert!(!shared.contains("IN SPOOL"), "{tag}:\n{err}");
        assert!(
            row(&err, &format!("own-{tag}")).ends_with("ok"),
            "{tag}:\n{err}"
        );
        assert!(err.contains("1 stream(s) LOST data"), "{tag}:\n{err}");
        let lost = &v["acknowledged"]["shared"];
        assert!(
            lost["lost"]
                .as_str()
                .unwrap_or_default()
                .starts_with("conflict:"),
            "{tag}: {v:#}"
        );
        assert!(lost["lost_bytes"].as_u64() > Some(0), "{tag}: {v:#}");
        assert_eq!(v["totals"]["streams_with_losses"], 1, "{tag}: {v:#}");
        assert_eq!(
            v["acknowledged"][format!("own-{tag}")]["lost_bytes"],
            0,
            "{tag}: {v:#}"
        );
        // The other stream of the same bundles is stored.
        let c = logdog(
            &collector.addr,
            &["cat", &format!("default/same/+/own-{tag}")],
        );
        c.assert_code(0);
        assert_eq!(c.stdout_str(), format!("{tag} on its own stream\n"));
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
    assert!(err.contains("(conflict: "), "{err}");
    // The stored stream is the first butler's, unaltered.
    let c = logdog(&collector.addr, &["cat", "default/same/+/shared"]);
    c.assert_code(0);
    assert_eq!(c.stdout_str(), "first writes this line\n");
    collector.stop();
}
