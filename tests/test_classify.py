"""The text-to-image model as a zero-shot classifier: the training target and noising of every schedule, the paired
denoising errors, and the choice among the captioner's lists (the captioner's own at weight 0, the least relative
error at a large weight; the right class of rendered world scenes, unseen ones included)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler
from PIL import Image

from synthseg import SynthsegError
from synthseg.captioner import CaptionerConfig, ImplicitCaptioner, Recogniser
from synthseg.capture import denoiser_of
from synthseg.classify import DiffusionClassifier, denoising_errors
from synthseg.latents import encode_images, noise_latents, pixel_tensor, predict_noised, prediction_target, recorded_call, schedule_point
from synthseg.prompts import describe
from synthseg.segment import GroundingSegmenter
from synthseg.text import text_inputs
from synthseg.tiny import tiny_flux_pipeline, tiny_sd3_pipeline, tiny_sdxl_pipeline

T5 = Path(__file__).parent / "fixtures" / "t5-tiny.model"
NAMES = ["dog", "cat", "bus", "sheep"]


def per_class_captioner(pipe, seed=0):
    torch.manual_seed(seed)
    return ImplicitCaptioner(CaptionerConfig.for_pipeline(pipe, width=8, hidden_dim=8, objective="classes", pooling="max")).eval()


def latents_of(pipe, count, size=32):
    rng = np.random.default_rng(0)
    return encode_images(pipe, pixel_tensor(rng.integers(0, 255, (count, size, size, 3), dtype=np.uint8)))


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_noising_and_target_are_what_a_ddpm_scheduler_trains_on(pipe, kind, monkeypatch):
    scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type=kind)
    monkeypatch.setattr(pipe, "scheduler", scheduler)
    x0, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = torch.tensor([700, 700])
    noisy, value = noise_latents(pipe, x0, 700, torch.Generator().manual_seed(5))
    torch.testing.assert_close(noisy, scheduler.add_noise(x0, torch.randn(x0.shape, generator=torch.Generator().manual_seed(5)), t))
    assert value == 700
    expected = {"epsilon": noise, "v_prediction": scheduler.get_velocity(x0, noise, t), "sample": x0}[kind]
    torch.testing.assert_close(prediction_target(pipe, x0, noise, 700), expected)


def test_noising_and_target_on_a_flow_schedule_are_what_flux_trains_on():
    pipe = tiny_flux_pipeline(T5)
    x0, noise = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    signal, scale, value = schedule_point(pipe, 250)
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler) and value == 0.25  # FLUX's transformer takes sigma
    torch.testing.assert_close(signal * x0 + scale * noise, pipe.scheduler.scale_noise(x0, torch.tensor([250.0]), noise), atol=1e-2, rtol=0)
    torch.testing.assert_close(prediction_target(pipe, x0, noise, 250), noise - x0)  # the flow velocity


def test_denoising_errors_are_the_denoisers_paired_squared_errors(pipe):
    """Each (prompt, draw) error is the MSE of the denoiser's own output against the target, with one noise and
    timestep per draw shared by every prompt; the rows' batching does not change them."""
    latent = latents_of(pipe, 1)
    prompts = ["a photograph of a dog", "a photograph of a cat", "a photograph of a dog"]
    errors = denoising_errors(pipe, latent, prompts, 4, torch.Generator().manual_seed(1))
    assert errors.shape == (3, 4) and (errors > 0).all()
    torch.testing.assert_close(errors[0], errors[2])  # the same prompt, the same draws
    assert not torch.equal(errors[0], errors[1])
    torch.testing.assert_close(denoising_errors(pipe, latent, prompts, 4, torch.Generator().manual_seed(1), batch_size=5), errors)
    with pytest.raises(SynthsegError, match="highest timestep"):
        denoising_errors(pipe, latent, prompts, 4, torch.Generator(), highest=1001)
    generator = torch.Generator().manual_seed(1)  # draw 1 by hand: timestep 262 of stratified (0.5 + d) / 4 * 700
    noise = torch.randn((4, *latent.shape[1:]), generator=generator)[1:2]
    signal, scale, _ = schedule_point(pipe, 262)
    embeds = pipe.encode_prompt([prompts[1]], "cpu", 1, False)[0]
    with torch.no_grad():
        out = denoiser_of(pipe)(signal * latent + scale * noise, torch.tensor([262.0]), encoder_hidden_states=embeds).sample
    torch.testing.assert_close(errors[1, 1], ((out - prediction_target(pipe, latent, noise, 262)) ** 2).mean(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_every_family_gives_denoising_errors(family):
    pipe = {"sdxl": tiny_sdxl_pipeline, "sd3": lambda: tiny_sd3_pipeline(T5), "flux": lambda: tiny_flux_pipeline(T5)}[family]()
    pipe.set_progress_bar_config(disable=True)
    latent = latents_of(pipe, 1, size=16 if family == "flux" else 32)
    errors = denoising_errors(pipe, latent, ["a photograph of a dog", "a photograph of a cat"], 3, torch.Generator().manual_seed(0))
    assert errors.shape == (2, 3) and torch.isfinite(errors).all() and (errors > 0).all() and not torch.equal(errors[0], errors[1])
    height, width = (side * pipe.vae_scale_factor for side in latent.shape[2:])
    texts = text_inputs(pipe, ["a photograph of a dog"] * 2)
    prediction = predict_noised(pipe, recorded_call(pipe, 2, height, width), latent.expand(2, -1, -1, -1), torch.tensor([5.0, 900.0]), texts)
    assert prediction.shape == (2, *latent.shape[1:])  # in the latent's layout (FLUX's packing undone)


def test_at_weight_zero_the_classifier_chooses_what_the_captioner_names(pipe):
    """The captioner's most probable list of up to max_classes of its top classes is its own naming rule: every
    class above 1/2 among its best, at least the best."""
    latents = latents_of(pipe, 6)
    for bias in (-0.3, 0.0, 0.3):  # few, some and many classes above 1/2
        captioner = per_class_captioner(pipe)
        captioner.logit_bias.data.fill_(bias)
        recogniser = Recogniser(pipe, captioner, NAMES, max_classes=3)
        classifier = DiffusionClassifier(pipe, recogniser, "a photograph of {}", draws=2, top=4, weight=0.0)
        assert classifier(latents, list(range(6))) == recogniser(latents)


def test_at_a_large_weight_the_classifier_chooses_the_least_relative_denoising_error(pipe):
    latents = latents_of(pipe, 2)
    recogniser = Recogniser(pipe, per_class_captioner(pipe), NAMES, max_classes=2)
    classifier = DiffusionClassifier(pipe, recogniser, "a photograph of {}", draws=3, top=3, weight=1e9, seed=4)
    found = classifier(latents, [0, 7])
    for latent, index, names in zip(latents, [0, 7], found):
        lists = classifier.candidates(recogniser.class_logits(latent[None])[0])
        assert len(lists) == 3 + 3  # 1 or 2 of the top 3
        prompts = ["a photograph of " + describe([NAMES[i] for i in c]) for c in lists]
        errors = denoising_errors(pipe, latent[None], prompts, 3, torch.Generator().manual_seed(4 * 1_000_003 + index))
        relative = (errors / errors.mean(0)).mean(1)  # each draw's errors over their mean across the lists
        assert names == [NAMES[i] for i in lists[int(relative.argmin())]]


def test_bad_classifier_settings_are_refused(pipe, grounding):
    captioner = per_class_captioner(pipe)
    recogniser = Recogniser(pipe, captioner, NAMES)
    for options, message in [({"draws": 0}, "draws and top"), ({"top": 0}, "draws and top"), ({"weight": -1.0}, "weight")]:
        with pytest.raises(SynthsegError, match=message):
            DiffusionClassifier(pipe, recogniser, "a photograph of {}", **options)
    captions = ImplicitCaptioner(CaptionerConfig.for_pipeline(pipe, width=8, hidden_dim=8)).eval()
    with pytest.raises(SynthsegError, match="per class"):
        DiffusionClassifier(pipe, Recogniser(pipe, captions, NAMES), "a photograph of {}")
    with pytest.raises(SynthsegError, match="classifier_draws"):
        GroundingSegmenter(pipe, grounding, NAMES, captioner=captions, classifier_draws=4)
    with pytest.raises(SynthsegError, match="classifier_draws"):
        GroundingSegmenter(pipe, grounding, NAMES, captioner=captioner, classifier_draws=-1)
    assert GroundingSegmenter(pipe, grounding, NAMES, captioner=captioner).classifier is not None  # on by default with one
    assert GroundingSegmenter(pipe, grounding, NAMES, captioner=captions).classifier is None


@pytest.mark.slow
def test_the_world_model_tells_which_class_a_rendered_scene_holds():
    """Rendered one-object scenes, seen and unseen classes: the world's text-to-image model alone (a large weight)
    names each scene's class among the lists of the captioner's top five."""
    from synthseg.pipeline import load_pipeline
    from synthseg.world import WORLD_CLASSES, render_scene, scene_seed

    pipe = load_pipeline("world")
    names = ["circle", "heart", "star", "arrow"]  # heart and arrow are unseen in the split `world`
    scenes = [render_scene(scene_seed(900 + i, held_out=True), [name]) for i, name in enumerate(names)]
    latents = encode_images(pipe, pixel_tensor(np.stack([s.image for s in scenes])))
    recogniser = Recogniser(pipe, ImplicitCaptioner.from_pretrained("world"), list(WORLD_CLASSES), max_classes=3)
    classifier = DiffusionClassifier(pipe, recogniser, "a photograph of {}", draws=16, top=5, weight=1e6)
    assert classifier(latents, list(range(len(names)))) == [[name] for name in names]


def test_segment_prompts_the_classes_the_classifier_chooses(pipe, grounding):
    captioner = per_class_captioner(pipe, seed=2)
    segmenter = GroundingSegmenter(pipe, grounding, NAMES, captioner=captioner, max_classes=2, classifier_draws=2, classifier_top=3, refine=0)
    image = Image.fromarray(np.random.default_rng(3).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    result = segmenter.segment(image, index=5)
    named = segmenter.classifier(encode_images(pipe, pixel_tensor(np.asarray(image))), [5])[0]
    assert [name for name, probs in zip(NAMES, result.probs) if probs.any()] == named  # the others are never prompted
