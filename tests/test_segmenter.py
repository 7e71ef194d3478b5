import json

import numpy as np
import pytest
import torch
from PIL import Image

from synthseg import SynthsegError
from synthseg.config import load_config
from synthseg.dataset import DatasetRecipe, make_dataset
from synthseg.readers import read_synthseg, read_world
from synthseg.segmenter import Segmenter, SegmenterRecipe, backbone_config, build_segmenter, image_processor, load_backbone_weights
from synthseg.train.augment import copy_paste, scale_crop_flip
from synthseg.train.segmenter import train_segmenter, training_loss

TINY = dict(backbone="resnet-tiny", pretrained_backbone=False, fpn_feature_size=32, mask_feature_size=32, decoder_layers=1,
            decoder_dim=32, decoder_heads=2, decoder_ffn=64, num_queries=8, batch_size=4, crop_size=32, lr=1e-3,
            backbone_lr_multiplier=1.0, clip_norm=1.0, checkpoint_every=10)


def tiny_recipe(**overrides):
    return load_config(SegmenterRecipe, {**TINY, **overrides}, "recipe")


@pytest.fixture(scope="module")
def synthseg_data(pipe, tmp_path_factory):
    from synthseg import GroundingConfig, GroundingModule

    torch.manual_seed(0)
    module = GroundingModule(GroundingConfig.for_pipeline(pipe, fuse_dim=16, mask_dim=16, hidden_dim=32, num_heads=2, ffn_dim=32, token_patch=2)).eval()
    recipe = load_config(DatasetRecipe, dict(classes="dog,cat", model="tiny", per_class=3, num_inference_steps=2, guidance_scale=2.0,
                                             band=0.0, require_all_classes=False, batch_size=3), "recipe")
    directory = tmp_path_factory.mktemp("synthseg-data")
    make_dataset(pipe, module, recipe, directory, dict(model="tiny", model_hash=None, grounding_hash="0", versions={}))
    return directory


def test_scale_crop_flip_scales_crops_and_pads_with_ignore():
    rng = np.random.default_rng(0)
    image = Image.fromarray(np.full((20, 30, 3), 7, np.uint8))
    labels = np.full((20, 30), 3, np.uint8)
    pixels, target = scale_crop_flip(image, labels, rng, crop=64, scale_range=[1.0, 1.0])  # short side 20 -> 64: width 96
    assert pixels.shape == (64, 64, 3) and target.shape == (64, 64)
    assert set(np.unique(target)) == {3}
    pixels, target = scale_crop_flip(image, labels, rng, crop=64, scale_range=[0.5, 0.5])  # 32x48 inside a 64x64 crop
    assert set(np.unique(target)) == {3, 255} and (target == 3).sum() == 32 * 48


def test_copy_paste_pastes_objects_and_their_ignore_band_but_not_background_anywhere_in_the_crop():
    base_pixels, base_target = np.full((8, 8, 3), 10, np.uint8), np.zeros((8, 8), np.uint8)
    base_target[:, 0] = 2  # an object of the base crop (its left column), partly covered where the paste lands on it
    labels = np.zeros((4, 8), np.uint8)  # half as tall as the crop at scale 1
    labels[0, :4], labels[1, :4], labels[0, 4] = 1, 255, 3  # class 1, its ignore band, and class 3
    other = (Image.fromarray(np.full((4, 8, 3), 200, np.uint8)), labels)
    tops = set()
    for seed in range(40):
        pixels, target, where = copy_paste(base_pixels, base_target, other, np.random.default_rng(seed), scale_range=[0.5, 0.5])
        assert (pixels[where] == 200).all() and (pixels[~where] == 10).all() and (target[~where] == base_target[~where]).all()
        assert (target == 1).sum() == 4 and (target == 3).sum() == 1 and (target == 255).sum() == 4  # the band: ignore still
        assert where.sum() == 9 and not (target[where] == 0).any()  # no background pasted
        top = int(np.flatnonzero(where.any(1))[0])
        assert where[top].sum() == 5 and (target[top + 1] == 255).sum() == 4  # the other image's rows, whole
        tops.add(top)
        assert (target[:, 0] == 2).sum() == 8 - where[:, 0].sum()  # the base object covered only where pasted over
    assert tops == {0, 1, 2, 3, 4}  # every place the 8 x 4 image fits in the crop


def test_copy_paste_above_the_crop_size_pastes_a_window():
    labels = np.ones((16, 16), np.uint8)
    other = (Image.fromarray(np.full((16, 16, 3), 200, np.uint8)), labels)
    pixels, target, where = copy_paste(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8), other,
                                       np.random.default_rng(0), scale_range=[1.5, 1.5])  # 12 x 12 over an 8 x 8 crop
    assert where.all() and (target == 1).all() and (pixels == 200).all()


def test_copy_paste_share_and_scale_range_are_checked():
    with pytest.raises(SynthsegError, match="copy_paste"):
        tiny_recipe(copy_paste=1.5)
    with pytest.raises(SynthsegError, match="paste_scale_range"):
        tiny_recipe(copy_paste=0.5, paste_scale_range=[0.0, 1.0])


def test_tiny_maskformer_loss_falls_on_a_synthseg_dataset(synthseg_data, tmp_path):
    data = read_synthseg(synthseg_data)
    assert data.class_names == ("dog", "cat") and len(data) == 6
    out = train_segmenter(tiny_recipe(steps=60, lr=3e-3), data, tmp_path / "model", tmp_path / "work")
    losses = torch.load(tmp_path / "work" / "segmenter.ckpt", weights_only=True)["losses"]
    assert len(losses) == 60 and np.mean(losses[-10:]) < 0.9 * np.mean(losses[:10])
    segmenter = Segmenter.from_pretrained(out)
    assert segmenter.class_names == ("background", "dog", "cat")
    assert segmenter.processor.do_reduce_labels is False and segmenter.processor.ignore_index == 255
    assert not segmenter.model.config.use_auxiliary_loss  # saved for inference, which fails with it on
    image, _ = data[0]
    labels = segmenter.predict(image.resize((45, 37)))
    assert labels.shape == (37, 45) and labels.min() >= 0 and labels.max() <= 2


def test_tiny_mask2former_learns_saves_and_predicts(synthseg_data, tmp_path):
    from transformers import Mask2FormerForUniversalSegmentation

    data = read_synthseg(synthseg_data)
    recipe = tiny_recipe(arch="mask2former", steps=60, lr=3e-3, pixel_decoder_layers=1)
    out = train_segmenter(recipe, data, tmp_path / "model", tmp_path / "work")
    losses = torch.load(tmp_path / "work" / "segmenter.ckpt", weights_only=True)["losses"]
    assert len(losses) == 60 and np.mean(losses[-10:]) < 0.9 * np.mean(losses[:10])
    segmenter = Segmenter.from_pretrained(out)
    assert isinstance(segmenter.model, Mask2FormerForUniversalSegmentation) and segmenter.class_names == ("background", "dog", "cat")
    assert type(segmenter.processor).__name__ == "Mask2FormerImageProcessor" and segmenter.processor.ignore_index == 255
    assert segmenter.model.config.encoder_layers == 1 and segmenter.model.config.num_queries == 8
    labels = segmenter.predict(data[0][0].resize((45, 37)))
    assert labels.shape == (37, 45) and labels.min() >= 0 and labels.max() <= 2


def test_training_loss_supervises_every_decoder_layer():
    recipe = tiny_recipe(decoder_layers=2)
    data = read_world(2)
    batch = image_processor(recipe).preprocess(images=[np.array(data[i][0]) for i in range(2)],
                                               segmentation_maps=[data[i][1] for i in range(2)], return_tensors="pt")
    torch.manual_seed(0)
    model = build_segmenter(recipe, data.class_names).eval()
    model.config.use_auxiliary_loss = True  # as train_segmenter sets it
    supervised = training_loss(model, batch, "cpu")
    model.config.use_auxiliary_loss = False
    last_layer_only = training_loss(model, batch, "cpu")
    assert supervised > last_layer_only > 0  # deep supervision adds the earlier layers' matched losses


def test_decoder_reads_the_last_backbone_stage():
    x = torch.zeros(1, 3, 64, 64)
    for backbone, side in (("resnet-tiny", 2), ("resnet-tiny-s8", 8)):  # stride 32 and stride 8
        model = build_segmenter(tiny_recipe(backbone=backbone), ("a",)).eval()
        with torch.no_grad():
            assert model.model(x).encoder_last_hidden_state.shape[-2:] == (side, side), backbone


@pytest.mark.parametrize("share", [0.0, 0.5])
def test_training_resumes_exactly(tmp_path, share):
    data = read_world(6)
    recipe = tiny_recipe(steps=6, checkpoint_every=3, copy_paste=share)
    straight = train_segmenter(recipe, data, tmp_path / "a", tmp_path / "wa")
    train_segmenter(recipe, data, tmp_path / "b", tmp_path / "wb", max_steps=3)
    resumed = train_segmenter(recipe, data, tmp_path / "b", tmp_path / "wb")
    a, b = Segmenter.from_pretrained(straight).model.state_dict(), Segmenter.from_pretrained(resumed).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((resumed / "training.json").read_text())["segmenter"]["steps"] == 6


def test_from_scratch_init_gives_distinct_queries_unit_batchnorm_and_xavier_decoder():
    # transformers' init (queries and BatchNorm weights from N(0, 0.02)) made every query of a model trained from
    # scratch predict the same class and mask once dropout was off (Protocol ii collapsed to one class per image);
    # its N(0, 0.02) decoder weights kept attention uniform, so even 32 scenes were not learnt in 1,000 steps.
    model = build_segmenter(tiny_recipe(num_queries=20), ("a", "b"))
    queries = model.model.transformer_module.queries_embedder.weight
    assert 0.7 < queries.std().item() < 1.3
    norms = [m for m in model.model.pixel_level_module.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in norms)
    for name, weight in model.model.transformer_module.decoder.named_parameters():
        if weight.dim() > 1:
            fan_out, fan_in = weight.shape
            bound = (6 / (fan_in + fan_out)) ** 0.5  # Xavier uniform: U(-bound, bound), std bound / sqrt(3)
            assert weight.abs().max() <= bound and weight.std() > 0.8 * bound / 3**0.5, name


def pretrained_tiny_resnet(folder) -> dict:
    """Save a seeded resnet-tiny as a pretrained backbone in `folder`; its state dict as read back."""
    from transformers import ResNetBackbone

    from synthseg.segmenter import backbone_config

    torch.manual_seed(1)
    ResNetBackbone(backbone_config("resnet-tiny")).save_pretrained(folder)
    return ResNetBackbone.from_pretrained(folder).state_dict()


def test_pretrained_backbone_goes_through_from_pretrained(tmp_path):
    reference = pretrained_tiny_resnet(tmp_path / "resnet")
    for arch in ("maskformer", "mask2former"):
        model = build_segmenter(tiny_recipe(arch=arch, pretrained_backbone=True, backbone_weights=str(tmp_path / "resnet")), ("a",))
        encoder = model.model.pixel_level_module.encoder.state_dict()
        assert all(torch.equal(encoder[k], reference[k]) for k in reference), arch
    with pytest.raises(SynthsegError, match="--no-pretrained-backbone"):
        load_backbone_weights(model, "microsoft/resnet-101")  # offline in tests


@pytest.mark.parametrize("frozen", [True, False])
def test_a_pretrained_backbone_trains_with_frozen_batchnorm(tmp_path, frozen):
    # MaskFormer's ResNet configs keep detectron2's FrozenBN; batch statistics of a few 32 px crops would replace
    # the pretrained ones (and the model would normalise differently in training and at inference)
    reference = pretrained_tiny_resnet(tmp_path / "resnet")
    recipe = tiny_recipe(steps=3, pretrained_backbone=True, backbone_weights=str(tmp_path / "resnet"), frozen_backbone_norm=frozen)
    trained = Segmenter.from_pretrained(train_segmenter(recipe, read_world(4), tmp_path / "out", tmp_path / "work"))
    encoder = trained.model.model.pixel_level_module.encoder.state_dict()
    norms = [k for k in reference if ".normalization." in k and not k.endswith("num_batches_tracked")]
    convs = [k for k in reference if ".convolution." in k]
    assert norms and convs and not any(torch.equal(encoder[k], reference[k]) for k in convs)  # the backbone trains
    assert all(torch.equal(encoder[k], reference[k]) for k in norms) == frozen


def test_recipe_errors():
    with pytest.raises(SynthsegError, match="unknown backbone"):
        tiny_recipe(backbone="resnet-7")
    with pytest.raises(SynthsegError, match="unknown arch 'segformer'"):
        tiny_recipe(arch="segformer")
    with pytest.raises(SynthsegError, match="mask2former reads four backbone stages"):
        tiny_recipe(arch="mask2former", backbone="resnet-tiny-s8")
    with pytest.raises(SynthsegError, match="no ImageNet weights"):
        tiny_recipe(pretrained_backbone=True)
    with pytest.raises(SynthsegError, match="warmup_steps must be at least 0 and below steps"):
        tiny_recipe(steps=10, warmup_steps=10)
    with pytest.raises(SynthsegError, match="steps must be at least 1, got 0"):  # not "warmup_steps ... below steps (0)"
        tiny_recipe(steps=0)
    with pytest.raises(SynthsegError, match="not a trained segmenter"):
        Segmenter.from_pretrained("/nonexistent")


def test_the_learning_rate_warms_up_linearly_then_decays_as_maskformer_s_poly():
    from synthseg.train.loop import poly

    plain, warm = poly(100, 0.9), poly(100, 0.9, warmup=10)
    assert plain(0) == 1.0 and warm(0) == pytest.approx(0.1) and warm(4) == pytest.approx(0.5 * plain(4))
    assert all(warm(step) == plain(step) for step in range(9, 101)) and plain(100) == 0.0


def test_backbone_pretraining_resumes_and_the_segmenter_starts_from_it(tmp_path):
    from transformers import ResNetForImageClassification

    from synthseg.train.backbone import BackboneRecipe, pretrain_backbone

    recipe = load_config(BackboneRecipe, dict(backbone="resnet-tiny", image_size=32, steps=4, batch_size=4, checkpoint_every=2,
                                              eval_scenes=6), "recipe")
    straight = pretrain_backbone(recipe, tmp_path / "wa", tmp_path / "a")
    pretrain_backbone(recipe, tmp_path / "wb", tmp_path / "b", max_steps=2)  # a first sitting
    resumed = pretrain_backbone(recipe, tmp_path / "wb", tmp_path / "b")
    a, b = (ResNetForImageClassification.from_pretrained(p, dtype=torch.float32).state_dict() for p in (straight, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    made = json.loads((resumed / "recipe.json").read_text())
    assert made["_class_name"] == "BackboneRecipe" and set(made["held_out"]) == {"exact_class_set", "per_class_decisions"}
    assert json.loads((resumed / "training.json").read_text())["backbone"]["steps"] == 4
    model = build_segmenter(tiny_recipe(pretrained_backbone=True, backbone_weights=str(straight)), ("a",))
    encoder = model.model.pixel_level_module.encoder.state_dict()
    body = {k.removeprefix("resnet."): v for k, v in a.items() if k.startswith("resnet.")}  # the classifier head is left out
    assert set(encoder) <= set(body) and all(torch.equal(encoder[k], body[k]) for k in encoder)


def test_a_counter_trains_on_layout_scenes_resumes_and_loads_as_a_count_judge(tmp_path):
    """train.backbone with a layouts section: the same ResNet with one softmax per class over the counts 0..max_count,
    labelled "circle=2"; a resumed run repeats an uninterrupted one, and `CountJudge` reads the export (and refuses the
    classifier, whose labels are class names)."""
    from transformers import ResNetForImageClassification

    from synthseg.counter import CountJudge
    from synthseg.train.backbone import BackboneRecipe, count_batch, pretrain_backbone
    from synthseg.train.world_t2i import sample_layout_scenes

    recipe = load_config(BackboneRecipe, dict(backbone="resnet-tiny", image_size=32, steps=4, batch_size=4, checkpoint_every=2, eval_scenes=6,
                                              max_count=3, blur=1.0, layouts=dict(max_objects=5, repeat_fraction=1.0, seed=3)), "recipe")
    pixels, counts = count_batch(sample_layout_scenes(recipe.layouts, 0, 8, recipe.image_size)[0])
    assert pixels.shape == (8, 3, 32, 32) and counts.shape == (8, 12) and 1 <= counts.sum(1).min() and counts.max() >= 2  # repeats
    straight = pretrain_backbone(recipe, tmp_path / "wa", tmp_path / "a")
    pretrain_backbone(recipe, tmp_path / "wb", tmp_path / "b", max_steps=2)
    resumed = pretrain_backbone(recipe, tmp_path / "wb", tmp_path / "b")
    a, b = (ResNetForImageClassification.from_pretrained(p, dtype=torch.float32).state_dict() for p in (straight, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert set(json.loads((resumed / "recipe.json").read_text())["held_out"]) == {"exact_counts", "per_class_counts"}
    assert json.loads((resumed / "training.json").read_text())["counter"]["steps"] == 4 and (tmp_path / "wb" / "counter.ckpt").is_file()
    judge = CountJudge.from_pretrained(resumed)
    assert judge.names[:2] == ["circle", "square"] and len(judge.names) == 12 and judge.max_count == 3 and judge.image_size == 32
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)  # another size: resized to 32
    log_probs = judge.count_log_probs(images)
    assert log_probs.shape == (2, 12, 4) and torch.allclose(log_probs.exp().sum(-1), torch.ones(2, 12))
    classifier = backbone_config("resnet-tiny")
    classifier.num_labels, classifier.id2label = 2, {0: "circle", 1: "square"}  # a class classifier, as the world backbone
    with pytest.raises(SynthsegError, match="is not a counter: its labels are not 'class=count'"):
        CountJudge(ResNetForImageClassification(classifier))
    with pytest.raises(SynthsegError, match="no counter at"):
        CountJudge.from_pretrained(tmp_path / "none")
    with pytest.raises(SynthsegError, match="blur goes with a layouts section"):
        load_config(BackboneRecipe, dict(blur=1.0), "recipe")


def test_bad_backbone_weights_leave_no_workdir(tmp_path):
    recipe = tiny_recipe(pretrained_backbone=True, backbone_weights=str(tmp_path / "none"))
    with pytest.raises(SynthsegError, match="cannot load the pretrained backbone"):
        train_segmenter(recipe, read_world(2), tmp_path / "out", tmp_path / "work")
    assert not (tmp_path / "work").exists()
