"""Few-step RGBD: time per frame of the 50-step teacher set-up against few-step set-ups, full-size random weights.

    python bench/fewstep.py [--device cpu|cuda] [--dtype fp32|fp16|bf16] [--sizes 512x512,1024x512]
                            [--teacher-steps 50] [--fast-steps 4,2,1] [--compile [MODE]] [--repeats 1]

Side by side in one run, through our LDM3D backend (generator/backends/ldm3d.py) on the same randomly initialised
SD-1.x-sized modules (bench/ldm3d_speed.py builds them): the teacher (DDIM, guidance 7.5: two U-Net passes a step,
full VAE decoder) and, for each N in --fast-steps, N steps of the LCM sampler at guidance 1 (one pass a step) with
the tiny RGBD decoder (TAESD-sized, random weights: generator/backends/tiny_decoder.py), plus N steps with the full
decoder to show what each part saves. A distillation LoRA costs nothing per frame once fused, so none is loaded.
Each frame is timed from the call to RGB + depth on the host (one warm-up frame first). With --teacher-steps below
50 (a CPU cannot afford 50), the teacher's 50-step time is given as measured per-step time × 50 plus the measured
rest (encode and decode) and marked "extrapolated". One JSON line per set-up, then a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from generator.backends.ldm3d import LDM3DBackend, pick_dtype  # noqa: E402
from generator.backends.tiny_decoder import TinyDecoder, make_decoder, teacher_info  # noqa: E402

from ldm3d_speed import build_modules, timed_frame  # noqa: E402


def measure(backend: LDM3DBackend, tiny: TinyDecoder, name: str, width: int, height: int, repeats: int,
            decoder: str, **params) -> dict:
    backend.decoder = tiny if decoder == "tiny" else None
    timed_frame(backend, width=width, height=height, **params)  # warm-up (and compilation)
    runs = [timed_frame(backend, width=width, height=height, **params) for _ in range(repeats)]
    total = float(np.median([run[0] for run in runs]))
    marks = runs[0][1]
    steps = np.diff([0.0, *marks])
    per_step = float(np.median(np.diff(marks))) if len(marks) > 1 else float(steps[0])
    rest = total - (marks[-1] - (marks[0] - per_step))  # prompt encoding and decoding: the frame outside the steps
    return {"setup": name, "size": f"{width}x{height}", "steps": params["steps"], "guidance": params["guidance"],
            "scheduler": params["scheduler"], "decoder": decoder, "frame_s": round(total, 3),
            "fps": round(1 / total, 3), "step_s": round(per_step, 4), "rest_s": round(rest, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--sizes", default="512x512,1024x512")
    parser.add_argument("--teacher-steps", type=int, default=50)
    parser.add_argument("--fast-steps", default="4,2,1")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--compile", nargs="?", const="default", default=None,
                        choices=["default", "reduce-overhead", "max-autotune"],
                        help="torch.compile the U-Net (GPU; reduce-overhead: CUDA graphs)")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = pick_dtype(args.dtype, device)
    tokenizer, text_encoder, unet, vae, scheduler = build_modules(4)
    backend = LDM3DBackend("random-full-size", tokenizer, text_encoder, unet, vae, scheduler.config, device, dtype)
    backend._place(args.compile)
    tiny = TinyDecoder(make_decoder(4, backend.variant.scale_factor), teacher_info(vae, "random", False, 0),
                       Path(tempfile.mkdtemp()), device)
    machine = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
               "torch": torch.__version__, "device": str(device), "dtype": args.dtype,
               "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
    print(json.dumps(machine), flush=True)
    rows = []
    for size in args.sizes.split(","):
        width, height = (int(v) for v in size.lower().split("x"))
        teacher = measure(backend, tiny, "teacher", width, height, args.repeats, "full", scheduler="ddim",
                          steps=args.teacher_steps, guidance=7.5)
        if args.teacher_steps < 50:
            teacher["frame_50_steps_s"] = round(teacher["rest_s"] + 50 * teacher["step_s"], 2)
            teacher["extrapolated"] = True
        rows.append(teacher)
        print(json.dumps(teacher), flush=True)
        for steps in (int(v) for v in args.fast_steps.split(",")):
            for decoder in ("tiny", "full"):
                row = measure(backend, tiny, f"fast-{steps}", width, height, args.repeats, decoder, scheduler="lcm",
                              steps=steps, guidance=1.0)
                rows.append(row)
                print(json.dumps(row), flush=True)
    print("\n| size | set-up | steps | guidance | decoder | frame s | fps |\n|---|---|---|---|---|---|---|")
    for row in rows:
        seconds = row.get("frame_50_steps_s", row["frame_s"])
        note = " (50 steps, extrapolated)" if row.get("extrapolated") else ""
        print(f"| {row['size']} | {row['setup']}{note} | {50 if note else row['steps']} | {row['guidance']} | "
              f"{row['decoder']} | {seconds:.2f} | {1 / seconds:.3f} |")


if __name__ == "__main__":
    main()
