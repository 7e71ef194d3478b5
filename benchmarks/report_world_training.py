"""Where the miniature world's training stands: steps and recent loss of each checkpoint under
runs/, the size of the grounding module's triplet cache, the steps each shipped export came from
(its training.json), and the shipped annotator's mask AP (written by `synthseg train-world-annotator` into
synthseg/assets/world/annotator/metrics.json). Writes the "world training" section of
benchmarks/RESULTS.md.

    python benchmarks/report_world_training.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from results import shipped_world, write_section

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = {"VAE": "runs/world-t2i/vae.ckpt", "UNet": "runs/world-t2i/unet.ckpt",
               "UNet fine-tuning, stage 2 (`recipes/world-t2i-finetune.yaml`)": "runs/world-t2i-ft/unet.ckpt",
               "UNet fine-tuning, stage 3 (`recipes/world-t2i-finetune2.yaml`)": "runs/world-t2i-ft3/unet.ckpt",
               "annotator": "runs/world-annotator/annotator.ckpt", "grounding module": "runs/world-grounding/grounding.ckpt"}
TRIPLETS = "runs/world-triplets"


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    from synthseg.progress import recent_loss
    from synthseg.registry import resolve_annotator

    rows = []
    for name, path in CHECKPOINTS.items():
        if (ROOT / path).is_file():
            state = torch.load(ROOT / path, weights_only=True)
            rows.append(f"| {name} | `{path}` | {state['step']:,} | {recent_loss(state['losses']):.4f} |")
    triplets = ""
    if (ROOT / TRIPLETS / "layout.json").is_file():
        from synthseg.triplets import TripletShards

        cache = TripletShards(ROOT / TRIPLETS)
        missing = [m for record in cache.records() for m in record["missing"]]
        triplets = (f"\nTriplet cache `{TRIPLETS}` (the grounding module's training data): {len(cache):,} triplets, "
                    f"{cache.bytes_per_triplet() / 1024:.0f} KB per triplet on disk (fp16 features and cross-attention maps); "
                    f"the annotator missed {100 * sum(missing) / len(missing):.1f}% of their prompted classes.\n")
    world = shipped_world()
    sizes = {folder.name: sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20 for folder, _, _ in world}
    shipped = ", ".join(f"`{name}/` {mb:.1f} MB" for name, mb in sizes.items())
    exports = [f"| `{folder.name}/` | {digest} | {stage} | {r['steps']:,} | {r['loss']:.4f} |"
               for folder, digest, record in world for stage, r in record.items()]
    metrics = json.loads((Path(resolve_annotator("world")) / "metrics.json").read_text())
    layouts = (f"; mask AP **{metrics['layout_mask_ap']:.3f}**, AP50 {metrics['layout_mask_ap50']:.3f}, AP75 "
               f"{metrics['layout_mask_ap75']:.3f} on {metrics['layout_scenes']} held-out layout scenes (1-4 objects, repeats)"
               if "layout_mask_ap" in metrics else "")
    none = "None of the world's training checkpoints is on this machine (in the recipes' workdirs under `runs/`)."
    checkpoints = ("Checkpoints on this machine (training resumes from them):\n\n| model | checkpoint | steps | mean loss, last 50 steps |\n"
                   "|---|---|---|---|\n" + "\n".join(rows) if rows else none)
    body = f"""{checkpoints}
{triplets}
Shipped in `synthseg/assets/world/`: {shipped}; {sum(sizes.values()):.1f} MB in all (both worlds together stay under 60 MB,
and everything shipped, world-layout included, under 70 MB).
Each was exported from the checkpoint below (its `training.json`; `--max-steps N` exports the
checkpoint at step N). The digest (sha256 of its safetensors) names the export in the "World models"
line of the other sections:

| shipped | digest | stage | steps | mean loss, last 50 steps |
|---|---|---|---|---|
{chr(10).join(exports)}

Shipped annotator: mask AP **{metrics['mask_ap']:.3f}**, AP50 {metrics['mask_ap50']:.3f}, AP75 {metrics['mask_ap75']:.3f}
on {metrics['scenes']} held-out scenes{layouts} (pycocotools COCOeval "segm").
"""
    print(body)
    write_section("world training", body)


if __name__ == "__main__":
    main()
