"""Segmentation metrics: one confusion matrix from one bincount, per-class IoU, seen/unseen/harmonic mIoU.

As detectron2's SemSegEvaluator: every pixel whose ground truth is not `ignore_index` lands in the
(K, K) matrix at (truth, prediction); IoU_k = TP / (TP + FP + FN). A class absent from both truth
and prediction has no IoU (NaN) and is left out of means.
"""

from __future__ import annotations

import numpy as np

from .errors import SynthsegError


class ConfusionMatrix:
    """Accumulates a (num_classes, num_classes) int64 matrix: rows ground truth, columns prediction."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, prediction: np.ndarray, truth: np.ndarray) -> None:
        """Add one pair of HW integer label maps of the same shape."""
        prediction, truth = np.asarray(prediction), np.asarray(truth)
        if prediction.shape != truth.shape:
            raise SynthsegError(f"prediction {prediction.shape} and ground truth {truth.shape} differ in shape")
        keep = truth != self.ignore_index
        t, p = truth[keep].astype(np.int64), prediction[keep].astype(np.int64)
        if t.size and (t.max() >= self.num_classes or p.max() >= self.num_classes or min(t.min(), p.min()) < 0):
            raise SynthsegError(f"labels outside 0..{self.num_classes - 1} (and {self.ignore_index} = ignore)")
        self.matrix += np.bincount(t * self.num_classes + p, minlength=self.num_classes**2).reshape(self.num_classes, -1)

    def iou(self) -> np.ndarray:
        """(num_classes,) float IoU per class; NaN where the class is in neither truth nor prediction."""
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / union, np.nan)


def mean_iou(iou: np.ndarray, indices: list[int]) -> float:
    """Mean of the defined IoUs among class `indices`; NaN if none is defined."""
    values = iou[indices]
    return float(np.nanmean(values)) if indices and not np.all(np.isnan(values)) else float("nan")


def split_miou(iou: np.ndarray, seen: list[int], unseen: list[int]) -> dict:
    """Mean IoU over the `seen` and `unseen` class indices and their harmonic mean 2SU/(S+U)."""
    s, u = mean_iou(iou, seen), mean_iou(iou, unseen)
    h = 2 * s * u / (s + u) if s + u > 0 else float("nan")
    return dict(seen=s, unseen=u, harmonic=h)


class MaskIoU:
    """Per-class sums of intersection and union over binary masks: IoU_k = sum(I) / sum(U) (Protocol i)."""

    def __init__(self, class_names: list[str] | tuple[str, ...]):
        self.class_names = list(class_names)
        self.intersection = np.zeros(len(self.class_names), dtype=np.int64)
        self.union = np.zeros(len(self.class_names), dtype=np.int64)
        self.count = np.zeros(len(self.class_names), dtype=np.int64)

    def update(self, class_name: str, prediction: np.ndarray, truth: np.ndarray) -> None:
        """Add one HW bool prediction and ground truth of `class_name`."""
        k = self.class_names.index(class_name)
        self.intersection[k] += np.logical_and(prediction, truth).sum()
        self.union[k] += np.logical_or(prediction, truth).sum()
        self.count[k] += 1

    def iou(self) -> dict[str, float]:
        """{class: IoU}, NaN for classes never scored."""
        return {n: (i / u if u else float("nan")) for n, i, u in zip(self.class_names, self.intersection, self.union)}

    def mean(self, names: list[str]) -> float:
        """Mean IoU over `names`, skipping classes never scored; NaN if none was."""
        values = [v for n, v in self.iou().items() if n in names and not np.isnan(v)]
        return float(np.mean(values)) if values else float("nan")
