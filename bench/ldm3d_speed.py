"""LDM3D speed: our backend vs the stock diffusers LDM3D pipeline, full-size SD-1.x shapes.

    python bench/ldm3d_speed.py [--device cpu|cuda] [--dtype fp32|fp16|bf16] [--steps 3]
                                [--sizes 512x512,1024x512] [--vae-channels 4] [--compile]

Both run the same randomly initialised weights (U-Net 860 M parameters as SD-1.x, CLIP ViT-L
text encoder, KL autoencoder with 4 or 6 channels), the same scheduler (DDIM), guidance 7.5
(batch 2 per U-Net pass) and the same seed. The stock pipeline holds its own copy of the
modules, placed as its users do (`pipe.to(device, dtype)`), so our placement (channels_last,
VAE precision, compilation) does not leak into it. Per-step time is taken between consecutive step
callbacks (with a device synchronisation in the callback on CUDA), whole-image time from the
call to RGB + depth on the host. Achieved TFLOP/s use ≈ 0.8 TFLOP per U-Net forward of one
64×64 latent, scaled by batch and latent area.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from generator.backends.ldm3d import LDM3DBackend  # noqa: E402
from td_bridge.params import validate_generation  # noqa: E402

UNET_TFLOP_64 = 0.8  # one U-Net forward, one 64×64 latent (SD-1.x)


def build_modules(vae_channels: int, **unet_options):
    """Tokenizer, CLIP ViT-L text encoder, SD-1.x U-Net (``unet_options`` override its config), KL autoencoder with
    ``vae_channels`` channels and the SD-1.x DDIM scheduler, all randomly initialised."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    import tiny_ldm3d

    folder = Path(tempfile.mkdtemp())
    tiny_ldm3d.write_tokenizer_files(folder)
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                                num_hidden_layers=12, num_attention_heads=12,
                                                max_position_embeddings=77))
    unet = UNet2DConditionModel(**{
        "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
        "block_out_channels": (320, 640, 1280, 1280),
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, "cross_attention_dim": 768,
        "attention_head_dim": 8, **unet_options})
    vae = AutoencoderKL(in_channels=vae_channels, out_channels=vae_channels, block_out_channels=(128, 256, 512, 512),
                        layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, sample_size=512)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    return tokenizer, text_encoder, unet, vae, scheduler


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def summarise(step_marks: list[float], total: float, steps: int, width: int, height: int) -> dict:
    per_step = np.diff(step_marks)
    tflop = UNET_TFLOP_64 * 2 * (width * height) / (512 * 512)  # batch 2 (guidance), area relative to 64×64 latents
    p50 = float(np.median(per_step)) if len(per_step) else float("nan")
    return {"step_p50_s": round(p50, 4), "whole_image_s": round(total, 3), "steps": steps,
            "unet_tflops_per_s": round(tflop / p50, 2) if len(per_step) else None}


def timed_frame(backend: LDM3DBackend, **values) -> tuple[float, list[float]]:
    """(seconds for one whole frame of our backend, each step's end in seconds from the start)."""
    params = validate_generation({"prompt": "a misty forest at dawn", "seed": 1, "seamless": False, **values})
    marks: list[float] = []

    def progress(step: int, total: int) -> None:
        sync(backend.device)
        marks.append(time.perf_counter())

    sync(backend.device)
    start = time.perf_counter()
    out = backend.generate(params, progress, lambda: False)
    total = time.perf_counter() - start
    assert out.rgb.shape == (params["height"], params["width"], 3) and out.depth.dtype == np.uint16
    return total, [mark - start for mark in marks]


def bench_ours(backend: LDM3DBackend, width: int, height: int, steps: int) -> dict:
    total, marks = timed_frame(backend, steps=steps, width=width, height=height, guidance=7.5)
    return summarise(marks, total, steps, width, height)


def bench_stock(pipe, device: torch.device, width: int, height: int, steps: int) -> dict:
    marks: list[float] = []

    def on_step(pipeline, step, timestep, kwargs):
        sync(device)
        marks.append(time.perf_counter())
        return kwargs

    sync(device)
    start = time.perf_counter()
    out = pipe("a misty forest at dawn", num_inference_steps=steps, guidance_scale=7.5, height=height, width=width,
               output_type="np", generator=torch.Generator("cpu").manual_seed(1), callback_on_step_end=on_step)
    total = time.perf_counter() - start
    assert out.rgb.shape[1:3] == (height, width)
    return summarise(marks, total, steps, width, height)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--sizes", default="512x512,1024x512")
    parser.add_argument("--vae-channels", type=int, default=4, choices=[4, 6])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per size first")
    parser.add_argument("--stock-first", action="store_true", help="time the stock pipeline before ours")
    args = parser.parse_args()

    from diffusers import DDIMScheduler, StableDiffusionLDM3DPipeline

    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    tokenizer, text_encoder, unet, vae, scheduler = build_modules(args.vae_channels)
    stock_text_encoder, stock_unet, stock_vae = copy.deepcopy((text_encoder, unet, vae))
    ours = LDM3DBackend("random-sd1", tokenizer, text_encoder, unet, vae, scheduler.config, device, dtype)
    ours._place(args.compile)
    stock = StableDiffusionLDM3DPipeline(vae=stock_vae, text_encoder=stock_text_encoder, tokenizer=tokenizer,
                                         unet=stock_unet, scheduler=DDIMScheduler.from_config(scheduler.config),
                                         safety_checker=None, feature_extractor=None, image_encoder=None,
                                         requires_safety_checker=False)
    stock.to(device, dtype)
    stock.set_progress_bar_config(disable=True)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device {device} ({device_name}), dtype {args.dtype}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, VAE {args.vae_channels} channels, compile {args.compile}")
    results = {}
    for size in args.sizes.split(","):
        width, height = (int(x) for x in size.lower().split("x"))
        for _ in range(args.warmup):
            bench_ours(ours, width, height, min(2, args.steps))
            bench_stock(stock, device, width, height, min(2, args.steps))
        runs = [("ours", lambda: bench_ours(ours, width, height, args.steps)),
                ("stock", lambda: bench_stock(stock, device, width, height, args.steps))]
        results[size] = {name: run() for name, run in (runs[::-1] if args.stock_first else runs)}
        r = results[size]
        r["speedup_whole_image"] = round(r["stock"]["whole_image_s"] / r["ours"]["whole_image_s"], 3)
        print(size, json.dumps(r), flush=True)
        if device.type == "cuda":
            results[size]["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
