"""LDM3D training: one step per stage at full-size shapes, its FLOPs, and the paper's schedule on one H100.

    python bench/train_step.py [--stage all|autoencoder|unet] [--device cpu|cuda] [--mixed-precision no|bf16]
                               [--variant ldm3d|ldm3d-pano] [--no-update]

Random weights in the real shapes (bench/ldm3d_speed.py's modules: SD-1.x U-Net 860 M parameters, CLIP ViT-L,
KL autoencoder widened from RGB to 6 or 4 channels; VGG16 for the perceptual loss), batch 1, a dataset of two
demo frames at the variant's size. Each stage runs in its own process (so peak memory is per stage) through
the trainers' own ``setup`` and ``train_batch``, the autoencoder with the discriminator active (the costlier
half of its schedule, from disc_start on). FLOPs are counted, not estimated by hand: torch's FlopCounterMode
records every matmul and convolution of the step, forward and backward (the adaptive weight's two extra
gradient passes included); elementwise ops are not counted. The schedule time is FLOPs per image × images
(the paper: 8,233 training images; autoencoder 83 epochs, U-Net 178 epochs) ÷ (H100 SXM dense bf16 peak,
989 TFLOP/s by NVIDIA's datasheet × an assumed model FLOP utilisation, 40 % by default).
``--no-update`` leaves out the optimiser update and the EMA (forward, backward and clipping only), for a machine
whose memory cannot hold Adam's two moments and the EMA copy (12 bytes per trained parameter, reported).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

PAPER = {"images": 8233, "autoencoder": {"epochs": 83, "batch": 8}, "unet": {"epochs": 178, "batch": 32}}
H100_BF16_TFLOPS = 989.0  # H100 SXM, dense BF16 tensor core peak (NVIDIA H100 datasheet)


def dataset(folder: Path, variant: str) -> Path:
    from generator.backends.demo import DemoBackend
    from generator.frames import generate_into_library
    from generator.library import FrameLibrary
    from generator.train.dataset import VARIANTS, Spec, build
    from generator.train.sources import open_source
    from td_bridge.params import validate_generation

    channels, width, height = VARIANTS[variant]
    library = FrameLibrary(folder / "library")
    for seed in range(2):
        generate_into_library(DemoBackend(), validate_generation({"prompt": "a sunlit courtyard", "seed": seed,
                                                                  "steps": 1, "width": width, "height": height}),
                              library)
    build(open_source(f"library:{folder / 'library'}"), folder / "data", Spec(channels, width, height), progress=False)
    return folder / "data"


def trainer(stage: str, folder: Path, args: argparse.Namespace):
    from ldm3d_speed import build_modules

    from generator.train.autoencoder import AutoencoderTrainer, widen
    from generator.train.dataset import VARIANTS
    from generator.train.losses import Perceptual, VGG16Features
    from generator.train.options import AUTOENCODER, AUTOENCODER_DEFAULTS, UNET, UNET_DEFAULTS, resolve
    from generator.train.unet import UNetTrainer

    channels = VARIANTS[args.variant][0]
    tokenizer, text_encoder, unet, rgb_vae, _ = build_modules(3)
    vae = widen(rgb_vae, channels)
    common = {"dataset": str(dataset(folder, args.variant)), "output": str(folder / stage), "batch_size": 1,
              "steps": 1, "mixed_precision": args.mixed_precision, "cpu": args.device == "cpu", "log_every": 1}
    if stage == "autoencoder":
        config = resolve({**common, "disc_start": 0}, AUTOENCODER, AUTOENCODER_DEFAULTS)
        return AutoencoderTrainer(config, perceptual=Perceptual(VGG16Features()), vae=vae)
    from diffusers import DDPMScheduler

    noise = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")  # SD-1.x's schedule
    config = resolve({**common, "validation_prompts": "", "ema": not args.no_update}, UNET, UNET_DEFAULTS)
    return UNetTrainer(config, components={"tokenizer": tokenizer, "text_encoder": text_encoder, "unet": unet,
                                           "noise": noise, "vae": vae})


def one_stage(stage: str, args: argparse.Namespace) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    with tempfile.TemporaryDirectory() as tmp:
        run = trainer(stage, Path(tmp), args)
        run.setup()
        if args.no_update:
            for optimizer in (run.opt, getattr(run, "d_opt", None)):
                if optimizer is not None:
                    optimizer.step = lambda *a, **k: None  # no moments allocated, no update
        batch = next(run._batches())
        trained = sum(p.numel() for p in run.opt.param_groups[0]["params"])
        if run.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        counter = FlopCounterMode(display=False)
        start = time.perf_counter()
        with counter:
            metrics = run.train_batch(batch)
        if run.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    flops = counter.get_total_flops()
    paper = PAPER[stage]
    images = PAPER["images"] * paper["epochs"]
    h100_s = flops * images / (H100_BF16_TFLOPS * 1e12 * args.utilisation)
    result = {"stage": stage, "variant": args.variant, "step_s": round(seconds, 2), "tflop_per_image": round(
        flops / 1e12, 3), "achieved_tflops": round(flops / 1e12 / seconds, 3), "loss": round(metrics["loss"], 4),
        "paper_images": images, "paper_steps": images // paper["batch"], "h100_hours": round(h100_s / 3600, 1),
        "trained_params_m": round(trained / 1e6, 1), "update": not args.no_update}
    if run.device.type == "cuda":
        result["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    result["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default="all", choices=["all", "autoencoder", "unet"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    parser.add_argument("--variant", default="ldm3d", choices=["ldm3d", "ldm3d-4c", "ldm3d-pano"])
    parser.add_argument("--utilisation", type=float, default=0.4, help="assumed H100 model FLOP utilisation")
    parser.add_argument("--no-update", action="store_true", help="forward + backward only (module docstring)")
    args = parser.parse_args()
    if args.stage == "all":  # one process per stage: the peak memory of each on its own
        print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
              f"{torch.__version__}, {args.device}, mixed precision {args.mixed_precision}", flush=True)
        for stage in ("autoencoder", "unet"):
            subprocess.run([sys.executable, __file__, "--stage", stage, "--device", args.device, "--mixed-precision",
                            args.mixed_precision, "--variant", args.variant, "--utilisation", str(args.utilisation)]
                           + ["--no-update"] * args.no_update, check=True)
        return
    print(json.dumps(one_stage(args.stage, args)), flush=True)


if __name__ == "__main__":
    main()
