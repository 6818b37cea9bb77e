"""``solens discover``: words that describe an image, voted by its significant neurons."""

from __future__ import annotations

from pathlib import Path

import typer

from solens.commands._args import int_list


def register(app: typer.Typer) -> None:
    @app.command("discover")
    def discover_cmd(
        run: Path = typer.Argument(..., help="Run folder with descriptions (`solens describe`)."),
        images: list[str] = typer.Argument(
            ..., metavar="IMAGE",
            help="Image files, or one image set: an image folder, WebDataset tar shards "
            "('data/shard-{000000..000003}.tar', a glob, a folder of .tar files), or "
            "synth:SPLIT:N[:SEED] (scenes with ground truth: adds precision@5)."),
        pool: str | None = typer.Option(None, "--pool", metavar="POOL",
                                        help="Described pool (default: the first one)."),
        layers: list[str] | None = typer.Option(None, "--layers", metavar="LAYER...",
                                                help="Layers of the run (default: all)."),
        k: int = typer.Option(100, "--k", min=1, metavar="N",
                              help="Top images per neuron of the statistics (tau_n)."),
        words: int = typer.Option(10, "--words", min=1, metavar="N",
                                  help="Words kept per image."),
        device: str = typer.Option("cpu", "--device", metavar="NAME", help="cpu, cuda, auto."),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
    ) -> None:
        """Words that describe each image, with the neurons that vote for them.

        Example: solens discover runs/tiny photo.png synth:balanced:500:7

        The neurons whose centred second-order norm on the image exceeds tau_n vote for
        their description words with coefficient x norm. For synth:... images also
        precision@5 against each scene's concepts, next to the pool words nearest to the
        image embedding. Writes RUN/discover/ (discover.json, discover.md).
        """
        from solens.attack.discover import discover_images
        from solens.models.devices import resolve_device
        from solens.store.run import Run

        r = Run.open(run)
        doc = discover_images(r, images, pool=pool, layers=int_list(layers, "--layers") or None,
                              k=k, n_words=words, progress=progress,
                              device=resolve_device(device))
        for e in doc["images"][:10]:
            typer.echo(f"{e['image']}: " + ", ".join(w["text"] for w in e["words"][:5]))
        if doc["precision_at_5"] is not None:
            typer.echo(f"precision@5 {100 * doc['precision_at_5']:.1f}% (baseline, nearest pool "
                       f"words: {100 * doc['baseline']:.1f}%) on {doc['n_scored']} scenes")
        typer.echo(f"wrote {r.path / 'discover'}")
