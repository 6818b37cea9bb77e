"""``solens models``: what solens can load here, and what it refuses and why."""

from __future__ import annotations

import json

import typer


def register(app: typer.Typer) -> None:
    @app.command("models")
    def models_cmd(
        cached: bool = typer.Option(
            False, "--cached", help="List only architectures with weights in the local caches."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print the inventory as JSON."),
    ) -> None:
        """List the models solens can load here: support matrix, open_clip tags, local caches.

        Example: solens models --cached

        Prints the support matrix (model families supported or refused, with the reason),
        the open_clip architectures the lens supports with their pretrained tags (those
        whose weights are in the local caches marked 'cached'), the bundled model, the
        repos in the local Hugging Face hub cache (hf: transformers CLIP checkpoints,
        hf-hub: open_clip repos) and the open_clip architectures refused, by family.
        Reads configs and caches only: nothing is downloaded. Details: docs/models.md.
        """
        from rich.console import Console
        from rich.table import Table

        from solens.models.support import FAMILIES, inventory

        inv = inventory()
        if cached:
            inv.architectures = [a for a in inv.architectures if a.cached]
        if as_json:
            typer.echo(json.dumps(inv.to_dict(), indent=1))
            return
        console = Console()
        t = Table(title="support matrix")
        for col in ("model family", "status", "how to load / why refused"):
            t.add_column(col)
        for family, status, how in FAMILIES:
            t.add_row(family, status, how)
        console.print(t)

        archs = inv.architectures
        t = Table(title=f"open_clip architectures the lens supports ({len(archs)})")
        t.add_column("--model")
        t.add_column("--pretrained tags (cached: weights in the local cache)")
        for a in archs:
            tags = [f"{tag} (cached)" if tag in a.cached else tag for tag in a.tags]
            t.add_row(a.name, ", ".join(tags) or "none (--checkpoint PATH or 'random')")
        console.print(t)

        console.print(f"bundled: {', '.join(inv.bundled)}")
        t = Table(title=f"Hugging Face hub cache ({inv.hub_cache})")
        t.add_column("--model")
        t.add_column("format")
        t.add_column("status")
        for r in inv.cached_repos:
            t.add_row(r.name, r.kind, "loads" if r.reason is None else f"refused: {r.reason}")
        if inv.cached_repos:
            console.print(t)
        else:
            console.print(f"Hugging Face hub cache ({inv.hub_cache}): no model repos")

        if not cached:
            t = Table(title=f"open_clip architectures refused ({len(inv.refused)})")
            t.add_column("family")
            t.add_column("architectures")
            by_family: dict[str, list[str]] = {}
            for refused in inv.refused:
                by_family.setdefault(refused.family, []).append(refused.name)
            for family, names in by_family.items():
                t.add_row(family, ", ".join(names))
            console.print(t)
