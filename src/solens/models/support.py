"""What solens can load on this machine (``solens models``): open_clip architectures and
pretrained tags it supports and which of them are in the local caches, the bundled models,
the Hugging Face repos in the local hub cache, and the architectures it refuses with the
reason. Reads configs and caches only: nothing is built or downloaded.

open_clip and huggingface_hub are imported inside the functions that need them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from solens.errors import InputError
from solens.models import hf
from solens.models.catalog import HF_PREFIX, TINY
from solens.models.hub import cached_weights
from solens.models.names import (
    _HF_PREFIX,
    ATTENTIONAL,
    CONVNEXT,
    MEAN_POOLING,
    REFUSED_FAMILIES,
    RESNET,
    TIMM,
    bundled_models,
    refusal,
)

FAMILIES: tuple[tuple[str, str, str], ...] = (
    ("open_clip ViT, CLS pooling (OpenAI, LAION, DataComp, MetaCLIP, ...)", "supported",
     "--model NAME --pretrained TAG, --checkpoint FILE, hf-hub:ORG/REPO, local-dir:FOLDER"),
    ("transformers CLIP (CLIPModel, CLIPVisionModelWithProjection)", "supported",
     f"--model {HF_PREFIX}ORG/NAME (local Hugging Face cache) or {HF_PREFIX}FOLDER"),
    (f"{TINY} (bundled)", "supported", f"--model {TINY}"),
    ("SigLIP, SigLIP 2, PE (timm MAP head); CoCa", "refused", REFUSED_FAMILIES[ATTENTIONAL]),
    ("mean-pooled ViTs (CLIPA)", "refused", REFUSED_FAMILIES[MEAN_POOLING]),
    ("ConvNeXt towers", "refused", REFUSED_FAMILIES[CONVNEXT]),
    ("ResNet towers (RN50, RN101, ...)", "refused", REFUSED_FAMILIES[RESNET]),
    ("other timm towers (EVA, ViTamin, FastViT, Swin)", "refused", REFUSED_FAMILIES[TIMM]),
)
"""The support matrix: (family, supported/refused, how to load it or why it is refused)."""


@dataclass(frozen=True)
class Architecture:
    """An open_clip architecture the lens supports, its pretrained tags and the tags whose
    weights are in the local caches."""

    name: str
    tags: list[str]
    cached: list[str]


@dataclass(frozen=True)
class Refused:
    """An open_clip architecture the lens refuses."""

    name: str
    family: str
    reason: str


@dataclass(frozen=True)
class CachedRepo:
    """A model repo in the local Hugging Face hub cache: ``name`` is what ``--model`` takes
    (``hf:`` for transformers checkpoints, ``hf-hub:`` for open_clip repos); ``reason`` is
    None when it loads, else why not."""

    name: str
    kind: str
    reason: str | None


@dataclass
class Inventory:
    """Everything ``solens models`` lists."""

    architectures: list[Architecture] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    bundled: list[str] = field(default_factory=list)
    hub_cache: str = ""
    cached_repos: list[CachedRepo] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["families"] = [
            {"family": f, "status": s, "how": h} for f, s, h in FAMILIES
        ]
        return out


def _cached_repo(repo: str) -> CachedRepo | None:
    """What the hub cache holds under ``repo``: a transformers CLIP, an open_clip repo, or
    neither (None)."""
    snapshot = hf.cached_snapshot(repo)
    if snapshot is not None:
        try:
            hf.read_config(snapshot)
            reason = None
        except InputError as e:
            reason = str(e).split(";")[0].replace(str(snapshot), repo)
        return CachedRepo(f"{HF_PREFIX}{repo}", "transformers", reason)
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(repo, "open_clip_config.json", cache_dir=hf._cache_dir())
    if not isinstance(hit, str):
        return None
    try:
        cfg = json.loads(Path(hit).read_text()).get("model_cfg", {})
        refused = refusal(cfg)
        reason = refused[1] if refused else None
    except (ValueError, AttributeError) as e:
        reason = f"unreadable open_clip_config.json ({e})"
    return CachedRepo(f"{_HF_PREFIX}{repo}", "open_clip", reason)


def cached_repos() -> list[CachedRepo]:
    """Model repos of the local Hugging Face hub cache that hold a config solens reads."""
    root = Path(hf._cache_dir())
    out = []
    for d in sorted(root.glob("models--*")) if root.is_dir() else []:
        repo = d.name[len("models--") :].replace("--", "/")
        hit = _cached_repo(repo)
        if hit is not None:
            out.append(hit)
    return out


def inventory() -> Inventory:
    """The open_clip architectures (supported with their tags and cached tags; refused with
    the reason), the bundled models and the repos in the local Hugging Face hub cache."""
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    inv = Inventory(hub_cache=hf._cache_dir())
    for name in open_clip.list_models():
        cfg = open_clip.get_model_config(name) or {}
        refused = refusal(cfg)
        if refused is not None:
            inv.refused.append(Refused(name, *refused))
            continue
        tags = list(open_clip.list_pretrained_tags_by_model(name))
        cached = [t for t in tags if cached_weights(get_pretrained_cfg(name, t)) is not None]
        inv.architectures.append(Architecture(name, tags, cached))
    inv.bundled = sorted(set(bundled_models()) | {TINY})
    inv.cached_repos = cached_repos()
    return inv
