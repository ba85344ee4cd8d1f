"""OSC /depthfusion/ping round trip, idle and during a garbage flood.

    python bench/osc_ping.py [--pings 500] [--flood-seconds 5]

Starts `python -m generator serve --model demo` with OSC on a free loopback port. A client
sends /depthfusion/ping and waits for /depthfusion/pong (the reply travels the full command
path: UDP → checks → ZeroMQ → server → back). The flood comes from a second process sending
malformed and mutated packets as fast as it can for a bounded time, to loopback only.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from generator.serving.osc_space import osc_message  # noqa: E402


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def garbage(rng: random.Random) -> bytes:
    kind = rng.randrange(3)
    if kind == 0:
        return b"#bundle\0" + b"\0" * 8 + struct.pack(">i", -8) + b"/a\0\0,\0\0\0"
    if kind == 1:
        packet = bytearray(osc_message("/depthfusion/prompt", "a room at dawn"))
        packet[rng.randrange(len(packet))] = rng.randrange(256)
        return bytes(packet)
    return rng.randbytes(rng.randrange(4, 256))


def flood(port: int, seconds: float, rate: float, counter) -> None:
    """Send garbage for ``seconds`` at ``rate`` packets/s (0 = as fast as possible)."""
    rng = random.Random(1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    packets = [garbage(rng) for _ in range(512)]
    sent, start = 0, time.monotonic()
    while (now := time.monotonic()) < start + seconds:
        if rate and sent > rate * (now - start):
            time.sleep(0.001)
            continue
        for packet in packets[:32]:
            sock.sendto(packet, ("127.0.0.1", port))
        sent += 32
        rng.shuffle(packets)
    counter.value = sent


def pings(port: int, count: int, timeout: float = 0.5) -> tuple[list[float], int]:
    """Round-trip times of answered pings, and how many got no answer within ``timeout``
    (over UDP a flood can overflow the socket buffer, and the kernel drops datagrams)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(timeout)
    ping, times, lost = osc_message("/depthfusion/ping"), [], 0
    for _ in range(count):
        start = time.perf_counter()
        sock.sendto(ping, ("127.0.0.1", port))
        try:
            while b"/depthfusion/pong" not in sock.recvfrom(65536)[0]:
                pass
            times.append(time.perf_counter() - start)
        except TimeoutError:
            lost += 1
    sock.close()
    return times, lost


def summary(times: list[float]) -> dict[str, float]:
    if not times:
        return {"n": 0}
    ms = np.asarray(times) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "max_ms": round(float(ms.max()), 3), "n": len(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pings", type=int, default=500)
    parser.add_argument("--flood-seconds", type=float, default=4.0)
    parser.add_argument("--rates", default="1000,5000,20000,0",
                        help="garbage packets per second, one flood each (0 = as fast as the sender can)")
    args = parser.parse_args()
    port = free_udp_port()
    server = subprocess.Popen([sys.executable, "-m", "generator", "--log-level", "ERROR", "serve", "--model", "demo",
                               "--no-library",
                               "--frames", "tcp://127.0.0.1:*", "--commands", "tcp://127.0.0.1:*",
                               "--osc-port", str(port)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while not pings(port, 1)[0]:
            if time.monotonic() > deadline:
                raise TimeoutError("the generator did not answer /ping")
        idle, idle_lost = pings(port, args.pings)
        results = {"idle": {**summary(idle), "lost": idle_lost}}
        for rate in (float(r) for r in args.rates.split(",")):
            counter = mp.Value("q", 0)
            flooder = mp.Process(target=flood, args=(port, args.flood_seconds, rate, counter))
            flooder.start()
            time.sleep(0.2)
            during, during_lost = [], 0
            while flooder.is_alive() and len(during) + during_lost < args.pings:
                answered, lost = pings(port, 10)
                during, during_lost = during + answered, during_lost + lost
            flooder.join()
            sent_rate = round(counter.value / args.flood_seconds)
            results[f"flood_{sent_rate}_per_s"] = {**summary(during), "lost": during_lost}
            time.sleep(1.0)  # let the socket queue drain before the next rate
        after, after_lost = pings(port, 50)
        results["after_floods"] = {**summary(after), "lost": after_lost}
    finally:
        server.terminate()
        server.wait(15)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
