"""Segmentation metrics, accumulated as the standard ImageNet-segmentation evaluation does.

Per image, a soft map ``R`` in [0, 1] (the min-max normalised heatmap) and a binary ground
truth ``G`` over the *valid* pixels (those the model saw; pixels outside the centre crop are
ignored). The prediction is ``R > threshold`` (foreground) else background.

- **pixel accuracy**: correct pixels / labelled pixels, both summed over the whole set;
- **mIoU**: per class (background, foreground) intersection / union, both summed over the
  whole set, then the mean of the two;
- **mAP**: per image, the average precision of the two-channel soft output ``[1 - R, R]``
  against the one-hot ground truth ``[G == 0, G == 1]`` (both channels flattened into one
  ranking), then the mean over images.

These are the accumulations of Chefer et al.'s ``imagenet_seg_eval`` (``batch_pix_accuracy``,
``batch_intersection_union`` with two classes, ``get_ap_scores``), which the paper's
segmentation figures follow. Shapes: P valid pixels of one image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

_EPS = float(np.spacing(1, dtype=np.float64))


def average_precision(y: np.ndarray, score: np.ndarray) -> float:
    """Average precision of ``score`` [P] against binary ``y`` [P] (scikit-learn's
    definition: ``sum_k (R_k - R_{k-1}) P_k`` over the distinct score thresholds, ties
    counted together); 0.0 when ``y`` has no positive."""
    y = np.asarray(y, dtype=bool).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    if y.size == 0 or not y.any():
        return 0.0
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]  # last index of each distinct score
    tps = np.cumsum(y)[last].astype(np.float64)
    fps = (last + 1) - tps
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def image_counts(soft: np.ndarray, gt: np.ndarray, threshold: float = 0.5
                 ) -> tuple[int, int, np.ndarray, np.ndarray, float]:
    """One image's contributions: soft map [P] in [0, 1], ground truth [P] bool ->
    (correct, labelled, intersection [2], union [2], average precision); class 0 =
    background, 1 = foreground."""
    soft = np.asarray(soft, dtype=np.float64).ravel()
    gt = np.asarray(gt, dtype=bool).ravel()
    pred = soft > threshold
    correct = int(np.sum(pred == gt))
    inter = np.array([np.sum(~pred & ~gt), np.sum(pred & gt)], dtype=np.int64)
    union = np.array([np.sum(~pred | ~gt), np.sum(pred | gt)], dtype=np.int64)
    ap = average_precision(np.r_[~gt, gt], np.r_[1.0 - soft, soft])
    return correct, int(gt.size), inter, union, ap


@dataclass
class Accumulator:
    """Running sums of one method over images (JSON-serialisable for resuming)."""

    correct: int = 0
    labelled: int = 0
    inter: list[int] = field(default_factory=lambda: [0, 0])
    union: list[int] = field(default_factory=lambda: [0, 0])
    ap_sum: float = 0.0
    n_images: int = 0

    def add(self, soft: np.ndarray, gt: np.ndarray, threshold: float = 0.5) -> None:
        """Add one image: soft map [P] in [0, 1], ground truth [P] bool."""
        c, lab, i, u, ap = image_counts(soft, gt, threshold)
        self.correct += c
        self.labelled += lab
        self.inter = [a + int(b) for a, b in zip(self.inter, i, strict=True)]
        self.union = [a + int(b) for a, b in zip(self.union, u, strict=True)]
        self.ap_sum += ap
        self.n_images += 1

    def merge(self, other: Accumulator) -> Accumulator:
        """The sums of both (a new accumulator)."""
        return Accumulator(
            self.correct + other.correct, self.labelled + other.labelled,
            [a + b for a, b in zip(self.inter, other.inter, strict=True)],
            [a + b for a, b in zip(self.union, other.union, strict=True)],
            self.ap_sum + other.ap_sum, self.n_images + other.n_images)

    def result(self) -> dict[str, float]:
        """``{"pixel_acc", "miou", "map"}`` as fractions."""
        iou = np.asarray(self.inter, np.float64) / (_EPS + np.asarray(self.union, np.float64))
        return {"pixel_acc": float(self.correct / (_EPS + self.labelled)),
                "miou": float(iou.mean()),
                "map": float(self.ap_sum / self.n_images) if self.n_images else 0.0}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Accumulator:
        return cls(int(d["correct"]), int(d["labelled"]), [int(x) for x in d["inter"]],
                   [int(x) for x in d["union"]], float(d["ap_sum"]), int(d["n_images"]))

__all__ = ["Accumulator", "average_precision", "image_counts"]
