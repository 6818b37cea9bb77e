"""Zero-shot segmentation: metrics, alignment to image pixels, each method against its
definition, readers, the command and its bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from solens.errors import InputError
from solens.segment import baselines as B
from solens.segment.heatmaps import (
    activation_map,
    crop_geometry,
    forward,
    grid,
    normalise,
    selection_masks,
    signed_map,
    to_image,
)
from solens.segment.metrics import Accumulator, average_precision, image_counts

from .helpers import images, run_cli, tiny_model


# --- metrics -------------------------------------------------------------------------------
def test_counts_by_hand() -> None:
    soft = np.array([0.9, 0.6, 0.2, 0.1])
    gt = np.array([True, False, True, False])
    correct, labelled, inter, union, ap = image_counts(soft, gt, 0.5)
    # pred = [1, 1, 0, 0]: correct at 0 and 3
    assert (correct, labelled) == (2, 4)
    assert inter.tolist() == [1, 1] and union.tolist() == [3, 3]
    # [1 - soft, soft] = [.1 .4 .8 .9 | .9 .6 .2 .1] against [0 1 0 1 | 1 0 1 0], by score:
    # .9 (2 items, both positive), .8 (neg), .6 (neg), .4 (pos), .2 (pos), .1 (2 negatives)
    # recall 2/4 at precision 2/2, 3/4 at 3/5, 4/4 at 4/6
    want = 0.5 * 1.0 + 0.25 * (3 / 5) + 0.25 * (4 / 6)
    assert ap == pytest.approx(want)
    acc = Accumulator()
    acc.add(soft, gt)
    acc.add(np.array([1.0, 0.0]), np.array([True, False]))
    r = acc.result()
    assert r["pixel_acc"] == pytest.approx(4 / 6)
    assert r["miou"] == pytest.approx(((1 + 1) / (3 + 1) + (1 + 1) / (3 + 1)) / 2)
    assert r["map"] == pytest.approx((want + 1.0) / 2)
    assert Accumulator.from_dict(json.loads(json.dumps(acc.to_dict()))) == acc


def test_average_precision_matches_scikit_learn() -> None:
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.random(300) < rng.random()
        s = np.round(rng.random(300), 1)  # many ties
        if y.any():
            assert average_precision(y, s) == pytest.approx(average_precision_score(y, s))


# --- alignment -----------------------------------------------------------------------------
def _clip_transform(size: int):
    from open_clip.transform import image_transform

    return image_transform(size, is_train=False)


@pytest.mark.parametrize("wh", [(48, 32), (96, 64), (32, 80), (50, 37)])
def test_geometry_follows_the_transform(wh) -> None:
    """A bright square lands where the crop geometry says (torchvision's own transform)."""
    from torchvision import transforms as T

    W, H = wh
    S = 32
    pre = _clip_transform(S)
    geo = crop_geometry(pre, W, H, S)
    a = np.zeros((H, W), np.uint8)
    x0, y0 = W // 2 + 3, H // 2 - 4
    a[y0 - 2 : y0 + 3, x0 - 2 : x0 + 3] = 255
    t = T.Compose([s for s in pre.transforms if isinstance(s, T.Resize | T.CenterCrop)])
    out = np.asarray(t(Image.fromarray(a)), np.float64)
    u = (out.sum(0) * (np.arange(S) + 0.5)).sum() / out.sum()  # centre of mass in the crop
    v = (out.sum(1) * (np.arange(S) + 0.5)).sum() / out.sum()
    uu, vv = geo.crop_coords()
    assert abs(uu[x0] - u) <= 0.5 and abs(vv[y0] - v) <= 0.5
    assert geo.valid().sum() == pytest.approx(S * S / (geo.sx * geo.sy), rel=0.15)


def test_heatmap_returns_to_the_object_on_a_non_square_image() -> None:
    """An object in the right part of a 96x64 image: the patch that sees it maps back onto it,
    and the pixels cut off by the centre crop are left out."""
    S, P = 32, 8
    pre = _clip_transform(S)
    W, H = 96, 64  # resized to 48x32, crop keeps x in [16, 80) of the original
    mask = np.zeros((H, W), bool)
    mask[16:32, 64:80] = True  # crop coords: u in [24, 32), v in [8, 16) -> patch (1, 3)
    pm = torch.zeros(S // P, S // P, dtype=torch.float64)
    pm[1, 3] = 1.0
    geo = crop_geometry(pre, W, H, S)
    hm = normalise(to_image(pm, geo))
    valid = geo.valid()
    assert valid[:, :16].sum() == 0 and valid[:, 80:].sum() == 0 and valid[:, 16:80].all()
    assert np.isnan(hm[:, :16]).all() and np.isfinite(hm[valid]).all()
    y, x = np.unravel_index(np.nanargmax(hm), hm.shape)
    assert mask[y, x]
    r = Accumulator()
    r.add(hm[valid], mask[valid])
    assert r.result()["miou"] > 0.7
    # the reference code's way (mask resized to the input without the crop) misses it
    squashed = np.asarray(Image.fromarray(mask).resize((S, S), Image.NEAREST))
    assert squashed[8:16, 24:32].mean() < 0.5  # most of the object patch is missed


# --- methods against their definitions -------------------------------------------------------
@pytest.fixture(scope="module")
def small():
    model = tiny_model(layers=4, seed=3)
    x = images(3, seed=4)
    g = torch.Generator().manual_seed(5)
    t = F.normalize(torch.randn(3, model.info.d_embed, generator=g, dtype=torch.float64), dim=-1)
    return model, x, t, forward(model, x, t)


def _manual(model, x, A_leaf: dict | None = None):
    """Forward from the weights with explicit attention (block l's replaced by
    ``A_leaf[l]`` when given)."""
    vis = model.visual
    tr = model.trace(x, ["hook_embed"])
    h = tr["hook_embed"]
    pats, ins = [], []
    for l, block in enumerate(vis.transformer.resblocks):
        ins.append(h)
        a = block.ln_1(h)
        attn = block.attn
        D = attn.embed_dim
        nh = attn.num_heads
        q, k, v = F.linear(a, attn.in_proj_weight, attn.in_proj_bias).split(D, dim=-1)
        q, k, v = (z.reshape(z.shape[0], z.shape[1], nh, D // nh).transpose(1, 2)
                   for z in (q, k, v))
        A = torch.softmax(q @ k.transpose(-1, -2) / (D // nh) ** 0.5, dim=-1)
        if A_leaf is not None and l in A_leaf:
            A = A_leaf[l]
        pats.append(A)
        o = (A @ v).transpose(1, 2).reshape(h.shape)
        h = h + block.ls_1(attn.out_proj(o))
        h = h + block.ls_2(block.mlp(block.ln_2(h)))
    f = vis.ln_post(h[:, 0]) @ vis.proj
    return f, pats, ins


def test_raw_attention_and_rollout(small) -> None:
    model, x, _t, p = small
    with torch.no_grad():
        f, pats, _ = _manual(model, x)
    torch.testing.assert_close(f, p.trace.embedding)
    L = model.info.n_layers
    torch.testing.assert_close(B.raw_attention(p, L), pats[-1].mean(1)[:, 0, 1:])
    for b in range(len(x)):
        joint = np.eye(pats[0].shape[-1])
        for A in pats:
            m = A[b].mean(0).numpy() + np.eye(A.shape[-1])
            joint = (m / m.sum(1, keepdims=True)) @ joint
        np.testing.assert_allclose(B.rollout(p, L)[b].numpy(), joint[0, 1:], rtol=1e-10)


def test_chefer_against_autograd_on_attention_maps(small) -> None:
    model, x, t, p = small
    with torch.no_grad():
        _, pats, _ = _manual(model, x)
    grads = []
    for l in range(model.info.n_layers):  # the total derivative, later patterns live
        leaf = pats[l].clone().requires_grad_(True)
        f, _, _ = _manual(model, x, {l: leaf})
        (g,) = torch.autograd.grad((F.normalize(f, dim=-1) * t).sum(), [leaf])
        torch.testing.assert_close(B.attention_grad(model, p, l), g)
        grads.append(g)
    T = pats[0].shape[-1]
    R = torch.eye(T, dtype=torch.float64).expand(len(x), T, T)
    for A, G in zip(pats, grads, strict=True):
        R = R + (A.detach() * G).clamp_min(0).mean(1) @ R
    torch.testing.assert_close(B.chefer(model, p), R[:, 0, 1:])


def test_gradcam_against_autograd(small) -> None:
    model, x, t, p = small
    L = model.info.n_layers
    _, _, ins = _manual(model, x)
    f, _, ins = _manual(model, x)
    score = (F.normalize(f, dim=-1) * t).sum()
    (g,) = torch.autograd.grad(score, [ins[L - 1]])
    feat = ins[L - 1].detach()[:, 1:]
    want = torch.relu((feat * g[:, 1:].mean(1, keepdim=True)).sum(-1))
    torch.testing.assert_close(B.gradcam(model, p), want)


def test_textspan_is_the_heads_direct_contribution(small) -> None:
    """Per head and token: A[0, t] (v_t W_O) through the frozen ln_post, on the target; with
    the out-projection bias they add up to the block's attention output at CLS."""
    from solens.lens.frozen import post_map

    model, _x, t, p = small
    w = model.weights
    inv = 1.0 / p.trace["ln_post.hook_scale"]
    for l in range(model.info.n_layers):
        c = B.head_token_contributions(model, p, l)  # [B, H, T]
        out = p.trace[f"blocks.{l}.hook_attn_out"][:, 0]  # [B, D]
        bias = w.blocks[l].b_O * w.blocks[l].ls1_or_one()
        want = (((out - bias) @ post_map(w)) * t).sum(-1) * inv
        torch.testing.assert_close(c.sum((1, 2)), want)
    torch.testing.assert_close(
        B.textspan(model, p, [2, 3]),
        (B.head_token_contributions(model, p, 2) + B.head_token_contributions(model, p, 3)
         ).sum(1)[:, 1:])


def test_second_order_maps(small) -> None:
    from solens.lens.second_order import token_projections

    model, x, t, p = small
    N = model.info.d_mlp
    g = torch.Generator().manual_seed(7)
    r = F.normalize(torch.randn(2 * N, model.info.d_embed, generator=g, dtype=torch.float64),
                    dim=-1)
    masks = selection_masks(r, t, 5, [N, N])
    for b in range(len(x)):
        top = set(torch.topk((r @ t[b]).abs(), 5).indices.tolist())
        got = set(torch.cat(masks, 1)[b].nonzero().flatten().tolist())
        assert got == top
    act = activation_map(p.trace, [0, 1], masks)
    for b in range(len(x)):
        cols = [p.trace[f"blocks.{l}.mlp.hook_post"][b, 1:, masks[i][b].bool()]
                for i, l in enumerate([0, 1])]
        torch.testing.assert_close(act[b], torch.cat(cols, -1).mean(-1))
        for i, l in enumerate([0, 1]):
            idx = masks[i][b].nonzero().flatten()
            if not len(idx):
                continue
            sub = {k: v[b : b + 1] for k, v in p.trace.items()}
            from solens.models.trace import Trace

            tp = token_projections(model, Trace(sub), l, t[b : b + 1], idx)[0, :, 1:, 0]
            got = signed_map(model, p.trace, l, masks[i], t)[b]
            torch.testing.assert_close(got, tp.sum(0))


def test_random_neurons_are_seeded() -> None:
    from solens.segment.run import random_masks

    a = random_masks([10, 6], 5, seed=1)
    b = random_masks([10, 6], 5, seed=1)
    assert sum(int(m.sum()) for m in a) == 5
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert grid(torch.arange(16.0)[None]).shape == (1, 4, 4)


# --- readers --------------------------------------------------------------------------------
def _write_mat(path: Path, imgs: list[np.ndarray], gts: list[np.ndarray]) -> None:
    """A file in the layout of gtsegs_ijcv.mat (MATLAB v7.3): value/img, value/gt (cells),
    value/target, each [n, 1] object references; arrays stored transposed."""
    import h5py

    with h5py.File(path, "w") as f:
        refs = f.create_group("#refs#")
        n = len(imgs)
        img_refs = f.create_dataset("value/img", (n, 1), dtype=h5py.ref_dtype)
        gt_refs = f.create_dataset("value/gt", (n, 1), dtype=h5py.ref_dtype)
        tgt_refs = f.create_dataset("value/target", (n, 1), dtype=h5py.ref_dtype)
        for i, (im, gt) in enumerate(zip(imgs, gts, strict=True)):
            img_refs[i, 0] = refs.create_dataset(f"img{i}", data=im.transpose(2, 1, 0)).ref
            m = refs.create_dataset(f"gt{i}", data=gt.astype(np.uint8).T)
            cell = refs.create_dataset(f"cell{i}", (1, 1), dtype=h5py.ref_dtype)
            cell[0, 0] = m.ref
            gt_refs[i, 0] = cell.ref
            tgt_refs[i, 0] = refs.create_dataset(f"t{i}", data=np.array([[i + 1.0]])).ref


def test_readers(tmp_path) -> None:
    from solens.segment.readers import open_masked
    from solens.synth.render import render
    from solens.synth.sampling import spec_at

    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (30, 44, 3), dtype=np.uint8),
            rng.integers(0, 256, (50, 20, 3), dtype=np.uint8)]
    gts = [rng.random((30, 44)) < 0.3, rng.random((50, 20)) < 0.5]
    _write_mat(tmp_path / "gtsegs_ijcv.mat", imgs, gts)
    src = open_masked(tmp_path / "gtsegs_ijcv.mat")
    assert len(src) == 2
    for i in range(2):
        np.testing.assert_array_equal(np.asarray(src.image(i)), imgs[i])
        np.testing.assert_array_equal(src.mask(i), gts[i])
    syn = open_masked("synth:conflict:3:5")
    for i in range(3):
        scene = render(spec_at(i, "conflict", 5, 64))
        np.testing.assert_array_equal(syn.mask(i), scene.masks[0])
        np.testing.assert_array_equal(np.asarray(syn.image(i)), scene.array)
    (tmp_path / "im" / "a").mkdir(parents=True)
    (tmp_path / "mk" / "a").mkdir(parents=True)
    Image.fromarray(imgs[0]).save(tmp_path / "im" / "a" / "x.jpg")
    Image.fromarray((gts[0] * 255).astype(np.uint8)).save(tmp_path / "mk" / "a" / "x.png")
    fol = open_masked(tmp_path / "im", tmp_path / "mk")
    np.testing.assert_array_equal(fol.mask(0), gts[0])


# --- the command ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from solens.describe.describe import describe_run
    from solens.models.loading import load_model
    from solens.store import run_effects

    from .store_helpers import save_local_model

    tmp = tmp_path_factory.mktemp("segment")
    model = load_model(save_local_model(tmp / "model", seed=2))
    rng = np.random.default_rng(3)
    (tmp / "ref").mkdir()
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
            tmp / "ref" / f"{i:02d}.png")
    run = run_effects(model, tmp / "ref", [0, 1, 2], tmp / "run", batch_size=8, progress=False,
                      workers=0)
    pool = tmp / "words.txt"
    pool.write_text("\n".join(["fish", "shark", "water", "red", "boat", "sand", "dog", "sky"]))
    describe_run(run, str(pool), layers=[0, 1], model=model, n_terms=3, k=4)
    (tmp / "im").mkdir()
    (tmp / "mk").mkdir()
    for i in range(5):
        W, H = (40 + 4 * i, 32)
        a = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        m = np.zeros((H, W), np.uint8)
        m[8:20, 10 + i : 24 + i] = 255
        a[m > 0] = (250, 20, 20)
        Image.fromarray(a).save(tmp / "im" / f"{i}.png")
        Image.fromarray(m).save(tmp / "mk" / f"{i}.png")
    return {"model": model, "run": run, "tmp": tmp}


def test_segment_command_and_resume(env, capsys) -> None:
    from solens.segment.run import METHODS, segment_run

    run = env["run"]
    args = ["segment", str(run.path), "--images", str(env["tmp"] / "im"), "--masks",
            str(env["tmp"] / "mk"), "--query", "a red thing", "--layers", "0", "1", "--k", "6",
            "--overlays", "2", "--no-progress"]
    code, _out, err = run_cli(args, capsys)
    assert code == 0, err
    seg = run.path / "segment"
    doc = json.loads((seg / "segment.json").read_text())
    assert doc["format"] == "solens-segment" and doc["version"] == 1 and doc["n_images"] == 5
    assert set(doc["methods"]) == set(METHODS) and "images" in doc
    for v in doc["methods"].values():
        assert set(v) == {"pixel_acc", "miou", "map"} and all(0 <= x <= 1 for x in v.values())
    assert sorted(p.name for p in (seg / "overlays").glob("*.png")) == ["00000.png", "00001.png"]
    manifest = json.loads((seg / "manifest.json").read_text())
    assert manifest["format"] == "solens-segment" and manifest["settings"]["query"]
    assert "| second_order |" in (seg / "segment.md").read_text()
    # resumes: a finished part is not recomputed
    from solens.segment import run as R

    calls = []
    real = R.Segmenter.maps
    R.Segmenter.maps = lambda self, x: calls.append(len(x)) or real(self, x)  # type: ignore[method-assign]
    try:
        again = segment_run(run, env["tmp"] / "im", masks=env["tmp"] / "mk", query="a red thing",
                            layers=[0, 1], k=6, n_overlays=2, progress=False, model=env["model"])
    finally:
        R.Segmenter.maps = real  # type: ignore[method-assign]
    assert calls == [] and again.table() == doc["methods"]
    with pytest.raises(InputError, match="other settings"):
        segment_run(run, env["tmp"] / "im", masks=env["tmp"] / "mk", query="a red thing",
                    layers=[0, 1], k=5, progress=False, model=env["model"])


def test_segment_reads_the_imagenet_segmentation_file(env, tmp_path) -> None:
    from solens.segment.run import segment_run, summary

    rng = np.random.default_rng(9)
    imgs = [rng.integers(0, 256, (30 + 6 * i, 44, 3), dtype=np.uint8) for i in range(3)]
    gts = [rng.random(im.shape[:2]) < 0.4 for im in imgs]
    _write_mat(tmp_path / "gtsegs_ijcv.mat", imgs, gts)
    res = segment_run(env["run"], tmp_path / "gtsegs_ijcv.mat", query="a dog", layers=[0],
                      k=4, n_overlays=0, restart=True, progress=False, model=env["model"])
    assert res.n_images == 3
    assert summary(res)["settings"]["images"]["kind"] == "imagenet-segmentation"


def test_bad_inputs(env, capsys, monkeypatch, tmp_path) -> None:
    run = env["run"]
    im, mk = env["tmp"] / "im", env["tmp"] / "mk"
    (tmp_path / "few").mkdir()
    Image.open(mk / "0.png").save(tmp_path / "few" / "0.png")
    (tmp_path / "small").mkdir()
    for i in range(5):
        Image.open(mk / f"{i}.png").resize((20, 16)).save(tmp_path / "small" / f"{i}.png")
    base = ["segment", str(run.path), "--restart", "--no-progress"]
    cases = [
        (["--images", str(im), "--masks", str(tmp_path / "few")], "does not match --images"),
        (["--images", str(im), "--masks", str(tmp_path / "small")], "masks must have their image"),
        (["--images", str(im)], "pass --masks"),
        (["--images", str(im), "--masks", str(mk), "--layers", "2", "--query", "x"],
         f"run `solens describe {run.path}` first"),
    ]
    for extra, message in cases:
        code, _, err = run_cli(base + extra, capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and message in lines[0], lines
    # a model without a text tower
    from solens.models.model import Model
    from solens.store.run import Run

    vis_only = Model(env["model"].visual, None, env["model"].preprocess, env["model"].info)
    monkeypatch.setattr(Run, "load_model", lambda self, device="cpu": vis_only)
    code, _, err = run_cli([*base, "--images", str(im), "--masks", str(mk), "--layers", "0",
                            "--query", "a red thing"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "--query needs a text tower" in lines[0], lines
