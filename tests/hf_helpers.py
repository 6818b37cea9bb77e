"""Small random Hugging Face transformers CLIP checkpoints and a fake hub cache for tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer, CLIPVisionModelWithProjection


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


@torch.no_grad()
def brute_force_second_order(
    vision: CLIPVisionModelWithProjection, x: torch.Tensor, layer: int
) -> torch.Tensor:
    """phi [B, N, d] on the transformers model itself: hooks record the neurons' activations
    (fc2 inputs), the inputs of every later layer_norm1 and of post_layernorm; attention
    probabilities come from ``output_attentions``. Each neuron's write ``p_n(t) fc2.W[:, n]``
    is passed through frozen layer_norm1 (centred, divided by the recorded std), one head's
    value and output projections (no biases), mixed by that head's CLS attention row, then
    through frozen post_layernorm and ``visual_projection``; summed over later layers and heads.
    """
    vm = vision.vision_model
    layers = vm.encoder.layers
    rec: dict[str, torch.Tensor] = {}
    hooks = [layers[layer].mlp.fc2.register_forward_pre_hook(
        lambda mod, args: rec.__setitem__("post", args[0]))]
    for l2 in range(layer + 1, len(layers)):
        hooks.append(layers[l2].layer_norm1.register_forward_pre_hook(
            lambda mod, args, l2=l2: rec.__setitem__(f"ln1.{l2}", args[0])))
    hooks.append(vm.post_layernorm.register_forward_pre_hook(
        lambda mod, args: rec.__setitem__("ln_post", args[0])))
    out = vision(pixel_values=x, output_attentions=True)
    for h in hooks:
        h.remove()

    def sigma(z: torch.Tensor, eps: float) -> torch.Tensor:
        return torch.sqrt(z.var(-1, unbiased=False) + eps)

    post = rec["post"]  # [B, T, N]
    w_out = layers[layer].mlp.fc2.weight.T  # [N, D]
    centred = w_out - w_out.mean(-1, keepdim=True)
    B, N, D = post.shape[0], post.shape[2], w_out.shape[1]
    resid = torch.zeros(B, N, D, dtype=x.dtype)
    for l2 in range(layer + 1, len(layers)):
        blk = layers[l2]
        att = blk.self_attn
        H = vision.config.num_attention_heads
        dh = D // H
        s = sigma(rec[f"ln1.{l2}"], blk.layer_norm1.eps)  # [B, T]
        ln_write = blk.layer_norm1.weight * centred  # [N, D]
        A = out.attentions[l2][:, :, 0, :]  # [B, H, T]
        for h in range(H):
            rows = slice(h * dh, (h + 1) * dh)
            v = ln_write @ att.v_proj.weight[rows].T  # [N, dh]
            o = v @ att.out_proj.weight[:, rows].T  # [N, D]
            coef = torch.einsum("bt,btn->bn", A[:, h], post / s[..., None])
            resid += coef[..., None] * o
    ln_post = vm.post_layernorm
    s_post = sigma(rec["ln_post"], ln_post.eps)  # [B]
    c = resid - resid.mean(-1, keepdim=True)
    return (ln_post.weight * c / s_post[:, None, None]) @ vision.visual_projection.weight.T
