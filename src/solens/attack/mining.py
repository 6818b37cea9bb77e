"""Word mining for a class pair (true ``c1`` -> target ``c2``, METHOD §5.5).

The method: the neurons whose rank-1 second-order direction r_n aligns best with the text
direction ``text(c2) - text(c1)`` carry what makes the model say c2 instead of c1; their
description terms, weighted by alignment x OMP coefficient, are words that may push an
image of c1 towards c2. Words too close to c2 itself (text-embedding cosine above a
threshold, or on a block list) are removed, so that an attack does not simply show c2.

The three baselines go through the same vote and filter:

- ``random``: the terms of randomly chosen neurons (weight = coefficient);
- ``similar_words``: the pool texts nearest to text(c2);
- ``indirect``: neurons selected and described by their *indirect*-effect directions
  (rank 1 of mean-ablation effects, OMP over the same pool) instead of r_n.

Everything here is pure: tensors and descriptions in, ranked words out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from solens.store.protocol import DescriptionsDoc

METHODS: tuple[str, ...] = ("second_order", "random", "similar_words", "indirect")
"""The method and its three baselines, in table order."""


@dataclass
class MinedWord:
    """One mined word: its summed vote and the neurons that voted ``(layer, neuron,
    vote)`` (empty for ``similar_words``)."""

    text: str
    score: float
    neurons: list[tuple[int, int, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {"text": self.text, "score": self.score,
                "neurons": [[l, n, v] for l, n, v in self.neurons]}


def pair_direction(t1: Tensor, t2: Tensor) -> Tensor:
    """Unit direction from class c1's text to class c2's: ``unit(unit(t2) - unit(t1))``;
    ``t1``, ``t2`` [d] -> [d]."""
    return F.normalize(F.normalize(t2.double(), dim=-1) - F.normalize(t1.double(), dim=-1),
                       dim=-1)


def alignments(directions: Tensor, target: Tensor) -> Tensor:
    """Cosine of each neuron direction with ``target``: [N, d], [d] -> [N] (0 for a zero
    direction)."""
    return F.normalize(directions.double(), dim=-1) @ F.normalize(target.double(), dim=-1)


def top_aligned(align: Mapping[int, Tensor], n: int) -> list[tuple[int, int, float]]:
    """The ``n`` (layer, neuron, alignment) of largest positive alignment over all layers
    (``align``: layer -> [N]), largest first; ties broken by (layer, neuron)."""
    rows = [(l, i, float(a)) for l, v in align.items() for i, a in enumerate(v.tolist())
            if a > 0]
    rows.sort(key=lambda r: (-r[2], r[0], r[1]))
    return rows[:n]


def random_neurons(n_neurons: Mapping[int, int], n: int, seed: int
                   ) -> list[tuple[int, int, float]]:
    """``n`` distinct (layer, neuron, 1.0) drawn uniformly over all layers' neurons
    (``n_neurons``: layer -> N) with generator ``seed``."""
    flat = [(l, i) for l in sorted(n_neurons) for i in range(n_neurons[l])]
    pick = np.random.default_rng(seed).choice(len(flat), min(n, len(flat)), replace=False)
    return [(flat[j][0], flat[j][1], 1.0) for j in sorted(pick.tolist())]


def terms_of(docs: Mapping[int, DescriptionsDoc]) -> dict[tuple[int, int], list[tuple[str, float]]]:
    """(layer, neuron) -> its description terms ``(text, coef)`` from descriptions
    documents (layer -> document)."""
    return {(l, e.neuron): [(t.text, float(t.coef)) for t in e.terms]
            for l, d in docs.items() for e in d.neurons}


def vote(
    neurons: Sequence[tuple[int, int, float]],
    terms: Mapping[tuple[int, int], Sequence[tuple[str, float]]],
) -> list[MinedWord]:
    """Words voted for by ``neurons`` (layer, neuron, weight): each neuron adds weight x
    coefficient to each of its terms with a positive coefficient; words with a positive
    total, largest first (ties by text)."""
    acc: dict[str, MinedWord] = {}
    for l, n, w in neurons:
        for text, coef in terms.get((l, n), ()):
            if coef <= 0:
                continue
            v = float(w) * float(coef)
            m = acc.setdefault(text, MinedWord(text, 0.0))
            m.score += v
            m.neurons.append((l, n, v))
    out = [m for m in acc.values() if m.score > 0]
    for m in out:
        m.neurons.sort(key=lambda r: -r[2])
    out.sort(key=lambda m: (-m.score, m.text))
    return out


def nearest_words(texts: Sequence[str], embeddings: Tensor, target: Tensor, n: int
                  ) -> list[MinedWord]:
    """The ``n`` texts whose embeddings [W, d] have the largest cosine with ``target`` [d]
    (score = that cosine), largest first."""
    cos = alignments(embeddings, target)
    order = sorted(range(len(texts)), key=lambda i: (-float(cos[i]), texts[i]))[:n]
    return [MinedWord(texts[i], float(cos[i])) for i in order]


def too_close(texts: Sequence[str], embeddings: Tensor, c2_text: Tensor, threshold: float,
              block: Sequence[str] = ()) -> set[str]:
    """Texts to drop: cosine of their embedding [W, d] with ``c2_text`` [d] above
    ``threshold``, or on the ``block`` list (case-insensitive)."""
    cos = alignments(embeddings, c2_text)
    blocked = {b.lower().strip() for b in block}
    return {t for t, c in zip(texts, cos.tolist(), strict=True)
            if c > threshold or t.lower().strip() in blocked}


def keep_words(words: Sequence[MinedWord], drop: set[str], n: int) -> list[MinedWord]:
    """The first ``n`` of ``words`` whose text is not in ``drop``."""
    return [w for w in words if w.text not in drop][:n]


def rank1_directions(effects: Tensor) -> Tensor:
    """Rank-1 direction of each neuron's effect vectors, as r_n is computed for
    second-order effects: effects [K, B, d] -> [K, d] unit rows, the top right-singular
    vector of the effects centred over B, signed so that most centred effects project
    positively on it (zero for a neuron without variation)."""
    x = effects.double() - effects.double().mean(1, keepdim=True)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    v = vh[:, 0]  # [K, d]
    proj = torch.einsum("kbd,kd->kb", x, v)
    sign = torch.where((proj > 0).sum(1) >= (proj < 0).sum(1), 1.0, -1.0).to(v)
    v = v * sign[:, None]
    return torch.where((s[:, :1] > 0), v, torch.zeros_like(v))


__all__ = [
    "METHODS",
    "MinedWord",
    "alignments",
    "keep_words",
    "nearest_words",
    "pair_direction",
    "random_neurons",
    "rank1_directions",
    "terms_of",
    "too_close",
    "top_aligned",
    "vote",
]
