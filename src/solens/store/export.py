"""``export_effects``: materialise a layer's effects [images, neurons, d] into one ``.npy``.

This is the reference repository's layout (one array per layer, image order = the run's
image list). The file is filled chunk by chunk through ``np.lib.format.open_memmap``
under a temporary name and renamed at the end, so the array is never whole in RAM and a
partial file never carries the final name.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from solens.errors import InputError, StorageError
from solens.lens.frozen import CONVENTIONS
from solens.lens.second_order import LayerCoeffs, effects
from solens.store.arrays import atomic_path, storage_error
from solens.store.run import Run, layer_dir

BLOCK_BYTES = 64 * 2**20
"""Rows are materialised in blocks of about this many bytes."""


def parse_neurons(values: Sequence[str | int] | None, n: int) -> list[int] | None:
    """``["3", "10:20", "7,8"]`` -> [3, 10, ..., 19, 7, 8]; ``None``/empty -> all."""
    if not values:
        return None
    out: list[int] = []
    for v in values:
        for part in str(v).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                if ":" in part:
                    a, b = part.split(":", 1)
                    out.extend(range(int(a or 0), int(b) if b else n))
                else:
                    out.append(int(part))
            except ValueError:
                raise InputError(f"bad neuron {part!r}; use integers or ranges A:B") from None
    bad = [i for i in out if not 0 <= i < n]
    if bad:
        raise InputError(f"neuron {bad[0]} out of range: this layer has neurons 0..{n - 1}")
    if not out:
        raise InputError("--neurons selects no neuron")
    return out


def export_effects(
    run: Run | str | Path,
    layer: int,
    out: str | Path,
    *,
    convention: str = "exact",
    neurons: Sequence[int] | None = None,
    allow_partial: bool = False,
    progress: bool = False,
) -> Path:
    """Write phi [n_images, n_neurons, d] float32 of ``layer`` to ``out``; returns ``out``.

    ``exact``: contributions to the unnormalised f(I); ``official``: the reference code's
    ``100/||f||``-scaled arrays. ``neurons`` selects (and orders) neurons: the file is then
    [n_images, len(neurons), d]. An incomplete run raises ``InputError`` unless
    ``allow_partial`` (then its complete chunks are exported).
    """
    from tqdm.auto import tqdm

    run = run if isinstance(run, Run) else Run.open(run)
    if convention not in CONVENTIONS:
        raise InputError(f"unknown convention {convention!r}; choose one of {list(CONVENTIONS)}")
    run.require_complete(allow_partial)
    view = run.layer(layer)
    stored = view.directions(convention)  # memory-mapped [N, P, d]
    idx = None if neurons is None else np.asarray(list(neurons), dtype=np.int64)
    u = torch.from_numpy(np.array(stored if idx is None else stored[idx]))
    K, d = u.shape[0], u.shape[2]
    ld = layer_dir(layer)
    n = run.n_images
    out = Path(out)
    if out.is_dir():
        raise InputError(f"--out {out} is a folder; give a file name, e.g. {out / (ld + '.npy')}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(out.parent).free
    except OSError as e:
        raise storage_error(out, e) from None
    need = 128 + n * K * d * 4
    if need > free:  # the file is a memory map: a full disk would kill the process (SIGBUS)
        raise StorageError(
            f"cannot write {out}: it needs {need / 2**20:.1f} MiB and {out.parent} has "
            f"{free / 2**20:.1f} MiB free; free space or choose another --out"
        )
    block = max(1, BLOCK_BYTES // max(1, K * d * 4))
    with atomic_path(out) as tmp:
        dst = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, K, d))
        with tqdm(total=n, unit="img", desc=f"export {ld}", disable=not progress) as bar:
            for ch in run.iter_chunks(layer):
                for a in range(0, ch.rows, block):
                    b = min(a + block, ch.rows)
                    s = ch["s"][a:b] if idx is None else ch["s"][a:b][:, idx]
                    c = LayerCoeffs(
                        layer,
                        _t(s),
                        _t(ch["inv_sigma_post"][a:b]),
                        _t(ch["offset"][a:b]),
                        _t(ch["embeddings"][a:b]),
                    )
                    dst[ch.start + a : ch.start + b] = effects(c, u, convention).numpy()
                    bar.update(b - a)
        dst.flush()
        del dst
    return out


def _t(a: np.ndarray) -> torch.Tensor:
    """A writable float32 copy of a (memory-mapped) block as a tensor."""
    return torch.from_numpy(np.array(a, dtype=np.float32))
