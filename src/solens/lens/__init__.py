"""Decompositions of f(I): direct, second-order (factorised) and brute-force references."""

from solens.lens.second_order import (
    LayerCoeffs,
    cached_directions,
    clear_directions_cache,
    coefficients,
    directions,
    effects,
    norms,
    project,
    second_order,
    token_projections,
    trace_names,
)

__all__ = [
    "LayerCoeffs",
    "cached_directions",
    "clear_directions_cache",
    "coefficients",
    "directions",
    "effects",
    "norms",
    "project",
    "second_order",
    "token_projections",
    "trace_names",
]
