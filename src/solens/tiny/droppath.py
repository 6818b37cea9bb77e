"""MLP drop path: per-sample stochastic depth on the MLP sublayers of a vision tower, the
training-time device that plants solens-tiny's dominant second-order block."""

from __future__ import annotations

import torch
from torch import Tensor

from solens.models.openclip_types import as_tower


class MLPDropPath:
    """Stochastic depth on the MLP sublayers of an open_clip ``VisionTransformer``, in training.

    For block l, each sample's MLP branch is dropped with probability ``probs[l]`` (at every
    token), and in addition its branch at the CLS token alone with probability ``cls_probs[l]``;
    kept branches are scaled by ``1 / (1 - p)`` (inverted drop path, so eval needs no
    rescaling). The MLP is evaluated only on the kept samples. Installed as instance-level
    ``forward`` overrides: parameters and state-dict keys are unchanged, and ``remove()``
    restores the plain modules. Draws from the global torch RNG (seeded, saved in checkpoints):
    per dropping block, ``rand(B)`` for the samples, then ``rand(kept)`` for the CLS tokens. In
    eval mode (``module.training`` false) the MLPs run unchanged.
    """

    def __init__(
        self, visual: torch.nn.Module, probs: list[float], cls_probs: list[float] | None = None
    ):
        blocks = list(as_tower(visual).transformer.resblocks)
        cls_probs = list(cls_probs) if cls_probs else [0.0] * len(blocks)
        probs = list(probs) if probs else [0.0] * len(blocks)
        for name, ps in (("mlp_drop", probs), ("cls_mlp_drop", cls_probs)):
            if len(ps) != len(blocks):
                raise ValueError(f"{name} has {len(ps)} entries for {len(blocks)} blocks")
            if any(not 0.0 <= p < 1.0 for p in ps):
                raise ValueError(f"{name} probabilities must lie in [0, 1): {ps}")
        batch_first = getattr(visual.transformer, "batch_first", True)
        self.batch_dim, self.token_dim = (0, 1) if batch_first else (1, 0)
        self._mlps: list[torch.nn.Module] = []
        for block, p, q in zip(blocks, probs, cls_probs, strict=True):
            if p > 0 or q > 0:
                self._install(block.mlp, float(p), float(q))
                self._mlps.append(block.mlp)

    def _install(self, mlp: torch.nn.Module, p: float, q: float) -> None:
        plain = type(mlp).forward.__get__(mlp)
        bd, td = self.batch_dim, self.token_dim

        def forward(x: Tensor) -> Tensor:  # x [B, T, D] (batch_first) or [T, B, D]
            if not mlp.training:
                return plain(x)
            idx = None
            if p > 0:
                idx = (torch.rand(x.shape[bd]) >= p).nonzero().squeeze(1).to(x.device)
                if idx.numel() == 0:
                    return x.new_zeros(x.shape)
                y = plain(x.index_select(bd, idx)) / (1.0 - p)
            else:
                y = plain(x)
            if q > 0:  # scale [b, T, 1] (batch_first): 1 everywhere, CLS kept / (1 - q)
                cls = (torch.rand(y.shape[bd]) >= q).to(y) / (1.0 - q)
                scale = y.new_ones(*y.shape[:2], 1)
                scale.select(td, 0).copy_(cls[:, None])
                y = y * scale
            if idx is None:
                return y
            return x.new_zeros(x.shape).index_copy(bd, idx, y)

        mlp.forward = forward

    def remove(self) -> None:
        for mlp in self._mlps:
            del mlp.forward
        self._mlps = []
