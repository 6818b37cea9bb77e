"""``solens effects``: compute (or resume) a run folder of second-order coefficients."""

from __future__ import annotations

from pathlib import Path

import typer

from solens.commands._args import int_list


def register(app: typer.Typer) -> None:
    @app.command("effects")
    def effects_cmd(
        model: str = typer.Option(
            ..., "--model", metavar="NAME",
            help="open_clip name (ViT-B-32), hf:ORG/NAME or hf:FOLDER (transformers CLIP), "
            "hf-hub:/local-dir: id or solens-tiny; `solens models` lists them.",
        ),
        layers: list[str] = typer.Option(
            ..., "--layers", metavar="LAYER...",
            help="Source blocks, e.g. --layers 8 9 10 (valid: 0..L-2).",
        ),
        images: str = typer.Option(
            ...,
            "--images",
            metavar="SOURCE",
            help="Image folder (recursive; sub-folders = labels), WebDataset .tar shards "
            "(path, glob, brace pattern 'shards/train-{000..099}.tar', or a folder of .tar "
            "files) or synth:SPLIT:N[:SEED].",
        ),
        out: Path = typer.Option(
            ..., "--out", metavar="RUN", help="Run folder (created, or resumed if it exists)."
        ),
        pretrained: str | None = typer.Option(
            None, "--pretrained", metavar="TAG",
            help="open_clip pretrained tag (openai, ...), or 'random' for randomly initialised "
            "weights.",
        ),
        checkpoint: Path | None = typer.Option(
            None, "--checkpoint", metavar="PATH",
            help="Local weights file for --model's architecture (a transformers CLIP folder "
            "with --model hf).",
        ),
        batch_size: int = typer.Option(
            32, "--batch-size", min=1, metavar="N", help="Images per forward pass."
        ),
        chunk_size: int | None = typer.Option(
            None,
            "--chunk-size",
            min=1,
            metavar="N",
            help="Images per stored chunk (default: the existing run's, else ~128 MiB).",
        ),
        device: str = typer.Option(
            "auto", "--device", metavar="NAME", help="cpu, cuda, cuda:1 or auto."
        ),
        workers: int | None = typer.Option(
            None, "--workers", min=1, metavar="N", help="Image decoding threads."
        ),
        quick_gelu: bool | None = typer.Option(
            None, "--quick-gelu/--no-quick-gelu", help="Override the activation the weights imply."
        ),
        verify: str = typer.Option(
            "full", "--verify", metavar="HOW",
            help="On resume, check the stored chunks: full (sizes and sha256 checksums) or "
            "size (sizes and headers only, faster on huge runs); damaged chunks are redone.",
        ),
        progress: bool = typer.Option(
            True, "--progress/--no-progress", help="Show a progress bar."
        ),
    ) -> None:
        """Trace images through the model and store the second-order coefficients of --layers.

        Example: solens effects --model ViT-B-32 --pretrained openai --layers 9
        --images ~/imagenet/val --out runs/b32

        One traced forward per batch; per layer the run stores the coefficients s
        (images x neurons x later heads), the exact norms ||phi_n(I)||, the official
        offsets and the image-independent directions of both conventions. Re-running the
        same command resumes a killed run: chunks whose files are damaged, and chunks of
        images whose contents changed, are computed again (and named). Undecodable or too
        large images are skipped and listed in the manifest. Format: docs/run-format.md.

        Distributed: torchrun --nproc-per-node 4 -m solens effects ... splits the chunks
        across the processes (one GPU each, or CPU processes with gloo; several nodes through
        torchrun's rendezvous, with the run folder on a file system all nodes share: checked
        at the start); the run folder is the same as a one-process run's. A rank waits at
        most SOLENS_DIST_TIMEOUT_S seconds (default 3600) for the others (docs/performance.md).
        """
        from solens.models.catalog import check_model_name

        check_model_name(model)  # a mistyped --model fails before torch is imported (seconds)
        from solens.models.devices import resolve_device
        from solens.models.loading import load_model, require_weights
        from solens.models.model import RANDOM_WEIGHTS, is_random
        from solens.store.compute import check_layers, run_effects
        from solens.store.shards import open_source

        layer_list = int_list(layers, "--layers")
        source = open_source(images)  # missing / empty folder: fails before loading the model
        require_weights(model, pretrained, checkpoint, cli=True)  # no silent random weights
        from solens.store.distributed import Dist

        # torchrun: one rank of several (nccl on cuda:LOCAL_RANK, or gloo on CPU)
        dist = Dist.from_env(resolve_device(device))
        dev = dist.device
        m = load_model(model, pretrained, checkpoint=checkpoint, device=dev, quick_gelu=quick_gelu,
                       text=False)  # effects need no text: the vision tower only
        check_layers(m, layer_list)
        run = run_effects(
            m,
            source,
            layer_list,
            out,
            batch_size=batch_size,
            chunk_size=chunk_size,
            progress=progress and dist.is_main,
            workers=workers,
            verify=verify,
            dist=dist,
            extra={
                "command": {
                    "model": model,
                    "pretrained": pretrained,
                    "checkpoint": None if checkpoint is None else str(checkpoint),
                    "images": images,
                    "device": dev,
                }
            },
        )
        dist.close()
        if not dist.is_main:
            return
        session = run.manifest.sessions[-1] if run.manifest.sessions else {}
        for r in session.get("repaired", []):
            where = "static array" if r["index"] is None else f"chunk {r['index']}"
            typer.echo(f"recomputed {where}: {r['file']} was damaged ({r['problem']})", err=True)
        changed = session.get("changed", [])
        if changed:
            more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
            typer.echo(f"recomputed the chunks of {len(changed)} changed images: "
                       f"{', '.join(changed[:5])}{more}", err=True)
        for s in run.skipped[:5]:
            typer.echo(f"skipped {s['path']}: {s['reason']}", err=True)
        if len(run.skipped) > 5:
            typer.echo(f"skipped {len(run.skipped) - 5} more: see {run.path}/manifest.json",
                       err=True)
        t = run.manifest.timings
        random = f", model {m.info.name} with {RANDOM_WEIGHTS}" if is_random(m.info) else ""
        typer.echo(
            f"{run.path}: {run.n_images} images ({len(run.skipped)} skipped), "
            f"layers {run.layers}, {t.get('images_per_s')} img/s{random}"
        )
