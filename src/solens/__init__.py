"""solens: the second-order lens for CLIP vision transformers.

``import solens`` is light: the public names and every subpackage (``solens.synth``,
``solens.models``, ``solens.lens``, ``solens.store``, ``solens.describe``,
``solens.experiments``, ``solens.groundtruth``, ``solens.tiny``) load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from solens._lazy import lazy_getattr

__version__ = "0.1.0"

if TYPE_CHECKING:
    from solens.lens.second_order import second_order
    from solens.models.loading import load_model
    from solens.models.model import Model, ModelInfo

# public names -> defining module, imported on first use (keeps ``import solens`` light)
_LAZY = {
    "load_model": "solens.models.loading",
    "Model": "solens.models.model",
    "ModelInfo": "solens.models.model",
    "second_order": "solens.lens.second_order",
}
SUBPACKAGES = (
    "synth", "models", "lens", "store", "describe", "experiments", "groundtruth", "tiny",
)

__all__ = ["Model", "ModelInfo", "__version__", "load_model", "second_order", *SUBPACKAGES]


def __getattr__(name: str) -> Any:
    if name in SUBPACKAGES:
        return importlib.import_module(f"solens.{name}")
    return lazy_getattr("solens", _LAZY)(name)
