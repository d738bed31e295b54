//! Retention on the embedded store: `Store::remove_older` removes the streams last written
//! before the cut-off with their index rows and blocks, gives their space back (a segment that
//! holds nothing any more is deleted), keeps followed streams and streams written since, and
//! leaves the rest readable.

use std::path::Path;
use std::time::{Duration, Instant};

use logdog_collector::Store;
use logdog_collector::validate::CheckedEntry;

mod common;
use common::{key, released, segment_bytes};

/// Text that does not compress (so that the segments fill), the same for the same seed.
fn noise(seed: u64, len: usize) -> String {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'!' + (x % 90) as u8)
        })
        .collect()
}

fn line(name: &str, idx: u64) -> String {
    let seed = idx + 1000 * name.bytes().map(u64::from).sum::<u64>();
    format!("{name} {idx} {}", noise(seed, 2000))
}

/// Entries `from..to` of stream `name`, one line each.
fn checked(name: &str, from: u64, to: u64) -> CheckedEntry {
    let lines: Vec<String> = (from..to).map(|i| line(name, i)).collect();
    common::checked(name, from, &lines, None)
}

/// Writes entries `0..n` of `name`, a few per write.
fn write(store: &Store, name: &str, n: u64) {
    for from in (0..n).step_by(4) {
        let out = store
            .write("proj", "pre", &[checked(name, from, (from + 4).min(n))])
            .expect("write");
        assert!(out.refused.is_empty(), "{out:?}");
    }
}

/// Checks that `name` holds exactly its entries `0..n`.
fn intact(store: &Store, name: &str, n: u64) {
    let want: Vec<String> = (0..n).map(|i| line(name, i)).collect();
    assert!(
        common::lines_of(store, &key(name)) == want,
        "{name} differs"
    );
}

fn segment_files(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir.join("segments"))
        .expect("segments dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

#[test]
fn old_streams_are_removed_with_their_space_and_followed_or_fresh_ones_stay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_with_segment_size(dir.path(), 16 * 1024).expect("open");
    // "old" fills segments of its own, then "followed" others.
    write(&store, "old", 40);
    write(&store, "followed", 12);
    let old_segments = segment_files(dir.path());
    assert!(old_segments.len() >= 4, "{old_segments:?}");
    // A moment passes between the old writes and the cut-off, and between the cut-off and
    // the fresh write (time must advance, nothing is waited for).
    std::thread::sleep(Duration::from_millis(20));
    let cutoff = Instant::now();
    std::thread::sleep(Duration::from_millis(20));
    write(&store, "fresh", 8);
    let before = store.disk_bytes();
    let segment_bytes_before = segment_bytes(dir.path());

    let removed = store
        .remove_older(
            cutoff.elapsed(),
            &[key("followed")],
            Duration::from_secs(60),
        )
        .expect("remove");
    assert_eq!(removed, [key("old")]);
    assert_eq!(
        released(dir.path()),
        0,
        "every range given up was punched out"
    );
    assert!(store.stream(&key("old")).expect("stream").is_none());
    assert!(
        store
            .entries(&key("old"), 0, usize::MAX, usize::MAX)
            .expect("read")
            .is_empty()
    );
    // The segments only "old" used are gone, and the space with them.
    let now = segment_files(dir.path());
    assert!(
        now.len() < old_segments.len(),
        "{old_segments:?} -> {now:?}"
    );
    assert!(!now.contains(&old_segments[0]), "{now:?}");
    let after = store.disk_bytes();
    assert!(after < before, "disk bytes {before} -> {after}");
    // "old" held 40 entries of 2000 characters that compress little.
    let freed = segment_bytes_before - segment_bytes(dir.path());
    assert!(freed >= 40 * 1000, "{freed} bytes of segments freed");
    // The others are intact, and stay so after reopening.
    intact(&store, "followed", 12);
    intact(&store, "fresh", 8);
    drop(store);
    let report = logdog_collector::verify::verify(dir.path()).expect("verify");
    assert_eq!((report.streams, report.damaged), (2, 0), "{report:?}");
    let store = Store::open_with_segment_size(dir.path(), 16 * 1024).expect("reopen");
    intact(&store, "followed", 12);
    intact(&store, "fresh", 8);
    // Nothing else is old enough now.
    let removed = store
        .remove_older(Duration::from_secs(3600), &[], Duration::from_secs(60))
        .expect("remove");
    assert!(removed.is_empty(), "{removed:?}");
    // Writing goes on after a removal.
    store
        .write("proj", "pre", &[checked("fresh", 8, 10)])
        .expect("write");
    intact(&store, "fresh", 10);
}
