//! Benchmark of the secret-masking stage alone: 16 MiB of build-log-like text in 64 KiB reads
//! through a [`Mask`] with no secret, and with 100 secrets (one line in 500 holds one).
//! Throughput is in input bytes.
//!
//! Run with `cargo bench -p logdog-butler --bench mask`; add `-- --test` for a quick smoke run.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use logdog_butler::policy::mask::Mask;
use logdog_butler::policy::{MaskRegistry, Stage};

/// Input per iteration.
const TOTAL: usize = 16 * 1024 * 1024;
/// Bytes per push, as read from a pipe.
const READ: usize = 64 * 1024;

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn secrets(rng: &mut Rng) -> Vec<Vec<u8>> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_";
    (0..100)
        .map(|_| {
            let n = 12 + (rng.next() % 29) as usize;
            (0..n)
                .map(|_| ALPHABET[(rng.next() % ALPHABET.len() as u64) as usize])
                .collect()
        })
        .collect()
}

fn text(rng: &mut Rng, secrets: &[Vec<u8>]) -> Vec<u8> {
    const WORDS: [&[u8]; 8] = [
        b"compiling",
        b"crate",
        b"warning:",
        b"src/main.rs:12:5",
        b"0123456789",
        b"ok",
        b"token=",
        b"result:",
    ];
    let mut out = Vec::with_capacity(TOTAL + 1024);
    let mut line = 0u64;
    while out.len() < TOTAL {
        for _ in 0..rng.next() % 24 {
            out.extend_from_slice(WORDS[(rng.next() % WORDS.len() as u64) as usize]);
            out.push(b' ');
        }
        if line.is_multiple_of(500) {
            out.extend_from_slice(&secrets[(rng.next() % secrets.len() as u64) as usize]);
        }
        out.push(b'\n');
        line += 1;
    }
    out.truncate(TOTAL);
    out
}

fn bench(c: &mut Criterion) {
    let mut rng = Rng(0x5EC2E7);
    let secrets = secrets(&mut rng);
    let input = text(&mut rng, &secrets);
    let mut g = c.benchmark_group("mask");
    g.throughput(Throughput::Bytes(TOTAL as u64));
    g.sample_size(10);
    for n in [0usize, 100] {
        let reg = Arc::new(MaskRegistry::default());
        for s in &secrets[..n] {
            let _ = reg.add(s);
        }
        g.bench_function(format!("{n}_secrets"), |b| {
            let now = Instant::now();
            let mut out = Vec::with_capacity(READ * 2);
            b.iter(|| {
                let mut m = Mask::new(reg.clone());
                for chunk in input.chunks(READ) {
                    out.clear();
                    m.push(chunk, now, &mut out);
                    black_box(&out);
                }
                out.clear();
                let _ = m.drain(READ, now, &mut out);
                black_box(&out);
            });
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
