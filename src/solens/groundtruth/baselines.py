"""Baseline descriptions scored next to the second-order ones: OMP of the direct-effect
directions, CLIP-Dissect-style correlation, random texts (chance); and the activation
profiles the Dissect baseline needs."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from solens.describe.omp import omp, prepare_dictionary
from solens.errors import InputError
from solens.lens.frozen import post_map
from solens.models.model import Model
from solens.store.compute import default_preprocess
from solens.store.images import ImageSource, pixels
from solens.store.run import Run


def direct_directions(model: Model, layer: int) -> torch.Tensor:
    """Image-independent direct-effect directions ``P(w_n)`` [N, d] (exact convention):
    ``(gamma_post * C(ls_2 * W_out[n])) @ proj``."""
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
    if order not in ("abs", "positive"):
        raise InputError(f"order must be 'abs' or 'positive', got {order!r}")
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


def run_rows(run: Run) -> tuple[ImageSource, list[int]]:
    """The run's dataset and, per row of the run, its candidate index in that dataset."""
    return run.images(), run.row_candidates


@torch.no_grad()
def activation_profiles(
    model: Model,
    run: Run,
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
        raise InputError(f"reduce must be mean, cls or max, got {reduce!r}")
    source, rows = run_rows(run)
    pre = default_preprocess(model)
    n = len(rows)
    names = [f"blocks.{l}.mlp.hook_post" for l in layers]
    out = {l: np.zeros((n, model.info.d_mlp), np.float32) for l in layers}
    stored = np.asarray(run.embeddings[:], np.float64)
    worst = 0.0
    for b0 in range(0, n, batch_size):
        b1 = min(n, b0 + batch_size)
        tr = model.trace(pixels(source, pre, rows[b0:b1]), names)
        for l in layers:
            a = tr[f"blocks.{l}.mlp.hook_post"]  # [B, T, N]
            r = a.mean(1) if reduce == "mean" else a[:, 0] if reduce == "cls" else a.amax(1)
            out[l][b0:b1] = r.float().cpu().numpy()
        f = tr.embedding.double().cpu().numpy()
        den = np.linalg.norm(stored[b0:b1], axis=1).clip(min=1e-12)
        worst = max(worst, float((np.linalg.norm(f - stored[b0:b1], axis=1) / den).max()))
    return out, worst
