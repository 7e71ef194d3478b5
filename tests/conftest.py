import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["SYNTHSEG_CACHE"] = tempfile.mkdtemp(prefix="synthseg-cache-")  # measured rates stay out of the user's cache

import pytest
import torch

from synthseg import GroundingConfig, GroundingModule
from synthseg.tiny import tiny_pipeline

torch.set_num_threads(2)

SMALL_GROUNDING = dict(fuse_dim=32, mask_dim=32, hidden_dim=64, num_heads=4, ffn_dim=128, token_patch=2)


@pytest.fixture(scope="session")
def pipe():
    """A seeded tiny SD-architecture pipeline (32x32 images); tests must not modify it."""
    pipe = tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def pipe_dir(pipe, tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-pipeline")
    pipe.save_pretrained(directory)
    return directory


@pytest.fixture
def grounding(pipe):
    torch.manual_seed(0)
    return GroundingModule(GroundingConfig.for_pipeline(pipe, **SMALL_GROUNDING)).eval()


@pytest.fixture
def make_chooser():
    """A factory of per-class, max-pooled implicit captioners of random weights on a pipeline's VAE, as
    `captioner.Recogniser`s of the given names: the judge `synthseg.candidates` chooses with."""
    from synthseg.captioner import CaptionerConfig, ImplicitCaptioner, Recogniser

    def make(pipe, names):
        torch.manual_seed(0)
        captioner = ImplicitCaptioner(CaptionerConfig.for_pipeline(pipe, width=8, hidden_dim=8, objective="classes", pooling="max")).eval()
        return Recogniser(pipe, captioner, names)

    return make


@pytest.fixture
def make_counter():
    """A factory of count judges of random weights over the given names (`synthseg.counter`)."""
    from transformers import ResNetForImageClassification

    from synthseg.counter import CountJudge, count_labels
    from synthseg.segmenter import backbone_config

    def make(names, max_count):
        config = backbone_config("resnet-tiny")
        labels = count_labels(names, max_count)
        config.num_labels, config.id2label = len(labels), dict(enumerate(labels))
        return CountJudge(ResNetForImageClassification(config))

    return make
