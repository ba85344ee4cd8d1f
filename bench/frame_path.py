"""Frame path benchmark: generator publish → FrameReceiver numpy arrays, beside raw pyzmq.

    python bench/frame_path.py [--frames 300] [--width 1024 --height 512] [--fps 30]

The publisher runs in a child process, as in real use (generator and TouchDesigner are
separate processes); the receiving side runs here.

* latency: one frame in flight at a time, from just before the publisher's send to arrays
  ready in a receiving thread, while the consumer thread waits. Ours: GeneratorServer (jobs
  submitted over its command socket) → FrameReceiver with all protocol checks. Raw: a PUB
  sends the same three byte parts, a SUB thread wraps them with np.frombuffer. Two cadences:
  back to back, and paced (20 ms idle between frames, like a render loop: waking from idle
  costs this VM ~0.7 ms for both).
* throughput: frames back to back; frames decoded per second by the receiver.
* staleness: producer at a fixed rate, consumer calling latest() 4x slower: how many frames
  the returned frame is behind the newest published one, and its age since publish.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np
import zmq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from generator.backends import RGBD, DemoBackend  # noqa: E402
from td_bridge.receiver import CommandClient, FrameReceiver  # noqa: E402


def make_frame(width: int, height: int) -> tuple[RGBD, dict]:
    params = {"prompt": "bench room", "negative_prompt": "", "seed": 1, "steps": 1, "guidance": 7.0,
              "width": width, "height": height}
    return DemoBackend().generate(params, lambda s, n: None, lambda: False), params


class ReplayBackend:
    """Returns one prepared frame, optionally at a fixed rate: isolates the transport."""

    name = model = "replay"

    def __init__(self, frame: RGBD, interval: float = 0.0) -> None:
        self.frame, self.interval = frame, interval

    def generate(self, params, progress, cancelled):
        if self.interval:
            time.sleep(self.interval)
        return self.frame


def serve_replay(width: int, height: int, interval: float, endpoints, stop) -> None:
    """Child process: a GeneratorServer replaying one frame."""
    from generator.serving.server import GeneratorServer

    frame, _ = make_frame(width, height)
    server = GeneratorServer(ReplayBackend(frame, interval), frames_address="tcp://127.0.0.1:*",
                             commands_address="tcp://127.0.0.1:*", max_waiting=1000)
    server.bind()
    endpoints.put((server.frames_endpoint, server.commands_endpoint))
    stop_event = threading.Event()
    threading.Thread(target=lambda: (stop.wait(), stop_event.set()), daemon=True).start()
    server.serve(stop_event)


def raw_publisher(width: int, height: int, endpoints, stop) -> None:
    """Child process: a bare PUB that sends `count` frames per trigger received on a PULL."""
    frame, _ = make_frame(width, height)
    ctx = zmq.Context()
    pub, pull = ctx.socket(zmq.PUB), ctx.socket(zmq.PULL)
    pub.setsockopt(zmq.LINGER, 0)
    pull.setsockopt(zmq.LINGER, 0)
    pub_port = pub.bind_to_random_port("tcp://127.0.0.1")
    pull_port = pull.bind_to_random_port("tcp://127.0.0.1")
    endpoints.put((f"tcp://127.0.0.1:{pub_port}", f"tcp://127.0.0.1:{pull_port}"))
    while not stop.is_set():
        if not pull.poll(100):
            continue
        count = int(pull.recv())
        for _ in range(count):
            header = json.dumps({"sent_at": time.time(), "pad": "x" * 600}).encode()
            pub.send_multipart([b"frame", header, frame.rgb, frame.depth], copy=False)
    pub.close()
    pull.close()
    ctx.term()


class Child:
    def __init__(self, target, *args) -> None:
        ctx = mp.get_context("spawn")
        self.stop = ctx.Event()
        queue = ctx.Queue()
        self.proc = ctx.Process(target=target, args=(*args, queue, self.stop), daemon=True)
        self.proc.start()
        self.endpoints = queue.get(timeout=60)

    def close(self) -> None:
        self.stop.set()
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()


def wait(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark stalled")
        time.sleep(0.0001)


def percentiles(values_s: list[float]) -> dict[str, float]:
    a = np.asarray(values_s) * 1000.0
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3),
            "n": len(values_s)}


PACED_S = 0.02  # idle time between frames in the paced cadence, like a render loop


def bench_raw(width: int, height: int, n: int) -> dict:
    """Raw pyzmq: a SUB in a receiving thread wraps the parts with np.frombuffer."""
    child = Child(raw_publisher, width, height)
    ctx = zmq.Context()
    sub, push = ctx.socket(zmq.SUB), ctx.socket(zmq.PUSH)
    for s in (sub, push):
        s.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVTIMEO, 100)
    sub.connect(child.endpoints[0])
    push.connect(child.endpoints[1])
    latencies: list[float] = []
    arrived = threading.Semaphore(0)
    stop = threading.Event()

    def receive() -> None:
        while not stop.is_set():
            try:
                parts = sub.recv_multipart(copy=False)
            except zmq.Again:
                continue
            np.frombuffer(parts[2].buffer, np.uint8).reshape(height, width, 3)
            np.frombuffer(parts[3].buffer, "<u2").reshape(height, width)
            latencies.append(time.time() - json.loads(parts[1].bytes)["sent_at"])
            arrived.release()

    thread = threading.Thread(target=receive)
    thread.start()
    while not arrived.acquire(timeout=0.05):  # until the subscription is live
        push.send(b"1")
    result = {}
    for cadence, idle in (("back_to_back", 0.0), ("paced", PACED_S)):
        latencies.clear()
        for _ in range(n):
            push.send(b"1")
            arrived.acquire(timeout=10)
            time.sleep(idle)
        result[cadence] = percentiles(latencies)
    start = time.perf_counter()
    push.send(str(n).encode())
    for _ in range(n):
        arrived.acquire(timeout=10)
    result["frames_per_s"] = round(n / (time.perf_counter() - start), 1)
    stop.set()
    thread.join()
    sub.close()
    push.close()
    ctx.term()
    child.close()
    return result


def bench_ours(width: int, height: int, params: dict, n: int) -> dict:
    """GeneratorServer (jobs over its command socket) → FrameReceiver, all checks on."""
    child = Child(serve_replay, width, height, 0.0)
    frames, commands = child.endpoints
    result = {}
    with FrameReceiver(frames) as rx, CommandClient(commands) as client:
        wait(lambda: rx.connected)
        for cadence, idle in (("back_to_back", 0.0), ("paced", PACED_S)):
            latencies = []
            for _ in range(n):
                client.generate(**params)
                rx.wait(10)
                latencies.append(rx.stats().latency_ms / 1000.0)
                time.sleep(idle)
            result[cadence] = percentiles(latencies)
        start_seq = rx.latest().seq
        before = rx.stats().frames
        start = time.perf_counter()
        for _ in range(n):
            client.generate(**params)
        wait(lambda: rx.latest().seq == start_seq + n, timeout=120)
        elapsed = time.perf_counter() - start
        decoded = rx.stats().frames - before
    child.close()
    result["frames_per_s"] = round(n / elapsed, 1)
    result["burst_note"] = f"{decoded} of {n} burst frames decoded, the rest superseded (newest kept)"
    return result


def bench_staleness(width: int, height: int, params: dict, fps: float, reads: int) -> dict:
    interval = 1.0 / fps
    child = Child(serve_replay, width, height, interval)
    frames, commands = child.endpoints
    ages, behind = [], []
    with FrameReceiver(frames) as rx, CommandClient(commands) as client:
        wait(lambda: rx.connected)
        for _ in range(4 * reads + 40):  # keep producing for the whole run
            client.generate(**params)
        wait(lambda: rx.latest() is not None)
        for _ in range(reads):
            time.sleep(4 * interval)
            published = client.status()["frames_published"]
            got = rx.latest()
            ages.append(time.time() - got.meta["sent_at"])
            behind.append(published - got.seq)
        client.cancel()
    child.close()
    return {"frame_interval_ms": round(1000 * interval, 3), "age_since_publish": percentiles(ages),
            "frames_behind_newest": {"max": max(behind), "mean": round(float(np.mean(behind)), 3)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--fps", type=float, default=30.0, help="producer rate for the staleness run")
    args = parser.parse_args()

    frame, params = make_frame(args.width, args.height)
    mb = (frame.rgb.nbytes + frame.depth.nbytes) / 1e6
    print(f"{platform.machine()}, Python {platform.python_version()}, pyzmq {zmq.pyzmq_version()} / libzmq "
          f"{zmq.zmq_version()}, {mp.cpu_count()} cores; frame {args.width}x{args.height} RGBD = {mb:.2f} MB")
    raw = bench_raw(args.width, args.height, args.frames)
    ours = bench_ours(args.width, args.height, params, args.frames)
    stale = bench_staleness(args.width, args.height, params, args.fps, reads=60)
    ratios = {c: round(ours[c]["p50_ms"] / raw[c]["p50_ms"], 3) for c in ("back_to_back", "paced")}
    print(json.dumps({"raw_pyzmq": raw, "depthfusion": ours, "p50_ratio": ratios,
                      "staleness_4x_slower_consumer": stale}, indent=2))


if __name__ == "__main__":
    main()
