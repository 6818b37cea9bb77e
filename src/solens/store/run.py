"""The run folder: a JSON manifest plus chunked, memory-mappable ``.npy`` shards.

See ``docs/run-format.md`` for the format. ``RunWriter`` creates or resumes a run (a chunk
is complete once the manifest lists it; every file is written atomically, the manifest
last); ``Run`` reads one.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from solens import __version__
from solens.errors import InputError, RunMismatchError, SolensError
from solens.store.arrays import ChunkedArray, remove_stale_tmp, save_json_atomic, save_npy_atomic

FORMAT = "solens-run"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
IMAGES = "images.json"
IDENTITY_KEYS = (
    "format_version",
    "model",
    "weights_sha256",
    "preprocess",
    "layers",
    "dataset",
    "chunk_size",
    "arrays",
)
"""Manifest fields that must match for a run folder to be resumed."""


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def layer_dir(layer: int) -> str:
    """Folder name of a source layer: ``layer-09``."""
    return f"layer-{layer:02d}"


def chunk_file(index: int) -> str:
    return f"chunk-{index:06d}.npy"


def identity_hash(identity: Mapping[str, Any]) -> str:
    """sha256 over the canonical JSON of the identity fields (the run id)."""
    blob = json.dumps({k: identity.get(k) for k in IDENTITY_KEYS}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


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


@dataclass(frozen=True)
class ArraySpec:
    """A per-image array: row shape ``tail`` (without the image axis) and dtype."""

    tail: tuple[int, ...]
    dtype: str = "float32"

    def to_dict(self) -> dict[str, Any]:
        return {"tail": list(self.tail), "dtype": self.dtype}


class RunWriter:
    """Create or resume the run folder ``path``; append chunks; mark the run complete.

    ``identity`` holds every ``IDENTITY_KEYS`` field (``arrays`` maps array name to
    ``ArraySpec.to_dict()``); ``images`` is the candidate list
    ``{"root", "paths", "labels", "classes"}``. Chunk ``k`` covers candidates
    ``[k * chunk_size, min((k + 1) * chunk_size, n))``; its rows are those that decoded.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], lock_fd: int) -> None:
        self.path = path
        self.manifest = manifest
        self._lock_fd = lock_fd

    # --- opening ------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        path: str | Path,
        identity: Mapping[str, Any],
        images: Mapping[str, Any],
        extra: Mapping[str, Any] | None = None,
    ) -> RunWriter:
        """A new run, or the run at ``path`` if its identity equals ``identity``
        (else ``RunMismatchError``)."""
        path = Path(path)
        missing = [k for k in IDENTITY_KEYS if k not in identity]
        if missing:
            raise ValueError(f"identity lacks {missing}")
        identity = json.loads(json.dumps(dict(identity)))  # canonical (tuples -> lists)
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
        path.mkdir(parents=True, exist_ok=True)
        lock_fd = _lock(path)
        try:
            if mpath.exists():
                manifest = _read_manifest(path)
                for k in IDENTITY_KEYS:
                    d = _first_difference(manifest.get(k), identity[k], k)
                    if d:
                        raise RunMismatchError(
                            f"{path} holds a different run ({d}); use another --out or delete it"
                        )
                remove_stale_tmp(path)
                manifest["resumed"] = [*manifest.get("resumed", []), now()]
            else:
                manifest = {
                    "format": FORMAT,
                    **identity,
                    "run_id": identity_hash(identity)[:16],
                    "solens_version": __version__,
                    "created": now(),
                    **dict(extra or {}),
                    "n_candidates": len(images["paths"]),
                    "n_images": 0,
                    "complete": False,
                    "chunks": [],
                    "skipped": [],
                    "static": {},
                    "timings": {},
                }
                save_json_atomic(path / IMAGES, dict(images))
                save_json_atomic(mpath, manifest)
        except BaseException:
            os.close(lock_fd)
            raise
        return cls(path, manifest, lock_fd)

    def close(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- state --------------------------------------------------------------------------
    @property
    def chunk_size(self) -> int:
        return int(self.manifest["chunk_size"])

    @property
    def n_candidates(self) -> int:
        return int(self.manifest["n_candidates"])

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
        return {int(c["index"]) for c in self.manifest["chunks"]}

    def pending(self) -> list[int]:
        """Chunks still to compute, in order."""
        done = self.done
        return [k for k in range(self.n_chunks) if k not in done]

    # --- writing ------------------------------------------------------------------------
    def write_static(self, name: str, array: np.ndarray, **meta: Any) -> None:
        """An image-independent array ``RUN/<name>.npy`` (e.g. directions)."""
        save_npy_atomic(self.path / f"{name}.npy", array)
        self.manifest["static"][name] = {
            "shape": list(array.shape),
            "dtype": str(array.dtype),
            **meta,
        }
        self._save()

    def has_static(self, name: str) -> bool:
        return name in self.manifest["static"] and (self.path / f"{name}.npy").exists()

    def write_chunk(
        self,
        index: int,
        arrays: Mapping[str, np.ndarray],
        skipped: Sequence[Mapping[str, Any]] = (),
        seconds: float | None = None,
    ) -> None:
        """Write chunk ``index``: every array in ``manifest["arrays"]`` with the same row count.

        ``skipped`` lists the candidates of this chunk that were not decoded
        (``{"index", "path", "reason"}``). The manifest is updated after all files.
        """
        specs = self.manifest["arrays"]
        if set(arrays) != set(specs):
            raise ValueError(f"chunk arrays {sorted(arrays)} != declared {sorted(specs)}")
        start, stop = self.chunk_range(index)
        rows = stop - start - len(skipped)
        for name, arr in arrays.items():
            spec = specs[name]
            want = (rows, *spec["tail"])
            if tuple(arr.shape) != want:
                raise ValueError(f"{name}: chunk {index} has shape {arr.shape}, expected {want}")
            arr = arr.astype(spec["dtype"], copy=False)
            save_npy_atomic(self.path / name / chunk_file(index), arr)
        m = self.manifest
        m["chunks"] = sorted(
            [c for c in m["chunks"] if c["index"] != index]
            + [
                {
                    "index": index,
                    "start": start,
                    "stop": stop,
                    "rows": rows,
                    "skipped": sorted(int(s["index"]) for s in skipped),
                    "seconds": None if seconds is None else round(seconds, 4),
                }
            ],
            key=lambda c: c["index"],
        )
        others = [s for s in m["skipped"] if not start <= s["index"] < stop]
        m["skipped"] = sorted(others + [dict(s) for s in skipped], key=lambda s: s["index"])
        m["n_images"] = sum(c["rows"] for c in m["chunks"])
        self._save()

    def finish(self, **timings: Any) -> None:
        """Record timings; mark complete when every chunk is written."""
        self.manifest["timings"].update(timings)
        self.manifest["complete"] = not self.pending()
        if self.manifest["complete"]:
            self.manifest["finished"] = now()
        self._save()

    def update(self, **fields: Any) -> None:
        self.manifest.update(fields)
        self._save()

    def _save(self) -> None:
        self.manifest["updated"] = now()
        save_json_atomic(self.path / MANIFEST, self.manifest)


def _lock(path: Path) -> int:
    fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise SolensError(f"run folder {path} is in use by another solens process") from None
    return fd


def _read_manifest(path: Path) -> dict[str, Any]:
    mpath = Path(path) / MANIFEST
    try:
        manifest = json.loads(mpath.read_text())
    except FileNotFoundError:
        raise InputError(f"{path} is not a solens run folder (no {MANIFEST})") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{mpath} is not valid JSON: {e}") from None
    if manifest.get("format") != FORMAT:
        raise InputError(f"{mpath} is not a solens run manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"{mpath} has format version {manifest.get('format_version')}; "
            f"this solens reads version {FORMAT_VERSION}"
        )
    return manifest


@dataclass
class LayerView:
    """Per-layer arrays of a run (rows = images in manifest order)."""

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
    """One complete chunk of a run, memory-mapped: rows ``start:stop`` of the run."""

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
    """A run folder opened for reading; only complete chunks are visible."""

    def __init__(self, path: Path, manifest: dict[str, Any], images: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest
        self._images = images
        self._chunks = sorted(manifest["chunks"], key=lambda c: c["index"])

    @classmethod
    def open(cls, path: str | Path) -> Run:
        path = Path(path)
        if not path.is_dir():
            raise InputError(f"run folder {path} does not exist")
        manifest = _read_manifest(path)
        try:
            images = json.loads((path / IMAGES).read_text())
        except (FileNotFoundError, json.JSONDecodeError) as e:
            raise InputError(f"{path / IMAGES} is missing or unreadable: {e}") from None
        return cls(path, manifest, images)

    # --- metadata -----------------------------------------------------------------------
    @property
    def layers(self) -> list[int]:
        return list(self.manifest["layers"])

    @property
    def model(self) -> dict[str, Any]:
        """``ModelInfo.to_dict()`` of the model that made the run."""
        return self.manifest["model"]

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    @property
    def n_images(self) -> int:
        return sum(int(c["rows"]) for c in self._chunks)

    @property
    def skipped(self) -> list[dict[str, Any]]:
        return list(self.manifest.get("skipped", []))

    def _row_candidates(self) -> list[int]:
        out: list[int] = []
        for c in self._chunks:
            skip = set(c["skipped"])
            out.extend(i for i in range(c["start"], c["stop"]) if i not in skip)
        return out

    @property
    def image_root(self) -> str | None:
        return self._images.get("root")

    @property
    def image_paths(self) -> list[str]:
        """Image ids (paths relative to ``image_root``), one per row."""
        paths = self._images["paths"]
        return [paths[i] for i in self._row_candidates()]

    @property
    def classes(self) -> list[str]:
        return list(self._images.get("classes") or [])

    @property
    def labels(self) -> list[str | None] | None:
        """Label (sub-folder name / scene label) per row, or None if the dataset has none."""
        labels = self._images.get("labels")
        if labels is None:
            return None
        return [labels[i] for i in self._row_candidates()]

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

    # --- arrays -------------------------------------------------------------------------
    def array(self, name: str) -> ChunkedArray:
        """Per-image array ``name`` over all complete chunks: [n, *tail]."""
        spec = self.manifest["arrays"].get(name)
        if spec is None:
            raise InputError(f"run {self.path} has no array {name!r}")
        files = [self.path / name / chunk_file(c["index"]) for c in self._chunks]
        return ChunkedArray(files, shape_tail=tuple(spec["tail"]), dtype=spec["dtype"])

    def static(self, name: str, mmap: bool = True) -> np.ndarray:
        if name not in self.manifest.get("static", {}):
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
        """
        if names is None:
            names = ["embeddings", "inv_sigma_post"]
            if layer is not None:
                d = self._check_layer(layer)
                names += [f"{d}/s", f"{d}/offset", f"{d}/norms"]
        paths = self._images["paths"]
        row = 0
        for c in self._chunks:
            arrays = {}
            for n in names:
                a = np.load(self.path / n / chunk_file(c["index"]), mmap_mode="r")
                arrays[n.rsplit("/", 1)[-1]] = a
            skip = set(c["skipped"])
            ids = [paths[i] for i in range(c["start"], c["stop"]) if i not in skip]
            yield RunChunk(c["index"], row, row + c["rows"], ids, arrays)
            row += c["rows"]

    def images(self) -> Any:
        """The run's dataset (every candidate, in order)."""
        from solens.store.images import FolderImages, open_images

        ds = self.manifest["dataset"]
        if ds["kind"] == "synth":
            return open_images(ds["spec"])
        return FolderImages(Path(self._images["root"]), list(self._images["paths"]),
                            self._images.get("labels"))

    def __repr__(self) -> str:
        m = self.model
        return (
            f"Run({str(self.path)!r}, model={m.get('name')!r}/{m.get('pretrained')!r}, "
            f"layers={self.layers}, images={self.n_images}, complete={self.complete})"
        )
