"""``load_model``: open_clip names + pretrained tags, hf-hub ids, local checkpoints, solens-tiny.

This module builds the open_clip model and wraps it as a ``Model``; names and tags are
resolved in ``solens.models.names``, checkpoint files read in ``solens.models.checkpoints``
and pretrained weights found (from the caches, or the network when it answers) in
``solens.models.hub``, whose docstring says what happens offline.

open_clip is imported inside the functions that need it: it is heavy, and ``import solens``
should stay light.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from solens.errors import InputError, SolensError, UnknownModelError, UnsupportedModelError
from solens.models import names
from solens.models.catalog import HF_NAME, HF_PREFIX
from solens.models.checkpoints import (
    _first_line,
    file_sha256,
    is_torchscript_archive,
    load_weights,
    read_state_dict,
)
from solens.models.hf import is_hf_name, load_hf
from solens.models.hub import _require_hf_text, _weights_source, fetch_pretrained, resolve_schema
from solens.models.model import RANDOM, Model
from solens.models.names import (
    _HF_PREFIX,
    _LOCAL_PREFIX,
    TINY,
    _looks_like_path,
    _model_config,
    _resolve_tag,
    check_config_supported,
    list_models,
    list_pretrained_tags,
    no_weights_error,
)

# list_models / list_pretrained_tags are re-exported: part of the API
__all__ = ["list_models", "list_pretrained_tags", "load_model", "require_weights"]


# --- building ------------------------------------------------------------------------------
class _DropOpenClipChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or "open_clip" not in record.pathname


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence open_clip's root-logger info/warnings (e.g. 'initialized randomly')."""
    f = _DropOpenClipChatter()
    root = logging.getLogger()
    root.addFilter(f)
    try:
        yield
    finally:
        root.removeFilter(f)


def release_memory() -> None:
    """Collect garbage and hand freed heap memory back to the OS (glibc ``malloc_trim``;
    nothing elsewhere), so that RSS drops after a large model part is dropped."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _network_error(e: BaseException) -> bool:
    text = f"{type(e).__name__} {e}".lower()
    needles = ("connect", "offline", "cached files", "local cache", "max retries", "timed out")
    return isinstance(e, OSError) or any(s in text for s in needles)


def _preprocess_overrides(tag_cfg: dict[str, Any]) -> dict[str, Any]:
    keys = {
        "mean": "image_mean",
        "std": "image_std",
        "interpolation": "image_interpolation",
        "resize_mode": "image_resize_mode",
    }
    return {arg: tag_cfg[k] for k, arg in keys.items() if k in tag_cfg}


def _build(name: str, quick_gelu: bool, **kw: Any) -> tuple[nn.Module, Any, Any]:
    """open_clip model (random init unless the name carries weights), eval transform, tokenizer."""
    import open_clip

    with _quiet(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*QuickGELU mismatch.*")
        try:
            clip_model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=None, quick_gelu=quick_gelu, pretrained_text=False, **kw
            )
            tokenizer = open_clip.get_tokenizer(name)
        except Exception as e:
            if _network_error(e):
                raise UnknownModelError(
                    f"model {name!r} needs files that are not available offline: {_first_line(e)}"
                ) from None
            raise UnknownModelError(f"cannot build model {name!r}: {_first_line(e)}") from None
    return clip_model, preprocess, tokenizer


def _finish(
    clip_model: nn.Module,
    preprocess: Any,
    tokenizer: Any,
    *,
    name: str,
    pretrained: str | None,
    device: str | torch.device,
    extra: dict[str, Any],
    with_text: bool = True,
    text: bool = True,
) -> Model:
    model = Model.from_open_clip(
        clip_model, preprocess, tokenizer, name=name, pretrained=pretrained, source="open_clip"
    )
    if not with_text:
        model.text = None
    model.info = dataclasses.replace(model.info, extra={**model.info.extra, **extra})
    if not text:  # keep the vision tower only: the rest of the CLIP model is freed
        model = Model(model.visual, None, preprocess, model.info)
        del clip_model
        release_memory()
    try:
        return model.to(device)
    except (RuntimeError, AssertionError) as e:  # e.g. "cuda" on a machine without CUDA
        raise InputError(f"cannot move the model to device {device!r}: {_first_line(e)}") from None


def _load_tiny(
    pretrained: str | None, checkpoint: Any, device: str | torch.device, quick_gelu: bool | None
) -> Model:
    if checkpoint is not None:
        raise UnknownModelError(
            f"{TINY} carries its own weights: drop --checkpoint (Python: checkpoint=)"
        )
    load = names.bundled_models().get(TINY)
    if load is None:
        raise SolensError(
            f"the bundled model {TINY} is not registered in this installation (entry point "
            "group 'solens.models'); reinstall solens (pip install -e .)"
        )
    try:
        model = load.load()(device=device)
    except FileNotFoundError as e:
        raise SolensError(f"the bundled model {TINY} has no weights: {_first_line(e)}") from None
    if pretrained is not None and pretrained != model.info.pretrained:
        raise UnknownModelError(
            f"unknown pretrained tag {pretrained!r} for {TINY}; valid: {model.info.pretrained!r}"
        )
    if quick_gelu is not None and quick_gelu != model.info.quick_gelu:
        flag, how = ("--quick-gelu", "without") if quick_gelu else ("--no-quick-gelu", "with")
        raise UnsupportedModelError(
            f"{TINY} was trained {how} QuickGELU: drop {flag} (Python: quick_gelu=)"
        )
    return model


def _load_schema(
    name: str, device: str | torch.device, quick_gelu: bool | None, text: bool = True
) -> Model:
    """``hf-hub:org/repo`` (from the hub cache when offline) or ``local-dir:/path``
    (resolved by ``solens.models.hub.resolve_schema``)."""
    import open_clip

    build_name, label, extra = resolve_schema(name)
    kw: dict[str, Any] = {} if quick_gelu is None else {"quick_gelu": quick_gelu}
    with _quiet(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            clip_model, _, preprocess = open_clip.create_model_and_transforms(
                build_name, device="cpu", pretrained_text=False, **kw
            )
            tokenizer = open_clip.get_tokenizer(build_name)
        except Exception as e:
            if _network_error(e):
                msg = f"{name} is not available offline: {_first_line(e)}"
                raise UnknownModelError(msg) from None
            raise UnknownModelError(f"cannot load {name}: {_first_line(e)}") from None
    extra["quick_gelu_from"] = "config" if quick_gelu is None else "user"
    return _finish(
        clip_model,
        preprocess,
        tokenizer,
        name=name,
        pretrained=label,
        device=device,
        extra=extra,
        text=text,
    )


def _carries_weights(name: str) -> bool:
    """Names whose weights come with them: solens-tiny, hf:, hf-hub:, local-dir:."""
    return name == TINY or is_hf_name(name) or name.startswith((_HF_PREFIX, _LOCAL_PREFIX))


def _load_hf(
    name: str | None,
    pretrained: str | None,
    checkpoint: str | os.PathLike[str] | None,
    *,
    device: str | torch.device,
    quick_gelu: bool | None,
    allow_download: bool,
    text: bool = True,
) -> Model:
    """``hf:ORG/NAME``, ``hf:FOLDER`` or ``checkpoint=FOLDER`` (``solens.models.hf``);
    ``text=False`` drops the text tower after loading."""
    if pretrained is not None:
        raise UnknownModelError(
            f"{name or checkpoint} carries its own weights: drop --pretrained (Python: pretrained=)"
        )
    if name is not None and name != HF_NAME and checkpoint is not None:
        raise UnknownModelError(
            f"{name} carries its own weights: drop --checkpoint (Python: checkpoint=)"
        )
    spec = str(checkpoint) if checkpoint is not None else (name or "")[len(HF_PREFIX) :]
    if not spec:
        raise UnknownModelError(
            f"--model {HF_NAME} needs --checkpoint FOLDER; or pass --model {HF_PREFIX}ORG/NAME "
            f"or {HF_PREFIX}FOLDER"
        )
    model = load_hf(spec, quick_gelu=quick_gelu, allow_download=allow_download)
    if not text:  # the checkpoint is read whole; the text tower is then freed
        model = Model(model.visual, None, model.preprocess, model.info)
        release_memory()
    try:
        return model.to(device)
    except (RuntimeError, AssertionError) as e:  # e.g. "cuda" on a machine without CUDA
        raise InputError(f"cannot move the model to device {device!r}: {_first_line(e)}") from None


def require_weights(
    name: str,
    pretrained: str | None,
    checkpoint: str | os.PathLike[str] | None,
    *,
    cli: bool = False,
) -> None:
    """Refuse an open_clip ``name`` given neither ``pretrained`` nor ``checkpoint``
    (``UnknownModelError`` listing its tags; ``"random"`` asks for random weights). An
    unknown or unsupported name fails as in ``load_model``. ``cli``: the message names the
    ``solens`` options instead of the arguments."""
    if pretrained is not None or checkpoint is not None or _carries_weights(name):
        return
    name = name.replace("/", "-")
    check_config_supported(name, _model_config(name))
    raise no_weights_error(name, cli=cli)


def load_model(
    name: str | None = None,
    pretrained: str | None = None,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    quick_gelu: bool | None = None,
    allow_download: bool = False,
    text: bool = True,
) -> Model:
    """Load a CLIP model as a solens ``Model`` (eval mode, float32, on ``device``).

    - ``load_model("ViT-B-32", "openai")``: open_clip name + pretrained tag (weights from
      the local cache; see ``solens.models.hub`` for what happens offline).
    - ``load_model("ViT-B-32", "random")``: randomly initialised weights, asked for
      explicitly (``info.pretrained`` and ``info.extra["weights"]`` are ``"random"``);
      ``load_model("ViT-B-32")`` without weights is an ``UnknownModelError`` that lists
      the tags.
    - ``load_model("ViT-B-32", checkpoint="model.pt")``: a local file, open_clip state dict
      (``.pt/.bin/.pth``, possibly ``{"state_dict": ...}`` with ``module.`` prefixes),
      ``.safetensors``, or an OpenAI TorchScript archive; ``info.pretrained`` is
      ``"checkpoint:<sha256[:16]>"``; a vision-tower-only state dict gives a model without
      text encoder. ``pretrained=PATH`` is accepted as in open_clip.
    - ``load_model("hf-hub:org/repo")`` (served from the hub cache when it holds the repo)
      and ``load_model("local-dir:/path")`` (open_clip_config.json + a weights file);
      ``info.pretrained`` is ``"checkpoint:<sha256[:16]>"`` of the weights file.
    - ``load_model("hf:openai/clip-vit-base-patch32")`` (a transformers CLIP from the local
      Hugging Face cache; downloaded only with ``allow_download=True``),
      ``load_model("hf:FOLDER")`` or ``load_model(checkpoint=FOLDER)`` (a folder with
      config.json, model.safetensors or pytorch_model.bin and tokenizer files): the vision
      tower converted to open_clip's, the text side run by transformers
      (``solens.models.hf``); ``info.source`` is ``"transformers"``.
    - ``load_model("solens-tiny")``: the bundled model.

    QuickGELU follows the weights (tag metadata, "-quickgelu" configs, OpenAI TorchScript
    archives use it); ``quick_gelu=`` overrides. ``info.extra`` records where the weights
    came from.

    ``text=False`` keeps the vision tower only (no text encoder: ``model.text`` is None):
    only its weights are loaded and the rest of the CLIP model is freed, for jobs that need
    no text (``solens effects``). Its identity, weights hash and preprocessing equal the
    full model's, so runs made either way are the same run. (solens-tiny is small and
    always loads whole; a transformers checkpoint, ``hf:``, is read whole and its text
    tower freed after loading, so only the resident memory, not the load time, shrinks.)
    """
    if is_hf_name(name) or (
        name is None and checkpoint is not None and Path(checkpoint).expanduser().is_dir()
    ):
        return _load_hf(
            name, pretrained, checkpoint, device=device, quick_gelu=quick_gelu,
            allow_download=allow_download, text=text,
        )
    if name is None:
        raise UnknownModelError(
            "give a model name (Python: load_model(NAME, ...)), or checkpoint=FOLDER for a "
            "transformers CLIP checkpoint folder"
        )
    if checkpoint is not None and Path(checkpoint).expanduser().is_dir():
        raise UnknownModelError(
            f"checkpoint {checkpoint} is a folder: a transformers CLIP checkpoint folder is "
            f"loaded as --model {HF_PREFIX}FOLDER (Python: load_model(checkpoint=FOLDER)), an "
            f"open_clip folder as --model {_LOCAL_PREFIX}FOLDER"
        )
    if name == TINY:
        return _load_tiny(pretrained, checkpoint, device, quick_gelu)
    if name.startswith((_HF_PREFIX, _LOCAL_PREFIX)):
        if pretrained is not None or checkpoint is not None:
            raise UnknownModelError(
                f"{name} carries its own weights: drop --pretrained/--checkpoint "
                "(Python: pretrained=/checkpoint=)"
            )
        return _load_schema(name, device, quick_gelu, text)
    name = name.replace("/", "-")
    random = pretrained is not None and pretrained.lower() == RANDOM
    if (
        pretrained is not None
        and not random
        and checkpoint is None
        and (os.path.isfile(pretrained) or _looks_like_path(pretrained))
    ):
        checkpoint, pretrained = pretrained, None
    if pretrained is not None and checkpoint is not None:
        raise UnknownModelError(
            "give --pretrained TAG or --checkpoint PATH, not both "
            "(Python: pretrained= or checkpoint=)"
        )

    cfg = _model_config(name)
    check_config_supported(name, cfg)
    if pretrained is None and checkpoint is None:
        raise no_weights_error(name)
    _require_hf_text(name, cfg)

    qg_default, qg_why = bool(cfg.get("quick_gelu", False)), "config"
    extra: dict[str, Any]
    kw: dict[str, Any] = {}
    label: str | None = None
    weights_file: str | None = None
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise UnknownModelError(f"checkpoint file not found: {path}")
        sha = file_sha256(path)
        jit = is_torchscript_archive(path)
        if jit:
            qg_default, qg_why = True, "openai-torchscript"
        weights_file, label = str(path.resolve()), f"checkpoint:{sha[:16]}"
        extra = {
            "weights": "checkpoint",
            "checkpoint": weights_file,
            "sha256": sha,
            "format": "torchscript" if jit else path.suffix.lstrip(".") or "torch",
        }
    elif random:
        label, extra = RANDOM, {"weights": RANDOM}
    elif pretrained is not None:
        label, tag_cfg = _resolve_tag(name, pretrained)
        weights_file = fetch_pretrained(name, label, tag_cfg)
        if "quick_gelu" in tag_cfg or qg_default:
            qg_default, qg_why = bool(tag_cfg.get("quick_gelu", False)) or qg_default, "tag"
        kw = _preprocess_overrides(tag_cfg)
        extra = {
            "weights": "open_clip",
            "tag": label,
            "file": weights_file,
            "source": _weights_source(tag_cfg),
        }
    else:  # unreachable: refused above
        raise no_weights_error(name)

    qg = qg_default if quick_gelu is None else bool(quick_gelu)
    if quick_gelu is not None and bool(quick_gelu) != qg_default and weights_file is not None:
        warnings.warn(
            f"quick_gelu={qg} overrides the {qg_why} ({qg_default}) for {name}", stacklevel=2
        )
    extra["quick_gelu_from"] = "user" if quick_gelu is not None else qg_why

    clip_model, preprocess, tokenizer = _build(name, qg, **kw)
    with_text = True
    if weights_file is not None:
        what = f"checkpoint {weights_file}" if checkpoint is not None else f"{name} {label!r}"
        sd = read_state_dict(weights_file)
        if not text:  # the vision tower's weights only (loaded into clip_model.visual)
            sd = {k: v for k, v in sd.items() if k.startswith("visual.")} or sd
        with_text = load_weights(clip_model, sd, what)
        del sd
    return _finish(
        clip_model,
        preprocess,
        tokenizer,
        name=name,
        pretrained=label,
        device=device,
        extra=extra,
        with_text=with_text,
        text=text,
    )
