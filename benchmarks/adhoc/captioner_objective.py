"""Ad hoc: the world captioner trained per caption (CLIP's softmax over captions, as shipped until now) or per class
(`objective: classes`, SigLIP's sigmoid per class), on the same datasets, scored on held-out scenes 500-699 (which
Protocol iii's test scenes 0-499 do not share): which classes it finds, by the scene's number of classes, and the
shipped world module's harmonic mIoU with it; and, told each scene's number of classes k, how often a per-class
captioner's k best classes are the scene's. A second seed of the per-class captioner gives the spread.

Run from the repository root:
    python benchmarks/adhoc/captioner_objective.py [--pooling max] [--copy-paste SHARE] WORK DATASET [DATASET ...]
Trains WORK/captions/captioner, WORK/classes/captioner and WORK/classes-seed1/captioner (the captioner-world recipe,
objective and seed changed) on the concatenated datasets; the shipped captioner is scored too. With --pooling max,
the two per-class captioners pool their cells by max (WORK/classes-max, WORK/classes-max-seed1), and no per-caption
one is trained. With --copy-paste, the per-class captioners train with that share of each batch pasted over
(`copy_paste` of the recipe; WORK/classes-max-cpSHARE, ...).
"""

import argparse
from pathlib import Path

import numpy as np
import torch

from synthseg.benchmark import benchmark
from synthseg.captioner import ImplicitCaptioner, Recogniser, class_embeddings
from synthseg.classes import get_split
from synthseg.grounding import GroundingModule
from synthseg.latents import encode_images, pixel_tensor
from synthseg.pipeline import load_pipeline
from synthseg.readers import open_training_data, read_world
from synthseg.segment import GroundingSegmenter
from synthseg.train.captioner import load_captioner_recipe, train_captioner

parser = argparse.ArgumentParser()
parser.add_argument("--pooling", default="mean", choices=["mean", "max"])
parser.add_argument("--copy-paste", type=float, default=0.0)
parser.add_argument("work", type=Path)
parser.add_argument("datasets", nargs="+")
args = parser.parse_args()
work, folders, suffix = args.work, args.datasets, "-max" if args.pooling == "max" else ""
suffix += f"-cp{args.copy_paste:g}" if args.copy_paste else ""
pipe = load_pipeline("world")
data = open_training_data([Path(f) for f in folders])
captioners = {"shipped": ImplicitCaptioner.from_pretrained("world")}
runs = [("classes", "classes", 0), ("classes-seed1", "classes", 1)] if suffix else [("captions", "captions", 0), ("classes", "classes", 0),
                                                                                    ("classes-seed1", "classes", 1)]
for name, objective, seed in runs:
    name = name.replace("classes", "classes" + suffix)
    recipe = load_captioner_recipe("captioner-world", objective=objective, seed=seed, pooling=args.pooling if objective == "classes" else "mean",
                                   copy_paste=args.copy_paste if objective == "classes" else 0.0)
    captioners[name] = train_captioner(pipe, data, recipe, work / name, work / name / "captioner")
scenes = read_world(200, first=500)
names, module, split = list(scenes.class_names), GroundingModule.from_pretrained("world"), get_split("world")
truth = [set(scenes.classes_in(scenes[i][1])) for i in range(len(scenes))]
latents = torch.cat([encode_images(pipe, pixel_tensor(np.asarray(scenes[i][0]))) for i in range(len(scenes))])
print(f"captioners trained on {len(data)} images of {', '.join(folders)}; 200 held-out scenes (500-699)")
print("| captioner | up to | exact set, 1 / 2 / 3 classes | precision | recall | seen | unseen | harmonic |\n|---|---|---|---|---|---|---|---|")
for name, captioner in captioners.items():
    for most in (2, 3):
        found = [set(f) for f in Recogniser(pipe, captioner, names, most)(latents)]
        exact = [np.mean([f == t for f, t in zip(found, truth) if len(t) == k]) for k in (1, 2, 3)]
        precision = sum(len(f & t) for f, t in zip(found, truth)) / sum(len(f) for f in found)
        recall = sum(len(f & t) for f, t in zip(found, truth)) / sum(len(t) for t in truth)
        r = benchmark(GroundingSegmenter(pipe, module, names, captioner=captioner, max_classes=most, class_prior=0.0), scenes, split, model_name=name)
        print(f"| {name} | {most} | {' / '.join(f'{100 * e:.0f}' for e in exact)} | {100 * precision:.1f} | {100 * recall:.1f} | "
              f"{100 * r.seen_miou:.1f} | {100 * r.unseen_miou:.1f} | {100 * r.harmonic_miou:.1f} |", flush=True)
for name in ("classes" + suffix, "classes-seed1".replace("classes", "classes" + suffix)):
    with torch.no_grad():
        logits = captioners[name].class_logits(latents, class_embeddings(pipe, names, captioners[name].config.template))
    told = [np.mean([{names[j] for j in row.argsort(descending=True)[:k].tolist()} == t for row, t in zip(logits, truth) if len(t) == k])
            for k in (1, 2, 3)]
    print(f"{name}, told the number of classes k: its k best are the scene's in {' / '.join(f'{100 * e:.0f}' for e in told)}% "
          "of the scenes of 1 / 2 / 3 classes")
