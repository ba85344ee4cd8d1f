"""Live mode: frames per second and change-to-screen latency of the live session, end to end.

    python bench/live.py [--backend demo|tiny|full] [--device cpu|cuda] [--dtype fp32|fp16|bf16] [--size 512x256]
                         [--steps 4] [--scheduler lcm] [--guidance 1] [--decoder tiny|full] [--fps 0,10]
                         [--drive blend,steer] [--change seed|prompt] [--seconds 10] [--samples 8]
                         [--stream-batch] [--compile [MODE]] [--demo-step-delay 0.01]

    python bench/live.py --backend demo --demo-step-delay 0.01 --size 512x256 --steps 4     (also --size 1024x512)
    python bench/live.py --backend tiny --size 256x128 --steps 2 --samples 6 [--stream-batch]
    python bench/live.py --backend full --size 256x128 --steps 2 --fps 0 --drive blend --seconds 20 --samples 4
    python bench/live.py --backend full --device cuda --dtype fp16 --size 1024x512 --steps 4 [--stream-batch]
                         [--compile reduce-overhead]                                           (the GPU issue)

What runs: a real GeneratorServer (generator/serving/server.py) on loopback tcp on its own thread, as the tests run
one, driving its live session (generator/serving/live.py) on the chosen backend, and a real td_bridge FrameReceiver
(td_bridge/receiver.py) with ``prepare=to_top``, as the TouchDesigner component builds it: each frame it hands over
is logged with its arrival time (after the TOP arrays are made), its generation params and its ``live`` header.
Commands go through a CommandClient (``live``). Backends: ``demo`` (DemoBackend; --demo-step-delay per step models a
model's speed), ``tiny`` (tests/tiny_ldm3d.py's random tiny LDM3D, its own VAE), ``full`` (SD-1.x-sized random
modules, bench/ldm3d_speed.py's ``build_modules``, with the tiny RGBD decoder as few-step serving uses it; --decoder
full for the VAE). Generation: --size, --steps, --scheduler, --guidance (defaults: a few-step set-up, lcm at
guidance 1: one U-Net pass a step).

The live session makes frames only while something changes (idle otherwise), so a rate needs a drive:
  * ``blend``: one seed change with a 600 s transition; every frame is a blend of two fixed ends. LDM3D runs its whole
    denoise and decode each frame (the ends' embeddings and noise are cached); the demo backend only crossfades its
    two cached end frames, so its step delay does not show here.
  * ``steer``: a thread sends a new seed (transition 0) 60 times a second, as a moving TouchDesigner parameter would;
    every frame is a new end, so the demo pays its step delay each frame.

Measurements, each at every --fps (live_fps; 0: as fast as it goes):
  * ``rate`` per drive: frames delivered to the receiver per second over --seconds (3 frames at least) after a
    warm-up (1 s and 2 frames at least), the spacing of their arrivals, the backend's own per-frame time (header
    ``timings.generate_s``), the session's own measured rate (status ``live.fps``) and how many frames were made but
    superseded before the receiver decoded them (the header's ``live.frame`` counter against the frames delivered).
    The steer drive also gives a latency: for each change sent in the window, the time to the first frame carrying
    it or a newer one, and the frames that arrived in between.
  * ``latency``, --samples times: *busy*: while a blend keeps frames coming, a ``live`` command with a new seed (or
    prompt, --change) and transition 0 is sent at a random moment within a frame; latency runs from just before the
    send to the arrival of the first frame whose ``params`` carry the change; "frames before" counts the frames that
    arrived in between (old params). *idle*: the same change sent to an idle session (the last frame on screen).
Timings are medians (p50) and maxima. --stream-batch sets the live parameter ``stream_batch`` (LDM3D: several frames
in flight in one U-Net batch); the JSON lines record what the server says is in force. One JSON line per
measurement, then tables. Server, backend and receiver share one process (as in the tests), and with it the cores.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")]

from generator.backends import DemoBackend, load_backend  # noqa: E402
from generator.serving.server import GeneratorServer  # noqa: E402
from td_bridge.receiver import CommandClient, CommandError, FrameReceiver  # noqa: E402
from td_bridge.top_frames import to_top  # noqa: E402

LONG_BLEND = 600.0  # seconds: the longest transition, so that a blend keeps frames coming for a whole measurement
STEER_HZ = 60.0  # the steer drive's parameter changes per second (a TouchDesigner parameter moving every frame)
PROMPT = "a sunlit courtyard with a fountain"
SCRATCH: list[tempfile.TemporaryDirectory] = []  # the tiny model's folder, kept until the process ends


@dataclass(frozen=True)
class Arrival:
    """One frame the receiver handed over: when (monotonic, after the TOP arrays were made) and its header."""

    at: float
    meta: dict[str, Any]

    @property
    def params(self) -> dict[str, Any]:
        return self.meta.get("params") or {}

    @property
    def made(self) -> int:
        """The live session's frame counter: every frame it made, published or superseded."""
        return int((self.meta.get("live") or {}).get("frame") or 0)

    @property
    def generate_s(self) -> float:
        return float(self.meta["timings"]["generate_s"])


class Probe:
    """The TouchDesigner side: a FrameReceiver making TOP arrays on its thread (as the component does); each frame
    it hands over is logged."""

    def __init__(self, address: str) -> None:
        self.log: list[Arrival] = []
        self._cond = threading.Condition()
        self.receiver = FrameReceiver(address, prepare=self._prepare)

    def _prepare(self, frame: Any) -> Any:
        top = to_top(frame)
        arrival = Arrival(time.monotonic(), frame.meta)
        with self._cond:
            self.log.append(arrival)
            self._cond.notify_all()
        return top

    def count(self) -> int:
        with self._cond:
            return len(self.log)

    def wait(self, match: Callable[[Arrival], bool], start: int, timeout: float) -> int | None:
        """Index of the first logged frame from ``start`` on that matches, waiting up to ``timeout`` s; else None."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for index in range(start, len(self.log)):
                    if match(self.log[index]):
                        return index
                start = len(self.log)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def since(self, start: int, until: float) -> list[Arrival]:
        """The frames logged from index ``start`` on that arrived by ``until``."""
        with self._cond:
            return [a for a in self.log[start:] if a.at <= until]

    def close(self) -> None:
        self.receiver.close()


class Server:
    """A GeneratorServer serving on its own thread (as tests/conftest.py's RunningServer)."""

    def __init__(self, backend: Any) -> None:
        self.server = GeneratorServer(backend, frames_address="tcp://127.0.0.1:*",
                                      commands_address="tcp://127.0.0.1:*")
        self.server.bind()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.server.serve, args=(self.stop,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)


def make_backend(args: argparse.Namespace) -> Any:
    if args.backend == "demo":
        return DemoBackend(step_delay=args.demo_step_delay)
    if args.backend == "tiny":
        import tiny_ldm3d

        if args.decoder == "tiny":
            raise SystemExit("--decoder tiny is for --backend full (the tiny LDM3D decodes with its own tiny VAE)")
        scratch = tempfile.TemporaryDirectory(prefix="depthfusion-live-bench-")  # removed at exit
        SCRATCH.append(scratch)
        folder = tiny_ldm3d.build(Path(scratch.name) / "tiny-ldm3d", vae_channels=6)
        return load_backend(str(folder), device=args.device, dtype=args.dtype, compile=args.compile)
    import torch

    from generator.backends.ldm3d import LDM3DBackend, pick_dtype
    from generator.backends.tiny_decoder import TinyDecoder, make_decoder, teacher_info

    from ldm3d_speed import build_modules

    device = torch.device(args.device)
    tokenizer, text_encoder, unet, vae, scheduler = build_modules(4)
    backend = LDM3DBackend("random-full-size", tokenizer, text_encoder, unet, vae, scheduler.config, device,
                           pick_dtype(args.dtype, device))
    backend._place(args.compile)
    if args.decoder != "full":  # as bench/fewstep.py: TAESD-sized, random weights
        backend.decoder = TinyDecoder(make_decoder(4, backend.variant.scale_factor),
                                      teacher_info(vae, "random", False, 0), Path(tempfile.mkdtemp()), device)
    return backend


class Bench:
    """Drives one server's live session through a CommandClient and watches its frames through a Probe."""

    def __init__(self, server: Server, base: dict[str, Any], live: dict[str, Any], change: str, label: dict) -> None:
        self.client = CommandClient(server.server.commands_endpoint, timeout=60.0)
        self.probe = Probe(server.server.frames_endpoint)
        self.base, self.live, self.change, self.label = base, live, change, label
        self._values = itertools.count(1000)
        self.frame_s = 1.0  # the slowest backend frame time seen so far: it sizes the timeouts
        self.rng = random.Random(1)
        deadline = time.monotonic() + 10
        while not self.probe.receiver.connected:  # the status heartbeat reached the receiver: subscribed
            if time.monotonic() > deadline:
                raise SystemExit("the receiver heard nothing from the server")
            time.sleep(0.02)

    def next_change(self) -> dict[str, Any]:
        value = next(self._values)
        return {"seed": value} if self.change == "seed" else {"prompt": f"{PROMPT}, variation {value}"}

    def number(self, arrival: Arrival) -> int:
        """Which change a frame carries: changes are numbered in the order they are sent."""
        if self.change == "seed":
            return int(arrival.params.get("seed", -1))
        prompt = str(arrival.params.get("prompt", ""))
        return int(prompt.rsplit(" ", 1)[-1]) if prompt.startswith(f"{PROMPT}, variation ") else -1

    def carries(self, change: dict[str, Any]) -> Callable[[Arrival], bool]:
        key, value = next(iter(change.items()))
        return lambda arrival: arrival.params.get(key) == value

    def timeout(self) -> float:
        return 30.0 + 20.0 * self.frame_s

    def await_frame(self, change: dict[str, Any], start: int) -> int:
        index = self.probe.wait(self.carries(change), start, self.timeout())
        if index is None:
            raise SystemExit(f"no frame carrying {change} arrived within {self.timeout():.0f} s "
                             f"(status: {self.client.status().get('live')})")
        self.frame_s = max(self.frame_s, self.probe.log[index].generate_s)
        return index

    def start(self, fps: float) -> dict[str, Any]:
        """Start the session from a cut at ``fps``; returns the server's reply once its first frame arrived."""
        change, seen = self.next_change(), self.probe.count()
        reply = self.client.live(True, **{**self.base, **self.live, **change}, transition=0, live_fps=fps)
        self.await_frame(change, seen)
        return reply

    def wait_idle(self) -> None:
        deadline = time.monotonic() + self.timeout()
        while not self.client.status()["live"]["idle"]:
            if time.monotonic() > deadline:
                raise SystemExit("the live session did not go idle after a cut")
            time.sleep(0.02)

    def warm(self) -> None:
        """First frames, untimed: lazy initialisation, first-touch memory, the blend path's caches."""
        self.start(0)
        seen = self.probe.count()
        self.client.live(**self.next_change(), transition=LONG_BLEND)
        self.probe.wait(lambda a: True, seen + 2, self.timeout())
        self.client.live(False)

    def rate(self, fps: float, drive: str, seconds: float, warmup: float) -> dict[str, Any]:
        reply = self.start(fps)
        stop = threading.Event()
        steering = None
        sends: list[tuple[float, int]] = []  # the steer drive's changes: (sent, number)
        seen, begun = self.probe.count(), time.monotonic()
        if drive == "blend":
            self.client.live(**self.next_change(), transition=LONG_BLEND)
        else:
            def steer() -> None:
                while not stop.wait(1.0 / STEER_HZ):
                    change = self.next_change()
                    sends.append((time.monotonic(), next(iter(change.values())) if self.change == "seed"
                                  else int(change["prompt"].rsplit(" ", 1)[-1])))
                    self.client.live(**change, transition=0)

            steering = threading.Thread(target=steer, daemon=True)
            steering.start()
        if self.probe.wait(lambda a: True, seen + 1, self.timeout()) is None:  # warm-up: two frames and ``warmup`` s
            raise SystemExit(f"the {drive} drive made fewer than two frames in {self.timeout():.0f} s")
        time.sleep(max(0.0, begun + warmup - time.monotonic()))
        start, t0 = self.probe.count(), time.monotonic()
        time.sleep(seconds)
        if self.probe.wait(lambda a: True, start + 2, self.timeout()) is None:  # the window holds 3 frames or more
            raise SystemExit(f"the {drive} drive made fewer than three frames in {seconds + self.timeout():.0f} s")
        t1 = time.monotonic()
        status = self.client.status()["live"]
        stop.set()
        if steering is not None:
            steering.join()
        self.client.live(False)
        window = self.probe.since(start, t1)
        times = np.array([a.at for a in window])
        intervals = np.diff(times) * 1000.0
        generate = np.array([a.generate_s for a in window])
        self.frame_s = max(self.frame_s, float(generate.max()))
        made = window[-1].made - window[0].made + 1
        steer = self._steer_latency([(at, n) for at, n in sends if t0 < at <= t1], window) if sends else {}
        return {**self.label, "measure": "rate", "drive": drive, "live_fps": fps,
                "fps": round((len(window) - 1) / (times[-1] - times[0]), 3),
                "frames": len(window), "made": made, "superseded": made - len(window),
                "interval_p50_ms": round(float(np.median(intervals)), 2),
                "interval_p90_ms": round(float(np.percentile(intervals, 90)), 2),
                "interval_max_ms": round(float(intervals.max()), 2),
                "generate_s_p50": round(float(np.median(generate)), 4),
                "generate_s_max": round(float(generate.max()), 4),
                "server_fps": status["fps"], "window_s": round(t1 - t0, 2),
                **steer, "load1": round(os.getloadavg()[0], 2), "stream_batch": reply.get("stream_batch"),
                "live_header": window[-1].meta.get("live")}

    def _steer_latency(self, sends: list[tuple[float, int]], window: list[Arrival]) -> dict[str, Any]:
        """Steer drive: for each change sent in the window, the time to the first frame carrying it or a newer
        one (a change superseded before its frame was made shows as the newer change's frame), and the frames that
        arrived in between."""
        latency, before = [], []
        for sent, number in sends:
            later = [a for a in window if a.at > sent]
            shown = next((i for i, a in enumerate(later) if self.number(a) >= number), None)
            if shown is not None:
                latency.append((later[shown].at - sent) * 1000.0)
                before.append(shown)
        if not latency:
            return {}
        return {"steer_changes": len(latency), "steer_latency_p50_ms": round(float(np.median(latency)), 2),
                "steer_latency_max_ms": round(float(np.max(latency)), 2),
                "steer_frames_before_p50": float(np.median(before)), "steer_frames_before_max": int(np.max(before))}

    def latency(self, fps: float, samples: int) -> list[dict[str, Any]]:
        self.start(fps)
        self.wait_idle()
        busy: list[tuple[float, int, float]] = []
        idle: list[tuple[float, int, float]] = []
        for _ in range(samples):
            # busy: a blend keeps frames coming; the change goes out at a random moment within a frame
            seen = self.probe.count()
            self.client.live(**self.next_change(), transition=LONG_BLEND)
            second = self.probe.wait(lambda a: True, seen + 1, self.timeout())
            if second is None:
                raise SystemExit("the blend made no frames")
            spacing = self.probe.log[second].at - self.probe.log[second - 1].at
            time.sleep(self.rng.uniform(0.0, spacing))
            busy.append(self._one_change())
            self.wait_idle()  # a cut ends the blend: the session goes idle after the changed frame
            time.sleep((1.0 / fps if fps else 0.0) + 0.05)  # idle for longer than a frame's pacing
            idle.append(self._one_change())
            self.wait_idle()
        self.client.live(False)
        return [self._summary(fps, "busy", busy), self._summary(fps, "idle", idle)]

    def _one_change(self) -> tuple[float, int, float]:
        change = self.next_change()
        seen = self.probe.count()
        sent = time.monotonic()
        self.client.live(**change, transition=0)
        index = self.await_frame(change, seen)
        arrival = self.probe.log[index]
        before = sum(1 for a in self.probe.log[seen:index] if a.at > sent)
        return arrival.at - sent, before, arrival.generate_s

    def _summary(self, fps: float, state: str, samples: list[tuple[float, int, float]]) -> dict[str, Any]:
        latency = np.array([s[0] for s in samples]) * 1000.0
        before = np.array([s[1] for s in samples])
        return {**self.label, "measure": "latency", "state": state, "live_fps": fps, "samples": len(samples),
                "change": self.change, "latency_p50_ms": round(float(np.median(latency)), 2),
                "latency_max_ms": round(float(latency.max()), 2),
                "latency_min_ms": round(float(latency.min()), 2),
                "frames_before_p50": float(np.median(before)), "frames_before_max": int(before.max()),
                "frames_before": [int(b) for b in before],
                "changed_frame_generate_s_p50": round(float(np.median([s[2] for s in samples])), 4),
                "changed_frame_generate_s": [round(s[2], 3) for s in samples], "load1": round(os.getloadavg()[0], 2)}

    def close(self) -> None:
        self.probe.close()
        self.client.close()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def steered(row: dict[str, Any]) -> str:
    if "steer_latency_p50_ms" not in row:
        return ""
    return (f"{row['steer_latency_p50_ms']:.1f} / {row['steer_latency_max_ms']:.1f} "
            f"({row['steer_frames_before_p50']:g} / {row['steer_frames_before_max']})")


def table(rows: list[dict[str, Any]]) -> str:
    rates = [r for r in rows if r["measure"] == "rate"]
    latencies = [r for r in rows if r["measure"] == "latency"]
    lines = ["| backend | size | steps | drive | live_fps | fps delivered | interval p50 / max ms "
             "| backend s/frame p50 | superseded | steer change → screen p50 / max ms (frames before p50 / max) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rates:
        lines.append(f"| {r['backend']} | {r['size']} | {r['steps']} | {r['drive']} | {r['live_fps']:g} | "
                     f"{r['fps']:.2f} | {r['interval_p50_ms']:.1f} / {r['interval_max_ms']:.1f} | "
                     f"{r['generate_s_p50']:.4f} | {r['superseded']} of {r['made']} | {steered(r)} |")
    lines += ["", "| backend | size | steps | live_fps | state | change → screen p50 / max ms "
              "| frames before p50 / max | samples |", "|---|---|---|---|---|---|---|---|"]
    for r in latencies:
        lines.append(f"| {r['backend']} | {r['size']} | {r['steps']} | {r['live_fps']:g} | {r['state']} | "
                     f"{r['latency_p50_ms']:.1f} / {r['latency_max_ms']:.1f} | {r['frames_before_p50']:g} / "
                     f"{r['frames_before_max']} | {r['samples']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="demo", choices=["demo", "tiny", "full"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--size", default="512x256", help="WIDTHxHEIGHT")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--scheduler", default="lcm", choices=["ddim", "dpm++", "euler", "lcm", "tcd"])
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--decoder", default=None, choices=["tiny", "full"],
                        help="full backend: tiny (default) or the VAE; the tiny LDM3D always uses its own VAE")
    parser.add_argument("--fps", default="0,10", help="live_fps values, comma-separated (0: as fast as it goes)")
    parser.add_argument("--drive", default="blend,steer", help="rate drives, comma-separated: blend, steer")
    parser.add_argument("--change", default="seed", choices=["seed", "prompt"], help="what a latency sample changes")
    parser.add_argument("--seconds", type=float, default=10.0, help="rate window per measurement")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of a drive before its window (>= 2 frames)")
    parser.add_argument("--samples", type=int, default=8, help="latency samples (each: one busy, one idle)")
    parser.add_argument("--stream-batch", action="store_true", help="live param stream_batch true (LDM3D)")
    parser.add_argument("--compile", nargs="?", const="default", default=None,
                        choices=["default", "reduce-overhead", "max-autotune"], help="torch.compile the U-Net")
    parser.add_argument("--demo-step-delay", type=float, default=0.01, help="demo backend: seconds per step")
    args = parser.parse_args()
    if args.decoder is None:
        args.decoder = "tiny" if args.backend == "full" else "full"
    width, height = (int(v) for v in args.size.lower().split("x"))
    fps_values = [float(v) for v in args.fps.split(",")]
    drives = args.drive.split(",")
    if set(drives) - {"blend", "steer"}:
        raise SystemExit(f"--drive takes blend and/or steer, got {args.drive}")

    machine: dict[str, Any] = {"machine": cpu_name(), "cores": os.cpu_count(),
                               "python": platform.python_version(), "backend": args.backend, "device": args.device,
                               "dtype": args.dtype}
    if args.backend != "demo":
        import torch

        machine.update(torch=torch.__version__, threads=torch.get_num_threads(),
                       gpu=torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None)
    print(json.dumps(machine), flush=True)
    started = time.monotonic()
    backend = make_backend(args)
    print(json.dumps({"backend_ready_s": round(time.monotonic() - started, 1)}), flush=True)
    base = {"prompt": PROMPT, "width": width, "height": height, "steps": args.steps, "scheduler": args.scheduler,
            "guidance": args.guidance}
    live = {"stream_batch": True} if args.stream_batch else {}
    label = {"backend": args.backend, "size": f"{width}x{height}", "steps": args.steps, "scheduler": args.scheduler,
             "guidance": args.guidance, "decoder": args.decoder if args.backend != "demo" else None,
             "demo_step_delay": args.demo_step_delay if args.backend == "demo" else None,
             "stream_batch_asked": args.stream_batch, "compile": args.compile}
    server = Server(backend)
    bench = Bench(server, base, live, args.change, label)
    rows: list[dict[str, Any]] = []
    try:
        try:
            bench.warm()
        except CommandError as exc:
            raise SystemExit(f"the server refused the live parameters: {exc}") from None
        for fps in fps_values:
            for drive in drives:
                rows.append(bench.rate(fps, drive, args.seconds, args.warmup))
                print(json.dumps(rows[-1]), flush=True)
            for row in bench.latency(fps, args.samples):
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        bench.close()
        server.close()
    print(json.dumps({"total_s": round(time.monotonic() - started, 1)}), flush=True)
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
