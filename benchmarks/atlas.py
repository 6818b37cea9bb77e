"""Benchmark: size and build time of the neuron atlas (`solens atlas`).

1. ViT-B/32 shape with random weights, one layer (``--b32-layer``, 3,072 neurons),
   ``--b32-images`` rendered scenes; described over the ``world`` pool (a small pool is
   enough for random weights). The atlas of all 3,072 neurons is timed end to end
   (targets: < 200 MB, <= 5 minutes).
2. solens-tiny: the demo's run (1,000 ``balanced`` scenes, seed 12345, every block with a
   later block: 7 x 384 = 2,688 neurons, the ``world`` pool, 10 terms, k = 100), built in
   ``--work`` if missing; its atlas timed with the default 8 top images per neuron
   (target <= 2 minutes) and with the demo's 4.

The effects runs and descriptions are built once in ``--work`` and not timed; each atlas
is written into a fresh folder. ``--threads`` sets torch's intra-op threads (default:
torch's own choice).

    python benchmarks/atlas.py               # both parts, writes results/atlas.json
    python benchmarks/atlas.py --skip-b32
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import time
from pathlib import Path

import torch

from _common import described_run, load_average
from solens.atlas.build import build_atlas
from solens.models.loading import load_model


def _atlas(run, out: Path, model, **kw) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    res = build_atlas(run, out, model=model, progress=False, **kw)
    wall = time.perf_counter() - t0
    files = sum(1 for p in out.rglob("*") if p.is_file())
    return {"neurons": res.n_neurons, "layers": res.layers, "wall_s": round(wall, 1),
            "steps_s": {k: round(v, 1) for k, v in res.seconds.items()},
            "mb": round(res.bytes / 1e6, 1), "files": files, "settings": kw}


def b32(work: Path, layer: int, n: int) -> dict:
    torch.manual_seed(0)  # the same random weights each time: the run in --work is reused
    model = load_model("ViT-B-32", "random")
    run = described_run(model, f"synth:balanced:{n}:7:96", [layer], work / "b32-run", k=10,
                     terms=16)
    return {"layer": layer, "images": n, **_atlas(run, work / "b32-atlas", model)}


def tiny(work: Path) -> dict:
    model = load_model("solens-tiny")
    run = described_run(model, "synth:balanced:1000:12345", list(range(model.info.n_layers - 1)),
                     work / "tiny-run", k=100, terms=10)
    return {"images": run.n_images,
            "default": _atlas(run, work / "tiny-atlas", model),
            "demo": _atlas(run, work / "tiny-atlas-demo", model, n_top=4)}


def _row(name: str, r: dict, target: str) -> None:
    st = r["steps_s"]
    print(f"{name:34s} {r['neurons']:>7,} {r['wall_s']:>8.1f} {st.get('images', 0):>8.1f} "
          f"{st.get('pages', 0):>7.1f} {r['mb']:>8.1f} {r['files']:>7,}  {target}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/solens-bench-atlas")
    ap.add_argument("--skip-b32", action="store_true")
    ap.add_argument("--skip-tiny", action="store_true")
    ap.add_argument("--b32-layer", type=int, default=9)
    ap.add_argument("--b32-images", type=int, default=300)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "atlas.json"))
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    work = Path(a.work)
    res: dict = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                 "machine": f"{platform.processor() or platform.machine()}, "
                            f"{os.cpu_count()} cores", "torch_threads": torch.get_num_threads(),
                 "load_before": load_average()}
    if not a.skip_b32:
        res["vit_b32"] = b32(work, a.b32_layer, a.b32_images)
    if not a.skip_tiny:
        res["solens_tiny"] = tiny(work)
    res["load_after"] = load_average()
    print(f"{'atlas':34s} {'neurons':>7} {'wall s':>8} {'images':>8} {'pages':>7} {'MB':>8} "
          f"{'files':>7}  target")
    if "vit_b32" in res:
        b = res["vit_b32"]
        _row(f"ViT-B/32 layer {b['layer']}, {b['images']} images", b, "< 200 MB, <= 300 s")
    if "solens_tiny" in res:
        t = res["solens_tiny"]
        _row(f"solens-tiny, {t['images']} images, 8 top", t["default"], "<= 120 s")
        _row("solens-tiny, 4 top (demo)", t["demo"], "demo section")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"\nwrote {a.out} (torch threads {res['torch_threads']}; load average before "
          f"{res['load_before']}, after {res['load_after']})")


if __name__ == "__main__":
    main()
