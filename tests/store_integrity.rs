//! Nothing lost, nothing forged in the collector's store, against a real `logdog_collector`
//! process on loopback and its real files:
//! - one bad stream never sinks the other streams of its bundle (refused alone, and said so);
//! - different bytes or another descriptor at a stored stream are a conflict, not a duplicate;
//! - a `sequence` that contradicts LogDog's rule is refused;
//! - a flipped byte in a stored block is an error naming stream and index on every read path
//!   (`logdog cat` and `tail`, the viewer's rows and raw download, the tail server), and
//!   `logdog_collector verify` lists them;
//! - a second collector on one data directory is refused at start;
//! - a store damaged at start is reported clearly; damaged entries found while running refuse
//!   their stream alone (`DAMAGED`), and the rest of the bundle is stored;
//! - a full disk is `UNAVAILABLE` (retried), stores nothing of the bundle, and the same bundle
//!   is stored once there is room again.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use common::{Collector, Input, logdog, run};
use logdog_proto::logdog::collector::collector_client::CollectorClient;
use logdog_proto::logdog::collector::stream_refusal::Reason;
use logdog_proto::logdog::collector::{WriteBundleRequest, WriteBundleResponse};
use logdog_proto::logpb::{self, log_entry::Content};
use prost::Message;
use tonic::Code;
use tonic::transport::Channel;

fn text_entry(i: u64, sequence: u64, line: &str) -> logpb::LogEntry {
    logpb::LogEntry {
        stream_index: i,
        sequence,
        time_offset: Some(prost_types::Duration::default()),
        content: Some(Content::Text(logpb::Text {
            lines: vec![logpb::text::Line {
                value: line.as_bytes().to_vec().into(),
                delimiter: "\n".into(),
            }],
        })),
        ..Default::default()
    }
}

/// Entries `from..to`, one line each, reading `{word} {i}`.
fn lines(from: u64, to: u64, word: &str) -> Vec<logpb::LogEntry> {
    (from..to)
        .map(|i| text_entry(i, i, &format!("{word} {i}")))
        .collect()
}

fn desc(name: &str) -> logpb::LogStreamDescriptor {
    logpb::LogStreamDescriptor {
        name: name.into(),
        content_type: "text/plain".into(),
        timestamp: Some(prost_types::Timestamp::default()),
        ..Default::default()
    }
}

fn stream(
    desc: logpb::LogStreamDescriptor,
    logs: Vec<logpb::LogEntry>,
    terminal: Option<u64>,
) -> logpb::butler_log_bundle::Entry {
    logpb::butler_log_bundle::Entry {
        desc: Some(desc),
        terminal: terminal.is_some(),
        terminal_index: terminal.unwrap_or(0),
        logs,
        ..Default::default()
    }
}

fn bundle(entries: Vec<logpb::butler_log_bundle::Entry>) -> logpb::ButlerLogBundle {
    logpb::ButlerLogBundle {
        project: "proj".into(),
        prefix: "pfx".into(),
        timestamp: Some(prost_types::Timestamp::default()),
        entries,
        ..Default::default()
    }
}

async fn client(addr: &str) -> CollectorClient<Channel> {
    let ch = Channel::from_shared(format!("http://{addr}"))
        .expect("address")
        .connect()
        .await
        .expect("connect");
    CollectorClient::new(ch).max_encoding_message_size(64 << 20)
}

async fn write(
    c: &mut CollectorClient<Channel>,
    b: &logpb::ButlerLogBundle,
) -> Result<WriteBundleResponse, tonic::Status> {
    Ok(c.write_bundle(WriteBundleRequest {
        bundle: b.encode_to_vec().into(),
    })
    .await?
    .into_inner())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// `logdog cat proj/pfx/+/NAME`, which must succeed.
fn cat(col: &Collector, name: &str) -> String {
    let out = logdog(&col.addr, &["cat", &format!("proj/pfx/+/{name}")]);
    out.assert_code(0);
    out.stdout_str()
}

/// The text `lines(from, to, word)` reads back as.
fn text_of(from: u64, to: u64, word: &str) -> String {
    (from..to).map(|i| format!("{word} {i}\n")).collect()
}

#[test]
fn a_bad_stream_is_refused_alone_and_the_rest_of_its_bundle_is_stored() {
    let data = common::tempdir();
    let col = Collector::start(&data.path().join("data"), "127.0.0.1:0");
    let rt = rt();
    let mut c = rt.block_on(client(&col.addr));
    // 20 tags of 4,000 bytes: each tag is within its limits, their total is not.
    let mut big = desc("huge");
    for i in 0..20 {
        big.tags.insert(format!("k{i}"), "v".repeat(4000));
    }
    let mut typed = desc("wrongtype");
    typed.stream_type = logpb::StreamType::Binary as i32;
    let b = bundle(vec![
        stream(desc("stdout"), lines(0, 100, "out"), Some(99)),
        stream(big, lines(0, 10, "huge"), None),
        stream(desc("stderr"), lines(0, 50, "err"), Some(49)),
        stream(typed, lines(0, 1, "x"), None),
    ]);
    let r = rt
        .block_on(write(&mut c, &b))
        .expect("the bundle is accepted");
    assert_eq!((r.stored, r.duplicates), (150, 0), "{r:?}");
    let refused: Vec<(&str, i32)> = r
        .refused
        .iter()
        .map(|f| (f.name.as_str(), f.reason))
        .collect();
    assert_eq!(
        refused,
        [
            ("huge", Reason::Invalid as i32),
            ("wrongtype", Reason::Invalid as i32)
        ]
    );
    assert!(r.refused[0].message.contains("bytes in all"), "{r:?}");
    assert_eq!(r.refused[0].entries, 10);
    assert_eq!(cat(&col, "stdout"), text_of(0, 100, "out"));
    assert_eq!(cat(&col, "stderr"), text_of(0, 50, "err"));
    let ls = logdog(&col.addr, &["ls", "proj/pfx"]);
    ls.assert_code(0);
    assert!(!ls.stdout_str().contains("huge"), "{}", ls.stdout_str());
    // The bundle itself being bad still refuses it whole.
    let mut b = bundle(vec![stream(desc("s"), lines(0, 1, "a"), None)]);
    b.project = "Bad Project".into();
    let err = rt.block_on(write(&mut c, &b)).expect_err("bad project");
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[test]
fn different_bytes_or_another_descriptor_at_a_stored_stream_are_a_conflict() {
    let data = common::tempdir();
    let col = Collector::start(&data.path().join("data"), "127.0.0.1:0");
    let rt = rt();
    let mut c = rt.block_on(client(&col.addr));
    // Someone else's text at indices 0-999.
    let forged = bundle(vec![stream(desc("stdout"), lines(0, 1000, "forged"), None)]);
    let r = rt.block_on(write(&mut c, &forged)).expect("write");
    assert_eq!(r.stored, 1000);
    // The real lines at the same indices: a conflict, not 1000 duplicates.
    let real = bundle(vec![
        stream(desc("stdout"), lines(0, 1200, "real"), Some(1199)),
        stream(desc("other"), lines(0, 3, "fine"), Some(2)),
    ]);
    let r = rt.block_on(write(&mut c, &real)).expect("write");
    assert_eq!((r.stored, r.duplicates), (3, 0), "{r:?}");
    assert_eq!(r.refused.len(), 1, "{r:?}");
    assert_eq!(r.refused[0].name, "stdout");
    assert_eq!(r.refused[0].reason, Reason::Conflict as i32);
    assert!(r.refused[0].message.contains("entry 0 differs"), "{r:?}");
    assert_eq!(r.refused[0].entries, 1200);
    // A byte-identical retry stays a silent duplicate.
    let r = rt.block_on(write(&mut c, &forged)).expect("retry");
    assert_eq!((r.stored, r.duplicates, r.refused.len()), (0, 1000, 0));
    // Another descriptor for a stored stream.
    let mut retyped = desc("stdout");
    retyped.content_type = "text/x-mine".into();
    retyped.tags.insert("owner".into(), "me".into());
    let r = rt
        .block_on(write(
            &mut c,
            &bundle(vec![stream(retyped, lines(1000, 1001, "forged"), None)]),
        ))
        .expect("write");
    assert_eq!(r.refused.len(), 1, "{r:?}");
    assert_eq!(r.refused[0].reason, Reason::Conflict as i32);
    assert!(r.refused[0].message.contains("descriptor differs"), "{r:?}");
    // The store holds what was first written, and only that.
    assert_eq!(cat(&col, "stdout"), text_of(0, 1000, "forged"));
    assert_eq!(cat(&col, "other"), text_of(0, 3, "fine"));
    drop((c, rt));
    let log = col.stop_with_log();
    assert!(log.contains("kind=\"conflict\""), "{log}");
}

#[test]
fn sequences_that_contradict_logdogs_rule_are_refused() {
    let data = common::tempdir();
    let col = Collector::start_with(
        &data.path().join("data"),
        "127.0.0.1:0",
        &["--http", "127.0.0.1:0"],
    );
    let rt = rt();
    let mut c = rt.block_on(client(&col.addr));
    // Every entry with sequence 0, in one bundle.
    let zeros: Vec<_> = (0..10)
        .map(|i| text_entry(i, 0, &format!("line {i}")))
        .collect();
    let r = rt
        .block_on(write(
            &mut c,
            &bundle(vec![stream(desc("a"), zeros, Some(9))]),
        ))
        .expect("write");
    assert_eq!(r.refused.len(), 1, "{r:?}");
    assert!(r.refused[0].message.contains("sequence"), "{r:?}");
    // One entry per bundle, every one with sequence 0: entry 0 is fine, the rest conflict.
    for i in 0..5 {
        let r = rt
            .block_on(write(
                &mut c,
                &bundle(vec![stream(
                    desc("b"),
                    vec![text_entry(i, 0, &format!("line {i}"))],
                    None,
                )]),
            ))
            .expect("write");
        assert_eq!(r.refused.len(), usize::from(i > 0), "entry {i}: {r:?}");
    }
    // Right sequences, written out of order, are all taken.
    for (from, to) in [(3, 6), (0, 1), (1, 3)] {
        let r = rt
            .block_on(write(
                &mut c,
                &bundle(vec![stream(
                    desc("c"),
                    lines(from, to, "c"),
                    (to == 6).then_some(5),
                )]),
            ))
            .expect("write");
        assert!(r.refused.is_empty(), "{from}..{to}: {r:?}");
    }
    assert_eq!(cat(&col, "c"), text_of(0, 6, "c"));
    // The viewer numbers the rows from the sequences.
    let http = col.http.clone().expect("viewer");
    let (status, body) = http_get(&http, "/api/rows/proj/pfx/+/c?from=0");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON rows");
    let numbers: Vec<u64> = v["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["n"].as_u64())
        .collect();
    assert_eq!(numbers, [0, 1, 2, 3, 4, 5], "{body}");
}

/// `GET path` over HTTP/1.0: the status and the body.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the viewer");
    s.set_read_timeout(Some(common::TIMEOUT)).expect("timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("request");
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

/// Flips a byte in the middle of the `n`th block (from 0) of stream `name` in the segments of
/// `data`, found through the index (read beside the running collector).
fn damage_block(data: &Path, name: &str, n: usize) {
    let conn = rusqlite::Connection::open_with_flags(
        data.join("collector.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("index");
    let blocks: Vec<(u32, i64, i64)> = conn
        .prepare(
            "SELECT b.seg, b.off, b.len FROM blocks b JOIN streams s ON s.id = b.stream_id
             WHERE s.name = ?1 ORDER BY b.id",
        )
        .expect("query")
        .query_map([name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("blocks")
        .collect::<Result<_, _>>()
        .expect("blocks");
    let (seg, off, len) = blocks[n];
    let path = data.join(format!("segments/{seg:08}.seg"));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open segment");
    let mut b = [0u8];
    let at = (off + len / 2) as u64;
    f.read_exact_at(&mut b, at).expect("read");
    f.write_all_at(&[b[0] ^ 0x10], at).expect("flip");
}

fn verify(data: &Path) -> common::Finished {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_logdog_collector"));
    cmd.arg("verify").arg("--data").arg(data);
    run(&mut cmd, Input::Null)
}

#[test]
fn bit_rot_is_an_error_on_every_read_path_and_verify_lists_it() {
    let data = common::tempdir();
    let dir = data.path().join("data");
    let col = Collector::start_with(
        &dir,
        "127.0.0.1:0",
        &["--http", "127.0.0.1:0", "--tail", "127.0.0.1:0"],
    );
    let rt = rt();
    let mut c = rt.block_on(client(&col.addr));
    // Stream s in two writes, so in two blocks: entries 0..42 and 42..100.
    let b = bundle(vec![
        stream(desc("s"), lines(0, 42, "line"), None),
        stream(desc("t"), lines(0, 10, "fine"), Some(9)),
    ]);
    rt.block_on(write(&mut c, &b)).expect("write");
    let b = bundle(vec![stream(desc("s"), lines(42, 100, "line"), Some(99))]);
    rt.block_on(write(&mut c, &b)).expect("write");
    let clean = verify(&dir);
    clean.assert_code(0);
    assert!(
        clean
            .stdout_str()
            .contains("verified 2 streams, 110 entries"),
        "{}",
        clean.stdout_str()
    );
    // One byte of the block of entries 42..100 changes on disk (stored compressed, so its
    // text is not there to find: the index says where the block is).
    damage_block(&dir, "s", 1);

    let damaged = |what: &str, out: &str| {
        assert!(
            out.contains("proj/pfx/+/s entry") && out.contains("block checksum mismatch"),
            "{what}: {out}"
        );
        assert!(
            !out.contains("line 42") && !out.contains("line 99"),
            "{what} served the damaged block: {out}"
        );
    };
    let out = logdog(&col.addr, &["cat", "proj/pfx/+/s"]);
    assert_ne!(out.code(), 0, "logdog cat of a damaged stream exits 0");
    damaged("logdog cat", &out.stderr_str());
    assert!(
        !out.stdout_str().contains("line 42"),
        "{}",
        out.stdout_str()
    );
    let out = logdog(&col.addr, &["tail", "-n", "100", "proj/pfx/+/s"]);
    assert_ne!(out.code(), 0, "logdog tail of a damaged stream exits 0");
    damaged("logdog tail", &out.stderr_str());
    let http = col.http.clone().expect("viewer");
    let (status, body) = http_get(&http, "/api/rows/proj/pfx/+/s?from=42");
    assert_ne!(status, 200, "{body}");
    damaged("viewer rows", &body);
    let (_, body) = http_get(&http, "/raw/proj/pfx/+/s");
    assert!(
        !body.contains("line 42"),
        "raw download served the damaged block"
    );
    let tail = col.tail.clone().expect("tail server");
    let mut s = TcpStream::connect(&tail).expect("connect to the tail server");
    s.set_read_timeout(Some(common::TIMEOUT)).expect("timeout");
    s.write_all(b"stream proj/pfx/+/s\n").expect("request");
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let got = String::from_utf8_lossy(&got);
    // Intact entries before the damage may come first (a prefix of the stream), then the
    // error, never the damaged bytes.
    let (before, error) = got.split_once("error: ").unwrap_or((&got, ""));
    assert!(text_of(0, 42, "line").starts_with(before), "{got}");
    damaged("tail server", error);
    // The intact stream is served as ever.
    assert_eq!(cat(&col, "t"), text_of(0, 10, "fine"));

    // verify lists the damaged block once, naming its first entry.
    let out = verify(&dir);
    assert_eq!(out.code(), 1, "{}", out.stdout_str());
    let listed = out.stdout_str();
    assert!(
        listed.contains("DAMAGED proj/pfx/+/s entry 42: block"),
        "{listed}"
    );
    assert!(listed.contains("block checksum mismatch"), "{listed}");
    assert!(listed.contains("1 damaged"), "{listed}");
    assert!(!listed.contains("pfx/+/t"), "{listed}");
}

#[test]
fn a_second_collector_on_the_same_data_directory_is_refused_at_start() {
    let data = common::tempdir();
    let dir = data.path().join("data");
    let first = Collector::start(&dir, "127.0.0.1:0");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_logdog_collector"));
    cmd.args(["--listen", "127.0.0.1:0", "--data"]).arg(&dir);
    let second = run(&mut cmd, Input::Null);
    assert_ne!(second.code(), 0, "a second collector started");
    let err = second.stderr_str();
    assert!(err.contains("in use by another collector"), "{err}");
    assert!(
        err.contains(&format!("pid {}", first.guarded.pid())),
        "{err}"
    );
    assert!(
        !second.stdout_str().contains("LOGDOG_COLLECTOR="),
        "it listened"
    );
    first.stop();
    // Once the first has stopped, the directory is free.
    Collector::start(&dir, "127.0.0.1:0").stop();
}

#[test]
fn a_store_damaged_at_start_is_reported_and_damage_found_while_running_refuses_its_stream() {
    let data = common::tempdir();
    let dir = data.path().join("data");
    let col = Collector::start(&dir, "127.0.0.1:0");
    let rt = rt();
    let mut c = rt.block_on(client(&col.addr));
    let b = bundle(vec![stream(desc("s"), lines(0, 50, "line"), None)]);
    rt.block_on(write(&mut c, &b)).expect("write");
    // A segment cut short under the running collector: a retry of the stored bundle cannot
    // be told from a conflict without the lost bytes, and no retry will ever succeed. That
    // stream is refused as damaged; another stream in the same bundle is stored.
    let seg = dir.join("segments/00000001.seg");
    let len = std::fs::metadata(&seg).expect("segment").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .and_then(|f| f.set_len(len / 2))
        .expect("truncate");
    let mut retry = b.clone();
    retry
        .entries
        .push(stream(desc("new"), lines(0, 5, "new"), Some(4)));
    let r = rt.block_on(write(&mut c, &retry)).expect("write");
    assert_eq!(r.stored, 5, "{r:?}");
    assert_eq!(r.refused.len(), 1, "{r:?}");
    assert_eq!(r.refused[0].reason, Reason::Damaged as i32, "{r:?}");
    assert!(r.refused[0].message.contains("proj/pfx/+/s entry"), "{r:?}");
    assert_eq!(cat(&col, "new"), text_of(0, 5, "new"));
    let out = logdog(&col.addr, &["cat", "proj/pfx/+/s"]);
    assert_ne!(out.code(), 0);
    assert!(
        out.stderr_str().contains("damaged store"),
        "{}",
        out.stderr_str()
    );
    drop((c, rt));
    col.stop();

    // At start: a segment shorter than the index says is refused, clearly, naming the file
    // and how to list the damage. (The write above grew the file again.)
    let grown = std::fs::metadata(&seg).expect("segment").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .and_then(|f| f.set_len(len / 2))
        .expect("truncate");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_logdog_collector"));
    cmd.args(["--listen", "127.0.0.1:0", "--data"]).arg(&dir);
    let out = run(&mut cmd, Input::Null);
    assert_eq!(out.code(), 1);
    let err = out.stderr_str();
    assert!(
        err.contains("damaged store") && err.contains("00000001.seg"),
        "{err}"
    );
    assert!(err.contains("logdog_collector verify"), "{err}");
    let listed = verify(&dir);
    assert_eq!(listed.code(), 1);
    assert!(
        listed.stdout_str().contains("DAMAGED proj/pfx/+/s entry"),
        "{}",
        listed.stdout_str()
    );

    // A damaged index: the same, before anything is served.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .and_then(|f| f.set_len(grown))
        .expect("restore the length");
    let db = dir.join("collector.sqlite");
    let mut bytes = std::fs::read(&db).expect("index");
    for b in bytes.iter_mut().skip(4096).take(8192) {
        *b = 0xa5;
    }
    std::fs::write(&db, &bytes).expect("damage the index");
    let out = run(&mut cmd, Input::Null);
    assert_eq!(out.code(), 1);
    let err = out.stderr_str();
    assert!(
        err.contains("damaged store") && err.contains("collector.sqlite"),
        "{err}"
    );
    assert_eq!(verify(&dir).code(), 1);
}

/// Mounts a tmpfs of `mib` MiB on `dir`; `None` (after saying so loudly) where this process
/// may not mount, which fails the test under CI.
fn small_disk(dir: &Path, mib: u32) -> Option<Mount> {
    std::fs::create_dir_all(dir).expect("mount point");
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
        .arg(dir)
        .output();
    match out {
        Ok(o) if o.status.success() => Some(Mount(dir.to_path_buf())),
        other => {
            let msg = format!(
                "cannot mount a {mib} MiB tmpfs on {} ({other:?}); the full-disk test needs root",
                dir.display()
            );
            common::skipped(&msg);
            assert!(std::env::var_os("CI").is_none(), "{msg}");
            None
        }
    }
}

/// A mount, unmounted when dropped.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_stores_nothing_of_a_bundle_and_the_retry_succeeds_once_there_is_room() {
    let data = common::tempdir();
    let disk = data.path().join("disk");
    let Some(_mount) = small_disk(&disk, 16) else {
        return;
    };
    let dir = disk.join("data");
    let col = Collector::start(&dir, "127.0.0.1:0");
    let rt = rt();
    let mut c = rt.block_on(client(&col.addr));
    rt.block_on(write(
        &mut c,
        &bundle(vec![stream(desc("s"), lines(0, 10, "before"), None)]),
    ))
    .expect("write");
    // Fill the disk, leaving less than the next bundle needs.
    let filler = disk.join("filler");
    let mut f = std::fs::File::create(&filler).expect("filler");
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    drop(f);
    let big: Vec<_> = (10..2010)
        .map(|i| text_entry(i, i, &format!("{i:>1000}")))
        .collect();
    let b = bundle(vec![stream(desc("s"), big, Some(2009))]);
    let err = rt.block_on(write(&mut c, &b)).expect_err("disk full");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("disk full"), "{err:?}");
    // Nothing of it was stored; what was there reads back as ever.
    assert_eq!(cat(&col, "s"), text_of(0, 10, "before"));
    std::fs::remove_file(&filler).expect("free the disk");
    let r = rt.block_on(write(&mut c, &b)).expect("the retry");
    assert_eq!((r.stored, r.refused.len()), (2000, 0), "{r:?}");
    let text = cat(&col, "s");
    assert!(text.starts_with(&text_of(0, 10, "before")));
    assert_eq!(text.lines().count(), 2010);
    col.stop();
    let out = verify(&dir);
    out.assert_code(0);
}
