//! The bench scripts find the binaries under `CARGO_TARGET_DIR` when it is set (three of them
//! crashed on it once): each one's `--dry-run` names the target directory it would use.

mod common;

use std::path::PathBuf;
use std::process::Command;

#[test]
fn every_bench_script_honours_cargo_target_dir() {
    let bench = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench");
    if Command::new("python3").arg("--version").output().is_err() {
        if std::env::var_os("CI").is_some() {
            panic!("python3 is needed for the bench scripts' test");
        }
        common::skipped("bench scripts' test: python3 is not on PATH");
        return;
    }
    let tmp = common::tempdir();
    let target = tmp.path().join("elsewhere");
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(&bench)
        .unwrap_or_else(|e| panic!("{}: {e}", bench.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "py"))
        .filter(|p| p.file_name().is_some_and(|n| n != "cargo_paths.py"))
        .collect();
    scripts.sort();
    assert!(scripts.len() >= 8, "{scripts:?}");
    for script in &scripts {
        let out = Command::new("python3")
            .arg(script)
            .arg("--dry-run")
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: {}\n{stdout}{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(&format!("target directory: {}", target.display())),
            "{}: {stdout}",
            script.display()
        );
    }
}
