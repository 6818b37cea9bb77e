"""Streaming neuron statistics vs brute force on materialised effects."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from solens.describe.stats import compute_stats, has_stats, load_stats, neuron_stats, resolve_k
from solens.errors import InputError
from solens.lens.second_order import LayerCoeffs, effects
from solens.store import Run, run_effects

from .helpers import tiny_model


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """A run of a tiny random model over 30 random images, chunks of 8 rows."""
    root = tmp_path_factory.mktemp("describe")
    img = root / "images"
    img.mkdir()
    rng = np.random.default_rng(0)
    for i in range(30):
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(img / f"{i:02d}.png")
    model = tiny_model(dtype=torch.float32)
    return run_effects(model, img, [0, 2], root / "run", batch_size=8, chunk_size=8,
                       progress=False, workers=0)


def brute_force(run: Run, layer: int, k: int) -> dict[str, np.ndarray]:
    """Materialise phi [B, N, d] and compute every statistic directly in float64."""
    view = run.layer(layer)
    u = torch.from_numpy(np.array(view.directions("exact"), dtype=np.float64))
    s = torch.from_numpy(np.array(view.s, dtype=np.float64))
    inv = torch.from_numpy(np.array(run.inv_sigma_post, dtype=np.float64))
    B = s.shape[0]
    c = LayerCoeffs(layer, s, inv, torch.zeros(B, u.shape[2]), torch.ones(B, u.shape[2]))
    phi = effects(c, u)  # [B, N, d]
    phi_bar = phi.mean(0)
    cen = phi - phi_bar
    norms = cen.norm(dim=-1)  # [B, N]
    top_v, top_i = norms.T.topk(k, dim=1)
    rs, vt, va = [], [], []
    for n in range(phi.shape[1]):
        X = cen[top_i[n], n]  # [k, d]
        _, S, Vh = torch.linalg.svd(X, full_matrices=False)
        r = Vh[0]
        p = X @ r
        if (p > 0).sum() < (p < 0).sum() or ((p > 0).sum() == (p < 0).sum() and p.sum() < 0):
            r = -r
        rs.append(r)
        vt.append(S[0] ** 2 / (S**2).sum())
        va.append(((cen[:, n] @ r) ** 2).sum() / (cen[:, n] ** 2).sum())
    return {
        "phi_bar": phi_bar, "centred_norms": norms, "top_indices": top_i, "top_norms": top_v,
        "tau": top_v[:, -1], "r": torch.stack(rs), "var_topk": torch.stack(vt),
        "var_all": torch.stack(va), "total_var": (norms**2).mean(0),
    }


@pytest.mark.parametrize("layer,block", [(0, None), (2, 7)])
def test_stats_match_brute_force(small_run: Run, layer: int, block: int | None) -> None:
    st = compute_stats(small_run, layer, k=5, neuron_block=block, save=False)
    ref = brute_force(small_run, layer, 5)
    assert st.centred_norms.shape == (30, 128) and st.r.shape == (128, 16)
    for name, want in ref.items():
        got = torch.from_numpy(np.asarray(getattr(st, name)).astype(np.float64))
        want = want.to(got.dtype) if name != "top_indices" else want
        if name == "top_indices":
            assert torch.equal(got.long(), want), name
        else:
            err = float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))
            assert err < 1e-4, (name, err)
    # r_coef gives the projection of the centred effect on r
    u = np.array(small_run.layer(layer).directions("exact"), dtype=np.float64)
    np.testing.assert_allclose(np.einsum("npd,nd->np", u, st.r), st.r_coef, atol=1e-5)


def test_stats_saved_and_loaded(small_run: Run) -> None:
    st = compute_stats(small_run, 2, top_percent=10)
    assert st.k == 3 and has_stats(small_run, 2) and has_stats(small_run, 2, k=3)
    back = load_stats(small_run, 2)
    assert back.k == 3 and back.n_images == 30 and back.layer == 2
    np.testing.assert_array_equal(back.r, st.r)
    np.testing.assert_array_equal(back.top_indices, st.top_indices)
    with pytest.raises(InputError, match="not in run"):
        load_stats(small_run, 1)


def test_resolve_k_and_errors() -> None:
    assert resolve_k(5124, 100) == 100
    assert resolve_k(5124, None, 2) == 103
    with pytest.raises(InputError):
        resolve_k(10, 11)
    with pytest.raises(InputError):
        resolve_k(10, None, 0)


def test_constant_neuron_has_zero_direction() -> None:
    u = torch.randn(2, 3, 5, dtype=torch.float64)
    c = torch.randn(6, 2, 3, dtype=torch.float64)
    c[:, 1] = 0.5  # neuron 1 never varies

    def source(n0: int, n1: int):
        yield 0, c[:4, n0:n1]
        yield 4, c[4:, n0:n1]

    st = neuron_stats(source, u, 2, 6)
    assert np.all(st.r[1] == 0) and st.var_all[1] == 0 and st.tau[1] == 0
    assert abs(np.linalg.norm(st.r[0]) - 1) < 1e-6 and 0 < st.var_all[0] <= 1


def test_v1_stats_json_reads_through_stats_meta(tmp_path) -> None:
    """stats.json as solens 0.1.0 wrote it: read as ``StatsMeta``, written back unchanged;
    a newer version is refused with a one-line error, and ``has_stats`` treats it as absent
    (``describe`` recomputes)."""
    import json

    from solens.store.protocol import ArrayInfo, StatsMeta
    from tests.store_helpers import write_v1_run

    v1 = write_v1_run(tmp_path / "run", tmp_path / "imgs")
    run = Run.open(tmp_path / "run")
    assert has_stats(run, 1) and has_stats(run, 1, k=2) and not has_stats(run, 1, k=3)
    st = load_stats(run, 1)
    assert isinstance(st.meta, StatsMeta) and st.meta.to_dict() == v1["stats"]
    assert st.k == 2 and st.n_images == 4 and st.layer == 1 and st.n_neurons == 3
    assert st.meta.arrays["top_indices"] == ArrayInfo((3, 2), "int64")
    assert st.meta.top_percent is None and st.meta.run_id == run.run_id
    for name in ("r", "top_indices", "tau", "centred_norms"):
        np.testing.assert_array_equal(getattr(st, name), v1["arrays"][name])
    path = tmp_path / "run" / "layer-01" / "stats" / "stats.json"
    st.meta.write(tmp_path / "s.json")
    assert json.loads((tmp_path / "s.json").read_text()) == v1["stats"]
    for version, message in [(2, "version 2, newer than this solens"),
                             (0, "version 0; this solens .* reads solens-stats version 1 only; "
                                 "recompute them with `solens describe --recompute-stats`")]:
        path.write_text(json.dumps({**v1["stats"], "version": version}))
        with pytest.raises(InputError, match=message) as e:
            load_stats(run, 1)
        assert str(path) in str(e.value) and "\n" not in str(e.value)
        assert not has_stats(run, 1)
    path.write_text(json.dumps({**v1["stats"], "run_id": "another"}))
    with pytest.raises(InputError, match="no up-to-date statistics"):
        load_stats(run, 1)


def test_saved_stats_json_keeps_the_v1_layout(small_run: Run) -> None:
    import json

    compute_stats(small_run, 0, k=4)
    path = small_run.path / "layer-00" / "stats" / "stats.json"
    d = json.loads(path.read_text())
    assert list(d) == ["format", "version", "layer", "k", "top_percent", "n_images",
                       "n_neurons", "convention", "run_id", "model", "solens_version",
                       "created", "arrays"]  # fmt: skip
    assert d["format"] == "solens-stats" and d["version"] == 1 and d["k"] == 4
    assert d["arrays"]["top_indices"] == {"shape": [128, 4], "dtype": "int64"}
    assert d["run_id"] == small_run.run_id and d["model"] == small_run.model
