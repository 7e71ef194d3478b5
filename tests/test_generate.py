import logging.handlers

import numpy as np
import pytest
import torch

from synthseg import CaptureStep, SynthsegError, generate_grounded, load_pipeline

PROMPTS = ["a photograph of a dog and a cat", "a photograph of a dining table"]
CLASSES = [["dog", "cat"], ["dining table"]]


def test_outputs_and_determinism(pipe, grounding):
    first = generate_grounded(pipe, grounding, PROMPTS, CLASSES, [3, 4], num_inference_steps=4, return_features=True)
    again = generate_grounded(pipe, grounding, PROMPTS, CLASSES, [3, 4], num_inference_steps=4)
    other = generate_grounded(pipe, grounding, PROMPTS, CLASSES, [5, 4], num_inference_steps=4)
    assert [im.size for im in first.images] == [(32, 32), (32, 32)]
    assert [tuple(m.shape) for m in first.masks] == [(2, 32, 32), (1, 32, 32)]
    assert all(0 <= m.min() and m.max() <= 1 for m in first.masks)
    for a, b in zip(first.images, again.images):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(first.masks, again.masks):
        assert torch.equal(a, b)
    assert not np.array_equal(np.asarray(first.images[0]), np.asarray(other.images[0]))
    assert np.array_equal(np.asarray(first.images[1]), np.asarray(other.images[1]))
    assert first.features is not None and again.features is None
    assert first.features.timestep == first.step.timestep == 1


def test_an_image_does_not_depend_on_its_batch(pipe, grounding):
    batch = generate_grounded(pipe, grounding, PROMPTS, CLASSES, [3, 4], num_inference_steps=4)
    alone = generate_grounded(pipe, grounding, PROMPTS[1:], CLASSES[1:], [4], num_inference_steps=4)
    diff = np.abs(np.asarray(batch.images[1], dtype=int) - np.asarray(alone.images[0], dtype=int))
    assert diff.max() <= 1
    torch.testing.assert_close(batch.masks[1], alone.masks[0], atol=1e-4, rtol=1e-3)


def test_capture_step_is_honoured(pipe, grounding):
    last = generate_grounded(pipe, grounding, PROMPTS[:1], CLASSES[:1], [0], num_inference_steps=4)
    early = generate_grounded(pipe, grounding, PROMPTS[:1], CLASSES[:1], [0], num_inference_steps=4, capture_step=CaptureStep(index=0))
    assert early.step.index == 0 and last.step.index == 3
    assert np.array_equal(np.asarray(last.images[0]), np.asarray(early.images[0]))
    assert not torch.allclose(last.masks[0], early.masks[0])


def test_bad_class_fails_before_any_generation(pipe, grounding):
    calls = []
    handle = pipe.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(SynthsegError, match="class 'horse' does not occur in prompt 'a photograph of a dining table'"):
            generate_grounded(pipe, grounding, PROMPTS, [["dog"], ["horse"]], [0, 1], num_inference_steps=2)
        with pytest.raises(SynthsegError, match="2 prompts but 1 seeds"):
            generate_grounded(pipe, grounding, PROMPTS, CLASSES, [0], num_inference_steps=2)
        with pytest.raises(SynthsegError, match="no prompts to generate"):  # an IndexError, before
            generate_grounded(pipe, grounding, [], [], [], num_inference_steps=2)
    finally:
        handle.remove()
    assert calls == []


def test_save_writes_images_masks_and_index(pipe, grounding, tmp_path):
    result = generate_grounded(pipe, grounding, PROMPTS, CLASSES, [0, 1], num_inference_steps=2)
    result.save(tmp_path)
    lines = (tmp_path / "generation.jsonl").read_text().splitlines()
    assert len(lines) == 2 and '"dining table": "masks/00001_dining_table.png"' in lines[1]
    from PIL import Image

    mask = np.asarray(Image.open(tmp_path / "masks/00000_cat.png"))
    assert mask.shape == (32, 32) and mask.dtype == np.uint8
    assert np.abs(mask / 255 - result.masks[0][1].numpy()).max() <= 0.5 / 255 + 1e-6


def test_load_pipeline_from_a_folder_and_offline_errors(pipe_dir, tmp_path):
    loaded = load_pipeline(pipe_dir)
    assert type(loaded).__name__ == "StableDiffusionPipeline"
    assert loaded.tokenizer("a dog").input_ids == [49406, 320, 1929, 49407]
    printed = logging.handlers.BufferingHandler(capacity=100)  # what diffusers' loader would print
    logging.getLogger("diffusers.pipelines.pipeline_utils").addHandler(printed)
    try:
        with pytest.raises(SynthsegError) as error:
            load_pipeline("runwayml/stable-diffusion-v1-5")
    finally:
        logging.getLogger("diffusers.pipelines.pipeline_utils").removeHandler(printed)
    message = str(error.value)
    assert "runwayml/stable-diffusion-v1-5" in message and "--local-dir" in message and "\n" not in message
    assert printed.buffer == []  # no hub-unreachable warning above the one-line error
    (tmp_path / "empty").mkdir()
    with pytest.raises(SynthsegError, match="is not a diffusers pipeline folder: it has no model_index.json"):
        load_pipeline(tmp_path / "empty")
