//! A real PostgreSQL server for the tests of the collector's PostgreSQL store.
//!
//! The server is named by `LOGDOG_TEST_POSTGRES`, a superuser URL such as
//! `postgres://logdog@127.0.0.1:PORT/postgres` (what `scripts/pg-test-server start DIR` prints;
//! `.ci/run` starts one). Every test gets a fresh database of its own on it, made with `psql`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use super::{Input, run, skipped};

/// The variable naming the test server.
pub const VAR: &str = "LOGDOG_TEST_POSTGRES";

/// The URL of a fresh, empty database on the test server, named after `hint` (sanitised, made
/// unique with the process id, a counter and the time). When `LOGDOG_TEST_POSTGRES` is unset,
/// says loudly that the test is skipped and returns `None`; under CI (the `CI` variable set),
/// fails the test instead.
#[track_caller]
pub fn database(hint: &str) -> Option<String> {
    let Some(server) = std::env::var_os(VAR).filter(|v| !v.is_empty()) else {
        let msg = format!(
            "{hint}: needs a PostgreSQL server: set {VAR} to a superuser URL (`scripts/pg-test-server \
             start DIR` starts one and prints it)"
        );
        assert!(
            std::env::var_os("CI").is_none(),
            "{msg} (CI is set: failing)"
        );
        skipped(&msg);
        return None;
    };
    let server = server
        .into_string()
        .unwrap_or_else(|v| panic!("{VAR} is not UTF-8: {v:?}"));
    let name = database_name(hint);
    psql(&server, &format!("CREATE DATABASE {name}"));
    Some(with_database(&server, &name))
}

/// A database name from `hint`: lowercase letters, digits and `_`, then the process id, a
/// per-process counter and the time in seconds, within PostgreSQL's 63 bytes.
fn database_name(hint: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let mut base: String = hint
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(24)
        .collect();
    if base.is_empty() {
        base.push_str("test");
    }
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("t_{base}_{}_{n}_{secs}", std::process::id())
}

/// `url` with its database (the path after the host) replaced by `name`; a query string stays.
pub fn with_database(url: &str, name: &str) -> String {
    let (main, query) = match url.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (url, None),
    };
    let scheme_end = main.find("://").map_or(0, |i| i + 3);
    let authority_end = main[scheme_end..]
        .find('/')
        .map_or(main.len(), |i| scheme_end + i);
    let mut out = format!("{}/{name}", &main[..authority_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// The `psql` client: on PATH, or the newest under `/usr/lib/postgresql/*/bin`.
pub fn psql_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("psql");
            if p.is_file() {
                return p;
            }
        }
    }
    let mut found: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e
                .file_name()
                .to_string_lossy()
                .split('.')
                .map(|p| p.parse::<u32>().ok())
                .collect::<Option<Vec<u32>>>()?;
            let p = e.path().join("bin/psql");
            p.is_file().then_some((version, p))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, p)) => p,
        None => panic!(
            "psql is neither on PATH nor under /usr/lib/postgresql/*/bin (apt-get install \
             postgresql-client)"
        ),
    }
}

/// Runs `sql` with `psql` on the database at `url` (stopping at the first error, which fails
/// the test) and returns what it printed, unaligned and without headers: one line per row,
/// columns separated by `|`.
#[track_caller]
pub fn psql(url: &str, sql: &str) -> String {
    let mut cmd = Command::new(psql_binary());
    cmd.args([
        "-X",
        "-q",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        url,
        "-c",
        sql,
    ])
    .env("PGCONNECT_TIMEOUT", "30");
    let out = run(&mut cmd, Input::Null);
    assert!(
        out.status.success(),
        "psql -d {url} -c {sql:?}: {}\n{}",
        out.status,
        out.stderr_str()
    );
    out.stdout_str()
}
