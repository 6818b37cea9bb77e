"""``solens demo``: everything on the bundled model, offline."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo_cmd(
        out: Path = typer.Option(
            Path("demo-out"), "--out", metavar="FOLDER", help="Output folder."
        ),
        n: int = typer.Option(1000, "--n", min=50, metavar="N",
                              help="Scenes for the effects run, descriptions and scores (the "
                                   "first N balanced scenes of the evaluation set; zero-shot "
                                   "accuracy and ablations always use all of it)."),
        pool: str = typer.Option(
            "world", "--pool", metavar="POOL", help="Text pool for descriptions."
        ),
        k: int = typer.Option(100, "--k", min=2, metavar="N", help="Top images per neuron."),
        terms: int = typer.Option(10, "--terms", min=1, metavar="N", help="OMP terms per neuron."),
        describe: bool = typer.Option(True, "--describe/--no-describe",
                                      help="Describe and score neurons."),
        progress: bool = typer.Option(True, "--progress/--no-progress",
                                      help="Show progress bars."),
    ) -> None:
        """Run the whole pipeline on solens-tiny and write summary.json + report.md.

        Example: solens demo --out demo-out --n 200
        """
        from solens.demo import run_demo, summary_line
        from solens.describe.stats import resolve_k

        if describe:
            resolve_k(n, k)  # --k above --n fails now, not after the effects are computed
        summary = run_demo(out, n=n, pool=pool, k=k, terms=terms, describe=describe,
                           progress=progress, log=lambda m: typer.echo(m, err=True))
        typer.echo(summary_line(summary))
