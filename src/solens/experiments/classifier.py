"""Zero-shot classifiers from prompt templates, for an evaluation dataset.

- the synthetic world (``synth:SPLIT:N[:SEED]``): the world's class prompts
  ("a photo of a {class}", ``solens.synth.captions.class_prompts``);
- a class-folder dataset whose folder names are ImageNet synset ids (``n01440764``), or tar
  shards whose ``.cls`` members are: open_clip's ImageNet class names and its 80 OpenAI
  prompt templates;
- anything else: class names and templates from a JSON file ``{"classes": {"folder":
  "class name", ...} or ["name", ...], "templates": ["a photo of a {}.", ...]}``.

A class direction is the normalised mean of the normalised embeddings of its prompts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from solens.errors import InputError
from solens.experiments.zeroshot import ensembled_directions
from solens.models.model import Model
from solens.store.images import ImageSource, SynthImages
from solens.store.shards import ShardImages
from solens.synth.captions import class_prompts
from solens.synth.world import CLASSES

ASSETS = Path(__file__).resolve().parent.parent / "assets"
SYNSETS_PATH = ASSETS / "imagenet-synsets.txt"
"""The 1,000 ImageNet-1k synset ids in class-index order (sorted)."""
_SYNSET = re.compile(r"^n\d{8}$")


@dataclass(frozen=True)
class ClassifierSpec:
    """What the classifier is made of: per dataset label (folder name / scene label), its
    class name; the prompt templates (``{}`` = class name); where it came from."""

    labels: tuple[str, ...]
    names: tuple[str, ...]
    templates: tuple[str, ...]
    source: str

    def prompts(self) -> list[list[str]]:
        """Per class, its prompts."""
        return [[t.format(n) for t in self.templates] for n in self.names]

    def to_dict(self) -> dict[str, object]:
        return {"source": self.source, "labels": list(self.labels), "names": list(self.names),
                "templates": list(self.templates)}


def imagenet_synsets() -> list[str]:
    """ImageNet-1k synset ids in class-index order."""
    return SYNSETS_PATH.read_text().split()


def _openai_templates() -> list[str]:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES  # heavy package

    return [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]


def _imagenet_names() -> list[str]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES  # heavy package

    return list(IMAGENET_CLASSNAMES)


def _labels(source: ImageSource) -> list[str]:
    labels = source.labels
    if labels is None or any(lab is None for lab in labels):
        if isinstance(source, ShardImages):
            missing = [i for i, lab in zip(source.ids, labels or [None] * len(source),
                                           strict=True) if lab is None]  # fmt: skip
            raise InputError(
                f"the evaluation shards need class labels: a .cls member (the class name) "
                f"in every sample; {len(missing)} of {len(source)} samples have none "
                f"(first: {missing[0]})")
        raise InputError("the evaluation images need class labels: put every image in a "
                         "sub-folder named after its class")
    return sorted({str(lab) for lab in labels})


def _kind(source: ImageSource) -> str:
    """What the dataset's labels are, for messages."""
    return ".cls labels" if isinstance(source, ShardImages) else "folders"


def classifier_spec(source: ImageSource, classes_file: str | Path | None = None
                    ) -> ClassifierSpec:
    """The classifier for an evaluation dataset (see the module doc); ``classes_file``
    overrides the automatic choice. Every label of the dataset must have a class."""
    if classes_file is not None:
        return _from_file(Path(classes_file), _labels(source), _kind(source))
    if isinstance(source, SynthImages):  # "a photo of a car", "a photo of an apple"
        names = [p.removeprefix("a photo of ") for p in class_prompts()]
        return ClassifierSpec(tuple(CLASSES), tuple(names), ("a photo of {}",),
                              "the world's class prompts")
    labels = _labels(source)
    if all(_SYNSET.match(lab) for lab in labels):
        synsets = imagenet_synsets()
        index = {s: i for i, s in enumerate(synsets)}
        unknown = [lab for lab in labels if lab not in index]
        if unknown:
            raise InputError(f"{_kind(source)} {', '.join(unknown[:3])} are not ImageNet-1k "
                             "synsets")
        names = _imagenet_names()
        return ClassifierSpec(tuple(labels), tuple(names[index[lab]] for lab in labels),
                              tuple(_openai_templates()),
                              "open_clip ImageNet class names, 80 OpenAI templates")
    raise InputError(
        f"cannot tell the class names of {_kind(source)} {', '.join(labels[:3])}...: they are not "
        "ImageNet synset ids; pass --classes FILE (JSON with 'classes' and 'templates')"
    )


def _from_file(path: Path, labels: Sequence[str], kind: str = "folders") -> ClassifierSpec:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"--classes {path}: no such file") from None
    except (OSError, ValueError) as e:
        raise InputError(f"--classes {path}: not readable JSON ({e})") from None
    if not isinstance(raw, dict) or "classes" not in raw:
        raise InputError(f"--classes {path}: expected a JSON object with 'classes'")
    classes = raw["classes"]
    if isinstance(classes, list):
        classes = {str(c): str(c) for c in classes}
    if not isinstance(classes, dict):
        raise InputError(f"--classes {path}: 'classes' must be a list or an object")
    missing = [lab for lab in labels if lab not in classes]
    if missing:
        raise InputError(f"--classes {path}: no class for {kind} {', '.join(missing[:5])} "
                         f"(the evaluation images do not match the classifier)")
    templates = raw.get("templates") or ["a photo of a {}."]
    if not all(isinstance(t, str) and "{}" in t for t in templates):
        raise InputError(f"--classes {path}: every template needs a '{{}}' for the class name")
    keys = sorted(str(k) for k in classes)
    return ClassifierSpec(tuple(keys), tuple(str(classes[k]) for k in keys),
                          tuple(templates), str(path))


def imagenet_spec() -> ClassifierSpec:
    """ImageNet-1k: open_clip's class names (labels = synset ids) and its 80 templates."""
    return ClassifierSpec(tuple(imagenet_synsets()), tuple(_imagenet_names()),
                          tuple(_openai_templates()),
                          "open_clip ImageNet class names, 80 OpenAI templates")


def file_spec(classes_file: str | Path) -> ClassifierSpec:
    """The classifier of a ``--classes`` JSON file alone (no dataset labels to match)."""
    return _from_file(Path(classes_file), ())


def class_directions(model: Model, spec: ClassifierSpec) -> Tensor:
    """Class directions [C, d] (unit rows, float32, CPU) in ``spec.labels`` order."""
    return ensembled_directions(model, spec.prompts())


__all__ = ["ClassifierSpec", "class_directions", "classifier_spec", "file_spec",
           "imagenet_spec", "imagenet_synsets"]
