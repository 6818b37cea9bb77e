"""``solens discover``: words that describe an image, voted by its significant neurons
(METHOD §5.7).

For an image I and every described layer of a run, the neurons whose centred second-order
norm ``||phi_n(I) - phi_bar_n||`` exceeds their threshold tau_n (the run's statistics)
vote for the terms of their descriptions with ``coefficient x centred norm``; a word's
score is the sum of its votes, and the ranked words describe the image.

On the synthetic world the ground truth of a scene is known: precision@5 is the fraction
of the top 5 words that name a concept the scene shows (its classes, colours, patterns and
background). Words that name only a size or a count are not graded (the ground truth
has no such kind) and are skipped when ranking; words that name nothing count as wrong.
The baseline ranks the pool's texts by the cosine of their text embedding with the image
embedding f(I).

Output: ``RUN/discover/discover.json`` (format ``solens-discover``), ``discover.md`` and
``manifest.json``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from tqdm.auto import tqdm

from solens.attack.evaluate import described_pool, load_described_pool
from solens.attack.mining import terms_of
from solens.describe.describe import load_descriptions
from solens.describe.pools import embed_pool
from solens.describe.stats import stats_for
from solens.errors import InputError
from solens.experiments.factorised import centred, centred_norms
from solens.groundtruth.concepts import GT_KINDS, concept_presence, world_concepts
from solens.groundtruth.matching import Matcher
from solens.lens.second_order import coefficients, gram, trace_names
from solens.models.model import Model
from solens.store.arrays import save_json_atomic, save_text_atomic
from solens.store.compute import default_preprocess
from solens.store.images import FolderImages, SynthImages, pixels, to_rgb
from solens.store.results import MANIFEST, manifest_record, settings_digest
from solens.store.run import Run
from solens.store.shards import ShardImages, is_shard_spec, open_source
from solens.synth.world import CONCEPTS

DISCOVER_DIR = "discover"
FORMAT = "solens-discover"
VERSION = 1
TOP = 5


# --- pure parts ---------------------------------------------------------------------------
def significant_votes(norms: Tensor, tau: Tensor) -> Tensor:
    """Vote weight of each neuron: its centred norm where it exceeds tau_n, else 0:
    norms [B, N], tau [N] -> [B, N]."""
    return torch.where(norms > tau.to(norms), norms, torch.zeros_like(norms))


def word_scores(
    weights: Mapping[int, np.ndarray],
    terms: Mapping[tuple[int, int], Sequence[tuple[str, float]]],
) -> list[dict[str, Any]]:
    """Ranked words of one image from per-layer vote weights (layer -> [N], 0 = not
    significant): each neuron adds ``coef x weight`` to each of its terms. Returns
    ``[{"text", "score", "neurons": [[layer, neuron, vote], ...]}]`` by score (ties by
    text), neurons by |vote|."""
    acc: dict[str, dict[str, Any]] = {}
    for l, w in weights.items():
        for n in np.flatnonzero(np.asarray(w) > 0).tolist():
            for text, coef in terms.get((l, n), ()):
                v = float(coef) * float(w[n])
                e = acc.setdefault(text, {"text": text, "score": 0.0, "neurons": []})
                e["score"] += v
                e["neurons"].append([l, n, v])
    out = list(acc.values())
    for e in out:
        e["neurons"].sort(key=lambda r: -abs(r[2]))
    out.sort(key=lambda e: (-e["score"], e["text"]))
    return out


_GRADED = Matcher(world_concepts(GT_KINDS))
_ANY = Matcher(CONCEPTS)


def graded(text: str) -> bool:
    """Whether a word is graded: it names a ground-truth concept (class, colour, pattern,
    background) or no world concept at all (then it is wrong); a word naming only a size
    or a count is not."""
    return bool(_GRADED(text)) or not _ANY(text)


def precision_at(words: Sequence[str], present: set[int], k: int = TOP) -> float:
    """Fraction of the first ``k`` graded words that name a concept in ``present``
    (indices into ``world_concepts(GT_KINDS)``); 0 without graded words."""
    top = [w for w in words if graded(w)][:k]
    if not top:
        return 0.0
    return sum(bool(_GRADED(w) & present) for w in top) / len(top)


def nearest_texts(embeddings: Tensor, pool: Tensor, texts: Sequence[str], n: int
                  ) -> list[list[str]]:
    """Per image, the ``n`` pool texts whose embeddings [W, d] are nearest (cosine) to the
    image embedding [B, d], nearest first."""
    cos = F.normalize(embeddings.double(), dim=-1) @ F.normalize(pool.double(), dim=-1).T
    idx = cos.argsort(dim=1, descending=True)[:, :n]
    return [[texts[int(i)] for i in row] for row in idx]


# --- inputs --------------------------------------------------------------------------------
class _Paths:
    """Image files as an ``ImageSource``."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = [str(p) for p in paths]
        self.ids = self.paths
        self.labels: list[str | None] | None = None
        for p in self.paths:
            if not Path(p).is_file():
                raise InputError(f"image {p}: no such file")

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> Image.Image:
        try:
            with Image.open(self.paths[index]) as im:
                return to_rgb(im).copy()  # the file closes here
        except (OSError, UnidentifiedImageError) as e:
            raise InputError(f"image {self.paths[index]}: cannot be decoded ({e})") from None

    def describe(self) -> dict[str, Any]:
        return {"kind": "files", "n": len(self.paths), "paths": self.paths}


def open_inputs(images: Sequence[str]) -> _Paths | FolderImages | SynthImages | ShardImages:
    """Image paths, or one image set for ``open_source``: ``synth:SPLIT:N[:SEED]`` (with
    ground truth), an image folder, or WebDataset tar shards (several ``.tar`` arguments, as
    a shell expands ``data/shard-{0..3}.tar``, are one shard set)."""
    items = [str(s) for s in images]
    if not items:
        raise InputError("no images given: pass image files, an image folder, tar shards or "
                         "synth:SPLIT:N[:SEED]")
    if all(is_shard_spec(s) for s in items):
        return open_source("::".join(items))
    sets = [s for s in items if s.startswith("synth:") or is_shard_spec(s) or Path(s).is_dir()]
    if sets:
        if len(items) != 1:
            raise InputError(f"give either image files or one image set (a folder, tar shards "
                             f"or synth:SPLIT:N[:SEED]), not both ({sets[0]})")
        return open_source(items[0])
    return _Paths(items)


@dataclass(frozen=True)
class DiscoverSettings:
    run_id: str
    images: dict[str, Any]
    pool: str
    layers: list[int]
    k: int
    n_words: int

    def digest(self) -> str:
        return settings_digest(self)


@torch.no_grad()
def discover_images(
    run: Run | str | Path,
    images: Sequence[str],
    *,
    model: Model | None = None,
    pool: str | None = None,
    layers: Sequence[int] | None = None,
    k: int = 100,
    n_words: int = 10,
    batch_size: int = 64,
    progress: bool = True,
    device: str = "cpu",
    write: bool = True,
) -> dict[str, Any]:
    """Ranked words (with their voting neurons) for each image; with a ``synth:`` spec also
    precision@5 against the scenes' concepts and the nearest-pool-words baseline (module
    doc). Writes ``RUN/discover/`` unless ``write`` is false; returns ``discover.json``."""
    run = run if isinstance(run, Run) else Run.open(run)
    run.require_complete()
    layers = list(run.layers) if not layers else [int(l) for l in layers]
    for l in layers:
        run.layer(l)
    pool_name = described_pool(run, layers, pool)
    source = open_inputs(images)
    if k > run.n_images:
        raise InputError(f"--k {k} is more than the run's {run.n_images} images")
    model = run.load_model(device) if model is None else model
    docs = {l: load_descriptions(run, pool_name, l) for l in layers}
    terms = terms_of(docs)
    p = load_described_pool(docs[layers[0]])
    pool_emb = torch.from_numpy(np.asarray(embed_pool(model, p)))
    dev = model.device
    per_layer = {}
    for l in layers:
        st = stats_for(run, l, k)
        u = torch.from_numpy(np.array(run.layer(l).directions("exact"))).to(dev, torch.float64)
        per_layer[l] = (torch.as_tensor(np.array(st.mean_coef), dtype=torch.float64),
                        torch.as_tensor(np.array(st.tau), dtype=torch.float64), gram(u))
    preprocess = default_preprocess(model)
    names = trace_names(layers, model.info.n_layers)
    concepts = world_concepts(GT_KINDS)
    ids = source.ids
    results: list[dict[str, Any]] = []
    prec: list[float] = []
    base: list[float] = []
    n = len(source)
    bar = tqdm(total=n, desc="discover", unit="img", disable=not progress)
    for i0 in range(0, n, batch_size):
        idx = list(range(i0, min(n, i0 + batch_size)))
        x = pixels(source, preprocess, idx).to(dev, model.dtype)
        tr = model.trace(x, names)
        weights: dict[int, np.ndarray] = {}
        emb = None
        for l in layers:
            m, tau, G = per_layer[l]
            c = coefficients(model, tr, l)
            X = centred(c.s.double() * c.inv_sigma_post.double()[:, None, None], m.to(dev))
            weights[l] = significant_votes(centred_norms(X, G), tau.to(dev)).cpu().numpy()
            emb = c.embedding.float().cpu()
        assert emb is not None
        near = nearest_texts(emb, pool_emb, p.texts, max(n_words, 3 * TOP))
        present = (concept_presence([source.spec(i) for i in idx], concepts)
                   if isinstance(source, SynthImages) else None)
        for j, i in enumerate(idx):
            ws = word_scores({l: w[j] for l, w in weights.items()}, terms)
            ws = [w for w in ws if w["score"] > 0]
            results.append({"image": ids[i], "words": ws[:n_words], "nearest": near[j][:n_words]})
            if present is not None:
                truth = set(np.flatnonzero(present[j]).tolist())
                prec.append(precision_at([w["text"] for w in ws], truth))
                base.append(precision_at(near[j], truth))
        bar.update(len(idx))
    bar.close()
    doc = {"format": FORMAT, "version": VERSION, "pool": pool_name, "layers": layers, "k": k,
           "images": results,
           "precision_at_5": float(np.mean(prec)) if prec else None,
           "baseline": float(np.mean(base)) if base else None,
           "n_scored": len(prec)}
    if write:
        out = run.path / DISCOVER_DIR
        settings = DiscoverSettings(run.run_id, source.describe(), pool_name, layers, int(k),
                                    int(n_words))
        save_json_atomic(out / MANIFEST, manifest_record(FORMAT, VERSION, settings))
        save_json_atomic(out / "discover.json", doc)
        save_text_atomic(out / "discover.md", markdown(doc))
    return doc


def markdown(doc: dict[str, Any], n_show: int = 20) -> str:
    """Per image its top words (score and the strongest voting neuron), and precision."""
    lines = ["# Attribute discovery", "",
             f"Pool `{doc['pool']}`, layers {doc['layers']}; words voted by the neurons whose "
             "centred second-order norm exceeds tau_n (coefficient x norm).", ""]
    if doc.get("precision_at_5") is not None:
        lines += [f"Precision@{TOP} on {doc['n_scored']} scenes: "
                  f"{100 * doc['precision_at_5']:.1f}% (baseline, pool words nearest to the "
                  f"image embedding: {100 * doc['baseline']:.1f}%).", ""]
    lines += ["| image | top words (score; strongest neuron layer/neuron) | nearest words |",
              "|---|---|---|"]
    for e in doc["images"][:n_show]:
        words = ", ".join(f"{w['text']} ({w['score']:.2f}; {w['neurons'][0][0]}/"
                          f"{w['neurons'][0][1]})" for w in e["words"][:TOP])
        lines.append(f"| {e['image']} | {words or 'none'} | {', '.join(e['nearest'][:TOP])} |")
    return "\n".join(lines) + "\n"


__all__ = ["DISCOVER_DIR", "discover_images", "markdown", "nearest_texts", "open_inputs",
           "precision_at", "significant_votes", "word_scores"]
