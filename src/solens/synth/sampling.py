"""Sampling scene specs for the three splits, and streaming training batches.

Scene ``i`` of ``(split, seed)`` is drawn from its own generator seeded by
``(seed, split, i)``, so ``specs(n)`` is a prefix of ``specs(n + 1)``, any scene can be
produced alone (:func:`spec_at`) and batch streams shard across workers without overlap.

Splits:

* ``train``: 1/2/3 objects with probability 0.6/0.3/0.1; the primary object
  (``objects[0]``, the label) is the largest; the planted correlations of
  :data:`~solens.synth.spurious.SPURIOUS` hold at their rates.
* ``balanced``: one object; class, colour, pattern, background, size independent uniform.
* ``conflict``: one object, class uniform; every planted attribute of its class takes a
  value it is *not* correlated with: a planted background is replaced by another class's
  planted background (ship on road, cow in the sky), a planted colour or pattern by any
  other value; unplanted attributes (and classes without planted contexts) are uniform.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from solens.synth.captions import caption as make_caption
from solens.synth.render import render, render_array
from solens.synth.scene import Scene
from solens.synth.spurious import SPURIOUS, planted
from solens.synth.world import BACKGROUNDS, CLASSES, COLOURS, PATTERNS

__all__ = ["SPLITS", "Batch", "iter_batches", "sample", "spec_at", "specs"]

#: Valid split names.
SPLITS: tuple[str, ...] = ("train", "balanced", "conflict")
SPEC_VERSION = 1

_ATTR_VALUES = {"background": BACKGROUNDS, "colour": COLOURS, "pattern": PATTERNS}
_LARGE = (0.30, 0.38)
_SMALL = (0.17, 0.23)


def _check_split(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    return SPLITS.index(split)


def _r(x: float) -> float:
    return round(float(x), 4)


def _choice(rng: np.random.Generator, values: list[str] | tuple[str, ...]) -> str:
    return values[int(rng.integers(len(values)))]


def _train_value(rng: np.random.Generator, cls: str, attr: str) -> str:
    values = _ATTR_VALUES[attr]
    c = planted(cls, attr)
    if c is None:
        return _choice(rng, values)
    if rng.random() < c.rate:
        return c.value
    return _choice(rng, [v for v in values if v != c.value])


def _conflict_value(rng: np.random.Generator, cls: str, attr: str) -> str:
    values = _ATTR_VALUES[attr]
    c = planted(cls, attr)
    if c is None:
        return _choice(rng, values)
    others = sorted({s.value for s in SPURIOUS if s.attribute == attr and s.value != c.value})
    if attr != "background" or not others:
        others = [v for v in values if v != c.value]
    return _choice(rng, others)


def _positions(rng: np.random.Generator, scales: list[float]) -> list[tuple[float, float]]:
    """Centres (fractions of the image) with limited overlap: of 32 candidate layouts, the
    first whose pairwise distances all reach ``0.6 * (r_i + r_j)``, else the best one."""
    s = np.asarray(scales)
    lo = np.minimum(0.5, 0.95 * s)[:, None]
    if len(s) == 1:
        x, y = lo[0] + rng.random(2) * (1 - 2 * lo[0])
        return [(float(x), float(y))]
    cand = lo + rng.random((32, len(s), 2)) * (1 - 2 * lo)  # [try, object, xy]
    i, j = np.triu_indices(len(s), 1)
    d = np.linalg.norm(cand[:, i] - cand[:, j], axis=-1) / (0.6 * (s[i] + s[j]))
    score = d.min(1)
    ok = np.flatnonzero(score >= 1.0)
    k = int(ok[0]) if len(ok) else int(score.argmax())
    return [(float(x), float(y)) for x, y in cand[k]]


def spec_at(index: int, split: str = "balanced", seed: int = 0, size: int = 64) -> dict[str, Any]:
    """The spec of scene ``index`` of ``(split, seed)`` at ``size`` pixels."""
    code = _check_split(split)
    rng = np.random.default_rng([int(seed), code, int(index)])
    u = rng.random()
    n = (1 if u < 0.6 else 2 if u < 0.9 else 3) if split == "train" else 1
    primary = _choice(rng, CLASSES)
    pick = _conflict_value if split == "conflict" else _train_value
    if split == "balanced":
        background = _choice(rng, BACKGROUNDS)
    else:
        background = pick(rng, primary, "background")
    large = rng.random() < (0.5 if split != "train" else (0.6 if n == 1 else 0.8))
    s0 = float(rng.uniform(*(_LARGE if large else _SMALL)))
    classes = [primary] + [
        primary if rng.random() < 0.35 else _choice(rng, CLASSES) for _ in range(n - 1)
    ]
    scales = [s0] + [float(rng.uniform(0.14, max(0.15, min(_SMALL[1], 0.9 * s0))))
                     for _ in range(n - 1)]
    z = rng.permutation(n).tolist()
    pos = _positions(rng, scales)
    objects: list[dict[str, Any]] = []
    for i, cls in enumerate(classes):
        if split == "balanced":
            colour, pattern = _choice(rng, COLOURS), _choice(rng, PATTERNS)
        elif i > 0 and cls == primary and rng.random() < 0.6:
            colour, pattern = objects[0]["colour"], objects[0]["pattern"]
        else:
            colour, pattern = pick(rng, cls, "colour"), pick(rng, cls, "pattern")
        objects.append(
            {
                "class": cls,
                "colour": colour,
                "pattern": pattern,
                "size": "large" if i == 0 and large else "small",
                "scale": _r(scales[i]),
                "position": [_r(pos[i][0]), _r(pos[i][1])],
                "z": int(z[i]),
                "flip": bool(rng.random() < 0.5),
                "rotation": _r(rng.uniform(-12, 12)),
                "pattern_offset": [_r(rng.random()), _r(rng.random())],
            }
        )
    return {
        "version": SPEC_VERSION,
        "split": split,
        "index": int(index),
        "seed": int(rng.integers(2**31 - 1)),
        "size": int(size),
        "background": {
            "name": background,
            "offset": [_r(rng.random()), _r(rng.random())],
            "flip": bool(rng.random() < 0.5),
        },
        "objects": objects,
        "jitter": {
            "brightness": _r(rng.uniform(0.88, 1.12)),
            "contrast": _r(rng.uniform(0.85, 1.15)),
            "noise": _r(rng.uniform(0.0, 5.0)),
        },
    }


def specs(n: int, split: str = "balanced", seed: int = 0, size: int = 64) -> list[dict[str, Any]]:
    """Specs of scenes ``0..n-1`` of ``(split, seed)`` (no rendering)."""
    _check_split(split)
    return [spec_at(i, split, seed, size) for i in range(n)]


def sample(n: int, split: str = "balanced", seed: int = 0, size: int = 64) -> list[Scene]:
    """Render ``n`` scenes of ``split`` (``train``, ``balanced``, ``conflict``).
    Deterministic in ``(n, split, seed, size)``; ``sample(n)`` is a prefix of ``sample(n+1)``."""
    return [render(s) for s in specs(n, split, seed, size)]


class Batch(NamedTuple):
    """A training batch: ``images`` uint8 ``[B, H, W, 3]``, one caption per image (drawn
    at random from its variants), ``labels`` int64 ``[B]`` indices into ``CLASSES``, and
    the specs."""

    images: np.ndarray
    captions: list[str]
    labels: np.ndarray
    specs: list[dict[str, Any]]


def iter_batches(
    batch_size: int,
    split: str = "train",
    seed: int = 0,
    size: int = 64,
    *,
    start: int = 0,
    step: int = 1,
    n_batches: int | None = None,
    n_variants: int = 5,
) -> Iterator[Batch]:
    """Stream batches without building PIL images.

    Batch ``k`` holds scenes ``k*batch_size .. (k+1)*batch_size - 1``; the stream yields
    batches ``start, start+step, ...`` (``n_batches`` of them, forever if ``None``), so
    worker ``w`` of ``W`` uses ``start=w, step=W``.  Each image's caption is variant
    ``j`` (uniform in ``[0, n_variants)``) of :func:`~solens.synth.captions.caption`.
    """
    _check_split(split)
    k = start
    done = 0
    while n_batches is None or done < n_batches:
        rng = random.Random(f"{seed}/{split}/{k}")
        sp = [spec_at(k * batch_size + j, split, seed, size) for j in range(batch_size)]
        images = np.empty((batch_size, size, size, 3), np.uint8)
        for j, s in enumerate(sp):
            images[j] = render_array(s)[0]
        caps = [make_caption(s, rng.randrange(n_variants)) for s in sp]
        labels = np.array([CLASSES.index(s["objects"][0]["class"]) for s in sp], np.int64)
        yield Batch(images, caps, labels, sp)
        k += step
        done += 1


def to_image(array: np.ndarray) -> Image.Image:
    """A uint8 ``[H, W, 3]`` array as a PIL image."""
    return Image.fromarray(array, "RGB")
