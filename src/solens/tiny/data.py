"""Training data of solens-tiny: batches of the world's ``train`` split with one caption per
image, a background prefetcher, and the on-disk cache of frozen MiniLM caption embeddings.

Captions. The frozen MiniLM is the cost of the text side (~150 sentences/s on 2 CPU cores), so
two caption sources are mixed per image:

* *facet* captions (``solens.synth.captions.facet_caption``): short canonical descriptions
  built from the scene spec from a closed set (~10k strings, ``facet_pool``), whose MiniLM
  embeddings are computed once and cached on disk;
* *native* captions of the renderer (``solens.synth.captions.caption``: varied templates,
  synonyms, several objects), encoded on the fly for a fraction ``native_frac`` of a batch.
"""

from __future__ import annotations

import json
import queue
import random
import threading
from pathlib import Path

import numpy as np
import torch

from solens.store.arrays import save_bytes_atomic
from solens.synth.captions import facet_caption
from solens.synth.sampling import iter_batches
from solens.tiny.config import TrainConfig
from solens.tiny.model import MiniLMTextEncoder, TinyConfig


class CaptionCache:
    """caption -> frozen MiniLM embedding [384], backed by a ``.safetensors`` file."""

    def __init__(self, text: MiniLMTextEncoder, path: Path | None):
        self.text = text
        self.path = path
        self._saved = -1  # entries known to be on disk (-1: no file yet)
        if path is not None and path.exists():
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta, emb = f.metadata() or {}, f.get_tensor("emb")
            # captions live in the file's metadata; older caches kept them in a side file
            keys = json.loads(meta.get("keys") or Path(str(path) + ".keys.json").read_text())
            for k, v in zip(keys, emb, strict=True):
                self.text.cache[k] = v.clone()
            self._saved = len(self.text.cache)

    def ensure(self, texts: list[str], batch_size: int = 512, progress: bool = False) -> None:
        missing = [t for t in dict.fromkeys(texts) if t not in self.text.cache]
        for i in range(0, len(missing), 2048):
            self.text.sentence_embeddings(missing[i : i + 2048], batch_size=batch_size)
            if progress:
                print(
                    f"  MiniLM: {min(i + 2048, len(missing))}/{len(missing)} captions", flush=True
                )

    def save(self) -> None:
        """Write if grown: one atomic file, captions in its metadata (runs may share it)."""
        if self.path is None or len(self.text.cache) == self._saved:
            return
        from safetensors.torch import save as to_bytes

        keys = list(self.text.cache)
        emb = torch.stack([self.text.cache[k] for k in keys]).contiguous()
        save_bytes_atomic(self.path, to_bytes({"emb": emb}, metadata={"keys": json.dumps(keys)}))
        self._saved = len(keys)



def train_batch(
    k: int, cfg: TrainConfig, tiny: TinyConfig
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Training batch ``k``: uint8 images, one caption per image, labels (pure function of k)."""
    b = next(
        iter_batches(cfg.batch_size, "train", cfg.data_seed, tiny.image_size, start=k, n_batches=1)
    )
    rng = random.Random(f"{cfg.seed}/captions/{k}")
    caps = []
    for spec, native in zip(b.specs, b.captions, strict=True):
        if rng.random() < cfg.native_frac:
            caps.append(native)
        else:
            caps.append(facet_caption(spec, rng, cfg.class_prompt_frac, cfg.pair_caption_frac))
    return b.images, caps, b.labels


class Prefetcher:
    """Renders batches ``start, start+1, ...`` in a background thread (bounded queue)."""

    def __init__(self, start: int, stop: int, cfg: TrainConfig, tiny: TinyConfig, depth: int = 3):
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()

        def run() -> None:
            for k in range(start, stop):
                if self._stop.is_set():
                    return
                item = (k, *train_batch(k, cfg, tiny))
                while not self._stop.is_set():
                    try:
                        self.q.put(item, timeout=0.5)
                        break
                    except queue.Full:
                        continue

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def get(self):
        return self.q.get()

    def close(self) -> None:
        self._stop.set()
