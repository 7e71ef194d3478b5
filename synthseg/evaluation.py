"""Protocol i: how well masks of generated images match the annotator, seen vs unseen classes.

Test prompts cover every class of the split, seen and unseen, one-class and two-class. Each image is
generated once; the grounding module's mask (sigmoid > 0.5) and the training-free cross-attention
baseline (DAAM: the class tokens' attention maps summed over layers, heads and steps, upsampled and
min-max normalised) are both scored against the annotator's mask of that class (union of its
instances). A class the annotator does not find in an image is not scored there. The baseline's
threshold is tuned on seen classes only. Result: mIoU per method, for seen/unseen x one/two classes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch.nn.functional as F

from .capture import CaptureStep
from .classes import Split
from .config import check_plan_size
from .errors import SynthsegError
from .generate import capture_pass, predict_masks
from .metrics import MaskIoU
from .progress import loss_progress
from .prompts import PromptPlanner
from .triplets import target_masks

THRESHOLDS = np.round(np.linspace(0.05, 0.95, 19), 2)
COLUMNS = [("seen", 1), ("seen", 2), ("unseen", 1), ("unseen", 2)]


@dataclass
class ProtocolIResult:
    """mIoU table: {method: {"seen-1": x, "seen-2": x, "unseen-1": x, "unseen-2": x}}, plus counts."""

    table: dict
    counts: dict
    threshold: float
    split: str

    def markdown(self) -> str:
        head = "| method | " + " | ".join(f"{s} {n}-class" for s, n in COLUMNS) + " |"
        lines = [head, "|---|" + "---|" * len(COLUMNS)]
        for method, row in self.table.items():
            lines.append(f"| {method} | " + " | ".join(f"{100 * row[f'{s}-{n}']:.1f}" for s, n in COLUMNS) + " |")
        lines.append("| scored masks | " + " | ".join(str(self.counts[f"{s}-{n}"]) for s, n in COLUMNS) + " |")
        return "\n".join(lines)

    def save(self, path: str | Path) -> None:
        """Write `path` (markdown table) and the same name with .json."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        note = f"Protocol i, split `{self.split}`: mIoU (%) against the annotator's masks; DAAM threshold {self.threshold} tuned on seen classes.\n\n"
        path.write_text(note + self.markdown() + "\n")
        path.with_suffix(".json").write_text(json.dumps(self.__dict__, indent=2) + "\n")


def evaluate_grounding(pipe, grounding, annotator, split: Split, *, per_class: int = 10, pairs: int = 50,
                       templates: list[str], num_inference_steps: int = 50, guidance_scale: float = 7.5,
                       capture_step: CaptureStep = CaptureStep(), seed: int = 1_000_000, batch_size: int = 8) -> ProtocolIResult:
    """Run Protocol i on `split`'s classes; see the module docstring."""
    if per_class < 0 or pairs < 0:
        raise SynthsegError(f"per_class and pairs must be 0 or more, got {per_class} and {pairs}")
    classes = list(split.all_classes)
    check_plan_size("Protocol i", per_class * len(classes) + pairs, "per_class per class, plus pairs")
    for name in classes:  # refuse a class the annotator cannot label before any generation
        annotator.category_of(name)
    prompts = PromptPlanner(templates, seed).evaluation(classes, per_class, pairs)
    if not prompts:
        raise SynthsegError("no test prompts: per_class and pairs are 0 (or pairs without a two-class template)")
    module = {n: MaskIoU(classes) for n in (1, 2)}
    daam = {(n, t): MaskIoU(classes) for n in (1, 2) for t in THRESHOLDS}
    grounding.config.check_pipeline(pipe)
    pipe.set_progress_bar_config(disable=True)
    with loss_progress("protocol i", len(prompts), metric="module mIoU", log_every=batch_size) as advance:
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start : start + batch_size]
            names = [p.classes for p in batch]
            run = capture_pass(pipe, [p.prompt for p in batch], names, [p.seed for p in batch], guidance_scale=guidance_scale,
                               num_inference_steps=num_inference_steps, capture_step=capture_step,
                               attention=grounding.config.needs_attention, blocks=grounding.config.feature_blocks or None, daam=True)
            size = run.images[0].size[::-1]
            masks = predict_masks(grounding, run.features, run.prompt_embeds, run.spans, size)
            heat = [F.interpolate(m[None], size=size, mode="bilinear", align_corners=False)[0] for m in run.heat_maps]
            images = [np.asarray(im) for im in run.images]
            for i, found in enumerate(annotator.annotate(images, names)):
                truth, missing, _ = target_masks(found, names[i], size, "union")
                n = len(names[i])
                for q, name in enumerate(names[i]):
                    if missing[q]:
                        continue
                    module[n].update(name, masks[i][q].numpy() > 0.5, truth[q].astype(bool))
                    for t in THRESHOLDS:
                        daam[n, t].update(name, heat[i][q].numpy() > t, truth[q].astype(bool))
            scored = [v for v in (module[1].mean(classes), module[2].mean(classes)) if not np.isnan(v)]
            advance(min(start + batch_size, len(prompts)), [float(np.mean(scored)) if scored else 0.0])
    best = max(THRESHOLDS, key=lambda t: np.nanmean([daam[n, t].mean(split.seen) for n in (1, 2)]))
    groups = {"seen": split.seen, "unseen": split.unseen}
    table = {
        "Grounding module": {f"{s}-{n}": module[n].mean(groups[s]) for s, n in COLUMNS},
        "Cross-attention (DAAM)": {f"{s}-{n}": daam[n, best].mean(groups[s]) for s, n in COLUMNS},
    }
    counts = {f"{s}-{n}": int(sum(module[n].count[classes.index(c)] for c in groups[s])) for s, n in COLUMNS}
    return ProtocolIResult(table=table, counts=counts, threshold=float(best), split=split.name)
