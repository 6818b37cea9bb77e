"""solens.store: the on-disk run (manifest + chunked .npy shards), datasets, streaming compute.

The JSON documents of a run folder are typed in ``solens.store.protocol`` (``Manifest``,
``ImagesRecord``, ``StatsMeta``, ``DescriptionsDoc``); the format is
``docs/run-format.md``.

>>> run = Run.open("runs/b32")            # doctest: +SKIP
>>> run.layer(9).s.shape                  # [images, neurons, later heads]  # doctest: +SKIP
"""

from solens.store.arrays import ChunkedArray
from solens.store.compute import run_effects
from solens.store.distributed import Dist, load_summary
from solens.store.export import export_effects
from solens.store.images import FolderImages, SynthImages
from solens.store.protocol import DescriptionsDoc, ImagesRecord, Manifest, StatsMeta
from solens.store.run import LayerView, Run, RunChunk, RunWriter
from solens.store.shards import ShardImages, open_source

__all__ = [
    "ChunkedArray",
    "DescriptionsDoc",
    "Dist",
    "FolderImages",
    "ImagesRecord",
    "LayerView",
    "Manifest",
    "Run",
    "RunChunk",
    "RunWriter",
    "ShardImages",
    "StatsMeta",
    "SynthImages",
    "export_effects",
    "load_summary",
    "open_source",
    "run_effects",
]
