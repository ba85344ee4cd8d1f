"""The server's remix jobs: ``remix`` commands (a region of a kept frame regenerated with a new prompt).

Each queued job's source frame and mask wait here until a worker takes the job; the worker's own backend remixes
(generator.remixing.remix_frame, which the CLI verb shares).
"""

from __future__ import annotations

import collections
import secrets
import threading
from typing import Any

import numpy as np

from ..backends.base import RGBD, CancelledFn, ProgressFn
from ..remixing import check_remixable, region_mask, remix_frame, remix_params
from .workers import Worker

SOURCE_KEY = "remix_source"  # the job param naming its stashed source frame
SOURCE_FRAME_KEYS = ("frame_id", "name")  # how a remix names its source (cue is the new frame's own)


class RemixJobs:
    """The source frame and mask of each queued remix job, kept until a worker takes it (the newest ``keep``: a
    cancelled job's source goes with time)."""

    def __init__(self, keep: int = 32) -> None:
        self._keep = keep
        self._sources: collections.OrderedDict[str, tuple[Any, np.ndarray]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def job_params(self, args: dict[str, Any], frame: Any, backend: Any) -> dict[str, Any]:
        """Validated params of a remix of ``frame`` (a decoded frame) with ``backend``; its source and region
        mask stashed under a token. Bad params, a region that repaints nothing or everything, or a backend that
        cannot remix: ParamError."""
        check_remixable(backend)
        height, width = frame.depth.shape
        params = remix_params(args, width, height)
        check = getattr(backend, "check", None)
        if check is not None:
            check(params)
        mask = region_mask(params, width, height)
        token = secrets.token_hex(8)
        with self._lock:
            self._sources[token] = (frame, mask)
            while len(self._sources) > self._keep:
                self._sources.popitem(last=False)
        return {**params, "source_frame_id": frame.meta.get("frame_id"), SOURCE_KEY: token}

    def run(self, params: dict[str, Any], progress: ProgressFn, cancelled: CancelledFn,
            job_id: str, worker: Worker) -> tuple[dict[str, Any], RGBD]:
        """On ``worker``'s thread: remix the job's source with the worker's backend."""
        with self._lock:
            stashed = self._sources.pop(params[SOURCE_KEY], None)
        if stashed is None:
            raise RuntimeError("the source frame of this remix job was dropped (too many jobs queued)")
        frame, mask = stashed
        remix = {k: v for k, v in params.items() if k not in (SOURCE_KEY, "source_frame_id")}
        return remix_frame(worker.backend, frame.meta, frame.rgb, frame.depth, mask, remix, progress, cancelled,
                           job_id=job_id)
