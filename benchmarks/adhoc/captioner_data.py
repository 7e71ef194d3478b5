"""Ad hoc: the world captioner trained on text-prompted images alone, or on them and a layout dataset (1-4 objects),
scored as Protocol iii scores it, on held-out scenes 500-699 (which Protocol iii's test scenes 0-499 do not share).

Run from the repository root:
    python benchmarks/adhoc/captioner_data.py WORK TEXT_DATASET [LAYOUT_DATASET ...]
Trains WORK/captioner (the captioner-world recipe) on the concatenated datasets, then prints harmonic mIoU of the
shipped world module with it at captions of up to 1, 2 and 3 classes, and with the shipped captioner.
"""

import sys
from pathlib import Path

from synthseg.benchmark import benchmark
from synthseg.captioner import ImplicitCaptioner
from synthseg.classes import get_split
from synthseg.grounding import GroundingModule
from synthseg.pipeline import load_pipeline
from synthseg.readers import open_training_data, read_world
from synthseg.segment import GroundingSegmenter
from synthseg.train.captioner import load_captioner_recipe, train_captioner

work, folders = Path(sys.argv[1]), sys.argv[2:]
data = open_training_data([Path(f) for f in folders])
pipe = load_pipeline("world")
trained = train_captioner(pipe, data, load_captioner_recipe("captioner-world"), work, work / "captioner")
scenes = read_world(200, first=500)
module, split = GroundingModule.from_pretrained("world"), get_split("world")
print(f"captioner trained on {len(data)} images of {', '.join(folders)}")
print("| captioner | captions of up to | seen | unseen | harmonic |\n|---|---|---|---|---|")
for name, captioner in (("shipped", ImplicitCaptioner.from_pretrained("world")), ("trained here", trained)):
    for most in (1, 2, 3):
        segmenter = GroundingSegmenter(pipe, module, list(scenes.class_names), captioner=captioner, max_classes=most, class_prior=0.0)
        r = benchmark(segmenter, scenes, split, model_name=f"{name} {most}")
        print(f"| {name} | {most} | {100 * r.seen_miou:.1f} | {100 * r.unseen_miou:.1f} | {100 * r.harmonic_miou:.1f} |", flush=True)
