//! The store on real files: entries written once to segment files, read back after reopening,
//! retries not appended twice, leftovers of an uncommitted write ignored, segment rotation,
//! and a clear refusal of an older layout; conflicts refused stream by stream, checksums
//! checked on every read, one collector per directory, damage found at open.

use std::path::Path;

use logdog_collector::Store;
use logdog_collector::store::StoreError;
use logdog_collector::validate::RefusalKind;
use prost::Message;

mod common;
use common::{checked, desc, entry, key};

/// The lines stored for `name`.
fn lines_of(store: &Store, name: &str) -> Vec<String> {
    common::lines_of(store, &key(name))
}

fn segment_files(dir: &Path) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = std::fs::read_dir(dir.join("segments"))
        .expect("segments dir")
        .map(|e| {
            let e = e.expect("entry");
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().expect("metadata").len(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn entries_survive_reopening_and_retries_are_not_appended_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = Store::open(dir.path()).expect("open");
        let out = store
            .write("proj", "pre", &[checked("a", 0, &["one", "two"], None)])
            .expect("write");
        assert_eq!((out.stored, out.duplicates), (2, 0));
        let size = segment_files(dir.path());
        // A retry of the same bundle stores nothing and appends nothing.
        let out = store
            .write("proj", "pre", &[checked("a", 0, &["one", "two"], None)])
            .expect("retry");
        assert_eq!((out.stored, out.duplicates), (0, 2));
        assert_eq!(segment_files(dir.path()), size);
    }
    let store = Store::open(dir.path()).expect("reopen");
    store
        .write("proj", "pre", &[checked("a", 2, &["three"], Some(2))])
        .expect("write after reopen");
    assert_eq!(lines_of(&store, "a"), ["one", "two", "three"]);
    let info = store.stream(&key("a")).expect("stream").expect("known");
    assert!(info.state.complete);
    assert_eq!(info.state.entry_count, 3);
    let last = store.last_entries(&key("a"), 2).expect("tail");
    assert_eq!(
        last.iter().map(|e| e.stream_index).collect::<Vec<_>>(),
        [1, 2]
    );
}

#[test]
fn bytes_of_an_uncommitted_write_are_ignored_and_overwritten() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = Store::open(dir.path()).expect("open");
        store
            .write("proj", "pre", &[checked("a", 0, &["kept"], None)])
            .expect("write");
    }
    // A crash between the segment append and the index commit leaves bytes nobody points at.
    let (name, len) = segment_files(dir.path()).remove(0);
    let path = dir.path().join("segments").join(&name);
    let mut data = std::fs::read(&path).expect("read segment");
    data.extend_from_slice(&[0xff; 4096]);
    std::fs::write(&path, &data).expect("write garbage");

    let store = Store::open(dir.path()).expect("reopen");
    store
        .write("proj", "pre", &[checked("a", 1, &["after"], Some(1))])
        .expect("write");
    store
        .write("proj", "pre", &[checked("b", 0, &["other"], Some(0))])
        .expect("write b");
    assert_eq!(lines_of(&store, "a"), ["kept", "after"]);
    assert_eq!(lines_of(&store, "b"), ["other"]);
    // The new entries went where the garbage was, right after the committed end.
    let (_, now) = segment_files(dir.path()).remove(0);
    assert_eq!(now, len + 4096);
}

#[test]
fn a_full_segment_is_followed_by_a_new_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Text that does not compress, so that the segments fill.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let line: String = (0..300)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'!' + (x % 90) as u8)
        })
        .collect();
    {
        let store = Store::open_with_segment_size(dir.path(), 1024).expect("open");
        for i in 0..20u64 {
            store
                .write("proj", "pre", &[checked("a", i, &[line.as_str()], None)])
                .expect("write");
        }
    }
    let files = segment_files(dir.path());
    assert!(files.len() >= 4, "expected several segments: {files:?}");
    let store = Store::open_with_segment_size(dir.path(), 1024).expect("reopen");
    store
        .write("proj", "pre", &[checked("a", 20, &["end"], Some(20))])
        .expect("write");
    let got = lines_of(&store, "a");
    assert_eq!(got.len(), 21);
    assert!(got[..20].iter().all(|l| *l == line));
    assert_eq!(got[20], "end");
}

#[test]
fn a_conflicting_write_appends_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    store
        .write("proj", "pre", &[checked("a", 0, &["one"], Some(0))])
        .expect("write");
    let before = segment_files(dir.path());
    // One bundle: a's part contradicts what is stored, b's is fine. Only a is refused.
    let out = store
        .write(
            "proj",
            "pre",
            &[
                checked("a", 1, &["past the end"], None),
                checked("b", 0, &["fine"], Some(0)),
            ],
        )
        .expect("write");
    assert_eq!(out.stored, 1);
    assert_eq!(out.refused.len(), 1, "{out:?}");
    assert_eq!(out.refused[0].name, "a");
    assert_eq!(out.refused[0].kind, RefusalKind::Conflict);
    assert!(
        out.refused[0]
            .message
            .contains("past the stored terminal index"),
        "{out:?}"
    );
    assert_eq!(lines_of(&store, "a"), ["one"]);
    assert_eq!(lines_of(&store, "b"), ["fine"]);
    // Only b's entry was appended.
    let after = segment_files(dir.path());
    assert_eq!(after[0].1, before[0].1 + entry(0, "fine").1.len() as u64);
}

#[test]
fn a_data_directory_of_the_older_layout_is_refused_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conn = rusqlite::Connection::open(dir.path().join("collector.sqlite")).expect("sqlite");
    conn.execute_batch(
        "CREATE TABLE entries (stream_id INTEGER, idx INTEGER, data BLOB, UNIQUE (stream_id, idx));",
    )
    .expect("old schema");
    drop(conn);
    let err = Store::open(dir.path()).expect_err("older layout");
    assert!(
        err.to_string().contains("another collector version"),
        "{err}"
    );
}

#[test]
fn different_bytes_at_a_stored_index_are_a_conflict_and_identical_ones_a_duplicate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    store
        .write("proj", "pre", &[checked("a", 0, &["one", "two"], None)])
        .expect("write");
    // A byte-identical retry: a silent duplicate.
    let out = store
        .write("proj", "pre", &[checked("a", 0, &["one", "two"], None)])
        .expect("retry");
    assert_eq!((out.stored, out.duplicates), (0, 2));
    assert!(out.refused.is_empty());
    // Other text at index 1, in a bundle that also carries a new entry: all of a is refused.
    let out = store
        .write("proj", "pre", &[checked("a", 1, &["TWO", "three"], None)])
        .expect("write");
    assert_eq!((out.stored, out.duplicates), (0, 0));
    assert_eq!(out.refused.len(), 1);
    assert_eq!(out.refused[0].kind, RefusalKind::Conflict);
    assert_eq!(out.refused[0].entries, 2);
    assert!(
        out.refused[0].message.contains("entry 1 differs"),
        "{out:?}"
    );
    assert_eq!(lines_of(&store, "a"), ["one", "two"]);
    // Another descriptor for the same stream.
    let mut other = checked("a", 2, &["three"], None);
    other.desc.content_type = "text/x-other".to_string();
    let out = store.write("proj", "pre", &[other]).expect("write");
    assert_eq!(out.refused.len(), 1);
    assert!(
        out.refused[0].message.contains("descriptor differs"),
        "{out:?}"
    );
    // Another terminal index than the stored one.
    store
        .write("proj", "pre", &[checked("a", 2, &["three"], Some(2))])
        .expect("end");
    let out = store
        .write("proj", "pre", &[checked("a", 3, &[""; 0], Some(3))])
        .expect("write");
    assert!(
        out.refused[0].message.contains("terminal index 3 differs"),
        "{out:?}"
    );
    assert_eq!(lines_of(&store, "a"), ["one", "two", "three"]);
}

#[test]
fn a_sequence_that_does_not_follow_from_the_stored_entries_is_a_conflict() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    store
        .write("proj", "pre", &[checked("a", 0, &["one"], None)])
        .expect("write");
    store
        .write("proj", "pre", &[checked("a", 2, &["three"], None)])
        .expect("write");
    // Entry 1 with sequence 0: entry 0 (one line) is followed by sequence 1.
    let mut bad = checked("a", 1, &["two"], None);
    bad.sequences[0].sequence = 0;
    let out = store.write("proj", "pre", &[bad]).expect("write");
    assert_eq!(out.refused.len(), 1, "{out:?}");
    assert!(out.refused[0].message.contains("sequence"), "{out:?}");
    // Entry 1 spanning two lines would make entry 2's sequence 3, not 2.
    let mut bad = checked("a", 1, &["two"], None);
    bad.sequences[0].span = 2;
    let out = store.write("proj", "pre", &[bad]).expect("write");
    assert_eq!(out.refused.len(), 1, "{out:?}");
    // The right one fills the gap.
    let out = store
        .write("proj", "pre", &[checked("a", 1, &["two"], None)])
        .expect("write");
    assert!(out.refused.is_empty(), "{out:?}");
    assert_eq!(lines_of(&store, "a"), ["one", "two", "three"]);
}

#[test]
fn flipped_bytes_in_a_segment_are_an_error_naming_the_stream_and_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    // Two writes: two blocks.
    store
        .write("proj", "pre", &[checked("a", 0, &["first line"], None)])
        .expect("write");
    store
        .write("proj", "pre", &[checked("a", 1, &["second line"], Some(1))])
        .expect("write");
    let seg = dir.path().join("segments/00000001.seg");
    let mut data = std::fs::read(&seg).expect("segment");
    let last = data.len() - 3;
    data[last] ^= 0x20;
    std::fs::write(&seg, &data).expect("flip");
    let err = store
        .entries(&key("a"), 0, usize::MAX, usize::MAX)
        .expect_err("damaged");
    assert!(matches!(err, StoreError::Damaged(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("proj/pre/+/a entry 1") && msg.contains("checksum"),
        "{msg}"
    );
    // Entry 0 is intact and still served; the tail read hits the damage.
    assert_eq!(
        store
            .entries(&key("a"), 0, 1, usize::MAX)
            .expect("entry 0")
            .len(),
        1
    );
    assert!(store.last_entries(&key("a"), 1).is_err());
}

#[test]
fn a_second_store_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let err = Store::open(dir.path()).expect_err("second");
    assert!(matches!(err, StoreError::InUse(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
    drop(store);
    Store::open(dir.path()).expect("free again");
}

#[test]
fn damage_is_found_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = Store::open(dir.path()).expect("open");
        store
            .write("proj", "pre", &[checked("a", 0, &["one", "two"], Some(1))])
            .expect("write");
    }
    // A truncated segment.
    let seg = dir.path().join("segments/00000001.seg");
    let len = std::fs::metadata(&seg).expect("segment").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .and_then(|f| f.set_len(len - 3))
        .expect("truncate");
    let err = Store::open(dir.path()).expect_err("short segment");
    assert!(matches!(err, StoreError::Damaged(_)), "{err:?}");
    assert!(err.to_string().contains("verify"), "{err}");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .and_then(|f| f.set_len(len))
        .expect("restore length");
    // A damaged index: garbage over the database's pages (past the header).
    let db = dir.path().join("collector.sqlite");
    let mut data = std::fs::read(&db).expect("db");
    for b in data.iter_mut().skip(100).take(4096 * 2) {
        *b = 0x5a;
    }
    std::fs::write(&db, &data).expect("damage");
    let err = Store::open(dir.path()).expect_err("damaged index");
    assert!(matches!(err, StoreError::Damaged(_)), "{err:?}");
}

#[test]
fn projects_are_listed_from_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = Store::open(dir.path()).expect("open");
        assert!(store.projects().expect("projects").is_empty());
        for project in ["zeta", "alpha", "zeta"] {
            store
                .write(project, "pre", &[checked("a", 0, &["x"], Some(0))])
                .expect("write");
        }
    }
    let store = Store::open(dir.path()).expect("reopen");
    assert_eq!(store.projects().expect("projects"), ["alpha", "zeta"]);
}

#[tokio::test(start_paused = true)]
async fn followers_wait_for_a_quiet_gap_in_the_writes_or_at_most_their_limit() {
    use std::time::Duration;
    use tokio::time::Instant;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let gap = Duration::from_millis(20);
    let limit = Duration::from_millis(500);

    // Nothing written lately: no wait.
    let t = Instant::now();
    store.quiet(gap, limit).await;
    assert_eq!(t.elapsed(), Duration::ZERO);

    // A write in progress that never ends: the follower reads anyway after its limit.
    let w = store.writing();
    let t = Instant::now();
    store.quiet(gap, limit).await;
    assert_eq!(t.elapsed(), limit);

    // A write that ends after 100 ms: the follower waits for it, then for the gap.
    let t = Instant::now();
    let ender = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(w);
    });
    store.quiet(gap, limit).await;
    let waited = t.elapsed();
    ender.await.expect("ender");
    assert!(
        waited >= Duration::from_millis(100)
            && waited <= Duration::from_millis(100) + gap + Duration::from_millis(5),
        "waited {waited:?}"
    );
}

#[test]
fn a_huge_bundle_is_stored_in_parts_and_a_conflict_in_a_later_part_refuses_the_rest() {
    use logdog_collector::store::PART_ENTRIES;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let n = PART_ENTRIES * 2 + 100;
    let text: Vec<String> = (0..n).map(|i| format!("l{i}")).collect();
    let lines: Vec<&str> = text.iter().map(String::as_str).collect();
    let out = store
        .write(
            "proj",
            "pre",
            &[
                checked("small", 0, &["a", "b"], Some(1)),
                checked("big", 0, &lines, Some(n as i64 - 1)),
            ],
        )
        .expect("write");
    assert_eq!((out.stored as usize, out.refused.len()), (n + 2, 0));
    assert_eq!(out.touched.len(), 2, "{:?}", out.touched);
    assert_eq!(lines_of(&store, "big"), lines);
    let info = store.stream(&key("big")).expect("read").expect("big");
    assert!(info.state.complete, "{:?}", info.state);
    // The same bundle again: all duplicates, whatever part they fall in.
    let out = store
        .write(
            "proj",
            "pre",
            &[checked("big", 0, &lines, Some(n as i64 - 1))],
        )
        .expect("retry");
    assert_eq!((out.stored, out.duplicates as usize), (0, n));

    // Another stream whose second part conflicts with what is stored: its first part is
    // stored, the rest is refused and counted.
    store
        .write(
            "proj",
            "pre",
            &[checked("c", PART_ENTRIES as u64 + 5, &["other"], None)],
        )
        .expect("write");
    let out = store
        .write("proj", "pre", &[checked("c", 0, &lines, None)])
        .expect("write");
    assert_eq!(out.stored as usize, PART_ENTRIES, "{out:?}");
    assert_eq!(out.refused.len(), 1, "{out:?}");
    assert_eq!(out.refused[0].entries as usize, n - PART_ENTRIES, "{out:?}");
    assert!(out.refused[0].message.contains("differs"), "{out:?}");
}

/// Streams that have not ended are abandoned once their whole prefix has been quiet for
/// longer than the setting; ended streams never are, and a write to any stream of the prefix
/// makes its quiet streams open again.
#[test]
fn quiet_prefixes_have_their_open_streams_abandoned() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    store
        .write(
            "proj",
            "pre",
            &[
                checked("open", 0, &["a"], None),
                checked("ended", 0, &["b"], Some(0)),
            ],
        )
        .unwrap();
    let abandoned = |name: &str| store.stream(&key(name)).unwrap().unwrap().state.abandoned;
    let listed = |name: &str| {
        store
            .list("proj", "")
            .unwrap()
            .into_iter()
            .find(|(k, _)| k.name == name)
            .map(|(_, info)| info.state.abandoned)
            .unwrap()
    };
    assert!(!abandoned("open") && !listed("open"), "a fresh write");
    store.set_abandon_after(std::time::Duration::ZERO);
    // Quiet for more than 0 ms: a millisecond or two.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !abandoned("open") {
        assert!(std::time::Instant::now() < deadline, "never abandoned");
        std::thread::yield_now();
    }
    assert!(listed("open"));
    assert!(
        !abandoned("ended") && !listed("ended"),
        "ended streams are not"
    );
    // Quiet for 3 s against a setting of 2 s: abandoned, until another stream of the prefix
    // gets a line.
    let written = std::time::Instant::now();
    store.set_abandon_after(std::time::Duration::from_secs(3600));
    store
        .write("proj", "pre", &[checked("open", 1, &["a2"], None)])
        .unwrap();
    while written.elapsed() < std::time::Duration::from_secs(3) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    store.set_abandon_after(std::time::Duration::from_secs(2));
    assert!(abandoned("open") && listed("open"), "quiet for 3 s");
    store
        .write("proj", "pre", &[checked("other", 0, &["c"], None)])
        .unwrap();
    assert!(
        !abandoned("open") && !listed("open"),
        "its prefix got a line"
    );
}

/// Writes a store of layout 4 by hand: entries stored raw in the segment, one per index row.
fn layout_4_store(dir: &Path, lines: &[&str]) {
    use logdog_collector::store::StreamRecord;
    let conn = rusqlite::Connection::open(dir.join("collector.sqlite")).expect("sqlite");
    conn.execute_batch(
        "CREATE TABLE streams (
             id INTEGER PRIMARY KEY,
             project TEXT NOT NULL,
             prefix TEXT NOT NULL,
             name TEXT NOT NULL,
             record BLOB NOT NULL,
             UNIQUE (project, prefix, name));
         CREATE TABLE entries (
             stream_id INTEGER NOT NULL,
             idx INTEGER NOT NULL,
             seg INTEGER NOT NULL,
             off INTEGER NOT NULL,
             len INTEGER NOT NULL,
             crc INTEGER,
             seq INTEGER,
             span INTEGER,
             PRIMARY KEY (stream_id, idx)) WITHOUT ROWID;
         CREATE TABLE append_end (
             one INTEGER PRIMARY KEY CHECK (one = 1),
             seg INTEGER NOT NULL,
             end_off INTEGER NOT NULL);
         CREATE TABLE prefixes (
             project TEXT NOT NULL,
             prefix TEXT NOT NULL,
             secret_sha256 BLOB NOT NULL,
             registered INTEGER NOT NULL,
             PRIMARY KEY (project, prefix)) WITHOUT ROWID;
         CREATE TABLE heartbeat (
             one INTEGER PRIMARY KEY CHECK (one = 1),
             at INTEGER NOT NULL);
         PRAGMA user_version = 4;",
    )
    .expect("layout 4");
    let mut seg = Vec::new();
    let mut bytes = 0;
    for (i, line) in lines.iter().enumerate() {
        let (idx, raw, payload) = entry(i as u64, line);
        conn.execute(
            "INSERT INTO entries (stream_id, idx, seg, off, len, crc, seq, span)
             VALUES (1, ?1, 1, ?2, ?3, ?4, ?1, 1)",
            rusqlite::params![
                idx as i64,
                seg.len() as i64,
                raw.len() as i64,
                i64::from(crc32fast::hash(&raw))
            ],
        )
        .expect("entry row");
        seg.extend_from_slice(&raw);
        bytes += payload;
    }
    let now = prost_types::Timestamp {
        seconds: 1_700_000_000,
        nanos: 0,
    };
    let mut d = desc("old");
    d.prefix = "pre".to_string();
    let rec = StreamRecord {
        id: 1,
        desc: Some(d),
        created: Some(now),
        terminated: false,
        terminal_index: -1,
        entry_count: lines.len() as u64,
        byte_count: bytes,
        contiguous: lines.len() as u64,
        updated: Some(now),
    };
    conn.execute(
        "INSERT INTO streams (id, project, prefix, name, record) VALUES (1, 'proj', 'pre', 'old', ?1)",
        [rec.encode_to_vec()],
    )
    .expect("stream row");
    conn.execute(
        "INSERT INTO append_end (one, seg, end_off) VALUES (1, 1, ?1)",
        [seg.len() as i64],
    )
    .expect("append end");
    std::fs::create_dir_all(dir.join("segments")).expect("segments dir");
    std::fs::write(dir.join("segments/00000001.seg"), &seg).expect("segment");
}

#[test]
fn a_layout_4_store_is_upgraded_in_place_and_reads_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    layout_4_store(dir.path(), &["one", "two"]);
    let seg = dir.path().join("segments/00000001.seg");
    let old_bytes = std::fs::read(&seg).expect("segment");
    {
        let store = Store::open(dir.path()).expect("open layout 4");
        assert_eq!(lines_of(&store, "old"), ["one", "two"]);
        // The old bytes were not rewritten.
        assert_eq!(std::fs::read(&seg).expect("segment"), old_bytes);
        // A retry of an old entry is a duplicate (compared with the raw bytes), different
        // bytes a conflict, and new entries go after the old ones, in a block.
        let out = store
            .write("proj", "pre", &[checked("old", 1, &["two"], None)])
            .expect("retry");
        assert_eq!((out.stored, out.duplicates), (0, 1));
        let out = store
            .write("proj", "pre", &[checked("old", 1, &["TWO"], None)])
            .expect("conflict");
        assert_eq!(out.refused.len(), 1, "{out:?}");
        let out = store
            .write("proj", "pre", &[checked("old", 2, &["three"], Some(2))])
            .expect("write");
        assert_eq!(out.stored, 1);
        assert_eq!(lines_of(&store, "old"), ["one", "two", "three"]);
        let last = store.last_entries(&key("old"), 2).expect("tail");
        assert_eq!(
            last.iter().map(|e| e.stream_index).collect::<Vec<_>>(),
            [1, 2]
        );
        assert!(
            store
                .stream(&key("old"))
                .expect("stream")
                .expect("known")
                .state
                .complete
        );
    }
    let conn = rusqlite::Connection::open(dir.path().join("collector.sqlite")).expect("sqlite");
    let v: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .expect("version");
    assert_eq!(v, 6);
    drop(conn);
    let report = logdog_collector::verify::verify(dir.path()).expect("verify");
    assert_eq!((report.entries, report.damaged), (3, 0), "{report:?}");
    // Reopened, both kinds of rows read back; damage in an old raw entry is still found.
    let store = Store::open(dir.path()).expect("reopen");
    assert_eq!(lines_of(&store, "old"), ["one", "two", "three"]);
    drop(store);
    let mut data = std::fs::read(&seg).expect("segment");
    data[old_bytes.len() - 2] ^= 0x20;
    std::fs::write(&seg, &data).expect("flip");
    let store = Store::open(dir.path()).expect("reopen");
    let err = store
        .entries(&key("old"), 0, usize::MAX, usize::MAX)
        .expect_err("damaged");
    assert!(
        err.to_string().contains("proj/pre/+/old entry 1") && err.to_string().contains("checksum"),
        "{err}"
    );
    drop(store);
    let report = logdog_collector::verify::verify(dir.path()).expect("verify");
    assert_eq!(report.damaged, 1, "{report:?}");
}
