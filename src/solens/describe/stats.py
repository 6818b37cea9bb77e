"""Per-neuron statistics of second-order effects, streamed from the factorised coefficients.

For source layer l, directions ``u_n`` [P, d] (exact convention) and per-image coefficients
``c_n(I) = inv_sigma_post(I) * s_n(I)`` [P], the effect is ``phi_n(I) = c_n(I) @ u_n``.
With ``G_n = u_n u_n^T`` [P, P] everything below is computed from ``c`` and ``u`` without
materialising [images, neurons, d] (see ``docs/describe.md``):

- mean coefficient ``m_n = mean_I c_n(I)``; mean effect ``phi_bar_n = m_n @ u_n``;
- centred norm ``||phi_n(I) - phi_bar_n|| = sqrt((c - m)^T G_n (c - m))`` for every image;
- top-k images by centred norm, threshold ``tau_n`` = the k-th largest centred norm;
- ``r_n``: top right-singular vector of the top-k centred effects ``X_n u_n``
  (``X_n`` [k, P] = rows ``c - m``), sign such that most projections are positive;
- variance explained by ``r_n`` over the top-k images and over all images.

Two streaming passes over the run's chunks: (1) sums of ``c`` and of ``c c^T`` (shifted
for precision), (2) centred norms and a running top-k with the top rows of ``c - m``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from solens import __version__
from solens.errors import InputError
from solens.lens.second_order import directions
from solens.store.arrays import save_npy_atomic
from solens.store.protocol import ArrayInfo, StatsMeta
from solens.store.run import Run, layer_dir, now

STATS_DIR = "stats"
STATS_META = "stats.json"
STATS_VERSION = StatsMeta.VERSION
BLOCK_BYTES = 1024 * 2**20
"""Neurons are processed in blocks whose float64 working set (directions [n, P, d],
second moments [n, P, P], top-k rows [n, 2k, P]) fits this budget."""

ChunkSource = Callable[[int, int], Iterable[tuple[int, Tensor]]]
"""``source(n0, n1)`` yields ``(first_row, c)`` with ``c`` [b, n1 - n0, P] float64 for every
chunk of images in row order; it is called once per pass."""

_ARRAYS = (
    "mean_coef", "phi_bar", "centred_norms", "top_indices", "top_norms", "tau", "r",
    "r_coef", "var_topk", "var_all", "total_var",
)


@dataclass
class NeuronStats:
    """Statistics of one layer's N neurons over ``n_images`` images (exact convention).

    ``mean_coef`` [N, P]: m_n; ``phi_bar`` [N, d]: m_n @ u_n;
    ``centred_norms`` [n_images, N]: ||phi_n(I) - phi_bar_n||;
    ``top_indices`` [N, k] int64 / ``top_norms`` [N, k]: the k images of largest centred
    norm, in decreasing order; ``tau`` [N]: k-th largest centred norm;
    ``r`` [N, d]: unit rank-1 direction (zero for a neuron without variation);
    ``r_coef`` [N, P]: u_n r_n, so <phi_n(I) - phi_bar_n, r_n> = (c_n(I) - m_n) . r_coef_n;
    ``var_topk`` / ``var_all`` [N]: fraction of the centred sum of squares along r_n over
    the top-k / all images; ``total_var`` [N]: mean squared centred norm over all images.
    """

    layer: int
    k: int
    n_images: int
    mean_coef: np.ndarray
    phi_bar: np.ndarray
    centred_norms: np.ndarray
    top_indices: np.ndarray
    top_norms: np.ndarray
    tau: np.ndarray
    r: np.ndarray
    r_coef: np.ndarray
    var_topk: np.ndarray
    var_all: np.ndarray
    total_var: np.ndarray
    meta: StatsMeta | None = None
    """``stats.json`` of stored statistics (set by ``compute_stats`` / ``load_stats``)."""
    @property
    def n_neurons(self) -> int:
        return int(self.tau.shape[0])

    def neuron(self, n: int) -> dict[str, Any]:
        """Scalars and top images of neuron ``n`` as plain Python values."""
        return {
            "neuron": n,
            "tau": float(self.tau[n]),
            "var_topk": float(self.var_topk[n]),
            "var_all": float(self.var_all[n]),
            "total_var": float(self.total_var[n]),
            "top_images": [int(i) for i in self.top_indices[n]],
            "top_norms": [float(v) for v in self.top_norms[n]],
        }


def resolve_k(n_images: int, k: int | None = 100, top_percent: float | None = None) -> int:
    """Number of top images: ``k``, or ``ceil(top_percent / 100 * n_images)`` (at least 1)."""
    if top_percent is not None:
        if not 0 < top_percent <= 100:
            raise InputError(f"--top-percent must be in (0, 100], got {top_percent}")
        k = max(1, math.ceil(top_percent / 100 * n_images))
    if k is None or k < 1:
        raise InputError(f"k must be a positive integer, got {k}")
    if k > n_images:
        raise InputError(
            f"--k {k} is more than the run's {n_images} images: give --k {n_images} or less "
            f"(Python: k={n_images})"
        )
    return int(k)


def default_neuron_block(n_neurons: int, n_dirs: int, d: int, k: int) -> int:
    """Neurons per block so that the float64 working set stays within ``BLOCK_BYTES``."""
    per = max(1, 8 * n_dirs * (n_dirs + 2 * d + 2 * k))
    return max(1, min(n_neurons, BLOCK_BYTES // per))


@torch.no_grad()
def neuron_stats(
    source: ChunkSource,
    u: Tensor,
    k: int,
    n_images: int,
    *,
    layer: int = -1,
    neuron_block: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> NeuronStats:
    """Statistics from a chunk source and directions ``u`` [N, P, d] (see module doc).

    ``progress(n)`` is called with the number of neurons finished after each block.
    """
    N, P, d = u.shape
    if n_images < 1:
        raise InputError("no images: the run has no complete chunk")
    if not 1 <= k <= n_images:
        raise InputError(f"k={k} must be in 1..{n_images}")
    block = neuron_block or default_neuron_block(N, P, d, k)
    out: dict[str, np.ndarray] = {
        "mean_coef": np.zeros((N, P), np.float32),
        "phi_bar": np.zeros((N, d), np.float32),
        "centred_norms": np.zeros((n_images, N), np.float32),
        "top_indices": np.zeros((N, k), np.int64),
        "top_norms": np.zeros((N, k), np.float32),
        "tau": np.zeros(N, np.float32),
        "r": np.zeros((N, d), np.float32),
        "r_coef": np.zeros((N, P), np.float32),
        "var_topk": np.zeros(N, np.float32),
        "var_all": np.zeros(N, np.float32),
        "total_var": np.zeros(N, np.float32),
    }
    for n0 in range(0, N, block):
        n1 = min(N, n0 + block)
        ub = u[n0:n1].to(torch.float64)
        res = _block_stats(partial(source, n0, n1), ub, k, n_images, out, n0)
        for name, val in res.items():
            out[name][n0:n1] = val.cpu().numpy()
        if progress is not None:
            progress(n1 - n0)
    return NeuronStats(layer=layer, k=k, n_images=n_images, **out, meta=None)


def _block_stats(
    source: Callable[[], Iterable[tuple[int, Tensor]]],
    u: Tensor,
    k: int,
    n_images: int,
    out: dict[str, np.ndarray],
    n0: int,
) -> dict[str, Tensor]:
    """Both passes for one block of neurons; writes ``centred_norms`` columns into ``out``."""
    n, P, _ = u.shape
    G = u @ u.transpose(1, 2)  # [n, P, P]
    # pass 1: shifted first and second moments (shift = first chunk's mean, for precision)
    shift = s1 = s2 = None  # set together, by the first chunk
    count = 0
    for _, c in source():
        if shift is None or s1 is None or s2 is None:
            shift = c.mean(0)
            s1 = torch.zeros_like(shift)
            s2 = torch.zeros(n, P, P, dtype=c.dtype, device=c.device)
        x = (c - shift).transpose(0, 1)  # [n, b, P]
        s1 += x.sum(1)
        s2 += x.transpose(1, 2) @ x
        count += c.shape[0]
    if shift is None or s1 is None or s2 is None or count != n_images:
        raise InputError(f"chunk source gave {count} images, expected {n_images}")
    dm = s1 / count  # mean - shift
    mean = shift + dm
    scatter = s2 - count * dm.unsqueeze(2) * dm.unsqueeze(1)  # sum (c-m)(c-m)^T [n, P, P]
    total = torch.einsum("npq,nqp->n", scatter, G).clamp_min(0)  # sum_I ||phi - phi_bar||^2

    # pass 2: centred norms, running top-k with the top rows of c - m
    top_v = torch.empty(n, 0, dtype=u.dtype, device=u.device)
    top_i = torch.empty(n, 0, dtype=torch.long, device=u.device)
    top_x = torch.empty(n, 0, P, dtype=u.dtype, device=u.device)
    norms_out = out["centred_norms"]
    for start, c in source():
        x = (c - mean).transpose(0, 1)  # [n, b, P]
        q = ((x @ G) * x).sum(-1).clamp_min(0).sqrt()  # [n, b]
        b = q.shape[1]
        norms_out[start : start + b, n0 : n0 + n] = q.T.cpu().numpy()
        kk = min(k, b)
        v, i = q.topk(kk, dim=1)
        xs = x.gather(1, i.unsqueeze(-1).expand(-1, -1, P))
        v = torch.cat([top_v, v], 1)
        i = torch.cat([top_i, i + start], 1)
        xs = torch.cat([top_x, xs], 1)
        kk = min(k, v.shape[1])
        v, j = v.topk(kk, dim=1)
        top_v, top_i = v, i.gather(1, j)
        top_x = xs.gather(1, j.unsqueeze(-1).expand(-1, -1, P))

    # rank-1 direction: SVD of u = U S Vh, then X u = (X U S) Vh; SVD of the small X U S
    U, S, Vh = torch.linalg.svd(u, full_matrices=False)  # [n,P,P], [n,P], [n,P,d]
    Y = (top_x @ U) * S.unsqueeze(1)  # [n, k, P]
    _, sig, Bh = torch.linalg.svd(Y, full_matrices=False)
    b1 = Bh[:, 0, :]  # [n, P]
    r = (b1.unsqueeze(1) @ Vh).squeeze(1)  # [n, d]
    w = (u @ r.unsqueeze(-1)).squeeze(-1)  # u_n r_n [n, P]
    proj = (top_x @ w.unsqueeze(-1)).squeeze(-1)  # [n, k]
    pos = (proj > 0).sum(1).to(u.dtype)
    neg = (proj < 0).sum(1).to(u.dtype)
    flip = (pos < neg) | ((pos == neg) & (proj.sum(1) < 0))
    sign = torch.where(flip, -1.0, 1.0).to(u.dtype).unsqueeze(1)
    r, w = r * sign, w * sign
    topk_ss = (sig**2).sum(1)
    live = sig[:, 0] > 0
    r = torch.where(live.unsqueeze(1), r, torch.zeros_like(r))
    w = torch.where(live.unsqueeze(1), w, torch.zeros_like(w))
    var_topk = torch.where(live, sig[:, 0] ** 2 / topk_ss.clamp_min(1e-300), 0.0)
    along = torch.einsum("np,npq,nq->n", w, scatter, w)
    var_all = torch.where(total > 0, along / total.clamp_min(1e-300), 0.0)
    return {
        "mean_coef": mean,
        "phi_bar": (mean.unsqueeze(1) @ u).squeeze(1),
        "top_indices": top_i,
        "top_norms": top_v,
        "tau": top_v[:, -1],
        "r": r,
        "r_coef": w,
        "var_topk": var_topk,
        "var_all": var_all,
        "total_var": total / n_images,
    }


# --- runs -------------------------------------------------------------------------------
def _run_source(run: Any, layer: int, device: torch.device) -> ChunkSource:
    """Chunk source over a ``solens.store.Run``: c = inv_sigma_post * s, float64."""
    def source(n0: int, n1: int) -> Iterator[tuple[int, Tensor]]:
        for ch in run.iter_chunks(layer):
            if ch.rows == 0:
                continue
            s = torch.from_numpy(np.array(ch["s"][:, n0:n1], dtype=np.float64)).to(device)
            inv = torch.from_numpy(np.array(ch["inv_sigma_post"], dtype=np.float64)).to(device)
            yield ch.start, s * inv[:, None, None]

    return source


def stats_dir(run: Any, layer: int) -> Path:
    """``RUN/layer-LL/stats``."""
    return Path(run.path) / layer_dir(layer) / STATS_DIR


def compute_stats(
    run: Any,
    layer: int,
    k: int | None = 100,
    model: Any = None,
    *,
    top_percent: float | None = None,
    allow_partial: bool = False,
    save: bool = True,
    device: str | torch.device = "cpu",
    neuron_block: int | None = None,
    progress: bool = False,
) -> NeuronStats:
    """Compute (and by default store) the statistics of ``layer`` of ``run``.

    ``run``: a ``solens.store.Run`` or its path. Directions come from the run (stored at
    compute time) or, with ``model``, from ``solens.lens.directions(model, layer)``.
    ``k`` top images, or ``top_percent`` of the images.
    """
    from tqdm.auto import tqdm

    run = run if isinstance(run, Run) else Run.open(run)
    run.layer(layer)  # InputError when the layer is not in the run
    run.require_complete(allow_partial)
    k = resolve_k(run.n_images, k, top_percent)
    if model is not None:
        u = directions(model, layer, "exact").detach().to("cpu", torch.float32)
    else:
        u = torch.from_numpy(np.array(run.layer(layer).directions("exact"), dtype=np.float32))
    u = u.to(device)
    with tqdm(total=u.shape[0], unit="neuron", desc=f"stats layer {layer}",
              disable=not progress) as bar:
        st = neuron_stats(_run_source(run, layer, torch.device(device)), u, k, run.n_images,
                          layer=layer, neuron_block=neuron_block, progress=bar.update)
    st.meta = _meta(run, st, top_percent)
    if save:
        save_stats(run, st)
    return st


def _meta(run: Any, st: NeuronStats, top_percent: float | None) -> StatsMeta:
    return StatsMeta(
        layer=st.layer,
        k=st.k,
        top_percent=top_percent,
        n_images=st.n_images,
        n_neurons=st.n_neurons,
        convention="exact",
        run_id=run.run_id,
        model=run.model,
        solens_version=__version__,
        created=now(),
    )


def save_stats(run: Any, st: NeuronStats) -> Path:
    """Write the arrays (atomically), then ``stats.json`` last; returns the folder."""
    folder = stats_dir(run, st.layer)
    meta = replace(st.meta or _meta(run, st, None), arrays={})
    for name in _ARRAYS:
        a = getattr(st, name)
        save_npy_atomic(folder / f"{name}.npy", a)
        meta.arrays[name] = ArrayInfo(tuple(a.shape), str(a.dtype))
    meta.write(folder / STATS_META)
    st.meta = meta
    return folder


def _stored_meta(run: Any, layer: int) -> StatsMeta | None:
    """``stats.json`` of ``layer`` if it exists and is up to date for ``run`` (its run id and
    image count, every array present); ``InputError`` when it is not a record this solens
    reads."""
    p = stats_dir(run, layer) / STATS_META
    if not p.is_file():
        return None
    meta = StatsMeta.read(p)
    current = (
        meta.run_id == run.run_id
        and meta.n_images == run.n_images
        and all((p.parent / f"{a}.npy").exists() for a in _ARRAYS)
    )
    return meta if current else None


def has_stats(run: Any, layer: int, k: int | None = None) -> bool:
    """Whether stored statistics exist, match the run (id, image count) and ``k`` if given
    (False also for a ``stats.json`` this solens does not read: they are recomputed)."""
    try:
        meta = _stored_meta(run, layer)
    except InputError:
        return False
    return meta is not None and (k is None or meta.k == k)


def stats_for(
    run: Any, layer: int, k: int, *, recompute: bool = False, **compute_kw: Any
) -> NeuronStats:
    """The statistics of ``layer`` with top ``k``: stored ones when they match the run and
    ``k`` (and not ``recompute``), else computed (and stored) by ``compute_stats`` with
    ``compute_kw``."""
    if not recompute and has_stats(run, layer, k=k):
        return load_stats(run, layer)
    return compute_stats(run, layer, k, **compute_kw)


def load_stats(run: Any, layer: int, mmap: bool = True) -> NeuronStats:
    """Stored statistics of ``layer`` (``InputError`` if absent, stale or of a version this
    solens does not read)."""
    run = run if isinstance(run, Run) else Run.open(run)
    run.layer(layer)
    folder = stats_dir(run, layer)
    meta = _stored_meta(run, layer)
    if meta is None:
        partial = "" if run.complete else " --allow-partial"
        raise InputError(
            f"no up-to-date statistics for layer {layer} in {run.path}; run `solens describe "
            f"{run.path}{partial}` (or solens.describe.compute_stats) first"
            + ("" if run.complete else f" (the run is incomplete: {run.n_images} images so far)")
        )
    arrays = {
        name: np.load(folder / f"{name}.npy", mmap_mode="r" if mmap else None)
        for name in _ARRAYS
    }
    return NeuronStats(layer=meta.layer, k=meta.k, n_images=meta.n_images, **arrays, meta=meta)
