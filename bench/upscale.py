"""ldm3d-sr upscaler speed and memory, full-size shapes with random weights: tiled vs one pass.

    python bench/upscale.py [--device cpu|cuda] [--dtype fp32|fp16|bf16] [--steps 2]
                            [--source 512x256] [--target 1024x512] [--tiles 1024,512] [--seamless no|yes]

The modules are SD-1.x sized as ldm3d-sr's: an 8-channel U-Net (860 M parameters, noise level embedded as one of
1000 classes), the CLIP ViT-L text encoder and a 4-channel KL autoencoder (bench/ldm3d_speed.py's, randomly
initialised), DDIM, guidance 9, noise level 20. Each tile size runs in its own process, so that its peak memory
is its own: peak RSS sampled every 5 ms during the upscale minus the RSS before it (CPU), or
torch.cuda.max_memory_allocated (CUDA). A tile as large as the target is one pass. Per-step time is the
median interval between progress callbacks; whole image = call to RGB + depth on the host (resize, VAE encoding,
the steps, VAE decoding).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

from generator.backends.upscale import UpscaleBackend  # noqa: E402
from generator.backends.upscale_files import UpscalerSpec  # noqa: E402
from td_bridge.params import UPSCALE_PARAMS, validate  # noqa: E402


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """The highest RSS seen while running, sampled on a thread."""

    def __init__(self) -> None:
        self.peak, self._stop = rss_bytes(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def build(device: torch.device, dtype: torch.dtype) -> UpscaleBackend:
    from diffusers import DDPMScheduler

    from ldm3d_speed import build_modules

    tokenizer, text_encoder, unet, vae, scheduler = build_modules(4, in_channels=8, num_class_embeds=1000)
    low_res = DDPMScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear", num_train_timesteps=1000)
    spec = UpscalerSpec(Path("random-ldm3d-sr"), max_noise_level=350, latent_channels=4, scale_factor=8,
                        safetensors={})
    backend = UpscaleBackend("random-ldm3d-sr", spec, tokenizer, text_encoder, unet, vae, scheduler.config, low_res,
                             device, dtype)
    backend._place()
    return backend


def child(args: argparse.Namespace, tile: int) -> dict:
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    backend = build(device, dtype)
    (sw, sh), (tw, th) = (tuple(map(int, s.split("x"))) for s in (args.source, args.target))
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (sh, sw, 3), dtype=np.uint8)
    depth = rng.integers(0, 65536, (sh, sw), dtype=np.uint16)
    params = validate({"upscale_width": tw, "upscale_height": th, "upscale_steps": args.steps, "upscale_seed": 1,
                       "upscale_tile": tile, "upscale_seamless": args.seamless}, UPSCALE_PARAMS)
    marks: list[float] = []

    def progress(step: int, total: int) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        marks.append(time.perf_counter())

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = rss_bytes()
    with PeakRss() as peak:
        start = time.perf_counter()
        out = backend.upscale(rgb, depth, params, progress, lambda: False)
        total = time.perf_counter() - start
    assert out.rgb.shape == (th, tw, 3)
    steps = np.diff(marks) if len(marks) > 1 else np.array([marks[0] - start])  # the first includes encoding
    memory = (torch.cuda.max_memory_allocated() if device.type == "cuda" else peak.peak - before) / 2**30
    return {"tile": tile, "tiles": out.info["tiles"], "step_p50_s": round(float(np.median(steps)), 2),
            "whole_image_s": round(total, 1), "peak_gib": round(memory, 2),
            "memory": "cuda max allocated" if device.type == "cuda" else "RSS above the loaded model"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--source", default="512x256")
    parser.add_argument("--target", default="1024x512")
    parser.add_argument("--tiles", default="1024,512", help="comma-separated tile sizes in output pixels (0: the "
                        "device's default)")
    parser.add_argument("--seamless", default="no", choices=["no", "yes"])
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args, args.child)))
        return
    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"device {args.device} ({name}), {args.dtype}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads; {args.source} → {args.target}, {args.steps} steps, seamless {args.seamless}")
    for tile in (int(t) for t in args.tiles.split(",")):
        command = [sys.executable, __file__, *sys.argv[1:], "--child", str(tile)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode:
            print(f"tile {tile}: failed\n{result.stderr[-2000:]}")
            continue
        print(result.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
