import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from synthseg import SynthsegError
from synthseg.config import load_config
from synthseg.dataset import DatasetRecipe, finalize, instances, label_map, make_dataset, plan

PROVENANCE = dict(model="tiny", model_hash=None, grounding_hash="0", versions={})


def recipe(**overrides):
    base = dict(classes="dog,cat,cow", model="tiny", per_class=2, per_pair=1, pairs=[["dog", "cat"]], num_inference_steps=2,
                guidance_scale=2.0, band=0.0, require_all_classes=False, batch_size=3, seed=1)
    return load_config(DatasetRecipe, {**base, **overrides}, "recipe")


def test_label_map_thresholds_and_ignore_band():
    probs = np.array([[[0.9, 0.55, 0.2, 0.45]], [[0.1, 0.3, 0.3, 0.1]]])  # 2 classes, 1x4 image
    assert label_map(probs, [3, 7], band=0.2).tolist() == [[3, 255, 0, 255]]
    assert label_map(probs, [3, 7], band=0.0).tolist() == [[3, 3, 0, 0]]


def test_instances_are_connected_components():
    labels = np.zeros((8, 8), np.uint8)
    labels[0:2, 0:2] = 5
    labels[5:8, 5:8] = 5
    labels[4, 0] = 5  # a single pixel, below min_area
    found = instances(labels, 5, min_area=2)
    assert [m.sum() for m in found] == [9, 4]


def test_plan_is_deterministic_and_counts():
    items = plan(recipe())
    assert len(items) == 2 * 3 + 1
    assert items[-1].classes == ["dog", "cat"] and items[-1].prompt == "a photograph of a dog and a cat"
    assert items == plan(recipe())
    assert len(plan(recipe(pairs=[], per_pair=2))) == 6 + 3 * 2


@pytest.mark.parametrize("overrides", [{}, dict(pairs=[], per_pair=2, spare=0.3), dict(per_pair=0, spare=1.0),
                                       dict(layouts={"max_objects": 3}, spare=0.5)])
def test_planned_count_is_the_plan_s_length_without_drawing_it(overrides):
    r = recipe(**overrides)
    assert r.planned_count == len(plan(r)) > 0


def test_a_plan_too_large_to_hold_is_refused_before_it_is_drawn():
    with pytest.raises(SynthsegError, match="the plan would hold 30,000,000,001 items"):
        recipe(per_class=10**10)


def files(directory):
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_count_guided_rate_is_kept_apart_from_an_unguided_one(tmp_path, monkeypatch):
    """Count guidance adds a decoding and a judge to each guided step: a dry run reads the rate of its own guidance."""
    from types import SimpleNamespace

    from synthseg.plan import record_rate, time_line

    monkeypatch.setenv("SYNTHSEG_CACHE", str(tmp_path))
    pipe = SimpleNamespace(name_or_path="world", device="cpu")
    record_rate("images", pipe, 2.0, 20, 10.0, 10)
    record_rate("images", pipe, 2.0, 20, 25.0, 10, count_guidance=3.0)
    assert "(1 s per item on cpu" in time_line("images", "world", "cpu", 2.0, 20, 10)
    assert "(2.5 s per item on cpu" in time_line("images", "world", "cpu", 2.0, 20, 10, 3.0)
    assert "time: unknown" in time_line("images", "world", "cpu", 2.0, 20, 10, 8.0)


def test_dataset_is_valid_deterministic_resumable_and_shardable(pipe, grounding, tmp_path):
    r = recipe()
    summary = make_dataset(pipe, grounding, r, tmp_path / "a", PROVENANCE)
    assert summary["planned"] == 7 and summary["images"] == 7
    coco = COCO(str(tmp_path / "a" / "annotations.json"))
    data = coco.dataset
    assert data["info"] and data["licenses"] == [] and [c["id"] for c in data["categories"]] == [1, 2, 3]
    assert data["annotations"], "the random module should label some pixels"
    # detectron2's load_coco_json rules
    ids = [a["id"] for a in data["annotations"]]
    assert len(ids) == len(set(ids))
    image_ids = {im["id"] for im in data["images"]}
    for ann in data["annotations"]:
        assert ann["image_id"] in image_ids and ann["iscrowd"] == 0
        assert len(ann["bbox"]) == 4 and ann["bbox"][2] > 0 and ann["bbox"][3] > 0
        assert isinstance(ann["segmentation"]["counts"], str)
    for im in data["images"]:
        assert Image.open(tmp_path / "a" / im["file_name"]).size == (im["width"], im["height"])
    evaluator = COCOeval(coco, coco.loadRes([dict(a, score=1.0) for a in data["annotations"]]), "segm")
    evaluator.evaluate(), evaluator.accumulate(), evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)
    mask = Image.open(tmp_path / "a" / "masks" / "000000.png")
    assert mask.mode == "P" and set(np.unique(np.array(mask))) <= {0, 1, 2, 3, 255}
    meta = [json.loads(line) for line in (tmp_path / "a" / "metadata.jsonl").read_text().splitlines()]
    assert meta[0]["file_name"] == "images/000000.png" and meta[0]["mask_file_name"] == "masks/000000.png"
    assert {"prompt", "seed", "classes", "scores", "model", "grounding_hash", "versions"} <= set(meta[0])

    # Determinism: a second run writes byte-identical files.
    make_dataset(pipe, grounding, r, tmp_path / "b", PROVENANCE)
    assert files(tmp_path / "a") == files(tmp_path / "b")

    # Resumption: as if killed after some records, with a torn temporary file left behind.
    shutil.rmtree(tmp_path / "b")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    for name in ("annotations.json", "metadata.jsonl", "README.md", "records/000004.json", "records/000005.json", "records/000006.json"):
        (tmp_path / "b" / name).unlink()
    (tmp_path / "b" / "images" / "000005.png").write_bytes(b"torn")
    (tmp_path / "b" / "records" / ".000006.json.tmp123").write_text("{")
    make_dataset(pipe, grounding, r, tmp_path / "b", PROVENANCE)
    assert files(tmp_path / "a") == files(tmp_path / "b")

    # Shards: two jobs into one folder give the single-process dataset.
    assert make_dataset(pipe, grounding, r, tmp_path / "c", PROVENANCE, num_shards=2, shard_index=1) is None
    make_dataset(pipe, grounding, r, tmp_path / "c", PROVENANCE, num_shards=2, shard_index=0)
    assert files(tmp_path / "a") == files(tmp_path / "c")

    # Hugging Face datasets opens it as an imagefolder with image and mask columns.
    from datasets import load_dataset

    shutil.rmtree(tmp_path / "a" / "records")
    loaded = load_dataset("imagefolder", data_dir=str(tmp_path / "a"), split="train")
    assert len(loaded) == 7 and {"image", "mask"} <= set(loaded.column_names)
    assert np.array(loaded[0]["mask"]).shape == (32, 32)


@pytest.mark.slow
def test_spare_items_stand_in_for_dropped_ones(pipe, grounding, tmp_path):
    r = recipe(spare=0.5)  # 2 per class -> 3 planned, 1 per pair -> 2
    items = plan(r)
    assert [len(i.classes) for i in items] == [1] * 9 + [2] * 2 and [i.classes[0] for i in items[:9:3]] == ["dog", "cat", "cow"]
    summary = make_dataset(pipe, grounding, r, tmp_path, PROVENANCE)
    assert (summary["planned"], summary["images"], summary["unused"], summary["short"], summary["dropped"]) == (11, 7, 4, 0, {})

    def kept():
        return [json.loads(line)["file_name"][7:13] for line in (tmp_path / "metadata.jsonl").read_text().splitlines()]

    assert kept() == ["000000", "000001", "000003", "000004", "000006", "000007", "000009"]

    def drop(*indices):
        for index in indices:
            path = tmp_path / "records" / f"{index:06d}.json"
            path.write_text(json.dumps(dict(json.loads(path.read_text()), dropped="dropped in the test")))

    drop(0, 9)  # a dog image and the pair's image: their spares take their places
    summary = finalize(tmp_path, r)
    assert kept() == ["000001", "000002", "000003", "000004", "000006", "000007", "000010"]
    assert (summary["images"], summary["unused"], summary["short"]) == (7, 2, 0)
    drop(3, 4)  # two of cat's three: one short
    summary = finalize(tmp_path, r)
    assert (summary["images"], summary["unused"], summary["short"]) == (6, 1, 1) and "000005" in kept()
    assert "short of the asked number: 1" in (tmp_path / "README.md").read_text()
    with pytest.raises(SynthsegError, match="spare must be 0 or more"):
        recipe(spare=-0.5)


def test_bad_inputs():
    with pytest.raises(SynthsegError, match="unknown class 'dgo'; did you mean 'dog'"):
        recipe(classes="dgo,cat")
    with pytest.raises(SynthsegError, match="a pair names two different classes"):
        recipe(pairs=[["dog", "dog"]])
    with pytest.raises(SynthsegError, match="pair class 'horse'; known: dog, cat, cow"):
        recipe(pairs=[["dog", "horse"]])
    with pytest.raises(SynthsegError, match="band must lie in"):
        recipe(band=1.5)
    with pytest.raises(SynthsegError, match="two-class one when per_pair > 0"):
        recipe(templates=["a photo of a {}"])
    with pytest.raises(SynthsegError, match="per_class must be 0 or more, got -1"):
        recipe(per_class=-1)
    with pytest.raises(SynthsegError, match="per_pair must be 0 or more, got -3"):
        recipe(per_pair=-3)
    with pytest.raises(SynthsegError, match="the plan has no images"):
        recipe(per_class=0, per_pair=0)
    with pytest.raises(SynthsegError, match="num_inference_steps must be at least 1, got 0"):
        recipe(num_inference_steps=0)


def test_a_model_s_own_defaults_and_vocabulary_whatever_the_class_set():
    from synthseg.dataset import load_dataset_recipe

    world = load_dataset_recipe("circle,star")  # the bundled world model, not Stable Diffusion's 50 steps and guidance 7.5
    assert (world.model, world.num_inference_steps, world.guidance_scale) == ("world", 25, 2.0)
    assert load_dataset_recipe("circle,star", num_inference_steps=5).num_inference_steps == 5
    hub = load_dataset_recipe("dog,cat", model="stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert (hub.num_inference_steps, hub.guidance_scale) == (50, 7.5)
    with pytest.raises(SynthsegError, match="model 'world' cannot draw 'dog': it knows only circle, square"):
        load_dataset_recipe("dog,circle")
    assert load_dataset_recipe("world,dog", model="sd").class_names[-1] == "dog"  # set names join class lists
    with pytest.raises(SynthsegError, match="unknown class 'notaclass'"):
        load_dataset_recipe("world,notaclass")
    with pytest.raises(SynthsegError, match="unknown class 'dgo'; did you mean 'dog'"):
        load_dataset_recipe("voc,dgo")
    voc = load_dataset_recipe("voc")  # a set name reads its packaged recipe
    assert voc.per_class == 500 and voc.per_pair == 71 and voc.model == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    with pytest.raises(SynthsegError, match="unknown dataset recipe 'vco'; known: coco, voc, world"):
        load_dataset_recipe("dog", "vco")


@pytest.mark.slow
def test_resume_redoes_cut_records_and_cut_images(pipe, grounding, tmp_path):
    r = recipe(per_class=1, pairs=[], per_pair=0, batch_size=1)
    make_dataset(pipe, grounding, r, tmp_path / "reference", PROVENANCE)
    make_dataset(pipe, grounding, r, tmp_path / "cut", PROVENANCE)
    (tmp_path / "cut" / "records" / "000000.json").write_text('{"index": 0, "pro')  # a record cut by a kill or a full disk
    image = tmp_path / "cut" / "images" / "000001.png"
    image.write_bytes(image.read_bytes()[:100])  # an image cut with its record intact
    (tmp_path / "cut" / "annotations.json").unlink()
    assert make_dataset(pipe, grounding, r, tmp_path / "cut", PROVENANCE)["images"] == 3
    assert files(tmp_path / "reference") == files(tmp_path / "cut")


@pytest.mark.slow
def test_sigkill_at_several_points_then_rerun_equals_an_uninterrupted_run(pipe_dir, grounding, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    grounding.save_pretrained(tmp_path / "g")

    def command(out):
        return [sys.executable, "-c", "from synthseg.cli import app; app()", "make-dataset", "--classes", "dog,cat,cow",
                "--per-class", "3", "--num-inference-steps", "2", "--guidance-scale", "2.0", "--model", str(pipe_dir),
                "--grounding", str(tmp_path / "g"), "--out", str(out)]

    def written(out):
        return len(list((out / "records").glob("*.json"))) if (out / "records").is_dir() else 0

    env = dict(os.environ, HF_HUB_OFFLINE="1")
    subprocess.run(command(tmp_path / "reference"), check=True, env=env, capture_output=True)
    for after in (1, 5):  # records written before the kill
        out = tmp_path / f"killed{after}"
        process = subprocess.Popen(command(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while written(out) < after and time.time() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert not (out / "annotations.json").exists()
        subprocess.run(command(out), check=True, env=env, capture_output=True)
        assert files(tmp_path / "reference") == files(out)


def test_a_folder_started_with_another_recipe_is_refused_and_shards_merge(pipe, grounding, tmp_path):
    from synthseg.dataset import merge_datasets

    r = recipe(per_class=1, pairs=[], per_pair=0)
    make_dataset(pipe, grounding, r, tmp_path / "single", PROVENANCE)
    with pytest.raises(SynthsegError, match="another recipe \\(seed differ\\)"):
        make_dataset(pipe, grounding, recipe(per_class=1, pairs=[], per_pair=0, seed=2), tmp_path / "single", PROVENANCE)
    (tmp_path / "stranger").mkdir()
    (tmp_path / "stranger" / "notes.txt").write_text("mine")
    with pytest.raises(SynthsegError, match="not empty and holds no synthseg recipe.json"):
        make_dataset(pipe, grounding, r, tmp_path / "stranger", PROVENANCE)
    r = recipe(per_class=1, pairs=[], per_pair=0, batch_size=1)
    make_dataset(pipe, grounding, r, tmp_path / "one", PROVENANCE)
    for index in range(2):
        assert make_dataset(pipe, grounding, r, tmp_path / f"shard{index}", PROVENANCE, num_shards=2, shard_index=index) is None
    merge_datasets([tmp_path / "shard0", tmp_path / "shard1"], tmp_path / "merged")
    assert files(tmp_path / "one") == files(tmp_path / "merged")


@pytest.mark.slow
def test_torchrun_two_cpu_processes_equal_one_process(pipe_dir, grounding, tmp_path):
    import os
    import subprocess
    import sys

    grounding.save_pretrained(tmp_path / "g")
    args = ["make-dataset", "--classes", "dog,cat,cow", "--per-class", "2", "--per-pair", "1", "--num-inference-steps", "2", "--guidance-scale", "2.0",
            "--model", str(pipe_dir), "--grounding", str(tmp_path / "g")]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "synthseg", *args, "--out", str(tmp_path / "one")], check=True, env=env, capture_output=True)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "synthseg", *args, "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True)
    assert run.returncode == 0, "\n".join(line for line in run.stderr.splitlines() if "rror" in line)
    totals = {int(t) for t in re.findall(r"make-dataset step \d+/(\d+)", run.stderr)}
    assert totals and max(totals) < 9  # each process made only its share of the 9 images
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "two" / "records").glob("*.json"))]
    assert len(records) == 9
    assert files(tmp_path / "one") == files(tmp_path / "two")


def test_refine_gives_the_masks_pamr_makes_of_the_unrefined_ones_and_make_dataset_passes_it_on(pipe, grounding, tmp_path):
    """With `refine`, generation refines the module's masks by PAMR on each image's colours before labels are made
    of them, and make-dataset passes its recipe's `refine` on."""
    import torch

    from synthseg.generate import generate_grounded
    from synthseg.refine import refine_masks

    args = (pipe, grounding, ["a dog and a cat"], [["dog", "cat"]], [4])
    plain, refined = (generate_grounded(*args, guidance_scale=2.0, num_inference_steps=2, refine=n) for n in (0, 20))
    torch.testing.assert_close(refined.masks[0], refine_masks(plain.images[0], plain.masks[0], 20))
    assert not torch.equal(refined.masks[0], plain.masks[0])
    made = {n: make_dataset(pipe, grounding, recipe(refine=n, per_class=1, per_pair=0), tmp_path / str(n), PROVENANCE) for n in (0, 3)}
    assert made[0]["images"] == made[3]["images"] == 3
    masks = [files(tmp_path / str(n) / "masks") for n in (0, 3)]
    assert masks[0].keys() == masks[1].keys() and masks[0] != masks[1]
    with pytest.raises(SynthsegError, match="refine must be 0 or more, got -1"):
        recipe(refine=-1)
