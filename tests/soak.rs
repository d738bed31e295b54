//! The short soak: `bench/soak.py --check` for a few seconds against the butler and collector
//! built for the tests. Normal writers and hostile clients (silent and stalled handshakes, idle
//! and vanishing tail-server clients, slow viewer readers) run together; every normal stream
//! must arrive intact, and the descriptors, threads and RSS of both processes must come back
//! near their baseline once the load stops. Its CSV and plot land in
//! `$CARGO_TARGET_DIR/test-artifacts/soak` (default `target/test-artifacts/soak`).

mod common;

use std::process::Command;

use common::{Input, run};

#[test]
fn resources_come_back_after_normal_and_hostile_load() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let out = target.join("test-artifacts").join("soak");
    let mut cmd = Command::new("python3");
    cmd.arg(root.join("bench").join("soak.py"))
        .args(["--seconds", "5", "--quiet", "45", "--check"])
        .arg("--butler")
        .arg(env!("CARGO_BIN_EXE_logdog_butler"))
        .arg("--collector")
        .arg(env!("CARGO_BIN_EXE_logdog_collector"))
        .arg("--logdog")
        .arg(env!("CARGO_BIN_EXE_logdog"))
        .arg("--out")
        .arg(&out);
    let r = run(&mut cmd, Input::Null);
    assert_eq!(
        r.code(),
        0,
        "bench/soak.py --check failed:\n{}\n{}",
        r.stdout_str(),
        r.stderr_str()
    );
    assert!(out.join("soak.csv").is_file() && out.join("soak.svg").is_file());
}
