"""Distributed runs: ``torchrun --nproc-per-node N -m solens effects ...``.

torchrun starts N processes (per node) and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``; ``Dist.from_env`` joins them into one process group
(``gloo`` on CPU, ``nccl`` on CUDA, rank ``r`` on ``cuda:LOCAL_RANK``). Several nodes join
through torchrun's rendezvous (``--nnodes``, ``--rdzv-endpoint``); the run folder must then
lie on a file system that every node sees.

How a run is shared (format: ``docs/run-format.md``):

- Candidates and chunks are those of a one-process run (the global image index of the
  dataset; chunk ``k`` = candidates ``[k * chunk_size, ...)``); the chunks still to do are
  dealt round-robin: rank ``r`` computes ``pending[r::world]``.
- Rank 0 creates or resumes the run (it holds the lock, stores the directions and writes
  ``manifest.json``); every other rank writes its chunks' shards into the same folders and
  lists each finished chunk in ``RUN/parts/rank-RRRRR.json`` (written atomically after the
  shards). At the end (and when a killed run is resumed) rank 0 merges those records into
  the manifest in chunk order and removes the part files, so the merged run folder equals
  a one-process run's, array for array.
- Streaming statistics: every chunk's partial sums and top-k (``chunk_summary``) are
  stored as ``RUN/layer-LL/summary/chunk-XXXXXX.npz``; rank 0 combines them in chunk
  order (``combine_summaries``), which does not depend on which rank computed which
  chunk: sums add in the same order, top-k candidates are ranked by (norm descending,
  global index ascending).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import torch

from solens import __version__
from solens.errors import InputError, RunMismatchError, SolensError
from solens.store.arrays import (
    save_json_atomic,
    save_npy_atomic,
    save_text_atomic,
    write_atomic,
)
from solens.store.protocol import ChunkRecord, ImagesRecord, SkippedRecord
from solens.store.run import LOCK, RunWriter, chunk_file, layer_dir, now, read_manifest

PARTS = "parts"
SUMMARY = "summary"
SUMMARY_META = "summary.json"
T = TypeVar("T")
SUMMARY_K = 16
"""Images kept per neuron in the streaming top-k (by exact norm ``||phi_n(I)||``)."""


# --- process group ---------------------------------------------------------------------------
TIMEOUT_ENV = "SOLENS_DIST_TIMEOUT_S"
TIMEOUT_S = 3600.0
"""How long a rank waits in a collective (for rank 0 hashing the images, for the slowest
rank's last chunk) before it stops; ``SOLENS_DIST_TIMEOUT_S`` overrides it."""
SHARED_WAIT_ENV = "SOLENS_SHARED_WAIT_S"
SHARED_WAIT_S = 60.0
"""How long a rank waits to see the file rank 0 wrote into the run folder (network file
systems may cache a directory's listing for up to a minute); ``SOLENS_SHARED_WAIT_S``."""
SHARED = ".shared-"


@dataclass(frozen=True)
class Placement:
    """Where one rank of a multi-process run computes (``device``) and which backend its
    process group uses (``nccl``: CUDA tensors; ``gloo``: CPU tensors)."""

    backend: str
    device: str

    @property
    def comm_device(self) -> str:
        """The device of the tensors the collectives send: the rank's GPU for ``nccl``,
        ``cpu`` for ``gloo``."""
        return self.device if self.backend == "nccl" else "cpu"


def placement(device: str, cuda_devices: int, local_rank: int, local_world: int = 1) -> Placement:
    """The backend and device of the process ``local_rank`` (of ``local_world`` on its
    node, torchrun's ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE``) on a node with
    ``cuda_devices`` GPUs, for ``--device device``: ``cuda`` (or ``auto`` with a GPU) ->
    ``nccl`` on ``cuda:LOCAL_RANK``; ``cuda:K`` -> ``nccl`` on GPU ``K`` (one process per
    node only); ``cpu`` (or ``auto`` without a GPU) and other devices -> ``gloo``.
    ``InputError`` when the GPU is missing or shared by two processes."""
    if device == "auto":
        device = "cuda" if cuda_devices > 0 else "cpu"
    if not device.startswith("cuda"):
        return Placement("gloo", device)
    if cuda_devices < 1:
        raise InputError(f"--device {device}: CUDA is not available on this machine")
    if device == "cuda":
        if local_rank >= cuda_devices:
            raise InputError(
                f"the process with LOCAL_RANK {local_rank} has no GPU of its own: this node "
                f"has {cuda_devices}; start at most {cuda_devices} processes per node "
                "(torchrun --nproc-per-node)"
            )
        return Placement("nccl", f"cuda:{local_rank}")
    text = device.partition(":")[2]
    if not text.isdigit():
        raise InputError(f"--device {device}: expected cuda or cuda:INDEX")
    index = int(text)
    if local_world > 1:
        raise InputError(
            f"--device {device} with {local_world} processes per node: they would all use "
            f"GPU {index}; pass --device cuda (each process uses cuda:LOCAL_RANK)"
        )
    if index >= cuda_devices:
        raise InputError(f"--device {device}: this node has {cuda_devices} GPUs")
    return Placement("nccl", f"cuda:{index}")


def env_seconds(env: Mapping[str, str], name: str, default: float) -> float:
    """The positive number of seconds in ``env[name]`` (``default`` when unset)."""
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise InputError(f"{name}={text!r}: expected a positive number of seconds")
    return value


def _cuda_devices() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@dataclass(frozen=True)
class Dist:
    """This process's place in a run: ``rank`` of ``world`` processes (the global rank:
    it deals the chunks and names the part file), ``local_rank`` on its node (it picks
    the GPU), the process group's ``backend`` and this rank's ``device``. ``Dist()`` is a
    one-process run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str = "gloo"
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        """True when a process group of more than one process is joined."""
        return self.world > 1 and torch.distributed.is_initialized()

    @property
    def comm_device(self) -> str:
        """The device of the tensors sent through the collectives (``Placement``)."""
        return Placement(self.backend, self.device).comm_device

    @classmethod
    def from_env(cls, device: str = "cpu", env: Mapping[str, str] | None = None) -> Dist:
        """The torchrun environment (``WORLD_SIZE``, global ``RANK``, ``LOCAL_RANK``,
        ``LOCAL_WORLD_SIZE``; ``env`` defaults to ``os.environ``). With several processes it
        joins the process group (``placement``: ``nccl`` with this rank's GPU bound, or
        ``gloo``), whose collectives time out after ``SOLENS_DIST_TIMEOUT_S`` seconds (default
        ``TIMEOUT_S``). Without those variables: one process on ``device``."""
        env = os.environ if env is None else env
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
        if world <= 1:
            return cls(rank, world, local, "gloo", device)
        timeout = env_seconds(env, TIMEOUT_ENV, TIMEOUT_S)
        p = placement(device, _cuda_devices(), local, int(env.get("LOCAL_WORLD_SIZE", "1")))
        if not torch.distributed.is_initialized():
            if p.backend == "nccl":
                gpu = torch.device(p.device)
                torch.cuda.set_device(gpu)  # object collectives use the current device
                torch.distributed.init_process_group(  # barrier() uses the bound device
                    p.backend, timeout=timedelta(seconds=timeout), device_id=gpu
                )
            else:
                torch.distributed.init_process_group(p.backend, timeout=timedelta(seconds=timeout))
        return cls(rank, world, local, p.backend, p.device)

    def close(self) -> None:
        """Leave the process group (joined by ``from_env``)."""
        if self.active:
            torch.distributed.destroy_process_group()

    def barrier(self) -> None:
        if self.active:
            _collective(torch.distributed.barrier)

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (every rank calls it; one process: ``obj``)."""
        if not self.active:
            return obj
        box: list[Any] = [obj]
        _collective(partial(torch.distributed.broadcast_object_list, box, src=0,
                            device=torch.device(self.comm_device)))  # fmt: skip
        return cast(T, box[0])

    def gather(self, obj: T) -> list[T]:
        """Every rank's ``obj``, in rank order, on every rank (one process: ``[obj]``)."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        _collective(partial(torch.distributed.all_gather_object, out, obj))
        return cast(list[T], out)

    def from_main(self, compute: Callable[[], T]) -> T:
        """``compute()`` run on rank 0 only, its result given to every rank; when it raises,
        rank 0 raises it and the other ranks stop with ``SolensError`` naming it."""
        if not self.is_main:
            error, value = self.broadcast((None, None))
            if error is not None:
                raise SolensError(f"rank 0 failed: {error}")
            return cast(T, value)
        try:
            value = compute()
        except Exception as e:
            self.broadcast((_error_text(e), None))
            raise
        self.broadcast((None, value))
        return value

    def share(self, items: Sequence[int]) -> list[int]:
        """This rank's share of ``items`` (round-robin): ``items[rank::world]``."""
        return list(items)[self.rank :: self.world]


def _collective(call: Callable[[], Any]) -> Any:
    """``call()``; a rank that died (its peers' collectives fail: gloo closes the
    connection, or the timeout passes) becomes one ``SolensError`` line."""
    try:
        return call()
    except RuntimeError as e:
        first = " ".join(str(e).strip().splitlines()[:1]) or type(e).__name__
        raise SolensError(
            f"another process of this distributed run stopped ({first[:300]}); its log "
            "names the cause; the finished chunks are kept: start the same command again to "
            "resume"
        ) from e


def _error_text(e: BaseException) -> str:
    return str(e) if isinstance(e, SolensError) else f"{type(e).__name__}: {e}"


def mark_shared(path: Path) -> str:
    """Rank 0: write a new token file ``RUN/.shared-XXXX`` into the run folder; returns its
    name (the other ranks look for it: ``shared_problem``)."""
    name = f"{SHARED}{os.urandom(8).hex()}"
    save_text_atomic(path / name, f"{platform.node()}\n")
    return name


def shared_problem(path: Path, token: str, rank: int, wait_s: float = SHARED_WAIT_S) -> str | None:
    """None when this rank sees rank 0's token file ``path / token`` (waiting up to
    ``wait_s`` seconds, re-listing the folder: network file systems cache listings); else
    the reason, naming this rank and host."""
    deadline = time.monotonic() + wait_s
    while True:
        with contextlib.suppress(OSError):
            os.listdir(path.parent)  # revalidates a cached listing (NFS)
            os.listdir(path)
            if (path / token).is_file():
                return None
        if time.monotonic() >= deadline:
            return f"rank {rank} on {platform.node()}"
        time.sleep(min(0.2, wait_s))


# --- writers ---------------------------------------------------------------------------------
def _candidates(start: int, stop: int, skipped: Sequence[Any]) -> np.ndarray:
    skip = {int(s.index if isinstance(s, SkippedRecord) else s["index"]) for s in skipped}
    return np.array([i for i in range(start, stop) if i not in skip], dtype=np.int64)


class SummaryWriter(RunWriter):
    """A ``RunWriter`` that stores each chunk's streaming statistics (``chunk_summary``)
    before the chunk itself, and on resume takes in the chunks that other ranks of a
    killed distributed invocation listed (``merge_parts``) before the run is checked."""

    def _adopt(self) -> None:
        merge_parts(self)

    def write_chunk(
        self,
        index: int,
        arrays: Mapping[str, np.ndarray],
        skipped: Sequence[Mapping[str, Any] | SkippedRecord] = (),
        seconds: float | None = None,
    ) -> None:
        cand = _candidates(*self.chunk_range(index), skipped)
        for layer in self.manifest.layers:
            ld = layer_dir(layer)
            part = chunk_summary(arrays[f"{ld}/s"], arrays[f"{ld}/norms"], cand)
            self._write(partial(write_atomic, self.path / ld / SUMMARY / _npz(index),
                                partial(_savez, part=part)))  # fmt: skip
        super().write_chunk(index, arrays, skipped, seconds)


class RankWriter(SummaryWriter):
    """Rank ``rank`` > 0 of a distributed run: writes its chunks' shards and lists them in
    ``RUN/parts/rank-RRRRR.json`` with the same records as the manifest's (rows, skipped,
    each shard's length and sha256: ``RunWriter.write_chunk``); never writes the manifest
    (rank 0 does). It holds no lock (rank 0 holds the run's) and never writes the lock
    record; each part file it writes touches the lock file, the heartbeat that keeps the
    lock of a run still being computed from looking stale (``LOCK_STALE_S``)."""

    def __init__(self, path: Path, manifest: Any, rank: int) -> None:
        super().__init__(path, manifest, -1)
        self.rank = rank
        self._own: set[int] = set()

    @classmethod
    def join(cls, path: str | Path, identity: Mapping[str, Any], rank: int) -> RankWriter:
        """The run rank 0 opened at ``path``; ``RunMismatchError`` when its identity is not
        ``identity`` (the ranks were given different arguments)."""
        path = Path(path)
        manifest = read_manifest(path)
        mine = json.loads(json.dumps(dict(identity)))
        if manifest.identity() != {k: mine[k] for k in manifest.identity()}:
            raise RunMismatchError(
                f"rank {rank}: {path} holds another run than this rank's arguments describe; "
                "start every rank with the same arguments"
            )
        return cls(path, manifest, rank)

    def has_static(self, name: str) -> bool:
        return True  # rank 0 stores the image-independent arrays

    def write_static(self, name: str, array: np.ndarray, **meta: Any) -> None:
        raise SolensError(f"rank {self.rank} does not write {name}: rank 0 stores it")

    def write_chunk(
        self,
        index: int,
        arrays: Mapping[str, np.ndarray],
        skipped: Sequence[Mapping[str, Any] | SkippedRecord] = (),
        seconds: float | None = None,
    ) -> None:
        self._own.add(index)
        super().write_chunk(index, arrays, skipped, seconds)

    def update(self, **fields: Any) -> None:
        pass  # sessions and timings are rank 0's

    def finish(self, **timings: Any) -> None:
        pass

    def _save(self) -> None:
        own = self._own
        m = self.manifest
        chunks = [c for c in m.chunks if c.index in own]
        ranges = [(c.start, c.stop) for c in chunks]
        self._write(partial(save_json_atomic, part_file(self.path, self.rank), {
            "run_id": m.run_id,
            "rank": self.rank,
            "updated": now(),
            "chunks": [c.to_dict() for c in chunks],
            "skipped": [s.to_dict() for s in m.skipped
                        if any(a <= s.index < b for a, b in ranges)],
        }))  # fmt: skip
        with contextlib.suppress(OSError):  # heartbeat only: rank 0 owns the lock record
            os.utime(self.path / LOCK)


def _savez(f: Any, part: Mapping[str, Any]) -> None:
    np.savez(f, **part)


def part_file(path: Path, rank: int) -> Path:
    return Path(path) / PARTS / f"rank-{rank:05d}.json"


def _npz(index: int) -> str:
    return chunk_file(index).removesuffix(".npy") + ".npz"


def merge_parts(writer: RunWriter) -> int:
    """Move the chunk records of ``RUN/parts/*.json`` (other ranks' finished chunks) into
    the manifest, in chunk order; part files of another run are dropped. Returns the
    number of chunks merged. Idempotent: a part file is removed only after the manifest
    that holds its records is written."""
    folder = writer.path / PARTS
    files = sorted(folder.glob("rank-*.json")) if folder.is_dir() else []
    if not files:
        return 0
    m = writer.manifest
    chunks = {c.index: c for c in m.chunks}
    skipped = {s.index: s for s in m.skipped}
    merged = 0
    for f in files:
        try:
            part = json.loads(f.read_text())
        except (OSError, ValueError):
            continue  # an unreadable part: its chunks are computed again
        if part.get("run_id") != m.run_id:
            continue
        for c in part.get("chunks", []):
            rec = ChunkRecord.from_dict(c)
            if all((writer.path / name / chunk_file(rec.index)).is_file() for name in m.arrays):
                chunks[rec.index] = rec
                merged += 1
                for s in part.get("skipped", []):
                    if rec.start <= int(s["index"]) < rec.stop:
                        skipped[int(s["index"])] = SkippedRecord.from_dict(s)
    writer.update(
        chunks=[chunks[k] for k in sorted(chunks)],
        skipped=[skipped[k] for k in sorted(skipped)],
        n_images=sum(c.rows for c in chunks.values()),
    )
    for f in files:
        f.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()
    return merged


def open_writer(
    path: str | Path,
    identity: Mapping[str, Any],
    images: ImagesRecord | Mapping[str, Any],
    extra: Mapping[str, Any] | None,
    dist: Dist,
    verify: str = "full",
) -> RunWriter:
    """Rank 0: create or resume the run (``RunWriter.open``: it alone takes the run's lock;
    on resume it first merges the finished chunks of an earlier distributed invocation,
    then checks every listed chunk, those included, as ``verify`` says); the other ranks
    then join it (``RankWriter.join``: no lock of their own).

    With several processes rank 0 then writes a token file into the run folder, and
    every other rank must see it (``shared_problem``, within ``SOLENS_SHARED_WAIT_S``
    seconds): else every rank stops with an ``InputError`` saying that the run folder
    must be on a file system all nodes share."""
    path = Path(path)
    wait_s = env_seconds(os.environ, SHARED_WAIT_ENV, SHARED_WAIT_S)
    opened: list[RunWriter] = []
    token: str | None = None

    def create() -> str | None:
        w = SummaryWriter.open(path, identity, images, extra, verify=verify)
        opened.append(w)
        return w._write(partial(mark_shared, w.path)) if dist.active else None

    try:
        token = dist.from_main(create)
        problem = (None if dist.is_main or token is None
                   else shared_problem(path, token, dist.rank, wait_s))  # fmt: skip
        problems = [p for p in dist.gather(problem) if p is not None]
        if problems:
            host = f"rank 0 on {dist.broadcast(platform.node())}"
            more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
            raise InputError(
                f"the run folder {path} is not on a file system all processes share: "
                f"{', '.join(problems[:3])}{more} cannot see the file {host} wrote into "
                "it; put --out on a file system all nodes share (the same path on every node)"
            )
    except BaseException:
        for w in opened:
            w.close()
        raise
    finally:
        if opened and token is not None:
            with contextlib.suppress(OSError):
                (path / token).unlink()
    if dist.is_main:
        return opened[0]
    return RankWriter.join(path, identity, dist.rank)


# --- streaming statistics --------------------------------------------------------------------
def chunk_summary(
    s: np.ndarray, norms: np.ndarray, candidates: np.ndarray, k: int = SUMMARY_K
) -> dict[str, np.ndarray]:
    """Streaming statistics of one chunk of a layer: ``s`` [b, N, P] and exact ``norms``
    [b, N] float32 as stored, ``candidates`` [b] global image indices ->
    ``n`` [], ``sum_s`` [N, P] float64, ``sum_norm`` / ``sum_norm2`` [N] float64,
    ``top_norms`` [N, k'] float32 and ``top_candidates`` [N, k'] int64, the k' = min(k, b)
    largest norms per neuron, ranked by (norm descending, candidate ascending)."""
    n64 = np.asarray(norms, dtype=np.float64)
    cand = np.broadcast_to(candidates[:, None], norms.shape)
    top_n, top_c = _top(np.asarray(norms, np.float32).T, np.ascontiguousarray(cand.T), k)
    return {
        "n": np.array(len(candidates), dtype=np.int64),
        "sum_s": np.sum(s, axis=0, dtype=np.float64),  # no float64 copy of the chunk
        "sum_norm": n64.sum(axis=0),
        "sum_norm2": (n64 * n64).sum(axis=0),
        "top_norms": top_n,
        "top_candidates": top_c,
    }


def _top(values: np.ndarray, cands: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row the ``k`` largest ``values`` [N, m] (ties: smaller ``cands`` first):
    ([N, min(k, m)], [N, min(k, m)])."""
    order = np.lexsort((cands, -values.astype(np.float64)), axis=-1)[:, :k]
    return (np.take_along_axis(values, order, -1).astype(np.float32),
            np.take_along_axis(cands, order, -1).astype(np.int64))  # fmt: skip


def combine_summaries(
    parts: Sequence[Mapping[str, np.ndarray]], k: int = SUMMARY_K
) -> dict[str, np.ndarray]:
    """Combine chunk summaries given in chunk order: sums added in that order (float64),
    top-k merged by (norm descending, candidate ascending) -> ``n``, ``mean_s`` [N, P]
    float64, ``mean_norm`` / ``rms_norm`` [N] float64, ``top_norms`` [N, k] float32,
    ``top_candidates`` [N, k] int64 (k capped at ``n``). The result depends only on the
    chunks, not on which process computed them."""
    it = iter(parts)
    first = next(it)
    n = int(first["n"])
    sum_s = np.array(first["sum_s"], dtype=np.float64)
    sum_norm = np.array(first["sum_norm"], dtype=np.float64)
    sum_norm2 = np.array(first["sum_norm2"], dtype=np.float64)
    top_n, top_c = np.asarray(first["top_norms"]), np.asarray(first["top_candidates"])
    for p in it:
        n += int(p["n"])
        sum_s += p["sum_s"]
        sum_norm += p["sum_norm"]
        sum_norm2 += p["sum_norm2"]
        top_n, top_c = _top(np.concatenate([top_n, p["top_norms"]], axis=1),
                            np.concatenate([top_c, p["top_candidates"]], axis=1), k)  # fmt: skip
    d = max(n, 1)
    return {
        "n": np.array(n, dtype=np.int64),
        "mean_s": sum_s / d,
        "mean_norm": sum_norm / d,
        "rms_norm": np.sqrt(sum_norm2 / d),
        "top_norms": top_n,
        "top_candidates": top_c,
    }


def write_summaries(
    writer: RunWriter,
    compute_part: Callable[[int, int], dict[str, np.ndarray]] | None = None,
) -> None:
    """Rank 0, after the merge: combine the chunk summaries of every listed chunk into
    ``RUN/layer-LL/summary/`` (``mean_s.npy``, ``mean_norm.npy``, ``rms_norm.npy``,
    ``top_norms.npy``, ``top_candidates.npy``, ``top_rows.npy``, then ``summary.json``).
    A chunk without its summary file (written by an older solens) has it computed from
    its shards (``compute_part(layer, chunk)``, by default from the stored arrays)."""
    m = writer.manifest
    chunks = sorted(m.chunks, key=lambda c: c.index)
    if not chunks or m.n_images == 0:
        return
    row_of: dict[int, int] = {}
    for c in chunks:
        for i in _candidates(c.start, c.stop, [{"index": j} for j in c.skipped]):
            row_of[int(i)] = len(row_of)
    for layer in m.layers:
        folder = writer.path / layer_dir(layer) / SUMMARY

        def parts(layer: int = layer, folder: Path = folder) -> Any:
            for c in chunks:
                f = folder / _npz(c.index)
                if f.is_file():
                    with np.load(f, allow_pickle=False) as z:
                        yield {name: z[name] for name in z.files}
                elif compute_part is not None:
                    yield compute_part(layer, c.index)
                else:
                    yield _part_from_shards(writer.path, layer, c)

        out = combine_summaries(parts())
        rows = np.vectorize(row_of.__getitem__, otypes=[np.int64])(out["top_candidates"])
        out["top_rows"] = rows.reshape(out["top_candidates"].shape)
        arrays = {k: v for k, v in out.items() if k != "n"}
        for name, a in arrays.items():
            writer._write(partial(save_npy_atomic, folder / f"{name}.npy", a))
        writer._write(partial(save_json_atomic, folder / SUMMARY_META, {
            "format": "solens-summary",
            "version": 1,
            "layer": layer,
            "run_id": m.run_id,
            "n_images": int(out["n"]),
            "k": int(out["top_norms"].shape[1]),
            "chunks": [c.index for c in chunks],
            "solens_version": __version__,
            "created": now(),
            "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype)}
                       for k, v in arrays.items()},
        }))  # fmt: skip


def _part_from_shards(path: Path, layer: int, c: ChunkRecord) -> dict[str, np.ndarray]:
    ld = layer_dir(layer)
    s = np.load(path / ld / "s" / chunk_file(c.index), mmap_mode="r")
    norms = np.load(path / ld / "norms" / chunk_file(c.index), mmap_mode="r")
    return chunk_summary(s, norms, _candidates(c.start, c.stop, [{"index": j} for j in c.skipped]))


def load_summary(path: str | Path, layer: int) -> dict[str, Any]:
    """The streaming statistics of ``layer`` of the run at ``path``: ``summary.json``'s
    fields plus its arrays (``mean_s`` [N, P], ``mean_norm`` [N], ``rms_norm`` [N],
    ``top_norms`` / ``top_candidates`` / ``top_rows`` [N, k])."""
    folder = Path(path) / layer_dir(layer) / SUMMARY
    meta_file = folder / SUMMARY_META
    if not meta_file.is_file():
        raise InputError(
            f"run {Path(path)} has no streaming statistics of layer {layer} (it is "
            "unfinished or not a run of this layer); re-run `solens effects` with the same "
            "arguments to finish it"
        )
    meta: dict[str, Any] = json.loads(meta_file.read_text())
    for name in meta["arrays"]:
        meta[name] = np.load(folder / f"{name}.npy", allow_pickle=False)
    return meta
