"""solens.tiny: the bundled model solens-tiny (a small CLIP trained on ``solens.synth``).

- ``solens.tiny.model``: architecture, preprocessing, loading (``load_tiny`` -> ``Model``,
  ``load_clip`` -> the trainable ``TinyCLIP``), saving;
- ``solens.tiny.config`` / ``data`` / ``droppath`` / ``loop``: training (``train``);
- ``solens.tiny.evaluate``: the model card's figures; ``solens.tiny.ship``: shipping.

``solens.load_model("solens-tiny")`` finds it through the ``solens.models`` entry point.
"""

from __future__ import annotations

from solens._lazy import lazy_getattr

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


__getattr__ = lazy_getattr("solens.tiny", _LAZY)
