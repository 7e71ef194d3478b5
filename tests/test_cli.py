import json
import re

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from synthseg.cli import app

runner = CliRunner()


def test_help_lists_only_working_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    commands = re.findall(r"│ (\S+)\s{2,}", result.output.split("Commands")[1])
    assert commands == ["generate", "train-world-model", "train-world-dit", "train-world-layout", "train-world-annotator", "train-backbone",
                        "make-triplets", "train-grounding",
                        "train-captioner", "evaluate-grounding", "segment", "make-dataset",
                        "merge-dataset", "show", "train-segmenter", "benchmark"]


def test_generate_end_to_end(pipe_dir, grounding, tmp_path):
    grounding.save_pretrained(tmp_path / "grounding")
    args = ["generate", "--model", str(pipe_dir), "--grounding", str(tmp_path / "grounding"), "--num-inference-steps", "3",
            "--prompt", "a photograph of a dog and a cat", "--classes", "dog,cat",
            "--prompt", "a photograph of a train", "--classes", "train", "--seed", "7", "--out", str(tmp_path / "out")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (tmp_path / "out/generation.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in records] == [7, 8]
    assert records[0]["classes"] == ["dog", "cat"]
    for record in records:
        assert (tmp_path / "out" / record["file_name"]).is_file()
        assert all((tmp_path / "out" / f).is_file() for f in record["masks"].values())


def test_generate_keeps_the_best_of_its_candidates_by_the_captioner_given(pipe, pipe_dir, grounding, tmp_path, make_chooser):
    """`generate --candidates 3 --captioner DIR`: each prompt's image is one of its candidates, the one the captioner
    picks, with its seed recorded; without a captioner to choose, or with 0 candidates, one error line and nothing written."""
    from synthseg.candidates import best_candidate, candidate_seeds
    from synthseg.generate import generate_grounded

    grounding.save_pretrained(tmp_path / "grounding")
    recogniser = make_chooser(pipe, ["dog", "cat"])
    recogniser.captioner.save_pretrained(tmp_path / "captioner")
    base = ["generate", "--model", str(pipe_dir), "--grounding", str(tmp_path / "grounding"), "--num-inference-steps", "3",
            "--prompt", "a photograph of a dog and a cat", "--classes", "dog,cat", "--seed", "7"]
    result = runner.invoke(app, base + ["--candidates", "3", "--captioner", str(tmp_path / "captioner"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "out/generation.jsonl").read_text())
    alone = generate_grounded(pipe, grounding, ["a photograph of a dog and a cat"] * 3, [["dog", "cat"]] * 3, candidate_seeds(7, 3),
                              guidance_scale=7.5, num_inference_steps=3)
    best = best_candidate(pipe, recogniser, ["dog", "cat"], alone.images)
    assert record["seed"] == candidate_seeds(7, 3)[best]
    kept = np.asarray(Image.open(tmp_path / "out" / record["file_name"])).astype(int)
    assert np.abs(kept - np.asarray(alone.images[best]).astype(int)).max() <= 1
    for args, message in ((["--candidates", "2"], "candidates 2 needs an implicit captioner trained per class"),  # no bundled captioner
                          (["--candidates", "0"], "--candidates must be at least 1, got 0")):
        result = runner.invoke(app, base + args + ["--out", str(tmp_path / "bad")])
        assert result.exit_code == 1 and message in result.output and result.output.count("error:") == 1, result.output
        assert not (tmp_path / "bad").exists()


def test_generate_follows_the_counter_s_guidance_as_the_library_does(pipe, pipe_dir, grounding, tmp_path, make_counter):
    """`generate --count-guidance S --counter DIR`: the image generate_grounded makes with that counter and strength;
    without a counter, or with a negative strength, one error line and nothing written."""
    from synthseg.generate import generate_grounded

    grounding.save_pretrained(tmp_path / "grounding")
    counter = make_counter(["dog", "cat"], max_count=2)
    counter.model.save_pretrained(tmp_path / "counter")
    base = ["generate", "--model", str(pipe_dir), "--grounding", str(tmp_path / "grounding"), "--num-inference-steps", "3",
            "--prompt", "a photograph of a dog and a cat", "--classes", "dog,cat", "--seed", "7"]
    result = runner.invoke(app, base + ["--count-guidance", "50", "--counter", str(tmp_path / "counter"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    options = dict(guidance_scale=7.5, num_inference_steps=3)
    guided = generate_grounded(pipe, grounding, ["a photograph of a dog and a cat"], [["dog", "cat"]], [7], counter=counter,
                               count_guidance=50.0, **options).images[0]  # strong: a random counter's gradient is small
    plain = generate_grounded(pipe, grounding, ["a photograph of a dog and a cat"], [["dog", "cat"]], [7], **options).images[0]
    written = np.asarray(Image.open(tmp_path / "out/images/00000.png")).astype(int)
    assert np.abs(written - np.asarray(guided).astype(int)).max() <= 1 and np.abs(written - np.asarray(plain).astype(int)).max() > 1
    for args, message in ((["--count-guidance", "2"], "--count-guidance follows a counter's gradient: give one"),  # no bundled counter
                          (["--count-guidance", "-1"], "--count-guidance must be 0 or more, got -1.0")):
        result = runner.invoke(app, base + args + ["--out", str(tmp_path / "bad")])
        assert result.exit_code == 1 and message in result.output and result.output.count("error:") == 1, result.output
        assert not (tmp_path / "bad").exists()


def test_generate_errors_are_one_line_with_exit_1(pipe_dir, grounding, tmp_path):
    grounding.save_pretrained(tmp_path / "grounding")
    base = ["generate", "--model", str(pipe_dir), "--num-inference-steps", "2", "--out", str(tmp_path / "out")]
    result = runner.invoke(app, base + ["--grounding", str(tmp_path / "nope"), "--prompt", "a dog", "--classes", "dog"])
    assert result.exit_code == 1
    assert result.output.strip().startswith("error: no grounding module at") and result.output.strip().count("\n") == 0
    result = runner.invoke(app, base + ["--grounding", str(tmp_path / "grounding"), "--prompt", "a dog", "--classes", "cat"])
    assert result.exit_code == 1 and "error: class 'cat' does not occur in prompt 'a dog'" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_make_triplets_and_train_grounding_end_to_end(pipe_dir, tmp_path):
    from synthseg.annotators import MaskRCNNAnnotator, MaskRCNNConfig, build_maskrcnn
    from synthseg.classes import VOC_CLASSES

    config = MaskRCNNConfig(categories=list(VOC_CLASSES), fpn_channels=16, image_size=32, anchor_sizes=[4, 8, 16, 32], mask_channels=16)
    MaskRCNNAnnotator(build_maskrcnn(config), config.categories, score_threshold=0.0, config=config).save_pretrained(tmp_path / "ann")
    (tmp_path / "r.yaml").write_text(
        "split: voc-15-5\n"
        "pipeline: tiny-sd\n"
        "triplets: {seen: [dog, cat, bus, horse], count: 4, shard_size: 2, batch_size: 2, num_inference_steps: 2, guidance_scale: 2.0,"
        " cross_attention: true}\n"
        "model: {fuse_dim: 16, mask_dim: 16, hidden_dim: 32, num_heads: 4, ffn_dim: 64, token_patch: 2}\n"
        "train: {steps: 3, batch_size: 2, warmup_steps: 1}\n"
    )
    common = ["--recipe", str(tmp_path / "r.yaml")]
    result = runner.invoke(app, ["make-triplets", *common, "--out", str(tmp_path / "t"), "--model", str(pipe_dir), "--annotator", str(tmp_path / "ann")])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "t").glob("shard-*.jsonl"))) == 2
    result = runner.invoke(app, ["make-triplets", *common, "--model", str(pipe_dir), "--dry-run"])  # the run recorded its rate
    assert result.exit_code == 0 and "s per item on cpu" in result.output and "measured" in result.output, result.output
    result = runner.invoke(app, ["train-grounding", *common, "--triplets", str(tmp_path / "t"), "--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "g")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["train-grounding", *common, "--triplets", str(tmp_path / "t"), "--workdir", str(tmp_path / "w2"),
                                 "--out", str(tmp_path / "g2"), "--no-cross-attention", "--attention-pooling", "--query-dropout", "0.5"])
    assert result.exit_code == 0, result.output
    with_maps, without = (json.loads((tmp_path / g / "config.json").read_text()) for g in ("g", "g2"))
    assert with_maps["cross_attention_strides"] and without["cross_attention_strides"] == []  # the VPD ablation
    assert not with_maps["attention_pooling"] and without["attention_pooling"]
    assert json.loads((tmp_path / "g2" / "recipe.json").read_text())["train"]["query_dropout"] == 0.5
    result = runner.invoke(app, ["generate", "--model", str(pipe_dir), "--grounding", str(tmp_path / "g"), "--num-inference-steps", "2",
                                 "--prompt", "a photograph of a sofa", "--classes", "sofa", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["evaluate-grounding", *common, "--grounding", str(tmp_path / "g2"), "--model", str(pipe_dir),
                                 "--annotator", str(tmp_path / "ann"), "--per-class", "1", "--pairs", "1", "--out", str(tmp_path / "p1.md")])
    assert result.exit_code == 0, result.output
    assert "| Grounding module |" in (tmp_path / "p1.md").read_text()
    result = runner.invoke(app, ["make-triplets", *common, "--out", str(tmp_path / "t2"), "--model", str(pipe_dir), "--annotator", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "no annotator at" in result.output


@pytest.mark.slow
def test_make_dataset_and_show(pipe_dir, grounding, tmp_path, monkeypatch):
    from PIL import Image

    grounding.save_pretrained(tmp_path / "g")
    args = ["make-dataset", "--classes", "dog,cat", "--per-class", "2", "--per-pair", "1", "--num-inference-steps", "2", "--guidance-scale", "2.0",
            "--model", str(pipe_dir), "--grounding", str(tmp_path / "g"), "--refine", "0", "--out", str(tmp_path / "ds")]
    monkeypatch.setenv("SYNTHSEG_CACHE", str(tmp_path / "cache"))  # --refine 0: the random module's unrefined masks keep every image
    result = runner.invoke(app, [*args, "--dry-run"])
    assert result.exit_code == 0 and "time: unknown (no images rate recorded for this model on cpu" in result.output, result.output
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "short of the images asked" not in result.output, result.output
    assert (tmp_path / "ds" / "annotations.json").is_file() and (tmp_path / "ds" / "README.md").is_file()
    assert json.loads((tmp_path / "ds" / "recipe.json").read_text())["refine"] == 0  # --refine overrides the recipe's 20
    (rate,) = json.loads((tmp_path / "cache" / "throughput.json").read_text()).values()  # the run measured its rate
    assert rate["items"] == 5 and rate["steps"] == 2 and rate["seconds_per_item"] > 0
    result = runner.invoke(app, [*args, "--dry-run", "--num-inference-steps", "4"])
    assert f"time: about {5 * 2 * rate['seconds_per_item']:.0f} s ({2 * rate['seconds_per_item']:.3g} s per item on cpu" in result.output
    assert "scaled from 2 steps" in result.output
    (tmp_path / "strict.yaml").write_text("classes: dog,cat\nband: 0.999\n")  # no pixel is that sure: every image is dropped
    result = runner.invoke(app, [*args[:-1], str(tmp_path / "strict"), "--recipe", str(tmp_path / "strict.yaml"), "--spare", "0.5"])
    assert result.exit_code == 0 and "warning: 5 short of the images asked" in result.output and "(--spare 0.5)" in result.output, result.output
    result = runner.invoke(app, ["show", str(tmp_path / "ds")])
    assert result.exit_code == 0, result.output
    sheet = np.asarray(Image.open(tmp_path / "ds" / "contact_sheet.png"))
    assert sheet.shape[:2] == (2 * (2 * 32 + 14) + 14, 4 * 2 * 2 * 32)  # 5 images: 2 rows of 4 (image | labels) tiles, a key
    key = 2 * (2 * 32 + 14)
    assert tuple(sheet[key + 7, 7]) == (0, 128, 0) and tuple(sheet[key + 7, 117]) == (128, 0, 0)  # cat is label 2, dog label 1
    first = np.asarray(Image.open(tmp_path / "ds" / "images" / "000000.png").convert("RGB"))
    assert np.array_equal(sheet[:64:2, :64:2], first)  # the first tile starts with the first image, at scale 2
    result = runner.invoke(app, ["make-dataset", "--classes", "dog,catt", "--out", str(tmp_path / "bad"), "--model", "nowhere"])
    assert result.exit_code == 1 and "unknown class 'catt'; did you mean 'cat'" in result.output and not (tmp_path / "bad").exists()
    result = runner.invoke(app, ["show", str(tmp_path / "nothing")])
    assert result.exit_code == 1 and "not a finished synthseg dataset" in result.output
