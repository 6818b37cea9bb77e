"""The training loop of solens-tiny (LiT-style contrastive, frozen MiniLM text side).

``train(cfg, out)`` is deterministic for a given config (fixed seeds; batch ``k`` of the
``train`` split is a pure function of ``(data_seed, k)``, ``solens.tiny.data``), logs a JSONL
curve and a PNG plot into ``out``, checkpoints atomically every ``ckpt_every_s`` seconds and
resumes from the last checkpoint (``resume=True``).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from solens.experiments.zeroshot import accuracy
from solens.models.devices import resolve_device
from solens.store.arrays import write_atomic
from solens.store.images import SynthImages, class_indices, pixels
from solens.synth.captions import class_prompts, facet_pool
from solens.synth.world import CLASSES
from solens.tiny.config import TrainConfig, drop_rates_at, lr_at, total_steps
from solens.tiny.data import CaptionCache, Prefetcher
from solens.tiny.droppath import MLPDropPath
from solens.tiny.model import TinyCLIP, TinyPreprocess, save_tiny


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


@torch.no_grad()
def quick_zero_shot(model: TinyCLIP, images: Tensor, labels: Tensor, prompts: list[str]) -> float:
    """Zero-shot top-1 of the model being trained (switched to eval mode and back)."""
    model.eval()
    acc = accuracy(model.encode_image(images), labels, model.encode_text(prompts))
    model.train()
    return acc


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


def _save_ckpt(path: Path, model: TinyCLIP, opt, step: int, elapsed: float) -> None:
    state = {
        "model": model.state_dict(),
        "opt": opt.state_dict(),
        "step": step,
        "elapsed": elapsed,
        "torch_rng": torch.get_rng_state(),
    }
    write_atomic(path, lambda f: torch.save(state, f))


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
    dev = torch.device(resolve_device(cfg.device))
    tiny = cfg.tiny()
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")

    torch.manual_seed(cfg.seed)
    model = TinyCLIP(tiny)
    cache = CaptionCache(
        model.text, Path(caption_cache) if caption_cache else out / "minilm-cache.safetensors"
    )

    prompts = class_prompts()
    t0 = time.time()
    pool = facet_pool() if cfg.precompute_pool else []
    cache.ensure(pool + prompts, progress=progress)
    cache.save()
    if progress:
        print(
            f"caption pool: {len(pool)} facet captions embedded in {time.time() - t0:.0f}s",
            flush=True,
        )

    ev = SynthImages("balanced", cfg.eval_n, cfg.eval_seed, tiny.image_size)
    preprocess = TinyPreprocess(tiny)
    ev_x = pixels(ev, preprocess).to(dev)
    ev_y = class_indices(ev, CLASSES)
    prompt_emb = model.text.sentence_embeddings(prompts).to(dev)

    model.to(dev).train()
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
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
            x = preprocess.batch(imgs).to(dev, non_blocking=True)
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
