"""The demo's section for ``solens attack`` and ``solens discover``: one class pair and
discovery on a few world scenes, small enough for ``solens demo``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from solens.attack.discover import TOP, discover_images
from solens.attack.evaluate import attack_pair
from solens.attack.mining import METHODS
from solens.models.model import Model
from solens.store.run import Run

PAIR = "ship:car"
"""The demo's pair: car has a planted context (road) that a ship can be put in."""
DISCOVER_SEED = 12348
"""Seed of the scenes the demo's discovery scores (not the run's, nor the ablations')."""


def demo_section(
    run: Run,
    model: Model,
    *,
    pair: str = PAIR,
    n_images: int = 20,
    repeats: int = 2,
    layers: Sequence[int] | None = None,
    n_discover: int = 100,
    progress: bool = False,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Attack ``pair`` (``n_images`` x ``repeats`` per method; the run's last layer unless
    ``layers``, and the indirect baseline from 4 images with means over 200: its per-neuron
    ablations are the slow part) and discover words on ``n_discover`` balanced scenes.
    Returns ``summary.json``'s ``"attack"`` and ``"discover"`` entries (the checked keys
    only) and the details the report shows (``"attack_detail"``)."""
    layers = list(layers) if layers is not None else sorted(run.layers)[-1:]
    res = attack_pair(run, pair, model=model, layers=layers, n_images=n_images,
                      repeats=repeats, indirect_images=4, indirect_reference=200,
                      reliance_images=5 * n_images, progress=progress)
    s = res.summary()
    entry: dict[str, Any] = {m: [s["methods"][m]["mean"], s["methods"][m]["std"]]
                             for m in METHODS}
    entry["reliance"] = s["reliance"]
    detail: dict[str, Any] = {
        "pair": pair, "words": {m: s["methods"][m]["words"][:5] for m in METHODS},
        "n_images": n_images, "repeats": repeats, "layers": layers,
        "folder": f"run/attack/{pair.replace(':', '-')}"}
    doc = discover_images(run, [f"synth:balanced:{n_discover}:{DISCOVER_SEED}"], model=model,
                          progress=progress)
    first = doc["images"][0] if doc["images"] else None
    disc = {"precision_at_5": doc["precision_at_5"], "baseline": doc["baseline"]}
    detail["discover"] = {
        "n": doc["n_scored"], "images": f"synth:balanced:{n_discover}:{DISCOVER_SEED}",
        "example": None if first is None else {
            "image": first["image"], "words": [w["text"] for w in first["words"][:TOP]],
            "nearest": first["nearest"][:TOP]}}
    return {pair: entry}, disc, detail


def report_lines(attack: dict[str, Any] | None, discover: dict[str, Any] | None,
                 detail: dict[str, Any] | None) -> list[str]:
    """The report's lines for the two entries and their details (nothing when absent)."""
    lines: list[str] = []
    if not detail:
        return lines
    for pair, e in (attack or {}).items():
        rel = e.get("reliance")
        lines += [
            "", f"## Semantic adversarial images (`solens attack`, pair {pair})", "",
            f"Words mined from the neurons whose r_n points from text({pair.split(':')[0]}) "
            f"to text({pair.split(':')[1]}), put into prompts with the true class and "
            f"rendered by the world's renderer; success = classified as the target (binary "
            f"zero-shot). {detail['repeats']} repeats x {detail['n_images']} scenes, blocks "
            f"{detail['layers']}. Reliance on the planted context: "
            + ("n/a" if rel is None else f"{100 * rel:+.1f} points") + " (docs/attack.md).",
            "", "| method | success % | words |", "|---|---:|---|"]
        for m in METHODS:
            mean, std = e[m]
            lines.append(f"| {m} | {100 * mean:.1f} ± {100 * std:.1f} | "
                         + ", ".join(detail["words"].get(m, [])) + " |")
    dd = detail.get("discover") or {}
    if discover and discover.get("precision_at_5") is not None and dd:
        lines += ["", "## Attribute discovery (`solens discover`)", "",
                  f"Precision@{TOP} of the words voted by each scene's significant neurons, "
                  f"{dd['n']} scenes (`{dd['images']}`): "
                  f"{100 * discover['precision_at_5']:.1f}%; pool words nearest to the image "
                  f"embedding: {100 * discover['baseline']:.1f}%."]
        ex = dd.get("example")
        if ex:
            lines.append(f"Example, {ex['image']}: {', '.join(ex['words'])} (nearest: "
                         f"{', '.join(ex['nearest'])}).")
    return lines


__all__ = ["PAIR", "demo_section", "report_lines"]
