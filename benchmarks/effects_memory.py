"""Benchmark: peak RSS of ``solens effects`` does not grow with the number of images.

Generates random-noise PNGs (224 px) into a temporary folder and runs
``python -m solens.cli effects`` on the first N of them (a random-weight model, one
source layer), each in its own subprocess; peak RSS is that process's ``ru_maxrss``
from ``os.wait4``. Prints a table and writes ``benchmarks/results/effects_memory.json``.

    python benchmarks/effects_memory.py [--model ViT-B-32] [--layer 9] [--sizes 64 512]
        [--batch-size 32] [--chunk-size 64] [--device cpu]

With ``--chunk-size`` equal for all sizes, every run fills the same chunk buffer, so the
peak is the same unless something accumulates per image. (With the default chunk size,
about 128 MiB of rows, a run smaller than one chunk touches less of the buffer.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from solens.store.protocol import Manifest

RESULTS = Path(__file__).parent / "results" / "effects_memory.json"


def make_images(folder: Path, n: int, size: int = 224, seed: int = 0) -> None:
    """``n`` random-noise PNGs in two label folders."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        sub = folder / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(arr).save(sub / f"{i:05d}.png", compress_level=1)


def link_subset(src: Path, dst: Path, n: int) -> None:
    """The first ``n`` images of ``src`` (sorted) as symlinks under ``dst``."""
    files = sorted(p.relative_to(src) for p in src.rglob("*.png"))[:n]
    for rel in files:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        (dst / rel).symlink_to(src / rel)


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _chunks(out: Path) -> int:
    try:
        return len(json.loads((out / "manifest.json").read_text())["chunks"])
    except (OSError, ValueError, KeyError):
        return 0


def _streaming(samples: list[tuple[float, float, int]]) -> dict[str, float] | None:
    """RSS when the first chunk had been written, the last sample, and the max in between."""
    s = [(t, r) for t, r, c in samples if c >= 1 and r == r]
    if not s:
        return None
    return {"first_mb": round(s[0][1], 1), "last_mb": round(s[-1][1], 1),
            "max_mb": round(max(r for _, r in s), 1), "samples": len(s)}  # fmt: skip


def run_effects(args: argparse.Namespace, images: Path, out: Path) -> dict:
    cmd = [
        sys.executable, "-m", "solens.cli", "effects", "--model", args.model,
        "--layers", str(args.layer), "--images", str(images), "--out", str(out),
        "--batch-size", str(args.batch_size), "--device", args.device, "--no-progress",
    ]  # fmt: skip
    if args.chunk_size:
        cmd += ["--chunk-size", str(args.chunk_size)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    samples: list[tuple[float, float, int]] = []  # (seconds, RSS MB, chunks on disk)
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        samples.append((time.perf_counter() - t0, _rss_mb(proc.pid), _chunks(out)))
        time.sleep(0.25)
    wall = time.perf_counter() - t0
    stdout, stderr = proc.stdout.read().decode(), proc.stderr.read().decode()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"solens effects failed ({proc.returncode}): {stderr.strip()[-2000:]}")
    manifest = Manifest.read(out / "manifest.json")
    return {
        "n_images": manifest.n_images,
        "chunk_size": manifest.chunk_size,
        "chunks": len(manifest.chunks),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux: KiB
        # sampled RSS once the first chunk is on disk (streaming phase), first and last
        "rss_streaming_mb": _streaming(samples),
        "wall_s": round(wall, 2),
        "compute_s": manifest.timings["compute_s"],
        "images_per_s": manifest.timings["images_per_s"],
        "stdout": stdout.strip(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--layer", type=int, default=9)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 512])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--chunk-size", type=int, default=64, help="0: solens' default")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="solens-bench-") as tmp:
        tmp = Path(tmp)
        make_images(tmp / "all", max(args.sizes))
        for n in args.sizes:
            link_subset(tmp / "all", tmp / f"n{n}", n)
            r = run_effects(args, tmp / f"n{n}", tmp / f"run{n}")
            rows.append(r)
            print(f"n={n}: peak RSS {r['peak_rss_mb']} MB, {r['images_per_s']} img/s", flush=True)
    base = rows[0]["peak_rss_mb"]
    print(f"\nsolens effects --model {args.model} (random weights) --layers {args.layer} "
          f"--batch-size {args.batch_size} --device {args.device}")  # fmt: skip
    print(f"{'images':>7} {'chunk':>6} {'chunks':>6} {'peak RSS MB':>12} {'vs first':>9} "
          f"{'streaming RSS first..last (max) MB':>36} {'img/s':>7} {'wall s':>7}")  # fmt: skip
    for r in rows:
        rss, st = r["peak_rss_mb"], r["rss_streaming_mb"]
        stream = f"{st['first_mb']:.0f}..{st['last_mb']:.0f} ({st['max_mb']:.0f})" if st else "-"
        ips, wall = r["images_per_s"], r["wall_s"]
        print(f"{r['n_images']:>7} {r['chunk_size']:>6} {r['chunks']:>6} {rss:>12.1f} "
              f"{rss - base:>+9.1f} {stream:>36} {ips:>7} {wall:>7}")  # fmt: skip
    result = {
        "benchmark": "effects_memory",
        "model": args.model,
        "weights": "random",
        "layer": args.layer,
        "batch_size": args.batch_size,
        "device": args.device,
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "runs": [{k: v for k, v in r.items() if k != "stdout"} for r in rows],
        "rss_growth_mb": round(rows[-1]["peak_rss_mb"] - base, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
