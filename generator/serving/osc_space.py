"""The OSC address space: every address the generator reads or sends, with fixed type tags.

Replies and events use only OSC 1.0's required argument types, ``i`` (int32), ``f`` (float32) and
``s`` (string), one fixed set per address whatever the values, so show-control tools (QLab,
Companion, TouchOSC, Chataigne) can match and read them. docs/osc.md is :func:`reference`.
"""

from __future__ import annotations

import json
from typing import Any

from pythonosc.osc_message_builder import OscMessageBuilder

from td_bridge.params import GENERATION_PARAMS, LIVE_PARAMS, REMIX_PARAMS, UPSCALE_PARAMS, Param

PREFIX = "/depthfusion/"
OSC_PARAMS = GENERATION_PARAMS + UPSCALE_PARAMS + REMIX_PARAMS + LIVE_PARAMS  # every parameter with an address
INT32_MAX = 2**31 - 1
COMMANDS = {
    "generate": "[prompt] — queue a generation with the current parameters (and, for this one only, this prompt)",
    "cancel": "[job_id] — cancel one job, or everything waiting and running",
    "recall": "frame_id or cue — publish a kept frame (the newest with that cue) again, without the model",
    "upscale": "frame_id or cue — upscale a kept frame with the current `upscale_*` parameters (the generator needs "
               "`--upscaler`); reply `/depthfusion/queued` with the upscale seed",
    "remix": "[prompt [yaw pitch width height]] — regenerate a region of the newest frame (the current `remix_*` "
             "region, or this one, in degrees) with the current generation parameters (and this prompt), keeping the "
             "rest; the new frame names its source. Reply `/depthfusion/queued` with the seed",
    "live": "1 or 0 — start the live session with the current parameters (frames back to back, paced to "
            "`live_fps`; docs/live.md), or stop it (the last frame stays on screen); reply `/depthfusion/live`",
    "keep": "[cue] — store the newest frame (the live frame on screen) in the frame library exactly as shown, "
            "under this cue; reply `/depthfusion/kept`",
    "take": "— re-render the newest live frame at full quality (its prompt, seed and blend; the full steps and "
            "decoder) as a job that is kept and published; reply `/depthfusion/queued`",
    "status": "— reply `/depthfusion/status`",
    "ping": "— reply `/depthfusion/pong`",
}
# name → (type tags, arguments); "s*" is any number of strings
REPLIES = {
    "pong": ("", "—"),
    "status": ("ssis", "state (`idle` or `generating`), backend, queued jobs, last frame id (`\"\"` when none)"),
    "queued": ("si", "job id, the seed it uses (a random one resolved)"),
    "cancelled": ("is*", "how many, then each cancelled job id"),
    "recalled": ("s", "frame id"),
    "kept": ("s", "frame id"),
    "live": ("i", "1 when the live session runs, 0 when it is stopped"),
    "error": ("ss", "the address it answers (`\"\"` when a packet had none), what is wrong"),
}
EVENTS = {
    "progress": ("sii", "job id, step, total steps"),
    "frame": ("si", "frame id, seq (counts from 1 in each generator run; wraps to 0 after 2147483647)"),
    "state": ("si", "state (`idle` or `generating`), queued jobs"),
    "depth_check": ("sff", "frame id, AbsRel (0 = agrees), delta1 (1 = agrees): the frame's depth against the "
                    "generator's depth model, after each generated frame with `serve --depth-check`"),
}
PARAM_TAGS = {int: "i", float: "f", bool: "i", str: "s"}  # bool echoes as 0 or 1
_TAG_NAMES = {"i": "int32", "f": "float32", "s": "string"}
_BUILDER_TYPES = {"i": OscMessageBuilder.ARG_TYPE_INT, "f": OscMessageBuilder.ARG_TYPE_FLOAT,
                  "s": OscMessageBuilder.ARG_TYPE_STRING}


def osc_message(address: str, *args: Any, tags: str | None = None) -> bytes:
    """One OSC message. ``tags`` fixes each argument's type (``s*`` at the end: the rest are strings) and
    a value that does not fit raises ValueError; without it, python-osc picks the types."""
    builder = OscMessageBuilder(address)
    if tags is None:
        for arg in args:
            builder.add_arg(arg)
        return builder.build().dgram
    fixed = tags.removesuffix("*")
    if len(args) != len(fixed) and not (tags.endswith("*") and len(args) >= len(fixed) - 1):
        raise ValueError(f"{address} takes {tags!r}, got {len(args)} arguments")
    for i, arg in enumerate(args):
        tag = fixed[min(i, len(fixed) - 1)]
        if tag == "i" and not (isinstance(arg, int) and -INT32_MAX - 1 <= arg <= INT32_MAX):
            raise ValueError(f"{address}: {arg!r} is not an int32")
        builder.add_arg({"i": int, "f": float, "s": str}[tag](arg), _BUILDER_TYPES[tag])
    return builder.build().dgram


def reply(name: str, *args: Any) -> bytes:
    """A reply or event under PREFIX with its documented type tags."""
    return osc_message(PREFIX + name, *args, tags={**REPLIES, **EVENTS}[name][0])


def param_echo(param: Param, value: Any) -> bytes:
    """The echo of a parameter set over OSC: its coerced value in the parameter's one type."""
    return osc_message(PREFIX + param.name, value, tags=PARAM_TAGS[param.kind])


def _types(tags: str) -> str:
    if not tags:
        return "none"
    names = [f"`{t}` {_TAG_NAMES[t]}" for t in tags.removesuffix("*")]
    return ", ".join(names) + (" …" if tags.endswith("*") else "")


def reference() -> str:
    """docs/osc.md, generated from the parameter schema and the tables above."""
    lines = [
        "# OSC address space",
        "",
        "Generated from `td_bridge/params.py` and `generator/serving/osc_space.py` by `python -m generator osc-doc`;",
        "do not edit by hand.",
        "",
        "The generator listens on UDP `127.0.0.1:9000` (`--osc-port`, `--osc-host`; a LAN address needs",
        "`--allow-lan` and `--osc-allow NETWORK`; senders outside those networks get no answer). Replies go to",
        "the sender's address, or to its host at `--osc-reply-port`. Every `--osc-target HOST:PORT` receives",
        "the events below.",
        "",
        "## Commands",
        "",
        "| address | arguments and reply |",
        "|---|---|",
        *(f"| `{PREFIX}{name}` | {text} |" for name, text in COMMANDS.items()),
        "",
        "## Replies and events: types",
        "",
        "Everything the generator sends uses only OSC 1.0's required types — `i` int32, `f` float32, `s`",
        "string — and each address always has the same type tags, whatever the values (a seed is always",
        "an `i`: seeds are limited to −1 (random) … 2147483647). Match on the address and read the arguments",
        "in order.",
        "",
        "| address | sent | type tags | arguments |",
        "|---|---|---|---|",
        *(f"| `{PREFIX}{name}` | reply | {_types(tags)} | {text} |" for name, (tags, text) in REPLIES.items()),
        *(f"| `{PREFIX}{name}` | event, to every `--osc-target` | {_types(tags)} | {text} |"
          for name, (tags, text) in EVENTS.items()),
        *(f"| `{PREFIX}{p.name}` | echo of a parameter | {_types(PARAM_TAGS[p.kind])} | the value as coerced"
          f"{' (1 = true, 0 = false)' if p.kind is bool else ''} |" for p in OSC_PARAMS),
        "",
        "Anything wrong gets `/depthfusion/error` (the message names the allowed range or the known",
        "addresses): a bad value, an unknown address, the wrong number of arguments, a command the",
        "generator refused, and a datagram that is not a well-formed OSC packet (truncated, misaligned, not",
        "UTF-8, an unsupported type tag, over 16384 bytes). At most 20 errors a second go to one sender",
        "(address and port), in bursts of up to 20; the rest are only counted in the log.",
        "",
        "## State",
        "",
        "- Parameter values set over OSC are **sticky** and belong to the generator's OSC server: one set",
        "  shared by every OSC sender of that generator, kept until changed or until the generator restarts",
        "  (then they start from the defaults below). They are not the ZeroMQ protocol's: a ZeroMQ `generate`",
        "  request takes the defaults for whatever it leaves out, and nothing it sends changes them.",
        "- `/depthfusion/generate prompt` uses that prompt for **this one** generation; the value of",
        "  `/depthfusion/prompt` stays as it was and is used again by a `/depthfusion/generate` without one.",
        "- `/depthfusion/cue NAME` sticks like every parameter: **every later generation** is filed under that",
        "  cue (and `/depthfusion/recall NAME` brings back the newest of them) until `/depthfusion/cue \"\"`.",
        "  A fixed `/depthfusion/seed` sticks too: set `-1` to draw a new one for each generation.",
        "- **While live** (`/depthfusion/live 1`, `serve --live` or the ZeroMQ `live` command), a generation",
        "  parameter or `live_fps`/`transition` set over OSC also steers the live session: it applies to the next",
        "  live frame (a new prompt, negative prompt or seed blends in over `transition` seconds). A value the",
        "  session refuses is answered with `/depthfusion/error`. `/depthfusion/live 1` starts it with every",
        "  parameter set so far.",
        "",
        "## Parameters",
        "",
        "Each sets the value the next `/depthfusion/generate` (the `upscale_*` ones: `/depthfusion/upscale`;",
        "the `remix_*` ones: `/depthfusion/remix`, which also takes the generation parameters but for the size;",
        "`live_fps` and `transition`: the live session) uses",
        "and is echoed back as coerced.",
        "Ints accept integral floats, int64 and numeric strings; floats accept ints and doubles; bools accept",
        "T/F, 0/1 (int or float) and true/false/on/off.",
        "",
        "| address | type | default | allowed | meaning |",
        "|---|---|---|---|---|",
    ]
    for param in OSC_PARAMS:
        default = json.dumps(param.default, ensure_ascii=False)
        lines.append(f"| `{PREFIX}{param.name}` | {param.kind.__name__} | `{default}` | {param.describe_range()} "
                     f"| {param.help} |")
    return "\n".join(lines) + "\n"
