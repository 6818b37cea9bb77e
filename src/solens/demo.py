"""``solens demo``: the whole pipeline on the bundled model solens-tiny, offline.

Steps (each timed): held-out zero-shot accuracy (``balanced`` and ``conflict`` splits) and
per-block mean-ablation of second-order and direct effects, both on the bundled model's
headline evaluation set (``solens.tiny.evaluate.HEADLINE``: 2,000 scenes per split, seed
12345, the set the model card and ``solens synth eval`` quote, computed by the same function,
``solens.tiny.evaluate.headline``); then second-order effects of every block with a later
block into a run folder, neuron descriptions over a word pool and their ground-truth
scores, on the first ``n`` (1,000) of those balanced scenes. Writes ``OUT/summary.json``
(every figure, with the scenes it comes from), ``OUT/report.md``, ``OUT/ablation.png`` and
the run folder ``OUT/run`` (with its descriptions).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from solens import __version__
from solens.atlas.build import build_atlas
from solens.attack.showcase import demo_section as attack_demo_section
from solens.attack.showcase import report_lines as attack_report_lines
from solens.describe.describe import describe_run
from solens.describe.pools import embed_pool, load_pool
from solens.experiments.ablate import ablate_run
from solens.groundtruth.score import score_run
from solens.groundtruth.score import summary as score_summary
from solens.models.loading import load_model
from solens.models.model import Model
from solens.segment.run import demo_section as segment_section
from solens.segment.run import report_lines as segment_report
from solens.store.arrays import save_json_atomic, save_text_atomic
from solens.store.compute import run_effects
from solens.store.protocol import DescriptionsDoc
from solens.tiny.evaluate import HEADLINE, EvalSet
from solens.tiny.evaluate import headline as evaluate_headline

ABLATE_SEED = 12347
"""Seed of the scenes ``solens ablate`` evaluates in the demo (not the headline set's 12345,
nor 12346, whose scenes give the headline ablations their means)."""

LAST_BLOCK_NOTE = (
    "has no second-order effect: that effect is what a block's MLP writes into the tokens "
    "and a *later* attention head carries to the CLS output, and no head comes after the "
    "last block, so its MLP reaches the embedding only directly (at the CLS token)"
)


def _plot_ablation(ablation: dict[str, Any], path: Path, scenes: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = sorted(int(l) for l in ablation["direct"])
    last = ablation.get("last_block")
    base = ablation["baseline"]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    w = 0.38
    for i, (kind, colour) in enumerate((("second_order", "C0"), ("direct", "C1"))):
        ls = [l for l in layers if not (kind == "second_order" and l == last)]
        acc = [100 * ablation[kind][str(l)] for l in ls]
        ax.bar(np.array(ls) + (i - 0.5) * w, acc, w, label=kind.replace("_", "-"),
               color=colour)
    if last in layers:
        ax.text(last - 0.5 * w, 3, "none", rotation=90, ha="center", va="bottom", fontsize=7)
    ax.axhline(100 * base, color="k", ls="--", lw=1, label=f"no ablation ({100 * base:.1f}%)")
    ax.set_xlabel(f"block whose MLP effect is mean-ablated ({scenes})")
    ax.set_ylabel("zero-shot top-1 (%)")
    ax.set_xticks(layers)
    ax.set_ylim(0, 100)
    # above the axes, so that no bar is covered
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.01), ncol=3, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _ablate_section(a: dict[str, Any] | None) -> list[str]:
    """The report's part for ``solens ablate`` (docs/ablate.md explains every variant)."""
    if not a:
        return []
    variants = ("second_order", "significant_only", "insignificant_only", "rank1", "indirect",
                "direct")
    lines = [
        "", "## The paper's layer experiments (`solens ablate`)", "",
        f"Evaluation: `{a['eval']}` (other scenes than the run's, which are the reference set "
        "for the means, the thresholds tau_n and the rank-1 directions r_n). Zero-shot top-1 "
        f"(%) with block l's effects changed; baseline {100 * a['baseline']:.1f}%. See "
        "docs/ablate.md for what each variant does and how the figures compare with the paper.",
        "", f"![layer ablations]({a['folder']}/fig3.png)", "",
        "| block | " + " | ".join(v.replace("_", " ") for v in variants) + " |",
        "|---:|" + "---:|" * len(variants),
    ]
    for i, l in enumerate(a["layers"]):
        lines.append(f"| {l} | " + " | ".join(f"{100 * a[v][i]:.1f}" for v in variants) + " |")
    pc = a["pc1_variance"]
    frac = 100 * a["frac_significant_median"]
    lines += ["", f"Variance along PC1, mean over layers: second-order "
              f"{100 * pc['second_order']:.1f}%, indirect {100 * pc['indirect']:.1f}%. Median "
              f"fraction of evaluation images above tau_n: {frac:.1f}% (the run's k over its "
              "image count, by construction on the reference set)."]
    return lines


def _report(summary: dict[str, Any]) -> str:
    z = summary["zero_shot"]
    es = summary["eval_set"]
    ri = summary["run_images"]
    ab = summary["ablation"]
    n, seed = es["n"], es["seed"]
    worst = ab["largest_drop"]
    last = ab.get("last_block")
    m = summary["model"]
    lines = [
        "# solens demo report",
        "",
        f"Model: `{m['name']}` ({m['n_layers']} blocks, {m['n_heads']} heads, width "
        f"{m['d_model']}); solens {summary['version']}.",
        "",
        "## Which scenes each figure comes from",
        "",
        f"- **Zero-shot accuracy and block ablations** (`solens.tiny.evaluate.headline`): "
        f"{es['description']}. {_same_as_model_card(es)}The scenes are held out: training "
        "samples only the `train` split.",
        f"- **Second-order effects, descriptions and their ground-truth scores**: "
        f"{ri['note']} (`{ri['spec']}`), blocks {_span(summary['layers'])}.",
        "",
        "## Zero-shot classification (\"a photo of a {class}\", 20 classes)",
        "",
        "| split | scenes | top-1 |",
        "|---|---|---|",
        f"| balanced | {n:,} (seed {seed}) | {100 * z['balanced']:.1f}% |",
        f"| conflict (every planted context inverted: ship on road, apple not red, ...) | "
        f"{n:,} (seed {seed}) | {100 * z['conflict']:.1f}% |",
        "",
        f"## Mean-ablation of each block's MLP effects ({n:,} balanced scenes)",
        "",
        "Mean-ablating an effect replaces it, in each image's embedding, by its mean over "
        f"{es['ablation']['reference_n']:,} other balanced scenes (seed "
        f"{es['ablation']['reference_seed']}); the table gives zero-shot top-1 after that, "
        "and the drop in points. *Second-order*: the block's MLP output, at every token, "
        "taken through every later attention head into the CLS output. *Direct*: the MLP "
        "output at the CLS token, straight into the embedding.",
        "",
        "![ablation](ablation.png)",
        "",
        "| block | second-order ablated | direct ablated |",
        "|---|---|---|",
    ]
    base = ab["baseline"]

    def cell(acc: float) -> str:
        return f"{100 * acc:.1f}% ({100 * (base - acc):+.1f})"

    for l in sorted(ab["direct"], key=int):
        so = "none (no later block)" if int(l) == last else cell(ab["second_order"][l])
        lines.append(f"| {l} | {so} | {cell(ab['direct'][l])} |")
    lines += [
        "",
        f"Without ablation: {100 * base:.1f}% (the balanced figure above: same scenes, same "
        f"forward). All blocks at once: second-order {cell(ab['all_blocks']['second_order'])}, "
        f"direct {cell(ab['all_blocks']['direct'])}.",
        "",
        f"Largest second-order drop: **block {worst['block']} ({100 * worst['drop']:.1f} "
        "points)**.",
    ]
    if last is not None:
        lines += ["", f"Block {last}, the last block, {LAST_BLOCK_NOTE}."]
    if m["name"] == "solens-tiny" and worst["block"] == 0:
        lines += [
            "",
            "On solens-tiny, block 0's dominance is planted by its training recipe (MLP drop "
            "path on blocks 1-7 and at the CLS token; `docs/model-card.md`), so the demo "
            "finds what was put there; in CLIP ViT-B/32 the paper finds the large drop at "
            "block 9 of 12.",
        ]
    d = summary.get("describe")
    if d:
        lines += _describe_section(d, ri)
    lines += _ablate_section(summary.get("ablate"))
    lines += segment_report(summary.get("segment"), summary.get("segment_detail"))
    lines += attack_report_lines(summary.get("attack"), summary.get("discover"),
                                 summary.get("attack_detail"))
    if summary.get("atlas"):
        lines += ["", "## Neuron atlas (`solens atlas`)", "",
                  f"Open [{summary['atlas']}]({summary['atlas']}) in a browser (no server "
                  "needed): every described neuron, searchable by word, with its terms, top "
                  "images and their per-patch heatmaps; docs/atlas.md explains the pages."]
    lines += ["", "## Timings (s)", ""]
    lines += [f"- {k}: {v:.1f}" for k, v in summary["timings"].items()]
    return "\n".join(lines) + "\n"


def _same_as_model_card(es: dict[str, Any]) -> str:
    if (es["n"], es["seed"]) != (HEADLINE.n, HEADLINE.seed):
        return (f"(Not the headline set of the model card, {HEADLINE.n:,} scenes of seed "
                f"{HEADLINE.seed}.) ")
    return ("The model card and `solens synth eval` quote the same function on the same "
            "scenes, so their figures are these. ")


def _describe_section(d: dict[str, Any], ri: dict[str, Any]) -> list[str]:
    b = d["baselines"]
    lines = [
        "",
        f"## Neuron descriptions (pool `{d['pool']}`, top {d['k']} of {ri['n']:,} scenes per "
        "neuron)",
        "",
        "Each neuron's second-order effect is summarised by one direction r_n, the top "
        "singular vector of its effects on its top scenes (the `var top-k` column of "
        "`run/descriptions/*.md` says how much of them it captures). r_n is decomposed by "
        f"OMP ({d['terms']} terms) over the pool's text embeddings, and the terms with the "
        "largest coefficients describe the neuron.",
        "",
        "**Ground truth.** The synthetic world knows what every scene shows. A neuron's "
        f"ground-truth concepts are the classes, colours, patterns and backgrounds that are "
        f"over-represented among its top {d['k']} scenes (largest second-order effect): "
        "hypergeometric test, Benjamini-Hochberg q <= 0.01 over the block, enrichment >= 2. "
        "A neuron with at least one is *selective*, and only those are scored. A neuron is a "
        "*hit* when one of its top 5 terms names one of its ground-truth concepts "
        "(`docs/scoring.md`).",
        "",
        "| description | hit rate |",
        "|---|---|",
        f"| second-order (OMP of r_n) | {_pct(d['hit_rate'])} |",
        f"| direct effect (OMP of the neuron's first-order direction) | {_pct(b['direct'])} |",
        f"| CLIP-Dissect-style | {_pct(b['dissect'])} |",
        f"| chance (5 random pool texts) | {_pct(b.get('chance'))} |",
        "",
        "**The CLIP-Dissect-style baseline** describes a neuron by what makes it *fire*: over "
        "the run's scenes it correlates the neuron's activation (post-GELU, averaged over "
        "tokens) with each text's cosine similarity to the scene's embedding, and takes the "
        "best-correlated texts. The ground truth here is of the same kind, since it is what "
        "the neuron's top scenes *show*. The second-order description says instead what the "
        "neuron *adds to the output* through later heads. On this model that is mostly class "
        "evidence, the thing training rewards, while many neurons fire on a colour or a "
        "background. So r_n names a class where the ground truth names a colour, and "
        "Dissect can score higher without the second-order description being wrong: the "
        "two answer different questions. Read both next to chance: the pool is small, and "
        "every text in it names a concept.",
        "",
        f"**Polysemantic** here means that a selective neuron's ground-truth concepts fall "
        "into two or more unrelated groups, each covering at least 10% of its top scenes. "
        "Two concepts are related if they occur together in its top scenes (Jaccard >= 0.2) "
        "or form a pair planted by training (ship and sea, apple and red, ...). An example "
        "is a neuron whose top scenes are partly sea scenes and partly red objects. "
        f"{d['n_selective']:,} selective neurons; polysemantic: {_pct(d['polysemy'])}",
    ]
    if d.get("polysemy_strict") is not None:
        lines[-1] += (f" ({_pct(d['polysemy_strict'])} without neurons whose two largest "
                      "groups are two values of one attribute, e.g. two backgrounds, which "
                      "never share a scene)")
    lines[-1] += "."
    if d.get("polysemy_named_both") is not None:
        lines[-1] += (f" The top 10 terms of {_pct(d['polysemy_named_both'])} of the "
                      "polysemantic neurons name concepts of two groups.")
    ex = d.get("examples")
    if ex:
        lines += [
            "",
            f"**Examples from block {ex['block']}**, the block whose second-order ablation "
            f"costs the most accuracy: its {len(ex['neurons'])} neurons whose effects on their "
            "top scenes r_n captures best (largest `var top-k`). Terms are signed (OMP "
            "coefficients, largest magnitude first; r_n points the way most of the top "
            "scenes' effects do), so a negative term is a text that the neuron's effect on "
            "its top scenes points *away* from.",
            "",
            "| neuron | top 5 terms | ground truth (enrichment) | hit |",
            "|---|---|---|---|",
        ]
        for e in ex["neurons"]:
            gt = ", ".join(f"{c['concept']} ({c['enrichment']:.1f})" for c in e["ground_truth"])
            hit = "n/a" if e["hit"] is None else ("yes" if e["hit"] else "no")
            terms = ", ".join(f"{t['text']} ({t['coef']:+.2f})" for t in e["terms"])
            lines.append(f"| {e['neuron']} | {terms} | {gt or 'none'} | {hit} |")
    return lines


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _span(layers: Sequence[int]) -> str:
    ls = sorted(layers)
    if ls and ls == list(range(ls[0], ls[-1] + 1)) and len(ls) > 2:
        return f"{ls[0]}-{ls[-1]}"
    return ", ".join(str(l) for l in ls)


def _examples(
    docs: Sequence[DescriptionsDoc], scores: dict[str, Any], block: int, n: int = 6
) -> dict[str, Any] | None:
    """The ``n`` neurons of ``block`` with the largest ``var_topk`` (share of their top-k
    effects along r_n): their top-5 terms and ground-truth concepts (``None`` when ``block``
    was not described)."""
    doc = next((d for d in docs if d.layer == block), None)
    if doc is None:
        return None
    rows = {r["neuron"]: r for r in scores["layers"][str(block)]["neurons"]}
    out = []
    for e in sorted(doc.neurons, key=lambda e: -float(e.var_topk or 0))[:n]:
        row = rows.get(e.neuron, {})
        concepts = sorted(row.get("concepts", []), key=lambda c: -c["enrichment"])[:3]
        hit = row.get("hit")
        out.append({"neuron": e.neuron,
                    "terms": [{"text": t.text, "coef": t.coef} for t in e.terms[:5]],
                    "ground_truth": [{"concept": c["concept"], "enrichment": c["enrichment"]}
                                     for c in concepts],
                    "hit": None if hit is None else bool(hit.get("second_order"))})
    return {"block": block, "neurons": out}


def headline(
    model: Model, eval_set: EvalSet = HEADLINE
) -> tuple[dict[str, float], dict[str, Any]]:
    """The demo's headline figures: zero-shot top-1 on ``eval_set``'s ``balanced`` and
    ``conflict`` scenes and every block's mean-ablation accuracy on the same balanced scenes
    (``solens.tiny.evaluate.headline``, the function behind the model card and
    ``solens synth eval``). Returns ``(zero_shot, ablation)`` as ``summary.json`` holds them."""
    h = evaluate_headline(model, eval_set)
    block, drop = h.largest_drop("second_order")
    so, di = h.ablation["second_order"], h.ablation["direct"]
    ablation = {
        "baseline": so.baseline,
        "second_order": {str(l): v for l, v in so.by_layer().items()},
        "direct": {str(l): v for l, v in di.by_layer().items()},
        "all_blocks": {"second_order": so.all_layers, "direct": di.all_layers},
        "largest_drop": {"block": block, "drop": drop},
        "last_block": model.info.n_layers - 1,
    }
    return dict(h.zero_shot), ablation


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
    eval_set: EvalSet = HEADLINE,
    ablate_n: int = 500,
    segment_n: int = 100,
    attack_n: int = 20,
    atlas_top: int = 4,
    atlas_layers: Sequence[int] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every step on solens-tiny (or ``model``) and write the report into ``out``.

    The zero-shot accuracies and block ablations are computed on ``eval_set`` (default: the
    bundled model's headline set, whose figures the model card and ``solens synth eval``
    quote); the effects run, descriptions and scores use the first ``n`` of its balanced
    scenes and ``layers`` (default: every block with a later block). With the descriptions,
    ``solens ablate``'s experiments evaluate ``ablate_n`` other balanced scenes (seed
    ``ABLATE_SEED``), the run's images being the reference set; ``solens segment`` segments
    ``segment_n`` other balanced scenes (``solens.segment.run.DEMO_SEED``); ``solens attack``
    runs one pair with ``attack_n`` scenes per method and repeat and ``solens discover``
    scores ``5 * attack_n`` scenes; last the neuron atlas (``OUT/atlas/index.html``,
    ``atlas_top`` top images per neuron, of ``atlas_layers``: default every described
    layer)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    def step(name: str, detail: str = "") -> Callable[[], None]:
        t0 = time.perf_counter()
        log(f"[demo] {name}{detail} ...")
        return lambda: timings.__setitem__(name, time.perf_counter() - t0)

    done = step("load model")
    if model is None:
        model = load_model("solens-tiny")
    done()

    done = step("zero-shot accuracy and block ablations", f" ({eval_set.n} scenes per split)")
    L = model.info.n_layers
    layers = list(range(L - 1)) if layers is None else list(layers)
    zero_shot, ablation = headline(model, eval_set)
    _plot_ablation(ablation, out / "ablation.png",
                   f"{eval_set.n:,} balanced scenes, seed {eval_set.seed}")
    done()

    done = step("second-order effects", f" ({n} scenes)")
    spec = f"synth:balanced:{n}:{eval_set.seed}"
    run = run_effects(model, spec, layers, out / "run", progress=progress)
    done()

    summary: dict[str, Any] = {
        "version": __version__,
        "model": model.info.to_dict(),
        "eval_set": {**eval_set.to_dict(), "description": eval_set.describe()},
        "zero_shot": zero_shot,
        "ablation": ablation,
        "run_images": {"spec": spec, "split": "balanced", "n": n, "seed": eval_set.seed,
                       "note": _run_note(n, eval_set)},
        "layers": layers,
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
        s = score_summary(scores)
        s["baselines"]["chance"] = scores["baselines"].get("chance")
        summary["describe"] = {
            **s, "pool": pool, "k": k, "terms": terms,
            "polysemy_strict": scores.get("polysemy_strict"),
            "polysemy_named_both": scores.get("polysemy_named_both"),
            "examples": _examples(docs, scores, _example_block(ablation, layers)),
        }
        done = step("layer ablations", f" ({ablate_n} other scenes)")
        abl = ablate_run(run, f"synth:balanced:{ablate_n}:{ABLATE_SEED}", model=model,
                         layers=layers, pools=[pool], k=k, progress=progress)
        summary["ablate"] = {**abl.summary(), "eval": abl.settings.eval["spec"],
                             "folder": str(Path("run") / "ablate")}
        done()
        done = step("segmentation", f" ({segment_n} other scenes)")
        summary["segment"], summary["segment_detail"] = segment_section(
            run, model, segment_n, progress=progress)
        done()
        done = step("attack and discovery", f" ({attack_n} scenes per method and repeat)")
        summary["attack"], summary["discover"], summary["attack_detail"] = attack_demo_section(
            run, model, n_images=attack_n, n_discover=5 * attack_n, progress=progress)
        done()
        done = step("atlas", f" ({atlas_top} top images per neuron)")
        atlas = build_atlas(run, out / "atlas", model=model, n_top=atlas_top,
                            layers=atlas_layers, progress=progress)
        summary["atlas"] = "atlas/index.html"
        done()
        log(f"[demo] atlas of {atlas.n_neurons:,} neurons: {atlas.index}")
    timings["total"] = time.perf_counter() - t_all
    save_json_atomic(out / "summary.json", summary)
    save_text_atomic(out / "report.md", _report(summary))
    log(f"[demo] wrote {out / 'summary.json'} and {out / 'report.md'} "
        f"({timings['total']:.0f} s)")
    return summary


def _run_note(n: int, eval_set: EvalSet) -> str:
    if n <= eval_set.n:
        return f"the first {n:,} of those {eval_set.n:,} balanced scenes"
    return (f"the first {n:,} balanced scenes of seed {eval_set.seed} (those {eval_set.n:,} "
            "and more)")


def _example_block(ablation: dict[str, Any], layers: Sequence[int]) -> int:
    """The described block with the largest second-order ablation drop."""
    so = ablation["second_order"]
    return min(layers, key=lambda l: (so.get(str(l), 1.0), l))


def summary_line(summary: dict[str, Any]) -> str:
    """One-line digest for the terminal, each figure with the scenes it comes from (the
    README quotes it)."""
    z, es = summary["zero_shot"], summary["eval_set"]
    parts = [f"{es['n']:,} held-out scenes per split (seed {es['seed']}): zero-shot balanced "
             f"{100 * z['balanced']:.1f}%, conflict {100 * z['conflict']:.1f}%"]
    worst = summary["ablation"]["largest_drop"]
    parts.append(f"largest second-order ablation drop: block {worst['block']} "
                 f"({100 * worst['drop']:.1f} points)")
    d = summary.get("describe")
    if d:
        b = d["baselines"]
        parts.append(f"descriptions of {summary['run_images']['n']:,} of those balanced scenes: "
                     f"hit rate {_pct(d['hit_rate'])} (direct {_pct(b['direct'])}, dissect "
                     f"{_pct(b['dissect'])}, chance {_pct(b.get('chance'))})")
    return "; ".join(parts)


__all__ = ["headline", "run_demo", "summary_line"]
