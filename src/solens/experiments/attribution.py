"""Where the zero-shot evidence comes from: an exact split of the class margin by path.

For an image with label ``y`` and normalised class texts ``t_c`` [C, d], the *margin* is
``m = <f / ||f||, t_y - mean_c t_c>``. Since ``f`` is the sum of its first-order summands
(``solens.lens.direct.direct_contributions``), ``m`` splits exactly into one share per
summand: the embedding, each block's heads and MLP (at CLS), the biases. Each block's heads'
share splits further by what the heads read (``head_decomposition``): the embedding, earlier
attention, and earlier MLPs, i.e. second-order paths. Summing the latter over reading heads
gives, for each block, the share its MLP carries through later heads: the quantity whose
mean-ablation ``solens.experiments.ablation`` measures.
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import Tensor

from solens.lens.direct import direct_contributions, head_decomposition
from solens.models.model import Model


def _shares(parts: dict[str, Tensor], w: Tensor) -> dict[str, Tensor]:
    """Summands [B, ..., d] -> their margins [B] (heads/neurons summed)."""
    out = {}
    for k, v in parts.items():
        v = v.reshape(v.shape[0], -1, v.shape[-1]).sum(1)
        out[k] = (v * w).sum(-1)
    return out


@torch.no_grad()
def margin_attribution(
    model: Model, images: Tensor, labels: Tensor, class_text: Tensor, batch_size: int = 128
) -> dict[str, float]:
    """Mean share of the zero-shot margin per path, over ``images`` [B, 3, S, S].

    ``labels`` [B] index ``class_text`` [C, d]. Keys: ``margin`` (the total); direct paths
    ``embed``, ``ln_post.bias``, ``blocks.{l}.attn`` (heads + output bias), ``blocks.{l}.mlp``
    (neurons + bias, at CLS); ``read.{l}.{src}``: block ``l``'s attention share split by what
    its heads read (``src`` = ``embed``, ``attn``, ``mlp``, ``bias``: every bias on the way);
    and ``second_order.{l}``: block ``l``'s MLP (neurons, at every token) through every later
    head. Direct keys sum to ``margin``; ``read.{l}.*`` sum to ``blocks.{l}.attn``.
    """
    t = F.normalize(class_text.to(images.dtype), dim=-1)
    L = model.info.n_layers
    sums: dict[str, float] = defaultdict(float)
    n = 0
    for i in range(0, len(images), batch_size):
        x, y = images[i : i + batch_size], labels[i : i + batch_size]
        tr = model.trace(x)
        f = tr.embedding
        w = (t[y] - t.mean(0)) / f.norm(dim=-1, keepdim=True)  # [b, d]
        acc: dict[str, Tensor] = {"margin": (f * w).sum(-1)}
        direct = _shares(direct_contributions(model, tr), w)
        acc["embed"], acc["ln_post.bias"] = direct["embed"], direct["ln_post.bias"]
        for l in range(L):
            b = f"blocks.{l}"
            acc[f"{b}.attn"] = direct[f"{b}.attn.heads"] + direct[f"{b}.attn.bias"]
            acc[f"{b}.mlp"] = direct[f"{b}.mlp.neurons"] + direct[f"{b}.mlp.bias"]
            acc[f"second_order.{l}"] = torch.zeros_like(acc["margin"])
        for lp in range(L):
            read = _shares(head_decomposition(model, tr, lp), w)
            for k, v in read.items():
                if k == "embed":
                    src = "embed"
                elif k.endswith(".attn"):
                    src = "attn"
                elif k.endswith(".mlp"):
                    src = "mlp"
                    acc[f"second_order.{k.split('.')[1]}"] += v
                else:  # MLP biases, ln_1 bias, value bias
                    src = "bias"
                key = f"read.{lp}.{src}"
                acc[key] = acc.get(key, torch.zeros_like(v)) + v
            acc[f"read.{lp}.bias"] += direct[f"blocks.{lp}.attn.bias"]  # the heads' output bias
        for k, v in acc.items():
            sums[k] += float(v.sum())
        n += len(x)
    return {k: v / n for k, v in sums.items()}


def direct_keys(n_layers: int) -> list[str]:
    """The keys of ``margin_attribution`` that sum to ``margin``."""
    keys = ["embed", "ln_post.bias"]
    for l in range(n_layers):
        keys += [f"blocks.{l}.attn", f"blocks.{l}.mlp"]
    return keys


__all__ = ["direct_keys", "margin_attribution"]
