"""Ad hoc: Protocol ii (a)'s images with the world annotator's masks as labels instead of the grounding module's.

Separates the two things (a) lacks against the oracle (b): labels and images. The annotator (Mask R-CNN trained on
rendered scenes with exact masks of all 12 classes, unseen ones included) is Protocol i's reference, so this is a
diagnosis, not a method: it sees unseen classes. Each image is annotated with its prompt's classes; where instances
overlap, the higher score wins. segmenter-world at STEPS, seed 0; compare with
`captioner_filter_protocol_ii.py runs/capfilter/all 1 --no-filter` (the module's labels, same steps and seed).

Run from the repository root: python benchmarks/adhoc/annotator_labels_protocol_ii.py WORK STEPS
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, "benchmarks/adhoc")
from segmenter_trial import SYNTHETIC, prompted_classes, train_and_score  # noqa: E402

from synthseg.annotators import load_annotator
from synthseg.readers import SegmentationData, read_synthseg

work, steps = Path(sys.argv[1]), int(sys.argv[2])
data, prompted = read_synthseg(SYNTHETIC), prompted_classes()
cache = work / "annotator-labels.npy"
if not cache.is_file():
    annotator = load_annotator("world")
    maps = []
    for i in range(len(data)):
        image, _ = data[i]
        labels = np.zeros(image.size[::-1], dtype=np.uint8)
        for instance in sorted(annotator.annotate([image], [prompted[i]])[0], key=lambda x: x.score):  # best painted last
            labels[instance.mask] = data.class_names.index(instance.class_name) + 1
        maps.append(labels)
    work.mkdir(parents=True, exist_ok=True)
    np.save(cache, np.stack(maps))
maps = np.load(cache)
module_maps = np.stack([data[i][1] for i in range(len(data))])
valid = module_maps != 255
print(f"pixels where the module's label (outside its ignore band) agrees with the annotator's: "
      f"{100 * (module_maps[valid] == maps[valid]).mean():.1f}%", flush=True)
relabelled = SegmentationData(f"{data.name}:annotator", data.class_names, data.ids, lambda k: (data[k][0], maps[k]))
train_and_score("annotator labels", relabelled, work, steps)
