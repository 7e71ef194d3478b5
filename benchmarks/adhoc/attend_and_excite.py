"""Ad hoc: diffusers' Attend-and-Excite on the world UNet, for the two-class prompts of bench_world_fidelity.py.

Run from the repository root: python benchmarks/adhoc/attend_and_excite.py COUNT ITERATIONS SCALE
(ITERATIONS 0: no excitation, the control). Prints the share of images where the world annotator finds both classes.
Same prompts and seeds as the bench's two-class half (seeds 200 and on), 25 steps, guidance 2.0, one image a call.
"""

import sys
import time

import torch
from diffusers import StableDiffusionAttendAndExcitePipeline

sys.path.insert(0, "benchmarks")
from bench_world_fidelity import found_classes, prompt_groups  # noqa: E402

from synthseg.annotators import load_annotator  # noqa: E402
from synthseg.pipeline import load_pipeline  # noqa: E402
from synthseg.prompts import caption  # noqa: E402

count, iterations, scale = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
pipe = load_pipeline("world")
excite = StableDiffusionAttendAndExcitePipeline(**{k: v for k, v in pipe.components.items() if k != "image_encoder"},
                                                requires_safety_checker=False)
excite.set_progress_bar_config(disable=True)
pairs = prompt_groups(200)[200 : 200 + count]  # the bench's two-class half, whose seeds are 200 and on
images, start = [], time.perf_counter()
for i, names in enumerate(pairs):
    prompt = caption(names)
    tokens = excite.tokenizer.convert_ids_to_tokens(excite.tokenizer(prompt)["input_ids"])
    indices = [tokens.index(excite.tokenizer.tokenize(name)[0]) for name in names]  # a class's first word piece
    thresholds = {0: 0.05, iterations // 2: 0.5, iterations - 2: 0.8} if iterations else {}
    images += excite(prompt, token_indices=indices, generator=torch.Generator().manual_seed(200 + i), num_inference_steps=25,
                     guidance_scale=2.0, height=64, width=64, max_iter_to_alter=iterations, thresholds=thresholds,
                     scale_factor=scale, attn_res=(16, 16)).images
print(f"{(time.perf_counter() - start) / count:.2f} s per image")
found = found_classes(load_annotator("world"), images, pairs, 25)
print(f"iterations {iterations}, scale {scale:g}: both classes found in {100 * found.mean():.1f}% of {count}")
