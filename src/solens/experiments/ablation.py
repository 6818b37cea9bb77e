"""Mean-ablation of whole layers' effects and zero-shot accuracy (METHOD §5.2).

Mean-ablating an effect replaces its per-image value in f(I) by its mean over a
reference set: ``f'(I) = f(I) - E(I) + mean_ref E``. For a block's *second-order*
effect, ``E_l(I)`` is the sum over its neurons of ``phi_n(I)``: the block's MLP output
(bias excluded) pushed through every later head's frozen OV path (``push_through_heads``).
For its *direct* effect, ``E_l(I)`` is the MLP output at CLS through the frozen ``ln_post``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from solens.errors import InputError
from solens.experiments.zeroshot import accuracy
from solens.lens.direct import push_through_heads
from solens.lens.frozen import to_embedding
from solens.models.model import Model
from solens.models.trace import Trace

KINDS = ("second_order", "direct")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise InputError(f"unknown effect kind {kind!r}; choose one of {', '.join(KINDS)}")


def _mlp_summand(model: Model, trace: Trace, layer: int) -> Tensor:
    """Block ``layer``'s MLP output without its bias, at every token: [B, T, D]."""
    b = model.weights.blocks[layer]
    return trace[f"blocks.{layer}.hook_mlp_out"] - b.ls2_or_one() * b.b_out


def layer_effects(model: Model, trace: Trace, layers: Sequence[int], kind: str) -> Tensor:
    """Per-layer summed effects on f(I) of the traced images: [B, len(layers), d] (the
    second-order effect of the last block is zero: no later heads)."""
    _check_kind(kind)
    L = model.info.n_layers
    out = []
    for l in layers:
        m = _mlp_summand(model, trace, l)
        if kind == "direct":
            inv = 1.0 / trace["ln_post.hook_scale"]
            out.append(to_embedding(model.weights, m[:, 0], inv))
        else:
            e = m.new_zeros(m.shape[0], model.weights.proj.shape[-1])
            for lp in range(l + 1, L):
                e = e + push_through_heads(model, trace, m, lp).sum(1)
            out.append(e)
    return torch.stack(out, dim=1)


@dataclass
class Effects:
    """Effects of ``layers`` on a set of images: ``embeddings`` f(I) [B, d] and, per kind,
    the per-layer summed effects [B, len(layers), d] (float32, CPU)."""

    layers: list[int]
    embeddings: Tensor
    by_kind: dict[str, Tensor]

    def __getitem__(self, kind: str) -> Tensor:
        return self.by_kind[kind]


@torch.no_grad()
def collect_effects(
    model: Model,
    images: Tensor,
    layers: Sequence[int],
    kinds: Sequence[str] = KINDS,
    batch_size: int = 128,
) -> Effects:
    """One traced forward per batch of preprocessed ``images`` [B, 3, S, S]; every kind's
    per-layer effects from it."""
    for kind in kinds:
        _check_kind(kind)
    embs: list[Tensor] = []
    effs: dict[str, list[Tensor]] = {k: [] for k in kinds}
    for i in range(0, len(images), batch_size):
        tr = model.trace(images[i : i + batch_size])
        embs.append(tr.embedding.float().cpu())
        for k in kinds:
            effs[k].append(layer_effects(model, tr, layers, k).float().cpu())
    return Effects(list(layers), torch.cat(embs), {k: torch.cat(v) for k, v in effs.items()})


@dataclass
class Ablation:
    """Zero-shot accuracy with one kind of effect mean-ablated, layer by layer
    (``accuracy[i]`` for ``layers[i]``) and for all ``layers`` at once; ``rel_norm[i]``:
    mean over images of ||E_l(I) - mean_ref E_l|| / ||f(I)||."""

    kind: str
    layers: list[int]
    baseline: float
    accuracy: list[float]
    all_layers: float
    rel_norm: list[float]

    @property
    def drop(self) -> list[float]:
        """baseline - accuracy, per layer."""
        return [self.baseline - a for a in self.accuracy]

    def by_layer(self) -> dict[int, float]:
        return dict(zip(self.layers, self.accuracy, strict=True))

    def to_dict(self) -> dict[str, Any]:
        """``{"baseline", "kind", "blocks": {l: acc}, "drop", "rel_norm", "all_blocks"}``."""
        return {
            "baseline": self.baseline,
            "kind": self.kind,
            "blocks": self.by_layer(),
            "drop": dict(zip(self.layers, self.drop, strict=True)),
            "rel_norm": dict(zip(self.layers, self.rel_norm, strict=True)),
            "all_blocks": self.all_layers,
        }


def mean_ablation(
    effects: Effects, reference: Effects, labels: Tensor, class_text: Tensor, kind: str
) -> Ablation:
    """Accuracy of f(I) - E_l(I) + mean_ref E_l for every layer l of ``effects`` (and of
    all layers at once), with ``labels`` [B] against ``class_text`` [C, d]."""
    if reference.layers != effects.layers:
        raise ValueError(f"reference layers {reference.layers} != {effects.layers}")
    f, E, R = effects.embeddings, effects[kind], reference[kind]
    mean = R.mean(0)  # [len(layers), d]
    acc = [accuracy(f - E[:, i] + mean[i], labels, class_text) for i in range(E.shape[1])]
    rel = [float(((E[:, i] - mean[i]).norm(dim=-1) / f.norm(dim=-1)).mean())
           for i in range(E.shape[1])]
    all_layers = accuracy(f - E.sum(1) + R.sum(1).mean(0), labels, class_text)
    return Ablation(kind, list(effects.layers), accuracy(f, labels, class_text), acc,
                    all_layers, rel)


@torch.no_grad()
def block_ablation(
    model: Model,
    images: Tensor,
    labels: Tensor,
    reference: Tensor,
    class_text: Tensor,
    *,
    layers: Sequence[int] | None = None,
    kinds: Sequence[str] = KINDS,
    batch_size: int = 128,
) -> dict[str, Ablation]:
    """Zero-shot accuracy after mean-ablating each layer's effects, per kind.

    ``images``/``reference`` [B, 3, S, S] (preprocessed), ``labels`` [B] class indices,
    ``class_text`` [C, d]; ``layers`` default to every block with a later block.
    """
    layers = list(range(model.info.n_layers - 1)) if layers is None else list(layers)
    eff = collect_effects(model, images, layers, kinds, batch_size)
    ref = collect_effects(model, reference, layers, kinds, batch_size)
    return {k: mean_ablation(eff, ref, labels, class_text, k) for k in kinds}


__all__ = ["KINDS", "Ablation", "Effects", "block_ablation", "collect_effects",
           "layer_effects", "mean_ablation"]
