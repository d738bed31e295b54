#!/usr/bin/env python3
"""Whole-process benchmark of `logdog_butler run --no-echo -- cat F`.

Measures wall time and peak RSS of the butler capturing a large text file to the `directory`
and `null` outputs, next to the baseline `cat F | cat > /dev/null`, all in one run so the ratios
compare like with like on the same machine and page cache.

Usage: bench/whole_process.py [--size-mib 512] [--runs 5] [--file PATH] [--keep]
Builds the release binary first (into $CARGO_TARGET_DIR, default target/; --dry-run: only
print where it is).
"""

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cargo_paths  # noqa: E402

ROOT = cargo_paths.ROOT
BUTLER = cargo_paths.binary("logdog_butler")


def make_text_file(path, size):
    """Writes `size` bytes of build-log-like text: lines of 0-200 bytes, some UTF-8."""
    rng = random.Random(1)
    words = [b"compiling", b"crate", b"warning:", b"error[E0308]", b"src/main.rs:12:5",
             b"0123456789", b"\xc3\xa9t\xc3\xa9", b"--", b"ok", b"test", b"result:"]
    block = []
    for _ in range(20000):
        n = rng.randint(0, 24)
        block.append(b" ".join(rng.choice(words) for _ in range(n)) + b"\n")
    block = b"".join(block)
    with open(path, "wb") as f:
        written = 0
        while written < size:
            chunk = block[: size - written]
            f.write(chunk)
            written += len(chunk)


def measure(argv, shell=False, result=None):
    """Runs a command; returns (wall seconds, the butler's peak RSS in KiB or None).

    The butler reports its own peak RSS (VmHWM) in its --result-path file. (getrusage of a
    child would include this Python process's memory, which a forked child inherits.)"""
    start = time.perf_counter()
    code = subprocess.run(argv, shell=shell, stdout=subprocess.DEVNULL).returncode
    wall = time.perf_counter() - start
    if code != 0:
        sys.exit(f"benchmark command failed ({code}): {argv}")
    rss = None
    if result:
        with open(result) as f:
            rss = json.load(f).get("peak_rss_kib")
    return wall, rss


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--file", help="use this input file instead of generating one")
    ap.add_argument("--keep", action="store_true", help="keep the generated input file")
    cargo_paths.add_dry_run(ap)
    args = ap.parse_args()
    cargo_paths.exit_if_dry_run(args, ["logdog_butler"])

    cargo_paths.build(["--release", "--quiet", "--bin", "logdog_butler"])
    work = tempfile.mkdtemp(prefix="logdog-bench-")
    data = args.file or os.path.join(work, "input.txt")
    if not args.file:
        make_text_file(data, args.size_mib * 1024 * 1024)
    size = os.path.getsize(data)
    out_dir = os.path.join(work, "out")
    result = os.path.join(work, "result.json")

    cases = {
        "baseline: cat F | cat > /dev/null": lambda: measure(f"cat '{data}' | cat > /dev/null", shell=True),
        "reference: cat F | cat > FILE": lambda: measure(f"cat '{data}' | cat > '{work}/copy'", shell=True),
        "butler --output null": lambda: measure(
            [BUTLER, "--output", "null", "--prefix", "bench", "run", "--no-echo",
             "--result-path", result, "--", "cat", data], result=result),
        "butler --output directory": lambda: measure(
            [BUTLER, "--output", f"directory:{out_dir}", "--prefix", "bench", "run", "--no-echo",
             "--result-path", result, "--", "cat", data], result=result),
    }
    # Warm the page cache, then interleave the cases so drift in machine load hits all alike.
    subprocess.run(["cat", data], stdout=subprocess.DEVNULL, check=True)
    results = {name: [] for name in cases}
    for _ in range(args.runs):
        for name, run in cases.items():
            shutil.rmtree(out_dir, ignore_errors=True)
            results[name].append(run())

    base = statistics.median(w for w, _ in results["baseline: cat F | cat > /dev/null"])
    print(f"input: {size / 2**20:.0f} MiB of text, {args.runs} runs each (median wall, max RSS)")
    print(f"{'case':38} {'wall s':>8} {'MiB/s':>8} {'x base':>7} {'peak RSS MiB':>13}")
    for name, rs in results.items():
        wall = statistics.median(w for w, _ in rs)
        rss = [r for _, r in rs if r is not None]
        rss = f"{max(rss) / 1024:13.1f}" if rss else f"{'-':>13}"
        print(f"{name:38} {wall:8.3f} {size / 2**20 / wall:8.0f} {wall / base:7.2f} {rss}")
    print("targets: wall <= 2x baseline, peak RSS <= 64 MiB")
    print("(the directory output also writes the whole file: compare it with the FILE reference)")

    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"kept {work}")


if __name__ == "__main__":
    main()
