"""Ad hoc: where the shipped world module's pixels go on held-out scenes when it is given each scene's true classes
(Protocol iii's presence oracle): of the object pixels, the share labelled right, background, or another class the
scene holds; of the background pixels, the share labelled an object. At several thresholds, and, at 0.5, the share of
the wrong pixels that lie within 1, 2 and 3 pixels of a true edge (where a mask upsampled from the latent's stride blurs).
The masks are not refined (`refine=0`): this is what PAMR refinement (synthseg.refine) starts from.

Run from the repository root:
    python benchmarks/adhoc/presence_oracle_errors.py [COUNT]    (Protocol iii's test scenes 0 to COUNT-1; default 100)
"""

import sys

import numpy as np
from scipy import ndimage

from synthseg.grounding import GroundingModule
from synthseg.pipeline import load_pipeline
from synthseg.readers import open_dataset
from synthseg.segment import GroundingSegmenter

count = int(sys.argv[1]) if len(sys.argv) > 1 else 100
pipe, module = load_pipeline("world"), GroundingModule.from_pretrained("world")
data = open_dataset("world", None, "val", count)
names = list(data.class_names)
segmenter = GroundingSegmenter(pipe, module, names, timestep=5, refine=0)
labels = len(names) + 1
matrices = {threshold: np.zeros((labels, labels), np.int64) for threshold in (0.3, 0.4, 0.5, 0.6)}
near = np.zeros(4, np.int64)  # wrong pixels at 0.5: all, within 1, 2 and 3 px of a true edge
for i in range(len(data)):
    image, truth = data[i]
    present = data.classes_in(truth)
    segmenter.recogniser = lambda latents, present=present: [present]
    probs = segmenter.segment(image, i).probs.numpy()
    valid = truth != 255
    for threshold, matrix in matrices.items():
        predicted = probs.argmax(0) + 1
        predicted[probs.max(0) <= threshold] = 0
        matrix += np.bincount(labels * truth[valid].astype(int) + predicted[valid], minlength=labels**2).reshape(labels, labels)
        if threshold == 0.5:
            edges = np.zeros(truth.shape, bool)
            edges[:, 1:] |= truth[:, 1:] != truth[:, :-1]
            edges[1:] |= truth[1:] != truth[:-1]
            distance = ndimage.distance_transform_edt(~edges)
            wrong = valid & (predicted != truth)
            near += [wrong.sum(), *((wrong & (distance <= d)).sum() for d in (1, 2, 3))]
print("| threshold | object pixels: right | background | another class | background pixels: an object |\n|---|---|---|---|---|")
for threshold, matrix in matrices.items():
    objects, right = matrix[1:], np.diag(matrix)[1:].sum()
    print(f"| {threshold} | {right / objects.sum():.3f} | {objects[:, 0].sum() / objects.sum():.3f} | "
          f"{(objects.sum() - right - objects[:, 0].sum()) / objects.sum():.3f} | {matrix[0, 1:].sum() / matrix[0].sum():.3f} |")
print(f"\nat 0.5, of the wrong pixels: {near[1] / near[0]:.3f} within 1 px of a true edge, {near[2] / near[0]:.3f} within 2, "
      f"{near[3] / near[0]:.3f} within 3")
