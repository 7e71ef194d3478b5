"""Ad hoc: make-dataset's labels refined by PAMR (`DatasetRecipe.refine`, synthseg.refine) on Protocol ii's synthetic
dataset (the bench's recipe: world, 50 per class, 4 per pair, seed 0; the same images, only the labels differ), and
segmenter-world trained on it, scored on Protocol ii's test scenes (0-499) and scenes 500-999.

Run from the repository root (the dataset is made once per REFINE, resumably, in WORK/synthetic):
    python benchmarks/adhoc/refined_labels_protocol_ii.py WORK REFINE SEED STEPS
"""

import sys
from pathlib import Path

sys.path.insert(0, "benchmarks/adhoc")
from segmenter_trial import train_and_score  # noqa: E402

from synthseg.dataset import load_dataset_recipe, make_dataset, provenance  # noqa: E402
from synthseg.grounding import GroundingModule  # noqa: E402
from synthseg.pipeline import load_pipeline  # noqa: E402
from synthseg.readers import read_synthseg  # noqa: E402

work, refine, seed, steps = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
recipe = load_dataset_recipe("world", per_class=50, per_pair=4, refine=refine)
make_dataset(load_pipeline(recipe.model), GroundingModule.from_pretrained(recipe.grounding), recipe, work / "synthetic",
             provenance(recipe.model, recipe.grounding))
if steps:
    print("| labels | images | scenes | seen | unseen | harmonic |\n|---|---|---|---|---|---|")
    train_and_score(f"refine {refine}, seed {seed}, {steps} steps", read_synthseg(work / "synthetic"), work / f"seed{seed}", steps, seed)
