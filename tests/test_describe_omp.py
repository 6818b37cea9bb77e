"""Batched OMP / NNOMP vs scikit-learn and scipy; dictionary preparation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import nnls
from sklearn.linear_model import orthogonal_mp

from solens.describe.omp import omp, prepare_dictionary

pytestmark = pytest.mark.usefixtures("one_thread")


def problem(K: int = 400, d: int = 48, B: int = 13, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    D, _ = prepare_dictionary(torch.randn(K, d, generator=g) + 0.5)
    Y = torch.randn(B, d, generator=g, dtype=torch.float64)
    return D, Y / Y.norm(dim=1, keepdim=True)


def test_prepare_dictionary_rows_unit_and_centred() -> None:
    E = torch.randn(50, 8) * torch.linspace(0.1, 10, 8) + 3
    D, mean = prepare_dictionary(E)
    assert torch.allclose(D.norm(dim=1), torch.ones(50), atol=1e-6)
    En = E / E.norm(dim=1, keepdim=True)
    assert torch.allclose(mean, En.mean(0), atol=1e-6)
    # rows are the centred texts rescaled (per text, not per column)
    C = En - En.mean(0)
    assert torch.allclose(D * C.norm(dim=1, keepdim=True), C, atol=1e-5)


@pytest.mark.parametrize("batch_size", [4, 64])
def test_omp_matches_sklearn(batch_size: int) -> None:
    D, Y = problem()
    m = 15
    res = omp(D, Y, m, batch_size=batch_size)
    ref = orthogonal_mp(D.double().numpy().T, Y.numpy().T, n_nonzero_coefs=m)  # [K, B]
    assert (res.n_terms == m).all()
    for b in range(Y.shape[0]):
        mine = res.indices[b]
        assert set(np.nonzero(ref[:, b])[0]) == set(mine)
        np.testing.assert_allclose(res.coefs[b], ref[mine, b], atol=1e-5)
        rec = D.double().numpy().T @ ref[:, b]
        cos = rec @ Y[b].numpy() / np.linalg.norm(rec)
        assert abs(res.cosine[b] - cos) < 1e-6
    # terms() sorts by |coef|
    t = res.terms(0)
    assert [abs(c) for _, c in t] == sorted((abs(c) for _, c in t), reverse=True)


def test_omp_stops_on_exact_fit_and_zero_target() -> None:
    D, _ = problem(K=60, d=10)
    y = torch.zeros(3, 10, dtype=torch.float64)
    y[1] = 0.7 * D[3].double() - 0.2 * D[11].double()
    y[2] = D[5].double()
    res = omp(D, y, 8)
    assert res.n_terms.tolist() == [0, 2, 1]
    assert res.cosine[0] == 0 and abs(res.cosine[1] - 1) < 1e-9
    assert sorted(res.indices[1, :2].tolist()) == [3, 11]
    np.testing.assert_allclose(sorted(res.coefs[1, :2]), [-0.2, 0.7], atol=1e-6)
    assert (res.indices[0] == -1).all()


def test_nnomp_non_negative_and_exact_nnls() -> None:
    D, Y = problem(K=300, d=32, B=9, seed=3)
    res = omp(D, Y, 12, nonneg=True, batch_size=4)
    A = D.double().numpy()
    for b in range(Y.shape[0]):
        k = res.n_terms[b]
        sel = res.indices[b, :k]
        assert k > 0 and (res.coefs[b, :k] > 0).all()
        assert (res.indices[b, k:] == -1).all()
        want, _ = nnls(A[sel].T, Y[b].numpy())
        np.testing.assert_allclose(res.coefs[b, :k], want, atol=1e-8)
    # the first atom is the largest positive correlation
    first = (Y.float() @ D.T).argmax(1).numpy()
    assert (res.indices[:, 0] == first).all()


def test_nn_refit_converges_to_nnls() -> None:
    from solens.describe.omp import _nn_refit

    g = torch.Generator().manual_seed(0)
    A = torch.randn(5, 10, 32, generator=g, dtype=torch.float64) + 1.0  # correlated atoms
    A = A / A.norm(dim=2, keepdim=True)
    y = torch.randn(5, 32, generator=g, dtype=torch.float64)
    G, alpha = A @ A.mT, (A @ y.unsqueeze(-1)).squeeze(-1)
    x_ls = torch.linalg.solve(G, alpha)
    assert (x_ls < 0).any(1).all()  # the projected-gradient path is taken
    x = _nn_refit(G, alpha, torch.zeros(5, 10, dtype=torch.float64), x_ls, 1000)
    for b in range(5):
        np.testing.assert_allclose(x[b].numpy(), nnls(A[b].T.numpy(), y[b].numpy())[0],
                                   atol=1e-8)


def test_nnomp_on_clustered_dictionary() -> None:
    g = torch.Generator().manual_seed(1)
    E = torch.randn(30, 1, 24, generator=g) + 0.3 * torch.randn(30, 6, 24, generator=g)
    D, _ = prepare_dictionary(E.reshape(180, 24))
    Y = torch.randn(6, 24, generator=g, dtype=torch.float64)
    res = omp(D, Y, 15, nonneg=True)
    A = D.double().numpy()
    for b in range(6):
        k = res.n_terms[b]
        sel = res.indices[b, :k]
        assert len(set(sel)) == k and (res.coefs[b, :k] > 0).all()
        np.testing.assert_allclose(res.coefs[b, :k], nnls(A[sel].T, Y[b].numpy())[0],
                                   atol=1e-8)
        rec = res.coefs[b, :k] @ A[sel]
        cos = rec @ Y[b].numpy() / np.linalg.norm(rec) / np.linalg.norm(Y[b].numpy())
        assert abs(cos - res.cosine[b]) < 1e-9
