"""solens.atlas: a static HTML atlas of a run's described neurons (``build_atlas``).

An index of every described neuron (filter by layer, search by word, sort), one page per
neuron (description terms, top images with per-patch second-order heatmaps, histogram of
centred norms with tau_n, nearest neurons by r_n) and pages for the outputs of
``solens ablate`` / ``segment`` / ``attack`` / ``discover`` where the run has them. The site
works from ``file://`` (no server, no network). See docs/atlas.md.
"""

from __future__ import annotations

from solens._lazy import lazy_getattr

_LAZY = {
    "AtlasResult": "solens.atlas.build",
    "build_atlas": "solens.atlas.build",
    "patch_contributions": "solens.atlas.heatmaps",
}

__all__ = sorted(_LAZY)

__getattr__ = lazy_getattr("solens.atlas", _LAZY)
