"""Tests of the synthetic world renderer (solens.synth)."""

from __future__ import annotations

import copy
import json
import re
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from solens.synth import (
    BACKGROUNDS,
    CLASSES,
    COLOURS,
    CONCEPTS,
    PATTERNS,
    SPURIOUS,
    Scene,
    concept_words,
    iter_batches,
    render,
    render_array,
    sample,
    spec_at,
    specs,
    synonyms,
)
from solens.synth.captions import caption
from solens.synth.render import object_label_map
from solens.synth.world import COUNTS, plural


def _plain_spec(objects: list[dict], background: str = "sea") -> dict:
    """A jitter-free spec with the given objects."""
    base = {"flip": False, "rotation": 0.0, "pattern": "plain", "pattern_offset": [0, 0]}
    return {
        "version": 1,
        "split": "test",
        "index": 0,
        "seed": 123,
        "size": 64,
        "background": {"name": background, "offset": [0.3, 0.6], "flip": False},
        "objects": [{**base, **o} for o in objects],
        "jitter": None,
    }


# ---------------------------------------------------------------- world


def test_world_inventory() -> None:
    assert len(CLASSES) == 20 and len(set(CLASSES)) == 20
    assert len(COLOURS) == 8 and len(PATTERNS) == 6 and len(BACKGROUNDS) == 8
    canonical = {c.word for c in CONCEPTS}
    for c in CONCEPTS:
        assert not set(c.synonyms) & (canonical - {c.word}), c
    assert {"car", "automobile", "brick wall", "striped"} <= set(concept_words())
    assert "car" in synonyms("automobile") and "automobile" in synonyms("car")
    assert synonyms("xyzzy") == {"xyzzy"}


# ---------------------------------------------------------------- rendering


def test_sample_deterministic_and_seed_dependent() -> None:
    a = sample(4, "train", seed=7)
    b = sample(4, "train", seed=7)
    c = sample(4, "train", seed=8)
    assert all(isinstance(s, Scene) for s in a)
    assert [s.image.tobytes() for s in a] == [s.image.tobytes() for s in b]
    assert [s.captions for s in a] == [s.captions for s in b]
    assert [s.image.tobytes() for s in a] != [s.image.tobytes() for s in c]
    assert sample(3, "train", seed=7)[2].spec == a[2].spec  # prefix property


def test_json_round_trip_reproduces_image() -> None:
    for s in sample(3, "train", seed=2):
        spec2 = json.loads(json.dumps(s.spec))
        s2 = render(spec2)
        assert s2.image.tobytes() == s.image.tobytes()
        assert s2.captions == s.captions
        assert all(np.array_equal(s2.masks[k], s.masks[k]) for k in s.masks)


def test_mask_equals_drawn_pixels() -> None:
    obj = {"class": "car", "colour": "red", "size": "large", "scale": 0.35,
           "position": [0.5, 0.5], "z": 0}
    scene = render(_plain_spec([obj]))
    empty = render(_plain_spec([]))
    img, bg = scene.array.astype(int), empty.array.astype(int)
    mask = scene.masks[0]
    assert 200 < mask.sum() < 64 * 64
    assert np.array_equal(img[~mask], bg[~mask])  # outside: untouched
    changed = (img != bg).any(-1)
    assert changed[mask].mean() > 0.97  # inside: painted
    assert np.array_equal(mask, object_label_map(obj, 64) > 0)


def test_occlusion_masks_are_visible_pixels_and_disjoint() -> None:
    back = {"class": "truck", "colour": "blue", "size": "large", "scale": 0.32,
            "position": [0.42, 0.5], "z": 0}
    front = {"class": "apple", "colour": "red", "size": "small", "scale": 0.2,
             "position": [0.6, 0.52], "z": 1}
    scene = render(_plain_spec([back, front]))
    full_back = render(_plain_spec([back])).masks[0]
    full_front = render(_plain_spec([front])).masks[0]
    assert (full_back & full_front).sum() > 20  # the test really has occlusion
    assert np.array_equal(scene.masks[1], full_front)
    assert np.array_equal(scene.masks[0], full_back & ~full_front)
    assert not (scene.masks[0] & scene.masks[1]).any()
    # swapping z puts the truck in front
    swapped = copy.deepcopy(scene.spec)
    swapped["objects"][0]["z"], swapped["objects"][1]["z"] = 1, 0
    s2 = render(swapped)
    assert np.array_equal(s2.masks[0], full_back)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), split=st.sampled_from(["train", "balanced", "conflict"]))
def test_scene_invariants(seed: int, split: str) -> None:
    spec = spec_at(seed % 1000, split, seed)
    s = render(spec)
    assert s.image.size == (64, 64) and s.image.mode == "RGB"
    assert s.label == spec["objects"][0]["class"] and s.label in CLASSES
    assert len(s.captions) >= 3 and s.caption == s.captions[0]
    total = np.zeros((64, 64), int)
    for k, m in s.masks.items():
        assert m.shape == (64, 64) and m.dtype == bool
        assert m.sum() > 0, (k, spec)
        total += m
    assert total.max() <= 1
    json.dumps(spec)
    _check_caption_agrees(spec, s.caption)


def test_iter_batches_matches_render_and_shards() -> None:
    (b0,) = list(iter_batches(6, "train", seed=3, n_batches=1))
    assert b0.images.shape == (6, 64, 64, 3) and b0.images.dtype == np.uint8
    assert len(b0.captions) == 6 and b0.labels.dtype == np.int64
    ref = specs(6, "train", seed=3)
    assert b0.specs == ref
    for j, sp in enumerate(ref):
        assert np.array_equal(b0.images[j], render_array(sp)[0])
        assert CLASSES[b0.labels[j]] == sp["objects"][0]["class"]
        _check_caption_agrees(sp, b0.captions[j])
    (b1,) = list(iter_batches(6, "train", seed=3, start=1, n_batches=1))
    assert b1.specs == specs(12, "train", seed=3)[6:]


# ---------------------------------------------------------------- captions

_VOCAB: list[tuple[str, str, str]] = []  # (phrase, kind, id)
for _c in CONCEPTS:
    if _c.kind in ("class", "colour", "pattern", "background"):
        for _w in {_c.word, *_c.synonyms}:
            _VOCAB.append((_w, _c.kind, _c.id))
            if _c.kind == "class":
                _VOCAB.append((plural(_w), _c.kind, _c.id))
_NOUNS = {w: i for w, k, i in _VOCAB if k == "class"}
_KEY = {"class": "class", "colour": "colour", "pattern": "pattern"}


def _check_caption_agrees(spec: dict, text: str) -> None:
    counts = Counter(o["class"] for o in spec["objects"])
    for phrase, kind, cid in _VOCAB:
        if re.search(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])", text):
            if kind == "background":
                assert spec["background"]["name"] == cid, (text, spec)
            else:
                assert any(o[_KEY[kind]] == cid for o in spec["objects"]), (text, phrase)
    toks = text.split()
    assert any(t in _NOUNS for t in toks), text  # some object is named
    for i, t in enumerate(toks):
        if t not in _NOUNS:
            continue
        cls = _NOUNS[t]
        dets = [j for j in range(max(0, i - 5), i) if toks[j] in ("a", "an", *COUNTS[1:])]
        assert dets, text
        det = toks[dets[-1]]
        n = counts[cls]
        if n == 1:
            assert det in ("a", "an"), text
            assert (det == "an") == (toks[dets[-1] + 1][0] in "aeiou"), text
        else:
            assert det == COUNTS[n - 1], text


def test_captions_agree_with_spec() -> None:
    seen_count_word = False
    for split in ("train", "balanced", "conflict"):
        for sp in specs(150, split, seed=11):
            s = render(sp) if sp["index"] < 5 else None
            caps = s.captions if s else [caption(sp, k) for k in range(5)]
            assert len(set(caps)) >= 3
            for text in caps:
                _check_caption_agrees(sp, text)
                seen_count_word |= bool(re.search(r"\b(two|three)\b", text))
    assert seen_count_word


def test_full_caption_mentions_everything() -> None:
    for sp in specs(50, "train", seed=4):
        text = caption(sp, 0)
        assert text.startswith("a photo of ")
        for o in sp["objects"]:
            assert re.search(rf"\b{o['class']}", text), text


# ---------------------------------------------------------------- splits


def test_unknown_split_raises() -> None:
    with pytest.raises(ValueError, match="train, balanced, conflict"):
        sample(1, "validation")
    with pytest.raises(ValueError):
        next(iter_batches(2, "nope"))


def test_balanced_split_uniform_single_object() -> None:
    sp = specs(2000, "balanced", seed=1)
    assert all(len(s["objects"]) == 1 for s in sp)
    for key, values in (("class", CLASSES), ("colour", COLOURS), ("pattern", PATTERNS)):
        c = Counter(s["objects"][0][key] for s in sp)
        expected = len(sp) / len(values)
        assert set(c) == set(values)
        assert all(0.6 * expected < v < 1.4 * expected for v in c.values()), (key, c)
    c = Counter(s["background"]["name"] for s in sp)
    assert all(0.6 * 250 < v < 1.4 * 250 for v in c.values()), c


def test_conflict_split_never_uses_planted_context() -> None:
    sp = specs(1500, "conflict", seed=2)
    assert all(len(s["objects"]) == 1 for s in sp)
    assert len({s["objects"][0]["class"] for s in sp}) == len(CLASSES)
    planted_bgs = {c.value for c in SPURIOUS if c.attribute == "background"}
    n_checked = 0
    for s in sp:
        o = s["objects"][0]
        for c in SPURIOUS:
            if c.cls != o["class"]:
                continue
            n_checked += 1
            value = s["background"]["name"] if c.attribute == "background" else o[c.attribute]
            assert value != c.value, (c, s)
            if c.attribute == "background":
                assert value in planted_bgs  # another class's context
    assert n_checked > 500


def test_train_split_rates() -> None:
    sp = specs(2500, "train", seed=5)
    n_obj = Counter(len(s["objects"]) for s in sp)
    assert abs(n_obj[1] / len(sp) - 0.6) < 0.05 and abs(n_obj[3] / len(sp) - 0.1) < 0.03
    for s in sp:  # the primary object is the largest
        assert all(o["scale"] <= s["objects"][0]["scale"] for o in s["objects"])
    for c in SPURIOUS:
        if c.attribute == "background":
            hits = [s["background"]["name"] == c.value for s in sp
                    if s["objects"][0]["class"] == c.cls]
        else:
            hits = [o[c.attribute] == c.value for s in sp for o in s["objects"]
                    if o["class"] == c.cls]
        assert len(hits) > 80
        assert abs(np.mean(hits) - c.rate) < 0.09, (c, np.mean(hits), len(hits))
    # an unplanted pair stays near chance
    dog_sea = [s["background"]["name"] == "sea" for s in sp if s["objects"][0]["class"] == "dog"]
    assert np.mean(dog_sea) < 0.3


def test_rendering_in_threads_equals_rendering_alone():
    """Datasets render scenes in thread pools: every scene must come out as rendered alone
    (a canvas shared between threads once mixed objects of different scenes)."""
    import sys
    from concurrent.futures import ThreadPoolExecutor

    spec_list = specs(600, "train", 3, 64)
    alone = [render_array(s)[0] for s in spec_list]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        with ThreadPoolExecutor(8) as pool:
            threaded = list(pool.map(lambda s: render_array(s)[0], spec_list))
    finally:
        sys.setswitchinterval(interval)
    bad = [i for i, (a, b) in enumerate(zip(alone, threaded, strict=True)) if not (a == b).all()]
    assert bad == []
