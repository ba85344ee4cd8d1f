"""Several workers on one queue: pregenerate-like throughput of a server with one and with two workers.

    python bench/workers.py [--jobs 16] [--workers 1,2] [--step-delay 0.05] [--steps 10] [--size 512x256]
                            [--repeats 3] [--no-library]

What runs: a real GeneratorServer (generator/serving/server.py) on loopback tcp on its own thread, with one demo
backend per worker (``DemoBackend(step_delay=…)``: each step sleeps, as a GPU's step leaves the host free; the
scene's shading and, unless --no-library, the library's PNG save are real host work). A CommandClient queues --jobs
generate requests at once (distinct seeds, as a cue list would) and polls until every job is done; wall time runs
from just before the first request to the last job seen done. Frames/s = jobs / wall; scaling = frames/s with N
workers over frames/s with one. Each configuration runs --repeats times; medians and ranges are printed. One JSON
line per run, then a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from generator.backends.demo import DemoBackend  # noqa: E402
from generator.library import FrameLibrary  # noqa: E402
from generator.serving.server import GeneratorServer  # noqa: E402
from td_bridge.receiver import CommandClient  # noqa: E402


def run_once(workers: int, args: argparse.Namespace, width: int, height: int) -> dict[str, float]:
    """Queue --jobs jobs on a fresh server with ``workers`` demo workers; the run's numbers."""
    with tempfile.TemporaryDirectory(prefix="depthfusion-bench-workers-") as folder:
        library = None if args.no_library else FrameLibrary(Path(folder))
        server = GeneratorServer([DemoBackend(step_delay=args.step_delay) for _ in range(workers)],
                                 frames_address="tcp://127.0.0.1:*", commands_address="tcp://127.0.0.1:*",
                                 max_waiting=args.jobs, library=library)
        server.bind()
        stop = threading.Event()
        thread = threading.Thread(target=server.serve, args=(stop,), daemon=True)
        thread.start()
        try:
            with CommandClient(server.commands_endpoint, timeout=10.0) as client:
                started = time.perf_counter()
                ids = [client.generate(prompt="a gallery interior", seed=seed, steps=args.steps, width=width,
                                       height=height)["job_id"] for seed in range(args.jobs)]
                jobs = wait_done(client, ids)
                wall = time.perf_counter() - started
        finally:
            stop.set()
            thread.join(10)
    failed = [job["id"] for job in jobs if job["state"] != "done"]
    if failed:
        raise RuntimeError(f"jobs did not finish: {failed}")
    per_job = statistics.median(job["finished_at"] - job["started_at"] for job in jobs)
    return {"workers": workers, "jobs": args.jobs, "wall_s": round(wall, 3), "frames_per_s": round(args.jobs / wall, 3),
            "job_s_p50": round(per_job, 3)}


def wait_done(client: CommandClient, ids: list[str]) -> list[dict]:
    """Every job's summary once none is waiting or running."""
    while True:
        jobs = [client.job(job_id) for job_id in ids]
        if all(job["state"] in ("done", "failed", "cancelled") for job in jobs):
            return jobs
        time.sleep(0.01)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--workers", default="1,2", help="comma list of worker counts")
    parser.add_argument("--step-delay", type=float, default=0.05, help="demo backend: seconds per step")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", default="512x256", help="WIDTHxHEIGHT")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-library", action="store_true", help="do not save frames (pregenerate saves them)")
    args = parser.parse_args()
    width, height = (int(side) for side in args.size.lower().split("x"))
    counts = [int(n) for n in args.workers.split(",")]
    print(json.dumps({"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
                      "jobs": args.jobs, "steps": args.steps, "step_delay": args.step_delay, "size": args.size,
                      "library": not args.no_library}))
    results: dict[int, list[dict[str, float]]] = {n: [] for n in counts}
    for _ in range(args.repeats):  # interleaved, so that a load change hits every configuration alike
        for n in counts:
            run = run_once(n, args, width, height)
            results[n].append(run)
            print(json.dumps(run), flush=True)
    base = statistics.median(r["frames_per_s"] for r in results[counts[0]])
    ideal = args.steps * args.step_delay
    print(f"\n{args.jobs} jobs of {args.steps} steps x {args.step_delay * 1000:g} ms (sleep) at {args.size}"
          f"{'' if args.no_library else ', saved to a library'}; ideal job {ideal:.2f} s")
    print("| workers | frames/s p50 (range) | wall s p50 | job s p50 | scaling vs first |")
    print("|---|---|---|---|---|")
    for n in counts:
        fps = [r["frames_per_s"] for r in results[n]]
        print(f"| {n} | {statistics.median(fps):.2f} ({min(fps):.2f}-{max(fps):.2f}) | "
              f"{statistics.median(r['wall_s'] for r in results[n]):.2f} | "
              f"{statistics.median(r['job_s_p50'] for r in results[n]):.3f} | {statistics.median(fps) / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
