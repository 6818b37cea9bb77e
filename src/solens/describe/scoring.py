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

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from solens.errors import InputError
from solens.synth.spurious import SPURIOUS
from solens.synth.world import CONCEPTS, Concept, plural

GT_KINDS: tuple[str, ...] = ("class", "colour", "pattern", "background")
"""Concept kinds used as ground truth."""
METHODS: tuple[str, ...] = ("second_order", "direct", "dissect")

_TOKEN = re.compile(r"[a-z0-9]+")


# --- ground truth ------------------------------------------------------------------------
def concept_key(c: Concept) -> str:
    """``"kind:id"``, e.g. ``"class:ship"``."""
    return f"{c.kind}:{c.id}"


def world_concepts(kinds: Iterable[str] = GT_KINDS) -> list[Concept]:
    """The world's concepts of the given kinds, in ``CONCEPTS`` order."""
    ks = set(kinds)
    unknown = ks - {c.kind for c in CONCEPTS}
    if unknown:
        raise InputError(f"unknown concept kinds {sorted(unknown)}")
    return [c for c in CONCEPTS if c.kind in ks]


def concept_presence(
    specs: Sequence[Mapping[str, Any]], concepts: Sequence[Concept] | None = None
) -> np.ndarray:
    """Which concepts each scene shows: [n_images, n_concepts] bool.

    Class, colour, pattern, size: any object has it; background: the scene's background.
    """
    concepts = list(concepts) if concepts is not None else world_concepts()
    col = {(c.kind, c.id): j for j, c in enumerate(concepts)}
    X = np.zeros((len(specs), len(concepts)), bool)
    for i, s in enumerate(specs):
        keys = [("background", s["background"]["name"])]
        for o in s["objects"]:
            keys += [(kind, o[kind]) for kind in ("class", "colour", "pattern", "size")]
        for key in keys:
            j = col.get(key)
            if j is not None:
                X[i, j] = True
    return X


def bh_adjust(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values) over all entries of ``p``.

    ``q_(i) = min_{j >= i} p_(j) * m / j`` (sorted ascending), clipped to 1; same shape.
    """
    p = np.asarray(p, np.float64)
    flat = p.ravel()
    m = flat.size
    if m == 0:
        return p.copy()
    order = np.argsort(flat, kind="stable")
    ranked = flat[order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1].clip(max=1.0)
    out = np.empty(m)
    out[order] = q
    return out.reshape(p.shape)


@dataclass
class GroundTruth:
    """Enrichment of every (neuron, concept) among the neurons' top-k images.

    ``hits`` [N, C]: top-k images with the concept; ``totals`` [C]: images of the reference
    set with it; ``enrichment`` [N, C] = (hits / k) / (totals / n); ``p`` / ``q`` [N, C]:
    one-sided hypergeometric p-value and BH q-value (1 where untested); ``significant``
    [N, C]: ``q <= alpha`` and ``enrichment >= min_enrichment``.
    """

    concepts: list[Concept]
    k: int
    n_images: int
    hits: np.ndarray
    totals: np.ndarray
    enrichment: np.ndarray
    p: np.ndarray
    q: np.ndarray
    significant: np.ndarray
    n_tests: int
    alpha: float
    min_enrichment: float

    @property
    def selective(self) -> np.ndarray:
        """Neurons with at least one ground-truth concept: [N] bool."""
        return self.significant.any(1)

    def neuron_concepts(self, n: int) -> list[int]:
        """Ground-truth concept indices of neuron ``n``, smallest p-value first."""
        idx = np.flatnonzero(self.significant[n])
        return [int(j) for j in idx[np.lexsort((-self.enrichment[n, idx], self.p[n, idx]))]]


def ground_truth(
    presence: np.ndarray,
    top_indices: np.ndarray,
    concepts: Sequence[Concept],
    *,
    alpha: float = 0.01,
    min_enrichment: float = 2.0,
) -> GroundTruth:
    """Ground-truth concepts of every neuron from ``presence`` [n, C] and ``top_indices``
    [N, k] (rows of ``presence``); tests and BH as in the module doc."""
    from scipy.stats import hypergeom

    presence = np.asarray(presence, bool)
    top = np.asarray(top_indices, np.int64)
    n, C = presence.shape
    N, k = top.shape
    if len(concepts) != C:
        raise ValueError(f"{len(concepts)} concepts for {C} presence columns")
    totals = presence.sum(0)
    hits = np.stack([presence[t].sum(0) for t in top]) if N else np.zeros((0, C), np.int64)
    tested = totals > 0
    p = np.ones((N, C))
    p[:, tested] = hypergeom.sf(hits[:, tested] - 1, n, totals[tested], k)
    q = np.ones((N, C))
    q[:, tested] = bh_adjust(p[:, tested])
    with np.errstate(divide="ignore", invalid="ignore"):
        enrichment = np.where(tested, (hits / k) / (totals / n), 0.0)
    sig = (q <= alpha) & (enrichment >= min_enrichment) & tested
    return GroundTruth(list(concepts), k, n, hits, totals, enrichment, p, q, sig,
                       int(N * tested.sum()), alpha, min_enrichment)


# --- matching terms to concepts ----------------------------------------------------------
def tokens(text: str) -> tuple[str, ...]:
    """Lowercase alphanumeric tokens: ``"Polka-dot"`` -> ``("polka", "dot")``."""
    return tuple(_TOKEN.findall(text.lower()))


def concept_names(c: Concept) -> set[tuple[str, ...]]:
    """Token sequences that name ``c``: spec id, canonical word, synonyms (and, for
    classes, their plurals)."""
    names = {c.id, c.word, *c.synonyms}
    if c.kind == "class":
        names |= {plural(w) for w in list(names)}
    return {tokens(w) for w in names if tokens(w)}


def _contains(seq: tuple[str, ...], sub: tuple[str, ...]) -> bool:
    m = len(sub)
    return any(seq[i : i + m] == sub for i in range(len(seq) - m + 1))


def term_matches(term: str, c: Concept) -> bool:
    """Whether ``term`` names ``c``: one of ``concept_names(c)`` occurs in the term's
    tokens as a contiguous sequence ("vessel" -> ship, "a red cup" -> red and cup,
    "brick wall" -> brick wall)."""
    t = tokens(term)
    return any(_contains(t, name) for name in concept_names(c))


class Matcher:
    """Cached ``term_matches`` over a fixed concept list."""

    def __init__(self, concepts: Sequence[Concept]) -> None:
        self.concepts = list(concepts)
        self._by_first: dict[str, list[tuple[int, tuple[str, ...]]]] = {}
        for j, c in enumerate(self.concepts):
            for name in concept_names(c):
                self._by_first.setdefault(name[0], []).append((j, name))
        self._cache: dict[str, frozenset[int]] = {}

    def __call__(self, term: str) -> frozenset[int]:
        """Indices of the concepts that ``term`` names."""
        hit = self._cache.get(term)
        if hit is None:
            t = tokens(term)
            hit = frozenset(j for i, tok in enumerate(t) for j, name in self._by_first.get(tok, ())
                            if t[i : i + len(name)] == name)
            self._cache[term] = hit
        return hit

    def named(self, terms: Sequence[str]) -> set[int]:
        """Concepts named by any of ``terms``."""
        out: set[int] = set()
        for t in terms:
            out |= self(t)
        return out


# --- concept groups (polysemy) -----------------------------------------------------------
def planted_pair(a: Concept, b: Concept) -> bool:
    """Whether ``{a, b}`` is a (class, attribute value) pair planted in ``SPURIOUS``."""
    keys = {(a.kind, a.id), (b.kind, b.id)}
    return any(keys == {("class", s.cls), (s.attribute, s.value)} for s in SPURIOUS)


def concept_groups(
    top_presence: np.ndarray,
    concepts: Sequence[Concept],
    *,
    jaccard: float = 0.2,
    min_share: float = 0.1,
) -> list[list[int]]:
    """Groups of related concepts among one neuron's ground-truth concepts.

    ``top_presence`` [k, G]: presence of its G ground-truth ``concepts`` in its top-k images.
    Related: Jaccard of their top-k image sets >= ``jaccard``, or a planted pair; groups are
    connected components, kept if they cover >= ``min_share`` of the top-k images, largest
    coverage first. Entries are column indices.
    """
    P = np.asarray(top_presence, bool)
    k, G = P.shape
    if G == 0:
        return []
    Pf = P.astype(np.float64)
    inter = Pf.T @ Pf
    cnt = Pf.sum(0)
    union = cnt[:, None] + cnt[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        J = np.where(union > 0, inter / union, 0.0)
    parent = list(range(G))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(G):
        for j in range(i + 1, G):
            if J[i, j] >= jaccard or planted_pair(concepts[i], concepts[j]):
                parent[find(i)] = find(j)
    comps: dict[int, list[int]] = {}
    for i in range(G):
        comps.setdefault(find(i), []).append(i)
    groups = [(P[:, g].any(1).mean() if k else 0.0, g) for g in comps.values()]
    return [g for share, g in sorted(groups, key=lambda x: -x[0]) if share >= min_share]


# --- baselines ---------------------------------------------------------------------------
def direct_directions(model: Any, layer: int) -> torch.Tensor:
    """Image-independent direct-effect directions ``P(w_n)`` [N, d] (exact convention):
    ``(gamma_post * C(ls_2 * W_out[n])) @ proj``."""
    from solens.lens.frozen import post_map

    w = model.weights
    b = w.blocks[layer]
    return (b.W_out * b.ls2_or_one()) @ post_map(w)


def pearson_scores(activations: np.ndarray, similarities: np.ndarray) -> np.ndarray:
    """Pearson correlation over images of every activation profile with every text
    profile: [n, N] x [n, K] -> [N, K] (0 where a profile is constant)."""

    def standardise(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        x = x - x.mean(0)
        norm = np.linalg.norm(x, axis=0)
        return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)

    return standardise(activations).T @ standardise(similarities)


def text_similarities(image_embeddings: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
    """Cosine of every image with every text: [n, d] x [K, d] -> [n, K]."""

    def unit(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        return x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)

    return unit(image_embeddings) @ unit(text_embeddings).T


def dissect_terms(scores: np.ndarray, texts: Sequence[str], m: int = 10) -> list[list[str]]:
    """Per neuron, the ``m`` texts of largest score (``scores`` [N, K])."""
    m = min(m, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :m]
    return [[texts[j] for j in row] for row in top]


def omp_terms(
    targets: torch.Tensor | np.ndarray,
    pool_embeddings: np.ndarray,
    texts: Sequence[str],
    *,
    n_terms: int = 10,
    nonneg: bool = False,
    order: str = "abs",
) -> list[list[str]]:
    """Describe each target direction [B, d] by OMP over the prepared pool (centred,
    per-text normalised; ``solens.describe.omp``): its texts ordered by |coefficient|
    (``order="abs"``, as the reference code lists them) or positive coefficients only,
    largest first (``order="positive"``)."""
    from solens.describe.omp import omp, prepare_dictionary

    if order not in ("abs", "positive"):
        raise ValueError(f"order must be 'abs' or 'positive', got {order!r}")
    D, _ = prepare_dictionary(pool_embeddings)
    res = omp(D, torch.as_tensor(np.asarray(targets, np.float64)), n_terms, nonneg=nonneg)
    out = []
    for b in range(res.indices.shape[0]):
        pairs = res.terms(b)
        if order == "positive":
            pairs = sorted((p for p in pairs if p[1] > 0), key=lambda p: -p[1])
        out.append([texts[i] for i, _ in pairs])
    return out


def chance_hit(n_pool: int, n_matching: int, m: int) -> float:
    """Probability that ``m`` distinct texts drawn at random from ``n_pool`` include at
    least one of ``n_matching`` matching texts."""
    m = min(m, n_pool)
    if n_matching <= 0:
        return 0.0
    return 1.0 - math.comb(n_pool - n_matching, m) / math.comb(n_pool, m)


# --- descriptions ------------------------------------------------------------------------
_TERM_KEYS = ("text", "term", "word")
_LIST_KEYS = ("terms", "texts", "words", "description")


def _term_text(t: Any) -> str:
    if isinstance(t, str):
        return t
    if isinstance(t, Mapping):
        for key in _TERM_KEYS:
            if isinstance(t.get(key), str):
                return t[key]
    if isinstance(t, Sequence):
        for x in t:
            if isinstance(x, str):
                return x
    raise InputError(f"cannot read a description term from {t!r}")


def _entry_terms(e: Any) -> list[str]:
    if isinstance(e, Mapping):
        for key in _LIST_KEYS:
            if key in e:
                return [_term_text(t) for t in e[key]]
        raise InputError(f"description entry without terms ({', '.join(_LIST_KEYS)})")
    return [_term_text(t) for t in e]


def description_terms(descriptions: Any, layer: int | None = None) -> dict[int, list[str]]:
    """Neuron -> ordered terms, from the forms a description may take: a mapping
    neuron -> terms, a list indexed by neuron, ``{"neurons": [{"neuron": n, "terms":
    [...]}, ...]}``, or ``{"layers": {"9": ...}}`` (then ``layer`` picks one). A term is
    a string, ``{"text": ...}`` or a ``(index, coef, text)`` tuple."""
    d = descriptions
    if isinstance(d, Mapping) and "layers" in d:
        layers = d["layers"]
        if layer is None:
            raise InputError("descriptions hold several layers: pass layer=")
        if isinstance(layers, Mapping):
            d = layers.get(str(layer), layers.get(layer))  # type: ignore[call-overload]
        else:
            d = next((x for x in layers if int(x.get("layer", -1)) == layer), None)
        if d is None:
            raise InputError(f"descriptions have no layer {layer}")
    if isinstance(d, Mapping) and "neurons" in d:
        d = d["neurons"]
    if isinstance(d, Mapping):
        return {int(n): _entry_terms(e) for n, e in d.items()}
    out: dict[int, list[str]] = {}
    for i, e in enumerate(d):
        n = i
        if isinstance(e, Mapping):
            n = int(e.get("neuron", e.get("index", i)))
        out[n] = _entry_terms(e)
    return out


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
        for i, t in enumerate(pool_texts):
            pool_hits[i, list(match(t))] = True
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
def run_specs(run: Any) -> list[dict[str, Any]]:
    """Scene specs of every row of a run over ``synth:SPLIT:N:SEED:SIZE``."""
    from solens.synth.sampling import spec_at

    ds = run.manifest.get("dataset", {})
    if ds.get("kind") != "synth":
        raise InputError(f"run {run.path} is not over synthetic scenes: no ground truth")
    _, split, _, seed, size = ds["spec"].split(":")
    return [spec_at(int(i.rsplit(":", 1)[1]), split, int(seed), int(size))
            for i in run.image_paths]


def _run_images(run: Any) -> Callable[[int], Any]:
    """Row -> PIL image, for synthetic or folder runs."""
    ds = run.manifest.get("dataset", {})
    paths = run.image_paths
    if ds.get("kind") == "synth":
        from solens.synth.render import render

        specs = run_specs(run)
        return lambda i: render(specs[i]).image.convert("RGB")
    from pathlib import Path

    from solens.store.images import FolderImages

    src = FolderImages(Path(run.image_root), list(paths))
    return src.load


@torch.no_grad()
def activation_profiles(
    model: Any,
    run: Any,
    layers: Sequence[int],
    *,
    reduce: str = "mean",
    batch_size: int = 64,
) -> tuple[dict[int, np.ndarray], float]:
    """Post-GELU activation of every neuron of ``layers`` on every image of the run,
    reduced over tokens (``mean`` over all tokens, ``cls``, or ``max``): layer -> [n, N].

    Also returns the largest relative difference between the re-computed and the stored
    embeddings (a check that the images and model are the run's)."""
    if reduce not in ("mean", "cls", "max"):
        raise ValueError(f"reduce must be mean, cls or max, got {reduce!r}")
    from solens.store.compute import default_preprocess

    load = _run_images(run)
    pre = default_preprocess(model)
    n = run.n_images
    names = [f"blocks.{l}.mlp.hook_post" for l in layers]
    out = {l: np.zeros((n, model.info.d_mlp), np.float32) for l in layers}
    stored = np.asarray(run.embeddings[:], np.float64)
    worst = 0.0
    for b0 in range(0, n, batch_size):
        b1 = min(n, b0 + batch_size)
        x = torch.stack([pre(load(i)) for i in range(b0, b1)])
        tr = model.trace(x, names)
        for l in layers:
            a = tr[f"blocks.{l}.mlp.hook_post"]  # [B, T, N]
            r = a.mean(1) if reduce == "mean" else a[:, 0] if reduce == "cls" else a.amax(1)
            out[l][b0:b1] = r.float().cpu().numpy()
        f = tr.embedding.double().cpu().numpy()
        den = np.linalg.norm(stored[b0:b1], axis=1).clip(min=1e-12)
        worst = max(worst, float((np.linalg.norm(f - stored[b0:b1], axis=1) / den).max()))
    return out, worst


def _top_indices(run: Any, layer: int, k: int, stats: Any) -> tuple[np.ndarray, Any]:
    from solens.describe.stats import compute_stats, has_stats, load_stats

    if stats is None:
        stats = (load_stats(run, layer) if has_stats(run, layer) else None)
        if stats is None or stats.k < k:
            stats = compute_stats(run, layer, k, save=False)
    if stats.k < k:
        raise InputError(f"statistics hold the top {stats.k} images, fewer than k={k}")
    return np.asarray(stats.top_indices[:, :k]), stats


def _pool(model: Any, pool: Any, pool_embeddings: np.ndarray | None
          ) -> tuple[list[str], np.ndarray, str]:
    from solens.describe.pools import Pool, embed_pool, load_pool

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

    ``descriptions``: the second-order descriptions in any form ``description_terms``
    reads, or ``None`` to describe the rank-1 directions ``r_n`` of the statistics here
    with the same OMP settings as the direct baseline (``omp_terms_n`` terms, default 10;
    ``nonneg``; ``order``). Given a ``solens describe`` document, the direct baseline takes
    its ``n_terms`` and method (omp / nnomp) unless ``omp_terms_n`` / ``nonneg`` are set.
    ``pool``: a ``Pool`` or pool name (embedded with ``model``'s text encoder
    unless ``pool_embeddings``). ``activations`` [n, N]: the Dissect profile (else traced
    here, ``reduce`` over tokens). ``gt_from="activation"`` takes the top-k images by that
    profile instead of by centred second-order norm (a robustness check). ``test_kw``:
    ``alpha``, ``min_enrichment``, ``jaccard``, ``min_share``.
    """
    from solens.store.run import Run

    run = run if isinstance(run, Run) else Run.open(run)
    if gt_from not in ("second_order", "activation"):
        raise ValueError(f"gt_from must be second_order or activation, got {gt_from!r}")
    given = None
    if descriptions is not None:
        meta = descriptions if isinstance(descriptions, Mapping) else {}
        rid = meta.get("run_id")
        if rid is not None and rid != run.manifest.get("run_id"):
            raise InputError(f"descriptions of run {rid} given for run "
                             f"{run.manifest.get('run_id')}")
        if isinstance(meta.get("layer"), int) and meta["layer"] != layer:
            raise InputError(f"descriptions of layer {meta['layer']} given for layer {layer}")
        given = description_terms(descriptions, layer)
        if omp_terms_n is None and isinstance(meta.get("n_terms"), int):
            omp_terms_n = meta["n_terms"]
        if nonneg is None and meta.get("method") in ("omp", "nnomp"):
            nonneg = meta["method"] == "nnomp"
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
    kw = {"n_terms": omp_terms_n, "nonneg": nonneg, "order": order}
    so = given if given is not None else omp_terms(np.asarray(st.r, np.float64), emb, texts, **kw)
    direct = omp_terms(direct_directions(model, layer).double().cpu(), emb, texts, **kw)
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
    layers. ``descriptions``: per-layer mapping, one object holding all layers, or None."""
    from solens.store.run import Run

    run = run if isinstance(run, Run) else Run.open(run)
    layers = list(run.layers if layers is None else layers)
    _, emb, _ = _pool(model, pool, kw.pop("pool_embeddings", None))
    acts, check = activation_profiles(model, run, layers, reduce=reduce)
    per: dict[int, dict[str, Any]] = {}
    for l in layers:
        d = descriptions
        if isinstance(descriptions, Mapping) and "layers" not in descriptions and (
            l in descriptions or str(l) in descriptions
        ):
            d = descriptions.get(l, descriptions.get(str(l)))
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

    n_sel = sum(r["n_selective"] for r in per.values())
    methods = [m for m in per[layers[0]]["baselines"]] if layers else []
    return {
        "hit_rate": pooled(lambda r: r["hit_rate"], "n_selective"),
        "baselines": {m: pooled(lambda r, m=m: r["baselines"][m], "n_selective")
                      for m in methods},
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
