"""``solens segment``: zero-shot segmentation of images with ground-truth masks, every method
side by side, written into ``RUN/segment/``.

Per batch one traced forward (with the gradients of the target score for the gradient-based
baselines) gives every method's per-patch map; each map goes back to the image's own pixels
through the preprocessing's resize and centre crop (``heatmaps.to_image``), is min-max
normalised over the pixels the model saw and scored against the mask
(``metrics.Accumulator``). The target text is the zero-shot predicted class (the run's
model, class prompts of the dataset) or one ``query`` for every image.

Results are written per part of ``PART_SIZE`` images (``parts/part-NNNNNN.json``): a killed
run resumes at the first missing part when the settings are the same.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from solens.describe.describe import DESCRIPTIONS_DIR
from solens.describe.stats import stats_for
from solens.errors import InputError
from solens.experiments.classifier import (
    ClassifierSpec,
    class_directions,
    classifier_spec,
    file_spec,
    imagenet_spec,
)
from solens.lens.frozen import head_ov
from solens.models.model import Model
from solens.segment import baselines as B
from solens.segment.heatmaps import (
    Pass,
    activation_map,
    crop_geometry,
    forward,
    grid,
    normalise,
    selection_masks,
    signed_map,
    to_image,
)
from solens.segment.metrics import Accumulator
from solens.segment.readers import (
    FolderMasks,
    MaskedImages,
    MatMasks,
    ShardMasks,
    SynthMasks,
    open_masked,
)
from solens.store.arrays import save_json_atomic, save_text_atomic, write_atomic
from solens.store.compute import default_preprocess
from solens.store.protocol import DescriptionsDoc
from solens.store.results import open_results, settings_digest
from solens.store.run import Run

SEGMENT_DIR = "segment"
FORMAT = "solens-segment"
VERSION = 1
PART_SIZE = 100
METHODS = ("second_order", "second_order_signed", "raw_attention", "rollout", "chefer",
           "textspan", "gradcam", "random_neurons")
TINY_LAYERS = (0,)
"""solens-tiny's default source blocks: block 0 is where its second-order effects live (the
only block whose second-order mean-ablation costs accuracy; docs/segment.md)."""
TINY_K = 50


# --- defaults ------------------------------------------------------------------------------
def default_layers(name: str, n_layers: int) -> list[int]:
    """The paper's blocks 8-10 of 12, scaled to the model's depth; solens-tiny: block 0."""
    if name == "solens-tiny":
        return list(TINY_LAYERS)
    L = n_layers
    lo, hi = round(8 * L / 12), round(10 * L / 12)
    return list(range(max(0, lo), min(L - 2, hi) + 1))


def default_k(name: str) -> int:
    """200 neurons (the paper's, for 3 x 3,072 neurons of ViT-B); solens-tiny: 50."""
    return TINY_K if name == "solens-tiny" else 200


def default_textspan_layers(n_layers: int) -> list[int]:
    """The last third of the blocks (the last 4 of 12)."""
    n = max(1, round(n_layers / 3))
    return list(range(n_layers - n, n_layers))


# --- settings ------------------------------------------------------------------------------
@dataclass(frozen=True)
class SegmentSettings:
    """Everything that determines the numbers; a resumed run must have the same."""

    run_id: str
    images: dict[str, Any]
    layers: list[int]
    stats_k: dict[str, int]
    k: int
    random_k: int
    textspan_layers: list[int]
    threshold: float
    query: str | None
    classifier: dict[str, Any] | None
    seed: int
    n_overlays: int

    def digest(self) -> str:
        return settings_digest(self)


@dataclass
class SegmentResult:
    settings: SegmentSettings
    methods: dict[str, Accumulator]
    seconds: float

    @property
    def n_images(self) -> int:
        return next(iter(self.methods.values())).n_images if self.methods else 0

    def table(self) -> dict[str, dict[str, float]]:
        return {m: a.result() for m, a in self.methods.items()}


# --- the maps of one batch -------------------------------------------------------------------
@dataclass
class Segmenter:
    """What every batch needs: the rank-1 directions ``r`` [M, d] of the chosen layers'
    neurons (concatenated, ``sizes`` per layer), ``k``, the random neurons' masks [N_l] per
    layer, the TextSpan blocks, the later heads' maps, and the target: ``class_text`` [C, d]
    (predicted class) or ``query`` [d]."""

    model: Model
    layers: list[int]
    r: Tensor
    sizes: list[int]
    k: int
    random_masks: list[Tensor]
    textspan_layers: list[int]
    head_maps: dict[int, Tensor]
    class_text: Tensor | None
    query: Tensor | None

    def targets(self, f: Tensor) -> Tensor:
        """Unit target vectors [B, d] for embeddings f(I) [B, d]."""
        if self.query is not None:
            return F.normalize(self.query.to(f), dim=-1).expand(len(f), -1)
        assert self.class_text is not None
        t = F.normalize(self.class_text.to(f), dim=-1)
        return t[(F.normalize(f, dim=-1) @ t.T).argmax(-1)]

    def predicted(self, f: Tensor) -> Tensor | None:
        if self.class_text is None:
            return None
        t = F.normalize(self.class_text.to(f), dim=-1)
        return (F.normalize(f, dim=-1) @ t.T).argmax(-1)

    def maps(self, x: Tensor) -> tuple[dict[str, Tensor], Pass]:
        """Every method's per-patch map of preprocessed images [B, 3, S, S]: [B, T - 1]."""
        m = self.model
        L = m.info.n_layers
        p = forward(m, x, self.targets, need_grad=True)
        t = p.targets.to(m.dtype)
        masks = selection_masks(self.r.to(t), t, self.k, self.sizes)
        tr = p.trace
        with torch.no_grad():
            signed = sum((signed_map(m, tr, l, mk, t, self.head_maps)
                          for l, mk in zip(self.layers, masks, strict=True)),
                         torch.zeros(len(x), m.info.n_tokens - 1, dtype=t.dtype, device=t.device))
            rnd = [mk[None].expand(len(x), -1) for mk in self.random_masks]
            out = {
                "second_order": activation_map(tr, self.layers, masks),
                "second_order_signed": signed,
                "raw_attention": B.raw_attention(p, L),
                "rollout": B.rollout(p, L),
                "chefer": B.chefer(m, p),
                "textspan": B.textspan(m, p, self.textspan_layers),
                "gradcam": B.gradcam(m, p),
                "random_neurons": activation_map(tr, self.layers, rnd),
            }
        return out, p


def random_masks(sizes: Sequence[int], k: int, seed: int) -> list[Tensor]:
    """``k`` neurons drawn uniformly without replacement from all chosen layers' neurons:
    a 0/1 mask [N_l] per layer."""
    total = int(sum(sizes))
    idx = np.random.default_rng(seed).choice(total, min(k, total), replace=False)
    flat = torch.zeros(total, dtype=torch.float64)
    flat[torch.as_tensor(idx)] = 1.0
    return list(torch.split(flat, list(sizes)))


# --- inputs ---------------------------------------------------------------------------------
def _described(run: Run, layer: int) -> DescriptionsDoc | None:
    for path in sorted((run.path / DESCRIPTIONS_DIR).glob(f"*-layer-{layer:02d}.json")):
        try:
            doc = DescriptionsDoc.read(path)
        except InputError:
            continue
        if doc.run_id == run.run_id and doc.layer == layer:
            return doc
    return None


def _classifier(source: MaskedImages, classes_file: str | Path | None) -> ClassifierSpec:
    if classes_file is not None and not isinstance(source, FolderMasks | ShardMasks):
        return file_spec(classes_file)
    if isinstance(source, SynthMasks):
        return classifier_spec(source.images)
    if isinstance(source, MatMasks):
        return imagenet_spec()
    assert isinstance(source, FolderMasks | ShardMasks)
    if classes_file is not None:
        return (classifier_spec(source.images, classes_file) if source.images.labels
                else file_spec(classes_file))
    if source.images.labels is None:
        what = ("tar shards without .cls members" if isinstance(source, ShardMasks)
                else "an image folder without class sub-folders")
        raise InputError(f"cannot tell the classes of {what}: pass --classes FILE or "
                         "--query TEXT")
    return classifier_spec(source.images)


def _open_folder(out: Path, settings: SegmentSettings, restart: bool) -> dict[int, dict[str, Any]]:
    """Create ``RUN/segment`` or resume it: the finished parts of the same settings."""
    parts = out / "parts"
    resumed = open_results(out, FORMAT, VERSION, settings, restart=restart,
                           what="segmentation results",
                           stale=["parts/part-*.json", "overlays/*.png"])
    parts.mkdir(parents=True, exist_ok=True)
    if not resumed:
        return {}
    done: dict[int, dict[str, Any]] = {}
    for p in parts.glob("part-*.json"):
        try:
            d = json.loads(p.read_text())
            done[int(d["start"])] = d
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return done


def _load(source: MaskedImages, preprocess: Any, idx: list[int], size: int
          ) -> tuple[Tensor, list[np.ndarray], list[np.ndarray]]:
    """Preprocessed images [b, 3, S, S], original images [H, W, 3] and masks [H, W]."""
    batch = getattr(preprocess, "batch", None)
    if isinstance(source, SynthMasks) and batch is not None and source.images.size == size:
        imgs, masks = source.arrays(idx)
        return batch(imgs), list(imgs), list(masks)
    pil = [source.image(i) for i in idx]
    ms = [source.mask(i) for i in idx]
    for i, im, mk in zip(idx, pil, ms, strict=True):
        if mk.shape != (im.height, im.width):
            raise InputError(f"the mask of {source.ids[i]} is {mk.shape[1]}x{mk.shape[0]} "
                             f"pixels but the image is {im.width}x{im.height}")
    return torch.stack([preprocess(im) for im in pil]), [np.asarray(im) for im in pil], ms


# --- the run ----------------------------------------------------------------------------------
def segment_run(
    run: Run | str | Path,
    images: str | Path,
    *,
    masks: str | Path | None = None,
    query: str | None = None,
    model: Model | None = None,
    classes_file: str | Path | None = None,
    layers: Sequence[int] | None = None,
    k: int | None = None,
    random_k: int | None = None,
    textspan_layers: Sequence[int] | None = None,
    threshold: float = 0.5,
    n_overlays: int = 8,
    seed: int = 0,
    batch_size: int = 32,
    restart: bool = False,
    progress: bool = True,
    device: str = "cpu",
) -> SegmentResult:
    """Segment ``images`` (``synth:SPLIT:N[:SEED]``, a ``gtsegs_ijcv.mat`` file, a folder
    with ``masks``, or tar shards whose samples hold a ``KEY.mask.png`` member) with every
    method of ``METHODS`` and write ``RUN/segment/``.

    ``layers``: the run's blocks whose neurons the second-order maps use (default
    ``default_layers``; they need descriptions, ``solens describe``); ``k``: neurons per map
    (default ``default_k``); ``random_k``: neurons of the random baseline (default ``k``);
    ``textspan_layers``: blocks of the TextSpan baseline (default: the last third);
    ``threshold`` on the min-max normalised maps.
    """
    t0 = time.perf_counter()
    run = run if isinstance(run, Run) else Run.open(run)
    run.require_complete()
    source = open_masked(images, masks)
    name, n_layers = str(run.model.get("name")), int(run.model["n_layers"])
    layers = default_layers(name, n_layers) if not layers else [int(l) for l in layers]
    missing = [l for l in layers if l not in run.layers]
    if missing:
        raise InputError(f"run {run.path} has no layer {missing[0]} (it has {run.layers}); "
                         f"pass --layers from those")
    docs = {l: _described(run, l) for l in layers}
    undescribed = [l for l, d in docs.items() if d is None]
    if undescribed:
        raise InputError(f"run {run.path} has no descriptions of layer {undescribed[0]}: run "
                         f"`solens describe {run.path}` first")
    k = default_k(name) if k is None else int(k)
    random_k = k if random_k is None else int(random_k)
    if k < 1 or random_k < 1:
        raise InputError("--k and --random-k must be at least 1")
    model = run.load_model(device) if model is None else model
    if model.text is None:
        what = "--query" if query is not None else "zero-shot segmentation (the predicted class)"
        raise InputError(f"{what} needs a text tower, and model {model.info.name} has none")
    L = model.info.n_layers
    ts_layers = default_textspan_layers(L) if not textspan_layers else [
        int(l) for l in textspan_layers]
    if any(not 0 <= l < L for l in ts_layers):
        raise InputError(f"--textspan-layers must be blocks 0..{L - 1}")
    spec = None if query is not None else _classifier(source, classes_file)
    stats_k = {str(l): int(d.k) for l, d in docs.items() if d is not None}
    settings = SegmentSettings(
        run_id=run.run_id, images=source.describe(), layers=layers, stats_k=stats_k, k=k,
        random_k=random_k, textspan_layers=ts_layers, threshold=float(threshold), query=query,
        classifier=None if spec is None else spec.to_dict(), seed=int(seed),
        n_overlays=int(n_overlays))
    out = run.path / SEGMENT_DIR
    done = _open_folder(out, settings, restart)

    dt = torch.float32 if model.dtype in (torch.float16, torch.bfloat16) else model.dtype
    rs = [torch.as_tensor(np.array(stats_for(run, l, int(stats_k[str(l)])).r), dtype=dt)
          for l in layers]
    sizes = [len(r) for r in rs]
    w = model.weights
    seg = Segmenter(
        model=model, layers=layers, r=torch.cat(rs).to(model.device), sizes=sizes, k=k,
        random_masks=[m.to(model.device, dt) for m in random_masks(sizes, random_k, seed)],
        textspan_layers=ts_layers,
        head_maps={lp: head_ov(w, lp) for lp in range(min(layers) + 1, L)},
        class_text=None if spec is None else class_directions(model, spec),
        query=None if query is None else model.encode_text([query])[0].float().cpu())
    preprocess = default_preprocess(model)
    S = model.info.image_size
    n = len(source)
    starts = list(range(0, n, PART_SIZE))
    bar = tqdm(total=n, unit="img", desc="segment", disable=not progress)
    total = {m: Accumulator() for m in METHODS}
    for start in starts:
        stop = min(n, start + PART_SIZE)
        if start in done and int(done[start].get("stop", -1)) == stop:
            for m in METHODS:
                total[m] = total[m].merge(Accumulator.from_dict(done[start]["methods"][m]))
            bar.update(stop - start)
            continue
        part = {m: Accumulator() for m in METHODS}
        for i in range(start, stop, batch_size):
            idx = list(range(i, min(stop, i + batch_size)))
            x, originals, gts = _load(source, preprocess, idx, S)
            maps, _p = seg.maps(x)
            grids = {m: grid(v.float().cpu()) for m, v in maps.items()}
            for j, (im, gt) in enumerate(zip(originals, gts, strict=True)):
                geo = crop_geometry(preprocess, im.shape[1], im.shape[0], S)
                valid = geo.valid()
                soft_all = {}
                for m in METHODS:
                    soft = normalise(to_image(grids[m][j], geo))
                    part[m].add(soft[valid], gt[valid], threshold)
                    soft_all[m] = soft
                if idx[j] < n_overlays:
                    _overlay(out / "overlays" / f"{idx[j]:05d}.png", im, soft_all, gt,
                             source.ids[idx[j]], threshold)
            bar.update(len(idx))
        save_json_atomic(out / "parts" / f"part-{start:06d}.json",
                         {"start": start, "stop": stop,
                          "methods": {m: a.to_dict() for m, a in part.items()}})
        for m in METHODS:
            total[m] = total[m].merge(part[m])
    bar.close()
    result = SegmentResult(settings, total, time.perf_counter() - t0)
    write_outputs(out, result, source)
    return result


# --- outputs ----------------------------------------------------------------------------------
def _overlay(path: Path, image: np.ndarray, maps: dict[str, np.ndarray], mask: np.ndarray,
             title: str, threshold: float) -> None:
    """image | one heatmap per method (contour at the threshold) | mask, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(maps) + 2
    fig, axes = plt.subplots(1, n, figsize=(1.6 * n, 2.0))
    axes[0].imshow(image)
    axes[0].set_title("image", fontsize=6)
    for ax, (m, hm) in zip(axes[1:-1], maps.items(), strict=True):
        ax.imshow(image)
        ax.imshow(np.nan_to_num(hm, nan=0.0), cmap="jet", alpha=0.5, vmin=0, vmax=1)
        if np.isfinite(hm).any() and np.nanmax(hm) > threshold:
            ax.contour(np.nan_to_num(hm, nan=0.0), levels=[threshold], colors="w",
                       linewidths=0.6)
        ax.set_title(m, fontsize=6)
    axes[-1].imshow(mask, cmap="gray", vmin=0, vmax=1)
    axes[-1].set_title("mask", fontsize=6)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def _where(source: MaskedImages) -> dict[str, str]:
    if isinstance(source, SynthMasks):
        return {"split": source.images.split}
    d = source.describe()
    return {"images": str(d.get("root") or d.get("path") or d.get("spec"))}


def summary(result: SegmentResult, source: MaskedImages | None = None) -> dict[str, Any]:
    """``segment.json``'s content."""
    s = result.settings
    where = _where(source) if source is not None else {}
    return {"format": FORMAT, "version": VERSION, "settings": asdict(s),
            "n_images": result.n_images, **where, "methods": result.table(),
            "seconds": round(result.seconds, 3)}


def markdown(result: SegmentResult, source: MaskedImages | None = None) -> str:
    """The table of every method (percent)."""
    s = result.settings
    what = s.images.get("spec") or s.images.get("root") or s.images.get("path")
    target = f"the query {s.query!r}" if s.query is not None else "the predicted class"
    lines = [
        "# Zero-shot segmentation", "",
        f"{result.n_images} images ({what}); target: {target}; second-order maps from blocks "
        f"{s.layers}, top {s.k} neurons by |<r_n, text>|; random baseline: {s.random_k} "
        f"neurons of the same blocks (seed {s.seed}); TextSpan blocks {s.textspan_layers}; "
        f"threshold {s.threshold} on min-max normalised maps.", "",
        "| method | pixel acc. | mIoU | mAP |", "|---|---:|---:|---:|"]
    for m, r in result.table().items():
        lines.append(f"| {m} | {100 * r['pixel_acc']:.1f} | {100 * r['miou']:.1f} | "
                     f"{100 * r['map']:.1f} |")
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, result: SegmentResult, source: MaskedImages | None = None) -> None:
    """``segment.json`` and ``segment.md``."""
    save_json_atomic(out / "segment.json", summary(result, source))
    save_text_atomic(out / "segment.md", markdown(result, source))


# --- the demo's section ---------------------------------------------------------------------
DEMO_SEED = 12348
"""Seed of the scenes the demo segments (not the headline set's, the run's or ablate's)."""


def demo_section(run: Run, model: Model, n: int = 100, split: str = "balanced",
                 n_overlays: int = 4, progress: bool = False
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``solens segment`` on ``n`` scenes of ``split`` (seed ``DEMO_SEED``) with the
    defaults. Returns ``(section, detail)``: ``section`` = ``{"split", "n_images",
    "<method>": {"pixel_acc", "miou", "map"}, ...}`` (exactly these keys), ``detail`` =
    ``images`` (the spec), ``layers``, ``k`` and ``folder`` (relative to the demo folder)."""
    spec = f"synth:{split}:{n}:{DEMO_SEED}"
    res = segment_run(run, spec, model=model, n_overlays=n_overlays, restart=True,
                      progress=progress)
    section = {"split": split, "n_images": res.n_images, **res.table()}
    detail = {"images": spec, "layers": res.settings.layers, "k": res.settings.k,
              "folder": str(Path(run.path.name) / SEGMENT_DIR)}
    return section, detail


def report_lines(section: dict[str, Any] | None,
                 detail: dict[str, Any] | None = None) -> list[str]:
    """The demo report's part for ``solens segment`` (docs/segment.md explains it)."""
    if not section:
        return []
    section = {**section, **(detail or {})}
    lines = ["", "## Zero-shot segmentation (`solens segment`)", "",
             f"{section['n_images']} `{section['split']}` scenes (`{section.get('images')}`), "
             "exact masks of the primary object; target: the predicted class; second-order maps "
             f"from blocks {section.get('layers')}, top {section.get('k')} neurons. Percent; "
             "docs/segment.md compares the methods on 500 scenes per split and explains "
             "where the second-order maps fall short.", "",
             "| method | pixel acc. | mIoU | mAP |", "|---|---:|---:|---:|"]
    for m in METHODS:
        if m in section:
            r = section[m]
            lines.append(f"| {m} | {100 * r['pixel_acc']:.1f} | {100 * r['miou']:.1f} | "
                         f"{100 * r['map']:.1f} |")
    if section.get("folder"):
        lines += ["", f"![overlays]({section['folder']}/overlays/00000.png)"]
    return lines


__all__ = ["DEMO_SEED", "METHODS", "SegmentResult", "SegmentSettings", "Segmenter", "default_k",
           "default_layers", "default_textspan_layers", "demo_section", "report_lines",
           "segment_run", "summary"]
