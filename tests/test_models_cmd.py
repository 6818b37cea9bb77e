"""``solens models`` and ``solens.models.support``: every open_clip architecture is either
supported (and loads with random weights) or refused with its family (and load_model refuses
it); cached tags and hub-cache repos are found in a fake hub cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import open_clip
import pytest

from solens.errors import UnsupportedModelError
from solens.models import names, support
from solens.models.loading import load_model

from .helpers import run_cli
from .hf_helpers import _clip, _fake_cache, _save, _tokenizer, use_hub_cache


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return use_hub_cache(tmp_path, monkeypatch)


@pytest.fixture
def filled_cache(hub_cache: Path, tmp_path: Path) -> Path:
    """A hub cache with: a transformers CLIP, a SigLIP config, an open_clip repo, and the
    weights of the ViT-B-32 tag laion2b_s34b_b79k (an open_clip hf_hub tag)."""
    clip = _save(tmp_path / "clip", _clip(seed=1), _tokenizer())
    _fake_cache(hub_cache, "someone/tiny-hf-clip", lambda d: shutil.copytree(clip, d))

    def siglip(d: Path) -> None:
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps({"model_type": "siglip"}))

    _fake_cache(hub_cache, "google/siglip-tiny", siglip)

    def open_clip_repo(d: Path) -> None:
        d.mkdir(parents=True)
        cfg = {"model_cfg": open_clip.get_model_config("ViT-B-32")}
        (d / "open_clip_config.json").write_text(json.dumps(cfg))

    _fake_cache(hub_cache, "someone/open-clip-b32", open_clip_repo)
    hub = open_clip.pretrained.get_pretrained_cfg("ViT-B-32", "laion2b_s34b_b79k")["hf_hub"]
    repo, filename = hub.rstrip("/"), "open_clip_model.safetensors"

    def weights(d: Path) -> None:
        d.mkdir(parents=True)
        (d / filename).write_bytes(b"weights")

    _fake_cache(hub_cache, repo, weights)
    return hub_cache


def test_every_architecture_is_supported_or_refused(filled_cache: Path) -> None:
    inv = support.inventory()
    supported = {a.name for a in inv.architectures}
    refused = {r.name: r for r in inv.refused}
    assert supported | set(refused) == set(open_clip.list_models())
    assert not supported & set(refused)
    assert {"ViT-B-32", "ViT-L-14", "ViT-B-16-quickgelu"} <= supported
    families = {
        "ViT-B-16-SigLIP": names.ATTENTIONAL,
        "coca_ViT-B-32": names.ATTENTIONAL,
        "ViT-L-14-CLIPA": names.MEAN_POOLING,
        "convnext_base": names.CONVNEXT,
        "RN50": names.RESNET,
        "EVA02-B-16": names.TIMM,
    }
    for name, family in families.items():
        assert refused[name].family == family, name
        with pytest.raises(UnsupportedModelError, match="not supported"):
            load_model(name)
    assert set(families.values()) == set(names.REFUSED_FAMILIES)
    b32 = next(a for a in inv.architectures if a.name == "ViT-B-32")
    assert b32.cached == ["laion2b_s34b_b79k"] and "openai" in b32.tags
    assert inv.bundled == ["solens-tiny"]
    repos = {r.name: r for r in inv.cached_repos}
    assert repos["hf:someone/tiny-hf-clip"].reason is None
    assert "SigLIP" in (repos["hf:google/siglip-tiny"].reason or "")
    assert repos["hf-hub:someone/open-clip-b32"].kind == "open_clip"
    assert repos["hf-hub:someone/open-clip-b32"].reason is None


def test_supported_architecture_builds_and_is_traced() -> None:
    """What the inventory calls supported, load_model builds (smallest ViT, random weights)."""
    m = load_model("ViT-S-32", "random")
    assert m.info.n_layers == 12


def test_models_command(filled_cache: Path, capsys) -> None:
    code, out, err = run_cli(["models"], capsys)
    assert code == 0, err
    assert "support matrix" in out and "SigLIP" in out and "refused" in out
    assert "laion2b_s34b_b79k (cached)" in out
    assert "hf:someone/tiny-hf-clip" in out and "solens-tiny" in out
    code, out, err = run_cli(["models", "--cached", "--json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert [f["status"] for f in doc["families"]].count("refused") == 5
    assert any(a["name"] == "ViT-B-32" for a in doc["architectures"])
    code, out, _ = run_cli(["models", "--cached"], capsys)
    assert "ViT-B-32 " in out and "ViT-L-14 " not in out
