"""Replay triplets: the capture step's denoiser inputs are stored, and training recomputes the features
with one denoiser call. They must be the features the generation captured."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from test_triplets import FakeAnnotator, recipe
from typer.testing import CliRunner

from synthseg import SynthsegError
from synthseg.cli import app
from synthseg.generate import capture_pass
from synthseg.plan import triplet_bytes
from synthseg.tiny import tiny_flux_pipeline, tiny_sdxl_pipeline
from synthseg.triplets import TripletShards, make_triplets, storage_kind

T5 = Path(__file__).parent / "fixtures" / "t5-tiny.model"


def items(directory, pipe=None):
    """Every triplet of a folder in one fixed order, replayed in one batch of the generation's size."""
    shards = TripletShards(directory, pipe=pipe)
    shards.replay_batch = shards.recipe.batch_size
    return list(shards)


def assert_same_triplets(a, b, tolerance=0.0):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x["masks"], y["masks"]) and torch.equal(x["queries"], y["queries"])
        for name in ("features", "attention"):
            assert len(x[name]) == len(y[name])
            for u, v in zip(x[name], y[name]):
                if tolerance:
                    assert (u - v).abs().max() <= tolerance * u.abs().max()
                else:
                    assert torch.equal(u, v)
        if tolerance:
            assert (x["class_attention"] - y["class_attention"]).abs().max() <= tolerance * x["class_attention"].abs().max()
        else:
            assert torch.equal(x["class_attention"], y["class_attention"])


@pytest.mark.parametrize("family", ["sd", "sdxl", "flux"])
def test_replayed_features_are_the_captured_ones_exactly_in_fp32(pipe, family, tmp_path):
    model = {"sd": pipe, "sdxl": tiny_sdxl_pipeline(), "flux": tiny_flux_pipeline(T5)}[family]
    model.set_progress_bar_config(disable=True)
    # no CFG and one generation batch per shard: the replay runs the very batch the generation ran
    kw = dict(count=4, shard_size=4, batch_size=4, guidance_scale=1.0, feature_dtype="float32", cross_attention=family == "sd")
    make_triplets(model, FakeAnnotator(), recipe(storage="features", **kw), tmp_path / "f")
    make_triplets(model, FakeAnnotator(), recipe(storage="replay", **kw), tmp_path / "r")
    data = load_file(tmp_path / "r" / "shard-00000.safetensors")
    assert not any(k.startswith(("features.", "attention.", "class_attention")) for k in data)
    assert_same_triplets(items(tmp_path / "f"), items(tmp_path / "r", model))
    with pytest.raises(SynthsegError, match="replay triplets.*pass that pipeline"):
        TripletShards(tmp_path / "r")


def test_replay_with_cfg_fp16_and_re_encoded_prompts_stays_within_tolerance(pipe, tmp_path):
    """With CFG the generation ran a doubled batch: matrix kernels chosen by row count differ in the last
    bits (1e-6). Stored in fp16, the latent and text states are rounded: 2e-3 of the features' range."""
    kw = dict(count=4, shard_size=4, batch_size=2, feature_dtype="float32")
    make_triplets(pipe, FakeAnnotator(), recipe(storage="features", **kw), tmp_path / "f")
    make_triplets(pipe, FakeAnnotator(), recipe(storage="replay", **kw), tmp_path / "r32")
    make_triplets(pipe, FakeAnnotator(), recipe(storage="replay", **{**kw, "feature_dtype": "float16"}), tmp_path / "r16")
    make_triplets(pipe, FakeAnnotator(), recipe(storage="replay", replay_text="prompt", **kw), tmp_path / "rp")
    cached = items(tmp_path / "f")
    assert_same_triplets(cached, items(tmp_path / "r32", pipe), tolerance=1e-5)
    assert_same_triplets(cached, items(tmp_path / "rp", pipe), tolerance=1e-5)
    fp16 = items(tmp_path / "r16", pipe)
    for x, y in zip(cached, fp16):
        assert all((u - v).abs().max() <= 2e-3 * u.abs().max() for u, v in zip(x["features"], y["features"]))
    assert not any(k.endswith("encoder_hidden_states") for k in load_file(tmp_path / "rp" / "shard-00000.safetensors"))
    sizes = {name: TripletShards(tmp_path / name, pipe=pipe).bytes_per_triplet() for name in ("f", "r32", "r16", "rp")}
    assert sizes["rp"] < sizes["r16"] < sizes["r32"]


def test_storage_auto_replays_above_the_threshold_and_the_plan_says_so(pipe, pipe_dir, tmp_path):
    assert storage_kind(pipe, recipe()) == "features"  # the tiny model's features are a few KB
    assert storage_kind(pipe, recipe(storage="replay")) == "replay"
    for storage in ("features", "replay"):
        make_triplets(pipe, FakeAnnotator(), recipe(count=4, shard_size=4, storage=storage), tmp_path / storage)
        estimate, kind = triplet_bytes(str(pipe_dir), 2, False, storage=storage)
        actual = TripletShards(tmp_path / storage, pipe=pipe).bytes_per_triplet()
        assert kind == storage and abs(estimate - actual) < 0.1 * actual + 1000  # plus headers and records


def test_train_grounding_reads_replay_triplets_through_the_cli(pipe, pipe_dir, tmp_path):
    make_triplets(pipe, FakeAnnotator(), recipe(count=4, shard_size=4, storage="replay"), tmp_path / "t")
    (tmp_path / "g.yaml").write_text(
        "split: voc-15-5\nmodel: {fuse_dim: 16, mask_dim: 16, hidden_dim: 32, num_heads: 4, ffn_dim: 64, token_patch: 2}\n"
        "train: {steps: 2, batch_size: 2, warmup_steps: 1, checkpoint_every: 2}\n")
    args = ["train-grounding", "--recipe", str(tmp_path / "g.yaml"), "--triplets", str(tmp_path / "t"), "--workdir", str(tmp_path / "w"),
            "--out", str(tmp_path / "g"), "--model", str(pipe_dir), "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "g" / "config.json").is_file()


def test_older_shards_with_unpacked_masks_still_load(pipe, tmp_path):
    make_triplets(pipe, FakeAnnotator(), recipe(count=4, shard_size=4, storage="features"), tmp_path / "t")
    new = items(tmp_path / "t")
    shard = tmp_path / "t" / "shard-00000.safetensors"
    data = load_file(shard)
    packed = data.pop("masks_packed").numpy()
    data["masks"] = torch.from_numpy(np.unpackbits(packed, axis=-1, count=32))
    save_file(data, shard)  # as written before masks were packed, and before layout.json named its storage
    layout = json.loads((tmp_path / "t" / "layout.json").read_text())
    (tmp_path / "t" / "layout.json").write_text(json.dumps({k: v for k, v in layout.items() if k != "storage"}))
    assert_same_triplets(new, items(tmp_path / "t"))
    assert new[0]["masks"].shape == (2, 32, 32) and set(new[0]["masks"].unique().tolist()) <= {0.0, 1.0}


def test_recorded_inputs_hold_the_conditional_half(pipe):
    run = capture_pass(pipe, ["a photograph of a dog", "a photograph of a cat"], [["dog"], ["cat"]], [0, 1], guidance_scale=2.0,
                       num_inference_steps=2, record_inputs=True)
    inputs = run.features.inputs
    assert set(inputs) == {"sample", "timestep", "encoder_hidden_states"}
    assert inputs["sample"].shape[0] == 2 and torch.equal(inputs["encoder_hidden_states"], run.prompt_embeds)
    assert inputs["timestep"].tolist() == [run.step.timestep] * 2
