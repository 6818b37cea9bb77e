"""Text pools (the dictionaries that neuron directions are decomposed over) and a cache
of their embeddings per model.

Built-in pools (all offline):

- ``words-30k`` / ``words-10k``: the most frequent English words of ``wordfreq``
  (``top_n_list('en', ...)``, frequency order), keeping ASCII alphabetic words of at least
  two letters (drops numbers, single letters and contractions such as "don't"), first
  30,000 / 10,000 of them. Stop words are kept.
- ``imagenet-classes``: open_clip's 1,000 ImageNet class names (``zero_shot_metadata``).
- ``imagenet-descriptions``: clip-benchmark's CuPL descriptions of ImageNet classes
  (``cupl_prompts.json``, about 150 per class), flattened in class order.
- ``world``: every canonical word and synonym of the synthetic world (``solens.synth``).
- any other value is read as a UTF-8 text file, one text per line (blank lines skipped).

Every pool is stripped of surrounding whitespace and deduplicated (first occurrence kept).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from solens.errors import InputError
from solens.store.arrays import save_json_atomic, save_npy_atomic
from solens.synth.world import concept_words

BUILTIN_POOLS = ("words-30k", "words-10k", "imagenet-classes", "imagenet-descriptions", "world")
CACHE_VERSION = 1


@dataclass(frozen=True)
class Pool:
    """A named list of texts; ``content_hash`` = sha256 of the texts joined by newlines."""
    name: str
    texts: tuple[str, ...]
    content_hash: str
    source: str = ""

    def __len__(self) -> int:
        return len(self.texts)


def _dedupe(texts: list[str]) -> list[str]:
    return list(dict.fromkeys(t.strip() for t in texts if t and t.strip()))


def make_pool(name: str, texts: list[str], source: str = "") -> Pool:
    """A ``Pool`` from texts (stripped, deduplicated, order kept)."""
    clean = _dedupe(texts)
    if not clean:
        raise InputError(f"text pool {name!r} is empty")
    digest = hashlib.sha256("\n".join(clean).encode()).hexdigest()
    return Pool(name, tuple(clean), digest, source)


def frequent_words(n: int) -> list[str]:
    """The ``n`` most frequent ASCII alphabetic English words of length >= 2 (wordfreq)."""
    from wordfreq import top_n_list

    want = int(n * 1.3) + 100
    while True:
        raw = top_n_list("en", want)
        words = [w for w in raw if len(w) >= 2 and w.isascii() and w.isalpha()]
        if len(words) >= n or len(raw) < want:
            return words[:n]
        want *= 2


def _package_file(package: str, *parts: str) -> Path:
    """A data file of an installed package, located without importing the package."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"package {package!r} is not installed (pip install {package})")
    for loc in spec.submodule_search_locations:
        p = Path(loc, *parts)
        if p.is_file():
            return p
    raise InputError(f"{'/'.join(parts)} not found in the installed {package!r}")


def imagenet_classes() -> list[str]:
    import importlib.util
    import sys

    mod = sys.modules.get("open_clip.zero_shot_metadata")
    if mod is None:  # load the (import-free) file alone: importing open_clip is slow
        path = _package_file("open_clip", "zero_shot_metadata.py")
        spec = importlib.util.spec_from_file_location("_solens_zero_shot_metadata", path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    return list(mod.IMAGENET_CLASSNAMES)


def imagenet_descriptions() -> list[str]:
    path = _package_file("clip_benchmark", "datasets", "cupl_prompts.json")
    data = json.loads(path.read_text())["imagenet1k"]
    return [t for texts in data.values() for t in texts]


def world_words() -> list[str]:
    return list(concept_words())


_BUILDERS: dict[str, tuple[Callable[[], list[str]], str]] = {
    "words-30k": (lambda: frequent_words(30_000), "wordfreq top_n_list('en'), alphabetic"),
    "words-10k": (lambda: frequent_words(10_000), "wordfreq top_n_list('en'), alphabetic"),
    "imagenet-classes": (imagenet_classes, "open_clip.zero_shot_metadata.IMAGENET_CLASSNAMES"),
    "imagenet-descriptions": (imagenet_descriptions, "clip_benchmark cupl_prompts.json"),
    "world": (world_words, "solens.synth.world.concept_words()"),
}


def load_pool(name_or_path: str | os.PathLike[str]) -> Pool:
    """A built-in pool by name, or a text file with one text per line."""
    key = str(name_or_path)
    if key in _BUILDERS:
        build, source = _BUILDERS[key]
        return make_pool(key, build(), source)
    path = Path(key).expanduser()
    if not path.is_file():
        raise InputError(
            f"unknown text pool {key!r}: not a built-in pool ({', '.join(BUILTIN_POOLS)}) "
            "and not a file"
        )
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read text pool {path}: {e}") from None
    return make_pool(pool_slug(path.stem), lines, str(path.resolve()))


def pool_slug(name: str) -> str:
    """A file-name-safe form of a pool name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "pool"


# --- embedding cache ---------------------------------------------------------------------
def cache_root() -> Path:
    """``$SOLENS_CACHE/text`` or ``~/.cache/solens/text``."""
    base = os.environ.get("SOLENS_CACHE")
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "solens"
    return root / "text"


def cache_key(identity: dict[str, Any], pool: Pool) -> str:
    blob = json.dumps({"v": CACHE_VERSION, "model": identity, "pool": pool.content_hash},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def embed_pool(
    model: Any,
    pool: Pool,
    *,
    batch_size: int = 256,
    cache: bool = True,
    progress: bool = False,
) -> np.ndarray:
    """Unnormalised text embeddings of ``pool`` [len(pool), d] float32, cached on disk.

    The cache file is ``cache_root()/<key>.npy`` (with a ``.json`` record), keyed by
    ``model.text_identity()`` and ``pool.content_hash``; writes are atomic.
    """
    import torch
    from tqdm.auto import tqdm

    identity = model.text_identity()
    key = cache_key(identity, pool)
    path = cache_root() / f"{key}.npy"
    if cache and path.exists():
        try:
            arr = np.load(path, allow_pickle=False)
            if arr.shape[0] == len(pool):
                return arr
        except (OSError, ValueError):
            pass  # unreadable cache entry: recompute
    texts = list(pool.texts)
    out = []
    with torch.no_grad(), tqdm(total=len(texts), unit="text", desc=f"embed {pool.name}",
                               disable=not progress) as bar:
        for i in range(0, len(texts), batch_size):
            part = texts[i : i + batch_size]
            out.append(model.encode_text(part).detach().to("cpu", torch.float32).numpy())
            bar.update(len(part))
    arr = np.concatenate(out).astype(np.float32, copy=False)
    if cache:
        save_npy_atomic(path, arr)
        save_json_atomic(path.with_suffix(".json"), {
            "model": identity, "pool": pool.name, "pool_source": pool.source,
            "content_hash": pool.content_hash, "n": len(pool), "dim": int(arr.shape[1]),
        })
    return arr
