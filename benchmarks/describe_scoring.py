"""Ground-truth scoring of neuron descriptions on solens-tiny (issue 3 item 5).

Computes (or resumes) a run over ``synth:balanced:N:SEED:64`` for the given layers, then
``solens.describe.scoring.score_run`` with the given pool: second-order descriptions
(OMP of r_n, or a descriptions JSON) vs the direct-effect and CLIP-Dissect baselines.

    python benchmarks/describe_scoring.py                       # shipped solens-tiny
    python benchmarks/describe_scoring.py --checkpoint runs/solens-tiny/checkpoint.pt \
        --layers 5 6 --pool world --out /tmp/scoring

Writes ``OUT/scores.json`` (everything, with per-neuron tables) and prints the summary.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch


def load(checkpoint: str | None, config: str | None) -> Any:
    """The shipped solens-tiny, or a training checkpoint (``checkpoint.pt`` or safetensors)."""
    import solens

    if checkpoint is None:
        return solens.load_model("solens-tiny")
    from dataclasses import fields

    from solens.models.model import Model, describe_visual
    from solens.models.tiny import TinyCLIP, TinyConfig, make_transform

    ck = Path(checkpoint)
    cfg_path = Path(config) if config else ck.parent / "config.json"
    raw = json.loads(cfg_path.read_text())
    raw = raw.get("model", raw.get("config", raw))
    names = {f.name for f in fields(TinyConfig)}
    cfg = TinyConfig.from_dict({k: v for k, v in raw.items() if k in names})
    clip = TinyCLIP(cfg)
    if ck.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(ck))
        step = None
    else:
        st = torch.load(ck, map_location="cpu", weights_only=False)
        sd, step = st["model"], st.get("step")
    clip.load_state_dict(sd)
    clip.eval()
    info = describe_visual(clip.visual, name="solens-tiny", pretrained=f"{ck}@step{step}",
                           source="solens")
    return Model(clip.visual, clip.text, make_transform(cfg), info)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--config", default=None)
    ap.add_argument("--layers", type=int, nargs="+", default=[5, 6])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pool", default="world")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--omp-terms", type=int, default=10)
    ap.add_argument("--nonneg", action="store_true")
    ap.add_argument("--order", default="abs", choices=["abs", "positive"])
    ap.add_argument("--reduce", default="mean", choices=["mean", "cls", "max"])
    ap.add_argument("--gt-from", default="second_order", choices=["second_order", "activation"])
    ap.add_argument("--descriptions", default=None, help="a descriptions JSON (else OMP of r_n)")
    ap.add_argument("--describe", action="store_true",
                    help="second-order terms from solens.describe.describe_run (same m)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="/tmp/solens-scoring")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from solens.describe.scoring import score_run, summary
    from solens.store import run_effects

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = load(a.checkpoint, a.config)
    run = run_effects(model, f"synth:balanced:{a.n}:{a.seed}:64", a.layers, out / "run",
                      batch_size=64, progress=False, workers=1)
    t1 = time.perf_counter()
    desc = json.loads(Path(a.descriptions).read_text()) if a.descriptions else None
    if a.describe:
        from solens.describe.describe import describe_run

        docs = describe_run(run, a.pool, a.layers, model=model, n_terms=a.omp_terms,
                            nonneg=a.nonneg, k=a.k)
        desc = {d["layer"]: d for d in docs}
    res = score_run(run, a.layers, desc, model, a.pool, a.k, reduce=a.reduce,
                    omp_terms_n=a.omp_terms, nonneg=a.nonneg, order=a.order, gt_from=a.gt_from)
    t2 = time.perf_counter()
    res["timing_s"] = {"effects": round(t1 - t0, 1), "scoring": round(t2 - t1, 1)}
    res["model"] = model.info.pretrained
    tag = (f"{a.pool}-m{a.omp_terms}-{a.order}{'-nn' if a.nonneg else ''}-{a.gt_from}"
           f"-{a.reduce}{'-describe' if a.describe else ''}")
    (out / f"scores-{tag}.json").write_text(json.dumps(res, indent=1, default=float))
    print(json.dumps({"summary": summary(res), "tag": tag, "timing_s": res["timing_s"]},
                     default=float))
    for l, r in res["layers"].items():
        keep = ("hit_rate", "baselines", "hit_rate_top10", "hit_rate_planted", "polysemy",
                "polysemy_strict", "polysemy_named_both",
                "polysemy_named_both_by_method", "polysemy_kinds", "n_selective",
                "n_polysemantic", "n_neurons", "by_kind", "concepts_per_selective",
                "embedding_check_max_rel_diff")
        print(l, json.dumps({x: r[x] for x in keep if x in r}, default=float))


if __name__ == "__main__":
    main()
