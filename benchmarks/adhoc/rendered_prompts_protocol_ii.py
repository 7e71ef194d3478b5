"""Ad hoc: the oracle (b) trained on rendered scenes of Protocol ii's prompts (their 1-2 classes each) instead of
scenes of 1-3 random classes: whether (a)'s gap to (b) is in what its images show (one or two objects, the classes'
mix) or in how the world model draws them.

Run from the repository root: python benchmarks/adhoc/rendered_prompts_protocol_ii.py WORK STEPS
Scene i renders the classes of Protocol ii's synthetic image i (training-side seeds), with exact masks;
segmenter-world at STEPS, seed 0. Compare with the oracle at the same steps (bench_oracle.py).
"""

import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, "benchmarks/adhoc")
from segmenter_trial import prompted_classes, train_and_score  # noqa: E402

from synthseg.readers import SegmentationData
from synthseg.world import WORLD_CLASSES, render_scene, scene_seed

work, steps = Path(sys.argv[1]), int(sys.argv[2])
prompted = prompted_classes()


def load(index: int):
    scene = render_scene(scene_seed(index, held_out=False), classes=prompted[index])
    return Image.fromarray(scene.image), scene.semantic()


data = SegmentationData("world:protocol-ii-prompts", tuple(WORLD_CLASSES), [str(i) for i in range(len(prompted))], load)
train_and_score("rendered prompts", data, work, steps)
