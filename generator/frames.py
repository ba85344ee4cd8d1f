"""Frame ids and the metadata every frame carries (wire header, metadata.json)."""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, Any

from td_bridge.protocol import PROTOCOL_VERSION, check_arrays, frame_header

from . import __version__
from .backends.base import RGBD, Backend, CancelledFn, ProgressFn

if TYPE_CHECKING:
    from .library import Entry, FrameLibrary


def new_frame_id() -> str:
    """Sortable, unique: UTC time plus 8 random hex digits, e.g. 20261125T075501Z-3f2a1c9b."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(4)


def frame_meta(
    backend: Backend, params: dict[str, Any], result: RGBD, *, generate_s: float, job_id: str | None = None
) -> dict[str, Any]:
    """Everything a frame's header and metadata.json record besides the layout fields."""
    return {
        "model": backend.model,
        "backend": backend.name,
        "prompt": params["prompt"],
        "negative_prompt": params["negative_prompt"],
        "seed": params["seed"],
        "params": dict(params),
        "job_id": job_id,
        "created_at": time.time(),
        "timings": {"generate_s": round(generate_s, 6)},
        "generator": {"depthfusion": __version__, "protocol": PROTOCOL_VERSION},
        "backend_info": result.info,
    }


def make_frame(backend: Backend, params: dict[str, Any], progress: ProgressFn, cancelled: CancelledFn,
               job_id: str | None = None) -> tuple[dict[str, Any], RGBD]:
    """Run the backend; (header with a new frame id, result). Arrays are checked first."""
    started = time.perf_counter()
    result = backend.generate(params, progress, cancelled)
    check_arrays(result.rgb, result.depth)
    meta = frame_meta(backend, params, result, generate_s=time.perf_counter() - started, job_id=job_id)
    header = frame_header(result.rgb, result.depth, frame_id=new_frame_id(), seq=0, meta=meta,
                          near=result.near, far=result.far)
    return header, result


def generate_into_library(backend: Backend, params: dict[str, Any], library: FrameLibrary) -> Entry:
    """One frame, straight into the library; returns its entry."""
    header, result = make_frame(backend, params, lambda step, total: None, lambda: False)
    return library.save(header, result.rgb, result.depth)
