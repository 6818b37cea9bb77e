"""``solens atlas``: a static HTML atlas of a run's described neurons."""

from __future__ import annotations

from pathlib import Path

import typer

from solens.commands._args import int_list


def register(app: typer.Typer) -> None:
    @app.command("atlas")
    def atlas_cmd(
        run: Path = typer.Argument(..., help="Run folder with descriptions (`solens describe`)."),
        out: Path | None = typer.Option(None, "--out", metavar="DIR",
                                        help="Site folder (default: RUN/atlas)."),
        pool: str | None = typer.Option(
            None, "--pool", metavar="POOL",
            help="Descriptions over this pool (default: the pool describing most layers)."),
        nonneg: bool = typer.Option(False, "--nonneg", help="Show the non-negative (NNOMP) "
                                    "descriptions."),
        layers: list[str] | None = typer.Option(
            None, "--layers", metavar="LAYER...", help="Layers to show (default: all described)."
        ),
        n_top: int = typer.Option(8, "--n-top", min=1, metavar="N",
                                  help="Top images shown per neuron."),
        thumb: int = typer.Option(112, "--thumb", min=16, metavar="PIXELS",
                                  help="Thumbnail size."),
        heatmaps: bool = typer.Option(True, "--heatmaps/--no-heatmaps",
                                      help="Per-patch heatmaps over the top images (re-loads "
                                      "the run's model)."),
        n_nearest: int = typer.Option(8, "--nearest", min=0, metavar="N",
                                      help="Nearest neurons by r_n per page."),
        batch_size: int = typer.Option(32, "--batch-size", min=1, metavar="N"),
        device: str = typer.Option("cpu", "--device", metavar="NAME", help="cpu, cuda, auto."),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
    ) -> None:
        """Write a static HTML atlas of the run's described neurons (works from file://).

        Example: solens atlas runs/tiny --out atlas-tiny

        An index of every described neuron (search by word, filter by layer, sort by
        polysemy, variance explained or fraction significant), one page per neuron (terms
        with signed coefficients, top images with per-patch second-order heatmaps,
        histogram of centred norms with tau_n, nearest neurons by r_n), and pages for the
        run's ablate/, segment/, attack/ and discover/ outputs where they exist. A killed
        build resumes; open OUT/index.html in a browser.
        """
        from solens.atlas.build import build_atlas
        from solens.models.devices import resolve_device
        from solens.store.run import Run

        r = Run.open(run)
        res = build_atlas(
            r, out, pool=pool, nonneg=nonneg, layers=int_list(layers, "--layers") or None,
            n_top=n_top, thumb=thumb, heatmaps=heatmaps, n_nearest=n_nearest,
            batch_size=batch_size, device=resolve_device(device), progress=progress,
        )
        extra = f", pages for {', '.join(res.sections)}" if res.sections else ""
        typer.echo(f"wrote {res.index}: {res.n_neurons} neurons of layers "
                   f"{', '.join(map(str, res.layers))} ({res.pool}){extra}; "
                   f"{res.bytes / 2**20:.1f} MiB in {res.seconds['total']:.0f} s")
