"""``run_effects``: stream a dataset through the traced forward into a run folder.

Per batch: one traced forward for all requested layers, then per layer the coefficients
``s`` [B, N, P], the official offset [B, d] and the exact norms ``||phi_n(I)||`` [B, N]
(from ``s`` and the Gram matrices ``u u^T``, never [B, N, d]). Rows accumulate in one of
two preallocated chunk buffers; a full chunk is written (atomically, each shard hashed)
by a writer thread while the next one is computed into the other buffer, so memory does
not grow with the number of images. Image-independent directions ``u`` of both
conventions are stored once per layer.
"""

from __future__ import annotations

import platform
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from solens.errors import InputError
from solens.lens.frozen import CONVENTIONS
from solens.lens.second_order import (
    check_layer,
    coefficients,
    directions,
    gram,
    norms,
    trace_names,
)
from solens.models.model import LOCATION_KEYS, Model
from solens.store.distributed import Dist, merge_parts, open_writer, write_summaries
from solens.store.images import FolderImages, SynthImages, images_record, iter_batches
from solens.store.protocol import ArraySpec, ImagesRecord, Manifest
from solens.store.run import FORMAT_VERSION, IMAGES, MANIFEST, Run, RunWriter, layer_dir, now
from solens.store.shards import ShardImages, open_source

CHUNK_TARGET_BYTES = 128 * 2**20
"""Default chunk: about this many bytes of per-image arrays (all layers)."""


def default_preprocess(model: Model) -> Callable[[Any], torch.Tensor]:
    """The model's preprocessing, or open_clip's eval transform at the model's image size:
    PIL image -> Tensor [3, S, S] float32 (S = ``model.info.image_size``)."""
    if model.preprocess is not None:
        return model.preprocess
    from open_clip.transform import image_transform

    return image_transform(model.info.image_size, is_train=False)


def describe_preprocess(preprocess: Any) -> str:
    """A stable text form of a transform (memory addresses removed)."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(preprocess))


def layer_arrays(model: Model, layers: Sequence[int]) -> dict[str, ArraySpec]:
    """Per-image arrays of a run and their row shapes (``tail``): ``embeddings`` [d],
    ``inv_sigma_post`` [], and per layer l ``layer-LL/s`` [N, P], ``layer-LL/offset`` [d],
    ``layer-LL/norms`` [N] (N = d_mlp, P = (n_layers - l - 1) * n_heads, d = d_embed)."""
    i = model.info
    d = i.d_embed
    out = {"embeddings": ArraySpec((d,)), "inv_sigma_post": ArraySpec(())}
    for l in layers:
        P = (i.n_layers - l - 1) * i.n_heads
        ld = layer_dir(l)
        out[f"{ld}/s"] = ArraySpec((i.d_mlp, P))
        out[f"{ld}/offset"] = ArraySpec((d,))
        out[f"{ld}/norms"] = ArraySpec((i.d_mlp,))
    return out


def check_layers(model: Model, layers: Sequence[int]) -> list[int]:
    """Sorted unique layers, each with a later block (else ``InputError``)."""
    if not layers:
        raise InputError("no layers given (--layers)")
    for l in layers:
        check_layer(model, int(l))
    return sorted({int(l) for l in layers})


def default_chunk_size(arrays: dict[str, ArraySpec], batch_size: int) -> int:
    """Rows per chunk: about ``CHUNK_TARGET_BYTES``, a multiple of ``batch_size``."""
    row = sum(4 * int(np.prod(a.tail, dtype=np.int64)) for a in arrays.values())
    rows = max(1, CHUNK_TARGET_BYTES // max(row, 1))
    return max(batch_size, (rows // batch_size) * batch_size)


def _existing_chunk_size(out: Path) -> int | None:
    """The chunk size of the run already at ``out`` (None when there is none it reads;
    ``RunWriter.open`` then reports why)."""
    try:
        return Manifest.read(out / MANIFEST).chunk_size
    except InputError:
        return None


def _existing_images(out: Path) -> dict[str, Any] | None:
    """``images.json`` of the run already at ``out`` (its file sizes, mtimes and sha256
    spare re-reading unchanged images), or None."""
    try:
        return ImagesRecord.read(out / IMAGES).to_dict() if (out / MANIFEST).is_file() else None
    except InputError:
        return None


@torch.no_grad()
def run_effects(
    model: Model,
    images: FolderImages | SynthImages | ShardImages | str | Path,
    layers: Sequence[int],
    out: str | Path,
    *,
    batch_size: int = 32,
    chunk_size: int | None = None,
    progress: bool = True,
    workers: int | None = None,
    extra: dict[str, Any] | None = None,
    on_chunk: Callable[[int], None] | None = None,
    verify: str = "full",
    dist: Dist | None = None,
) -> Run:
    """Compute (or resume) the run folder ``out`` for ``layers`` over ``images``.

    Stores per image ``embeddings`` [d] and ``inv_sigma_post`` [], per layer ``s`` [N, P],
    ``offset`` [d] and ``norms`` [N] (``layer_arrays``), and per layer the directions
    [N, P, d] of both conventions (format: ``docs/run-format.md``).

    ``images``: a dataset or a spec for ``open_source``. ``chunk_size`` defaults to the
    existing run's, else about 128 MiB of rows. ``extra`` is recorded in the manifest
    (not compared on resume). ``on_chunk(k)`` runs after chunk ``k`` is on disk (tests).

    Resuming checks the chunks already listed (``verify="full"``: lengths, headers and
    sha256 checksums; ``"size"``: without checksums) and computes damaged ones again, and
    computes again the chunks of images whose contents changed (the manifest's last
    ``sessions`` entry lists both as ``repaired`` and ``changed``). Raises
    ``RunMismatchError`` when ``out`` holds a different run, ``StorageError`` when the
    folder cannot be written (the run stays resumable) and ``InputError`` when no image
    could be decoded.

    ``dist``: this process's rank in a distributed run (``solens.store.distributed``):
    rank 0 hashes the images, holds the run's lock, checks and repairs it; every rank
    computes its share of the pending chunks.
    """
    t_setup = time.perf_counter()
    dist = dist or Dist()
    if batch_size < 1:
        raise InputError(f"--batch-size must be positive, got {batch_size}")
    layers = check_layers(model, layers)
    source = open_source(images) if isinstance(images, (str, Path)) else images
    out = Path(out)
    if isinstance(source, (FolderImages, ShardImages)):
        # rank 0 hashes the images (reusing images.json for unchanged ones); other ranks
        # take its record (their stat() of unchanged files matches it: nothing is re-read)
        src = source
        known = dist.from_main(lambda: {"paths": list(src.ids), **src.files(
            known=_existing_images(out), progress=progress)})  # fmt: skip
        if not dist.is_main:
            source.files(known=known)
    arrays = layer_arrays(model, layers)
    if chunk_size is None:
        chunk_size = _existing_chunk_size(out) or default_chunk_size(arrays, batch_size)
    if chunk_size < 1:
        raise InputError(f"--chunk-size must be positive, got {chunk_size}")
    preprocess = default_preprocess(model)
    identity = {
        "format_version": FORMAT_VERSION,
        "model": model.identity(),
        "weights_sha256": model.weights_sha256,
        "preprocess": describe_preprocess(preprocess),
        "layers": layers,
        "dataset": source.describe(),
        "chunk_size": int(chunk_size),
        "arrays": {k: v.to_dict() for k, v in arrays.items()},
    }
    header = {
        "model_files": {k: v for k, v in model.info.extra.items() if k in LOCATION_KEYS},
        "conventions": list(CONVENTIONS),
        "n_neurons": model.info.d_mlp,
        "heads": {str(l): (model.info.n_layers - l - 1) * model.info.n_heads for l in layers},
        **(extra or {}),
    }
    with open_writer(out, identity, images_record(source), header, dist, verify) as writer:
        # rank 0's list: a rank that read the manifest later might see chunks written since
        todo = dist.broadcast(writer.pending())
        pending = dist.share(todo)  # this rank's chunks
        t0 = time.perf_counter()
        grams = _directions(model, layers, writer, need_grams=bool(pending))
        t_dirs = time.perf_counter() - t0
        session: dict[str, Any] = {  # a JSON record of the manifest
            "started": now(),
            "finished": None,  # stays None if this invocation is killed
            "device": str(model.device),
            "dtype": str(model.dtype).removeprefix("torch."),
            "torch": torch.__version__,
            "host": platform.node(),
            "batch_size": batch_size,
            "chunks": len(todo),
            "candidates": sum(len(range(*writer.chunk_range(k))) for k in todo),
            "world_size": dist.world,
        }
        if writer.repaired:
            session["repaired"] = writer.repaired
        if writer.changed:
            session["changed"] = writer.changed
        writer.update(sessions=[*writer.manifest.sessions, session])
        t1 = time.perf_counter()
        _compute(model, source, layers, writer, pending, grams, arrays, batch_size, preprocess,
                 progress and dist.is_main, workers, on_chunk)  # fmt: skip
        dist.barrier()  # every rank's chunks are on disk
        if dist.is_main:
            merge_parts(writer)
            write_summaries(writer)
        seconds = time.perf_counter() - t1
        session.update(
            finished=now(),
            seconds=round(seconds, 3),
            images_per_s=round(session["candidates"] / seconds, 2) if seconds > 0 else None,
        )
        chunk_s = sum(c.seconds or 0.0 for c in writer.manifest.chunks)
        writer.finish(
            setup_s=round(t0 - t_setup, 3),
            directions_s=round(t_dirs, 3),
            compute_s=round(chunk_s, 3),  # summed over chunks, across resumptions
            images_per_s=round(writer.n_candidates / chunk_s, 2) if chunk_s > 0 else None,
        )
        n_images = writer.manifest.n_images
    dist.barrier()  # rank 0 has finished the manifest
    if not dist.is_main:
        n_images = Run.open(out).n_images
    if n_images == 0 and writer.n_candidates > 0:
        skipped = writer.manifest.skipped
        first = f"first: {skipped[0].path}: {skipped[0].reason}; " if skipped else ""
        raise InputError(
            f"none of the {writer.n_candidates} images could be decoded ({first}all reasons "
            f"in {out / MANIFEST} 'skipped'); the run is not complete: fix or replace the "
            "images and re-run the same command"
        )
    return Run.open(out)


def _directions(
    model: Model, layers: list[int], writer: RunWriter, need_grams: bool = True
) -> dict[int, torch.Tensor]:
    """Store u [N, P, d] of both conventions once per layer; return the exact Gram
    matrices u u^T [N, P, P] per layer (when ``need_grams``)."""
    grams = {}
    for l in layers:
        for conv in CONVENTIONS:
            name = f"{layer_dir(l)}/directions-{conv}"
            if writer.has_static(name) and not (need_grams and conv == "exact"):
                continue
            u = directions(model, l, conv)
            if not writer.has_static(name):
                writer.write_static(
                    name,
                    u.float().cpu().numpy(),
                    convention=conv,
                    axes="neuron, (later layer, head) layer-major, embedding",
                )
            if conv == "exact":
                grams[l] = gram(u.float())
            del u
    return grams


def _compute(
    model: Model,
    source: Any,
    layers: list[int],
    writer: RunWriter,
    pending: list[int],
    grams: dict[int, torch.Tensor],
    arrays: dict[str, ArraySpec],
    batch_size: int,
    preprocess: Any,
    progress: bool,
    workers: int | None,
    on_chunk: Callable[[int], None] | None,
) -> None:
    from tqdm.auto import tqdm

    if not pending:
        return
    names = trace_names(layers, model.info.n_layers)
    rows_max = writer.chunk_size
    # two chunk buffers: one is written (shards hashed, manifest updated) by a writer thread
    # while the next chunk is computed into the other
    bufs = [{k: np.empty((rows_max, *a.tail), dtype=a.dtype) for k, a in arrays.items()}
            for _ in range(min(2, len(pending)))]  # fmt: skip
    groups: list[tuple[int, list[int]]] = []
    for k in pending:
        idx = list(range(*writer.chunk_range(k)))
        groups += [(k, idx[i : i + batch_size]) for i in range(0, len(idx), batch_size)]
    total = sum(len(g) for _, g in groups)
    bar = tqdm(total=total, unit="img", desc="effects", disable=not progress, dynamic_ncols=True)
    n_skipped = 0
    writing: tuple[Future[None], int] | None = None

    def settle() -> None:
        """Wait for the chunk being written (its errors surface here), then ``on_chunk``."""
        nonlocal writing
        if writing is not None:
            future, done = writing
            writing = None
            future.result()
            if on_chunk is not None:
                on_chunk(done)

    try:
        with ThreadPoolExecutor(1, thread_name_prefix="solens-writer") as io:
            batches = iter_batches(source, [g for _, g in groups], preprocess, workers)
            cur, row, skipped, t_chunk = 0, 0, [], time.perf_counter()
            buf = bufs[cur]
            for gi, batch in enumerate(batches):
                k = groups[gi][0]
                skipped += batch.skipped
                n_skipped += len(batch.skipped)
                if batch.pixels is not None:
                    b = len(batch.kept)
                    tr = model.trace(batch.pixels, names)
                    sl = slice(row, row + b)
                    buf["embeddings"][sl] = _np(tr.embedding)
                    for l in layers:
                        c = coefficients(model, tr, l)
                        ld = layer_dir(l)
                        buf[f"{ld}/s"][sl] = _np(c.s)
                        buf[f"{ld}/offset"][sl] = _np(c.offset)
                        buf[f"{ld}/norms"][sl] = _np(norms(c, grams[l].to(c.s)))
                    buf["inv_sigma_post"][sl] = _np(c.inv_sigma_post)
                    del tr, c
                    row += b
                bar.update(len(batch.indices))
                if n_skipped:
                    bar.set_postfix(skipped=n_skipped, refresh=False)
                if gi + 1 == len(groups) or groups[gi + 1][0] != k:
                    seconds = time.perf_counter() - t_chunk
                    settle()  # the other buffer is free again
                    chunk = {n: a[:row] for n, a in buf.items()}
                    writing = (io.submit(writer.write_chunk, k, chunk, skipped, seconds), k)
                    cur = (cur + 1) % len(bufs)
                    buf = bufs[cur]
                    row, skipped, t_chunk = 0, [], time.perf_counter()
            settle()
    finally:
        bar.close()


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()
