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
