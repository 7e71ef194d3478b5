"""Where the miniature world's training stands: steps and recent loss of each checkpoint under
runs/, and the shipped annotator's mask AP (written by `synthseg train-world-annotator` into
synthseg/assets/world/annotator/metrics.json). Writes the "world training" section of
benchmarks/RESULTS.md.

    python benchmarks/report_world_training.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from results import write_section

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = {"VAE": "runs/world-t2i/vae.ckpt", "UNet": "runs/world-t2i/unet.ckpt", "annotator": "runs/world-annotator/annotator.ckpt"}


def main() -> None:
    rows = []
    for name, path in CHECKPOINTS.items():
        if (ROOT / path).is_file():
            state = torch.load(ROOT / path, weights_only=True)
            recent = state["losses"][-50:]
            rows.append(f"| {name} | `{path}` | {state['step']} | {sum(recent) / len(recent):.4f} |")
    metrics = json.loads((ROOT / "synthseg/assets/world/annotator/metrics.json").read_text())
    body = f"""Checkpoints on this machine (training resumes from them):

| model | checkpoint | steps | mean loss, last 50 steps |
|---|---|---|---|
{chr(10).join(rows)}

Shipped annotator (`synthseg/assets/world/annotator`, exported from the 1,750-step checkpoint with
`synthseg train-world-annotator --max-steps 1750`): mask AP **{metrics['mask_ap']:.3f}**, AP50
{metrics['mask_ap50']:.3f}, AP75 {metrics['mask_ap75']:.3f} on {metrics['scenes']} held-out scenes (pycocotools
COCOeval "segm"). The shipped text-to-image model is the 4,500-step UNet export.
"""
    print(body)
    write_section("world training", body)


if __name__ == "__main__":
    main()
