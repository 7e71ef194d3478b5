"""Ad hoc: a judge that counts, for choosing among a layout's candidates.

The captioner, the only shipped judge, says which classes an image holds, not how many of each, and it learnt from
generated images labelled with their prompts (a square drawn for "diamond" is labelled diamond). This judge is the
world backbone (`resnet-world`, pretrained on rendered scenes) with a new head: for each of the 12 classes, how many
visible objects (0 to 4) a rendered layout scene holds, trained on layout streams 30 onward (1-4 objects,
same-class repeats, as world-layout's card draws them; no bench or training uses them), with flips and a light blur
(generated images are softer than rendered ones). Like the captioner it never sees boxes or the annotator.

- train: python benchmarks/adhoc/count_judge.py train STEPS OUT [scratch] (scratch: the same ResNet from random weights)
- judge: python benchmarks/adhoc/count_judge.py judge OUT RECORD.json [N] (a layout_candidates.py record): chooses by
  the log-probability of exactly the layout's count of every class, and by that plus the captioner's
"""
import sys
from dataclasses import replace

sys.path.insert(0, "benchmarks")

import numpy as np
import torch
import torch.nn.functional as F
from bench_layouts import annotator_picks, judge_picks, read_candidates
from torchvision.transforms.functional import gaussian_blur
from transformers import ResNetForImageClassification

from synthseg.dataset import load_dataset_recipe
from synthseg.registry import resolve_backbone
from synthseg.segmenter import normalised_pixels
from synthseg.train.loop import warmup_cosine
from synthseg.train.world_t2i import sample_layout_scenes
from synthseg.world import WORLD_CLASSES

NAMES = list(WORLD_CLASSES)
BINS = 5  # 0 to 4 objects of a class


def count_log_probs(model, images: np.ndarray) -> torch.Tensor:
    """(B, 12, 5) log-probabilities of each count of each class."""
    with torch.no_grad():
        return F.log_softmax(model(pixel_values=normalised_pixels(images)).logits.view(len(images), len(NAMES), BINS), -1)


def train(steps: int, out: str, scratch: bool = False) -> None:
    torch.manual_seed(0)
    section = replace(load_dataset_recipe("world", layouts=True, model="world-layout").layouts, seed=30)
    model = ResNetForImageClassification.from_pretrained(resolve_backbone("world"), num_labels=len(NAMES) * BINS,
                                                         ignore_mismatched_sizes=True).float().train()
    if scratch:
        model = ResNetForImageClassification(model.config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(100, steps))
    rng = np.random.default_rng(0)
    losses = []
    for step in range(steps):
        scenes, _ = sample_layout_scenes(section, step, 32, 64)
        counts = torch.tensor([[sum(1 for c, m in zip(s.classes, s.masks) if c == name and m.any()) for name in NAMES] for s in scenes])
        pixels = normalised_pixels(np.stack([s.image for s in scenes]))
        flip = torch.from_numpy(rng.random(len(scenes)) < 0.5)
        pixels[flip] = pixels[flip].flip(-1)
        sigma = float(rng.uniform(0.1, 1.2))
        pixels = gaussian_blur(pixels, [5, 5], [sigma, sigma])
        logits = model(pixel_values=pixels).logits.view(len(scenes), len(NAMES), BINS)
        loss = F.cross_entropy(logits.reshape(-1, BINS), counts.clamp(max=BINS - 1).reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            print(step, round(float(np.mean(losses[-100:])), 4), flush=True)
    model.eval().save_pretrained(out)


def judge(out: str, argv: list[str]) -> None:
    from synthseg.captioner import ImplicitCaptioner, Recogniser, class_set_log_probability
    from synthseg.latents import encode_images, pixel_tensor
    from synthseg.pipeline import load_pipeline

    torch.set_num_threads(2)
    records, arrays, n = read_candidates(argv)
    model = ResNetForImageClassification.from_pretrained(out).float().eval()  # train-backbone exports fp16
    pipe = load_pipeline("world")
    recogniser = Recogniser(pipe, ImplicitCaptioner.from_pretrained("world"), NAMES)
    scores = []
    for i, record in enumerate(records):
        images = arrays[f"images{i}"][:n]
        want = torch.tensor([record["phrases"].count(name) for name in NAMES])
        counted = count_log_probs(model, images).gather(2, want[None, :, None].expand(len(images), -1, 1)).squeeze(2).sum(1)
        members = [NAMES.index(c) for c in dict.fromkeys(record["phrases"])]
        with torch.no_grad():
            captioner = class_set_log_probability(recogniser.class_logits(encode_images(pipe, pixel_tensor(images))), members)
        scores.append((counted.numpy(), captioner.numpy()))
    table = {
        "first candidate": [0] * len(records),
        "captioner (shipped)": [int(np.argmax(cap)) for _, cap in scores],
        "count judge": [int(np.argmax(cnt)) for cnt, _ in scores],
        "count judge + captioner": [int(np.argmax(cnt + cap)) for cnt, cap in scores],
        "count judge + captioner / 2": [int(np.argmax(cnt + cap / 2)) for cnt, cap in scores],
        "count judge / 2 + captioner": [int(np.argmax(cnt / 2 + cap)) for cnt, cap in scores],
        "annotator (upper bound)": annotator_picks(records, n),
    }
    print(f"{len(records)} layouts, {n} candidates each")
    for name, pick in table.items():
        print(f"| {name} | " + " | ".join(f"{v:.1f}%" for v in judge_picks(records, pick)) + " |")


if __name__ == "__main__":
    train(int(sys.argv[2]), sys.argv[3], sys.argv[4:] == ["scratch"]) if sys.argv[1] == "train" else judge(sys.argv[2], sys.argv[3:])
