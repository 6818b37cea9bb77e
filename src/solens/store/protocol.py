"""The JSON documents of a run folder as typed records (``docs/run-format.md``).

- ``Manifest``: ``RUN/manifest.json`` (format ``solens-run``, key ``format_version``), with
  ``ChunkRecord``, ``SkippedRecord`` and ``ArraySpec`` inside;
- ``ImagesRecord``: ``RUN/images.json`` (part of the run format: no version key of its own);
- ``StatsMeta``: ``RUN/layer-LL/stats/stats.json`` (format ``solens-stats``, key
  ``version``), with ``ArrayInfo`` inside;
- ``DescriptionsDoc``: ``RUN/descriptions/<pool>[-nonneg]-layer-LL.json`` (format
  ``solens-descriptions``, key ``version``), with ``PoolRecord``, ``NeuronDescription``
  and ``Term`` inside.

Each type has one reader (the classmethod ``read(path)``) and one writer (the method
``write(path)``, atomic through ``solens.store.arrays``), plus ``to_dict()`` /
``from_dict()`` for the JSON form. ``from_dict(read_json)`` followed by ``to_dict()`` gives
the same JSON back (keys this solens does not know are kept in ``extra``).

Compatibility rule: ``FORMAT`` is the format name, ``VERSION`` the version this solens
writes and ``READS`` the versions it reads. A reader refuses a document of another format
and of a version outside ``READS`` (a newer one: upgrade solens; an older one it no longer
reads: re-create the file) with a one-line ``InputError`` naming the file; it accepts and
keeps keys it does not know. Adding an optional key keeps the version; removing a key or
changing the meaning of one bumps it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from solens import __version__
from solens.errors import InputError
from solens.store.arrays import save_json_atomic, save_text_atomic

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
"""Manifest fields that must match for a run folder to be resumed; ``run_id`` hashes them."""

T = TypeVar("T", bound="_Document")


# --- JSON helpers ---------------------------------------------------------------------------
def _to_json(v: Any) -> Any:
    """A fresh JSON value: records via ``to_dict()``, containers copied."""
    if hasattr(v, "to_dict"):
        return v.to_dict()
    if isinstance(v, (list, tuple)):
        return [_to_json(x) for x in v]
    if isinstance(v, dict):
        return {k: _to_json(x) for k, x in v.items()}
    return v


def _read_json(path: str | Path, what: str) -> Any:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path} does not exist (no {what})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path} cannot be read: {e}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not valid JSON: {e}") from None


def _absent(v: Any) -> bool:
    """An optional key's value that is not written: None or an empty list."""
    return v is None or (isinstance(v, list) and not v)


def _one_line(s: str) -> str:
    return " ".join(str(s).split())


def identity_hash(identity: Mapping[str, Any]) -> str:
    """sha256 over the canonical JSON of the identity fields (``run_id`` = its first 16 hex
    digits)."""
    blob = json.dumps({k: identity.get(k) for k in IDENTITY_KEYS}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


# --- base classes ---------------------------------------------------------------------------
class _Document:
    """A top-level JSON document: one dataclass field per key (in on-disk order) plus
    ``extra`` for keys this solens does not know."""

    FORMAT: ClassVar[str]
    """Format name (the ``format`` key; ``ImagesRecord``: the run format it belongs to)."""
    VERSION: ClassVar[int]
    """Version this solens writes."""
    READS: ClassVar[tuple[int, ...]]
    """Versions this solens reads."""
    WHAT: ClassVar[str]
    """What the document is, for messages."""
    REDO: ClassVar[str]
    """What a user does about a version this solens does not read."""
    VERSION_KEY: ClassVar[str | None] = "version"
    OPTIONAL: ClassVar[frozenset[str]] = frozenset()
    """Keys left out of the JSON while their value is None or an empty list."""
    REQUIRED: ClassVar[tuple[str, ...]] = ()
    """Keys ``from_dict`` requires (besides format and version)."""

    extra: dict[str, Any]

    if TYPE_CHECKING:  # what the dataclass decorator gives every subclass
        __dataclass_fields__: ClassVar[dict[str, Field[Any]]]

        def __init__(self, *, extra: dict[str, Any], **values: Any) -> None: ...

    # JSON form, key by key (the mapping view converts only the key it is asked for)
    @classmethod
    def _field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.name != "extra")

    def _json_keys(self) -> list[str]:
        out = []
        for name in self._field_names():
            v = getattr(self, name)
            if name in self.OPTIONAL and _absent(v):
                continue
            out.append(name)
        return out + [k for k in self.extra if k not in self._field_names()]

    def _json_value(self, key: str) -> Any:
        if key in self._field_names():
            v = getattr(self, key)
            if key in self.OPTIONAL and _absent(v):
                raise KeyError(key)
            return _to_json(v)
        if key in self.extra:
            return _to_json(self.extra[key])
        raise KeyError(key)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, exactly as written to disk (fresh containers)."""
        return {k: self._json_value(k) for k in self._json_keys()}

    @classmethod
    def _check_header(cls, d: Any, source: str) -> None:
        if not isinstance(d, Mapping):
            raise InputError(f"{source} is not a JSON object (expected a {cls.WHAT})")
        if cls.VERSION_KEY is None:
            return
        if d.get("format") != cls.FORMAT:
            raise InputError(
                f"{source} is not a {cls.WHAT} (format {d.get('format')!r}, "
                f"expected {cls.FORMAT!r})"
            )
        key = cls.VERSION_KEY
        v = d.get(key)
        reads = " or ".join(map(str, cls.READS))
        if isinstance(v, bool) or not isinstance(v, int):
            raise InputError(
                f"{source} has no valid {key} (found {v!r}); this solens {__version__} reads "
                f"{cls.FORMAT} {key} {reads}; {cls.REDO}"
            )
        if v > max(cls.READS):
            raise InputError(
                f"{source} has {key} {v}, newer than this solens {__version__} reads "
                f"({cls.FORMAT} {key} {reads}); upgrade solens to read it"
            )
        if v not in cls.READS:
            raise InputError(
                f"{source} has {key} {v}; this solens {__version__} reads {cls.FORMAT} "
                f"{key} {reads} only; {cls.REDO}"
            )

    @classmethod
    def from_dict(cls: type[T], d: Mapping[str, Any], *, source: str | Path | None = None) -> T:
        """The document from its JSON form; ``InputError`` (one line, naming ``source``)
        for another format, a version this solens does not read or a malformed document."""
        src = str(source) if source is not None else cls.WHAT
        cls._check_header(d, src)
        missing = [k for k in cls.REQUIRED if k not in d]
        if missing:
            raise InputError(f"{src} lacks field {missing[0]!r} (not a complete {cls.WHAT})")
        known = set(cls._field_names())
        try:
            return cls._build(
                {k: v for k, v in d.items() if k in known},
                {k: v for k, v in d.items() if k not in known},
            )
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            raise InputError(
                f"{src} is a malformed {cls.WHAT} ({type(e).__name__}: {_one_line(str(e))})"
            ) from None

    @classmethod
    def _build(cls: type[T], known: dict[str, Any], extra: dict[str, Any]) -> T:
        return cls(**known, extra=extra)

    @classmethod
    def read(cls: type[T], path: str | Path) -> T:
        """Read and check ``path`` (``InputError`` naming it when it is missing, not JSON,
        of another format or version, or malformed)."""
        return cls.from_dict(_read_json(path, cls.WHAT), source=path)

    def write(self, path: str | Path) -> None:
        """Write atomically (indented JSON, ``solens.store.arrays.save_json_atomic``)."""
        save_json_atomic(path, self.to_dict())


# --- run manifest ---------------------------------------------------------------------------
MODEL_KEYS = ("name", "d_embed")
"""Keys of the manifest's ``model`` that readers rely on."""


def _check_chunks(k: Mapping[str, Any]) -> None:
    """``ValueError`` naming the first chunk record that contradicts the manifest: its
    candidate range (``chunk_size``, ``n_candidates``), its rows (candidates minus
    skipped), its shard records (one per array), or ``n_images`` (the sum of rows)."""
    size, n = int(k["chunk_size"]), int(k["n_candidates"])
    if size < 1 or n < 0:
        raise ValueError(f"chunk_size {size} and n_candidates {n} must be positive")
    seen: set[int] = set()
    names = set(k["arrays"])
    for c in k["chunks"]:
        start, stop = c.index * size, min((c.index + 1) * size, n)
        if c.index in seen or not 0 <= c.index < -(-n // size):
            raise ValueError(f"chunk {c.index} is listed twice or outside the run")
        seen.add(c.index)
        if (c.start, c.stop) != (start, stop):
            raise ValueError(f"chunk {c.index} covers candidates {c.start}..{c.stop}, "
                             f"expected {start}..{stop}")
        if any(not start <= i < stop for i in c.skipped) or len(set(c.skipped)) != len(
            c.skipped
        ):
            raise ValueError(f"chunk {c.index} skips candidates outside {start}..{stop}")
        if c.rows != stop - start - len(c.skipped):
            raise ValueError(f"chunk {c.index} lists {c.rows} rows, but its {stop - start} "
                             f"candidates minus {len(c.skipped)} skipped are "
                             f"{stop - start - len(c.skipped)}")
        if c.files is not None and set(c.files) != names:
            raise ValueError(f"chunk {c.index} records the shards of "
                             f"{sorted(c.files)}, not of the arrays {sorted(names)}")
    rows = sum(c.rows for c in k["chunks"])
    if "n_images" in k and int(k["n_images"]) != rows:
        raise ValueError(f"n_images is {k['n_images']}, but the listed chunks hold {rows} rows")


@dataclass(frozen=True)
class ArraySpec:
    """A per-image array of a run: row shape ``tail`` (without the image axis) and dtype;
    the whole array is [n_images, *tail]."""

    tail: tuple[int, ...]
    dtype: str = "float32"

    def to_dict(self) -> dict[str, Any]:
        return {"tail": list(self.tail), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ArraySpec:
        return cls(tuple(int(t) for t in d["tail"]), str(d.get("dtype", "float32")))


@dataclass(frozen=True)
class ShardRecord:
    """One stored shard of a chunk: its length in ``bytes`` and the ``sha256`` (hex) of
    its bytes, recorded when it was written (format version 2)."""

    bytes: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"bytes": self.bytes, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ShardRecord:
        return cls(int(d["bytes"]), str(d["sha256"]))


@dataclass
class ChunkRecord:
    """A complete chunk: candidates ``[start, stop)``, ``rows`` decoded images (the rows of
    every shard ``chunk-<index>.npy``), ``skipped`` candidate indices, compute ``seconds``
    (None when not measured), ``files``: array name -> ``ShardRecord`` of its shard (None in
    runs of format version 1, which recorded no checksums)."""

    index: int
    start: int
    stop: int
    rows: int
    skipped: list[int] = field(default_factory=list)
    seconds: float | None = None
    files: dict[str, ShardRecord] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "index": self.index,
            "start": self.start,
            "stop": self.stop,
            "rows": self.rows,
            "skipped": list(self.skipped),
            "seconds": self.seconds,
        }
        if self.files is not None:
            out["files"] = {n: f.to_dict() for n, f in self.files.items()}
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ChunkRecord:
        files = d.get("files")
        return cls(
            int(d["index"]),
            int(d["start"]),
            int(d["stop"]),
            int(d["rows"]),
            [int(i) for i in d.get("skipped", [])],
            d.get("seconds"),
            None if files is None else {str(n): ShardRecord.from_dict(f)
                                        for n, f in files.items()},
        )


@dataclass
class SkippedRecord:
    """A candidate that could not be decoded: its ``index``, ``path`` (candidate id) and
    the one-line ``reason``."""

    index: int
    path: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "path": self.path, "reason": self.reason}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SkippedRecord:
        return cls(int(d["index"]), str(d["path"]), str(d.get("reason", "")))


@dataclass(kw_only=True, eq=True)
class Manifest(_Document):
    """``RUN/manifest.json``: identity, progress and timings of a run.

    Identity (``IDENTITY_KEYS``; equal to resume a run, ``run_id`` hashes them):
    ``format_version``, ``model`` (``ModelInfo.to_dict()`` without file locations),
    ``weights_sha256``, ``preprocess``, ``layers``, ``dataset``, ``chunk_size``, ``arrays``.
    A chunk exists once ``chunks`` lists it. Optional keys (left out while None or []):
    ``updated``, ``finished``, ``resumed``, ``model_files``, ``conventions``,
    ``n_neurons``, ``heads``, ``command``, ``sessions``.
    """

    FORMAT: ClassVar[str] = "solens-run"
    VERSION: ClassVar[int] = 2
    READS: ClassVar[tuple[int, ...]] = (1, 2)
    WHAT: ClassVar[str] = "solens run manifest"
    REDO: ClassVar[str] = "re-create the run with `solens effects` (another --out)"
    VERSION_KEY: ClassVar[str | None] = "format_version"
    OPTIONAL: ClassVar[frozenset[str]] = frozenset(
        {"updated", "finished", "resumed", "model_files", "conventions", "n_neurons",
         "heads", "command", "sessions"}
    )  # fmt: skip
    REQUIRED: ClassVar[tuple[str, ...]] = (*IDENTITY_KEYS[1:], "run_id", "n_candidates", "chunks")

    format: str = "solens-run"
    format_version: int = 2
    model: dict[str, Any]
    weights_sha256: str
    preprocess: str
    layers: list[int]
    dataset: dict[str, Any]
    """``{kind: "folder", root, n, fingerprint, fingerprint_of}`` or
    ``{kind: "synth", spec, n, fingerprint, fingerprint_of}``."""
    chunk_size: int
    arrays: dict[str, ArraySpec]
    run_id: str
    solens_version: str = ""
    created: str = ""
    updated: str | None = None
    finished: str | None = None
    resumed: list[str] = field(default_factory=list)
    model_files: dict[str, Any] | None = None
    conventions: list[str] | None = None
    n_neurons: int | None = None
    heads: dict[str, int] | None = None
    """``P`` (later heads) per layer, keys are layer numbers as strings."""
    command: dict[str, Any] | None = None
    n_candidates: int
    n_images: int = 0
    complete: bool = False
    chunks: list[ChunkRecord] = field(default_factory=list)
    skipped: list[SkippedRecord] = field(default_factory=list)
    static: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Image-independent arrays ``RUN/<name>.npy``: ``{shape, dtype, ...}``."""
    timings: dict[str, Any] = field(default_factory=dict)
    sessions: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def _build(cls, known: dict[str, Any], extra: dict[str, Any]) -> Manifest:
        k = dict(known)
        k["arrays"] = {str(n): ArraySpec.from_dict(a) for n, a in k["arrays"].items()}
        k["layers"] = [int(x) for x in k["layers"]]
        k["chunk_size"] = int(k["chunk_size"])
        k["n_candidates"] = int(k["n_candidates"])
        k["chunks"] = [ChunkRecord.from_dict(c) for c in k.get("chunks", [])]
        k["skipped"] = [SkippedRecord.from_dict(s) for s in k.get("skipped", [])]
        if not isinstance(k["dataset"], Mapping) or not isinstance(k["model"], Mapping):
            raise TypeError("'model' and 'dataset' must be objects")
        for key in MODEL_KEYS:
            if key not in k["model"]:
                raise ValueError(f"'model' lacks {key!r}")
        _check_chunks(k)
        for key in ("resumed", "sessions"):
            if k.get(key) is None:
                k.pop(key, None)
        for key in ("static", "timings"):
            if k.get(key) is None:
                k.pop(key, None)
        return cls(**k, extra=extra)

    def identity(self) -> dict[str, Any]:
        """The identity fields in their JSON form."""
        return {k: self._json_value(k) for k in IDENTITY_KEYS}

    def update(self, **fields_: Any) -> None:
        """Set fields by JSON key: known keys become attributes (records converted), other
        keys go to ``extra``."""
        names = set(self._field_names())
        for k, v in fields_.items():
            if k == "chunks":
                v = [c if isinstance(c, ChunkRecord) else ChunkRecord.from_dict(c) for c in v]
            elif k == "skipped":
                v = [s if isinstance(s, SkippedRecord) else SkippedRecord.from_dict(s)
                     for s in v]  # fmt: skip
            elif k == "arrays":
                v = {n: a if isinstance(a, ArraySpec) else ArraySpec.from_dict(a)
                     for n, a in v.items()}  # fmt: skip
            if k in names:
                setattr(self, k, v)
            else:
                self.extra[k] = v


@dataclass(kw_only=True)
class ImagesRecord(_Document):
    """``RUN/images.json``: the run's candidate images.

    ``root``: absolute image folder (None for synthetic datasets); ``paths`` [n_candidates]:
    relative POSIX paths or synth ids; ``labels`` [n_candidates] (str or None) or None;
    ``classes``: sorted distinct labels. No format or version key of its own: the file is
    part of the run format (``Manifest.format_version``).
    """

    FORMAT: ClassVar[str] = Manifest.FORMAT
    VERSION: ClassVar[int] = Manifest.VERSION
    READS: ClassVar[tuple[int, ...]] = Manifest.READS
    WHAT: ClassVar[str] = "solens run image list"
    REDO: ClassVar[str] = Manifest.REDO
    VERSION_KEY: ClassVar[str | None] = None
    REQUIRED: ClassVar[tuple[str, ...]] = ("paths",)
    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"sha256", "size", "mtime_ns"})

    root: str | None = None
    paths: list[str]
    labels: list[str | None] | None = None
    classes: list[str] = field(default_factory=list)
    sha256: list[str] | None = None
    """Folder datasets (format version 2): sha256 (hex) of every candidate file's bytes."""
    size: list[int] | None = None
    """Folder datasets (format version 2): every candidate file's size in bytes."""
    mtime_ns: list[int] | None = None
    """Folder datasets (format version 2): every candidate file's modification time when
    its ``sha256`` was taken (a file whose size and mtime are unchanged is not re-read)."""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def _build(cls, known: dict[str, Any], extra: dict[str, Any]) -> ImagesRecord:
        k = dict(known)
        if not isinstance(k["paths"], list) or not all(isinstance(p, str) for p in k["paths"]):
            raise TypeError("'paths' must be a list of strings")
        labels = k.get("labels")
        if labels is not None and len(labels) != len(k["paths"]):
            raise ValueError(f"{len(labels)} labels for {len(k['paths'])} paths")
        for key in ("sha256", "size", "mtime_ns"):
            v = k.get(key)
            if v is not None and len(v) != len(k["paths"]):
                raise ValueError(f"{len(v)} {key} values for {len(k['paths'])} paths")
        if k.get("classes") is None:
            k.pop("classes", None)
        return cls(**k, extra=extra)

    @property
    def n_candidates(self) -> int:
        return len(self.paths)


# --- statistics -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ArrayInfo:
    """Shape and dtype of a stored ``.npy`` array."""

    shape: tuple[int, ...]
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ArrayInfo:
        return cls(tuple(int(s) for s in d["shape"]), str(d["dtype"]))


@dataclass(kw_only=True)
class StatsMeta(_Document):
    """``RUN/layer-LL/stats/stats.json``: what the statistics arrays next to it hold.

    Written last (it marks the statistics complete). ``k`` top images per neuron
    (``top_percent`` when k came from ``--top-percent``, else None) over ``n_images`` run
    rows, ``n_neurons`` neurons of source ``layer``; ``run_id`` and ``model`` of the run;
    ``arrays``: name -> shape and dtype of ``<name>.npy`` in the same folder: ``mean_coef``
    [N, P], ``phi_bar`` [N, d], ``centred_norms`` [n_images, N], ``top_indices`` [N, k]
    int64, ``top_norms`` [N, k], ``tau`` [N], ``r`` [N, d], ``r_coef`` [N, P],
    ``var_topk`` / ``var_all`` / ``total_var`` [N] (float32 unless noted).
    """

    FORMAT: ClassVar[str] = "solens-stats"
    VERSION: ClassVar[int] = 1
    READS: ClassVar[tuple[int, ...]] = (1,)
    WHAT: ClassVar[str] = "solens statistics record"
    REDO: ClassVar[str] = "recompute them with `solens describe --recompute-stats`"
    REQUIRED: ClassVar[tuple[str, ...]] = ("layer", "k", "n_images", "n_neurons", "run_id")

    format: str = "solens-stats"
    version: int = 1
    layer: int
    k: int
    top_percent: float | None = None
    n_images: int
    n_neurons: int
    convention: str = "exact"
    run_id: str | None
    model: dict[str, Any] = field(default_factory=dict)
    solens_version: str = ""
    created: str = ""
    arrays: dict[str, ArrayInfo] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def _build(cls, known: dict[str, Any], extra: dict[str, Any]) -> StatsMeta:
        k = dict(known)
        for key in ("layer", "k", "n_images", "n_neurons"):
            k[key] = int(k[key])
        k["arrays"] = {str(n): ArrayInfo.from_dict(a) for n, a in (k.get("arrays") or {}).items()}
        return cls(**k, extra=extra)


# --- descriptions ---------------------------------------------------------------------------
@dataclass(slots=True)
class Term:
    """One OMP term of a neuron's description: the pool text, its position ``index`` in the
    pool and its signed coefficient ``coef``."""

    text: str
    index: int
    coef: float

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "index": self.index, "coef": self.coef}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Term:
        return cls(d["text"], d["index"], d["coef"])


@dataclass(slots=True)
class NeuronDescription:
    """One neuron of a ``DescriptionsDoc``: ``terms`` by |coef|, largest first; ``cosine``
    of the OMP reconstruction of r_n; ``tau``, ``var_topk``, ``var_all``, ``total_var``
    from the statistics; ``top_images`` [k]: run rows of the k largest centred norms,
    largest first."""

    neuron: int
    terms: list[Term]
    cosine: float
    tau: float
    var_topk: float
    var_all: float
    total_var: float
    top_images: list[int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "neuron": self.neuron,
            "terms": [t.to_dict() for t in self.terms],
            "cosine": self.cosine,
            "tau": self.tau,
            "var_topk": self.var_topk,
            "var_all": self.var_all,
            "total_var": self.total_var,
            "top_images": list(self.top_images),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NeuronDescription:
        return cls(
            d["neuron"],
            [Term.from_dict(t) for t in d["terms"]],
            d["cosine"],
            d["tau"],
            d["var_topk"],
            d["var_all"],
            d["total_var"],
            list(d["top_images"]),
        )


@dataclass
class PoolRecord:
    """The text pool of a ``DescriptionsDoc``: name, source, number of texts and the sha256
    of the texts joined by newlines."""

    name: str
    source: str
    n_texts: int
    content_hash: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "n_texts": self.n_texts,
                "content_hash": self.content_hash}  # fmt: skip

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PoolRecord:
        return cls(d["name"], d.get("source", ""), d["n_texts"], d.get("content_hash", ""))


@dataclass(kw_only=True, eq=True)
class DescriptionsDoc(_Document):
    """``RUN/descriptions/<pool>[-nonneg]-layer-LL.json``: text descriptions of one layer's
    neurons over one pool.

    ``model``: name, pretrained, quick_gelu of the run's model; ``method``: ``omp`` or
    ``nnomp``; ``n_terms`` terms per neuron at most; statistics over the top ``k`` of
    ``n_images`` run rows; ``dictionary`` / ``target``: the rules in words; ``seconds``:
    ``{stats, omp}``; ``neurons`` [N]: one ``NeuronDescription`` per neuron, in order.
    """

    FORMAT: ClassVar[str] = "solens-descriptions"
    VERSION: ClassVar[int] = 1
    READS: ClassVar[tuple[int, ...]] = (1,)
    WHAT: ClassVar[str] = "solens descriptions document"
    REDO: ClassVar[str] = "re-run `solens describe`"
    REQUIRED: ClassVar[tuple[str, ...]] = ("run_id", "layer", "pool", "method", "neurons")

    format: str = "solens-descriptions"
    version: int = 1
    run_id: str | None
    run: str = ""
    layer: int
    convention: str = "exact"
    model: dict[str, Any] = field(default_factory=dict)
    pool: PoolRecord
    method: str
    n_terms: int = 0
    k: int = 0
    n_images: int = 0
    dictionary: str = ""
    target: str = ""
    solens_version: str = ""
    created: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    neurons: list[NeuronDescription] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def _build(cls, known: dict[str, Any], extra: dict[str, Any]) -> DescriptionsDoc:
        k = dict(known)
        k["pool"] = PoolRecord.from_dict(k["pool"])
        k["neurons"] = [NeuronDescription.from_dict(e) for e in k["neurons"]]
        if k["method"] not in ("omp", "nnomp"):
            raise ValueError(f"unknown method {k['method']!r}")
        return cls(**k, extra=extra)

    def write(self, path: str | Path) -> None:
        """Write the document atomically as compact JSON (``path``: the ``.json`` file;
        the markdown table next to it is ``solens.describe.describe``'s)."""
        save_text_atomic(path, json.dumps(self.to_dict(), separators=(",", ":")) + "\n")


__all__ = [
    "IDENTITY_KEYS",
    "ArrayInfo",
    "ArraySpec",
    "ChunkRecord",
    "DescriptionsDoc",
    "ImagesRecord",
    "Manifest",
    "NeuronDescription",
    "PoolRecord",
    "ShardRecord",
    "SkippedRecord",
    "StatsMeta",
    "Term",
    "identity_hash",
]
