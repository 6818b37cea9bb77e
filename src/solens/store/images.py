"""Image datasets: a folder of files, or scenes of the synthetic world (tar shards:
``solens.store.shards``, whose ``open_source`` is the opener every command uses).

A dataset is a deterministic list of *candidates* (relative paths or scene ids) with
optional labels; ``load(i)`` returns an RGB PIL image or raises (the caller skips it).
``solens.store.shards.open_source("DIR")`` or ``open_source("synth:SPLIT:N[:SEED[:SIZE]]")``.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from solens.errors import InputError
from solens.store.arrays import file_sha256
from solens.synth.render import render, render_array
from solens.synth.sampling import SPEC_VERSION, SPLITS, spec_at

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


class ImageSource(Protocol):
    """A deterministic, indexable list of images."""

    ids: list[str]  # candidate ids (paths relative to root, or scene ids)
    labels: list[str | None] | None

    def __len__(self) -> int: ...

    def load(self, index: int) -> Image.Image:
        """Candidate ``index`` as an RGB image; raises if it cannot be decoded."""
        ...

    def describe(self) -> dict[str, Any]:
        """Identity of the dataset for the manifest: kind, spec/root, n, fingerprint."""
        ...


def _classes(labels: Sequence[str | None] | None) -> list[str]:
    return sorted({lab for lab in labels if lab is not None}) if labels else []


_WIDE_INT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _int_range(image: Image.Image) -> int:
    """The largest value of a 16/32-bit grayscale image's format (what maps to white).

    ``I;16*``: 65535. ``I``: a PNG's is 16-bit gray (older Pillow opens it as ``I``), a
    TIFF's says its bit depth (BitsPerSample, SampleFormat), anything else is taken as
    16-bit (PGM and PNG are where 32-bit ``I`` images come from in practice).
    """
    if image.mode != "I":
        return 65535
    bits, signed = 16, False
    tags = getattr(image, "tag_v2", None)
    if image.format == "TIFF" and tags is not None:
        b = tags.get(258, 16)  # BitsPerSample
        bits = int(b[0] if isinstance(b, tuple) else b)
        fmt = tags.get(339, 1)  # SampleFormat: 1 unsigned, 2 signed
        signed = int(fmt[0] if isinstance(fmt, tuple) else fmt) == 2
    return (1 << (bits - signed)) - 1


def to_rgb(image: Image.Image) -> Image.Image:
    """Any mode -> 8-bit RGB, scaled by the image's bit depth (white stays white).

    - ``1``, ``L``, ``LA``, ``P``, ``PA``, ``RGBA``, ``CMYK``, ``YCbCr`` and 16-bit RGB(A)
      files (which Pillow opens as 8-bit ``RGB``/``RGBA``): ``convert("RGB")``; alpha is
      dropped, as in open_clip's own transform.
    - 16-bit grayscale (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``): 0..65535 -> 0..255.
    - 32-bit integer ``I``: 0..max of its format (``_int_range``: 65535 for PNG, the bit
      depth of a TIFF) -> 0..255. Pillow's own ``convert`` clips these at 255 instead,
      which turns a 16-bit grayscale picture nearly white.
    - float ``F``: values in 0..1 when the image's maximum is <= 1, else in 0..255.

    Values outside the range are clipped.
    """
    if image.mode == "RGB":
        return image
    if image.mode in _WIDE_INT_MODES or image.mode == "F":
        a = np.nan_to_num(np.asarray(image).astype(np.float64))
        if image.mode == "F":
            top = 1.0 if a.size == 0 or a.max() <= 1.0 else 255.0
        else:
            top = float(_int_range(image))
        gray = np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    return image.convert("RGB")


@dataclass
class FolderImages:
    """Every image file below ``root`` (recursive, case-insensitive suffixes), sorted.

    Labels: the top-level sub-folder name of each file (None for files directly in
    ``root``); no labels at all when no file lies in a sub-folder.
    """

    root: Path
    ids: list[str] = field(default_factory=list)
    labels: list[str | None] | None = None
    _files: dict[str, list[Any]] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def scan(cls, root: str | Path) -> FolderImages:
        root = Path(root)
        if not root.exists():
            raise InputError(f"image folder {root} does not exist")
        if not root.is_dir():
            raise InputError(f"--images {root} is not a folder")
        ids: list[str] = []
        seen: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen:  # a symlink cycle
                dirnames[:] = []
                continue
            seen.add(real)
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for f in filenames:
                if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith("."):
                    ids.append(Path(dirpath, f).relative_to(root).as_posix())
        if not ids:
            raise InputError(
                f"image folder {root} holds no images ({'/'.join(s[1:] for s in IMAGE_SUFFIXES)})"
            )
        ids.sort()
        labels: list[str | None] = [i.split("/", 1)[0] if "/" in i else None for i in ids]
        return cls(root, ids, None if all(lab is None for lab in labels) else labels)

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> Image.Image:
        """Candidate ``index`` as 8-bit RGB (``to_rgb``). Raises for a file that cannot be
        decoded, and ``ImageTooLarge`` for one above Pillow's pixel limit (Pillow's own
        DecompressionBombWarning for images between its two limits is not shown: they
        decode normally)."""
        try:
            with _open_image(self.root / self.ids[index]) as im:
                im.load()
                return to_rgb(im)
        except Image.DecompressionBombError as e:
            raise ImageTooLarge(e) from None

    def files(
        self, known: Mapping[str, Any] | None = None, progress: bool = False
    ) -> dict[str, list[Any]]:
        """Content record of every candidate: ``{"sha256": [hex], "size": [int],
        "mtime_ns": [int]}`` (computed once, then cached on the dataset).

        ``known``: such a record of the same candidates (``images.json`` of a run); a file
        whose size and mtime equal the known ones keeps its known sha256 without being read.
        ``InputError`` naming a candidate that cannot be read.
        """
        if self._files is not None:
            return self._files
        stats = []
        for i in self.ids:
            try:
                stats.append((self.root / i).stat())
            except OSError as e:
                raise InputError(f"image {self.root / i} cannot be read: "
                                 f"{e.strerror or e}") from None
        sha = known_digests(self.ids, [st.st_size for st in stats],
                            [st.st_mtime_ns for st in stats], known)  # fmt: skip
        todo = [j for j, h in enumerate(sha) if h is None]
        if todo:
            from tqdm.auto import tqdm

            def digest(j: int) -> str:
                try:
                    return file_sha256(self.root / self.ids[j])
                except OSError as e:
                    raise InputError(f"image {self.root / self.ids[j]} cannot be read: "
                                     f"{e.strerror or e}") from None

            with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool, tqdm(
                total=len(todo), unit="file", desc="sha256 of images",
                disable=not progress or len(todo) < 1000,
            ) as bar:
                for j, h in zip(todo, pool.map(digest, todo), strict=True):
                    sha[j] = h
                    bar.update(1)
        self._files = {
            "sha256": [str(h) for h in sha],
            "size": [int(st.st_size) for st in stats],
            "mtime_ns": [int(st.st_mtime_ns) for st in stats],
        }
        return self._files

    def fingerprint(self) -> str:
        """sha256 over (relative path, sha256 of the file's bytes) of every candidate."""
        h = hashlib.sha256()
        for i, digest in zip(self.ids, self.files()["sha256"], strict=True):
            h.update(f"{i}\0{digest}\n".encode())
        return h.hexdigest()

    def fingerprint_v1(self) -> str:
        """The fingerprint of runs of format version 1: sha256 over (relative path, size,
        mtime_ns) of every candidate."""
        h = hashlib.sha256()
        for i in self.ids:
            st = (self.root / i).stat()
            h.update(f"{i}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "folder",
            "root": str(self.root.resolve()),
            "n": len(self.ids),
            "fingerprint": self.fingerprint(),
            "fingerprint_of": FOLDER_FINGERPRINT_OF,
        }


def known_digests(
    ids: Sequence[str], sizes: Sequence[int], mtimes: Sequence[int],
    known: Mapping[str, Any] | None,
) -> list[str | None]:
    """Per candidate the sha256 of ``known`` (an ``images.json`` record: ``paths``,
    ``size``, ``mtime_ns``, ``sha256``) when its size and mtime are unchanged, else None
    (to be read)."""
    old: dict[str, tuple[int, int, str]] = {}
    if known is not None and known.get("sha256") is not None:
        old = {
            p: (int(sz), int(mt), str(h))
            for p, sz, mt, h in zip(known["paths"], known["size"], known["mtime_ns"],
                                    known["sha256"], strict=True)
        }  # fmt: skip
    out: list[str | None] = []
    for i, sz, mt in zip(ids, sizes, mtimes, strict=True):
        o = old.get(i)
        out.append(o[2] if o is not None and o[:2] == (int(sz), int(mt)) else None)
    return out


FOLDER_FINGERPRINT_OF = "relative paths and file contents (sha256)"


class ImageTooLarge(InputError):
    """An image above Pillow's decompression-bomb limit (``2 * Image.MAX_IMAGE_PIXELS``
    pixels); the run skips and lists it."""

    def __init__(self, error: Exception) -> None:
        m = re.search(r"\((\d+) pixels\) exceeds limit of (\d+)", str(error))
        size, cap = (f"{int(m[1]):,}", f"{int(m[2]):,}") if m else ("too many", "the limit")
        super().__init__(
            f"image too large: {size} pixels, above the limit of {cap} (2 x "
            "PIL.Image.MAX_IMAGE_PIXELS; raise that in Python to decode larger images)"
        )


_OPEN_LOCK = threading.Lock()


def _open_image(path: Path) -> Image.Image:
    """``Image.open(path)`` (the header only) without Pillow's DecompressionBombWarning for
    images between ``MAX_IMAGE_PIXELS`` and twice that (they decode normally; above,
    Pillow raises). ``warnings.catch_warnings`` is not thread-safe and images decode in
    threads: the opening is serialised (it reads a header; decoding runs in parallel)."""
    with _OPEN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(path)


@dataclass
class SynthImages:
    """Scenes ``0..n-1`` of ``solens.synth`` ``(split, seed)`` rendered at ``size`` pixels."""

    split: str
    n: int
    seed: int = 0
    size: int = 64
    ids: list[str] = field(default_factory=list)
    labels: list[str | None] | None = None

    def __post_init__(self) -> None:
        self.ids = [f"synth:{self.split}:{self.seed}:{i:07d}" for i in range(self.n)]
        self.labels = [
            spec_at(i, self.split, self.seed, self.size)["objects"][0]["class"]
            for i in range(self.n)
        ]

    def __len__(self) -> int:
        return self.n

    def spec(self, index: int) -> dict[str, Any]:
        """The scene spec of candidate ``index`` (its ground truth)."""
        return spec_at(index, self.split, self.seed, self.size)

    def load(self, index: int) -> Image.Image:
        return to_rgb(render(self.spec(index)).image)

    def arrays(self, indices: Sequence[int]) -> np.ndarray:
        """Candidates ``indices`` rendered as uint8 RGB arrays [n, S, S, 3] (no PIL)."""
        out = np.empty((len(indices), self.size, self.size, 3), np.uint8)
        for j, i in enumerate(indices):
            out[j] = render_array(self.spec(i))[0]
        return out

    def describe(self) -> dict[str, Any]:
        spec = f"synth:{self.split}:{self.n}:{self.seed}:{self.size}"
        return {
            "kind": "synth",
            "spec": spec,
            "n": self.n,
            "fingerprint": hashlib.sha256(f"{spec}/v{SPEC_VERSION}".encode()).hexdigest(),
            "fingerprint_of": "synth spec and scene-spec version",
        }


def parse_synth(spec: str) -> SynthImages:
    """``synth:SPLIT:N[:SEED[:SIZE]]`` -> ``SynthImages``."""
    parts = spec.split(":")
    usage = f"bad synthetic dataset {spec!r}; expected synth:SPLIT:N[:SEED[:SIZE]]"
    if not 3 <= len(parts) <= 5:
        raise InputError(usage)
    try:
        n = int(parts[2])
        seed = int(parts[3]) if len(parts) > 3 and parts[3] else 0
        size = int(parts[4]) if len(parts) > 4 and parts[4] else 64
    except ValueError:
        raise InputError(usage) from None
    if parts[1] not in SPLITS:
        raise InputError(f"unknown synthetic split {parts[1]!r}; valid: {', '.join(SPLITS)}")
    if n <= 0 or size <= 0:
        raise InputError(f"{spec!r}: N and SIZE must be positive")
    return SynthImages(parts[1], n, seed, size)


def images_record(source: ImageSource) -> dict[str, Any]:
    """What ``RUN/images.json`` stores (``ImagesRecord.to_dict()``): root, candidate ids
    [n], labels [n] or None, classes; for a folder also ``sha256``, ``size``, ``mtime_ns``
    [n] (``FolderImages.files``), for tar shards the same of each image member
    (``ShardImages.files``)."""
    root = str(source.root.resolve()) if isinstance(source, FolderImages) else None
    out: dict[str, Any] = {
        "root": root,
        "paths": list(source.ids),
        "labels": None if source.labels is None else list(source.labels),
        "classes": _classes(source.labels),
    }
    files = getattr(source, "files", None)  # folders and tar shards: content records
    if callable(files):
        out.update(files())
    return out


@dataclass
class LoadedBatch:
    """Decoded, preprocessed candidates ``indices``: ``pixels`` Tensor [len(kept), 3, S, S]
    of the ``kept`` ones (None when nothing decoded), ``skipped`` ``{index, path, reason}``
    for the others."""

    indices: list[int]
    kept: list[int]
    pixels: Any  # Tensor [len(kept), 3, S, S] or None when nothing decoded
    skipped: list[dict[str, Any]]


def _decode(
    source: ImageSource, index: int, preprocess: Callable[[Image.Image], Any]
) -> tuple[Any, str | None]:
    try:
        return preprocess(source.load(index)), None
    except Exception as e:  # corrupt or unreadable: the run skips it and records why
        reason = f"{type(e).__name__}: {e}".strip()
        return None, reason.splitlines()[0][:300] if reason else type(e).__name__


def load_batch(
    source: ImageSource,
    indices: Sequence[int],
    preprocess: Callable[[Image.Image], Any],
    pool: Executor | None = None,
) -> LoadedBatch:
    """Decode and preprocess candidates ``indices`` (in parallel with ``pool``); ``preprocess``
    maps a PIL image to [3, S, S], the batch's ``pixels`` are [len(kept), 3, S, S]."""
    if pool is None:
        results = [_decode(source, i, preprocess) for i in indices]
    else:
        results = list(pool.map(lambda i: _decode(source, i, preprocess), indices))
    kept, tensors, skipped = [], [], []
    for i, (t, reason) in zip(indices, results, strict=True):
        if reason is None:
            kept.append(i)
            tensors.append(t)
        else:
            skipped.append({"index": int(i), "path": source.ids[i], "reason": reason})
    pixels = torch.stack(tensors) if tensors else None
    return LoadedBatch(list(indices), kept, pixels, skipped)


def iter_batches(
    source: ImageSource,
    groups: Sequence[Sequence[int]],
    preprocess: Callable[[Image.Image], Any],
    workers: int | None = None,
) -> Iterator[LoadedBatch]:
    """One ``LoadedBatch`` (``pixels`` [len(kept), 3, S, S]) per group of candidate indices,
    in order; the next group is decoded (by ``workers`` threads) while the caller computes
    on the current one."""
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    if not groups:
        return
    with ThreadPoolExecutor(1) as ahead, ThreadPoolExecutor(max(1, workers)) as pool:
        nxt: Future = ahead.submit(load_batch, source, groups[0], preprocess, pool)
        for k in range(len(groups)):
            cur = nxt.result()
            if k + 1 < len(groups):
                nxt = ahead.submit(load_batch, source, groups[k + 1], preprocess, pool)
            yield cur


def pixels(
    source: ImageSource,
    preprocess: Callable[[Image.Image], Tensor],
    indices: Sequence[int] | None = None,
) -> Tensor:
    """Candidates ``indices`` (default: all) decoded and preprocessed: [n, 3, S, S].

    The one way images reach a model in memory. Rendered scenes skip PIL when
    ``preprocess`` has a vectorised ``batch`` for uint8 arrays [n, S, S, 3] (solens-tiny's
    ``TinyPreprocess``: the same values as image by image). An undecodable candidate
    raises ``InputError`` (``load_batch`` is the variant that skips and records them).
    """
    idx = list(range(len(source))) if indices is None else [int(i) for i in indices]
    batch = getattr(preprocess, "batch", None)
    if isinstance(source, SynthImages) and batch is not None:
        return batch(source.arrays(idx))
    loaded = load_batch(source, idx, preprocess)
    if loaded.skipped:
        first = loaded.skipped[0]
        raise InputError(f"{len(loaded.skipped)} of {len(idx)} images cannot be decoded "
                         f"(first: {first['path']}: {first['reason']})")
    if loaded.pixels is None:
        raise InputError("no images to load")
    return loaded.pixels


def class_indices(source: ImageSource, classes: Sequence[str]) -> Tensor:
    """Index into ``classes`` of every candidate's label: [n] int64 (``InputError`` for an
    unlabelled candidate or a label outside ``classes``)."""
    if source.labels is None:
        raise InputError("the images have no labels (class sub-folders)")
    where = {c: i for i, c in enumerate(classes)}
    bad = sorted({str(lab) for lab in source.labels if lab not in where})
    if bad:
        raise InputError(f"labels not among the {len(classes)} classes: {', '.join(bad[:5])}")
    return torch.tensor([where[str(lab)] for lab in source.labels], dtype=torch.int64)
