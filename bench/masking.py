#!/usr/bin/env python3
"""Capture throughput of `logdog_butler run --no-echo -- cat F` with secret masking on
(100 secrets from a --mask-file) against off, in one run.

Both cases capture the same build-log-like text file (with some of the secrets in it) to the
`null` output (or `directory`, with --output directory); runs alternate between the cases so
that they share the machine and the page cache. Prints MiB/s per case (median of the runs)
and the cost of masking; the target is a cost under 20%. The CPU seconds (user + system, the
butler and cat together) of each case are printed too: on a busy machine they show the cost
more steadily than the throughput does.

Usage: bench/masking.py [--size-mib 256] [--runs 5] [--output null|directory]
Builds the release binary first (into $CARGO_TARGET_DIR, default target/).
"""

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import string
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cargo_paths  # noqa: E402

ROOT = cargo_paths.ROOT
BUTLER = cargo_paths.binary("logdog_butler")
SECRETS = 100


def make_secrets(rng):
    """100 token-like secrets of 12 to 40 bytes."""
    alphabet = string.ascii_letters + string.digits + "-_"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(12, 40)))
            for _ in range(SECRETS)]


def make_text_file(path, size, secrets, rng):
    """Lines of 0-200 bytes of build-log words; one line in 500 holds a secret."""
    words = ["compiling", "crate", "warning:", "error[E0308]", "src/main.rs:12:5",
             "0123456789", "\u00e9t\u00e9", "--", "ok", "test", "result:", "token="]
    lines = []
    for i in range(20000):
        n = rng.randint(0, 24)
        line = " ".join(rng.choice(words) for _ in range(n))
        if i % 500 == 0:
            line += " " + rng.choice(secrets)
        lines.append(line + "\n")
    block = "".join(lines).encode()
    with open(path, "wb") as f:
        written = 0
        while written < size:
            chunk = block[: size - written]
            f.write(chunk)
            written += len(chunk)


def run_once(argv):
    """Wall-clock seconds, and CPU seconds (user + system, the butler and cat)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    code = subprocess.run(argv, stdout=subprocess.DEVNULL).returncode
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if code != 0:
        sys.exit(f"benchmark command failed ({code}): {argv}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--output", choices=["null", "directory"], default="null")
    ap.add_argument("--no-build", action="store_true", help="use the binary as it is")
    cargo_paths.add_dry_run(ap)
    args = ap.parse_args()
    cargo_paths.exit_if_dry_run(args, ["logdog_butler"])

    if not args.no_build:
        cargo_paths.build(["--release", "--quiet", "--bin", "logdog_butler"])
    rng = random.Random(13)
    secrets = make_secrets(rng)
    work = tempfile.mkdtemp(prefix="logdog-bench-mask-")
    try:
        data = os.path.join(work, "input.txt")
        make_text_file(data, args.size_mib * 1024 * 1024, secrets, rng)
        size = os.path.getsize(data)
        secrets_file = os.path.join(work, "secrets")
        with open(secrets_file, "w") as f:
            f.write("\n".join(secrets) + "\n")
        out_dir = os.path.join(work, "out")
        result = os.path.join(work, "result.json")

        def argv(masking):
            out = "null" if args.output == "null" else f"directory:{out_dir}"
            a = [BUTLER, "--output", out, "--prefix", "bench"]
            if masking:
                a += ["--mask-file", secrets_file]
            return a + ["run", "--no-echo", "--no-summary", "--result-path", result,
                        "--", "cat", data]

        times = {"off": [], "on": []}
        cpus = {"off": [], "on": []}
        masked = None
        for _ in range(args.runs):
            for case in ("off", "on"):
                shutil.rmtree(out_dir, ignore_errors=True)
                wall, cpu = run_once(argv(case == "on"))
                times[case].append(wall)
                cpus[case].append(cpu)
                if case == "on":
                    with open(result) as f:
                        masked = json.load(f)["streams"]["stdout"]["policy"]["masked"]
        mib = size / (1024 * 1024)
        rate = {c: mib / statistics.median(t) for c, t in times.items()}
        print(f"input: {mib:.0f} MiB, {SECRETS} secrets, {masked} occurrences masked; "
              f"output {args.output}; median of {args.runs} runs")
        for c in ("off", "on"):
            print(f"  masking {c:<3}  {rate[c]:8.1f} MiB/s  "
                  f"(runs: {', '.join(f'{t:.2f}s' for t in times[c])}; "
                  f"CPU {statistics.median(cpus[c]):.2f}s)")
        ratio = rate["on"] / rate["off"]
        cost = 1 - ratio
        print(f"  on/off throughput ratio {ratio:.3f}: masking costs {cost * 100:.1f}% "
              f"({'within' if cost < 0.20 else 'OVER'} the 20% target)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
