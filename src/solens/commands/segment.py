"""``solens segment``: zero-shot segmentation from second-order effects against six
baselines, with pixel accuracy, mIoU and mAP."""

from __future__ import annotations

from pathlib import Path

import typer

from solens.commands._args import int_list


def register(app: typer.Typer) -> None:
    @app.command("segment")
    def segment_cmd(
        run: Path = typer.Argument(..., help="Run folder written by `solens effects` and "
                                             "described by `solens describe`."),
        images: str = typer.Option(
            ..., "--images", metavar="IMAGES",
            help="synth:SPLIT:N[:SEED] (exact masks of the primary object), the "
            "ImageNet-segmentation file gtsegs_ijcv.mat, an image folder (with --masks), or "
            "WebDataset tar shards whose samples hold their mask as KEY.mask.png.",
        ),
        masks: Path | None = typer.Option(
            None, "--masks", metavar="FOLDER",
            help="Masks of an image folder: same relative paths, same sizes, non-zero = object.",
        ),
        query: str | None = typer.Option(
            None, "--query", metavar="TEXT",
            help="Segment what this text names instead of the predicted class.",
        ),
        classes: Path | None = typer.Option(
            None, "--classes", metavar="FILE",
            help='Class names and templates for the predicted class (JSON {"classes": ..., '
            '"templates": ...}).',
        ),
        layers: list[str] | None = typer.Option(
            None, "--layers", metavar="LAYER...",
            help="Blocks whose neurons make the map (default: 8-10 of 12 scaled to the "
            "model's depth; block 0 for solens-tiny).",
        ),
        k: int | None = typer.Option(None, "--k", min=1, metavar="N",
                                     help="Neurons per map (default 200; 50 for solens-tiny)."),
        random_k: int | None = typer.Option(None, "--random-k", min=1, metavar="N",
                                            help="Neurons of the random baseline (default --k)."),
        textspan_layers: list[str] | None = typer.Option(
            None, "--textspan-layers", metavar="LAYER...",
            help="Blocks of the TextSpan baseline (default: the last third)."),
        threshold: float = typer.Option(0.5, "--threshold", metavar="X",
                                        help="Threshold on the min-max normalised maps."),
        overlays: int = typer.Option(8, "--overlays", min=0, metavar="N",
                                     help="Overlay PNGs of the first N images."),
        seed: int = typer.Option(0, "--seed", metavar="N", help="Seed of the random neurons."),
        batch_size: int = typer.Option(32, "--batch-size", min=1, metavar="N"),
        restart: bool = typer.Option(False, "--restart",
                                     help="Replace earlier results of other settings."),
        device: str = typer.Option("cpu", "--device", metavar="NAME", help="cpu, cuda, auto."),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
    ) -> None:
        """Segment images zero-shot with second-order maps and six baselines, side by side.

        Methods: second_order (the paper's mean activation of the top-k neurons by
        |<r_n, text>|), second_order_signed, raw_attention, rollout, chefer, textspan,
        gradcam, random_neurons. Maps return to the image's pixels through the same resize
        and centre crop as the image.

        Example: solens segment runs/tiny --images synth:conflict:500:7

        Writes RUN/segment/ (segment.json, segment.md, overlays/*.png); a killed run resumes
        at the first unfinished part of 100 images.
        """
        from solens.models.devices import resolve_device
        from solens.segment.run import segment_run

        result = segment_run(
            run, images, masks=masks, query=query, classes_file=classes,
            layers=int_list(layers, "--layers") or None, k=k, random_k=random_k,
            textspan_layers=int_list(textspan_layers, "--textspan-layers") or None,
            threshold=threshold, n_overlays=overlays, seed=seed, batch_size=batch_size,
            restart=restart, progress=progress, device=resolve_device(device))
        t = result.table()
        typer.echo(f"wrote {Path(run) / 'segment'}: {result.n_images} images; mIoU "
                   + ", ".join(f"{m} {100 * v['miou']:.1f}" for m, v in t.items()))
