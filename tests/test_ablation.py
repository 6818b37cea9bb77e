"""Layer mean-ablation: identities that must hold whatever the model."""

from __future__ import annotations

import torch

from solens.experiments.ablation import block_ablation, collect_effects, layer_effects
from solens.experiments.zeroshot import accuracy
from solens.lens import second_order
from solens.lens.direct import direct_contributions

from .helpers import images, tiny_model


def test_layer_effect_is_sum_of_neuron_effects() -> None:
    model = tiny_model()
    x = images(3)
    tr = model.trace(x)
    eff = layer_effects(model, tr, [0, 2], "second_order")
    for i, l in enumerate([0, 2]):
        per_neuron = second_order(model, x, l).sum(1)
        assert torch.allclose(eff[:, i], per_neuron, atol=1e-10)
    direct = layer_effects(model, tr, [1], "direct")[:, 0]
    assert torch.allclose(direct, direct_contributions(model, tr)["blocks.1.mlp.neurons"].sum(1))


def test_ablation_with_reference_equal_to_data_keeps_mean_and_identity_cases() -> None:
    model = tiny_model(dtype=torch.float32)
    x = images(12, dtype=torch.float32)
    class_text = torch.randn(3, 16)
    emb = collect_effects(model, x, [0], ["second_order"]).embeddings
    labels = (torch.nn.functional.normalize(emb, dim=-1) @ class_text.T).argmax(-1)
    res = block_ablation(model, x, labels, x, class_text, layers=[0, 1])
    assert res["second_order"].baseline == 1.0  # labels are the model's own predictions
    # ablating with a one-image reference equal to each image leaves it unchanged
    for i in range(3):
        one = x[i : i + 1]
        r = block_ablation(model, one, labels[i : i + 1], one, class_text, layers=[1])
        assert r["second_order"].by_layer()[1] == 1.0 and r["direct"].by_layer()[1] == 1.0
    assert 0.0 <= accuracy(emb, labels, class_text) <= 1.0


def test_mean_ablated_accuracy_equals_forward_with_the_effect_replaced() -> None:
    """Each layer's ablated accuracy is the accuracy of f(I) with that layer's effect swapped
    for the reference mean, computed here by hand from the traced effects."""
    model = tiny_model(dtype=torch.float32)
    x, ref = images(10, dtype=torch.float32), images(6, seed=5, dtype=torch.float32)
    class_text = torch.randn(4, 16, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(10) % 4
    res = block_ablation(model, x, labels, ref, class_text, layers=[0, 1])
    tr, tr_ref = model.trace(x), model.trace(ref)
    for kind in ("second_order", "direct"):
        e = layer_effects(model, tr, [0, 1], kind).float()
        m = layer_effects(model, tr_ref, [0, 1], kind).float().mean(0)
        f = tr.embedding.float()
        for i, l in enumerate([0, 1]):
            assert res[kind].by_layer()[l] == accuracy(f - e[:, i] + m[i], labels, class_text)
        assert res[kind].all_layers == accuracy(f - e.sum(1) + m.sum(0), labels, class_text)
        assert res[kind].drop == [res[kind].baseline - a for a in res[kind].accuracy]
