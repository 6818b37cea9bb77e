"""Exact ("exact" convention) decompositions of f(I) and of each head's CLS output.

``direct_contributions`` splits f(I) into first-order summands: the embedding, every
head's CLS output, every neuron at CLS, each block's biases, and ``ln_post``'s bias.
``head_decomposition`` splits each later head's contribution into the upstream summands
of its input (second-order paths), plus ``ln_1``'s bias and the value bias.
Every split adds back to its whole to float tolerance (tests).

Shapes: B images, T tokens, D residual width, H heads, N MLP width, d embedding dim; a
``trace`` is ``model.trace(images [B, 3, S, S], ...)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from solens.lens.frozen import cls_weights, head_ov, post_map, to_embedding
from solens.models.model import Model
from solens.models.trace import Trace


def _inv_sigma_post(trace: Trace) -> Tensor:
    return 1.0 / trace["ln_post.hook_scale"]


def _to_embedding(model: Model, trace: Trace, r: Tensor) -> Tensor:
    """CLS-residual summands [B, ..., D] -> contributions to f(I) [B, ..., d]."""
    return to_embedding(model.weights, r, _inv_sigma_post(trace))


def head_outputs(model: Model, trace: Trace, layer: int) -> Tensor:
    """Per-head attention outputs at every token, after layer scale: [B, T, H, D].

    ``trace`` holds block ``layer``'s ``hook_resid_pre``, ``ln1.hook_mean``/``hook_scale``
    and ``attn.hook_pattern``.
    """
    b = model.weights.blocks[layer]
    x = trace[f"blocks.{layer}.hook_resid_pre"]
    mu = trace[f"blocks.{layer}.ln1.hook_mean"].unsqueeze(-1)
    sd = trace[f"blocks.{layer}.ln1.hook_scale"].unsqueeze(-1)
    ln = b.ln1_w * (x - mu) / sd + b.ln1_b
    v = torch.einsum("btD,hDe->bhte", ln, b.W_V) + b.b_V[None, :, None, :]
    z = trace[f"blocks.{layer}.attn.hook_pattern"] @ v  # [B, H, T, dh]
    return torch.einsum("bhte,heD->bthD", z, b.W_O) * b.ls1_or_one()


def direct_contributions(model: Model, trace: Trace) -> dict[str, Tensor]:
    """First-order summands of f(I) (trace recorded with ``names=None``).

    Keys and shapes: ``embed`` [B, d]; ``blocks.{l}.attn.heads`` [B, H, d];
    ``blocks.{l}.attn.bias`` [B, d]; ``blocks.{l}.mlp.neurons`` [B, N, d];
    ``blocks.{l}.mlp.bias`` [B, d]; ``ln_post.bias`` [B, d]. They sum to f(I).
    """
    w = model.weights
    out: dict[str, Tensor] = {"embed": _to_embedding(model, trace, trace["hook_embed"][:, 0])}
    B = trace["hook_embed"].shape[0]
    for l, b in enumerate(w.blocks):
        heads = head_outputs(model, trace, l)[:, 0]  # [B, H, D]
        out[f"blocks.{l}.attn.heads"] = _to_embedding(model, trace, heads)
        out[f"blocks.{l}.attn.bias"] = _to_embedding(
            model, trace, (b.ls1_or_one() * b.b_O).expand(B, -1)
        )
        post = trace[f"blocks.{l}.mlp.hook_post"][:, 0]  # [B, N]
        write = b.W_out * b.ls2_or_one()  # [N, D]
        out[f"blocks.{l}.mlp.neurons"] = _to_embedding(
            model, trace, post.unsqueeze(-1) * write
        )
        out[f"blocks.{l}.mlp.bias"] = _to_embedding(
            model, trace, (b.ls2_or_one() * b.b_out).expand(B, -1)
        )
    out["ln_post.bias"] = (w.ln_post_b @ w.proj).expand(B, -1)
    return out


def push_through_heads(model: Model, trace: Trace, component: Tensor, layer: int) -> Tensor:
    """A residual summand ``component`` [B, T, D] at block ``layer``'s input, through each
    of its heads' frozen OV path into f(I): [B, H, d] (exact convention)."""
    mix = cls_weights(
        trace[f"blocks.{layer}.attn.hook_pattern"], trace[f"blocks.{layer}.ln1.hook_scale"]
    )
    out = torch.einsum("bht,btD,hDd->bhd", mix, component, head_ov(model.weights, layer))
    return out * _inv_sigma_post(trace)[:, None, None]


def head_decomposition(model: Model, trace: Trace, layer: int) -> dict[str, Tensor]:
    """Split block ``layer``'s heads' contributions to f(I) by upstream summand: [B, H, d]
    each (trace recorded with ``names=None``).

    Keys: ``embed``, ``blocks.{l}.attn`` (all heads and bias of an earlier block),
    ``blocks.{l}.mlp`` (all neurons, bias excluded), ``blocks.{l}.mlp.bias``,
    ``ln_1.bias`` and ``attn.value_bias``. They sum to ``direct_contributions``'
    ``blocks.{layer}.attn.heads``.
    """
    w = model.weights
    b = w.blocks[layer]
    T = trace["hook_embed"].shape[1]
    B = trace["hook_embed"].shape[0]
    parts = {"embed": push_through_heads(model, trace, trace["hook_embed"], layer)}
    for l in range(layer):
        bl = w.blocks[l]
        parts[f"blocks.{l}.attn"] = push_through_heads(
            model, trace, trace[f"blocks.{l}.hook_attn_out"], layer
        )
        bias = (bl.ls2_or_one() * bl.b_out).expand(B, T, -1)
        parts[f"blocks.{l}.mlp"] = push_through_heads(
            model, trace, trace[f"blocks.{l}.hook_mlp_out"] - bias, layer
        )
        parts[f"blocks.{l}.mlp.bias"] = push_through_heads(model, trace, bias, layer)
    inv = _inv_sigma_post(trace)[:, None, None]
    pm = post_map(w)
    wo = b.W_O * b.ls1_or_one()  # [H, dh, D]
    beta_path = torch.einsum("D,hDe,heF->hF", b.ln1_b, b.W_V, wo) @ pm  # rows of A sum to 1
    parts["ln_1.bias"] = beta_path.expand(B, -1, -1) * inv
    vb = torch.einsum("he,heF->hF", b.b_V, wo) @ pm
    parts["attn.value_bias"] = vb.expand(B, -1, -1) * inv
    return parts
