#!/usr/bin/env python3
"""Benchmarks of the butler with the gRPC output and a real collector on loopback.

(a) throughput: `logdog_butler --output grpc://... run --no-echo -- cat F` (F: 512 MiB of text),
    until every byte is acknowledged (the butler exits only then), against `cat F | cat`
    measured in the same run;
(b) latency: a child writes 1,000 lines, 10 ms apart, each carrying its write time; a
    `logdog tail -f` follower prints them as the collector delivers them; p50 and p99 of
    (arrival - write), with the butler's default flags;
(c) the collector's peak RSS during (a);
(d) the store during (a): its bytes on disk per byte of log (the collector's
    `logdog_collector_store_size_bytes` once `logdog_collector_store_deferred_bytes` is back
    to 0 after the run, less its value before; how long that took is printed), and the ingest
    rate against the same run with the store keeping its blocks raw
    (`LOGDOG_COLLECTOR_STORE_CODEC=none`, a benchmark switch of the collector);
and (a) again with `--spool DIR`, to compare the durable spool's throughput with the plain run.

With --store-url postgres://USER@HOST:PORT/DB the collector stores into that PostgreSQL
database (`--store URL`) instead of an embedded store, and (d) reports the database's growth
(pg_database_size, as the metric reports it). Use an empty database made for the bench.

With --tls, (a) and (b) are measured a second time in the same run with TLS and auth on: a CA
and a certificate for 127.0.0.1 made with `openssl req` in the work directory, the collector
with --tls-cert/--tls-key and --auth (a token made by `logdog_collector token new`), the
butler and the follower with grpcs:// --ca-cert and LOGDOG_TOKEN.

Usage: bench/collector.py [--size-mib 512] [--runs 3] [--file PATH] [--lines 1000] [--tls]
                          [--store-url URL]
Builds the release binaries first (into $CARGO_TARGET_DIR, default target/; --dry-run: only
print where they are).
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cargo_paths  # noqa: E402
from whole_process import make_text_file  # noqa: E402

ROOT = cargo_paths.ROOT
BIN = cargo_paths.bin_dir()


class Plain:
    """No TLS, no auth."""
    label = ""
    collector_flags = []
    scheme = "grpc"
    client_flags = []
    env = None


class Secure:
    """TLS and auth: a CA, a server certificate and a token made in `work`."""
    label = " [TLS+auth]"
    scheme = "grpcs"

    def __init__(self, work):
        pki = os.path.join(work, "pki")
        os.makedirs(pki, exist_ok=True)
        ca_key, ca = os.path.join(pki, "ca.key"), os.path.join(pki, "ca.pem")
        key, csr, cert = (os.path.join(pki, n) for n in ("key.pem", "req.csr", "cert.pem"))
        ext = os.path.join(pki, "ext.cnf")
        quiet = {"check": True, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", ca_key, "-out", ca,
                        "-days", "2", "-subj", "/CN=logdog bench CA",
                        "-addext", "basicConstraints=critical,CA:TRUE",
                        "-addext", "keyUsage=critical,keyCertSign,cRLSign"], **quiet)
        subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", csr,
                        "-subj", "/CN=localhost"], **quiet)
        with open(ext, "w") as f:
            f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                    "extendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n")
        subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key,
                        "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext], **quiet)
        out = subprocess.run([os.path.join(BIN, "logdog_collector"), "token", "new", "bench",
                              "--write", "*", "--read", "*"], check=True, capture_output=True,
                             text=True).stdout
        token, entry = out.split("\n", 1)
        auth = os.path.join(pki, "auth.toml")
        with open(auth, "w") as f:
            f.write(entry)
        self.collector_flags = ["--tls-cert", cert, "--tls-key", key, "--auth", auth]
        self.client_flags = ["--ca-cert", ca]
        self.env = dict(os.environ, LOGDOG_TOKEN=token.strip())


# Where the collector stores: None for the embedded store in its --data directory, or a
# PostgreSQL URL (--store-url).
STORE_URL = None


def start_collector(data, sec=Plain, env=None):
    """Starts a collector; returns (process, gRPC address, metrics address)."""
    store = ["--store", STORE_URL] if STORE_URL else []
    proc = subprocess.Popen(
        [os.path.join(BIN, "logdog_collector"), "--listen", "127.0.0.1:0", "--data", data,
         *store, "--metrics", "127.0.0.1:0", "--log-level", "warn", *sec.collector_flags],
        stdout=subprocess.PIPE, text=True, env=env)
    found = {}
    while "LOGDOG_COLLECTOR" not in found or "LOGDOG_METRICS" not in found:
        line = proc.stdout.readline().strip()
        if "=" not in line:
            sys.exit(f"collector did not start: {line!r}")
        name, value = line.split("=", 1)
        found[name] = value
    return proc, found["LOGDOG_COLLECTOR"], found["LOGDOG_METRICS"]


def metric(metrics, name):
    """The value of the collector's metric `name` (a gauge without labels)."""
    with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=60) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    sys.exit(f"the collector's metrics have no {name}")


def store_bytes(metrics):
    """The collector's `logdog_collector_store_size_bytes`: its store's bytes on disk."""
    return metric(metrics, "logdog_collector_store_size_bytes")


def settle(metrics, limit=600):
    """Waits until the collector has compressed every block it stored raw (the embedded store
    compresses larger blocks after acknowledging them); returns how long that took."""
    t = time.perf_counter()
    while metric(metrics, "logdog_collector_store_deferred_bytes") > 0:
        if time.perf_counter() - t > limit:
            sys.exit(f"the collector still has blocks to compress after {limit} s")
        time.sleep(0.05)
    return time.perf_counter() - t


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def stop(proc):
    proc.terminate()
    proc.wait(timeout=60)


def one_run(data, work, name, extra, sec=Plain, raw_store=False):
    """One butler run to a fresh collector; returns (seconds, collector peak RSS MiB, bytes
    the store grew by once every block is compressed, seconds that compressing went on after
    the run). `raw_store`: the collector keeps its blocks uncompressed."""
    store = os.path.join(work, f"store-{name}")
    env = dict(os.environ, LOGDOG_COLLECTOR_STORE_CODEC="none") if raw_store else None
    col, addr, metrics = start_collector(store, sec, env)
    empty = store_bytes(metrics)
    t = time.perf_counter()
    subprocess.run([os.path.join(BIN, "logdog_butler"), "--output", f"{sec.scheme}://{addr}",
                    *sec.client_flags, "--prefix", name, *extra, "run", "--no-echo",
                    "--no-summary", "--", "cat", data],
                   check=True, env=sec.env)
    took = time.perf_counter() - t
    after = settle(metrics)
    rss = peak_rss_mib(col.pid)
    grown = store_bytes(metrics) - empty
    stop(col)
    shutil.rmtree(store, ignore_errors=True)
    return took, rss, grown, after


def throughput(data, work, runs, secs):
    """(a) and (c), and the same run with --spool (issue: spool-on >= 80% of spool-off), for
    each of `secs` (plain, and TLS with auth when asked)."""
    size = os.path.getsize(data)
    base = []
    results = {sec.label: ([], [], []) for sec in secs}
    # (d): the plain run's store growth, and the same run storing raw blocks.
    disk, raw, raw_disk, lag = [], [], [], []
    subprocess.run(["cat", data], stdout=subprocess.DEVNULL, check=True)
    for i in range(runs):
        t = time.perf_counter()
        subprocess.run(f"cat '{data}' | cat > /dev/null", shell=True, check=True)
        base.append(time.perf_counter() - t)
        for sec in secs:
            ours, spooled, rss = results[sec.label]
            # Each run starts without the previous one's write-back pending.
            os.sync()
            took, r, grown, after = one_run(data, work, f"bench{i}", [], sec)
            ours.append(took)
            rss.append(r)
            if sec is secs[0]:
                disk.append(grown)
                lag.append(after)
                os.sync()
                took, _, grown, _ = one_run(data, work, f"raw{i}", [], sec, raw_store=True)
                raw.append(took)
                raw_disk.append(grown)
            spool = os.path.join(work, f"spool{i}")
            os.sync()
            took, _, _, _ = one_run(data, work, f"spooled{i}", ["--spool", spool], sec)
            spooled.append(took)
            shutil.rmtree(spool, ignore_errors=True)
    b = statistics.median(base)
    mib = size / 2**20
    print(f"(a) {mib:.0f} MiB of text, median of {runs} runs")
    print(f"    baseline cat F | cat          {b:7.3f} s  {mib / b:7.0f} MiB/s")
    plain = results[secs[0].label][0]
    for sec in secs:
        ours, spooled, rss = results[sec.label]
        o, sp = statistics.median(ours), statistics.median(spooled)
        # Paired by round (plain and TLS ran back to back), so that a noisy moment of the
        # machine weighs on both sides of one ratio.
        ratio = statistics.median(p / t for p, t in zip(plain, ours))
        report_throughput(sec.label, mib, b, o, sp, max(rss), ratio)
    report_store(size, plain, raw, disk, raw_disk, lag)


def report_store(size, ours, raw, disk, raw_disk, lag):
    mib = size / 2**20
    o, r = statistics.median(ours), statistics.median(raw)
    # Paired by round, as above.
    slower = statistics.median(t / u - 1 for t, u in zip(ours, raw))
    where = "PostgreSQL" if STORE_URL else "embedded store"
    print(f"(d) {where}, the run of (a) (median of the rounds)")
    print(f"    ingest compressed vs raw: {mib / o:.0f} MiB/s vs {mib / r:.0f} MiB/s "
          f"({100 * slower:.1f}% slower), disk {statistics.median(disk) / size:.3f} B per B "
          f"(raw: {statistics.median(raw_disk) / size:.3f} B per B)")
    if not STORE_URL:
        print(f"    the last blocks were compressed {statistics.median(lag):.2f} s after the run "
              "(the embedded store compresses larger blocks after acknowledging them)")
    print("    targets: <= 0.25 B on disk per B of log, ingest within 20% of raw")


def report_throughput(label, mib, b, o, sp, rss, ratio):
    if label:
        print(f"  {label.strip()}: {100 * ratio:5.1f}% of the throughput without "
              "(median of the rounds' ratios)")
    print(f"    butler -> collector (acked)   {o:7.3f} s  {mib / o:7.0f} MiB/s  {o / b:5.2f}x baseline")
    print("    targets: >= 300 MiB/s, <= 6x baseline")
    print(f"    same with --spool             {sp:7.3f} s  {mib / sp:7.0f} MiB/s  "
          f"{100 * o / sp:5.1f}% of spool-off throughput (target >= 80%)")
    print(f"(c){label} collector peak RSS during (a): {rss:.1f} MiB")


CHILD = r"""
import sys, time
for i in range(int(sys.argv[1])):
    sys.stdout.write(f"{time.time_ns()} {i}\n")
    sys.stdout.flush()
    time.sleep(0.01)
"""


def follow_delays(write_addr, follow_addr, lines, sec=Plain, prefix="lat"):
    """A child writes `lines` lines, 10 ms apart, each starting with its write time, through a
    butler whose output is the collector at `write_addr`; a `logdog tail -f --wait` follower
    of the collector at `follow_addr` prints them. Returns the delays (arrival - write, ms) in
    arrival order; exits if the lines arrived out of order or some are missing."""
    tail = subprocess.Popen([os.path.join(BIN, "logdog"), "--collector",
                             f"{sec.scheme}://{follow_addr}", *sec.client_flags, "tail", "-f",
                             "--wait", f"default/{prefix}/+/stdout"],
                            stdout=subprocess.PIPE, text=True, env=sec.env)
    butler = subprocess.Popen([os.path.join(BIN, "logdog_butler"), "--output",
                               f"{sec.scheme}://{write_addr}", *sec.client_flags,
                               "--prefix", prefix, "run", "--no-echo", "--",
                               sys.executable, "-c", CHILD, str(lines)], env=sec.env)
    delays = []
    for line in tail.stdout:
        now = time.time_ns()
        ts, i = line.split()
        if int(i) != len(delays):
            sys.exit(f"the follower got line {i} where line {len(delays)} was due")
        delays.append((now - int(ts)) / 1e6)
        if len(delays) == lines:
            break
    butler.wait(timeout=120)
    tail.wait(timeout=60)
    if len(delays) != lines:
        sys.exit(f"the follower got {len(delays)} of {lines} lines")
    return delays


def percentiles(delays):
    """(p50, p99, max) of `delays`."""
    d = sorted(delays)
    return d[len(d) // 2], d[min(len(d) - 1, int(len(d) * 0.99))], d[-1]


def latency(work, lines, sec=Plain):
    store = os.path.join(work, "lat-store" + ("-tls" if sec.label else ""))
    col, addr, _ = start_collector(store, sec)
    delays = follow_delays(addr, addr, lines, sec)
    stop(col)
    p50, p99, worst = percentiles(delays)
    print(f"(b){sec.label} write -> follower latency over {len(delays)} lines at 100 lines/s, default flags:")
    print(f"    p50 {p50:.2f} ms   p99 {p99:.2f} ms   max {worst:.2f} ms   (target p99 <= 25 ms)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--file")
    ap.add_argument("--lines", type=int, default=1000)
    ap.add_argument("--tls", action="store_true",
                    help="also measure (a), (b) and (c) with TLS and auth on")
    ap.add_argument("--store-url", metavar="URL",
                    help="store into this PostgreSQL database (postgres://USER@HOST:PORT/DB) "
                         "instead of an embedded store")
    cargo_paths.add_dry_run(ap)
    args = ap.parse_args()
    global STORE_URL
    STORE_URL = args.store_url
    cargo_paths.exit_if_dry_run(args, ["logdog_butler", "logdog_collector", "logdog"])
    cargo_paths.build(["--release", "--quiet", "--bins"])
    work = cargo_paths.work_dir("logdog-bench-")
    try:
        data = args.file or os.path.join(work, "input.txt")
        if not args.file:
            make_text_file(data, args.size_mib * 1024 * 1024)
        secs = [Plain] + ([Secure(work)] if args.tls else [])
        throughput(data, work, args.runs, secs)
        for sec in secs:
            # The throughput runs leave gigabytes of dirty pages of stores already deleted;
            # their write-back would stall the collector's fsyncs in the middle of (b).
            os.sync()
            latency(work, args.lines, sec)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
