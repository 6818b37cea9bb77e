"""``solens atlas``: a static HTML site over a run's described neurons.

``build_atlas(run, out)`` writes into ``out`` (default ``RUN/atlas``):

```
index.html                 every described neuron: filter by layer, search, sort (JS)
layer-LL.html              the neurons of one layer as a plain table (no script needed)
neurons/layer-LL/NNNN.html one page per neuron
ablate.html, segment.html, attack.html, discover.html   where the run has those outputs
assets/atlas.css, assets/atlas.js, data/neurons.js      style, script, index data
img/rNNNNNNN.jpg           thumbnails of the images shown (the crop the model sees)
files/...                  thumbnails of the experiments' figures and images
cache/heat-layer-LL.npy    per-patch heatmaps of the images shown (for a resumed build)
manifest.json              settings, digests and finished steps; written last
```

Steps: descriptions and statistics are read (statistics of the descriptions' k are
computed when the stored ones have another k), thumbnails written, per-patch second-order
heatmaps computed for the shown images only (one traced forward per image), then the
pages. Every file is written atomically; a killed build resumes with the thumbnails,
heatmaps and pages it finished (same settings), and a build with other settings or
changed inputs rewrites what they change.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from solens import __version__
from solens.atlas.figures import effective_terms, histogram_svg, histograms, nearest
from solens.atlas.heatmaps import (
    heat_rgba,
    heat_scale,
    patch_contributions,
    png_data_uri,
    thumbnail,
    trace_names_for,
)
from solens.atlas.sections import (
    ablate_section,
    attack_section,
    discover_section,
    frac_significant,
    read_json,
    segment_section,
)
from solens.describe.describe import DESCRIPTIONS_DIR
from solens.describe.stats import NeuronStats, stats_for
from solens.errors import InputError
from solens.models.model import RANDOM_WEIGHTS, Model, is_random
from solens.store.arrays import (
    FSYNC,
    remove_stale_tmp,
    save_json_atomic,
    save_npy_atomic,
    save_text_atomic,
    write_atomic,
)
from solens.store.compute import default_preprocess
from solens.store.images import ImageSource, SynthImages
from solens.store.protocol import DescriptionsDoc
from solens.store.run import Run, layer_dir, now

FORMAT = "solens-atlas"
VERSION = 1
ATLAS_DIR = "atlas"
MANIFEST = "manifest.json"
ASSETS = ("atlas.css", "atlas.js")
HIST_BINS = 30


@dataclass
class AtlasResult:
    """A written atlas: its folder, ``index`` page, neurons and layers shown, the pool of
    their descriptions, the experiment pages written, seconds per step and the site's size
    in bytes."""

    out: Path
    index: Path
    n_neurons: int
    layers: list[int]
    pool: str
    sections: list[str]
    heatmaps: bool
    seconds: dict[str, float] = field(default_factory=dict)
    bytes: int = 0


@dataclass
class _Layer:
    layer: int
    path: Path
    doc: DescriptionsDoc
    stats: NeuronStats


# --- inputs ------------------------------------------------------------------------------
def find_descriptions(run: Run, pool: str | None = None, nonneg: bool = False,
                      layers: Sequence[int] | None = None) -> tuple[str, dict[int, Path]]:
    """The descriptions the atlas shows: (pool name, layer -> file).

    Among the run's ``descriptions/*.json`` of this run (``run_id``) and method (OMP, or
    NNOMP with ``nonneg``): those of ``pool`` when given, else the pool describing the most
    layers (then the first by name). ``InputError`` naming ``solens describe`` when there
    are none (or none of ``pool`` / ``layers``).
    """
    found: dict[str, dict[int, Path]] = {}
    for path in sorted((run.path / DESCRIPTIONS_DIR).glob("*-layer-*.json")):
        try:
            doc = DescriptionsDoc.read(path)
        except InputError:
            continue
        if doc.run_id != run.run_id or (doc.method == "nnomp") != nonneg:
            continue
        if layers is not None and doc.layer not in layers:
            continue
        found.setdefault(doc.pool.name, {})[doc.layer] = path
    what = "non-negative " if nonneg else ""
    if pool is not None:
        if pool not in found:
            have = f" (it has: {', '.join(sorted(found))})" if found else ""
            raise InputError(
                f"run {run.path} has no {what}descriptions over the pool {pool!r}{have}; run "
                f"`solens describe {run.path} --pool {pool}` first"
            )
        return pool, dict(sorted(found[pool].items()))
    if not found:
        sel = f" of layers {list(layers)}" if layers is not None else ""
        raise InputError(
            f"run {run.path} has no {what}neuron descriptions{sel}; run "
            f"`solens describe {run.path}` first"
        )
    name = min(found, key=lambda p: (-len(found[p]), p))
    return name, dict(sorted(found[name].items()))


def _file_key(path: Path) -> list[Any]:
    st = path.stat()
    return [path.name, st.st_size, st.st_mtime_ns]


def _extras_key(run_path: Path) -> list[Any]:
    """What the experiment pages depend on: names, sizes and mtimes of their files."""
    keys = []
    for pattern in ("ablate/ablate.json", "ablate/fig*.png", "segment/segment.json",
                    "segment/overlays/*.png", "attack/*/summary.json", "attack/*/images/*.png",
                    "discover/discover.json"):
        keys += [[str(p.relative_to(run_path)), *_file_key(p)[1:]]
                 for p in sorted(run_path.glob(pattern))]
    return keys


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _open_out(out: Path, digest: str) -> dict[str, Any]:
    """The finished steps of an earlier build of the same ``digest`` (empty otherwise: the
    derived files are removed). ``InputError`` for a non-empty folder that is no atlas."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    mpath = out / MANIFEST
    old = read_json(mpath, FORMAT) if mpath.exists() else None
    if old is None and out.is_dir() and any(out.iterdir()):
        raise InputError(f"--out {out} is not empty and holds no solens atlas; choose another "
                         "--out (or an empty folder)")
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(out)
    if old is not None and old.get("digest") == digest:
        return old
    for sub in ("neurons", "img", "cache", "files", "data"):
        shutil.rmtree(out / sub, ignore_errors=True)
    return {}


# --- the build ---------------------------------------------------------------------------
def build_atlas(
    run: Run | str | Path,
    out: str | Path | None = None,
    *,
    model: Model | None = None,
    pool: str | None = None,
    nonneg: bool = False,
    layers: Sequence[int] | None = None,
    n_top: int = 8,
    thumb: int = 112,
    heatmaps: bool = True,
    n_nearest: int = 8,
    index_terms: int = 8,
    page_terms: int = 32,
    max_overlays: int = 24,
    max_attack_images: int = 8,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> AtlasResult:
    """Write the static HTML atlas of ``run``'s described neurons into ``out`` (default
    ``RUN/atlas``) and return what was written.

    ``pool`` / ``nonneg`` / ``layers`` choose the descriptions (``find_descriptions``);
    ``n_top`` top images per neuron are shown, as thumbnails of ``thumb`` pixels, with
    per-patch heatmaps of their second-order contributions along r_n (``heatmaps``; they
    need the run's model: ``model``, else ``run.load_model(device)``); ``n_nearest``
    neurons of closest r_n per page; ``index_terms`` / ``page_terms`` terms in the index
    and on a neuron page; at most ``max_overlays`` segmentation overlays and
    ``max_attack_images`` images per attack pair. Resumes a killed build of the same
    settings (see the module docstring).
    """
    t_all = time.perf_counter()
    seconds: dict[str, float] = {}
    run = run if isinstance(run, Run) else Run.open(run)
    run.require_complete()
    for name, v in (("--n-top", n_top), ("--thumb", thumb), ("--batch-size", batch_size)):
        if v < 1:
            raise InputError(f"{name} must be positive, got {v}")
    out = run.path / ATLAS_DIR if out is None else Path(out)
    pool_name, files = find_descriptions(run, pool, nonneg, layers)

    t0 = time.perf_counter()
    ls: list[_Layer] = []
    for layer, path in files.items():
        doc = DescriptionsDoc.read(path)
        st = stats_for(run, layer, doc.k or 100, progress=progress)
        if st.n_neurons != len(doc.neurons):
            raise InputError(f"{path} describes {len(doc.neurons)} neurons, the statistics of "
                             f"layer {layer} hold {st.n_neurons}; re-run `solens describe`")
        ls.append(_Layer(layer, path, doc, st))
    seconds["inputs"] = time.perf_counter() - t0

    settings = {
        "run_id": run.run_id, "pool": pool_name, "nonneg": nonneg,
        "descriptions": {str(x.layer): _file_key(x.path) for x in ls},
        "n_top": n_top, "thumb": thumb, "heatmaps": heatmaps, "n_nearest": n_nearest,
        "index_terms": index_terms, "page_terms": page_terms,
    }
    digest = _digest(settings)
    pages_digest = _digest([digest, _extras_key(run.path), max_overlays, max_attack_images,
                            __version__])
    state = _open_out(out, digest)
    done: dict[str, Any] = dict(state.get("done") or {})

    def record(step: str, value: Any = True) -> None:
        done[step] = value
        save_json_atomic(out / MANIFEST, {
            "format": FORMAT, "version": VERSION, "solens_version": __version__,
            "digest": digest, "pages_digest": done.get("pages_digest"), "settings": settings,
            "done": done, "updated": now()})

    record("started", state.get("done", {}).get("started") or now())

    # shown images: the first n_top of every neuron's top images
    top = {x.layer: _top_rows(x.doc, n_top) for x in ls}
    rows = sorted({int(r) for t in top.values() for r in t.ravel() if r >= 0})

    t0 = time.perf_counter()
    heat = _images(run, ls, top, rows, out, model, thumb, heatmaps, batch_size, device,
                   progress)
    if heatmaps:
        record("heatmaps")
    seconds["images"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if done.get("pages_digest") != pages_digest:  # pages of other inputs: all anew
        shutil.rmtree(out / "neurons", ignore_errors=True)
        record("pages_digest", pages_digest)
    sections = _write_site(run, out, ls, top, heat, pool_name, n_nearest, index_terms,
                           page_terms, max_overlays, max_attack_images, progress=progress)
    seconds["pages"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - t_all
    record("finished", now())
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return AtlasResult(out, out / "index.html", sum(len(x.doc.neurons) for x in ls),
                       [x.layer for x in ls], pool_name, sections, heatmaps, seconds, size)


def _img(row: int) -> str:
    return f"img/r{row:07d}.jpg"


def _top_rows(doc: DescriptionsDoc, n_top: int) -> np.ndarray:
    """The first ``n_top`` top images (run rows) of every neuron: [N, n_top] int64, -1
    where a neuron has fewer."""
    out = np.full((len(doc.neurons), n_top), -1, dtype=np.int64)
    for i, e in enumerate(doc.neurons):
        t = list(e.top_images)[:n_top]
        out[i, : len(t)] = t
    return out


def _load(source: ImageSource, candidates: Sequence[int],
          preprocess: Callable[[Any], Tensor] | None) -> tuple[list[Image.Image], Tensor | None]:
    """Candidates as PIL images and (with ``preprocess``) the model's input [b, 3, S, S];
    rendered scenes are drawn once (as arrays) for both."""
    batch = getattr(preprocess, "batch", None)
    if isinstance(source, SynthImages):
        arrays = source.arrays(list(candidates))  # [b, S, S, 3] uint8
        pil = [Image.fromarray(a) for a in arrays]
        if batch is not None:
            return pil, batch(arrays)
    else:
        pil = [source.load(c) for c in candidates]
    x = None if preprocess is None else torch.stack([preprocess(im) for im in pil])
    return pil, x


def _images(run: Run, ls: list[_Layer], top: dict[int, np.ndarray], rows: list[int],
            out: Path, model: Model | None, thumb: int, heatmaps: bool, batch_size: int,
            device: str | torch.device, progress: bool) -> dict[int, np.ndarray]:
    """Thumbnails of the shown images (``rows``) that are missing, and with ``heatmaps``
    per layer the patch contributions of every neuron's shown images:
    [N, n_top, T - 1] float32 (NaN where a neuron has fewer images), cached in
    ``out/cache``. Each image is loaded once for both."""
    cache = {x.layer: out / "cache" / f"heat-{layer_dir(x.layer)}.npy" for x in ls}
    need_heat = heatmaps and not all(p.exists() for p in cache.values())
    todo = rows if need_heat else [r for r in rows if not (out / _img(r)).exists()]
    res: dict[int, np.ndarray] = {}
    if heatmaps and not need_heat:
        res = {l: np.load(p) for l, p in cache.items()}
    if not todo:
        return res
    preprocess = names = None
    r_coef: dict[int, Tensor] = {}
    if need_heat:
        if model is None:
            try:
                model = run.load_model(device)
            except InputError as e:
                raise InputError(f"{e}; or build the atlas without heatmaps (--no-heatmaps)"
                                 ) from None
        preprocess = default_preprocess(model)
        names = trace_names_for([x.layer for x in ls], model.info.n_layers)
        T = int(model.info.n_tokens)
        r_coef = {x.layer: torch.from_numpy(np.array(x.stats.r_coef, dtype=np.float32))
                  .to(model.device, model.dtype) for x in ls}
        res = {x.layer: np.full((*top[x.layer].shape, T - 1), np.nan, dtype=np.float32)
               for x in ls}
    source = run.images()
    cands = run.row_candidates
    pos = np.full(run.n_images, -1, dtype=np.int64)
    for i in tqdm(range(0, len(todo), batch_size), desc="atlas images", unit="batch",
                  disable=not progress):
        batch = todo[i : i + batch_size]
        pil, x = _load(source, [cands[r] for r in batch], preprocess)
        for r, im in zip(batch, pil, strict=True):
            if not (out / _img(r)).exists():
                t = thumbnail(im, thumb)
                write_atomic(out / _img(r), lambda f, t=t: t.save(f, format="JPEG", quality=85))
        if model is None or x is None or names is None:
            continue
        pos[:] = -1
        pos[batch] = np.arange(len(batch))
        with torch.no_grad():
            trace = model.trace(x, names)
            for layer, t_rows in top.items():
                hit = (t_rows >= 0) & (pos[np.clip(t_rows, 0, None)] >= 0)
                ns, js = np.nonzero(hit)
                if ns.size:
                    c = patch_contributions(model, trace, layer, r_coef[layer])  # [B, T, N]
                    res[layer][ns, js] = c.float().cpu().numpy()[pos[t_rows[ns, js]], 1:, ns]
    if need_heat:
        for layer, a in res.items():
            save_npy_atomic(cache[layer], a)
    return res


# --- pages -------------------------------------------------------------------------------
def _env() -> Environment:
    env = Environment(loader=PackageLoader("solens.atlas", "templates"),
                      autoescape=select_autoescape(["html", "j2"]),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = lambda x: "–" if x is None else f"{100 * x:.1f}%"
    env.filters["num"] = lambda x, d=3: "–" if x is None else f"{x:.{d}g}"
    env.filters["signed"] = lambda x: f"{x:+.3f}".replace("-", "−")
    return env


def _neuron_href(layer: int, neuron: int) -> str:
    return f"neurons/{layer_dir(layer)}/{neuron:04d}.html"


def _term_label(text: str, coef: float) -> str:
    return ("+" if coef >= 0 else "−") + text


def _write_site(run: Run, out: Path, ls: list[_Layer], top: dict[int, np.ndarray],
                heat: dict[int, np.ndarray], pool: str, n_nearest: int, index_terms: int,
                page_terms: int, max_overlays: int, max_attack_images: int, *,
                progress: bool) -> list[str]:
    """Assets, experiment pages, index data, layer pages and neuron pages; neuron pages
    that exist are kept (they were written from the same inputs: ``build_atlas`` removes
    them when the inputs change). Returns the experiment pages written."""
    env = _env()
    model_info = run.model
    random = is_random(model_info)
    for name in ASSETS:
        src = Path(__file__).with_name("static") / name
        save_text_atomic(out / "assets" / name, src.read_text(encoding="utf-8"))

    sections: dict[str, dict[str, Any]] = {}
    builders = (
        ("ablate", "Layer ablations", lambda: ablate_section(run.path, run.run_id, out)),
        ("segment", "Segmentation", lambda: segment_section(run.path, out, max_overlays)),
        ("attack", "Adversarial images", lambda: attack_section(run.path, out,
                                                                max_attack_images)),
        ("discover", "Attribute discovery", lambda: discover_section(run.path)),
    )
    nav_sections = []
    for key, title, build in builders:
        ctx = build()
        if ctx is not None:
            sections[key] = ctx
            nav_sections.append({"href": f"{key}.html", "title": title})
        elif (out / f"{key}.html").exists():
            (out / f"{key}.html").unlink()
    frac = frac_significant(run.path, run.run_id)

    # per-neuron summaries (index rows) and nearest neurons across all shown layers
    keys = [(x.layer, n) for x in ls for n in range(len(x.doc.neurons))]
    R = np.concatenate([np.asarray(x.stats.r, dtype=np.float32) for x in ls])
    near_idx, near_cos = nearest(R, n_nearest)
    summaries: list[dict[str, Any]] = []
    for x in ls:
        fl = frac.get(x.layer)
        fl = fl if fl is not None and len(fl) == len(x.doc.neurons) else None
        for e in x.doc.neurons:
            summaries.append({
                "layer": x.layer, "neuron": e.neuron,
                "href": _neuron_href(x.layer, e.neuron),
                "terms": [_term_label(t.text, t.coef) for t in e.terms[:index_terms]],
                "words": " ".join(t.text for t in e.terms[:index_terms]).lower(),
                "polysemy": round(effective_terms([t.coef for t in e.terms]), 3),
                "var_topk": round(float(e.var_topk), 4), "var_all": round(float(e.var_all), 4),
                "cosine": round(float(e.cosine), 4),
                "frac": None if fl is None else round(float(fl[e.neuron]), 4),
                "tau": float(e.tau),
            })
    has_frac = any(s["frac"] is not None for s in summaries)
    common = {
        "model": model_info, "random": random, "random_note": RANDOM_WEIGHTS, "pool": pool,
        "run_path": str(run.path), "n_images": run.n_images, "version": __version__,
        "sections": nav_sections, "layers": [x.layer for x in ls],
        "layer_dir": layer_dir, "has_frac": has_frac,
    }
    data = {
        "layers": [x.layer for x in ls], "has_frac": has_frac,
        "rows": [[s["layer"], s["neuron"], s["href"], s["terms"], s["words"], s["polysemy"],
                  s["var_topk"], s["frac"], s["cosine"]] for s in summaries],
    }
    save_text_atomic(out / "data" / "neurons.js",
                     "window.ATLAS_DATA = " + json.dumps(data, separators=(",", ":")) + ";\n")
    save_text_atomic(out / "index.html", env.get_template("index.html.j2").render(
        root="", title="Neuron atlas", n_neurons=len(summaries), **common))
    for key, ctx in sections.items():
        save_text_atomic(out / f"{key}.html", env.get_template(f"{key}.html.j2").render(
            root="", title=dict((k, t) for k, t, _ in builders)[key], s=ctx, **common))
    offset = 0
    for x in ls:
        n = len(x.doc.neurons)
        save_text_atomic(out / f"{layer_dir(x.layer)}.html",
                         env.get_template("layer.html.j2").render(
                             root="", title=f"Layer {x.layer}", layer=x.layer,
                             rows=summaries[offset : offset + n], **common))
        offset += n

    # neuron pages
    labels = run.labels
    ids = run.image_paths
    tpl = env.get_template("neuron.html.j2")
    bar = tqdm(total=len(keys), desc="atlas pages", unit="page", disable=not progress)
    g = 0
    for x in ls:
        norms = np.asarray(x.stats.centred_norms, dtype=np.float32)  # [n_images, N]
        counts, his = histograms(norms, HIST_BINS)
        taus = np.array([e.tau for e in x.doc.neurons], dtype=np.float32)
        above = (norms > taus[None, :]).sum(0)
        hx = heat.get(x.layer)
        grid = round(float(np.sqrt(hx.shape[-1]))) if hx is not None else 0
        if hx is not None and grid * grid != hx.shape[-1]:
            hx = None  # not a square patch grid: no overlay
        for e in x.doc.neurons:
            n = e.neuron
            path = out / _neuron_href(x.layer, n)
            if path.exists():
                g += 1
                bar.update()
                continue
            images = []
            t = top[x.layer][n]
            h = hx[n] if hx is not None else None
            scale = heat_scale(h) if h is not None else 0.0
            for j, r in enumerate(int(v) for v in t):
                if r < 0:
                    continue
                label = labels[r] if labels is not None else None
                overlay = None
                if h is not None and np.isfinite(h[j]).all() and scale > 0:
                    overlay = png_data_uri(heat_rgba(h[j].reshape(grid, grid), scale))
                images.append({
                    "src": f"../../{_img(r)}", "rank": j + 1, "id": ids[r], "label": label,
                    "norm": float(norms[r, n]), "heat": overlay,
                    "patch_sum": None if h is None else float(np.nansum(h[j])),
                })
            near = []
            for k, c in zip(near_idx[g], near_cos[g], strict=True):
                ll, nn = keys[int(k)]
                s = summaries[int(k)]
                near.append({"layer": ll, "neuron": nn, "href": "../../" + s["href"],
                             "cos": float(c), "terms": s["terms"][:4]})
            cmax = max((abs(t.coef) for t in e.terms[:page_terms]), default=1.0) or 1.0
            terms = [{"text": t.text, "coef": t.coef, "width": round(100 * abs(t.coef) / cmax, 1),
                      "positive": t.coef >= 0} for t in e.terms[:page_terms]]
            s = summaries[g]
            prev_key = keys[g - 1] if g > 0 else None
            next_key = keys[g + 1] if g + 1 < len(keys) else None
            html = tpl.render(
                root="../../", title=f"Layer {x.layer}, neuron {n}", layer=x.layer, neuron=n,
                s=s, doc=x.doc, entry=e, terms=terms, n_terms=len(e.terms), images=images,
                hist=histogram_svg(counts[n], float(his[n]), float(e.tau), int(above[n]),
                                   label=f"Centred norms of layer {x.layer} neuron {n}"),
                near=near, total_var=float(e.total_var),
                prev=None if prev_key is None else {
                    "href": "../../" + _neuron_href(*prev_key), "label": _key_label(prev_key)},
                next=None if next_key is None else {
                    "href": "../../" + _neuron_href(*next_key), "label": _key_label(next_key)},
                **common)
            _write_page(path, html)
            g += 1
            bar.update()
    bar.close()
    if FSYNC:
        os.sync()  # the pages were written without fsync each: once for all of them
    return list(sections)


def _write_page(path: Path, text: str) -> None:
    """Write ``text`` atomically (temporary file, then rename) but without an fsync per
    file: thousands of derived pages; ``_write_site`` syncs once before the manifest
    records them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(name, 0o644)
        os.replace(name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        raise


def _key_label(key: tuple[int, int]) -> str:
    return f"layer {key[0]}, neuron {key[1]}"


__all__ = ["ATLAS_DIR", "AtlasResult", "build_atlas", "find_descriptions"]
