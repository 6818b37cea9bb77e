"""Shipping solens-tiny: a training run's weights into the package assets, with reference
embeddings (for the reload test) and the model card's evaluation in its metadata."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

from solens.store.arrays import save_bytes_atomic, save_text_atomic
from solens.store.images import SynthImages, pixels
from solens.tiny.evaluate import evaluate
from solens.tiny.model import ASSETS, REFERENCE_PATH, TinyCLIP, TinyPreprocess, as_model, load_clip

REFERENCE_TEXTS = ["a photo of a car", "a red striped umbrella on the sand", "a dog", "ocean"]


@torch.no_grad()
def write_reference(clip: TinyCLIP, path: Path = REFERENCE_PATH, n_images: int = 4) -> Path:
    """Store fixed inputs and their embeddings next to the weights (for the reload test):
    ``images`` [n, 3, S, S] (preprocessed ``balanced`` scenes, seed 2024), ``image_embeddings``
    [n, d], ``texts_json`` (uint8 bytes of a JSON list), ``text_embeddings`` [len(texts), d]."""
    scenes = SynthImages("balanced", n_images, 2024, clip.cfg.image_size)
    x = pixels(scenes, TinyPreprocess(clip.cfg))
    clip = clip.eval()
    f = clip.encode_image(x.to(clip.visual.proj.device)).float().cpu()
    g = clip.encode_text(REFERENCE_TEXTS).float().cpu()
    texts = torch.frombuffer(bytearray(json.dumps(REFERENCE_TEXTS).encode()), dtype=torch.uint8)
    tensors = {
        "images": x.contiguous(),
        "image_embeddings": f.contiguous(),
        "texts_json": texts.clone(),
        "text_embeddings": g.contiguous(),
    }
    save_bytes_atomic(path, save(tensors))
    return Path(path)


def ship(
    run: str | Path,
    assets: str | Path | None = None,
    eval_n: int = 2000,
    eval_seed: int = 12345,
    weights: str | Path | None = None,
) -> dict[str, Any]:
    """Copy a run's weights into the package assets, write reference embeddings, evaluate
    (``solens.tiny.evaluate.evaluate``) and record the numbers in ``solens-tiny.json``.
    Every file is written atomically; the ablations use ``min(eval_n, 1000)`` images."""
    run = Path(run)
    assets = Path(assets) if assets else ASSETS
    assets.mkdir(parents=True, exist_ok=True)
    src_w = Path(weights) if weights else run / "solens-tiny.safetensors"
    src_m = run / "solens-tiny.json"
    save_bytes_atomic(assets / "solens-tiny.safetensors", src_w.read_bytes())
    meta = json.loads(src_m.read_text())
    clip = load_clip(assets / "solens-tiny.safetensors", config=src_m)
    write_reference(clip, assets / "solens-tiny-reference.safetensors")
    t0 = time.time()
    model = as_model(clip, str(assets / "solens-tiny.safetensors"))
    res = evaluate(model, n=eval_n, seed=eval_seed, ablation_n=min(eval_n, 1000))
    res["eval_wall_s"] = round(time.time() - t0, 1)
    meta["eval"] = res
    meta["files"] = {
        "weights": "solens-tiny.safetensors",
        "reference": "solens-tiny-reference.safetensors",
    }
    save_text_atomic(assets / "solens-tiny.json", json.dumps(meta, indent=2) + "\n")
    return res


__all__ = ["REFERENCE_TEXTS", "ship", "write_reference"]
