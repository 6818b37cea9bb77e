"""Rendering a scene spec to pixels (PIL polygons on a small canvas + numpy compositing).

Pipeline: crop the cached background texture at the spec's offset; for each object in
z-order (back to front) draw its pictogram as a tone-label image, add a 1-pixel outline,
paint tones (body = colour x pattern), record ownership per pixel; finally apply the
photometric jitter.  Visible masks are read off the ownership map, so they are exactly the
pixels each object painted and that no object in front repainted.
"""

from __future__ import annotations

import math
import threading
from functools import cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from solens.synth import pictograms as pg
from solens.synth.captions import captions as make_captions
from solens.synth.scene import Scene
from solens.synth.textures import background_texture, pattern_texture
from solens.synth.world import COLOUR_RGB

__all__ = ["object_label_map", "render", "render_array"]

_FIXED_TONES = {
    pg.TONE_DARK: (35, 35, 38),
    pg.TONE_LIGHT: (236, 236, 230),
    pg.TONE_BROWN: (115, 70, 35),
    pg.TONE_GREEN: (45, 140, 45),
    pg.TONE_ORANGE: (245, 165, 30),
}
_TONE_PATTERN = 9  # body pixels where the pattern is on


@cache
def _palette(colour: str) -> np.ndarray:
    """``[10, 3]`` uint8 tone -> RGB table for an object of ``colour``."""
    c = np.array(COLOUR_RGB[colour], np.float32)
    lum = 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
    pal = np.zeros((10, 3), np.float32)
    pal[pg.TONE_BODY] = c
    for tone, rgb in _FIXED_TONES.items():
        pal[tone] = rgb
    if lum > 50:
        pal[pg.TONE_SHADE] = c * 0.7
        pal[_TONE_PATTERN] = c * 0.5
        pal[pg.TONE_OUTLINE] = (15, 15, 15)
    else:  # black: lighter shade/pattern, grey outline and darks
        pal[pg.TONE_SHADE] = (75, 75, 78)
        pal[_TONE_PATTERN] = (120, 120, 120)
        pal[pg.TONE_OUTLINE] = (150, 150, 150)
        pal[pg.TONE_DARK] = (95, 95, 100)
    out = pal.astype(np.uint8)
    out.setflags(write=False)
    return out


@cache
def _geometry(cls: str) -> tuple[np.ndarray, tuple[int, ...], tuple[int, ...]]:
    """All part points of a class concatenated, split offsets, tones."""
    parts = pg.PICTOGRAMS[cls]
    pts = np.concatenate([p for p, _ in parts]).astype(np.float64)
    bounds = tuple(np.cumsum([len(p) for p, _ in parts]).tolist())
    return pts, bounds, tuple(t for _, t in parts)


_CANVASES = threading.local()


def _canvas(size: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    """A reusable ``L`` canvas (cleared by the caller), one per thread: datasets render
    scenes in thread pools, and a canvas shared between threads mixes their drawings."""
    canvases = _CANVASES.__dict__.setdefault("by_size", {})
    if size not in canvases:
        im = Image.new("L", (size, size), 0)
        canvases[size] = (im, ImageDraw.Draw(im))
    return canvases[size]


@cache
def _noise_bank(size: int) -> np.ndarray:
    """Standard-normal noise ``[2*size, 2*size, 3]`` float32; scenes crop it at an offset
    derived from their seed (much faster than drawing fresh noise per image)."""
    rng = np.random.default_rng([size, 13])
    bank = rng.standard_normal((2 * size, 2 * size, 3), dtype=np.float32)
    bank.setflags(write=False)
    return bank


def _dilate(m: np.ndarray, r: int) -> np.ndarray:
    out = m.copy()
    for _ in range(r):
        d = out.copy()
        d[1:] |= out[:-1]
        d[:-1] |= out[1:]
        d[:, 1:] |= out[:, :-1]
        d[:, :-1] |= out[:, 1:]
        out = d
    return out


def object_label_map(obj: dict[str, Any], size: int) -> np.ndarray:
    """Tone-label map ``[size, size]`` uint8 of one object alone (0 = not the object,
    ``pictograms.TONE_*`` otherwise, outline included, pattern not applied)."""
    pts, bounds, tones = _geometry(obj["class"])
    p = pts.copy()
    if obj.get("flip", False):
        p[:, 0] *= -1
    a = math.radians(float(obj.get("rotation", 0.0)))
    if a:
        ca, sa = math.cos(a), math.sin(a)
        p = p @ np.array([[ca, sa], [-sa, ca]])
    r = float(obj["scale"]) * size
    cx, cy = (float(v) * size for v in obj["position"])
    p = p * r + (cx, cy)
    im, d = _canvas(size)
    d.rectangle((0, 0, size, size), fill=0)
    flat = p.ravel().tolist()
    start = 0
    for end, tone in zip(bounds, tones, strict=True):
        d.polygon(flat[2 * start : 2 * end], fill=tone)
        start = end
    lab = np.array(im)
    sil = lab > 0
    ring = _dilate(sil, max(1, size // 64)) & ~sil
    lab[ring] = pg.TONE_OUTLINE
    return lab


def render_array(spec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Render ``spec`` to ``(image, owner)``: uint8 ``[H, W, 3]`` and int8 ``[H, W]``
    (index into ``spec["objects"]`` of the object visible at each pixel, -1 = background).
    Pure function of the spec."""
    size = int(spec["size"])
    bg = spec["background"]
    tex = background_texture(bg["name"], size)
    ox, oy = (int(float(v) * size) % size for v in bg["offset"])
    img = tex[oy : oy + size, ox : ox + size]
    img = img[:, ::-1].copy() if bg.get("flip", False) else img.copy()
    owner = np.full((size, size), -1, np.int8)
    objects = spec["objects"]
    order = sorted(range(len(objects)), key=lambda i: (objects[i].get("z", i), i))
    for i in order:
        obj = objects[i]
        lab = object_label_map(obj, size)
        if obj.get("pattern", "plain") != "plain":
            pat = pattern_texture(obj["pattern"], size)
            px, py = (int(float(v) * size) % size for v in obj.get("pattern_offset", (0, 0)))
            on = pat[py : py + size, px : px + size] & (lab == pg.TONE_BODY)
            lab[on] = _TONE_PATTERN
        m = lab > 0
        img[m] = _palette(obj["colour"])[lab[m]]
        owner[m] = i
    jit = spec.get("jitter")
    if jit:
        # out = ((img - mean) * contrast + mean) * brightness + noise * sigma
        c, b, sigma = float(jit["contrast"]), float(jit["brightness"]), float(jit["noise"])
        mean = float(img.sum(dtype=np.int64)) / img.size
        f = img.astype(np.float32)
        f *= c * b
        f += mean * (1 - c) * b + 0.5
        if sigma > 0:
            seed = int(spec["seed"])
            nx, ny = seed % size, (seed // size) % size
            f += _noise_bank(size)[ny : ny + size, nx : nx + size] * np.float32(sigma)
        np.clip(f, 0, 255, out=f)
        img = f.astype(np.uint8)
    return img, owner


def render(spec: dict[str, Any]) -> Scene:
    """Render a spec to a :class:`Scene` (image, label, visible masks, captions).
    Deterministic: the same spec gives identical pixels.  A spec without objects renders
    the bare background (label ``""``)."""
    img, owner = render_array(spec)
    masks = {i: owner == i for i in range(len(spec["objects"]))}
    return Scene(
        image=Image.fromarray(img, "RGB"),
        label=spec["objects"][0]["class"] if spec["objects"] else "",
        masks=masks,
        spec=spec,
        captions=make_captions(spec),
    )
