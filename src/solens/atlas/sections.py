"""Readers of the experiment folders of a run for the atlas: ``ablate/``, ``segment/``,
``attack/`` and ``discover/`` (formats: docs/run-format.md and the contracts in
docs/atlas.md). Each reader returns the context of one atlas page, or None when the run
has no such output (or a file of another format). Every field a page does not need is
optional; images are copied into the site as thumbnails."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from solens.store.arrays import write_atomic

ABLATE_VARIANTS = ("second_order", "significant_only", "insignificant_only", "rank1",
                   "indirect", "direct")
SEGMENT_METRICS = (("pixel_acc", "pixel accuracy"), ("miou", "mIoU"), ("map", "mAP"))
ATTACK_METHODS = ("second_order", "random", "similar_words", "indirect")


def read_json(path: Path, fmt: str | None = None) -> dict[str, Any] | None:
    """The JSON object at ``path``, or None when it is missing, unreadable, not an object,
    or (with ``fmt``) carries another ``format``."""
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(d, dict) or (fmt is not None and d.get("format", fmt) != fmt):
        return None
    return d


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and math.isfinite(float(x)) else None


def save_thumbnail(src: Path, dst: Path, max_width: int) -> bool:
    """``src`` (any image Pillow reads) scaled to at most ``max_width`` pixels wide, saved
    as PNG at ``dst`` (atomically); False when ``src`` cannot be read."""
    try:
        with Image.open(src) as im:
            im.load()
            img = im.convert("RGB")
    except (OSError, ValueError):
        return False
    if img.width > max_width:
        img = img.resize((max_width, max(1, round(img.height * max_width / img.width))),
                         Image.Resampling.LANCZOS)
    write_atomic(dst, lambda f: img.save(f, format="PNG", optimize=True))
    return True


def frac_significant(run_path: Path, run_id: str) -> dict[int, list[float]]:
    """Per layer, the fraction of evaluation images above tau_n of every neuron, from
    ``RUN/ablate/ablate.json`` (empty when there is none for this run)."""
    d = read_json(run_path / "ablate" / "ablate.json", "solens-ablate")
    if d is None or (d.get("settings") or {}).get("run_id", run_id) != run_id:
        return {}
    out: dict[int, list[float]] = {}
    for layer in d.get("layers") or []:
        if isinstance(layer, Mapping) and isinstance(layer.get("frac_significant"), list):
            out[int(layer["layer"])] = [float(x) for x in layer["frac_significant"]]
    return out


def ablate_section(run_path: Path, run_id: str, site: Path) -> dict[str, Any] | None:
    """``RUN/ablate/``: the accuracy table per layer and variant, text reconstruction and
    the two figures (copied to ``site/files/ablate``)."""
    folder = run_path / "ablate"
    d = read_json(folder / "ablate.json", "solens-ablate")
    if d is None or (d.get("settings") or {}).get("run_id", run_id) != run_id:
        return None
    rows = []
    for layer in d.get("layers") or []:
        if not isinstance(layer, Mapping):
            continue
        acc = layer.get("accuracy") or {}
        pc = layer.get("pc1_variance") or {}
        rows.append({"layer": layer.get("layer"), "baseline": _num(layer.get("baseline")),
                     "accuracy": [_num(acc.get(v)) for v in ABLATE_VARIANTS],
                     "pc1_second_order": _num(pc.get("second_order")),
                     "pc1_indirect": _num(pc.get("indirect"))})
    text: list[dict[str, Any]] = []
    m_values = [int(m) for m in d.get("m_capped") or []]
    for layer in d.get("layers") or []:
        for pool, by_m in ((layer.get("text_reconstruction") or {}) if isinstance(
                layer, Mapping) else {}).items():
            text.append({"pool": pool, "layer": layer.get("layer"),
                         "values": [_num(by_m.get(str(m))) for m in m_values]})
    figures = []
    for name, alt in (("fig3.png", "Zero-shot accuracy per layer for each ablation variant"),
                      ("fig4.png", "Zero-shot accuracy against the number of text terms m")):
        if save_thumbnail(folder / name, site / "files" / "ablate" / name, 1200):
            figures.append({"src": f"files/ablate/{name}", "alt": alt})
    settings = d.get("settings") or {}
    ev = settings.get("eval") or {}
    return {"variants": list(ABLATE_VARIANTS), "rows": rows, "text": text,
            "m_values": m_values, "figures": figures,
            "eval": ev.get("spec") or ev.get("root"), "k": settings.get("k")}


def segment_section(run_path: Path, site: Path, max_overlays: int) -> dict[str, Any] | None:
    """``RUN/segment/segment.json``: metrics per method, and the first ``max_overlays``
    overlays (sorted by name) as thumbnails in ``site/files/segment``."""
    folder = run_path / "segment"
    d = read_json(folder / "segment.json", "solens-segment")
    if d is None:
        return None
    methods = d.get("methods") or {}
    rows = [{"method": str(m), "values": [_num((v or {}).get(k)) for k, _ in SEGMENT_METRICS]}
            for m, v in methods.items() if isinstance(v, Mapping)]
    overlays = []
    for p in sorted((folder / "overlays").glob("*.png"))[:max_overlays]:
        if save_thumbnail(p, site / "files" / "segment" / p.name, 720):
            overlays.append({"src": f"files/segment/{p.name}",
                             "alt": f"Segmentation overlay {p.stem}: image, heatmap and mask",
                             "caption": p.stem})
    return {"metrics": [label for _, label in SEGMENT_METRICS], "rows": rows,
            "overlays": overlays, "n_images": d.get("n_images"),
            "images": d.get("split") or d.get("images"),
            "settings": d.get("settings") if isinstance(d.get("settings"), Mapping) else {}}


def attack_section(run_path: Path, site: Path, max_images: int) -> dict[str, Any] | None:
    """``RUN/attack/<c1>-<c2>/summary.json`` of every pair: success rate per method (mean,
    std, words), reliance, and the first ``max_images`` generated images as thumbnails."""
    folder = run_path / "attack"
    pairs = []
    for summary in sorted(folder.glob("*/summary.json")):
        d = read_json(summary, "solens-attack")
        if d is None:
            continue
        name = summary.parent.name
        methods = []
        for m, v in (d.get("methods") or {}).items():
            if isinstance(v, Mapping):
                methods.append({"method": str(m), "mean": _num(v.get("mean")),
                                "std": _num(v.get("std")),
                                "words": [str(w) for w in (v.get("words") or [])][:20]})
        methods.sort(key=lambda r: (ATTACK_METHODS.index(r["method"])
                                    if r["method"] in ATTACK_METHODS else 99, r["method"]))
        images = []
        for p in sorted((summary.parent / "images").glob("*.png"))[:max_images]:
            dst = site / "files" / "attack" / name / p.name
            if save_thumbnail(p, dst, 256):
                images.append({"src": f"files/attack/{name}/{p.name}",
                               "alt": f"Generated image {p.stem} for the pair {name}"})
        pair = str(d.get("pair") or name.replace("-", ":", 1))
        pairs.append({"name": name, "pair": pair, "reliance": _num(d.get("reliance")),
                      "n_images": d.get("n_images"), "repeats": d.get("repeats"),
                      "methods": methods, "images": images})
    return {"pairs": pairs} if pairs else None


def discover_section(run_path: Path, max_words: int = 10) -> dict[str, Any] | None:
    """``RUN/discover/discover.json``: the words found for each image (text, score and
    voting neurons) and the precision at 5 against its baseline."""
    d = read_json(run_path / "discover" / "discover.json", "solens-discover")
    if d is None:
        return None
    images = []
    for im in d.get("images") or []:
        if not isinstance(im, Mapping):
            continue
        words = []
        for w in (im.get("words") or [])[:max_words]:
            if isinstance(w, Mapping):
                neurons = [n for n in (w.get("neurons") or []) if isinstance(n, list)
                           and len(n) >= 2][:5]
                words.append({"text": str(w.get("text", "")), "score": _num(w.get("score")),
                              "neurons": [(int(n[0]), int(n[1])) for n in neurons]})
        images.append({"image": str(im.get("image", "")), "words": words})
    return {"images": images, "precision_at_5": _num(d.get("precision_at_5")),
            "baseline": _num(d.get("baseline"))}


__all__ = ["ablate_section", "attack_section", "discover_section", "frac_significant",
           "read_json", "save_thumbnail", "segment_section"]
