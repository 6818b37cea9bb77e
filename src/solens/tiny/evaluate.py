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
  (resp. direct) effect of block l's MLP (``solens.experiments.ablation``), on the same
  ``balanced`` scenes, with means from as many other scenes (seed + 1).

``headline`` computes the zero-shot accuracies and the block ablations of an ``EvalSet``;
``evaluate`` adds the other metrics. The bundled model's headline set is ``HEADLINE``
(2,000 scenes per split, seed 12345; means from 2,000 scenes, seed 12346): the model card,
``solens synth eval`` and ``solens demo`` quote its figures.

Accuracies and ablations come from ``solens.experiments``; images from
``solens.store.images`` (``SynthImages`` + ``pixels``), as everywhere else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from solens.experiments.ablation import KINDS, Ablation, Effects, collect_effects, mean_ablation
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


@dataclass(frozen=True)
class EvalSet:
    """The held-out scenes of an evaluation: ``n`` scenes of the ``balanced`` and of the
    ``conflict`` split at ``seed`` (never used in training: training samples only the
    ``train`` split); block ablations mean-ablate on the same ``n`` balanced scenes, with means
    from ``n`` other balanced scenes at ``seed + 1``."""

    n: int = 2000
    seed: int = 12345

    @property
    def reference_seed(self) -> int:
        return self.seed + 1

    def to_dict(self) -> dict[str, Any]:
        return {"splits": ["balanced", "conflict"], "n": self.n, "seed": self.seed,
                "ablation": {"scenes": "the same balanced scenes", "reference_split": "balanced",
                             "reference_n": self.n, "reference_seed": self.reference_seed}}

    def describe(self) -> str:
        """One line for reports: which scenes and how many."""
        return (f"{self.n:,} held-out `balanced` and {self.n:,} `conflict` scenes (seed "
                f"{self.seed}); block ablations on the same {self.n:,} balanced scenes, means "
                f"from {self.n:,} other balanced scenes (seed {self.reference_seed})")


HEADLINE = EvalSet()
"""The bundled model's headline evaluation set: the model card, ``solens synth eval`` and
``solens demo`` quote figures of these scenes (``headline``)."""


@dataclass
class Headline:
    """Zero-shot accuracy and block ablations of one ``EvalSet`` (``headline``).

    ``zero_shot``: top-1 on ``balanced`` and ``conflict``; ``ablation``: per kind
    (``second_order``, ``direct``) the ``Ablation`` of every block, whose ``baseline`` is the
    balanced top-1 (same scenes, same forward). ``labels``, ``specs``, ``effects`` and
    ``reference`` hold the balanced scenes' data (``images`` preprocessed), for further
    metrics."""

    eval_set: EvalSet
    zero_shot: dict[str, float]
    ablation: dict[str, Ablation]
    images: Tensor
    labels: Tensor
    specs: list[dict[str, Any]]
    effects: Effects
    reference: Effects

    @property
    def embeddings(self) -> Tensor:
        """f(I) of the balanced scenes [n, d]."""
        return self.effects.embeddings

    def largest_drop(self, kind: str = "second_order") -> tuple[int, float]:
        """The block whose mean-ablation costs the most accuracy, and the drop (fraction)."""
        ab = self.ablation[kind]
        i = max(range(len(ab.layers)), key=lambda j: (ab.drop[j], -ab.layers[j]))
        return ab.layers[i], ab.drop[i]


@torch.no_grad()
def headline(
    model: Model, eval_set: EvalSet = HEADLINE, layers: Sequence[int] | None = None
) -> Headline:
    """Zero-shot top-1 on ``eval_set``'s ``balanced`` and ``conflict`` scenes, and per-block
    mean-ablation (``solens.experiments.ablation``, both kinds) of ``layers`` (default every
    block) on the same balanced scenes. The balanced top-1 is computed from the traced
    forward the ablations use, so it *is* their "no ablation" baseline. Used by ``evaluate``
    (model card, ``solens synth eval``) and by ``solens demo``."""
    n, seed = eval_set.n, eval_set.seed
    layers = list(range(model.info.n_layers)) if layers is None else list(layers)
    classes = text_directions(model, class_prompts())
    x, labels, specs = world_split(model, "balanced", n, seed)
    eff = collect_effects(model, x, layers)
    xr, _, _ = world_split(model, "balanced", n, eval_set.reference_seed)
    ref = collect_effects(model, xr, layers)
    del xr
    ablation = {kind: mean_ablation(eff, ref, labels, classes, kind) for kind in KINDS}
    xc, lc, _ = world_split(model, "conflict", n, seed)
    zero_shot = {"balanced": accuracy(eff.embeddings, labels, classes),
                 "conflict": accuracy(image_embeddings(model, xc), lc, classes)}
    return Headline(eval_set, zero_shot, ablation, x, labels, specs, eff, ref)


@torch.no_grad()
def evaluate(model: Model, n: int = HEADLINE.n, seed: int = HEADLINE.seed) -> dict[str, Any]:
    """Every metric of the model card, on ``EvalSet(n, seed)`` (``seed``: a
    ``balanced``/``conflict`` split seed never used in training). Zero-shot accuracy and
    block ablations come from ``headline``: the ablations run on the same ``n`` balanced
    scenes, with the means of ``n`` other scenes (seed + 1) as the reference."""
    h = headline(model, EvalSet(n, seed))
    classes = text_directions(model, class_prompts())
    res: dict[str, Any] = {"n": n, "seed": seed, "eval_set": h.eval_set.to_dict()}
    res["zero_shot_balanced"] = h.zero_shot["balanced"]
    res["zero_shot_conflict"] = h.zero_shot["conflict"]
    res["conflict_drop"] = res["zero_shot_balanced"] - res["zero_shot_conflict"]
    res.update(attribute_metrics(model, h.embeddings, h.specs, "colour"))
    res.update(attribute_metrics(model, h.embeddings, h.specs, "background"))
    for kind, key in (("second_order", "second"), ("direct", "direct")):
        res[f"block_ablation_{kind}"] = {**h.ablation[kind].to_dict(), "kind": key}
    res["margin_attribution"] = margin_attribution(model, h.images, h.labels, classes)
    res["block_ablation_attributes_second_order"] = attribute_ablation(
        model, h.effects, h.reference, h.specs, "second_order"
    )
    return res


__all__ = ["HEADLINE", "EvalSet", "Headline", "attribute_ablation", "attribute_metrics",
           "evaluate", "headline", "world_split"]
