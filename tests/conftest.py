"""Shared fixtures: an in-process generator server on free loopback ports."""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from generator.backends.demo import DemoBackend  # noqa: E402
from generator.server import GeneratorServer  # noqa: E402
from td_bridge.receiver import CommandClient, FrameReceiver  # noqa: E402

SMALL = {"width": 128, "height": 64, "steps": 2}


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.005)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningServer:
    """A GeneratorServer serving on its own thread until ``close()``."""

    def __init__(self, backend: Any = None, frames: str = "tcp://127.0.0.1:*",
                 commands: str = "tcp://127.0.0.1:*", **options: Any) -> None:
        self.server = GeneratorServer(backend or DemoBackend(), frames_address=frames,
                                      commands_address=commands, **options)
        self.server.bind()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.server.serve, args=(self.stop,), daemon=True)
        self.thread.start()

    @property
    def frames(self) -> str:
        return self.server.frames_endpoint

    @property
    def commands(self) -> str:
        return self.server.commands_endpoint

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive(), "server did not stop"


@pytest.fixture
def make_server() -> Iterator[Callable[..., RunningServer]]:
    servers: list[RunningServer] = []

    def make(*args: Any, **kwargs: Any) -> RunningServer:
        servers.append(RunningServer(*args, **kwargs))
        return servers[-1]

    yield make
    for s in servers:
        if s.thread.is_alive():
            s.close()


@pytest.fixture
def server(make_server: Callable[..., RunningServer]) -> RunningServer:
    return make_server()


@pytest.fixture
def client(server: RunningServer) -> Iterator[CommandClient]:
    with CommandClient(server.commands, timeout=5.0) as c:
        yield c


@pytest.fixture
def receiver(server: RunningServer) -> Iterator[FrameReceiver]:
    with FrameReceiver(server.frames) as r:
        wait_for(lambda: r.connected, what="receiver to hear the status heartbeat")
        yield r


def require_tool(name: str) -> str:
    """Path of a command-line tool; skip with a reason if missing, but fail under CI=true."""
    import os
    import shutil

    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (Debian: liblo-tools); `python3 dev.py test` installs it as root"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
