"""Segmenting real images with a grounding module: one denoiser step on a noised real latent, for every
family; exact-mask quality on the world when the right class is named; conversions and bad input."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synthseg import GroundingConfig, GroundingModule, SynthsegError
from synthseg.segment import AttentionSegmenter, GroundingSegmenter, prompts_for, segment_images
from synthseg.tiny import tiny_flux_pipeline, tiny_pipeline, tiny_sd3_pipeline, tiny_sdxl_pipeline

T5 = Path(__file__).parent / "fixtures" / "t5-tiny.model"
FAMILIES = {"sd": lambda: tiny_pipeline(), "sdxl": lambda: tiny_sdxl_pipeline(), "sd3": lambda: tiny_sd3_pipeline(T5),
            "flux": lambda: tiny_flux_pipeline(T5)}


def photo(size=(40, 24), mode="RGB"):
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_segments_a_real_image(family):
    pipe = FAMILIES[family]()
    pipe.set_progress_bar_config(disable=True)
    torch.manual_seed(0)
    module = GroundingModule(GroundingConfig.for_pipeline(pipe, fuse_dim=16, mask_dim=16, hidden_dim=32, num_heads=4, ffn_dim=64,
                                                          token_patch=2, cross_attention=True, attention_pooling=True)).eval()
    size = 32 if family != "flux" else 16
    image = photo((size, size))
    first = segment_images(pipe, module, [image, image], ["dog", "cat", "bus"], noise_draws=2)
    assert len(first) == 2
    for result in first:
        assert result.probs.shape == (3, size, size) and result.labels.shape == (size, size) and result.labels.dtype == np.uint8
        assert 0 <= result.probs.min() and result.probs.max() <= 1 and set(np.unique(result.labels)) <= {0, 1, 2, 3}
    again = segment_images(pipe, module, [image], ["dog", "cat", "bus"], noise_draws=2)
    torch.testing.assert_close(again[0].probs, first[0].probs)  # seeded noise: the same image gives the same masks
    batched = segment_images(pipe, module, [image, image], ["dog", "cat", "bus"], noise_draws=2, batch_size=2)  # one denoiser call
    for one, both in zip(first, batched):
        torch.testing.assert_close(both.probs, one.probs, atol=1e-4, rtol=1e-4)
    other = segment_images(pipe, module, [image], ["dog", "cat", "bus"], noise_draws=2, seed=1)
    assert not torch.equal(other[0].probs, first[0].probs)
    top = segment_images(pipe, module, [image], ["dog", "cat", "bus"], seed=2**63 - 1)  # its noise seed is folded into torch's range
    assert not torch.equal(top[0].probs, first[0].probs)
    baseline = AttentionSegmenter(pipe, ["dog", "cat", "bus"], refine=0).segment(image)  # DAAM on the same noised latents, unrefined
    assert baseline.probs.shape == (3, size, size) and baseline.probs.min() >= 0
    torch.testing.assert_close(baseline.probs.flatten(1).max(1).values, torch.ones(3))  # DAAM scales each class to a max of 1


def test_a_segmenter_encodes_its_prompts_once_and_records_each_input_size_once():
    """Many images cost one text encoding and one recorded pipeline call per size, not one per image."""
    pipe = tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    module = GroundingModule(GroundingConfig.for_pipeline(pipe, fuse_dim=16, mask_dim=16, hidden_dim=32, num_heads=4, ffn_dim=64,
                                                          token_patch=2)).eval()
    encoded, called = [], []
    pipe.text_encoder.register_forward_hook(lambda *_: encoded.append(1))
    pipe.unet.register_forward_pre_hook(lambda *_: called.append(1))
    segmenter = GroundingSegmenter(pipe, module, ["dog", "cat"])
    before = len(encoded)
    images = [photo((32, 32)), photo((32, 32)), photo((24, 16)), photo((32, 32))]
    results = [segmenter.segment(image, i) for i, image in enumerate(images)]
    sizes = 2  # 32x32 and 24x16
    assert len(encoded) == before + sizes  # per size, the recorded call's empty prompts; none per image
    assert len(called) == sizes + len(images)  # per size, the recorded call (stopped at the UNet); per image, one step
    torch.testing.assert_close(results[0].probs, segment_images(pipe, module, images[:1], ["dog", "cat"])[0].probs)
    assert np.array_equal(segmenter.predict(images[1]), segmenter.segment(images[1], 0).labels.astype(np.int64))
    assert segmenter.class_names == ("background", "dog", "cat")
    called.clear()
    batched = segment_images(pipe, module, images, ["dog", "cat"], batch_size=3)  # consecutive images of one size share a call
    assert len(called) == 3 + 3  # [0, 1], [2] (24x16), [3]: three recorded calls (one per size and batch) and three steps
    for one, other in zip(results, batched):
        torch.testing.assert_close(other.probs, one.probs, atol=1e-4, rtol=1e-4)
    with pytest.raises(SynthsegError, match="one input size"):
        segmenter.segment_batch(images[1:3], [1, 2])
    with pytest.raises(SynthsegError, match="batch_size"):
        segment_images(pipe, module, images, ["dog"], batch_size=0)


@pytest.mark.slow
def test_the_world_module_segments_rendered_scenes_given_their_class():
    """The world module, trained only on generated images, on rendered scenes with exact masks."""
    from synthseg.pipeline import load_pipeline
    from synthseg.world import WORLD_CLASSES, render_scene, scene_seed

    pipe, module = load_pipeline("world"), GroundingModule.from_pretrained("world").eval()
    ious = []
    for i, name in enumerate(["circle", "star", "heart", "hourglass"]):  # heart and hourglass are unseen classes
        scene = render_scene(scene_seed(i, held_out=True), [name])
        (result,) = segment_images(pipe, module, [Image.fromarray(scene.image)], [name])
        truth = scene.semantic() == WORLD_CLASSES.index(name) + 1
        ious.append(((result.labels == 1) & truth).sum() / ((result.labels == 1) | truth).sum())
    assert min(ious) > 0.8, ious
    # 62x56 pads to 64x56: a 14-row latent, which the UNet's downsamplings round up to 7 and 4 rows
    scene = render_scene(scene_seed(0, held_out=True), ["circle"])
    with pytest.warns(UserWarning, match="padded to 64x56"):
        (result,) = segment_images(pipe, module, [Image.fromarray(scene.image[:56, :62])], ["circle"])
    truth = scene.semantic()[:56, :62] == WORLD_CLASSES.index("circle") + 1
    assert result.labels.shape == (56, 62) and ((result.labels == 1) & truth).sum() / ((result.labels == 1) | truth).sum() > 0.8


def test_odd_sizes_are_padded_and_cropped_back_and_modes_converted_with_a_warning():
    pipe = tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    module = GroundingModule(GroundingConfig.for_pipeline(pipe, fuse_dim=16, mask_dim=16, hidden_dim=32, num_heads=4, ffn_dim=64,
                                                          token_patch=2)).eval()
    sixteen = Image.fromarray(np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60)
    assert sixteen.mode == "I;16"
    cases = [(photo((30, 21)), "padded to 32x24"), (photo((32, 32), "L"), "is L; converted to RGB"),
             (photo((32, 32), "RGBA"), "alpha dropped"), (sixteen, "16-bit; scaled to 8-bit")]
    for image, message in cases:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            (result,) = segment_images(pipe, module, [image], ["dog"])
        assert any(message in str(w.message) for w in caught), [str(w.message) for w in caught]
        assert result.labels.shape == (image.height, image.width)


def test_bad_class_lists_are_refused():
    pipe = tiny_pipeline()
    module = GroundingModule(GroundingConfig.for_pipeline(pipe, fuse_dim=16, mask_dim=16, hidden_dim=32, num_heads=4, ffn_dim=64,
                                                          token_patch=2)).eval()
    with pytest.raises(SynthsegError, match="no class names"):
        segment_images(pipe, module, [photo()], [])
    with pytest.raises(SynthsegError, match="does not fit in a prompt of the text encoder's 77 tokens"):
        segment_images(pipe, module, [photo()], ["dog " * 80])
    groups = prompts_for(pipe, [f"class{i}" for i in range(40)], "a photograph of {}", one_per_class=False)
    assert len(groups) > 1 and sum(groups, []) == [f"class{i}" for i in range(40)]  # chunked within the 77 tokens
    assert prompts_for(pipe, ["dog", "cat"], "a photograph of {}", one_per_class=True) == [["dog"], ["cat"]]


def test_segment_command_writes_palette_labels_overlays_and_coco_on_the_tiny_pipeline(tmp_path, pipe_dir, grounding):
    """`synthseg segment` with a pipeline folder and a module folder: every output opens in standard tools."""
    from pycocotools.coco import COCO
    from typer.testing import CliRunner

    from synthseg.cli import app

    grounding.save_pretrained(tmp_path / "module")
    paths = []
    for name, image in [("a.png", photo((32, 32))), ("b.jpg", photo((30, 20))), ("grey.png", photo((32, 32), "L"))]:
        image.save(tmp_path / name)
        paths.append(str(tmp_path / name))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["segment", *paths, "--classes", "dog,cat", "--out", str(out), "--model", str(pipe_dir),
                                      "--grounding", str(tmp_path / "module"), "--threshold", "0.3", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    assert "grey.png is L; converted to RGB" in result.output and "padded to 32x24" in result.output
    coco = COCO(str(out / "annotations.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["dog", "cat"]
    for entry in coco.dataset["images"]:
        labels = Image.open(out / entry["label_file_name"])
        assert labels.mode == "P" and labels.size == (entry["width"], entry["height"]) and Path(entry["file_name"]).is_file()
        assert Image.open(out / "overlays" / Path(entry["label_file_name"]).name).size == labels.size
        for annotation in coco.loadAnns(coco.getAnnIds(imgIds=entry["id"])):  # each instance lies in its class's region
            mask = coco.annToMask(annotation).astype(bool)
            assert (np.asarray(labels)[mask] == annotation["category_id"]).all() and 0 <= annotation["score"] <= 1


def same_files(out, straight, annotations):
    assert (out / "annotations.json").read_text() == annotations.replace(str(straight), str(out))
    for sub in ("labels", "overlays", "records"):
        assert [(p.name, p.read_bytes()) for p in sorted((out / sub).iterdir())] == \
               [(p.name, p.read_bytes()) for p in sorted((straight / sub).iterdir())], sub


def test_segment_command_takes_folders_resumes_a_killed_run_and_refuses_another_job(tmp_path, pipe_dir, grounding, monkeypatch):
    """A folder is its image files, sorted; a run killed after some records reruns only the rest, into the same
    files a straight run writes; a rerun that asks another thing of the same --out is refused."""
    from typer.testing import CliRunner

    from synthseg import segment
    from synthseg.cli import app

    grounding.save_pretrained(tmp_path / "module")
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, size in enumerate([(32, 32), (32, 32), (24, 16), (32, 32), (32, 32)]):  # batches of 2: [0, 1], [2], [3, 4]
        photo(size).rotate(90 * i).save(photos / f"p{i}.png")
    (photos / "notes.txt").write_text("not an image")
    base = ["segment", "--classes", "dog,cat", "--model", str(pipe_dir), "--grounding", str(tmp_path / "module"), "--batch-size", "2"]
    runner = CliRunner()
    straight = runner.invoke(app, [*base, str(photos), "--out", str(tmp_path / "straight")])
    assert straight.exit_code == 0 and ": 5 images" in " ".join(straight.output.split()), straight.output
    done = (tmp_path / "straight" / "annotations.json").read_text()
    assert [Path(e["file_name"]).name for e in json.loads(done)["images"]] == ["p0.png", "p1.png", "p2.png", "p3.png", "p4.png"]
    annotations = json.loads(done)["annotations"]  # detectron2's rules: unique ids, each on an image
    assert len(annotations) > 5 and [a["id"] for a in annotations] == list(range(1, len(annotations) + 1))
    assert sorted({a["image_id"] for a in annotations}) == [1, 2, 3, 4, 5]

    calls, real = [], segment.GroundingSegmenter.segment_batch

    def killed_after_two(self, images, indices):
        calls.append(list(indices))
        if sum(map(len, calls)) > 2:
            raise RuntimeError("killed")  # as a kill: no more records written
        return real(self, images, indices)

    monkeypatch.setattr(segment.GroundingSegmenter, "segment_batch", killed_after_two)
    out = tmp_path / "resumed"
    assert runner.invoke(app, [*base, str(photos), "--out", str(out)]).exit_code != 0
    assert len(list((out / "records").glob("*.json"))) == 2 and not (out / "annotations.json").exists()
    monkeypatch.setattr(segment.GroundingSegmenter, "segment_batch", lambda self, images, indices: calls.append(list(indices)) or real(self, images, indices))
    calls.clear()
    assert runner.invoke(app, [*base, str(photos), "--out", str(out)]).exit_code == 0
    assert calls == [[2], [3, 4]]  # [0, 1] was done
    same_files(out, tmp_path / "straight", done)
    (out / "records" / "p4.json").unlink()  # killed between the two records of a batch
    calls.clear()
    assert runner.invoke(app, [*base, str(photos), "--out", str(out)]).exit_code == 0
    assert calls == [[3, 4]]  # redone whole, as composed, so its float rounding is the same
    same_files(out, tmp_path / "straight", done)
    refused = runner.invoke(app, [*base, str(photos), "--out", str(out), "--threshold", "0.6"])
    assert refused.exit_code == 1 and "another segment job (settings.threshold differ)" in " ".join(refused.output.split()), refused.output
    refused = runner.invoke(app, [*base, str(photos / "p0.png"), "--out", str(out)])
    assert refused.exit_code == 1 and "(images differ)" in " ".join(refused.output.split()), refused.output


def test_a_photo_s_exif_orientation_turns_it_upright_as_detectron2_reads_it(tmp_path, pipe_dir, grounding):
    """A camera JPEG stored 40x24 with orientation 6 shows (and detectron2 loads) 24x40: the labels and the COCO
    sizes are the upright ones, and the image is segmented upright."""
    from typer.testing import CliRunner

    from synthseg.cli import app
    from synthseg.readers import read_image, upright_size

    grounding.save_pretrained(tmp_path / "module")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    photo((40, 24)).save(tmp_path / "camera.jpg", exif=exif.tobytes())
    assert upright_size(tmp_path / "camera.jpg") == (40, 24) and read_image(tmp_path / "camera.jpg").size == (24, 40)
    result = CliRunner().invoke(app, ["segment", str(tmp_path / "camera.jpg"), "--classes", "dog", "--model", str(pipe_dir),
                                      "--grounding", str(tmp_path / "module"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    (entry,) = json.loads((tmp_path / "out" / "annotations.json").read_text())["images"]
    assert (entry["width"], entry["height"]) == (24, 40) and Image.open(tmp_path / "out" / entry["label_file_name"]).size == (24, 40)


def test_segment_command_noises_to_the_modules_own_capture_timestep_unless_told(tmp_path, pipe_dir, grounding, monkeypatch):
    """A module trained on features at t=300 reads images noised to t=300 by default (its recipe.json)."""
    import json

    from typer.testing import CliRunner

    from synthseg import segment
    from synthseg.cli import app

    grounding.save_pretrained(tmp_path / "module")
    (tmp_path / "module" / "recipe.json").write_text(json.dumps({"triplets": {"capture_timestep": 300}}))
    photo((32, 32)).save(tmp_path / "a.png")
    used, original = [], segment.segment_to_folder
    monkeypatch.setattr(segment, "segment_to_folder", lambda *a, **k: used.append(k["timestep"]) or original(*a, **k))
    base = ["segment", str(tmp_path / "a.png"), "--classes", "dog", "--model", str(pipe_dir), "--grounding", str(tmp_path / "module")]
    for extra, out in [([], "one"), (["--capture-timestep", "40"], "two")]:
        result = CliRunner().invoke(app, [*base, *extra, "--out", str(tmp_path / out)])
        assert result.exit_code == 0, result.output
    assert used == [300, 40]


@pytest.mark.parametrize("args, message", [
    (["--classes", " , "], "--classes names no class"),
    (["--classes", "circle", "--capture-timestep", "1000"], "capture timestep must be in 0..999"),
    (["--classes", "circle", "--noise-draws", "0"], "noise_draws must be at least 1"),
    (["--classes", "circle", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["--classes", "circle", "--seed", "-1"], "seed must be an integer from 0 to 2**63 - 1, got -1"),
    (["--classes", "circle", "--model", "/nonexistent"], "no pipeline folder at /nonexistent"),
    (["--classes", "circle", "--grounding", "world-dit"], "grounding module expects feature channels"),  # on the UNet world
])
def test_segment_command_refuses_bad_input_in_one_line(tmp_path, args, message):
    from typer.testing import CliRunner

    from synthseg.cli import app

    photo((32, 32)).save(tmp_path / "a.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    runner, out = CliRunner(), tmp_path / "out"
    for images, expected in [([tmp_path / "a.png"], message), ([tmp_path / "a.png", tmp_path / "corrupt.png"], "unreadable image"),
                             ([tmp_path / "missing.png"], "missing.png: no such file or folder"),
                             ([tmp_path / "empty"], "a folder with no image files")]:
        (tmp_path / "empty").mkdir(exist_ok=True)
        result = runner.invoke(app, ["segment", *map(str, images), "--out", str(out), *(args if expected == message else ["--classes", "circle"])])
        lines = result.output.strip().splitlines()
        assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.output
        assert not out.exists()


@pytest.mark.slow
def test_segment_command_on_the_bundled_world_matches_exact_masks(tmp_path):
    """With no model arguments: the bundled world model and module, on rendered scenes with exact masks."""
    from typer.testing import CliRunner

    from synthseg.cli import app
    from synthseg.world import WORLD_CLASSES, render_scene, scene_seed

    scenes = [render_scene(scene_seed(i, held_out=True), [name]) for i, name in enumerate(["circle", "heart"])]
    for i, scene in enumerate(scenes):
        Image.fromarray(scene.image).save(tmp_path / f"scene{i}.png")
    result = CliRunner().invoke(app, ["segment", str(tmp_path / "scene0.png"), "--classes", "circle", "--out", str(tmp_path / "circle")])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["segment", str(tmp_path / "scene1.png"), "--classes", "heart", "--out", str(tmp_path / "heart")])
    assert result.exit_code == 0, result.output
    for scene, (out, name) in zip(scenes, [(tmp_path / "circle", "circle"), (tmp_path / "heart", "heart")]):
        labels = np.asarray(Image.open(next((out / "labels").iterdir())))
        truth = scene.semantic() == WORLD_CLASSES.index(name) + 1
        assert ((labels == 1) & truth).sum() / ((labels == 1) | truth).sum() > 0.8
