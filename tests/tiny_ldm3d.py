"""Tiny random-weight LDM3D checkpoints in the hub layout, built on the spot (a few MB, seconds).

Same classes and folder structure as Intel/ldm3d*, with toy sizes: a CLIP tokenizer from a
small vocab.json/merges.txt, a 2-layer CLIP text encoder (width 32), a U-Net with blocks
(32, 64) and a KL autoencoder with 6 or 4 channels and latent scale factor 2.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

WORDS = ("a", "room", "forest", "misty", "at", "dawn", "the", "of", "sunlit", "courtyard", "panorama", "360",
         "degree", "desert", "night")


def write_tokenizer_files(folder: Path) -> None:
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for char in sorted(set("".join(WORDS))):
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    for word in WORDS:
        vocab.setdefault(word + "</w>", len(vocab))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")


def build(model: Path, vae_channels: int = 6, unet_in_channels: int = 4, text_width: int = 32, seed: int = 0,
          pipeline: str = "StableDiffusionLDM3DPipeline") -> Path:
    """Write a tiny LDM3D into the folder ``model`` (hub layout) and return it; ``pipeline`` is the index's
    class name (``StableDiffusionUpscaleLDM3DPipeline`` makes an ldm3d-sr-like index)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    scratch = model.parent / f"{model.name}-vocab"
    write_tokenizer_files(scratch)
    tokenizer = CLIPTokenizer(str(scratch / "vocab.json"), str(scratch / "merges.txt"), model_max_length=77)
    shutil.rmtree(scratch)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=text_width, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=unet_in_channels,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, attention_head_dim=8)
    vae = AutoencoderKL(
        in_channels=vae_channels, out_channels=vae_channels, block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    for name, part in (("tokenizer", tokenizer), ("text_encoder", text_encoder), ("unet", unet), ("vae", vae),
                       ("scheduler", scheduler)):
        part.save_pretrained(model / name)
    (model / "model_index.json").write_text(json.dumps({
        "_class_name": pipeline, "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "safety_checker": [None, None], "feature_extractor": [None, None], "requires_safety_checker": False}))
    return model


def to_bin(model: Path) -> Path:
    """Turn the saved weights into PyTorch .bin files only, as older hub repositories ship them."""
    from safetensors.torch import load_file

    for weights in sorted(model.glob("*/*.safetensors")):
        name = "pytorch_model.bin" if weights.name == "model.safetensors" else weights.with_suffix(".bin").name
        torch.save(load_file(weights), weights.with_name(name))
        weights.unlink()
    return model
