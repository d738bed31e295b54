//! `Store::check_writable`: a fresh store is writable and leaves only its heartbeat row
//! behind; a store whose data directory is gone is not, with the reason; the answer is reused
//! for `WRITABLE_CHECK_TTL` and the store is writable again once its directory is back.

use std::time::{Duration, Instant};

use logdog_collector::Store;
use logdog_collector::store::WRITABLE_CHECK_TTL;

#[test]
fn check_writable_follows_the_data_directory_and_caches_its_answer() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = Store::open(&data).unwrap();
    assert_eq!(store.check_writable(), Ok(()));
    // The test file is removed; the heartbeat row is written.
    let names: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains("writable")), "{names:?}");
    let db = rusqlite::Connection::open(data.join("collector.sqlite")).unwrap();
    let at: i64 = db
        .query_row("SELECT at FROM heartbeat WHERE one = 1", [], |r| r.get(0))
        .unwrap();
    assert!(at > 1_700_000_000, "{at}");
    drop(db);

    // Past the answer's life, a check sees the directory gone.
    std::thread::sleep(WRITABLE_CHECK_TTL);
    let moved = dir.path().join("moved");
    std::fs::rename(&data, &moved).unwrap();
    let failed_at = Instant::now();
    let err = store.check_writable().expect_err("the directory is gone");
    assert!(
        err.0.contains("cannot take a file") && err.0.contains(&data.display().to_string()),
        "{err}"
    );
    std::fs::rename(&moved, &data).unwrap();
    // Reused within its life (this machine may be slow: only while it surely is).
    if failed_at.elapsed() < WRITABLE_CHECK_TTL / 2 {
        assert_eq!(store.check_writable(), Err(err));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.check_writable().is_err() {
        assert!(Instant::now() < deadline, "still not writable");
        std::thread::sleep(Duration::from_millis(50));
    }
}
