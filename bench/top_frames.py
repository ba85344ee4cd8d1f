"""Main-thread cost of a new 1024×512 frame for TouchDesigner's Script TOPs.

    python bench/top_frames.py [--frames 100]

A GeneratorServer replays one 1024×512 RGBD frame every 50 ms; this process plays
TouchDesigner's main thread, polling once per 60 Hz frame. *Prepared*: `FrameReceiver(
prepare=to_top)` flips and copies on the receiver's thread, and the main thread's cost is the
`take()` that returns a new, TOP-ready frame. *On the main thread*: `take()` of the raw frame
plus `to_top` there, for comparison. `to_top` alone is also timed on a decoded frame.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from frame_path import ReplayBackend, make_frame  # noqa: E402
from generator.serving.server import GeneratorServer  # noqa: E402
from td_bridge import protocol as wire  # noqa: E402
from td_bridge.receiver import CommandClient, FrameReceiver  # noqa: E402
from td_bridge.top_frames import to_top  # noqa: E402


def summary(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1e3
    return {"n": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 4),
            "p99_ms": round(float(np.percentile(ms, 99)), 4), "max_ms": round(float(ms.max()), 4)}


def main_thread_cost(frames: int, prepare: bool) -> dict:
    result, _ = make_frame(1024, 512)
    server = GeneratorServer(ReplayBackend(result, interval=0.05), frames_address="tcp://127.0.0.1:*",
                             commands_address="tcp://127.0.0.1:*", max_waiting=frames + 1)
    server.bind()
    stop = threading.Event()
    thread = threading.Thread(target=server.serve, args=(stop,), daemon=True)
    thread.start()
    costs = []
    try:
        with FrameReceiver(server.frames_endpoint, prepare=to_top if prepare else None) as rx, \
                CommandClient(server.commands_endpoint) as client:
            while not rx.connected:
                time.sleep(0.01)
            for _ in range(frames):
                client.generate()
            deadline = time.monotonic() + frames * 0.05 + 30
            done_at = None  # a frame superseded between two polls is not waited for
            while len(costs) < frames and time.monotonic() < deadline:
                if done_at is None and server.status()["frames_published"] >= frames:
                    done_at = time.monotonic()
                if done_at is not None and time.monotonic() > done_at + 0.3:
                    break
                start = time.perf_counter()
                frame = rx.take()
                if frame is not None:
                    top = frame if prepare else to_top(frame)
                    costs.append(time.perf_counter() - start)
                    assert top.rgb.flags.c_contiguous and top.depth.shape == (512, 1024, 1)
                time.sleep(1 / 60)
    finally:
        stop.set()
        thread.join(10)
    return summary(costs)


def to_top_alone(repeats: int = 200) -> dict:
    result, _ = make_frame(1024, 512)
    header = wire.frame_header(result.rgb, result.depth, frame_id="bench", seq=1, meta={})
    frame = wire.decode_frame_parts([bytes(p) for p in wire.encode_frame_parts(result.rgb, result.depth, header)])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        to_top(frame)
        times.append(time.perf_counter() - start)
    return summary(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=100)
    args = parser.parse_args()
    print(json.dumps({"prepared_on_receiver_thread": main_thread_cost(args.frames, prepare=True),
                      "to_top_on_main_thread": main_thread_cost(args.frames, prepare=False),
                      "to_top_alone": to_top_alone()}, indent=2))


if __name__ == "__main__":
    main()
