"""Ad hoc: peak memory of segmenting many photos, every result kept (`segment_images`) against one batch at a
time (`segment_to_folder`, what `synthseg segment` runs).

SD 1.x's tiny pipeline (random weights) and a random module, N random 504x376 photos, VOC's 20 class names, no
refinement; each way in its own process, whose peak RSS (and RSS before segmenting) it prints. Writes only to a
temporary folder.

    cd benchmarks && python adhoc/segment_memory.py [N]
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from synthseg import GroundingConfig, GroundingModule
from synthseg.classes import VOC_CLASSES
from synthseg.segment import segment_images, segment_to_folder
from synthseg.tiny import tiny_pipeline


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one_way(way: str, folder: Path) -> None:
    torch.manual_seed(0)
    pipe = tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    module = GroundingModule(GroundingConfig.for_pipeline(pipe)).eval()
    paths = sorted(folder.glob("*.png"))
    before = peak_mb()
    if way == "kept":
        segment_images(pipe, module, [Image.open(p) for p in paths], list(VOC_CLASSES), refine=0)
    else:
        segment_to_folder(pipe, module, paths, list(VOC_CLASSES), folder / "out", refine=0)
    print(f"{before:.0f} {peak_mb():.0f}")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] in ("kept", "streamed"):
        return one_way(sys.argv[1], Path(sys.argv[2]))
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 25
    with tempfile.TemporaryDirectory() as folder:
        rng = np.random.default_rng(0)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (376, 504, 3), dtype=np.uint8)).save(Path(folder) / f"p{i:03d}.png")
        print(f"{count} photos of 504x376, 20 classes\n| way | RSS before segmenting | peak RSS | growth |\n|---|---|---|---|")
        for way in ("kept", "streamed"):
            out = subprocess.run([sys.executable, __file__, way, folder], check=True, capture_output=True, text=True).stdout
            before, peak = map(float, out.split()[-2:])
            print(f"| {way} | {before:.0f} MB | {peak:.0f} MB | +{peak - before:.0f} MB |", flush=True)


if __name__ == "__main__":
    main()
