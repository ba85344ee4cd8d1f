"""What every backend provides: RGBD out of validated generation parameters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np

ProgressFn = Callable[[int, int], None]
"""Called as progress(step, total) after each step (1-based)."""

CancelledFn = Callable[[], bool]
"""Returns True once the running job should stop."""


class Cancelled(Exception):
    """Raised by a backend that stopped because its job was cancelled."""


class BackendUnavailable(RuntimeError):
    """A backend cannot be loaded here (missing packages, weights or device)."""


@dataclass
class RGBD:
    """A generated frame: rgb (H, W, 3) uint8, depth (H, W) uint16 relative inverse depth."""

    rgb: np.ndarray
    depth: np.ndarray
    near: float | None = None
    far: float | None = None
    info: dict[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    name: str
    model: str

    def generate(self, params: dict[str, Any], progress: ProgressFn, cancelled: CancelledFn) -> RGBD:
        """Make one frame from validated params (seed already resolved)."""
        ...

    def check(self, params: dict[str, Any]) -> Any:
        """Raise ParamError for validated params this backend cannot make (checked before a job is queued)."""
        ...
