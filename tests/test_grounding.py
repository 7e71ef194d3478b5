import json

import pytest
import torch
from conftest import SMALL_GROUNDING

from synthseg import GroundingConfig, GroundingModule, SynthsegError, grounding_loss
from synthseg.tiny import tiny_pipeline


def fake_inputs(config, batch=2, queries=2, latent=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    features = [torch.randn(batch, c, latent // s, latent // s, generator=g) for c, s in zip(config.feature_channels, config.feature_strides)]
    text = torch.randn(batch, queries, config.text_dim, generator=g)
    return features, text, torch.ones(batch, queries, dtype=torch.bool)


def test_forward_shapes_and_backward(grounding):
    features, text, valid = fake_inputs(grounding.config)
    logits = grounding(features, text, valid)
    assert logits.shape == (2, 2, 16, 16)
    grounding_loss(logits, torch.rand(2, 2, 32, 32).round(), valid).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in grounding.parameters())


def test_padding_queries_and_other_images_do_not_leak(grounding):
    features, text, valid = fake_inputs(grounding.config, batch=2, queries=3)
    valid[0, 2] = False
    full = grounding(features, text, valid)
    trimmed = grounding([f[:1] for f in features], text[:1, :2], valid[:1, :2])
    torch.testing.assert_close(full[0, :2], trimmed[0], atol=1e-5, rtol=1e-4)
    text2 = text.clone()
    text2[0, 2] = 100.0  # padding content must not matter
    torch.testing.assert_close(grounding(features, text2, valid)[0, :2], full[0, :2], atol=1e-5, rtol=1e-4)


def test_save_load_round_trip_gives_identical_outputs(grounding, tmp_path):
    grounding.save_pretrained(tmp_path / "g")
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["config.json", "model.safetensors"]
    loaded = GroundingModule.from_pretrained(tmp_path / "g")
    assert loaded.config == grounding.config
    features, text, valid = fake_inputs(grounding.config)
    assert torch.equal(grounding(features, text, valid), loaded(features, text, valid))


def test_a_few_steps_on_a_fixed_batch_lower_the_loss(grounding):
    features, text, valid = fake_inputs(grounding.config)
    targets = torch.zeros(2, 2, 32, 32)
    targets[0, 0, :16] = 1
    targets[0, 1, 16:] = 1
    targets[1, 0, :, :10] = 1
    targets[1, 1, 8:24, 8:24] = 1
    optimizer = torch.optim.Adam(grounding.train().parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        loss = grounding_loss(grounding(features, text, valid), targets, valid)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_missing_classes_give_no_loss():
    logits = torch.randn(2, 2, 8, 8)
    targets = torch.rand(2, 2, 8, 8).round()
    valid = torch.ones(2, 2, dtype=torch.bool)
    missing = torch.tensor([[False, True], [False, False]])
    loss = grounding_loss(logits, targets, valid, missing)
    changed = targets.clone()
    changed[0, 1] = 1 - changed[0, 1]
    assert grounding_loss(logits, changed, valid, missing) == loss
    assert grounding_loss(logits, changed, valid) != grounding_loss(logits, targets, valid)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean((-2, -1))
    torch.testing.assert_close(loss, expected[~missing].mean())
    all_missing = grounding_loss(logits.requires_grad_(), targets, valid, torch.ones(2, 2, dtype=torch.bool))
    assert all_missing.item() == 0.0
    all_missing.backward()


def test_load_errors(grounding, tmp_path):
    with pytest.raises(SynthsegError, match="no grounding module at"):
        GroundingModule.from_pretrained(tmp_path / "nowhere")
    folder = tmp_path / "g"
    grounding.save_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(SynthsegError, match="corrupt safetensors file"):
        GroundingModule.from_pretrained(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(SynthsegError, match="model.safetensors: file not found"):
        GroundingModule.from_pretrained(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(SynthsegError, match="corrupt json file"):
        GroundingModule.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({"feature_channels": [1]}))
    with pytest.raises(SynthsegError, match="missing GroundingConfig field"):
        GroundingModule.from_pretrained(folder)


def test_weights_that_do_not_match_the_config(grounding, tmp_path):
    grounding.save_pretrained(tmp_path / "g")
    config = json.loads((tmp_path / "g" / "config.json").read_text())
    (tmp_path / "g" / "config.json").write_text(json.dumps({**config, "mask_dim": 16}))
    with pytest.raises(SynthsegError, match="weights do not match config.json"):
        GroundingModule.from_pretrained(tmp_path / "g")


def test_config_validation():
    base = dict(feature_channels=[32, 64], feature_strides=[1, 2], text_dim=32)
    with pytest.raises(SynthsegError, match="unknown GroundingConfig field"):
        GroundingConfig.for_pipeline(tiny_pipeline(), bogus=1)
    with pytest.raises(SynthsegError, match="not divisible by num_heads"):
        GroundingModule(GroundingConfig(**base, hidden_dim=30, num_heads=4))
    with pytest.raises(SynthsegError, match="equal length"):
        GroundingModule(GroundingConfig(**{**base, "feature_strides": [1]}))
    with pytest.raises(SynthsegError, match="must be positive"):
        GroundingModule(GroundingConfig(**base, num_layers=0))


def test_config_that_does_not_fit_the_pipeline(pipe):
    config = GroundingConfig.for_pipeline(pipe, **SMALL_GROUNDING)
    config.check_pipeline(pipe)
    wrong_channels = GroundingConfig(**{**config.__dict__, "feature_channels": [c * 2 for c in config.feature_channels]})
    with pytest.raises(SynthsegError, match="expects feature channels"):
        wrong_channels.check_pipeline(pipe)
    wrong_text = GroundingConfig(**{**config.__dict__, "text_dim": 768})
    with pytest.raises(SynthsegError, match="expects text_dim 768, but the pipeline.s text states have 32"):
        wrong_text.check_pipeline(pipe)


def test_cross_attention_inputs_vpd(pipe, tmp_path):
    from conftest import SMALL_GROUNDING

    from synthseg import generate_grounded
    from synthseg.capture import unet_attention_strides

    torch.manual_seed(0)
    config = GroundingConfig.for_pipeline(pipe, cross_attention=True, **SMALL_GROUNDING)
    assert config.cross_attention_strides == unet_attention_strides(pipe.unet) and config.text_tokens == pipe.tokenizer.model_max_length
    assert config.input_channels[-1] == config.text_tokens and len(config.input_strides) == len(config.input_channels)
    module = GroundingModule(config).eval()
    result = generate_grounded(pipe, module, ["a photograph of a dog and a cat"], [["dog", "cat"]], [0], num_inference_steps=2,
                               guidance_scale=2.0, return_features=True)
    from synthseg.grounding import grounding_inputs

    maps = grounding_inputs(result.features, config)[len(config.feature_channels):]
    latent = pipe.unet.config.sample_size
    assert [m.shape[-2:] for m in maps] == [(latent // s, latent // s) for s in config.cross_attention_strides]
    assert all(m.shape[1] == config.text_tokens for m in maps)
    assert torch.allclose(maps[0].sum(1), torch.ones(1), atol=1e-4)  # softmax over tokens, averaged
    module.save_pretrained(tmp_path / "m")
    assert GroundingModule.from_pretrained(tmp_path / "m").config == config
    plain = GroundingModule(GroundingConfig.for_pipeline(pipe, **SMALL_GROUNDING))
    assert sum(p.numel() for p in module.parameters()) > sum(p.numel() for p in plain.parameters())


def test_attention_pooling_reads_each_querys_own_map(pipe, tmp_path):
    torch.manual_seed(0)
    config = GroundingConfig.for_pipeline(pipe, attention_pooling=True, **SMALL_GROUNDING)
    module = GroundingModule(config).eval()
    features, text, valid = fake_inputs(config)
    attention = torch.rand(2, 2, 16, 16)
    with pytest.raises(SynthsegError, match="pass class_attention"):
        module(features, text, valid)
    logits = module(features, text, valid, attention)
    torch.testing.assert_close(module(features, text, valid, 3 * attention), logits)  # weights are normalised
    swapped = module(features, text.flip(1), valid, attention.flip(1))
    torch.testing.assert_close(swapped, logits.flip(1), atol=1e-5, rtol=1e-4)  # a map belongs to its own query
    moved = attention.clone()
    moved[:, 0] = 0
    moved[:, 0, :4, :4] = 1
    assert not torch.allclose(module(features, text, valid, moved)[:, 0], logits[:, 0], atol=1e-3)
    module.save_pretrained(tmp_path / "m")
    loaded = GroundingModule.from_pretrained(tmp_path / "m")
    assert loaded.config.attention_pooling and torch.equal(loaded(features, text, valid, attention), logits)
    plain = GroundingModule(GroundingConfig.for_pipeline(pipe, **SMALL_GROUNDING)).eval()
    assert torch.equal(plain(features, text, valid, attention), plain(features, text, valid))  # ignored without the option
