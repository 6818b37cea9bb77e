"""Hugging Face ``transformers`` CLIP checkpoints: ``hf:ORG/NAME`` (from the local hub cache)
and checkpoint folders (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin`` +
tokenizer files).

The vision tower is converted into the open_clip ``VisionTransformer`` that the lens traces
(``convert_vision_state_dict``: q/k/v projections stacked into ``in_proj``, pre-LN names,
``pre_layrnorm`` -> ``ln_pre``, ``post_layernorm`` -> ``ln_post``, the bias-free
``visual_projection`` transposed into ``proj``; the activation follows
``vision_config.hidden_act``: ``quick_gelu`` for OpenAI's weights). The text side runs
through transformers' own ``CLIPTextModelWithProjection`` and the checkpoint's tokenizer
(``HFTextEncoder``).

A model id is looked up in the local Hugging Face cache only; it is downloaded only when
the caller allows it (``allow_download=True``). transformers and huggingface_hub are
imported inside the functions that need them: they are heavy.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from solens.errors import UnknownModelError, UnsupportedModelError
from solens.models.catalog import HF_NAME, HF_PREFIX
from solens.models.checkpoints import _first_line, file_sha256
from solens.models.model import Model, describe_visual

HF_SUPPORTED = (
    "transformers CLIP checkpoints (config.json with model_type 'clip' or 'clip_vision_model', "
    "model.safetensors or pytorch_model.bin, tokenizer files) whose vision tower is a "
    "CLS-pooled ViT with a projection"
)
"""What a Hugging Face checkpoint must be, for messages."""

CONFIG_NAME = "config.json"
WEIGHTS_NAMES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
"""Weight files of a transformers checkpoint, in the order they are preferred."""
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                   "special_tokens_map.json")
PREPROCESSOR_NAME = "preprocessor_config.json"
DOWNLOAD_PATTERNS = [CONFIG_NAME, PREPROCESSOR_NAME, *WEIGHTS_NAMES, *TOKENIZER_FILES,
                     "model-*.safetensors", "pytorch_model-*.bin"]

# model types of transformers configs that are not CLIP, with the reason the lens refuses them
_REFUSED_TYPES = {
    "siglip": "a SigLIP model: its vision tower pools with an attention head (attentional "
    "pooling), which the lens does not trace",
    "siglip2": "a SigLIP 2 model: its vision tower pools with an attention head (attentional "
    "pooling), which the lens does not trace",
    "siglip_vision_model": "a SigLIP vision tower: it pools with an attention head "
    "(attentional pooling), which the lens does not trace",
    "clipseg": "a CLIPSeg model (a segmentation decoder on CLIP); load the CLIP it was built on",
    "x_clip": "an X-CLIP video model",
    "chinese_clip": "a Chinese-CLIP model (BERT text tower, different vision module names)",
    "altclip": "an AltCLIP model (XLM-R text tower)",
    "owlvit": "an OWL-ViT detector (its vision tower is used per patch, not pooled)",
    "owlv2": "an OWLv2 detector (its vision tower is used per patch, not pooled)",
    "blip": "a BLIP model",
    "clip_text_model": "a CLIP text tower alone (no vision tower)",
}
_ACTIVATIONS = {"quick_gelu", "gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast"}

# transformers vision key suffix -> open_clip VisionTransformer key (per block: "{l}")
_BLOCK_KEYS = {
    "layer_norm1.weight": "ln_1.weight",
    "layer_norm1.bias": "ln_1.bias",
    "self_attn.out_proj.weight": "attn.out_proj.weight",
    "self_attn.out_proj.bias": "attn.out_proj.bias",
    "layer_norm2.weight": "ln_2.weight",
    "layer_norm2.bias": "ln_2.bias",
    "mlp.fc1.weight": "mlp.c_fc.weight",
    "mlp.fc1.bias": "mlp.c_fc.bias",
    "mlp.fc2.weight": "mlp.c_proj.weight",
    "mlp.fc2.bias": "mlp.c_proj.bias",
}
_TOP_KEYS = {
    "embeddings.class_embedding": "class_embedding",
    "embeddings.patch_embedding.weight": "conv1.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "pre_layrnorm.weight": "ln_pre.weight",
    "pre_layrnorm.bias": "ln_pre.bias",
    "post_layernorm.weight": "ln_post.weight",
    "post_layernorm.bias": "ln_post.bias",
}


# --- names and folders ---------------------------------------------------------------------
def is_hf_name(name: str | None) -> bool:
    """True for ``hf``, ``hf:ORG/NAME`` and ``hf:FOLDER``."""
    return name is not None and (name == HF_NAME or name.startswith(HF_PREFIX))


def _not_supported_tail() -> str:
    return f"supported: {HF_SUPPORTED}"


def _repo_id(spec: str) -> bool:
    """True when ``spec`` is spelled like a hub model id (``ORG/NAME`` or ``NAME``)."""
    return re.fullmatch(r"[\w.-]+(/[\w.-]+)?", spec) is not None and ".." not in spec


def _cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def cached_snapshot(repo: str) -> Path | None:
    """The snapshot folder of ``repo`` in the local Hugging Face cache (its ``config.json``
    there), else None. Never touches the network."""
    from huggingface_hub import try_to_load_from_cache

    try:
        hit = try_to_load_from_cache(repo, CONFIG_NAME, cache_dir=_cache_dir())
    except Exception:  # an id huggingface_hub refuses to parse
        return None
    return Path(hit).parent if isinstance(hit, str) and os.path.isfile(hit) else None


def _in_cache_without_config(repo: str) -> bool:
    """True when the cache holds ``repo`` as an open_clip repo (``open_clip_config.json``)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        hit = try_to_load_from_cache(repo, "open_clip_config.json", cache_dir=_cache_dir())
    except Exception:
        return False
    return isinstance(hit, str)


def resolve_folder(spec: str, *, allow_download: bool = False) -> tuple[Path, str | None]:
    """(checkpoint folder, hub repo id or None) of ``hf:`` spec ``spec`` (the part after the
    prefix): an existing folder, else a model id served from the local Hugging Face cache
    (downloaded only when ``allow_download``). ``UnknownModelError`` when neither."""
    folder = Path(spec).expanduser()
    if folder.is_dir():
        return folder.resolve(), None
    if not _repo_id(spec):
        raise UnknownModelError(
            f"{HF_PREFIX}{spec}: no such folder, and not a Hugging Face model id (ORG/NAME); "
            f"{_not_supported_tail()}"
        )
    hit = cached_snapshot(spec)
    if hit is not None:
        return hit, spec
    if _in_cache_without_config(spec):
        raise UnknownModelError(
            f"{HF_PREFIX}{spec} is an open_clip repo (open_clip_config.json, no config.json): "
            f"load it as --model hf-hub:{spec}"
        )
    if not allow_download:
        raise UnknownModelError(
            f"{HF_PREFIX}{spec} is not in the local Hugging Face cache ({_cache_dir()}); solens "
            f"does not download it: run `hf download {spec}` where there is network (or pass "
            f"its folder as --model {HF_PREFIX}FOLDER; Python: load_model(..., "
            "allow_download=True)); `solens models` lists what is cached"
        )
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(spec, allow_patterns=DOWNLOAD_PATTERNS, cache_dir=_cache_dir())
    except Exception as e:
        raise UnknownModelError(
            f"cannot download {HF_PREFIX}{spec}: {type(e).__name__}: {_first_line(e)}"
        ) from None
    return Path(path), spec


def folder_label(folder: Path) -> str:
    """How a checkpoint folder is named in ``ModelInfo.name`` (after ``hf:``): its name, or
    ``ORG/NAME`` for a snapshot folder of the hub cache (``models--ORG--NAME/snapshots/REV``)."""
    cache_dir = folder.parent.parent.name
    if folder.parent.name == "snapshots" and cache_dir.startswith("models--"):
        return cache_dir[len("models--") :].replace("--", "/")
    return folder.name


def read_config(folder: Path) -> dict[str, Any]:
    """``config.json`` of a checkpoint folder, checked to be a CLIP the lens can trace (one-line
    ``UnknownModelError``/``UnsupportedModelError`` otherwise)."""
    cfg_file = folder / CONFIG_NAME
    if not cfg_file.is_file():
        hint = ""
        if (folder / "open_clip_config.json").is_file():
            hint = f" (it is an open_clip folder: load it as --model local-dir:{folder})"
        raise UnknownModelError(
            f"{folder} is not a Hugging Face checkpoint folder: no {CONFIG_NAME}{hint}; "
            f"{_not_supported_tail()}"
        )
    try:
        cfg = json.loads(cfg_file.read_text())
    except ValueError as e:
        raise UnknownModelError(f"cannot read {cfg_file}: {_first_line(e)}") from None
    if not isinstance(cfg, dict):
        raise UnknownModelError(f"{cfg_file} does not hold a JSON object")
    kind = cfg.get("model_type")
    if kind in _REFUSED_TYPES:
        raise UnsupportedModelError(
            f"{folder} is {_REFUSED_TYPES[kind]}; {_not_supported_tail()}"
        )
    if kind not in ("clip", "clip_vision_model"):
        what = f"model_type {kind!r}" if kind else "no model_type"
        raise UnsupportedModelError(
            f"{cfg_file} has {what}: not a CLIP model; {_not_supported_tail()}"
        )
    vcfg = vision_config(cfg)
    act = vcfg.get("hidden_act", "quick_gelu")
    if act not in _ACTIVATIONS:
        raise UnsupportedModelError(
            f"{folder}: vision activation {act!r} is not supported (quick_gelu, gelu, "
            "gelu_new/gelu_pytorch_tanh)"
        )
    return cfg


def vision_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The vision tower's settings of a ``clip`` or ``clip_vision_model`` config as
    transformers reads them (``CLIPConfig`` / ``CLIPVisionConfig``: defaults filled in,
    legacy keys handled), with the model's ``projection_dim``."""
    from transformers import CLIPConfig, CLIPVisionConfig

    if cfg.get("model_type") == "clip":
        full: Any = CLIPConfig.from_dict(cfg)
        out: dict[str, Any] = full.vision_config.to_dict()
        out["projection_dim"] = int(full.projection_dim)
        return out
    vision: Any = CLIPVisionConfig.from_dict(cfg)
    return dict(vision.to_dict())


def text_config(cfg: dict[str, Any]) -> Any:
    """``CLIPTextConfig`` of a ``clip`` config (as transformers reads it) with the model's
    ``projection_dim``."""
    from transformers import CLIPConfig

    full: Any = CLIPConfig.from_dict(cfg)
    text = full.text_config
    text.projection_dim = int(full.projection_dim)
    return text


def weights_files(folder: Path) -> list[Path]:
    """The weight files of a checkpoint folder (one file, or the shards an index names)."""
    for name in WEIGHTS_NAMES:
        f = folder / name
        if not f.is_file():
            continue
        if not name.endswith(".index.json"):
            return [f]
        try:
            index = json.loads(f.read_text())
            shards = sorted(set(index["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise UnknownModelError(f"cannot read {f}: {_first_line(e)}") from None
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise UnknownModelError(f"{folder}: shards named in {name} are missing: {missing[0]}")
        return [folder / s for s in shards]
    raise UnknownModelError(
        f"{folder} has no weights file (model.safetensors or pytorch_model.bin); "
        f"{_not_supported_tail()}"
    )


def weights_sha256(files: Sequence[Path]) -> str:
    """sha256 of one weights file, or of the shards' sha256 digests joined in order."""
    if len(files) == 1:
        return file_sha256(files[0])
    return hashlib.sha256(",".join(file_sha256(f) for f in files).encode()).hexdigest()


def read_state_dict(files: Sequence[Path]) -> dict[str, Tensor]:
    """All tensors of the weight files, float32 on CPU (``.safetensors`` or ``torch.save``)."""
    from safetensors.torch import load_file

    sd: dict[str, Tensor] = {}
    for f in files:
        try:
            part = (
                load_file(str(f))
                if f.suffix == ".safetensors"
                else torch.load(f, map_location="cpu", weights_only=True)
            )
        except Exception as e:
            raise UnknownModelError(
                f"cannot read checkpoint {f}: {type(e).__name__}: {_first_line(e)}"
            ) from None
        sd.update(part)
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


def has_tokenizer(folder: Path) -> bool:
    """True when the folder holds tokenizer files (``tokenizer.json``, or vocab + merges)."""
    return (folder / "tokenizer.json").is_file() or (
        (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    )


# --- the vision tower ------------------------------------------------------------------------
def _strip_prefix(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Vision keys without the ``vision_model.`` prefix (plus ``visual_projection.weight``)."""
    out = {}
    for k, v in sd.items():
        for p in ("vision_model.", "clip.vision_model.", "model.vision_model."):
            if k.startswith(p):
                out[k[len(p) :]] = v
        if k.endswith("visual_projection.weight"):
            out["visual_projection.weight"] = v
    return out


def convert_vision_state_dict(sd: dict[str, Tensor], n_layers: int) -> dict[str, Tensor]:
    """transformers ``CLIPVisionModelWithProjection`` weights -> open_clip ``VisionTransformer``
    state dict. q/k/v ``[D, D]`` (and biases ``[D]``) are stacked into ``in_proj_weight``
    ``[3D, D]`` / ``in_proj_bias`` ``[3D]``; ``visual_projection.weight`` ``[d, D]`` becomes
    ``proj`` ``[D, d]``. Keys with or without the ``vision_model.`` prefix are accepted."""
    v = _strip_prefix(sd)
    missing = [k for k in (*_TOP_KEYS, "visual_projection.weight") if k not in v]
    if missing:
        what = "visual_projection.weight (a vision tower without projection)" if missing == [
            "visual_projection.weight"] else ", ".join(missing[:3])
        raise UnsupportedModelError(f"the checkpoint lacks {what}; {_not_supported_tail()}")
    out = {dst: v[src] for src, dst in _TOP_KEYS.items()}
    out["proj"] = v["visual_projection.weight"].T.contiguous()
    for layer in range(n_layers):
        src = f"encoder.layers.{layer}."
        dst = f"transformer.resblocks.{layer}."
        try:
            for a, b in _BLOCK_KEYS.items():
                out[dst + b] = v[src + a]
            out[dst + "attn.in_proj_weight"] = torch.cat(
                [v[f"{src}self_attn.{x}_proj.weight"] for x in "qkv"]
            )
            out[dst + "attn.in_proj_bias"] = torch.cat(
                [v[f"{src}self_attn.{x}_proj.bias"] for x in "qkv"]
            )
        except KeyError as e:
            raise UnknownModelError(
                f"the checkpoint lacks vision_model.{e.args[0]}; {_not_supported_tail()}"
            ) from None
    return out


def _activation(act: str) -> Any:
    """The activation module class of a ``hidden_act`` name."""
    from open_clip.transformer import QuickGELU

    if act == "quick_gelu":
        return QuickGELU
    if act == "gelu":
        return nn.GELU
    return functools.partial(nn.GELU, approximate="tanh")  # gelu_new and its aliases


def build_vision(vcfg: dict[str, Any]) -> nn.Module:
    """An open_clip ``VisionTransformer`` (random weights) of a ``vision_config``
    (``vision_config()``): CLS pooling, pre-LN, no layer scale, LayerNorm eps and activation
    from the config."""
    from open_clip.transformer import LayerNorm, VisionTransformer

    width, mlp = int(vcfg["hidden_size"]), int(vcfg["intermediate_size"])
    act_layer: Any = _activation(str(vcfg.get("hidden_act", "quick_gelu")))
    ratio = mlp / width
    if int(width * ratio) != mlp:  # open_clip rounds width * mlp_ratio down
        ratio = (mlp + 0.5) / width
    return VisionTransformer(
        image_size=int(vcfg["image_size"]),
        patch_size=int(vcfg["patch_size"]),
        width=width,
        layers=int(vcfg["num_hidden_layers"]),
        heads=int(vcfg["num_attention_heads"]),
        mlp_ratio=ratio,
        output_dim=int(vcfg["projection_dim"]),
        act_layer=act_layer,
        norm_layer=functools.partial(LayerNorm, eps=float(vcfg.get("layer_norm_eps", 1e-5))),
    )


def convert_vision(sd: dict[str, Tensor], vcfg: dict[str, Any]) -> nn.Module:
    """The open_clip ``VisionTransformer`` holding a transformers checkpoint's vision weights."""
    visual = build_vision(vcfg)
    converted = convert_vision_state_dict(sd, int(vcfg["num_hidden_layers"]))
    try:
        visual.load_state_dict(converted, strict=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        raise UnknownModelError(
            f"the vision weights do not fit their config.json: {detail}"
        ) from None
    return visual.eval()


# --- the text side ---------------------------------------------------------------------------
class HFTextEncoder(nn.Module):
    """transformers ``CLIPTextModelWithProjection`` + its tokenizer as solens's text encoder:
    ``encode`` of n texts -> ``text_embeds`` [n, d] (unnormalised, as
    ``CLIPModel.get_text_features``)."""

    def __init__(self, model: nn.Module, tokenizer: Any, batch_size: int = 256) -> None:
        super().__init__()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> Tensor:
        """Unnormalised text embeddings: list of n strings -> [n, d]."""
        config: Any = self.model.config
        device = next(self.model.parameters()).device
        out = []
        for i in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                list(texts[i : i + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=int(config.max_position_embeddings),
                return_tensors="pt",
            )
            res = self.model(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
            )
            out.append(res.text_embeds.float())
        return torch.cat(out) if out else torch.zeros(0, int(config.projection_dim))


def build_text(cfg: dict[str, Any], sd: dict[str, Tensor], folder: Path) -> HFTextEncoder:
    """``HFTextEncoder`` of a ``clip`` checkpoint: ``CLIPTextModelWithProjection`` with the
    checkpoint's ``text_model.*`` and ``text_projection.weight``, and its tokenizer."""
    from transformers import AutoTokenizer, CLIPTextModelWithProjection

    if not has_tokenizer(folder):
        raise UnknownModelError(
            f"{folder} has no tokenizer files (tokenizer.json, or vocab.json + merges.txt), "
            f"which the text tower needs; {_not_supported_tail()}"
        )
    model = CLIPTextModelWithProjection(text_config(cfg))
    own = model.state_dict()
    text_sd = {k: v for k, v in sd.items() if k.startswith(("text_model.", "text_projection."))}
    text_sd = {k: v for k, v in text_sd.items() if k in own}  # e.g. position_ids buffers
    missing = sorted(set(own) - set(text_sd) - {n for n, _ in model.named_buffers()})
    if missing:
        raise UnknownModelError(
            f"the checkpoint in {folder} lacks text weights ({missing[0]}"
            f"{f' +{len(missing) - 1} more' if len(missing) > 1 else ''}); {_not_supported_tail()}"
        )
    try:
        model.load_state_dict(text_sd, strict=False)
    except RuntimeError as e:
        raise UnknownModelError(
            f"the text weights in {folder} do not fit config.json: {_first_line(e)}"
        ) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:
        raise UnknownModelError(
            f"cannot read the tokenizer in {folder}: {type(e).__name__}: {_first_line(e)}"
        ) from None
    return HFTextEncoder(model, tokenizer)


# --- preprocessing ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Preprocessing:
    """What ``preprocessor_config.json`` says (CLIP's defaults without one)."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def read_preprocessing(folder: Path, image_size: int) -> Preprocessing:
    """Normalisation of ``preprocessor_config.json`` (``image_mean``/``image_std``); the crop
    is the vision tower's ``image_size`` (resize the shorter side, centre crop, bicubic)."""
    mean, std = OPENAI_MEAN, OPENAI_STD
    f = folder / PREPROCESSOR_NAME
    if f.is_file():
        try:
            cfg = json.loads(f.read_text())
            m = [float(x) for x in cfg.get("image_mean", mean)]
            s = [float(x) for x in cfg.get("image_std", std)]
            mean, std = (m[0], m[1], m[2]), (s[0], s[1], s[2])
        except (ValueError, TypeError, AttributeError, IndexError) as e:
            raise UnknownModelError(f"cannot read {f}: {_first_line(e)}") from None
    return Preprocessing(image_size, mean, std)


def make_transform(p: Preprocessing) -> Any:
    """open_clip's eval transform for ``p`` (shorter side resized, centre crop, bicubic)."""
    from open_clip import image_transform

    return image_transform(
        p.image_size, is_train=False, mean=p.mean, std=p.std, interpolation="bicubic",
        resize_mode="shortest",
    )


# --- loading -----------------------------------------------------------------------------------
def load_hf(
    spec: str, *, quick_gelu: bool | None = None, allow_download: bool = False
) -> Model:
    """A transformers CLIP checkpoint as a solens ``Model`` on the CPU: ``spec`` is a folder
    or a hub model id (``ORG/NAME``, from the local cache unless ``allow_download``).

    ``info``: name ``hf:ORG/NAME`` (``hf:`` + ``folder_label`` for a folder), source
    ``transformers``, pretrained ``checkpoint:<sha256[:16]>`` of the weights, QuickGELU from
    ``vision_config.hidden_act`` (``quick_gelu=`` overrides it, with a warning); ``extra``
    records the repo, the folder, the weights file and its sha256. A ``clip_vision_model``
    checkpoint gives a model without text encoder.
    """
    folder, repo = resolve_folder(spec, allow_download=allow_download)
    cfg = read_config(folder)
    vcfg = vision_config(cfg)
    act = str(vcfg.get("hidden_act", "quick_gelu"))
    qg_config = act == "quick_gelu"
    if quick_gelu is not None and bool(quick_gelu) != qg_config:
        warnings.warn(
            f"quick_gelu={bool(quick_gelu)} overrides the config's hidden_act {act!r} for "
            f"{HF_PREFIX}{spec}",
            stacklevel=3,
        )
        vcfg["hidden_act"] = "quick_gelu" if quick_gelu else "gelu"
    with_text = cfg.get("model_type") == "clip"
    if with_text and not has_tokenizer(folder):  # before reading gigabytes of weights
        build_text(cfg, {}, folder)
    files = weights_files(folder)
    sd = read_state_dict(files)
    visual = convert_vision(sd, vcfg)
    text = build_text(cfg, sd, folder) if with_text else None
    del sd
    sha = weights_sha256(files)
    extra: dict[str, Any] = {
        "weights": "hf",
        "repo": repo,
        "location": str(folder),
        "checkpoint": str(files[0].resolve()) if len(files) == 1 else str(folder),
        "sha256": sha,
        "format": "safetensors" if files[0].suffix == ".safetensors" else "torch",
        "model_type": cfg.get("model_type"),
        "hidden_act": act,
        "quick_gelu_from": "config" if quick_gelu is None else "user",
    }
    name = f"{HF_PREFIX}{repo or folder_label(folder)}"
    info = describe_visual(
        visual, name=name, pretrained=f"checkpoint:{sha[:16]}", source="transformers",
        extra=extra,
    )
    preprocess = make_transform(read_preprocessing(folder, int(vcfg["image_size"])))
    return Model(visual, text, preprocess, info)
