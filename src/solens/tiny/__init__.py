"""solens.tiny: the bundled model solens-tiny (a small CLIP trained on ``solens.synth``).

- ``solens.tiny.model``: architecture, preprocessing, loading (``load_tiny`` -> ``Model``,
  ``load_clip`` -> the trainable ``TinyCLIP``), saving;
- ``solens.tiny.config`` / ``data`` / ``droppath`` / ``loop``: training (``train``);
- ``solens.tiny.evaluate``: the model card's figures; ``solens.tiny.ship``: shipping.

``solens.load_model("solens-tiny")`` finds it through the ``solens.models`` entry point.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "load_tiny": "solens.tiny.model",
    "load_clip": "solens.tiny.model",
    "TinyCLIP": "solens.tiny.model",
    "TinyConfig": "solens.tiny.model",
    "TrainConfig": "solens.tiny.config",
    "train": "solens.tiny.loop",
    "evaluate": "solens.tiny.evaluate",
    "ship": "solens.tiny.ship",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'solens.tiny' has no attribute {name!r}")
