"""Tiny random-weight diffusers text-to-image pipelines in the hub layout, built on the spot (a few MB, seconds).

The classes the panorama backend supports, with toy sizes in the manner of diffusers' own fast tests: Stable
Diffusion (CLIP text encoder of width 32, U-Net blocks (32, 64)), SDXL (two CLIP text encoders, the second with a
projection; a U-Net with SDXL's text-and-time embedding) and Z-Image (a 2-layer Qwen3 text encoder of width 16, a
2-layer single-stream transformer of width 32 on 2x2 patches). Every VAE is a 3-channel AutoencoderKL with blocks
(32, 64): latent scale factor 2. Tokenizers come from the tiny vocab.json/merges.txt of tiny_ldm3d.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from tiny_ldm3d import write_tokenizer_files

KINDS = ("sd", "sdxl", "z-image")
CLASSES = {"sd": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline", "z-image": "ZImagePipeline"}


def _vocab(folder: Path) -> Path:
    scratch = folder.parent / f"{folder.name}-vocab"
    write_tokenizer_files(scratch)
    return scratch


def _clip_tokenizer(scratch: Path) -> Any:
    from transformers import CLIPTokenizer

    return CLIPTokenizer(str(scratch / "vocab.json"), str(scratch / "merges.txt"), model_max_length=77)


def _clip_config(tokenizer: Any, **extra: Any) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                          pad_token_id=1, **extra)


def _vae(**extra: Any) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(32, 64), latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         **extra)


def _scheduler() -> Any:
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)


def _sd(scratch: Path) -> Any:
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer = _clip_tokenizer(scratch)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8)
    return StableDiffusionPipeline(vae=_vae(), text_encoder=CLIPTextModel(_clip_config(tokenizer)),
                                   tokenizer=tokenizer, unet=unet, scheduler=_scheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def _sdxl(scratch: Path) -> Any:
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = _clip_tokenizer(scratch)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64)  # 80 = 6 time ids × 8 + the second encoder's projection (32)
    return StableDiffusionXLPipeline(
        vae=_vae(), text_encoder=CLIPTextModel(_clip_config(tokenizer)), tokenizer=tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(tokenizer, projection_dim=32)),
        tokenizer_2=_clip_tokenizer(scratch), unet=unet, scheduler=_scheduler())


def _z_image(scratch: Path) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen2Tokenizer, Qwen3Config, Qwen3Model

    tokenizer = Qwen2Tokenizer(str(scratch / "vocab.json"), str(scratch / "merges.txt"), unk_token="!",
                               pad_token="<|endoftext|>", eos_token="<|endoftext|>")
    tokenizer.chat_template = "{% for message in messages %}{{ message['content'] }}{% endfor %}"
    text_encoder = Qwen3Model(Qwen3Config(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=24,
                                          num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                          head_dim=8, max_position_embeddings=640))
    transformer = ZImageTransformer2DModel(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=32,
                                           n_layers=2, n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=16,
                                           axes_dims=[8, 4, 4], axes_lens=[640, 64, 64])
    return ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True),
                          vae=_vae(scaling_factor=0.3611, shift_factor=0.1159), text_encoder=text_encoder,
                          tokenizer=tokenizer, transformer=transformer)


def build(kind: str, folder: Path, seed: int = 0) -> Path:
    """Write a tiny ``sd``, ``sdxl`` or ``z-image`` pipeline into ``folder`` (hub layout) and return it."""
    builders = {"sd": _sd, "sdxl": _sdxl, "z-image": _z_image}
    torch.manual_seed(seed)
    scratch = _vocab(folder)
    try:
        builders[kind](scratch).save_pretrained(folder)
    finally:
        shutil.rmtree(scratch)
    return folder


def denoiser(pipe: Any) -> torch.nn.Module:
    return pipe.transformer if hasattr(pipe, "transformer") else pipe.unet
