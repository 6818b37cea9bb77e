"""Text descriptions of a run's neurons: statistics -> rank-1 directions r_n -> OMP over a
text pool -> ``RUN/descriptions/<pool>[-nonneg]-layer-LL.{json,md}``.

The JSON file is a ``solens.store.protocol.DescriptionsDoc`` (``format:
solens-descriptions``, one file per layer and pool; fields in ``docs/run-format.md``)::

    {"format", "version", "run_id", "run", "layer", "convention": "exact", "model": {...},
     "pool": {"name", "source", "n_texts", "content_hash"},
     "method": "omp" | "nnomp", "n_terms", "k", "n_images", "dictionary", ...,
     "neurons": [{"neuron", "terms": [{"text", "index", "coef"}, ...],   # |coef| desc
                  "cosine", "tau", "var_topk", "var_all", "total_var", "top_images"}]}

``top_images`` are row indices of the run (``Run.image_paths[i]``), largest centred
norm first; ``index`` is the text's position in the pool.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from solens import __version__
from solens.describe.omp import omp, prepare_dictionary
from solens.describe.pools import Pool, embed_pool, load_pool, pool_slug
from solens.describe.stats import load_stats, resolve_k, stats_for
from solens.errors import InputError
from solens.models.model import RANDOM, RANDOM_WEIGHTS, is_random
from solens.store.arrays import save_text_atomic
from solens.store.protocol import DescriptionsDoc, NeuronDescription, PoolRecord, Term
from solens.store.run import Run, layer_dir, now

DESCRIPTIONS_DIR = "descriptions"
FORMAT = DescriptionsDoc.FORMAT
VERSION = DescriptionsDoc.VERSION
DEFAULT_TERMS = 128
"""OMP terms per neuron when none are asked for (fewer when the run's embedding dimension or
the pool is smaller: see ``resolve_terms``)."""
DICTIONARY_RULE = (
    "D = normalize_rows(normalize_rows(E) - mean(normalize_rows(E))): each text embedding "
    "L2-normalised, pool mean subtracted, each text normalised again"
)


def descriptions_path(run: Run | str | Path, pool: str, layer: int, nonneg: bool = False,
                      suffix: str = ".json") -> Path:
    """``RUN/descriptions/<pool>[-nonneg]-layer-LL.json``."""
    path = run.path if isinstance(run, Run) else Path(run)
    tag = "-nonneg" if nonneg else ""
    return path / DESCRIPTIONS_DIR / f"{pool_slug(pool)}{tag}-{layer_dir(layer)}{suffix}"


def resolve_terms(n_terms: int | None, d_embed: int, n_texts: int, pool: str = "the pool"
                  ) -> int:
    """OMP terms per neuron: ``n_terms``, or ``DEFAULT_TERMS`` capped at the embedding
    dimension ``d_embed`` and the pool size when ``n_terms`` is None.

    More terms than dimensions (or than texts) cannot be linearly independent, so an
    explicit ``n_terms`` above either is an ``InputError``.
    """
    if n_terms is None:
        return max(1, min(DEFAULT_TERMS, d_embed, n_texts))
    if n_terms < 1:
        raise InputError(f"--terms must be positive, got {n_terms}")
    if n_terms > d_embed:
        raise InputError(
            f"--terms {n_terms} is more than the run's embedding dimension ({d_embed}): "
            f"at most {d_embed} terms can be independent; give --terms {d_embed} or less "
            f"(Python: n_terms={d_embed})"
        )
    if n_terms > n_texts:
        raise InputError(
            f"--terms {n_terms} is more than the {n_texts} texts of {pool}: give --terms "
            f"{n_texts} or less (Python: n_terms={n_texts})"
        )
    return int(n_terms)


def _sig(x: Any, digits: int = 7) -> float:
    """``x`` rounded to ``digits`` significant digits (compact JSON)."""
    return float(f"{float(x):.{digits}g}")


def _markdown(doc: DescriptionsDoc, n_show: int = 8) -> str:
    random = is_random(doc.model)
    weights = f" with {RANDOM_WEIGHTS}" if random else f" ({doc.model.get('pretrained')})"
    lines = [
        f"# {doc.pool.name} descriptions, layer {doc.layer} ({doc.method})"
        + (", RANDOM WEIGHTS" if random else ""),
        "",
        f"Model {doc.model.get('name')}{weights}, "
        f"{doc.n_images} images, top-k {doc.k}, {doc.n_terms} terms per neuron; "
        f"first {n_show} terms by |coefficient|.",
        "",
        "| neuron | cosine | var top-k | var all | tau | top terms |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for e in doc.neurons:
        terms = ", ".join(
            f"{t.text.replace('|', '/')} ({t.coef:+.2f})" for t in e.terms[:n_show]
        )
        lines.append(
            f"| {e.neuron} | {e.cosine:.3f} | {e.var_topk:.3f} | {e.var_all:.3f} "
            f"| {e.tau:.4g} | {terms} |"
        )
    return "\n".join(lines) + "\n"


def describe_layer(
    run: Run,
    layer: int,
    pool: Any,
    dictionary: torch.Tensor,
    *,
    n_terms: int | None = None,
    nonneg: bool = False,
    k: int | None = 100,
    top_percent: float | None = None,
    model: Any = None,
    recompute_stats: bool = False,
    allow_partial: bool = False,
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
    progress: bool = False,
    write: bool = True,
) -> DescriptionsDoc:
    """Describe every neuron of ``layer``; returns the document (and writes it with its
    markdown table).

    ``pool``: a ``Pool``; ``dictionary`` [len(pool), d]: ``prepare_dictionary`` of its
    embeddings. Statistics are loaded when stored for the same run and k, else computed
    (``allow_partial``: over the complete chunks of an unfinished run). ``n_terms``: see
    ``resolve_terms``; the document records the number used.
    """
    t0 = time.perf_counter()
    run.layer(layer)
    k_eff = resolve_k(run.n_images, k, top_percent)
    n_terms = resolve_terms(n_terms, int(run.model["d_embed"]), int(dictionary.shape[0]),
                            f"pool {pool.name!r}")
    st = stats_for(run, layer, k_eff, recompute=recompute_stats, model=model,
                   progress=progress, device=device, allow_partial=allow_partial)
    t_stats = time.perf_counter() - t0
    if st.r.shape[1] != dictionary.shape[1]:
        raise InputError(
            f"pool embeddings have dimension {dictionary.shape[1]}, the run's embeddings "
            f"{st.r.shape[1]}: wrong model for this run"
        )
    from tqdm.auto import tqdm

    t1 = time.perf_counter()
    with tqdm(total=st.n_neurons, unit="neuron", desc=f"omp layer {layer}",
              disable=not progress) as bar:
        res = omp(dictionary, np.asarray(st.r, np.float64), n_terms, nonneg=nonneg,
                  batch_size=batch_size, device=device, progress=bar.update)
    t_omp = time.perf_counter() - t1
    texts = pool.texts
    neurons = [
        NeuronDescription(
            neuron=n,
            terms=[Term(texts[i], i, _sig(c)) for i, c in res.terms(n)],
            cosine=_sig(res.cosine[n]),
            tau=_sig(st.tau[n]),
            var_topk=_sig(st.var_topk[n]),
            var_all=_sig(st.var_all[n]),
            total_var=_sig(st.total_var[n]),
            top_images=[int(i) for i in st.top_indices[n]],
        )
        for n in range(st.n_neurons)
    ]
    model_record = {k_: run.model.get(k_) for k_ in ("name", "pretrained", "quick_gelu")}
    if is_random(run.model):  # runs written before "random" was the label have None
        model_record["pretrained"] = RANDOM
    doc = DescriptionsDoc(
        run_id=run.run_id,
        run=str(run.path),
        layer=layer,
        convention="exact",
        model=model_record,
        pool=PoolRecord(pool.name, pool.source, len(pool), pool.content_hash),
        method="nnomp" if nonneg else "omp",
        n_terms=n_terms,
        k=st.k,
        n_images=st.n_images,
        dictionary=DICTIONARY_RULE,
        target="r_n: top right-singular vector of the top-k centred effects (unit)",
        solens_version=__version__,
        created=now(),
        seconds={"stats": round(t_stats, 3), "omp": round(t_omp, 3)},
        neurons=neurons,
    )
    if write:
        path = descriptions_path(run, pool.name, layer, nonneg)
        doc.write(path)
        save_text_atomic(path.with_suffix(".md"), _markdown(doc))
    return doc


def describe_run(
    run: Run | str | Path,
    pool: str | Any = "words-30k",
    layers: Sequence[int] | None = None,
    *,
    model: Any = None,
    n_terms: int | None = None,
    nonneg: bool = False,
    k: int | None = 100,
    top_percent: float | None = None,
    recompute_stats: bool = False,
    allow_partial: bool = False,
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
    progress: bool = False,
    on_layer: Callable[[DescriptionsDoc], None] | None = None,
) -> list[DescriptionsDoc]:
    """Describe ``layers`` (default: all of the run) over ``pool``; writes one JSON + one
    markdown file per layer and returns the documents.

    ``model`` defaults to ``run.load_model(device)`` (re-loaded from the manifest).
    ``n_terms`` (see ``resolve_terms``) and ``k`` / ``top_percent`` are checked against the
    run before the model is loaded and the pool embedded.
    """
    run = run if isinstance(run, Run) else Run.open(run)
    run.require_complete(allow_partial)
    layers = list(run.layers) if not layers else [int(l) for l in layers]
    for l in layers:
        run.layer(l)  # InputError for a layer not in the run
    p = pool if isinstance(pool, Pool) else load_pool(pool)
    n_terms = resolve_terms(n_terms, int(run.model["d_embed"]), len(p), f"pool {p.name!r}")
    resolve_k(run.n_images, k, top_percent)  # a k the run cannot give fails here, not later
    if model is None:
        model = run.load_model(device)
    emb = embed_pool(model, p, progress=progress)
    D, _ = prepare_dictionary(emb)
    docs = []
    for l in layers:
        doc = describe_layer(run, l, p, D, n_terms=n_terms, nonneg=nonneg, k=k,
                             top_percent=top_percent, model=None, batch_size=batch_size,
                             recompute_stats=recompute_stats, allow_partial=allow_partial,
                             device=device, progress=progress)
        docs.append(doc)
        if on_layer is not None:
            on_layer(doc)
    return docs


def load_descriptions(run: Run | str | Path, pool: str, layer: int, nonneg: bool = False
                      ) -> DescriptionsDoc:
    """A stored descriptions document (``InputError`` if missing, malformed or of a version
    this solens does not read)."""
    path = descriptions_path(run, pool, layer, nonneg)
    if not path.is_file():
        raise InputError(
            f"no {pool!r} descriptions for layer {layer} ({path}); run `solens describe` first"
        )
    return DescriptionsDoc.read(path)


def neuron_report(run: Run, layer: int, neuron: int, pool: str | None = "words-30k",
                  nonneg: bool = False) -> dict[str, Any]:
    """One neuron: statistics, top image paths and (if described) its terms
    (``[{"text", "index", "coef"}]``)."""
    st = load_stats(run, layer)
    if not 0 <= neuron < st.n_neurons:
        raise InputError(f"neuron {neuron} out of range: layer {layer} has 0..{st.n_neurons - 1}")
    out = st.neuron(neuron)
    paths = run.image_paths
    out["top_image_paths"] = [paths[i] for i in out["top_images"]]
    out["image_root"] = run.image_root
    out["image_set"] = run.image_root or run.manifest.dataset.get("spec")  # shards, synth
    out["layer"] = layer
    out["k"] = st.k
    out["model"] = run.model.get("name")
    out["random_weights"] = is_random(run.model)
    out["terms"] = None
    out["cosine"] = None
    if pool is not None and descriptions_path(run, pool, layer, nonneg).exists():
        doc = load_descriptions(run, pool, layer, nonneg)
        if doc.run_id == run.run_id:
            e = doc.neurons[neuron]
            out["terms"], out["cosine"] = [t.to_dict() for t in e.terms], e.cosine
            out["pool"], out["method"] = doc.pool.name, doc.method
    return out


def summary_rows(doc: DescriptionsDoc) -> dict[str, Any]:
    """Layer summary: neurons, mean cosine, mean variance explained, seconds."""
    ns = doc.neurons
    return {
        "layer": doc.layer,
        "neurons": len(ns),
        "mean_cosine": float(np.mean([e.cosine for e in ns])) if ns else 0.0,
        "mean_var_topk": float(np.mean([e.var_topk for e in ns])) if ns else 0.0,
        "mean_var_all": float(np.mean([e.var_all for e in ns])) if ns else 0.0,
        "seconds": doc.seconds,
    }
