"""Ad hoc: Protocol ii's (a) and (b) with Simple Copy-Paste in the segmenter's training (segmenter-world's
`copy_paste`: the share of training crops that get another image's objects pasted over them).

Run from the repository root, after bench_protocol_ii.py has made its synthetic dataset:
    python benchmarks/adhoc/copy_paste_protocol_ii.py WORK SEED STEPS SHARE a|b [LOW HIGH]
LOW HIGH: the recipe's paste_scale_range (the pasted image's short side over the crop's) instead of segmenter-world's.
Prints harmonic mIoU on Protocol ii's test scenes (0-499) and on scenes 500-999.
"""

import sys
from pathlib import Path

sys.path.insert(0, "benchmarks/adhoc")
from segmenter_trial import SYNTHETIC, train_and_score  # noqa: E402

from synthseg.readers import read_synthseg, read_world

work, seed, steps, share, key = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
fields = {"paste_scale_range": [float(sys.argv[6]), float(sys.argv[7])]} if len(sys.argv) > 7 else {}
synthetic = read_synthseg(SYNTHETIC)
data = {"a": synthetic, "b": read_world(len(synthetic), held_out=False)}[key]
scale = f", paste_scale_range {fields['paste_scale_range']}" if fields else ""
print(f"({key}) {data.name}: {len(data)} images, seed {seed}, {steps} steps, copy_paste {share}{scale}", flush=True)
train_and_score(f"({key}) copy_paste {share}{scale}, seed {seed}, {steps} steps", data, work, steps, seed, copy_paste=share, **fields)
