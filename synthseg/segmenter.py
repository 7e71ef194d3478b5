"""The segmenter of Protocol ii: MaskFormer or Mask2Former (transformers) trained on semantic label maps.

Labels: the model's label 0 is "background" and label k is the data's k-th class, so the image
processor runs with `do_reduce_labels=False` (set explicitly: transformers 5 ignores the old
`reduce_labels`) and `ignore_index=255`. Its training, with MaskFormer's detectron2 recipe (AdamW,
backbone LR x0.1, poly schedule 0.9, gradient clipping, deep supervision), is `synthseg.train.segmenter`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .config import check_low_high, check_positive, check_share
from .errors import SynthsegError
from .formats import IGNORE

BACKGROUND = "background"
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
# ResNet architectures built from configs; ImageNet weights for them come from the hub ids below.
BACKBONES = {
    "resnet-tiny": dict(layer_type="basic", depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 64, 128], embedding_size=16),
    # Two stages: its last map, which the transformer decoder reads, is at stride 8 (8x8 on the world's 64 px scenes,
    # where a stride-32 map is 2x2; MaskFormer's decoder reads 16x16 on 512 px crops).
    "resnet-tiny-s8": dict(layer_type="basic", depths=[1, 1], hidden_sizes=[32, 64], embedding_size=16),
    # Four stages, one block each: the world segmenter's backbone, pretrained by classification on the world
    # (train.backbone; bundled as the world's backbone) as MaskFormer's ResNets are on ImageNet.
    "resnet-world": dict(layer_type="basic", depths=[1, 1, 1, 1], hidden_sizes=[32, 64, 128, 256], embedding_size=32),
    "resnet-18": dict(layer_type="basic", depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512], embedding_size=64),
    "resnet-50": dict(layer_type="bottleneck", depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048], embedding_size=64),
    "resnet-101": dict(layer_type="bottleneck", depths=[3, 4, 23, 3], hidden_sizes=[256, 512, 1024, 2048], embedding_size=64),
}
ARCHS = ("maskformer", "mask2former")
# Mask2FormerConfig warns on every build and load that a ResNet backbone "may not be compatible" (its checkpoints
# are Swin); Mask2Former's paper trains ResNets too, and transformers' implementation takes them (tested).
logging.getLogger("transformers.models.mask2former.configuration_mask2former").addFilter(
    lambda record: "is not a supported model" not in record.getMessage())
BACKBONE_WEIGHTS = {"resnet-world": "world", "resnet-18": "microsoft/resnet-18", "resnet-50": "microsoft/resnet-50", "resnet-101": "microsoft/resnet-101"}


@dataclass
class SegmenterRecipe:
    """The segmenter and its training. `arch`: "maskformer" (the paper's) or "mask2former" (its successor:
    masked attention, and a deformable-attention pixel decoder of `pixel_decoder_layers` over the
    backbone's strides 8-32, so it needs a four-stage backbone). `backbone`: a name of BACKBONES;
    `backbone_weights`: hub id or folder of pretrained weights, or a bundled name (default: the name's
    microsoft/resnet-* id, or "world" for resnet-world; ignored without `pretrained_backbone`).
    `frozen_backbone_norm`: a pretrained backbone's BatchNorm keeps its statistics and affine while training
    (detectron2's FrozenBN, which MaskFormer's ResNet configs train with); a backbone
    from scratch always trains its BatchNorm. The decoder fields size either arch's transformer decoder.
    `warmup_steps`: a linear warm-up of the learning rate before its poly decay (MaskFormer's configs have none).
    `copy_paste`: the share of training crops that get another crop's objects pasted over them (Simple Copy-Paste,
    Ghiasi et al. 2021; `synthseg.train.augment.copy_paste`), so images of one or two objects teach scenes of more;
    `paste_scale_range`: the pasted image's short side over the crop's, drawn per paste (below 1 it lands anywhere in
    the crop, a smaller object among the crop's)."""

    arch: str = "maskformer"
    backbone: str = "resnet-101"
    pretrained_backbone: bool = True
    backbone_weights: str | None = None
    frozen_backbone_norm: bool = True
    fpn_feature_size: int = 256
    mask_feature_size: int = 256
    decoder_layers: int = 6
    decoder_dim: int = 256
    decoder_heads: int = 8
    decoder_ffn: int = 2048
    num_queries: int = 100
    pixel_decoder_layers: int = 6
    steps: int = 40000
    batch_size: int = 8
    crop_size: int = 512
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    lr: float = 1e-4
    backbone_lr_multiplier: float = 0.1
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    warmup_steps: int = 0
    clip_norm: float = 0.01
    copy_paste: float = 0.0
    paste_scale_range: list[float] = field(default_factory=lambda: [0.4, 1.0])
    seed: int = 0
    checkpoint_every: int = 1000

    def validate(self, source: str) -> None:
        if self.arch not in ARCHS:
            raise SynthsegError(f"{source}: unknown arch {self.arch!r}; known: {', '.join(ARCHS)}")
        check_backbone(source, self.backbone)
        if self.arch == "mask2former" and len(BACKBONES[self.backbone]["depths"]) != 4:
            raise SynthsegError(f"{source}: mask2former reads four backbone stages (strides 4-32); {self.backbone} has "
                                f"{len(BACKBONES[self.backbone]['depths'])}")
        if self.pretrained_backbone and not (self.backbone_weights or self.backbone in BACKBONE_WEIGHTS):
            raise SynthsegError(f"{source}: {self.backbone} has no ImageNet weights; set pretrained_backbone: false")
        check_low_high(source, self, "scale_range", "paste_scale_range")
        check_share(source, self, "copy_paste")
        check_positive(source, self, "steps", "batch_size", "crop_size", "num_queries", "checkpoint_every", "decoder_layers",
                       "pixel_decoder_layers")
        if not 0 <= self.warmup_steps < self.steps:
            raise SynthsegError(f"{source}: warmup_steps must be at least 0 and below steps ({self.steps})")


def check_backbone(source: str, name: str) -> None:
    """Refuse a backbone name that BACKBONES lacks, listing the known ones."""
    if name not in BACKBONES:
        raise SynthsegError(f"{source}: unknown backbone {name!r}; known: {', '.join(BACKBONES)}")


def load_segmenter_recipe(spec: str | Path, **overrides) -> SegmenterRecipe:
    """A recipe by packaged name ("segmenter-tiny") or path, with `overrides` (None values ignored), validated."""
    from .config import load_recipe

    return load_recipe(SegmenterRecipe, spec, "segmenter", **overrides)


def image_processor(recipe: SegmenterRecipe):
    """The arch's processor: inference resizes the short side to `crop_size`; labels 0..K, 255 ignore."""
    from transformers import Mask2FormerImageProcessor, MaskFormerImageProcessor

    kind = Mask2FormerImageProcessor if recipe.arch == "mask2former" else MaskFormerImageProcessor
    return kind(
        do_resize=True, size={"shortest_edge": recipe.crop_size, "longest_edge": 4 * recipe.crop_size}, size_divisor=0,
        do_normalize=True, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, do_reduce_labels=False, ignore_index=IGNORE,
    )


def build_segmenter(recipe: SegmenterRecipe, class_names: tuple[str, ...]):
    """The recipe's arch over ["background", *class_names], with a pretrained backbone if asked."""
    labels = (BACKGROUND, *class_names)
    names = dict(num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    model = _build_mask2former(recipe, names) if recipe.arch == "mask2former" else _build_maskformer(recipe, names)
    if recipe.pretrained_backbone:
        load_backbone_weights(model, recipe.backbone_weights or BACKBONE_WEIGHTS[recipe.backbone])
    else:
        # Both draw every BatchNorm weight from N(0, 0.02), which only a pretrained backbone overwrites; from
        # scratch that scales each residual branch down to noise, so the backbone gets the usual weight 1.
        for module in model.model.pixel_level_module.encoder.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                torch.nn.init.ones_(module.weight)
    return model


def _build_maskformer(recipe: SegmenterRecipe, names: dict):
    from transformers import MaskFormerConfig, MaskFormerForInstanceSegmentation

    config = MaskFormerConfig(
        backbone_config=backbone_config(recipe.backbone),
        decoder_config=dict(model_type="detr", decoder_layers=recipe.decoder_layers, d_model=recipe.decoder_dim,
                            decoder_attention_heads=recipe.decoder_heads, decoder_ffn_dim=recipe.decoder_ffn,
                            num_queries=recipe.num_queries),
        fpn_feature_size=recipe.fpn_feature_size, mask_feature_size=recipe.mask_feature_size, **names,
    )
    model = MaskFormerForInstanceSegmentation(config)
    # transformers draws the object queries from N(0, 0.02), which only a pretrained MaskFormer overwrites: from
    # scratch every query then looks the same once dropout is off, and all predict one class. N(0, 1) as in DETR.
    torch.nn.init.normal_(model.model.transformer_module.queries_embedder.weight)
    # Likewise its decoder's weights come from N(0, 0.02), where DETR and MaskFormer use Xavier: with q and k
    # that small, attention stays uniform and the queries learn to single out objects only very slowly.
    for parameter in model.model.transformer_module.decoder.parameters():
        if parameter.dim() > 1:
            torch.nn.init.xavier_uniform_(parameter)
    return model


def _build_mask2former(recipe: SegmenterRecipe, names: dict):
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation

    config = Mask2FormerConfig(
        backbone_config=backbone_config(recipe.backbone), feature_size=recipe.fpn_feature_size, mask_feature_size=recipe.mask_feature_size,
        encoder_layers=recipe.pixel_decoder_layers, encoder_feedforward_dim=4 * recipe.fpn_feature_size, hidden_dim=recipe.decoder_dim,
        decoder_layers=recipe.decoder_layers, num_attention_heads=recipe.decoder_heads, dim_feedforward=recipe.decoder_ffn,
        num_queries=recipe.num_queries, train_num_points=min(12544, recipe.crop_size**2), **names,
    )
    return Mask2FormerForUniversalSegmentation(config)


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) float RGB in [0, 1] -> the same normalised as the segmenter's processor normalises images
    (ImageNet mean and std), on their device and differentiable: what the ResNet backbones read."""
    mean, std = (torch.tensor(v, device=pixels.device)[:, None, None] for v in (IMAGENET_MEAN, IMAGENET_STD))
    return (pixels.float() - mean) / std


def unit_pixels(images: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 RGB -> (B, 3, H, W) float in [0, 1], what `normalise` takes."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


def normalised_pixels(images: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 RGB -> (B, 3, H, W) floats, `normalise`d."""
    return normalise(unit_pixels(images))


def backbone_config(name: str):
    """The ResNetConfig of a BACKBONES name, every stage an output (MaskFormer's pixel decoder reads them all)."""
    from transformers import ResNetConfig

    stages = [f"stage{i + 1}" for i in range(len(BACKBONES[name]["depths"]))]
    return ResNetConfig(**BACKBONES[name], out_features=stages)


def load_backbone_weights(model, source: str) -> None:
    """Copy a pretrained ResNet (hub id, folder, or a bundled name: the world's) into the segmenter's
    encoder; offline, say what to do. A classifier's head (ResNetForImageClassification) is left out."""
    from transformers import ResNetBackbone

    from .pipeline import quiet_loading
    from .registry import resolve_backbone

    source = resolve_backbone(source)
    try:
        with quiet_loading(load_report=False):  # the report lists the classifier head the backbone leaves out
            pretrained = ResNetBackbone.from_pretrained(source, out_features=model.config.backbone_config.out_features)
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SynthsegError(f"cannot load the pretrained backbone {source!r} ({reason}); download it into the Hugging Face "
                            "cache or pass a local folder as backbone_weights, or train from scratch with --no-pretrained-backbone") from None
    encoder = model.model.pixel_level_module.encoder
    mismatch = encoder.load_state_dict(pretrained.state_dict(), strict=False)
    if mismatch.missing_keys:
        raise SynthsegError(f"backbone weights {source!r} do not fit the configured backbone (missing {mismatch.missing_keys[0]})")


class Segmenter:
    """A trained MaskFormer or Mask2Former with its processor; `predict` gives HW int64 label maps in model labels."""

    def __init__(self, model, processor):
        self.model = model.eval()
        self.processor = processor

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str = "cpu") -> "Segmenter":
        from transformers import AutoImageProcessor, AutoModelForUniversalSegmentation

        directory = Path(directory)
        if not (directory / "config.json").is_file() or not (directory / "preprocessor_config.json").is_file():
            raise SynthsegError(f"{directory}: not a trained segmenter (config.json and preprocessor_config.json expected; "
                                "make one with synthseg train-segmenter)")
        try:
            model = AutoModelForUniversalSegmentation.from_pretrained(directory).to(device)
            processor = AutoImageProcessor.from_pretrained(directory)
        except (OSError, ValueError) as error:
            raise SynthsegError(f"{directory}: corrupt segmenter ({str(error).splitlines()[0]})") from None
        return cls(model, processor)

    @property
    def class_names(self) -> tuple[str, ...]:
        """Label names in label order; label 0 is "background"."""
        labels = self.model.config.id2label
        return tuple(labels[i] for i in range(len(labels)))

    @torch.no_grad()
    def predict(self, image: Image.Image) -> np.ndarray:
        """HW int64 labels of one RGB image at its own size."""
        inputs = self.processor(images=[np.array(image)], return_tensors="pt")
        outputs = self.model(pixel_values=inputs["pixel_values"].to(self.model.device))
        (labels,) = self.processor.post_process_semantic_segmentation(outputs, target_sizes=[(image.height, image.width)])
        return labels.cpu().numpy()
