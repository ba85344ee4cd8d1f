"""Decode time: LDM3D's full VAE decoder vs the tiny RGBD decoder (TAESD-sized), random full-size weights.

    python bench/tiny_decoder.py [--device cpu|cuda] [--repeats 3] [--vae-channels 4|6]

The full decoder is SD 1.x's KL autoencoder (block widths 128/256/512/512, 2 layers a block) with the LDM3D
variant's output channels; the tiny one ``make_decoder(4, 8)`` (TAESD's decoder, 4 outputs). Both decode one
(1, 4, h/8, w/8) latent at 512×512 and 1024×512 in fp32, as the backend does (the full decoder divides by the
scaling factor first). One warm-up, then ``--repeats`` timed runs; the JSON line gives every time in seconds.
``--half`` also decodes the tiny decoder in bf16 (CPU) or fp16 (CUDA) and counts the uint16 depth values that
differ from fp32 (why the backend keeps it in fp32).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generator.backends.tiny_decoder import make_decoder, parameter_count, tiny_unit  # noqa: E402
from td_bridge.depth import to_uint16  # noqa: E402


def full_vae(channels: int):
    from diffusers import AutoencoderKL

    blocks = (128, 256, 512, 512)
    return AutoencoderKL(in_channels=channels, out_channels=channels, block_out_channels=blocks, layers_per_block=2,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         latent_channels=4, sample_size=512)


def timed(fn, device: torch.device, repeats: int) -> list[float]:
    def once() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    once()  # warm-up
    return [round(once(), 4) for _ in range(repeats)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vae-channels", type=int, default=4, choices=[4, 6])
    parser.add_argument("--half", action="store_true", help="also check the tiny decoder's depth in bf16/fp16")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    vae = full_vae(args.vae_channels).eval().requires_grad_(False).to(device)
    tiny = make_decoder(4, 8).eval().requires_grad_(False).to(device)
    result = {"device": str(device), "cpu": platform.processor() or platform.machine(),
              "threads": torch.get_num_threads(), "torch": torch.__version__, "dtype": "fp32",
              "full_decoder_parameters": sum(p.numel() for p in vae.decoder.parameters())
              + sum(p.numel() for p in vae.post_quant_conv.parameters()),
              "tiny_decoder_parameters": parameter_count(tiny), "sizes": {}}
    for width, height in ((512, 512), (1024, 512)):
        latents = torch.randn(1, 4, height // 8, width // 8, generator=torch.Generator().manual_seed(1)).to(device)
        with torch.inference_mode():
            full = timed(lambda: vae.decode(latents / vae.config.scaling_factor).sample, device, args.repeats)
            small = timed(lambda: tiny_unit(tiny, latents), device, args.repeats)
            entry = {"full_s": full, "tiny_s": small, "speed-up": round(min(full) / min(small), 1)}
            if args.half:
                half = torch.bfloat16 if device.type == "cpu" else torch.float16
                reference = to_uint16(tiny_unit(tiny, latents)[0, 3].cpu().numpy())
                tiny.to(half)
                lower = to_uint16(tiny_unit(tiny, latents.to(half))[0, 3].float().cpu().numpy())
                tiny.float()
                differ = reference != lower
                entry[f"depth16_differing_in_{str(half).removeprefix('torch.')}"] = round(float(differ.mean()), 4)
                entry["depth16_max_difference"] = int(abs(reference.astype(int) - lower.astype(int)).max())
        result["sizes"][f"{width}x{height}"] = entry
        print(f"{width}x{height}: full {min(full):.3f} s, tiny {min(small):.3f} s", file=sys.stderr, flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
