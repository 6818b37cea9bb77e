"""Correctness of the second-order engine: factorised vs brute force, additivity."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from solens.errors import InputError
from solens.lens import (
    coefficients,
    directions,
    effects,
    norms,
    project,
    second_order,
    token_projections,
    trace_names,
)
from solens.lens.direct import direct_contributions, head_decomposition, push_through_heads
from solens.lens.reference import perturbation_second_order, reference_second_order
from solens.lens.second_order import gram

from .helpers import images, tiny_model


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("convention", ["exact", "official"])
@pytest.mark.parametrize("ls", [None, 0.5])
def test_factorised_matches_reference(convention: str, ls: float | None) -> None:
    model = tiny_model(ls_init_value=ls)
    x = images(3)
    for layer in (0, 2):
        fast = second_order(model, x, layer, convention=convention)
        slow = reference_second_order(model, x, layer, convention=convention)
        assert fast.shape == (3, 128, 16)
        assert rel(fast, slow) < 1e-10


def test_factorised_matches_perturbation() -> None:
    model = tiny_model(ls_init_value=0.7, final_ln_after_pool=True)
    x = images(2)
    neurons = [0, 5, 17, 127]
    fast = second_order(model, x, 1, neurons=neurons)
    pert = perturbation_second_order(model, x, 1, neurons)
    assert rel(fast, pert) < 1e-10


@settings(max_examples=8, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    layer=st.integers(0, 2),
    batch=st.integers(1, 3),
    heads=st.sampled_from([1, 2, 4]),
    convention=st.sampled_from(["exact", "official"]),
)
def test_property_factorised_vs_reference(seed, layer, batch, heads, convention) -> None:
    model = tiny_model(seed=seed, heads=heads, width=16, ls_init_value=0.3 if seed % 2 else None)
    x = images(batch, seed=seed)
    fast = second_order(model, x, layer, convention=convention)
    slow = reference_second_order(model, x, layer, convention=convention)
    assert rel(fast, slow) < 1e-9


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-5), (torch.float32, 1e-4)])
def test_direct_contributions_add_up(dtype: torch.dtype, tol: float) -> None:
    model = tiny_model(dtype=dtype, ls_init_value=0.4)
    tr = model.trace(images(4, dtype=dtype))
    parts = direct_contributions(model, tr)
    total = sum(p.sum(1) if p.dim() == 3 else p for p in parts.values())
    assert rel(total, tr.embedding) < tol


def test_head_decomposition_adds_up_and_neurons_sum_to_layer() -> None:
    model = tiny_model(ls_init_value=0.4)
    tr = model.trace(images(3))
    direct = direct_contributions(model, tr)
    L = model.info.n_layers
    for lp in range(1, L):
        parts = head_decomposition(model, tr, lp)
        assert rel(sum(parts.values()), direct[f"blocks.{lp}.attn.heads"]) < 1e-10
    # sum over neurons of second-order == whole MLP layer through the frozen later heads
    layer = 1
    per_neuron = second_order(model, images(3), layer).sum(1)
    whole = sum(head_decomposition(model, tr, lp)[f"blocks.{layer}.mlp"].sum(1)
                for lp in range(layer + 1, L))
    assert rel(per_neuron, whole) < 1e-10


def test_norms_projections_tokens_without_materialising() -> None:
    model = tiny_model()
    x = images(3)
    layer = 1
    tr = model.trace(x, trace_names([layer], model.info.n_layers))
    c = coefficients(model, tr, layer)
    u = directions(model, layer)
    phi = effects(c, u)
    assert rel(norms(c, gram(u)), phi.norm(dim=-1)) < 1e-10
    v = torch.randn(5, 16, dtype=torch.float64)
    assert rel(project(c, u, v), phi @ v.T) < 1e-10
    tok = token_projections(model, model.trace(x), layer, v)
    assert tok.shape == (3, 128, 17, 5)
    assert rel(tok.sum(2), phi @ v.T) < 1e-10


def test_neuron_subset_and_official_offset_is_shared() -> None:
    model = tiny_model()
    x = images(2)
    full = second_order(model, x, 0, convention="official")
    sub = second_order(model, x, 0, neurons=[3, 9], convention="official")
    assert rel(sub, full[:, [3, 9]]) < 1e-12
    # all neurons share the same image-dependent offset: zero activation -> offset only
    tr = model.trace(x, trace_names([0], model.info.n_layers))
    c = coefficients(model, tr, 0)
    assert c.offset.shape == (2, 16)
    # the exact convention skips the offset: same coefficients, no offset to use
    bare = coefficients(model, tr, 0, offset=False)
    assert torch.equal(bare.s, c.s) and bare.raw_offset is None
    with pytest.raises(ValueError, match="offset=False"):
        effects(bare, directions(model, 0, "official"), "official")


def test_push_through_heads_is_linear() -> None:
    model = tiny_model()
    tr = model.trace(images(2))
    a = torch.randn(2, 17, 32, dtype=torch.float64)
    b = torch.randn(2, 17, 32, dtype=torch.float64)
    lhs = push_through_heads(model, tr, a + 2 * b, 2)
    rhs = push_through_heads(model, tr, a, 2) + 2 * push_through_heads(model, tr, b, 2)
    assert rel(lhs, rhs) < 1e-12


def test_layer_out_of_range() -> None:
    model = tiny_model()
    with pytest.raises(InputError, match=r"valid layers are 0\.\.2"):
        second_order(model, images(1), 3)
    with pytest.raises(InputError, match="unknown convention 'paper'"):
        second_order(model, images(1), 0, convention="paper")
    with pytest.raises(InputError, match="convention"):
        directions(model, 0, convention="paper")
    with pytest.raises(ValueError, match="convention"):  # InputError is a ValueError
        reference_second_order(model, images(1), 0, convention="paper")


def test_trace_names_without_layers() -> None:
    with pytest.raises(InputError, match="no layers"):
        trace_names([], 4)
    assert trace_names([])[-2:] == ["ln_post.hook_mean", "ln_post.hook_scale"]  # unchanged


def test_full_size_vit_b32_layer9_float32() -> None:
    """Random full-size ViT-B-32 (QuickGELU): factorised vs reference in float32."""
    import open_clip

    from solens.models.model import Model

    torch.manual_seed(0)
    clip = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None)
    model = Model.from_open_clip(clip, name="ViT-B-32-quickgelu", pretrained="random")
    x = torch.randn(1, 3, 224, 224)
    neurons = list(range(0, 3072, 97))
    for convention in ("exact", "official"):
        fast = second_order(model, x, 9, neurons=neurons, convention=convention)
        slow = reference_second_order(model, x, 9, neurons=neurons, convention=convention)
        assert rel(fast, slow) < 1e-4


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(0, 9),
    batch=st.integers(1, 3),
    p=st.integers(1, 7),
    d=st.integers(1, 6),
    threads=st.integers(1, 4),
    double=st.booleans(),
)
def test_streamed_products_equal_bmm(
    seed: int, n: int, batch: int, p: int, d: int, threads: int, double: bool
) -> None:
    from solens.lens.second_order import stream_products

    g = torch.Generator().manual_seed(seed)
    dtype = torch.float64 if double else torch.float32
    s = torch.randn(batch, n, p, generator=g, dtype=dtype).transpose(0, 1)  # strided view
    u = torch.randn(n, p, d, generator=g, dtype=dtype)
    got = stream_products(s, u, threads)
    want = torch.bmm(s, u)
    assert got.shape == want.shape == (n, batch, d) and got.dtype == dtype
    torch.testing.assert_close(got, want, rtol=1e-12 if double else 2e-6, atol=1e-12)


@pytest.mark.parametrize("convention", ["exact", "official"])
def test_small_batches_stream_and_match_the_batched_product(convention: str) -> None:
    """Up to three images take the streaming path, four bmm: same effects."""
    from solens.lens.second_order import LayerCoeffs, _streams

    model = tiny_model()
    x = images(5)
    u = directions(model, 1, convention)
    c = coefficients(model, model.trace(x, trace_names([1], model.info.n_layers)), 1)
    assert _streams(c.s[:3].transpose(0, 1), u) and not _streams(c.s[:4].transpose(0, 1), u)
    whole = effects(c, u, convention)  # bmm
    for a, b in [(0, 1), (1, 4), (4, 5)]:
        part = LayerCoeffs(1, c.s[a:b], c.inv_sigma_post[a:b], c.offset[a:b],
                              c.embedding[a:b])  # fmt: skip
        assert rel(effects(part, u, convention), whole[a:b]) < 1e-12


def test_effects_keep_the_autograd_graph_for_small_batches() -> None:
    model = tiny_model()
    x = images(1)
    c = coefficients(model, model.trace(x, trace_names([1], model.info.n_layers)), 1)
    u = directions(model, 1)
    s = c.s.clone().requires_grad_(True)
    c2 = type(c)(1, s, c.inv_sigma_post, c.raw_offset, c.embedding)
    effects(c2, u).sum().backward()
    assert s.grad is not None
    # d(sum phi)/ds[b, n, p] = inv_sigma_post[b] * sum_d u[n, p, d]
    want = c.inv_sigma_post[:, None, None] * u.sum(-1)[None]
    assert rel(s.grad, want) < 1e-12
