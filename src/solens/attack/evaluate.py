"""``solens attack``: semantic adversarial images for a class pair, and their evaluation.

For the pair (true ``c1``, target ``c2``): words are mined by the method and its three
baselines (``solens.attack.mining``), prompts show c1 with them
(``solens.attack.prompts``), a generator renders them (``solens.attack.generators``) and
the model classifies each image by binary zero-shot classification, c1 vs c2 (the
classifier's prompt templates). An attack *succeeds* on an image classified as c2.
Images whose ground truth (the scene spec) does not contain c1, or does contain c2, are
dropped before counting. The success rate of a repeat = successes / kept images; each
method runs ``repeats`` times (prompt and image seeds ``(seed, repeat)``, shared by the
methods, so every method renders the same layouts) and reports mean and std.

*Reliance* (pairs where c2 has a context planted in the training split, ship -> sea,
apple -> red): binary accuracy (c1 vs c2) on scenes of c1 in a neutral context minus that
on scenes of c1 in c2's planted context. It bounds what a context attack can reach.

Output: ``RUN/attack/<c1>-<c2>/`` with ``manifest.json``, ``summary.json``,
``summary.md``, ``scores.csv``, ``prompts.txt``, ``images/*.png`` and ``parts/`` (one
finished method x repeat each: a killed attack resumes there); ``RUN/attack/attack.json``
lists the pairs done.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from solens.attack.generators import Generated, Generator, SceneGenerator
from solens.attack.mining import (
    METHODS,
    MinedWord,
    alignments,
    keep_words,
    nearest_words,
    pair_direction,
    random_neurons,
    rank1_directions,
    terms_of,
    too_close,
    top_aligned,
    vote,
)
from solens.attack.prompts import LLMWriter, Prompt, c2_words, template_prompts
from solens.describe.describe import load_descriptions
from solens.describe.omp import omp, prepare_dictionary
from solens.describe.pools import BUILTIN_POOLS, Pool, embed_pool, load_pool
from solens.describe.stats import stats_for
from solens.errors import InputError
from solens.experiments.ablate import described_pools, reference_means
from solens.experiments.classifier import ClassifierSpec, class_directions, classifier_spec
from solens.experiments.indirect import neuron_indirect_effects
from solens.models.model import Model
from solens.store.arrays import save_json_atomic, save_npy_atomic, save_text_atomic, write_atomic
from solens.store.compute import default_preprocess
from solens.store.images import pixels
from solens.store.protocol import DescriptionsDoc
from solens.store.results import open_results, settings_digest
from solens.store.run import Run, layer_dir
from solens.synth.spurious import SPURIOUS
from solens.synth.world import BACKGROUNDS, CLASSES, COLOURS, PATTERNS, concept

ATTACK_DIR = "attack"
FORMAT = "solens-attack"
VERSION = 1
_VALUES = {"background": BACKGROUNDS, "colour": COLOURS, "pattern": PATTERNS}


@dataclass(frozen=True)
class AttackSettings:
    """Everything that determines an attack's numbers; a resumed attack must have the
    same."""

    run_id: str
    pair: str
    classifier: str
    pool: str
    layers: list[int]
    k: int
    n_neurons: int
    n_words: int
    words_per_prompt: int
    threshold: float
    block: list[str]
    n_images: int
    repeats: int
    seed: int
    generator: dict[str, Any]
    llm: str | None
    indirect_images: int
    indirect_reference: int | None
    reliance_images: int

    def digest(self) -> str:
        return settings_digest(self)


# --- classes -------------------------------------------------------------------------------
def parse_pair(pair: str) -> tuple[str, str]:
    """``"c1:c2"`` -> ``(c1, c2)`` (``InputError`` for another form or c1 = c2)."""
    parts = [p.strip() for p in str(pair).split(":")]
    if len(parts) != 2 or not all(parts):
        raise InputError(f"--pair {pair!r}: expected TRUE:TARGET, e.g. --pair car:ship")
    if parts[0] == parts[1]:
        raise InputError(f"--pair {pair!r}: the true and the target class must differ")
    return parts[0], parts[1]


def binary_spec(spec: ClassifierSpec, c1: str, c2: str) -> ClassifierSpec:
    """The two-class classifier (c1, c2) of ``spec`` (classes matched by label or name)."""
    out = []
    for c in (c1, c2):
        hits = [i for i, (lab, name) in enumerate(zip(spec.labels, spec.names, strict=True))
                if c in (lab, name)]
        if not hits:
            shown = ", ".join(spec.names[:20]) + (", ..." if len(spec.names) > 20 else "")
            raise InputError(f"class {c!r} is not in the classifier ({spec.source}: {shown})")
        out.append(hits[0])
    return ClassifierSpec(tuple(spec.labels[i] for i in out), tuple(spec.names[i] for i in out),
                          spec.templates, spec.source)


def margins(embeddings: Tensor, texts: Tensor) -> Tensor:
    """cos(f(I), text(c2)) - cos(f(I), text(c1)): embeddings [B, d], texts [2, d] (c1, c2)
    -> [B]; positive = classified as c2."""
    cos = F.normalize(embeddings.double(), dim=-1) @ F.normalize(texts.double(), dim=-1).T
    return cos[:, 1] - cos[:, 0]


def kept(spec: dict[str, Any] | None, c1: str, c2: str) -> bool:
    """Whether an image counts: no ground truth, or a scene with an object of class ``c1``
    and none of ``c2`` (classes outside the world are not checked)."""
    if spec is None:
        return True
    classes = {o["class"] for o in spec["objects"]}
    return (c1 not in CLASSES or c1 in classes) and (c2 not in CLASSES or c2 not in classes)


def rate_stats(rates: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for one repeat) of ``rates``."""
    r = np.asarray(rates, np.float64)
    if not r.size:
        return 0.0, 0.0
    return float(r.mean()), float(r.std(ddof=1)) if r.size > 1 else 0.0


# --- reliance ------------------------------------------------------------------------------
def planted_context(c2: str) -> tuple[str, str] | None:
    """(attribute, value) of the strongest context planted for ``c2``, or ``None``."""
    cs = sorted((c for c in SPURIOUS if c.cls == c2), key=lambda c: -c.rate)
    return (cs[0].attribute, cs[0].value) if cs else None


def neutral_values(attribute: str, c1: str, c2: str) -> list[str]:
    """Values of ``attribute`` planted for neither c1, c2 nor (for backgrounds) any class."""
    used = {c.value for c in SPURIOUS if c.attribute == attribute and (
        attribute == "background" or c.cls in (c1, c2))}
    return [v for v in _VALUES[attribute] if v not in used]


def reliance(model: Model, texts: Tensor, c1: str, c2: str, n: int, seed: int
             ) -> dict[str, Any] | None:
    """Binary accuracy (c1 vs c2, ``texts`` [2, d]) on ``n`` scenes of c1 in c2's planted
    context and on ``n`` in neutral contexts (cycled), and their difference; ``None`` when
    c2 has no planted context or a class is not a world class."""
    ctx = planted_context(c2)
    if ctx is None or c1 not in CLASSES or n <= 0:
        return None
    attr, value = ctx
    neutral = neutral_values(attr, c1, c2)
    word = concept(attr, value).word
    gen = SceneGenerator()
    prompts_ctx = [f"{c1} {word}"] * n
    prompts_neu = [f"{c1} {concept(attr, neutral[i % len(neutral)]).word}" for i in range(n)]
    acc = {}
    for name, ps in (("context", prompts_ctx), ("neutral", prompts_neu)):
        emb = embed_generated(model, gen.generate(ps, seed))
        acc[name] = float((margins(emb, texts) <= 0).double().mean())
    return {"attribute": attr, "value": value, "neutral": neutral, "n": n,
            "accuracy_context": acc["context"], "accuracy_neutral": acc["neutral"],
            "reliance": acc["neutral"] - acc["context"]}


# --- images --------------------------------------------------------------------------------
class _Pil:
    """Generated images as an ``ImageSource`` for ``store.images.pixels``."""

    def __init__(self, images: Sequence[Generated]) -> None:
        self.images = [g.image for g in images]
        self.ids = [str(i) for i in range(len(self.images))]
        self.labels: list[str | None] | None = None

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> Any:
        return self.images[index].convert("RGB")

    def describe(self) -> dict[str, Any]:
        return {"kind": "generated", "n": len(self.images)}


@torch.no_grad()
def embed_generated(model: Model, images: Sequence[Generated], batch_size: int = 256
                    ) -> Tensor:
    """f(I) of generated images: [B, d] float32 on CPU (the model's preprocessing)."""
    x = pixels(_Pil(images), default_preprocess(model))
    out = [model.encode_image(x[i : i + batch_size].to(model.device, model.dtype)).float().cpu()
           for i in range(0, len(x), batch_size)]
    return torch.cat(out)


# --- word lists ----------------------------------------------------------------------------
@dataclass
class Miner:
    """What every method's word list needs: the pair's text direction, the pool's texts
    and embeddings, the description terms and the directions per layer."""

    c1: str
    c2: str
    texts: Tensor  # [2, d] class directions (c1, c2)
    pool_texts: list[str]
    pool_embeddings: Tensor  # [W, d]
    terms: dict[tuple[int, int], list[tuple[str, float]]]
    r: dict[int, Tensor]  # layer -> [N, d] rank-1 second-order directions
    n_neurons: int
    n_words: int
    threshold: float
    block: list[str]

    def drop(self) -> set[str]:
        return too_close(self.pool_texts, self.pool_embeddings, self.texts[1], self.threshold,
                         [*self.block, *c2_words(self.c2)])

    def direction(self) -> Tensor:
        return pair_direction(self.texts[0], self.texts[1])

    def second_order(self) -> list[MinedWord]:
        align = {l: alignments(r, self.direction()) for l, r in self.r.items()}
        return keep_words(vote(top_aligned(align, self.n_neurons), self.terms), self.drop(),
                          self.n_words)

    def random(self, seed: int) -> list[MinedWord]:
        sizes = {l: int(r.shape[0]) for l, r in self.r.items()}
        return keep_words(vote(random_neurons(sizes, self.n_neurons, seed), self.terms),
                          self.drop(), self.n_words)

    def similar_words(self) -> list[MinedWord]:
        near = nearest_words(self.pool_texts, self.pool_embeddings, self.texts[1],
                             len(self.pool_texts))
        return keep_words(near, self.drop(), self.n_words)

    def indirect(self, directions: dict[int, Tensor],
                 terms: dict[tuple[int, int], list[tuple[str, float]]]) -> list[MinedWord]:
        align = {l: alignments(v, self.direction()) for l, v in directions.items()}
        return keep_words(vote(top_aligned(align, self.n_neurons), terms), self.drop(),
                          self.n_words)


def indirect_directions(model: Model, run: Run, layers: Sequence[int], n_images: int,
                        seed: int, folder: Path, progress: bool = False,
                        reference: int | None = None) -> dict[int, Tensor]:
    """Per layer, the rank-1 direction of every neuron's indirect effects (mean-ablation,
    means per token position over the run's first ``reference`` images, all when None) on
    ``n_images`` of those images drawn with ``seed``: layer -> [N, d]. Cached in
    ``folder`` (pair-independent)."""
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[int, Tensor] = {}
    todo = []
    for l in layers:
        p = folder / _cache_name(l, n_images, seed, reference)
        if p.exists():
            out[l] = torch.from_numpy(np.load(p))
        else:
            todo.append(l)
    if not todo:
        return out
    preprocess = default_preprocess(model)
    source = run.images()
    rows = run.row_candidates[:reference] if reference else run.row_candidates
    ref = pixels(source, preprocess, rows)
    means, _ = reference_means(model, ref, todo)
    pick = np.random.default_rng(seed).choice(len(rows), min(n_images, len(rows)), replace=False)
    x = ref[torch.as_tensor(sorted(pick.tolist()))]
    for l in tqdm(todo, desc="indirect effects", unit="layer", disable=not progress):
        n = model.info.d_mlp
        dirs = []
        for n0 in range(0, n, 64):
            eff = neuron_indirect_effects(model, x, l, list(range(n0, min(n, n0 + 64))),
                                          means[l])
            dirs.append(rank1_directions(eff).float())
        out[l] = torch.cat(dirs)
        save_npy_atomic(folder / _cache_name(l, n_images, seed, reference), out[l].numpy())
    return out


def _cache_name(layer: int, n_images: int, seed: int, reference: int | None) -> str:
    ref = f"-r{reference}" if reference else ""
    return f"{layer_dir(layer)}-n{n_images}-s{seed}{ref}.npy"


def describe_directions(dictionary: Tensor, texts: Sequence[str], directions: dict[int, Tensor],
                        n_terms: int) -> dict[tuple[int, int], list[tuple[str, float]]]:
    """OMP terms ``(text, coef)`` of each direction (layer -> [N, d]) over a prepared
    dictionary [K, d] of ``texts``, ``n_terms`` each, by |coef|."""
    out: dict[tuple[int, int], list[tuple[str, float]]] = {}
    for l, v in directions.items():
        res = omp(dictionary, v.double(), n_terms)
        for n in range(v.shape[0]):
            pairs = [(texts[int(i)], float(c)) for i, c in zip(res.indices[n], res.coefs[n],
                                                               strict=True) if i >= 0]
            out[(l, n)] = sorted(pairs, key=lambda t: -abs(t[1]))
    return out


# --- the attack ----------------------------------------------------------------------------
@dataclass
class AttackResult:
    """One pair's outcome: per method the success rate of each repeat and the words."""

    pair: str
    reliance: dict[str, Any] | None
    rates: dict[str, list[float]]
    words: dict[str, list[list[MinedWord]]]
    n_images: int
    repeats: int
    settings: AttackSettings
    unknown: dict[str, int]

    def summary(self) -> dict[str, Any]:
        """``summary.json`` (format ``solens-attack``)."""
        methods = {}
        for m in METHODS:
            mean, std = rate_stats(self.rates[m])
            words = list(dict.fromkeys(w.text for ws in self.words[m] for w in ws))
            methods[m] = {"mean": mean, "std": std, "rates": list(self.rates[m]),
                          "words": words}
        return {"format": FORMAT, "version": VERSION, "pair": self.pair,
                "reliance": None if self.reliance is None else self.reliance["reliance"],
                "reliance_detail": self.reliance, "methods": methods,
                "n_images": self.n_images, "repeats": self.repeats,
                "unknown_words": self.unknown, "settings": asdict(self.settings)}


def pair_folder(run: Run, c1: str, c2: str) -> Path:
    safe = [c.replace("/", "_").replace(" ", "_") for c in (c1, c2)]
    return run.path / ATTACK_DIR / f"{safe[0]}-{safe[1]}"


def _open_folder(out: Path, settings: AttackSettings, restart: bool) -> None:
    open_results(out, FORMAT, VERSION, settings, restart=restart, what="an attack",
                 stale=["parts/*", "images/*"])


def described_pool(run: Run, layers: Sequence[int], pool: str | None) -> str:
    pools = described_pools(run, layers)
    if pool is None:
        if not pools:
            raise InputError(f"run {run.path} has no descriptions of layers {list(layers)}: run "
                             f"`solens describe {run.path} --pool POOL` first")
        return pools[0]
    if pool not in pools:
        raise InputError(f"run {run.path} has no {pool!r} descriptions of layers "
                         f"{list(layers)}: run `solens describe {run.path} --pool {pool}` first")
    return pool


def load_described_pool(doc: DescriptionsDoc) -> Pool:
    rec = doc.pool
    p = load_pool(rec.name if rec.name in BUILTIN_POOLS else rec.source)
    if p.content_hash != rec.content_hash:
        raise InputError(f"text pool {rec.name!r} changed since `solens describe` used it; "
                         "re-run `solens describe`")
    return p


def attack_pair(
    run: Run | str | Path,
    pair: str,
    generator: Generator | None = None,
    *,
    model: Model | None = None,
    classes_file: str | Path | None = None,
    pool: str | None = None,
    layers: Sequence[int] | None = None,
    k: int = 100,
    n_neurons: int = 20,
    n_words: int = 10,
    words_per_prompt: int = 2,
    threshold: float = 0.8,
    block: Sequence[str] = (),
    n_images: int = 100,
    repeats: int = 3,
    seed: int = 0,
    llm: LLMWriter | None = None,
    indirect_images: int = 8,
    indirect_reference: int | None = None,
    reliance_images: int = 200,
    save_images: bool = True,
    restart: bool = False,
    progress: bool = True,
    device: str = "cpu",
    log: Callable[[str], None] | None = None,
) -> AttackResult:
    """Mine, prompt, generate and evaluate the pair ``"c1:c2"`` on ``run`` (module doc);
    writes ``RUN/attack/<c1>-<c2>/``. ``generator`` defaults to the synthetic world's
    renderer; ``llm`` writes the prompts instead of the templates; the indirect baseline's
    mean activations come from the run's first ``indirect_reference`` images (all when
    None)."""
    c1, c2 = parse_pair(pair)
    run = run if isinstance(run, Run) else Run.open(run)
    run.require_complete()
    layers = list(run.layers) if not layers else [int(l) for l in layers]
    for l in layers:
        run.layer(l)
    spec = binary_spec(classifier_spec(run.images(), classes_file), c1, c2)
    pool_name = described_pool(run, layers, pool)
    if k > run.n_images:
        raise InputError(f"--k {k} is more than the run's {run.n_images} images")
    gen: Generator = generator if generator is not None else SceneGenerator()
    settings = AttackSettings(
        run_id=run.run_id, pair=f"{c1}:{c2}", classifier=spec.source, pool=pool_name,
        layers=layers, k=int(k), n_neurons=int(n_neurons), n_words=int(n_words),
        words_per_prompt=int(words_per_prompt), threshold=float(threshold),
        block=sorted(block), n_images=int(n_images), repeats=int(repeats), seed=int(seed),
        generator=gen.describe(), llm=None if llm is None else llm.path,
        indirect_images=int(indirect_images),
        indirect_reference=None if indirect_reference is None else int(indirect_reference),
        reliance_images=int(reliance_images))
    out = pair_folder(run, c1, c2)
    _open_folder(out, settings, restart)
    model = run.load_model(device) if model is None else model
    texts = class_directions(model, spec)  # [2, d]
    docs = {l: load_descriptions(run, pool_name, l) for l in layers}
    p = load_described_pool(docs[layers[0]])
    emb = torch.from_numpy(np.asarray(embed_pool(model, p))).double()
    r = {l: torch.from_numpy(np.array(stats_for(run, l, k).r)).double() for l in layers}
    miner = Miner(c1, c2, texts, list(p.texts), emb, terms_of(docs), r, int(n_neurons),
                  int(n_words), float(threshold), list(block))
    rel_path = out / "parts" / "reliance.json"
    if rel_path.exists():
        rel = json.loads(rel_path.read_text())["reliance"]
    else:
        rel = reliance(model, texts, c1, c2, reliance_images, seed + 7919)
        save_json_atomic(rel_path, {"reliance": rel})
    fixed: dict[str, list[MinedWord]] = {"second_order": miner.second_order(),
                                         "similar_words": miner.similar_words()}
    ind_dirs = indirect_directions(model, run, layers, indirect_images, seed,
                                   run.path / ATTACK_DIR / "indirect", progress,
                                   indirect_reference)
    D = prepare_dictionary(emb)[0]
    n_terms = max((len(e.terms) for d in docs.values() for e in d.neurons), default=10)
    fixed["indirect"] = miner.indirect(ind_dirs, describe_directions(D, p.texts, ind_dirs,
                                                                      n_terms))
    rates: dict[str, list[float]] = {m: [] for m in METHODS}
    words: dict[str, list[list[MinedWord]]] = {m: [] for m in METHODS}
    unknown: dict[str, int] = {}
    bar = tqdm(total=len(METHODS) * repeats, desc=f"attack {c1}:{c2}", unit="set",
               disable=not progress)
    for rep in range(repeats):
        for m in METHODS:
            part = out / "parts" / f"{m}-r{rep}.json"
            if part.exists():
                d = json.loads(part.read_text())
            else:
                ws = fixed[m] if m != "random" else miner.random(seed * 1000 + rep)
                d = _one_set(model, gen, llm, c1, c2, texts, ws, m, rep, settings,
                             out / "images" if save_images else None)
                save_json_atomic(part, d)
            rates[m].append(d["rate"])
            words[m].append([MinedWord(w["text"], w["score"],
                                       [(a, b, c) for a, b, c in w["neurons"]])
                             for w in d["words"]])
            for u in d["unknown"]:
                unknown[u] = unknown.get(u, 0) + 1
            bar.update(1)
    bar.close()
    result = AttackResult(f"{c1}:{c2}", rel, rates, words, int(n_images), int(repeats),
                          settings, dict(sorted(unknown.items(), key=lambda kv: -kv[1])))
    write_outputs(out, result)
    if log is not None:
        log(markdown(result).splitlines()[-1])
    return result


def _one_set(model: Model, gen: Generator, llm: LLMWriter | None, c1: str, c2: str,
             texts: Tensor, ws: list[MinedWord], method: str, rep: int,
             settings: AttackSettings, images_dir: Path | None) -> dict[str, Any]:
    """One method x repeat: prompts, images, scores (a ``parts/`` record)."""
    n, seed = settings.n_images, settings.seed * 1000 + rep
    w_text = [w.text for w in ws]
    w_score = [w.score for w in ws]
    prompts: list[Prompt] = (
        llm.prompts(c1, w_text, w_score, n, seed, settings.words_per_prompt) if llm
        else template_prompts(c1, w_text, w_score, n, seed, settings.words_per_prompt))
    imgs = gen.generate([q.text for q in prompts], seed)
    mg = margins(embed_generated(model, imgs), texts).tolist()
    rows: list[dict[str, Any]] = []
    for i, (q, g, v) in enumerate(zip(prompts, imgs, mg, strict=True)):
        name = f"{method}-r{rep}-{i:04d}.png"
        if images_dir is not None:
            images_dir.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            g.image.save(buf, format="PNG")
            write_atomic(images_dir / name, lambda f, b=buf.getvalue(): f.write(b))
        rows.append({"index": i, "prompt": q.text, "words": list(q.words),
                     "image": f"images/{name}", "kept": kept(g.spec, c1, c2),
                     "margin": float(v), "success": bool(v > 0), "unknown": list(g.unknown)})
    k = [r for r in rows if r["kept"]]
    rate = sum(r["success"] for r in k) / len(k) if k else 0.0
    unknown = sorted({u for r in rows for u in r["unknown"]})
    return {"method": method, "repeat": rep, "rate": rate, "n_kept": len(k),
            "words": [w.to_dict() for w in ws], "unknown": unknown, "rows": rows}


# --- outputs -------------------------------------------------------------------------------
def _pm(mean: float, std: float) -> str:
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def markdown(result: AttackResult) -> str:
    """The pair's table (success rate % as mean ± std over repeats) and words."""
    s = result.summary()
    rel = result.reliance
    lines = [f"# Attack {result.pair}", "",
             f"{result.repeats} repeats x {result.n_images} images per method; success = "
             "classified as the target by binary zero-shot classification; images whose scene "
             "lacks the true class or shows the target are dropped.", ""]
    if rel is not None:
        lines += [f"Reliance on the planted context ({rel['attribute']} = {rel['value']}): "
                  f"binary accuracy {100 * rel['accuracy_neutral']:.1f}% in neutral contexts vs "
                  f"{100 * rel['accuracy_context']:.1f}% in the planted one "
                  f"({100 * rel['reliance']:+.1f} points, {rel['n']} scenes each).", ""]
    else:
        lines += ["Reliance: n/a (no context planted for the target class).", ""]
    lines += ["| method | success % (mean ± std) | rates | words |", "|---|---:|---|---|"]
    for m in METHODS:
        d = s["methods"][m]
        lines.append(f"| {m} | {_pm(d['mean'], d['std'])} | "
                     + ", ".join(f"{100 * x:.0f}" for x in d["rates"]) + " | "
                     + ", ".join(d["words"][:10]) + " |")
    if result.unknown:
        lines += ["", "Prompt words the generator ignored: "
                  + ", ".join(f"{w} ({n})" for w, n in list(result.unknown.items())[:15])]
    so = s["methods"]["second_order"]
    best = max((m for m in METHODS if m != "second_order"), key=lambda m: s["methods"][m]["mean"])
    lines += ["", f"{result.pair}: second-order {_pm(so['mean'], so['std'])}% vs best baseline "
              f"{best} {_pm(s['methods'][best]['mean'], s['methods'][best]['std'])}%"]
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, result: AttackResult) -> None:
    """summary.json, summary.md, scores.csv, prompts.txt; updates ``../attack.json``."""
    save_json_atomic(out / "summary.json", result.summary())
    save_text_atomic(out / "summary.md", markdown(result))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["method", "repeat", "index", "image", "prompt", "kept", "margin", "success"])
    prompts: list[str] = []
    for part in sorted((out / "parts").glob("*-r*.json")):
        d = json.loads(part.read_text())
        for r in d["rows"]:
            w.writerow([d["method"], d["repeat"], r["index"], r["image"], r["prompt"],
                        int(r["kept"]), f"{r['margin']:.6f}", int(r["success"])])
            prompts.append(f"{d['method']}\t{d['repeat']}\t{r['index']}\t{r['prompt']}")
    save_text_atomic(out / "scores.csv", buf.getvalue())
    save_text_atomic(out / "prompts.txt", "\n".join(prompts) + "\n")
    index = out.parent / "attack.json"
    try:
        done = json.loads(index.read_text()).get("pairs", {})
    except (OSError, ValueError):
        done = {}
    s = result.summary()
    done[result.pair] = {"folder": out.name, "reliance": s["reliance"],
                         **{m: [s["methods"][m]["mean"], s["methods"][m]["std"]]
                            for m in METHODS}}
    save_json_atomic(index, {"format": FORMAT, "version": VERSION, "pairs": done})


__all__ = ["ATTACK_DIR", "AttackResult", "AttackSettings", "attack_pair", "binary_spec",
           "kept", "margins", "markdown", "neutral_values", "pair_folder", "parse_pair",
           "planted_context", "rate_stats", "reliance"]
