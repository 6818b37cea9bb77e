"""Pictogram geometry: every class is a list of filled polygons in unit coordinates.

Coordinates: ``x`` right, ``y`` down, the object roughly fills ``[-1, 1]^2`` and faces
right.  Each part carries a *tone*: which colour it is painted with (see ``TONE_*``);
later parts overwrite earlier ones, tone ``TONE_HOLE`` erases (a hole shows what lies
behind the object).
"""

from __future__ import annotations

import math

import numpy as np

from solens.synth.world import CLASSES

__all__ = [
    "PICTOGRAMS",
    "TONE_BODY",
    "TONE_BROWN",
    "TONE_DARK",
    "TONE_GREEN",
    "TONE_HOLE",
    "TONE_LIGHT",
    "TONE_ORANGE",
    "TONE_OUTLINE",
    "TONE_SHADE",
    "Part",
]

TONE_HOLE = 0  #: erase: not part of the object
TONE_BODY = 1  #: object colour x pattern
TONE_SHADE = 2  #: object colour, darker (or lighter for black)
TONE_DARK = 3  #: fixed near-black (wheels, eyes, hands)
TONE_LIGHT = 4  #: fixed near-white (windows, eye whites)
TONE_BROWN = 5  #: fixed brown (trunks, stems, doors)
TONE_GREEN = 6  #: fixed leaf green (stems, leaves)
TONE_ORANGE = 7  #: fixed orange (beaks)
TONE_OUTLINE = 8  #: silhouette outline, added by the renderer

Part = tuple[np.ndarray, int]  # (points [k, 2] float, tone)

_B, _S, _D, _L, _W, _G, _O = (
    TONE_BODY,
    TONE_SHADE,
    TONE_DARK,
    TONE_LIGHT,
    TONE_BROWN,
    TONE_GREEN,
    TONE_ORANGE,
)


def _poly(pts: list[tuple[float, float]], tone: int) -> Part:
    return np.asarray(pts, dtype=np.float64), tone


def _ell(cx: float, cy: float, rx: float, ry: float, tone: int, n: int = 20) -> Part:
    a = np.linspace(0, 2 * math.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(a), cy + ry * np.sin(a)], 1), tone


def _circ(cx: float, cy: float, r: float, tone: int) -> Part:
    return _ell(cx, cy, r, r, tone)


def _rect(x0: float, y0: float, x1: float, y1: float, tone: int) -> Part:
    return _poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], tone)


def _line(x0: float, y0: float, x1: float, y1: float, w: float, tone: int) -> Part:
    dx, dy = x1 - x0, y1 - y0
    n = math.hypot(dx, dy) or 1.0
    nx, ny = -dy / n * w / 2, dx / n * w / 2
    pts = [(x0 + nx, y0 + ny), (x1 + nx, y1 + ny), (x1 - nx, y1 - ny), (x0 - nx, y0 - ny)]
    return _poly(pts, tone)


def _arc(
    cx: float, cy: float, r: float, a0: float, a1: float, w: float, tone: int, n: int = 12
) -> Part:
    """A thick circular arc from angle ``a0`` to ``a1`` (degrees, y down)."""
    a = np.radians(np.linspace(a0, a1, n))
    outer = np.stack([cx + (r + w / 2) * np.cos(a), cy + (r + w / 2) * np.sin(a)], 1)
    inner = np.stack([cx + (r - w / 2) * np.cos(a), cy + (r - w / 2) * np.sin(a)], 1)
    return np.concatenate([outer, inner[::-1]]), tone


def _star(r_out: float, r_in: float, tone: int) -> Part:
    pts = []
    for k in range(10):
        r = r_out if k % 2 == 0 else r_in
        a = -math.pi / 2 + k * math.pi / 5
        pts.append((r * math.cos(a), r * math.sin(a) + 0.08))
    return _poly(pts, tone)


def _car() -> list[Part]:
    return [
        _poly(
            [(-1, 0.42), (-1, -0.08), (-0.55, -0.14), (-0.32, -0.55), (0.32, -0.55),
             (0.58, -0.14), (1, -0.06), (1, 0.42)],
            _B,
        ),
        _poly([(-0.24, -0.46), (-0.03, -0.46), (-0.03, -0.16), (-0.43, -0.16)], _L),
        _poly([(0.05, -0.46), (0.27, -0.46), (0.46, -0.16), (0.05, -0.16)], _L),
        _rect(0.86, -0.02, 1.0, 0.1, _O),
        _circ(-0.55, 0.42, 0.27, _D),
        _circ(0.55, 0.42, 0.27, _D),
        _circ(-0.55, 0.42, 0.1, _L),
        _circ(0.55, 0.42, 0.1, _L),
    ]


def _truck() -> list[Part]:
    return [
        _rect(-1, -0.72, 0.28, 0.38, _B),
        _poly([(0.36, 0.38), (0.36, -0.4), (0.74, -0.4), (1, -0.02), (1, 0.38)], _B),
        _poly([(0.46, -0.3), (0.7, -0.3), (0.88, -0.04), (0.46, -0.04)], _L),
        _rect(-1, 0.32, 1, 0.46, _D),
        _circ(-0.72, 0.5, 0.2, _D),
        _circ(-0.3, 0.5, 0.2, _D),
        _circ(0.68, 0.5, 0.2, _D),
        _circ(-0.72, 0.5, 0.07, _L),
        _circ(-0.3, 0.5, 0.07, _L),
        _circ(0.68, 0.5, 0.07, _L),
    ]


def _ship() -> list[Part]:
    return [
        _rect(0.02, -0.8, 0.28, -0.25, _B),
        _rect(0.02, -0.8, 0.28, -0.62, _D),
        _rect(-0.55, -0.32, 0.45, 0.12, _S),
        _poly([(-1, 0.08), (1, 0.08), (0.72, 0.62), (-0.78, 0.62)], _B),
        _circ(-0.35, -0.1, 0.08, _L),
        _circ(-0.1, -0.1, 0.08, _L),
        _circ(0.15, -0.1, 0.08, _L),
        _rect(-0.78, 0.5, 0.72, 0.62, _D),
    ]


def _airplane() -> list[Part]:
    return [
        _poly(
            [(0.32, -0.08), (-0.12, -1.0), (-0.34, -1.0), (-0.16, -0.08),
             (-0.16, 0.08), (-0.34, 1.0), (-0.12, 1.0), (0.32, 0.08)],
            _B,
        ),
        _poly(
            [(-0.72, -0.05), (-0.9, -0.42), (-1.0, -0.42), (-0.94, -0.05),
             (-0.94, 0.05), (-1.0, 0.42), (-0.9, 0.42), (-0.72, 0.05)],
            _B,
        ),
        _ell(0.02, 0, 0.98, 0.15, _B),
        _poly([(0.7, -0.07), (0.86, -0.04), (0.86, 0.04), (0.7, 0.07)], _L),
        _rect(-0.05, -0.62, 0.12, -0.52, _S),
        _rect(-0.05, 0.52, 0.12, 0.62, _S),
    ]


def _bird() -> list[Part]:
    return [
        _line(-0.08, 0.45, -0.14, 0.88, 0.07, _D),
        _line(0.12, 0.45, 0.1, 0.88, 0.07, _D),
        _poly([(-0.5, 0.05), (-1, -0.3), (-1, 0.22), (-0.55, 0.32)], _B),
        _ell(-0.05, 0.15, 0.6, 0.38, _B),
        _circ(0.52, -0.25, 0.3, _B),
        _poly([(0.76, -0.34), (1.0, -0.2), (0.76, -0.12)], _O),
        _poly([(-0.5, 0.0), (0.2, -0.05), (0.05, 0.25), (-0.45, 0.2)], _S),
        _circ(0.6, -0.31, 0.07, _D),
    ]


def _fish() -> list[Part]:
    return [
        _poly([(-0.1, -0.38), (0.18, -0.72), (0.35, -0.38)], _S),
        _poly([(-0.45, 0.0), (-1.0, -0.55), (-0.95, 0.0), (-1.0, 0.55)], _B),
        _ell(0.1, 0, 0.65, 0.45, _B),
        _arc(0.6, 0.0, 0.45, 150, 210, 0.06, _S),
        _circ(0.48, -0.1, 0.12, _L),
        _circ(0.5, -0.1, 0.06, _D),
    ]


def _cat() -> list[Part]:
    return [
        _poly([(-0.78, -0.05), (-0.68, -0.98), (-0.18, -0.52)], _B),
        _poly([(0.78, -0.05), (0.68, -0.98), (0.18, -0.52)], _B),
        _poly([(-0.62, -0.25), (-0.6, -0.78), (-0.32, -0.5)], _S),
        _poly([(0.62, -0.25), (0.6, -0.78), (0.32, -0.5)], _S),
        _ell(0, 0.12, 0.8, 0.68, _B),
        _ell(-0.3, -0.05, 0.15, 0.13, _L),
        _ell(0.3, -0.05, 0.15, 0.13, _L),
        _ell(-0.3, -0.05, 0.05, 0.12, _D),
        _ell(0.3, -0.05, 0.05, 0.12, _D),
        _poly([(-0.1, 0.22), (0.1, 0.22), (0, 0.34)], _D),
        _line(-0.22, 0.36, -1.0, 0.26, 0.04, _D),
        _line(-0.22, 0.42, -1.0, 0.5, 0.04, _D),
        _line(0.22, 0.36, 1.0, 0.26, 0.04, _D),
        _line(0.22, 0.42, 1.0, 0.5, 0.04, _D),
    ]


def _dog() -> list[Part]:
    return [
        _ell(0, -0.05, 0.62, 0.68, _B),
        _ell(-0.66, 0.02, 0.26, 0.58, _S),
        _ell(0.66, 0.02, 0.26, 0.58, _S),
        _ell(0, 0.42, 0.38, 0.3, _L),
        _ell(0, 0.28, 0.16, 0.11, _D),
        _circ(-0.26, -0.18, 0.09, _D),
        _circ(0.26, -0.18, 0.09, _D),
        _line(0, 0.36, 0, 0.52, 0.05, _D),
        _ell(0, 0.66, 0.12, 0.1, _O),
    ]


def _horse() -> list[Part]:
    legs = [
        _rect(x, 0.12, x + 0.11, 0.9, _B) for x in (-0.68, -0.5, 0.14, 0.3)
    ] + [_rect(x, 0.86, x + 0.11, 0.98, _D) for x in (-0.68, -0.5, 0.14, 0.3)]
    return [
        _poly([(-0.7, -0.12), (-1.0, 0.5), (-0.86, 0.52), (-0.64, 0.0)], _S),
        *legs,
        _ell(-0.18, 0, 0.6, 0.3, _B),
        _poly([(0.18, -0.18), (0.5, -0.8), (0.74, -0.68), (0.44, 0.06)], _B),
        _poly([(0.5, -0.86), (0.98, -0.5), (0.88, -0.36), (0.48, -0.56)], _B),
        _poly([(0.5, -0.82), (0.28, -0.35), (0.18, -0.2), (0.4, -0.75)], _S),
        _poly([(0.55, -0.86), (0.58, -1.0), (0.66, -0.82)], _B),
        _circ(0.68, -0.62, 0.05, _D),
    ]


def _cow() -> list[Part]:
    legs = [_rect(x, 0.2, x + 0.17, 0.72, _B) for x in (-0.74, -0.5, 0.06, 0.28)] + [
        _rect(x, 0.66, x + 0.17, 0.78, _D) for x in (-0.74, -0.5, 0.06, 0.28)
    ]
    return [
        _line(-0.78, -0.2, -0.95, 0.35, 0.05, _D),
        _ell(-0.95, 0.38, 0.06, 0.1, _D),
        *legs,
        _rect(-0.8, -0.38, 0.5, 0.3, _B),
        _ell(-0.4, -0.12, 0.18, 0.14, _S),
        _ell(0.08, 0.05, 0.2, 0.15, _S),
        _ell(0.38, 0.28, 0.12, 0.08, _L),
        _poly([(0.52, -0.62), (0.6, -0.88), (0.66, -0.6)], _L),
        _poly([(0.8, -0.6), (0.9, -0.88), (0.94, -0.58)], _L),
        _ell(0.74, -0.32, 0.26, 0.32, _B),
        _ell(0.4, -0.5, 0.14, 0.07, _S),
        _ell(0.82, -0.08, 0.2, 0.14, _L),
        _circ(0.78, -0.38, 0.05, _D),
    ]


def _tree() -> list[Part]:
    return [
        _poly([(-0.16, 1.0), (-0.1, 0.1), (0.1, 0.1), (0.16, 1.0)], _W),
        _circ(0, -0.42, 0.52, _B),
        _circ(-0.45, -0.05, 0.42, _B),
        _circ(0.45, -0.05, 0.42, _B),
        _circ(0, 0.12, 0.4, _B),
    ]


def _flower() -> list[Part]:
    petals = [
        _circ(0.36 * math.cos(a), -0.38 + 0.36 * math.sin(a), 0.26, _B)
        for a in np.linspace(0, 2 * math.pi, 6, endpoint=False) + math.pi / 2
    ]
    return [
        _rect(-0.05, -0.2, 0.05, 1.0, _G),
        _ell(-0.26, 0.58, 0.24, 0.09, _G),
        _ell(0.26, 0.4, 0.24, 0.09, _G),
        *petals,
        _circ(0, -0.38, 0.2, _W),
    ]


def _house() -> list[Part]:
    return [
        _rect(0.42, -0.8, 0.62, -0.3, _S),
        _rect(-0.72, -0.12, 0.72, 0.92, _B),
        _poly([(-0.98, -0.06), (0, -0.9), (0.98, -0.06)], _S),
        _rect(-0.16, 0.38, 0.16, 0.92, _W),
        _rect(-0.56, 0.08, -0.28, 0.36, _L),
        _rect(0.28, 0.08, 0.56, 0.36, _L),
    ]


def _umbrella() -> list[Part]:
    a = np.radians(np.linspace(180, 360, 17))
    dome = np.stack([np.cos(a), -0.05 + 0.82 * np.sin(a)], 1)
    return [
        _line(0, -0.05, 0, 0.72, 0.09, _D),
        _arc(-0.18, 0.72, 0.18, 0, 180, 0.09, _D),
        (dome, _B),
        _line(0, -0.87, -0.5, -0.05, 0.05, _S),
        _line(0, -0.87, 0.5, -0.05, 0.05, _S),
        _line(0, -0.87, 0, -0.05, 0.05, _S),
        _line(0, -0.87, 0, -1.0, 0.07, _D),
    ]


def _key() -> list[Part]:
    return [
        _rect(-0.3, -0.1, 1.0, 0.1, _B),
        _rect(0.58, 0.08, 0.7, 0.36, _B),
        _rect(0.8, 0.08, 0.92, 0.28, _B),
        _circ(-0.6, 0, 0.4, _B),
        _circ(-0.6, 0, 0.17, TONE_HOLE),
    ]


def _cup() -> list[Part]:
    return [
        _ell(-0.1, 0.66, 0.85, 0.13, _L),
        _ell(0.42, 0.02, 0.34, 0.32, _B),
        _ell(0.42, 0.02, 0.16, 0.15, TONE_HOLE),
        _poly([(-0.62, -0.5), (0.42, -0.5), (0.3, 0.62), (-0.5, 0.62)], _B),
        _ell(-0.1, -0.5, 0.52, 0.1, _W),
    ]


def _clock() -> list[Part]:
    ticks = [
        _line(0.62 * math.cos(a), 0.62 * math.sin(a), 0.74 * math.cos(a), 0.74 * math.sin(a),
              0.08, _D)
        for a in np.linspace(0, 2 * math.pi, 12, endpoint=False)
    ]
    return [
        _circ(0, 0, 1.0, _B),
        _circ(0, 0, 0.8, _L),
        *ticks,
        _line(0, 0, 0, -0.58, 0.09, _D),
        _line(0, 0, 0.38, 0.12, 0.11, _D),
        _circ(0, 0, 0.09, _D),
    ]


def _star_() -> list[Part]:
    return [_star(1.0, 0.42, _B)]


def _heart() -> list[Part]:
    return [
        _circ(-0.46, -0.32, 0.5, _B),
        _circ(0.46, -0.32, 0.5, _B),
        _poly([(-0.94, -0.2), (0.94, -0.2), (0, 0.92)], _B),
        _ell(-0.5, -0.45, 0.14, 0.09, _L),
    ]


def _apple() -> list[Part]:
    return [
        _line(0.0, -0.5, 0.1, -0.92, 0.09, _W),
        _poly([(0.1, -0.7), (0.42, -0.95), (0.62, -0.78), (0.3, -0.62)], _G),
        _circ(-0.28, 0.12, 0.66, _B),
        _circ(0.28, 0.12, 0.66, _B),
        _ell(-0.45, -0.1, 0.12, 0.2, _L),
    ]


#: Class name -> list of parts (drawn in order).
PICTOGRAMS: dict[str, list[Part]] = {
    "car": _car(),
    "truck": _truck(),
    "ship": _ship(),
    "airplane": _airplane(),
    "bird": _bird(),
    "fish": _fish(),
    "cat": _cat(),
    "dog": _dog(),
    "horse": _horse(),
    "cow": _cow(),
    "tree": _tree(),
    "flower": _flower(),
    "house": _house(),
    "umbrella": _umbrella(),
    "key": _key(),
    "cup": _cup(),
    "clock": _clock(),
    "star": _star_(),
    "heart": _heart(),
    "apple": _apple(),
}

assert list(PICTOGRAMS) == CLASSES
