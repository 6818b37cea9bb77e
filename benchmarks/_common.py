"""Pieces the benchmark scripts share (each script runs as ``python benchmarks/NAME.py``,
which puts this folder on the import path)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from solens.describe.describe import describe_run
from solens.models.model import Model
from solens.store import run_effects
from solens.store.run import Run


def load_average() -> list[float]:
    """The 1, 5 and 15-minute load averages, rounded (benchmarks record them: the machine is
    shared)."""
    return [round(x, 2) for x in os.getloadavg()]


def described_run(model: Model, spec: str, layers: Sequence[int], folder: Path, *,
                  k: int = 100, terms: int = 10) -> Run:
    """The run of ``model`` over ``spec`` in ``folder`` with every layer described over the
    ``world`` pool (computed or resumed; descriptions only where missing)."""
    run = run_effects(model, spec, list(layers), folder, progress=False)
    if len(list((run.path / "descriptions").glob("world-layer-*.json"))) < len(layers):
        describe_run(run, "world", model=model, n_terms=terms, k=k, progress=False)
    return run
