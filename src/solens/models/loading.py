"""``load_model``: open_clip names + pretrained tags, hf-hub ids, local checkpoints, solens-tiny.

Weights never come from the network silently: a pretrained tag is used from the local
cache (open_clip's: the Hugging Face hub cache or ``~/.cache/clip``); when it is not there
and the machine is offline (``HF_HUB_OFFLINE=1`` or the host does not answer) loading
fails with one line that says where the weights would come from and how to pass a local
checkpoint instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import importlib.metadata
import json
import logging
import os
import socket
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from solens.errors import InputError, SolensError, UnknownModelError, UnsupportedModelError
from solens.models.model import SUPPORTED, Model

TINY = "solens-tiny"
_HF_PREFIX = "hf-hub:"
_LOCAL_PREFIX = "local-dir:"
# keys OpenAI TorchScript archives carry besides the parameters
_JIT_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


# --- names ---------------------------------------------------------------------------------
def bundled_models() -> dict[str, importlib.metadata.EntryPoint]:
    """Models that packages register under the entry-point group ``solens.models`` (name ->
    ``load(device=...) -> Model``): solens's own ``solens-tiny`` is one. Found through the
    installed metadata, so the loading layer imports no model package itself."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group="solens.models")}


def list_models() -> list[str]:
    """Every model name ``load_model`` accepts without a schema prefix."""
    import open_clip

    return [*open_clip.list_models(), TINY]


def list_pretrained_tags(name: str) -> list[str]:
    """open_clip's pretrained tags for the model ``name`` (may be empty)."""
    import open_clip

    return list(open_clip.list_pretrained_tags_by_model(name))


def _unknown_model(name: str) -> UnknownModelError:
    models = list_models()
    lower = {m.lower(): m for m in models}
    close = [lower[m] for m in difflib.get_close_matches(name.lower(), list(lower), n=5)]
    close += difflib.get_close_matches(name, models, n=5, cutoff=0.6)
    close = list(dict.fromkeys(close))[:5]
    hint = f"; did you mean: {', '.join(close)}?" if close else ""
    if Path(name).is_file():
        hint += f" ({name!r} is a file: pass it as checkpoint= together with its architecture name)"
    return UnknownModelError(
        f"unknown model {name!r}{hint} (all names: solens.models.loading.list_models())"
    )


def _model_config(name: str) -> dict[str, Any]:
    import open_clip

    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise _unknown_model(name)
    return cfg


def check_config_supported(name: str, cfg: dict[str, Any]) -> None:
    """Reject configs whose vision tower the lens cannot trace, before building them."""
    v = cfg.get("vision_cfg", {})
    reason = None
    if "timm_model_name" in v:
        reason = f"its vision tower is a timm model ({v['timm_model_name']})"
    elif isinstance(v.get("layers"), list | tuple):
        reason = "its vision tower is a ModifiedResNet"
    elif v.get("attentional_pool") or "multimodal_cfg" in cfg:
        reason = "its vision tower uses attentional pooling (CoCa)"
    elif v.get("pool_type", "tok") != "tok":
        reason = f"its vision tower uses {v['pool_type']!r} pooling instead of the CLS token"
    if reason:
        raise UnsupportedModelError(
            f"model {name!r} is not supported: {reason}; supported: {SUPPORTED}"
        )


# --- files ---------------------------------------------------------------------------------
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
        sd = load_state_dict(path, device="cpu", weights_only=True)
    except Exception as e:  # unreadable, unsafe pickle, truncated file, ...
        raise UnknownModelError(
            f"cannot read checkpoint {path}: {type(e).__name__}: {_first_line(e)}"
        ) from e
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UnknownModelError(f"checkpoint {path} does not hold a state dict of tensors")
    return sd


def _first_line(e: BaseException) -> str:
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

    visual_keys = set(clip_model.visual.state_dict())
    if set(sd) == visual_keys:
        sd = {f"visual.{k}": v for k, v in sd.items()}
    sd = convert_state_dict(clip_model, sd)
    if "positional_embedding" in sd and not hasattr(clip_model, "positional_embedding"):
        sd = convert_to_custom_text_state_dict(sd)
    resize_pos_embed(sd, clip_model)
    only_visual = all(k.startswith("visual.") for k in sd)
    target: nn.Module = clip_model.visual if only_visual else clip_model
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


# --- pretrained tags: cache lookup, offline detection --------------------------------------
def _offline() -> bool:
    def truthy(v: str | None) -> bool:
        return (v or "").strip().lower() in ("1", "true", "yes", "on")

    if truthy(os.environ.get("HF_HUB_OFFLINE")) or truthy(os.environ.get("SOLENS_OFFLINE")):
        return True
    with contextlib.suppress(Exception):
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    return False


def _reachable(host: str, timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hf_repo_file(cfg: dict[str, Any]) -> tuple[str, list[str]] | None:
    """(repo id, candidate file names) of a tag's Hugging Face hub location."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    hub = cfg.get("hf_hub", "")
    if not hub:
        return None
    repo, filename = os.path.split(hub)
    filename = filename or HF_WEIGHTS_NAME
    names = [filename]
    if filename == HF_WEIGHTS_NAME:
        names.insert(0, HF_SAFE_WEIGHTS_NAME)
    elif filename.endswith((".bin", ".pth")):
        names.insert(0, filename[:-4] + ".safetensors")
    return repo, names


def cached_weights(cfg: dict[str, Any]) -> str | None:
    """Local path of a pretrained tag's weights if open_clip's caches hold them."""
    if cfg.get("file"):
        return cfg["file"] if os.path.isfile(cfg["file"]) else None
    hf = _hf_repo_file(cfg)
    if hf is not None:
        with contextlib.suppress(Exception):
            from huggingface_hub import try_to_load_from_cache

            for fn in hf[1]:
                hit = try_to_load_from_cache(hf[0], fn)
                if isinstance(hit, str) and os.path.isfile(hit):
                    return hit
    url = cfg.get("url", "")
    if url:
        p = Path("~/.cache/clip").expanduser() / os.path.basename(url)
        if p.is_file():
            return str(p)
    return None


def _weights_source(cfg: dict[str, Any]) -> str:
    hf = _hf_repo_file(cfg)
    if hf is not None:
        return f"https://huggingface.co/{hf[0]} ({hf[1][-1]})"
    return cfg.get("url", "") or "unknown"


def _not_available(name: str, tag: str, cfg: dict[str, Any]) -> UnknownModelError:
    return UnknownModelError(
        f"weights for {name} pretrained={tag!r} are not available offline (not in the local "
        f"cache); download {_weights_source(cfg)} where there is network and pass the file "
        f"as checkpoint=PATH (CLI: --checkpoint PATH) with model {name!r}"
    )


def fetch_pretrained(name: str, tag: str, cfg: dict[str, Any]) -> str:
    """Path of a tag's weights: from the cache, else downloaded when the network answers."""
    from open_clip.pretrained import download_pretrained

    hit = cached_weights(cfg)
    if hit is not None:
        return hit
    if _offline():
        raise _not_available(name, tag, cfg)
    hf = _hf_repo_file(cfg)
    host = "huggingface.co" if hf is not None else (urlparse(cfg.get("url", "")).hostname or "")
    if not host or not _reachable(host):
        raise _not_available(name, tag, cfg)
    try:
        path = download_pretrained(cfg)
    except Exception as e:
        raise UnknownModelError(
            f"{_first_line(_not_available(name, tag, cfg))} (download failed: {_first_line(e)})"
        ) from None
    if not path or not os.path.isfile(path):
        raise _not_available(name, tag, cfg)
    return path


def _resolve_tag(name: str, tag: str) -> tuple[str, dict[str, Any]]:
    from open_clip.pretrained import _clean_tag, get_pretrained_cfg

    cfg = get_pretrained_cfg(name, tag)
    if cfg:
        return _clean_tag(tag), cfg
    tags = list_pretrained_tags(name)
    if not tags:
        raise UnknownModelError(
            f"model {name!r} has no pretrained tags in open_clip; use pretrained=None "
            "(random weights) or checkpoint=PATH"
        )
    close = difflib.get_close_matches(_clean_tag(tag), tags, n=3, cutoff=0.4)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise UnknownModelError(
        f"unknown pretrained tag {tag!r} for model {name!r}{hint}; valid tags: {', '.join(tags)}"
    )


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


def _network_error(e: BaseException) -> bool:
    text = f"{type(e).__name__} {e}".lower()
    needles = ("connect", "offline", "cached files", "local cache", "max retries", "timed out")
    return isinstance(e, OSError) or any(s in text for s in needles)


def _require_hf_text(name: str, cfg: dict[str, Any]) -> None:
    """Fail fast when a Hugging Face text tower/tokenizer is neither cached nor downloadable."""
    text = cfg.get("text_cfg", {})
    repos = {text[k] for k in ("hf_model_name", "hf_tokenizer_name") if text.get(k)}
    for repo in sorted(repos):
        hit = None
        with contextlib.suppress(Exception):
            from huggingface_hub import try_to_load_from_cache

            hit = try_to_load_from_cache(repo, "config.json")
        if not isinstance(hit, str) and (_offline() or not _reachable("huggingface.co")):
            raise UnknownModelError(
                f"model {name!r} needs the Hugging Face text model {repo!r}, which is not "
                "available offline (not in the Hugging Face cache)"
            )


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
) -> Model:
    model = Model.from_open_clip(
        clip_model, preprocess, tokenizer, name=name, pretrained=pretrained, source="open_clip"
    )
    if not with_text:
        model.text = None
    model.info = dataclasses.replace(model.info, extra={**model.info.extra, **extra})
    try:
        return model.to(device)
    except (RuntimeError, AssertionError) as e:  # e.g. "cuda" on a machine without CUDA
        raise InputError(f"cannot move the model to device {device!r}: {_first_line(e)}") from None


def _load_tiny(
    pretrained: str | None, checkpoint: Any, device: str | torch.device, quick_gelu: bool | None
) -> Model:
    if checkpoint is not None:
        raise UnknownModelError(f"{TINY} carries its own weights; checkpoint= is not accepted")
    load = bundled_models().get(TINY)
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
        raise UnsupportedModelError(f"{TINY} was trained with quick_gelu={model.info.quick_gelu}")
    return model


def _looks_like_path(s: str) -> bool:
    return os.sep in s or s.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))


def _load_schema(name: str, device: str | torch.device, quick_gelu: bool | None) -> Model:
    """``hf-hub:org/repo`` (from the hub cache when offline) or ``local-dir:/path``."""
    import open_clip

    build_name = name
    if name.startswith(_HF_PREFIX):
        repo = name[len(_HF_PREFIX) :]
        from open_clip.constants import HF_CONFIG_NAME

        hit = None
        with contextlib.suppress(Exception):
            from huggingface_hub import try_to_load_from_cache

            hit = try_to_load_from_cache(repo, HF_CONFIG_NAME)
        if isinstance(hit, str) and os.path.isfile(hit):
            # serve config + weights from the cached snapshot, without touching the network
            build_name = _LOCAL_PREFIX + str(Path(hit).parent)
        elif _offline() or not _reachable("huggingface.co"):
            raise UnknownModelError(
                f"{name} is not available offline (not in the Hugging Face cache); download the "
                f"repo's {HF_CONFIG_NAME} and weights where there is network, or pass "
                "checkpoint=PATH with an open_clip model name"
            )
    extra: dict[str, Any] = {"weights": "hf-hub" if name.startswith(_HF_PREFIX) else "local-dir"}
    label = name
    if build_name.startswith(_LOCAL_PREFIX):
        from open_clip.factory import _find_checkpoint_in_dir

        folder = Path(build_name[len(_LOCAL_PREFIX) :])
        cfg_file = folder / "open_clip_config.json"
        if not cfg_file.is_file():
            raise UnknownModelError(f"{name}: no open_clip_config.json in {folder}")
        cfg = json.loads(cfg_file.read_text()).get("model_cfg", {})
        check_config_supported(name, cfg)
        weights = _find_checkpoint_in_dir(folder) if folder.is_dir() else None
        if weights is None:
            offline = " (not available offline)" if name.startswith(_HF_PREFIX) else ""
            raise UnknownModelError(
                f"{name}: no weights file (*.safetensors, *.bin, *.pth) in {folder}{offline}"
            )
        sha = file_sha256(weights)
        label = f"checkpoint:{sha[:16]}"
        extra.update(location=str(folder), checkpoint=str(Path(weights).resolve()), sha256=sha)
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
    )


def load_model(
    name: str,
    pretrained: str | None = None,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    quick_gelu: bool | None = None,
) -> Model:
    """Load a CLIP model as a solens ``Model`` (eval mode, float32, on ``device``).

    - ``load_model("ViT-B-32", "openai")``: open_clip name + pretrained tag (weights from
      the local cache; see the module docstring for what happens offline).
    - ``load_model("ViT-B-32")``: random weights (``info.pretrained`` is None).
    - ``load_model("ViT-B-32", checkpoint="model.pt")``: a local file, open_clip state dict
      (``.pt/.bin/.pth``, possibly ``{"state_dict": ...}`` with ``module.`` prefixes),
      ``.safetensors``, or an OpenAI TorchScript archive; ``info.pretrained`` is
      ``"checkpoint:<sha256[:16]>"``; a vision-tower-only state dict gives a model without
      text encoder. ``pretrained=PATH`` is accepted as in open_clip.
    - ``load_model("hf-hub:org/repo")`` (served from the hub cache when it holds the repo)
      and ``load_model("local-dir:/path")`` (open_clip_config.json + a weights file);
      ``info.pretrained`` is ``"checkpoint:<sha256[:16]>"`` of the weights file.
    - ``load_model("solens-tiny")``: the bundled model.

    QuickGELU follows the weights (tag metadata, "-quickgelu" configs, OpenAI TorchScript
    archives use it); ``quick_gelu=`` overrides. ``info.extra`` records where the weights
    came from.
    """
    if name == TINY:
        return _load_tiny(pretrained, checkpoint, device, quick_gelu)
    if name.startswith((_HF_PREFIX, _LOCAL_PREFIX)):
        if pretrained is not None or checkpoint is not None:
            raise UnknownModelError(f"{name} carries its own weights; drop pretrained=/checkpoint=")
        return _load_schema(name, device, quick_gelu)
    name = name.replace("/", "-")
    if (
        pretrained is not None
        and checkpoint is None
        and (os.path.isfile(pretrained) or _looks_like_path(pretrained))
    ):
        checkpoint, pretrained = pretrained, None
    if pretrained is not None and checkpoint is not None:
        raise UnknownModelError("give either a pretrained tag or checkpoint=, not both")

    cfg = _model_config(name)
    check_config_supported(name, cfg)
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
    else:
        extra = {"weights": "random"}

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
        with_text = load_weights(clip_model, read_state_dict(weights_file), what)
    return _finish(
        clip_model,
        preprocess,
        tokenizer,
        name=name,
        pretrained=label,
        device=device,
        extra=extra,
        with_text=with_text,
    )
