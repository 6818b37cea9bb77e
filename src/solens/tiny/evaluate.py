"""Evaluation of solens-tiny (or any ``Model`` of the world's image size) on the synthetic
world: the figures of the model card and of ``solens synth eval``.

Metrics (all on splits/seeds never used in training; training samples only the ``train``
split):

* ``zero_shot``: top-1 over the 20 classes with prompts "a photo of a {class}" (canonical
  class words), on ``balanced`` (acceptance) and ``conflict`` (planted spurious contexts
  inverted) splits.
* ``colour_cls`` / ``background_cls``: image -> text classification of the primary object's
  colour among the 8 colours (resp. the scene background among the 8 backgrounds) with
  class-ensembled prompts (``solens.synth.captions.attribute_prompts``).
* ``colour_retrieval`` / ``background_retrieval``: text -> image top-1 over a gallery (the
  ``balanced`` images): for each of the 160 queries "a photo of a {c} {k}" (resp. "a photo of a
  {k} {phrase(b)}"), is the top-ranked image's colour (resp. background) the queried one.
* ``block_ablation``: per block l, zero-shot accuracy after mean-ablating the second-order
  (resp. direct) effect of block l's MLP (``solens.experiments.ablation``).

Accuracies and ablations come from ``solens.experiments``; images from
``solens.store.images`` (``SynthImages`` + ``pixels``), as everywhere else.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from solens.experiments.ablation import Effects, collect_effects, mean_ablation
from solens.experiments.attribution import margin_attribution
from solens.experiments.zeroshot import (
    accuracy,
    ensembled_directions,
    image_embeddings,
    text_directions,
)
from solens.models.model import Model
from solens.store.compute import default_preprocess
from solens.store.images import SynthImages, class_indices, pixels
from solens.synth.captions import attribute_prompts, class_prompts
from solens.synth.world import CLASSES


def world_split(
    model: Model, split: str, n: int, seed: int
) -> tuple[Tensor, Tensor, list[dict[str, Any]]]:
    """Scenes ``0..n-1`` of ``(split, seed)`` at the model's image size: preprocessed
    images [n, 3, S, S], class indices [n] (``CLASSES`` order) and the scene specs."""
    source = SynthImages(split, n, seed, model.info.image_size)
    x = pixels(source, default_preprocess(model))
    return x, class_indices(source, CLASSES), [source.spec(i) for i in range(n)]


def _scene_attr(spec: dict[str, Any], kind: str) -> str:
    return spec["objects"][0]["colour"] if kind == "colour" else spec["background"]["name"]


@torch.no_grad()
def attribute_metrics(
    model: Model, feats: Tensor, specs: list[dict[str, Any]], kind: str
) -> dict[str, float]:
    """Image->text classification and text->image top-1 retrieval of ``kind`` (colour or
    background) for images with embeddings ``feats`` [n, d] and scene ``specs``."""
    values, groups = attribute_prompts(kind)
    truth = torch.tensor([values.index(_scene_attr(s, kind)) for s in specs])
    cls_acc = accuracy(feats, truth, ensembled_directions(model, groups))
    # retrieval: one query per (value, class)
    q = F.normalize(text_directions(model, [t for g in groups for t in g]), dim=-1)
    q_val = torch.arange(len(values)).repeat_interleave(len(CLASSES))
    top = (q @ F.normalize(feats, dim=-1).t()).argmax(1)
    ret = float((truth[top] == q_val).float().mean())
    return {f"{kind}_cls": cls_acc, f"{kind}_retrieval": ret}


def attribute_ablation(
    model: Model, effects: Effects, reference: Effects, specs: list[dict[str, Any]], kind: str
) -> dict[str, Any]:
    """Per block, colour and background classification (``attribute_metrics``' ensembled
    prompts) with the block's ``kind`` effect mean-ablated."""
    out: dict[str, Any] = {"kind": "second" if kind == "second_order" else kind}
    for attr in ("colour", "background"):
        values, groups = attribute_prompts(attr)
        truth = torch.tensor([values.index(_scene_attr(s, attr)) for s in specs])
        ab = mean_ablation(effects, reference, truth, ensembled_directions(model, groups), kind)
        out[attr] = {"baseline": ab.baseline, "blocks": ab.by_layer(),
                     "drop": dict(zip(ab.layers, ab.drop, strict=True))}
    return out


@torch.no_grad()
def evaluate(
    model: Model,
    n: int = 2000,
    seed: int = 12345,
    ablation_n: int = 1000,
) -> dict[str, Any]:
    """Every metric of the model card. ``seed`` is a ``balanced``/``conflict`` split seed never
    used in training. Block ablations use the first ``ablation_n`` images, with the means of
    ``ablation_n`` other images (seed + 1) as the reference."""
    x, labels, specs = world_split(model, "balanced", n, seed)
    classes = text_directions(model, class_prompts())
    feats = image_embeddings(model, x)
    res: dict[str, Any] = {"n": n, "seed": seed}
    res["zero_shot_balanced"] = accuracy(feats, labels, classes)
    xc, lc, _ = world_split(model, "conflict", n, seed)
    res["zero_shot_conflict"] = accuracy(image_embeddings(model, xc), lc, classes)
    res["conflict_drop"] = res["zero_shot_balanced"] - res["zero_shot_conflict"]
    res.update(attribute_metrics(model, feats, specs, "colour"))
    res.update(attribute_metrics(model, feats, specs, "background"))
    xa, la = x[:ablation_n], labels[:ablation_n]
    xr, _, _ = world_split(model, "balanced", ablation_n, seed + 1)
    blocks = list(range(model.info.n_layers))
    eff, ref = collect_effects(model, xa, blocks), collect_effects(model, xr, blocks)
    for kind, key in (("second_order", "second"), ("direct", "direct")):
        ab = mean_ablation(eff, ref, la, classes, kind).to_dict()
        res[f"block_ablation_{kind}"] = {**ab, "kind": key}
    res["margin_attribution"] = margin_attribution(model, xa, la, classes)
    res["block_ablation_attributes_second_order"] = attribute_ablation(
        model, eff, ref, specs[:ablation_n], "second_order"
    )
    return res


__all__ = ["attribute_ablation", "attribute_metrics", "evaluate", "world_split"]
