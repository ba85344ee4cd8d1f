"""Tiny random-weight diffusers text-to-image pipelines in the hub layout, built on the spot (a few MB, seconds).

The classes the panorama backend supports, with toy sizes in the manner of diffusers' own fast tests: Stable
Diffusion (CLIP text encoder of width 32, U-Net blocks (32, 64)), SDXL (two CLIP text encoders, the second with a
projection; a U-Net with SDXL's text-and-time embedding), Z-Image (a 2-layer Qwen3 text encoder of width 16, a
2-layer single-stream transformer of width 32 on 2x2 patches), FLUX (CLIP and a 2-layer T5 encoder of width 32; a
transformer of width 32 with one double- and one single-stream block and FLUX.1-dev's guidance embedding) and
Qwen-Image (a 2-layer Qwen2.5-VL text encoder of width 16 with a 1-block vision tower; a 1-layer transformer of
width 32). Every VAE has latent scale factor 2: a 3-channel AutoencoderKL with blocks (32, 64), for Qwen-Image a
2-level AutoencoderKLQwenImage of base width 16. Tokenizers come from the tiny vocab.json/merges.txt of tiny_ldm3d
(T5's: a Unigram vocabulary of the same words, made in code).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from tiny_ldm3d import WORDS, write_tokenizer_files

KINDS = ("sd", "sdxl", "z-image", "flux", "qwen-image")
CLASSES = {"sd": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline", "z-image": "ZImagePipeline",
           "flux": "FluxPipeline", "qwen-image": "QwenImagePipeline"}


def _vocab(folder: Path) -> Path:
    scratch = folder.parent / f"{folder.name}-vocab"
    write_tokenizer_files(scratch)
    return scratch


def _clip_tokenizer(scratch: Path) -> Any:
    from transformers import CLIPTokenizer

    return CLIPTokenizer(str(scratch / "vocab.json"), str(scratch / "merges.txt"), model_max_length=77)


def _qwen_tokenizer(scratch: Path) -> Any:
    from transformers import Qwen2Tokenizer

    return Qwen2Tokenizer(str(scratch / "vocab.json"), str(scratch / "merges.txt"), unk_token="!",
                          pad_token="<|endoftext|>", eos_token="<|endoftext|>")


def _t5_tokenizer() -> Any:
    """T5's Unigram tokenizer over the tiny words and their letters (no sentencepiece file, no sentinels)."""
    from transformers import T5TokenizerFast

    letters = sorted(set("".join(WORDS)))
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0),
             *((letter, -5.0) for letter in letters), *((f"\u2581{word}", -1.0) for word in WORDS)]
    return T5TokenizerFast(vocab=vocab, extra_ids=0)


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
    from transformers import Qwen3Config, Qwen3Model

    tokenizer = _qwen_tokenizer(scratch)
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


def _flux(scratch: Path) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    tokenizer, tokenizer_2 = _clip_tokenizer(scratch), _t5_tokenizer()
    text_encoder_2 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_2), d_model=32, d_kv=8, d_ff=37, num_layers=2,
                                             num_heads=4, pad_token_id=0, eos_token_id=1))
    transformer = FluxTransformer2DModel(in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                                         num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                                         guidance_embeds=True, axes_dims_rope=(4, 6, 6))
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True),
                        vae=_vae(scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                                 use_post_quant_conv=False),
                        text_encoder=CLIPTextModel(_clip_config(tokenizer)), tokenizer=tokenizer,
                        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer)


def _qwen_image(scratch: Path) -> Any:
    from diffusers import (AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline,
                           QwenImageTransformer2DModel)
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tokenizer = _qwen_tokenizer(scratch)
    text = {"vocab_size": len(tokenizer), "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 640, "bos_token_id": 1,
            "eos_token_id": 1, "pad_token_id": 1,  # mrope_section: the rotary half of head_dim 8 as (t, h, w)
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 1, 1]}}
    vision = {"depth": 1, "hidden_size": 16, "intermediate_size": 24, "num_heads": 2, "out_hidden_size": 16,
              "fullatt_block_indexes": [0]}
    text_encoder = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(text_config=text, vision_config=vision))
    transformer = QwenImageTransformer2DModel(in_channels=16, out_channels=4, num_layers=1, attention_head_dim=16,
                                              num_attention_heads=2, joint_attention_dim=16, axes_dims_rope=(8, 4, 4))
    vae = AutoencoderKLQwenImage(base_dim=16, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[False],
                                 latents_mean=[0.05, -0.1, 0.1, 0.0], latents_std=[1.2, 0.9, 1.1, 1.0])  # not 0, 1:
    # the per-channel normalisation has something to get right
    return QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), vae=vae,
                             text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer)


def build(kind: str, folder: Path, seed: int = 0) -> Path:
    """Write a tiny pipeline of ``kind`` (KINDS) into ``folder`` (hub layout) and return it."""
    builders = {"sd": _sd, "sdxl": _sdxl, "z-image": _z_image, "flux": _flux, "qwen-image": _qwen_image}
    torch.manual_seed(seed)
    scratch = _vocab(folder)
    try:
        builders[kind](scratch).save_pretrained(folder)
    finally:
        shutil.rmtree(scratch)
    return folder


def denoiser(pipe: Any) -> torch.nn.Module:
    return pipe.transformer if hasattr(pipe, "transformer") else pipe.unet
