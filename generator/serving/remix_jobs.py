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

from td_bridge.params import ParamError
from td_bridge.protocol import MASK_FORMAT
from td_bridge.region import check_mask

from ..backends.base import RGBD, CancelledFn, ProgressFn
from ..remixing import REMIX_NAMES, check_remixable, region_mask, remix_frame, remix_params
from .workers import Worker

SOURCE_KEY = "remix_source"  # the job param naming its stashed source frame
MASK_KEY = "remix_mask"  # a job param (and the new frame's): what its uploaded mask image was
SOURCE_FRAME_KEYS = ("frame_id", "name")  # how a remix names its source (cue is the new frame's own)


class RemixJobs:
    """The source frame and mask of each queued remix job, kept until a worker takes it (the newest ``keep``: a
    cancelled job's source goes with time)."""

    def __init__(self, keep: int = 32) -> None:
        self._keep = keep
        self._sources: collections.OrderedDict[str, tuple[Any, np.ndarray]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def job_params(self, args: dict[str, Any], frame: Any, backend: Any,
                   mask_image: np.ndarray | None = None) -> dict[str, Any]:
        """Validated params of a remix of ``frame`` (a decoded frame) with ``backend``; its source and mask (the
        ``remix_*`` region's, or ``mask_image``: uint8, 255 repaints) stashed under a token. Bad params, a mask that
        repaints nothing or everything or is not the frame's size, a region given beside a mask image, or a backend
        that cannot remix: ParamError."""
        check_remixable(backend)
        height, width = frame.depth.shape
        if mask_image is not None and set(args) & REMIX_NAMES:
            raise ParamError("give a mask image or a region (remix_*), not both")
        params = remix_params(args, width, height)
        check = getattr(backend, "check", None)
        if check is not None:
            check(params)
        if mask_image is None:
            mask = region_mask(params, width, height)
        else:  # the frame records the mask, not a region it was not made with
            mask = check_mask(mask_image, width, height)
            params = {k: v for k, v in params.items() if k not in REMIX_NAMES}
            params[MASK_KEY] = f"uploaded {width}x{height} {MASK_FORMAT}"
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
        remix = {k: v for k, v in params.items() if k not in (SOURCE_KEY, "source_frame_id", MASK_KEY)}
        return remix_frame(worker.backend, frame.meta, frame.rgb, frame.depth, mask, remix, progress, cancelled,
                           job_id=job_id, mask_name=params.get(MASK_KEY))
