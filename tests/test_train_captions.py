"""Facet captions of the training loop: closed set, faithful to the scene."""

from __future__ import annotations

import random

import pytest

from solens.synth import specs
from solens.synth.captions import facet_caption, facet_pool
from solens.synth.world import concept


def _word(cls: str) -> str:
    return concept("class", cls).word


@pytest.mark.parametrize("pair_frac", [0.0, 0.5, 1.0])
def test_facet_captions_are_in_the_pool_and_name_scene_classes(pair_frac: float) -> None:
    pool = set(facet_pool())
    rng = random.Random(3)
    n_pairs = 0
    for spec in specs(400, "train", seed=7):
        cap = facet_caption(spec, rng, 0.15, pair_frac)
        assert cap in pool, cap
        classes = {_word(o["class"]) for o in spec["objects"]}
        if " and " in cap:
            n_pairs += 1
            first, second = cap.removeprefix("a photo of ").split(" and ")
            assert first.split(" ", 1)[1] == _word(spec["objects"][0]["class"])
            assert second.split(" ", 1)[1] in classes - {first.split(" ", 1)[1]}
    multi = sum(len({o["class"] for o in s["objects"]}) > 1 for s in specs(400, "train", seed=7))
    if pair_frac == 0.0:
        assert n_pairs == 0
    elif pair_frac == 1.0:
        assert n_pairs == multi > 0
    else:
        assert 0 < n_pairs < multi
