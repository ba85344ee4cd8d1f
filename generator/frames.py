"""Frame ids and the metadata every frame carries (wire header, metadata.json)."""

from __future__ import annotations

import secrets
import threading
import time
from typing import TYPE_CHECKING, Any

from td_bridge.params import DISPLAY_PARAMS, find_param, validate
from td_bridge.protocol import PROTOCOL_VERSION, STAMP_BYTES, check_arrays, encode_header, frame_header

from . import __version__
from .backends.base import RGBD, Backend, CancelledFn, ProgressFn
from .backends.memory import record_peak, reset_peak

if TYPE_CHECKING:
    from .library import Entry, FrameLibrary


_clock_lock = threading.Lock()
_last_micros = 0


def _creation_micros() -> int:
    """Microseconds since the epoch, strictly increasing within this process."""
    global _last_micros
    with _clock_lock:
        _last_micros = max(time.time_ns() // 1000, _last_micros + 1)
        return _last_micros


def new_frame_id(micros: int | None = None) -> str:
    """Unique and sortable by creation time: UTC time to the microsecond plus 8 random hex digits,
    e.g. 20261125T075501.123456Z-3f2a1c9b. Two ids of one process never share a microsecond."""
    micros = _creation_micros() if micros is None else micros
    seconds, fraction = divmod(micros, 1_000_000)
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(seconds))}.{fraction:06d}Z-{secrets.token_hex(4)}"


def frame_meta(
    backend: Backend, params: dict[str, Any], result: RGBD, *, generate_s: float, created_at: float,
    job_id: str | None = None,
) -> dict[str, Any]:
    """Everything a frame's header and metadata.json record besides the layout fields."""
    return {
        "model": backend.model,
        "backend": backend.name,
        "prompt": params.get("prompt", ""),  # an upscaled frame records only what its source did
        "negative_prompt": params.get("negative_prompt", ""),
        "seed": params.get("seed"),
        "params": dict(params),
        "job_id": job_id,
        "created_at": created_at,
        "timings": {"generate_s": round(generate_s, 6)},
        "generator": {"depthfusion": __version__, "protocol": PROTOCOL_VERSION},
        "backend_info": result.info,
    }


def display_for_frame(given: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """Display parameters given, validated; the metric mapping (given, or the default) takes the frame's recorded
    near/far unless given."""
    if given.get("mapping", find_param("mapping", DISPLAY_PARAMS).default) == "metric":
        recorded = meta.get("depth") or {}
        given = {**{k: recorded[k] for k in ("near", "far") if recorded.get(k) is not None}, **given}
    return validate(given, DISPLAY_PARAMS)


def make_frame(backend: Backend, params: dict[str, Any], progress: ProgressFn, cancelled: CancelledFn,
               job_id: str | None = None) -> tuple[dict[str, Any], RGBD]:
    """Run the backend; (header with a new frame id, result). Arrays are checked first, and the
    header's size: a frame that no conforming client could read fails here (ProtocolError). A backend on a torch
    ``device`` records its peak memory in the frame's info (backends.memory.record_peak)."""
    device = getattr(backend, "device", None)
    reset_peak(device)
    started = time.perf_counter()
    result = backend.generate(params, progress, cancelled)
    record_peak(device, result.info)
    return frame_for(backend, params, result, time.perf_counter() - started, job_id=job_id), result


def frame_for(backend: Backend, params: dict[str, Any], result: RGBD, generate_s: float,
              job_id: str | None = None, extra: dict[str, Any] | None = None, kind: str = "frame") -> dict[str, Any]:
    """The header of a made frame (a new frame id; ``extra`` joins its metadata; ``kind`` live for a live frame). Arrays are checked first, and the
    header's size: a frame that no conforming client could read fails here (ProtocolError)."""
    check_arrays(result.rgb, result.depth)
    micros = _creation_micros()
    meta = frame_meta(backend, params, result, generate_s=generate_s, job_id=job_id, created_at=micros / 1e6)
    header = frame_header(result.rgb, result.depth, frame_id=new_frame_id(micros), seq=0,
                          meta={**meta, **(extra or {})}, near=result.near, far=result.far, kind=kind)
    encode_header(header, reserve=STAMP_BYTES)
    return header


def generate_into_library(backend: Backend, params: dict[str, Any], library: FrameLibrary) -> Entry:
    """One frame, straight into the library; returns its entry."""
    header, result = make_frame(backend, params, lambda step, total: None, lambda: False)
    return library.save(header, result.rgb, result.depth)


def estimate_into_library(model: Any, params: dict[str, Any], library: Any) -> Any:
    """An image cue (generator.cues) estimated straight into the library; returns its entry."""
    import hashlib
    from pathlib import Path

    from .estimators.frame import estimated_frame
    from .estimators.inputs import ImageError, read_image

    path = Path(params["image"])
    if hashlib.sha256(path.read_bytes()).hexdigest() != params["image_sha256"]:
        raise ImageError(f"{path} changed while the cue list ran; run pregenerate again")
    rgb, info = read_image(path)
    header, result = estimated_frame(model, rgb, params, source=info)
    return library.save(header, result.rgb, result.depth)
