"""The paper's per-neuron ablation variants, computed from factorised effects (METHOD §5.1-5.4).

For source block l, neuron n and image I (exact convention): coefficients
``c_n(I) = inv_sigma_post(I) * s_n(I)`` [P] and directions ``u_n`` [P, d], so
``phi_n(I) = c_n(I) @ u_n``. From the reference set (the run's images) come the mean
coefficients ``m_n`` [P] (``phi_bar_n = m_n @ u_n``), the threshold ``tau_n`` and the
rank-1 direction ``r_n`` [d] (``solens.describe.stats``). With ``X_n = c_n(I) - m_n``:

- mean-ablating every neuron: ``f - sum_n X_n @ u_n`` (each phi_n replaced by phi_bar_n);
- only the significant effects (``||X_n @ u_n|| > tau_n``), or only the others;
- rank one: ``phi_n -> phi_bar_n + <phi_n - phi_bar_n, r_n> r_n``, i.e.
  ``f - sum_n X_n @ u_n + sum_n (X_n . (u_n r_n)) r_n``; with a text reconstruction
  ``r_hat_n`` in place of ``r_n`` for the paper's Fig. 4.

Nothing of size [B, N, d] is materialised: sums over neurons are one matrix product
[B, N*P] x [N*P, d].
"""

from __future__ import annotations

import torch
from torch import Tensor


def centred(c: Tensor, mean_coef: Tensor) -> Tensor:
    """``X = c - m``: coefficients [B, N, P] minus the reference means [N, P]."""
    return c - mean_coef.to(c)


def summed_effect(x: Tensor, u: Tensor) -> Tensor:
    """``sum_n x_n @ u_n``: coefficients [B, N, P] and directions [N, P, d] -> [B, d]."""
    B = x.shape[0]
    return x.reshape(B, -1) @ u.to(x).reshape(-1, u.shape[-1])


def centred_norms(x: Tensor, gram: Tensor) -> Tensor:
    """``||x_n @ u_n||`` for every image and neuron: [B, N, P] with Gram matrices
    ``u u^T`` [N, P, P] -> [B, N]."""
    sq = torch.einsum("bnp,npq,bnq->bn", x, gram.to(x), x)
    return sq.clamp_min(0).sqrt()


def projections(x: Tensor, u: Tensor, r: Tensor) -> Tensor:
    """``<x_n @ u_n, r_n>``: [B, N, P], directions [N, P, d], unit vectors [N, d] -> [B, N]."""
    ur = torch.einsum("npd,nd->np", u.to(x), r.to(x))
    return torch.einsum("bnp,np->bn", x, ur)


def ablate_all(f: Tensor, x: Tensor, u: Tensor) -> Tensor:
    """Every neuron's effect replaced by its mean: f [B, d] -> [B, d]."""
    return f - summed_effect(x, u)


def ablate_masked(f: Tensor, x: Tensor, u: Tensor, mask: Tensor) -> Tensor:
    """Only the effects where ``mask`` [B, N] is true replaced by their means: [B, d]."""
    return f - summed_effect(x * mask.to(x).unsqueeze(-1), u)


def rank1(f: Tensor, x: Tensor, u: Tensor, r: Tensor) -> Tensor:
    """Every effect replaced by its rank-1 reconstruction along unit ``r`` [N, d]
    (``phi_bar_n + <phi_n - phi_bar_n, r_n> r_n``): [B, d]."""
    return f - summed_effect(x, u) + projections(x, u, r) @ r.to(x)


def unit_rows(v: Tensor) -> Tensor:
    """Rows scaled to unit norm (zero rows stay zero): [N, d] -> [N, d]."""
    norm = v.norm(dim=-1, keepdim=True)
    return torch.where(norm > 0, v / norm.clamp_min(1e-30), torch.zeros_like(v))


__all__ = [
    "ablate_all",
    "ablate_masked",
    "centred",
    "centred_norms",
    "projections",
    "rank1",
    "summed_effect",
    "unit_rows",
]
