#!/usr/bin/env python3
"""Benchmark of the GELF output: throughput over UDP and TCP to a local receiver.

A butler runs `cat F` (F: --lines text lines of about 100 bytes, 200000 by default) with
`--output gelf+udp://…` (gzip, then no compression) and `--output gelf+tcp://…`; a small
receiver in another process counts the messages (UDP: whole datagrams and first chunks; TCP:
NUL bytes). Prints, per case, the butler's wall time, messages/s and MiB/s of log text, what
the receiver got, and what the butler counted as dropped (UDP is best effort: a receiver
that cannot keep up loses datagrams in its socket buffer, which only it can see).

Usage: bench/gelf.py [--lines 200000] [--debug] [--no-build]
Builds the release butler first (the debug one with --debug); honours CARGO_TARGET_DIR.
"""

import argparse
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cargo_paths  # noqa: E402

ROOT = cargo_paths.ROOT


def make_lines(path, n):
    """Writes n lines of about 100 bytes; returns the file's size."""
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    with open(path, "w") as f:
        for i in range(n):
            f.write(f"{i:08d} level=info " + " ".join(words[(i + j) % 8] for j in range(12)) + "\n")
    return os.path.getsize(path)


def udp_receiver(port_q, count, stop):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
    s.bind(("127.0.0.1", 0))
    s.settimeout(0.2)
    port_q.put(s.getsockname()[1])
    n = 0
    while not stop.is_set():
        try:
            d = s.recv(65536)
        except socket.timeout:
            continue
        # A message is a whole datagram, or a chunked one counted at its first chunk.
        if d[:2] != b"\x1e\x0f" or d[10] == 0:
            n += 1
            count.value = n


def tcp_receiver(port_q, count, stop):
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(8)
    ls.settimeout(0.2)
    port_q.put(ls.getsockname()[1])
    n = 0
    while not stop.is_set():
        try:
            c, _ = ls.accept()
        except socket.timeout:
            continue
        with c:
            while True:
                d = c.recv(1 << 20)
                if not d:
                    break
                n += d.count(b"\0")
                count.value = n


def run_case(butler, data, lines, size, transport, query, work):
    q = multiprocessing.Queue()
    count = multiprocessing.Value("q", 0)
    stop = multiprocessing.Event()
    target = udp_receiver if transport == "udp" else tcp_receiver
    p = multiprocessing.Process(target=target, args=(q, count, stop), daemon=True)
    p.start()
    port = q.get(timeout=30)
    result = os.path.join(work, f"result-{transport}.json")
    t = time.perf_counter()
    subprocess.run([butler, "--output", f"gelf+{transport}://127.0.0.1:{port}{query}",
                    "--gelf-host", "bench", "--log-level", "error", "run", "--no-echo",
                    "--no-summary", "--result-path", result, "--", "cat", data], check=True)
    took = time.perf_counter() - t
    # Let the receiver drain what is in flight (it stops counting when nothing more comes).
    last, still = -1, 0
    while still < 5:
        time.sleep(0.1)
        still = still + 1 if count.value == last else 0
        last = count.value
    stop.set()
    p.join(5)
    with open(result) as f:
        out = json.load(f)["output"]
    return {
        "case": f"{transport}{query or ''}",
        "seconds": took,
        "msg_s": lines / took,
        "mib_s": size / 2**20 / took,
        "received": count.value,
        "failed_bytes": out.get("failed_bytes", 0),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=200_000)
    ap.add_argument("--debug", action="store_true", help="use the debug build")
    ap.add_argument("--no-build", action="store_true", help="use the binary as it is")
    cargo_paths.add_dry_run(ap)
    args = ap.parse_args()
    profile = "debug" if args.debug else "release"
    cargo_paths.exit_if_dry_run(args, ["logdog_butler"], profile)
    if not args.no_build:
        cargo_paths.build(["--bin", "logdog_butler"] + ([] if args.debug else ["--release"]))
    butler = cargo_paths.binary("logdog_butler", profile)
    with tempfile.TemporaryDirectory(prefix="logdog-gelf-bench-") as work:
        data = os.path.join(work, "input.txt")
        size = make_lines(data, args.lines)
        print(f"{args.lines} lines, {size / 2**20:.1f} MiB of text, {profile} butler")
        rows = [run_case(butler, data, args.lines, size, t, q, work)
                for t, q in [("udp", ""), ("udp", "?compress=none"), ("tcp", "")]]
    print(f"{'case':<22} {'seconds':>8} {'msg/s':>10} {'MiB/s':>8} {'received':>10} {'dropped bytes':>14}")
    for r in rows:
        print(f"{r['case']:<22} {r['seconds']:>8.2f} {r['msg_s']:>10.0f} {r['mib_s']:>8.1f} "
              f"{r['received']:>10} {r['failed_bytes']:>14}")


if __name__ == "__main__":
    main()
