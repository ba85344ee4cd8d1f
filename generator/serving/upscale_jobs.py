"""The server's upscale jobs: ``upscale`` commands and ``generate`` requests with ``upscale`` true.

Each queued job's source frame waits here until the worker takes it; the upscaler loads on the first job. The
frame itself is made by :func:`generator.upscaling.upscale_frame`, which the CLI verbs share.
"""

from __future__ import annotations

import collections
import secrets
import threading
from typing import Any, Callable

from td_bridge.params import UPSCALE_PARAMS, ParamError

from ..backends.base import RGBD, CancelledFn, ProgressFn
from ..upscaling import upscale_frame, upscale_params
from .workers import Worker, WorkerModels


def split_upscale(args: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(upscale params or None, the other args) of a generate request: ``upscale`` true upscales the frame
    afterwards with the ``upscale_*`` fields; those without it are refused."""
    from ..cues import UPSCALE

    rest = {k: v for k, v in args.items() if k != "upscale" and not str(k).startswith("upscale_")}
    given = {k: v for k, v in args.items() if str(k).startswith("upscale_")}
    if not UPSCALE.coerce(args.get("upscale", False)):
        if given:
            raise ParamError(f"{', '.join(given)} given without upscale = true")
        return None, rest
    return upscale_params(given), rest


FRAME_KEYS = ("frame_id", "cue", "name")  # how an upscale request names its source frame
SOURCE_KEY = "upscale_source"  # the job param naming its stashed source frame


class UpscaleJobs:
    """The server's upscaling: the source frame of each queued upscale job kept until the worker takes it (the
    newest ``keep`` of them: a cancelled job's source goes with time), the upscaler loaded on the first job."""

    def __init__(self, load: Callable[[str], Any], keep: int = 32) -> None:
        self._models, self._keep = WorkerModels(load), keep
        self._sources: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._chained: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def job_params(self, args: dict[str, Any], frame: Any) -> dict[str, Any]:
        """Validated params of an upscale job for ``frame`` (a decoded frame), its source stashed under a token."""
        params = upscale_params(args)
        token = secrets.token_hex(8)
        with self._lock:
            self._sources[token] = frame
            while len(self._sources) > self._keep:
                self._sources.popitem(last=False)
        return {**params, "source_frame_id": frame.meta.get("frame_id"), SOURCE_KEY: token}

    def chain(self, job_id: str, upscale: dict[str, Any]) -> None:
        """Upscale the frame of generation job ``job_id`` with ``upscale`` once it is published."""
        with self._lock:
            self._chained[job_id] = upscale
            while len(self._chained) > self._keep:  # a cancelled job's entry goes with time
                self._chained.popitem(last=False)

    def chained(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._chained.pop(job_id, None)

    def run(self, params: dict[str, Any], progress: ProgressFn, cancelled: CancelledFn,
            job_id: str, worker: Worker) -> tuple[dict[str, Any], RGBD]:
        """On ``worker``'s thread: upscale the job's source with the worker's own upscaler (loaded at its first
        job, on the worker's device)."""
        with self._lock:
            frame = self._sources.pop(params[SOURCE_KEY], None)
        if frame is None:
            raise RuntimeError("the source frame of this upscale job was dropped (too many jobs queued)")
        upscale = {k: v for k, v in params.items() if k in {p.name for p in UPSCALE_PARAMS}}
        return upscale_frame(self._models.get(worker), frame.meta, frame.rgb, frame.depth, upscale, progress, cancelled,
                             job_id=job_id)
