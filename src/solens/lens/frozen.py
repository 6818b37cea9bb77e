"""Frozen-LayerNorm linear maps shared by every decomposition.

Shapes: B images, T tokens, D residual width, H heads, dh head width, d embedding dim.

With LayerNorm statistics frozen at their values in the real forward, ``LN(x)`` is
linear in each summand ``c`` of ``x``: ``gamma * C(c) / sigma`` (``C`` = subtract the
channel mean), with ``beta`` a separate component ("exact" convention, METHOD §3).
"""

from __future__ import annotations

from torch import Tensor

from solens.errors import InputError
from solens.models.weights import ViTWeights

CONVENTIONS = ("exact", "official")


def check_convention(convention: str) -> None:
    """Raise ``InputError`` for an unknown convention name."""
    if convention not in CONVENTIONS:
        raise InputError(f"unknown convention {convention!r}; choose one of {CONVENTIONS}")


def center(x: Tensor) -> Tensor:
    """Subtract the mean over the last axis: [..., D] -> [..., D]."""
    return x - x.mean(-1, keepdim=True)


def post_map(w: ViTWeights, centred: bool = True) -> Tensor:
    """Linear map of a CLS-residual summand to the embedding, before 1/sigma_post: [D, d].

    ``r -> (gamma_post * C(r)) @ proj`` (exact) or ``(gamma_post * r) @ proj`` (official).
    """
    g = w.ln_post_w.unsqueeze(1) * w.proj  # [D, d]
    return center(g.T).T if centred else g


def to_embedding(w: ViTWeights, r: Tensor, inv_sigma_post: Tensor) -> Tensor:
    """Contribution of CLS-residual summands ``r`` [B, ..., D] to f(I): [B, ..., d].

    ``inv_sigma_post`` [B]: ``1 / sigma`` of ``ln_post`` per image.
    """
    shape = (-1,) + (1,) * (r.dim() - 2) + (1,)
    return (r @ post_map(w)) * inv_sigma_post.reshape(shape)


def head_ov(w: ViTWeights, layer: int, centred: bool = True) -> Tensor:
    """Per-head map from a residual summand of block ``layer``'s input to the embedding.

    ``c -> [(gamma_1 * C(c)) @ W_V[h] @ W_O[h] * ls_1] -> post_map``: [H, D, d]
    (``centred=False``: without ``C``, official convention).
    Multiply by ``A[0, t] / sigma_1(t)`` and ``1 / sigma_post`` to get contributions.
    """
    b = w.blocks[layer]
    pm = post_map(w, centred)  # [D, d]
    wo = b.W_O * b.ls1_or_one()  # [H, dh, D]
    right = wo @ pm  # [H, dh, d]
    left = b.ln1_w.unsqueeze(1) * b.W_V  # [H, D, dh] (gamma_1 folded in)
    if centred:
        left = left - left.mean(1, keepdim=True)  # C applied to the input summand
    return left @ right


def cls_weights(pattern: Tensor, scale: Tensor) -> Tensor:
    """Frozen CLS-query mixing weights ``A[b, h, 0, t] / sigma_1[b, t]``: [B, H, T].

    ``pattern`` [B, H, T, T]: attention probabilities; ``scale`` [B, T]: ``ln_1``'s std.
    """
    return pattern[:, :, 0, :] / scale.unsqueeze(1)
