#!/usr/bin/env python3
"""Benchmark of spool recovery: the memory of `logdog_butler resume` on a big spool.

1. A butler runs `cat F` (F: --size-mib of text, 2048 by default) with `--spool DIR` towards
   a collector that is down, and gives up waiting after --flush-timeout 1s: everything it
   read is left in the spool.
2. A collector is started and `logdog_butler resume --spool DIR` uploads the spool.
Prints the spool's size, resume's wall time and throughput, and resume's peak RSS
(VmHWM, reported by the butler itself). Target: peak RSS < 64 MiB whatever the spool's size.

The spool-on vs spool-off throughput comparison is in bench/collector.py.

Usage: bench/spool.py [--size-mib 2048] [--keep]
Builds the release binaries first.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cargo_paths  # noqa: E402

ROOT = cargo_paths.ROOT
BIN = cargo_paths.bin_dir()
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from whole_process import make_text_file  # noqa: E402
from collector import start_collector, stop  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dir_size(path):
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    cargo_paths.add_dry_run(ap)
    args = ap.parse_args()
    cargo_paths.exit_if_dry_run(args, ["logdog_butler", "logdog_collector"])
    cargo_paths.build(["--release", "--bins"])
    work = cargo_paths.work_dir("logdog-spool-bench-")
    try:
        data = os.path.join(work, "input.txt")
        make_text_file(data, args.size_mib << 20)
        spool = os.path.join(work, "spool")
        port = free_port()
        t = time.perf_counter()
        subprocess.run([os.path.join(BIN, "logdog_butler"), "--output", f"grpc://127.0.0.1:{port}",
                        "--spool", spool, "--flush-timeout", "1s", "--prefix", "spooled",
                        "--log-level", "error", "run", "--no-echo", "--no-summary", "--", "cat", data],
                       check=True)
        fill = time.perf_counter() - t
        size = dir_size(spool)
        print(f"spool filled with the collector down: {size / 2**20:.0f} MiB in {fill:.1f} s")

        col, addr = start_collector(os.path.join(work, "store"))
        result = os.path.join(work, "resume.json")
        t = time.perf_counter()
        code = subprocess.run([os.path.join(BIN, "logdog_butler"), "--output", f"grpc://{addr}",
                               "--spool", spool, "--flush-timeout", "600s", "resume",
                               "--result-path", result]).returncode
        took = time.perf_counter() - t
        stop(col)
        with open(result) as f:
            r = json.load(f)
        rss = r["peak_rss_kib"] / 1024
        print(f"resume: exit {code}, drained {r['drained']}, {r['output']['sent_bundles']} bundles, "
              f"{took:.1f} s ({size / 2**20 / took:.0f} MiB/s)")
        print(f"resume peak RSS: {rss:.1f} MiB (target < 64 MiB)")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
