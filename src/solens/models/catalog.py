"""Model names known without importing torch or open_clip, and the unknown-name error.

Importing open_clip costs seconds (it imports torch), so ``check_model_name`` reads the
architecture names off open_clip's bundled configs (``open_clip/model_configs/*.json``,
found without importing the package) unless open_clip is loaded already: the command line
calls it first, so that a mistyped ``--model`` fails at once.
"""

from __future__ import annotations

import difflib
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

from solens.errors import UnknownModelError

TINY = "solens-tiny"
_HF_PREFIX = "hf-hub:"
_LOCAL_PREFIX = "local-dir:"
HF_NAME = "hf"
HF_PREFIX = "hf:"
"""``hf:ORG/NAME`` or ``hf:FOLDER``: a Hugging Face transformers CLIP checkpoint (``hf`` alone
with ``--checkpoint FOLDER``); ``hf-hub:`` names are open_clip repos on the hub."""

NAME_FORMS = (
    "an open_clip name (open_clip.list_models()), hf:ORG/NAME or hf:FOLDER (transformers CLIP), "
    "hf-hub:ORG/REPO, local-dir:FOLDER"
)
"""What a model name can be, for messages (with ``TINY`` after it)."""


def architecture_names() -> list[str]:
    """open_clip's architecture names: ``open_clip.list_models()`` when open_clip is loaded,
    else the stems of its bundled config files (what ``list_models()`` returns unless a
    program adds configs); empty without open_clip."""
    open_clip = sys.modules.get("open_clip")
    if open_clip is not None:
        return list(open_clip.list_models())
    spec = importlib.util.find_spec("open_clip")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    return sorted({p.stem for f in folders for p in (Path(f) / "model_configs").glob("*.json")})


def unknown_model_error(name: str, known: Sequence[str]) -> UnknownModelError:
    """The one-line error for a model ``name`` not among ``known``: up to 5 close names,
    else what a name can be."""
    lower = {m.lower(): m for m in known}
    close = [lower[m] for m in difflib.get_close_matches(name.lower(), list(lower), n=5)]
    close += difflib.get_close_matches(name, list(known), n=5, cutoff=0.6)
    close = list(dict.fromkeys(close))[:5]
    if Path(name).is_file():
        hint = (": it is a file; pass it with --checkpoint PATH and its architecture with "
                "--model NAME (Python: load_model(NAME, checkpoint=PATH))")
    elif Path(name).is_dir():
        hint = (f": it is a folder; pass it as --model {HF_PREFIX}{name} (a transformers CLIP "
                f"checkpoint) or --model {_LOCAL_PREFIX}{name} (an open_clip folder)")
    elif close:
        hint = f"; did you mean {', '.join(close)}?"
    else:
        hint = f"; a model is {NAME_FORMS} or {TINY}"
    return UnknownModelError(f"unknown model {name!r}{hint}")


def check_model_name(name: str) -> None:
    """``UnknownModelError`` for a name ``load_model`` cannot resolve: not ``solens-tiny``,
    ``hf:``/``hf-hub:``/``local-dir:`` or an open_clip architecture (``architecture_names``).
    Fast: imports neither torch nor open_clip."""
    if name in (TINY, HF_NAME) or name.startswith((HF_PREFIX, _HF_PREFIX, _LOCAL_PREFIX)):
        return
    known = architecture_names()
    arch = name.replace("/", "-")
    if known and arch not in known:  # no open_clip at all: load_model says so
        # a file or folder keeps its spelling, for the hint on how to pass it
        raise unknown_model_error(name if Path(name).exists() else arch, [*known, TINY])
