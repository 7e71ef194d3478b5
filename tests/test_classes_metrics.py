import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassJaccardIndex

from synthseg import SynthsegError
from synthseg.classes import COCO_CLASSES, VOC_CLASSES, check_names, get_split, load_splits, resolve_classes
from synthseg.metrics import ConfusionMatrix, split_miou


def test_all_shipped_splits_are_valid():
    splits = load_splits()
    assert {"voc-split1", "voc-split2", "voc-split3", "voc-15-5", "voc-zs3-10", "coco-65-15", "world"} <= set(splits)
    assert splits["voc-split1"].unseen == ["tvmonitor", "car", "dog", "sofa", "train"]
    assert len(splits["voc-15-5"].seen) == 15 and len(splits["coco-65-15"].seen) == 65
    assert len(splits["world"].unseen) == 4 and len(splits["world"].seen) == 8
    assert len(COCO_CLASSES) == 80 and len(VOC_CLASSES) == 20


def test_bad_names_and_splits(tmp_path):
    with pytest.raises(SynthsegError, match="unknown voc class 'aeroplan'; did you mean 'aeroplane'"):
        check_names(["aeroplan"], VOC_CLASSES, "voc")
    with pytest.raises(SynthsegError, match="listed twice"):
        check_names(["dog", "dog"], VOC_CLASSES, "voc")
    with pytest.raises(SynthsegError, match="unknown split 'voc-split4'; did you mean"):
        get_split("voc-split4")
    (tmp_path / "s.yaml").write_text("bad:\n  classes: voc\n  unseen: [dog, doggo]\n")
    with pytest.raises(SynthsegError, match="unseen class 'doggo'; did you mean 'dog'"):
        load_splits(tmp_path / "s.yaml")
    (tmp_path / "s.yaml").write_text("bad:\n  classes: voc\n  unseen: [dog, dog]\n")
    with pytest.raises(SynthsegError, match="listed twice"):
        load_splits(tmp_path / "s.yaml")
    (tmp_path / "s.yaml").write_text("bad:\n  classes: imagenet\n  unseen: [dog]\n")
    with pytest.raises(SynthsegError, match="unknown class set 'imagenet'"):
        load_splits(tmp_path / "s.yaml")
    assert resolve_classes("dog, cat") == ("dog", "cat")
    assert resolve_classes("voc") == VOC_CLASSES
    with pytest.raises(SynthsegError, match="listed twice"):
        resolve_classes("dog,dog")


def test_confusion_matrix_by_hand():
    truth = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 2, 1]])
    cm = ConfusionMatrix(3)
    cm.update(pred, truth)
    assert cm.matrix.tolist() == [[1, 1, 0], [0, 3, 0], [1, 0, 1]]
    np.testing.assert_allclose(cm.iou(), [1 / 3, 3 / 4, 1 / 2])
    scores = split_miou(cm.iou(), seen=[0, 1], unseen=[2])
    assert scores["seen"] == pytest.approx((1 / 3 + 3 / 4) / 2) and scores["unseen"] == 0.5
    assert scores["harmonic"] == pytest.approx(2 * scores["seen"] * 0.5 / (scores["seen"] + 0.5))


def test_iou_matches_torchmetrics_on_random_maps():
    rng = np.random.default_rng(0)
    cm = ConfusionMatrix(6)
    preds, truths = [], []
    for _ in range(5):
        truth = rng.integers(0, 6, size=(17, 23))
        truth[rng.random(truth.shape) < 0.1] = 255
        pred = np.where(rng.random(truth.shape) < 0.6, np.where(truth == 255, 0, truth), rng.integers(0, 6, size=truth.shape))
        cm.update(pred, truth)
        preds.append(pred), truths.append(truth)
    metric = MulticlassJaccardIndex(num_classes=6, average="none", ignore_index=255)
    expected = metric(torch.tensor(np.stack(preds)), torch.tensor(np.stack(truths))).numpy()
    np.testing.assert_allclose(cm.iou(), expected, rtol=1e-6)


def test_confusion_matrix_errors():
    cm = ConfusionMatrix(3)
    with pytest.raises(SynthsegError, match="differ in shape"):
        cm.update(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(SynthsegError, match="labels outside 0..2"):
        cm.update(np.full((2, 2), 3), np.zeros((2, 2)))
    assert np.isnan(ConfusionMatrix(2).iou()).all()
