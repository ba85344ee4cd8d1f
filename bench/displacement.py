"""Sphere mesh generation and per-frame displacement (td_bridge.geometry), numpy on CPU.

    python bench/displacement.py [--rows 511 --cols 1023] [--repeats 30]

A (rows+1)×(cols+1) = 512×1024-vertex sphere displaced by a 1024×512 uint16 depth map:
mesh build and Displacer set-up once, then per frame: sample + map + scale (linear and
metric mappings) and the rubber-sheet triangle mask.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from td_bridge.depth import DepthMapping  # noqa: E402
from td_bridge.geometry import Displacer, discontinuous_triangles, sphere_mesh  # noqa: E402


def timed(fn, repeats: int) -> dict[str, float]:
    fn()  # warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    ms = np.asarray(times) * 1000
    return {"p50_ms": round(float(np.median(ms)), 2), "p90_ms": round(float(np.percentile(ms, 90)), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=511)
    parser.add_argument("--cols", type=int, default=1023)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    depth = np.random.default_rng(0).integers(0, 65536, (args.height, args.width), dtype=np.uint16)
    mesh = sphere_mesh(args.rows, args.cols)
    displacer = Displacer(mesh, depth.shape)
    linear, metric = DepthMapping("linear", 1.0, 1.0), DepthMapping("metric", near=1.0, far=100.0)
    radii = np.linalg.norm(displacer(depth, linear), axis=1)
    print(f"{platform.machine()}, Python {platform.python_version()}, numpy {np.__version__}; "
          f"{mesh.vertex_count} vertices, {len(mesh.triangles)} triangles, depth {args.width}x{args.height}")
    print(json.dumps({
        "mesh_build": timed(lambda: sphere_mesh(args.rows, args.cols), max(3, args.repeats // 10)),
        "displacer_setup": timed(lambda: Displacer(mesh, depth.shape), max(3, args.repeats // 10)),
        "displace_linear": timed(lambda: displacer(depth, linear), args.repeats),
        "displace_metric": timed(lambda: displacer(depth, metric), args.repeats),
        "rubber_sheet_mask": timed(lambda: discontinuous_triangles(mesh.triangles, radii, 0.1), args.repeats),
    }, indent=2))


if __name__ == "__main__":
    main()
