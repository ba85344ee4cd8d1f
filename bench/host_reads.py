"""Host reads per generation: ours vs the stock diffusers LDM3D pipeline, per scheduler.

    python bench/host_reads.py [--steps 5,10]

Counts, with a torch dispatch mode, every operation that turns a tensor into a Python value
(`item`, `_local_scalar_dense`, `nonzero`, `is_nonzero`, `equal`) during one 64×64 generation
of a tiny random-weight LDM3D model on the CPU. On a GPU each such read of a device tensor makes
the host wait for the device. Two step counts separate per-step reads from one-off ones.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import tiny_ldm3d  # noqa: E402
from generator.backends import load_backend  # noqa: E402
from generator.backends.ldm3d import make_scheduler  # noqa: E402
from td_bridge.params import validate_generation  # noqa: E402

READS = {"item", "_local_scalar_dense", "nonzero", "is_nonzero", "equal"}
SCHEDULERS = ("ddim", "dpm++", "euler")


class HostReads(TorchDispatchMode):
    """Counts the operations that hand a tensor's value to Python."""

    def __init__(self) -> None:
        super().__init__()
        self.count: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in READS:
            self.count[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def counted(generate) -> int:
    with HostReads() as mode:
        generate()
    return sum(mode.count.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="5,10", help="comma-separated step counts")
    args = parser.parse_args()
    from diffusers import StableDiffusionLDM3DPipeline

    ours = load_backend(str(tiny_ldm3d.build(Path(tempfile.mkdtemp()) / "tiny", vae_channels=4)))
    print(f"torch {torch.__version__}; host reads in one 64x64 generation")
    print("scheduler steps stock ours")
    for name in SCHEDULERS:
        stock = StableDiffusionLDM3DPipeline(
            vae=ours.vae, text_encoder=ours.text_encoder, tokenizer=ours.tokenizer, unet=ours.unet,
            scheduler=make_scheduler(name, ours.scheduler_config), safety_checker=None, feature_extractor=None,
            image_encoder=None, requires_safety_checker=False)
        stock.set_progress_bar_config(disable=True)
        for steps in (int(s) for s in args.steps.split(",")):
            params = validate_generation({"prompt": "x", "seed": 1, "steps": steps, "width": 64, "height": 64,
                                          "scheduler": name})
            theirs = counted(lambda: stock("x", num_inference_steps=steps, height=64, width=64, output_type="np"))
            mine = counted(lambda: ours.generate(params, lambda s, n: None, lambda: False))
            print(f"{name:9} {steps:5} {theirs:5} {mine:4}")


if __name__ == "__main__":
    main()
