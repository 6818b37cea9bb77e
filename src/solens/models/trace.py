"""Traced forward of an open_clip ``VisionTransformer`` with TransformerLens-style names.

The forward calls open_clip's own modules in their own order (patch embedding, ``ln_pre``,
each block's ``ln_1``/``attn``/``ls_1``/``ln_2``/``mlp``/``ls_2``, pooling, ``proj``) and
records intermediate tensors. Recorded names (B images, T tokens, D width, H heads,
N MLP width, d embedding dim):

- ``hook_embed`` [B, T, D]: residual stream after ``ln_pre`` (the block-0 input)
- ``blocks.{l}.hook_resid_pre`` [B, T, D]
- ``blocks.{l}.ln1.hook_mean`` / ``hook_scale`` [B, T]: LayerNorm mean and std (with eps)
- ``blocks.{l}.attn.hook_pattern`` [B, H, T, T]: attention probabilities
- ``blocks.{l}.hook_attn_out`` [B, T, D]: attention output after layer scale
- ``blocks.{l}.hook_resid_mid`` [B, T, D]
- ``blocks.{l}.ln2.hook_mean`` / ``hook_scale`` [B, T]
- ``blocks.{l}.mlp.hook_pre`` / ``hook_post`` [B, T, N]: pre/post activation
- ``blocks.{l}.hook_mlp_out`` [B, T, D]: MLP output after layer scale
- ``blocks.{l}.hook_resid_post`` [B, T, D]
- ``hook_pooled`` [B, D]: final residual of the CLS token (before ``ln_post``)
- ``ln_post.hook_mean`` / ``hook_scale`` [B]
- ``hook_embedding`` [B, d]: the unnormalised image embedding f(I)
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from solens.models.openclip_types import as_tower

if TYPE_CHECKING:
    from solens.models.openclip_types import VisionTower


def ln_stats(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Mean and std (sqrt(var + eps)) over the last axis: [..., D] -> ([...], [...])."""
    mean = x.mean(-1)
    var = (x - mean.unsqueeze(-1)).pow(2).mean(-1)
    return mean, torch.sqrt(var + eps)


class Trace(dict[str, Tensor]):
    """Recorded activations of one traced forward, keyed by hook name."""

    def __getitem__(self, name: str) -> Tensor:
        try:
            return super().__getitem__(name)
        except KeyError:
            shown = ", ".join(sorted(self)[:8]) + (" ..." if len(self) > 8 else "")
            raise KeyError(f"{name!r} was not recorded; recorded: {shown}") from None

    @property
    def embedding(self) -> Tensor:
        """f(I): [B, d]."""
        return self["hook_embedding"]


class _Recorder:
    def __init__(self, names: Iterable[str] | None) -> None:
        self.trace = Trace()
        self.everything = names is None
        listed = [] if names is None else list(names)
        # exact names by set lookup; only globs go through fnmatch (a ViT-B/32 forward
        # asks about 170 names: matching each against 40 patterns cost 5 ms per call)
        self.exact = {n for n in listed if not any(c in n for c in "*?[")}
        self.globs = [n for n in listed if n not in self.exact]

    def wants(self, name: str) -> bool:
        if self.everything or name in self.exact:
            return True
        return any(fnmatch.fnmatchcase(name, p) for p in self.globs)

    def wants_any(self, *names: str) -> bool:
        return any(self.wants(n) for n in names)

    def put(self, name: str, value: Tensor) -> None:
        if self.wants(name):
            self.trace[name] = value


def _embed(visual: VisionTower, images: Tensor) -> Tensor:
    """Patch + class + positional embedding and ``ln_pre``: [B, 3, S, S] -> [B, T, D]."""
    embeds = getattr(visual, "_embeds", None)
    if embeds is not None:
        return embeds(images)
    x = visual.conv1(images)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
    x = visual.patch_dropout(x)
    return visual.ln_pre(x)


def run_trace(visual: nn.Module, images: Tensor, names: Iterable[str] | None = None) -> Trace:
    """Run the vision tower on preprocessed ``images`` [B, 3, S, S], recording ``names``.

    ``names`` are hook names or glob patterns (``"blocks.*.attn.hook_pattern"``); ``None``
    records everything. ``hook_embedding`` is always recorded.
    """
    rec = _Recorder(names)
    visual = as_tower(visual)
    x = _embed(visual, images)
    rec.put("hook_embed", x)
    batch_first = getattr(visual.transformer, "batch_first", True)
    for layer, block in enumerate(visual.transformer.resblocks):
        p = f"blocks.{layer}"
        rec.put(f"{p}.hook_resid_pre", x)
        if rec.wants_any(f"{p}.ln1.hook_mean", f"{p}.ln1.hook_scale"):
            m, s = ln_stats(x, block.ln_1.eps)
            rec.put(f"{p}.ln1.hook_mean", m)
            rec.put(f"{p}.ln1.hook_scale", s)
        h = block.ln_1(x)
        need = rec.wants(f"{p}.attn.hook_pattern")
        hq = h if batch_first else h.transpose(0, 1)
        a, pattern = block.attn(
            hq, hq, hq, need_weights=need, average_attn_weights=False
        )
        if not batch_first:
            a = a.transpose(0, 1)
        if need:
            rec.put(f"{p}.attn.hook_pattern", pattern)
        a = block.ls_1(a)
        rec.put(f"{p}.hook_attn_out", a)
        x = x + a
        rec.put(f"{p}.hook_resid_mid", x)
        if rec.wants_any(f"{p}.ln2.hook_mean", f"{p}.ln2.hook_scale"):
            m, s = ln_stats(x, block.ln_2.eps)
            rec.put(f"{p}.ln2.hook_mean", m)
            rec.put(f"{p}.ln2.hook_scale", s)
        mlp = block.mlp
        pre = mlp.c_fc(block.ln_2(x))
        rec.put(f"{p}.mlp.hook_pre", pre)
        post = mlp.gelu(pre)
        rec.put(f"{p}.mlp.hook_post", post)
        out = block.ls_2(mlp.c_proj(post))
        rec.put(f"{p}.hook_mlp_out", out)
        x = x + out
        rec.put(f"{p}.hook_resid_post", x)
    cls = x[:, 0]
    rec.put("hook_pooled", cls)
    if rec.wants_any("ln_post.hook_mean", "ln_post.hook_scale"):
        m, s = ln_stats(cls, visual.ln_post.eps)
        rec.put("ln_post.hook_mean", m)
        rec.put("ln_post.hook_scale", s)
    pool = getattr(visual, "_pool", None)
    pooled, _ = pool(x) if pool is not None else (visual.ln_post(cls), None)
    if visual.proj is not None:
        pooled = pooled @ visual.proj
    rec.trace["hook_embedding"] = pooled
    return rec.trace
