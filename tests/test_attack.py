"""solens.attack: word mining, prompts, the scene generator, the evaluation of an attack,
attribute discovery, and their commands (a small random CLIP on world scenes)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from solens.attack import discover as D
from solens.attack import evaluate as E
from solens.attack.generators import SceneGenerator, parse_prompt, scene_spec
from solens.attack.mining import (
    MinedWord,
    alignments,
    keep_words,
    nearest_words,
    pair_direction,
    random_neurons,
    rank1_directions,
    too_close,
    top_aligned,
    vote,
)
from solens.attack.prompts import draw_words, join_words, template_prompts
from solens.errors import InputError
from solens.lens import second_order
from solens.synth.render import render

from .helpers import run_cli
from .test_ablate import _clip_model


# --- mining (pure) ---------------------------------------------------------------------------
def test_pair_direction_and_alignments_by_hand() -> None:
    t1, t2 = torch.tensor([2.0, 0, 0]), torch.tensor([0, 3.0, 0])
    d = pair_direction(t1, t2)
    assert torch.allclose(d, torch.tensor([-1, 1, 0], dtype=torch.float64) / 2**0.5)
    r = torch.tensor([[0, 5.0, 0], [1.0, 0, 0], [0, 0, 0]])
    assert torch.allclose(alignments(r, d), torch.tensor([2**-0.5, -(2**-0.5), 0.0],
                                                         dtype=torch.float64))


def test_top_aligned_and_vote_by_hand() -> None:
    align = {0: torch.tensor([0.1, 0.9, -0.5]), 2: torch.tensor([0.9, 0.3])}
    top = top_aligned(align, 3)
    assert [(l, n) for l, n, _ in top] == [(0, 1), (2, 0), (2, 1)]
    terms = {(0, 1): [("sea", 0.5), ("red", -0.4)], (2, 0): [("sea", 0.2), ("sky", 0.1)],
             (2, 1): [("sky", 1.0)]}
    words = vote(top, terms)
    got = {w.text: w.score for w in words}
    assert got == pytest.approx({"sea": 0.9 * 0.5 + 0.9 * 0.2, "sky": 0.9 * 0.1 + 0.3 * 1.0})
    assert [w.text for w in words] == ["sea", "sky"]  # 0.63 > 0.39; red has a negative coef
    assert words[0].neurons[0][:2] == (0, 1)


def test_random_neurons_distinct_and_seeded() -> None:
    a = random_neurons({0: 5, 3: 4}, 6, seed=1)
    assert len({(l, n) for l, n, _ in a}) == 6 and all(w == 1.0 for *_, w in a)
    assert all((l == 0 and n < 5) or (l == 3 and n < 4) for l, n, _ in a)
    assert a == random_neurons({0: 5, 3: 4}, 6, seed=1) != random_neurons({0: 5, 3: 4}, 6, 2)


def test_filter_and_nearest_words() -> None:
    E_ = torch.tensor([[1.0, 0], [0.8, 0.6], [0, 1.0], [-1.0, 0]])
    texts = ["ship", "boat", "sea", "car"]
    target = torch.tensor([1.0, 0])
    assert too_close(texts, E_, target, 0.7) == {"ship", "boat"}
    assert too_close(texts, E_, target, 0.9, block=["SEA"]) == {"ship", "sea"}
    near = nearest_words(texts, E_, target, 3)
    assert [w.text for w in near] == ["ship", "boat", "sea"]
    kept = keep_words(near, {"ship"}, 5)
    assert [w.text for w in kept] == ["boat", "sea"]


def test_rank1_directions_match_svd() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 12, 5, generator=g, dtype=torch.float64)
    x[1] = 0  # no variation -> zero direction
    r = rank1_directions(x)
    for k in (0, 2):
        c = (x[k] - x[k].mean(0)).numpy()
        v = np.linalg.svd(c)[2][0]
        assert abs(abs(float(r[k].numpy() @ v)) - 1) < 1e-9
        proj = c @ r[k].numpy()
        assert (proj > 0).sum() >= (proj < 0).sum()
    assert torch.all(r[1] == 0)


# --- prompts -----------------------------------------------------------------------------------
def test_template_prompts_reproducible_and_use_the_words() -> None:
    words, scores = ["sea", "red", "sky"], [3.0, 1.0, 0.0]
    a = template_prompts("apple", words, scores, 20, seed=5)
    assert a == template_prompts("apple", words, scores, 20, seed=5)
    assert a != template_prompts("apple", words, scores, 20, seed=6)
    for p in a:
        assert "an apple" in p.text and len(p.words) == 2 and "sky" not in p.words
        assert all(w in p.text for w in p.words)
    assert template_prompts("car", [], [], 1, 0)[0].text == "a photo of a car"
    assert join_words(["a", "b", "c"]) == "a, b and c"


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0.01, 10), min_size=1, max_size=6), st.integers(1, 4),
       st.integers(0, 10**6))
def test_draw_words_distinct_and_positive(scores, k, seed) -> None:
    words = [f"w{i}" for i in range(len(scores))]
    got = draw_words(words, scores, k, np.random.default_rng(seed))
    assert len(got) == min(k, len(words)) and len(set(got)) == len(got)


# --- scene generator ---------------------------------------------------------------------------
def test_parse_prompt_concepts_and_unknown_words() -> None:
    found, unknown = parse_prompt("a photo of two red cars with a zebra on the brick wall")
    assert [(c.kind, c.id) for c in found] == [("count", "two"), ("colour", "red"),
                                                ("class", "car"), ("background", "brick")]
    assert unknown == ["zebra"]


def test_scene_spec_follows_the_prompt_and_is_reproducible() -> None:
    spec, unknown = scene_spec("a striped ship with a small fish in the ocean, zebra", 3, 7)
    assert unknown == ["zebra"]
    assert spec["background"]["name"] == "sea"
    assert [o["class"] for o in spec["objects"]] == ["ship", "fish"]
    assert spec["objects"][0]["pattern"] == "stripes" and spec["objects"][0]["size"] == "small"
    assert spec == scene_spec("a striped ship with a small fish in the ocean, zebra", 3, 7)[0]
    two, _ = scene_spec("three apples", 0, 0)
    assert [o["class"] for o in two["objects"]] == ["apple"] * 3
    g = SceneGenerator()
    a, b = g.generate(["a cow in the sky"], 1), g.generate(["a cow in the sky"], 1)
    assert np.array_equal(np.asarray(a[0].image), np.asarray(b[0].image))
    assert np.array_equal(np.asarray(a[0].image), np.asarray(render(a[0].spec).image))
    assert a[0].spec["objects"][0]["class"] == "cow" and a[0].spec["background"]["name"] == "sky"


def test_kept_filter_and_rate_stats() -> None:
    spec = {"objects": [{"class": "car"}, {"class": "fish"}]}
    assert E.kept(spec, "car", "ship") and not E.kept(spec, "car", "fish")
    assert not E.kept(spec, "cow", "ship") and E.kept(None, "cow", "ship")
    assert E.rate_stats([0.1, 0.3]) == pytest.approx((0.2, np.std([0.1, 0.3], ddof=1)))
    assert E.rate_stats([0.5]) == (0.5, 0.0)


def test_margins_by_hand() -> None:
    emb = torch.tensor([[1.0, 0], [0, 2.0]])
    texts = torch.tensor([[1.0, 0], [1.0, 1.0]])
    m = E.margins(emb, texts)
    assert torch.allclose(m, torch.tensor([2**-0.5 - 1, 2**-0.5], dtype=torch.float64))


def test_planted_context_and_neutral_values() -> None:
    assert E.planted_context("ship") == ("background", "sea")
    assert E.planted_context("apple") == ("colour", "red")
    assert E.planted_context("cup") is None
    assert E.neutral_values("background", "car", "ship") == ["sand", "snow", "brick", "wood"]
    assert "red" not in E.neutral_values("colour", "star", "apple")
    assert "yellow" not in E.neutral_values("colour", "star", "apple")  # star's own


def test_parse_pair() -> None:
    assert E.parse_pair("car:ship") == ("car", "ship")
    for bad in ("car", "car:car", ":ship", "a:b:c"):
        with pytest.raises(InputError):
            E.parse_pair(bad)


# --- the attack and discovery on a small random CLIP ---------------------------------------
@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from solens.describe.describe import describe_run
    from solens.describe.pools import load_pool
    from solens.store import run_effects

    tmp = tmp_path_factory.mktemp("attack")
    model = _clip_model()
    run = run_effects(model, "synth:balanced:24:3", [0, 1], tmp / "run", batch_size=12,
                      progress=False, workers=0)
    describe_run(run, load_pool("world"), model=model, n_terms=4, k=4, progress=False)
    bare = run_effects(model, "synth:balanced:8:3", [1], tmp / "bare", batch_size=8,
                       progress=False, workers=0)
    return {"model": model, "run": run, "bare": bare, "tmp": tmp}


KW = dict(k=4, n_neurons=4, n_words=4, n_images=6, repeats=2, indirect_images=2,
          reliance_images=4, progress=False)


def test_attack_outputs_and_rates(env) -> None:
    res = E.attack_pair(env["run"], "car:ship", model=env["model"], **KW)
    out = env["run"].path / "attack" / "car-ship"
    s = json.loads((out / "summary.json").read_text())
    assert s["format"] == "solens-attack" and s["pair"] == "car:ship"
    assert s["n_images"] == 6 and s["repeats"] == 2
    assert set(s["methods"]) == {"second_order", "random", "similar_words", "indirect"}
    rel = res.reliance
    assert rel is not None and s["reliance"] == pytest.approx(
        rel["accuracy_neutral"] - rel["accuracy_context"])
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert len(rows) == 4 * 2 * 6
    for m, d in s["methods"].items():
        assert len(d["rates"]) == 2
        assert (d["mean"], d["std"]) == pytest.approx(E.rate_stats(d["rates"]))
        for rep in range(2):
            mine = [r for r in rows if r["method"] == m and int(r["repeat"]) == rep]
            kept = [r for r in mine if r["kept"] == "1"]
            want = sum(r["success"] == "1" for r in kept) / len(kept) if kept else 0.0
            assert d["rates"][rep] == pytest.approx(want)
            assert all((float(r["margin"]) > 0) == (r["success"] == "1") for r in mine)
        assert all(w not in {"ship", "boat", "vessel"} for w in d["words"])
    # the margins are the binary zero-shot margins of the saved images' scenes
    part = json.loads((out / "parts" / "second_order-r0.json").read_text())
    imgs = SceneGenerator().generate([r["prompt"] for r in part["rows"]], 0 * 1000 + 0)
    from solens.experiments.classifier import class_directions, classifier_spec

    texts = class_directions(env["model"], E.binary_spec(classifier_spec(
        env["run"].images()), "car", "ship"))
    want = E.margins(E.embed_generated(env["model"], imgs), texts)
    assert [r["margin"] for r in part["rows"]] == pytest.approx(want.tolist(), abs=1e-5)
    assert (out / "prompts.txt").is_file() and len(list((out / "images").glob("*.png"))) == 48
    index = json.loads((env["run"].path / "attack" / "attack.json").read_text())
    assert "car:ship" in index["pairs"]


def test_fixed_seed_reproduces_images_and_scores(env, monkeypatch) -> None:
    kw = {**KW, "repeats": 1, "seed": 4}
    a = E.attack_pair(env["run"], "cow:bird", model=env["model"], restart=True, **kw)
    out = env["run"].path / "attack" / "cow-bird"
    png = (out / "images" / "second_order-r0-0003.png").read_bytes()
    scores = (out / "scores.csv").read_text()
    b = E.attack_pair(env["run"], "cow:bird", model=env["model"], restart=True, **kw)
    assert a.summary() == b.summary()
    assert (out / "images" / "second_order-r0-0003.png").read_bytes() == png
    assert (out / "scores.csv").read_text() == scores
    # resume: only the missing set is redone
    (out / "parts" / "random-r0.json").unlink()
    calls: list[str] = []
    real = E._one_set

    def spy(*args, **kwargs):
        calls.append(args[7])
        return real(*args, **kwargs)

    monkeypatch.setattr(E, "_one_set", spy)
    c = E.attack_pair(env["run"], "cow:bird", model=env["model"], **kw)
    assert calls == ["random"] and c.summary() == a.summary()
    with pytest.raises(InputError, match="other settings"):
        E.attack_pair(env["run"], "cow:bird", model=env["model"], **{**kw, "seed": 5})


def test_attack_bad_inputs(env, capsys) -> None:
    run, bare = str(env["run"].path), str(env["bare"].path)
    for argv, message in (
        (["attack", run, "--pair", "car:zebra"], "'zebra' is not in the classifier"),
        (["attack", run, "--pair", "car:car"], "must differ"),
        (["attack", run, "--pair", "car:ship", "--generator", str(env["tmp"] / "nope")],
         "no such folder"),
        (["attack", run, "--pair", "car:ship", "--generator", "someone/not-cached"],
         "not a model in the Hugging Face cache"),
        (["attack", run, "--pair", "car:ship", "--generator", str(env["tmp"])],
         "not a diffusers pipeline folder"),
        (["attack", bare, "--pair", "car:ship"], "run `solens describe"),
        (["discover", bare, "synth:balanced:2"], "run `solens describe"),
        (["discover", run, str(env["tmp"] / "missing.png")], "no such file"),
    ):
        code, _, err = run_cli(argv, capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and message in lines[0], (argv, err)


# --- discovery ---------------------------------------------------------------------------------
def test_word_scores_and_precision_by_hand() -> None:
    terms = {(0, 0): [("sea", 0.5), ("red", -0.2)], (1, 2): [("sea", 0.1), ("car", 1.0)]}
    ws = D.word_scores({0: np.array([2.0, 0.0]), 1: np.array([0.0, 0.0, 3.0])}, terms)
    got = {w["text"]: w["score"] for w in ws}
    assert got == pytest.approx({"sea": 1.0 + 0.3, "red": -0.4, "car": 3.0})
    assert [w["text"] for w in ws] == ["car", "sea", "red"]
    from solens.groundtruth.concepts import GT_KINDS, world_concepts

    cs = world_concepts(GT_KINDS)
    present = {i for i, c in enumerate(cs) if (c.kind, c.id) in {("class", "car"),
                                                                  ("background", "sea")}}
    # "small" names a size: not graded; "zebra" names nothing: wrong
    assert D.precision_at(["ocean", "small", "automobile", "zebra", "red", "cars", "x"],
                          present) == pytest.approx(3 / 5)
    assert D.precision_at(["small"], present) == 0.0
    v = D.significant_votes(torch.tensor([[1.0, 2.0], [3.0, 0.5]]), torch.tensor([1.5, 0.4]))
    assert torch.equal(v, torch.tensor([[0.0, 2.0], [3.0, 0.5]]))


def test_discover_matches_materialised_effects(env) -> None:
    from solens.describe.describe import load_descriptions
    from solens.describe.stats import stats_for
    from solens.store.compute import default_preprocess
    from solens.store.images import parse_synth, pixels

    model, run = env["model"], env["run"]
    doc = D.discover_images(run, ["synth:balanced:5:9"], model=model, k=4, n_words=50,
                            progress=False)
    assert doc["format"] == "solens-discover" and len(doc["images"]) == 5
    assert 0 <= doc["precision_at_5"] <= 1 and 0 <= doc["baseline"] <= 1
    x = pixels(parse_synth("synth:balanced:5:9"), default_preprocess(model))
    ref = pixels(run.images(), default_preprocess(model), run.row_candidates)
    descs = {l: load_descriptions(run, "world", l) for l in (0, 1)}
    for i in range(5):
        want: dict[str, float] = {}
        for l in (0, 1):
            phi = second_order(model, x, l)  # [B, N, d]
            bar = second_order(model, ref, l).mean(0)
            norms = (phi - bar).norm(dim=-1)[i]
            tau = torch.as_tensor(np.array(stats_for(run, l, 4).tau))
            for n in torch.nonzero(norms > tau.to(norms)).flatten().tolist():
                for t in descs[l].neurons[n].terms:
                    want[t.text] = want.get(t.text, 0.0) + t.coef * float(norms[n])
        got = {w["text"]: w["score"] for w in doc["images"][i]["words"]}
        assert got == pytest.approx({t: v for t, v in want.items() if v > 0}, rel=1e-4,
                                    abs=1e-6)
    # nearest-word baseline: cosine of f(I) with the pool's text embeddings
    emb = model.encode_image(x)
    from solens.describe.pools import embed_pool, load_pool

    pool = load_pool("world")
    cos = F.normalize(emb.double(), dim=-1) @ F.normalize(
        torch.from_numpy(np.asarray(embed_pool(model, pool))).double(), dim=-1).T
    assert doc["images"][0]["nearest"][0] == pool.texts[int(cos[0].argmax())]
    saved = json.loads((run.path / "discover" / "discover.json").read_text())
    assert saved["precision_at_5"] == doc["precision_at_5"]
    # image files
    env["tmp"].joinpath("img").mkdir(exist_ok=True)
    path = env["tmp"] / "img" / "scene.png"
    parse_synth("synth:balanced:1:9").load(0).save(path)
    D.discover_images(run, [str(path)], model=model, k=4, progress=False)
    saved = json.loads((run.path / "discover" / "discover.json").read_text())
    assert saved["precision_at_5"] is None and saved["images"][0]["image"] == str(path)
    assert [w["text"] for w in saved["images"][0]["words"]] == [
        w["text"] for w in doc["images"][0]["words"][:10]]


def test_words_of_minedword_dict() -> None:
    w = MinedWord("sea", 0.5, [(1, 2, 0.5)])
    assert w.to_dict() == {"text": "sea", "score": 0.5, "neurons": [[1, 2, 0.5]]}


@pytest.mark.slow
def test_commands_on_solens_tiny(tmp_path, capsys) -> None:
    """``solens attack`` and ``solens discover`` end to end on the bundled model."""
    from solens.describe.describe import describe_run
    from solens.describe.pools import load_pool
    from solens.models.loading import load_model
    from solens.store import run_effects

    model = load_model("solens-tiny")
    run = run_effects(model, "synth:balanced:60:5", [6], tmp_path / "run", progress=False,
                      workers=0)
    describe_run(run, load_pool("world"), model=model, n_terms=6, k=10, progress=False)
    code, out, err = run_cli(["attack", str(run.path), "--pair", "ship:car", "--k", "10",
                              "--n", "4", "--repeats", "2", "--indirect-images", "2",
                              "--reliance-images", "4", "--no-progress"], capsys)
    assert code == 0, err
    assert "ship:car: second-order" in out
    s = json.loads((run.path / "attack" / "ship-car" / "summary.json").read_text())
    assert s["repeats"] == 2 and s["reliance"] is not None
    code, out, err = run_cli(["discover", str(run.path), "synth:balanced:6:1", "--k", "10",
                              "--no-progress"], capsys)
    assert code == 0 and "precision@5" in out, err


def test_demo_report_lines() -> None:
    from solens.attack.showcase import report_lines

    attack = {"ship:car": {"second_order": [0.25, 0.05], "random": [0.1, 0.0],
                           "similar_words": [0.0, 0.0], "indirect": [0.2, 0.1],
                           "reliance": 0.12}}
    detail = {"words": {"second_order": ["highway", "clock"]}, "n_images": 20, "repeats": 2,
              "layers": [6], "discover": {"n": 100, "images": "synth:balanced:100:1",
                                          "example": None}}
    lines = report_lines(attack, {"precision_at_5": 0.3, "baseline": 0.5}, detail)
    text = "\n".join(lines)
    assert "| second_order | 25.0 ± 5.0 | highway, clock |" in text
    assert "+12.0 points" in text and "2 repeats x 20 scenes" in text
    assert "100 scenes (`synth:balanced:100:1`): 30.0%" in text and "50.0%" in text
    assert report_lines(None, None, None) == []
