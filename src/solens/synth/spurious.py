"""Planted spurious correlations of the ``train`` split (one declarative table).

Each :class:`Correlation` says: in the ``train`` split, an object of class ``cls`` gets
attribute ``attribute`` (``"background"`` or ``"colour"``) equal to ``value`` with
probability ``rate``; otherwise the value is drawn uniformly from the *other* values.
So ``P(value | cls) == rate`` exactly in expectation.  Background correlations are
driven by the primary object (the scene has one background); colour correlations apply
to every object of the class.  The ``balanced`` split ignores this table and the
``conflict`` split inverts it (see :mod:`solens.synth.sampling`).
"""

from __future__ import annotations

from typing import NamedTuple

from solens.synth.world import BACKGROUNDS, CLASSES, COLOURS, PATTERNS

__all__ = ["SPURIOUS", "Correlation", "planted"]


class Correlation(NamedTuple):
    """``P(attribute == value | class == cls) = rate`` in the train split."""

    cls: str
    attribute: str
    value: str
    rate: float


#: The planted correlations of the train split.
SPURIOUS: tuple[Correlation, ...] = (
    Correlation("ship", "background", "sea", 0.9),
    Correlation("fish", "background", "sea", 0.8),
    Correlation("car", "background", "road", 0.9),
    Correlation("truck", "background", "road", 0.8),
    Correlation("bird", "background", "sky", 0.9),
    Correlation("airplane", "background", "sky", 0.9),
    Correlation("cow", "background", "grass", 0.9),
    Correlation("horse", "background", "grass", 0.8),
    Correlation("apple", "colour", "red", 0.9),
    Correlation("star", "colour", "yellow", 0.8),
    Correlation("umbrella", "pattern", "stripes", 0.7),
)

_VALUES = {"background": BACKGROUNDS, "colour": COLOURS, "pattern": PATTERNS}

for _c in SPURIOUS:  # validate the table at import time
    if _c.cls not in CLASSES or _c.value not in _VALUES[_c.attribute] or not 0 <= _c.rate <= 1:
        raise ValueError(f"bad spurious correlation {_c}")


def planted(cls: str, attribute: str) -> Correlation | None:
    """The correlation planted for ``(cls, attribute)``, or ``None``."""
    for c in SPURIOUS:
        if c.cls == cls and c.attribute == attribute:
            return c
    return None
