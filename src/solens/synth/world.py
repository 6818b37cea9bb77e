"""The concept inventory of the synthetic world.

Every concept is a :class:`Concept` ``(kind, id, word, synonyms)``: ``id`` is the key used
in scene specs, ``word`` the canonical English word used in captions and text pools,
``synonyms`` alternative words that captions also use.  No synonym equals another
concept's canonical word.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "BACKGROUNDS",
    "CLASSES",
    "COLOURS",
    "COLOUR_RGB",
    "CONCEPTS",
    "COUNTS",
    "PATTERNS",
    "SIZES",
    "Concept",
    "concept",
    "concept_words",
    "plural",
    "synonyms",
]


class Concept(NamedTuple):
    """One concept: ``kind`` (class/colour/pattern/background/size/count), spec ``id``,
    canonical ``word`` and ``synonyms``."""

    kind: str
    id: str
    word: str
    synonyms: tuple[str, ...] = ()


_CLASS_DEFS: list[tuple[str, tuple[str, ...]]] = [
    ("car", ("automobile", "motorcar")),
    ("truck", ("lorry",)),
    ("ship", ("vessel", "boat")),
    ("airplane", ("aeroplane", "plane", "jet")),
    ("bird", ("songbird",)),
    ("fish", ("goldfish",)),
    ("cat", ("kitten", "kitty")),
    ("dog", ("puppy", "hound")),
    ("horse", ("pony", "stallion")),
    ("cow", ("calf", "heifer")),
    ("tree", ("sapling",)),
    ("flower", ("blossom", "bloom")),
    ("house", ("home", "cottage")),
    ("umbrella", ("parasol",)),
    ("key", ()),
    ("cup", ("mug",)),
    ("clock", ("timepiece",)),
    ("star", ()),
    ("heart", ()),
    ("apple", ()),
]

#: Colour id -> (canonical word, synonyms, RGB).  Chosen far apart in hue/lightness; every
#: object also gets a contrasting outline so it stays visible on any background.
_COLOUR_DEFS: list[tuple[str, tuple[str, ...], tuple[int, int, int]]] = [
    ("red", ("crimson", "scarlet"), (214, 30, 36)),
    ("orange", (), (245, 130, 20)),
    ("yellow", ("golden",), (250, 220, 30)),
    ("green", (), (40, 170, 60)),
    ("blue", ("azure",), (30, 80, 220)),
    ("purple", ("violet",), (140, 50, 180)),
    ("white", (), (245, 245, 245)),
    ("black", (), (20, 20, 20)),
]

#: Pattern id -> (canonical word, synonyms).
_PATTERN_DEFS: list[tuple[str, str, tuple[str, ...]]] = [
    ("plain", "plain", ("solid",)),
    ("stripes", "striped", ("stripy",)),
    ("dots", "dotted", ("spotted", "polka-dot")),
    ("checks", "checkered", ("checked", "chequered")),
    ("waves", "wavy", ("rippled",)),
    ("noise", "speckled", ("grainy", "noisy")),
]

#: Background id -> (canonical word, synonyms).
_BACKGROUND_DEFS: list[tuple[str, str, tuple[str, ...]]] = [
    ("sky", "sky", ("air",)),
    ("sea", "sea", ("ocean", "water")),
    ("grass", "grass", ("lawn", "meadow")),
    ("road", "road", ("street", "highway")),
    ("sand", "sand", ("beach", "desert")),
    ("snow", "snow", ("snowfield",)),
    ("brick", "brick wall", ("wall of bricks",)),
    ("wood", "wooden floor", ("wood floor", "floorboards")),
]

_SIZE_DEFS: list[tuple[str, tuple[str, ...]]] = [
    ("small", ("little", "tiny")),
    ("large", ("big", "huge")),
]

_COUNT_DEFS: list[tuple[str, tuple[str, ...]]] = [("one", ()), ("two", ()), ("three", ())]

#: Canonical class names in fixed order (label index = position).
CLASSES: list[str] = [c for c, _ in _CLASS_DEFS]
#: Colour ids (= canonical words) in fixed order.
COLOURS: list[str] = [c for c, _, _ in _COLOUR_DEFS]
#: Colour id -> RGB tuple.
COLOUR_RGB: dict[str, tuple[int, int, int]] = {c: rgb for c, _, rgb in _COLOUR_DEFS}
#: Pattern ids in fixed order.
PATTERNS: list[str] = [p for p, _, _ in _PATTERN_DEFS]
#: Background ids in fixed order.
BACKGROUNDS: list[str] = [b for b, _, _ in _BACKGROUND_DEFS]
#: Size ids.
SIZES: list[str] = [s for s, _ in _SIZE_DEFS]
#: Count ids (1, 2, 3 objects of one class).
COUNTS: list[str] = [c for c, _ in _COUNT_DEFS]

#: All concepts of the world.
CONCEPTS: list[Concept] = (
    [Concept("class", c, c, s) for c, s in _CLASS_DEFS]
    + [Concept("colour", c, c, s) for c, s, _ in _COLOUR_DEFS]
    + [Concept("pattern", p, w, s) for p, w, s in _PATTERN_DEFS]
    + [Concept("background", b, w, s) for b, w, s in _BACKGROUND_DEFS]
    + [Concept("size", z, z, s) for z, s in _SIZE_DEFS]
    + [Concept("count", c, c, s) for c, s in _COUNT_DEFS]
)

_BY_KEY: dict[tuple[str, str], Concept] = {(c.kind, c.id): c for c in CONCEPTS}

_IRREGULAR_PLURALS = {"fish": "fish", "goldfish": "goldfish", "calf": "calves"}


def concept(kind: str, id: str) -> Concept:
    """The concept of ``kind`` with spec id ``id`` (KeyError if unknown)."""
    return _BY_KEY[(kind, id)]


def plural(word: str) -> str:
    """English plural of a class word (``fish`` -> ``fish``, ``pony`` -> ``ponies``)."""
    if word in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[word]
    if word.endswith("y") and word[-2:-1] not in "aeiou":
        return word[:-1] + "ies"
    if word.endswith(("s", "sh", "ch", "x")):
        return word + "es"
    return word + "s"


def synonyms(word: str) -> set[str]:
    """All words (canonical and synonyms) of every concept that ``word`` names, ``word``
    included; ``{word}`` if it names no concept.  Matches ids, canonical words and
    synonyms case-insensitively."""
    w = word.lower().strip()
    out = {word}
    for c in CONCEPTS:
        names = {c.id, c.word, *c.synonyms}
        if w in names:
            out |= {c.word, *c.synonyms}
    return out


def concept_words() -> list[str]:
    """Every canonical word and synonym of the world, deduplicated, in concept order
    (the ``world`` text pool)."""
    seen: dict[str, None] = {}
    for c in CONCEPTS:
        for w in (c.word, *c.synonyms):
            seen.setdefault(w, None)
    return list(seen)
