"""WebDataset tar shards as an image source, with a deterministic global image index.

A spec names one or more uncompressed ``.tar`` shards in WebDataset layout (members
``KEY.EXT``; the files of one sample share ``KEY``): a path (``data/train-000.tar``), a
brace pattern (``data/train-{000000..000146}.tar``, expanded by ``webdataset``), a glob
(``data/*.tar``), or several of these joined by ``::``. Shards are taken in the order the
spec gives them (brace patterns in expansion order, each glob's matches sorted, duplicates
dropped), samples in the order of their members inside each shard.

The **global image index** of a sample is its position in that order: shard by shard,
sample by sample, counting only samples that hold an image (``.jpg .jpeg .png .webp .bmp``,
the first in that order when a sample has several). It does not depend on how many
processes read the shards, so every image has one candidate index across shards and
ranks. Its id is ``SHARD/KEY`` (``SHARD`` = the shard's path relative to the folder all
shards share). Labels: the text of the sample's ``.cls`` member (stripped), when any
sample has one.

Random access: the member offsets of every shard are read once (``tarfile`` headers) and
``load(i)`` reads the image's bytes at its offset, so chunks can be computed in any order,
by any rank, and resumed.
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from webdataset.shardlists import expand_urls
from webdataset.tariterators import base_plus_ext

from solens.errors import InputError
from solens.store.images import (
    IMAGE_SUFFIXES,
    FolderImages,
    SynthImages,
    parse_synth,
    to_rgb,
)

SHARD_SUFFIX = ".tar"
LABEL_EXT = "cls"
_GLOB_CHARS = set("*?[")


def is_shard_spec(spec: str | Path) -> bool:
    """True when ``spec`` names tar shards: every ``::``-separated part ends in ``.tar``
    (or is a brace pattern over names containing ``.tar``)."""
    parts = [p for p in str(spec).split("::") if p]
    return bool(parts) and all(
        p.endswith(SHARD_SUFFIX) or ("{" in p and SHARD_SUFFIX in p) for p in parts
    )


def expand_shards(spec: str) -> list[Path]:
    """The shard files of ``spec`` in index order (module doc); ``InputError`` when a
    pattern matches nothing, a named shard is missing or not a ``.tar`` file."""
    out: list[Path] = []
    seen: set[str] = set()
    for url in expand_urls(spec):
        url = os.path.expanduser(url)
        if _GLOB_CHARS & set(url):
            matches = sorted(glob.glob(url))
            if not matches:
                raise InputError(f"no shards match {url!r} (--images)")
        else:
            matches = [url]
        for m in matches:
            p = Path(m)
            if not p.is_file():
                raise InputError(f"shard {p} does not exist (--images {spec})")
            if not p.name.endswith(SHARD_SUFFIX):
                raise InputError(f"shard {p} is not an uncompressed .tar file")
            key = str(p.resolve())
            if key not in seen:
                seen.add(key)
                out.append(p)
    if not out:
        raise InputError(f"--images {spec!r} names no .tar shards")
    return out


@dataclass(frozen=True)
class _Member:
    shard: int  # index into ShardImages.shards
    offset: int  # byte offset of the member's data in the shard
    size: int


def _scan_shard(path: Path, shard: int) -> tuple[list[tuple[str, _Member, str | None]], str]:
    """Samples of one shard in member order: (key, image member, label or None), plus a
    digest of its member table (names, sizes, header checksums)."""
    samples: dict[str, dict[str, _Member]] = {}
    order: list[str] = []
    h = hashlib.sha256()
    label_members: dict[str, tarfile.TarInfo] = {}
    try:
        with tarfile.open(path, "r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                h.update(f"{m.name}\0{m.size}\0{m.chksum}\n".encode())
                key, ext = base_plus_ext(m.name)
                if key is None or ext is None or os.path.basename(m.name).startswith("."):
                    continue
                if key not in samples:
                    samples[key] = {}
                    order.append(key)
                samples[key][ext.lower()] = _Member(shard, m.offset_data, m.size)
                if ext.lower() == LABEL_EXT:
                    label_members[key] = m
            out = []
            for key in order:
                files = samples[key]
                image = next((files[s[1:]] for s in IMAGE_SUFFIXES if s[1:] in files), None)
                if image is None:
                    continue
                label = None
                if key in label_members:
                    f = tf.extractfile(label_members[key])
                    label = f.read().decode("utf-8", "replace").strip() if f else None
                out.append((key, image, label))
    except (tarfile.TarError, OSError) as e:
        raise InputError(f"cannot read shard {path}: {' '.join(str(e).split())}") from None
    return out, h.hexdigest()


@dataclass
class ShardImages:
    """The images of WebDataset tar shards (module doc): candidate ``i`` is the ``i``-th
    image of the shards in spec order; ``ids`` ``SHARD/KEY``; ``labels`` from ``.cls``."""

    spec: str
    shards: list[Path]
    ids: list[str] = field(default_factory=list)
    labels: list[str | None] | None = None
    members: list[_Member] = field(default_factory=list, repr=False)
    shard_digests: list[str] = field(default_factory=list, repr=False)

    @classmethod
    def scan(cls, spec: str) -> ShardImages:
        """Read the member tables of the shards of ``spec``."""
        shards = expand_shards(spec)
        root = Path(os.path.commonpath([str(p.resolve().parent) for p in shards]))
        ids: list[str] = []
        labels: list[str | None] = []
        members: list[_Member] = []
        digests = []
        for k, p in enumerate(shards):
            samples, digest = _scan_shard(p, k)
            digests.append(digest)
            name = p.resolve().relative_to(root).as_posix()
            for key, member, label in samples:
                ids.append(f"{name}/{key}")
                members.append(member)
                labels.append(label)
        if not ids:
            raise InputError(
                f"the shards of {spec!r} hold no images "
                f"({'/'.join(s[1:] for s in IMAGE_SUFFIXES)} members)"
            )
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise InputError(f"image {dup} appears twice in the shards of {spec!r}")
        has_labels = any(lab is not None for lab in labels)
        return cls(spec, shards, ids, labels if has_labels else None, members, digests)

    def __len__(self) -> int:
        return len(self.ids)

    def read_bytes(self, index: int) -> bytes:
        """The encoded image of candidate ``index``."""
        m = self.members[index]
        with open(self.shards[m.shard], "rb") as f:
            f.seek(m.offset)
            data = f.read(m.size)
        if len(data) != m.size:
            raise OSError(f"{self.ids[index]}: shard ends before the image does")
        return data

    def load(self, index: int) -> Image.Image:
        try:
            im = Image.open(io.BytesIO(self.read_bytes(index)))
        except UnidentifiedImageError:  # its message names a memory address: not stable
            raise UnidentifiedImageError(f"cannot identify image {self.ids[index]}") from None
        with im:
            im.load()
            return to_rgb(im)

    def fingerprint(self) -> str:
        """sha256 over each shard's name and member table (names, sizes, tar header
        checksums)."""
        h = hashlib.sha256()
        for p, d in zip(self.shards, self.shard_digests, strict=True):
            h.update(f"{p.name}\0{d}\n".encode())
        return h.hexdigest()

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "shards",
            "spec": self.spec,
            "shards": [str(p.resolve()) for p in self.shards],
            "n": len(self.ids),
            "fingerprint": self.fingerprint(),
            "fingerprint_of": "shard names, member names, sizes and tar header checksums",
        }


def reopen_shards(dataset: dict[str, Any], paths: list[str], run: Path) -> ShardImages:
    """The ``ShardImages`` of a run's ``dataset`` record, checked against the run's
    candidate ``paths`` and fingerprint (``InputError`` when the shards moved or changed)."""
    shards = dataset.get("shards") or []
    spec = "::".join(str(s) for s in shards) or str(dataset.get("spec"))
    try:
        source = ShardImages.scan(spec)
    except InputError as e:
        raise InputError(f"the shards of run {run} cannot be read any more: {e}") from None
    if source.fingerprint() != dataset.get("fingerprint") or source.ids != list(paths):
        raise InputError(f"the shards of run {run} changed since it was computed ({spec})")
    source.spec = str(dataset.get("spec", spec))
    return source


def open_source(spec: str | Path) -> FolderImages | SynthImages | ShardImages:
    """Any image source: ``synth:SPLIT:N[:SEED[:SIZE]]``, WebDataset ``.tar`` shards
    (``is_shard_spec``: a path, brace pattern, glob, or several joined by ``::``), or an
    image folder."""
    s = str(spec)
    if s.startswith("synth:"):
        return parse_synth(s)
    if is_shard_spec(s):
        return ShardImages.scan(s)
    return FolderImages.scan(s)
