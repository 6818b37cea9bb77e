"""Where pretrained weights come from: the local caches, the network, hub repos, folders.

Weights never come from the network silently: a pretrained tag is used from the local
cache (open_clip's: the Hugging Face hub cache or ``~/.cache/clip``); when it is not there
and the machine is offline (``HF_HUB_OFFLINE=1`` or the host does not answer) loading
fails with one line that says where the weights would come from and how to pass a local
checkpoint instead. ``hf-hub:org/repo`` names are served from the hub cache when it holds
the repo; ``local-dir:/path`` names from a folder with ``open_clip_config.json``.

open_clip and huggingface_hub are imported inside the functions that need them: they are
heavy, and ``import solens`` should stay light.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from solens.errors import UnknownModelError
from solens.models.checkpoints import _first_line, file_sha256
from solens.models.names import _HF_PREFIX, _LOCAL_PREFIX, check_config_supported


# --- offline detection ---------------------------------------------------------------------
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


# --- pretrained tags: cache lookup, download -----------------------------------------------
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
    """Where a pretrained tag's weights are downloaded from (for records and messages)."""
    hf = _hf_repo_file(cfg)
    if hf is not None:
        return f"https://huggingface.co/{hf[0]} ({hf[1][-1]})"
    return cfg.get("url", "") or "unknown"


def _not_available(name: str, tag: str, cfg: dict[str, Any]) -> UnknownModelError:
    return UnknownModelError(
        f"weights for {name} pretrained={tag!r} are not available offline (not in the local "
        f"cache); download {_weights_source(cfg)} where there is network and pass the file "
        f"with --model {name} --checkpoint PATH (Python: checkpoint=PATH)"
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


# --- hf-hub: and local-dir: names ----------------------------------------------------------
def resolve_schema(name: str) -> tuple[str, str, dict[str, Any]]:
    """``hf-hub:org/repo`` or ``local-dir:/path`` -> (name to build, label, extra).

    An ``hf-hub:`` repo in the hub cache becomes ``local-dir:`` of its cached snapshot (no
    network); one that is not cached stays ``hf-hub:`` (open_clip downloads it) when the
    hub answers, else ``UnknownModelError``. For a folder, the config is checked and the
    weights file hashed: the label is ``"checkpoint:<sha256[:16]>"``; otherwise it is
    ``name``. ``extra`` records where the weights came from.
    """
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
                f"repo's {HF_CONFIG_NAME} and weights where there is network and pass the "
                "folder as --model local-dir:FOLDER, or the weights with an open_clip --model "
                "NAME and --checkpoint PATH (Python: checkpoint=PATH)"
            )
    extra: dict[str, Any] = {"weights": "hf-hub" if name.startswith(_HF_PREFIX) else "local-dir"}
    label = name
    if build_name.startswith(_LOCAL_PREFIX):
        from open_clip.factory import _find_checkpoint_in_dir

        folder = Path(build_name[len(_LOCAL_PREFIX) :])
        cfg_file = folder / "open_clip_config.json"
        if not cfg_file.is_file():
            raise UnknownModelError(f"{name}: no open_clip_config.json in {folder}")
        try:
            cfg = json.loads(cfg_file.read_text()).get("model_cfg", {})
        except (ValueError, AttributeError) as e:  # not JSON, or not a JSON object
            raise UnknownModelError(f"{name}: cannot read {cfg_file}: {_first_line(e)}") from None
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
    return build_name, label, extra
