"""Benchmark: what the run folder's integrity checks cost.

Per shard of ``--mib`` MiB (float32, the default chunk is about 128 MiB): writing it
atomically with ``np.save`` (``save_npy_atomic``) against writing it while hashing it
(``save_npy_hashed``, what ``solens effects`` does, in a writer thread that overlaps the
next chunk's compute); checking it by its recorded length (``Run.open``, ``--verify
size``) and by its sha256 (``--verify full`` on resume, and ``Run.iter_chunks`` before
first use). Prints a table and writes ``benchmarks/results/store_integrity.json``.

    python benchmarks/store_integrity.py [--mib 128] [--repeat 3]

fsync is off (``SOLENS_FSYNC=0``) so that the figures are the CPU cost, not the disk's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ["SOLENS_FSYNC"] = "0"

import numpy as np

from solens.store.arrays import save_npy_atomic, save_npy_hashed, shard_problem

RESULTS = Path(__file__).parent / "results" / "store_integrity.json"


def best(f: Callable[[], object], repeat: int) -> float:
    """Fastest of ``repeat`` calls, seconds."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=128, metavar="MIB")
    ap.add_argument("--repeat", type=int, default=3, metavar="N")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="solens-integrity-"))
    a = np.random.default_rng(0).standard_normal(args.mib * 2**20 // 4, dtype=np.float32)
    a = a.reshape(-1, 1024)
    nbytes, sha = save_npy_hashed(folder / "h.npy", a)
    rows = {
        "write, np.save (save_npy_atomic)": best(
            lambda: save_npy_atomic(folder / "p.npy", a), args.repeat),
        "write + sha256 (save_npy_hashed)": best(
            lambda: save_npy_hashed(folder / "h.npy", a), args.repeat),
        "check length (Run.open, --verify size)": best(
            lambda: shard_problem(folder / "h.npy", a.shape, "float32", nbytes), args.repeat),
        "check length + sha256 (--verify full, reads)": best(
            lambda: shard_problem(folder / "h.npy", a.shape, "float32", nbytes, sha),
            args.repeat),
    }  # fmt: skip
    mib = nbytes / 2**20
    head = f"per shard of {mib:.0f} MiB"
    print(f"{head:48s} {'ms':>8s} {'MiB/s':>8s}")
    for name, s in rows.items():
        print(f"{name:48s} {s * 1e3:8.1f} {mib / s:8.0f}")
    machine = f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs, shared)"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "machine": machine, "shard_mib": round(mib, 1), "repeat": args.repeat,
        "seconds": {k: round(v, 4) for k, v in rows.items()},
    }, indent=1) + "\n")  # fmt: skip
    print(f"machine: {machine}; wrote {RESULTS}")
    for p in folder.iterdir():
        p.unlink()
    folder.rmdir()


if __name__ == "__main__":
    main()
