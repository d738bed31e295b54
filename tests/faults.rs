//! Faults end to end: a real `logdog_butler run --output grpc://…` whose child writes 100 MiB
//! over 20 streams for about two minutes, while the real `logdog_collector` it ships to is
//! SIGKILLed and restarted on the same port and data directory several times, and frozen
//! (SIGSTOP) for a while once, so it answers slowly.
//!
//! At the end every stream read back with `logdog cat` must be byte-identical to what the
//! child wrote, the collector must hold each stream complete with exactly one entry per index
//! (entry count = terminal index + 1, byte count = bytes written), nothing else may be stored
//! under the prefix, the butler must report no loss, and its exit status must be the child's.
//!
//! The child paces itself (64 KiB per stream every ~1.2 s); the test's only sleeps are the
//! fault schedule.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Collector, Guarded, Rng, butler, drain, logdog, read, tempdir, write_text_file};
use logdog_proto::logdog::collector as pb;
use logdog_proto::logdog::collector::logs_client::LogsClient;
use nix::sys::signal::{Signal, kill};
use serde_json::Value;

/// The `logdog_butler` binary, for the child's `logdog_butler pipe`.
const BUTLER_VAR: &str = "LOGDOG_TEST_BUTLER";
/// Bytes per stream (20 streams: 100 MiB).
const STREAM_SIZE: u64 = 5 << 20;
/// The child's pause between two 64 KiB chunks of one stream: 80 chunks, about 100 s.
const PACE: &str = "1.2";
/// How long the butler may take at most: writing, outages, the final flush.
const BUTLER_LIMIT: Duration = Duration::from_secs(420);
/// How long a collector may live at most: the last one serves the checks at the end too.
const COLLECTOR_LIMIT: Duration = Duration::from_secs(600);
/// The child's exit status.
const CHILD_EXIT: i32 = 7;
const PREFIX: &str = "faults";

/// What happens to the collector, and when (from the butler's start).
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// SIGKILL, then a new collector after this long.
    Kill(Duration),
    /// SIGSTOP for this long, then SIGCONT: every call in progress just waits.
    Freeze(Duration),
}

const SCHEDULE: [(u64, Fault); 6] = [
    (10, Fault::Kill(Duration::from_secs(2))),
    (24, Fault::Freeze(Duration::from_secs(5))),
    (36, Fault::Kill(Duration::from_secs(6))),
    (55, Fault::Kill(Duration::from_millis(0))),
    (68, Fault::Kill(Duration::from_secs(3))),
    (84, Fault::Kill(Duration::from_secs(1))),
];

/// The child: every named stream through `logdog_butler pipe`, each fed by a pacer that
/// writes one 64 KiB chunk of its file, then sleeps; stdout and stderr paced the same way.
/// `$1` holds the files, `$2` is the pause.
const CHILD: &str = r#"
    B="$LOGDOG_TEST_BUTLER"
    pace() {
        n=$(( ($(wc -c < "$1") + 65535) / 65536 ))
        i=0
        while [ "$i" -lt "$n" ]; do
            dd if="$1" bs=65536 skip="$i" count=1 status=none || exit 80
            i=$((i + 1))
            sleep "$2"
        done
    }
    pids=""
    for f in "$1"/text-*; do
        pace "$f" "$2" | "$B" pipe "named/${f##*/}" & pids="$pids $!"
    done
    for f in "$1"/binary-*; do
        pace "$f" "$2" | "$B" pipe --type binary "named/${f##*/}" & pids="$pids $!"
    done
    for f in "$1"/datagram-*; do
        pace "$f" "$2" | "$B" pipe --type datagram "named/${f##*/}" & pids="$pids $!"
    done
    pace "$1/stdout" "$2" & pids="$pids $!"
    pace "$1/stderr" "$2" >&2 & pids="$pids $!"
    for p in $pids; do wait "$p" || exit 90; done
    exit 7
"#;

/// One stream the child writes.
struct Stream {
    /// Its name under the prefix.
    name: String,
    /// The file the child feeds it from.
    file: String,
    kind: &'static str,
}

impl Stream {
    /// What `logdog cat` must print, and the payload byte count the collector must hold.
    fn expected(&self, dir: &Path) -> (Vec<u8>, u64) {
        let input = read(&dir.join(&self.file));
        if self.kind != "datagram" {
            let n = input.len() as u64;
            return (input, n);
        }
        // One datagram per line (without its newline), framed as uvarint length + bytes.
        let mut framed = Vec::with_capacity(input.len() + input.len() / 16);
        let mut payload = 0;
        for line in input.split_inclusive(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\n").unwrap_or(line);
            logdog_proto::handshake::put_uvarint(&mut framed, line.len() as u64);
            framed.extend_from_slice(line);
            payload += line.len() as u64;
        }
        (framed, payload)
    }
}

/// Writes the child's 20 input files into `dir`.
fn prepare(dir: &Path) -> Vec<Stream> {
    let mut streams = Vec::new();
    let mut add = |name: String, file: String, kind| {
        streams.push(Stream { name, file, kind });
    };
    add("stdout".into(), "stdout".into(), "text");
    add("stderr".into(), "stderr".into(), "text");
    for i in 0..12 {
        add(format!("named/text-{i:02}"), format!("text-{i:02}"), "text");
    }
    for i in 0..3 {
        add(format!("named/binary-{i}"), format!("binary-{i}"), "binary");
        add(
            format!("named/datagram-{i}"),
            format!("datagram-{i}"),
            "datagram",
        );
    }
    assert_eq!(streams.len(), 20);
    let mut rng = Rng::new(0xFA_0175);
    for (k, s) in streams.iter().enumerate() {
        let path = dir.join(&s.file);
        if s.kind == "binary" {
            std::fs::write(&path, rng.bytes(STREAM_SIZE as usize)).unwrap();
        } else {
            write_text_file(&path, STREAM_SIZE, 0x5EED + k as u64);
        }
    }
    streams
}

/// The collector's state of a stream.
async fn state(
    client: &mut LogsClient<tonic::transport::Channel>,
    name: &str,
) -> pb::LogStreamState {
    let r = client
        .get(pb::GetRequest {
            project: "default".into(),
            path: format!("{PREFIX}/+/{name}"),
            state: true,
            log_count: -1,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("Get {name}: {e}"))
        .into_inner();
    r.state.unwrap_or_else(|| panic!("Get {name}: no state"))
}

/// Every stream stored under the prefix.
async fn all_streams(client: &mut LogsClient<tonic::transport::Channel>) -> Vec<String> {
    let mut names = Vec::new();
    let mut next = String::new();
    loop {
        let r = client
            .query(pb::QueryRequest {
                project: "default".into(),
                path: PREFIX.into(),
                next: next.clone(),
                ..Default::default()
            })
            .await
            .expect("Query")
            .into_inner();
        names.extend(r.streams.into_iter().map(|s| s.path));
        if r.next.is_empty() {
            return names;
        }
        next = r.next;
    }
}

#[test]
fn collector_killed_restarted_and_frozen_during_a_long_run_loses_and_duplicates_nothing() {
    let tmp = tempdir();
    let d = tmp.path();
    let data = d.join("data");
    let inputs = d.join("inputs");
    std::fs::create_dir(&inputs).unwrap();
    let streams = prepare(&inputs);

    let mut collector = Some(Collector::start_within(
        &data,
        "127.0.0.1:0",
        COLLECTOR_LIMIT,
    ));
    let port = collector.as_ref().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let result = d.join("result.json");

    let mut cmd = butler(
        d,
        &[
            "--output",
            &format!("grpc://{addr}"),
            "--prefix",
            PREFIX,
            "--flush-timeout",
            "120s",
            "run",
            "--no-echo",
            "--result-path",
            result.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            CHILD,
            "sh",
            inputs.to_str().unwrap(),
            PACE,
        ],
    );
    cmd.env(BUTLER_VAR, env!("CARGO_BIN_EXE_logdog_butler"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut g = Guarded::spawn_within(&mut cmd, BUTLER_LIMIT);
    let stderr = drain(g.child.stderr.take().unwrap());

    // The fault schedule. Sleeping is the point here: each fault happens at its time.
    for (at, fault) in SCHEDULE {
        std::thread::sleep(Duration::from_secs(at).saturating_sub(started.elapsed()));
        assert!(
            !g.has_exited(),
            "the butler finished before the fault at {at}s: the faults must hit a running butler"
        );
        let c = collector.take().expect("a running collector");
        match fault {
            Fault::Kill(down) => {
                c.kill();
                std::thread::sleep(down);
                collector = Some(Collector::start_within(&data, &addr, COLLECTOR_LIMIT));
            }
            Fault::Freeze(down) => {
                kill(c.guarded.pid(), Signal::SIGSTOP).expect("SIGSTOP");
                std::thread::sleep(down);
                kill(c.guarded.pid(), Signal::SIGCONT).expect("SIGCONT");
                collector = Some(c);
            }
        }
        eprintln!("{fault:?} at {:?}", started.elapsed());
    }

    let status = g.wait();
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&stderr.join().unwrap()).into_owned();
    let collector = collector.expect("a running collector");
    eprintln!("butler done after {took:?}");

    // The exit status is the child's.
    assert_eq!(
        status.code(),
        Some(CHILD_EXIT),
        "butler: {status}; stderr:\n{err}"
    );
    // Nothing reported lost.
    // (Its log of retries while the collector was away is expected.)
    for loss in [
        "not acknowledged",
        "could not be delivered",
        "bytes dropped",
        "to the stream server refused",
    ] {
        assert!(!err.contains(loss), "butler reports {loss:?}:\n{err}");
    }
    let v: Value = serde_json::from_slice(&read(&result)).expect("result is JSON");
    assert_eq!(v["exit_code"], CHILD_EXIT, "{v:#}");
    assert_eq!(v["failed_bundles"], 0, "{v:#}");
    for s in &streams {
        let r = &v["streams"][&s.name];
        assert_eq!(r["bytes_undelivered"], 0, "{}: {r:#}", s.name);
        assert_eq!(r["bytes_dropped"], 0, "{}: {r:#}", s.name);
    }

    // Every stream, byte for byte.
    let checking = Instant::now();
    for s in &streams {
        let path = format!("default/{PREFIX}/+/{}", s.name);
        let r = logdog(&collector.addr, &["cat", &path]);
        r.assert_code(0);
        let (want, _) = s.expected(&inputs);
        if r.stdout != want {
            let at = want
                .iter()
                .zip(&r.stdout)
                .take_while(|(a, b)| a == b)
                .count();
            panic!(
                "{path}: differs at byte {at} (got {} bytes, want {})",
                r.stdout.len(),
                want.len()
            );
        }
    }

    eprintln!("logdog cat of every stream took {:?}", checking.elapsed());

    // The collector holds each stream once: complete, one entry per index, nothing extra.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut client = LogsClient::connect(format!("http://{}", collector.addr))
            .await
            .expect("connecting to the collector");
        for s in &streams {
            let st = state(&mut client, &s.name).await;
            let (_, bytes) = s.expected(&inputs);
            assert!(st.complete, "{}: {st:?}", s.name);
            assert!(st.terminal_index >= 0, "{}: {st:?}", s.name);
            assert_eq!(
                st.entry_count,
                st.terminal_index as u64 + 1,
                "{}: entries vs terminal index: {st:?}",
                s.name
            );
            assert_eq!(st.byte_count, bytes, "{}: {st:?}", s.name);
            assert_eq!(st.contiguous, st.entry_count, "{}: {st:?}", s.name);
        }
        let mut got = all_streams(&mut client).await;
        got.sort();
        let mut want: Vec<String> = streams
            .iter()
            .map(|s| format!("{PREFIX}/+/{}", s.name))
            // And the run record.
            .chain([format!("{PREFIX}/+/logdog/run")])
            .collect();
        want.sort();
        assert_eq!(got, want, "streams stored under {PREFIX}");
    });

    // The client's connection lives in the runtime: close it, or the collector's graceful
    // stop would wait for it.
    drop(rt);
    let log = collector.log();
    collector.stop();
    eprintln!(
        "collector started {} times",
        log.matches("collector listening").count()
    );
}
