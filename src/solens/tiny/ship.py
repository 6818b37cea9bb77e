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
from solens.tiny.evaluate import HEADLINE, evaluate
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


def record_eval(
    assets: str | Path | None = None,
    eval_n: int = HEADLINE.n,
    eval_seed: int = HEADLINE.seed,
) -> dict[str, Any]:
    """Evaluate the model in ``assets`` (``solens.tiny.evaluate.evaluate``, by default on the
    headline set ``HEADLINE``) and write the result into the ``eval`` section of its
    ``solens-tiny.json`` (atomically). The weights and the reference file are only read."""
    assets = Path(assets) if assets else ASSETS
    meta_path = assets / "solens-tiny.json"
    meta = json.loads(meta_path.read_text())
    weights = assets / "solens-tiny.safetensors"
    t0 = time.time()
    model = as_model(load_clip(weights, config=meta_path), str(weights))
    res = evaluate(model, n=eval_n, seed=eval_seed)
    res["eval_wall_s"] = round(time.time() - t0, 1)
    meta["eval"] = res
    save_text_atomic(meta_path, json.dumps(meta, indent=2) + "\n")
    return res


def ship(
    run: str | Path,
    assets: str | Path | None = None,
    eval_n: int = HEADLINE.n,
    eval_seed: int = HEADLINE.seed,
    weights: str | Path | None = None,
) -> dict[str, Any]:
    """Copy a run's weights into the package assets, write reference embeddings, evaluate
    (``record_eval``: ``solens.tiny.evaluate.evaluate``) and record the numbers in
    ``solens-tiny.json``. Every file is written atomically. The defaults are the headline
    evaluation set (``solens.tiny.evaluate.HEADLINE``)."""
    run = Path(run)
    assets = Path(assets) if assets else ASSETS
    assets.mkdir(parents=True, exist_ok=True)
    src_w = Path(weights) if weights else run / "solens-tiny.safetensors"
    src_m = run / "solens-tiny.json"
    save_bytes_atomic(assets / "solens-tiny.safetensors", src_w.read_bytes())
    meta = json.loads(src_m.read_text())
    clip = load_clip(assets / "solens-tiny.safetensors", config=src_m)
    write_reference(clip, assets / "solens-tiny-reference.safetensors")
    meta.pop("eval", None)
    meta["files"] = {
        "weights": "solens-tiny.safetensors",
        "reference": "solens-tiny-reference.safetensors",
    }
    save_text_atomic(assets / "solens-tiny.json", json.dumps(meta, indent=2) + "\n")
    return record_eval(assets, eval_n=eval_n, eval_seed=eval_seed)


__all__ = ["REFERENCE_TEXTS", "record_eval", "ship", "write_reference"]
