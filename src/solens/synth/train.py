"""Training solens-tiny on the synthetic world (LiT-style contrastive, frozen MiniLM text side).

``train(cfg, out)`` is deterministic for a given config (fixed seeds; batch ``k`` of the
``train`` split is a pure function of ``(data_seed, k)``), logs a JSONL curve and a PNG plot
into ``out``, checkpoints atomically every ``ckpt_every_s`` seconds and resumes from the last
checkpoint (``resume=True``).

Captions. The frozen MiniLM is the cost of the text side (~150 sentences/s on 2 CPU cores), so
two caption sources are mixed per image:

* *facet* captions: short canonical descriptions built from the scene spec from a closed set
  (~10k strings: "a photo of a {class}", "a {colour} {class}", "a {class} {background phrase}",
  "a {colour} {pattern} {class} {background phrase}", ...), whose MiniLM embeddings are computed
  once and cached on disk;
* *native* captions of the renderer (``solens.synth.captions``: varied templates, synonyms,
  several objects), encoded on the fly for a fraction ``native_frac`` of each batch.
"""

from __future__ import annotations

import json
import math
import queue
import random
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from solens.models.tiny import TinyCLIP, TinyConfig, images_to_tensor, save_tiny
from solens.store.arrays import save_bytes_atomic, write_atomic

# ------------------------------------------------------------------------------------ config


RESTART_KEYS = {"steps", "lr", "warmup_steps", "mlp_drop", "cls_mlp_drop"}


@dataclass
class TrainConfig:
    model: dict[str, Any] = field(default_factory=dict)  # TinyConfig fields
    steps: int = 1000
    batch_size: int = 256
    lr: float = 1e-3
    min_lr_frac: float = 0.02
    weight_decay: float = 0.1
    warmup_steps: int = 50
    beta2: float = 0.98
    grad_clip: float = 1.0
    seed: int = 0  # init + caption choices
    data_seed: int = 0  # train split seed
    native_frac: float = 0.0  # fraction of each batch captioned by the renderer's captions
    class_prompt_frac: float = 0.15  # fraction of facet captions that are "a photo of a {class}"
    # fraction of scenes holding >= 2 classes whose facet caption names two of them
    # ("a photo of a {class} and a {class}", primary object first)
    pair_caption_frac: float = 0.0
    # auxiliary 20-way loss against the class prompts "a photo of a {class}" (through the
    # learned text projection, same temperature), weight and first step where it applies
    aux_class_weight: float = 0.0
    aux_class_start: int = 0
    eval_seed: int = 999  # held-out balanced split seed for the curve (never trained on)
    eval_n: int = 512
    eval_every: int = 100
    log_every: int = 10
    ckpt_every_s: float = 180.0
    threads: int = 2
    device: str = "auto"
    max_minutes: float | None = None  # stop (and save) after this wall time
    # warm restarts after the main schedule: [{"steps": n, "lr": x, "warmup_steps": w}, ...],
    # each a further cosine cycle (same min_lr_frac) continuing from the previous one; a restart
    # may also set its own "mlp_drop" / "cls_mlp_drop" (else the top-level ones apply)
    restarts: list[dict[str, Any]] = field(default_factory=list)
    # final steps trained with patch dropout switched off ("unmasked tuning", FLIP)
    unmasked_steps: int = 0
    # torch threads for those steps (None: ``threads``); on 2 cores a full-length step runs
    # faster on 2 threads (0.77 vs 1.13 s), a patch-dropout step on 1
    unmasked_threads: int | None = None
    # per-block probability of dropping the MLP branch for a training sample (stochastic depth
    # on MLP sublayers only, ``MLPDropPath``); [] = none. Training only: the model is a plain ViT
    mlp_drop: list[float] = field(default_factory=list)
    # per-block probability of dropping, in addition, the MLP branch at the CLS token only (so
    # that the CLS cannot rely on its own MLPs and gathers evidence through heads); [] = none
    cls_mlp_drop: list[float] = field(default_factory=list)
    precompute_pool: bool = True  # embed every facet caption up front (off for smoke tests)

    @classmethod
    def from_json(cls, path: str | Path) -> TrainConfig:
        d = json.loads(Path(path).read_text())
        return cls.from_dict(d)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = set(cls.__dataclass_fields__)
        unknown = set(d) - names - {"name", "comment"}
        if unknown:
            raise ValueError(f"unknown training config keys: {sorted(unknown)}")
        for r in d.get("restarts", []):
            bad = set(r) - RESTART_KEYS
            if bad or "steps" not in r or "lr" not in r:
                raise ValueError(f"restart {r}: needs steps and lr, may set {sorted(RESTART_KEYS)}")
        return cls(**{k: v for k, v in d.items() if k in names})

    def tiny(self) -> TinyConfig:
        return TinyConfig.from_dict(self.model)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------- captions

_ART = {True: "an", False: "a"}


def _a(word: str) -> str:
    return f"{_ART[word[0] in 'aeiou']} {word}"


def _concept_word(kind: str, id: str) -> str:
    from solens.synth.world import concept

    return concept(kind, id).word


def _words(kind: str, id: str) -> list[str]:
    from solens.synth.world import concept

    c = concept(kind, id)
    return [c.word, *c.synonyms]


def facet_caption(
    spec: dict[str, Any],
    rng: random.Random,
    class_prompt_frac: float,
    pair_caption_frac: float = 0.0,
) -> str:
    """A short canonical caption of the primary object of ``spec`` (from a closed set,
    ``facet_pool``). Short facets use synonyms and background phrase variants. In scenes with
    two or more classes, a fraction ``pair_caption_frac`` names the primary and another class."""
    from solens.synth.captions import BACKGROUND_PHRASES
    from solens.synth.world import plural

    o = spec["objects"][0]
    cls = _concept_word("class", o["class"])
    others = list(
        dict.fromkeys(x["class"] for x in spec["objects"][1:] if x["class"] != o["class"])
    )
    if others and pair_caption_frac and rng.random() < pair_caption_frac:
        return f"a photo of {_a(cls)} and {_a(_concept_word('class', rng.choice(others)))}"
    cls_any = cls if rng.random() < 0.7 else rng.choice(_words("class", o["class"]))
    n_same = sum(1 for x in spec["objects"] if x["class"] == o["class"])
    col = _concept_word("colour", o["colour"])
    col_any = col if rng.random() < 0.8 else rng.choice(_words("colour", o["colour"]))
    pat = _concept_word("pattern", o["pattern"])
    phrases = BACKGROUND_PHRASES[spec["background"]["name"]]
    bg = phrases[0]
    if rng.random() < class_prompt_frac:
        return f"a photo of {_a(cls)}"
    r = rng.randrange(8)
    if r == 0:
        return f"a photo of {_a(col_any + ' ' + cls_any)}"
    if r == 1:
        return f"a photo of {_a(cls_any)} {rng.choice(phrases)}"
    if r == 2:
        return f"a photo of {_a(col + ' ' + cls)} {bg}"
    if r == 3:
        return f"a photo of {_a(pat + ' ' + cls)}"
    if r == 4:
        return f"a photo of {_a(col + ' ' + pat + ' ' + cls)}"
    if r == 5:
        return f"a photo of {_a(col + ' ' + pat + ' ' + cls)} {bg}"
    if r == 6 and n_same > 1:
        return f"a photo of {['', 'one', 'two', 'three'][n_same]} {plural(cls)}"
    return f"a photo of {_a(cls_any)}"


def facet_pool() -> list[str]:
    """Every string ``facet_caption`` can return (embedded once, cached on disk)."""
    from solens.synth.captions import BACKGROUND_PHRASES
    from solens.synth.world import BACKGROUNDS, CLASSES, COLOURS, PATTERNS, plural

    out: list[str] = []
    for c in CLASSES:
        cw = _concept_word("class", c)
        out += [
            f"a photo of {_a(cw)} and {_a(_concept_word('class', c2))}" for c2 in CLASSES if c2 != c
        ]
        for w in _words("class", c):
            out.append(f"a photo of {_a(w)}")
            for col in COLOURS:
                out += [f"a photo of {_a(cc + ' ' + w)}" for cc in _words("colour", col)]
            for b in BACKGROUNDS:
                out += [f"a photo of {_a(w)} {ph}" for ph in BACKGROUND_PHRASES[b]]
        out += [f"a photo of {n} {plural(cw)}" for n in ("two", "three")]
        for p in PATTERNS:
            out.append(f"a photo of {_a(_concept_word('pattern', p) + ' ' + cw)}")
        for col in COLOURS:
            cc = _concept_word("colour", col) + " " + cw
            for b in BACKGROUNDS:
                out.append(f"a photo of {_a(cc)} {BACKGROUND_PHRASES[b][0]}")
            for p in PATTERNS:
                cpc = _concept_word("colour", col) + " " + _concept_word("pattern", p) + " " + cw
                out.append(f"a photo of {_a(cpc)}")
                for b in BACKGROUNDS:
                    out.append(f"a photo of {_a(cpc)} {BACKGROUND_PHRASES[b][0]}")
    return list(dict.fromkeys(out))


class CaptionCache:
    """caption -> frozen MiniLM embedding [384], backed by a ``.safetensors`` file."""

    def __init__(self, text, path: Path | None):
        self.text = text  # MiniLMTextEncoder
        self.path = path
        self._saved = -1  # entries known to be on disk (-1: no file yet)
        if path is not None and path.exists():
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta, emb = f.metadata() or {}, f.get_tensor("emb")
            # captions live in the file's metadata; older caches kept them in a side file
            keys = json.loads(meta.get("keys") or Path(str(path) + ".keys.json").read_text())
            for k, v in zip(keys, emb, strict=True):
                self.text.cache[k] = v.clone()
            self._saved = len(self.text.cache)

    def ensure(self, texts: list[str], batch_size: int = 512, progress: bool = False) -> None:
        missing = [t for t in dict.fromkeys(texts) if t not in self.text.cache]
        for i in range(0, len(missing), 2048):
            self.text.sentence_embeddings(missing[i : i + 2048], batch_size=batch_size)
            if progress:
                print(
                    f"  MiniLM: {min(i + 2048, len(missing))}/{len(missing)} captions", flush=True
                )

    def save(self) -> None:
        """Write if grown: one atomic file, captions in its metadata (runs may share it)."""
        if self.path is None or len(self.text.cache) == self._saved:
            return
        from safetensors.torch import save as to_bytes

        keys = list(self.text.cache)
        emb = torch.stack([self.text.cache[k] for k in keys]).contiguous()
        save_bytes_atomic(self.path, to_bytes({"emb": emb}, metadata={"keys": json.dumps(keys)}))
        self._saved = len(keys)


# --------------------------------------------------------------------------------------- data


def _batch(k: int, cfg: TrainConfig, tiny: TinyConfig) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Training batch ``k``: uint8 images, one caption per image, labels (pure function of k)."""
    from solens.synth import iter_batches

    b = next(
        iter_batches(cfg.batch_size, "train", cfg.data_seed, tiny.image_size, start=k, n_batches=1)
    )
    rng = random.Random(f"{cfg.seed}/captions/{k}")
    caps = []
    for spec, native in zip(b.specs, b.captions, strict=True):
        if rng.random() < cfg.native_frac:
            caps.append(native)
        else:
            caps.append(facet_caption(spec, rng, cfg.class_prompt_frac, cfg.pair_caption_frac))
    return b.images, caps, b.labels


class Prefetcher:
    """Renders batches ``start, start+1, ...`` in a background thread (bounded queue)."""

    def __init__(self, start: int, stop: int, cfg: TrainConfig, tiny: TinyConfig, depth: int = 3):
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()

        def run() -> None:
            for k in range(start, stop):
                if self._stop.is_set():
                    return
                item = (k, *_batch(k, cfg, tiny))
                while not self._stop.is_set():
                    try:
                        self.q.put(item, timeout=0.5)
                        break
                    except queue.Full:
                        continue

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def get(self):
        return self.q.get()

    def close(self) -> None:
        self._stop.set()


# ------------------------------------------------------------------------------ MLP drop path


class MLPDropPath:
    """Stochastic depth on the MLP sublayers of an open_clip ``VisionTransformer``, in training.

    For block l, each sample's MLP branch is dropped with probability ``probs[l]`` (at every
    token), and in addition its branch at the CLS token alone with probability ``cls_probs[l]``;
    kept branches are scaled by ``1 / (1 - p)`` (inverted drop path, so eval needs no
    rescaling). The MLP is evaluated only on the kept samples. Installed as instance-level
    ``forward`` overrides: parameters and state-dict keys are unchanged, and ``remove()``
    restores the plain modules. Draws from the global torch RNG (seeded, saved in checkpoints):
    per dropping block, ``rand(B)`` for the samples, then ``rand(kept)`` for the CLS tokens. In
    eval mode (``module.training`` false) the MLPs run unchanged.
    """

    def __init__(
        self, visual: torch.nn.Module, probs: list[float], cls_probs: list[float] | None = None
    ):
        blocks = list(visual.transformer.resblocks)
        cls_probs = list(cls_probs) if cls_probs else [0.0] * len(blocks)
        probs = list(probs) if probs else [0.0] * len(blocks)
        for name, ps in (("mlp_drop", probs), ("cls_mlp_drop", cls_probs)):
            if len(ps) != len(blocks):
                raise ValueError(f"{name} has {len(ps)} entries for {len(blocks)} blocks")
            if any(not 0.0 <= p < 1.0 for p in ps):
                raise ValueError(f"{name} probabilities must lie in [0, 1): {ps}")
        batch_first = getattr(visual.transformer, "batch_first", True)
        self.batch_dim, self.token_dim = (0, 1) if batch_first else (1, 0)
        self._mlps: list[torch.nn.Module] = []
        for block, p, q in zip(blocks, probs, cls_probs, strict=True):
            if p > 0 or q > 0:
                self._install(block.mlp, float(p), float(q))
                self._mlps.append(block.mlp)

    def _install(self, mlp: torch.nn.Module, p: float, q: float) -> None:
        plain = type(mlp).forward.__get__(mlp)
        bd, td = self.batch_dim, self.token_dim

        def forward(x: Tensor) -> Tensor:  # x [B, T, D] (batch_first) or [T, B, D]
            if not mlp.training:
                return plain(x)
            idx = None
            if p > 0:
                idx = (torch.rand(x.shape[bd]) >= p).nonzero().squeeze(1).to(x.device)
                if idx.numel() == 0:
                    return x.new_zeros(x.shape)
                y = plain(x.index_select(bd, idx)) / (1.0 - p)
            else:
                y = plain(x)
            if q > 0:  # scale [b, T, 1] (batch_first): 1 everywhere, CLS kept / (1 - q)
                cls = (torch.rand(y.shape[bd]) >= q).to(y) / (1.0 - q)
                scale = y.new_ones(*y.shape[:2], 1)
                scale.select(td, 0).copy_(cls[:, None])
                y = y * scale
            if idx is None:
                return y
            return x.new_zeros(x.shape).index_copy(bd, idx, y)

        mlp.forward = forward  # type: ignore[method-assign]

    def remove(self) -> None:
        for mlp in self._mlps:
            del mlp.forward
        self._mlps = []


# ------------------------------------------------------------------------------------- loss


def clip_loss(
    img: Tensor, txt: Tensor, logit_scale: Tensor, captions: list[str]
) -> tuple[Tensor, Tensor]:
    """Symmetric InfoNCE with duplicate-aware targets (identical captions are all positives).
    Returns (loss, image->text top-1 accuracy)."""
    img = F.normalize(img, dim=-1)
    txt = F.normalize(txt, dim=-1)
    logits = logit_scale.exp().clamp(max=100) * img @ txt.t()
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    cid = torch.tensor([ids[c] for c in captions], device=img.device)
    same = (cid[:, None] == cid[None, :]).float()
    tgt = same / same.sum(1, keepdim=True)
    loss = 0.5 * (
        -(tgt * logits.log_softmax(1)).sum(1).mean()
        - (tgt * logits.log_softmax(0).t()).sum(1).mean()
    )
    acc = same.gather(1, logits.argmax(1, keepdim=True)).mean()
    return loss, acc


def total_steps(cfg: TrainConfig) -> int:
    return cfg.steps + sum(int(r["steps"]) for r in cfg.restarts)


def restart_at(step: int, cfg: TrainConfig) -> tuple[dict[str, Any] | None, int]:
    """The restart phase that ``step`` falls in (steps past the last restart stay in it) and
    its first step; ``(None, 0)`` inside the main schedule."""
    if step < cfg.steps or not cfg.restarts:
        return None, 0
    start = cfg.steps
    for r in cfg.restarts[:-1]:
        if step < start + int(r["steps"]):
            return r, start
        start += int(r["steps"])
    return cfg.restarts[-1], start


def drop_rates_at(step: int, cfg: TrainConfig) -> tuple[list[float], list[float]]:
    """(mlp_drop, cls_mlp_drop) in force at ``step``: the top-level rates, or those a restart
    phase sets for itself."""
    r = restart_at(step, cfg)[0] or {}
    return list(r.get("mlp_drop", cfg.mlp_drop)), list(r.get("cls_mlp_drop", cfg.cls_mlp_drop))


def lr_at(step: int, cfg: TrainConfig) -> float:
    r, start = restart_at(step, cfg)
    if r is not None:
        n, peak, warm = int(r["steps"]), float(r["lr"]), int(r.get("warmup_steps", 0))
        i = step - start
        if i < warm:
            return peak * (i + 1) / warm
        t = (i - warm) / max(1, n - warm)
        lo = peak * cfg.min_lr_frac
        return lo + 0.5 * (peak - lo) * (1 + math.cos(math.pi * min(1.0, t)))
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    lo = cfg.lr * cfg.min_lr_frac
    return lo + 0.5 * (cfg.lr - lo) * (1 + math.cos(math.pi * min(1.0, t)))


# -------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def quick_zero_shot(model: TinyCLIP, images: Tensor, labels: Tensor, prompts: list[str]) -> float:
    model.eval()
    f = model.encode_image(images, normalize=True)
    t = model.encode_text(prompts, normalize=True)
    model.train()
    return float(((f @ t.t()).argmax(1).cpu() == labels).float().mean())


def _plot(log_path: Path, png: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # pragma: no cover
        return
    rows = [json.loads(x) for x in log_path.read_text().splitlines() if x.strip()]
    tr = [r for r in rows if r.get("kind") == "train"]
    ev = [r for r in rows if r.get("kind") == "eval"]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    ax[0].plot([r["step"] for r in tr], [r["loss"] for r in tr], lw=0.8)
    ax[0].set_xlabel("step")
    ax[0].set_ylabel("loss (contrastive + aux class CE)")
    ax[0].set_title("training loss")
    ax[1].plot([r["step"] for r in tr], [r["acc"] for r in tr], lw=0.8, label="in-batch i->t acc")
    if ev:
        ax[1].plot(
            [r["step"] for r in ev],
            [r["zero_shot"] for r in ev],
            "o-",
            label="zero-shot top-1 (held-out balanced)",
        )
    ax[1].set_xlabel("step")
    ax[1].set_ylim(0, 1)
    ax[1].legend(loc="lower right", fontsize=8)
    ax[1].set_title("accuracy")
    fig.tight_layout()
    write_atomic(png, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


# ------------------------------------------------------------------------------------ train


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _save_ckpt(path: Path, model: TinyCLIP, opt, step: int, elapsed: float) -> None:
    state = {
        "model": model.state_dict(),
        "opt": opt.state_dict(),
        "step": step,
        "elapsed": elapsed,
        "torch_rng": torch.get_rng_state(),
    }
    write_atomic(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[TinyCLIP, int]:
    """The model of a training checkpoint (``RUN/checkpoint.pt``; the architecture comes from
    ``RUN/config.json`` beside it) in eval mode, and the step it was saved at. For looking at a
    run while it trains; the checkpoint file is only read."""
    path = Path(path)
    config = path.parent / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    if not config.is_file():
        raise FileNotFoundError(f"{config}: a checkpoint needs the run's config.json beside it")
    cfg = TrainConfig.from_json(config)
    try:
        st = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated or foreign file: pickle / zip errors of many kinds
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__})") from None
    if not isinstance(st, dict) or "model" not in st or "step" not in st:
        raise ValueError(f"{path}: not a solens-tiny training checkpoint")
    model = TinyCLIP(cfg.tiny())
    model.load_state_dict(st["model"])
    return model.to(device).eval(), int(st["step"])


def train(
    cfg: TrainConfig,
    out: str | Path,
    progress: bool = True,
    resume: bool = True,
    caption_cache: str | Path | None = None,
) -> Path:
    """Train solens-tiny per ``cfg`` into ``out``; returns the path of the final safetensors.

    Writes ``out/log.jsonl`` (train rows every ``log_every`` steps, eval rows every
    ``eval_every``), ``out/curve.png``, ``out/checkpoint.pt`` (atomic, every ``ckpt_every_s``)
    and at the end ``out/solens-tiny.safetensors`` + ``out/solens-tiny.json``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    dev = _device(cfg.device)
    tiny = cfg.tiny()
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")

    torch.manual_seed(cfg.seed)
    model = TinyCLIP(tiny)
    cache = CaptionCache(
        model.text, Path(caption_cache) if caption_cache else out / "minilm-cache.safetensors"
    )

    from solens.synth import CLASSES, iter_batches
    from solens.synth.world import concept

    prompts = [f"a photo of {_a(concept('class', c).word)}" for c in CLASSES]
    t0 = time.time()
    pool = facet_pool() if cfg.precompute_pool else []
    cache.ensure(pool + prompts, progress=progress)
    cache.save()
    if progress:
        print(
            f"caption pool: {len(pool)} facet captions embedded in {time.time() - t0:.0f}s",
            flush=True,
        )

    ev = next(iter_batches(cfg.eval_n, "balanced", cfg.eval_seed, tiny.image_size, n_batches=1))
    ev_x = images_to_tensor(ev.images, tiny).to(dev)
    ev_y = torch.as_tensor(ev.labels)
    prompt_emb = model.text.sentence_embeddings(prompts).to(dev)

    model.to(dev).train()
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (
            no_decay
            if p.ndim < 2 or "positional" in n or "class_embedding" in n or "logit" in n
            else decay
        ).append(p)
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, cfg.beta2),
        eps=1e-6,
    )
    step, elapsed_before = 0, 0.0
    ckpt = out / "checkpoint.pt"
    log_path = out / "log.jsonl"
    if resume and ckpt.exists():
        st = torch.load(ckpt, map_location=dev, weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        step, elapsed_before = int(st["step"]), float(st["elapsed"])
        torch.set_rng_state(st["torch_rng"])
        if log_path.exists():  # drop log rows past the checkpoint
            rows = [x for x in log_path.read_text().splitlines() if x.strip()]
            keep = [x for x in rows if json.loads(x)["step"] < step]
            log_path.write_text("".join(x + "\n" for x in keep))
        if progress:
            print(f"resumed at step {step}", flush=True)
    elif log_path.exists():
        log_path.unlink()

    start_wall = time.time()
    last_ckpt = time.time()
    n_total = total_steps(cfg)
    rates = drop_rates_at(step, cfg)
    drop = MLPDropPath(model.visual, *rates)  # [] and [] = no-op
    pf = Prefetcher(step, n_total, cfg, tiny)
    logf = log_path.open("a")

    def log(row: dict[str, Any]) -> None:
        logf.write(json.dumps(row) + "\n")
        logf.flush()
        if progress:
            print(json.dumps(row), flush=True)

    n_seen, t_rate = 0, time.time()
    try:
        while step < n_total:
            k, imgs, caps, labels = pf.get()
            assert k == step
            if (new_rates := drop_rates_at(step, cfg)) != rates:  # a restart with its own rates
                drop.remove()
                rates = new_rates
                drop = MLPDropPath(model.visual, *rates)
            lr = lr_at(step, cfg)
            if step >= n_total - cfg.unmasked_steps and hasattr(model.visual.patch_dropout, "prob"):
                if model.visual.patch_dropout.prob and cfg.unmasked_threads:
                    torch.set_num_threads(cfg.unmasked_threads)
                model.visual.patch_dropout.prob = 0.0
            for g in opt.param_groups:
                g["lr"] = lr
            cache.ensure(caps)
            x = images_to_tensor(imgs, tiny).to(dev, non_blocking=True)
            emb = model.text.sentence_embeddings(caps).to(dev)
            f = model.visual(x)
            g = model.text(emb)
            loss, acc = clip_loss(f, g, model.logit_scale, caps)
            if cfg.aux_class_weight and step >= cfg.aux_class_start:
                tp = F.normalize(model.text(prompt_emb), dim=-1)
                cls_logits = (
                    model.logit_scale.exp().clamp(max=100) * F.normalize(f, dim=-1) @ tp.t()
                )
                y = torch.as_tensor(labels, device=dev)
                loss = loss + cfg.aux_class_weight * F.cross_entropy(cls_logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            step += 1
            n_seen += len(caps)
            elapsed = elapsed_before + time.time() - start_wall
            if step % cfg.log_every == 0 or step == n_total:
                rate = n_seen / max(1e-6, time.time() - t_rate)
                n_seen, t_rate = 0, time.time()
                row = {
                    "kind": "train",
                    "step": step,
                    "loss": round(float(loss.detach()), 5),
                    "acc": round(float(acc), 4),
                    "lr": lr,
                    "logit_scale": round(model.logit_scale.exp().item(), 3),
                    "img_per_s": round(rate, 1),
                    "elapsed_s": round(elapsed, 1),
                }
                log(row)
            if step % cfg.eval_every == 0 or step == n_total or step == cfg.steps:
                zs = quick_zero_shot(model, ev_x, ev_y, prompts)
                row = {
                    "kind": "eval",
                    "step": step,
                    "zero_shot": round(zs, 4),
                    "elapsed_s": round(elapsed, 1),
                }
                log(row)
            stop_time = cfg.max_minutes is not None and elapsed > 60 * cfg.max_minutes
            at_end = step in (cfg.steps, n_total)
            if time.time() - last_ckpt > cfg.ckpt_every_s or at_end or stop_time:
                _save_ckpt(ckpt, model, opt, step, elapsed)
                cache.save()
                _plot(log_path, out / "curve.png")
                last_ckpt = time.time()
            if stop_time:
                if progress:
                    print(f"max_minutes reached at step {step}", flush=True)
                break
    finally:
        pf.close()
        logf.close()
        drop.remove()

    elapsed = elapsed_before + time.time() - start_wall
    weights = out / "solens-tiny.safetensors"
    meta = {
        "training": {
            "config": cfg.to_dict(),
            "steps_done": step,
            "images_seen": step * cfg.batch_size,
            "wall_s": round(elapsed, 1),
            "device": str(dev),
            "torch": torch.__version__,
            "final_zero_shot_quick": quick_zero_shot(model, ev_x, ev_y, prompts),
        }
    }
    model.eval()
    save_tiny(model, weights, out / "solens-tiny.json", extra=meta)
    _plot(log_path, out / "curve.png")
    return weights


def ship(
    run: str | Path,
    assets: str | Path | None = None,
    eval_n: int = 2000,
    eval_seed: int = 12345,
    weights: str | Path | None = None,
) -> dict[str, Any]:
    """Copy a run's weights into the package assets, write reference embeddings, evaluate
    (``solens.synth.evaluate.evaluate``) and record the numbers in ``solens-tiny.json``.
    Every file is written atomically; the ablations use ``min(eval_n, 1000)`` images."""
    from solens.models import tiny as T
    from solens.store.arrays import save_text_atomic
    from solens.synth.evaluate import evaluate

    run = Path(run)
    assets = Path(assets) if assets else T.ASSETS
    assets.mkdir(parents=True, exist_ok=True)
    src_w = Path(weights) if weights else run / "solens-tiny.safetensors"
    src_m = run / "solens-tiny.json"
    save_bytes_atomic(assets / "solens-tiny.safetensors", src_w.read_bytes())
    meta = json.loads(src_m.read_text())
    clip = T.load_tiny_clip(assets / "solens-tiny.safetensors", src_m)
    T.write_reference(clip, assets / "solens-tiny-reference.safetensors")
    t0 = time.time()
    res = evaluate(clip, n=eval_n, seed=eval_seed, ablation_n=min(eval_n, 1000))
    res["eval_wall_s"] = round(time.time() - t0, 1)
    meta["eval"] = res
    meta["files"] = {
        "weights": "solens-tiny.safetensors",
        "reference": "solens-tiny-reference.safetensors",
    }
    save_text_atomic(assets / "solens-tiny.json", json.dumps(meta, indent=2) + "\n")
    return res


__all__ = [
    "TrainConfig",
    "clip_loss",
    "facet_caption",
    "facet_pool",
    "load_checkpoint",
    "ship",
    "train",
]
