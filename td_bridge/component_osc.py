"""OSC addressed to the TouchDesigner component itself (its optional OSC In DAT).

The address space follows the generator's (``/depthfusion/<parameter> value``, ``/depthfusion/generate
[prompt]``) and adds the component's own display and view parameters and ``connect`` /
``disconnect``. Every message is checked against td_bridge.params before anything changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from .params import DISPLAY_PARAMS, GENERATION_PARAMS, VIEW_PARAMS, Param, ParamError, find_param

PREFIX = "/depthfusion/"
ROUTED_PARAMS: tuple[Param, ...] = GENERATION_PARAMS + DISPLAY_PARAMS + VIEW_PARAMS
ACTIONS = {  # name → (fewest, most) arguments
    "generate": (0, 1),  # [prompt]
    "cancel": (0, 0),
    "recall": (1, 1),  # frame id or cue
    "connect": (0, 0),
    "disconnect": (0, 0),
}
MAX_NAME = 200


@dataclass(frozen=True)
class OscRoute:
    """What a message asks for: set parameter ``name`` to ``value``, or run action ``name``."""

    kind: str  # "set" or "action"
    name: str
    value: Any = None


def route(address: str, args: Sequence[Any]) -> OscRoute:
    """The checked meaning of one OSC message; ParamError says what is wrong with it."""
    if not isinstance(address, str) or not address.startswith(PREFIX):
        raise ParamError(f"{address!r}: DepthFusion listens under {PREFIX}")
    name = address[len(PREFIX):]
    args = list(args)
    if name in ACTIONS:
        low, high = ACTIONS[name]
        if not low <= len(args) <= high:
            wanted = str(low) if low == high else f"{low} to {high}"
            raise ParamError(f"{name}: takes {wanted} argument(s), got {len(args)}")
        if name == "generate":
            return OscRoute("action", name, find_param("prompt").coerce(args[0]) if args else None)
        if name == "recall":
            value = args[0]
            if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME:
                raise ParamError(f"recall: needs a frame id or cue name of 1 to {MAX_NAME} characters")
            return OscRoute("action", name, value.strip())
        return OscRoute("action", name)
    try:
        param = find_param(name, ROUTED_PARAMS)
    except ParamError:
        raise ParamError(f"unknown address {address}; known: "
                         f"{', '.join([*ACTIONS, *(p.name for p in ROUTED_PARAMS)])}") from None
    if len(args) != 1:
        raise ParamError(f"{name}: takes 1 argument, got {len(args)}")
    return OscRoute("set", name, param.coerce(args[0]))
