"""Mean-ablation of whole layers' effects and zero-shot accuracy (METHOD §5.2).

Mean-ablating an effect replaces its per-image value in f(I) by its mean over a
reference set: ``f'(I) = f(I) - E(I) + mean_ref E``. For a block's *second-order*
effect, ``E_l(I)`` is the sum over its neurons of ``phi_n(I)``: the block's MLP output
(bias excluded) pushed through every later head's frozen OV path (``push_through_heads``).
For its *direct* effect, ``E_l(I)`` is the MLP output at CLS through the frozen ``ln_post``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from solens.lens.direct import push_through_heads
from solens.lens.frozen import to_embedding
from solens.models.model import Model
from solens.models.trace import Trace

KINDS = ("second_order", "direct")


def _mlp_summand(model: Model, trace: Trace, layer: int) -> Tensor:
    """Block ``layer``'s MLP output without its bias, at every token: [B, T, D]."""
    b = model.weights.blocks[layer]
    return trace[f"blocks.{layer}.hook_mlp_out"] - b.ls2_or_one() * b.b_out


def layer_effects(model: Model, trace: Trace, layers: Sequence[int], kind: str) -> Tensor:
    """Per-layer summed effects on f(I): [B, len(layers), d]."""
    if kind not in KINDS:
        raise ValueError(f"unknown effect kind {kind!r}; choose one of {KINDS}")
    L = model.info.n_layers
    out = []
    for l in layers:
        m = _mlp_summand(model, trace, l)
        if kind == "direct":
            inv = 1.0 / trace["ln_post.hook_scale"]
            out.append(to_embedding(model.weights, m[:, 0], inv))
        else:  # the last block has no later heads: zero
            e = m.new_zeros(m.shape[0], model.weights.proj.shape[-1])
            for lp in range(l + 1, L):
                e = e + push_through_heads(model, trace, m, lp).sum(1)
            out.append(e)
    return torch.stack(out, dim=1)


def _batches(x: Tensor, batch_size: int) -> Iterator[Tensor]:
    for i in range(0, len(x), batch_size):
        yield x[i : i + batch_size]


@torch.no_grad()
def collect_effects(
    model: Model, images: Tensor, layers: Sequence[int], kind: str, batch_size: int = 128
) -> tuple[Tensor, Tensor]:
    """f(I) [B, d] and per-layer effects [B, len(layers), d] over a tensor of images."""
    embs, effs = [], []
    for x in _batches(images, batch_size):
        tr = model.trace(x)
        embs.append(tr.embedding.float().cpu())
        effs.append(layer_effects(model, tr, layers, kind).float().cpu())
    return torch.cat(embs), torch.cat(effs)


def accuracy(embeddings: Tensor, labels: Tensor, class_text: Tensor) -> float:
    """Zero-shot top-1 of unnormalised embeddings [B, d] against class texts [C, d]."""
    logits = F.normalize(embeddings, dim=-1) @ F.normalize(class_text, dim=-1).T
    return float((logits.argmax(-1) == labels).float().mean())


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
) -> dict[str, object]:
    """Zero-shot accuracy after mean-ablating each layer's effects.

    ``images``/``reference`` [B, 3, S, S] (preprocessed), ``labels`` [B] class indices,
    ``class_text`` [C, d]. Returns ``{"baseline": acc, "<kind>": {layer: acc}}``.
    """
    layers = list(range(model.info.n_layers - 1)) if layers is None else list(layers)
    out: dict[str, object] = {}
    for kind in kinds:
        emb, eff = collect_effects(model, images, layers, kind, batch_size)
        _, ref = collect_effects(model, reference, layers, kind, batch_size)
        mean = ref.mean(0)  # [len(layers), d]
        out["baseline"] = accuracy(emb, labels, class_text)
        out[kind] = {
            l: accuracy(emb - eff[:, i] + mean[i], labels, class_text) for i, l in enumerate(layers)
        }
    return out
