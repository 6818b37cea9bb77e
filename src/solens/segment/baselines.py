"""Baseline heatmaps on the same model and images (the paper's comparisons).

Each takes a ``Pass`` (one traced forward of a batch, with gradients of the target score
where needed) and returns per-patch scores [B, T - 1] (B images, T tokens, 0 = CLS):

- ``raw_attention``: the last block's attention from CLS to each patch, mean over heads;
- ``rollout`` (Abnar & Zuidema 2020, as in Chefer et al.'s code): per block the head-mean
  attention plus the identity, rows renormalised, multiplied from the first block to the
  last; the CLS row;
- ``chefer`` (Chefer, Gur, Wolf 2021, "Generic attention-model explainability"): relevance
  ``R = I``; per block ``R <- R + mean_h[(dS/dA_h * A_h)^+] R``; the CLS row. ``S`` is the
  cosine of f(I) with the target text; dS/dA comes from the gradient at the attention output
  (``dS/dA[h, t, s] = <dS/d head_h(t), v_h(s)>``, exact);
- ``textspan`` (Gandelsman et al. 2024): the direct contributions of each head of the last
  blocks at each patch token, ``A^{l,h}[0, t] (LN_1(x_t) W_V^h + b_V^h) W_O^h`` through the
  frozen ``ln_post`` and ``proj``, projected on the target text, summed over heads and blocks;
- ``gradcam`` (Selvaraju et al. 2017) on the last block: the input tokens of the last block
  (the only patch tokens that still reach f(I)) weighted by the mean gradient over patches,
  summed over channels, ReLU;
- ``random_neurons``: the paper's activation map with K neurons drawn at random from the
  chosen blocks (``solens.segment.heatmaps.activation_map``).

Shapes: H heads, D width, dh head width, d embedding dim.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from solens.lens.frozen import post_map
from solens.models.model import Model
from solens.segment.heatmaps import Pass


def raw_attention(p: Pass, n_layers: int) -> Tensor:
    """Last block's CLS-row attention, mean over heads: [B, T - 1]."""
    A = p.trace[f"blocks.{n_layers - 1}.attn.hook_pattern"]  # [B, H, T, T]
    return A.mean(1)[:, 0, 1:]


def rollout_matrix(patterns: Sequence[Tensor]) -> Tensor:
    """Attention rollout of per-block patterns [B, H, T, T] (first block first): [B, T, T]."""
    joint: Tensor | None = None
    for A in patterns:
        a = A.mean(1)
        a = a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = a / a.sum(-1, keepdim=True)
        joint = a if joint is None else a @ joint
    if joint is None:
        raise ValueError("no attention patterns")
    return joint


def rollout(p: Pass, n_layers: int) -> Tensor:
    """CLS row of the rollout over every block: [B, T - 1]."""
    pats = [p.trace[f"blocks.{l}.attn.hook_pattern"] for l in range(n_layers)]
    return rollout_matrix(pats)[:, 0, 1:]


def ln1_output(model: Model, p: Pass, layer: int) -> Tensor:
    """``ln_1`` of block ``layer`` applied to its input tokens: [B, T, D]."""
    b = model.weights.blocks[layer]
    tr = p.trace
    x = tr[f"blocks.{layer}.hook_resid_pre"]
    mean = x.mean(-1, keepdim=True)
    scale = (x - mean).pow(2).mean(-1, keepdim=True).add(b.ln1_eps).sqrt()
    return (x - mean) / scale * b.ln1_w + b.ln1_b


def values(model: Model, p: Pass, layer: int) -> Tensor:
    """Per-head values ``LN_1(x_s) W_V^h + b_V^h``: [B, H, T, dh]."""
    b = model.weights.blocks[layer]
    return torch.einsum("btD,hDe->bhte", ln1_output(model, p, layer), b.W_V) + b.b_V[None, :, None]


def attention_grad(model: Model, p: Pass, layer: int) -> Tensor:
    """dS/dA of block ``layer``'s attention probabilities: [B, H, T, T] (query, key)."""
    if p.grad_attn_out is None:
        raise ValueError("the pass has no gradients (forward(..., need_grad=True))")
    b = model.weights.blocks[layer]
    g = p.grad_attn_out[layer] * b.ls1_or_one()  # d S / d (out_proj output) [B, T, D]
    g_head = torch.einsum("btD,heD->bhte", g, b.W_O)  # d S / d head output [B, H, T, dh]
    return torch.einsum("bhte,bhse->bhts", g_head, values(model, p, layer))


def chefer_relevance(patterns: Sequence[Tensor], grads: Sequence[Tensor]) -> Tensor:
    """Chefer et al.'s relevance from per-block patterns and dS/dA [B, H, T, T]: [B, T, T]."""
    R: Tensor | None = None
    for A, G in zip(patterns, grads, strict=True):
        if R is None:
            R = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device).expand(
                A.shape[0], -1, -1).clone()
        cam = (G * A).clamp_min(0).mean(1)  # [B, T, T]
        R = R + cam @ R
    if R is None:
        raise ValueError("no attention patterns")
    return R


def chefer(model: Model, p: Pass) -> Tensor:
    """CLS row of Chefer et al.'s relevance: [B, T - 1]."""
    L = model.info.n_layers
    pats = [p.trace[f"blocks.{l}.attn.hook_pattern"] for l in range(L)]
    grads = [attention_grad(model, p, l) for l in range(L)]
    return chefer_relevance(pats, grads)[:, 0, 1:]


def head_token_contributions(model: Model, p: Pass, layer: int) -> Tensor:
    """Direct contribution of each head of block ``layer`` through each token to f(I),
    projected on the pass's targets: [B, H, T]."""
    w = model.weights
    b = w.blocks[layer]
    pm = post_map(w)  # [D, d]
    t = p.targets.to(pm)  # [B, d]
    wo = b.W_O * b.ls1_or_one()  # [H, dh, D]
    out_t = torch.einsum("heD,Dd,bd->bhe", wo, pm, t)  # [B, H, dh]
    v = values(model, p, layer)  # [B, H, T, dh]
    per_token = torch.einsum("bhte,bhe->bht", v, out_t)
    A0 = p.trace[f"blocks.{layer}.attn.hook_pattern"][:, :, 0, :]  # [B, H, T]
    inv = 1.0 / p.trace["ln_post.hook_scale"]
    return A0 * per_token * inv[:, None, None]


def textspan(model: Model, p: Pass, layers: Sequence[int]) -> Tensor:
    """Sum over the heads of ``layers`` of their per-patch direct contributions on the
    target: [B, T - 1]."""
    total: Tensor | None = None
    for l in layers:
        c = head_token_contributions(model, p, l).sum(1)[:, 1:]
        total = c if total is None else total + c
    if total is None:
        raise ValueError("no TextSpan layers")
    return total


def gradcam(model: Model, p: Pass) -> Tensor:
    """GradCAM on the last block's input tokens: [B, T - 1]."""
    if p.grad_last_input is None:
        raise ValueError("the pass has no gradients (forward(..., need_grad=True))")
    L = model.info.n_layers
    feat = p.trace[f"blocks.{L - 1}.hook_resid_pre"][:, 1:]  # [B, T-1, D]
    weight = p.grad_last_input[:, 1:].mean(1)  # [B, D]
    return torch.relu((feat * weight[:, None, :]).sum(-1))


__all__ = ["attention_grad", "chefer", "chefer_relevance", "gradcam",
           "head_token_contributions", "ln1_output", "raw_attention", "rollout",
           "rollout_matrix", "textspan", "values"]
