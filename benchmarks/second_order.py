"""Benchmark: factorised second-order engine vs the reference algorithm.

Random full-size ViT-B-32 (QuickGELU), source layers 9 and 0, batch sizes 1/8/32.
Each (engine, layer, batch) runs in its own subprocess so that peak RSS is its own.
Prints a table and writes ``benchmarks/results/second_order.json``.

    python benchmarks/second_order.py [--layers 9 0] [--batches 1 8 32] [--device cpu]

The reference algorithm materialises [B, T, N, D] per later head; configurations whose
estimated memory exceeds ``--max-gb``, or whose work (batch x later blocks) exceeds
``--reference-max-work`` (hours on a 2-core CPU), are skipped and reported as such.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "second_order.json"


def _model(device: str):
    import open_clip
    import torch

    from solens.models.model import Model

    torch.manual_seed(0)
    clip = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None)
    return Model.from_open_clip(clip, name="ViT-B-32-quickgelu", pretrained="random").to(device)


def _worker(engine: str, layer: int, batch: int, device: str, repeats: int) -> dict:
    import resource

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from solens.lens import coefficients, directions, effects, trace_names
    from solens.lens.reference import reference_second_order

    model = _model(device)
    x = torch.randn(batch, 3, 224, 224, device=device)
    names = trace_names([layer], model.info.n_layers)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    setup = 0.0
    if engine == "factorised":
        t0 = time.perf_counter()
        u = directions(model, layer)  # image-independent, computed once per layer
        sync()
        setup = time.perf_counter() - t0

        def step():
            with torch.no_grad():
                tr = model.trace(x, names)
                return effects(coefficients(model, tr, layer), u)
    else:

        def step():
            return reference_second_order(model, x, layer)

    step()  # warm-up
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    sync()
    dt = (time.perf_counter() - t0) / repeats
    with FlopCounterMode(display=False) as fc:
        step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {
        "engine": engine,
        "layer": layer,
        "batch": batch,
        "device": device,
        "seconds_per_batch": dt,
        "images_per_s": batch / dt,
        "setup_s": setup,
        "gflop_per_image": fc.get_total_flops() / batch / 1e9,
        "peak_rss_mb": peak,
    }
    if device.startswith("cuda"):
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _reference_gb(layer: int, batch: int) -> float:
    """Estimated peak of the reference algorithm: ~4 live [B, T, N, D] float32 tensors."""
    return 4 * batch * 50 * 3072 * 768 * 4 / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--layers", type=int, nargs="+", default=[9, 0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-gb", type=float, default=12.0)
    ap.add_argument("--reference-max-work", type=int, default=24,
                    help="run the reference only where batch * later blocks <= this")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--worker", nargs=4, metavar=("ENGINE", "LAYER", "BATCH", "REPEATS"))
    args = ap.parse_args()
    if args.worker:
        e, l, b, r = args.worker
        print(json.dumps(_worker(e, int(l), int(b), args.device, int(r))))
        return
    rows = []
    for layer in args.layers:
        for batch in args.batches:
            for engine in ("factorised", "reference"):
                work = batch * (11 - layer)
                if engine == "reference" and (
                    _reference_gb(layer, batch) > args.max_gb or work > args.reference_max_work
                ):
                    rows.append({"engine": engine, "layer": layer, "batch": batch,
                                 "skipped": f"est. {_reference_gb(layer, batch):.0f} GB, "
                                            f"batch x later blocks = {work} > "
                                            f"{args.reference_max_work}"})
                    continue
                repeats = 3 if engine == "factorised" else 1
                cmd = [sys.executable, __file__, "--device", args.device,
                       "--worker", engine, str(layer), str(batch), str(repeats)]
                res = subprocess.run(cmd, capture_output=True, text=True)
                if res.returncode != 0:
                    why = "killed (out of memory?)" if res.returncode < 0 else res.stderr[-300:]
                    rows.append({"engine": engine, "layer": layer, "batch": batch,
                                 "skipped": f"worker failed: {why}"})
                    continue
                row = json.loads(res.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(f"  {engine:10s} layer {layer:2d} batch {batch:3d}: "
                      f"{row['images_per_s']:.3g} img/s", file=sys.stderr)
    speedups = {}
    for layer in args.layers:
        for batch in args.batches:
            f = [r for r in rows if r.get("engine") == "factorised" and r["layer"] == layer
                 and r["batch"] == batch and "images_per_s" in r]
            g = [r for r in rows if r.get("engine") == "reference" and r["layer"] == layer
                 and r["batch"] == batch and "images_per_s" in r]
            if f and g:
                speedups[f"layer{layer}_batch{batch}"] = f[0]["images_per_s"] / g[0]["images_per_s"]
    header = f"{'engine':10s} {'layer':>5s} {'batch':>5s} {'img/s':>9s} {'GFLOP/img':>10s} " \
             f"{'peak RSS MB':>11s} {'setup s':>8s}"
    print(header)
    print("-" * len(header))
    for r in rows:
        if "skipped" in r:
            print(f"{r['engine']:10s} {r['layer']:5d} {r['batch']:5d}   skipped: {r['skipped']}")
            continue
        print(f"{r['engine']:10s} {r['layer']:5d} {r['batch']:5d} {r['images_per_s']:9.3g} "
              f"{r['gflop_per_image']:10.1f} {r['peak_rss_mb']:11.0f} {r['setup_s']:8.2f}")
    for k, v in speedups.items():
        print(f"speed-up factorised/reference {k}: {v:.0f}x")
    import torch

    meta = {"model": "ViT-B-32-quickgelu (random init)", "device": args.device,
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.machine(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows, "speedups": speedups}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
