"""Ad hoc: Protocol ii (a) with and without a captioner filter on its synthetic dataset (segmenter-world, 4,000 steps).

Run from the repository root after bench_protocol_ii.py: python benchmarks/adhoc/captioner_filter_protocol_ii.py WORK KEEP_RANK [--no-filter]
An image is kept when the shipped world captioner ranks its prompt's caption (of 1-2 classes) within the top
KEEP_RANK + 1 of all such captions. Prints harmonic mIoU on Protocol ii's test scenes (0-499) and on scenes 500-999.
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, "benchmarks/adhoc")
from captioner_filter import ranks  # noqa: E402
from segmenter_trial import SYNTHETIC, prompted_classes, subset, train_and_score  # noqa: E402

from synthseg.captioner import ImplicitCaptioner, candidate_class_lists, caption_embeddings  # noqa: E402
from synthseg.pipeline import load_pipeline  # noqa: E402
from synthseg.readers import read_synthseg  # noqa: E402
from synthseg.world import WORLD_CLASSES  # noqa: E402

work, keep_rank, filtered = Path(sys.argv[1]), int(sys.argv[2]), "--no-filter" not in sys.argv
data, prompted = read_synthseg(SYNTHETIC), prompted_classes()
keep = list(range(len(data)))
if filtered:
    pipe, captioner = load_pipeline("world"), ImplicitCaptioner.from_pretrained("world").eval()
    captions = candidate_class_lists(list(WORLD_CLASSES), 2)
    embeddings = caption_embeddings(pipe, captions, captioner.config.template)
    rank = ranks(pipe, captioner, np.stack([np.asarray(data[i][0]) for i in range(len(data))]), embeddings,
                 [captions.index(sorted(names, key=WORLD_CLASSES.index)) for names in prompted])
    keep = [i for i in range(len(data)) if rank[i] <= keep_rank]
print(f"{'filtered' if filtered else 'all'}: {len(keep)} of {len(data)} images", flush=True)
train_and_score("filtered" if filtered else "all", subset(data, keep, f"kept{len(keep)}"), work, 4000)
