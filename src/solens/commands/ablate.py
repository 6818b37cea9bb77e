"""``solens ablate``: the paper's layer experiments (mean ablations, significance, rank 1,
text reconstruction, indirect effects) on a run, as one command."""

from __future__ import annotations

from pathlib import Path

import typer

from solens.commands._args import int_list


def register(app: typer.Typer) -> None:
    @app.command("ablate")
    def ablate_cmd(
        run: Path = typer.Argument(..., help="Run folder written by `solens effects`."),
        eval_images: str = typer.Option(
            ..., "--eval", metavar="IMAGES",
            help="Evaluation images: a class-folder dataset (ImageNet synset folders, or "
            "any folders with --classes), WebDataset tar shards with a .cls member per "
            "sample ('data/shard-{000000..000003}.tar', a glob, or a folder of .tar files), "
            "or synth:SPLIT:N[:SEED].",
        ),
        classes: Path | None = typer.Option(
            None, "--classes", metavar="FILE",
            help='Class names and prompt templates (JSON {"classes": ..., "templates": ...}).',
        ),
        layers: list[str] | None = typer.Option(
            None, "--layers", metavar="LAYER...", help="Layers of the run (default: all)."
        ),
        pools: list[str] | None = typer.Option(
            None, "--pool", metavar="POOL",
            help="Text pools for the reconstruction (default: every pool the run has "
            "descriptions of); repeat for several.",
        ),
        text: bool = typer.Option(True, "--text/--no-text",
                                  help="Run the text reconstruction (needs descriptions)."),
        k: int = typer.Option(100, "--k", min=1, metavar="N",
                              help="Top images per neuron for the threshold tau_n."),
        pc_images: int = typer.Option(32, "--pc-images", min=2, metavar="N",
                                      help="Images for the PC1-variance comparison."),
        pc_neurons: int = typer.Option(32, "--pc-neurons", min=1, metavar="N",
                                       help="Neurons per layer for the PC1 comparison."),
        seed: int = typer.Option(0, "--seed", metavar="N", help="Seed of the samples."),
        batch_size: int = typer.Option(64, "--batch-size", min=1, metavar="N"),
        restart: bool = typer.Option(False, "--restart",
                                     help="Replace earlier results of other settings."),
        device: str = typer.Option("cpu", "--device", metavar="NAME", help="cpu, cuda, auto."),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
    ) -> None:
        """Zero-shot accuracy per layer under the paper's ablations of the run's effects.

        Variants: second-order effects mean-ablated (all, significant only, insignificant
        only), rank 1, text reconstruction, indirect, direct; plus PC1 variance of
        second-order vs indirect effects and the fraction of images above tau_n.

        Example: solens ablate runs/tiny --eval synth:balanced:2000:12345

        Writes RUN/ablate/ (ablate.md, ablate.json, fig3.png, fig4.png); a killed run
        resumes at the first unfinished layer.
        """
        from solens.experiments.ablate import ablate_run
        from solens.models.devices import resolve_device
        from solens.store.run import Run

        r = Run.open(run)
        result = ablate_run(
            r, eval_images, classes_file=classes, layers=int_list(layers, "--layers") or None,
            pools=pools or None, text=text, k=k, pc_images=pc_images, pc_neurons=pc_neurons,
            seed=seed, batch_size=batch_size, restart=restart, progress=progress,
            device=resolve_device(device),
        )
        s = result.summary()
        worst = min(range(len(s["layers"])), key=lambda i: s["second_order"][i])
        typer.echo(
            f"wrote {r.path / 'ablate'}: baseline {100 * s['baseline']:.1f}%; largest "
            f"second-order drop at layer {s['layers'][worst]} "
            f"({100 * (s['baseline'] - s['second_order'][worst]):.1f} points); PC1 variance "
            f"{100 * s['pc1_variance']['second_order']:.1f}% (second-order) vs "
            f"{100 * s['pc1_variance']['indirect']:.1f}% (indirect)"
        )
