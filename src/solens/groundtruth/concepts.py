"""Ground-truth concepts of neurons: presence of world concepts in scenes, enrichment of a
neuron's top images (one-sided hypergeometric test, Benjamini-Hochberg over the layer), and
groups of related concepts (polysemy). Definitions: ``solens.groundtruth.score``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import hypergeom

from solens.errors import InputError
from solens.synth.spurious import SPURIOUS
from solens.synth.world import CONCEPTS, Concept

GT_KINDS: tuple[str, ...] = ("class", "colour", "pattern", "background")
"""Concept kinds used as ground truth."""


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
        return np.asarray(self.significant.any(1))

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
