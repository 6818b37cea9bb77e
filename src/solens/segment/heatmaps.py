"""Zero-shot segmentation heatmaps from second-order effects (METHOD §5.6), and their way back
to image pixels.

The paper's recipe: for the predicted class c (or any text query), the K neurons of the
chosen blocks whose rank-1 direction r_n has the largest |<r_n, text(c)>|; the heatmap is the
mean of their post-GELU activations at the patch tokens, upsampled, min-max normalised and
thresholded at 0.5. The signed variant comes for free from the factorisation: each selected
neuron's per-patch second-order contribution projected on text(c),
``A^{l',h}[0, t] p_n(t) / sigma(t) * <u_n, text(c)> / sigma_post`` summed over later heads
and neurons, sign kept (``solens.lens.token_projections``).

Shapes: B images, T tokens (0 = CLS), g x g patch grid (T = 1 + g^2), S preprocessed side,
N neurons, d embedding dim, H x W original image pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from solens.errors import InputError
from solens.lens.frozen import cls_weights, head_ov
from solens.models.model import Model
from solens.models.trace import Trace, run_trace


# --- geometry: preprocessed crop <-> original pixels -------------------------------------
@dataclass(frozen=True)
class CropGeometry:
    """Where an original image of ``width`` x ``height`` pixels lies in the preprocessed
    ``size`` x ``size`` input: crop coordinate ``u = x * sx - ox`` (``v = y * sy - oy``) of
    the continuous pixel coordinate x (pixel edges at integers)."""

    width: int
    height: int
    size: int
    sx: float
    sy: float
    ox: float
    oy: float

    def crop_coords(self) -> tuple[np.ndarray, np.ndarray]:
        """Crop coordinates of every original pixel centre: ([W], [H])."""
        u = (np.arange(self.width) + 0.5) * self.sx - self.ox
        v = (np.arange(self.height) + 0.5) * self.sy - self.oy
        return u, v

    def valid(self) -> np.ndarray:
        """Original pixels whose centre falls inside the crop: [H, W] bool."""
        u, v = self.crop_coords()
        return ((v >= 0) & (v < self.size))[:, None] & ((u >= 0) & (u < self.size))[None, :]


def _steps(preprocess: Any) -> list[Any]:
    t = getattr(preprocess, "transform", preprocess)  # TinyPreprocess wraps a Compose
    return list(getattr(t, "transforms", [t]))


def crop_geometry(preprocess: Any, width: int, height: int, size: int) -> CropGeometry:
    """Follow ``preprocess``'s torchvision ``Resize`` and ``CenterCrop`` steps (the others
    are taken to keep the geometry) for an image of ``width`` x ``height``: the affine map
    into the ``size`` x ``size`` input (``InputError`` when the steps do not end at
    ``size``)."""
    from torchvision import transforms as T

    w, h = float(width), float(height)
    sx = sy = 1.0
    ox = oy = 0.0
    for step in _steps(preprocess):
        if isinstance(step, T.Resize):
            if step.max_size is not None:
                raise InputError("preprocessing with Resize(max_size=...) is not supported "
                                 "for segmentation")
            target = step.size
            if isinstance(target, int) or (isinstance(target, Sequence) and len(target) == 1):
                short = int(target if isinstance(target, int) else target[0])
                nw, nh = ((short, int(short * h / w)) if w <= h else (int(short * w / h), short))
            else:
                nh, nw = int(target[0]), int(target[1])
            fx, fy = nw / w, nh / h
            sx, sy, ox, oy = sx * fx, sy * fy, ox * fx, oy * fy
            w, h = float(nw), float(nh)
        elif isinstance(step, T.CenterCrop):
            ch, cw = (int(step.size[0]), int(step.size[1])) if isinstance(
                step.size, Sequence) else (int(step.size), int(step.size))
            # torchvision pads a smaller image symmetrically first, then crops the centre
            top = round((h - ch) / 2.0) if h >= ch else -((ch - int(h)) // 2)
            left = round((w - cw) / 2.0) if w >= cw else -((cw - int(w)) // 2)
            ox, oy = ox + left, oy + top
            w, h = float(cw), float(ch)
        elif type(step).__name__ in ("RandomResizedCrop", "RandomCrop", "Pad", "FiveCrop"):
            raise InputError(f"cannot map heatmaps back through preprocessing step "
                             f"{type(step).__name__}")
    if (round(w), round(h)) != (size, size):
        raise InputError(f"the preprocessing gives {round(w)}x{round(h)} pixels, not the "
                         f"model's {size}x{size}: cannot map heatmaps back to the image")
    return CropGeometry(int(width), int(height), int(size), sx, sy, ox, oy)


def to_image(patch_map: Tensor, geometry: CropGeometry) -> np.ndarray:
    """A patch-grid map [g, g] (covering the crop) at every original pixel: [H, W] float64,
    bilinear (``align_corners=False``, the same as upsampling the grid to the crop and
    reading it at the pixel's crop position); NaN outside the crop."""
    u, v = geometry.crop_coords()
    gx = torch.as_tensor(2.0 * u / geometry.size - 1.0, dtype=torch.float64)
    gy = torch.as_tensor(2.0 * v / geometry.size - 1.0, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)  # [H, W, 2] (x, y)
    m = patch_map.detach().to("cpu", torch.float64)[None, None]
    out = F.grid_sample(m, grid[None], mode="bilinear", padding_mode="border",
                        align_corners=False)[0, 0].numpy()
    out[~geometry.valid()] = np.nan
    return out


def normalise(x: np.ndarray) -> np.ndarray:
    """Min-max normalised to [0, 1] over the finite entries (a constant map -> zeros)."""
    finite = np.isfinite(x)
    if not finite.any():
        return np.zeros_like(x)
    lo, hi = float(x[finite].min()), float(x[finite].max())
    return (x - lo) / (hi - lo) if hi > lo else np.where(finite, 0.0, np.nan)


def grid(values: Tensor) -> Tensor:
    """Per-patch values [B, T - 1] as a square grid [B, g, g] (row-major patches)."""
    g = round(values.shape[-1] ** 0.5)
    if g * g != values.shape[-1]:
        raise ValueError(f"{values.shape[-1]} patch tokens are not a square grid")
    return values.reshape(*values.shape[:-1], g, g)


# --- one traced pass, with the gradients the gradient-based baselines need ---------------
@dataclass
class Pass:
    """A traced forward of a batch (detached tensors) with text targets.

    ``trace``: every hook of ``solens.models.trace``; ``targets`` [B, d] unit text vectors;
    ``score`` [B] cosine of f(I) with its target; ``grad_attn_out[l]`` [B, T, D]: d score /
    d (block l's attention output); ``grad_last_input`` [B, T, D]: d score / d (the last
    block's input). The gradients are None when not requested.
    """

    trace: Trace
    targets: Tensor
    score: Tensor
    grad_attn_out: list[Tensor] | None
    grad_last_input: Tensor | None


def forward(model: Model, images: Tensor, targets: Tensor | Callable[[Tensor], Tensor],
            need_grad: bool = True) -> Pass:
    """Trace preprocessed ``images`` [B, 3, S, S]; ``targets``: unit text vectors [B, d], or
    a function of the embeddings f(I) [B, d] that returns them (the predicted class)."""
    x = images.to(model.device, model.dtype)
    L = model.info.n_layers
    with torch.set_grad_enabled(need_grad):
        tr = run_trace(model.visual, x, None)
        f = tr.embedding
        t = targets(f.detach()) if callable(targets) else targets
        t = F.normalize(t.to(f), dim=-1)
        score = (F.normalize(f, dim=-1) * t).sum(-1)
        g_attn: list[Tensor] | None = None
        g_last: Tensor | None = None
        if need_grad:
            wrt = [tr[f"blocks.{l}.hook_attn_out"] for l in range(L)]
            wrt.append(tr[f"blocks.{L - 1}.hook_resid_pre"])
            grads = torch.autograd.grad(score.sum(), wrt)
            g_attn, g_last = [g.detach() for g in grads[:L]], grads[L].detach()
    detached = Trace({k: v.detach() for k, v in tr.items()})
    return Pass(detached, t.detach(), score.detach(), g_attn, g_last)


# --- the paper's recipe and its signed variant --------------------------------------------
def signed_map(model: Model, trace: Trace, layer: int, selection: Tensor, targets: Tensor,
               head_maps: dict[int, Tensor] | None = None) -> Tensor:
    """The signed variant for source block ``layer``: per image b the sum over its selected
    neurons (``selection`` [B, N], 0/1 or weights) of their per-patch second-order
    contributions projected on its target (``targets`` [B, d]): [B, T - 1].

    ``sum_{l' > l, h} A^{l',h}[b, 0, t] / sigma_1^{l'}(t) * sum_n sel[b, n] p_n(t)
    <u_n^{l',h}, target_b> / sigma_post`` (exact convention; summed over t and with one
    neuron selected it is ``<phi_n(I), target>``). ``head_maps``: ``head_ov`` [H, D, d] per
    later block (computed when missing).
    """
    w = model.weights
    src = w.blocks[layer]
    write = (src.W_out * src.ls2_or_one()).to(targets)  # [N, D]
    post = trace[f"blocks.{layer}.mlp.hook_post"].to(targets)  # [B, T, N]
    ps = post * selection.to(targets)[:, None, :]
    out = torch.zeros(post.shape[:2], dtype=targets.dtype, device=targets.device)
    for lp in range(layer + 1, w.n_layers):
        ov = head_ov(w, lp) if head_maps is None else head_maps[lp]
        hv = torch.einsum("hDd,bd->bhD", ov.to(targets), targets)  # [B, H, D]
        uv = torch.einsum("nD,bhD->bnh", write, hv)  # [B, N, H]
        pw = torch.einsum("btn,bnh->bht", ps, uv)
        mix = cls_weights(trace[f"blocks.{lp}.attn.hook_pattern"],
                          trace[f"blocks.{lp}.ln1.hook_scale"]).to(targets)  # [B, H, T]
        out = out + (mix * pw).sum(1)
    inv = 1.0 / trace["ln_post.hook_scale"].to(targets)
    return (out * inv[:, None])[:, 1:]


def selection_masks(r: Tensor, targets: Tensor, k: int, sizes: Sequence[int]) -> list[Tensor]:
    """Per image the top ``k`` neurons by |<r_n, target_b>| over all chosen layers jointly:
    ``r`` [M, d] (layers concatenated, ``sizes`` neurons each), ``targets`` [B, d] ->
    per layer a 0/1 mask [B, N_l]."""
    score = (targets @ r.to(targets).T).abs()  # [B, M]
    top = torch.topk(score, min(int(k), score.shape[1]), dim=1).indices
    mask = torch.zeros_like(score).scatter_(1, top, 1.0)
    return list(torch.split(mask, list(sizes), dim=1))


def activation_map(trace: Trace, layers: Sequence[int], masks: Sequence[Tensor]
                          ) -> Tensor:
    """The paper's map with a per-image selection: mean over the selected neurons (``masks``
    [B, N_l] per layer) of their activations at every patch token: [B, T - 1]."""
    total: Tensor | None = None
    count: Tensor | None = None
    for l, m in zip(layers, masks, strict=True):
        post = trace[f"blocks.{l}.mlp.hook_post"][:, 1:, :]
        s = torch.einsum("btn,bn->bt", post, m.to(post))
        c = m.sum(1).to(post)
        total = s if total is None else total + s
        count = c if count is None else count + c
    if total is None or count is None:
        raise ValueError("no layers")
    return total / count.clamp_min(1)[:, None]


__all__ = ["CropGeometry", "Pass", "activation_map", "crop_geometry", "forward", "grid",
           "normalise", "selection_masks", "signed_map", "to_image"]
