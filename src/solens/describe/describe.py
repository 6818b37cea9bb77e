"""Text descriptions of a run's neurons: statistics -> rank-1 directions r_n -> OMP over a
text pool -> ``RUN/descriptions/<pool>[-nonneg]-layer-LL.{json,md}``.

JSON layout (``format: solens-descriptions``, one file per layer and pool)::

    {"format", "version", "run_id", "layer", "convention": "exact", "model": {...},
     "pool": {"name", "source", "n_texts", "content_hash"},
     "method": "omp" | "nnomp", "n_terms", "k", "n_images", "dictionary", ...,
     "neurons": [{"neuron", "terms": [{"text", "index", "coef"}, ...],   # |coef| desc
                  "cosine", "tau", "var_topk", "var_all", "total_var", "top_images"}]}

``top_images`` are row indices of the run (``Run.image_paths[i]``), largest centred
norm first; ``index`` is the text's position in the pool.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from solens import __version__
from solens.errors import InputError, RunMismatchError
from solens.store.arrays import save_text_atomic
from solens.store.run import Run, layer_dir

DESCRIPTIONS_DIR = "descriptions"
FORMAT = "solens-descriptions"
VERSION = 1
DICTIONARY_RULE = (
    "D = normalize_rows(normalize_rows(E) - mean(normalize_rows(E))): each text embedding "
    "L2-normalised, pool mean subtracted, each text normalised again"
)


def descriptions_path(run: Run | str | Path, pool: str, layer: int, nonneg: bool = False,
                      suffix: str = ".json") -> Path:
    """``RUN/descriptions/<pool>[-nonneg]-layer-LL.json``."""
    from solens.describe.pools import pool_slug

    path = run.path if isinstance(run, Run) else Path(run)
    tag = "-nonneg" if nonneg else ""
    return path / DESCRIPTIONS_DIR / f"{pool_slug(pool)}{tag}-{layer_dir(layer)}{suffix}"


def model_for_run(run: Run, device: str | torch.device = "cpu") -> Any:
    """Re-load the model that computed ``run`` (from its manifest) and check its weights."""
    from solens.models.loading import load_model
    from solens.store.compute import weights_sha256

    info = run.model
    extra = info.get("extra") or {}
    name = info["name"]
    qg = bool(info.get("quick_gelu", False))
    how = extra.get("weights")
    if how == "random":
        raise InputError(
            f"run {run.path} was computed with randomly initialised weights of {name}; "
            "they cannot be re-loaded: pass the model in Python (describe_run(..., model=))"
        )
    if how == "checkpoint":
        model = load_model(name, checkpoint=extra["checkpoint"], device=device, quick_gelu=qg)
    elif how in ("hf-hub", "local-dir") or name == "solens-tiny":
        model = load_model(name, device=device)
    else:
        model = load_model(name, info.get("pretrained"), device=device, quick_gelu=qg)
    want = run.manifest.get("weights_sha256")
    if want and weights_sha256(model.visual) != want:
        raise RunMismatchError(
            f"the weights of {name} ({info.get('pretrained')}) loaded now differ from those "
            f"that computed run {run.path}"
        )
    return model


def _sig(x: Any, digits: int = 7) -> float:
    """``x`` rounded to ``digits`` significant digits (compact JSON)."""
    return float(f"{float(x):.{digits}g}")


def _markdown(doc: dict[str, Any], n_show: int = 8) -> str:
    lines = [
        f"# {doc['pool']['name']} descriptions, layer {doc['layer']} ({doc['method']})",
        "",
        f"Model {doc['model'].get('name')} ({doc['model'].get('pretrained')}), "
        f"{doc['n_images']} images, top-k {doc['k']}, {doc['n_terms']} terms per neuron; "
        f"first {n_show} terms by |coefficient|.",
        "",
        "| neuron | cosine | var top-k | var all | tau | top terms |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for e in doc["neurons"]:
        terms = ", ".join(
            f"{t['text'].replace('|', '/')} ({t['coef']:+.2f})" for t in e["terms"][:n_show]
        )
        lines.append(
            f"| {e['neuron']} | {e['cosine']:.3f} | {e['var_topk']:.3f} | {e['var_all']:.3f} "
            f"| {e['tau']:.4g} | {terms} |"
        )
    return "\n".join(lines) + "\n"


def describe_layer(
    run: Run,
    layer: int,
    pool: Any,
    dictionary: torch.Tensor,
    *,
    n_terms: int = 128,
    nonneg: bool = False,
    k: int | None = 100,
    top_percent: float | None = None,
    model: Any = None,
    recompute_stats: bool = False,
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
    progress: bool = False,
    write: bool = True,
) -> dict[str, Any]:
    """Describe every neuron of ``layer``; returns the JSON document (and writes it).

    ``pool``: a ``Pool``; ``dictionary`` [len(pool), d]: ``prepare_dictionary`` of its
    embeddings. Statistics are loaded when stored for the same run and k, else computed.
    """
    from solens.describe.omp import omp
    from solens.describe.stats import compute_stats, has_stats, load_stats, resolve_k
    from solens.store.run import now

    t0 = time.perf_counter()
    run.layer(layer)
    k_eff = resolve_k(run.n_images, k, top_percent)
    if not recompute_stats and has_stats(run, layer, k=k_eff):
        st = load_stats(run, layer)
    else:
        st = compute_stats(run, layer, k_eff, model, progress=progress, device=device)
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
    neurons = []
    for n in range(st.n_neurons):
        neurons.append({
            "neuron": n,
            "terms": [{"text": texts[i], "index": i, "coef": _sig(c)} for i, c in res.terms(n)],
            "cosine": _sig(res.cosine[n]),
            **{key: _sig(getattr(st, key)[n]) for key in ("tau", "var_topk", "var_all",
                                                             "total_var")},
            "top_images": [int(i) for i in st.top_indices[n]],
        })
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "run_id": run.manifest.get("run_id"),
        "run": str(run.path),
        "layer": layer,
        "convention": "exact",
        "model": {k_: run.model.get(k_) for k_ in ("name", "pretrained", "quick_gelu")},
        "pool": {"name": pool.name, "source": pool.source, "n_texts": len(pool),
                 "content_hash": pool.content_hash},
        "method": "nnomp" if nonneg else "omp",
        "n_terms": n_terms,
        "k": st.k,
        "n_images": st.n_images,
        "dictionary": DICTIONARY_RULE,
        "target": "r_n: top right-singular vector of the top-k centred effects (unit)",
        "solens_version": __version__,
        "created": now(),
        "seconds": {"stats": round(t_stats, 3), "omp": round(t_omp, 3)},
        "neurons": neurons,
    }
    if write:
        path = descriptions_path(run, pool.name, layer, nonneg)
        save_text_atomic(path, json.dumps(doc, separators=(",", ":")) + "\n")
        save_text_atomic(path.with_suffix(".md"), _markdown(doc))
    return doc


def describe_run(
    run: Run | str | Path,
    pool: str | Any = "words-30k",
    layers: Sequence[int] | None = None,
    *,
    model: Any = None,
    n_terms: int = 128,
    nonneg: bool = False,
    k: int | None = 100,
    top_percent: float | None = None,
    recompute_stats: bool = False,
    allow_partial: bool = False,
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
    progress: bool = False,
    on_layer: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Describe ``layers`` (default: all of the run) over ``pool``; writes one JSON + one
    markdown file per layer and returns the documents.

    ``model`` defaults to ``model_for_run(run)`` (re-loaded from the manifest).
    """
    from solens.describe.omp import prepare_dictionary
    from solens.describe.pools import Pool, embed_pool, load_pool

    run = run if isinstance(run, Run) else Run.open(run)
    if not run.complete and not allow_partial:
        raise InputError(
            f"run {run.path} is incomplete ({run.n_images} images so far); "
            "re-run `solens effects` with the same arguments to finish it"
        )
    layers = list(run.layers) if not layers else [int(l) for l in layers]
    for l in layers:
        run.layer(l)  # InputError for a layer not in the run
    if n_terms < 1:
        raise InputError(f"--terms must be positive, got {n_terms}")
    p = pool if isinstance(pool, Pool) else load_pool(pool)
    if model is None:
        model = model_for_run(run, device=device)
    emb = embed_pool(model, p, progress=progress)
    D, _ = prepare_dictionary(emb)
    docs = []
    for l in layers:
        doc = describe_layer(run, l, p, D, n_terms=n_terms, nonneg=nonneg, k=k,
                             top_percent=top_percent, model=None, batch_size=batch_size,
                             recompute_stats=recompute_stats, device=device,
                             progress=progress)
        docs.append(doc)
        if on_layer is not None:
            on_layer(doc)
    return docs


def load_descriptions(run: Run | str | Path, pool: str, layer: int, nonneg: bool = False
                      ) -> dict[str, Any]:
    """A stored descriptions document (``InputError`` if missing)."""
    path = descriptions_path(run, pool, layer, nonneg)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(
            f"no {pool!r} descriptions for layer {layer} ({path}); run `solens describe` first"
        ) from None
    except ValueError as e:
        raise InputError(f"{path} is not valid JSON: {e}") from None


def neuron_report(run: Run, layer: int, neuron: int, pool: str | None = "words-30k",
                  nonneg: bool = False) -> dict[str, Any]:
    """One neuron: statistics, top image paths and (if described) its terms."""
    from solens.describe.stats import load_stats

    st = load_stats(run, layer)
    if not 0 <= neuron < st.n_neurons:
        raise InputError(f"neuron {neuron} out of range: layer {layer} has 0..{st.n_neurons - 1}")
    out = st.neuron(neuron)
    paths = run.image_paths
    out["top_image_paths"] = [paths[i] for i in out["top_images"]]
    out["image_root"] = run.image_root
    out["layer"] = layer
    out["k"] = st.k
    out["terms"] = None
    out["cosine"] = None
    if pool is not None and descriptions_path(run, pool, layer, nonneg).exists():
        doc = load_descriptions(run, pool, layer, nonneg)
        if doc.get("run_id") == run.manifest.get("run_id"):
            e = doc["neurons"][neuron]
            out["terms"], out["cosine"] = e["terms"], e["cosine"]
            out["pool"], out["method"] = doc["pool"]["name"], doc["method"]
    return out


def summary_rows(doc: dict[str, Any]) -> dict[str, Any]:
    """Layer summary: neurons, mean cosine, mean variance explained, seconds."""
    ns = doc["neurons"]
    return {
        "layer": doc["layer"],
        "neurons": len(ns),
        "mean_cosine": float(np.mean([e["cosine"] for e in ns])) if ns else 0.0,
        "mean_var_topk": float(np.mean([e["var_topk"] for e in ns])) if ns else 0.0,
        "mean_var_all": float(np.mean([e["var_all"] for e in ns])) if ns else 0.0,
        "seconds": doc["seconds"],
    }
