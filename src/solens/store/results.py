"""Result folders of the analyses (``RUN/ablate``, ``RUN/segment``, ``RUN/attack/<pair>``).

Each holds a ``manifest.json`` ``{"format", "version", "solens_version", "digest",
"settings"}`` where ``digest`` is the sha256 of the settings: a command given the same
settings takes the folder up again (its finished pieces are kept), other settings are
refused unless ``--restart`` replaces them (docs/run-format.md)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from solens import __version__
from solens.errors import InputError
from solens.store.arrays import save_json_atomic

MANIFEST = "manifest.json"


def settings_digest(settings: Any) -> str:
    """sha256 (hex) of a settings dataclass written as JSON with sorted keys."""
    return hashlib.sha256(json.dumps(asdict(settings), sort_keys=True).encode()).hexdigest()


def manifest_record(fmt: str, version: int, settings: Any) -> dict[str, Any]:
    """The manifest of a result folder: format, version, solens version, the settings and
    their digest."""
    return {"format": fmt, "version": version, "solens_version": __version__,
            "digest": settings_digest(settings), "settings": asdict(settings)}


def open_results(out: Path, fmt: str, version: int, settings: Any, *, restart: bool,
                 what: str, stale: Sequence[str] = ()) -> bool:
    """Create the result folder ``out`` or take it up again.

    Returns True when ``out`` already holds results of the same settings (the caller keeps
    its finished pieces), False when it was started afresh: the files matching the globs
    ``stale`` (relative to ``out``) are removed and the manifest is written. Raises
    ``InputError`` when ``out`` holds ``what`` of other settings and ``restart`` is false."""
    manifest = out / MANIFEST
    record = manifest_record(fmt, version, settings)
    if manifest.exists() and not restart:
        try:
            old = json.loads(manifest.read_text())
        except (OSError, ValueError):
            old = {}
        if isinstance(old, dict) and old.get("digest") == record["digest"]:
            return True
        raise InputError(f"{out} holds {what} of other settings; pass --restart to replace "
                         "them")
    out.mkdir(parents=True, exist_ok=True)
    for pattern in stale:
        for p in out.glob(pattern):
            if p.is_file():
                p.unlink()
    save_json_atomic(manifest, record)
    return False


__all__ = ["MANIFEST", "manifest_record", "open_results", "settings_digest"]
