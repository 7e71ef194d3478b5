"""Best of N (`synthseg.candidates`): the judge's choice, the candidates' seeds, and grounded generation that keeps
the chosen image with its own masks."""

import numpy as np
import pytest
import torch
from PIL import Image

from synthseg.candidates import best_candidate, candidate_seeds, check_chooser
from synthseg.errors import SynthsegError


def test_best_candidate_keeps_the_image_likeliest_to_hold_exactly_the_classes_and_counts(pipe, make_chooser, make_counter, monkeypatch):
    recogniser = make_chooser(pipe, ["dog", "cat", "bird"])
    images = [Image.new("RGB", (32, 32), c) for c in ("red", "green", "blue")]
    logits = torch.tensor([[4.0, -4.0, -4.0],  # the dog alone: the cat missing
                           [4.0, 4.0, 4.0],  # both, and a bird besides
                           [3.0, 3.0, -3.0]])  # exactly a dog and a cat, if less sure of each than the second
    monkeypatch.setattr(recogniser, "class_logits", lambda latents: logits[: len(latents)])
    assert best_candidate(pipe, recogniser, ["dog", "cat"], images) == 2
    assert best_candidate(pipe, recogniser, ["dog", "cat"], images[:2]) == 1  # a bird too rather than no cat
    assert best_candidate(pipe, recogniser, ["dog"], images) == 0  # the dog alone
    with pytest.raises(SynthsegError, match="the captioner does not know horse"):
        best_candidate(pipe, recogniser, ["horse"], images)
    counter = make_counter(["dog", "cat", "bird"], max_count=2)
    counted = torch.full((3, 3, 3), -5.0)  # (image, class, count): image 0 holds exactly two dogs and a cat, if weakly
    counted[:, :, 0] = -0.1
    counted[0, 0, 2] = counted[0, 1, 1] = -0.1
    counted[1, 0, 1] = counted[1, 1, 1] = -0.1  # image 1: one dog and one cat
    monkeypatch.setattr(counter, "count_log_probs_torch", lambda pixels: counted[: len(pixels)])
    assert counter.log_probability(np.zeros((3, 8, 8, 3), np.uint8), ["dog", "dog", "cat"]).tolist() == pytest.approx([-0.3, -5.2, -10.1])
    assert counter.log_probability(np.zeros((1, 8, 8, 3), np.uint8), ["dog"] * 3 + ["cat"]).tolist() == pytest.approx([-0.3])  # 3 dogs: 2+
    # the counts outweigh the captioner's preference for 2: two dogs and a cat asked, then one of each (a text prompt's)
    assert best_candidate(pipe, recogniser, ["dog", "cat"], images, counter, ["dog", "dog", "cat"]) == 0
    assert best_candidate(pipe, recogniser, ["dog", "cat"], images, counter) == 1
    with pytest.raises(SynthsegError, match="the counter does not know bird"):
        best_candidate(pipe, recogniser, ["dog", "bird"], images, make_counter(["dog", "cat"], max_count=2))


def test_candidate_seeds_start_with_the_item_s_own_and_a_chooser_is_required_for_more():
    seeds = candidate_seeds(11, 4)
    assert seeds[0] == 11 and len(set(seeds)) == 4 and candidate_seeds(11, 2) == seeds[:2] and candidate_seeds(12, 4)[1:] != seeds[1:]
    check_chooser(1, None)  # one candidate needs no captioner
    with pytest.raises(SynthsegError, match="candidates 3 needs an implicit captioner trained per class"):
        check_chooser(3, None)
    with pytest.raises(SynthsegError, match="candidates must be at least 1, got 0"):
        check_chooser(0, None)


def test_a_captioner_that_ranks_captions_cannot_choose(pipe):
    from synthseg.captioner import CaptionerConfig, ImplicitCaptioner, Recogniser

    captions = Recogniser(pipe, ImplicitCaptioner(CaptionerConfig.for_pipeline(pipe, width=8, hidden_dim=8)).eval(), ["dog", "cat"])
    with pytest.raises(SynthsegError, match="needs an implicit captioner trained per class"):
        check_chooser(2, captions)


def test_generate_grounded_keeps_the_chosen_candidate_with_its_own_masks_and_seed(pipe, grounding, make_chooser, monkeypatch):
    """With candidates, each prompt's N images are made in one pass; the kept one is the image, masks and seed
    that generating each candidate alone gives for the candidate `best_candidate` picks."""
    from synthseg.generate import generate_grounded

    recogniser = make_chooser(pipe, ["dog", "cat"])
    # a judge that reads the image (its mean latent), so that the choice differs between candidates
    monkeypatch.setattr(recogniser, "class_logits", lambda latents: 50 * latents.flatten(1).mean(1, keepdim=True).repeat(1, 2))
    prompts, names, seeds = ["a photo of a dog and a cat", "a photo of a cat"], [["dog", "cat"], ["cat"]], [5, 9]
    options = dict(guidance_scale=2.0, num_inference_steps=3)
    chosen = generate_grounded(pipe, grounding, prompts, names, seeds, candidates=3, recogniser=recogniser, return_features=True, **options)
    picked = []
    for i, (prompt, classes, seed) in enumerate(zip(prompts, names, seeds)):
        alone = generate_grounded(pipe, grounding, [prompt] * 3, [classes] * 3, candidate_seeds(seed, 3), return_features=True, **options)
        best = best_candidate(pipe, recogniser, classes, alone.images)
        picked.append(best)
        assert chosen.seeds[i] == alone.seeds[best]
        assert np.abs(np.asarray(chosen.images[i]).astype(int) - np.asarray(alone.images[best]).astype(int)).max() <= 1
        torch.testing.assert_close(chosen.masks[i], alone.masks[best], atol=1e-3, rtol=0)
        for name, block in chosen.features.blocks.items():
            torch.testing.assert_close(block[i], alone.features.blocks[name][best], atol=1e-3, rtol=1e-3)
    assert any(picked), picked  # not only each prompt's own seed
    one = generate_grounded(pipe, grounding, prompts, names, seeds, **options)  # one candidate: each prompt's own seed, no captioner
    assert one.seeds == seeds
    negatives = ["blurry", "dark"]  # a negative prompt per prompt follows its prompt's candidates
    kept = generate_grounded(pipe, grounding, prompts, names, seeds, candidates=2, recogniser=recogniser, negative_prompt=negatives, **options)
    for i, seed in enumerate(kept.seeds):
        alone = generate_grounded(pipe, grounding, prompts[i : i + 1], names[i : i + 1], [seed], negative_prompt=negatives[i : i + 1], **options)
        assert np.abs(np.asarray(kept.images[i]).astype(int) - np.asarray(alone.images[0]).astype(int)).max() <= 1
    with pytest.raises(SynthsegError, match="needs an implicit captioner"):
        generate_grounded(pipe, grounding, prompts, names, seeds, candidates=2, **options)


def test_the_chooser_is_public_api():
    """What `generate_grounded(..., candidates, recogniser)` needs is importable from the package root, lazily."""
    import synthseg
    from synthseg import candidates, captioner

    assert synthseg.best_candidate is candidates.best_candidate and synthseg.candidate_seeds is candidates.candidate_seeds
    assert synthseg.Recogniser is captioner.Recogniser and {"best_candidate", "candidate_seeds", "Recogniser"} <= set(synthseg.__all__)
