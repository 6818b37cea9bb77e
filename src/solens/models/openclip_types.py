"""Typed views of open_clip's ``VisionTransformer`` and ``CLIP``, for the type checker.

open_clip ships no type information, and torch types every submodule reached through
``nn.Module.__getattr__`` as ``Tensor | Module``. The classes below declare the attributes of
open_clip's modules that solens reads (the layout ``check_supported`` accepts); they exist
only for the type checker (never at run time, so never instantiate or ``isinstance`` them).
``as_tower`` and ``as_clip`` are the one place where a module is seen through them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from torch import nn

if TYPE_CHECKING:
    from collections.abc import Sequence

    from torch import Tensor

    class PatchDropout(nn.Module):
        """open_clip ``PatchDropout``: drops patch tokens in training with probability ``prob``."""

        prob: float

    class MLP(nn.Sequential):
        """``ResidualAttentionBlock.mlp``: ``c_fc`` -> ``gelu`` -> ``c_proj``."""

        c_fc: nn.Linear
        gelu: nn.Module
        c_proj: nn.Linear

    class Block(nn.Module):
        """open_clip ``ResidualAttentionBlock`` (``ls_*``: ``LayerScale`` or ``Identity``)."""

        ln_1: nn.LayerNorm
        attn: nn.MultiheadAttention
        ls_1: nn.Module
        ln_2: nn.LayerNorm
        mlp: MLP
        ls_2: nn.Module

    class Transformer(nn.Module):
        """open_clip ``Transformer``: ``resblocks`` is an ``nn.ModuleList`` of blocks."""

        resblocks: Sequence[Block]

    class VisionTower(nn.Module):
        """open_clip ``VisionTransformer`` with CLS pooling and a projection."""

        image_size: tuple[int, int]
        patch_size: tuple[int, int]
        grid_size: tuple[int, int]
        pool_type: str
        conv1: nn.Conv2d
        class_embedding: Tensor  # [D]
        positional_embedding: Tensor  # [T, D]
        patch_dropout: PatchDropout | nn.Identity
        ln_pre: nn.Module  # LayerNorm or Identity
        transformer: Transformer
        ln_post: nn.LayerNorm
        proj: Tensor  # [D, d]

    class CLIP(nn.Module):
        """open_clip ``CLIP``: both towers; ``encode_text`` of token ids [n, ctx] -> [n, d]."""

        visual: VisionTower

        def encode_text(self, text: Tensor, normalize: bool = False) -> Tensor: ...


def as_tower(visual: nn.Module) -> VisionTower:
    """``visual`` (an open_clip ``VisionTransformer``) with its attributes typed; no check,
    no copy: callers pass towers that ``check_supported`` accepts."""
    return cast("VisionTower", visual)


def as_clip(model: nn.Module) -> CLIP:
    """``model`` (an open_clip ``CLIP``) with its attributes typed; no check, no copy."""
    return cast("CLIP", model)
