"""``load_model``: names, tags, checkpoints, QuickGELU, unsupported towers, offline errors."""

from __future__ import annotations

import hashlib
import json
import sys
import time
import types
from pathlib import Path

import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import solens
from solens.errors import (
    InputError,
    RunMismatchError,
    SolensError,
    UnknownModelError,
    UnsupportedModelError,
)
from solens.models import checkpoints, hub, loading
from solens.models.loading import load_model
from solens.models.model import Model

SMALL = "solens-test-vit-s"
SMALL_QG = "solens-test-vit-s-quickgelu"


def _config(quick_gelu: bool, width: int = 64) -> dict:
    return {
        "embed_dim": 32,
        "quick_gelu": quick_gelu,
        "vision_cfg": {
            "image_size": 32,
            "layers": 2,
            "width": width,
            "head_width": 16,
            "patch_size": 8,
            "ls_init_value": 0.1,
        },
        "text_cfg": {
            "context_length": 16,
            "vocab_size": 49408,
            "width": 32,
            "heads": 4,
            "layers": 1,
        },
    }


@pytest.fixture(scope="module", autouse=True)
def small_configs(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Register two small open_clip configs (one QuickGELU) under test names."""
    d = tmp_path_factory.mktemp("configs")
    (d / f"{SMALL}.json").write_text(json.dumps(_config(False)))
    (d / f"{SMALL_QG}.json").write_text(json.dumps(_config(True)))
    (d / "solens-test-vit-wide.json").write_text(json.dumps(_config(False, width=96)))
    open_clip.add_model_config(d)


def _random_clip(name: str = SMALL, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = open_clip.create_model(name)
    with torch.no_grad():  # make layer scales and LN params non-trivial
        for k, p in m.named_parameters():
            if p.ndim == 1 and k.startswith("visual."):
                p.add_(0.2 * torch.randn_like(p))
    return m.eval()


def _same(a: Model, clip: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        ref = clip.encode_image(x)
    torch.testing.assert_close(a.trace(x, names=[]).embedding, ref, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))


# --- names and random init --------------------------------------------------------------------
def test_random_init_and_info() -> None:
    m = solens.load_model(SMALL, "random")
    assert isinstance(m, Model)
    i = m.info
    assert (i.name, i.pretrained, i.quick_gelu, i.n_layers, i.n_heads, i.d_model) == (
        SMALL,
        "random",
        False,
        2,
        4,
        64,
    )
    assert (i.image_size, i.patch_size, i.n_tokens, i.d_embed) == (32, 8, 17, 32)
    assert i.extra["weights"] == "random"
    assert m.preprocess(Image.new("RGB", (50, 40))).shape == (3, 32, 32)
    assert m.encode_text(["a photo of a cat", "a dog"]).shape == (2, 32)
    assert not m.visual.training


def test_quick_gelu_from_config_and_override() -> None:
    assert load_model(SMALL_QG, "random").info.quick_gelu
    assert load_model(SMALL_QG, "random").info.extra["quick_gelu_from"] == "config"
    assert not load_model(SMALL_QG, "random", quick_gelu=False).info.quick_gelu
    m = load_model(SMALL, "random", quick_gelu=True)
    assert m.info.quick_gelu and m.info.extra["quick_gelu_from"] == "user"


def test_unknown_model_lists_close_matches() -> None:
    with pytest.raises(UnknownModelError, match="ViT-B-32") as e:
        load_model("ViT-B32")
    assert "\n" not in str(e.value)
    assert "list_models" not in str(e.value)  # close names in the message itself
    assert "solens-tiny" in loading.list_models() and "ViT-B-32" in loading.list_models()
    with pytest.raises(UnknownModelError, match="ViT-B-32"):
        load_model("vit-b-32")
    with pytest.raises(UnknownModelError, match="solens-tiny"):
        load_model("solens-tiyn")


def test_unknown_tag_lists_valid_tags() -> None:
    with pytest.raises(UnknownModelError, match="laion2b_s34b_b79k") as e:
        load_model("ViT-B/32", "laion2b")  # OpenAI-style name is normalised
    assert "'ViT-B-32'" in str(e.value) and "openai" in str(e.value)
    with pytest.raises(UnknownModelError, match="no pretrained tags"):
        load_model(SMALL, "openai")


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("RN50", "ModifiedResNet"),
        ("convnext_base", "timm"),
        ("coca_ViT-B-32", "attentional"),
        ("ViT-B-16-SigLIP", "timm"),
    ],
)
def test_unsupported_towers_fail_before_building(name: str, why: str) -> None:
    t = time.perf_counter()
    with pytest.raises(UnsupportedModelError, match=why) as e:
        load_model(name)
    assert "supported:" in str(e.value)
    assert time.perf_counter() - t < 1.0  # nothing was built or downloaded


def test_unsupported_built_towers() -> None:
    """The module-level check (used for hf-hub/local-dir/user models) agrees."""
    from open_clip.modified_resnet import ModifiedResNet
    from open_clip.transformer import VisionTransformer

    vits = [
        VisionTransformer(32, 8, 32, 1, 4, 4.0, pool_type="avg"),
        VisionTransformer(32, 8, 32, 1, 4, 4.0, attentional_pool=True, attn_pooler_heads=4),
    ]
    for vis in [ModifiedResNet((1, 1, 1, 1), 16, 4, 32, 8), *vits]:
        with pytest.raises(UnsupportedModelError, match="supported"):
            Model.from_open_clip(types.SimpleNamespace(visual=vis))  # type: ignore[arg-type]


def test_model_and_run_errors_are_input_errors() -> None:
    """One type for bad user input: catching InputError (or ValueError) catches them all."""
    for error in (UnknownModelError, UnsupportedModelError, RunMismatchError):
        assert issubclass(error, InputError) and issubclass(error, ValueError)
    with pytest.raises(InputError):
        load_model("ViT-B32")  # unknown
    with pytest.raises(InputError):
        load_model("RN50")  # unsupported


# --- offline behaviour ------------------------------------------------------------------------
@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*a: object, **k: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(hub.socket, "create_connection", refuse)
    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", refuse)
    monkeypatch.setattr(hub, "cached_weights", lambda cfg: None)


def test_uncached_tag_fails_offline_with_one_line(no_network: None, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UnknownModelError, match="not available offline") as e:
        load_model("ViT-B-32", "openai")
    msg = str(e.value)
    assert "\n" not in msg and "checkpoint=" in msg and "huggingface.co" in msg
    assert e.value.__cause__ is None


def test_uncached_tag_unreachable_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub, "_offline", lambda: False)
    monkeypatch.setattr(hub, "_reachable", lambda host, timeout=3.0: False)
    monkeypatch.setattr(hub, "cached_weights", lambda cfg: None)
    with pytest.raises(UnknownModelError, match="not available offline"):
        load_model("ViT-B-32", "laion2b_s34b_b79k")


def test_hf_hub_uncached_fails_offline(no_network: None) -> None:
    with pytest.raises(UnknownModelError, match="not available offline"):
        load_model("hf-hub:laion/not-a-cached-repo")


def test_hf_text_tower_uncached_fails_fast(no_network: None) -> None:
    with pytest.raises(UnknownModelError, match="not available offline"):
        load_model("xlm-roberta-base-ViT-B-32", "random")


def test_tag_served_from_cache(tmp_path: Path, x: torch.Tensor, monkeypatch) -> None:
    """A tag whose file is in the cache: weights, QuickGELU and preprocessing follow the tag."""
    clip = _random_clip(SMALL_QG, seed=5)
    f = tmp_path / "cached.bin"
    torch.save(clip.state_dict(), f)
    tag = {
        "file": str(f),
        "quick_gelu": True,
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "interpolation": "bilinear",
        "resize_mode": "squash",
    }
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, SMALL, {"openai": tag})
    m = load_model(SMALL, "OpenAI")
    assert m.info.pretrained == "openai" and m.info.quick_gelu
    assert m.info.extra["quick_gelu_from"] == "tag" and m.info.extra["file"] == str(f)
    norm = next(t for t in m.preprocess.transforms if type(t).__name__ == "Normalize")
    assert tuple(norm.mean) == (0.5, 0.5, 0.5)
    _same(m, clip, x)
    with pytest.warns(UserWarning, match="overrides"):
        assert not load_model(SMALL, "openai", quick_gelu=False).info.quick_gelu


# --- local checkpoints ------------------------------------------------------------------------
def _save(kind: str, clip: torch.nn.Module, path: Path) -> Path:
    sd = clip.state_dict()
    if kind == "pt":
        torch.save(sd, path / "model.pt")
        return path / "model.pt"
    if kind == "wrapped":
        torch.save(
            {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}},
            path / "epoch_3.pt",
        )
        return path / "epoch_3.pt"
    if kind == "safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, path / "model.safetensors")
        return path / "model.safetensors"
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["pt", "wrapped", "safetensors"])
def test_checkpoint_round_trip(kind: str, tmp_path: Path, x: torch.Tensor) -> None:
    clip = _random_clip(seed=1)
    path = _save(kind, clip, tmp_path)
    m = load_model(SMALL, checkpoint=path)
    _same(m, clip, x)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert m.info.pretrained == f"checkpoint:{sha[:16]}"
    assert m.info.extra["sha256"] == sha and m.info.extra["checkpoint"] == str(path.resolve())
    assert not m.info.quick_gelu and m.info.extra["quick_gelu_from"] == "config"
    with torch.no_grad():
        want = clip.encode_text(open_clip.get_tokenizer(SMALL)(["a red square"]))
    torch.testing.assert_close(m.encode_text(["a red square"]), want, rtol=0, atol=1e-6)
    # open_clip's spelling, pretrained=PATH, is accepted too
    assert load_model(SMALL, str(path)).info.pretrained == m.info.pretrained


def test_torchscript_archive_round_trip(tmp_path: Path, x: torch.Tensor) -> None:
    """OpenAI releases are TorchScript archives; they load and default to QuickGELU."""
    clip = _random_clip(SMALL_QG, seed=2)
    path = tmp_path / "ViT-tiny.pt"
    with pytest.warns(FutureWarning):  # torch.jit.script is deprecated, still what OpenAI used
        torch.jit.script(clip).save(str(path))
    assert checkpoints.is_torchscript_archive(path)
    m = load_model(SMALL, checkpoint=path)
    assert m.info.quick_gelu and m.info.extra["quick_gelu_from"] == "openai-torchscript"
    assert m.info.extra["format"] == "torchscript"
    _same(m, clip, x)


def test_vision_only_checkpoint(tmp_path: Path, x: torch.Tensor) -> None:
    clip = _random_clip(seed=4)
    torch.save(clip.visual.state_dict(), tmp_path / "visual.pt")
    m = load_model(SMALL, checkpoint=tmp_path / "visual.pt")
    assert m.text is None
    _same(m, clip, x)


def test_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError, match="not found"):
        load_model(SMALL, checkpoint=tmp_path / "missing.pt")
    with pytest.raises(UnknownModelError, match="not found"):
        load_model(SMALL, str(tmp_path / "missing.safetensors"))
    torch.save(_random_clip("solens-test-vit-wide").state_dict(), tmp_path / "wide.pt")
    with pytest.raises(UnknownModelError, match="does not fit") as e:
        load_model(SMALL, checkpoint=tmp_path / "wide.pt")
    assert "\n" not in str(e.value)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UnknownModelError, match="cannot read checkpoint"):
        load_model(SMALL, checkpoint=tmp_path / "junk.pt")
    with pytest.raises(UnknownModelError, match="not both"):
        load_model("ViT-B-32", "openai", checkpoint=tmp_path / "wide.pt")


# --- the bundled model ------------------------------------------------------------------------
def test_tiny_is_found_through_its_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    from solens.models import names

    assert names.bundled_models()["solens-tiny"].value == "solens.tiny.model:load_tiny"
    monkeypatch.setattr(names, "bundled_models", lambda: {})
    with pytest.raises(SolensError, match=r"solens-tiny.*not registered"):
        load_model("solens-tiny")


def test_tiny_is_loaded_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    sentinel = load_model(SMALL, "random")
    calls: list[str] = []
    fake = types.ModuleType("solens.tiny.model")

    def load_tiny(device: str = "cpu") -> Model:
        calls.append(str(device))
        return sentinel

    fake.load_tiny = load_tiny  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "solens.tiny.model", fake)
    assert load_model("solens-tiny") is sentinel and calls == ["cpu"]
    with pytest.raises(UnknownModelError, match="pretrained"):
        load_model("solens-tiny", "laion")
    with pytest.raises(UnknownModelError, match="checkpoint"):
        load_model("solens-tiny", checkpoint="x.pt")


# --- local-dir: and hf-hub: (from the hub cache) ----------------------------------------------
def _open_clip_folder(folder: Path, clip: torch.nn.Module, with_weights: bool = True) -> Path:
    folder.mkdir(parents=True)
    cfg = {"model_cfg": _config(True), "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    if with_weights:
        save_file(
            {k: v.contiguous() for k, v in clip.state_dict().items()},
            folder / "open_clip_model.safetensors",
        )
    return folder


def test_local_dir(tmp_path: Path, x: torch.Tensor) -> None:
    clip = _random_clip(SMALL_QG, seed=6)
    folder = _open_clip_folder(tmp_path / "m", clip)
    m = load_model(f"local-dir:{folder}")
    assert m.info.quick_gelu and m.info.pretrained.startswith("checkpoint:")
    assert m.info.extra["sha256"] == checkpoints.file_sha256(folder / "open_clip_model.safetensors")
    _same(m, clip, x)
    empty = _open_clip_folder(tmp_path / "empty", clip, with_weights=False)
    with pytest.raises(UnknownModelError, match="no weights file"):
        load_model(f"local-dir:{empty}")
    with pytest.raises(UnknownModelError, match=r"open_clip_config\.json"):
        load_model(f"local-dir:{tmp_path / 'nowhere'}")
    bad = _open_clip_folder(tmp_path / "bad", clip, with_weights=False)
    (bad / "open_clip_config.json").write_text("{not json")
    with pytest.raises(UnknownModelError, match=r"cannot read .*open_clip_config\.json") as e:
        load_model(f"local-dir:{bad}")
    assert "\n" not in str(e.value)


def test_hf_hub_from_cache(tmp_path: Path, x: torch.Tensor, monkeypatch, no_network) -> None:
    from huggingface_hub import constants

    clip = _random_clip(SMALL_QG, seed=7)
    repo = tmp_path / "models--someone--tiny-clip"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    _open_clip_folder(repo / "snapshots" / ("0" * 40), clip)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    m = load_model("hf-hub:someone/tiny-clip")
    assert m.info.name == "hf-hub:someone/tiny-clip" and m.info.extra["weights"] == "hf-hub"
    _same(m, clip, x)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_is_one_line_error() -> None:
    with pytest.raises(InputError, match="device 'cuda'"):
        load_model(SMALL, "random", device="cuda")


# --- identity: run manifests and text-cache keys must not change ------------------------------
def _old_state_sha256(module: torch.nn.Module, skip: str | None = None) -> str:
    """The recipe of store.compute.weights_sha256 / describe.pools.text_fingerprint before
    they moved onto ``Model`` (copied here on purpose: the digests are on disk)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        if skip is not None and name.startswith(skip):
            continue
        a = t.detach().to("cpu", torch.float32).contiguous().numpy()
        h.update(f"{name}{tuple(a.shape)}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _old_run_identity(model: Model) -> dict:
    info = model.info.to_dict()
    keys = ("checkpoint", "file", "location")
    info["extra"] = {k: v for k, v in info.get("extra", {}).items() if k not in keys}
    return info


def _old_text_identity(model: Model) -> dict:
    module = model.owner if model.owner is not None else model.text
    sha = _old_state_sha256(module, "visual.") if isinstance(module, torch.nn.Module) else None
    i = model.info
    return {
        "name": i.name,
        "pretrained": i.pretrained,
        "quick_gelu": bool(i.quick_gelu),
        "source": i.source,
        "text_weights_sha256": sha,
    }


def _deterministic_clip(name: str = SMALL) -> torch.nn.Module:
    """Every parameter set without a random generator, to exactly representable values."""
    m = open_clip.create_model(name)
    with torch.no_grad():
        for i, (_, p) in enumerate(sorted(m.named_parameters())):
            k = torch.arange(p.numel(), dtype=torch.float32) % 13 - 6
            p.copy_((k / 8 + (i % 16) / 16).reshape(p.shape))
    return m.eval()


def test_identity_equals_the_old_recipes(tmp_path: Path) -> None:
    clip = _random_clip(seed=8)
    torch.save(clip.state_dict(), tmp_path / "full.pt")
    torch.save(clip.visual.state_dict(), tmp_path / "visual.pt")
    full = load_model(SMALL, checkpoint=tmp_path / "full.pt")
    vision_only = load_model(SMALL, checkpoint=tmp_path / "visual.pt")
    bare = Model(clip.visual, None, None, full.info)  # no owner, no text encoder
    for m in (full, vision_only, bare, load_model(SMALL_QG, "random")):
        assert m.weights_sha256 == _old_state_sha256(m.visual)
        assert m.identity() == _old_run_identity(m)
        assert m.text_identity() == _old_text_identity(m)
    assert "checkpoint" in full.info.extra and "checkpoint" not in full.identity()["extra"]
    assert bare.text_identity()["text_weights_sha256"] is None


# computed by solens at 522ca3a (store.compute.weights_sha256, describe.pools.text_fingerprint,
# describe.pools.cache_key(model_identity(m), pool)) on _deterministic_clip()
PIN_VISION = "c58d1a28b5ce6244832e139835dd9827dc46ec07e3d49c199addf0f8f489d562"
PIN_TEXT = "cb8e570e5fad767355e4a8b4b1694c35f950b8e11153e24c804049e6a15c0a01"


def test_identity_digests_are_pinned() -> None:
    """Literal digests: a change here orphans existing run folders and text-cache entries."""
    from solens.describe.pools import cache_key, make_pool

    clip = _deterministic_clip()
    m = Model.from_open_clip(clip, name=SMALL)
    assert m.weights_sha256 == _old_state_sha256(clip.visual)
    assert m.weights_sha256 == PIN_VISION
    text = m.text_identity()
    assert text["text_weights_sha256"] == _old_state_sha256(clip, "visual.")
    assert text["text_weights_sha256"] == PIN_TEXT
    assert cache_key(text, make_pool("p", ["a cat", "a dog"])) == "cf9f017a99a592ad119cc907b55e6693"


def test_weights_sha256_is_memoised_until_to() -> None:
    m = Model.from_open_clip(_deterministic_clip(), name=SMALL)
    before = m.weights_sha256
    with torch.no_grad():
        m.visual.proj.add_(1.0)
    assert m.weights_sha256 == before  # memoised: in-place edits are not seen
    after = m.to("cpu").weights_sha256
    assert after != before and after == _old_state_sha256(m.visual)
    assert m.to(dtype=torch.float64).weights_sha256 == after  # float32 values unchanged
