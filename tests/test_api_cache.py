"""The public API's cost: cached directions in ``second_order`` and vision-only loading."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

import solens
from solens.lens.second_order import (
    cached_directions,
    clear_directions_cache,
    directions,
    weights_token,
)
from solens.models.loading import load_model
from solens.store.compute import describe_preprocess, run_effects
from tests.helpers import images, run_cli, tiny_model

SMALL = "solens-test-cache-vit"
# the module (the package exports the function of that name)
so = importlib.import_module("solens.lens.second_order")


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_directions_cache()
    yield
    clear_directions_cache()


def _count_directions(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    calls: list[tuple] = []
    real = so.directions

    def counting(model, layer, convention="exact", neurons=None):
        calls.append((layer, convention))
        return real(model, layer, convention, neurons)

    monkeypatch.setattr(so, "directions", counting)
    return calls


def test_second_call_reuses_directions(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model()
    x = images(3)
    calls = _count_directions(monkeypatch)
    first = solens.second_order(model, x, 1)
    second = solens.second_order(model, images(2, seed=5), 1)
    assert calls == [(1, "exact")]  # u computed once: the second call is a traced forward
    assert second.shape == (2, 128, 16)
    torch.testing.assert_close(first, solens.second_order(model, x, 1, cache=False),
                               rtol=0, atol=0)
    # another convention, layer or neuron set is another entry
    solens.second_order(model, x, 1, convention="official")
    solens.second_order(model, x, 2)
    sub = solens.second_order(model, x, 1, neurons=[3, 7])
    solens.second_order(model, x, 1, neurons=torch.tensor([3, 7]))  # same set, as a tensor
    # cache=False computes afresh (second entry) and leaves the cache as it was
    assert calls == [(1, "exact")] * 2 + [(1, "official"), (2, "exact"), (1, "exact")]
    torch.testing.assert_close(sub, first[:, [3, 7]], rtol=0, atol=1e-12)


def test_cached_directions_equal_fresh_ones() -> None:
    model = tiny_model()
    for conv in ("exact", "official"):
        u = cached_directions(model, 0, conv, [1, 5, 9])
        assert u is cached_directions(model, 0, conv, [1, 5, 9])
        torch.testing.assert_close(u, directions(model, 0, conv, [1, 5, 9]), rtol=0, atol=0)


def test_in_place_weight_change_invalidates(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model()
    x = images(2)
    before = solens.second_order(model, x, 1)
    token = weights_token(model)
    other = tiny_model(seed=7)
    model.visual.load_state_dict(other.visual.state_dict())  # in place: version counters move
    assert weights_token(model) != token
    after = solens.second_order(model, x, 1)
    torch.testing.assert_close(after, solens.second_order(other, x, 1), rtol=0, atol=1e-12)
    assert not torch.allclose(after, before)
    with torch.no_grad():  # an in-place edit of one later head's value weights
        model.visual.transformer.resblocks[3].attn.in_proj_weight.mul_(2.0)
    torch.testing.assert_close(solens.second_order(model, x, 1),
                               solens.second_order(model, x, 1, cache=False), rtol=0, atol=0)


def test_replaced_parameter_invalidates_and_refreshes_weight_views() -> None:
    model = tiny_model()
    x = images(2)
    solens.second_order(model, x, 0)
    ref = tiny_model(seed=3)
    block = model.visual.transformer.resblocks[2]
    new = ref.visual.transformer.resblocks[2].attn.out_proj.weight.detach().clone()
    block.attn.out_proj.weight.data = new  # new storage: stale lens weight views are dropped
    got = solens.second_order(model, x, 0)
    fresh = tiny_model()
    fresh.visual.transformer.resblocks[2].attn.out_proj.weight.data = new.clone()
    torch.testing.assert_close(got, solens.second_order(fresh, x, 0, cache=False),
                               rtol=0, atol=1e-12)


def test_moving_the_model_uses_another_entry() -> None:
    model = tiny_model()
    u64 = cached_directions(model, 1)
    model.to(dtype=torch.float32)
    u32 = cached_directions(model, 1)
    assert u32.dtype == torch.float32 and u64.dtype == torch.float64
    torch.testing.assert_close(u32, u64.float(), rtol=1e-5, atol=1e-6)


def test_cache_bound_evicts(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model()
    one = directions(model, 0).numel() * 8  # float64 bytes of layer 0's u
    monkeypatch.setattr(so, "DIRECTIONS_CACHE_BYTES", one + 10)
    calls = _count_directions(monkeypatch)
    cached_directions(model, 0)
    cached_directions(model, 1)  # evicts layer 0 (least recently used)
    assert so._cache_bytes() <= one + 10
    cached_directions(model, 1)
    cached_directions(model, 0)
    assert calls == [(0, "exact"), (1, "exact"), (0, "exact")]
    monkeypatch.setattr(so, "DIRECTIONS_CACHE_BYTES", 10)  # above the bound: only the newest
    cached_directions(model, 2)
    assert so._n_entries() == 1
    cached_directions(model, 2)  # a loop over one layer still computes it once
    assert calls == [(0, "exact"), (1, "exact"), (0, "exact"), (2, "exact")]


# --- vision-only loading ----------------------------------------------------------------------
def _config() -> dict:
    return {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 3, "width": 32, "head_width": 8,
                       "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 4,
                     "layers": 2},
    }


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cfg")
    (d / f"{SMALL}.json").write_text(json.dumps(_config()))
    open_clip.add_model_config(d)
    torch.manual_seed(0)
    clip = open_clip.create_model(SMALL)
    path = d / "model.pt"
    torch.save(clip.state_dict(), path)
    return path


def test_vision_only_model_is_the_same_model(checkpoint: Path) -> None:
    full = load_model(SMALL, checkpoint=checkpoint)
    vis = load_model(SMALL, checkpoint=checkpoint, text=False)
    assert full.text is not None and vis.text is None and vis.owner is None
    assert vis.weights_sha256 == full.weights_sha256
    assert vis.identity() == full.identity()
    assert describe_preprocess(vis.preprocess) == describe_preprocess(full.preprocess)
    x = images(2, dtype=torch.float32)
    torch.testing.assert_close(vis.encode_image(x), full.encode_image(x), rtol=0, atol=0)
    with pytest.raises(solens.errors.UnsupportedModelError, match="no text encoder"):
        vis.encode_text(["a dog"])
    n_full = sum(p.numel() for p in full.owner.parameters())
    n_vis = sum(p.numel() for p in vis.visual.parameters())
    assert n_vis < n_full
    assert len(list(vis.visual.parameters())) == len(list(full.visual.parameters()))


def test_effects_command_loads_the_vision_tower_only(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from solens.models import loading

    seen: list[bool] = []
    real = loading.load_model

    def spy(*a, **kw):
        seen.append(kw.get("text", True))
        return real(*a, **kw)

    monkeypatch.setattr(loading, "load_model", spy)
    code, _, err = run_cli(["effects", "--model", SMALL, "--checkpoint", str(checkpoint),
                              "--layers", "1", "--images", "synth:balanced:6:0:32",
                              "--out", str(tmp_path / "run"), "--no-progress",
                              "--batch-size", "4"], capsys)
    assert code == 0, err
    assert seen == [False]
    full = real(SMALL, checkpoint=checkpoint)  # the same run resumes with the whole model
    run = run_effects(full, "synth:balanced:6:0:32", [1], tmp_path / "run", progress=False)
    assert run.complete and run.manifest.weights_sha256 == full.weights_sha256
    s = np.asarray(run.layer(1).s)
    fresh = run_effects(full, "synth:balanced:6:0:32", [1], tmp_path / "again",
                        batch_size=4, progress=False)
    np.testing.assert_array_equal(s, np.asarray(fresh.layer(1).s))
