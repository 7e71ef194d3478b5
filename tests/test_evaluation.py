import numpy as np
import pytest
import torch

from synthseg import SynthsegError
from synthseg.annotators import Instance
from synthseg.capture import CaptureStep, CrossAttentionMaps, FeatureCapture
from synthseg.classes import Split
from synthseg.evaluation import THRESHOLDS, evaluate_grounding
from synthseg.metrics import MaskIoU
from synthseg.prompts import PAPER_TEMPLATES, PromptPlanner
from synthseg.text import class_token_spans


def test_mask_iou_by_hand():
    metric = MaskIoU(["dog", "cat", "cow"])
    a = np.zeros((4, 4), bool)
    a[:2] = True  # 8 pixels
    b = np.zeros((4, 4), bool)
    b[1:3] = True  # 8 pixels, 4 shared
    metric.update("dog", a, b)  # I=4, U=12
    metric.update("dog", a, a)  # I=8, U=8
    metric.update("cat", a, ~a)  # I=0, U=16
    iou = metric.iou()
    assert iou["dog"] == pytest.approx(12 / 20) and iou["cat"] == 0.0 and np.isnan(iou["cow"])
    assert metric.mean(["dog", "cat", "cow"]) == pytest.approx(0.3)
    assert metric.count.tolist() == [2, 1, 0]


def test_cross_attention_maps_batch_cfg_and_restore(pipe):
    before = dict(pipe.unet.attn_processors)
    prompts = ["a photograph of a dog and a cat", "a photograph of a dining table"]
    spans = class_token_spans(pipe.tokenizer, prompts, [["dog", "cat"], ["dining table"]])
    with CrossAttentionMaps(pipe.unet, classifier_free_guidance=True) as maps:
        pipe(prompts, num_inference_steps=3, guidance_scale=7.5, generator=[torch.Generator().manual_seed(i) for i in range(2)], output_type="latent")
    assert maps.heat_maps().shape == (2, 77, 16, 16)
    normalised = maps.normalised_maps(spans)
    assert [tuple(m.shape) for m in normalised] == [(2, 16, 16), (1, 16, 16)]
    for m in normalised:
        assert m.min() == 0 and m.max() == pytest.approx(1.0)
    assert all(pipe.unet.attn_processors[k] is v for k, v in before.items())
    with pytest.raises(SynthsegError, match="no cross-attention was recorded"):
        CrossAttentionMaps(pipe.unet, classifier_free_guidance=False).heat_maps()


def test_feature_capture_inside_cross_attention_maps_leaves_them_whole(pipe):
    """Protocol i runs a module that reads attention (FeatureCapture) inside the baseline's context:
    the baseline must still sum every step, the capture step included."""
    timestep = CaptureStep(index=1).resolve(pipe.scheduler, 3).timestep

    def heat(nested: bool):
        generators = [torch.Generator().manual_seed(0)]
        with CrossAttentionMaps(pipe.unet, classifier_free_guidance=True) as maps:
            with FeatureCapture(pipe.unet, timestep, classifier_free_guidance=True, attention=nested) as capture:
                pipe("a photograph of a dog", num_inference_steps=3, guidance_scale=7.5, generator=generators, output_type="latent")
        return maps.heat_maps(), capture.features.cross_attention

    alone, unrecorded = heat(False)
    nested, inner = heat(True)
    assert not unrecorded and len(inner) == sum("attn2" in name for name in pipe.unet.attn_processors)
    torch.testing.assert_close(nested, alone)


def test_evaluation_prompts_cover_every_class():
    planner = PromptPlanner(PAPER_TEMPLATES, seed=0)
    prompts = planner.evaluation(["dog", "cat", "cow"], per_class=2, pairs=4)
    assert len(prompts) == 10
    assert sorted(p.classes[0] for p in prompts[:6]) == ["cat", "cat", "cow", "cow", "dog", "dog"]
    assert all(len(p.classes) == 2 and p.classes[0] != p.classes[1] for p in prompts[6:])
    assert prompts == PromptPlanner(PAPER_TEMPLATES, seed=0).evaluation(["dog", "cat", "cow"], per_class=2, pairs=4)


class LeftHalf:
    """Finds every requested class as the image's left half."""

    def category_of(self, name):
        return 1

    def annotate(self, images, class_names):
        mask = np.zeros(images[0].shape[:2], bool)
        mask[:, : mask.shape[1] // 2] = True
        return [[Instance(mask, n, 1.0) for n in names] for names in class_names]


@pytest.mark.slow
def test_protocol_i_end_to_end(pipe, grounding, tmp_path):
    split = Split(classes="voc", unseen=["dog"], name="test")
    split.all_classes = ("dog", "cat", "cow")
    result = evaluate_grounding(pipe, grounding, LeftHalf(), split, per_class=1, pairs=2, templates=list(PAPER_TEMPLATES),
                                num_inference_steps=2, guidance_scale=2.0, batch_size=3)
    assert set(result.table) == {"Grounding module", "Cross-attention (DAAM)"}
    assert result.counts["unseen-1"] == 1 and result.counts["seen-1"] == 2
    assert result.counts["seen-2"] + result.counts["unseen-2"] == 4
    assert result.threshold in THRESHOLDS
    for row in result.table.values():
        assert all(0 <= row[f"seen-{n}"] <= 1 for n in (1, 2))
    result.save(tmp_path / "protocol_i.md")
    text = (tmp_path / "protocol_i.md").read_text()
    assert "| Grounding module |" in text and "seen 1-class" in text and (tmp_path / "protocol_i.json").is_file()
