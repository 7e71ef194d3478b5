"""Protocol ii scoring: a trained segmenter on real (or rendered) labelled images, seen/unseen/harmonic mIoU.

The protocol, named in every report: one confusion matrix over ["background", *dataset classes]
(detectron2's SemSegEvaluator), the model predicting over all its labels; per-class IoU; mIoU over a
named split's seen and unseen classes and their harmonic mean 2SU/(S+U). With `background=True`
background is a seen class (ZS3Net); with False its pixels are ignored and it enters no mean
(ZegFormer), though predicting background on an object still costs that object's class. Classes
the model never learnt (strict zero-shot training) stay in the matrix and score 0 where present.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .classes import Split
from .errors import SynthsegError
from .formats import IGNORE, write_atomic
from .metrics import ConfusionMatrix, mean_iou, split_miou
from .readers import SegmentationData
from .segmenter import BACKGROUND, Segmenter


@dataclass
class BenchmarkResult:
    """Scores of one model on one dataset. `iou`: class -> IoU (None where undefined)."""

    dataset: str
    model: str
    split: str | None
    unseen: list[str]
    background: bool
    images: int
    unseen_in_training: bool | None
    not_in_model: list[str]
    iou: dict
    miou: float
    seen_miou: float
    unseen_miou: float
    harmonic_miou: float

    def protocol(self) -> str:
        split = f"split {self.split} (unseen: {', '.join(self.unseen)})" if self.split else "no split (all classes seen)"
        names = {True: "yes", False: "no", None: "n/a"}[self.unseen_in_training]
        return (f"{self.dataset}, {self.images} images; {split}; background {'counted as a seen class' if self.background else 'ignored'}; "
                f"unseen class names in the segmenter's training labels: {names}; one confusion matrix over all classes")

    def markdown(self) -> str:
        def pct(v):
            return "-" if v is None or np.isnan(v) else f"{100 * v:.1f}"

        lines = [f"Protocol: {self.protocol()}", "", "| model | seen mIoU | unseen mIoU | harmonic mIoU | mIoU |", "|---|---|---|---|---|",
                 f"| {self.model} | {pct(self.seen_miou)} | {pct(self.unseen_miou)} | {pct(self.harmonic_miou)} | {pct(self.miou)} |", "",
                 "| class | IoU |", "|---|---|"]
        lines += [f"| {name}{' (unseen)' if name in self.unseen else ''} | {pct(v)} |" for name, v in self.iou.items()]
        return "\n".join(lines) + "\n"

    def save(self, directory: str | Path) -> None:
        """Write benchmark.json and benchmark.md into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_atomic(directory / "benchmark.json", json.dumps(asdict(self), indent=2))
        write_atomic(directory / "benchmark.md", self.markdown())


def label_mapping(model_labels: tuple[str, ...], class_names: tuple[str, ...]) -> np.ndarray:
    """Model label -> dataset label (0 background, k = class_names[k-1]); unknown model labels are refused."""
    names = (BACKGROUND, *class_names)
    extra = [n for n in model_labels if n not in names]
    if extra:
        shown = ", ".join(class_names[:8]) + (", ..." if len(class_names) > 8 else "")
        raise SynthsegError(f"the model's labels do not match the dataset: {', '.join(extra[:5])} "
                            f"{'is' if len(extra) == 1 else 'are'} not among its classes ({shown})")
    return np.array([names.index(n) for n in model_labels], dtype=np.int64)


def benchmark(segmenter: Segmenter, data: SegmentationData, split: Split | None = None, background: bool = True,
              model_name: str = "segmenter") -> BenchmarkResult:
    """Score `segmenter` on every item of `data` under `split` (its classes must be the data's)."""
    from .progress import loss_progress

    if split is not None and set(split.all_classes) != set(data.class_names):
        raise SynthsegError(f"split {split.name!r} is over the {split.classes} classes, not this dataset's "
                            f"({', '.join(data.class_names[:6])}, ...)")
    if len(data) == 0:
        raise SynthsegError(f"{data.name}: no images to score")
    to_data = label_mapping(segmenter.class_names, data.class_names)
    names = (BACKGROUND, *data.class_names)
    matrix = ConfusionMatrix(len(names), IGNORE)
    accuracy: list[float] = []
    with loss_progress("benchmark", len(data), log_every=100, metric="pixel accuracy") as advance:
        for index in range(len(data)):
            image, truth = data[index]
            truth = truth.copy()
            if not background:
                truth[truth == 0] = IGNORE
            prediction = to_data[segmenter.predict(image)]
            matrix.update(prediction, truth)
            keep = truth != IGNORE
            accuracy.append(float((prediction[keep] == truth[keep]).mean()) if keep.any() else 1.0)
            advance(index + 1, accuracy)
    iou = matrix.iou()
    unseen = list(split.unseen) if split else []
    index = {n: i for i, n in enumerate(names)}
    seen = [index[n] for n in names if n not in unseen and (background or n != BACKGROUND)]
    scores = split_miou(iou, seen, [index[n] for n in unseen])
    counted = [i for i in range(len(names)) if background or i]
    learnt = set(segmenter.class_names)
    return BenchmarkResult(
        dataset=data.name, model=model_name, split=split.name if split else None, unseen=unseen, background=background,
        images=len(data), unseen_in_training=all(n in learnt for n in unseen) if unseen else None,
        not_in_model=[n for n in names if n not in learnt], iou={n: (None if np.isnan(v) else float(v)) for n, v in zip(names, iou)},
        miou=mean_iou(iou, counted),
        seen_miou=scores["seen"], unseen_miou=scores["unseen"], harmonic_miou=scores["harmonic"],
    )
