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


# --- a run folder in the JSON layout of solens 0.1.0 (format_version 1) -----------------------
V1_MODEL = {
    "name": "tiny", "pretrained": None, "quick_gelu": False, "image_size": 32,
    "patch_size": 8, "n_layers": 3, "n_heads": 2, "d_model": 8, "d_mlp": 3, "d_embed": 4,
    "n_tokens": 17, "source": "open_clip", "extra": {},
}  # fmt: skip
"""N = 3 neurons, P = (3 - 1 - 1) * 2 = 2 later heads of layer 1, d = 4."""


def write_v1_run(path: Path, images: Path) -> dict:
    """A complete run folder over the 5 PNGs written to ``images`` (candidate 1 skipped,
    chunks of 3), its layer-01 statistics (k = 2) and "words" descriptions, every JSON
    file hand-written exactly as solens 0.1.0 wrote it. Returns the JSON documents and the
    arrays: ``{"manifest", "images", "stats", "descriptions", "arrays"}``."""
    from solens.store.images import FolderImages

    rng = np.random.default_rng(7)
    for i in range(5):
        noise_png(images / f"{'cat' if i % 2 else 'dog'}/img{i}.png", rng, size=12)
    ids = sorted(p.relative_to(images).as_posix() for p in images.rglob("*.png"))
    fingerprint = FolderImages(images.resolve(), ids).fingerprint_v1()  # what 0.1.0 wrote
    path.mkdir(parents=True)
    n_rows = 4
    arrays = {
        "embeddings": rng.normal(size=(n_rows, 4)).astype(np.float32),
        "inv_sigma_post": rng.uniform(0.5, 2, size=n_rows).astype(np.float32),
        "layer-01/s": rng.normal(size=(n_rows, 3, 2)).astype(np.float32),
        "layer-01/offset": rng.normal(size=(n_rows, 4)).astype(np.float32),
        "layer-01/norms": rng.uniform(size=(n_rows, 3)).astype(np.float32),
    }
    for name, a in arrays.items():
        (path / name).mkdir(parents=True)
        np.save(path / name / "chunk-000000.npy", a[:2])  # candidates 0, 2 (1 skipped)
        np.save(path / name / "chunk-000001.npy", a[2:])  # candidates 3, 4
    statics = {}
    for conv in ("exact", "official"):
        u = rng.normal(size=(3, 2, 4)).astype(np.float32)
        np.save(path / f"layer-01/directions-{conv}.npy", u)
        statics[conv] = u
    arrays["directions-exact"] = statics["exact"]
    manifest = {
        "format": "solens-run",
        "format_version": 1,
        "model": V1_MODEL,
        "weights_sha256": "ab" * 32,
        "preprocess": "Compose(\n    Resize(size=32)\n)",
        "layers": [1],
        "dataset": {"kind": "folder", "root": str(images.resolve()), "n": 5,
                    "fingerprint": fingerprint,
                    "fingerprint_of": "relative paths, sizes, mtimes"},
        "chunk_size": 3,
        "arrays": {
            "embeddings": {"tail": [4], "dtype": "float32"},
            "inv_sigma_post": {"tail": [], "dtype": "float32"},
            "layer-01/s": {"tail": [3, 2], "dtype": "float32"},
            "layer-01/offset": {"tail": [4], "dtype": "float32"},
            "layer-01/norms": {"tail": [3], "dtype": "float32"},
        },
        "run_id": "0123456789abcdef",
        "solens_version": "0.1.0",
        "created": "2025-01-01T00:00:00+00:00",
        "model_files": {},
        "conventions": ["exact", "official"],
        "n_neurons": 3,
        "heads": {"1": 2},
        "command": {"model": "tiny", "pretrained": None, "checkpoint": None,
                    "images": str(images), "device": "cpu"},
        "n_candidates": 5,
        "n_images": 4,
        "complete": True,
        "chunks": [
            {"index": 0, "start": 0, "stop": 3, "rows": 2, "skipped": [1], "seconds": 0.5},
            {"index": 1, "start": 3, "stop": 5, "rows": 2, "skipped": [], "seconds": 0.25},
        ],
        "skipped": [{"index": 1, "path": ids[1], "reason": "OSError: truncated"}],
        "static": {
            f"layer-01/directions-{conv}": {
                "shape": [3, 2, 4], "dtype": "float32", "convention": conv,
                "axes": "neuron, (later layer, head) layer-major, embedding",
            }
            for conv in ("exact", "official")
        },
        "timings": {"setup_s": 0.1, "directions_s": 0.2, "compute_s": 0.75,
                    "images_per_s": 6.67},
        "updated": "2025-01-01T00:00:02+00:00",
        "sessions": [{
            "started": "2025-01-01T00:00:00+00:00", "finished": "2025-01-01T00:00:02+00:00",
            "device": "cpu", "dtype": "float32", "torch": "2.5.0", "host": "h",
            "batch_size": 2, "chunks": 2, "candidates": 5, "seconds": 0.8,
            "images_per_s": 6.25,
        }],
        "resumed": ["2025-01-01T00:00:01+00:00"],
        "finished": "2025-01-01T00:00:02+00:00",
    }  # fmt: skip
    images_json = {
        "root": str(images.resolve()),
        "paths": ids,
        "labels": [i.split("/")[0] for i in ids],
        "classes": ["cat", "dog"],
    }
    (path / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (path / "images.json").write_text(json.dumps(images_json, indent=1) + "\n")

    k = 2
    stats_arrays = {
        "mean_coef": rng.normal(size=(3, 2)).astype(np.float32),
        "phi_bar": rng.normal(size=(3, 4)).astype(np.float32),
        "centred_norms": rng.uniform(size=(n_rows, 3)).astype(np.float32),
        "top_indices": np.array([[0, 1], [2, 3], [3, 0]], dtype=np.int64),
        "top_norms": np.array([[0.9, 0.5], [0.8, 0.4], [0.7, 0.3]], dtype=np.float32),
        "tau": np.array([0.5, 0.4, 0.3], dtype=np.float32),
        "r": rng.normal(size=(3, 4)).astype(np.float32),
        "r_coef": rng.normal(size=(3, 2)).astype(np.float32),
        "var_topk": np.array([0.9, 0.8, 0.7], dtype=np.float32),
        "var_all": np.array([0.6, 0.5, 0.4], dtype=np.float32),
        "total_var": np.array([0.1, 0.2, 0.3], dtype=np.float32),
    }
    sdir = path / "layer-01" / "stats"
    sdir.mkdir()
    for name, a in stats_arrays.items():
        np.save(sdir / f"{name}.npy", a)
    stats = {
        "format": "solens-stats",
        "version": 1,
        "layer": 1,
        "k": k,
        "top_percent": None,
        "n_images": n_rows,
        "n_neurons": 3,
        "convention": "exact",
        "run_id": "0123456789abcdef",
        "model": V1_MODEL,
        "solens_version": "0.1.0",
        "created": "2025-01-01T00:00:03+00:00",
        "arrays": {name: {"shape": list(a.shape), "dtype": str(a.dtype)}
                   for name, a in stats_arrays.items()},
    }  # fmt: skip
    (sdir / "stats.json").write_text(json.dumps(stats, indent=1) + "\n")

    words = ["sea", "ship", "dog", "cat"]
    descriptions = {
        "format": "solens-descriptions",
        "version": 1,
        "run_id": "0123456789abcdef",
        "run": str(path),
        "layer": 1,
        "convention": "exact",
        "model": {"name": "tiny", "pretrained": None, "quick_gelu": False},
        "pool": {"name": "words", "source": "", "n_texts": 4, "content_hash": "c" * 64},
        "method": "omp",
        "n_terms": 2,
        "k": k,
        "n_images": n_rows,
        "dictionary": "D = normalize_rows(...)",
        "target": "r_n: top right-singular vector of the top-k centred effects (unit)",
        "solens_version": "0.1.0",
        "created": "2025-01-01T00:00:04+00:00",
        "seconds": {"stats": 0.01, "omp": 0.02},
        "neurons": [
            {"neuron": n,
             "terms": [{"text": words[n], "index": n, "coef": -0.5 + n},
                       {"text": words[3], "index": 3, "coef": 0.125}],
             "cosine": 0.75, "tau": float(stats_arrays["tau"][n]),
             "var_topk": 0.9, "var_all": 0.6, "total_var": 0.1,
             "top_images": stats_arrays["top_indices"][n].tolist()}
            for n in range(3)
        ],
    }  # fmt: skip
    (path / "descriptions").mkdir()
    (path / "descriptions" / "words-layer-01.json").write_text(
        json.dumps(descriptions, separators=(",", ":")) + "\n"
    )
    return {"manifest": manifest, "images": images_json, "stats": stats,
            "descriptions": descriptions, "arrays": {**arrays, **stats_arrays}}  # fmt: skip
