"""360° depth: our view path (dense 22 views, cube 6) vs one whole-image ``pipeline("depth-estimation")``.

    python bench/pano_depth.py [--size tiny|full] [--width 1024] [--repeats 2] [--threads N] [--device cpu]

Both run the same Depth Anything model in one process on one 2:1 image (a demo backend room, so the views see
structure): ``full`` is Depth-Anything-V2-Small's architecture (ViT-S/14 DINOv2, 518 px, ~25 M parameters) with
random weights, ``tiny`` the tests' toy model. Times are the median of the repeats after one warm-up call; the
whole-image pipeline resizes the 2:1 image to 1036×518 (one forward), our path runs one 518×518 forward per view
plus the sampling, the alignment solve and the blend (the forwards' share is reported too). Random weights say nothing about
quality; this measures cost.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from generator.backends.demo import DemoBackend  # noqa: E402
from generator.estimators import pano  # noqa: E402
from generator.estimators.frame import estimate_rgbd  # noqa: E402
from generator.estimators.model import DepthModel  # noqa: E402
from td_bridge.params import ESTIMATION_PARAMS, defaults  # noqa: E402


def build_full(folder: Path) -> Path:
    """Depth-Anything-V2-Small's published architecture and processor settings, random weights."""
    import transformers as tf

    torch.manual_seed(0)
    backbone = tf.Dinov2Config(image_size=518, patch_size=14, hidden_size=384, num_hidden_layers=12,
                               num_attention_heads=6, mlp_ratio=4, layerscale_value=1.0, reshape_hidden_states=False,
                               out_indices=[3, 6, 9, 12])
    config = tf.DepthAnythingConfig(backbone_config=backbone, patch_size=14, reassemble_hidden_size=384,
                                    neck_hidden_sizes=[48, 96, 192, 384], fusion_hidden_size=64, head_hidden_size=32)
    tf.DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    tf.DPTImageProcessor(size={"height": 518, "width": 518}, keep_aspect_ratio=True, ensure_multiple_of=14,
                         resample=3, do_pad=False, image_mean=[0.485, 0.456, 0.406],
                         image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    return folder


def timed(call, repeats: int, warmup: int) -> tuple[float, float]:
    """Median (wall, process CPU) seconds; on a shared machine the CPU time is the steadier of the two."""
    for _ in range(warmup):
        call()
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        call()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


class CountedModel:
    """The model with the wall time spent in its forwards added up, to split ours into model and the rest."""

    def __init__(self, model: DepthModel) -> None:
        self.inner, self.seconds = model, 0.0
        self.model, self.family, self.kind, self.metric = model.model, model.family, model.kind, model.metric

    def predict(self, rgb: np.ndarray, flip: bool = False) -> np.ndarray:
        started = time.perf_counter()
        try:
            return self.inner.predict(rgb, flip)
        finally:
            self.seconds += time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls first (0 for the full-size model)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from PIL import Image
    from tiny_depth import build
    from transformers import pipeline

    folder = Path(tempfile.mkdtemp(prefix=f"depthfusion-bench-{args.size}-"))
    build_full(folder) if args.size == "full" else build("depth_anything", folder)
    width, height = args.width, args.width // 2
    rgb = DemoBackend().generate({"prompt": "a gallery room", "seed": 2, "width": width, "height": height,
                                  "steps": 1}, lambda *a: None, lambda: False).rgb
    model = DepthModel.load(str(folder), device=args.device)
    whole = pipeline("depth-estimation", model=str(folder), device=args.device)
    params = defaults(ESTIMATION_PARAMS)
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, model {args.size} ({sum(p.numel() for p in model.network.parameters()):,} "
          f"parameters), {width}x{height}, median of {args.repeats}")
    results = {"pipeline, whole image": timed(lambda: whole(Image.fromarray(rgb)), args.repeats, args.warmup)}
    print(f"  pipeline: {results['pipeline, whole image'][0]:.2f} s wall", flush=True)
    for layout in ("cube", "dense"):
        counted = CountedModel(model)
        total = timed(lambda: estimate_rgbd(counted, rgb, {**params, "views": layout}), args.repeats, args.warmup)
        results[f"ours, {layout} ({len(pano.LAYOUTS[layout])} views)"] = total
        forwards = counted.seconds / (args.repeats + args.warmup)
        print(f"  {layout}: {total[0]:.2f} s wall, of which model forwards {forwards:.2f} s", flush=True)
    base = results["pipeline, whole image"]
    print("| path | wall | CPU | wall / pipeline |")
    for name, (wall, cpu) in results.items():
        print(f"| {name} | {wall:.2f} s | {cpu:.2f} s | {wall / base[0]:.1f}× |")


if __name__ == "__main__":
    main()
