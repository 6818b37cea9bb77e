"""Helpers for the run-store tests: a tiny open_clip model on disk and image folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

TINY_CFG = {
    "embed_dim": 16,
    "vision_cfg": {
        "image_size": 32,
        "layers": 4,
        "width": 32,
        "patch_size": 8,
        "head_width": 8,
        "mlp_ratio": 4,
    },
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 1},
}


def tiny_visual(seed: int = 0):
    """A tiny random open_clip VisionTransformer (4 blocks, width 32, 17 tokens)."""
    import open_clip
    import torch

    torch.manual_seed(seed)
    return open_clip.transformer.VisionTransformer(
        image_size=32, patch_size=8, width=32, layers=4, heads=4, mlp_ratio=4, output_dim=16
    )


def tiny_model(seed: int = 0):
    """``solens.models.model.Model`` around ``tiny_visual`` with open_clip's eval transform."""
    from open_clip.transform import image_transform

    from solens.models.model import Model, describe_visual

    v = tiny_visual(seed)
    pre = image_transform(32, is_train=False)
    return Model(v, None, pre, describe_visual(v, name="tiny", pretrained=None))


def save_local_model(folder: Path, seed: int = 0) -> str:
    """A tiny random CLIP saved as an open_clip local-dir model; returns ``local-dir:PATH``."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**TINY_CFG)
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": TINY_CFG, "preprocess_cfg": {}})
    )
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(folder / "open_clip_model.safetensors"))
    return f"local-dir:{folder}"


def noise_png(path: Path, rng: np.random.Generator, size: int = 40, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    a = rng.integers(0, 256, (size, size, channels), dtype=np.uint8)
    Image.fromarray(a[..., 0] if channels == 1 else a, mode).save(path)


def image_folder(
    root: Path, n: int = 12, seed: int = 0, *, labels: bool = True, extras: bool = True
) -> Path:
    """``n`` noise PNGs (in sub-folders cat/ dog/ when ``labels``) plus, with ``extras``:
    a corrupt ``.jpg``, a grayscale PNG, an RGBA PNG, a palette PNG and a non-image file."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        sub = ("cat" if i % 2 else "dog") if labels else ""
        noise_png(root / sub / f"img{i:03d}.png", rng)
    if extras:
        (root / "cat").mkdir(parents=True, exist_ok=True)
        (root / "cat" / "broken.JPG").write_bytes(b"\xff\xd8\xff not really a jpeg")
        noise_png(root / "dog" / "gray.png", rng, mode="L")
        noise_png(root / "dog" / "rgba.PNG", rng, mode="RGBA")
        Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)).convert(
            "P", palette=Image.Palette.ADAPTIVE
        ).save(root / "cat" / "palette.png")
        (root / "notes.txt").write_text("not an image")
    return root
