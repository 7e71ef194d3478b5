"""Ad hoc: segmenters of the label-band trial scored on held-out scenes 500-999, not Protocol ii's test scenes 0-499.

Run from the repository root after label_band.sh, label_band_12k.sh and bench_protocol_ii.py --recipe segmenter-world:
    python benchmarks/adhoc/label_band_validation.py runs/band-trial/seg0.0 runs/band-trial/seg0.5 ...
"""

import sys

from synthseg.benchmark import benchmark
from synthseg.classes import get_split
from synthseg.readers import read_world
from synthseg.segmenter import Segmenter

validation = read_world(500, first=500)
print("| segmenter | seen | unseen | harmonic |\n|---|---|---|---|")
for folder in sys.argv[1:]:
    result = benchmark(Segmenter.from_pretrained(folder), validation, get_split("world"), model_name=folder)
    print(f"| {folder} | {100 * result.seen_miou:.1f} | {100 * result.unseen_miou:.1f} | {100 * result.harmonic_miou:.1f} |", flush=True)
