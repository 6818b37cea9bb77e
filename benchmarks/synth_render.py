"""Benchmark of the synthetic-world renderer (single process, one core).

Usage: ``python benchmarks/synth_render.py [--n 2000] [--size 64]``.  Prints a table of
images/s and writes ``benchmarks/results/synth_render.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from solens.synth import iter_batches, render_array, sample, specs
from solens.synth.textures import background_texture, pattern_texture
from solens.synth.world import BACKGROUNDS, PATTERNS

TARGET = 500.0


def _rate(fn, n: int, repeats: int = 3) -> tuple[float, float]:
    """Best-of-``repeats`` (wall-clock images/s, CPU-time images/s of this process).
    On a shared machine the CPU-time rate is the one-core speed; wall-clock also counts
    time the scheduler gave to other processes."""
    wall = cpu = float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall = min(wall, time.perf_counter() - t0)
        cpu = min(cpu, time.process_time() - c0)
    return n / wall, n / cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "synth_render.json"))
    a = ap.parse_args()
    n, size, bs = a.n, a.size, a.batch_size
    for b in BACKGROUNDS:  # texture caches are built once per size; not part of the rate
        background_texture(b, size)
    for p in PATTERNS:
        pattern_texture(p, size)
    sp = specs(n, "train", seed=0, size=size)
    n_b = max(1, n // bs)
    rows = {
        "specs() only": _rate(lambda: specs(n, "train", seed=1, size=size), n),
        "render_array(spec) only": _rate(lambda: [render_array(s) for s in sp], n),
        "sample(train) -> Scene": _rate(lambda: sample(n, "train", seed=1, size=size), n),
        "sample(balanced) -> Scene": _rate(lambda: sample(n, "balanced", seed=1, size=size), n),
        f"iter_batches(train, B={bs})": _rate(
            lambda: list(iter_batches(bs, "train", seed=1, size=size, n_batches=n_b)), n_b * bs
        ),
    }
    print(f"synth render benchmark: n={n} size={size} single process ({platform.processor()})")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average {load:.2f} on {os.cpu_count()} cores")
    print(f"{'path':<34} {'wall img/s':>11} {'cpu img/s':>10}")
    for k, (w, c) in rows.items():
        print(f"{k:<34} {w:>11.0f} {c:>10.0f}")
    ok = min(rows["sample(train) -> Scene"][1], rows[f"iter_batches(train, B={bs})"][1]) >= TARGET
    print(f"target >= {TARGET:.0f} images/s per core (CPU time): {'met' if ok else 'NOT met'}")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "n": n,
                "size": size,
                "batch_size": bs,
                "images_per_s_wall": {k: round(v[0], 1) for k, v in rows.items()},
                "images_per_s_cpu": {k: round(v[1], 1) for k, v in rows.items()},
                "load_average_1min": round(load, 2),
                "target_images_per_s": TARGET,
                "target_met": ok,
                "cpu_count": os.cpu_count(),
                "python": platform.python_version(),
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
