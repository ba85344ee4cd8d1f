"""The renderer (generator.render) on whatever OpenGL EGL gives: a stereo pair, 4096×4096 ODS, a dome, video.

    python bench/render.py [--repeats 5] [--ods-height 2048] [--video-seconds 2]

One 1024×512 demo frame (a room), default display parameters (256×512 mesh, cull). Each still is timed
after one warm-up render (shader compile, framebuffers, ODS origins for that size), end to end: draw,
read back, stereo layout. Video: a 1280×720 side-by-side (half-packed, the component's default) orbit through
PyAV/libx264, frames per second including encoding.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generator.backends.demo import DemoBackend  # noqa: E402
from generator.render import Renderer  # noqa: E402
from generator.render.gl import renderer_name  # noqa: E402
from generator.render.video import head_positions, write_video  # noqa: E402
from td_bridge.params import VIEW_PARAMS, validate, validate_generation  # noqa: E402


def timed(fn, repeats: int) -> dict[str, float]:
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"first_s": round(first, 3), "p50_s": round(float(np.median(times)), 3),
            "min_s": round(min(times), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ods-height", type=int, default=2048)
    parser.add_argument("--video-seconds", type=float, default=2.0)
    args = parser.parse_args()
    params = validate_generation({"prompt": "a room", "seed": 3, "width": 1024, "height": 512, "steps": 4})
    frame = DemoBackend().generate(params, lambda step, total: None, lambda: False)
    results: dict[str, dict[str, float]] = {}
    with Renderer(frame.rgb, frame.depth) as renderer:
        print(f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
              f"GL: {renderer_name(renderer.ctx)}")
        pair = validate({"eye_width": 1280, "eye_height": 720, "packing": "full"}, VIEW_PARAMS)
        for samples in (4, 1):
            renderer.scene.samples = samples
            results[f"stereo_pair_1280x720_msaa{samples}"] = timed(lambda: renderer.render("sbs", pair), args.repeats)
        renderer.scene.samples = 4
        ods = validate({"ods_height": args.ods_height}, VIEW_PARAMS)
        results[f"ods_{2 * args.ods_height}x{2 * args.ods_height}"] = timed(lambda: renderer.render("ods", ods),
                                                                           max(1, args.repeats // 2))
        dome = validate({}, VIEW_PARAMS)
        results["dome_1280x1280"] = timed(lambda: renderer.render("dome", dome), max(1, args.repeats // 2))
        view = validate({}, VIEW_PARAMS)  # half-packed side by side: 1280×720
        fps = 30
        positions = head_positions("orbit", round(args.video_seconds * fps), 0.5, view)
        images = (renderer.render("sbs", {**view, "head_x": x, "head_y": y, "head_z": z}) for x, y, z in positions)
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            count = write_video(Path(folder) / "orbit.mp4", images, fps)
            elapsed = time.perf_counter() - start
        results["video_sbs_1280x720"] = {"frames": count, "frames_per_s": round(count / elapsed, 2)}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
