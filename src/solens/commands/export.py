"""``solens export``: one layer's effects as a single .npy [images, neurons, d]."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export_cmd(
        run: Path = typer.Argument(
            ..., metavar="RUN", help="Run folder written by `solens effects`."
        ),
        layer: int = typer.Option(..., "--layer", metavar="LAYER", help="Source block to export."),
        out: Path = typer.Option(..., "--out", metavar="FILE", help="Output .npy file."),
        convention: str = typer.Option(
            "exact",
            "--convention",
            metavar="NAME",
            help="exact (contributions to f(I)) or official (reference code: 100/||f|| scaled).",
        ),
        neurons: list[str] | None = typer.Option(
            None, "--neurons", metavar="NEURON...",
            help="Neuron indices or ranges, e.g. --neurons 0 5 100:200.",
        ),
        allow_partial: bool = typer.Option(
            False, "--allow-partial", help="Export the complete chunks of an unfinished run."
        ),
        progress: bool = typer.Option(
            True, "--progress/--no-progress", help="Show a progress bar."
        ),
    ) -> None:
        """Export one layer's effects as a single .npy (images x neurons x d).

        Example: solens export runs/b32 --layer 9 --out b32-layer9.npy --neurons 0:100

        float32 in the reference repository's layout; image order = the run's image list.
        Streamed chunk by chunk into the file, never whole in memory.
        """
        from solens.store.export import export_effects, parse_neurons
        from solens.store.run import Run

        r = Run.open(run)
        if layer not in r.layers:
            from solens.errors import InputError

            raise InputError(f"layer {layer} is not in run {run} (layers {r.layers})")
        idx = parse_neurons(neurons, r.n_neurons)
        path = export_effects(
            r,
            layer,
            out,
            convention=convention,
            neurons=idx,
            allow_partial=allow_partial,
            progress=progress,
        )
        n = r.n_neurons if idx is None else len(idx)
        typer.echo(f"{path}: [{r.n_images}, {n}, {r.model['d_embed']}] float32 ({convention})")
