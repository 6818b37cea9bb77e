"""`solens ablate`: every variant against a direct computation, the ImageNet path end to end
on a small random open_clip ViT, resume, and bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from solens.errors import InputError
from solens.experiments.ablate import reference_means
from solens.experiments.factorised import (
    ablate_all,
    ablate_masked,
    centred,
    centred_norms,
    rank1,
    unit_rows,
)
from solens.experiments.indirect import (
    layer_ablated_embeddings,
    neuron_indirect_effects,
    pc1_variance,
)
from solens.lens import second_order
from solens.lens.second_order import coefficients, directions, gram

from .helpers import images, tiny_model


def _coefs(model, x, layer):
    c = coefficients(model, model.trace(x), layer)
    return c.s * c.inv_sigma_post[:, None, None], c.embedding


@pytest.mark.parametrize("layer", [0, 2])
def test_factorised_variants_equal_materialised_effects(layer: int) -> None:
    """Mean ablation, thresholded ablations and rank-1 reconstructions computed from the
    coefficients equal the formulas applied to the materialised phi [B, N, d]."""
    model = tiny_model()
    x, ref = images(6), images(9, seed=7)
    phi, phi_ref = second_order(model, x, layer), second_order(model, ref, layer)
    phi_bar = phi_ref.mean(0)
    c, f = _coefs(model, x, layer)
    c_ref, _ = _coefs(model, ref, layer)
    u = directions(model, layer)
    X = centred(c, c_ref.mean(0))
    dev = phi - phi_bar  # [B, N, d]
    torch.testing.assert_close(ablate_all(f, X, u), f - dev.sum(1))
    cn = centred_norms(X, gram(u))
    torch.testing.assert_close(cn, dev.norm(dim=-1))
    tau = cn.median(0).values  # some neurons above, some below
    mask = cn > tau
    assert mask.any() and (~mask).any()
    torch.testing.assert_close(ablate_masked(f, X, u, mask),
                               f - (dev * mask[..., None]).sum(1))
    torch.testing.assert_close(ablate_masked(f, X, u, ~mask),
                               f - (dev * (~mask)[..., None]).sum(1))
    # both halves together are the full ablation
    torch.testing.assert_close(ablate_masked(f, X, u, mask) + ablate_masked(f, X, u, ~mask) - f,
                               ablate_all(f, X, u))
    g = torch.Generator().manual_seed(3)
    r = unit_rows(torch.randn(phi.shape[1], phi.shape[2], generator=g, dtype=phi.dtype))
    proj = (dev * r).sum(-1, keepdim=True)  # <phi - phi_bar, r_n>
    want = f - phi.sum(1) + (phi_bar + proj * r).sum(1)
    torch.testing.assert_close(rank1(f, X, u, r), want)


def _manual_forward(visual, x, layer, replace):
    """open_clip's ViT forward written out by hand, with block ``layer``'s post-GELU
    activations [B, T, N] passed through ``replace``."""
    h = visual.conv1(x).flatten(2).transpose(1, 2)
    cls = visual.class_embedding.expand(h.shape[0], 1, -1)
    h = torch.cat([cls.to(h), h], dim=1) + visual.positional_embedding.to(h)
    h = visual.ln_pre(h)
    for i, b in enumerate(visual.transformer.resblocks):
        q = b.ln_1(h)
        h = h + b.ls_1(b.attn(q, q, q, need_weights=False)[0])
        a = b.mlp.gelu(b.mlp.c_fc(b.ln_2(h)))
        if i == layer:
            a = replace(a)
        h = h + b.ls_2(b.mlp.c_proj(a))
    return visual.ln_post(h[:, 0]) @ visual.proj


def test_indirect_ablation_equals_a_hand_written_forward() -> None:
    model = tiny_model(dtype=torch.float32)
    x, ref = images(5, dtype=torch.float32), images(7, seed=4, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(_manual_forward(model.visual, x, 1, lambda a: a),
                                   model.encode_image(x), atol=1e-5, rtol=1e-5)
        mean = reference_means(model, ref, [1])[0][1]  # [T, N]
        post = model.trace(ref, ["blocks.1.mlp.hook_post"])["blocks.1.mlp.hook_post"]
        torch.testing.assert_close(mean, post.mean(0))
        got = layer_ablated_embeddings(model, x, 1, mean)
        want = _manual_forward(model.visual, x, 1, lambda a: mean.expand_as(a))
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        # one neuron at a time, several per pass: each copy ablates its own neuron
        neurons = [0, 5, 17]
        eff = neuron_indirect_effects(model, x, 1, neurons, mean, neurons_per_pass=2)
        f = model.encode_image(x)
        for j, n in enumerate(neurons):
            def one(a, n=n):
                a = a.clone()
                a[:, :, n] = mean[:, n]
                return a
            torch.testing.assert_close(eff[j], f - _manual_forward(model.visual, x, 1, one),
                                       atol=1e-5, rtol=1e-4)


def test_pc1_variance() -> None:
    g = torch.Generator().manual_seed(0)
    line = torch.randn(1, 50, 1, generator=g) * torch.randn(1, 1, 8, generator=g)
    noise = torch.randn(1, 50, 8, generator=g)
    shares = pc1_variance(torch.cat([line + 3.0, noise]))
    assert shares[0] == pytest.approx(1.0) and 0.1 < shares[1] < 0.5
    vals = torch.linalg.svdvals(noise[0] - noise[0].mean(0))
    assert shares[1] == pytest.approx(float(vals[0] ** 2 / (vals**2).sum()))


# --- the command on a small random open_clip model with an ImageNet-style folder ------------
SYNSETS = ["n01440764", "n01443537", "n01484850"]  # tench, goldfish, great white shark


def _clip_model():
    import open_clip

    from solens.models.model import Model

    torch.manual_seed(0)
    clip = open_clip.CLIP(
        embed_dim=16,
        vision_cfg=open_clip.model.CLIPVisionCfg(layers=3, width=32, head_width=8,
                                                 image_size=32, patch_size=8),
        text_cfg=open_clip.model.CLIPTextCfg(context_length=77, vocab_size=49408, width=32,
                                             heads=2, layers=1),
    )
    from open_clip.transform import image_transform

    return Model.from_open_clip(clip, image_transform(32, is_train=False),
                                open_clip.get_tokenizer("ViT-B-32"), name="test-clip",
                                pretrained="random")


def _folder(root: Path, classes: list[str], per_class: int = 4, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.png")
    return root


WORDS = ["fish", "shark", "water", "red", "stripes", "boat", "sand", "dog", "cat", "tree",
         "sky", "car"]


def described_run(tmp: Path):
    """A small CLIP with random weights, a run of blocks 0-1 over 15 reference images in
    ``tmp/run`` and its descriptions over ``WORDS`` (``tmp/words.txt``): (model, run, pool,
    descriptions)."""
    from solens.describe.describe import describe_run
    from solens.store import run_effects

    model = _clip_model()
    ref = _folder(tmp / "ref", SYNSETS, per_class=5, seed=1)
    run = run_effects(model, ref, [0, 1], tmp / "run", batch_size=8, progress=False, workers=0)
    pool = tmp / "words.txt"
    pool.write_text("\n".join(WORDS))
    docs = describe_run(run, str(pool), model=model, n_terms=4, k=4)
    return model, run, pool, docs


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ablate")
    model, run, pool, _ = described_run(tmp)
    return {"model": model, "run": run, "eval": _folder(tmp / "eval", SYNSETS, seed=2),
            "tmp": tmp, "pool": pool}


def test_imagenet_path_end_to_end(env) -> None:
    from solens.experiments.ablate import VARIANTS, ablate_run
    from solens.experiments.classifier import class_directions, classifier_spec
    from solens.experiments.zeroshot import accuracy
    from solens.store.compute import default_preprocess
    from solens.store.images import FolderImages, class_indices, pixels

    model, run = env["model"], env["run"]
    res = ablate_run(run, env["eval"], model=model, k=4, pc_images=4, pc_neurons=3,
                     progress=False)
    spec = classifier_spec(FolderImages.scan(env["eval"]))
    assert spec.names == ("tench", "goldfish", "great white shark")
    assert len(spec.templates) == 80 and "80 OpenAI templates" in spec.source
    s = res.summary()
    assert s["layers"] == [0, 1] and set(VARIANTS) <= set(s)
    assert list(s["text_reconstruction"]) == ["words"]
    assert list(s["text_reconstruction"]["words"]) == ["1", "2", "4", "8", "16"]  # d = 16
    # the baseline and the second-order ablation, recomputed from materialised effects
    source = FolderImages.scan(env["eval"])
    x = pixels(source, default_preprocess(model))
    y = class_indices(source, spec.labels)
    texts = class_directions(model, spec)
    f = model.encode_image(x)
    assert s["baseline"] == pytest.approx(accuracy(f, y, texts))
    ref_x = pixels(run.images(), default_preprocess(model), run.row_candidates)
    for i, l in enumerate([0, 1]):
        phi_bar = second_order(model, ref_x, l).mean(0).sum(0)
        want = accuracy(f - second_order(model, x, l).sum(1) + phi_bar, y, texts)
        assert s["second_order"][i] == pytest.approx(want)
    out = run.path / "ablate"
    for name in ("ablate.md", "ablate.json", "fig3.png", "fig4.png", "layer-00.json"):
        assert (out / name).is_file()
    assert "capped at the embedding dimension (16)" in (out / "ablate.md").read_text()
    assert all(0.0 <= v <= 1.0 for r in res.layers for v in r.frac_significant)


def resume_after_layer_1_lost(monkeypatch, run, eval_set, **kw):
    """Delete ``ablate/layer-01.json`` (as if killed during layer 1), run ``ablate_run``
    again and return (the layers it recomputed, its result)."""
    from solens.experiments import ablate as A

    (run.path / "ablate" / "layer-01.json").unlink()
    done: list[int] = []
    real = A.ablate_layer

    def spy(model, run, layer, *a, **k):
        done.append(layer)
        return real(model, run, layer, *a, **k)

    monkeypatch.setattr(A, "ablate_layer", spy)
    return done, A.ablate_run(run, eval_set, **kw)


def test_resume_skips_finished_layers(env, monkeypatch) -> None:
    from solens.experiments import ablate as A

    kw = dict(model=env["model"], k=4, pc_images=4, pc_neurons=3, progress=False)
    first = A.ablate_run(env["run"], env["eval"], **kw)
    done, again = resume_after_layer_1_lost(monkeypatch, env["run"], env["eval"], **kw)
    assert done == [1]
    assert again.summary() == first.summary()
    with pytest.raises(InputError, match="other settings"):
        A.ablate_run(env["run"], env["eval"], **{**kw, "k": 3})


def test_bad_inputs(env, capsys) -> None:
    from solens.cli import main
    from solens.experiments.ablate import ablate_run

    other = _folder(env["tmp"] / "other", ["cats", "dogs"], per_class=1)
    with pytest.raises(InputError, match="not ImageNet synset ids; pass --classes"):
        ablate_run(env["run"], other, model=env["model"], progress=False)
    classes = env["tmp"] / "classes.json"
    classes.write_text(json.dumps({"classes": {"cats": "cat"}, "templates": ["a {}."]}))
    with pytest.raises(InputError, match="no class for folders dogs"):
        ablate_run(env["run"], other, model=env["model"], classes_file=classes, progress=False)
    empty = env["tmp"] / "empty"
    empty.mkdir()
    bare = env["tmp"] / "bare-run"
    from solens.store import run_effects

    run_effects(env["model"], env["eval"], [1], bare, batch_size=8, progress=False, workers=0)
    for argv, message in (
        (["ablate", str(env["run"].path), "--eval", str(empty)], "holds no images"),
        (["ablate", str(bare), "--eval", str(env["eval"])], "run `solens describe"),
        (["ablate", str(env["run"].path), "--eval", str(other)], "pass --classes FILE"),
    ):
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and message in err[0], err


def test_world_classifier_prompts_are_the_class_prompts() -> None:
    from solens.experiments.classifier import classifier_spec
    from solens.store.images import SynthImages
    from solens.synth.captions import class_prompts

    spec = classifier_spec(SynthImages("balanced", 3, 0, 64))
    assert [p[0] for p in spec.prompts()] == class_prompts()


def test_unit_rows_keeps_zero_rows() -> None:
    v = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    torch.testing.assert_close(unit_rows(v), torch.tensor([[0.6, 0.8], [0.0, 0.0]]))
    assert F.normalize(v, dim=-1)[0].allclose(unit_rows(v)[0])


def test_text_reconstructions_equal_omp_with_m_terms() -> None:
    """One OMP run and a least-squares refit per m give OMP's own m-term solutions."""
    from solens.describe.omp import omp, prepare_dictionary
    from solens.experiments.ablate import text_reconstructions

    g = torch.Generator().manual_seed(0)
    D, _ = prepare_dictionary(torch.randn(40, 12, generator=g))
    r = unit_rows(torch.randn(5, 12, generator=g, dtype=torch.float64))
    rec = text_reconstructions(D, r, [1, 3, 8])
    for m in (1, 3, 8):
        res = omp(D, r, m)
        want = torch.einsum("nm,nmd->nd", torch.as_tensor(res.coefs),
                            D.double()[torch.as_tensor(res.indices).clamp_min(0)])
        torch.testing.assert_close(rec[m], unit_rows(want), atol=1e-6, rtol=1e-5)
    # the reference pass: mean activations and mean direct effects
    model = tiny_model(dtype=torch.float32)
    ref = images(7, seed=4, dtype=torch.float32)
    act, direct = reference_means(model, ref, [0, 2], batch_size=3)
    post = model.trace(ref, ["blocks.2.mlp.hook_post"])["blocks.2.mlp.hook_post"]
    torch.testing.assert_close(act[2], post.mean(0))
    from solens.experiments.ablation import layer_effects

    want = layer_effects(model, model.trace(ref), [0], "direct")[:, 0].double().mean(0)
    torch.testing.assert_close(direct[0], want, atol=1e-5, rtol=1e-5)
