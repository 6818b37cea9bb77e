"""Hugging Face transformers CLIP checkpoints: conversion parity with transformers (image and
text features, second-order effects by brute force on the transformers model), the hub cache,
the command line end to end, and one-line errors. Models are random ``CLIPConfig``s saved
with ``save_pretrained``; the tokenizer is built from open_clip's bundled BPE vocabulary."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import CLIPModel, CLIPTokenizer, CLIPVisionModelWithProjection

from solens.errors import UnknownModelError, UnsupportedModelError
from solens.lens.second_order import second_order
from solens.models import hf
from solens.models.checkpoints import file_sha256
from solens.models.loading import load_model
from solens.store import Run

from .helpers import run_cli
from .hf_helpers import (
    _clip,
    _fake_cache,
    _save,
    _tokenizer,
    brute_force_second_order,
    use_hub_cache,
)
from .store_helpers import image_folder

TEXTS = ["a photo of a cat", "a red square on a blue ground", "dog"]
REPO = "someone/tiny-hf-clip"


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return use_hub_cache(tmp_path, monkeypatch)


@pytest.fixture(scope="module")
def tokenizer() -> CLIPTokenizer:
    return _tokenizer()


@pytest.fixture(scope="module")
def qg_folder(tmp_path_factory, tokenizer) -> tuple[CLIPModel, Path]:
    model = _clip("quick_gelu", seed=1)
    return model, _save(tmp_path_factory.mktemp("hf") / "clip-qg", model, tokenizer)


def _pixels(n: int = 3, seed: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _image_features(model: CLIPModel, x: torch.Tensor) -> torch.Tensor:
    out = model.get_image_features(pixel_values=x)
    return out if isinstance(out, torch.Tensor) else out.pooler_output


# --- parity ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("act", "eps"), [("quick_gelu", 1e-5), ("gelu", 1e-6)])
def test_encode_image_equals_get_image_features(act, eps, tmp_path, tokenizer) -> None:
    clip = _clip(act, eps, seed=3)
    folder = _save(tmp_path / "m", clip, tokenizer)
    m = load_model(checkpoint=folder)
    assert m.info.quick_gelu == (act == "quick_gelu")
    assert m.visual.ln_pre.eps == eps and m.visual.transformer.resblocks[0].ln_1.eps == eps
    x = _pixels()
    with torch.no_grad():
        want = _image_features(clip, x)
    got = m.encode_image(x)
    assert (got - want).abs().max() <= 1e-5
    assert (m.trace(x, names=[]).embedding - want).abs().max() <= 1e-5


def test_text_features_equal(qg_folder, tokenizer) -> None:
    clip, folder = qg_folder
    m = load_model(f"hf:{folder}")
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = clip.get_text_features(**batch)
    want = out if isinstance(out, torch.Tensor) else out.pooler_output
    got = m.encode_text(TEXTS)
    assert got.shape == (3, 16)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert m.encode_text([]).shape == (0, 16)


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_second_order_equals_brute_force_on_transformers(act, tmp_path, tokenizer) -> None:
    clip = _clip(act, seed=4)
    folder = _save(tmp_path / "m", clip, tokenizer)
    m = load_model(checkpoint=folder).to(dtype=torch.float64)
    vision = CLIPVisionModelWithProjection.from_pretrained(
        folder, attn_implementation="eager", projection_dim=16
    ).eval().double()
    x = _pixels(2, seed=5).double()
    for layer in (0, 1):
        want = brute_force_second_order(vision, x, layer)
        got = second_order(m, x, layer)
        assert got.shape == want.shape == (2, 96, 16)
        assert ((got - want).abs().max() / want.abs().max()).item() <= 1e-4
    assert want.abs().max() > 1e-3  # not vanishing


# --- what the manifest records -----------------------------------------------------------------
def test_info_fields(qg_folder) -> None:
    _, folder = qg_folder
    m = load_model(checkpoint=str(folder))
    i = m.info
    sha = file_sha256(folder / "model.safetensors")
    assert (i.name, i.source, i.quick_gelu, i.pretrained) == (
        "hf:clip-qg", "transformers", True, f"checkpoint:{sha[:16]}"
    )
    assert (i.n_layers, i.n_heads, i.d_model, i.d_mlp, i.d_embed, i.n_tokens) == (
        3, 4, 32, 96, 16, 17
    )
    e = i.extra
    assert e["sha256"] == sha and e["weights"] == "hf" and e["repo"] is None
    assert e["quick_gelu_from"] == "config" and e["hidden_act"] == "quick_gelu"
    assert "location" not in m.identity()["extra"]
    assert len(m.weights_sha256) == 64 and m.text_identity()["text_weights_sha256"]
    # preprocessing follows preprocessor_config.json
    norm = next(t for t in m.preprocess.transforms if type(t).__name__ == "Normalize")
    assert tuple(norm.mean) == (0.5, 0.4, 0.3)
    with pytest.warns(UserWarning, match="overrides"):
        over = load_model(f"hf:{folder}", quick_gelu=False)
    assert not over.info.quick_gelu and over.info.extra["quick_gelu_from"] == "user"


def test_vision_only_load_equals_the_full_model(qg_folder) -> None:
    """``text=False`` on a transformers checkpoint: no text tower, the same identity,
    vision weights hash and image features as the full model."""
    _, folder = qg_folder
    full = load_model(f"hf:{folder}")
    vis = load_model(f"hf:{folder}", text=False)
    assert vis.text is None and full.text is not None
    assert vis.identity() == full.identity() and vis.weights_sha256 == full.weights_sha256
    x = _pixels()
    torch.testing.assert_close(vis.encode_image(x), full.encode_image(x), rtol=0, atol=0)


def test_convert_state_dict_layout(qg_folder) -> None:
    clip, _ = qg_folder
    sd = clip.state_dict()
    out = hf.convert_vision_state_dict(sd, 3)
    p = "vision_model.encoder.layers.2.self_attn."
    w = out["transformer.resblocks.2.attn.in_proj_weight"]
    assert torch.equal(w[:32], sd[p + "q_proj.weight"])
    assert torch.equal(w[64:], sd[p + "v_proj.weight"])
    assert torch.equal(out["proj"], sd["visual_projection.weight"].T)
    assert torch.equal(out["ln_pre.weight"], sd["vision_model.pre_layrnorm.weight"])
    assert torch.equal(out["ln_post.bias"], sd["vision_model.post_layernorm.bias"])


def test_sharded_and_vision_only(tmp_path, tokenizer) -> None:
    clip = _clip(seed=6)
    x = _pixels(2)
    with torch.no_grad():
        want = _image_features(clip, x)
    sharded = _save(tmp_path / "sharded", clip, tokenizer, max_shard_size="40KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    m = load_model(checkpoint=sharded)
    assert (m.encode_image(x) - want).abs().max() <= 1e-5
    assert len(hf.weights_files(sharded)) > 1
    vcfg = clip.config.vision_config
    vcfg.projection_dim = 16
    vis = CLIPVisionModelWithProjection(vcfg).eval()
    vis.load_state_dict(
        {k: v for k, v in clip.state_dict().items() if k.startswith(("vision_model.", "visual_"))}
    )
    only = _save(tmp_path / "vision", vis, None)  # no text tower: no tokenizer needed
    mv = load_model(checkpoint=only)
    assert mv.text is None and (mv.encode_image(x) - want).abs().max() <= 1e-5


# --- the hub cache ----------------------------------------------------------------------------
def test_model_id_from_cache(hub_cache, qg_folder) -> None:
    clip, folder = qg_folder
    snap = _fake_cache(hub_cache, REPO, lambda d: shutil.copytree(folder, d))
    m = load_model(f"hf:{REPO}")
    assert m.info.name == f"hf:{REPO}" and m.info.extra["repo"] == REPO
    assert m.info.extra["location"] == str(snap)
    x = _pixels(2)
    with torch.no_grad():
        assert (m.encode_image(x) - _image_features(clip, x)).abs().max() <= 1e-5


# --- bad input ---------------------------------------------------------------------------------
def _siglip(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "siglip"}))


def _bert(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))


def _no_tokenizer(folder: Path) -> None:
    _save(folder, _clip(seed=7), None)


def _no_weights(folder: Path) -> None:
    _save(folder, _clip(seed=7), _tokenizer())
    (folder / "model.safetensors").unlink()


def _open_clip_dir(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "open_clip_config.json").write_text("{}")


BAD = [
    (lambda f: f.mkdir(parents=True), "not a Hugging Face checkpoint folder: no config.json"),
    (_open_clip_dir, "local-dir:"),
    (_siglip, "SigLIP"),
    (_bert, "model_type 'bert': not a CLIP model"),
    (_no_tokenizer, "no tokenizer files"),
    (_no_weights, "no weights file"),
]


@pytest.mark.parametrize(("build", "message"), BAD)
def test_bad_folders(build, message, tmp_path) -> None:
    build(tmp_path / "bad")
    with pytest.raises((UnknownModelError, UnsupportedModelError), match=message) as e:
        load_model(checkpoint=tmp_path / "bad")
    msg = str(e.value)
    assert "\n" not in msg
    if message not in ("local-dir:",):
        assert "supported: transformers CLIP" in msg


def test_id_not_in_cache(hub_cache) -> None:
    with pytest.raises(UnknownModelError, match="not in the local Hugging Face cache") as e:
        load_model("hf:openai/clip-vit-base-patch32")
    assert "hf download openai/clip-vit-base-patch32" in str(e.value)
    assert "\n" not in str(e.value)


def test_download_only_when_allowed(hub_cache, qg_folder, monkeypatch) -> None:
    """allow_download=True fetches the repo's config, weights and tokenizer files with
    huggingface_hub (stubbed here: it puts the snapshot in the cache); without it, nothing."""
    import huggingface_hub

    _, folder = qg_folder
    calls: list[tuple[str, list[str]]] = []

    def fake_download(repo: str, allow_patterns: list[str], cache_dir: str) -> str:
        calls.append((repo, allow_patterns))
        return str(_fake_cache(Path(cache_dir), repo, lambda d: shutil.copytree(folder, d)))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    with pytest.raises(UnknownModelError, match="not in the local Hugging Face cache"):
        load_model(f"hf:{REPO}")
    assert calls == []
    m = load_model(f"hf:{REPO}", allow_download=True)
    assert m.info.extra["repo"] == REPO and len(calls) == 1
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(calls[0][1])
    load_model(f"hf:{REPO}")  # now served from the cache
    assert len(calls) == 1
    # the snapshot folder given as a folder: named after its repo, loaded from the folder
    snap = load_model(checkpoint=m.info.extra["location"])
    assert snap.info.name == f"hf:{REPO}" and snap.info.extra["repo"] is None


def test_open_clip_repo_given_as_hf(hub_cache) -> None:
    def open_clip_repo(d: Path) -> None:
        d.mkdir(parents=True)
        (d / "open_clip_config.json").write_text("{}")

    _fake_cache(hub_cache, "someone/open-clip", open_clip_repo)
    with pytest.raises(UnknownModelError, match="--model hf-hub:someone/open-clip"):
        load_model("hf:someone/open-clip")


def test_names_that_carry_weights(qg_folder) -> None:
    _, folder = qg_folder
    with pytest.raises(UnknownModelError, match="drop --pretrained"):
        load_model(f"hf:{folder}", "openai")
    with pytest.raises(UnknownModelError, match="is a folder"):
        load_model("ViT-B-32", checkpoint=folder)
    with pytest.raises(UnknownModelError, match="needs --checkpoint FOLDER"):
        load_model("hf")
    with pytest.raises(UnknownModelError, match="give a model name"):
        load_model()


# --- the command line, end to end --------------------------------------------------------------
def test_cli_effects_and_describe(hub_cache, qg_folder, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("SOLENS_CACHE", str(tmp_path / "text-cache"))
    _, folder = qg_folder
    _fake_cache(hub_cache, REPO, lambda d: shutil.copytree(folder, d))
    images = image_folder(tmp_path / "images", n=10, extras=False)
    run = tmp_path / "run"
    code, out, err = run_cli(
        ["effects", "--model", f"hf:{REPO}", "--layers", "0", "1", "--images", str(images),
         "--out", str(run), "--batch-size", "4", "--device", "cpu", "--no-progress"], capsys
    )
    assert code == 0, err
    assert f"{run}: 10 images" in out
    r = Run.open(run)
    assert r.model["name"] == f"hf:{REPO}" and r.model["source"] == "transformers"
    assert r.model["quick_gelu"] and r.n_images == 10
    assert r.model["pretrained"] == f"checkpoint:{file_sha256(folder / 'model.safetensors')[:16]}"
    pool = tmp_path / "words.txt"
    pool.write_text("\n".join(["dog", "cat", "ship", "car", "red", "blue", "tree", "sky",
                               "sea", "road", "bird", "fish"]) + "\n")
    code, _, err = run_cli(
        ["describe", str(run), "--pool", str(pool), "--terms", "3", "--k", "3", "--layers", "0",
         "--no-progress"], capsys
    )
    assert code == 0, err
    doc = json.loads((run / "descriptions" / "words-layer-00.json").read_text())
    assert len(doc["neurons"]) == 96


def test_cli_folder_with_checkpoint_option(qg_folder, tmp_path, capsys) -> None:
    _, folder = qg_folder
    images = image_folder(tmp_path / "images", n=4, extras=False)
    code, _, err = run_cli(
        ["effects", "--model", "hf", "--checkpoint", str(folder), "--layers", "1",
         "--images", str(images), "--out", str(tmp_path / "run"), "--device", "cpu",
         "--no-progress"], capsys
    )
    assert code == 0, err
    assert Run.open(tmp_path / "run").model["name"] == "hf:clip-qg"
    assert Run.open(tmp_path / "run").load_model().info.extra["sha256"] == file_sha256(
        folder / "model.safetensors")


@pytest.mark.parametrize(("build", "message"), BAD)
def test_cli_bad_folders_exit_2(build, message, tmp_path, capsys) -> None:
    build(tmp_path / "bad")
    images = image_folder(tmp_path / "images", n=2, extras=False)
    capsys.readouterr()  # save_pretrained's progress bars
    code, _, err = run_cli(
        ["effects", "--model", f"hf:{tmp_path / 'bad'}", "--layers", "0", "--images",
         str(images), "--out", str(tmp_path / "run"), "--no-progress"], capsys
    )
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("solens: error:")
    assert message in lines[0]


def test_cli_id_not_in_cache_exit_2(hub_cache, tmp_path, capsys) -> None:
    images = image_folder(tmp_path / "images", n=2, extras=False)
    code, _, err = run_cli(
        ["effects", "--model", "hf:openai/clip-vit-base-patch32", "--layers", "0", "--images",
         str(images), "--out", str(tmp_path / "run"), "--no-progress"], capsys
    )
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "not in the local Hugging Face cache" in lines[0]


def test_cli_folder_given_as_model_name(qg_folder, tmp_path, capsys) -> None:
    """A bare folder as --model: the fast name check says how to pass it."""
    _, folder = qg_folder
    images = image_folder(tmp_path / "images", n=2, extras=False)
    code, _, err = run_cli(
        ["effects", "--model", str(folder), "--layers", "0", "--images", str(images),
         "--out", str(tmp_path / "run")], capsys
    )
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and f"--model hf:{folder}" in lines[0]


def test_legacy_config_keys(tmp_path, tokenizer) -> None:
    """Configs as the OpenAI repos on the hub have them (eos_token_id 2, *_config_dict null,
    torch_dtype): read as transformers reads them, features equal CLIPModel.from_pretrained."""
    folder = _save(tmp_path / "legacy", _clip(seed=9), tokenizer)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(text_config_dict=None, vision_config_dict=None, transformers_version=None,
               torch_dtype="float32", _name_or_path="openai/clip-vit-base-patch32")
    cfg["text_config"].update(bos_token_id=0, eos_token_id=2, pad_token_id=1)
    (folder / "config.json").write_text(json.dumps(cfg))
    m = load_model(checkpoint=folder)
    ref = CLIPModel.from_pretrained(folder).eval()
    x = _pixels(2)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        text = ref.get_text_features(**batch)
        text = text if isinstance(text, torch.Tensor) else text.pooler_output
        image = _image_features(ref, x)
    torch.testing.assert_close(m.encode_text(TEXTS), text, rtol=0, atol=1e-6)
    assert (m.encode_image(x) - image).abs().max() <= 1e-5
