"""Benchmark: `solens segment` on solens-tiny, and seconds per image per method on a
ViT-B/32 shape.

1. solens-tiny: the reference run (1,000 ``balanced`` scenes, seed 20261, every layer, the
   ``world`` pool described with 10 terms, k = 100: what ``solens demo`` computes) is built in
   ``--work`` if missing, then ``segment_run`` on 500 ``balanced`` scenes (seed 4242), every
   method, timed end to end (target: <= 5 minutes on the 2-core CPU).
2. ViT-B/32 shape with random weights (``load_model("ViT-B-32", "random")``), 224 x 224
   inputs: seconds per image per method. Every method needs the traced forward; chefer and
   gradcam need its backward too (one backward serves both), the others only the forward.
   Per method: (forward [+ backward]) + the method's own computation, per image. Plus the
   cost of mapping one map back to a 500 x 375 image and scoring it (per image per method).
   Neuron directions r_n and class texts are random unit vectors (no run needed).

    python benchmarks/segment.py                 # both parts, writes results/segment.json
    python benchmarks/segment.py --skip-tiny     # only the ViT-B/32 costs
    python benchmarks/segment.py --threads 1     # one torch thread (a busy shared machine)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from _common import described_run, load_average
from solens.lens.frozen import head_ov
from solens.models.loading import load_model
from solens.segment import baselines as B
from solens.segment.heatmaps import (
    activation_map,
    crop_geometry,
    forward,
    grid,
    normalise,
    selection_masks,
    signed_map,
    to_image,
)
from solens.segment.metrics import Accumulator
from solens.segment.run import METHODS, default_textspan_layers, random_masks, segment_run
from solens.store.compute import default_preprocess


def tiny(work: Path, n: int) -> dict:
    model = load_model("solens-tiny")
    t0 = time.perf_counter()
    run = described_run(model, "synth:balanced:1000:20261", range(model.info.n_layers - 1),
                        work / "run")
    t_ref = time.perf_counter() - t0
    load0 = load_average()
    t0 = time.perf_counter()
    res = segment_run(run, f"synth:balanced:{n}:4242", model=model, restart=True,
                      progress=False)
    seconds = time.perf_counter() - t0
    return {"n_images": n, "seconds": round(seconds, 2), "target_s": 300,
            "reference_run_s": round(t_ref, 2), "load_before": load0, "load_after": load_average(),
            "miou": {m: round(v["miou"], 4) for m, v in res.table().items()}}


def _time(fn, reps: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def b32(n_images: int, batch: int, k: int) -> dict:
    torch.manual_seed(0)
    model = load_model("ViT-B-32", "random")
    L, d, N = model.info.n_layers, model.info.d_embed, model.info.d_mlp
    layers = [8, 9, 10]
    x = torch.randn(batch, 3, 224, 224)
    t = F.normalize(torch.randn(batch, d), dim=-1)
    r = F.normalize(torch.randn(len(layers) * N, d), dim=-1)
    sizes = [N] * len(layers)
    heads = {lp: head_ov(model.weights, lp) for lp in range(min(layers) + 1, L)}
    rnd = [m[None].expand(batch, -1).float() for m in random_masks(sizes, k, 0)]
    reps = max(1, n_images // batch)
    t_fwd = _time(lambda: forward(model, x, t, need_grad=False), reps)
    t_bwd = _time(lambda: forward(model, x, t, need_grad=True), reps)
    p = forward(model, x, t, need_grad=True)
    masks = selection_masks(r, t, k, sizes)

    def signed() -> None:
        for l, m in zip(layers, masks, strict=True):
            signed_map(model, p.trace, l, m, t, heads)

    own = {
        "second_order": lambda: activation_map(p.trace, layers, selection_masks(r, t, k, sizes)),
        "second_order_signed": signed,
        "raw_attention": lambda: B.raw_attention(p, L),
        "rollout": lambda: B.rollout(p, L),
        "chefer": lambda: B.chefer(model, p),
        "textspan": lambda: B.textspan(model, p, default_textspan_layers(L)),
        "gradcam": lambda: B.gradcam(model, p),
        "random_neurons": lambda: activation_map(p.trace, layers, rnd),
    }
    per_image: dict[str, float] = {}
    for m in METHODS:
        with torch.no_grad():
            c = _time(own[m], reps)
        shared = t_bwd if m in ("chefer", "gradcam") else t_fwd
        per_image[m] = round((shared + c) / batch, 4)
    pre = default_preprocess(model)
    geo = crop_geometry(pre, 500, 375, 224)
    mask = np.zeros((375, 500), bool)
    mask[100:250, 150:350] = True
    pm = grid(torch.rand(1, 49))[0]

    def score() -> None:
        hm = normalise(to_image(pm, geo))
        v = geo.valid()
        Accumulator().add(hm[v], mask[v])

    t_score = _time(score, 5)
    return {"model": "ViT-B-32 (random weights)", "layers": layers, "k": k, "batch": batch,
            "images_timed": reps * batch, "forward_s_per_image": round(t_fwd / batch, 4),
            "forward_backward_s_per_image": round(t_bwd / batch, 4),
            "seconds_per_image": per_image,
            "map_and_score_500x375_s": round(t_score, 4),
            "all_methods_s_per_image": round(
                (t_bwd + sum(per_image[m] * batch - (t_bwd if m in ("chefer", "gradcam")
                                                     else t_fwd) for m in METHODS)) / batch
                + len(METHODS) * t_score, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/solens-bench-segment"))
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--b32-images", type=int, default=16)
    ap.add_argument("--b32-batch", type=int, default=8)
    ap.add_argument("--k", type=int, default=200)
    ap.add_argument("--skip-tiny", action="store_true")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's own choice); on a machine that other "
                         "jobs keep busy, 1 thread avoids oversubscription")
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).resolve().parent / "results" / "segment.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out: dict = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                 "host": platform.node(), "cpus": os.cpu_count(), "torch": torch.__version__,
                 "threads": torch.get_num_threads(), "load_start": load_average()}
    if not args.skip_tiny:
        args.work.mkdir(parents=True, exist_ok=True)
        out["tiny"] = tiny(args.work, args.n)
        t = out["tiny"]
        print(f"solens-tiny, {t['n_images']} images, all methods: {t['seconds']:.1f} s "
              f"(target {t['target_s']} s; load {t['load_before']} -> {t['load_after']})")
    out["b32"] = b32(args.b32_images, args.b32_batch, args.k)
    b = out["b32"]
    print(f"\n{b['model']}, blocks {b['layers']}, k={b['k']}, batch {b['batch']}: seconds per "
          "image (forward [+ backward] + method)")
    print(f"{'method':<22}{'s/image':>10}")
    for m, s in b["seconds_per_image"].items():
        print(f"{m:<22}{s:>10.4f}")
    print(f"forward {b['forward_s_per_image']:.4f}, forward+backward "
          f"{b['forward_backward_s_per_image']:.4f}; map back + score one 500x375 map "
          f"{b['map_and_score_500x375_s']:.4f}; all methods as solens segment runs them "
          f"(one forward+backward): {b['all_methods_s_per_image']:.4f} s/image")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
