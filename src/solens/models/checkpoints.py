"""Checkpoint files: hashing, reading state dicts (torch, safetensors, TorchScript) and
loading them into an open_clip model with one-line errors.

open_clip is imported inside the functions that need it: it is heavy, and ``import solens``
should stay light.
"""

from __future__ import annotations

import hashlib
import os
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from solens.errors import UnknownModelError

# keys OpenAI TorchScript archives carry besides the parameters
_JIT_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")

_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Streamed sha256 of a file (memoised by path, size and mtime)."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def is_torchscript_archive(path: str | os.PathLike[str]) -> bool:
    """True for a TorchScript zip (e.g. the OpenAI CLIP ``.pt`` releases)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") for n in z.namelist())


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A checkpoint file's state dict on CPU: ``.safetensors``, ``torch.save`` files
    (plain or ``{"state_dict": ...}``, ``module.`` prefixes stripped) or TorchScript archives."""
    from open_clip.factory import load_state_dict

    path = str(path)
    try:
        if is_torchscript_archive(path):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated
                sd = torch.jit.load(path, map_location="cpu").state_dict()
            for k in _JIT_EXTRA_KEYS:
                sd.pop(k, None)
            return dict(sd)
        sd = _load_mapped(path)
        if sd is None:  # safetensors, or a legacy (non-zip) torch file
            sd = load_state_dict(path, device="cpu", weights_only=True)
    except Exception as e:  # unreadable, unsafe pickle, truncated file, ...
        raise UnknownModelError(
            f"cannot read checkpoint {path}: {type(e).__name__}: {_first_line(e)}"
        ) from e
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UnknownModelError(f"checkpoint {path} does not hold a state dict of tensors")
    return sd


def _load_mapped(path: str) -> dict[str, torch.Tensor] | None:
    """A zip-format ``torch.save`` state dict, memory-mapped (tensors are read from the page
    cache as they are copied into a model, and parts not loaded are never read: a vision
    tower loads without the text tower's bytes entering RSS); ``{"state_dict": ...}``
    unwrapped, ``module.`` prefixes stripped as open_clip does. None for other files."""
    if path.endswith(".safetensors") or not zipfile.is_zipfile(path):
        return None
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if isinstance(ckpt, dict) and "state_dict" in ckpt:
        ckpt = ckpt["state_dict"]
    if isinstance(ckpt, dict) and ckpt and next(iter(ckpt)).startswith("module"):
        ckpt = {k[7:]: v for k, v in ckpt.items()}
    return ckpt if isinstance(ckpt, dict) else None


def _first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when empty)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _summarise_keys(keys: list[str], n: int = 4) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_weights(clip_model: nn.Module, sd: dict[str, torch.Tensor], what: str) -> bool:
    """Load ``sd`` into an open_clip model (open_clip's conversions applied).

    A state dict of the vision tower alone (keys with or without ``visual.``) loads into
    ``clip_model.visual``. Returns True when the text tower was loaded too.
    """
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed

    visual = clip_model.get_submodule("visual")
    visual_keys = set(visual.state_dict())
    if set(sd) == visual_keys:
        sd = {f"visual.{k}": v for k, v in sd.items()}
    sd = convert_state_dict(clip_model, sd)
    if "positional_embedding" in sd and not hasattr(clip_model, "positional_embedding"):
        sd = convert_to_custom_text_state_dict(sd)
    resize_pos_embed(sd, clip_model)
    only_visual = all(k.startswith("visual.") for k in sd)
    target = visual if only_visual else clip_model
    if only_visual:
        sd = {k[len("visual.") :]: v for k, v in sd.items()}
    else:
        own = clip_model.state_dict()
        for k in ("logit_scale", "logit_bias"):
            if k in sd and k in own and own[k].ndim != sd[k].ndim:
                sd[k] = sd[k].reshape(own[k].shape)
        if "logit_bias" in own and "logit_bias" not in sd:
            sd["logit_bias"] = torch.zeros_like(own["logit_bias"])
        sd.pop("text.transformer.embeddings.position_ids", None)
    # non-persistent buffers (e.g. the text attn_mask) that TorchScript archives still carry
    buffers = {n for n, _ in target.named_buffers()} - set(target.state_dict())
    sd = {k: v for k, v in sd.items() if k not in buffers}
    try:
        missing, unexpected = target.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatches
        lines = [ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln]
        raise UnknownModelError(
            f"{what} does not fit the architecture: {_summarise_keys(lines, 2) or _first_line(e)}"
        ) from None
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_summarise_keys(list(missing))}")
        if unexpected:
            parts.append(f"unexpected {_summarise_keys(list(unexpected))}")
        raise UnknownModelError(f"{what} does not fit the architecture: {'; '.join(parts)}")
    return not only_visual
