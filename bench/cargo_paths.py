"""Where the bench scripts find the binaries: cargo's target directory, $CARGO_TARGET_DIR
(relative to the workspace root, where the scripts run cargo) or target/ by default.

Every script takes --dry-run: it prints the binaries and the directory it would use, and
exits without building or running anything.
"""

import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def target_dir():
    """Cargo's target directory, as cargo run from ROOT sees it."""
    t = os.environ.get("CARGO_TARGET_DIR")
    return os.path.join(ROOT, t) if t else os.path.join(ROOT, "target")


def bin_dir(profile="release"):
    """Where cargo puts the binaries of `profile`."""
    return os.path.join(target_dir(), profile)


def binary(name, profile="release"):
    """The path of binary `name` of `profile`."""
    return os.path.join(bin_dir(profile), name)


def work_dir(prefix):
    """A fresh directory under the target directory (made if missing), for large work files."""
    os.makedirs(target_dir(), exist_ok=True)
    return tempfile.mkdtemp(prefix=prefix, dir=target_dir())


def add_dry_run(ap):
    """Adds --dry-run to the argument parser `ap`."""
    ap.add_argument("--dry-run", action="store_true",
                    help="print the binaries and the target directory this run would use, "
                         "and exit (builds and runs nothing)")


def exit_if_dry_run(args, names, profile="release"):
    """With --dry-run: prints where binaries `names` are (and whether they are built yet), then
    exits 0."""
    if not getattr(args, "dry_run", False):
        return
    print(f"target directory: {target_dir()}")
    for n in names:
        p = binary(n, profile)
        print(f"{n}: {p} ({'built' if os.path.isfile(p) else 'not built yet'})")
    sys.exit(0)


def build(cargo_args):
    """Runs `cargo build` with `cargo_args` in ROOT (so that CARGO_TARGET_DIR means what it
    means here)."""
    subprocess.run(["cargo", "build", *cargo_args], cwd=ROOT, check=True)
