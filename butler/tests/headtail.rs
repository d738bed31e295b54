//! The head+tail cap on a realistic stream: `seq 1 100000` under a 64 KiB cap, read in pipe-sized
//! chunks, in memory and through a file.

use std::time::Instant;

use logdog_butler::policy::headtail::HeadTail;
use logdog_butler::policy::{PolicyCounts, Stage};

/// Runs `input` through a 64 KiB cap in 4 KiB reads, draining in 16 KiB pieces.
fn capped(input: &[u8], dir: Option<&std::path::Path>) -> (Vec<u8>, PolicyCounts) {
    let now = Instant::now();
    let mut h = HeadTail::new(64 << 10, dir).unwrap();
    let mut out = Vec::new();
    for chunk in input.chunks(4096) {
        h.push(chunk, now, &mut out);
    }
    loop {
        let before = out.len();
        let more = h.drain(16 << 10, now, &mut out).unwrap();
        assert!(out.len() - before <= 16 << 10);
        if !more {
            break;
        }
    }
    let mut c = PolicyCounts::default();
    h.counts(&mut c);
    (out, c)
}

#[test]
fn seq_keeps_whole_lines_from_1_and_up_to_100000_and_counts_the_gap() {
    let input: Vec<u8> = (1..=100_000u64)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect();
    let (out, c) = capped(&input, None);
    let text = String::from_utf8(out.clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let m = lines
        .iter()
        .position(|l| l.starts_with("[logdog: "))
        .unwrap();
    let head: Vec<u64> = lines[..m].iter().map(|l| l.parse().unwrap()).collect();
    let tail: Vec<u64> = lines[m + 1..].iter().map(|l| l.parse().unwrap()).collect();
    assert_eq!(head, (1..=head.len() as u64).collect::<Vec<_>>());
    let first_tail = 100_001 - tail.len() as u64;
    assert_eq!(tail, (first_tail..=100_000).collect::<Vec<_>>());
    assert_eq!(c.omitted_lines, first_tail - 1 - head.len() as u64);
    assert_eq!(
        lines[m],
        format!(
            "[logdog: {} lines ({} bytes) left out by --max-stream-bytes]",
            c.omitted_lines, c.omitted_bytes
        )
    );
    assert_eq!(
        out.len() as u64 - (lines[m].len() as u64 + 1) + c.omitted_bytes,
        input.len() as u64
    );
    // The head ends at the last newline within 32 KiB; the tail fills the rest of the cap
    // but for the partial line at its start.
    assert!(head.iter().map(|i| i.to_string().len() + 1).sum::<usize>() > (32 << 10) - 7);
    assert!(out.len() - lines[m].len() - 1 > (64 << 10) - 14);

    let dir = std::env::temp_dir().join(format!("logdog-headtail-seq-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (on_disk, c2) = capped(&input, Some(&dir));
    assert_eq!(on_disk, out);
    assert_eq!(c2, c);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "no file left");
    std::fs::remove_dir_all(&dir).unwrap();
}
