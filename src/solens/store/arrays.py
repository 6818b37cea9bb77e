"""Atomic file writes and lazily concatenated views over memory-mapped ``.npy`` shards."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import tempfile
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from solens.errors import StorageError

FSYNC = os.environ.get("SOLENS_FSYNC", "1") != "0"
"""fsync files and folders after writing (durability across power loss; renames alone
already make every write atomic for a killed process). ``SOLENS_FSYNC=0`` turns it off."""


def _fsync_dir(path: Path) -> None:
    if not FSYNC:
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def storage_error(path: str | Path, e: OSError, hint: str = "") -> StorageError:
    """A one-line ``StorageError`` for a failed write of ``path``: the system's reason
    (``No space left on device [ENOSPC]``) and ``hint`` (what to do)."""
    code = errno.errorcode.get(e.errno or 0, "")
    why = (e.strerror or str(e) or type(e).__name__) + (f" [{code}]" if code else "")
    return StorageError(f"cannot write {path}: {why}" + (f"; {hint}" if hint else ""))


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary path in ``path``'s folder for the caller to fill (a memmap, a
    ``safetensors`` file, ...); on a clean exit it is fsync'd and renamed to ``path``, on any
    exception it is deleted. Concurrent writers never share a temporary file.

    A folder that cannot be created or written, and a failed fsync or rename (a full disk,
    a read-only file system), raise ``StorageError`` naming ``path``; ``path`` is unchanged.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise storage_error(path, e) from None
    tmp = Path(name)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp creates 0600; give files the usual mode
        os.close(fd)
        yield tmp
        try:
            if FSYNC:
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            raise storage_error(path, e) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _atomic_write(path: Path, write: Any, mode: str = "wb") -> None:
    """Write via ``write(fileobj)`` into a temporary file in ``path``'s folder, then rename
    (``StorageError`` when the file cannot be written: see ``atomic_path``)."""
    with atomic_path(path) as tmp:
        try:
            with open(tmp, mode) as f:
                write(f)
        except OSError as e:
            raise storage_error(path, e) from None


def save_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text``; never leaves a partial file at ``path``."""
    _atomic_write(Path(path), lambda f: f.write(text), mode="w")


def write_atomic(path: str | Path, write: Any) -> None:
    """Call ``write(binary_fileobj)`` (``torch.save``, ``fig.savefig``, ...); never leaves a
    partial file at ``path``, and concurrent writers never share a temporary file."""
    _atomic_write(Path(path), write)


def save_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data``; never leaves a partial file at ``path``."""
    _atomic_write(Path(path), lambda f: f.write(data))


def save_npy_atomic(path: str | Path, array: np.ndarray) -> None:
    """``np.save`` of ``array`` (any shape and dtype, written C-contiguous, no pickles) that
    never leaves a partial file at ``path``."""
    arr = np.ascontiguousarray(array)
    _atomic_write(Path(path), lambda f: np.save(f, arr, allow_pickle=False))


def _npy_header(arr: np.ndarray) -> bytes:
    """The ``.npy`` header ``np.save`` writes for ``arr`` (format 1.0, else 2.0)."""
    fmt = np.lib.format
    buf = io.BytesIO()
    try:
        fmt.write_array_header_1_0(buf, fmt.header_data_from_array_1_0(arr))
    except ValueError:  # a header too long for format 1.0
        buf = io.BytesIO()
        fmt.write_array_header_2_0(buf, fmt.header_data_from_array_1_0(arr))
    return buf.getvalue()


def save_npy_hashed(path: str | Path, array: np.ndarray) -> tuple[int, str]:
    """``save_npy_atomic`` (the same bytes as ``np.save``) that also returns the file's
    length in bytes and its sha256 (hex), hashed from memory as it is written."""
    arr = np.asarray(array)
    arr = arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)
    if arr.dtype.hasobject:
        raise ValueError("object arrays are not stored")
    header = _npy_header(arr)
    data = arr.reshape(-1).view(np.uint8).data  # the bytes, C order, no copy
    h = hashlib.sha256(header)
    h.update(data)
    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as f:
                f.write(header)
                f.flush()
                fd, done = f.fileno(), 0
                while done < data.nbytes:  # unbuffered: no copy, and errors carry errno
                    done += os.write(fd, data[done : done + 2**30])
        except OSError as e:
            raise storage_error(path, e) from None
    return len(header) + data.nbytes, h.hexdigest()


def save_json_atomic(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON; never leaves a partial file at ``path``."""
    text = json.dumps(obj, indent=1, sort_keys=False) + "\n"
    _atomic_write(Path(path), lambda f: f.write(text), mode="w")


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, hex."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def remove_stale_tmp(folder: Path) -> int:
    """Delete temporary files left by an interrupted atomic write below ``folder``
    (``.NAME.XXXXXXXX.tmp``); returns how many."""
    n = 0
    for p in Path(folder).rglob(".*.tmp"):
        try:
            p.unlink()
            n += 1
        except OSError:
            pass
    return n


def npy_info(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and data offset (header length in bytes) of a ``.npy`` file from its
    header (nothing mapped); ``ValueError`` for a file that is not a ``.npy`` array."""
    fmt = np.lib.format
    with open(path, "rb") as f:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(f)
        else:  # version 3 (utf-8 field names): let numpy parse it
            m = np.load(path, mmap_mode="r", allow_pickle=False)
            return tuple(m.shape), m.dtype, int(m.offset)
        offset = f.tell()
    if fortran:
        raise ValueError(f"{path}: Fortran-ordered shards are not supported")
    return tuple(shape), np.dtype(dtype), offset


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a ``.npy`` file from its header (nothing mapped)."""
    shape, dtype, _ = npy_info(path)
    return shape, dtype


def shard_problem(
    path: Path,
    shape: tuple[int, ...],
    dtype: str | np.dtype,
    nbytes: int | None = None,
    sha256: str | None = None,
) -> str | None:
    """What is wrong with the ``.npy`` shard ``path`` that should hold ``shape`` /
    ``dtype`` (and, when given, be ``nbytes`` long with this ``sha256``), or None.

    Checks, cheapest first: the file exists, its size, its header (shape, dtype) against
    the size of the data, then the checksum (reads the whole file; only when ``sha256``).
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    if nbytes is not None and size != nbytes:
        return f"{size} bytes, expected {nbytes}"
    try:
        got, dt, offset = npy_info(path)
    except (OSError, ValueError, SyntaxError) as e:
        return f"not a readable .npy file ({' '.join(str(e).split())[:120]})"
    if tuple(got) != tuple(shape) or dt != np.dtype(dtype):
        return f"holds {dt} {list(got)}, expected {np.dtype(dtype)} {list(shape)}"
    want = offset + int(np.prod(got, dtype=np.int64)) * dt.itemsize
    if size != want:
        return f"truncated: {size} bytes, expected {want}"
    if sha256 is not None:
        try:
            if file_sha256(path) != sha256:
                return "checksum (sha256) differs from the one recorded"
        except OSError as e:
            return f"unreadable ({e.strerror or e})"
    return None


class ChunkedArray:
    """Read-only array made of ``.npy`` shards concatenated along axis 0 (memory-mapped).

    Shards are [rows_i, *tail] with the same tail and dtype; the view is
    ``shape = (sum_i rows_i, *tail)``. Indexing with an int ([*tail]), a slice, an integer
    array or a boolean mask ([m, *tail]) along axis 0 reads only the shards it touches;
    further indices apply to the tail axes. ``np.asarray(view)`` materialises everything.
    ``chunks()`` yields the memory-mapped shards in order.
    """

    MAX_OPEN = 64
    """Shards kept memory-mapped at once (each map holds a file descriptor)."""

    def __init__(
        self,
        files: Sequence[Path],
        *,
        shape_tail: tuple[int, ...] = (),
        dtype: DTypeLike = np.float32,
    ) -> None:
        self.files = [Path(f) for f in files]
        self._maps: OrderedDict[int, np.ndarray] = OrderedDict()
        lengths = []
        tail, dt = tuple(shape_tail), np.dtype(dtype)
        for f in self.files:
            shape, dt = npy_header(f)
            lengths.append(shape[0])
            tail = shape[1:]
        self._offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
        self.shape: tuple[int, ...] = (int(self._offsets[-1]), *tail)
        self.dtype = dt

    def _map(self, i: int) -> np.ndarray:
        m = self._maps.get(i)
        if m is None:
            m = np.load(self.files[i], mmap_mode="r", allow_pickle=False)
            self._maps[i] = m
            while len(self._maps) > self.MAX_OPEN:
                self._maps.popitem(last=False)
        else:
            self._maps.move_to_end(i)
        return m

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def chunks(self) -> Iterator[np.ndarray]:
        """The shards [rows_i, *tail], memory-mapped, in row order."""
        for i in range(len(self.files)):
            yield self._map(i)

    def chunk_bounds(self) -> list[tuple[int, int]]:
        """Row range [start, stop) of every shard."""
        o = self._offsets
        return [(int(o[i]), int(o[i + 1])) for i in range(len(self.files))]

    def _rows(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        if len(rows) == 0:
            return out
        if rows.min() < 0 or rows.max() >= len(self):
            raise IndexError(f"row index out of range for {len(self)} rows")
        shard = np.searchsorted(self._offsets, rows, side="right") - 1
        for i in np.unique(shard):
            sel = np.nonzero(shard == i)[0]
            out[sel] = self._map(int(i))[rows[sel] - self._offsets[i]]
        return out

    def __getitem__(self, key: Any) -> np.ndarray:
        rest: tuple = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        if isinstance(key, (int, np.integer)):
            i = int(key) + (len(self) if key < 0 else 0)
            out = self._rows(np.array([i]))[0]
        elif isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step == 1 and stop > start:
                out = self._contiguous(start, stop)
            else:
                out = self._rows(np.arange(start, stop, step))
        else:
            idx = np.asarray(key)
            if idx.dtype == bool:
                idx = np.nonzero(idx)[0]
            out = self._rows(idx.astype(np.int64) % max(len(self), 1))
        if not rest:
            return out
        return out[rest] if isinstance(key, (int, np.integer)) else out[(slice(None), *rest)]

    def _contiguous(self, start: int, stop: int) -> np.ndarray:
        parts = []
        o = self._offsets
        for i in range(len(self.files)):
            a, b = max(start, o[i]), min(stop, o[i + 1])
            if a < b:
                parts.append(self._map(i)[a - o[i] : b - o[i]])
        return np.concatenate(parts) if len(parts) > 1 else np.array(parts[0])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:] if len(self) else np.empty(self.shape, dtype=self.dtype)
        return out.astype(dtype) if dtype is not None else out

    def __repr__(self) -> str:
        return f"ChunkedArray(shape={self.shape}, dtype={self.dtype}, shards={len(self.files)})"
