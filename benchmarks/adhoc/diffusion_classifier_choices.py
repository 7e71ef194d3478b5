"""Ad hoc: the choices of the diffusion classifier made offline from `diffusion_classifier.py`'s recordings (every
candidate list's denoising error at every draw): the captioner alone, the error alone, and both (as
`synthseg.classify.DiffusionClassifier` weighs them) over subsets of the candidates (the lists of the captioner's top
K classes) and of the draws (every 2nd or 4th of the stratified timesteps is again stratified); and the captioner's
classes re-ranked by their one-class prompts' errors. Draw counts are of the whole schedule: restricted to timesteps
0-700, every 4th of 64 draws leaves 12.

    python benchmarks/adhoc/diffusion_classifier_choices.py runs/s42/dc500-t6d64.npz runs/s42/dc600-t6d64.npz
"""

import sys

import numpy as np

truths, logits, candidates, errors = [], [], [], []
for path in sys.argv[1:]:
    data = np.load(path, allow_pickle=True)
    truths += list(data["truths"])
    logits += list(data["logits"])
    candidates += list(data["candidates"])
    errors += list(data["errors"])
    timesteps = data["timesteps"]


def log_sigmoid(x):
    return -np.logaddexp(0, -x)


def report(name: str, chosen: list) -> None:
    hits = [(set(c), set(t)) for c, t in zip(chosen, truths)]
    by_size = " / ".join(f"{100 * np.mean([c == t for c, t in hits if len(t) == k]):.0f}" for k in (1, 2, 3))
    precision = sum(len(c & t) for c, t in hits) / sum(len(c) for c, _ in hits)
    recall = sum(len(c & t) for c, t in hits) / sum(len(t) for _, t in hits)
    print(f"| {name} | {by_size} | {100 * np.mean([c == t for c, t in hits]):.1f} | {100 * precision:.1f} | {100 * recall:.1f} |")


def choose(top: int, every: int, weight: float, low: int = 0, high: int = 1000, rerank: float = 0.0, relative: bool = False) -> list:
    """Per scene, the best list of the captioner's `top` classes (re-ranked by their one-class errors times `rerank`)
    by log-probability less `weight` x mean error over every `every`-th draw with a timestep in [low, high) (with
    `relative`, each draw's errors over their mean across the lists, as synthseg.classify scores)."""
    draws = (np.arange(len(timesteps)) % every == 0) & (timesteps >= low) & (timesteps < high)
    out = []
    for lists, error, logit in zip(candidates, errors, logits):
        error = error / error.mean(0, keepdims=True) if relative else error
        ranked = np.argsort(-logit)[:6].tolist()
        if rerank:
            single = {c[0]: error[i, draws].mean() for i, c in enumerate(lists) if len(c) == 1}
            ranked.sort(key=lambda c: -(logit[c] - rerank * (single[c] - np.mean(list(single.values())))))
        best = set(ranked[:top])
        keep = [i for i, c in enumerate(lists) if set(c) <= best]
        prior = np.array([sum(log_sigmoid(logit[i]) - log_sigmoid(-logit[i]) for i in lists[k]) for k in keep])
        out.append(lists[keep[int(np.argmax(prior - weight * error[keep][:, draws].mean(1)))]])
    return out


captioner = []
for logit in logits:
    best = np.argsort(-logit)[:3]
    captioner.append(sorted({best[0], *(i for i in best if logit[i] > 0)}))
print("| naming | exact class set, scenes of 1 / 2 / 3 classes (%) | all scenes | precision | recall |\n|---|---|---|---|---|")
report("the captioner alone", captioner)
for top in (4, 5, 6):
    within = np.mean([set(truth) <= set(np.argsort(-logit)[:top]) for truth, logit in zip(truths, logits)])
    print(f"| (true set within the captioner's top {top}: {100 * within:.1f}%) | | | | |")
report("error alone, top 4, 32 draws", choose(4, 2, 1e9))
report("error alone, top 4, 32 draws, timesteps 200-700", choose(4, 2, 1e9, 200, 700))
for top in (4, 5, 6):
    for every in (4, 2, 1):
        for weight in (100, 200, 300, 500, 1000):
            report(f"both, weight {weight}, top {top}, {len(timesteps) // every} draws", choose(top, every, weight))
for rerank in (30, 100, 300):
    report(f"both, weight 100, top 4, 16 draws, classes re-ranked by one-class errors x {rerank}", choose(4, 4, 100, rerank=rerank))
for top in (4, 5):
    for every in (4, 2, 1):
        for weight in (100, 200, 300):
            report(f"both, weight {weight}, top {top}, {len(timesteps) // every} draws, timesteps 0-700", choose(top, every, weight, 0, 700))
        for weight in (30, 40, 50, 60, 80, 100, 200):
            report(f"both, relative errors, weight {weight}, top {top}, {len(timesteps) // every} draws, timesteps 0-700",
                   choose(top, every, weight, 0, 700, relative=True))
