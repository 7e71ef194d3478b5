"""Ad hoc: the world captioner as a filter of generated images, judged by the world annotator.

Run from the repository root: python benchmarks/adhoc/captioner_filter.py prompts [MODEL] | boxes
- prompts: bench_world_fidelity.py's 200 one-class and 200 two-class images (25 steps, guidance 2.0); an image is
  kept when its prompt's caption ranks within the top k of all captions of 1-2 world classes.
- boxes: each box of the kept images of bench_protocol_ii_instances.py's layout dataset, read alone (the image
  outside the box, with a 10% margin, painted its border's median colour; or the box cropped and resized to the
  image), kept when its class's one-class caption ranks within the top k.
Prints, for k = 0, 1, 2, the share kept and the annotator's hit rate among kept and dropped images or boxes.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, "benchmarks")
from bench_layouts import box_hits  # noqa: E402
from bench_world_fidelity import found_classes, prompt_groups, sample  # noqa: E402

from synthseg.annotators import load_annotator  # noqa: E402
from synthseg.captioner import ImplicitCaptioner, candidate_class_lists, caption_embeddings  # noqa: E402
from synthseg.dataset import plan, read_recipe  # noqa: E402
from synthseg.latents import encode_images, pixel_tensor  # noqa: E402
from synthseg.pipeline import load_pipeline  # noqa: E402
from synthseg.prompts import caption  # noqa: E402
from synthseg.world import WORLD_CLASSES  # noqa: E402


def ranks(pipe, captioner, pixels: np.ndarray, embeddings: torch.Tensor, wanted: list[int]) -> np.ndarray:
    """Rank of caption `wanted[i]` among the captions of `embeddings` (`caption_embeddings`) for image i (0: the nearest)."""
    with torch.no_grad():
        scores = captioner(encode_images(pipe, pixel_tensor(pixels))) @ embeddings.T
    own = scores[torch.arange(len(wanted)), torch.tensor(wanted)]
    return (scores > own[:, None]).sum(1).numpy()


def report(name: str, hit: np.ndarray, rank: np.ndarray) -> None:
    print(f"{name}: {len(hit)}, annotator hit {100 * hit.mean():.1f}%")
    for k in (0, 1, 2):
        keep = rank <= k
        dropped = f"{100 * hit[~keep].mean():.1f}%" if (~keep).any() else "-"
        print(f"  rank <= {k}: kept {100 * keep.mean():.0f}%, hit among kept {100 * hit[keep].mean():.1f}%, among dropped {dropped}")


def prompts(model: str) -> None:
    pipe, captioner = load_pipeline(model), ImplicitCaptioner.from_pretrained("world").eval()
    pipe.set_progress_bar_config(disable=True)
    groups = prompt_groups(200)
    images = sample(pipe, [caption(g) for g in groups], list(range(400)), 25, 2.0, 25)
    found = found_classes(load_annotator("world"), images, groups, 25)
    captions = candidate_class_lists(list(WORLD_CLASSES), 2)
    embeddings = caption_embeddings(pipe, captions, captioner.config.template)
    rank = ranks(pipe, captioner, np.stack([np.asarray(i) for i in images]), embeddings,
                 [captions.index(sorted(g, key=WORLD_CLASSES.index)) for g in groups])
    report("one class", found[:200], rank[:200])
    report("two classes", found[200:], rank[200:])


def boxes() -> None:
    folder = Path("runs/pii-instances/layouts")
    pipe, captioner, annotator = load_pipeline("world"), ImplicitCaptioner.from_pretrained("world").eval(), load_annotator("world")
    embeddings = caption_embeddings(pipe, candidate_class_lists(list(WORLD_CLASSES), 1), captioner.config.template)
    rows = {"blanked": ([], []), "cropped": ([], [])}
    for item in plan(read_recipe(folder)):
        path = folder / f"records/{item.index:06d}.json"
        record = json.loads(path.read_text()) if path.exists() else {"dropped": "not made"}
        if record["dropped"]:
            continue
        image = Image.open(folder / record["file_name"]).convert("RGB")
        pixels = np.asarray(image)
        height, width = pixels.shape[:2]
        border = np.median(np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]]), axis=0).astype(np.uint8)
        blanked, cropped = [], []
        for x0, y0, x1, y1 in item.boxes:
            mx, my = 0.1 * (x1 - x0), 0.1 * (y1 - y0)
            a, b = int(max(0, (x0 - mx) * width)), int(max(0, (y0 - my) * height))
            c, d = int(min(width, np.ceil((x1 + mx) * width))), int(min(height, np.ceil((y1 + my) * height)))
            view = np.tile(border, (height, width, 1))
            view[b:d, a:c] = pixels[b:d, a:c]
            blanked.append(view)
            cropped.append(np.asarray(Image.fromarray(pixels[b:d, a:c]).resize((width, height), Image.BILINEAR)))
        hits = box_hits(annotator.annotate([image], [item.classes])[0], item)
        wanted = [WORLD_CLASSES.index(p) for p in item.phrases]
        for name, views in (("blanked", blanked), ("cropped", cropped)):
            rows[name][0].extend(hits)
            rows[name][1].extend(ranks(pipe, captioner, np.stack(views), embeddings, wanted))
    for name, (hit, rank) in rows.items():
        report(f"boxes, {name}", np.array(hit, dtype=bool), np.array(rank))


if __name__ == "__main__":
    prompts(sys.argv[2] if len(sys.argv) > 2 else "world") if sys.argv[1] == "prompts" else boxes()
