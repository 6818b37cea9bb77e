"""Factorised second-order effects (METHOD §4).

For source block ``l`` with N neurons and the P = (L - l - 1) * H later heads
(flattened ``p = (l' - l - 1) * H + h``):

- ``s[b, n, p] = sum_t A^{l',h}[b, 0, t] * post[b, t, n] / sigma_1^{l'}[b, t]``
  (image-dependent coefficients),
- ``u[n, p] = post_map(ls_1 * W_O^h W_V^h (gamma_1 * C(w_n)))`` (image-independent),
- ``phi_n(I) = inv_sigma_post(I) * sum_p s[n, p] * u[n, p]``  (exact convention).

The "official" convention of the reference code uses uncentred directions, a
neuron-independent per-image ``offset`` (equal shares of LN means and all biases) and
a ``100 / ||f(I)||`` scale: ``phi = 100/||f|| * (inv_sigma_post * s . u_off + offset)``.

Shapes: B images [B, 3, S, S], T tokens, D residual width, H heads per block, N neurons
(the block's MLP width, or ``len(neurons)`` for a subset), P later heads, d embedding
dim, K projection vectors.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from solens.errors import InputError
from solens.lens.frozen import check_convention, cls_weights, head_ov, post_map
from solens.models.model import Model
from solens.models.trace import Trace

OFFICIAL_SCALE = 100.0


def check_layer(model: Model, layer: int) -> None:
    """Raise ``InputError`` unless ``layer`` has at least one later block."""
    L = model.info.n_layers
    if not 0 <= layer <= L - 2:
        raise InputError(
            f"layer {layer} out of range: second-order effects need a later block, "
            f"valid layers are 0..{L - 2} for a {L}-block model"
        )


def trace_names(layers: Sequence[int], n_layers: int | None = None) -> list[str]:
    """Hook names the trace must record to compute coefficients for ``layers``.

    With ``n_layers`` only the blocks after ``min(layers)`` record attention patterns
    (``InputError`` when ``layers`` is empty).
    """
    if n_layers is not None and not layers:
        raise InputError("no layers given: trace_names needs at least one source layer")
    names = [f"blocks.{l}.mlp.hook_post" for l in layers]
    later = ["*"] if n_layers is None else [str(lp) for lp in range(min(layers) + 1, n_layers)]
    for lp in later:
        names += [
            f"blocks.{lp}.attn.hook_pattern",
            f"blocks.{lp}.ln1.hook_mean",
            f"blocks.{lp}.ln1.hook_scale",
        ]
    return [*names, "ln_post.hook_mean", "ln_post.hook_scale"]


@dataclass
class LayerCoeffs:
    """Image-dependent factors of a layer's second-order effects for a batch.

    ``layer``: the source block. ``s`` [B, N, P], ``inv_sigma_post`` [B], ``raw_offset``
    [B, d] (official convention, before the 100/||f|| scale; None when ``coefficients``
    skipped it), ``embedding`` f(I) [B, d].
    """

    layer: int
    s: Tensor
    inv_sigma_post: Tensor
    raw_offset: Tensor | None
    embedding: Tensor

    @property
    def offset(self) -> Tensor:
        """The official convention's per-image offset [B, d] (``ValueError`` when
        ``coefficients(..., offset=False)`` skipped it)."""
        if self.raw_offset is None:
            raise ValueError("these coefficients were computed with offset=False")
        return self.raw_offset

    @property
    def official_scale(self) -> Tensor:
        """``100 / ||f(I)||``: [B]."""
        return OFFICIAL_SCALE / self.embedding.norm(dim=-1)


def _mix_weights(trace: Trace, layer: int, n_layers: int) -> Tensor:
    """``A^{l',h}[b, 0, t] / sigma_1^{l'}[b, t]`` for all later heads: [B, P, T]."""
    mats = [
        cls_weights(trace[f"blocks.{lp}.attn.hook_pattern"], trace[f"blocks.{lp}.ln1.hook_scale"])
        for lp in range(layer + 1, n_layers)
    ]
    return torch.cat(mats, dim=1)


def _official_offset(model: Model, trace: Trace, layer: int, inv_sigma_post: Tensor) -> Tensor:
    """Neuron-independent per-image term of the official convention: [B, d]."""
    w = model.weights
    L = w.n_layers
    src = w.blocks[layer]
    N = src.W_out.shape[0]
    share = src.ls2_or_one() * src.b_out / N  # c_proj bias share of one neuron [D]
    total: Tensor | float = 0.0
    post_coef = 0.0
    for lp in range(layer + 1, L):
        b = w.blocks[lp]
        H = b.n_heads
        K1 = (1 + 2 * lp) * N
        K2 = (1 + 2 * lp) * (1 + 2 * L) * H * N
        A = cls_weights(
            trace[f"blocks.{lp}.attn.hook_pattern"], trace[f"blocks.{lp}.ln1.hook_scale"]
        )
        a1 = A.sum(-1)  # [B, H]
        amu = (A * trace[f"blocks.{lp}.ln1.hook_mean"].unsqueeze(1)).sum(-1)  # [B, H]
        # sum_t A (gamma (share - mu/K1)/sigma + beta/K1): [B, H, D]
        y = (
            a1.unsqueeze(-1) * (b.ln1_w * share)
            - amu.unsqueeze(-1) * b.ln1_w / K1
            + b.ln1_b / K1
        )
        v = torch.einsum("bhD,hDe->bhe", y, b.W_V) + b.b_V / K1  # [B, H, dh]
        # H shares of b_O/(K1 H); one [B, H dh] @ [H dh, D] product (an einsum over the
        # strided W_O view copies it first: 20x slower)
        o = v.flatten(1) @ b.W_O.flatten(0, 1) + b.b_O / K1
        total = total + o * b.ls1_or_one()
        post_coef += H / K2
    mu_post = trace["ln_post.hook_mean"]
    r = total - mu_post.unsqueeze(-1) * post_coef  # [B, D]
    return (r * inv_sigma_post.unsqueeze(-1)) @ post_map(w, centred=False) + (
        post_coef * w.ln_post_b
    ) @ w.proj


def coefficients(
    model: Model,
    trace: Trace,
    layer: int,
    neurons: Sequence[int] | Tensor | None = None,
    *,
    offset: bool = True,
) -> LayerCoeffs:
    """Image-dependent factors of block ``layer``'s second-order effects.

    ``trace`` of images [B, 3, S, S], recorded with at least
    ``trace_names([layer], n_layers)`` -> ``LayerCoeffs`` with ``s`` [B, N, P],
    ``inv_sigma_post`` [B], ``offset`` [B, d], ``embedding`` [B, d]. ``neurons``: indices
    [N] into the block's MLP width (all when None). ``offset=False`` skips the official
    convention's offset (a few ms per call: two [D, D] maps per later block), which the
    exact convention does not use.
    """
    check_layer(model, layer)
    L = model.info.n_layers
    post = trace[f"blocks.{layer}.mlp.hook_post"]  # [B, T, N]
    if neurons is not None:
        post = post[..., torch.as_tensor(neurons, dtype=torch.long, device=post.device)]
    mix = _mix_weights(trace, layer, L)  # [B, P, T]
    s = torch.einsum("bpt,btn->bnp", mix, post)
    inv_sigma_post = 1.0 / trace["ln_post.hook_scale"]
    off = _official_offset(model, trace, layer, inv_sigma_post) if offset else None
    return LayerCoeffs(layer, s, inv_sigma_post, off, trace["hook_embedding"])


def directions(
    model: Model,
    layer: int,
    convention: str = "exact",
    neurons: Sequence[int] | Tensor | None = None,
) -> Tensor:
    """Image-independent directions ``u`` [N, P, d] of block ``layer``'s neurons.

    ``neurons``: indices [N] (all when None); P = (L - layer - 1) * H, later head ``h`` of
    block ``l'`` at ``p = (l' - layer - 1) * H + h``. ``convention`` "exact" (centred) or
    "official" (uncentred).
    """
    check_convention(convention)
    check_layer(model, layer)
    w = model.weights
    src = w.blocks[layer]
    write = src.W_out * src.ls2_or_one()  # [N, D]
    if neurons is not None:
        write = write[torch.as_tensor(neurons, dtype=torch.long, device=write.device)]
    centred = convention == "exact"
    out = [
        torch.einsum("nD,hDd->nhd", write, head_ov(w, lp, centred))
        for lp in range(layer + 1, w.n_layers)
    ]
    return torch.cat(out, dim=1)


STREAM_MAX_BATCH = 3
"""Batches of at most this many images are materialised on CPU by ``stream_products``
(numpy's einsum loops: one pass over ``u`` per image, at memory bandwidth) instead of
``torch.bmm``, whose per-neuron [B, P] @ [P, d] calls reach a third of the bandwidth for
one image. ViT-B/32 block 0's ``u`` (830 MB) on one core: 37-44 ms against 83-90 ms for
one image, 80-93 ms against 111-122 ms for three; about equal at four, bmm ahead from
eight on (docs/performance.md section 3)."""


def stream_products(s: Tensor, u: Tensor, threads: int | None = None) -> Tensor:
    """``out[n] = s[n] @ u[n]``: [N, B, P] x [N, P, d] -> [N, B, d] (CPU, float32 or
    float64), one streaming pass over ``u`` per image, the neurons split across ``threads``
    (torch's intra-op thread count when None; numpy's einsum releases the GIL)."""
    sn, un = s.contiguous().numpy(), u.numpy()
    out = np.empty((s.shape[0], s.shape[1], u.shape[2]), dtype=un.dtype)
    k = max(1, min(threads or torch.get_num_threads(), s.shape[0]))
    bounds = [(s.shape[0] * i // k, s.shape[0] * (i + 1) // k) for i in range(k)]

    def part(ab: tuple[int, int]) -> None:
        a, b = ab
        np.einsum("nbp,npd->nbd", sn[a:b], un[a:b], out=out[a:b])

    if k == 1:
        part(bounds[0])
    else:
        with ThreadPoolExecutor(k) as pool:
            list(pool.map(part, bounds))
    return torch.from_numpy(out)


def _streams(s: Tensor, u: Tensor) -> bool:
    """Whether ``stream_products`` is the faster way to multiply ``s`` [N, B, P] by ``u``."""
    cpu = s.device.type == "cpu" and u.device.type == "cpu"
    plain = cpu and not (s.requires_grad or u.requires_grad)  # numpy would cut the graph
    return (
        plain
        and s.shape[1] <= STREAM_MAX_BATCH
        and s.dtype == u.dtype
        and u.dtype in (torch.float32, torch.float64)
        and u.is_contiguous()
    )


def effects(coeffs: LayerCoeffs, u: Tensor, convention: str = "exact") -> Tensor:
    """Materialised effects ``phi`` [B, N, d] from coefficients (``s`` [B, N, P]) and
    directions ``u`` [N, P, d] of the same convention.

    One batched product per neuron ([B, P] @ [P, d]) with the per-image scales folded into
    ``s`` (and the official offset added by the same call): the result is a [B, N, d] view
    of an [N, B, d] tensor (``.contiguous()`` copies it). Up to ``STREAM_MAX_BATCH``
    images on CPU go through ``stream_products`` instead, the offset added after it."""
    check_convention(convention)
    scale = coeffs.inv_sigma_post
    bias = None
    if convention == "official":
        scale = scale * coeffs.official_scale
        bias = (coeffs.offset * coeffs.official_scale[:, None]).unsqueeze(0)  # [1, B, d]
    s = (coeffs.s * scale[:, None, None]).transpose(0, 1)  # [N, B, P]
    if _streams(s, u):
        out = stream_products(s, u)
        if bias is not None:
            out += bias
    elif bias is not None:
        out = torch.baddbmm(bias, s, u)
    else:
        out = torch.bmm(s, u)
    return out.transpose(0, 1)


def norms(coeffs: LayerCoeffs, gram: Tensor) -> Tensor:
    """``||phi_n(I)||`` (exact) without materialising: coefficients (``s`` [B, N, P]) and
    ``gram`` = u u^T [N, P, P] -> [B, N]."""
    s = coeffs.s.transpose(0, 1)  # [N, B, P]
    sg = stream_products(s, gram) if _streams(s, gram) else torch.bmm(s, gram)  # [N, B, P]
    q = torch.einsum("nbp,nbp->bn", sg, s)
    return q.clamp_min(0).sqrt() * coeffs.inv_sigma_post[:, None]


def gram(u: Tensor) -> Tensor:
    """Gram matrices of the directions: [N, P, d] -> [N, P, P]."""
    return u @ u.transpose(1, 2)


def project(coeffs: LayerCoeffs, u: Tensor, vectors: Tensor) -> Tensor:
    """``<phi_n(I), v_k>`` (exact) without materialising: coefficients (``s`` [B, N, P]),
    exact directions ``u`` [N, P, d] and ``vectors`` [K, d] -> [B, N, K]."""
    uv = u @ vectors.T  # [N, P, K]
    return torch.einsum("bnp,npk->bnk", coeffs.s, uv) * coeffs.inv_sigma_post[:, None, None]


def token_projections(
    model: Model,
    trace: Trace,
    layer: int,
    vectors: Tensor,
    neurons: Sequence[int] | Tensor | None = None,
    u: Tensor | None = None,
) -> Tensor:
    """Per-token contributions projected on ``vectors`` [K, d]: [B, N, T, K] (exact).

    ``trace`` as for ``coefficients``; ``u``: exact directions [N, P, d] (computed when
    None); ``neurons``: indices [N]. ``sum_t`` of the result equals
    ``project(coefficients(...), u, vectors)``.
    """
    u = directions(model, layer, "exact", neurons) if u is None else u
    post = trace[f"blocks.{layer}.mlp.hook_post"]
    if neurons is not None:
        post = post[..., torch.as_tensor(neurons, dtype=torch.long, device=post.device)]
    mix = _mix_weights(trace, layer, model.info.n_layers)  # [B, P, T]
    uv = u @ vectors.T  # [N, P, K]
    inv = 1.0 / trace["ln_post.hook_scale"]
    out = torch.einsum("bpt,btn,npk->bntk", mix, post, uv)
    return out * inv[:, None, None, None]


DIRECTIONS_CACHE_BYTES = 2 * 2**30
"""Most bytes of directions ``u`` that ``cached_directions`` keeps (all models together);
the least recently used entries are dropped first, but the newest is always kept (a
call needs it in memory anyway), so a loop over one layer never recomputes it. ViT-B/32
block 9 takes 151 MB, block 0 830 MB; ViT-L/14 block 12 2.2 GB (float32)."""

_CACHE: weakref.WeakKeyDictionary[Model, _ModelCache] = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


class _ModelCache:
    """One model's cached directions: ``entries`` key -> u [N, P, d], valid for ``token``."""

    def __init__(self, token: Hashable) -> None:
        self.token = token
        self.entries: OrderedDict[Hashable, Tensor] = OrderedDict()


def weights_token(model: Model) -> Hashable:
    """A cheap version stamp of the vision tower's parameters: per parameter its storage
    address, shape, dtype, device and autograd version counter (bumped by every in-place
    write through the parameter: ``load_state_dict``, ``copy_`` / ``mul_`` under
    ``no_grad``, optimiser steps). Not seen: writes through ``param.data``, which bypass the
    counter (call ``clear_directions_cache(model)`` after those)."""
    return tuple(
        (p.data_ptr(), tuple(p.shape), str(p.dtype), str(p.device), p._version)
        for p in model.visual.parameters()
    )


def _neuron_key(neurons: Sequence[int] | Tensor | None) -> Hashable:
    if neurons is None:
        return None
    if isinstance(neurons, Tensor):
        return tuple(int(i) for i in neurons.reshape(-1).tolist())
    return tuple(int(i) for i in neurons)


def _cache_bytes() -> int:
    return sum(u.numel() * u.element_size() for c in _CACHE.values() for u in c.entries.values())


def clear_directions_cache(model: Model | None = None) -> None:
    """Forget the directions ``cached_directions`` keeps for ``model`` (all models when
    None)."""
    with _CACHE_LOCK:
        if model is None:
            _CACHE.clear()
        else:
            _CACHE.pop(model, None)


def cached_directions(
    model: Model,
    layer: int,
    convention: str = "exact",
    neurons: Sequence[int] | Tensor | None = None,
) -> Tensor:
    """``directions(model, layer, convention, neurons)`` [N, P, d], computed once per model,
    layer, convention, neuron set, device and dtype, and recomputed when the weights change
    (``weights_token``). Entries above ``DIRECTIONS_CACHE_BYTES`` are dropped, least
    recently used first (the newest entry stays). The tensor returned is shared: do not
    modify it in place."""
    check_convention(convention)
    check_layer(model, layer)
    token = weights_token(model)
    key = (layer, convention, _neuron_key(neurons), str(model.device), str(model.dtype))
    with _CACHE_LOCK:
        entry = _CACHE.get(model)
        if entry is not None and entry.token != token:  # weights changed: views may be stale
            model.__dict__.pop("weights", None)
            entry = None
        if entry is None:
            entry = _CACHE[model] = _ModelCache(token)
        u = entry.entries.get(key)
        if u is not None:
            entry.entries.move_to_end(key)
            return u
    u = directions(model, layer, convention, neurons)
    with _CACHE_LOCK:
        entry.entries[key] = u
        while _cache_bytes() > DIRECTIONS_CACHE_BYTES and _n_entries() > 1:
            _evict_oldest()  # the newest entry stays, even above the bound
    return u


def _n_entries() -> int:
    return sum(len(c.entries) for c in _CACHE.values())


def _evict_oldest() -> None:
    """Drop one entry: the least recently used of the model holding the most bytes."""
    biggest = max(
        (c for c in _CACHE.values() if c.entries),
        key=lambda c: sum(u.numel() * u.element_size() for u in c.entries.values()),
    )
    biggest.entries.popitem(last=False)


@torch.no_grad()
def second_order(
    model: Model,
    images: Tensor,
    layer: int,
    *,
    neurons: Sequence[int] | Tensor | None = None,
    convention: str = "exact",
    cache: bool = True,
) -> Tensor:
    """Second-order effects of block ``layer``'s neurons on f(I): [B, N, d].

    ``images`` are preprocessed [B, 3, S, S]; ``neurons``: indices [N] (all when None).
    Units: contribution to the unnormalised embedding (exact), or the reference code's
    ``100/||f||``-scaled arrays (official).

    The image-independent directions ``u`` are computed on the first call for a model,
    layer, convention and neuron set and reused afterwards (``cached_directions``; they are
    recomputed when the weights change), so a loop of calls costs one traced forward each;
    ``cache=False`` computes them afresh.
    """
    check_convention(convention)
    check_layer(model, layer)
    trace = model.trace(images, trace_names([layer], model.info.n_layers))
    coeffs = coefficients(model, trace, layer, neurons, offset=convention == "official")
    if cache:
        u = cached_directions(model, layer, convention, neurons)
    else:
        u = directions(model, layer, convention, neurons)
    return effects(coeffs, u, convention)
