//! Prefix owners in the store: the first bundle with a secret registers its prefix, durably;
//! later bundles need that secret, and nothing of a refused bundle is stored; a prefix written
//! without a secret cannot be claimed; of two first bundles with different secrets racing for
//! a new prefix exactly one is stored; an open collector (no tokens) still stores bundles
//! without a secret; a store of layout 3 is upgraded in place.

use std::sync::{Arc, Barrier};

use logdog_collector::Store;
use logdog_collector::store::{Claim, NotOwner, WriteOutcome};
use logdog_collector::validate::CheckedEntry;

mod common;
use common::checked;

const A: &[u8; 36] = b"secret-of-butler-a-0123456789abcdef!";
const B: &[u8; 36] = b"secret-of-butler-b-0123456789abcdef!";

fn claim(secret: Option<&[u8]>, required: bool) -> Claim<'_> {
    Claim { secret, required }
}

fn write(
    store: &Store,
    prefix: &str,
    c: Claim<'_>,
    streams: &[CheckedEntry],
) -> Result<WriteOutcome, NotOwner> {
    store
        .write_claimed("proj", prefix, &c, streams)
        .expect("no store failure")
}

fn lines(store: &Store, prefix: &str, name: &str) -> Vec<String> {
    common::lines_of(store, &common::key_in(prefix, name))
}

#[test]
fn the_first_secret_registers_the_prefix_and_only_it_writes_there_after() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let out = write(
        &store,
        "run",
        claim(Some(A), true),
        &[checked("s", 0, &["one"], None)],
    )
    .expect("the first secret registers");
    assert!(out.registered);
    assert_eq!(out.stored, 1);
    assert!(store.prefix_registered("proj", "run").unwrap());

    // The owner goes on.
    let out = write(
        &store,
        "run",
        claim(Some(A), true),
        &[checked("s", 1, &["two"], None)],
    )
    .expect("the owner");
    assert!(!out.registered);
    assert_eq!(out.stored, 1);

    // Another secret, or none (with auth on or off), is refused whole: not the entries it
    // pre-writes, not a terminal index, not another descriptor, not a new stream.
    let attacks = [
        checked("s", 2, &["forged"], None),
        checked("s", 2, &[""; 0], Some(1)),
        checked("new", 0, &["x"], Some(0)),
    ];
    for c in [
        claim(Some(B), true),
        claim(None, true),
        claim(None, false),
        claim(Some(B), false),
    ] {
        for a in &attacks {
            let e = write(&store, "run", c, std::slice::from_ref(a)).unwrap_err();
            assert!(e.0.contains("owned by another butler"), "{e}");
            assert!(e.0.contains("proj/run"), "{e}");
        }
    }
    // The plain write (no secret) is refused as well.
    let e = store
        .write("proj", "run", &[checked("s", 2, &["forged"], None)])
        .unwrap_err();
    assert!(e.to_string().contains("owned by another butler"), "{e}");

    // Nothing of them was stored: the owner's next lines are new, not duplicates.
    let out = write(
        &store,
        "run",
        claim(Some(A), true),
        &[checked("s", 2, &["three"], Some(2))],
    )
    .unwrap();
    assert_eq!((out.stored, out.duplicates), (1, 0));
    assert!(out.refused.is_empty(), "{out:?}");
    assert_eq!(lines(&store, "run", "s"), ["one", "two", "three"]);
    assert!(store.list("proj", "run").unwrap().len() == 1);
}

#[test]
fn registrations_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        write(
            &store,
            "run",
            claim(Some(A), true),
            &[checked("s", 0, &["one"], None)],
        )
        .unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert!(store.prefix_registered("proj", "run").unwrap());
    write(
        &store,
        "run",
        claim(Some(B), true),
        &[checked("s", 1, &["x"], None)],
    )
    .unwrap_err();
    write(
        &store,
        "run",
        claim(None, false),
        &[checked("s", 1, &["x"], None)],
    )
    .unwrap_err();
    write(
        &store,
        "run",
        claim(Some(A), true),
        &[checked("s", 1, &["two"], None)],
    )
    .unwrap();
    assert_eq!(lines(&store, "run", "s"), ["one", "two"]);
}

#[test]
fn without_tokens_a_bundle_without_a_secret_is_stored_and_the_prefix_stays_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let out = write(
        &store,
        "old",
        claim(None, false),
        &[checked("s", 0, &["one"], None)],
    )
    .expect("auth off, no secret");
    assert!(!out.registered);
    assert!(!store.prefix_registered("proj", "old").unwrap());
    // The plain write is the same.
    store
        .write("proj", "old", &[checked("s", 1, &["two"], None)])
        .unwrap();
    assert_eq!(lines(&store, "old", "s"), ["one", "two"]);

    // Streams written without a secret: the prefix cannot be claimed later.
    let e = write(
        &store,
        "old",
        claim(Some(A), false),
        &[checked("s", 2, &["x"], None)],
    )
    .unwrap_err();
    assert!(e.0.contains("cannot be claimed later"), "{e}");
    assert!(!store.prefix_registered("proj", "old").unwrap());
    assert_eq!(lines(&store, "old", "s"), ["one", "two"]);
}

#[test]
fn with_tokens_a_bundle_without_a_secret_is_refused_for_an_unregistered_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let e = write(
        &store,
        "run",
        claim(None, true),
        &[checked("s", 0, &["x"], None)],
    )
    .unwrap_err();
    assert!(e.0.contains("must carry a prefix secret"), "{e}");
    assert!(store.list("proj", "").unwrap().is_empty());
    assert!(!store.prefix_registered("proj", "run").unwrap());
    // The same prefix is still free for its butler.
    write(
        &store,
        "run",
        claim(Some(A), true),
        &[checked("s", 0, &["one"], None)],
    )
    .unwrap();
    // Registration is per project and exact prefix.
    write(
        &store,
        "run/sub",
        claim(Some(B), true),
        &[checked("s", 0, &["b"], None)],
    )
    .unwrap();
    store
        .write_claimed(
            "other",
            "run",
            &claim(Some(B), true),
            &[checked("s", 0, &["b"], None)],
        )
        .unwrap()
        .unwrap();
}

#[test]
fn of_two_first_bundles_with_different_secrets_exactly_one_is_stored() {
    for round in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let barrier = Arc::new(Barrier::new(2));
        let racers: Vec<_> = [(A, "a"), (B, "b")]
            .into_iter()
            .map(|(secret, who)| {
                let (store, barrier) = (store.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let r = store
                        .write_claimed(
                            "proj",
                            "run",
                            &claim(Some(secret), true),
                            &[checked("s", 0, &[who], Some(0))],
                        )
                        .expect("no store failure");
                    (who, r)
                })
            })
            .collect();
        let results: Vec<_> = racers.into_iter().map(|t| t.join().unwrap()).collect();
        let won: Vec<_> = results.iter().filter(|(_, r)| r.is_ok()).collect();
        assert_eq!(won.len(), 1, "round {round}: {results:?}");
        let winner = won[0].0;
        assert_eq!(lines(&store, "run", "s"), [winner], "round {round}");
        let loser = results.iter().find(|(_, r)| r.is_err()).unwrap();
        assert!(
            loser
                .1
                .as_ref()
                .unwrap_err()
                .0
                .contains("owned by another butler"),
            "{results:?}"
        );
    }
}

#[test]
fn a_huge_bundle_is_checked_before_its_first_part_and_registers_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let n = logdog_collector::store::PART_ENTRIES + 10;
    let text: Vec<String> = (0..n).map(|i| format!("l{i}")).collect();
    let refs: Vec<&str> = text.iter().map(String::as_str).collect();
    let big = [checked("s", 0, &refs, None)];
    write(
        &store,
        "run",
        claim(Some(A), true),
        &[checked("t", 0, &["a"], None)],
    )
    .unwrap();
    write(&store, "run", claim(Some(B), true), &big).unwrap_err();
    assert!(lines(&store, "run", "s").is_empty());
    let out = write(&store, "run", claim(Some(A), true), &big).unwrap();
    assert_eq!(out.stored as usize, n);
    assert!(!out.registered);

    let out = write(&store, "big", claim(Some(B), true), &big).unwrap();
    assert!(out.registered);
    assert_eq!(out.stored as usize, n);
}

#[test]
fn a_layout_3_store_is_upgraded_and_its_prefixes_cannot_be_claimed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        store
            .write("proj", "old", &[checked("s", 0, &["one"], None)])
            .unwrap();
    }
    {
        // Back to layout 3: no prefixes table.
        let conn = rusqlite::Connection::open(dir.path().join("collector.sqlite")).unwrap();
        conn.execute_batch("DROP TABLE prefixes; PRAGMA user_version = 3;")
            .unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(lines(&store, "old", "s"), ["one"]);
    let e = write(
        &store,
        "old",
        claim(Some(A), true),
        &[checked("s", 1, &["x"], None)],
    )
    .unwrap_err();
    assert!(e.0.contains("cannot be claimed later"), "{e}");
    write(
        &store,
        "new",
        claim(Some(A), true),
        &[checked("s", 0, &["one"], None)],
    )
    .unwrap();
    drop(store);
    let conn = rusqlite::Connection::open(dir.path().join("collector.sqlite")).unwrap();
    let v: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v, 6);
    // `verify` still reads the store.
    drop(conn);
    let report = logdog_collector::verify::verify(dir.path()).unwrap();
    assert_eq!(report.damaged, 0);
}
