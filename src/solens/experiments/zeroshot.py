"""Zero-shot classification: the one place where accuracies are computed.

A classifier is a set of class text directions [C, d] (one prompt per class, or the
normalised mean of several prompts per class); an image is assigned the class whose
direction has the largest cosine with its embedding f(I).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from solens.models.model import Model


def accuracy(embeddings: Tensor, labels: Tensor, class_text: Tensor) -> float:
    """Top-1 of unnormalised embeddings [B, d] against class directions [C, d]; ``labels``
    [B] index the classes."""
    logits = F.normalize(embeddings, dim=-1) @ F.normalize(class_text, dim=-1).T
    return float((logits.argmax(-1) == labels.to(logits.device)).float().mean())


@torch.no_grad()
def text_directions(model: Model, prompts: Sequence[str]) -> Tensor:
    """One prompt per class: unnormalised text embeddings [C, d] (float32, CPU)."""
    return model.encode_text(list(prompts)).float().cpu()


@torch.no_grad()
def ensembled_directions(model: Model, groups: Sequence[Sequence[str]]) -> Tensor:
    """Several prompts per class: the normalised mean of their normalised embeddings,
    [len(groups), d] (float32, CPU)."""
    flat = [t for g in groups for t in g]
    e = F.normalize(text_directions(model, flat), dim=-1)
    out, i = [], 0
    for g in groups:
        out.append(F.normalize(e[i : i + len(g)].mean(0), dim=-1))
        i += len(g)
    return torch.stack(out)


@torch.no_grad()
def image_embeddings(model: Model, images: Tensor, batch_size: int = 256) -> Tensor:
    """f(I), unnormalised, of preprocessed images [B, 3, S, S]: [B, d] (float32, CPU)."""
    out = [model.encode_image(images[i : i + batch_size]).float().cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, model.info.d_embed)


@torch.no_grad()
def zero_shot(
    model: Model, images: Tensor, labels: Tensor, class_text: Tensor, batch_size: int = 256
) -> float:
    """Zero-shot top-1 of ``model`` on preprocessed ``images`` [B, 3, S, S] with ``labels``
    [B] against ``class_text`` [C, d]."""
    return accuracy(image_embeddings(model, images, batch_size), labels, class_text)


__all__ = ["accuracy", "ensembled_directions", "image_embeddings", "text_directions",
           "zero_shot"]
