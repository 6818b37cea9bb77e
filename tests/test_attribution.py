"""The margin attribution is an exact split of the zero-shot margin."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from solens.experiments.ablation import collect_effects
from solens.experiments.attribution import direct_keys, margin_attribution

from .helpers import images, tiny_model


@pytest.mark.parametrize("seed", [0, 3])
def test_margin_splits_exactly(seed: int) -> None:
    model = tiny_model(seed=seed)
    x = images(7, seed=seed + 1)
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(5, 16, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 5, (7,), generator=g)
    res = margin_attribution(model, x, labels, text, batch_size=3)
    L = model.info.n_layers

    eff = collect_effects(model, x, range(L), ["second_order"])  # float32 copies
    f, so = eff.embeddings.double(), eff["second_order"].double()
    t = F.normalize(text, dim=-1)
    w = (t[labels] - t.mean(0)) / f.norm(dim=-1, keepdim=True)
    assert res["margin"] == pytest.approx(float((f * w).sum(-1).mean()), abs=1e-6)
    assert sum(res[k] for k in direct_keys(L)) == pytest.approx(res["margin"], abs=1e-10)
    for l in range(L):
        read = sum(res[f"read.{l}.{s}"] for s in ("embed", "attn", "mlp", "bias") if
                   f"read.{l}.{s}" in res)
        assert read == pytest.approx(res[f"blocks.{l}.attn"], abs=1e-10)
        # block l's MLP through later heads: the effect the block ablation removes
        expect = float((so[:, l] * w).sum(-1).mean())
        assert res[f"second_order.{l}"] == pytest.approx(expect, abs=1e-6)
    assert res[f"second_order.{L - 1}"] == 0.0
    assert abs(res["margin"]) > 1e-6  # not a vacuous identity
