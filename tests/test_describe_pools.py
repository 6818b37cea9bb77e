"""Text pools and the text-embedding cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from solens.describe.pools import (
    BUILTIN_POOLS,
    cache_root,
    embed_pool,
    frequent_words,
    load_pool,
    make_pool,
)
from solens.errors import InputError
from solens.models.model import Model, ModelInfo


def test_builtin_pools() -> None:
    w = load_pool("words-10k")
    assert len(w) == 10_000 and w.texts[0] == "the"
    assert all(t.isascii() and t.isalpha() and len(t) >= 2 for t in w.texts)
    assert load_pool("words-30k").texts[:10_000] == w.texts
    cls = load_pool("imagenet-classes")
    assert cls.texts[:2] == ("tench", "goldfish") and len(cls) == 998  # 2 duplicate names
    desc = load_pool("imagenet-descriptions")
    assert len(desc) > 100_000 and desc.texts[0].startswith("A tench")
    world = load_pool("world")
    assert {"ship", "vessel", "red", "crimson"} <= set(world.texts)
    assert set(BUILTIN_POOLS) == {"words-30k", "words-10k", "imagenet-classes",
                                  "imagenet-descriptions", "world"}
    assert frequent_words(5) == ["the", "to", "and", "of", "in"]


def test_file_pool_and_errors(tmp_path) -> None:
    f = tmp_path / "my pool.txt"
    f.write_text("dog\n  cat \n\ndog\nred car\n")
    p = load_pool(f)
    assert p.texts == ("dog", "cat", "red car") and p.name == "my_pool"
    assert p.content_hash == make_pool("x", ["dog", "cat", "red car"]).content_hash
    with pytest.raises(InputError, match="unknown text pool"):
        load_pool("no-such-pool")
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(InputError, match="empty"):
        load_pool(tmp_path / "empty.txt")


class CountingText:
    """A fake text encoder: deterministic random vectors per text; counts calls."""

    def __init__(self, d: int = 8) -> None:
        self.d, self.calls = d, 0

    def encode(self, texts):
        self.calls += 1
        out = []
        for t in texts:
            g = torch.Generator().manual_seed(abs(hash(t)) % 2**31)
            out.append(torch.randn(self.d, generator=g))
        return torch.stack(out)


class FakeModel:
    text_identity = Model.text_identity  # the cache key embed_pool uses

    def __init__(self, quick_gelu: bool = False) -> None:
        self.text = CountingText()
        self.owner = None
        self.info = ModelInfo("fake", None, quick_gelu, 32, 8, 2, 2, 8, 32, 8, 17)

    def encode_text(self, texts):
        return self.text.encode(texts)


def test_embedding_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SOLENS_CACHE", str(tmp_path / "cache"))
    assert cache_root() == tmp_path / "cache" / "text"
    pool = make_pool("p", [f"w{i}" for i in range(10)])
    m = FakeModel()
    a = embed_pool(m, pool, batch_size=4)
    assert a.shape == (10, 8) and a.dtype == np.float32 and m.text.calls == 3
    b = embed_pool(m, pool)
    assert m.text.calls == 3 and np.array_equal(a, b)  # served from the cache
    assert len(list(cache_root().glob("*.npy"))) == 1
    assert not list(cache_root().glob("*.tmp"))
    q = FakeModel(quick_gelu=True)  # another model identity: not the same entry
    embed_pool(q, pool)
    assert q.text.calls == 1 and len(list(cache_root().glob("*.npy"))) == 2
    embed_pool(m, make_pool("p2", ["other"]))
    assert len(list(cache_root().glob("*.npy"))) == 3
