"""Whether a description term names a world concept (token-sequence matching)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from solens.synth.world import Concept, plural

_TOKEN = re.compile(r"[a-z0-9]+")


def tokens(text: str) -> tuple[str, ...]:
    """Lowercase alphanumeric tokens: ``"Polka-dot"`` -> ``("polka", "dot")``."""
    return tuple(_TOKEN.findall(text.lower()))


def concept_names(c: Concept) -> set[tuple[str, ...]]:
    """Token sequences that name ``c``: spec id, canonical word, synonyms (and, for
    classes, their plurals)."""
    names = {c.id, c.word, *c.synonyms}
    if c.kind == "class":
        names |= {plural(w) for w in list(names)}
    return {tokens(w) for w in names if tokens(w)}


def _contains(seq: tuple[str, ...], sub: tuple[str, ...]) -> bool:
    m = len(sub)
    return any(seq[i : i + m] == sub for i in range(len(seq) - m + 1))


def term_matches(term: str, c: Concept) -> bool:
    """Whether ``term`` names ``c``: one of ``concept_names(c)`` occurs in the term's
    tokens as a contiguous sequence ("vessel" -> ship, "a red cup" -> red and cup,
    "brick wall" -> brick wall)."""
    t = tokens(term)
    return any(_contains(t, name) for name in concept_names(c))


class Matcher:
    """Cached ``term_matches`` over a fixed concept list."""

    def __init__(self, concepts: Sequence[Concept]) -> None:
        self.concepts = list(concepts)
        self._by_first: dict[str, list[tuple[int, tuple[str, ...]]]] = {}
        for j, c in enumerate(self.concepts):
            for name in concept_names(c):
                self._by_first.setdefault(name[0], []).append((j, name))
        self._cache: dict[str, frozenset[int]] = {}

    def __call__(self, term: str) -> frozenset[int]:
        """Indices of the concepts that ``term`` names."""
        hit = self._cache.get(term)
        if hit is None:
            t = tokens(term)
            hit = frozenset(j for i, tok in enumerate(t) for j, name in self._by_first.get(tok, ())
                            if t[i : i + len(name)] == name)
            self._cache[term] = hit
        return hit

    def named(self, terms: Sequence[str]) -> set[int]:
        """Concepts named by any of ``terms``."""
        out: set[int] = set()
        for t in terms:
            out |= self(t)
        return out
