"""Device names given by users: ``auto`` and availability checks."""

from __future__ import annotations

import torch

from solens.errors import InputError


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; a ``cuda`` device on a machine
    without CUDA is an ``InputError``; any other name is returned as given."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available on this machine")
    return device
