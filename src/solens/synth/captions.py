"""Captions for scene specs: varied English templates that always agree with the spec.

Rules that make captions truthful: a class word (canonical or synonym, plural when the
class appears more than once) names every mentioned group of same-class objects; the
count word (``two``/``three``) is the exact number of objects of that class; an
attribute (size, colour, pattern) is mentioned for a group only when all its objects
share it; the background phrase names the spec's background.  Caption ``k`` is a pure
function of ``(spec, k)``; caption 0 is the fullest.
"""

from __future__ import annotations

import random
from typing import Any

from solens.synth.world import COUNTS, concept, plural

__all__ = ["BACKGROUND_NOUNS", "BACKGROUND_PHRASES", "caption", "captions"]

#: Background id -> prepositional phrases (the first is used by the fullest caption).
BACKGROUND_PHRASES: dict[str, tuple[str, ...]] = {
    "sky": ("in the sky", "against the sky", "in the air", "up in the sky"),
    "sea": ("in the sea", "on the sea", "in the ocean", "on the water", "in the water"),
    "grass": ("on the grass", "on grass", "on a lawn", "in a meadow"),
    "road": ("on a road", "on the road", "on the street", "on a highway"),
    "sand": ("on the sand", "on a beach", "in the desert", "on sand"),
    "snow": ("in the snow", "on the snow", "on a snowfield"),
    "brick": ("in front of a brick wall", "against a brick wall", "by a wall of bricks"),
    "wood": ("on a wooden floor", "on the wooden floor", "on a wood floor", "on the floorboards"),
}
#: Background id -> noun phrases for "<background> with <objects>" templates.
BACKGROUND_NOUNS: dict[str, tuple[str, ...]] = {
    "sky": ("the sky", "a cloudy sky"),
    "sea": ("the sea", "the ocean"),
    "grass": ("a lawn", "a meadow", "the grass"),
    "road": ("a road", "a street"),
    "sand": ("a beach", "the desert", "the sand"),
    "snow": ("the snow", "a snowfield"),
    "brick": ("a brick wall",),
    "wood": ("a wooden floor", "the floorboards"),
}

_TEMPLATES = (
    "{o} {b}",
    "a photo of {o} {b}",
    "a picture of {o} {b}",
    "an image of {o} {b}",
    "a drawing of {o} {b}",
    "a photo of {o}",
    "{o}",
    "{B} with {o}",
    "a photo of {B} with {o}",
    "{there} {o} {b}",
)


def _word(rng: random.Random, kind: str, id: str, canonical: bool) -> str:
    c = concept(kind, id)
    if canonical or not c.synonyms or rng.random() < 0.7:
        return c.word
    return rng.choice(c.synonyms)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _group_phrase(rng: random.Random, objs: list[dict[str, Any]], full: bool) -> str:
    cls = objs[0]["class"]
    n = len(objs)
    noun = _word(rng, "class", cls, full)
    if n > 1:
        noun = plural(noun)
    adjs: list[str] = []

    def shared(key: str) -> str | None:
        vals = {o[key] for o in objs}
        return vals.pop() if len(vals) == 1 else None

    size, colour, pattern = shared("size"), shared("colour"), shared("pattern")
    if size and (full or rng.random() < 0.3):
        adjs.append(_word(rng, "size", size, full))
    col = _word(rng, "colour", colour, full) if colour and (full or rng.random() < 0.6) else None
    pat = None
    if pattern and (
        (full and pattern != "plain")
        or (not full and rng.random() < (0.45 if pattern != "plain" else 0.1))
    ):
        pat = _word(rng, "pattern", pattern, full)
    if col and pat and not full and rng.random() < 0.3:
        adjs += [pat, col]
    else:
        adjs += [w for w in (col, pat) if w]
    words = [*adjs, noun]
    det = _article(words[0]) if n == 1 else COUNTS[n - 1]
    return " ".join([det, *words])


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def caption(spec: dict[str, Any], k: int = 0) -> str:
    """Caption variant ``k`` of ``spec`` (``k = 0``: fullest, all objects and attributes)."""
    rng = random.Random(int(spec["seed"]) * 1009 + k)
    full = k == 0
    bg = spec["background"]["name"]
    if not spec["objects"]:
        return f"a photo of {BACKGROUND_NOUNS[bg][0 if full else k % len(BACKGROUND_NOUNS[bg])]}"
    groups: dict[str, list[dict[str, Any]]] = {}
    for o in spec["objects"]:
        groups.setdefault(o["class"], []).append(o)
    glist = list(groups.values())
    mentioned = [g for j, g in enumerate(glist) if j == 0 or full or rng.random() < 0.7]
    if not full:
        rng.shuffle(mentioned)
    o = _join([_group_phrase(rng, g, full) for g in mentioned])
    b = BACKGROUND_PHRASES[bg][0] if full else rng.choice(BACKGROUND_PHRASES[bg])
    if full:
        return f"a photo of {o} {b}"
    tpl = rng.choice(_TEMPLATES)
    there = "there is" if len(mentioned[0]) == 1 else "there are"
    return tpl.format(o=o, b=b, B=rng.choice(BACKGROUND_NOUNS[bg]), there=there)


def captions(spec: dict[str, Any], n: int = 5) -> list[str]:
    """``n`` caption variants of ``spec`` (``caption(spec, k)`` for ``k < n``),
    duplicates replaced by further variants where possible."""
    out: list[str] = []
    k = 0
    while len(out) < n and k < 4 * n:
        c = caption(spec, k)
        if c not in out:
            out.append(c)
        k += 1
    while len(out) < n:
        out.append(caption(spec, k))
        k += 1
    return out
