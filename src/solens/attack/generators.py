"""Text-to-image generators behind one interface (``Generator.generate``).

- ``SceneGenerator`` (``--generator synth``): the synthetic world's renderer as a
  text-to-scene model. The prompt's words that name world concepts (classes, colours,
  patterns, backgrounds, sizes, counts; synonyms and plurals included) set a scene spec;
  the first class is the primary object, a count word sets how many of it, the first
  colour / pattern / size applies to it, the first background to the scene, further
  classes become small extra objects (with the second colour / pattern, if any).
  Everything the prompt leaves open (layout, unnamed attributes) is drawn as in the
  ``balanced`` split. Words that are neither concepts nor filler are ignored and
  reported. The scene spec is the image's ground truth.
- ``DiffusersGenerator``: any diffusers text-to-image pipeline, from a local folder or a
  hub id already in the Hugging Face cache (nothing is downloaded). No ground truth.

Image ``i`` of a call with ``seed`` depends only on ``(prompt_i, seed, i)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from solens.errors import InputError
from solens.groundtruth.matching import concept_names, tokens
from solens.synth.render import render
from solens.synth.sampling import _positions, spec_at
from solens.synth.world import CONCEPTS, COUNTS, Concept

SYNTH = "synth"
"""The ``--generator`` value of the scene generator."""

FILLER: frozenset[str] = frozenset({
    "a", "an", "the", "of", "with", "and", "or", "on", "in", "at", "by", "near", "next", "to",
    "together", "beside", "photo", "photograph", "picture", "image", "caption", "showing",
    "shows", "show", "shown", "that", "is", "are", "some", "its", "it", "this", "there", "here",
    "as", "for", "from", "under", "over", "above", "below"
})
"""Words the scene generator understands as glue (neither a concept nor unknown)."""

_LARGE = (0.30, 0.38)
_SMALL = (0.17, 0.23)


@dataclass
class Generated:
    """One generated image: the picture, its scene spec (ground truth; ``None`` for a
    generator without one) and the prompt words it ignored."""

    image: Image.Image
    spec: dict[str, Any] | None = None
    unknown: tuple[str, ...] = field(default_factory=tuple)


class Generator(Protocol):
    """``generate(prompts, seed)`` -> one ``Generated`` per prompt; ``describe()`` -> what
    the generator is, for the manifest."""

    def generate(self, prompts: Sequence[str], seed: int) -> list[Generated]: ...

    def describe(self) -> dict[str, Any]: ...


# --- the synthetic world ------------------------------------------------------------------
def _lexicon() -> dict[tuple[str, ...], Concept]:
    out: dict[tuple[str, ...], Concept] = {}
    for c in CONCEPTS:
        for name in concept_names(c):
            out.setdefault(name, c)
    return out


_LEXICON = _lexicon()
_LONGEST = max(len(k) for k in _LEXICON)


def parse_prompt(prompt: str) -> tuple[list[Concept], list[str]]:
    """World concepts named by ``prompt`` in order (longest match first: "brick wall" is
    one background) and the unknown words (neither a concept nor ``FILLER``)."""
    t = tokens(prompt)
    found: list[Concept] = []
    unknown: list[str] = []
    i = 0
    while i < len(t):
        for m in range(min(_LONGEST, len(t) - i), 0, -1):
            c = _LEXICON.get(t[i : i + m])
            if c is not None:
                found.append(c)
                i += m
                break
        else:
            if t[i] not in FILLER:
                unknown.append(t[i])
            i += 1
    return found, unknown


def _first(found: Sequence[Concept], kind: str, k: int = 0) -> str | None:
    ids = [c.id for c in found if c.kind == kind]
    return ids[k] if len(ids) > k else None


def scene_spec(prompt: str, index: int, seed: int, size: int = 64
               ) -> tuple[dict[str, Any], list[str]]:
    """The scene spec for ``prompt`` (module doc) and its unknown words. Deterministic in
    ``(prompt, index, seed, size)``; what the prompt does not say comes from
    ``spec_at(index, "balanced", seed, size)``."""
    found, unknown = parse_prompt(prompt)
    spec = spec_at(index, "balanced", seed, size)
    rng = np.random.default_rng([int(seed), int(index), 1])
    base = spec["objects"][0]
    classes = [c.id for c in found if c.kind == "class"]
    primary = classes[0] if classes else base["class"]
    extras = [c for c in dict.fromkeys(classes[1:]) if c != primary]
    count = _first(found, "count")
    n_primary = COUNTS.index(count) + 1 if count else 1
    size_id = _first(found, "size") or base["size"]
    s0 = base["scale"] if size_id == base["size"] else float(
        rng.uniform(*(_LARGE if size_id == "large" else _SMALL)))
    if n_primary + len(extras) > 1 and size_id == "large":
        s0 = min(s0, 0.3)
    colour = _first(found, "colour") or base["colour"]
    pattern = _first(found, "pattern") or base["pattern"]
    extra_colour = _first(found, "colour", 1)
    extra_pattern = _first(found, "pattern", 1)
    n = n_primary + len(extras)
    scales = [s0] + [float(rng.uniform(0.14, max(0.15, min(_SMALL[1], 0.9 * s0))))
                     for _ in range(n - 1)]
    pos = [tuple(base["position"])] if n == 1 else _positions(rng, scales)
    z = rng.permutation(n).tolist() if n > 1 else [base["z"]]
    objects = []
    for i in range(n):
        cls = primary if i < n_primary else extras[i - n_primary]
        main = i < n_primary
        objects.append({
            "class": cls,
            "colour": colour if main else (extra_colour or str(rng.choice(
                [c.id for c in CONCEPTS if c.kind == "colour"]))),
            "pattern": pattern if main else (extra_pattern or str(rng.choice(
                [c.id for c in CONCEPTS if c.kind == "pattern"]))),
            "size": size_id if i == 0 else "small",
            "scale": round(scales[i], 4),
            "position": [round(float(pos[i][0]), 4), round(float(pos[i][1]), 4)],
            "z": int(z[i]),
            "flip": bool(base["flip"]) if i == 0 else bool(rng.random() < 0.5),
            "rotation": base["rotation"] if i == 0 else round(float(rng.uniform(-12, 12)), 4),
            "pattern_offset": base["pattern_offset"] if i == 0 else [
                round(float(rng.random()), 4), round(float(rng.random()), 4)],
        })
    spec["objects"] = objects
    spec["background"]["name"] = _first(found, "background") or spec["background"]["name"]
    spec["prompt"] = prompt
    return spec, unknown


class SceneGenerator:
    """The synthetic world's renderer as a text-to-scene generator (module doc)."""

    def __init__(self, size: int = 64) -> None:
        self.size = int(size)

    def generate(self, prompts: Sequence[str], seed: int) -> list[Generated]:
        out = []
        for i, p in enumerate(prompts):
            spec, unknown = scene_spec(p, i, seed, self.size)
            out.append(Generated(render(spec).image, spec, tuple(unknown)))
        return out

    def describe(self) -> dict[str, Any]:
        return {"kind": SYNTH, "size": self.size}


# --- diffusers --------------------------------------------------------------------------
def _cached_snapshot(source: str) -> Path:
    """The local folder of hub id ``source`` in the Hugging Face cache (``InputError`` when
    it is neither a folder nor cached: nothing is downloaded)."""
    if source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise InputError(f"--generator {source}: no such folder (give a diffusers pipeline "
                         f"folder, a hub id in the Hugging Face cache, or {SYNTH})")
    from huggingface_hub import snapshot_download  # heavy package

    try:
        return Path(snapshot_download(source, local_files_only=True))
    except Exception:  # LocalEntryNotFoundError, bad ids, offline mode: all "not cached"
        raise InputError(f"--generator {source}: no such folder, and not a model in the "
                         "Hugging Face cache (nothing is downloaded)") from None


class DiffusersGenerator:
    """A diffusers text-to-image pipeline from a local folder or a cached hub id
    (``local_files_only``: nothing is downloaded). Image ``i`` uses a
    ``torch.Generator`` seeded with ``seed * 1_000_003 + i``."""

    def __init__(self, source: str | Path, *, steps: int = 25, guidance: float = 7.5,
                 size: int | None = None, device: str = "cpu") -> None:
        self.source = str(source)
        path = Path(self.source).expanduser()
        if not path.exists():
            path = _cached_snapshot(self.source)
        try:
            import diffusers  # optional extra: pip install 'solens[generate]'
        except ImportError:
            raise InputError("--generator needs diffusers: pip install 'solens[generate]'"
                             ) from None
        if not (path / "model_index.json").is_file():
            raise InputError(f"--generator {source}: not a diffusers pipeline folder (no "
                             "model_index.json)")
        level = diffusers.utils.logging.get_verbosity()
        diffusers.utils.logging.set_verbosity_error()  # one-line errors, no load chatter
        try:
            pipe: Any = diffusers.DiffusionPipeline.from_pretrained(str(path),
                                                                   local_files_only=True)
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InputError(f"--generator {source}: not a diffusers pipeline folder ({first})"
                             ) from None
        finally:
            diffusers.utils.logging.set_verbosity(level)
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe.to(device)
        self.device = device
        self.steps = int(steps)
        self.guidance = float(guidance)
        self.size = size

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], seed: int) -> list[Generated]:
        out = []
        for i, p in enumerate(prompts):
            g = torch.Generator(self.device).manual_seed(int(seed) * 1_000_003 + i)
            kw: dict[str, Any] = {}
            if self.size is not None:
                kw.update(height=self.size, width=self.size)
            res = self.pipe(p, num_inference_steps=self.steps, guidance_scale=self.guidance,
                            generator=g, output_type="pil", **kw)
            out.append(Generated(res.images[0].convert("RGB")))
        return out

    def describe(self) -> dict[str, Any]:
        return {"kind": "diffusers", "source": self.source, "steps": self.steps,
                "guidance": self.guidance, "size": self.size,
                "pipeline": type(self.pipe).__name__}


def make_generator(name: str, *, size: int | None = None, steps: int = 25,
                   guidance: float = 7.5, device: str = "cpu"
                   ) -> SceneGenerator | DiffusersGenerator:
    """``synth`` -> ``SceneGenerator(size or 64)``; anything else -> ``DiffusersGenerator``
    (``size`` None: the pipeline's own)."""
    if name == SYNTH:
        return SceneGenerator(size or 64)
    return DiffusersGenerator(name, steps=steps, guidance=guidance, size=size, device=device)


__all__ = ["FILLER", "SYNTH", "DiffusersGenerator", "Generated", "Generator",
           "SceneGenerator", "make_generator", "parse_prompt", "scene_spec"]
