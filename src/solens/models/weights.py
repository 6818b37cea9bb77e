"""Weights of an open_clip ``VisionTransformer`` in TransformerLens-style layout.

Shapes (D = width, H = heads, dh = D / H, N = MLP width, d = embedding dim):
``W_V [H, D, dh]``, ``b_V [H, dh]``, ``W_O [H, dh, D]``, ``b_O [D]``,
``W_out [N, D]`` (neuron write directions), ``b_out [D]``, ``proj [D, d]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from solens.models.openclip_types import as_tower

if TYPE_CHECKING:
    from solens.models.openclip_types import Block


@dataclass
class BlockWeights:
    """One residual block's parameters (views, no copies)."""

    ln1_w: Tensor  # [D]
    ln1_b: Tensor  # [D]
    ln1_eps: float
    W_V: Tensor  # [H, D, dh]
    b_V: Tensor  # [H, dh]
    W_O: Tensor  # [H, dh, D]
    b_O: Tensor  # [D]
    ls1: Tensor | None  # [D] layer scale on the attention output
    ln2_w: Tensor  # [D]
    ln2_b: Tensor  # [D]
    ln2_eps: float
    W_in: Tensor  # [D, N]
    b_in: Tensor  # [N]
    W_out: Tensor  # [N, D]
    b_out: Tensor  # [D]
    ls2: Tensor | None  # [D] layer scale on the MLP output

    @property
    def n_heads(self) -> int:
        return self.W_V.shape[0]

    def ls1_or_one(self) -> Tensor:
        """Layer scale of the attention output, ones where the model has none: [D]."""
        return self.ls1 if self.ls1 is not None else torch.ones_like(self.b_O)

    def ls2_or_one(self) -> Tensor:
        """Layer scale of the MLP output, ones where the model has none: [D]."""
        return self.ls2 if self.ls2 is not None else torch.ones_like(self.b_out)


@dataclass
class ViTWeights:
    """All parameters the lens needs, per block plus the final LayerNorm and projection."""

    blocks: list[BlockWeights]
    ln_post_w: Tensor  # [D]
    ln_post_b: Tensor  # [D]
    ln_post_eps: float
    proj: Tensor  # [D, d]

    @property
    def n_layers(self) -> int:
        return len(self.blocks)


def _layer_scale(module: nn.Module) -> Tensor | None:
    gamma = getattr(module, "gamma", None)
    return gamma.detach() if isinstance(gamma, Tensor) else None


def block_weights(block: Block) -> BlockWeights:
    """Extract a ``ResidualAttentionBlock``'s parameters into lens layout."""
    attn = block.attn
    D = attn.embed_dim
    H = attn.num_heads
    dh = D // H
    w_in = attn.in_proj_weight.detach()
    in_bias = attn.in_proj_bias
    b_in = in_bias.detach() if in_bias is not None else torch.zeros(3 * D, dtype=w_in.dtype)
    W_V = w_in[2 * D :].reshape(H, dh, D).transpose(1, 2)
    b_V = b_in[2 * D :].reshape(H, dh)
    W_O = attn.out_proj.weight.detach().T.reshape(H, dh, D)
    out_bias = attn.out_proj.bias
    b_O = out_bias.detach() if out_bias is not None else torch.zeros(D, dtype=w_in.dtype)
    mlp = block.mlp
    c_proj_b = mlp.c_proj.bias
    return BlockWeights(
        ln1_w=block.ln_1.weight.detach(),
        ln1_b=block.ln_1.bias.detach(),
        ln1_eps=float(block.ln_1.eps),
        W_V=W_V,
        b_V=b_V,
        W_O=W_O,
        b_O=b_O,
        ls1=_layer_scale(block.ls_1),
        ln2_w=block.ln_2.weight.detach(),
        ln2_b=block.ln_2.bias.detach(),
        ln2_eps=float(block.ln_2.eps),
        W_in=mlp.c_fc.weight.detach().T,
        b_in=mlp.c_fc.bias.detach(),
        W_out=mlp.c_proj.weight.detach().T,
        b_out=c_proj_b.detach() if c_proj_b is not None else torch.zeros(D, dtype=w_in.dtype),
        ls2=_layer_scale(block.ls_2),
    )


def vit_weights(visual: nn.Module) -> ViTWeights:
    """Extract lens weights from an open_clip ``VisionTransformer``."""
    tower = as_tower(visual)
    return ViTWeights(
        blocks=[block_weights(b) for b in tower.transformer.resblocks],
        ln_post_w=tower.ln_post.weight.detach(),
        ln_post_b=tower.ln_post.bias.detach(),
        ln_post_eps=float(tower.ln_post.eps),
        proj=tower.proj.detach(),
    )
