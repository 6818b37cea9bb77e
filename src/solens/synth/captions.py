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

from solens.synth.world import BACKGROUNDS, CLASSES, COLOURS, COUNTS, PATTERNS, concept, plural

__all__ = [
    "BACKGROUND_NOUNS",
    "BACKGROUND_PHRASES",
    "article",
    "attribute_prompts",
    "caption",
    "captions",
    "class_prompts",
    "facet_caption",
    "facet_pool",
    "with_article",
]

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


def article(word: str) -> str:
    """The indefinite article of ``word``: ``"an"`` before a vowel letter, else ``"a"``."""
    return "an" if word[0] in "aeiou" else "a"


def with_article(phrase: str) -> str:
    """``"apple"`` -> ``"an apple"``, ``"red cup"`` -> ``"a red cup"``."""
    return f"{article(phrase)} {phrase}"


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
    det = article(words[0]) if n == 1 else COUNTS[n - 1]
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


# --------------------------------------------------------------------------- prompts


def class_prompts(classes: list[str] | tuple[str, ...] | None = None) -> list[str]:
    """ "a photo of a {class}" for the canonical class words, in ``CLASSES`` order (the
    zero-shot classifier of the world)."""
    return [f"a photo of {with_article(concept('class', c).word)}" for c in (classes or CLASSES)]


def attribute_prompts(kind: str) -> tuple[list[str], list[list[str]]]:
    """Values of an attribute (``"colour"`` or ``"background"``) and, per value, one prompt
    per class: "a photo of a {colour} {class}" / "a photo of a {class} {background phrase}"
    (phrase = the first of ``BACKGROUND_PHRASES``). Ensembling a value's prompts over the
    classes gives a class-independent attribute direction."""
    cls_words = [concept("class", c).word for c in CLASSES]
    if kind == "colour":
        values = list(COLOURS)
        groups = [
            [f"a photo of {with_article(concept('colour', v).word + ' ' + k)}" for k in cls_words]
            for v in values
        ]
    elif kind == "background":
        values = list(BACKGROUNDS)
        groups = [
            [f"a photo of {with_article(k)} {BACKGROUND_PHRASES[v][0]}" for k in cls_words]
            for v in values
        ]
    else:
        raise ValueError(f"unknown attribute {kind!r}; choose colour or background")
    return values, groups


# ------------------------------------------------------------------------- facet captions


def _concept_word(kind: str, id: str) -> str:
    return concept(kind, id).word


def _words(kind: str, id: str) -> list[str]:
    c = concept(kind, id)
    return [c.word, *c.synonyms]


def facet_caption(
    spec: dict[str, Any],
    rng: random.Random,
    class_prompt_frac: float,
    pair_caption_frac: float = 0.0,
) -> str:
    """A short canonical caption of the primary object of ``spec`` (from a closed set,
    ``facet_pool``). Short facets use synonyms and background phrase variants. In scenes with
    two or more classes, a fraction ``pair_caption_frac`` names the primary and another class."""
    o = spec["objects"][0]
    cls = _concept_word("class", o["class"])
    others = list(
        dict.fromkeys(x["class"] for x in spec["objects"][1:] if x["class"] != o["class"])
    )
    if others and pair_caption_frac and rng.random() < pair_caption_frac:
        other = _concept_word("class", rng.choice(others))
        return f"a photo of {with_article(cls)} and {with_article(other)}"
    cls_any = cls if rng.random() < 0.7 else rng.choice(_words("class", o["class"]))
    n_same = sum(1 for x in spec["objects"] if x["class"] == o["class"])
    col = _concept_word("colour", o["colour"])
    col_any = col if rng.random() < 0.8 else rng.choice(_words("colour", o["colour"]))
    pat = _concept_word("pattern", o["pattern"])
    phrases = BACKGROUND_PHRASES[spec["background"]["name"]]
    bg = phrases[0]
    if rng.random() < class_prompt_frac:
        return f"a photo of {with_article(cls)}"
    r = rng.randrange(8)
    if r == 0:
        return f"a photo of {with_article(col_any + ' ' + cls_any)}"
    if r == 1:
        return f"a photo of {with_article(cls_any)} {rng.choice(phrases)}"
    if r == 2:
        return f"a photo of {with_article(col + ' ' + cls)} {bg}"
    if r == 3:
        return f"a photo of {with_article(pat + ' ' + cls)}"
    if r == 4:
        return f"a photo of {with_article(col + ' ' + pat + ' ' + cls)}"
    if r == 5:
        return f"a photo of {with_article(col + ' ' + pat + ' ' + cls)} {bg}"
    if r == 6 and n_same > 1:
        return f"a photo of {['', 'one', 'two', 'three'][n_same]} {plural(cls)}"
    return f"a photo of {with_article(cls_any)}"


def facet_pool() -> list[str]:
    """Every string ``facet_caption`` can return (embedded once, cached on disk)."""
    out: list[str] = []
    for c in CLASSES:
        cw = _concept_word("class", c)
        out += [
            f"a photo of {with_article(cw)} and {with_article(_concept_word('class', c2))}"
            for c2 in CLASSES
            if c2 != c
        ]
        for w in _words("class", c):
            out.append(f"a photo of {with_article(w)}")
            for col in COLOURS:
                out += [f"a photo of {with_article(cc + ' ' + w)}" for cc in _words("colour", col)]
            for b in BACKGROUNDS:
                out += [f"a photo of {with_article(w)} {ph}" for ph in BACKGROUND_PHRASES[b]]
        out += [f"a photo of {n} {plural(cw)}" for n in ("two", "three")]
        for p in PATTERNS:
            out.append(f"a photo of {with_article(_concept_word('pattern', p) + ' ' + cw)}")
        for col in COLOURS:
            cc = _concept_word("colour", col) + " " + cw
            for b in BACKGROUNDS:
                out.append(f"a photo of {with_article(cc)} {BACKGROUND_PHRASES[b][0]}")
            for p in PATTERNS:
                cpc = _concept_word("colour", col) + " " + _concept_word("pattern", p) + " " + cw
                out.append(f"a photo of {with_article(cpc)}")
                for b in BACKGROUNDS:
                    out.append(f"a photo of {with_article(cpc)} {BACKGROUND_PHRASES[b][0]}")
    return list(dict.fromkeys(out))


