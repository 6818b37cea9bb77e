"""benchmarks/performance.py: its analytic FLOP count, its measurements and the reduced
precision check, on a small random model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from solens.lens.second_order import coefficients, directions, gram, norms, trace_names
from tests.helpers import images, tiny_model

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "performance.py"


@pytest.fixture(scope="module")
def perf():
    spec = importlib.util.spec_from_file_location("bench_performance", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("layer", [0, 2])
@pytest.mark.parametrize("batch", [1, 3])
def test_lens_flops_equal_torch_counter(perf, layer: int, batch: int, monkeypatch) -> None:
    import importlib

    # the counter sees torch ops only: keep small batches off the numpy streaming path
    monkeypatch.setattr(importlib.import_module("solens.lens.second_order"), "STREAM_MAX_BATCH", 0)
    model = tiny_model(dtype=torch.float32)
    i = model.info
    x = images(batch, dtype=torch.float32)
    tr = model.trace(x, trace_names([layer], i.n_layers))
    G = gram(directions(model, layer))
    with FlopCounterMode(display=False) as fc:
        norms(coefficients(model, tr, layer), G)
    analytic = perf.lens_flops(i.n_layers, i.n_heads, i.d_model, i.d_mlp, i.d_embed,
                               i.n_tokens, layer)
    # plus one batch-independent product: the official offset's beta_post @ proj [D] x [D, d]
    assert fc.get_total_flops() == batch * analytic + 2 * i.d_model * i.d_embed


def test_floor(perf) -> None:
    b1 = perf.floor_bytes(12, 12, 768, 3072, 512, 50, 9, 1, weight_bytes=0)
    assert b1 == 4 * (3072 * 24 + 3072 + 2 * 512 + 1 + 50 * 3072)
    assert perf.floor_bytes(12, 12, 768, 3072, 512, 50, 9, 4, weight_bytes=10) == 10 + 4 * b1
    assert perf.floor_seconds(2e9, 1e6, 1e9, 1e9) == 2.0
    assert perf.floor_seconds(1e3, 5e9, 1e9, 1e9) == 5.0


def test_measure_rows(perf) -> None:
    model = tiny_model(dtype=torch.float32)
    rates = perf.machine_rates("cpu")
    assert rates["gemm_flops"] > 1e6 and rates["copy_bytes_per_s"] > 1e6
    rows = perf.measure(model, 1, [1, 2], "cpu", 1, rates, min_s=0.0)
    assert [r["batch"] for r in rows] == [1, 2]
    for r in rows:
        assert r["forward_s"] > 0 and r["effects_s"] > 0 and r["api_second_s"] > 0
        assert r["achieved_fraction"] > 0
        assert r["gflop_lens_per_image_counted"] == pytest.approx(
            r["gflop_lens_per_image_analytic"], rel=0.5)
    assert rows[1]["gflop_forward_per_image"] == pytest.approx(rows[0]["gflop_forward_per_image"])


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_reduced_precision_path(perf, dtype: str) -> None:
    """The bf16/fp16 path runs (here on CPU) and its check sees the rounding error."""
    model = tiny_model(dtype=torch.float32)
    x = images(2, dtype=torch.float32)
    res = perf.precision_check(model, x, 1, dtype)
    assert res["dtype"] == dtype
    assert 1e-5 < res["rel_error_effects"] < 0.1 and res["rel_error_norms"] < 0.1
    assert res["min_cosine"] > 0.9
    assert model.dtype == torch.float32  # the fp32 model is left as it was
