//! Blocks compressed after the write: the embedded store acknowledges a write with its larger
//! blocks stored raw and compresses them in the background (`store::embedded::compactor`).
//! Every entry reads back the same before, during and after; the disk ends up holding the
//! compressed bytes only; blocks left raw by a collector that stopped are compressed after the
//! next start; past its ceiling, writes compress their blocks themselves; retention takes the
//! waiting blocks off the list.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use logdog_collector::Store;
use logdog_collector::store::embedded::EmbeddedOptions;
use logdog_collector::validate::CheckedEntry;

mod common;
use common::{key, released, segment_bytes};

/// Entries per write: about 200 KiB, so each write makes one block that waits.
const PER_WRITE: u64 = 128;

/// Generous: the compactor runs at the lowest CPU priority on a busy machine.
const SETTLE: Duration = Duration::from_secs(120);

/// A build-log-like line of about 1.5 KiB, the same for the same stream and index.
fn line(name: &str, idx: u64) -> String {
    const WORDS: [&str; 8] = [
        "compiling",
        "crate",
        "warning:",
        "error[E0308]",
        "src/main.rs:12:5",
        "ok",
        "test",
        "result:",
    ];
    let mut x = (idx + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ name.len() as u64;
    let mut s = format!("{name} {idx}");
    while s.len() < 1500 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push(' ');
        s.push_str(WORDS[(x % 8) as usize]);
    }
    s
}

/// Entries `from..to` of stream `name`, one line each.
fn checked(name: &str, from: u64, to: u64) -> CheckedEntry {
    let lines: Vec<String> = (from..to).map(|i| line(name, i)).collect();
    common::checked(name, from, &lines, None)
}

/// Writes entries `0..n` of `name`, [`PER_WRITE`] per write; the bytes of log written.
fn write(store: &Store, name: &str, n: u64) -> u64 {
    let mut bytes = 0;
    for from in (0..n).step_by(PER_WRITE as usize) {
        let out = store
            .write(
                "proj",
                "pre",
                &[checked(name, from, (from + PER_WRITE).min(n))],
            )
            .expect("write");
        assert!(out.refused.is_empty(), "{out:?}");
        bytes += out.bytes;
    }
    bytes
}

/// Checks that `name` holds exactly its entries `0..n`.
fn intact(store: &Store, name: &str, n: u64) {
    let want: Vec<String> = (0..n).map(|i| line(name, i)).collect();
    assert!(
        common::lines_of(store, &key(name)) == want,
        "{name} differs"
    );
}

/// Blocks by codec (0 raw, 1 zstd) and the blocks listed as waiting, from the index.
fn blocks(dir: &Path) -> (u64, u64, u64) {
    let conn = rusqlite::Connection::open_with_flags(
        dir.join("collector.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("index");
    let count =
        |sql: &str| -> u64 { conn.query_row(sql, [], |r| r.get::<_, i64>(0)).expect(sql) as u64 };
    (
        count("SELECT COUNT(*) FROM blocks WHERE codec = 0"),
        count("SELECT COUNT(*) FROM blocks WHERE codec = 1"),
        count("SELECT COUNT(*) FROM raw_blocks"),
    )
}

fn options(compact: bool) -> EmbeddedOptions {
    EmbeddedOptions {
        compact,
        ..EmbeddedOptions::default()
    }
}

#[test]
fn writes_are_stored_raw_then_compressed_and_read_back_the_same_throughout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = 64 * PER_WRITE;
    // Without the compactor first: what the writes leave behind is known.
    let store = Store::open_embedded(dir.path(), options(false)).expect("open");
    let bytes = write(&store, "s", n);
    let (raw, zstd, listed) = blocks(dir.path());
    assert_eq!(
        (raw, zstd, listed),
        (64, 0, 64),
        "every write left one block raw"
    );
    assert!(
        store.deferred_bytes() >= bytes,
        "{}",
        store.deferred_bytes()
    );
    assert!(segment_bytes(dir.path()) >= bytes);
    intact(&store, "s", n);
    drop(store);

    // Reopened with the compactor; readers read all along.
    let store = Store::open(dir.path()).expect("reopen");
    let done = AtomicBool::new(false);
    let rounds = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while !done.load(Ordering::Relaxed) {
                    intact(&store, "s", n);
                    rounds.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let settled = store.settle(SETTLE);
        done.store(true, Ordering::Relaxed);
        assert!(settled, "the blocks were not compressed within {SETTLE:?}");
    });
    assert!(rounds.load(Ordering::Relaxed) >= 2);
    assert_eq!(store.deferred_bytes(), 0);
    assert_eq!(blocks(dir.path()), (0, 64, 0));
    assert_eq!(
        released(dir.path()),
        0,
        "every place given up was punched out"
    );
    intact(&store, "s", n);
    let on_disk = segment_bytes(dir.path());
    assert!(
        on_disk * 4 <= bytes,
        "{on_disk} bytes of segments for {bytes} bytes of log"
    );
    drop(store);
    let report = logdog_collector::verify::verify(dir.path()).expect("verify");
    assert_eq!((report.entries, report.damaged), (n, 0), "{report:?}");
}

#[test]
fn writes_while_the_compactor_runs_are_compressed_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let mut bytes = 0;
    for name in ["a", "b", "c"] {
        bytes += write(&store, name, 16 * PER_WRITE);
    }
    assert!(store.settle(SETTLE), "not compressed within {SETTLE:?}");
    let (raw, zstd, listed) = blocks(dir.path());
    assert_eq!((raw, listed), (0, 0));
    assert_eq!(zstd, 48);
    for name in ["a", "b", "c"] {
        intact(&store, name, 16 * PER_WRITE);
    }
    assert!(segment_bytes(dir.path()) * 4 <= bytes);
}

#[test]
fn past_its_ceiling_a_write_compresses_its_blocks_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_embedded(
        dir.path(),
        EmbeddedOptions {
            max_deferred_bytes: 1 << 20,
            ..options(false)
        },
    )
    .expect("open");
    write(&store, "s", 32 * PER_WRITE);
    let (raw, zstd, listed) = blocks(dir.path());
    // Writes of about 200 KiB each leave their block raw until 1 MiB waits.
    assert_eq!(raw, listed);
    assert!((5..=6).contains(&listed), "{listed} blocks wait");
    assert_eq!(raw + zstd, 32);
    let waiting = store.deferred_bytes();
    assert!(
        ((1 << 20)..(1 << 20) + (256 << 10)).contains(&waiting),
        "{waiting}"
    );
    intact(&store, "s", 32 * PER_WRITE);
}

#[test]
fn blocks_left_raw_are_compressed_after_a_restart_and_retention_takes_them_off_the_list() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_embedded(dir.path(), options(false)).expect("open");
    write(&store, "kept", 8 * PER_WRITE);
    write(&store, "old", 8 * PER_WRITE);
    // Retention removes "old" (the cut-off is now), with its waiting blocks.
    let cutoff = std::time::Instant::now();
    std::thread::sleep(Duration::from_millis(20));
    write(&store, "kept", 9 * PER_WRITE);
    let removed = store
        .remove_older(cutoff.elapsed(), &[key("kept")], Duration::from_secs(60))
        .expect("remove");
    assert_eq!(removed, [key("old")]);
    let (raw, zstd, listed) = blocks(dir.path());
    assert_eq!((raw, zstd, listed), (9, 0, 9));
    drop(store);

    let store = Store::open(dir.path()).expect("reopen");
    assert!(store.settle(SETTLE), "not compressed within {SETTLE:?}");
    assert_eq!(blocks(dir.path()), (0, 9, 0));
    intact(&store, "kept", 9 * PER_WRITE);
}

#[test]
fn space_given_up_just_before_a_stop_is_given_back_at_the_next_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = 16 * PER_WRITE;
    // The compactor moves every block but nothing is punched out, as if the collector had
    // stopped between each round's commit and its punching.
    let store = Store::open_embedded(
        dir.path(),
        EmbeddedOptions {
            punch: false,
            ..EmbeddedOptions::default()
        },
    )
    .expect("open");
    let bytes = write(&store, "s", n);
    assert!(store.settle(SETTLE), "not compressed within {SETTLE:?}");
    assert_eq!(blocks(dir.path()), (0, 16, 0));
    assert!(segment_bytes(dir.path()) > bytes, "nothing was punched out");
    drop(store);
    assert_eq!(released(dir.path()), 16);

    let store = Store::open(dir.path()).expect("reopen");
    assert_eq!(released(dir.path()), 0);
    let on_disk = segment_bytes(dir.path());
    assert!(
        on_disk * 4 <= bytes,
        "{on_disk} bytes of segments for {bytes}"
    );
    intact(&store, "s", n);
}
