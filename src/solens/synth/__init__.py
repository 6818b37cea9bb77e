"""solens.synth: a procedurally rendered synthetic world with full ground truth.

Pictograms of 20 object classes with colours and surface patterns on 8 textured
backgrounds, captions that agree with the scene, visible-pixel masks per object, and
planted spurious correlations in the ``train`` split.  See ``docs/synth.md``.

>>> from solens.synth import sample
>>> scene = sample(1, split="train", seed=0)[0]
>>> scene.label in CLASSES
True
"""

from solens.synth.captions import (
    article,
    attribute_prompts,
    caption,
    captions,
    class_prompts,
    facet_caption,
    facet_pool,
    with_article,
)
from solens.synth.render import render, render_array
from solens.synth.sampling import SPLITS, Batch, iter_batches, sample, spec_at, specs, to_image
from solens.synth.scene import Scene
from solens.synth.spurious import SPURIOUS, Correlation
from solens.synth.world import (
    BACKGROUNDS,
    CLASSES,
    COLOURS,
    CONCEPTS,
    PATTERNS,
    Concept,
    concept_words,
    synonyms,
)

__all__ = [
    "BACKGROUNDS",
    "CLASSES",
    "COLOURS",
    "CONCEPTS",
    "PATTERNS",
    "SPLITS",
    "SPURIOUS",
    "Batch",
    "Concept",
    "Correlation",
    "Scene",
    "article",
    "attribute_prompts",
    "caption",
    "captions",
    "class_prompts",
    "concept_words",
    "facet_caption",
    "facet_pool",
    "iter_batches",
    "render",
    "render_array",
    "sample",
    "spec_at",
    "specs",
    "synonyms",
    "to_image",
    "with_article",
]
