"""solens.store: the on-disk run (manifest + chunked .npy shards), datasets, streaming compute.

>>> run = Run.open("runs/b32")            # doctest: +SKIP
>>> run.layer(9).s.shape                  # [images, neurons, later heads]  # doctest: +SKIP
"""

from solens.store.arrays import ChunkedArray
from solens.store.compute import run_effects
from solens.store.export import export_effects
from solens.store.images import FolderImages, SynthImages, open_images
from solens.store.run import LayerView, Run, RunChunk, RunWriter

__all__ = [
    "ChunkedArray",
    "FolderImages",
    "LayerView",
    "Run",
    "RunChunk",
    "RunWriter",
    "SynthImages",
    "export_effects",
    "open_images",
    "run_effects",
]
