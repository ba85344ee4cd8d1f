"""LDM3D start-up: time `LDM3DBackend.load` on a full-size SD-1.x model saved in the hub layout.

    python bench/ldm3d_load.py [--folder DIR] [--repeats 3]

The first run writes randomly initialised full-size modules (as `bench/ldm3d_speed.py` builds
them; about 4 GB of fp32 safetensors) into DIR. Each repeat is a fresh Python process (a second
load in one process reuses what the first one set up) that loads DIR through the same public
path `serve --model DIR` takes; the time runs from the call to the loaded backend.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")]

from generator.backends.ldm3d import LDM3DBackend  # noqa: E402


def write_model(folder: Path) -> None:
    from ldm3d_speed import build_modules

    tokenizer, text_encoder, unet, vae, scheduler = build_modules(vae_channels=4)
    for name, part in (("tokenizer", tokenizer), ("text_encoder", text_encoder), ("unet", unet), ("vae", vae),
                       ("scheduler", scheduler)):
        part.save_pretrained(folder / name)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionLDM3DPipeline"}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "depthfusion-fullsize-ldm3d")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--once", action="store_true", help=argparse.SUPPRESS)  # one timed load, this process
    args = parser.parse_args()
    if args.once:
        start = time.perf_counter()
        LDM3DBackend.load(str(args.folder))
        print(f"load {time.perf_counter() - start:.2f} s", flush=True)
        return
    if not (args.folder / "model_index.json").exists():
        write_model(args.folder)
    for _ in range(args.repeats):
        subprocess.run([sys.executable, __file__, "--folder", str(args.folder), "--once"], check=True)


if __name__ == "__main__":
    main()
