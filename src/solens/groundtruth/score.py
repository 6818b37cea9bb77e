"""Ground-truth scoring of neuron descriptions on the synthetic world (``solens.synth``).

Definitions (``docs/scoring.md`` has the full text):

- **Presence**: concept ``c`` (a world concept of kind class / colour / pattern /
  background) is present in an image if any object has it (class, colour, pattern) or the
  background is it.
- **Ground-truth concepts of a neuron**: with ``T`` its top-k images (largest centred
  second-order norm, from the describe statistics) among the ``n`` images of the run, ``K_c``
  images containing ``c`` and ``a`` of them in ``T``: one-sided hypergeometric (Fisher
  exact) test ``p = P(X >= a)``, ``X ~ Hypergeom(n, K_c, k)``; Benjamini-Hochberg over all
  (neuron, concept) tests of the layer (concepts present in at least one image); the
  concept is ground truth if ``q <= 0.01`` and the enrichment ``(a / k) / (K_c / n) >= 2``.
  A neuron is **selective** if it has at least one ground-truth concept.
- **Hit**: a selective neuron whose top-5 description terms name one of its ground-truth
  concepts (``term_matches``). **Hit rate** = hits / selective neurons.
- **Concept groups / polysemy**: two ground-truth concepts of a neuron are *related* if
  they co-occur in its top-k images (Jaccard of the sets of top-k images containing each
  >= 0.2) or form a planted (class, attribute) pair of ``solens.synth.SPURIOUS``; groups
  are the connected components of that relation, kept if they cover >= 10% of the top-k
  images. A selective neuron is **polysemantic** with >= 2 groups; its description *names
  both* when its top-10 terms match concepts of >= 2 groups.
- **Baselines**, scored on the same neurons and ground truth: ``direct`` (OMP of the
  image-independent direct-effect direction ``P(w_n) = (ls_2 * W_out[n]) @ post_map``
  over the same pool), ``dissect`` (CLIP-Dissect-style: Pearson correlation over the run's
  images between the neuron's token-mean post-GELU activation and each text's cosine with
  the image embeddings; top texts by correlation), ``chance`` (expected hit rate of
  ``n_top`` texts drawn at random from the pool).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np

from solens.describe.pools import Pool, embed_pool, load_pool
from solens.describe.stats import NeuronStats, compute_stats, has_stats, load_stats
from solens.errors import InputError
from solens.groundtruth.baselines import (
    activation_profiles,
    chance_hit,
    direct_directions,
    dissect_terms,
    omp_terms,
    pearson_scores,
    run_rows,
    text_similarities,
)
from solens.groundtruth.concepts import (
    concept_groups,
    concept_key,
    concept_presence,
    ground_truth,
    planted_pair,
    world_concepts,
)
from solens.groundtruth.matching import Matcher
from solens.models.model import Model
from solens.store.images import SynthImages
from solens.store.protocol import DescriptionsDoc
from solens.store.run import Run
from solens.synth.world import Concept

METHODS: tuple[str, ...] = ("second_order", "direct", "dissect")


# --- descriptions ------------------------------------------------------------------------
Descriptions = DescriptionsDoc | Mapping[int, Sequence[str]]
"""One layer's second-order descriptions: a ``solens describe`` document, or neuron ->
ordered texts."""


def description_terms(descriptions: Descriptions) -> dict[int, list[str]]:
    """Neuron -> ordered terms of one layer's descriptions (``Descriptions``); anything
    else is an ``InputError``."""
    if isinstance(descriptions, DescriptionsDoc):
        return {e.neuron: [t.text for t in e.terms] for e in descriptions.neurons}
    if isinstance(descriptions, Mapping) and all(
        isinstance(v, Sequence) and all(isinstance(t, str) for t in v)
        for v in descriptions.values()
    ):
        return {int(n): list(v) for n, v in descriptions.items()}
    raise InputError("descriptions must be a `solens describe` document (DescriptionsDoc) "
                     "or a mapping neuron -> list of texts")


# --- scoring -----------------------------------------------------------------------------
def _rate(x: Sequence[float]) -> float | None:
    return float(np.mean(x)) if len(x) else None


def score_neurons(
    presence: np.ndarray,
    concepts: Sequence[Concept],
    top_indices: np.ndarray,
    terms: Mapping[str, Mapping[int, Sequence[str]] | Sequence[Sequence[str]]],
    *,
    primary: str = "second_order",
    pool_texts: Sequence[str] | None = None,
    n_top: int = 5,
    n_named: int = 10,
    alpha: float = 0.01,
    min_enrichment: float = 2.0,
    jaccard: float = 0.2,
    min_share: float = 0.1,
) -> dict[str, Any]:
    """Score the descriptions ``terms[method][neuron]`` of N neurons against ground truth.

    ``presence`` [n, C] over ``concepts``; ``top_indices`` [N, k]. ``primary`` names the
    method reported as ``hit_rate`` (others go to ``baselines``; with ``pool_texts`` also
    ``chance``). Returns the summary and a per-neuron table (``neurons``).
    """
    gt = ground_truth(presence, top_indices, concepts, alpha=alpha,
                      min_enrichment=min_enrichment)
    match = Matcher(concepts)
    N = top_indices.shape[0]
    get = {m: (t if isinstance(t, Mapping) else dict(enumerate(t))) for m, t in terms.items()}
    if primary not in get:
        raise ValueError(f"primary method {primary!r} not in {sorted(get)}")
    pool_hits = None  # [K, C]: pool text names concept
    if pool_texts is not None:
        pool_hits = np.zeros((len(pool_texts), len(concepts)), bool)
        for i, text in enumerate(pool_texts):
            pool_hits[i, list(match(text))] = True
    hits: dict[str, list[bool]] = {m: [] for m in get}
    hits10: dict[str, list[bool]] = {m: [] for m in get}
    hits_planted: dict[str, list[bool]] = {m: [] for m in get}
    partners = [{i for i, b in enumerate(concepts) if planted_pair(a, b)} for a in concepts]
    named_both: dict[str, list[bool]] = {m: [] for m in get}
    named_both_top: dict[str, list[bool]] = {m: [] for m in get}
    chance: list[float] = []
    by_kind: dict[str, dict[str, list[bool]]] = {}
    kinds_poly: dict[str, int] = {}
    table = []
    for n in range(N):
        gcs = gt.neuron_concepts(n)
        row: dict[str, Any] = {
            "neuron": n,
            "selective": bool(gcs),
            "concepts": [
                {"concept": concept_key(concepts[j]), "word": concepts[j].word,
                 "hits": int(gt.hits[n, j]), "expected": round(float(
                     gt.k * gt.totals[j] / gt.n_images), 3),
                 "enrichment": round(float(gt.enrichment[n, j]), 3),
                 "p": float(gt.p[n, j]), "q": float(gt.q[n, j])}
                for j in gcs
            ],
            "terms": {m: list(t.get(n, []))[:n_named] for m, t in get.items()},
        }
        if gcs:
            gset = set(gcs)
            top_p = presence[top_indices[n]][:, gcs]
            groups = [[gcs[i] for i in g] for g in concept_groups(
                top_p, [concepts[j] for j in gcs], jaccard=jaccard, min_share=min_share)]
            poly = len(groups) >= 2
            row["groups"] = [[concept_key(concepts[j]) for j in g] for g in groups]
            row["polysemantic"] = poly
            if poly:
                kinds = "+".join(sorted(concepts[g[0]].kind for g in groups[:2]))
                kinds_poly[kinds] = kinds_poly.get(kinds, 0) + 1
            row["hit"] = {}
            lead_kind = concepts[gcs[0]].kind
            for m, t in get.items():
                ts = list(t.get(n, []))
                h = bool(match.named(ts[:n_top]) & gset)
                hits[m].append(h)
                hits10[m].append(bool(match.named(ts[:n_named]) & gset))
                wider = gset.union(*(partners[j] for j in gcs))
                hits_planted[m].append(bool(match.named(ts[:n_top]) & wider))
                by_kind.setdefault(lead_kind, {mm: [] for mm in get})[m].append(h)
                row["hit"][m] = h
                if poly:
                    for store, cut in ((named_both, n_named), (named_both_top, n_top)):
                        named = match.named(ts[:cut])
                        store[m].append(sum(bool(named & set(g)) for g in groups) >= 2)
            if pool_hits is not None:
                n_ok = int(pool_hits[:, gcs].any(1).sum())
                chance.append(chance_hit(len(pool_hits), n_ok, n_top))
        table.append(row)
    n_sel = int(gt.selective.sum())
    n_poly = sum(1 for r in table if r.get("polysemantic"))
    same_attr = {f"{x}+{x}" for x in ("background", "colour", "pattern", "size")}
    n_strict = n_poly - sum(v for kk, v in kinds_poly.items() if kk in same_attr)
    baselines: dict[str, float | None] = {m: _rate(h) for m, h in hits.items() if m != primary}
    if pool_texts is not None:
        baselines["chance"] = _rate(chance)
    return {
        "hit_rate": _rate(hits[primary]),
        "baselines": baselines,
        "hit_rate_top10": {m: _rate(h) for m, h in hits10.items()},
        "hit_rate_planted": {m: _rate(h) for m, h in hits_planted.items()},
        "polysemy": n_poly / n_sel if n_sel else None,
        "polysemy_strict": n_strict / n_sel if n_sel else None,
        "polysemy_named_both": _rate(named_both[primary]),
        "polysemy_named_both_top5": _rate(named_both_top[primary]),
        "polysemy_named_both_by_method": {m: _rate(v) for m, v in named_both.items()},
        "polysemy_kinds": kinds_poly,
        "n_selective": n_sel,
        "n_polysemantic": n_poly,
        "n_neurons": N,
        "n_tests": gt.n_tests,
        "k": gt.k,
        "n_images": gt.n_images,
        "by_kind": {kind: {"n": len(v[primary]), **{m: _rate(h) for m, h in v.items()}}
                    for kind, v in sorted(by_kind.items())},
        "concepts_per_selective": (float(gt.significant[gt.selective].sum(1).mean())
                                   if n_sel else None),
        "settings": {"primary": primary, "n_top": n_top, "n_named": n_named, "alpha": alpha,
                     "min_enrichment": min_enrichment, "jaccard": jaccard,
                     "min_share": min_share, "kinds": sorted({c.kind for c in concepts}),
                     "test": "one-sided hypergeometric, Benjamini-Hochberg over the layer"},
        "neurons": table,
    }


# --- runs --------------------------------------------------------------------------------
def run_specs(run: Run) -> list[dict[str, Any]]:
    """Scene specs of every row of a run over synthetic scenes (its ground truth)."""
    source, rows = run_rows(run)
    if not isinstance(source, SynthImages):
        raise InputError(f"run {run.path} is not over synthetic scenes: no ground truth")
    return [source.spec(i) for i in rows]


def _top_indices(
    run: Run, layer: int, k: int, stats: NeuronStats | None
) -> tuple[np.ndarray, NeuronStats]:
    if stats is None:
        stats = (load_stats(run, layer) if has_stats(run, layer) else None)
        if stats is None or stats.k < k:
            stats = compute_stats(run, layer, k, save=False)
    if stats.k < k:
        raise InputError(f"statistics hold the top {stats.k} images, fewer than k={k}")
    return np.asarray(stats.top_indices[:, :k]), stats


def _pool(model: Model, pool: Pool | str, pool_embeddings: np.ndarray | None
          ) -> tuple[list[str], np.ndarray, str]:
    p = pool if isinstance(pool, Pool) else load_pool(pool)
    emb = embed_pool(model, p) if pool_embeddings is None else np.asarray(pool_embeddings)
    if emb.shape[0] != len(p):
        raise InputError(f"{emb.shape[0]} pool embeddings for {len(p)} texts")
    return list(p.texts), emb, p.name


def score_layer(
    run: Any,
    layer: int,
    descriptions: Any,
    model: Any,
    pool: Any,
    k: int = 100,
    *,
    stats: Any = None,
    activations: np.ndarray | None = None,
    pool_embeddings: np.ndarray | None = None,
    n_top: int = 5,
    n_named: int = 10,
    omp_terms_n: int | None = None,
    nonneg: bool | None = None,
    order: str = "abs",
    reduce: str = "mean",
    gt_from: str = "second_order",
    **test_kw: Any,
) -> dict[str, Any]:
    """Score ``layer`` of a synthetic-scene ``run`` (see the module doc).

    ``descriptions``: the layer's second-order descriptions (``description_terms``), or
    ``None`` to describe the rank-1 directions ``r_n`` of the statistics here with the
    same OMP settings as the direct baseline (``omp_terms_n`` terms, default 10; ``nonneg``;
    ``order``). Given a ``solens describe`` document, the direct baseline takes
    its ``n_terms`` and method (omp / nnomp) unless ``omp_terms_n`` / ``nonneg`` are set.
    ``pool``: a ``Pool`` or pool name (embedded with ``model``'s text encoder
    unless ``pool_embeddings``). ``activations`` [n, N]: the Dissect profile (else traced
    here, ``reduce`` over tokens). ``gt_from="activation"`` takes the top-k images by that
    profile instead of by centred second-order norm (a robustness check). ``test_kw``:
    ``alpha``, ``min_enrichment``, ``jaccard``, ``min_share``.
    """
    run = run if isinstance(run, Run) else Run.open(run)
    if gt_from not in ("second_order", "activation"):
        raise InputError(f"gt_from must be second_order or activation, got {gt_from!r}")
    given = None
    if isinstance(descriptions, DescriptionsDoc):
        if descriptions.run_id != run.run_id:
            raise InputError(f"descriptions of run {descriptions.run_id} given for run "
                             f"{run.run_id}")
        if descriptions.layer != layer:
            raise InputError(f"descriptions of layer {descriptions.layer} given for layer "
                             f"{layer}")
        if omp_terms_n is None:
            omp_terms_n = descriptions.n_terms
        if nonneg is None:
            nonneg = descriptions.method == "nnomp"
    if descriptions is not None:
        given = description_terms(descriptions)
    omp_terms_n = 10 if omp_terms_n is None else omp_terms_n
    nonneg = bool(nonneg)
    texts, emb, pool_name = _pool(model, pool, pool_embeddings)
    top, st = _top_indices(run, layer, k, stats)
    concepts = world_concepts()
    presence = concept_presence(run_specs(run), concepts)
    check = None
    if activations is None:
        acts, check = activation_profiles(model, run, [layer], reduce=reduce)
        activations = acts[layer]
    if gt_from == "activation":
        top = np.argsort(-np.asarray(activations), axis=0, kind="stable")[:k].T
    omp = partial(omp_terms, n_terms=omp_terms_n, nonneg=nonneg, order=order)
    so = given if given is not None else omp(np.asarray(st.r, np.float64), emb, texts)
    direct = omp(direct_directions(model, layer).double().cpu(), emb, texts)
    sims = text_similarities(np.asarray(run.embeddings[:]), emb)
    dissect = dissect_terms(pearson_scores(activations, sims), texts, max(n_top, n_named))
    out = score_neurons(presence, concepts, top,
                        {"second_order": so, "direct": direct, "dissect": dissect},
                        pool_texts=texts, n_top=n_top, n_named=n_named, **test_kw)
    out["layer"] = layer
    out["settings"].update(
        pool=pool_name, pool_size=len(texts), omp_terms=omp_terms_n, nonneg=nonneg,
        order=order, dissect_activation=reduce, dissect_score="pearson", gt_from=gt_from,
        descriptions="given" if descriptions is not None else "omp of r_n (here)",
    )
    if check is not None:
        out["embedding_check_max_rel_diff"] = check
    return out


def score_run(
    run: Any,
    layers: Sequence[int] | None,
    descriptions: Any,
    model: Any,
    pool: Any,
    k: int = 100,
    *,
    reduce: str = "mean",
    **kw: Any,
) -> dict[str, Any]:
    """``score_layer`` for each of ``layers`` (default: all of the run's) and the summary
    over layers: rates pooled over all selective (resp. polysemantic) neurons of those
    layers. ``descriptions``: layer -> that layer's descriptions (``description_terms``),
    or None to describe the statistics' r_n here."""
    run = run if isinstance(run, Run) else Run.open(run)
    layers = list(run.layers if layers is None else layers)
    _, emb, _ = _pool(model, pool, kw.pop("pool_embeddings", None))
    acts, check = activation_profiles(model, run, layers, reduce=reduce)
    per: dict[int, dict[str, Any]] = {}
    for l in layers:
        d = None if descriptions is None else descriptions[l]
        per[l] = score_layer(run, l, d, model, pool, k, activations=acts[l],
                             pool_embeddings=emb, reduce=reduce, **kw)
        per[l]["embedding_check_max_rel_diff"] = check

    def pooled(get: Callable[[dict[str, Any]], float | None], weight: str) -> float | None:
        num = den = 0.0
        for r in per.values():
            v, w = get(r), r[weight]
            if v is not None and w:
                num += v * w
                den += w
        return num / den if den else None

    def baseline(m: str) -> Callable[[dict[str, Any]], float | None]:
        return lambda r: r["baselines"][m]

    n_sel = sum(r["n_selective"] for r in per.values())
    methods = [m for m in per[layers[0]]["baselines"]] if layers else []
    return {
        "hit_rate": pooled(lambda r: r["hit_rate"], "n_selective"),
        "baselines": {m: pooled(baseline(m), "n_selective") for m in methods},
        "polysemy": pooled(lambda r: r["polysemy"], "n_selective"),
        "polysemy_strict": pooled(lambda r: r["polysemy_strict"], "n_selective"),
        "polysemy_named_both": pooled(lambda r: r["polysemy_named_both"], "n_polysemantic"),
        "n_selective": n_sel,
        "n_polysemantic": sum(r["n_polysemantic"] for r in per.values()),
        "n_neurons": sum(r["n_neurons"] for r in per.values()),
        "layers": {str(l): r for l, r in per.items()},
    }


def summary(result: Mapping[str, Any]) -> dict[str, Any]:
    """The fields the demo puts in ``summary.json["describe"]``."""
    b = result["baselines"]
    return {"hit_rate": result["hit_rate"],
            "baselines": {"direct": b.get("direct"), "dissect": b.get("dissect")},
            "polysemy": result["polysemy"], "n_selective": result["n_selective"]}
