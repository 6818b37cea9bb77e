"""The training configuration of solens-tiny and its learning-rate / drop-rate schedule.

``TrainConfig`` is read from a JSON file (``configs/solens-tiny.json``); the schedule is a
linear warm-up and cosine decay over ``steps``, then optional warm restarts, each a further
cosine cycle that may set its own MLP drop rates.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from solens.tiny.model import TinyConfig

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
