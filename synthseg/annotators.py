"""Annotators: an image and the class names of interest in, instances (mask, class, score) out.

The paper labels generated images with an off-the-shelf instance segmenter (COCO Mask R-CNN). Two
implementations share one class, `MaskRCNNAnnotator`:

- `MaskRCNNAnnotator.coco()`: torchvision's COCO-pretrained Mask R-CNN (ResNet-50 FPN v2), through
  torchvision's weights API. Recipe class names map onto COCO's (aeroplane -> airplane, ...).
- `MaskRCNNAnnotator.from_pretrained(dir)`: a saved Mask R-CNN, such as the miniature world's small
  one (`load_annotator("world")`), trained on rendered scenes by `synthseg.train.annotator`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .config import load_config, read_mapping, stamped, unstamped
from .errors import SynthsegError
from .registry import resolve_annotator

# Recipe (PASCAL VOC) names whose COCO category is spelled differently.
COCO_NAME_MAP = {
    "aeroplane": "airplane", "tvmonitor": "tv", "motorbike": "motorcycle", "sofa": "couch",
    "diningtable": "dining table", "pottedplant": "potted plant",
}


@dataclass
class Instance:
    """One detected object. mask: HW bool at the image's size; class_name: the caller's name for it."""

    mask: np.ndarray
    class_name: str
    score: float


@dataclass
class MaskRCNNConfig:
    """A torchvision Mask R-CNN built from scratch (no downloads): the world annotator's shape.

    categories: label names; label id k is categories[k-1] (0 is background).
    image_size: images are resized to this square size inside the model's transform.
    anchor_sizes: one anchor size per FPN level (3 backbone levels + the pooled level).
    mask_channels: width of the mask head's 4 convolutions; on CPU they dominate a training step, so
        a width below fpn_channels buys steps.
    """

    categories: list[str]
    backbone: str = "resnet18"
    fpn_channels: int = 128
    image_size: int = 128
    anchor_sizes: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    mask_channels: int = 64

    def validate(self, source: str) -> None:
        if len(self.anchor_sizes) != 4:
            raise SynthsegError(f"{source}: anchor_sizes needs 4 sizes (FPN levels 2-4 and the pooled level)")


def build_maskrcnn(config: MaskRCNNConfig) -> nn.Module:
    """A small torchvision `MaskRCNN` with random weights, sized for CPU training on 64-128 px scenes.

    ResNet (GroupNorm) -> FPN with `fpn_channels` channels on layers 2-4, thin box and mask heads,
    and fewer RoIs per image than the COCO defaults (64 sampled, 300 kept after NMS).
    """
    from torchvision.models import resnet
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign

    trunk = getattr(resnet, config.backbone)(weights=None, norm_layer=lambda c: nn.GroupNorm(16, c))
    widths = [planes * type(trunk.layer4[-1]).expansion for planes in (128, 256, 512)]
    c = config.fpn_channels
    backbone = BackboneWithFPN(trunk, {"layer2": "0", "layer3": "1", "layer4": "2"}, widths, c)
    anchors = AnchorGenerator(tuple((s,) for s in config.anchor_sizes), ((0.5, 1.0, 2.0),) * len(config.anchor_sizes))
    levels = ["0", "1", "2"]
    classes = len(config.categories) + 1
    return MaskRCNN(
        backbone, min_size=config.image_size, max_size=config.image_size, rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=300, rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=100,
        box_batch_size_per_image=64, box_detections_per_img=20,
        box_roi_pool=MultiScaleRoIAlign(levels, output_size=7, sampling_ratio=2),
        box_head=TwoMLPHead(c * 49, 256), box_predictor=FastRCNNPredictor(256, classes),
        mask_roi_pool=MultiScaleRoIAlign(levels, output_size=14, sampling_ratio=2),
        mask_head=MaskRCNNHeads(c, (config.mask_channels,) * 4, 1),
        mask_predictor=MaskRCNNPredictor(config.mask_channels, config.mask_channels, classes),
    )


class MaskRCNNAnnotator:
    """Annotate images with a torchvision Mask R-CNN.

    model: a torchvision MaskRCNN. categories: its label names (id k -> categories[k-1]).
    name_map: recipe name -> category name, for names spelled differently (COCO_NAME_MAP).
    Detections below `score_threshold` are dropped; mask probabilities above `mask_threshold` are in.
    """

    def __init__(self, model: nn.Module, categories: list[str], *, score_threshold: float = 0.5,
                 mask_threshold: float = 0.5, name_map: dict[str, str] | None = None, config: MaskRCNNConfig | None = None):
        self.model = model.eval()
        self.categories = list(categories)
        self.score_threshold = score_threshold
        self.mask_threshold = mask_threshold
        self.name_map = dict(name_map or {})
        self.config = config

    def category_of(self, class_name: str) -> int:
        """Label id of a recipe class name; a name with no category is refused with the reason."""
        name = self.name_map.get(class_name, class_name)
        if name not in self.categories:
            raise SynthsegError(
                f"the annotator cannot label {class_name!r}: it has no category {name!r} "
                f"(it knows {len([c for c in self.categories if c not in ('__background__', 'N/A')])} categories, "
                f"e.g. {', '.join(self.categories[1:6])}); map it in the recipe or drop the class"
            )
        return self.categories.index(name) + 1

    @classmethod
    def coco(cls, weights: str | None = "DEFAULT", **kwargs) -> "MaskRCNNAnnotator":
        """torchvision's COCO Mask R-CNN (ResNet-50 FPN v2). weights=None gives random weights (tests).

        Offline with no cached weights, this raises a one-line error naming the file to fetch.
        """
        from torchvision.models.detection import MaskRCNN_ResNet50_FPN_V2_Weights, maskrcnn_resnet50_fpn_v2

        spec = MaskRCNN_ResNet50_FPN_V2_Weights.DEFAULT
        categories = spec.meta["categories"][1:]  # drop __background__: id k -> categories[k-1]
        if weights is None:
            model = maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=len(categories) + 1)
        else:
            spec = MaskRCNN_ResNet50_FPN_V2_Weights[weights] if isinstance(weights, str) else weights
            cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(spec.url)
            try:
                model = maskrcnn_resnet50_fpn_v2(weights=spec, weights_backbone=None)
            except (OSError, RuntimeError) as error:
                raise SynthsegError(
                    f"cannot load COCO Mask R-CNN weights: {cached} is not there and {spec.url} cannot be "
                    f"downloaded ({type(error).__name__}); fetch that file where there is network and copy it to {cached}"
                ) from None
        return cls(model, categories, name_map=COCO_NAME_MAP, **kwargs)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write config.json (model config and thresholds) and model.safetensors (floats in fp16, half
        the size; `from_pretrained` loads them back into fp32 parameters)."""
        if self.config is None:
            raise SynthsegError("only annotators built from a MaskRCNNConfig can be saved")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = stamped(dict(model=asdict(self.config), score_threshold=self.score_threshold, mask_threshold=self.mask_threshold), self)
        (directory / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
        state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, directory / "model.safetensors")

    @classmethod
    def from_pretrained(cls, directory: str | Path, **overrides) -> "MaskRCNNAnnotator":
        """Load a folder from `save_pretrained`; `overrides` replace the saved thresholds."""
        directory = Path(directory)
        if not directory.is_dir():
            raise SynthsegError(f"no annotator at {directory}: expected a folder with config.json and model.safetensors")
        meta = unstamped(read_mapping(directory / "config.json"), str(directory / "config.json"))
        config = load_config(MaskRCNNConfig, meta.get("model"), str(directory / "config.json"))
        model = build_maskrcnn(config)
        try:
            model.load_state_dict(load_file(directory / "model.safetensors"))
        except (SafetensorError, OSError, RuntimeError) as error:
            raise SynthsegError(f"{directory / 'model.safetensors'}: missing, corrupt or not matching config.json ({type(error).__name__})") from None
        thresholds = {k: meta[k] for k in ("score_threshold", "mask_threshold") if k in meta}
        return cls(model, config.categories, config=config, **{**thresholds, **overrides})

    @torch.no_grad()
    def annotate(self, images: list, class_names: list[list[str]]) -> list[list[Instance]]:
        """Instances of the named classes in each image, best score first.

        images: HW3 uint8 arrays or PIL images. class_names[i]: the classes wanted in image i.
        """
        wanted = [{self.category_of(n): n for n in names} for names in class_names]
        device = next(self.model.parameters()).device
        batch = [torch.from_numpy(np.array(im, dtype=np.float32)).permute(2, 0, 1).div(255).to(device) for im in images]
        results = []
        for output, lookup in zip(self.model(batch), wanted):
            keep = (output["scores"] >= self.score_threshold).cpu().numpy()
            labels = output["labels"].cpu().numpy()
            masks = (output["masks"][:, 0] > self.mask_threshold).cpu().numpy()
            scores = output["scores"].cpu().numpy()
            results.append([
                Instance(masks[i], lookup[int(labels[i])], float(scores[i]))
                for i in np.flatnonzero(keep) if int(labels[i]) in lookup and masks[i].any()
            ])
        return results


def load_annotator(spec: str, **thresholds) -> MaskRCNNAnnotator:
    """A bundled name ("world"), "coco" (torchvision's COCO Mask R-CNN) or a saved folder."""
    if spec == "coco":
        return MaskRCNNAnnotator.coco(**thresholds)
    return MaskRCNNAnnotator.from_pretrained(resolve_annotator(spec), **thresholds)
