"""``solens ablate``: the paper's layer experiments on a run (METHOD §2, §5.1-5.4).

For every layer of a run, zero-shot top-1 accuracy of an evaluation set with the layer's
effects changed in one of these ways (means, thresholds and rank-1 directions come from
the run's own images, the reference set; ``solens.experiments.factorised`` has the maths):

- ``baseline``: nothing changed;
- ``second_order``: every neuron's second-order effect mean-ablated;
- ``significant_only`` / ``insignificant_only``: only the effects whose centred norm is
  above (resp. at most) the neuron's threshold tau_n;
- ``rank1``: every effect replaced by its rank-1 reconstruction along r_n;
- ``indirect``: a real forward pass with the layer's neurons mean-ablated (mean per token
  position over the reference set);
- ``direct``: the layer's direct effect (its MLP output at CLS through the frozen
  ``ln_post``) mean-ablated;
- ``text_reconstruction``: the rank-1 reconstruction with r_n replaced by its m-term OMP
  reconstruction over a text pool, for m in ``M_VALUES`` (capped at the embedding
  dimension);

plus the share of variance along PC1 of second-order vs indirect effect vectors on a sample
of images and neurons, and per neuron the fraction of evaluation images whose centred norm
is above tau_n. Results go to ``RUN/ablate/`` (one JSON per layer, written when the layer is
done: a killed run resumes at the first unfinished layer), with a table and two plots.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from solens.describe.describe import DESCRIPTIONS_DIR, load_descriptions
from solens.describe.omp import omp, prepare_dictionary
from solens.describe.pools import BUILTIN_POOLS, embed_pool, load_pool
from solens.describe.stats import NeuronStats, stats_for
from solens.errors import InputError
from solens.experiments.ablation import layer_effects
from solens.experiments.classifier import class_directions, classifier_spec
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
from solens.experiments.zeroshot import accuracy
from solens.lens.second_order import coefficients, gram, trace_names
from solens.models.model import Model
from solens.store.arrays import save_json_atomic, save_text_atomic, write_atomic
from solens.store.compute import default_preprocess
from solens.store.images import ImageSource, class_indices, pixels
from solens.store.protocol import DescriptionsDoc
from solens.store.results import open_results, settings_digest
from solens.store.run import Run, layer_dir
from solens.store.shards import ShardImages, open_source

ABLATE_DIR = "ablate"
M_VALUES = (1, 2, 4, 8, 16, 32, 64, 128)
VARIANTS = ("second_order", "significant_only", "insignificant_only", "rank1", "indirect",
            "direct")
FORMAT = "solens-ablate"
VERSION = 1


@dataclass(frozen=True)
class AblateSettings:
    """Everything that determines the numbers; a resumed run must have the same."""

    run_id: str
    eval: dict[str, Any]
    classifier: dict[str, Any]
    k: int
    pools: list[str]
    m_values: list[int]
    pc_images: int
    pc_neurons: int
    seed: int

    def digest(self) -> str:
        return settings_digest(self)


@dataclass
class LayerResult:
    """One layer's figures (accuracies as fractions)."""

    layer: int
    baseline: float
    accuracy: dict[str, float]
    text_reconstruction: dict[str, dict[str, float]]
    pc1_variance: dict[str, float]
    frac_significant: list[float]
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerResult:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})


@dataclass
class AblateResult:
    """Every layer's figures and the settings they came from."""

    settings: AblateSettings
    layers: list[LayerResult]
    m_capped: list[int]
    embedding_dim: int

    def summary(self) -> dict[str, Any]:
        """The table as lists per layer (order of ``layers``), as the demo's summary
        records it."""
        fs = np.concatenate([np.asarray(r.frac_significant) for r in self.layers]) if (
            self.layers) else np.zeros(0)
        pools = self.settings.pools
        return {
            "layers": [r.layer for r in self.layers],
            "baseline": self.layers[0].baseline if self.layers else None,
            **{v: [r.accuracy[v] for r in self.layers] for v in VARIANTS},
            "text_reconstruction": {
                p: {str(m): [r.text_reconstruction[p][str(m)] for r in self.layers]
                    for m in self.m_capped} for p in pools},
            "pc1_variance": {
                "second_order": _mean([r.pc1_variance["second_order"] for r in self.layers]),
                "indirect": _mean([r.pc1_variance["indirect"] for r in self.layers])},
            "frac_significant_median": float(np.median(fs)) if fs.size else None,
        }


def _mean(x: Sequence[float]) -> float | None:
    return float(np.mean(x)) if len(x) else None


# --- inputs ------------------------------------------------------------------------------
def described_pools(run: Run, layers: Sequence[int]) -> list[str]:
    """Pools with descriptions (``solens describe``) of every one of ``layers``."""
    found: dict[str, set[int]] = {}
    for path in sorted((run.path / DESCRIPTIONS_DIR).glob("*-layer-*.json")):
        try:
            doc = DescriptionsDoc.read(path)
        except InputError:
            continue
        if doc.run_id == run.run_id and path.stem.endswith(layer_dir(doc.layer)):
            name = path.stem[: -len(layer_dir(doc.layer)) - 1]
            if not name.endswith("-nonneg"):
                found.setdefault(name, set()).add(doc.layer)
    return [p for p, ls in sorted(found.items()) if set(layers) <= ls]


def _pool_dictionary(model: Model, doc: DescriptionsDoc) -> Tensor:
    """The OMP dictionary [K, d] of the pool a descriptions document used."""
    rec = doc.pool
    pool = load_pool(rec.name if rec.name in BUILTIN_POOLS else rec.source)
    if pool.content_hash != rec.content_hash:
        raise InputError(f"text pool {rec.name!r} changed since `solens describe` used it; "
                         "re-run `solens describe`")
    return prepare_dictionary(embed_pool(model, pool))[0]


def _batches(source: ImageSource, preprocess: Callable[[Any], Tensor], batch_size: int,
             cache: dict[int, Tensor]) -> Iterator[tuple[int, Tensor]]:
    """(first index, preprocessed images [b, 3, S, S]) over the evaluation set; kept in
    ``cache`` for the next layer when the whole set is under 2 GiB."""
    n = len(source)
    for i in range(0, n, batch_size):
        if i in cache:
            yield i, cache[i]
            continue
        x = pixels(source, preprocess, range(i, min(n, i + batch_size)))
        if n * x[0].numel() * 4 < 2 * 2**30:
            cache[i] = x
        yield i, x


# --- one layer ---------------------------------------------------------------------------
def text_reconstructions(
    dictionary: Tensor, r: Tensor, m_values: Sequence[int], nonneg: bool = False
) -> dict[int, Tensor]:
    """Unit m-term OMP reconstructions of the rank-1 directions ``r`` [N, d] over a
    prepared dictionary [K, d], for each m: m -> [N, d] (on ``r``'s device).

    OMP is greedy: the m-term solution selects the first m atoms of the largest one and
    refits them by least squares, so one OMP run and a least-squares refit per m give all
    of them (NNOMP's non-negative refits differ: it is run once per m).
    """
    out: dict[int, Tensor] = {}
    D = dictionary.double().cpu()
    target = r.double().cpu()
    if nonneg:
        for m in m_values:
            res = omp(D, target, m, nonneg=True)
            idx = torch.as_tensor(res.indices).clamp_min(0)
            coef = torch.as_tensor(res.coefs)  # 0 where padded
            out[m] = unit_rows(torch.einsum("nm,nmd->nd", coef, D[idx])).to(r.device)
        return out
    res = omp(D, target, max(m_values))
    sel = torch.as_tensor(res.indices)  # [N, M], selection order, -1 padded
    for m in m_values:
        atoms = D[sel[:, :m].clamp_min(0)] * (sel[:, :m] >= 0).unsqueeze(-1)  # [N, m, d]
        coef = torch.linalg.pinv(atoms.transpose(1, 2)) @ target.unsqueeze(-1)  # [N, m, 1]
        out[m] = unit_rows((coef * atoms).sum(1)).to(r.device)
    return out


def reference_means(
    model: Model, images: Tensor, layers: Sequence[int], batch_size: int = 128
) -> tuple[dict[int, Tensor], dict[int, Tensor]]:
    """One pass over the reference images [B, 3, S, S]: per layer the mean post-GELU
    activation per token position [T, N] (for the indirect ablation) and the mean direct
    effect [d] (float64, CPU)."""
    names = [*(f"blocks.{l}.mlp.hook_post" for l in layers),
             *(f"blocks.{l}.hook_mlp_out" for l in layers), "ln_post.hook_scale"]
    act: dict[int, Tensor] = {}
    direct: dict[int, Tensor] = {}
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            tr = model.trace(images[i : i + batch_size], names)
            e = layer_effects(model, tr, layers, "direct").double().sum(0).cpu()
            for j, l in enumerate(layers):
                a = tr[f"blocks.{l}.mlp.hook_post"].float().sum(0)
                act[l] = a if l not in act else act[l] + a
                direct[l] = e[j] if l not in direct else direct[l] + e[j]
    n = len(images)
    return {l: a / n for l, a in act.items()}, {l: d / n for l, d in direct.items()}



@torch.no_grad()
def ablate_layer(
    model: Model,
    run: Run,
    layer: int,
    batches: Callable[[], Iterator[tuple[int, Tensor]]],
    labels: Tensor,
    texts: Tensor,
    *,
    stats: NeuronStats,
    reference_mean_act: Tensor,
    reference_direct_mean: Tensor,
    dictionaries: dict[str, tuple[Tensor, bool]],
    m_values: Sequence[int],
    pc_images: Tensor,
    pc_neurons: Sequence[int],
    progress: bool = False,
) -> LayerResult:
    """Every variant of one layer over the evaluation batches (see the module doc)."""
    t0 = time.perf_counter()
    dev = model.device
    u = torch.from_numpy(np.array(run.layer(layer).directions("exact"))).to(dev, torch.float64)
    G = gram(u)
    m_coef = torch.as_tensor(np.array(stats.mean_coef), dtype=torch.float64, device=dev)
    tau = torch.as_tensor(np.array(stats.tau), dtype=torch.float64, device=dev)
    r = torch.as_tensor(np.array(stats.r), dtype=torch.float64, device=dev)
    recon = {pool: text_reconstructions(D, r, m_values, nonneg)
             for pool, (D, nonneg) in dictionaries.items()}
    t_omp = time.perf_counter() - t0
    names = [*trace_names([layer], model.info.n_layers), f"blocks.{layer}.hook_mlp_out",
             "ln_post.hook_scale"]
    n_variant: dict[str, int] = dict.fromkeys(VARIANTS, 0)
    n_text = {p: dict.fromkeys(m_values, 0) for p in recon}
    n_base = 0
    above = torch.zeros(len(tau), dtype=torch.float64)
    n_seen = 0
    bar = tqdm(total=len(labels), unit="img", desc=f"ablate layer {layer}",
               disable=not progress, leave=False)
    mean_act = reference_mean_act.to(dev)

    def hits(emb: Tensor, y: Tensor) -> int:
        return round(accuracy(emb.float().cpu(), y, texts) * len(y))

    for i, x in batches():
        y = labels[i : i + len(x)]
        tr = model.trace(x, names)
        c = coefficients(model, tr, layer)
        f = c.embedding.double()
        X = centred(c.s.double() * c.inv_sigma_post.double()[:, None, None], m_coef)
        cn = centred_norms(X, G)
        sig = cn > tau
        above += sig.double().sum(0).cpu()
        n_seen += len(x)
        n_base += hits(f, y)
        n_variant["second_order"] += hits(ablate_all(f, X, u), y)
        n_variant["significant_only"] += hits(ablate_masked(f, X, u, sig), y)
        n_variant["insignificant_only"] += hits(ablate_masked(f, X, u, ~sig), y)
        n_variant["rank1"] += hits(rank1(f, X, u, r), y)
        direct = layer_effects(model, tr, [layer], "direct")[:, 0].double()
        n_variant["direct"] += hits(f - direct + reference_direct_mean.to(direct), y)
        n_variant["indirect"] += hits(layer_ablated_embeddings(model, x, layer, mean_act), y)
        for p, by_m in recon.items():
            for m, rh in by_m.items():
                n_text[p][m] += hits(rank1(f, X, u, rh), y)
        bar.update(len(x))
    bar.close()
    n = max(1, n_seen)
    # PC1 share of variance: second-order vs indirect effect vectors, same images and neurons
    t1 = time.perf_counter()
    neurons = list(pc_neurons)
    tr = model.trace(pc_images, trace_names([layer], model.info.n_layers))
    c = coefficients(model, tr, layer, neurons)
    phi = torch.einsum("bnp,npd->nbd", c.s.double() * c.inv_sigma_post.double()[:, None, None],
                       u[torch.as_tensor(neurons, device=dev)])
    ind = neuron_indirect_effects(model, pc_images, layer, neurons, mean_act)
    pc1 = {"second_order": float(pc1_variance(phi.cpu()).mean()),
           "indirect": float(pc1_variance(ind).mean()),
           "n_images": len(pc_images), "n_neurons": len(neurons)}
    return LayerResult(
        layer=layer,
        baseline=n_base / n,
        accuracy={v: n_variant[v] / n for v in VARIANTS},
        text_reconstruction={p: {str(m): n_text[p][m] / n for m in m_values} for p in n_text},
        pc1_variance=pc1,
        frac_significant=(above / n).tolist(),
        seconds={"omp": round(t_omp, 3), "variants": round(t1 - t0 - t_omp, 3),
                 "pc1": round(time.perf_counter() - t1, 3)},
    )


# --- the run -----------------------------------------------------------------------------
def ablate_run(
    run: Run | str | Path,
    eval_images: str | Path | ImageSource,
    *,
    model: Model | None = None,
    classes_file: str | Path | None = None,
    layers: Sequence[int] | None = None,
    pools: Sequence[str] | None = None,
    text: bool = True,
    k: int = 100,
    m_values: Sequence[int] = M_VALUES,
    pc_images: int = 32,
    pc_neurons: int = 32,
    seed: int = 0,
    batch_size: int = 64,
    restart: bool = False,
    progress: bool = True,
    device: str = "cpu",
) -> AblateResult:
    """Run every experiment of the module doc on ``run`` and write ``RUN/ablate/``.

    ``eval_images``: a class-folder dataset, WebDataset tar shards whose samples have a
    ``.cls`` member (the class; any spec of ``open_source``) or ``synth:SPLIT:N[:SEED]``;
    the settings record its content fingerprint, so a resume over other images is refused
    (``restart`` redoes it); ``pools``: the text
    pools for the reconstruction (default: every pool the run has descriptions of;
    ``text=False`` skips it); ``k``: top images per neuron for tau_n (the statistics of
    ``solens describe``). A finished layer is not redone unless ``restart``.
    """
    run = run if isinstance(run, Run) else Run.open(run)
    run.require_complete()
    layers = list(run.layers) if not layers else [int(l) for l in layers]
    for l in layers:
        run.layer(l)
    source = open_source(eval_images) if isinstance(eval_images, str | Path) else eval_images
    spec = classifier_spec(source, classes_file)
    labels = class_indices(source, spec.labels)
    pools = list(pools) if pools is not None else (described_pools(run, layers) if text else [])
    if text and not pools:
        raise InputError(f"run {run.path} has no descriptions of layers {layers} (the text "
                         "reconstruction needs them): run `solens describe "
                         f"{run.path} --pool POOL` first, or pass --no-text")
    docs = {p: {l: load_descriptions(run, p, l) for l in layers} for p in pools}
    if k > run.n_images:
        raise InputError(f"--k {k} is more than the run's {run.n_images} images")
    model = run.load_model(device) if model is None else model
    d = model.info.d_embed
    m_capped = sorted({min(int(m), d) for m in m_values})
    evaluation = source.describe()
    if isinstance(source, ShardImages):  # their labels are not in the ids, as a folder's are
        evaluation["labels_fingerprint"] = source.labels_fingerprint()
    settings = AblateSettings(
        run_id=run.run_id, eval=evaluation, classifier=spec.to_dict(), k=int(k),
        pools=list(pools), m_values=m_capped, pc_images=int(pc_images),
        pc_neurons=int(pc_neurons), seed=int(seed))
    out = run.path / ABLATE_DIR
    done = _open_folder(out, settings, restart)
    texts = class_directions(model, spec)
    preprocess = default_preprocess(model)
    cache: dict[int, Tensor] = {}
    pending = [l for l in layers if l not in done]
    results = dict(done)
    if pending:
        ref_source = run.images()
        ref = pixels(ref_source, preprocess, run.row_candidates)
        means, direct_mean = reference_means(model, ref, pending, batch_size)
        rng = np.random.default_rng(seed)
        n_pc = min(pc_images, len(source))
        pc_idx = sorted(rng.choice(len(source), n_pc, replace=False).tolist())
        pc_x = pixels(source, preprocess, pc_idx)
        dictionaries = {p: (_pool_dictionary(model, docs[p][layers[0]]),
                            docs[p][layers[0]].method == "nnomp") for p in pools}
        for l in tqdm(pending, desc="ablate", unit="layer", disable=not progress):
            st = stats_for(run, l, k)
            n_neurons = model.info.d_mlp  # a sample of its own per layer: resumable
            neurons = sorted(np.random.default_rng([seed, l]).choice(
                n_neurons, min(pc_neurons, n_neurons), replace=False).tolist())
            res = ablate_layer(
                model, run, l, lambda: _batches(source, preprocess, batch_size, cache),
                labels, texts, stats=st, reference_mean_act=means[l],
                reference_direct_mean=direct_mean[l], dictionaries=dictionaries,
                m_values=m_capped, pc_images=pc_x, pc_neurons=neurons, progress=progress)
            save_json_atomic(out / f"{layer_dir(l)}.json", res.to_dict())
            results[l] = res
    result = AblateResult(settings, [results[l] for l in layers], m_capped, d)
    write_outputs(out, result)
    return result


def _open_folder(out: Path, settings: AblateSettings, restart: bool) -> dict[int, LayerResult]:
    """Create ``RUN/ablate`` or resume it: the finished layers of the same settings."""
    if not open_results(out, FORMAT, VERSION, settings, restart=restart,
                        what="ablations", stale=["layer-*.json"]):
        return {}
    done = {}
    for p in out.glob("layer-*.json"):
        try:
            r = LayerResult.from_dict(json.loads(p.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a damaged layer file: redone
        done[r.layer] = r
    return done


# --- outputs -----------------------------------------------------------------------------
def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def markdown(result: AblateResult) -> str:
    """The table of every layer and variant, the text reconstruction and the statistics."""
    s = result.settings
    lines = [
        "# Layer ablations",
        "",
        f"Evaluation: {s.eval.get('spec') or s.eval.get('root')} ({s.eval.get('n')} images), "
        f"classifier: {s.classifier['source']}; means, thresholds (top-{s.k}) and r_n from "
        f"the run's images. Zero-shot top-1 (%).",
        "",
        "| layer | baseline | " + " | ".join(VARIANTS) + " |",
        "|---:|---:|" + "---:|" * len(VARIANTS),
    ]
    for r in result.layers:
        lines.append(f"| {r.layer} | {_pct(r.baseline)} | "
                     + " | ".join(_pct(r.accuracy[v]) for v in VARIANTS) + " |")
    for p in s.pools:
        lines += ["", f"## Text reconstruction over `{p}` (rank 1 with r_n -> m-term OMP)", "",
                  "| layer | " + " | ".join(f"m={m}" for m in result.m_capped) + " |",
                  "|---:|" + "---:|" * len(result.m_capped)]
        for r in result.layers:
            lines.append(f"| {r.layer} | " + " | ".join(
                _pct(r.text_reconstruction[p][str(m)]) for m in result.m_capped) + " |")
    if max(s.m_values, default=0) >= result.embedding_dim:
        lines += ["", f"m is capped at the embedding dimension ({result.embedding_dim})."]
    lines += ["", "## Structure of the effects", "",
              "| layer | PC1 variance, second-order | PC1 variance, indirect | "
              "images above tau_n (median over neurons) |", "|---:|---:|---:|---:|"]
    for r in result.layers:
        fs = np.asarray(r.frac_significant)
        lines.append(f"| {r.layer} | {_pct(r.pc1_variance['second_order'])} | "
                     f"{_pct(r.pc1_variance['indirect'])} | "
                     f"{_pct(float(np.median(fs)) if fs.size else None)} |")
    lines += ["", f"PC1 variance: {s.pc_neurons} random neurons per layer, {s.pc_images} "
              "evaluation images (seed " + str(s.seed) + ")."]
    return "\n".join(lines) + "\n"


def plot_layers(result: AblateResult, path: Path) -> None:
    """Accuracy per layer per variant (the paper's Fig. 3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [r.layer for r in result.layers]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for v in VARIANTS:
        ax.plot(layers, [100 * r.accuracy[v] for r in result.layers], "o-", label=v)
    if result.layers:
        ax.axhline(100 * result.layers[0].baseline, color="k", ls="--", lw=1, label="baseline")
    ax.set_xlabel("layer whose effects are changed")
    ax.set_ylabel("zero-shot top-1 (%)")
    ax.set_xticks(layers)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)


def plot_text(result: AblateResult, path: Path) -> None:
    """Accuracy against the number of text terms m, per pool and layer (the paper's Fig. 4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    ms = result.m_capped
    for p in result.settings.pools:
        for r in result.layers:
            ax.plot(ms, [100 * r.text_reconstruction[p][str(m)] for m in ms], "o-", ms=3,
                    label=f"{p}, layer {r.layer}")
    for r in result.layers:
        ax.axhline(100 * r.accuracy["rank1"], color="grey", lw=0.6, ls=":")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("text terms m in the reconstruction of r_n")
    ax.set_ylabel("zero-shot top-1 (%)")
    ax.set_title("dotted: rank 1 with r_n itself", fontsize=8)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)


def write_outputs(out: Path, result: AblateResult) -> None:
    """``ablate.json`` (summary, settings, every layer), ``ablate.md``, ``fig3.png``,
    ``fig4.png`` (when there is a text pool)."""
    save_json_atomic(out / "ablate.json", {
        "format": FORMAT, "version": VERSION, "settings": asdict(result.settings),
        "m_capped": result.m_capped, "embedding_dim": result.embedding_dim,
        "summary": result.summary(), "layers": [r.to_dict() for r in result.layers]})
    save_text_atomic(out / "ablate.md", markdown(result))
    plot_layers(result, out / "fig3.png")
    if result.settings.pools:
        plot_text(result, out / "fig4.png")


__all__ = ["M_VALUES", "VARIANTS", "AblateResult", "AblateSettings", "LayerResult",
           "ablate_layer", "ablate_run", "described_pools", "markdown"]
