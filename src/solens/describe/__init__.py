"""solens.describe: per-neuron statistics, text pools, sparse text decompositions (OMP),
descriptions of a run's neurons. See docs/describe.md (ground-truth scoring:
``solens.groundtruth``).

Names are imported on first use (``import solens.describe`` stays light); the OMP
function is ``solens.describe.omp.omp`` (``solens.describe.omp`` is its module).
"""

from __future__ import annotations

from solens._lazy import lazy_getattr

_LAZY = {
    "NeuronStats": "solens.describe.stats",
    "compute_stats": "solens.describe.stats",
    "load_stats": "solens.describe.stats",
    "Pool": "solens.describe.pools",
    "load_pool": "solens.describe.pools",
    "embed_pool": "solens.describe.pools",
    "OMPResult": "solens.describe.omp",
    "prepare_dictionary": "solens.describe.omp",
    "describe_run": "solens.describe.describe",
    "load_descriptions": "solens.describe.describe",
    "neuron_report": "solens.describe.describe",
}

__all__ = sorted(_LAZY)


__getattr__ = lazy_getattr("solens.describe", _LAZY)
