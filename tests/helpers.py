"""Small random models for tests (no network, no weights)."""

from __future__ import annotations

import torch
from open_clip.transformer import QuickGELU, VisionTransformer
from torch import nn

from solens.models.model import Model, describe_visual


def tiny_visual(
    *,
    image_size: int = 32,
    patch_size: int = 8,
    width: int = 32,
    layers: int = 4,
    heads: int = 4,
    output_dim: int = 16,
    ls_init_value: float | None = None,
    final_ln_after_pool: bool = False,
    quick_gelu: bool = False,
    seed: int = 0,
) -> VisionTransformer:
    """A small random ``VisionTransformer`` whose LN/bias/layer-scale params are non-trivial."""
    torch.manual_seed(seed)
    vis = VisionTransformer(
        image_size=image_size,
        patch_size=patch_size,
        width=width,
        layers=layers,
        heads=heads,
        mlp_ratio=4.0,
        ls_init_value=ls_init_value,
        output_dim=output_dim,
        final_ln_after_pool=final_ln_after_pool,
        act_layer=QuickGELU if quick_gelu else nn.GELU,
    )
    with torch.no_grad():
        for name, p in vis.named_parameters():
            if p.dim() == 1:  # LayerNorm gains/biases, linear biases, layer scales
                base = 1.0 if name.endswith(("ln_1.weight", "ln_2.weight", "ln_post.weight",
                                             "ln_pre.weight")) else 0.0
                p.copy_(base + 0.3 * torch.randn_like(p))
    return vis.eval()


def tiny_model(dtype: torch.dtype = torch.float64, **kw) -> Model:
    vis = tiny_visual(**kw)
    model = Model(vis, None, None, describe_visual(vis, name="tiny-test", pretrained=None))
    return model.to(dtype=dtype)


def images(n: int, size: int = 32, dtype: torch.dtype = torch.float64, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g).to(dtype)


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """``solens.cli.main(args)`` in-process: (exit code, stdout, stderr)."""
    from solens.cli import main

    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err
