"""Tiny pieces for the training tests: an SD-shaped RGB model, a random perceptual network, demo datasets."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import tiny_ldm3d
from generator.backends.demo import DemoBackend
from generator.frames import generate_into_library
from generator.library import FrameLibrary
from generator.train.dataset import Spec, build
from generator.train.sources import open_source
from td_bridge.params import validate_generation


def build_sd(folder: Path, seed: int = 0) -> Path:
    """A tiny Stable-Diffusion-shaped model (RGB autoencoder) in the hub layout; its VAE is smaller than
    tiny_ldm3d's (widths 16/32, 8 norm groups) so that training steps take milliseconds."""
    from diffusers import AutoencoderKL

    tiny_ldm3d.build(folder, vae_channels=3, seed=seed)
    torch.manual_seed(seed)
    AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(16, 32), norm_num_groups=8,
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  latent_channels=4).save_pretrained(folder / "vae")
    return folder


class TinyFeatures(nn.Module):
    """A random two-tap feature network with the perceptual network's interface (taps + ``channels``)."""

    channels = (8, 16)

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        a = torch.relu(self.a(x))
        return [a, torch.relu(self.b(a))]


def demo_dataset(root: Path, output: Path, seeds: range, channels: int = 6, size: int = 16) -> Path:
    """Demo frames (64×64, exact depth) of ``seeds`` into a frame library, built into a dataset of ``size``²."""
    library = FrameLibrary(root)
    prompts = ("a misty forest at dawn", "a sunlit courtyard", "a desert at night", "a room")
    for seed in seeds:
        params = validate_generation({"prompt": prompts[seed % len(prompts)], "seed": seed, "steps": 1,
                                      "width": 64, "height": 64})
        generate_into_library(DemoBackend(), params, library)
    build(open_source(f"library:{root}"), output, Spec(channels, size, size), progress=False)
    return output
