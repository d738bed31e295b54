#!/usr/bin/env python3
"""Collectors on PostgreSQL: one against two on one database.

(a) throughput: `logdog_butler --output grpc://A run --no-echo -- cat F` (F: text) until every
    byte is acknowledged, with one collector on `--store postgres://...`, then with two
    collectors on the same database and `--output grpc://A,B`; beside it, `cat F | cat` and
    one collector on the embedded store, measured in the same run. Every run's stream is read
    back whole (`logdog cat`) through the last collector and must equal F.
(b) follower latency across collectors: a child writes 1,000 lines, 10 ms apart, each carrying
    its write time, through a butler whose output is collector A only; a `logdog tail -f`
    follower connected to collector B prints them; p50 and p99 of (arrival - write).

Each measurement gets a fresh database, dropped afterwards. The PostgreSQL server is started
with scripts/pg-test-server in a temporary directory and stopped at the end, unless --postgres
names one (a URL whose user may CREATE DATABASE). On a machine with few cores the butler, the
collectors, PostgreSQL and the follower share them: there the figures show that the setup works,
not what it scales to.

Usage: bench/scaleout.py [--size-mib 128] [--runs 3] [--file PATH] [--lines 1000]
                         [--postgres URL]
Builds the release binaries first (into $CARGO_TARGET_DIR, default target/; --dry-run: only
print where they are).
"""

import argparse
import glob
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cargo_paths  # noqa: E402
from collector import follow_delays, percentiles, start_collector, stop  # noqa: E402
from whole_process import make_text_file  # noqa: E402

ROOT = cargo_paths.ROOT
BIN = cargo_paths.bin_dir()
PG_TEST_SERVER = os.path.join(ROOT, "scripts", "pg-test-server")
# Generous: a run that takes longer is broken, not slow.
RUN_TIMEOUT = 900


def psql_binary():
    """psql on PATH, or the newest under /usr/lib/postgresql/*/bin."""
    found = shutil.which("psql")
    if found:
        return found
    versions = glob.glob("/usr/lib/postgresql/*/bin/psql")
    if not versions:
        sys.exit("psql is neither on PATH nor under /usr/lib/postgresql/*/bin "
                 "(apt-get install postgresql-client)")
    return max(versions, key=lambda p: [int(x) for x in p.split("/")[4].split(".")
                                        if x.isdigit()])


def psql(url, sql):
    """Runs `sql` on the database at `url`; returns its unaligned output."""
    return subprocess.run([psql_binary(), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                           "-d", url, "-c", sql], check=True, capture_output=True,
                          text=True).stdout.strip()


def with_database(url, name):
    """`url` with its database (the path after the host) replaced by `name`."""
    main, sep, query = url.partition("?")
    scheme_end = main.find("://") + 3 if "://" in main else 0
    slash = main.find("/", scheme_end)
    authority = main if slash < 0 else main[:slash]
    return f"{authority}/{name}{sep}{query}"


class Databases:
    """Fresh databases on the server at `server` (a URL whose user may CREATE DATABASE)."""

    def __init__(self, server):
        self.server = server
        self.n = 0

    def create(self, hint):
        self.n += 1
        name = f"scaleout_{hint}_{os.getpid()}_{self.n}"
        psql(self.server, f"CREATE DATABASE {name}")
        return name, with_database(self.server, name)

    def size(self, name):
        return int(psql(self.server, f"SELECT pg_database_size('{name}')"))

    def drop(self, name):
        """Drops database `name`, even with connections left (PostgreSQL 13 or later); a
        failure is only reported, so that it does not hide the one that led here."""
        try:
            psql(self.server, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        except subprocess.CalledProcessError as e:
            print(f"cannot drop database {name}: {e.stderr.strip()}", file=sys.stderr)


def start_pg_collector(store, work, name):
    """`logdog_collector --store STORE` on a free port, running in work/NAME; returns (process,
    address)."""
    cwd = os.path.join(work, name)
    os.makedirs(cwd, exist_ok=True)
    proc = subprocess.Popen(
        [os.path.join(BIN, "logdog_collector"), "--listen", "127.0.0.1:0", "--store", store,
         "--log-level", "warn"],
        stdout=subprocess.PIPE, text=True, cwd=cwd)
    line = proc.stdout.readline().strip()
    if not line.startswith("LOGDOG_COLLECTOR="):
        proc.kill()
        sys.exit(f"collector on {store} did not start: {line!r}")
    return proc, line.split("=", 1)[1]


def stop_clean(proc, what):
    """Stops a collector with SIGTERM; exits unless it exits 0."""
    stop(proc)
    if proc.returncode != 0:
        sys.exit(f"{what} exited with status {proc.returncode} on SIGTERM")


def file_digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def read_back(addr, prefix):
    """The SHA-256 and the length of `logdog cat default/PREFIX/+/stdout` through `addr`."""
    proc = subprocess.Popen([os.path.join(BIN, "logdog"), "--collector", addr, "cat",
                             f"default/{prefix}/+/stdout"], stdout=subprocess.PIPE)
    h, n = hashlib.sha256(), 0
    while chunk := proc.stdout.read(1 << 20):
        h.update(chunk)
        n += len(chunk)
    if proc.wait(timeout=RUN_TIMEOUT) != 0:
        sys.exit(f"logdog cat through {addr} failed")
    return h.hexdigest(), n


def butler_cat(outputs, prefix, data):
    """`logdog_butler --output grpc://OUTPUTS --prefix PREFIX run --no-echo -- cat DATA`; returns
    its wall time (it exits once every byte is acknowledged)."""
    t = time.perf_counter()
    subprocess.run([os.path.join(BIN, "logdog_butler"), "--output", "grpc://" + ",".join(outputs),
                    "--prefix", prefix, "run", "--no-echo", "--no-summary", "--", "cat", data],
                   check=True, timeout=RUN_TIMEOUT)
    return time.perf_counter() - t


def pg_run(dbs, work, data, want, collectors, i):
    """One butler run to `collectors` collectors on a fresh database; returns (seconds, bytes
    of the database). The stream is read back through the last collector and checked."""
    name, url = dbs.create(f"c{collectors}")
    procs = []
    try:
        before = dbs.size(name)
        addrs = []
        for c in range(collectors):
            proc, addr = start_pg_collector(url, work, f"{name}-{c}")
            procs.append(proc)
            addrs.append(addr)
        prefix = f"scaleout{collectors}x{i}"
        took = butler_cat(addrs, prefix, data)
        got = read_back(addrs[-1], prefix)
        if got != want:
            sys.exit(f"{collectors} collector(s), run {i}: read back through {addrs[-1]}: "
                     f"{got[1]} bytes, sha256 {got[0]}; want {want[1]} bytes, {want[0]}")
        for c, p in enumerate(procs):
            stop_clean(p, f"collector {c} of {collectors} on PostgreSQL")
        procs = []
        return took, dbs.size(name) - before
    finally:
        for p in procs:
            p.kill()
            p.wait()
        dbs.drop(name)


def embedded_run(work, data, want, i):
    """The same run to one collector on the embedded store (--data), for comparison."""
    store = os.path.join(work, f"embedded{i}")
    col, addr, _ = start_collector(store)
    try:
        prefix = f"embedded{i}"
        took = butler_cat([addr], prefix, data)
        got = read_back(addr, prefix)
        if got != want:
            sys.exit(f"embedded store, run {i}: read back {got[1]} bytes, sha256 {got[0]}; "
                     f"want {want[1]} bytes, {want[0]}")
    finally:
        stop(col)
        shutil.rmtree(store, ignore_errors=True)
    return took


def throughput(dbs, work, data, runs):
    size = os.path.getsize(data)
    want = (file_digest(data), size)
    base, embedded, one, two, one_db, two_db = [], [], [], [], [], []
    for i in range(runs):
        t = time.perf_counter()
        subprocess.run(f"cat '{data}' | cat > /dev/null", shell=True, check=True)
        base.append(time.perf_counter() - t)
        os.sync()
        embedded.append(embedded_run(work, data, want, i))
        os.sync()
        took, db = pg_run(dbs, work, data, want, 1, i)
        one.append(took)
        one_db.append(db)
        os.sync()
        took, db = pg_run(dbs, work, data, want, 2, i)
        two.append(took)
        two_db.append(db)
    mib = size / 2**20
    print(f"(a) {mib:.0f} MiB of text, median of {runs} runs; every run read back whole and "
          "equal to the file")
    print(f"    {'':40} {'time':>9} {'MiB/s':>7}  database growth per byte of log")
    rows = [("cat F | cat", base, None), ("one collector, embedded store", embedded, None),
            ("one collector on PostgreSQL", one, one_db),
            ("two collectors on one database, A,B", two, two_db)]
    for label, times, grew in rows:
        m = statistics.median(times)
        extra = f"  {statistics.median(grew) / size:.2f}" if grew else ""
        print(f"    {label:40} {m:7.3f} s {mib / m:7.0f}{extra}")
    print(f"    two collectors / one: {statistics.median(one) / statistics.median(two):.2f}x "
          "the throughput")


def latency(dbs, work, lines):
    name, url = dbs.create("lat")
    procs = []
    try:
        a, addr_a = start_pg_collector(url, work, f"{name}-a")
        procs.append(a)
        b, addr_b = start_pg_collector(url, work, f"{name}-b")
        procs.append(b)
        delays = follow_delays(addr_a, addr_b, lines)
        for what, p in zip("AB", procs):
            stop_clean(p, f"collector {what}")
        procs = []
    finally:
        for p in procs:
            p.kill()
            p.wait()
        dbs.drop(name)
    p50, p99, worst = percentiles(delays)
    print(f"(b) written through collector A, followed on collector B (`logdog tail -f`), "
          f"{lines} lines at 100 lines/s, every line in order:")
    print(f"    p50 {p50:.2f} ms   p99 {p99:.2f} ms   max {worst:.2f} ms   (target p99 <= 50 ms)")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--file", help="the text to send (default: --size-mib of generated text)")
    ap.add_argument("--lines", type=int, default=1000)
    ap.add_argument("--postgres", metavar="URL",
                    help="a PostgreSQL server to use instead of starting one with "
                         "scripts/pg-test-server (its user must be allowed to CREATE DATABASE)")
    cargo_paths.add_dry_run(ap)
    args = ap.parse_args()
    if args.dry_run:
        print(f"postgres: {args.postgres or PG_TEST_SERVER + ' start (a temporary directory)'}")
    cargo_paths.exit_if_dry_run(args, ["logdog_butler", "logdog_collector", "logdog"])
    cargo_paths.build(["--release", "--quiet", "--bins"])
    work = cargo_paths.work_dir("logdog-scaleout-")
    # Short, and readable by the unprivileged user the server runs as when we are root.
    pg_dir = None if args.postgres else tempfile.mkdtemp(prefix="logdog-pg-")
    try:
        if pg_dir:
            server = subprocess.run([PG_TEST_SERVER, "start", pg_dir], check=True,
                                    stdout=subprocess.PIPE, text=True).stdout.strip()
        else:
            server = args.postgres
        dbs = Databases(server)
        cores = os.cpu_count() or 1
        print(f"PostgreSQL: {psql(server, 'SHOW server_version')} at {server}")
        print(f"{cores} cores: the butler, the collectors, PostgreSQL and the follower share "
              "them" + ("; on so few cores this is a correctness run, not a measure of "
                        "scale-out" if cores <= 2 else ""))
        data = args.file or os.path.join(work, "input.txt")
        if not args.file:
            make_text_file(data, args.size_mib * 1024 * 1024)
        throughput(dbs, work, data, args.runs)
        os.sync()
        latency(dbs, work, args.lines)
    finally:
        if pg_dir:
            subprocess.run([PG_TEST_SERVER, "stop", pg_dir], stdout=subprocess.DEVNULL)
            shutil.rmtree(pg_dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
