"""What the DepthFusion TouchDesigner component does, without TouchDesigner.

``touchdesigner/DepthFusionExt.py`` is a thin shim around :class:`ComponentController`, so that
everything here runs and is tested outside TouchDesigner. Threads: frames arrive on the
FrameReceiver's thread and are turned into TOP-ready arrays there (``to_top``); commands go
to the generator on a worker thread, so a generator that is down or slow never stalls
TouchDesigner's main thread. ``update()``, called once per TouchDesigner frame on the main
thread, picks up the newest frame, the replies and the generator's status.
"""

from __future__ import annotations

import collections
import queue
import threading
from dataclasses import dataclass
from typing import Any, Mapping

from .addresses import DEFAULT_COMMANDS, DEFAULT_FRAMES, check_endpoint
from .params import ESTIMATION_PARAMS, UPSCALE_PARAMS, ParamError, validate, validate_generation
from .protocol import ProtocolError, encode_upload
from .receiver import CommandClient, CommandError, CommandTimeout, FrameReceiver
from .top_frames import TopFrame, to_top

MAX_PENDING = 32  # commands waiting for the worker; more means the generator is not answering


@dataclass(frozen=True)
class ComponentState:
    """What the component's read-only parameters show."""

    connected: bool = False
    status: str = "disconnected"  # one line for people
    backend: str = ""
    model: str = ""
    progress: float = 0.0  # 0..1 of the running job
    frame_id: str = ""  # the frame on screen
    job_id: str = ""  # the last job this component queued
    last_error: str = ""
    depth_check: str = ""  # the frame on screen: how well its depth agrees with an estimate (serve --depth-check)


class ComponentController:
    """Connect to a generator, send it commands, hand out its frames; never blocks."""

    def __init__(self, *, timeout: float = 3.0) -> None:
        self.timeout = timeout
        self.frame: TopFrame | None = None  # the last good frame: stays when the generator goes away
        self.state = ComponentState()
        self._receiver: FrameReceiver | None = None
        self._commands: queue.Queue[tuple[str, dict[str, Any], Any]] = queue.Queue(MAX_PENDING)
        self._replies: collections.deque[tuple[str, bool, Any]] = collections.deque(maxlen=MAX_PENDING)
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._frames_address = self._commands_address = ""

    # ------------------------------------------------------------ connection

    def connect(self, frames: str = DEFAULT_FRAMES, commands: str = DEFAULT_COMMANDS) -> None:
        """(Re)connect; raises ValueError for an address that is not tcp://HOST:PORT."""
        frames, commands = check_endpoint(frames), check_endpoint(commands)
        self.disconnect()
        self._frames_address, self._commands_address = frames, commands
        self._receiver = FrameReceiver(frames, prepare=to_top)
        self._commands, self._stop = queue.Queue(MAX_PENDING), threading.Event()
        self._worker = threading.Thread(target=self._work, args=(commands, self._commands, self._stop),
                                        name="depthfusion-commands", daemon=True)
        self._worker.start()
        self.state = ComponentState(status=f"waiting for the generator at {frames}", frame_id=self.state.frame_id)

    def disconnect(self) -> None:
        """Stop receiving; the last frame stays on screen."""
        if self._worker is not None:
            self._stop.set()  # the worker ends after the request in flight, if any
            self._worker = None
        if self._receiver is not None:
            self._receiver.close()
            self._receiver = None
        self.state = ComponentState(frame_id=self.state.frame_id)

    @property
    def is_connected(self) -> bool:
        return self._receiver is not None

    # ------------------------------------------------------------ commands (validated here, sent by the worker)

    def generate(self, values: Mapping[str, Any], upscale: Mapping[str, Any] | None = None) -> None:
        """Queue a generation (and, with ``upscale`` values, its ldm3d-sr upscale once it is out); raises
        ParamError at once for a bad value, naming the allowed range."""
        args = validate_generation(values)
        if upscale is not None:
            args.update(validate(upscale, UPSCALE_PARAMS), upscale=True)
        self._send("generate", args)

    def upscale(self, frame_id: str, values: Mapping[str, Any]) -> None:
        """Queue an ldm3d-sr upscale of a kept frame (e.g. the one on screen) with upscale parameters."""
        if not frame_id:
            raise ParamError("no frame to upscale yet")
        self._send("upscale", {"frame_id": frame_id, **validate(values, UPSCALE_PARAMS)})

    def cancel(self, job_id: str | None = None) -> None:
        self._send("cancel", {"job_id": job_id} if job_id else {})

    def recall(self, name: str) -> None:
        """Publish a kept frame again: a frame id, or a cue name (the newest frame with that cue)."""
        name = str(name).strip()
        if not 0 < len(name) <= 100:
            raise ParamError("recall needs a frame id or cue name of 1-100 characters")
        self._send("recall", {"name": name})

    def estimate(self, rgb: Any, values: Mapping[str, Any]) -> None:
        """Queue depth estimation of an (H, W, 3) uint8 image, rows top first, with estimation parameters
        (pano, views, flip, cue); ParamError at once for a bad value or image."""
        params = validate(values, ESTIMATION_PARAMS)
        try:
            image, data = encode_upload(rgb)
        except ProtocolError as exc:
            raise ParamError(str(exc)) from None
        self._send("estimate", {**params, "image": image}, bytes(data))

    def _send(self, cmd: str, args: dict[str, Any], data: bytes | None = None) -> None:
        if self._worker is None:
            raise ConnectionError("not connected; pulse Connect first")
        try:
            self._commands.put_nowait((cmd, args, data))
        except queue.Full:
            raise ConnectionError(f"{MAX_PENDING} commands are still waiting; is the generator answering?") from None

    def _work(self, address: str, commands: queue.Queue, stop: threading.Event) -> None:
        client = CommandClient(address, timeout=self.timeout)
        try:
            while not stop.is_set():
                try:
                    cmd, args, data = commands.get(timeout=0.1)
                except queue.Empty:
                    continue
                try:
                    self._replies.append((cmd, True, client.request(cmd, args, data=data)[0]))
                except (CommandError, CommandTimeout) as exc:
                    self._replies.append((cmd, False, str(exc)))
                except Exception as exc:  # keep the worker alive whatever the reply was
                    self._replies.append((cmd, False, f"{type(exc).__name__}: {exc}"))
        finally:
            client.close()

    # ------------------------------------------------------------ main thread, once per frame

    def update(self) -> TopFrame | None:
        """Pick up replies, status and the newest frame; returns that frame when it is new."""
        if self._receiver is None:
            return None
        changes: dict[str, Any] = {}
        while self._replies:
            cmd, ok, result = self._replies.popleft()
            if not ok:
                changes["last_error"] = f"{cmd}: {result}"
            else:
                changes["last_error"] = ""
                if cmd in ("generate", "estimate", "upscale"):
                    changes["job_id"] = result.get("job_id", "")
        fresh = self._receiver.take()
        if fresh is not None:
            self.frame = fresh
            changes["frame_id"] = fresh.frame_id
            changes["depth_check"] = describe_depth_check(fresh.meta.get("depth_check"))
        self.state = self._describe(self.state, changes)
        return fresh

    def _describe(self, state: ComponentState, changes: dict[str, Any]) -> ComponentState:
        receiver = self._receiver
        connected = receiver.connected
        status_event = receiver.event("status") or {}
        progress_event = receiver.event("progress") or {}
        running = status_event.get("job") or None
        progress = 0.0
        if not connected:
            line = f"waiting for the generator at {self._frames_address}"
        elif running:
            done = progress_event if progress_event.get("job_id") == running.get("id") else {}
            step, total = int(done.get("step", 0)), int(done.get("total", 0) or running.get("total") or 0)
            progress = step / total if total else 0.0
            queued = status_event.get("queued", 0)
            line = f"generating {step}/{total}" + (f", {queued} waiting" if queued else "")
        else:
            line = "idle"
        if connected:
            line += f" · {status_event.get('backend', '?')}"
        return ComponentState(
            connected=connected, status=line, backend=str(status_event.get("backend", "")),
            model=str(status_event.get("model", "")), progress=progress,
            frame_id=changes.get("frame_id", state.frame_id), job_id=changes.get("job_id", state.job_id),
            last_error=changes.get("last_error", state.last_error),
            depth_check=changes.get("depth_check", state.depth_check),
        )

    def close(self) -> None:
        self.disconnect()


def describe_depth_check(check: Any) -> str:
    """One line for a frame header's ``depth_check``: empty without one."""
    if not isinstance(check, dict):
        return ""
    if "error" in check:
        return f"depth check failed: {check['error']}"
    try:
        return f"AbsRel {float(check['abs_rel']):.3f} · δ1 {float(check['delta1']):.3f} ({check.get('model', '?')})"
    except (KeyError, TypeError, ValueError):
        return "depth check unreadable"
