"""Per-patch second-order contributions of neurons along their rank-1 directions, and the
small images the atlas draws from them.

For source block ``l``, neuron ``n``, image ``I`` and token ``t`` (METHOD §4):

``c[t, n] = inv_sigma_post * p_n(t) * sum_p A^{p}[0, t] / sigma_1^{p}(t) * r_coef[n, p]``

with ``r_coef[n] = u_n r_n`` [P] (``layer-LL/stats/r_coef.npy``): the part of
``<phi_n(I), r_n>`` that flows through token ``t``. Summed over all tokens (CLS
included) it is ``inv_sigma_post * s[n] . r_coef[n]``, the projection of the neuron's
second-order effect on its rank-1 direction; the atlas draws the patch tokens ``1..T-1``.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from solens.lens.frozen import cls_weights
from solens.lens.second_order import check_layer
from solens.models.model import Model
from solens.models.trace import Trace

POSITIVE = (230, 70, 20)
NEGATIVE = (30, 100, 235)
MAX_ALPHA = 210


def trace_names_for(layers: Sequence[int], n_layers: int) -> list[str]:
    """Hooks a trace needs for ``patch_contributions`` of ``layers``."""
    names = [f"blocks.{l}.mlp.hook_post" for l in layers]
    for lp in range(min(layers) + 1, n_layers):
        names += [f"blocks.{lp}.attn.hook_pattern", f"blocks.{lp}.ln1.hook_scale"]
    return [*names, "ln_post.hook_scale"]


def patch_contributions(model: Model, trace: Trace, layer: int, r_coef: Tensor) -> Tensor:
    """Per-token contributions to ``<phi_n(I), r_n>``: [B, T, N] (exact convention).

    ``trace`` of images [B, 3, S, S] recorded with at least ``trace_names_for([layer],
    L)``; ``r_coef`` [N, P] = ``u_n r_n`` of the block's N neurons (P later heads,
    ``p = (l' - layer - 1) * H + h``). ``result.sum(1)`` equals
    ``inv_sigma_post * einsum("bnp,np->bn", s, r_coef)``.
    """
    check_layer(model, layer)
    post = trace[f"blocks.{layer}.mlp.hook_post"]  # [B, T, N]
    mix = torch.cat(
        [cls_weights(trace[f"blocks.{lp}.attn.hook_pattern"], trace[f"blocks.{lp}.ln1.hook_scale"])
         for lp in range(layer + 1, model.info.n_layers)],
        dim=1,
    )  # [B, P, T]
    w = torch.einsum("bpt,np->btn", mix, r_coef.to(mix.dtype))
    inv = 1.0 / trace["ln_post.hook_scale"]  # [B]
    return post * w * inv[:, None, None]


def heat_rgba(values: np.ndarray, scale: float) -> np.ndarray:
    """A signed heatmap [g, g] as RGBA uint8 [g, g, 4]: positive values orange, negative
    blue, opacity ``MAX_ALPHA * sqrt(|value| / scale)`` (clipped at ``scale``; the square
    root keeps patches of a tenth of the scale visible)."""
    v = np.clip(np.asarray(values, dtype=np.float64) / max(float(scale), 1e-30), -1.0, 1.0)
    out = np.zeros((*v.shape, 4), dtype=np.uint8)
    out[v >= 0, :3] = POSITIVE
    out[v < 0, :3] = NEGATIVE
    out[..., 3] = np.round(MAX_ALPHA * np.sqrt(np.abs(v))).astype(np.uint8)
    return out


def heat_scale(values: np.ndarray) -> float:
    """One opacity scale for a neuron's heatmaps: the 99th percentile of |value| over all
    its shown patches (a few extreme patches do not wash out the rest); 0 when there are
    none."""
    a = np.abs(np.asarray(values, dtype=np.float64))
    a = a[np.isfinite(a)]
    return float(np.percentile(a, 99)) if a.size else 0.0


def png_data_uri(rgba: np.ndarray) -> str:
    """A small RGBA image [h, w, 4] as a ``data:image/png;base64,...`` URI."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgba), "RGBA").save(buf, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def thumbnail(image: Image.Image, size: int) -> Image.Image:
    """The square centre crop the model sees (shorter side resized, centre cropped), at
    ``size`` pixels or the image's own shorter side when that is smaller."""
    side = min(size, *image.size)
    return ImageOps.fit(image.convert("RGB"), (side, side), Image.Resampling.BICUBIC)


__all__ = ["heat_rgba", "heat_scale", "patch_contributions", "png_data_uri", "thumbnail",
           "trace_names_for"]
