"""Evaluation of solens-tiny (or any model with ``.visual`` + ``.encode_text``) on the
synthetic world.

Metrics (all on splits/seeds never used in training; training uses ``train`` split seeds):

* ``zero_shot``: top-1 over the 20 classes with prompts "a photo of a {class}" (canonical
  class words), on ``balanced`` (acceptance) and ``conflict`` (planted spurious contexts
  inverted) splits.
* ``colour_cls`` / ``background_cls``: image -> text classification of the primary object's
  colour among the 8 colours (resp. the scene background among the 8 backgrounds) with
  class-ensembled prompts: the text direction of colour c is the normalised mean over the 20
  classes k of the normalised embeddings of "a photo of a {c} {k}" (background b: "a photo of a
  {k} {phrase(b)}", phrase(b) = the first background phrase of ``solens.synth.captions``).
* ``colour_retrieval`` / ``background_retrieval``: text -> image top-1 over a gallery (the
  ``balanced`` images): for each of the 160 queries "a photo of a {c} {k}" (resp. "a photo of a
  {k} {phrase(b)}"), is the top-ranked image's colour (resp. background) the queried one.
* ``block_ablation``: per block l, zero-shot accuracy after mean-ablating the *second-order*
  effect of block l's MLP (through every later head's OV path into the CLS output, attention
  and LayerNorm scales frozen; see METHOD.md section 2-3 and ``second_order_block_effects``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from solens.experiments.ablation import accuracy

# ------------------------------------------------------------------------------ preparation


def _article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def class_prompts(classes: Sequence[str] | None = None) -> list[str]:
    """ "a photo of a {class}" for the canonical class words (label order)."""
    from solens.synth.world import CLASSES, concept

    classes = list(classes or CLASSES)
    return [f"a photo of {_article(concept('class', c).word)}" for c in classes]


def to_tensor(model: Any, images: Any) -> Tensor:
    """uint8 [B, S, S, 3] array / list of PIL images / float tensor -> model input [B, 3, S, S]."""
    if isinstance(images, Tensor) and images.dtype.is_floating_point:
        return images
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        from solens.models.tiny import TinyConfig, read_meta

        cfg = TinyConfig.from_dict(read_meta()["config"])
    from solens.models.tiny import images_to_tensor

    return images_to_tensor(images, cfg)


def _device(model: Any) -> torch.device:
    return model.visual.proj.device


@torch.no_grad()
def image_embeddings(model: Any, images: Any, batch_size: int = 256) -> Tensor:
    """Normalised f(I) [B, d] (float32, CPU)."""
    x = to_tensor(model, images)
    out = []
    for i in range(0, len(x), batch_size):
        out.append(model.visual(x[i : i + batch_size].to(_device(model))).float().cpu())
    return F.normalize(torch.cat(out), dim=-1)


@torch.no_grad()
def text_embeddings(model: Any, texts: Sequence[str]) -> Tensor:
    return F.normalize(model.encode_text(list(texts)).float().cpu(), dim=-1)


@torch.no_grad()
def ensembled_text(model: Any, groups: Sequence[Sequence[str]]) -> Tensor:
    """One direction per group of prompts: normalised mean of normalised embeddings."""
    flat = [t for g in groups for t in g]
    e = text_embeddings(model, flat)
    out, i = [], 0
    for g in groups:
        out.append(F.normalize(e[i : i + len(g)].mean(0), dim=-1))
        i += len(g)
    return torch.stack(out)


# ------------------------------------------------------------------------------ metrics


def _attr_prompts(kind: str) -> tuple[list[str], list[list[str]]]:
    from solens.synth.captions import BACKGROUND_PHRASES
    from solens.synth.world import BACKGROUNDS, CLASSES, COLOURS, concept

    cls_words = [concept("class", c).word for c in CLASSES]
    if kind == "colour":
        vals = list(COLOURS)
        groups = [
            [f"a photo of {_article(concept('colour', v).word + ' ' + k)}" for k in cls_words]
            for v in vals
        ]
    elif kind == "background":
        vals = list(BACKGROUNDS)
        groups = [
            [f"a photo of {_article(k)} {BACKGROUND_PHRASES[v][0]}" for k in cls_words]
            for v in vals
        ]
    else:
        raise ValueError(kind)
    return vals, groups


def _scene_attr(spec: dict[str, Any], kind: str) -> str:
    return spec["objects"][0]["colour"] if kind == "colour" else spec["background"]["name"]


def render_split(split: str, n: int, seed: int, size: int = 64):
    """(uint8 images [n, S, S, 3], labels [n], specs) of ``split``/``seed``."""
    from solens.synth import iter_batches

    b = next(iter_batches(n, split, seed, size, n_batches=1))
    return b.images, np.asarray(b.labels), b.specs


@torch.no_grad()
def zero_shot(model: Any, images: Any, labels: Any, feats: Tensor | None = None) -> float:
    f = image_embeddings(model, images) if feats is None else feats
    t = text_embeddings(model, class_prompts())
    pred = (f @ t.t()).argmax(1)
    return float((pred == torch.as_tensor(np.asarray(labels))).float().mean())


@torch.no_grad()
def attribute_metrics(model: Any, feats: Tensor, specs: list[dict[str, Any]], kind: str) -> dict:
    """Image->text classification and text->image top-1 retrieval for ``kind``."""
    from solens.synth.world import CLASSES

    vals, groups = _attr_prompts(kind)
    truth = torch.tensor([vals.index(_scene_attr(s, kind)) for s in specs])
    dirs = ensembled_text(model, groups)
    cls_acc = float(((feats @ dirs.t()).argmax(1) == truth).float().mean())
    # retrieval: one query per (value, class)
    q = text_embeddings(model, [t for g in groups for t in g])  # [V*K, d]
    q_val = torch.arange(len(vals)).repeat_interleave(len(CLASSES))
    top = (q @ feats.t()).argmax(1)
    ret = float((truth[top] == q_val).float().mean())
    return {f"{kind}_cls": cls_acc, f"{kind}_retrieval": ret}


# ----------------------------------------------------------------- second-order block effects


def lens_model(visual: Any) -> Any:
    """A solens ``Model`` view of a vision tower (for the lens' traced forward)."""
    from solens.models.model import Model, describe_visual

    return Model(visual, None, None, describe_visual(visual, name="solens-tiny", pretrained=None))


@torch.no_grad()
def second_order_block_effects(visual: Any, x: Tensor) -> dict[str, Tensor]:
    """Per block l: ``second`` [B, L, d], the second-order effect of block l's MLP on f(I)
    (through every later head's frozen OV path, ``solens.experiments.ablation``; zero for the
    last block); ``direct`` [B, L, d], its MLP output at CLS through the frozen ``ln_post``
    (no bias); and ``f`` [B, d]."""
    from solens.experiments.ablation import layer_effects

    model = lens_model(visual)
    tr = model.trace(x)
    L = model.info.n_layers
    second = layer_effects(model, tr, range(L), "second_order")  # last block: zeros
    direct = layer_effects(model, tr, range(L), "direct")
    return {"second": second, "direct": direct, "f": tr.embedding}


@torch.no_grad()
def _effects(model: Any, images: Any, batch_size: int = 128) -> dict[str, Tensor]:
    x = to_tensor(model, images)
    parts: dict[str, list[Tensor]] = {"second": [], "direct": [], "f": []}
    for i in range(0, len(x), batch_size):
        e = second_order_block_effects(model.visual, x[i : i + batch_size].to(_device(model)))
        for k in parts:
            parts[k].append(e[k].float().cpu())
    return {k: torch.cat(v) for k, v in parts.items()}


@torch.no_grad()
def block_ablation(
    model: Any,
    images: Any,
    labels: Any | None = None,
    reference: Any | None = None,
    kind: str = "second",
    _effects_cache: dict | None = None,
) -> dict[str, Any]:
    """Zero-shot accuracy after mean-ablating one block's second-order (``kind="second"``) or
    direct (``"direct"``) MLP effect: f'(I) = f(I) - e_l(I) + mean_ref e_l.

    ``images``: scenes (list of ``Scene``) or uint8 arrays with ``labels``; ``reference``: the
    images whose mean effect replaces it (default: ``images`` themselves).
    Returns ``{"baseline": acc, "blocks": {l: acc}, "drop": {l: baseline - acc},
    "rel_norm": {l: mean ||e_l - mean|| / ||f||}}``."""
    if labels is None:  # list of Scene
        labels = [s.label_index for s in images]
        images = np.stack([s.array for s in images])
    labels_t = torch.as_tensor(np.asarray(labels))
    cache = _effects_cache if _effects_cache is not None else {}
    if "eff" not in cache:
        cache["eff"] = _effects(model, images)
        cache["ref"] = cache["eff"] if reference is None else _effects(model, reference)
    eff, ref = cache["eff"], cache["ref"]
    t = text_embeddings(model, class_prompts())
    f = eff["f"]

    def acc(ff: Tensor) -> float:
        return accuracy(ff, labels_t, t)

    base = acc(f)
    out: dict[str, Any] = {"baseline": base, "kind": kind, "blocks": {}, "drop": {}, "rel_norm": {}}
    E, Eref = eff[kind], ref[kind]
    for l in range(E.shape[1]):
        mean = Eref[:, l].mean(0)
        a = acc(f - E[:, l] + mean)
        out["blocks"][l] = a
        out["drop"][l] = base - a
        out["rel_norm"][l] = float(((E[:, l] - mean).norm(dim=-1) / f.norm(dim=-1)).mean())
    # every block at once
    out["all_blocks"] = acc(f - E.sum(1) + Eref.sum(1).mean(0))
    return out


@torch.no_grad()
def block_ablation_attributes(
    model: Any,
    specs: list[dict[str, Any]],
    images: Any,
    reference: Any | None = None,
    kind: str = "second",
    _effects_cache: dict | None = None,
) -> dict[str, Any]:
    """Like ``block_ablation`` but scoring colour and background classification (the
    class-ensembled 8-way prompts of ``attribute_metrics``) instead of the class."""
    cache = _effects_cache if _effects_cache is not None else {}
    if "eff" not in cache:
        cache["eff"] = _effects(model, images)
        cache["ref"] = cache["eff"] if reference is None else _effects(model, reference)
    eff, ref = cache["eff"], cache["ref"]
    f = eff["f"]
    out: dict[str, Any] = {"kind": kind}
    for attr in ("colour", "background"):
        vals, groups = _attr_prompts(attr)
        dirs = ensembled_text(model, groups)
        truth = torch.tensor([vals.index(_scene_attr(s, attr)) for s in specs])

        def acc(ff: Tensor, dirs=dirs, truth=truth) -> float:
            return accuracy(ff, truth, dirs)

        base = acc(f)
        blocks = {}
        for l in range(eff[kind].shape[1]):
            blocks[l] = acc(f - eff[kind][:, l] + ref[kind][:, l].mean(0))
        out[attr] = {
            "baseline": base,
            "blocks": blocks,
            "drop": {l: base - a for l, a in blocks.items()},
        }
    return out


@torch.no_grad()
def margin_attribution_split(model: Any, images: Any, labels: Any) -> dict[str, float]:
    """``solens.experiments.attribution.margin_attribution`` of the class prompts' zero-shot
    margin (which paths carry the class evidence)."""
    from solens.experiments.attribution import margin_attribution

    x = to_tensor(model, images).to(_device(model))
    t = model.encode_text(class_prompts()).float()
    y = torch.as_tensor(np.asarray(labels))
    return margin_attribution(lens_model(model.visual), x, y, t.to(x.device))


# -------------------------------------------------------------------------------- all of it


@torch.no_grad()
def evaluate(
    model: Any,
    n: int = 2000,
    seed: int = 12345,
    size: int = 64,
    ablation_n: int = 1000,
) -> dict[str, Any]:
    """Every metric of the model card. ``seed`` is a ``balanced``/``conflict`` split seed never
    used in training (training only samples the ``train`` split)."""
    imgs, labels, specs = render_split("balanced", n, seed, size)
    feats = image_embeddings(model, imgs)
    res: dict[str, Any] = {"n": n, "seed": seed}
    res["zero_shot_balanced"] = zero_shot(model, imgs, labels, feats)
    cimgs, clabels, _ = render_split("conflict", n, seed, size)
    res["zero_shot_conflict"] = zero_shot(model, cimgs, clabels)
    res["conflict_drop"] = res["zero_shot_balanced"] - res["zero_shot_conflict"]
    res.update(attribute_metrics(model, feats, specs, "colour"))
    res.update(attribute_metrics(model, feats, specs, "background"))
    ai, al = imgs[:ablation_n], labels[:ablation_n]
    ref_imgs, _, _ = render_split("balanced", ablation_n, seed + 1, size)
    cache: dict = {}
    res["block_ablation_second_order"] = block_ablation(model, ai, al, ref_imgs, "second", cache)
    res["block_ablation_direct"] = block_ablation(model, ai, al, ref_imgs, "direct", cache)
    res["margin_attribution"] = margin_attribution_split(model, ai, al)
    ai_specs = specs[:ablation_n]
    res["block_ablation_attributes_second_order"] = block_ablation_attributes(
        model, ai_specs, ai, ref_imgs, "second", cache
    )
    return res


__all__ = [
    "attribute_metrics",
    "block_ablation",
    "block_ablation_attributes",
    "class_prompts",
    "evaluate",
    "image_embeddings",
    "lens_model",
    "margin_attribution_split",
    "render_split",
    "second_order_block_effects",
    "zero_shot",
]
