"""``solens attack``: semantic adversarial images for a class pair from the run's
polysemous neurons, against three baselines."""

from __future__ import annotations

from pathlib import Path

import typer

from solens.commands._args import int_list


def register(app: typer.Typer) -> None:
    @app.command("attack")
    def attack_cmd(
        run: Path = typer.Argument(..., help="Run folder with descriptions (`solens describe`)."),
        pair: str = typer.Option(..., "--pair", metavar="TRUE:TARGET",
                                 help="The true class and the class to push it to."),
        generator: str = typer.Option(
            "synth", "--generator", metavar="NAME",
            help="synth (the synthetic world's renderer, with ground truth), a diffusers "
            "pipeline folder, or a hub id already in the Hugging Face cache."),
        llm: Path | None = typer.Option(
            None, "--llm", metavar="FOLDER",
            help="A local instruction-tuned causal LM (transformers) that writes the prompts "
            "instead of the templates."),
        classes: Path | None = typer.Option(
            None, "--classes", metavar="FILE",
            help='Class names and prompt templates (JSON {"classes": ..., "templates": ...}).'),
        pool: str | None = typer.Option(None, "--pool", metavar="POOL",
                                        help="Described pool (default: the first one)."),
        layers: list[str] | None = typer.Option(None, "--layers", metavar="LAYER...",
                                                help="Layers of the run (default: all)."),
        k: int = typer.Option(100, "--k", min=1, metavar="N",
                              help="Top images per neuron of the statistics (tau_n, r_n)."),
        top_neurons: int = typer.Option(20, "--top-neurons", min=1, metavar="N",
                                        help="Neurons whose words are mined."),
        words: int = typer.Option(10, "--words", min=1, metavar="N",
                                  help="Words kept per method."),
        words_per_prompt: int = typer.Option(2, "--words-per-prompt", min=1, metavar="N"),
        threshold: float = typer.Option(
            0.8, "--threshold", metavar="COS",
            help="Drop words whose text embedding has a cosine above this with the target."),
        block: list[str] | None = typer.Option(None, "--block", metavar="WORD",
                                               help="Words never to use; repeat for several."),
        n: int = typer.Option(100, "--n", min=1, metavar="N", help="Images per repeat."),
        repeats: int = typer.Option(3, "--repeats", min=1, metavar="N"),
        seed: int = typer.Option(0, "--seed", metavar="N", help="Seed of prompts and images."),
        indirect_images: int = typer.Option(
            8, "--indirect-images", min=2, metavar="N",
            help="Run images for the indirect-effect directions of the baseline."),
        reliance_images: int = typer.Option(
            200, "--reliance-images", min=0, metavar="N",
            help="Scenes per context for the reliance measurement (0: skip)."),
        steps: int = typer.Option(25, "--steps", min=1, metavar="N",
                                  help="Diffusion steps (diffusers generators)."),
        guidance: float = typer.Option(7.5, "--guidance", metavar="X",
                                       help="Guidance scale (diffusers generators)."),
        size: int | None = typer.Option(None, "--size", min=8, metavar="PIXELS",
                                        help="Image size (default: 64 for synth, the "
                                        "pipeline's own otherwise)."),
        restart: bool = typer.Option(False, "--restart",
                                     help="Replace an earlier attack of other settings."),
        device: str = typer.Option("cpu", "--device", metavar="NAME", help="cpu, cuda, auto."),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
    ) -> None:
        """Semantic adversarial images: words of neurons that push TRUE towards TARGET.

        Example: solens attack runs/tiny --pair car:ship --generator synth

        Mines words from the neurons whose r_n aligns with text(TARGET) - text(TRUE),
        writes prompts showing TRUE with them, generates images and counts those classified
        as TARGET (binary zero-shot), against random neurons, words similar to TARGET and
        indirect-effect directions; measures the reliance on a planted context. Writes
        RUN/attack/TRUE-TARGET/ (summary.json, summary.md, scores.csv, prompts.txt,
        images/); a killed attack resumes.
        """
        from solens.attack.evaluate import attack_pair, parse_pair
        from solens.attack.generators import make_generator
        from solens.attack.prompts import LLMWriter
        from solens.models.devices import resolve_device
        from solens.store.run import Run

        parse_pair(pair)
        dev = resolve_device(device)
        r = Run.open(run)
        gen = make_generator(generator, size=size, steps=steps, guidance=guidance, device=dev)
        writer = LLMWriter(llm, device=dev) if llm is not None else None
        result = attack_pair(
            r, pair, gen, classes_file=classes, pool=pool,
            layers=int_list(layers, "--layers") or None, k=k, n_neurons=top_neurons,
            n_words=words, words_per_prompt=words_per_prompt, threshold=threshold,
            block=block or (), n_images=n, repeats=repeats, seed=seed, llm=writer,
            indirect_images=indirect_images, reliance_images=reliance_images,
            restart=restart, progress=progress, device=dev)
        from solens.attack.evaluate import markdown

        typer.echo(f"wrote {r.path / 'attack'}: " + markdown(result).splitlines()[-1])
