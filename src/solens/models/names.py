"""Model names and pretrained tags: what ``load_model`` accepts, configs (the fast name
check and the close-name hints are in ``solens.models.catalog``).

open_clip is imported inside the functions that need it: it is heavy, and ``import solens``
should stay light.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import os
from typing import Any

from solens.errors import UnknownModelError, UnsupportedModelError
from solens.models.catalog import _HF_PREFIX as _HF_PREFIX  # re-exported
from solens.models.catalog import _LOCAL_PREFIX as _LOCAL_PREFIX  # re-exported
from solens.models.catalog import TINY, unknown_model_error
from solens.models.model import RANDOM, SUPPORTED


def bundled_models() -> dict[str, importlib.metadata.EntryPoint]:
    """Models that packages register under the entry-point group ``solens.models`` (name ->
    ``load(device=...) -> Model``): solens's own ``solens-tiny`` is one. Found through the
    installed metadata, so the loading layer imports no model package itself."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group="solens.models")}


def list_models() -> list[str]:
    """Every model name ``load_model`` accepts without a schema prefix."""
    import open_clip

    return [*open_clip.list_models(), *sorted(set(bundled_models()) | {TINY})]


def list_pretrained_tags(name: str) -> list[str]:
    """open_clip's pretrained tags for the model ``name`` (may be empty)."""
    import open_clip

    return list(open_clip.list_pretrained_tags_by_model(name))


def no_weights_error(name: str, *, cli: bool = False) -> UnknownModelError:
    """The one-line refusal of an open_clip name given without weights: it lists the
    model's pretrained tags (or says it has none) and how to ask for random weights.
    ``cli``: spelled as ``solens`` options (``--pretrained``) instead of arguments."""
    tag, ckpt, rand = (
        ("--pretrained TAG", "--checkpoint PATH", f"--pretrained {RANDOM}")
        if cli
        else ("pretrained=TAG", "checkpoint=PATH", f"pretrained={RANDOM!r}")
    )
    random = f"or {rand} for randomly initialised weights"
    tags = list_pretrained_tags(name)
    if not tags:
        return UnknownModelError(
            f"no weights given for model {name!r} (it has no pretrained tags in open_clip): "
            f"pass {ckpt}, {random}"
        )
    return UnknownModelError(
        f"no weights given for model {name!r}: pass {tag} or {ckpt}, {random}; "
        f"its tags: {', '.join(tags)}"
    )


def _unknown_model(name: str) -> UnknownModelError:
    return unknown_model_error(name, list_models())


def _model_config(name: str) -> dict[str, Any]:
    import open_clip

    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise _unknown_model(name)
    return cfg


ATTENTIONAL = "attentional pooling"
MEAN_POOLING = "mean pooling"
CONVNEXT = "ConvNeXt tower"
RESNET = "ResNet tower"
TIMM = "other timm tower"
REFUSED_FAMILIES = {
    ATTENTIONAL: "the image embedding is read out by an attention head (SigLIP's MAP head, "
    "CoCa's attentional pooler), not the CLS token: second-order paths end in that head",
    MEAN_POOLING: "the embedding averages all tokens instead of reading the CLS token, which "
    "the second-order paths end in",
    CONVNEXT: "a convolutional tower: no attention heads to carry second-order effects",
    RESNET: "OpenAI's ModifiedResNet: convolutions with an attention-pool head",
    TIMM: "a timm vision transformer (EVA, ViTamin, FastViT, Swin, ...): the lens traces "
    "open_clip's own VisionTransformer blocks",
}
"""Families of vision towers the lens refuses, with the reason (``solens models``, docs)."""


def refusal(cfg: dict[str, Any]) -> tuple[str, str] | None:
    """(family in ``REFUSED_FAMILIES``, reason) when an open_clip config's vision tower is one
    the lens cannot trace, else None."""
    v = cfg.get("vision_cfg", {})
    if "timm_model_name" in v:
        timm = v["timm_model_name"]
        if v.get("timm_pool") == "map":
            return ATTENTIONAL, (
                f"its vision tower is a timm model ({timm}) with attentional pooling "
                "(a MAP head, as in SigLIP)"
            )
        family = CONVNEXT if "convnext" in timm else TIMM
        return family, f"its vision tower is a timm model ({timm})"
    if isinstance(v.get("layers"), list | tuple):
        return RESNET, "its vision tower is a ModifiedResNet"
    if v.get("attentional_pool") or "multimodal_cfg" in cfg:
        return ATTENTIONAL, "its vision tower uses attentional pooling (CoCa)"
    if v.get("pool_type", "tok") != "tok":
        return MEAN_POOLING, (
            f"its vision tower uses {v['pool_type']!r} pooling instead of the CLS token"
        )
    return None


def check_config_supported(name: str, cfg: dict[str, Any]) -> None:
    """Reject configs whose vision tower the lens cannot trace, before building them."""
    refused = refusal(cfg)
    if refused:
        raise UnsupportedModelError(
            f"model {name!r} is not supported: {refused[1]}; supported: {SUPPORTED}"
        )


def _looks_like_path(s: str) -> bool:
    return os.sep in s or s.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))


def _resolve_tag(name: str, tag: str) -> tuple[str, dict[str, Any]]:
    """(clean tag, open_clip's pretrained config) of ``tag``, else ``UnknownModelError``."""
    from open_clip.pretrained import _clean_tag, get_pretrained_cfg

    cfg = get_pretrained_cfg(name, tag)
    if cfg:
        return _clean_tag(tag), cfg
    tags = list_pretrained_tags(name)
    if not tags:
        raise UnknownModelError(
            f"model {name!r} has no pretrained tags in open_clip; use checkpoint=PATH, or "
            f"pretrained={RANDOM!r} for randomly initialised weights"
        )
    close = difflib.get_close_matches(_clean_tag(tag), tags, n=3, cutoff=0.4)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise UnknownModelError(
        f"unknown pretrained tag {tag!r} for model {name!r}{hint}; valid tags: {', '.join(tags)}"
    )
