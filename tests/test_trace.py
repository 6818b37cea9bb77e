"""The traced forward equals open_clip's own forward, and its recorded hooks are consistent."""

from __future__ import annotations

import pytest
import torch
from open_clip.transformer import QuickGELU, VisionTransformer
from torch import nn

from solens import load_model
from solens.models.model import Model, describe_visual
from solens.models.trace import Trace

from .helpers import images, tiny_visual

TOL = 1e-5


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def wrap(visual: nn.Module, name: str = "test") -> Model:
    return Model(visual, None, None, describe_visual(visual, name=name, pretrained=None))


# --- parity with open_clip on full-size towers ------------------------------------------------
def test_parity_vit_b32_quickgelu() -> None:
    torch.manual_seed(0)
    model = load_model("ViT-B-32", "random", quick_gelu=True)
    assert model.info.quick_gelu and isinstance(
        model.visual.transformer.resblocks[0].mlp.gelu, QuickGELU
    )
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ref = model.owner.encode_image(x)
    tr = model.trace(x, names=[])
    assert tr.embedding.shape == (2, 512)
    assert max_diff(tr.embedding, ref) <= TOL
    assert max_diff(model.encode_image(x), ref) <= TOL


def test_parity_vit_b16_gelu() -> None:
    torch.manual_seed(1)
    # ViT-B-16's vision config, built directly (the text tower is not needed here)
    vis = VisionTransformer(224, 16, 768, 12, 12, 4.0, output_dim=512).eval()
    model = wrap(vis, "ViT-B-16")
    assert (model.info.n_tokens, model.info.quick_gelu) == (197, False)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ref = vis(x)
    assert max_diff(model.trace(x, names=["blocks.11.*"]).embedding, ref) <= TOL


@pytest.mark.parametrize(
    "kw",
    [
        dict(ls_init_value=0.1),
        dict(ls_init_value=0.1, final_ln_after_pool=True),
        dict(final_ln_after_pool=True, quick_gelu=True),
        dict(ls_init_value=0.1, quick_gelu=True, patch_size=4, heads=2),
    ],
    ids=["ls", "ls+final_ln_after_pool", "final_ln_after_pool+quickgelu", "ls+quickgelu+p4"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_parity_small_configs(kw: dict, dtype: torch.dtype) -> None:
    vis = tiny_visual(**kw).to(dtype)
    if kw.get("ls_init_value") is not None:  # the gammas are randomised: they matter
        g = vis.transformer.resblocks[0].ls_2.gamma
        assert g.std() > 0.1
    model = wrap(vis)
    x = images(3, dtype=dtype)
    with torch.no_grad():
        ref = vis(x)
    tr = model.trace(x)
    tol = 1e-12 if dtype == torch.float64 else TOL
    assert tr.embedding.dtype == dtype
    assert max_diff(tr.embedding, ref) <= tol * max(1.0, float(ref.abs().max()))


def test_parity_no_ln_pre() -> None:
    torch.manual_seed(2)
    vis = VisionTransformer(32, 8, 32, 2, 4, 4.0, output_dim=16, no_ln_pre=True).double().eval()
    x = images(2)
    with torch.no_grad():
        ref = vis(x)
    assert max_diff(wrap(vis).trace(x).embedding, ref) <= 1e-12


# --- hook consistency ------------------------------------------------------------------------
@pytest.fixture(scope="module", params=[False, True], ids=["ln_post-all", "final_ln_after_pool"])
def traced(request: pytest.FixtureRequest) -> tuple[Model, torch.Tensor, Trace]:
    vis = tiny_visual(ls_init_value=0.1, final_ln_after_pool=request.param).double()
    model = wrap(vis)
    x = images(2)
    return model, x, model.trace(x)


def test_hook_names_and_shapes(traced: tuple[Model, torch.Tensor, Trace]) -> None:
    model, _, tr = traced
    i = model.info
    B, T, D, H, N = 2, i.n_tokens, i.d_model, i.n_heads, i.d_mlp
    assert tr["hook_embed"].shape == (B, T, D)
    for layer in range(i.n_layers):
        p = f"blocks.{layer}"
        for k in (
            "hook_resid_pre",
            "hook_attn_out",
            "hook_resid_mid",
            "hook_mlp_out",
            "hook_resid_post",
        ):
            assert tr[f"{p}.{k}"].shape == (B, T, D)
        for ln in ("ln1", "ln2"):
            assert tr[f"{p}.{ln}.hook_mean"].shape == (B, T)
            assert tr[f"{p}.{ln}.hook_scale"].shape == (B, T)
        assert tr[f"{p}.attn.hook_pattern"].shape == (B, H, T, T)
        assert tr[f"{p}.mlp.hook_pre"].shape == (B, T, N)
        assert tr[f"{p}.mlp.hook_post"].shape == (B, T, N)
    assert tr["hook_pooled"].shape == (B, D)
    assert tr["ln_post.hook_mean"].shape == tr["ln_post.hook_scale"].shape == (B,)
    assert tr.embedding.shape == (B, i.d_embed)


def test_residual_stream_adds_up(traced: tuple[Model, torch.Tensor, Trace]) -> None:
    model, _, tr = traced
    L = model.info.n_layers
    torch.testing.assert_close(tr["hook_embed"], tr["blocks.0.hook_resid_pre"])
    for layer in range(L):
        p = f"blocks.{layer}"
        pre, attn, mlp = (
            tr[f"{p}.hook_resid_pre"],
            tr[f"{p}.hook_attn_out"],
            tr[f"{p}.hook_mlp_out"],
        )
        torch.testing.assert_close(tr[f"{p}.hook_resid_mid"], pre + attn)
        torch.testing.assert_close(tr[f"{p}.hook_resid_post"], pre + attn + mlp)
        if layer + 1 < L:
            torch.testing.assert_close(
                tr[f"blocks.{layer + 1}.hook_resid_pre"], tr[f"{p}.hook_resid_post"]
            )
    torch.testing.assert_close(tr["hook_pooled"], tr[f"blocks.{L - 1}.hook_resid_post"][:, 0])


def _ln_from_stats(ln: nn.LayerNorm, x: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor):
    return (x - mean.unsqueeze(-1)) / scale.unsqueeze(-1) * ln.weight + ln.bias


def test_ln_stats_match_layernorm(traced: tuple[Model, torch.Tensor, Trace]) -> None:
    model, _, tr = traced
    with torch.no_grad():
        for layer, block in enumerate(model.visual.transformer.resblocks):
            p = f"blocks.{layer}"
            for ln, stream, key in (
                (block.ln_1, "hook_resid_pre", "ln1"),
                (block.ln_2, "hook_resid_mid", "ln2"),
            ):
                x = tr[f"{p}.{stream}"]
                want = torch.nn.functional.layer_norm(
                    x, ln.normalized_shape, ln.weight, ln.bias, ln.eps
                )
                got = _ln_from_stats(ln, x, tr[f"{p}.{key}.hook_mean"], tr[f"{p}.{key}.hook_scale"])
                torch.testing.assert_close(got, want)
                torch.testing.assert_close(
                    tr[f"{p}.{key}.hook_scale"] ** 2, x.var(-1, unbiased=False) + ln.eps
                )
        ln = model.visual.ln_post
        post = _ln_from_stats(
            ln, tr["hook_pooled"], tr["ln_post.hook_mean"], tr["ln_post.hook_scale"]
        )
        torch.testing.assert_close(post, ln(tr["hook_pooled"]))
        torch.testing.assert_close(post @ model.visual.proj, tr.embedding)


def test_attention_and_mlp_hooks(traced: tuple[Model, torch.Tensor, Trace]) -> None:
    model, _, tr = traced
    W = model.weights
    with torch.no_grad():
        for layer, block in enumerate(model.visual.transformer.resblocks):
            p = f"blocks.{layer}"
            A = tr[f"{p}.attn.hook_pattern"]
            assert (A >= 0).all()
            torch.testing.assert_close(A.sum(-1), torch.ones_like(A.sum(-1)))
            # the attention output rebuilt from the pattern and the lens-layout weights
            bw = W.blocks[layer]
            h = block.ln_1(tr[f"{p}.hook_resid_pre"])
            v = torch.einsum("btd,hde->bhte", h, bw.W_V) + bw.b_V[None, :, None]
            z = torch.einsum("bhqt,bhte->bhqe", A, v)
            out = torch.einsum("bhqe,hed->bqd", z, bw.W_O) + bw.b_O
            torch.testing.assert_close(out * bw.ls1_or_one(), tr[f"{p}.hook_attn_out"])
            # MLP: post = act(pre); out = ls2 * (post @ W_out + b_out)
            pre, post = tr[f"{p}.mlp.hook_pre"], tr[f"{p}.mlp.hook_post"]
            torch.testing.assert_close(post, block.mlp.gelu(pre))
            ln2 = block.ln_2(tr[f"{p}.hook_resid_mid"])
            torch.testing.assert_close(pre, ln2 @ bw.W_in + bw.b_in)
            torch.testing.assert_close(
                (post @ bw.W_out + bw.b_out) * bw.ls2_or_one(), tr[f"{p}.hook_mlp_out"]
            )


def test_names_filter_and_globs() -> None:
    model = wrap(tiny_visual(layers=3).double())
    x = images(1)
    full = model.trace(x)
    only = model.trace(x, names=["blocks.1.mlp.hook_post"])
    assert set(only) == {"blocks.1.mlp.hook_post", "hook_embedding"}
    torch.testing.assert_close(only["blocks.1.mlp.hook_post"], full["blocks.1.mlp.hook_post"])
    assert set(model.trace(x, names=[])) == {"hook_embedding"}
    pats = model.trace(x, names=["blocks.*.attn.hook_pattern"])
    assert set(pats) == {f"blocks.{i}.attn.hook_pattern" for i in range(3)} | {"hook_embedding"}
    ln = model.trace(x, names=["blocks.0.ln1.*", "ln_post.hook_scale"])
    assert set(ln) == {
        "blocks.0.ln1.hook_mean",
        "blocks.0.ln1.hook_scale",
        "ln_post.hook_scale",
        "hook_embedding",
    }
    torch.testing.assert_close(ln.embedding, full.embedding)
    with pytest.raises(KeyError, match="was not recorded"):
        only["blocks.0.hook_resid_pre"]
