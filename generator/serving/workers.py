"""The server's workers: one per device, each with its own copy of the model, all taking jobs from one queue.

A worker's thread is the only one that runs its backend. What a failure means for the device is read from the
exception: out of memory fails the job and the worker goes on; a lost device (a CUDA error, a device-side assert)
fails the job and stops the worker, the others go on; anything else fails the job only.
"""

from __future__ import annotations

import re
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable

from ..backends.base import Backend
from .jobs import Job

IDLE, BUSY, LIVE, FAILED = "idle", "busy", "live", "failed"
MAX_DEVICES = 64  # workers one server runs
_DEVICE = re.compile(r"auto|cpu|mps|cuda|cuda:\d{1,2}")
OUT_OF_MEMORY, LOST_DEVICE = "out of memory", "lost device"
# what torch's RuntimeErrors say when the device itself broke: its context is unusable from then on
_LOST = re.compile(r"CUDA error|device-side assert|CUDA driver error|CUBLAS_STATUS_EXECUTION_FAILED", re.IGNORECASE)
_OOM = re.compile(r"out of memory", re.IGNORECASE)


@dataclass
class Worker:
    """One device's worker: its backend, the job it runs and, once its device failed, why."""

    index: int
    device: str
    backend: Backend
    job: Job | None = None
    error: str | None = None  # set when the device failed: the worker takes no more jobs
    thread: threading.Thread | None = None

    @property
    def serving(self) -> bool:
        return self.error is None

    def label(self) -> dict[str, Any]:
        """What a frame's header says of the worker that made it."""
        return {"index": self.index, "device": self.device}

    def summary(self, *, live: bool) -> dict[str, Any]:
        """The worker in a status event; ``live``: it runs the live session now."""
        state = FAILED if self.error else BUSY if self.job is not None else LIVE if live else IDLE
        return {**self.label(), "state": state, "job_id": self.job.id if self.job is not None else None,
                "error": self.error}


class WorkerModels:
    """A model each worker loads for itself, on its own device, at its first use (the upscaler, the estimator):
    ``load(device)`` makes one copy; a worker's thread only ever uses its own."""

    def __init__(self, load: Callable[[str], Any]) -> None:
        self._load = load
        self._models: dict[int, Any] = {}

    def get(self, worker: Worker) -> Any:
        if worker.index not in self._models:
            self._models[worker.index] = self._load(worker.device)
        return self._models[worker.index]


def parse_devices(text: str) -> list[str]:
    """serve's ``--device``: one device (auto, cpu, mps, cuda, cuda:N), a comma list of them (one worker each;
    only cpu may repeat) or ``all`` (every CUDA GPU torch sees). ValueError names what is wrong."""
    text = text.strip()
    if text == "all":
        return _all_cuda()
    names = [part.strip() for part in text.split(",")]
    bad = [name for name in names if not _DEVICE.fullmatch(name)]
    if bad:
        raise ValueError(f"--device: {', '.join(map(repr, bad))} is not a device; give auto, cpu, mps, cuda, cuda:N, "
                         "a comma list of them (cuda:0,cuda:1) or all")
    if len(names) > MAX_DEVICES:
        raise ValueError(f"--device: {len(names)} devices; at most {MAX_DEVICES}")
    if len(names) > 1 and "auto" in names:
        raise ValueError("--device: auto picks one device; name each device of a list (cuda:0,cuda:1)")
    same = ["cuda:0" if name == "cuda" else name for name in names]
    twice = sorted({name for name in same if same.count(name) > 1 and name != "cpu"})
    if twice:
        raise ValueError(f"--device: {', '.join(twice)} named twice; only cpu may repeat")
    return names


def _all_cuda() -> list[str]:
    """``--device all``: cuda:0 … cuda:N-1."""
    try:
        import torch
    except ImportError:
        raise ValueError("--device all needs torch with CUDA: pip install 'depthfusion[generator]'") from None
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ValueError("--device all: this torch build sees no CUDA GPU; name the devices instead (cpu, mps, …)")
    return [f"cuda:{index}" for index in range(count)]


def device_name(backend: Any) -> str:
    """The device a backend says it runs on (LDM3D: ``device``); the CPU for one that does not say (the demo)."""
    return str(getattr(backend, "device", "cpu"))


def device_fault(exc: BaseException) -> str | None:
    """OUT_OF_MEMORY, LOST_DEVICE or None (an ordinary failure) for an exception a backend raised."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if "OutOfMemoryError" in names or (isinstance(exc, RuntimeError) and _OOM.search(str(exc))):
        return OUT_OF_MEMORY
    if "AcceleratorError" in names or (isinstance(exc, RuntimeError) and _LOST.search(str(exc))):
        return LOST_DEVICE
    return None


def release_memory() -> None:
    """After an out-of-memory failure: hand torch's cached GPU memory back, so that the next job has a chance."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
