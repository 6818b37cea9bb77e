"""``solens synth``: render the synthetic world, train and evaluate solens-tiny."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from solens.errors import InputError

SYNTH_HELP = """The synthetic world and the bundled model solens-tiny.

Example: solens synth render --out scenes --n 100 --split conflict
"""
synth_app = typer.Typer(help=SYNTH_HELP, no_args_is_help=True)

DEFAULT_CONFIG = Path("configs/solens-tiny.json")


@synth_app.command("train")
def train_cmd(
    config: Path = typer.Option(
        DEFAULT_CONFIG, "--config", metavar="FILE", help="Training config (JSON)."
    ),
    out: Path = typer.Option(
        Path("runs/solens-tiny-train"), "--out", metavar="FOLDER", help="Output folder."
    ),
    resume: bool = typer.Option(True, "--resume/--restart", help="Resume from a checkpoint."),
    device: str | None = typer.Option(
        None, "--device", metavar="NAME", help="Override the config's device (cpu, cuda)."
    ),
    max_minutes: float | None = typer.Option(
        None, "--max-minutes", metavar="MINUTES", help="Stop (and save) early."
    ),
) -> None:
    """Train solens-tiny from scratch (fixed seed; reproduces the shipped weights).

    Example: solens synth train --config configs/solens-tiny.json --out runs/tiny-train
    """
    from solens.tiny.config import TrainConfig
    from solens.tiny.loop import train

    if not config.is_file():
        raise InputError(f"--config {config}: no such file")
    try:
        cfg = TrainConfig.from_json(config)
    except (ValueError, json.JSONDecodeError) as e:
        raise InputError(f"--config {config}: {e}") from None
    if device is not None:
        cfg.device = device
    if max_minutes is not None:
        cfg.max_minutes = max_minutes
    weights = train(cfg, out, progress=True, resume=resume)
    typer.echo(f"weights: {weights}")


@synth_app.command("eval")
def eval_cmd(
    n: int = typer.Option(
        2000, "--n", min=20, metavar="N", help="Held-out images per split."
    ),
    seed: int = typer.Option(
        12345, "--seed", metavar="N", help="Held-out split seed (never used in training)."
    ),
    weights: Path | None = typer.Option(
        None, "--weights", metavar="FILE", help="Weights other than the shipped."
    ),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", metavar="FILE",
        help="A training run's checkpoint.pt (e.g. of a run still training).",
    ),
    out: Path | None = typer.Option(
        None, "--json", metavar="FILE", help="Also write the results as JSON."
    ),
) -> None:
    """Print solens-tiny's accuracy table (zero-shot, conflict, attributes, block ablations).

    Example: solens synth eval --n 500 --json eval.json
    """
    from solens.store.arrays import save_json_atomic
    from solens.tiny.evaluate import evaluate
    from solens.tiny.model import WEIGHTS_PATH, as_model, load_clip

    if weights is not None and checkpoint is not None:
        raise InputError("give --weights or --checkpoint, not both")
    path = checkpoint if checkpoint is not None else weights
    clip = load_clip(path)
    res = evaluate(as_model(clip, str(path or WEIGHTS_PATH)), n=n, seed=seed)
    if clip.step is not None:
        res["checkpoint"] = {"path": str(checkpoint), "step": clip.step}
        typer.echo(f"checkpoint {checkpoint} at step {clip.step}")
    typer.echo(format_table(res))
    if out is not None:
        save_json_atomic(out, res)


def _pct(x: float) -> str:
    return f"{100 * x:5.1f}%"


def format_table(res: dict) -> str:
    """The accuracy table of ``solens.tiny.evaluate.evaluate``'s result."""
    rows = [
        ("zero-shot top-1, balanced", res["zero_shot_balanced"]),
        ("zero-shot top-1, conflict", res["zero_shot_conflict"]),
    ]
    rows += [(k.replace("_", " "), v) for k, v in res.items()
             if k.startswith(("colour_", "background_")) and isinstance(v, float)]
    lines = [f"solens-tiny on {res['n']} held-out scenes per split (seed {res['seed']})", ""]
    lines += [f"  {name:32s} {_pct(v)}" for name, v in rows]
    so, di = res.get("block_ablation_second_order"), res.get("block_ablation_direct")
    if isinstance(so, dict) and isinstance(di, dict):
        ref = res.get("eval_set", {}).get("ablation", {})
        where = (f" (on the same {res['n']} balanced scenes; means from {ref['reference_n']} "
                 f"others, seed {ref['reference_seed']})") if ref else ""
        lines += ["", f"  mean-ablation per block{where}:",
                  "  zero-shot top-1 (second-order | direct)"]
        base = so.get("baseline")
        if base is not None:
            lines.append(f"  {'no ablation':32s} {_pct(base)}")
        per_so, per_di = so.get("blocks", {}), di.get("blocks", {})
        for b in sorted(per_so, key=int):
            lines.append(f"  {'block ' + str(b):32s} {_pct(per_so[b])} | {_pct(per_di[b])}")
    ma = res.get("margin_attribution")
    if isinstance(ma, dict) and ma.get("margin"):
        m = ma["margin"]
        lines += ["", f"  share of the zero-shot margin ({m:.3f}) carried by each path, per block:",
                  f"  {'':10s} {'heads':>8s} {'MLP@CLS':>8s} {'MLP->head':>10s}"]
        n = sum(1 for k in ma if k.startswith("blocks.") and k.endswith(".attn"))
        for b in range(n):
            lines.append(
                f"  {'block ' + str(b):10s} {_pct(ma[f'blocks.{b}.attn'] / m):>8s} "
                f"{_pct(ma[f'blocks.{b}.mlp'] / m):>8s} {_pct(ma[f'second_order.{b}'] / m):>10s}"
            )
    return "\n".join(lines)


@synth_app.command("render")
def render_cmd(
    out: Path = typer.Option(
        ..., "--out", metavar="FOLDER", help="Folder to write PNGs into (sub-folder = label)."
    ),
    n: int = typer.Option(100, "--n", min=1, metavar="N", help="Number of scenes to render."),
    split: str = typer.Option(
        "balanced", "--split", metavar="SPLIT", help="train, balanced or conflict."
    ),
    seed: int = typer.Option(
        0, "--seed", metavar="N", help="Seed of the scenes (same seed, same scenes)."
    ),
    masks: bool = typer.Option(False, "--masks/--no-masks", help="Also write object masks."),
) -> None:
    """Render scenes to an image folder that `solens effects --images` can read.

    Example: solens synth render --out scenes --n 100 --split conflict --seed 1
    """
    import numpy as np

    from solens.synth import sample

    try:
        scenes = sample(n, split=split, seed=seed)
    except ValueError as e:
        raise InputError(str(e)) from None
    for i, sc in enumerate(scenes):
        folder = out / sc.label
        folder.mkdir(parents=True, exist_ok=True)
        sc.image.save(folder / f"{split}-{seed}-{i:06d}.png")
        if masks:
            np.savez_compressed(folder / f"{split}-{seed}-{i:06d}.masks.npz",
                                allow_pickle=False,  # bool arrays
                                **{str(k): v for k, v in sc.masks.items()})
        (folder / f"{split}-{seed}-{i:06d}.json").write_text(json.dumps(sc.spec))
    typer.echo(f"wrote {len(scenes)} scenes to {out}")


def register(app: typer.Typer) -> None:
    app.add_typer(synth_app, name="synth")
