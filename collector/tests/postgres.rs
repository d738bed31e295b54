//! The PostgreSQL store on a real server, with two `Store`s on one database standing for two
//! collectors: the schema created and refused when newer, one bundle given to both stored
//! once, interleaved bundles of one stream, conflicts and prefix owners across collectors,
//! concurrent writers, change notifications, compressed blocks with their checksums, and
//! retention.
//!
//! Needs `LOGDOG_TEST_POSTGRES` (a superuser URL; `scripts/pg-test-server start DIR` prints
//! one): without it every test prints SKIPPED, and fails under `CI`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use logdog_collector::Store;
use logdog_collector::store::{Claim, NotOwner, StoreError};
use logdog_collector::validate::RefusalKind;
use postgres::{Client, NoTls};

mod common;
use common::{checked, lines_of};

/// A fresh database on the test server, or `None` (after a loud SKIPPED) without one.
fn database(hint: &str) -> Option<String> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let Ok(admin) = std::env::var("LOGDOG_TEST_POSTGRES") else {
        let msg = "SKIPPED: PostgreSQL store test: set LOGDOG_TEST_POSTGRES to a superuser URL \
                   (scripts/pg-test-server start DIR prints one)";
        assert!(std::env::var_os("CI").is_none(), "{msg}; required under CI");
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "{msg}");
        return None;
    };
    let name = format!(
        "c_{hint}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let mut c = Client::connect(&admin, NoTls).expect("connect to LOGDOG_TEST_POSTGRES");
    c.batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
        .expect("drop a stale test database");
    c.batch_execute(&format!("CREATE DATABASE {name}"))
        .expect("create a test database");
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    Some(format!("{base}/{name}"))
}

fn sql(url: &str) -> Client {
    Client::connect(url, NoTls).expect("connect")
}

fn numbered(from: u64, n: u64) -> Vec<String> {
    (from..from + n)
        .map(|i| format!("{i:06} the build step printed a line of ordinary log text"))
        .collect()
}

fn open(url: &str) -> Store {
    Store::open_postgres(url).expect("open the PostgreSQL store")
}

#[test]
fn the_schema_is_created_once_and_a_newer_one_is_refused() {
    let Some(url) = database("schema") else {
        return;
    };
    // Two collectors starting together create the schema once.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| Store::open_postgres(&url));
        let b = s.spawn(|| Store::open_postgres(&url));
        (a.join().expect("a"), b.join().expect("b"))
    });
    a.expect("first");
    b.expect("second");
    let version: i32 = sql(&url)
        .query_one("SELECT version FROM logdog_schema", &[])
        .expect("version")
        .get(0);
    assert_eq!(version, logdog_collector::store::postgres::SCHEMA_VERSION);
    open(&url);
    sql(&url)
        .execute("UPDATE logdog_schema SET version = 99", &[])
        .expect("bump");
    let err = Store::open_postgres(&url).expect_err("a newer schema is refused");
    assert!(err.to_string().contains("schema version 99"), "{err}");
    let err = Store::open_postgres("postgres://nobody@127.0.0.1:1/none").expect_err("no server");
    assert!(err.to_string().contains("cannot connect"), "{err}");
}

#[test]
fn two_collectors_store_one_bundle_once_and_share_a_stream() {
    let Some(url) = database("dedup") else {
        return;
    };
    let (a, b) = (open(&url), open(&url));
    let k = common::key_in("run1", "stdout");
    // The same bundle through both: stored once.
    let first = checked("stdout", 0, &numbered(0, 100), None);
    let out = a
        .write("proj", "run1", std::slice::from_ref(&first))
        .expect("a");
    assert_eq!(out.stored, 100);
    let out = b
        .write("proj", "run1", std::slice::from_ref(&first))
        .expect("b");
    assert_eq!((out.stored, out.duplicates), (0, 100));
    // Interleaved bundles of one stream, out of order, through either.
    let late = checked("stdout", 200, &numbered(200, 50), Some(249));
    let out = b.write("proj", "run1", &[late]).expect("b late");
    assert_eq!(out.stored, 50);
    let info = a.stream(&k).expect("read").expect("there");
    assert_eq!(info.state.contiguous, 100);
    assert!(!info.state.complete);
    let gap = checked("stdout", 100, &numbered(100, 100), None);
    a.write("proj", "run1", &[gap]).expect("a gap");
    for store in [&a, &b] {
        let info = store.stream(&k).expect("read").expect("there");
        assert_eq!(info.state.contiguous, 250);
        assert!(info.state.complete);
        assert_eq!(info.state.entry_count, 250);
        assert_eq!(lines_of(store, &k), numbered(0, 250));
    }
    // A conflict through the other collector is refused, and changes nothing.
    let mut other = numbered(10, 1);
    other[0].push_str(" but different");
    let out = b
        .write("proj", "run1", &[checked("stdout", 10, &other, None)])
        .expect("b conflict");
    assert_eq!(out.refused.len(), 1);
    assert_eq!(out.refused[0].kind, RefusalKind::Conflict);
    assert_eq!(lines_of(&a, &k), numbered(0, 250));
    // Both list and read the same.
    assert_eq!(
        a.list("proj", "").expect("a"),
        b.list("proj", "").expect("b")
    );
    assert_eq!(
        a.last_entries(&k, 3).expect("a"),
        b.last_entries(&k, 3).expect("b")
    );
    assert_eq!(b.projects().expect("projects"), vec!["proj".to_string()]);
}

#[test]
fn concurrent_writers_on_two_collectors_store_every_entry_once() {
    let Some(url) = database("race") else {
        return;
    };
    let (a, b) = (open(&url), open(&url));
    let lines = numbered(0, 2000);
    // Both collectors get every bundle (a butler retrying on the other), in parallel.
    std::thread::scope(|s| {
        for store in [&a, &b] {
            let lines = &lines;
            s.spawn(move || {
                for (n, chunk) in lines.chunks(100).enumerate() {
                    let from = (n * 100) as u64;
                    let e = checked("stdout", from, chunk, None);
                    store.write("proj", "race", &[e]).expect("write");
                }
            });
        }
    });
    let k = common::key_in("race", "stdout");
    assert_eq!(lines_of(&a, &k), lines);
    let rows: i64 = sql(&url)
        .query_one("SELECT count(*) FROM entries", &[])
        .expect("count")
        .get(0);
    assert_eq!(rows, 2000);
    assert_eq!(
        a.stream(&k).expect("a").expect("there").state.contiguous,
        2000
    );
}

#[test]
fn prefix_owners_hold_across_collectors() {
    let Some(url) = database("owners") else {
        return;
    };
    let (a, b) = (open(&url), open(&url));
    let claim = |secret: &'static [u8]| Claim {
        secret: Some(secret),
        required: true,
    };
    let e = checked("stdout", 0, &numbered(0, 1), None);
    let out = a
        .write_claimed(
            "proj",
            "owned",
            &claim(b"secret-one"),
            std::slice::from_ref(&e),
        )
        .expect("a")
        .expect("registered");
    assert!(out.registered);
    assert!(b.prefix_registered("proj", "owned").expect("b"));
    let refused = b
        .write_claimed(
            "proj",
            "owned",
            &claim(b"secret-two"),
            std::slice::from_ref(&e),
        )
        .expect("b");
    assert!(matches!(refused, Err(NotOwner(m)) if m.contains("owned by another butler")));
    let next = checked("stdout", 1, &numbered(1, 1), None);
    b.write_claimed("proj", "owned", &claim(b"secret-one"), &[next])
        .expect("b")
        .expect("the owner writes through either collector");
    // Of two first bundles with different secrets at once, exactly one is stored.
    let results: Vec<_> = std::thread::scope(|s| {
        let h: Vec<_> = [(&a, b"first-a".as_slice()), (&b, b"first-b".as_slice())]
            .into_iter()
            .map(|(store, secret)| {
                let e = checked("stdout", 0, &numbered(0, 1), None);
                s.spawn(move || {
                    store
                        .write_claimed("proj", "race", &claim(secret), &[e])
                        .expect("write")
                })
            })
            .collect();
        h.into_iter().map(|h| h.join().expect("join")).collect()
    });
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
}

#[test]
fn writes_through_one_collector_wake_the_other() {
    let Some(url) = database("notify") else {
        return;
    };
    let (a, b) = (open(&url), open(&url));
    let (tx, rx) = mpsc::channel();
    b.follow_changes(move |keys| {
        let _ = tx.send(keys);
    });
    // Its own writes are not echoed back to it; a's are, by stream.
    let k = common::key_in("live", "stdout");
    // The listener may still be connecting: write until the first change arrives.
    let mut got = None;
    for i in 0..50u64 {
        a.write(
            "proj",
            "live",
            &[checked("stdout", i, &numbered(i, 1), None)],
        )
        .expect("write");
        if let Ok(keys) = rx.recv_timeout(Duration::from_millis(200)) {
            got = Some(keys);
            break;
        }
    }
    assert_eq!(got.expect("a change within 10 s"), vec![k.clone()]);
    b.write(
        "proj",
        "live",
        &[checked("stdout", 100, &numbered(100, 1), None)],
    )
    .expect("b");
    a.write(
        "proj",
        "live",
        &[checked("stdout", 101, &numbered(101, 1), None)],
    )
    .expect("a");
    let next = rx.recv_timeout(Duration::from_secs(30)).expect("a's write");
    assert_eq!(next, vec![k]);
    assert!(rx.try_recv().is_err(), "b's own write is not echoed back");
}

#[test]
fn entries_are_stored_in_compressed_blocks_whose_damage_is_found() {
    let Some(url) = database("blocks") else {
        return;
    };
    let a = open(&url);
    let lines = numbered(0, 5000);
    for (n, chunk) in lines.chunks(1000).enumerate() {
        let e = checked("stdout", (n * 1000) as u64, chunk, None);
        a.write("proj", "z", &[e]).expect("write");
    }
    let k = common::key_in("z", "stdout");
    assert_eq!(lines_of(&a, &k), lines);
    // Any index reads alone.
    let one = a.entries(&k, 3456, 1, 1).expect("read");
    assert_eq!(one[0].stream_index, 3456);
    let mut c = sql(&url);
    let row = c
        .query_one("SELECT sum(length(data)), sum(raw_len) FROM blocks", &[])
        .expect("sizes");
    let (stored, raw): (i64, i64) = (row.get(0), row.get(1));
    assert!(
        stored * 4 <= raw,
        "log text is stored compressed: {stored} bytes for {raw}"
    );
    // Damage to the stored bytes of a block is found (by a new collector: no cache).
    c.execute(
        "UPDATE blocks SET data = set_byte(data, 20, get_byte(data, 20) # 1)
         WHERE id = (SELECT block_id FROM entries WHERE idx = 3456)",
        &[],
    )
    .expect("damage");
    let err = open(&url)
        .entries(&k, 3456, 1, 1)
        .expect_err("damage is not served");
    assert!(
        matches!(&err, StoreError::Damaged(m) if m.contains("proj/z/+/stdout") && m.contains("checksum")),
        "{err}"
    );
}

#[test]
fn retention_removes_old_streams_but_not_followed_ones_on_any_collector() {
    let Some(url) = database("retain") else {
        return;
    };
    let (a, b) = (open(&url), open(&url));
    for prefix in ["old1", "old2", "watched"] {
        let e = checked("stdout", 0, &numbered(0, 300), Some(299));
        a.write("proj", prefix, &[e]).expect("write");
    }
    let watched = common::key_in("watched", "stdout");
    let lease = Duration::from_secs(600);
    // b's followers are on `watched`: b publishes it.
    assert!(
        b.remove_older(
            Duration::from_secs(3600),
            std::slice::from_ref(&watched),
            lease
        )
        .expect("b")
        .is_empty()
    );
    std::thread::sleep(Duration::from_millis(5)); // let the clock pass the last write
    let fresh = checked("stdout", 0, &numbered(0, 1), None);
    let removed = a.remove_older(Duration::ZERO, &[], lease).expect("a");
    let mut removed: Vec<String> = removed.iter().map(|k| k.prefix.clone()).collect();
    removed.sort();
    assert_eq!(removed, vec!["old1", "old2"]);
    assert!(
        a.stream(&common::key_in("old1", "stdout"))
            .expect("read")
            .is_none()
    );
    assert_eq!(lines_of(&a, &watched), numbered(0, 300));
    let mut c = sql(&url);
    let left: i64 = c
        .query_one(
            "SELECT count(*) FROM blocks b JOIN streams s ON s.id = b.stream_id",
            &[],
        )
        .expect("count")
        .get(0);
    let all: i64 = c
        .query_one("SELECT count(*) FROM blocks", &[])
        .expect("count")
        .get(0);
    assert_eq!(left, all, "no block outlives its stream");
    // A stream written again is not old.
    a.write("proj", "new", &[fresh]).expect("write");
    let removed = a
        .remove_older(Duration::from_secs(3600), &[], lease)
        .expect("a");
    assert!(removed.is_empty());
}
