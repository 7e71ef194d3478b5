"""Ad hoc: Protocol ii (a) trained on more synthetic images than the oracle's 862 (segmenter-world).

Run from the repository root:
    python benchmarks/adhoc/synthetic_scale_protocol_ii.py WORK SEED STEPS DATASET [DATASET ...]
The datasets are concatenated (one class list); `FOLDER:N` takes a dataset's first N images; `world:N` instead
trains the oracle on N rendered training scenes. Prints harmonic mIoU on Protocol ii's test scenes (0-499) and on
scenes 500-999. The paper's Protocol ii uses 500 generated images per class; Protocol ii on the world matches the
oracle's count, 50 per class.
"""

import sys
from pathlib import Path

sys.path.insert(0, "benchmarks/adhoc")
from segmenter_trial import subset, train_and_score  # noqa: E402

from synthseg.readers import SegmentationData, concat_data, read_synthseg, read_world


def part(spec: str) -> SegmentationData:
    if spec.startswith("world:"):
        return read_world(int(spec[6:]), held_out=False)
    folder, _, count = spec.partition(":")
    data = read_synthseg(Path(folder))
    if not count:
        return data
    return subset(data, list(range(int(count))), f"first{count}")


work, seed, steps = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
data = concat_data([part(spec) for spec in sys.argv[4:]])
print(f"{data.name}: {len(data)} images, seed {seed}, {steps} steps", flush=True)
train_and_score(f"seed {seed}, {steps} steps", data, work, steps, seed)
