"""The whole VOC path once, at real architecture size, on CPU: each stage's time, peak memory and disk.

Models, all with random weights (this measures cost and catches the bugs of shape, memory and time that
tiny models hide; the masks mean nothing):
- Stable Diffusion 1.5's exact architecture (`synthseg.tiny.sd15_pipeline`), saved as a diffusers folder
  and loaded by the commands through `--model FOLDER`, as a downloaded SD 1.5 would be;
- torchvision's COCO Mask R-CNN (ResNet-50 FPN v2) with `weights=None`, written where torchvision's
  weights API looks for the COCO checkpoint (a temporary TORCH_HOME), so `annotator: coco` takes the
  real loading path. Its class bias favours "person" so that it returns detections at all;
- MaskFormer R101 from the `segmenter-maskformer-r101` recipe, without ImageNet weights.

Stages, each a `synthseg` command in its own process, in order:
1. `make-triplets` with the voc-grounding recipe: a few triplets at 512^2 (replay storage, as that
   recipe chooses for SD 1.5);
2. `train-grounding` on them: a few steps (each replays one 512^2 denoiser call);
3. `make-dataset --classes voc`: the VOC recipe at one image per class, no pairs, at 512^2;
4. `train-segmenter` with the R101 recipe: a few steps on 512 crops;
5. `benchmark --dataset voc2012` on a VOC-layout folder of real photographs (`write_voc_photos`).

Peak memory is each process's resident peak (`wait4`'s ru_maxrss). Linux carries a parent's peak into a
child it execs, so this script itself stays small: the models are built in a spawned process and torch
is imported here only to write the results. Writes the "real size (VOC path,
CPU)" section of benchmarks/RESULTS.md.

    python benchmarks/bench_real_size.py [--triplets 4] [--steps 2] [--grounding-steps 2] [--segmenter-steps 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def coco_maskrcnn_checkpoint(torch_home: Path) -> None:
    """Random COCO Mask R-CNN weights at the path torchvision's weights API reads before downloading.

    Its class scores ignore the image: each of the voc-grounding split's seen classes scores 1/15 on
    every box, above torchvision's 0.05 floor, so the 100 detections it keeps spread over those classes.
    Random class weights would instead give a few classes everywhere, which the prompts rarely name:
    no masks, and neither the mask heads nor the grounding loss at 512^2 would run."""
    import torch
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_V2_Weights, maskrcnn_resnet50_fpn_v2

    from synthseg.annotators import COCO_NAME_MAP
    from synthseg.classes import VOC_CLASSES, get_split

    spec = MaskRCNN_ResNet50_FPN_V2_Weights.DEFAULT
    categories = spec.meta["categories"]
    seen = [categories.index(COCO_NAME_MAP.get(n, n)) for n in VOC_CLASSES if n not in get_split("voc-split1").unseen]
    torch.manual_seed(0)
    model = maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=len(categories))
    with torch.no_grad():
        classes = model.roi_heads.box_predictor.cls_score
        classes.weight.zero_()
        classes.bias.zero_()
        classes.bias[seen] = 10.0
    target = torch_home / "hub" / "checkpoints" / os.path.basename(spec.url)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), target)


def prepare(work: Path) -> None:
    """The models and the VOC-layout photographs the stages read, in `work`."""
    from synthseg.tiny import sd15_pipeline, write_voc_photos

    sd15_pipeline().save_pretrained(work / "sd15")
    coco_maskrcnn_checkpoint(work / "torch")
    write_voc_photos(work)


def recipes(work: Path, args) -> dict[str, Path]:
    """The packaged VOC recipes, at the bench's counts and steps, pointed at the bench's model folders."""
    from synthseg.config import read_mapping
    from synthseg.registry import recipe_path

    grounding = read_mapping(recipe_path("voc-grounding", "grounding"))
    grounding.update(pipeline=str(work / "sd15"), score_threshold=0.05)  # each seen class scores 1/15: see coco_maskrcnn_checkpoint
    grounding["triplets"].update(count=args.triplets, num_inference_steps=args.steps, batch_size=2, shard_size=args.triplets)
    grounding["train"].update(steps=args.grounding_steps, batch_size=2, warmup_steps=1, checkpoint_every=args.grounding_steps)
    dataset = read_mapping(recipe_path("voc", "dataset"))
    dataset.update(model=str(work / "sd15"), grounding=str(work / "module"), per_class=1, per_pair=0, num_inference_steps=args.steps, batch_size=4,
                   require_all_classes=False, band=0.0)  # a random module draws no class: keep its images
    segmenter = read_mapping(recipe_path("segmenter-maskformer-r101", "segmenter"))
    segmenter.update(pretrained_backbone=False, steps=args.segmenter_steps, batch_size=2, checkpoint_every=args.segmenter_steps)
    paths = {}
    for name, recipe in (("grounding", grounding), ("dataset", dataset), ("segmenter", segmenter)):
        paths[name] = work / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(recipe, sort_keys=False))
    return paths


def run(argv: list[str], env: dict) -> tuple[float, float]:
    """Run `python -m synthseg ARGV`; (seconds, peak resident GiB) of that process."""
    print("$ synthseg", " ".join(argv), flush=True)
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "synthseg", *argv], env=env)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        sys.exit(f"error: stage failed with exit code {process.returncode}: synthseg {' '.join(argv)}")
    return seconds, usage.ru_maxrss / 2**20  # KiB -> GiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--triplets", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2, help="denoising steps per image (triplets and dataset)")
    parser.add_argument("--grounding-steps", type=int, default=2)
    parser.add_argument("--segmenter-steps", type=int, default=2)
    parser.add_argument("--work", type=Path, help="keep the stages' outputs here (default: a temporary folder)")
    parser.add_argument("--note", default="", help="a sentence on the run's conditions, written under the table's caption")
    args = parser.parse_args()

    from synthseg.classes import VOC_CLASSES  # no torch: this process's peak memory stays small

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        builder = multiprocessing.get_context("spawn").Process(target=prepare, args=(work,))
        builder.start()
        builder.join()
        if builder.exitcode:
            sys.exit(f"error: building the models failed (exit code {builder.exitcode})")
        paths = recipes(work, args)
        env = {**os.environ, "TORCH_HOME": str(work / "torch"), "HF_HUB_OFFLINE": "1"}
        images = len(VOC_CLASSES)  # make-dataset --classes voc at one image per class and no pairs
        stages = [
            ("1. make-triplets (512^2)", ["make-triplets", "--recipe", str(paths["grounding"]), "--out", str(work / "triplets")],
             work / "triplets", args.triplets, "triplets"),
            ("2. train-grounding (replay)", ["train-grounding", "--recipe", str(paths["grounding"]), "--triplets", str(work / "triplets"),
                                             "--workdir", str(work / "grounding-work"), "--out", str(work / "module")],
             work / "module", 1, "module"),
            ("3. make-dataset --classes voc (512^2)", ["make-dataset", "--classes", "voc", "--recipe", str(paths["dataset"]),
                                                       "--out", str(work / "dataset")],
             work / "dataset", images, "images"),
            ("4. train-segmenter (MaskFormer R101, 512 crops)", ["train-segmenter", "--dataset", str(work / "dataset"),
                                                                  "--recipe", str(paths["segmenter"]), "--out", str(work / "segmenter")],
             work / "segmenter", 1, "model"),
            ("5. benchmark --dataset voc2012", ["benchmark", "--dataset", "voc2012", "--data-root", str(work),
                                                "--segmenter", str(work / "segmenter"), "--out", str(work / "benchmark")],
             work / "benchmark", 4, "photographs"),
        ]
        rows = []
        for name, argv, output, items, unit in stages:
            seconds, peak = run(argv, env)
            per_item = folder_bytes(output) / items / 2**20
            rows.append(f"| {name} | {items} {unit} | {seconds:.0f} | {seconds / items:.1f} | {peak:.2f} | {per_item:.3g} |")
            print(rows[-1], flush=True)
        report = json.loads((work / "benchmark" / "benchmark.json").read_text())
        triplet_layout = json.loads((work / "triplets" / "layout.json").read_text())
    body = f"""Stable Diffusion 1.5's architecture, torchvision's COCO Mask R-CNN and MaskFormer R101, all with random
weights, fp32, this CPU; {args.steps} denoising steps per image, {args.triplets} triplets
({triplet_layout.get("storage", "features")} storage), {args.grounding_steps} grounding steps (batch 2), {images} dataset
images (one per VOC class), {args.segmenter_steps} segmenter steps (batch 2, 512 crops), 4 VOC-layout photographs.
Each stage is one `synthseg` command in its own process (model loading included). {args.note}

| stage | items | seconds | seconds per item | peak memory (GiB) | disk per item (MB) |
|---|---|---|---|---|---|
{chr(10).join(rows)}

The benchmark stage scored {report["images"]} images (its mIoU means nothing with random weights). Disk: triplets
folder, module folder, dataset folder (images, label maps, COCO), segmenter folder, benchmark outputs, each divided by its items.
"""
    from results import write_section

    print(body)
    write_section("real size (VOC path, CPU)", body)


if __name__ == "__main__":
    main()
