"""Sparse decomposition of neuron directions over a text dictionary (METHOD §5.4).

``prepare_dictionary`` turns text embeddings E [K, d] into the dictionary
``D = normalize_rows(normalize_rows(E) - mean)``: every text is L2-normalised, the pool
mean is subtracted, then every text (row) is normalised again (per text, not per
embedding dimension: the reference code's per-column normalisation is a known defect).

``omp`` runs orthogonal matching pursuit for many targets at once (batched torch):
per iteration one [b, d] x [d, K] matmul gives the correlations of the residuals with all
atoms; the Gram matrix of the selected atoms is factorised incrementally (Cholesky, one
new row per iteration) and the least-squares refit is two batched triangular solves, in
float64. The result equals scikit-learn's ``orthogonal_mp`` on the same dictionary.

``nonneg=True`` is non-negative OMP (NNOMP): select the atom with the largest *positive*
correlation; refit with non-negative least squares. During selection the refit is the
unconstrained least-squares solution where that is already non-negative (then it *is* the
NNLS solution), else ``nn_steps`` steps of accelerated projected gradient (FISTA) warm-
started from the previous solution (approximate). The final coefficients on the chosen
support are the exact NNLS solution (``scipy.optimize.nnls``); atoms whose final
coefficient is 0 are dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass
class OMPResult:
    """Per target: ``indices`` [B, m] int64 (selection order, -1 padded), ``coefs`` [B, m]
    float64 (0 padded), ``cosine`` [B] (cosine of target and reconstruction, 0 for a zero
    reconstruction), ``n_terms`` [B] int64."""

    indices: np.ndarray
    coefs: np.ndarray
    cosine: np.ndarray
    n_terms: np.ndarray

    def terms(self, b: int) -> list[tuple[int, float]]:
        """(atom index, coefficient) of target ``b``, largest |coefficient| first."""
        k = int(self.n_terms[b])
        pairs = [(int(i), float(c)) for i, c in zip(self.indices[b, :k], self.coefs[b, :k],
                                                     strict=True)]
        return sorted(pairs, key=lambda p: -abs(p[1]))


def prepare_dictionary(embeddings: Tensor | np.ndarray, *, prenormalize: bool = True
                       ) -> tuple[Tensor, Tensor]:
    """Dictionary [K, d] float32 (unit rows) and the subtracted pool mean [d].

    ``prenormalize``: L2-normalise each embedding before centring (CLIP compares
    normalised embeddings).
    """
    E = torch.as_tensor(np.asarray(embeddings) if not isinstance(embeddings, Tensor)
                        else embeddings).to(torch.float64)
    if prenormalize:
        E = E / E.norm(dim=1, keepdim=True).clamp_min(1e-12)
    mean = E.mean(0)
    D = E - mean
    D = D / D.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return D.to(torch.float32), mean.to(torch.float32)


@torch.no_grad()
def omp(
    dictionary: Tensor,
    targets: Tensor | np.ndarray,
    n_terms: int = 128,
    *,
    nonneg: bool = False,
    batch_size: int = 1024,
    device: str | torch.device | None = None,
    tol: float = 1e-7,
    nn_steps: int = 100,
    progress: Callable[[int], None] | None = None,
) -> OMPResult:
    """Decompose each target [B, d] over ``dictionary`` [K, d] (unit rows) into ``n_terms``.

    A target stops early when its largest (positive, for ``nonneg``) residual correlation is
    at most ``tol * ||target||`` or the next atom is linearly dependent on the chosen ones.
    ``progress(b)`` is called after each batch with its number of targets.
    """
    dev = torch.device(device) if device is not None else dictionary.device
    D = dictionary.to(dev, torch.float32).contiguous()
    Dt = D.T.contiguous()  # [d, K]
    Y = torch.as_tensor(targets).to(dev, torch.float64)
    B = Y.shape[0]
    m = max(0, min(int(n_terms), D.shape[0]))
    idx = np.full((B, m), -1, np.int64)
    coefs = np.zeros((B, m), np.float64)
    cosine = np.zeros(B, np.float64)
    for b0 in range(0, B, batch_size):
        b1 = min(B, b0 + batch_size)
        y = Y[b0:b1]
        sel, x, cos = _omp_batch(D, Dt, y, m, nonneg, tol, nn_steps)
        if nonneg:
            x, cos = _exact_nnls(D, y, sel)
        sel_np, x_np = sel.cpu().numpy(), x.cpu().numpy()
        keep = sel_np >= 0
        if nonneg:
            keep &= x_np > 0
        if keep.all():
            idx[b0:b1], coefs[b0:b1] = sel_np, x_np
        else:  # compact: valid terms first, in selection order
            for r in range(b1 - b0):
                kk = np.nonzero(keep[r])[0]
                idx[b0 + r, : len(kk)] = sel_np[r, kk]
                coefs[b0 + r, : len(kk)] = x_np[r, kk]
        cosine[b0:b1] = cos.cpu().numpy()
        if progress is not None:
            progress(b1 - b0)
    return OMPResult(idx, coefs, cosine, (idx >= 0).sum(1))


def _omp_batch(D: Tensor, Dt: Tensor, y: Tensor, m: int, nonneg: bool, tol: float,
               nn_steps: int) -> tuple[Tensor, Tensor, Tensor]:
    """One batch of targets y [b, d] (float64).

    The chosen atoms A [i, d] are kept as ``A = L Q`` with orthonormal rows Q (classical
    Gram-Schmidt, repeated when the new atom lost more than half its norm) and
    lower-triangular L, i.e. L is the Cholesky factor of the atoms' Gram matrix;
    ``z = Q y``. The least-squares coefficients solve ``L^T x = z`` and the LS residual is
    ``y - z Q``. Returns selected indices [b, m] (-1 = none),
    coefficients [b, m] and the reconstruction cosine [b].
    """
    b, d = y.shape
    dev, f64 = y.device, torch.float64
    sel = torch.full((b, m), -1, dtype=torch.long, device=dev)
    Q = torch.zeros(b, m, d, dtype=f64, device=dev)
    L = torch.eye(m, dtype=f64, device=dev).repeat(b, 1, 1)  # unused rows: null atoms
    z = torch.zeros(b, m, dtype=f64, device=dev)
    G = torch.zeros(b, m, m, dtype=f64, device=dev) if nonneg else None
    x = torch.zeros(b, m, dtype=f64, device=dev)
    res = y.clone()
    ynorm = y.norm(dim=1)
    active = ynorm > 0
    n_active = int(active.sum())
    buf = torch.empty(b, D.shape[0], dtype=torch.float32, device=dev)
    for i in range(m):
        if n_active == 0:
            break
        # correlations of the residuals with every atom: the expensive step
        full = n_active == b
        act = None if full else active.nonzero().squeeze(1)
        r32 = res.to(torch.float32) if full else res[act].to(torch.float32)
        corr = torch.mm(r32, Dt, out=buf[: r32.shape[0]])  # [a, K]
        if i > 0:
            corr.scatter_(1, sel[:, :i] if full else sel[act, :i], 0.0)
        if not nonneg:
            corr.abs_()
        val, jj = corr.max(1)
        if full:
            j, best = jj, val.to(f64)
        else:
            j = torch.zeros(b, dtype=torch.long, device=dev)
            best = torch.zeros(b, dtype=f64, device=dev)
            j[act], best[act] = jj, val.to(f64)
        a = D[j].to(f64)  # [b, d]
        Qi = Q[:, :i]
        w = (Qi @ a.unsqueeze(-1)).squeeze(-1)  # [b, i]
        v = a - (w.unsqueeze(1) @ Qi).squeeze(1)
        if i > 0 and bool((v.norm(dim=1) < 0.5).any()):  # "twice is enough" (CGS2)
            w2 = (Qi @ v.unsqueeze(-1)).squeeze(-1)
            v = v - (w2.unsqueeze(1) @ Qi).squeeze(1)
            w = w + w2
        diag = v.norm(dim=1)
        ok = active & (best > tol * ynorm) & (diag > 1e-6)
        active = ok
        n_active = int(ok.sum())
        okf = ok.to(f64)
        # rows that stop get a null atom: zero basis vector, unit diagonal, zero coefficient
        q = v * (okf / diag.clamp_min(1e-300)).unsqueeze(1)
        L[:, i, :i] = w * okf.unsqueeze(1)
        L[:, i, i] = torch.where(ok, diag, 1.0)
        Q[:, i] = q
        z[:, i] = (q * y).sum(1)
        sel[:, i] = torch.where(ok, j, -1)
        if G is None:  # plain OMP (G exists only for nonneg)
            res = res - z[:, i : i + 1] * q
            continue
        n = i + 1
        Ln = L[:, :n, :n]
        x_ls = torch.linalg.solve_triangular(Ln.mT, z[:, :n].unsqueeze(-1), upper=True
                                             ).squeeze(-1)
        g = (L[:, :i, :i] @ L[:, i, :i].unsqueeze(-1)).squeeze(-1)  # A_{<i} a
        G[:, i, :i] = g
        G[:, :i, i] = g
        G[:, i, i] = torch.where(ok, (L[:, i, : i + 1] ** 2).sum(1), 1.0)
        alpha = (Ln @ z[:, :n].unsqueeze(-1)).squeeze(-1)  # A y
        x[:, :n] = _nn_refit(G[:, :n, :n], alpha, x[:, :n], x_ls, nn_steps)
        res = y - ((x[:, :n].unsqueeze(1) @ Ln) @ Q[:, :n]).squeeze(1)
    if nonneg:
        return sel, x, torch.zeros(b, dtype=f64, device=dev)
    x = torch.linalg.solve_triangular(L.mT, z.unsqueeze(-1), upper=True).squeeze(-1)
    cos = torch.where(ynorm > 0, z.norm(dim=1) / ynorm.clamp_min(1e-300), 0.0)
    return sel, x, cos


def _nn_refit(G: Tensor, alpha: Tensor, x0: Tensor, x_ls: Tensor, steps: int) -> Tensor:
    """Approximate NNLS ``min 0.5 x'Gx - alpha'x, x >= 0`` for a batch [b, n]: the LS
    solution where it is non-negative, else FISTA from ``x0`` (step 1 / lambda_max(G))."""
    bad = (x_ls < 0).any(1)
    out = x_ls.clone()
    if not bad.any():
        return out
    Gb, ab, x = G[bad], alpha[bad], x0[bad].clamp_min(0)
    v = torch.ones_like(x)  # power iteration for lambda_max
    for _ in range(20):
        v = (Gb @ v.unsqueeze(-1)).squeeze(-1)
        v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-300)
    lam = ((Gb @ v.unsqueeze(-1)).squeeze(-1) * v).sum(1, keepdim=True) * 1.05 + 1e-12
    zz, t = x.clone(), 1.0
    for _ in range(steps):
        grad = (Gb @ zz.unsqueeze(-1)).squeeze(-1) - ab
        x_new = (zz - grad / lam).clamp_min(0)
        t_new = (1 + (1 + 4 * t * t) ** 0.5) / 2
        zz = x_new + ((t - 1) / t_new) * (x_new - x)
        x, t = x_new, t_new
    out[bad] = x
    return out


def _exact_nnls(D: Tensor, y: Tensor, sel: Tensor) -> tuple[Tensor, Tensor]:
    """Exact NNLS coefficients on each target's support (scipy) [b, m] and the cosine [b]."""
    from scipy.optimize import nnls

    Dn = D.cpu().numpy().astype(np.float64)
    Y = y.cpu().numpy()
    S = sel.cpu().numpy()
    out = np.zeros(S.shape, np.float64)
    cos = np.zeros(S.shape[0], np.float64)
    for r in range(S.shape[0]):
        cols = np.nonzero(S[r] >= 0)[0]
        if len(cols) == 0:
            continue
        A = Dn[S[r, cols]]  # [n, d]
        out[r, cols], _ = nnls(A.T, Y[r])
        rec = out[r, cols] @ A
        den = np.linalg.norm(rec) * np.linalg.norm(Y[r])
        cos[r] = rec @ Y[r] / den if den > 0 else 0.0
    return torch.from_numpy(out).to(y.device), torch.from_numpy(cos).to(y.device)
