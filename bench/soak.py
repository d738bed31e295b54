#!/usr/bin/env python3
"""Soak: normal and hostile traffic together against a butler and a collector, with their
resources sampled over time.

A `logdog_collector` (gRPC, web viewer, tail server) and a `logdog_butler serve` shipping to it
run for --seconds under:
  normal   writers opening text streams on the butler's socket and writing lines, one stream
           after another, each checked byte for byte at the end through the collector;
  hostile  clients that connect to the butler's socket and say nothing, or announce a 1 MiB
           handshake header and stall; tail-server clients that never send a request, and
           followers of an open stream that drop their connection; viewer event streams and raw
           downloads that read a little and then stop reading; all dropped and opened again in
           rounds.
Then the load stops and sampling goes on for --quiet seconds. Every 0.5 s the RSS, open file
descriptors and threads of both processes go to DIR/soak.csv, drawn in DIR/soak.svg.

With --check, exits 1 unless every resource comes back near its baseline (measured before the
load) once the load has stopped: descriptors within 16, threads within 8, RSS within 96 MiB;
and unless every normal stream arrived intact. The test suite runs a short version
(tests/soak.rs).

Usage: bench/soak.py [--seconds 60] [--quiet 20] [--out DIR] [--check]
                     [--butler PATH --collector PATH --logdog PATH]
Without paths, uses the release binaries ($CARGO_TARGET_DIR or target/, release/), building them.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cargo_paths  # noqa: E402

ROOT = cargo_paths.ROOT
MAGIC = b"BTLR1\x1e"
SAMPLE_EVERY = 0.5
FD_SLACK, THREAD_SLACK, RSS_SLACK_KIB = 16, 8, 96 * 1024


def uvarint(n):
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def handshake(name):
    header = json.dumps({"name": name, "type": "text"}).encode()
    return MAGIC + uvarint(len(header)) + header


def usage(pid):
    """(rss KiB, fds, threads) of a process, or None once it is gone."""
    try:
        rss = threads = 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("Threads:"):
                    threads = int(line.split()[1])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        return rss, fds, threads
    except (FileNotFoundError, ProcessLookupError):
        return None


class Sampler(threading.Thread):
    def __init__(self, procs):
        super().__init__(daemon=True)
        self.procs = procs  # name -> pid
        self.rows = []  # (t, phase, name, rss, fds, threads)
        self.phase = "baseline"
        self.start_time = time.monotonic()
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            self.sample()
            self.done.wait(SAMPLE_EVERY)

    def sample(self):
        t = time.monotonic() - self.start_time
        for name, pid in self.procs.items():
            u = usage(pid)
            if u:
                self.rows.append((t, self.phase, name) + u)


def http_get(addr, path, read=4096):
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(f"GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n".encode())
    try:
        s.recv(read)
    except OSError:
        pass
    return s


def connect(addr):
    host, port = addr.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


def normal_writer(sock_path, name, lines, stop, written):
    """Writes streams NAME-0, NAME-1, ... of `lines` lines each until `stop`."""
    k = 0
    while not stop.is_set():
        stream = f"{name}-{k}"
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(sock_path)
        s.sendall(handshake(stream))
        data = "".join(f"{stream} line {i} {'x' * (i % 80)}\n" for i in range(lines)).encode()
        s.sendall(data)
        s.close()
        written[stream] = data
        k += 1
        stop.wait(0.25)  # a steady rate: four streams a second per writer


def hostile_round(sock_path, http, tail, open_path, held):
    """Opens a round of hostile clients, dropping the previous round's."""
    for s in held:
        try:
            s.close()
        except OSError:
            pass
    held.clear()
    for _ in range(100):  # silent on the butler's socket
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(sock_path)
            held.append(s)
        except OSError:
            s.close()
    for _ in range(20):  # a 1 MiB header announced, then nothing
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(sock_path)
            s.sendall(MAGIC + uvarint(1 << 20) + b"{")
            held.append(s)
        except OSError:
            s.close()
    for _ in range(100):  # tail server: no request
        try:
            held.append(connect(tail))
        except OSError:
            pass
    for _ in range(50):  # tail server: a follower that goes away at once
        try:
            s = connect(tail)
            s.sendall(f"stream {open_path}\n".encode())
            s.close()
        except OSError:
            pass
    for _ in range(30):  # slow viewer readers
        for path in (f"/api/events/{open_path}?from=0", f"/raw/{open_path}"):
            try:
                held.append(http_get(http, path))
            except OSError:
                pass


def read_stdout_line(proc, prefix):
    line = proc.stdout.readline().strip()
    if not line.startswith(prefix):
        sys.exit(f"expected {prefix}..., got {line!r}")
    return line[len(prefix):]


def svg(rows, path):
    """Three panels (RSS MiB, fds, threads) over time, one line per process."""
    names = sorted({r[2] for r in rows})
    colors = {n: c for n, c in zip(names, ["#1f77b4", "#d62728", "#2ca02c"])}
    metrics = [("RSS (MiB)", lambda r: r[3] / 1024), ("open fds", lambda r: r[4]),
               ("threads", lambda r: r[5])]
    w, h, pad = 900, 220, 50
    tmax = max((r[0] for r in rows), default=1) or 1
    load = [r[0] for r in rows if r[1] == "load"]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h * 3}" '
             f'font-family="sans-serif" font-size="12">']
    for k, (title, f) in enumerate(metrics):
        y0 = k * h
        vmax = max((f(r) for r in rows), default=1) or 1
        if load:
            x1 = pad + (min(load) / tmax) * (w - 2 * pad)
            x2 = pad + (max(load) / tmax) * (w - 2 * pad)
            parts.append(f'<rect x="{x1:.1f}" y="{y0 + 20}" width="{x2 - x1:.1f}" '
                         f'height="{h - 50}" fill="#f3e6c8"/>')
        parts.append(f'<text x="{pad}" y="{y0 + 15}">{title} (max {vmax:.0f}; shaded: load)'
                     f'</text>')
        parts.append(f'<line x1="{pad}" y1="{y0 + h - 30}" x2="{w - pad}" y2="{y0 + h - 30}" '
                     f'stroke="#888"/>')
        for n in names:
            pts = " ".join(
                f"{pad + (r[0] / tmax) * (w - 2 * pad):.1f},"
                f"{y0 + h - 30 - (f(r) / vmax) * (h - 60):.1f}"
                for r in rows if r[2] == n)
            parts.append(f'<polyline fill="none" stroke="{colors[n]}" stroke-width="1.5" '
                         f'points="{pts}"/>')
        for i, n in enumerate(names):
            parts.append(f'<text x="{w - pad - 160 + i * 80}" y="{y0 + 15}" '
                         f'fill="{colors[n]}">{n}</text>')
        parts.append(f'<text x="{w - pad}" y="{y0 + h - 15}" text-anchor="end">'
                     f'{tmax:.0f} s</text>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts))


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--quiet", type=float, default=20)
    ap.add_argument("--out")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--butler")
    ap.add_argument("--collector")
    ap.add_argument("--logdog")
    cargo_paths.add_dry_run(ap)
    args = ap.parse_args()
    cargo_paths.exit_if_dry_run(args, ["logdog_butler", "logdog_collector", "logdog"])
    if not (args.butler and args.collector and args.logdog):
        cargo_paths.build(["--release", "--workspace", "--bins"])
        bin_dir = cargo_paths.bin_dir()
        args.butler = args.butler or os.path.join(bin_dir, "logdog_butler")
        args.collector = args.collector or os.path.join(bin_dir, "logdog_collector")
        args.logdog = args.logdog or os.path.join(bin_dir, "logdog")
    args.butler, args.collector, args.logdog = (
        os.path.abspath(p) for p in (args.butler, args.collector, args.logdog))
    out = args.out or tempfile.mkdtemp(prefix="soak-")
    os.makedirs(out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="soak-work-")
    env = dict(os.environ)
    for v in ("RUST_LOG", "LOGDOG_STREAM_SERVER_PATH", "LOGDOG_NAMESPACE"):
        env.pop(v, None)

    collector = subprocess.Popen(
        [args.collector, "--listen", "127.0.0.1:0", "--data", os.path.join(work, "data"),
         "--http", "127.0.0.1:0", "--tail", "127.0.0.1:0", "--log-level", "error"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    addr = read_stdout_line(collector, "LOGDOG_COLLECTOR=")
    http = tail = None
    for _ in range(2):
        line = collector.stdout.readline().strip()
        if line.startswith("LOGDOG_HTTP="):
            http = line.split("=", 1)[1]
        elif line.startswith("LOGDOG_TAIL="):
            tail = line.split("=", 1)[1]
    butler = subprocess.Popen(
        [args.butler, "--output", f"grpc://{addr}", "--prefix", "soak", "--max-buffer-age",
         "200ms", "--log-level", "error", "serve"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=work, env=env)
    sock_path = read_stdout_line(butler, "LOGDOG_STREAM_SERVER_PATH=unix:")
    failures = []
    try:
        # An open stream that hostile followers and viewers attach to, with data in it.
        keep = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        keep.connect(sock_path)
        keep.sendall(handshake("open"))
        keep.sendall(b"".join(b"open line %d\n" % i for i in range(20000)))
        open_path = "default/soak/+/open"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            r = subprocess.run([args.logdog, "--collector", addr, "ls", "default/soak"],
                               capture_output=True, text=True)
            if "soak/+/open" in r.stdout:
                break
            time.sleep(0.1)
        else:
            sys.exit("the open stream never reached the collector")

        # Warm up (thread pools, connections), then the baseline.
        stop = threading.Event()
        warm = {}
        t = threading.Thread(target=normal_writer, args=(sock_path, "warm", 200, stop, warm))
        t.start()
        time.sleep(1)
        stop.set()
        t.join()
        time.sleep(2)
        sampler = Sampler({"butler": butler.pid, "collector": collector.pid})
        sampler.start()
        time.sleep(2)
        base = {}
        for name, pid in sampler.procs.items():
            base[name] = usage(pid)

        sampler.phase = "load"
        stop = threading.Event()
        written = {}
        writers = [threading.Thread(target=normal_writer,
                                    args=(sock_path, f"w{i}", 500, stop, written))
                   for i in range(4)]
        for w in writers:
            w.start()
        held = []
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            hostile_round(sock_path, http, tail, open_path, held)
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
        stop.set()
        for w in writers:
            w.join()
        hostile_round(sock_path, http, tail, open_path, held)
        for s in held:
            s.close()
        held.clear()
        sampler.phase = "quiet"

        # Every normal stream arrives intact.
        streams = dict(warm)
        streams.update(written)
        deadline = time.monotonic() + 60
        pending = dict(streams)
        while pending and time.monotonic() < deadline:
            for name, data in list(pending.items()):
                r = subprocess.run(
                    [args.logdog, "--collector", addr, "cat", f"default/soak/+/{name}"],
                    capture_output=True)
                if r.returncode == 0 and r.stdout == data:
                    del pending[name]
            if pending:
                time.sleep(0.5)
        if pending:
            failures.append(f"{len(pending)} of {len(streams)} normal streams did not arrive "
                            f"intact, e.g. {sorted(pending)[:3]}")

        # Resources come back.
        deadline = time.monotonic() + args.quiet
        back = {}
        while time.monotonic() < deadline:
            back = {}
            for name, pid in sampler.procs.items():
                u = usage(pid)
                b = base[name]
                back[name] = (u, u and u[1] <= b[1] + FD_SLACK and u[2] <= b[2] + THREAD_SLACK
                              and u[0] <= b[0] + RSS_SLACK_KIB)
            if args.check and all(ok for _, ok in back.values()):
                break
            time.sleep(SAMPLE_EVERY)
        sampler.done.set()
        sampler.join()
        for name, (u, ok) in back.items():
            b = base[name]
            line = (f"{name:9} baseline rss {b[0] / 1024:.1f} MiB, {b[1]} fds, {b[2]} threads; "
                    f"after {u[0] / 1024:.1f} MiB, {u[1]} fds, {u[2]} threads" if u else
                    f"{name:9} is gone")
            print(line + ("" if ok else "  NOT BACK"))
            if not ok:
                failures.append(f"{name} did not come back to its baseline")
        peak = {}
        for r in sampler.rows:
            p = peak.setdefault(r[2], [0, 0, 0])
            for i in range(3):
                p[i] = max(p[i], r[3 + i])
        for name, p in sorted(peak.items()):
            print(f"{name:9} peak rss {p[0] / 1024:.1f} MiB, {p[1]} fds, {p[2]} threads")
        print(f"normal streams: {len(streams)}, load {args.seconds:.0f} s")
        with open(os.path.join(out, "soak.csv"), "w") as f:
            f.write("seconds,phase,process,rss_kib,fds,threads\n")
            for r in sampler.rows:
                f.write(f"{r[0]:.2f},{r[1]},{r[2]},{r[3]},{r[4]},{r[5]}\n")
        svg(sampler.rows, os.path.join(out, "soak.svg"))
        print(f"wrote {os.path.join(out, 'soak.csv')} and {os.path.join(out, 'soak.svg')}")
        keep.close()
    finally:
        for p in (butler, collector):
            p.terminate()
        for p in (butler, collector):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        subprocess.run(["rm", "-rf", work])
    if failures:
        for f in failures:
            print("FAILED:", f)
        if args.check:
            sys.exit(1)


if __name__ == "__main__":
    main()
