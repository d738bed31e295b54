//! The spool on real files: appends read back in order, segments deleted once settled,
//! leftovers found by the next butler, one butler per spool, and the record reader's handling
//! of torn and corrupt records (deterministic cases, then properties over arbitrary damage).

use std::path::Path;

use bytes::Bytes;
use logdog_outputs::spool::{
    HEADER_LEN, Item, MAGIC, Spool, SpoolError, SpoolReader, record_header,
};
use proptest::prelude::*;

fn record(payload: &[u8]) -> Vec<u8> {
    let mut v = record_header(payload).to_vec();
    v.extend_from_slice(payload);
    v
}

fn segments(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read spool dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".spool"))
        .collect();
    v.sort();
    v
}

fn read_all(data: &[u8]) -> Vec<Item> {
    let mut r = SpoolReader::new(data.to_vec(), data.len() as u64);
    let mut out = Vec::new();
    while let Some(item) = r.next_item().expect("in-memory read") {
        out.push(item);
    }
    out
}

#[test]
fn records_come_back_in_order_and_settled_segments_are_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(dir.path()).expect("open");
    for i in 0..5u8 {
        spool.append(&[i; 100], |_, _| {}).expect("append");
    }
    let mut got = Vec::new();
    while let Some(rec) = spool.next_record().expect("next") {
        got.push(rec);
    }
    assert_eq!(got.len(), 5);
    for (i, rec) in got.iter().enumerate() {
        assert_eq!(rec.payload, Bytes::from(vec![i as u8; 100]));
    }
    assert!(!spool.is_drained(), "records are in flight");
    for rec in &got {
        spool.settle(rec.segment, rec.offset, rec.spooled_len(), true);
    }
    assert!(spool.is_drained());
    // The active segment stays until it is sealed, then goes.
    assert_eq!(segments(dir.path()).len(), 1);
    spool.seal_active();
    assert!(segments(dir.path()).is_empty());
    let st = spool.stats();
    assert_eq!(
        (st.spooled_records, st.acked_records, st.pending_bytes),
        (5, 5, 0)
    );
}

#[test]
fn what_is_not_settled_is_found_by_the_next_butler() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let spool = Spool::open(dir.path()).expect("open");
        spool.append(b"first", |_, _| {}).expect("append");
        spool.append(b"second", |_, _| {}).expect("append");
        let rec = spool.next_record().expect("next").expect("a record");
        spool.settle(rec.segment, rec.offset, rec.spooled_len(), true);
        spool.close().expect("close");
    }
    let spool = Spool::open(dir.path()).expect("reopen");
    let st = spool.stats();
    assert_eq!(st.leftover_segments, 1);
    // Leftovers are read whole (the settled record is sent again; the collector ignores it).
    let mut payloads = Vec::new();
    while let Some(rec) = spool.next_record().expect("next") {
        payloads.push(rec.payload.clone());
        spool.settle(rec.segment, rec.offset, rec.spooled_len(), true);
    }
    assert_eq!(
        payloads,
        [Bytes::from_static(b"first"), Bytes::from_static(b"second")]
    );
    assert!(spool.is_drained());
    assert!(
        segments(dir.path()).is_empty(),
        "a settled leftover is deleted"
    );
    // New appends go to a new segment after the leftovers'.
    spool.append(b"third", |_, _| {}).expect("append");
    assert_eq!(segments(dir.path()), ["00000002.spool"]);
}

#[test]
fn a_spool_is_used_by_one_butler_at_a_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = Spool::open(dir.path()).expect("open");
    match Spool::open(dir.path()) {
        Err(SpoolError::Locked(p)) => assert_eq!(p, dir.path()),
        other => panic!("expected Locked, got {other:?}"),
    }
}

#[test]
fn a_torn_last_record_and_a_corrupt_middle_record_are_reported_and_skipped() {
    let mut data = Vec::new();
    data.extend(record(b"one"));
    let bad_at = data.len() as u64;
    let mut bad = record(&[7u8; 50]);
    bad[HEADER_LEN + 10] ^= 0xff; // payload no longer matches its checksum
    data.extend(&bad);
    data.extend(record(b"three"));
    let torn_at = data.len() as u64;
    let torn = record(&[9u8; 40]);
    data.extend(&torn[..30]);
    assert_eq!(
        read_all(&data),
        [
            Item::Record {
                offset: 0,
                payload: Bytes::from_static(b"one")
            },
            Item::Corrupt {
                offset: bad_at,
                len: bad.len() as u64
            },
            Item::Record {
                offset: bad_at + bad.len() as u64,
                payload: Bytes::from_static(b"three")
            },
            Item::Torn {
                offset: torn_at,
                len: 30
            },
        ]
    );
}

#[test]
fn a_damaged_length_field_does_not_swallow_the_records_after_it() {
    let mut data = record(b"alpha");
    let bad_at = data.len();
    data.extend(record(b"beta"));
    // A length that points far past the end: without resynchronising, "gamma" would be lost.
    data[bad_at + 4..bad_at + 8].copy_from_slice(&1_000_000u32.to_le_bytes());
    data.extend(record(b"gamma"));
    let items = read_all(&data);
    assert_eq!(items.len(), 3, "{items:?}");
    assert!(matches!(items[1], Item::Corrupt { .. }), "{items:?}");
    assert_eq!(
        items[2],
        Item::Record {
            offset: (bad_at + record(b"beta").len()) as u64,
            payload: Bytes::from_static(b"gamma")
        }
    );
}

#[test]
fn damage_on_disk_is_counted_by_the_spool_and_the_rest_is_delivered() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let spool = Spool::open(dir.path()).expect("open");
        for p in [&b"a"[..], b"b", b"c"] {
            spool.append(&p.repeat(100), |_, _| {}).expect("append");
        }
        spool.close().expect("close");
    }
    let path = dir.path().join("00000001.spool");
    let mut data = std::fs::read(&path).expect("read");
    let second = HEADER_LEN + 100;
    data[second + HEADER_LEN + 5] ^= 1; // corrupt the middle record
    data.truncate(data.len() - 7); // tear the last one
    std::fs::write(&path, &data).expect("write");

    let spool = Spool::open(dir.path()).expect("reopen");
    let mut got = Vec::new();
    while let Some(rec) = spool.next_record().expect("next") {
        got.push(rec.payload.clone());
        spool.settle(rec.segment, rec.offset, rec.spooled_len(), true);
    }
    assert_eq!(got, [Bytes::from(b"a".repeat(100))]);
    let st = spool.stats();
    assert_eq!((st.corrupt, st.torn), (1, 1), "{st:?}");
    assert_eq!(st.pending_bytes, 0);
    assert!(st.lost_anything());
    assert!(spool.is_drained());
    assert!(segments(dir.path()).is_empty());
}

/// Reads everything, checking the reader's invariants: items tile the input exactly, each
/// record is valid, and the reader never panics or loops.
fn check_tiling(data: &[u8]) -> Vec<Bytes> {
    let items = read_all(data);
    let mut pos = 0u64;
    let mut payloads = Vec::new();
    for item in &items {
        match item {
            Item::Record { offset, payload } => {
                assert_eq!(*offset, pos);
                let end = (*offset as usize) + HEADER_LEN + payload.len();
                assert_eq!(&data[*offset as usize..end], record(payload).as_slice());
                pos = end as u64;
                payloads.push(payload.clone());
            }
            Item::Corrupt { offset, len } | Item::Torn { offset, len } => {
                assert_eq!(*offset, pos);
                assert!(*len > 0);
                pos += len;
            }
        }
    }
    assert_eq!(
        pos,
        data.len() as u64,
        "items must cover the input: {items:?}"
    );
    payloads
}

// 256 cases (proptest's default), or `PROPTEST_CASES` for a longer hunt.
proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Arbitrary bytes: no panic, the items tile the input.
    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        check_tiling(&data);
    }

    /// Arbitrary bytes sprinkled with the magic: still no panic, still a tiling.
    #[test]
    fn magic_laden_garbage_never_panics(
        chunks in proptest::collection::vec((any::<bool>(), proptest::collection::vec(any::<u8>(), 0..40)), 0..30)
    ) {
        let mut data = Vec::new();
        for (magic, bytes) in chunks {
            if magic {
                data.extend_from_slice(&MAGIC);
            }
            data.extend(bytes);
        }
        check_tiling(&data);
    }

    /// Valid records with damage in one place: every record the damage did not touch comes
    /// back, in order.
    #[test]
    fn damage_loses_only_the_records_it_touches(
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..12),
        damage_at in any::<prop::sample::Index>(),
        damage_len in 1usize..64,
        flip in 1u8..=255,
        truncate in any::<bool>(),
    ) {
        let mut data = Vec::new();
        let mut spans = Vec::new();
        for p in &payloads {
            let start = data.len();
            data.extend(record(p));
            spans.push((start, data.len()));
        }
        let at = damage_at.index(data.len());
        let end = if truncate { data.len() } else { (at + damage_len).min(data.len()) };
        if truncate {
            data.truncate(at);
        } else {
            for b in &mut data[at..end] {
                *b ^= flip;
            }
        }
        let got = check_tiling(&data);
        let untouched: Vec<Bytes> = payloads
            .iter()
            .zip(&spans)
            .filter(|(_, (s, e))| *e <= at || *s >= end)
            .map(|(p, _)| Bytes::from(p.clone()))
            .collect();
        // Untouched records all come back; a damaged one may only come back if the damage
        // cancelled out, which XOR with a non-zero byte cannot do.
        prop_assert_eq!(got, untouched);
    }
}
