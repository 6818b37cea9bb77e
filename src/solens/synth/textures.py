"""Procedural background textures and surface patterns, cached per image size.

Every texture is generated once per ``size`` from a fixed seed, at ``2 * size`` so a
scene takes a crop at its own offset: the pixels of a scene depend only on its spec.
Background features that name the context (lane markings, bricks, planks, wave lines)
repeat with a period of at most ``size``, so every crop shows them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache

import numpy as np
from PIL import Image, ImageDraw

from solens.synth.world import BACKGROUNDS, PATTERNS

__all__ = ["background_texture", "pattern_texture"]

_Array = np.ndarray


def _grid(t: int) -> tuple[_Array, _Array]:
    y, x = np.mgrid[0:t, 0:t].astype(np.float32)
    return x, y


def _wrapped(size: int, draw_fn: Callable[[ImageDraw.ImageDraw, int, int], None]) -> _Array:
    """Draw on a ``size`` RGBA tile with wrap-around (features cross edges), tile 2x2."""
    tile = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(tile)
    for dx in (-size, 0, size):
        for dy in (-size, 0, size):
            draw_fn(d, dx, dy)
    arr = np.asarray(tile, dtype=np.float32)
    return np.tile(arr, (2, 2, 1))


def _over(base: _Array, layer: _Array) -> _Array:
    a = layer[..., 3:4] / 255.0
    return base * (1 - a) + layer[..., :3] * a


def _noise(rng: np.random.Generator, t: int, amp: float) -> _Array:
    return rng.normal(0, amp, (t, t, 1)).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, t: int, cells: int) -> _Array:
    """Low-frequency noise in [-1, 1] (bilinear upsampled random grid), shape [t, t, 1]."""
    g = rng.uniform(-1, 1, (cells + 1, cells + 1)).astype(np.float32)
    grid = Image.fromarray(((g + 1) * 127.5).astype(np.uint8))
    img = grid.resize((t, t), Image.Resampling.BILINEAR)
    return (np.asarray(img, dtype=np.float32) / 127.5 - 1)[..., None]


def _sky(s: int, rng: np.random.Generator) -> _Array:
    t = 2 * s
    _, y = _grid(t)
    f = (y / t)[..., None]
    top, bottom = np.array([70, 130, 220], np.float32), np.array([175, 210, 245], np.float32)
    base = top * (1 - f) + bottom * f
    k = s / 64
    clouds = [(rng.uniform(0, s), rng.uniform(0, s), rng.uniform(7, 11) * k) for _ in range(2)]

    def draw(d: ImageDraw.ImageDraw, dx: int, dy: int) -> None:
        for cx, cy, r in clouds:
            cx, cy = cx + dx, cy + dy
            for ox, oy, rr in ((0, 0, r), (-r, r * 0.3, r * 0.7), (r, r * 0.3, r * 0.75),
                               (0, r * 0.45, r * 0.8)):
                d.ellipse([cx + ox - rr, cy + oy - rr * 0.7, cx + ox + rr, cy + oy + rr * 0.7],
                          fill=(250, 250, 255, 235))

    return _over(base, _wrapped(s, draw)) + _noise(rng, t, 2)


def _sea(s: int, rng: np.random.Generator) -> _Array:
    t = 2 * s
    x, y = _grid(t)
    k = s / 64
    base = np.array([20, 85, 165], np.float32) + 25 * _smooth_noise(rng, t, 4)
    spacing, period = 8 * k, s / 4
    row = np.floor(y / spacing)
    phase = row * 1.7
    dist = np.mod(y - 1.6 * k * np.sin(2 * math.pi * x / period + phase), spacing)
    crest = (dist < 1.2 * k)[..., None]
    return np.where(crest, np.array([150, 200, 240], np.float32), base) + _noise(rng, t, 4)


def _grass(s: int, rng: np.random.Generator) -> _Array:
    t = 2 * s
    k = s / 64
    base = np.array([70, 150, 45], np.float32) + 18 * _smooth_noise(rng, t, 6)
    blades = [
        (rng.uniform(0, s), rng.uniform(0, s), rng.uniform(-2, 2) * k, rng.uniform(3, 6) * k,
         bool(rng.random() < 0.5))
        for _ in range(90)
    ]

    def draw(d: ImageDraw.ImageDraw, dx: int, dy: int) -> None:
        for bx, by, lean, h, light in blades:
            c = (120, 200, 80, 255) if light else (35, 100, 25, 255)
            d.line([bx + dx, by + dy, bx + dx + lean, by + dy - h], fill=c, width=max(1, int(k)))

    return _over(base, _wrapped(s, draw)) + _noise(rng, t, 5)


def _road(s: int, rng: np.random.Generator) -> _Array:
    t = 2 * s
    x, y = _grid(t)
    k = s / 64
    base = np.full((t, t, 3), 100, np.float32) + 10 * _smooth_noise(rng, t, 8)
    base += _noise(rng, t, 7)
    yy = np.mod(y, s)
    lane = (np.abs(yy - s / 2) < 1.5 * k) & (np.mod(x, s / 2) < s / 4)
    edge = (np.abs(yy - 3 * k) < 1.0 * k)
    out = np.where(lane[..., None], np.array([245, 215, 60], np.float32), base)
    return np.where(edge[..., None], np.array([235, 235, 235], np.float32), out)


def _sand(s: int, rng: np.random.Generator) -> _Array:
    t = 2 * s
    x, y = _grid(t)
    k = s / 64
    ripple = np.sin(2 * math.pi * (y + 2 * k * np.sin(2 * math.pi * x / (s / 2))) / (6 * k))
    base = np.array([225, 198, 145], np.float32) + 9 * ripple[..., None]
    base += 10 * _smooth_noise(rng, t, 5)
    speck = rng.random((t, t)) < 0.07
    base = np.where(speck[..., None], np.array([170, 140, 95], np.float32), base)
    return base + _noise(rng, t, 3)


def _snow(s: int, rng: np.random.Generator) -> _Array:
    t = 2 * s
    k = s / 64
    base = np.array([222, 233, 247], np.float32) + 12 * _smooth_noise(rng, t, 5)
    flakes = [(rng.uniform(0, s), rng.uniform(0, s), rng.uniform(0.6, 1.4) * k) for _ in range(40)]

    def draw(d: ImageDraw.ImageDraw, dx: int, dy: int) -> None:
        for fx, fy, r in flakes:
            box = [fx + dx - r, fy + dy - r, fx + dx + r, fy + dy + r]
            d.ellipse(box, fill=(255, 255, 255, 255))

    shade = rng.random((t, t)) < 0.05
    out = np.where(shade[..., None], np.array([180, 198, 225], np.float32), base)
    return _over(out, _wrapped(s, draw)) + _noise(rng, t, 2)


def _brick(s: int, rng: np.random.Generator) -> _Array:
    t = 2 * s
    x, y = _grid(t)
    bh, bw = s / 8, s / 4
    row = np.floor(y / bh)
    xs = x + (row % 2) * bw / 2
    col = np.floor(xs / bw)
    mortar = (np.mod(y, bh) < max(1.0, s / 64)) | (np.mod(xs, bw) < max(1.0, s / 64))
    ids = (row.astype(np.int64) % 8) * 64 + (col.astype(np.int64) % 8)
    tint = rng.uniform(-25, 25, 512).astype(np.float32)[ids]
    brick = np.array([170, 70, 45], np.float32) + tint[..., None] * np.array([1, 0.5, 0.4])
    out = np.where(mortar[..., None], np.array([205, 200, 190], np.float32), brick)
    return out + _noise(rng, t, 5)


def _wood(s: int, rng: np.random.Generator) -> _Array:
    t = 2 * s
    x, y = _grid(t)
    ph = s / 8
    row = np.floor(y / ph).astype(np.int64) % 8
    joint_x = rng.uniform(0, s, 8).astype(np.float32)[row]
    seam = (np.mod(y, ph) < max(1.0, s / 64)) | (np.abs(np.mod(x - joint_x, s)) < max(1.0, s / 64))
    tint = rng.uniform(-22, 22, 8).astype(np.float32)[row]
    grain = np.sin(2 * math.pi * (y * 0.9 + 1.5 * np.sin(x / (4 * s / 64) + row)) / (2.5 * s / 64))
    wood = np.array([175, 118, 66], np.float32) + (tint + 10 * grain)[..., None] * np.array(
        [1, 0.75, 0.5], np.float32
    )
    out = np.where(seam[..., None], np.array([90, 55, 25], np.float32), wood)
    return out + _noise(rng, t, 3)


_BACKGROUND_FNS = {
    "sky": _sky,
    "sea": _sea,
    "grass": _grass,
    "road": _road,
    "sand": _sand,
    "snow": _snow,
    "brick": _brick,
    "wood": _wood,
}
assert list(_BACKGROUND_FNS) == BACKGROUNDS


@cache
def background_texture(name: str, size: int) -> np.ndarray:
    """The ``[2*size, 2*size, 3]`` uint8 texture of background ``name`` (read-only)."""
    rng = np.random.default_rng([BACKGROUNDS.index(name), size, 7])
    arr = np.clip(_BACKGROUND_FNS[name](size, rng), 0, 255).astype(np.uint8)
    arr.setflags(write=False)
    return arr


@cache
def pattern_texture(name: str, size: int) -> np.ndarray:
    """The ``[2*size, 2*size]`` bool texture of surface pattern ``name`` (read-only)."""
    t = 2 * size
    x, y = _grid(t)
    k = max(1.0, size / 64)
    if name == "plain":
        m = np.zeros((t, t), bool)
    elif name == "stripes":
        m = np.mod(x + y, 6 * k) < 3 * k
    elif name == "dots":
        p = 6 * k
        xs = x + np.mod(np.floor(y / p), 2) * p / 2
        m = (np.mod(xs, p) - p / 2) ** 2 + (np.mod(y, p) - p / 2) ** 2 < (1.7 * k) ** 2
    elif name == "checks":
        m = (np.floor(x / (4 * k)) + np.floor(y / (4 * k))) % 2 == 1
    elif name == "waves":
        m = np.mod(y + 1.8 * k * np.sin(2 * math.pi * x / (10 * k)), 6 * k) < 2.5 * k
    elif name == "noise":
        rng = np.random.default_rng([size, 11])
        ki = max(1, round(k))
        small = rng.random((-(-t // ki), -(-t // ki))) < 0.35
        m = np.kron(small, np.ones((ki, ki), bool))[:t, :t]
    else:
        raise KeyError(f"unknown pattern {name!r}; valid: {PATTERNS}")
    m = np.ascontiguousarray(m)
    m.setflags(write=False)
    return m
