//! Benchmarks of the bundler core's hot path: appending 64 KiB reads to one stream and cutting
//! 8 MiB bundles from them, for text (lines of ~70 bytes, mixed lengths), binary and 1 KiB
//! datagrams. Throughput is in input bytes.
//!
//! Run with `cargo bench -p logdog-bundler --bench core`; add `-- --test` for a quick smoke run.

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use logdog_bundler::core::{Config, Core};
use logdog_proto::{StreamType, logpb};

/// Input per iteration.
const TOTAL: usize = 16 * 1024 * 1024;
/// Bytes per append, as read from a pipe.
const READ: usize = 64 * 1024;

/// A small deterministic generator (xorshift), so every run cuts the same bundles.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Log-like text: lines of 1 to ~140 bytes (70 on average), some with `\r\n`.
fn text_input() -> Vec<u8> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut out = Vec::with_capacity(TOTAL + 256);
    while out.len() < TOTAL {
        let len = 1 + (rng.next() % 139) as usize;
        for _ in 0..len {
            out.push(b' ' + (rng.next() % 95) as u8);
        }
        if rng.next().is_multiple_of(8) {
            out.push(b'\r');
        }
        out.push(b'\n');
    }
    out.truncate(TOTAL);
    out
}

fn binary_input() -> Vec<u8> {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    (0..TOTAL).map(|_| rng.next() as u8).collect()
}

/// 1 KiB datagrams, framed (a 2-byte length header each).
fn datagram_input() -> Vec<u8> {
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    let mut out = Vec::with_capacity(TOTAL + 2048);
    while out.len() + 1026 <= TOTAL {
        prost::encoding::encode_varint(1024, &mut out);
        out.extend((0..1024).map(|_| rng.next() as u8));
    }
    out
}

fn chunks(input: Vec<u8>) -> Vec<Bytes> {
    let all = Bytes::from(input);
    (0..all.len())
        .step_by(READ)
        .map(|i| all.slice(i..(i + READ).min(all.len())))
        .collect()
}

/// One iteration: a fresh core and stream, every read appended, bundles cut until none is
/// left. Returns the number of log entries cut.
fn run(kind: StreamType, input: &[Bytes]) -> usize {
    let t0 = Instant::now();
    let wall = SystemTime::now();
    let mut core = Core::new(Config {
        project: "bench".into(),
        prefix: "bench/prefix".into(),
        max_bundle_size: 8 * 1024 * 1024,
        max_buffer_age: Duration::from_secs(5),
        max_buffered_bytes: 2 * TOTAL,
        read_size: READ,
        flush_timeout: std::time::Duration::from_secs(60),
    });
    let desc = logpb::LogStreamDescriptor {
        name: "stream".into(),
        stream_type: kind as i32,
        ..Default::default()
    };
    let id = core.register(desc, t0, wall).expect("register");
    for (k, c) in input.iter().enumerate() {
        core.append(id, c.clone(), t0 + Duration::from_micros(k as u64));
    }
    core.close(id);
    let mut entries = 0;
    while let Some(cut) = core.next_bundle(t0, wall, true) {
        entries += cut.bundle.log_count();
        black_box(cut);
    }
    assert!(core.is_empty());
    entries
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("core");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for (name, kind, input) in [
        ("text_64k_reads", StreamType::Text, text_input()),
        ("binary_64k_reads", StreamType::Binary, binary_input()),
        ("datagram_1k", StreamType::Datagram, datagram_input()),
    ] {
        group.throughput(Throughput::Bytes(input.len() as u64));
        let input = chunks(input);
        group.bench_function(name, |b| b.iter(|| run(kind, black_box(&input))));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
