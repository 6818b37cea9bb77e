"""Brute-force baselines for second-order effects (tests and benchmarks only).

``reference_second_order`` follows the reference repository's algorithm: per later head,
materialise every neuron's write at every token [B, T, N, D], apply the frozen ``ln_1``,
``W_V``, the attention mixing, ``out_proj``, the frozen ``ln_post`` and ``proj``.
``perturbation_second_order`` injects one neuron's write into the later attention inputs
only, with attention probabilities and LayerNorm scales frozen, through the modules' own
weights (``in_proj_weight``, ``out_proj``) rather than ``ViTWeights``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from solens.lens.frozen import check_convention
from solens.lens.second_order import OFFICIAL_SCALE, check_layer, trace_names
from solens.models.model import Model


@torch.no_grad()
def reference_second_order(
    model: Model,
    images: Tensor,
    layer: int,
    *,
    neurons: Sequence[int] | None = None,
    convention: str = "exact",
) -> Tensor:
    """The reference algorithm: images [B, 3, S, S] -> [B, N, d] (N = ``len(neurons)``,
    all neurons when None). Memory O(B * T * N * D) per head."""
    check_convention(convention)
    check_layer(model, layer)
    official = convention == "official"
    w = model.weights
    L = w.n_layers
    tr = model.trace(images, trace_names([layer], L))
    src = w.blocks[layer]
    post = tr[f"blocks.{layer}.mlp.hook_post"]  # [B, T, N]
    N_all = post.shape[-1]
    write_dirs = src.W_out * src.ls2_or_one()  # [N, D]
    if neurons is not None:
        idx = torch.as_tensor(neurons, dtype=torch.long)
        post, write_dirs = post[..., idx], write_dirs[idx]
    writes = torch.einsum("btn,nD->btnD", post, write_dirs)  # [B, T, N, D]
    if official:
        writes = writes + src.ls2_or_one() * src.b_out / N_all
    mu_post = tr["ln_post.hook_mean"][:, None, None]
    sd_post = tr["ln_post.hook_scale"][:, None, None]
    out = writes.new_zeros(())  # [] -> [B, N, d] as terms are added
    for lp in range(layer + 1, L):
        b = w.blocks[lp]
        H = b.n_heads
        mu = tr[f"blocks.{lp}.ln1.hook_mean"][:, :, None, None]
        sd = tr[f"blocks.{lp}.ln1.hook_scale"][:, :, None, None]
        pattern = tr[f"blocks.{lp}.attn.hook_pattern"]  # [B, H, T, T]
        K1 = (1 + 2 * lp) * N_all
        K2 = (1 + 2 * lp) * (1 + 2 * L) * H * N_all
        if official:
            normed = b.ln1_w * (writes - mu / K1) / sd + b.ln1_b / K1
        else:
            c = writes - writes.mean(-1, keepdim=True)
            normed = b.ln1_w * c / sd
        for h in range(H):
            v = normed @ b.W_V[h]  # [B, T, N, dh]
            if official:
                v = v + b.b_V[h] / K1
            mixed = torch.einsum("bqt,btne->bqne", pattern[:, h], v)  # all queries
            o = (mixed @ b.W_O[h]) * b.ls1_or_one()  # [B, T, N, D]
            if official:
                o = o + b.ls1_or_one() * b.b_O / (K1 * H)
            cls = o[:, 0]  # [B, N, D]
            if official:
                e = b.ln1_w.new_tensor(0) + w.ln_post_w * (cls - mu_post / K2) / sd_post
                e = e + w.ln_post_b / K2
            else:
                cls = cls - cls.mean(-1, keepdim=True)
                e = w.ln_post_w * cls / sd_post
            out = out + e @ w.proj
    if official:
        out = out * (OFFICIAL_SCALE / tr["hook_embedding"].norm(dim=-1))[:, None, None]
    return out


@torch.no_grad()
def perturbation_second_order(
    model: Model, images: Tensor, layer: int, neurons: Sequence[int]
) -> Tensor:
    """Inject each neuron's write into later attention inputs only (exact): images
    [B, 3, S, S] -> [B, n, d], n = ``len(neurons)``.

    The later attention blocks are re-applied to ``x + delta`` with frozen probabilities
    and LayerNorm statistics; the CLS output difference goes through the frozen
    ``ln_post`` (centred, divided by the real std) and ``proj``.
    """
    check_layer(model, layer)
    vis = model.visual
    blocks = vis.transformer.resblocks
    tr = model.trace(images)
    post = tr[f"blocks.{layer}.mlp.hook_post"]
    c_proj = blocks[layer].mlp.c_proj
    results = []
    for n in neurons:
        delta = post[..., n, None] * c_proj.weight[:, n]  # [B, T, D]
        delta = blocks[layer].ls_2(delta)
        total = torch.zeros_like(tr["hook_pooled"])
        for lp in range(layer + 1, len(blocks)):
            blk = blocks[lp]
            attn = blk.attn
            D, H = attn.embed_dim, attn.num_heads
            x = tr[f"blocks.{lp}.hook_resid_pre"]
            mu = tr[f"blocks.{lp}.ln1.hook_mean"].unsqueeze(-1)
            sd = tr[f"blocks.{lp}.ln1.hook_scale"].unsqueeze(-1)
            pattern = tr[f"blocks.{lp}.attn.hook_pattern"]

            def frozen_attn(inp: Tensor, mu=mu, sd=sd, pattern=pattern, attn=attn, blk=blk,
                            D=D, H=H) -> Tensor:
                ln = blk.ln_1.weight * (inp - mu) / sd + blk.ln_1.bias
                v = F.linear(ln, attn.in_proj_weight[2 * D :], attn.in_proj_bias[2 * D :])
                v = v.reshape(*v.shape[:2], H, D // H).transpose(1, 2)  # [B, H, T, dh]
                z = (pattern @ v).transpose(1, 2).reshape(v.shape[0], -1, D)
                return blk.ls_1(attn.out_proj(z))[:, 0]

            pert = x + delta
            # frozen LN with the perturbed summand's own channel mean (linear in delta)
            mu_p = mu + delta.mean(-1, keepdim=True)
            total = total + frozen_attn(pert, mu=mu_p) - frozen_attn(x)
        c = total - total.mean(-1, keepdim=True)
        e = (vis.ln_post.weight * c / tr["ln_post.hook_scale"].unsqueeze(-1)) @ vis.proj
        results.append(e)
    return torch.stack(results, dim=1)
