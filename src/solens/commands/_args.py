"""Shared CLI argument helpers.

Click options take one value each; ``--layers 8 9 10`` is rewritten by ``expand_multi``
(called from ``solens.cli.main``) into ``--layers 8 --layers 9 --layers 10`` so that
list options read naturally. Only number-like tokens (``8``, ``8,9``, ``10:20``) are
taken, so a following positional argument is never swallowed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from solens.errors import InputError

MULTI_OPTIONS = ("--layers", "--neurons", "--textspan-layers")
_NUMBERISH = re.compile(r"^\d*(:\d*)?(,\d*(:\d*)?)*$")


def expand_multi(argv: Sequence[str], options: Sequence[str] = MULTI_OPTIONS) -> list[str]:
    """``[..., "--layers", "8", "9"]`` -> ``[..., "--layers", "8", "--layers", "9"]``."""
    out: list[str] = []
    current: str | None = None
    for tok in argv:
        if tok == "--":
            current = None
            out.append(tok)
        elif tok in options:
            current = tok
            out.append(tok)
        elif current is not None and tok and _NUMBERISH.match(tok):
            if out[-1] != current:
                out.append(current)
            out.append(tok)
        else:
            current = None
            out.append(tok)
    return out


def int_list(values: Sequence[str] | None, what: str) -> list[int]:
    """``["8", "9,10"]`` -> ``[8, 9, 10]`` (``InputError`` on anything else)."""
    out: list[int] = []
    for v in values or []:
        for part in str(v).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                out.append(int(part))
            except ValueError:
                raise InputError(f"{what}: {part!r} is not an integer") from None
    return out
