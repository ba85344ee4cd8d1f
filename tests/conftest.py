"""Shared fixtures: an in-process generator server on free loopback ports."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Subprocesses and in-process CLI calls keep frames here, never in the user's own library.
_LIBRARY = tempfile.TemporaryDirectory(prefix="depthfusion-test-library-")
os.environ["DEPTHFUSION_LIBRARY"] = _LIBRARY.name

from generator.backends.demo import DemoBackend  # noqa: E402
from generator.serving.server import GeneratorServer  # noqa: E402
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


# What the TouchDesigner builder and extension replace in Python's module cache, as they do inside TouchDesigner:
# the builder re-imports the repository's modules, the component loads its embedded td_bridge under that name.
_TD_SIDE_MODULES = ("td_bridge", "parameters", "shader_source", "build_depthfusion")


@pytest.fixture(autouse=True)
def keep_module_cache() -> Iterator[None]:
    """Put back td_bridge's (and the builder's) modules, sys.path and the import finders after each test, so one
    test's rebuilt or embedded td_bridge never reaches the next (classes such as ParamError stay the ones the
    test modules imported)."""
    saved = {name: module for name, module in sys.modules.items() if name.split(".")[0] in _TD_SIDE_MODULES}
    path, finders = list(sys.path), list(sys.meta_path)
    yield
    for name in [name for name in sys.modules if name.split(".")[0] in _TD_SIDE_MODULES]:
        del sys.modules[name]
    sys.modules.update(saved)
    sys.path[:], sys.meta_path[:] = path, finders


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny torch models on a shared CPU: their ops are too small to split, and a second intra-op thread spins
    against other processes' load (a tiny forward took 0.5-1.1 s instead of 0.03 s under a load of 8 on 2
    cores). Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``; what a test
    compares runs on the same thread count either way."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ctx() -> Iterator[Any]:
    """A moderngl context on Mesa's EGL (llvmpipe) for the renderer; skips where there is none, fails under CI (the
    test environment installs moderngl; TouchDesigner's numpy environment, .venv-td, does not: it skips there)."""
    pytest.importorskip("moderngl")
    from generator.render.gl import GLUnavailable, create_context

    try:
        context = create_context()
    except GLUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    yield context
    context.release()


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


def require_tool(name: str, package: str = "liblo-tools") -> str:
    """Path of a command-line tool; skip with a reason if missing, but fail under CI=true."""
    import shutil

    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (Debian: {package}); `python3 dev.py test` installs it as root"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def require_node_module(name: str) -> Path:
    """The folder of an npm package of dev.NODE_TOOLS in the test environment's node_modules; skip with a reason if
    missing, but fail under CI=true."""
    from dev import NODE_TOOLS

    folder = Path(sys.prefix) / "node_modules" / name
    if not folder.is_dir():
        pinned = next(tool for tool in NODE_TOOLS if tool.rsplit("@", 1)[0] == name)
        message = f"needs `npm install --prefix {sys.prefix} {pinned}` (`python3 dev.py test` installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return folder


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CLI_ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """`python -m generator ARGS` in a subprocess; output captured as text."""
    return subprocess.run([sys.executable, "-m", "generator", *args], cwd=ROOT, env=CLI_ENV,
                          capture_output=True, text=True, timeout=timeout)


class Served:
    """`python -m generator serve` on free ports; endpoints read from its log, which a thread keeps
    draining so that a chatty server never blocks on a full pipe."""

    def __init__(self, *args: str, python: Sequence[str] = ("-m", "generator")) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, *python, "serve", "--frames", "tcp://127.0.0.1:*",
             "--commands", "tcp://127.0.0.1:*", *args],
            cwd=ROOT, env=CLI_ENV, stderr=subprocess.PIPE, text=True,
        )
        self.log: list[str] = []
        self._drain: threading.Thread | None = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.log.append(line)
            match = re.search(r"frames on (\S+), commands on (\S+)", line)
            if match:
                self.frames, self.commands = match.groups()
                self._drain = threading.Thread(target=self._read_log, daemon=True)
                self._drain.start()
                return
        self.stop()
        pytest.fail("serve did not start:\n" + "".join(self.log))

    def _read_log(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line)

    def kill(self) -> int:
        """End it at once, as a crash would (SIGKILL; TerminateProcess on Windows)."""
        self.proc.kill()
        return self.stop()

    def stop(self, sig: int = signal.SIGINT) -> int:
        """Send ``sig``, wait, and return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=15)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
        if self._drain is not None:
            self._drain.join(5)
        else:
            self.log.append(self.proc.stderr.read())
        self.proc.stderr.close()
        return self.proc.returncode
