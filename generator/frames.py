"""Frame ids and the metadata every frame carries (wire header, metadata.json)."""

from __future__ import annotations

import secrets
import time
from typing import Any

from td_bridge.protocol import PROTOCOL_VERSION

from . import __version__
from .backends.base import RGBD, Backend


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
