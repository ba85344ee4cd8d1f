"""Depth estimation in the server: uploaded images become frames, generated frames get a depth check.

``EstimateJobs`` keeps each queued ``estimate`` command's image until the worker takes it and loads the estimator
on first use (``serve --estimator MODEL``). With ``serve --depth-check`` the same estimator also looks at every
generated frame's RGB and reports how well the frame's own depth agrees with its estimate: AbsRel and δ1 after
least-squares scale and shift alignment in disparity (generator.estimators.alignment), in the frame's header as
``depth_check``.
"""

from __future__ import annotations

import collections
import secrets
import threading
import time
from typing import Any, Callable

import numpy as np

from td_bridge.params import ESTIMATION_PARAMS, defaults, validate

from ..backends.base import RGBD, CancelledFn, ProgressFn
from .jobs import QueueFull
from .workers import Worker, WorkerModels

UPLOAD_KEY = "estimate_upload"  # the job param naming its stashed image
MAX_WAITING_UPLOADS = 4  # images of up to 100 MB each wait in memory


class EstimateJobs:
    """The server's depth estimation: uploaded images waiting for a worker; each worker loads its own copy of the
    estimator on its device (``load(device)``) at its first use."""

    def __init__(self, load: Callable[[str], Any], max_waiting: int = MAX_WAITING_UPLOADS) -> None:
        self._models, self._max_waiting = WorkerModels(load), max_waiting
        self._images: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        self._lock = threading.Lock()

    def job_params(self, args: dict[str, Any], rgb: np.ndarray, waiting: set[str]) -> dict[str, Any]:
        """Validated estimation params of a job for ``rgb`` (copied: the request buffer goes away), its image
        stashed under a token. ``waiting``: the tokens of jobs still queued (the images of cancelled jobs go);
        QueueFull when MAX_WAITING_UPLOADS images already wait."""
        params = validate(args, ESTIMATION_PARAMS)
        token = secrets.token_hex(8)
        with self._lock:
            for gone in set(self._images) - waiting:
                del self._images[gone]
            if len(self._images) >= self._max_waiting:
                raise QueueFull(f"{self._max_waiting} uploaded images are waiting already; try again when one is done")
            self._images[token] = np.array(rgb, dtype=np.uint8, copy=True)
        height, width = rgb.shape[:2]
        return {**params, "image_width": width, "image_height": height, UPLOAD_KEY: token}

    def run(self, params: dict[str, Any], progress: ProgressFn, cancelled: CancelledFn,
            job_id: str, worker: Worker) -> tuple[dict[str, Any], RGBD]:
        """On ``worker``'s thread: the estimated frame of the job's image."""
        from ..estimators.frame import estimated_frame

        with self._lock:
            rgb = self._images.pop(params[UPLOAD_KEY], None)
        if rgb is None:
            raise RuntimeError("the uploaded image of this job is gone (the job was cancelled)")
        estimation = {p.name: params[p.name] for p in ESTIMATION_PARAMS}
        source = {"upload": {"width": params["image_width"], "height": params["image_height"]}}
        return estimated_frame(self._models.get(worker), rgb, estimation, source=source, progress=progress,
                               cancelled=cancelled, job_id=job_id)

    def depth_check(self, result: RGBD, worker: Worker) -> dict[str, Any]:
        """On ``worker``'s thread: how well a generated frame's depth agrees with the estimator's depth of its RGB."""
        from ..estimators.alignment import consistency
        from ..estimators.frame import estimate_rgbd

        started = time.perf_counter()
        model = self._models.get(worker)
        estimate = estimate_rgbd(model, result.rgb, {**defaults(ESTIMATION_PARAMS), "views": "cube"})  # 6 views
        check = consistency(estimate.depth.astype(np.float64) / 65535.0, result.depth.astype(np.float64) / 65535.0)
        return {"model": model.model, "abs_rel": round(check.abs_rel, 6), "delta1": round(check.delta1, 6),
                "pixels": check.pixels, "seconds": round(time.perf_counter() - started, 3)}
