"""Ground-truth scoring on constructed cases where the answer is known."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from solens.errors import InputError
from solens.groundtruth.baselines import (
    chance_hit,
    direct_directions,
    dissect_terms,
    omp_terms,
    pearson_scores,
    text_similarities,
)
from solens.groundtruth.concepts import (
    bh_adjust,
    concept_groups,
    concept_presence,
    ground_truth,
    planted_pair,
    world_concepts,
)
from solens.groundtruth.matching import Matcher, term_matches
from solens.groundtruth.score import description_terms, score_neurons, summary
from solens.synth.world import concept

from .helpers import images, tiny_model

CONCEPTS = world_concepts()
KEY = {(c.kind, c.id): j for j, c in enumerate(CONCEPTS)}


def spec(cls: str, colour: str = "red", pattern: str = "plain", bg: str = "grass") -> dict:
    return {"background": {"name": bg},
            "objects": [{"class": cls, "colour": colour, "pattern": pattern, "size": "small"}]}


def world(n: int = 400, seed: int = 0) -> list[dict]:
    """Random one-object scenes with uniform attributes."""
    from solens.synth.world import BACKGROUNDS, CLASSES, COLOURS, PATTERNS

    rng = np.random.default_rng(seed)
    pick = lambda xs: xs[int(rng.integers(len(xs)))]  # noqa: E731
    return [spec(pick(CLASSES), pick(COLOURS), pick(PATTERNS), pick(BACKGROUNDS))
            for _ in range(n)]


def test_concept_presence_any_object_and_background() -> None:
    s = spec("ship", "blue", "stripes", "sea")
    s["objects"].append({"class": "car", "colour": "red", "pattern": "dots", "size": "large"})
    X = concept_presence([s, spec("cow")], CONCEPTS)
    on = {CONCEPTS[j].id for j in np.flatnonzero(X[0])}
    assert on == {"ship", "car", "blue", "red", "stripes", "dots", "sea"}
    assert X[1].sum() == 4  # cow, red, plain, grass


def test_bh_against_hand_computation() -> None:
    p = np.array([[0.01, 0.04], [0.03, 0.005]])
    # sorted 0.005, 0.01, 0.03, 0.04 -> p*m/rank = 0.02, 0.02, 0.04, 0.04 (already monotone)
    assert np.allclose(bh_adjust(p), [[0.02, 0.04], [0.04, 0.02]])
    p2 = np.array([0.01, 0.02, 0.021, 0.5])  # 0.04, 0.04, 0.028, 0.5 -> min to the right
    assert np.allclose(bh_adjust(p2), [0.028, 0.028, 0.028, 0.5])
    from scipy.stats import false_discovery_control

    r = np.random.default_rng(0).random(57) ** 3
    assert np.allclose(bh_adjust(r), false_discovery_control(r))


def test_hypergeometric_pvalue_by_hand() -> None:
    """10 images, 3 with the concept; top-2 both have it: p = C(3,2)/C(10,2)."""
    specs = [spec("ship" if i < 3 else "cow") for i in range(10)]
    X = concept_presence(specs, CONCEPTS)
    gt = ground_truth(X, np.array([[0, 1]]), CONCEPTS, alpha=1.0)
    j = KEY[("class", "ship")]
    assert gt.p[0, j] == pytest.approx(math.comb(3, 2) / math.comb(10, 2))
    assert gt.enrichment[0, j] == pytest.approx(1.0 / 0.3)
    assert gt.n_tests == int((X.sum(0) > 0).sum())


def test_ship_neuron_is_selective_for_ship_only() -> None:
    specs = world(400)
    X = concept_presence(specs, CONCEPTS)
    ships = np.flatnonzero(X[:, KEY[("class", "ship")]])
    rng = np.random.default_rng(1)
    top = np.stack([ships[:12], rng.permutation(400)[:12]])  # ship neuron, random neuron
    gt = ground_truth(X, top, CONCEPTS)
    assert [CONCEPTS[j].id for j in gt.neuron_concepts(0)] == ["ship"]
    assert gt.selective.tolist() == [True, False]


def test_term_matching() -> None:
    ship, brick = concept("class", "ship"), concept("background", "brick")
    assert term_matches("vessel", ship) and term_matches("Boats", ship)
    assert term_matches("a ship at sea", ship) and not term_matches("shipping", ship)
    assert term_matches("brick wall", brick) and term_matches("wall of bricks", brick)
    assert not term_matches("wall", brick)
    assert term_matches("red", concept("colour", "red"))
    assert term_matches("crimson", concept("colour", "red"))
    assert term_matches("polka-dot", concept("pattern", "dots"))
    m = Matcher(CONCEPTS)
    assert {CONCEPTS[j].id for j in m("a red cup")} == {"red", "cup"}


def test_synonym_in_description_is_a_hit() -> None:
    specs = world(400)
    X = concept_presence(specs, CONCEPTS)
    ships = np.flatnonzero(X[:, KEY[("class", "ship")]])[:12]
    cows = np.flatnonzero(X[:, KEY[("class", "cow")]])[:12]
    top = np.stack([ships, cows])
    terms = {"second_order": [["vessel", "x", "y"], ["dog", "car", "z", "w", "v", "calf"]],
             "other": [["cow"], ["cow"]]}
    out = score_neurons(X, CONCEPTS, top, terms, pool_texts=["vessel", "cow", "x", "y"])
    assert out["n_selective"] == 2
    assert out["hit_rate"] == 0.5  # "calf" is 6th: outside the top 5
    assert out["hit_rate_top10"]["second_order"] == 1.0
    assert out["baselines"]["other"] == 0.5
    assert out["baselines"]["chance"] == pytest.approx(1.0)  # 5 of 4 texts: always a hit
    assert out["neurons"][0]["hit"] == {"second_order": True, "other": False}
    sea = score_neurons(X, CONCEPTS, top[:1], {"second_order": [["ocean"]]})  # ship's partner
    assert sea["hit_rate"] == 0.0 and sea["hit_rate_planted"]["second_order"] == 1.0
    assert set(summary(out)) == {"hit_rate", "baselines", "polysemy", "n_selective"}


def test_polysemy_two_disjoint_groups() -> None:
    specs = [spec("ship", "red", "plain", "road") for _ in range(10)] + [
        spec("cow", "blue", "stripes", "snow") for _ in range(10)] + world(300)
    X = concept_presence(specs, CONCEPTS)
    top = np.arange(20)[None]
    terms = {"second_order": [["boat", "calf", "red"]]}
    out = score_neurons(X, CONCEPTS, top, terms)
    row = out["neurons"][0]
    assert out["polysemy"] == 1.0 and row["polysemantic"]
    groups = {frozenset(g) for g in row["groups"]}
    # each half's concepts co-occur (Jaccard 1); the halves never do
    assert len(groups) == 2
    assert any({"class:ship", "colour:red", "background:road"} <= g for g in groups)
    assert any({"class:cow", "colour:blue", "background:snow"} <= g for g in groups)
    assert out["polysemy_named_both"] == 1.0
    assert out["polysemy_strict"] == 1.0  # groups led by two classes (or class+other)
    # a concept spanning both halves (here: red on every object) joins them into one group
    specs2 = [spec("ship", bg="road") for _ in range(10)] + [
        spec("cow", bg="snow") for _ in range(10)] + world(300)
    out2 = score_neurons(concept_presence(specs2, CONCEPTS), CONCEPTS, top, terms)
    assert out2["polysemy"] == 0.0


def test_groups_jaccard_and_planted_pairs() -> None:
    ship, sea, cow = concept("class", "ship"), concept("background", "sea"), concept("class", "cow")
    assert planted_pair(ship, sea) and planted_pair(sea, ship) and not planted_pair(ship, cow)
    P = np.zeros((20, 3), bool)
    P[:10, 0] = True  # ship in the first half, sea only in the second half
    P[10:, 1] = True
    P[10:, 2] = True  # cow with sea
    assert concept_groups(P, [ship, sea, cow]) == [[0, 1, 2]]  # ship-sea planted, sea-cow J=1
    assert len(concept_groups(P[:, [0, 2]], [ship, cow])) == 2
    assert concept_groups(P[:, [0, 2]], [ship, cow], min_share=0.6) == []


def test_dissect_picks_the_text_whose_profile_matches() -> None:
    rng = np.random.default_rng(0)
    img, txt = rng.normal(size=(300, 16)), rng.normal(size=(12, 16))
    sims = text_similarities(img, txt)
    acts = np.stack([sims[:, 7] * 3 + 0.02 * rng.normal(size=300),
                     -sims[:, 2] + 0.02 * rng.normal(size=300), np.ones(300)], 1)
    scores = pearson_scores(acts, sims)
    assert scores.shape == (3, 12)
    assert np.allclose(scores[0, 7], 1.0, atol=1e-2) and np.all(scores[2] == 0)
    texts = [f"t{i}" for i in range(12)]
    top = dissect_terms(scores, texts, 5)
    assert top[0][0] == "t7" and "t2" not in top[1]
    assert np.allclose(pearson_scores(acts[:, :1], sims)[0],
                       [np.corrcoef(acts[:, 0], sims[:, j])[0, 1] for j in range(12)])


def test_omp_terms_recover_planted_texts() -> None:
    from solens.describe.omp import prepare_dictionary

    rng = np.random.default_rng(0)
    E = rng.normal(size=(30, 24))
    D, _ = prepare_dictionary(E)
    texts = [f"t{i}" for i in range(30)]
    target = 2 * D[4] + 0.5 * D[9] - 1.0 * D[11]
    t = omp_terms(target[None].double(), E, texts, n_terms=3)[0]
    assert t == ["t4", "t11", "t9"]
    assert omp_terms(target[None].double(), E, texts, n_terms=3, order="positive")[0] == [
        "t4", "t9"]


def test_direct_directions_match_direct_contributions() -> None:
    from solens.lens.direct import direct_contributions

    model = tiny_model()
    tr = model.trace(images(3))
    got = direct_contributions(model, tr)["blocks.2.mlp.neurons"]  # [B, N, d]
    post = tr["blocks.2.mlp.hook_post"][:, 0]
    inv = 1 / tr["ln_post.hook_scale"]
    want = post[..., None] * direct_directions(model, 2)[None] * inv[:, None, None]
    torch.testing.assert_close(got, want)


def test_description_forms_and_chance() -> None:
    """Two forms only: a `solens describe` document, or neuron -> texts; nothing is guessed."""
    assert description_terms({0: ["ship", "sea"], 2: ["cow"]}) == {0: ["ship", "sea"], 2: ["cow"]}
    for bad in ({"0": [[3, 0.5, "ship"]]}, {"neurons": [{"neuron": 0, "terms": [{"text": "a"}]}]},
                [["a"], ["b"]]):
        with pytest.raises(InputError):
            description_terms(bad)
    assert chance_hit(10, 2, 5) == pytest.approx(1 - math.comb(8, 5) / math.comb(10, 5))
    assert chance_hit(10, 0, 5) == 0.0


def test_score_layer_end_to_end_on_a_small_synth_run(tmp_path) -> None:
    """Tiny random model over 24 rendered scenes: every piece runs and the images re-render
    to the stored embeddings."""
    from solens.describe.pools import make_pool
    from solens.groundtruth.score import score_layer, score_run
    from solens.store import run_effects
    from solens.store.protocol import DescriptionsDoc, NeuronDescription, PoolRecord, Term
    from solens.synth.world import concept_words

    model = tiny_model(dtype=torch.float32)
    run = run_effects(model, "synth:balanced:24:0:32", [1, 2], tmp_path / "run",
                      batch_size=8, progress=False, workers=0)
    pool = make_pool("world", concept_words())
    emb = np.random.default_rng(0).normal(size=(len(pool), 16)).astype(np.float32)
    out = score_layer(run, 2, None, model, pool, k=6, pool_embeddings=emb, alpha=0.5,
                      min_enrichment=1.5)
    assert out["embedding_check_max_rel_diff"] < 1e-4
    assert out["n_neurons"] == model.info.d_mlp and len(out["neurons"]) == model.info.d_mlp
    assert set(out["baselines"]) == {"direct", "dissect", "chance"}
    assert all(len(r["terms"]["direct"]) > 0 for r in out["neurons"])
    doc = DescriptionsDoc(
        run_id=run.run_id, layer=2, pool=PoolRecord("world", "", len(pool), pool.content_hash),
        method="nnomp", n_terms=3,
        neurons=[NeuronDescription(n, [Term("sea", 0, 1.0)], 1.0, 0.0, 0.0, 0.0, 0.0, [])
                 for n in range(model.info.d_mlp)])  # fmt: skip
    given = score_layer(run, 2, doc, model, pool, k=6, pool_embeddings=emb)
    assert given["settings"]["omp_terms"] == 3 and given["settings"]["nonneg"] is True
    assert all(r["terms"]["second_order"] == ["sea"] for r in given["neurons"])
    with pytest.raises(InputError, match="layer 1 given for layer 2"):
        score_layer(run, 2, dataclasses.replace(doc, layer=1), model, pool, k=6,
                    pool_embeddings=emb)
    with pytest.raises(InputError, match="descriptions of run other"):
        score_layer(run, 2, dataclasses.replace(doc, run_id="other"), model, pool, k=6,
                    pool_embeddings=emb)
    allr = score_run(run, None, None, model, pool, k=6, pool_embeddings=emb, alpha=0.5,
                     min_enrichment=1.5)
    assert set(allr["layers"]) == {"1", "2"}
    assert allr["n_selective"] == sum(r["n_selective"] for r in allr["layers"].values())
