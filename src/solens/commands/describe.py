"""``solens describe`` (text descriptions of a run's neurons) and ``solens show`` (one neuron)."""

from __future__ import annotations

from pathlib import Path

import typer

from solens.commands._args import int_list


def register(app: typer.Typer) -> None:
    @app.command("describe")
    def describe_cmd(
        run: Path = typer.Argument(
            ..., metavar="RUN", help="Run folder written by `solens effects`."
        ),
        pool: str = typer.Option(
            "words-30k",
            "--pool",
            metavar="POOL",
            help="words-30k, words-10k, imagenet-classes, imagenet-descriptions, world, "
            "or a text file (one text per line).",
        ),
        terms: int | None = typer.Option(
            None, "--terms", min=1, metavar="N",
            help="OMP terms per neuron, at most the run's embedding dimension (default: 128, "
            "or the embedding dimension or pool size if smaller).",
        ),
        layers: list[str] | None = typer.Option(
            None, "--layers", "--layer", metavar="LAYER...",
            help="Layers to describe (default: all of the run).",
        ),
        nonneg: bool = typer.Option(
            False, "--nonneg", help="Non-negative OMP (positive coefficients only)."
        ),
        k: int = typer.Option(
            100, "--k", min=1, metavar="N", help="Top images per neuron (tau, r_n)."
        ),
        top_percent: float | None = typer.Option(
            None, "--top-percent", metavar="PERCENT",
            help="Top images as a percentage of the run (overrides --k).",
        ),
        recompute_stats: bool = typer.Option(
            False, "--recompute-stats", help="Recompute the statistics even if stored."
        ),
        batch_size: int = typer.Option(
            1024, "--batch-size", min=1, metavar="N", help="Neurons per OMP batch."
        ),
        device: str = typer.Option(
            "cpu", "--device", metavar="NAME", help="cpu, cuda, cuda:1 or auto."
        ),
        allow_partial: bool = typer.Option(
            False, "--allow-partial", help="Describe the complete chunks of an unfinished run."
        ),
        progress: bool = typer.Option(
            True, "--progress/--no-progress", help="Show progress bars."
        ),
    ) -> None:
        """Describe every neuron by sparse text decomposition of its rank-1 direction r_n.

        Example: solens describe runs/b32 --pool words-30k --layers 9 --terms 32

        Per layer: statistics (mean effect, centred norms, top-k images, tau, r_n, variance
        explained; stored in RUN/layer-LL/stats), the pool's text embeddings (cached in
        ~/.cache/solens/text or $SOLENS_CACHE), OMP of every r_n over the centred,
        per-text normalised pool. Writes RUN/descriptions/POOL[-nonneg]-layer-LL.json
        and .md. Definitions: docs/describe.md.
        """
        from rich.console import Console
        from rich.table import Table

        from solens.describe.describe import (
            DEFAULT_TERMS,
            describe_run,
            descriptions_path,
            resolve_terms,
            summary_rows,
        )
        from solens.describe.pools import load_pool
        from solens.models.devices import resolve_device
        from solens.store.protocol import DescriptionsDoc
        from solens.store.run import Run

        r = Run.open(run)
        layer_list = int_list(layers, "--layers") or None
        for l in layer_list or []:
            r.layer(l)
        p = load_pool(pool)  # unknown pool: fails before loading the model
        d_embed = int(r.model["d_embed"])
        n_terms = resolve_terms(terms, d_embed, len(p), f"pool {p.name!r}")
        dev = resolve_device(device)
        console = Console(stderr=False)
        table = Table(title=f"{r.path} - pool {p.name} ({len(p)} texts), "
                            f"{'NNOMP' if nonneg else 'OMP'} {n_terms} terms")
        for col in ("layer", "neurons", "mean cos", "var top-k", "var all", "seconds",
                    "example (most rank-1 neuron)"):
            table.add_column(col)
        written: list[Path] = []

        def add(doc: DescriptionsDoc) -> None:
            s = summary_rows(doc)
            best = max(doc.neurons, key=lambda e: e.var_topk)
            ex = f"#{best.neuron}: " + ", ".join(t.text for t in best.terms[:4])
            table.add_row(
                str(s["layer"]), str(s["neurons"]), f"{s['mean_cosine']:.3f}",
                f"{s['mean_var_topk']:.3f}", f"{s['mean_var_all']:.3f}",
                f"{s['seconds']['stats'] + s['seconds']['omp']:.1f}", ex,
            )
            written.append(descriptions_path(r, p.name, doc.layer, nonneg))

        describe_run(
            r, p, layer_list, n_terms=n_terms, nonneg=nonneg, k=k, top_percent=top_percent,
            recompute_stats=recompute_stats, allow_partial=allow_partial,
            batch_size=batch_size, device=dev, progress=progress, on_layer=add,
        )
        if terms is None and n_terms < DEFAULT_TERMS:
            why = ("the run's embedding dimension" if n_terms == d_embed
                   else f"the size of pool {p.name!r}")
            typer.echo(f"--terms {n_terms}: the default {DEFAULT_TERMS} capped at {why}",
                       err=True)
        console.print(table)
        for w in written:
            typer.echo(f"wrote {w} (+ .md)")

    @app.command("show")
    def show_cmd(
        run: Path = typer.Argument(
            ..., metavar="RUN", help="Run folder written by `solens effects`."
        ),
        layer: int = typer.Argument(..., metavar="LAYER", help="Source layer."),
        neuron: int = typer.Argument(..., metavar="NEURON", help="Neuron index."),
        pool: str | None = typer.Option(
            None, "--pool", metavar="POOL",
            help="Pool of the descriptions (default: the first pool the layer is described "
            "with, else words-30k).",
        ),
        nonneg: bool = typer.Option(False, "--nonneg", help="Show the NNOMP descriptions."),
        n_terms: int = typer.Option(15, "--terms", min=1, metavar="N", help="Terms to print."),
        n_images: int = typer.Option(
            10, "--images", min=0, metavar="N", help="Top images to print."
        ),
    ) -> None:
        """Print one neuron: top terms, tau, variance explained, top images.

        Example: solens show runs/b32 9 1234 --pool words-30k
        """
        from rich.console import Console
        from rich.table import Table

        from solens.describe.describe import neuron_report
        from solens.describe.pools import pool_slug
        from solens.experiments.ablate import described_pools
        from solens.models.model import RANDOM_WEIGHTS
        from solens.store.run import Run

        r = Run.open(run)
        r.layer(layer)
        if pool is None:
            pool = next(iter(described_pools(r, [layer])), "words-30k")
        name = pool_slug(Path(pool).stem) if Path(pool).is_file() else pool
        rep = neuron_report(r, layer, neuron, name, nonneg)
        console = Console()
        if rep["random_weights"]:
            console.print(f"[bold red]{RANDOM_WEIGHTS}[/bold red]: {rep['model']}")
        console.print(
            f"[bold]layer {layer} neuron {neuron}[/bold]  tau={rep['tau']:.4g} "
            f"(k={rep['k']})  var explained by r: top-k {rep['var_topk']:.3f}, "
            f"all {rep['var_all']:.3f}  mean sq. centred norm {rep['total_var']:.4g}"
        )
        if rep["terms"] is None:
            console.print(f"no {name!r} descriptions for layer {layer}: run "
                          f"`solens describe {r.path} --pool {pool} --layers {layer}`")
        else:
            t = Table(title=f"{rep['pool']} ({rep['method']}), reconstruction cosine "
                            f"{rep['cosine']:.3f}")
            t.add_column("#", justify="right")
            t.add_column("text")
            t.add_column("coef", justify="right")
            for i, term in enumerate(rep["terms"][:n_terms]):
                t.add_row(str(i + 1), term["text"], f"{term['coef']:+.4f}")
            console.print(t)
        if n_images:
            t = Table(title=f"top images ({rep['image_set']})")
            t.add_column("rank", justify="right")
            t.add_column("row", justify="right")
            t.add_column("centred norm", justify="right")
            t.add_column("image")
            for i in range(min(n_images, len(rep["top_images"]))):
                t.add_row(str(i + 1), str(rep["top_images"][i]), f"{rep['top_norms'][i]:.4g}",
                          rep["top_image_paths"][i])
            console.print(t)
