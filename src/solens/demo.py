"""``solens demo``: the whole pipeline on the bundled model solens-tiny, offline.

Steps (each timed): held-out zero-shot accuracy (``balanced`` and ``conflict`` splits),
second-order effects of every block into a run folder, per-block mean-ablation of
second-order and direct effects, neuron descriptions over a word pool, and their
ground-truth scores. Writes ``OUT/summary.json`` (every figure), ``OUT/report.md``,
``OUT/ablation.png`` and the run folder ``OUT/run`` (with its descriptions).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from solens import __version__
from solens.describe.describe import describe_run
from solens.describe.pools import embed_pool, load_pool
from solens.experiments.ablation import block_ablation
from solens.experiments.zeroshot import text_directions
from solens.experiments.zeroshot import zero_shot as experiments_zero_shot
from solens.groundtruth.score import score_run
from solens.groundtruth.score import summary as score_summary
from solens.models.loading import load_model
from solens.models.model import Model
from solens.store.arrays import save_json_atomic, save_text_atomic
from solens.store.compute import run_effects
from solens.store.protocol import DescriptionsDoc
from solens.synth.captions import class_prompts
from solens.tiny.evaluate import world_split

EVAL_SEED = 20261  # held-out split seed (training samples only the ``train`` split)


def _plot_ablation(ablation: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = sorted(int(l) for l in ablation["second_order"])
    base = ablation["baseline"]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    w = 0.38
    for i, (kind, colour) in enumerate((("second_order", "C0"), ("direct", "C1"))):
        acc = [100 * ablation[kind][str(l)] for l in layers]
        ax.bar(np.array(layers) + (i - 0.5) * w, acc, w, label=kind.replace("_", "-"),
               color=colour)
    ax.axhline(100 * base, color="k", ls="--", lw=1, label=f"no ablation ({100 * base:.1f}%)")
    ax.set_xlabel("block whose effects are mean-ablated")
    ax.set_ylabel("zero-shot top-1 (%)")
    ax.set_xticks(layers)
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _report(summary: dict[str, Any]) -> str:
    z = summary["zero_shot"]
    lines = [
        "# solens demo report",
        "",
        f"Model: `{summary['model']['name']}` ({summary['model']['n_layers']} blocks, "
        f"{summary['model']['n_heads']} heads, width {summary['model']['d_model']}); "
        f"solens {summary['version']}; {summary['n_images']} held-out images "
        f"(seed {summary['seed']}).",
        "",
        "## Zero-shot classification (\"a photo of a {class}\")",
        "",
        "| split | top-1 |",
        "|---|---|",
        f"| balanced | {100 * z['balanced']:.1f}% |",
        f"| conflict (planted contexts swapped) | {100 * z['conflict']:.1f}% |",
        "",
        "## Mean-ablation of each block's effects (balanced split)",
        "",
        "![ablation](ablation.png)",
        "",
        "| block | second-order ablated | direct ablated |",
        "|---|---|---|",
    ]
    ab = summary["ablation"]
    for l in sorted(ab["second_order"], key=int):
        lines.append(f"| {l} | {100 * ab['second_order'][l]:.1f}% | {100 * ab['direct'][l]:.1f}% |")
    lines.append(f"\nWithout ablation: {100 * ab['baseline']:.1f}%.")
    d = summary.get("describe")
    if d:
        b = d["baselines"]
        lines += [
            "",
            f"## Neuron descriptions (pool `{d['pool']}`, top-{d['k']} images per neuron)",
            "",
            "Hit rate = fraction of selective neurons (ground-truth concepts found by a "
            "hypergeometric test on their top images) whose top-5 terms name one of them.",
            "",
            "| description | hit rate |",
            "|---|---|",
            f"| second-order (OMP of r_n) | {_pct(d['hit_rate'])} |",
            f"| direct effect (OMP of P(w_n)) | {_pct(b['direct'])} |",
            f"| CLIP-Dissect-style | {_pct(b['dissect'])} |",
            "",
            f"Selective neurons: {d['n_selective']}; polysemantic fraction: "
            f"{_pct(d['polysemy'])}.",
        ]
        if d.get("examples"):
            lines += ["", "Examples (layer, neuron: top terms):", ""]
            lines += [f"- {e}" for e in d["examples"]]
    lines += ["", "## Timings (s)", ""]
    lines += [f"- {k}: {v:.1f}" for k, v in summary["timings"].items()]
    return "\n".join(lines) + "\n"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _examples(docs: Sequence[DescriptionsDoc], n: int = 6) -> list[str]:
    out = []
    for doc in docs[-2:]:
        neurons = sorted(doc.neurons, key=lambda e: -float(e.var_topk or 0))[: n // 2]
        for e in neurons:
            terms = ", ".join(t.text for t in e.terms[:5])
            out.append(f"{doc.layer}, {e.neuron}: {terms}")
    return out


@torch.no_grad()
def headline(
    model: Model, n: int, layers: Sequence[int]
) -> tuple[dict[str, float], dict[str, Any]]:
    """The demo's headline figures: zero-shot top-1 on ``n`` held-out ``balanced`` and
    ``conflict`` scenes (seed ``EVAL_SEED``), and per-layer mean-ablation accuracy of the
    ``balanced`` scenes with means from ``n // 2`` other scenes (seed ``EVAL_SEED + 1``)."""
    texts = text_directions(model, class_prompts())
    xb, yb, _ = world_split(model, "balanced", n, EVAL_SEED)
    xc, yc, _ = world_split(model, "conflict", n, EVAL_SEED)
    zero_shot = {
        "balanced": experiments_zero_shot(model, xb, yb, texts),
        "conflict": experiments_zero_shot(model, xc, yc, texts),
    }
    xr, _, _ = world_split(model, "balanced", n // 2, EVAL_SEED + 1)
    ab = block_ablation(model, xb, yb, xr, texts, layers=layers)
    ablation = {"baseline": ab["second_order"].baseline,
                **{kind: {str(l): v for l, v in ab[kind].by_layer().items()}
                   for kind in ("second_order", "direct")}}
    return zero_shot, ablation


@torch.no_grad()
def run_demo(
    out: Path,
    *,
    model: Model | None = None,
    n: int = 1000,
    layers: Sequence[int] | None = None,
    pool: str = "world",
    k: int = 100,
    terms: int = 10,
    describe: bool = True,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every step on solens-tiny (or ``model``) and write the report into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    def step(name: str) -> Callable[[], None]:
        t0 = time.perf_counter()
        log(f"[demo] {name} ...")
        return lambda: timings.__setitem__(name, time.perf_counter() - t0)

    done = step("load model")
    if model is None:
        model = load_model("solens-tiny")
    done()

    done = step("zero-shot accuracy and block ablations")
    L = model.info.n_layers
    layers = list(range(L - 1)) if layers is None else list(layers)
    zero_shot, ablation = headline(model, n, layers)
    _plot_ablation(ablation, out / "ablation.png")
    done()

    done = step("second-order effects")
    run = run_effects(model, f"synth:balanced:{n}:{EVAL_SEED}", layers, out / "run",
                      progress=progress)
    done()

    summary: dict[str, Any] = {
        "version": __version__,
        "model": model.info.to_dict(),
        "n_images": n,
        "seed": EVAL_SEED,
        "zero_shot": zero_shot,
        "ablation": ablation,
        "run": str(Path("run")),
        "timings": timings,
    }
    if describe:
        done = step("descriptions")
        p = load_pool(pool)
        docs = describe_run(run, p, layers=layers, n_terms=terms, k=k, model=model,
                            progress=progress)
        done()
        done = step("ground-truth scores")
        emb = embed_pool(model, p)
        scores = score_run(run, layers, {d.layer: d for d in docs}, model, p, k,
                           pool_embeddings=np.asarray(emb))
        save_json_atomic(out / "describe-scores.json", scores)
        done()
        summary["describe"] = {**score_summary(scores), "pool": pool, "k": k, "terms": terms,
                               "polysemy_named_both": scores.get("polysemy_named_both"),
                               "examples": _examples(docs)}
    timings["total"] = time.perf_counter() - t_all
    save_json_atomic(out / "summary.json", summary)
    save_text_atomic(out / "report.md", _report(summary))
    log(f"[demo] wrote {out / 'summary.json'} and {out / 'report.md'} "
        f"({timings['total']:.0f} s)")
    return summary


def summary_line(summary: dict[str, Any]) -> str:
    """One-line digest for the terminal."""
    z = summary["zero_shot"]
    parts = [f"zero-shot balanced {100 * z['balanced']:.1f}%, conflict {100 * z['conflict']:.1f}%"]
    ab = summary["ablation"]
    worst = min(ab["second_order"], key=lambda l: ab["second_order"][l])
    parts.append(f"largest second-order ablation drop: block {worst} "
                 f"({100 * (ab['baseline'] - ab['second_order'][worst]):.1f} points)")
    d = summary.get("describe")
    if d:
        b = d["baselines"]
        parts.append(f"description hit rate {_pct(d['hit_rate'])} "
                     f"(direct {_pct(b['direct'])}, dissect {_pct(b['dissect'])})")
    return "; ".join(parts)


__all__ = ["headline", "run_demo", "summary_line"]
