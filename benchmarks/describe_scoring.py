"""Ground-truth scoring of neuron descriptions on solens-tiny (issue 3 item 5).

Computes (or resumes) a run over ``synth:balanced:N:SEED:64`` for the given layers, then
``solens.groundtruth.score.score_run`` with the given pool: second-order descriptions
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

import torch

from solens.describe.describe import describe_run
from solens.groundtruth.score import score_run, summary
from solens.models.model import Model
from solens.store import run_effects
from solens.store.protocol import DescriptionsDoc
from solens.tiny.model import as_model, load_clip


def load(checkpoint: str | None, config: str | None) -> Model:
    """The shipped solens-tiny, or a training checkpoint (``checkpoint.pt`` or safetensors;
    architecture from ``config`` or the JSON beside it)."""
    clip = load_clip(checkpoint, config=config)
    label = checkpoint or "shipped"
    return as_model(clip, f"{label}@step{clip.step}" if clip.step is not None else label)


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
    ap.add_argument("--descriptions", default=None,
                    help="JSON {layer: descriptions document} (else OMP of r_n)")
    ap.add_argument("--describe", action="store_true",
                    help="second-order terms from solens.describe.describe_run (same m)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="/tmp/solens-scoring")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = load(a.checkpoint, a.config)
    run = run_effects(model, f"synth:balanced:{a.n}:{a.seed}:64", a.layers, out / "run",
                      batch_size=64, progress=False, workers=1)
    t1 = time.perf_counter()
    desc = None
    if a.descriptions:  # {layer: a `solens describe` document of that layer}
        desc = {int(l): DescriptionsDoc.from_dict(d, source=a.descriptions)
                for l, d in json.loads(Path(a.descriptions).read_text()).items()}
    if a.describe:
        docs = describe_run(run, a.pool, a.layers, model=model, n_terms=a.omp_terms,
                            nonneg=a.nonneg, k=a.k)
        desc = {d.layer: d for d in docs}
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
