"""Benchmark: `solens ablate` on solens-tiny, and the cost per variant on a ViT-B/32 shape.

1. solens-tiny: the reference run (1,000 ``balanced`` scenes, seed 20261, every layer, the
   ``world`` pool described with 10 terms, k = 100: what ``solens demo`` computes) is built
   in ``--work`` if missing, then ``ablate_run`` over 2,000 evaluation scenes (seed 12345),
   every variant, every layer, timed end to end (target: <= 10 minutes on the 2-core CPU).
2. ViT-B/32 shape with random weights, one layer (``--b32-layer``), ``--b32-images`` images:
   seconds per variant, so a user can plan a real run (the traced forward is shared by the
   factorised variants; indirect is a forward of its own; PC1 needs one forward per
   neuron per image).

    python benchmarks/ablate.py                 # both parts, writes results/ablate.json
    python benchmarks/ablate.py --skip-tiny     # only the ViT-B/32 costs
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path

import torch

from _common import described_run, load_average
from solens.experiments.ablate import ablate_run, reference_means
from solens.experiments.ablation import layer_effects
from solens.experiments.factorised import (
    ablate_all,
    ablate_masked,
    centred,
    centred_norms,
    rank1,
    unit_rows,
)
from solens.experiments.indirect import (
    layer_ablated_embeddings,
    neuron_indirect_effects,
)
from solens.lens.second_order import coefficients, directions, gram, trace_names
from solens.models.loading import load_model


def tiny(work: Path, n_eval: int) -> dict:
    model = load_model("solens-tiny")
    t0 = time.perf_counter()
    run = described_run(model, "synth:balanced:1000:20261", range(model.info.n_layers - 1),
                        work / "run")
    t_ref = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = ablate_run(run, f"synth:balanced:{n_eval}:12345", model=model, restart=True,
                     progress=False)
    wall = time.perf_counter() - t0
    per_layer = {str(r.layer): r.seconds for r in res.layers}
    return {"n_eval": n_eval, "layers": len(res.layers), "wall_s": round(wall, 1),
            "reference_run_s": round(t_ref, 1), "per_layer_s": per_layer,
            "summary": res.summary()}


@torch.no_grad()
def b32(layer: int, n: int, neurons: int) -> dict:
    model = load_model("ViT-B-32", "random")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 224, 224, generator=g)
    out: dict[str, float] = {}

    def timed(name: str, fn):
        t0 = time.perf_counter()
        v = fn()
        out[name] = round(time.perf_counter() - t0, 3)
        return v

    u = timed("directions (once per layer)", lambda: directions(model, layer).double())
    G = gram(u)
    names = [*trace_names([layer], model.info.n_layers), f"blocks.{layer}.hook_mlp_out",
             "ln_post.hook_scale"]
    tr = timed("traced forward (shared)", lambda: model.trace(x, names))
    c = coefficients(model, tr, layer)
    X = centred(c.s.double() * c.inv_sigma_post.double()[:, None, None], 0 * c.s.double()[0])
    f = c.embedding.double()
    timed("second_order", lambda: ablate_all(f, X, u))
    cn = timed("centred norms (significance)", lambda: centred_norms(X, G))
    tau = cn.median(0).values
    timed("significant_only + insignificant_only",
          lambda: (ablate_masked(f, X, u, cn > tau), ablate_masked(f, X, u, cn <= tau)))
    r = unit_rows(torch.randn(u.shape[0], u.shape[2], generator=g, dtype=torch.float64))
    timed("rank1 (and each text reconstruction)", lambda: rank1(f, X, u, r))
    timed("direct", lambda: layer_effects(model, tr, [layer], "direct"))
    mean = timed("reference pass: mean activations + direct means",
                 lambda: reference_means(model, x, [layer])[0][layer])
    timed("indirect (forward with the layer ablated)",
          lambda: layer_ablated_embeddings(model, x, layer, mean))
    k = min(n, 8)
    timed(f"PC1: {neurons} neurons x {k} images (indirect, per-neuron forwards)",
          lambda: neuron_indirect_effects(model, x[:k], layer, list(range(neurons)), mean))
    return {"layer": layer, "images": n, "seconds": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/solens-bench-ablate")
    ap.add_argument("--n-eval", type=int, default=2000)
    ap.add_argument("--skip-tiny", action="store_true")
    ap.add_argument("--b32-layer", type=int, default=9)
    ap.add_argument("--b32-images", type=int, default=64)
    ap.add_argument("--b32-neurons", type=int, default=16)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "ablate.json"))
    a = ap.parse_args()
    res: dict = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                 "machine": f"{platform.processor() or platform.machine()}, "
                            f"{os.cpu_count()} cores", "torch_threads": torch.get_num_threads(),
                 "load_before": load_average()}
    if not a.skip_tiny:
        res["solens_tiny"] = tiny(Path(a.work), a.n_eval)
        t = res["solens_tiny"]
        print(f"solens-tiny: {t['layers']} layers x {t['n_eval']} evaluation images, every "
              f"variant: {t['wall_s']:.1f} s (target <= 600 s); reference run "
              f"{t['reference_run_s']:.1f} s")
        print(f"{'layer':>5} {'omp':>8} {'variants':>9} {'pc1':>8}")
        for l, s in t["per_layer_s"].items():
            print(f"{l:>5} {s['omp']:8.2f} {s['variants']:9.2f} {s['pc1']:8.2f}")
    res["vit_b32"] = b32(a.b32_layer, a.b32_images, a.b32_neurons)
    b = res["vit_b32"]
    print(f"\nViT-B/32 shape (random weights), layer {b['layer']}, {b['images']} images:")
    print(f"{'step':58s} {'s':>8} {'s per 1000 images':>18}")
    for name, s in b["seconds"].items():
        per = "" if "once" in name or "PC1" in name else f"{1000 * s / b['images']:18.1f}"
        print(f"{name:58s} {s:8.3f} {per}")
    res["load_after"] = load_average()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"\nwrote {a.out} (load average before {res['load_before']}, after "
          f"{res['load_after']})")


if __name__ == "__main__":
    main()
