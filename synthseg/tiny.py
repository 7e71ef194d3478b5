"""Stable Diffusion pipelines built from configs with random weights: for tests and speed runs.

Like diffusers' `get_dummy_components`, but the tokenizer is the real CLIP BPE vocabulary, built from
the `bpe_simple_vocab_16e6.txt.gz` that the open-clip-torch wheel ships (install it with --no-deps).
`sd15_pipeline` has Stable Diffusion 1.5's exact architecture, so its speed is SD 1.5's speed.
"""

from __future__ import annotations

import gzip
import importlib.metadata

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from .errors import SynthsegError

# Stable Diffusion 1.x's noise schedule, as in runwayml/stable-diffusion-v1-5's scheduler config.
SD_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
    set_alpha_to_one=False, steps_offset=1, num_train_timesteps=1000,
)


def clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """CLIP's real BPE tokenizer (49,408 tokens), built from open-clip-torch's vocabulary file."""
    try:
        bpe = next(f for f in importlib.metadata.files("open-clip-torch") if f.name == "bpe_simple_vocab_16e6.txt.gz")
    except (importlib.metadata.PackageNotFoundError, StopIteration, TypeError):
        raise SynthsegError(
            "the CLIP vocabulary comes from open-clip-torch: run `pip install --no-deps open-clip-torch`"
        ) from None
    lines = gzip.open(bpe.locate()).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges], model_max_length=model_max_length)


def _pipeline(unet: UNet2DConditionModel, vae: AutoencoderKL, text: CLIPTextConfig) -> StableDiffusionPipeline:
    return StableDiffusionPipeline(
        unet=unet.eval(),
        vae=vae.eval(),
        text_encoder=CLIPTextModel(text).eval(),
        tokenizer=clip_tokenizer(text.max_position_embeddings),
        scheduler=DDIMScheduler(**SD_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def tiny_pipeline(seed: int = 0, sample_size: int = 16) -> StableDiffusionPipeline:
    """A seeded SD-architecture pipeline small enough for CPU tests: 3 UNet levels, f=2 VAE.

    Images are `2 * sample_size` pixels square (32 by default).
    """
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=2 * sample_size,
    )
    text = CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )
    return _pipeline(unet, vae, text)


def sd15_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """Stable Diffusion 1.5's UNet, VAE and CLIP ViT-L/14 text encoder, from their configs, random weights."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        sample_size=512,
    )
    text = CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
        bos_token_id=49406, eos_token_id=49407, pad_token_id=1, projection_dim=768,
    )
    return _pipeline(unet, vae, text)
