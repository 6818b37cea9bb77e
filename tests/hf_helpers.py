"""Small random Hugging Face transformers CLIP checkpoints and a fake hub cache for tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer


def _tokenizer() -> CLIPTokenizer:
    """A CLIPTokenizer with OpenAI CLIP's BPE vocabulary (the copy bundled in open_clip)."""
    from open_clip.tokenizer import SimpleTokenizer

    st = SimpleTokenizer()
    names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {names.get(k, k): v for k, v in st.encoder.items()}
    merges = [tuple(m) for m in sorted(st.bpe_ranks, key=st.bpe_ranks.__getitem__)]
    return CLIPTokenizer(vocab=vocab, merges=merges)


def _config(act: str = "quick_gelu", eps: float = 1e-5, layers: int = 3) -> CLIPConfig:
    return CLIPConfig(
        text_config={
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 4, "vocab_size": 49408, "max_position_embeddings": 16,
            "bos_token_id": 49406, "eos_token_id": 49407,
        },
        vision_config={
            "hidden_size": 32, "intermediate_size": 96, "num_hidden_layers": layers,
            "num_attention_heads": 4, "image_size": 32, "patch_size": 8, "hidden_act": act,
            "layer_norm_eps": eps,
        },
        projection_dim=16,
    )


def _clip(act: str = "quick_gelu", eps: float = 1e-5, seed: int = 0) -> CLIPModel:
    """A random transformers CLIP whose LayerNorm and bias parameters are non-trivial."""
    torch.manual_seed(seed)
    model = CLIPModel(_config(act, eps)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and name.startswith("vision_model."):
                base = 1.0 if "norm" in name and name.endswith("weight") else 0.0
                p.copy_(base + 0.3 * torch.randn_like(p))
            elif p.ndim == 2 and ("visual_projection" in name or "text_projection" in name):
                p.normal_(0, 0.2)
    return model


def _save(folder: Path, model: torch.nn.Module, tok: CLIPTokenizer | None, **kw) -> Path:
    model.save_pretrained(folder, **kw)
    if tok is not None:
        tok.save_pretrained(folder)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    (folder / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": mean, "image_std": std, "crop_size": 32})
    )
    return folder


def _fake_cache(cache: Path, repo: str, build) -> Path:
    """The Hugging Face hub cache layout (models--ORG--NAME/refs/main, snapshots/REV/) with
    the snapshot written by ``build(folder)``."""
    rev = "0123456789abcdef0123456789abcdef01234567"
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(rev)
    build(root / "snapshots" / rev)
    return root / "snapshots" / rev


def use_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face hub cache in ``tmp_path/hub``, used for the test's duration."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache
