"""WebDataset tar shards as an image source, with a deterministic global image index.

A spec names one or more uncompressed ``.tar`` shards in WebDataset layout (members
``KEY.EXT``; the files of one sample share ``KEY``): a path (``data/train-000.tar``), a
brace pattern (``data/train-{000000..000146}.tar``, expanded by ``webdataset``), a glob
(``data/*.tar``), several of these joined by ``::``, or a folder whose top level holds
``.tar`` files and no image files (= ``FOLDER/*.tar``). Shards are taken in the order the
spec gives them (brace patterns in expansion order, each glob's matches sorted, duplicates
dropped), samples in the order of their members inside each shard.

The **global image index** of a sample is its position in that order: shard by shard,
sample by sample, counting only samples that hold an image (``.jpg .jpeg .png .webp .bmp``,
the first in that order when a sample has several). It does not depend on how many
processes read the shards, so every image has one candidate index across shards and
ranks. Its id is ``SHARD/KEY`` (``SHARD`` = the shard's path relative to the folder all
shards share). Labels: the text of the sample's ``.cls`` member (stripped), when any
sample has one (the class name, e.g. an ImageNet synset id, as a class sub-folder of an
image folder). Other members of a sample can be located too (``ShardImages.scan(spec,
extras=("mask.png",))``: ``KEY.mask.png``, the segmentation mask of ``solens segment``).

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
from collections.abc import Mapping, Sequence
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
    known_digests,
    parse_synth,
    to_rgb,
)
from solens.store.protocol import ImagesRecord

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
                raise InputError(f"no shards match {url!r}")
        else:
            matches = [url]
        for m in matches:
            p = Path(m)
            if not p.is_file():
                raise InputError(f"shard {p} does not exist ({spec})")
            if not p.name.endswith(SHARD_SUFFIX):
                raise InputError(f"shard {p} is not an uncompressed .tar file")
            key = str(p.resolve())
            if key not in seen:
                seen.add(key)
                out.append(p)
    if not out:
        raise InputError(f"{spec!r} names no .tar shards")
    return out


@dataclass(frozen=True)
class _Member:
    shard: int  # index into ShardImages.shards
    offset: int  # byte offset of the member's data in the shard
    size: int


_Sample = tuple[str, _Member, str | None, tuple[_Member | None, ...]]


def _scan_shard(path: Path, shard: int, extras: Sequence[str] = ()) -> tuple[list[_Sample], str]:
    """Samples of one shard in member order: (key, image member, label or None, the member
    of each extension of ``extras`` or None), plus a digest of its member table (names,
    sizes, header checksums)."""
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
                out.append((key, image, label, tuple(files.get(e) for e in extras)))
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
    extras: dict[str, list[_Member | None]] = field(default_factory=dict, repr=False)
    _files: dict[str, list[Any]] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def scan(cls, spec: str, extras: Sequence[str] = ()) -> ShardImages:
        """Read the member tables of the shards of ``spec``; ``extras``: member extensions
        (``"mask.png"``) to locate in every sample as well (``read_extra``)."""
        extras = [e.lower() for e in extras]
        shards = expand_shards(spec)
        root = Path(os.path.commonpath([str(p.resolve().parent) for p in shards]))
        ids: list[str] = []
        labels: list[str | None] = []
        members: list[_Member] = []
        found: dict[str, list[_Member | None]] = {e: [] for e in extras}
        digests = []
        for k, p in enumerate(shards):
            samples, digest = _scan_shard(p, k, extras)
            digests.append(digest)
            name = p.resolve().relative_to(root).as_posix()
            for key, member, label, more in samples:
                ids.append(f"{name}/{key}")
                members.append(member)
                labels.append(label)
                for e, m in zip(extras, more, strict=True):
                    found[e].append(m)
        if not ids:
            raise InputError(
                f"the shards of {spec!r} hold no images "
                f"({'/'.join(s[1:] for s in IMAGE_SUFFIXES)} members)"
            )
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise InputError(f"image {dup} appears twice in the shards of {spec!r}")
        has_labels = any(lab is not None for lab in labels)
        return cls(spec, shards, ids, labels if has_labels else None, members, digests, found)

    def __len__(self) -> int:
        return len(self.ids)

    def _read(self, m: _Member, index: int, what: str) -> bytes:
        with open(self.shards[m.shard], "rb") as f:
            f.seek(m.offset)
            data = f.read(m.size)
        if len(data) != m.size:
            raise OSError(f"{self.ids[index]}: shard ends before the {what} does")
        return data

    def read_bytes(self, index: int) -> bytes:
        """The encoded image of candidate ``index``."""
        return self._read(self.members[index], index, "image")

    def read_extra(self, ext: str, index: int) -> bytes:
        """The bytes of candidate ``index``'s ``KEY.<ext>`` member (``ext`` one of the
        ``extras`` of ``scan``; ``KeyError`` when that sample has none)."""
        m = self.extras[ext][index]
        if m is None:
            raise KeyError(f"{self.ids[index]} has no .{ext} member")
        return self._read(m, index, f".{ext} member")

    def load(self, index: int) -> Image.Image:
        try:
            im = Image.open(io.BytesIO(self.read_bytes(index)))
        except UnidentifiedImageError:  # its message names a memory address: not stable
            raise UnidentifiedImageError(f"cannot identify image {self.ids[index]}") from None
        with im:
            im.load()
            return to_rgb(im)

    def files(
        self, known: Mapping[str, Any] | None = None, progress: bool = False
    ) -> dict[str, list[Any]]:
        """Content record of every candidate, as ``FolderImages.files``: ``{"sha256":
        [hex of the image member's bytes], "size": [member bytes], "mtime_ns": [its
        shard's mtime]}`` (computed once, then cached). ``known``: such a record of the
        same candidates (``images.json`` of a run); an image whose size and shard mtime
        equal the known ones keeps its known sha256 without being read. ``InputError``
        naming a shard that cannot be read."""
        if self._files is not None:
            return self._files
        try:
            mtimes = [p.stat().st_mtime_ns for p in self.shards]
        except OSError as e:
            raise InputError(f"shard {e.filename} cannot be read: {e.strerror or e}") from None
        sizes = [m.size for m in self.members]
        stamp = [mtimes[m.shard] for m in self.members]
        sha = known_digests(self.ids, sizes, stamp, known)
        todo = [j for j, h in enumerate(sha) if h is None]
        if todo:
            from tqdm.auto import tqdm

            with tqdm(total=len(todo), unit="img", desc="sha256 of images",
                      disable=not progress or len(todo) < 1000) as bar:  # fmt: skip
                for k, shard in enumerate(self.shards):
                    mine = [j for j in todo if self.members[j].shard == k]
                    if not mine:
                        continue
                    try:
                        with open(shard, "rb") as f:
                            for j in mine:
                                f.seek(self.members[j].offset)
                                sha[j] = hashlib.sha256(f.read(sizes[j])).hexdigest()
                                bar.update(1)
                    except OSError as e:
                        raise InputError(f"shard {shard} cannot be read: "
                                         f"{e.strerror or e}") from None
        self._files = {"sha256": [str(h) for h in sha], "size": sizes, "mtime_ns": stamp}
        return self._files

    def fingerprint(self) -> str:
        """sha256 over (id, sha256 of the image's bytes) of every candidate (the formula
        of ``FolderImages.fingerprint``)."""
        h = hashlib.sha256()
        for i, digest in zip(self.ids, self.files()["sha256"], strict=True):
            h.update(f"{i}\0{digest}\n".encode())
        return h.hexdigest()

    def labels_fingerprint(self) -> str | None:
        """sha256 over (id, label) of every candidate (None without labels): the ``.cls``
        members are not part of ``fingerprint`` (a folder's labels are: its ids), so a
        result that depends on the labels records this as well."""
        if self.labels is None:
            return None
        h = hashlib.sha256()
        for i, lab in zip(self.ids, self.labels, strict=True):
            h.update(f"{i}\0{lab}\n".encode())
        return h.hexdigest()

    def table_fingerprint(self) -> str:
        """sha256 over each shard's name and member table (names, sizes, tar header
        checksums): the fingerprint of shard runs written before content records."""
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
            "fingerprint_of": SHARDS_FINGERPRINT_OF,
        }


SHARDS_FINGERPRINT_OF = "image ids and image contents (sha256)"


def reopen_shards(
    dataset: Mapping[str, Any], record: ImagesRecord, run: Path, verify: bool = True
) -> ShardImages:
    """The ``ShardImages`` of a run's ``dataset`` record, checked against the run's
    candidates (``record``: ``images.json``) and, with ``verify``, their contents (images
    whose size and shard mtime are unchanged are not re-read); ``InputError`` when the
    shards moved or changed, naming the images that differ."""
    shards = dataset.get("shards") or []
    spec = "::".join(str(s) for s in shards) or str(dataset.get("spec"))
    try:
        source = ShardImages.scan(spec)
    except InputError as e:
        raise InputError(f"the shards of run {run} cannot be read any more: {e}") from None
    changed = f"the shards of run {run} changed since it was computed ({spec})"
    if source.ids != list(record.paths):
        raise InputError(changed)
    if verify and record.sha256 is None:  # no content record: the member tables
        if source.table_fingerprint() != dataset.get("fingerprint"):
            raise InputError(changed)
    elif verify and record.sha256 is not None:
        now_sha = source.files(known=record.to_dict())["sha256"]
        differ = [p for p, a, b in zip(record.paths, record.sha256, now_sha, strict=True)
                  if a != b]  # fmt: skip
        if differ:
            few = ", ".join(differ[:3]) + (f" and {len(differ) - 3} more" if len(differ) > 3
                                           else "")  # fmt: skip
            raise InputError(f"{changed}: {len(differ)} images differ: {few}; "
                             "Run.images(verify=False) skips this check")
    source.spec = str(dataset.get("spec", spec))
    return source


def shard_folder_spec(folder: str | Path) -> str | None:
    """``FOLDER/*.tar`` when ``folder`` is a folder whose top level holds ``.tar`` files and
    which holds no image files (a folder of shards), else None. ``InputError`` for a folder
    with both (it is not clear which is meant)."""
    p = Path(folder).expanduser()
    if not p.is_dir():
        return None
    try:
        tars = [e.name for e in os.scandir(p) if e.name.endswith(SHARD_SUFFIX)
                and not e.name.startswith(".") and e.is_file()]  # fmt: skip
    except OSError:
        return None  # FolderImages.scan says what is wrong
    if not tars:
        return None
    for dirpath, dirnames, filenames in os.walk(p, followlinks=False):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        image = next((f for f in filenames if f.lower().endswith(IMAGE_SUFFIXES)
                      and not f.startswith(".")), None)  # fmt: skip
        if image is not None:
            where = Path(dirpath, image).relative_to(p).as_posix()
            raise InputError(f"{p} holds both .tar shards ({tars[0]}) and image files "
                             f"({where}): pass '{p / '*.tar'}' for the shards, or move them")
    return str(p / f"*{SHARD_SUFFIX}")


def open_source(
    spec: str | Path, extras: Sequence[str] = ()
) -> FolderImages | SynthImages | ShardImages:
    """Any image source: ``synth:SPLIT:N[:SEED[:SIZE]]``, WebDataset ``.tar`` shards
    (``is_shard_spec``: a path, brace pattern, glob, or several joined by ``::``; or a folder
    of ``.tar`` files, ``shard_folder_spec``), or an image folder. ``extras``: member
    extensions shards must be scanned for as well (``ShardImages.scan``)."""
    s = str(spec)
    if s.startswith("synth:"):
        return parse_synth(s)
    if is_shard_spec(s):
        return ShardImages.scan(s, extras)
    folder = shard_folder_spec(s)
    if folder is not None:
        return ShardImages.scan(folder, extras)
    return FolderImages.scan(s)
