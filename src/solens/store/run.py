"""The run folder: a JSON manifest plus chunked, memory-mappable ``.npy`` shards.

See ``docs/run-format.md`` for the format. ``RunWriter`` creates or resumes a run (a chunk
is complete once the manifest lists it; every file is written atomically, the manifest
last); ``Run`` reads one.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import platform
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from solens import __version__
from solens.errors import InputError, RunLockedError, RunMismatchError, StorageError
from solens.models.loading import load_model
from solens.models.model import RANDOM_WEIGHTS, is_random
from solens.store.arrays import (
    ChunkedArray,
    remove_stale_tmp,
    save_npy_hashed,
    shard_problem,
    storage_error,
)
from solens.store.images import FolderImages, parse_synth
from solens.store.protocol import (
    IDENTITY_KEYS,
    ArraySpec,
    ChunkRecord,
    ImagesRecord,
    Manifest,
    ShardRecord,
    SkippedRecord,
    identity_hash,
)
from solens.store.shards import ShardImages, reopen_shards

if TYPE_CHECKING:
    import torch

    from solens.models.model import Model
    from solens.store.images import FolderImages, SynthImages

FORMAT = Manifest.FORMAT
FORMAT_VERSION = Manifest.VERSION
MANIFEST = "manifest.json"
IMAGES = "images.json"
LOCK = ".lock"

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "IDENTITY_KEYS",
    "IMAGES",
    "MANIFEST",
    "ArraySpec",
    "LayerView",
    "Run",
    "RunChunk",
    "RunWriter",
    "chunk_file",
    "identity_hash",
    "layer_dir",
    "now",
    "read_manifest",
]


def now() -> str:
    """The current UTC time, ISO 8601 to the second (``2025-01-31T12:00:00+00:00``)."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def layer_dir(layer: int) -> str:
    """Folder name of a source layer: ``layer-09``."""
    return f"layer-{layer:02d}"


def chunk_file(index: int) -> str:
    """File name of chunk ``index`` of a per-image array: ``chunk-000003.npy``."""
    return f"chunk-{index:06d}.npy"


def _short(v: Any, n: int = 80) -> str:
    s = json.dumps(v, sort_keys=True, default=str)
    return s if len(s) <= n else s[: n - 3] + "..."


def _first_difference(old: Any, new: Any, where: str) -> str | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            d = _first_difference(old.get(k), new.get(k), f"{where}.{k}")
            if d:
                return d
        return None
    if old != new:
        return f"{where}: existing {_short(old)} vs requested {_short(new)}"
    return None


RESUME_HINT = (
    "the run keeps every chunk its manifest lists: free space (or fix the folder's "
    "permissions) and re-run the same `solens effects` command to resume it"
)
LOCK_STALE_S = float(os.environ.get("SOLENS_LOCK_STALE_S", "900"))
"""A lock record of another host whose heartbeat (the lock file's mtime, touched at every
manifest write) is older than this many seconds is stale."""
CONTENT_KINDS = ("folder", "shards")
"""Dataset kinds whose ``images.json`` records every image's sha256: a resume with some
images changed keeps the chunks of the others."""
CHECK_WORKERS = 4
"""Threads that verify shard checksums."""


class RunWriter:
    """Create or resume the run folder ``path``; append chunks; mark the run complete.

    ``identity`` holds every ``IDENTITY_KEYS`` field (``arrays`` maps array name to
    ``ArraySpec.to_dict()``); ``images`` is the candidate list (an ``ImagesRecord`` or its
    JSON form ``{"root", "paths", "labels", "classes"}``, for folders with ``sha256``,
    ``size``, ``mtime_ns``). Chunk ``k`` covers candidates ``[k * chunk_size, min((k + 1) *
    chunk_size, n))``; its rows are those that decoded. ``manifest`` is the ``Manifest`` as
    last written.

    On resume the listed chunks are checked (``verify``: ``"full"`` sizes, headers and
    sha256 checksums, ``"size"`` without the checksums): damaged ones are dropped from the
    manifest (``repaired`` lists them) and computed again. A folder or tar-shard dataset
    (``CONTENT_KINDS``) whose images changed content keeps the chunks of the unchanged
    ones (``changed`` lists the others; the run gets a new ``run_id``).
    """

    def __init__(self, path: Path, manifest: Manifest, lock_fd: int) -> None:
        self.path = path
        self.manifest = manifest
        self._lock_fd = lock_fd
        self.repaired: list[dict[str, Any]] = []
        """Chunks found damaged on resume: ``{"index", "file", "problem"}``."""
        self.changed: list[str] = []
        """Candidates whose files changed since the run was computed (their chunks redone)."""
        self.stale_lock: dict[str, Any] | None = None
        """The record of a dead writer's lock that this one took over."""

    # --- opening ------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        path: str | Path,
        identity: Mapping[str, Any],
        images: ImagesRecord | Mapping[str, Any],
        extra: Mapping[str, Any] | None = None,
        *,
        verify: str = "full",
    ) -> RunWriter:
        """A new run, or the run at ``path`` if its identity equals ``identity``
        (else ``RunMismatchError``). ``extra``: further manifest fields (not compared)."""
        path = Path(path)
        missing = [k for k in IDENTITY_KEYS if k not in identity]
        if missing:
            raise ValueError(f"identity lacks {missing}")
        if verify not in ("full", "size"):
            raise InputError(f"verify must be 'full' or 'size', got {verify!r}")
        identity = json.loads(json.dumps(dict(identity)))  # canonical (tuples -> lists)
        record = (
            images
            if isinstance(images, ImagesRecord)
            else ImagesRecord.from_dict(images, source=f"image list for {path}")
        )
        mpath = path / MANIFEST
        if path.exists() and not path.is_dir():
            raise InputError(f"--out {path} exists and is not a folder")
        if (
            path.is_dir()
            and not mpath.exists()
            and any(p for p in path.iterdir() if not p.name.startswith(".") and p.name != IMAGES)
        ):  # images.json alone: a run killed while being created
            raise RunMismatchError(
                f"{path} exists, is not empty and has no {MANIFEST}: not a solens run folder; "
                "choose another --out"
            )
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise storage_error(path, e, "choose another --out") from None
        lock_fd, stale = _lock(path)
        try:
            remove_stale_tmp(path)  # only the lock holder may
            if mpath.exists():
                manifest = read_manifest(path)
                writer = cls(path, manifest, lock_fd)
                writer._adopt()
                writer._reconcile(identity, record)
                writer._check_chunks(verify)
                manifest.resumed = [*manifest.resumed, now()]
            else:
                manifest = Manifest.from_dict(
                    {
                        "format": FORMAT,
                        **identity,
                        "run_id": identity_hash(identity)[:16],
                        "solens_version": __version__,
                        "created": now(),
                        **dict(extra or {}),
                        "n_candidates": record.n_candidates,
                        "n_images": 0,
                        "complete": False,
                        "chunks": [],
                        "skipped": [],
                        "static": {},
                        "timings": {},
                    },
                    source=f"new manifest for {path}",
                )
                writer = cls(path, manifest, lock_fd)
                writer._write(lambda: record.write(path / IMAGES))
                writer._save()
        except BaseException:
            _unlock(lock_fd)
            raise
        writer.stale_lock = stale
        return writer

    def _adopt(self) -> None:
        """On resume, before the identity check and the chunk check: take in records that
        other processes left outside the manifest (``SummaryWriter``: a distributed run's
        part files); nothing here."""

    def _reconcile(self, identity: Mapping[str, Any], record: ImagesRecord) -> None:
        """Compare the requested identity with the stored one (``RunMismatchError`` naming
        the first difference). A folder or tar shards whose candidates are the same images
        but some with new contents is accepted: the chunks holding changed files are dropped (to be
        computed again), ``images.json`` and the dataset fingerprint are updated and the
        run gets the ``run_id`` of its new identity."""
        m, path = self.manifest, self.path
        existing = m.identity()
        if existing["format_version"] != identity["format_version"]:
            raise RunMismatchError(
                f"{path} is a run of format version {existing['format_version']} (solens "
                f"{m.solens_version or '?'}); this solens writes version "
                f"{identity['format_version']} and cannot add to it (it still reads it): "
                "compute the run again into another --out"
            )
        old_ds, new_ds = existing["dataset"], identity["dataset"]
        changed: list[int] = []
        if old_ds != new_ds and old_ds.get("kind") == new_ds.get("kind") in CONTENT_KINDS:
            changed = self._changed_files(record)
        for k in IDENTITY_KEYS:
            if k == "dataset" and changed:
                continue
            d = _first_difference(existing[k], identity[k], k)
            if d:
                raise RunMismatchError(
                    f"{path} holds a different run ({d}); use another --out or delete it"
                )
        old_rec = ImagesRecord.read(path / IMAGES)
        if changed or (old_rec.mtime_ns, old_rec.size) != (record.mtime_ns, record.size):
            self._write(lambda: record.write(path / IMAGES))  # new contents or mtimes
        if not changed:
            return
        self.changed = [record.paths[i] for i in changed]
        self._drop_chunks({i // m.chunk_size for i in changed})
        m.dataset = dict(new_ds)
        m.run_id = identity_hash(identity)[:16]
        self._save()

    def _changed_files(self, record: ImagesRecord) -> list[int]:
        """Candidates whose sha256 differs between ``images.json`` and ``record`` (the same
        paths in the same order); ``RunMismatchError`` naming added or removed images, or
        for a run whose ``images.json`` records no contents."""
        old = ImagesRecord.read(self.path / IMAGES)
        if old.paths != record.paths:
            gone = [p for p in old.paths if p not in set(record.paths)]
            new = [p for p in record.paths if p not in set(old.paths)]
            parts = [f"{len(x)} {what} ({_few(x)})" for x, what in
                     ((new, "new"), (gone, "missing")) if x]  # fmt: skip
            raise RunMismatchError(
                f"dataset: the images differ from those of run {self.path}: "
                f"{', '.join(parts) or 'another order'}; use another --out"
            )
        if old.sha256 is None or record.sha256 is None:
            raise RunMismatchError(
                f"the files of the image folder differ from those of run {self.path} (paths, "
                "sizes or mtimes); use another --out or delete it"
            )
        return [i for i, (a, b) in enumerate(zip(old.sha256, record.sha256, strict=True))
                if a != b]  # fmt: skip

    def _check_chunks(self, verify: str) -> None:
        """Drop the listed chunks with a damaged shard (see the class doc) and the static
        arrays whose file is damaged."""
        m = self.manifest
        jobs = []
        for c in m.chunks:
            for name, spec in m.arrays.items():
                f = c.files.get(name) if c.files else None
                jobs.append((c.index, Path(name) / chunk_file(c.index), (c.rows, *spec.tail),
                             spec.dtype, f))  # fmt: skip

        def check(job: tuple[Any, ...]) -> str | None:
            _, rel, shape, dtype, f = job
            return shard_problem(self.path / rel, shape, dtype,
                                 None if f is None else f.bytes,
                                 None if f is None or verify != "full" else f.sha256)  # fmt: skip

        with ThreadPoolExecutor(CHECK_WORKERS) as pool:
            problems = list(pool.map(check, jobs))
        bad: dict[int, dict[str, Any]] = {}
        for job, problem in zip(jobs, problems, strict=True):
            if problem is not None and job[0] not in bad:
                bad[job[0]] = {"index": job[0], "file": job[1].as_posix(), "problem": problem}
        self.repaired = [bad[i] for i in sorted(bad)]
        changed = bool(bad)
        if bad:
            self._drop_chunks(set(bad))
        for name, meta in list(m.static.items()):
            problem = shard_problem(self.path / f"{name}.npy", tuple(meta["shape"]),
                                    meta["dtype"], meta.get("bytes"),
                                    meta.get("sha256") if verify == "full" else None)  # fmt: skip
            if problem is not None:
                del m.static[name]
                self.repaired.append({"index": None, "file": f"{name}.npy",
                                      "problem": problem})  # fmt: skip
                changed = True
        if changed:
            self._save()

    def _drop_chunks(self, indices: set[int]) -> None:
        m = self.manifest
        m.chunks = [c for c in m.chunks if c.index not in indices]
        m.skipped = [s for s in m.skipped if s.index // m.chunk_size not in indices]
        m.n_images = sum(c.rows for c in m.chunks)
        if indices:
            m.complete = False
            m.finished = None

    def close(self) -> None:
        """Release the lock (the manifest on disk is always current)."""
        if self._lock_fd >= 0:
            _unlock(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- state --------------------------------------------------------------------------
    @property
    def chunk_size(self) -> int:
        return self.manifest.chunk_size

    @property
    def n_candidates(self) -> int:
        return self.manifest.n_candidates

    @property
    def n_chunks(self) -> int:
        return -(-self.n_candidates // self.chunk_size)

    def chunk_range(self, index: int) -> tuple[int, int]:
        """Candidate range [start, stop) of chunk ``index``."""
        start = index * self.chunk_size
        return start, min(start + self.chunk_size, self.n_candidates)

    @property
    def done(self) -> set[int]:
        """Indices of complete chunks."""
        return {c.index for c in self.manifest.chunks}

    def pending(self) -> list[int]:
        """Chunks still to compute, in order."""
        done = self.done
        return [k for k in range(self.n_chunks) if k not in done]

    # --- writing ------------------------------------------------------------------------
    def _write(self, write: Callable[[], Any]) -> Any:
        """Run ``write()``; a ``StorageError`` gets the advice to resume."""
        try:
            return write()
        except StorageError as e:
            raise StorageError(f"{e}; {RESUME_HINT}") from None

    def write_static(self, name: str, array: np.ndarray, **meta: Any) -> None:
        """An image-independent array ``RUN/<name>.npy`` (e.g. directions [N, P, d]);
        ``meta`` is recorded with its shape, dtype, length and sha256 in
        ``manifest.static[name]``."""
        nbytes, sha = self._write(lambda: save_npy_hashed(self.path / f"{name}.npy", array))
        self.manifest.static[name] = {
            "shape": list(array.shape),
            "dtype": str(array.dtype),
            **meta,
            "bytes": nbytes,
            "sha256": sha,
        }
        self._save()

    def has_static(self, name: str) -> bool:
        """Whether ``RUN/<name>.npy`` is stored and recorded."""
        return name in self.manifest.static and (self.path / f"{name}.npy").exists()

    def write_chunk(
        self,
        index: int,
        arrays: Mapping[str, np.ndarray],
        skipped: Sequence[Mapping[str, Any] | SkippedRecord] = (),
        seconds: float | None = None,
    ) -> None:
        """Write chunk ``index``: every array of ``manifest.arrays``, each [rows, *tail]
        with ``rows`` = the chunk's candidates minus ``skipped``.

        ``skipped`` lists the candidates of this chunk that were not decoded
        (``{"index", "path", "reason"}``). The manifest (with each shard's length and
        sha256) is updated after all files.
        """
        specs = self.manifest.arrays
        if set(arrays) != set(specs):
            raise ValueError(f"chunk arrays {sorted(arrays)} != declared {sorted(specs)}")
        start, stop = self.chunk_range(index)
        skip = [s if isinstance(s, SkippedRecord) else SkippedRecord.from_dict(s) for s in skipped]
        rows = stop - start - len(skip)
        files = {}
        for name, arr in arrays.items():
            spec = specs[name]
            want = (rows, *spec.tail)
            if tuple(arr.shape) != want:
                raise ValueError(f"{name}: chunk {index} has shape {arr.shape}, expected {want}")
            a = arr.astype(spec.dtype, copy=False)
            target = self.path / name / chunk_file(index)
            files[name] = ShardRecord(*self._write(partial(save_npy_hashed, target, a)))
        m = self.manifest
        record = ChunkRecord(
            index=index,
            start=start,
            stop=stop,
            rows=rows,
            skipped=sorted(s.index for s in skip),
            seconds=None if seconds is None else round(seconds, 4),
            files=files,
        )
        m.chunks = sorted([c for c in m.chunks if c.index != index] + [record],
                          key=lambda c: c.index)  # fmt: skip
        others = [s for s in m.skipped if not start <= s.index < stop]
        m.skipped = sorted(others + skip, key=lambda s: s.index)
        m.n_images = sum(c.rows for c in m.chunks)
        self._save()

    def finish(self, **timings: Any) -> None:
        """Record timings; mark complete when every chunk is written and the run has at
        least one image (a run whose every image was skipped stays incomplete)."""
        self.manifest.timings.update(timings)
        self.manifest.complete = not self.pending() and (
            self.manifest.n_images > 0 or self.n_candidates == 0
        )
        if self.manifest.complete:
            self.manifest.finished = now()
        self._save()

    def update(self, **fields: Any) -> None:
        """Set manifest fields by JSON key (``Manifest.update``) and save."""
        self.manifest.update(**fields)
        self._save()

    def _save(self) -> None:
        self.manifest.updated = now()
        self._write(lambda: self.manifest.write(self.path / MANIFEST))
        with contextlib.suppress(OSError):  # heartbeat of the lock (see LOCK_STALE_S)
            os.utime(self.path / LOCK)


def _few(items: Sequence[str], n: int = 3) -> str:
    """``a, b, c`` or ``a, b, c and 5 more``."""
    head = ", ".join(items[:n])
    return head + (f" and {len(items) - n} more" if len(items) > n else "")


def _lock_record(fd: int) -> dict[str, Any] | None:
    """The JSON record in a lock file (None when empty or unreadable)."""
    try:
        data = os.pread(fd, 4096, 0)
        rec = json.loads(data.decode()) if data.strip() else None
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return rec if isinstance(rec, dict) else None


def _holder(rec: dict[str, Any] | None) -> str:
    if not rec:
        return "another solens process"
    return (f"solens process {rec.get('pid')} on host {rec.get('host')} "
            f"(since {rec.get('started')})")  # fmt: skip


def _lock(path: Path) -> tuple[int, dict[str, Any] | None]:
    """Take the run's lock: an exclusive, non-blocking ``flock`` on ``RUN/.lock``, holding
    a JSON record ``{pid, host, started, solens_version}``. Returns the descriptor and
    the record of a dead writer it replaced (else None).

    A record left by a killed writer is stale when it names this host (the flock, which
    the kernel drops with the process, was free) or when it names another host and its
    heartbeat (the file's mtime) is older than ``LOCK_STALE_S``; otherwise (a file
    system whose flock does not reach other hosts) the run counts as in use.
    """
    lock = path / LOCK
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise storage_error(path, e, "the run folder must be writable") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        rec = _lock_record(fd)
        os.close(fd)
        raise RunLockedError(
            f"run folder {path} is in use by {_holder(rec)}; wait for it to finish"
        ) from None
    rec = _lock_record(fd)
    me = platform.node()
    if rec and rec.get("host") != me:
        try:
            age = time.time() - os.fstat(fd).st_mtime
        except OSError:
            age = 0.0
        if age < LOCK_STALE_S:
            os.close(fd)
            raise RunLockedError(
                f"run folder {path} is in use by {_holder(rec)}, last active {age:.0f} s "
                f"ago; if that process is gone, delete {lock} (or wait {LOCK_STALE_S:.0f} s)"
            )
    mine = {"pid": os.getpid(), "host": me, "started": now(), "solens_version": __version__}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(mine) + "\n").encode(), 0)
    except OSError as e:
        os.close(fd)
        raise storage_error(lock, e, "the run folder must be writable") from None
    return fd, rec or None


def _unlock(fd: int) -> None:
    """Empty the lock record and release the lock."""
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
    os.close(fd)


def read_manifest(path: str | Path) -> Manifest:
    """The manifest of the run folder ``path`` (``InputError`` when there is none or it is
    not a manifest this solens reads)."""
    path = Path(path)
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise InputError(f"{path} is not a solens run folder (no {MANIFEST})")
    return Manifest.read(mpath)


@dataclass
class LayerView:
    """Per-layer arrays of a run (rows = images in manifest order): ``s`` [n, N, P],
    ``offset`` [n, d], ``norms`` [n, N]; ``directions(convention)`` [N, P, d]."""
    layer: int
    s: ChunkedArray  # [n, N, P]
    offset: ChunkedArray  # [n, d]
    norms: ChunkedArray  # [n, N]
    run: Run

    def directions(self, convention: str = "exact", mmap: bool = True) -> np.ndarray:
        """Image-independent directions u [N, P, d] stored at compute time."""
        return self.run.static(f"{layer_dir(self.layer)}/directions-{convention}", mmap=mmap)


@dataclass
class RunChunk:
    """One complete chunk of a run, memory-mapped: rows ``start:stop`` of the run.

    ``arrays`` (also ``chunk[name]``) maps the last part of each array name to its shard
    [rows, *tail], e.g. ``s`` [rows, N, P]; ``image_paths`` [rows] are the rows' ids.
    """

    index: int
    start: int
    stop: int
    image_paths: list[str]
    arrays: dict[str, np.ndarray]

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    @property
    def rows(self) -> int:
        return self.stop - self.start


class Run:
    """A run folder opened for reading; only complete chunks are visible.

    ``manifest`` is its ``Manifest``, ``images_record`` its ``ImagesRecord``. Rows (the
    image axis of every array) are the decoded candidates of the complete chunks, in order.
    """

    def __init__(self, path: Path, manifest: Manifest, images: ImagesRecord) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self._images = images
        self._chunks = sorted(manifest.chunks, key=lambda c: c.index)
        self._verified: set[str] = set()

    @classmethod
    def open(cls, path: str | Path, check: bool = True) -> Run:
        """Open the run folder ``path`` (``InputError`` when it is missing, is not a run
        folder, or holds a manifest or image list this solens does not read).

        With ``check`` (the default) every listed shard is checked cheaply: it exists and
        has the recorded length (runs of format version 1: a header and length that fit
        the chunk's rows); ``InputError`` naming the first damaged one. Checksums are
        verified as chunks are read (``iter_chunks``) and by ``verify()``.
        """
        path = Path(path)
        if not path.is_dir():
            raise InputError(f"run folder {path} does not exist")
        manifest = read_manifest(path)
        images = ImagesRecord.read(path / IMAGES)
        if images.n_candidates != manifest.n_candidates:
            raise InputError(
                f"{path / IMAGES} lists {images.n_candidates} candidates, {path / MANIFEST} "
                f"{manifest.n_candidates}: not the image list of this run"
            )
        run = cls(path, manifest, images)
        if check:
            problems = run.verify(checksums=False, first=True)
            if problems:
                raise _damaged(run.path, problems[0])
        return run

    def verify(self, checksums: bool = True, first: bool = False) -> list[dict[str, Any]]:
        """Damaged files of the run: ``{"index" (chunk, None for a static array), "file",
        "problem"}`` for every listed shard and static array that is missing, has another
        length, header or (with ``checksums``) sha256 than recorded. ``first``: stop at
        the first."""
        out: list[dict[str, Any]] = []
        m = self.manifest
        for name, meta in m.static.items():
            rel = f"{name}.npy"
            problem = shard_problem(self.path / rel, tuple(meta["shape"]), meta["dtype"],
                                    meta.get("bytes"),
                                    meta.get("sha256") if checksums else None)  # fmt: skip
            if problem is not None:
                out.append({"index": None, "file": rel, "problem": problem})
                if first:
                    return out
        for c in self._chunks:
            for name, spec in m.arrays.items():
                rel = f"{name}/{chunk_file(c.index)}"
                f = c.files.get(name) if c.files else None
                if f is not None and not checksums:  # the recorded length is enough
                    try:
                        size = (self.path / rel).stat().st_size
                        problem = None if size == f.bytes else f"{size} bytes, expected {f.bytes}"
                    except OSError as e:
                        problem = "missing" if isinstance(e, FileNotFoundError) else str(e)
                else:
                    problem = shard_problem(self.path / rel, (c.rows, *spec.tail), spec.dtype,
                                            None if f is None else f.bytes,
                                            None if f is None else f.sha256)  # fmt: skip
                if problem is not None:
                    out.append({"index": c.index, "file": rel, "problem": problem})
                    if first:
                        return out
        return out

    def _verified_shard(self, c: ChunkRecord, name: str) -> Path:
        """The shard of array ``name`` in chunk ``c``, its checksum verified (once per
        ``Run``); ``InputError`` when it is damaged."""
        rel = f"{name}/{chunk_file(c.index)}"
        path = self.path / rel
        if rel in self._verified:
            return path
        spec = self.manifest.arrays[name]
        f = c.files.get(name) if c.files else None
        problem = shard_problem(path, (c.rows, *spec.tail), spec.dtype,
                                None if f is None else f.bytes,
                                None if f is None else f.sha256)  # fmt: skip
        if problem is not None:
            raise _damaged(self.path, {"index": c.index, "file": rel, "problem": problem})
        self._verified.add(rel)
        return path

    # --- metadata -----------------------------------------------------------------------
    @property
    def run_id(self) -> str:
        """First 16 hex digits of the sha256 of the run's identity."""
        return self.manifest.run_id

    @property
    def layers(self) -> list[int]:
        return list(self.manifest.layers)

    @property
    def model(self) -> dict[str, Any]:
        """``ModelInfo.to_dict()`` of the model that made the run."""
        return self.manifest.model

    @property
    def n_neurons(self) -> int:
        """MLP width N of the source layers."""
        if self.manifest.n_neurons is not None:
            return int(self.manifest.n_neurons)
        return int(self.manifest.model["d_mlp"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest.complete)

    def require_complete(self, allow_partial: bool = False) -> None:
        """``InputError`` unless the run is complete (or ``allow_partial``: use the
        complete chunks of an unfinished run)."""
        if not self.complete and not allow_partial:
            raise InputError(
                f"run {self.path} is incomplete ({self.n_images} images so far); "
                "re-run `solens effects` with the same arguments to finish it"
            )

    @property
    def n_images(self) -> int:
        """Rows: images of the complete chunks."""
        return sum(c.rows for c in self._chunks)

    @property
    def skipped(self) -> list[dict[str, Any]]:
        """Candidates that could not be decoded: ``{"index", "path", "reason"}``."""
        return [s.to_dict() for s in self.manifest.skipped]

    @property
    def row_candidates(self) -> list[int]:
        """Candidate index of every row: [n_images] (``images().load(row_candidates[i])``
        is row ``i``'s image)."""
        out: list[int] = []
        for c in self._chunks:
            skip = set(c.skipped)
            out.extend(i for i in range(c.start, c.stop) if i not in skip)
        return out

    @property
    def images_record(self) -> ImagesRecord:
        """``images.json``: every candidate, also those of missing chunks or skipped."""
        return self._images

    @property
    def image_root(self) -> str | None:
        return self._images.root

    @property
    def image_paths(self) -> list[str]:
        """Image ids (paths relative to ``image_root``), one per row."""
        paths = self._images.paths
        return [paths[i] for i in self.row_candidates]

    @property
    def classes(self) -> list[str]:
        return list(self._images.classes or [])

    @property
    def labels(self) -> list[str | None] | None:
        """Label (sub-folder name / scene label) per row, or None if the dataset has none."""
        labels = self._images.labels
        if labels is None:
            return None
        return [labels[i] for i in self.row_candidates]

    @property
    def label_ids(self) -> np.ndarray | None:
        """Index into ``classes`` per row (-1 where unlabelled): [n] int64."""
        labels = self.labels
        if labels is None:
            return None
        idx = {c: i for i, c in enumerate(self.classes)}
        return np.array(
            [idx.get(lab, -1) if lab is not None else -1 for lab in labels], dtype=np.int64
        )

    def images(self, verify: bool = True) -> FolderImages | SynthImages | ShardImages:
        """The run's dataset, rebuilt from the manifest's ``dataset`` and ``images.json``:
        the same candidates in the same order (rows -> candidates: ``row_candidates``).

        ``InputError`` when the image folder is gone (moved or deleted), a synthetic spec no
        longer parses or renders other scenes (scene-spec version), or, with ``verify``, the
        folder's files differ from the run's (their contents; a run of format version 1:
        paths, sizes and mtimes), naming the images that differ.
        """
        ds = self.manifest.dataset
        kind = ds.get("kind")
        rec = self._images
        if kind == "folder":
            root = Path(rec.root if rec.root is not None else ds.get("root", ""))
            if not root.is_dir():
                raise InputError(
                    f"the image folder {root} of run {self.path} does not exist any more "
                    "(moved or deleted)"
                )
            labels = None if rec.labels is None else list(rec.labels)
            source = FolderImages(root, list(rec.paths), labels)
            if verify:
                _check_folder(self, source)
            return source
        if kind == "synth":
            spec = ds.get("spec")
            try:
                scenes = parse_synth(str(spec))
            except InputError as e:
                raise InputError(
                    f"the dataset {spec!r} of run {self.path} no longer parses: {e}"
                ) from None
            if scenes.describe().get("fingerprint") != ds.get("fingerprint"):
                raise InputError(
                    f"the synthetic dataset {spec!r} of run {self.path} was made by another "
                    "scene-spec version of solens.synth: its images would differ"
                )
            if scenes.ids != rec.paths:
                raise InputError(f"{self.path / IMAGES} does not list the scenes of {spec!r}")
            return scenes
        if kind == "shards":
            return reopen_shards(ds, rec, self.path, verify)
        raise InputError(f"run {self.path} has a dataset of unknown kind {kind!r}")

    def load_model(self, device: str | torch.device = "cpu") -> Model:
        """Re-load the model that computed the run (from the manifest's ``model``: a
        checkpoint, hf:, hf-hub/local-dir, solens-tiny or an open_clip pretrained tag) on
        ``device`` and check its vision weights against ``weights_sha256``
        (``RunMismatchError`` when they differ; ``InputError`` for random weights and for
        models given in Python without a record of their weights)."""

        info = self.model
        # file locations are kept beside the identity (``model_files``)
        extra = {**(info.get("extra") or {}), **(self.manifest.model_files or {})}
        name = info["name"]
        qg = bool(info.get("quick_gelu", False))
        how = extra.get("weights")
        if is_random(info):
            raise InputError(
                f"run {self.path} was computed by {name} with {RANDOM_WEIGHTS}; they cannot "
                "be re-loaded: pass the model in Python (describe_run(..., model=))"
            )
        if how is None and info.get("pretrained") is None:
            raise InputError(
                f"run {self.path} was computed with a model given in Python ({name}, "
                "pretrained=None: its weights are not recorded); it cannot be re-loaded: pass "
                "the model in Python (describe_run(..., model=))"
            )
        if how == "checkpoint":
            model = load_model(name, checkpoint=extra["checkpoint"], device=device, quick_gelu=qg)
        elif how == "hf":  # a transformers CLIP: from the hub cache (repo), else its folder
            user_qg = qg if extra.get("quick_gelu_from") == "user" else None
            repo = extra.get("repo")
            model = load_model(
                name if repo else None,
                checkpoint=None if repo else extra["location"],
                device=device,
                quick_gelu=user_qg,
            )
        elif how in ("hf-hub", "local-dir") or name == "solens-tiny":
            model = load_model(name, device=device)
        else:
            model = load_model(name, info.get("pretrained"), device=device, quick_gelu=qg)
        want = self.manifest.weights_sha256
        if want and model.weights_sha256 != want:
            raise RunMismatchError(
                f"the weights of {name} ({info.get('pretrained')}) loaded now differ from those "
                f"that computed run {self.path}"
            )
        return model

    # --- arrays -------------------------------------------------------------------------
    def array(self, name: str) -> ChunkedArray:
        """Per-image array ``name`` over all complete chunks: [n, *tail]."""
        spec = self.manifest.arrays.get(name)
        if spec is None:
            raise InputError(f"run {self.path} has no array {name!r}")
        files = [self.path / name / chunk_file(c.index) for c in self._chunks]
        return ChunkedArray(files, shape_tail=tuple(spec.tail), dtype=spec.dtype)

    def static(self, name: str, mmap: bool = True) -> np.ndarray:
        """Image-independent array ``RUN/<name>.npy`` (e.g. ``layer-09/directions-exact``
        [N, P, d]), memory-mapped unless ``mmap=False``."""
        if name not in self.manifest.static:
            raise InputError(f"run {self.path} has no stored {name!r}")
        return np.load(self.path / f"{name}.npy", mmap_mode="r" if mmap else None)

    @property
    def embeddings(self) -> ChunkedArray:
        """f(I), unnormalised: [n, d]."""
        return self.array("embeddings")

    @property
    def inv_sigma_post(self) -> ChunkedArray:
        """1 / std of the ln_post input at CLS: [n]."""
        return self.array("inv_sigma_post")

    def _check_layer(self, layer: int) -> str:
        if layer not in self.layers:
            raise InputError(f"layer {layer} is not in run {self.path} (layers {self.layers})")
        return layer_dir(layer)

    def layer(self, layer: int) -> LayerView:
        """Arrays of source layer ``layer``: ``s`` [n, N, P], ``offset`` [n, d], ``norms``
        [n, N] (``InputError`` when the run does not hold the layer)."""
        d = self._check_layer(layer)
        return LayerView(
            layer, self.array(f"{d}/s"), self.array(f"{d}/offset"), self.array(f"{d}/norms"), self
        )

    def iter_chunks(
        self, layer: int | None = None, names: Sequence[str] | None = None
    ) -> Iterator[RunChunk]:
        """Complete chunks in row order, memory-mapped.

        With ``layer``: arrays ``s`` [b, N, P], ``offset`` [b, d], ``norms`` [b, N] plus
        ``embeddings`` [b, d] and ``inv_sigma_post`` [b]; ``names`` picks raw array names.
        Each shard's checksum is verified before its first use (``InputError`` naming a
        damaged shard).
        """
        if names is None:
            names = ["embeddings", "inv_sigma_post"]
            if layer is not None:
                d = self._check_layer(layer)
                names += [f"{d}/s", f"{d}/offset", f"{d}/norms"]
        paths = self._images.paths
        row = 0
        for n in names:
            if n not in self.manifest.arrays:
                raise InputError(f"run {self.path} has no array {n!r}")
        for c in self._chunks:
            arrays = {}
            for n in names:
                a = np.load(self._verified_shard(c, n), mmap_mode="r")
                arrays[n.rsplit("/", 1)[-1]] = a
            skip = set(c.skipped)
            ids = [paths[i] for i in range(c.start, c.stop) if i not in skip]
            yield RunChunk(c.index, row, row + c.rows, ids, arrays)
            row += c.rows

    def __repr__(self) -> str:
        m = self.model
        return (
            f"Run({str(self.path)!r}, model={m.get('name')!r}/{m.get('pretrained')!r}, "
            f"layers={self.layers}, images={self.n_images}, complete={self.complete})"
        )


def _one_line(s: str) -> str:
    return " ".join(s.split())


def _damaged(path: Path, problem: Mapping[str, Any]) -> InputError:
    return InputError(
        f"{path / problem['file']} is damaged ({problem['problem']}): re-run `solens effects` "
        "with the same arguments to compute it again"
    )


def _check_folder(run: Run, source: FolderImages) -> None:
    """``InputError`` naming the images of ``source`` that differ from ``run``'s."""
    rec, ds = run.images_record, run.manifest.dataset
    try:
        if rec.sha256 is None:  # format version 1: paths, sizes, mtimes
            if source.fingerprint_v1() != ds.get("fingerprint"):
                raise InputError(
                    f"the files in {source.root} differ from those of run {run.path} (paths, "
                    "sizes or mtimes); Run.images(verify=False) skips this check"
                )
            return
        now_sha = source.files(known=rec.to_dict())["sha256"]
    except (OSError, InputError) as e:
        if isinstance(e, InputError) and "differ from" in str(e):
            raise
        msg = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise InputError(
            f"the image folder {source.root} of run {run.path} changed: {_one_line(str(msg))}"
            + (f" ({e.filename})" if isinstance(e, OSError) and e.filename else "")
        ) from None
    differ = [p for p, a, b in zip(rec.paths, rec.sha256, now_sha, strict=True) if a != b]
    if differ:
        raise InputError(
            f"{len(differ)} images in {source.root} differ from those of run {run.path}: "
            f"{_few(differ)}; Run.images(verify=False) skips this check"
        )
