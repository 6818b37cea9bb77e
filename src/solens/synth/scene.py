"""The :class:`Scene` record: a rendered image with its ground truth."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from solens.synth.world import CLASSES

__all__ = ["Scene"]


@dataclass
class Scene:
    """One rendered scene.

    Attributes:
        image: the RGB picture (``spec["size"]`` square).
        label: class name of the primary object (``spec["objects"][0]``).
        masks: object index (into ``spec["objects"]``) -> bool ``[H, W]`` array of that
            object's *visible* pixels (after occlusion, outline included); disjoint.
        spec: JSON-serialisable description; ``render(spec)`` reproduces this scene.
        captions: several varied captions that agree with the spec (first = fullest).
    """

    image: Image.Image
    label: str
    masks: dict[int, np.ndarray]
    spec: dict[str, Any]
    captions: list[str] = field(default_factory=list)

    @property
    def caption(self) -> str:
        """The first (fullest) caption."""
        return self.captions[0]

    @property
    def label_index(self) -> int:
        """Index of :attr:`label` in :data:`~solens.synth.world.CLASSES`."""
        return CLASSES.index(self.label)

    @property
    def array(self) -> np.ndarray:
        """The image as a uint8 ``[H, W, 3]`` array."""
        return np.asarray(self.image)
