"""Benchmark: a transformers CLIP at full ViT-B/32 shape (random weights), converted by
``solens.models.hf``: time to load, image-feature gap to transformers' ``get_image_features``,
text-feature gap, and the relative gap of second-order effects (one layer) to the brute force
on the transformers model (tests/hf_helpers.py), in float32 and float64.

    python benchmarks/hf_parity.py                 # writes results/hf_parity.json
    python benchmarks/hf_parity.py --layer 9 --images 2
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel, CLIPVisionModelWithProjection

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.hf_helpers import _tokenizer, brute_force_second_order  # noqa: E402

from solens.lens.second_order import second_order  # noqa: E402
from solens.models.loading import load_model  # noqa: E402

B32 = {
    "text_config": {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
                    "num_attention_heads": 8, "bos_token_id": 49406, "eos_token_id": 49407},
    "vision_config": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                      "num_attention_heads": 12, "image_size": 224, "patch_size": 32,
                      "hidden_act": "quick_gelu"},
    "projection_dim": 512,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layer", type=int, default=9)
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "hf_parity.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(**B32)).eval()
    with torch.no_grad():  # non-trivial LayerNorm and bias parameters
        for name, p in clip.named_parameters():
            if p.ndim == 1 and name.startswith("vision_model."):
                base = 1.0 if "norm" in name and name.endswith("weight") else 0.0
                p.copy_(base + 0.1 * torch.randn_like(p))
    x = torch.randn(args.images, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    texts = ["a photo of a dog", "a diagram of a ship", "red"]
    tok = _tokenizer()
    rows: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "clip-b32"
        clip.save_pretrained(folder)
        tok.save_pretrained(folder)
        t = time.perf_counter()
        m = load_model(checkpoint=folder)
        rows["load_s"] = time.perf_counter() - t
        with torch.no_grad():
            want = clip.get_image_features(pixel_values=x)
            want = want if isinstance(want, torch.Tensor) else want.pooler_output
            txt = clip.get_text_features(**tok(texts, padding=True, return_tensors="pt"))
            txt = txt if isinstance(txt, torch.Tensor) else txt.pooler_output
        rows["image_max_abs"] = float((m.encode_image(x) - want).abs().max())
        rows["image_max_abs_rel"] = rows["image_max_abs"] / float(want.abs().max())
        rows["text_max_abs"] = float((m.encode_text(texts) - txt).abs().max())
        vision = CLIPVisionModelWithProjection.from_pretrained(
            folder, attn_implementation="eager", projection_dim=512
        ).eval()
        for dtype, key in ((torch.float32, "float32"), (torch.float64, "float64")):
            m.to(dtype=dtype)
            vision.to(dtype)
            t = time.perf_counter()
            ref = brute_force_second_order(vision, x.to(dtype), args.layer)
            rows[f"brute_force_s_{key}"] = time.perf_counter() - t
            t = time.perf_counter()
            got = second_order(m, x.to(dtype), args.layer)
            rows[f"solens_s_{key}"] = time.perf_counter() - t
            rel = (got - ref).abs().max() / ref.abs().max()
            rows[f"second_order_rel_{key}"] = float(rel)
    print(f"ViT-B/32-shaped random transformers CLIP, layer {args.layer}, {args.images} images")
    for k, v in rows.items():
        print(f"  {k:28s} {v:.3g}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": platform.platform(), "threads": torch.get_num_threads(),
        "layer": args.layer, "images": args.images, **rows,
    }, indent=1) + "\n")


if __name__ == "__main__":
    main()
