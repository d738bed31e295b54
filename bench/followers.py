#!/usr/bin/env python3
"""Benchmark: does following a busy stream slow its writer?

The same write, `logdog_butler --output grpc://... run --no-echo -- cat F` (F: 256 MiB of text)
to a fresh `logdog_collector --http --tail`, is timed until every byte is acknowledged (the
butler exits only then), with no followers and with 100 concurrent followers of the stream
being written, attached before the big write starts (the child writes a first line and waits
for a go-file, so start-up costs stay out of both cases): tail-server clients (`stream PATH`, from byte 0) and web viewer event streams
(`/api/events/PATH?from=0`), all reading as fast as they can. Runs alternate between the two
cases so that drift on the machine hits both. Prints the writer's throughput in both cases, their
ratio, and when the followers had everything.

The followers run in one process, under `nice -n 19`: on a real deployment they are browsers
and `nc` on other machines, and here their own CPU (the client side of 100 sockets) must not be
billed to the collector. The collector serves them as usual.

Usage: bench/followers.py [--size-mib 256] [--runs 3] [--followers 100] [--sse 20] [--file F]
Builds the release binaries first (into $CARGO_TARGET_DIR, default target/).
"""

import argparse
import socket
import json
import os
import shutil
import statistics
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

# The followers: waits for the stream to be listed, opens the connections, prints READY, reads
# every socket to its end and prints what each got.
FOLLOWERS = r"""
import json, selectors, socket, sys, time
tail, http, path, n_tail, n_sse = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
def addr(a):
    h, p = a.rsplit(":", 1)
    return h, int(p)
project_prefix = path.split("/+/")[0]
while True:
    s = socket.create_connection(addr(tail))
    s.sendall(f"list {project_prefix}\n".encode())
    got = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        got += b
    s.close()
    if (path + "\n").encode() in got:
        break
    time.sleep(0.002)
start = time.perf_counter()
sel = selectors.DefaultSelector()
for i in range(n_tail + n_sse):
    s = socket.create_connection(addr(tail if i < n_tail else http))
    if i < n_tail:
        s.sendall(f"stream {path}\n".encode())
    else:
        s.sendall(f"GET /api/events/{path}?from=0 HTTP/1.1\r\nHost: bench\r\n"
                  "Accept: text/event-stream\r\nConnection: close\r\n\r\n".encode())
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ, {"kind": "tail" if i < n_tail else "sse", "bytes": 0, "done": None})
print("READY", flush=True)
buf = bytearray(1 << 20)
left = n_tail + n_sse
done = []
while left:
    for key, _ in sel.select():
        n = key.fileobj.recv_into(buf)
        if n:
            key.data["bytes"] += n
            continue
        sel.unregister(key.fileobj)
        key.fileobj.close()
        key.data["done"] = time.perf_counter() - start
        done.append(key.data)
        left -= 1
print(json.dumps(done), flush=True)
"""


def start_collector(data):
    proc = subprocess.Popen(
        [os.path.join(BIN, "logdog_collector"), "--listen", "127.0.0.1:0", "--data", data,
         "--http", "127.0.0.1:0", "--tail", "127.0.0.1:0", "--log-level", "warn"],
        stdout=subprocess.PIPE, text=True)
    addrs = {}
    for _ in range(3):
        k, v = proc.stdout.readline().strip().split("=", 1)
        addrs[k] = v
    return proc, addrs


def stream_listed(tail_addr, path):
    """Whether the tail server lists `path` yet."""
    host, port = tail_addr.rsplit(":", 1)
    with socket.create_connection((host, int(port))) as s:
        s.sendall(f"list {path.split('/+/')[0]}\n".encode())
        got = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            got += b
    return (path + "\n").encode() in got


def one_run(data, work, i, followers, sse):
    """One timed write. The writer starts, writes one line and waits for a go-file; once its
    stream exists (and the followers, if any, are connected and have that line), the go-file
    is created and the clock runs until the butler exits: start-up costs are left out of both
    cases alike."""
    store = os.path.join(work, f"store{i}-{followers}")
    col, addrs = start_collector(store)
    prefix = f"bench{i}"
    path = f"default/{prefix}/+/stdout"
    go = os.path.join(work, f"go{i}-{followers}")
    butler = subprocess.Popen([os.path.join(BIN, "logdog_butler"), "--output",
                               f"grpc://{addrs['LOGDOG_COLLECTOR']}", "--prefix", prefix,
                               "--max-buffer-age", "10ms", "run", "--no-echo", "--no-summary", "--",
                               "sh", "-c", 'echo start; while [ ! -e "$1" ]; do sleep 0.005; done; cat "$2"',
                               "sh", go, data])
    while not stream_listed(addrs["LOGDOG_TAIL"], path):
        time.sleep(0.01)
    fol = None
    ready_after = None
    if followers:
        fol = subprocess.Popen(
            ["nice", "-n", "19", sys.executable, "-c", FOLLOWERS, addrs["LOGDOG_TAIL"],
             addrs["LOGDOG_HTTP"], path, str(followers - sse), str(sse)],
            stdout=subprocess.PIPE, text=True)
        if fol.stdout.readline().strip() != "READY":
            sys.exit("followers did not start")
        ready_after = 0.0
    t = time.perf_counter()
    open(go, "w").close()
    if butler.wait() != 0:
        sys.exit("butler failed")
    wall = time.perf_counter() - t
    result = None
    if fol:
        result = json.loads(fol.stdout.readline())
        fol.wait(timeout=600)
    col.terminate()
    col.wait(timeout=60)
    shutil.rmtree(store, ignore_errors=True)
    return wall, ready_after, result


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--followers", type=int, default=100)
    ap.add_argument("--sse", type=int, default=20, help="how many of the followers use the web viewer's event stream")
    ap.add_argument("--file")
    cargo_paths.add_dry_run(ap)
    args = ap.parse_args()
    cargo_paths.exit_if_dry_run(args, ["logdog_butler", "logdog_collector", "logdog"])
    cargo_paths.build(["--release", "--quiet", "--bins"])
    work = cargo_paths.work_dir("logdog-bench-")
    try:
        data = args.file or os.path.join(work, "input.txt")
        if not args.file:
            make_text_file(data, args.size_mib * 1024 * 1024)
        size = os.path.getsize(data)
        mib = size / 2**20
        subprocess.run(["cat", data], stdout=subprocess.DEVNULL, check=True)
        alone, followed, ready, finish = [], [], [], []
        for i in range(args.runs):
            order = [0, args.followers] if i % 2 == 0 else [args.followers, 0]
            for n in order:
                wall, ready_after, result = one_run(data, work, i, n, args.sse)
                if n == 0:
                    alone.append(wall)
                    print(f"  run {i}: no followers     {wall:7.3f} s  {mib / wall:6.0f} MiB/s", flush=True)
                    continue
                followed.append(wall)
                ready.append(ready_after)
                tails = [r for r in result if r["kind"] == "tail"]
                # The stream is the writer's first line, then the file.
                want = size + len(b"start\n")
                short = [r["bytes"] for r in tails if r["bytes"] != want]
                if short:
                    sys.exit(f"a tail follower got {short[0]} bytes, not {want}")
                last = max(r["done"] for r in result)
                finish.append(last + ready_after)
                print(f"  run {i}: {n} followers  {wall:7.3f} s  {mib / wall:6.0f} MiB/s"
                      f"   (all followers had everything {last + ready_after:.2f} s after the start)",
                      flush=True)
        a, f = statistics.median(alone), statistics.median(followed)
        print(f"{mib:.0f} MiB of text, butler -> collector until acknowledged, median of {args.runs} runs")
        print(f"    no followers      {a:7.3f} s  {mib / a:6.0f} MiB/s")
        print(f"    {args.followers} followers     {f:7.3f} s  {mib / f:6.0f} MiB/s"
              f"   ({args.followers - args.sse} tail clients, {args.sse} event streams)")
        print(f"    throughput with followers / without: {a / f:.3f}  (target >= 0.90)")
        print(f"    followers had every byte {statistics.median(finish):.2f} s after the write started (median)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
