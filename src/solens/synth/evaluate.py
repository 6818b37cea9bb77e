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


@torch.no_grad()
def frozen_forward(visual: Any, x: Tensor) -> dict[str, Any]:
    """Forward of an open_clip ``VisionTransformer`` recording what the closed-form ablation
    needs: per block l the residual stream entering the block ``resid[l]`` [B, T, D], the
    attention probabilities ``attn[l]`` [B, H, T, T], the MLP output without the c_proj bias
    ``mlp[l]`` [B, T, D]; the final residual ``final`` [B, T, D] and the embedding ``f`` [B, d]."""
    h = visual._embeds(x)
    resid, attn, mlp = [], [], []
    for r in visual.transformer.resblocks:
        resid.append(h)
        a_in = r.ln_1(h)
        a_out, probs = r.attn(a_in, a_in, a_in, need_weights=True, average_attn_weights=False)
        attn.append(probs)
        h = h + r.ls_1(a_out)
        m = r.mlp(r.ln_2(h))
        mlp.append(m - r.mlp.c_proj.bias)
        h = h + r.ls_2(m)
    pooled, _ = visual._pool(h)
    f = pooled @ visual.proj
    return {"resid": resid, "attn": attn, "mlp": mlp, "final": h, "f": f}


def _ln_frozen(ln: Any, c: Tensor, full: Tensor) -> Tensor:
    """gamma * C(c) / sigma(full): a frozen LayerNorm applied to one summand ``c`` of ``full``."""
    sigma = torch.sqrt(full.var(-1, unbiased=False, keepdim=True) + ln.eps)
    return ln.weight * (c - c.mean(-1, keepdim=True)) / sigma


def _ls(mod: Any, width: int, like: Tensor) -> Tensor:
    g = getattr(mod, "gamma", None)
    return g if g is not None else torch.ones(width, dtype=like.dtype, device=like.device)


@torch.no_grad()
def second_order_block_effects(visual: Any, x: Tensor) -> dict[str, Tensor]:
    """Per block l: ``second[l]`` [B, d], the second-order effect of block l's MLP on f(I)
    (sum over later blocks l' > l and heads h of A^{l',h}[0,t] W_O^h W_V^h LN1_{l'}(M_l[t]),
    summed over tokens t, through the frozen ln_post and proj; no biases); ``direct[l]``
    [B, d], the direct effect of block l's MLP output at the CLS token (no bias); and ``f``."""
    tr = frozen_forward(visual, x)
    blocks = list(visual.transformer.resblocks)
    L = len(blocks)
    final0 = tr["final"][:, 0]
    ln_post = visual.ln_post

    def to_embed(c: Tensor) -> Tensor:
        return _ln_frozen(ln_post, c, final0) @ visual.proj

    second, direct = [], []
    for l in range(L):
        M = tr["mlp"][l]  # [B, T, D]
        B, T, D = M.shape
        S = torch.zeros(B, D, dtype=M.dtype, device=M.device)
        for lp in range(l + 1, L):
            r = blocks[lp]
            H = r.attn.num_heads
            z = _ln_frozen(r.ln_1, M, tr["resid"][lp])  # [B, T, D]
            Wv = r.attn.in_proj_weight[2 * D : 3 * D]  # [D, D] (out, in)
            v = (z @ Wv.t()).view(B, T, H, D // H)
            a0 = tr["attn"][lp][:, :, 0, :]  # [B, H, T]
            mix = torch.einsum("bht,bthe->bhe", a0, v).reshape(B, D)
            S = S + (mix @ r.attn.out_proj.weight.t()) * _ls(r.ls_1, D, S)
        second.append(to_embed(S))
        direct.append(to_embed(M[:, 0] * _ls(blocks[l].ls_2, D, M)))
    return {"second": torch.stack(second, 1), "direct": torch.stack(direct, 1), "f": tr["f"]}


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
        return float(((F.normalize(ff, dim=-1) @ t.t()).argmax(1) == labels_t).float().mean())

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
            return float(((F.normalize(ff, dim=-1) @ dirs.t()).argmax(1) == truth).float().mean())

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
    "frozen_forward",
    "image_embeddings",
    "render_split",
    "second_order_block_effects",
    "zero_shot",
]
