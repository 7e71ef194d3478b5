"""Ad hoc: instance-level Simple Copy-Paste in the annotator architecture's training, on instance Protocol ii's rows
(bench_protocol_ii_instances.py): the same datasets (made here as the bench makes them, in its work folder, so either
reuses the other's), the world-annotator recipe at the bench's 1,000 steps with `copy_paste` SHARE, mask AP on the same
500 held-out scenes. `--refine N`: the generated datasets made with N PAMR iterations on their masks (DatasetRecipe's
`refine`), in their own folders.

Run from the repository root:
    python benchmarks/adhoc/instance_copy_paste.py SHARE layouts|text|rendered [--work runs/pii-instances] [--refine 0]
"""

import argparse
import json
from dataclasses import replace
from pathlib import Path

from synthseg.annotators import MaskRCNNAnnotator
from synthseg.dataset import build_dataset, load_dataset_recipe
from synthseg.train.annotator import load_annotator_recipe, train_world_annotator, world_mask_ap
from synthseg.world import WORLD_CLASSES, export_scenes, scene_seed

parser = argparse.ArgumentParser()
parser.add_argument("share", type=float)
parser.add_argument("data", choices=["layouts", "text", "rendered"])
parser.add_argument("--work", type=Path, default=Path("runs/pii-instances"))
parser.add_argument("--steps", type=int, default=1000)
parser.add_argument("--refine", type=int, default=0)
args = parser.parse_args()
planned = 50 * len(WORLD_CLASSES)  # the bench's --per-class 50
name = args.data + (f"-refine{args.refine}" if args.refine and args.data != "rendered" else "")
folder = args.work / name
if args.data == "rendered":
    if not (folder / "annotations.json").is_file():
        export_scenes(folder, [scene_seed(i, held_out=False) for i in range(planned)])
else:
    recipe = load_dataset_recipe("world", model="world-layout" if args.data == "layouts" else "world", grounding="world", per_class=50, per_pair=0,
                                 layouts=args.data == "layouts", spare=0.5 if args.data == "layouts" else 0.0, refine=args.refine)
    build_dataset(recipe, folder)
recipe = replace(load_annotator_recipe("world-annotator"), steps=args.steps, train_data=str(folder.resolve()), copy_paste=args.share)
out = args.work / f"cp{args.share:g}-{name}"
train_world_annotator(recipe, out.with_name(out.name + "-work"), out)
metrics = world_mask_ap(MaskRCNNAnnotator.from_pretrained(out), 500)
print(json.dumps(metrics))
ap = " | ".join(f"{100 * metrics[k]:.1f}" for k in ("mask_ap", "mask_ap50", "mask_ap75"))
print(f"| {name} | copy_paste {args.share:g} | {args.steps} | {ap} |")
