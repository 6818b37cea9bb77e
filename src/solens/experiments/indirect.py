"""Indirect (total) effects of MLP neurons: real forward passes with neurons mean-ablated.

A neuron is mean-ablated by replacing its post-GELU activation at every token with its
mean at that token position over a reference set (METHOD §2). Everything downstream
(later heads' queries and keys, later MLPs, self-repair) reacts, unlike in the
second-order effect. The hook sits on the MLP's activation module (``mlp.gelu``) of an
open_clip block, so the forward is open_clip's own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

from solens.models.model import Model


def _batch_first(model: Model) -> bool:
    return bool(getattr(model.visual.transformer, "batch_first", True))


@contextlib.contextmanager
def replaced_activations(
    model: Model, layer: int, replace: Callable[[Tensor], Tensor]
) -> Iterator[None]:
    """Within the block, block ``layer``'s post-GELU activations [B, T, N] are replaced by
    ``replace(activations)`` (same shape) in every forward of ``model.visual``."""
    bf = _batch_first(model)

    def hook(module: torch.nn.Module, inputs: object, out: Tensor) -> Tensor:
        a = out if bf else out.transpose(0, 1)
        new = replace(a)
        return new if bf else new.transpose(0, 1)

    handle = model.visual.transformer.resblocks[layer].mlp.gelu.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def layer_ablated_embeddings(
    model: Model, images: Tensor, layer: int, mean: Tensor, batch_size: int = 128
) -> Tensor:
    """f(I) with every neuron of block ``layer`` mean-ablated (``mean`` [T, N]: mean per
    token position, ``solens.experiments.ablate.reference_means``): preprocessed images
    [B, 3, S, S] -> [B, d] (float32, CPU)."""
    m = mean.to(model.device, model.dtype)
    out = []
    with replaced_activations(model, layer, lambda a: m.expand_as(a)):
        for i in range(0, len(images), batch_size):
            out.append(model.encode_image(images[i : i + batch_size]).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def neuron_indirect_effects(
    model: Model,
    images: Tensor,
    layer: int,
    neurons: Sequence[int],
    mean: Tensor,
    neurons_per_pass: int = 8,
) -> Tensor:
    """Indirect effect of each of ``neurons`` on each image: f(I) minus f(I) with that one
    neuron mean-ablated, [len(neurons), B, d] (float32, CPU). Several neurons share a
    forward pass: the batch is replicated once per neuron and each copy ablates its own."""
    x = images.to(model.device, model.dtype)
    B = x.shape[0]
    f = model.encode_image(x).float().cpu()
    m = mean.to(model.device, model.dtype)  # [T, N]
    out = []
    for k0 in range(0, len(neurons), neurons_per_pass):
        chunk = torch.as_tensor(list(neurons[k0 : k0 + neurons_per_pass]), device=model.device)
        k = len(chunk)
        rows = torch.arange(k * B, device=model.device)
        cols = chunk.repeat_interleave(B)  # copy j ablates neuron chunk[j]

        def replace(a: Tensor, rows: Tensor = rows, cols: Tensor = cols) -> Tensor:
            a = a.clone()
            a[rows, :, cols] = m[:, cols].T
            return a

        with replaced_activations(model, layer, replace):
            g = model.encode_image(x.repeat(k, 1, 1, 1)).float().cpu()
        out.append(f.unsqueeze(0) - g.view(k, B, -1))
    return torch.cat(out)


def pc1_variance(vectors: Tensor) -> Tensor:
    """Share of variance along the first principal component of each set of vectors:
    [K, B, d] (K sets of B vectors, centred here over B) -> [K] in [0, 1] (0 for a set
    without variance)."""
    x = vectors.double() - vectors.double().mean(1, keepdim=True)
    s = torch.linalg.svdvals(x)  # [K, min(B, d)]
    total = (s**2).sum(-1)
    return torch.where(total > 0, s[:, 0] ** 2 / total.clamp_min(1e-300), torch.zeros_like(total))


__all__ = [
    "layer_ablated_embeddings",
    "neuron_indirect_effects",
    "pc1_variance",
    "replaced_activations",
]
